//! Bodies of the cargo-fuzz targets, shared with `tests/fuzz_replay.rs`.
//!
//! Each `pub(crate) fn <target>(data: &[u8])` is what `fuzz/fuzz_targets/<target>.rs` runs under
//! libFuzzer and what the stable replay test runs over the checked-in corpus. A target must never
//! panic on its own; every `assert!` below is an invariant of the crate, and a failing one is a
//! bug in the crate (or in this model), never in the input.
//!
//! This module depends only on `multidevice`, `rand` and `arbitrary`, so the fuzz crate can
//! include it by path.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use arbitrary::{Arbitrary, Unstructured};
use multidevice::consts::{DAY_SECS, MAX_COMPANIONS, MAX_ONE_TIME_PREKEYS};
use multidevice::{
    AccountId, AccountStatus, CompanionPairing, Device, DeviceAddress, DeviceId, DeviceListError,
    LogoutRequest, PairingCode, PrekeyBundle, PrekeyUpload, PrimaryPairing, PublicIdentity,
    QrLinkApproval, QrLinkOffer, SessionMessage, SignedDeviceIdentity, SignedDeviceList, Timestamp,
    VerifiedPrekeyBundle,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The time every fuzz target runs at, unless an event moves the clock.
pub(crate) const NOW: Timestamp = Timestamp(1_700_000_000);

/// Sender (12) and recipient (12) addresses after the version and type bytes.
const ADDRESSES_END: usize = 2 + 12 + 12;
/// Shortest session message: version, type, addresses, ratchet header (68), tag (16).
const MIN_MESSAGE_LEN: usize = ADDRESSES_END + 68 + 16;
/// Shortest prekey fields: identity (128), base key (32), signed prekey id (4), flag (1).
const MIN_PREKEY_FIELDS_LEN: usize = 128 + 32 + 4 + 1;

/// Address of device `device` of account `account`.
pub(crate) fn address(account: u64, device: u32) -> DeviceAddress {
    DeviceAddress::new(AccountId(account), DeviceId(device))
}

/// A deterministic RNG.
pub(crate) fn seeded(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fresh_device(rng: &mut StdRng, address: DeviceAddress, one_time_prekeys: usize) -> Device {
    let mut device = Device::new(rng, address, NOW);
    device.generate_one_time_prekeys(rng, one_time_prekeys).expect("within the prekey limit");
    device
}

/// The bundle an honest server hands out for `owner`, carried as bytes and verified by the
/// fetching device. `one_time` picks a one-time prekey from the current upload; out of range
/// means none. The server may hand the same one-time prekey to two initiators.
fn fetch_bundle(owner: &Device, one_time: usize) -> VerifiedPrekeyBundle {
    let upload = owner.prekey_upload();
    let index = (one_time < upload.one_time_prekeys.len()).then_some(one_time);
    let bytes = upload.bundle(index).to_bytes();
    PrekeyBundle::try_from(bytes.as_slice())
        .expect("a bundle's own encoding parses")
        .verify()
        .expect("an honest bundle verifies")
}

// ---------------------------------------------------------------------------------------------
// Decode targets: one per parser.
// ---------------------------------------------------------------------------------------------

/// `SessionMessage::try_from`: no panic, and an accepted message has the documented layout.
pub(crate) fn session_message(data: &[u8]) {
    let Ok(message) = SessionMessage::try_from(data) else {
        return;
    };
    assert!(data.len() >= MIN_MESSAGE_LEN, "accepted a {}-byte message", data.len());
    assert_eq!(data.first(), Some(&1), "accepted an unknown version");
    let expected_type = if message.is_prekey_message() { 2 } else { 1 };
    assert_eq!(data.get(1), Some(&expected_type));
    if message.is_prekey_message() {
        assert!(data.len() >= MIN_MESSAGE_LEN + MIN_PREKEY_FIELDS_LEN);
    }
    assert_eq!(address_at(data, 2), Some(message.sender()));
    assert_eq!(address_at(data, 14), Some(message.recipient()));
}

fn address_at(data: &[u8], offset: usize) -> Option<DeviceAddress> {
    let account = data.get(offset..offset + 8)?;
    let device = data.get(offset + 8..offset + 12)?;
    Some(address(
        u64::from_be_bytes(account.try_into().ok()?),
        u32::from_be_bytes(device.try_into().ok()?),
    ))
}

/// A device that starts sessions from fuzzed bundles; rebuilt from these bytes every time.
fn initiator_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut rng = seeded(0xB0D1E);
        fresh_device(&mut rng, address(9, 0), 0).to_bytes().to_vec()
    })
}

/// `PrekeyBundle::try_from`: canonical encoding, and a bundle that verifies is safe to start a
/// session with (typed error and no state change, or a session).
pub(crate) fn prekey_bundle(data: &[u8]) {
    let Ok(bundle) = PrekeyBundle::try_from(data) else {
        return;
    };
    assert_eq!(bundle.to_bytes(), data, "non-canonical bundle accepted");
    let Ok(verified) = bundle.verify() else {
        return;
    };
    let mut device = Device::from_bytes(initiator_bytes()).expect("fixture state loads");
    let remote = verified.bundle().address;
    let mut rng = seeded(1);
    match device.start_session(&mut rng, &verified) {
        Ok(()) => assert!(device.has_session(remote)),
        Err(error) => {
            assert_eq!(device.to_bytes().as_slice(), initiator_bytes(), "changed by {error:?}");
        }
    }
}

