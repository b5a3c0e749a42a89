//! Message ids, retry requests and recovery from restored state, through the public API: a
//! receiver that lost its session (restored from an old backup), a sender restored from an old
//! backup, a restored companion end to end, expired one-time prekeys, missing sender keys;
//! forged, replayed and misdirected requests; every limit of the retry path at N and N + 1;
//! the stored device across restarts; and what a malicious server can do with retries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::consts::{
    DEFAULT_SENT_CACHE_AGE_SECS, DEFAULT_SENT_CACHE_ENTRIES, INLINE_THRESHOLD, MAX_RETRIES,
    MESSAGE_ID_WINDOW,
};
use multidevice::{
    AccountId, Action, Device, DeviceAddress, FanoutMessage, ReceiveError, ReceiveFailure,
    Received, RetryAnswer, RetryError, RetryReason, RetryRequest, SentCacheLimits, SessionError,
    Timestamp, VerifiedRetryRequest,
};
use rand::rngs::StdRng;
use support::world::{Account, Server, account, envelope_for, introduce, link};
use support::{T0, rng, snapshot, tick};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Alice (account 1, `alice_companions` companions) and Bob (account 2, `bob_companions`),
/// introduced, every device's prekeys uploaded.
fn world(
    seed: u64,
    alice_companions: usize,
    bob_companions: usize,
) -> (StdRng, Server, Account, Account) {
    let mut rng = rng(seed);
    let mut server = Server::default();
    let mut alice = account(&mut rng, &mut server, 1, alice_companions, T0);
    let mut bob = account(&mut rng, &mut server, 2, bob_companions, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    (rng, server, alice, bob)
}

/// A fan-out from `from` to `to`, with bundles for every device of both accounts.
fn send(
    rng: &mut StdRng,
    server: &mut Server,
    from: &mut Device,
    to: AccountId,
    payload: &[u8],
    now: Timestamp,
) -> FanoutMessage {
    let bundles = server.bundles(&[to, from.account()]);
    let sent = from.encrypt_fanout(rng, &[to], &bundles, payload, now).unwrap();
    assert!(sent.skipped.is_empty(), "{:?}", sent.skipped);
    sent
}

/// Receives `bytes` (with the fan-out's body) and returns the message's id and payload.
fn deliver(
    device: &mut Device,
    bytes: &[u8],
    body: Option<&[u8]>,
    now: Timestamp,
) -> Result<([u8; 16], Vec<u8>), ReceiveError> {
    match device.receive(bytes, body, now)? {
        Received::Message(message) => Ok((message.message_id, message.payload.to_vec())),
        Received::Group(message) => Ok((message.message_id, message.payload.to_vec())),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Delivers the envelope of `sent` for `device`, expecting the payload.
fn deliver_fanout(device: &mut Device, sent: &FanoutMessage, now: Timestamp) -> Vec<u8> {
    let bytes = envelope_for(sent, device.address()).unwrap();
    let (id, payload) = deliver(device, &bytes, sent.body.as_deref(), now).unwrap();
    assert_eq!(id, sent.message_id);
    payload
}

/// `bytes` fails at `device` and yields a retry request, which is returned.
fn ask(device: &mut Device, bytes: &[u8], now: Timestamp) -> (RetryRequest, ReceiveError) {
    let failure = device.receive_or_retry(bytes, None, now).unwrap_err();
    let ReceiveFailure { error, retry, gave_up, .. } = failure;
    assert!(!gave_up, "gave up on {error:?}");
    (*retry.unwrap_or_else(|| panic!("no retry request for {error:?}")), error)
}

/// `sender` receives the request through its one entry point.
fn verified(sender: &mut Device, request: &RetryRequest, now: Timestamp) -> VerifiedRetryRequest {
    match sender.receive(&request.to_bytes(), None, now).unwrap() {
        Received::RetryRequest(verified) => verified,
        other => panic!("expected a retry request, got {other:?}"),
    }
}

/// `sender` receives and answers the request.
fn respond(
    rng: &mut StdRng,
    sender: &mut Device,
    request: &RetryRequest,
    now: Timestamp,
) -> Result<RetryAnswer, RetryError> {
    let verified = verified(sender, request, now);
    sender.answer_retry(rng, &verified, now)
}

/// `sender` receives `request` and refuses to answer it, changing nothing but the clock mark
/// (which receiving the request moved already); returns why.
fn answer_refused(
    rng: &mut StdRng,
    sender: &mut Device,
    request: &RetryRequest,
    now: Timestamp,
) -> RetryError {
    let verified = verified(sender, request, now);
    let before = snapshot(sender);
    let error = sender.answer_retry(rng, &verified, now).unwrap_err();
    assert_eq!(snapshot(sender), before, "refusing ({error:?}) changed the sender");
    error
}

/// The answer delivered at `device`: its message id and payload.
fn take_answer(device: &mut Device, answer: &RetryAnswer, now: Timestamp) -> ([u8; 16], Vec<u8>) {
    assert_eq!(answer.envelope.recipient, device.address());
    let (id, payload) =
        deliver(device, &answer.envelope.bytes, answer.body.as_deref(), now).unwrap();
    assert_eq!(id, answer.message_id);
    (id, payload)
}

/// `bytes` is received again at `device` as the message it already delivered.
fn redelivered(
    device: &mut Device,
    bytes: &[u8],
    body: Option<&[u8]>,
    now: Timestamp,
    id: [u8; 16],
) {
    match device.receive(bytes, body, now).unwrap() {
        Received::Redelivered(again) => assert_eq!(again.message_id, id),
        other => panic!("expected a redelivery, got {other:?}"),
    }
}

/// Bob's primary and Alice's primary on a confirmed session (one message each way).
fn confirmed(rng: &mut StdRng, server: &mut Server, alice: &mut Account, bob: &mut Account) {
    let hello = send(rng, server, &mut alice.devices[0], AccountId(2), b"hello", T0);
    for device in &mut bob.devices {
        deliver_fanout(device, &hello, T0);
    }
    for device in &mut alice.devices[1..] {
        deliver_fanout(device, &hello, T0);
    }
    let back = send(rng, server, &mut bob.devices[0], AccountId(1), b"hello back", T0);
    for device in &mut alice.devices {
        deliver_fanout(device, &back, T0);
    }
    for device in &mut bob.devices[1..] {
        deliver_fanout(device, &back, T0);
    }
}

// ---------------------------------------------------------------------------------------------
// Lost session at the receiver
// ---------------------------------------------------------------------------------------------

/// Bob restored from a backup taken before he had any session with Alice: her next message
/// fails, he asks, she answers on a fresh session, and he delivers it once. A second answer and
/// the original arriving again are redeliveries.
#[test]
fn a_receiver_restored_from_before_the_session_recovers_the_message_once() {
    let (mut rng, mut server, mut alice, mut bob) = world(1, 0, 0);
    let backup = bob.devices[0].to_bytes();
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    bob.devices[0] = Device::from_bytes(&backup).unwrap();

    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"lost?", T0);
    let original = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (request, error) = ask(&mut bob.devices[0], &original, T0);
    assert!(RetryReason::for_error(&error).is_some(), "{error:?}");
    assert_eq!(request.count, 1);
    assert_eq!(request.requester, bob.devices[0].address());
    assert_eq!(request.sender, alice.devices[0].address());
    assert_eq!(request.message_ref, original[original.len() - 16..]);

    let first = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert_eq!(first.message_id, sent.message_id);
    assert_eq!(take_answer(&mut bob.devices[0], &first, T0).1, b"lost?");

    // The original again: still unreadable, asked again (count 2); answered, redelivered.
    let (again, _) = ask(&mut bob.devices[0], &original, T0);
    assert_eq!(again.count, 2);
    let second = respond(&mut rng, &mut alice.devices[0], &again, T0).unwrap();
    redelivered(&mut bob.devices[0], &second.envelope.bytes, None, T0, sent.message_id);
    // The server replays the first answer: a duplicate, and nothing to ask.
    let failure = bob.devices[0].receive_or_retry(&first.envelope.bytes, None, T0).unwrap_err();
    assert!(failure.retry.is_none() && !failure.gave_up, "{failure:?}");

    // Later messages flow both ways on the fresh session.
    let next = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"next", T0);
    assert_eq!(deliver_fanout(&mut bob.devices[0], &next, T0), b"next");
    let reply = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), b"reply", T0);
    assert_eq!(deliver_fanout(&mut alice.devices[0], &reply, T0), b"reply");
}

/// Bob restored from a backup taken after the session existed but before later ratchet steps:
/// Alice's messages on the newer chain fail, and each is recovered.
#[test]
fn a_receiver_restored_from_before_later_ratchet_steps_recovers_every_message() {
    let (mut rng, mut server, mut alice, mut bob) = world(2, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let backup = bob.devices[0].to_bytes();
    for round in 0..3u8 {
        let a = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), &[round], T0);
        deliver_fanout(&mut bob.devices[0], &a, T0);
        let b = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), &[round], T0);
        deliver_fanout(&mut alice.devices[0], &b, T0);
    }
    bob.devices[0] = Device::from_bytes(&backup).unwrap();
    let mut delivered = Vec::new();
    for payload in [b"one".as_slice(), b"two", b"three"] {
        let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), payload, T0);
        let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
        match bob.devices[0].receive_or_retry(&bytes, None, T0) {
            Ok(Received::Message(message)) => delivered.push(message.payload.to_vec()),
            Ok(other) => panic!("{other:?}"),
            Err(failure) => {
                let request = failure.retry.unwrap();
                let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
                delivered.push(take_answer(&mut bob.devices[0], &answer, T0).1);
            }
        }
    }
    assert_eq!(delivered, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
}

// ---------------------------------------------------------------------------------------------
// A sender restored from an old backup
// ---------------------------------------------------------------------------------------------

/// Alice restored from a backup: her next message reuses a spent key, which Bob refuses as a
/// duplicate and asks for; the restored Alice answers from her cache (the message was sent after
/// the restore), Bob delivers it, and her later messages flow on the fresh session.
#[test]
fn a_sender_restored_from_an_old_backup_recovers_through_its_own_cache() {
    let (mut rng, mut server, mut alice, mut bob) = world(3, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let backup = alice.devices[0].to_bytes();
    for payload in [b"a".as_slice(), b"b"] {
        let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), payload, T0);
        deliver_fanout(&mut bob.devices[0], &sent, T0);
    }
    alice.devices[0] = Device::from_bytes(&backup).unwrap();

    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"after", T0);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (request, error) = ask(&mut bob.devices[0], &bytes, T0);
    // The restored ratchet turns again from the backup's state: a chain Bob does not hold.
    assert_eq!(error, ReceiveError::Session(SessionError::NoReceivingChain));
    assert_eq!(request.reason, RetryReason::SessionLost);
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert_eq!(take_answer(&mut bob.devices[0], &answer, T0), (sent.message_id, b"after".to_vec()));

    for payload in [b"later".as_slice(), b"and later"] {
        let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), payload, T0);
        assert_eq!(deliver_fanout(&mut bob.devices[0], &sent, T0), payload);
    }
    let reply = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), b"reply", T0);
    assert_eq!(deliver_fanout(&mut alice.devices[0], &reply, T0), b"reply");
}

