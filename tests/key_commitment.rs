//! Key commitment of shared fan-out bodies and of blobs, against a real two-key AES-GCM
//! ciphertext.
//!
//! AES-GCM is not key-committing: given two keys K1 ≠ K2, one nonce N and associated data A,
//! anyone who knows both keys can build one `C || T` that authenticates under both
//! ("invisible salamanders", Dodis–Grubbs–Ristenpart–Woodage, CRYPTO 2018; partitioning
//! oracles, Len–Grubbs–Ristenpart, USENIX Security 2021). The construction:
//!
//! - `H_i = E_Ki(0^128)`, `J0 = N || 0^31 || 1`, and the tag is
//!   `T_i = E_Ki(J0) + GHASH_Hi(A, C)`, where `GHASH_H(X_1..X_m) = Σ X_j · H^(m-j+1)` over
//!   GF(2^128) (`+` is XOR), and `X` is `A` and `C`, each zero-padded to whole blocks, then
//!   `len(A) || len(C)` in bits.
//! - Choose every ciphertext block but one free block `X_p` (here: the first half so that K1
//!   reads a chosen text, the second half so that K2 does), and set `X_p = 0`. That gives tags
//!   `G_1`, `G_2`; with the free block `B` they become `T_i = G_i + B · H_i^e`, `e = m - p + 1`.
//! - `T_1 = T_2` is one linear equation: `B = (G_1 + G_2) · (H_1^e + H_2^e)^-1`.
//!
//! The test implements GF(2^128) in GCM's bit order (NIST SP 800-38D: the first bit of a block
//! is the coefficient of x^0) and checks it against the GCM paper's vectors and against
//! `aes-gcm` itself, then shows:
//!
//! 1. The previous body format, `0x01 || 0x30 || AES-256-GCM(content key, 0^12,
//!    "multidevice/v1/fanout-body", payload) || tag`, is no longer in the crate, so its sender
//!    and receiver are emulated here with `aes-gcm` directly (digest check, then decryption
//!    under the content key). One crafted body, one digest, opens under both keys to two
//!    different plaintexts, and the old sender, given the right payload, produces that very
//!    body under either key.
//! 2. The current format (docs/PROTOCOL.md §10) puts `commitment` from
//!    `cipher key || commitment = HKDF-SHA256(0^32, content key, "multidevice/v1/kdf/body")`
//!    in the body, which the digest covers. A malicious sender that crafts the ciphertext under
//!    the two derived cipher keys and drives the crate's own `encrypt_fanout` (by choosing its
//!    content keys through the RNG it supplies: a sender runs its own code) gets two bodies with
//!    the same `C || T` but different commitments, hence different digests: each recipient's
//!    digest names one plaintext, and `Device::receive` refuses the other body. A spec-level
//!    receiver, checked byte for byte against the crate's sealing, and the crate's own
//!    `test_support::open_fanout_body` both refuse the other key with a commitment mismatch.
//! 3. A seeded property over hundreds of key pairs: the crafted ciphertext always opens under
//!    both keys with raw AES-GCM, and the committing scheme never opens one body under both.
//! 4. Blobs (docs/PROTOCOL.md §13), the same way: the previous blob format (version 1: header
//!    without commitment, chunks under the blob key itself), emulated, opens one crafted blob
//!    under two keys; the current one (version 2: `cipher key || commitment = HKDF-SHA256(0^32,
//!    blob key, "multidevice/v1/kdf/blob")`, the commitment in the header, which every chunk
//!    authenticates and the digest covers) refuses every key but the one the header commits
//!    to, with `BlobError::KeyCommitment` before any chunk is decrypted, in the crate and in a
//!    spec-level receiver, though raw AES-GCM still opens the crafted chunk under both derived
//!    keys. Then a seeded property over random keys, nonce prefixes and lengths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::convert::Infallible;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::aes::cipher::{Array, BlockCipherEncrypt};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use multidevice::blob::{
    BlobDescriptor, BlobError, BlobKey, HEADER_LEN, MediaType, decrypt_blob, decrypt_stream,
    encrypt_blob,
};
use multidevice::test_support::{open_fanout_body, seal_fanout_body};
use multidevice::{
    AccountId, Device, FanoutMessage, INLINE_THRESHOLD, PrekeyBundle, ReceiveError, Received,
};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng, TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use support::world::{Server, account, envelope_for, introduce};
use support::{T0, rng};

/// The associated data of every fan-out body, in both formats.
const BODY_AAD: &[u8] = b"multidevice/v1/fanout-body";
/// The HKDF info that splits a content key into cipher key and commitment.
const KDF_BODY: &[u8] = b"multidevice/v1/kdf/body";
/// Bodies use the all-zero nonce (the content key is fresh per message).
const ZERO_NONCE: [u8; 12] = [0u8; 12];
/// Version and type byte of a body.
const HEADER: [u8; 2] = [0x01, 0x30];

// ---------------------------------------------------------------------------------------------
// GF(2^128) in GCM's bit order, and GCM built from it
// ---------------------------------------------------------------------------------------------

/// A block as a field element: big-endian, so the first bit of the block (x^0) is the MSB.
fn elem(block: &[u8; 16]) -> u128 {
    u128::from_be_bytes(*block)
}

/// The multiplicative identity: x^0, the first bit of the block.
const ONE: u128 = 1 << 127;

