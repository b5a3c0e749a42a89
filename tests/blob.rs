//! Integration tests for `multidevice::blob`: round trips, the constant-memory
//! bound, every tampering case, descriptor checks and parser strictness.

// Test helpers outside `#[test]` functions are not covered by clippy.toml's
// `allow-*-in-tests`; pattern generators truncate on purpose.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::cell::Cell;
use std::convert::Infallible;
use std::io::{self, Cursor, Read, Write};
use std::rc::Rc;

use multidevice::blob::{
    BACKGROUND_HASHING_FROM_CHUNK, BlobDecryptor, BlobDescriptor, BlobEncryptor, BlobError,
    BlobKey, CHUNK_SIZE, COMMITMENT_LEN, DESCRIPTOR_MAX_LEN, DESCRIPTOR_MIN_LEN, HEADER_LEN,
    Hashing, MAX_PLAINTEXT_LEN, MediaType, MediaTypeError, SEALED_CHUNK_LEN, STREAM_BUFFER_BYTES,
    TAG_LEN, ciphertext_len, decrypt_blob, decrypt_blob_into, decrypt_stream, decrypt_verified,
    encrypt_blob, encrypt_blob_into, encrypt_stream, fuzz_chunk_stream, fuzz_descriptor,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng, TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

const L: usize = SEALED_CHUNK_LEN;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn media() -> MediaType {
    MediaType::new("application/octet-stream").unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

/// A blob with three full chunks and a 100-byte final chunk (4 chunks).
fn four_chunk_blob(seed: u64) -> (Vec<u8>, Vec<u8>, BlobDescriptor) {
    let plaintext = pattern(3 * CHUNK_SIZE + 100, seed as u8);
    let (ciphertext, descriptor) = encrypt_blob(&mut rng(seed), &plaintext, media()).unwrap();
    (plaintext, ciphertext, descriptor)
}

/// Byte range of sealed chunk `i` inside a blob.
fn chunk_range(ciphertext: &[u8], i: usize) -> std::ops::Range<usize> {
    let start = HEADER_LEN + i * L;
    start..(start + L).min(ciphertext.len())
}

fn stream_err(descriptor: &BlobDescriptor, ciphertext: &[u8]) -> BlobError {
    let mut out = Vec::new();
    decrypt_stream(descriptor, ciphertext, &mut out).unwrap_err()
}

/// Re-encodes `descriptor` with `edit` applied to its canonical bytes.
fn edited(descriptor: &BlobDescriptor, edit: impl FnOnce(&mut Vec<u8>)) -> BlobDescriptor {
    let mut bytes = descriptor.to_bytes().to_vec();
    edit(&mut bytes);
    BlobDescriptor::try_from(&bytes[..]).unwrap()
}

/// The same descriptor but committing to `ciphertext`'s digest, as a
/// malicious sender holding the key would produce: reaches the chunk checks
/// of `decrypt_blob`, which otherwise stops at the digest.
fn describing(descriptor: &BlobDescriptor, ciphertext: &[u8]) -> BlobDescriptor {
    let digest = Sha256::digest(ciphertext);
    edited(descriptor, |b| b[41..73].copy_from_slice(&digest))
}

/// Checks a tampered ciphertext fails with `expected` in the streaming path
/// (inline hashing and pipelined hashing), with `DigestMismatch` in the
/// in-memory path, and with `expected` again when the descriptor's digest
/// covers the tampered bytes.
fn assert_tamper(descriptor: &BlobDescriptor, tampered: &[u8], expected: BlobError) {
    assert_eq!(stream_err(descriptor, tampered), expected, "decrypt_stream");
    let pipelined = BlobDecryptor::new(descriptor)
        .hashing(Hashing::SecondThread { from_chunk: 0 })
        .decrypt(tampered, io::sink())
        .unwrap_err();
    assert_eq!(pipelined, expected, "decrypt with pipelined hashing");
    let mut out = b"kept".to_vec();
    assert_eq!(decrypt_blob_into(descriptor, tampered, &mut out).unwrap_err(), expected);
    assert_eq!(out, b"kept", "decrypt_blob_into appends nothing on an error");
    assert_eq!(
        decrypt_blob(descriptor, tampered).unwrap_err(),
        BlobError::DigestMismatch,
        "decrypt_blob checks the digest first"
    );
    assert_eq!(
        decrypt_blob(&describing(descriptor, tampered), tampered).unwrap_err(),
        expected,
        "decrypt_blob chunk checks"
    );
}

fn assert_round_trip(len: usize) {
    let plaintext = pattern(len, 7);
    let (ciphertext, descriptor) = encrypt_blob(&mut rng(len as u64), &plaintext, media()).unwrap();
    assert_eq!(ciphertext.len() as u64, ciphertext_len(len as u64).unwrap());
    assert_eq!(descriptor.plaintext_len(), len as u64);
    assert_eq!(descriptor.ciphertext_len(), ciphertext.len() as u64);
    assert_eq!(descriptor.ciphertext_sha256()[..], Sha256::digest(&ciphertext)[..]);
    assert_eq!(decrypt_blob(&descriptor, &ciphertext).unwrap()[..], plaintext[..]);

    for pipelined in [true, false] {
        let decryptor = BlobDecryptor::new(&descriptor);
        let decryptor = if pipelined {
            decryptor.hashing(Hashing::SecondThread { from_chunk: 0 })
        } else {
            decryptor
        };
        let mut out = Vec::new();
        let stats = decryptor.decrypt(&ciphertext[..], &mut out).unwrap();
        assert_eq!(stats.background_hashing, pipelined && len > CHUNK_SIZE);
        assert_eq!(out, plaintext);
        assert_eq!(stats.plaintext_len, len as u64);
        assert_eq!(stats.ciphertext_len, ciphertext.len() as u64);
    }

    let mut out = Vec::new();
    assert_eq!(
        decrypt_verified(&descriptor, Cursor::new(&ciphertext), &mut out).unwrap(),
        len as u64
    );
    assert_eq!(out, plaintext);

    // In memory, appended to what a reused buffer already holds.
    let mut out = b"before".to_vec();
    assert_eq!(decrypt_blob_into(&descriptor, &ciphertext, &mut out).unwrap(), len as u64);
    assert_eq!(out[..6], *b"before");
    assert_eq!(out[6..], plaintext[..]);
    let mut appended = b"before".to_vec();
    let into = encrypt_blob_into(&mut rng(len as u64), &plaintext, media(), &mut appended).unwrap();
    assert_eq!(appended[6..], ciphertext[..], "same randomness, same blob as encrypt_blob");
    assert_eq!(into, descriptor);

    let mut streamed = Vec::new();
    let (descriptor2, stats) = BlobEncryptor::new(&mut rng(1), media())
        .hashing(Hashing::SecondThread { from_chunk: 0 })
        .encrypt(&plaintext[..], &mut streamed)
        .unwrap();
    assert_eq!(stats.background_hashing, len > CHUNK_SIZE);
    assert!(stats.peak_buffer_bytes <= STREAM_BUFFER_BYTES);
    let mut again = Vec::new();
    encrypt_stream(&mut rng(1), &plaintext[..], &mut again, media()).unwrap();
    assert_eq!(again, streamed, "same randomness, same blob");
    let (in_memory, _) = encrypt_blob(&mut rng(1), &plaintext, media()).unwrap();
    assert_eq!(in_memory, streamed, "in memory and streamed alike");
    let mut out = Vec::new();
    assert_eq!(decrypt_stream(&descriptor2, &streamed[..], &mut out).unwrap(), len as u64);
    assert_eq!(out, plaintext);
}

// ---------------------------------------------------------------------------
// Round trips and layout
// ---------------------------------------------------------------------------

#[test]
fn round_trip_empty_blob_is_single_empty_final_chunk() {
    assert_round_trip(0);
    let (ciphertext, _) = encrypt_blob(&mut rng(0), b"", media()).unwrap();
    assert_eq!(ciphertext.len(), HEADER_LEN + TAG_LEN);
}

#[test]
fn round_trip_one_byte() {
    assert_round_trip(1);
}

#[test]
fn round_trip_chunk_size_minus_one() {
    assert_round_trip(CHUNK_SIZE - 1);
}

#[test]
fn round_trip_exact_chunk_size_is_one_full_final_chunk() {
    assert_round_trip(CHUNK_SIZE);
    let (ciphertext, _) = encrypt_blob(&mut rng(0), &pattern(CHUNK_SIZE, 0), media()).unwrap();
    assert_eq!(ciphertext.len(), HEADER_LEN + L);
}

#[test]
fn round_trip_chunk_size_plus_one_is_two_chunks() {
    assert_round_trip(CHUNK_SIZE + 1);
    let (ciphertext, _) = encrypt_blob(&mut rng(0), &pattern(CHUNK_SIZE + 1, 0), media()).unwrap();
    assert_eq!(ciphertext.len(), HEADER_LEN + L + 1 + TAG_LEN);
}

#[test]
fn round_trip_several_chunks() {
    assert_round_trip(2 * CHUNK_SIZE);
    assert_round_trip(3 * CHUNK_SIZE + 5);
}

/// Encrypts and decrypts a blob of `chunks` full chunks, opting in to the
/// hashing thread or not; returns whether each side hashed on a second thread.
fn hashed_in_background(chunks: usize, opt_in: bool) -> (bool, bool) {
    let plaintext = pattern(chunks * CHUNK_SIZE, 3);
    let mut out = Vec::new();
    let encryptor = BlobEncryptor::new(&mut rng(2), media());
    let encryptor = if opt_in { encryptor.hashing(Hashing::SECOND_THREAD) } else { encryptor };
    let (descriptor, enc) = encryptor.encrypt(&plaintext[..], &mut out).unwrap();
    assert_eq!(enc.chunks, chunks as u64);
    let decryptor = BlobDecryptor::new(&descriptor);
    let decryptor = if opt_in { decryptor.hashing(Hashing::SECOND_THREAD) } else { decryptor };
    let dec = decryptor.decrypt(&out[..], io::sink()).unwrap();
    for stats in [enc, dec] {
        match stats.background_hashing {
            false => assert_eq!(stats.peak_buffer_bytes, SEALED_CHUNK_LEN, "{stats:?}"),
            true => assert!(stats.peak_buffer_bytes <= STREAM_BUFFER_BYTES, "{stats:?}"),
        }
    }
    (enc.background_hashing, dec.background_hashing)
}

#[test]
fn small_blobs_never_start_a_hashing_thread_even_when_opted_in() {
    // The chunk at index BACKGROUND_HASHING_FROM_CHUNK starts the thread
    // only if another chunk follows it.
    let last_inline = BACKGROUND_HASHING_FROM_CHUNK as usize + 1;
    assert_eq!(hashed_in_background(1, true), (false, false));
    assert_eq!(hashed_in_background(last_inline, true), (false, false));
    assert_eq!(hashed_in_background(last_inline + 1, true), (true, true));
}

#[test]
fn no_hashing_thread_unless_the_app_asks() {
    let chunks = BACKGROUND_HASHING_FROM_CHUNK as usize + 20;
    assert_eq!(hashed_in_background(chunks, false), (false, false));
}

#[test]
fn header_commits_to_version_and_chunk_size() {
    let encryptor = BlobEncryptor::new(&mut rng(3), media());
    let header = encryptor.header();
    let mut ciphertext = Vec::new();
    encryptor.encrypt(&b"x"[..], &mut ciphertext).unwrap();
    assert_eq!(&ciphertext[..HEADER_LEN], &header);
    assert_eq!(header[0], 2, "version");
    assert_eq!(header[1..5], 65_536u32.to_be_bytes(), "chunk size");
    assert_eq!(HEADER_LEN, 1 + 4 + 7 + COMMITMENT_LEN, "nonce prefix, then key commitment");
}

#[test]
fn fresh_key_and_prefix_per_blob() {
    let mut r = rng(9);
    let (a, da) = encrypt_blob(&mut r, b"same", media()).unwrap();
    let (b, db) = encrypt_blob(&mut r, b"same", media()).unwrap();
    assert_ne!(da.key(), db.key());
    assert_ne!(a[5..HEADER_LEN], b[5..HEADER_LEN]);
    assert_ne!(a, b);
}

// ---------------------------------------------------------------------------
// Constant memory: 16 MiB through Read/Write adapters
// ---------------------------------------------------------------------------

/// Generates `len` pattern bytes on the fly, recording how many it has handed
/// out and the largest read request.
struct PatternReader {
    pos: usize,
    len: usize,
    produced: Rc<Cell<u64>>,
    max_request: usize,
}

fn pattern_byte(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ (i >> 16) as u8
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.max_request = self.max_request.max(buf.len());
        // Short reads on purpose, to exercise read_full.
        let n = buf.len().min(self.len - self.pos).min(40_000);
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(self.pos + k);
        }
        self.pos += n;
        self.produced.set(self.pos as u64);
        Ok(n)
    }
}

