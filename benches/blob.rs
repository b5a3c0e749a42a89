//! Throughput of blob encryption and decryption against the raw AES-256-GCM
//! floor (one single-pass `encrypt_inout_detached` over the same bytes).
//!
//! Ids in group `blob`:
//! - `encrypt/<size>`: `BlobEncryptor::encrypt` with default settings (fresh
//!   key + key schedule, chunking, ciphertext SHA-256 on the calling thread)
//!   from a slice into a reused buffer;
//! - `encrypt_pipelined/<size>`: the same, hashing on a second thread from
//!   chunk 0; `encrypt_inline/<size>`: never on a second thread;
//! - `decrypt/<size>`, `decrypt_pipelined/<size>`, `decrypt_inline/<size>`:
//!   `BlobDecryptor::decrypt` likewise (streaming, digest checked at the end);
//! - `decrypt_blob/<size>`: `decrypt_blob` (digest verified before any
//!   decryption, fresh wiped output buffer);
//! - `floor/<size>`: raw AES-256-GCM seal in place; `floor_open/<size>`: raw
//!   open (out of place, no copy);
//! - `floor_with_digest/<size>`: the raw work the format requires, on one
//!   thread: that seal plus one SHA-256 pass over the result;
//! - `sha256/<size>`: SHA-256 alone, for reference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use multidevice::blob::{
    BlobDecryptor, BlobEncryptor, Hashing, MediaType, decrypt_blob, encrypt_blob,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};

const SIZES: [(&str, usize); 3] =
    [("64KiB", 64 * 1024), ("1MiB", 1024 * 1024), ("64MiB", 64 * 1024 * 1024)];

/// Name suffix and hashing setting: default (calling thread), pipelined from chunk 0, calling
/// thread.
const VARIANTS: [(&str, Option<bool>); 3] =
    [("", None), ("_pipelined", Some(true)), ("_inline", Some(false))];

fn bench_blob(c: &mut Criterion) {
    let mut group = c.benchmark_group("blob");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let media = MediaType::new("application/octet-stream").unwrap();
    let mut rng = StdRng::seed_from_u64(1);

    for (label, size) in SIZES {
        let mut plaintext = vec![0u8; size];
        rng.fill(&mut plaintext[..]);
        let (ciphertext, descriptor) = encrypt_blob(&mut rng, &plaintext, media.clone()).unwrap();
        let mut out = Vec::with_capacity(ciphertext.len());
        group.throughput(Throughput::Bytes(size as u64));

        for (suffix, forced) in VARIANTS {
            group.bench_function(BenchmarkId::new(format!("encrypt{suffix}"), label), |b| {
                b.iter(|| {
                    out.clear();
                    let encryptor = BlobEncryptor::new(&mut rng, media.clone());
                    let encryptor = match forced {
                        None => encryptor,
                        Some(true) => encryptor.hashing(Hashing::SecondThread { from_chunk: 0 }),
                        Some(false) => encryptor.hashing(Hashing::CallingThread),
                    };
                    black_box(encryptor.encrypt(&plaintext[..], &mut out).unwrap());
                });
            });
        }

        for (suffix, forced) in VARIANTS {
            let decryptor = BlobDecryptor::new(&descriptor);
            let decryptor = match forced {
                None => decryptor,
                Some(true) => decryptor.hashing(Hashing::SecondThread { from_chunk: 0 }),
                Some(false) => decryptor.hashing(Hashing::CallingThread),
            };
            group.bench_function(BenchmarkId::new(format!("decrypt{suffix}"), label), |b| {
                b.iter(|| {
                    out.clear();
                    black_box(decryptor.decrypt(&ciphertext[..], &mut out).unwrap());
                });
            });
        }

        group.bench_function(BenchmarkId::new("decrypt_blob", label), |b| {
            b.iter(|| black_box(decrypt_blob(&descriptor, &ciphertext).unwrap()));
        });

        let cipher = Aes256Gcm::new_from_slice(&[7u8; 32]).unwrap();
        let nonce = Nonce::<U12>::from([9u8; 12]);
        let mut buf = plaintext.clone();
        group.bench_function(BenchmarkId::new("floor", label), |b| {
            b.iter(|| {
                black_box(
                    cipher.encrypt_inout_detached(&nonce, b"", buf.as_mut_slice().into()).unwrap(),
                )
            });
        });
        group.bench_function(BenchmarkId::new("floor_with_digest", label), |b| {
            b.iter(|| {
                let tag =
                    cipher.encrypt_inout_detached(&nonce, b"", buf.as_mut_slice().into()).unwrap();
                black_box((tag, Sha256::digest(&buf)))
            });
        });
        let mut sealed = plaintext.clone();
        let tag = cipher.encrypt_inout_detached(&nonce, b"", sealed.as_mut_slice().into()).unwrap();
        group.bench_function(BenchmarkId::new("floor_open", label), |b| {
            b.iter(|| {
                let inout = InOutBuf::new(&sealed[..], &mut buf[..]).unwrap();
                cipher.decrypt_inout_detached(&nonce, b"", inout, &tag).unwrap();
            });
        });

        group.bench_function(BenchmarkId::new("sha256", label), |b| {
            b.iter(|| black_box(Sha256::digest(&ciphertext)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_blob);
criterion_main!(benches);