/// Multiplication in GF(2^128) modulo x^128 + x^7 + x^2 + x + 1 (SP 800-38D, Algorithm 1).
fn gf_mul(x: u128, y: u128) -> u128 {
    const R: u128 = 0xe1 << 120;
    let mut z = 0u128;
    let mut v = y;
    for i in 0..128 {
        if (x >> (127 - i)) & 1 == 1 {
            z ^= v;
        }
        // Multiply v by x: a right shift in this bit order, reducing when x^127 falls off.
        v = if v & 1 == 1 { (v >> 1) ^ R } else { v >> 1 };
    }
    z
}

/// `a^e` by square-and-multiply.
fn gf_pow(a: u128, e: u128) -> u128 {
    let mut result = ONE;
    for i in (0..128).rev() {
        result = gf_mul(result, result);
        if (e >> i) & 1 == 1 {
            result = gf_mul(result, a);
        }
    }
    result
}

/// `a^-1 = a^(2^128 - 2)` (Fermat); `a` must be nonzero.
fn gf_inv(a: u128) -> u128 {
    gf_pow(a, u128::MAX - 1)
}

/// `E_K(block)` with AES-256.
fn aes_block(cipher: &Aes256, block: [u8; 16]) -> [u8; 16] {
    let mut block = Array::from(block);
    cipher.encrypt_block(&mut block);
    block.into()
}

/// The counter block `N || ctr` for a 96-bit nonce (`ctr = 1` is J0).
fn counter_block(nonce: &[u8; 12], ctr: u32) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..12].copy_from_slice(nonce);
    block[12..].copy_from_slice(&ctr.to_be_bytes());
    block
}

/// One AES-256-GCM key with what the tag needs: `H = E_K(0^128)` and `E_K(J0)`.
struct GcmKey {
    cipher: Aes256,
    h: u128,
    ek_j0: u128,
    nonce: [u8; 12],
}

impl GcmKey {
    fn new(key: &[u8; 32], nonce: &[u8; 12]) -> Self {
        let cipher = Aes256::new(&Array::from(*key));
        let h = elem(&aes_block(&cipher, [0u8; 16]));
        let ek_j0 = elem(&aes_block(&cipher, counter_block(nonce, 1)));
        Self { cipher, h, ek_j0, nonce: *nonce }
    }

    /// The CTR keystream for `len` bytes of message (counters from `inc32(J0)`).
    fn keystream(&self, len: usize) -> Vec<u8> {
        (0..len.div_ceil(16))
            .flat_map(|i| {
                aes_block(&self.cipher, counter_block(&self.nonce, 2 + u32::try_from(i).unwrap()))
            })
            .take(len)
            .collect()
    }

    /// `E_K(J0) + GHASH_H(aad, ciphertext)`.
    fn tag(&self, aad: &[u8], ciphertext: &[u8]) -> u128 {
        self.ek_j0 ^ ghash(self.h, &ghash_blocks(aad, ciphertext))
    }

    /// AES-256-GCM encryption from the pieces above: `ciphertext || tag`.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = xor(plaintext, &self.keystream(plaintext.len()));
        let tag = self.tag(aad, &out);
        out.extend_from_slice(&tag.to_be_bytes());
        out
    }
}

/// GHASH's input: `aad` and `ciphertext`, each zero-padded to whole blocks, then the length
/// block `len(aad) || len(ciphertext)` in bits.
fn ghash_blocks(aad: &[u8], ciphertext: &[u8]) -> Vec<u128> {
    let mut blocks = Vec::new();
    for part in [aad, ciphertext] {
        for chunk in part.chunks(16) {
            let mut block = [0u8; 16];
            block[..chunk.len()].copy_from_slice(chunk);
            blocks.push(elem(&block));
        }
    }
    blocks.push((((aad.len() as u128) * 8) << 64) | ((ciphertext.len() as u128) * 8));
    blocks
}

