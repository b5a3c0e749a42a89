//! Authorization at every entry point, attacked as a malicious server would: the server keeps
//! every list and bundle it ever saw, hands out whichever it likes, withholds, replays, plants
//! sessions at predicted addresses and relabels message kinds. Every attack goes through the
//! public API only, and every refused input leaves the persisted state byte-identical except
//! where a documented latch moves (the clock high-water mark, an announced list version, a
//! pending identity change).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::consts::{
    APPROVAL_LIFETIME_SECS, DAY_SECS, MAX_ARCHIVED_SESSIONS, MAX_COMPANIONS,
    PRIMARY_INACTIVITY_SECS, SIGNED_PREKEY_GRACE_SECS,
};
use multidevice::{
    AccountId, AccountStatus, Action, AuthorizedDevice, CompanionPairing, Device, DeviceAddress,
    DeviceId, DeviceListError, FanoutError, FanoutSkip, HistoryError, LinkError, MessageKind,
    PairingCode, PrimaryPairing, QrLinkApproval, QrLinkOffer, ReceiveError, Received, SessionError,
    SessionMessage, Timestamp, VerifiedDeviceList, VerifiedPrekeyBundle, build_history, hazmat,
};
use rand::rngs::StdRng;
use support::world::{Account, Server, account, envelope_for, introduce, link, read, recipients};
use support::*;

fn day(d: u64) -> Timestamp {
    T0.plus_secs(d * DAY_SECS)
}

/// A raw session message from `attacker` to `victim`, relabelled as kind `kind`: what a server
/// can forge for any address it likes. Uses the victim's one-time prekey `otk`.
fn forged(
    rng: &mut StdRng,
    attacker: &mut Device,
    victim: &Device,
    otk: usize,
    kind: u8,
) -> Vec<u8> {
    let bundle = victim.prekey_upload().bundle(Some(otk)).verify().unwrap();
    hazmat::start_session(attacker, rng, &bundle).unwrap();
    let mut wire = hazmat::encrypt(attacker, rng, victim.address(), b"trust me").unwrap();
    wire[2] = kind;
    wire
}

/// Carol (account 1, primary only) and Bob (account 2, primary only), each holding the
/// other's list.
fn carol_and_bob(rng: &mut StdRng, server: &mut Server) -> (Account, Account) {
    let mut carol = account(rng, server, 1, 0, T0);
    let mut bob = account(rng, server, 2, 0, T0);
    introduce(server, &mut [&mut carol, &mut bob], T0);
    (carol, bob)
}

// ---------------------------------------------------------------------------------------------
// Session squatting
// ---------------------------------------------------------------------------------------------

#[test]
fn session_squatting_at_a_predicted_device_id_creates_nothing_and_is_never_used() {
    let mut rng = rng(1);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server);
    // The server predicts Carol's next companion address, 1:1, and sends from it.
    let predicted = DeviceAddress::new(AccountId(1), DeviceId(1));
    let mut squatter = Device::new(&mut rng, predicted, T0);
    let bob_device = &mut bob.devices[0];
    let before = snapshot(bob_device);
    let prekeys = bob_device.one_time_prekeys_remaining();
    for kind in [1u8, 2, 3] {
        let wire = forged(&mut rng, &mut squatter, bob_device, 0, kind);
        let error = bob_device.receive(&wire, None, T0).unwrap_err();
        assert!(
            matches!(
                error,
                ReceiveError::UnlistedSender(a)
                    | ReceiveError::ForeignOwnCopy(a)
                    | ReceiveError::HistoryNotFromPrimary(a)
                    if a == predicted
            ) || error == ReceiveError::WrongKind(MessageKind::Direct),
            "kind {kind}: {error:?}"
        );
        assert_eq!(snapshot(bob_device), before, "kind {kind}");
    }
    assert_eq!(bob_device.one_time_prekeys_remaining(), prekeys);
    assert!(!bob_device.has_session(predicted));
    // Carol then links her real companion at that very address; Bob learns the list.
    let real = link(&mut rng, &mut server, &mut carol, T0);
    assert_eq!(real, predicted);
    carol.device(real).process_device_list(&server.newest(AccountId(2)), T0).unwrap();
    bob.devices[0].process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    // Bob's fan-out reaches the real companion, under its own identity only.
    let bundles = server.bundles(&[AccountId(1)]);
    let sent =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"hi", T0).unwrap();
    let wire = envelope_for(&sent, real).unwrap();
    assert_eq!(read(carol.device(real), &wire, T0).unwrap(), b"hi");
    // The squatter holds nothing that opens it: as a raw message it is of the wrong kind, and
    // relabelled it fails authentication.
    assert!(hazmat::decrypt(&mut squatter, &wire, T0).is_err());
    let mut relabelled = wire.clone();
    relabelled[2] = 0;
    assert!(hazmat::decrypt(&mut squatter, &relabelled, T0).is_err());
}

