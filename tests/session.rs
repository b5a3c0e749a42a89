//! Pairwise sessions through the public API: setup, the ratchet, limits, Sesame records and
//! transactional failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::consts::{
    DEFAULT_MAX_FORWARD_JUMP, MAX_ARCHIVED_SESSIONS, MAX_RECEIVER_CHAINS, MAX_SKIPPED_KEYS,
};
use multidevice::{Device, KeyError, MessageKind, ReceiveError, SessionError, Timestamp, hazmat};
use rand::prelude::SliceRandom;
use rand::rngs::StdRng;
use support::*;

/// Decrypts and asserts the plaintext.
fn recv(device: &mut Device, wire: &[u8], expected: &[u8]) {
    let got = hazmat::decrypt(device, wire, T0).unwrap();
    assert_eq!(got.plaintext.as_slice(), expected);
}

/// Asserts that `wire` is rejected and that the device state did not change.
fn rejected(device: &mut Device, wire: &[u8], now: Timestamp) -> SessionError {
    let before = snapshot(device);
    let error = hazmat::decrypt(device, wire, now).expect_err("must be rejected");
    assert_eq!(snapshot(device), before, "state changed after {error:?}");
    error
}

fn active(device: &Device, remote: &Device) -> [u8; 16] {
    device.session_info(remote.address()).unwrap().active_session
}

fn msg(i: usize) -> Vec<u8> {
    format!("message number {i}").into_bytes()
}

#[test]
fn basic_session_round_trip() {
    let mut rng = rng(1);
    let (mut alice, mut bob) = pair(&mut rng);
    let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"hello").unwrap();
    let got = hazmat::decrypt(&mut bob, &m, T0).unwrap();
    assert_eq!(got.plaintext.as_slice(), b"hello");
    assert_eq!(got.sender, alice.address());
    assert_eq!(got.sender_fingerprint, alice.public_identity().fingerprint());
    assert!(got.new_session);
    let r = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"hello back").unwrap();
    let got = hazmat::decrypt(&mut alice, &r, T0).unwrap();
    assert_eq!(got.plaintext.as_slice(), b"hello back");
    assert!(!got.new_session);
    assert_eq!(active(&alice, &bob), active(&bob, &alice));
    assert!(alice.session_info(bob.address()).unwrap().confirmed);
}

#[test]
fn long_session_both_directions_over_1000_messages() {
    let mut rng = rng(2);
    let (mut alice, mut bob) = pair(&mut rng);
    let mut sent = 0usize;
    // Runs of varying length in each direction, so the ratchet turns many times.
    for round in 0..120usize {
        let (from, to) =
            if round % 2 == 0 { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
        for _ in 0..(1 + round % 17) {
            let wire = hazmat::encrypt(from, &mut rng, to.address(), &msg(sent)).unwrap();
            recv(to, &wire, &msg(sent));
            sent += 1;
        }
    }
    assert!(sent >= 1000, "sent {sent}");
}

#[test]
fn out_of_order_with_shuffles_across_ratchet_turns() {
    let mut rng = rng(3);
    let (mut alice, mut bob) = established(&mut rng);
    for turn in 0..6usize {
        let (from, to) =
            if turn % 2 == 0 { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
        let mut batch: Vec<(usize, Vec<u8>)> = (0..40)
            .map(|i| {
                (i, hazmat::encrypt(from, &mut rng, to.address(), &msg(turn * 100 + i)).unwrap())
            })
            .collect();
        batch.shuffle(&mut rng);
        for (i, wire) in batch {
            recv(to, &wire, &msg(turn * 100 + i));
        }
    }
}

#[test]
fn held_back_messages_from_earlier_chains_still_decrypt() {
    let mut rng = rng(4);
    let (mut alice, mut bob) = established(&mut rng);
    let early = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"early").unwrap();
    let later = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"later").unwrap();
    recv(&mut bob, &later, b"later");
    // Two more ratchet turns before the early message arrives.
    for _ in 0..2 {
        let r = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"turn").unwrap();
        recv(&mut alice, &r, b"turn");
        let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"turn").unwrap();
        recv(&mut bob, &m, b"turn");
    }
    recv(&mut bob, &early, b"early");
}

