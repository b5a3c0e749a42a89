//! docs/PROTOCOL.md, computed from the primitive crates alone: nothing here calls into
//! `multidevice`. The generators check every byte the crate produces against these functions.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// Every label of §1 the vectors use.
pub(crate) mod label {
    pub(crate) const SIG_IDENTITY_AGREEMENT: &[u8] = b"multidevice/v1/sig/identity-agreement-key";
    pub(crate) const SIG_SIGNED_PREKEY: &[u8] = b"multidevice/v1/sig/signed-prekey";
    pub(crate) const SIG_ACCOUNT: &[u8] = b"multidevice/v1/sig/account-signature";
    pub(crate) const SIG_DEVICE: &[u8] = b"multidevice/v1/sig/device-signature";
    pub(crate) const SIG_DEVICE_LIST: &[u8] = b"multidevice/v1/sig/device-list";
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
    pub(crate) const KDF_BODY: &[u8] = b"multidevice/v1/kdf/body";
    pub(crate) const FANOUT_BODY_AAD: &[u8] = b"multidevice/v1/fanout-body";
    pub(crate) const KDF_X3DH: &[u8] = b"multidevice/v1/kdf/x3dh";
    pub(crate) const KDF_ROOT: &[u8] = b"multidevice/v1/kdf/root";
    pub(crate) const HASH_AD: &[u8] = b"multidevice/v1/hash/associated-data";
    pub(crate) const HASH_SESSION_ID: &[u8] = b"multidevice/v1/hash/session-id";
    pub(crate) const HASH_FINGERPRINT: &[u8] = b"multidevice/v1/hash/fingerprint";
    pub(crate) const HASH_GROUP_MEMBERSHIP: &[u8] = b"multidevice/v1/hash/group-membership";
    pub(crate) const SIG_GROUP_MESSAGE: &[u8] = b"multidevice/v1/sig/group-message";
    pub(crate) const SIG_RETRY_REQUEST: &[u8] = b"multidevice/v1/sig/retry-request";
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `label || 0x00 || parts`: what every signature, labelled hash and labelled MAC covers.
pub(crate) fn labelled(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = label.to_vec();
    out.push(0);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `H(label, x...) = SHA-256(label || 0x00 || x...)`.
pub(crate) fn h(label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    sha256(&labelled(label, parts))
}

/// Ed25519 (RFC 8032) over `message` with the key whose seed is `seed`.
pub(crate) fn sign(seed: &[u8; 32], message: &[u8]) -> [u8; 64] {
    SigningKey::from_bytes(seed).sign(message).to_bytes()
}

/// ed25519-dalek's `verify_strict` of `signature` on `message` under `public` (§0 rules 2 to 6;
/// the keys the vectors verify under are canonical, rule 1).
pub(crate) fn verify_strict(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(public)
        .is_ok_and(|key| key.verify_strict(message, &Signature::from_bytes(signature)).is_ok())
}

pub(crate) fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

pub(crate) fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

/// `DH(a, B)`: X25519, refusing the all-zero result as §0 requires.
pub(crate) fn dh(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
    assert!(public[31] & 0x80 == 0, "non-canonical X25519 key");
    let shared = x25519_dalek::x25519(*secret, *public);
    assert_ne!(shared, [0u8; 32], "non-contributory X25519 result");
    shared
}

pub(crate) fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out).unwrap();
    out
}

pub(crate) fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// AES-256-GCM: `ciphertext || tag`.
pub(crate) fn seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(key.into())
        .encrypt(&Nonce::from(*nonce), Payload { msg: plaintext, aad })
        .unwrap()
}

pub(crate) fn split32(bytes: &[u8]) -> Vec<[u8; 32]> {
    bytes.chunks(32).map(|c| c.try_into().unwrap()).collect()
}

pub(crate) fn be32(value: u32) -> [u8; 4] {
    value.to_be_bytes()
}

