//! Smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod support;
use support::*;

#[test]
fn basic() {
    let mut rng = rng(1);
    let (mut alice, mut bob) = pair(&mut rng);
    for i in 0..50u32 {
        let m = alice.encrypt(&mut rng, bob.address(), &i.to_be_bytes()).unwrap();
        assert_eq!(bob.decrypt(&m, T0).unwrap().plaintext.as_slice(), &i.to_be_bytes());
        let r = bob.encrypt(&mut rng, alice.address(), &i.to_be_bytes()).unwrap();
        assert_eq!(alice.decrypt(&r, T0).unwrap().plaintext.as_slice(), &i.to_be_bytes());
    }
    let bytes = snapshot(&alice);
    println!("device bytes {}", bytes.len());
    let restored = multidevice::Device::from_bytes(&bytes).unwrap();
    assert_eq!(snapshot(&restored), bytes);
}