#[test]
fn lost_messages_do_not_block_later_ones() {
    let mut rng = rng(5);
    let (mut alice, mut bob) = established(&mut rng);
    for turn in 0..10usize {
        let (from, to) =
            if turn % 2 == 0 { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
        for i in 0..20usize {
            let wire = hazmat::encrypt(from, &mut rng, to.address(), &msg(i)).unwrap();
            if (i * 7 + turn) % 3 != 0 {
                recv(to, &wire, &msg(i));
            }
        }
    }
}

#[test]
fn duplicate_message_is_reported_as_duplicate() {
    let mut rng = rng(6);
    let (mut alice, mut bob) = established(&mut rng);
    let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"once").unwrap();
    recv(&mut bob, &m, b"once");
    assert_eq!(rejected(&mut bob, &m, T0), SessionError::Duplicate);
    // Also for a message that was decrypted out of order, from the skipped keys.
    let a = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a").unwrap();
    let b = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"b").unwrap();
    recv(&mut bob, &b, b"b");
    recv(&mut bob, &a, b"a");
    assert_eq!(rejected(&mut bob, &a, T0), SessionError::Duplicate);
    assert_eq!(rejected(&mut bob, &b, T0), SessionError::Duplicate);
}

#[test]
fn forward_jump_at_limit_is_accepted_and_at_limit_plus_one_rejected() {
    let mut rng = rng(7);
    let (mut alice, mut bob) = established(&mut rng);
    let limit = DEFAULT_MAX_FORWARD_JUMP as usize;
    let wires: Vec<Vec<u8>> = (0..=limit + 1)
        .map(|i| hazmat::encrypt(&mut alice, &mut rng, bob.address(), &msg(i)).unwrap())
        .collect();
    // Counter limit+1 would skip limit+1 keys.
    let error = rejected(&mut bob, &wires[limit + 1], T0);
    assert_eq!(
        error,
        SessionError::TooFarAhead { jump: limit as u64 + 1, limit: DEFAULT_MAX_FORWARD_JUMP }
    );
    // Counter `limit` skips exactly `limit` keys.
    recv(&mut bob, &wires[limit], &msg(limit));
    assert_eq!(bob.session_info(alice.address()).unwrap().skipped_keys, limit);
    recv(&mut bob, &wires[limit + 1], &msg(limit + 1));
}

#[test]
fn configured_forward_jump_is_enforced_at_n_and_n_plus_one() {
    let mut rng = rng(8);
    let (mut alice, mut bob) = established(&mut rng);
    bob.set_max_forward_jump(10).unwrap();
    assert_eq!(bob.set_max_forward_jump(0), Err(SessionError::InvalidConfig));
    assert_eq!(
        bob.set_max_forward_jump(multidevice::consts::MAX_FORWARD_JUMP_CEILING + 1),
        Err(SessionError::InvalidConfig)
    );
    let wires: Vec<Vec<u8>> = (0..12)
        .map(|i| hazmat::encrypt(&mut alice, &mut rng, bob.address(), &msg(i)).unwrap())
        .collect();
    assert!(matches!(rejected(&mut bob, &wires[11], T0), SessionError::TooFarAhead { .. }));
    recv(&mut bob, &wires[10], &msg(10));
}

#[test]
fn counter_near_u32_max_fails_fast_without_state_change() {
    let mut rng = rng(9);
    let (mut alice, mut bob) = established(&mut rng);
    let mut wire = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"x").unwrap();
    // Counter field of a type-0x01 message: 3 + 24 + 16 + 32 = offset 75.
    wire[75..79].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(rejected(&mut bob, &wire, T0), SessionError::TooFarAhead { .. }));
}

#[test]
fn skipped_key_limit_keeps_n_and_evicts_the_oldest_at_n_plus_one() {
    let mut rng = rng(10);
    // N: exactly MAX_SKIPPED_KEYS skipped keys, all usable.
    let (mut alice, mut bob) = established(&mut rng);
    let n = MAX_SKIPPED_KEYS;
    let wires: Vec<Vec<u8>> = (0..=n)
        .map(|i| hazmat::encrypt(&mut alice, &mut rng, bob.address(), &msg(i)).unwrap())
        .collect();
    recv(&mut bob, &wires[n], &msg(n));
    assert_eq!(bob.session_info(alice.address()).unwrap().skipped_keys, n);
    for (i, wire) in wires.iter().enumerate().take(n).rev() {
        recv(&mut bob, wire, &msg(i));
    }
    assert_eq!(bob.session_info(alice.address()).unwrap().skipped_keys, 0);

    // N + 1: the oldest skipped key is discarded; every other one still works.
    let (mut alice, mut bob) = established(&mut rng);
    let wires: Vec<Vec<u8>> = (0..n + 3)
        .map(|i| hazmat::encrypt(&mut alice, &mut rng, bob.address(), &msg(i)).unwrap())
        .collect();
    recv(&mut bob, &wires[1000], &msg(1000)); // skips 0..=999
    recv(&mut bob, &wires[n + 2], &msg(n + 2)); // skips 1001..=n+1: 1001 more
    assert_eq!(bob.session_info(alice.address()).unwrap().skipped_keys, n);
    assert_eq!(rejected(&mut bob, &wires[0], T0), SessionError::Duplicate);
    for i in (1..n + 2).filter(|&i| i != 1000) {
        recv(&mut bob, &wires[i], &msg(i));
    }
}