/// `PrekeyUpload::try_from`: canonical encoding, and every bundle cut from it round-trips.
pub(crate) fn prekey_upload(data: &[u8]) {
    let Ok(upload) = PrekeyUpload::try_from(data) else {
        return;
    };
    assert_eq!(upload.to_bytes(), data, "non-canonical upload accepted");
    assert!(upload.one_time_prekeys.len() <= MAX_ONE_TIME_PREKEYS);
    let signature_ok = upload.bundle(None).verify().is_ok();
    for index in [None, Some(0), Some(upload.one_time_prekeys.len().saturating_sub(1))] {
        let bundle = upload.bundle(index);
        let bytes = bundle.to_bytes();
        assert_eq!(PrekeyBundle::try_from(bytes.as_slice()).as_ref(), Ok(&bundle));
        // The one-time prekey is not signed, so which one is served cannot change the verdict.
        assert_eq!(bundle.verify().is_ok(), signature_ok);
    }
}

/// `PublicIdentity::try_from`: canonical encoding and a stable fingerprint.
pub(crate) fn public_identity(data: &[u8]) {
    let Ok(identity) = PublicIdentity::try_from(data) else {
        return;
    };
    let bytes = identity.to_bytes();
    assert_eq!(bytes.as_slice(), data, "non-canonical identity accepted");
    let again = PublicIdentity::try_from(bytes.as_slice()).expect("own encoding parses");
    assert_eq!(again, identity);
    assert_eq!(again.fingerprint(), identity.fingerprint());
}

/// `Device::from_bytes`: a loaded device serializes stably and exposes consistent public data.
pub(crate) fn device_state(data: &[u8]) {
    let Ok(device) = Device::from_bytes(data) else {
        return;
    };
    let first = device.to_bytes();
    let reloaded = Device::from_bytes(&first).expect("a device's own bytes load");
    assert_eq!(reloaded.to_bytes(), first, "persisted state is not stable");
    let identity = device.public_identity().to_bytes();
    assert_eq!(
        PublicIdentity::try_from(identity.as_slice()).as_ref(),
        Ok(device.public_identity())
    );
    // A state this crate wrote never holds more one-time prekeys than the limit; a state from
    // elsewhere might, and its upload then cannot be parsed back, so only check the normal case.
    if device.one_time_prekeys_remaining() <= MAX_ONE_TIME_PREKEYS {
        let upload = device.prekey_upload();
        let bytes = upload.to_bytes();
        assert_eq!(PrekeyUpload::try_from(bytes.as_slice()), Ok(upload));
    }
}

// ---------------------------------------------------------------------------------------------
// Decrypt target: arbitrary bytes against a fixed pair of devices.
// ---------------------------------------------------------------------------------------------

/// One of the two devices of a fuzzed conversation.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Device 1:0.
    A,
    /// Device 2:0.
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// The address of this side's device.
    pub(crate) fn address(self) -> DeviceAddress {
        match self {
            Side::A => address(1, 0),
            Side::B => address(2, 0),
        }
    }
}

/// A genuine message the fixture devices have not received yet: it decrypts exactly once.
pub(crate) struct Pending {
    /// Receiving side.
    pub(crate) to: Side,
    /// Claimed and true sender.
    pub(crate) from: DeviceAddress,
    /// The wire bytes.
    pub(crate) wire: Vec<u8>,
    /// What it decrypts to.
    pub(crate) plaintext: Vec<u8>,
}

/// The fixed conversation the decrypt target attacks, and messages for seeding its corpus.
pub(crate) struct DecryptFixture {
    /// Persisted state of A and B.
    pub(crate) state: [Vec<u8>; 2],
    /// Messages that decrypt at the fixture state.
    pub(crate) pending: Vec<Pending>,
    /// Messages the fixture devices already received (replays).
    pub(crate) delivered: Vec<Vec<u8>>,
}

