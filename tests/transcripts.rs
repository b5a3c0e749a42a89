//! Deterministic transcript vectors: `tests/vectors/multidevice/*.json`.
//!
//! Each file is one scenario run through the crate with a seeded RNG (ChaCha20, one fixed seed
//! per file) that records every byte the crate draws. Every intermediate value in a file is
//! computed **independently of the crate**: `tests/transcripts/spec.rs` re-implements
//! docs/PROTOCOL.md with the primitive crates (x25519-dalek, ed25519-dalek, curve25519-dalek,
//! hkdf, hmac, sha2, aes-gcm) alone, starting from the secret keys the crate used (read through
//! `multidevice::test_support`), and the generators assert that the crate's bytes equal the
//! spec computation's before recording them. docs/PROTOCOL.md, "Test vectors", says how another
//! implementation uses the files.
//!
//! Tests:
//! - `<name>_vector_matches_the_checked_in_file` regenerates each file in memory and compares it
//!   byte for byte with the checked-in one;
//! - `<name>_vector_replays` replays each file through the public API alone: devices rebuilt
//!   from the recorded randomness, recorded bytes parsed, verified and decrypted, outputs
//!   produced again from the recorded randomness and compared.
//!
//! **Regenerating.** After an intended change of the wire format or of a KDF (the blob format's
//! key commitment, say), update the spec model in `tests/transcripts/` and run
//!
//! ```text
//! MULTIDEVICE_REGENERATE_VECTORS=1 cargo test --test transcripts
//! ```
//!
//! which rewrites every file instead of comparing (`=blob,history` rewrites only those), then
//! review the diff and commit it with the change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "transcripts/common.rs"]
mod common;
#[path = "transcripts/content.rs"]
mod content;
#[path = "transcripts/group.rs"]
mod group;
#[path = "transcripts/linking.rs"]
mod linking;
#[path = "transcripts/replay.rs"]
mod replay;
#[path = "transcripts/retry.rs"]
mod retry;
#[path = "transcripts/session.rs"]
mod session;
#[path = "transcripts/spec.rs"]
mod spec;
#[path = "transcripts/vector.rs"]
mod vector;

use std::path::PathBuf;

use vector::{File, Vector};

/// The environment variable that turns the comparison into a rewrite.
const REGENERATE: &str = "MULTIDEVICE_REGENERATE_VECTORS";

/// Builds a vector, checking every value against the spec computation.
type Generator = fn() -> Vector;
/// Replays a vector file through the public API.
type Replayer = fn(&File);

/// Every vector: its file name (without `.json`), its generator and its replay.
const VECTORS: &[(&str, Generator, Replayer)] = &[
    ("identities", session::identities, replay::identities),
    ("session", session::session, replay::session),
    ("device_list", linking::device_list, replay::device_list),
    ("qr_link", linking::qr_link, replay::qr_link),
    ("pairing_code", linking::pairing_code, replay::pairing_code),
    ("fanout", content::fanout, replay::fanout),
    ("history", content::history, replay::history),
    ("security_code", content::security_code, replay::security_code),
    // The blob format is about to change (key commitment in the header): regenerate with
    // MULTIDEVICE_REGENERATE_VECTORS=blob,history after updating `content::record_blob`.
    ("blob", content::blob, replay::blob),
    ("group", group::group, replay::group),
    ("retry", retry::retry, replay::retry),
];

fn directory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/multidevice")
}

fn regenerating(name: &str) -> bool {
    std::env::var(REGENERATE)
        .is_ok_and(|value| value == "1" || value.split(',').any(|v| v.trim() == name))
}

fn entry(name: &str) -> (Generator, Replayer) {
    let (_, generate, replay) = VECTORS.iter().find(|v| v.0 == name).expect("a vector");
    (*generate, *replay)
}

/// Regenerates `name` in memory and compares it with the checked-in file, or rewrites the file.
fn check(name: &str) {
    let (generate, _) = entry(name);
    let vector = generate();
    assert_eq!(vector.name(), name);
    let text = vector.render();
    let path = directory().join(format!("{name}.json"));
    if regenerating(name) {
        std::fs::create_dir_all(directory()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; generate it with {REGENERATE}={name}", path.display())
    });
    if stored != text {
        let line = stored.lines().zip(text.lines()).position(|(a, b)| a != b);
        panic!(
            "{} differs from what the code produces now (first differing line: {line:?}); if the \
             change is intended, rerun with {REGENERATE}={name} and commit the diff",
            path.display()
        );
    }
}

/// Replays the checked-in file through the public API (the freshly generated one while
/// regenerating, so the two tests never race on the file).
fn replay(name: &str) {
    let (generate, replay) = entry(name);
    let text = if regenerating(name) {
        generate().render()
    } else {
        std::fs::read_to_string(directory().join(format!("{name}.json"))).unwrap()
    };
    let file = File::parse(&text);
    replay(&file);
}

macro_rules! vector_tests {
    ($($name:ident),* $(,)?) => {
        mod matches_the_checked_in_file {
            $(#[test] fn $name() { super::check(stringify!($name)); })*
        }
        mod replays {
            $(#[test] fn $name() { super::replay(stringify!($name)); })*
        }
    };
}

vector_tests!(
    identities,
    session,
    device_list,
    qr_link,
    pairing_code,
    fanout,
    history,
    security_code,
    blob,
    group,
    retry
);

#[test]
fn every_file_has_a_generator_and_every_generator_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(directory())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    let mut names: Vec<String> = VECTORS.iter().map(|v| format!("{}.json", v.0)).collect();
    names.sort();
    if std::env::var(REGENERATE).is_err() {
        assert_eq!(files, names);
    }
}

#[test]
fn every_file_records_each_name_once_with_a_description() {
    for (name, generate, _) in VECTORS {
        let file = File::parse(&generate().render());
        let mut seen = std::collections::BTreeSet::new();
        for (entry, kind, _) in &file.entries {
            assert!(seen.insert(entry.clone()), "{name}: {entry} twice");
            assert!(
                ["input", "random", "secret", "intermediate", "output"].contains(&kind.as_str()),
                "{name}: {entry}: kind {kind}"
            );
        }
    }
}
