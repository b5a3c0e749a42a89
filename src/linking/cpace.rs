//! CPace, a balanced PAKE, instantiated as the `CPACE-RISTR255-SHA512`
//! cipher suite of draft-irtf-cfrg-cpace.
//!
//! Both parties know a low-entropy secret `PRS` (here: the one-time pairing
//! code), an optional channel identifier `CI` and an optional session
//! identifier `sid`. Each side sends one 32-byte share plus public associated
//! data `AD`, and both derive the same 64-byte intermediate session key
//! ([`Isk`]) exactly when `PRS`, `CI`, `sid` and both transcripts agree.
//!
//! Construction (H = SHA-512, block size 128 bytes, `lv_cat` = concatenation
//! of LEB128-length-prefixed strings):
//!
//! - `g = hash_to_ristretto255(H(lv_cat("CPaceRistretto255", PRS,
//!   zero_bytes(len_zpad), CI, sid)))`,
//!   `len_zpad = max(0, 128 - len(prepend_len(PRS)) - len(prepend_len(DSI)) - 1)`.
//! - `y` a fresh uniformly random scalar, share `Y = encode(y * g)`.
//! - `K = encode(y * decode(Y_peer))`, aborting if `Y_peer` does not decode
//!   or decodes to the identity, and if `K` is the identity.
//! - `ISK = H(lv_cat("CPaceRistretto255_ISK", sid, K) || transcript)`, with
//!   `transcript = lv_cat(Ya, ADa) || lv_cat(Yb, ADb)` (initiator-responder)
//!   or `"oc" || max(lv_cat(Ya, ADa), lv_cat(Yb, ADb)) || min(..)`
//!   (symmetric, lexicographic order).
//!
//! # Example
//!
//! ```
//! use multidevice::hazmat::cpace::CpaceStep;
//!
//! let mut rng = rand::rng();
//! let (prs, ci, sid) = (b"K7QM-2XPA", b"link:v1", b"fresh-session-id");
//!
//! let (alice, alice_share) = CpaceStep::start(&mut rng, prs, ci, sid, b"primary");
//! let (bob, bob_share) = CpaceStep::start(&mut rng, prs, ci, sid, b"companion");
//!
//! let alice_key = alice.finish_initiator(&bob_share, b"companion")?;
//! let bob_key = bob.finish_responder(&alice_share, b"primary")?;
//! assert_eq!(alice_key, bob_key);
//! # Ok::<(), multidevice::hazmat::cpace::CpaceError>(())
//! ```

use core::fmt;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rand_core::CryptoRng;
use sha2::{Digest, Sha512};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

/// Length in bytes of an encoded CPace share (a compressed ristretto255 point).
pub const SHARE_LEN: usize = 32;

/// Length in bytes of the intermediate session key.
pub const ISK_LEN: usize = 64;

/// Domain-separation identifier of the ristretto255 group environment.
const DSI: &[u8] = b"CPaceRistretto255";

/// `DSI || "_ISK"`, the first field of the ISK hash input.
const ISK_LABEL: &[u8] = b"CPaceRistretto255_ISK";

/// Prefix of the symmetric (ordered-concatenation) transcript.
#[cfg(any(test, feature = "test-support"))]
const ORDERED_CONCAT_TAG: &[u8] = b"oc";

/// SHA-512 input block size (`H.s_in_bytes`), which sizes the zero padding.
const SHA512_BLOCK_LEN: usize = 128;

/// Everything that can make a CPace run abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CpaceError {
    /// The received share does not have the length of an encoded point.
    #[error("CPace share has the wrong length: expected {expected} bytes, got {got}")]
    WrongLength {
        /// The required length, [`SHARE_LEN`].
        expected: usize,
        /// The length that was received.
        got: usize,
    },
    /// The received share is not a canonical ristretto255 encoding.
    #[error("CPace share is not a valid ristretto255 encoding")]
    InvalidShare,
    /// The received share encodes the identity element.
    #[error("CPace share encodes the identity element")]
    IdentityShare,
    /// The Diffie-Hellman result `K` is the identity element.
    #[error("CPace shared point is the identity element")]
    IdentityPoint,
    /// A caller-supplied scalar (hazmat entry points only) is zero or not
    /// canonically reduced.
    #[error("CPace scalar is zero or not canonical")]
    InvalidScalar,
}