/// The issue's story: Alice's companion is restored from an older backup. Bob's messages to it
/// recover without user action, and so do the companion's own messages, to Bob and (as own
/// copies) to Alice's primary.
#[test]
fn a_restored_companion_recovers_both_directions_without_user_action() {
    let (mut rng, mut server, mut alice, mut bob) = world(4, 1, 0);
    let companion = alice.devices[1].address();
    // Everyone talks, including the companion.
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let from_companion =
        send(&mut rng, &mut server, &mut alice.devices[1], AccountId(2), b"from tablet", T0);
    deliver_fanout(&mut bob.devices[0], &from_companion, T0);
    deliver_fanout(&mut alice.devices[0], &from_companion, T0);
    let backup = alice.devices[1].to_bytes();
    // More traffic turns every ratchet past the backup.
    for round in 0..2u8 {
        let b = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), &[round], T0);
        for device in &mut alice.devices {
            deliver_fanout(device, &b, T0);
        }
        let c = send(&mut rng, &mut server, &mut alice.devices[1], AccountId(2), &[round], T0);
        deliver_fanout(&mut bob.devices[0], &c, T0);
        deliver_fanout(&mut alice.devices[0], &c, T0);
    }
    alice.devices[1] = Device::from_bytes(&backup).unwrap();

    // Bob to Alice: the companion asks, Bob answers, delivered once.
    let sent = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), b"to all", T0);
    deliver_fanout(&mut alice.devices[0], &sent, T0);
    let bytes = envelope_for(&sent, companion).unwrap();
    let (request, _) = ask(&mut alice.devices[1], &bytes, T0);
    let answer_bob = respond(&mut rng, &mut bob.devices[0], &request, T0).unwrap();
    assert_eq!(take_answer(&mut alice.devices[1], &answer_bob, T0).1, b"to all");

    // The companion to Bob, with an own copy to the primary: both ask, it answers both.
    let own = send(&mut rng, &mut server, &mut alice.devices[1], AccountId(2), b"mine", T0);
    let (primary, rest) = alice.devices.split_at_mut(1);
    for peer in [&mut bob.devices[0], &mut primary[0]] {
        let bytes = envelope_for(&own, peer.address()).unwrap();
        let payload = match peer.receive_or_retry(&bytes, None, T0) {
            Ok(Received::Message(message)) => message.payload.to_vec(),
            Ok(other) => panic!("{other:?}"),
            Err(failure) => {
                let request = failure.retry.unwrap();
                let answer = respond(&mut rng, &mut rest[0], &request, T0).unwrap();
                take_answer(peer, &answer, T0).1
            }
        };
        assert_eq!(payload, b"mine");
    }
    // And everything flows afterwards, in every direction.
    let next = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), b"next", T0);
    for device in &mut alice.devices {
        assert_eq!(deliver_fanout(device, &next, T0), b"next");
    }
    let next = send(&mut rng, &mut server, &mut alice.devices[1], AccountId(2), b"next 2", T0);
    assert_eq!(deliver_fanout(&mut bob.devices[0], &next, T0), b"next 2");
    let bytes = envelope_for(&next, alice.devices[0].address()).unwrap();
    match alice.devices[0].receive(&bytes, None, T0) {
        Ok(Received::Message(message)) => assert_eq!(message.payload.as_slice(), b"next 2"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Prekeys and sender keys
// ---------------------------------------------------------------------------------------------

/// A one-time prekey gone before the initial message arrives (the server handed it to two
/// initiators; or it expired): the message asks for a retry, answered on the signed prekey.
#[test]
fn an_initial_message_naming_a_spent_or_expired_one_time_prekey_is_recovered() {
    let (mut rng, server, mut alice, mut bob) = world(5, 1, 0);
    let bob_address = bob.devices[0].address();
    // The server hands the same one-time prekey to both of Alice's devices.
    let bundle = server.old_bundle(bob_address, 0, Some(0));
    let first = alice.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], std::slice::from_ref(&bundle), b"first", T0)
        .unwrap();
    deliver_fanout(&mut bob.devices[0], &first, T0);
    let second = alice.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"second", T0)
        .unwrap();
    let bytes = envelope_for(&second, bob_address).unwrap();
    let (request, error) = ask(&mut bob.devices[0], &bytes, T0);
    assert!(matches!(error, ReceiveError::Session(SessionError::UnknownOneTimePrekey(_))));
    assert_eq!(request.reason, RetryReason::PrekeyGone);
    let answer = respond(&mut rng, &mut alice.devices[1], &request, T0).unwrap();
    assert_eq!(take_answer(&mut bob.devices[0], &answer, T0).1, b"second");

    // Expired: a bundle fetched at T0, used a month and a day later.
    let late = T0.plus_secs(multidevice::consts::ONE_TIME_PREKEY_LIFETIME_SECS + 1);
    let (mut rng2, mut server2, mut carol, mut dave) = world(6, 0, 0);
    let dave_address = dave.devices[0].address();
    let bundle = server2.bundle(dave_address);
    tick(&mut dave.devices[0], late);
    let sent = carol.devices[0]
        .encrypt_fanout(&mut rng2, &[AccountId(2)], &[bundle], b"late", late)
        .unwrap();
    let bytes = envelope_for(&sent, dave_address).unwrap();
    let (request, error) = ask(&mut dave.devices[0], &bytes, late);
    assert!(matches!(error, ReceiveError::Session(SessionError::UnknownOneTimePrekey(_))));
    let _ = &mut server2;
    let answer = respond(&mut rng2, &mut carol.devices[0], &request, late).unwrap();
    assert_eq!(take_answer(&mut dave.devices[0], &answer, late).1, b"late");
}

/// A group message whose sender key never arrived: the receiver asks, the sender answers with
/// a pairwise copy (kind GroupCopy) delivered as the group message, the late distribution and
/// the original are then nothing new, and the next group send gives the receiver the key.
#[test]
fn a_missing_sender_key_is_answered_pairwise_and_the_next_send_redistributes_it() {
    let (mut rng, mut server, mut alice, mut bob) = world(7, 0, 1);
    let group = alice.devices[0].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send = alice.devices[0].encrypt_group(&mut rng, group, &bundles, b"group hi", T0).unwrap();
    let bob0 = bob.devices[0].address();
    // Bob's companion gets the key and the message; his primary only the message.
    let bob1 = &mut bob.devices[1];
    let key = &send.distribution.iter().find(|e| e.recipient == bob1.address()).unwrap().bytes;
    bob1.receive(key, None, T0).unwrap();
    assert_eq!(deliver(bob1, &send.message, None, T0).unwrap().1, b"group hi");

    let (request, error) = ask(&mut bob.devices[0], &send.message, T0);
    assert_eq!(error, ReceiveError::NoSenderKey { group, sender: alice.devices[0].address() });
    assert_eq!(request.reason, RetryReason::NoSenderKey);
    assert_eq!(request.message_ref, send.message[send.message.len() - 16..]);
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert!(answer.body.is_none());
    match bob.devices[0].receive(&answer.envelope.bytes, None, T0).unwrap() {
        Received::Group(message) => {
            assert_eq!(message.group, group);
            assert_eq!(message.sender, alice.devices[0].address());
            assert_eq!(message.message_id, send.message_id);
            assert_eq!(
                message.membership_digest,
                group.membership_digest(&[AccountId(1), AccountId(2)])
            );
            assert_eq!(message.payload.as_slice(), b"group hi");
        }
        other => panic!("expected the group message, got {other:?}"),
    }
    // The distribution arrives late; the original message is then a redelivery.
    let key = &send.distribution.iter().find(|e| e.recipient == bob0).unwrap().bytes;
    bob.devices[0].receive(key, None, T0).unwrap();
    redelivered(&mut bob.devices[0], &send.message, None, T0, send.message_id);
    // Replayed again, the group message (and the answer) ask for nothing.
    for replay in [&send.message, &answer.envelope.bytes] {
        let failure = bob.devices[0].receive_or_retry(replay, None, T0).unwrap_err();
        assert_eq!(failure.error, ReceiveError::Session(SessionError::Duplicate));
        assert!(failure.retry.is_none() && !failure.gave_up);
    }
    // The next send gives Bob's primary the key again, and only him.
    let next = alice.devices[0].encrypt_group(&mut rng, group, &[], b"next", T0).unwrap();
    let reached: Vec<DeviceAddress> = next.distribution.iter().map(|e| e.recipient).collect();
    assert_eq!(reached, [bob0]);
    bob.devices[0].receive(&next.distribution[0].bytes, None, T0).unwrap();
    assert_eq!(deliver(&mut bob.devices[0], &next.message, None, T0).unwrap().1, b"next");
    assert_eq!(deliver(&mut bob.devices[1], &next.message, None, T0).unwrap().1, b"next");
}

/// A device answered for a group message stays a holder of the sender key (the next send gives
/// it the current key again), so once it is removed the next send rotates, and the key it got
/// late (its distribution withheld, then delivered) reads nothing sent after the removal.
#[test]
fn a_device_answered_for_a_group_message_is_still_rotated_out_when_removed() {
    let (mut rng, mut server, mut alice, mut bob) = world(66, 0, 1);
    let group = alice.devices[0].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut rng, group, &bundles, b"m0", T0).unwrap();
    let bob1 = bob.devices[1].address();
    // The server withholds the companion's distribution; it asks and is answered pairwise.
    let (request, _) = ask(&mut bob.devices[1], &first.message, T0);
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert_eq!(take_answer(&mut bob.devices[1], &answer, T0).1, b"m0");
    // The withheld distribution arrives late: the companion holds the key after all.
    let late = &first.distribution.iter().find(|e| e.recipient == bob1).unwrap().bytes;
    bob.devices[1].receive(late, None, T0).unwrap();
    // Bob removes the companion before Alice sends again; her next send rotates, and the
    // companion reads nothing under the key it got late.
    let list = bob.devices[0].remove_companion(bob1.device, T0).unwrap();
    server.publish(&list);
    alice.devices[0].process_device_list(&list.to_bytes(), T0).unwrap();
    let third = alice.devices[0].encrypt_group(&mut rng, group, &[], b"after", T0).unwrap();
    assert!(third.rotated);
    assert!(third.distribution.iter().all(|e| e.recipient != bob1));
    assert!(bob.devices[1].receive(&third.message, None, T0).is_err());
}

