//! The world: accounts of stored devices, the apps around them, the relay and the clock, and
//! what each event does to them. See the `sim` module documentation for the model.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use multidevice::consts::{DAY_SECS, MAX_COMPANIONS};
use multidevice::error::RetryError;
use multidevice::store::{Rows, StoreError, StoreKey, Table};
use multidevice::{
    AccountId, AccountStatus, Action, Device, DeviceAddress, DeviceId, Envelope, FanoutError,
    GroupError, GroupId, Inbound, InboxId, OutboxId, OutboxItem, PrekeyBundle, ReceiveError,
    Received, RetryReason, RetryRequest, SentCacheLimits, SessionError, SignedDeviceList,
    StoredDevice, Timestamp, VerifiedDeviceList, VerifiedRetryRequest,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::oracle::{How, Oracle, Read, Reader, Rule, Sent, reference};
use super::relay::{Carries, Item, Relay};
use super::script::{Event, Fate, SendCrash, Setup};
use super::store::{Fault, FaultSwitch, SimStore, Storage};
use super::{Options, SMALL_CACHE_ENTRIES, Stats};

/// The clock at the start.
const T0: Timestamp = Timestamp(1_700_000_000);
/// One-time prekeys a device uploads at a time: few, so they run out and bundles come without.
const ONE_TIME_PREKEYS: usize = 4;
/// Backups kept per device; older ones are discarded.
const BACKUPS_KEPT: usize = 3;
/// Rounds of the quiescence phase at most (each delivers everything the relay holds).
const QUIESCENCE_ROUNDS: usize = 40;
/// A primary offline this long: its companions are signed out (14 days) on the way.
const OFFLINE_SECS: u64 = 15 * DAY_SECS;
/// Wire type bytes (second byte of a message) of a retry request and of a group message.
const RETRY_REQUEST_TYPE: u8 = 0x60;
const GROUP_MESSAGE_TYPE: u8 = 0x50;

/// What the app remembers alongside its store, and loses to a restore with it: what it read,
/// the inbox entries it handled, and, for the oracle, what it sent and who holds its sender keys.
#[derive(Clone, Default)]
struct Lineage {
    /// Messages (tokens) read.
    delivered: BTreeSet<u64>,
    /// Inbox entries handled (kept, or a retry request answered).
    inbox_done: BTreeSet<InboxId>,
    /// Per group index, the devices holding this device's current sender key.
    holders: BTreeMap<usize, BTreeSet<DeviceAddress>>,
    /// Messages this device's cache took, oldest first, with when.
    sent: Vec<(u64, Timestamp)>,
}

struct Backup {
    rows: Vec<(Table, Rows)>,
    lineage: Lineage,
}

/// One device and the app around it.
struct App {
    address: DeviceAddress,
    account: usize,
    /// `None` only inside a restart.
    device: Option<StoredDevice<SimStore>>,
    fault: FaultSwitch,
    /// Only primaries go offline.
    online: bool,
    lineage: Lineage,
    /// Messages read by an earlier lineage that a restore rolled back.
    rolled_back: BTreeSet<u64>,
    backups: Vec<Backup>,
    /// Stores made for this device (names SQLite files).
    stores: u32,
    /// The newest list the device holds per account, as the calls that changed them returned
    /// them: the model reads the device's view from here rather than from its store.
    lists: BTreeMap<AccountId, VerifiedDeviceList>,
}

impl App {
    fn new(
        address: DeviceAddress,
        account: usize,
        device: StoredDevice<SimStore>,
        fault: FaultSwitch,
        lists: BTreeMap<AccountId, VerifiedDeviceList>,
    ) -> Self {
        App {
            address,
            account,
            device: Some(device),
            fault,
            online: true,
            lineage: Lineage::default(),
            rolled_back: BTreeSet::new(),
            backups: Vec::new(),
            stores: 1,
            lists,
        }
    }
}

/// The world right after its setup (without groups): built once per shape and copied into every
/// run of that shape, since creating keys, linking and every device verifying every list costs
/// as much as dozens of events. Only the runs' own randomness differs from there on.
struct Template {
    apps: Vec<TemplateApp>,
    accounts: Vec<AccountModel>,
    relay: Relay,
}

struct TemplateApp {
    address: DeviceAddress,
    account: usize,
    rows: Vec<(Table, Rows)>,
    lists: BTreeMap<AccountId, VerifiedDeviceList>,
}

/// The template for `setup`'s shape, built on first use.
fn template(setup: &Setup, options: &Options) -> Arc<Template> {
    type Shape = (usize, [usize; 3], bool);
    static TEMPLATES: OnceLock<Mutex<BTreeMap<Shape, Arc<Template>>>> = OnceLock::new();
    let shape: Shape = (setup.accounts, setup.companions, setup.small_cache);
    let templates = TEMPLATES.get_or_init(Mutex::default);
    if let Some(template) = templates.lock().unwrap_or_else(PoisonError::into_inner).get(&shape) {
        return template.clone();
    }
    let seed =
        setup.accounts as u64 * 1000 + setup.companions.iter().fold(0, |s, c| s * 10 + *c as u64);
    let mut world = World::empty(setup, Storage::Memory, options, StdRng::seed_from_u64(seed));
    world.set_up(setup);
    let apps = (0..world.apps.len())
        .map(|slot| {
            let device = world.apps[slot].device.take().expect("a device is open");
            let mut store = device.into_store();
            let app = &world.apps[slot];
            TemplateApp {
                address: app.address,
                account: app.account,
                rows: store.rows(),
                lists: app.lists.clone(),
            }
        })
        .collect();
    let template =
        Arc::new(Template { apps, accounts: world.accounts.clone(), relay: world.relay.clone() });
    templates.lock().unwrap_or_else(PoisonError::into_inner).insert(shape, template.clone());
    template
}

#[derive(Clone)]
struct AccountModel {
    id: AccountId,
    primary: usize,
    /// Companions its primary's newest list names, as the model tracks them.
    companions: Vec<usize>,
}

struct GroupModel {
    id: GroupId,
    /// Member account indexes.
    members: BTreeSet<usize>,
}

pub(crate) struct World {
    rng: StdRng,
    now: Timestamp,
    key: StoreKey,
    storage: Storage,
    relay: Relay,
    oracle: Oracle,
    apps: Vec<App>,
    accounts: Vec<AccountModel>,
    groups: Vec<GroupModel>,
    cache_limits: SentCacheLimits,
    options: Options,
    stats: Stats,
    step: usize,
    /// Devices the current step changed.
    touched: BTreeSet<usize>,
    /// References of retry requests relayed, to count each once.
    retry_requests: BTreeSet<[u8; 16]>,
    /// The quiescence phase: the relay is honest, so lists fetched are the newest.
    quiet: bool,
    /// Devices holding a retry request in their inbox they could not answer yet.
    waiting: BTreeSet<usize>,
}

/// An error that may be the fault the store injected, and says what to do.
trait Failure {
    fn injected(&self) -> bool;
    fn what_to_do(&self) -> Action;
}

macro_rules! failure_via_store_variant {
    ($($error:ty),*) => {$(
        impl Failure for $error {
            fn injected(&self) -> bool {
                matches!(self, Self::Store(StoreError::Injected))
            }
            fn what_to_do(&self) -> Action {
                self.action()
            }
        }
    )*};
}
failure_via_store_variant!(FanoutError, GroupError, ReceiveError, RetryError);

/// What became of a send.
enum SendOutcome<T> {
    /// The call returned what it sent.
    Sent(T),
    /// The commit landed but the app saw a crash: this is the outbox item it left.
    Landed(OutboxItem),
    /// The commit never landed: nothing was sent.
    Lost,
    /// The call refused.
    Refused,
}

impl World {
    pub(crate) fn new(setup: &Setup, options: &Options) -> Self {
        let storage =
            if options.sqlite && setup.sqlite { Storage::sqlite() } else { Storage::Memory };
        let mut world =
            World::empty(setup, storage, options, StdRng::seed_from_u64(setup.crypto_seed));
        world.stats.sqlite_runs = u64::from(world.storage.is_sqlite());
        let template = template(setup, options);
        for (slot, app) in template.apps.iter().enumerate() {
            let fault = FaultSwitch::default();
            let mut store = world.storage.create(&format!("{slot}-0"), &fault);
            store.fill(&app.rows);
            let device =
                StoredDevice::open(store, &world.key, &mut world.rng).expect("open a copy");
            world.apps.push(App::new(app.address, app.account, device, fault, app.lists.clone()));
        }
        world.accounts = template.accounts.clone();
        world.relay = template.relay.clone();
        for members in &setup.groups {
            let id = GroupId::random(&mut world.rng);
            world.groups.push(GroupModel { id, members: members.iter().copied().collect() });
        }
        world
    }

    fn empty(setup: &Setup, storage: Storage, options: &Options, rng: StdRng) -> Self {
        let mut cache_limits = SentCacheLimits::default();
        if setup.small_cache {
            cache_limits.max_entries = SMALL_CACHE_ENTRIES;
        }
        World {
            rng,
            now: T0,
            key: StoreKey::from_bytes(&[0x5a; 32]),
            storage,
            relay: Relay::default(),
            oracle: Oracle::default(),
            apps: Vec::new(),
            accounts: Vec::new(),
            groups: Vec::new(),
            cache_limits,
            options: *options,
            stats: Stats { runs: 1, ..Stats::default() },
            step: 0,
            touched: BTreeSet::new(),
            retry_requests: BTreeSet::new(),
            quiet: false,
            waiting: BTreeSet::new(),
        }
    }

    /// Creates the accounts of `setup`, links their companions and has every device fetch every
    /// list.
    fn set_up(&mut self, setup: &Setup) {
        for index in 0..setup.accounts {
            let id = AccountId(index as u64 + 1);
            let primary = self.add_app(DeviceAddress::new(id, DeviceId::PRIMARY), index);
            self.accounts.push(AccountModel { id, primary, companions: Vec::new() });
            self.reload_lists(primary);
            let list = self.apps[primary].lists[&id].signed_bytes().to_vec();
            self.relay.publish(id, list);
            self.upload_prekeys(primary);
        }
        for (index, &companions) in setup.companions.iter().take(setup.accounts).enumerate() {
            for _ in 0..companions {
                self.link(index);
            }
        }
        for slot in 0..self.apps.len() {
            self.sync_lists(slot, &self.account_ids(), true);
        }
        self.touched.clear();
        self.stats.links = 0;
    }

    // -------------------------------------------------------------------------------------
    // Steps
    // -------------------------------------------------------------------------------------

    pub(crate) fn step(&mut self, event: Event) {
        self.step += 1;
        self.stats.events += 1;
        if self.options.trace {
            eprintln!("step {} at {}: {event:?}", self.step, self.now.0 - T0.0);
        }
        match event {
            Event::Fanout { from, to, large, crash } => self.send_fanout(from, to, large, crash),
            Event::Group { from, group, crash } => self.send_group(from, group, crash),
            Event::GroupMembers { group, account } => self.toggle_member(group, account),
            Event::Deliver { pick, fate } => self.deliver(pick, fate),
            Event::Replay { pick } => {
                if self.relay.replay(pick, self.now) {
                    self.stats.relay_replays += 1;
                }
            }
            Event::Delay { pick, hours } => {
                if let Some(index) = self.relay.pick_any(pick) {
                    self.relay.delay(index, self.now.plus_secs(u64::from(hours) * 3600));
                }
            }
            Event::Drop { pick } => self.discard(pick),
            Event::Restart { device } => {
                if let Some(slot) = self.pick_online(device) {
                    self.crash_restart(slot);
                }
            }
            Event::Link { account } => self.link(usize::from(account) % self.accounts.len()),
            Event::Remove { account, pick } => {
                self.remove(usize::from(account) % self.accounts.len(), pick);
            }
            Event::PrimaryAway { account } => self.primary_away(account),
            Event::PrimaryBack { account } => {
                let slot = self.accounts[usize::from(account) % self.accounts.len()].primary;
                self.primary_back(slot);
            }
            Event::Advance { minutes } => self.advance(u64::from(minutes) * 60),
            Event::Backup { device } => self.backup(device),
            Event::Restore { device, pick } => self.restore(device, pick),
            Event::SyncLists { device } => {
                if let Some(slot) = self.pick_online(device) {
                    self.sync_lists(slot, &self.account_ids(), false);
                }
            }
            Event::Lists { account, mode } => {
                let id = self.accounts[usize::from(account) % self.accounts.len()].id;
                self.relay.set_mode(id, mode);
            }
            Event::Bundles { stale } => self.relay.stale_bundles = stale,
            Event::Replenish { device } => {
                if let Some(slot) = self.pick_online(device) {
                    self.upload_prekeys(slot);
                }
            }
            Event::RotatePrekey { device } => {
                if let Some(slot) = self.pick_online(device) {
                    let now = self.now;
                    self.with_rng(slot, |d, rng| d.rotate_signed_prekey(rng, now)).expect("rotate");
                    self.touched.insert(slot);
                    self.upload(slot);
                }
            }
        }
        self.check_touched();
    }

    /// Every device the step changed opens again from its store, and its state loads within
    /// the crate's bounds.
    fn check_touched(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        for slot in touched {
            self.reopen(slot);
            if self.options.bounds_every_step {
                self.check_bounds(slot);
            }
        }
    }

    fn check_bounds(&mut self, slot: usize) {
        let address = self.apps[slot].address;
        let exported = self.device(slot).export().expect("export");
        if let Err(error) = Device::from_bytes(&exported) {
            panic!("{address}: its state does not load again ({error}): out of bounds");
        }
    }

    /// Quiesces (see the module documentation), checks every device and that every message
    /// arrived, and returns the statistics.
    pub(crate) fn finish(mut self) -> Stats {
        self.quiesce();
        for slot in 0..self.apps.len() {
            self.reopen(slot);
            self.check_bounds(slot);
        }
        let listed: Vec<bool> = (0..self.apps.len()).map(|slot| self.named(slot)).collect();
        let readers: BTreeMap<DeviceAddress, Reader<'_>> = self
            .apps
            .iter()
            .zip(listed)
            .map(|(app, listed)| {
                let reader = Reader {
                    delivered: &app.lineage.delivered,
                    rolled_back: &app.rolled_back,
                    listed,
                };
                (app.address, reader)
            })
            .collect();
        let (settled, losses) = self.oracle.settle(&readers);
        self.stats.owed += settled.owed;
        self.stats.arrived += settled.arrived;
        for (sum, count) in self.stats.excluded.iter_mut().zip(settled.excluded) {
            *sum += count;
        }
        self.stats.losses += settled.lost;
        self.stats.stuck_at_end += self.relay.queue().len() as u64;
        assert!(losses.is_empty(), "{} message(s) lost:\n{}", losses.len(), losses.join("\n"));
        self.stats
    }

    /// True if the device's primary's own newest list names it (a primary always).
    fn named(&self, slot: usize) -> bool {
        let app = &self.apps[slot];
        let primary = &self.apps[self.accounts[app.account].primary];
        primary
            .lists
            .get(&app.address.account)
            .is_some_and(|list| list.device(app.address).is_some())
    }

    fn quiesce(&mut self) {
        self.quiet = true;
        self.relay.honest();
        self.relay.make_all_ready(self.now);
        for index in 0..self.accounts.len() {
            self.primary_back(self.accounts[index].primary);
        }
        // Every primary re-signs a list a day old, so every companion is signed in.
        self.advance(0);
        // Companions that find themselves removed log out.
        for slot in 0..self.apps.len() {
            if self.apps[slot].online {
                self.sync_lists(slot, &self.account_ids(), true);
                self.log_out_if_removed(slot);
                self.recover(slot);
            }
        }
        // Every item is delivered once; an item refused for later (a group message waiting for
        // its sender key) again only once its device has taken a sender key since, as the
        // error says: retry once the distribution has arrived.
        let mut tried = BTreeSet::new();
        let mut changed: BTreeSet<DeviceAddress> = BTreeSet::new();
        for _ in 0..QUIESCENCE_ROUNDS {
            self.stats.quiescence_rounds += 1;
            let mut progress = false;
            let mut took = BTreeSet::new();
            let ids: Vec<(u64, DeviceAddress)> =
                self.relay.queue().iter().map(|item| (item.id, item.to)).collect();
            for (id, to) in ids {
                if !tried.insert(id) && !changed.contains(&to) {
                    continue;
                }
                let Some(index) = self.relay.position(id) else { continue };
                let outcome = self.deliver_item(index, Fate::Ack);
                progress |= outcome.progress;
                if outcome.took_key {
                    took.insert(to);
                }
            }
            for slot in std::mem::take(&mut self.waiting) {
                progress |= self.recover(slot) > 0;
            }
            self.check_touched();
            changed = took;
            if !progress {
                break;
            }
        }
    }

    // -------------------------------------------------------------------------------------
    // Devices
    // -------------------------------------------------------------------------------------

    fn device(&mut self, slot: usize) -> &mut StoredDevice<SimStore> {
        self.apps[slot].device.as_mut().expect("a device is open between steps")
    }

    /// Runs `call` on the device with the world's randomness.
    fn with_rng<T>(
        &mut self,
        slot: usize,
        call: impl FnOnce(&mut StoredDevice<SimStore>, &mut StdRng) -> T,
    ) -> T {
        let device = self.apps[slot].device.as_mut().expect("a device is open between steps");
        call(device, &mut self.rng)
    }

    fn account_ids(&self) -> Vec<AccountId> {
        self.accounts.iter().map(|a| a.id).collect()
    }

    /// The `pick`-th online device.
    fn pick_online(&self, pick: u8) -> Option<usize> {
        let online: Vec<usize> = (0..self.apps.len()).filter(|&s| self.apps[s].online).collect();
        (!online.is_empty()).then(|| online[usize::from(pick) % online.len()])
    }

    /// The device at `address`: the newest one, should a device id ever be given twice.
    fn slot_of(&self, address: DeviceAddress) -> Option<usize> {
        self.apps.iter().rposition(|app| app.address == address)
    }

    fn add_app(&mut self, address: DeviceAddress, account: usize) -> usize {
        let slot = self.apps.len();
        let fault = FaultSwitch::default();
        let store = self.storage.create(&format!("{slot}-0"), &fault);
        let mut device = StoredDevice::create(store, &self.key, &mut self.rng, address, self.now)
            .expect("create a device");
        device.set_sent_cache_limits(self.cache_limits).expect("set the cache limits");
        self.apps.push(App::new(address, account, device, fault, BTreeMap::new()));
        slot
    }

    fn upload_prekeys(&mut self, slot: usize) {
        // Refused past the cap: the device holds plenty then.
        let _ = self.with_rng(slot, |d, rng| d.generate_one_time_prekeys(rng, ONE_TIME_PREKEYS));
        self.touched.insert(slot);
        self.upload(slot);
    }

    fn upload(&mut self, slot: usize) {
        let upload = self.device(slot).prekey_upload().expect("read");
        self.relay.upload(upload);
    }

    /// The app's store is closed and opened again, as after a process restart.
    fn reopen(&mut self, slot: usize) {
        let address = self.apps[slot].address;
        let device = self.apps[slot].device.take().expect("a device is open");
        let store = device.into_store().reopened();
        match StoredDevice::open(store, &self.key, &mut self.rng) {
            Ok(device) => self.apps[slot].device = Some(device),
            Err(error) => panic!("{address}: its store does not open: {error}"),
        }
    }

    /// A crash: the app loses what it held in memory, opens its store again and recovers.
    fn crash_restart(&mut self, slot: usize) {
        self.stats.crashes += 1;
        self.reopen(slot);
        self.recover(slot);
    }

    /// What an app does when it starts: keep what the inbox holds, send what the outbox holds.
    /// Returns how many inbox entries and outbox items it handled.
    fn recover(&mut self, slot: usize) -> usize {
        if !self.apps[slot].online {
            return 0;
        }
        let inbox = self.device(slot).inbox().expect("read the inbox");
        let mut handled = 0;
        for inbound in inbox {
            handled += usize::from(self.accept(slot, inbound));
        }
        handled + self.flush(slot, true)
    }

    /// Hands the outbox to the relay, and marks each item sent if `mark`. Returns the number of
    /// items.
    fn flush(&mut self, slot: usize, mark: bool) -> usize {
        let items = self.device(slot).outbox().expect("read the outbox");
        let count = items.len();
        for item in items {
            for envelope in &item.envelopes {
                let retry = envelope.bytes.get(1) == Some(&RETRY_REQUEST_TYPE);
                if retry && let Some(reference) = reference(&envelope.bytes) {
                    self.stats.retry_requests += u64::from(self.retry_requests.insert(reference));
                }
                let carries = if retry { Carries::RetryRequest } else { Carries::Envelope };
                self.relay_item(envelope.recipient, &envelope.bytes, item.body.clone(), carries);
            }
            if let Some(message) = &item.group_message {
                for to in self.group_copies(message, self.apps[slot].address) {
                    self.relay_item(to, message, None, Carries::GroupMessage);
                }
            }
            if mark {
                self.device(slot).mark_sent(item.id).expect("mark sent");
                self.touched.insert(slot);
            }
        }
        count
    }

    fn relay_item(
        &mut self,
        to: DeviceAddress,
        bytes: &[u8],
        body: Option<Vec<u8>>,
        carries: Carries,
    ) {
        self.stats.relayed += 1;
        self.relay.push(to, bytes.to_vec(), body, carries, self.now);
    }

    /// Every device the relay copies a group message to: all it knows of the group's member
    /// accounts (removed ones too), but the sender.
    fn group_copies(&self, message: &[u8], sender: DeviceAddress) -> Vec<DeviceAddress> {
        let group = message.get(2..18).and_then(|id| <[u8; 16]>::try_from(id).ok());
        let Some(group) = self.groups.iter().find(|g| Some(g.id.0) == group) else {
            return Vec::new();
        };
        self.apps
            .iter()
            .filter(|app| group.members.contains(&app.account))
            .filter(|app| app.address != sender)
            .map(|app| app.address)
            .collect()
    }

    /// The outbox items held before a send that will crash at its commit, to find what it
    /// left.
    fn outbox_before(&mut self, slot: usize, crash: SendCrash) -> BTreeSet<OutboxId> {
        if Self::send_fault(crash).is_none() {
            return BTreeSet::new();
        }
        self.device(slot).outbox().expect("read the outbox").iter().map(|i| i.id).collect()
    }

    // -------------------------------------------------------------------------------------
    // Lists
    // -------------------------------------------------------------------------------------

    /// The device fetches the lists of `accounts` from the relay (honestly served if `honest`)
    /// and processes those that differ from the list it holds.
    fn sync_lists(&mut self, slot: usize, accounts: &[AccountId], honest: bool) {
        let (address, now) = (self.apps[slot].address, self.now);
        for &account in accounts {
            let Some(bytes) = self.relay.fetch_list(account, honest) else { continue };
            let held = self.apps[slot].lists.get(&account);
            if held.is_some_and(|held| held.signed_bytes() == bytes.as_slice()) {
                continue;
            }
            match self.device(slot).process_device_list(&bytes, now) {
                Ok(update) => {
                    self.apps[slot].lists.insert(account, update.list);
                }
                Err(error) if error.action() == Action::AskUser => {
                    panic!(
                        "{address}: the list of {account:?} raised {error:?}, but no account forks"
                    )
                }
                Err(_) => self.stats.lists_refused += 1,
            }
            self.touched.insert(slot);
        }
    }

    /// The lists the device says it needs.
    fn sync_needed(&mut self, slot: usize) {
        let needed: Vec<AccountId> =
            self.device(slot).lists_to_fetch().expect("read").into_iter().map(|(a, _)| a).collect();
        self.sync_lists(slot, &needed, false);
    }

    fn publish(&mut self, list: &SignedDeviceList) {
        self.relay.publish(list.account(), list.to_bytes());
    }

    /// The primary re-signs its list (after fetching its own newest, honestly) and publishes it.
    fn refresh(&mut self, account: usize) {
        let (slot, id, now) = (self.accounts[account].primary, self.accounts[account].id, self.now);
        self.sync_lists(slot, &[id], true);
        let list = self.device(slot).refresh_device_list(now).expect("re-sign the own list");
        self.publish(&list);
        self.reload_lists(slot);
    }

    /// Every device the held lists of `accounts` and of the sender's own account name, but the
    /// sender.
    fn listed(&self, slot: usize, accounts: &[AccountId]) -> BTreeMap<DeviceAddress, AccountId> {
        let app = &self.apps[slot];
        let mut listed = BTreeMap::new();
        for account in accounts.iter().chain([&app.address.account]) {
            let Some(list) = app.lists.get(account) else { continue };
            for device in list.devices() {
                if device.address() != app.address {
                    listed.insert(device.address(), *account);
                }
            }
        }
        listed
    }

    /// Reads the lists the device holds into the model's copy (after a restore, say).
    fn reload_lists(&mut self, slot: usize) {
        let mut accounts = self.account_ids();
        accounts.push(self.apps[slot].address.account);
        for account in accounts {
            match self.device(slot).device_list(account).expect("read") {
                Some(list) => self.apps[slot].lists.insert(account, list),
                None => self.apps[slot].lists.remove(&account),
            };
        }
    }

    /// The devices the sender's held lists reach among `accounts` and its own: every listed
    /// device but itself, companions only while their list is current. `stale` names the
    /// accounts whose companions are not (a send reports them as `lists_needed`); if the send
    /// result was lost, the device says (`lists_to_fetch`).
    fn view(
        &mut self,
        slot: usize,
        accounts: &[AccountId],
        stale: Option<&[AccountId]>,
    ) -> BTreeSet<DeviceAddress> {
        let stale: Vec<AccountId> = match stale {
            Some(stale) => stale.to_vec(),
            None => {
                let needed = self.device(slot).lists_to_fetch().expect("read");
                needed.into_iter().map(|(account, _)| account).collect()
            }
        };
        self.listed(slot, accounts)
            .into_iter()
            .filter(|(address, account)| address.device.is_primary() || !stale.contains(account))
            .map(|(address, _)| address)
            .collect()
    }

    /// Bundles of every listed device of `accounts` (and of the sender's own account), as the
    /// relay serves them. The app asks for all of them rather than check its sessions first:
    /// the library uses a bundle only where it has no session, and the one-time prekeys this
    /// wastes make later sessions start without one, which is a case worth running too.
    fn bundles(&mut self, slot: usize, accounts: &[AccountId]) -> Vec<PrekeyBundle> {
        let listed = self.listed(slot, accounts);
        listed.into_keys().filter_map(|address| self.relay.bundle(address)).collect()
    }

    // -------------------------------------------------------------------------------------
    // Sending
    // -------------------------------------------------------------------------------------

    /// Arms the store fault a send or receive crash calls for.
    fn arm(&mut self, slot: usize, fault: Option<Fault>) {
        self.apps[slot].fault.arm(fault);
    }

    fn send_fault(crash: SendCrash) -> Option<Fault> {
        match crash {
            SendCrash::BeforeCommit => Some(Fault::BeforeCommit),
            SendCrash::AfterCommit => Some(Fault::AfterCommit),
            _ => None,
        }
    }

    /// The outbox item a send whose commit landed unseen left (the app compares its outbox
    /// with what it held before).
    fn landed(&mut self, slot: usize, before: &BTreeSet<OutboxId>) -> Option<OutboxItem> {
        let items = self.device(slot).outbox().expect("read the outbox");
        let mut new = items.into_iter().filter(|item| !before.contains(&item.id));
        let item = new.next();
        assert!(new.next().is_none(), "one send left one outbox item");
        item
    }

    /// Runs a send `call` on the device, crashing where `crash` says.
    fn send<T, E: Failure>(
        &mut self,
        slot: usize,
        crash: SendCrash,
        call: impl FnOnce(&mut StoredDevice<SimStore>, &mut StdRng, Timestamp) -> Result<T, E>,
    ) -> SendOutcome<T> {
        let before = self.outbox_before(slot, crash);
        self.arm(slot, Self::send_fault(crash));
        let now = self.now;
        let result = self.with_rng(slot, |device, rng| call(device, rng, now));
        self.arm(slot, None);
        self.touched.insert(slot);
        match result {
            Ok(sent) => SendOutcome::Sent(sent),
            Err(error) if error.injected() => {
                self.stats.crashes += 1;
                self.reopen(slot);
                match self.landed(slot, &before) {
                    Some(item) => SendOutcome::Landed(item),
                    None => {
                        self.recover(slot);
                        SendOutcome::Lost
                    }
                }
            }
            Err(error) => {
                self.stats.sends_refused += 1;
                match error.what_to_do() {
                    Action::FetchList(account) => self.sync_lists(slot, &[account], false),
                    Action::RetryLater => {
                        self.sync_needed(slot);
                        self.log_out_if_removed(slot);
                    }
                    _ => {}
                }
                SendOutcome::Refused
            }
        }
    }

    /// After a send returned: fetch the lists it needed, then send, or crash before or in it.
    fn after_send(&mut self, slot: usize, lists_needed: &[AccountId], crash: SendCrash) {
        if !lists_needed.is_empty() {
            self.sync_lists(slot, lists_needed, false);
        }
        match crash {
            SendCrash::BeforeSend => self.crash_restart(slot),
            SendCrash::BeforeMarkSent => {
                self.flush(slot, false);
                self.crash_restart(slot);
            }
            _ => {
                self.flush(slot, true);
            }
        }
    }

    fn send_fanout(&mut self, from: u8, to: u8, large: bool, crash: SendCrash) {
        let Some(slot) = self.pick_online(from) else { return };
        let own = self.apps[slot].account;
        let n = self.accounts.len();
        let mut accounts: Vec<AccountId> =
            (0..n).filter(|a| (to >> a) & 1 == 1).map(|a| self.accounts[a].id).collect();
        if accounts.is_empty() {
            let other = (own + 1 + usize::from(from) % (n - 1)) % n;
            accounts.push(self.accounts[other].id);
        }
        let bundles = self.bundles(slot, &accounts);
        let (token, payload) = self.oracle.next(large);
        let outcome = self.send(slot, crash, |device, rng, now| {
            device.encrypt_fanout(rng, &accounts, &bundles, &payload, now)
        });
        match outcome {
            SendOutcome::Sent(message) => {
                let view = self.view(slot, &accounts, Some(&message.lists_needed));
                let id = Some(message.message_id);
                self.record_fanout(slot, token, payload, id, &message.envelopes, &accounts, &view);
                self.after_send(slot, &message.lists_needed, crash);
            }
            SendOutcome::Landed(item) => {
                let view = self.view(slot, &accounts, None);
                self.record_fanout(slot, token, payload, None, &item.envelopes, &accounts, &view);
                self.recover(slot);
            }
            SendOutcome::Lost => self.send_fanout(from, to, large, SendCrash::None),
            SendOutcome::Refused => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_fanout(
        &mut self,
        slot: usize,
        token: u64,
        payload: Vec<u8>,
        id: Option<[u8; 16]>,
        envelopes: &[Envelope],
        accounts: &[AccountId],
        view: &BTreeSet<DeviceAddress>,
    ) {
        let sender = self.apps[slot].address;
        let recipients: BTreeSet<DeviceAddress> = envelopes.iter().map(|e| e.recipient).collect();
        assert!(
            recipients.is_subset(view),
            "{sender}: a fan-out reached {:?}, outside its view {view:?}",
            recipients.difference(view).collect::<Vec<_>>()
        );
        for envelope in envelopes {
            self.oracle.carried(&envelope.bytes, token, Some(envelope.recipient));
        }
        let mut to = accounts.to_vec();
        to.sort_unstable();
        to.dedup();
        let sent = Sent::Fanout { to };
        self.oracle.record(
            token,
            sender,
            sent,
            payload,
            self.now,
            id,
            recipients.clone(),
            recipients,
        );
        if !envelopes.is_empty() {
            self.apps[slot].lineage.sent.push((token, self.now));
        }
        self.stats.fanouts += 1;
    }

    fn send_group(&mut self, from: u8, group: u8, crash: SendCrash) {
        let index = usize::from(group) % self.groups.len();
        let members = self.groups[index].members.clone();
        let senders: Vec<usize> = (0..self.apps.len())
            .filter(|&s| self.apps[s].online && members.contains(&self.apps[s].account))
            .collect();
        if senders.is_empty() {
            return;
        }
        let slot = senders[usize::from(from) % senders.len()];
        let group_id = self.groups[index].id;
        let accounts: Vec<AccountId> = members.iter().map(|&a| self.accounts[a].id).collect();
        self.device(slot).set_group_members(group_id, &accounts).expect("set the members");
        let bundles = self.bundles(slot, &accounts);
        let (token, payload) = self.oracle.next(false);
        let outcome = self.send(slot, crash, |device, rng, now| {
            device.encrypt_group(rng, group_id, &bundles, &payload, now)
        });
        let sender = self.apps[slot].address;
        match outcome {
            SendOutcome::Sent(send) => {
                let view = self.view(slot, &accounts, Some(&send.lists_needed));
                let skipped: BTreeSet<DeviceAddress> =
                    send.skipped.iter().map(|(a, _)| *a).collect();
                let holders: BTreeSet<DeviceAddress> = view.difference(&skipped).copied().collect();
                let distributed: BTreeSet<DeviceAddress> =
                    send.distribution.iter().map(|e| e.recipient).collect();
                assert!(
                    distributed.is_subset(&holders),
                    "{sender}: a sender key went to {:?}, outside its view {view:?}",
                    distributed.difference(&holders).collect::<Vec<_>>()
                );
                let id = Some(send.message_id);
                let sent = (id, send.message.as_slice());
                self.record_group(slot, index, token, payload, sent, holders.clone(), holders);
                self.after_send(slot, &send.lists_needed, crash);
            }
            SendOutcome::Landed(item) => {
                let view = self.view(slot, &accounts, None);
                // The send result is lost: the holders are the previous ones (unless one left the
                // view, which rotates the key) and those the key went to now.
                let previous = self.apps[slot].lineage.holders.remove(&index).unwrap_or_default();
                let mut holders =
                    if previous.is_subset(&view) { previous } else { BTreeSet::new() };
                holders.extend(item.envelopes.iter().map(|e| e.recipient));
                let message = item.group_message.expect("a group send's item carries the message");
                self.record_group(slot, index, token, payload, (None, &message), view, holders);
                self.recover(slot);
            }
            SendOutcome::Lost => self.send_group(from, group, SendCrash::None),
            SendOutcome::Refused => {}
        }
    }

    /// Records a group message `sent` (its id, if the send result showed it, and its bytes).
    #[allow(clippy::too_many_arguments)]
    fn record_group(
        &mut self,
        slot: usize,
        index: usize,
        token: u64,
        payload: Vec<u8>,
        (id, message): (Option<[u8; 16]>, &[u8]),
        authorized: BTreeSet<DeviceAddress>,
        holders: BTreeSet<DeviceAddress>,
    ) {
        let sender = self.apps[slot].address;
        self.oracle.carried(message, token, None);
        let sent = Sent::Group { group: self.groups[index].id };
        self.oracle.record(token, sender, sent, payload, self.now, id, authorized, holders.clone());
        let lineage = &mut self.apps[slot].lineage;
        if !holders.is_empty() {
            lineage.sent.push((token, self.now));
        }
        lineage.holders.insert(index, holders);
        self.stats.group_messages += 1;
    }

    fn toggle_member(&mut self, group: u8, account: u8) {
        let index = usize::from(group) % self.groups.len();
        let account = usize::from(account) % self.accounts.len();
        let members = &mut self.groups[index].members;
        // A group keeps at least one member account.
        if !members.contains(&account) {
            members.insert(account);
        } else if members.len() > 1 {
            members.remove(&account);
        }
    }

    // -------------------------------------------------------------------------------------
    // Receiving
    // -------------------------------------------------------------------------------------

    fn deliver(&mut self, pick: u8, fate: Fate) {
        let online: BTreeSet<DeviceAddress> =
            self.apps.iter().filter(|a| a.online).map(|a| a.address).collect();
        let Some(index) = self.relay.pick_ready(pick, self.now, |to| online.contains(&to)) else {
            return;
        };
        self.deliver_item(index, fate);
    }

    /// Hands relay item `index` to its device, as `fate` says.
    fn deliver_item(&mut self, index: usize, fate: Fate) -> Delivered {
        let item = self.relay.item(index).clone();
        let Some(slot) = self.slot_of(item.to).filter(|&s| self.apps[s].online) else {
            return Delivered { took_key: false, progress: false };
        };
        self.touched.insert(slot);
        let fault = match fate {
            Fate::CrashBeforeCommit => Some(Fault::BeforeCommit),
            Fate::CrashAfterCommit => Some(Fault::AfterCommit),
            _ => None,
        };
        let mut result = self.receive(slot, &item, fault);
        if let Err(error) = &result
            && let Action::FetchList(account) = error.action()
        {
            // What the action says: fetch the list, then try again.
            self.sync_lists(slot, &[account], self.quiet);
            self.sync_needed(slot);
            result = self.receive(slot, &item, None);
        }
        // Only a retry request read, or a failure a retry can cure, leaves anything to send.
        let sends = match &result {
            Ok(inbound) => matches!(inbound.received, Received::RetryRequest(_)),
            Err(error) => RetryReason::for_error(error).is_some(),
        };
        let mut outcome = Delivered { took_key: false, progress: false };
        match result {
            Ok(inbound) => {
                outcome.progress = true;
                outcome.took_key = matches!(inbound.received, Received::SenderKey(_));
                match fate {
                    // Committed, but the app dies before keeping it: the inbox still holds it,
                    // and the relay, unacknowledged, delivers it again.
                    Fate::CrashBeforeAck => self.crash_restart(slot),
                    Fate::LostAck => {
                        self.stats.lost_acks += 1;
                        self.accept(slot, inbound);
                    }
                    _ => {
                        self.relay.acknowledge(index);
                        self.accept(slot, inbound);
                    }
                }
            }
            Err(error) if error.injected() => self.crash_restart(slot),
            Err(error) => {
                self.stats.refused += 1;
                let keep = match error.action() {
                    Action::RetryLater => {
                        if matches!(error, ReceiveError::Session(SessionError::SignedOut)) {
                            self.sync_needed(slot);
                            self.log_out_if_removed(slot);
                        }
                        true
                    }
                    // Once the relay is honest, a list fetched and still refusing the sender
                    // is final: the sender left its account.
                    Action::FetchList(_) => !self.quiet,
                    Action::AskUser => {
                        panic!("{}: {error:?} on a message, but no account forks", item.to)
                    }
                    _ => false,
                };
                if !keep {
                    self.relay.acknowledge(index);
                }
            }
        }
        // Retry requests the receive queued, answers to those it read.
        if sends && self.apps[slot].online {
            outcome.progress |= self.flush(slot, true) > 0;
        }
        outcome
    }

    /// One `receive` call, with `fault` armed.
    fn receive(
        &mut self,
        slot: usize,
        item: &Item,
        fault: Option<Fault>,
    ) -> Result<Inbound, ReceiveError> {
        self.arm(slot, fault);
        let now = self.now;
        let result = self.device(slot).receive(&item.bytes, item.body.as_deref(), now);
        self.arm(slot, None);
        if self.options.trace {
            match &result {
                Ok(inbound) => {
                    eprintln!("  {} took {:?}: {:?}", item.to, item.carries, inbound.received)
                }
                Err(error) => eprintln!("  {} refused {:?}: {error:?}", item.to, item.carries),
            }
        }
        result
    }

    /// A companion that finds itself removed from its account logs out: the app stops.
    fn log_out_if_removed(&mut self, slot: usize) {
        let now = self.now;
        if self.device(slot).account_status(now).expect("read") == AccountStatus::Removed {
            self.apps[slot].online = false;
        }
    }

    /// The app keeps what `receive` returned (or the inbox held) and acknowledges it. Returns
    /// false if it must stay in the inbox (a retry request to answer later).
    fn accept(&mut self, slot: usize, inbound: Inbound) -> bool {
        let address = self.apps[slot].address;
        if !self.apps[slot].lineage.inbox_done.contains(&inbound.id) {
            match &inbound.received {
                Received::Message(message) => self.read(
                    slot,
                    Read {
                        sender: message.sender,
                        id: message.message_id,
                        payload: &message.payload,
                        how: How::Message(&message.conversation),
                    },
                ),
                Received::Group(message) => self.read(
                    slot,
                    Read {
                        sender: message.sender,
                        id: message.message_id,
                        payload: &message.payload,
                        how: How::Group(&message.group),
                    },
                ),
                Received::Redelivered(again) => {
                    self.oracle.read_again(address, again.sender, &again.message_id);
                    self.stats.redelivered += 1;
                }
                Received::SenderKey(_) => {}
                Received::RetryRequest(request) => {
                    if !self.answer(slot, request) {
                        self.waiting.insert(slot);
                        return false;
                    }
                }
                other => panic!("{address}: unexpected {other:?}"),
            }
            self.apps[slot].lineage.inbox_done.insert(inbound.id);
        }
        self.device(slot).acknowledge(inbound.id).expect("acknowledge");
        true
    }

    /// The app shows a message it read: the oracle checks it.
    fn read(&mut self, slot: usize, read: Read<'_>) {
        let app = &mut self.apps[slot];
        self.oracle.read(app.address, &mut app.lineage.delivered, read);
        self.stats.deliveries += 1;
    }

    /// Answers a retry request; false if it must wait (the answer said retry later).
    fn answer(&mut self, slot: usize, request: &VerifiedRetryRequest) -> bool {
        let asked = request.request().clone();
        let now = self.now;
        let mut result = self.with_rng(slot, |d, rng| d.answer_retry(rng, request, now));
        if let Err(RetryError::NotAuthorized(requester)) = result {
            self.sync_lists(slot, &[requester.account], false);
            result = self.with_rng(slot, |d, rng| d.answer_retry(rng, request, now));
        }
        let carrier = self.oracle.carrier(&asked.message_ref).map(|(token, _)| token);
        match result {
            Ok(answer) => {
                self.stats.retries_answered += 1;
                let token = carrier.or_else(|| self.oracle.token_by_id(&answer.message_id));
                if let Some(token) = token {
                    self.oracle.learn_id(token, answer.message_id);
                    self.oracle.carried(&answer.envelope.bytes, token, Some(asked.requester));
                    self.oracle.note(
                        token,
                        format_args!(
                            "{} answered retry {} of {} ({:?})",
                            self.apps[slot].address, asked.count, asked.requester, asked.reason
                        ),
                    );
                    if let Some(Sent::Group { group }) =
                        self.oracle.message(token).map(|m| m.sent.clone())
                        && let Some(index) = self.groups.iter().position(|g| g.id == group)
                        && let Some(holders) = self.apps[slot].lineage.holders.get_mut(&index)
                    {
                        // The sender treats the requester as having lost its key.
                        holders.remove(&asked.requester);
                    }
                }
                true
            }
            Err(error) => {
                self.stats.retries_refused += 1;
                if let Some(token) = carrier {
                    self.explain_refusal(slot, token, &asked, &error);
                }
                error.action() != Action::RetryLater
            }
        }
    }

    /// Notes why a retry of message `token` was refused, and excuses the requester when a rule
    /// says the message is beyond recovery.
    fn explain_refusal(
        &mut self,
        slot: usize,
        token: u64,
        asked: &RetryRequest,
        error: &RetryError,
    ) {
        let requester = asked.requester;
        self.oracle.note(
            token,
            format_args!(
                "{} refused retry {} of {requester} ({:?}): {error:?}",
                self.apps[slot].address, asked.count, asked.reason
            ),
        );
        let Some(message) = self.oracle.message(token) else { return };
        let sent_at = message.sent_at;
        let rule = match error {
            RetryError::NotCached => {
                let sent = &self.apps[slot].lineage.sent;
                match sent.iter().position(|(t, _)| *t == token) {
                    None => Some(Rule::SenderRestored),
                    Some(position) => {
                        let later = sent.len() - position - 1;
                        let limits = self.cache_limits;
                        let old = self.now.secs_since(sent_at) > limits.max_age_secs;
                        (old || later >= limits.max_entries as usize)
                            .then_some(Rule::OutsideSenderCache)
                    }
                }
            }
            RetryError::GaveUp { .. } => Some(Rule::RetriesExhausted),
            _ => None,
        };
        if let Some(rule) = rule {
            self.oracle.excuse(token, requester, rule);
        }
    }

    /// The relay discards an item for good; the message it carried is excused for its device
    /// if no other copy is left.
    fn discard(&mut self, pick: u8) {
        let Some(index) = self.relay.pick_any(pick) else { return };
        let item = self.relay.discard(index);
        self.stats.relay_drops += 1;
        if self.relay.queue().iter().any(|other| other.to == item.to && other.bytes == item.bytes) {
            return;
        }
        let (reference, device) = match item.carries {
            Carries::RetryRequest => match RetryRequest::try_from(item.bytes.as_slice()) {
                Ok(request) => (Some(request.message_ref), request.requester),
                Err(_) => (None, item.to),
            },
            Carries::Envelope | Carries::GroupMessage => (reference(&item.bytes), item.to),
        };
        if let Some((token, _)) = reference.and_then(|r| self.oracle.carrier(&r)) {
            self.oracle.note(
                token,
                format_args!("the relay dropped a {:?} for {}", item.carries, item.to),
            );
            self.oracle.excuse(token, device, Rule::DroppedByRelay);
        }
    }

    // -------------------------------------------------------------------------------------
    // Accounts and time
    // -------------------------------------------------------------------------------------

    /// The account's primary links a new companion by QR, if online and below the limit.
    fn link(&mut self, account: usize) {
        let (primary, id) = (self.accounts[account].primary, self.accounts[account].id);
        if !self.apps[primary].online || self.accounts[account].companions.len() >= MAX_COMPANIONS {
            return;
        }
        // Any id but the primary's: linking assigns the real one.
        let placeholder = DeviceAddress::new(id, DeviceId(u32::MAX));
        let slot = self.add_app(placeholder, account);
        let now = self.now;
        self.sync_lists(primary, &[id], true);
        let qr = self.with_rng(slot, |d, rng| d.start_qr_link(rng, now)).expect("offer");
        let approval = self.device(primary).approve_qr_link(&qr, now).expect("approve");
        let confirmation = self.device(slot).accept_qr_approval(&approval, now).expect("accept");
        let list = self.device(primary).finish_qr_link(&confirmation, now).expect("finish");
        self.publish(&list);
        self.reload_lists(primary);
        let update =
            self.device(slot).process_device_list(&list.to_bytes(), now).expect("own list");
        self.apps[slot].lists.insert(id, update.list);
        let address = self.device(slot).address();
        assert!(
            self.slot_of(address).is_none(),
            "{address} was given to a second device: a primary handed out a device id again"
        );
        self.apps[slot].address = address;
        self.accounts[account].companions.push(slot);
        self.touched.extend([primary, slot]);
        self.upload_prekeys(slot);
        self.sync_lists(slot, &self.account_ids(), false);
        self.stats.links += 1;
    }

    fn remove(&mut self, account: usize, pick: u8) {
        let primary = self.accounts[account].primary;
        let companions = &self.accounts[account].companions;
        if !self.apps[primary].online || companions.is_empty() {
            return;
        }
        let slot = companions[usize::from(pick) % companions.len()];
        let (id, device, now) =
            (self.accounts[account].id, self.apps[slot].address.device, self.now);
        self.sync_lists(primary, &[id], true);
        // The primary removes it, or the companion logs out and the primary honours its request.
        let list = if pick.is_multiple_of(2) || !self.apps[slot].online {
            self.device(primary).remove_companion(device, now).expect("remove")
        } else {
            let request = self.device(slot).logout_request(now).expect("logout request");
            self.touched.insert(slot);
            // The app that logged out stops.
            self.apps[slot].online = false;
            self.device(primary).process_logout(&request.to_bytes(), now).expect("logout")
        };
        self.publish(&list);
        self.reload_lists(primary);
        self.accounts[account].companions.retain(|&s| s != slot);
        self.touched.insert(primary);
        self.stats.removals += 1;
    }

    fn primary_away(&mut self, account: u8) {
        let index = usize::from(account) % self.accounts.len();
        let slot = self.accounts[index].primary;
        if !self.apps[slot].online {
            return;
        }
        self.apps[slot].online = false;
        self.stats.primary_offline += 1;
        self.advance(OFFLINE_SECS);
    }

    fn primary_back(&mut self, slot: usize) {
        if self.apps[slot].online {
            return;
        }
        self.apps[slot].online = true;
        self.refresh(self.apps[slot].account);
        self.sync_lists(slot, &self.account_ids(), false);
        self.recover(slot);
    }

    /// Time passes; every online primary is used in the meantime and re-signs a list a day old.
    fn advance(&mut self, secs: u64) {
        self.now = self.now.plus_secs(secs);
        for index in 0..self.accounts.len() {
            let (slot, id) = (self.accounts[index].primary, self.accounts[index].id);
            if !self.apps[slot].online {
                continue;
            }
            let issued = self.apps[slot].lists[&id].issued_at();
            if self.now.secs_since(issued) >= DAY_SECS {
                self.refresh(index);
                self.touched.insert(slot);
            }
        }
    }

    // -------------------------------------------------------------------------------------
    // Backups
    // -------------------------------------------------------------------------------------

    fn backup(&mut self, device: u8) {
        let Some(slot) = self.pick_online(device) else { return };
        let device = self.apps[slot].device.take().expect("a device is open");
        let mut store = device.into_store();
        let rows = store.rows();
        self.apps[slot].device =
            Some(StoredDevice::open(store, &self.key, &mut self.rng).expect("open after a backup"));
        let app = &mut self.apps[slot];
        app.backups.push(Backup { rows, lineage: app.lineage.clone() });
        if app.backups.len() > BACKUPS_KEPT {
            app.backups.remove(0);
        }
    }

    /// The device's store is replaced by a copy of one of its backups; the app's memory of what
    /// it read goes back with it. A restored primary fetches its own newest list first.
    fn restore(&mut self, device: u8, pick: u8) {
        let backed_up: Vec<usize> =
            (0..self.apps.len()).filter(|&s| !self.apps[s].backups.is_empty()).collect();
        if backed_up.is_empty() {
            return;
        }
        let slot = backed_up[usize::from(device) % backed_up.len()];
        let app = &mut self.apps[slot];
        let backup = &app.backups[usize::from(pick) % app.backups.len()];
        let name = format!("{slot}-{}", app.stores);
        app.stores += 1;
        let mut store = self.storage.create(&name, &app.fault);
        store.fill(&backup.rows);
        let lineage = backup.lineage.clone();
        let lost: Vec<u64> =
            app.lineage.delivered.difference(&lineage.delivered).copied().collect();
        app.rolled_back.extend(lost);
        app.lineage = lineage;
        drop(app.device.take());
        match StoredDevice::open(store, &self.key, &mut self.rng) {
            Ok(device) => self.apps[slot].device = Some(device),
            Err(error) => panic!("{}: a backup does not open: {error}", self.apps[slot].address),
        }
        self.stats.restores += 1;
        self.touched.insert(slot);
        self.reload_lists(slot);
        let app = &self.apps[slot];
        if app.address.device.is_primary() {
            self.sync_lists(slot, &[app.address.account], true);
        }
        self.recover(slot);
    }
}

/// What one delivery did.
struct Delivered {
    /// The device took a sender key.
    took_key: bool,
    /// The device took it, or sent something (a retry request, an answer).
    progress: bool,
}
