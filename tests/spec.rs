#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! One test per rule of docs/PROTOCOL.md that an independent implementation could otherwise get
//! wrong, each named after its spec point (the section is in its doc comment). Black-box through
//! the public API, except where `multidevice::test_support` says otherwise.

mod support;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use multidevice::blob::{MediaType, MediaTypeError};
use multidevice::error::Ed25519Rejection;
use multidevice::hazmat::{self, check_ed25519_strict};
use multidevice::{
    AccountId, CompanionPairing, Conversation, DecodeError, Device, DeviceAddress, DeviceId,
    DeviceListError, KeyError, LinkError, LinkingMetadata, LogoutRequest, MessageKind, PairingCode,
    PairingCodeError, PrekeyBundle, PrekeyUpload, PrimaryPairing, PublicIdentity, QrLinkApproval,
    QrLinkOffer, ReceiveError, Received, RetryRequest, SessionError, SessionMessage, SignatureKind,
    SignedDeviceIdentity, SignedDeviceList, Timestamp, test_support,
};
use rand::rngs::StdRng;
use sha2::{Digest, Sha256, Sha512};
use support::world::{Server, account, envelope_for, introduce};
use support::{T0, addr, device, pair, rng, snapshot};

/// `p = 2^255 - 19`, little-endian.
const P: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// The group order `L`, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `a + b`, both little-endian 256-bit integers, asserting no carry out.
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        let sum = u16::from(*x) + u16::from(*y) + carry;
        *o = sum.to_le_bytes()[0];
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// The small integer `n` as a 256-bit little-endian integer (also the encoding of `y = n`).
fn small(n: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[0] = n;
    out
}

/// The encoding of the identity point (`y = 1`).
fn identity_point() -> [u8; 32] {
    small(1)
}

/// A signing key of our own, for signatures the tests construct.
fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// `PublicIdentity` bytes from a signing key of the test's own: `IKs || IKa || sig_a`.
fn identity_bytes(key: &SigningKey, agreement: &[u8; 32]) -> Vec<u8> {
    let mut message = b"multidevice/v1/sig/identity-agreement-key\0".to_vec();
    message.extend_from_slice(agreement);
    let mut out = key.verifying_key().to_bytes().to_vec();
    out.extend_from_slice(agreement);
    out.extend_from_slice(&key.sign(&message).to_bytes());
    out
}

/// A stock RFC 8032 verifier without the small-order and canonical-`A` rules (what OpenSSL
/// does): decodes `A` leniently and checks the cofactorless equation.
fn stock_verifier_accepts(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let Some(a) = CompressedEdwardsY(*public).decompress() else { return false };
    let s_bytes: [u8; 32] = signature[32..].try_into().unwrap();
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
        return false;
    };
    let k = challenge(&signature[..32], public, message);
    (ED25519_BASEPOINT_POINT * s - a * k).compress().to_bytes() == signature[..32]
}

/// `k = SHA-512(R || A || M) mod L`.
fn challenge(r: &[u8], a: &[u8; 32], message: &[u8]) -> Scalar {
    let hash: [u8; 64] =
        Sha512::new().chain_update(r).chain_update(a).chain_update(message).finalize().into();
    Scalar::from_bytes_mod_order_wide(&hash)
}

/// A signature under the secret scalar `a` with nonce point `[r]B + torsion`:
/// `S = r + k a`, so `[S]B - [k]A = [r]B`, which equals `R` only when `torsion` is the identity.
fn sign_with_torsion(
    a: Scalar,
    r: Scalar,
    torsion: EdwardsPoint,
    message: &[u8],
) -> ([u8; 32], [u8; 64]) {
    let public = (ED25519_BASEPOINT_POINT * a).compress().to_bytes();
    let big_r = (ED25519_BASEPOINT_POINT * r + torsion).compress().to_bytes();
    let s = r + challenge(&big_r, &public, message) * a;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&big_r);
    signature[32..].copy_from_slice(&s.to_bytes());
    (public, signature)
}

/// Bytes from hex.
fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// The 8 canonical small-order encodings, as docs/PROTOCOL.md §0 lists them.
const SMALL_ORDER_HEX: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
];

fn small_order_encodings() -> Vec<[u8; 32]> {
    SMALL_ORDER_HEX.iter().map(|h| unhex(h).try_into().unwrap()).collect()
}

/// The protocol document.
fn protocol() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// §0 Ed25519 strict verification
// ---------------------------------------------------------------------------------------------

/// §0: the table of small-order encodings in the spec is the 8-torsion subgroup.
#[test]
fn ed25519_small_order_table_is_the_eight_torsion_subgroup() {
    let mut listed = small_order_encodings();
    let mut torsion: Vec<[u8; 32]> =
        EIGHT_TORSION.iter().map(|p| p.compress().to_bytes()).collect();
    listed.sort_unstable();
    torsion.sort_unstable();
    assert_eq!(listed, torsion);
    let doc = protocol();
    for hex in SMALL_ORDER_HEX {
        assert!(doc.contains(hex), "{hex} missing from §0");
    }
}

/// §0 rule 1: `A` must be canonical (y < p, no sign bit on x = 0) and a curve point, through the
/// hazmat check and through the `PublicIdentity` parser.
#[test]
fn ed25519_rule_1_key_must_be_a_canonical_curve_point() {
    let message = b"m";
    let signature = signer(1).sign(message).to_bytes();
    // y = p + 3 and p + 4 decode to curve points of large order, but not canonically; p + 1 is
    // the identity written with y >= p; 01..80 is the identity with the sign bit on x = 0.
    let mut signed_identity = identity_point();
    signed_identity[31] = 0x80;
    for key in
        [add_le(&P, &small(3)), add_le(&P, &small(4)), add_le(&P, &small(1)), signed_identity]
    {
        assert!(CompressedEdwardsY(key).decompress().is_some(), "a point, though not canonical");
        assert_eq!(
            check_ed25519_strict(&key, message, &signature),
            Err(Ed25519Rejection::NonCanonicalKey)
        );
        let mut bytes = key.to_vec();
        bytes.extend_from_slice(&[9; 32]);
        bytes.extend_from_slice(&signature);
        assert_eq!(PublicIdentity::try_from(bytes.as_slice()), Err(DecodeError::InvalidSigningKey));
    }
    // y = 2 is canonical but on no curve point.
    let two = small(2);
    assert!(CompressedEdwardsY(two).decompress().is_none());
    assert_eq!(
        check_ed25519_strict(&two, message, &signature),
        Err(Ed25519Rejection::KeyNotOnCurve)
    );
    // The canonical encoding of y = 3 is accepted as a key (the signature then fails).
    let three = small(3);
    assert_eq!(
        check_ed25519_strict(&three, message, &signature),
        Err(Ed25519Rejection::EquationFails)
    );
}

/// §0 rule 2, and the warning about stock verifiers: with `A` = identity, `R` = identity and
/// `S = 0`, the plain equation holds for every message (OpenSSL accepts it); strict
/// verification refuses every small-order key, and so does the `PublicIdentity` parser.
#[test]
fn ed25519_rule_2_small_order_key_is_refused_though_a_stock_verifier_accepts() {
    let mut forged = [0u8; 64];
    forged[..32].copy_from_slice(&identity_point());
    for message in [&b"anything"[..], b"multidevice/v1/sig/device-list\0whatever"] {
        assert!(stock_verifier_accepts(&identity_point(), message, &forged));
        assert!(!hazmat::verify_ed25519_strict(&identity_point(), message, &forged));
    }
    for key in small_order_encodings() {
        assert_eq!(
            check_ed25519_strict(&key, b"m", &forged),
            Err(Ed25519Rejection::SmallOrderKey),
            "{key:02x?}"
        );
    }
    // Through a real parser: an identity whose key is the identity point and whose agreement-key
    // signature is that forgery.
    let mut bytes = identity_point().to_vec();
    bytes.extend_from_slice(&[9; 32]);
    bytes.extend_from_slice(&forged);
    let mut message = b"multidevice/v1/sig/identity-agreement-key\0".to_vec();
    message.extend_from_slice(&[9; 32]);
    assert!(stock_verifier_accepts(&identity_point(), &message, &forged));
    assert_eq!(PublicIdentity::try_from(bytes.as_slice()), Err(DecodeError::BadIdentitySignature));
}

/// §0 rules 3 and 4: `R` must be canonical and not of small order.
#[test]
fn ed25519_rules_3_and_4_r_must_be_canonical_and_not_of_small_order() {
    let key = signer(2);
    let public = key.verifying_key().to_bytes();
    let good = key.sign(b"m").to_bytes();
    assert_eq!(check_ed25519_strict(&public, b"m", &good), Ok(()));
    for r in [add_le(&P, &small(3)), add_le(&P, &small(1))] {
        let mut signature = good;
        signature[..32].copy_from_slice(&r);
        assert_eq!(
            check_ed25519_strict(&public, b"m", &signature),
            Err(Ed25519Rejection::NonCanonicalR)
        );
    }
    for r in small_order_encodings() {
        let mut signature = good;
        signature[..32].copy_from_slice(&r);
        assert_eq!(
            check_ed25519_strict(&public, b"m", &signature),
            Err(Ed25519Rejection::SmallOrderR)
        );
    }
    // A canonical R of no curve point fails at the equation step.
    let mut signature = good;
    signature[..32].copy_from_slice(&small(2));
    assert_eq!(check_ed25519_strict(&public, b"m", &signature), Err(Ed25519Rejection::RNotOnCurve));
}

