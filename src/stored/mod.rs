//! A device whose state lives in a [`Store`], one record per concern, committed per operation.
//!
//! [`StoredDevice`] is the app-facing facade over the same protocol steps as [`Device`]. Each
//! call runs in one write transaction: it reads the device's own records and the records of
//! the accounts the call concerns (their held list and session records), runs the step, and
//! commits exactly the records whose bytes changed, together with what the step sends (the
//! outbox) and what it received (the inbox and the de-duplication record). Two processes on one
//! store take turns and each reads the other's commits, so neither loses an update or reuses a
//! message key; a crash at any point leaves the last commit. Loading trusts what the store
//! authenticated: signatures checked before storing are not checked again. This module owns
//! transactions; it never changes a protocol rule.

mod mailbox;
mod working;

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use mailbox::{Counters, DedupRecord, InboxRecord, OutboxRecord};
pub use mailbox::{DEDUP_WINDOW, Inbound, InboxId, OutboxId, OutboxItem};
use working::{OneTimeScope, Scope};

use crate::account::{AccountStatus, CompanionApproval, ListUpdate, PendingIdentityChange};
use crate::blob::BlobDescriptor;
use crate::device::{Device, SessionInfo};
use crate::device_list::{
    LogoutRequest, SignedDeviceIdentity, SignedDeviceList, VerifiedDeviceList,
};
use crate::error::{
    DecodeError, DeviceListError, FanoutError, GroupError, HistoryError, LinkError, ReceiveError,
    RetryError, SessionError, StoreError,
};
use crate::fanout::Envelope;
use crate::fanout::FanoutMessage;
use crate::group::wire::GroupMessage;
use crate::group::{GroupId, GroupSend, GroupSender};
use crate::keys::{AccountId, DeviceAddress, DeviceId, PublicIdentity, Timestamp};
use crate::linking::pairing::{CompanionPairing, PrimaryPairing};
use crate::linking::pairing_code::PairingCode;
use crate::linking::persist;
use crate::linking::qr::{QrLinkApproval, QrLinkOffer};
use crate::prekeys::{OneTimePrekeyPublic, PrekeyBundle, PrekeyUpload, SignedPrekeyPublic};
use crate::receive::VerifiedRetryRequest;
use crate::retry::{ReceiveFailure, RetryAnswer, RetryRequest, SentCacheLimits};
use crate::security_code::SecurityCode;
use crate::session::SessionMessage;
use crate::session::message::MessageKind;
use crate::store::sealed::{Keys, Sealed, StoreKey, decode, encode};
use crate::store::{Mode, Store, Table};
use crate::wire::Codec;

/// A device kept in a [`Store`]: the same protocol as [`Device`], with every call committed
/// atomically, what it sends kept in an outbox and what it receives in an inbox.
///
/// ```
/// use multidevice::store::{MemoryStore, StoreKey};
/// use multidevice::{AccountId, DeviceAddress, DeviceId, StoredDevice, Timestamp};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(3);
/// let key = StoreKey::generate(&mut rng);
/// let now = Timestamp(1_700_000_000);
/// let address = DeviceAddress::new(AccountId(1), DeviceId::PRIMARY);
/// let store = MemoryStore::new();
/// let device = StoredDevice::create(store.clone(), &key, &mut rng, address, now)?;
/// drop(device);
/// // Later, or in another process sharing the store:
/// let mut device = StoredDevice::open(store, &key, &mut rng)?;
/// assert_eq!(device.address(), address);
/// assert!(device.outbox()?.is_empty());
/// # Ok::<(), multidevice::store::StoreError>(())
/// ```
pub struct StoredDevice<S: Store> {
    store: S,
    keys: Keys,
    address: DeviceAddress,
    identity: PublicIdentity,
}

impl<S: Store> core::fmt::Debug for StoredDevice<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoredDevice")
            .field("address", &self.address)
            .field("identity", &self.identity.fingerprint())
            .finish_non_exhaustive()
    }
}

impl<S: Store> StoredDevice<S> {
    /// Creates a device with fresh identity keys (as [`Device::new`]) in an empty store.
    /// [`StoreError::AlreadyExists`] if the store holds a device.
    pub fn create(
        store: S,
        key: &StoreKey,
        rng: &mut (impl CryptoRng + ?Sized),
        address: DeviceAddress,
        now: Timestamp,
    ) -> Result<Self, StoreError> {
        let device = Device::new(rng, address, now);
        Self::create_from(store, key, rng, &device)
    }

