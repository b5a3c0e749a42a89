//! Thin wrappers over the primitives, and every domain-separation label.
//!
//! This module owns the only calls into the primitive crates, so a reviewer can check the labels,
//! the contributory-key rule and `verify_strict` in one place. It never holds state.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::digest::FixedOutput;
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Ed25519Rejection, KeyError, SignatureKind};

/// Every label of the protocol (docs/PROTOCOL.md section 1). Each signed, hashed or MAC'ed
/// message is `label || 0x00 || body`; labels contain no zero byte, so no such message under one
/// label is also one under another. The other uses take the label without a separator, each in
/// a context of its own: HKDF infos (the label alone, or the X3DH label followed by the 32-byte
/// associated data), the CPace channel identifier, and the fan-out body's AES-GCM associated
/// data.
pub(crate) mod label {
    pub(crate) const SIG_IDENTITY_AGREEMENT: &[u8] = b"multidevice/v1/sig/identity-agreement-key";
    pub(crate) const SIG_SIGNED_PREKEY: &[u8] = b"multidevice/v1/sig/signed-prekey";
    pub(crate) const SIG_ACCOUNT: &[u8] = b"multidevice/v1/sig/account-signature";
    pub(crate) const SIG_DEVICE: &[u8] = b"multidevice/v1/sig/device-signature";
    pub(crate) const SIG_DEVICE_LIST: &[u8] = b"multidevice/v1/sig/device-list";
    pub(crate) const SIG_LOGOUT: &[u8] = b"multidevice/v1/sig/logout-request";
    pub(crate) const HASH_DEVICE_LIST: &[u8] = b"multidevice/v1/hash/device-list";
    pub(crate) const HASH_SECURITY_CODE: &[u8] = b"multidevice/v1/hash/security-code";
    pub(crate) const MAC_LINK_APPROVAL: &[u8] = b"multidevice/v1/mac/link-approval";
    pub(crate) const MAC_LINK_CONFIRMATION: &[u8] = b"multidevice/v1/mac/link-confirmation";
    pub(crate) const MAC_PAIRING_CONFIRM_INITIATOR: &[u8] =
        b"multidevice/v1/mac/pairing-confirm-initiator";
    pub(crate) const MAC_PAIRING_CONFIRM_RESPONDER: &[u8] =
        b"multidevice/v1/mac/pairing-confirm-responder";
    pub(crate) const KDF_PAIRING: &[u8] = b"multidevice/v1/kdf/pairing";
    pub(crate) const CPACE_CHANNEL: &[u8] = b"multidevice/v1/cpace/pairing";
    pub(crate) const HASH_QR_CHECKSUM: &[u8] = b"multidevice/v1/hash/qr-checksum";
    pub(crate) const HASH_PAIRING_TRANSCRIPT: &[u8] = b"multidevice/v1/hash/pairing-transcript";
    pub(crate) const STORE_RECORD_KEY: &[u8] = b"multidevice/v1/store/kdf/record";
    pub(crate) const STORE_LOOKUP_KEY: &[u8] = b"multidevice/v1/store/kdf/lookup";
    pub(crate) const STORE_LOOKUP: &[u8] = b"multidevice/v1/store/mac/lookup";
    pub(crate) const STORE_GROUP: &[u8] = b"multidevice/v1/store/mac/group";
    pub(crate) const STORE_NONCE: &[u8] = b"multidevice/v1/store/mac/nonce";
    pub(crate) const STORE_KEY_CHECK: &[u8] = b"multidevice/v1/store/mac/key-check";
    pub(crate) const STORE_RECORD_AAD: &[u8] = b"multidevice/v1/store/aad/record";
    pub(crate) const HASH_GROUP_MEMBERSHIP: &[u8] = b"multidevice/v1/hash/group-membership";
    pub(crate) const SIG_GROUP_MESSAGE: &[u8] = b"multidevice/v1/sig/group-message";
    pub(crate) const SIG_RETRY_REQUEST: &[u8] = b"multidevice/v1/sig/retry-request";
    pub(crate) const HASH_ANSWERED_PAIRING_CODE: &[u8] =
        b"multidevice/v1/hash/answered-pairing-code";
    pub(crate) const KDF_BODY: &[u8] = b"multidevice/v1/kdf/body";
    /// The whole AES-GCM associated data of a fan-out body.
    pub(crate) const FANOUT_BODY_AAD: &[u8] = b"multidevice/v1/fanout-body";
    pub(crate) const KDF_BLOB: &[u8] = b"multidevice/v1/kdf/blob";
    pub(crate) const KDF_X3DH: &[u8] = b"multidevice/v1/kdf/x3dh";
    pub(crate) const KDF_ROOT: &[u8] = b"multidevice/v1/kdf/root";
    pub(crate) const HASH_AD: &[u8] = b"multidevice/v1/hash/associated-data";
    pub(crate) const HASH_SESSION_ID: &[u8] = b"multidevice/v1/hash/session-id";
    pub(crate) const HASH_FINGERPRINT: &[u8] = b"multidevice/v1/hash/fingerprint";
}