/// Builds the fixture: A and B established in both directions, B holding skipped keys, A a new
/// chain waiting, and a third device C about to start a session with B.
pub(crate) fn build_decrypt_fixture() -> DecryptFixture {
    let mut rng = seeded(0xDEC0DE);
    let mut a = fresh_device(&mut rng, Side::A.address(), 3);
    let mut b = fresh_device(&mut rng, Side::B.address(), 3);
    let mut c = fresh_device(&mut rng, address(3, 1), 0);
    let mut pending = Vec::new();
    let mut delivered = Vec::new();
    let send = |from: &mut Device, to: &Device, text: &[u8], rng: &mut StdRng| {
        from.encrypt(rng, to.address(), text).expect("session exists")
    };

    a.start_session(&mut rng, &fetch_bundle(&b, 0)).expect("genuine bundle");
    let first = send(&mut a, &b, b"first, a prekey message", &mut rng);
    b.decrypt(&first, NOW).expect("genuine");
    delivered.push(first);
    let reply = send(&mut b, &a, b"reply", &mut rng);
    a.decrypt(&reply, NOW).expect("genuine");
    delivered.push(reply);

    // A turns the ratchet and sends three; B receives only the third and keeps two skipped keys.
    let skipped: Vec<(Vec<u8>, &[u8])> = [&b"skipped one"[..], b"skipped two"]
        .into_iter()
        .map(|text| (send(&mut a, &b, text, &mut rng), text))
        .collect();
    let third = send(&mut a, &b, b"third", &mut rng);
    b.decrypt(&third, NOW).expect("genuine");
    delivered.push(third);
    for (wire, text) in skipped {
        pending.push(Pending { to: Side::B, from: a.address(), wire, plaintext: text.to_vec() });
    }

    // B turns the ratchet; nothing reaches A yet.
    for text in [&b"new chain one"[..], b"new chain two"] {
        let wire = send(&mut b, &a, text, &mut rng);
        pending.push(Pending { to: Side::A, from: b.address(), wire, plaintext: text.to_vec() });
    }

    // C starts a session with B using one of B's unused one-time prekeys.
    c.start_session(&mut rng, &fetch_bundle(&b, 0)).expect("genuine bundle");
    let text = b"hello from a third device";
    let wire = send(&mut c, &b, text, &mut rng);
    pending.push(Pending { to: Side::B, from: c.address(), wire, plaintext: text.to_vec() });

    DecryptFixture { state: [a.to_bytes().to_vec(), b.to_bytes().to_vec()], pending, delivered }
}

struct DecryptTarget {
    fixture: DecryptFixture,
    live: [Mutex<Device>; 2],
}

fn decrypt_target() -> &'static DecryptTarget {
    static TARGET: OnceLock<DecryptTarget> = OnceLock::new();
    TARGET.get_or_init(|| {
        let fixture = build_decrypt_fixture();
        let load = |bytes: &[u8]| Mutex::new(Device::from_bytes(bytes).expect("fixture loads"));
        let live = [load(&fixture.state[0]), load(&fixture.state[1])];
        DecryptTarget { fixture, live }
    })
}