/// The 64-byte intermediate session key output by CPace.
///
/// Feed it into a KDF before use; never use it directly as an application
/// key. Comparison is constant-time, the bytes are wiped on drop and `Debug`
/// does not print them.
pub struct Isk(Zeroizing<[u8; ISK_LEN]>);

impl Isk {
    /// The raw key bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; ISK_LEN] {
        &self.0
    }
}

impl ConstantTimeEq for Isk {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.as_slice().ct_eq(other.0.as_slice())
    }
}

impl PartialEq for Isk {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Isk {}

impl fmt::Debug for Isk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Isk(<redacted>)")
    }
}

/// The secret state of one party between sending its share and receiving the
/// peer's.
///
/// Consumed by exactly one `finish_*` call, so a scalar is never used twice.
/// The scalar is wiped on drop; the type is neither `Clone` nor printable.
pub struct CpaceStep {
    scalar: Zeroizing<Scalar>,
    sid: Vec<u8>,
    /// `lv_cat(own share, own AD)`: our half of the transcript.
    own_transcript_half: Vec<u8>,
}

impl fmt::Debug for CpaceStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpaceStep").finish_non_exhaustive()
    }
}

/// Which half of the transcript comes first.
#[derive(Clone, Copy)]
enum TranscriptOrder {
    OwnFirst,
    PeerFirst,
    #[cfg(any(test, feature = "test-support"))]
    Lexicographic,
}

impl CpaceStep {
    /// Starts a CPace run: samples a fresh scalar `y` and returns the secret
    /// state together with the share `Y = y * g` to send to the peer
    /// (alongside `ad`, which travels in clear).
    ///
    /// `prs` is the shared low-entropy secret, `ci` the channel identifier and
    /// `sid` the session identifier; the peer must use identical values.
    /// `ad` is this party's associated data; it is authenticated by the key.
    pub fn start<R: CryptoRng + ?Sized>(
        rng: &mut R,
        prs: &[u8],
        ci: &[u8],
        sid: &[u8],
        ad: &[u8],
    ) -> (Self, [u8; SHARE_LEN]) {
        // Uniform in [0, l). Zero has probability 2^-252; it would only yield
        // the identity share, which the peer rejects and for which our own K
        // is the identity, so it fails closed without a retry loop that a
        // broken RNG could spin forever.
        let scalar = Zeroizing::new(Scalar::random(rng));
        Self::with_scalar(scalar, prs, ci, sid, ad)
    }

    /// Deterministic variant of [`CpaceStep::start`] with a caller-chosen
    /// little-endian scalar. **Only for known-answer tests**: reusing or
    /// choosing scalars breaks the protocol.
    ///
    /// # Errors
    ///
    /// [`CpaceError::InvalidScalar`] if the scalar is zero or not reduced
    /// modulo the group order.
    #[cfg(any(test, feature = "test-support"))]
    pub fn hazmat_start_with_scalar(
        scalar_le: [u8; 32],
        prs: &[u8],
        ci: &[u8],
        sid: &[u8],
        ad: &[u8],
    ) -> Result<(Self, [u8; SHARE_LEN]), CpaceError> {
        let scalar = canonical_nonzero_scalar(scalar_le)?;
        Ok(Self::with_scalar(scalar, prs, ci, sid, ad))
    }

    fn with_scalar(
        scalar: Zeroizing<Scalar>,
        prs: &[u8],
        ci: &[u8],
        sid: &[u8],
        ad: &[u8],
    ) -> (Self, [u8; SHARE_LEN]) {
        let g = generator(prs, ci, sid);
        let share = scalar_mult(&g, &scalar);
        let mut own_transcript_half = Vec::with_capacity(transcript_half_len(ad.len()));
        push_lv(&mut own_transcript_half, &share);
        push_lv(&mut own_transcript_half, ad);
        let step = Self { scalar, sid: sid.to_vec(), own_transcript_half };
        (step, share)
    }

