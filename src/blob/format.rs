//! The blob wire format: the key and what is derived from it, the header, the chunk layout and
//! the nonces.
//!
//! This module owns every byte of a blob that is not plaintext and the only AES-GCM calls on
//! chunks. It never does I/O and never looks at more than one chunk at a time; the streaming
//! functions in `stream` drive it.

use std::fmt;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce, Tag};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, Secret32, label};
use crate::error::BlobError;

/// Blob format version written in the first header byte (2: the header carries a key
/// commitment; version 1 did not and is refused).
pub const FORMAT_VERSION: u8 = 2;
/// Plaintext bytes in every non-final chunk (64 KiB).
pub const CHUNK_SIZE: usize = 65_536;
/// [`CHUNK_SIZE`] as it is written in the header (`u32`, big-endian).
const CHUNK_SIZE_U32: u32 = 65_536;
/// [`CHUNK_SIZE`] as a `u64`.
pub(super) const CHUNK_SIZE_U64: u64 = 65_536;
/// Length of an AES-GCM authentication tag (the crate's one AES-GCM tag length).
pub const TAG_LEN: usize = crypto::TAG_LEN;
/// [`TAG_LEN`] as a `u64`.
pub(super) const TAG_LEN_U64: u64 = 16;
/// Length of the random per-blob nonce prefix carried in the header.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Length of the key commitment carried in the header.
pub const COMMITMENT_LEN: usize = 32;
/// Header bytes before the commitment: version (1) + chunk size (4) + nonce prefix (7).
const HEADER_FIXED_LEN: usize = 12;
/// Length of the blob header: version (1) + chunk size (4) + nonce prefix (7) + key
/// commitment (32).
pub const HEADER_LEN: usize = HEADER_FIXED_LEN + COMMITMENT_LEN;
/// [`HEADER_LEN`] as a `u64`.
pub(super) const HEADER_LEN_U64: u64 = 44;
/// Length of a sealed full chunk: [`CHUNK_SIZE`] + [`TAG_LEN`].
pub const SEALED_CHUNK_LEN: usize = CHUNK_SIZE + TAG_LEN;
/// Largest number of chunks in one blob (the chunk index is a `u32`).
pub const MAX_CHUNKS: u64 = 1 << 32;
/// Largest plaintext a blob can hold: [`MAX_CHUNKS`] × [`CHUNK_SIZE`] (256 TiB).
pub const MAX_PLAINTEXT_LEN: u64 = MAX_CHUNKS * CHUNK_SIZE_U64;
/// Length of the blob key.
pub const KEY_LEN: usize = 32;

/// Ciphertext length of a blob holding `plaintext_len` bytes, or `None` above
/// [`MAX_PLAINTEXT_LEN`].
///
/// ```
/// use multidevice::blob::{ciphertext_len, CHUNK_SIZE, HEADER_LEN};
/// assert_eq!(ciphertext_len(0), Some(44 + 16));
/// assert_eq!(ciphertext_len(CHUNK_SIZE as u64 + 1), Some(44 + 65_536 + 1 + 2 * 16));
/// assert_eq!(HEADER_LEN, 44);
/// ```
pub fn ciphertext_len(plaintext_len: u64) -> Option<u64> {
    if plaintext_len > MAX_PLAINTEXT_LEN {
        return None;
    }
    let chunks = plaintext_len.div_ceil(CHUNK_SIZE_U64).max(1);
    HEADER_LEN_U64.checked_add(chunks.checked_mul(TAG_LEN_U64)?)?.checked_add(plaintext_len)
}

/// A one-time 256-bit key for a single blob.
///
/// Held in the crate's one secret-key type (boxed, so moves leave no copies behind, and wiped
/// on drop); not `Copy` and not `Clone`, compared in constant time, and its `Debug` prints no
/// secret. The key never encrypts anything itself: the blob's AES-256-GCM key and its key
/// commitment are derived from it (docs/PROTOCOL.md §13).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BlobKey(Secret32);