/// A group sender restored from an old backup reuses sender-key iterations: receivers refuse
/// them as duplicates and ask; the answer is a pairwise copy.
#[test]
fn a_group_sender_restored_from_an_old_backup_is_recovered_pairwise() {
    let (mut rng, mut server, mut alice, mut bob) = world(8, 0, 0);
    let group = alice.devices[0].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut rng, group, &bundles, b"1", T0).unwrap();
    bob.devices[0].receive(&first.distribution[0].bytes, None, T0).unwrap();
    deliver(&mut bob.devices[0], &first.message, None, T0).unwrap();
    let backup = alice.devices[0].to_bytes();
    let second = alice.devices[0].encrypt_group(&mut rng, group, &[], b"2", T0).unwrap();
    deliver(&mut bob.devices[0], &second.message, None, T0).unwrap();
    alice.devices[0] = Device::from_bytes(&backup).unwrap();
    let again = alice.devices[0].encrypt_group(&mut rng, group, &[], b"2 again", T0).unwrap();
    let (request, error) = ask(&mut bob.devices[0], &again.message, T0);
    assert_eq!(error, ReceiveError::Session(SessionError::Duplicate));
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert_eq!(take_answer(&mut bob.devices[0], &answer, T0).1, b"2 again");
}

/// Alice restored from a backup taken in the middle of a sending chain: her next message reuses
/// the very key of one Bob delivered (a duplicate, `KeyReused`), and is recovered.
#[test]
fn a_sender_restored_mid_chain_reuses_a_spent_key_and_is_recovered() {
    let (mut rng, mut server, mut alice, mut bob) = world(9, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let a = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"a", T0);
    deliver_fanout(&mut bob.devices[0], &a, T0);
    let backup = alice.devices[0].to_bytes();
    let b = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"b", T0);
    deliver_fanout(&mut bob.devices[0], &b, T0);
    alice.devices[0] = Device::from_bytes(&backup).unwrap();
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"c", T0);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (request, error) = ask(&mut bob.devices[0], &bytes, T0);
    assert_eq!(error, ReceiveError::Session(SessionError::Duplicate));
    assert_eq!(request.reason, RetryReason::KeyReused);
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert_eq!(take_answer(&mut bob.devices[0], &answer, T0).1, b"c");
    let next = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"d", T0);
    assert_eq!(deliver_fanout(&mut bob.devices[0], &next, T0), b"d");
}

// ---------------------------------------------------------------------------------------------
// Forged, replayed and misdirected requests
// ---------------------------------------------------------------------------------------------

/// Byte offsets of a retry request's fields (after the version and type bytes).
const REQUESTER: usize = 2;
const SENDER: usize = 14;
const REF: usize = 26;
const COUNT: usize = 42;
const REASON: usize = 43;
const ISSUED: usize = 44;
const SPK: usize = 52;
const SIGNATURE: usize = 152;
const REQUEST_LEN: usize = 216;

/// Signs `bytes` (a request whose signature is replaced) with `signer`'s identity key.
fn resign(signer: &Device, bytes: &[u8]) -> Vec<u8> {
    use ed25519_dalek::{Signer, SigningKey};
    let secrets = multidevice::test_support::identity_secrets(signer);
    let key = SigningKey::from_bytes(&secrets.signing_seed);
    let message = [&b"multidevice/v1/sig/retry-request\0"[..], &bytes[..SIGNATURE]].concat();
    [&bytes[..SIGNATURE], &key.sign(&message).to_bytes()[..]].concat()
}

/// A request `device` signs by hand, for the envelope ending in `message_ref` from `sender`:
/// what the device's own key can sign, for an envelope it would not ask about itself (one it
/// delivered).
fn signed_request(
    device: &Device,
    sender: DeviceAddress,
    message_ref: &[u8],
    count: u8,
) -> RetryRequest {
    let spk = device.prekey_upload().signed_prekey;
    let mut bytes = vec![0x01, 0x60];
    bytes.extend_from_slice(&addr_bytes(device.address()));
    bytes.extend_from_slice(&addr_bytes(sender));
    bytes.extend_from_slice(message_ref);
    bytes.extend_from_slice(&[count, 2]);
    bytes.extend_from_slice(&device.clock().0.to_be_bytes());
    bytes.extend_from_slice(&spk.id.to_be_bytes());
    bytes.extend_from_slice(&spk.public);
    bytes.extend_from_slice(&spk.signature);
    bytes.extend_from_slice(&[0; 64]);
    RetryRequest::try_from(resign(device, &bytes).as_slice()).unwrap()
}

/// Alice sent Bob's primary (and companion) one message that his primary could not read, and
/// holds his genuine request for it.
fn lost_message(seed: u64) -> (StdRng, Server, Account, Account, FanoutMessage, RetryRequest) {
    let (mut rng, mut server, mut alice, mut bob) = world(seed, 0, 1);
    let backup = bob.devices[0].to_bytes();
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    bob.devices[0] = Device::from_bytes(&backup).unwrap();
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"m", T0);
    deliver_fanout(&mut bob.devices[1], &sent, T0);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (request, _) = ask(&mut bob.devices[0], &bytes, T0);
    (rng, server, alice, bob, sent, request)
}

/// A request refused at the sender's entry point leaves it byte-identical (the clock mark
/// raised first): no session made, nothing counted.
fn refused(sender: &mut Device, bytes: &[u8]) -> ReceiveError {
    tick(sender, T0);
    let before = snapshot(sender);
    let error = sender.receive(bytes, None, T0).unwrap_err();
    assert_eq!(snapshot(sender), before, "a refused request changed the sender: {error:?}");
    error
}

#[test]
fn a_retry_request_has_a_fixed_layout_signed_by_the_requester() {
    let (_, _, _, bob, _, request) = lost_message(20);
    let bytes = request.to_bytes();
    assert_eq!(bytes.len(), REQUEST_LEN);
    assert_eq!(bytes[..2], [0x01, 0x60]);
    assert_eq!(RetryRequest::try_from(bytes.as_slice()).unwrap(), request);
    assert_eq!(bytes[REQUESTER..SENDER], addr_bytes(bob.devices[0].address()));
    assert_eq!(bytes[REF..COUNT], request.message_ref);
    assert_eq!(bytes[COUNT], 1);
    assert_eq!(bytes[REASON], 1, "no session: reason 1");
    assert_eq!(bytes[ISSUED..SPK], T0.0.to_be_bytes());
    assert_eq!(resign(&bob.devices[0], &bytes), bytes, "Ed25519 over label || 0 || the rest");
}

/// The 12-byte wire form of an address.
fn addr_bytes(address: DeviceAddress) -> Vec<u8> {
    [&address.account.0.to_be_bytes()[..], &address.device.0.to_be_bytes()].concat()
}

/// Forged requests: a flipped signature, every field tampered with, a request signed by another
/// device of the same account naming Bob's primary, and a signed prekey the identity never
/// signed. Each is refused with a typed error and the sender is byte-identical.
#[test]
fn forged_retry_requests_are_refused_and_churn_no_session() {
    let (_, _, mut alice, bob, _, request) = lost_message(21);
    let sender = &mut alice.devices[0];
    let bytes = request.to_bytes();
    let bad_signature = |error: &ReceiveError| {
        assert_eq!(
            *error,
            ReceiveError::Session(SessionError::Key(multidevice::KeyError::BadSignature(
                multidevice::SignatureKind::RetryRequest
            )))
        );
        assert_eq!(error.action(), Action::Drop);
    };
    let mut flipped = bytes.clone();
    flipped[REQUEST_LEN - 1] ^= 1;
    bad_signature(&refused(sender, &flipped));
    for at in [REF, REF + 15, ISSUED + 7, SPK, SPK + 40, SIGNATURE - 1] {
        let mut tampered = bytes.clone();
        tampered[at] ^= 1;
        bad_signature(&refused(sender, &tampered));
    }
    // A count or reason changed to another valid value: still the signature.
    for (at, value) in [(COUNT, 2), (REASON, 2)] {
        let mut tampered = bytes.clone();
        tampered[at] = value;
        bad_signature(&refused(sender, &tampered));
    }
    // Out of range: refused when parsed.
    for (at, value) in [(COUNT, 0), (COUNT, 6), (REASON, 0), (REASON, 6)] {
        let mut tampered = bytes.clone();
        tampered[at] = value;
        let error = refused(sender, &tampered);
        assert_eq!(
            error,
            ReceiveError::Session(SessionError::Decode(multidevice::DecodeError::OutOfRange))
        );
    }
    // Bob's companion signs a request naming Bob's primary: the signature is not the primary's.
    let mut other = bytes.clone();
    other = resign(&bob.devices[1], &other);
    bad_signature(&refused(sender, &other));
    // Bob's companion names itself, with the primary's signed prekey: the request is properly
    // signed, the prekey's signature is not its identity's.
    let mut requester = bytes.clone();
    requester[REQUESTER..SENDER].copy_from_slice(&addr_bytes(bob.devices[1].address()));
    let requester = resign(&bob.devices[1], &requester);
    let error = refused(sender, &requester);
    assert_eq!(
        error,
        ReceiveError::Session(SessionError::Key(multidevice::KeyError::BadSignature(
            multidevice::SignatureKind::SignedPrekey
        )))
    );
}

/// A request naming another sender is refused at the entry point (`WrongRecipient`); one from
/// an address no list names is `UnlistedSender`; one that names the receiver as its own
/// requester is `SelfSession`.
#[test]
fn a_request_for_another_sender_or_from_an_unlisted_address_is_refused() {
    let (mut rng, mut server, mut alice, bob, _, request) = lost_message(22);
    let bytes = request.to_bytes();
    // Bob's companion is not the sender it names.
    let mut companion = bob.devices;
    let error = refused(&mut companion[1], &bytes);
    assert_eq!(
        error,
        ReceiveError::Session(SessionError::WrongRecipient {
            addressed_to: alice.devices[0].address()
        })
    );
    // Alice's second device (not linked; an address no list names) signs a request.
    let mut stranger = Device::new(&mut rng, support::addr(2, 7), T0);
    stranger.process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    let mut forged = bytes.clone();
    forged[REQUESTER..SENDER].copy_from_slice(&addr_bytes(stranger.address()));
    let forged = resign(&stranger, &forged);
    let error = refused(&mut alice.devices[0], &forged);
    assert_eq!(error, ReceiveError::UnlistedSender(stranger.address()));
    assert_eq!(error.action(), Action::FetchList(AccountId(2)));
    // The sender named as the requester.
    let mut own = bytes.clone();
    own[REQUESTER..SENDER].copy_from_slice(&addr_bytes(alice.devices[0].address()));
    let own = resign(&alice.devices[0], &own);
    let error = refused(&mut alice.devices[0], &own);
    assert_eq!(error, ReceiveError::Session(SessionError::SelfSession));
    let _ = &mut server;
}

/// A genuine request answered once: replayed, it is `Replayed`, and the sender is unchanged
/// (no fresh session). A higher count from the receiver is answered again.
#[test]
fn a_replayed_request_is_refused_without_a_new_session() {
    let (mut rng, _, mut alice, bob, sent, request) = lost_message(23);
    let bob0 = bob.devices[0].address();
    let sender = &mut alice.devices[0];
    respond(&mut rng, sender, &request, T0).unwrap();
    let session = sender.session_info(bob0).unwrap();
    let error = answer_refused(&mut rng, sender, &request, T0);
    assert_eq!(error, RetryError::Replayed);
    assert_eq!(error.action(), Action::Drop);
    assert_eq!(sender.session_info(bob0).unwrap(), session);
    let _ = sent;
}

