//! Account roles and device-list bookkeeping on a [`Device`].
//!
//! A primary approves, adds, removes and refreshes companions and signs every list. Every device
//! keeps the newest verified list of each account it talks to, refuses rollbacks and
//! equivocation, notices identity changes, and remembers list versions announced in traffic.
//! [`Device::authorize`] is the one rule deciding whether a device may be sent to or accepted
//! from: named by the newest list of its account, with the identity that list names, and, for a
//! companion, only while that list is at most 14 days old and no newer version was announced.
//! A companion derives its own status (not linked, active, signed out, removed) from its
//! account's newest list and the clock high-water mark. Nothing here performs I/O; lists travel
//! through the app's server.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::consts::{
    APPROVAL_LIFETIME_SECS, MAX_ANNOUNCEMENTS, MAX_ANSWERED_PAIRING_CODES, MAX_COMPANIONS,
    MAX_LIST_ISSUED_AHEAD_SECS, MAX_REFUSED_IDENTITIES, PAIRING_CODE_LIFETIME_SECS,
    PRIMARY_INACTIVITY_SECS, USED_LINK_REFERENCES,
};
use crate::device::Device;
use crate::device_list::{
    AuthorizedDevice, LinkingMetadata, LogoutRequest, SignedDeviceIdentity, SignedDeviceList,
    VerifiedDeviceList,
};
use crate::error::{DeviceListError, SessionError};
use crate::keys::{AccountId, DeviceAddress, DeviceId, Fingerprint, PublicIdentity, Timestamp};
use crate::security_code::SecurityCode;

/// What a device is within its account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Role {
    /// The account's primary: holds the account identity.
    Primary(PrimaryState),
    /// A companion, linked or waiting to be.
    Companion(Box<CompanionState>),
}

/// What only the primary keeps. Its companions are those of its own newest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PrimaryState {
    /// Key index of the next approval; key indices are never reused.
    next_key_index: u32,
    /// Highest device id ever added to the list; ids of devices once listed are never reused.
    highest_device: u32,
    /// Approvals waiting for their companion's countersignature. Each holds its device id until
    /// it is added or expires, so an abandoned approval consumes no id.
    pending: Vec<PendingApproval>,
    /// References of link offers already approved, newest last; offers are single use.
    used_link_references: VecDeque<[u8; 16]>,
    /// Device ids below `highest_device` that were reserved by approvals which expired
    /// unanswered: never listed, so handed out again first. At most [`MAX_COMPANIONS`].
    free_device_ids: Vec<u32>,
    /// Digests of the pairing codes that answered a hello, with when they expire: a code
    /// answers one hello only. At most [`MAX_ANSWERED_PAIRING_CODES`].
    answered_pairing_codes: Vec<([u8; 32], Timestamp)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingApproval {
    metadata: LinkingMetadata,
    identity: Fingerprint,
    expires: Timestamp,
}

/// What only a companion keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CompanionState {
    /// The approval this device countersigned, and the account identity it names.
    pub(crate) link: Option<Link>,
    /// The clock high-water mark when a verified list of the account first named this device
    /// with its identity: linking is finished only then, and the history window runs from it.
    linked_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Link {
    pub(crate) signed: SignedDeviceIdentity,
    pub(crate) account_identity: PublicIdentity,
}

impl Role {
    pub(crate) fn for_address(address: DeviceAddress) -> Self {
        if address.device.is_primary() {
            Role::Primary(PrimaryState {
                next_key_index: 1,
                highest_device: 0,
                pending: Vec::new(),
                used_link_references: VecDeque::new(),
                free_device_ids: Vec::new(),
                answered_pairing_codes: Vec::new(),
            })
        } else {
            Role::Companion(Box::default())
        }
    }

    /// True if restored role state respects the crate's bounds.
    pub(crate) fn within_limits(&self) -> bool {
        match self {
            Role::Primary(state) => {
                state.pending.len() <= MAX_COMPANIONS
                    && state.used_link_references.len() <= USED_LINK_REFERENCES
                    && state.free_device_ids.len() <= MAX_COMPANIONS
                    && state.answered_pairing_codes.len() <= MAX_ANSWERED_PAIRING_CODES
            }
            Role::Companion(state) => {
                state
                    .link
                    .as_ref()
                    .is_none_or(|link| link.signed.verify(&link.account_identity).is_ok())
                    && (state.link.is_some() || state.linked_at.is_none())
            }
        }
    }
}

/// The newest verified list of one account, as this device knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KnownAccount {
    #[serde(with = "crate::device_list::stored")]
    pub(crate) list: VerifiedDeviceList,
    /// List versions above `list`'s that devices of the account announced in traffic, with
    /// their digests and who announced them; ascending, distinct versions, at most
    /// [`MAX_ANNOUNCEMENTS`]. Until a list of at least the highest is processed, the account's
    /// companions are not trusted. An announcement counts only while the list held names one of
    /// its announcers: a device the account removed no longer speaks for it.
    pub(crate) announced: Vec<Announcement>,
    /// A verified list under another account identity, waiting for the user's decision.
    #[serde(with = "crate::device_list::stored::option")]
    pub(crate) pending_change: Option<VerifiedDeviceList>,
    /// Account identities no longer accepted for this account: the ones an accepted identity
    /// change replaced, and the ones the user rejected. Oldest first, at most
    /// [`MAX_REFUSED_IDENTITIES`].
    pub(crate) refused_identities: Vec<Fingerprint>,
}

