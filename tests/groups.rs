//! Groups with sender keys, through the public API: libsignal's group scenarios
//! (`rust/protocol/tests/groups.rs`, ported to accounts with several devices), and what
//! multi-device adds: companions joining and leaving, removed members, own devices, restarts
//! from the store, forged distributions, replays into another group, and a group of 1,024
//! accounts of five devices each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::consts::{DEFAULT_MAX_FORWARD_JUMP, MAX_MESSAGE_PLAINTEXT, MAX_SKIPPED_KEYS};
use multidevice::store::{MemoryStore, StoreKey};
use multidevice::{
    AccountId, Action, Device, DeviceAddress, DeviceId, GroupError, GroupId, GroupSend,
    ReceiveError, Received, SessionError, StoredDevice, Timestamp,
};
use rand::rngs::StdRng;
use support::world::{Account, Server, account, introduce, link};
use support::{T0, addr, rng, snapshot};

/// Delivers a group send to `device`: its distribution envelope first, if it has one, then the
/// group message. Returns the payload.
fn deliver(device: &mut Device, send: &GroupSend, now: Timestamp) -> Result<Vec<u8>, ReceiveError> {
    if let Some(envelope) = send.distribution.iter().find(|e| e.recipient == device.address()) {
        match device.receive(&envelope.bytes, None, now)? {
            Received::SenderKey(key) => assert_eq!(key.sender.account, send_account(send)),
            other => panic!("expected a sender key, got {other:?}"),
        }
    }
    read_group(device, &send.message, now)
}

/// The account of the device that made `send`.
fn send_account(send: &GroupSend) -> AccountId {
    AccountId(u64::from_be_bytes(send.message[18..26].try_into().unwrap()))
}

/// Receives a group message and returns its payload.
fn read_group(
    device: &mut Device,
    message: &[u8],
    now: Timestamp,
) -> Result<Vec<u8>, ReceiveError> {
    match device.receive(message, None, now)? {
        Received::Group(message) => Ok(message.payload.to_vec()),
        other => panic!("expected a group message, got {other:?}"),
    }
}

/// Alice (primary and one companion) and Bob (primary and two companions), introduced, and a
/// group of both made on Alice's primary.
fn alice_and_bob(r: &mut StdRng, server: &mut Server) -> (Account, Account, GroupId) {
    let mut alice = account(r, server, 1, 1, T0);
    let mut bob = account(r, server, 2, 2, T0);
    introduce(server, &mut [&mut alice, &mut bob], T0);
    let group = alice.devices[0].create_group(r, &[AccountId(2)]).unwrap();
    (alice, bob, group)
}

#[test]
fn group_no_send_session() {
    let mut r = rng(1);
    let mut server = Server::default();
    let (mut alice, _, _) = alice_and_bob(&mut r, &mut server);
    let unknown = GroupId::random(&mut r);
    let before = snapshot(&alice.devices[0]);
    assert_eq!(
        alice.devices[0].encrypt_group(&mut r, unknown, &[], b"hi", T0).unwrap_err(),
        GroupError::UnknownGroup(unknown)
    );
    assert_eq!(snapshot(&alice.devices[0]), before);
}

#[test]
fn group_no_recv_session() {
    let mut r = rng(2);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"hi", T0).unwrap();
    // Bob's primary gets the message but not the distribution.
    let before = snapshot(&bob.devices[0]);
    let error = read_group(&mut bob.devices[0], &send.message, T0).unwrap_err();
    assert_eq!(error, ReceiveError::NoSenderKey { group, sender: alice.devices[0].address() });
    assert_eq!(error.action(), Action::RetryLater);
    assert_eq!(snapshot(&bob.devices[0]), before);
    // Once the distribution arrives, the kept message decrypts.
    assert_eq!(deliver(&mut bob.devices[0], &send, T0).unwrap(), b"hi");
}

