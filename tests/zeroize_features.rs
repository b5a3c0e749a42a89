//! The dalek crates wipe their secrets only with their `zeroize` features on, and turning them
//! off compiles silently (vodozemac's CVE-2024-34063). These tests fail if they are ever off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::process::Command;

/// Compiles only if `T` wipes itself on drop.
fn assert_zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}

/// Compiles only if `T` can be wiped.
fn assert_zeroize<T: zeroize::Zeroize>() {}

/// The secret types the crate holds wipe themselves on drop (their `Drop` impls zeroize only
/// under the feature, and only then do they implement `ZeroizeOnDrop`). This alone could pass because
/// of a feature some dev-dependency turns on; the `cargo tree` test below checks the library's
/// own build.
#[test]
fn dalek_secret_types_implement_zeroize() {
    assert_zeroize_on_drop::<ed25519_dalek::SigningKey>();
    assert_zeroize_on_drop::<x25519_dalek::StaticSecret>();
    assert_zeroize_on_drop::<x25519_dalek::SharedSecret>();
    assert_zeroize::<curve25519_dalek::Scalar>();
}

/// Features of every package in the library's dependency graph as a user of the crate builds it:
/// default features, normal and build dependencies only (`-e no-dev`).
fn library_features(extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--manifest-path", manifest, "-e", "no-dev"])
        .args(["--prefix", "none", "--format", "{p}|{f}"])
        .args(extra)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut features = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let Some((package, list)) = line.split_once('|') else { continue };
        let name = package.split_whitespace().next().unwrap_or_default().to_owned();
        let list = list.trim_end_matches(" (*)").split(',').filter(|f| !f.is_empty());
        features.insert(name, list.map(str::to_owned).collect());
    }
    features
}

fn assert_zeroize_features(features: &BTreeMap<String, Vec<String>>) {
    for package in ["x25519-dalek", "ed25519-dalek", "curve25519-dalek"] {
        let enabled = features.get(package).unwrap_or_else(|| panic!("{package} not in the tree"));
        assert!(
            enabled.iter().any(|f| f == "zeroize"),
            "{package} is built without its zeroize feature: {enabled:?}"
        );
    }
}

#[test]
fn dalek_zeroize_features_are_on_in_the_library_build() {
    assert_zeroize_features(&library_features(&[]));
}

#[test]
fn dalek_zeroize_features_are_on_without_default_features() {
    assert_zeroize_features(&library_features(&["--no-default-features"]));
}

#[test]
fn dalek_zeroize_features_are_on_with_all_features() {
    assert_zeroize_features(&library_features(&["--all-features"]));
}
