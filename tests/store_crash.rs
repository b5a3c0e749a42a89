//! A crash at any write: stored devices run a scenario (link a companion, fan-outs both ways,
//! a shared body, list changes, a removal, redeliveries) over a store that fails the k-th write
//! or the k-th commit, for every k the scenario reaches. After each fault the app restarts:
//! it opens the device again from the store, keeps what the inbox holds, sends what the outbox
//! holds, and retries its call. Nothing may be lost, no message key reused, nothing decrypted
//! twice, and the app must end where a run without faults ends.
//!
//! Replay one run: `MULTIDEVICE_FAULTS=commit-lands:12 cargo test --test store_crash` (several
//! faults: comma-separated; kinds `write`, `commit`, `commit-lands`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/faults.rs"]
mod faults;
mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use faults::{Fault, FaultStore, Faults, StoreFailure};
use multidevice::store::{MemoryStore, StoreError, StoreKey};
use multidevice::{
    AccountId, Action, DeviceAddress, DeviceListError, Envelope, FanoutError, Inbound, InboxId,
    OutboxId, OutboxItem, PrekeyBundle, PrekeyUpload, ReceiveError, Received, SignedDeviceList,
    StoredDevice, Timestamp,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use support::world::{Account, Server, account, introduce, link};
use support::{T0, addr, rng};

const ALICE: AccountId = AccountId(1);
const BOB: AccountId = AccountId(2);
/// The scenario's randomness: every run draws the same until its first fault.
const SCENARIO_SEED: u64 = 0x5eed_c7a5;

fn key() -> StoreKey {
    StoreKey::from_bytes(&[0x42; 32])
}

/// A store error the app answers by restarting and retrying: `Injected`, whose action must be
/// `RetryLater`.
trait Retry: StoreFailure {
    fn injected(&self) -> bool {
        let injected = self.store_error() == Some(StoreError::Injected);
        if injected {
            assert_eq!(self.what_to_do(), Action::RetryLater, "{self:?}");
        }
        injected
    }
}

impl<E: StoreFailure> Retry for E {}

/// One stored device of Alice's and what its app keeps outside the store.
struct App {
    store: MemoryStore,
    device: Option<StoredDevice<FaultStore>>,
    /// Outbox items the app has seen (returned by a call or found after a restart).
    known_outbox: BTreeSet<OutboxId>,
    /// Inbox entries the app has kept.
    kept_inbox: BTreeSet<InboxId>,
}

/// One envelope on its way through the server.
#[derive(Clone)]
struct Delivery {
    to: DeviceAddress,
    bytes: Vec<u8>,
    body: Option<Vec<u8>>,
}

/// What the apps ended with: every committed message and its recipients, and how often each
/// device kept each payload.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    sent: BTreeMap<Vec<u8>, BTreeSet<DeviceAddress>>,
    kept: BTreeMap<DeviceAddress, BTreeMap<Vec<u8>, usize>>,
}

struct World {
    faults: Faults,
    rng: StdRng,
    now: Timestamp,
    server: Server,
    /// Bob's devices: in memory, never faulted; the recipients that detect a reused key.
    bob: Account,
    /// Alice's primary (0) and companion (1), stored.
    apps: Vec<App>,
    companion_upload: Option<PrekeyUpload>,
    companion_handed: usize,
    network: VecDeque<Delivery>,
    /// Every delivery ever posted, for the server's redelivery at the end.
    history: Vec<Delivery>,
    /// Envelope bytes each device was handed so far.
    delivered: BTreeMap<DeviceAddress, BTreeSet<Vec<u8>>>,
    outcome: Outcome,
    step: String,
    restarts: usize,
}