#[test]
fn a_session_planted_through_hazmat_is_deleted_when_the_list_names_another_identity() {
    let mut rng = rng(2);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server);
    let predicted = DeviceAddress::new(AccountId(1), DeviceId(1));
    let mut squatter = Device::new(&mut rng, predicted, T0);
    // The app decrypts the planted prekey message on the raw path, which trusts anyone.
    let wire = forged(&mut rng, &mut squatter, &bob.devices[0], 0, 0);
    hazmat::decrypt(&mut bob.devices[0], &wire, T0).unwrap();
    assert_eq!(bob.devices[0].remote_identity(predicted), Some(squatter.public_identity()));
    // Storing the list that names the real device there deletes the planted session.
    let real = link(&mut rng, &mut server, &mut carol, T0);
    carol.device(real).process_device_list(&server.newest(AccountId(2)), T0).unwrap();
    bob.devices[0].process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    assert!(bob.devices[0].remote_identity(real).is_none());
    let sent = bob.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &server.bundles(&[AccountId(1)]), b"x", T0)
        .unwrap();
    assert_eq!(bob.devices[0].remote_identity(real), Some(carol.device(real).public_identity()));
    assert_eq!(read(carol.device(real), &envelope_for(&sent, real).unwrap(), T0).unwrap(), b"x");
}

#[test]
fn a_planted_session_at_a_listed_address_is_discarded_before_fanout_and_history() {
    let mut rng = rng(3);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server);
    let real = link(&mut rng, &mut server, &mut carol, T0);
    carol.device(real).process_device_list(&server.newest(AccountId(2)), T0).unwrap();
    bob.devices[0].process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    // After the list names the real device, the server plants a session at its address under
    // another identity, through the raw path (the list is not consulted there).
    let mut squatter = Device::new(&mut rng, real, T0);
    let wire = forged(&mut rng, &mut squatter, &bob.devices[0], 0, 0);
    hazmat::decrypt(&mut bob.devices[0], &wire, T0).unwrap();
    assert_eq!(bob.devices[0].remote_identity(real), Some(squatter.public_identity()));
    // Fan-out compares identities first: the planted session is discarded, never used.
    let sent = bob.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &server.bundles(&[AccountId(1)]), b"x", T0)
        .unwrap();
    let wire = envelope_for(&sent, real).unwrap();
    assert!(SessionMessage::try_from(wire.as_slice()).unwrap().is_prekey_message());
    assert_eq!(read(carol.device(real), &wire, T0).unwrap(), b"x");
    // Now that Bob holds a session under the listed identity, even the raw path refuses a
    // session under another identity at that address.
    let wire = forged(&mut rng, &mut squatter, &bob.devices[0], 1, 0);
    assert_eq!(
        hazmat::decrypt(&mut bob.devices[0], &wire, T0).unwrap_err(),
        SessionError::IdentityMismatch(real)
    );
    // The same holds for history: a session planted at the primary for its own companion.
    let primary = &mut carol.devices[0];
    let mut squatter = Device::new(&mut rng, real, T0);
    let wire = forged(&mut rng, &mut squatter, primary, 0, 0);
    hazmat::decrypt(primary, &wire, T0).unwrap();
    assert_eq!(primary.remote_identity(real), Some(squatter.public_identity()));
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    let bundle = server.bundle(real);
    let envelope = primary.encrypt_history(&mut rng, real, &descriptor, &[bundle], T0).unwrap();
    let companion_identity = carol.devices[1].public_identity().clone();
    assert_eq!(carol.devices[0].remote_identity(real), Some(&companion_identity));
    assert!(matches!(
        carol.devices[1].receive(&envelope.bytes, None, T0).unwrap(),
        Received::History(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// Withheld removal and announced versions
// ---------------------------------------------------------------------------------------------

#[test]
fn a_withheld_removal_stops_peers_using_the_stolen_companion_after_14_days() {
    let mut rng = rng(4);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let stolen = carol.devices[1].address();
    // Carol removes the stolen companion; the server never delivers that list to Bob.
    carol.devices[0].remove_companion(stolen.device, T0).unwrap();
    let bundles = server.bundles(&[AccountId(1)]);
    // The thief's device sends Bob a message on day 14 that the server delivers a day later.
    let at_14 = T0.plus_secs(PRIMARY_INACTIVITY_SECS);
    let sent = carol.devices[1]
        .encrypt_fanout(
            &mut rng,
            &[AccountId(2)],
            &[server.bundle(bob.devices[0].address())],
            b"send money",
            at_14,
        )
        .unwrap();
    let delayed = envelope_for(&sent, bob.devices[0].address()).unwrap();
    // On day 14 Bob still reaches it: the list he holds is 14 days old.
    let reach =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"a", at_14).unwrap();
    assert!(recipients(&reach).contains(&stolen));
    // One second later the list is too old for companions: Bob neither sends to it...
    let late = at_14.plus_secs(1);
    let reach =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"b", late).unwrap();
    assert_eq!(recipients(&reach), vec![carol.devices[0].address()]);
    assert_eq!(reach.skipped, vec![(stolen, FanoutSkip::StaleList)]);
    assert_eq!(reach.lists_needed, vec![AccountId(1)]);
    // ...nor accepts from it, and the clock wound back changes nothing.
    let before = snapshot(&bob.devices[0]);
    for now in [late, T0] {
        let error = bob.devices[0].receive(&delayed, None, now).unwrap_err();
        assert_eq!(error, ReceiveError::StaleList { account: AccountId(1), announced: None });
        assert_eq!(error.action(), Action::FetchList(AccountId(1)));
        assert_eq!(snapshot(&bob.devices[0]), before);
    }
    let reach =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"c", T0).unwrap();
    assert!(!recipients(&reach).contains(&stolen));
    assert_eq!(bob.devices[0].lists_to_fetch(), vec![(AccountId(1), None)]);
    // The honest companion signed itself out by then as well.
    assert_eq!(carol.devices[1].account_status(late), AccountStatus::SignedOut);
}