/// A list version and digest announced in traffic, and the devices that announced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Announcement {
    pub(crate) version: u64,
    pub(crate) digest: [u8; 32],
    /// Distinct, at most `MAX_COMPANIONS + 1` (every device of one account).
    pub(crate) by: Vec<DeviceId>,
}

/// Why a device may not be sent to or accepted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No list is held for the address's account.
    NoList,
    /// The newest list held does not name the address.
    Unlisted,
    /// The address is a companion and the list is too old for companions, or a newer version
    /// was announced.
    Stale {
        /// The version announced in traffic, if that is the reason.
        announced: Option<u64>,
    },
}

impl KnownAccount {
    pub(crate) fn new(list: VerifiedDeviceList) -> Self {
        Self { list, announced: Vec::new(), pending_change: None, refused_identities: Vec::new() }
    }

    /// The highest version announced above the held list.
    pub(crate) fn highest_announced(&self) -> Option<u64> {
        self.announced.last().map(|a| a.version)
    }

    /// The digest announced for `version` by a device `list` names, if any: an announcement
    /// by a device the list removed does not count against it.
    fn announced_digest(&self, version: u64, list: &VerifiedDeviceList) -> Option<[u8; 32]> {
        let account = list.account();
        self.announced
            .iter()
            .find(|a| {
                a.version == version
                    && a.by.iter().any(|d| list.device(DeviceAddress::new(account, *d)).is_some())
            })
            .map(|a| a.digest)
    }

    /// Remembers that the device `by` of the account announced `(version, digest)` above the
    /// held list; true if that changed what is remembered. Fails (changing nothing) if another
    /// digest was announced for that version.
    /// Announcements are forgotten only when a list of at least their version is processed, or
    /// when no device that announced them is listed any more; never because another device
    /// announced a lower version, which a server can always replay late.
    pub(crate) fn announce(
        &mut self,
        version: u64,
        digest: [u8; 32],
        by: DeviceId,
    ) -> Result<bool, u64> {
        match self.announced.iter_mut().find(|a| a.version == version) {
            Some(known) if known.digest != digest => Err(version),
            Some(known) if known.by.contains(&by) => Ok(false),
            Some(known) => {
                known.by.push(by);
                known.by.sort_unstable();
                Ok(true)
            }
            None => {
                self.announced.push(Announcement { version, digest, by: vec![by] });
                self.announced.sort_unstable_by_key(|a| a.version);
                if self.announced.len() > MAX_ANNOUNCEMENTS {
                    self.announced.remove(0);
                }
                Ok(true)
            }
        }
    }

    /// Keeps the announcements that still count once `list` is held: above its version, by a
    /// device it names.
    fn keep_announcements_of(&mut self, list: &VerifiedDeviceList) {
        let account = list.account();
        for announcement in &mut self.announced {
            announcement.by.retain(|d| list.device(DeviceAddress::new(account, *d)).is_some());
        }
        self.announced.retain(|a| a.version > list.version() && !a.by.is_empty());
    }

    /// Refuses `identity` for this account from now on.
    fn refuse_identity(&mut self, identity: Fingerprint) {
        if !self.refused_identities.contains(&identity) {
            self.refused_identities.push(identity);
            if self.refused_identities.len() > MAX_REFUSED_IDENTITIES {
                self.refused_identities.remove(0);
            }
        }
    }

    /// True if restored account state respects its bounds.
    pub(crate) fn within_limits(&self) -> bool {
        self.announced.len() <= MAX_ANNOUNCEMENTS
            && self.announced.windows(2).all(|w| matches!(w, [a, b] if a.version < b.version))
            && self.announced.first().is_none_or(|a| a.version > self.list.version())
            && self.announced.iter().all(|a| {
                !a.by.is_empty()
                    && a.by.len() <= MAX_COMPANIONS + 1
                    && a.by.windows(2).all(|w| matches!(w, [x, y] if x < y))
            })
            && self.refused_identities.len() <= MAX_REFUSED_IDENTITIES
    }
}

/// Lists known per account, kept in the device state.
pub(crate) type KnownAccounts = BTreeMap<AccountId, KnownAccount>;

/// A device's view of itself within its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccountStatus {
    /// The primary, always active.
    Primary,
    /// A linked companion whose account list is at most 14 days old.
    Active,
    /// A companion whose account list is more than 14 days old: the primary was unused for that
    /// long, or the server withholds its lists.
    SignedOut,
    /// A companion its account's newest list no longer names.
    Removed,
    /// A companion that has not finished linking: no verified list of its account names it.
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
    /// Devices that left the list or changed identity; their sessions were deleted.
    pub removed: Vec<DeviceAddress>,
    /// Devices that joined the list.
    pub added: Vec<DeviceAddress>,
}

/// A list under a new account identity, waiting for the user: what the app shows before it
/// calls [`Device::accept_identity_change`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PendingIdentityChange {
    /// The account.
    pub account: AccountId,
    /// The new account identity the list is signed under.
    pub new_identity: PublicIdentity,
    /// The digest of the pending list: only that exact list can be accepted.
    pub list_digest: [u8; 32],
    /// The security code with the new identity, once this device's own account identity is
    /// known; the users compare it out of band.
    pub security_code: Option<SecurityCode>,
}

impl Device {
    /// The account this device belongs to.
    pub fn account(&self) -> AccountId {
        self.address.account
    }

