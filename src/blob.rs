//! Encrypted blobs for history sync and media attachments.
//!
//! A blob is encrypted under a fresh one-time [`BlobKey`] with a chunked,
//! streaming AEAD: the STREAM construction (Hoang, Reyhanitabar, Rogaway,
//! Vizár, "Online authenticated-encryption and its nonce-reuse misuse
//! resistance") instantiated with AES-256-GCM. Encryption and decryption run
//! in constant memory ([`STREAM_BUFFER_BYTES`] at most) whatever the blob size.
//!
//! The sender uploads the ciphertext and sends the recipient a
//! [`BlobDescriptor`] (key, plaintext length, SHA-256 of the ciphertext, media
//! type) over the end-to-end encrypted channel.
//!
//! # Format (version 1)
//!
//! ```text
//! blob   = header || chunk_0 || ... || chunk_{n-1}            (n >= 1)
//! header = version:u8 (=1) || chunk_size:u32be (=65536) || nonce_prefix:[u8; 7]
//! chunk_i = AES-256-GCM(key, nonce_i, aad = header, plaintext_i) || tag_i:[u8; 16]
//! nonce_i = nonce_prefix || i:u32be || final:u8   (final = 0x01 for chunk n-1, else 0x00)
//! ```
//!
//! Every non-final plaintext chunk holds exactly `chunk_size` bytes; the final
//! one holds 1..=`chunk_size` bytes, or 0 bytes only when it is the sole chunk
//! (empty blob). The stream is self-delimiting: a decoder takes
//! `chunk_size + 16` bytes as a non-final chunk while strictly more than that
//! remains, and the rest as the final chunk.
//!
//! # Digest
//!
//! The descriptor's `ciphertext_sha256` covers the whole ciphertext (header
//! included). AES-GCM is not key-committing: a sender who knows the key could
//! craft two ciphertexts with equal tags, so only a hash of the full
//! ciphertext binds a descriptor to exactly one plaintext. Because SHA-256 is
//! slower than AES-GCM on current hardware, the streaming functions move the
//! hashing to a second thread (pipelined over [`PIPELINE_DEPTH`] chunk
//! buffers) once a blob goes on past chunk [`BACKGROUND_HASHING_FROM_CHUNK`]; see
//! [`BlobEncryptor::background_hashing`]. That caps throughput at the speed of
//! SHA-256 instead of the sum of both costs.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, Scope, ScopedJoinHandle};

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce, Tag};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Blob format version written in the first header byte.
pub const FORMAT_VERSION: u8 = 1;
/// Plaintext bytes in every non-final chunk (64 KiB).
pub const CHUNK_SIZE: usize = 65_536;
/// [`CHUNK_SIZE`] as it is written in the header (`u32`, big-endian).
const CHUNK_SIZE_U32: u32 = 65_536;
/// [`CHUNK_SIZE`] as a `u64`.
const CHUNK_SIZE_U64: u64 = 65_536;
/// Length of an AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// [`TAG_LEN`] as a `u64`.
const TAG_LEN_U64: u64 = 16;
/// Length of the random per-blob nonce prefix carried in the header.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Length of the blob header: version (1) + chunk size (4) + nonce prefix (7).
pub const HEADER_LEN: usize = 12;
/// [`HEADER_LEN`] as a `u64`.
const HEADER_LEN_U64: u64 = 12;
/// Length of a sealed full chunk: [`CHUNK_SIZE`] + [`TAG_LEN`].
pub const SEALED_CHUNK_LEN: usize = CHUNK_SIZE + TAG_LEN;
/// Largest number of chunks in one blob (the chunk index is a `u32`).
pub const MAX_CHUNKS: u64 = 1 << 32;
/// Largest plaintext a blob can hold: [`MAX_CHUNKS`] × [`CHUNK_SIZE`] (256 TiB).
pub const MAX_PLAINTEXT_LEN: u64 = MAX_CHUNKS * CHUNK_SIZE_U64;
/// Number of sealed-chunk buffers in flight when hashing runs on a second
/// thread (1 MiB of ciphertext). SHA-256 is the slower pass, so the encrypting
/// side runs ahead by up to this many chunks before it waits for a buffer.
pub const PIPELINE_DEPTH: usize = 16;
/// Chunk index from which hashing moves to a second thread by default, if the
/// blob goes on past it: blobs of up to 1 MiB (16 chunks) never start one. In
/// criterion runs on the 2-core development machine a thread (50–70 µs to
/// start) changed 1 MiB blobs by −4% to +8%, within the noise, and made
/// 64 MiB blobs 23–43% faster.
pub const BACKGROUND_HASHING_FROM_CHUNK: u32 = 15;
/// Upper bound, in bytes, on the chunk buffers held at once by any streaming
/// function of this module ([`BlobEncryptor`], [`BlobDecryptor`],
/// [`encrypt_stream`], [`decrypt_stream`], [`decrypt_verified`]): at most
/// [`PIPELINE_DEPTH`] sealed-chunk buffers plus one plaintext buffer. With
/// background hashing off, or for blobs that end by chunk
/// [`BACKGROUND_HASHING_FROM_CHUNK`], a single [`SEALED_CHUNK_LEN`] buffer is
/// used.
pub const STREAM_BUFFER_BYTES: usize = (PIPELINE_DEPTH + 1) * SEALED_CHUNK_LEN;
/// Descriptor encoding version written in its first byte.
pub const DESCRIPTOR_VERSION: u8 = 1;
/// Length of the blob key.
pub const KEY_LEN: usize = 32;
/// Shortest media type (`a/b`).
pub const MEDIA_TYPE_MIN_LEN: usize = 3;
/// Longest media type.
pub const MEDIA_TYPE_MAX_LEN: usize = 64;
/// Descriptor bytes before the media type: version (1) + key (32) +
/// plaintext length (8) + digest (32) + media type length (1).
const DESCRIPTOR_FIXED_LEN: usize = 74;
/// Shortest valid descriptor encoding.
pub const DESCRIPTOR_MIN_LEN: usize = DESCRIPTOR_FIXED_LEN + MEDIA_TYPE_MIN_LEN;
/// Longest valid descriptor encoding.
pub const DESCRIPTOR_MAX_LEN: usize = DESCRIPTOR_FIXED_LEN + MEDIA_TYPE_MAX_LEN;

