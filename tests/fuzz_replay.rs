//! Replays the cargo-fuzz corpora on stable: every seed and saved regression under `fuzz/` goes
//! through the same target functions libFuzzer runs, followed by deterministic pseudo-random and
//! mutated inputs. `generate_fuzz_corpus` (ignored) writes the seeds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/fuzzing.rs"]
mod fuzzing;
#[path = "support/sim/mod.rs"]
mod sim;

use std::path::{Path, PathBuf};

use fuzzing::{Event, GroupEvent, Side};
use multidevice::{Device, PrekeyBundle};
use rand::rngs::StdRng;
use rand::{Rng, RngExt};

/// A fuzz target body.
type Target = fn(&[u8]);

/// Every fuzz target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory.
const TARGETS: &[(&str, Target)] = &[
    ("session_message", fuzzing::session_message),
    ("prekey_bundle", fuzzing::prekey_bundle),
    ("prekey_upload", fuzzing::prekey_upload),
    ("public_identity", fuzzing::public_identity),
    ("device_state", fuzzing::device_state),
    ("decrypt", fuzzing::decrypt),
    ("two_devices", fuzzing::two_devices),
    ("device_list", fuzzing::device_list),
    ("signed_device_identity", fuzzing::signed_device_identity),
    ("logout_request", fuzzing::logout_request),
    ("qr_text", fuzzing::qr_text),
    ("link_messages", fuzzing::link_messages),
    ("pairing_messages", fuzzing::pairing_messages),
    ("blob_descriptor", fuzzing::blob_descriptor),
    ("blob_chunks", fuzzing::blob_chunks),
    ("history_records", fuzzing::history_records),
    ("account_events", fuzzing::account_events),
    ("group_message", fuzzing::group_message),
    ("group_distribution", fuzzing::group_distribution),
    ("group_events", fuzzing::group_events),
    ("simulation", sim::fuzz),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted by name; none if it does not exist.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && !is_hidden(path))
        .collect();
    paths.sort();
    paths.into_iter().map(|path| (path.clone(), std::fs::read(&path).unwrap())).collect()
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with('.'))
}

fn target(name: &str) -> Target {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).unwrap()
}

/// Replays the corpus and regressions of `name`, then `random` pseudo-random inputs and as many
/// mutations of corpus entries.
fn replay(name: &str, random: usize, max_len: usize) {
    let run = target(name);
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(!corpus.is_empty(), "no seed corpus for {name}");
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    for (path, data) in corpus.iter().chain(&regressions) {
        eprintln!("replaying {}", path.display());
        run(data);
    }
    let seed = name.bytes().fold(0x42, |h: u64, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut rng: StdRng = fuzzing::seeded(seed);
    for _ in 0..random {
        let mut data = vec![0u8; rng.random_range(0..=max_len)];
        rng.fill_bytes(&mut data);
        run(&data);
    }
    for _ in 0..random {
        let (_, seed) = &corpus[rng.random_range(0..corpus.len())];
        run(&mutate(&mut rng, seed));
    }
}

/// A few random edits of `seed`: bit flips, byte overwrites, truncation, insertion.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        match rng.random_range(0..4) {
            0 if len > 0 => data[rng.random_range(0..len)] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => data[rng.random_range(0..len)] = rng.random(),
            2 if len > 0 => data.truncate(rng.random_range(0..len)),
            _ => data.insert(rng.random_range(0..=len), rng.random()),
        }
    }
    data
}

#[test]
fn replay_session_message() {
    replay("session_message", 300, 600);
}

#[test]
fn replay_prekey_bundle() {
    replay("prekey_bundle", 300, 400);
}

#[test]
fn replay_prekey_upload() {
    replay("prekey_upload", 300, 600);
}

#[test]
fn replay_public_identity() {
    replay("public_identity", 300, 200);
}

#[test]
fn replay_device_state() {
    replay("device_state", 300, 3000);
}

#[test]
fn replay_decrypt() {
    replay("decrypt", 300, 600);
}