    /// The secret state, to keep a pending attempt in a store: the scalar (wiped on drop), the
    /// session id and the own transcript half.
    pub(crate) fn to_parts(&self) -> (Zeroizing<[u8; 32]>, &[u8], &[u8]) {
        (Zeroizing::new(self.scalar.to_bytes()), &self.sid, &self.own_transcript_half)
    }

    /// The state [`CpaceStep::to_parts`] gave, or `None` if the scalar is not canonical and
    /// non-zero.
    pub(crate) fn from_parts(
        scalar: [u8; 32],
        sid: Vec<u8>,
        own_transcript_half: Vec<u8>,
    ) -> Option<Self> {
        let scalar = canonical_nonzero_scalar(scalar).ok()?;
        Some(Self { scalar, sid, own_transcript_half })
    }

    /// Finishes the run as the initiator (party A, whose share was sent
    /// first): `transcript = lv_cat(Y_own, AD_own) || lv_cat(Y_peer, AD_peer)`.
    ///
    /// # Errors
    ///
    /// Aborts with a [`CpaceError`] if the peer's share has the wrong length,
    /// is not a valid encoding, encodes the identity, or yields an identity
    /// shared point.
    pub fn finish_initiator(self, peer_share: &[u8], peer_ad: &[u8]) -> Result<Isk, CpaceError> {
        self.finish(peer_share, peer_ad, TranscriptOrder::OwnFirst)
    }

    /// Finishes the run as the responder (party B, answering the
    /// initiator): `transcript = lv_cat(Y_peer, AD_peer) || lv_cat(Y_own, AD_own)`.
    ///
    /// # Errors
    ///
    /// As for [`CpaceStep::finish_initiator`].
    pub fn finish_responder(self, peer_share: &[u8], peer_ad: &[u8]) -> Result<Isk, CpaceError> {
        self.finish(peer_share, peer_ad, TranscriptOrder::PeerFirst)
    }

    /// Finishes the run in the symmetric setting, where neither side is
    /// designated initiator: the transcript is the ordered concatenation
    /// `"oc" || max(lv_cat(Ya, ADa), lv_cat(Yb, ADb)) || min(..)`, so both
    /// sides compute it identically whatever the message order.
    ///
    /// # Errors
    ///
    /// As for [`CpaceStep::finish_initiator`].
    ///
    /// Only for known-answer tests (the `test-support` feature): the pairing flow uses the
    /// initiator-responder order.
    #[cfg(any(test, feature = "test-support"))]
    pub fn finish_symmetric(self, peer_share: &[u8], peer_ad: &[u8]) -> Result<Isk, CpaceError> {
        self.finish(peer_share, peer_ad, TranscriptOrder::Lexicographic)
    }

    fn finish(
        self,
        peer_share: &[u8],
        peer_ad: &[u8],
        order: TranscriptOrder,
    ) -> Result<Isk, CpaceError> {
        let peer_point = decode_share(peer_share)?;
        let k = shared_point(&self.scalar, &peer_point)?;

        let mut peer_transcript_half = Vec::with_capacity(transcript_half_len(peer_ad.len()));
        push_lv(&mut peer_transcript_half, peer_share);
        push_lv(&mut peer_transcript_half, peer_ad);

        let own = self.own_transcript_half.as_slice();
        let peer = peer_transcript_half.as_slice();
        let (tag, first, second): (&[u8], &[u8], &[u8]) = match order {
            TranscriptOrder::OwnFirst => (b"", own, peer),
            TranscriptOrder::PeerFirst => (b"", peer, own),
            // Slice `Ord` is the draft's lexicographic order (a proper prefix
            // sorts first); on a tie both orders give the same bytes.
            #[cfg(any(test, feature = "test-support"))]
            TranscriptOrder::Lexicographic if own > peer => (ORDERED_CONCAT_TAG, own, peer),
            #[cfg(any(test, feature = "test-support"))]
            TranscriptOrder::Lexicographic => (ORDERED_CONCAT_TAG, peer, own),
        };

        let mut hasher = Sha512::new();
        hash_lv(&mut hasher, ISK_LABEL);
        hash_lv(&mut hasher, &self.sid);
        hash_lv(&mut hasher, k.as_slice());
        hasher.update(tag);
        hasher.update(first);
        hasher.update(second);
        Ok(Isk(finalize_zeroizing(hasher)))
    }
}