/// Everything that can go wrong while encrypting, decrypting or parsing.
///
/// On any error from a decrypting function, plaintext already written to the
/// caller's writer is unauthenticated as a whole and must be discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The ciphertext ends before its final chunk: cut at a chunk boundary,
    /// mid-chunk, inside the header, or its final chunk was lost.
    #[error("blob is truncated: its final chunk is missing or incomplete")]
    Truncated,
    /// Bytes follow the authentic final chunk.
    #[error("blob has data after its final chunk")]
    TrailingData,
    /// The chunk at this position does not authenticate there: it was
    /// modified, reordered, duplicated, taken from another blob, or the key or
    /// header is wrong.
    #[error("chunk {index} failed authentication")]
    ChunkAuthentication {
        /// Zero-based position of the offending chunk.
        index: u32,
    },
    /// The blob would need more than [`MAX_CHUNKS`] chunks (the chunk index
    /// would overflow), or a length exceeds [`MAX_PLAINTEXT_LEN`].
    #[error("blob needs more than 2^32 chunks")]
    TooManyChunks,
    /// An authentic but non-canonical empty final chunk follows other chunks.
    #[error("final chunk {index} is empty but is not the only chunk")]
    EmptyFinalChunk {
        /// Zero-based position of the empty final chunk.
        index: u32,
    },
    /// The blob header names a format version this library does not know.
    #[error("unsupported blob format version {0}")]
    UnsupportedVersion(u8),
    /// The blob header names a chunk size other than [`CHUNK_SIZE`].
    #[error("unsupported chunk size {0}")]
    UnsupportedChunkSize(u32),
    /// The SHA-256 of the ciphertext differs from the descriptor's.
    #[error("ciphertext SHA-256 does not match the descriptor")]
    DigestMismatch,
    /// The authenticated plaintext length differs from the descriptor's.
    #[error("plaintext is {got} bytes but the descriptor says {expected}")]
    LengthMismatch {
        /// Length stated by the descriptor.
        expected: u64,
        /// Length actually decrypted.
        got: u64,
    },
    /// A descriptor encoding is shorter than its fields require.
    #[error("descriptor encoding is truncated")]
    DescriptorTruncated,
    /// A descriptor encoding has bytes after its last field.
    #[error("descriptor encoding has trailing bytes")]
    DescriptorTrailingBytes,
    /// A descriptor encoding names an unknown version.
    #[error("unsupported descriptor version {0}")]
    UnsupportedDescriptorVersion(u8),
    /// A media type is malformed.
    #[error("invalid media type: {0}")]
    InvalidMediaType(#[from] MediaTypeError),
    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(io::ErrorKind),
    /// The AEAD primitive refused an operation (cannot happen for chunks of
    /// at most [`CHUNK_SIZE`] bytes).
    #[error("AES-GCM refused the operation")]
    CipherFailure,
    /// The background hashing thread stopped abnormally.
    #[error("background hashing thread failed")]
    HashWorker,
}

impl From<io::Error> for BlobError {
    fn from(err: io::Error) -> Self {
        Self::Io(err.kind())
    }
}

/// Why a string is not a valid [`MediaType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaTypeError {
    /// Shorter than [`MEDIA_TYPE_MIN_LEN`] bytes.
    #[error("media type is shorter than 3 bytes")]
    TooShort,
    /// Longer than [`MEDIA_TYPE_MAX_LEN`] bytes.
    #[error("media type is {len} bytes, more than 64")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
    },
    /// No `/` separates type and subtype.
    #[error("media type has no '/'")]
    MissingSlash,
    /// The type or the subtype is empty.
    #[error("media type has an empty type or subtype")]
    EmptyPart,
    /// A byte outside the allowed set (lowercase RFC 6838 restricted names),
    /// including a second `/` or a non-alphanumeric first character.
    #[error("media type has an invalid byte at position {position}")]
    InvalidByte {
        /// Zero-based position of the offending byte.
        position: usize,
    },
}

/// A validated, canonical media type such as `image/jpeg`.
///
/// Rules: 3..=64 ASCII bytes, `type/subtype`, each part a lowercase RFC 6838
/// restricted name (first byte `[a-z0-9]`, then `[a-z0-9!#$&^_.+-]`), no
/// parameters.
///
/// ```
/// use multidevice::blob::{MediaType, MediaTypeError};
/// assert_eq!(MediaType::new("image/jpeg").unwrap().as_str(), "image/jpeg");
/// assert_eq!(MediaType::new("image"), Err(MediaTypeError::MissingSlash));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MediaType(String);

impl MediaType {
    /// Validates `value` as a media type.
    ///
    /// # Errors
    /// A [`MediaTypeError`] naming the first rule `value` breaks.
    pub fn new(value: &str) -> Result<Self, MediaTypeError> {
        validate_media_type(value.as_bytes())?;
        Ok(Self(value.to_owned()))
    }

    /// Validates raw bytes as a media type.
    fn from_bytes(bytes: &[u8]) -> Result<Self, MediaTypeError> {
        validate_media_type(bytes)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| MediaTypeError::InvalidByte { position: e.valid_up_to() })?;
        Ok(Self(text.to_owned()))
    }

    /// The media type as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes (always within 3..=64).
    fn encoded_len(&self) -> u8 {
        u8::try_from(self.0.len()).unwrap_or(u8::MAX)
    }
}

fn validate_media_type(bytes: &[u8]) -> Result<(), MediaTypeError> {
    if bytes.len() < MEDIA_TYPE_MIN_LEN {
        return Err(MediaTypeError::TooShort);
    }
    if bytes.len() > MEDIA_TYPE_MAX_LEN {
        return Err(MediaTypeError::TooLong { len: bytes.len() });
    }
    let slash = bytes.iter().position(|&b| b == b'/').ok_or(MediaTypeError::MissingSlash)?;
    let (kind, rest) = bytes.split_at_checked(slash).ok_or(MediaTypeError::MissingSlash)?;
    let subtype = rest.get(1..).unwrap_or_default();
    if kind.is_empty() || subtype.is_empty() {
        return Err(MediaTypeError::EmptyPart);
    }
    validate_restricted_name(kind, 0)?;
    validate_restricted_name(subtype, slash.saturating_add(1))
}

fn validate_restricted_name(part: &[u8], offset: usize) -> Result<(), MediaTypeError> {
    for (i, &b) in part.iter().enumerate() {
        let ok = if i == 0 {
            b.is_ascii_lowercase() || b.is_ascii_digit()
        } else {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'!' | b'#' | b'$' | b'&' | b'^' | b'_' | b'.' | b'+' | b'-')
        };
        if !ok {
            return Err(MediaTypeError::InvalidByte { position: offset.saturating_add(i) });
        }
    }
    Ok(())
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MediaType {
    type Err = MediaTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for MediaType {
    type Error = MediaTypeError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for MediaType {
    type Error = MediaTypeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        validate_media_type(value.as_bytes())?;
        Ok(Self(value))
    }
}

impl From<MediaType> for String {
    fn from(value: MediaType) -> Self {
        value.0
    }
}

/// A one-time 256-bit AES key for a single blob.
///
/// Heap-allocated so that moves do not leave copies behind, wiped on drop,
/// compared in constant time, not `Clone`, and its `Debug` prints no secret.
pub struct BlobKey(Box<[u8; KEY_LEN]>);

impl BlobKey {
    /// Draws a fresh key from `rng`.
    pub fn generate<G: CryptoRng + ?Sized>(rng: &mut G) -> Self {
        let mut key = Box::new([0u8; KEY_LEN]);
        rng.fill_bytes(key.as_mut_slice());
        Self(key)
    }

    /// Copies a key from `bytes`; the caller remains responsible for wiping
    /// its own copy.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let mut key = Box::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Self(key)
    }

    fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> Result<Aes256Gcm, BlobError> {
        Aes256Gcm::new_from_slice(self.0.as_slice()).map_err(|_| BlobError::CipherFailure)
    }
}