#[test]
fn replay_two_devices() {
    replay("two_devices", 200, 600);
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (name, _) in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(path.is_file(), "missing {}", path.display());
    }
}

fn every_event() -> Vec<Event> {
    use Side::{A, B};
    vec![
        Event::Send { from: A, len: 0 },
        Event::Send { from: B, len: 255 },
        Event::Deliver { index: 7 },
        Event::Drop { index: 1 },
        Event::Duplicate { index: 2 },
        Event::Reorder { first: 3, second: 200 },
        Event::Tamper { index: 4, byte: 0xBEEF, bit: 9 },
        Event::Replay { index: 5 },
        Event::Misroute { index: 6 },
        Event::Snapshot { which: A },
        Event::Restore { which: B },
        Event::Reload { which: A },
        Event::NewSession { from: B, one_time: 0xFF },
        Event::Replenish { which: A, count: 3 },
        Event::RotateSignedPrekey { which: B },
        Event::AdvanceClock { hours: 0xFFFF },
    ]
}

/// The seed writer mirrors `arbitrary`'s encoding; if the derive or the event list changes, the
/// checked-in `two_devices` seeds would silently decode to something else.
#[test]
fn event_encoding_round_trips() {
    let events = every_event();
    assert_eq!(fuzzing::decode_events(&fuzzing::encode_events(&events)), events);
    for event in &events {
        let one = std::slice::from_ref(event);
        assert_eq!(fuzzing::decode_events(&fuzzing::encode_events(one)), one);
    }
}

/// Hand-written event scripts: each one exercises one behaviour of the two-device model.
fn scripts() -> Vec<(&'static str, Vec<Event>)> {
    use Event::*;
    use Side::{A, B};
    let send = |from, len| Send { from, len };
    let deliver = |index| Deliver { index };
    let mut ping_pong = Vec::new();
    for round in 0..6u8 {
        let from = if round % 2 == 0 { A } else { B };
        ping_pong.extend([send(from, round * 10), send(from, 3), deliver(0), deliver(0)]);
    }
    vec![
        ("ping-pong", ping_pong),
        (
            "loss-reorder-duplicates",
            vec![
                send(A, 1),
                deliver(0),
                send(B, 2),
                deliver(0),
                send(A, 3),
                send(A, 4),
                send(A, 5),
                send(A, 6),
                Reorder { first: 0, second: 3 },
                Drop { index: 1 },
                Duplicate { index: 0 },
                deliver(0),
                deliver(0),
                deliver(0),
                deliver(0),
                send(B, 7),
                send(B, 8),
                deliver(1),
                deliver(0),
            ],
        ),
        (
            "snapshot-restore-receiver",
            vec![
                send(A, 1),
                deliver(0),
                Snapshot { which: B },
                send(A, 2),
                send(A, 3),
                Duplicate { index: 0 },
                deliver(0),
                Restore { which: B },
                deliver(0),
                deliver(0),
                Replay { index: 1 },
                send(B, 4),
                deliver(0),
            ],
        ),
        (
            "snapshot-restore-sender",
            vec![
                send(A, 1),
                deliver(0),
                send(B, 2),
                deliver(0),
                Snapshot { which: A },
                send(A, 3),
                deliver(0),
                Restore { which: A },
                send(A, 4),
                deliver(0),
                send(A, 5),
                deliver(0),
                Reload { which: A },
                send(B, 6),
                deliver(0),
            ],
        ),
        (
            "simultaneous-initiation",
            vec![
                NewSession { from: B, one_time: 0 },
                send(A, 1),
                send(B, 2),
                deliver(0),
                deliver(0),
                send(A, 3),
                send(B, 4),
                deliver(1),
                deliver(0),
                send(A, 5),
                deliver(0),
            ],
        ),
        (
            "tamper-replay-misroute",
            vec![
                send(A, 40),
                Misroute { index: 0 },
                Duplicate { index: 0 },
                Tamper { index: 1, byte: 0, bit: 0 },
                Tamper { index: 0, byte: 150, bit: 3 },
                deliver(0),
                deliver(0),
                send(A, 2),
                Tamper { index: 0, byte: 60, bit: 7 },
                deliver(0),
                send(A, 3),
                deliver(0),
                Replay { index: 0 },
                Replay { index: 2 },
            ],
        ),
        (
            "prekeys-rotation-clock",
            vec![
                NewSession { from: A, one_time: 0 },
                NewSession { from: A, one_time: 0 },
                send(A, 1),
                RotateSignedPrekey { which: B },
                AdvanceClock { hours: 24 * 31 },
                deliver(0),
                NewSession { from: A, one_time: 0xFF },
                send(A, 2),
                deliver(0),
                Replenish { which: B, count: 7 },
                NewSession { from: A, one_time: 5 },
                send(A, 3),
                deliver(0),
                NewSession { from: B, one_time: 0 },
                send(B, 4),
                deliver(0),
            ],
        ),
    ]
}

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

