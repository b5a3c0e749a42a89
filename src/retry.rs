//! Recovery: message ids, what each device remembers about a peer, the sent-message cache and
//! retry requests.
//!
//! Every authorized message carries a random message id inside its ciphertext, and a receiver
//! remembers the last ids each sending device delivered, so a message re-encrypted for a retry
//! is delivered once. When a message cannot be decrypted for a reason a fresh session can cure
//! (the receiver lost its session, was restored from an old backup, lacks a sender key, or a
//! one-time prekey expired), the receiver signs a [`RetryRequest`] naming the failed envelope
//! and carrying its current signed prekey. The sender checks it against its verified list,
//! finds the message in its sent-message cache (bounded by entries and age), sets up a fresh
//! session from the request and re-encrypts the message under the same id, at most
//! [`MAX_RETRIES`] times per message and device. This module never answers a device outside
//! the sender's current verified view, nor one that was not a recipient of the original.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::consts::{
    DEFAULT_SENT_CACHE_AGE_SECS, DEFAULT_SENT_CACHE_ENTRIES, MAX_RETRIES, MESSAGE_ID_WINDOW,
};
use crate::crypto::{self, label};
use crate::error::{DecodeError, ReceiveError, SessionError, SignatureKind};
use crate::fanout::Envelope;
use crate::group::GroupId;
use crate::keys::{AccountId, DeviceAddress, PublicIdentity, Timestamp};
use crate::prekeys::SignedPrekeyPublic;
use crate::wire::{Codec, Reader};

/// Bytes wiped when dropped: plaintexts kept for retries.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SecretBytes(pub(crate) Vec<u8>);

/// What a message was, so a retry re-encrypts it as the same kind.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum SentKind {
    /// A fan-out to these accounts.
    Fanout { to: Vec<AccountId> },
    /// History to one companion (the payload is the descriptor).
    History,
    /// A group message.
    Group { group: GroupId, membership: [u8; 32] },
}

/// What the cache records of the identity a recipient had, so a retry is answered only to the
/// identity the original went to, never to another one listed at the same address since (a
/// re-registered primary, say): 16 bytes of it, as many as a message reference (finding another
/// identity that matches them is a 2^128 second preimage).
pub(crate) type IdentityMark = [u8; 16];

impl SentKind {
    /// The [`IdentityMark`] an entry of this kind records: for a group message, the start of the
    /// identity's fingerprint (what the group's holders already record); for the others, the
    /// start of its signing key (read without hashing on the send path, by
    /// `Device::seal_authorized_marked`).
    pub(crate) fn identity_mark(&self, identity: &PublicIdentity) -> IdentityMark {
        match self {
            Self::Group { .. } => mark_of(&identity.fingerprint().0),
            Self::Fanout { .. } | Self::History => mark_of(identity.signing_key_bytes()),
        }
    }
}

/// The first 16 bytes of `bytes` (of 32: the chunk is always there).
pub(crate) fn mark_of(bytes: &[u8; 32]) -> IdentityMark {
    bytes.first_chunk::<16>().copied().unwrap_or_default()
}

/// One sent message, kept for retries.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct SentMessage {
    pub(crate) message_id: [u8; 16],
    pub(crate) created: Timestamp,
    pub(crate) kind: SentKind,
    pub(crate) payload: SecretBytes,
    /// Every device it was encrypted for, with the identity it was encrypted under and the
    /// reference of what it was sent.
    pub(crate) recipients: Recipients,
    /// The retries answered, per device.
    pub(crate) retries: Vec<Answered>,
    /// [`SentLog::issued`] once this message's id was issued.
    pub(crate) issued: u64,
}

/// The retries of one cached message answered for one device.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Answered {
    pub(crate) device: DeviceAddress,
    /// How many were answered.
    pub(crate) answers: u8,
    /// The reference the last request answered named, and its count.
    pub(crate) asked: ([u8; 16], u8),
    /// The reference of the last answer: the newest copy of the message the device was sent.
    pub(crate) answer: [u8; 16],
}

