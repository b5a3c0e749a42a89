//! Client fan-out: one call encrypts a message for every authorized device of the recipient
//! account and every other device of the sender's own account.
//!
//! Payloads above [`INLINE_THRESHOLD`] are encrypted once, under a fresh content key, into a
//! shared body the server stores once; each device's envelope then carries only the key and the
//! body's SHA-256. Envelopes also carry the sender's own list version and digest, so receivers
//! learn of newer lists, and the conversation an own-device copy belongs to. This module never
//! encrypts to a device a verified list does not name, and never to the sending device.

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::consts::MAX_MESSAGE_PLAINTEXT;
use crate::crypto::{self, Secret32};
use crate::device::Device;
use crate::error::{DecodeError, FanoutError, KeyError, SessionError};
use crate::keys::{AccountId, DeviceAddress, Timestamp};
use crate::prekeys::PrekeyBundle;
use crate::wire::{self, Reader};

/// Payloads up to this size travel inside each envelope; larger ones in one shared body.
///
/// Below it, encrypting the payload per device costs less than the extra body digest and
/// decryption on every receiver.
pub const INLINE_THRESHOLD: usize = 512;

/// Most recipient accounts one fan-out may address (a group conversation).
pub const MAX_FANOUT_ACCOUNTS: usize = 64;

/// Largest payload a fan-out accepts (bodies are held in memory; use blobs for more).
pub const MAX_FANOUT_PAYLOAD: usize = 64 * 1024 * 1024;

const KIND_INLINE: u8 = 0x01;
const KIND_BODY: u8 = 0x02;
const KIND_HISTORY: u8 = 0x03;
const BODY_TYPE: u8 = 0x30;
const BODY_AAD: &[u8] = b"multidevice/v1/fanout-body";

/// Which conversation a message belongs to, as the sender stated inside the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conversation {
    /// Sent to this device's account by the sender.
    Direct,
    /// A copy of a message this device's own account sent to another account.
    OwnCopy {
        /// The accounts the original message went to.
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
}

/// The result of one fan-out.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FanoutMessage {
    /// One envelope per reachable device.
    pub envelopes: Vec<Envelope>,
    /// The shared encrypted body, for payloads above [`INLINE_THRESHOLD`].
    pub body: Option<Vec<u8>>,
    /// Devices that got nothing, and why.
    pub skipped: Vec<(DeviceAddress, FanoutSkip)>,
}

/// A decrypted fan-out message.
#[derive(Debug)]
#[non_exhaustive]
pub struct ReceivedMessage {
    /// The authorized device that sent it.
    pub sender: DeviceAddress,
    /// Direct message, or a copy of what this account sent to someone else.
    pub conversation: Conversation,
    /// The sender's device-list version, as it stated.
    pub sender_list_version: u64,
    /// The sender's device-list digest, as it stated.
    pub sender_list_digest: [u8; 32],
    /// True when the sender announced a newer list than this device holds: fetch it.
    pub list_refresh_needed: bool,
    /// The payload, wiped on drop.
    pub payload: Zeroizing<Vec<u8>>,
}

/// The plaintext inside each envelope.
struct Inner<'a> {
    list_version: u64,
    list_digest: [u8; 32],
    conversation: Conversation,
    content: Content<'a>,
}