/// Reads from a slice, recording bytes consumed and the largest request.
struct CountingReader<'a> {
    inner: &'a [u8],
    consumed: Rc<Cell<u64>>,
    max_request: usize,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.max_request = self.max_request.max(buf.len());
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

/// Records the largest write and the largest gap between input consumed and
/// output produced (how much the stage holds back).
struct LagWriter<F: FnMut(&[u8])> {
    sink: F,
    input_seen: Rc<Cell<u64>>,
    written: u64,
    max_write: usize,
    max_lag: u64,
}

impl<F: FnMut(&[u8])> Write for LagWriter<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.max_write = self.max_write.max(buf.len());
        self.max_lag = self.max_lag.max(self.input_seen.get().saturating_sub(self.written));
        (self.sink)(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn streamed_round_trip(len: usize, background: bool) {
    // Encrypt from a generating reader.
    let produced = Rc::new(Cell::new(0));
    let mut reader = PatternReader { pos: 0, len, produced: produced.clone(), max_request: 0 };
    let mut ciphertext = Vec::with_capacity(ciphertext_len(len as u64).unwrap() as usize);
    let mut writer = LagWriter {
        sink: |b: &[u8]| ciphertext.extend_from_slice(b),
        input_seen: produced,
        written: 0,
        max_write: 0,
        max_lag: 0,
    };
    let encryptor = BlobEncryptor::new(&mut rng(16), media());
    let encryptor = if background { encryptor.hashing(Hashing::SECOND_THREAD) } else { encryptor };
    let (descriptor, enc) = encryptor.encrypt(&mut reader, &mut writer).unwrap();
    let (enc_max_write, enc_max_lag) = (writer.max_write, writer.max_lag);
    drop(writer);
    assert_eq!(enc.plaintext_len, len as u64);
    assert_eq!(enc.chunks, len.div_ceil(CHUNK_SIZE) as u64);
    assert!(enc.peak_buffer_bytes <= STREAM_BUFFER_BYTES);
    assert!(reader.max_request <= SEALED_CHUNK_LEN);
    assert!(enc_max_write <= SEALED_CHUNK_LEN);
    // Never holds more than one chunk (+ the look-ahead byte) of input back.
    assert!(enc_max_lag <= CHUNK_SIZE as u64 + 1, "lag {enc_max_lag}");
    assert_eq!(enc.background_hashing, background);
    if !background {
        assert_eq!(enc.peak_buffer_bytes, SEALED_CHUNK_LEN);
    }

    // Decrypt into a checking writer that stores nothing.
    let consumed = Rc::new(Cell::new(0));
    let mut reader =
        CountingReader { inner: &ciphertext, consumed: consumed.clone(), max_request: 0 };
    let mut position = 0usize;
    let mut mismatches = 0usize;
    let mut writer = LagWriter {
        sink: |b: &[u8]| {
            for &byte in b {
                mismatches += usize::from(byte != pattern_byte(position));
                position += 1;
            }
        },
        input_seen: consumed,
        written: 0,
        max_write: 0,
        max_lag: 0,
    };
    let decryptor = BlobDecryptor::new(&descriptor);
    let decryptor = if background { decryptor.hashing(Hashing::SECOND_THREAD) } else { decryptor };
    let dec = decryptor.decrypt(&mut reader, &mut writer).unwrap();
    let (dec_max_write, dec_max_lag) = (writer.max_write, writer.max_lag);
    drop(writer);
    assert_eq!((position, mismatches), (len, 0));
    assert_eq!(dec.plaintext_len, len as u64);
    assert!(dec.peak_buffer_bytes <= STREAM_BUFFER_BYTES);
    assert!(reader.max_request <= SEALED_CHUNK_LEN);
    assert!(dec_max_write <= CHUNK_SIZE);
    // Ciphertext consumed minus plaintext emitted: header, tags, and at most
    // one sealed chunk plus the look-ahead byte in flight.
    let tags = (dec.chunks * TAG_LEN as u64) + HEADER_LEN as u64;
    assert!(dec_max_lag <= tags + L as u64 + 1, "lag {dec_max_lag}");
    assert_eq!(dec.background_hashing, background);
}

#[test]
fn streamed_16mib_round_trip_stays_within_buffer_bound() {
    streamed_round_trip(16 * 1024 * 1024 + 12_345, true);
}

#[test]
fn streamed_round_trip_without_background_hashing_uses_one_buffer() {
    streamed_round_trip(4 * 1024 * 1024 + 1, false);
}

// ---------------------------------------------------------------------------
// Tampering
// ---------------------------------------------------------------------------

#[test]
fn truncation_at_every_chunk_boundary_is_truncated() {
    let (_, ciphertext, descriptor) = four_chunk_blob(1);
    for chunks in 0..4 {
        let cut = HEADER_LEN + chunks * L;
        assert_tamper(&descriptor, &ciphertext[..cut], BlobError::Truncated);
    }
}

#[test]
fn truncation_mid_chunk_and_mid_header_is_truncated() {
    let (_, ciphertext, descriptor) = four_chunk_blob(2);
    let mut cuts: Vec<usize> = (0..HEADER_LEN + 40).collect();
    cuts.extend((HEADER_LEN..ciphertext.len()).step_by(4099));
    for boundary in 1..=4 {
        let b = HEADER_LEN + boundary * L;
        cuts.extend([b - TAG_LEN, b - 1, b + 1, b + TAG_LEN]);
    }
    cuts.extend(ciphertext.len() - 20..ciphertext.len());
    for cut in cuts.into_iter().filter(|&c| c < ciphertext.len()) {
        let mut out = Vec::new();
        let err = decrypt_stream(&descriptor, &ciphertext[..cut], &mut out).unwrap_err();
        assert_eq!(err, BlobError::Truncated, "cut at {cut}");
    }
}

#[test]
fn lost_final_chunk_is_truncated() {
    let (_, ciphertext, descriptor) = four_chunk_blob(3);
    let without_final = &ciphertext[..chunk_range(&ciphertext, 3).start];
    assert_tamper(&descriptor, without_final, BlobError::Truncated);
}

#[test]
fn extension_after_final_chunk_is_trailing_data() {
    let (_, ciphertext, descriptor) = four_chunk_blob(4);
    for extra in [1usize, 15, 16, 17, 1000, L - 116, L, 3 * L + 7] {
        let mut extended = ciphertext.clone();
        extended.extend(std::iter::repeat_n(0xa5, extra));
        assert_tamper(&descriptor, &extended, BlobError::TrailingData);
    }
    // Final chunk duplicated at the end.
    let mut doubled = ciphertext.clone();
    doubled.extend_from_slice(&ciphertext[chunk_range(&ciphertext, 3)]);
    assert_tamper(&descriptor, &doubled, BlobError::TrailingData);
}

#[test]
fn extension_of_blob_ending_in_full_chunk_is_trailing_data() {
    let plaintext = pattern(2 * CHUNK_SIZE, 1);
    let (ciphertext, descriptor) = encrypt_blob(&mut rng(5), &plaintext, media()).unwrap();
    for extra in [1usize, 16, L, L + 1] {
        let mut extended = ciphertext.clone();
        extended.extend(std::iter::repeat_n(0, extra));
        assert_tamper(&descriptor, &extended, BlobError::TrailingData);
    }
}

#[test]
fn reordered_chunks_fail_authentication() {
    let (_, ciphertext, descriptor) = four_chunk_blob(6);
    let mut swapped = ciphertext.clone();
    let (r0, r1) = (chunk_range(&ciphertext, 0), chunk_range(&ciphertext, 1));
    swapped[r0.clone()].copy_from_slice(&ciphertext[r1.clone()]);
    swapped[r1].copy_from_slice(&ciphertext[r0]);
    assert_tamper(&descriptor, &swapped, BlobError::ChunkAuthentication { index: 0 });
}

#[test]
fn duplicated_chunk_fails_authentication() {
    let (_, ciphertext, descriptor) = four_chunk_blob(7);
    let r1 = chunk_range(&ciphertext, 1);
    let mut duplicated = ciphertext[..r1.end].to_vec();
    duplicated.extend_from_slice(&ciphertext[r1.clone()]);
    duplicated.extend_from_slice(&ciphertext[r1.end..]);
    assert_tamper(&descriptor, &duplicated, BlobError::ChunkAuthentication { index: 2 });
}

#[test]
fn dropped_middle_chunk_fails_authentication() {
    let (_, ciphertext, descriptor) = four_chunk_blob(8);
    let r1 = chunk_range(&ciphertext, 1);
    let mut dropped = ciphertext[..r1.start].to_vec();
    dropped.extend_from_slice(&ciphertext[r1.end..]);
    assert_tamper(&descriptor, &dropped, BlobError::ChunkAuthentication { index: 1 });
}

/// Hands out one fixed key for 32-byte requests (simulating a key
/// accidentally reused for two blobs) and real randomness otherwise.
struct ReusedKeyRng {
    key: [u8; 32],
    inner: StdRng,
}

impl TryRng for ReusedKeyRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.inner.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.inner.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        if dst.len() == 32 {
            dst.copy_from_slice(&self.key);
        } else {
            self.inner.fill_bytes(dst);
        }
        Ok(())
    }
}