impl Zeroize for BlobKey {
    fn zeroize(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

impl Drop for BlobKey {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for BlobKey {}

impl ConstantTimeEq for BlobKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.as_slice().ct_eq(other.0.as_slice())
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

/// Everything a recipient needs to fetch-verify and decrypt one blob.
///
/// Travels inside an end-to-end encrypted message. Its canonical encoding
/// ([`to_bytes`](Self::to_bytes), parsed back by `TryFrom<&[u8]>`) is:
/// `version:u8 (=1) || key:[u8; 32] || plaintext_len:u64be ||
/// ciphertext_sha256:[u8; 32] || media_type_len:u8 || media_type`.
///
/// There is deliberately no serde support: a generic deserializer would leave
/// unwiped copies of the key in its own buffers. Use the byte encoding inside a
/// [`Zeroizing`] buffer instead.
#[derive(PartialEq, Eq)]
pub struct BlobDescriptor {
    key: BlobKey,
    plaintext_len: u64,
    ciphertext_sha256: [u8; 32],
    media_type: MediaType,
}

impl BlobDescriptor {
    /// Assembles a descriptor.
    ///
    /// # Errors
    /// [`BlobError::TooManyChunks`] if `plaintext_len` exceeds
    /// [`MAX_PLAINTEXT_LEN`].
    pub fn new(
        key: BlobKey,
        plaintext_len: u64,
        ciphertext_sha256: [u8; 32],
        media_type: MediaType,
    ) -> Result<Self, BlobError> {
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(BlobError::TooManyChunks);
        }
        Ok(Self { key, plaintext_len, ciphertext_sha256, media_type })
    }

    /// The blob key.
    pub fn key(&self) -> &BlobKey {
        &self.key
    }

    /// Length of the plaintext in bytes.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// SHA-256 of the complete ciphertext (header included).
    pub fn ciphertext_sha256(&self) -> &[u8; 32] {
        &self.ciphertext_sha256
    }

    /// The media type.
    pub fn media_type(&self) -> &MediaType {
        &self.media_type
    }

    /// Length of the ciphertext this descriptor describes.
    pub fn ciphertext_len(&self) -> u64 {
        ciphertext_len(self.plaintext_len).unwrap_or(u64::MAX)
    }

    /// Canonical encoding, in a buffer wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let media = self.media_type.as_str().as_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(DESCRIPTOR_FIXED_LEN + media.len()));
        out.push(DESCRIPTOR_VERSION);
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.plaintext_len.to_be_bytes());
        out.extend_from_slice(&self.ciphertext_sha256);
        out.push(self.media_type.encoded_len());
        out.extend_from_slice(media);
        out
    }
}

impl TryFrom<&[u8]> for BlobDescriptor {
    type Error = BlobError;

    /// Strict parser: length range, then version, then fields; rejects any
    /// truncation and any trailing byte.
    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        if bytes.len() < DESCRIPTOR_MIN_LEN {
            return Err(BlobError::DescriptorTruncated);
        }
        if bytes.len() > DESCRIPTOR_MAX_LEN {
            return Err(BlobError::DescriptorTrailingBytes);
        }
        let (&version, rest) = bytes.split_first().ok_or(BlobError::DescriptorTruncated)?;
        if version != DESCRIPTOR_VERSION {
            return Err(BlobError::UnsupportedDescriptorVersion(version));
        }
        let (key, rest) =
            rest.split_first_chunk::<KEY_LEN>().ok_or(BlobError::DescriptorTruncated)?;
        let (len, rest) = rest.split_first_chunk::<8>().ok_or(BlobError::DescriptorTruncated)?;
        let (digest, rest) =
            rest.split_first_chunk::<32>().ok_or(BlobError::DescriptorTruncated)?;
        let (&media_len, media) = rest.split_first().ok_or(BlobError::DescriptorTruncated)?;
        match media.len().cmp(&usize::from(media_len)) {
            std::cmp::Ordering::Less => return Err(BlobError::DescriptorTruncated),
            std::cmp::Ordering::Greater => return Err(BlobError::DescriptorTrailingBytes),
            std::cmp::Ordering::Equal => {}
        }
        let media_type = MediaType::from_bytes(media)?;
        Self::new(BlobKey::from_bytes(key), u64::from_be_bytes(*len), *digest, media_type)
    }
}

impl fmt::Debug for BlobDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobDescriptor")
            .field("key", &self.key)
            .field("plaintext_len", &self.plaintext_len)
            .field("ciphertext_sha256", &Hex(&self.ciphertext_sha256))
            .field("media_type", &self.media_type)
            .finish()
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Ciphertext length of a blob holding `plaintext_len` bytes, or `None` above
/// [`MAX_PLAINTEXT_LEN`].
///
/// ```
/// use multidevice::blob::{ciphertext_len, CHUNK_SIZE};
/// assert_eq!(ciphertext_len(0), Some(12 + 16));
/// assert_eq!(ciphertext_len(CHUNK_SIZE as u64 + 1), Some(12 + 65_536 + 1 + 2 * 16));
/// ```
pub fn ciphertext_len(plaintext_len: u64) -> Option<u64> {
    if plaintext_len > MAX_PLAINTEXT_LEN {
        return None;
    }
    let chunks = plaintext_len.div_ceil(CHUNK_SIZE_U64).max(1);
    HEADER_LEN_U64.checked_add(chunks.checked_mul(TAG_LEN_U64)?)?.checked_add(plaintext_len)
}

/// Statistics of one streaming run, reported for monitoring and for tests of
/// the memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Plaintext bytes read (encryption) or written (decryption).
    pub plaintext_len: u64,
    /// Ciphertext bytes written (encryption) or read (decryption).
    pub ciphertext_len: u64,
    /// Number of chunks processed.
    pub chunks: u64,
    /// Largest number of bytes held at once in chunk buffers; never above
    /// [`STREAM_BUFFER_BYTES`].
    pub peak_buffer_bytes: usize,
    /// Whether the ciphertext was hashed on a second thread.
    pub background_hashing: bool,
}

// ---------------------------------------------------------------------------
// Header and nonces
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Header([u8; HEADER_LEN]);

impl Header {
    fn new(prefix: [u8; NONCE_PREFIX_LEN]) -> Self {
        let [c0, c1, c2, c3] = CHUNK_SIZE_U32.to_be_bytes();
        let [p0, p1, p2, p3, p4, p5, p6] = prefix;
        Self([FORMAT_VERSION, c0, c1, c2, c3, p0, p1, p2, p3, p4, p5, p6])
    }