/// Feeds `data` to both fixture devices. Only a pending genuine message may decrypt, to its
/// plaintext, exactly once; any failure leaves the device byte-identical.
pub(crate) fn decrypt(data: &[u8]) {
    let target = decrypt_target();
    for side in [Side::A, Side::B] {
        let state = &target.fixture.state[side.index()];
        let mut device = lock(&target.live[side.index()]);
        match device.decrypt(data, NOW) {
            Ok(got) => {
                let expected = target
                    .fixture
                    .pending
                    .iter()
                    .find(|p| p.to == side && p.wire == data)
                    .expect("only a genuine pending message can decrypt");
                assert_eq!(got.plaintext.as_slice(), expected.plaintext.as_slice());
                assert_eq!(got.sender, expected.from);
                let after = device.to_bytes();
                assert!(device.decrypt(data, NOW).is_err(), "a message decrypted twice");
                assert_eq!(device.to_bytes(), after, "a rejected replay changed state");
                *device = Device::from_bytes(state).expect("fixture loads");
            }
            Err(error) => {
                assert_eq!(device.to_bytes().as_slice(), state.as_slice(), "changed by {error:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stateful target: two devices, an untrusted relay and a clock, driven by an event list.
// ---------------------------------------------------------------------------------------------

/// Events are decoded until the input runs out or this many were read.
pub(crate) const MAX_EVENTS: usize = 256;
/// The relay remembers this many delivered messages for replays.
const LOG_LEN: usize = 64;

/// One step of the two-device model. Indices pick an in-flight message modulo their count.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// `from` encrypts a message with `len` filler bytes to the other device.
    Send {
        /// The sender.
        from: Side,
        /// Filler length.
        len: u8,
    },
    /// The relay delivers an in-flight message.
    Deliver {
        /// Which one.
        index: u8,
    },
    /// The relay drops an in-flight message.
    Drop {
        /// Which one.
        index: u8,
    },
    /// The relay queues a second copy of an in-flight message.
    Duplicate {
        /// Which one.
        index: u8,
    },
    /// The relay swaps two in-flight messages.
    Reorder {
        /// First position.
        first: u8,
        /// Second position.
        second: u8,
    },
    /// The relay flips one bit of an in-flight message.
    Tamper {
        /// Which message.
        index: u8,
        /// Which byte, modulo the length.
        byte: u16,
        /// Which bit, modulo 8.
        bit: u8,
    },
    /// The relay re-delivers a message it delivered earlier.
    Replay {
        /// Which one of the remembered messages.
        index: u8,
    },
    /// The relay delivers an in-flight message to its sender instead.
    Misroute {
        /// Which one.
        index: u8,
    },
    /// The app persists a device.
    Snapshot {
        /// Which device.
        which: Side,
    },
    /// The app restores a device from its last snapshot, replacing the live one.
    Restore {
        /// Which device.
        which: Side,
    },
    /// The app persists and reloads a device.
    Reload {
        /// Which device.
        which: Side,
    },
    /// `from` fetches a bundle for the other device and starts a new session.
    NewSession {
        /// The initiator.
        from: Side,
        /// Which one-time prekey the server serves (out of range: none).
        one_time: u8,
    },
    /// A device creates more one-time prekeys.
    Replenish {
        /// Which device.
        which: Side,
        /// How many (modulo 8).
        count: u8,
    },
    /// A device rotates its signed prekey.
    RotateSignedPrekey {
        /// Which device.
        which: Side,
    },
    /// Time passes.
    AdvanceClock {
        /// Hours.
        hours: u16,
    },
}

const EVENT_VARIANTS: u32 = 15;

impl Event {
    fn variant(&self) -> u32 {
        match self {
            Event::Send { .. } => 0,
            Event::Deliver { .. } => 1,
            Event::Drop { .. } => 2,
            Event::Duplicate { .. } => 3,
            Event::Reorder { .. } => 4,
            Event::Tamper { .. } => 5,
            Event::Replay { .. } => 6,
            Event::Misroute { .. } => 7,
            Event::Snapshot { .. } => 8,
            Event::Restore { .. } => 9,
            Event::Reload { .. } => 10,
            Event::NewSession { .. } => 11,
            Event::Replenish { .. } => 12,
            Event::RotateSignedPrekey { .. } => 13,
            Event::AdvanceClock { .. } => 14,
        }
    }
}

/// Decodes an event list the way the `two_devices` target does.
pub(crate) fn decode_events(data: &[u8]) -> Vec<Event> {
    let mut input = Unstructured::new(data);
    let mut events = Vec::new();
    while !input.is_empty() && events.len() < MAX_EVENTS {
        match Event::arbitrary(&mut input) {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
    }
    events
}

/// Encodes events into bytes that [`decode_events`] turns back into them, for writing seeds.
/// Mirrors `arbitrary`'s derive: a variant is a little-endian `u32` scaled onto the variant
/// count, integers are little-endian.
pub(crate) fn encode_events(events: &[Event]) -> Vec<u8> {
    fn tag(out: &mut Vec<u8>, variant: u32, count: u32) {
        let value = (u64::from(variant) << 32).div_ceil(u64::from(count));
        out.extend_from_slice(&u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes());
    }
    fn side(out: &mut Vec<u8>, side: Side) {
        tag(out, u32::from(side == Side::B), 2);
    }
    let mut out = Vec::new();
    for event in events {
        tag(&mut out, event.variant(), EVENT_VARIANTS);
        match *event {
            Event::Send { from, len } => {
                side(&mut out, from);
                out.push(len);
            }
            Event::Deliver { index }
            | Event::Drop { index }
            | Event::Duplicate { index }
            | Event::Replay { index }
            | Event::Misroute { index } => out.push(index),
            Event::Reorder { first, second } => out.extend_from_slice(&[first, second]),
            Event::Tamper { index, byte, bit } => {
                out.push(index);
                out.extend_from_slice(&byte.to_le_bytes());
                out.push(bit);
            }
            Event::Snapshot { which }
            | Event::Restore { which }
            | Event::Reload { which }
            | Event::RotateSignedPrekey { which } => side(&mut out, which),
            Event::NewSession { from, one_time } => {
                side(&mut out, from);
                out.push(one_time);
            }
            Event::Replenish { which, count } => {
                side(&mut out, which);
                out.push(count);
            }
            Event::AdvanceClock { hours } => out.extend_from_slice(&hours.to_le_bytes()),
        }
    }
    out
}

/// A message on the relay.
#[derive(Clone)]
struct Envelope {
    /// Index into `World::sent`.
    id: usize,
    bytes: Vec<u8>,
}

/// What was really sent.
struct Sent {
    from: Side,
    to: Side,
    wire: Vec<u8>,
    plaintext: Vec<u8>,
}

struct Peer {
    device: Device,
    /// Messages this device's state lineage has accepted.
    accepted: BTreeSet<usize>,
    snapshot: Option<(Vec<u8>, BTreeSet<usize>)>,
}

/// What a run did, for choosing seeds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Events run.
    pub(crate) events: usize,
    /// Messages sent.
    pub(crate) sent: usize,
    /// Successful decryptions.
    pub(crate) accepted: usize,
    /// Failed decryptions.
    pub(crate) rejected: usize,
}

struct World {
    rng: StdRng,
    now: Timestamp,
    peers: [Peer; 2],
    in_flight: Vec<Envelope>,
    log: Vec<Envelope>,
    sent: Vec<Sent>,
    stats: Stats,
}

fn two_device_start() -> &'static [Vec<u8>; 2] {
    static START: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    START.get_or_init(|| {
        let mut rng = seeded(0x2DE7);
        let mut a = fresh_device(&mut rng, Side::A.address(), 3);
        let b = fresh_device(&mut rng, Side::B.address(), 3);
        a.start_session(&mut rng, &fetch_bundle(&b, 0)).expect("genuine bundle");
        [a.to_bytes().to_vec(), b.to_bytes().to_vec()]
    })
}

fn plaintext(id: usize, len: u8) -> Vec<u8> {
    let tag = u64::try_from(id).unwrap_or(u64::MAX).to_be_bytes();
    let mut text = tag.to_vec();
    text.extend(tag.iter().cycle().take(usize::from(len)));
    text
}

fn pick(len: usize, index: impl Into<usize>) -> Option<usize> {
    (len > 0).then(|| index.into() % len)
}

impl World {
    fn new() -> Self {
        let start = two_device_start();
        let peer = |bytes: &[u8]| Peer {
            device: Device::from_bytes(bytes).expect("start state loads"),
            accepted: BTreeSet::new(),
            snapshot: None,
        };
        Self {
            rng: seeded(0x5EED),
            now: NOW,
            peers: [peer(&start[0]), peer(&start[1])],
            in_flight: Vec::new(),
            log: Vec::new(),
            sent: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn peer(&mut self, side: Side) -> &mut Peer {
        &mut self.peers[side.index()]
    }

    fn run(&mut self, event: &Event) {
        self.stats.events += 1;
        match *event {
            Event::Send { from, len } => self.send(from, len),
            Event::Deliver { index } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    let envelope = self.in_flight.remove(i);
                    let to = self.sent[envelope.id].to;
                    self.deliver(&envelope, to);
                    if self.log.len() == LOG_LEN {
                        self.log.remove(0);
                    }
                    self.log.push(envelope);
                }
            }
            Event::Drop { index } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    self.in_flight.remove(i);
                }
            }
            Event::Duplicate { index } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    let copy = self.in_flight[i].clone();
                    self.in_flight.push(copy);
                }
            }
            Event::Reorder { first, second } => {
                let len = self.in_flight.len();
                if let (Some(i), Some(j)) = (pick(len, first), pick(len, second)) {
                    self.in_flight.swap(i, j);
                }
            }
            Event::Tamper { index, byte, bit } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    let bytes = &mut self.in_flight[i].bytes;
                    if let Some(b) = pick(bytes.len(), byte) {
                        bytes[b] ^= 1u8 << (bit % 8);
                    }
                }
            }
            Event::Replay { index } => {
                if let Some(i) = pick(self.log.len(), index) {
                    let envelope = self.log[i].clone();
                    let to = self.sent[envelope.id].to;
                    self.deliver(&envelope, to);
                }
            }
            Event::Misroute { index } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    let envelope = self.in_flight[i].clone();
                    let to = self.sent[envelope.id].from;
                    self.deliver(&envelope, to);
                }
            }
            Event::Snapshot { which } => {
                let peer = self.peer(which);
                peer.snapshot = Some((peer.device.to_bytes().to_vec(), peer.accepted.clone()));
            }
            Event::Restore { which } => {
                let peer = self.peer(which);
                if let Some((bytes, accepted)) = &peer.snapshot {
                    peer.device = Device::from_bytes(bytes).expect("a snapshot loads");
                    peer.accepted = accepted.clone();
                }
            }
            Event::Reload { which } => {
                let device = &mut self.peer(which).device;
                let bytes = device.to_bytes();
                *device = Device::from_bytes(&bytes).expect("a device's own bytes load");
                assert_eq!(device.to_bytes(), bytes, "reloading changed the state");
            }
            Event::NewSession { from, one_time } => {
                let bundle =
                    fetch_bundle(&self.peers[from.other().index()].device, one_time.into());
                let (rng, device) = (&mut self.rng, &mut self.peers[from.index()].device);
                let before = device.to_bytes();
                match device.start_session(rng, &bundle) {
                    Ok(()) => assert!(device.has_session(from.other().address())),
                    Err(error) => assert_eq!(device.to_bytes(), before, "changed by {error:?}"),
                }
            }
            Event::Replenish { which, count } => {
                let (rng, device) = (&mut self.rng, &mut self.peers[which.index()].device);
                let before = device.to_bytes();
                let count = usize::from(count % 8);
                let had = device.one_time_prekeys_remaining();
                match device.generate_one_time_prekeys(rng, count) {
                    Ok(fresh) => {
                        assert_eq!(fresh.len(), count);
                        assert_eq!(device.one_time_prekeys_remaining(), had + count);
                    }
                    Err(error) => assert_eq!(device.to_bytes(), before, "changed by {error:?}"),
                }
                assert!(device.one_time_prekeys_remaining() <= MAX_ONE_TIME_PREKEYS);
            }
            Event::RotateSignedPrekey { which } => {
                let (rng, device) = (&mut self.rng, &mut self.peers[which.index()].device);
                let fresh = device.rotate_signed_prekey(rng, self.now);
                assert_eq!(device.prekey_upload().signed_prekey, fresh);
            }
            Event::AdvanceClock { hours } => {
                self.now = self.now.plus_secs(u64::from(hours) * 3600);
            }
        }
    }

    fn send(&mut self, from: Side, len: u8) {
        let id = self.sent.len();
        let text = plaintext(id, len);
        let (rng, device) = (&mut self.rng, &mut self.peers[from.index()].device);
        let before = device.to_bytes();
        match device.encrypt(rng, from.other().address(), &text) {
            Ok(wire) => {
                self.stats.sent += 1;
                self.in_flight.push(Envelope { id, bytes: wire.clone() });
                self.sent.push(Sent { from, to: from.other(), wire, plaintext: text });
            }
            Err(error) => assert_eq!(device.to_bytes(), before, "changed by {error:?}"),
        }
    }

    fn deliver(&mut self, envelope: &Envelope, to: Side) {
        let sent = &self.sent[envelope.id];
        let now = self.now;
        let peer = &mut self.peers[to.index()];
        let before = peer.device.to_bytes();
        match peer.device.decrypt(&envelope.bytes, now) {
            Ok(got) => {
                self.stats.accepted += 1;
                assert_eq!(to, sent.to, "accepted by a device it was not addressed to");
                assert!(envelope.bytes == sent.wire, "accepted a tampered message");
                assert_eq!(got.plaintext.as_slice(), sent.plaintext.as_slice());
                assert_eq!(got.sender, sent.from.address());
                assert!(
                    peer.accepted.insert(envelope.id),
                    "message {} accepted twice",
                    envelope.id
                );
            }
            Err(error) => {
                self.stats.rejected += 1;
                assert_eq!(peer.device.to_bytes(), before, "changed by {error:?}");
            }
        }
    }
}