impl TryCryptoRng for ReusedKeyRng {}

#[test]
fn chunk_swapped_from_other_blob_under_same_key_fails_authentication() {
    let mut r = ReusedKeyRng { key: [0x5a; 32], inner: rng(10) };
    let plaintext = pattern(3 * CHUNK_SIZE + 100, 1);
    let (a, da) = encrypt_blob(&mut r, &plaintext, media()).unwrap();
    let (b, db) = encrypt_blob(&mut r, &plaintext, media()).unwrap();
    assert_eq!(da.key(), db.key(), "same key on purpose");
    for index in 0..4 {
        let range = chunk_range(&a, index);
        let mut mixed = a.clone();
        mixed[range.clone()].copy_from_slice(&b[range]);
        assert_tamper(&da, &mixed, BlobError::ChunkAuthentication { index: index as u32 });
    }
}

/// Hands out fixed bytes for every request: same key and same nonce prefix.
struct ConstantRng;

impl TryRng for ConstantRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(7)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(7)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        dst.fill(7);
        Ok(())
    }
}

impl TryCryptoRng for ConstantRng {}

#[test]
fn digest_catches_swap_even_when_key_and_prefix_collide() {
    let (a, da) = encrypt_blob(&mut ConstantRng, &pattern(2 * CHUNK_SIZE, 1), media()).unwrap();
    let (b, _) = encrypt_blob(&mut ConstantRng, &pattern(2 * CHUNK_SIZE, 2), media()).unwrap();
    let mut mixed = a.clone();
    let range = chunk_range(&a, 0);
    mixed[range.clone()].copy_from_slice(&b[range]);
    // Full nonce reuse makes the chunk authentic; only the digest saves us.
    assert_eq!(stream_err(&da, &mixed), BlobError::DigestMismatch);
    assert_eq!(decrypt_blob(&da, &mixed).unwrap_err(), BlobError::DigestMismatch);
}