/// `GHASH_H(X_1..X_m) = Σ X_j · H^(m-j+1)`, by Horner's rule.
fn ghash(h: u128, blocks: &[u128]) -> u128 {
    blocks.iter().fold(0, |y, &x| gf_mul(y ^ x, h))
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Overwrites ciphertext block `free` (a whole 16-byte block) so that `ciphertext || tag`
/// authenticates under both keys (same nonce, same `aad`), and returns the tag. `None` only
/// if `H_1^e = H_2^e`, which for distinct random keys happens with probability ~2^-128.
fn craft_two_key(
    k1: &GcmKey,
    k2: &GcmKey,
    aad: &[u8],
    ciphertext: &mut [u8],
    free: usize,
) -> Option<[u8; 16]> {
    assert_eq!(k1.nonce, k2.nonce, "one ciphertext, one nonce");
    let range = free * 16..free * 16 + 16;
    ciphertext[range.clone()].fill(0);
    // GHASH blocks: ceil(|aad| / 16) blocks of aad come before the ciphertext's.
    let blocks = ghash_blocks(aad, ciphertext);
    let position = aad.len().div_ceil(16) + free;
    let exponent = (blocks.len() - position) as u128;
    let (g1, g2) = (k1.tag(aad, ciphertext), k2.tag(aad, ciphertext));
    let (c1, c2) = (gf_pow(k1.h, exponent), gf_pow(k2.h, exponent));
    if c1 == c2 {
        return None;
    }
    let b = gf_mul(g1 ^ g2, gf_inv(c1 ^ c2));
    ciphertext[range].copy_from_slice(&b.to_be_bytes());
    let tag = g1 ^ gf_mul(b, c1);
    debug_assert_eq!(tag, g2 ^ gf_mul(b, c2));
    Some(tag.to_be_bytes())
}

/// A crafted salamander: `ciphertext || tag` valid under two keys, with what each key reads.
struct Salamander {
    sealed: Vec<u8>,
    plaintext_1: Vec<u8>,
    plaintext_2: Vec<u8>,
}

/// A body salamander: [`salamander_in`] with a body's nonce and associated data.
fn salamander(
    key_1: &[u8; 32],
    key_2: &[u8; 32],
    text_1: &[u8],
    text_2: &[u8],
    len: usize,
) -> Salamander {
    salamander_in(&ZERO_NONCE, BODY_AAD, key_1, key_2, text_1, text_2, len)
}

/// Crafts a `len`-byte ciphertext (a multiple of 16, at least 48) under `nonce` and `aad` whose
/// first half reads `text_1` under `key_1`, whose second half but the last block reads `text_2`
/// under `key_2`, and whose last block is the free one; then checks it with `aes-gcm` under
/// both keys.
fn salamander_in(
    nonce: &[u8; 12],
    aad: &[u8],
    key_1: &[u8; 32],
    key_2: &[u8; 32],
    text_1: &[u8],
    text_2: &[u8],
    len: usize,
) -> Salamander {
    assert!(len.is_multiple_of(16) && len >= 48);
    let (g1, g2) = (GcmKey::new(key_1, nonce), GcmKey::new(key_2, nonce));
    let half = len / 2;
    let wanted_1: Vec<u8> = text_1.iter().copied().cycle().take(half).collect();
    let wanted_2: Vec<u8> = text_2.iter().copied().cycle().take(len - half).collect();
    let mut ciphertext = xor(&wanted_1, &g1.keystream(len)[..half]);
    ciphertext.extend(xor(&wanted_2, &g2.keystream(len)[half..]));
    let tag = craft_two_key(&g1, &g2, aad, &mut ciphertext, len / 16 - 1).unwrap();
    let mut sealed = ciphertext;
    sealed.extend_from_slice(&tag);
    let plaintext_1 =
        raw_open_in(key_1, nonce, aad, &sealed).expect("the crafted ciphertext opens under key 1");
    let plaintext_2 =
        raw_open_in(key_2, nonce, aad, &sealed).expect("the crafted ciphertext opens under key 2");
    assert_eq!(&plaintext_1[..half], &wanted_1[..]);
    assert_eq!(&plaintext_2[half..len - 16], &wanted_2[..len - half - 16]);
    Salamander { sealed, plaintext_1, plaintext_2 }
}

/// `aes-gcm`'s own decryption of a body's `ciphertext || tag` (nonce 0^12, the body AAD).
fn raw_open(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    raw_open_in(key, &ZERO_NONCE, BODY_AAD, sealed)
}

/// `aes-gcm`'s own decryption of `ciphertext || tag` under any nonce and associated data.
fn raw_open_in(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    Aes256Gcm::new(key.into()).decrypt(&Nonce::from(*nonce), Payload { msg: sealed, aad }).ok()
}

/// `aes-gcm`'s own encryption (nonce 0^12, the body AAD).
fn raw_seal(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(key.into())
        .encrypt(&Nonce::from(ZERO_NONCE), Payload { msg: plaintext, aad: BODY_AAD })
        .unwrap()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

// ---------------------------------------------------------------------------------------------
// The two body formats, from the spec
// ---------------------------------------------------------------------------------------------

/// The previous format's body: `0x01 || 0x30 || ciphertext || tag`, under the content key.
fn old_body(sealed: &[u8]) -> Vec<u8> {
    [&HEADER[..], sealed].concat()
}

/// The previous format's receiver, emulated (it is no longer in the crate): the body's SHA-256
/// against the envelope's digest, then AES-256-GCM under the content key itself.
fn old_open_body(content_key: &[u8; 32], digest: &[u8; 32], body: &[u8]) -> Option<Vec<u8>> {
    if !bool::from(sha256(body).ct_eq(digest)) {
        return None;
    }
    raw_open(content_key, body.strip_prefix(&HEADER[..])?)
}

/// `cipher key || commitment = HKDF-SHA256(salt = 0^32, ikm = content key, info = KDF_BODY)`.
fn derive(content_key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    derive_with(KDF_BODY, content_key)
}

/// `cipher key || commitment = HKDF-SHA256(salt = 0^32, ikm = key, info = label)`.
fn derive_with(label: &[u8], key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let mut okm = [0u8; 64];
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), key).expand(label, &mut okm).unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

/// The current format's body: `0x01 || 0x30 || commitment || ciphertext || tag`.
fn new_body(commitment: &[u8; 32], sealed: &[u8]) -> Vec<u8> {
    [&HEADER[..], commitment, sealed].concat()
}

/// Why the spec-level receiver refused a body.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Digest,
    Malformed,
    Commitment,
    Authentication,
}

/// The current format's receiver, written from docs/PROTOCOL.md §10: digest, then commitment,
/// both in constant time, and only then AES-256-GCM under the derived cipher key.
fn new_open_body(
    content_key: &[u8; 32],
    digest: &[u8; 32],
    body: &[u8],
) -> Result<Vec<u8>, Refused> {
    if !bool::from(sha256(body).ct_eq(digest)) {
        return Err(Refused::Digest);
    }
    let rest = body.strip_prefix(&HEADER[..]).ok_or(Refused::Malformed)?;
    if rest.len() < 32 + 16 {
        return Err(Refused::Malformed);
    }
    let (commitment, sealed) = rest.split_at(32);
    let (cipher_key, expected) = derive(content_key);
    if !bool::from(expected.ct_eq(commitment)) {
        return Err(Refused::Commitment);
    }
    raw_open(&cipher_key, sealed).ok_or(Refused::Authentication)
}