#[test]
fn receiver_chains_are_bounded_at_n_and_n_plus_one() {
    let mut rng = rng(11);
    let (mut alice, mut bob) = pair(&mut rng);
    let mut turns = 0usize;
    let mut counts = Vec::new();
    while turns <= MAX_RECEIVER_CHAINS + 1 {
        let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"ping").unwrap();
        recv(&mut bob, &m, b"ping");
        counts.push(bob.session_info(alice.address()).unwrap().receiver_chains);
        let r = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"pong").unwrap();
        recv(&mut alice, &r, b"pong");
        turns += 1;
    }
    // Bob gains one receiving chain per turn of Alice's until the bound.
    assert_eq!(counts[MAX_RECEIVER_CHAINS - 1], MAX_RECEIVER_CHAINS);
    assert_eq!(counts[MAX_RECEIVER_CHAINS], MAX_RECEIVER_CHAINS);
    assert_eq!(counts[MAX_RECEIVER_CHAINS + 1], MAX_RECEIVER_CHAINS);
}

#[test]
fn simultaneous_initiation_converges_to_one_session() {
    let mut rng = rng(12);
    let mut alice = device(&mut rng, addr(1, 0), 3);
    let mut bob = device(&mut rng, addr(2, 0), 3);
    start_both(&mut rng, &mut alice, &mut bob);
    let a1 = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a1").unwrap();
    let b1 = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"b1").unwrap();
    recv(&mut bob, &a1, b"a1");
    recv(&mut alice, &b1, b"b1");
    assert_eq!(active(&alice, &bob), active(&bob, &alice));
    exchange_and_check(&mut rng, &mut alice, &mut bob);
}

fn start_both(rng: &mut StdRng, alice: &mut Device, bob: &mut Device) {
    let to_bob = bob.prekey_upload().bundle(Some(0)).verify().unwrap();
    let to_alice = alice.prekey_upload().bundle(Some(0)).verify().unwrap();
    hazmat::start_session(alice, rng, &to_bob).unwrap();
    hazmat::start_session(bob, rng, &to_alice).unwrap();
}

/// Several rounds both ways; every message decrypts and both sides end on one session.
fn exchange_and_check(rng: &mut StdRng, alice: &mut Device, bob: &mut Device) {
    for round in 0..4 {
        let m = hazmat::encrypt(alice, rng, bob.address(), &msg(round)).unwrap();
        recv(bob, &m, &msg(round));
        let r = hazmat::encrypt(bob, rng, alice.address(), &msg(round)).unwrap();
        recv(alice, &r, &msg(round));
    }
    assert_eq!(active(alice, bob), active(bob, alice));
    assert!(alice.session_info(bob.address()).unwrap().confirmed);
    assert!(bob.session_info(alice.address()).unwrap().confirmed);
}

#[test]
fn simultaneous_initiation_with_lost_messages_converges() {
    let mut rng = rng(13);
    let mut alice = device(&mut rng, addr(1, 0), 3);
    let mut bob = device(&mut rng, addr(2, 0), 3);
    start_both(&mut rng, &mut alice, &mut bob);
    let _lost_a1 = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a1").unwrap();
    let b1 = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"b1").unwrap();
    let _lost_b2 = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"b2").unwrap();
    let a2 = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a2").unwrap();
    recv(&mut alice, &b1, b"b1");
    recv(&mut bob, &a2, b"a2");
    // Crossing again, with another loss.
    let a3 = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a3").unwrap();
    let _lost_b3 = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"b3").unwrap();
    recv(&mut bob, &a3, b"a3");
    exchange_and_check(&mut rng, &mut alice, &mut bob);
}