#[test]
fn header_bit_flips_are_detected_with_typed_errors() {
    let (_, ciphertext, descriptor) = four_chunk_blob(11);
    for bit in 0..HEADER_LEN * 8 {
        let mut flipped = ciphertext.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let expected = match bit / 8 {
            0 => BlobError::UnsupportedVersion(flipped[0]),
            1..=4 => BlobError::UnsupportedChunkSize(u32::from_be_bytes(
                flipped[1..5].try_into().unwrap(),
            )),
            5..=11 => BlobError::ChunkAuthentication { index: 0 },
            _ => BlobError::KeyCommitment,
        };
        assert_tamper(&descriptor, &flipped, expected);
    }
}

#[test]
fn bit_flip_in_every_region_is_detected() {
    let (_, ciphertext, descriptor) = four_chunk_blob(12);
    for index in 0..4 {
        let range = chunk_range(&ciphertext, index);
        let tag_start = range.end - TAG_LEN;
        for pos in [
            range.start,
            range.start + 1,
            (range.start + tag_start) / 2,
            tag_start - 1,
            tag_start,
            range.end - 1,
        ] {
            for bit in [0u8, 7] {
                let mut flipped = ciphertext.clone();
                flipped[pos] ^= 1 << bit;
                assert_tamper(
                    &descriptor,
                    &flipped,
                    BlobError::ChunkAuthentication { index: index as u32 },
                );
            }
        }
    }
}