pub(crate) fn be64(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// `DeviceAddress = account id (u64) || device id (u32)`.
pub(crate) fn address(account: u64, device: u32) -> Vec<u8> {
    cat(&[&be64(account), &be32(device)])
}

/// A device identity from its two secrets (§2).
pub(crate) struct Identity {
    pub(crate) signing_seed: [u8; 32],
    pub(crate) agreement_secret: [u8; 32],
    pub(crate) iks: [u8; 32],
    pub(crate) ika: [u8; 32],
    /// `label || 0x00 || IKa_pub`: what `sig_a` signs.
    pub(crate) sig_a_message: Vec<u8>,
    pub(crate) sig_a: [u8; 64],
    /// `PublicIdentity = IKs_pub || IKa_pub || sig_a`.
    pub(crate) public: Vec<u8>,
    pub(crate) fingerprint: [u8; 32],
}

impl Identity {
    pub(crate) fn new(signing_seed: [u8; 32], agreement_secret: [u8; 32]) -> Self {
        let iks = ed25519_public(&signing_seed);
        let ika = x25519_public(&agreement_secret);
        let sig_a_message = labelled(label::SIG_IDENTITY_AGREEMENT, &[&ika]);
        let sig_a = sign(&signing_seed, &sig_a_message);
        let public = cat(&[&iks, &ika, &sig_a]);
        let fingerprint = h(label::HASH_FINGERPRINT, &[&iks, &ika]);
        Self { signing_seed, agreement_secret, iks, ika, sig_a_message, sig_a, public, fingerprint }
    }
}

/// `SignedPrekeyPublic = id || SPK_pub || sig` and the message `sig` signs (§3).
pub(crate) fn signed_prekey(identity: &Identity, id: u32, secret: &[u8; 32]) -> (Vec<u8>, Vec<u8>) {
    let public = x25519_public(secret);
    let message = labelled(label::SIG_SIGNED_PREKEY, &[&be32(id), &public]);
    let signature = sign(&identity.signing_seed, &message);
    (message.clone(), cat(&[&be32(id), &public, &signature]))
}

/// The session setup of §4 from the initiator's side.
pub(crate) struct Setup {
    pub(crate) dh: Vec<[u8; 32]>,
    pub(crate) ad_input: Vec<u8>,
    pub(crate) ad: [u8; 32],
    pub(crate) ikm: Vec<u8>,
    pub(crate) info: Vec<u8>,
    pub(crate) root_key: [u8; 32],
    pub(crate) chain_key: [u8; 32],
    pub(crate) session_id: [u8; 16],
}

/// Initiator `a` (agreement secret, address, public identity) with base key secret `ek` towards
/// responder `b` (address, public identity, IKa, SPK, OPK).
#[allow(clippy::too_many_arguments)]
pub(crate) fn setup(
    a_agreement: &[u8; 32],
    a_address: &[u8],
    a_public: &[u8],
    ek: &[u8; 32],
    b_address: &[u8],
    b_public: &[u8],
    b_ika: &[u8; 32],
    b_spk: &[u8; 32],
    b_opk: Option<&[u8; 32]>,
) -> Setup {
    let mut dh_values = vec![dh(a_agreement, b_spk), dh(ek, b_ika), dh(ek, b_spk)];
    if let Some(opk) = b_opk {
        dh_values.push(dh(ek, opk));
    }
    let ad_input = cat(&[a_address, a_public, b_address, b_public]);
    let ad = h(label::HASH_AD, &[&ad_input]);
    let mut ikm = vec![0xff; 32];
    for value in &dh_values {
        ikm.extend_from_slice(value);
    }
    let info = cat(&[label::KDF_X3DH, &ad]);
    let okm = split32(&hkdf(&[0u8; 32], &ikm, &info, 64));
    let session_id = h(label::HASH_SESSION_ID, &[&x25519_public(ek)])[..16].try_into().unwrap();
    Setup {
        dh: dh_values,
        ad_input,
        ad,
        ikm,
        info,
        root_key: okm[0],
        chain_key: okm[1],
        session_id,
    }
}

/// The responder's DH values of §4, from its own secrets.
pub(crate) fn responder_dh(
    b_agreement: &[u8; 32],
    spk: &[u8; 32],
    opk: Option<&[u8; 32]>,
    a_ika: &[u8; 32],
    ek_pub: &[u8; 32],
) -> Vec<[u8; 32]> {
    let mut out = vec![dh(spk, a_ika), dh(b_agreement, ek_pub), dh(spk, ek_pub)];
    if let Some(opk) = opk {
        out.push(dh(opk, ek_pub));
    }
    out
}

/// Chain step of §5: `(MK, CK')`.
pub(crate) fn chain_step(chain_key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (hmac(chain_key, &[0x01]), hmac(chain_key, &[0x02]))
}

/// Root step of §5: `(RK', CK_new)`.
pub(crate) fn root_step(root_key: &[u8; 32], dh_output: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let okm = split32(&hkdf(root_key, dh_output, label::KDF_ROOT, 64));
    (okm[0], okm[1])
}

/// `RatchetHeader` of §6.
pub(crate) fn header(
    session_id: &[u8; 16],
    ratchet_key: &[u8; 32],
    counter: u32,
    previous_counter: u32,
    nonce: &[u8; 12],
) -> Vec<u8> {
    cat(&[session_id, ratchet_key, &be32(counter), &be32(previous_counter), nonce])
}

/// `PrekeyFields` of §6.
pub(crate) fn prekey_fields(
    identity: &[u8],
    base_key: &[u8; 32],
    spk_id: u32,
    opk_id: Option<u32>,
) -> Vec<u8> {
    let opk = match opk_id {
        Some(id) => cat(&[&[1], &be32(id)]),
        None => vec![0],
    };
    cat(&[identity, base_key, &be32(spk_id), &opk])
}

/// The bytes before the ciphertext of a session message (§6): the authenticated prefix.
pub(crate) fn message_prefix(
    kind: u8,
    sender: &[u8],
    recipient: &[u8],
    prekey: Option<&[u8]>,
    header: &[u8],
) -> Vec<u8> {
    let message_type = if prekey.is_some() { 0x02 } else { 0x01 };
    cat(&[&[0x01, message_type, kind], sender, recipient, prekey.unwrap_or_default(), header])
}

/// `ListBody` of §8.
pub(crate) fn list_body(
    account: u64,
    account_identity: &[u8],
    version: u64,
    issued_at: u64,
    previous_digest: &[u8; 32],
    entries: &[(u32, u32, [u8; 32])],
) -> Vec<u8> {
    let mut out = cat(&[
        &[0x01, 0x20],
        &be64(account),
        account_identity,
        &be64(version),
        &be64(issued_at),
        previous_digest,
        &[u8::try_from(entries.len()).unwrap()],
    ]);
    for (device, key_index, fingerprint) in entries {
        out.extend_from_slice(&cat(&[&be32(*device), &be32(*key_index), fingerprint]));
    }
    out
}

/// `LinkingMetadata` of §8.
pub(crate) fn linking_metadata(account: u64, device: u32, key_index: u32, time: u64) -> Vec<u8> {
    cat(&[&be64(account), &be32(device), &be32(key_index), &be64(time)])
}

/// RFC 4648 base32, upper case, no padding.
pub(crate) fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for chunk in bytes.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let bits = block.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let symbols = (chunk.len() * 8).div_ceil(5);
        for i in 0..symbols {
            let index = (bits >> (35 - 5 * i)) & 31;
            out.push(char::from(ALPHABET[usize::try_from(index).unwrap()]));
        }
    }
    out
}