#[test]
fn group_basic_encrypt_decrypt() {
    let mut r = rng(3);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send =
        alice.devices[0].encrypt_group(&mut r, group, &bundles, b"smert za smert", T0).unwrap();
    assert!(!send.rotated);
    // Every device of Bob's account and Alice's other device, and no other, got the key.
    let mut reached: Vec<DeviceAddress> = send.distribution.iter().map(|e| e.recipient).collect();
    reached.sort();
    let mut expected: Vec<DeviceAddress> = bob.devices.iter().map(Device::address).collect();
    expected.push(alice.devices[1].address());
    expected.sort();
    assert_eq!(reached, expected);
    let members = [AccountId(1), AccountId(2)];
    let sender = alice.devices[0].address();
    for device in bob.devices.iter_mut().chain(alice.devices[1..].iter_mut()) {
        match device.receive(
            &send.distribution.iter().find(|e| e.recipient == device.address()).unwrap().bytes,
            None,
            T0,
        ) {
            Ok(Received::SenderKey(key)) => assert_eq!(key.group, group),
            other => panic!("{other:?}"),
        }
        let Received::Group(message) = device.receive(&send.message, None, T0).unwrap() else {
            panic!()
        };
        assert_eq!(message.payload.as_slice(), b"smert za smert");
        assert_eq!((message.group, message.sender), (group, sender));
        assert_eq!(message.membership_digest, group.membership_digest(&members));
        assert_eq!(message.message_id, send.message_id);
    }
    // The next send reaches everyone without a new distribution.
    let next = alice.devices[0].encrypt_group(&mut r, group, &[], b"again", T0).unwrap();
    assert!(next.distribution.is_empty() && next.skipped.is_empty() && !next.rotated);
    for device in &mut bob.devices {
        assert_eq!(read_group(device, &next.message, T0).unwrap(), b"again");
    }
}

#[test]
fn group_large_messages() {
    let mut r = rng(4);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let large = vec![0x61u8; MAX_MESSAGE_PLAINTEXT];
    let send = alice.devices[0].encrypt_group(&mut r, group, &bundles, &large, T0).unwrap();
    assert_eq!(deliver(&mut bob.devices[0], &send, T0).unwrap(), large);
    let too_large = vec![0u8; MAX_MESSAGE_PLAINTEXT + 1];
    assert_eq!(
        alice.devices[0].encrypt_group(&mut r, group, &bundles, &too_large, T0).unwrap_err(),
        GroupError::PayloadTooLarge(MAX_MESSAGE_PLAINTEXT + 1)
    );
}

#[test]
fn group_basic_ratchet() {
    let mut r = rng(5);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"1", T0).unwrap();
    let second = alice.devices[0].encrypt_group(&mut r, group, &[], b"2", T0).unwrap();
    let third = alice.devices[0].encrypt_group(&mut r, group, &[], b"3", T0).unwrap();
    let bob0 = &mut bob.devices[0];
    let key = &first.distribution.iter().find(|e| e.recipient == bob0.address()).unwrap().bytes;
    bob0.receive(key, None, T0).unwrap();
    assert_eq!(read_group(bob0, &second.message, T0).unwrap(), b"2");
    assert_eq!(read_group(bob0, &third.message, T0).unwrap(), b"3");
    assert_eq!(read_group(bob0, &first.message, T0).unwrap(), b"1");
    // Each key is used once: a replay is a duplicate, and changes nothing.
    let before = snapshot(bob0);
    for message in [&first.message, &second.message, &third.message] {
        assert_eq!(
            read_group(bob0, message, T0).unwrap_err(),
            ReceiveError::Session(SessionError::Duplicate)
        );
    }
    assert_eq!(snapshot(bob0), before);
}

#[test]
fn group_late_join() {
    let mut r = rng(6);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let early = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"before", T0).unwrap();
    // Bob links another companion; Alice learns the list; the next send gets the key to it,
    // and only to it.
    let late = link(&mut r, &mut server, &mut bob, T0);
    alice.devices[0].process_device_list(&server.newest(AccountId(2)), T0).unwrap();
    let bundles = server.bundles(&[AccountId(2)]);
    let send = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"after", T0).unwrap();
    assert!(!send.rotated, "a device joining does not need a new key");
    assert_eq!(send.distribution.len(), 1);
    assert_eq!(send.distribution[0].recipient, late);
    let device = bob.device(late);
    device.process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    assert_eq!(deliver(device, &send, T0).unwrap(), b"after");
    // The joiner cannot read what was sent before it held the key.
    assert!(read_group(device, &early.message, T0).is_err());
}

