//! Entry points for this crate's own tests, fuzz targets and test vectors, behind the
//! `test-support` feature. **Not part of the API**: they expose internals (a body opened under
//! any key, parsers fed piecewise) that no app needs and that can change in any release.

use zeroize::Zeroizing;

use crate::crypto::Secret32;
use crate::error::ReceiveError;

pub use crate::history::fuzz_record_stream;

/// Seals `payload` into a fan-out body under the content key `key`, exactly as
/// `encrypt_fanout` does for payloads above the inline threshold.
pub fn seal_fanout_body(key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut secret = Secret32::new([0u8; 32]);
    secret.as_mut_bytes().copy_from_slice(key);
    crate::fanout::seal_body(&secret, payload)
}

/// Opens a fan-out body under the content key `key` and body digest `digest`, exactly as
/// `Device::receive` does: digest, then key commitment, then AES-GCM.
pub fn open_fanout_body(
    key: &[u8; 32],
    digest: &[u8; 32],
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ReceiveError> {
    crate::fanout::open_body(key, digest, Some(body))
}

/// A genuine blob of `plaintext` under the fixed key that the `blob_chunks` fuzz target
/// decrypts its input with: corpus seeds that reach the chunk decoder past the key commitment.
pub fn fuzz_seed_blob(plaintext: &[u8]) -> Vec<u8> {
    crate::blob::seed_blob(plaintext)
}

/// Signs a device list with `primary`'s identity, naming exactly `companions` in the order
/// given, with any version, issue time and previous digest: lists the crate's own API never
/// signs (two entries with one identity, unsorted entries, ...), to test what verification
/// refuses. `primary` must be a primary.
pub fn sign_device_list(
    primary: &crate::Device,
    version: u64,
    issued_at: crate::Timestamp,
    previous_digest: [u8; 32],
    companions: Vec<crate::SignedDeviceIdentity>,
) -> crate::SignedDeviceList {
    crate::SignedDeviceList::sign(
        &primary.identity,
        primary.address.account,
        version,
        issued_at,
        previous_digest,
        companions,
    )
}

/// The primary's account signature over `metadata` and `companion`: an approval for any
/// metadata the primary's own API would never assign.
pub fn account_sign(
    primary: &crate::Device,
    metadata: crate::LinkingMetadata,
    companion: &crate::PublicIdentity,
) -> [u8; 64] {
    crate::SignedDeviceIdentity::account_sign(&primary.identity, metadata, companion)
}

// Secrets for the transcript vectors (tests/transcripts.rs). The vectors re-derive every
// intermediate value from docs/PROTOCOL.md with the primitive crates alone, starting from the
// secret keys the crate used; these read-only views hand those keys out. Each returns copies
// in wiping buffers and changes nothing.

/// The secret halves of a device identity (docs/PROTOCOL.md §2).
pub struct IdentitySecrets {
    /// The Ed25519 secret key seed (RFC 8032 §5.1.5) of `IKs`.
    pub signing_seed: Zeroizing<[u8; 32]>,
    /// The X25519 secret key of `IKa`, as drawn (RFC 7748 clamps it when used).
    pub agreement_secret: Zeroizing<[u8; 32]>,
}

/// The identity secret keys of `device`.
pub fn identity_secrets(device: &crate::Device) -> IdentitySecrets {
    let agreement = Secret32::from(device.identity.agreement().clone());
    IdentitySecrets {
        signing_seed: Zeroizing::new(device.identity.signing_key().to_bytes()),
        agreement_secret: Zeroizing::new(*agreement.as_bytes()),
    }
}

/// The X25519 secret key of `device`'s signed prekey `id`, if it holds it (the current one, or
/// the previous one within its grace period by the device's clock mark).
pub fn signed_prekey_secret(device: &crate::Device, id: u32) -> Option<Zeroizing<[u8; 32]>> {
    let pair = device.prekey_store().signed_secret(id, device.clock())?;
    Some(Zeroizing::new(*Secret32::from(pair.clone()).as_bytes()))
}

/// The X25519 secret key of `device`'s one-time prekey `id`, if it still holds it.
pub fn one_time_prekey_secret(device: &crate::Device, id: u32) -> Option<Zeroizing<[u8; 32]>> {
    let pair = device.prekey_store().one_time_secret(id, device.clock())?;
    Some(Zeroizing::new(*Secret32::from(pair.clone()).as_bytes()))
}

/// The state of one Double Ratchet session (docs/PROTOCOL.md §4-§5), keys included.
pub struct SessionSecrets {
    /// The session identifier.
    pub session_id: [u8; 16],
    /// `AD`, which every message of the session authenticates first.
    pub associated_data: [u8; 32],
    /// The root key `RK`.
    pub root_key: Zeroizing<[u8; 32]>,
    /// The sending chain; `None` while the session needs a ratchet turn before sending.
    pub sending: Option<SendingChainSecrets>,
    /// The counter the next header carries as `previous_counter`.
    pub previous_counter: u32,
    /// The receiving chains, oldest first.
    pub receiving: Vec<ReceivingChainSecrets>,
    /// How many skipped message keys the session holds.
    pub skipped_keys: usize,
}

/// A sending chain: our ratchet key pair, the chain key and the next counter.
pub struct SendingChainSecrets {
    /// Our ratchet public key (the base key `EK` on the initiator's first chain).
    pub ratchet_public: [u8; 32],
    /// Its X25519 secret key.
    pub ratchet_secret: Zeroizing<[u8; 32]>,
    /// The chain key the next message steps from.
    pub chain_key: Zeroizing<[u8; 32]>,
    /// The counter of the next message.
    pub counter: u32,
}

/// A receiving chain: the peer's ratchet key, the chain key and the next expected counter.
pub struct ReceivingChainSecrets {
    /// The peer's ratchet public key.
    pub ratchet_key: [u8; 32],
    /// The chain key the next expected message steps from.
    pub chain_key: Zeroizing<[u8; 32]>,
    /// The counter of the next expected message.
    pub counter: u32,
}

/// The state of `device`'s active session with `remote`, if it has one.
pub fn active_session_secrets(
    device: &crate::Device,
    remote: crate::DeviceAddress,
) -> Option<SessionSecrets> {
    Some(device.sessions.get(&remote)?.active()?.secrets())
}

/// The companion-side device signature of `device` over `metadata`, its own identity and
/// `account_identity`, whatever its role: with [`account_sign`], a signed identity the API never
/// builds (the primary's own identity as a companion, say), to test what verification refuses.
pub fn device_sign(
    device: &crate::Device,
    metadata: crate::LinkingMetadata,
    account_identity: &crate::PublicIdentity,
) -> [u8; 64] {
    crate::SignedDeviceIdentity::device_sign(&device.identity, metadata, account_identity)
}

/// Seals `plaintext` as the whole session plaintext (the `Inner` of docs/PROTOCOL.md section
/// 10) of a message of `kind` from `device` to `to`, exactly as `encrypt_fanout` seals each
/// device's copy: on the session under the identity `device`'s list names for `to`, set up from
/// `bundles` if needed. `to` must be named by a list `device` holds. Lets tests send `Inner`
/// encodings the API never produces (another content form than the inline threshold picks, no
/// announced list, unsorted accounts, ...).
pub fn seal_inner(
    device: &mut crate::Device,
    rng: &mut (impl rand_core::CryptoRng + ?Sized),
    to: crate::DeviceAddress,
    kind: crate::MessageKind,
    plaintext: &[u8],
    bundles: &[crate::PrekeyBundle],
) -> Result<Vec<u8>, crate::FanoutSkip> {
    device.seal_authorized(rng, to, kind, plaintext, bundles)
}

/// A sending device's current sender key for one group (docs/PROTOCOL.md §20), keys included.
pub struct SenderKeySecrets {
    /// The key id every message under the key carries.
    pub key_id: u32,
    /// The iteration of the next message.
    pub iteration: u32,
    /// The chain key the next message steps from.
    pub chain_key: Zeroizing<[u8; 32]>,
    /// The Ed25519 secret key seed (RFC 8032 §5.1.5) that signs every message under the key.
    pub signing_seed: Zeroizing<[u8; 32]>,
    /// Its public key, as distributed.
    pub signing_public: [u8; 32],
}

/// The sender key `device` holds for `group`, if it made one (a group's first send makes it).
pub fn group_sender_key(device: &crate::Device, group: crate::GroupId) -> Option<SenderKeySecrets> {
    let key = device.groups.get(&group)?.key.as_ref()?;
    Some(SenderKeySecrets {
        key_id: key.key_id,
        iteration: key.iteration,
        chain_key: Zeroizing::new(*key.chain_key.as_bytes()),
        signing_seed: Zeroizing::new(key.signing.to_bytes()),
        signing_public: key.signing.verifying_key().to_bytes(),
    })
}

/// Everything a group message is made of, for [`seal_group_message`].
pub struct GroupMessageParts<'a> {
    /// The group.
    pub group: crate::GroupId,
    /// The sending device named in the header.
    pub sender: crate::DeviceAddress,
    /// The key id.
    pub key_id: u32,
    /// The iteration the message is sealed at.
    pub iteration: u32,
    /// The chain key at that iteration.
    pub chain_key: [u8; 32],
    /// The seed of the signing key.
    pub signing_seed: [u8; 32],
    /// The membership digest in the header.
    pub membership: [u8; 32],
    /// The AEAD nonce.
    pub nonce: [u8; 12],
    /// The message id leading the plaintext.
    pub message_id: [u8; 16],
    /// The sender's list version, as announced.
    pub list_version: u64,
    /// The sender's list digest, as announced.
    pub list_digest: [u8; 32],
    /// The payload.
    pub payload: &'a [u8],
}

/// Seals a group message exactly as `encrypt_group` does, under any sender key material: lets
/// tests and fuzz targets check that a key a receiver took from a distribution really is used.
/// `None` at the last iteration (`u32::MAX`), which no sender key reaches.
pub fn seal_group_message(parts: &GroupMessageParts<'_>) -> Option<Vec<u8>> {
    let mut key = crate::group::SenderKey {
        key_id: parts.key_id,
        iteration: parts.iteration,
        chain_key: Secret32::new(parts.chain_key),
        signing: ed25519_dalek::SigningKey::from_bytes(&parts.signing_seed),
    };
    let header = crate::group::GroupHeader {
        group: parts.group,
        sender: parts.sender,
        membership: &parts.membership,
        nonce: &parts.nonce,
    };
    crate::group::seal_group_message(
        &mut key,
        &header,
        &parts.message_id,
        (parts.list_version, parts.list_digest),
        parts.payload,
    )
    .ok()
}
