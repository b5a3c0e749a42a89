//! Pairwise session costs, each beside the raw primitive work it cannot avoid.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use multidevice::{AccountId, Device, DeviceAddress, DeviceId, PrekeyBundle, Timestamp, hazmat};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

const NOW: Timestamp = Timestamp(1_700_000_000);

fn device(rng: &mut StdRng, account: u64) -> Device {
    let mut d = Device::new(rng, DeviceAddress::new(AccountId(account), DeviceId(0)), NOW);
    d.generate_one_time_prekeys(rng, 10).unwrap();
    d
}

fn established(rng: &mut StdRng) -> (Device, Device) {
    let mut alice = device(rng, 1);
    let mut bob = device(rng, 2);
    let bundle = bob.prekey_upload().bundle(Some(0)).verify().unwrap();
    hazmat::start_session(&mut alice, rng, &bundle).unwrap();
    let m = hazmat::encrypt(&mut alice, rng, bob.address(), b"hi").unwrap();
    hazmat::decrypt(&mut bob, &m, NOW).unwrap();
    let r = hazmat::encrypt(&mut bob, rng, alice.address(), b"hi").unwrap();
    hazmat::decrypt(&mut alice, &r, NOW).unwrap();
    (alice, bob)
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let payload = vec![0x5au8; 1024];
    let mut group = c.benchmark_group("session");

    let (mut alice, bob) = established(&mut rng);
    group.bench_function("encrypt_1KiB", |b| {
        b.iter(|| {
            black_box(hazmat::encrypt(&mut alice, &mut rng, bob.address(), &payload).unwrap())
        })
    });

    let (mut alice, mut bob) = established(&mut rng);
    group.bench_function("decrypt_1KiB", |b| {
        b.iter_custom(|iters| {
            // In batches that stay in cache, so the bench measures decryption, not memory.
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(512);
                let wires: Vec<Vec<u8>> = (0..batch)
                    .map(|_| {
                        hazmat::encrypt(&mut alice, &mut rng, bob.address(), &payload).unwrap()
                    })
                    .collect();
                let start = Instant::now();
                for wire in &wires {
                    black_box(hazmat::decrypt(&mut bob, wire, NOW).unwrap());
                }
                total += start.elapsed();
                left -= batch;
            }
            total
        })
    });

    // Raw work of one message: two HMACs for the chain step, AES-256-GCM with a fresh key.
    group.bench_function("floor_message_1KiB", |b| {
        let chain_key = [7u8; 32];
        let mut buffer = payload.clone();
        b.iter(|| {
            let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&chain_key).unwrap();
            let mk = keyed.clone().chain_update([1]).finalize().into_bytes();
            let next = keyed.chain_update([2]).finalize().into_bytes();
            let cipher = Aes256Gcm::new_from_slice(&mk).unwrap();
            let tag = cipher
                .encrypt_inout_detached(
                    &Nonce::from([0u8; 12]),
                    &[0u8; 120],
                    buffer.as_mut_slice().into(),
                )
                .unwrap();
            black_box((next, tag))
        })
    });

    let (initiator, responder) = (device(&mut rng, 3), device(&mut rng, 4));
    let responder_bytes = responder.to_bytes();
    let bundle = responder.prekey_upload().bundle(Some(0)).verify().unwrap();
    let mut initiator = initiator;
    hazmat::start_session(&mut initiator, &mut rng, &bundle).unwrap();
    let first = hazmat::encrypt(&mut initiator, &mut rng, responder.address(), &payload).unwrap();
    group.bench_function("first_message_decrypt", |b| {
        b.iter_batched(
            || Device::from_bytes(&responder_bytes).unwrap(),
            |mut responder| black_box(hazmat::decrypt(&mut responder, &first, NOW).unwrap()),
            BatchSize::SmallInput,
        )
    });

    let bundle_bytes = responder.prekey_upload().bundle(Some(1)).to_bytes();
    let mut setup_device = device(&mut rng, 5);
    group.bench_function("setup", |b| {
        b.iter(|| {
            let bundle = PrekeyBundle::try_from(bundle_bytes.as_slice()).unwrap().verify().unwrap();
            hazmat::start_session(&mut setup_device, &mut rng, &bundle).unwrap();
        })
    });

    // The same signature checks, key generation and four DHs, done raw.
    let signing = SigningKey::generate(&mut rng);
    let verifying = signing.verifying_key();
    let sig1 = signing.sign(b"identity agreement key");
    let sig2 = signing.sign(b"signed prekey");
    let ours = StaticSecret::random_from_rng(&mut rng);
    let theirs: Vec<PublicKey> =
        (0..3).map(|_| PublicKey::from(&StaticSecret::random_from_rng(&mut rng))).collect();
    group.bench_function("floor_setup", |b| {
        b.iter(|| {
            verifying.verify_strict(b"identity agreement key", &sig1).unwrap();
            verifying.verify_strict(b"signed prekey", &sig2).unwrap();
            let base = StaticSecret::random_from_rng(&mut rng);
            let base_public = PublicKey::from(&base);
            let dh1 = ours.diffie_hellman(&theirs[0]);
            let dh2 = base.diffie_hellman(&theirs[1]);
            let dh3 = base.diffie_hellman(&theirs[0]);
            let dh4 = base.diffie_hellman(&theirs[2]);
            black_box((base_public, dh1, dh2, dh3, dh4))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