/// The requester's companion was removed after the message: its request, verified before the
/// removal, is refused once the sender holds the new list (`NotAuthorized`), and one arriving
/// after is refused at the entry point.
#[test]
fn a_request_from_a_removed_companion_is_not_authorized() {
    let (mut rng, mut server, mut alice, mut bob) = world(24, 0, 1);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    bob.devices[1].delete_sessions(alice.devices[0].address());
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"m", T0);
    let bytes = envelope_for(&sent, bob.devices[1].address()).unwrap();
    let (request, _) = ask(&mut bob.devices[1], &bytes, T0);
    let verified = verified(&mut alice.devices[0], &request, T0);
    let removed = bob.devices[1].address();
    let removal = bob.devices[0].remove_companion(removed.device, T0).unwrap();
    server.publish(&removal);
    alice.devices[0].process_device_list(&removal.to_bytes(), T0).unwrap();
    let before = snapshot(&alice.devices[0]);
    let error = alice.devices[0].answer_retry(&mut rng, &verified, T0).unwrap_err();
    assert_eq!(error, RetryError::NotAuthorized(bob.devices[1].address()));
    assert_eq!(error.action(), Action::FetchList(AccountId(2)));
    assert_eq!(snapshot(&alice.devices[0]), before);
    let error = refused(&mut alice.devices[0], &request.to_bytes());
    assert_eq!(error, ReceiveError::UnlistedSender(bob.devices[1].address()));
}

/// A request for a message the requester was never sent: Bob's companion names the envelope
/// Alice sent his primary. `NotCached`, and nothing changes.
#[test]
fn a_request_for_a_message_the_requester_was_never_sent_is_not_cached() {
    let (mut rng, _, mut alice, mut bob, sent, _) = lost_message(25);
    let primary_envelope = envelope_for(&sent, bob.devices[0].address()).unwrap();
    // The companion fails on its primary's envelope (wrong recipient is not recoverable), so
    // it signs the request by hand.
    let tail = &primary_envelope[primary_envelope.len() - 16..];
    let request = signed_request(&bob.devices[1], alice.devices[0].address(), tail, 1);
    let error = answer_refused(&mut rng, &mut alice.devices[0], &request, T0);
    assert_eq!(error, RetryError::NotCached);
    assert_eq!(error.action(), Action::Drop);
    let _ = &mut bob;
}

// ---------------------------------------------------------------------------------------------
// Limits at N and N + 1
// ---------------------------------------------------------------------------------------------

/// `MAX_RETRIES` at the receiver: five requests for one failed envelope, counted 1 to 5; the
/// sixth failure asks nothing and reports `gave_up`, and changes nothing but the clock mark.
#[test]
fn the_receiver_asks_max_retries_times_then_gives_up() {
    let (_, _, _, mut bob, sent, first) = lost_message(30);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    assert_eq!(first.count, 1);
    for count in 2..=MAX_RETRIES {
        let (request, _) = ask(&mut bob.devices[0], &bytes, T0);
        assert_eq!(usize::from(request.count), count);
    }
    tick(&mut bob.devices[0], T0);
    let before = snapshot(&bob.devices[0]);
    let failure = bob.devices[0].receive_or_retry(&bytes, None, T0).unwrap_err();
    assert!(failure.retry.is_none());
    assert!(failure.gave_up);
    assert!(RetryReason::for_error(&failure.error).is_some());
    assert_eq!(snapshot(&bob.devices[0]), before);
}

/// `MAX_RETRIES` at the sender: requests counted 1 to 5 are each answered on a fresh session;
/// after the fifth answer, any request for the message is `GaveUp` (ask the user).
#[test]
fn the_sender_answers_max_retries_times_then_gives_up() {
    let (mut rng, _, mut alice, mut bob, sent, first) = lost_message(31);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let mut requests = vec![first];
    for _ in 1..MAX_RETRIES {
        requests.push(ask(&mut bob.devices[0], &bytes, T0).0);
    }
    let mut sessions = Vec::new();
    for request in &requests {
        let answer = respond(&mut rng, &mut alice.devices[0], request, T0).unwrap();
        assert_eq!(answer.message_id, sent.message_id);
        sessions
            .push(alice.devices[0].session_info(bob.devices[0].address()).unwrap().active_session);
    }
    sessions.dedup();
    assert_eq!(sessions.len(), MAX_RETRIES, "every answer on a fresh session");
    let error = answer_refused(&mut rng, &mut alice.devices[0], &requests[MAX_RETRIES - 1], T0);
    assert_eq!(error, RetryError::GaveUp { message_id: sent.message_id });
    assert_eq!(error.action(), Action::AskUser);
}

/// Bob lost his session with Alice and asked twice for her first message; she then sends
/// `later` more messages. Returns the two requests.
fn asked_twice_then(
    rng: &mut StdRng,
    server: &mut Server,
    alice: &mut Account,
    bob: &mut Account,
    later: usize,
    now: Timestamp,
) -> (RetryRequest, RetryRequest) {
    confirmed(rng, server, alice, bob);
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let sent = send(rng, server, &mut alice.devices[0], AccountId(2), b"first", now);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let first = ask(&mut bob.devices[0], &bytes, now).0;
    let second = ask(&mut bob.devices[0], &bytes, now).0;
    for i in 0..later {
        alice.devices[0].encrypt_fanout(rng, &[AccountId(2)], &[], &i.to_be_bytes(), now).unwrap();
    }
    (first, second)
}

/// The default entry bound, `DEFAULT_SENT_CACHE_ENTRIES`: a message with 255 sent after it is
/// answered; with 256 after it, it was wiped (`NotCached`).
#[test]
fn the_sent_cache_keeps_the_default_number_of_entries_at_n_and_n_plus_one() {
    let (mut rng, mut server, mut alice, mut bob) = world(32, 0, 0);
    let n = usize::try_from(DEFAULT_SENT_CACHE_ENTRIES).unwrap();
    // `first` and the n - 1 sent after it: n entries (the greeting before them is wiped).
    let (first, second) = asked_twice_then(&mut rng, &mut server, &mut alice, &mut bob, n - 1, T0);
    respond(&mut rng, &mut alice.devices[0], &first, T0).unwrap();
    alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"n+1", T0).unwrap();
    let error = respond(&mut rng, &mut alice.devices[0], &second, T0).unwrap_err();
    assert_eq!(error, RetryError::NotCached);
}

/// A configured entry bound: 3 kept, the oldest wiped at the fourth.
#[test]
fn the_sent_cache_keeps_a_configured_number_of_entries_at_n_and_n_plus_one() {
    let (mut rng, mut server, mut alice, mut bob) = world(33, 0, 0);
    let limits = SentCacheLimits { max_entries: 3, ..SentCacheLimits::default() };
    alice.devices[0].set_sent_cache_limits(limits);
    let (first, second) = asked_twice_then(&mut rng, &mut server, &mut alice, &mut bob, 2, T0);
    respond(&mut rng, &mut alice.devices[0], &first, T0).unwrap();
    alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"4th", T0).unwrap();
    assert_eq!(
        respond(&mut rng, &mut alice.devices[0], &second, T0).unwrap_err(),
        RetryError::NotCached
    );
}

/// The default age bound, `DEFAULT_SENT_CACHE_AGE_SECS`: answered at exactly seven days, wiped
/// one second later, even with nothing sent in between.
#[test]
fn the_sent_cache_keeps_messages_for_the_default_age_at_n_and_n_plus_one() {
    let (mut rng, mut server, mut alice, mut bob) = world(34, 0, 0);
    let (first, second) = asked_twice_then(&mut rng, &mut server, &mut alice, &mut bob, 0, T0);
    let at_limit = T0.plus_secs(DEFAULT_SENT_CACHE_AGE_SECS);
    respond(&mut rng, &mut alice.devices[0], &first, at_limit).unwrap();
    let past = at_limit.plus_secs(1);
    let error = answer_refused(&mut rng, &mut alice.devices[0], &second, past);
    assert_eq!(error, RetryError::NotCached);
}

/// A configured age: one hour.
#[test]
fn the_sent_cache_keeps_messages_for_a_configured_age_at_n_and_n_plus_one() {
    let (mut rng, mut server, mut alice, mut bob) = world(35, 0, 0);
    let limits = SentCacheLimits { max_age_secs: 3600, ..SentCacheLimits::default() };
    alice.devices[0].set_sent_cache_limits(limits);
    let (first, second) = asked_twice_then(&mut rng, &mut server, &mut alice, &mut bob, 0, T0);
    respond(&mut rng, &mut alice.devices[0], &first, T0.plus_secs(3600)).unwrap();
    alice.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"x", T0.plus_secs(3601))
        .unwrap();
    assert_eq!(
        respond(&mut rng, &mut alice.devices[0], &second, T0.plus_secs(3601)).unwrap_err(),
        RetryError::NotCached
    );
}

/// Tightening the limits wipes at once what no longer fits; zero entries keeps nothing, and
/// the persisted state then holds no plaintext.
#[test]
fn tightening_the_cache_wipes_at_once_and_zero_entries_keeps_nothing() {
    let (mut rng, mut server, mut alice, mut bob) = world(36, 0, 0);
    let (first, _) = asked_twice_then(&mut rng, &mut server, &mut alice, &mut bob, 2, T0);
    let secret = b"a plaintext that must not stay";
    alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], secret, T0).unwrap();
    let holds = |device: &Device| {
        let bytes = snapshot(device);
        bytes.windows(secret.len()).any(|w| w == secret)
    };
    assert!(holds(&alice.devices[0]), "the cache keeps the plaintext");
    alice.devices[0]
        .set_sent_cache_limits(SentCacheLimits { max_entries: 1, ..SentCacheLimits::default() });
    assert_eq!(
        respond(&mut rng, &mut alice.devices[0], &first, T0).unwrap_err(),
        RetryError::NotCached
    );
    assert!(holds(&alice.devices[0]), "the newest is kept");
    alice.devices[0]
        .set_sent_cache_limits(SentCacheLimits { max_entries: 0, ..SentCacheLimits::default() });
    assert!(!holds(&alice.devices[0]), "zero entries: wiped");
    let sent = alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], secret, T0).unwrap();
    assert!(!holds(&alice.devices[0]), "zero entries: nothing kept");
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (request, _) = ask(&mut bob.devices[0], &bytes, T0);
    assert_eq!(
        respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap_err(),
        RetryError::NotCached
    );
    // Tightening the age: a message kept at T0 is wiped when the age drops under its own.
    alice.devices[0].set_sent_cache_limits(SentCacheLimits::default());
    alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], secret, T0).unwrap();
    tick(&mut alice.devices[0], T0.plus_secs(10));
    alice.devices[0]
        .set_sent_cache_limits(SentCacheLimits { max_age_secs: 10, ..SentCacheLimits::default() });
    assert!(holds(&alice.devices[0]), "at the age limit: kept");
    alice.devices[0]
        .set_sent_cache_limits(SentCacheLimits { max_age_secs: 9, ..SentCacheLimits::default() });
    assert!(!holds(&alice.devices[0]), "past it: wiped");
}

