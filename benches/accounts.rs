//! Device-list verification and the two linking flows, end to end on both sides.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use multidevice::{
    AccountId, CompanionPairing, Device, DeviceAddress, DeviceId, PairingCode, PrimaryPairing,
    QrLinkApproval, QrLinkOffer, SignedDeviceList, Timestamp,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: Timestamp = Timestamp(1_700_000_000);

fn address(device: u32) -> DeviceAddress {
    DeviceAddress::new(AccountId(1), DeviceId(device))
}

fn list_with(rng: &mut StdRng, entries: usize) -> SignedDeviceList {
    let mut primary = Device::new(rng, address(0), NOW);
    let mut list = primary.refresh_device_list(NOW).unwrap();
    for _ in 1..entries {
        let mut companion = Device::new(rng, address(99), NOW);
        let approval = primary.approve_companion(companion.public_identity(), NOW).unwrap();
        let signed = companion.countersign_approval(&approval).unwrap();
        list = primary.add_companion(&signed, NOW).unwrap();
    }
    list
}

fn device_list(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut group = c.benchmark_group("device_list");
    for entries in [1usize, 5] {
        let bytes = list_with(&mut rng, entries).to_bytes();
        group.bench_function(BenchmarkId::new("verify", entries), |b| {
            b.iter(|| {
                black_box(SignedDeviceList::try_from(bytes.as_slice()).unwrap().verify().unwrap())
            })
        });
    }
    group.finish();
}

fn linking(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut group = c.benchmark_group("linking");
    group.sample_size(30);
    let primary = Device::new(&mut rng, address(0), NOW).to_bytes();
    let companion = Device::new(&mut rng, address(99), NOW).to_bytes();
    let fresh = || (Device::from_bytes(&primary).unwrap(), Device::from_bytes(&companion).unwrap());
    group.bench_function("qr", |b| {
        b.iter_batched(
            fresh,
            |(mut primary, mut companion)| {
                let mut rng = StdRng::seed_from_u64(3);
                let mut offer = QrLinkOffer::new(&mut rng, &mut companion, NOW);
                let (mut approval, message) =
                    QrLinkApproval::approve(&mut primary, &offer.qr_text(), NOW).unwrap();
                let confirmation = offer.accept_approval(&mut companion, &message, NOW).unwrap();
                let list = approval.finish(&mut primary, &confirmation, NOW).unwrap();
                companion.process_device_list(&list.to_bytes(), NOW).unwrap();
                (primary, companion)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("pairing_code", |b| {
        b.iter_batched(
            fresh,
            |(mut primary, mut companion)| {
                let mut rng = StdRng::seed_from_u64(4);
                let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut companion, NOW);
                let typed = PairingCode::parse(&attempt.code().to_string()).unwrap();
                let (mut pairing, response) =
                    PrimaryPairing::respond(&mut rng, &mut primary, &hello, typed, NOW).unwrap();
                let confirm = attempt.handle_response(&response, NOW).unwrap();
                let approval = pairing.handle_confirm(&mut primary, &confirm, NOW).unwrap();
                let confirmation = attempt.accept_approval(&mut companion, &approval, NOW).unwrap();
                let list = pairing.finish(&mut primary, &confirmation, NOW).unwrap();
                companion.process_device_list(&list.to_bytes(), NOW).unwrap();
                (primary, companion)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = device_list, linking
}
criterion_main!(benches);
