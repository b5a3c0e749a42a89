//! The "authorization at every entry point" claims, attacked through the public API as a
//! malicious server would (relay, drop, delay, reorder, replay, modify, serve stale, forged or
//! per-user different lists and bundles, predict device ids), by a reviewer with fresh eyes.
//! The first group reproduces what that review found, now fixed; the rest are the claims that
//! held from the start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::consts::{APPROVAL_LIFETIME_SECS, DAY_SECS, PRIMARY_INACTIVITY_SECS};
use multidevice::{
    AccountId, Action, Conversation, Device, DeviceAddress, DeviceId, DeviceListError, FanoutError,
    FanoutSkip, HISTORY_WINDOW_SECS, HistoryError, MessageKind, OneTimePrekeyPublic,
    QrLinkApproval, QrLinkOffer, ReceiveError, Received, SessionError, SessionMessage, Timestamp,
    build_history, hazmat,
};
use rand::rngs::StdRng;
use support::world::{Account, Server, account, envelope_for, introduce, link, read, recipients};
use support::*;

fn day(d: u64) -> Timestamp {
    T0.plus_secs(d * DAY_SECS)
}

/// Carol (account 1, `companions` companions) and Bob (account 2, primary only), each holding
/// the other's newest list.
fn carol_and_bob(rng: &mut StdRng, server: &mut Server, companions: usize) -> (Account, Account) {
    let mut carol = account(rng, server, 1, companions, T0);
    let mut bob = account(rng, server, 2, 0, T0);
    introduce(server, &mut [&mut carol, &mut bob], T0);
    (carol, bob)
}

/// A raw session message from `attacker` to `victim` relabelled as `kind`, set up from
/// `bundle` (the victim's, possibly altered by the server).
fn forged_with(
    rng: &mut StdRng,
    attacker: &mut Device,
    victim: DeviceAddress,
    bundle: multidevice::PrekeyBundle,
    kind: u8,
) -> Vec<u8> {
    let bundle = bundle.verify().unwrap();
    hazmat::start_session(attacker, rng, &bundle).unwrap();
    let mut wire = hazmat::encrypt(attacker, rng, victim, b"trust me").unwrap();
    wire[2] = kind;
    wire
}

/// `bundle` naming a one-time prekey id the victim never had.
fn with_bogus_otk(mut bundle: multidevice::PrekeyBundle) -> multidevice::PrekeyBundle {
    let public = bundle.one_time_prekey.expect("a bundle with a one-time prekey").public;
    bundle.one_time_prekey = Some(OneTimePrekeyPublic { id: 0xDEAD_BEEF, public });
    bundle
}

/// The message `Received` as a message, or a panic.
fn message(received: Received) -> multidevice::ReceivedMessage {
    match received {
        Received::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

// =============================================================================================
// What the review found (fixed)
// =============================================================================================

/// A list any party signs for any account under its own key verifies and is kept as a pending
/// identity change, which blocks sending. The user can reject it after comparing security codes;
/// sending then resumes under the held identity and the forger's identity is refused for good.
#[test]
fn a_forged_identity_change_can_be_rejected_and_then_never_blocks_again() {
    let mut rng = rng(101);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 0);
    // The server signs a list for account 1 under a key of its own.
    let forger = Device::new(&mut rng, addr(1, 0), T0);
    let forged = forger.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    assert_eq!(
        bob.devices[0].process_device_list(&forged, T0).unwrap_err(),
        DeviceListError::IdentityChanged { account: AccountId(1) }
    );
    // Carol is alive and well under her identity, and publishes a newer list: it is stored,
    // but sending stays blocked until the user decides on the pending change.
    let newer = carol.devices[0].refresh_device_list(T0.plus_secs(60)).unwrap();
    server.publish(&newer);
    bob.devices[0].process_device_list(&newer.to_bytes(), T0.plus_secs(60)).unwrap();
    let bob_device = Device::from_bytes(&bob.devices[0].to_bytes()).unwrap();
    bob.devices[0] = bob_device;
    let bundles = server.bundles(&[AccountId(1)]);
    let later = T0.plus_secs(60);
    assert_eq!(
        bob.devices[0]
            .encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"?", later)
            .unwrap_err(),
        FanoutError::IdentityChangePending(AccountId(1))
    );
    // The users compare security codes and reject the change: sending resumes under the held
    // identity, and the forger's identity is refused from then on, newer lists included.
    bob.devices[0].reject_identity_change(AccountId(1), later).unwrap();
    let sent = bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"hi", later);
    assert!(sent.is_ok(), "{sent:?}");
    let mut forger = forger;
    let forged_newer = forger.refresh_device_list(later).unwrap();
    for bytes in [forged, forged_newer.to_bytes()] {
        assert_eq!(
            bob.devices[0].process_device_list(&bytes, later).unwrap_err(),
            DeviceListError::RefusedIdentity { account: AccountId(1) }
        );
    }
    assert!(!bob.devices[0].identity_change_pending(AccountId(1)));
    assert_eq!(
        bob.devices[0].reject_identity_change(AccountId(1), later).unwrap_err(),
        DeviceListError::NotPendingChange { account: AccountId(1) }
    );
}