/// A 32-byte secret, boxed so moves do not leave copies behind, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Secret32(Box<[u8; 32]>);

impl Secret32 {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        let mut bytes = bytes;
        let boxed = Box::new(bytes);
        bytes.zeroize();
        Self(boxed)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Mutable access, to overwrite the secret in place.
    pub(crate) fn as_mut_bytes(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl core::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secret32(..)")
    }
}

/// An X25519 secret key with its public key, wiped on drop.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "Secret32", into = "Secret32")]
pub(crate) struct X25519KeyPair {
    secret: StaticSecret,
    public: [u8; 32],
}

impl X25519KeyPair {
    pub(crate) fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        let public = XPublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    pub(crate) fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// Diffie-Hellman with a peer-supplied key, rejecting non-canonical encodings and
    /// non-contributory results.
    pub(crate) fn dh(&self, their_public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        if !is_canonical_x25519(their_public) {
            return Err(KeyError::NonCanonicalKey);
        }
        let shared = self.secret.diffie_hellman(&XPublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(KeyError::NonContributoryKey);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

/// True if `key` encodes a u-coordinate below p = 2^255 - 19 with the top bit clear: the only
/// encodings our own keys ever have. RFC 7748 would reduce the others; we refuse them, so every
/// key has exactly one accepted encoding.
fn is_canonical_x25519(key: &[u8; 32]) -> bool {
    let [low, middle @ .., high] = key;
    if *high & 0x80 != 0 {
        return false;
    }
    // Below 2^255 - 19 unless every byte is at its maximum and the lowest is at least 0xed.
    !(*high == 0x7f && middle.iter().all(|&b| b == 0xff) && *low >= 0xed)
}

impl From<Secret32> for X25519KeyPair {
    fn from(secret: Secret32) -> Self {
        let secret = StaticSecret::from(*secret.as_bytes());
        let public = XPublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }
}

impl From<X25519KeyPair> for Secret32 {
    fn from(pair: X25519KeyPair) -> Self {
        Secret32::new(pair.secret.to_bytes())
    }
}

impl core::fmt::Debug for X25519KeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("X25519KeyPair").field("public", &Hex(&self.public)).finish_non_exhaustive()
    }
}

/// Hex formatting for public values in `Debug` output.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl core::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Signs `label || 0x00 || parts...`.
pub(crate) fn sign(key: &SigningKey, label: &[u8], parts: &[&[u8]]) -> [u8; 64] {
    key.sign(&signed_message(label, parts)).to_bytes()
}

/// Verifies a signature made by [`sign`] under the strict rules of [`verify_strict_raw`].
pub(crate) fn verify(
    key: &VerifyingKey,
    label: &[u8],
    parts: &[&[u8]],
    signature: &[u8; 64],
    kind: SignatureKind,
) -> Result<(), KeyError> {
    // State restored from an authenticated store was verified before it was stored.
    if crate::serde_util::authenticated::active() {
        return Ok(());
    }
    verify_strict_raw(key, &signed_message(label, parts), signature)
        .map_err(|_| KeyError::BadSignature(kind))
}

/// The canonical encodings of the eight points of small order (the 8-torsion subgroup): the
/// identity, the point of order 2, the two of order 4 and the four of order 8. A canonical
/// encoding names a small-order point exactly when it is one of these.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut order_two = [0xff; 32];
    order_two[0] = 0xec;
    order_two[31] = 0x7f;
    let order_four = [0u8; 32];
    let mut order_four_negative = [0u8; 32];
    order_four_negative[31] = 0x80;
    let order_eight_a = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ];
    let mut order_eight_a_negative = order_eight_a;
    order_eight_a_negative[31] = 0x85;
    let order_eight_b = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];
    let mut order_eight_b_negative = order_eight_b;
    order_eight_b_negative[31] = 0xfa;
    [
        identity,
        order_two,
        order_four,
        order_four_negative,
        order_eight_a,
        order_eight_a_negative,
        order_eight_b,
        order_eight_b_negative,
    ]
};

