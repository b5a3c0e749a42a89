//! Accounts and signed device lists: authorization, rollback, equivocation, identity changes,
//! staleness, the 14-day rule, removal and logout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::consts::{
    DAY_SECS, DEVICE_LIST_TTL_SECS, MAX_COMPANIONS, PRIMARY_INACTIVITY_SECS,
};
use multidevice::{
    AccountId, AccountStatus, Action, Device, DeviceId, DeviceListError, FanoutError, FanoutSkip,
    KeyError, ReceiveError, Received, SessionError, SignatureKind, SignedDeviceList, Timestamp,
    hazmat,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use support::*;

/// Bytes of a list body before its entries: version, type, account, identity, version,
/// issued-at, previous digest, count.
const BODY_FIXED: usize = 2 + 8 + 128 + 8 + 8 + 32 + 1;
const ENTRY: usize = 40;
const SIGNED_IDENTITY: usize = 2 + 24 + 128 + 64 + 64;

/// Links a fresh companion to `primary`; returns it and the new list.
fn link(rng: &mut StdRng, primary: &mut Device, now: Timestamp) -> (Device, SignedDeviceList) {
    let mut companion = Device::new(rng, addr(primary.account().0, 99), now);
    let approval = primary.approve_companion(companion.public_identity(), now).unwrap();
    let signed = companion.countersign_approval(&approval).unwrap();
    let list = primary.add_companion(&signed, now).unwrap();
    companion.process_device_list(&list.to_bytes(), now).unwrap();
    (companion, list)
}

fn list_offset_of_companion(entries: usize, index: usize) -> usize {
    BODY_FIXED + entries * ENTRY + 64 + index * SIGNED_IDENTITY
}

#[test]
fn primary_links_four_companions_and_refuses_a_fifth() {
    let mut rng = rng(1);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let mut last = None;
    for _ in 0..MAX_COMPANIONS {
        last = Some(link(&mut rng, &mut primary, T0).1);
    }
    let list = peer.process_device_list(&last.unwrap().to_bytes(), T0).unwrap().list;
    assert_eq!(list.devices().len(), MAX_COMPANIONS + 1);
    let fifth = Device::new(&mut rng, addr(1, 99), T0);
    assert_eq!(
        primary.approve_companion(fifth.public_identity(), T0),
        Err(DeviceListError::CompanionLimit { limit: MAX_COMPANIONS })
    );
}

#[test]
fn list_with_five_companions_is_rejected() {
    let mut rng = rng(2);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut list = None;
    for _ in 0..MAX_COMPANIONS {
        list = Some(link(&mut rng, &mut primary, T0).1.to_bytes());
    }
    let bytes = list.unwrap();
    // Append a fifth entry and signed identity: the count check fires before any signature.
    let mut five = bytes[..BODY_FIXED + 5 * ENTRY].to_vec();
    five[BODY_FIXED - 1] = 6;
    five.extend_from_slice(&bytes[BODY_FIXED + 4 * ENTRY..BODY_FIXED + 5 * ENTRY]);
    five.extend_from_slice(&bytes[BODY_FIXED + 5 * ENTRY..]);
    five.extend_from_slice(&bytes[bytes.len() - SIGNED_IDENTITY..]);
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let error = peer.process_device_list(&five, T0).unwrap_err();
    assert!(matches!(
        error,
        DeviceListError::Decode(_) | DeviceListError::TooManyCompanions { .. }
    ));
}

#[test]
fn server_injecting_an_unsigned_device_is_rejected() {
    let mut rng = rng(3);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (_companion, list) = link(&mut rng, &mut primary, T0);
    let bytes = list.to_bytes();
    // The server adds a second companion entry and identity of its own making.
    let mut evil = Device::new(&mut rng, addr(1, 7), T0);
    let mut other_primary = Device::new(&mut rng, addr(1, 0), T0);
    let approval = other_primary.approve_companion(evil.public_identity(), T0).unwrap();
    let evil_signed = evil.countersign_approval(&approval).unwrap();
    let mut injected = bytes[..BODY_FIXED + 2 * ENTRY].to_vec();
    injected[BODY_FIXED - 1] = 3;
    injected.extend_from_slice(&2u32.to_be_bytes());
    injected.extend_from_slice(&1u32.to_be_bytes());
    injected.extend_from_slice(evil.public_identity().fingerprint().as_bytes());
    injected.extend_from_slice(&bytes[BODY_FIXED + 2 * ENTRY..]);
    injected.extend_from_slice(&evil_signed.to_bytes());
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let before = snapshot(&peer);
    assert_eq!(
        peer.process_device_list(&injected, T0).unwrap_err(),
        DeviceListError::Key(KeyError::BadSignature(SignatureKind::DeviceList))
    );
    assert_eq!(snapshot(&peer), before);
}

#[test]
fn server_injecting_a_device_signed_by_another_account_is_rejected() {
    let mut rng = rng(4);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (_c, genuine) = link(&mut rng, &mut primary, T0);
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&genuine.to_bytes(), T0).unwrap();
    // A forger registers its own "primary" for account 1 and signs in a device.
    let mut forger = Device::new(&mut rng, addr(1, 0), T0);
    let (_evil, forged) = link(&mut rng, &mut forger, T0);
    assert_eq!(
        peer.process_device_list(&forged.to_bytes(), T0).unwrap_err(),
        DeviceListError::IdentityChanged { account: AccountId(1) }
    );
    // A companion signed by another account's primary, spliced into the genuine list.
    let bytes = genuine.to_bytes();
    let forged_bytes = forged.to_bytes();
    let mut spliced = bytes[..list_offset_of_companion(2, 0)].to_vec();
    spliced.extend_from_slice(&forged_bytes[list_offset_of_companion(2, 0)..]);
    let mut fresh_peer = Device::new(&mut rng, addr(3, 0), T0);
    let error = fresh_peer.process_device_list(&spliced, T0).unwrap_err();
    assert!(
        matches!(error, DeviceListError::EntryMismatch { .. } | DeviceListError::Key(_)),
        "{error:?}"
    );
}