impl World {
    fn new(faults: Faults) -> Self {
        let mut rng = rng(SCENARIO_SEED);
        let mut server = Server::default();
        let mut alice = account(&mut rng, &mut server, ALICE.0, 0, T0);
        let mut bob = account(&mut rng, &mut server, BOB.0, 1, T0);
        introduce(&server, &mut [&mut alice, &mut bob], T0);
        let primary = MemoryStore::new();
        StoredDevice::import(primary.clone(), &key(), &mut rng, &alice.devices[0].to_bytes())
            .unwrap();
        let companion = MemoryStore::new();
        StoredDevice::create(companion.clone(), &key(), &mut rng, addr(ALICE.0, 99), T0).unwrap();
        let apps = [primary, companion]
            .into_iter()
            .map(|store| {
                let faulty = FaultStore::new(store.clone(), faults.clone());
                let device = StoredDevice::open(faulty, &key(), &mut rng).unwrap();
                App {
                    store,
                    device: Some(device),
                    known_outbox: BTreeSet::new(),
                    kept_inbox: BTreeSet::new(),
                }
            })
            .collect();
        Self {
            faults,
            rng,
            now: T0,
            server,
            bob,
            apps,
            companion_upload: None,
            companion_handed: 0,
            network: VecDeque::new(),
            history: Vec::new(),
            delivered: BTreeMap::new(),
            outcome: Outcome { sent: BTreeMap::new(), kept: BTreeMap::new() },
            step: String::new(),
            restarts: 0,
        }
    }

    fn step(&mut self, name: &str) {
        self.step = name.to_owned();
        self.now = self.now.plus_secs(1);
    }

    fn dev(&mut self, i: usize) -> &mut StoredDevice<FaultStore> {
        self.apps[i].device.as_mut().unwrap()
    }

    fn app_at(&mut self, address: DeviceAddress) -> usize {
        (0..self.apps.len()).find(|&i| self.dev(i).address() == address).unwrap()
    }

    /// Runs `op` once on app `i`'s device.
    fn call<T, E>(
        &mut self,
        i: usize,
        op: impl FnOnce(&mut StoredDevice<FaultStore>, &mut StdRng, Timestamp) -> Result<T, E>,
    ) -> Result<T, E> {
        let device = self.apps[i].device.as_mut().unwrap();
        op(device, &mut self.rng, self.now)
    }

    /// Runs `op` on app `i`'s device, restarting the app and retrying after every injected
    /// fault. For calls that are safe to repeat.
    fn retrying<T, E: Retry>(
        &mut self,
        i: usize,
        what: &str,
        mut op: impl FnMut(&mut StoredDevice<FaultStore>, &mut StdRng, Timestamp) -> Result<T, E>,
    ) -> T {
        loop {
            match self.call(i, &mut op) {
                Ok(value) => return value,
                Err(error) if error.injected() => self.restart_expecting_no_send(i),
                Err(error) => panic!("{}: {what} failed: {error:?}", self.step),
            }
        }
    }

    /// The app crashes and starts again: it opens the device from the store (which must work),
    /// keeps and acknowledges every inbox entry, sends and marks sent every outbox item.
    /// Returns the outbox items the app had never seen: sends that committed although their
    /// call failed.
    fn restart(&mut self, i: usize) -> Vec<OutboxItem> {
        self.restarts += 1;
        let mut adopted = Vec::new();
        loop {
            self.apps[i].device = None;
            let store = FaultStore::new(self.apps[i].store.clone(), self.faults.clone());
            let device = StoredDevice::open(store, &key(), &mut self.rng).unwrap_or_else(|e| {
                panic!("{}: the store does not open after the fault: {e:?}", self.step)
            });
            self.apps[i].device = Some(device);
            match self.reconcile(i, &mut adopted) {
                Ok(()) => return adopted,
                Err(error) => assert!(error.injected(), "{}: after restart: {error:?}", self.step),
            }
        }
    }

    fn restart_expecting_no_send(&mut self, i: usize) {
        let adopted = self.restart(i);
        assert!(adopted.is_empty(), "{}: an outbox item appeared with no send", self.step);
    }

    fn reconcile(&mut self, i: usize, adopted: &mut Vec<OutboxItem>) -> Result<(), StoreError> {
        for entry in self.dev(i).inbox()? {
            self.keep(i, &entry);
            self.dev(i).acknowledge(entry.id)?;
        }
        for item in self.dev(i).outbox()? {
            if self.apps[i].known_outbox.insert(item.id) {
                adopted.push(item.clone());
            }
            self.post(&item.envelopes, item.body.as_deref());
            self.dev(i).mark_sent(item.id)?;
        }
        Ok(())
    }

