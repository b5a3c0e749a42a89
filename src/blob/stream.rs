//! Streaming encryption and decryption of blobs, in constant memory.
//!
//! This module owns the chunk loops: it reads plaintext or ciphertext from a [`Read`], hands
//! each chunk to the format (`format`) and the hasher (`pipeline`), and writes the result to a
//! [`Write`]. It never writes a plaintext byte that did not authenticate, never reports success
//! for an incomplete blob, and never starts a thread unless the caller gave its encryptor or
//! decryptor [`Hashing::SecondThread`].

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::thread::Scope;

use aes_gcm::Aes256Gcm;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use super::descriptor::BlobDescriptor;
use super::format::{
    BlobKey, CHUNK_SIZE, Framing, HEADER_LEN, HEADER_LEN_U64, Header, NONCE_PREFIX_LEN,
    SEALED_CHUNK_LEN, seal_chunk,
};
use super::media_type::MediaType;
use super::pipeline::{ChunkBuf, Hasher, Hashing, Pool, next_chunk_buffer, with_scope};
use crate::crypto::{self, Hex};
use crate::error::BlobError;

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
    /// [`STREAM_BUFFER_BYTES`](super::STREAM_BUFFER_BYTES).
    pub peak_buffer_bytes: usize,
    /// Whether the ciphertext was hashed on a second thread (only ever when the caller opted
    /// in with [`Hashing::SecondThread`] and the blob went on past its chunk).
    pub background_hashing: bool,
}

/// What a run has done so far.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) plaintext_len: u64,
    pub(super) ciphertext_len: u64,
    chunks: u64,
}

impl Progress {
    /// A run that has read or written the header.
    pub(super) fn after_header() -> Self {
        Self { ciphertext_len: HEADER_LEN_U64, ..Self::default() }
    }

    /// Counts a chunk of `plaintext` bytes and `sealed` ciphertext bytes.
    pub(super) fn add_chunk(&mut self, plaintext: usize, sealed: usize) {
        self.plaintext_len = self.plaintext_len.saturating_add(to_u64(plaintext));
        self.ciphertext_len = self.ciphertext_len.saturating_add(to_u64(sealed));
        self.chunks = self.chunks.saturating_add(1);
    }

    fn stats(&self, pool: &Pool, background_hashing: bool) -> StreamStats {
        StreamStats {
            plaintext_len: self.plaintext_len,
            ciphertext_len: self.ciphertext_len,
            chunks: self.chunks,
            peak_buffer_bytes: pool.bytes(),
            background_hashing,
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

pub(super) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Encryption
// ---------------------------------------------------------------------------

/// Streaming encryptor for one blob under a fresh key.
///
/// Everything runs on the calling thread unless the caller opts in to a
/// hashing thread with [`hashing`](Self::hashing).
///
/// ```
/// use multidevice::blob::{BlobEncryptor, Hashing, MediaType, STREAM_BUFFER_BYTES};
/// let mut rng = rand::rng();
/// let media = MediaType::new("application/octet-stream")?;
/// let mut ciphertext = Vec::new();
/// let (descriptor, stats) =
///     BlobEncryptor::new(&mut rng, media).encrypt(&b"hello"[..], &mut ciphertext)?;
/// assert_eq!(descriptor.plaintext_len(), 5);
/// assert!(stats.peak_buffer_bytes <= STREAM_BUFFER_BYTES);
/// assert!(!stats.background_hashing);
///
/// // A 2 MiB blob, hashed on a second thread from 1 MiB on.
/// let big = vec![0u8; 2 << 20];
/// let (_, stats) = BlobEncryptor::new(&mut rng, MediaType::new("video/mp4")?)
///     .hashing(Hashing::SECOND_THREAD)
///     .encrypt(&big[..], std::io::sink())?;
/// assert!(stats.background_hashing);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BlobEncryptor {
    pub(super) key: BlobKey,
    pub(super) cipher: Aes256Gcm,
    pub(super) header: Header,
    pub(super) media_type: MediaType,
    hashing: Hashing,
}

impl BlobEncryptor {
    /// Draws a fresh key and nonce prefix from `rng`.
    pub fn new<G: CryptoRng + ?Sized>(rng: &mut G, media_type: MediaType) -> Self {
        let key = BlobKey::generate(rng);
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut prefix);
        Self::from_parts(key, &prefix, media_type)
    }

    /// An encryptor under a given key and nonce prefix (for the fuzz entry points' seeds).
    pub(super) fn from_parts(
        key: BlobKey,
        prefix: &[u8; NONCE_PREFIX_LEN],
        media_type: MediaType,
    ) -> Self {
        let (cipher, commitment) = key.derive();
        let header = Header::new(prefix, &commitment);
        Self { key, cipher, header, media_type, hashing: Hashing::CallingThread }
    }

    /// Where to hash the ciphertext. The default, [`Hashing::CallingThread`], starts no
    /// thread and uses exactly one [`SEALED_CHUNK_LEN`] buffer; [`Hashing::SECOND_THREAD`]
    /// opts in to a scoped thread, joined before [`encrypt`](Self::encrypt) returns.
    #[must_use]
    pub fn hashing(mut self, hashing: Hashing) -> Self {
        self.hashing = hashing;
        self
    }

    /// The blob header this encryptor writes (the key commitment included).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        *self.header.as_bytes()
    }

