//! Fan-out through the public API: every authorized device gets one envelope, the sender none;
//! inline and shared-body payloads; bundles; own-device copies; removed and unauthorized devices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::{
    AccountId, Action, Conversation, Device, FanoutError, FanoutSkip, INLINE_THRESHOLD,
    MessageKind, PrekeyBundle, ReceiveError, Received, ReceivedMessage, SignedDeviceList,
    Timestamp, hazmat,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use support::*;

/// An account: its devices (primary first) and its newest list.
struct Account {
    devices: Vec<Device>,
    list: SignedDeviceList,
}

fn account(rng: &mut StdRng, id: u64, companions: usize) -> Account {
    let mut primary = Device::new(rng, addr(id, 0), T0);
    let mut devices = Vec::new();
    let mut list = primary.refresh_device_list(T0).unwrap();
    for _ in 0..companions {
        let mut companion = Device::new(rng, addr(id, 99), T0);
        let approval = primary.approve_companion(companion.public_identity(), T0).unwrap();
        let signed = companion.countersign_approval(&approval).unwrap();
        list = primary.add_companion(&signed, T0).unwrap();
        devices.push(companion);
    }
    devices.insert(0, primary);
    for device in &mut devices {
        device.generate_one_time_prekeys(rng, 3).unwrap();
    }
    Account { devices, list }
}

/// Every device of both accounts learns both lists.
fn introduce(a: &mut Account, b: &mut Account) {
    let lists = [a.list.to_bytes(), b.list.to_bytes()];
    for device in a.devices.iter_mut().chain(b.devices.iter_mut()) {
        for list in &lists {
            device.process_device_list(list, T0).unwrap();
        }
    }
}

fn bundles(accounts: &[&Account]) -> Vec<PrekeyBundle> {
    accounts
        .iter()
        .flat_map(|a| a.devices.iter().map(|d| d.prekey_upload().bundle(Some(0))))
        .collect()
}

/// Receives `bytes` as a message (not history).
fn recv(
    device: &mut Device,
    bytes: &[u8],
    body: Option<&[u8]>,
) -> Result<ReceivedMessage, ReceiveError> {
    match device.receive(bytes, body, T0)? {
        Received::Message(message) => Ok(message),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn deliver(account: &mut Account, fanout: &multidevice::FanoutMessage, expected: &[u8]) -> usize {
    let mut delivered = 0;
    for device in &mut account.devices {
        if let Some(envelope) = fanout.envelopes.iter().find(|e| e.recipient == device.address()) {
            let got = recv(device, &envelope.bytes, fanout.body.as_deref()).unwrap();
            assert_eq!(got.payload.as_slice(), expected);
            delivered += 1;
        }
    }
    delivered
}

#[test]
fn every_recipient_and_other_own_device_decrypts_and_the_sender_gets_no_copy() {
    let mut rng = rng(1);
    let mut alice = account(&mut rng, 1, 2);
    let mut bob = account(&mut rng, 2, 3);
    introduce(&mut alice, &mut bob);
    let all = bundles(&[&alice, &bob]);
    let sender = alice.devices[1].address();
    let fanout =
        alice.devices[1].encrypt_fanout(&mut rng, &[AccountId(2)], &all, b"hello all", T0).unwrap();
    assert!(fanout.skipped.is_empty(), "{:?}", fanout.skipped);
    assert_eq!(fanout.envelopes.len(), 4 + 2);
    assert!(fanout.envelopes.iter().all(|e| e.recipient != sender));
    assert_eq!(deliver(&mut bob, &fanout, b"hello all"), 4);
    // Alice's other devices get an own-device copy.
    for device in alice.devices.iter_mut().filter(|d| d.address() != sender) {
        let envelope = fanout.envelopes.iter().find(|e| e.recipient == device.address()).unwrap();
        let got = recv(device, &envelope.bytes, None).unwrap();
        assert_eq!(got.conversation, Conversation::OwnCopy { to: vec![AccountId(2)] });
        assert_eq!(got.sender, sender);
    }
    // A second message rides the established sessions, with no bundles at all.
    let again =
        alice.devices[1].encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"again", T0).unwrap();
    assert!(again.skipped.is_empty());
    assert_eq!(deliver(&mut bob, &again, b"again"), 4);
}

#[test]
fn payloads_at_and_above_the_inline_threshold_take_both_modes() {
    let mut rng = rng(2);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 1);
    introduce(&mut alice, &mut bob);
    let all = bundles(&[&bob]);
    for size in [0, 1, INLINE_THRESHOLD, INLINE_THRESHOLD + 1, 100_000] {
        let payload = vec![0xa5u8; size];
        let fanout =
            alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &all, &payload, T0).unwrap();
        assert_eq!(fanout.body.is_some(), size > INLINE_THRESHOLD, "size {size}");
        assert_eq!(deliver(&mut bob, &fanout, &payload), 2);
    }
}