#[test]
fn an_announced_newer_version_suspends_companions_until_the_list_is_fetched() {
    let mut rng = rng(5);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 2, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let stolen = carol.devices[1].address();
    let honest = carol.devices[2].address();
    let bob_address = bob.devices[0].address();
    // A message from the honest companion, written while Bob still holds the old list.
    let early = carol.devices[2]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"early", T0)
        .unwrap();
    // Carol removes the stolen device; the server withholds the list from Bob, but Carol's
    // primary then writes to Bob, announcing the new version inside the ciphertext.
    let without = carol.devices[0].remove_companion(stolen.device, T0).unwrap();
    server.publish(&without);
    for device in &mut carol.devices {
        let _ = device.process_device_list(&without.to_bytes(), T0);
    }
    let from_primary = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"hello", T0)
        .unwrap();
    let Received::Message(message) = bob.devices[0]
        .receive(&envelope_for(&from_primary, bob_address).unwrap(), None, T0)
        .unwrap()
    else {
        panic!("expected a message")
    };
    assert!(message.list_refresh_needed);
    assert_eq!(message.sender_list_version, without.version());
    assert_eq!(bob.devices[0].lists_to_fetch(), vec![(AccountId(1), Some(without.version()))]);
    // From now on Bob treats Carol's companions as stale, the honest one included.
    let bundles = server.bundles(&[AccountId(1)]);
    let reach =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"x", T0).unwrap();
    assert_eq!(recipients(&reach), vec![carol.devices[0].address()]);
    assert_eq!(reach.lists_needed, vec![AccountId(1)]);
    let early_wire = envelope_for(&early, bob_address).unwrap();
    let before = snapshot(&bob.devices[0]);
    let error = bob.devices[0].receive(&early_wire, None, T0).unwrap_err();
    assert_eq!(
        error,
        ReceiveError::StaleList { account: AccountId(1), announced: Some(without.version()) }
    );
    assert_eq!(error.action(), Action::FetchList(AccountId(1)));
    assert_eq!(snapshot(&bob.devices[0]), before);
    // Bob fetches the list; the queued message from the honest companion is read, the stolen
    // device is gone.
    bob.devices[0].process_device_list(&server.newest(AccountId(1)), T0).unwrap();
    assert!(bob.devices[0].lists_to_fetch().is_empty());
    assert_eq!(read(&mut bob.devices[0], &early_wire, T0).unwrap(), b"early");
    let reach =
        bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"y", T0).unwrap();
    assert_eq!(recipients(&reach), vec![carol.devices[0].address(), honest]);
}