    /// This device's status in its account at `now`, or at the clock high-water mark if that is
    /// later, so winding the clock back never signs a companion back in. Reading the status
    /// changes nothing.
    pub fn account_status(&self, now: Timestamp) -> AccountStatus {
        self.status_at(now.max(self.clock))
    }

    /// The status at `clock`.
    fn status_at(&self, clock: Timestamp) -> AccountStatus {
        let state = match &self.role {
            Role::Primary(_) => return AccountStatus::Primary,
            Role::Companion(state) => state,
        };
        let Some(link) = state.link.as_ref().filter(|_| state.linked_at.is_some()) else {
            return AccountStatus::NotLinked;
        };
        // Freshness runs from the newest own list, or from the link while none is held.
        let since = match self.accounts.get(&self.address.account) {
            Some(known) if self.names_me(&known.list) => known.list.issued_at(),
            Some(_) => return AccountStatus::Removed,
            None => link.signed.metadata.timestamp,
        };
        if clock.secs_since(since) > PRIMARY_INACTIVITY_SECS {
            AccountStatus::SignedOut
        } else {
            AccountStatus::Active
        }
    }

    /// Records that a held list, or what makes it trusted, changed: group sends recompute the
    /// devices they reach.
    pub(crate) fn lists_changed(&mut self) {
        self.list_epoch = self.list_epoch.wrapping_add(1);
    }