/// How many of `keys` the current format's receiver (spec-level, and the crate's own) accepts
/// `body` under, for the digest of `body`; the two must agree on each key.
fn keys_opening(keys: &[&[u8; 32]], body: &[u8]) -> usize {
    let digest = sha256(body);
    keys.iter()
        .filter(|key| {
            let spec = new_open_body(key, &digest, body);
            let crate_side = open_fanout_body(key, &digest, body);
            assert_eq!(spec.is_ok(), crate_side.is_ok(), "spec and crate disagree");
            if let (Ok(a), Ok(b)) = (&spec, &crate_side) {
                assert_eq!(a.as_slice(), b.as_slice());
            }
            spec.is_ok()
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// GF(2^128) and GCM known answers
// ---------------------------------------------------------------------------------------------

fn hex16(s: &str) -> u128 {
    u128::from_str_radix(s, 16).unwrap()
}

/// McGrew–Viega, "The Galois/Counter Mode of Operation", Test Case 2 (AES-128, zero key, one
/// zero block): `H`, `C`, `X_1 = C · H` and `GHASH(H, {}, C)` as printed there.
#[test]
fn gf_mul_matches_gcm_test_case_2() {
    let h = hex16("66e94bd4ef8a2c3b884cfa59ca342b2e");
    let c = hex16("0388dace60b6a392f328c2b971b2fe78");
    let x1 = gf_mul(c, h);
    assert_eq!(x1, hex16("5e2ec746917062882c85b0685353deb7"));
    assert_eq!(gf_mul(x1 ^ 0x80, h), hex16("f38cbb1ad69223dcc3457ae5b6b0f885"));
    assert_eq!(
        ghash(h, &ghash_blocks(&[], &c.to_be_bytes())),
        hex16("f38cbb1ad69223dcc3457ae5b6b0f885")
    );
}

/// Test Cases 13 and 14 (AES-256, zero key, zero IV): `H`, and ciphertext and tag for an empty
/// and a one-zero-block plaintext, from this file's own GCM.
#[test]
fn gcm_from_gf_matches_test_cases_13_and_14() {
    let key = GcmKey::new(&[0u8; 32], &[0u8; 12]);
    assert_eq!(key.h, hex16("dc95c078a2408989ad48a21492842087"));
    assert_eq!(key.seal(&[], &[]), hex16("530f8afbc74536b9a963b4f1c4cb738b").to_be_bytes());
    let sealed = key.seal(&[], &[0u8; 16]);
    assert_eq!(sealed[..16], hex16("cea7403d4d606b6e074ec5d3baf39d18").to_be_bytes());
    assert_eq!(sealed[16..], hex16("d0d1c8a799996bf0265b98b5d48ab919").to_be_bytes());
}

/// This file's GCM reproduces `aes-gcm` byte for byte, partial blocks included.
#[test]
fn gcm_from_gf_matches_aes_gcm_on_random_inputs() {
    let mut r = rng(0x6cf);
    for _ in 0..200 {
        let key: [u8; 32] = r.random();
        let nonce: [u8; 12] = r.random();
        let mut aad = vec![0u8; r.random_range(0..70)];
        let mut plaintext = vec![0u8; r.random_range(0..200)];
        r.fill_bytes(&mut aad);
        r.fill_bytes(&mut plaintext);
        let expected = Aes256Gcm::new(&key.into())
            .encrypt(&Nonce::from(nonce), Payload { msg: &plaintext, aad: &aad })
            .unwrap();
        assert_eq!(GcmKey::new(&key, &nonce).seal(&aad, &plaintext), expected);
    }
}

/// Field laws the solve relies on: identity, commutativity, distributivity, inverses.
#[test]
fn gf_laws() {
    let mut r = rng(0x6f2);
    for _ in 0..200 {
        let (a, b, c): (u128, u128, u128) = (r.random(), r.random(), r.random());
        assert_eq!(gf_mul(a, ONE), a);
        assert_eq!(gf_mul(a, b), gf_mul(b, a));
        assert_eq!(gf_mul(a, b ^ c), gf_mul(a, b) ^ gf_mul(a, c));
        assert_eq!(gf_mul(gf_mul(a, b), c), gf_mul(a, gf_mul(b, c)));
        if a != 0 {
            assert_eq!(gf_mul(a, gf_inv(a)), ONE);
        }
        assert_eq!(gf_pow(a, 3), gf_mul(a, gf_mul(a, a)));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The previous format accepts one body under two keys
// ---------------------------------------------------------------------------------------------

#[test]
fn previous_format_opens_one_body_under_two_keys() {
    let mut r = rng(0x5a1a);
    let (k1, k2): ([u8; 32], [u8; 32]) = (r.random(), r.random());
    assert_ne!(k1, k2);
    let s =
        salamander(&k1, &k2, b"Meet at the station at 10. ", b"Meet at the harbour at 11. ", 640);
    assert_ne!(s.plaintext_1, s.plaintext_2);

    // One body, one digest: what every recipient's envelope names.
    let body = old_body(&s.sealed);
    let digest = sha256(&body);
    assert_eq!(old_open_body(&k1, &digest, &body).unwrap(), s.plaintext_1);
    assert_eq!(old_open_body(&k2, &digest, &body).unwrap(), s.plaintext_2);

    // The old sender would produce exactly this body from either key and its plaintext, so an
    // honest-looking fan-out under each key yields the same digest for two plaintexts.
    assert_eq!(old_body(&raw_seal(&k1, &s.plaintext_1)), body);
    assert_eq!(old_body(&raw_seal(&k2, &s.plaintext_2)), body);

    // The same ciphertext in the current format opens under neither content key: it was
    // crafted under the content keys, and the current format encrypts under derived keys.
    for key in [&k1, &k2] {
        let body = new_body(&derive(key).1, &s.sealed);
        assert_eq!(new_open_body(key, &sha256(&body), &body), Err(Refused::Authentication));
        assert_eq!(keys_opening(&[&k1, &k2], &body), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The current format, through the public API
// ---------------------------------------------------------------------------------------------

/// The RNG a malicious sender hands to `encrypt_fanout`: its first 32-byte draw, the content
/// key (after the 16-byte message id), is the key the sender chose; everything else is real
/// randomness.
struct ChosenContentKey {
    inner: StdRng,
    key: Option<[u8; 32]>,
}

impl TryRng for ChosenContentKey {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        assert!(self.key.is_none(), "the content key must be the first draw");
        Ok(self.inner.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        assert!(self.key.is_none(), "the content key must be the first draw");
        Ok(self.inner.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        match self.key.take() {
            Some(key) if dst.len() == 32 => dst.copy_from_slice(&key),
            Some(key) => {
                assert_eq!(dst.len(), 16, "only the message id comes before the content key");
                self.key = Some(key);
                self.inner.fill_bytes(dst);
            }
            None => self.inner.fill_bytes(dst),
        }
        Ok(())
    }
}

impl TryCryptoRng for ChosenContentKey {}

/// Fans `payload` out from `sender` to `to` under the content key `key`.
fn fanout_with_key(
    sender: &mut Device,
    r: &mut StdRng,
    to: AccountId,
    bundles: &[PrekeyBundle],
    key: [u8; 32],
    payload: &[u8],
) -> FanoutMessage {
    let mut chosen = ChosenContentKey { inner: StdRng::from_rng(r), key: Some(key) };
    let fanout = sender.encrypt_fanout(&mut chosen, &[to], bundles, payload, T0).unwrap();
    assert!(chosen.key.is_none(), "the chosen key was drawn");
    assert!(fanout.skipped.is_empty(), "{:?}", fanout.skipped);
    fanout
}

fn receive_payload(
    device: &mut Device,
    envelope: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, ReceiveError> {
    match device.receive(envelope, Some(body), T0)? {
        Received::Message(message) => Ok(message.payload.to_vec()),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn current_format_gives_each_digest_one_plaintext() {
    let mut r = rng(0xb0d1);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 0, T0);
    let mut bob = account(&mut r, &mut server, 2, 1, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let bob_id = bob.id();
    let bob_addresses: Vec<_> = bob.devices.iter().map(Device::address).collect();
    let bundles = server.bundles(&[bob_id, alice.id()]);
    let sender = alice.primary();

    // A genuine flow: an honest body fan-out reaches both of Bob's devices.
    let honest: Vec<u8> =
        (0..INLINE_THRESHOLD + 100).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let fanout = sender.encrypt_fanout(&mut r, &[bob_id], &bundles, &honest, T0).unwrap();
    let body = fanout.body.clone().expect("a payload above the threshold uses a body");
    for (device, address) in bob.devices.iter_mut().zip(&bob_addresses) {
        let envelope = envelope_for(&fanout, *address).unwrap();
        assert_eq!(receive_payload(device, &envelope, &body).unwrap(), honest);
    }

    // The attack: two content keys, one ciphertext crafted under their derived cipher keys.
    let (k1, k2): ([u8; 32], [u8; 32]) = (r.random(), r.random());
    let ((ck1, c1), (ck2, c2)) = (derive(&k1), derive(&k2));
    assert_ne!(c1, c2);
    let s = salamander(&ck1, &ck2, b"Transfer 10 to Carol. ", b"Transfer 9000 to Mallory. ", 656);
    assert!(s.plaintext_1.len() > INLINE_THRESHOLD);
    assert_ne!(s.plaintext_1, s.plaintext_2);

    // The sender runs the crate's own sealing under each chosen key, with the plaintext that
    // key reads from the crafted ciphertext.
    let fanout_1 = fanout_with_key(sender, &mut r, bob_id, &bundles, k1, &s.plaintext_1);
    let fanout_2 = fanout_with_key(sender, &mut r, bob_id, &bundles, k2, &s.plaintext_2);
    let (body_1, body_2) = (fanout_1.body.clone().unwrap(), fanout_2.body.clone().unwrap());

    // The crate's bodies are exactly the spec's: header, HKDF commitment, then AES-GCM under
    // the HKDF cipher key, nonce 0^12, the body AAD. So the crafted `C || T` is what the crate
    // itself emits, under both keys.
    assert_eq!(body_1, new_body(&c1, &s.sealed));
    assert_eq!(body_2, new_body(&c2, &s.sealed));
    assert_eq!(seal_fanout_body(&k1, &s.plaintext_1), body_1);
    assert_eq!(seal_fanout_body(&k2, &s.plaintext_2), body_2);
    assert_eq!(body_1[34..], body_2[34..], "one ciphertext and tag");
    // ... but the commitment differs, and the digest covers it: two digests, not one.
    assert_ne!(sha256(&body_1), sha256(&body_2));

    let (primary, companion) = bob.devices.split_at_mut(1);
    let (primary, companion) = (&mut primary[0], &mut companion[0]);
    let to_primary = envelope_for(&fanout_1, bob_addresses[0]).unwrap();
    let to_companion = envelope_for(&fanout_2, bob_addresses[1]).unwrap();

    // The server hands the companion the body the primary's envelope names (one stored body for
    // both): refused on its digest, before any key is used. So is the primary's body with its
    // commitment replaced by, or altered toward, another key's.
    assert!(matches!(
        receive_payload(companion, &to_companion, &body_1),
        Err(ReceiveError::BodyDigestMismatch)
    ));
    let mut swapped = body_1.clone();
    swapped[2..34].copy_from_slice(&c2);
    assert_eq!(swapped, body_2);
    let mut flipped = body_1.clone();
    flipped[2] ^= 1;
    assert!(matches!(
        receive_payload(primary, &to_primary, &flipped),
        Err(ReceiveError::BodyDigestMismatch)
    ));

    // Each device reads its own body; the refusals above committed nothing.
    assert_eq!(receive_payload(primary, &to_primary, &body_1).unwrap(), s.plaintext_1);
    assert_eq!(receive_payload(companion, &to_companion, &body_2).unwrap(), s.plaintext_2);

    // Every digest names one plaintext: under one body's digest, the other key fails its
    // commitment, in the spec-level receiver and in the crate's own body check (which
    // `Device::receive` reaches only through an envelope naming a key and a digest the crate's
    // sender never pairs: it always derives the digest from the body it sealed).
    let (d1, d2) = (sha256(&body_1), sha256(&body_2));
    assert_eq!(new_open_body(&k1, &d1, &body_1).unwrap(), s.plaintext_1);
    assert_eq!(new_open_body(&k2, &d2, &body_2).unwrap(), s.plaintext_2);
    assert_eq!(new_open_body(&k2, &d1, &body_1), Err(Refused::Commitment));
    assert_eq!(new_open_body(&k1, &d2, &body_2), Err(Refused::Commitment));
    assert_eq!(new_open_body(&k1, &d1, &body_2), Err(Refused::Digest));
    assert!(matches!(open_fanout_body(&k2, &d1, &body_1), Err(ReceiveError::BodyKeyCommitment)));
    assert!(matches!(open_fanout_body(&k1, &d2, &body_2), Err(ReceiveError::BodyKeyCommitment)));
    assert_eq!(open_fanout_body(&k1, &d1, &body_1).unwrap().as_slice(), s.plaintext_1);
    assert_eq!(keys_opening(&[&k1, &k2], &body_1), 1);
    assert_eq!(keys_opening(&[&k1, &k2], &body_2), 1);

    // Without the commitment check (the crafted bytes with each key's commitment, decrypted
    // under each derived key), the ciphertext itself still opens under both: the commitment,
    // not AES-GCM, is what refuses the second key.
    assert_eq!(raw_open(&ck1, &body_2[34..]).unwrap(), s.plaintext_1);
    assert_eq!(raw_open(&ck2, &body_1[34..]).unwrap(), s.plaintext_2);
}

// ---------------------------------------------------------------------------------------------
// 3. Property: raw AES-GCM always opens under both, the committing scheme never
// ---------------------------------------------------------------------------------------------

#[test]
fn crafted_ciphertexts_open_under_both_keys_raw_and_under_at_most_one_committed() {
    let mut r = rng(0xc0de);
    for _ in 0..300 {
        let (k1, k2): ([u8; 32], [u8; 32]) = (r.random(), r.random());
        let nonce: [u8; 12] = r.random();
        let mut aad = vec![0u8; r.random_range(0..40)];
        r.fill_bytes(&mut aad);
        let mut ciphertext = vec![0u8; r.random_range(16..120)];
        r.fill_bytes(&mut ciphertext);
        let free = r.random_range(0..ciphertext.len() / 16);

        // Generic AES-GCM, any nonce and AAD: opens under both keys, to different plaintexts.
        let (g1, g2) = (GcmKey::new(&k1, &nonce), GcmKey::new(&k2, &nonce));
        let tag = craft_two_key(&g1, &g2, &aad, &mut ciphertext, free).unwrap();
        let sealed = [&ciphertext[..], &tag].concat();
        let open = |key: &[u8; 32]| {
            Aes256Gcm::new(key.into())
                .decrypt(&Nonce::from(nonce), Payload { msg: &sealed, aad: &aad })
                .expect("a crafted ciphertext opens under both keys")
        };
        assert_ne!(open(&k1), open(&k2));

        // A body crafted under the two derived cipher keys: raw AES-GCM opens it under both,
        // the committing receiver under exactly the key whose commitment it carries.
        let ((ck1, c1), (ck2, c2)) = (derive(&k1), derive(&k2));
        let len = 16 * r.random_range(3..12);
        let s = salamander(&ck1, &ck2, b"one", b"two", len);
        assert!(raw_open(&ck1, &s.sealed).is_some() && raw_open(&ck2, &s.sealed).is_some());
        for commitment in [c1, c2, r.random()] {
            let body = new_body(&commitment, &s.sealed);
            let opened = keys_opening(&[&k1, &k2], &body);
            assert!(opened <= 1);
            assert_eq!(opened, usize::from(commitment == c1 || commitment == c2));
        }
        // And a body crafted under the content keys themselves, as the previous format allowed,
        // opens under both there and under neither now.
        let old = salamander(&k1, &k2, b"one", b"two", len);
        let digest = sha256(&old_body(&old.sealed));
        assert!(old_open_body(&k1, &digest, &old_body(&old.sealed)).is_some());
        assert!(old_open_body(&k2, &digest, &old_body(&old.sealed)).is_some());
        for commitment in [c1, c2] {
            assert_eq!(keys_opening(&[&k1, &k2], &new_body(&commitment, &old.sealed)), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Blobs: one crafted chunk, two keys
// ---------------------------------------------------------------------------------------------

/// The HKDF info that splits a blob key into cipher key and commitment.
const KDF_BLOB: &[u8] = b"multidevice/v1/kdf/blob";
/// Version and chunk size (65,536, big-endian) of the current blob header.
const BLOB_V2: [u8; 5] = [2, 0, 1, 0, 0];
/// Version and chunk size of the previous blob header, which carried no commitment.
const BLOB_V1: [u8; 5] = [1, 0, 1, 0, 0];

/// The current header: `version || chunk size || nonce prefix || commitment`, 44 bytes.
fn blob_header(prefix: &[u8; 7], commitment: &[u8; 32]) -> Vec<u8> {
    let header = [&BLOB_V2[..], prefix, commitment].concat();
    assert_eq!(header.len(), HEADER_LEN);
    header
}

/// The nonce of a blob's sole chunk: `prefix || index 0 || final 0x01`.
fn sole_chunk_nonce(prefix: &[u8; 7]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..7].copy_from_slice(prefix);
    nonce[11] = 1;
    nonce
}

fn octet_stream() -> MediaType {
    MediaType::new("application/octet-stream").unwrap()
}

/// The descriptor a sender hands one recipient: a key, the plaintext length, and the digest.
fn blob_descriptor(key: &[u8; 32], len: usize, digest: [u8; 32]) -> BlobDescriptor {
    BlobDescriptor::new(BlobKey::from_bytes(key), len as u64, digest, octet_stream()).unwrap()
}

/// The previous blob format's receiver for a one-chunk blob, emulated (it is no longer in the
/// crate): the blob's SHA-256 against the descriptor's, then AES-256-GCM under the blob key
/// itself with the 12-byte header as associated data.
fn old_open_blob(key: &[u8; 32], digest: &[u8; 32], blob: &[u8]) -> Option<Vec<u8>> {
    if !bool::from(sha256(blob).ct_eq(digest)) {
        return None;
    }
    let (header, sealed) = blob.split_at_checked(12)?;
    let prefix: [u8; 7] = header.strip_prefix(&BLOB_V1[..])?.try_into().ok()?;
    raw_open_in(key, &sole_chunk_nonce(&prefix), header, sealed)
}

/// The current format's receiver for a one-chunk blob, written from docs/PROTOCOL.md §13:
/// digest, header, commitment (constant time), and only then the chunk under the derived key.
fn spec_open_blob(key: &[u8; 32], digest: &[u8; 32], blob: &[u8]) -> Result<Vec<u8>, Refused> {
    if !bool::from(sha256(blob).ct_eq(digest)) {
        return Err(Refused::Digest);
    }
    let (header, sealed) = blob.split_at_checked(HEADER_LEN).ok_or(Refused::Malformed)?;
    let rest = header.strip_prefix(&BLOB_V2[..]).ok_or(Refused::Malformed)?;
    let (prefix, commitment) = rest.split_at(7);
    let (cipher_key, expected) = derive_with(KDF_BLOB, key);
    if !bool::from(expected.ct_eq(commitment)) {
        return Err(Refused::Commitment);
    }
    let nonce = sole_chunk_nonce(prefix.try_into().unwrap());
    raw_open_in(&cipher_key, &nonce, header, sealed).ok_or(Refused::Authentication)
}

/// How many of `keys` open `blob` (a descriptor per key, all naming the blob's own digest),
/// in the crate (in memory and streaming) and in the spec-level receiver, which must agree.
fn keys_opening_blob(keys: &[&[u8; 32]], blob: &[u8], len: usize) -> usize {
    let digest = sha256(blob);
    keys.iter()
        .filter(|key| {
            let descriptor = blob_descriptor(key, len, digest);
            let in_memory = decrypt_blob(&descriptor, blob);
            let mut streamed = Vec::new();
            let stream = decrypt_stream(&descriptor, blob, &mut streamed);
            let spec = spec_open_blob(key, &digest, blob);
            assert_eq!(in_memory.is_ok(), spec.is_ok(), "spec and crate disagree");
            assert_eq!(stream.is_ok(), spec.is_ok(), "streaming and in-memory disagree");
            match (&in_memory, &spec) {
                (Ok(a), Ok(b)) => assert_eq!(a.as_slice(), b.as_slice()),
                (Err(e), Err(Refused::Commitment)) => {
                    assert_eq!(*e, BlobError::KeyCommitment);
                    assert_eq!(stream, Err(BlobError::KeyCommitment));
                    assert!(streamed.is_empty(), "nothing decrypted before the commitment check");
                }
                _ => {}
            }
            spec.is_ok()
        })
        .count()
}

/// The RNG a sender hands to `encrypt_blob`: its draws (the blob key, then the nonce prefix)
/// are the bytes it chose.
struct ChosenDraws(Vec<Vec<u8>>);

impl TryRng for ChosenDraws {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        panic!("blob encryption draws bytes only")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        panic!("blob encryption draws bytes only")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let draw = self.0.remove(0);
        dst.copy_from_slice(&draw);
        Ok(())
    }
}

impl TryCryptoRng for ChosenDraws {}

/// `plaintext` as the crate's own encryptor seals it under the chosen key and nonce prefix.
fn crate_blob(key: &[u8; 32], prefix: &[u8; 7], plaintext: &[u8]) -> Vec<u8> {
    let mut chosen = ChosenDraws(vec![key.to_vec(), prefix.to_vec()]);
    let (blob, _) = encrypt_blob(&mut chosen, plaintext, octet_stream()).unwrap();
    assert!(chosen.0.is_empty(), "the key and the prefix were drawn");
    blob
}

#[test]
fn previous_blob_format_opens_one_blob_under_two_keys() {
    let mut r = rng(0xb10b);
    let (k1, k2): ([u8; 32], [u8; 32]) = (r.random(), r.random());
    let prefix: [u8; 7] = r.random();
    let header = [&BLOB_V1[..], &prefix].concat();
    let s = salamander_in(
        &sole_chunk_nonce(&prefix),
        &header,
        &k1,
        &k2,
        b"The photo shows a cat. ",
        b"The photo shows a dog. ",
        640,
    );
    assert_ne!(s.plaintext_1, s.plaintext_2);
    let blob = [&header[..], &s.sealed].concat();
    let digest = sha256(&blob);
    assert_eq!(old_open_blob(&k1, &digest, &blob).unwrap(), s.plaintext_1);
    assert_eq!(old_open_blob(&k2, &digest, &blob).unwrap(), s.plaintext_2);

    // The crate refuses that format outright, under either key.
    for key in [&k1, &k2] {
        let descriptor = blob_descriptor(key, s.plaintext_1.len(), digest);
        assert_eq!(decrypt_blob(&descriptor, &blob), Err(BlobError::UnsupportedVersion(1)));
    }
}

#[test]
fn current_blob_format_opens_a_crafted_blob_under_one_key_only() {
    let mut r = rng(0xb10c);
    let (k1, k2): ([u8; 32], [u8; 32]) = (r.random(), r.random());
    let prefix: [u8; 7] = r.random();
    let ((ck1, c1), (ck2, c2)) = (derive_with(KDF_BLOB, &k1), derive_with(KDF_BLOB, &k2));
    assert_ne!(c1, c2);
    // Blobs and bodies never share a commitment for one key.
    assert_ne!(derive(&k1), (ck1, c1));

    // One chunk crafted under both derived cipher keys, authenticating the header that
    // commits to the first key.
    let header_1 = blob_header(&prefix, &c1);
    let nonce = sole_chunk_nonce(&prefix);
    let s = salamander_in(
        &nonce,
        &header_1,
        &ck1,
        &ck2,
        b"Transfer 10 to Carol. ",
        b"Transfer 9000 to Mallory. ",
        656,
    );
    let len = s.plaintext_1.len();
    assert_ne!(s.plaintext_1, s.plaintext_2);
    let blob_1 = [&header_1[..], &s.sealed].concat();

    // The crate's own encryptor, given the first key and prefix, emits exactly this blob.
    assert_eq!(crate_blob(&k1, &prefix, &s.plaintext_1), blob_1);

    // Each recipient gets the same digest with a different key: the first reads its
    // plaintext, the second is refused for the commitment before any chunk is decrypted.
    let digest = sha256(&blob_1);
    let (d1, d2) = (blob_descriptor(&k1, len, digest), blob_descriptor(&k2, len, digest));
    assert_eq!(decrypt_blob(&d1, &blob_1).unwrap().as_slice(), s.plaintext_1);
    assert_eq!(decrypt_blob(&d2, &blob_1), Err(BlobError::KeyCommitment));
    let mut written = Vec::new();
    assert_eq!(decrypt_stream(&d2, &blob_1[..], &mut written), Err(BlobError::KeyCommitment));
    assert!(written.is_empty());
    assert_eq!(spec_open_blob(&k2, &digest, &blob_1), Err(Refused::Commitment));
    assert_eq!(keys_opening_blob(&[&k1, &k2], &blob_1, len), 1);

    // Without the commitment check the chunk itself opens under both derived keys: the
    // commitment, not AES-GCM, is what refuses the second key.
    assert_eq!(raw_open_in(&ck2, &nonce, &header_1, &s.sealed).unwrap(), s.plaintext_2);

    // The header that commits to the second key is another blob with another digest, and
    // the second key's own encryption of its plaintext shares the ciphertext but not the tag
    // (the header is the chunk's associated data).
    let blob_2 = [&blob_header(&prefix, &c2)[..], &s.sealed].concat();
    assert_ne!(sha256(&blob_2), digest);
    assert_eq!(keys_opening_blob(&[&k1, &k2], &blob_2, len), 0, "tag made for header 1");
    let honest_2 = crate_blob(&k2, &prefix, &s.plaintext_2);
    assert_eq!(honest_2[HEADER_LEN..HEADER_LEN + len], blob_1[HEADER_LEN..HEADER_LEN + len]);
    assert_ne!(honest_2[HEADER_LEN + len..], blob_1[HEADER_LEN + len..]);
    assert_eq!(keys_opening_blob(&[&k1, &k2], &honest_2, len), 1);
}

#[test]
fn crafted_blobs_open_under_at_most_one_key() {
    let mut r = rng(0xb10d);
    for _ in 0..120 {
        let (k1, k2): ([u8; 32], [u8; 32]) = (r.random(), r.random());
        let prefix: [u8; 7] = r.random();
        let ((ck1, c1), (ck2, c2)) = (derive_with(KDF_BLOB, &k1), derive_with(KDF_BLOB, &k2));
        let len = 16 * r.random_range(3..24);
        let nonce = sole_chunk_nonce(&prefix);
        for commitment in [c1, c2, r.random()] {
            let header = blob_header(&prefix, &commitment);
            let s = salamander_in(&nonce, &header, &ck1, &ck2, b"one", b"two", len);
            let blob = [&header[..], &s.sealed].concat();
            let opened = keys_opening_blob(&[&k1, &k2], &blob, len);
            assert!(opened <= 1);
            assert_eq!(opened, usize::from(commitment == c1 || commitment == c2));
        }
        // Crafted under the blob keys themselves, as the previous format allowed: the
        // current format opens it under neither.
        let header = blob_header(&prefix, &c1);
        let s = salamander_in(&nonce, &header, &k1, &k2, b"one", b"two", len);
        assert_eq!(keys_opening_blob(&[&k1, &k2], &[&header[..], &s.sealed].concat(), len), 0);
    }
}