#[test]
fn device_with_missing_device_signature_is_rejected() {
    let mut rng = rng(5);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (_c, list) = link(&mut rng, &mut primary, T0);
    let mut bytes = list.to_bytes();
    let sig = list_offset_of_companion(2, 0) + 2 + 24 + 128 + 64;
    bytes[sig..sig + 64].fill(0);
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    assert_eq!(
        peer.process_device_list(&bytes, T0).unwrap_err(),
        DeviceListError::Key(KeyError::BadSignature(SignatureKind::DeviceSignature))
    );
}

#[test]
fn label_confusion_between_signature_kinds_is_rejected() {
    let mut rng = rng(6);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (_c, list) = link(&mut rng, &mut primary, T0);
    let bytes = list.to_bytes();
    let list_sig = BODY_FIXED + 2 * ENTRY;
    let companion = list_offset_of_companion(2, 0);
    let account_sig = companion + 2 + 24 + 128;
    let device_sig = account_sig + 64;
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let cases: [(&str, usize, usize); 4] = [
        ("list signature as account signature", list_sig, account_sig),
        ("device signature as account signature", device_sig, account_sig),
        ("account signature as device signature", account_sig, device_sig),
        ("account signature as list signature", account_sig, list_sig),
    ];
    for (name, from, to) in cases {
        let mut confused = bytes.clone();
        let signature = bytes[from..from + 64].to_vec();
        confused[to..to + 64].copy_from_slice(&signature);
        let error = peer.process_device_list(&confused, T0).unwrap_err();
        assert!(
            matches!(error, DeviceListError::Key(KeyError::BadSignature(_))),
            "{name}: {error:?}"
        );
    }
    // The identity's own signature over its agreement key, presented as a list signature.
    let identity_sig = 2 + 8 + 64;
    let mut confused = bytes.clone();
    let signature = bytes[identity_sig..identity_sig + 64].to_vec();
    confused[list_sig..list_sig + 64].copy_from_slice(&signature);
    assert!(peer.process_device_list(&confused, T0).is_err());
    peer.process_device_list(&bytes, T0).unwrap();
}