#[test]
fn simultaneous_initiation_with_repeated_messages_converges() {
    let mut rng = rng(14);
    let mut alice = device(&mut rng, addr(1, 0), 3);
    let mut bob = device(&mut rng, addr(2, 0), 3);
    start_both(&mut rng, &mut alice, &mut bob);
    let a1 = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a1").unwrap();
    let b1 = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"b1").unwrap();
    recv(&mut bob, &a1, b"a1");
    recv(&mut alice, &b1, b"b1");
    assert_eq!(rejected(&mut bob, &a1, T0), SessionError::Duplicate);
    assert_eq!(rejected(&mut alice, &b1, T0), SessionError::Duplicate);
    let a2 = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a2").unwrap();
    recv(&mut bob, &a2, b"a2");
    assert_eq!(rejected(&mut bob, &a2, T0), SessionError::Duplicate);
    assert_eq!(rejected(&mut alice, &b1, T0), SessionError::Duplicate);
    exchange_and_check(&mut rng, &mut alice, &mut bob);
}

#[test]
fn repeated_initial_message_creates_no_second_session() {
    let mut rng = rng(15);
    let (mut alice, mut bob) = pair(&mut rng);
    let first = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"first").unwrap();
    recv(&mut bob, &first, b"first");
    let info = bob.session_info(alice.address()).unwrap();
    assert_eq!(rejected(&mut bob, &first, T0), SessionError::Duplicate);
    assert_eq!(bob.session_info(alice.address()).unwrap(), info);
    assert_eq!(info.archived, 0);
    // A second, distinct prekey message on the same session is processed on it.
    let second = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"second").unwrap();
    assert!(multidevice::SessionMessage::try_from(&second[..]).unwrap().is_prekey_message());
    let got = hazmat::decrypt(&mut bob, &second, T0).unwrap();
    assert!(!got.new_session);
    assert_eq!(bob.session_info(alice.address()).unwrap().archived, 0);
}

#[test]
fn session_without_one_time_prekey_works() {
    let mut rng = rng(16);
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let mut bob = device(&mut rng, addr(2, 0), 0);
    let bundle = bob.prekey_upload().bundle(Some(0));
    assert!(bundle.one_time_prekey.is_none());
    hazmat::start_session(&mut alice, &mut rng, &bundle.verify().unwrap()).unwrap();
    let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"no otk").unwrap();
    recv(&mut bob, &m, b"no otk");
    let r = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"fine").unwrap();
    recv(&mut alice, &r, b"fine");
}

#[test]
fn one_time_prekey_reused_by_second_initiator_is_rejected() {
    let mut rng = rng(17);
    let mut bob = device(&mut rng, addr(2, 0), 2);
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let mut carol = device(&mut rng, addr(3, 0), 0);
    let upload = bob.prekey_upload();
    // A malicious server hands the same one-time prekey to two initiators.
    hazmat::start_session(&mut alice, &mut rng, &upload.bundle(Some(0)).verify().unwrap()).unwrap();
    hazmat::start_session(&mut carol, &mut rng, &upload.bundle(Some(0)).verify().unwrap()).unwrap();
    let from_alice = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"alice").unwrap();
    let from_carol = hazmat::encrypt(&mut carol, &mut rng, bob.address(), b"carol").unwrap();
    assert_eq!(bob.one_time_prekeys_remaining(), 2);
    recv(&mut bob, &from_alice, b"alice");
    assert_eq!(bob.one_time_prekeys_remaining(), 1);
    let id = upload.one_time_prekeys[0].id;
    assert_eq!(rejected(&mut bob, &from_carol, T0), SessionError::UnknownOneTimePrekey(id));
    assert!(!bob.has_session(carol.address()));
}

#[test]
fn one_time_prekey_is_consumed_only_on_success() {
    let mut rng = rng(18);
    let (mut alice, mut bob) = pair(&mut rng);
    let mut wire = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"x").unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 1; // break the tag
    assert_eq!(rejected(&mut bob, &wire, T0), SessionError::AuthenticationFailed);
    assert_eq!(bob.one_time_prekeys_remaining(), 5);
    wire[last] ^= 1;
    recv(&mut bob, &wire, b"x");
    assert_eq!(bob.one_time_prekeys_remaining(), 4);
}

#[test]
fn initial_message_to_the_wrong_recipient_is_rejected() {
    let mut rng = rng(19);
    let (mut alice, mut bob) = pair(&mut rng);
    let mut carol = device(&mut rng, addr(3, 0), 5);
    let wire = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"for bob").unwrap();
    assert_eq!(
        rejected(&mut carol, &wire, T0),
        SessionError::WrongRecipient { addressed_to: bob.address() }
    );
    // The server rewrites the recipient to Carol: Carol's keys do not match the handshake.
    let mut redirected = wire.clone();
    redirected[15..27].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0]);
    let error = rejected(&mut carol, &redirected, T0);
    assert!(matches!(error, SessionError::AuthenticationFailed), "{error:?}");
    recv(&mut bob, &wire, b"for bob");
}

