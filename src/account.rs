//! Account roles and device-list bookkeeping on a [`Device`].
//!
//! A primary links, removes and refreshes companions and signs every list. Every device keeps the
//! newest verified list of each account it talks to, refuses rollbacks and equivocation, and
//! notices identity changes. A companion derives its own status (active, signed out, removed)
//! from its account's newest list and the highest time it has been told. Nothing here performs
//! I/O; lists travel through the app's server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::consts::{MAX_COMPANIONS, PRIMARY_INACTIVITY_SECS};
use crate::device::Device;
use crate::device_list::{
    LinkingMetadata, LogoutRequest, SignedDeviceIdentity, SignedDeviceList, VerifiedDeviceList,
};
use crate::error::{DeviceListError, SessionError};
use crate::keys::{AccountId, DeviceAddress, DeviceId, PublicIdentity, Timestamp};

/// Approved offer references a primary remembers; an offer older than this many approvals has
/// long expired (offers live 60 s).
const USED_LINK_REFERENCES: usize = 64;

/// What a device is within its account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Role {
    /// The account's primary: holds the account identity.
    Primary(PrimaryState),
    /// A companion, linked or waiting to be.
    Companion(Box<CompanionState>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PrimaryState {
    companions: Vec<SignedDeviceIdentity>,
    /// References of link offers already approved, newest last; offers are single use.
    used_link_references: std::collections::VecDeque<[u8; 16]>,
    next_device: u32,
    next_key_index: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CompanionState {
    pub(crate) link: Option<SignedDeviceIdentity>,
    /// The account identity this companion was linked under.
    account_identity: Option<PublicIdentity>,
    /// Latched when the 14-day rule or a removal signs this companion out.
    signed_out: bool,
}

impl Role {
    pub(crate) fn for_address(address: DeviceAddress) -> Self {
        if address.device.is_primary() {
            Role::Primary(PrimaryState {
                companions: Vec::new(),
                used_link_references: std::collections::VecDeque::new(),
                next_device: 1,
                next_key_index: 1,
            })
        } else {
            Role::Companion(Box::default())
        }
    }
}

/// The newest verified list of one account, as this device knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KnownAccount {
    pub(crate) list: VerifiedDeviceList,
    /// Set when a list with another account identity arrived; cleared only by the app.
    pub(crate) identity_change_pending: bool,
}

/// A companion's view of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccountStatus {
    /// The primary, always active.
    Primary,
    /// A linked companion whose account list is fresh.
    Active,
    /// A companion whose primary was unused for more than 14 days.
    SignedOut,
    /// A companion its account's newest list no longer names.
    Removed,
    /// A companion not linked to any account yet.
    NotLinked,
}

/// The primary's approval of a companion: what the companion checks and countersigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompanionApproval {
    /// The metadata the primary assigned.
    pub metadata: LinkingMetadata,
    /// The account identity (the primary's identity).
    pub account_identity: PublicIdentity,
    /// The primary's account signature over the metadata and the companion's identity.
    pub account_signature: [u8; 64],
}

/// What processing a device list changed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListUpdate {
    /// The list now held for the account.
    pub list: VerifiedDeviceList,
    /// Devices that left the list; their sessions were deleted.
    pub removed: Vec<DeviceAddress>,
    /// Devices that joined the list.
    pub added: Vec<DeviceAddress>,
}

impl Device {
    /// The account this device belongs to.
    pub fn account(&self) -> AccountId {
        self.address.account
    }

    /// This device's status in its account at `now`. Records `now`, so winding the clock back
    /// later cannot undo a sign-out.
    pub fn account_status(&mut self, now: Timestamp) -> AccountStatus {
        self.observe(now);
        self.status_at(now)
    }

    /// The status at `now`, or at the clock high-water mark if that is later.
    fn status_at(&self, now: Timestamp) -> AccountStatus {
        let now = now.max(self.clock);
        match &self.role {
            Role::Primary(_) => AccountStatus::Primary,
            Role::Companion(state) if state.link.is_none() => AccountStatus::NotLinked,
            Role::Companion(state) => {
                let Some(known) = self.accounts.get(&self.address.account) else {
                    return AccountStatus::Active;
                };
                if known.list.device(self.address).is_none() {
                    AccountStatus::Removed
                } else if state.signed_out
                    || now.secs_since(known.list.issued_at()) > PRIMARY_INACTIVITY_SECS
                {
                    AccountStatus::SignedOut
                } else {
                    AccountStatus::Active
                }
            }
        }
    }