#[test]
fn group_out_of_order() {
    let mut r = rng(7);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"0", T0).unwrap();
    let mut messages = vec![(0u32, first.message.clone())];
    for i in 1..100u32 {
        let send = alice.devices[0]
            .encrypt_group(&mut r, group, &[], i.to_string().as_bytes(), T0)
            .unwrap();
        messages.push((i, send.message));
    }
    let bob0 = &mut bob.devices[0];
    let key = &first.distribution.iter().find(|e| e.recipient == bob0.address()).unwrap().bytes;
    bob0.receive(key, None, T0).unwrap();
    // A fixed shuffle.
    let mut order: Vec<usize> = (0..messages.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (i * 7919 + 13) % (i + 1));
    }
    for index in order {
        let (i, message) = &messages[index];
        assert_eq!(read_group(bob0, message, T0).unwrap(), i.to_string().as_bytes());
    }
}

#[test]
fn group_too_far_in_future() {
    let mut r = rng(8);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"0", T0).unwrap();
    let mut last = first.message.clone();
    let mut at_limit = Vec::new();
    for i in 1..=DEFAULT_MAX_FORWARD_JUMP + 1 {
        last = alice.devices[0].encrypt_group(&mut r, group, &[], b"x", T0).unwrap().message;
        if i == DEFAULT_MAX_FORWARD_JUMP {
            at_limit = last.clone();
        }
    }
    let bob0 = &mut bob.devices[0];
    let key = &first.distribution.iter().find(|e| e.recipient == bob0.address()).unwrap().bytes;
    bob0.receive(key, None, T0).unwrap();
    // Iteration 2,001 is 2,001 steps ahead: refused, nothing changes.
    let before = snapshot(bob0);
    let error = read_group(bob0, &last, T0).unwrap_err();
    assert_eq!(
        error,
        ReceiveError::Session(SessionError::TooFarAhead {
            jump: u64::from(DEFAULT_MAX_FORWARD_JUMP) + 1,
            limit: DEFAULT_MAX_FORWARD_JUMP
        })
    );
    assert_eq!(snapshot(bob0), before);
    // Iteration 2,000, exactly at the limit, decrypts.
    assert_eq!(read_group(bob0, &at_limit, T0).unwrap(), b"x");
}

#[test]
fn group_message_key_limit() {
    let mut r = rng(9);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"0", T0).unwrap();
    let mut messages = vec![first.message.clone()];
    let total = 2 * MAX_SKIPPED_KEYS;
    for _ in 1..total {
        messages
            .push(alice.devices[0].encrypt_group(&mut r, group, &[], b"k", T0).unwrap().message);
    }
    let bob0 = &mut bob.devices[0];
    let key = &first.distribution.iter().find(|e| e.recipient == bob0.address()).unwrap().bytes;
    bob0.receive(key, None, T0).unwrap();
    // Two jumps of just under the limit each skip more keys than are kept.
    let mid = MAX_SKIPPED_KEYS - 1;
    assert_eq!(read_group(bob0, &messages[mid], T0).unwrap(), b"k");
    assert_eq!(read_group(bob0, &messages[total - 1], T0).unwrap(), b"k");
    // The oldest skipped keys were discarded: the first message is gone for good.
    assert_eq!(
        read_group(bob0, &messages[0], T0).unwrap_err(),
        ReceiveError::Session(SessionError::Duplicate)
    );
    // The newest ones were kept: 1,999 from the second jump and one from the first, so the
    // boundary is exact.
    assert_eq!(read_group(bob0, &messages[total - 2], T0).unwrap(), b"k");
    assert_eq!(read_group(bob0, &messages[mid - 1], T0).unwrap(), b"k");
    assert_eq!(
        read_group(bob0, &messages[mid - 2], T0).unwrap_err(),
        ReceiveError::Session(SessionError::Duplicate)
    );
}

#[test]
fn a_removed_companion_cannot_read_what_follows() {
    let mut r = rng(10);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"all", T0).unwrap();
    for device in &mut bob.devices {
        assert_eq!(deliver(device, &first, T0).unwrap(), b"all");
    }
    // Bob removes a companion; Alice processes the list.
    let removed = bob.devices[2].address();
    let list = bob.devices[0].remove_companion(removed.device, T0).unwrap();
    server.publish(&list);
    for device in bob.devices.iter_mut().take(2) {
        device.process_device_list(&list.to_bytes(), T0).unwrap();
    }
    alice.devices[0].process_device_list(&list.to_bytes(), T0).unwrap();
    let after = alice.devices[0].encrypt_group(&mut r, group, &[], b"without it", T0).unwrap();
    assert!(after.rotated, "a departed holder forces a fresh key");
    assert!(after.distribution.iter().all(|e| e.recipient != removed));
    for device in bob.devices.iter_mut().take(2) {
        assert_eq!(deliver(device, &after, T0).unwrap(), b"without it");
    }
    // The removed device still holds the old key; the new message is under another one.
    let gone = &mut bob.devices[2];
    assert!(matches!(read_group(gone, &after.message, T0), Err(ReceiveError::NoSenderKey { .. })));
}

