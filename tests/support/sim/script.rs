//! The simulation's input: bytes decoded into the world's shape and a list of events.
//!
//! One byte format serves every driver: the seeded runner draws the bytes from a seeded RNG, the
//! proptest generates them event by event (so it shrinks by events), and the fuzz target takes
//! them from libFuzzer. Any byte string decodes: the header is [`HEADER_LEN`] bytes (missing
//! ones read as zero), then every [`EVENT_LEN`] bytes make one event, a trailing partial event is
//! ignored. An event's first byte picks its kind through a weighted table, so random bytes give
//! a useful mix (mostly deliveries and sends, rarely 15 days offline); the other three are its
//! parameters, read modulo whatever they index when the event runs.

/// Bytes of the header: crypto seed (4), accounts, companions, groups, flags.
pub(crate) const HEADER_LEN: usize = 8;
/// Bytes of one event: kind, then three parameters.
pub(crate) const EVENT_LEN: usize = 4;
/// At most this many events run; longer inputs are cut (fuzz inputs stay fast).
pub(crate) const MAX_EVENTS: usize = 400;

/// The world at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setup {
    /// Seeds the randomness every device draws from.
    pub(crate) crypto_seed: u64,
    /// Number of accounts: 2 or 3.
    pub(crate) accounts: usize,
    /// Companions linked at the start, per account (0..=2 each; events link up to the maximum).
    pub(crate) companions: [usize; 3],
    /// Member accounts of each group, by account index (one or two groups).
    pub(crate) groups: Vec<Vec<usize>>,
    /// Every device keeps only [`super::SMALL_CACHE_ENTRIES`] sent messages, so retries meet an
    /// evicted cache entry.
    pub(crate) small_cache: bool,
    /// Devices keep their state in SQLite files (when the runner allows it) instead of memory.
    pub(crate) sqlite: bool,
}

/// Where a send may crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendCrash {
    /// No crash: the app sends the outbox and marks it sent.
    None,
    /// The store fails the commit: nothing lands, the app restarts and sends again.
    BeforeCommit,
    /// The commit lands but the app sees a failure: it restarts and finds the item in its outbox.
    AfterCommit,
    /// The call returned; the app crashes before handing anything to the network.
    BeforeSend,
    /// The app handed the outbox to the network and crashed before marking it sent: it is sent
    /// again after the restart.
    BeforeMarkSent,
}

/// What happens to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Received, kept, acknowledged to the store and to the relay.
    Ack,
    /// Received and kept, but the acknowledgement to the relay is lost: it delivers again later.
    LostAck,
    /// The store fails the receive's commit: nothing lands; the relay keeps the item.
    CrashBeforeCommit,
    /// The receive's commit lands but the app sees a failure and restarts; the relay keeps the
    /// item.
    CrashAfterCommit,
    /// Received and committed; the app crashes before keeping it and acknowledging.
    CrashBeforeAck,
}

/// How the relay serves an account's device lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListMode {
    /// The newest list published.
    Honest,
    /// The newest list at the time withholding began, whatever is published since.
    Withhold,
    /// Old lists, in turn (rollbacks, which devices must refuse).
    Replay,
}

/// One step of a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A device sends a fan-out to the accounts of `to` (a bit mask; none means one other
    /// account, so a 1:1 message), inline or with a shared body.
    Fanout { from: u8, to: u8, large: bool, crash: SendCrash },
    /// A device sends a message to a group its account is a member of.
    Group { from: u8, group: u8, crash: SendCrash },
    /// An account joins or leaves a group.
    GroupMembers { group: u8, account: u8 },
    /// The relay delivers one ready item to its (online) device.
    Deliver { pick: u8, fate: Fate },
    /// The relay hands a device an item it already delivered.
    Replay { pick: u8 },
    /// The relay holds an item back for some hours.
    Delay { pick: u8, hours: u8 },
    /// The relay discards an item for good.
    Drop { pick: u8 },
    /// A device's app crashes between calls and restarts from its store.
    Restart { device: u8 },
    /// An account's primary links a new companion by QR.
    Link { account: u8 },
    /// An account's primary removes a companion.
    Remove { account: u8, pick: u8 },
    /// An account's primary goes offline and 15 days pass.
    PrimaryAway { account: u8 },
    /// An offline primary comes back and re-signs its list.
    PrimaryBack { account: u8 },
    /// Time passes.
    Advance { minutes: u16 },
    /// A copy of a device's store is taken.
    Backup { device: u8 },
    /// A device is restored from one of its backups.
    Restore { device: u8, pick: u8 },
    /// A device fetches every account's list from the relay.
    SyncLists { device: u8 },
    /// The relay changes how it serves an account's lists.
    Lists { account: u8, mode: ListMode },
    /// The relay serves stale prekey bundles (an old upload, a used one-time prekey) or honest
    /// ones.
    Bundles { stale: bool },
    /// A device uploads fresh one-time prekeys.
    Replenish { device: u8 },
    /// A device rotates its signed prekey and uploads it.
    RotatePrekey { device: u8 },
}

/// The weight of every event kind, out of 256: the kind byte falls into one range.
const WEIGHTS: [(Kind, u8); 20] = [
    (Kind::Deliver, 93),
    (Kind::Fanout, 40),
    (Kind::Group, 26),
    (Kind::Advance, 14),
    (Kind::SyncLists, 12),
    (Kind::Restart, 8),
    (Kind::Delay, 8),
    (Kind::Replay, 6),
    (Kind::Backup, 8),
    (Kind::Restore, 7),
    (Kind::Link, 5),
    (Kind::Lists, 5),
    (Kind::Drop, 4),
    (Kind::Remove, 4),
    (Kind::GroupMembers, 4),
    (Kind::Bundles, 3),
    (Kind::Replenish, 3),
    (Kind::RotatePrekey, 3),
    (Kind::PrimaryBack, 2),
    (Kind::PrimaryAway, 1),
];