/// Computes the password-derived generator
/// `g = hash_to_ristretto255(SHA-512(generator_string(DSI, PRS, CI, sid)))`.
///
/// The result depends on the password, so it is returned wrapped for wiping:
/// anyone holding `g` can test password guesses offline.
#[must_use]
pub fn generator(prs: &[u8], ci: &[u8], sid: &[u8]) -> Zeroizing<RistrettoPoint> {
    let padding = vec![0u8; zero_padding_len(prs.len())];
    let mut hasher = Sha512::new();
    hash_lv(&mut hasher, DSI);
    hash_lv(&mut hasher, prs);
    hash_lv(&mut hasher, &padding);
    hash_lv(&mut hasher, ci);
    hash_lv(&mut hasher, sid);
    let generator_hash = finalize_zeroizing(hasher);
    Zeroizing::new(RistrettoPoint::from_uniform_bytes(&generator_hash))
}

/// Decodes a received share, rejecting wrong lengths, non-canonical or
/// invalid encodings and the identity element.
///
/// # Errors
///
/// [`CpaceError::WrongLength`], [`CpaceError::InvalidShare`] or
/// [`CpaceError::IdentityShare`].
pub fn decode_share(share: &[u8]) -> Result<RistrettoPoint, CpaceError> {
    let compressed = CompressedRistretto::from_slice(share)
        .map_err(|_| CpaceError::WrongLength { expected: SHARE_LEN, got: share.len() })?;
    let point = compressed.decompress().ok_or(CpaceError::InvalidShare)?;
    if point.is_identity() {
        return Err(CpaceError::IdentityShare);
    }
    Ok(point)
}

/// The draft's `G.scalar_mult_vfy(y, X)` as an error-returning function:
/// decodes `encoded_point`, multiplies it by the little-endian scalar and
/// returns the encoded result. **Only for known-answer tests.**
///
/// # Errors
///
/// Any [`decode_share`] error, [`CpaceError::InvalidScalar`] for a zero or
/// unreduced scalar, and [`CpaceError::IdentityPoint`] for an identity result.
#[cfg(any(test, feature = "test-support"))]
pub fn hazmat_scalar_mult_vfy(
    scalar_le: [u8; 32],
    encoded_point: &[u8],
) -> Result<Zeroizing<[u8; SHARE_LEN]>, CpaceError> {
    let scalar = canonical_nonzero_scalar(scalar_le)?;
    let point = decode_share(encoded_point)?;
    shared_point(&scalar, &point)
}

/// The draft's `G.scalar_mult(y, g) = encode(y * g)`; by reference so no
/// copy of the secret scalar is left behind.
fn scalar_mult(point: &RistrettoPoint, scalar: &Scalar) -> [u8; SHARE_LEN] {
    (point * scalar).compress().to_bytes()
}

/// `K = encode(y * Y_peer)`, aborting on the identity as the draft requires.
fn shared_point(
    scalar: &Scalar,
    peer_point: &RistrettoPoint,
) -> Result<Zeroizing<[u8; SHARE_LEN]>, CpaceError> {
    let k = Zeroizing::new(peer_point * scalar);
    if k.is_identity() {
        return Err(CpaceError::IdentityPoint);
    }
    Ok(Zeroizing::new(k.compress().to_bytes()))
}