/// True if `encoding` is the one encoding RFC 8032 decoding gives its point: the
/// y-coordinate (the low 255 bits) is below p = 2^255 - 19, and the sign bit is clear when
/// x = 0 (y = 1 or y = p - 1). Checked on the bytes alone.
fn is_canonical_ed25519(encoding: &[u8; 32]) -> bool {
    let [low, middle @ .., high] = encoding;
    let sign = *high & 0x80 != 0;
    let high = *high & 0x7f;
    let all_ff = middle.iter().all(|&b| b == 0xff);
    let all_zero = middle.iter().all(|&b| b == 0);
    // y >= p: every byte at its maximum and the lowest at least 0xed.
    let y_too_large = high == 0x7f && all_ff && *low >= 0xed;
    // x = 0 exactly for y = 1 and y = p - 1; their sign bit must be clear.
    let signed_zero_x =
        sign && ((high == 0 && all_zero && *low == 1) || (high == 0x7f && all_ff && *low == 0xec));
    !y_too_large && !signed_zero_x
}

/// Decodes an Ed25519 public key `A` under rule 1 of strict verification (docs/PROTOCOL.md,
/// Notation): the canonical encoding of a curve point. Small order (rule 2) is a signature
/// rule, checked by [`verify_strict_raw`].
pub(crate) fn ed25519_public_key(encoding: &[u8; 32]) -> Result<VerifyingKey, Ed25519Rejection> {
    if !is_canonical_ed25519(encoding) {
        return Err(Ed25519Rejection::NonCanonicalKey);
    }
    VerifyingKey::from_bytes(encoding).map_err(|_| Ed25519Rejection::KeyNotOnCurve)
}

/// Strict Ed25519 verification over a raw message: the single place signatures are checked.
///
/// The rules, in this order (docs/PROTOCOL.md, Notation): `A` canonical (every key reaching
/// here was decoded by [`ed25519_public_key`] or derived from our own secret, so this re-check
/// costs a byte comparison), `A` not of small order, `R` canonical, `R` not of small order,
/// `S < L`, then the cofactorless equation, which ed25519-dalek's `verify_strict` computes (it
/// also repeats the small-order and `S` checks). Only the failure path decodes `R` again, to
/// name why the equation failed.
pub(crate) fn verify_strict_raw(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), Ed25519Rejection> {
    let public = key.as_bytes();
    let (r, s) = signature.split_at(32);
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(r);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(s);
    if !is_canonical_ed25519(public) {
        return Err(Ed25519Rejection::NonCanonicalKey);
    }
    if SMALL_ORDER_ENCODINGS.contains(public) {
        return Err(Ed25519Rejection::SmallOrderKey);
    }
    if !is_canonical_ed25519(&r_bytes) {
        return Err(Ed25519Rejection::NonCanonicalR);
    }
    if SMALL_ORDER_ENCODINGS.contains(&r_bytes) {
        return Err(Ed25519Rejection::SmallOrderR);
    }
    if Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).is_none() {
        return Err(Ed25519Rejection::ScalarNotReduced);
    }
    if key.verify_strict(message, &Signature::from_bytes(signature)).is_ok() {
        return Ok(());
    }
    if CompressedEdwardsY(r_bytes).decompress().is_none() {
        Err(Ed25519Rejection::RNotOnCurve)
    } else {
        Err(Ed25519Rejection::EquationFails)
    }
}

