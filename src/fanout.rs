//! Client fan-out: one call encrypts a message for every authorized device of the recipient
//! accounts and every other device of the sender's own account.
//!
//! Payloads above [`INLINE_THRESHOLD`] are encrypted once, under a fresh content key, into a
//! shared body the server stores once; each device's envelope then carries only the key and the
//! body's SHA-256. Envelopes also carry the sender's own list version and digest, so receivers
//! learn of newer lists, and own-device copies carry the accounts the message went to. This
//! module never encrypts to a device that [`Device::authorize`] refuses,
//! never on a session whose identity differs from the one the list names, and never to the
//! sending device.

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::consts::MAX_MESSAGE_PLAINTEXT;
use crate::crypto::{self, Secret32, label};
use crate::device::{Device, seal_message};
use crate::device_list::AuthorizedDevice;
use crate::error::{DecodeError, FanoutError, KeyError, ReceiveError, SessionError};
use crate::group::GroupId;
use crate::keys::{AccountId, DeviceAddress, Timestamp};
use crate::prekeys::PrekeyBundle;
use crate::retry::{IdentityMark, SentKind, mark_of, message_ref};
use crate::session::message::MessageKind;
use crate::wire::{Codec, Reader};

use crate::consts::{INLINE_THRESHOLD, MAX_FANOUT_ACCOUNTS, MAX_FANOUT_PAYLOAD};

const CONTENT_INLINE: u8 = 0x01;
const CONTENT_BODY: u8 = 0x02;

/// Which conversation a message belongs to, as the sender stated inside the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conversation {
    /// Sent to this device's account by the sender.
    Direct,
    /// A copy of a message this device's own account sent, to the accounts `to`.
    OwnCopy {
        /// The accounts the original message went to (this account included when it was one of
        /// the recipients).
        to: Vec<AccountId>,
    },
}

/// One device's encrypted copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The device it is for.
    pub recipient: DeviceAddress,
    /// The session message.
    pub bytes: Vec<u8>,
}

/// Why a device got no envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FanoutSkip {
    /// No session and no bundle was supplied for the device.
    MissingBundle,
    /// The supplied bundle failed verification.
    BadBundle(KeyError),
    /// The bundle's identity is not the one the verified list names.
    BundleIdentityMismatch,
    /// Session setup or encryption failed.
    Session(SessionError),
    /// The device is a companion and its account's list is more than 14 days old, or a newer
    /// version was announced: fetch the list (see [`FanoutMessage::lists_needed`]).
    StaleList,
    /// Its account's identity changed and the user has not decided yet.
    IdentityChangePending,
}

/// The result of one fan-out.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FanoutMessage {
    /// The message's random id, inside every envelope: receivers report it, and deliver a
    /// message re-encrypted for a retry once.
    pub message_id: [u8; 16],
    /// One envelope per reachable device.
    pub envelopes: Vec<Envelope>,
    /// The shared encrypted body, for payloads above [`INLINE_THRESHOLD`].
    pub body: Option<Vec<u8>>,
    /// Devices that got nothing, and why.
    pub skipped: Vec<(DeviceAddress, FanoutSkip)>,
    /// Accounts whose companions were left out because their list is too old or a newer
    /// version was announced: fetch these lists, then send again to reach them.
    pub lists_needed: Vec<AccountId>,
    /// The outbox item holding the envelopes and body, when a [`crate::StoredDevice`] committed
    /// them: mark it sent once the server has them. `None` from [`Device::encrypt_fanout`].
    pub outbox: Option<crate::OutboxId>,
}

/// The plaintext inside each envelope of the authorized kinds.
///
/// ```text
/// Inner          = sender list version (u64) || sender list digest (32) || rest
/// Inner            = sender list version (u64) || sender list digest (32) || message id (16)
///                    || rest
/// rest (Direct)    = Content
/// rest (OwnCopy)   = n (u8, 1..=64) || n x account id (u64, strictly increasing) || Content
/// rest (History)   = BlobDescriptor
/// rest (SenderKey) = Distribution (88)
/// rest (GroupCopy) = group id (16) || membership digest (32) || Content
/// Content        = 0x01 || payload  |  0x02 || content key (32) || SHA-256(Body) (32)
/// ```
pub(crate) struct Inner<'a> {
    pub(crate) list_version: u64,
    pub(crate) list_digest: [u8; 32],
    /// The sender's random id for the message: the same in every device's copy, and in a
    /// copy re-encrypted for a retry.
    pub(crate) message_id: [u8; 16],
    /// The group and membership digest of a group message re-sent pairwise (kind `GroupCopy`).
    pub(crate) group: Option<(GroupId, [u8; 32])>,
    /// The accounts an own-device copy's original went to; empty for other kinds.
    pub(crate) to: Vec<AccountId>,
    pub(crate) content: Content<'a>,
}