/// A primary signs every list of its own account: a list for it under another identity is
/// refused outright, never kept as a pending change nor accepted (accepting it would send own
/// copies to the forger's devices and leave state that no longer loads).
#[test]
fn a_primary_never_takes_an_identity_change_for_its_own_account() {
    let mut rng = rng(102);
    let mut server = Server::default();
    let (mut carol, bob) = carol_and_bob(&mut rng, &mut server, 0);
    // The forger runs an "account 1" of its own, with a companion at 1:1.
    let mut forger_server = Server::default();
    let mut forger = account(&mut rng, &mut forger_server, 1, 1, T0);
    let forged = forger_server.newest(AccountId(1));
    let primary = &mut carol.devices[0];
    assert_eq!(
        primary.process_device_list(&forged, T0).unwrap_err(),
        DeviceListError::ForeignOwnList { account: AccountId(1) }
    );
    let pending = primary.pending_identity_change(AccountId(1)).is_some();
    let accepted = primary.accept_identity_change(&forged, T0).is_ok();
    // Show the consequence of the acceptance, if it happened.
    let mut consequence = String::new();
    if accepted {
        let mut bundles = forger_server.bundles(&[AccountId(1)]);
        bundles.push(server.bundle(bob.devices[0].address()));
        let sent =
            primary.encrypt_fanout(&mut rng, &[AccountId(2)], &bundles, b"my secret", T0).unwrap();
        let forger_companion = forger.devices[1].address();
        if envelope_for(&sent, forger_companion).is_some()
            && primary.remote_identity(forger_companion)
                == Some(forger.device(forger_companion).public_identity())
        {
            consequence.push_str("own copy encrypted to the forger's companion; ");
        }
        if Device::from_bytes(&primary.to_bytes()).is_err() {
            consequence.push_str("the primary's persisted state no longer loads; ");
        }
    }
    assert!(
        !pending && !accepted,
        "primary held a pending change of its own account ({pending}) and accepted it \
         ({accepted}): {consequence}"
    );
}

/// After an accepted re-registration, a replayed list under the account's former identity
/// (naming a since-removed companion) is refused: former identities stay refused.
#[test]
fn an_old_identity_list_cannot_return_through_a_second_identity_change() {
    let mut rng = rng(103);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let stolen = carol.devices[1].address();
    let with_stolen = server.newest(AccountId(1));
    let without = carol.devices[0].remove_companion(stolen.device, T0).unwrap();
    bob.devices[0].process_device_list(&without.to_bytes(), T0).unwrap();
    // Carol re-registers; Bob's user compares codes and accepts.
    let reregistered = Device::new(&mut rng, addr(1, 0), T0);
    let new_list = reregistered.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    let _ = bob.devices[0].process_device_list(&new_list, T0);
    bob.devices[0].accept_identity_change(&new_list, T0).unwrap();
    // The server replays the old-identity list naming the stolen companion.
    let replay = bob.devices[0].process_device_list(&with_stolen, T0);
    assert_eq!(replay.map(|_| ()), Err(DeviceListError::RefusedIdentity { account: AccountId(1) }));
    let pending = bob.devices[0].identity_change_pending(AccountId(1));
    let came_back = pending
        && bob.devices[0].accept_identity_change(&with_stolen, T0).is_ok()
        && bob.devices[0].device_list(AccountId(1)).unwrap().device(stolen).is_some();
    assert!(
        !pending,
        "replayed old-identity list became a pending change; accepting it re-authorizes the \
         removed companion: {came_back}"
    );
}