impl BlobKey {
    /// Draws a fresh key from `rng`.
    pub fn generate<G: CryptoRng + ?Sized>(rng: &mut G) -> Self {
        let mut key = Secret32::new([0u8; KEY_LEN]);
        rng.fill_bytes(key.as_mut_bytes());
        Self(key)
    }

    /// Copies a key from `bytes`; the caller remains responsible for wiping
    /// its own copy.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let mut key = Secret32::new([0u8; KEY_LEN]);
        key.as_mut_bytes().copy_from_slice(bytes);
        Self(key)
    }

    pub(super) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// The AES-256-GCM cipher for the chunks and the commitment the header carries:
    /// `cipher key || commitment = HKDF-SHA256(0^32, key, "multidevice/v1/kdf/blob")`. The
    /// derived cipher key is wiped before this returns (the cipher wipes its own key schedule
    /// on drop).
    pub(super) fn derive(&self) -> (Aes256Gcm, [u8; COMMITMENT_LEN]) {
        let (cipher_key, commitment) = crypto::commit_key(self.0.as_bytes(), label::KDF_BLOB);
        (Aes256Gcm::new(cipher_key.as_bytes().into()), commitment)
    }
}

impl ConstantTimeEq for BlobKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.as_bytes().ct_eq(other.as_bytes())
    }
}

impl PartialEq for BlobKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for BlobKey {}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobKey(<redacted>)")
    }
}

/// A parsed blob header: `version || chunk size || nonce prefix || key commitment`. Every
/// chunk authenticates all of it as associated data.
#[derive(Clone, Copy)]
pub(super) struct Header([u8; HEADER_LEN]);

impl Header {
    pub(super) fn new(prefix: &[u8; NONCE_PREFIX_LEN], commitment: &[u8; COMMITMENT_LEN]) -> Self {
        let fixed = FORMAT_VERSION.to_be_bytes().into_iter().chain(CHUNK_SIZE_U32.to_be_bytes());
        let mut bytes = [0u8; HEADER_LEN];
        for (slot, byte) in bytes.iter_mut().zip(fixed.chain(*prefix).chain(*commitment)) {
            *slot = byte;
        }
        Self(bytes)
    }

    /// Checks the version, then the chunk size. The commitment is checked by
    /// [`commits_to`](Self::commits_to), once the key is known.
    pub(super) fn parse(bytes: [u8; HEADER_LEN]) -> Result<Self, BlobError> {
        let [version, c0, c1, c2, c3, ..] = bytes;
        if version != FORMAT_VERSION {
            return Err(BlobError::UnsupportedVersion(version));
        }
        let chunk_size = u32::from_be_bytes([c0, c1, c2, c3]);
        if chunk_size != CHUNK_SIZE_U32 {
            return Err(BlobError::UnsupportedChunkSize(chunk_size));
        }
        Ok(Self(bytes))
    }

    /// Parses a header, then checks in constant time that it commits to `commitment` (the
    /// one the descriptor's key derives): the check that precedes every chunk's decryption.
    pub(super) fn parse_committed(
        bytes: [u8; HEADER_LEN],
        commitment: &[u8; COMMITMENT_LEN],
    ) -> Result<Self, BlobError> {
        let header = Self::parse(bytes)?;
        if !header.commits_to(commitment) {
            return Err(BlobError::KeyCommitment);
        }
        Ok(header)
    }

    /// Whether the header carries `commitment`, compared in constant time.
    pub(super) fn commits_to(&self, commitment: &[u8; COMMITMENT_LEN]) -> bool {
        crypto::ct_eq(self.0.get(HEADER_FIXED_LEN..).unwrap_or_default(), commitment)
    }

    pub(super) fn as_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.0
    }

    /// `nonce_i = nonce prefix || i (u32) || final (u8)`.
    fn nonce(&self, index: u32, last: bool) -> Nonce<U12> {
        let [_, _, _, _, _, p0, p1, p2, p3, p4, p5, p6, ..] = self.0;
        let [i0, i1, i2, i3] = index.to_be_bytes();
        Nonce::<U12>::from([p0, p1, p2, p3, p4, p5, p6, i0, i1, i2, i3, u8::from(last)])
    }
}