/// The content of an authorized message. It borrows every secret, so none is copied.
#[derive(Clone, Copy)]
pub(crate) enum Content<'a> {
    Inline(&'a [u8]),
    Body {
        key: &'a [u8; 32],
        digest: [u8; 32],
    },
    /// A history blob descriptor, for one new companion only.
    History(&'a [u8]),
    /// A sender-key distribution for a group.
    SenderKey(&'a [u8]),
}

impl Inner<'_> {
    pub(crate) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let content_len = match self.content {
            Content::Inline(bytes) | Content::History(bytes) | Content::SenderKey(bytes) => {
                1 + bytes.len()
            }
            Content::Body { .. } => 65,
        };
        let mut out =
            Zeroizing::new(Vec::with_capacity(56 + 48 + 1 + 8 * self.to.len() + content_len));
        out.extend_from_slice(&self.list_version.to_be_bytes());
        out.extend_from_slice(&self.list_digest);
        out.extend_from_slice(&self.message_id);
        if let Some((group, membership)) = &self.group {
            out.extend_from_slice(&group.0);
            out.extend_from_slice(membership);
        }
        if !self.to.is_empty() {
            // Fan-outs name at most MAX_FANOUT_ACCOUNTS (64) accounts.
            out.push(u8::try_from(self.to.len()).unwrap_or(u8::MAX));
            for account in &self.to {
                out.extend_from_slice(&account.0.to_be_bytes());
            }
        }
        match &self.content {
            Content::Inline(payload) => {
                out.push(CONTENT_INLINE);
                out.extend_from_slice(payload);
            }
            Content::Body { key, digest } => {
                out.push(CONTENT_BODY);
                out.extend_from_slice(*key);
                out.extend_from_slice(digest);
            }
            Content::History(bytes) | Content::SenderKey(bytes) => out.extend_from_slice(bytes),
        }
        out
    }

    /// Parses the plaintext of a message of `kind` (one of the authorized kinds).
    pub(crate) fn decode(kind: MessageKind, bytes: &[u8]) -> Result<Inner<'_>, DecodeError> {
        let mut reader = Reader::new(bytes);
        let list_version = reader.u64()?;
        let list_digest = reader.array()?;
        let message_id = reader.array()?;
        let group = match kind {
            MessageKind::GroupCopy => Some((GroupId(reader.array()?), reader.array()?)),
            _ => None,
        };
        let to = match kind {
            MessageKind::OwnCopy => {
                let count = usize::from(reader.u8()?);
                if count == 0 {
                    return Err(DecodeError::OutOfRange);
                }
                if count > MAX_FANOUT_ACCOUNTS {
                    return Err(DecodeError::TooLong { limit: MAX_FANOUT_ACCOUNTS, got: count });
                }
                let to: Vec<AccountId> =
                    (0..count).map(|_| reader.u64().map(AccountId)).collect::<Result<_, _>>()?;
                // One list of accounts, one encoding: sorted, without repeats.
                if !to.windows(2).all(|pair| matches!(pair, [a, b] if a < b)) {
                    return Err(DecodeError::NotStrictlyIncreasing);
                }
                to
            }
            _ => Vec::new(),
        };
        let content = match kind {
            MessageKind::History => Content::History(reader.rest()),
            MessageKind::SenderKey => Content::SenderKey(reader.rest()),
            _ => match reader.u8()? {
                CONTENT_INLINE => Content::Inline(reader.rest()),
                CONTENT_BODY => {
                    let key = reader.take(32)?.try_into().map_err(|_| DecodeError::OutOfRange)?;
                    let content = Content::Body { key, digest: reader.array()? };
                    reader.finish()?;
                    content
                }
                other => return Err(DecodeError::UnknownType(other)),
            },
        };
        Ok(Inner { list_version, list_digest, message_id, group, to, content })
    }
}

/// A shared body: `0x01 || 0x30 || key commitment (32) || AES-256-GCM ciphertext || tag`.
struct Body<'a> {
    commitment: [u8; 32],
    sealed: &'a [u8],
}

impl<'a> Codec<'a> for Body<'a> {
    const TYPE: u8 = 0x30;
    const MIN_BODY_LEN: usize = 32 + crypto::TAG_LEN;

    fn body_len(&self) -> usize {
        32 + self.sealed.len()
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(self.sealed);
    }

    fn read_body(_: u8, reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let commitment = reader.array()?;
        let sealed = reader.rest();
        if sealed.len() > MAX_FANOUT_PAYLOAD + crypto::TAG_LEN {
            return Err(DecodeError::TooLong {
                limit: MAX_FANOUT_PAYLOAD + crypto::TAG_LEN,
                got: sealed.len(),
            });
        }
        Ok(Self { commitment, sealed })
    }
}