/// §0 rule 5: `S < L`; `S = L - 1` passes the rule (and fails the equation), `S = L` and a
/// malleated `S + L` are refused, also inside a signed device list.
#[test]
fn ed25519_rule_5_s_must_be_below_l_at_l_minus_one_and_l() {
    let key = signer(3);
    let public = key.verifying_key().to_bytes();
    let good = key.sign(b"m").to_bytes();
    let mut below = good;
    below[32..].copy_from_slice(&{
        let mut l_minus_one = L;
        l_minus_one[0] -= 1;
        l_minus_one
    });
    assert_eq!(check_ed25519_strict(&public, b"m", &below), Err(Ed25519Rejection::EquationFails));
    let mut at = good;
    at[32..].copy_from_slice(&L);
    assert_eq!(check_ed25519_strict(&public, b"m", &at), Err(Ed25519Rejection::ScalarNotReduced));
    let mut malleated = good;
    let s: [u8; 32] = good[32..].try_into().unwrap();
    malleated[32..].copy_from_slice(&add_le(&s, &L));
    assert_eq!(
        check_ed25519_strict(&public, b"m", &malleated),
        Err(Ed25519Rejection::ScalarNotReduced)
    );

    // Inside a signed device list: the list signature with S + L.
    let mut rng = rng(500);
    let primary = Device::new(&mut rng, addr(1, 0), T0);
    let list = primary.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    let signature_at = list.len() - 64;
    let mut bad = list.clone();
    let s: [u8; 32] = list[signature_at + 32..].try_into().unwrap();
    bad[signature_at + 32..].copy_from_slice(&add_le(&s, &L));
    assert!(SignedDeviceList::try_from(list.as_slice()).unwrap().verify().is_ok());
    assert_eq!(
        SignedDeviceList::try_from(bad.as_slice()).unwrap().verify().unwrap_err(),
        DeviceListError::Key(KeyError::BadSignature(SignatureKind::DeviceList))
    );
}

/// §0 rule 6: the equation is cofactorless. A signature whose `R` is off by a point of order 8
/// satisfies the cofactored equation but not the cofactorless one, and is refused; the same
/// construction without the torsion point verifies.
#[test]
fn ed25519_rule_6_the_equation_is_cofactorless() {
    let a = Scalar::from_bytes_mod_order([21; 32]);
    let r = Scalar::from_bytes_mod_order([42; 32]);
    let identity = EIGHT_TORSION[0];
    let (public, plain) = sign_with_torsion(a, r, identity, b"m");
    assert_eq!(check_ed25519_strict(&public, b"m", &plain), Ok(()));
    let order_eight = EIGHT_TORSION[1];
    assert_eq!(order_eight.mul_by_cofactor(), identity);
    let (public, mixed) = sign_with_torsion(a, r, order_eight, b"m");
    // Cofactored: [8]([S]B - [k]A - R) = 0.
    let big_r = CompressedEdwardsY(mixed[..32].try_into().unwrap()).decompress().unwrap();
    let s = Scalar::from_canonical_bytes(mixed[32..].try_into().unwrap()).unwrap();
    let a_point = CompressedEdwardsY(public).decompress().unwrap();
    let k = challenge(&mixed[..32], &public, b"m");
    assert!((ED25519_BASEPOINT_POINT * s - a_point * k - big_r).mul_by_cofactor() == identity);
    assert_eq!(check_ed25519_strict(&public, b"m", &mixed), Err(Ed25519Rejection::EquationFails));
    assert_eq!(
        check_ed25519_strict(&public, b"m", &mixed[..63]),
        Err(Ed25519Rejection::SignatureLength)
    );
}

// ---------------------------------------------------------------------------------------------
// §0 time, §1 labels
// ---------------------------------------------------------------------------------------------

/// Offset of `issued_at` in a signed device list: header, account id, identity, version.
const LIST_ISSUED_AT: usize = 2 + 8 + 128 + 8;
/// Offset of `version`.
const LIST_VERSION: usize = 2 + 8 + 128;
/// Offset of the previous digest.
const LIST_PREVIOUS: usize = LIST_ISSUED_AT + 8;
/// Offset of the entry count.
const LIST_COUNT: usize = LIST_PREVIOUS + 32;

/// §0: every time is a `u64` of whole seconds since the Unix epoch, big-endian on the wire
/// (list `issued_at`, linking metadata, QR expiry), and durations are seconds (the 14-day rule
/// flips between 1,209,600 and 1,209,601 s).
#[test]
fn timestamps_are_unix_seconds_as_big_endian_u64() {
    let mut rng = rng(600);
    let mut server = Server::default();
    // 2023-11-14T22:13:20Z.
    let now = Timestamp(1_700_000_000);
    let mut carol = account(&mut rng, &mut server, 1, 1, now);
    let list = carol.devices[0].device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    assert_eq!(list[LIST_ISSUED_AT..LIST_ISSUED_AT + 8], 1_700_000_000u64.to_be_bytes());
    let companion = carol.devices[1].address();
    // The companion's linking metadata (after the body of 2 entries and the list signature):
    // header, account id, device id, key index, then the approval time.
    let metadata = LIST_COUNT + 1 + 2 * 40 + 64 + 2;
    assert_eq!(list[metadata + 16..metadata + 24], 1_700_000_000u64.to_be_bytes());
    let request = carol.devices[1].logout_request(now).unwrap().to_bytes();
    assert_eq!(request[2 + 12 + 4..2 + 12 + 4 + 8], 1_700_000_000u64.to_be_bytes());
    // QR offer expiry: now + 60 s, at bytes 2 + 16 + 32 of the offer.
    let mut stranger = Device::new(&mut rng, addr(1, 99), now);
    let offer = QrLinkOffer::new(&mut rng, &mut stranger, now);
    let bytes = qr_payload(&offer.qr_text());
    assert_eq!(bytes[2 + 16 + 32..2 + 16 + 32 + 8], 1_700_000_060u64.to_be_bytes());
    // Durations in seconds: 14 days is 1,209,600 s, "more than" is strict.
    let fourteen_days = now.plus_secs(1_209_600);
    assert_eq!(
        carol.device(companion).account_status(fourteen_days),
        multidevice::AccountStatus::Active
    );
    assert_eq!(
        carol.device(companion).account_status(fourteen_days.plus_secs(1)),
        multidevice::AccountStatus::SignedOut
    );
}

/// §1: the label table lists exactly the labels the code holds (every `b"multidevice/v1/..."`
/// literal in `src/`), and the code keeps them all in `crypto::label`.
#[test]
fn label_table_lists_exactly_the_labels_the_code_uses() {
    let doc = protocol();
    let section = &doc[doc.find("## 1. Labels").unwrap()..doc.find("## 2. Identities").unwrap()];
    let mut documented: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `multidevice/v1/"))
        .map(|rest| format!("multidevice/v1/{}", &rest[..rest.find('`').unwrap()]))
        .collect();
    let mut in_code = Vec::new();
    let mut outside_label_module = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("b\"multidevice/v1/") {
            let label = &text[at + 2..];
            let label = label[..label.find('"').unwrap()].to_string();
            if !path.ends_with("crypto.rs") {
                outside_label_module.push(label.clone());
            }
            in_code.push(label);
        }
    }
    documented.sort();
    in_code.sort();
    let unique = {
        let mut u = in_code.clone();
        u.dedup();
        u
    };
    assert_eq!(unique, in_code, "a label is defined twice");
    assert_eq!(documented, in_code);
    assert!(outside_label_module.is_empty(), "{outside_label_module:?}");
    for a in &in_code {
        assert!(!a.contains('\0'));
        for b in &in_code {
            assert!(a == b || !b.starts_with(a.as_str()), "{a} is a prefix of {b}");
        }
    }
    assert_eq!(documented.len(), 35);
}

/// HKDF-SHA256 with `salt`, `ikm`, `info`, 64 bytes.
fn hkdf64(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out).unwrap();
    out
}

/// §1, §10: the fan-out body's AES-GCM associated data is the 26 bytes of its label alone, with
/// no `0x00`; the cipher key and commitment are HKDF(0^32, content key, "multidevice/v1/kdf/body").
#[test]
fn fanout_body_aad_is_the_label_alone_without_a_separator() {
    let key = [7u8; 32];
    let body = test_support::seal_fanout_body(&key, b"a payload of some length");
    let okm = hkdf64(&[0; 32], &key, b"multidevice/v1/kdf/body");
    assert_eq!(body[..2], [0x01, 0x30]);
    assert_eq!(body[2..34], okm[32..]);
    let cipher = Aes256Gcm::new_from_slice(&okm[..32]).unwrap();
    let nonce = Nonce::from([0u8; 12]);
    let open = |aad: &[u8]| cipher.decrypt(&nonce, Payload { msg: &body[34..], aad });
    assert_eq!(open(b"multidevice/v1/fanout-body").unwrap(), b"a payload of some length");
    assert!(open(b"multidevice/v1/fanout-body\0").is_err());
    assert_eq!(b"multidevice/v1/fanout-body".len(), 26);
}

// ---------------------------------------------------------------------------------------------
// §5 Double Ratchet, §7 session records
// ---------------------------------------------------------------------------------------------

/// `(counter, previous_counter)` from a session message's header.
fn counters(wire: &[u8]) -> (u32, u32) {
    let header = match wire[1] {
        0x01 => 27,
        0x02 => 27 + 165 + 4 * usize::from(wire[27 + 164]),
        other => panic!("type {other}"),
    };
    let at = |offset: usize| u32::from_be_bytes(wire[offset..offset + 4].try_into().unwrap());
    (at(header + 48), at(header + 52))
}

fn send(from: &mut Device, rng: &mut StdRng, to: &Device) -> Vec<u8> {
    hazmat::encrypt(from, rng, to.address(), b"m").unwrap()
}

fn take(device: &mut Device, wire: &[u8]) -> Result<(), SessionError> {
    hazmat::decrypt(device, wire, T0).map(|_| ())
}

/// §5: `counter` is the message's index on its chain (from 0); `previous_counter` is the number
/// of messages sent on the previous sending chain (a count), 0 until the first ratchet turn.
#[test]
fn previous_counter_is_a_count_of_the_previous_chain_and_starts_at_zero() {
    let mut rng = rng(700);
    let (mut alice, mut bob) = pair(&mut rng);
    let first: Vec<Vec<u8>> = (0..3).map(|_| send(&mut alice, &mut rng, &bob)).collect();
    for (i, wire) in first.iter().enumerate() {
        assert_eq!(counters(wire), (u32::try_from(i).unwrap(), 0));
    }
    take(&mut bob, &first[0]).unwrap();
    take(&mut bob, &first[1]).unwrap();
    // Bob never sent before: his first chain carries PN = 0.
    let replies: Vec<Vec<u8>> = (0..2).map(|_| send(&mut bob, &mut rng, &alice)).collect();
    assert_eq!(counters(&replies[0]), (0, 0));
    assert_eq!(counters(&replies[1]), (1, 0));
    for wire in &replies {
        take(&mut alice, wire).unwrap();
    }
    // Alice sent 3 messages (indices 0, 1, 2) on her first chain: PN = 3.
    let turned = send(&mut alice, &mut rng, &bob);
    assert_eq!(turned[1], 0x01, "confirmed: no more prekey fields");
    assert_eq!(counters(&turned), (0, 3));
    // Bob stores the key of index 2 from PN = 3, so the held-back message still decrypts.
    take(&mut bob, &turned).unwrap();
    take(&mut bob, &first[2]).unwrap();
    assert_eq!(counters(&send(&mut bob, &mut rng, &alice)), (0, 2));
}