// ---------------------------------------------------------------------------------------------
// The message-id window
// ---------------------------------------------------------------------------------------------

/// Bob signs a request (counted `count`) for `first`'s envelope, which he delivered, and Alice
/// (who keeps 1,000 messages) answers it.
fn answer_for_old(
    rng: &mut StdRng,
    alice: &mut Account,
    bob: &mut Account,
    first: &FanoutMessage,
    count: u8,
    now: Timestamp,
) -> RetryAnswer {
    let bytes = envelope_for(first, bob.devices[0].address()).unwrap();
    let sender = alice.devices[0].address();
    let request = signed_request(&bob.devices[0], sender, &bytes[bytes.len() - 16..], count);
    respond(rng, &mut alice.devices[0], &request, now).unwrap()
}

/// `MESSAGE_ID_WINDOW`, both sides. The receiver recognizes a re-encryption of the 256th newest
/// message from a sender as a redelivery (N). The sender, whose cache keeps 1,000 messages,
/// answers for a message followed by 255 of its message ids and refuses (`NotCached`, nothing
/// changed) once 256 followed (N + 1; the answer was one): past the window the receiver could
/// not tell the message from a new one, and would deliver it again.
#[test]
fn the_message_id_window_recognizes_the_256th_newest_and_the_sender_answers_nothing_older() {
    let (mut rng, mut server, mut alice, mut bob) = world(40, 0, 0);
    alice.devices[0].set_sent_cache_limits(SentCacheLimits {
        max_entries: 1_000,
        ..SentCacheLimits::default()
    });
    let first = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"first", T0);
    deliver_fanout(&mut bob.devices[0], &first, T0);
    for i in 1..MESSAGE_ID_WINDOW {
        let sent = alice.devices[0]
            .encrypt_fanout(&mut rng, &[AccountId(2)], &[], &i.to_be_bytes(), T0)
            .unwrap();
        deliver_fanout(&mut bob.devices[0], &sent, T0);
    }
    let answer = answer_for_old(&mut rng, &mut alice, &mut bob, &first, 1, T0);
    redelivered(&mut bob.devices[0], &answer.envelope.bytes, None, T0, first.message_id);
    let bytes = envelope_for(&first, bob.devices[0].address()).unwrap();
    let sender = alice.devices[0].address();
    let request = signed_request(&bob.devices[0], sender, &bytes[bytes.len() - 16..], 2);
    let error = answer_refused(&mut rng, &mut alice.devices[0], &request, T0);
    assert_eq!(error, RetryError::NotCached);
}

// ---------------------------------------------------------------------------------------------
// What a malicious server can do with retries
// ---------------------------------------------------------------------------------------------

/// The server replays an envelope Bob delivered: a duplicate, and no request.
#[test]
fn a_replayed_envelope_asks_for_nothing() {
    let (mut rng, mut server, mut alice, mut bob) = world(50, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"once", T0);
    deliver_fanout(&mut bob.devices[0], &sent, T0);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    tick(&mut bob.devices[0], T0);
    let before = snapshot(&bob.devices[0]);
    let failure = bob.devices[0].receive_or_retry(&bytes, None, T0).unwrap_err();
    assert_eq!(failure.error, ReceiveError::Session(SessionError::Duplicate));
    assert!(failure.retry.is_none());
    assert!(!failure.gave_up, "a replay is not a lost message");
    assert_eq!(snapshot(&bob.devices[0]), before);
}

/// The server replays an envelope Bob delivered, on a chain he has since dropped (more ratchet
/// turns than he keeps receiving chains): Bob must ask for nothing, or the replay churns
/// Alice's session.
#[test]
fn a_replayed_envelope_from_a_dropped_chain_asks_for_nothing() {
    let (mut rng, mut server, mut alice, mut bob) = world(51, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let old = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"old", T0);
    deliver_fanout(&mut bob.devices[0], &old, T0);
    let old = envelope_for(&old, bob.devices[0].address()).unwrap();
    for round in 0..(multidevice::consts::MAX_RECEIVER_CHAINS + 2) {
        let b = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), &[1], T0);
        deliver_fanout(&mut alice.devices[0], &b, T0);
        let a = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), &[2], T0);
        deliver_fanout(&mut bob.devices[0], &a, T0);
        let _ = round;
    }
    tick(&mut bob.devices[0], T0);
    let before = snapshot(&bob.devices[0]);
    let failure = bob.devices[0].receive_or_retry(&old, None, T0).unwrap_err();
    assert_eq!(failure.error, ReceiveError::Session(SessionError::NoReceivingChain));
    assert!(failure.retry.is_none(), "dropped chain: {:?} asked for a retry", failure.error);
    assert!(!failure.gave_up);
    assert_eq!(snapshot(&bob.devices[0]), before);
}

/// Bob re-registers: a new primary at the same address, under a new identity, which Alice
/// accepts. The server hands the new primary an envelope Alice sent the old one; it cannot read
/// it and asks. Alice must not re-encrypt to the new identity what she sent the old one.
#[test]
fn a_retry_never_reaches_a_new_identity_at_the_address_of_a_recipient() {
    let (mut rng, mut server, mut alice, mut bob) = world(52, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let sent =
        send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"for the old phone", T0);
    let old_envelope = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let group = alice.devices[0].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let old_group = alice.devices[0].encrypt_group(&mut rng, group, &[], b"group", T0).unwrap();
    // The new registration, and Alice accepting the change.
    let mut new_bob = support::world::device_on(&mut rng, &mut server, support::addr(2, 0), T0);
    server.publish_own(&new_bob);
    let new_list = server.newest(AccountId(2));
    assert!(alice.devices[0].process_device_list(&new_list, T0).is_err());
    alice.devices[0].accept_identity_change(&new_list, T0).unwrap();
    new_bob.process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    let failure = new_bob.receive_or_retry(&old_envelope, None, T0).unwrap_err();
    let request = failure.retry.expect("the new phone asks");
    let (group_request, _) = ask(&mut new_bob, &old_group.message, T0);
    for request in [*request, group_request] {
        let error = answer_refused(&mut rng, &mut alice.devices[0], &request, T0);
        assert_eq!(error, RetryError::NotCached, "sent to another identity");
    }
    // What Alice sends now reaches the new phone.
    let now_sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"hi new", T0);
    assert_eq!(deliver_fanout(&mut new_bob, &now_sent, T0), b"hi new");
}

/// A companion Bob links after Alice's group message gets that message from the server, without
/// the key: its request finds nothing (it was no recipient), and nothing changes at Alice.
#[test]
fn a_retry_never_reaches_a_device_added_after_the_send() {
    let (mut rng, mut server, mut alice, mut bob) = world(53, 0, 0);
    let group = alice.devices[0].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let before_link =
        alice.devices[0].encrypt_group(&mut rng, group, &bundles, b"before", T0).unwrap();
    let fanout =
        send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"fan-out before", T0);
    let late = link(&mut rng, &mut server, &mut bob, T0);
    alice.devices[0].process_device_list(&server.newest(AccountId(2)), T0).unwrap();
    let device = bob.device(late);
    device.process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    let (request, error) = ask(device, &before_link.message, T0);
    assert!(matches!(error, ReceiveError::NoSenderKey { .. }));
    let verified_group = verified(&mut alice.devices[0], &request, T0);
    // The fan-out: the late device names the envelope its primary got.
    let primary = envelope_for(&fanout, bob.devices[0].address()).unwrap();
    let error = ReceiveError::Session(SessionError::NoSession(alice.devices[0].address()));
    let mut bytes = bob.device(late).retry_request(&primary, &error, T0).unwrap().to_bytes();
    // (The request names the primary's envelope already: its reference is its last 16 bytes.)
    assert_eq!(bytes[REF..COUNT], primary[primary.len() - 16..]);
    bytes.truncate(REQUEST_LEN);
    let request = RetryRequest::try_from(bytes.as_slice()).unwrap();
    let verified_fanout = verified(&mut alice.devices[0], &request, T0);
    tick(&mut alice.devices[0], T0);
    let before = snapshot(&alice.devices[0]);
    for verified in [verified_group, verified_fanout] {
        assert_eq!(
            alice.devices[0].answer_retry(&mut rng, &verified, T0).unwrap_err(),
            RetryError::NotCached
        );
    }
    assert_eq!(snapshot(&alice.devices[0]), before);
}

/// Retries cannot grow the sender without bound: requests for messages it never sent change
/// nothing, and answering every retry of many messages keeps the session archive within its
/// bound.
#[test]
fn retries_keep_the_sender_within_its_bounds() {
    let (mut rng, mut server, mut alice, mut bob) = world(54, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let bob0 = bob.devices[0].address();
    let mut messages = Vec::new();
    for i in 0..10u8 {
        let sent =
            alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], &[i], T0).unwrap();
        messages.push(envelope_for(&sent, bob0).unwrap());
    }
    // Requests for 300 envelopes Alice never sent: nothing kept, nothing made.
    tick(&mut alice.devices[0], T0);
    let before = snapshot(&alice.devices[0]);
    for i in 0..300u32 {
        let mut bogus = messages[0].clone();
        let len = bogus.len();
        bogus[len - 4..].copy_from_slice(&i.to_be_bytes());
        let error = ReceiveError::Session(SessionError::AuthenticationFailed);
        let request = bob.devices[0].retry_request(&bogus, &error, T0).unwrap();
        assert_eq!(
            respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap_err(),
            RetryError::NotCached
        );
    }
    assert_eq!(snapshot(&alice.devices[0]), before);
    // Every retry of every message: 50 fresh sessions, 40 archived at most.
    for bytes in &messages {
        for _ in 0..MAX_RETRIES {
            let error = ReceiveError::Session(SessionError::AuthenticationFailed);
            let request = bob.devices[0].retry_request(bytes, &error, T0).unwrap();
            respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
        }
    }
    let info = alice.devices[0].session_info(bob0).unwrap();
    assert_eq!(info.archived, multidevice::consts::MAX_ARCHIVED_SESSIONS);
}

/// The receiver's side: the server forges envelopes claiming Alice by the thousand. Bob signs a
/// request for each it cannot read (it cannot tell them from a lost session), but what he
/// remembers about Alice stays bounded.
#[test]
fn forged_envelopes_keep_the_receiver_within_its_bounds() {
    let (mut rng, mut server, mut alice, mut bob) = world(55, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"x", T0);
    let genuine = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let mut sizes = Vec::new();
    for i in 0..200u32 {
        let mut forged = genuine.clone();
        let len = forged.len();
        forged[len - 4..].copy_from_slice(&i.to_be_bytes());
        let failure = bob.devices[0].receive_or_retry(&forged, None, T0).unwrap_err();
        assert_eq!(failure.error, ReceiveError::Session(SessionError::AuthenticationFailed));
        assert!(failure.retry.is_some());
        sizes.push(snapshot(&bob.devices[0]).len());
    }
    assert_eq!(sizes[50], sizes[199], "bounded once the retry states are full");
    // The genuine envelope still decrypts: none of it touched the session.
    assert_eq!(deliver(&mut bob.devices[0], &genuine, None, T0).unwrap().1, b"x");
}