#[test]
fn every_bit_flipped_in_a_signed_list_is_rejected() {
    let mut rng = rng(7);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (_c, list) = link(&mut rng, &mut primary, T0);
    let bytes = list.to_bytes();
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let before = snapshot(&peer);
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[byte] ^= 1 << bit;
            assert!(peer.process_device_list(&bad, T0).is_err(), "flip {byte}.{bit} accepted");
        }
    }
    assert_eq!(snapshot(&peer), before);
    peer.process_device_list(&bytes, T0).unwrap();
}

#[test]
fn old_list_replayed_after_a_removal_is_rejected_as_rollback() {
    let mut rng = rng(8);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (companion, with) = link(&mut rng, &mut primary, T0);
    let without = primary.remove_companion(companion.address().device, T0).unwrap();
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&with.to_bytes(), T0).unwrap();
    let update = peer.process_device_list(&without.to_bytes(), T0).unwrap();
    assert_eq!(update.removed, vec![companion.address()]);
    let before = snapshot(&peer);
    assert_eq!(
        peer.process_device_list(&with.to_bytes(), T0).unwrap_err(),
        DeviceListError::RollbackRejected { seen: without.version(), got: with.version() }
    );
    assert_eq!(snapshot(&peer), before);
    assert!(peer.device_list(primary.account()).unwrap().device(companion.address()).is_none());
}

#[test]
fn same_version_with_different_content_is_equivocation() {
    let mut rng = rng(9);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let base = primary.refresh_device_list(T0).unwrap();
    let copy_bytes = primary.to_bytes();
    let a = primary.refresh_device_list(T0.plus_secs(1)).unwrap();
    // The same primary state, restored, signs a different list with the same version.
    let mut fork = Device::from_bytes(&copy_bytes).unwrap();
    let b = fork.refresh_device_list(T0.plus_secs(2)).unwrap();
    assert_eq!(a.version(), b.version());
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&base.to_bytes(), T0).unwrap();
    peer.process_device_list(&a.to_bytes(), T0).unwrap();
    let before = snapshot(&peer);
    assert_eq!(
        peer.process_device_list(&b.to_bytes(), T0).unwrap_err(),
        DeviceListError::Equivocation { version: a.version() }
    );
    assert_eq!(snapshot(&peer), before);
    // Re-delivering the identical list is fine.
    peer.process_device_list(&a.to_bytes(), T0).unwrap();
}

#[test]
fn identity_change_is_an_error_until_the_app_accepts_it() {
    let mut rng = rng(10);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let list = primary.refresh_device_list(T0).unwrap();
    peer.process_device_list(&list.to_bytes(), T0).unwrap();
    let code_before = peer.security_code(primary.account()).unwrap();
    // The user re-registers: a new primary, a new account identity.
    let mut reregistered = Device::new(&mut rng, addr(1, 0), T0);
    let new_list = reregistered.refresh_device_list(T0).unwrap();
    assert_eq!(
        peer.process_device_list(&new_list.to_bytes(), T0).unwrap_err(),
        DeviceListError::IdentityChanged { account: primary.account() }
    );
    assert!(peer.identity_change_pending(primary.account()));
    peer.accept_identity_change(&new_list.to_bytes(), T0).unwrap();
    assert!(!peer.identity_change_pending(primary.account()));
    let code_after = peer.security_code(primary.account()).unwrap();
    assert_ne!(code_before, code_after);
}