#[test]
fn initial_message_from_a_different_sender_than_claimed_is_rejected() {
    let mut rng = rng(20);
    let (mut alice, mut bob) = pair(&mut rng);
    let mut carol = device(&mut rng, addr(3, 0), 0);
    let carol_bundle = bob.prekey_upload().bundle(Some(1)).verify().unwrap();
    hazmat::start_session(&mut carol, &mut rng, &carol_bundle).unwrap();
    // Carol's genuine message with the sender address rewritten to Alice's.
    let mut forged = hazmat::encrypt(&mut carol, &mut rng, bob.address(), b"I am Alice").unwrap();
    forged[3..15].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(rejected(&mut bob, &forged, T0), SessionError::AuthenticationFailed);
    // Alice's genuine message with the sender rewritten to Carol's.
    let wire = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"hi").unwrap();
    let mut relabelled = wire.clone();
    relabelled[3..15].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0]);
    assert_eq!(rejected(&mut bob, &relabelled, T0), SessionError::AuthenticationFailed);
    recv(&mut bob, &wire, b"hi");
    // An impostor device claiming Alice's address with its own identity.
    let mut impostor = device(&mut rng, alice.address(), 0);
    let bundle = bob.prekey_upload().bundle(Some(2)).verify().unwrap();
    hazmat::start_session(&mut impostor, &mut rng, &bundle).unwrap();
    let fake = hazmat::encrypt(&mut impostor, &mut rng, bob.address(), b"I am Alice too").unwrap();
    assert_eq!(rejected(&mut bob, &fake, T0), SessionError::IdentityMismatch(alice.address()));
}

#[test]
fn every_bit_flip_of_a_message_is_rejected_without_state_change() {
    let mut rng = rng(21);
    let (mut alice, mut bob) = pair(&mut rng);
    let first = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"prekey message").unwrap();
    for byte in 0..first.len() {
        for bit in 0..8 {
            let mut bad = first.clone();
            bad[byte] ^= 1 << bit;
            rejected(&mut bob, &bad, T0);
        }
    }
    recv(&mut bob, &first, b"prekey message");
    let r = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"normal message").unwrap();
    for byte in 0..r.len() {
        for bit in 0..8 {
            let mut bad = r.clone();
            bad[byte] ^= 1 << bit;
            rejected(&mut alice, &bad, T0);
        }
    }
    recv(&mut alice, &r, b"normal message");
}

#[test]
fn every_failure_leaves_state_byte_identical() {
    let mut rng = rng(22);
    let (mut alice, mut bob) = established(&mut rng);
    let good = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"good").unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("header only", good[..95].to_vec()),
        ("trailing garbage is part of ciphertext", [good.clone(), vec![0]].concat()),
        ("bad version", [vec![9], good[1..].to_vec()].concat()),
        ("unknown type", [vec![1, 7], good[2..].to_vec()].concat()),
    ];
    let mut unknown_session = good.clone();
    unknown_session[27] ^= 0xff;
    cases.push(("unknown session", unknown_session));
    for (name, bytes) in &cases {
        let before = snapshot(&bob);
        assert!(hazmat::decrypt(&mut bob, bytes, T0).is_err(), "{name} accepted");
        assert_eq!(snapshot(&bob), before, "{name} changed state");
    }
    recv(&mut bob, &good, b"good");
    // A message from a device Bob has never heard of, that is not a prekey message.
    let mut stranger = good.clone();
    stranger[3..15].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0]);
    assert_eq!(rejected(&mut bob, &stranger, T0), SessionError::NoSession(addr(9, 0)));
}

#[test]
fn a_fanout_kind_message_is_refused_by_hazmat_decrypt_without_spending_a_key() {
    let mut rng = rng(35);
    let (mut alice, mut bob) = pair(&mut rng);
    let raw = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"raw").unwrap();
    assert_eq!(multidevice::SessionMessage::try_from(&raw[..]).unwrap().kind(), MessageKind::Raw);
    // The kind byte follows the version and type bytes.
    let mut direct = raw.clone();
    direct[2] = 1;
    assert_eq!(
        multidevice::SessionMessage::try_from(&direct[..]).unwrap().kind(),
        MessageKind::Direct
    );
    let prekeys = bob.one_time_prekeys_remaining();
    assert_eq!(rejected(&mut bob, &direct, T0), SessionError::WrongKind(MessageKind::Direct));
    assert_eq!(bob.one_time_prekeys_remaining(), prekeys);
    assert!(!bob.has_session(alice.address()));
    // Nothing was spent: the original raw message still decrypts.
    recv(&mut bob, &raw, b"raw");
}