/// Seals `buf[..len]` in place and writes the tag after it; returns the sealed length.
pub(super) fn seal_chunk(
    cipher: &Aes256Gcm,
    header: &Header,
    index: u32,
    last: bool,
    buf: &mut [u8],
    len: usize,
) -> Result<usize, BlobError> {
    let (data, rest) = buf.split_at_mut_checked(len).ok_or(BlobError::CipherFailure)?;
    let tag = cipher
        .encrypt_inout_detached(&header.nonce(index, last), &header.0, data.into())
        .map_err(|_| BlobError::CipherFailure)?;
    rest.get_mut(..TAG_LEN).ok_or(BlobError::CipherFailure)?.copy_from_slice(&tag);
    Ok(len.saturating_add(TAG_LEN))
}

/// Where a (trusted) descriptor says its blob ends: what names the violation when a chunk does
/// not authenticate.
#[derive(Clone, Copy)]
pub(super) struct Framing {
    /// The ciphertext length the descriptor implies.
    ciphertext_len: u64,
    /// Index of the final chunk the descriptor implies.
    last_index: u64,
    /// Sealed length of that final chunk.
    final_sealed: usize,
}

impl Framing {
    pub(super) fn new(plaintext_len: u64) -> Self {
        let last_index = plaintext_len.div_ceil(CHUNK_SIZE_U64).max(1).saturating_sub(1);
        let final_sealed = plaintext_len
            .saturating_sub(last_index.saturating_mul(CHUNK_SIZE_U64))
            .saturating_add(TAG_LEN_U64);
        Self {
            ciphertext_len: ciphertext_len(plaintext_len).unwrap_or(u64::MAX),
            last_index,
            final_sealed: usize::try_from(final_sealed).unwrap_or(usize::MAX),
        }
    }

    /// Authenticates and decrypts chunk `index`, `sealed` (ciphertext || tag), in place when
    /// `out` is `None`, otherwise into `out`, and returns its plaintext length. `seen` counts
    /// the blob bytes read so far, header and this chunk included. Names the violation
    /// otherwise; nothing that failed authentication is decrypted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        &self,
        cipher: &Aes256Gcm,
        header: &Header,
        index: u32,
        last: bool,
        seen: u64,
        sealed: &mut [u8],
        mut out: Option<&mut [u8]>,
    ) -> Result<usize, BlobError> {
        if last && sealed.len() < TAG_LEN {
            return Err(self.final_chunk_error(seen, index));
        }
        if !open_chunk(cipher, header, index, last, sealed, out.as_deref_mut()) {
            if last {
                return Err(self.final_chunk_error(seen, index));
            }
            // Where the final chunk should be, its expected prefix authenticates as final:
            // data was appended after it.
            if u64::from(index) == self.last_index
                && let Some(prefix) = sealed.get_mut(..self.final_sealed)
                && open_chunk(cipher, header, index, true, prefix, out)
            {
                return Err(BlobError::TrailingData);
            }
            return Err(BlobError::ChunkAuthentication { index });
        }
        let plain_len = sealed.len().saturating_sub(TAG_LEN);
        if last && plain_len == 0 && index > 0 {
            return Err(BlobError::EmptyFinalChunk { index });
        }
        Ok(plain_len)
    }

    /// Names the violation when the final chunk does not authenticate: a shorter blob than
    /// the descriptor's was truncated, a longer one extended, an equally long one corrupted.
    fn final_chunk_error(&self, seen: u64, index: u32) -> BlobError {
        match seen.cmp(&self.ciphertext_len) {
            std::cmp::Ordering::Less => BlobError::Truncated,
            std::cmp::Ordering::Greater => BlobError::TrailingData,
            std::cmp::Ordering::Equal => BlobError::ChunkAuthentication { index },
        }
    }
}