#[test]
fn decryptor_never_succeeds_on_a_prefix() {
    let (_, ciphertext, descriptor) = four_chunk_blob(13);
    for cut in [0, HEADER_LEN, HEADER_LEN + L, HEADER_LEN + 3 * L] {
        let prefix = &ciphertext[..cut];
        assert!(decrypt_stream(&descriptor, prefix, io::sink()).is_err());
        assert!(decrypt_blob(&describing(&descriptor, prefix), prefix).is_err());
    }
}

// ---------------------------------------------------------------------------
// Descriptor checks
// ---------------------------------------------------------------------------

/// Records whether anything was ever written.
struct WatchWriter {
    bytes: usize,
}

impl Write for WatchWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn wrong_digest_is_rejected_before_any_plaintext_comes_out() {
    let (_, ciphertext, descriptor) = four_chunk_blob(14);
    let wrong = edited(&descriptor, |b| b[41] ^= 1);

    let mut watch = WatchWriter { bytes: 0 };
    assert_eq!(
        decrypt_verified(&wrong, Cursor::new(&ciphertext), &mut watch).unwrap_err(),
        BlobError::DigestMismatch
    );
    assert_eq!(watch.bytes, 0, "decrypt_verified wrote plaintext");

    assert_eq!(decrypt_blob(&wrong, &ciphertext).unwrap_err(), BlobError::DigestMismatch);

