//! Fan-out, first contact and archived-session decryption, each beside its primitive floor and,
//! for fan-out, beside vodozemac (Olm) in the same run.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use multidevice::{
    AccountId, Device, DeviceAddress, DeviceId, PrekeyBundle, SignedDeviceList, Timestamp, hazmat,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use vodozemac::olm::{Account as OlmAccount, OlmMessage, SessionConfig};
use x25519_dalek::{PublicKey, StaticSecret};

const NOW: Timestamp = Timestamp(1_700_000_000);
const SENDER: AccountId = AccountId(1_000);

fn address(account: u64, device: u32) -> DeviceAddress {
    DeviceAddress::new(AccountId(account), DeviceId(device))
}

/// An account with `devices` devices (primary first) and its newest list.
fn account(rng: &mut StdRng, id: u64, devices: usize) -> (Vec<Device>, SignedDeviceList) {
    let mut primary = Device::new(rng, address(id, 0), NOW);
    let mut list = primary.refresh_device_list(NOW).unwrap();
    let mut all = Vec::new();
    for _ in 1..devices {
        let mut companion = Device::new(rng, address(id, 99), NOW);
        let approval = primary.approve_companion(companion.public_identity(), NOW).unwrap();
        let signed = companion.countersign_approval(&approval).unwrap();
        list = primary.add_companion(&signed, NOW).unwrap();
        all.push(companion);
    }
    all.insert(0, primary);
    for device in &mut all {
        device.process_device_list(&list.to_bytes(), NOW).unwrap();
        device.generate_one_time_prekeys(rng, 4).unwrap();
    }
    (all, list)
}

/// A sender and recipient accounts totalling `n` devices (at most 5 per account), as lists and
/// bundles the sender has not processed yet.
struct World {
    sender: Device,
    sender_list: SignedDeviceList,
    accounts: Vec<AccountId>,
    lists: Vec<Vec<u8>>,
    bundles: Vec<Vec<u8>>,
    devices: Vec<Device>,
}

fn world(rng: &mut StdRng, n: usize) -> World {
    let mut sender = Device::new(rng, DeviceAddress::new(SENDER, DeviceId::PRIMARY), NOW);
    let sender_list = sender.refresh_device_list(NOW).unwrap();
    let (mut accounts, mut lists, mut bundles, mut all) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut left = n;
    let mut id = 1;
    while left > 0 {
        let size = left.min(5);
        let (devices, list) = account(rng, id, size);
        accounts.push(AccountId(id));
        lists.push(list.to_bytes());
        bundles.extend(devices.iter().map(|d| d.prekey_upload().bundle(Some(0)).to_bytes()));
        all.extend(devices);
        left -= size;
        id += 1;
    }
    World { sender, sender_list, accounts, lists, bundles, devices: all }
}

fn parse_bundles(bytes: &[Vec<u8>]) -> Vec<PrekeyBundle> {
    bytes.iter().map(|b| PrekeyBundle::try_from(b.as_slice()).unwrap()).collect()
}

/// A sender with established sessions to `n` devices: each received a message and answered.
fn established(rng: &mut StdRng, n: usize) -> (Device, Vec<AccountId>) {
    let mut w = world(rng, n);
    for list in &w.lists {
        w.sender.process_device_list(list, NOW).unwrap();
    }
    let bundles = parse_bundles(&w.bundles);
    let first = w.sender.encrypt_fanout(rng, &w.accounts, &bundles, b"setup", NOW).unwrap();
    assert_eq!(first.envelopes.len(), n);
    for device in &mut w.devices {
        device.process_device_list(&w.sender_list.to_bytes(), NOW).unwrap();
        let envelope = first.envelopes.iter().find(|e| e.recipient == device.address()).unwrap();
        device.receive(&envelope.bytes, None, NOW).unwrap();
        // A raw reply on the same session confirms it (the kind does not matter to the ratchet).
        let reply = hazmat::encrypt(device, rng, w.sender.address(), b"reply").unwrap();
        hazmat::decrypt(&mut w.sender, &reply, NOW).unwrap();
    }
    // Turn the ratchet once so the measured sends run on an existing chain.
    w.sender.encrypt_fanout(rng, &w.accounts, &[], b"turn", NOW).unwrap();
    (w.sender, w.accounts)
}