fn signed_message(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = label.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(label);
    message.push(0);
    for part in parts {
        message.extend_from_slice(part);
    }
    message
}

/// SHA-256 over `label || 0x00 || parts...`.
pub(crate) fn hash(label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update([0u8]);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The first 16 bytes of a 32-byte digest.
pub(crate) fn first_16(digest: &[u8; 32]) -> [u8; 16] {
    let (head, _) = digest.split_at(16);
    let mut out = [0u8; 16];
    out.copy_from_slice(head);
    out
}

/// HKDF-SHA256 with the given salt, input key material and info, filling `out`.
pub(crate) fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), ikm);
    // `out` is at most 96 bytes everywhere in this crate, far below HKDF's 255 * 32 limit.
    #[allow(clippy::expect_used)]
    hk.expand_multi_info(info, out)
        .expect("HKDF output lengths in this crate are at most 96 bytes");
}

/// Splits a one-time content key into the AES-256-GCM key that encrypts and a commitment to it:
/// `cipher key || commitment = HKDF(salt = 0^32, ikm = key, info = label)`, 64 bytes. Stored
/// beside the ciphertext and checked in constant time before decryption, the commitment makes
/// the ciphertext open under one key only (AES-GCM alone does not commit to its key).
pub(crate) fn commit_key(key: &[u8; 32], label: &[u8]) -> (Secret32, [u8; 32]) {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf(&[0u8; 32], key, &[label], okm.as_mut_slice());
    let (cipher_key, commitment) = okm.split_at(32);
    let mut out = Secret32::new([0u8; 32]);
    out.as_mut_bytes().copy_from_slice(cipher_key);
    let mut committed = [0u8; 32];
    committed.copy_from_slice(commitment);
    (out, committed)
}

/// One step of a symmetric chain: `(message_key, next_chain_key)`, each an HMAC-SHA256 of the
/// chain key over a one-byte constant.
pub(crate) fn chain_step(chain_key: &[u8; 32]) -> (Secret32, Secret32) {
    let (mut message_key, mut next) = (Secret32::new([0u8; 32]), Secret32::new([0u8; 32]));
    chain_step_into(chain_key, message_key.as_mut_bytes(), next.as_mut_bytes());
    (message_key, next)
}

/// [`chain_step`] into caller-owned buffers, so the hot sending path allocates nothing and no
/// copy of either key is left unwiped.
pub(crate) fn chain_step_into(
    chain_key: &[u8; 32],
    message_key: &mut [u8; 32],
    next: &mut [u8; 32],
) {
    let keyed = hmac_keyed(chain_key);
    FixedOutput::finalize_into(keyed.clone().chain_update([0x01]), message_key.into());
    FixedOutput::finalize_into(keyed.chain_update([0x02]), next.into());
}