/// Runs an event list and reports what happened.
pub(crate) fn run_two_devices(data: &[u8]) -> Stats {
    let mut world = World::new();
    for event in decode_events(data) {
        world.run(&event);
    }
    world.stats
}

/// The stateful target: two devices, a hostile relay, snapshots, restores and a clock.
pub(crate) fn two_devices(data: &[u8]) {
    run_two_devices(data);
}

// ---------------------------------------------------------------------------------------------
// Accounts, linking and blobs.

/// A primary (1:0) with one linked companion, and a peer (2:0) that holds the primary's list.
struct AccountFixture {
    primary: Vec<u8>,
    companion: Vec<u8>,
    peer: Vec<u8>,
    list: Vec<u8>,
}

fn account_fixture() -> &'static AccountFixture {
    static FIXTURE: OnceLock<AccountFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = seeded(0xacc0);
        let mut primary = Device::new(&mut rng, address(1, 0), NOW);
        primary.refresh_device_list(NOW).unwrap_or_else(|_| unreachable_fixture());
        let mut companion = Device::new(&mut rng, address(1, 99), NOW);
        let approval = primary
            .approve_companion(companion.public_identity(), NOW)
            .unwrap_or_else(|_| unreachable_fixture());
        let signed =
            companion.countersign_approval(&approval).unwrap_or_else(|_| unreachable_fixture());
        let list = primary.add_companion(&signed, NOW).unwrap_or_else(|_| unreachable_fixture());
        companion
            .process_device_list(&list.to_bytes(), NOW)
            .unwrap_or_else(|_| unreachable_fixture());
        let mut peer = Device::new(&mut rng, address(2, 0), NOW);
        peer.process_device_list(&list.to_bytes(), NOW).unwrap_or_else(|_| unreachable_fixture());
        AccountFixture {
            primary: primary.to_bytes().to_vec(),
            companion: companion.to_bytes().to_vec(),
            peer: peer.to_bytes().to_vec(),
            list: list.to_bytes(),
        }
    })
}