/// §5: a jump is measured against the chain's next expected counter; a jump of exactly
/// `max_forward_jump` is accepted and one more is refused, on a new chain, on a held chain, and
/// when a new ratchet key finishes the previous chain.
#[test]
fn forward_jump_is_measured_from_the_next_expected_counter_n_accepted_n_plus_one_refused() {
    const N: u32 = 10;
    let n = usize::try_from(N).unwrap();
    let mut rng = rng(701);
    let (mut alice, mut bob) = pair(&mut rng);
    bob.set_max_forward_jump(N).unwrap();
    let sent: Vec<Vec<u8>> = (0..=2 * n + 2).map(|_| send(&mut alice, &mut rng, &bob)).collect();
    // New chain, next expected 0: counter N + 1 is refused, N accepted.
    let before = snapshot(&bob);
    assert_eq!(
        take(&mut bob, &sent[n + 1]),
        Err(SessionError::TooFarAhead { jump: u64::from(N) + 1, limit: N })
    );
    assert_eq!(snapshot(&bob), before);
    take(&mut bob, &sent[n]).unwrap();
    assert_eq!(bob.session_info(alice.address()).unwrap().skipped_keys, n);
    // Held chain, next expected N + 1: counter 2N + 2 is a jump of N + 1, 2N + 1 one of N.
    assert_eq!(
        take(&mut bob, &sent[2 * n + 2]),
        Err(SessionError::TooFarAhead { jump: u64::from(N) + 1, limit: N })
    );
    take(&mut bob, &sent[2 * n + 1]).unwrap();

    // The previous chain: Alice sends N + 2 messages on her first chain, Bob reads only the
    // first (next expected 1), then Alice turns the ratchet with PN = N + 2.
    let (mut alice, mut bob) = pair(&mut rng);
    bob.set_max_forward_jump(N).unwrap();
    let first: Vec<Vec<u8>> = (0..n + 2).map(|_| send(&mut alice, &mut rng, &bob)).collect();
    take(&mut bob, &first[0]).unwrap();
    let reply = send(&mut bob, &mut rng, &alice);
    take(&mut alice, &reply).unwrap();
    let turned = send(&mut alice, &mut rng, &bob);
    assert_eq!(counters(&turned), (0, N + 2));
    assert_eq!(
        take(&mut bob, &turned),
        Err(SessionError::TooFarAhead { jump: u64::from(N) + 1, limit: N })
    );
    take(&mut bob, &first[1]).unwrap();
    take(&mut bob, &turned).unwrap();
}

/// Two devices with sessions they each initiated, not answered yet.
fn both_initiate(rng: &mut StdRng) -> (Device, Device) {
    let mut alice = device(rng, addr(1, 0), 5);
    let mut bob = device(rng, addr(2, 0), 5);
    let to_bob = bob.prekey_upload().bundle(Some(0)).verify().unwrap();
    let to_alice = alice.prekey_upload().bundle(Some(0)).verify().unwrap();
    hazmat::start_session(&mut alice, rng, &to_bob).unwrap();
    hazmat::start_session(&mut bob, rng, &to_alice).unwrap();
    (alice, bob)
}

fn active(device: &Device, remote: &Device) -> [u8; 16] {
    device.session_info(remote.address()).unwrap().active_session
}

/// §7: when both sides initiate at once, both keep the session whose `session_id` is smaller as
/// 16 unsigned bytes compared lexicographically, whichever side initiated it.
#[test]
fn simultaneous_initiation_keeps_the_lexicographically_smaller_session_id() {
    let mut seen = [false; 2];
    for seed in 710..760 {
        let mut rng = rng(seed);
        let (mut alice, mut bob) = both_initiate(&mut rng);
        let (ours, theirs) = (active(&alice, &bob), active(&bob, &alice));
        assert!(!alice.session_info(bob.address()).unwrap().confirmed);
        let to_bob = send(&mut alice, &mut rng, &bob);
        let to_alice = send(&mut bob, &mut rng, &alice);
        take(&mut bob, &to_bob).unwrap();
        take(&mut alice, &to_alice).unwrap();
        let smaller = ours.min(theirs);
        assert_eq!(active(&alice, &bob), smaller, "seed {seed}");
        assert_eq!(active(&bob, &alice), smaller, "seed {seed}");
        // The loser was archived, not dropped, and never comes back by receiving.
        assert_eq!(alice.session_info(bob.address()).unwrap().archived, 1);
        let again = send(&mut alice, &mut rng, &bob);
        take(&mut bob, &again).unwrap();
        assert_eq!(active(&bob, &alice), smaller);
        seen[usize::from(ours < theirs)] = true;
        if seen == [true, true] {
            return;
        }
    }
    panic!("both orders not seen: {seen:?}");
}

/// §7: "unconfirmed" means initiated by this device with nothing decrypted on it yet; it sends
/// prekey messages until then. A confirmed session yields to a new peer-initiated one whatever
/// their identifiers.
#[test]
fn unconfirmed_means_initiated_here_with_nothing_decrypted_on_it_yet() {
    let mut yielded_though_smaller = false;
    for seed in 720..780 {
        let mut rng = rng(seed);
        let (mut alice, mut bob) = pair(&mut rng);
        let sent: Vec<Vec<u8>> = (0..3).map(|_| send(&mut alice, &mut rng, &bob)).collect();
        assert!(sent.iter().all(|wire| wire[1] == 0x02), "prekey messages while unconfirmed");
        assert!(!alice.session_info(bob.address()).unwrap().confirmed);
        take(&mut bob, &sent[0]).unwrap();
        assert!(bob.session_info(alice.address()).unwrap().confirmed, "responder: confirmed");
        let reply = send(&mut bob, &mut rng, &alice);
        take(&mut alice, &reply).unwrap();
        assert!(alice.session_info(bob.address()).unwrap().confirmed);
        assert_eq!(send(&mut alice, &mut rng, &bob)[1], 0x01);
        // Bob starts over; Alice's confirmed session yields to his new one.
        let ours = active(&alice, &bob);
        let bundle = alice.prekey_upload().bundle(Some(0)).verify().unwrap();
        hazmat::start_session(&mut bob, &mut rng, &bundle).unwrap();
        let theirs = active(&bob, &alice);
        let reply = send(&mut bob, &mut rng, &alice);
        take(&mut alice, &reply).unwrap();
        assert_eq!(active(&alice, &bob), theirs, "seed {seed}");
        if ours < theirs {
            yielded_though_smaller = true;
            break;
        }
    }
    assert!(yielded_though_smaller);
}

// ---------------------------------------------------------------------------------------------
// §8 accounts and device lists
// ---------------------------------------------------------------------------------------------

/// §8: a primary's first list is version 1, previous digest `0^32`, issued at its creation,
/// naming only itself (device 0, key index 0); the next chains to it.
#[test]
fn first_list_is_version_1_with_previous_digest_zero_naming_only_the_primary() {
    let mut rng = rng(800);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let first = primary.device_list(AccountId(1)).unwrap().clone();
    let bytes = first.signed_bytes();
    assert_eq!(bytes[LIST_VERSION..LIST_VERSION + 8], 1u64.to_be_bytes());
    assert_eq!(bytes[LIST_ISSUED_AT..LIST_ISSUED_AT + 8], T0.as_secs().to_be_bytes());
    assert_eq!(bytes[LIST_PREVIOUS..LIST_PREVIOUS + 32], [0u8; 32]);
    assert_eq!(bytes[LIST_COUNT], 1);
    let entry = &bytes[LIST_COUNT + 1..LIST_COUNT + 41];
    assert_eq!(entry[..8], [0u8; 8], "device 0, key index 0");
    assert_eq!(entry[8..], *primary.public_identity().fingerprint().as_bytes());
    assert_eq!(bytes.len(), LIST_COUNT + 1 + 40 + 64);
    let second = primary.refresh_device_list(T0.plus_secs(5)).unwrap().verify().unwrap();
    assert_eq!((second.version(), second.previous_digest()), (2, first.digest()));
    assert_eq!(second.issued_at(), T0.plus_secs(5));
}

/// §8 (decided): version 0 is never signed, so verification refuses a list of version 0.
#[test]
fn a_list_of_version_0_is_refused_at_verification() {
    let mut rng = rng(801);
    let primary = Device::new(&mut rng, addr(1, 0), T0);
    let zero = test_support::sign_device_list(&primary, 0, T0, [0; 32], Vec::new());
    assert_eq!(zero.verify().unwrap_err(), DeviceListError::ZeroVersion);
    let mut other = Device::new(&mut rng, addr(2, 0), T0);
    assert_eq!(
        other.process_device_list(&zero.to_bytes(), T0).unwrap_err(),
        DeviceListError::ZeroVersion
    );
    let one = test_support::sign_device_list(&primary, 1, T0, [0; 32], Vec::new());
    assert!(one.verify().is_ok());
}

/// §8: every approval takes the next key index (from 1, abandoned ones too); device ids are
/// `max(highest ever listed, highest live pending) + 1`, so an abandoned approval's id is
/// reused by the next approval but a listed device's never is.
#[test]
fn key_index_counts_every_approval_and_device_ids_of_listed_devices_are_never_reused() {
    let mut rng = rng(802);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let stranger = Device::new(&mut rng, addr(1, 99), T0);
    let abandoned = primary.approve_companion(stranger.public_identity(), T0).unwrap();
    assert_eq!((abandoned.metadata.device, abandoned.metadata.key_index), (DeviceId(1), 1));
    assert_eq!(abandoned.metadata.timestamp, T0);
    let later = T0.plus_secs(181);
    let mut companion = Device::new(&mut rng, addr(1, 99), later);
    let approval = primary.approve_companion(companion.public_identity(), later).unwrap();
    assert_eq!((approval.metadata.device, approval.metadata.key_index), (DeviceId(1), 2));
    let signed = companion.countersign_approval(&approval).unwrap();
    primary.add_companion(&signed, later).unwrap();
    primary.remove_companion(DeviceId(1), later).unwrap();
    // Removed: the same identity may be approved again, under a new id and key index.
    let again = primary.approve_companion(companion.public_identity(), later).unwrap();
    assert_eq!((again.metadata.device, again.metadata.key_index), (DeviceId(2), 3));
}