    /// Encrypts everything `reader` yields until end of stream into `writer`,
    /// chunk by chunk, hashing the ciphertext as it goes.
    ///
    /// # Errors
    /// [`BlobError::Io`] if reading or writing fails,
    /// [`BlobError::TooManyChunks`] past [`MAX_PLAINTEXT_LEN`](super::MAX_PLAINTEXT_LEN). The
    /// bytes already written are then not a valid blob.
    pub fn encrypt<R: Read, W: Write>(
        self,
        mut reader: R,
        mut writer: W,
    ) -> Result<(BlobDescriptor, StreamStats), BlobError> {
        let Self { key, cipher, header, media_type, hashing } = self;
        let thread_from = hashing.thread_from();
        let (digest, stats) = with_scope(thread_from.is_some(), |scope| {
            let mut hasher = Hasher::Inline(Sha256::new());
            let mut pool = Pool::default();
            let chunks = ChunkLoop { scope, cipher: &cipher, header: &header, thread_from };
            let result = chunks.encrypt(&mut reader, &mut writer, &mut hasher, &mut pool);
            let background_hashing = hasher.is_worker();
            let digest = hasher.finish();
            let progress = result?;
            let digest = digest?;
            Ok::<_, BlobError>((digest, progress.stats(&pool, background_hashing)))
        })?;
        let descriptor = BlobDescriptor::new(key, stats.plaintext_len, digest, media_type)?;
        Ok((descriptor, stats))
    }
}

impl fmt::Debug for BlobEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobEncryptor")
            .field("key", &self.key)
            .field("header", &Hex(self.header.as_bytes()))
            .field("media_type", &self.media_type)
            .field("hashing", &self.hashing)
            .finish_non_exhaustive()
    }
}

/// What every chunk of one run shares.
struct ChunkLoop<'a, 'scope, 'env> {
    /// Present only when the caller opted in to a hashing thread.
    scope: Option<&'scope Scope<'scope, 'env>>,
    cipher: &'a Aes256Gcm,
    header: &'a Header,
    /// Chunk index from which hashing moves to the thread, if opted in.
    thread_from: Option<u32>,
}

impl<'scope> ChunkLoop<'_, 'scope, '_> {
    /// Starts the hashing thread if the caller opted in, the blob has reached chunk `index`,
    /// and more chunks follow.
    fn maybe_start_worker(&self, hashing: &mut Hasher<'scope>, index: u32, last: bool) {
        if !last && self.thread_from.is_some_and(|from| index >= from) && !hashing.is_worker() {
            hashing.start_worker(self.scope);
        }
    }