    /// True on the account's primary.
    pub(crate) fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary(_))
    }

    fn names_me(&self, list: &VerifiedDeviceList) -> bool {
        list.device(self.address).is_some_and(|d| d.identity() == self.identity.public())
    }

    /// True while `known`'s companions may be trusted at the clock high-water mark: no
    /// authorized device announced a newer version, and the list is at most
    /// [`PRIMARY_INACTIVITY_SECS`] old. The age rule guards against a server withholding lists,
    /// so it does not apply to a primary's own list, which it signs itself.
    pub(crate) fn companions_current(&self, known: &KnownAccount) -> bool {
        let own_signed =
            matches!(self.role, Role::Primary(_)) && known.list.account() == self.address.account;
        known.announced.is_empty()
            && (own_signed || known.list.age(self.clock) <= PRIMARY_INACTIVITY_SECS)
    }

    /// The one rule for sending to and accepting from a device: the authorized device at
    /// `address` in the newest list held for its account. The primary is reachable whatever
    /// the list's age; companions only while [`Device::companions_current`].
    pub(crate) fn authorize(&self, address: DeviceAddress) -> Result<&AuthorizedDevice, Refusal> {
        let known = self.accounts.get(&address.account).ok_or(Refusal::NoList)?;
        let device = known.list.device(address).ok_or(Refusal::Unlisted)?;
        if address.device.is_primary() || self.companions_current(known) {
            Ok(device)
        } else {
            Err(Refusal::Stale { announced: known.highest_announced() })
        }
    }

    /// Refuses the authorized paths (fan-out, history, receive) unless this device is the
    /// primary or an active companion.
    pub(crate) fn require_active(&self) -> Result<(), SessionError> {
        match self.status_at(self.clock) {
            AccountStatus::Primary | AccountStatus::Active => Ok(()),
            AccountStatus::NotLinked => Err(SessionError::NotLinked),
            AccountStatus::SignedOut | AccountStatus::Removed => Err(SessionError::SignedOut),
        }
    }

    /// Refuses the raw session path only while signed out or removed.
    pub(crate) fn require_not_signed_out(&self) -> Result<(), SessionError> {
        match self.status_at(self.clock) {
            AccountStatus::SignedOut | AccountStatus::Removed => Err(SessionError::SignedOut),
            _ => Ok(()),
        }
    }

    /// The security code for the conversation with `remote`, from the account identities this
    /// device holds; `None` until both are known.
    pub fn security_code(&self, remote: AccountId) -> Option<SecurityCode> {
        let theirs = self.accounts.get(&remote)?.list.account_identity();
        self.security_code_with(remote, theirs)
    }

    fn security_code_with(
        &self,
        remote: AccountId,
        theirs: &PublicIdentity,
    ) -> Option<SecurityCode> {
        let own = self.own_account_identity()?;
        Some(SecurityCode::new((self.address.account, own), (remote, theirs)))
    }

    /// The newest verified list held for `account`.
    pub fn device_list(&self, account: AccountId) -> Option<&VerifiedDeviceList> {
        self.accounts.get(&account).map(|k| &k.list)
    }

    /// True when a list with a changed account identity is waiting for the app's decision.
    pub fn identity_change_pending(&self, account: AccountId) -> bool {
        self.accounts.get(&account).is_some_and(|k| k.pending_change.is_some())
    }

    /// The identity change waiting for the user's decision on `account`, if any: the new
    /// identity, the digest of the list that raised it, and the security code to compare.
    pub fn pending_identity_change(&self, account: AccountId) -> Option<PendingIdentityChange> {
        let pending = self.accounts.get(&account)?.pending_change.as_ref()?;
        Some(PendingIdentityChange {
            account,
            new_identity: pending.account_identity().clone(),
            list_digest: pending.digest(),
            security_code: self.security_code_with(account, pending.account_identity()),
        })
    }

    /// Accounts whose companions this device does not trust until it processes a newer list:
    /// each with the version announced in traffic, or `None` when the held list is more than
    /// 14 days old. Fetch these lists from the server. The own account is named too: on a
    /// companion whose own list is stale (it is signed out until a fresh one arrives) or was
    /// announced newer, and on a primary whose companions announced an own list newer than the
    /// one it holds (restored from a backup, it must fetch what it signed before it signs again).
    pub fn lists_to_fetch(&self) -> Vec<(AccountId, Option<u64>)> {
        self.accounts
            .iter()
            .filter(|(_, known)| !self.companions_current(known))
            .map(|(&account, known)| (account, known.highest_announced()))
            .collect()
    }

    /// Verifies a device list from the server and keeps it if it is new.
    ///
    /// Rejects rollbacks and equivocation (including a list that contradicts the digest an
    /// authorized device announced for its version), a list for this device's own account under
    /// another account identity ([`DeviceListError::ForeignOwnList`]: a primary signs its own
    /// lists, and a companion is bound to the identity it linked under), and a list under an
    /// identity refused for the account ([`DeviceListError::RefusedIdentity`]). Versions may skip: a list more than one
    /// version ahead is accepted on its signatures alone, since the chain to its predecessor
    /// cannot be checked without the lists in between. Storing a list deletes the sessions of
    /// every address of the account it does not name with the identity held there. A list
    /// under another account identity fails with [`DeviceListError::IdentityChanged`], is kept
    /// as the pending change, and blocks sending to the account until the app calls
    /// [`Device::accept_identity_change`] with it.
    pub fn process_device_list(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<ListUpdate, DeviceListError> {
        self.observe(now);
        let list = SignedDeviceList::try_from(bytes)?.verify()?;
        let account = list.account();
        if list.issued_at() > self.clock.plus_secs(MAX_LIST_ISSUED_AHEAD_SECS) {
            return Err(DeviceListError::IssuedInFuture { issued_at: list.issued_at() });
        }
        if account == self.address.account
            && let Some(own) = self.own_account_identity()
            && own != list.account_identity()
        {
            return Err(DeviceListError::ForeignOwnList { account });
        }
        if let Some(known) = self.accounts.get_mut(&account) {
            if known.refused_identities.contains(&list.account_identity().fingerprint()) {
                return Err(DeviceListError::RefusedIdentity { account });
            }
            if known.list.account_identity() != list.account_identity() {
                let version = list.version();
                let replaces = known.pending_change.as_ref().is_none_or(|p| {
                    p.account_identity() != list.account_identity() || p.version() <= version
                });
                if replaces {
                    known.pending_change = Some(list);
                    self.lists_changed();
                }
                return Err(DeviceListError::IdentityChanged { account });
            }
            let seen = known.list.version();
            let version = list.version();
            if version < seen {
                return Err(DeviceListError::RollbackRejected { seen, got: version });
            }
            if version == seen {
                return if list.digest() == known.list.digest() {
                    Ok(ListUpdate { list, removed: Vec::new(), added: Vec::new() })
                } else {
                    Err(DeviceListError::Equivocation { version })
                };
            }
            if version == seen + 1 && list.previous_digest() != known.list.digest() {
                return Err(DeviceListError::Equivocation { version });
            }
            if known.announced_digest(version, &list).is_some_and(|digest| digest != list.digest())
            {
                return Err(DeviceListError::Equivocation { version });
            }
        }
        let held = self.device_list(account).map(VerifiedDeviceList::version);
        let update = self.store_list(list);
        if account == self.address.account
            && let (Some(held), Role::Primary(state)) = (held, &mut self.role)
        {
            // An own list this primary did not sign in this state: it was restored from a
            // backup, and the lists signed since may have named devices it never sees again.
            state.skip_lost_ids(update.list.version().saturating_sub(held));
        }
        Ok(update)
    }

    /// Replaces the held list of `account` by the list under a new account identity that raised
    /// [`DeviceListError::IdentityChanged`], after the user accepted the change. Only that exact
    /// list is accepted (compared by digest, under the new identity); any other is
    /// [`DeviceListError::NotPendingChange`]. Deletes every session with the account's devices.
    pub fn accept_identity_change(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<ListUpdate, DeviceListError> {
        self.observe(now);
        let list = SignedDeviceList::try_from(bytes)?.verify()?;
        let account = list.account();
        if account == self.address.account {
            // A primary signs its own lists and a companion is bound to the identity it linked
            // under: the own account never changes identity.
            return Err(DeviceListError::ForeignOwnList { account });
        }
        let pending = self.accounts.get(&account).and_then(|k| k.pending_change.as_ref());
        let is_pending = pending.is_some_and(|p| {
            p.digest() == list.digest() && p.account_identity() == list.account_identity()
        });
        if !is_pending {
            return Err(DeviceListError::NotPendingChange { account });
        }
        let removed = self.forget_account_devices(account);
        let mut known = KnownAccount::new(list.clone());
        if let Some(old) = self.accounts.remove(&account) {
            known.refused_identities = old.refused_identities;
            known.refuse_identity(old.list.account_identity().fingerprint());
        }
        self.accounts.insert(account, known);
        let added = list.devices().iter().map(AuthorizedDevice::address).collect();
        Ok(ListUpdate { list, removed, added })
    }

    /// Rejects the identity change pending for `account`, after the users compared security
    /// codes and found it is not theirs: the pending change is dropped, and lists under that
    /// identity are refused from now on ([`DeviceListError::RefusedIdentity`]), so sending to
    /// the account resumes under the identity held. [`DeviceListError::NotPendingChange`] if no
    /// change is pending.
    pub fn reject_identity_change(
        &mut self,
        account: AccountId,
        now: Timestamp,
    ) -> Result<(), DeviceListError> {
        self.observe(now);
        let known = self.accounts.get_mut(&account);
        let Some((known, pending)) =
            known.and_then(|k| k.pending_change.take().map(|pending| (k, pending)))
        else {
            return Err(DeviceListError::NotPendingChange { account });
        };
        known.refuse_identity(pending.account_identity().fingerprint());
        self.lists_changed();
        Ok(())
    }

    /// The account identity of this device's own account, once known.
    pub(crate) fn own_account_identity(&self) -> Option<&PublicIdentity> {
        match &self.role {
            Role::Primary(_) => Some(self.identity.public()),
            Role::Companion(state) => state.link.as_ref().map(|link| &link.account_identity),
        }
    }

    /// Every session record with a device of `account`, removed; their addresses.
    /// Forgets everything kept per device of `account`: its sessions (returning their
    /// addresses), its sender keys, and what was remembered of its messages and retries.
    fn forget_account_devices(&mut self, account: AccountId) -> Vec<DeviceAddress> {
        let doomed: Vec<DeviceAddress> = self.account_session_addresses(account).collect();
        for address in &doomed {
            self.sessions.remove(address);
        }
        self.group_keys.retain(|(sender, _), _| sender.account != account);
        self.peers.retain(|sender, _| sender.account != account);
        self.lists_changed();
        doomed
    }

    fn account_session_addresses(
        &self,
        account: AccountId,
    ) -> impl Iterator<Item = DeviceAddress> + '_ {
        let first = DeviceAddress::new(account, DeviceId(0));
        let last = DeviceAddress::new(account, DeviceId(u32::MAX));
        self.sessions.range(first..=last).map(|(address, _)| *address)
    }

    /// Keeps `list` as the newest of its account. Deletes the session records of every address
    /// of the account the list does not name with the record's identity, so a session planted
    /// before the list named the address is never used.
    fn store_list(&mut self, list: VerifiedDeviceList) -> ListUpdate {
        let account = list.account();
        let old = self.accounts.remove(&account);
        let listed = |l: &VerifiedDeviceList, d: &AuthorizedDevice| {
            l.device(d.address()).is_some_and(|x| x.identity() == d.identity())
        };
        let added = list
            .devices()
            .iter()
            .filter(|d| old.as_ref().is_none_or(|o| !listed(&o.list, d)))
            .map(AuthorizedDevice::address)
            .collect();
        let removed = old
            .as_ref()
            .map(|o| {
                o.list.devices().iter().filter(|d| !listed(&list, d)).map(|d| d.address()).collect()
            })
            .unwrap_or_default();
        let unbound: Vec<DeviceAddress> = self
            .account_session_addresses(account)
            .filter(|address| {
                let held = self.sessions.get(address).map(|r| &r.remote_identity);
                list.device(*address).map(AuthorizedDevice::identity) != held
            })
            .collect();
        for address in &unbound {
            self.sessions.remove(address);
        }
        // A device that left the list, or is listed under another identity now, no longer
        // speaks in any group: its sender keys go.
        let gone = |sender: &DeviceAddress| {
            sender.account == account
                && list.device(*sender).is_none_or(|d| {
                    old.as_ref()
                        .and_then(|o| o.list.device(*sender))
                        .is_some_and(|before| before.identity() != d.identity())
                })
        };
        self.group_keys.retain(|(sender, _), _| !gone(sender));
        // So does what this device remembers of it (its delivered ids, the retries asked of
        // it): kept per listed device only, it stays bounded by the lists.
        self.peers.retain(|sender, _| !gone(sender));
        self.lists_changed();
        if account == self.address.account {
            let names_me = self.names_me(&list);
            match &mut self.role {
                Role::Companion(state) if names_me => {
                    state.linked_at.get_or_insert(self.clock);
                }
                Role::Companion(_) => {}
                Role::Primary(state) => state.adopt(&list),
            }
        }
        let mut known = KnownAccount::new(list.clone());
        if let Some(old) = old {
            known.announced = old.announced;
            known.keep_announcements_of(&list);
            known.pending_change = old.pending_change;
            known.refused_identities = old.refused_identities;
        }
        self.accounts.insert(account, known);
        ListUpdate { list, removed, added }
    }

    fn primary_state(&mut self) -> Result<&mut PrimaryState, DeviceListError> {
        match &mut self.role {
            Role::Primary(state) => Ok(state),
            Role::Companion(_) => Err(DeviceListError::NotPrimary),
        }
    }

    /// The primary's own newest list: it signs one when it is created and holds it from then on.
    fn own_list(&self) -> Result<&VerifiedDeviceList, DeviceListError> {
        self.device_list(self.address.account).ok_or(DeviceListError::NotPrimary)
    }

    /// Primary: when the companion `device` was linked (its linking metadata's timestamp).
    pub(crate) fn companion_linked_at(&self, device: DeviceId) -> Option<Timestamp> {
        match &self.role {
            Role::Primary(_) => self
                .own_list()
                .ok()?
                .signed_companions()
                .iter()
                .find(|c| c.metadata.device == device)
                .map(|c| c.metadata.timestamp),
            Role::Companion(_) => None,
        }
    }

    /// Companion: when linking finished.
    ///
    /// `Ok(Some(t))`: linking finished at `t` (by the clock mark when a verified own list first
    /// named this device). `Ok(None)`: countersigned, waiting for that list. `Err`: not a
    /// companion in a link at all.
    pub(crate) fn own_link_time(&self) -> Result<Option<Timestamp>, ()> {
        match &self.role {
            Role::Companion(state) if state.link.is_some() => Ok(state.linked_at),
            _ => Err(()),
        }
    }

    /// True if a link offer with this reference was already approved.
    pub(crate) fn link_reference_used(&self, reference: &[u8; 16]) -> bool {
        match &self.role {
            Role::Primary(state) => state.used_link_references.contains(reference),
            Role::Companion(_) => false,
        }
    }

    /// Primary: remembers that the pairing code `code` answered a hello, so it answers no other
    /// until it expires. Refused ([`crate::LinkError::CodeAlreadyUsed`]) if it answered one
    /// already, or if [`MAX_ANSWERED_PAIRING_CODES`] codes answered within one code lifetime.
    pub(crate) fn answer_pairing_code(&mut self, code: &[u8]) -> Result<(), crate::LinkError> {
        let clock = self.clock;
        let Role::Primary(state) = &mut self.role else {
            return Err(crate::LinkError::NotPrimary);
        };
        let digest = crate::crypto::hash(crate::crypto::label::HASH_ANSWERED_PAIRING_CODE, &[code]);
        let live: Vec<([u8; 32], Timestamp)> = state
            .answered_pairing_codes
            .iter()
            .filter(|(_, expires)| *expires >= clock)
            .copied()
            .collect();
        if live.iter().any(|(known, _)| crate::crypto::ct_eq(known, &digest)) {
            return Err(crate::LinkError::CodeAlreadyUsed);
        }
        if live.len() >= MAX_ANSWERED_PAIRING_CODES {
            return Err(crate::LinkError::TooManyPairingAttempts);
        }
        state.answered_pairing_codes = live;
        state.answered_pairing_codes.push((digest, clock.plus_secs(PAIRING_CODE_LIFETIME_SECS)));
        Ok(())
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

    /// Primary: approves a companion identity, assigning it a device id and key index, and holds
    /// the id for [`APPROVAL_LIFETIME_SECS`] until [`Device::add_companion`]. An approval that is
    /// never completed consumes no device id. An identity whose approval is still pending gets
    /// that same approval again (a retry after a crash). Refused before anything is signed: a
    /// fifth companion (approvals still pending count), and an identity already in the list
    /// (the primary's own included).
    pub fn approve_companion(
        &mut self,
        companion: &PublicIdentity,
        now: Timestamp,
    ) -> Result<CompanionApproval, DeviceListError> {
        self.observe(now);
        let clock = self.clock;
        let account = self.address.account;
        let own_list = self.own_list()?;
        let listed = own_list.companion_devices().len();
        let fingerprint = companion.fingerprint();
        let in_list = own_list.devices().iter().any(|d| d.identity().fingerprint() == fingerprint);
        let state = self.primary_state()?;
        // Expired approvals are dropped only when this call succeeds: a refusal changes nothing.
        let live: Vec<PendingApproval> =
            state.pending.iter().filter(|p| p.expires >= clock).cloned().collect();
        if in_list {
            return Err(DeviceListError::DuplicateIdentity);
        }
        // The same identity approved again while its approval is pending gets that approval
        // again (same metadata, same signature): a retry after a crash, not a second device.
        if let Some(pending) = live.iter().find(|p| p.identity == fingerprint) {
            let metadata = pending.metadata;
            let account_signature =
                SignedDeviceIdentity::account_sign(&self.identity, metadata, companion);
            return Ok(CompanionApproval {
                metadata,
                account_identity: self.identity.public().clone(),
                account_signature,
            });
        }
        if listed + live.len() >= MAX_COMPANIONS {
            return Err(DeviceListError::CompanionLimit { limit: MAX_COMPANIONS });
        }
        // Ids reserved by approvals that expired unanswered were never listed: they go out
        // again, lowest first, before a new id is drawn.
        let mut free: Vec<u32> = state
            .pending
            .iter()
            .filter(|p| p.expires < clock)
            .map(|p| p.metadata.device.0)
            .chain(state.free_device_ids.iter().copied())
            .filter(|id| !live.iter().any(|p| p.metadata.device.0 == *id))
            .collect();
        free.sort_unstable();
        free.dedup();
        let reserved = live.iter().map(|p| p.metadata.device.0).max().unwrap_or(0);
        let device = match free.first() {
            Some(&id) => id,
            None => state
                .highest_device
                .max(reserved)
                .checked_add(1)
                .ok_or(DeviceListError::IdsExhausted)?,
        };
        free.retain(|id| *id != device);
        free.truncate(MAX_COMPANIONS);
        let key_index = state.next_key_index;
        let next_key_index = key_index.checked_add(1).ok_or(DeviceListError::IdsExhausted)?;
        let metadata =
            LinkingMetadata { account, device: DeviceId(device), key_index, timestamp: clock };
        state.next_key_index = next_key_index;
        state.free_device_ids = free;
        state.pending = live;
        state.pending.push(PendingApproval {
            metadata,
            identity: fingerprint,
            expires: clock.plus_secs(APPROVAL_LIFETIME_SECS),
        });
        let account_signature =
            SignedDeviceIdentity::account_sign(&self.identity, metadata, companion);
        Ok(CompanionApproval {
            metadata,
            account_identity: self.identity.public().clone(),
            account_signature,
        })
    }

    /// Companion: checks the primary's approval of this device and countersigns it. The device
    /// takes the address the approval assigns; it is linked once it processes a verified list of
    /// its account that names it. Until then a new approval may replace this one.
    pub fn countersign_approval(
        &mut self,
        approval: &CompanionApproval,
    ) -> Result<SignedDeviceIdentity, DeviceListError> {
        let Role::Companion(state) = &self.role else {
            return Err(DeviceListError::NotCompanion);
        };
        if state.linked_at.is_some() {
            return Err(DeviceListError::AlreadyLinked);
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
        let account = approval.metadata.account;
        // A list held for the account from before the link, under another account identity, was
        // never authorized by this primary: forget it and what it brought.
        if self
            .accounts
            .get(&account)
            .is_some_and(|k| k.list.account_identity() != &approval.account_identity)
        {
            self.accounts.remove(&account);
            self.forget_account_devices(account);
        }
        // Nor was a pending change to another identity: the own account keeps the identity it
        // links under.
        if let Some(known) = self.accounts.get_mut(&account)
            && known.pending_change.take().is_some()
        {
            self.lists_changed();
        }
        if let Role::Companion(state) = &mut self.role {
            state.link = Some(Link {
                signed: signed.clone(),
                account_identity: approval.account_identity.clone(),
            });
        }
        Ok(signed)
    }

    /// Primary: adds a countersigned companion that matches a pending approval and signs the
    /// new device list. A companion the newest own list already names with exactly this signed
    /// identity returns that list again (a retry after a crash).
    pub fn add_companion(
        &mut self,
        signed: &SignedDeviceIdentity,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.observe(now);
        let clock = self.clock;
        let account = self.address.account;
        if signed.metadata.account != account {
            return Err(DeviceListError::WrongAccount {
                expected: account,
                got: signed.metadata.account,
            });
        }
        self.primary_state()?;
        signed.verify(self.identity.public())?;
        let own_list = self.own_list()?;
        // Adding a companion the newest own list already names, exactly so, returns that list:
        // a retry after a crash that landed the first call.
        if own_list.signed_companions().iter().any(|c| c == signed) {
            return SignedDeviceList::try_from(own_list.signed_bytes())
                .map_err(DeviceListError::Decode);
        }
        if own_list.device(signed.metadata.address()).is_some() {
            return Err(DeviceListError::DeviceIdInUse(signed.metadata.device));
        }
        let mut companions = own_list.signed_companions().to_vec();
        if companions.len() >= MAX_COMPANIONS {
            return Err(DeviceListError::CompanionLimit { limit: MAX_COMPANIONS });
        }
        let fingerprint = signed.identity.fingerprint();
        let state = self.primary_state()?;
        let matching = |p: &PendingApproval| {
            p.expires >= clock && p.metadata == signed.metadata && p.identity == fingerprint
        };
        if !state.pending.iter().any(matching) {
            return Err(DeviceListError::UnknownApproval);
        }
        state.pending.retain(|p| p.expires >= clock && !matching(p));
        state.highest_device = state.highest_device.max(signed.metadata.device.0);
        state.free_device_ids.retain(|id| *id != signed.metadata.device.0);
        companions.push(signed.clone());
        companions.sort_by_key(|c| c.metadata.device);
        self.sign_list(companions)
    }

    /// Primary: removes a companion and signs the new list.
    pub fn remove_companion(
        &mut self,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.observe(now);
        self.primary_state()?;
        let mut companions = self.own_list()?.signed_companions().to_vec();
        let before = companions.len();
        companions.retain(|c| c.metadata.device != device);
        if companions.len() == before {
            return Err(DeviceListError::UnknownCompanion(device));
        }
        self.sign_list(companions)
    }

    /// Primary: re-signs the current list with a new issued-at time. Call it whenever the primary
    /// is used, so its companions stay signed in.
    pub fn refresh_device_list(
        &mut self,
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.observe(now);
        self.primary_state()?;
        let companions = self.own_list()?.signed_companions().to_vec();
        self.sign_list(companions)
    }

    /// Primary: honours a companion's signed logout request. The request must name a companion
    /// of the newest own list by device id and key index, and carry that companion's signature.
    pub fn process_logout(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<SignedDeviceList, DeviceListError> {
        self.observe(now);
        let request = LogoutRequest::try_from(bytes)?;
        let account = self.address.account;
        if request.address.account != account {
            return Err(DeviceListError::WrongAccount {
                expected: account,
                got: request.address.account,
            });
        }
        self.primary_state()?;
        let companion = self
            .own_list()?
            .signed_companions()
            .iter()
            .find(|c| {
                c.metadata.device == request.address.device
                    && c.metadata.key_index == request.key_index
            })
            .ok_or(DeviceListError::UnknownCompanion(request.address.device))?;
        request.verify(&companion.identity)?;
        self.remove_companion(request.address.device, now)
    }

    /// Companion: a signed request asking the primary to remove this device. Raises the clock
    /// high-water mark to `now` and signs with the mark.
    pub fn logout_request(&mut self, now: Timestamp) -> Result<LogoutRequest, DeviceListError> {
        self.observe(now);
        match &self.role {
            Role::Companion(state) => match &state.link {
                Some(link) => Ok(LogoutRequest::sign(
                    &self.identity,
                    self.address,
                    link.signed.metadata.key_index,
                    self.clock,
                )),
                None => Err(DeviceListError::NotLinked),
            },
            Role::Primary(_) => Err(DeviceListError::NotCompanion),
        }
    }

    /// Primary: signs and keeps the next own list, naming `companions` (sorted, unique and at
    /// most [`MAX_COMPANIONS`], as every caller ensures).
    ///
    /// Refused with [`DeviceListError::OwnListBehind`] while a device the new list would still
    /// name announced an own list newer than the one held: this primary was restored from a
    /// backup, and signing now would fork the account's history and could name again a device
    /// it removed since. Fetch the own list first. An announcement only by a device the new list
    /// leaves out does not block it, so a lying companion can always be removed.
    pub(crate) fn sign_list(
        &mut self,
        companions: Vec<SignedDeviceIdentity>,
    ) -> Result<SignedDeviceList, DeviceListError> {
        let account = self.address.account;
        if let Some(known) = self.accounts.get(&account) {
            let named = |device: &DeviceId| {
                device.is_primary() || companions.iter().any(|c| c.metadata.device == *device)
            };
            if let Some(ahead) =
                known.announced.iter().rev().find(|a| a.by.iter().any(named)).map(|a| a.version)
            {
                return Err(DeviceListError::OwnListBehind {
                    account,
                    held: known.list.version(),
                    announced: ahead,
                });
            }
        }
        let (version, previous_digest) = self
            .device_list(account)
            .map_or((1, [0u8; 32]), |l| (l.version().saturating_add(1), l.digest()));
        let signed = SignedDeviceList::sign(
            &self.identity,
            account,
            version,
            self.clock,
            previous_digest,
            companions,
        );
        // The primary's own list always verifies: it signed every part just now.
        if let Ok(list) = signed.verify() {
            self.store_list(list);
        }
        Ok(signed)
    }
}

impl PrimaryState {
    /// Keeps the id counters ahead of every device and key index an own list names (a list the
    /// primary signed before a restore, say).
    fn adopt(&mut self, list: &VerifiedDeviceList) {
        for device in list.companion_devices() {
            self.highest_device = self.highest_device.max(device.address().device.0);
            self.next_key_index = self.next_key_index.max(device.key_index().saturating_add(1));
        }
    }

    /// Skips the ids `versions` own lists this state never signed may have given out: each
    /// version adds at most one companion, so no device id past them was ever listed. Pending
    /// approvals and free ids go too (they may have been completed since). Key indices skip as
    /// many, so a key index may repeat after a restore only under another device id.
    fn skip_lost_ids(&mut self, versions: u64) {
        let versions = u32::try_from(versions).unwrap_or(u32::MAX);
        self.highest_device = self.highest_device.saturating_add(versions);
        self.next_key_index = self.next_key_index.saturating_add(versions);
        self.pending.clear();
        self.free_device_ids.clear();
    }
}

/// The role and held lists as persisted state format 2 kept them: read only to import that
/// format ([`Device::from_bytes`]).
pub(crate) mod legacy {
    use std::collections::VecDeque;

    use serde::Deserialize;

    use super::{
        Announcement, CompanionState, KnownAccount, Link, PendingApproval, PrimaryState, Role,
    };
    use crate::device_list::VerifiedDeviceList;
    use crate::keys::{DeviceId, Fingerprint};

    #[derive(Deserialize)]
    pub(crate) enum LegacyRole {
        Primary(LegacyPrimaryState),
        Companion(Box<LegacyCompanionState>),
    }

    #[derive(Deserialize)]
    pub(crate) struct LegacyPrimaryState {
        next_key_index: u32,
        highest_device: u32,
        pending: Vec<PendingApproval>,
        used_link_references: VecDeque<[u8; 16]>,
    }

    #[derive(Deserialize)]
    pub(crate) struct LegacyCompanionState {
        link: Option<Link>,
        linked: bool,
    }

    #[derive(Deserialize)]
    pub(crate) struct LegacyKnownAccount {
        #[serde(with = "crate::device_list::stored")]
        list: VerifiedDeviceList,
        announced: Vec<(u64, [u8; 32])>,
        #[serde(with = "crate::device_list::stored::option")]
        pending_change: Option<VerifiedDeviceList>,
        refused_identities: Vec<Fingerprint>,
    }

    impl LegacyRole {
        /// The current form. A linked companion counts as linked when it countersigned.
        pub(crate) fn upgrade(self) -> Role {
            match self {
                LegacyRole::Primary(state) => Role::Primary(PrimaryState {
                    next_key_index: state.next_key_index,
                    highest_device: state.highest_device,
                    pending: state.pending,
                    used_link_references: state.used_link_references,
                    free_device_ids: Vec::new(),
                    answered_pairing_codes: Vec::new(),
                }),
                LegacyRole::Companion(state) => {
                    let linked_at = match (&state.link, state.linked) {
                        (Some(link), true) => Some(link.signed.metadata.timestamp),
                        _ => None,
                    };
                    Role::Companion(Box::new(CompanionState { link: state.link, linked_at }))
                }
            }
        }
    }

    impl LegacyKnownAccount {
        /// The current form. Format 2 did not record who announced a version; the primary is
        /// named, so the announcement counts until a list of its version is processed.
        pub(crate) fn upgrade(self) -> KnownAccount {
            KnownAccount {
                list: self.list,
                announced: self
                    .announced
                    .into_iter()
                    .map(|(version, digest)| Announcement {
                        version,
                        digest,
                        by: vec![DeviceId::PRIMARY],
                    })
                    .collect(),
                pending_change: self.pending_change,
                refused_identities: self.refused_identities,
            }
        }
    }
}