    /// Raises the clock high-water mark and latches a sign-out.
    fn observe(&mut self, now: Timestamp) {
        self.clock = self.clock.max(now);
        let status = self.status_at(now);
        if let Role::Companion(state) = &mut self.role
            && matches!(status, AccountStatus::SignedOut | AccountStatus::Removed)
        {
            state.signed_out = true;
        }
    }

    /// Refuses to encrypt or decrypt while signed out or removed. Signing out is a state
    /// transition, not a failure: it is latched even though the call returns an error. While
    /// active nothing changes, so a failed call leaves the device byte-identical.
    pub(crate) fn ensure_active(&mut self, now: Timestamp) -> Result<(), SessionError> {
        match self.status_at(now) {
            AccountStatus::SignedOut | AccountStatus::Removed => {
                self.observe(now);
                Err(SessionError::SignedOut)
            }
            _ => Ok(()),
        }
    }

    /// Records the time of a successful operation.
    pub(crate) fn advance_clock(&mut self, now: Timestamp) {
        self.clock = self.clock.max(now);
    }

    /// The security code for the conversation with `remote`, from the account identities this
    /// device holds; `None` until both are known.
    pub fn security_code(&self, remote: AccountId) -> Option<crate::SecurityCode> {
        let own = self.own_account_identity()?;
        let theirs = self.accounts.get(&remote)?.list.account_identity();
        Some(crate::SecurityCode::new((self.address.account, own), (remote, theirs)))
    }

    /// The newest verified list held for `account`.
    pub fn device_list(&self, account: AccountId) -> Option<&VerifiedDeviceList> {
        self.accounts.get(&account).map(|k| &k.list)
    }

    /// True when a list with a changed account identity is waiting for the app's decision.
    pub fn identity_change_pending(&self, account: AccountId) -> bool {
        self.accounts.get(&account).is_some_and(|k| k.identity_change_pending)
    }

