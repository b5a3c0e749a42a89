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
//! - [`Device`] is a local device's protocol state: identity, prekeys, sessions and the device
//!   lists it holds. [`StoredDevice`] keeps it in a [`store::Store`] (SQLite by default),
//!   encrypted at rest, one record per concern, each call one transaction that commits what it
//!   sends as an outbox item and what it receives as an inbox entry. An app that keeps a
//!   `Device` in memory instead persists [`Device::to_bytes`] after every `&mut` call,
//!   successful or not (refusals move documented latches), before sending what it produced.
//! - Accounts: a primary signs its companions into a [`SignedDeviceList`] (it holds version 1
//!   from creation; [`Device::approve_companion`], [`Device::add_companion`],
//!   [`Device::remove_companion`], [`Device::refresh_device_list`]). Every device verifies the
//!   lists it fetches with [`Device::process_device_list`], the only way to a
//!   [`VerifiedDeviceList`], and nothing is sent to or accepted from a device no verified list
//!   names. A companion's [`Device::account_status`] applies the 14-day rule.
//! - Sending: [`Device::encrypt_fanout`] encrypts once for every authorized device of the
//!   recipient accounts and every other own device, setting up sessions from
//!   [`PrekeyBundle`]s whose identity the list names.
//! - Receiving: [`Device::receive`] is the single entry point for everything a peer sends. It
//!   refuses unlisted or stale senders before any key is derived, and returns a typed
//!   [`Received`]. Every error says what to do ([`Action`]): drop, retry later, fetch a list,
//!   or ask the user.
//! - Linking: by QR code ([`QrLinkOffer`], [`QrLinkApproval`]) or by pairing code over CPace
//!   ([`CompanionPairing`], [`PrimaryPairing`]).
//! - Media and history: [`blob`] (chunked STREAM AEAD), [`build_history`],
//!   [`Device::encrypt_history`], [`import_history`].
//! - [`consts`] lists every limit; [`error`] every error; [`hazmat`] the raw session calls that
//!   bypass authorization, and the known-answer entry points.
//!
//! The wire format, every KDF and signature label and the state machines are specified in
//! `docs/PROTOCOL.md`; what is and is not protected is in `SECURITY.md`.
//!
//! ```
//! use multidevice::{AccountId, Device, DeviceAddress, DeviceId, Received, Timestamp};
//! use rand::SeedableRng;
//!
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! let now = Timestamp(1_700_000_000);
//! let mut alice = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId::PRIMARY), now);
//! let mut bob = Device::new(&mut rng, DeviceAddress::new(AccountId(2), DeviceId::PRIMARY), now);
//!
//! // The server relays each account's signed device list; each side verifies the other's.
//! let bob_list = bob.device_list(bob.account()).unwrap().signed_bytes().to_vec();
//! let alice_list = alice.device_list(alice.account()).unwrap().signed_bytes().to_vec();
//! alice.process_device_list(&bob_list, now)?;
//! bob.process_device_list(&alice_list, now)?;
//!
//! let bundle = bob.prekey_upload().bundle(None);
//! let sent = alice.encrypt_fanout(&mut rng, &[bob.account()], &[bundle], b"hi", now)?;
//! match bob.receive(&sent.envelopes[0].bytes, sent.body.as_deref(), now)? {
//!     Received::Message(message) => assert_eq!(message.payload.as_slice(), b"hi"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The README's example runs as a doc test, so it never drifts from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

mod account;
pub mod blob;
pub mod consts;
mod crypto;
mod device;
mod device_list;
pub mod error;
mod fanout;
mod group;
pub mod hazmat;
mod history;
mod keys;
mod linking;
mod prekeys;
mod receive;
mod retry;
mod security_code;
mod serde_util;
mod session;
pub mod store;
mod stored;
#[cfg(feature = "test-support")]
pub mod test_support;
mod wiping;
mod wire;

pub use account::{AccountStatus, CompanionApproval, ListUpdate, PendingIdentityChange};
pub use consts::{HISTORY_WINDOW_SECS, MAX_HISTORY_RECORD};
pub use consts::{INLINE_THRESHOLD, MAX_FANOUT_ACCOUNTS, MAX_FANOUT_PAYLOAD};
pub use device::{Device, SessionInfo};
pub use device_list::{
    AuthorizedDevice, DeviceListEntry, LinkingMetadata, LogoutRequest, SignedDeviceIdentity,
    SignedDeviceList, VerifiedDeviceList,
};
pub use error::{
    Action, BlobError, DecodeError, DeviceListError, FanoutError, GroupError, HistoryError,
    KeyError, LinkError, ReceiveError, RetryError, SessionError, SignatureKind,
};
pub use fanout::{Conversation, Envelope, FanoutMessage, FanoutSkip};
pub use group::{GroupId, GroupSend};
pub use history::{HISTORY_MEDIA_TYPE, build_history, import_history};
pub use keys::{AccountId, DeviceAddress, DeviceId, Fingerprint, PublicIdentity, Timestamp};
pub use linking::pairing::{CompanionPairing, PrimaryPairing};
pub use linking::pairing_code::{PAIRING_CODE_LEN, PairingCode, PairingCodeError};
pub use linking::qr::{QR_PREFIX, QrLinkApproval, QrLinkOffer};
#[cfg(feature = "qr")]
pub use linking::render::{MAX_QR_PIXELS, QrPixels, render_pixels, render_terminal};
pub use prekeys::{
    OneTimePrekeyPublic, PrekeyBundle, PrekeyUpload, SignedPrekeyPublic, VerifiedPrekeyBundle,
};
pub use receive::{
    Received, ReceivedGroupMessage, ReceivedHistory, ReceivedMessage, ReceivedSenderKey,
};
pub use receive::{Redelivered, VerifiedRetryRequest};
pub use retry::{ReceiveFailure, RetryAnswer, RetryReason, RetryRequest, SentCacheLimits};
pub use security_code::SecurityCode;
pub use session::SessionMessage;
pub use session::message::MessageKind;
pub use stored::{DEDUP_WINDOW, Inbound, InboxId, OutboxId, OutboxItem, StoredDevice};
