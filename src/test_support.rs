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

/// A genuine blob of `plaintext` under the fixed key that the `blob_chunks` fuzz target
/// decrypts its input with: corpus seeds that reach the chunk decoder past the key commitment.
pub fn fuzz_seed_blob(plaintext: &[u8]) -> Vec<u8> {
    crate::blob::seed_blob(plaintext)
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