// ---------------------------------------------------------------------------------------------
// The stored device: outbox, inbox and cache across restarts
// ---------------------------------------------------------------------------------------------

mod stored {
    use super::*;
    use multidevice::store::{MemoryStore, SqliteOptions, SqliteStore, Store, StoreKey, Table};
    use multidevice::{Inbound, StoredDevice};

    fn key() -> StoreKey {
        StoreKey::from_bytes(&[9u8; 32])
    }

    /// A fresh SQLite file path, removed by the caller's `Dir`.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("multidevice-retry-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn open(&self, file: &str) -> SqliteStore {
            SqliteStore::open(self.0.join(file), &SqliteOptions::default()).unwrap()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn reopen<S: Store>(device: StoredDevice<S>) -> StoredDevice<S> {
        StoredDevice::open(device.into_store(), &key(), &mut rng(77)).unwrap()
    }

    fn message(inbound: &Inbound) -> ([u8; 16], Vec<u8>) {
        match &inbound.received {
            Received::Message(message) => (message.message_id, message.payload.to_vec()),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Bob, stored, restored from a backup taken before his session with Alice (stored too).
    /// His failed receive queues a request in the outbox, committed with the counted retry;
    /// it survives a restart. Alice's stored device takes the request into its inbox and
    /// answers after a restart (the cache is in the store); Bob delivers the message exactly
    /// once across restarts, the second answer being a redelivery.
    #[test]
    fn a_stored_device_queues_the_request_and_both_sides_survive_restarts() {
        let dir = Dir::new("restarts");
        let (mut r, mut server, mut alice, mut bob) = world(60, 0, 0);
        let backup = bob.devices[0].to_bytes();
        confirmed(&mut r, &mut server, &mut alice, &mut bob);
        let mut stored_alice = StoredDevice::import(
            dir.open("alice.db"),
            &key(),
            &mut r,
            &alice.devices[0].to_bytes(),
        )
        .unwrap();
        let mut stored_bob =
            StoredDevice::import(dir.open("bob.db"), &key(), &mut r, &backup).unwrap();
        let bob0 = stored_bob.address();

        let sent = stored_alice.encrypt_fanout(&mut r, &[AccountId(2)], &[], b"kept", T0).unwrap();
        stored_alice.mark_sent(sent.outbox.unwrap()).unwrap();
        let original = envelope_for(&sent, bob0).unwrap();
        let error = stored_bob.receive(&original, None, T0).unwrap_err();
        assert!(RetryReason::for_error(&error).is_some(), "{error:?}");
        let stored_bob_reopened = reopen(stored_bob);
        let mut stored_bob = stored_bob_reopened;
        let outbox = stored_bob.outbox().unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].envelopes[0].recipient, stored_alice.address());
        let request_bytes = outbox[0].envelopes[0].bytes.clone();
        let request = RetryRequest::try_from(request_bytes.as_slice()).unwrap();
        assert_eq!((request.requester, request.count), (bob0, 1));
        stored_bob.mark_sent(outbox[0].id).unwrap();

        // Alice takes the request in, then restarts before answering.
        let inbound = stored_alice.receive(&request_bytes, None, T0).unwrap();
        assert!(matches!(inbound.received, Received::RetryRequest(_)));
        let mut stored_alice = reopen(stored_alice);
        let inbox = stored_alice.inbox().unwrap();
        assert_eq!(inbox.len(), 1);
        let Received::RetryRequest(verified) = &inbox[0].received else { panic!() };
        let answer = stored_alice.answer_retry(&mut r, verified, T0).unwrap();
        stored_alice.acknowledge(inbox[0].id).unwrap();
        let queued = stored_alice.outbox().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(Some(queued[0].id), answer.outbox);
        assert_eq!(queued[0].envelopes[0], answer.envelope);
        let mut stored_alice = reopen(stored_alice);
        // Answering the same request again, after the restart: a replay.
        assert_eq!(
            stored_alice.answer_retry(&mut r, verified, T0).unwrap_err(),
            RetryError::Replayed
        );

        // Bob delivers it, restarts before acknowledging: the same entry, not a second one.
        let inbound = stored_bob.receive(&answer.envelope.bytes, None, T0).unwrap();
        assert_eq!(message(&inbound), (sent.message_id, b"kept".to_vec()));
        let mut stored_bob = reopen(stored_bob);
        let again = stored_bob.receive(&answer.envelope.bytes, None, T0).unwrap();
        assert_eq!(again.id, inbound.id);
        stored_bob.acknowledge(inbound.id).unwrap();
        assert_eq!(
            stored_bob.receive(&answer.envelope.bytes, None, T0).unwrap_err(),
            ReceiveError::AlreadyReceived
        );

        // The original arrives again: still unreadable, asked again; the second answer is a
        // redelivery, never a second message.
        stored_bob.receive(&original, None, T0).unwrap_err();
        let outbox = stored_bob.outbox().unwrap();
        let second = RetryRequest::try_from(outbox[0].envelopes[0].bytes.as_slice()).unwrap();
        assert_eq!(second.count, 2);
        let inbound = stored_alice.receive(&second.to_bytes(), None, T0).unwrap();
        let Received::RetryRequest(verified) = &inbound.received else { panic!() };
        let answer = stored_alice.answer_retry(&mut r, verified, T0).unwrap();
        let inbound = stored_bob.receive(&answer.envelope.bytes, None, T0).unwrap();
        match inbound.received {
            Received::Redelivered(again) => assert_eq!(again.message_id, sent.message_id),
            other => panic!("expected a redelivery, got {other:?}"),
        }
        let messages = stored_bob
            .inbox()
            .unwrap()
            .iter()
            .filter(|i| matches!(i.received, Received::Message(_)))
            .count();
        assert_eq!(messages, 0, "the one message was acknowledged; nothing else to show");
    }

    /// A stored device deletes the row of what it remembers of a device once a list removes it.
    #[test]
    fn a_stored_device_deletes_the_peer_row_of_a_removed_device() {
        let (mut r, mut server, mut carol, bob) = world(62, 0, 0);
        let memory = MemoryStore::new();
        let mut stored =
            StoredDevice::import(memory.clone(), &key(), &mut r, &bob.devices[0].to_bytes())
                .unwrap();
        let bob0 = stored.address();
        let companion = link(&mut r, &mut server, &mut carol, T0);
        stored.process_device_list(&server.newest(AccountId(1)), T0).unwrap();
        let device = carol.device(companion);
        device.process_device_list(&server.newest(AccountId(2)), T0).unwrap();
        let bundle = server.bundle(bob0);
        let sent = carol
            .device(companion)
            .encrypt_fanout(&mut r, &[AccountId(2)], &[bundle], b"hi", T0)
            .unwrap();
        let inbound = stored.receive(&envelope_for(&sent, bob0).unwrap(), None, T0).unwrap();
        stored.acknowledge(inbound.id).unwrap();
        let rows = |memory: &MemoryStore| {
            memory.rows().into_iter().filter(|(table, _, _)| *table == Table::Peer).count()
        };
        assert_eq!(rows(&memory), 1);
        let removal = carol.devices[0].remove_companion(companion.device, T0).unwrap();
        stored.process_device_list(&removal.to_bytes(), T0).unwrap();
        assert_eq!(rows(&memory), 0);
        let mut stored = reopen(stored);
        assert!(stored.session_info(companion).unwrap().is_none());
    }

    /// The group path through the store: a group message without its sender key queues a
    /// request; the stored sender answers it pairwise and its next group send, after a restart,
    /// gives the receiver the key again.
    #[test]
    fn a_stored_group_message_without_its_key_is_answered_and_redistributed() {
        let (mut r, mut server, alice, bob) = world(64, 0, 0);
        let mut stored_alice =
            StoredDevice::import(MemoryStore::new(), &key(), &mut r, &alice.devices[0].to_bytes())
                .unwrap();
        let mut stored_bob =
            StoredDevice::import(MemoryStore::new(), &key(), &mut r, &bob.devices[0].to_bytes())
                .unwrap();
        let bob0 = stored_bob.address();
        let group = stored_alice.create_group(&mut r, &[AccountId(2)]).unwrap();
        let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
        let send = stored_alice.encrypt_group(&mut r, group, &bundles, b"g", T0).unwrap();
        assert_eq!(send.distribution[0].recipient, bob0);
        let error = stored_bob.receive(&send.message, None, T0).unwrap_err();
        assert!(matches!(error, ReceiveError::NoSenderKey { .. }));
        let outbox = stored_bob.outbox().unwrap();
        let request = outbox[0].envelopes[0].bytes.clone();
        let inbound = stored_alice.receive(&request, None, T0).unwrap();
        let Received::RetryRequest(verified) = &inbound.received else { panic!() };
        let answer = stored_alice.answer_retry(&mut r, verified, T0).unwrap();
        match stored_bob.receive(&answer.envelope.bytes, None, T0).unwrap().received {
            Received::Group(message) => {
                assert_eq!((message.group, message.message_id), (group, send.message_id));
                assert_eq!(message.payload.as_slice(), b"g");
            }
            other => panic!("expected the group message, got {other:?}"),
        }
        let mut stored_alice = reopen(stored_alice);
        let next = stored_alice.encrypt_group(&mut r, group, &[], b"next", T0).unwrap();
        let reached: Vec<DeviceAddress> = next.distribution.iter().map(|e| e.recipient).collect();
        assert_eq!(reached, [bob0]);
        stored_bob.receive(&next.distribution[0].bytes, None, T0).unwrap();
        match stored_bob.receive(&next.message, None, T0).unwrap().received {
            Received::Group(message) => assert_eq!(message.payload.as_slice(), b"next"),
            other => panic!("expected the group message, got {other:?}"),
        }
    }

    /// A stored receiver says on each failure that a request went to the outbox (the same
    /// bytes), with the count rising on each try, and after `MAX_RETRIES` that it gave up.
    #[test]
    fn a_stored_receiver_reports_its_queued_requests_then_gives_up() {
        let (mut r, mut server, mut alice, mut bob) = world(65, 0, 0);
        let backup = bob.devices[0].to_bytes();
        confirmed(&mut r, &mut server, &mut alice, &mut bob);
        let mut stored = StoredDevice::import(MemoryStore::new(), &key(), &mut r, &backup).unwrap();
        let sent = send(&mut r, &mut server, &mut alice.devices[0], AccountId(2), b"m", T0);
        let bytes = envelope_for(&sent, stored.address()).unwrap();
        for count in 1..=MAX_RETRIES {
            let failure = stored.receive_or_retry(&bytes, None, T0).unwrap_err();
            let request = failure.retry.expect("a request");
            assert_eq!(usize::from(request.count), count);
            assert!(!failure.gave_up);
            let queued = stored.outbox().unwrap();
            assert_eq!(queued.len(), count);
            assert_eq!(queued[count - 1].envelopes[0].bytes, request.to_bytes());
        }
        let failure = stored.receive_or_retry(&bytes, None, T0).unwrap_err();
        assert!(failure.retry.is_none() && failure.gave_up, "{failure:?}");
        assert_eq!(stored.outbox().unwrap().len(), MAX_RETRIES);
        // The plain call reports the same error.
        let error = stored.receive(&bytes, None, T0).unwrap_err();
        assert_eq!(error, failure.error);
    }

