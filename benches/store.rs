//! The per-record SQLite store: one send or receive with its commit as the number of sessions
//! held grows, opening the store, a fan-out with its commit, and, in the same run, today's
//! whole-state persistence (`Device::to_bytes` plus a durable file write) as the floor to beat.
//!
//! Every SQLite figure uses the default `synchronous = FULL` (each commit reaches the disk), and
//! the whole-state figure `fsync`s its file too, so both sides are equally durable.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use multidevice::store::{SqliteOptions, SqliteStore, StoreKey};
use multidevice::{AccountId, Device, DeviceAddress, DeviceId, StoredDevice, Timestamp};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: Timestamp = Timestamp(1_700_000_000);
const HOLDER: AccountId = AccountId(1);
/// The peer every send and receive goes to or comes from: account 2's primary.
const PEER: AccountId = AccountId(2);
const PAYLOAD: [u8; 1024] = [0x42; 1024];

fn primary(rng: &mut StdRng, account: u64) -> Device {
    Device::new(rng, DeviceAddress::new(AccountId(account), DeviceId::PRIMARY), NOW)
}

/// The holder with `sessions` sessions (one per peer account, each with a held list), and the
/// peer it talks to, with a confirmed session both ways.
fn holder_with_sessions(sessions: usize) -> (Device, Device) {
    let mut rng = StdRng::seed_from_u64(sessions as u64);
    let mut holder = primary(&mut rng, HOLDER.0);
    let holder_list = holder.device_list(HOLDER).unwrap().signed_bytes().to_vec();
    let mut peer = primary(&mut rng, PEER.0);
    let peer_list = peer.device_list(PEER).unwrap().signed_bytes().to_vec();
    holder.process_device_list(&peer_list, NOW).unwrap();
    let bundle = peer.prekey_upload().bundle(None);
    let sent = holder.encrypt_fanout(&mut rng, &[PEER], &[bundle], b"hi", NOW).unwrap();
    peer.process_device_list(&holder_list, NOW).unwrap();
    peer.receive(&sent.envelopes[0].bytes, None, NOW).unwrap();
    let reply = peer.encrypt_fanout(&mut rng, &[HOLDER], &[], b"hi", NOW).unwrap();
    holder.receive(&reply.envelopes[0].bytes, None, NOW).unwrap();
    for account in 1..sessions as u64 {
        let other = primary(&mut rng, 2 + account);
        let list = other.device_list(other.account()).unwrap().signed_bytes().to_vec();
        holder.process_device_list(&list, NOW).unwrap();
        let bundle = other.prekey_upload().bundle(None);
        holder.encrypt_fanout(&mut rng, &[other.account()], &[bundle], b"hi", NOW).unwrap();
    }
    (holder, peer)
}