/// Writes the seed corpora under `fuzz/corpus/`. Deterministic; run with
/// `cargo test --test fuzz_replay -- --ignored generate_fuzz_corpus`.
#[test]
#[ignore = "writes the checked-in seed corpus"]
fn generate_fuzz_corpus() {
    let fixture = fuzzing::build_decrypt_fixture();
    let [a_state, b_state] = &fixture.state;
    let a = Device::from_bytes(a_state).unwrap();
    let b = Device::from_bytes(b_state).unwrap();

    // Session messages: prekey and ordinary, delivered and pending.
    for (i, wire) in fixture.delivered.iter().enumerate() {
        write_seed("session_message", &format!("delivered-{i}"), wire);
        write_seed("decrypt", &format!("replayed-{i}"), wire);
    }
    for (i, pending) in fixture.pending.iter().enumerate() {
        write_seed("session_message", &format!("pending-{i}"), &pending.wire);
        write_seed("decrypt", &format!("pending-{i}"), &pending.wire);
    }
    let mut tampered = fixture.pending[0].wire.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    write_seed("decrypt", "tampered-tag", &tampered);

    // Bundles and uploads.
    let upload = b.prekey_upload();
    write_seed("prekey_upload", "one-time-prekeys", &upload.to_bytes());
    write_seed("prekey_upload", "no-one-time-prekeys", &a.prekey_upload().to_bytes());
    write_seed("prekey_bundle", "with-one-time-prekey", &upload.bundle(Some(0)).to_bytes());
    write_seed("prekey_bundle", "without-one-time-prekey", &upload.bundle(None).to_bytes());
    let mut low_order = upload.bundle(Some(0));
    if let Some(otk) = low_order.one_time_prekey.as_mut() {
        otk.public = [0; 32];
    }
    assert!(PrekeyBundle::try_from(low_order.to_bytes().as_slice()).unwrap().verify().is_ok());
    write_seed("prekey_bundle", "low-order-one-time-prekey", &low_order.to_bytes());

    // Identities and device states.
    write_seed("public_identity", "a", &a.public_identity().to_bytes());
    write_seed("public_identity", "b", &b.public_identity().to_bytes());
    write_seed("device_state", "a-established", a_state);
    write_seed("device_state", "b-skipped-keys", b_state);
    let mut rng = fuzzing::seeded(7);
    let fresh = Device::new(&mut rng, fuzzing::address(5, 2), fuzzing::NOW);
    write_seed("device_state", "fresh", &fresh.to_bytes());

    // Event scripts for the stateful target; each must do what it is named for.
    for (name, events) in scripts() {
        let bytes = fuzzing::encode_events(&events);
        assert_eq!(fuzzing::decode_events(&bytes), events, "{name} does not round-trip");
        let stats = fuzzing::run_two_devices(&bytes);
        assert!(stats.accepted > 0 && stats.events == events.len(), "{name}: {stats:?}");
        write_seed("two_devices", name, &bytes);
    }
}