#[test]
fn a_raw_message_is_refused_by_receive() {
    let mut rng = rng(36);
    let (mut alice, mut bob) = established(&mut rng);
    let raw = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"raw").unwrap();
    // The same `now` as the device's clock, so the clock latch does not move.
    let now = bob.clock();
    let before = snapshot(&bob);
    assert_eq!(
        bob.receive(&raw, None, now).unwrap_err(),
        ReceiveError::WrongKind(MessageKind::Raw)
    );
    assert_eq!(snapshot(&bob), before);
    // The message was refused before any key was derived: the raw path still reads it.
    recv(&mut bob, &raw, b"raw");
}

#[test]
fn signed_prekey_rotation_keeps_the_old_one_for_the_grace_period() {
    let mut rng = rng(23);
    let mut bob = device(&mut rng, addr(2, 0), 0);
    let old_bundle = bob.prekey_upload().bundle(None).verify().unwrap();
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let mut carol = device(&mut rng, addr(3, 0), 0);
    hazmat::start_session(&mut alice, &mut rng, &old_bundle).unwrap();
    hazmat::start_session(&mut carol, &mut rng, &old_bundle).unwrap();
    let from_alice = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"a").unwrap();
    let from_carol = hazmat::encrypt(&mut carol, &mut rng, bob.address(), b"c").unwrap();
    let rotated = bob.rotate_signed_prekey(&mut rng, T0);
    assert_ne!(rotated.id, old_bundle.bundle().signed_prekey.id);
    let grace = multidevice::consts::SIGNED_PREKEY_GRACE_SECS;
    hazmat::decrypt(&mut bob, &from_alice, T0.plus_secs(grace)).unwrap();
    // The clock high-water mark is a latch that moves even on a refusal; raise it first (with a
    // message that cannot parse), so the state comparison sees only what the refusal changes.
    let expired = T0.plus_secs(grace + 1);
    assert!(hazmat::decrypt(&mut bob, &[], expired).is_err());
    assert_eq!(bob.clock(), expired);
    assert_eq!(
        rejected(&mut bob, &from_carol, expired),
        SessionError::UnknownSignedPrekey(old_bundle.bundle().signed_prekey.id)
    );
}

#[test]
fn archived_session_decrypts_and_is_promoted() {
    let mut rng = rng(24);
    let (mut alice, mut bob) = established(&mut rng);
    let old = active(&alice, &bob);
    let late_on_old = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"late").unwrap();
    // Alice starts over with a fresh bundle; Bob accepts the new session.
    let bundle = bob.prekey_upload().bundle(Some(1)).verify().unwrap();
    hazmat::start_session(&mut alice, &mut rng, &bundle).unwrap();
    let fresh = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"fresh").unwrap();
    recv(&mut bob, &fresh, b"fresh");
    let new = active(&alice, &bob);
    assert_ne!(old, new);
    assert_eq!(active(&bob, &alice), new);
    assert_eq!(alice.session_info(bob.address()).unwrap().archived, 1);
    // The late message on the archived session decrypts and makes that session active again.
    recv(&mut alice, &late_on_old, b"late");
    assert_eq!(active(&alice, &bob), old);
    let reply = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"on old").unwrap();
    recv(&mut bob, &reply, b"on old");
    assert_eq!(active(&bob, &alice), old);
}

/// Alice opens `1 + newer` sessions with Bob; returns a message on the first one, still unread.
fn sessions_after(rng: &mut StdRng, newer: usize) -> (Device, Device, Vec<u8>) {
    let mut alice = device(rng, addr(1, 0), 0);
    let mut bob = device(rng, addr(2, 0), 0);
    let bundle = bob.prekey_upload().bundle(None).verify().unwrap();
    let mut on_first = Vec::new();
    for i in 0..=newer {
        hazmat::start_session(&mut alice, rng, &bundle).unwrap();
        let m = hazmat::encrypt(&mut alice, rng, bob.address(), &msg(i)).unwrap();
        recv(&mut bob, &m, &msg(i));
        if i == 0 {
            // Confirm the first session, so its later messages carry no setup data.
            let r = hazmat::encrypt(&mut bob, rng, alice.address(), b"ack").unwrap();
            recv(&mut alice, &r, b"ack");
            on_first = hazmat::encrypt(&mut alice, rng, bob.address(), b"old").unwrap();
        }
        assert_eq!(
            bob.session_info(alice.address()).unwrap().archived,
            i.min(MAX_ARCHIVED_SESSIONS)
        );
    }
    (alice, bob, on_first)
}