impl Answered {
    /// True if a request for `reference` with `count` asks anew: it names the last answer (which
    /// failed in turn, say after a second restore took the signed prekey it was sealed to), or
    /// the copy the last request named with a higher count (that answer was lost). Anything
    /// else was answered already: a replay. The requester counts per copy, so the count alone
    /// cannot tell.
    fn asks_anew(&self, reference: &[u8; 16], count: u8) -> bool {
        let (asked, asked_count) = &self.asked;
        crypto::ct_eq(&self.answer, reference)
            || (crypto::ct_eq(asked, reference) && count > *asked_count)
    }
}

/// Who a cached message went to.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum Recipients {
    /// Per device: its address, the mark of the identity it was encrypted under
    /// ([`SentKind::identity_mark`]), and the reference of its envelope (its last 16 bytes).
    Devices(Vec<(DeviceAddress, IdentityMark, [u8; 16])>),
    /// A group message: the same bytes, with this reference (their last 16 bytes), for every
    /// holder of the sender key, as the cache's holder set `set` records them. Messages sent to
    /// the same holders share one set, so a send to a thousand accounts copies no holder.
    Holders { set: u64, reference: [u8; 16] },
}

/// The holders of a group's sender key when messages were sent under it: each device, by
/// address (ascending), with the mark of the identity it got the key under.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct HolderSet(pub(crate) Vec<(DeviceAddress, IdentityMark)>);

/// The bounds of the sent-message cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentCacheLimits {
    /// Messages kept at most; the oldest is wiped first.
    pub max_entries: u32,
    /// Seconds a message is kept, measured on the clock mark.
    pub max_age_secs: u64,
}

impl Default for SentCacheLimits {
    fn default() -> Self {
        Self { max_entries: DEFAULT_SENT_CACHE_ENTRIES, max_age_secs: DEFAULT_SENT_CACHE_AGE_SECS }
    }
}

/// The order and age of the cache's entries: the part of the cache every send reads and writes.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct SentLog {
    pub(crate) next: u64,
    /// Live entries by number, oldest first, with when they were sent and the holder set they
    /// name (group messages).
    pub(crate) live: VecDeque<(u64, Timestamp, Option<u64>)>,
    /// The number of the next holder set.
    pub(crate) next_holder_set: u64,
    /// Live holder sets by number, with how many live entries name each.
    pub(crate) holder_sets: BTreeMap<u64, u32>,
    pub(crate) limits: SentCacheLimits,
    /// Message ids this device has issued to any one peer device, counted the most one send
    /// can give a device: one per fan-out, history message and retry answer, two for a group
    /// message that came with a sender-key distribution. A receiver remembers the last
    /// [`MESSAGE_ID_WINDOW`] ids per sending device, so a message followed by that many is no
    /// longer answered ([`SentMessage::issued`]).
    pub(crate) issued: u64,
}

/// The sent-message cache: the log, the entries loaded (all of them in memory, the ones an
/// operation needs in a store), and the entries dropped since loading.
#[derive(Clone, Default)]
pub(crate) struct SentCache {
    pub(crate) log: SentLog,
    pub(crate) entries: BTreeMap<u64, SentMessage>,
    /// Holder sets loaded or made, by number.
    pub(crate) holder_sets: BTreeMap<u64, HolderSet>,
    /// Entries evicted by this operation: a store deletes them.
    pub(crate) evicted: Vec<u64>,
    /// Holder sets no live entry names any more since loading: a store deletes them.
    pub(crate) evicted_holder_sets: Vec<u64>,
}

impl SentCache {
    /// Counts `ids` message ids issued to a peer device by one send.
    pub(crate) fn issue(&mut self, ids: u64) {
        self.log.issued = self.log.issued.saturating_add(ids);
    }

    /// True while fewer than [`MESSAGE_ID_WINDOW`] ids followed `entry`'s: every receiver that
    /// delivered it still remembers its id, so a retry of it is delivered at most once.
    fn recognizable(&self, entry: &SentMessage) -> bool {
        let window = u64::try_from(MESSAGE_ID_WINDOW).unwrap_or(u64::MAX);
        self.log.issued.saturating_sub(entry.issued) < window
    }

