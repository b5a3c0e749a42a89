//! # multidevice
//!
//! WhatsApp-style multi-device end-to-end encryption, sans-IO.
//!
//! An account is one primary device plus up to four companions. Every device has its own
//! identity keys ([`PublicIdentity`]) and its own Double Ratchet session with every device it
//! talks to. This crate does the cryptography and the state keeping; the app moves bytes through
//! its own, untrusted, server and supplies randomness and the current time.
//!
//! ## A guided tour
//!
//! - [`Device`] is the one stateful object per local device: identity, prekeys, sessions.
//!   Persist it with [`Device::to_bytes`] after every successful `&mut` call, before sending what
//!   the call produced.
//! - [`PrekeyUpload`] is what a device publishes; the server turns it into [`PrekeyBundle`]s,
//!   which a peer must [`verify`](PrekeyBundle::verify) before [`Device::start_session`].
//! - [`Device::encrypt`] and [`Device::decrypt`] run the Double Ratchet. Decryption is
//!   transactional: any error leaves the device unchanged.
//! - Accounts: the primary signs companions into a [`SignedDeviceList`]
//!   ([`Device::approve_companion`], [`Device::add_companion`], [`Device::remove_companion`],
//!   [`Device::refresh_device_list`]); every device verifies lists with
//!   [`Device::process_device_list`], the only way to a [`VerifiedDeviceList`]. A companion's
//!   [`Device::account_status`] applies the 14-day rule.
//! - Linking: by QR code ([`QrLinkOffer`], [`QrLinkApproval`]) or by pairing code over CPace
//!   ([`CompanionPairing`], [`PrimaryPairing`]).
//! - Fan-out: [`Device::encrypt_fanout`] encrypts once for every authorized device of the
//!   recipients and every other own device; [`Device::decrypt_fanout`] accepts only authorized
//!   senders.
//! - Media and history: [`blob`] (chunked STREAM AEAD), [`build_history`],
//!   [`Device::encrypt_history`], [`Device::decrypt_history`], [`import_history`].
//! - [`consts`] lists every limit; [`error`] every error; [`hazmat`] the known-answer entry
//!   points.
//!
//! The wire format, every KDF and signature label and the state machines are specified in
//! `docs/PROTOCOL.md`; what is and is not protected is in `SECURITY.md`.
//!
//! ```
//! use multidevice::{AccountId, Device, DeviceAddress, DeviceId, Timestamp};
//! use rand::SeedableRng;
//!
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! let now = Timestamp(1_700_000_000);
//! let mut alice = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId::PRIMARY), now);
//! let mut bob = Device::new(&mut rng, DeviceAddress::new(AccountId(2), DeviceId::PRIMARY), now);
//!
//! let bundle = bob.prekey_upload().bundle(None).verify()?;
//! alice.start_session(&mut rng, &bundle)?;
//! let wire = alice.encrypt(&mut rng, bob.address(), b"hi")?;
//! assert_eq!(bob.decrypt(&wire, now)?.plaintext.as_slice(), b"hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod account;
pub mod blob;
pub mod consts;
mod crypto;
mod device;
mod device_list;
pub mod error;
mod fanout;
pub mod hazmat;
mod history;
mod keys;
mod linking;
mod prekeys;
mod security_code;
mod serde_util;
mod session;
mod wire;

pub use account::{AccountStatus, CompanionApproval, ListUpdate};
pub use device::{Decrypted, Device, SessionInfo};
pub use device_list::{
    AuthorizedDevice, DeviceListEntry, LinkingMetadata, LogoutRequest, SignedDeviceIdentity,
    SignedDeviceList, VerifiedDeviceList,
};
pub use error::{
    BlobError, DecodeError, DeviceListError, FanoutError, HistoryError, KeyError, LinkError,
    SessionError, SignatureKind,
};
pub use fanout::{
    Conversation, Envelope, FanoutMessage, FanoutSkip, INLINE_THRESHOLD, MAX_FANOUT_ACCOUNTS,
    MAX_FANOUT_PAYLOAD, ReceivedMessage,
};
#[doc(hidden)]
pub use history::fuzz_record_stream;
pub use history::{
    HISTORY_MEDIA_TYPE, HISTORY_WINDOW_SECS, MAX_HISTORY_RECORD, build_history, import_history,
};
pub use keys::{AccountId, DeviceAddress, DeviceId, Fingerprint, PublicIdentity, Timestamp};
pub use linking::pairing::{CompanionPairing, PrimaryPairing};
pub use linking::pairing_code::{PAIRING_CODE_LEN, PairingCode, PairingCodeError};
pub use linking::qr::{QR_PREFIX, QrLinkApproval, QrLinkOffer};
#[cfg(feature = "qr")]
pub use linking::render::{QrPixels, render_pixels, render_terminal};
pub use prekeys::{
    OneTimePrekeyPublic, PrekeyBundle, PrekeyUpload, SignedPrekeyPublic, VerifiedPrekeyBundle,
};
pub use security_code::SecurityCode;
pub use session::SessionMessage;
