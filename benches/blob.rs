//! Blob encryption and decryption against the raw work they cannot avoid and against the
//! attachment formats users run today, on the same bytes in one run.
//!
//! Ids in group `blob`, per size (1 MiB, 64 MiB):
//! - `encrypt/<size>`: `encrypt_blob_into` (fresh key, HKDF key commitment and key schedule,
//!   chunking, ciphertext SHA-256, all on the calling thread) from a slice into a reused
//!   buffer; `decrypt/<size>`: `decrypt_blob_into` likewise (one pass, digest checked at the
//!   end, nothing kept unless it matches). These are the in-memory paths, shaped like the
//!   other formats' loops below: one copy of the data.
//! - `encrypt_stream/<size>`, `decrypt_stream/<size>`: `BlobEncryptor::encrypt` and
//!   `BlobDecryptor::decrypt` over `Read`/`Write` (a slice and a reused buffer), calling thread:
//!   a second copy (into the chunk buffer and out of it);
//! - `encrypt_threaded/<size>`, `decrypt_threaded/<size>`: the streaming ones with the opt-in
//!   hashing thread (`hashing(Hashing::SECOND_THREAD)`, from chunk 15 on);
//! - `decrypt_blob/<size>`: `decrypt_blob` (digest verified before any decryption, fresh wiped
//!   output buffer);
//! - `floor/<size>`: one raw AES-256-GCM seal in place; `floor_with_digest/<size>`: the raw
//!   work the format requires, on one thread: that seal plus one SHA-256 pass over the result;
//!   `sha256/<size>`: SHA-256 alone;
//! - `whatsapp_encrypt/<size>`, `whatsapp_decrypt/<size>`: WhatsApp's media format as
//!   publicly described: a 32-byte media key expanded by HKDF-SHA256 (info "WhatsApp Image
//!   Keys") into an IV, an AES-256 key and an HMAC key; AES-256-CBC with PKCS#7 padding;
//!   HMAC-SHA256 over `iv || ciphertext` truncated to 10 bytes and appended; SHA-256 of the
//!   encrypted file (`ciphertext || mac`). Decryption checks both and unpads. (WhatsApp's
//!   media messages also carry a SHA-256 of the plaintext; checking it would be one more pass,
//!   not counted here.)
//! - `matrix_encrypt/<size>`, `matrix_decrypt/<size>`: Matrix's attachment format: AES-256-CTR
//!   (128-bit big-endian counter, random IV) and SHA-256 of the ciphertext.
//!
//! Every in-memory implementation copies each 64 KiB piece once into a reused output buffer and
//! runs all of its format's passes over it there while it is in cache. Encryption draws a fresh
//! key in every iteration, in every format.
//!
//! `BLOB_INTERLEAVED_ROUNDS=N cargo bench --bench blob` runs the same operations round-robin
//! instead of through criterion and prints minima, medians and the target ratios (see
//! `interleaved`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, StreamCipher};
use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use multidevice::blob::{
    BlobDecryptor, BlobDescriptor, BlobEncryptor, Hashing, MediaType, decrypt_blob,
    decrypt_blob_into, encrypt_blob, encrypt_blob_into,
};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const SIZES: [(&str, usize); 2] = [("1MiB", 1024 * 1024), ("64MiB", 64 * 1024 * 1024)];

/// The piece every other format's implementation processes at a time (our chunk size).
const PIECE: usize = 64 * 1024;

type CbcEnc = cbc::Encryptor<Aes256>;
type CbcDec = cbc::Decryptor<Aes256>;
type Ctr = ctr::Ctr128BE<Aes256>;

/// A WhatsApp media key's expansion: IV, cipher key, MAC key.
struct WhatsAppKeys {
    iv: [u8; 16],
    cipher: [u8; 32],
    mac: [u8; 32],
}

fn whatsapp_keys(media_key: &[u8; 32]) -> WhatsAppKeys {
    let mut okm = [0u8; 112];
    Hkdf::<Sha256>::new(None, media_key).expand(b"WhatsApp Image Keys", &mut okm).unwrap();
    WhatsAppKeys {
        iv: okm[..16].try_into().unwrap(),
        cipher: okm[16..48].try_into().unwrap(),
        mac: okm[48..80].try_into().unwrap(),
    }
}