/// A companion entry naming `identity`'s holder at `device` with `key_index`, signed by the
/// primary and countersigned by `holder`.
fn companion_entry(
    primary: &Device,
    holder: &Device,
    device: u32,
    key_index: u32,
) -> SignedDeviceIdentity {
    let metadata = LinkingMetadata {
        account: AccountId(1),
        device: DeviceId(device),
        key_index,
        timestamp: T0,
    };
    SignedDeviceIdentity {
        metadata,
        identity: holder.public_identity().clone(),
        account_signature: test_support::account_sign(primary, metadata, holder.public_identity()),
        device_signature: test_support::device_sign(holder, metadata, primary.public_identity()),
    }
}

/// §8 (decided): an identity appears at most once in a list, and the primary's identity never
/// as a companion; verification refuses both with `DuplicateIdentity`, and so does approval.
#[test]
fn an_identity_twice_or_the_primary_as_a_companion_is_refused_at_verification_and_approval() {
    let mut rng = rng(803);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let companion = Device::new(&mut rng, addr(1, 99), T0);
    let one = companion_entry(&primary, &companion, 1, 1);
    assert!(
        test_support::sign_device_list(&primary, 2, T0, [0; 32], vec![one.clone()])
            .verify()
            .is_ok()
    );
    let twice = companion_entry(&primary, &companion, 2, 2);
    let list = test_support::sign_device_list(&primary, 2, T0, [0; 32], vec![one, twice]);
    assert_eq!(list.verify().unwrap_err(), DeviceListError::DuplicateIdentity);
    let parsed = SignedDeviceList::try_from(list.to_bytes().as_slice()).unwrap();
    assert_eq!(parsed.verify().unwrap_err(), DeviceListError::DuplicateIdentity);

    let as_companion = companion_entry(&primary, &primary, 1, 1);
    assert!(as_companion.verify(primary.public_identity()).is_ok(), "both signatures verify");
    let list = test_support::sign_device_list(&primary, 2, T0, [0; 32], vec![as_companion]);
    assert_eq!(list.verify().unwrap_err(), DeviceListError::DuplicateIdentity);

    let before = snapshot(&primary);
    let own = primary.public_identity().clone();
    assert_eq!(
        primary.approve_companion(&own, T0).unwrap_err(),
        DeviceListError::DuplicateIdentity
    );
    assert_eq!(snapshot(&primary), before);
    primary.approve_companion(companion.public_identity(), T0).unwrap();
    let pending = snapshot(&primary);
    assert_ne!(pending, before);
    // Pending, the same identity gets the same approval again, and nothing changes.
    let first = primary.approve_companion(companion.public_identity(), T0).unwrap();
    assert_eq!(snapshot(&primary), pending);
    assert_eq!(primary.approve_companion(companion.public_identity(), T0).unwrap(), first);
}

/// §8: a list is refused exactly when `issued_at > mark + 86,400` (after the mark took `now`).
#[test]
fn list_issued_at_is_refused_more_than_one_day_past_the_clock_mark_n_accepted_n_plus_one_refused() {
    let mut rng = rng(804);
    let primary = Device::new(&mut rng, addr(1, 0), T0);
    let ahead = |secs| {
        test_support::sign_device_list(&primary, 1, T0.plus_secs(secs), [0; 32], Vec::new())
            .to_bytes()
    };
    let mut bob = Device::new(&mut rng, addr(2, 0), T0);
    let refused = ahead(86_401);
    assert_eq!(
        bob.process_device_list(&refused, T0).unwrap_err(),
        DeviceListError::IssuedInFuture { issued_at: T0.plus_secs(86_401) }
    );
    bob.process_device_list(&ahead(86_400), T0).unwrap();
    // The bound reads the clock mark: one second later, the refused list is accepted.
    let mut carol = Device::new(&mut rng, addr(3, 0), T0.plus_secs(1));
    assert!(carol.process_device_list(&refused, T0).is_ok());
}

/// §8: the primary honours a logout request only for its own account, for a companion of its
/// newest list with the same device id **and** key index, signed by that companion; the
/// timestamp is not checked; a replay finds nothing to remove.
#[test]
fn logout_request_checks_account_device_key_index_and_signature_not_time_and_replays_find_nothing()
{
    let mut rng = rng(805);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 2, T0);
    let first = carol.devices[1].address();
    // Signed far in the future: the timestamp is covered but not checked.
    let far = Timestamp(u64::MAX / 2);
    let request = carol.devices[1].logout_request(far).unwrap().to_bytes();
    let parsed = LogoutRequest::try_from(request.as_slice()).unwrap();
    assert_eq!((parsed.address, parsed.key_index, parsed.timestamp), (first, 1, far));
    // Another key index: no such companion (checked before the signature).
    let mut other_index = request.clone();
    other_index[2 + 12 + 3] ^= 0x02;
    assert_eq!(
        carol.devices[0].process_logout(&other_index, T0).unwrap_err(),
        DeviceListError::UnknownCompanion(first.device)
    );
    // Another account.
    let mut other_account = request.clone();
    other_account[2 + 7] ^= 0x01;
    assert!(matches!(
        carol.devices[0].process_logout(&other_account, T0).unwrap_err(),
        DeviceListError::WrongAccount { .. }
    ));
    // A flipped timestamp breaks the signature.
    let mut other_time = request.clone();
    other_time[2 + 12 + 4 + 7] ^= 0x01;
    assert_eq!(
        carol.devices[0].process_logout(&other_time, T0).unwrap_err(),
        DeviceListError::Key(KeyError::BadSignature(SignatureKind::LogoutRequest))
    );
    // Only the primary takes requests.
    assert_eq!(
        carol.devices[2].process_logout(&request, T0).unwrap_err(),
        DeviceListError::NotPrimary
    );
    let list = carol.devices[0].process_logout(&request, T0).unwrap().verify().unwrap();
    assert!(list.device(first).is_none());
    assert_eq!(
        carol.devices[0].process_logout(&request, T0).unwrap_err(),
        DeviceListError::UnknownCompanion(first.device)
    );
}

// ---------------------------------------------------------------------------------------------
// §10 fan-out
// ---------------------------------------------------------------------------------------------

/// Alice (account 1) and Bob (account 2), each with a primary and one companion, every list
/// processed by every device.
fn two_accounts(seed: u64) -> (StdRng, Server, support::world::Account, support::world::Account) {
    let mut rng = rng(seed);
    let mut server = Server::default();
    let mut alice = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 1, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    (rng, server, alice, bob)
}

