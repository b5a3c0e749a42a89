//! The working set of one operation: the records it reads, as a [`Device`], and the records it
//! changed, written back.
//!
//! An operation names its [`Scope`]: the accounts whose held list and sessions it may touch,
//! and which one-time prekeys. [`load`] reads the device's own records and those, and builds a
//! [`Device`] from them; the protocol step runs on that device unchanged; [`save`] encodes every
//! record again and writes exactly the ones whose bytes differ, deletes the ones that
//! disappeared, and refuses ([`StoreError::Conflict`]) to create a record that exists but was
//! not read. This module never decides anything about the protocol.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::account::{KnownAccount, KnownAccounts, Role};
use crate::device::{Device, MetaOwned};
use crate::error::StoreError;
use crate::group::receiver::GroupReceiver;
use crate::group::{GroupId, GroupSender};
use crate::keys::{AccountId, DeviceAddress, IdentityKeyPair, Timestamp};
use crate::prekeys::{OneTimePrekey, SignedPrekeys};
use crate::retry::{HolderSet, PeerRecord, SentCache, SentLog, SentMessage};
use crate::session::record::SessionRecord;
use crate::store::Table;
use crate::store::sealed::{Sealed, decode, encode};

/// Natural keys of the device's own records in [`Table::Meta`].
pub(super) mod meta {
    /// Address, identity keys and settings.
    pub(crate) const IDENTITY: &[u8] = b"identity";
    /// Signed prekeys and the one-time prekey counter.
    pub(crate) const PREKEYS: &[u8] = b"prekeys";
    /// The role in the account: a primary's approvals, a companion's link.
    pub(crate) const ROLE: &[u8] = b"role";
    /// The clock high-water mark.
    pub(crate) const CLOCK: &[u8] = b"clock";
    /// Sequence numbers of the outbox and the inbox.
    pub(crate) const COUNTERS: &[u8] = b"counters";
    /// The sent-message cache's log: the live entries' numbers and times, and its limits.
    pub(crate) const SENT_LOG: &[u8] = b"sent-log";
}

/// Which one-time prekeys an operation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OneTimeScope {
    None,
    One(u32),
    All,
}

/// What an operation reads besides the device's own records.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    /// Accounts whose held list and every session record are read. The device's own account
    /// is always read.
    pub(super) accounts: Vec<AccountId>,
    /// Read the held list of every account: the few calls that report on all.
    pub(super) every_list: bool,
    /// Read every session record too: exporting the whole state.
    pub(super) every_session: bool,
    pub(super) one_time: OneTimeScope,
    /// Groups whose sending state is read.
    pub(super) groups: Vec<GroupId>,
    /// Devices whose received sender keys, in every group, are all read.
    pub(super) group_key_devices: Vec<DeviceAddress>,
    /// Single received sender keys to read, by sending device and group.
    pub(super) group_keys: Vec<(DeviceAddress, GroupId)>,
    /// Also read every received sender key and peer record of every device the held lists of
    /// `accounts` name: for calls that may change a list, since a device leaving takes its keys
    /// and what is remembered of it with it.
    pub(super) listed_group_keys: bool,
    /// Read every group and every received sender key: exporting the whole state.
    pub(super) every_group: bool,
    /// Read every group this device sends to (not the received keys).
    pub(super) all_groups: bool,
    /// What this device remembers about these sending devices.
    pub(super) peers: Vec<DeviceAddress>,
    /// Read every entry of the sent-message cache (answering a retry, exporting).
    pub(super) sent_entries: bool,
    /// Read every peer record (exporting).
    pub(super) every_peer: bool,
}

impl Scope {
    pub(super) fn own() -> Self {
        Self {
            accounts: Vec::new(),
            every_list: false,
            every_session: false,
            one_time: OneTimeScope::None,
            groups: Vec::new(),
            group_key_devices: Vec::new(),
            group_keys: Vec::new(),
            listed_group_keys: false,
            every_group: false,
            all_groups: false,
            peers: Vec::new(),
            sent_entries: false,
            every_peer: false,
        }
    }

    /// Every list, the own account's sessions.
    pub(super) fn every_list() -> Self {
        Self { every_list: true, ..Self::own() }
    }

    /// Every record.
    pub(super) fn everything() -> Self {
        Self {
            every_list: true,
            every_session: true,
            one_time: OneTimeScope::All,
            every_group: true,
            sent_entries: true,
            every_peer: true,
            ..Self::own()
        }
    }