/// Every announced version keeps its digest: after an authorized companion announced (v3, dA)
/// and the primary moved on to v4, a fork of v3 with another digest is equivocation.
#[test]
fn an_announced_digest_is_still_checked_after_a_higher_version_is_announced() {
    let mut rng = rng(104);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let bob_address = bob.devices[0].address();
    let saved = carol.devices[0].to_bytes();
    let a = carol.devices[0].refresh_device_list(T0.plus_secs(1)).unwrap();
    carol.devices[1].process_device_list(&a.to_bytes(), T0).unwrap();
    let mut fork = Device::from_bytes(&saved).unwrap();
    let b = fork.refresh_device_list(T0.plus_secs(2)).unwrap();
    assert_eq!(a.version(), b.version());
    assert_ne!(a.to_bytes(), b.to_bytes());
    // The companion announces (v3, dA): latched, message held.
    let sent = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"c", T0)
        .unwrap();
    let error =
        bob.devices[0].receive(&envelope_for(&sent, bob_address).unwrap(), None, T0).unwrap_err();
    assert_eq!(error, ReceiveError::StaleList { account: AccountId(1), announced: Some(3) });
    // The primary moves on to v4 and writes to Bob.
    carol.devices[0].refresh_device_list(T0.plus_secs(3)).unwrap();
    let sent = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"p", T0)
        .unwrap();
    read(&mut bob.devices[0], &envelope_for(&sent, bob_address).unwrap(), T0).unwrap();
    // The fork of v3 must be equivocation: an authorized device announced dA for v3.
    assert_eq!(
        bob.devices[0].process_device_list(&b.to_bytes(), T0).map(|_| ()),
        Err(DeviceListError::Equivocation { version: b.version() })
    );
}

/// A refused approval changes nothing: expired approvals are dropped only on success.
#[test]
fn a_refused_approval_leaves_the_primary_byte_identical() {
    let mut rng = rng(105);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 0, T0);
    let stranger = Device::new(&mut rng, addr(1, 99), T0);
    carol.devices[0].approve_companion(stranger.public_identity(), T0).unwrap();
    let later = T0.plus_secs(APPROVAL_LIFETIME_SECS + 1);
    tick(&mut carol.devices[0], later);
    let before = snapshot(&carol.devices[0]);
    let own = carol.devices[0].public_identity().clone();
    assert_eq!(
        carol.devices[0].approve_companion(&own, later).unwrap_err(),
        DeviceListError::DuplicateIdentity
    );
    assert!(snapshot(&carol.devices[0]) == before, "a refused approval changed the state");
}

/// Every call that takes `now` raises the clock mark first, whatever its outcome.
#[test]
fn every_call_taking_now_raises_the_clock_even_when_it_fails() {
    let mut rng = rng(106);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 0, T0);
    let mut lagging = Vec::new();
    assert!(carol.devices[0].process_logout(b"not a logout request", day(3)).is_err());
    if carol.devices[0].clock() != day(3) {
        lagging.push("process_logout");
    }
    // A finished QR approval, finished again later.
    let mut companion = Device::new(&mut rng, addr(1, 99), day(3));
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, day(3));
    let (mut approval, msg) =
        QrLinkApproval::approve(&mut carol.devices[0], &offer.qr_text(), day(3)).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &msg, day(3)).unwrap();
    approval.finish(&mut carol.devices[0], &confirmation, day(3)).unwrap();
    assert!(approval.finish(&mut carol.devices[0], &confirmation, day(4)).is_err());
    if carol.devices[0].clock() != day(4) {
        lagging.push("QrLinkApproval::finish");
    }
    assert!(lagging.is_empty(), "clock mark not raised on failure by: {lagging:?}");
}

/// A primary restored from a backup (own list v2) hears from its companion, which holds v3.
/// It takes the announcement like any peer: the companion's message waits until it holds v3,
/// the app is told to fetch the own list, and nothing is signed meanwhile (a second v3 would
/// fork the account). A lying companion cannot lock it out for good: removing the announcer is
/// never blocked (tests/attack_review.rs). Once it processes v3 from the server, it reads the
/// message and signs v4.
#[test]
fn a_restored_primary_is_latched_by_its_companions_and_recovers_its_own_list() {
    let mut rng = rng(108);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let companion = carol.devices[1].address();
    let backup = carol.devices[0].to_bytes();
    let v3 = carol.devices[0].refresh_device_list(T0.plus_secs(5)).unwrap();
    server.publish(&v3);
    carol.devices[1].process_device_list(&v3.to_bytes(), T0).unwrap();
    // The primary is restored from its backup (v2).
    carol.devices[0] = Device::from_bytes(&backup).unwrap();
    let sent = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &server.bundles(&[AccountId(1)]), b"own", T0)
        .unwrap();
    let wire = envelope_for(&sent, carol.devices[0].address()).unwrap();
    assert_eq!(
        read(&mut carol.devices[0], &wire, T0).unwrap_err(),
        ReceiveError::StaleList { account: AccountId(1), announced: Some(3) }
    );
    assert_eq!(carol.devices[0].lists_to_fetch(), vec![(AccountId(1), Some(3))]);
    assert!(carol.devices[0].refresh_device_list(T0.plus_secs(6)).is_err());
    carol.devices[0].process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    assert_eq!(read(&mut carol.devices[0], &wire, T0).unwrap(), b"own");
    let out = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &server.bundles(&[AccountId(1)]), b"x", T0)
        .unwrap();
    assert_eq!(recipients(&out), vec![companion]);
    assert!(carol.devices[0].lists_to_fetch().is_empty());
    assert_eq!(carol.devices[0].refresh_device_list(T0.plus_secs(9)).unwrap().version(), 4);
}