#[test]
fn a_removed_member_cannot_read_what_follows() {
    let mut r = rng(11);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 0, T0);
    let mut bob = account(&mut r, &mut server, 2, 1, T0);
    let mut carol = account(&mut r, &mut server, 3, 1, T0);
    introduce(&server, &mut [&mut alice, &mut bob, &mut carol], T0);
    let group = alice.devices[0].create_group(&mut r, &[AccountId(2), AccountId(3)]).unwrap();
    let bundles = server.bundles(&[AccountId(2), AccountId(3)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"three", T0).unwrap();
    for device in bob.devices.iter_mut().chain(carol.devices.iter_mut()) {
        assert_eq!(deliver(device, &first, T0).unwrap(), b"three");
    }
    alice.devices[0].set_group_members(group, &[AccountId(2)]).unwrap();
    assert_eq!(alice.devices[0].group_members(group).unwrap(), &[AccountId(1), AccountId(2)]);
    let after = alice.devices[0].encrypt_group(&mut r, group, &[], b"two", T0).unwrap();
    assert!(after.rotated);
    assert!(after.distribution.iter().all(|e| e.recipient.account == AccountId(2)));
    for device in &mut bob.devices {
        assert_eq!(deliver(device, &after, T0).unwrap(), b"two");
    }
    for device in &mut carol.devices {
        assert!(read_group(device, &after.message, T0).is_err());
    }
}

#[test]
fn own_devices_get_the_key_and_send_too() {
    let mut r = rng(12);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send =
        alice.devices[0].encrypt_group(&mut r, group, &bundles, b"from the phone", T0).unwrap();
    assert_eq!(deliver(&mut alice.devices[1], &send, T0).unwrap(), b"from the phone");
    // The companion joins the same group and sends under its own key.
    alice.devices[1].set_group_members(group, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let reply =
        alice.devices[1].encrypt_group(&mut r, group, &bundles, b"from the laptop", T0).unwrap();
    assert_eq!(deliver(&mut alice.devices[0], &reply, T0).unwrap(), b"from the laptop");
    assert_eq!(deliver(&mut bob.devices[1], &reply, T0).unwrap(), b"from the laptop");
}

#[test]
fn a_forged_distribution_from_a_device_outside_the_list_is_refused() {
    let mut r = rng(13);
    let mut server = Server::default();
    let (mut alice, _bob, _) = alice_and_bob(&mut r, &mut server);
    let target = alice.devices[0].address();
    // The server's own device at Bob's primary address, under another identity, with a list
    // it signed itself: its sender key travels in a prekey message under that identity.
    let mut impostor = Device::new(&mut r, addr(2, 0), T0);
    impostor.process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    let forged_group = impostor.create_group(&mut r, &[AccountId(1)]).unwrap();
    let bundles = server.bundles(&[AccountId(1)]);
    let send = impostor.encrypt_group(&mut r, forged_group, &bundles, b"trust me", T0).unwrap();
    let forged = &send.distribution.iter().find(|e| e.recipient == target).unwrap().bytes;
    // A device at an address Bob's list does not name, sending a distribution by hand.
    let mut unlisted = Device::new(&mut r, addr(2, 7), T0);
    unlisted.process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    let mut inner = vec![0u8; 40];
    inner.extend_from_slice(&forged_group.0);
    inner.extend_from_slice(&[0u8; 8 + 32 + 32]);
    let bundles = server.bundles(&[AccountId(1)]);
    let unlisted_message = multidevice::test_support::seal_inner(
        &mut unlisted,
        &mut r,
        target,
        multidevice::MessageKind::SenderKey,
        &inner,
        &bundles,
    )
    .unwrap();
    let device = &mut alice.devices[0];
    let before = snapshot(device);
    assert_eq!(
        device.receive(forged, None, T0).unwrap_err(),
        ReceiveError::Session(SessionError::IdentityMismatch(addr(2, 0)))
    );
    assert_eq!(
        device.receive(&unlisted_message, None, T0).unwrap_err(),
        ReceiveError::UnlistedSender(addr(2, 7))
    );
    assert_eq!(snapshot(device), before);
    assert!(matches!(read_group(device, &send.message, T0), Err(ReceiveError::NoSenderKey { .. })));
}

#[test]
fn a_group_message_replayed_into_another_group_is_refused() {
    let mut r = rng(14);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let other = alice.devices[0].create_group(&mut r, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let in_group = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"for one", T0).unwrap();
    let in_other = alice.devices[0].encrypt_group(&mut r, other, &bundles, b"for two", T0).unwrap();
    let bob0 = &mut bob.devices[0];
    deliver(bob0, &in_group, T0).unwrap();
    deliver(bob0, &in_other, T0).unwrap();
    // The server rewrites the group id of a message of the first group to the second's.
    let next = alice.devices[0].encrypt_group(&mut r, group, &[], b"secret", T0).unwrap();
    let mut moved = next.message.clone();
    moved[2..18].copy_from_slice(&other.0);
    let before = snapshot(bob0);
    assert!(read_group(bob0, &moved, T0).is_err());
    assert_eq!(snapshot(bob0), before);
    assert_eq!(read_group(bob0, &next.message, T0).unwrap(), b"secret");
}

#[test]
fn every_bit_flipped_in_a_group_message_is_refused() {
    let mut r = rng(15);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"intact", T0).unwrap();
    let bob0 = &mut bob.devices[0];
    let key = &send.distribution.iter().find(|e| e.recipient == bob0.address()).unwrap().bytes;
    bob0.receive(key, None, T0).unwrap();
    let before = snapshot(bob0);
    for byte in 0..send.message.len() {
        let mut bad = send.message.clone();
        bad[byte] ^= 0x01;
        assert!(bob0.receive(&bad, None, T0).is_err(), "byte {byte}");
    }
    assert_eq!(snapshot(bob0), before);
    assert_eq!(read_group(bob0, &send.message, T0).unwrap(), b"intact");
}