#[test]
fn a_companion_announcing_a_newer_list_is_held_until_the_list_arrives() {
    let mut rng = rng(6);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let bob_address = bob.devices[0].address();
    // Carol refreshes (v+1); her companion learns it and writes to Bob, who does not have it.
    let newer = carol.devices[0].refresh_device_list(T0.plus_secs(10)).unwrap();
    server.publish(&newer);
    carol.devices[1].process_device_list(&newer.to_bytes(), T0).unwrap();
    let sent = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"queued", T0)
        .unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let error = bob.devices[0].receive(&wire, None, T0).unwrap_err();
    assert_eq!(
        error,
        ReceiveError::StaleList { account: AccountId(1), announced: Some(newer.version()) }
    );
    // The announcement latched, but no key was spent: the retry after the fetch succeeds.
    assert_eq!(bob.devices[0].lists_to_fetch(), vec![(AccountId(1), Some(newer.version()))]);
    bob.devices[0].process_device_list(&newer.to_bytes(), T0).unwrap();
    assert_eq!(read(&mut bob.devices[0], &wire, T0).unwrap(), b"queued");
}

#[test]
fn the_same_version_announced_with_another_digest_is_equivocation() {
    let mut rng = rng(7);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server);
    let bob_address = bob.devices[0].address();
    // A fork of Carol's primary (restored state) signs another list at the same version.
    let saved = carol.devices[0].to_bytes();
    let a = carol.devices[0].refresh_device_list(T0.plus_secs(1)).unwrap();
    let mut fork = Device::from_bytes(&saved).unwrap();
    let b = fork.refresh_device_list(T0.plus_secs(2)).unwrap();
    assert_eq!(a.version(), b.version());
    bob.devices[0].process_device_list(&a.to_bytes(), T0).unwrap();
    fork.process_device_list(&server.newest(AccountId(2)), T0).unwrap();
    let sent = fork
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"split", T0)
        .unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let before = snapshot(&bob.devices[0]);
    let error = bob.devices[0].receive(&wire, None, T0).unwrap_err();
    assert_eq!(error, ReceiveError::Equivocation { account: AccountId(1), version: a.version() });
    assert_eq!(error.action(), Action::AskUser);
    assert_eq!(snapshot(&bob.devices[0]), before);
    // Announced first and contradicted later: the list is refused as equivocation.
    let c = fork.refresh_device_list(T0.plus_secs(3)).unwrap();
    let d = carol.devices[0].refresh_device_list(T0.plus_secs(4)).unwrap();
    assert_eq!(c.version(), d.version());
    let bundle = server.bundle(bob_address);
    let sent = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"newer", T0)
        .unwrap();
    read(&mut bob.devices[0], &envelope_for(&sent, bob_address).unwrap(), T0).unwrap();
    assert_eq!(
        bob.devices[0].process_device_list(&c.to_bytes(), T0).unwrap_err(),
        DeviceListError::Equivocation { version: c.version() }
    );
    bob.devices[0].process_device_list(&d.to_bytes(), T0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Identity changes
// ---------------------------------------------------------------------------------------------

#[test]
fn accept_identity_change_takes_only_the_pending_list() {
    let mut rng = rng(8);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let removed = carol.devices[1].address();
    let old_with_companion = server.newest(AccountId(1));
    let without = carol.devices[0].remove_companion(removed.device, T0).unwrap();
    bob.devices[0].process_device_list(&without.to_bytes(), T0).unwrap();
    // Carol re-registers: a new primary, a new account identity.
    let mut reregistered = Device::new(&mut rng, addr(1, 0), T0);
    let new_list = reregistered.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    let bob_device = &mut bob.devices[0];
    assert_eq!(
        bob_device.process_device_list(&new_list, T0).unwrap_err(),
        DeviceListError::IdentityChanged { account: AccountId(1) }
    );
    let pending = bob_device.pending_identity_change(AccountId(1)).unwrap();
    assert_eq!(&pending.new_identity, reregistered.public_identity());
    let code = pending.security_code.unwrap();
    assert_ne!(code, bob_device.security_code(AccountId(1)).unwrap());
    // Sending is blocked until the user decides.
    assert_eq!(
        bob_device.encrypt_fanout(&mut rng, &[AccountId(1)], &[], b"x", T0).unwrap_err(),
        FanoutError::IdentityChangePending(AccountId(1))
    );
    // An older list under the old identity, with the removed device, is not the pending change.
    let before = snapshot(bob_device);
    assert_eq!(
        bob_device.accept_identity_change(&old_with_companion, T0).unwrap_err(),
        DeviceListError::NotPendingChange { account: AccountId(1) }
    );
    // Nor is another list under the new identity.
    let other_new = reregistered.refresh_device_list(T0).unwrap();
    assert_eq!(
        bob_device.accept_identity_change(&other_new.to_bytes(), T0).unwrap_err(),
        DeviceListError::NotPendingChange { account: AccountId(1) }
    );
    assert_eq!(snapshot(bob_device), before);
    assert!(bob_device.device_list(AccountId(1)).unwrap().device(removed).is_none());
    // The exact pending list is accepted.
    bob_device.accept_identity_change(&new_list, T0).unwrap();
    assert!(!bob_device.identity_change_pending(AccountId(1)));
    assert_eq!(bob_device.security_code(AccountId(1)).unwrap(), code);
    assert_eq!(
        bob_device.device_list(AccountId(1)).unwrap().account_identity(),
        reregistered.public_identity()
    );
}

// ---------------------------------------------------------------------------------------------
// The 14-day rule and the clock
// ---------------------------------------------------------------------------------------------

#[test]
fn a_companion_that_never_gets_a_list_is_not_linked_and_does_nothing() {
    let mut rng = rng(9);
    let mut server = Server::default();
    let (mut carol, bob) = carol_and_bob(&mut rng, &mut server);
    let mut companion = Device::new(&mut rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, T0);
    let (mut approval, message) =
        QrLinkApproval::approve(&mut carol.devices[0], &offer.qr_text(), T0).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &message, T0).unwrap();
    approval.finish(&mut carol.devices[0], &confirmation, T0).unwrap();
    // The server withholds every list from the companion.
    companion.process_device_list(&server.newest(AccountId(2)), T0).unwrap();
    for now in [T0, day(15), day(100)] {
        assert_eq!(companion.account_status(now), AccountStatus::NotLinked);
    }
    let error = companion.encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"x", T0).unwrap_err();
    assert_eq!(error, FanoutError::Session(SessionError::NotLinked));
    assert_eq!(error.action(), Action::RetryLater);
    assert!(companion.logout_request(T0).is_ok());
    let _ = bob;
}