fn canonical_nonzero_scalar(scalar_le: [u8; 32]) -> Result<Zeroizing<Scalar>, CpaceError> {
    let scalar: Option<Scalar> = Scalar::from_canonical_bytes(scalar_le).into();
    let scalar = Zeroizing::new(scalar.ok_or(CpaceError::InvalidScalar)?);
    if bool::from(scalar.ct_eq(&Scalar::ZERO)) {
        return Err(CpaceError::InvalidScalar);
    }
    Ok(scalar)
}

/// Zero padding that makes `lv(DSI) || lv(PRS) || lv(padding)` fill the
/// first hash block, so the block holding the password has a fixed shape.
fn zero_padding_len(prs_len: usize) -> usize {
    SHA512_BLOCK_LEN
        .saturating_sub(prepended_len(prs_len))
        .saturating_sub(prepended_len(DSI.len()))
        .saturating_sub(1)
}

/// `len(lv_cat(Y, AD))` for a share `Y` and associated data of `ad_len` bytes.
fn transcript_half_len(ad_len: usize) -> usize {
    prepended_len(SHARE_LEN).saturating_add(prepended_len(ad_len))
}

/// `len(prepend_len(x))` for a string `x` of length `len`.
fn prepended_len(len: usize) -> usize {
    let mut prefix_len = 0usize;
    leb128(len, |_| prefix_len += 1);
    prefix_len.saturating_add(len)
}

/// Emits the unsigned LEB128 encoding of `value`, least significant group
/// first.
fn leb128(mut value: usize, mut emit: impl FnMut(u8)) {
    loop {
        let [low_seven_bits, ..] = (value & 0x7f).to_le_bytes();
        value >>= 7;
        if value == 0 {
            emit(low_seven_bits);
            return;
        }
        emit(low_seven_bits | 0x80);
    }
}

/// Feeds `prepend_len(data)` into the hash.
fn hash_lv(hasher: &mut Sha512, data: &[u8]) {
    leb128(data.len(), |byte| hasher.update([byte]));
    hasher.update(data);
}

/// Appends `prepend_len(data)` to `out`.
fn push_lv(out: &mut Vec<u8>, data: &[u8]) {
    leb128(data.len(), |byte| out.push(byte));
    out.extend_from_slice(data);
}