#[test]
fn group_state_survives_restarts_from_the_store() {
    let mut r = rng(16);
    let mut server = Server::default();
    let (mut alice, mut bob, _) = alice_and_bob(&mut r, &mut server);
    let key = StoreKey::from_bytes(&[5u8; 32]);
    let alice_store = MemoryStore::new();
    let bob_store = MemoryStore::new();
    StoredDevice::import(alice_store.clone(), &key, &mut r, &alice.devices[0].to_bytes()).unwrap();
    StoredDevice::import(bob_store.clone(), &key, &mut r, &bob.devices[0].to_bytes()).unwrap();
    let open =
        |store: &MemoryStore, r: &mut StdRng| StoredDevice::open(store.clone(), &key, r).unwrap();
    let group = open(&alice_store, &mut r).create_group(&mut r, &[AccountId(2)]).unwrap();
    for round in 0..4u64 {
        let now = Timestamp(T0.0 + round);
        let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
        let text = format!("round {round}");
        let send = open(&alice_store, &mut r)
            .encrypt_group(&mut r, group, &bundles, text.as_bytes(), now)
            .unwrap();
        assert_eq!(send.distribution.is_empty(), round > 0, "the key goes out once");
        let mut outbox = open(&alice_store, &mut r).outbox().unwrap();
        assert_eq!(outbox.len(), 1);
        let item = outbox.remove(0);
        assert_eq!(item.group_message.as_deref(), Some(send.message.as_slice()));
        for envelope in item.envelopes.iter().filter(|e| e.recipient == bob.devices[0].address()) {
            open(&bob_store, &mut r).receive(&envelope.bytes, None, now).unwrap();
        }
        let inbound = open(&bob_store, &mut r).receive(&send.message, None, now).unwrap();
        let Received::Group(message) = &inbound.received else { panic!() };
        assert_eq!(message.payload.as_slice(), text.as_bytes());
        open(&alice_store, &mut r).mark_sent(item.id).unwrap();
        // A companion of Bob's, in memory, follows along too.
        assert_eq!(deliver(&mut bob.devices[1], &send, now).unwrap(), text.as_bytes());
    }
    let _ = &mut alice;
}