/// Encrypts into `out` (`ciphertext || mac10`); returns the SHA-256 of the encrypted file.
fn whatsapp_encrypt(media_key: &[u8; 32], plaintext: &[u8], out: &mut Vec<u8>) -> [u8; 32] {
    let keys = whatsapp_keys(media_key);
    let mut cbc = CbcEnc::new(&keys.cipher.into(), &keys.iv.into());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&keys.mac).unwrap();
    mac.update(&keys.iv);
    let mut file_sha256 = Sha256::new();
    out.clear();
    let whole = plaintext.len() / 16 * 16;
    for piece in plaintext[..whole].chunks(PIECE) {
        let start = out.len();
        out.extend_from_slice(piece);
        let (blocks, _) = aes::Block::slice_as_chunks_mut(&mut out[start..]);
        cbc.encrypt_blocks(blocks);
        mac.update(&out[start..]);
        file_sha256.update(&out[start..]);
    }
    let start = out.len();
    let tail = &plaintext[whole..];
    out.extend_from_slice(tail);
    out.resize(start + 16, 0);
    cbc.encrypt_padded::<Pkcs7>(&mut out[start..], tail.len()).unwrap();
    mac.update(&out[start..]);
    file_sha256.update(&out[start..]);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag[..10]);
    file_sha256.update(&tag[..10]);
    file_sha256.finalize().into()
}

/// Checks the file's SHA-256 and the MAC (in constant time) and decrypts into `out`.
fn whatsapp_decrypt(media_key: &[u8; 32], file: &[u8], file_sha256: &[u8; 32], out: &mut Vec<u8>) {
    let keys = whatsapp_keys(media_key);
    let (ciphertext, tag) = file.split_at(file.len() - 10);
    let (body, last) = ciphertext.split_at(ciphertext.len() - 16);
    let mut cbc = CbcDec::new(&keys.cipher.into(), &keys.iv.into());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&keys.mac).unwrap();
    mac.update(&keys.iv);
    let mut hash = Sha256::new();
    out.clear();
    for piece in body.chunks(PIECE) {
        hash.update(piece);
        mac.update(piece);
        let start = out.len();
        out.extend_from_slice(piece);
        let (blocks, _) = aes::Block::slice_as_chunks_mut(&mut out[start..]);
        cbc.decrypt_blocks(blocks);
    }
    hash.update(last);
    mac.update(last);
    hash.update(tag);
    let start = out.len();
    out.extend_from_slice(last);
    let unpadded = cbc.decrypt_padded::<Pkcs7>(&mut out[start..]).unwrap().len();
    out.truncate(start + unpadded);
    let digest: [u8; 32] = hash.finalize().into();
    assert!(bool::from(digest.ct_eq(file_sha256)), "file SHA-256");
    assert!(bool::from(mac.finalize().into_bytes()[..10].ct_eq(tag)), "media MAC");
}

/// Encrypts into `out`; returns the SHA-256 of the ciphertext.
fn matrix_encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8], out: &mut Vec<u8>) -> [u8; 32] {
    let mut ctr = Ctr::new(key.into(), iv.into());
    let mut hash = Sha256::new();
    out.clear();
    for piece in plaintext.chunks(PIECE) {
        let start = out.len();
        out.extend_from_slice(piece);
        ctr.apply_keystream(&mut out[start..]);
        hash.update(&out[start..]);
    }
    hash.finalize().into()
}

/// Checks the ciphertext's SHA-256 and decrypts into `out`.
fn matrix_decrypt(
    key: &[u8; 32],
    iv: &[u8; 16],
    ciphertext: &[u8],
    sha: &[u8; 32],
    out: &mut Vec<u8>,
) {
    let mut ctr = Ctr::new(key.into(), iv.into());
    let mut hash = Sha256::new();
    out.clear();
    for piece in ciphertext.chunks(PIECE) {
        hash.update(piece);
        let start = out.len();
        out.extend_from_slice(piece);
        ctr.apply_keystream(&mut out[start..]);
    }
    let digest: [u8; 32] = hash.finalize().into();
    assert!(bool::from(digest.ct_eq(sha)), "ciphertext SHA-256");
}

/// A Matrix IV: 64 random bits, then a zero 64-bit counter.
fn matrix_iv(rng: &mut StdRng) -> [u8; 16] {
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut iv[..8]);
    iv
}

/// Every operation the group measures, by its id.
#[derive(Clone, Copy)]
enum Op {
    Encrypt,
    Decrypt,
    EncryptStream,
    DecryptStream,
    EncryptThreaded,
    DecryptThreaded,
    DecryptBlob,
    Floor,
    FloorWithDigest,
    Sha256,
    WhatsAppEncrypt,
    WhatsAppDecrypt,
    MatrixEncrypt,
    MatrixDecrypt,
}

impl Op {
    const ALL: [Op; 14] = [
        Op::Encrypt,
        Op::Decrypt,
        Op::EncryptStream,
        Op::DecryptStream,
        Op::EncryptThreaded,
        Op::DecryptThreaded,
        Op::DecryptBlob,
        Op::Floor,
        Op::FloorWithDigest,
        Op::Sha256,
        Op::WhatsAppEncrypt,
        Op::WhatsAppDecrypt,
        Op::MatrixEncrypt,
        Op::MatrixDecrypt,
    ];

