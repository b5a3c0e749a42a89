//! Two OS processes on one SQLite file, and a process killed at random points: the test binary
//! runs itself again as the child (`child_process`, which returns at once unless
//! `MULTIDEVICE_STORE_CHILD` names a role). Alice's primary lives in the file; Bob's primary is
//! an in-memory device in the parent, so every envelope Alice's processes produce is checked by
//! a receiver without a de-duplication layer: a reused message key is a refused envelope.
//!
//! The two-process test uses the default durability (`Synchronous::Full`). The kill test uses
//! `Synchronous::Normal`: it kills processes, never the OS, and a process crash cannot undo a
//! WAL commit at either level, while `Full`'s fsync per commit cut the operations a child gets
//! through before its kill about five-fold here (fewer points of the transactions hit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/faults.rs"]
mod faults;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faults::StoreFailure;
use multidevice::store::{SqliteOptions, SqliteStore, StoreError, StoreKey, Synchronous};
use multidevice::{AccountId, Device, ReceiveError, Received, StoredDevice, Timestamp};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use support::world::{Server, account, envelope_for, introduce, read};
use support::{T0, rng};

const ALICE: AccountId = AccountId(1);
const BOB: AccountId = AccountId(2);
/// Names the child's role; unset in a normal test run.
const CHILD_ENV: &str = "MULTIDEVICE_STORE_CHILD";
/// The line a looping child prints once its device is open.
const READY: &str = "multidevice-child-ready";

fn key() -> StoreKey {
    StoreKey::from_bytes(&[0x24; 32])
}

/// The file's options: a long busy timeout, and `synchronous` as the module docs say.
fn options(synchronous: Synchronous) -> SqliteOptions {
    SqliteOptions::default()
        .with_busy_timeout(Duration::from_secs(30))
        .with_synchronous(synchronous)
}