    /// The app keeps a received message (once per inbox entry).
    fn keep(&mut self, i: usize, inbound: &Inbound) {
        if !self.apps[i].kept_inbox.insert(inbound.id) {
            return;
        }
        let Received::Message(message) = &inbound.received else {
            panic!("{}: expected a message, got {:?}", self.step, inbound.received)
        };
        let address = self.dev(i).address();
        self.count_kept(address, &message.payload);
    }

    fn count_kept(&mut self, address: DeviceAddress, payload: &[u8]) {
        let count =
            self.outcome.kept.entry(address).or_default().entry(payload.to_vec()).or_default();
        *count += 1;
        assert_eq!(
            *count,
            1,
            "{}: {address} got {:?} twice: a message decrypted twice",
            self.step,
            String::from_utf8_lossy(&payload[..payload.len().min(16)])
        );
    }

    fn post(&mut self, envelopes: &[Envelope], body: Option<&[u8]>) {
        for envelope in envelopes {
            let delivery = Delivery {
                to: envelope.recipient,
                bytes: envelope.bytes.clone(),
                body: body.map(<[u8]>::to_vec),
            };
            self.history.push(delivery.clone());
            self.network.push_back(delivery);
        }
    }

    fn record_sent(&mut self, payload: &[u8], envelopes: &[Envelope]) {
        let recipients = envelopes.iter().map(|e| e.recipient).collect();
        let previous = self.outcome.sent.insert(payload.to_vec(), recipients);
        assert!(previous.is_none(), "{}: one message committed twice", self.step);
    }

    fn companion_bundle(&mut self) -> Option<PrekeyBundle> {
        let upload = self.companion_upload.as_ref()?;
        let index = (self.companion_handed < upload.one_time_prekeys.len())
            .then_some(self.companion_handed);
        self.companion_handed += 1;
        Some(upload.bundle(index))
    }

    fn bundles(&mut self) -> Vec<PrekeyBundle> {
        let mut bundles = self.server.bundles(&[ALICE, BOB]);
        bundles.extend(self.companion_bundle());
        bundles
    }

    // -----------------------------------------------------------------------------------------
    // What the apps do
    // -----------------------------------------------------------------------------------------

    /// Alice's device `i` sends `payload` to Bob: one call, committed with its outbox item;
    /// then the app posts the envelopes and marks the item sent.
    fn alice_sends(&mut self, i: usize, payload: &[u8]) {
        loop {
            let bundles = self.bundles();
            match self.call(i, |d, rng, now| d.encrypt_fanout(rng, &[BOB], &bundles, payload, now))
            {
                Ok(message) => {
                    assert!(message.skipped.is_empty(), "{}: {:?}", self.step, message.skipped);
                    let id = message.outbox.unwrap();
                    assert!(
                        self.apps[i].known_outbox.insert(id),
                        "{}: outbox id reused",
                        self.step
                    );
                    self.record_sent(payload, &message.envelopes);
                    self.post(&message.envelopes, message.body.as_deref());
                    self.retrying(i, "mark_sent", |d, _, _| d.mark_sent(id));
                    return;
                }
                Err(error) if error.injected() => match self.restart(i).as_slice() {
                    // Nothing committed: send again.
                    [] => {}
                    // The send committed before the crash: the restart posted it.
                    [item] => {
                        let envelopes = item.envelopes.clone();
                        self.record_sent(payload, &envelopes);
                        return;
                    }
                    items => panic!("{}: {} outbox items for one send", self.step, items.len()),
                },
                Err(error) => panic!("{}: encrypt_fanout failed: {error:?}", self.step),
            }
        }
    }

    /// Bob's device `j` (in memory, never faulted) sends `payload` to Alice.
    fn bob_sends(&mut self, j: usize, payload: &[u8]) {
        let bundles = self.bundles();
        let now = self.now;
        let message = self.bob.devices[j]
            .encrypt_fanout(&mut self.rng, &[ALICE], &bundles, payload, now)
            .unwrap();
        assert!(message.skipped.is_empty(), "{}: {:?}", self.step, message.skipped);
        self.record_sent(payload, &message.envelopes);
        self.post(&message.envelopes, message.body.as_deref());
    }

    /// The server hands every pending envelope to its device, in order.
    fn deliver_all(&mut self) {
        while let Some(delivery) = self.network.pop_front() {
            if delivery.to.account == BOB {
                self.deliver_to_bob(&delivery);
            } else {
                let i = self.app_at(delivery.to);
                self.deliver_to_alice(i, &delivery);
            }
        }
    }

