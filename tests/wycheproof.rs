//! Wycheproof known-answer tests through the public API: low-order and zero-shared-secret X25519
//! keys wherever a peer supplies a key, Ed25519 strict verification, and single-bit flips in
//! every signature a peer hands us.
//!
//! The vectors are in `tests/vectors/wycheproof/` (see its README for provenance and license).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use multidevice::{
    Action, DecodeError, Device, KeyError, PrekeyBundle, PublicIdentity, SessionError,
    SessionMessage, SignatureKind, hazmat,
};
use serde::Deserialize;
use support::*;

// ---------------------------------------------------------------------------------------------
// Vector files
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Suite<G> {
    #[serde(rename = "numberOfTests")]
    number_of_tests: usize,
    #[serde(rename = "testGroups")]
    test_groups: Vec<G>,
}

#[derive(Deserialize)]
struct XdhGroup {
    tests: Vec<XdhCase>,
}

#[derive(Deserialize)]
struct XdhCase {
    #[serde(rename = "tcId")]
    id: u32,
    flags: Vec<String>,
    public: String,
    shared: String,
}

#[derive(Deserialize)]
struct EddsaGroup {
    #[serde(rename = "publicKey")]
    public_key: EddsaKey,
    tests: Vec<EddsaCase>,
}

#[derive(Deserialize)]
struct EddsaKey {
    pk: String,
}

#[derive(Deserialize)]
struct EddsaCase {
    #[serde(rename = "tcId")]
    id: u32,
    comment: String,
    msg: String,
    sig: String,
    result: String,
}