#[test]
fn replay_device_list() {
    replay("device_list", 200, 1800);
}

#[test]
fn replay_signed_device_identity() {
    replay("signed_device_identity", 200, 400);
}

#[test]
fn replay_logout_request() {
    replay("logout_request", 200, 200);
}

#[test]
fn replay_qr_text() {
    replay("qr_text", 200, 400);
}

#[test]
fn replay_link_messages() {
    replay("link_messages", 100, 500);
}

#[test]
fn replay_pairing_messages() {
    replay("pairing_messages", 60, 300);
}

#[test]
fn replay_blob_descriptor() {
    replay("blob_descriptor", 300, 200);
}

#[test]
fn replay_blob_chunks() {
    replay("blob_chunks", 100, 2000);
}

#[test]
fn replay_history_records() {
    replay("history_records", 200, 2000);
}

#[test]
fn replay_account_events() {
    replay("account_events", 60, 128);
}

/// Writes the seed corpora of the account, linking and blob targets. Deterministic; run with
/// `cargo test --test fuzz_replay -- --ignored generate_account_corpus`.
#[test]
#[ignore = "writes the checked-in seed corpus"]
fn generate_account_corpus() {
    use multidevice::blob::{MediaType, encrypt_blob};
    use multidevice::{CompanionPairing, PairingCode, PrimaryPairing, QrLinkApproval, QrLinkOffer};

    let list = fuzzing::seed_device_list();
    write_seed("device_list", "one-companion", &list);
    let mut flipped = list.clone();
    flipped[40] ^= 1;
    write_seed("device_list", "flipped-identity", &flipped);
    let signed_identity_start = list.len() - 282;
    write_seed("signed_device_identity", "genuine", &list[signed_identity_start..]);

    let mut rng = fuzzing::seeded(11);
    let mut primary = Device::new(&mut rng, fuzzing::address(1, 0), fuzzing::NOW);
    primary.refresh_device_list(fuzzing::NOW).unwrap();
    let mut companion = Device::new(&mut rng, fuzzing::address(1, 99), fuzzing::NOW);
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, fuzzing::NOW);
    write_seed("qr_text", "genuine", offer.qr_text().as_bytes());
    write_seed("qr_text", "wrong-prefix", b"MULTIDEVICE://LINK/2/AAAA");
    let (mut approval, message) =
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), fuzzing::NOW).unwrap();
    write_seed("link_messages", "approval-for-another-offer", &message);
    let confirmation = offer.accept_approval(&mut companion, &message, fuzzing::NOW).unwrap();
    write_seed("link_messages", "confirmation-for-another-offer", &confirmation);
    approval.finish(&mut primary, &confirmation, fuzzing::NOW).unwrap();
    write_seed(
        "logout_request",
        "genuine",
        &companion.logout_request(fuzzing::NOW).unwrap().to_bytes(),
    );

    let mut tablet = Device::new(&mut rng, fuzzing::address(1, 98), fuzzing::NOW);
    let (attempt, hello) = CompanionPairing::start(&mut rng, &mut tablet, fuzzing::NOW);
    write_seed("pairing_messages", "hello", &hello);
    let code = PairingCode::parse(std::str::from_utf8(attempt.code().as_password_bytes()).unwrap())
        .unwrap();
    let (_pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, fuzzing::NOW).unwrap();
    write_seed("pairing_messages", "response", &response);

    let (blob, descriptor) =
        encrypt_blob(&mut rng, b"a small photo", MediaType::new("image/png").unwrap()).unwrap();
    write_seed("blob_descriptor", "genuine", &descriptor.to_bytes());
    write_seed("blob_chunks", "small-blob", &blob);
    write_seed("blob_chunks", "plaintext", &[7u8; 300]);
    // Blobs under the key the target decrypts its input with, so that their mutations get past
    // the key commitment into the chunk decoder.
    use multidevice::blob::{CHUNK_SIZE, HEADER_LEN};
    use multidevice::test_support::fuzz_seed_blob;
    let one_chunk = fuzz_seed_blob(b"a small photo");
    write_seed("blob_chunks", "fuzz-key-empty", &fuzz_seed_blob(b""));
    write_seed("blob_chunks", "fuzz-key-one-chunk", &one_chunk);
    write_seed("blob_chunks", "fuzz-key-two-chunks", &fuzz_seed_blob(&[0x5a; CHUNK_SIZE + 100]));
    write_seed("blob_chunks", "fuzz-key-truncated", &one_chunk[..one_chunk.len() - 5]);
    write_seed("blob_chunks", "fuzz-key-trailing", &[&one_chunk[..], b"more"].concat());
    write_seed("blob_chunks", "fuzz-key-header-only", &one_chunk[..HEADER_LEN]);
    let mut version_1 = one_chunk[..12].to_vec();
    version_1[0] = 1;
    version_1.extend_from_slice(&one_chunk[HEADER_LEN..]);
    write_seed("blob_chunks", "version-1-blob", &version_1);
    write_seed("history_records", "framed", &[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0, 0, 0, 0, 1, 7]);
    write_seed("history_records", "cut-at-zeros", b"chat one\0chat two\0\0last");
    write_seed("history_records", "truncated", &[0, 0, 1, 0, 1, 2, 3]);
    write_seed("history_records", "oversized", &[0xff, 0xff, 0xff, 0xff, 1]);

    write_seed("account_events", "link-remove-deliver", &[0, 2, 3, 0, 1, 0, 3, 1, 6, 4, 14, 6]);
    write_seed("account_events", "days-pass", &[0, 3, 0, 4, 13, 4, 2, 6, 5, 9, 6, 7, 0]);
    for (name, events) in withheld_list_scripts() {
        let bytes = fuzzing::encode_account_events(&events);
        let decoded = fuzzing::decode_account_events(&bytes);
        // Past the input's end, every event decodes as `Link`.
        assert_eq!(decoded[..events.len()], events, "{name} does not round-trip");
        assert!(decoded[events.len()..].iter().all(|e| *e == fuzzing::AccountEvent::Link));
        write_seed("account_events", name, &bytes);
    }
}