fn unreachable_fixture<T>() -> T {
    panic!("fuzz fixture setup failed")
}

fn restore(bytes: &[u8]) -> Device {
    Device::from_bytes(bytes).unwrap_or_else(|_| unreachable_fixture())
}

/// The seed list, for corpus generation.
pub(crate) fn seed_device_list() -> Vec<u8> {
    account_fixture().list.clone()
}

/// Parses and verifies a device list, checks canonical re-encoding, and feeds it to a peer: a
/// rejected list leaves the peer unchanged (an identity change only raises its flag).
pub(crate) fn device_list(data: &[u8]) {
    if let Ok(list) = SignedDeviceList::try_from(data) {
        assert_eq!(list.to_bytes(), data, "device list encoding is not canonical");
        let _ = list.verify();
    }
    let fixture = account_fixture();
    let mut peer = restore(&fixture.peer);
    match peer.process_device_list(data, NOW) {
        Ok(update) => assert!(update.list.devices().len() <= 1 + MAX_COMPANIONS),
        Err(DeviceListError::IdentityChanged { .. }) => {}
        Err(_) => assert_eq!(peer.to_bytes().as_slice(), fixture.peer.as_slice()),
    }
}

/// Parses a signed device identity and checks it against the account identity.
pub(crate) fn signed_device_identity(data: &[u8]) {
    if let Ok(signed) = SignedDeviceIdentity::try_from(data) {
        assert_eq!(signed.to_bytes(), data, "signed identity encoding is not canonical");
        let primary = restore(&account_fixture().primary);
        let _ = signed.verify(primary.public_identity());
    }
}

/// A logout request to the primary: rejected ones change nothing.
pub(crate) fn logout_request(data: &[u8]) {
    if let Ok(request) = LogoutRequest::try_from(data) {
        assert_eq!(request.to_bytes(), data, "logout encoding is not canonical");
    }
    let fixture = account_fixture();
    let mut primary = restore(&fixture.primary);
    if primary.process_logout(data, NOW).is_err() {
        assert_eq!(primary.to_bytes().as_slice(), fixture.primary.as_slice());
    }
}