#[test]
fn list_past_its_ttl_restricts_sending_to_the_primary() {
    let mut rng = rng(11);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (mut companion, list) = link(&mut rng, &mut primary, T0);
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&list.to_bytes(), T0).unwrap();
    primary.generate_one_time_prekeys(&mut rng, 4).unwrap();
    companion.generate_one_time_prekeys(&mut rng, 4).unwrap();
    let bundles =
        [primary.prekey_upload().bundle(Some(0)), companion.prekey_upload().bundle(Some(0))];
    let reached = |peer: &mut Device, rng: &mut StdRng, at: Timestamp| {
        let sent = peer.encrypt_fanout(rng, &[AccountId(1)], &bundles, b"x", at).unwrap();
        let to: Vec<_> = sent.envelopes.iter().map(|e| e.recipient).collect();
        (to, sent.skipped, sent.lists_needed)
    };
    // Companions are reached while the list is at most 14 days old.
    let day14 = T0.plus_secs(PRIMARY_INACTIVITY_SECS);
    let (to, skipped, needed) = reached(&mut peer, &mut rng, day14);
    assert_eq!(to, vec![primary.address(), companion.address()]);
    assert!(skipped.is_empty() && needed.is_empty());
    // One second later only the primary is, and the list is asked for.
    let (to, skipped, needed) = reached(&mut peer, &mut rng, day14.plus_secs(1));
    assert_eq!(to, vec![primary.address()]);
    assert_eq!(skipped, vec![(companion.address(), FanoutSkip::StaleList)]);
    assert_eq!(needed, vec![AccountId(1)]);
    // Past the TTL the primary is still the only device reached.
    let past_ttl = T0.plus_secs(DEVICE_LIST_TTL_SECS + 1);
    let (to, _, needed) = reached(&mut peer, &mut rng, past_ttl);
    assert_eq!(to, vec![primary.address()]);
    assert_eq!(needed, vec![AccountId(1)]);
    // Winding the clock back does not make the list fresh again.
    let (to, _, _) = reached(&mut peer, &mut rng, T0);
    assert_eq!(to, vec![primary.address()]);
}

#[test]
fn companion_is_active_on_day_13_signed_out_on_day_15_and_stays_signed_out() {
    let mut rng = rng(12);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (mut companion, _list) = link(&mut rng, &mut primary, T0);
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.generate_one_time_prekeys(&mut rng, 2).unwrap();
    let day = |d: u64| T0.plus_secs(d * DAY_SECS);
    assert_eq!(companion.account_status(day(13)), AccountStatus::Active);
    assert_eq!(companion.account_status(day(14)), AccountStatus::Active);
    assert_eq!(companion.account_status(day(14).plus_secs(1)), AccountStatus::SignedOut);
    // Reading the status changed nothing: the clock still says day 0.
    assert_eq!(companion.account_status(T0), AccountStatus::Active);
    let bundle = peer.prekey_upload().bundle(Some(0)).verify().unwrap();
    hazmat::start_session(&mut companion, &mut rng, &bundle).unwrap();
    let peer_list = peer.device_list(peer.account()).unwrap().signed_bytes().to_vec();
    companion.process_device_list(&peer_list, day(15)).unwrap();
    assert_eq!(companion.account_status(day(15)), AccountStatus::SignedOut);
    // The clock is wound back: still signed out.
    assert_eq!(companion.account_status(day(1)), AccountStatus::SignedOut);
    assert_eq!(
        hazmat::encrypt(&mut companion, &mut rng, peer.address(), b"hi"),
        Err(SessionError::SignedOut)
    );
    assert_eq!(
        companion.encrypt_fanout(&mut rng, &[peer.account()], &[], b"hi", day(1)).unwrap_err(),
        FanoutError::Session(SessionError::SignedOut)
    );
    // A fresh list from the primary brings it back.
    let fresh = primary.refresh_device_list(day(15)).unwrap();
    companion.process_device_list(&fresh.to_bytes(), day(15)).unwrap();
    assert_eq!(companion.account_status(day(15)), AccountStatus::Active);
    assert!(hazmat::encrypt(&mut companion, &mut rng, peer.address(), b"hi").is_ok());
}

#[test]
fn signed_out_companion_cannot_decrypt() {
    let mut rng = rng(13);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (mut companion, list) = link(&mut rng, &mut primary, T0);
    companion.generate_one_time_prekeys(&mut rng, 1).unwrap();
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&list.to_bytes(), T0).unwrap();
    let peer_list = peer.device_list(peer.account()).unwrap().signed_bytes().to_vec();
    companion.process_device_list(&peer_list, T0).unwrap();
    let bundle = companion.prekey_upload().bundle(Some(0));
    let sent = peer.encrypt_fanout(&mut rng, &[AccountId(1)], &[bundle], b"x", T0).unwrap();
    let wire = &sent.envelopes.iter().find(|e| e.recipient == companion.address()).unwrap().bytes;
    let day15 = T0.plus_secs(15 * DAY_SECS);
    let error = companion.receive(wire, None, day15).unwrap_err();
    assert_eq!(error, ReceiveError::Session(SessionError::SignedOut));
    assert_eq!(error.action(), Action::RetryLater);
    assert_eq!(
        companion.receive(wire, None, T0).unwrap_err(),
        ReceiveError::Session(SessionError::SignedOut)
    );
    // Kept and retried once a fresh list signs it back in, the message is still readable.
    let fresh = primary.refresh_device_list(day15).unwrap();
    companion.process_device_list(&fresh.to_bytes(), day15).unwrap();
    assert!(matches!(companion.receive(wire, None, day15), Ok(Received::Message(_))));
}