/// An `Inner` plaintext (§10): announced version and digest, a message id (a fresh one each
/// time: receivers deliver one id once), the `OwnCopy` accounts if any, then `content`.
fn inner(version: u64, digest: [u8; 32], to: Option<&[u64]>, content: &[u8]) -> Vec<u8> {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = version.to_be_bytes().to_vec();
    out.extend_from_slice(&digest);
    out.extend_from_slice(&[&[0x1d; 8][..], &id.to_be_bytes()].concat());
    if let Some(to) = to {
        out.push(u8::try_from(to.len()).unwrap());
        for account in to {
            out.extend_from_slice(&account.to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    out
}

/// The version and digest `device` announces: those of its own newest list.
fn announced(device: &Device) -> (u64, [u8; 32]) {
    let list = device.device_list(device.account()).unwrap();
    (list.version(), list.digest())
}

/// `test_support::seal_inner`, which must succeed.
fn seal(
    from: &mut Device,
    rng: &mut StdRng,
    to: DeviceAddress,
    kind: MessageKind,
    plain: &[u8],
    bundles: &[PrekeyBundle],
) -> Vec<u8> {
    test_support::seal_inner(from, rng, to, kind, plain, bundles).unwrap()
}

/// A `Direct` message with the `Inner` plaintext `plain` from Alice's primary to Bob's.
fn alice_to_bob(
    alice: &mut support::world::Account,
    rng: &mut StdRng,
    bundles: &[PrekeyBundle],
    plain: &[u8],
) -> Vec<u8> {
    seal(&mut alice.devices[0], rng, addr(2, 0), MessageKind::Direct, plain, bundles)
}

/// The `Content` of a body reference: `0x02 || key || SHA-256(body)`.
fn body_reference(key: &[u8; 32], body: &[u8]) -> Vec<u8> {
    [&[0x02][..], key, &Sha256::digest(body)].concat()
}

fn message(received: Received) -> multidevice::ReceivedMessage {
    match received {
        Received::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// §10: per device the app carries exactly one session message (type 0x02 while unconfirmed,
/// 0x01 after), routed by its recipient field at bytes 15..27; the body travels once beside
/// them, the same bytes for everyone, and is ignored with an inline message.
#[test]
fn fanout_wire_form_is_one_session_message_per_device_and_one_shared_body() {
    let (mut rng, mut server, mut alice, mut bob) = two_accounts(900);
    let payload = vec![0x5a; 1000];
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let sender = alice.devices[0].address();
    let sent =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &bundles, &payload, T0).unwrap();
    let body = sent.body.clone().unwrap();
    assert_eq!(body[..2], [0x01, 0x30]);
    assert_eq!(body.len(), 2 + 32 + payload.len() + 16);
    let mut reached: Vec<DeviceAddress> = sent.envelopes.iter().map(|e| e.recipient).collect();
    reached.sort();
    assert_eq!(reached, vec![addr(1, 1), addr(2, 0), addr(2, 1)]);
    for envelope in &sent.envelopes {
        let parsed = SessionMessage::try_from(envelope.bytes.as_slice()).unwrap();
        let mut recipient = envelope.recipient.account.0.to_be_bytes().to_vec();
        recipient.extend_from_slice(&envelope.recipient.device.0.to_be_bytes());
        assert_eq!(envelope.bytes[15..27], recipient[..]);
        assert_eq!((parsed.recipient(), parsed.sender()), (envelope.recipient, sender));
        assert_eq!(envelope.bytes[..2], [0x01, 0x02], "first contact: prekey message");
        let kind = if envelope.recipient.account == AccountId(1) {
            MessageKind::OwnCopy
        } else {
            MessageKind::Direct
        };
        assert_eq!(parsed.kind(), kind);
        assert!(envelope.bytes.len() < 420, "the body is not inside the envelope");
        let device = if envelope.recipient.account == AccountId(1) {
            alice.device(envelope.recipient)
        } else {
            bob.device(envelope.recipient)
        };
        let received = message(device.receive(&envelope.bytes, Some(&body), T0).unwrap());
        assert_eq!(received.payload.as_slice(), payload.as_slice());
    }
    // Bob's primary answers; the session to it is confirmed and its envelopes become type 0x01.
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let reply =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"ok", T0).unwrap();
    alice.devices[0].receive(&envelope_for(&reply, sender).unwrap(), None, T0).unwrap();
    let next =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"short", T0).unwrap();
    assert!(next.body.is_none());
    assert_eq!(envelope_for(&next, addr(2, 0)).unwrap()[1], 0x01);
    assert_eq!(envelope_for(&next, addr(2, 1)).unwrap()[1], 0x02);
    // A body passed with an inline message is ignored.
    let inline = envelope_for(&next, addr(2, 1)).unwrap();
    let received = message(bob.device(addr(2, 1)).receive(&inline, Some(b"junk"), T0).unwrap());
    assert_eq!(received.payload.as_slice(), b"short");
}

/// §10: the body digest is plain SHA-256 over every byte of the body as carried, header and
/// commitment included, checked before the body is parsed.
#[test]
fn body_digest_is_plain_sha256_over_the_whole_body_header_included() {
    let key = [3u8; 32];
    let body = test_support::seal_fanout_body(&key, b"some payload");
    let whole: [u8; 32] = Sha256::digest(&body).into();
    assert_eq!(
        test_support::open_fanout_body(&key, &whole, &body).unwrap().as_slice(),
        b"some payload"
    );
    for partial in [&body[2..], &body[34..]] {
        let digest: [u8; 32] = Sha256::digest(partial).into();
        assert_eq!(
            test_support::open_fanout_body(&key, &digest, &body).unwrap_err(),
            ReceiveError::BodyDigestMismatch
        );
    }
    // A receiver accepts a body reference carrying exactly SHA-256(body), whoever computed it.
    let (mut rng, mut server, mut alice, mut bob) = two_accounts(901);
    let (version, list_digest) = announced(&alice.devices[0]);
    let content = body_reference(&key, &body);
    assert_eq!(content[33..], whole);
    let bundles = server.bundles(&[AccountId(2)]);
    let wire =
        alice_to_bob(&mut alice, &mut rng, &bundles, &inner(version, list_digest, None, &content));
    // The header is hashed before it is parsed: a changed version byte is a digest mismatch.
    let mut bad = body.clone();
    bad[0] = 0x02;
    let before = snapshot(&bob.devices[0]);
    assert_eq!(
        bob.devices[0].receive(&wire, Some(&bad), T0).unwrap_err(),
        ReceiveError::BodyDigestMismatch
    );
    assert_eq!(bob.devices[0].receive(&wire, None, T0).unwrap_err(), ReceiveError::BodyMissing);
    assert_eq!(snapshot(&bob.devices[0]), before);
    let received = message(bob.devices[0].receive(&wire, Some(&body), T0).unwrap());
    assert_eq!(received.payload.as_slice(), b"some payload");
}

/// §10: a sender without an own list announces version 0 and `0^32`; a receiver treats it as
/// older than any list: delivered, nothing remembered, no refresh asked.
#[test]
fn inner_without_a_list_announces_version_0_and_zero_digest_which_receivers_ignore() {
    let (mut rng, mut server, mut alice, mut bob) = two_accounts(902);
    let bundles = server.bundles(&[AccountId(2)]);
    let wire =
        alice_to_bob(&mut alice, &mut rng, &bundles, &inner(0, [0; 32], None, b"\x01no list"));
    let received = message(bob.devices[0].receive(&wire, None, T0).unwrap());
    assert_eq!(received.payload.as_slice(), b"no list");
    assert_eq!((received.sender_list_version, received.sender_list_digest), (0, [0; 32]));
    assert!(!received.list_refresh_needed);
    assert!(bob.devices[0].lists_to_fetch().is_empty());
    // What the API sends is the sender's own newest list, never version 0.
    let sent = alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"x", T0).unwrap();
    let received = message(
        bob.devices[0].receive(&envelope_for(&sent, addr(2, 0)).unwrap(), None, T0).unwrap(),
    );
    assert_eq!(
        (received.sender_list_version, received.sender_list_digest),
        announced(&alice.devices[0])
    );
}

/// §10: every other own device gets an `OwnCopy` naming the recipients (sorted, once each, the
/// own account included exactly when named), every other device a `Direct`; receivers refuse
/// `Direct` from their own account and `OwnCopy` from another.
#[test]
fn own_devices_get_own_copies_naming_the_recipients_including_the_own_account_when_named() {
    let (mut rng, mut server, mut alice, mut bob) = two_accounts(903);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let cases: [(&[AccountId], Vec<AccountId>); 3] = [
        (&[AccountId(2)], vec![AccountId(2)]),
        (&[AccountId(2), AccountId(1), AccountId(2)], vec![AccountId(1), AccountId(2)]),
        (&[AccountId(1)], vec![AccountId(1)]),
    ];
    for (to, named) in cases {
        let sent = alice.devices[1].encrypt_fanout(&mut rng, to, &bundles, b"hi", T0).unwrap();
        let own = envelope_for(&sent, addr(1, 0)).unwrap();
        assert_eq!(SessionMessage::try_from(own.as_slice()).unwrap().kind(), MessageKind::OwnCopy);
        let received = message(alice.devices[0].receive(&own, None, T0).unwrap());
        assert_eq!(received.conversation, Conversation::OwnCopy { to: named.clone() });
        assert!(envelope_for(&sent, addr(1, 1)).is_none(), "never to the sender");
        for device in [addr(2, 0), addr(2, 1)] {
            match envelope_for(&sent, device) {
                Some(wire) => {
                    assert!(named.contains(&AccountId(2)));
                    let received = message(bob.device(device).receive(&wire, None, T0).unwrap());
                    assert_eq!(received.conversation, Conversation::Direct);
                }
                None => assert!(!named.contains(&AccountId(2))),
            }
        }
    }
    // The kinds are checked against the sender's account.
    let (version, digest) = announced(&alice.devices[1]);
    let direct = seal(
        &mut alice.devices[1],
        &mut rng,
        addr(1, 0),
        MessageKind::Direct,
        &inner(version, digest, None, b"\x01x"),
        &bundles,
    );
    assert_eq!(
        alice.devices[0].receive(&direct, None, T0).unwrap_err(),
        ReceiveError::WrongKind(MessageKind::Direct)
    );
    let (version, digest) = announced(&bob.devices[0]);
    let foreign = seal(
        &mut bob.devices[0],
        &mut rng,
        addr(1, 0),
        MessageKind::OwnCopy,
        &inner(version, digest, Some(&[1]), b"\x01x"),
        &bundles,
    );
    assert_eq!(
        alice.devices[0].receive(&foreign, None, T0).unwrap_err(),
        ReceiveError::ForeignOwnCopy(addr(2, 0))
    );
}

/// §10 (decided): the inline threshold binds senders only: 512 bytes go inline and 513 in a
/// body, but a receiver accepts an inline payload above it and a body below it.
#[test]
fn receivers_do_not_enforce_the_inline_threshold() {
    let (mut rng, mut server, mut alice, mut bob) = two_accounts(904);
    let bundles = server.bundles(&[AccountId(2)]);
    let at = alice.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &bundles, &[1; 512], T0)
        .unwrap();
    assert!(at.body.is_none());
    let above = alice.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &bundles, &[1; 513], T0)
        .unwrap();
    assert!(above.body.is_some());
    for sent in [&at, &above] {
        let wire = envelope_for(sent, addr(2, 0)).unwrap();
        bob.devices[0].receive(&wire, sent.body.as_deref(), T0).unwrap();
    }
    let (version, digest) = announced(&alice.devices[0]);
    let mut big_inline = vec![0x01];
    big_inline.extend_from_slice(&[7; 4096]);
    let key = [9u8; 32];
    let mut cases = vec![(big_inline, None, vec![7u8; 4096])];
    for payload in [&b""[..], b"x"] {
        let body = test_support::seal_fanout_body(&key, payload);
        cases.push((body_reference(&key, &body), Some(body), payload.to_vec()));
    }
    for (content, body, expected) in cases {
        let wire =
            alice_to_bob(&mut alice, &mut rng, &bundles, &inner(version, digest, None, &content));
        let received = message(bob.devices[0].receive(&wire, body.as_deref(), T0).unwrap());
        assert_eq!(received.payload.as_slice(), expected.as_slice());
    }
}

// ---------------------------------------------------------------------------------------------
// §11 linking, §16 media types
// ---------------------------------------------------------------------------------------------

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, no padding.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[usize::try_from((buffer >> bits) & 31).unwrap()]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(BASE32[usize::try_from((buffer << (5 - bits)) & 31).unwrap()]));
    }
    out
}

/// The bytes a QR text encodes (offer and checksum), from a canonical text.
fn unbase32(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        buffer =
            (buffer << 5) | u32::try_from(BASE32.iter().position(|&b| b == c).unwrap()).unwrap();
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).unwrap());
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// The offer inside a QR text, without its checksum.
fn qr_payload(text: &str) -> Vec<u8> {
    let mut bytes = unbase32(text.strip_prefix("MULTIDEVICE://LINK/1/").unwrap());
    bytes.truncate(bytes.len() - 4);
    bytes
}