#[test]
fn winding_the_clock_back_never_makes_a_stale_list_fresh() {
    let mut rng = rng(10);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let companion = carol.devices[1].address();
    let bundles = server.bundles(&[AccountId(1)]);
    let bob_device = &mut bob.devices[0];
    // encrypt_fanout advances the clock high-water mark...
    bob_device.encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"a", day(15)).unwrap();
    assert_eq!(bob_device.clock(), day(15));
    // ...so a clock wound back to day 1 still finds the list stale.
    let sent =
        bob_device.encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"b", day(1)).unwrap();
    assert!(!recipients(&sent).contains(&companion));
    assert_eq!(sent.skipped, vec![(companion, FanoutSkip::StaleList)]);
}

#[test]
fn reading_the_status_changes_nothing() {
    let mut rng = rng(11);
    let mut server = Server::default();
    let carol = account(&mut rng, &mut server, 1, 1, T0);
    let companion = &carol.devices[1];
    let before = snapshot(companion);
    assert_eq!(companion.account_status(day(30)), AccountStatus::SignedOut);
    assert_eq!(snapshot(companion), before);
    assert_eq!(companion.account_status(T0), AccountStatus::Active);
}

#[test]
fn the_signed_prekey_grace_reads_the_clock_high_water_mark() {
    let mut rng = rng(12);
    let mut server = Server::default();
    let (mut carol, mut bob) = carol_and_bob(&mut rng, &mut server);
    let bob_address = bob.devices[0].address();
    let old_bundle = server.bundle(bob_address);
    bob.devices[0].rotate_signed_prekey(&mut rng, T0);
    let sent = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[old_bundle], b"late", T0)
        .unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let end_of_grace = T0.plus_secs(SIGNED_PREKEY_GRACE_SECS);
    let mut copy = Device::from_bytes(&bob.devices[0].to_bytes()).unwrap();
    assert_eq!(read(&mut copy, &wire, end_of_grace).unwrap(), b"late");
    // Once Bob's clock has passed the grace period, winding it back does not reopen it.
    tick(&mut bob.devices[0], end_of_grace.plus_secs(1));
    let before = snapshot(&bob.devices[0]);
    for now in [end_of_grace.plus_secs(1), T0] {
        let error = bob.devices[0].receive(&wire, None, now).unwrap_err();
        assert!(matches!(error, ReceiveError::Session(SessionError::UnknownSignedPrekey(_))));
        assert_eq!(snapshot(&bob.devices[0]), before);
    }
}