fn finalize_zeroizing(hasher: Sha512) -> Zeroizing<[u8; 64]> {
    let mut out = Zeroizing::new([0u8; 64]);
    hasher.finalize_into((&mut *out).into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn lv_cat(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            push_lv(&mut out, part);
        }
        out
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x00C0_FFEE)
    }

    #[test]
    fn isk_label_is_dsi_with_suffix() {
        assert_eq!(ISK_LABEL, [DSI, b"_ISK"].concat().as_slice());
    }

    #[test]
    fn prepend_len_matches_draft_vectors() {
        assert_eq!(lv_cat(&[b""]), [0x00]);
        assert_eq!(lv_cat(&[b"1234"]), hex("0431323334"));
        let short: Vec<u8> = (0..127).collect();
        let encoded = lv_cat(&[&short]);
        assert_eq!(encoded.len(), 128);
        assert_eq!(encoded[0], 0x7f);
        let long: Vec<u8> = (0..128).collect();
        let encoded = lv_cat(&[&long]);
        assert_eq!(encoded.len(), 130);
        assert_eq!(&encoded[..2], &[0x80, 0x01]);
        assert_eq!(prepended_len(128), 130);
        assert_eq!(prepended_len(300), 302);
        assert_eq!(lv_cat(&[b"1234", b"5", b"", b"6789"]), hex("04313233340135000436373839"));
    }

    #[test]
    fn leb128_handles_large_values() {
        let mut out = Vec::new();
        leb128(usize::MAX, |b| out.push(b));
        assert_eq!(out.len(), usize::BITS.div_ceil(7) as usize);
        assert_eq!(*out.last().unwrap() & 0x80, 0);
        let mut out = Vec::new();
        leb128(624_485, |b| out.push(b));
        assert_eq!(out, [0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn padding_fills_first_block() {
        // lv(DSI) = 18 bytes, lv("Password") = 9 bytes, lv(zpad) prefix = 1.
        assert_eq!(zero_padding_len(8), 128 - 18 - 9 - 1);
        assert_eq!(zero_padding_len(200), 0);
        assert_eq!(zero_padding_len(usize::MAX - 1), 0);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[derive(Clone, Copy)]
    enum Roles {
        InitiatorResponder,
        Symmetric,
    }

    /// One honest run where A and B may hold different passwords.
    fn run(prs_a: &[u8], prs_b: &[u8], roles: Roles) -> (Isk, Isk) {
        let mut rng = rng();
        let (a, ya) = CpaceStep::start(&mut rng, prs_a, b"ci", b"sid-0123", b"ADa");
        let (b, yb) = CpaceStep::start(&mut rng, prs_b, b"ci", b"sid-0123", b"ADb");
        match roles {
            Roles::InitiatorResponder => {
                (a.finish_initiator(&yb, b"ADb").unwrap(), b.finish_responder(&ya, b"ADa").unwrap())
            }
            Roles::Symmetric => {
                (a.finish_symmetric(&yb, b"ADb").unwrap(), b.finish_symmetric(&ya, b"ADa").unwrap())
            }
        }
    }

    #[test]
    fn honest_parties_agree_initiator_responder() {
        let (ka, kb) = run(b"ABCD1234", b"ABCD1234", Roles::InitiatorResponder);
        assert_eq!(ka, kb);
        assert_ne!(ka.as_bytes(), &[0u8; 64]);
    }

    #[test]
    fn honest_parties_agree_symmetric() {
        let (ka, kb) = run(b"ABCD1234", b"ABCD1234", Roles::Symmetric);
        assert_eq!(ka, kb);
    }

    #[test]
    fn symmetric_and_ir_keys_differ() {
        let (ir, _) = run(b"pw", b"pw", Roles::InitiatorResponder);
        let (sy, _) = run(b"pw", b"pw", Roles::Symmetric);
        assert_ne!(ir, sy);
    }

    #[test]
    fn different_passwords_give_different_keys() {
        let (ka, kb) = run(b"ABCD1234", b"ABCD1235", Roles::InitiatorResponder);
        assert_ne!(ka, kb);
        let (ka, kb) = run(b"ABCD1234", b"ABCD1235", Roles::Symmetric);
        assert_ne!(ka, kb);
    }

    #[test]
    fn mismatched_roles_or_ad_give_different_keys() {
        let mut rng = rng();
        let (a, ya) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid", b"ADa");
        let (b, yb) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid", b"ADb");
        // Both claim to be the initiator.
        let ka = a.finish_initiator(&yb, b"ADb").unwrap();
        let kb = b.finish_initiator(&ya, b"ADa").unwrap();
        assert_ne!(ka, kb);

        let (a, ya) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid", b"ADa");
        let (b, yb) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid", b"ADb");
        let ka = a.finish_initiator(&yb, b"ADb").unwrap();
        let kb = b.finish_responder(&ya, b"tampered").unwrap();
        assert_ne!(ka, kb);
    }

    #[test]
    fn different_sid_or_ci_give_different_keys() {
        let mut rng = rng();
        let (a, ya) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid-1", b"");
        let (b, yb) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid-2", b"");
        assert_ne!(a.finish_initiator(&yb, b"").unwrap(), b.finish_responder(&ya, b"").unwrap());
        let (a, ya) = CpaceStep::start(&mut rng, b"pw", b"ci-1", b"sid", b"");
        let (b, yb) = CpaceStep::start(&mut rng, b"pw", b"ci-2", b"sid", b"");
        assert_ne!(a.finish_initiator(&yb, b"").unwrap(), b.finish_responder(&ya, b"").unwrap());
    }

    #[test]
    fn identity_share_is_rejected() {
        let mut rng = rng();
        let (a, _) = CpaceStep::start(&mut rng, b"pw", b"", b"", b"");
        assert_eq!(a.finish_initiator(&[0u8; 32], b"").unwrap_err(), CpaceError::IdentityShare);
    }

    #[test]
    fn invalid_shares_are_rejected_with_typed_errors() {
        assert_eq!(
            decode_share(&[1u8; 31]).unwrap_err(),
            CpaceError::WrongLength { expected: 32, got: 31 }
        );
        assert_eq!(
            decode_share(&[]).unwrap_err(),
            CpaceError::WrongLength { expected: 32, got: 0 }
        );
        assert_eq!(
            decode_share(&[0u8; 33]).unwrap_err(),
            CpaceError::WrongLength { expected: 32, got: 33 }
        );
        // Odd field element (negative): never a canonical ristretto encoding.
        let mut odd = [0u8; 32];
        odd[0] = 1;
        assert_eq!(decode_share(&odd).unwrap_err(), CpaceError::InvalidShare);
        // 2^255 - 1: non-canonical field element.
        assert_eq!(decode_share(&[0xff; 32]).unwrap_err(), CpaceError::InvalidShare);
        let mut rng = rng();
        let (a, _) = CpaceStep::start(&mut rng, b"pw", b"", b"", b"");
        assert_eq!(a.finish_responder(&[0xff; 32], b"").unwrap_err(), CpaceError::InvalidShare);
    }

    #[test]
    fn flipped_share_bit_is_rejected_or_changes_key() {
        let mut rng = rng();
        let (_, yb) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid", b"");
        let mut rejected = 0;
        let mut accepted = 0;
        for bit in 0..256 {
            let mut tampered = yb;
            tampered[bit / 8] ^= 1 << (bit % 8);
            // Decoding is what `finish_*` does first; only run the (slow)
            // full protocol for flips that still decode.
            if let Err(err) = decode_share(&tampered) {
                assert_eq!(err, CpaceError::InvalidShare, "bit {bit}");
                rejected += 1;
                continue;
            }
            accepted += 1;
            let (a, ya) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid", b"");
            let (b, yb) = CpaceStep::start(&mut rng, b"pw", b"ci", b"sid", b"");
            let mut tampered = yb;
            tampered[bit / 8] ^= 1 << (bit % 8);
            let kb = b.finish_responder(&ya, b"").unwrap();
            match a.finish_initiator(&tampered, b"") {
                Ok(ka) => assert_ne!(ka, kb, "bit {bit}"),
                Err(err) => assert_eq!(err, CpaceError::InvalidShare, "bit {bit}"),
            }
        }
        assert_eq!(rejected + accepted, 256);
        assert!(rejected > 0);
    }

    #[test]
    fn hazmat_scalar_validation() {
        assert_eq!(
            CpaceStep::hazmat_start_with_scalar([0u8; 32], b"pw", b"", b"", b"").unwrap_err(),
            CpaceError::InvalidScalar
        );
        assert_eq!(
            CpaceStep::hazmat_start_with_scalar([0xff; 32], b"pw", b"", b"", b"").unwrap_err(),
            CpaceError::InvalidScalar
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        let (_, share) = CpaceStep::hazmat_start_with_scalar(one, b"pw", b"", b"", b"").unwrap();
        assert_eq!(share, generator(b"pw", b"", b"").compress().to_bytes());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut rng = rng();
        let (a, ya) = CpaceStep::start(&mut rng, b"pw", b"", b"", b"");
        let (b, yb) = CpaceStep::start(&mut rng, b"pw", b"", b"", b"");
        assert_eq!(format!("{a:?}"), "CpaceStep { .. }");
        let isk = a.finish_initiator(&yb, b"").unwrap();
        let _ = b.finish_responder(&ya, b"").unwrap();
        let shown = format!("{isk:?}");
        assert_eq!(shown, "Isk(<redacted>)");
    }
}
