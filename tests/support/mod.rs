//! Shared participant model for the scenario tests: devices, a seeded RNG, a clock.
#![allow(dead_code)]

use multidevice::{AccountId, Device, DeviceAddress, DeviceId, Timestamp};
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

/// Alice (1:0) with a session to Bob (2:0), Bob having 5 one-time prekeys.
pub(crate) fn pair(rng: &mut StdRng) -> (Device, Device) {
    let mut alice = device(rng, addr(1, 0), 5);
    let bob = device(rng, addr(2, 0), 5);
    let bundle = bob.prekey_upload().bundle(Some(0)).verify().unwrap();
    alice.start_session(rng, &bundle).unwrap();
    (alice, bob)
}

/// Alice and Bob with a confirmed session (one message each way).
pub(crate) fn established(rng: &mut StdRng) -> (Device, Device) {
    let (mut alice, mut bob) = pair(rng);
    let m = alice.encrypt(rng, bob.address(), b"hi").unwrap();
    bob.decrypt(&m, T0).unwrap();
    let r = bob.encrypt(rng, alice.address(), b"hi back").unwrap();
    alice.decrypt(&r, T0).unwrap();
    (alice, bob)
}

/// The persisted bytes of a device, for byte-identical state comparisons.
pub(crate) fn snapshot(device: &Device) -> Vec<u8> {
    device.to_bytes().to_vec()
}