    pub(super) fn with_peers(mut self, peers: impl IntoIterator<Item = DeviceAddress>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// These accounts, for a call that may change their lists.
    pub(super) fn lists(accounts: impl IntoIterator<Item = AccountId>) -> Self {
        Self { listed_group_keys: true, ..Self::accounts(accounts) }
    }

    pub(super) fn accounts(accounts: impl IntoIterator<Item = AccountId>) -> Self {
        Self { accounts: accounts.into_iter().collect(), ..Self::own() }
    }

    pub(super) fn with_one_time(mut self, one_time: OneTimeScope) -> Self {
        self.one_time = one_time;
        self
    }

    pub(super) fn with_groups(mut self, groups: impl IntoIterator<Item = GroupId>) -> Self {
        self.groups.extend(groups);
        self
    }

    pub(super) fn with_group_key_devices(
        mut self,
        devices: impl IntoIterator<Item = DeviceAddress>,
    ) -> Self {
        self.group_key_devices.extend(devices);
        self
    }

    pub(super) fn with_group_key(mut self, sender: DeviceAddress, group: GroupId) -> Self {
        self.group_keys.push((sender, group));
        self
    }
}

/// The bytes of every record an operation read, to tell what it changed.
pub(super) struct Loaded {
    identity: Zeroizing<Vec<u8>>,
    prekeys: Zeroizing<Vec<u8>>,
    role: Zeroizing<Vec<u8>>,
    clock: Zeroizing<Vec<u8>>,
    one_time: BTreeMap<u32, Zeroizing<Vec<u8>>>,
    sessions: BTreeMap<DeviceAddress, Zeroizing<Vec<u8>>>,
    accounts: BTreeMap<AccountId, Zeroizing<Vec<u8>>>,
    /// Accounts whose sessions were all read: only their records may be created or deleted.
    session_accounts: Vec<AccountId>,
    groups: BTreeMap<GroupId, Zeroizing<Vec<u8>>>,
    group_keys: BTreeMap<(DeviceAddress, GroupId), Zeroizing<Vec<u8>>>,
    sent_log: Option<Zeroizing<Vec<u8>>>,
    sent_entries: BTreeMap<u64, Zeroizing<Vec<u8>>>,
    holder_sets: BTreeMap<u64, Zeroizing<Vec<u8>>>,
    peers: BTreeMap<DeviceAddress, Zeroizing<Vec<u8>>>,
    /// Peer records that may be created: the ones looked up.
    peers_open: Vec<DeviceAddress>,
    /// Received sender keys that may be created: looked up, or of a device read whole.
    group_keys_open: Vec<(DeviceAddress, Option<GroupId>)>,
}

pub(super) fn session_natural(address: DeviceAddress) -> [u8; DeviceAddress::LEN] {
    address.to_bytes()
}

fn session_lookup(txn: &Sealed<'_>, address: DeviceAddress) -> [u8; 32] {
    txn.keys().grouped_lookup(Table::Session, &address.account.0.to_be_bytes(), &address.to_bytes())
}

/// Received sender keys are grouped by sending device, so one device's keys are one scan.
fn group_key_lookup(txn: &Sealed<'_>, sender: DeviceAddress, group: GroupId) -> [u8; 32] {
    txn.keys().grouped_lookup(
        Table::GroupKey,
        &sender.to_bytes(),
        &group_key_natural(sender, group),
    )
}

fn group_key_natural(sender: DeviceAddress, group: GroupId) -> Vec<u8> {
    [sender.to_bytes().as_slice(), &group.0].concat()
}

fn group_key_from_natural(natural: &[u8]) -> Result<(DeviceAddress, GroupId), StoreError> {
    let corrupt = || StoreError::Corrupt(Table::GroupKey);
    let (address, group) = natural.split_at_checked(DeviceAddress::LEN).ok_or_else(corrupt)?;
    let address = DeviceAddress::from_slice(address).ok_or_else(corrupt)?;
    Ok((address, GroupId(group.try_into().map_err(|_| corrupt())?)))
}

fn required(txn: &mut Sealed<'_>, natural: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    txn.get(Table::Meta, natural)?.ok_or(StoreError::Missing(Table::Meta))
}

/// Reads the device's own records and what `scope` names, and builds the device.
pub(super) fn load(txn: &mut Sealed<'_>, scope: &Scope) -> Result<(Device, Loaded), StoreError> {
    let identity = required(txn, meta::IDENTITY)?;
    let prekeys = required(txn, meta::PREKEYS)?;
    let role = required(txn, meta::ROLE)?;
    let clock = required(txn, meta::CLOCK)?;
    let (address, identity_keys, max_forward_jump): (DeviceAddress, IdentityKeyPair, u32) =
        decode(Table::Meta, &identity)?;
    let meta: MetaOwned = (
        address,
        identity_keys,
        decode::<SignedPrekeys>(Table::Meta, &prekeys)?,
        max_forward_jump,
        decode::<Role>(Table::Meta, &role)?,
        decode::<(Timestamp, u64)>(Table::Meta, &clock)?,
    );
    let mut loaded = Loaded {
        identity,
        prekeys,
        role,
        clock,
        one_time: BTreeMap::new(),
        sessions: BTreeMap::new(),
        accounts: BTreeMap::new(),
        session_accounts: Vec::new(),
        groups: BTreeMap::new(),
        group_keys: BTreeMap::new(),
        group_keys_open: Vec::new(),
        sent_log: None,
        sent_entries: BTreeMap::new(),
        holder_sets: BTreeMap::new(),
        peers: BTreeMap::new(),
        peers_open: Vec::new(),
    };
    let mut accounts: KnownAccounts = BTreeMap::new();
    let mut sessions = BTreeMap::new();
    let mut wanted = scope.accounts.clone();
    wanted.push(address.account);
    if scope.every_session {
        for (natural, _, _) in txn.scan(Table::Session, &[])? {
            wanted.push(address_from_natural(&natural)?.account);
        }
    }
    wanted.sort_unstable();
    wanted.dedup();
    if scope.every_list {
        for (natural, _, bytes) in txn.scan(Table::Account, &[])? {
            let account = account_from_natural(&natural)?;
            accounts.insert(account, decode::<KnownAccount>(Table::Account, &bytes)?);
            loaded.accounts.insert(account, bytes);
        }
    }
    for &account in &wanted {
        if !loaded.accounts.contains_key(&account)
            && let Some(bytes) = txn.get(Table::Account, &account.0.to_be_bytes())?
        {
            accounts.insert(account, decode::<KnownAccount>(Table::Account, &bytes)?);
            loaded.accounts.insert(account, bytes);
        }
        let prefix = txn.keys().group_prefix(Table::Session, &account.0.to_be_bytes());
        for (natural, _, bytes) in txn.scan(Table::Session, &prefix)? {
            let remote = address_from_natural(&natural)?;
            if remote.account != account {
                return Err(StoreError::Corrupt(Table::Session));
            }
            sessions.insert(remote, decode::<SessionRecord>(Table::Session, &bytes)?);
            loaded.sessions.insert(remote, bytes);
        }
    }
    loaded.session_accounts = wanted;
    let mut one_time = BTreeMap::new();
    match scope.one_time {
        OneTimeScope::None => {}
        OneTimeScope::One(id) => {
            if let Some(bytes) = txn.get(Table::OneTimePrekey, &id.to_be_bytes())? {
                one_time.insert(id, decode::<OneTimePrekey>(Table::OneTimePrekey, &bytes)?);
                loaded.one_time.insert(id, bytes);
            }
        }
        OneTimeScope::All => {
            for (natural, _, bytes) in txn.scan(Table::OneTimePrekey, &[])? {
                let id = u32::from_be_bytes(
                    natural
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt(Table::OneTimePrekey))?,
                );
                one_time.insert(id, decode::<OneTimePrekey>(Table::OneTimePrekey, &bytes)?);
                loaded.one_time.insert(id, bytes);
            }
        }
    }
    let mut groups = BTreeMap::new();
    let mut wanted_groups = scope.groups.clone();
    if scope.all_groups && !scope.every_group {
        for (natural, _, _) in txn.scan(Table::Group, &[])? {
            wanted_groups.push(GroupId(
                natural.as_slice().try_into().map_err(|_| StoreError::Corrupt(Table::Group))?,
            ));
        }
    }
    let mut key_devices = scope.group_key_devices.clone();
    if scope.every_group {
        for (natural, _, _) in txn.scan(Table::Group, &[])? {
            wanted_groups.push(GroupId(
                natural.as_slice().try_into().map_err(|_| StoreError::Corrupt(Table::Group))?,
            ));
        }
        for (natural, _, _) in txn.scan(Table::GroupKey, &[])? {
            key_devices.push(group_key_from_natural(&natural)?.0);
        }
    }
    if scope.listed_group_keys {
        for account in &loaded.session_accounts {
            if let Some(known) = accounts.get(account) {
                key_devices.extend(known.list.devices().iter().map(|d| d.address()));
            }
        }
    }
    wanted_groups.sort_unstable();
    wanted_groups.dedup();
    key_devices.sort_unstable();
    key_devices.dedup();
    for &group in &wanted_groups {
        if let Some(bytes) = txn.get(Table::Group, &group.0)? {
            groups.insert(group, decode::<GroupSender>(Table::Group, &bytes)?);
            loaded.groups.insert(group, bytes);
        }
    }
    let mut group_keys = BTreeMap::new();
    for &sender in &key_devices {
        let prefix = txn.keys().group_prefix(Table::GroupKey, &sender.to_bytes());
        for (natural, _, bytes) in txn.scan(Table::GroupKey, &prefix)? {
            let (found, group) = group_key_from_natural(&natural)?;
            if found != sender {
                return Err(StoreError::Corrupt(Table::GroupKey));
            }
            group_keys.insert((sender, group), decode::<GroupReceiver>(Table::GroupKey, &bytes)?);
            loaded.group_keys.insert((sender, group), bytes);
        }
        loaded.group_keys_open.push((sender, None));
    }
    for &(sender, group) in &scope.group_keys {
        let lookup = group_key_lookup(txn, sender, group);
        if let Some(bytes) =
            txn.get_at(Table::GroupKey, &lookup, &group_key_natural(sender, group))?
        {
            group_keys.insert((sender, group), decode::<GroupReceiver>(Table::GroupKey, &bytes)?);
            loaded.group_keys.insert((sender, group), bytes);
        }
        loaded.group_keys_open.push((sender, Some(group)));
    }
    let mut sent = SentCache::default();
    if let Some(bytes) = txn.get(Table::Meta, meta::SENT_LOG)? {
        sent.log = decode::<SentLog>(Table::Meta, &bytes)?;
        loaded.sent_log = Some(bytes);
    }
    if scope.sent_entries {
        for (natural, _, bytes) in txn.scan(Table::SentMessage, &[])? {
            match natural.as_slice() {
                [HOLDER_SET_TAG, number @ ..] if number.len() == 8 => {
                    let set = u64::from_be_bytes(
                        number.try_into().map_err(|_| StoreError::Corrupt(Table::SentMessage))?,
                    );
                    sent.holder_sets.insert(set, decode::<HolderSet>(Table::SentMessage, &bytes)?);
                    loaded.holder_sets.insert(set, bytes);
                }
                number => {
                    let seq = u64::from_be_bytes(
                        number.try_into().map_err(|_| StoreError::Corrupt(Table::SentMessage))?,
                    );
                    sent.entries.insert(seq, decode::<SentMessage>(Table::SentMessage, &bytes)?);
                    loaded.sent_entries.insert(seq, bytes);
                }
            }
        }
    }
    let mut peers = BTreeMap::new();
    let mut wanted_peers = scope.peers.clone();
    if scope.listed_group_keys {
        for account in &loaded.session_accounts {
            if let Some(known) = accounts.get(account) {
                wanted_peers.extend(known.list.devices().iter().map(|d| d.address()));
            }
        }
    }
    if scope.every_peer {
        for (natural, _, _) in txn.scan(Table::Peer, &[])? {
            wanted_peers
                .push(DeviceAddress::from_slice(&natural).ok_or(StoreError::Corrupt(Table::Peer))?);
        }
    }
    wanted_peers.sort_unstable();
    wanted_peers.dedup();
    for &peer in &wanted_peers {
        if let Some(bytes) = txn.get(Table::Peer, &peer.to_bytes())? {
            peers.insert(peer, decode::<PeerRecord>(Table::Peer, &bytes)?);
            loaded.peers.insert(peer, bytes);
        }
    }
    loaded.peers_open = wanted_peers;
    let device = Device::from_records(
        meta,
        one_time,
        sessions,
        accounts,
        (groups, group_keys),
        (peers, sent),
    );
    Ok((device, loaded))
}

