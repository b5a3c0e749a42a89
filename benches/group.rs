//! Groups with sender keys, beside their primitive floors, vodozemac's Megolm and today's
//! pairwise fan-out, in one run.
//!
//! - `group/encrypt/{10,1024}`: 1 KiB to a group of that many member accounts, keys already
//!   distributed (the steady state).
//! - `group/decrypt/10`: one such message received.
//! - `group/floor_encrypt`, `group/floor_decrypt`: one chain step, AES-256-GCM over the 1 KiB
//!   (with the 56-byte plaintext prefix) and an Ed25519 signature (or its strict verification)
//!   over the header and ciphertext: the work a group message cannot avoid.
//! - `group/megolm_encrypt`, `group/megolm_decrypt`: vodozemac's `GroupSession` and
//!   `InboundGroupSession` on the same 1 KiB.
//! - `group/distribute/{10,100}`: the first send to that many member accounts of five devices
//!   each (every pairwise session set up, every key distributed).
//! - `group/rotate_send/100`: the first send after one member's companion was removed.
//! - `group/pairwise/100`: the same 1 KiB fanned out pairwise to 100 accounts of five devices
//!   (in fan-outs of at most 64 accounts, the fan-out limit).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use multidevice::{
    AccountId, Device, DeviceAddress, DeviceId, GroupId, MAX_FANOUT_ACCOUNTS, PrekeyBundle,
    Received, Timestamp,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::Sha256;
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

const NOW: Timestamp = Timestamp(1_700_000_000);
const SENDER: AccountId = AccountId(1);
const PAYLOAD: [u8; 1024] = [0x47; 1024];

/// The sender, `accounts` member accounts of `devices` devices each (their primaries first),
/// every list processed both ways, and every member device's bundle.
struct Group {
    sender: Device,
    members: Vec<AccountId>,
    bundles: Vec<PrekeyBundle>,
    /// The first member account's devices.
    first: Vec<Device>,
    /// A removal list for the first member's last companion, signed by its primary.
    removal: Vec<u8>,
}

fn build(accounts: usize, devices: usize, seed: u64) -> Group {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sender = Device::new(&mut rng, DeviceAddress::new(SENDER, DeviceId::PRIMARY), NOW);
    let sender_list = sender.device_list(SENDER).unwrap().signed_bytes().to_vec();
    let mut members = Vec::new();
    let mut bundles = Vec::new();
    let mut first = Vec::new();
    let mut removal = Vec::new();
    for id in 2..2 + accounts as u64 {
        let account = AccountId(id);
        let mut primary =
            Device::new(&mut rng, DeviceAddress::new(account, DeviceId::PRIMARY), NOW);
        let mut list = primary.device_list(account).unwrap().signed_bytes().to_vec();
        let mut all = Vec::new();
        for _ in 1..devices {
            let mut companion =
                Device::new(&mut rng, DeviceAddress::new(account, DeviceId(9)), NOW);
            let approval = primary.approve_companion(companion.public_identity(), NOW).unwrap();
            let signed = companion.countersign_approval(&approval).unwrap();
            list = primary.add_companion(&signed, NOW).unwrap().to_bytes();
            all.push(companion);
        }
        sender.process_device_list(&list, NOW).unwrap();
        bundles.push(primary.prekey_upload().bundle(None));
        bundles.extend(all.iter().map(|d| d.prekey_upload().bundle(None)));
        members.push(account);
        if id == 2 {
            for device in &mut all {
                device.process_device_list(&list, NOW).unwrap();
                device.process_device_list(&sender_list, NOW).unwrap();
            }
            primary.process_device_list(&sender_list, NOW).unwrap();
            if let Some(last) = all.last() {
                removal = primary.remove_companion(last.address().device, NOW).unwrap().to_bytes();
            }
            all.insert(0, primary);
            first = all;
        }
    }
    Group { sender, members, bundles, first, removal }
}

fn hmac(key: &[u8; 32], byte: u8) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(&[byte]);
    mac.finalize().into_bytes().into()
}