    /// Group messages sent to the same holders of a sender key share one holder set, a row of
    /// its own, so a send to a large group adds one small row; a device given the key later is
    /// not among the holders of earlier messages and is not answered for them; and a set goes
    /// with the last message naming it.
    #[test]
    fn group_messages_share_a_holder_set_that_goes_with_the_last_of_them() {
        let (mut r, mut server, alice, mut bob) = world(63, 0, 0);
        let memory = MemoryStore::new();
        let mut stored =
            StoredDevice::import(memory.clone(), &key(), &mut r, &alice.devices[0].to_bytes())
                .unwrap();
        let rows = |memory: &MemoryStore| {
            memory.rows().into_iter().filter(|(table, _, _)| *table == Table::SentMessage).count()
        };
        assert_eq!(rows(&memory), 0);
        let group = stored.create_group(&mut r, &[AccountId(2)]).unwrap();
        let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
        let first = stored.encrypt_group(&mut r, group, &bundles, b"m0", T0).unwrap();
        stored.encrypt_group(&mut r, group, &[], b"m1", T0).unwrap();
        assert_eq!(rows(&memory), 2 + 1, "two messages and one holder set");
        // Bob links a companion; Alice's next send gives it the key: a new holder set.
        let bob1 = link(&mut r, &mut server, &mut bob, T0);
        stored.process_device_list(&server.newest(AccountId(2)), T0).unwrap();
        let bundles = server.bundles(&[AccountId(2)]);
        let third = stored.encrypt_group(&mut r, group, &bundles, b"m2", T0).unwrap();
        assert!(third.distribution.iter().any(|e| e.recipient == bob1));
        assert_eq!(rows(&memory), 3 + 2);
        // The companion that got the key with m2 is not answered for m0; Bob's primary is.
        let missing = ReceiveError::NoSenderKey { group, sender: stored.address() };
        let late = bob.device(bob1).retry_request(&first.message, &missing, T0).unwrap();
        let Received::RetryRequest(late) =
            stored.receive(&late.to_bytes(), None, T0).unwrap().received
        else {
            panic!("expected a retry request")
        };
        assert!(matches!(stored.answer_retry(&mut r, &late, T0), Err(RetryError::NotCached)));
        let bob0 = bob.devices[0].address();
        let request = bob.device(bob0).retry_request(&first.message, &missing, T0).unwrap();
        let Received::RetryRequest(request) =
            stored.receive(&request.to_bytes(), None, T0).unwrap().received
        else {
            panic!("expected a retry request")
        };
        let answer = stored.answer_retry(&mut r, &request, T0).unwrap();
        match bob.device(bob0).receive(&answer.envelope.bytes, None, T0).unwrap() {
            Received::Group(message) => assert_eq!(message.payload.as_slice(), b"m0"),
            other => panic!("expected the group message, got {other:?}"),
        }
        // Only m2 left: its holder set stays, the first goes with m1.
        let one = SentCacheLimits { max_entries: 1, ..SentCacheLimits::default() };
        stored.set_sent_cache_limits(one).unwrap();
        assert_eq!(rows(&memory), 1 + 1);
        let none = SentCacheLimits { max_entries: 0, ..SentCacheLimits::default() };
        stored.set_sent_cache_limits(none).unwrap();
        assert_eq!(rows(&memory), 0);
        let mut stored = reopen(stored);
        stored.set_sent_cache_limits(SentCacheLimits::default()).unwrap();
        stored.encrypt_group(&mut r, group, &[], b"m3", T0).unwrap();
        assert_eq!(rows(&memory), 1 + 1, "a set of the holders now");
    }

    /// The cache is one row per message, encrypted at rest: tightening the limits on a stored
    /// device deletes the rows at once, and the plaintext is never in the store in the clear.
    #[test]
    fn the_stored_cache_is_per_row_encrypted_and_wiped_when_tightened() {
        let (mut r, mut server, mut alice, mut bob) = world(61, 0, 0);
        confirmed(&mut r, &mut server, &mut alice, &mut bob);
        let memory = MemoryStore::new();
        let mut stored =
            StoredDevice::import(memory.clone(), &key(), &mut r, &alice.devices[0].to_bytes())
                .unwrap();
        let secret = b"plaintext kept for retries";
        for _ in 0..3 {
            stored.encrypt_fanout(&mut r, &[AccountId(2)], &[], secret, T0).unwrap();
        }
        let rows = |memory: &MemoryStore| {
            memory.rows().into_iter().filter(|(table, _, _)| *table == Table::SentMessage).count()
        };
        // The greeting `confirmed` sent was imported too.
        assert_eq!(rows(&memory), 4);
        assert!(
            !memory.rows().iter().any(|(_, _, v)| v.windows(secret.len()).any(|w| w == secret)),
            "a plaintext in the clear"
        );
        stored
            .set_sent_cache_limits(SentCacheLimits { max_entries: 1, ..SentCacheLimits::default() })
            .unwrap();
        assert_eq!(rows(&memory), 1);
        stored
            .set_sent_cache_limits(SentCacheLimits { max_entries: 0, ..SentCacheLimits::default() })
            .unwrap();
        assert_eq!(rows(&memory), 0);
        let mut stored = reopen(stored);
        stored.encrypt_fanout(&mut r, &[AccountId(2)], &[], secret, T0).unwrap();
        assert_eq!(rows(&memory), 0, "the limits persist");
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies and history
// ---------------------------------------------------------------------------------------------

/// Bob confirms his session with Alice's primary (a reply she reads), then loses it: her next
/// message is not an initial message he could read anyway.
fn lose_session(rng: &mut StdRng, server: &mut Server, alice: &mut Account, bob: &mut Account) {
    let reply = send(rng, server, &mut bob.devices[0], AccountId(1), b"ok", T0);
    deliver_fanout(&mut alice.devices[0], &reply, T0);
    bob.devices[0].delete_sessions(alice.devices[0].address());
}

/// A payload above the inline threshold is answered with a fresh body (a new content key) that
/// the receiver opens; one above the largest single message is not kept at all, so it cannot be
/// recovered (`NotCached`).
#[test]
fn a_payload_with_a_shared_body_is_retried_with_a_fresh_body() {
    let (mut rng, mut server, mut alice, mut bob) = world(70, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let payload = vec![0x42u8; INLINE_THRESHOLD + 1];
    let sent =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], &payload, T0).unwrap();
    assert!(sent.body.is_some());
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (request, _) = ask(&mut bob.devices[0], &bytes, T0);
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    let body = answer.body.as_deref().unwrap();
    assert_ne!(Some(body), sent.body.as_deref(), "a fresh body under a fresh key");
    // The old body does not open the answer.
    assert!(bob.devices[0].receive(&answer.envelope.bytes, sent.body.as_deref(), T0).is_err());
    assert_eq!(take_answer(&mut bob.devices[0], &answer, T0).1, payload);
    // At the inline threshold: inline, no body.
    let small = vec![1u8; INLINE_THRESHOLD];
    lose_session(&mut rng, &mut server, &mut alice, &mut bob);
    let sent = alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], &small, T0).unwrap();
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (request, _) = ask(&mut bob.devices[0], &bytes, T0);
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert!(answer.body.is_none());
    assert_eq!(take_answer(&mut bob.devices[0], &answer, T0).1, small);
    // Larger than one message may carry: sent, never kept.
    let max = multidevice::consts::MAX_MESSAGE_PLAINTEXT;
    for (size, kept) in [(max, true), (max + 1, false)] {
        let large = vec![7u8; size];
        lose_session(&mut rng, &mut server, &mut alice, &mut bob);
        let sent =
            alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], &large, T0).unwrap();
        let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
        let (request, _) = ask(&mut bob.devices[0], &bytes, T0);
        match respond(&mut rng, &mut alice.devices[0], &request, T0) {
            Ok(answer) => {
                assert!(kept, "{size} bytes answered");
                assert_eq!(take_answer(&mut bob.devices[0], &answer, T0).1, large);
            }
            Err(error) => {
                assert!(!kept, "{size} bytes: {error:?}");
                assert_eq!(error, RetryError::NotCached);
            }
        }
    }
}

/// History sent to a newly linked companion on a one-time prekey it no longer holds: the
/// companion asks, and the primary answers with the same history message, which the companion
/// accepts as history.
#[test]
fn a_history_message_is_retried_as_history() {
    let (mut rng, mut server, mut alice, _) = world(71, 0, 0);
    let companion = link(&mut rng, &mut server, &mut alice, T0);
    // The primary's first message to the companion takes its first one-time prekey.
    let bundle = server.old_bundle(companion, 0, Some(0));
    let own = alice.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], std::slice::from_ref(&bundle), b"own copy", T0)
        .unwrap();
    deliver_fanout(alice.device(companion), &own, T0);
    // The primary loses its session and sends history on the same, spent, prekey.
    alice.devices[0].delete_sessions(companion);
    let descriptor =
        multidevice::build_history(&mut rng, [b"chat".as_slice()], Vec::new()).unwrap();
    let envelope =
        alice.devices[0].encrypt_history(&mut rng, companion, &descriptor, &[bundle], T0).unwrap();
    let device = alice.device(companion);
    let (request, error) = ask(device, &envelope.bytes, T0);
    assert!(matches!(error, ReceiveError::Session(SessionError::UnknownOneTimePrekey(_))));
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert!(answer.body.is_none());
    match alice.device(companion).receive(&answer.envelope.bytes, None, T0).unwrap() {
        Received::History(history) => {
            assert_eq!(history.descriptor.to_bytes(), descriptor.to_bytes());
            assert_eq!(history.sender, alice.devices[0].address());
        }
        other => panic!("expected history, got {other:?}"),
    }
}

/// With the default limits, the server replays an envelope Bob delivered just past his window
/// of 256 message ids, while Alice still holds the message in her cache of 256 (a sender-key
/// distribution took a window slot but no cache entry). The ratchet refuses the replay as a
/// spent key and the envelope is no longer known as delivered, so Bob asks. Alice counts the
/// 256 ids she issued since (the distribution's included) and refuses: no second delivery, and
/// no fresh session.
#[test]
fn a_replay_just_past_the_window_is_not_delivered_twice_with_the_default_limits() {
    let (mut rng, mut server, mut alice, mut bob) = world(56, 0, 0);
    let first = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"first", T0);
    deliver_fanout(&mut bob.devices[0], &first, T0);
    let group = alice.devices[0].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let send_group = alice.devices[0].encrypt_group(&mut rng, group, &[], b"g", T0).unwrap();
    bob.devices[0].receive(&send_group.distribution[0].bytes, None, T0).unwrap();
    deliver(&mut bob.devices[0], &send_group.message, None, T0).unwrap();
    for i in 0..(MESSAGE_ID_WINDOW - 2) {
        let sent = alice.devices[0]
            .encrypt_fanout(&mut rng, &[AccountId(2)], &[], &i.to_be_bytes(), T0)
            .unwrap();
        deliver_fanout(&mut bob.devices[0], &sent, T0);
    }
    let replay = envelope_for(&first, bob.devices[0].address()).unwrap();
    let failure = bob.devices[0].receive_or_retry(&replay, None, T0).unwrap_err();
    assert_eq!(failure.error, ReceiveError::Session(SessionError::Duplicate));
    let request = failure.retry.expect("past the window, a replay looks like a restored sender");
    let error = answer_refused(&mut rng, &mut alice.devices[0], &request, T0);
    assert_eq!(error, RetryError::NotCached);
}