fn account_from_natural(natural: &[u8]) -> Result<AccountId, StoreError> {
    let bytes: [u8; 8] = natural.try_into().map_err(|_| StoreError::Corrupt(Table::Account))?;
    Ok(AccountId(u64::from_be_bytes(bytes)))
}

fn address_from_natural(natural: &[u8]) -> Result<DeviceAddress, StoreError> {
    DeviceAddress::from_slice(natural).ok_or(StoreError::Corrupt(Table::Session))
}

/// Writes the records of a new device: all of them.
pub(super) fn create(txn: &mut Sealed<'_>, device: &Device) -> Result<(), StoreError> {
    if txn.get(Table::Meta, meta::IDENTITY)?.is_some() {
        return Err(StoreError::AlreadyExists);
    }
    let (address, identity, signed, max_forward_jump, role, clock) = device.meta();
    txn.put(Table::Meta, meta::IDENTITY, &encode(&(address, identity, max_forward_jump)))?;
    txn.put(Table::Meta, meta::PREKEYS, &encode(signed))?;
    txn.put(Table::Meta, meta::ROLE, &encode(role))?;
    txn.put(Table::Meta, meta::CLOCK, &encode(&clock))?;
    for (id, key) in &device.prekeys.one_time {
        txn.put(Table::OneTimePrekey, &id.to_be_bytes(), &encode(key))?;
    }
    for (account, known) in &device.accounts {
        txn.put(Table::Account, &account.0.to_be_bytes(), &encode(known))?;
    }
    for (&remote, record) in &device.sessions {
        let lookup = session_lookup(txn, remote);
        txn.put_at(Table::Session, &lookup, &session_natural(remote), &encode(record))?;
    }
    for (group, state) in &device.groups {
        txn.put(Table::Group, &group.0, &encode(state))?;
    }
    txn.put(Table::Meta, meta::SENT_LOG, &encode(&device.sent.log))?;
    for (seq, entry) in &device.sent.entries {
        txn.put(Table::SentMessage, &seq.to_be_bytes(), &encode(entry))?;
    }
    for (set, holders) in &device.sent.holder_sets {
        txn.put(Table::SentMessage, &holder_set_natural(*set), &encode(holders))?;
    }
    for (peer, record) in &device.peers {
        txn.put(Table::Peer, &peer.to_bytes(), &encode(record))?;
    }
    for (&(sender, group), receiver) in &device.group_keys {
        let lookup = group_key_lookup(txn, sender, group);
        txn.put_at(Table::GroupKey, &lookup, &group_key_natural(sender, group), &encode(receiver))?;
    }
    Ok(())
}