    /// Bob's devices keep no de-duplication record: a fresh envelope must decrypt (a refusal
    /// is a reused message key), a redelivered one must be refused.
    fn deliver_to_bob(&mut self, delivery: &Delivery) {
        let fresh = self.delivered.entry(delivery.to).or_default().insert(delivery.bytes.clone());
        let now = self.now;
        let device = self.bob.device(delivery.to);
        match device.receive(&delivery.bytes, delivery.body.as_deref(), now) {
            Ok(Received::Message(message)) => {
                assert!(fresh, "{}: {} decrypted a redelivery again", self.step, delivery.to);
                self.count_kept(delivery.to, &message.payload);
            }
            Ok(other) => panic!("{}: expected a message, got {other:?}", self.step),
            Err(error) => assert!(
                !fresh,
                "{}: {} refused a fresh envelope: {error:?} (a message key reused?)",
                self.step, delivery.to
            ),
        }
    }

    /// A stored device receives, commits, the app keeps the message and acknowledges it. After
    /// a fault the app restarts and the server delivers the same envelope again.
    fn deliver_to_alice(&mut self, i: usize, delivery: &Delivery) {
        let mut fresh =
            self.delivered.entry(delivery.to).or_default().insert(delivery.bytes.clone());
        loop {
            let result =
                self.call(i, |d, _, now| d.receive(&delivery.bytes, delivery.body.as_deref(), now));
            match result {
                Ok(inbound) => {
                    // A redelivery that decrypted again would be kept twice: `keep` fails.
                    self.keep(i, &inbound);
                    self.retrying(i, "acknowledge", |d, _, _| d.acknowledge(inbound.id));
                    return;
                }
                Err(ReceiveError::AlreadyReceived) => {
                    assert!(!fresh, "{}: a fresh envelope is AlreadyReceived", self.step);
                    return;
                }
                Err(error) if error.injected() => {
                    self.restart_expecting_no_send(i);
                    fresh = false;
                }
                Err(error) => panic!(
                    "{}: {} refused an envelope (fresh: {fresh}): {error:?} (a message key reused?)",
                    self.step, delivery.to
                ),
            }
        }
    }

    /// The server hands every envelope it ever carried to its device once more.
    fn redeliver_everything(&mut self) {
        self.network.extend(self.history.clone());
        self.deliver_all();
    }

    /// The primary publishes a list of its account; Bob's devices process it.
    fn publish_alice_list(&mut self, list: &SignedDeviceList) {
        self.server.publish(list);
        let now = self.now;
        for device in &mut self.bob.devices {
            device.process_device_list(&list.to_bytes(), now).unwrap();
        }
    }

    /// The list the primary holds for its own account, as the app publishes it.
    fn own_list(&mut self) -> SignedDeviceList {
        let held = self.retrying(0, "device_list", |d, _, _| d.device_list(ALICE)).unwrap();
        SignedDeviceList::try_from(held.signed_bytes()).unwrap()
    }

    fn process_list(&mut self, i: usize, bytes: &[u8]) {
        self.retrying(i, "process_device_list", |d, _, now| d.process_device_list(bytes, now));
    }

    /// Links the companion (app 1) through the primary (app 0), every call a stored one.
    fn link_companion(&mut self) {
        let identity = self.dev(1).public_identity().clone();
        let approval = loop {
            match self.call(0, |d, _, now| d.approve_companion(&identity, now)) {
                Ok(approval) => break approval,
                Err(error) if error.injected() => self.restart_expecting_no_send(0),
                Err(error) => panic!(
                    "{}: approve_companion, retried after a restart: {error:?}; the approval \
                     committed before the crash is lost to the app",
                    self.step
                ),
            }
        };
        let signed =
            self.retrying(1, "countersign_approval", |d, _, _| d.countersign_approval(&approval));
        let mut restarted = false;
        let list = loop {
            match self.call(0, |d, _, now| d.add_companion(&signed, now)) {
                Ok(list) => break list,
                Err(error) if error.injected() => {
                    self.restart_expecting_no_send(0);
                    restarted = true;
                }
                // The list was signed and committed before the crash: publish the one held.
                Err(DeviceListError::DeviceIdInUse(device)) if restarted => {
                    assert_eq!(device, signed.metadata.device);
                    break self.own_list();
                }
                Err(error) => panic!("{}: add_companion failed: {error:?}", self.step),
            }
        };
        assert!(
            names(&list, signed.metadata.address()),
            "{}: the list misses the companion",
            self.step
        );
        self.publish_alice_list(&list);
        self.process_list(1, &list.to_bytes());
        let bob_list = self.server.newest(BOB);
        self.process_list(1, &bob_list);
        self.retrying(1, "replenish", |d, rng, now| d.replenish_one_time_prekeys(rng, now));
        let upload = self.retrying(1, "prekey_upload", |d, _, _| d.prekey_upload());
        self.companion_upload = Some(upload);
    }

