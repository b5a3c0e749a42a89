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
use crate::keys::{AccountId, DeviceAddress, IdentityKeyPair, Timestamp};
use crate::prekeys::{OneTimePrekey, SignedPrekeys};
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
}

impl Scope {
    pub(super) fn own() -> Self {
        Self {
            accounts: Vec::new(),
            every_list: false,
            every_session: false,
            one_time: OneTimeScope::None,
        }
    }

    /// Every list, the own account's sessions.
    pub(super) fn every_list() -> Self {
        Self { every_list: true, ..Self::own() }
    }

    /// Every record.
    pub(super) fn everything() -> Self {
        Self { every_list: true, every_session: true, one_time: OneTimeScope::All, ..Self::own() }
    }

    pub(super) fn accounts(accounts: impl IntoIterator<Item = AccountId>) -> Self {
        Self { accounts: accounts.into_iter().collect(), ..Self::own() }
    }

    pub(super) fn with_one_time(mut self, one_time: OneTimeScope) -> Self {
        self.one_time = one_time;
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
}

pub(super) fn session_natural(address: DeviceAddress) -> [u8; DeviceAddress::LEN] {
    address.to_bytes()
}

fn session_lookup(txn: &Sealed<'_>, address: DeviceAddress) -> [u8; 32] {
    txn.keys().grouped_lookup(Table::Session, &address.account.0.to_be_bytes(), &address.to_bytes())
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
        decode::<Timestamp>(Table::Meta, &clock)?,
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
    Ok((Device::from_records(meta, one_time, sessions, accounts), loaded))
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