    // One pass in memory learns it at the end, and takes back what it appended.
    let mut out = Vec::new();
    assert_eq!(
        decrypt_blob_into(&wrong, &ciphertext, &mut out).unwrap_err(),
        BlobError::DigestMismatch
    );
    assert!(out.is_empty());

    // The streaming path only learns it at the end (and says so).
    let mut watch = WatchWriter { bytes: 0 };
    assert_eq!(
        decrypt_stream(&wrong, &ciphertext[..], &mut watch).unwrap_err(),
        BlobError::DigestMismatch
    );
    assert!(watch.bytes > 0, "documented: written bytes must be discarded");
}

#[test]
fn decrypt_verified_reads_from_current_position() {
    let (plaintext, ciphertext, descriptor) = four_chunk_blob(15);
    let mut file = b"unrelated prefix".to_vec();
    let offset = file.len() as u64;
    file.extend_from_slice(&ciphertext);
    let mut cursor = Cursor::new(file);
    cursor.set_position(offset);
    let mut out = Vec::new();
    decrypt_verified(&descriptor, &mut cursor, &mut out).unwrap();
    assert_eq!(out, plaintext);
}

#[test]
fn wrong_length_is_length_mismatch() {
    let (_, ciphertext, descriptor) = four_chunk_blob(16);
    let len = descriptor.plaintext_len();
    for claimed in [len + 1, len - 1, 0] {
        let wrong = edited(&descriptor, |b| b[33..41].copy_from_slice(&claimed.to_be_bytes()));
        let expected = BlobError::LengthMismatch { expected: claimed, got: len };
        assert_eq!(stream_err(&wrong, &ciphertext), expected);
        assert_eq!(decrypt_blob(&wrong, &ciphertext).unwrap_err(), expected);
        assert_eq!(
            decrypt_verified(&wrong, Cursor::new(&ciphertext), io::sink()).unwrap_err(),
            expected
        );
        let mut out = Vec::new();
        assert_eq!(decrypt_blob_into(&wrong, &ciphertext, &mut out).unwrap_err(), expected);
        assert!(out.is_empty());
    }
}