#[test]
fn archived_sessions_are_bounded_at_n_and_n_plus_one() {
    let mut rng = rng(25);
    // N archived: the first session is still held, decrypts, and is promoted.
    let (alice, mut bob, on_first) = sessions_after(&mut rng, MAX_ARCHIVED_SESSIONS);
    recv(&mut bob, &on_first, b"old");
    assert_eq!(bob.session_info(alice.address()).unwrap().archived, MAX_ARCHIVED_SESSIONS);
    // N + 1: the oldest session was dropped.
    let (alice, mut bob, on_first) = sessions_after(&mut rng, MAX_ARCHIVED_SESSIONS + 1);
    assert_eq!(rejected(&mut bob, &on_first, T0), SessionError::UnknownSession(alice.address()));
}

#[test]
fn persist_and_restore_mid_conversation_on_both_sides() {
    let mut rng = rng(26);
    let (mut alice, mut bob) = established(&mut rng);
    let in_flight_to_bob: Vec<_> = (0..3)
        .map(|i| hazmat::encrypt(&mut alice, &mut rng, bob.address(), &msg(i)).unwrap())
        .collect();
    recv(&mut bob, &in_flight_to_bob[1], &msg(1));
    let in_flight_to_alice =
        hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"from bob").unwrap();
    let mut alice = Device::from_bytes(&alice.to_bytes()).unwrap();
    let mut bob = Device::from_bytes(&bob.to_bytes()).unwrap();
    recv(&mut bob, &in_flight_to_bob[2], &msg(2));
    recv(&mut bob, &in_flight_to_bob[0], &msg(0));
    recv(&mut alice, &in_flight_to_alice, b"from bob");
    exchange_and_check(&mut rng, &mut alice, &mut bob);
    // Restored state serializes to the same bytes.
    let bytes = alice.to_bytes();
    assert_eq!(*Device::from_bytes(&bytes).unwrap().to_bytes(), *bytes);
}

#[test]
fn persisted_state_rejects_other_versions_and_trailing_bytes() {
    let mut rng = rng(27);
    let (alice, _bob) = established(&mut rng);
    let bytes = alice.to_bytes().to_vec();
    let mut other_version = bytes.clone();
    other_version[0] ^= 0x02;
    assert!(Device::from_bytes(&other_version).is_err());
    let trailing = [bytes.clone(), vec![0]].concat();
    assert!(Device::from_bytes(&trailing).is_err());
    for len in 0..bytes.len() {
        assert!(Device::from_bytes(&bytes[..len]).is_err(), "prefix {len} accepted");
    }
}

#[test]
fn persisted_session_without_skipped_keys_is_at_most_1_kib() {
    let mut rng = rng(28);
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let mut bob = device(&mut rng, addr(2, 0), 0);
    let alice_before = alice.to_bytes().len();
    let bob_before = bob.to_bytes().len();
    let bundle = bob.prekey_upload().bundle(None).verify().unwrap();
    hazmat::start_session(&mut alice, &mut rng, &bundle).unwrap();
    // Many ratchet turns so both sides hold the maximum number of receiving chains.
    for _ in 0..10 {
        let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"m").unwrap();
        recv(&mut bob, &m, b"m");
        let r = hazmat::encrypt(&mut bob, &mut rng, alice.address(), b"r").unwrap();
        recv(&mut alice, &r, b"r");
    }
    let alice_session = alice.to_bytes().len() - alice_before;
    let bob_session = bob.to_bytes().len() - bob_before;
    assert!(alice_session <= 1024, "alice's session is {alice_session} bytes");
    assert!(bob_session <= 1024, "bob's session is {bob_session} bytes");
}