    /// The primary removes its companion; everyone processes the new list.
    fn remove_companion(&mut self) {
        let companion = self.dev(1).address();
        let mut restarted = false;
        let list = loop {
            match self.call(0, |d, _, now| d.remove_companion(companion.device, now)) {
                Ok(list) => break list,
                Err(error) if error.injected() => {
                    self.restart_expecting_no_send(0);
                    restarted = true;
                }
                // Removed and committed before the crash: publish the list held.
                Err(DeviceListError::UnknownCompanion(_)) if restarted => break self.own_list(),
                Err(error) => panic!("{}: remove_companion failed: {error:?}", self.step),
            }
        };
        assert!(!names(&list, companion), "{}: the list still names the companion", self.step);
        self.publish_alice_list(&list);
        self.process_list(1, &list.to_bytes());
    }

    /// Bob links another companion; Alice's devices process his new list.
    fn bob_links(&mut self) {
        let now = self.now;
        let added = link(&mut self.rng, &mut self.server, &mut self.bob, now);
        let alice_list = self.server.newest(ALICE);
        self.bob.device(added).process_device_list(&alice_list, now).unwrap();
        let list = self.server.newest(BOB);
        self.process_list(0, &list);
        self.process_list(1, &list);
    }

    /// Bob's primary removes his first companion; Alice's devices process the list and drop
    /// their sessions with it.
    fn bob_removes_companion(&mut self) {
        let now = self.now;
        let removed = self.bob.devices[1].address();
        let list = self.bob.devices[0].remove_companion(removed.device, now).unwrap();
        self.server.publish(&list);
        for device in &mut self.bob.devices {
            device.process_device_list(&list.to_bytes(), now).unwrap();
        }
        let bytes = list.to_bytes();
        self.process_list(0, &bytes);
        self.process_list(1, &bytes);
        for i in 0..self.apps.len() {
            let session = self.retrying(i, "session_info", |d, _, _| d.session_info(removed));
            assert!(session.is_none(), "{}: a session with a removed device", self.step);
        }
    }

    /// After the scenario: every store opens, holds no unsent or unkept item, and the outcome
    /// is complete: each committed message reached each of its recipients exactly once.
    fn finish(mut self) -> Outcome {
        for i in 0..self.apps.len() {
            self.apps[i].device = None;
            let mut device = StoredDevice::open(self.apps[i].store.clone(), &key(), &mut self.rng)
                .unwrap_or_else(|e| panic!("store {i} does not open at the end: {e:?}"));
            assert!(device.outbox().unwrap().is_empty(), "app {i}: outbox not empty");
            assert!(device.inbox().unwrap().is_empty(), "app {i}: inbox not empty");
        }
        for (payload, recipients) in &self.outcome.sent {
            for recipient in recipients {
                let count = self
                    .outcome
                    .kept
                    .get(recipient)
                    .and_then(|kept| kept.get(payload))
                    .copied()
                    .unwrap_or(0);
                assert_eq!(
                    count,
                    1,
                    "{recipient} got {:?} {count} times",
                    String::from_utf8_lossy(&payload[..payload.len().min(16)])
                );
            }
        }
        for (device, kept) in &self.outcome.kept {
            for payload in kept.keys() {
                assert!(
                    self.outcome.sent.get(payload).is_some_and(|r| r.contains(device)),
                    "{device} got a message nobody committed"
                );
            }
        }
        self.outcome
    }
}