/// Authenticates and decrypts `sealed` (ciphertext || tag), in place when
/// `out` is `None`, otherwise into `out`. Returns whether it authenticated;
/// on failure nothing is decrypted.
fn open_chunk(
    cipher: &Aes256Gcm,
    header: &Header,
    index: u32,
    last: bool,
    sealed: &mut [u8],
    out: Option<&mut [u8]>,
) -> bool {
    let Some(data_len) = sealed.len().checked_sub(TAG_LEN) else {
        return false;
    };
    let Some((data, tag)) = sealed.split_at_mut_checked(data_len) else {
        return false;
    };
    let Ok(tag) = Tag::try_from(&*tag) else {
        return false;
    };
    let nonce = header.nonce(index, last);
    match out {
        None => cipher.decrypt_inout_detached(&nonce, &header.0, data.into(), &tag).is_ok(),
        Some(out) => {
            let Some(out) = out.get_mut(..data_len) else {
                return false;
            };
            let Ok(buf) = InOutBuf::new(&*data, out) else {
                return false;
            };
            cipher.decrypt_inout_detached(&nonce, &header.0, buf, &tag).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_agree_with_their_u64_forms() {
        assert_eq!(usize::try_from(TAG_LEN_U64).unwrap(), TAG_LEN);
        assert_eq!(usize::try_from(HEADER_LEN_U64).unwrap(), HEADER_LEN);
        assert_eq!(usize::try_from(CHUNK_SIZE_U64).unwrap(), CHUNK_SIZE);
        assert_eq!(usize::try_from(CHUNK_SIZE_U32).unwrap(), CHUNK_SIZE);
    }

    #[test]
    fn chunk_index_overflow_is_too_many_chunks() {
        assert!(ciphertext_len(MAX_PLAINTEXT_LEN).is_some());
        assert_eq!(ciphertext_len(MAX_PLAINTEXT_LEN + 1), None);
        assert_eq!(
            ciphertext_len(MAX_PLAINTEXT_LEN),
            Some(HEADER_LEN_U64 + MAX_CHUNKS * TAG_LEN_U64 + MAX_PLAINTEXT_LEN)
        );
    }

    #[test]
    fn header_layout_is_version_chunk_size_prefix_commitment() {
        let commitment: [u8; 32] = core::array::from_fn(|i| 0x80 | u8::try_from(i).unwrap());
        let header = Header::new(&[1, 2, 3, 4, 5, 6, 7], &commitment);
        let (fixed, committed) = header.as_bytes().split_at(HEADER_FIXED_LEN);
        assert_eq!(fixed, [2, 0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7], "version, chunk size, prefix");
        assert_eq!(committed, commitment);
        assert!(header.commits_to(&commitment));
        let mut other = commitment;
        other[31] ^= 1;
        assert!(!header.commits_to(&other));
        assert!(Header::parse(*header.as_bytes()).is_ok());
    }

    #[test]
    fn nonce_layout_is_prefix_index_flag() {
        let header = Header::new(&[1, 2, 3, 4, 5, 6, 7], &[0xcc; COMMITMENT_LEN]);
        let nonce: [u8; 12] = header.nonce(0x0102_0304, true).into();
        assert_eq!(nonce, [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 1]);
        let nonce: [u8; 12] = header.nonce(5, false).into();
        assert_eq!(nonce, [1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 5, 0]);
    }

    #[test]
    fn derived_key_and_commitment_follow_the_spec() {
        let key = BlobKey::from_bytes(&[0x42; KEY_LEN]);
        let (_, commitment) = key.derive();
        let mut okm = [0u8; 64];
        // The label's value is pinned against docs/PROTOCOL.md by tests/spec.rs.
        crypto::hkdf(&[0u8; 32], &[0x42; 32], &[label::KDF_BLOB], &mut okm);
        assert_eq!(commitment[..], okm[32..]);
        // Another label, another commitment: blobs and fan-out bodies never share one.
        let (_, body_commitment) = crypto::commit_key(&[0x42; 32], label::KDF_BODY);
        assert_ne!(commitment, body_commitment);
    }
}