    /// Keeps `message`, then wipes whatever the limits no longer allow at `clock`.
    pub(crate) fn add(&mut self, message: SentMessage, clock: Timestamp) {
        let seq = self.log.next;
        self.log.next = self.log.next.wrapping_add(1);
        let set = match message.recipients {
            Recipients::Holders { set, .. } => {
                *self.log.holder_sets.entry(set).or_default() += 1;
                Some(set)
            }
            Recipients::Devices(_) => None,
        };
        self.log.live.push_back((seq, message.created, set));
        self.entries.insert(seq, message);
        self.prune(clock);
    }

    /// The number of the holder set for a group's current holders: `current`, the set made when
    /// they last changed, while an entry still names it; else a new one, made by `holders`.
    pub(crate) fn holder_set(
        &mut self,
        current: Option<u64>,
        holders: impl FnOnce() -> HolderSet,
    ) -> u64 {
        if let Some(set) = current.filter(|set| self.log.holder_sets.contains_key(set)) {
            return set;
        }
        let set = self.log.next_holder_set;
        self.log.next_holder_set = set.wrapping_add(1);
        self.holder_sets.insert(set, holders());
        set
    }

    /// Wipes entries beyond the limits at `clock`, and the holder sets only they named.
    pub(crate) fn prune(&mut self, clock: Timestamp) {
        let limits = self.log.limits;
        while let Some(&(seq, created, set)) = self.log.live.front() {
            let too_many =
                self.log.live.len() > usize::try_from(limits.max_entries).unwrap_or(usize::MAX);
            let too_old = clock.secs_since(created) > limits.max_age_secs;
            if !too_many && !too_old {
                break;
            }
            self.log.live.pop_front();
            self.entries.remove(&seq);
            self.evicted.push(seq);
            if let Some(set) = set {
                self.release_holder_set(set);
            }
        }
    }

    /// One entry naming holder set `set` is gone: the set goes with the last one.
    fn release_holder_set(&mut self, set: u64) {
        let Some(count) = self.log.holder_sets.get_mut(&set) else { return };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.log.holder_sets.remove(&set);
            self.holder_sets.remove(&set);
            self.evicted_holder_sets.push(set);
        }
    }

    /// The entry that went to `device` as the bytes with `reference` (the original, or the
    /// answer to its last retry request), with the mark of the identity it went to, unless it is
    /// older than the age limit at `clock` (then it is as good as wiped, whether or not a send
    /// has wiped it yet).
    pub(crate) fn find(
        &self,
        device: DeviceAddress,
        reference: &[u8; 16],
        clock: Timestamp,
    ) -> Option<(u64, &SentMessage, IdentityMark)> {
        let max_age = self.log.limits.max_age_secs;
        let mut live =
            self.entries.iter().filter(|(_, entry)| clock.secs_since(entry.created) <= max_age);
        live.find_map(|(seq, entry)| {
            let answered = entry.retries.iter().any(|answered| {
                answered.device == device
                    && (crypto::ct_eq(&answered.answer, reference)
                        || crypto::ct_eq(&answered.asked.0, reference))
            });
            let mark = match &entry.recipients {
                Recipients::Devices(devices) => devices
                    .iter()
                    .find(|(d, _, r)| *d == device && (answered || crypto::ct_eq(r, reference)))
                    .map(|(_, mark, _)| *mark),
                Recipients::Holders { set, reference: sent } => {
                    let holders = &self.holder_sets.get(set)?.0;
                    (answered || crypto::ct_eq(sent, reference))
                        .then(|| holders.binary_search_by_key(&device, |(d, _)| *d).ok())
                        .flatten()
                        .and_then(|at| holders.get(at))
                        .map(|(_, mark)| *mark)
                }
            };
            mark.map(|mark| (*seq, entry, mark))
        })
    }

    /// True if restored state respects the bounds: at most the entries the limits allow, each
    /// one live, and the holder sets exactly those live entries name, each named as often as
    /// it is counted.
    pub(crate) fn within_limits(&self) -> bool {
        let max_holders =
            (crate::consts::MAX_GROUP_MEMBERS + 1) * (crate::consts::MAX_COMPANIONS + 1);
        let mut named: BTreeMap<u64, u32> = BTreeMap::new();
        for (_, _, set) in &self.log.live {
            if let Some(set) = set {
                *named.entry(*set).or_default() += 1;
            }
        }
        self.log.live.len() <= usize::try_from(self.log.limits.max_entries).unwrap_or(usize::MAX)
            && self.entries.keys().all(|seq| self.log.live.iter().any(|(s, _, _)| s == seq))
            && named == self.log.holder_sets
            && self.holder_sets.keys().all(|set| named.contains_key(set))
            && self.holder_sets.values().all(|holders| {
                holders.0.len() <= max_holders
                    && holders.0.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0))
            })
    }
}