/// SHA-256 over `label || 0x00 || parts`.
fn h(label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new().chain_update(label).chain_update([0]);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// HMAC-SHA256 under `key` over `label || 0x00 || data`.
fn mac(key: &[u8], label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(label);
    mac.update(&[0]);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The QR text of `offer`: prefix, base32 of offer and checksum.
fn qr_text(offer: &[u8]) -> String {
    let mut bytes = offer.to_vec();
    bytes.extend_from_slice(&h(b"multidevice/v1/hash/qr-checksum", &[offer])[..4]);
    format!("MULTIDEVICE://LINK/1/{}", base32(&bytes))
}

/// §11: the pairing flow run by this test as the companion, written from the spec alone, against
/// the crate as the primary: the reference is the hello's `sid`; CPace gets `PRS` = the canonical
/// code, `CI` = the label, `sid`, `ADa`/`ADb` = the two 128-byte identities, initiator-responder
/// order; HKDF, the transcript and both confirmations are as specified, and the approval comes
/// MAC'ed under the derived link secret with `sid` as its reference.
#[test]
fn pairing_reference_is_the_hello_sid_and_cpace_runs_with_the_specified_inputs() {
    let mut rng = rng(1000);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let companion = Device::new(&mut rng, addr(1, 99), T0);
    let sid = [0x5c; 16];
    let ada = companion.public_identity().to_bytes();
    let (step, ya) = hazmat::cpace::CpaceStep::start(
        &mut rng,
        b"7KQ2MX9A",
        b"multidevice/v1/cpace/pairing",
        &sid,
        &ada,
    );
    let hello = [&[0x01, 0x43][..], &sid, &ya, &ada].concat();
    assert_eq!(hello.len(), 178);
    let typed = PairingCode::parse("7kq2 mx9a").unwrap();
    let (mut pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, typed, T0).unwrap();
    assert_eq!(response.len(), 210);
    assert_eq!(response[..18], [&[0x01, 0x44][..], &sid].concat()[..]);
    let adb = &response[50..178];
    assert_eq!(adb, primary.public_identity().to_bytes());
    let isk = step.finish_initiator(&response[18..50], adb).unwrap();
    let mut okm = [0u8; 96];
    hkdf::Hkdf::<Sha256>::new(Some(&sid), isk.as_bytes())
        .expand(b"multidevice/v1/kdf/pairing", &mut okm)
        .unwrap();
    let (ka, rest) = okm.split_at(32);
    let (kb, link_secret) = rest.split_at(32);
    let th = h(b"multidevice/v1/hash/pairing-transcript", &[&hello, &response[..178]]);
    assert_eq!(response[178..], mac(kb, b"multidevice/v1/mac/pairing-confirm-responder", &th));
    let confirm_a = mac(ka, b"multidevice/v1/mac/pairing-confirm-initiator", &th);
    let confirm = [&[0x01, 0x45][..], &sid, &confirm_a].concat();
    let approval = pairing.handle_confirm(&mut primary, &confirm, T0).unwrap();
    assert_eq!(approval[..18], [&[0x01, 0x41][..], &sid].concat()[..]);
    let (body, tag) = approval.split_at(approval.len() - 32);
    assert_eq!(tag, mac(link_secret, b"multidevice/v1/mac/link-approval", body));
}

/// §11: the typed code maps to `PRS` = 8 upper-case symbols without hyphen: case-insensitive,
/// whitespace and `-` ignored, `O` reads as `0`, `I` and `L` as `1`, `U` refused.
#[test]
fn pairing_code_prs_is_the_canonical_upper_case_symbols_with_look_alikes_mapped() {
    let prs = |typed: &str| PairingCode::parse(typed).map(|c| c.as_password_bytes().to_vec());
    assert_eq!(prs("7kq2-mx9a").unwrap(), b"7KQ2MX9A");
    assert_eq!(prs(" 7KQ2\u{a0}MX9A\t").unwrap(), b"7KQ2MX9A");
    assert_eq!(prs("oLab-cdef").unwrap(), b"01ABCDEF");
    assert_eq!(prs("Il0O--abcd").unwrap(), b"1100ABCD");
    assert_eq!(prs("7KQ2-MX9U"), Err(PairingCodeError::InvalidCharacter { position: 8 }));
    assert_eq!(prs("7KQ2\u{2014}MX9A"), Err(PairingCodeError::InvalidCharacter { position: 4 }));
    assert_eq!(prs("7KQ2-MX9"), Err(PairingCodeError::WrongLength { expected: 8, got: 7 }));
    assert_eq!(prs("7KQ2-MX9AB"), Err(PairingCodeError::WrongLength { expected: 8, got: 9 }));
    assert_eq!(PairingCode::parse("7kq2mx9a").unwrap().to_string(), "7KQ2-MX9A");
}

/// §11: the CPace vectors are those of draft-irtf-cfrg-cpace-21 (byte for byte), and the spec
/// names that revision.
#[test]
fn cpace_is_pinned_to_draft_irtf_cfrg_cpace_21() {
    let vectors =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/cpace/testvectors.json"))
            .unwrap();
    let digest: [u8; 32] = Sha256::digest(&vectors).into();
    assert_eq!(
        digest.to_vec(),
        unhex("e2a18e6f38d375c70902fb981005140388a0cad3247e1418eeacb2f6b2b94c37")
    );
    assert!(protocol().contains("**draft-irtf-cfrg-cpace-21**"));
}

/// §16: the media-type grammar as enforced, with its bounds at N and N + 1.
#[test]
fn media_type_grammar_is_lower_case_restricted_names_of_3_to_64_bytes() {
    let ok =
        |s: &str| assert_eq!(MediaType::new(s).map(|m| m.as_str().to_owned()), Ok(s.to_owned()));
    let err = |s: &str, e: MediaTypeError| assert_eq!(MediaType::new(s), Err(e), "{s:?}");
    ok("a/b");
    ok("image/jpeg");
    ok("0/9");
    ok("application/vnd.a!#$&^_.+-z");
    ok(&format!("a/{}", "b".repeat(62)));
    err(&format!("a/{}", "b".repeat(63)), MediaTypeError::TooLong { len: 65 });
    err("a/", MediaTypeError::TooShort);
    err("ab", MediaTypeError::TooShort);
    err("abc", MediaTypeError::MissingSlash);
    err("/ab", MediaTypeError::EmptyPart);
    err("ab/", MediaTypeError::EmptyPart);
    err("Image/jpeg", MediaTypeError::InvalidByte { position: 0 });
    err("image/JPEG", MediaTypeError::InvalidByte { position: 6 });
    err("-a/b", MediaTypeError::InvalidByte { position: 0 });
    err("a/.b", MediaTypeError::InvalidByte { position: 2 });
    err("a/b/c", MediaTypeError::InvalidByte { position: 3 });
    err("text/plain;charset=utf-8", MediaTypeError::InvalidByte { position: 10 });
    err("text/pla in", MediaTypeError::InvalidByte { position: 8 });
    err("a/\u{e9}", MediaTypeError::InvalidByte { position: 2 });
    err("a*/b", MediaTypeError::InvalidByte { position: 1 });
}

// ---------------------------------------------------------------------------------------------
// §17 parser checks
// ---------------------------------------------------------------------------------------------

/// Steps 1, 2, 3 and 5 of the common parsing procedure, for a type whose shortest body is `min`
/// bytes, from a valid encoding; `wrap` maps a `DecodeError` to what the entry point returns.
fn common_steps<E: PartialEq + core::fmt::Debug>(
    valid: &[u8],
    type_byte: u8,
    min: usize,
    trailing: bool,
    mut parse: impl FnMut(&[u8]) -> Result<(), E>,
    wrap: impl Fn(DecodeError) -> E,
) {
    assert_eq!(valid[..2], [0x01, type_byte]);
    for len in [0, 1, 2, 2 + min - 1] {
        assert_eq!(
            parse(&valid[..len]),
            Err(wrap(DecodeError::Truncated { needed: 2 + min - len })),
            "step 1 at length {len}"
        );
    }
    // Step 1 comes before the version: a short input with a bad version is still truncated.
    let mut short = valid[..2 + min - 1].to_vec();
    short[0] = 9;
    assert_eq!(parse(&short), Err(wrap(DecodeError::Truncated { needed: 1 })));
    for version in [0x00, 0x02, 0xff] {
        let mut bad = valid.to_vec();
        bad[0] = version;
        assert_eq!(parse(&bad), Err(wrap(DecodeError::UnsupportedVersion(version))));
    }
    for other in [0x00, 0x03, 0x46, 0xff] {
        if other == type_byte {
            continue;
        }
        let mut bad = valid.to_vec();
        bad[1] = other;
        if [0x01, 0x02].contains(&type_byte) && [0x01, 0x02].contains(&other) {
            continue;
        }
        assert_eq!(parse(&bad), Err(wrap(DecodeError::UnknownType(other))));
    }
    if trailing {
        let mut long = valid.to_vec();
        long.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse(&long), Err(wrap(DecodeError::TrailingBytes(3))));
    }
}

fn decode<T>(result: Result<T, DecodeError>) -> Result<(), DecodeError> {
    result.map(|_| ())
}

/// §17 PublicIdentity: exactly 128 bytes, canonical signing key, strict `sig_a`; the agreement
/// key is not checked when parsing.
#[test]
fn parser_checks_public_identity() {
    let mut rng = rng(1100);
    let bytes = device(&mut rng, addr(1, 0), 0).public_identity().to_bytes();
    let parse = |b: &[u8]| decode(PublicIdentity::try_from(b));
    assert_eq!(parse(&bytes), Ok(()));
    assert_eq!(parse(&bytes[..127]), Err(DecodeError::Truncated { needed: 1 }));
    assert_eq!(parse(&[&bytes[..], &[0]].concat()), Err(DecodeError::TrailingBytes(1)));
    let mut bad_key = bytes;
    bad_key[..32].copy_from_slice(&add_le(&P, &small(3)));
    assert_eq!(parse(&bad_key), Err(DecodeError::InvalidSigningKey));
    let mut bad_sig = bytes;
    bad_sig[100] ^= 1;
    assert_eq!(parse(&bad_sig), Err(DecodeError::BadIdentitySignature));
    // Any agreement key parses when signed: an all-zero (low-order) one included.
    let key = signer(5);
    assert_eq!(parse(&identity_bytes(&key, &[0; 32])), Ok(()));
}

/// §17 PrekeyBundle and PrekeyUpload.
#[test]
fn parser_checks_prekey_bundle_and_upload() {
    let mut rng = rng(1101);
    let bob = device(&mut rng, addr(2, 0), 3);
    let with = bob.prekey_upload().bundle(Some(0)).to_bytes();
    let without = bob.prekey_upload().bundle(None).to_bytes();
    let parse = |b: &[u8]| decode(PrekeyBundle::try_from(b));
    common_steps(&without, 0x10, 241, true, parse, |e| e);
    assert_eq!(parse(&with), Ok(()));
    assert_eq!(with.len(), 2 + 241 + 36);
    let flag = 2 + 240;
    let mut bad = without.clone();
    bad[flag] = 2;
    assert_eq!(parse(&bad), Err(DecodeError::OutOfRange));
    let mut missing = without.clone();
    missing[flag] = 1;
    // The one-time prekey's id is the field that runs out.
    assert_eq!(parse(&missing), Err(DecodeError::Truncated { needed: 4 }));
    let mut extra = with.clone();
    extra[flag] = 0;
    assert_eq!(parse(&extra), Err(DecodeError::TrailingBytes(36)));
    // The signed prekey signature is checked by `verify`, not by the parser.
    let mut forged = without.clone();
    forged[flag - 1] ^= 1;
    let parsed = PrekeyBundle::try_from(forged.as_slice()).unwrap();
    assert_eq!(parsed.verify().unwrap_err(), KeyError::BadSignature(SignatureKind::SignedPrekey));

    let upload = bob.prekey_upload().to_bytes();
    let parse = |b: &[u8]| decode(PrekeyUpload::try_from(b));
    common_steps(&upload, 0x11, 242, true, parse, |e| e);
    let count_at = 2 + 240;
    assert_eq!(upload[count_at..count_at + 2], 3u16.to_be_bytes());
    let key = &upload[count_at + 2..count_at + 2 + 36];
    let with_count = |count: u16| {
        let mut out = upload[..count_at].to_vec();
        out.extend_from_slice(&count.to_be_bytes());
        for _ in 0..count {
            out.extend_from_slice(key);
        }
        out
    };
    assert_eq!(parse(&with_count(200)), Ok(()), "200 keys, all with one id: ids are not checked");
    assert_eq!(parse(&with_count(201)), Err(DecodeError::TooLong { limit: 200, got: 201 }));
}

/// §17 SignedDeviceIdentity and SignedDeviceList.
#[test]
fn parser_checks_signed_device_identity_and_list() {
    let mut rng = rng(1102);
    let mut server = Server::default();
    let carol = account(&mut rng, &mut server, 1, 2, T0);
    let list = carol.devices[0].device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    let parse = |b: &[u8]| decode(SignedDeviceList::try_from(b));
    common_steps(&list, 0x20, 249, true, parse, |e| e);
    assert_eq!(list[LIST_COUNT], 3);
    let body_end = LIST_COUNT + 1 + 3 * 40;
    let first_companion = body_end + 64;
    // The signed bytes are the header and body exactly as received.
    let verified = SignedDeviceList::try_from(list.as_slice()).unwrap().verify().unwrap();
    let digest = h(b"multidevice/v1/hash/device-list", &[&list[..body_end]]);
    assert_eq!(verified.digest(), digest);
    let mut count = list.clone();
    count[LIST_COUNT] = 6;
    assert_eq!(parse(&count), Err(DecodeError::TooLong { limit: 5, got: 6 }));
    count[LIST_COUNT] = 4;
    assert!(parse(&count).is_err(), "a count the entries do not match");
    // Count 0 parses; verification refuses it.
    let mut empty = list[..LIST_COUNT].to_vec();
    empty.push(0);
    empty.extend_from_slice(&[0; 64]);
    let parsed = SignedDeviceList::try_from(empty.as_slice()).unwrap();
    assert!(parsed.verify().is_err());
    // A nested identity goes through the same steps.
    let mut nested = list.clone();
    nested[first_companion] = 2;
    assert_eq!(parse(&nested), Err(DecodeError::UnsupportedVersion(2)));
    nested[first_companion] = 1;
    nested[first_companion + 1] = 0x20;
    assert_eq!(parse(&nested), Err(DecodeError::UnknownType(0x20)));
    assert!(matches!(parse(&list[..list.len() - 1]), Err(DecodeError::Truncated { needed: 1 })));

    let signed = &list[first_companion..first_companion + 282];
    let parse = |b: &[u8]| decode(SignedDeviceIdentity::try_from(b));
    common_steps(signed, 0x21, 280, true, parse, |e| e);
    // Both signatures are checked by verification, not by the parser.
    let mut forged = signed.to_vec();
    forged[281] ^= 1;
    let parsed = SignedDeviceIdentity::try_from(forged.as_slice()).unwrap();
    assert_eq!(
        parsed.verify(carol.devices[0].public_identity()).unwrap_err(),
        KeyError::BadSignature(SignatureKind::DeviceSignature)
    );
}

/// §17 LogoutRequest: fixed layout, signature checked by `process_logout`.
#[test]
fn parser_checks_logout_request() {
    let mut rng = rng(1103);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let request = carol.devices[1].logout_request(T0).unwrap().to_bytes();
    assert_eq!(request.len(), 2 + 88);
    common_steps(&request, 0x22, 88, true, |b| decode(LogoutRequest::try_from(b)), |e| e);
    let mut forged = request.clone();
    forged[89] ^= 1;
    assert!(LogoutRequest::try_from(forged.as_slice()).is_ok());
}

/// §17 Message and PrekeyMessage.
#[test]
fn parser_checks_session_messages() {
    let mut rng = rng(1104);
    let (mut alice, mut bob) = pair(&mut rng);
    let prekey = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"hello").unwrap();
    hazmat::decrypt(&mut bob, &prekey, T0).unwrap();
    let plain = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"").unwrap();
    assert_eq!((prekey[1], plain[1]), (0x02, 0x01));
    let parse = |b: &[u8]| decode(SessionMessage::try_from(b));
    common_steps(&plain, 0x01, 109, false, parse, |e| e);
    assert_eq!(plain.len(), 2 + 109, "an empty plaintext: the shortest message");
    for kind in [0x06, 0xff] {
        let mut bad = plain.clone();
        bad[2] = kind;
        assert_eq!(parse(&bad), Err(DecodeError::UnknownKind(kind)));
    }
    // has_opk at 27 + 164, the base key at 27 + 128, the header's ratchet key 169 bytes later.
    let flag = 27 + 164;
    let mut bad = prekey.clone();
    bad[flag] = 2;
    assert_eq!(parse(&bad), Err(DecodeError::OutOfRange));
    let mut mismatch = prekey.clone();
    mismatch[27 + 169 + 16] ^= 1;
    assert_eq!(parse(&mismatch), Err(DecodeError::BaseKeyMismatch));
    let header_end = 27 + 169 + 68;
    assert_eq!(parse(&prekey[..header_end + 15]), Err(DecodeError::Truncated { needed: 1 }));
    assert_eq!(parse(&prekey[..header_end + 16]), Ok(()));
    let max = 256 * 1024 + 16;
    let mut long = plain[..95].to_vec();
    long.resize(95 + max, 0);
    assert_eq!(parse(&long), Ok(()));
    long.push(0);
    assert_eq!(parse(&long), Err(DecodeError::TooLong { limit: 262_160, got: 262_161 }));
}