    fn parse(bytes: [u8; HEADER_LEN]) -> Result<Self, BlobError> {
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

    fn nonce(&self, index: u32, last: bool) -> Nonce<U12> {
        let [_, _, _, _, _, p0, p1, p2, p3, p4, p5, p6] = self.0;
        let [i0, i1, i2, i3] = index.to_be_bytes();
        Nonce::<U12>::from([p0, p1, p2, p3, p4, p5, p6, i0, i1, i2, i3, u8::from(last)])
    }
}

/// Seals `buf[..len]` in place and appends the tag; returns the sealed length.
fn seal_chunk(
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

// ---------------------------------------------------------------------------
// I/O helpers
// ---------------------------------------------------------------------------

/// Reads until `buf` is full or the reader reports end of stream.
fn read_full<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> Result<usize, BlobError> {
    let mut filled = 0usize;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        let room = rest.len();
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled = filled.saturating_add(n.min(room)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

fn read_byte<R: Read + ?Sized>(reader: &mut R) -> Result<Option<u8>, BlobError> {
    let mut byte = [0u8; 1];
    Ok(match read_full(reader, &mut byte)? {
        0 => None,
        _ => {
            let [b] = byte;
            Some(b)
        }
    })
}

/// Fills `area` with the carried-over byte and then from `reader`, and
/// decides whether this is the final chunk by peeking one byte past a full
/// area. Returns `(filled, is_last)`.
fn fill_chunk<R: Read + ?Sized>(
    reader: &mut R,
    area: &mut [u8],
    pending: &mut Option<u8>,
) -> Result<(usize, bool), BlobError> {
    let mut filled = 0usize;
    if let Some(byte) = pending.take()
        && let Some(first) = area.first_mut()
    {
        *first = byte;
        filled = 1;
    }
    filled = filled.saturating_add(read_full(reader, area.get_mut(filled..).unwrap_or_default())?);
    if filled < area.len() {
        return Ok((filled, true));
    }
    match read_byte(reader)? {
        None => Ok((filled, true)),
        Some(byte) => {
            *pending = Some(byte);
            Ok((filled, false))
        }
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Ciphertext hashing, inline or pipelined on a second thread
// ---------------------------------------------------------------------------

/// One sealed-chunk buffer, wiped on drop.
type ChunkBuf = Zeroizing<Vec<u8>>;

struct Worker<'scope> {
    jobs: SyncSender<(ChunkBuf, usize)>,
    returned: Receiver<ChunkBuf>,
    handle: ScopedJoinHandle<'scope, Sha256>,
}

enum Hashing<'scope> {
    /// The digest was verified before decryption started.
    Off,
    Inline(Sha256),
    Worker(Worker<'scope>),
}

impl<'scope> Hashing<'scope> {
    fn is_worker(&self) -> bool {
        matches!(self, Self::Worker(_))
    }

    fn update_inline(&mut self, bytes: &[u8]) {
        if let Self::Inline(h) = self {
            h.update(bytes);
        }
    }

    /// Moves inline hashing to a second thread; stays inline if the thread
    /// cannot be spawned.
    fn start_worker<'env>(&mut self, scope: &'scope Scope<'scope, 'env>) {
        let Self::Inline(state) = self else {
            return;
        };
        let mut hasher = state.clone();
        // Both queues can hold every buffer in flight, so neither side ever
        // blocks on a send.
        let (jobs, job_rx) = mpsc::sync_channel::<(ChunkBuf, usize)>(PIPELINE_DEPTH);
        let (ret_tx, returned) = mpsc::sync_channel::<ChunkBuf>(PIPELINE_DEPTH);
        let spawned =
            thread::Builder::new().name("blob-sha256".into()).spawn_scoped(scope, move || {
                for (buf, len) in job_rx {
                    hasher.update(buf.get(..len).unwrap_or_default());
                    // Fails only once the producer has finished.
                    let _ = ret_tx.send(buf);
                }
                hasher
            });
        if let Ok(handle) = spawned {
            *self = Self::Worker(Worker { jobs, returned, handle });
        }
    }

    /// Passes a sealed buffer to the worker (one chunk at a time, so the
    /// worker starts at once and finishes one chunk after the producer), or
    /// gives it back when hashing is not pipelined.
    fn hand_off(&mut self, buf: ChunkBuf, len: usize) -> Result<Option<ChunkBuf>, BlobError> {
        match self {
            Self::Worker(w) => {
                w.jobs.send((buf, len)).map_err(|_| BlobError::HashWorker)?;
                Ok(None)
            }
            Self::Off | Self::Inline(_) => Ok(Some(buf)),
        }
    }

    /// Ends hashing (always joining the worker) and returns the digest.
    fn finish(self) -> Result<Option<[u8; 32]>, BlobError> {
        match self {
            Self::Off => Ok(None),
            Self::Inline(h) => Ok(Some(h.finalize().into())),
            Self::Worker(Worker { jobs, returned, handle }) => {
                drop(jobs);
                let joined = handle.join();
                drop(returned);
                let hasher = joined.map_err(|_| BlobError::HashWorker)?;
                Ok(Some(hasher.finalize().into()))
            }
        }
    }
}

/// Hands out chunk buffers, recycling those the worker returns, and keeps the
/// memory accounting.
#[derive(Default)]
struct Pool {
    sealed_buffers: usize,
    bytes: usize,
}

impl Pool {
    fn fresh(&mut self, len: usize) -> ChunkBuf {
        let buf = Zeroizing::new(vec![0u8; len]);
        self.bytes = self.bytes.saturating_add(buf.capacity());
        buf
    }

    fn acquire(&mut self, hashing: &mut Hashing<'_>) -> Result<ChunkBuf, BlobError> {
        if let Hashing::Worker(w) = hashing {
            if let Ok(buf) = w.returned.try_recv() {
                return Ok(buf);
            }
            if self.sealed_buffers >= PIPELINE_DEPTH {
                // Every buffer is queued or being hashed: wait for one.
                return w.returned.recv().map_err(|_| BlobError::HashWorker);
            }
        }
        self.sealed_buffers = self.sealed_buffers.saturating_add(1);
        Ok(self.fresh(SEALED_CHUNK_LEN))
    }
}

/// Ends a chunk: hands its sealed bytes (`buf[..sealed_len]`) to the hasher and, unless it
/// was the last chunk, moves `index` on and returns the buffer for the next one.
fn next_chunk_buffer(
    hashing: &mut Hashing<'_>,
    pool: &mut Pool,
    buf: ChunkBuf,
    sealed_len: usize,
    last: bool,
    index: &mut u32,
) -> Result<Option<ChunkBuf>, BlobError> {
    let returned = hashing.hand_off(buf, sealed_len)?;
    if last {
        return Ok(None);
    }
    *index = index.checked_add(1).ok_or(BlobError::TooManyChunks)?;
    match returned {
        Some(buf) => Ok(Some(buf)),
        None => pool.acquire(hashing).map(Some),
    }
}

#[derive(Default)]
struct Progress {
    plaintext_len: u64,
    ciphertext_len: u64,
    chunks: u64,
}

// ---------------------------------------------------------------------------
// Encryption
// ---------------------------------------------------------------------------

/// Streaming encryptor for one blob under a fresh key.
///
/// ```
/// use multidevice::blob::{BlobEncryptor, MediaType, STREAM_BUFFER_BYTES};
/// let mut rng = rand::rng();
/// let media = MediaType::new("application/octet-stream")?;
/// let mut ciphertext = Vec::new();
/// let (descriptor, stats) =
///     BlobEncryptor::new(&mut rng, media).encrypt(&b"hello"[..], &mut ciphertext)?;
/// assert_eq!(descriptor.plaintext_len(), 5);
/// assert!(stats.peak_buffer_bytes <= STREAM_BUFFER_BYTES);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BlobEncryptor {
    key: BlobKey,
    header: Header,
    media_type: MediaType,
    background_from: Option<u32>,
}

impl BlobEncryptor {
    /// Draws a fresh key and nonce prefix from `rng`.
    pub fn new<G: CryptoRng + ?Sized>(rng: &mut G, media_type: MediaType) -> Self {
        let key = BlobKey::generate(rng);
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut prefix);
        Self::from_parts(key, prefix, media_type)
    }

    fn from_parts(key: BlobKey, prefix: [u8; NONCE_PREFIX_LEN], media_type: MediaType) -> Self {
        Self {
            key,
            header: Header::new(prefix),
            media_type,
            background_from: Some(BACKGROUND_HASHING_FROM_CHUNK),
        }
    }

    /// Whether to hash the ciphertext on a second thread once the blob
    /// goes on past chunk [`BACKGROUND_HASHING_FROM_CHUNK`] (default `true`).
    /// With `false`, exactly one [`SEALED_CHUNK_LEN`] buffer is used and no
    /// thread is started.
    #[must_use]
    pub fn background_hashing(mut self, enabled: bool) -> Self {
        self.background_from = enabled.then_some(BACKGROUND_HASHING_FROM_CHUNK);
        self
    }

    /// Hashes on a second thread from chunk `index` on (if the blob has more
    /// chunks than that), instead of the default
    /// [`BACKGROUND_HASHING_FROM_CHUNK`].
    #[must_use]
    pub fn background_hashing_from_chunk(mut self, index: u32) -> Self {
        self.background_from = Some(index);
        self
    }

    /// The blob header this encryptor writes.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.header.0
    }

    /// Encrypts everything `reader` yields until end of stream into `writer`,
    /// chunk by chunk, hashing the ciphertext as it goes.
    ///
    /// # Errors
    /// [`BlobError::Io`] if reading or writing fails,
    /// [`BlobError::TooManyChunks`] past [`MAX_PLAINTEXT_LEN`]. The bytes
    /// already written are then not a valid blob.
    pub fn encrypt<R: Read, W: Write>(
        self,
        mut reader: R,
        mut writer: W,
    ) -> Result<(BlobDescriptor, StreamStats), BlobError> {
        let cipher = self.key.cipher()?;
        let header = self.header;
        let background = self.background_from;
        let (progress, digest, stats) = thread::scope(|scope| {
            let mut hashing = Hashing::Inline(Sha256::new());
            let mut pool = Pool::default();
            let result = encrypt_chunks(
                scope,
                &cipher,
                &header,
                &mut reader,
                &mut writer,
                &mut hashing,
                &mut pool,
                background,
            );
            let background_hashing = hashing.is_worker();
            let digest = hashing.finish();
            let progress = result?;
            let digest = digest?.ok_or(BlobError::HashWorker)?;
            let stats = StreamStats {
                plaintext_len: progress.plaintext_len,
                ciphertext_len: progress.ciphertext_len,
                chunks: progress.chunks,
                peak_buffer_bytes: pool.bytes,
                background_hashing,
            };
            Ok::<_, BlobError>((progress, digest, stats))
        })?;
        let descriptor =
            BlobDescriptor::new(self.key, progress.plaintext_len, digest, self.media_type)?;
        Ok((descriptor, stats))
    }
}

impl fmt::Debug for BlobEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobEncryptor")
            .field("key", &self.key)
            .field("header", &Hex(&self.header.0))
            .field("media_type", &self.media_type)
            .field("background_from", &self.background_from)
            .finish()
    }
}

