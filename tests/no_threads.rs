//! The crate starts no thread unless the app asks for one (BRIEF §1).
//!
//! Every blob and history entry point runs on a blob of 20 chunks past the one from which an
//! opted-in hashing thread would start, and its writer counts this process's threads at every
//! write, while the work is under way. This file holds one test, so its binary runs no other
//! test's threads. The control opts in and must be seen starting a thread.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::io::{self, Cursor, Write};

use multidevice::blob::{
    BACKGROUND_HASHING_FROM_CHUNK, BlobDecryptor, BlobEncryptor, CHUNK_SIZE, Hashing, MediaType,
    decrypt_blob, decrypt_blob_into, decrypt_stream, decrypt_verified, encrypt_blob,
    encrypt_blob_into, encrypt_stream,
};
use multidevice::{build_history, import_history};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("Linux /proc").count()
}

/// A writer that keeps what it is given and the most threads it saw while being written to.
struct Watch {
    bytes: Vec<u8>,
    most_threads: usize,
}

impl Watch {
    fn new() -> Self {
        Self { bytes: Vec::new(), most_threads: threads() }
    }
}

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.most_threads = self.most_threads.max(threads());
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_entry_point_starts_a_thread_unless_the_app_opts_in() {
    let mut rng = StdRng::seed_from_u64(1);
    let media = MediaType::new("application/octet-stream").unwrap();
    let len = (BACKGROUND_HASHING_FROM_CHUNK as usize + 20) * CHUNK_SIZE;
    let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let baseline = threads();

    let mut blob = Watch::new();
    let descriptor = encrypt_stream(&mut rng, &plaintext[..], &mut blob, media.clone()).unwrap();
    let mut out = Watch::new();
    decrypt_stream(&descriptor, &blob.bytes[..], &mut out).unwrap();
    let mut verified = Watch::new();
    decrypt_verified(&descriptor, Cursor::new(&blob.bytes), &mut verified).unwrap();
    let mut encryptor_out = Watch::new();
    let (descriptor, _) = BlobEncryptor::new(&mut rng, media.clone())
        .encrypt(&plaintext[..], &mut encryptor_out)
        .unwrap();
    let mut decryptor_out = Watch::new();
    BlobDecryptor::new(&descriptor).decrypt(&encryptor_out.bytes[..], &mut decryptor_out).unwrap();
    let records = plaintext.chunks(CHUNK_SIZE / 2);
    let mut history = Watch::new();
    let descriptor = build_history(&mut rng, records, &mut history).unwrap();
    let count = import_history(descriptor, Cursor::new(&history.bytes), |_| {}).unwrap();
    assert_eq!(count, 2 * (BACKGROUND_HASHING_FROM_CHUNK as u64 + 20));
    for (name, watch) in [
        ("encrypt_stream", &blob),
        ("decrypt_stream", &out),
        ("decrypt_verified", &verified),
        ("BlobEncryptor", &encryptor_out),
        ("BlobDecryptor", &decryptor_out),
        ("build_history", &history),
    ] {
        assert_eq!(watch.most_threads, baseline, "{name} started a thread");
    }
    // In memory: no writer to watch from; the threads left over are counted instead.
    let (sealed, descriptor) = encrypt_blob(&mut rng, &plaintext, media.clone()).unwrap();
    assert_eq!(decrypt_blob(&descriptor, &sealed).unwrap().as_slice(), plaintext);
    let mut sealed = Vec::new();
    let descriptor = encrypt_blob_into(&mut rng, &plaintext, media.clone(), &mut sealed).unwrap();
    let mut opened = Vec::new();
    decrypt_blob_into(&descriptor, &sealed, &mut opened).unwrap();
    assert_eq!(opened, plaintext);
    assert_eq!(threads(), baseline);

    // The control: opted in, a thread is seen during the write.
    let mut opted_in = Watch::new();
    let (descriptor, stats) = BlobEncryptor::new(&mut rng, media)
        .hashing(Hashing::SECOND_THREAD)
        .encrypt(&plaintext[..], &mut opted_in)
        .unwrap();
    assert!(stats.background_hashing);
    assert!(opted_in.most_threads > baseline, "the watch sees an opted-in hashing thread");
    let mut out = Watch::new();
    let stats = BlobDecryptor::new(&descriptor)
        .hashing(Hashing::SECOND_THREAD)
        .decrypt(&opted_in.bytes[..], &mut out)
        .unwrap();
    assert!(stats.background_hashing && out.most_threads > baseline);
    assert_eq!(out.bytes, plaintext);
    assert_eq!(threads(), baseline, "joined before returning");
}