    fn encrypt<R: Read + ?Sized, W: Write + ?Sized>(
        &self,
        reader: &mut R,
        writer: &mut W,
        hashing: &mut Hasher<'scope>,
        pool: &mut Pool,
    ) -> Result<Progress, BlobError> {
        let header = self.header.as_bytes();
        writer.write_all(header)?;
        hashing.update_inline(header);
        let mut progress = Progress::after_header();
        let mut pending = None;
        let mut index: u32 = 0;
        let mut buf = pool.acquire(hashing)?;
        loop {
            let area = buf.get_mut(..CHUNK_SIZE).unwrap_or_default();
            let (filled, last) = fill_chunk(reader, area, &mut pending)?;
            self.maybe_start_worker(hashing, index, last);
            let sealed_len = seal_chunk(self.cipher, self.header, index, last, &mut buf, filled)?;
            let sealed = buf.get(..sealed_len).unwrap_or_default();
            writer.write_all(sealed)?;
            hashing.update_inline(sealed);
            progress.add_chunk(filled, sealed_len);
            match next_chunk_buffer(hashing, pool, buf, sealed_len, last, &mut index)? {
                Some(next) => buf = next,
                None => break,
            }
        }
        writer.flush()?;
        Ok(progress)
    }

    /// Decrypts chunk by chunk after the header (already read and checked), hashing the
    /// header and the chunks unless the digest was verified before.
    fn decrypt<R: Read + ?Sized, W: Write + ?Sized>(
        &self,
        framing: &Framing,
        reader: &mut R,
        writer: &mut W,
        hashing: &mut Hasher<'scope>,
        pool: &mut Pool,
    ) -> Result<Progress, BlobError> {
        hashing.update_inline(self.header.as_bytes());
        let mut progress = Progress::after_header();
        let mut pending = None;
        let mut index: u32 = 0;
        let mut plain: Option<ChunkBuf> = None;
        let mut buf = pool.acquire(hashing)?;
        loop {
            let (filled, last) = fill_chunk(reader, &mut buf, &mut pending)?;
            // Counted as read, for the error paths.
            progress.ciphertext_len = progress.ciphertext_len.saturating_add(to_u64(filled));
            self.maybe_start_worker(hashing, index, last);
            if hashing.is_worker() && plain.is_none() {
                plain = Some(pool.fresh(CHUNK_SIZE));
            }
            let sealed = buf.get_mut(..filled).unwrap_or_default();
            // Pipelined: decrypt out of place so the worker can hash the
            // ciphertext. Otherwise hash first, then decrypt in place.
            let out = if hashing.is_worker() {
                plain.as_deref_mut().map(Vec::as_mut_slice)
            } else {
                hashing.update_inline(sealed);
                None
            };
            let seen = progress.ciphertext_len;
            let plain_len =
                framing.open(self.cipher, self.header, index, last, seen, sealed, out)?;
            let plaintext = match (&plain, hashing.is_worker()) {
                (Some(plain), true) => plain.get(..plain_len),
                _ => buf.get(..plain_len),
            };
            writer.write_all(plaintext.unwrap_or_default())?;
            progress.add_chunk(plain_len, 0);
            match next_chunk_buffer(hashing, pool, buf, filled, last, &mut index)? {
                Some(next) => buf = next,
                None => break,
            }
        }
        writer.flush()?;
        Ok(progress)
    }
}

// ---------------------------------------------------------------------------
// Decryption
// ---------------------------------------------------------------------------

/// Streaming decryptor for one blob.
///
/// Writes authenticated plaintext chunk by chunk; each chunk is authentic on
/// its own, but the blob as a whole is only accepted when the call returns
/// `Ok`. On any error, everything already written must be discarded.
/// Everything runs on the calling thread unless the caller opts in to a
/// hashing thread with [`hashing`](Self::hashing).
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
    hashing: Hashing,
}