fn key() -> StoreKey {
    StoreKey::from_bytes(&[9u8; 32])
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multidevice-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

fn open(path: &Path, rng: &mut StdRng) -> StoredDevice<SqliteStore> {
    let store = SqliteStore::open(path, &SqliteOptions::default()).unwrap();
    StoredDevice::open(store, &key(), rng).unwrap()
}

/// The holder's state imported into a fresh SQLite file.
fn stored(path: &Path, holder: &Device, rng: &mut StdRng) -> StoredDevice<SqliteStore> {
    let store = SqliteStore::open(path, &SqliteOptions::default()).unwrap();
    StoredDevice::import(store, &key(), rng, &holder.to_bytes()).unwrap()
}

fn send_one(device: &mut StoredDevice<SqliteStore>, rng: &mut StdRng) -> Duration {
    let start = Instant::now();
    let sent = device.encrypt_fanout(rng, &[PEER], &[], &PAYLOAD, NOW).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(sent.envelopes.len(), 1);
    device.mark_sent(sent.outbox.unwrap()).unwrap();
    elapsed
}

fn bench_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    let mut rng = StdRng::seed_from_u64(99);
    let mut open_paths = Vec::new();
    for sessions in [10usize, 1_000, 10_000] {
        let (holder, mut peer) = holder_with_sessions(sessions);
        let path = scratch(&format!("send-{sessions}.db"));
        let mut device = stored(&path, &holder, &mut rng);
        group.bench_with_input(BenchmarkId::new("send", sessions), &sessions, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| send_one(&mut device, &mut rng)).sum());
        });
        group.bench_with_input(BenchmarkId::new("receive", sessions), &sessions, |b, _| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let message =
                            peer.encrypt_fanout(&mut rng, &[HOLDER], &[], &PAYLOAD, NOW).unwrap();
                        let start = Instant::now();
                        let body = message.body.as_deref();
                        let inbound =
                            device.receive(&message.envelopes[0].bytes, body, NOW).unwrap();
                        let elapsed = start.elapsed();
                        device.acknowledge(inbound.id).unwrap();
                        elapsed
                    })
                    .sum()
            });
        });
        if sessions == 10_000 {
            let whole = scratch("whole-state.bin");
            group.bench_function(BenchmarkId::new("whole_state", sessions), |b| {
                b.iter(|| {
                    let bytes = holder.to_bytes();
                    let mut file = std::fs::File::create(&whole).unwrap();
                    file.write_all(&bytes).unwrap();
                    file.sync_all().unwrap();
                });
            });
            let size = std::fs::metadata(&path).unwrap().len()
                + std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
            eprintln!(
                "store: {sessions} sessions: SQLite file and WAL {size} bytes; whole state {} bytes",
                holder.to_bytes().len()
            );
        }
        drop(device);
        if sessions != 1_000 {
            open_paths.push((sessions, path));
        }
    }
    for (sessions, path) in &open_paths {
        group.bench_with_input(BenchmarkId::new("open", sessions), sessions, |b, _| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let start = Instant::now();
                        let mut device = open(path, &mut rng);
                        let sent =
                            device.encrypt_fanout(&mut rng, &[PEER], &[], &PAYLOAD, NOW).unwrap();
                        let elapsed = start.elapsed();
                        device.mark_sent(sent.outbox.unwrap()).unwrap();
                        elapsed
                    })
                    .sum()
            });
        });
    }
    group.finish();
}

/// A fan-out to two accounts of five devices each, with its commit.
fn bench_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    let mut rng = StdRng::seed_from_u64(7);
    let mut holder = primary(&mut rng, HOLDER.0);
    let mut accounts = Vec::new();
    for id in [10u64, 11] {
        let mut devices = vec![primary(&mut rng, id)];
        let mut list = devices[0].device_list(AccountId(id)).unwrap().signed_bytes().to_vec();
        for _ in 0..4 {
            let mut companion =
                Device::new(&mut rng, DeviceAddress::new(AccountId(id), DeviceId(9)), NOW);
            let approval = devices[0].approve_companion(companion.public_identity(), NOW).unwrap();
            let signed = companion.countersign_approval(&approval).unwrap();
            list = devices[0].add_companion(&signed, NOW).unwrap().to_bytes();
            devices.push(companion);
        }
        holder.process_device_list(&list, NOW).unwrap();
        let bundles: Vec<_> = devices.iter().map(|d| d.prekey_upload().bundle(None)).collect();
        holder.encrypt_fanout(&mut rng, &[AccountId(id)], &bundles, b"hi", NOW).unwrap();
        accounts.push(AccountId(id));
    }
    let path = scratch("fanout.db");
    let mut device = stored(&path, &holder, &mut rng);
    group.bench_function(BenchmarkId::new("fanout", 10), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    let sent =
                        device.encrypt_fanout(&mut rng, &accounts, &[], &PAYLOAD, NOW).unwrap();
                    let elapsed = start.elapsed();
                    assert_eq!(sent.envelopes.len(), 10);
                    device.mark_sent(sent.outbox.unwrap()).unwrap();
                    elapsed
                })
                .sum()
        });
    });
    group.finish();
}

criterion_group!(benches, bench_store, bench_fanout);
criterion_main!(benches);