/// Encrypts `payload` into a shared body under the key and commitment derived from the fresh
/// content `key`, in one buffer of exactly the body's size.
pub(crate) fn seal_body(key: &Secret32, payload: &[u8]) -> Vec<u8> {
    let (cipher_key, commitment) = crypto::commit_key(key.as_bytes(), label::KDF_BODY);
    let mut body = Vec::with_capacity(2 + 32 + payload.len() + crypto::TAG_LEN);
    Body { commitment, sealed: &[] }.write(&mut body);
    // The content key is fresh per message, so a fixed nonce never repeats under one key.
    crypto::seal_append(
        cipher_key.as_bytes(),
        &[0u8; crypto::NONCE_LEN],
        label::FANOUT_BODY_AAD,
        &mut body,
        payload,
    );
    body
}

/// Checks a shared body against its digest, then its key commitment, both in constant time,
/// and only then decrypts it.
pub(crate) fn open_body(
    key: &[u8; 32],
    digest: &[u8; 32],
    body: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, ReceiveError> {
    let body = body.ok_or(ReceiveError::BodyMissing)?;
    let actual: [u8; 32] = Sha256::digest(body).into();
    if !crypto::ct_eq(&actual, digest) {
        return Err(ReceiveError::BodyDigestMismatch);
    }
    let parsed = Body::decode(body).map_err(ReceiveError::Content)?;
    let (cipher_key, commitment) = crypto::commit_key(key, label::KDF_BODY);
    if !crypto::ct_eq(&commitment, &parsed.commitment) {
        return Err(ReceiveError::BodyKeyCommitment);
    }
    crypto::open(
        cipher_key.as_bytes(),
        &[0u8; crypto::NONCE_LEN],
        label::FANOUT_BODY_AAD,
        parsed.sealed,
    )
    .map_err(|_| ReceiveError::BodyAuthentication)
}

impl Device {
    /// Encrypts `payload` for every authorized device of the accounts `to` and every other
    /// device of this device's own account, from the newest verified lists this device holds.
    ///
    /// An account's primary is always reached; its companions only while its list is at most
    /// 14 days old and no newer version was announced (others are skipped as
    /// [`FanoutSkip::StaleList`] and the account is named in [`FanoutMessage::lists_needed`]).
    /// Before a session is used, its identity is compared with the one the list names; a
    /// session under another identity is discarded. Devices without a session get one from
    /// their bundle in `bundles`, which must verify and carry the identity the list names;
    /// devices without a usable bundle are reported in [`FanoutMessage::skipped`]. Copies for
    /// this account's own devices are marked as own copies naming `to`.
    pub fn encrypt_fanout(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        to: &[AccountId],
        bundles: &[PrekeyBundle],
        payload: &[u8],
        now: Timestamp,
    ) -> Result<FanoutMessage, FanoutError> {
        self.observe(now);
        if payload.len() > MAX_FANOUT_PAYLOAD {
            return Err(FanoutError::PayloadTooLarge(payload.len()));
        }
        let mut accounts = to.to_vec();
        accounts.sort_unstable();
        accounts.dedup();
        if accounts.is_empty() || accounts.len() > MAX_FANOUT_ACCOUNTS {
            return Err(FanoutError::TooManyAccounts(accounts.len()));
        }
        self.require_active()?;
        let own_account = self.address.account;
        for &account in &accounts {
            let known = self.accounts.get(&account).ok_or(FanoutError::UnknownAccount(account))?;
            if known.pending_change.is_some() {
                return Err(FanoutError::IdentityChangePending(account));
            }
        }
        let mut reached: Vec<AccountId> = accounts.clone();
        if !accounts.contains(&own_account) {
            reached.push(own_account);
        }
        let (targets, skipped, lists_needed) = self.fanout_targets(&reached);
        let (list_version, list_digest) = self.own_list_announcement();
        let mut message_id = [0u8; 16];
        rng.fill_bytes(&mut message_id);
        let body_key = (payload.len() > INLINE_THRESHOLD).then(|| {
            let mut key = Secret32::new([0u8; 32]);
            rng.fill_bytes(key.as_mut_bytes());
            key
        });
        let body = body_key.as_ref().map(|key| seal_body(key, payload));
        let content = match (&body_key, &body) {
            (Some(key), Some(body)) => {
                Content::Body { key: key.as_bytes(), digest: Sha256::digest(body).into() }
            }
            _ => Content::Inline(payload),
        };
        // Two plaintexts serve every device: the direct one, and the own-device copy.
        let inner = |to: Vec<AccountId>| {
            Inner { list_version, list_digest, message_id, group: None, to, content }.encode()
        };
        let direct = inner(Vec::new());
        let own_copy = inner(accounts.clone());
        let mut sent = Vec::with_capacity(targets.len());
        let mut message = FanoutMessage {
            message_id,
            envelopes: Vec::with_capacity(targets.len()),
            body,
            skipped,
            lists_needed,
            outbox: None,
        };
        for address in targets {
            let (kind, plaintext) = if address.account == own_account {
                (MessageKind::OwnCopy, &own_copy)
            } else {
                (MessageKind::Direct, &direct)
            };
            match self.seal_authorized_marked(rng, address, kind, plaintext, bundles) {
                Ok((bytes, mark)) => {
                    if let Some(reference) = message_ref(&bytes) {
                        sent.push((address, mark, reference));
                    }
                    message.envelopes.push(Envelope { recipient: address, bytes });
                }
                Err(reason) => message.skipped.push((address, reason)),
            }
        }
        let recipients = crate::retry::Recipients::Devices(sent);
        self.remember_sent(message_id, SentKind::Fanout { to: accounts }, payload, recipients);
        Ok(message)
    }

    /// The devices of `accounts` a fan-out reaches now, the companions it must leave out, and
    /// the accounts whose lists those need.
    #[allow(clippy::type_complexity)]
    fn fanout_targets(
        &self,
        accounts: &[AccountId],
    ) -> (Vec<DeviceAddress>, Vec<(DeviceAddress, FanoutSkip)>, Vec<AccountId>) {
        let mut targets = Vec::new();
        let mut skipped = Vec::new();
        let mut lists_needed = Vec::new();
        for account in accounts {
            let Some(known) = self.accounts.get(account) else { continue };
            let current = self.companions_current(known);
            if !current {
                lists_needed.push(*account);
            }
            for device in known.list.devices() {
                if device.address() == self.address {
                    continue;
                }
                // The rule of `authorize`, applied to the list's own devices.
                if device.address().device.is_primary() || current {
                    targets.push(device.address());
                } else {
                    skipped.push((device.address(), FanoutSkip::StaleList));
                }
            }
        }
        (targets, skipped, lists_needed)
    }

    /// The version and digest of the own newest list, which every authorized message announces.
    /// A primary and an active companion always hold one; zero otherwise.
    pub(crate) fn own_list_announcement(&self) -> (u64, [u8; 32]) {
        self.device_list(self.address.account).map_or((0, [0u8; 32]), |l| (l.version(), l.digest()))
    }

    /// Encrypts `plaintext` as a message of `kind` for the device at `address`, which
    /// [`Device::authorize`] admitted, on a session under the identity its verified list names.
    /// A held session under another identity is never used: as when none is held, a new one is
    /// set up from a bundle in `bundles` that carries the listed identity and verifies, and only
    /// then replaces the held record. One lookup of the list and one of the session per device:
    /// this is the fan-out's hot path.
    pub(crate) fn seal_authorized(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        address: DeviceAddress,
        kind: MessageKind,
        plaintext: &[u8],
        bundles: &[PrekeyBundle],
    ) -> Result<Vec<u8>, FanoutSkip> {
        self.seal_authorized_marked(rng, address, kind, plaintext, bundles).map(|(bytes, _)| bytes)
    }

    /// [`Device::seal_authorized`], with the mark of the identity the message was sealed for,
    /// as the sent-message cache keeps it for a fan-out or history message.
    pub(crate) fn seal_authorized_marked(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        address: DeviceAddress,
        kind: MessageKind,
        plaintext: &[u8],
        bundles: &[PrekeyBundle],
    ) -> Result<(Vec<u8>, IdentityMark), FanoutSkip> {
        let listed = self
            .accounts
            .get(&address.account)
            .and_then(|known| known.list.device(address))
            .map(AuthorizedDevice::identity)
            .ok_or(FanoutSkip::StaleList)?;
        let mark = mark_of(listed.signing_key_bytes());
        let own = self.identity.public();
        // A session under another identity is never used; it is replaced only once a bundle
        // under the listed identity has set up a new one, so a refusal changes nothing.
        if let Some(record) = self.sessions.get_mut(&address)
            && &record.remote_identity == listed
            && let Some(session) = record.active_mut()
        {
            return seal_message(rng, session, kind, self.address, address, own, plaintext)
                .map(|bytes| (bytes, mark))
                .map_err(FanoutSkip::Session);
        }
        let bundle =
            bundles.iter().find(|b| b.address == address).ok_or(FanoutSkip::MissingBundle)?;
        if &bundle.identity != listed {
            return Err(FanoutSkip::BundleIdentityMismatch);
        }
        let verified = bundle.clone().verify().map_err(FanoutSkip::BadBundle)?;
        self.start_session_with(rng, &verified).map_err(FanoutSkip::Session)?;
        self.seal(rng, address, kind, plaintext)
            .map(|bytes| (bytes, mark))
            .map_err(FanoutSkip::Session)
    }
}

/// The largest inline payload a session message can carry.
const _: () = assert!(INLINE_THRESHOLD + 64 < MAX_MESSAGE_PLAINTEXT);
