//! Low-level entry points for known-answer tests. Not needed by apps; do not build protocols on
//! them.

use ed25519_dalek::VerifyingKey;

/// CPace over ristretto255 (draft-irtf-cfrg-cpace), exposed for its known-answer tests.
pub use crate::linking::cpace;

/// Checks a raw Ed25519 signature with the same strict verification every signature in the crate
/// goes through (`verify_strict`: canonical encodings, no small-order keys, no malleability).
///
/// ```
/// assert!(!multidevice::hazmat::verify_ed25519_strict(&[0u8; 32], b"msg", &[0u8; 64]));
/// ```
pub fn verify_ed25519_strict(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
        return false;
    };
    VerifyingKey::from_bytes(public)
        .is_ok_and(|key| crate::crypto::verify_strict_raw(&key, message, signature))
}