// =============================================================================================
// Claims that held
// =============================================================================================

/// Claim 2 and the ordering in `receive`: an unlisted address, an unknown account and a stale
/// companion are refused before any prekey is looked up. Each message names a one-time prekey
/// id the victim never had; had the prekey been looked up first, the error would be
/// `UnknownOneTimePrekey`.
#[test]
fn authorization_is_checked_before_any_prekey_is_looked_up() {
    let mut rng = rng(201);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let bob_address = bob.devices[0].address();
    let before = snapshot(&bob.devices[0]);
    let otks = bob.devices[0].one_time_prekeys_remaining();
    for (from, expected) in [
        (addr(1, 7), ReceiveError::UnlistedSender(addr(1, 7))),
        (addr(77, 0), ReceiveError::NoList(AccountId(77))),
    ] {
        let mut hostile = Device::new(&mut rng, from, T0);
        for kind in [1u8, 2, 3] {
            let bundle = with_bogus_otk(server.bundle(bob_address));
            let wire = forged_with(&mut rng, &mut hostile, bob_address, bundle, kind);
            let error = bob.devices[0].receive(&wire, None, T0).unwrap_err();
            if kind == 1 {
                assert_eq!(error, expected);
                assert!(matches!(error.action(), Action::FetchList(_)));
            }
            assert_eq!(snapshot(&bob.devices[0]), before, "{from} kind {kind}");
        }
    }
    // A listed companion whose message names a bogus one-time prekey: stale by day 15.
    let bundle = with_bogus_otk(server.bundle(bob_address));
    let sent =
        carol.devices[1].encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"late", T0).unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let mut fresh = Device::from_bytes(&bob.devices[0].to_bytes()).unwrap();
    assert_eq!(
        fresh.receive(&wire, None, T0).unwrap_err(),
        ReceiveError::Session(SessionError::UnknownOneTimePrekey(0xDEAD_BEEF)),
        "control: on a fresh list the prekey lookup is what fails"
    );
    let late = T0.plus_secs(PRIMARY_INACTIVITY_SECS + 1);
    tick(&mut bob.devices[0], late);
    let before = snapshot(&bob.devices[0]);
    assert_eq!(
        bob.devices[0].receive(&wire, None, late).unwrap_err(),
        ReceiveError::StaleList { account: AccountId(1), announced: None }
    );
    assert_eq!(snapshot(&bob.devices[0]), before);
    assert_eq!(bob.devices[0].one_time_prekeys_remaining(), otks);
}

/// Claim 1: a raw session the app starts through `hazmat::start_session` at a listed address,
/// from a bundle the server forged (another identity), replaces nothing the authorized paths
/// use: fan-out discards it and reaches the listed identity.
#[test]
fn a_hazmat_session_started_at_a_listed_address_never_diverts_fanout() {
    let mut rng = rng(202);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let companion = carol.devices[1].address();
    let companion_identity = carol.devices[1].public_identity().clone();
    // An authorized session exists first.
    let bundles = server.bundles(&[AccountId(1)]);
    let sent =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"one", T0).unwrap();
    assert_eq!(
        read(&mut carol.devices[1], &envelope_for(&sent, companion).unwrap(), T0).unwrap(),
        b"one"
    );
    // The server gives the app a bundle "for 1:1" under its own identity.
    let squatter = Device::new(&mut rng, companion, T0);
    let planted = squatter.prekey_upload().bundle(None).verify().unwrap();
    hazmat::start_session(&mut bob.devices[0], &mut rng, &planted).unwrap();
    assert_eq!(bob.devices[0].remote_identity(companion), Some(squatter.public_identity()));
    let bundles = server.bundles(&[AccountId(1)]);
    let sent =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"two", T0).unwrap();
    assert_eq!(bob.devices[0].remote_identity(companion), Some(&companion_identity));
    assert_eq!(
        read(&mut carol.devices[1], &envelope_for(&sent, companion).unwrap(), T0).unwrap(),
        b"two"
    );
    // Without a bundle for the real device, fan-out skips it rather than use the planted one.
    hazmat::start_session(&mut bob.devices[0], &mut rng, &planted).unwrap();
    let sent = bob.devices[0]
        .encrypt_fanout(
            &mut rng,
            &[AccountId(1)],
            &[server.bundle(carol.devices[0].address())],
            b"three",
            T0,
        )
        .unwrap();
    assert!(envelope_for(&sent, companion).is_none());
    assert!(sent.skipped.contains(&(companion, FanoutSkip::MissingBundle)));
}