#[derive(Clone, Copy)]
enum Content<'a> {
    Inline(&'a [u8]),
    Body {
        key: [u8; 32],
        digest: [u8; 32],
    },
    /// A history blob descriptor, for one new companion only.
    History(&'a [u8]),
}

/// Recognizes the history content kind of a session plaintext.
pub(crate) struct HistoryContent;

impl HistoryContent {
    /// The descriptor bytes if `plaintext` is a history message, `None` for any other kind.
    pub(crate) fn parse(plaintext: &[u8]) -> Result<Option<&[u8]>, DecodeError> {
        Ok(match Inner::decode(plaintext)?.content {
            Content::History(bytes) => Some(bytes),
            _ => None,
        })
    }
}

impl Inner<'_> {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(64 + 77));
        let kind = match self.content {
            Content::Inline(_) => KIND_INLINE,
            Content::Body { .. } => KIND_BODY,
            Content::History(_) => KIND_HISTORY,
        };
        out.extend_from_slice(&[wire::VERSION, kind]);
        out.extend_from_slice(&self.list_version.to_be_bytes());
        out.extend_from_slice(&self.list_digest);
        match &self.conversation {
            Conversation::Direct => out.push(0),
            Conversation::OwnCopy { to } => {
                out.push(u8::try_from(to.len()).unwrap_or(u8::MAX));
                for account in to.iter().take(MAX_FANOUT_ACCOUNTS) {
                    out.extend_from_slice(&account.0.to_be_bytes());
                }
            }
        }
        match &self.content {
            Content::Inline(payload) | Content::History(payload) => out.extend_from_slice(payload),
            Content::Body { key, digest } => {
                out.extend_from_slice(key);
                out.extend_from_slice(digest);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Inner<'_>, DecodeError> {
        let mut reader = Reader::new(bytes);
        reader.version()?;
        let kind = reader.u8()?;
        let list_version = reader.u64()?;
        let list_digest = reader.array()?;
        let conversation = match usize::from(reader.u8()?) {
            0 => Conversation::Direct,
            count if count <= MAX_FANOUT_ACCOUNTS => Conversation::OwnCopy {
                to: (0..count).map(|_| reader.u64().map(AccountId)).collect::<Result<_, _>>()?,
            },
            count => return Err(DecodeError::TooLong { limit: MAX_FANOUT_ACCOUNTS, got: count }),
        };
        let content = match kind {
            KIND_INLINE => Content::Inline(reader.rest()),
            KIND_HISTORY => Content::History(reader.rest()),
            KIND_BODY => {
                let content = Content::Body { key: reader.array()?, digest: reader.array()? };
                reader.finish()?;
                content
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(Inner { list_version, list_digest, conversation, content })
    }
}

fn seal_body(key: &Secret32, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + payload.len() + crypto::TAG_LEN);
    body.extend_from_slice(&[wire::VERSION, BODY_TYPE]);
    body.extend_from_slice(payload);
    // The content key is fresh per message, so a fixed nonce never repeats under one key.
    crypto::seal(key.as_bytes(), &[0u8; crypto::NONCE_LEN], BODY_AAD, &mut body, 2);
    body
}

fn open_body(
    key: &[u8; 32],
    digest: &[u8; 32],
    body: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, FanoutError> {
    let body = body.ok_or(FanoutError::BodyMissing)?;
    let actual: [u8; 32] = Sha256::digest(body).into();
    if !crypto::ct_eq(&actual, digest) {
        return Err(FanoutError::BodyDigestMismatch);
    }
    let mut reader = Reader::new(body);
    reader.version()?;
    match reader.u8()? {
        BODY_TYPE => {}
        other => return Err(DecodeError::UnknownType(other).into()),
    }
    crypto::open(key, &[0u8; crypto::NONCE_LEN], BODY_AAD, reader.rest())
        .map_err(|_| FanoutError::BodyAuthentication)
}

impl Device {
    /// Encrypts `payload` for every authorized device of account `to` and every other device of
    /// this device's own account, from the newest verified lists this device holds.
    ///
    /// Devices without a session get one from their bundle in `bundles`, which must verify and
    /// match the identity the list names; devices without a usable bundle are reported in
    /// [`FanoutMessage::skipped`]. A list past its TTL reaches only its primary.
    pub fn encrypt_fanout(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        to: &[AccountId],
        bundles: &[PrekeyBundle],
        payload: &[u8],
        now: Timestamp,
    ) -> Result<FanoutMessage, FanoutError> {
        if payload.len() > MAX_FANOUT_PAYLOAD {
            return Err(FanoutError::PayloadTooLarge(payload.len()));
        }
        if to.is_empty() || to.len() > MAX_FANOUT_ACCOUNTS {
            return Err(FanoutError::TooManyAccounts(to.len()));
        }
        self.ensure_active(now)?;
        let own_account = self.address.account;
        let mut targets: Vec<(DeviceAddress, bool)> = Vec::new();
        for &account in to {
            if self.identity_change_pending(account) {
                return Err(FanoutError::IdentityChangePending(account));
            }
            let list = self.device_list(account).ok_or(FanoutError::UnknownAccount(account))?;
            targets.extend(
                list.recipients(now)
                    .iter()
                    .map(|d| (d.address(), false))
                    .filter(|(a, _)| *a != self.address),
            );
        }
        let own = self.device_list(own_account);
        if !to.contains(&own_account)
            && let Some(own) = own
        {
            targets.extend(
                own.recipients(now)
                    .iter()
                    .map(|d| (d.address(), true))
                    .filter(|(a, _)| *a != self.address),
            );
        }
        targets.sort_unstable_by_key(|(a, _)| *a);
        targets.dedup_by_key(|(a, _)| *a);
        let (list_version, list_digest) = own.map_or((0, [0u8; 32]), |l| (l.version(), l.digest()));
        let (body, body_key) = if payload.len() > INLINE_THRESHOLD {
            let mut key = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(key.as_mut_slice());
            let key = Secret32::new(*key);
            (Some(seal_body(&key, payload)), Some(key))
        } else {
            (None, None)
        };
        let content = match (&body_key, &body) {
            (Some(key), Some(body)) => {
                Content::Body { key: *key.as_bytes(), digest: Sha256::digest(body).into() }
            }
            _ => Content::Inline(payload),
        };
        // Two plaintexts serve every device: the direct one, and the own-device copy.
        let direct =
            Inner { list_version, list_digest, conversation: Conversation::Direct, content }
                .encode();
        let own_copy = Inner {
            list_version,
            list_digest,
            conversation: Conversation::OwnCopy { to: to.to_vec() },
            content,
        }
        .encode();
        let mut envelopes = Vec::with_capacity(targets.len());
        let mut skipped = Vec::new();
        for (address, is_own) in targets {
            if !self.has_session(address)
                && let Err(reason) = self.session_from_bundle(rng, address, bundles)
            {
                skipped.push((address, reason));
                continue;
            }
            let plaintext = if is_own { &own_copy } else { &direct };
            match self.encrypt_unchecked(rng, address, plaintext) {
                Ok(bytes) => envelopes.push(Envelope { recipient: address, bytes }),
                Err(error) => skipped.push((address, FanoutSkip::Session(error))),
            }
        }
        Ok(FanoutMessage { envelopes, body, skipped })
    }

    /// The session plaintext that carries a history descriptor.
    pub(crate) fn history_plaintext(
        &self,
        descriptor: &crate::blob::BlobDescriptor,
    ) -> Zeroizing<Vec<u8>> {
        let own = self.device_list(self.address.account);
        let descriptor = descriptor.to_bytes();
        Inner {
            list_version: own.map_or(0, |l| l.version()),
            list_digest: own.map_or([0u8; 32], |l| l.digest()),
            conversation: Conversation::Direct,
            content: Content::History(&descriptor),
        }
        .encode()
    }

    pub(crate) fn session_from_bundle(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        address: DeviceAddress,
        bundles: &[PrekeyBundle],
    ) -> Result<(), FanoutSkip> {
        let bundle =
            bundles.iter().find(|b| b.address == address).ok_or(FanoutSkip::MissingBundle)?;
        let listed =
            self.device_list(address.account).and_then(|l| l.device(address)).map(|d| d.identity());
        if listed != Some(&bundle.identity) {
            return Err(FanoutSkip::BundleIdentityMismatch);
        }
        let verified = bundle.clone().verify().map_err(FanoutSkip::BadBundle)?;
        self.start_session(rng, &verified).map_err(FanoutSkip::Session)
    }

    /// Decrypts one envelope of a fan-out. The sender must be a device the newest verified list
    /// of its account names, with the identity that list names; a body is needed for payloads
    /// above [`INLINE_THRESHOLD`]. On any error the device is unchanged, so the app can fetch a
    /// list or the body and retry.
    pub fn decrypt_fanout(
        &mut self,
        envelope: &[u8],
        body: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<ReceivedMessage, FanoutError> {
        let own_account = self.address.account;
        // What the held list says about the claimed sender; checked against the authenticated
        // sender inside the transaction.
        let sender =
            crate::SessionMessage::try_from(envelope).map_err(SessionError::from)?.sender();
        let account = sender.account;
        let held = self.device_list(account).ok_or(FanoutError::UnknownAccount(account))?;
        let held_version = held.version();
        let listed = held.device(sender).map(|d| d.identity().fingerprint());
        let (_, received) = self.decrypt_with(envelope, now, |decrypted| {
            let inner = Inner::decode(&decrypted.plaintext)?;
            let authorized = listed.is_some_and(|f| f == decrypted.sender_fingerprint);
            if !authorized {
                return Err(if inner.list_version > held_version {
                    FanoutError::RefreshSenderList { account, version: inner.list_version }
                } else {
                    FanoutError::UnauthorizedSender(decrypted.sender)
                });
            }
            if let Conversation::OwnCopy { .. } = inner.conversation
                && account != own_account
            {
                return Err(FanoutError::ForeignOwnCopy(decrypted.sender));
            }
            let payload = match inner.content {
                Content::Inline(payload) => Zeroizing::new(payload.to_vec()),
                Content::Body { key, digest } => open_body(&key, &digest, body)?,
                Content::History(_) => return Err(FanoutError::UnexpectedHistory),
            };
            Ok(ReceivedMessage {
                sender: decrypted.sender,
                conversation: inner.conversation,
                sender_list_version: inner.list_version,
                sender_list_digest: inner.list_digest,
                list_refresh_needed: inner.list_version > held_version,
                payload,
            })
        })?;
        Ok(received)
    }
}

impl From<SessionError> for FanoutError {
    fn from(error: SessionError) -> Self {
        FanoutError::Session(error)
    }
}

/// The largest inline payload a session message can carry.
const _: () = assert!(INLINE_THRESHOLD + 64 < MAX_MESSAGE_PLAINTEXT);
