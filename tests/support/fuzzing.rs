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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock, PoisonError};

use arbitrary::{Arbitrary, Unstructured};
use multidevice::DecodeError;
use multidevice::consts::{
    DAY_SECS, MAX_COMPANIONS, MAX_MESSAGE_PLAINTEXT, MAX_ONE_TIME_PREKEYS, PRIMARY_INACTIVITY_SECS,
};
use multidevice::hazmat::Ed25519Rejection;
use multidevice::{
    AccountId, AccountStatus, CompanionPairing, Conversation, Device, DeviceAddress, DeviceId,
    DeviceListError, Fingerprint, GroupId, GroupSend, LogoutRequest, MessageKind, PairingCode,
    PrekeyBundle, PrekeyUpload, PrimaryPairing, PublicIdentity, QrLinkApproval, QrLinkOffer,
    ReceiveError, Received, SessionError, SessionMessage, SignedDeviceIdentity, SignedDeviceList,
    Timestamp, VerifiedPrekeyBundle, hazmat,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The time every fuzz target runs at, unless an event moves the clock.
pub(crate) const NOW: Timestamp = Timestamp(1_700_000_000);

/// Offset of the kind byte, after the version and type bytes.
const KIND_OFFSET: usize = 2;
/// Offset of the sender address (12 bytes); the recipient (12) follows.
const SENDER_OFFSET: usize = KIND_OFFSET + 1;
/// Offset of the recipient address.
const RECIPIENT_OFFSET: usize = SENDER_OFFSET + 12;
/// End of the sender (12) and recipient (12) addresses after the version, type and kind bytes.
const ADDRESSES_END: usize = RECIPIENT_OFFSET + 12;
/// Ratchet header: session id (16), ratchet key (32), counter (4), previous counter (4), nonce
/// (12).
const HEADER_LEN: usize = 68;
/// AEAD tag.
const TAG_LEN: usize = 16;
/// Shortest session message: version, type, kind, addresses, ratchet header, tag.
const MIN_MESSAGE_LEN: usize = ADDRESSES_END + HEADER_LEN + TAG_LEN;
/// Shortest prekey fields: identity (128), base key (32), signed prekey id (4), flag (1).
const MIN_PREKEY_FIELDS_LEN: usize = PublicIdentity::LEN + 32 + 4 + 1;
/// The kinds in the order of their wire bytes 0..=5.
const KINDS: [MessageKind; 6] = [
    MessageKind::Raw,
    MessageKind::Direct,
    MessageKind::OwnCopy,
    MessageKind::History,
    MessageKind::SenderKey,
    MessageKind::GroupCopy,
];

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

/// `SessionMessage::try_from`: no panic, and an accepted message has the documented layout: a
/// known kind byte, the addresses where they belong, a prekey message's ratchet key equal to its
/// base key, and a ciphertext between a bare tag and the plaintext limit.
pub(crate) fn session_message(data: &[u8]) {
    let Ok(message) = SessionMessage::try_from(data) else {
        return;
    };
    assert!(data.len() >= MIN_MESSAGE_LEN, "accepted a {}-byte message", data.len());
    assert_eq!(data.first(), Some(&1), "accepted an unknown version");
    let expected_type = if message.is_prekey_message() { 2 } else { 1 };
    assert_eq!(data.get(1), Some(&expected_type));
    let kind = data.get(KIND_OFFSET).copied();
    assert!(matches!(kind, Some(0..=5)), "accepted kind byte {kind:?}");
    assert_eq!(kind.and_then(|k| KINDS.get(usize::from(k))), Some(&message.kind()));
    assert_eq!(address_at(data, SENDER_OFFSET), Some(message.sender()));
    assert_eq!(address_at(data, RECIPIENT_OFFSET), Some(message.recipient()));
    let header = if message.is_prekey_message() {
        assert!(data.len() >= MIN_MESSAGE_LEN + MIN_PREKEY_FIELDS_LEN);
        let flag_at = ADDRESSES_END + MIN_PREKEY_FIELDS_LEN - 1;
        let header = match data.get(flag_at) {
            Some(0) => flag_at + 1,
            Some(1) => flag_at + 1 + 4,
            other => panic!("accepted one-time prekey flag {other:?}"),
        };
        let base_key = ADDRESSES_END + PublicIdentity::LEN;
        assert_eq!(
            data.get(base_key..base_key + 32),
            data.get(header + 16..header + 48),
            "accepted a prekey message whose ratchet key is not its base key"
        );
        header
    } else {
        ADDRESSES_END
    };
    let ciphertext = data.len().saturating_sub(header + HEADER_LEN);
    assert!(
        (TAG_LEN..=MAX_MESSAGE_PLAINTEXT + TAG_LEN).contains(&ciphertext),
        "accepted a {ciphertext}-byte ciphertext"
    );
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
    match hazmat::start_session(&mut device, &mut rng, &verified) {
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

/// Version of the persisted device format this crate reads and writes.
pub(crate) const STATE_FORMAT: u8 = 3;
/// The previous format, which `Device::from_bytes` still imports.
pub(crate) const LEGACY_STATE_FORMAT: u8 = 2;

/// `Device::from_bytes`: only the current format loads, only in its canonical encoding; a loaded
/// device serializes stably and exposes consistent public data.
pub(crate) fn device_state(data: &[u8]) {
    let Ok(device) = Device::from_bytes(data) else {
        return;
    };
    // The format version leads the state as a postcard varint: one byte below 128. The current
    // format loads only in its canonical encoding; the previous one is imported, and re-encodes
    // in the current format.
    let first = device.to_bytes();
    match data.first() {
        Some(&STATE_FORMAT) => assert_eq!(first.as_slice(), data, "loaded a non-canonical state"),
        Some(&LEGACY_STATE_FORMAT) => assert_eq!(first.first(), Some(&STATE_FORMAT)),
        other => panic!("loaded a state of format {other:?}"),
    }
    let reloaded = Device::from_bytes(&first).expect("a device's own bytes load");
    assert_eq!(reloaded.to_bytes(), first, "persisted state is not stable");
    let identity = device.public_identity().to_bytes();
    assert_eq!(
        PublicIdentity::try_from(identity.as_slice()).as_ref(),
        Ok(device.public_identity())
    );
    // A primary always holds its own list, under its own identity (the load checks it).
    if device.account_status(device.clock()) == AccountStatus::Primary {
        let own = device.device_list(device.account()).expect("a primary holds its own list");
        assert_eq!(own.account_identity(), device.public_identity());
    }
    // Every list to fetch is a list held for that account; reading changes nothing.
    for (account, _) in device.lists_to_fetch() {
        let list = device.device_list(account).expect("a list to fetch is a list held");
        assert_eq!(list.account(), account);
    }
    assert_eq!(device.to_bytes(), first, "reading the device changed it");
    // The state's limits are checked on load, so its upload always parses back.
    assert!(device.one_time_prekeys_remaining() <= MAX_ONE_TIME_PREKEYS);
    let upload = device.prekey_upload();
    let bytes = upload.to_bytes();
    assert_eq!(PrekeyUpload::try_from(bytes.as_slice()), Ok(upload));
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
    /// The fingerprint of the sender's identity.
    pub(crate) sender_fingerprint: Fingerprint,
    /// True when it starts a session at the receiver.
    pub(crate) new_session: bool,
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
        hazmat::encrypt(from, rng, to.address(), text).expect("session exists")
    };
    let pending_from = |from: &Device, wire: Vec<u8>, text: &[u8], new_session: bool| Pending {
        to: if from.address() == Side::B.address() { Side::A } else { Side::B },
        from: from.address(),
        wire,
        plaintext: text.to_vec(),
        sender_fingerprint: from.public_identity().fingerprint(),
        new_session,
    };

    hazmat::start_session(&mut a, &mut rng, &fetch_bundle(&b, 0)).expect("genuine bundle");
    let first = send(&mut a, &b, b"first, a prekey message", &mut rng);
    assert!(hazmat::decrypt(&mut b, &first, NOW).expect("genuine").new_session);
    delivered.push(first);
    let reply = send(&mut b, &a, b"reply", &mut rng);
    hazmat::decrypt(&mut a, &reply, NOW).expect("genuine");
    delivered.push(reply);

    // A turns the ratchet and sends three; B receives only the third and keeps two skipped keys.
    let skipped: Vec<(Vec<u8>, &[u8])> = [&b"skipped one"[..], b"skipped two"]
        .into_iter()
        .map(|text| (send(&mut a, &b, text, &mut rng), text))
        .collect();
    let third = send(&mut a, &b, b"third", &mut rng);
    hazmat::decrypt(&mut b, &third, NOW).expect("genuine");
    delivered.push(third);
    for (wire, text) in skipped {
        pending.push(pending_from(&a, wire, text, false));
    }

    // B turns the ratchet; nothing reaches A yet.
    for text in [&b"new chain one"[..], b"new chain two"] {
        let wire = send(&mut b, &a, text, &mut rng);
        pending.push(pending_from(&b, wire, text, false));
    }

    // C starts a session with B using one of B's unused one-time prekeys.
    hazmat::start_session(&mut c, &mut rng, &fetch_bundle(&b, 0)).expect("genuine bundle");
    let text = b"hello from a third device";
    let wire = send(&mut c, &b, text, &mut rng);
    pending.push(pending_from(&c, wire, text, true));

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
/// plaintext, exactly once; any failure leaves the device byte-identical. The authorized front
/// door, [`Device::receive`], takes none of these raw messages and changes nothing.
pub(crate) fn decrypt(data: &[u8]) {
    let target = decrypt_target();
    for side in [Side::A, Side::B] {
        let state = &target.fixture.state[side.index()];
        let mut device = lock(&target.live[side.index()]);
        let pending = target.fixture.pending.iter().find(|p| p.to == side && p.wire == data);
        let refused = device.receive(data, None, NOW);
        assert!(refused.is_err(), "the front door accepted a raw-session input");
        if pending.is_some() {
            assert_eq!(refused.err(), Some(ReceiveError::WrongKind(MessageKind::Raw)));
        }
        assert_eq!(device.to_bytes().as_slice(), state.as_slice(), "changed by receive");
        match hazmat::decrypt(&mut device, data, NOW) {
            Ok(got) => {
                let expected = pending.expect("only a genuine pending message can decrypt");
                assert_eq!(got.plaintext.as_slice(), expected.plaintext.as_slice());
                assert_eq!(got.sender, expected.from);
                assert_eq!(got.sender_fingerprint, expected.sender_fingerprint);
                assert_eq!(got.new_session, expected.new_session);
                let after = device.to_bytes();
                assert!(hazmat::decrypt(&mut device, data, NOW).is_err(), "decrypted twice");
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
    /// The fingerprints of A's and B's identities, which no event changes.
    identities: [Fingerprint; 2],
    stats: Stats,
}

fn two_device_start() -> &'static [Vec<u8>; 2] {
    static START: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    START.get_or_init(|| {
        let mut rng = seeded(0x2DE7);
        let mut a = fresh_device(&mut rng, Side::A.address(), 3);
        let b = fresh_device(&mut rng, Side::B.address(), 3);
        hazmat::start_session(&mut a, &mut rng, &fetch_bundle(&b, 0)).expect("genuine bundle");
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
        let peers = [peer(&start[0]), peer(&start[1])];
        let identities = peers.each_ref().map(|p| p.device.public_identity().fingerprint());
        Self {
            rng: seeded(0x5EED),
            now: NOW,
            peers,
            identities,
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
                match hazmat::start_session(device, rng, &bundle) {
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
                        // Expired ones were forgotten first.
                        let now_held = device.one_time_prekeys_remaining();
                        assert!(now_held >= count && now_held <= had + count);
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
        match hazmat::encrypt(device, rng, from.other().address(), &text) {
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
        // A refused message moves only the clock high-water mark: move it first, so the state
        // after a refusal must be byte-identical to this one.
        raise_clock(&mut peer.device, now);
        let before = peer.device.to_bytes();
        // The front door never takes a raw message, whatever the relay did to it.
        let refused = peer.device.receive(&envelope.bytes, None, now);
        assert!(refused.is_err(), "the front door accepted a raw message");
        if envelope.bytes == sent.wire {
            assert_eq!(refused.err(), Some(ReceiveError::WrongKind(MessageKind::Raw)));
        }
        assert_eq!(peer.device.to_bytes(), before, "changed by receive");
        match hazmat::decrypt(&mut peer.device, &envelope.bytes, now) {
            Ok(got) => {
                self.stats.accepted += 1;
                assert_eq!(to, sent.to, "accepted by a device it was not addressed to");
                assert!(envelope.bytes == sent.wire, "accepted a tampered message");
                assert_eq!(got.plaintext.as_slice(), sent.plaintext.as_slice());
                assert_eq!(got.sender, sent.from.address());
                assert_eq!(got.sender_fingerprint, self.identities[sent.from.index()]);
                assert!(
                    !got.new_session || envelope.bytes.get(1) == Some(&2),
                    "an ordinary message started a session"
                );
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

/// Raises `device`'s clock high-water mark to `now` and nothing else, by handing it an empty
/// message: every call that takes the time moves the mark first, whatever its outcome.
fn raise_clock(device: &mut Device, now: Timestamp) {
    let expected = device.clock().max(now);
    assert!(hazmat::decrypt(device, &[], now).is_err(), "an empty message decrypted");
    assert_eq!(device.clock(), expected, "the clock high-water mark did not move to {now:?}");
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

/// A primary (1:0) with one linked companion, and a peer (2:0) that holds the primary's list;
/// the primary and the companion hold the peer's list, so they accept what the peer sends.
struct AccountFixture {
    primary: Vec<u8>,
    companion: Vec<u8>,
    peer: Vec<u8>,
    list: Vec<u8>,
    /// The peer's own signed list (account 2), for companions linked later.
    peer_list: Vec<u8>,
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
        assert_eq!(companion.account_status(NOW), AccountStatus::Active);
        let mut peer = Device::new(&mut rng, address(2, 0), NOW);
        peer.process_device_list(&list.to_bytes(), NOW).unwrap_or_else(|_| unreachable_fixture());
        let peer_list = peer
            .device_list(AccountId(2))
            .unwrap_or_else(unreachable_fixture)
            .signed_bytes()
            .to_vec();
        for device in [&mut primary, &mut companion] {
            device.process_device_list(&peer_list, NOW).unwrap_or_else(|_| unreachable_fixture());
        }
        AccountFixture {
            primary: primary.to_bytes().to_vec(),
            companion: companion.to_bytes().to_vec(),
            peer: peer.to_bytes().to_vec(),
            list: list.to_bytes(),
            peer_list,
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
/// rejected list leaves the peer unchanged (an identity change only raises its flag), an
/// accepted one is what the peer then holds, never older than before; either way the peer's
/// state still loads.
pub(crate) fn device_list(data: &[u8]) {
    if let Ok(list) = SignedDeviceList::try_from(data) {
        assert_eq!(list.to_bytes(), data, "device list encoding is not canonical");
        let _ = list.verify();
    }
    let fixture = account_fixture();
    let mut peer = restore(&fixture.peer);
    match peer.process_device_list(data, NOW) {
        Ok(update) => {
            assert!(update.list.devices().len() <= 1 + MAX_COMPANIONS);
            let account = update.list.account();
            let held = peer.device_list(account).expect("an accepted list is held");
            assert_eq!(held.digest(), update.list.digest(), "the peer holds another list");
            let before = restore(&fixture.peer);
            if let Some(old) = before.device_list(account) {
                assert!(held.version() >= old.version(), "the list rolled back");
            }
        }
        Err(DeviceListError::IdentityChanged { account }) => {
            // A list of another account under a new identity waits as the pending change.
            if account != peer.account() {
                assert!(peer.identity_change_pending(account));
            }
        }
        Err(_) => assert_eq!(peer.to_bytes().as_slice(), fixture.peer.as_slice()),
    }
    Device::from_bytes(&peer.to_bytes()).expect("the peer's state loads");
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
    let mut offer = QrLinkOffer::new(&mut rng, &mut waiting, NOW);
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

/// A copy of a pairing code (codes are deliberately not `Clone`).
fn copy_code(code: &PairingCode) -> PairingCode {
    let text = std::str::from_utf8(code.as_password_bytes()).expect("codes are ASCII");
    PairingCode::parse(text).expect("a code's canonical form parses")
}

/// Arbitrary bytes as every pairing-code message, to both sides. A refused hello leaves the
/// primary's state unchanged; an answered one changes it only by spending the code; a rejected
/// confirmation leaves it unchanged.
pub(crate) fn pairing_messages(data: &[u8]) {
    let mut rng = seeded(0x9a1);
    let fixture = account_fixture();
    let mut primary = restore(&fixture.primary);
    let mut companion = Device::new(&mut rng, address(1, 97), NOW);
    let code = PairingCode::generate(&mut rng);
    if PrimaryPairing::respond(&mut rng, &mut primary, data, code, NOW).is_err() {
        assert_eq!(primary.to_bytes().as_slice(), fixture.primary.as_slice(), "changed by respond");
    }
    let primary_before = primary.to_bytes();
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut companion, NOW);
    let _ = attempt.handle_response(data, NOW);
    let code = copy_code(attempt.code());
    match PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, NOW) {
        Ok((mut pairing, _)) => {
            let answered = primary.to_bytes();
            if pairing.handle_confirm(&mut primary, data, NOW).is_err() {
                assert_eq!(primary.to_bytes(), answered, "changed by a refused confirmation");
            }
        }
        Err(_) => assert_eq!(primary.to_bytes(), primary_before, "changed by a refused hello"),
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
    assert!(
        multidevice::test_support::fuzz_record_stream(data),
        "history record parser invariant broken"
    );

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
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccountEvent {
    /// The primary links a new companion by QR.
    Link,
    /// The primary removes companion `i`.
    Remove(u8),
    /// The primary re-signs its list.
    Refresh,
    /// The server delivers published list `i % 64` (possibly an old one) to the peer, unless
    /// bit 6 of `i` is set, and to every companion, unless bit 7 is set: it may withhold a list
    /// from either side.
    Deliver(u8),
    /// Time moves on by `n` days (at most 20).
    AdvanceDays(u8),
    /// The clock is wound back by `n` days.
    WindBack(u8),
    /// The peer fans a message out to the account; every device it reached tries to read it.
    PeerSends,
    /// Companion `i` asks to be logged out.
    Logout(u8),
}

/// Decodes an event list the way the `account_events` target does: always 64 events, since
/// `arbitrary` reads an exhausted input as zeros, which decode as [`AccountEvent::Link`].
pub(crate) fn decode_account_events(data: &[u8]) -> Vec<AccountEvent> {
    let mut u = Unstructured::new(data);
    (0..64).map_while(|_| AccountEvent::arbitrary(&mut u).ok()).collect()
}

/// Encodes account events into bytes that [`decode_account_events`] turns back into them, for
/// writing seeds; the same mirror of `arbitrary`'s derive as [`encode_events`].
pub(crate) fn encode_account_events(events: &[AccountEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        let (variant, argument): (u32, Option<u8>) = match *event {
            AccountEvent::Link => (0, None),
            AccountEvent::Remove(i) => (1, Some(i)),
            AccountEvent::Refresh => (2, None),
            AccountEvent::Deliver(i) => (3, Some(i)),
            AccountEvent::AdvanceDays(n) => (4, Some(n)),
            AccountEvent::WindBack(n) => (5, Some(n)),
            AccountEvent::PeerSends => (6, None),
            AccountEvent::Logout(i) => (7, Some(i)),
        };
        let tag = (u64::from(variant) << 32).div_ceil(8);
        out.extend_from_slice(&u32::try_from(tag).unwrap_or(u32::MAX).to_le_bytes());
        out.extend(argument);
    }
    out
}

/// Random account histories: lists never roll back at the peer, the peer never holds a device
/// set the primary did not publish, the peer sends only to devices its held list authorizes,
/// only active companions read messages, and the primary and every active companion read every
/// message sent to them.
pub(crate) fn account_events(data: &[u8]) {
    let events = decode_account_events(data);
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
                // It learns the peer's list at once; it is not linked before a list names it.
                let _ = companion.process_device_list(&fixture.peer_list, now);
                let mut offer = QrLinkOffer::new(&mut rng, &mut companion, now);
                if let Ok((mut approval, message)) =
                    QrLinkApproval::approve(&mut primary, &offer.qr_text(), now)
                    && let Ok(confirmation) = offer.accept_approval(&mut companion, &message, now)
                    && let Ok(list) = approval.finish(&mut primary, &confirmation, now)
                {
                    assert_eq!(companion.account_status(now), AccountStatus::NotLinked);
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
                let (_, _, bytes) = &published[usize::from(i & 0x3f) % published.len()];
                if i & 0x40 == 0 {
                    let _ = peer.process_device_list(bytes, now);
                }
                if i & 0x80 == 0 {
                    for companion in &mut companions {
                        let _ = companion.process_device_list(bytes, now);
                    }
                }
            }
            AccountEvent::AdvanceDays(n) => now = now.plus_secs(u64::from(n % 21) * DAY_SECS),
            AccountEvent::WindBack(n) => {
                now = Timestamp(now.0.saturating_sub(u64::from(n % 21) * DAY_SECS))
            }
            AccountEvent::PeerSends => {
                peer_sends(&mut rng, &mut peer, &mut primary, &mut companions, now)
            }
            AccountEvent::Logout(i) if !companions.is_empty() => {
                let count = companions.len();
                let companion = &mut companions[usize::from(i) % count];
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
        for companion in &companions {
            check_companion_status(companion, now);
        }
    }
}

/// A companion is active only while its account's newest list it holds names it and is at most
/// 14 days old, and removed only when that list does not name it.
fn check_companion_status(companion: &Device, now: Timestamp) {
    let status = companion.account_status(now);
    let clock = now.max(companion.clock());
    let held = companion.device_list(companion.account());
    let names_it = held.is_some_and(|list| {
        list.device(companion.address())
            .is_some_and(|d| d.identity() == companion.public_identity())
    });
    match status {
        AccountStatus::Active => {
            assert!(names_it, "an active companion is not in its list");
            let age = held.map_or(u64::MAX, |list| list.age(clock));
            assert!(age <= PRIMARY_INACTIVITY_SECS, "active on a {age} s old list");
        }
        AccountStatus::Removed => assert!(!names_it, "removed but named by its list"),
        AccountStatus::NotLinked => assert!(!names_it, "not linked but named by its list"),
        AccountStatus::SignedOut => {}
        other => panic!("a companion has status {other:?}"),
    }
}

/// The peer fans "hello" out to account 1, with a fresh bundle for every device of the account.
/// It sends only to devices its held list names, under the identity the list names, and to
/// companions only while that list is current; every listed device gets exactly one envelope
/// or one skip. Every recipient then tries to read its envelope: a companion that is not active
/// is refused (changing nothing), while the primary and every active companion read it.
fn peer_sends(
    rng: &mut StdRng,
    peer: &mut Device,
    primary: &mut Device,
    companions: &mut [Device],
    now: Timestamp,
) {
    let bundles: Vec<_> = std::iter::once(&mut *primary)
        .chain(companions.iter_mut())
        .filter_map(|device| {
            let _ = device.generate_one_time_prekeys(rng, 1);
            let upload = device.prekey_upload();
            let last = upload.one_time_prekeys.len().checked_sub(1)?;
            Some(upload.bundle(Some(last)))
        })
        .collect();
    let Ok(fanout) = peer.encrypt_fanout(rng, &[AccountId(1)], &bundles, b"hello", now) else {
        return;
    };
    assert!(fanout.body.is_none(), "a short payload went into a shared body");
    let held = peer.device_list(AccountId(1)).expect("a fan-out needs the recipient's list");
    let current = !peer.lists_to_fetch().iter().any(|(account, _)| *account == AccountId(1));
    assert_eq!(fanout.lists_needed.contains(&AccountId(1)), !current);
    let listed: BTreeSet<DeviceAddress> = held.devices().iter().map(|d| d.address()).collect();
    let mut covered = BTreeSet::new();
    for envelope in &fanout.envelopes {
        let recipient = envelope.recipient;
        let device = held.device(recipient).unwrap_or_else(|| {
            panic!("the peer sent to {recipient}, which its list does not name")
        });
        assert_eq!(peer.remote_identity(recipient), Some(device.identity()));
        assert!(recipient.device.is_primary() || current, "sent to {recipient} on a stale list");
        let message = SessionMessage::try_from(envelope.bytes.as_slice()).expect("own envelope");
        assert_eq!((message.kind(), message.sender()), (MessageKind::Direct, peer.address()));
        assert_eq!(message.recipient(), recipient);
        assert!(covered.insert(recipient), "two envelopes for {recipient}");
    }
    for (skipped, _) in &fanout.skipped {
        assert!(listed.contains(skipped), "skipped {skipped}, which the list does not name");
        assert!(covered.insert(*skipped), "{skipped} both skipped and sent to, or skipped twice");
    }
    assert_eq!(covered, listed, "a listed device got neither an envelope nor a skip");

    for envelope in &fanout.envelopes {
        let recipient = envelope.recipient;
        if recipient == primary.address() {
            let got = primary.receive(&envelope.bytes, None, now);
            check_received(got, peer.address(), "the primary");
        } else if let Some(companion) = companions.iter_mut().find(|c| c.address() == recipient) {
            let status = companion.account_status(now);
            raise_clock(companion, now);
            let before = companion.to_bytes();
            let got = companion.receive(&envelope.bytes, None, now);
            match status {
                AccountStatus::Active => check_received(got, peer.address(), "an active companion"),
                _ => {
                    let expected = match status {
                        AccountStatus::NotLinked => SessionError::NotLinked,
                        _ => SessionError::SignedOut,
                    };
                    assert_eq!(
                        got.err(),
                        Some(ReceiveError::Session(expected)),
                        "a {status:?} companion read a message"
                    );
                    assert_eq!(companion.to_bytes(), before, "a refused message changed state");
                }
            }
        }
    }
}

/// `got` is the peer's "hello", direct from `sender`.
fn check_received(got: Result<Received, ReceiveError>, sender: DeviceAddress, who: &str) {
    match got {
        Ok(Received::Message(message)) => {
            assert_eq!(message.sender, sender);
            assert_eq!(message.conversation, Conversation::Direct);
            assert_eq!(message.payload.as_slice(), b"hello");
        }
        Ok(other) => panic!("{who} received {other:?} for a fan-out"),
        Err(error) => panic!("{who} could not read a message sent to it: {error:?}"),
    }
}

fn publish(published: &mut Vec<(u64, Vec<DeviceAddress>, Vec<u8>)>, list: &SignedDeviceList) {
    if let Ok(verified) = list.verify() {
        let devices = verified.devices().iter().map(|d| d.address()).collect();
        published.push((list.version(), devices, list.to_bytes()));
    }
}

// ---------------------------------------------------------------------------------------------
// Groups: group messages and sender-key distributions through `Device::receive`, and a
// stateful model of a group over several accounts.
// ---------------------------------------------------------------------------------------------

/// Length of a sender-key distribution's content: group id (16), key id (4), iteration (4),
/// chain key (32), signing public key (32).
pub(crate) const DISTRIBUTION_LEN: usize = 88;

/// A companion linked to `primary` with the direct API at `now`, holding its new list; the
/// list's bytes.
fn link_companion(rng: &mut StdRng, primary: &mut Device, now: Timestamp) -> (Device, Vec<u8>) {
    let mut companion = Device::new(rng, address(primary.account().0, 99), now);
    let approval = primary
        .approve_companion(companion.public_identity(), now)
        .unwrap_or_else(|_| unreachable_fixture());
    let signed =
        companion.countersign_approval(&approval).unwrap_or_else(|_| unreachable_fixture());
    let list = primary.add_companion(&signed, now).unwrap_or_else(|_| unreachable_fixture());
    let bytes = list.to_bytes();
    companion.process_device_list(&bytes, now).unwrap_or_else(|_| unreachable_fixture());
    (companion, bytes)
}

/// The newest list `device` holds for its own account, as signed.
fn own_list(device: &Device) -> Vec<u8> {
    device.device_list(device.account()).unwrap_or_else(unreachable_fixture).signed_bytes().to_vec()
}

/// A bundle without a one-time prekey: always valid, never used up.
fn plain_bundle(device: &Device) -> PrekeyBundle {
    device.prekey_upload().bundle(None)
}

/// The envelope of `send` for `recipient`.
fn distribution_for(send: &GroupSend, recipient: DeviceAddress) -> Vec<u8> {
    send.distribution
        .iter()
        .find(|e| e.recipient == recipient)
        .map(|e| e.bytes.clone())
        .unwrap_or_else(unreachable_fixture)
}

/// What a genuine input of a group target gives when it is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GroupExpect {
    /// A group message.
    Group {
        /// The group.
        group: GroupId,
        /// The sending device.
        sender: DeviceAddress,
        /// The message id it chose.
        message_id: [u8; 16],
        /// The membership digest it stated.
        membership: [u8; 32],
        /// Its own list version.
        list_version: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A sender key.
    SenderKey {
        /// The group.
        group: GroupId,
        /// The device whose key it is.
        sender: DeviceAddress,
    },
}

impl GroupExpect {
    fn message(send: &GroupSend, group: GroupId, sender: &Device, members: &[u64]) -> Self {
        let members: Vec<AccountId> = members.iter().map(|&a| AccountId(a)).collect();
        GroupExpect::Group {
            group,
            sender: sender.address(),
            message_id: send.message_id,
            membership: group.membership_digest(&members),
            list_version: sender.device_list(sender.account()).map_or(0, |l| l.version()),
            payload: Vec::new(),
        }
    }

    fn with_payload(mut self, text: &[u8]) -> Self {
        if let GroupExpect::Group { payload, .. } = &mut self {
            *payload = text.to_vec();
        }
        self
    }

    /// Asserts that `received` is exactly this.
    fn check(&self, received: &Received) {
        match (self, received) {
            (
                GroupExpect::Group { group, sender, message_id, membership, list_version, payload },
                Received::Group(got),
            ) => {
                assert_eq!((got.group, got.sender), (*group, *sender));
                assert_eq!(&got.message_id, message_id);
                assert_eq!(&got.membership_digest, membership);
                assert_eq!(got.sender_list_version, *list_version);
                assert_eq!(got.payload.as_slice(), payload.as_slice());
            }
            (GroupExpect::SenderKey { group, sender }, Received::SenderKey(got)) => {
                assert_eq!((got.group, got.sender), (*group, *sender));
            }
            (expected, got) => panic!("expected {expected:?}, accepted {got:?}"),
        }
    }
}

/// A genuine input the group message fixture has not received yet: it is accepted once.
pub(crate) struct GroupPending {
    /// The bytes.
    pub(crate) wire: Vec<u8>,
    /// What it gives.
    pub(crate) expect: GroupExpect,
}

/// The receiver the `group_message` target attacks, and inputs for seeding its corpus.
pub(crate) struct GroupMessageFixture {
    /// Bob's persisted state.
    pub(crate) receiver: Vec<u8>,
    /// Inputs accepted at that state, once each.
    pub(crate) pending: Vec<GroupPending>,
    /// Inputs Bob already accepted (replays).
    pub(crate) delivered: Vec<Vec<u8>>,
    /// Genuine group messages Bob holds no key for.
    pub(crate) keyless: Vec<Vec<u8>>,
}

/// Alice (1:0, companion 1:1) sends to a group with Bob (2:0) and Carol (3:0). Bob takes key 1's
/// distribution and the third of five messages under it (keeping two skipped keys, two
/// messages ahead); Carol leaves, so Alice's next send rotates to key 2, whose distribution and
/// first message Bob takes, and the two after it wait. Still waiting at Bob: the companion's
/// own key and a second group's key (each a distribution on its pairwise session), whose
/// messages he cannot read yet.
pub(crate) fn build_group_message_fixture() -> GroupMessageFixture {
    let mut rng = seeded(0x6A0);
    let now = NOW;
    let mut a0 = fresh_device(&mut rng, address(1, 0), 0);
    let (mut a1, list_a) = link_companion(&mut rng, &mut a0, now);
    let mut b0 = fresh_device(&mut rng, address(2, 0), 0);
    let c0 = fresh_device(&mut rng, address(3, 0), 0);
    let (list_b, list_c) = (own_list(&b0), own_list(&c0));
    for device in [&mut a0, &mut a1] {
        for list in [&list_b, &list_c] {
            device.process_device_list(list, now).unwrap_or_else(|_| unreachable_fixture());
        }
    }
    b0.process_device_list(&list_a, now).unwrap_or_else(|_| unreachable_fixture());
    let bundles = [plain_bundle(&a1), plain_bundle(&b0), plain_bundle(&c0), plain_bundle(&a0)];
    let members = [AccountId(2), AccountId(3)];
    let group = a0.create_group(&mut rng, &members).unwrap_or_else(|_| unreachable_fixture());
    a1.set_group_members(group, &members).unwrap_or_else(|_| unreachable_fixture());
    let send = |from: &mut Device, group: GroupId, text: &[u8], rng: &mut StdRng| {
        from.encrypt_group(rng, group, &bundles, text, now)
            .unwrap_or_else(|_| unreachable_fixture())
    };
    let mut pending = Vec::new();
    let mut delivered = Vec::new();
    let mut keyless = Vec::new();
    let take = |device: &mut Device, wire: &[u8], delivered: &mut Vec<Vec<u8>>| {
        device.receive(wire, None, now).unwrap_or_else(|_| unreachable_fixture());
        delivered.push(wire.to_vec());
    };

    let texts: [&[u8]; 5] = [b"key 1 #0", b"key 1 #1", b"key 1 #2", b"key 1 #3", b"key 1 #4"];
    let first: Vec<(GroupSend, &[u8])> =
        texts.iter().map(|text| (send(&mut a0, group, text, &mut rng), *text)).collect();
    let bob = b0.address();
    take(&mut b0, &distribution_for(&first[0].0, bob), &mut delivered);
    take(&mut b0, &first[2].0.message, &mut delivered);
    for (i, (sent, text)) in first.iter().enumerate() {
        if i != 2 {
            let expect = GroupExpect::message(sent, group, &a0, &[1, 2, 3]).with_payload(text);
            pending.push(GroupPending { wire: sent.message.clone(), expect });
        }
    }

    a0.set_group_members(group, &[AccountId(2)]).unwrap_or_else(|_| unreachable_fixture());
    let texts: [&[u8]; 3] = [b"key 2 #0", b"key 2 #1", b"key 2 #2"];
    let second: Vec<(GroupSend, &[u8])> =
        texts.iter().map(|text| (send(&mut a0, group, text, &mut rng), *text)).collect();
    assert!(second[0].0.rotated, "Carol's leaving rotates the key");
    take(&mut b0, &distribution_for(&second[0].0, bob), &mut delivered);
    take(&mut b0, &second[0].0.message, &mut delivered);
    for (sent, text) in &second[1..] {
        let expect = GroupExpect::message(sent, group, &a0, &[1, 2]).with_payload(text);
        pending.push(GroupPending { wire: sent.message.clone(), expect });
    }

    let own = send(&mut a1, group, b"from the companion", &mut rng);
    pending.push(GroupPending {
        wire: distribution_for(&own, b0.address()),
        expect: GroupExpect::SenderKey { group, sender: a1.address() },
    });
    keyless.push(own.message);
    let other =
        a0.create_group(&mut rng, &[AccountId(2)]).unwrap_or_else(|_| unreachable_fixture());
    let sent = send(&mut a0, other, b"another group", &mut rng);
    pending.push(GroupPending {
        wire: distribution_for(&sent, b0.address()),
        expect: GroupExpect::SenderKey { group: other, sender: a0.address() },
    });
    keyless.push(sent.message);

    let receiver = b0.to_bytes().to_vec();
    // Every pending input is accepted at the fixture state, to what it is expected to give.
    for input in &pending {
        let mut bob = restore(&receiver);
        let got = bob.receive(&input.wire, None, now).unwrap_or_else(|_| unreachable_fixture());
        input.expect.check(&got);
    }
    GroupMessageFixture { receiver, pending, delivered, keyless }
}

struct GroupMessageTarget {
    fixture: GroupMessageFixture,
    live: Mutex<Device>,
}

fn group_message_target() -> &'static GroupMessageTarget {
    static TARGET: OnceLock<GroupMessageTarget> = OnceLock::new();
    TARGET.get_or_init(|| {
        let fixture = build_group_message_fixture();
        let live = Mutex::new(restore(&fixture.receiver));
        GroupMessageTarget { fixture, live }
    })
}

/// Feeds `data` to a device holding two sender keys of one sending device in a group (and
/// skipped keys of the first): no panic; only a pending genuine input is accepted, to exactly
/// what its sender sent, once; a pending one is never refused; any refusal leaves the state
/// byte-identical.
pub(crate) fn group_message(data: &[u8]) {
    let target = group_message_target();
    let state = target.fixture.receiver.as_slice();
    let mut device = lock(&target.live);
    let pending = target.fixture.pending.iter().find(|p| p.wire == data);
    match device.receive(data, None, NOW) {
        Ok(received) => {
            let expected = pending.expect("only a genuine pending input is accepted");
            assert_eq!(
                received.sender(),
                match &expected.expect {
                    GroupExpect::Group { sender, .. } | GroupExpect::SenderKey { sender, .. } => {
                        *sender
                    }
                }
            );
            expected.expect.check(&received);
            let after = device.to_bytes();
            assert!(device.receive(data, None, NOW).is_err(), "accepted twice");
            assert_eq!(device.to_bytes(), after, "a refused replay changed state");
            *device = restore(state);
        }
        Err(error) => {
            assert!(pending.is_none(), "a genuine pending input was refused: {error:?}");
            assert_eq!(device.to_bytes().as_slice(), state, "changed by {error:?}");
        }
    }
}

/// The sender and receiver the `group_distribution` target puts a distribution between, and
/// what it checks a distribution against.
pub(crate) struct DistributionFixture {
    /// Alice's persisted state: an established session to Bob.
    pub(crate) sender: Vec<u8>,
    /// Bob's persisted state: keys 1 and 2 of Alice's group.
    pub(crate) receiver: Vec<u8>,
    /// Alice's list version and digest, which every `Inner` she sends announces.
    pub(crate) announcement: (u64, [u8; 32]),
    /// The group Bob holds Alice's keys for.
    pub(crate) group: GroupId,
    /// The keys Bob holds: key id and signing public key.
    pub(crate) held: Vec<(u32, [u8; 32])>,
    /// Group messages Bob already read, under both keys.
    pub(crate) delivered: Vec<Vec<u8>>,
    /// A message under key 2 that Bob has not read yet, and its payload.
    pub(crate) pending: (Vec<u8>, Vec<u8>),
    /// The signing seed and public key of a sender key Bob does not hold (Alice's, of a group
    /// of her own), so a message under a distributed key with that public key can be sealed.
    pub(crate) known_signing: ([u8; 32], [u8; 32]),
    /// Distribution contents for seeds: key 1 behind Bob's chain, key 2 ahead of it, and the
    /// key Bob does not hold.
    pub(crate) seeds: Vec<(&'static str, Vec<u8>)>,
}

/// The distribution content of `sender`'s current key for `group`: what a device newly reached
/// would get now.
pub(crate) fn current_distribution(sender: &Device, group: GroupId) -> Vec<u8> {
    let key = multidevice::test_support::group_sender_key(sender, group)
        .unwrap_or_else(unreachable_fixture);
    [
        &group.0[..],
        &key.key_id.to_be_bytes(),
        &key.iteration.to_be_bytes(),
        &key.chain_key[..],
        &key.signing_public,
    ]
    .concat()
}

fn distribution_fixture() -> &'static DistributionFixture {
    static FIXTURE: OnceLock<DistributionFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = seeded(0xD157);
        let now = NOW;
        let mut a0 = fresh_device(&mut rng, address(1, 0), 0);
        let mut b0 = fresh_device(&mut rng, address(2, 0), 0);
        let c0 = fresh_device(&mut rng, address(3, 0), 0);
        for list in [own_list(&b0), own_list(&c0)] {
            a0.process_device_list(&list, now).unwrap_or_else(|_| unreachable_fixture());
        }
        b0.process_device_list(&own_list(&a0), now).unwrap_or_else(|_| unreachable_fixture());
        let bundles = [plain_bundle(&b0), plain_bundle(&c0)];
        let group = a0
            .create_group(&mut rng, &[AccountId(2), AccountId(3)])
            .unwrap_or_else(|_| unreachable_fixture());
        let send = |a0: &mut Device, group: GroupId, text: &[u8], rng: &mut StdRng| {
            a0.encrypt_group(rng, group, &bundles, text, now)
                .unwrap_or_else(|_| unreachable_fixture())
        };
        let read = |b0: &mut Device, wire: &[u8]| {
            b0.receive(wire, None, now).unwrap_or_else(|_| unreachable_fixture());
        };
        let mut delivered = Vec::new();
        let first = send(&mut a0, group, b"key 1 #0", &mut rng);
        let behind = current_distribution(&a0, group);
        let second = send(&mut a0, group, b"key 1 #1", &mut rng);
        let bob = b0.address();
        read(&mut b0, &distribution_for(&first, bob));
        for message in [first.message, second.message] {
            read(&mut b0, &message);
            delivered.push(message);
        }
        a0.set_group_members(group, &[AccountId(2)]).unwrap_or_else(|_| unreachable_fixture());
        let third = send(&mut a0, group, b"key 2 #0", &mut rng);
        assert!(third.rotated);
        read(&mut b0, &distribution_for(&third, bob));
        read(&mut b0, &third.message);
        delivered.push(third.message);
        let payload = b"key 2 #1".to_vec();
        let fourth = send(&mut a0, group, &payload, &mut rng);
        let ahead = current_distribution(&a0, group);
        // Bob answers, so Alice's session to him is confirmed and her next message is an
        // ordinary one.
        let ack = b0
            .encrypt_fanout(&mut rng, &[AccountId(1)], &[], b"ack", now)
            .unwrap_or_else(|_| unreachable_fixture());
        let envelope = ack.envelopes.first().unwrap_or_else(unreachable_fixture);
        a0.receive(&envelope.bytes, None, now).unwrap_or_else(|_| unreachable_fixture());
        // A key Bob never gets.
        let own = a0.create_group(&mut rng, &[]).unwrap_or_else(|_| unreachable_fixture());
        send(&mut a0, own, b"to myself", &mut rng);
        let known = multidevice::test_support::group_sender_key(&a0, own)
            .unwrap_or_else(unreachable_fixture);
        let unheld = current_distribution(&a0, own);
        let held = [&behind, &ahead]
            .iter()
            .map(|d| (u32::from_be_bytes(array(&d[16..20])), array(&d[56..88])))
            .collect();
        let list = a0.device_list(AccountId(1)).unwrap_or_else(unreachable_fixture);
        DistributionFixture {
            sender: a0.to_bytes().to_vec(),
            receiver: b0.to_bytes().to_vec(),
            announcement: (list.version(), list.digest()),
            group,
            held,
            delivered,
            pending: (fourth.message, payload),
            known_signing: (*known.signing_seed, known.signing_public),
            seeds: vec![("key-1-behind", behind), ("key-2-ahead", ahead), ("unheld-key", unheld)],
        }
    })
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().unwrap_or_else(|_| unreachable_fixture())
}

/// Distribution contents for the `group_distribution` seeds.
pub(crate) fn distribution_seeds() -> Vec<(&'static str, Vec<u8>)> {
    distribution_fixture().seeds.clone()
}

/// `data` as the content of a genuine, authorized `SenderKey` message from Alice to Bob. No
/// panic; anything but 88 bytes is refused as content, with Bob's state unchanged; 88 bytes are
/// taken as the key of the group they name. Whatever was taken, no message Bob read decrypts
/// again, a key Bob holds is kept as it is (the message waiting under key 2 still reads unless
/// the distribution replaced key 2's id with another signing key), and a key Bob did not hold
/// is used from exactly the iteration and chain key distributed.
pub(crate) fn group_distribution(data: &[u8]) {
    let fixture = distribution_fixture();
    let mut sender = restore(&fixture.sender);
    let mut receiver = restore(&fixture.receiver);
    let mut rng = seeded(0x5EA1);
    let (version, digest) = fixture.announcement;
    let message_id = [0x5A; 16];
    let inner = [&version.to_be_bytes()[..], &digest, &message_id, data].concat();
    let Ok(envelope) = multidevice::test_support::seal_inner(
        &mut sender,
        &mut rng,
        receiver.address(),
        MessageKind::SenderKey,
        &inner,
        &[],
    ) else {
        assert!(inner.len() > MAX_MESSAGE_PLAINTEXT, "Alice could not seal {} bytes", inner.len());
        return;
    };
    let result = receiver.receive(&envelope, None, NOW);
    if data.len() != DISTRIBUTION_LEN {
        assert!(
            matches!(result, Err(ReceiveError::Content(_))),
            "{} bytes of distribution gave {result:?}",
            data.len()
        );
        assert_eq!(receiver.to_bytes().as_slice(), fixture.receiver.as_slice());
        return;
    }
    let group = GroupId(array(&data[..16]));
    let key_id = u32::from_be_bytes(array(&data[16..20]));
    let iteration = u32::from_be_bytes(array(&data[20..24]));
    let chain_key: [u8; 32] = array(&data[24..56]);
    let signing_public: [u8; 32] = array(&data[56..88]);
    let unusable = matches!(
        hazmat::check_ed25519_strict(&signing_public, b"", &[0; 64]),
        Err(Ed25519Rejection::NonCanonicalKey
            | Ed25519Rejection::KeyNotOnCurve
            | Ed25519Rejection::SmallOrderKey)
    );
    if unusable {
        assert!(
            matches!(result, Err(ReceiveError::Content(DecodeError::InvalidSigningKey))),
            "a signing key no signature verifies under gave {result:?}"
        );
        assert_eq!(receiver.to_bytes().as_slice(), fixture.receiver.as_slice());
        return;
    }
    let held = group == fixture.group && fixture.held.contains(&(key_id, signing_public));
    match result {
        Ok(Received::SenderKey(key)) => {
            assert_eq!((key.group, key.sender), (group, sender.address()));
            assert_eq!(key.taken, !held, "a held key must be ignored, any other taken");
        }
        other => panic!("a well-formed distribution gave {other:?}"),
    }
    for message in &fixture.delivered {
        let again = receiver.receive(message, None, NOW);
        assert!(again.is_err(), "a group message read before decrypted again: {again:?}");
    }
    // A key is replaced by a new one under its key id or with its signing key.
    let replaced_key_2 = fixture.held.get(1).is_some_and(|(id, public)| {
        group == fixture.group && ((key_id == *id) != (signing_public == *public))
    });
    let (message, payload) = &fixture.pending;
    let got = receiver.receive(message, None, NOW);
    if replaced_key_2 {
        assert!(got.is_err(), "read under a replaced key: {got:?}");
    } else {
        match got {
            Ok(Received::Group(got)) => assert_eq!(got.payload.as_slice(), payload.as_slice()),
            other => panic!("the message waiting under key 2 gave {other:?}"),
        }
    }
    let (seed, public) = fixture.known_signing;
    if signing_public == public {
        let parts = multidevice::test_support::GroupMessageParts {
            group,
            sender: sender.address(),
            key_id,
            iteration,
            chain_key,
            signing_seed: seed,
            membership: [7; 32],
            nonce: [9; 12],
            message_id: [5; 16],
            list_version: version,
            list_digest: digest,
            payload: b"under the distributed key",
        };
        if let Some(message) = multidevice::test_support::seal_group_message(&parts) {
            match receiver.receive(&message, None, NOW) {
                Ok(Received::Group(got)) => {
                    assert_eq!(got.payload.as_slice(), b"under the distributed key");
                }
                other => panic!("a message under a distributed key gave {other:?}"),
            }
            assert!(receiver.receive(&message, None, NOW).is_err(), "read twice");
        } else {
            assert_eq!(iteration, u32::MAX);
        }
    }
}

/// Group events are decoded until the input runs out or this many were read.
pub(crate) const MAX_GROUP_EVENTS: usize = 64;
/// Accounts in the group model: 1 (primary and a companion), 2 (the same), 3 (a primary).
const GROUP_ACCOUNTS: u64 = 3;
/// Companions an account may have in the model.
const GROUP_MAX_COMPANIONS: usize = 2;

/// One step of the group model. Indices pick modulo their count.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupEvent {
    /// Device `from` (any device ever made, removed ones included) sends `len` filler bytes to
    /// the group: its distribution envelopes go to the relay, and its group message to every
    /// other device.
    Send {
        /// Which device.
        from: u8,
        /// Filler length.
        len: u8,
    },
    /// The relay delivers an in-flight envelope.
    Deliver {
        /// Which one.
        index: u8,
    },
    /// The relay drops an in-flight envelope.
    Drop {
        /// Which one.
        index: u8,
    },
    /// The relay queues a second copy of an in-flight envelope.
    Duplicate {
        /// Which one.
        index: u8,
    },
    /// The relay swaps two in-flight envelopes.
    Reorder {
        /// First position.
        first: u8,
        /// Second position.
        second: u8,
    },
    /// An account's primary removes one of its companions; every device gets the list.
    RemoveCompanion {
        /// Which account.
        account: u8,
        /// Which companion.
        which: u8,
    },
    /// An account leaves the group: every device of the remaining members sets the new
    /// membership (the leaving account's devices keep their old view).
    RemoveMember {
        /// Which account.
        account: u8,
    },
    /// An account joins the group: every device of every member sets the new membership.
    AddMember {
        /// Which account.
        account: u8,
    },
    /// An account's primary links a new companion (while it has fewer than two); every device
    /// gets the list.
    Link {
        /// Which account.
        account: u8,
    },
    /// An account's primary re-signs its list; every device gets it.
    Refresh {
        /// Which account.
        account: u8,
    },
    /// Time moves on by `days % 21` days.
    AdvanceDays {
        /// Days.
        days: u8,
    },
    /// A device restarts from its persisted state.
    Restart {
        /// Which device.
        device: u8,
    },
}

const GROUP_EVENT_VARIANTS: u32 = 12;

impl GroupEvent {
    fn variant(&self) -> u32 {
        match self {
            GroupEvent::Send { .. } => 0,
            GroupEvent::Deliver { .. } => 1,
            GroupEvent::Drop { .. } => 2,
            GroupEvent::Duplicate { .. } => 3,
            GroupEvent::Reorder { .. } => 4,
            GroupEvent::RemoveCompanion { .. } => 5,
            GroupEvent::RemoveMember { .. } => 6,
            GroupEvent::AddMember { .. } => 7,
            GroupEvent::Link { .. } => 8,
            GroupEvent::Refresh { .. } => 9,
            GroupEvent::AdvanceDays { .. } => 10,
            GroupEvent::Restart { .. } => 11,
        }
    }
}

/// Decodes a group model input: whether account 3 starts as a member, then the events.
pub(crate) fn decode_group_events(data: &[u8]) -> (bool, Vec<GroupEvent>) {
    let mut input = Unstructured::new(data);
    let three = bool::arbitrary(&mut input).unwrap_or(false);
    let mut events = Vec::new();
    while !input.is_empty() && events.len() < MAX_GROUP_EVENTS {
        match GroupEvent::arbitrary(&mut input) {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
    }
    (three, events)
}

/// Encodes a group model input that [`decode_group_events`] turns back into `three` and
/// `events`, for writing seeds; the same mirror of `arbitrary`'s derive as [`encode_events`].
pub(crate) fn encode_group_events(three: bool, events: &[GroupEvent]) -> Vec<u8> {
    let mut out = vec![u8::from(three)];
    for event in events {
        let tag = (u64::from(event.variant()) << 32).div_ceil(u64::from(GROUP_EVENT_VARIANTS));
        out.extend_from_slice(&u32::try_from(tag).unwrap_or(u32::MAX).to_le_bytes());
        match *event {
            GroupEvent::Send { from: a, len: b }
            | GroupEvent::Reorder { first: a, second: b }
            | GroupEvent::RemoveCompanion { account: a, which: b } => {
                out.extend_from_slice(&[a, b])
            }
            GroupEvent::Deliver { index: a }
            | GroupEvent::Drop { index: a }
            | GroupEvent::Duplicate { index: a }
            | GroupEvent::RemoveMember { account: a }
            | GroupEvent::AddMember { account: a }
            | GroupEvent::Link { account: a }
            | GroupEvent::Refresh { account: a }
            | GroupEvent::AdvanceDays { days: a }
            | GroupEvent::Restart { device: a } => out.push(a),
        }
    }
    out
}

/// The starting world of the group model, persisted: every device introduced to every
/// account, and a group made on 1:0.
struct GroupStart {
    /// Every device's state: 1:0, 1:1, 2:0, 2:1, 3:0.
    devices: Vec<Vec<u8>>,
    /// Every account's newest list.
    lists: Vec<(AccountId, Vec<u8>)>,
    group: GroupId,
}

fn group_start() -> &'static GroupStart {
    static START: OnceLock<GroupStart> = OnceLock::new();
    START.get_or_init(|| {
        let mut rng = seeded(0x6E7);
        let now = NOW;
        let mut devices = Vec::new();
        let mut lists = Vec::new();
        for account in 1..=GROUP_ACCOUNTS {
            let mut primary = fresh_device(&mut rng, address(account, 0), 0);
            if account < GROUP_ACCOUNTS {
                let (companion, list) = link_companion(&mut rng, &mut primary, now);
                devices.push(primary);
                devices.push(companion);
                lists.push((AccountId(account), list));
            } else {
                lists.push((AccountId(account), own_list(&primary)));
                devices.push(primary);
            }
        }
        for device in &mut devices {
            for (account, list) in &lists {
                if *account != device.account() {
                    device.process_device_list(list, now).unwrap_or_else(|_| unreachable_fixture());
                }
            }
        }
        let group = devices
            .first_mut()
            .unwrap_or_else(unreachable_fixture)
            .create_group(&mut rng, &[])
            .unwrap_or_else(|_| unreachable_fixture());
        GroupStart {
            devices: devices.iter().map(|d| d.to_bytes().to_vec()).collect(),
            lists,
            group,
        }
    })
}

/// A device of the group model and what its state lineage accepted.
struct GroupDevice {
    device: Device,
    /// Group messages (indices into `GroupWorld::sent`) this lineage decrypted.
    read: BTreeSet<usize>,
}

/// A group message as sent.
struct GroupSent {
    sender: DeviceAddress,
    message_id: [u8; 16],
    payload: Vec<u8>,
    /// Every device (address and identity) the sender reached when it sent: only these may
    /// ever read it.
    reach: BTreeSet<(DeviceAddress, [u8; 32])>,
}

/// An envelope on the relay: a distribution (pairwise) or a group message.
#[derive(Clone)]
struct GroupEnvelope {
    /// Index into `GroupWorld::devices`.
    to: usize,
    /// Index into `GroupWorld::sent`.
    sent: usize,
    distribution: bool,
    bytes: Vec<u8>,
}

/// What a group run did, for choosing seeds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupStats {
    /// Events run.
    pub(crate) events: usize,
    /// Group messages sent.
    pub(crate) sent: usize,
    /// Sends that rotated the key.
    pub(crate) rotated: usize,
    /// Distributions taken.
    pub(crate) keys: usize,
    /// Group messages decrypted.
    pub(crate) read: usize,
    /// Envelopes refused.
    pub(crate) refused: usize,
    /// Group messages refused by a device outside their reach.
    pub(crate) kept_out: usize,
}

struct GroupWorld {
    rng: StdRng,
    now: Timestamp,
    group: GroupId,
    /// The accounts in the group, as the app knows it.
    members: BTreeSet<AccountId>,
    devices: Vec<GroupDevice>,
    lists: BTreeMap<AccountId, Vec<u8>>,
    in_flight: Vec<GroupEnvelope>,
    sent: Vec<GroupSent>,
    stats: GroupStats,
}

/// The devices `sender` reaches in `group` now, by the lists it holds: every device of every
/// member account its newest list names (never the sender itself), companions only while that
/// list is current, none of an account with a pending identity change.
fn group_reach(sender: &Device, group: GroupId) -> BTreeSet<(DeviceAddress, [u8; 32])> {
    let mut reach = BTreeSet::new();
    let Some(members) = sender.group_members(group) else {
        return reach;
    };
    let stale: BTreeSet<AccountId> = sender.lists_to_fetch().into_iter().map(|(a, _)| a).collect();
    for &account in members {
        let Some(list) = sender.device_list(account) else { continue };
        if sender.identity_change_pending(account) {
            continue;
        }
        for device in list.devices() {
            let address = device.address();
            if address != sender.address()
                && (address.device.is_primary() || !stale.contains(&account))
            {
                reach.insert((address, *device.identity().fingerprint().as_bytes()));
            }
        }
    }
    reach
}

impl GroupWorld {
    fn new(three: bool) -> Self {
        let start = group_start();
        let devices = start
            .devices
            .iter()
            .map(|bytes| GroupDevice { device: restore(bytes), read: BTreeSet::new() })
            .collect();
        let members: BTreeSet<AccountId> = (1..=if three { 3 } else { 2 }).map(AccountId).collect();
        let mut world = Self {
            rng: seeded(0x6E70),
            now: NOW,
            group: start.group,
            members,
            devices,
            lists: start.lists.iter().cloned().collect(),
            in_flight: Vec::new(),
            sent: Vec::new(),
            stats: GroupStats::default(),
        };
        world.apply_membership(None);
        world
    }

    /// Every device of a member account (and of `joining`) sets the membership.
    fn apply_membership(&mut self, joining: Option<AccountId>) {
        let members: Vec<AccountId> = self.members.iter().copied().collect();
        for entry in &mut self.devices {
            let account = entry.device.account();
            if self.members.contains(&account) || joining == Some(account) {
                entry
                    .device
                    .set_group_members(self.group, &members)
                    .expect("at most three members");
            }
        }
    }

    /// Every device processes `list`, which the server now serves for its account.
    fn publish(&mut self, list: &[u8], account: AccountId) {
        self.lists.insert(account, list.to_vec());
        for entry in &mut self.devices {
            let _ = entry.device.process_device_list(list, self.now);
        }
    }

    fn account(&self, index: u8) -> AccountId {
        AccountId(u64::from(index) % GROUP_ACCOUNTS + 1)
    }

    fn primary_index(&self, account: AccountId) -> usize {
        self.devices
            .iter()
            .position(|d| d.device.address() == DeviceAddress::new(account, DeviceId::PRIMARY))
            .expect("every account has its primary")
    }

    /// The companions `account`'s primary lists now.
    fn listed_companions(&self, account: AccountId) -> Vec<DeviceId> {
        let primary = &self.devices[self.primary_index(account)].device;
        primary.device_list(account).map_or_else(Vec::new, |list| {
            list.devices().iter().map(|d| d.address().device).filter(|d| !d.is_primary()).collect()
        })
    }

    fn run(&mut self, event: &GroupEvent) {
        self.stats.events += 1;
        let now = self.now;
        match *event {
            GroupEvent::Send { from, len } => {
                if let Some(i) = pick(self.devices.len(), from) {
                    self.send(i, len);
                }
            }
            GroupEvent::Deliver { index } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    let envelope = self.in_flight.remove(i);
                    self.deliver(&envelope);
                }
            }
            GroupEvent::Drop { index } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    self.in_flight.remove(i);
                }
            }
            GroupEvent::Duplicate { index } => {
                if let Some(i) = pick(self.in_flight.len(), index) {
                    let copy = self.in_flight[i].clone();
                    self.in_flight.push(copy);
                }
            }
            GroupEvent::Reorder { first, second } => {
                let len = self.in_flight.len();
                if let (Some(i), Some(j)) = (pick(len, first), pick(len, second)) {
                    self.in_flight.swap(i, j);
                }
            }
            GroupEvent::RemoveCompanion { account, which } => {
                let account = self.account(account);
                let companions = self.listed_companions(account);
                if let Some(i) = pick(companions.len(), which) {
                    let primary = self.primary_index(account);
                    if let Ok(list) =
                        self.devices[primary].device.remove_companion(companions[i], now)
                    {
                        self.publish(&list.to_bytes(), account);
                    }
                }
            }
            GroupEvent::RemoveMember { account } => {
                let account = self.account(account);
                if self.members.len() > 1 && self.members.remove(&account) {
                    self.apply_membership(None);
                }
            }
            GroupEvent::AddMember { account } => {
                let account = self.account(account);
                if self.members.insert(account) {
                    self.apply_membership(Some(account));
                }
            }
            GroupEvent::Link { account } => {
                let account = self.account(account);
                if self.listed_companions(account).len() < GROUP_MAX_COMPANIONS {
                    self.link(account);
                }
            }
            GroupEvent::Refresh { account } => {
                let account = self.account(account);
                let primary = self.primary_index(account);
                if let Ok(list) = self.devices[primary].device.refresh_device_list(now) {
                    self.publish(&list.to_bytes(), account);
                }
            }
            GroupEvent::AdvanceDays { days } => {
                self.now = self.now.plus_secs(u64::from(days % 21) * DAY_SECS);
            }
            GroupEvent::Restart { device } => {
                if let Some(i) = pick(self.devices.len(), device) {
                    let device = &mut self.devices[i].device;
                    let bytes = device.to_bytes();
                    *device = Device::from_bytes(&bytes).expect("a device's own bytes load");
                    assert_eq!(device.to_bytes(), bytes, "restarting changed the state");
                }
            }
        }
    }

    fn link(&mut self, account: AccountId) {
        let now = self.now;
        let primary = self.primary_index(account);
        let mut companion = Device::new(&mut self.rng, address(account.0, 99), now);
        let Ok(approval) =
            self.devices[primary].device.approve_companion(companion.public_identity(), now)
        else {
            return;
        };
        let Ok(signed) = companion.countersign_approval(&approval) else { return };
        let Ok(list) = self.devices[primary].device.add_companion(&signed, now) else { return };
        for (other, bytes) in &self.lists {
            if *other != account {
                let _ = companion.process_device_list(bytes, now);
            }
        }
        self.devices.push(GroupDevice { device: companion, read: BTreeSet::new() });
        self.publish(&list.to_bytes(), account);
        if self.members.contains(&account) {
            self.apply_membership(None);
        }
    }

    fn send(&mut self, from: usize, len: u8) {
        let id = self.sent.len();
        let payload = plaintext(id, len);
        let now = self.now;
        let bundles: Vec<PrekeyBundle> =
            self.devices.iter().map(|d| plain_bundle(&d.device)).collect();
        let group = self.group;
        let sender = &mut self.devices[from].device;
        raise_clock(sender, now);
        let reach = group_reach(sender, group);
        let before = sender.to_bytes();
        let send = match sender.encrypt_group(&mut self.rng, group, &bundles, &payload, now) {
            Ok(send) => send,
            Err(error) => {
                assert_eq!(sender.to_bytes(), before, "a refused send changed state: {error:?}");
                return;
            }
        };
        let address = sender.address();
        self.stats.sent += 1;
        self.stats.rotated += usize::from(send.rotated);
        let mut covered = BTreeSet::new();
        for envelope in &send.distribution {
            let recipient = envelope.recipient;
            assert!(covered.insert(recipient), "two distributions for {recipient}");
            let identity = reach
                .iter()
                .find(|(a, _)| *a == recipient)
                .map(|(_, f)| *f)
                .unwrap_or_else(|| panic!("a distribution for {recipient}, outside the reach"));
            let to = self
                .devices
                .iter()
                .position(|d| {
                    d.device.address() == recipient
                        && d.device.public_identity().fingerprint().as_bytes() == &identity
                })
                .expect("every reached device is in the model");
            self.in_flight.push(GroupEnvelope {
                to,
                sent: id,
                distribution: true,
                bytes: envelope.bytes.clone(),
            });
        }
        for to in (0..self.devices.len()).filter(|&i| i != from) {
            self.in_flight.push(GroupEnvelope {
                to,
                sent: id,
                distribution: false,
                bytes: send.message.clone(),
            });
        }
        self.sent.push(GroupSent { sender: address, message_id: send.message_id, payload, reach });
    }

    fn deliver(&mut self, envelope: &GroupEnvelope) {
        let now = self.now;
        let sent = &self.sent[envelope.sent];
        let entry = &mut self.devices[envelope.to];
        let device = &mut entry.device;
        raise_clock(device, now);
        let before = device.to_bytes();
        let me = (device.address(), *device.public_identity().fingerprint().as_bytes());
        match device.receive(&envelope.bytes, None, now) {
            Ok(Received::SenderKey(key)) => {
                assert!(envelope.distribution, "a group message was taken as a sender key");
                assert_eq!((key.group, key.sender), (self.group, sent.sender));
                self.stats.keys += 1;
            }
            Ok(Received::Group(message)) => {
                assert!(!envelope.distribution, "a distribution was taken as a group message");
                assert_eq!((message.group, message.sender), (self.group, sent.sender));
                assert_eq!(message.message_id, sent.message_id);
                assert_eq!(message.payload.as_slice(), sent.payload.as_slice());
                assert!(
                    sent.reach.contains(&me),
                    "{} read message {} from {}, which did not reach it",
                    me.0,
                    envelope.sent,
                    sent.sender
                );
                assert!(entry.read.insert(envelope.sent), "message {} read twice", envelope.sent);
                self.stats.read += 1;
            }
            Ok(other) => panic!("a group envelope gave {other:?}"),
            Err(error) => {
                self.stats.refused += 1;
                if !envelope.distribution && !sent.reach.contains(&me) {
                    self.stats.kept_out += 1;
                }
                assert_eq!(device.to_bytes(), before, "changed by {error:?}");
            }
        }
    }
}

/// Runs a group model input and reports what happened.
pub(crate) fn run_group_events(data: &[u8]) -> GroupStats {
    let (three, events) = decode_group_events(data);
    let mut world = GroupWorld::new(three);
    for event in &events {
        world.run(event);
    }
    world.stats
}

/// The stateful group target: sends from any device, a relay that delivers, drops, duplicates
/// and reorders distributions and group messages, companions linked and removed, accounts
/// leaving and joining, lists re-signed, days passing, restarts. No device outside a message's
/// reach when it was sent (its sender's members' listed devices, companions only on a current
/// list) ever reads it; every read is exactly what the stated sender sent; nothing is read twice
/// on one state lineage; a refused envelope changes nothing but the clock mark.
pub(crate) fn group_events(data: &[u8]) {
    run_group_events(data);
}