/// What a device remembers about one sending device: the ids of the messages it delivered
/// last, and the retries it asked for.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    /// The ids of the messages delivered last, each with the reference of the envelope that
    /// carried it: newest last, at most [`MESSAGE_ID_WINDOW`].
    seen: VecDeque<([u8; 16], [u8; 16])>,
    /// Per failed envelope (its reference), how many retries were asked for; newest last, at most
    /// [`MAX_RETRY_STATES`].
    retries: VecDeque<([u8; 16], u8)>,
}

/// Failed messages a device remembers its retry count for, per sending device.
pub(crate) const MAX_RETRY_STATES: usize = 32;

impl PeerRecord {
    /// True if a message with this id was delivered from this device recently.
    pub(crate) fn delivered(&self, id: &[u8; 16]) -> bool {
        self.seen.iter().any(|(seen, _)| seen == id)
    }

    /// True if an envelope with this reference delivered a message recently: it is a replay.
    fn replayed(&self, reference: &[u8; 16]) -> bool {
        self.seen.iter().any(|(_, seen)| seen == reference)
    }

    /// Remembers a delivered message id and the reference of the envelope that carried it.
    pub(crate) fn deliver(&mut self, id: [u8; 16], reference: [u8; 16]) {
        self.seen.push_back((id, reference));
        while self.seen.len() > MESSAGE_ID_WINDOW {
            self.seen.pop_front();
        }
    }

    /// The next retry count for the envelope with `reference`, counted; `None` once
    /// [`MAX_RETRIES`] were asked for.
    fn next_retry(&mut self, reference: [u8; 16]) -> Option<u8> {
        let position = self.retries.iter().position(|(r, _)| *r == reference);
        let count = position.and_then(|p| self.retries.get(p)).map_or(0, |(_, c)| *c);
        if usize::from(count) >= MAX_RETRIES {
            return None;
        }
        let next = count + 1;
        if let Some(p) = position {
            self.retries.remove(p);
        }
        self.retries.push_back((reference, next));
        while self.retries.len() > MAX_RETRY_STATES {
            self.retries.pop_front();
        }
        Some(next)
    }

    /// True if restored state respects the bounds.
    pub(crate) fn within_limits(&self) -> bool {
        self.seen.len() <= MESSAGE_ID_WINDOW && self.retries.len() <= MAX_RETRY_STATES
    }
}

/// Why a message could not be read, as a retry request states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// No session with the sender, or not the one the message names.
    NoSession,
    /// The message failed authentication or its chain is unknown: the session state differs
    /// from the sender's (a restore from an old backup, say).
    SessionLost,
    /// The message reused a key already spent: the sender was restored from an old backup.
    KeyReused,
    /// The prekey the initial message names is gone (used, expired, or rotated away).
    PrekeyGone,
    /// No sender key for the group message.
    NoSenderKey,
}

impl RetryReason {
    /// The reason a receive failure can be cured by a fresh session, if it can.
    pub fn for_error(error: &ReceiveError) -> Option<Self> {
        Some(match error {
            ReceiveError::Session(SessionError::NoSession(_) | SessionError::UnknownSession(_)) => {
                Self::NoSession
            }
            ReceiveError::Session(
                SessionError::AuthenticationFailed | SessionError::NoReceivingChain,
            ) => Self::SessionLost,
            ReceiveError::Session(SessionError::Duplicate) => Self::KeyReused,
            ReceiveError::Session(
                SessionError::UnknownOneTimePrekey(_) | SessionError::UnknownSignedPrekey(_),
            ) => Self::PrekeyGone,
            ReceiveError::NoSenderKey { .. } => Self::NoSenderKey,
            _ => return None,
        })
    }

