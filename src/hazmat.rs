//! Low-level entry points that **bypass device-list authorization**. Apps do not need them;
//! never build a protocol on them.
//!
//! - Raw pairwise sessions by [`DeviceAddress`]: [`start_session`], [`encrypt`], [`decrypt`].
//!   They trust whatever identity a bundle or an initial message carries, with no device list
//!   behind it, so a server can plant a session at any address through them. Their messages
//!   are of [`MessageKind::Raw`], which [`Device::receive`] never accepts, and [`decrypt`]
//!   accepts no other kind, so nothing sent on the authorized path is readable here and the
//!   reverse. The authorized paths also never use a session under an identity their list does
//!   not name, so a planted session stays unused there. They exist for known-answer tests,
//!   benchmarks of the bare ratchet, and fuzzing.
//! - The CPace primitive and strict Ed25519 verification, for their known-answer tests.

use core::fmt;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::device::Device;
pub use crate::error::Ed25519Rejection;
use crate::error::SessionError;
use crate::keys::{DeviceAddress, Fingerprint, Timestamp};
use crate::prekeys::VerifiedPrekeyBundle;
use crate::session::SessionMessage;
use crate::session::message::MessageKind;

/// CPace over ristretto255 (draft-irtf-cfrg-cpace), exposed for its known-answer tests.
pub use crate::linking::cpace;

/// Checks a raw Ed25519 signature with the same strict verification every signature in the crate
/// goes through (docs/PROTOCOL.md, Notation: canonical `A` and `R`, neither of small order,
/// `S < L`, and the cofactorless equation of `verify_strict`).
///
/// ```
/// assert!(!multidevice::hazmat::verify_ed25519_strict(&[0u8; 32], b"msg", &[0u8; 64]));
/// ```
pub fn verify_ed25519_strict(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    check_ed25519_strict(public, message, signature).is_ok()
}

/// [`verify_ed25519_strict`], naming the first rule a rejected signature breaks, for
/// known-answer tests and audits of the rules.
///
/// ```
/// use multidevice::hazmat::{Ed25519Rejection, check_ed25519_strict};
///
/// // The identity point as key and as R, with S = 0: the plain equation holds for every
/// // message, and a verifier without the small-order rule accepts it.
/// let mut identity = [0u8; 32];
/// identity[0] = 1;
/// let mut signature = [0u8; 64];
/// signature[0] = 1;
/// assert_eq!(
///     check_ed25519_strict(&identity, b"any message", &signature),
///     Err(Ed25519Rejection::SmallOrderKey)
/// );
/// ```
pub fn check_ed25519_strict(
    public: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> Result<(), Ed25519Rejection> {
    let signature =
        <&[u8; 64]>::try_from(signature).map_err(|_| Ed25519Rejection::SignatureLength)?;
    let key = crate::crypto::ed25519_public_key(public)?;
    crate::crypto::verify_strict_raw(&key, message, signature)
}

/// A raw session message decrypted by [`decrypt`], and the device that sent it.
#[non_exhaustive]
pub struct Decrypted {
    /// The sending device, authenticated by the session (not by any device list).
    pub sender: DeviceAddress,
    /// The fingerprint of the sending device's identity.
    pub sender_fingerprint: Fingerprint,
    /// True when this message created a new session.
    pub new_session: bool,
    /// The plaintext, wiped on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field("sender", &self.sender)
            .field("sender_fingerprint", &self.sender_fingerprint)
            .field("new_session", &self.new_session)
            .field("plaintext_len", &self.plaintext.len())
            .finish()
    }
}

/// Starts a raw session with the device a verified bundle belongs to, **trusting the bundle's
/// identity without any device list**. The new session becomes active; earlier ones with that
/// device are archived (or dropped, if under another identity).
///
/// ```
/// use multidevice::{AccountId, Device, DeviceAddress, DeviceId, Timestamp, hazmat};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(1);
/// let now = Timestamp(1_700_000_000);
/// let mut alice = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId::PRIMARY), now);
/// let mut bob = Device::new(&mut rng, DeviceAddress::new(AccountId(2), DeviceId::PRIMARY), now);
///
/// let bundle = bob.prekey_upload().bundle(None).verify()?;
/// hazmat::start_session(&mut alice, &mut rng, &bundle)?;
/// let wire = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"hi")?;
/// assert_eq!(hazmat::decrypt(&mut bob, &wire, now)?.plaintext.as_slice(), b"hi");
/// // The front door never takes a raw message.
/// assert!(bob.receive(&wire, None, now).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn start_session(
    device: &mut Device,
    rng: &mut (impl CryptoRng + ?Sized),
    bundle: &VerifiedPrekeyBundle,
) -> Result<(), SessionError> {
    device.start_session_with(rng, bundle)
}

/// Encrypts `plaintext` for `remote` on the active raw session, as a [`MessageKind::Raw`]
/// message. The message key is spent: persist the device before sending the bytes. Refused
/// while this companion is signed out.
pub fn encrypt(
    device: &mut Device,
    rng: &mut (impl CryptoRng + ?Sized),
    remote: DeviceAddress,
    plaintext: &[u8],
) -> Result<Vec<u8>, SessionError> {
    device.require_not_signed_out()?;
    device.seal(rng, remote, MessageKind::Raw, plaintext)
}

/// Decrypts a [`MessageKind::Raw`] session message addressed to `device`, **accepting any
/// sender identity an initial message carries** unless the sessions already held with that
/// address are under another one ([`SessionError::IdentityMismatch`]). Any other kind is
/// [`SessionError::WrongKind`], refused before any key is derived.
///
/// Transactional: on any error the device is unchanged but for its clock high-water mark. A
/// message that starts a session consumes the one-time prekey it names only when it decrypts.
pub fn decrypt(
    device: &mut Device,
    bytes: &[u8],
    now: Timestamp,
) -> Result<Decrypted, SessionError> {
    device.observe(now);
    let message = SessionMessage::try_from(bytes)?;
    if message.kind() != MessageKind::Raw {
        return Err(SessionError::WrongKind(message.kind()));
    }
    device.require_not_signed_out()?;
    let mut opened = device.open(&message, None, now)?;
    let decrypted = Decrypted {
        sender: opened.sender,
        sender_fingerprint: opened.sender_fingerprint,
        new_session: opened.new_session,
        plaintext: core::mem::take(&mut opened.plaintext),
    };
    device.commit(opened);
    Ok(decrypted)
}