    /// Moves a device persisted with [`Device::to_bytes`] (this version's format or the
    /// previous one) into an empty store: the one-time import of an app that kept the whole
    /// state as one blob. The bytes are checked as [`Device::from_bytes`] checks them.
    pub fn import(
        store: S,
        key: &StoreKey,
        rng: &mut (impl CryptoRng + ?Sized),
        state: &[u8],
    ) -> Result<Self, StoreError> {
        let device = Device::from_bytes(state).map_err(StoreError::InvalidImport)?;
        Self::create_from(store, key, rng, &device)
    }

    fn create_from(
        mut store: S,
        key: &StoreKey,
        rng: &mut (impl CryptoRng + ?Sized),
        device: &Device,
    ) -> Result<Self, StoreError> {
        let mut txn = store.transaction(Mode::Write)?;
        let mut keys = Keys::open(txn.as_mut(), key, rng, true)?;
        let mut txn = Sealed::new(txn, &mut keys);
        working::create(&mut txn, device)?;
        txn.commit()?;
        let (address, identity) = (device.address(), device.public_identity().clone());
        Ok(Self { store, keys, address, identity })
    }

    /// Opens the device a store holds. [`StoreError::WrongKey`] if `key` is not the store's,
    /// [`StoreError::Missing`] if it holds no device.
    pub fn open(
        mut store: S,
        key: &StoreKey,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<Self, StoreError> {
        let mut txn = store.transaction(Mode::Read)?;
        let mut keys = Keys::open(txn.as_mut(), key, rng, false)?;
        let mut txn = Sealed::new(txn, &mut keys);
        let identity = txn.get(Table::Meta, working::meta::IDENTITY)?;
        let identity = identity.ok_or(StoreError::Missing(Table::Meta))?;
        let (address, identity, _): (DeviceAddress, crate::keys::IdentityKeyPair, u32) =
            decode(Table::Meta, &identity)?;
        drop(txn);
        Ok(Self { store, keys, address, identity: identity.public().clone() })
    }

    /// The store, to close it or to open the device again later.
    pub fn into_store(self) -> S {
        self.store
    }

    /// This device's address (as of its last operation: linking assigns a companion's).
    pub fn address(&self) -> DeviceAddress {
        self.address
    }

    /// This device's account.
    pub fn account(&self) -> AccountId {
        self.address.account
    }

    /// This device's public identity.
    pub fn public_identity(&self) -> &PublicIdentity {
        &self.identity
    }

    /// Runs `op` on the records `scope` names in one write transaction and commits what it
    /// changed, whether it succeeded or failed: a failing step changes nothing but the
    /// documented latches, which must persist too. A store failure rolls everything back.
    fn run<T, E: From<StoreError>>(
        &mut self,
        scope: &Scope,
        op: impl FnOnce(&mut Device, &mut Sealed<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run_with(|_| Ok(scope.clone()), op)
    }

    /// [`StoredDevice::run`] with a scope worked out inside the transaction, from what the
    /// store holds.
    fn run_with<T, E: From<StoreError>>(
        &mut self,
        scope: impl FnOnce(&mut Sealed<'_>) -> Result<Scope, StoreError>,
        op: impl FnOnce(&mut Device, &mut Sealed<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut txn = Sealed::new(self.store.transaction(Mode::Write)?, &mut self.keys);
        let scope = scope(&mut txn)?;
        let (mut device, loaded) = working::load(&mut txn, &scope)?;
        let result = op(&mut device, &mut txn);
        working::save(&mut txn, &device, &loaded)?;
        txn.commit()?;
        self.address = device.address();
        result
    }

    /// Reads the records `scope` names and answers from them; changes nothing.
    fn read<T>(
        &mut self,
        scope: &Scope,
        query: impl FnOnce(&Device) -> T,
    ) -> Result<T, StoreError> {
        let mut txn = Sealed::new(self.store.transaction(Mode::Read)?, &mut self.keys);
        let (device, _) = working::load(&mut txn, scope)?;
        Ok(query(&device))
    }

    // ---------------------------------------------------------------------------------------
    // Prekeys and settings
    // ---------------------------------------------------------------------------------------

    /// Everything the server needs to hand out prekey bundles (see [`Device::prekey_upload`]).
    pub fn prekey_upload(&mut self) -> Result<PrekeyUpload, StoreError> {
        self.read(&Scope::own().with_one_time(OneTimeScope::All), Device::prekey_upload)
    }

    /// See [`Device::generate_one_time_prekeys`].
    pub fn generate_one_time_prekeys(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        count: usize,
    ) -> Result<Vec<OneTimePrekeyPublic>, SessionError> {
        self.run(&Scope::own().with_one_time(OneTimeScope::All), |device, _| {
            device.generate_one_time_prekeys(rng, count)
        })
    }

    /// See [`Device::one_time_prekeys_needed`].
    pub fn one_time_prekeys_needed(&mut self) -> Result<usize, StoreError> {
        self.read(&Scope::own().with_one_time(OneTimeScope::All), Device::one_time_prekeys_needed)
    }

    /// See [`Device::replenish_one_time_prekeys`].
    pub fn replenish_one_time_prekeys(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
    ) -> Result<Vec<OneTimePrekeyPublic>, StoreError> {
        self.run(&Scope::own().with_one_time(OneTimeScope::All), |device, _| {
            Ok(device.replenish_one_time_prekeys(rng, now))
        })
    }

    /// See [`Device::rotate_signed_prekey`].
    pub fn rotate_signed_prekey(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
    ) -> Result<SignedPrekeyPublic, StoreError> {
        self.run(&Scope::own(), |device, _| Ok(device.rotate_signed_prekey(rng, now)))
    }

    /// See [`Device::set_max_forward_jump`].
    pub fn set_max_forward_jump(&mut self, limit: u32) -> Result<(), SessionError> {
        self.run(&Scope::own(), |device, _| device.set_max_forward_jump(limit))
    }

    // ---------------------------------------------------------------------------------------
    // Device lists and the account
    // ---------------------------------------------------------------------------------------

    /// See [`Device::process_device_list`].
    pub fn process_device_list(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<ListUpdate, DeviceListError> {
        let scope = Scope::lists(SignedDeviceList::try_from(bytes).ok().map(|l| l.account()));
        self.run(&scope, |device, _| device.process_device_list(bytes, now))
    }

    /// See [`Device::accept_identity_change`].
    pub fn accept_identity_change(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<ListUpdate, DeviceListError> {
        let scope = Scope::lists(SignedDeviceList::try_from(bytes).ok().map(|l| l.account()));
        self.run(&scope, |device, _| device.accept_identity_change(bytes, now))
    }

    /// See [`Device::reject_identity_change`].
    pub fn reject_identity_change(
        &mut self,
        account: AccountId,
        now: Timestamp,
    ) -> Result<(), DeviceListError> {
        self.run(&Scope::lists([account]), |device, _| device.reject_identity_change(account, now))
    }

    /// The newest verified list held for `account` (see [`Device::device_list`]).
    pub fn device_list(
        &mut self,
        account: AccountId,
    ) -> Result<Option<VerifiedDeviceList>, StoreError> {
        self.read(&Scope::accounts([account]), |device| device.device_list(account).cloned())
    }

    /// See [`Device::pending_identity_change`].
    pub fn pending_identity_change(
        &mut self,
        account: AccountId,
    ) -> Result<Option<PendingIdentityChange>, StoreError> {
        self.read(&Scope::accounts([account]), |device| device.pending_identity_change(account))
    }

    /// See [`Device::security_code`].
    pub fn security_code(&mut self, remote: AccountId) -> Result<Option<SecurityCode>, StoreError> {
        self.read(&Scope::accounts([remote]), |device| device.security_code(remote))
    }

    /// See [`Device::lists_to_fetch`]. Reads every held list.
    pub fn lists_to_fetch(&mut self) -> Result<Vec<(AccountId, Option<u64>)>, StoreError> {
        self.read(&Scope::every_list(), Device::lists_to_fetch)
    }

    /// See [`Device::account_status`]. Changes nothing.
    pub fn account_status(&mut self, now: Timestamp) -> Result<AccountStatus, StoreError> {
        self.read(&Scope::own(), |device| device.account_status(now))
    }

    /// See [`Device::clock`].
    pub fn clock(&mut self) -> Result<Timestamp, StoreError> {
        self.read(&Scope::own(), Device::clock)
    }

    /// See [`Device::session_info`].
    pub fn session_info(
        &mut self,
        remote: DeviceAddress,
    ) -> Result<Option<SessionInfo>, StoreError> {
        self.read(&Scope::accounts([remote.account]), |device| device.session_info(remote))
    }

    /// Primary: see [`Device::approve_companion`].
    pub fn approve_companion(
        &mut self,
        companion: &PublicIdentity,
        now: Timestamp,
    ) -> Result<CompanionApproval, DeviceListError> {
        self.run(&Scope::own(), |device, _| device.approve_companion(companion, now))
    }

    /// Companion: see [`Device::countersign_approval`].
    pub fn countersign_approval(
        &mut self,
        approval: &CompanionApproval,
    ) -> Result<SignedDeviceIdentity, DeviceListError> {
        let scope = Scope::lists([approval.metadata.account]);
        self.run(&scope, |device, _| device.countersign_approval(approval))
    }

    /// Primary: see [`Device::add_companion`].
    pub fn add_companion(
        &mut self,
        signed: &SignedDeviceIdentity,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.run(&Scope::lists([]), |device, _| device.add_companion(signed, now))
    }

    /// Primary: see [`Device::remove_companion`].
    pub fn remove_companion(
        &mut self,
        device_id: DeviceId,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.run(&Scope::lists([]), |device, _| device.remove_companion(device_id, now))
    }

    /// Primary: see [`Device::refresh_device_list`].
    pub fn refresh_device_list(
        &mut self,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.run(&Scope::lists([]), |device, _| device.refresh_device_list(now))
    }

    /// Primary: see [`Device::process_logout`].
    pub fn process_logout(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.run(&Scope::lists([]), |device, _| device.process_logout(bytes, now))
    }

    /// Companion: see [`Device::logout_request`].
    pub fn logout_request(&mut self, now: Timestamp) -> Result<LogoutRequest, DeviceListError> {
        self.run(&Scope::own(), |device, _| device.logout_request(now))
    }

    // ---------------------------------------------------------------------------------------
    // Groups
    // ---------------------------------------------------------------------------------------

    /// See [`Device::create_group`].
    pub fn create_group(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        members: &[AccountId],
    ) -> Result<GroupId, GroupError> {
        let group = GroupId::random(rng);
        self.set_group_members(group, members)?;
        Ok(group)
    }

    /// See [`Device::set_group_members`].
    pub fn set_group_members(
        &mut self,
        group: GroupId,
        members: &[AccountId],
    ) -> Result<(), GroupError> {
        let scope = Scope::own().with_groups([group]);
        self.run(&scope, |device, _| device.set_group_members(group, members))
    }

    /// See [`Device::group_members`].
    pub fn group_members(&mut self, group: GroupId) -> Result<Option<Vec<AccountId>>, StoreError> {
        let scope = Scope::own().with_groups([group]);
        self.read(&scope, |device| device.group_members(group).map(<[AccountId]>::to_vec))
    }

    /// See [`Device::leave_group`].
    pub fn leave_group(&mut self, group: GroupId) -> Result<(), StoreError> {
        let scope = Scope::own().with_groups([group]);
        self.run(&scope, |device, _| {
            device.leave_group(group);
            Ok(())
        })
    }

    /// Encrypts `payload` once for the whole group (see [`Device::encrypt_group`]) and commits
    /// the chain step, the sender-key distribution and the message as one outbox item, named in
    /// [`GroupSend::outbox`]. A send that finds the group's devices unchanged since the last one
    /// reads only this device's own records and the group's.
    pub fn encrypt_group(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        group: GroupId,
        bundles: &[PrekeyBundle],
        payload: &[u8],
        now: Timestamp,
    ) -> Result<GroupSend, GroupError> {
        let scope = |txn: &mut Sealed<'_>| {
            let base = Scope::own().with_groups([group]);
            let Some(bytes) = txn.get(Table::Group, &group.0)? else {
                return Ok(base);
            };
            let state: GroupSender = decode(Table::Group, &bytes)?;
            let (clock, epoch): (Timestamp, u64) =
                match txn.get(Table::Meta, working::meta::CLOCK)? {
                    Some(bytes) => decode(Table::Meta, &bytes)?,
                    None => return Err(StoreError::Missing(Table::Meta)),
                };
            let clock = clock.max(now);
            let settled = state.key.is_some()
                && state.settled.is_some_and(|(at, until)| at == epoch && clock <= until);
            Ok(if settled { base } else { Scope { accounts: state.members.clone(), ..base } })
        };
        self.run_with(scope, |device, txn| {
            let mut send = device.encrypt_group(rng, group, bundles, payload, now)?;
            let record = OutboxRecord::new(device.clock(), &send.distribution, None)
                .with_group_message(&send.message);
            send.outbox = Some(add_to_outbox(txn, &record)?);
            Ok(send)
        })
    }

    // ---------------------------------------------------------------------------------------
    // Linking, with the pending attempt kept in the store
    // ---------------------------------------------------------------------------------------

    /// Companion: starts a QR link (see [`QrLinkOffer::new`]) and keeps the offer in the store,
    /// replacing any earlier one. Returns the text to show as a QR code.
    pub fn start_qr_link(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
    ) -> Result<Zeroizing<String>, LinkError> {
        self.run(&Scope::own(), |device, txn| {
            let offer = QrLinkOffer::new(rng, device, now);
            txn.put(Table::Link, link::COMPANION_QR, &offer.to_record())?;
            Ok(offer.qr_text())
        })
    }

    /// Companion: checks the primary's approval of the pending QR offer, countersigns and
    /// links (see [`QrLinkOffer::accept_approval`]). Returns the confirmation to send.
    pub fn accept_qr_approval(
        &mut self,
        approval: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        let scope = Scope::lists(persist::approval_account(approval));
        self.run(&scope, |device, txn| {
            let mut offer = QrLinkOffer::from_record(&pending(txn, link::COMPANION_QR)?)?;
            let result = offer.accept_approval(device, approval, now);
            txn.put(Table::Link, link::COMPANION_QR, &offer.to_record())?;
            result
        })
    }

    /// Primary: approves a scanned QR offer (see [`QrLinkApproval::approve`]) and keeps the
    /// approval in the store until the companion confirms. Returns the approval to send.
    pub fn approve_qr_link(&mut self, qr_text: &str, now: Timestamp) -> Result<Vec<u8>, LinkError> {
        self.run(&Scope::own(), |device, txn| {
            let (approval, message) = QrLinkApproval::approve(device, qr_text, now)?;
            let reference = persist::message_reference(&message).ok_or(LinkError::NotActive)?;
            txn.put(Table::Link, &link::primary_qr(&reference), &approval.to_record())?;
            Ok(message)
        })
    }

    /// Primary: verifies a companion's confirmation of a pending QR approval and adds it (see
    /// [`QrLinkApproval::finish`]). Returns the new device list to publish.
    pub fn finish_qr_link(
        &mut self,
        confirmation: &[u8],
        now: Timestamp,
    ) -> Result<SignedDeviceList, LinkError> {
        let reference = persist::message_reference(confirmation);
        self.run(&Scope::lists([]), |device, txn| {
            let key = link::primary_qr(&reference.ok_or(DecodeError::Truncated { needed: 18 })?);
            let mut approval = QrLinkApproval::from_record(&pending(txn, &key)?)?;
            let list = approval.finish(device, confirmation, now)?;
            txn.delete(Table::Link, &key)?;
            Ok(list)
        })
    }

    /// Companion: starts a pairing-code link (see [`CompanionPairing::start`]) and keeps the
    /// attempt in the store, replacing any earlier one. Returns the code to show and the hello
    /// to send.
    pub fn start_pairing(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
    ) -> Result<(Zeroizing<String>, Vec<u8>), LinkError> {
        self.run(&Scope::own(), |device, txn| {
            let (attempt, hello) = CompanionPairing::start(rng, device, now);
            txn.put(Table::Link, link::COMPANION_PAIRING, &attempt.to_record())?;
            Ok((Zeroizing::new(attempt.code().to_string()), hello))
        })
    }

    /// Companion: handles the primary's response to the pending pairing attempt (see
    /// [`CompanionPairing::handle_response`]). Returns the key confirmation to send.
    pub fn handle_pairing_response(
        &mut self,
        response: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        self.run(&Scope::own(), |device, txn| {
            let mut attempt =
                CompanionPairing::from_record(&pending(txn, link::COMPANION_PAIRING)?)?;
            device.observe(now);
            let result = attempt.handle_response(response, now);
            txn.put(Table::Link, link::COMPANION_PAIRING, &attempt.to_record())?;
            result
        })
    }

    /// Companion: handles the primary's approval of the pending pairing attempt, countersigns
    /// and links (see [`CompanionPairing::accept_approval`]). Returns the confirmation to send.
    pub fn accept_pairing_approval(
        &mut self,
        approval: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        let scope = Scope::lists(persist::approval_account(approval));
        self.run(&scope, |device, txn| {
            let mut attempt =
                CompanionPairing::from_record(&pending(txn, link::COMPANION_PAIRING)?)?;
            let result = attempt.accept_approval(device, approval, now);
            txn.put(Table::Link, link::COMPANION_PAIRING, &attempt.to_record())?;
            result
        })
    }

    /// Primary: answers a companion's hello with the code the user typed (see
    /// [`PrimaryPairing::respond`]) and keeps the attempt in the store. Returns the response.
    pub fn respond_to_pairing(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        hello: &[u8],
        code: PairingCode,
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        self.run(&Scope::own(), |device, txn| {
            let (attempt, response) = PrimaryPairing::respond(rng, device, hello, code, now)?;
            let sid = persist::message_reference(&response).ok_or(LinkError::NotActive)?;
            txn.put(Table::Link, &link::primary_pairing(&sid), &attempt.to_record())?;
            Ok(response)
        })
    }

    /// Primary: checks the companion's key confirmation for a pending pairing attempt and
    /// approves the companion (see [`PrimaryPairing::handle_confirm`]). Returns the approval.
    pub fn handle_pairing_confirm(
        &mut self,
        confirm: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        let sid = persist::message_reference(confirm);
        self.run(&Scope::own(), |device, txn| {
            let key = link::primary_pairing(&sid.ok_or(DecodeError::Truncated { needed: 18 })?);
            let mut attempt = PrimaryPairing::from_record(&pending(txn, &key)?)?;
            let result = attempt.handle_confirm(device, confirm, now);
            txn.put(Table::Link, &key, &attempt.to_record())?;
            result
        })
    }

    /// Primary: verifies the companion's confirmation of a pending pairing attempt and adds it
    /// (see [`PrimaryPairing::finish`]). Returns the new device list to publish.
    pub fn finish_pairing(
        &mut self,
        confirmation: &[u8],
        now: Timestamp,
    ) -> Result<SignedDeviceList, LinkError> {
        let sid = persist::message_reference(confirmation);
        self.run(&Scope::lists([]), |device, txn| {
            let key = link::primary_pairing(&sid.ok_or(DecodeError::Truncated { needed: 18 })?);
            let mut attempt = PrimaryPairing::from_record(&pending(txn, &key)?)?;
            let list = attempt.finish(device, confirmation, now)?;
            txn.delete(Table::Link, &key)?;
            Ok(list)
        })
    }

    // ---------------------------------------------------------------------------------------
    // Messages: the outbox and the inbox
    // ---------------------------------------------------------------------------------------

    /// Encrypts `payload` for every authorized device (see [`Device::encrypt_fanout`]) and
    /// commits the ratchet steps together with the envelopes and body as one outbox item,
    /// named in [`FanoutMessage::outbox`]. Send them, then [`StoredDevice::mark_sent`]; after a
    /// crash, [`StoredDevice::outbox`] still holds them, so nothing is lost and nothing is
    /// encrypted twice.
    pub fn encrypt_fanout(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        to: &[AccountId],
        bundles: &[PrekeyBundle],
        payload: &[u8],
        now: Timestamp,
    ) -> Result<FanoutMessage, FanoutError> {
        self.run(&Scope::accounts(to.iter().copied()), |device, txn| {
            let mut message = device.encrypt_fanout(rng, to, bundles, payload, now)?;
            if !message.envelopes.is_empty() {
                let record =
                    OutboxRecord::new(device.clock(), &message.envelopes, message.body.as_deref());
                message.outbox = Some(add_to_outbox(txn, &record)?);
            }
            Ok(message)
        })
    }

    /// Primary: encrypts a history descriptor for a newly linked companion (see
    /// [`Device::encrypt_history`]) and commits it as an outbox item.
    pub fn encrypt_history(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        companion: DeviceAddress,
        descriptor: &BlobDescriptor,
        bundles: &[PrekeyBundle],
        now: Timestamp,
    ) -> Result<OutboxItem, HistoryError> {
        self.run(&Scope::own(), |device, txn| {
            let envelope = device.encrypt_history(rng, companion, descriptor, bundles, now)?;
            let record = OutboxRecord::new(device.clock(), core::slice::from_ref(&envelope), None);
            let id = add_to_outbox(txn, &record)?;
            Ok(record.into_item(id))
        })
    }

    /// Everything committed for sending and not yet marked sent, oldest first: after a
    /// restart, send these again (receivers recognize a copy they already processed).
    pub fn outbox(&mut self) -> Result<Vec<OutboxItem>, StoreError> {
        let mut txn = Sealed::new(self.store.transaction(Mode::Read)?, &mut self.keys);
        let mut items = txn
            .scan(Table::Outbox, &[])?
            .into_iter()
            .map(|(natural, _, bytes)| {
                let id = OutboxId(sequence(Table::Outbox, &natural)?);
                Ok(decode::<OutboxRecord>(Table::Outbox, &bytes)?.into_item(id))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        items.sort_by_key(|item| item.id);
        Ok(items)
    }

    /// Forgets an outbox item once the server has it. Marking an item twice, or one that does
    /// not exist, changes nothing.
    pub fn mark_sent(&mut self, id: OutboxId) -> Result<(), StoreError> {
        let mut txn = Sealed::new(self.store.transaction(Mode::Write)?, &mut self.keys);
        txn.delete(Table::Outbox, &id.0.to_be_bytes())?;
        txn.commit()
    }

    /// Accepts one message from a peer (see [`Device::receive`]) and commits the ratchet step
    /// together with the message, as an inbox entry, and the envelope's digest. Keep the
    /// message, then [`StoredDevice::acknowledge`] it; after a crash, [`StoredDevice::inbox`]
    /// still holds it. An envelope received before (the server redelivers after a crash) is
    /// recognized without touching the ratchet: it returns the same entry while it is
    /// unacknowledged, and [`ReceiveError::AlreadyReceived`] after.
    ///
    /// A failure a fresh session cures puts a signed retry request for the sender in the outbox,
    /// in the same transaction (see [`StoredDevice::receive_or_retry`] to learn of it, and of a
    /// message given up on).
    pub fn receive(
        &mut self,
        envelope: &[u8],
        body: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Inbound, ReceiveError> {
        self.receive_or_retry(envelope, body, now).map_err(|failure| failure.error)
    }

    /// [`StoredDevice::receive`], saying on a failure whether a retry request went to the
    /// outbox ([`ReceiveFailure::retry`], a copy of the request queued) or every retry was
    /// already asked for ([`ReceiveFailure::gave_up`]: show the message as lost). If no answer
    /// comes, passing the same envelope again later asks again, up to
    /// [`crate::consts::MAX_RETRIES`] times.
    pub fn receive_or_retry(
        &mut self,
        envelope: &[u8],
        body: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Inbound, ReceiveFailure> {
        // What the envelope claims (unauthenticated) only decides which records to read.
        let parsed = SessionMessage::try_from(envelope).ok();
        let group_message = GroupMessage::decode(envelope).ok();
        let retry = RetryRequest::try_from(envelope).ok();
        let sender = parsed
            .as_ref()
            .map(|m| m.sender)
            .or(group_message.as_ref().map(|m| m.sender))
            .or(retry.as_ref().map(|r| r.requester));
        let one_time = parsed
            .as_ref()
            .and_then(|m| m.prekey.as_ref())
            .and_then(|p| p.one_time_prekey_id)
            .map_or(OneTimeScope::None, OneTimeScope::One);
        let digest: [u8; 32] = Sha256::digest(envelope).into();
        let mut scope =
            Scope::accounts(sender.map(|s| s.account)).with_one_time(one_time).with_peers(sender);
        if let Some(message) = parsed.as_ref().filter(|m| m.kind == MessageKind::SenderKey) {
            scope = scope.with_group_key_devices([message.sender]);
        }
        if let Some(message) = &group_message {
            scope = scope.with_group_key(message.sender, message.group);
        }
        self.run(&scope, |device, txn| {
            let mut dedup = match sender {
                Some(sender) => read_dedup(txn, sender)?,
                None => DedupRecord::default(),
            };
            if let Some(id) = dedup.find(&digest) {
                device.observe(now);
                let Some(bytes) = txn.get(Table::Inbox, &id.0.to_be_bytes())? else {
                    return Err(ReceiveFailure::from(ReceiveError::AlreadyReceived));
                };
                let received = decode::<InboxRecord>(Table::Inbox, &bytes)?
                    .to_received()
                    .map_err(ReceiveError::from)?;
                return Ok(Inbound { id, received });
            }
            let received = match device.receive_or_retry(envelope, body, now) {
                Ok(received) => received,
                Err(failure) => {
                    // A failure a fresh session cures: the request goes out with the outbox.
                    if let Some(request) = &failure.retry {
                        let envelope =
                            Envelope { recipient: request.sender, bytes: request.to_bytes() };
                        let record = OutboxRecord::new(
                            device.clock(),
                            core::slice::from_ref(&envelope),
                            None,
                        );
                        add_to_outbox(txn, &record).map_err(ReceiveError::from)?;
                    }
                    return Err(failure);
                }
            };
            let sender = received.sender();
            let id = add_to_inbox(txn, &InboxRecord::new(&received)).map_err(ReceiveError::from)?;
            dedup.remember(digest, id);
            txn.put(Table::Dedup, &sender.to_bytes(), &encode(&dedup))
                .map_err(ReceiveError::from)?;
            Ok(Inbound { id, received })
        })
    }

    /// Answers a retry request [`StoredDevice::receive`] returned (see
    /// [`Device::answer_retry`]): the message is re-encrypted on a fresh session from the
    /// sent-message cache and committed as an outbox item, named in [`RetryAnswer::outbox`].
    pub fn answer_retry(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        request: &VerifiedRetryRequest,
        now: Timestamp,
    ) -> Result<RetryAnswer, RetryError> {
        let requester = request.request().requester;
        let mut scope = Scope::accounts([requester.account]);
        scope.sent_entries = true;
        scope.all_groups = true;
        self.run(&scope, |device, txn| {
            let mut answer = device.answer_retry(rng, request, now)?;
            let record = OutboxRecord::new(
                device.clock(),
                core::slice::from_ref(&answer.envelope),
                answer.body.as_deref(),
            );
            answer.outbox = Some(add_to_outbox(txn, &record)?);
            Ok(answer)
        })
    }

    /// See [`Device::set_sent_cache_limits`].
    pub fn set_sent_cache_limits(&mut self, limits: SentCacheLimits) -> Result<(), StoreError> {
        self.run(&Scope::own(), |device, _| {
            device.set_sent_cache_limits(limits);
            Ok(())
        })
    }

    /// Every received message not yet acknowledged, oldest first.
    pub fn inbox(&mut self) -> Result<Vec<Inbound>, StoreError> {
        let mut txn = Sealed::new(self.store.transaction(Mode::Read)?, &mut self.keys);
        let mut items = txn
            .scan(Table::Inbox, &[])?
            .into_iter()
            .map(|(natural, _, bytes)| {
                let id = InboxId(sequence(Table::Inbox, &natural)?);
                let received = decode::<InboxRecord>(Table::Inbox, &bytes)?.to_received()?;
                Ok(Inbound { id, received })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        items.sort_by_key(|item| item.id);
        Ok(items)
    }

    /// Forgets a received message once the app has kept it; a redelivery of its envelope is
    /// then [`ReceiveError::AlreadyReceived`]. Acknowledging twice changes nothing.
    pub fn acknowledge(&mut self, id: InboxId) -> Result<(), StoreError> {
        let mut txn = Sealed::new(self.store.transaction(Mode::Write)?, &mut self.keys);
        txn.delete(Table::Inbox, &id.0.to_be_bytes())?;
        txn.commit()
    }

    /// The whole state in the [`Device::to_bytes`] form (a backup, or a move to another
    /// store). Reads every record; wiped on drop.
    pub fn export(&mut self) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.read(&Scope::everything(), Device::to_bytes)
    }
}

/// Natural keys of pending link attempts in [`Table::Link`].
mod link {
    /// A companion's QR offer (one at a time).
    pub(super) const COMPANION_QR: &[u8] = b"companion/qr";
    /// A companion's pairing-code attempt (one at a time).
    pub(super) const COMPANION_PAIRING: &[u8] = b"companion/pairing";

    /// A primary's QR approval, by offer reference.
    pub(super) fn primary_qr(reference: &[u8; 16]) -> Vec<u8> {
        [b"primary/qr/".as_slice(), reference].concat()
    }

    /// A primary's pairing attempt, by session id.
    pub(super) fn primary_pairing(sid: &[u8; 16]) -> Vec<u8> {
        [b"primary/pairing/".as_slice(), sid].concat()
    }
}

/// The pending attempt at `natural`: [`LinkError::NotActive`] if there is none.
fn pending(txn: &mut Sealed<'_>, natural: &[u8]) -> Result<Zeroizing<Vec<u8>>, LinkError> {
    txn.get(Table::Link, natural)?.ok_or(LinkError::NotActive)
}

fn read_dedup(txn: &mut Sealed<'_>, sender: DeviceAddress) -> Result<DedupRecord, StoreError> {
    match txn.get(Table::Dedup, &sender.to_bytes())? {
        Some(bytes) => decode(Table::Dedup, &bytes),
        None => Ok(DedupRecord::default()),
    }
}

fn counters(txn: &mut Sealed<'_>) -> Result<Counters, StoreError> {
    match txn.get(Table::Meta, working::meta::COUNTERS)? {
        Some(bytes) => decode(Table::Meta, &bytes),
        None => Ok(Counters::default()),
    }
}

fn add_to_outbox(txn: &mut Sealed<'_>, record: &OutboxRecord) -> Result<OutboxId, StoreError> {
    append(txn, Table::Outbox, record, |c| &mut c.next_outbox).map(OutboxId)
}

fn add_to_inbox(txn: &mut Sealed<'_>, record: &InboxRecord) -> Result<InboxId, StoreError> {
    append(txn, Table::Inbox, record, |c| &mut c.next_inbox).map(InboxId)
}

/// Stores `record` in `table` under the next number of the counter `next` picks.
fn append<T: serde::Serialize>(
    txn: &mut Sealed<'_>,
    table: Table,
    record: &T,
    next: impl FnOnce(&mut Counters) -> &mut u64,
) -> Result<u64, StoreError> {
    let mut counters = counters(txn)?;
    let counter = next(&mut counters);
    let id = *counter;
    *counter = id.checked_add(1).ok_or(StoreError::Corrupt(Table::Meta))?;
    txn.put(Table::Meta, working::meta::COUNTERS, &encode(&counters))?;
    txn.put(table, &id.to_be_bytes(), &encode(record))?;
    Ok(id)
}

fn sequence(table: Table, natural: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = natural.try_into().map_err(|_| StoreError::Corrupt(table))?;
    Ok(u64::from_be_bytes(bytes))
}
