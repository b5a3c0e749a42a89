//! Shared participant model for the scenario tests: devices, a seeded RNG, a clock.
#![allow(dead_code)]

pub(crate) mod world;

use multidevice::{AccountId, Device, DeviceAddress, DeviceId, Timestamp, hazmat};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A fixed starting time for every scenario.
pub(crate) const T0: Timestamp = Timestamp(1_700_000_000);

/// A deterministic RNG.
pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Address of `device` in `account`.
pub(crate) fn addr(account: u64, device: u32) -> DeviceAddress {
    DeviceAddress::new(AccountId(account), DeviceId(device))
}

/// A fresh device with `otks` one-time prekeys.
pub(crate) fn device(rng: &mut StdRng, address: DeviceAddress, otks: usize) -> Device {
    let mut device = Device::new(rng, address, T0);
    device.generate_one_time_prekeys(rng, otks).unwrap();
    device
}

/// Alice (1:0) with a raw session to Bob (2:0), Bob having 5 one-time prekeys.
pub(crate) fn pair(rng: &mut StdRng) -> (Device, Device) {
    let mut alice = device(rng, addr(1, 0), 5);
    let bob = device(rng, addr(2, 0), 5);
    let bundle = bob.prekey_upload().bundle(Some(0)).verify().unwrap();
    hazmat::start_session(&mut alice, rng, &bundle).unwrap();
    (alice, bob)
}

/// Alice and Bob with a confirmed raw session (one message each way).
pub(crate) fn established(rng: &mut StdRng) -> (Device, Device) {
    let (mut alice, mut bob) = pair(rng);
    let m = hazmat::encrypt(&mut alice, rng, bob.address(), b"hi").unwrap();
    hazmat::decrypt(&mut bob, &m, T0).unwrap();
    let r = hazmat::encrypt(&mut bob, rng, alice.address(), b"hi back").unwrap();
    hazmat::decrypt(&mut alice, &r, T0).unwrap();
    (alice, bob)
}

/// The persisted bytes of a device, for byte-identical state comparisons.
pub(crate) fn snapshot(device: &Device) -> Vec<u8> {
    device.to_bytes().to_vec()
}

/// Raises `device`'s clock high-water mark to `now` and changes nothing else: every call that
/// takes `now` moves the mark first, even one that then refuses its input.
pub(crate) fn tick(device: &mut Device, now: Timestamp) {
    assert!(device.receive(&[], None, now).is_err());
}