    fn to_byte(self) -> u8 {
        match self {
            Self::NoSession => 1,
            Self::SessionLost => 2,
            Self::KeyReused => 3,
            Self::PrekeyGone => 4,
            Self::NoSenderKey => 5,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte {
            1 => Self::NoSession,
            2 => Self::SessionLost,
            3 => Self::KeyReused,
            4 => Self::PrekeyGone,
            5 => Self::NoSenderKey,
            _ => return Err(DecodeError::OutOfRange),
        })
    }
}

/// A receiver's signed request that a sender re-encrypt one message on a fresh session.
///
/// ```text
/// RetryRequest = 0x01 || 0x60 || requester (12) || sender (12) || message ref (16)
///                || count (u8, 1..=5) || reason (u8) || issued at (u64)
///                || SignedPrekeyPublic (100) || signature (64)
/// signature    = Sign(requester identity, "multidevice/v1/sig/retry-request", every byte before)
/// ```
///
/// The message ref is the last 16 bytes of the envelope (its AEAD tag) or group message (the end
/// of its signature) that failed: the receiver cannot read the id inside a message it could not
/// decrypt, and those bytes are unique per message without the sender hashing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRequest {
    /// The device asking.
    pub requester: DeviceAddress,
    /// The device that sent the message.
    pub sender: DeviceAddress,
    /// The last 16 bytes of the envelope (or group message) that failed.
    pub message_ref: [u8; 16],
    /// Which retry this is for the message, from 1.
    pub count: u8,
    /// Why the message failed.
    pub reason: RetryReason,
    /// The requester's clock mark when it asked.
    pub issued_at: Timestamp,
    /// The requester's current signed prekey: the fresh session starts from it.
    pub signed_prekey: SignedPrekeyPublic,
    signature: [u8; 64],
}

impl Codec<'_> for RetryRequest {
    const TYPE: u8 = 0x60;
    const MIN_BODY_LEN: usize = 12 + 12 + 16 + 1 + 1 + 8 + SignedPrekeyPublic::LEN + 64;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        self.write_signed_body(out);
        out.extend_from_slice(&self.signature);
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let requester = DeviceAddress::read(reader)?;
        let sender = DeviceAddress::read(reader)?;
        let message_ref = reader.array()?;
        let count = reader.u8()?;
        if count == 0 || usize::from(count) > MAX_RETRIES {
            return Err(DecodeError::OutOfRange);
        }
        let reason = RetryReason::from_byte(reader.u8()?)?;
        let issued_at = Timestamp(reader.u64()?);
        let signed_prekey = SignedPrekeyPublic::read(reader)?;
        let signature = reader.array()?;
        Ok(Self {
            requester,
            sender,
            message_ref,
            count,
            reason,
            issued_at,
            signed_prekey,
            signature,
        })
    }
}

impl TryFrom<&[u8]> for RetryRequest {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}

impl RetryRequest {
    fn write_signed_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.requester.to_bytes());
        out.extend_from_slice(&self.sender.to_bytes());
        out.extend_from_slice(&self.message_ref);
        out.push(self.count);
        out.push(self.reason.to_byte());
        out.extend_from_slice(&self.issued_at.0.to_be_bytes());
        self.signed_prekey.write(out);
    }

    /// The bytes the signature covers: version, type and every field before it.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + Self::MIN_BODY_LEN - 64);
        out.extend_from_slice(&[crate::wire::VERSION, Self::TYPE]);
        self.write_signed_body(&mut out);
        out
    }

    /// The canonical encoding, to send to the sender device.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }

    /// Checks the signature and the signed prekey's under `identity`.
    pub(crate) fn verify(&self, identity: &PublicIdentity) -> Result<(), ReceiveError> {
        crypto::verify(
            identity.verifying_key(),
            label::SIG_RETRY_REQUEST,
            &[&self.signed_bytes()],
            &self.signature,
            SignatureKind::RetryRequest,
        )
        .map_err(|error| ReceiveError::Session(SessionError::Key(error)))?;
        self.signed_prekey
            .verify(identity)
            .map_err(|error| ReceiveError::Session(SessionError::Key(error)))
    }
}