impl<'d> BlobDecryptor<'d> {
    /// A decryptor checking against `descriptor`.
    pub fn new(descriptor: &'d BlobDescriptor) -> Self {
        Self { descriptor, hashing: Hashing::CallingThread }
    }

    /// Where to hash the ciphertext, as [`BlobEncryptor::hashing`]: by default on the calling
    /// thread.
    #[must_use]
    pub fn hashing(mut self, hashing: Hashing) -> Self {
        self.hashing = hashing;
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
        decrypt_core(self.descriptor, &mut reader, &mut writer, self.hashing.thread_from())
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
        if !crypto::ct_eq(&digest, self.descriptor.ciphertext_sha256()) {
            return Err(BlobError::DigestMismatch);
        }
        reader.seek(SeekFrom::Start(start))?;
        self.decrypt(reader, writer)
    }
}

/// Derives the cipher and the key commitment, reads the header and checks it against the
/// commitment before any chunk is decrypted, decrypts, then checks the length and digest.
fn decrypt_core<R: Read + ?Sized, W: Write + ?Sized>(
    descriptor: &BlobDescriptor,
    reader: &mut R,
    writer: &mut W,
    thread_from: Option<u32>,
) -> Result<StreamStats, BlobError> {
    let (cipher, commitment) = descriptor.key().derive();
    let mut header = [0u8; HEADER_LEN];
    if read_full(reader, &mut header)? < HEADER_LEN {
        return Err(BlobError::Truncated);
    }
    let header = Header::parse_committed(header, &commitment)?;
    let framing = Framing::new(descriptor.plaintext_len());
    with_scope(thread_from.is_some(), |scope| {
        let mut hasher = Hasher::Inline(Sha256::new());
        let mut pool = Pool::default();
        let chunks = ChunkLoop { scope, cipher: &cipher, header: &header, thread_from };
        let result = chunks.decrypt(&framing, reader, writer, &mut hasher, &mut pool);
        let background_hashing = hasher.is_worker();
        let digest = hasher.finish();
        let progress = result?;
        descriptor.check(progress.plaintext_len, Some(&digest?))?;
        Ok(progress.stats(&pool, background_hashing))
    })
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Encrypts a stream under a fresh key in constant memory and returns its
/// descriptor.
///
/// Reads `reader` to end of stream, writes the blob to `writer`, and hashes
/// the ciphertext as it goes, on the calling thread (for a hashing thread, use
/// [`BlobEncryptor::hashing`]). Memory use is one
/// [`SEALED_CHUNK_LEN`] buffer.
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
/// length, on the calling thread.
///
/// The header's key commitment is checked before any chunk is decrypted;
/// authenticated plaintext is written chunk by chunk as it is verified; the
/// plaintext length and the ciphertext SHA-256 are checked at the end. **On
/// any error, everything already written to `writer` must be discarded**:
/// use [`decrypt_verified`] or [`decrypt_blob`](super::decrypt_blob) where nothing may be written
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::format::{CHUNK_SIZE_U64, TAG_LEN};
    use crate::blob::{KEY_LEN, decrypt_blob};

    #[test]
    fn empty_final_chunk_after_full_chunk_is_rejected() {
        // A key holder can build the non-canonical framing
        // [full non-final chunk][empty final chunk]; it must be refused.
        let key = BlobKey::from_bytes(&[9; KEY_LEN]);
        let (cipher, commitment) = key.derive();
        let header = Header::new(&[3; NONCE_PREFIX_LEN], &commitment);
        let mut blob = header.as_bytes().to_vec();
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
        assert_eq!(decrypt_blob(&descriptor, &blob), Err(BlobError::EmptyFinalChunk { index: 1 }));
    }
}