    /// Verifies a device list from the server and keeps it if it is new.
    ///
    /// Rejects rollbacks and equivocation; sessions with devices that left the list are
    /// deleted. A list with another account identity fails with
    /// [`DeviceListError::IdentityChanged`] and blocks sending to that account until
    /// [`Device::accept_identity_change`].
    pub fn process_device_list(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<ListUpdate, DeviceListError> {
        let list = SignedDeviceList::try_from(bytes)?.verify()?;
        let account = list.account();
        if let Some(known) = self.accounts.get_mut(&account) {
            if known.list.account_identity() != list.account_identity() {
                known.identity_change_pending = true;
                return Err(DeviceListError::IdentityChanged { account });
            }
            let seen = known.list.version();
            if list.version() < seen {
                return Err(DeviceListError::RollbackRejected { seen, got: list.version() });
            }
            if list.version() == seen {
                if list.digest() != known.list.digest() {
                    return Err(DeviceListError::Equivocation { version: seen });
                }
            } else if list.version() == seen + 1 && list.previous_digest() != known.list.digest() {
                return Err(DeviceListError::Equivocation { version: list.version() });
            }
        } else if account == self.address.account
            && let Some(own) = self.own_account_identity()
            && own != list.account_identity()
        {
            return Err(DeviceListError::IdentityChanged { account });
        }
        Ok(self.store_list(list, now))
    }

    /// Replaces the held list of `account` by one with a new account identity, after the user
    /// accepted the change. Deletes every session with the account's devices.
    pub fn accept_identity_change(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<ListUpdate, DeviceListError> {
        let list = SignedDeviceList::try_from(bytes)?.verify()?;
        if let Some(old) = self.accounts.remove(&list.account()) {
            for device in old.list.devices() {
                self.sessions.remove(&device.address());
            }
        }
        Ok(self.store_list(list, now))
    }

    fn own_account_identity(&self) -> Option<&PublicIdentity> {
        match &self.role {
            Role::Primary(_) => Some(self.identity.public()),
            Role::Companion(state) => state.account_identity.as_ref(),
        }
    }

    fn store_list(&mut self, list: VerifiedDeviceList, now: Timestamp) -> ListUpdate {
        let account = list.account();
        let old = self.accounts.remove(&account);
        let listed = |l: &VerifiedDeviceList, d: &crate::device_list::AuthorizedDevice| {
            l.device(d.address()).is_some_and(|x| x.identity() == d.identity())
        };
        let removed: Vec<DeviceAddress> = old
            .as_ref()
            .map(|o| {
                o.list.devices().iter().filter(|d| !listed(&list, d)).map(|d| d.address()).collect()
            })
            .unwrap_or_default();
        let added = list
            .devices()
            .iter()
            .filter(|d| old.as_ref().is_none_or(|o| !listed(&o.list, d)))
            .map(|d| d.address())
            .collect();
        for address in &removed {
            self.sessions.remove(address);
        }
        let fresh_own = account == self.address.account
            && list.device(self.address).is_some()
            && now.max(self.clock).secs_since(list.issued_at()) <= PRIMARY_INACTIVITY_SECS;
        if let Role::Companion(state) = &mut self.role
            && fresh_own
        {
            state.signed_out = false;
        }
        self.accounts
            .insert(account, KnownAccount { list: list.clone(), identity_change_pending: false });
        self.observe(now);
        ListUpdate { list, removed, added }
    }

    fn primary_state(&mut self) -> Result<&mut PrimaryState, DeviceListError> {
        match &mut self.role {
            Role::Primary(state) => Ok(state),
            Role::Companion(_) => Err(DeviceListError::NotPrimary),
        }
    }

    /// Primary: when the companion `device` was linked (its linking metadata's timestamp).
    pub(crate) fn companion_linked_at(&self, device: DeviceId) -> Option<Timestamp> {
        match &self.role {
            Role::Primary(state) => state
                .companions
                .iter()
                .find(|c| c.metadata.device == device)
                .map(|c| c.metadata.timestamp),
            Role::Companion(_) => None,
        }
    }

    /// True if a link offer with this reference was already approved.
    pub(crate) fn link_reference_used(&self, reference: &[u8; 16]) -> bool {
        match &self.role {
            Role::Primary(state) => state.used_link_references.contains(reference),
            Role::Companion(_) => false,
        }
    }

    /// Remembers an approved offer, keeping the newest [`USED_LINK_REFERENCES`].
    pub(crate) fn record_link_reference(&mut self, reference: [u8; 16]) {
        if let Role::Primary(state) = &mut self.role {
            state.used_link_references.push_back(reference);
            while state.used_link_references.len() > USED_LINK_REFERENCES {
                state.used_link_references.pop_front();
            }
        }
    }

    /// Primary: approves a companion identity, assigning it a device id and key index. The
    /// fifth companion is refused before anything is signed.
    pub fn approve_companion(
        &mut self,
        companion: &PublicIdentity,
        now: Timestamp,
    ) -> Result<CompanionApproval, DeviceListError> {
        let account = self.address.account;
        let state = self.primary_state()?;
        if state.companions.len() >= MAX_COMPANIONS {
            return Err(DeviceListError::CompanionLimit { limit: MAX_COMPANIONS });
        }
        let metadata = LinkingMetadata {
            account,
            device: DeviceId(state.next_device),
            key_index: state.next_key_index,
            timestamp: now,
        };
        state.next_device = state.next_device.saturating_add(1);
        state.next_key_index = state.next_key_index.saturating_add(1);
        let account_signature =
            SignedDeviceIdentity::account_sign(&self.identity, metadata, companion);
        Ok(CompanionApproval {
            metadata,
            account_identity: self.identity.public().clone(),
            account_signature,
        })
    }

    /// Companion: checks the primary's approval of this device and countersigns it. The device
    /// takes the address the approval assigns.
    pub fn countersign_approval(
        &mut self,
        approval: &CompanionApproval,
    ) -> Result<SignedDeviceIdentity, DeviceListError> {
        let Role::Companion(state) = &self.role else {
            return Err(DeviceListError::NotCompanion);
        };
        if state.link.is_some() {
            return Err(DeviceListError::NotCompanion);
        }
        SignedDeviceIdentity::verify_account_signature(
            approval.metadata,
            self.identity.public(),
            &approval.account_identity,
            &approval.account_signature,
        )?;
        let device_signature = SignedDeviceIdentity::device_sign(
            &self.identity,
            approval.metadata,
            &approval.account_identity,
        );
        let signed = SignedDeviceIdentity {
            metadata: approval.metadata,
            identity: self.identity.public().clone(),
            account_signature: approval.account_signature,
            device_signature,
        };
        self.address = approval.metadata.address();
        if let Role::Companion(state) = &mut self.role {
            state.link = Some(signed.clone());
            state.account_identity = Some(approval.account_identity.clone());
        }
        Ok(signed)
    }

    /// Primary: adds a countersigned companion and signs the new device list.
    pub fn add_companion(
        &mut self,
        signed: &SignedDeviceIdentity,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        signed.verify(self.identity.public())?;
        let account = self.address.account;
        if signed.metadata.account != account {
            return Err(DeviceListError::WrongAccount {
                expected: account,
                got: signed.metadata.account,
            });
        }
        let state = self.primary_state()?;
        if state.companions.len() >= MAX_COMPANIONS {
            return Err(DeviceListError::CompanionLimit { limit: MAX_COMPANIONS });
        }
        if state.companions.iter().any(|c| c.metadata.device == signed.metadata.device) {
            return Err(DeviceListError::UnsortedEntries);
        }
        state.companions.push(signed.clone());
        state.companions.sort_by_key(|c| c.metadata.device);
        Ok(self.sign_list(now))
    }

    /// Primary: removes a companion and signs the new list.
    pub fn remove_companion(
        &mut self,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        let state = self.primary_state()?;
        let before = state.companions.len();
        state.companions.retain(|c| c.metadata.device != device);
        if state.companions.len() == before {
            return Err(DeviceListError::UnknownCompanion(device));
        }
        Ok(self.sign_list(now))
    }

    /// Primary: re-signs the current list with a new issued-at time. Call it whenever the primary
    /// is used, so its companions stay signed in.
    pub fn refresh_device_list(
        &mut self,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.primary_state()?;
        Ok(self.sign_list(now))
    }

    /// Primary: honours a companion's signed logout request.
    pub fn process_logout(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        let request = LogoutRequest::try_from(bytes)?;
        let account = self.address.account;
        if request.address.account != account {
            return Err(DeviceListError::WrongAccount {
                expected: account,
                got: request.address.account,
            });
        }
        let state = self.primary_state()?;
        let companion = state
            .companions
            .iter()
            .find(|c| {
                c.metadata.device == request.address.device
                    && c.metadata.key_index == request.key_index
            })
            .ok_or(DeviceListError::UnknownCompanion(request.address.device))?;
        request.verify(&companion.identity)?;
        self.remove_companion(request.address.device, now)
    }

    /// Companion: a signed request asking the primary to remove this device.
    pub fn logout_request(&self, now: Timestamp) -> Result<LogoutRequest, DeviceListError> {
        match &self.role {
            Role::Companion(state) => match &state.link {
                Some(link) => Ok(LogoutRequest::sign(
                    &self.identity,
                    self.address,
                    link.metadata.key_index,
                    now,
                )),
                None => Err(DeviceListError::NotCompanion),
            },
            Role::Primary(_) => Err(DeviceListError::NotPrimary),
        }
    }

    fn sign_list(&mut self, now: Timestamp) -> SignedDeviceList {
        let account = self.address.account;
        let (version, previous_digest) = self
            .accounts
            .get(&account)
            .map_or((1, [0u8; 32]), |k| (k.list.version().saturating_add(1), k.list.digest()));
        let companions = match &self.role {
            Role::Primary(state) => state.companions.clone(),
            Role::Companion(_) => Vec::new(),
        };
        let signed = SignedDeviceList::sign(
            &self.identity,
            account,
            version,
            now.max(self.clock),
            previous_digest,
            companions,
        );
        // The primary's own list always verifies: it signed every part just now.
        if let Ok(list) = signed.verify() {
            self.store_list(list, now);
        }
        signed
    }
}

/// Lists known per account, kept in the device state.
pub(crate) type KnownAccounts = BTreeMap<AccountId, KnownAccount>;