/// LEB128 of a length, as draft-irtf-cfrg-cpace's `prepend_len` writes it.
fn leb128(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = u8::try_from(value & 0x7f).unwrap();
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// `prepend_len(x) = leb128(len(x)) || x`.
pub(crate) fn prepend_len(bytes: &[u8]) -> Vec<u8> {
    cat(&[&leb128(bytes.len()), bytes])
}

/// `lv_cat(x...)`.
pub(crate) fn lv_cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| prepend_len(p)).collect()
}

/// CPace-ristretto255-SHA512 (draft-irtf-cfrg-cpace), initiator-responder: the values one run
/// computes.
pub(crate) struct Cpace {
    pub(crate) generator_string: Vec<u8>,
    pub(crate) generator_hash: [u8; 64],
    pub(crate) generator: [u8; 32],
}

pub(crate) const CPACE_DSI: &[u8] = b"CPaceRistretto255";

impl Cpace {
    pub(crate) fn new(prs: &[u8], ci: &[u8], sid: &[u8]) -> Self {
        // len_zpad = max(0, s_in_bytes - len(prepend_len(PRS)) - len(prepend_len(DSI)) - 1)
        let zpad =
            128usize.saturating_sub(prepend_len(prs).len() + prepend_len(CPACE_DSI).len() + 1);
        let generator_string = lv_cat(&[CPACE_DSI, prs, &vec![0u8; zpad], ci, sid]);
        let generator_hash: [u8; 64] = Sha512::digest(&generator_string).into();
        let generator = RistrettoPoint::from_uniform_bytes(&generator_hash).compress().to_bytes();
        Self { generator_string, generator_hash, generator }
    }