fn load<G: for<'de> Deserialize<'de>>(file: &str) -> Suite<G> {
    let path = format!("{}/tests/vectors/wycheproof/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let suite: Suite<G> = serde_json::from_str(&text).unwrap();
    assert!(suite.number_of_tests > 0);
    suite
}

fn hex(text: &str) -> Vec<u8> {
    assert_eq!(text.len() % 2, 0, "odd-length hex");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn key32(text: &str) -> [u8; 32] {
    hex(text).try_into().unwrap()
}

/// One distinct X25519 public key from the suite, with the first test case that uses it.
struct XKey {
    id: u32,
    public: [u8; 32],
    zero_shared: bool,
}

/// Every distinct public key of `x25519_test.json`.
fn x25519_keys() -> Vec<XKey> {
    let suite: Suite<XdhGroup> = load("x25519_test.json");
    let mut keys: BTreeMap<[u8; 32], XKey> = BTreeMap::new();
    for case in suite.test_groups.iter().flat_map(|g| &g.tests) {
        let public = key32(&case.public);
        let zero_shared = key32(&case.shared) == [0; 32];
        let flagged = case.flags.iter().any(|f| {
            matches!(f.as_str(), "LowOrderPublic" | "ZeroSharedSecret" | "SmallPublicKey")
        });
        let key = keys.entry(public).or_insert(XKey { id: case.id, public, zero_shared });
        // A key that gives an all-zero secret with one clamped scalar does so with all of them.
        assert_eq!(key.zero_shared, zero_shared, "tcId {} disagrees with tcId {}", case.id, key.id);
        if flagged {
            assert!(zero_shared, "tcId {} is flagged but has a non-zero shared secret", case.id);
        }
    }
    keys.into_values().collect()
}

/// The keys a peer must never get a session accepted with: every key flagged `LowOrderPublic`,
/// `ZeroSharedSecret` or `SmallPublicKey`, and every key with an all-zero shared secret.
fn bad_x25519_keys() -> Vec<XKey> {
    let bad: Vec<XKey> = x25519_keys().into_iter().filter(|k| k.zero_shared).collect();
    assert!(bad.len() >= 10, "expected the suite's low-order keys, found {}", bad.len());
    bad
}

const NON_CONTRIBUTORY: SessionError = SessionError::Key(KeyError::NonContributoryKey);

/// The rejection a bad peer key gets: non-canonical encodings are refused before the DH.
fn rejection(key: &[u8; 32]) -> SessionError {
    if canonical(key) { NON_CONTRIBUTORY } else { SessionError::Key(KeyError::NonCanonicalKey) }
}

// ---------------------------------------------------------------------------------------------
// Wire offsets, from docs/PROTOCOL.md §2, §3 and §6
// ---------------------------------------------------------------------------------------------

/// In a `PublicIdentity`: signing key, agreement key, agreement signature.
const IDENTITY_AGREEMENT: std::ops::Range<usize> = 32..64;
const IDENTITY_SIGNATURE: std::ops::Range<usize> = 64..128;
/// In a `PrekeyBundle`: version, type, address, identity, then the signed prekey.
const BUNDLE_IDENTITY: usize = 2 + 12;
const BUNDLE_SIGNED_PREKEY: usize = BUNDLE_IDENTITY + PublicIdentity::LEN;
const BUNDLE_SIGNED_PREKEY_SIGNATURE: std::ops::Range<usize> =
    BUNDLE_SIGNED_PREKEY + 36..BUNDLE_SIGNED_PREKEY + 100;
/// In a session message: version, type, kind, sender, recipient.
const MESSAGE_BODY: usize = 3 + 12 + 12;
/// Ratchet key of a type 0x01 message: after the 16-byte session id.
const MESSAGE_RATCHET_KEY: std::ops::Range<usize> = MESSAGE_BODY + 16..MESSAGE_BODY + 48;
/// In a prekey message (type 0x02): the sender identity, then the base key.
const PREKEY_IDENTITY: std::ops::Range<usize> = MESSAGE_BODY..MESSAGE_BODY + PublicIdentity::LEN;
const PREKEY_BASE_KEY: std::ops::Range<usize> = PREKEY_IDENTITY.end..PREKEY_IDENTITY.end + 32;

/// The ratchet key of a prekey message: after base key, signed prekey id, the one-time flag and
/// id, and the session id.
fn prekey_ratchet_key(message: &[u8]) -> std::ops::Range<usize> {
    let flag = PREKEY_BASE_KEY.end + 4;
    let start = flag + 1 + if message[flag] == 1 { 4 } else { 0 } + 16;
    start..start + 32
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[bit / 8] ^= 1 << (bit % 8);
    flipped
}

/// Asserts that `wire` is rejected with exactly `expected` and leaves `device` byte-identical.
fn rejected_with(device: &mut Device, wire: &[u8], expected: SessionError, case: u32) {
    let before = snapshot(device);
    let error = hazmat::decrypt(device, wire, T0).expect_err("must be rejected");
    assert_eq!(error, expected, "tcId {case}");
    assert_eq!(snapshot(device), before, "tcId {case}: state changed");
}

/// An identity an attacker builds with its own signing key, exactly as docs/PROTOCOL.md §2 says:
/// a validly signed identity whose agreement key is whatever the attacker wants.
struct Attacker {
    key: SigningKey,
}

impl Attacker {
    fn new() -> Self {
        Self { key: SigningKey::from_bytes(&[0x5A; 32]) }
    }

    fn sign(&self, label: &[u8], body: &[&[u8]]) -> [u8; 64] {
        let mut message = label.to_vec();
        message.push(0);
        for part in body {
            message.extend_from_slice(part);
        }
        self.key.sign(&message).to_bytes()
    }

    fn identity(&self, agreement: &[u8; 32]) -> Vec<u8> {
        let mut out = self.key.verifying_key().to_bytes().to_vec();
        out.extend_from_slice(agreement);
        out.extend_from_slice(
            &self.sign(b"multidevice/v1/sig/identity-agreement-key", &[agreement]),
        );
        out
    }

    /// A bundle for address 3:0 with this identity and a signed prekey, no one-time prekey.
    fn bundle(&self, agreement: &[u8; 32], signed_prekey: &[u8; 32]) -> PrekeyBundle {
        let id = 1u32.to_be_bytes();
        let mut out = vec![1, 0x10];
        out.extend_from_slice(&3u64.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.identity(agreement));
        out.extend_from_slice(&id);
        out.extend_from_slice(signed_prekey);
        out.extend_from_slice(
            &self.sign(b"multidevice/v1/sig/signed-prekey", &[&id, signed_prekey]),
        );
        out.push(0);
        PrekeyBundle::try_from(out.as_slice()).expect("a bundle built to the spec parses")
    }
}

// ---------------------------------------------------------------------------------------------
// X25519: keys in bundles
// ---------------------------------------------------------------------------------------------

/// The one-time prekey is not covered by any signature, so a malicious server can swap in any
/// key: starting a session with a low-order one must fail and change nothing.
#[test]
fn x25519_low_order_one_time_prekey_is_rejected() {
    let mut rng = rng(1);
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let bob = device(&mut rng, addr(2, 0), 1);
    for key in bad_x25519_keys() {
        let mut bundle = bob.prekey_upload().bundle(Some(0));
        bundle.one_time_prekey.as_mut().unwrap().public = key.public;
        let served = PrekeyBundle::try_from(bundle.to_bytes().as_slice()).unwrap();
        let verified = served.verify().expect("the one-time prekey is not signed");
        let before = snapshot(&alice);
        assert_eq!(
            hazmat::start_session(&mut alice, &mut rng, &verified),
            Err(rejection(&key.public)),
            "tcId {}",
            key.id
        );
        assert_eq!(snapshot(&alice), before, "tcId {}", key.id);
        assert!(!alice.has_session(bob.address()));
    }
}

/// The rule is exactly "reject an all-zero shared secret": every other key of the suite (twist
/// points, non-canonical encodings, edge cases) is accepted as RFC 7748 prescribes.
#[test]
fn x25519_every_wycheproof_key_as_one_time_prekey_is_rejected_iff_the_secret_is_zero() {
    let mut rng = rng(2);
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let bob = device(&mut rng, addr(2, 0), 1);
    let keys = x25519_keys();
    assert!(keys.len() > 100);
    for key in keys {
        let mut bundle = bob.prekey_upload().bundle(Some(0));
        bundle.one_time_prekey.as_mut().unwrap().public = key.public;
        let result = hazmat::start_session(&mut alice, &mut rng, &bundle.verify().unwrap());
        if !canonical(&key.public) {
            assert_eq!(
                result,
                Err(SessionError::Key(KeyError::NonCanonicalKey)),
                "tcId {}",
                key.id
            );
        } else if key.zero_shared {
            assert_eq!(result, Err(NON_CONTRIBUTORY), "tcId {}", key.id);
        } else {
            assert_eq!(result, Ok(()), "tcId {}", key.id);
        }
    }
}

/// Canonical X25519 encoding: top bit clear and the u-coordinate below 2^255 - 19.
fn canonical(key: &[u8; 32]) -> bool {
    let below_p = !(key[31] == 0x7f && key[1..31].iter().all(|&b| b == 0xff) && key[0] >= 0xed);
    key[31] & 0x80 == 0 && below_p
}

/// The signed prekey is signed: a server that swaps in a low-order key breaks the signature.
#[test]
fn x25519_low_order_signed_prekey_in_a_genuine_bundle_fails_its_signature() {
    let mut rng = rng(3);
    let bob = device(&mut rng, addr(2, 0), 1);
    for key in bad_x25519_keys() {
        let mut bundle = bob.prekey_upload().bundle(Some(0));
        bundle.signed_prekey.public = key.public;
        let served = PrekeyBundle::try_from(bundle.to_bytes().as_slice()).unwrap();
        assert_eq!(
            served.verify(),
            Err(KeyError::BadSignature(SignatureKind::SignedPrekey)),
            "tcId {}",
            key.id
        );
    }
}

/// The identity agreement key is signed by the identity: swapping in a low-order key makes the
/// identity, and every bundle carrying it, unparseable.
#[test]
fn x25519_low_order_identity_key_in_a_genuine_identity_fails_its_signature() {
    let mut rng = rng(4);
    let bob = device(&mut rng, addr(2, 0), 1);
    let bundle = bob.prekey_upload().bundle(Some(0)).to_bytes();
    let identity = bob.public_identity().to_bytes();
    for key in bad_x25519_keys() {
        let mut forged = identity;
        forged[IDENTITY_AGREEMENT].copy_from_slice(&key.public);
        assert!(PublicIdentity::try_from(&forged[..]).is_err(), "tcId {}", key.id);
        let mut forged_bundle = bundle.clone();
        forged_bundle[BUNDLE_IDENTITY..BUNDLE_SIGNED_PREKEY].copy_from_slice(&forged);
        assert!(PrekeyBundle::try_from(forged_bundle.as_slice()).is_err(), "tcId {}", key.id);
    }
}

/// A malicious peer signs its own bundle, so signatures do not help: the key agreement itself
/// must refuse a low-order identity key or signed prekey.
#[test]
fn x25519_low_order_keys_in_an_attacker_signed_bundle_are_rejected() {
    let mut rng = rng(5);
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let honest = device(&mut rng, addr(2, 0), 0);
    let good_agreement = *honest.public_identity().agreement_key_bytes();
    let good_prekey = honest.prekey_upload().signed_prekey.public;
    let attacker = Attacker::new();

    // The hand-built bundle is well-formed: with valid keys it starts a session.
    let control = attacker.bundle(&good_agreement, &good_prekey).verify().unwrap();
    let mut control_device = device(&mut rng, addr(1, 1), 0);
    hazmat::start_session(&mut control_device, &mut rng, &control).unwrap();

    for key in bad_x25519_keys() {
        for bundle in [
            attacker.bundle(&key.public, &good_prekey),
            attacker.bundle(&good_agreement, &key.public),
        ] {
            let verified = bundle.verify().expect("validly signed by the attacker");
            let before = snapshot(&alice);
            assert_eq!(
                hazmat::start_session(&mut alice, &mut rng, &verified),
                Err(rejection(&key.public)),
                "tcId {}",
                key.id
            );
            assert_eq!(snapshot(&alice), before, "tcId {}", key.id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// X25519: keys in session messages
// ---------------------------------------------------------------------------------------------

/// A message carrying a ratchet key new to the session makes the receiver step its root with
/// it. A low-order one must be refused before anything changes, and the genuine message must
/// still decrypt afterwards.
#[test]
fn x25519_low_order_ratchet_key_in_a_message_is_rejected() {
    let mut rng = rng(6);
    let (mut alice, mut bob) = established(&mut rng);
    // Alice speaks, so Bob's next message turns the ratchet: its ratchet key is new to Alice.
    let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"your turn").unwrap();
    hazmat::decrypt(&mut bob, &m, T0).unwrap();
    let genuine = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"new ratchet key").unwrap();
    assert_eq!(genuine[1], 0x01, "an ordinary message");
    for key in bad_x25519_keys() {
        let mut forged = genuine.clone();
        forged[MESSAGE_RATCHET_KEY].copy_from_slice(&key.public);
        assert!(SessionMessage::try_from(forged.as_slice()).is_ok(), "the forgery parses");
        rejected_with(&mut alice, &forged, rejection(&key.public), key.id);
    }
    let got = hazmat::decrypt(&mut alice, &genuine, T0).unwrap();
    assert_eq!(got.plaintext.as_slice(), b"new ratchet key");
}

/// While the receiver still owes an answer on the current chain, a new ratchet key (low-order or
/// not) cannot come from an honest peer: still a typed error and no state change.
#[test]
fn x25519_low_order_ratchet_key_while_the_receiver_must_answer_first() {
    let mut rng = rng(7);
    let (mut alice, mut bob) = established(&mut rng);
    let genuine = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"same chain").unwrap();
    for key in bad_x25519_keys() {
        let mut forged = genuine.clone();
        forged[MESSAGE_RATCHET_KEY].copy_from_slice(&key.public);
        let before = snapshot(&alice);
        let error = hazmat::decrypt(&mut alice, &forged, T0).expect_err("must be rejected");
        assert_eq!(error.action(), Action::Drop, "tcId {}: {error:?}", key.id);
        assert_eq!(snapshot(&alice), before, "tcId {}", key.id);
    }
    hazmat::decrypt(&mut alice, &genuine, T0).unwrap();
}

/// A prekey message's base key enters three Diffie-Hellman computations at the responder. A
/// low-order one (repeated as the ratchet key, as the format requires) must be refused without
/// consuming the one-time prekey; the genuine message then still works.
#[test]
fn x25519_low_order_base_key_in_a_prekey_message_is_rejected() {
    let mut rng = rng(8);
    let (mut alice, mut bob) = pair(&mut rng);
    let genuine = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"first").unwrap();
    assert_eq!(genuine[1], 0x02, "a prekey message");
    let ratchet_key = prekey_ratchet_key(&genuine);
    assert_eq!(genuine[PREKEY_BASE_KEY], genuine[ratchet_key.clone()], "offsets per PROTOCOL.md");
    let prekeys = bob.one_time_prekeys_remaining();
    for key in bad_x25519_keys() {
        let mut forged = genuine.clone();
        forged[PREKEY_BASE_KEY].copy_from_slice(&key.public);
        // The base key alone no longer matches the ratchet key: not a canonical prekey message.
        assert_eq!(
            hazmat::decrypt(&mut bob, &forged, T0).unwrap_err(),
            SessionError::Decode(DecodeError::BaseKeyMismatch)
        );
        forged[ratchet_key.clone()].copy_from_slice(&key.public);
        rejected_with(&mut bob, &forged, rejection(&key.public), key.id);
        assert_eq!(bob.one_time_prekeys_remaining(), prekeys);
    }
    assert_eq!(hazmat::decrypt(&mut bob, &genuine, T0).unwrap().plaintext.as_slice(), b"first");
    // Once the session exists the same forgeries name a known session: still refused, no change.
    for key in bad_x25519_keys() {
        let mut forged = genuine.clone();
        forged[PREKEY_BASE_KEY].copy_from_slice(&key.public);
        forged[ratchet_key.clone()].copy_from_slice(&key.public);
        let before = snapshot(&bob);
        assert!(hazmat::decrypt(&mut bob, &forged, T0).is_err(), "tcId {}", key.id);
        assert_eq!(snapshot(&bob), before, "tcId {}", key.id);
    }
}

/// A prekey message carries the sender's identity. An attacker can sign a low-order agreement
/// key into its own identity; the responder's key agreement must refuse it.
#[test]
fn x25519_low_order_identity_key_in_a_prekey_message_is_rejected() {
    let mut rng = rng(9);
    let (mut alice, mut bob) = pair(&mut rng);
    let genuine = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"first").unwrap();
    assert_eq!(genuine[PREKEY_IDENTITY], alice.public_identity().to_bytes(), "offsets");
    let attacker = Attacker::new();
    for key in bad_x25519_keys() {
        let mut forged = genuine.clone();
        forged[PREKEY_IDENTITY].copy_from_slice(&attacker.identity(&key.public));
        rejected_with(&mut bob, &forged, rejection(&key.public), key.id);
    }
    hazmat::decrypt(&mut bob, &genuine, T0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Ed25519
// ---------------------------------------------------------------------------------------------

/// Every Ed25519 signature in the crate goes through one strict verification; fed the raw
/// Wycheproof cases through `hazmat`, it accepts exactly the ones marked valid.
#[test]
fn ed25519_wycheproof_strict_verification_accepts_exactly_the_valid_cases() {
    let suite: Suite<EddsaGroup> = load("ed25519_test.json");
    let mut checked = 0;
    let mut wrong = Vec::new();
    for group in &suite.test_groups {
        let public = key32(&group.public_key.pk);
        for case in &group.tests {
            let expected = match case.result.as_str() {
                "valid" => true,
                "invalid" => false,
                other => panic!("tcId {}: unexpected result {other}", case.id),
            };
            let got = hazmat::verify_ed25519_strict(&public, &hex(&case.msg), &hex(&case.sig));
            if got != expected {
                wrong.push(format!("tcId {} ({}): expected {expected}", case.id, case.comment));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, suite.number_of_tests);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The group order ℓ, little-endian.
const ED25519_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `R || S + ℓ`: the same signature with a non-canonical scalar, which a malleable verifier
/// would accept.
fn malleate(signature: &[u8]) -> Vec<u8> {
    let mut out = signature.to_vec();
    let mut carry = 0u16;
    for (byte, order) in out[32..].iter_mut().zip(ED25519_ORDER) {
        let sum = u16::from(*byte) + u16::from(order) + carry;
        *byte = sum.to_le_bytes()[0];
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn ed25519_malleated_signatures_are_rejected_through_the_public_api() {
    let mut rng = rng(10);
    let bob = device(&mut rng, addr(2, 0), 1);
    let identity = bob.public_identity().to_bytes();
    let mut forged = identity;
    forged[IDENTITY_SIGNATURE].copy_from_slice(&malleate(&identity[IDENTITY_SIGNATURE]));
    assert!(PublicIdentity::try_from(&identity[..]).is_ok());
    assert_eq!(PublicIdentity::try_from(&forged[..]), Err(DecodeError::BadIdentitySignature));

    let mut bundle = bob.prekey_upload().bundle(Some(0));
    let signature = malleate(&bundle.signed_prekey.signature);
    bundle.signed_prekey.signature = signature.try_into().unwrap();
    assert_eq!(bundle.verify(), Err(KeyError::BadSignature(SignatureKind::SignedPrekey)));
}

/// With a small-order public key `A`, the signature `R = identity, S = 0` satisfies the
/// cofactorless equation for many messages; strict verification refuses such keys outright.
#[test]
fn ed25519_small_order_signing_key_cannot_forge_an_identity() {
    let mut rng = rng(11);
    let agreement = *device(&mut rng, addr(2, 0), 0).public_identity().agreement_key_bytes();
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    let mut order_two = [0xff; 32];
    order_two[0] = 0xec;
    order_two[31] = 0x7f;
    for small in [identity_point, order_two] {
        let mut forged = small.to_vec();
        forged.extend_from_slice(&agreement);
        forged.extend_from_slice(&identity_point);
        forged.extend_from_slice(&[0; 32]);
        assert_eq!(
            PublicIdentity::try_from(forged.as_slice()),
            Err(DecodeError::BadIdentitySignature)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bit flips in signed material
// ---------------------------------------------------------------------------------------------

#[test]
fn every_bit_flipped_in_the_signed_prekey_signature_is_rejected() {
    let mut rng = rng(12);
    let bob = device(&mut rng, addr(2, 0), 1);
    let bundle = bob.prekey_upload().bundle(Some(0));
    let bytes = bundle.to_bytes();
    assert_eq!(bytes[BUNDLE_SIGNED_PREKEY_SIGNATURE], bundle.signed_prekey.signature, "offsets");
    assert!(bundle.verify().is_ok());
    let mut flipped_bits = 0;
    for bit in BUNDLE_SIGNED_PREKEY * 8..BUNDLE_SIGNED_PREKEY_SIGNATURE.end * 8 {
        let flipped = PrekeyBundle::try_from(flip(&bytes, bit).as_slice()).unwrap();
        assert_eq!(
            flipped.verify(),
            Err(KeyError::BadSignature(SignatureKind::SignedPrekey)),
            "bit {bit}"
        );
        flipped_bits += 1;
    }
    // 512 signature bits, plus the 288 bits of the prekey id and key it covers.
    assert_eq!(flipped_bits, 512 + 288);
}

#[test]
fn every_bit_flipped_in_an_identity_is_rejected() {
    let mut rng = rng(13);
    let bob = device(&mut rng, addr(2, 0), 0);
    let identity = bob.public_identity().to_bytes();
    assert!(PublicIdentity::try_from(&identity[..]).is_ok());
    // All 1024 bits: signing key, agreement key and the 512 bits of the agreement signature.
    // A flipped signing key is either no curve point or the wrong key; any other flip breaks
    // the signature.
    for bit in 0..PublicIdentity::LEN * 8 {
        let error = PublicIdentity::try_from(flip(&identity, bit).as_slice()).unwrap_err();
        if bit < 256 {
            assert!(
                matches!(error, DecodeError::InvalidSigningKey | DecodeError::BadIdentitySignature),
                "bit {bit}: {error:?}"
            );
        } else {
            assert_eq!(error, DecodeError::BadIdentitySignature, "bit {bit}");
        }
    }
    // And inside a bundle, where the server could try the same.
    let bundle = bob.prekey_upload().bundle(None).to_bytes();
    for bit in IDENTITY_SIGNATURE.start * 8..IDENTITY_SIGNATURE.end * 8 {
        let flipped = flip(&bundle, BUNDLE_IDENTITY * 8 + bit);
        assert!(PrekeyBundle::try_from(flipped.as_slice()).is_err(), "bit {bit}");
    }
}