#[test]
fn a_group_of_1024_accounts_of_five_devices_each() {
    let mut r = rng(17);
    let now = T0;
    let mut sender = Device::new(&mut r, addr(1, 0), now);
    let sender_list = sender.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    let mut members = Vec::new();
    let mut bundles = Vec::new();
    let mut sample = Vec::new();
    for id in 2..2 + 1024u64 {
        let mut primary = Device::new(&mut r, addr(id, 0), now);
        let mut devices = Vec::new();
        let mut list = Vec::new();
        for _ in 0..4 {
            let mut companion = Device::new(&mut r, addr(id, 9), now);
            let approval = primary.approve_companion(companion.public_identity(), now).unwrap();
            let signed = companion.countersign_approval(&approval).unwrap();
            list = primary.add_companion(&signed, now).unwrap().to_bytes();
            devices.push(companion);
        }
        devices.insert(0, primary);
        sender.process_device_list(&list, now).unwrap();
        bundles.extend(devices.iter().map(|d| d.prekey_upload().bundle(None)));
        members.push(AccountId(id));
        // Keep a few accounts' devices to check delivery: the first, one in the middle, the last.
        if [2, 513, 1025].contains(&id) {
            for device in &mut devices {
                device.process_device_list(&list, now).unwrap();
                device.process_device_list(&sender_list, now).unwrap();
            }
            sample.extend(devices);
        }
    }
    let group = sender.create_group(&mut r, &members).unwrap();
    let send = sender.encrypt_group(&mut r, group, &bundles, b"to five thousand", now).unwrap();
    assert_eq!(send.distribution.len(), 1024 * 5);
    assert!(send.skipped.is_empty() && send.lists_needed.is_empty());
    for device in &mut sample {
        assert_eq!(deliver(device, &send, now).unwrap(), b"to five thousand");
    }
    // The steady state: one message, no distribution, still readable by all.
    let next = sender.encrypt_group(&mut r, group, &[], b"and again", now).unwrap();
    assert!(next.distribution.is_empty());
    for device in &mut sample {
        assert_eq!(read_group(device, &next.message, now).unwrap(), b"and again");
    }
    let _ = DeviceId::PRIMARY;
}

#[test]
fn a_stale_list_rotates_the_key_away_from_its_companions() {
    let mut r = rng(18);
    let mut server = Server::default();
    let (mut alice, mut bob, group) = alice_and_bob(&mut r, &mut server);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"fresh", T0).unwrap();
    assert_eq!(first.distribution.len(), 4);
    // Fifteen days on, neither account's primary has refreshed its list: Alice keeps sending to
    // Bob's primary, but his companions' list is stale, so the key rotates away from them.
    let later = T0.plus_secs(15 * 24 * 3600);
    alice.devices[0].refresh_device_list(later).unwrap();
    let after = alice.devices[0].encrypt_group(&mut r, group, &[], b"stale", later).unwrap();
    assert!(after.rotated);
    assert_eq!(after.lists_needed, vec![AccountId(2)]);
    let reached: Vec<DeviceAddress> = after.distribution.iter().map(|e| e.recipient).collect();
    assert!(reached.contains(&bob.devices[0].address()));
    assert!(bob.devices[1..].iter().all(|d| !reached.contains(&d.address())));
    bob.devices[0].process_device_list(&server.newest(AccountId(1)), later).unwrap();
    let list = alice.devices[0].device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    bob.devices[0].process_device_list(&list, later).unwrap();
    assert_eq!(deliver(&mut bob.devices[0], &after, later).unwrap(), b"stale");
}