#[test]
fn missing_and_bad_bundles_are_reported() {
    let mut rng = rng(3);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 2);
    introduce(&mut alice, &mut bob);
    let mut supplied = bundles(&[&bob]);
    // Companion 1: bundle missing. Companion 2: signed prekey signature broken.
    let missing = supplied.remove(1).address;
    supplied[1].signed_prekey.signature[0] ^= 1;
    let bad = supplied[1].address;
    let fanout =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &supplied, b"x", T0).unwrap();
    assert_eq!(fanout.envelopes.len(), 1);
    assert!(fanout.skipped.contains(&(missing, FanoutSkip::MissingBundle)));
    assert!(fanout.skipped.iter().any(|(a, r)| *a == bad && matches!(r, FanoutSkip::BadBundle(_))));
    // A bundle with an identity other than the list's is refused.
    let mut substituted = bundles(&[&bob]);
    substituted[1].identity = alice.devices[0].public_identity().clone();
    let fanout =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &substituted, b"x", T0).unwrap();
    assert!(fanout.skipped.contains(&(missing, FanoutSkip::BundleIdentityMismatch)));
}

#[test]
fn unauthorized_sender_is_rejected_without_state_change() {
    let mut rng = rng(4);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 0);
    introduce(&mut alice, &mut bob);
    // A device of account 1 that the primary never authorized, on a raw session.
    let mut rogue = Device::new(&mut rng, addr(1, 5), T0);
    let bundle = bob.devices[0].prekey_upload().bundle(Some(0)).verify().unwrap();
    hazmat::start_session(&mut rogue, &mut rng, &bundle).unwrap();
    let wire =
        hazmat::encrypt(&mut rogue, &mut rng, bob.devices[0].address(), b"trust me").unwrap();
    let before = snapshot(&bob.devices[0]);
    // As a raw message it is of the wrong kind; relabelled as a direct message it comes from an
    // address Bob's list of account 1 does not name. Either way nothing is spent or created.
    assert_eq!(
        recv(&mut bob.devices[0], &wire, None).unwrap_err(),
        ReceiveError::WrongKind(MessageKind::Raw)
    );
    let mut relabelled = wire.clone();
    relabelled[2] = 1;
    let error = recv(&mut bob.devices[0], &relabelled, None).unwrap_err();
    assert_eq!(error, ReceiveError::UnlistedSender(rogue.address()));
    assert_eq!(error.action(), Action::FetchList(AccountId(1)));
    assert_eq!(snapshot(&bob.devices[0]), before);
    assert_eq!(bob.devices[0].one_time_prekeys_remaining(), 3);
}

