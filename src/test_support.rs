//! Entry points for this crate's own tests, fuzz targets and test vectors, behind the
//! `test-support` feature. **Not part of the API**: they expose internals (a body opened under
//! any key, parsers fed piecewise) that no app needs and that can change in any release.

use zeroize::Zeroizing;

use crate::crypto::Secret32;
use crate::error::ReceiveError;

pub use crate::history::fuzz_record_stream;

/// Seals `payload` into a fan-out body under the content key `key`, exactly as
/// `encrypt_fanout` does for payloads above the inline threshold.
pub fn seal_fanout_body(key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut secret = Secret32::new([0u8; 32]);
    secret.as_mut_bytes().copy_from_slice(key);
    crate::fanout::seal_body(&secret, payload)
}

/// Opens a fan-out body under the content key `key` and body digest `digest`, exactly as
/// `Device::receive` does: digest, then key commitment, then AES-GCM.
pub fn open_fanout_body(
    key: &[u8; 32],
    digest: &[u8; 32],
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ReceiveError> {
    crate::fanout::open_body(key, digest, Some(body))
}

/// Signs a device list with `primary`'s identity, naming exactly `companions` in the order
/// given, with any version, issue time and previous digest: lists the crate's own API never
/// signs (two entries with one identity, unsorted entries, ...), to test what verification
/// refuses. `primary` must be a primary.
pub fn sign_device_list(
    primary: &crate::Device,
    version: u64,
    issued_at: crate::Timestamp,
    previous_digest: [u8; 32],
    companions: Vec<crate::SignedDeviceIdentity>,
) -> crate::SignedDeviceList {
    crate::SignedDeviceList::sign(
        &primary.identity,
        primary.address.account,
        version,
        issued_at,
        previous_digest,
        companions,
    )
}

/// The primary's account signature over `metadata` and `companion`: an approval for any
/// metadata the primary's own API would never assign.
pub fn account_sign(
    primary: &crate::Device,
    metadata: crate::LinkingMetadata,
    companion: &crate::PublicIdentity,
) -> [u8; 64] {
    crate::SignedDeviceIdentity::account_sign(&primary.identity, metadata, companion)
}

/// The companion-side device signature of `device` over `metadata`, its own identity and
/// `account_identity`, whatever its role: with [`account_sign`], a signed identity the API never
/// builds (the primary's own identity as a companion, say), to test what verification refuses.
pub fn device_sign(
    device: &crate::Device,
    metadata: crate::LinkingMetadata,
    account_identity: &crate::PublicIdentity,
) -> [u8; 64] {
    crate::SignedDeviceIdentity::device_sign(&device.identity, metadata, account_identity)
}

/// Seals `plaintext` as the whole session plaintext (the `Inner` of docs/PROTOCOL.md section
/// 10) of a message of `kind` from `device` to `to`, exactly as `encrypt_fanout` seals each
/// device's copy: on the session under the identity `device`'s list names for `to`, set up from
/// `bundles` if needed. `to` must be named by a list `device` holds. Lets tests send `Inner`
/// encodings the API never produces (another content form than the inline threshold picks, no
/// announced list, unsorted accounts, ...).
pub fn seal_inner(
    device: &mut crate::Device,
    rng: &mut (impl rand_core::CryptoRng + ?Sized),
    to: crate::DeviceAddress,
    kind: crate::MessageKind,
    plaintext: &[u8],
    bundles: &[crate::PrekeyBundle],
) -> Result<Vec<u8>, crate::FanoutSkip> {
    device.seal_authorized(rng, to, kind, plaintext, bundles)
}