    fn id(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::EncryptStream => "encrypt_stream",
            Op::DecryptStream => "decrypt_stream",
            Op::EncryptThreaded => "encrypt_threaded",
            Op::DecryptThreaded => "decrypt_threaded",
            Op::DecryptBlob => "decrypt_blob",
            Op::Floor => "floor",
            Op::FloorWithDigest => "floor_with_digest",
            Op::Sha256 => "sha256",
            Op::WhatsAppEncrypt => "whatsapp_encrypt",
            Op::WhatsAppDecrypt => "whatsapp_decrypt",
            Op::MatrixEncrypt => "matrix_encrypt",
            Op::MatrixDecrypt => "matrix_decrypt",
        }
    }
}

/// The same bytes in every format, made once per size.
struct Fixture {
    media: MediaType,
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
    descriptor: BlobDescriptor,
    floor_cipher: Aes256Gcm,
    whatsapp_key: [u8; 32],
    whatsapp_file: Vec<u8>,
    whatsapp_sha256: [u8; 32],
    matrix_key: [u8; 32],
    matrix_iv: [u8; 16],
    matrix_attachment: Vec<u8>,
    matrix_sha256: [u8; 32],
}

/// What the operations write, reused from one iteration to the next.
struct Scratch {
    rng: StdRng,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Fixture {
    fn new(rng: &mut StdRng, size: usize) -> Self {
        let media = MediaType::new("application/octet-stream").unwrap();
        let mut plaintext = vec![0u8; size];
        rng.fill(&mut plaintext[..]);
        let (ciphertext, descriptor) = encrypt_blob(rng, &plaintext, media.clone()).unwrap();
        let mut out = Vec::new();
        let whatsapp_key: [u8; 32] = rng.random();
        let mut whatsapp_file = Vec::new();
        let whatsapp_sha256 = whatsapp_encrypt(&whatsapp_key, &plaintext, &mut whatsapp_file);
        whatsapp_decrypt(&whatsapp_key, &whatsapp_file, &whatsapp_sha256, &mut out);
        assert_eq!(out, plaintext);
        let (matrix_key, matrix_iv): ([u8; 32], _) = (rng.random(), matrix_iv(rng));
        let mut matrix_attachment = Vec::new();
        let matrix_sha256 =
            matrix_encrypt(&matrix_key, &matrix_iv, &plaintext, &mut matrix_attachment);
        matrix_decrypt(&matrix_key, &matrix_iv, &matrix_attachment, &matrix_sha256, &mut out);
        assert_eq!(out, plaintext);
        Self {
            media,
            plaintext,
            ciphertext,
            descriptor,
            floor_cipher: Aes256Gcm::new_from_slice(&[7u8; 32]).unwrap(),
            whatsapp_key,
            whatsapp_file,
            whatsapp_sha256,
            matrix_key,
            matrix_iv,
            matrix_attachment,
            matrix_sha256,
        }
    }

    fn scratch(&self, rng: &mut StdRng) -> Scratch {
        Scratch {
            rng: StdRng::from_rng(rng),
            out: Vec::with_capacity(self.ciphertext.len() + 64),
            buf: self.plaintext.clone(),
        }
    }

    fn run(&self, op: Op, s: &mut Scratch) {
        let nonce = Nonce::<U12>::from([9u8; 12]);
        s.out.clear();
        match op {
            Op::Encrypt => {
                let media = self.media.clone();
                black_box(
                    encrypt_blob_into(&mut s.rng, &self.plaintext, media, &mut s.out).unwrap(),
                );
            }
            Op::Decrypt => {
                black_box(
                    decrypt_blob_into(&self.descriptor, &self.ciphertext, &mut s.out).unwrap(),
                );
            }
            Op::EncryptStream | Op::EncryptThreaded => {
                let hashing = match op {
                    Op::EncryptThreaded => Hashing::SECOND_THREAD,
                    _ => Hashing::CallingThread,
                };
                let encryptor = BlobEncryptor::new(&mut s.rng, self.media.clone()).hashing(hashing);
                black_box(encryptor.encrypt(&self.plaintext[..], &mut s.out).unwrap());
            }
            Op::DecryptStream | Op::DecryptThreaded => {
                let hashing = match op {
                    Op::DecryptThreaded => Hashing::SECOND_THREAD,
                    _ => Hashing::CallingThread,
                };
                let decryptor = BlobDecryptor::new(&self.descriptor).hashing(hashing);
                black_box(decryptor.decrypt(&self.ciphertext[..], &mut s.out).unwrap());
            }
            Op::DecryptBlob => {
                black_box(decrypt_blob(&self.descriptor, &self.ciphertext).unwrap());
            }
            Op::Floor => {
                let buf = s.buf.as_mut_slice().into();
                black_box(self.floor_cipher.encrypt_inout_detached(&nonce, b"", buf).unwrap());
            }
            Op::FloorWithDigest => {
                let buf = s.buf.as_mut_slice().into();
                let tag = self.floor_cipher.encrypt_inout_detached(&nonce, b"", buf).unwrap();
                black_box((tag, Sha256::digest(&s.buf)));
            }
            Op::Sha256 => {
                black_box(Sha256::digest(&self.ciphertext));
            }
            Op::WhatsAppEncrypt => {
                let media_key: [u8; 32] = s.rng.random();
                black_box(whatsapp_encrypt(&media_key, &self.plaintext, &mut s.out));
            }
            Op::WhatsAppDecrypt => {
                let (key, file) = (&self.whatsapp_key, &self.whatsapp_file);
                whatsapp_decrypt(key, file, &self.whatsapp_sha256, &mut s.out);
            }
            Op::MatrixEncrypt => {
                let key: [u8; 32] = s.rng.random();
                let iv = matrix_iv(&mut s.rng);
                black_box(matrix_encrypt(&key, &iv, &self.plaintext, &mut s.out));
            }
            Op::MatrixDecrypt => {
                let (key, iv) = (&self.matrix_key, &self.matrix_iv);
                matrix_decrypt(key, iv, &self.matrix_attachment, &self.matrix_sha256, &mut s.out);
            }
        }
    }
}

fn bench_blob(c: &mut Criterion) {
    let mut group = c.benchmark_group("blob");
    // Flat sampling: every sample runs the same number of iterations, so a 64 MiB bench needs
    // 20 of them (not the 210 of linear sampling) and the run stays short.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut rng = StdRng::seed_from_u64(1);
    for (label, size) in SIZES {
        let fixture = Fixture::new(&mut rng, size);
        let mut scratch = fixture.scratch(&mut rng);
        group.throughput(Throughput::Bytes(size as u64));
        for op in Op::ALL {
            group.bench_function(BenchmarkId::new(op.id(), label), |b| {
                b.iter(|| fixture.run(op, &mut scratch));
            });
        }
    }
    group.finish();
}

/// `BLOB_INTERLEAVED_ROUNDS=N cargo bench --bench blob`: instead of criterion, runs every
/// operation once per round, in turn, for N rounds at 1 MiB (N / 16, at least 5, at 64 MiB),
/// and prints each one's minimum and
/// median and the target ratios of the minima. On a machine shared with other work, where
/// criterion's back-to-back samples of one id can all land in a busy spell, the minimum over
/// interleaved rounds is the steadier estimate of what each operation costs.
fn interleaved(rounds: usize) {
    let mut rng = StdRng::seed_from_u64(1);
    for (label, size) in SIZES {
        let fixture = Fixture::new(&mut rng, size);
        let mut scratch = fixture.scratch(&mut rng);
        let rounds = if size > 1 << 20 { (rounds / 16).max(5) } else { rounds };
        let mut times = vec![Vec::with_capacity(rounds); Op::ALL.len()];
        for _ in 0..rounds {
            for (op, times) in Op::ALL.into_iter().zip(&mut times) {
                let start = Instant::now();
                fixture.run(op, &mut scratch);
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let mut min = std::collections::HashMap::new();
        for (op, times) in Op::ALL.into_iter().zip(&mut times) {
            times.sort_by(f64::total_cmp);
            let (least, median) = (times[0], times[times.len() / 2]);
            println!("blob/{}/{label}: min {least:.3} ms, median {median:.3} ms", op.id());
            min.insert(op.id(), least);
        }
        let ratio = |a: &str, b: &str| min[a] / min[b];
        for (a, b) in [
            ("encrypt", "floor_with_digest"),
            ("decrypt", "floor_with_digest"),
            ("encrypt_stream", "floor_with_digest"),
            ("decrypt_stream", "floor_with_digest"),
            ("whatsapp_encrypt", "encrypt"),
            ("whatsapp_decrypt", "decrypt"),
            ("whatsapp_decrypt", "decrypt_threaded"),
            ("encrypt", "matrix_encrypt"),
            ("decrypt", "matrix_decrypt"),
            ("encrypt_threaded", "matrix_encrypt"),
            ("decrypt_threaded", "matrix_decrypt"),
            ("floor_with_digest", "matrix_encrypt"),
        ] {
            println!("{label}: {a} / {b} = {:.3}", ratio(a, b));
        }
    }
}

criterion_group!(benches, bench_blob);

fn main() {
    match std::env::var("BLOB_INTERLEAVED_ROUNDS").ok().and_then(|n| n.parse().ok()) {
        Some(rounds) => interleaved(rounds),
        None => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