#[allow(clippy::too_many_arguments)]
fn encrypt_chunks<'scope, 'env, R: Read + ?Sized, W: Write + ?Sized>(
    scope: &'scope Scope<'scope, 'env>,
    cipher: &Aes256Gcm,
    header: &Header,
    reader: &mut R,
    writer: &mut W,
    hashing: &mut Hashing<'scope>,
    pool: &mut Pool,
    background: Option<u32>,
) -> Result<Progress, BlobError> {
    writer.write_all(&header.0)?;
    hashing.update_inline(&header.0);
    let mut progress = Progress { ciphertext_len: HEADER_LEN_U64, ..Progress::default() };
    let mut pending = None;
    let mut index: u32 = 0;
    let mut buf = pool.acquire(hashing)?;
    loop {
        let area = buf.get_mut(..CHUNK_SIZE).unwrap_or_default();
        let (filled, last) = fill_chunk(reader, area, &mut pending)?;
        if !last && background.is_some_and(|from| index >= from) && !hashing.is_worker() {
            hashing.start_worker(scope);
        }
        let sealed_len = seal_chunk(cipher, header, index, last, &mut buf, filled)?;
        let sealed = buf.get(..sealed_len).unwrap_or_default();
        writer.write_all(sealed)?;
        hashing.update_inline(sealed);
        progress.plaintext_len = progress.plaintext_len.saturating_add(to_u64(filled));
        progress.ciphertext_len = progress.ciphertext_len.saturating_add(to_u64(sealed_len));
        progress.chunks = progress.chunks.saturating_add(1);
        match next_chunk_buffer(hashing, pool, buf, sealed_len, last, &mut index)? {
            Some(next) => buf = next,
            None => break,
        }
    }
    writer.flush()?;
    Ok(progress)
}

// ---------------------------------------------------------------------------
// Decryption
// ---------------------------------------------------------------------------