/// Claim 1, Sesame: two authorized devices that write to each other at once converge on one
/// session and keep reading each other.
#[test]
fn simultaneous_initiation_between_authorized_devices_converges() {
    let mut rng = rng(203);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 0);
    let (c, b) = (carol.devices[0].address(), bob.devices[0].address());
    let from_carol = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(b)], b"c1", T0)
        .unwrap();
    let from_bob = bob.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &[server.bundle(c)], b"b1", T0)
        .unwrap();
    assert_eq!(
        read(&mut bob.devices[0], &envelope_for(&from_carol, b).unwrap(), T0).unwrap(),
        b"c1"
    );
    assert_eq!(
        read(&mut carol.devices[0], &envelope_for(&from_bob, c).unwrap(), T0).unwrap(),
        b"b1"
    );
    for round in 0..4u8 {
        let m =
            carol.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], &[round], T0).unwrap();
        assert_eq!(read(&mut bob.devices[0], &envelope_for(&m, b).unwrap(), T0).unwrap(), [round]);
        let m =
            bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &[], &[round], T0).unwrap();
        assert_eq!(
            read(&mut carol.devices[0], &envelope_for(&m, c).unwrap(), T0).unwrap(),
            [round]
        );
    }
    assert_eq!(
        carol.devices[0].session_info(b).unwrap().active_session,
        bob.devices[0].session_info(c).unwrap().active_session
    );
}

/// Claims 1 and 7: a removed companion's delayed and replayed messages stay refused, its
/// sessions are gone, and its device id is never handed out again.
#[test]
fn a_removed_companion_stays_refused_and_its_id_is_never_reused() {
    let mut rng = rng(204);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let removed = carol.devices[1].address();
    let bob_address = bob.devices[0].address();
    let first = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"1", T0)
        .unwrap();
    let first = envelope_for(&first, bob_address).unwrap();
    read(&mut bob.devices[0], &first, T0).unwrap();
    let delayed =
        carol.devices[1].encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"2", T0).unwrap();
    let delayed = envelope_for(&delayed, bob_address).unwrap();
    let without = carol.devices[0].remove_companion(removed.device, T0).unwrap();
    server.publish(&without);
    let update = bob.devices[0].process_device_list(&without.to_bytes(), T0).unwrap();
    assert_eq!(update.removed, vec![removed]);
    assert!(bob.devices[0].remote_identity(removed).is_none());
    let before = snapshot(&bob.devices[0]);
    for wire in [&first, &delayed] {
        assert_eq!(
            bob.devices[0].receive(wire, None, T0).unwrap_err(),
            ReceiveError::UnlistedSender(removed)
        );
        assert_eq!(snapshot(&bob.devices[0]), before);
    }
    let next = link(&mut rng, &mut server, &mut carol, T0);
    assert_eq!(next, addr(1, 2));
}

/// Claims 1 and 3, version skipping: a list several versions ahead is accepted and deletes the
/// sessions of the devices it no longer names.
#[test]
fn a_skipped_version_still_deletes_the_sessions_of_removed_devices() {
    let mut rng = rng(205);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let removed = carol.devices[1].address();
    let bob_address = bob.devices[0].address();
    let sent = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"1", T0)
        .unwrap();
    read(&mut bob.devices[0], &envelope_for(&sent, bob_address).unwrap(), T0).unwrap();
    assert!(bob.devices[0].has_session(removed));
    carol.devices[0].remove_companion(removed.device, T0).unwrap();
    let v4 = carol.devices[0].refresh_device_list(T0.plus_secs(1)).unwrap();
    assert_eq!(v4.version(), 4);
    let update = bob.devices[0].process_device_list(&v4.to_bytes(), T0).unwrap();
    assert_eq!(update.removed, vec![removed]);
    assert!(!bob.devices[0].has_session(removed));
}