// ---------------------------------------------------------------------------------------------
// Forged proofs
// ---------------------------------------------------------------------------------------------

/// Detects at compile time whether a type implements `Deserialize` (autoref specialization):
/// `true` only through the trait implemented for `Deserialize` types.
macro_rules! implements_deserialize {
    ($t:ty) => {{
        struct Probe<T>(core::marker::PhantomData<T>);
        #[allow(dead_code)]
        trait Yes {
            fn check(&self) -> bool {
                true
            }
        }
        impl<T: for<'de> serde::Deserialize<'de>> Yes for Probe<T> {}
        #[allow(dead_code)]
        trait No {
            fn check(&self) -> bool {
                false
            }
        }
        impl<T> No for &Probe<T> {}
        (&Probe::<$t>(core::marker::PhantomData)).check()
    }};
}

#[test]
fn verified_types_and_the_device_cannot_be_deserialized() {
    assert!(implements_deserialize!(AccountId), "the probe works");
    assert!(!implements_deserialize!(VerifiedDeviceList));
    assert!(!implements_deserialize!(AuthorizedDevice));
    assert!(!implements_deserialize!(VerifiedPrekeyBundle));
    assert!(!implements_deserialize!(Device));
}

#[test]
fn persisted_state_with_an_edited_device_list_fails_to_load() {
    let mut rng = rng(13);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let saved = bob.devices[0].to_bytes().to_vec();
    Device::from_bytes(&saved).unwrap();
    // The stored list carries the companion's identity; swap in an attacker's identity, or
    // flip any byte of the stored list.
    let companion = carol.devices[1].public_identity().to_bytes();
    let attacker = Device::new(&mut rng, addr(1, 1), T0).public_identity().to_bytes();
    let at = saved.windows(companion.len()).position(|w| w == companion).unwrap();
    let mut swapped = saved.clone();
    swapped[at..at + companion.len()].copy_from_slice(&attacker);
    assert!(Device::from_bytes(&swapped).is_err());
    let list = server.newest(AccountId(1));
    let start = saved.windows(list.len()).position(|w| w == list.as_slice()).unwrap();
    for offset in (0..list.len()).step_by(7) {
        let mut edited = saved.clone();
        edited[start + offset] ^= 0x01;
        assert!(Device::from_bytes(&edited).is_err(), "offset {offset}");
    }
}

// ---------------------------------------------------------------------------------------------
// Message kinds
// ---------------------------------------------------------------------------------------------

#[test]
fn a_message_of_one_kind_is_never_accepted_as_another() {
    let mut rng = rng(14);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let bob_address = bob.devices[0].address();
    let sent = carol.devices[0]
        .encrypt_fanout(
            &mut rng,
            &[AccountId(2)],
            &server.bundles(&[AccountId(1), AccountId(2)]),
            b"kind",
            T0,
        )
        .unwrap();
    let direct = envelope_for(&sent, bob_address).unwrap();
    let own = envelope_for(&sent, carol.devices[1].address()).unwrap();
    // A fan-out envelope on the raw path: refused before any key is derived.
    let before = snapshot(&bob.devices[0]);
    assert_eq!(
        hazmat::decrypt(&mut bob.devices[0], &direct, T0).unwrap_err(),
        SessionError::WrongKind(MessageKind::Direct)
    );
    assert_eq!(snapshot(&bob.devices[0]), before);
    // Relabelled in transit, each kind fails authentication, spending nothing.
    for kind in [0u8, 2, 3] {
        let mut relabelled = direct.clone();
        relabelled[2] = kind;
        assert!(bob.devices[0].receive(&relabelled, None, T0).is_err(), "kind {kind}");
        assert!(hazmat::decrypt(&mut bob.devices[0], &relabelled, T0).is_err(), "kind {kind}");
        assert_eq!(snapshot(&bob.devices[0]), before);
    }
    // A direct message from one's own account is refused, as is an own copy from another.
    let mut as_direct = own.clone();
    as_direct[2] = 1;
    let companion = &mut carol.devices[1];
    let before_companion = snapshot(companion);
    assert_eq!(
        companion.receive(&as_direct, None, T0).unwrap_err(),
        ReceiveError::WrongKind(MessageKind::Direct)
    );
    let mut as_own = direct.clone();
    as_own[2] = 2;
    assert_eq!(
        bob.devices[0].receive(&as_own, None, T0).unwrap_err(),
        ReceiveError::ForeignOwnCopy(carol.devices[0].address())
    );
    assert_eq!(snapshot(&carol.devices[1]), before_companion);
    // The genuine ones still work.
    assert_eq!(read(&mut bob.devices[0], &direct, T0).unwrap(), b"kind");
    assert_eq!(read(&mut carol.devices[1], &own, T0).unwrap(), b"kind");
}