/// Scanned QR text: a rejected offer leaves the primary unchanged.
pub(crate) fn qr_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fixture = account_fixture();
    let mut primary = restore(&fixture.primary);
    if QrLinkApproval::approve(&mut primary, &text, NOW).is_err() {
        assert_eq!(primary.to_bytes().as_slice(), fixture.primary.as_slice());
    }
}

/// Arbitrary bytes as the primary's approval (to a waiting companion) and as the companion's
/// confirmation (to a waiting primary): rejected, and nothing changes.
pub(crate) fn link_messages(data: &[u8]) {
    let mut rng = seeded(0x11c);
    let fixture = account_fixture();
    let mut primary = restore(&fixture.primary);
    let waiting = Device::new(&mut rng, address(1, 98), NOW);
    let waiting_bytes = waiting.to_bytes().to_vec();
    let mut waiting = restore(&waiting_bytes);
    let mut offer = QrLinkOffer::new(&mut rng, &waiting, NOW);
    if offer.accept_approval(&mut waiting, data, NOW).is_err() {
        assert_eq!(waiting.to_bytes().as_slice(), waiting_bytes.as_slice());
    }
    if let Ok((mut approval, _)) = QrLinkApproval::approve(&mut primary, &offer.qr_text(), NOW) {
        let before = primary.to_bytes().to_vec();
        if approval.finish(&mut primary, data, NOW).is_err() {
            assert_eq!(primary.to_bytes().as_slice(), before.as_slice());
        }
    }
}

/// Arbitrary bytes as every pairing-code message, to both sides.
pub(crate) fn pairing_messages(data: &[u8]) {
    let mut rng = seeded(0x9a1);
    let fixture = account_fixture();
    let mut primary = restore(&fixture.primary);
    let companion = Device::new(&mut rng, address(1, 97), NOW);
    let code = PairingCode::generate(&mut rng);
    let _ = PrimaryPairing::respond(&mut rng, &primary, data, &code, NOW);
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &companion, NOW);
    let _ = attempt.handle_response(data, NOW);
    if let Ok((mut pairing, _)) = PrimaryPairing::respond(&mut rng, &primary, &hello, &code, NOW) {
        let before = primary.to_bytes().to_vec();
        if pairing.handle_confirm(&mut primary, data, NOW).is_err() {
            assert_eq!(primary.to_bytes().as_slice(), before.as_slice());
        }
    }
}

/// Blob descriptors: the blob module's own invariant checker.
pub(crate) fn blob_descriptor(data: &[u8]) {
    assert!(multidevice::blob::fuzz_descriptor(data), "blob descriptor invariant broken");
}

/// Blob chunk streams: the blob module's own invariant checker.
pub(crate) fn blob_chunks(data: &[u8]) {
    assert!(multidevice::blob::fuzz_chunk_stream(data), "blob chunk stream invariant broken");
}

/// History records: the record parser's own invariant checker on `data` cut into small pieces;
/// then any plaintext, framing and all, either imports as records that frame back to exactly that
/// plaintext or fails with a framing error; records cut from `data` round-trip.
pub(crate) fn history_records(data: &[u8]) {
    use multidevice::blob::{MediaType, encrypt_blob};
    use multidevice::{HISTORY_MEDIA_TYPE, HistoryError, build_history, import_history};
    use std::io::Cursor;

    // The record parser itself, fed in pieces as small as one byte (a blob decryptor writes
    // whole 64 KiB chunks, so the inputs here would never split a record otherwise).
    assert!(multidevice::fuzz_record_stream(data), "history record parser invariant broken");

    let mut rng = seeded(u64::try_from(data.len()).unwrap_or(0));
    let media = MediaType::new(HISTORY_MEDIA_TYPE).expect("valid media type");
    let (blob, descriptor) = encrypt_blob(&mut rng, data, media).expect("small blob encrypts");
    let mut records: Vec<Vec<u8>> = Vec::new();
    match import_history(descriptor, Cursor::new(&blob), |r| records.push(r.to_vec())) {
        Ok(count) => {
            assert_eq!(count, u64::try_from(records.len()).unwrap_or(u64::MAX));
            let framed: Vec<u8> = records
                .iter()
                .flat_map(|r| {
                    let len = u32::try_from(r.len()).expect("record length fits a u32");
                    len.to_be_bytes().into_iter().chain(r.iter().copied())
                })
                .collect();
            assert_eq!(framed, data, "imported records do not frame back to the plaintext");
        }
        Err(error) => assert!(
            matches!(error, HistoryError::RecordTooLarge { .. } | HistoryError::TruncatedRecord),
            "unexpected import error {error:?}"
        ),
    }

    let cut: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let mut upload = Vec::new();
    let descriptor = build_history(&mut rng, &cut, &mut upload).expect("history builds");
    let mut back: Vec<Vec<u8>> = Vec::new();
    import_history(descriptor, Cursor::new(&upload), |r| back.push(r.to_vec()))
        .expect("own history imports");
    assert!(back.iter().map(Vec::as_slice).eq(cut.iter().copied()), "history did not round-trip");
}

