//! A device: its identity, its prekeys, its sessions with every remote device, and the device
//! lists it holds.
//!
//! [`Device`] is the one stateful object an app holds per local device. Every method that changes
//! it takes `&mut self` and either succeeds completely or leaves it as it was (but for the
//! documented latches: the clock high-water mark, announced list versions, a pending identity
//! change), so an app persists it ([`Device::to_bytes`]) after every call, successful or not,
//! and before sending what the call produced; or keeps it in a store ([`crate::StoredDevice`]),
//! which does both per call. It never performs I/O and never reads a clock.
//!
//! This module owns the session core every path goes through: [`Device::open`] computes a
//! decryption without changing anything and [`Device::commit`] applies it, so a caller can run
//! every check between the two. It never decides who may send or receive: that is the caller's
//! (the authorized paths in `fanout`, `receive` and `history`, or the raw [`crate::hazmat`]).

use std::collections::BTreeMap;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::account::legacy::{LegacyKnownAccount, LegacyRole};
use crate::account::{KnownAccounts, Role};
use crate::consts::{DEFAULT_MAX_FORWARD_JUMP, MAX_FORWARD_JUMP_CEILING, MAX_MESSAGE_PLAINTEXT};
use crate::crypto;
use crate::error::{DecodeError, SessionError};
use crate::group::receiver::GroupReceiver;
use crate::group::{GroupId, GroupSender};
use crate::keys::{DeviceAddress, Fingerprint, IdentityKeyPair, PublicIdentity, Timestamp};
use crate::prekeys::{
    LegacyPrekeys, OneTimePrekey, OneTimePrekeyPublic, PrekeyStore, PrekeyUpload,
    SignedPrekeyPublic, SignedPrekeys, VerifiedPrekeyBundle,
};
use crate::retry::{HolderSet, PeerRecord, SentCache, SentLog, SentMessage};
use crate::session::handshake;
use crate::session::message::{MessageKind, SessionMessage, write_prefix};
use crate::session::ratchet::{Commit, Session};
use crate::session::record::SessionRecord;

/// Version of the persisted [`Device`] format.
const STATE_FORMAT: u16 = 3;

/// The format before one-time prekeys recorded when they were generated; still imported.
const LEGACY_STATE_FORMAT: u16 = 2;

/// Longest prefix a session message can have before its ciphertext, plus the session's
/// associated data: the size of the stack buffer the AEAD's associated data is built in.
const MAX_AAD_LEN: usize = 32 + 3 + 24 + PublicIdentity::LEN + 32 + 4 + 5 + 68;

/// A public summary of the sessions held with one remote device, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Identifier of the active session.
    pub active_session: [u8; 16],
    /// Whether the remote device has answered on the active session.
    pub confirmed: bool,
    /// Number of archived sessions.
    pub archived: usize,
    /// Skipped message keys held by the active session.
    pub skipped_keys: usize,
    /// Receiving chains held by the active session.
    pub receiver_chains: usize,
}