#[test]
fn wrong_key_fails_key_commitment_before_any_chunk() {
    let (_, ciphertext, descriptor) = four_chunk_blob(17);
    let wrong = BlobDescriptor::new(
        BlobKey::generate(&mut rng(99)),
        descriptor.plaintext_len(),
        *descriptor.ciphertext_sha256(),
        descriptor.media_type().clone(),
    )
    .unwrap();
    let expected = BlobError::KeyCommitment;
    let mut watch = WatchWriter { bytes: 0 };
    assert_eq!(decrypt_stream(&wrong, &ciphertext[..], &mut watch).unwrap_err(), expected);
    assert_eq!(watch.bytes, 0, "nothing decrypted under a key the header does not commit to");
    assert_eq!(decrypt_blob(&wrong, &ciphertext).unwrap_err(), expected);
    assert_eq!(
        decrypt_verified(&wrong, Cursor::new(&ciphertext), io::sink()).unwrap_err(),
        expected
    );
    let mut out = Vec::new();
    assert_eq!(decrypt_blob_into(&wrong, &ciphertext, &mut out).unwrap_err(), expected);
    assert!(out.is_empty());
    let threaded = BlobDecryptor::new(&wrong).hashing(Hashing::SecondThread { from_chunk: 0 });
    assert_eq!(threaded.decrypt(&ciphertext[..], io::sink()).unwrap_err(), expected);
}

#[test]
fn plaintext_length_beyond_chunk_index_range_is_too_many_chunks() {
    let (_, _, descriptor) = four_chunk_blob(18);
    let mut bytes = descriptor.to_bytes().to_vec();
    bytes[33..41].copy_from_slice(&(MAX_PLAINTEXT_LEN + 1).to_be_bytes());
    assert_eq!(BlobDescriptor::try_from(&bytes[..]).unwrap_err(), BlobError::TooManyChunks);
    bytes[33..41].copy_from_slice(&MAX_PLAINTEXT_LEN.to_be_bytes());
    assert!(BlobDescriptor::try_from(&bytes[..]).is_ok());
    assert_eq!(
        BlobDescriptor::new(BlobKey::from_bytes(&[1; 32]), u64::MAX, [0; 32], media()).unwrap_err(),
        BlobError::TooManyChunks
    );
    assert_eq!(ciphertext_len(MAX_PLAINTEXT_LEN + 1), None);
}

// ---------------------------------------------------------------------------
// Descriptor encoding
// ---------------------------------------------------------------------------

#[test]
fn descriptor_round_trips_canonically() {
    for media_type in ["a/b", "image/jpeg", &format!("x/{}", "y".repeat(62))] {
        let (_, descriptor) =
            encrypt_blob(&mut rng(19), b"abc", MediaType::new(media_type).unwrap()).unwrap();
        let bytes = descriptor.to_bytes();
        assert_eq!(bytes.len(), 74 + media_type.len());
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[33..41], 3u64.to_be_bytes());
        assert_eq!(bytes[73] as usize, media_type.len());
        let parsed = BlobDescriptor::try_from(&bytes[..]).unwrap();
        assert_eq!(parsed, descriptor);
        assert_eq!(parsed.to_bytes()[..], bytes[..]);
        assert_eq!(parsed.media_type().as_str(), media_type);
    }
}