/// One step of the accounts scenario.
#[derive(Arbitrary, Debug, Clone)]
pub(crate) enum AccountEvent {
    /// The primary links a new companion by QR.
    Link,
    /// The primary removes companion `i`.
    Remove(u8),
    /// The primary re-signs its list.
    Refresh,
    /// The server delivers published list `i` (possibly an old one) to the peer and companions.
    Deliver(u8),
    /// Time moves on by `n` days (at most 20).
    AdvanceDays(u8),
    /// The clock is wound back by `n` days.
    WindBack(u8),
    /// The peer fans a message out to the account; every listed device tries to read it.
    PeerSends,
    /// Companion `i` asks to be logged out.
    Logout(u8),
}

/// Random account histories: lists never roll back at the peer, the peer never holds a device
/// set the primary did not publish, and only active companions read messages.
pub(crate) fn account_events(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let events: Vec<AccountEvent> =
        (0..64).map_while(|_| AccountEvent::arbitrary(&mut u).ok()).collect();
    let mut rng = seeded(0xe7e);
    let fixture = account_fixture();
    let mut primary = restore(&fixture.primary);
    let mut companions = vec![restore(&fixture.companion)];
    let mut peer = restore(&fixture.peer);
    let mut published: Vec<(u64, Vec<DeviceAddress>, Vec<u8>)> = Vec::new();
    let mut now = NOW;
    let mut held_version = peer.device_list(AccountId(1)).map_or(0, |l| l.version());
    for event in events {
        match event {
            AccountEvent::Link => {
                let mut companion = Device::new(&mut rng, address(1, 99), now);
                let mut offer = QrLinkOffer::new(&mut rng, &companion, now);
                if let Ok((mut approval, message)) =
                    QrLinkApproval::approve(&mut primary, &offer.qr_text(), now)
                    && let Ok(confirmation) = offer.accept_approval(&mut companion, &message, now)
                    && let Ok(list) = approval.finish(&mut primary, &confirmation, now)
                {
                    publish(&mut published, &list);
                    companions.push(companion);
                }
            }
            AccountEvent::Remove(i) if !companions.is_empty() => {
                let device = companions[usize::from(i) % companions.len()].address().device;
                if let Ok(list) = primary.remove_companion(device, now) {
                    publish(&mut published, &list);
                }
            }
            AccountEvent::Refresh => {
                if let Ok(list) = primary.refresh_device_list(now) {
                    publish(&mut published, &list);
                }
            }
            AccountEvent::Deliver(i) if !published.is_empty() => {
                let (_, _, bytes) = &published[usize::from(i) % published.len()];
                let _ = peer.process_device_list(bytes, now);
                for companion in &mut companions {
                    let _ = companion.process_device_list(bytes, now);
                }
            }
            AccountEvent::AdvanceDays(n) => now = now.plus_secs(u64::from(n % 21) * DAY_SECS),
            AccountEvent::WindBack(n) => {
                now = Timestamp(now.0.saturating_sub(u64::from(n % 21) * DAY_SECS))
            }
            AccountEvent::PeerSends => {
                let bundles: Vec<_> = companions
                    .iter_mut()
                    .filter_map(|c| {
                        let _ = c.generate_one_time_prekeys(&mut rng, 1);
                        c.prekey_upload()
                            .one_time_prekeys
                            .len()
                            .checked_sub(1)
                            .map(|last| c.prekey_upload().bundle(Some(last)))
                    })
                    .collect();
                if let Ok(fanout) =
                    peer.encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"hello", now)
                {
                    for envelope in &fanout.envelopes {
                        if let Some(companion) =
                            companions.iter_mut().find(|c| c.address() == envelope.recipient)
                        {
                            let status = companion.account_status(now);
                            let result = companion.decrypt_fanout(&envelope.bytes, None, now);
                            if status != AccountStatus::Active {
                                assert!(result.is_err(), "a {status:?} companion read a message");
                            }
                        }
                    }
                }
            }
            AccountEvent::Logout(i) if !companions.is_empty() => {
                let companion = &companions[usize::from(i) % companions.len()];
                if let Ok(request) = companion.logout_request(now)
                    && let Ok(list) = primary.process_logout(&request.to_bytes(), now)
                {
                    publish(&mut published, &list);
                }
            }
            _ => {}
        }
        if let Some(held) = peer.device_list(AccountId(1)) {
            assert!(held.version() >= held_version, "the peer's list rolled back");
            held_version = held.version();
            let devices: Vec<DeviceAddress> = held.devices().iter().map(|d| d.address()).collect();
            if let Some((_, intended, _)) = published.iter().find(|(v, _, _)| *v == held.version())
            {
                assert_eq!(
                    &devices, intended,
                    "the peer holds a device set the primary never published"
                );
            }
        }
    }
}

fn publish(published: &mut Vec<(u64, Vec<DeviceAddress>, Vec<u8>)>, list: &SignedDeviceList) {
    if let Ok(verified) = list.verify() {
        let devices = verified.devices().iter().map(|d| d.address()).collect();
        published.push((list.version(), devices, list.to_bytes()));
    }
}
