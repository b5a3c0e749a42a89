//! A deterministic simulation of accounts of stored devices talking through a lossy, malicious
//! relay, with crashes, restores from old backups and retries; one participant model shared by
//! the seeded runner and the proptest (`tests/simulation.rs`) and the `simulation` fuzz target
//! (`fuzz/fuzz_targets/simulation.rs`, replayed by `tests/fuzz_replay.rs`).
//!
//! # The model
//!
//! - Two or three accounts, each a primary and up to four companions (linked by QR at the start
//!   and by events), every device a [`multidevice::StoredDevice`] over its own store: memory, or
//!   an SQLite file for one seed in eight when the runner allows files. One or two groups of
//!   member accounts.
//! - The app around each device follows the README's loop: what a call committed to the outbox
//!   goes to the relay, then is marked sent; what `receive` returns is kept, then acknowledged to
//!   the store and to the relay; a refusal is handled as its `action()` says (drop it; keep it
//!   and fetch the list it names, or wait); a retry request that arrives is answered. After a
//!   crash the app opens its store again, keeps what the inbox holds and sends what the outbox
//!   holds. Before a send it fetches the lists `lists_to_fetch` names and asks the relay for
//!   bundles of listed devices it has no session with. A primary re-signs its list once a day
//!   while online (so companions stay signed in), and fetches its own newest list before it
//!   signs one (an app restored from a backup must: signing from an old list forks the account).
//! - The relay ([`relay`]) keeps each message until its device acknowledges it, delivers any
//!   ready item next (so it reorders), and copies a group message to every device of the
//!   group's member accounts it knows, removed ones included. Events make it hold items back,
//!   hand out again what it delivered, discard items, withhold or roll back lists, and serve
//!   stale prekey bundles.
//! - One clock. Events move it by minutes to days, and by 15 days when a primary goes offline.
//!
//! # Events
//!
//! Decoded from bytes ([`script`]): 1:1 and multi-account fan-outs, inline or with a shared
//! body, and group messages, each possibly crashing before its commit lands, after it lands but
//! before the app sees the result, before the network send, or before the outbox is marked sent;
//! deliveries, possibly crashing before or after the receive commits or before the app keeps the
//! message, or losing the acknowledgement (so the relay delivers again); relay replays, delays
//! and discards; crashes between calls; links and removals; a primary offline for 15 days and
//! back; backups and restores of any device; list syncs; list withholding and rollback; stale
//! bundles; new one-time prekeys; signed prekey rotation; group membership changes.
//!
//! # Invariants
//!
//! Checked on every read, at once:
//! - **Authorized reads only.** A device reads a message only if the sender's state authorized
//!   it when it sent: for a fan-out, the devices its envelopes went to (which must lie within the
//!   view the sender's held lists give, checked at the send); for a group message, the devices
//!   the group's sender key was distributed to, that is, the devices the sender's held lists
//!   reach (primaries always, companions while their list is current) less those the send
//!   reported skipped. A read by anyone else is an unauthorized decryption and fails the run.
//! - **Exactly once.** A device's state lineage (its store since creation or its last restore)
//!   reads a message at most once; a read is also checked against what was sent (payload,
//!   sender, conversation or group, message id).
//!
//! Checked after every step, for every device the step touched: **the store opens** again
//! (`StoredDevice::open`, as after a crash), and **state stays within bounds**: the export
//! (`StoredDevice::export`) loads with `Device::from_bytes`, which refuses any state beyond the
//! crate's documented limits. (The runner can do the export check at the end only, for speed.)
//!
//! Checked once the run has quiesced: **every message arrives**. Quiescence: the relay turns
//! honest (every list, fresh bundles, nothing held back or dropped), every offline primary comes
//! back and every primary re-signs its list, every device fetches every list and recovers its
//! inbox and outbox, and then the relay delivers everything it holds, devices answer every retry
//! request, and this repeats until a round changes nothing. Then every (message, device) pair
//! the message was sent to (a fan-out's envelope recipients; a group message's key holders as
//! above) must have been read by the device's current lineage, or be excused by one named rule
//! ([`oracle::Rule`]), each counted on its own:
//! - *recipient removed*: its account's newest list no longer names the device;
//! - *sender removed*: its account's newest list no longer names the sender, so receivers refuse
//!   what it sent;
//! - *dropped by the relay*: the relay discarded the last copy of the envelope or group message
//!   for the device, or of the retry request or answer that was to recover it;
//! - *rolled back*: the device read it, then was restored from a backup taken before the read;
//! - *outside the sender's cache*: a retry was refused (`NotCached`) and the message is older
//!   than the cache's age limit or was followed by as many cached sends as its entry limit;
//! - *sender restored*: a retry was refused (`NotCached`) because the sender was restored from a
//!   backup taken before it sent the message;
//! - *retries exhausted*: the sender refused a retry with `GaveUp`.
//!
//! Anything else unread is a loss, and fails the run with the message's history.