/// The raw work one device's copy needs: a chain step (two HMACs) and AES-256-GCM under the
/// fresh message key over `buffer`, authenticating the session's associated data and the
/// message header (the bytes before the ciphertext of a message on an established session).
fn floor_device(chain_key: &[u8; 32], buffer: &mut [u8]) {
    let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(chain_key).unwrap();
    let message_key = keyed.clone().chain_update([1]).finalize().into_bytes();
    let next = keyed.chain_update([2]).finalize().into_bytes();
    let cipher = Aes256Gcm::new_from_slice(&message_key).unwrap();
    let aad = [0u8; ENVELOPE_AAD];
    let tag = cipher.encrypt_inout_detached(&Nonce::from([0u8; 12]), &aad, buffer.into()).unwrap();
    black_box((next, tag));
}

/// One payload AEAD pass under a fresh key, and the SHA-256 of the sealed body that every
/// envelope carries: the protocol requires both for a shared body.
fn floor_payload(key: &[u8; 32], buffer: &mut [u8]) {
    let cipher = Aes256Gcm::new_from_slice(key).unwrap();
    let tag = cipher.encrypt_inout_detached(&Nonce::from([0u8; 12]), &[], buffer.into()).unwrap();
    black_box(Sha256::new().chain_update(&buffer).chain_update(tag).finalize());
}

/// Size of the per-device plaintext in body mode: list version and digest, content type, key,
/// body digest.
const ENVELOPE_INNER: usize = 8 + 32 + 1 + 32 + 32;

/// Associated data of a message on an established session: the session's 32-byte associated
/// data and the 95-byte prefix (version, type, kind, two addresses, ratchet header).
const ENVELOPE_AAD: usize = 32 + 95;

fn olm_sessions(n: usize) -> Vec<vodozemac::olm::Session> {
    let alice = OlmAccount::new();
    (0..n)
        .map(|_| {
            let mut bob = OlmAccount::new();
            bob.generate_one_time_keys(1);
            let otk = *bob.one_time_keys().values().next().unwrap();
            let mut session = alice
                .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
                .unwrap();
            let OlmMessage::PreKey(m) = session.encrypt(b"setup").unwrap() else { panic!() };
            let mut inbound = bob
                .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &m)
                .unwrap();
            let reply = inbound.session.encrypt(b"reply").unwrap();
            session.decrypt(&reply).unwrap();
            session
        })
        .collect()
}

fn fanout_1kib(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let payload = vec![0x42u8; 1024];
    let mut group = c.benchmark_group("fanout_1KiB");
    for n in [1usize, 2, 5, 10, 50] {
        let (mut sender, accounts) = established(&mut rng, n);
        group.bench_with_input(BenchmarkId::new("multidevice", n), &n, |b, _| {
            b.iter(|| {
                black_box(sender.encrypt_fanout(&mut rng, &accounts, &[], &payload, NOW).unwrap())
            })
        });
        let mut sessions = olm_sessions(n);
        group.bench_with_input(BenchmarkId::new("vodozemac", n), &n, |b, _| {
            b.iter(|| {
                for session in &mut sessions {
                    black_box(session.encrypt(&payload).unwrap());
                }
            })
        });
        let mut body = payload.clone();
        let mut inner = vec![0u8; ENVELOPE_INNER];
        group.bench_with_input(BenchmarkId::new("floor", n), &n, |b, &n| {
            b.iter(|| {
                floor_payload(&[3u8; 32], &mut body);
                for _ in 0..n {
                    floor_device(&[7u8; 32], &mut inner);
                }
            })
        });
    }
    group.finish();
}

fn fanout_payload(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut group = c.benchmark_group("fanout_payload");
    let (mut sender, accounts) = established(&mut rng, 10);
    for (name, size) in
        [("64B", 64usize), ("1KiB", 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)]
    {
        let payload = vec![0x17u8; size];
        group.bench_function(BenchmarkId::new("multidevice", name), |b| {
            b.iter(|| {
                black_box(sender.encrypt_fanout(&mut rng, &accounts, &[], &payload, NOW).unwrap())
            })
        });
        if size == 1024 * 1024 {
            // The body digest's own cost, for reference: one SHA-256 pass over the body.
            group.bench_function(BenchmarkId::new("sha256_body", name), |b| {
                b.iter(|| black_box(Sha256::digest(&payload)))
            });
        }
        let inline = size <= multidevice::INLINE_THRESHOLD;
        let mut body = payload.clone();
        let mut inner = vec![0u8; if inline { ENVELOPE_INNER + size - 64 } else { ENVELOPE_INNER }];
        group.bench_function(BenchmarkId::new("floor", name), |b| {
            b.iter(|| {
                if !inline {
                    floor_payload(&[3u8; 32], &mut body);
                }
                for _ in 0..10 {
                    floor_device(&[7u8; 32], &mut inner);
                }
            })
        });
    }
    group.finish();
}