/// Account histories in which the server withholds a list from one side, so the peer sends to
/// a companion that is not active (bit 7 of `Deliver`: not to the companions; bit 6: not to
/// the peer).
fn withheld_list_scripts() -> Vec<(&'static str, Vec<fuzzing::AccountEvent>)> {
    use fuzzing::AccountEvent::*;
    vec![
        // The peer gets a fresh list, the companion stays on one over 14 days old: signed out.
        ("withheld-signed-out", vec![AdvanceDays(15), Refresh, Deliver(0x80), PeerSends]),
        // A new companion is named in the peer's list before it has one: not linked; then it
        // gets the list and reads the next message on the same session.
        ("withheld-not-linked", vec![Link, Deliver(0x80), PeerSends, Deliver(0x40), PeerSends]),
        // The companion learns it was removed; the peer does not yet.
        ("withheld-removed", vec![Remove(0), Deliver(0x40), PeerSends]),
    ]
}

#[test]
fn replay_group_message() {
    replay("group_message", 200, 400);
}

#[test]
fn replay_group_distribution() {
    replay("group_distribution", 200, 120);
}

#[test]
fn replay_group_events() {
    replay("group_events", 40, 120);
}

fn every_group_event() -> Vec<GroupEvent> {
    vec![
        GroupEvent::Send { from: 3, len: 255 },
        GroupEvent::Deliver { index: 7 },
        GroupEvent::Drop { index: 1 },
        GroupEvent::Duplicate { index: 2 },
        GroupEvent::Reorder { first: 3, second: 200 },
        GroupEvent::RemoveCompanion { account: 4, which: 9 },
        GroupEvent::RemoveMember { account: 2 },
        GroupEvent::AddMember { account: 0xFF },
        GroupEvent::Link { account: 1 },
        GroupEvent::Refresh { account: 0 },
        GroupEvent::AdvanceDays { days: 20 },
        GroupEvent::Restart { device: 6 },
    ]
}