/// Streaming decryptor for one blob.
///
/// Writes authenticated plaintext chunk by chunk; each chunk is authentic on
/// its own, but the blob as a whole is only accepted when the call returns
/// `Ok`. On any error, everything already written must be discarded.
///
/// ```
/// use multidevice::blob::{encrypt_blob, BlobDecryptor, MediaType};
/// let mut rng = rand::rng();
/// let (ciphertext, descriptor) =
///     encrypt_blob(&mut rng, b"hello", MediaType::new("text/plain")?)?;
/// let mut plaintext = Vec::new();
/// let stats = BlobDecryptor::new(&descriptor).decrypt(&ciphertext[..], &mut plaintext)?;
/// assert_eq!((plaintext.as_slice(), stats.plaintext_len), (&b"hello"[..], 5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BlobDecryptor<'d> {
    descriptor: &'d BlobDescriptor,
    background_from: Option<u32>,
}

impl<'d> BlobDecryptor<'d> {
    /// A decryptor checking against `descriptor`.
    pub fn new(descriptor: &'d BlobDescriptor) -> Self {
        Self { descriptor, background_from: Some(BACKGROUND_HASHING_FROM_CHUNK) }
    }

    /// Whether to hash the ciphertext on a second thread once the blob
    /// goes on past chunk [`BACKGROUND_HASHING_FROM_CHUNK`] (default `true`).
    #[must_use]
    pub fn background_hashing(mut self, enabled: bool) -> Self {
        self.background_from = enabled.then_some(BACKGROUND_HASHING_FROM_CHUNK);
        self
    }

    /// Hashes on a second thread from chunk `index` on, instead of the
    /// default [`BACKGROUND_HASHING_FROM_CHUNK`].
    #[must_use]
    pub fn background_hashing_from_chunk(mut self, index: u32) -> Self {
        self.background_from = Some(index);
        self
    }

    /// Decrypts the blob `reader` yields into `writer`, then checks the
    /// plaintext length and the ciphertext SHA-256 against the descriptor.
    ///
    /// # Errors
    /// Any [`BlobError`] naming the violation; bytes already written to
    /// `writer` must then be discarded.
    pub fn decrypt<R: Read, W: Write>(
        &self,
        mut reader: R,
        mut writer: W,
    ) -> Result<StreamStats, BlobError> {
        decrypt_core(self.descriptor, &mut reader, &mut writer, Mode::Hash(self.background_from))
    }

    /// Hashes the whole ciphertext from the reader's current position to its
    /// end first and fails with [`BlobError::DigestMismatch`] before writing
    /// anything if it differs; then seeks back and decrypts as
    /// [`decrypt`](Self::decrypt) does (verifying the digest again, so a
    /// source that changes between the passes is still caught at the end).
    ///
    /// # Errors
    /// As [`decrypt`](Self::decrypt).
    pub fn decrypt_verified<R: Read + Seek, W: Write>(
        &self,
        mut reader: R,
        writer: W,
    ) -> Result<StreamStats, BlobError> {
        let start = reader.stream_position()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; SEALED_CHUNK_LEN];
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            hasher.update(buf.get(..n).unwrap_or_default());
            if n < buf.len() {
                break;
            }
        }
        drop(buf);
        let digest: [u8; 32] = hasher.finalize().into();
        if !bool::from(digest.ct_eq(&self.descriptor.ciphertext_sha256)) {
            return Err(BlobError::DigestMismatch);
        }
        reader.seek(SeekFrom::Start(start))?;
        self.decrypt(reader, writer)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Digest already verified: do not hash.
    Verified,
    /// Hash, on a second thread from the given chunk index on.
    Hash(Option<u32>),
}

fn decrypt_core<R: Read + ?Sized, W: Write + ?Sized>(
    descriptor: &BlobDescriptor,
    reader: &mut R,
    writer: &mut W,
    mode: Mode,
) -> Result<StreamStats, BlobError> {
    let cipher = descriptor.key.cipher()?;
    thread::scope(|scope| {
        let mut hashing = match mode {
            Mode::Verified => Hashing::Off,
            Mode::Hash(_) => Hashing::Inline(Sha256::new()),
        };
        let background = match mode {
            Mode::Verified => None,
            Mode::Hash(from) => from,
        };
        let mut pool = Pool::default();
        let result = decrypt_chunks(
            scope,
            &cipher,
            descriptor,
            reader,
            writer,
            &mut hashing,
            &mut pool,
            background,
        );
        let background_hashing = hashing.is_worker();
        let digest = hashing.finish();
        let progress = result?;
        let digest = digest?;
        if progress.plaintext_len != descriptor.plaintext_len {
            return Err(BlobError::LengthMismatch {
                expected: descriptor.plaintext_len,
                got: progress.plaintext_len,
            });
        }
        if let Some(digest) = digest
            && !bool::from(digest.ct_eq(&descriptor.ciphertext_sha256))
        {
            return Err(BlobError::DigestMismatch);
        }
        Ok(StreamStats {
            plaintext_len: progress.plaintext_len,
            ciphertext_len: progress.ciphertext_len,
            chunks: progress.chunks,
            peak_buffer_bytes: pool.bytes,
            background_hashing,
        })
    })
}

/// Names the violation when the final chunk does not authenticate, using the
/// (trusted) descriptor's length: a shorter stream was truncated, a longer
/// one was extended, an equally long one was corrupted.
fn final_chunk_error(seen: u64, expected: u64, index: u32) -> BlobError {
    match seen.cmp(&expected) {
        std::cmp::Ordering::Less => BlobError::Truncated,
        std::cmp::Ordering::Greater => BlobError::TrailingData,
        std::cmp::Ordering::Equal => BlobError::ChunkAuthentication { index },
    }
}