fn first_contact(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let mut group = c.benchmark_group("first_contact");
    group.sample_size(20);
    let w = world(&mut rng, 10);
    let sender_bytes = w.sender.to_bytes();
    group.bench_function(BenchmarkId::new("multidevice", 10), |b| {
        b.iter_batched(
            || Device::from_bytes(&sender_bytes).unwrap(),
            |mut sender| {
                for list in &w.lists {
                    sender.process_device_list(list, NOW).unwrap();
                }
                let bundles = parse_bundles(&w.bundles);
                let out =
                    sender.encrypt_fanout(&mut rng, &w.accounts, &bundles, b"hi", NOW).unwrap();
                assert_eq!(out.envelopes.len(), 10);
                (sender, out)
            },
            BatchSize::SmallInput,
        )
    });
    // The same signature checks and DH work, raw: per list one list signature, the identity
    // signature of every device and two signatures per companion; per bundle the identity and
    // signed-prekey signatures; per session a base key and four DHs.
    let signing = SigningKey::generate(&mut rng);
    let verifying = signing.verifying_key();
    let signature = signing.sign(b"message");
    let ours = StaticSecret::random_from_rng(&mut rng);
    let theirs = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    let verifications = 2 * (1 + 5 + 2 * 4) + 10 * 2;
    // Every received identity key is decompressed once: five per list, one per bundle.
    let decompressions = 2 * 5 + 10;
    let key_bytes = verifying.to_bytes();
    group.bench_function(BenchmarkId::new("floor", 10), |b| {
        b.iter(|| {
            for _ in 0..decompressions {
                black_box(ed25519_dalek::VerifyingKey::from_bytes(&key_bytes).unwrap());
            }
            for _ in 0..verifications {
                verifying.verify_strict(b"message", &signature).unwrap();
            }
            for _ in 0..10 {
                let base = StaticSecret::random_from_rng(&mut rng);
                black_box(PublicKey::from(&base));
                black_box(ours.diffie_hellman(&theirs));
                for _ in 0..3 {
                    black_box(base.diffie_hellman(&theirs));
                }
            }
        })
    });
    group.finish();
}

fn decrypt_archived(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(4);
    let mut group = c.benchmark_group("decrypt");
    let payload = vec![0x99u8; 1024];
    for archived in [0usize, 40] {
        let mut alice = Device::new(&mut rng, address(1, 0), NOW);
        let mut bob = Device::new(&mut rng, address(2, 0), NOW);
        let bundle = bob.prekey_upload().bundle(None).verify().unwrap();
        // The message to decrypt is on the oldest session; `archived` newer ones follow it.
        hazmat::start_session(&mut alice, &mut rng, &bundle).unwrap();
        let first = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"open").unwrap();
        hazmat::decrypt(&mut bob, &first, NOW).unwrap();
        let reply = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"ack").unwrap();
        hazmat::decrypt(&mut alice, &reply, NOW).unwrap();
        // The first message after the reply turns the ratchet; the target then sits on an
        // existing receiving chain, so what is measured is lookup plus one chain step.
        let turn = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"turn").unwrap();
        hazmat::decrypt(&mut bob, &turn, NOW).unwrap();
        let target = hazmat::encrypt(&mut alice, &mut rng, bob.address(), &payload).unwrap();
        for _ in 0..archived {
            hazmat::start_session(&mut alice, &mut rng, &bundle).unwrap();
            let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"newer").unwrap();
            hazmat::decrypt(&mut bob, &m, NOW).unwrap();
        }
        assert_eq!(bob.session_info(alice.address()).unwrap().archived, archived);
        let bob_bytes = bob.to_bytes();
        group.bench_function(BenchmarkId::new("multidevice", archived), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut bob = Device::from_bytes(&bob_bytes).unwrap();
                    let start = Instant::now();
                    black_box(hazmat::decrypt(&mut bob, &target, NOW).unwrap());
                    total += start.elapsed();
                    drop(bob);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = fanout_1kib, fanout_payload, first_contact, decrypt_archived
}
criterion_main!(benches);