/// What a device remembers about a sending device (its delivered ids, the retries it asked of
/// it) goes when that device leaves its account's list, as its sessions do: a peer account
/// that links and removes companions one after another does not grow the receiver.
#[test]
fn what_a_receiver_remembers_of_a_removed_device_goes_with_it() {
    let (mut rng, mut server, mut carol, mut bob) = world(57, 0, 0);
    let bob0 = bob.devices[0].address();
    let mut sizes = Vec::new();
    for _ in 0..12 {
        let companion = link(&mut rng, &mut server, &mut carol, T0);
        bob.devices[0].process_device_list(&server.newest(AccountId(1)), T0).unwrap();
        let device = carol.device(companion);
        device.process_device_list(&server.newest(AccountId(2)), T0).unwrap();
        let bundle = server.bundle(bob0);
        for i in 0..20u8 {
            let sent = carol
                .device(companion)
                .encrypt_fanout(&mut rng, &[AccountId(2)], std::slice::from_ref(&bundle), &[i], T0)
                .unwrap();
            deliver_fanout(&mut bob.devices[0], &sent, T0);
        }
        let removal = carol.devices[0].remove_companion(companion.device, T0).unwrap();
        server.publish(&removal);
        carol.devices.retain(|d| d.address() != companion);
        bob.devices[0].process_device_list(&removal.to_bytes(), T0).unwrap();
        assert!(!bob.devices[0].has_session(companion));
        sizes.push(snapshot(&bob.devices[0]).len());
    }
    assert!(sizes[11] <= sizes[1] + 64, "Bob grows with every removed device: {sizes:?}");
}

/// The server delivers two answers for one message in reverse order, duplicates each, and
/// conversation goes on both ways: the message is delivered once, the rest are a redelivery or
/// a duplicate that asks for nothing, and both sides converge on one session.
#[test]
fn reordered_and_duplicated_answers_deliver_once_and_the_sessions_converge() {
    let (mut rng, mut server, mut alice, mut bob, sent, first) = lost_message(58);
    let bytes = envelope_for(&sent, bob.devices[0].address()).unwrap();
    let (second, _) = ask(&mut bob.devices[0], &bytes, T0);
    let one = respond(&mut rng, &mut alice.devices[0], &first, T0).unwrap();
    let two = respond(&mut rng, &mut alice.devices[0], &second, T0).unwrap();
    assert_eq!(take_answer(&mut bob.devices[0], &two, T0).1, b"m");
    redelivered(&mut bob.devices[0], &one.envelope.bytes, None, T0, sent.message_id);
    for answer in [&one, &two] {
        let failure =
            bob.devices[0].receive_or_retry(&answer.envelope.bytes, None, T0).unwrap_err();
        assert_eq!(failure.error, ReceiveError::Session(SessionError::Duplicate));
        assert!(failure.retry.is_none() && !failure.gave_up);
    }
    for round in 0..4u8 {
        let b = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), &[round], T0);
        assert_eq!(deliver_fanout(&mut alice.devices[0], &b, T0), [round]);
        let a = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), &[round], T0);
        assert_eq!(deliver_fanout(&mut bob.devices[0], &a, T0), [round]);
    }
    let alice0 = alice.devices[0].address();
    let bob0 = bob.devices[0].address();
    assert_eq!(
        alice.devices[0].session_info(bob0).unwrap().active_session,
        bob.devices[0].session_info(alice0).unwrap().active_session
    );
}

/// The server tampers with the answer (a byte of its ciphertext). The receiver cannot read it and
/// asks about it by the answer's own reference, which the sender recorded: it answers again,
/// and the message is delivered once. The original envelope delivered again afterwards names a
/// copy older than the last answer: a replay, which starts no session.
#[test]
fn a_tampered_answer_is_answered_again_and_the_original_is_then_a_replay() {
    let (mut rng, _, mut alice, mut bob, sent, first) = lost_message(59);
    let bob0 = bob.devices[0].address();
    let answer = respond(&mut rng, &mut alice.devices[0], &first, T0).unwrap();
    let mut tampered = answer.envelope.bytes.clone();
    let at = tampered.len() - 20;
    tampered[at] ^= 1;
    let (request, error) = ask(&mut bob.devices[0], &tampered, T0);
    assert_eq!(error, ReceiveError::Session(SessionError::AuthenticationFailed));
    assert_eq!(request.count, 1);
    let again = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert_eq!(take_answer(&mut bob.devices[0], &again, T0), (sent.message_id, b"m".to_vec()));

    let bytes = envelope_for(&sent, bob0).unwrap();
    let (old, _) = ask(&mut bob.devices[0], &bytes, T0);
    assert_eq!(old.count, 2);
    let session = alice.devices[0].session_info(bob0).unwrap().active_session;
    assert_eq!(
        respond(&mut rng, &mut alice.devices[0], &old, T0).unwrap_err(),
        RetryError::Replayed
    );
    assert_eq!(alice.devices[0].session_info(bob0).unwrap().active_session, session);
}

/// The restored receiver asks, and before the answer arrives starts a session of its own to the
/// sender (a message of its own, from a fresh bundle): the answer and that message cross. Both
/// are read, and the two sides converge on one session.
#[test]
fn an_answer_crossing_a_new_session_from_the_receiver_converges() {
    let (mut rng, mut server, mut alice, mut bob, sent, request) = lost_message(63);
    let alice0 = alice.devices[0].address();
    let bob0 = bob.devices[0].address();
    let own = bob.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &[server.bundle(alice0)], b"mine", T0)
        .unwrap();
    let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
    assert_eq!(deliver_fanout(&mut alice.devices[0], &own, T0), b"mine");
    assert_eq!(take_answer(&mut bob.devices[0], &answer, T0), (sent.message_id, b"m".to_vec()));
    for round in 0..4u8 {
        let a = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), &[round], T0);
        assert_eq!(deliver_fanout(&mut bob.devices[0], &a, T0), [round]);
        let b = send(&mut rng, &mut server, &mut bob.devices[0], AccountId(1), &[round], T0);
        assert_eq!(deliver_fanout(&mut alice.devices[0], &b, T0), [round]);
    }
    assert_eq!(
        alice.devices[0].session_info(bob0).unwrap().active_session,
        bob.devices[0].session_info(alice0).unwrap().active_session
    );
}

// ---------------------------------------------------------------------------------------------
// From the review of the retry path as a hostile server
// ---------------------------------------------------------------------------------------------

/// While a peer account has an identity change pending (the server shows a list under a new
/// account identity; the user has not decided), nothing may be sent to the account (§9:
/// `IdentityChangePending`). A retry answer is a send: the old identity's request must not be
/// answered either.
#[test]
fn a_retry_is_not_answered_to_an_account_with_an_identity_change_pending() {
    let (mut rng, mut server, mut alice, mut bob) = world(1402, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let bob0 = bob.devices[0].address();
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"m", T0);
    let (request, _) = ask(&mut bob.devices[0], &envelope_for(&sent, bob0).unwrap(), T0);
    let verified = verified(&mut alice.devices[0], &request, T0);
    // A new registration at Bob's address; Alice holds it as a pending change.
    let new_bob = support::world::device_on(&mut rng, &mut server, bob0, T0);
    server.publish_own(&new_bob);
    assert!(alice.devices[0].process_device_list(&server.newest(AccountId(2)), T0).is_err());
    assert!(alice.devices[0].pending_identity_change(AccountId(2)).is_some());
    // Sending to Bob's account is blocked...
    assert!(
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"blocked", T0).is_err()
    );
    // ... and so is re-sending him a message.
    tick(&mut alice.devices[0], T0);
    let before = snapshot(&alice.devices[0]);
    let result = alice.devices[0].answer_retry(&mut rng, &verified, T0);
    assert!(result.is_err(), "answered to an account with an identity change pending");
    assert_eq!(snapshot(&alice.devices[0]), before);
}

/// `bytes` with one ciphertext byte flipped, its last 16 bytes (its reference) kept: the
/// receiver cannot read it and asks by the same reference.
fn tampered(bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    bytes
}

/// Every old request, replayed after newer answers (each answer failing in turn), is refused
/// with nothing changed; the answers stop at 5; the message is delivered once.
#[test]
fn old_requests_replayed_after_newer_answers_start_no_session() {
    let (mut rng, mut server, mut alice, mut bob) = world(1403, 0, 0);
    confirmed(&mut rng, &mut server, &mut alice, &mut bob);
    let bob0 = bob.devices[0].address();
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"m", T0);
    let original = envelope_for(&sent, bob0).unwrap();
    let mut requests = vec![ask(&mut bob.devices[0], &original, T0).0];
    // Bob asks again (the server redelivered the failed envelope): a higher count for the same
    // copy, which asks anew until an answer to it fails in turn.
    let mut again = Some(ask(&mut bob.devices[0], &original, T0).0);
    assert_eq!((requests[0].count, again.as_ref().unwrap().count), (1, 2));
    let mut answers = Vec::new();
    let mut request = requests[0].clone();
    for _ in 0..5 {
        let answer = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap();
        assert_eq!(answer.message_id, sent.message_id);
        // Every request made so far is a replay now, and starts nothing.
        tick(&mut alice.devices[0], T0);
        let before = snapshot(&alice.devices[0]);
        for old in &requests {
            let error = respond(&mut rng, &mut alice.devices[0], old, T0).unwrap_err();
            assert!(
                matches!(
                    error,
                    RetryError::Replayed | RetryError::NotCached | RetryError::GaveUp { .. }
                ),
                "count {} answered again: {error:?}",
                old.count
            );
        }
        assert_eq!(snapshot(&alice.devices[0]), before);
        // The answer fails in turn; Bob asks by its reference.
        request = ask(&mut bob.devices[0], &tampered(&answer.envelope.bytes), T0).0;
        requests.push(request.clone());
        requests.extend(again.take());
        answers.push(answer);
    }
    let error = respond(&mut rng, &mut alice.devices[0], &request, T0).unwrap_err();
    assert_eq!(error, RetryError::GaveUp { message_id: sent.message_id });
    // The last answer, delivered intact, delivers the message once; the original then is nothing
    // new.
    let last = answers.last().unwrap();
    assert_eq!(take_answer(&mut bob.devices[0], last, T0), (sent.message_id, b"m".to_vec()));
    assert!(bob.devices[0].receive(&original, None, T0).is_err());
    Device::from_bytes(&alice.devices[0].to_bytes()).unwrap();
}
