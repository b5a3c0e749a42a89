//! In-memory blobs: from a slice into a vector, copying the data once.
//!
//! This module owns the in-memory entry points. Each chunk is copied once, into the vector that
//! is returned or appended to, and sealed or opened there in place while it is in cache (the
//! streaming functions work in a buffer of their own, which costs them a second copy). It never
//! starts a thread, never reallocates a vector while it holds plaintext, and never leaves
//! plaintext in the caller's vector when it returns an error.

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::descriptor::BlobDescriptor;
use super::format::{
    CHUNK_SIZE, Framing, HEADER_LEN, Header, SEALED_CHUNK_LEN, TAG_LEN, ciphertext_len, seal_chunk,
};
use super::media_type::MediaType;
use super::stream::{BlobEncryptor, Progress, to_u64};
use crate::crypto;
use crate::error::BlobError;

/// Encrypts an in-memory plaintext on the calling thread under a fresh key; returns the
/// ciphertext and its descriptor.
///
/// ```
/// use multidevice::blob::{decrypt_blob, encrypt_blob, MediaType};
/// let mut rng = rand::rng();
/// let (ciphertext, descriptor) = encrypt_blob(&mut rng, b"hi", MediaType::new("text/plain")?)?;
/// assert_eq!(decrypt_blob(&descriptor, &ciphertext)?.as_slice(), b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`BlobError::TooManyChunks`] above [`MAX_PLAINTEXT_LEN`](super::MAX_PLAINTEXT_LEN).
pub fn encrypt_blob<G: CryptoRng + ?Sized>(
    rng: &mut G,
    plaintext: &[u8],
    media_type: MediaType,
) -> Result<(Vec<u8>, BlobDescriptor), BlobError> {
    let mut out = Vec::new();
    let descriptor = encrypt_blob_into(rng, plaintext, media_type, &mut out)?;
    Ok((out, descriptor))
}

/// Like [`encrypt_blob`], but appends the ciphertext to `out` (for a buffer the app reuses).
/// Reserves the whole ciphertext length first, so `out` is never reallocated while a chunk's
/// plaintext is in it; on an error nothing is appended.
///
/// # Errors
/// As [`encrypt_blob`].
pub fn encrypt_blob_into<G: CryptoRng + ?Sized>(
    rng: &mut G,
    plaintext: &[u8],
    media_type: MediaType,
    out: &mut Vec<u8>,
) -> Result<BlobDescriptor, BlobError> {
    let total = ciphertext_len(to_u64(plaintext.len())).ok_or(BlobError::TooManyChunks)?;
    let total = usize::try_from(total).map_err(|_| BlobError::TooManyChunks)?;
    out.reserve(total);
    let start = out.len();
    let result = BlobEncryptor::new(rng, media_type).seal_into(plaintext, out);
    if result.is_err() {
        discard_from(out, start);
    }
    result
}