// ---------------------------------------------------------------------------------------------
// Linking and history
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pairing_code_answers_one_hello_so_injected_hellos_get_no_extra_guesses() {
    let mut rng = rng(15);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 0, T0);
    let mut tablet = Device::new(&mut rng, addr(1, 99), T0);
    let (mut attempt, genuine_hello) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    // The relay injects its own hello first; the user's typed code answers that one only.
    let mut relay = Device::new(&mut rng, addr(1, 98), T0);
    let (_relay_attempt, injected) = CompanionPairing::start(&mut rng, &mut relay, T0);
    let typed = PairingCode::parse(&attempt.code().to_string()).unwrap();
    let (_wasted, _response) =
        PrimaryPairing::respond(&mut rng, &mut carol.devices[0], &injected, typed, T0).unwrap();
    // `typed` is gone; answering the genuine hello needs the user to type the code again, and a
    // relay learns nothing it could test offline from the first answer. A wrong code aborts.
    let wrong = PairingCode::generate(&mut rng);
    let (_pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut carol.devices[0], &genuine_hello, wrong, T0)
            .unwrap();
    assert_eq!(attempt.handle_response(&response, T0).unwrap_err(), LinkError::ConfirmationFailed);
    assert_eq!(LinkError::ConfirmationFailed.action(), Action::AskUser);
}

#[test]
fn abandoned_approvals_consume_no_device_ids() {
    let mut rng = rng(16);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 0, T0);
    let mut now = T0;
    // Ten offers approved and abandoned, each left to expire.
    for _ in 0..10 {
        let mut stranger = Device::new(&mut rng, addr(1, 99), now);
        let offer = QrLinkOffer::new(&mut rng, &mut stranger, now);
        let (_approval, _message) =
            QrLinkApproval::approve(&mut carol.devices[0], &offer.qr_text(), now).unwrap();
        now = now.plus_secs(APPROVAL_LIFETIME_SECS + 1);
    }
    let mut companion = Device::new(&mut rng, addr(1, 99), now);
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, now);
    let (mut approval, message) =
        QrLinkApproval::approve(&mut carol.devices[0], &offer.qr_text(), now).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &message, now).unwrap();
    approval.finish(&mut carol.devices[0], &confirmation, now).unwrap();
    assert_eq!(companion.address(), addr(1, 1));
    // Pending approvals hold distinct ids and count towards the limit until they expire.
    let mut pending = Vec::new();
    for expected in 2..=u32::try_from(MAX_COMPANIONS).unwrap() {
        let c = Device::new(&mut rng, addr(1, 99), now);
        let approval = carol.devices[0].approve_companion(c.public_identity(), now).unwrap();
        assert_eq!(approval.metadata.device, DeviceId(expected));
        pending.push((c, approval));
    }
    let extra = Device::new(&mut rng, addr(1, 99), now);
    assert_eq!(
        carol.devices[0].approve_companion(extra.public_identity(), now).unwrap_err(),
        DeviceListError::CompanionLimit { limit: MAX_COMPANIONS }
    );
    // Finishing an approval after it expired is refused; its id goes to the next approval.
    let (mut late, approval) = pending.remove(0);
    let signed = late.countersign_approval(&approval).unwrap();
    let later = now.plus_secs(APPROVAL_LIFETIME_SECS + 1);
    assert_eq!(
        carol.devices[0].add_companion(&signed, later).unwrap_err(),
        DeviceListError::UnknownApproval
    );
    let next = carol.devices[0].approve_companion(extra.public_identity(), later).unwrap();
    assert_eq!(next.metadata.device, DeviceId(2));
    // The same identity approved again while pending gets the same approval (a retry, not a
    // second device id); the primary's own identity is refused.
    assert_eq!(carol.devices[0].approve_companion(extra.public_identity(), later).unwrap(), next);
    let own = carol.devices[0].public_identity().clone();
    assert_eq!(
        carol.devices[0].approve_companion(&own, later).unwrap_err(),
        DeviceListError::DuplicateIdentity
    );
}