/// One local device with all of its long-term and session state.
///
/// Messages go out through [`Device::encrypt_fanout`] (and [`Device::encrypt_history`]) and come
/// in through [`Device::receive`], the single entry point for everything a peer sends. Both
/// work only with devices a verified device list authorizes.
///
/// ```
/// use multidevice::{AccountId, Device, DeviceAddress, DeviceId, Received, Timestamp};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
/// let now = Timestamp(1_700_000_000);
/// let mut alice = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId::PRIMARY), now);
/// let mut bob = Device::new(&mut rng, DeviceAddress::new(AccountId(2), DeviceId::PRIMARY), now);
/// bob.generate_one_time_prekeys(&mut rng, 10)?;
///
/// // Each primary publishes its signed device list; the other verifies it.
/// let alice_list = alice.device_list(alice.account()).unwrap().signed_bytes().to_vec();
/// let bob_list = bob.device_list(bob.account()).unwrap().signed_bytes().to_vec();
/// alice.process_device_list(&bob_list, now)?;
/// bob.process_device_list(&alice_list, now)?;
///
/// // Bob uploads prekeys; the server hands Alice a bundle for every device of Bob's list.
/// let bundle = bob.prekey_upload().bundle(Some(0));
/// let sent = alice.encrypt_fanout(&mut rng, &[bob.account()], &[bundle], b"hello Bob", now)?;
///
/// let Received::Message(message) = bob.receive(&sent.envelopes[0].bytes, None, now)? else {
///     unreachable!("a fan-out to Bob is a message")
/// };
/// assert_eq!(message.payload.as_slice(), b"hello Bob");
/// assert_eq!(message.sender, alice.address());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Device {
    pub(crate) address: DeviceAddress,
    pub(crate) identity: IdentityKeyPair,
    pub(crate) prekeys: PrekeyStore,
    pub(crate) sessions: BTreeMap<DeviceAddress, SessionRecord>,
    pub(crate) max_forward_jump: u32,
    pub(crate) role: Role,
    pub(crate) accounts: KnownAccounts,
    /// The highest time the app has passed in: every time rule reads it, so winding the clock
    /// back cannot extend a deadline.
    pub(crate) clock: Timestamp,
    /// Moves whenever a held list, or what makes it trusted (announcements, a pending identity
    /// change), changes: a group send that found its devices unchanged since skips the work.
    pub(crate) list_epoch: u64,
    /// The groups this device sends to.
    pub(crate) groups: Groups,
    /// The sender keys other devices distributed, per sending device and group.
    pub(crate) group_keys: GroupKeys,
    /// Per sending device: the message ids it delivered last, and the retries asked of it.
    pub(crate) peers: Peers,
    /// The messages this device sent, kept for retries.
    pub(crate) sent: SentCache,
}

/// The device's own record: every field of [`Device`] but its one-time prekeys, sessions and
/// held lists, which are records of their own.
pub(crate) type MetaRef<'a> =
    (&'a DeviceAddress, &'a IdentityKeyPair, &'a SignedPrekeys, u32, &'a Role, (Timestamp, u64));
/// The owned form of [`MetaRef`].
pub(crate) type MetaOwned =
    (DeviceAddress, IdentityKeyPair, SignedPrekeys, u32, Role, (Timestamp, u64));
/// Sender states by group.
pub(crate) type Groups = BTreeMap<GroupId, GroupSender>;
/// Received sender keys, by sending device and group.
pub(crate) type GroupKeys = BTreeMap<(DeviceAddress, GroupId), GroupReceiver>;
/// What a device remembers per sending device.
pub(crate) type Peers = BTreeMap<DeviceAddress, PeerRecord>;
/// The sent-message cache's entries, by number.
pub(crate) type SentEntries = BTreeMap<u64, SentMessage>;
/// The sent-message cache's holder sets, by number.
pub(crate) type HolderSets = BTreeMap<u64, HolderSet>;

/// The persisted form: the format version, the device's own record, then every other record.
/// Only [`Device::from_bytes`] reads it, and it validates what it read.
type StateRef<'a> = (
    u16,
    MetaRef<'a>,
    &'a BTreeMap<u32, OneTimePrekey>,
    &'a BTreeMap<DeviceAddress, SessionRecord>,
    &'a KnownAccounts,
    &'a Groups,
    &'a GroupKeys,
    &'a Peers,
    &'a SentLog,
    &'a SentEntries,
    &'a HolderSets,
);
type StateOwned = (
    u16,
    MetaOwned,
    BTreeMap<u32, OneTimePrekey>,
    BTreeMap<DeviceAddress, SessionRecord>,
    KnownAccounts,
    Groups,
    GroupKeys,
    Peers,
    SentLog,
    SentEntries,
    HolderSets,
);
/// Persisted format 2, imported by [`Device::from_bytes`].
type LegacyState = (
    u16,
    DeviceAddress,
    IdentityKeyPair,
    LegacyPrekeys,
    BTreeMap<DeviceAddress, SessionRecord>,
    u32,
    LegacyRole,
    BTreeMap<crate::keys::AccountId, LegacyKnownAccount>,
    Timestamp,
);

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("address", &self.address)
            .field("identity", &self.identity.public().fingerprint())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// A decryption computed on an unchanged device, applied only by [`Device::commit`].