fn open(path: &Path, synchronous: Synchronous, rng: &mut StdRng) -> StoredDevice<SqliteStore> {
    let store = SqliteStore::open(path, &options(synchronous)).unwrap();
    StoredDevice::open(store, &key(), rng).unwrap()
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("multidevice-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// The number inside a `Debug`-printed id such as `OutboxId(12)`.
fn id_number(debug: &str) -> u64 {
    debug.trim_start_matches(|c: char| !c.is_ascii_digit()).trim_end_matches(')').parse().unwrap()
}

/// Retries `op` while the store is busy, every 300 µs; counts the retries.
fn unless_busy<T, E: StoreFailure>(
    busy: &mut u64,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    loop {
        match op() {
            Err(error) if error.store_error() == Some(StoreError::Busy) => {
                *busy += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            other => return other,
        }
    }
}

/// Alice's primary in a new SQLite file, with an established session to Bob's primary, and
/// Bob's primary in memory with `count` messages to Alice encrypted ahead, written one hex
/// envelope a line to `bob.txt`.
fn setup(dir: &TempDir, seed: u64, count: usize) -> (PathBuf, Device) {
    let mut r = rng(seed);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, ALICE.0, 0, T0);
    let mut bob = account(&mut r, &mut server, BOB.0, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let (a, b) = (alice.devices[0].address(), bob.devices[0].address());
    let bundles = server.bundles(&[ALICE, BOB]);
    let hello = alice.devices[0].encrypt_fanout(&mut r, &[BOB], &bundles, b"hello", T0).unwrap();
    read(&mut bob.devices[0], &envelope_for(&hello, b).unwrap(), T0).unwrap();
    let reply = bob.devices[0].encrypt_fanout(&mut r, &[ALICE], &[], b"hi", T0).unwrap();
    read(&mut alice.devices[0], &envelope_for(&reply, a).unwrap(), T0).unwrap();

    let path = dir.file("alice.db");
    let store = SqliteStore::open(&path, &options(Synchronous::Full)).unwrap();
    StoredDevice::import(store, &key(), &mut r, &alice.devices[0].to_bytes()).unwrap();
    let mut bob = bob.devices.remove(0);
    let mut lines = String::new();
    for i in 0..count {
        let payload = format!("bob {i}");
        let sent = bob.encrypt_fanout(&mut r, &[ALICE], &[], payload.as_bytes(), T0).unwrap();
        lines.push_str(&hex(&envelope_for(&sent, a).unwrap()));
        lines.push('\n');
    }
    std::fs::write(dir.file("bob.txt"), lines).unwrap();
    (path, bob)
}

fn bob_envelopes(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_to_string(dir.join("bob.txt")).unwrap().lines().map(unhex).collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child: {name} unset"))
}

fn child_command(role: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_process", "--nocapture", "--test-threads=1", "--quiet"])
        .env(CHILD_ENV, role);
    command
}

/// Not a test of its own: the body of the child processes the tests below start. Returns at
/// once unless `MULTIDEVICE_STORE_CHILD` is set.
#[test]
fn child_process() {
    let Ok(role) = std::env::var(CHILD_ENV) else { return };
    match role.as_str() {
        "interleave" => interleave_child(),
        "loop" => loop_child(),
        other => panic!("unknown child role {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Two processes, 1,000 interleaved operations
// ---------------------------------------------------------------------------------------------

/// Operations per child process.
const OPS_PER_CHILD: usize = 500;
/// Bob's messages; each child receives every one of them, so each is received twice.
const BOB_MESSAGES: usize = OPS_PER_CHILD / 2;

/// One child: `OPS_PER_CHILD` operations in a seeded order, half sends to Bob, half receives of
/// every one of Bob's messages (nearly in order, as the other child does); writes what it
/// produced and what each receive returned to `out-<index>.txt`.
fn interleave_child() {
    let dir = PathBuf::from(env("MD_DIR"));
    let index: usize = env("MD_INDEX").parse().unwrap();
    let seed: u64 = env("MD_SEED").parse().unwrap();
    let mut r = StdRng::seed_from_u64(seed ^ ((index as u64 + 1) * 0x9e37_79b9));
    // No busy timeout: the child retries `Busy` itself, every 300 µs. SQLite's own busy
    // handler sleeps at growing intervals (up to 100 ms) and a process waiting in it rarely
    // wins the lock from one that begins its next transaction right after a commit: with a
    // 30 s timeout, one child ran nearly all its operations before the other got a turn.
    let options = options(Synchronous::Full).with_busy_timeout(Duration::ZERO);
    let mut busy = 0;
    // Opening migrates the schema in a write transaction: it can be busy too.
    let store = unless_busy(&mut busy, || SqliteStore::open(dir.join("alice.db"), &options));
    let mut device = StoredDevice::open(store.unwrap(), &key(), &mut r).unwrap();
    let bob = bob_envelopes(&dir);
    assert_eq!(bob.len(), BOB_MESSAGES);
    // The receive order: Bob's messages in order, some neighbours swapped.
    let mut order: Vec<usize> = (0..BOB_MESSAGES).collect();
    for i in 1..order.len() {
        if r.random_range(0..4) == 0 {
            order.swap(i - 1, i);
        }
    }
    let mut ops: Vec<bool> = (0..OPS_PER_CHILD).map(|i| i < BOB_MESSAGES).collect();
    for i in (1..ops.len()).rev() {
        ops.swap(i, r.random_range(0..=i));
    }
    let mut receives = order.into_iter();
    let mut out = String::new();
    for (n, receive) in ops.into_iter().enumerate() {
        // An app does other things between calls.
        std::thread::sleep(Duration::from_micros(r.random_range(0..2_000)));
        let now = Timestamp(T0.0 + 1_000 + n as u64);
        if receive {
            let i = receives.next().unwrap();
            match unless_busy(&mut busy, || device.receive(&bob[i], None, now)) {
                Ok(inbound) => {
                    let Received::Message(message) = &inbound.received else { panic!() };
                    assert_eq!(message.payload.as_slice(), format!("bob {i}").as_bytes());
                    out.push_str(&format!("recv {i} ok {:?}\n", inbound.id));
                    if r.random_range(0..2) == 0 {
                        unless_busy(&mut busy, || device.acknowledge(inbound.id)).unwrap();
                    }
                }
                Err(ReceiveError::AlreadyReceived) => out.push_str(&format!("recv {i} already\n")),
                Err(error) => panic!("child {index}: receive {i}: {error:?}"),
            }
        } else {
            let payload = format!("alice:{index}:{n}");
            let sent = unless_busy(&mut busy, || {
                device.encrypt_fanout(&mut r, &[BOB], &[], payload.as_bytes(), now)
            })
            .unwrap_or_else(|e| panic!("child {index}: send {n}: {e:?}"));
            assert_eq!(sent.envelopes.len(), 1);
            let id = sent.outbox.unwrap();
            out.push_str(&format!("send {id:?} {payload} {}\n", hex(&sent.envelopes[0].bytes)));
            // Most are marked sent; the rest stay in the outbox for the parent.
            if r.random_range(0..5) != 0 {
                unless_busy(&mut busy, || device.mark_sent(id)).unwrap();
            }
        }
    }
    out.push_str(&format!("busy {busy}\n"));
    std::fs::write(dir.join(format!("out-{index}.txt")), out).unwrap();
}

/// Two processes open Alice's primary from one file and run 1,000 operations between them.
/// Every one of Bob's messages is decrypted exactly once across both (the other process gets
/// the same inbox entry or `AlreadyReceived`), every send gets its own outbox item, and Bob
/// decrypts every envelope Alice's processes produced exactly once, in outbox order.
#[test]
fn two_processes_on_one_file_lose_nothing_and_reuse_no_key() {
    let seed = std::env::var("MULTIDEVICE_PROCESS_SEED").map_or(11, |s| s.parse().unwrap());
    let fail = |what: String| -> ! {
        panic!(
            "{what}\n    replay: MULTIDEVICE_PROCESS_SEED={seed} cargo test --test store_processes two_processes"
        )
    };
    let dir = TempDir::new("two-processes");
    let started = Instant::now();
    let (path, mut bob) = setup(&dir, seed, BOB_MESSAGES);
    let children: Vec<_> = (0..2)
        .map(|index| {
            child_command("interleave")
                .env("MD_DIR", &dir.0)
                .env("MD_INDEX", index.to_string())
                .env("MD_SEED", seed.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (index, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        if !output.status.success() {
            fail(format!(
                "child {index} failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let children_took = started.elapsed();

    // What the children reported.
    let mut decrypted: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut already = 0;
    let mut sends: BTreeMap<u64, (String, Vec<u8>)> = BTreeMap::new();
    let mut busy = 0u64;
    for index in 0..2 {
        let out = std::fs::read_to_string(dir.file(&format!("out-{index}.txt"))).unwrap();
        for line in out.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["recv", i, "ok", id] => {
                    decrypted.entry(i.parse().unwrap()).or_default().insert((*id).to_owned());
                }
                ["recv", _, "already"] => already += 1,
                ["send", id, payload, envelope] => {
                    let previous =
                        sends.insert(id_number(id), ((*payload).to_owned(), unhex(envelope)));
                    if previous.is_some() {
                        fail(format!("two sends committed as outbox item {id}: an update lost"));
                    }
                }
                ["busy", n] => busy += n.parse::<u64>().unwrap(),
                _ => fail(format!("child {index} wrote {line:?}")),
            }
        }
    }
    assert_eq!(sends.len(), 2 * (OPS_PER_CHILD - BOB_MESSAGES));
    // The processes really took turns: in commit order, the sender changes often.
    let senders: Vec<&str> = sends.values().map(|(p, _)| p.split(':').nth(1).unwrap()).collect();
    let turns = senders.windows(2).filter(|w| w[0] != w[1]).count();
    if turns < 20 {
        fail(format!("the processes did not interleave ({turns} turns): nothing was tested"));
    }

    // Each of Bob's messages: one inbox entry, whoever got it; none lost.
    let mut entries = BTreeSet::new();
    for i in 0..BOB_MESSAGES {
        match decrypted.get(&i).map(BTreeSet::len) {
            Some(1) => {}
            None => fail(format!("Bob's message {i} was decrypted by neither process")),
            Some(n) => fail(format!("Bob's message {i} was decrypted {n} times")),
        }
        let entry = decrypted[&i].iter().next().unwrap().clone();
        if !entries.insert(entry.clone()) {
            fail(format!("two of Bob's messages share the inbox entry {entry}"));
        }
    }
    let mut alice = open(&path, Synchronous::Full, &mut rng(seed + 100));
    for inbound in alice.inbox().unwrap() {
        let Received::Message(message) = &inbound.received else { panic!() };
        let payload = String::from_utf8(message.payload.to_vec()).unwrap();
        let i: usize = payload.strip_prefix("bob ").unwrap().parse().unwrap();
        if !decrypted[&i].contains(&format!("{:?}", inbound.id)) {
            fail(format!("the inbox holds {payload} under an entry no process returned"));
        }
        alice.acknowledge(inbound.id).unwrap();
    }

    // Alice's sends: what stayed in the outbox was reported, byte for byte.
    for item in alice.outbox().unwrap() {
        let id = id_number(&format!("{:?}", item.id));
        match sends.get(&id) {
            Some((_, envelope))
                if item.envelopes.len() == 1 && item.envelopes[0].bytes == *envelope => {}
            _ => fail(format!("outbox item {id} differs from what its process reported")),
        }
        alice.mark_sent(item.id).unwrap();
    }
    // Bob decrypts each exactly once, in commit order: a reused chain position is refused.
    for (id, (payload, envelope)) in &sends {
        match read(&mut bob, envelope, T0) {
            Ok(got) if got == payload.as_bytes() => {}
            Ok(got) => {
                fail(format!("outbox item {id}: Bob read {:?}", String::from_utf8_lossy(&got)))
            }
            Err(error) => fail(format!(
                "outbox item {id} ({payload}): Bob refused it: {error:?} (a message key reused?)"
            )),
        }
    }
    // The device goes on.
    let now = Timestamp(T0.0 + 10_000);
    let sent = alice.encrypt_fanout(&mut rng(seed + 1), &[BOB], &[], b"after", now).unwrap();
    assert_eq!(read(&mut bob, &sent.envelopes[0].bytes, now).unwrap(), b"after");
    eprintln!(
        "two processes: {} operations in {children_took:?}; {} sends ({turns} turns between the \
         processes), {BOB_MESSAGES} messages received twice ({already} AlreadyReceived), {busy} \
         busy retries",
        2 * OPS_PER_CHILD,
        sends.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A child killed at random points
// ---------------------------------------------------------------------------------------------

/// Kill runs.
const KILL_RUNS: usize = 120;
/// Bob's messages available to the looping child over all runs.
const KILL_BOB_MESSAGES: usize = 1_500;

/// The looping child: sends to Bob and receives Bob's messages from `MD_START` on, in a
/// seeded mix, until killed. It posts each send to the network file (one line, appended)
/// before marking it sent, and leaves received messages in the inbox for the parent.
fn loop_child() {
    let dir = PathBuf::from(env("MD_DIR"));
    let start: usize = env("MD_START").parse().unwrap();
    let run: u64 = env("MD_RUN").parse().unwrap();
    let seed: u64 = env("MD_SEED").parse().unwrap();
    let mut r = StdRng::seed_from_u64(seed ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut device = open(&dir.join("alice.db"), Synchronous::Normal, &mut r);
    let bob = bob_envelopes(&dir);
    let mut network = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("network.txt"))
        .unwrap();
    println!("{READY}");
    std::io::stdout().flush().unwrap();
    let mut next = start;
    let mut busy = 0;
    for n in 0..100_000u64 {
        let now = Timestamp(T0.0 + 100_000 + run * 1_000 + n);
        if next < bob.len() && r.random_range(0..2) == 0 {
            match unless_busy(&mut busy, || device.receive(&bob[next], None, now)) {
                // The first of a run may be the last of the previous one, acknowledged since.
                Ok(_) | Err(ReceiveError::AlreadyReceived) => next += 1,
                Err(error) => panic!("CHILD-ERROR run {run}: receive {next}: {error:?}"),
            }
        } else {
            let payload = format!("alice:{run}:{n}");
            let sent = unless_busy(&mut busy, || {
                device.encrypt_fanout(&mut r, &[BOB], &[], payload.as_bytes(), now)
            })
            .unwrap_or_else(|e| panic!("CHILD-ERROR run {run}: send {n}: {e:?}"));
            let id = sent.outbox.unwrap();
            let line = format!("{id:?} {payload} {}\n", hex(&sent.envelopes[0].bytes));
            network.write_all(line.as_bytes()).unwrap();
            unless_busy(&mut busy, || device.mark_sent(id)).unwrap();
        }
    }
}

/// A child killed (SIGKILL) after a seeded random delay, `KILL_RUNS` times on one file. After
/// each kill the parent, as the restarted app, opens the file, keeps and acknowledges the
/// inbox, sends and marks sent the outbox, and hands Bob every new envelope in outbox order:
/// the store always opens, Bob's messages are received as a gap-free prefix and each kept once,
/// each envelope decrypts exactly once at Bob, and the device goes on working.
#[test]
fn a_process_killed_at_random_points_loses_nothing_and_reuses_no_key() {
    let seed = std::env::var("MULTIDEVICE_KILL_SEED").map_or(23, |s| s.parse().unwrap());
    let dir = TempDir::new("killed");
    let started = Instant::now();
    let (path, mut bob) = setup(&dir, seed, KILL_BOB_MESSAGES);
    let mut delays = StdRng::seed_from_u64(seed);
    let network_path = dir.file("network.txt");
    let mut network_read = 0;
    // Bob's messages kept by the app, and Alice's payloads Bob decrypted.
    let mut kept: BTreeSet<usize> = BTreeSet::new();
    let mut decrypted_by_bob: BTreeSet<String> = BTreeSet::new();
    let mut handed: BTreeSet<Vec<u8>> = BTreeSet::new();
    for run in 0..KILL_RUNS {
        let fail = |what: String| -> ! {
            panic!(
                "run {run}: {what}\n    replay (timing differs): MULTIDEVICE_KILL_SEED={seed} \
                 cargo test --test store_processes a_process_killed"
            )
        };
        // Start at the last message kept: the child must find it already received.
        let start = kept.len().saturating_sub(1);
        let mut child = child_command("loop")
            .env("MD_DIR", &dir.0)
            .env("MD_START", start.to_string())
            .env("MD_RUN", run.to_string())
            .env("MD_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim_end() != READY {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let mut stderr = String::new();
                child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
                fail(format!("the child ended before opening the store: {stderr}"));
            }
        }
        std::thread::sleep(Duration::from_micros(delays.random_range(0..40_000)));
        match child.try_wait().unwrap() {
            None => child.kill().unwrap(),
            Some(status) => {
                let mut stderr = String::new();
                child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
                fail(format!("the child ended on its own ({status}): {stderr}"));
            }
        }
        child.wait().unwrap();

        // The app starts again: the file must open.
        let store = SqliteStore::open(&path, &options(Synchronous::Normal))
            .unwrap_or_else(|e| fail(format!("the file does not open after the kill: {e:?}")));
        let mut alice = StoredDevice::open(store, &key(), &mut rng(seed ^ run as u64))
            .unwrap_or_else(|e| fail(format!("the device does not open after the kill: {e:?}")));
        for inbound in alice.inbox().unwrap() {
            let Received::Message(message) = &inbound.received else { panic!() };
            let payload = String::from_utf8(message.payload.to_vec()).unwrap();
            let i: usize = payload.strip_prefix("bob ").unwrap().parse().unwrap();
            if !kept.insert(i) {
                fail(format!("Bob's message {i} was kept twice: decrypted twice"));
            }
            alice.acknowledge(inbound.id).unwrap();
        }
        if kept.len() != kept.last().map_or(0, |last| last + 1) {
            fail(format!("Bob's messages were received with a gap: {kept:?}"));
        }
        // What reached the network: complete lines of the network file, then the outbox.
        let text = std::fs::read(&network_path).unwrap_or_default();
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
        let mut fresh: BTreeMap<u64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&text[network_read.min(complete)..complete]).lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let [id, payload, envelope] = words.as_slice() else {
                fail(format!("a network line is malformed: {line:?}"));
            };
            fresh.entry(id_number(id)).or_default().push(((*payload).to_owned(), unhex(envelope)));
        }
        network_read = complete;
        // A line cut short by the kill was never sent: its item is still in the outbox.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&network_path)
            .unwrap()
            .set_len(u64::try_from(complete).unwrap())
            .unwrap();
        for item in alice.outbox().unwrap() {
            let id = id_number(&format!("{:?}", item.id));
            // The parent does not know the payload; Bob's decryption names it.
            fresh.entry(id).or_default().push((String::new(), item.envelopes[0].bytes.clone()));
            alice.mark_sent(item.id).unwrap();
        }
        for (id, copies) in fresh {
            for (payload, envelope) in copies {
                if !handed.insert(envelope.clone()) {
                    continue; // the same envelope, posted and still in the outbox at the kill
                }
                match read(&mut bob, &envelope, T0) {
                    Ok(got) => {
                        let got = String::from_utf8(got).unwrap();
                        if !payload.is_empty() && got != payload {
                            fail(format!("outbox item {id}: Bob read {got}, not {payload}"));
                        }
                        if !decrypted_by_bob.insert(got.clone()) {
                            fail(format!("Bob decrypted {got} twice"));
                        }
                    }
                    Err(error) => fail(format!(
                        "outbox item {id}: Bob refused a fresh envelope: {error:?} (a message key reused?)"
                    )),
                }
            }
        }
    }

    // The device goes on: a send and a receive.
    let mut alice = open(&path, Synchronous::Normal, &mut rng(seed + 1));
    let now = Timestamp(T0.0 + 1_000_000);
    let sent = alice.encrypt_fanout(&mut rng(seed + 2), &[BOB], &[], b"after", now).unwrap();
    assert_eq!(read(&mut bob, &sent.envelopes[0].bytes, now).unwrap(), b"after");
    let reply = bob.encrypt_fanout(&mut rng(seed + 3), &[ALICE], &[], b"again", now).unwrap();
    let inbound = alice.receive(&reply.envelopes[0].bytes, None, now).unwrap();
    let Received::Message(message) = &inbound.received else { panic!() };
    assert_eq!(message.payload.as_slice(), b"again");
    eprintln!(
        "killed {KILL_RUNS} times in {:?}: {} of Bob's messages received, {} sends decrypted by Bob",
        started.elapsed(),
        kept.len(),
        decrypted_by_bob.len()
    );
}