/// Decrypts an in-memory blob on the calling thread. The blob's SHA-256 is verified, then the
/// key commitment, **before** anything is decrypted; the plaintext is returned in a buffer
/// wiped on drop (and never reallocated, so no unwiped copy is left behind).
///
/// ```
/// use multidevice::blob::{decrypt_blob, encrypt_blob, BlobError, MediaType};
/// let mut rng = rand::rng();
/// let (mut ciphertext, descriptor) =
///     encrypt_blob(&mut rng, b"hi", MediaType::new("text/plain")?)?;
/// assert_eq!(decrypt_blob(&descriptor, &ciphertext)?.as_slice(), b"hi");
/// ciphertext[50] ^= 1;
/// assert_eq!(decrypt_blob(&descriptor, &ciphertext), Err(BlobError::DigestMismatch));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`BlobError::DigestMismatch`] before any decryption, otherwise any error of
/// [`decrypt_stream`](super::decrypt_stream).
pub fn decrypt_blob(
    descriptor: &BlobDescriptor,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BlobError> {
    let digest: [u8; 32] = Sha256::digest(ciphertext).into();
    if !crypto::ct_eq(&digest, descriptor.ciphertext_sha256()) {
        return Err(BlobError::DigestMismatch);
    }
    let mut out = Zeroizing::new(Vec::new());
    open_into(descriptor, ciphertext, &mut out, false)?;
    Ok(out)
}

/// Decrypts an in-memory blob in one pass on the calling thread, appending the plaintext to
/// `out`, and returns the plaintext length. The key commitment is checked before any chunk is
/// decrypted, each chunk is hashed and opened while it is in cache, and the length and the
/// digest are checked at the end: on any error, what was appended is wiped and removed, so
/// `out` gains plaintext only if the whole blob verified. Reserves the ciphertext's length
/// first, so `out` is never reallocated while it holds plaintext; wiping `out` afterwards is
/// the caller's part (a `Zeroizing<Vec<u8>>` does it on drop).
///
/// Errors are named as by [`decrypt_stream`](super::decrypt_stream) (a changed chunk fails
/// as that chunk, a digest that names another blob as [`BlobError::DigestMismatch`] at the
/// end), where [`decrypt_blob`] checks the digest first.
///
/// # Errors
/// Any [`BlobError`] naming the violation.
pub fn decrypt_blob_into(
    descriptor: &BlobDescriptor,
    ciphertext: &[u8],
    out: &mut Vec<u8>,
) -> Result<u64, BlobError> {
    let start = out.len();
    let result = open_into(descriptor, ciphertext, out, true);
    if result.is_err() {
        discard_from(out, start);
    }
    result
}

/// Wipes and removes everything `out` holds from `start` on.
fn discard_from(out: &mut Vec<u8>, start: usize) {
    if let Some(tail) = out.get_mut(start..) {
        tail.zeroize();
    }
    out.truncate(start);
}

impl BlobEncryptor {
    /// Appends the blob of `plaintext` to `out`, which has room for all of it: each chunk is
    /// copied in, sealed there in place and hashed.
    fn seal_into(self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<BlobDescriptor, BlobError> {
        let Self { key, cipher, header, media_type, .. } = self;
        let mut hasher = Sha256::new();
        out.extend_from_slice(header.as_bytes());
        hasher.update(header.as_bytes());
        let chunks = plaintext.len().div_ceil(CHUNK_SIZE).max(1);
        let mut pieces = plaintext.chunks(CHUNK_SIZE);
        for index in 0..chunks {
            let piece = pieces.next().unwrap_or_default();
            let last = index.saturating_add(1) == chunks;
            let index = u32::try_from(index).map_err(|_| BlobError::TooManyChunks)?;
            let at = out.len();
            out.extend_from_slice(piece);
            out.resize(at.saturating_add(piece.len()).saturating_add(TAG_LEN), 0);
            let area = out.get_mut(at..).unwrap_or_default();
            seal_chunk(&cipher, &header, index, last, area, piece.len())?;
            hasher.update(area);
        }
        let plaintext_len = to_u64(plaintext.len());
        BlobDescriptor::new(key, plaintext_len, hasher.finalize().into(), media_type)
    }
}

/// Checks the header and its key commitment, then appends each chunk of `ciphertext` to `out`
/// and opens it there in place (hashing it first unless `hash` is false: the digest was
/// verified before), then checks the length and digest. Returns the plaintext length.
fn open_into(
    descriptor: &BlobDescriptor,
    ciphertext: &[u8],
    out: &mut Vec<u8>,
    hash: bool,
) -> Result<u64, BlobError> {
    let (cipher, commitment) = descriptor.key().derive();
    let (header, body) =
        ciphertext.split_first_chunk::<HEADER_LEN>().ok_or(BlobError::Truncated)?;
    let header = Header::parse_committed(*header, &commitment)?;
    let framing = Framing::new(descriptor.plaintext_len());
    let mut hasher = hash.then(Sha256::new);
    if let Some(hasher) = hasher.as_mut() {
        hasher.update(header.as_bytes());
    }
    // The plaintext so far plus the chunk being opened never exceed the body.
    out.reserve(body.len());
    let mut progress = Progress::after_header();
    let mut rest = body;
    let mut index: u32 = 0;
    loop {
        let last = rest.len() <= SEALED_CHUNK_LEN;
        let (sealed, tail) = rest.split_at_checked(SEALED_CHUNK_LEN).unwrap_or((rest, &[]));
        progress.ciphertext_len = progress.ciphertext_len.saturating_add(to_u64(sealed.len()));
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(sealed);
        }
        let at = out.len();
        out.extend_from_slice(sealed);
        let area = out.get_mut(at..).unwrap_or_default();
        let seen = progress.ciphertext_len;
        let plain_len = framing.open(&cipher, &header, index, last, seen, area, None)?;
        out.truncate(at.saturating_add(plain_len));
        progress.add_chunk(plain_len, 0);
        if last {
            break;
        }
        index = index.checked_add(1).ok_or(BlobError::TooManyChunks)?;
        rest = tail;
    }
    let digest: Option<[u8; 32]> = hasher.map(|hasher| hasher.finalize().into());
    descriptor.check(progress.plaintext_len, digest.as_ref())?;
    Ok(progress.plaintext_len)
}