#[test]
fn removed_device_cannot_decrypt_new_messages() {
    let mut rng = rng(14);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (mut companion, with) = link(&mut rng, &mut primary, T0);
    companion.generate_one_time_prekeys(&mut rng, 1).unwrap();
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&with.to_bytes(), T0).unwrap();
    let bundle = companion.prekey_upload().bundle(Some(0));
    let first = peer.encrypt_fanout(&mut rng, &[AccountId(1)], &[bundle], b"hi", T0).unwrap();
    assert!(first.envelopes.iter().any(|e| e.recipient == companion.address()));
    assert!(peer.has_session(companion.address()));
    let without = primary.remove_companion(companion.address().device, T0).unwrap();
    // The peer learns of the removal and forgets its sessions with the device.
    let update = peer.process_device_list(&without.to_bytes(), T0).unwrap();
    assert_eq!(update.removed, vec![companion.address()]);
    assert!(!peer.has_session(companion.address()));
    let after = peer.encrypt_fanout(&mut rng, &[AccountId(1)], &[], b"secret", T0).unwrap();
    assert!(after.envelopes.iter().all(|e| e.recipient != companion.address()));
    assert!(after.skipped.iter().all(|(a, _)| *a != companion.address()));
    // The removed device learns of its removal from the new list and stops working.
    companion.process_device_list(&without.to_bytes(), T0).unwrap();
    assert_eq!(companion.account_status(T0), AccountStatus::Removed);
}

#[test]
fn companion_logout_removes_it_for_every_peer() {
    let mut rng = rng(15);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let (mut companion, _) = link(&mut rng, &mut primary, T0);
    let (_other, _) = link(&mut rng, &mut primary, T0);
    let request = companion.logout_request(T0).unwrap();
    // A tampered request is refused.
    let mut bad = request.to_bytes();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(primary.process_logout(&bad, T0), Err(DeviceListError::Key(_))));
    let list = primary.process_logout(&request.to_bytes(), T0).unwrap();
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let verified = peer.process_device_list(&list.to_bytes(), T0).unwrap().list;
    assert!(verified.device(companion.address()).is_none());
    assert_eq!(verified.devices().len(), 2);
    companion.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(companion.account_status(T0), AccountStatus::Removed);
    // A replayed request finds no such companion.
    assert_eq!(
        primary.process_logout(&request.to_bytes(), T0).unwrap_err(),
        DeviceListError::UnknownCompanion(companion.address().device)
    );
}

#[test]
fn companion_rejects_an_approval_for_another_identity() {
    let mut rng = rng(16);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut companion = Device::new(&mut rng, addr(1, 9), T0);
    let other = Device::new(&mut rng, addr(1, 9), T0);
    let approval = primary.approve_companion(other.public_identity(), T0).unwrap();
    assert_eq!(
        companion.countersign_approval(&approval).unwrap_err(),
        DeviceListError::Key(KeyError::BadSignature(SignatureKind::AccountSignature))
    );
    assert_eq!(companion.account_status(T0), AccountStatus::NotLinked);
}