impl crate::device::Device {
    /// A retry request for `envelope`, which failed with `error` at this device, to send to its
    /// sender; `None` if a fresh session cannot cure `error`, if the envelope names no sender,
    /// or once [`MAX_RETRIES`] requests were made for it. Asking counts the request (a
    /// documented latch), so a later one carries a higher count.
    pub fn retry_request(
        &mut self,
        envelope: &[u8],
        error: &ReceiveError,
        now: Timestamp,
    ) -> Option<RetryRequest> {
        self.try_retry_request(envelope, error, now).ok()
    }

    /// [`crate::Device::retry_request`], saying why no request is made.
    fn try_retry_request(
        &mut self,
        envelope: &[u8],
        error: &ReceiveError,
        now: Timestamp,
    ) -> Result<RetryRequest, NoRetry> {
        self.observe(now);
        let reason = RetryReason::for_error(error).ok_or(NoRetry::NotRecoverable)?;
        let sender = claimed_sender(envelope).ok_or(NoRetry::NotRecoverable)?;
        if sender == self.address {
            return Err(NoRetry::NotRecoverable);
        }
        let message_ref = message_ref(envelope).ok_or(NoRetry::NotRecoverable)?;
        let peer = self.peers.entry(sender).or_default();
        // Whatever the failure (a spent key, or a chain or session dropped since), the very
        // envelope that delivered a message is the server replaying it, not a sender restored
        // from a backup nor a lost session: nothing to ask for.
        if peer.replayed(&message_ref) {
            return Err(NoRetry::Replayed);
        }
        let count = peer.next_retry(message_ref).ok_or(NoRetry::GaveUp)?;
        let mut request = RetryRequest {
            requester: self.address,
            sender,
            message_ref,
            count,
            reason,
            issued_at: self.clock,
            signed_prekey: self.prekeys.signed_public(),
            signature: [0u8; 64],
        };
        request.signature = crypto::sign(
            self.identity.signing_key(),
            label::SIG_RETRY_REQUEST,
            &[&request.signed_bytes()],
        );
        Ok(request)
    }
}

/// Why a failed envelope yields no retry request.
enum NoRetry {
    /// A fresh session cannot cure the failure, or the envelope names no other sender.
    NotRecoverable,
    /// The envelope delivered a message before: the server replays it.
    Replayed,
    /// Every retry for the envelope was asked for: the message is lost.
    GaveUp,
}

/// The reference of an envelope or group message: its last 16 bytes.
pub(crate) fn message_ref(message: &[u8]) -> Option<[u8; 16]> {
    message.split_last_chunk::<16>().map(|(_, tail)| *tail)
}

/// The sending device an envelope or group message names, read without authenticating it.
pub(crate) fn claimed_sender(envelope: &[u8]) -> Option<DeviceAddress> {
    match envelope.get(1) {
        Some(
            &crate::session::message::TYPE_MESSAGE | &crate::session::message::TYPE_PREKEY_MESSAGE,
        ) => DeviceAddress::from_slice(envelope.get(3..15)?),
        Some(&crate::group::wire::GroupMessage::TYPE) => {
            DeviceAddress::from_slice(envelope.get(18..30)?)
        }
        _ => None,
    }
}

impl crate::device::Device {
    /// Keeps a message just sent for retries: its id, what it was, its payload (unless larger
    /// than [`crate::consts::MAX_MESSAGE_PLAINTEXT`], which is not kept) and, per device, the
    /// mark of the identity it went to and the reference of what the device got.
    pub(crate) fn remember_sent(
        &mut self,
        message_id: [u8; 16],
        kind: SentKind,
        payload: &[u8],
        recipients: Recipients,
    ) {
        // Counted whether it is kept or not: a receiver's window counts it either way.
        self.sent.issue(1);
        if payload.len() > crate::consts::MAX_MESSAGE_PLAINTEXT {
            return;
        }
        if matches!(&recipients, Recipients::Devices(devices) if devices.is_empty()) {
            return;
        }
        let entry = SentMessage {
            message_id,
            created: self.clock,
            kind,
            payload: SecretBytes(payload.to_vec()),
            recipients,
            retries: Vec::new(),
            issued: self.sent.log.issued,
        };
        self.sent.add(entry, self.clock);
    }