/// The group seed writer mirrors `arbitrary`'s encoding, as [`event_encoding_round_trips`]
/// checks for the two-device events.
#[test]
fn group_event_encoding_round_trips() {
    let events = every_group_event();
    for three in [false, true] {
        let decoded = fuzzing::decode_group_events(&fuzzing::encode_group_events(three, &events));
        assert_eq!(decoded, (three, events.clone()));
    }
    for event in &events {
        let one = vec![event.clone()];
        assert_eq!(fuzzing::decode_group_events(&fuzzing::encode_group_events(true, &one)).1, one);
    }
}

/// Hand-written group histories: each exercises one behaviour of the group model. Devices:
/// 0 = 1:0, 1 = 1:1, 2 = 2:0, 3 = 2:1, 4 = 3:0, then companions as linked; accounts 0, 1, 2 =
/// accounts 1, 2, 3. Returns (name, account 3 a member, events, whether a device outside a
/// message's reach must have been kept out).
fn group_scripts() -> Vec<(&'static str, bool, Vec<GroupEvent>, bool)> {
    use GroupEvent::*;
    let all = |n: usize| vec![Deliver { index: 0 }; n];
    let send = |from, len| Send { from, len };
    let script = |parts: Vec<Vec<GroupEvent>>| parts.concat();
    vec![
        ("first-send", false, script(vec![vec![send(0, 4)], all(10)]), false),
        (
            "removed-companion-kept-out",
            false,
            script(vec![
                vec![send(0, 1)],
                all(8),
                vec![RemoveCompanion { account: 1, which: 0 }, send(0, 2)],
                all(8),
            ]),
            true,
        ),
        (
            "member-leaves-and-rejoins",
            true,
            script(vec![
                vec![send(2, 1)],
                all(10),
                vec![RemoveMember { account: 2 }, send(2, 2)],
                all(10),
                vec![AddMember { account: 2 }, send(2, 3)],
                all(10),
            ]),
            true,
        ),
        (
            "companion-linked-then-sends",
            true,
            script(vec![
                vec![send(1, 0)],
                all(8),
                vec![Link { account: 1 }, send(1, 5), send(5, 6)],
                all(24),
            ]),
            false,
        ),
        (
            "lists-go-stale",
            false,
            script(vec![
                vec![send(0, 1)],
                all(8),
                vec![AdvanceDays { days: 15 }, send(0, 2)],
                all(8),
                vec![Refresh { account: 1 }, Refresh { account: 0 }, send(0, 3)],
                all(8),
            ]),
            true,
        ),
        (
            "relay-and-restarts",
            true,
            script(vec![
                vec![send(0, 1), send(3, 2), send(4, 3)],
                vec![Duplicate { index: 0 }, Reorder { first: 0, second: 9 }, Drop { index: 5 }],
                vec![
                    Restart { device: 2 },
                    Duplicate { index: 12 },
                    Reorder { first: 1, second: 20 },
                ],
                all(40),
                vec![Restart { device: 3 }, send(2, 4)],
                all(10),
            ]),
            false,
        ),
    ]
}