/// Fan-out to the own account with duplicates: each device once, never the sender, own
/// devices get an own copy naming the sorted recipient accounts, others a direct message.
#[test]
fn fanout_to_the_own_account_and_duplicate_accounts_reaches_each_device_once() {
    let mut rng = rng(206);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 2);
    let sender = carol.devices[1].address();
    let (primary, sibling) = (carol.devices[0].address(), carol.devices[2].address());
    let bob_address = bob.devices[0].address();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let to = [AccountId(2), AccountId(1), AccountId(2), AccountId(1)];
    let sent = carol.devices[1].encrypt_fanout(&mut rng, &to, &bundles, b"group", T0).unwrap();
    let mut reached = recipients(&sent);
    reached.sort();
    assert_eq!(reached, vec![primary, sibling, bob_address]);
    assert!(!reached.contains(&sender));
    for (address, kind) in [
        (primary, MessageKind::OwnCopy),
        (sibling, MessageKind::OwnCopy),
        (bob_address, MessageKind::Direct),
    ] {
        let wire = envelope_for(&sent, address).unwrap();
        assert_eq!(SessionMessage::try_from(wire.as_slice()).unwrap().kind(), kind);
    }
    let own = message(
        carol.device(sibling).receive(&envelope_for(&sent, sibling).unwrap(), None, T0).unwrap(),
    );
    assert_eq!(own.conversation, Conversation::OwnCopy { to: vec![AccountId(1), AccountId(2)] });
    let direct = message(
        bob.devices[0].receive(&envelope_for(&sent, bob_address).unwrap(), None, T0).unwrap(),
    );
    assert_eq!(direct.conversation, Conversation::Direct);
    assert_eq!(direct.sender, sender);
}

/// Bundles served under the wrong address or with a prekey signed by another identity are
/// refused, and no session is created for them.
#[test]
fn bundles_under_the_wrong_address_or_identity_are_refused() {
    let mut rng = rng(207);
    let mut server = Server::default();
    let (carol, mut bob) = carol_and_bob(&mut rng, &mut server, 2);
    let (c1, c2) = (carol.devices[1].address(), carol.devices[2].address());
    // C2's genuine bundle relabelled as C1's; and C2's identity with C1's signed prekey.
    let mut as_c1 = server.bundle(c2);
    as_c1.address = c1;
    let mut mixed = server.bundle(c2);
    mixed.signed_prekey = server.bundle(c1).signed_prekey;
    let bundles = vec![server.bundle(carol.devices[0].address()), as_c1, mixed];
    let sent =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"x", T0).unwrap();
    assert_eq!(recipients(&sent), vec![carol.devices[0].address()]);
    assert!(sent.skipped.contains(&(c1, FanoutSkip::BundleIdentityMismatch)));
    assert!(sent.skipped.iter().any(|(a, r)| *a == c2 && matches!(r, FanoutSkip::BadBundle(_))));
    assert!(bob.devices[0].remote_identity(c1).is_none());
    assert!(bob.devices[0].remote_identity(c2).is_none());
}

/// Claim 7: history only within 24 hours of the link, on both sides, and winding the clock
/// back does not reopen the window; refusals leave the companion byte-identical.
#[test]
fn the_history_window_closes_on_both_sides_and_stays_closed() {
    let mut rng = rng(208);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let companion = carol.devices[1].address();
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    let envelope = carol.devices[0]
        .encrypt_history(&mut rng, companion, &descriptor, &[server.bundle(companion)], T0)
        .unwrap();
    let closed = T0.plus_secs(HISTORY_WINDOW_SECS + 1);
    let mut late = Device::from_bytes(&carol.devices[1].to_bytes()).unwrap();
    tick(&mut late, closed);
    let before = snapshot(&late);
    for now in [closed, T0] {
        assert_eq!(
            late.receive(&envelope.bytes, None, now).unwrap_err(),
            ReceiveError::HistoryWindowClosed
        );
        assert_eq!(snapshot(&late), before);
    }
    for now in [closed, T0] {
        assert_eq!(
            carol.devices[0]
                .encrypt_history(&mut rng, companion, &descriptor, &[server.bundle(companion)], now)
                .unwrap_err(),
            HistoryError::NotNewlyLinked(companion)
        );
    }
    // In time, it is accepted.
    assert!(matches!(
        carol.devices[1].receive(&envelope.bytes, None, T0).unwrap(),
        Received::History(_)
    ));
}

/// Claim 5: a history message relabelled as any other kind is refused, spending nothing, and
/// is still accepted as history afterwards.
#[test]
fn a_history_message_relabelled_is_refused_and_spends_nothing() {
    let mut rng = rng(209);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let companion = carol.devices[1].address();
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    let envelope = carol.devices[0]
        .encrypt_history(&mut rng, companion, &descriptor, &[server.bundle(companion)], T0)
        .unwrap();
    let before = snapshot(&carol.devices[1]);
    let otks = carol.devices[1].one_time_prekeys_remaining();
    for kind in [0u8, 1, 2, 4, 0xff] {
        let mut relabelled = envelope.bytes.clone();
        relabelled[2] = kind;
        assert!(carol.devices[1].receive(&relabelled, None, T0).is_err(), "kind {kind}");
        assert!(hazmat::decrypt(&mut carol.devices[1], &relabelled, T0).is_err(), "kind {kind}");
        assert_eq!(snapshot(&carol.devices[1]), before, "kind {kind}");
    }
    assert_eq!(carol.devices[1].one_time_prekeys_remaining(), otks);
    assert!(matches!(
        carol.devices[1].receive(&envelope.bytes, None, T0).unwrap(),
        Received::History(_)
    ));
}