#[test]
fn removed_device_gets_nothing() {
    let mut rng = rng(5);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 2);
    introduce(&mut alice, &mut bob);
    let all = bundles(&[&bob]);
    alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &all, b"before", T0).unwrap();
    let removed = bob.devices[2].address();
    let list = bob.devices[0].remove_companion(removed.device, T0).unwrap();
    alice.devices[0].process_device_list(&list.to_bytes(), T0).unwrap();
    let fanout =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &all, b"after", T0).unwrap();
    assert!(fanout.envelopes.iter().all(|e| e.recipient != removed));
    assert_eq!(fanout.envelopes.len(), 2);
}

#[test]
fn a_body_swapped_for_another_messages_body_is_rejected() {
    let mut rng = rng(6);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 0);
    introduce(&mut alice, &mut bob);
    let all = bundles(&[&bob]);
    let big_a = vec![1u8; 4096];
    let big_b = vec![2u8; 4096];
    let a = alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &all, &big_a, T0).unwrap();
    let b = alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], &big_b, T0).unwrap();
    let receiver = &mut bob.devices[0];
    let before = snapshot(receiver);
    let error = recv(receiver, &a.envelopes[0].bytes, b.body.as_deref()).unwrap_err();
    assert_eq!(error, ReceiveError::BodyDigestMismatch);
    let missing = recv(receiver, &a.envelopes[0].bytes, None).unwrap_err();
    assert_eq!(missing, ReceiveError::BodyMissing);
    assert_eq!(missing.action(), Action::RetryLater);
    assert_eq!(snapshot(receiver), before);
    let got = recv(receiver, &a.envelopes[0].bytes, a.body.as_deref()).unwrap();
    assert_eq!(got.payload.as_slice(), big_a.as_slice());
}

#[test]
fn a_newer_sender_list_is_announced_and_never_causes_a_drop() {
    let mut rng = rng(7);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 0);
    introduce(&mut alice, &mut bob);
    let all = bundles(&[&bob]);
    // Alice's primary refreshes; Bob has not fetched the new list yet.
    let newer = alice.devices[0].refresh_device_list(Timestamp(T0.0 + 60)).unwrap();
    let fanout =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &all, b"hi", T0).unwrap();
    let got = recv(&mut bob.devices[0], &fanout.envelopes[0].bytes, None).unwrap();
    assert!(got.list_refresh_needed);
    assert_eq!(got.sender_list_version, newer.version());
    assert_eq!(got.payload.as_slice(), b"hi");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn random_device_sets_and_sizes_reach_exactly_the_authorized_devices(
        sender_companions in 0usize..=4,
        recipient_companions in 0usize..=4,
        size in 0usize..3000,
        seed in any::<u64>(),
    ) {
        let mut rng = rng(seed);
        let mut alice = account(&mut rng, 1, sender_companions);
        let mut bob = account(&mut rng, 2, recipient_companions);
        introduce(&mut alice, &mut bob);
        let all = bundles(&[&alice, &bob]);
        let payload: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let fanout = alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &all, &payload, T0).unwrap();
        prop_assert_eq!(fanout.envelopes.len(), recipient_companions + 1 + sender_companions);
        prop_assert_eq!(deliver(&mut bob, &fanout, &payload), recipient_companions + 1);
    }
}

#[test]
fn one_call_reaches_every_device_of_several_accounts() {
    let mut rng = rng(8);
    let mut alice = account(&mut rng, 1, 1);
    let mut bob = account(&mut rng, 2, 4);
    let mut carol = account(&mut rng, 3, 2);
    introduce(&mut alice, &mut bob);
    introduce(&mut alice, &mut carol);
    let all = bundles(&[&alice, &bob, &carol]);
    let to = [AccountId(2), AccountId(3)];
    let fanout = alice.devices[0].encrypt_fanout(&mut rng, &to, &all, b"group", T0).unwrap();
    assert_eq!(fanout.envelopes.len(), 5 + 3 + 1);
    assert_eq!(deliver(&mut bob, &fanout, b"group"), 5);
    assert_eq!(deliver(&mut carol, &fanout, b"group"), 3);
    let own = &mut alice.devices[1];
    let envelope = fanout.envelopes.iter().find(|e| e.recipient == own.address()).unwrap();
    let got = recv(own, &envelope.bytes, None).unwrap();
    assert_eq!(got.conversation, Conversation::OwnCopy { to: to.to_vec() });
    assert_eq!(
        alice.devices[0].encrypt_fanout(&mut rng, &[], &all, b"x", T0).unwrap_err(),
        FanoutError::TooManyAccounts(0)
    );
}