#[test]
fn descriptor_parser_rejects_every_truncation() {
    let (_, descriptor) = encrypt_blob(&mut rng(20), b"abc", media()).unwrap();
    let bytes = descriptor.to_bytes();
    for len in 0..bytes.len() {
        assert_eq!(
            BlobDescriptor::try_from(&bytes[..len]).unwrap_err(),
            BlobError::DescriptorTruncated,
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn descriptor_parser_rejects_trailing_bytes() {
    for media_type in ["a/b", "application/octet-stream", &format!("x/{}", "y".repeat(62))] {
        let (_, descriptor) =
            encrypt_blob(&mut rng(21), b"", MediaType::new(media_type).unwrap()).unwrap();
        let bytes = descriptor.to_bytes();
        for extra in [&[0u8][..], b"x", &[0u8; 70]] {
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(extra);
            assert_eq!(
                BlobDescriptor::try_from(&longer[..]).unwrap_err(),
                BlobError::DescriptorTrailingBytes
            );
        }
    }
}

#[test]
fn descriptor_parser_checks_version_then_fields() {
    let (_, descriptor) = encrypt_blob(&mut rng(22), b"abc", media()).unwrap();
    let bytes = descriptor.to_bytes().to_vec();

    let mut v = bytes.clone();
    v[0] = 2;
    assert_eq!(
        BlobDescriptor::try_from(&v[..]).unwrap_err(),
        BlobError::UnsupportedDescriptorVersion(2)
    );
    // Length is checked before the version.
    assert_eq!(
        BlobDescriptor::try_from(&v[..DESCRIPTOR_MIN_LEN - 1]).unwrap_err(),
        BlobError::DescriptorTruncated
    );
    let mut too_long = v.clone();
    too_long.resize(DESCRIPTOR_MAX_LEN + 1, b'a');
    assert_eq!(
        BlobDescriptor::try_from(&too_long[..]).unwrap_err(),
        BlobError::DescriptorTrailingBytes
    );

    let mut m = bytes.clone();
    m[73] -= 1;
    assert_eq!(BlobDescriptor::try_from(&m[..]).unwrap_err(), BlobError::DescriptorTrailingBytes);
    m[73] += 2;
    assert_eq!(BlobDescriptor::try_from(&m[..]).unwrap_err(), BlobError::DescriptorTruncated);

    let mut bad = bytes.clone();
    bad[74] = b'A';
    assert_eq!(
        BlobDescriptor::try_from(&bad[..]).unwrap_err(),
        BlobError::InvalidMediaType(MediaTypeError::InvalidByte { position: 0 })
    );
    let mut non_utf8 = bytes;
    non_utf8[76] = 0xff;
    assert_eq!(
        BlobDescriptor::try_from(&non_utf8[..]).unwrap_err(),
        BlobError::InvalidMediaType(MediaTypeError::InvalidByte { position: 2 })
    );
}

#[test]
fn debug_output_never_shows_the_key() {
    let (_, descriptor) = encrypt_blob(&mut rng(23), b"abc", media()).unwrap();
    let key_hex: String = descriptor.to_bytes()[1..33].iter().map(|b| format!("{b:02x}")).collect();
    let key_bytes = format!("{:?}", &descriptor.to_bytes()[1..33]);
    for text in [
        format!("{descriptor:?}"),
        format!("{descriptor:#?}"),
        format!("{:?}", descriptor.key()),
        format!("{:?}", BlobEncryptor::new(&mut rng(23), media())),
    ] {
        assert!(!text.contains(&key_hex), "{text}");
        assert!(!text.contains(&key_bytes), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
}

// ---------------------------------------------------------------------------
// Property tests and fuzz entry points
// ---------------------------------------------------------------------------

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..300,
        (CHUNK_SIZE - 3)..(CHUNK_SIZE + 3),
        (2 * CHUNK_SIZE - 2)..(2 * CHUNK_SIZE + 2),
        0usize..(3 * CHUNK_SIZE),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn proptest_round_trip_and_single_byte_corruption_is_rejected(
        len in size_strategy(),
        seed in any::<u64>(),
        position in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut r = rng(seed);
        let mut plaintext = vec![0u8; len];
        r.fill(&mut plaintext[..]);
        let (ciphertext, descriptor) = encrypt_blob(&mut r, &plaintext, media()).unwrap();
        prop_assert_eq!(&decrypt_blob(&descriptor, &ciphertext).unwrap()[..], &plaintext[..]);

        let mut corrupted = ciphertext.clone();
        corrupted[position.index(ciphertext.len())] ^= mask;
        prop_assert!(decrypt_stream(&descriptor, &corrupted[..], io::sink()).is_err());
        prop_assert_eq!(decrypt_blob(&descriptor, &corrupted).unwrap_err(), BlobError::DigestMismatch);
        // Even a descriptor committing to the corrupted bytes is refused.
        prop_assert!(decrypt_blob(&describing(&descriptor, &corrupted), &corrupted).is_err());
    }
}

#[test]
fn fuzz_entry_points_hold_on_random_inputs() {
    let mut r = rng(24);
    let (_, descriptor) = encrypt_blob(&mut r, b"seed", media()).unwrap();
    let valid = descriptor.to_bytes().to_vec();
    assert!(fuzz_descriptor(&valid));
    for i in 0..400 {
        let len = r.random_range(0..200usize);
        let mut data = vec![0u8; len];
        r.fill(&mut data[..]);
        assert!(fuzz_descriptor(&data), "descriptor input {i}");
        assert!(fuzz_chunk_stream(&data), "stream input {i}");

        // Mutations of a valid descriptor reach the deeper parser paths.
        let mut mutated = valid.clone();
        let pos = r.random_range(0..mutated.len());
        mutated[pos] = r.random();
        if i % 3 == 0 {
            mutated.truncate(r.random_range(0..mutated.len()));
        }
        assert!(fuzz_descriptor(&mutated), "mutated descriptor {i}");
    }
    // A few multi-chunk inputs.
    for len in [CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 9] {
        let mut data = vec![0u8; len];
        r.fill(&mut data[..]);
        assert!(fuzz_chunk_stream(&data), "stream input of {len} bytes");
    }
}