/// Does the list name `address`?
fn names(list: &SignedDeviceList, address: DeviceAddress) -> bool {
    list.verify().unwrap().device(address).is_some()
}

/// The scenario. Each step advances the clock by a second.
fn scenario(w: &mut World) {
    w.step("link the companion");
    w.link_companion();
    w.deliver_all();

    w.step("primary sends m1");
    w.alice_sends(0, b"m1 from Alice's primary");
    w.deliver_all();

    w.step("Bob sends m2");
    w.bob_sends(0, b"m2 from Bob's primary");
    w.deliver_all();

    w.step("companion sends m3");
    w.alice_sends(1, b"m3 from Alice's companion");
    w.deliver_all();

    w.step("primary sends m4 and m5, delivered together");
    w.alice_sends(0, b"m4 from Alice's primary");
    let mut big = b"m5 a shared body ".to_vec();
    big.resize(4096, b'.');
    w.alice_sends(0, &big);
    w.deliver_all();

    w.step("Bob links a companion");
    w.bob_links();

    w.step("Bob's first companion sends m6");
    w.bob_sends(1, b"m6 from Bob's companion");
    w.deliver_all();

    w.step("companion and primary send m7 and m8");
    w.alice_sends(1, b"m7 from Alice's companion");
    w.alice_sends(0, b"m8 from Alice's primary");
    w.deliver_all();

    w.step("Bob removes his first companion");
    w.bob_removes_companion();

    w.step("the primary removes the companion");
    w.remove_companion();

    w.step("primary sends m9");
    w.alice_sends(0, b"m9 from Alice's primary");
    w.deliver_all();

    w.step("Bob's new companion sends m10");
    let newest = w.bob.devices.len() - 1;
    w.bob_sends(newest, b"m10 from Bob's new companion");
    w.deliver_all();

    w.step("the server redelivers everything");
    w.redeliver_everything();

    w.step("primary sends m11");
    w.alice_sends(0, b"m11 from Alice's primary");
    w.deliver_all();
}

/// What one run did besides its outcome.
struct Stats {
    writes: u64,
    commits: u64,
    restarts: usize,
    fired: usize,
}

/// One run with `faults`.
fn run(faults: &[Fault]) -> (Outcome, Stats) {
    let plan = Faults::new(faults.iter().copied());
    let mut world = World::new(plan.clone());
    scenario(&mut world);
    let restarts = world.restarts;
    let outcome = world.finish();
    let (writes, commits) = plan.counts();
    (outcome, Stats { writes, commits, restarts, fired: plan.fired().len() })
}

/// Runs each fault set, on as many threads as there are cores (each run is independent);
/// every failure names the faults that replay it.
fn run_all(reference: &Outcome, runs: Vec<Vec<Fault>>, label: &str) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = runs.len().div_ceil(threads).max(1);
    let mut failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = runs
            .chunks(chunk)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk.iter().filter_map(|f| one(reference, f, label)).collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
    });
    failures.sort();
    failures
}

/// One run with `faults`: `None` if it ended where the run without faults ends.
fn one(reference: &Outcome, faults: &[Fault], label: &str) -> Option<String> {
    let name = faults.iter().map(Fault::to_string).collect::<Vec<_>>().join(",");
    let result = catch_unwind(AssertUnwindSafe(|| {
        let (outcome, stats) = run(faults);
        assert!(stats.fired > 0 && stats.restarts > 0, "no fault fired");
        assert_eq!(&outcome, reference, "the outcome differs from the run without faults");
    }));
    let panic = result.err()?;
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    Some(format!(
        "{label} {name}: {message}\n    replay: MULTIDEVICE_FAULTS={name} cargo test --test store_crash"
    ))
}

fn replay_from_env() -> Option<Vec<Fault>> {
    let text = std::env::var("MULTIDEVICE_FAULTS").ok()?;
    Some(text.split(',').map(|f| Fault::parse(f.trim()).expect("kind:k")).collect())
}