#[test]
fn memory_per_session_is_bounded_at_the_skipped_key_limit() {
    let mut rng = rng(29);
    let (mut alice, mut bob) = established(&mut rng);
    let before = bob.to_bytes().len();
    // Two maximal jumps: the second evicts, so the session holds exactly the limit.
    for _ in 0..2 {
        let wires: Vec<Vec<u8>> = (0..=DEFAULT_MAX_FORWARD_JUMP)
            .map(|_| hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"j").unwrap())
            .collect();
        recv(&mut bob, wires.last().unwrap(), b"j");
    }
    assert_eq!(bob.session_info(alice.address()).unwrap().skipped_keys, MAX_SKIPPED_KEYS);
    let growth = bob.to_bytes().len() - before;
    // 32-byte ratchet key, counter (varint, at most 5 bytes), 32-byte key, framing.
    assert!(growth <= MAX_SKIPPED_KEYS * 72, "grew by {growth}");
}

#[test]
fn self_session_and_oversized_plaintext_are_refused() {
    let mut rng = rng(30);
    let (mut alice, bob) = established(&mut rng);
    let own = alice.prekey_upload().bundle(None).verify().unwrap();
    assert_eq!(hazmat::start_session(&mut alice, &mut rng, &own), Err(SessionError::SelfSession));
    let big = vec![0u8; multidevice::consts::MAX_MESSAGE_PLAINTEXT + 1];
    assert_eq!(
        hazmat::encrypt(&mut alice, &mut rng, bob.address(), &big),
        Err(SessionError::PlaintextTooLarge(big.len()))
    );
    let max = vec![0u8; multidevice::consts::MAX_MESSAGE_PLAINTEXT];
    assert!(hazmat::encrypt(&mut alice, &mut rng, bob.address(), &max).is_ok());
}

#[test]
fn one_time_prekey_limit_is_enforced_at_n_and_n_plus_one() {
    let mut rng = rng(31);
    let mut bob = device(&mut rng, addr(2, 0), 0);
    let limit = multidevice::consts::MAX_ONE_TIME_PREKEYS;
    bob.generate_one_time_prekeys(&mut rng, limit).unwrap();
    assert_eq!(bob.one_time_prekeys_remaining(), limit);
    assert_eq!(
        bob.generate_one_time_prekeys(&mut rng, 1),
        Err(SessionError::TooManyOneTimePrekeys { limit })
    );
    let upload = bob.prekey_upload();
    assert_eq!(multidevice::PrekeyUpload::try_from(&upload.to_bytes()[..]).unwrap(), upload);
}

#[test]
fn low_order_one_time_prekey_in_a_bundle_is_rejected() {
    let mut rng = rng(32);
    let mut alice = device(&mut rng, addr(1, 0), 0);
    let bob = device(&mut rng, addr(2, 0), 1);
    let mut bundle = bob.prekey_upload().bundle(Some(0));
    bundle.one_time_prekey.as_mut().unwrap().public = [0u8; 32];
    let before = snapshot(&alice);
    assert_eq!(
        hazmat::start_session(&mut alice, &mut rng, &bundle.verify().unwrap()),
        Err(SessionError::Key(KeyError::NonContributoryKey))
    );
    assert_eq!(snapshot(&alice), before);
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let mut rng = rng(33);
    let (alice, _bob) = established(&mut rng);
    let debug = format!("{alice:?}");
    assert!(debug.contains("Device"));
    assert!(!debug.contains("secret") && !debug.contains("chain_key") && !debug.contains("root"));
}

#[test]
fn restored_state_beyond_a_limit_or_non_canonical_is_rejected() {
    let mut rng = rng(34);
    let (mut alice, _bob) = established(&mut rng);
    // 23,456 encodes as the varint a0 b7 01, which occurs once in the state.
    alice.set_max_forward_jump(23_456).unwrap();
    let bytes = alice.to_bytes().to_vec();
    let at = bytes.windows(3).position(|w| w == [0xa0, 0xb7, 0x01]).unwrap();
    assert_eq!(bytes.windows(3).filter(|w| *w == [0xa0, 0xb7, 0x01]).count(), 1);
    assert!(Device::from_bytes(&bytes).is_ok());
    // A store that lifts the forward-jump bound is refused.
    let lifted = [&bytes[..at], &[0xff, 0xff, 0xff, 0xff, 0x0f], &bytes[at + 3..]].concat();
    assert!(Device::from_bytes(&lifted).is_err());
    let zero = [&bytes[..at], &[0x00], &bytes[at + 3..]].concat();
    assert!(Device::from_bytes(&zero).is_err());
    // An overlong encoding of the same value is not canonical.
    let overlong = [&bytes[..at], &[0xa0, 0xb7, 0x81, 0x00], &bytes[at + 3..]].concat();
    assert!(Device::from_bytes(&overlong).is_err());
}