const _: () = {
    let mut total = 0usize;
    let mut i = 0;
    while i < WEIGHTS.len() {
        total += WEIGHTS[i].1 as usize;
        i += 1;
    }
    assert!(total == 256, "the weights cover every kind byte");
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fanout,
    Group,
    GroupMembers,
    Deliver,
    Replay,
    Delay,
    Drop,
    Restart,
    Link,
    Remove,
    PrimaryAway,
    PrimaryBack,
    Advance,
    Backup,
    Restore,
    SyncLists,
    Lists,
    Bundles,
    Replenish,
    RotatePrekey,
}

fn kind(byte: u8) -> Kind {
    let mut below = 0usize;
    for (kind, weight) in WEIGHTS {
        below += usize::from(weight);
        if usize::from(byte) < below {
            return kind;
        }
    }
    Kind::Deliver
}

/// One crash in five sends, spread over the four crash points.
fn send_crash(byte: u8) -> SendCrash {
    match byte % 20 {
        0 => SendCrash::BeforeCommit,
        1 => SendCrash::AfterCommit,
        2 => SendCrash::BeforeSend,
        3 => SendCrash::BeforeMarkSent,
        _ => SendCrash::None,
    }
}

/// One crash in eight deliveries, and one lost acknowledgement in eight.
fn fate(byte: u8) -> Fate {
    match byte % 24 {
        0 => Fate::CrashBeforeCommit,
        1 => Fate::CrashAfterCommit,
        2 => Fate::CrashBeforeAck,
        3..=5 => Fate::LostAck,
        _ => Fate::Ack,
    }
}

impl Event {
    fn decode(bytes: [u8; EVENT_LEN]) -> Self {
        let [k, a, b, c] = bytes;
        match kind(k) {
            Kind::Fanout => {
                Event::Fanout { from: a, to: b, large: c % 4 == 0, crash: send_crash(c / 4) }
            }
            Kind::Group => Event::Group { from: a, group: b, crash: send_crash(c) },
            Kind::GroupMembers => Event::GroupMembers { group: a, account: b },
            Kind::Deliver => Event::Deliver { pick: a, fate: fate(b) },
            Kind::Replay => Event::Replay { pick: a },
            Kind::Delay => Event::Delay { pick: a, hours: 1 + b % 24 },
            Kind::Drop => Event::Drop { pick: a },
            Kind::Restart => Event::Restart { device: a },
            Kind::Link => Event::Link { account: a },
            Kind::Remove => Event::Remove { account: a, pick: b },
            Kind::PrimaryAway => Event::PrimaryAway { account: a },
            Kind::PrimaryBack => Event::PrimaryBack { account: a },
            // Up to two days, mostly minutes to hours.
            Kind::Advance => {
                Event::Advance { minutes: u16::from_be_bytes([a, b]) % (2 * 24 * 60) + 1 }
            }
            Kind::Backup => Event::Backup { device: a },
            Kind::Restore => Event::Restore { device: a, pick: b },
            Kind::SyncLists => Event::SyncLists { device: a },
            Kind::Lists => Event::Lists {
                account: a,
                mode: match b % 3 {
                    0 => ListMode::Honest,
                    1 => ListMode::Withhold,
                    _ => ListMode::Replay,
                },
            },
            Kind::Bundles => Event::Bundles { stale: a % 2 == 1 },
            Kind::Replenish => Event::Replenish { device: a },
            Kind::RotatePrekey => Event::RotatePrekey { device: a },
        }
    }
}

/// Decodes any bytes into a setup and at most [`MAX_EVENTS`] events.
pub(crate) fn decode(data: &[u8]) -> (Setup, Vec<Event>) {
    let mut header = [0u8; HEADER_LEN];
    for (slot, byte) in header.iter_mut().zip(data) {
        *slot = *byte;
    }
    let [s0, s1, s2, s3, shape, companions, groups, flags] = header;
    let accounts = 2 + usize::from(shape % 2);
    let companions = [
        usize::from(companions % 3),
        usize::from((companions / 3) % 3),
        usize::from((companions / 9) % 3),
    ];
    // Group 0 holds accounts 0 and 1 (and 2 if the bit says so); a second group, if any, holds
    // the last account and account 0.
    let mut first = vec![0, 1];
    if accounts == 3 && groups & 1 == 1 {
        first.push(2);
    }
    let mut setup_groups = vec![first];
    if groups & 2 == 2 {
        setup_groups.push(vec![0, accounts - 1]);
    }
    let setup = Setup {
        crypto_seed: u64::from(u32::from_be_bytes([s0, s1, s2, s3])),
        accounts,
        companions,
        groups: setup_groups,
        small_cache: flags % 8 == 0,
        sqlite: flags / 8 % 8 == 0,
    };
    let events = data
        .get(HEADER_LEN..)
        .unwrap_or_default()
        .chunks_exact(EVENT_LEN)
        .take(MAX_EVENTS)
        .map(|chunk| {
            let mut bytes = [0u8; EVENT_LEN];
            bytes.copy_from_slice(chunk);
            Event::decode(bytes)
        })
        .collect();
    (setup, events)
}