#[test]
fn history_is_accepted_only_from_the_primary() {
    let mut rng = rng(17);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 2, T0);
    let (first, second) = (carol.devices[1].address(), carol.devices[2].address());
    // The first companion relabels an own-device copy as history for the second.
    let sent = carol.devices[1]
        .encrypt_fanout(&mut rng, &[AccountId(1)], &server.bundles(&[AccountId(1)]), b"h", T0)
        .unwrap();
    let mut wire = envelope_for(&sent, second).unwrap();
    wire[2] = 3;
    let before = snapshot(carol.device(second));
    assert_eq!(
        carol.device(second).receive(&wire, None, T0).unwrap_err(),
        ReceiveError::HistoryNotFromPrimary(first)
    );
    assert_eq!(snapshot(carol.device(second)), before);
    // The primary's history is accepted.
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    let envelope = carol.devices[0]
        .encrypt_history(&mut rng, second, &descriptor, &[server.bundle(second)], T0)
        .unwrap();
    assert!(matches!(
        carol.device(second).receive(&envelope.bytes, None, T0).unwrap(),
        Received::History(_)
    ));
    assert_eq!(
        carol.devices[1].encrypt_history(&mut rng, second, &descriptor, &[], T0).unwrap_err(),
        HistoryError::NotPrimary
    );
}

// ---------------------------------------------------------------------------------------------
// Bounded state
// ---------------------------------------------------------------------------------------------

#[test]
fn a_thousand_sessions_from_unlisted_addresses_leave_the_victims_state_unchanged() {
    let mut rng = rng(18);
    let mut server = Server::default();
    let (_carol, mut bob) = carol_and_bob(&mut rng, &mut server);
    let victim = &mut bob.devices[0];
    let before = snapshot(victim);
    for i in 0..1_000u32 {
        // Unlisted devices of a known account, and devices of accounts with no list at all.
        let address = if i % 2 == 0 { addr(1, 100 + i) } else { addr(10_000 + u64::from(i), 0) };
        let mut hostile = Device::new(&mut rng, address, T0);
        let wire = forged(&mut rng, &mut hostile, victim, usize::try_from(i % 20).unwrap(), 1);
        let error = victim.receive(&wire, None, T0).unwrap_err();
        assert!(
            matches!(error, ReceiveError::UnlistedSender(_) | ReceiveError::NoList(_)),
            "{error:?}"
        );
        assert!(matches!(error.action(), Action::FetchList(_)));
    }
    assert_eq!(snapshot(victim), before);
}

#[test]
fn records_per_account_are_bounded_by_its_list_and_the_archive() {
    let mut rng = rng(19);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let bob_address = bob.devices[0].address();
    // Carol's companion starts far more sessions with Bob than the archive keeps.
    for round in 0..(MAX_ARCHIVED_SESSIONS + 5) {
        carol.devices[1].delete_sessions(bob_address);
        let sent = carol.devices[1]
            .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"s", T0)
            .unwrap();
        read(&mut bob.devices[0], &envelope_for(&sent, bob_address).unwrap(), T0).unwrap();
        let info = bob.devices[0].session_info(carol.devices[1].address()).unwrap();
        assert_eq!(info.archived, round.min(MAX_ARCHIVED_SESSIONS));
    }
}

#[test]
fn a_forged_list_fed_to_a_companion_before_it_links_does_not_wedge_the_link() {
    let mut rng = rng(20);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 0, T0);
    let mut companion = Device::new(&mut rng, addr(1, 99), T0);
    // Before the link, the server feeds the companion a list for account 1 that a forger signed.
    let forger = Device::new(&mut rng, addr(1, 0), T0);
    let forged = forger.device_list(AccountId(1)).unwrap().signed_bytes().to_vec();
    companion.process_device_list(&forged, T0).unwrap();
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, T0);
    let (mut approval, message) =
        QrLinkApproval::approve(&mut carol.devices[0], &offer.qr_text(), T0).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &message, T0).unwrap();
    // Countersigning Carol's approval dropped the forged list; the real one links the companion.
    assert!(companion.device_list(AccountId(1)).is_none());
    let list = approval.finish(&mut carol.devices[0], &confirmation, T0).unwrap();
    companion.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(companion.account_status(T0), AccountStatus::Active);
    // The forged list is now refused outright: the companion is bound to Carol's identity.
    assert_eq!(
        companion.process_device_list(&forged, T0).unwrap_err(),
        DeviceListError::ForeignOwnList { account: AccountId(1) }
    );
    assert!(!companion.identity_change_pending(AccountId(1)));
    assert_eq!(
        companion.device_list(AccountId(1)).unwrap().account_identity(),
        carol.devices[0].public_identity()
    );
}
