//! Fuzz entry points of the blob format, shared by the cargo-fuzz targets and the corpus replay
//! in `cargo test`.
//!
//! This module owns the invariants a fuzzer checks; it never panics on any input and is not
//! part of the API.

use std::io;

use sha2::{Digest, Sha256};

use super::descriptor::BlobDescriptor;
use super::format::{BlobKey, HEADER_LEN, KEY_LEN, MAX_PLAINTEXT_LEN, NONCE_PREFIX_LEN};
use super::media_type::MediaType;
use super::memory::{decrypt_blob, decrypt_blob_into};
use super::pipeline::Hashing;
use super::stream::{BlobEncryptor, decrypt_stream};
use crate::error::BlobError;

/// The key every fuzzed ciphertext is decrypted under.
const FUZZ_KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
/// The nonce prefix of the round-tripped blobs.
const FUZZ_PREFIX: [u8; NONCE_PREFIX_LEN] = [0x24; NONCE_PREFIX_LEN];

fn fuzz_media_type() -> Option<MediaType> {
    MediaType::new("application/octet-stream").ok()
}

/// `plaintext` as a blob under the fuzz key and prefix, or `None` if it cannot be encrypted.
fn seal_under_fuzz_key(plaintext: &[u8], hashing: Hashing) -> Option<(Vec<u8>, BlobDescriptor)> {
    let key = BlobKey::from_bytes(&FUZZ_KEY);
    let encryptor =
        BlobEncryptor::from_parts(key, &FUZZ_PREFIX, fuzz_media_type()?).hashing(hashing);
    let mut blob = Vec::new();
    let (descriptor, _) = encryptor.encrypt(plaintext, &mut blob).ok()?;
    Some((blob, descriptor))
}

/// A genuine blob of `plaintext` under the key [`fuzz_chunk_stream`] decrypts its input with:
/// a seed whose mutations reach the chunk decoder past the key-commitment check.
#[cfg(feature = "test-support")]
pub(crate) fn seed_blob(plaintext: &[u8]) -> Vec<u8> {
    seal_under_fuzz_key(plaintext, Hashing::CallingThread).map(|(blob, _)| blob).unwrap_or_default()
}

/// Fuzz entry point for the descriptor parser. Never panics; returns `false`
/// only if an invariant is broken (a parsed descriptor does not re-encode to
/// exactly its input).
#[doc(hidden)]
pub fn fuzz_descriptor(data: &[u8]) -> bool {
    match BlobDescriptor::try_from(data) {
        Ok(descriptor) => descriptor.to_bytes().as_slice() == data,
        Err(_) => true,
    }
}

/// Decrypts `ciphertext` under the fuzz key with a descriptor claiming `claimed_len` bytes and
/// the ciphertext's own digest, streaming and in memory; `false` if it is accepted with another
/// length, if the two disagree (result or error), or if the in-memory one keeps anything after
/// an error.
fn never_accepted_with_wrong_length(ciphertext: &[u8], claimed_len: u64) -> bool {
    let Some(media_type) = fuzz_media_type() else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(ciphertext).into();
    let Ok(descriptor) =
        BlobDescriptor::new(BlobKey::from_bytes(&FUZZ_KEY), claimed_len, digest, media_type)
    else {
        return false;
    };
    let streamed = decrypt_stream(&descriptor, ciphertext, io::sink());
    let mut out = Vec::new();
    let in_memory = decrypt_blob_into(&descriptor, ciphertext, &mut out);
    if streamed != in_memory || (in_memory.is_err() && !out.is_empty()) {
        return false;
    }
    match streamed {
        Ok(n) => n == claimed_len && crate::blob::stream::to_u64(out.len()) == n,
        Err(_) => true,
    }
}

/// Fuzz entry point for the chunk-stream decoder. Never panics; returns
/// `false` only if an invariant is broken:
/// 1. `data` decrypted as a blob under a fixed key is never accepted with a
///    wrong length or digest (and the decoder does not panic on it), streaming
///    and in memory alike, with the same verdict and error, nor is
///    `data` with its commitment bytes replaced by the fixed key's (so
///    arbitrary chunks reach the chunk decoder);
/// 2. `data` as a plaintext round-trips (hashing on a second thread from the
///    first chunk on);
/// 3. that blob with one byte changed (position and XOR mask taken from
///    `data`) is rejected by both [`decrypt_stream`] and [`decrypt_blob`];
/// 4. that blob is refused under any other key, for its key commitment.
#[doc(hidden)]
pub fn fuzz_chunk_stream(data: &[u8]) -> bool {
    // 1. Arbitrary bytes as ciphertext, as they are and carrying the fixed key's commitment.
    let claimed_len =
        data.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b) % (MAX_PLAINTEXT_LEN + 1));
    if !never_accepted_with_wrong_length(data, claimed_len) {
        return false;
    }

    // 2. Round trip.
    let Some((mut blob, descriptor)) =
        seal_under_fuzz_key(data, Hashing::SecondThread { from_chunk: 0 })
    else {
        return false;
    };
    if data.len() >= HEADER_LEN {
        let mut committed = data.to_vec();
        if let (Some(commitment), Some(genuine)) =
            (committed.get_mut(12..HEADER_LEN), blob.get(12..HEADER_LEN))
        {
            commitment.copy_from_slice(genuine);
        }
        if !never_accepted_with_wrong_length(&committed, claimed_len) {
            return false;
        }
    }
    let mut plain = Vec::new();
    if decrypt_stream(&descriptor, &blob[..], &mut plain).is_err() || plain != data {
        return false;
    }

    // 4. Another key, the same digest and length: refused for its commitment.
    let Some(media_type) = fuzz_media_type() else {
        return false;
    };
    let Ok(other) = BlobDescriptor::new(
        BlobKey::from_bytes(&[0x43; KEY_LEN]),
        descriptor.plaintext_len(),
        *descriptor.ciphertext_sha256(),
        media_type,
    ) else {
        return false;
    };
    if decrypt_blob(&other, &blob) != Err(BlobError::KeyCommitment) {
        return false;
    }

    // 3. Single-byte corruption.
    let position =
        data.iter().fold(0usize, |acc, &b| acc.wrapping_mul(31).wrapping_add(usize::from(b)))
            % blob.len().max(1);
    let mask = data.last().map_or(1, |&b| b | 1);
    if let Some(byte) = blob.get_mut(position) {
        *byte ^= mask;
    }
    decrypt_stream(&descriptor, &blob[..], io::sink()).is_err()
        && decrypt_blob(&descriptor, &blob).is_err()
}