/// Writes the seed corpora of the group targets. Deterministic; run with
/// `cargo test --test fuzz_replay -- --ignored generate_group_corpus`.
#[test]
#[ignore = "writes the checked-in seed corpus"]
fn generate_group_corpus() {
    let fixture = fuzzing::build_group_message_fixture();
    for (i, pending) in fixture.pending.iter().enumerate() {
        write_seed("group_message", &format!("pending-{i}"), &pending.wire);
    }
    for (i, wire) in fixture.delivered.iter().enumerate() {
        write_seed("group_message", &format!("delivered-{i}"), wire);
    }
    for (i, wire) in fixture.keyless.iter().enumerate() {
        write_seed("group_message", &format!("no-key-{i}"), wire);
    }
    let message = &fixture.pending[0].wire;
    let mut tampered = message.clone();
    *tampered.last_mut().unwrap() ^= 1;
    write_seed("group_message", "tampered-signature", &tampered);
    let mut moved = message.clone();
    moved[2] ^= 0x80;
    write_seed("group_message", "other-group", &moved);
    write_seed("group_message", "header-only", &message[..2 + 16 + 12 + 4 + 4 + 32 + 12]);
    write_seed("group_message", "empty", &[]);

    for (name, content) in fuzzing::distribution_seeds() {
        write_seed("group_distribution", name, &content);
    }
    let seeds = fuzzing::distribution_seeds();
    let unheld = &seeds.iter().find(|(n, _)| *n == "unheld-key").unwrap().1;
    let ahead = &seeds.iter().find(|(n, _)| *n == "key-2-ahead").unwrap().1;
    let mut last = unheld.clone();
    last[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    write_seed("group_distribution", "unheld-key-last-iteration", &last);
    let mut replaced = ahead.clone();
    replaced[56..88].copy_from_slice(&unheld[56..88]);
    write_seed("group_distribution", "key-2-id-other-signing-key", &replaced);
    write_seed("group_distribution", "zeros", &[0u8; fuzzing::DISTRIBUTION_LEN]);
    write_seed("group_distribution", "one-short", &unheld[..fuzzing::DISTRIBUTION_LEN - 1]);
    write_seed("group_distribution", "one-long", &[&unheld[..], &[0]].concat());
    write_seed("group_distribution", "empty", &[]);

    for (name, three, events, kept_out) in group_scripts() {
        let bytes = fuzzing::encode_group_events(three, &events);
        assert_eq!(fuzzing::decode_group_events(&bytes), (three, events.clone()), "{name}");
        let stats = fuzzing::run_group_events(&bytes);
        eprintln!("{name}: {stats:?}");
        assert!(stats.read > 0 && stats.events == events.len(), "{name}: {stats:?}");
        assert!(!kept_out || stats.kept_out > 0, "{name} kept nobody out: {stats:?}");
        write_seed("group_events", name, &bytes);
    }
}

#[test]
fn replay_simulation() {
    replay("simulation", 4, sim::script::HEADER_LEN + 40 * sim::script::EVENT_LEN);
}

/// Seeds of the simulation corpus: inputs the seeded runner draws, picked so that between them
/// they link, remove, crash at every point, restore from backups, take a primary offline and
/// answer retries (`tests/simulation.rs` runs the same inputs by seed number).
const SIMULATION_SEEDS: [u64; 8] = [3, 4, 5, 11, 17, 23, 42, 97];

/// Seeds on which the simulation found a bug in the crate, kept as regressions (each also has a
/// scenario test of its own in `tests/simulation.rs`).
const SIMULATION_REGRESSIONS: [u64; 5] = [59, 81, 531, 1928, 3960];

/// Writes the seed corpus and the regressions of the simulation target. Deterministic; run with
/// `cargo test --test fuzz_replay -- --ignored generate_simulation_corpus`.
#[test]
#[ignore = "writes the checked-in seed corpus"]
fn generate_simulation_corpus() {
    let mut total = sim::Stats::default();
    for seed in SIMULATION_SEEDS {
        let input = sim::seed_input(seed, 60);
        sim::fuzz(&input);
        let options = sim::Options { sqlite: false, bounds_every_step: false, trace: false };
        total.add(&sim::run(&input, &options));
        write_seed("simulation", &format!("seed-{seed}"), &input);
    }
    for seed in SIMULATION_REGRESSIONS {
        let input = sim::seed_input(seed, 60);
        sim::fuzz(&input);
        let dir = fuzz_dir().join("regressions").join("simulation");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{seed}")), input).unwrap();
    }
    eprintln!("{total}");
    assert!(total.retries_answered > 0 && total.restores > 0 && total.crashes > 0);
    assert!(total.links > 0 && total.removals > 0 && total.primary_offline > 0);
}