/// §17 Body: parsed after its digest matched; at most 64 MiB + 16 bytes of ciphertext.
#[test]
fn parser_checks_body() {
    let key = [4u8; 32];
    let body = test_support::seal_fanout_body(&key, b"");
    assert_eq!(body.len(), 2 + 48);
    let open = |b: &[u8]| {
        let digest: [u8; 32] = Sha256::digest(b).into();
        test_support::open_fanout_body(&key, &digest, b).map(|_| ())
    };
    assert_eq!(open(&body), Ok(()));
    common_steps(&body, 0x30, 48, false, open, ReceiveError::Content);
    let mut wrong = body.clone();
    wrong[2] ^= 1;
    assert_eq!(open(&wrong), Err(ReceiveError::BodyKeyCommitment));
    let limit = 64 * 1024 * 1024 + 16;
    let mut big = body[..34].to_vec();
    big.resize(34 + limit, 0);
    assert_eq!(
        open(&big),
        Err(ReceiveError::BodyAuthentication),
        "parsed, then refused by the tag"
    );
    big.push(0);
    assert_eq!(
        open(&big),
        Err(ReceiveError::Content(DecodeError::TooLong { limit: 67_108_880, got: 67_108_881 }))
    );
}

/// §17 Inner, through the authorized receive path.
#[test]
fn parser_checks_inner() {
    let (mut rng, mut server, mut alice, mut bob) = two_accounts(1105);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let (version, digest) = announced(&alice.devices[0]);
    let mut send = |alice: &mut support::world::Account, to: DeviceAddress, kind, plain: &[u8]| {
        test_support::seal_inner(&mut alice.devices[0], &mut rng, to, kind, plain, &bundles)
            .unwrap()
    };
    let head = inner(version, digest, None, &[]);
    let direct_cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (head[..7].to_vec(), DecodeError::Truncated { needed: 1 }),
        (head[..39].to_vec(), DecodeError::Truncated { needed: 1 }),
        (head[..55].to_vec(), DecodeError::Truncated { needed: 1 }),
        (head.clone(), DecodeError::Truncated { needed: 1 }),
        ([&head[..], &[0x03]].concat(), DecodeError::UnknownType(0x03)),
        ([&head[..], &[0x02], &[0; 63]].concat(), DecodeError::Truncated { needed: 1 }),
        ([&head[..], &[0x02], &[0; 65]].concat(), DecodeError::TrailingBytes(1)),
    ];
    for (plain, error) in direct_cases {
        let wire = send(&mut alice, addr(2, 0), MessageKind::Direct, &plain);
        assert_eq!(
            bob.devices[0].receive(&wire, None, T0).unwrap_err(),
            ReceiveError::Content(error)
        );
    }
    let wire = send(&mut alice, addr(2, 0), MessageKind::Direct, &[&head[..], &[0x01]].concat());
    assert!(message(bob.devices[0].receive(&wire, None, T0).unwrap()).payload.is_empty());

    let own: Vec<u64> = (1..=64).collect();
    let own_cases: Vec<(Vec<u8>, Option<DecodeError>)> = vec![
        (inner(version, digest, Some(&[]), b"\x01x"), Some(DecodeError::OutOfRange)),
        (
            inner(version, digest, Some(&(1..=65).collect::<Vec<_>>()), b"\x01x"),
            Some(DecodeError::TooLong { limit: 64, got: 65 }),
        ),
        (inner(version, digest, Some(&[2, 1]), b"\x01x"), Some(DecodeError::NotStrictlyIncreasing)),
        (inner(version, digest, Some(&[1, 1]), b"\x01x"), Some(DecodeError::NotStrictlyIncreasing)),
        (
            inner(version, digest, Some(&[1, 2]), b"")[..57 + 8].to_vec(),
            Some(DecodeError::Truncated { needed: 8 }),
        ),
        (inner(version, digest, Some(&own), b"\x01x"), None),
    ];
    for (plain, error) in own_cases {
        let wire = send(&mut alice, addr(1, 1), MessageKind::OwnCopy, &plain);
        let got = alice.devices[1].receive(&wire, None, T0);
        match error {
            Some(error) => assert_eq!(got.unwrap_err(), ReceiveError::Content(error)),
            None => assert_eq!(
                message(got.unwrap()).conversation,
                Conversation::OwnCopy { to: own.iter().map(|&a| AccountId(a)).collect() }
            ),
        }
    }
    // History: the rest is a blob descriptor (§13).
    let wire =
        send(&mut alice, addr(1, 1), MessageKind::History, &inner(version, digest, None, b"no"));
    assert!(matches!(
        alice.devices[1].receive(&wire, None, T0).unwrap_err(),
        ReceiveError::Descriptor(_)
    ));
}