/// Writes back what the operation changed: every record whose encoding differs from what was
/// read, every new record, and deletes every record read that the device no longer holds.
pub(super) fn save(
    txn: &mut Sealed<'_>,
    device: &Device,
    loaded: &Loaded,
) -> Result<(), StoreError> {
    let (address, identity, signed, max_forward_jump, role, clock) = device.meta();
    put_if_changed(
        txn,
        meta::IDENTITY,
        &loaded.identity,
        &encode(&(address, identity, max_forward_jump)),
    )?;
    put_if_changed(txn, meta::PREKEYS, &loaded.prekeys, &encode(signed))?;
    put_if_changed(txn, meta::ROLE, &loaded.role, &encode(role))?;
    put_if_changed(txn, meta::CLOCK, &loaded.clock, &encode(&clock))?;

    for (id, key) in &device.prekeys.one_time {
        let natural = id.to_be_bytes();
        let bytes = encode(key);
        match loaded.one_time.get(id) {
            Some(before) if *before == bytes => {}
            Some(_) => txn.put(Table::OneTimePrekey, &natural, &bytes)?,
            None => {
                if txn.get(Table::OneTimePrekey, &natural)?.is_some() {
                    return Err(StoreError::Conflict(Table::OneTimePrekey));
                }
                txn.put(Table::OneTimePrekey, &natural, &bytes)?;
            }
        }
    }
    for id in loaded.one_time.keys().filter(|id| !device.prekeys.one_time.contains_key(id)) {
        txn.delete(Table::OneTimePrekey, &id.to_be_bytes())?;
    }

    for (account, known) in &device.accounts {
        let natural = account.0.to_be_bytes();
        let bytes = encode(known);
        match loaded.accounts.get(account) {
            Some(before) if *before == bytes => {}
            Some(_) => txn.put(Table::Account, &natural, &bytes)?,
            None => {
                if !loaded.session_accounts.contains(account) {
                    return Err(StoreError::Conflict(Table::Account));
                }
                txn.put(Table::Account, &natural, &bytes)?;
            }
        }
    }
    for account in loaded.accounts.keys().filter(|a| !device.accounts.contains_key(a)) {
        txn.delete(Table::Account, &account.0.to_be_bytes())?;
    }

    for (&remote, record) in &device.sessions {
        let bytes = encode(record);
        match loaded.sessions.get(&remote) {
            Some(before) if *before == bytes => {}
            _ if !loaded.session_accounts.contains(&remote.account) => {
                return Err(StoreError::Conflict(Table::Session));
            }
            _ => {
                let lookup = session_lookup(txn, remote);
                txn.put_at(Table::Session, &lookup, &session_natural(remote), &bytes)?;
            }
        }
    }
    for &remote in loaded.sessions.keys().filter(|r| !device.sessions.contains_key(r)) {
        let lookup = session_lookup(txn, remote);
        txn.delete_at(Table::Session, &lookup)?;
    }

    for (group, state) in &device.groups {
        let bytes = encode(state);
        match loaded.groups.get(group) {
            Some(before) if *before == bytes => {}
            Some(_) => txn.put(Table::Group, &group.0, &bytes)?,
            None => {
                if txn.get(Table::Group, &group.0)?.is_some() {
                    return Err(StoreError::Conflict(Table::Group));
                }
                txn.put(Table::Group, &group.0, &bytes)?;
            }
        }
    }
    for group in loaded.groups.keys().filter(|g| !device.groups.contains_key(g)) {
        txn.delete(Table::Group, &group.0)?;
    }

    for (&(sender, group), receiver) in &device.group_keys {
        let bytes = encode(receiver);
        match loaded.group_keys.get(&(sender, group)) {
            Some(before) if *before == bytes => {}
            None if !loaded
                .group_keys_open
                .iter()
                .any(|(d, g)| *d == sender && g.is_none_or(|g| g == group)) =>
            {
                return Err(StoreError::Conflict(Table::GroupKey));
            }
            _ => {
                let lookup = group_key_lookup(txn, sender, group);
                let natural = group_key_natural(sender, group);
                txn.put_at(Table::GroupKey, &lookup, &natural, &bytes)?;
            }
        }
    }
    for &(sender, group) in loaded.group_keys.keys().filter(|k| !device.group_keys.contains_key(k))
    {
        let lookup = group_key_lookup(txn, sender, group);
        txn.delete_at(Table::GroupKey, &lookup)?;
    }

    let log = encode(&device.sent.log);
    if loaded.sent_log.as_ref().is_none_or(|before| *before != log) {
        txn.put(Table::Meta, meta::SENT_LOG, &log)?;
    }
    for (seq, entry) in &device.sent.entries {
        let bytes = encode(entry);
        if loaded.sent_entries.get(seq).is_none_or(|before| *before != bytes) {
            // Entry numbers only grow: a new number is never a record read or left unread.
            txn.put(Table::SentMessage, &seq.to_be_bytes(), &bytes)?;
        }
    }
    for seq in &device.sent.evicted {
        txn.delete(Table::SentMessage, &seq.to_be_bytes())?;
    }
    for (set, holders) in &device.sent.holder_sets {
        let bytes = encode(holders);
        if loaded.holder_sets.get(set).is_none_or(|before| *before != bytes) {
            // Set numbers only grow too.
            txn.put(Table::SentMessage, &holder_set_natural(*set), &bytes)?;
        }
    }
    for set in &device.sent.evicted_holder_sets {
        txn.delete(Table::SentMessage, &holder_set_natural(*set))?;
    }

    for (peer, record) in &device.peers {
        let bytes = encode(record);
        match loaded.peers.get(peer) {
            Some(before) if *before == bytes => {}
            None if !loaded.peers_open.contains(peer) => {
                return Err(StoreError::Conflict(Table::Peer));
            }
            _ => txn.put(Table::Peer, &peer.to_bytes(), &bytes)?,
        }
    }
    for peer in loaded.peers.keys().filter(|p| !device.peers.contains_key(p)) {
        txn.delete(Table::Peer, &peer.to_bytes())?;
    }
    Ok(())
}

fn put_if_changed(
    txn: &mut Sealed<'_>,
    natural: &[u8],
    before: &[u8],
    after: &[u8],
) -> Result<(), StoreError> {
    if before == after { Ok(()) } else { txn.put(Table::Meta, natural, after) }
}

/// The first byte of a holder set's natural key in the `SentMessage` table, whose entries have
/// 8-byte keys: a set's is this byte and its 8-byte number.
const HOLDER_SET_TAG: u8 = b'h';

/// The natural key of holder set `set` in the `SentMessage` table.
fn holder_set_natural(set: u64) -> Vec<u8> {
    [&[HOLDER_SET_TAG][..], &set.to_be_bytes()].concat()
}