#[test]
fn receivers_drop_a_departed_devices_sender_keys() {
    let mut r = rng(19);
    let mut server = Server::default();
    let (alice, mut bob, _) = alice_and_bob(&mut r, &mut server);
    let key = StoreKey::from_bytes(&[6u8; 32]);
    let store = MemoryStore::new();
    let mut stored =
        StoredDevice::import(store.clone(), &key, &mut r, &alice.devices[0].to_bytes()).unwrap();
    // Bob's companion sends to a group with Alice; her stored device keeps its key.
    let companion = bob.devices[2].address();
    let group = bob.devices[2].create_group(&mut r, &[AccountId(1)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send = bob.devices[2].encrypt_group(&mut r, group, &bundles, b"hi", T0).unwrap();
    let envelope = send.distribution.iter().find(|e| e.recipient == stored.address()).unwrap();
    stored.receive(&envelope.bytes, None, T0).unwrap();
    stored.receive(&send.message, None, T0).unwrap();
    let keys = |store: &MemoryStore| {
        store.rows().iter().filter(|(t, _, _)| *t == multidevice::store::Table::GroupKey).count()
    };
    assert_eq!(keys(&store), 1);
    // Bob removes that companion; when Alice processes the list, its key goes.
    let list = bob.devices[0].remove_companion(companion.device, T0).unwrap();
    stored.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(keys(&store), 0);
    // The removed device goes on sending: refused, and no key to use anyway.
    let later = bob.devices[2].encrypt_group(&mut r, group, &[], b"still here", T0).unwrap();
    assert_eq!(
        stored.receive(&later.message, None, T0).map(|_| ()).unwrap_err(),
        ReceiveError::UnlistedSender(companion)
    );
}

/// The inner plaintext of a distribution message from `sender`: its list version and digest,
/// then `content`.
fn distribution_inner(sender: &Device, content: &[u8]) -> Vec<u8> {
    let list = sender.device_list(sender.account()).unwrap();
    // A message id of its own: one the receiver saw would be taken as a redelivery.
    [&list.version().to_be_bytes()[..], &list.digest(), &[0xD1; 16], content].concat()
}

/// The distribution content of `sender`'s current key for `group`, as a new holder would get it
/// now.
fn current_distribution(sender: &Device, group: GroupId) -> Vec<u8> {
    let key = multidevice::test_support::group_sender_key(sender, group).unwrap();
    [
        &group.0[..],
        &key.key_id.to_be_bytes(),
        &key.iteration.to_be_bytes(),
        &key.chain_key[..],
        &key.signing_public,
    ]
    .concat()
}

/// Found while modelling the `group_distribution` fuzz target: a receiver keeps two keys per
/// sending device and ignores a distribution of a key it holds; once a key is forgotten (two
/// rotations later) it is retired, so the same distribution sent again (by a device restored
/// from a backup, say) is not taken and the messages read under it stay read.
#[test]
fn a_stale_distribution_of_a_forgotten_key_does_not_reopen_old_messages() {
    let mut r = rng(20);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 0, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    let mut carol = account(&mut r, &mut server, 3, 0, T0);
    let mut dave = account(&mut r, &mut server, 4, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob, &mut carol, &mut dave], T0);
    let members = [AccountId(2), AccountId(3), AccountId(4)];
    let group = alice.devices[0].create_group(&mut r, &members).unwrap();
    let bundles = server.bundles(&[AccountId(2), AccountId(3), AccountId(4)]);
    let first = alice.devices[0].encrypt_group(&mut r, group, &bundles, b"k1 #0", T0).unwrap();
    let bob0 = &mut bob.devices[0];
    assert_eq!(deliver(bob0, &first, T0).unwrap(), b"k1 #0");
    // What a device that joined now would get: key 1 at iteration 1.
    let stale = current_distribution(&alice.devices[0], group);
    let second = alice.devices[0].encrypt_group(&mut r, group, &[], b"k1 #1", T0).unwrap();
    assert_eq!(read_group(bob0, &second.message, T0).unwrap(), b"k1 #1");
    // Two rotations: Bob now holds keys 2 and 3; key 1 is forgotten.
    for members in [&[AccountId(2), AccountId(4)][..], &[AccountId(2)]] {
        alice.devices[0].set_group_members(group, members).unwrap();
        let send = alice.devices[0].encrypt_group(&mut r, group, &[], b"rotated", T0).unwrap();
        assert!(send.rotated);
        assert_eq!(deliver(bob0, &send, T0).unwrap(), b"rotated");
    }
    assert!(matches!(read_group(bob0, &second.message, T0), Err(ReceiveError::NoSenderKey { .. })));
    // Alice's device sends key 1's old distribution again (a restored backup, say).
    let inner = distribution_inner(&alice.devices[0], &stale);
    let envelope = multidevice::test_support::seal_inner(
        &mut alice.devices[0],
        &mut r,
        bob0.address(),
        multidevice::MessageKind::SenderKey,
        &inner,
        &[],
    )
    .unwrap();
    let taken = bob0.receive(&envelope, None, T0);
    assert!(
        matches!(taken, Ok(Received::SenderKey(ref key)) if !key.taken),
        "a retired key was taken again: {taken:?}"
    );
    // The message Bob already read under key 1 must not decrypt a second time.
    let again = read_group(bob0, &second.message, T0);
    assert!(again.is_err(), "read twice after {taken:?}: {again:?}");
}