    /// `Y = y * g`, with `y` reduced from 64 uniform bytes.
    pub(crate) fn share(&self, scalar: &Scalar) -> [u8; 32] {
        (point(&self.generator) * scalar).compress().to_bytes()
    }
}

pub(crate) fn scalar_from_wide(bytes: &[u8]) -> Scalar {
    Scalar::from_bytes_mod_order_wide(&bytes.try_into().unwrap())
}

fn point(bytes: &[u8; 32]) -> RistrettoPoint {
    CompressedRistretto(*bytes).decompress().expect("a valid ristretto255 encoding")
}

/// `K = y * Y_peer`.
pub(crate) fn cpace_k(scalar: &Scalar, peer: &[u8; 32]) -> [u8; 32] {
    (point(peer) * scalar).compress().to_bytes()
}

/// The ISK hash input, initiator-responder order.
pub(crate) fn isk_input(
    sid: &[u8],
    k: &[u8; 32],
    ya: &[u8],
    ada: &[u8],
    yb: &[u8],
    adb: &[u8],
) -> Vec<u8> {
    cat(&[&lv_cat(&[b"CPaceRistretto255_ISK", sid, k]), &lv_cat(&[ya, ada]), &lv_cat(&[yb, adb])])
}

pub(crate) fn sha512(bytes: &[u8]) -> [u8; 64] {
    Sha512::digest(bytes).into()
}

/// One half of a security code (§8): `d_0`, `d_1`, `d_1024` and the 30 digits.
pub(crate) fn security_code_half(
    account: u64,
    iks: &[u8; 32],
) -> ([u8; 32], [u8; 32], [u8; 32], String) {
    let d0 = h(label::HASH_SECURITY_CODE, &[&be64(account), iks]);
    let mut digest = d0;
    let mut d1 = [0u8; 32];
    for round in 0..1024 {
        digest = sha256(&cat(&[&digest, iks]));
        if round == 0 {
            d1 = digest;
        }
    }
    let digits = digest[..30]
        .chunks(5)
        .map(|chunk| {
            let value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", value % 100_000)
        })
        .collect();
    (d0, d1, digest, digits)
}

/// The membership digest's input (§20): `group id || count (u16) || account ids (u64 each)`,
/// the distinct accounts in ascending order.
pub(crate) fn group_membership_input(group: &[u8; 16], members: &[u64]) -> Vec<u8> {
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup();
    let mut out = cat(&[group, &u16::try_from(members.len()).unwrap().to_be_bytes()]);
    for account in members {
        out.extend_from_slice(&be64(account));
    }
    out
}

/// A sender-key distribution's content (§20): `group id || key id (u32) || iteration (u32) ||
/// chain key || signing public key`, 88 bytes.
pub(crate) fn group_distribution(
    group: &[u8; 16],
    key_id: u32,
    iteration: u32,
    chain_key: &[u8; 32],
    signing_public: &[u8; 32],
) -> Vec<u8> {
    cat(&[group, &be32(key_id), &be32(iteration), chain_key, signing_public])
}

/// A group message's header (§20), the AEAD's associated data: `0x01 || 0x50 || group id ||
/// sender || key id || iteration || membership digest || nonce`.
pub(crate) fn group_header(
    group: &[u8; 16],
    sender: &[u8],
    key_id: u32,
    iteration: u32,
    membership: &[u8; 32],
    nonce: &[u8; 12],
) -> Vec<u8> {
    cat(&[&[0x01, 0x50], group, sender, &be32(key_id), &be32(iteration), membership, nonce])
}

/// The bytes a retry request's signature covers (§21): `0x01 || 0x60 || requester || sender ||
/// message ref || count (u8) || reason (u8) || issued at (u64) || SignedPrekeyPublic (100)`.
pub(crate) fn retry_request_signed(
    requester: &[u8],
    sender: &[u8],
    message_ref: &[u8; 16],
    count: u8,
    reason: u8,
    issued_at: u64,
    signed_prekey: &[u8],
) -> Vec<u8> {
    cat(&[
        &[0x01, 0x60],
        requester,
        sender,
        message_ref,
        &[count, reason],
        &be64(issued_at),
        signed_prekey,
    ])
}