/// Every write and every commit of the scenario fails once, in each of the three ways.
#[test]
fn a_fault_at_every_write_loses_nothing_and_reuses_no_key() {
    let (reference, Stats { writes, commits, restarts, .. }) = run(&[]);
    assert_eq!(restarts, 0);
    assert!(writes > 50 && commits > 20, "{writes} writes, {commits} commits");
    let runs: Vec<Vec<Fault>> =
        match replay_from_env() {
            Some(faults) => vec![faults],
            None => (0..writes)
                .map(|k| vec![Fault::Write(k)])
                .chain((0..commits).flat_map(|k| {
                    [vec![Fault::Commit(k)], vec![Fault::CommitLands(k)]].into_iter()
                }))
                .collect(),
        };
    let total = runs.len();
    let failures = run_all(&reference, runs, "fault");
    assert!(
        failures.is_empty(),
        "{} of {total} runs failed ({writes} writes, {commits} commits):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Several faults per run, anywhere, restarts included: seeded.
#[test]
fn several_faults_per_run_lose_nothing_and_reuse_no_key() {
    if replay_from_env().is_some() {
        return;
    }
    let (reference, Stats { writes, commits, .. }) = run(&[]);
    let runs: Vec<Vec<Fault>> = (0..40u64)
        .map(|seed| {
            let mut r = StdRng::seed_from_u64(seed);
            (0..4)
                .map(|_| {
                    let kinds = Fault::kinds(0);
                    match kinds[r.random_range(0..kinds.len())] {
                        Fault::Write(_) => Fault::Write(r.random_range(0..writes)),
                        Fault::Commit(_) => Fault::Commit(r.random_range(0..commits)),
                        Fault::CommitLands(_) => Fault::CommitLands(r.random_range(0..commits)),
                    }
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .collect();
    let failures = run_all(&reference, runs, "faults");
    assert!(failures.is_empty(), "{} runs failed:\n{}", failures.len(), failures.join("\n"));
}

/// A copy of `store`'s rows in a new store.
fn copy(store: &MemoryStore) -> MemoryStore {
    let copy = MemoryStore::new();
    for (table, key, value) in store.rows() {
        copy.set_row(table, &key, Some(&value));
    }
    copy
}

/// Bob's primary, stored, and an envelope from Alice's primary for it: a prekey message, then
/// (`second`) a message on the established session.
fn bob_stored_and_envelopes() -> (MemoryStore, Vec<Vec<u8>>) {
    let mut r = rng(7);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, ALICE.0, 0, T0);
    let mut bob = account(&mut r, &mut server, BOB.0, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let store = MemoryStore::new();
    StoredDevice::import(store.clone(), &key(), &mut r, &bob.devices[0].to_bytes()).unwrap();
    let bundles = server.bundles(&[BOB]);
    let envelopes = [b"first".as_slice(), b"second"]
        .iter()
        .map(|payload| {
            let sent =
                alice.devices[0].encrypt_fanout(&mut r, &[BOB], &bundles, payload, T0).unwrap();
            sent.envelopes[0].bytes.clone()
        })
        .collect();
    (store, envelopes)
}

/// One receive, failed at each of its writes and at its commit in each way: a fault that did
/// not land changes no row, one that landed is the whole step, and the redelivery yields the
/// message exactly once.
#[test]
fn a_failed_receive_commits_all_or_nothing() {
    let (store, envelopes) = bob_stored_and_envelopes();
    // Count the writes of each receive without faults.
    let plan = Faults::new([]);
    let mut bob =
        StoredDevice::open(FaultStore::new(copy(&store), plan.clone()), &key(), &mut rng(1))
            .unwrap();
    for envelope in &envelopes {
        bob.receive(envelope, None, T0).unwrap();
    }
    let (writes, commits) = plan.counts();
    assert_eq!(commits, 2);

    let mut failures = Vec::new();
    let faults = (0..writes)
        .map(Fault::Write)
        .chain((0..commits).flat_map(|k| [Fault::Commit(k), Fault::CommitLands(k)]));
    for fault in faults {
        let store = copy(&store);
        let faulty = FaultStore::new(store.clone(), Faults::new([fault]));
        let mut bob = StoredDevice::open(faulty, &key(), &mut rng(2)).unwrap();
        for (n, envelope) in envelopes.iter().enumerate() {
            let before = store.rows();
            let Err(error) = bob.receive(envelope, None, T0) else { continue };
            assert_eq!(error, ReceiveError::Store(StoreError::Injected), "{fault}");
            if !matches!(fault, Fault::CommitLands(_)) && store.rows() != before {
                failures.push(format!("{fault}: receive {n} failed but rows changed"));
            }
            // The app restarts; the server delivers the envelope again.
            let faultless = FaultStore::new(store.clone(), Faults::new([]));
            bob = StoredDevice::open(faultless, &key(), &mut rng(3)).unwrap();
            match bob.receive(envelope, None, T0) {
                Ok(inbound) => {
                    let Received::Message(m) = inbound.received else { panic!() };
                    assert_eq!(m.payload.as_slice(), [b"first".as_slice(), b"second"][n]);
                    // Nothing acknowledged: one inbox entry per message, none twice.
                    let entries = bob.inbox().unwrap().len();
                    if entries != n + 1 {
                        failures.push(format!("{fault}: after receive {n}: {entries} entries"));
                    }
                }
                Err(error) => failures.push(format!(
                    "{fault}: receive {n} failed, then its redelivery: {error:?}: the message is lost"
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One send, failed at each of its writes and at its commit in each way: a fault that did not
/// land changes no row (no ratchet step without its outbox item); one that landed leaves the
/// message in the outbox.
#[test]
fn a_failed_send_commits_all_or_nothing() {
    let mut r = rng(8);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, ALICE.0, 0, T0);
    let mut bob = account(&mut r, &mut server, BOB.0, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let store = MemoryStore::new();
    StoredDevice::import(store.clone(), &key(), &mut r, &alice.devices[0].to_bytes()).unwrap();
    let bundles = server.bundles(&[BOB]);
    let plan = Faults::new([]);
    let mut device =
        StoredDevice::open(FaultStore::new(copy(&store), plan.clone()), &key(), &mut r).unwrap();
    device.encrypt_fanout(&mut r, &[BOB], &bundles, b"counted", T0).unwrap();
    let (writes, commits) = plan.counts();

    let mut failures = Vec::new();
    let faults = (0..writes)
        .map(Fault::Write)
        .chain((0..commits).flat_map(|k| [Fault::Commit(k), Fault::CommitLands(k)]));
    for fault in faults {
        let store = copy(&store);
        let before = store.rows();
        let mut device = StoredDevice::open(
            FaultStore::new(store.clone(), Faults::new([fault])),
            &key(),
            &mut r,
        )
        .unwrap();
        let error = device.encrypt_fanout(&mut r, &[BOB], &bundles, b"once", T0).unwrap_err();
        assert_eq!(error, FanoutError::Store(StoreError::Injected), "{fault}");
        let mut reopened = StoredDevice::open(store.clone(), &key(), &mut r).unwrap();
        let outbox = reopened.outbox().unwrap();
        match fault {
            Fault::CommitLands(_) => assert_eq!(outbox.len(), 1, "{fault}"),
            _ if store.rows() != before => failures.push(format!(
                "{fault}: the send failed but rows changed ({} outbox items)",
                outbox.len()
            )),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A crash right after `approve_companion` committed: the app, restarted, asks again for the
/// approval it never saw. It has no other way to get it.
#[test]
fn an_approval_committed_before_a_crash_can_be_had_again() {
    let mut r = rng(9);
    let mut server = Server::default();
    let alice = account(&mut r, &mut server, ALICE.0, 0, T0);
    let store = MemoryStore::new();
    StoredDevice::import(store.clone(), &key(), &mut r, &alice.devices[0].to_bytes()).unwrap();
    let companion = multidevice::Device::new(&mut r, addr(ALICE.0, 99), T0);
    let faulty = FaultStore::new(store.clone(), Faults::new([Fault::CommitLands(0)]));
    let mut primary = StoredDevice::open(faulty, &key(), &mut r).unwrap();
    let error = primary.approve_companion(companion.public_identity(), T0).unwrap_err();
    assert_eq!(error, DeviceListError::Store(StoreError::Injected));
    let mut primary = StoredDevice::open(store, &key(), &mut r).unwrap();
    let retried = primary.approve_companion(companion.public_identity(), T0.plus_secs(1));
    assert!(
        retried.is_ok(),
        "the retried approval is refused ({retried:?}): the approval committed before the crash \
         is lost, and the companion cannot link until it expires"
    );
}