#[test]
fn security_code_covers_account_identity_not_companions() {
    let mut rng = rng(17);
    let mut alice = Device::new(&mut rng, addr(1, 0), T0);
    let mut bob = Device::new(&mut rng, addr(2, 0), T0);
    alice.process_device_list(&bob.refresh_device_list(T0).unwrap().to_bytes(), T0).unwrap();
    bob.process_device_list(&alice.refresh_device_list(T0).unwrap().to_bytes(), T0).unwrap();
    let from_alice = alice.security_code(bob.account()).unwrap();
    let from_bob = bob.security_code(alice.account()).unwrap();
    assert_eq!(from_alice, from_bob);
    assert_eq!(from_alice.digits().len(), 60);
    assert!(from_alice.digits().bytes().all(|b| b.is_ascii_digit()));
    assert!(from_alice.matches_scanned(from_bob.scannable()));
    assert!(from_alice.matches_digits(&from_bob.to_string()));
    let mut wrong = from_bob.scannable().to_vec();
    wrong[5] ^= 1;
    assert!(!from_alice.matches_scanned(&wrong));
    // Linking a companion to Bob's account leaves the code unchanged.
    let (_c, list) = link(&mut rng, &mut bob, T0);
    alice.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(alice.security_code(bob.account()).unwrap(), from_alice);
    // A companion of Alice's account computes the same code.
    let (alice_phone, _) = link(&mut rng, &mut alice, T0);
    let mut alice_phone = alice_phone;
    alice_phone.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(alice_phone.security_code(bob.account()).unwrap(), from_alice);
}

#[derive(Debug, Clone)]
enum Op {
    Add,
    Remove(usize),
    Refresh,
    Replay(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Add),
        (0usize..6).prop_map(Op::Remove),
        Just(Op::Refresh),
        (0usize..20).prop_map(Op::Replay),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the server replays, a peer's verified device set is the primary's intended set
    /// at some version it published, never a superset of the newest one.
    #[test]
    fn verified_set_never_exceeds_the_primarys_intended_set(ops in proptest::collection::vec(op(), 1..14)) {
        let mut rng = rng(18);
        let mut primary = Device::new(&mut rng, addr(1, 0), T0);
        let mut peer = Device::new(&mut rng, addr(2, 0), T0);
        let mut published: Vec<(Vec<u8>, Vec<DeviceId>)> = Vec::new();
        let mut companions: Vec<DeviceId> = Vec::new();
        for op in ops {
            let list = match op {
                Op::Add if companions.len() < MAX_COMPANIONS => {
                    let (c, list) = link(&mut rng, &mut primary, T0);
                    companions.push(c.address().device);
                    Some(list)
                }
                Op::Remove(i) if !companions.is_empty() => {
                    let device = companions.remove(i % companions.len());
                    Some(primary.remove_companion(device, T0).unwrap())
                }
                Op::Refresh => Some(primary.refresh_device_list(T0).unwrap()),
                Op::Replay(i) if !published.is_empty() => {
                    let (bytes, _) = &published[i % published.len()];
                    let _ = peer.process_device_list(bytes, T0);
                    None
                }
                _ => None,
            };
            if let Some(list) = list {
                let bytes = list.to_bytes();
                published.push((bytes.clone(), companions.clone()));
                peer.process_device_list(&bytes, T0).unwrap();
            }
            if let Some(held) = peer.device_list(primary.account()) {
                let (_, newest) = published.last().unwrap();
                let held_companions: Vec<DeviceId> =
                    held.devices().iter().skip(1).map(|d| d.address().device).collect();
                prop_assert_eq!(&held_companions, newest);
            }
        }
    }
}

#[test]
fn a_list_issued_in_the_future_is_refused_past_the_bound_at_n_and_n_plus_one() {
    use multidevice::consts::MAX_LIST_ISSUED_AHEAD_SECS;
    let mut rng = rng(19);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let at_bound = primary.refresh_device_list(T0.plus_secs(MAX_LIST_ISSUED_AHEAD_SECS)).unwrap();
    let past = primary.refresh_device_list(T0.plus_secs(MAX_LIST_ISSUED_AHEAD_SECS + 1)).unwrap();
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&at_bound.to_bytes(), T0).unwrap();
    let before = snapshot(&peer);
    let error = peer.process_device_list(&past.to_bytes(), T0).unwrap_err();
    assert_eq!(
        error,
        DeviceListError::IssuedInFuture { issued_at: T0.plus_secs(MAX_LIST_ISSUED_AHEAD_SECS + 1) }
    );
    assert_eq!(error.action(), Action::RetryLater);
    assert_eq!(snapshot(&peer), before);
    // Once the clock has caught up, the same list is accepted.
    peer.process_device_list(&past.to_bytes(), T0.plus_secs(1)).unwrap();
}