fn hmac_keyed(key: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// HMAC-SHA256 under `key` over `label || 0x00 || parts...`.
pub(crate) fn mac(key: &[u8; 32], label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = hmac_keyed(key);
    mac.update(label);
    mac.update(&[0]);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// AES-256-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;
/// AES-256-GCM nonce length.
pub(crate) const NONCE_LEN: usize = 12;

/// Appends `plaintext` to `buffer`, encrypts it there in place and appends the tag: what is
/// already in `buffer` (a message's prefix) stays as it is.
pub(crate) fn seal_append(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buffer: &mut Vec<u8>,
    plaintext: &[u8],
) {
    let cipher = Aes256Gcm::new(key.into());
    let start = buffer.len();
    buffer.extend_from_slice(plaintext);
    // `start` is the length before the append, so the split is always in bounds.
    let (_, body) = buffer.split_at_mut(start);
    // AES-GCM only fails for inputs longer than 2^36 bytes; every caller bounds its plaintext far
    // below that.
    #[allow(clippy::expect_used)]
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(*nonce), aad, body.into())
        .expect("plaintexts in this crate are far below the AES-GCM length limit");
    buffer.extend_from_slice(tag.as_slice());
}

/// Decrypts `ciphertext || tag` into a fresh buffer. Nothing is returned unless the tag verifies.
pub(crate) fn open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, aes_gcm::Error> {
    let body_len = sealed.len().checked_sub(TAG_LEN).ok_or(aes_gcm::Error)?;
    let (body, tag) = sealed.split_at(body_len);
    let tag = Tag::try_from(tag).map_err(|_| aes_gcm::Error)?;
    let mut plaintext = Zeroizing::new(body.to_vec());
    let cipher = Aes256Gcm::new(key.into());
    cipher.decrypt_inout_detached(
        &Nonce::from(*nonce),
        aad,
        plaintext.as_mut_slice().into(),
        &tag,
    )?;
    Ok(plaintext)
}

/// Constant-time equality of two byte strings of public length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::EIGHT_TORSION;

    use super::*;

    /// The small-order list is exactly the canonical encodings of the 8-torsion subgroup, and
    /// each of them is canonical.
    #[test]
    fn small_order_encodings_are_the_eight_torsion_points() {
        let mut computed: Vec<[u8; 32]> =
            EIGHT_TORSION.iter().map(|point| point.compress().to_bytes()).collect();
        let mut listed = SMALL_ORDER_ENCODINGS.to_vec();
        computed.sort_unstable();
        listed.sort_unstable();
        assert_eq!(computed, listed);
        assert!(listed.iter().all(is_canonical_ed25519));
    }

    /// Canonical means RFC 8032 decoding gives back the same bytes: y below p, and no sign bit
    /// on x = 0.
    #[test]
    fn canonical_ed25519_encodings_are_exactly_those_that_round_trip() {
        let p_minus_one = {
            let mut e = [0xff; 32];
            e[0] = 0xec;
            e[31] = 0x7f;
            e
        };
        let mut cases = vec![p_minus_one, [0u8; 32], [0xff; 32]];
        // y = p + k for k in 0..=18, with and without the sign bit, and y = 1 with the sign bit.
        for k in 0u8..=18 {
            let mut e = [0xff; 32];
            e[0] = 0xed + k;
            e[31] = 0x7f;
            cases.push(e);
            e[31] = 0xff;
            cases.push(e);
        }
        let mut one = [0u8; 32];
        one[0] = 1;
        cases.push(one);
        one[31] = 0x80;
        cases.push(one);
        let mut minus_one_signed = p_minus_one;
        minus_one_signed[31] = 0xff;
        cases.push(minus_one_signed);
        for e in cases {
            // Encodings of no point at all fail decoding whatever the rule says; skip them.
            if let Some(point) = CompressedEdwardsY(e).decompress() {
                let round_trips = point.compress().to_bytes() == e;
                assert_eq!(is_canonical_ed25519(&e), round_trips, "{e:02x?}");
            }
        }
        assert!(!is_canonical_ed25519(&one));
        assert!(!is_canonical_ed25519(&minus_one_signed));
    }
}