/// Claims 3 and 6: the announcement latch moves only on an authenticated message. Every byte
/// of an envelope announcing a newer version, flipped in turn, leaves the receiver byte-identical.
#[test]
fn only_an_authenticated_message_moves_the_announcement_latch() {
    let mut rng = rng(210);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let bob_address = bob.devices[0].address();
    carol.devices[0].refresh_device_list(T0.plus_secs(1)).unwrap();
    let sent = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"v3", T0)
        .unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let before = snapshot(&bob.devices[0]);
    for i in 0..wire.len() {
        let mut tampered = wire.clone();
        tampered[i] ^= 0x04;
        assert!(bob.devices[0].receive(&tampered, None, T0).is_err(), "byte {i}");
        assert_eq!(snapshot(&bob.devices[0]), before, "byte {i}");
    }
    assert!(bob.devices[0].lists_to_fetch().is_empty());
    read(&mut bob.devices[0], &wire, T0).unwrap();
    assert_eq!(bob.devices[0].lists_to_fetch(), vec![(AccountId(1), Some(3))]);
}

/// Claim 3: two authorized devices announcing one version with two digests is equivocation,
/// and the refused message changes nothing.
#[test]
fn two_announcements_of_one_version_with_two_digests_are_equivocation() {
    let mut rng = rng(211);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let bob_address = bob.devices[0].address();
    let saved = carol.devices[0].to_bytes();
    let a = carol.devices[0].refresh_device_list(T0.plus_secs(1)).unwrap();
    carol.devices[1].process_device_list(&a.to_bytes(), T0).unwrap();
    let mut fork = Device::from_bytes(&saved).unwrap();
    fork.refresh_device_list(T0.plus_secs(2)).unwrap();
    let from_companion = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"a", T0)
        .unwrap();
    let from_fork = fork
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"b", T0)
        .unwrap();
    assert!(matches!(
        bob.devices[0].receive(&envelope_for(&from_companion, bob_address).unwrap(), None, T0),
        Err(ReceiveError::StaleList { .. })
    ));
    let before = snapshot(&bob.devices[0]);
    let error = bob.devices[0]
        .receive(&envelope_for(&from_fork, bob_address).unwrap(), None, T0)
        .unwrap_err();
    assert_eq!(error, ReceiveError::Equivocation { account: AccountId(1), version: a.version() });
    assert_eq!(snapshot(&bob.devices[0]), before);
}

/// Claim 3: winding the clock back after a refusal never makes a stale companion acceptable,
/// on the receive path either.
#[test]
fn a_stale_companion_stays_refused_when_the_clock_is_wound_back() {
    let mut rng = rng(212);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let bob_address = bob.devices[0].address();
    let sent = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"x", T0)
        .unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    // Any call with a late `now` (here, a refused one) latches the clock.
    let bad = bob.devices[0].process_device_list(b"junk", day(15));
    assert!(bad.is_err());
    for now in [day(15), T0] {
        assert_eq!(
            bob.devices[0].receive(&wire, None, now).unwrap_err(),
            ReceiveError::StaleList { account: AccountId(1), announced: None }
        );
    }
    let out = bob.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &server.bundles(&[AccountId(1)]), b"y", T0)
        .unwrap();
    assert_eq!(recipients(&out), vec![carol.devices[0].address()]);
}

/// Claim 6: a primary refuses rollbacks of its own list, byte-identical.
#[test]
fn a_primary_refuses_an_older_own_list() {
    let mut rng = rng(213);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let v1 = server.every_list(AccountId(1))[0].clone();
    let before = snapshot(&carol.devices[0]);
    assert_eq!(
        carol.devices[0].process_device_list(&v1, T0).unwrap_err(),
        DeviceListError::RollbackRejected { seen: 2, got: 1 }
    );
    assert_eq!(snapshot(&carol.devices[0]), before);
}

/// Claim 4: once the pending change was replaced by a later one, the earlier list is refused;
/// only the current pending list is accepted.
#[test]
fn a_replaced_pending_change_cannot_be_accepted() {
    let mut rng = rng(214);
    let mut server = Server::default();
    let (_carol, mut bob) = carol_and_bob(&mut rng, &mut server, 0);
    let first = Device::new(&mut rng, addr(1, 0), T0);
    let second = Device::new(&mut rng, addr(1, 0), T0);
    let first = first.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    let second = second.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    let _ = bob.devices[0].process_device_list(&first, T0);
    let _ = bob.devices[0].process_device_list(&second, T0);
    let before = snapshot(&bob.devices[0]);
    assert_eq!(
        bob.devices[0].accept_identity_change(&first, T0).unwrap_err(),
        DeviceListError::NotPendingChange { account: AccountId(1) }
    );
    assert_eq!(snapshot(&bob.devices[0]), before);
    bob.devices[0].accept_identity_change(&second, T0).unwrap();
}