    /// Sets how many messages, and for how long, this device keeps for retries (defaults:
    /// [`DEFAULT_SENT_CACHE_ENTRIES`], [`DEFAULT_SENT_CACHE_AGE_SECS`]). Tightening them wipes
    /// what no longer fits at once. Zero entries keeps nothing: no retry can then be answered.
    pub fn set_sent_cache_limits(&mut self, limits: SentCacheLimits) {
        self.sent.log.limits = limits;
        let clock = self.clock;
        self.sent.prune(clock);
    }
}

/// A message re-encrypted for a retry, on a fresh session with the device that asked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetryAnswer {
    /// The message id, the same as the original's: the receiver delivers it once.
    pub message_id: [u8; 16],
    /// The envelope for the device that asked.
    pub envelope: Envelope,
    /// The shared body the envelope refers to, for a payload above the inline threshold.
    pub body: Option<Vec<u8>>,
    /// The outbox item holding it, when a [`crate::StoredDevice`] committed it.
    pub outbox: Option<crate::OutboxId>,
}

/// A receive failure, with the retry request to send its sender when a fresh session can
/// cure it (see [`crate::Device::receive_or_retry`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiveFailure {
    /// Why the message was refused.
    pub error: ReceiveError,
    /// The request to send to the message's sender, if the failure is recoverable and retries
    /// are left.
    pub retry: Option<Box<RetryRequest>>,
    /// True when the failure was recoverable but every retry was already asked for: the message
    /// is lost, for the app to show. False for a replay of an envelope that delivered a message.
    pub gave_up: bool,
}

impl From<ReceiveError> for ReceiveFailure {
    /// A failure that asks for no retry.
    fn from(error: ReceiveError) -> Self {
        Self { error, retry: None, gave_up: false }
    }
}

impl From<crate::store::StoreError> for ReceiveFailure {
    fn from(error: crate::store::StoreError) -> Self {
        ReceiveError::Store(error).into()
    }
}