pub(crate) struct Opened {
    /// The sending device, authenticated by the session.
    pub(crate) sender: DeviceAddress,
    /// The fingerprint of the sending device's identity.
    pub(crate) sender_fingerprint: Fingerprint,
    /// True when the message starts a new session.
    pub(crate) new_session: bool,
    /// The plaintext, wiped on drop.
    pub(crate) plaintext: Zeroizing<Vec<u8>>,
    change: SessionChange,
}

enum SessionChange {
    /// The message decrypted on the held session at this index of the sender's record.
    Existing { index: usize, commit: Commit },
    /// The message started a new session.
    New { identity: PublicIdentity, session: Box<Session>, one_time_prekey: Option<u32> },
}

impl Device {
    /// Creates a device with fresh identity keys and a first signed prekey.
    ///
    /// Device id 0 makes the account's primary, whose identity is the account identity; it
    /// signs its first device list (version 1, naming only itself) at once, to publish from
    /// [`Device::device_list`]. Any other id makes a companion waiting to be linked; linking
    /// assigns its final address.
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        address: DeviceAddress,
        now: Timestamp,
    ) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let prekeys = PrekeyStore::new(rng, &identity);
        let mut device = Self {
            address,
            identity,
            prekeys,
            sessions: BTreeMap::new(),
            max_forward_jump: DEFAULT_MAX_FORWARD_JUMP,
            role: Role::for_address(address),
            accounts: KnownAccounts::new(),
            clock: now,
            list_epoch: 0,
            groups: BTreeMap::new(),
            group_keys: BTreeMap::new(),
            peers: BTreeMap::new(),
            sent: SentCache::default(),
        };
        if address.device.is_primary() {
            // A new primary holds no list, so nothing was announced: signing cannot be refused.
            let _first = device.sign_list(Vec::new());
        }
        device
    }

    /// This device's address.
    pub fn address(&self) -> DeviceAddress {
        self.address
    }

    /// This device's public identity.
    pub fn public_identity(&self) -> &PublicIdentity {
        self.identity.public()
    }

    /// The highest time the app has passed to this device: every time rule reads it.
    pub fn clock(&self) -> Timestamp {
        self.clock
    }

    /// Raises the clock high-water mark. Every call that takes `now` does this first, whatever
    /// its outcome: the mark is a documented latch, not a change an error undoes.
    pub(crate) fn observe(&mut self, now: Timestamp) {
        self.clock = self.clock.max(now);
    }

    /// Everything the server needs to hand out prekey bundles for this device.
    pub fn prekey_upload(&self) -> PrekeyUpload {
        PrekeyUpload {
            address: self.address,
            identity: self.identity.public().clone(),
            signed_prekey: self.prekeys.signed_public(),
            one_time_prekeys: self.prekeys.one_time_publics(),
        }
    }

    /// Creates `count` one-time prekeys to upload, recording the clock high-water mark as their
    /// generation time. One-time prekeys generated more than
    /// [`crate::consts::ONE_TIME_PREKEY_LIFETIME_SECS`] before it are forgotten first: handed out
    /// but never used, they would otherwise fill the cap for good.
    ///
    /// Fails, changing nothing, with [`SessionError::TooManyOneTimePrekeys`] if the device would
    /// then hold more than [`crate::consts::MAX_ONE_TIME_PREKEYS`].
    pub fn generate_one_time_prekeys(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        count: usize,
    ) -> Result<Vec<OneTimePrekeyPublic>, SessionError> {
        let limit = crate::consts::MAX_ONE_TIME_PREKEYS;
        if self.live_one_time_prekeys().saturating_add(count) > limit {
            return Err(SessionError::TooManyOneTimePrekeys { limit });
        }
        self.prekeys.expire_one_time(self.clock);
        self.prekeys
            .generate_one_time(rng, count, self.clock)
            .ok_or(SessionError::TooManyOneTimePrekeys { limit })
    }

    /// How many one-time prekeys to generate and upload now to get back to
    /// [`crate::consts::ONE_TIME_PREKEY_TARGET`], counting only the ones that have not expired at
    /// the clock high-water mark. Zero when the device holds enough.
    pub fn one_time_prekeys_needed(&self) -> usize {
        crate::consts::ONE_TIME_PREKEY_TARGET.saturating_sub(self.live_one_time_prekeys())
    }

    /// Generates [`Device::one_time_prekeys_needed`] one-time prekeys (after forgetting expired
    /// ones) and returns them, to upload. Empty when none are needed.
    pub fn replenish_one_time_prekeys(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
    ) -> Vec<OneTimePrekeyPublic> {
        self.observe(now);
        let needed = self.one_time_prekeys_needed();
        // Needed keeps the live count at the target, below the cap, so this cannot fail.
        self.generate_one_time_prekeys(rng, needed).unwrap_or_default()
    }

    fn live_one_time_prekeys(&self) -> usize {
        self.prekeys.live_one_time(self.clock)
    }

    /// How many one-time prekeys are held, expired or not; see
    /// [`Device::one_time_prekeys_needed`] for how many to upload.
    pub fn one_time_prekeys_remaining(&self) -> usize {
        self.prekeys.one_time_remaining()
    }

    /// Replaces the signed prekey. The previous one keeps working for
    /// [`crate::consts::SIGNED_PREKEY_GRACE_SECS`] after the rotation (measured on the clock
    /// high-water mark).
    pub fn rotate_signed_prekey(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
    ) -> SignedPrekeyPublic {
        self.observe(now);
        self.prekeys.rotate_signed(rng, &self.identity, self.clock)
    }

    /// Sets how far ahead of a receiving chain a message may be (default
    /// [`DEFAULT_MAX_FORWARD_JUMP`], at most [`MAX_FORWARD_JUMP_CEILING`]).
    pub fn set_max_forward_jump(&mut self, limit: u32) -> Result<(), SessionError> {
        if limit == 0 || limit > MAX_FORWARD_JUMP_CEILING {
            return Err(SessionError::InvalidConfig);
        }
        self.max_forward_jump = limit;
        Ok(())
    }

    /// Starts a session with the device a verified bundle belongs to. The new session becomes
    /// active; earlier ones with that device are archived, or dropped if they were under another
    /// identity. Callers decide whether the device is authorized.
    pub(crate) fn start_session_with(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        bundle: &VerifiedPrekeyBundle,
    ) -> Result<(), SessionError> {
        let remote = bundle.bundle().address;
        if remote == self.address {
            return Err(SessionError::SelfSession);
        }
        let session = handshake::initiate(rng, &self.identity, self.address, bundle)?;
        let identity = bundle.bundle().identity.clone();
        match self.sessions.get_mut(&remote) {
            Some(record) => record.insert_initiated(identity, session),
            None => {
                self.sessions.insert(remote, SessionRecord::new(identity, session));
            }
        }
        Ok(())
    }

    /// True if an active session with `remote` exists.
    pub fn has_session(&self, remote: DeviceAddress) -> bool {
        self.sessions.get(&remote).is_some_and(|r| r.active().is_some())
    }

    /// A summary of the sessions with `remote`.
    pub fn session_info(&self, remote: DeviceAddress) -> Option<SessionInfo> {
        let record = self.sessions.get(&remote)?;
        let active = record.active()?;
        Some(SessionInfo {
            active_session: active.id,
            confirmed: active.is_confirmed(),
            archived: record.archived_len(),
            skipped_keys: active.skipped_len(),
            receiver_chains: active.receiver_chains(),
        })
    }

    /// The identity of the sessions held with `remote`.
    pub fn remote_identity(&self, remote: DeviceAddress) -> Option<&PublicIdentity> {
        self.sessions.get(&remote).map(|r| &r.remote_identity)
    }

    /// Forgets every session with `remote`.
    pub fn delete_sessions(&mut self, remote: DeviceAddress) {
        self.sessions.remove(&remote);
    }

    /// Encrypts `plaintext` as a message of `kind` on the active session with `remote`. The
    /// message key is spent: persist before sending.
    pub(crate) fn seal(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        remote: DeviceAddress,
        kind: MessageKind,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        if plaintext.len() > MAX_MESSAGE_PLAINTEXT {
            return Err(SessionError::PlaintextTooLarge(plaintext.len()));
        }
        let session = self
            .sessions
            .get_mut(&remote)
            .and_then(SessionRecord::active_mut)
            .ok_or(SessionError::NoSession(remote))?;
        seal_message(rng, session, kind, self.address, remote, self.identity.public(), plaintext)
    }

    /// Decrypts `message` without changing anything. `expected` is the identity the sender
    /// must have; `None` takes the identity of the sessions held (the raw path). A held record
    /// under another identity than `expected` is ignored, and a prekey message under another
    /// identity is refused before any prekey is touched.
    pub(crate) fn open(
        &self,
        message: &SessionMessage<'_>,
        expected: Option<&PublicIdentity>,
        now: Timestamp,
    ) -> Result<Opened, SessionError> {
        if message.recipient != self.address {
            return Err(SessionError::WrongRecipient { addressed_to: message.recipient });
        }
        let sender = message.sender;
        if sender == self.address {
            return Err(SessionError::SelfSession);
        }
        let max_jump = self.max_forward_jump;
        let held = self.sessions.get(&sender);
        let record = held.filter(|r| expected.is_none_or(|e| &r.remote_identity == e));
        if let Some(record) = record
            && let Some(index) = record.find(&message.header.session_id)
        {
            let session = record.get(index).ok_or(SessionError::UnknownSession(sender))?;
            let (plaintext, commit) = open_message(session, message, max_jump)?;
            return Ok(Opened {
                sender,
                sender_fingerprint: session.remote_fingerprint,
                new_session: false,
                plaintext,
                change: SessionChange::Existing { index, commit },
            });
        }
        let Some(fields) = &message.prekey else {
            return Err(match record {
                Some(_) => SessionError::UnknownSession(sender),
                None => SessionError::NoSession(sender),
            });
        };
        let claimed = &fields.sender_identity;
        let mismatch = match expected {
            Some(expected) => claimed != expected,
            None => held.is_some_and(|r| &r.remote_identity != claimed),
        };
        if mismatch {
            return Err(SessionError::IdentityMismatch(sender));
        }
        let signed_prekey = self
            .prekeys
            .signed_secret(fields.signed_prekey_id, now.max(self.clock))
            .ok_or(SessionError::UnknownSignedPrekey(fields.signed_prekey_id))?;
        let one_time_prekey = match fields.one_time_prekey_id {
            Some(id) => Some(
                self.prekeys
                    .one_time_secret(id, now.max(self.clock))
                    .ok_or(SessionError::UnknownOneTimePrekey(id))?,
            ),
            None => None,
        };
        let session = handshake::respond(
            &self.identity,
            self.address,
            sender,
            fields,
            signed_prekey,
            one_time_prekey,
        )?;
        let (plaintext, commit) = open_message(&session, message, max_jump)?;
        let mut session = Box::new(session);
        session.apply(commit);
        Ok(Opened {
            sender,
            sender_fingerprint: claimed.fingerprint(),
            new_session: true,
            plaintext,
            change: SessionChange::New {
                identity: claimed.clone(),
                session,
                one_time_prekey: fields.one_time_prekey_id,
            },
        })
    }

    /// Applies a decryption [`Device::open`] computed on this unchanged device: steps the
    /// ratchet, or keeps the new session and consumes the one-time prekey it used.
    pub(crate) fn commit(&mut self, opened: Opened) {
        let sender = opened.sender;
        match opened.change {
            SessionChange::Existing { index, commit } => {
                if let Some(record) = self.sessions.get_mut(&sender) {
                    if let Some(session) = record.get_mut(index) {
                        session.apply(commit);
                    }
                    record.promote(index);
                }
            }
            SessionChange::New { identity, session, one_time_prekey } => {
                if let Some(id) = one_time_prekey {
                    self.prekeys.consume_one_time(id);
                }
                match self.sessions.get_mut(&sender) {
                    Some(record) => record.insert_received(identity, *session),
                    None => {
                        self.sessions.insert(sender, SessionRecord::new(identity, *session));
                    }
                }
            }
        }
    }

    /// Serializes the whole device state, secrets included, in a compact versioned binary form.
    ///
    /// Store it encrypted at rest; the buffer is wiped on drop. An app that keeps state in a
    /// [`crate::store::Store`] never needs this: [`crate::StoredDevice`] commits each record an
    /// operation changed, and imports this form once.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let state: StateRef<'_> = (
            STATE_FORMAT,
            self.meta(),
            &self.prekeys.one_time,
            &self.sessions,
            &self.accounts,
            &self.groups,
            &self.group_keys,
            &self.peers,
            &self.sent.log,
            &self.sent.entries,
            &self.sent.holder_sets,
        );
        crate::wiping::to_wiped_bytes(&state)
    }

    /// The device's own record.
    pub(crate) fn meta(&self) -> MetaRef<'_> {
        (
            &self.address,
            &self.identity,
            &self.prekeys.signed,
            self.max_forward_jump,
            &self.role,
            (self.clock, self.list_epoch),
        )
    }

    /// A device from its own record and the other records an operation needs.
    pub(crate) fn from_records(
        meta: MetaOwned,
        one_time: BTreeMap<u32, OneTimePrekey>,
        sessions: BTreeMap<DeviceAddress, SessionRecord>,
        accounts: KnownAccounts,
        (groups, group_keys): (Groups, GroupKeys),
        (peers, sent): (Peers, SentCache),
    ) -> Self {
        let (address, identity, signed, max_forward_jump, role, (clock, list_epoch)) = meta;
        Self {
            address,
            identity,
            prekeys: PrekeyStore { signed, one_time },
            sessions,
            max_forward_jump,
            role,
            accounts,
            clock,
            list_epoch,
            groups,
            group_keys,
            peers,
            sent,
        }
    }

    /// Restores a device from [`Device::to_bytes`], the only way to load one. Rejects unknown
    /// format versions, trailing bytes, non-canonical encodings and any state beyond the crate's
    /// limits, so a tampered store cannot lift a bound (for example the forward-jump limit), and
    /// verifies every stored device list and link again, so edited state cannot add or change an
    /// authorized device. State in the previous format (2) is imported; its one-time prekeys
    /// count as generated at the device's clock high-water mark.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (format, _) =
            postcard::take_from_bytes::<u16>(bytes).map_err(|_| DecodeError::MalformedState)?;
        if format == LEGACY_STATE_FORMAT {
            return Self::from_legacy_bytes(bytes);
        }
        if format != STATE_FORMAT {
            return Err(DecodeError::MalformedState);
        }
        let (state, rest) = postcard::take_from_bytes::<StateOwned>(bytes)
            .map_err(|_| DecodeError::MalformedState)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        let (_, meta, one_time, sessions, accounts, groups, group_keys, peers, log, entries, sets) =
            state;
        let sent = SentCache {
            log,
            entries,
            holder_sets: sets,
            evicted: Vec::new(),
            evicted_holder_sets: Vec::new(),
        };
        let device = Self::from_records(
            meta,
            one_time,
            sessions,
            accounts,
            (groups, group_keys),
            (peers, sent),
        );
        if !device.is_consistent() || device.to_bytes().as_slice() != bytes {
            return Err(DecodeError::MalformedState);
        }
        Ok(device)
    }

    fn from_legacy_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (state, rest) = postcard::take_from_bytes::<LegacyState>(bytes)
            .map_err(|_| DecodeError::MalformedState)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        let (_, address, identity, prekeys, sessions, max_forward_jump, role, accounts, clock) =
            state;
        let device = Self {
            address,
            identity,
            prekeys: prekeys.upgrade(clock),
            sessions,
            max_forward_jump,
            role: role.upgrade(),
            accounts: accounts.into_iter().map(|(id, known)| (id, known.upgrade())).collect(),
            clock,
            list_epoch: 0,
            groups: BTreeMap::new(),
            group_keys: BTreeMap::new(),
            peers: BTreeMap::new(),
            sent: SentCache::default(),
        };
        if !device.is_consistent() {
            return Err(DecodeError::MalformedState);
        }
        Ok(device)
    }

    /// Every bound and invariant a live device keeps also holds for restored state.
    fn is_consistent(&self) -> bool {
        let own = self.address.account;
        let role_fits_address = match &self.role {
            Role::Primary(_) => {
                self.address.device.is_primary()
                    && self
                        .accounts
                        .get(&own)
                        .is_some_and(|k| k.list.account_identity() == self.identity.public())
            }
            Role::Companion(_) => !self.address.device.is_primary(),
        };
        (1..=MAX_FORWARD_JUMP_CEILING).contains(&self.max_forward_jump)
            && self.prekeys.one_time_remaining() <= crate::consts::MAX_ONE_TIME_PREKEYS
            && self.sessions.values().all(SessionRecord::within_limits)
            && self.groups.values().all(GroupSender::within_limits)
            && self.group_keys.values().all(GroupReceiver::within_limits)
            && self.peers.values().all(PeerRecord::within_limits)
            && self.sent.within_limits()
            && self.role.within_limits()
            && role_fits_address
            && self.accounts.iter().all(|(account, known)| {
                known.list.account() == *account
                    && known.within_limits()
                    && known.pending_change.as_ref().is_none_or(|p| p.account() == *account)
            })
    }
}