/// §17 Offer and the QR text around it.
#[test]
fn parser_checks_qr_text_and_offer() {
    let mut rng = rng(1106);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut companion = Device::new(&mut rng, addr(1, 99), T0);
    let text = QrLinkOffer::new(&mut rng, &mut companion, T0).qr_text().to_string();
    let offer = qr_payload(&text);
    assert_eq!(qr_text(&offer), text);
    let link =
        |primary: &mut Device, text: &str| QrLinkApproval::approve(primary, text, T0).map(|_| ());
    common_steps(&offer, 0x40, 184, true, |b| link(&mut primary, &qr_text(b)), LinkError::Decode);
    let body = text.strip_prefix("MULTIDEVICE://LINK/1/").unwrap();
    assert_eq!(link(&mut primary, &text.to_lowercase()), Err(LinkError::BadPrefix));
    assert_eq!(
        link(&mut primary, &format!("MULTIDEVICE://LINK/2/{body}")),
        Err(LinkError::BadPrefix)
    );
    assert_eq!(
        link(&mut primary, &format!("MULTIDEVICE://LINK/1/{}", body.to_lowercase())),
        Err(LinkError::BadEncoding)
    );
    assert_eq!(link(&mut primary, &format!("{text}=")), Err(LinkError::BadEncoding));
    assert_eq!(
        link(&mut primary, &format!("{text}A")),
        Err(LinkError::BadEncoding),
        "5 leftover bits"
    );
    // Leftover bits must be zero: 3 bytes leave 1 bit, which "B" (value 1) sets.
    let three = base32(b"abc");
    assert_eq!(three.len(), 5);
    let last = BASE32.iter().position(|&c| char::from(c) == three.chars().last().unwrap()).unwrap();
    let odd = format!("MULTIDEVICE://LINK/1/{}{}", &three[..4], char::from(BASE32[last | 1]));
    assert_eq!(link(&mut primary, &odd), Err(LinkError::BadEncoding));
    assert_eq!(
        link(&mut primary, &format!("MULTIDEVICE://LINK/1/{three}")),
        Err(LinkError::Decode(DecodeError::Truncated { needed: 4 }))
    );
    let mut tampered = offer.clone();
    tampered[5] ^= 1;
    let mut bytes = tampered.clone();
    bytes.extend_from_slice(&h(b"multidevice/v1/hash/qr-checksum", &[&offer])[..4]);
    assert_eq!(
        link(&mut primary, &format!("MULTIDEVICE://LINK/1/{}", base32(&bytes))),
        Err(LinkError::BadChecksum)
    );
    assert_eq!(link(&mut primary, &text), Ok(()));
}

/// §17 Approval and Confirmation: the MAC first, then the layout, then the reference.
#[test]
fn parser_checks_approval_and_confirmation() {
    let mut rng = rng(1107);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut companion = Device::new(&mut rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, T0);
    let text = offer.qr_text().to_string();
    let secret = qr_payload(&text)[18..50].to_vec();
    let (mut approval, message) = QrLinkApproval::approve(&mut primary, &text, T0).unwrap();
    let sealed = |label: &[u8], body: &[u8]| [body, &mac(&secret, label, body)].concat();
    let approval_label = b"multidevice/v1/mac/link-approval";
    let body = &message[..message.len() - 32];
    assert_eq!(sealed(approval_label, body), message);
    let mut accept = |b: &[u8]| {
        offer.accept_approval(&mut companion, &sealed(approval_label, b), T0).map(|_| ())
    };
    common_steps(body, 0x41, 232, true, &mut accept, LinkError::Decode);
    let mut other = body.to_vec();
    other[2] ^= 1;
    assert_eq!(accept(&other), Err(LinkError::WrongAttempt));
    let short = [0u8; 31];
    assert_eq!(offer.accept_approval(&mut companion, &short, T0), Err(LinkError::MacMismatch));
    let mut bad_mac = message.clone();
    *bad_mac.last_mut().unwrap() ^= 1;
    assert_eq!(offer.accept_approval(&mut companion, &bad_mac, T0), Err(LinkError::MacMismatch));
    let confirmation = offer.accept_approval(&mut companion, &message, T0).unwrap();

    let confirmation_label = b"multidevice/v1/mac/link-confirmation";
    let body = &confirmation[..confirmation.len() - 32];
    assert_eq!(body.len(), 2 + 298);
    let mut finish =
        |b: &[u8]| approval.finish(&mut primary, &sealed(confirmation_label, b), T0).map(|_| ());
    common_steps(body, 0x42, 298, true, &mut finish, LinkError::Decode);
    let mut nested = body.to_vec();
    nested[18] = 2;
    assert_eq!(finish(&nested), Err(LinkError::Decode(DecodeError::UnsupportedVersion(2))));
    let mut other = body.to_vec();
    other[2] ^= 1;
    assert_eq!(finish(&other), Err(LinkError::WrongAttempt));
    assert_eq!(finish(body), Ok(()));
}

/// §17 Hello, Response and Confirm.
#[test]
fn parser_checks_pairing_messages() {
    let mut rng = rng(1108);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut companion = Device::new(&mut rng, addr(1, 99), T0);
    let (mut pairing, hello) = CompanionPairing::start(&mut rng, &mut companion, T0);
    let code_text = pairing.code().to_string();
    let code = || PairingCode::parse(&code_text).unwrap();
    let mut respond =
        |b: &[u8]| PrimaryPairing::respond(&mut rng, &mut primary, b, code(), T0).map(|_| ());
    common_steps(&hello, 0x43, 176, true, &mut respond, LinkError::Decode);
    let mut identity_share = hello.clone();
    identity_share[18..50].copy_from_slice(&[0; 32]);
    assert_eq!(respond(&identity_share), Err(LinkError::InvalidShare));
    let (mut responder, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, code(), T0).unwrap();

    let mut handle = |b: &[u8]| pairing.handle_response(b, T0).map(|_| ());
    common_steps(&response, 0x44, 208, true, &mut handle, LinkError::Decode);
    let mut other = response.clone();
    other[2] ^= 1;
    assert_eq!(handle(&other), Err(LinkError::WrongAttempt));
    let confirm = pairing.handle_response(&response, T0).unwrap();

    let mut check = |b: &[u8]| responder.handle_confirm(&mut primary, b, T0).map(|_| ());
    common_steps(&confirm, 0x45, 48, true, &mut check, LinkError::Decode);
    let mut other = confirm.clone();
    other[2] ^= 1;
    assert_eq!(check(&other), Err(LinkError::WrongAttempt));
    assert_eq!(check(&confirm), Ok(()));
}

/// §17 RetryRequest: fixed layout; count 1..=5 and a known reason when parsed; both
/// signatures (the request's and its signed prekey's) checked when received, not when parsed.
#[test]
fn parser_checks_retry_request() {
    let (mut rng, mut server, mut alice, mut bob) = two_accounts(1109);
    let bundles = server.bundles(&[AccountId(2)]);
    let sent = alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &bundles, b"x", T0);
    let envelope = envelope_for(&sent.unwrap(), addr(2, 0)).unwrap();
    let error = ReceiveError::Session(SessionError::AuthenticationFailed);
    let request = bob.devices[0].retry_request(&envelope, &error, T0).unwrap().to_bytes();
    assert_eq!(request.len(), 2 + 214);
    let parse = |b: &[u8]| decode(RetryRequest::try_from(b));
    assert_eq!(parse(&request), Ok(()));
    common_steps(&request, 0x60, 214, true, parse, |e| e);
    // Count at 42, reason at 43.
    for (at, value, ok) in [
        (42, 0, false),
        (42, 1, true),
        (42, 5, true),
        (42, 6, false),
        (43, 0, false),
        (43, 1, true),
        (43, 5, true),
        (43, 6, false),
    ] {
        let mut edited = request.clone();
        edited[at] = value;
        let expected = if ok { Ok(()) } else { Err(DecodeError::OutOfRange) };
        assert_eq!(parse(&edited), expected, "byte {at} = {value}");
    }
    // Signatures are not the parser's: a flipped request signature, or signed prekey
    // signature, parses.
    for at in [request.len() - 1, 2 + 50 + 100 - 1] {
        let mut forged = request.clone();
        forged[at] ^= 1;
        assert_eq!(parse(&forged), Ok(()));
        assert!(alice.devices[0].receive(&forged, None, T0).is_err());
    }
    assert!(matches!(
        alice.devices[0].receive(&request, None, T0).unwrap(),
        Received::RetryRequest(_)
    ));
}

/// §15: the persisted-state encoding is marked non-normative: no peer depends on it.
#[test]
fn persisted_state_encoding_is_marked_non_normative() {
    let doc = protocol();
    assert!(doc.contains("## 15. Persisted state (non-normative)"));
    assert!(doc.contains("(§15 is\nnot)") || doc.contains("(§15 is not)"));
}