impl crate::device::Device {
    /// [`crate::Device::receive`], and on a failure a fresh session can cure, the signed
    /// [`RetryRequest`] to send the message's sender, so nothing is lost: the sender
    /// re-encrypts the message on a fresh session and this device delivers it once. Asking
    /// counts the request (a documented latch); after [`MAX_RETRIES`] for one message the
    /// failure reports `gave_up`.
    pub fn receive_or_retry(
        &mut self,
        envelope: &[u8],
        body: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<crate::Received, ReceiveFailure> {
        self.receive(envelope, body, now).map_err(|error| {
            match self.try_retry_request(envelope, &error, now) {
                Ok(request) => {
                    ReceiveFailure { error, retry: Some(Box::new(request)), gave_up: false }
                }
                Err(NoRetry::GaveUp) => ReceiveFailure { error, retry: None, gave_up: true },
                Err(NoRetry::NotRecoverable | NoRetry::Replayed) => {
                    ReceiveFailure { error, retry: None, gave_up: false }
                }
            }
        })
    }

    /// Re-encrypts the message a verified retry request names, on a fresh session set up from
    /// the request's signed prekey under the identity the newest list names for the requester.
    ///
    /// Refused: a requester the newest list no longer authorizes, or whose account has an
    /// identity change pending ([`NotAuthorized`](crate::error::RetryError::NotAuthorized)); a
    /// message no longer in the
    /// sent-message cache, or one the requester was never sent
    /// ([`NotCached`](crate::error::RetryError::NotCached)); a request answered already
    /// ([`Replayed`](crate::error::RetryError::Replayed)); the [`MAX_RETRIES`]-th
    /// answer already given ([`GaveUp`](crate::error::RetryError::GaveUp)). A group message is
    /// re-sent pairwise (kind `GroupCopy`), and the
    /// requester gets the group's current sender key with the next group send.
    pub fn answer_retry(
        &mut self,
        rng: &mut (impl rand_core::CryptoRng + ?Sized),
        request: &crate::VerifiedRetryRequest,
        now: Timestamp,
    ) -> Result<RetryAnswer, crate::error::RetryError> {
        use crate::error::RetryError;
        self.observe(now);
        self.require_active()?;
        let request = request.request();
        let device = request.requester;
        // While its account has an identity change pending, nothing is sent to the account
        // (§9), an answer no more than a fan-out: the newest verified list names another
        // identity, which the user has not accepted.
        let listed = match self.authorize(device) {
            Ok(_) if self.identity_change_pending(device.account) => {
                return Err(RetryError::NotAuthorized(device));
            }
            Ok(authorized) => authorized.identity().clone(),
            Err(_) => return Err(RetryError::NotAuthorized(device)),
        };
        request.verify(&listed).map_err(|_| RetryError::NotAuthorized(device))?;
        let (seq, entry, mark) = self
            .sent
            .find(device, &request.message_ref, self.clock)
            .ok_or(RetryError::NotCached)?;
        // Sent to another identity at that address: never this one's to read. Or followed by
        // so many messages that the requester may have forgotten its id: answered, it could be
        // delivered twice.
        if !crypto::ct_eq(&mark, &entry.kind.identity_mark(&listed))
            || !self.sent.recognizable(entry)
        {
            return Err(RetryError::NotCached);
        }
        let entry = entry.clone();
        let answered = entry.retries.iter().find(|answered| answered.device == device);
        let answers = answered.map_or(0, |answered| answered.answers);
        if usize::from(answers) >= MAX_RETRIES {
            return Err(RetryError::GaveUp { message_id: entry.message_id });
        }
        if answered.is_some_and(|answered| !answered.asks_anew(&request.message_ref, request.count))
        {
            return Err(RetryError::Replayed);
        }
        let bundle = crate::PrekeyBundle {
            address: device,
            identity: listed,
            signed_prekey: request.signed_prekey.clone(),
            one_time_prekey: None,
        }
        .verify()
        .map_err(|error| RetryError::Session(SessionError::Key(error)))?;
        let (list_version, list_digest) = self.own_list_announcement();
        let own = self.address.account;
        let payload = entry.payload.0.as_slice();
        let body_key = (payload.len() > crate::consts::INLINE_THRESHOLD
            && !matches!(entry.kind, SentKind::History))
        .then(|| {
            let mut key = crypto::Secret32::new([0u8; 32]);
            rng.fill_bytes(key.as_mut_bytes());
            key
        });
        let body = body_key.as_ref().map(|key| crate::fanout::seal_body(key, payload));
        let content = match (&body_key, &body) {
            (Some(key), Some(body)) => {
                use sha2::Digest;
                crate::fanout::Content::Body {
                    key: key.as_bytes(),
                    digest: sha2::Sha256::digest(body).into(),
                }
            }
            _ => crate::fanout::Content::Inline(payload),
        };
        let (kind, group, to, content) = match &entry.kind {
            SentKind::Fanout { to } if device.account == own => {
                (crate::MessageKind::OwnCopy, None, to.clone(), content)
            }
            SentKind::Fanout { .. } => (crate::MessageKind::Direct, None, Vec::new(), content),
            SentKind::History => (
                crate::MessageKind::History,
                None,
                Vec::new(),
                crate::fanout::Content::History(payload),
            ),
            SentKind::Group { group, membership } => {
                (crate::MessageKind::GroupCopy, Some((*group, *membership)), Vec::new(), content)
            }
        };
        let inner = crate::fanout::Inner {
            list_version,
            list_digest,
            message_id: entry.message_id,
            group,
            to,
            content,
        };
        let plaintext = inner.encode();
        self.start_session_with(rng, &bundle)?;
        let bytes = self.seal(rng, device, kind, &plaintext)?;
        if let SentKind::Group { group, .. } = &entry.kind
            && let Some(state) = self.groups.get_mut(group)
        {
            // It may lack the key: the next send gives it the current one again. It stays a
            // holder (its distribution may yet arrive, late), so its departure still rotates.
            // Not a holder of the current key (it was rotated since), it gets it as any device
            // the next send reaches.
            if state.holders.contains_key(&device) {
                state.resend.insert(device);
            }
            state.settled = None;
        }
        if let Some(kept) = self.sent.entries.get_mut(&seq) {
            kept.retries.retain(|answered| answered.device != device);
            kept.retries.push(Answered {
                device,
                answers: answers + 1,
                asked: (request.message_ref, request.count),
                answer: message_ref(&bytes).unwrap_or_default(),
            });
        }
        self.sent.issue(1);
        Ok(RetryAnswer {
            message_id: entry.message_id,
            envelope: Envelope { recipient: device, bytes },
            body,
            outbox: None,
        })
    }
}