/// Read access to the prekey secrets, for `crate::test_support` only.
#[cfg(feature = "test-support")]
impl Device {
    pub(crate) fn prekey_store(&self) -> &PrekeyStore {
        &self.prekeys
    }
}

/// The AEAD associated data of a message: the session's associated data, then every byte of the
/// message before its ciphertext. Built in `buffer`; a prefix longer than any message can have
/// is an error, never a shorter associated data.
fn associated<'b>(
    session: &Session,
    authenticated: &[u8],
    buffer: &'b mut [u8; MAX_AAD_LEN],
) -> Result<&'b [u8], SessionError> {
    let len = 32 + authenticated.len();
    let too_long = DecodeError::TooLong { limit: MAX_AAD_LEN - 32, got: authenticated.len() };
    let aad = buffer.get_mut(..len).ok_or(too_long)?;
    let (ad, prefix) = aad.split_at_mut(32);
    ad.copy_from_slice(session.associated_data());
    prefix.copy_from_slice(authenticated);
    Ok(aad)
}

pub(crate) fn seal_message(
    rng: &mut (impl CryptoRng + ?Sized),
    session: &mut Session,
    kind: MessageKind,
    sender: DeviceAddress,
    recipient: DeviceAddress,
    own_identity: &PublicIdentity,
    plaintext: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let (header, key) = session.next_sending_key(rng)?;
    let prekey = session.prekey_fields(own_identity);
    let mut out = Vec::with_capacity(MAX_AAD_LEN + plaintext.len() + crypto::TAG_LEN);
    write_prefix(&mut out, kind, sender, recipient, prekey.as_ref(), &header);
    let mut aad = [0u8; MAX_AAD_LEN];
    let aad = associated(session, &out, &mut aad)?;
    crypto::seal_append(&key, &header.nonce, aad, &mut out, plaintext);
    Ok(out)
}

fn open_message(
    session: &Session,
    message: &SessionMessage<'_>,
    max_jump: u32,
) -> Result<(Zeroizing<Vec<u8>>, Commit), SessionError> {
    let (key, commit) = session.plan_decrypt(&message.header, max_jump)?;
    let mut aad = [0u8; MAX_AAD_LEN];
    let aad = associated(session, message.authenticated, &mut aad)?;
    let plaintext = crypto::open(key.as_bytes(), &message.header.nonce, aad, message.ciphertext)
        .map_err(|_| SessionError::AuthenticationFailed)?;
    Ok((plaintext, commit))
}