/// Claim 7: a companion that countersigned but got only a list naming its address under
/// another identity (the server's), or no list, is not linked and refuses everything.
#[test]
fn a_companion_is_not_linked_by_a_list_naming_another_identity_at_its_address() {
    let mut rng = rng(215);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 0, T0);
    let mut companion = Device::new(&mut rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, T0);
    let (_approval, message_bytes) =
        QrLinkApproval::approve(&mut carol.devices[0], &offer.qr_text(), T0).unwrap();
    offer.accept_approval(&mut companion, &message_bytes, T0).unwrap();
    assert_eq!(companion.address(), addr(1, 1));
    // The companion's confirmation is "lost"; the primary links another device instead.
    let mut twin = Device::new(&mut rng, addr(1, 99), T0);
    let approval = carol.devices[0].approve_companion(twin.public_identity(), T0);
    // 1:1 is still held by the first approval: the twin gets 1:2.
    let approval = approval.unwrap();
    assert_eq!(approval.metadata.device, DeviceId(2));
    let signed = twin.countersign_approval(&approval).unwrap();
    let list = carol.devices[0].add_companion(&signed, T0).unwrap();
    companion.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(companion.account_status(T0), multidevice::AccountStatus::NotLinked);
    assert_eq!(
        companion.encrypt_fanout(&mut rng, &[AccountId(1)], &[], b"x", T0).unwrap_err(),
        FanoutError::Session(SessionError::NotLinked)
    );
    let tablet = twin.address();
    assert_eq!(tablet, DeviceAddress::new(AccountId(1), DeviceId(2)));
}

/// Claim 6: a sweep of refused calls on every public entry point, each made at a clock mark
/// already reached, leaves the device byte-identical.
#[test]
fn refused_calls_on_every_entry_point_leave_the_state_byte_identical() {
    let mut rng = rng(216);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server, 1);
    let companion = carol.devices[1].address();
    let forger = Device::new(&mut rng, addr(3, 0), T0);
    let forged = forger.device_list(AccountId(3)).unwrap().signed_bytes().to_vec();
    let v1 = server.every_list(AccountId(1))[0].clone();
    let descriptor = build_history(&mut rng, [b"x"], Vec::new()).unwrap();
    // Bob (a primary of another account).
    let b = &mut bob.devices[0];
    let before = snapshot(b);
    assert_eq!(
        b.encrypt_fanout(&mut rng, &[AccountId(1), AccountId(9)], &[], b"x", T0).unwrap_err(),
        FanoutError::UnknownAccount(AccountId(9))
    );
    assert!(b.encrypt_fanout(&mut rng, &[], &[], b"x", T0).is_err());
    assert_eq!(
        b.process_device_list(&v1, T0).unwrap_err(),
        DeviceListError::RollbackRejected { seen: 2, got: 1 }
    );
    assert!(b.process_device_list(b"junk", T0).is_err());
    assert_eq!(
        b.accept_identity_change(&forged, T0).unwrap_err(),
        DeviceListError::NotPendingChange { account: AccountId(3) }
    );
    assert_eq!(
        b.encrypt_history(&mut rng, companion, &descriptor, &[], T0).unwrap_err(),
        HistoryError::NotOwnCompanion(companion)
    );
    assert!(b.remove_companion(DeviceId(5), T0).is_err());
    assert!(hazmat::decrypt(b, b"junk", T0).is_err());
    assert!(b.receive(b"junk", None, T0).is_err());
    assert!(snapshot(b) == before, "Bob changed");
    // Carol's companion.
    let c = &mut carol.devices[1];
    let before = snapshot(c);
    assert_eq!(c.refresh_device_list(T0).unwrap_err(), DeviceListError::NotPrimary);
    assert_eq!(
        c.encrypt_history(&mut rng, companion, &descriptor, &[], T0).unwrap_err(),
        HistoryError::NotPrimary
    );
    let own = c.public_identity().clone();
    assert!(c.approve_companion(&own, T0).is_err());
    assert!(snapshot(c) == before, "the companion changed");
    // Carol's primary: history to a companion without a bundle.
    let p = &mut carol.devices[0];
    let before = snapshot(p);
    assert!(matches!(
        p.encrypt_history(&mut rng, companion, &descriptor, &[], T0).unwrap_err(),
        HistoryError::NoSession(_, FanoutSkip::MissingBundle)
    ));
    assert!(snapshot(p) == before, "the primary changed");
}
