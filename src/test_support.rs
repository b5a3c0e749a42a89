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