fn bench_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("group");
    group.sample_size(50).measurement_time(Duration::from_secs(4));
    let mut rng = StdRng::seed_from_u64(99);

    // Steady state: keys distributed.
    for accounts in [10usize, 1024] {
        let mut g = build(accounts, 5, accounts as u64);
        let id = g.sender.create_group(&mut rng, &g.members).unwrap();
        let first = g.sender.encrypt_group(&mut rng, id, &g.bundles, b"hello", NOW).unwrap();
        assert_eq!(first.distribution.len(), accounts * 5);
        group.bench_with_input(BenchmarkId::new("encrypt", accounts), &accounts, |b, _| {
            b.iter(|| {
                let send = g.sender.encrypt_group(&mut rng, id, &[], &PAYLOAD, NOW).unwrap();
                assert!(send.distribution.is_empty());
                black_box(send.message)
            });
        });
        if accounts == 10 {
            // A second group, so the receiver's chain starts where the sender's does.
            let id = g.sender.create_group(&mut rng, &g.members).unwrap();
            let first = g.sender.encrypt_group(&mut rng, id, &g.bundles, b"hello", NOW).unwrap();
            let receiver = &mut g.first[0];
            let key =
                first.distribution.iter().find(|e| e.recipient == receiver.address()).unwrap();
            receiver.receive(&key.bytes, None, NOW).unwrap();
            receiver.receive(&first.message, None, NOW).unwrap();
            let (sender, receiver) = (&mut g.sender, &mut g.first[0]);
            group.bench_function(BenchmarkId::new("decrypt", 10), |b| {
                b.iter_batched(
                    || sender.encrypt_group(&mut rng, id, &[], &PAYLOAD, NOW).unwrap().message,
                    |message| match receiver.receive(&message, None, NOW).unwrap() {
                        Received::Group(m) => black_box(m.payload.len()),
                        _ => panic!(),
                    },
                    BatchSize::SmallInput,
                );
            });
        }
    }

    // Floors: the work a group message cannot avoid.
    let signing = SigningKey::from_bytes(&[7u8; 32]);
    let verifying = signing.verifying_key();
    let mut chain = [3u8; 32];
    let plaintext = [0x47u8; 56 + 1024];
    let header = [0u8; 82];
    group.bench_function("floor_encrypt", |b| {
        b.iter(|| {
            let message_key = hmac(&chain, 1);
            chain = hmac(&chain, 2);
            let cipher = Aes256Gcm::new_from_slice(&message_key).unwrap();
            let mut buffer = plaintext.to_vec();
            let tag = cipher
                .encrypt_inout_detached(
                    &Nonce::from([1u8; 12]),
                    &header,
                    buffer.as_mut_slice().into(),
                )
                .unwrap();
            let mut signed = header.to_vec();
            signed.extend_from_slice(&buffer);
            signed.extend_from_slice(&tag);
            black_box(signing.sign(&signed))
        });
    });
    let cipher_key = hmac(&chain, 1);
    let cipher = Aes256Gcm::new_from_slice(&cipher_key).unwrap();
    let mut sealed = plaintext.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from([1u8; 12]), &header, sealed.as_mut_slice().into())
        .unwrap();
    let mut signed = header.to_vec();
    signed.extend_from_slice(&sealed);
    signed.extend_from_slice(&tag);
    let signature = signing.sign(&signed);
    group.bench_function("floor_decrypt", |b| {
        b.iter(|| {
            verifying.verify_strict(&signed, &signature).unwrap();
            let message_key = hmac(&chain, 1);
            black_box(hmac(&chain, 2));
            let cipher = Aes256Gcm::new_from_slice(&message_key).unwrap();
            let mut buffer = sealed.clone();
            cipher
                .decrypt_inout_detached(
                    &Nonce::from([1u8; 12]),
                    &header,
                    buffer.as_mut_slice().into(),
                    &tag,
                )
                .unwrap_or(());
            black_box(buffer)
        });
    });

    // vodozemac's Megolm on the same payload.
    let mut outbound = GroupSession::new(SessionConfig::version_1());
    let mut inbound = InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
    group.bench_function("megolm_encrypt", |b| b.iter(|| black_box(outbound.encrypt(PAYLOAD))));
    group.bench_function("megolm_decrypt", |b| {
        b.iter_batched(
            || outbound.encrypt(PAYLOAD),
            |message| black_box(inbound.decrypt(&message).unwrap()),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn bench_distribution(c: &mut Criterion) {
    let mut group = c.benchmark_group("group");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    let mut rng = StdRng::seed_from_u64(5);

    // The first send: every session set up, every key distributed.
    for accounts in [10usize, 100] {
        let g = build(accounts, 5, 500 + accounts as u64);
        let mut sender = Device::from_bytes(&g.sender.to_bytes()).unwrap();
        let id = sender.create_group(&mut rng, &g.members).unwrap();
        let state = sender.to_bytes().to_vec();
        group.bench_with_input(BenchmarkId::new("distribute", accounts), &accounts, |b, _| {
            b.iter_batched(
                || (Device::from_bytes(&state).unwrap(), id),
                |(mut sender, id)| {
                    let send =
                        sender.encrypt_group(&mut rng, id, &g.bundles, &PAYLOAD, NOW).unwrap();
                    assert_eq!(send.distribution.len(), accounts * 5);
                    black_box(send)
                },
                BatchSize::PerIteration,
            );
        });
    }

    // The first send after a member's companion left: a fresh key to the other 499 devices.
    let mut g = build(100, 5, 600);
    let id = g.sender.create_group(&mut rng, &g.members).unwrap();
    g.sender.encrypt_group(&mut rng, id, &g.bundles, b"hi", NOW).unwrap();
    g.sender.process_device_list(&g.removal, NOW).unwrap();
    let state = g.sender.to_bytes().to_vec();
    group.bench_function(BenchmarkId::new("rotate_send", 100), |b| {
        b.iter_batched(
            || Device::from_bytes(&state).unwrap(),
            |mut sender| {
                let send = sender.encrypt_group(&mut rng, id, &[], &PAYLOAD, NOW).unwrap();
                assert!(send.rotated && send.distribution.len() == 499);
                black_box(send)
            },
            BatchSize::PerIteration,
        );
    });

    // Today's pairwise fan-out of the same payload to the same 500 devices.
    let mut g = build(100, 5, 700);
    for chunk in g.members.chunks(MAX_FANOUT_ACCOUNTS) {
        g.sender.encrypt_fanout(&mut rng, chunk, &g.bundles, b"hi", NOW).unwrap();
    }
    group.bench_function(BenchmarkId::new("pairwise", 100), |b| {
        b.iter(|| {
            let mut envelopes = 0;
            for chunk in g.members.chunks(MAX_FANOUT_ACCOUNTS) {
                let sent = g.sender.encrypt_fanout(&mut rng, chunk, &[], &PAYLOAD, NOW).unwrap();
                envelopes += sent.envelopes.len();
            }
            assert_eq!(envelopes, 500);
            black_box(envelopes)
        });
    });
    group.finish();
    let _ = GroupId::random(&mut rng);
}

criterion_group!(benches, bench_group, bench_distribution);
criterion_main!(benches);