#![allow(dead_code)]

pub(crate) mod oracle;
pub(crate) mod relay;
pub(crate) mod script;
pub(crate) mod store;
mod world;

use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sent messages every device keeps for retries in a seed whose header asks for a small cache.
pub(crate) const SMALL_CACHE_ENTRIES: u32 = 6;

/// How a runner runs the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Seeds whose header asks for SQLite keep their devices in SQLite files.
    pub(crate) sqlite: bool,
    /// Check every touched device's export round trip after every step, not only at the end.
    pub(crate) bounds_every_step: bool,
    /// Print every event and what came of it.
    pub(crate) trace: bool,
}

/// What one run, or many, did. Every count is a sum over runs.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) runs: u64,
    pub(crate) sqlite_runs: u64,
    pub(crate) events: u64,
    pub(crate) fanouts: u64,
    pub(crate) group_messages: u64,
    /// Envelopes and group-message copies handed to the relay.
    pub(crate) relayed: u64,
    /// First reads of a message by a device lineage.
    pub(crate) deliveries: u64,
    /// Reads reported as `Redelivered` (a retry answer or copy of something read before).
    pub(crate) redelivered: u64,
    /// Distinct retry requests handed to the relay.
    pub(crate) retry_requests: u64,
    pub(crate) retries_answered: u64,
    pub(crate) retries_refused: u64,
    /// (message, device) pairs that had to arrive, and of those, read, excused and lost.
    pub(crate) owed: u64,
    pub(crate) arrived: u64,
    pub(crate) excluded: [u64; oracle::Rule::ALL.len()],
    pub(crate) losses: u64,
    /// Reads by a device the sender had not authorized (any fails the run at once).
    pub(crate) unauthorized: u64,
    /// Messages refused on receipt, and left with the relay at the end (never owed).
    pub(crate) refused: u64,
    pub(crate) stuck_at_end: u64,
    pub(crate) sends_refused: u64,
    pub(crate) crashes: u64,
    pub(crate) restores: u64,
    pub(crate) links: u64,
    pub(crate) removals: u64,
    pub(crate) primary_offline: u64,
    pub(crate) relay_replays: u64,
    pub(crate) relay_drops: u64,
    pub(crate) lost_acks: u64,
    pub(crate) lists_refused: u64,
    pub(crate) quiescence_rounds: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, other: &Stats) {
        let Stats {
            runs,
            sqlite_runs,
            events,
            fanouts,
            group_messages,
            relayed,
            deliveries,
            redelivered,
            retry_requests,
            retries_answered,
            retries_refused,
            owed,
            arrived,
            excluded,
            losses,
            unauthorized,
            refused,
            stuck_at_end,
            sends_refused,
            crashes,
            restores,
            links,
            removals,
            primary_offline,
            relay_replays,
            relay_drops,
            lost_acks,
            lists_refused,
            quiescence_rounds,
        } = other;
        self.runs += runs;
        self.sqlite_runs += sqlite_runs;
        self.events += events;
        self.fanouts += fanouts;
        self.group_messages += group_messages;
        self.relayed += relayed;
        self.deliveries += deliveries;
        self.redelivered += redelivered;
        self.retry_requests += retry_requests;
        self.retries_answered += retries_answered;
        self.retries_refused += retries_refused;
        self.owed += owed;
        self.arrived += arrived;
        for (sum, count) in self.excluded.iter_mut().zip(excluded) {
            *sum += count;
        }
        self.losses += losses;
        self.unauthorized += unauthorized;
        self.refused += refused;
        self.stuck_at_end += stuck_at_end;
        self.sends_refused += sends_refused;
        self.crashes += crashes;
        self.restores += restores;
        self.links += links;
        self.removals += removals;
        self.primary_offline += primary_offline;
        self.relay_replays += relay_replays;
        self.relay_drops += relay_drops;
        self.lost_acks += lost_acks;
        self.lists_refused += lists_refused;
        self.quiescence_rounds += quiescence_rounds;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "runs (seeds): {} ({} on SQLite), events: {}",
            self.runs, self.sqlite_runs, self.events
        )?;
        writeln!(
            f,
            "messages sent: {} ({} fan-outs, {} group messages); envelopes and copies relayed: {}",
            self.fanouts + self.group_messages,
            self.fanouts,
            self.group_messages,
            self.relayed
        )?;
        writeln!(
            f,
            "deliveries: {} (and {} redelivered, reported once)",
            self.deliveries, self.redelivered
        )?;
        writeln!(
            f,
            "retries: {} requested, {} answered, {} refused",
            self.retry_requests, self.retries_answered, self.retries_refused
        )?;
        writeln!(f, "owed (message, device) pairs: {}, arrived: {}", self.owed, self.arrived)?;
        for (rule, count) in oracle::Rule::ALL.iter().zip(&self.excluded) {
            writeln!(f, "  excluded, {}: {count}", rule.name())?;
        }
        writeln!(f, "losses: {}", self.losses)?;
        writeln!(f, "unauthorized decryptions: {}", self.unauthorized)?;
        writeln!(
            f,
            "faults: {} crashes, {} restores from backups, {} lost acknowledgements, {} relay \
             replays, {} relay drops, {} primaries offline 15 days",
            self.crashes,
            self.restores,
            self.lost_acks,
            self.relay_replays,
            self.relay_drops,
            self.primary_offline
        )?;
        writeln!(
            f,
            "accounts: {} links, {} removals, {} lists refused (rollbacks and the like)",
            self.links, self.removals, self.lists_refused
        )?;
        write!(
            f,
            "refusals: {} received items refused, {} sends refused, {} items never deliverable \
             left with the relay, {} quiescence rounds",
            self.refused, self.sends_refused, self.stuck_at_end, self.quiescence_rounds
        )
    }
}

/// Runs the model over `data` (see [`script`]); panics, with what broke, if an invariant fails.
pub(crate) fn run(data: &[u8], options: &Options) -> Stats {
    let (setup, events) = script::decode(data);
    let mut world = world::World::new(&setup, options);
    for event in events {
        world.step(event);
    }
    world.finish()
}

/// The input a seed stands for: a header and `events` events drawn from a seeded RNG.
pub(crate) fn seed_input(seed: u64, events: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; script::HEADER_LEN + events * script::EVENT_LEN];
    rng.fill_bytes(&mut data);
    data
}

/// The fuzz target: memory stores only, the export checked after every step.
pub(crate) fn fuzz(data: &[u8]) {
    let options = Options { sqlite: false, bounds_every_step: true, trace: false };
    let stats = run(data, &options);
    assert_eq!(stats.losses, 0);
    assert_eq!(stats.unauthorized, 0);
}