#[allow(clippy::too_many_arguments)]
fn decrypt_chunks<'scope, 'env, R: Read + ?Sized, W: Write + ?Sized>(
    scope: &'scope Scope<'scope, 'env>,
    cipher: &Aes256Gcm,
    descriptor: &BlobDescriptor,
    reader: &mut R,
    writer: &mut W,
    hashing: &mut Hashing<'scope>,
    pool: &mut Pool,
    background: Option<u32>,
) -> Result<Progress, BlobError> {
    let expected = descriptor.ciphertext_len();
    // Where the descriptor says the final chunk is, and how long it is sealed.
    let expected_last_index =
        descriptor.plaintext_len.div_ceil(CHUNK_SIZE_U64).max(1).saturating_sub(1);
    let expected_final_sealed = descriptor
        .plaintext_len
        .saturating_sub(expected_last_index.saturating_mul(CHUNK_SIZE_U64))
        .saturating_add(TAG_LEN_U64);
    let expected_final_sealed = usize::try_from(expected_final_sealed).unwrap_or(usize::MAX);
    let mut header = [0u8; HEADER_LEN];
    if read_full(reader, &mut header)? < HEADER_LEN {
        return Err(BlobError::Truncated);
    }
    let header = Header::parse(header)?;
    hashing.update_inline(&header.0);
    let mut progress = Progress { ciphertext_len: HEADER_LEN_U64, ..Progress::default() };
    let mut pending = None;
    let mut index: u32 = 0;
    let mut plain: Option<ChunkBuf> = None;
    let mut buf = pool.acquire(hashing)?;
    loop {
        let (filled, last) = fill_chunk(reader, &mut buf, &mut pending)?;
        progress.ciphertext_len = progress.ciphertext_len.saturating_add(to_u64(filled));
        if last && filled < TAG_LEN {
            return Err(final_chunk_error(progress.ciphertext_len, expected, index));
        }
        if !last && background.is_some_and(|from| index >= from) && !hashing.is_worker() {
            hashing.start_worker(scope);
            if hashing.is_worker() && plain.is_none() {
                plain = Some(pool.fresh(CHUNK_SIZE));
            }
        }
        let sealed = buf.get_mut(..filled).unwrap_or_default();
        // Pipelined: decrypt out of place so the worker can hash the
        // ciphertext. Otherwise hash first, then decrypt in place.
        let mut out = if hashing.is_worker() {
            plain.as_deref_mut().map(Vec::as_mut_slice)
        } else {
            hashing.update_inline(sealed);
            None
        };
        if !open_chunk(cipher, &header, index, last, sealed, out.as_deref_mut()) {
            if last {
                return Err(final_chunk_error(progress.ciphertext_len, expected, index));
            }
            // Where the final chunk should be, its expected prefix
            // authenticates as final: data was appended after it.
            if u64::from(index) == expected_last_index
                && let Some(prefix) = sealed.get_mut(..expected_final_sealed)
                && open_chunk(cipher, &header, index, true, prefix, out)
            {
                return Err(BlobError::TrailingData);
            }
            return Err(BlobError::ChunkAuthentication { index });
        }
        let plain_len = filled.saturating_sub(TAG_LEN);
        if last && plain_len == 0 && index > 0 {
            return Err(BlobError::EmptyFinalChunk { index });
        }
        let plaintext = match out {
            Some(out) => out.get(..plain_len),
            None => buf.get(..plain_len),
        };
        writer.write_all(plaintext.unwrap_or_default())?;
        progress.plaintext_len = progress.plaintext_len.saturating_add(to_u64(plain_len));
        progress.chunks = progress.chunks.saturating_add(1);
        match next_chunk_buffer(hashing, pool, buf, filled, last, &mut index)? {
            Some(next) => buf = next,
            None => break,
        }
    }
    writer.flush()?;
    Ok(progress)
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Encrypts a stream under a fresh key in constant memory and returns its
/// descriptor.
///
/// Reads `reader` to end of stream, writes the blob to `writer`, and hashes
/// the ciphertext as it goes (on a second thread for multi-chunk blobs).
/// Memory use is bounded by [`STREAM_BUFFER_BYTES`].
///
/// ```
/// use multidevice::blob::{decrypt_stream, encrypt_stream, MediaType};
///
/// let mut rng = rand::rng();
/// let message = vec![7u8; 200_000];
/// let mut ciphertext = Vec::new();
/// let descriptor = encrypt_stream(
///     &mut rng,
///     &message[..],
///     &mut ciphertext,
///     MediaType::new("video/mp4")?,
/// )?;
///
/// // The descriptor travels end-to-end encrypted, as bytes.
/// let wire = descriptor.to_bytes();
/// let received = multidevice::blob::BlobDescriptor::try_from(&wire[..])?;
///
/// let mut plaintext = Vec::new();
/// let len = decrypt_stream(&received, &ciphertext[..], &mut plaintext)?;
/// assert_eq!(len, 200_000);
/// assert_eq!(plaintext, message);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`BlobEncryptor::encrypt`].
pub fn encrypt_stream<G: CryptoRng + ?Sized, R: Read, W: Write>(
    rng: &mut G,
    reader: R,
    writer: W,
    media_type: MediaType,
) -> Result<BlobDescriptor, BlobError> {
    BlobEncryptor::new(rng, media_type).encrypt(reader, writer).map(|(descriptor, _)| descriptor)
}

/// Decrypts a blob stream against its descriptor and returns the plaintext
/// length.
///
/// Authenticated plaintext is written chunk by chunk as it is verified; the
/// plaintext length and the ciphertext SHA-256 are checked at the end. **On
/// any error, everything already written to `writer` must be discarded**:
/// use [`decrypt_verified`] or [`decrypt_blob`] where nothing may be written
/// before the digest is known to match.
///
/// # Errors
/// Any [`BlobError`] naming the violation.
pub fn decrypt_stream<R: Read, W: Write>(
    descriptor: &BlobDescriptor,
    reader: R,
    writer: W,
) -> Result<u64, BlobError> {
    BlobDecryptor::new(descriptor).decrypt(reader, writer).map(|stats| stats.plaintext_len)
}

/// Like [`decrypt_stream`], but first checks the ciphertext SHA-256 in a
/// separate pass over the seekable `reader`, so that a blob whose digest does
/// not match never yields a single plaintext byte.
///
/// # Errors
/// [`BlobError::DigestMismatch`] (nothing written), or any error of
/// [`decrypt_stream`].
pub fn decrypt_verified<R: Read + Seek, W: Write>(
    descriptor: &BlobDescriptor,
    reader: R,
    writer: W,
) -> Result<u64, BlobError> {
    BlobDecryptor::new(descriptor).decrypt_verified(reader, writer).map(|stats| stats.plaintext_len)
}

/// Encrypts an in-memory plaintext; returns the ciphertext and its
/// descriptor.
///
/// # Errors
/// [`BlobError::TooManyChunks`] above [`MAX_PLAINTEXT_LEN`].
pub fn encrypt_blob<G: CryptoRng + ?Sized>(
    rng: &mut G,
    plaintext: &[u8],
    media_type: MediaType,
) -> Result<(Vec<u8>, BlobDescriptor), BlobError> {
    let total = ciphertext_len(to_u64(plaintext.len())).ok_or(BlobError::TooManyChunks)?;
    let capacity = usize::try_from(total).map_err(|_| BlobError::TooManyChunks)?;
    let mut out = Vec::with_capacity(capacity);
    let (descriptor, _) = BlobEncryptor::new(rng, media_type).encrypt(plaintext, &mut out)?;
    Ok((out, descriptor))
}

/// Decrypts an in-memory blob. The ciphertext SHA-256 is verified **before**
/// anything is decrypted; the plaintext is returned in a buffer wiped on drop
/// (and is never reallocated, so no unwiped copy is left behind).
///
/// ```
/// use multidevice::blob::{decrypt_blob, encrypt_blob, BlobError, MediaType};
/// let mut rng = rand::rng();
/// let (mut ciphertext, descriptor) =
///     encrypt_blob(&mut rng, b"hi", MediaType::new("text/plain")?)?;
/// assert_eq!(decrypt_blob(&descriptor, &ciphertext)?.as_slice(), b"hi");
/// ciphertext[20] ^= 1;
/// assert_eq!(decrypt_blob(&descriptor, &ciphertext), Err(BlobError::DigestMismatch));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`BlobError::DigestMismatch`] before any decryption, otherwise any error
/// of [`decrypt_stream`].
pub fn decrypt_blob(
    descriptor: &BlobDescriptor,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BlobError> {
    let digest: [u8; 32] = Sha256::digest(ciphertext).into();
    if !bool::from(digest.ct_eq(&descriptor.ciphertext_sha256)) {
        return Err(BlobError::DigestMismatch);
    }
    // Plaintext is always shorter than the ciphertext: no reallocation.
    let mut out = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    let mut reader = ciphertext;
    decrypt_core(descriptor, &mut reader, &mut *out, Mode::Verified)?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Fuzzing entry points
// ---------------------------------------------------------------------------

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

/// Fuzz entry point for the chunk-stream decoder. Never panics; returns
/// `false` only if an invariant is broken:
/// 1. `data` decrypted as a blob under a fixed key is never accepted with a
///    wrong length or digest (and the decoder does not panic on it);
/// 2. `data` as a plaintext round-trips;
/// 3. that blob with one byte changed (position and XOR mask taken from
///    `data`) is rejected by both [`decrypt_stream`] and [`decrypt_blob`].
#[doc(hidden)]
pub fn fuzz_chunk_stream(data: &[u8]) -> bool {
    let Ok(media_type) = MediaType::new("application/octet-stream") else {
        return false;
    };
    let fixed_key = [0x42u8; KEY_LEN];

    // 1. Arbitrary bytes as ciphertext.
    let claimed_len =
        data.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b) % (MAX_PLAINTEXT_LEN + 1));
    let digest: [u8; 32] = Sha256::digest(data).into();
    let Ok(descriptor) = BlobDescriptor::new(
        BlobKey::from_bytes(&fixed_key),
        claimed_len,
        digest,
        media_type.clone(),
    ) else {
        return false;
    };
    if let Ok(n) = decrypt_stream(&descriptor, data, io::sink())
        && n != claimed_len
    {
        return false;
    }

    // 2. Round trip.
    let encryptor = BlobEncryptor::from_parts(
        BlobKey::from_bytes(&fixed_key),
        [0x24; NONCE_PREFIX_LEN],
        media_type,
    )
    .background_hashing_from_chunk(0);
    let mut blob = Vec::new();
    let Ok((descriptor, _)) = encryptor.encrypt(data, &mut blob) else {
        return false;
    };
    let mut plain = Vec::new();
    if decrypt_stream(&descriptor, &blob[..], &mut plain).is_err() || plain != data {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_accepts_common_types() {
        for ok in [
            "image/jpeg",
            "application/octet-stream",
            "application/vnd.whatsapp+json",
            "a/b",
            "audio/ogg",
            "x-3/y_z.1",
        ] {
            assert_eq!(MediaType::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn media_type_rejects_with_precise_errors() {
        use MediaTypeError as E;
        assert_eq!(MediaType::new(""), Err(E::TooShort));
        assert_eq!(MediaType::new("a/"), Err(E::TooShort));
        assert_eq!(MediaType::new("abc"), Err(E::MissingSlash));
        assert_eq!(MediaType::new("/abc"), Err(E::EmptyPart));
        assert_eq!(MediaType::new("abc/"), Err(E::EmptyPart));
        assert_eq!(MediaType::new("image/JPEG"), Err(E::InvalidByte { position: 6 }));
        assert_eq!(MediaType::new("image/jp/eg"), Err(E::InvalidByte { position: 8 }));
        assert_eq!(MediaType::new("-mage/jpeg"), Err(E::InvalidByte { position: 0 }));
        assert_eq!(MediaType::new("image/.jpeg"), Err(E::InvalidByte { position: 6 }));
        assert_eq!(
            MediaType::new("text/plain; charset=utf-8"),
            Err(E::InvalidByte { position: 10 })
        );
        assert_eq!(MediaType::new("image/jpé"), Err(E::InvalidByte { position: 8 }));
        let long = format!("a/{}", "b".repeat(63));
        assert_eq!(MediaType::new(&long), Err(E::TooLong { len: 65 }));
        let max = format!("a/{}", "b".repeat(62));
        assert!(MediaType::new(&max).is_ok());
    }

    #[test]
    fn media_type_serde_validates() {
        let parsed: Result<MediaType, _> = MediaType::try_from(String::from("Image/png"));
        assert!(parsed.is_err());
        let s: String = MediaType::new("image/png").unwrap().into();
        assert_eq!(s, "image/png");
    }

    #[test]
    fn chunk_index_overflow_is_too_many_chunks() {
        assert_eq!(
            u32::MAX.checked_add(1).ok_or(BlobError::TooManyChunks),
            Err(BlobError::TooManyChunks)
        );
        assert!(ciphertext_len(MAX_PLAINTEXT_LEN).is_some());
        assert_eq!(ciphertext_len(MAX_PLAINTEXT_LEN + 1), None);
        assert_eq!(
            ciphertext_len(MAX_PLAINTEXT_LEN),
            Some(HEADER_LEN_U64 + MAX_CHUNKS * TAG_LEN_U64 + MAX_PLAINTEXT_LEN)
        );
    }

    #[test]
    fn nonce_layout_is_prefix_index_flag() {
        let header = Header::new([1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            header.0,
            [1, 0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7],
            "version, chunk size 65536 big-endian, prefix"
        );
        let nonce: [u8; 12] = header.nonce(0x0102_0304, true).into();
        assert_eq!(nonce, [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 1]);
        let nonce: [u8; 12] = header.nonce(5, false).into();
        assert_eq!(nonce, [1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 5, 0]);
    }

    #[test]
    fn empty_final_chunk_after_full_chunk_is_rejected() {
        // A key holder can build the non-canonical framing
        // [full non-final chunk][empty final chunk]; it must be refused.
        let key = BlobKey::from_bytes(&[9; KEY_LEN]);
        let cipher = key.cipher().unwrap();
        let header = Header::new([3; NONCE_PREFIX_LEN]);
        let mut blob = header.0.to_vec();
        let mut chunk = vec![0u8; SEALED_CHUNK_LEN];
        seal_chunk(&cipher, &header, 0, false, &mut chunk, CHUNK_SIZE).unwrap();
        blob.extend_from_slice(&chunk);
        let mut empty = vec![0u8; TAG_LEN];
        seal_chunk(&cipher, &header, 1, true, &mut empty, 0).unwrap();
        blob.extend_from_slice(&empty);
        let digest: [u8; 32] = Sha256::digest(&blob).into();
        let descriptor =
            BlobDescriptor::new(key, CHUNK_SIZE_U64, digest, MediaType::new("a/b").unwrap())
                .unwrap();
        assert_eq!(
            decrypt_stream(&descriptor, &blob[..], io::sink()),
            Err(BlobError::EmptyFinalChunk { index: 1 })
        );
    }
}