#[test]
fn a_sender_missing_from_a_stale_list_asks_for_a_refresh_and_the_retry_succeeds() {
    let mut rng = rng(9);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 0);
    introduce(&mut alice, &mut bob);
    // Alice links a phone; Bob still holds Alice's old list.
    let mut phone = Device::new(&mut rng, addr(1, 99), T0);
    let approval = alice.devices[0].approve_companion(phone.public_identity(), T0).unwrap();
    let signed = phone.countersign_approval(&approval).unwrap();
    let newer = alice.devices[0].add_companion(&signed, T0).unwrap();
    phone.process_device_list(&newer.to_bytes(), T0).unwrap();
    phone.process_device_list(&bob.list.to_bytes(), T0).unwrap();
    let bundle = bob.devices[0].prekey_upload().bundle(Some(0));
    let fanout =
        phone.encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"from my phone", T0).unwrap();
    let wire = &fanout.envelopes[0].bytes;
    let receiver = &mut bob.devices[0];
    let before = snapshot(receiver);
    let error = recv(receiver, wire, None).unwrap_err();
    assert_eq!(error, ReceiveError::UnlistedSender(phone.address()));
    assert_eq!(error.action(), Action::FetchList(AccountId(1)));
    assert_eq!(snapshot(receiver), before);
    receiver.process_device_list(&newer.to_bytes(), T0).unwrap();
    let got = recv(receiver, wire, None).unwrap();
    assert_eq!(got.payload.as_slice(), b"from my phone");
    assert!(!got.list_refresh_needed);
}

#[test]
fn recipient_account_count_is_bounded_at_n_and_n_plus_one() {
    let mut rng = rng(10);
    let mut alice = account(&mut rng, 1, 0);
    let limit = multidevice::MAX_FANOUT_ACCOUNTS;
    let accounts: Vec<AccountId> = (100..100 + limit as u64 + 1).map(AccountId).collect();
    let sender = &mut alice.devices[0];
    // N accounts pass the bound (and then fail on the first list the sender does not hold).
    assert_eq!(
        sender.encrypt_fanout(&mut rng, &accounts[..limit], &[], b"x", T0).unwrap_err(),
        FanoutError::UnknownAccount(AccountId(100))
    );
    assert_eq!(
        sender.encrypt_fanout(&mut rng, &accounts, &[], b"x", T0).unwrap_err(),
        FanoutError::TooManyAccounts(limit + 1)
    );
}

#[test]
fn debug_output_never_shows_payloads() {
    let mut rng = rng(11);
    let mut alice = account(&mut rng, 1, 0);
    let mut bob = account(&mut rng, 2, 0);
    introduce(&mut alice, &mut bob);
    let all = bundles(&[&bob]);
    let secret = b"SECRET-PAYLOAD-1234";
    for payload in [secret.to_vec(), [secret.as_slice(); 40].concat()] {
        let fanout =
            alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &all, &payload, T0).unwrap();
        let received =
            bob.devices[0].receive(&fanout.envelopes[0].bytes, fanout.body.as_deref(), T0).unwrap();
        let shown = format!("{received:?} {fanout:?}");
        let as_numbers = format!("{:?}", &secret[..4]);
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains(as_numbers.trim_matches(|c| c == '[' || c == ']')), "{shown}");
        let Received::Message(message) = received else { panic!("expected a message") };
        assert_eq!(message.payload.as_slice(), payload.as_slice());
    }
}
