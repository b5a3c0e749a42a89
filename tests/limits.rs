#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Every limit of `multidevice::consts` (and the store's `DEDUP_WINDOW`) at N and N + 1 through
//! the public API, and every error variant's `action()`.
//!
//! Each refusal here is also checked to leave the persisted state (`Device::to_bytes`, or
//! `StoredDevice::export`) byte-identical; the clock high-water mark, a documented latch, is
//! raised first (`support::tick`) so the comparison sees only what the refusal changes.
//!
//! Which test pins each limit at N and N + 1 (tests in this file unless a file is named):
//!
//! - `MAX_COMPANIONS`: tests/device_list.rs `primary_links_four_companions_and_refuses_a_fifth`
//!   (approval) and `list_with_five_companions_is_rejected` (verification); tests/linking.rs
//!   `fifth_companion_is_refused_before_anything_is_signed`.
//! - `PRIMARY_INACTIVITY_SECS`: tests/attack_review.rs
//!   `the_fourteen_day_rule_holds_at_n_and_n_plus_one_for_receive_and_status`;
//!   tests/device_list.rs `list_past_its_ttl_restricts_sending_to_the_primary` (fan-out);
//!   tests/authorization.rs
//!   `a_withheld_removal_stops_peers_using_the_stolen_companion_after_14_days`.
//! - `MAX_LIST_ISSUED_AHEAD_SECS`: tests/device_list.rs
//!   `a_list_issued_in_the_future_is_refused_past_the_bound_at_n_and_n_plus_one`, and its §8
//!   counterpart in tests/spec.rs (`list_issued_at_is_refused_more_than_one_day_past_...`).
//! - `DEVICE_LIST_TTL_SECS`:
//!   `device_list_ttl_keeps_the_primary_reachable_and_companions_not_at_n_and_n_plus_one`.
//! - `DEFAULT_MAX_FORWARD_JUMP`: tests/session.rs
//!   `forward_jump_at_limit_is_accepted_and_at_limit_plus_one_rejected`; tests/spec.rs
//!   `forward_jump_is_measured_from_the_next_expected_counter_n_accepted_n_plus_one_refused`.
//! - `MAX_FORWARD_JUMP_CEILING`: `forward_jump_ceiling_is_accepted_at_n_and_refused_at_n_plus_one`
//!   (the setting and the jump at the ceiling); tests/session.rs
//!   `configured_forward_jump_is_enforced_at_n_and_n_plus_one` (the setting at N + 1 only).
//! - `MAX_SKIPPED_KEYS`: tests/session.rs
//!   `skipped_key_limit_keeps_n_and_evicts_the_oldest_at_n_plus_one`.
//! - `MAX_RECEIVER_CHAINS`: tests/session.rs `receiver_chains_are_bounded_at_n_and_n_plus_one`.
//! - `MAX_ARCHIVED_SESSIONS`: tests/session.rs `archived_sessions_are_bounded_at_n_and_n_plus_one`;
//!   on the authorized path tests/authorization.rs
//!   `records_per_account_are_bounded_by_its_list_and_the_archive` and tests/attack_review.rs
//!   `a_listed_device_opening_a_thousand_sessions_stays_within_the_archive_bound`.
//! - `MAX_ONE_TIME_PREKEYS`: tests/session.rs
//!   `one_time_prekey_limit_is_enforced_at_n_and_n_plus_one`; tests/store.rs
//!   `one_time_prekeys_are_records`.
//! - `ONE_TIME_PREKEY_LIFETIME_SECS`: tests/store.rs `one_time_prekeys_are_records`
//!   (replenishing);
//!   `one_time_prekey_lifetime_an_initial_message_naming_it_decrypts_at_n_and_fails_at_n_plus_one`
//!   (receiving; **fails**: the receiver never checks the lifetime).
//! - `ONE_TIME_PREKEY_TARGET`:
//!   `one_time_prekey_target_is_needed_below_n_and_met_at_n_and_n_plus_one`.
//! - `SIGNED_PREKEY_GRACE_SECS`: tests/session.rs
//!   `signed_prekey_rotation_keeps_the_old_one_for_the_grace_period`; tests/authorization.rs
//!   `the_signed_prekey_grace_reads_the_clock_high_water_mark` (the authorized path).
//! - `QR_OFFER_LIFETIME_SECS`: tests/linking.rs `expired_offer_is_rejected_on_both_sides`.
//! - `QR_CLOCK_SKEW_SECS`:
//!   `qr_offer_expiry_may_run_ahead_by_the_clock_skew_at_n_and_not_at_n_plus_one`.
//! - `PAIRING_CODE_LIFETIME_SECS`: tests/linking.rs `pairing_code_works_at_its_lifetime_limit` and
//!   `expired_pairing_code_is_refused` (the companion);
//!   `pairing_code_lifetime_holds_on_the_primary_at_n_and_n_plus_one` (the primary).
//! - `APPROVAL_LIFETIME_SECS`: tests/attack_review.rs
//!   `an_approval_is_still_accepted_at_exactly_its_lifetime` (N); tests/authorization.rs
//!   `abandoned_approvals_consume_no_device_ids` (N + 1).
//! - `MAX_MESSAGE_PLAINTEXT`: tests/session.rs `self_session_and_oversized_plaintext_are_refused`.
//! - `INLINE_THRESHOLD`: tests/fanout.rs
//!   `payloads_at_and_above_the_inline_threshold_take_both_modes` (the sender: N inline, N + 1 in
//!   a body).
//! - `MAX_FANOUT_ACCOUNTS`: tests/fanout.rs
//!   `recipient_account_count_is_bounded_at_n_and_n_plus_one`.
//! - `MAX_FANOUT_PAYLOAD`: `fanout_payload_is_refused_at_n_plus_one`;
//!   `fanout_payload_is_accepted_at_n` (64 MiB: ignored in debug builds, run it with `--release`).
//! - `HISTORY_WINDOW_SECS`: tests/history.rs `history_after_the_window_is_rejected` and
//!   `primary_sends_history_only_within_the_window_after_the_link` (link completion at the link
//!   time); `history_window_runs_from_link_completion_at_n_and_n_plus_one` (completion an hour
//!   after the link).
//! - `MAX_HISTORY_RECORD`: tests/history.rs `history_record_limit_at_n_and_n_plus_one` and
//!   `import_rejects_a_length_prefix_over_the_limit`.
//! - `MAX_ANNOUNCEMENTS`:
//!   `announcements_above_the_held_list_are_bounded_at_n_and_n_plus_one_lowest_forgotten_first`.
//! - `MAX_REFUSED_IDENTITIES`:
//!   `refused_identities_are_bounded_at_n_and_n_plus_one_oldest_forgotten_first`.
//! - `USED_LINK_REFERENCES`:
//!   `used_link_references_are_remembered_at_n_and_forgotten_at_n_plus_one`.
//! - `MAX_ANSWERED_PAIRING_CODES`:
//!   `answered_pairing_codes_are_bounded_at_n_and_n_plus_one_until_the_oldest_expires`.
//! - `DEDUP_WINDOW` (the store's):
//!   `dedup_window_recognizes_n_envelopes_and_leaves_older_ones_to_the_ratchet`.
//! - `MESSAGE_ID_WINDOW`: tests/retry.rs
//!   `the_message_id_window_recognizes_the_256th_newest_and_the_sender_answers_nothing_older`.
//! - `MAX_RETRIES`: tests/retry.rs `the_receiver_asks_max_retries_times_then_gives_up` and
//!   `the_sender_answers_max_retries_times_then_gives_up`.
//! - `DEFAULT_SENT_CACHE_ENTRIES`: tests/retry.rs
//!   `the_sent_cache_keeps_the_default_number_of_entries_at_n_and_n_plus_one` (a configured
//!   number: `the_sent_cache_keeps_a_configured_number_of_entries_at_n_and_n_plus_one`).
//! - `DEFAULT_SENT_CACHE_AGE_SECS`: tests/retry.rs
//!   `the_sent_cache_keeps_messages_for_the_default_age_at_n_and_n_plus_one` (a configured age:
//!   `the_sent_cache_keeps_messages_for_a_configured_age_at_n_and_n_plus_one`).
//!
//! `DAY_SECS` is a unit, not a limit. `every_error_says_what_to_do` pins `action()` for every
//! variant of every public error enum.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use multidevice::GroupError;
use multidevice::blob::{
    BlobDescriptor, BlobKey, MediaType, MediaTypeError, decrypt_blob, decrypt_stream, encrypt_blob,
};
use multidevice::consts::MAX_GROUP_MEMBERS;
use multidevice::consts::{
    DAY_SECS, DEVICE_LIST_TTL_SECS, MAX_ANNOUNCEMENTS, MAX_ANSWERED_PAIRING_CODES,
    MAX_FORWARD_JUMP_CEILING, MAX_MESSAGE_PLAINTEXT, MAX_ONE_TIME_PREKEYS, MAX_REFUSED_IDENTITIES,
    MAX_RETRIES, MAX_SKIPPED_KEYS, ONE_TIME_PREKEY_LIFETIME_SECS, ONE_TIME_PREKEY_TARGET,
    PAIRING_CODE_LIFETIME_SECS, PRIMARY_INACTIVITY_SECS, QR_CLOCK_SKEW_SECS,
    QR_OFFER_LIFETIME_SECS, USED_LINK_REFERENCES,
};
use multidevice::hazmat;
use multidevice::store::{
    MemoryStore, Mode, SqliteOptions, SqliteStore, Store, StoreError, StoreKey, Table, Transaction,
};
use multidevice::{
    AccountId, Action, BlobError, CompanionApproval, CompanionPairing, DEDUP_WINDOW, DecodeError,
    Device, DeviceAddress, DeviceId, DeviceListError, FanoutError, FanoutSkip, HISTORY_MEDIA_TYPE,
    HISTORY_WINDOW_SECS, HistoryError, INLINE_THRESHOLD, KeyError, LinkError, LinkingMetadata,
    MAX_FANOUT_PAYLOAD, MAX_HISTORY_RECORD, MessageKind, PairingCode, PrekeyBundle, PrekeyUpload,
    PrimaryPairing, QR_PREFIX, QrLinkApproval, QrLinkOffer, ReceiveError, Received, RetryError,
    SentCacheLimits, SessionError, SessionMessage, SignatureKind, SignedDeviceIdentity,
    StoredDevice, Timestamp, build_history, import_history, render_pixels, test_support,
};
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use support::world::{Account, Server, account, envelope_for, introduce, read, recipients};
use support::{T0, addr, established, rng, snapshot, tick};

/// An independent copy of `device`, through its persisted form.
fn copy(device: &Device) -> Device {
    Device::from_bytes(&device.to_bytes()).unwrap()
}

/// Asserts `device` persists exactly `before` (without printing kilobytes on failure).
fn unchanged(device: &Device, before: &[u8], what: &str) {
    assert!(snapshot(device) == before, "{what}: the persisted state changed");
}

/// The signed bytes of `device`'s own newest list.
fn own_list(device: &Device) -> Vec<u8> {
    device.device_list(device.account()).unwrap().signed_bytes().to_vec()
}

/// A message's payload and whether it asks for a list refresh.
fn message(received: Received) -> (Vec<u8>, bool) {
    match received {
        Received::Message(m) => (m.payload.to_vec(), m.list_refresh_needed),
        other => panic!("expected a message, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Device lists
// ---------------------------------------------------------------------------------------------

/// `DEVICE_LIST_TTL_SECS`: by design nothing changes at the TTL. At N and at N + 1 the primary
/// is sent to and accepted from (only an identity change revokes the account identity), and
/// companions are neither (they already went stale after 14 days).
#[test]
fn device_list_ttl_keeps_the_primary_reachable_and_companions_not_at_n_and_n_plus_one() {
    let mut rng = rng(7001);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let bob_address = bob.devices[0].address();
    let (primary, companion) = (carol.devices[0].address(), carol.devices[1].address());
    // Both of Carol's devices write to Bob on day 0; the server delivers at the TTL. (Bundles
    // without a one-time prekey: one would have expired after 30 days.)
    let to_bob = |rng: &mut StdRng, server: &mut Server, sender: &mut Device, text: &[u8]| {
        let bundle = server.old_bundle(bob_address, 0, None);
        let sent = sender.encrypt_fanout(rng, &[AccountId(2)], &[bundle], text, T0).unwrap();
        envelope_for(&sent, bob_address).unwrap()
    };
    let from_primary = to_bob(&mut rng, &mut server, &mut carol.devices[0], b"primary");
    let from_companion = to_bob(&mut rng, &mut server, &mut carol.devices[1], b"companion");
    let carol_bundles = server.bundles(&[AccountId(1)]);
    for at in [DEVICE_LIST_TTL_SECS, DEVICE_LIST_TTL_SECS + 1].map(|s| T0.plus_secs(s)) {
        let mut peer = copy(&bob.devices[0]);
        let sent =
            peer.encrypt_fanout(&mut rng, &[AccountId(1)], &carol_bundles, b"x", at).unwrap();
        assert_eq!(recipients(&sent), vec![primary], "at {at:?}");
        assert_eq!(sent.skipped, vec![(companion, FanoutSkip::StaleList)]);
        assert_eq!(sent.lists_needed, vec![AccountId(1)]);

        let mut peer = copy(&bob.devices[0]);
        tick(&mut peer, at);
        let before = snapshot(&peer);
        let error = peer.receive(&from_companion, None, at).unwrap_err();
        assert_eq!(error, ReceiveError::StaleList { account: AccountId(1), announced: None });
        assert_eq!(error.action(), Action::FetchList(AccountId(1)));
        unchanged(&peer, &before, "stale companion refused");
        let (payload, refresh) = message(peer.receive(&from_primary, None, at).unwrap());
        assert_eq!(payload, b"primary");
        assert!(refresh, "the list is stale, so the app is told to fetch it");
    }
}

/// `MAX_ANNOUNCEMENTS`: 8 versions announced above the held list are remembered; a ninth
/// forgets the lowest. What is remembered shows in `lists_to_fetch` and in what processing
/// refuses: a list at a remembered version with another digest is equivocation.
#[test]
fn announcements_above_the_held_list_are_bounded_at_n_and_n_plus_one_lowest_forgotten_first() {
    let mut rng = rng(7002);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 0, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    let bob_address = bob.devices[0].address();
    let v1 = carol.devices[0].device_list(AccountId(1)).unwrap().digest();
    let bundle = server.bundle(bob_address);
    // Carol's primary signs versions 2, 3, ... and announces each in a message the server
    // delivers to Bob, while it withholds the lists themselves.
    let mut at_n = None;
    for announced in 1..=MAX_ANNOUNCEMENTS + 1 {
        carol.devices[0].refresh_device_list(T0).unwrap();
        let sent = carol.devices[0]
            .encrypt_fanout(&mut rng, &[AccountId(2)], std::slice::from_ref(&bundle), b"v", T0)
            .unwrap();
        let wire = envelope_for(&sent, bob_address).unwrap();
        let (_, refresh) = message(bob.devices[0].receive(&wire, None, T0).unwrap());
        assert!(refresh);
        if announced == MAX_ANNOUNCEMENTS {
            at_n = Some(copy(&bob.devices[0]));
        }
    }
    let mut at_n = at_n.unwrap();
    let at_n_plus_1 = &mut bob.devices[0];
    let highest = u64::try_from(MAX_ANNOUNCEMENTS).unwrap() + 2;
    assert_eq!(at_n.lists_to_fetch(), vec![(AccountId(1), Some(highest - 1))]);
    assert_eq!(at_n_plus_1.lists_to_fetch(), vec![(AccountId(1), Some(highest))]);
    // Another version 2 and 3, validly signed and chained, but not the ones announced.
    let primary = &carol.devices[0];
    let other_v2 = test_support::sign_device_list(primary, 2, T0.plus_secs(1), v1, Vec::new());
    let other_v2_digest = other_v2.verify().unwrap().digest();
    let other_v3 =
        test_support::sign_device_list(primary, 3, T0.plus_secs(1), other_v2_digest, Vec::new());
    // N: version 2 is still remembered.
    let before = snapshot(&at_n);
    let error = at_n.process_device_list(&other_v2.to_bytes(), T0).unwrap_err();
    assert_eq!(error, DeviceListError::Equivocation { version: 2 });
    assert_eq!(error.action(), Action::AskUser);
    unchanged(&at_n, &before, "equivocation refused");
    // N + 1: version 2, the lowest, was forgotten; version 3 is still remembered.
    at_n_plus_1.process_device_list(&other_v2.to_bytes(), T0).unwrap();
    let before = snapshot(at_n_plus_1);
    assert_eq!(
        at_n_plus_1.process_device_list(&other_v3.to_bytes(), T0).unwrap_err(),
        DeviceListError::Equivocation { version: 3 }
    );
    unchanged(at_n_plus_1, &before, "equivocation refused");
}

/// `MAX_REFUSED_IDENTITIES`: 8 refused account identities are remembered per account; a ninth
/// forgets the oldest, whose lists then raise an identity change again.
#[test]
fn refused_identities_are_bounded_at_n_and_n_plus_one_oldest_forgotten_first() {
    let mut rng = rng(7003);
    let carol = Device::new(&mut rng, addr(1, 0), T0);
    let mut bob = Device::new(&mut rng, addr(2, 0), T0);
    bob.process_device_list(&own_list(&carol), T0).unwrap();
    // Re-registrations of account 1 the user rejects, one after the other.
    let impostors: Vec<Vec<u8>> = (0..=MAX_REFUSED_IDENTITIES)
        .map(|_| own_list(&Device::new(&mut rng, addr(1, 0), T0)))
        .collect();
    let refused = DeviceListError::RefusedIdentity { account: AccountId(1) };
    let changed = DeviceListError::IdentityChanged { account: AccountId(1) };
    for (i, list) in impostors.iter().enumerate() {
        assert_eq!(bob.process_device_list(list, T0).unwrap_err(), changed);
        bob.reject_identity_change(AccountId(1), T0).unwrap();
        if i + 1 == MAX_REFUSED_IDENTITIES {
            // N: every one is refused, the first included.
            let before = snapshot(&bob);
            let error = bob.process_device_list(&impostors[0], T0).unwrap_err();
            assert_eq!(error, refused);
            assert_eq!(error.action(), Action::Drop);
            unchanged(&bob, &before, "refused identity");
        }
    }
    // N + 1: the first is forgotten, the second still refused.
    let before = snapshot(&bob);
    assert_eq!(bob.process_device_list(&impostors[1], T0).unwrap_err(), refused);
    unchanged(&bob, &before, "refused identity");
    assert_eq!(bob.process_device_list(&impostors[0], T0).unwrap_err(), changed);
    assert!(bob.identity_change_pending(AccountId(1)));
}

// ---------------------------------------------------------------------------------------------
// Sessions and prekeys
// ---------------------------------------------------------------------------------------------

/// `MAX_FORWARD_JUMP_CEILING`: the setting accepts the ceiling and refuses one more, and at the
/// ceiling a jump of exactly N is accepted (keeping the newest `MAX_SKIPPED_KEYS` keys) and
/// N + 1 refused before any key is derived.
#[test]
fn forward_jump_ceiling_is_accepted_at_n_and_refused_at_n_plus_one() {
    let mut rng = rng(7004);
    let (mut alice, mut bob) = established(&mut rng);
    let ceiling = MAX_FORWARD_JUMP_CEILING;
    let before = snapshot(&bob);
    assert_eq!(bob.set_max_forward_jump(ceiling + 1), Err(SessionError::InvalidConfig));
    unchanged(&bob, &before, "setting refused");
    bob.set_max_forward_jump(ceiling).unwrap();
    // Alice's next chain: message k carries counter k, a jump of k on Bob's new chain.
    let n = usize::try_from(ceiling).unwrap();
    let wires: Vec<Vec<u8>> = (0..=n + 1)
        .map(|_| hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"j").unwrap())
        .collect();
    let before = snapshot(&bob);
    assert_eq!(
        hazmat::decrypt(&mut bob, &wires[n + 1], T0).unwrap_err(),
        SessionError::TooFarAhead { jump: u64::from(ceiling) + 1, limit: ceiling }
    );
    unchanged(&bob, &before, "jump refused");
    assert_eq!(hazmat::decrypt(&mut bob, &wires[n], T0).unwrap().plaintext.as_slice(), b"j");
    assert_eq!(bob.session_info(alice.address()).unwrap().skipped_keys, MAX_SKIPPED_KEYS);
    hazmat::decrypt(&mut bob, &wires[n + 1], T0).unwrap();
}

/// `ONE_TIME_PREKEY_LIFETIME_SECS` on the receiving side: "an initial message naming an expired
/// one fails with `UnknownOneTimePrekey`" (src/consts.rs). At exactly the lifetime the message
/// decrypts; one second later it must be refused, spending nothing.
#[test]
fn one_time_prekey_lifetime_an_initial_message_naming_it_decrypts_at_n_and_fails_at_n_plus_one() {
    let mut rng = rng(7005);
    let mut server = Server::default();
    let mut alice = account(&mut rng, &mut server, 1, 0, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let bob_address = bob.devices[0].address();
    let bundle = server.bundle(bob_address);
    let otk = bundle.one_time_prekey.as_ref().unwrap().id;
    let sent =
        alice.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"late", T0).unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let lifetime = ONE_TIME_PREKEY_LIFETIME_SECS;
    let mut on_time = copy(&bob.devices[0]);
    assert_eq!(read(&mut on_time, &wire, T0.plus_secs(lifetime)).unwrap(), b"late");
    let late = T0.plus_secs(lifetime + 1);
    let bob = &mut bob.devices[0];
    tick(bob, late);
    let before = snapshot(bob);
    let result = bob.receive(&wire, None, late).map(|_| ());
    assert_eq!(
        result,
        Err(ReceiveError::Session(SessionError::UnknownOneTimePrekey(otk))),
        "an initial message naming a one-time prekey past its lifetime"
    );
    unchanged(bob, &before, "expired one-time prekey refused");
}

/// `ONE_TIME_PREKEY_TARGET`: one key is needed at N - 1, none at N and N + 1, and replenishing
/// then generates nothing.
#[test]
fn one_time_prekey_target_is_needed_below_n_and_met_at_n_and_n_plus_one() {
    let mut rng = rng(7006);
    let mut device = Device::new(&mut rng, addr(1, 0), T0);
    device.generate_one_time_prekeys(&mut rng, ONE_TIME_PREKEY_TARGET - 1).unwrap();
    assert_eq!(device.one_time_prekeys_needed(), 1);
    assert_eq!(copy(&device).replenish_one_time_prekeys(&mut rng, T0).len(), 1);
    for held in [ONE_TIME_PREKEY_TARGET, ONE_TIME_PREKEY_TARGET + 1] {
        device.generate_one_time_prekeys(&mut rng, 1).unwrap();
        assert_eq!(device.one_time_prekeys_remaining(), held);
        assert_eq!(device.one_time_prekeys_needed(), 0, "{held} held");
        let before = snapshot(&device);
        assert!(device.replenish_one_time_prekeys(&mut rng, T0).is_empty());
        unchanged(&device, &before, "nothing to replenish");
    }
}

// ---------------------------------------------------------------------------------------------
// Linking
// ---------------------------------------------------------------------------------------------

/// `QR_CLOCK_SKEW_SECS`: an offer may claim to expire up to lifetime + skew after the primary's
/// clock (a companion whose clock runs 30 s ahead), not one second more; the same offer is
/// accepted once the primary's clock is one second later.
#[test]
fn qr_offer_expiry_may_run_ahead_by_the_clock_skew_at_n_and_not_at_n_plus_one() {
    let mut rng = rng(7007);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let skew = QR_CLOCK_SKEW_SECS;
    let mut ahead = Device::new(&mut rng, addr(1, 99), T0);
    let offer = QrLinkOffer::new(&mut rng, &mut ahead, T0.plus_secs(skew));
    assert_eq!(offer.expires(), T0.plus_secs(QR_OFFER_LIFETIME_SECS + skew));
    QrLinkApproval::approve(&mut copy(&primary), &offer.qr_text(), T0).unwrap();
    let mut further = Device::new(&mut rng, addr(1, 99), T0);
    let offer = QrLinkOffer::new(&mut rng, &mut further, T0.plus_secs(skew + 1));
    let before = snapshot(&primary);
    let error = QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap_err();
    assert_eq!(error, LinkError::Expired);
    assert_eq!(error.action(), Action::Drop);
    unchanged(&primary, &before, "offer from too far ahead refused");
    QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0.plus_secs(1)).unwrap();
}

/// Links a fresh companion to `primary` by QR at `T0` and removes it again; returns the
/// offer's QR text.
fn link_and_remove(rng: &mut StdRng, primary: &mut Device) -> String {
    let mut companion = Device::new(rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(rng, &mut companion, T0);
    let text = offer.qr_text().to_string();
    let (mut approval, message) = QrLinkApproval::approve(primary, &text, T0).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &message, T0).unwrap();
    let list = approval.finish(primary, &confirmation, T0).unwrap().verify().unwrap();
    primary.remove_companion(list.companion_devices()[0].address().device, T0).unwrap();
    text
}

/// `USED_LINK_REFERENCES`: the last 64 approved offers are refused as reused; the 65th approval
/// forgets the oldest, which (still unexpired) is approved again. The companion that showed it
/// finishes at most once, so this gives a relay nothing (tests/linking.rs).
#[test]
fn used_link_references_are_remembered_at_n_and_forgotten_at_n_plus_one() {
    let mut rng = rng(7008);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let texts: Vec<String> =
        (0..USED_LINK_REFERENCES).map(|_| link_and_remove(&mut rng, &mut primary)).collect();
    // N: the oldest of 64 approved offers is still remembered.
    let before = snapshot(&primary);
    let error = QrLinkApproval::approve(&mut primary, &texts[0], T0).unwrap_err();
    assert_eq!(error, LinkError::OfferReused);
    assert_eq!(error.action(), Action::Drop);
    unchanged(&primary, &before, "reused offer refused");
    // N + 1: the oldest is forgotten, the second oldest is not.
    link_and_remove(&mut rng, &mut primary);
    let before = snapshot(&primary);
    assert_eq!(
        QrLinkApproval::approve(&mut primary, &texts[1], T0).unwrap_err(),
        LinkError::OfferReused
    );
    unchanged(&primary, &before, "reused offer refused");
    QrLinkApproval::approve(&mut primary, &texts[0], T0).unwrap();
}

/// A companion, its pairing attempt started at `T0`, its hello and the code it shows.
fn hello(rng: &mut StdRng) -> (Device, CompanionPairing, Vec<u8>, PairingCode) {
    let mut companion = Device::new(rng, addr(1, 99), T0);
    let (attempt, hello) = CompanionPairing::start(rng, &mut companion, T0);
    let code = PairingCode::parse(&attempt.code().to_string()).unwrap();
    (companion, attempt, hello, code)
}

/// `MAX_ANSWERED_PAIRING_CODES`: 16 codes answer hellos within one code lifetime; the 17th is
/// refused (retry later), also at the last second of the oldest code's lifetime, and accepted
/// one second later, when the oldest has expired, after which the next is refused again.
#[test]
fn answered_pairing_codes_are_bounded_at_n_and_n_plus_one_until_the_oldest_expires() {
    let mut rng = rng(7009);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let later = T0.plus_secs(100);
    for i in 0..MAX_ANSWERED_PAIRING_CODES {
        let (_, _, hello, code) = hello(&mut rng);
        let at = if i == 0 { T0 } else { later };
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, at).unwrap();
    }
    let oldest_expires = T0.plus_secs(PAIRING_CODE_LIFETIME_SECS);
    for at in [later, oldest_expires] {
        tick(&mut primary, at);
        let before = snapshot(&primary);
        let (_, _, hello, code) = hello(&mut rng);
        let error = PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, at).unwrap_err();
        assert_eq!(error, LinkError::TooManyPairingAttempts, "at {at:?}");
        assert_eq!(error.action(), Action::RetryLater);
        unchanged(&primary, &before, "pairing attempt refused");
    }
    let freed = oldest_expires.plus_secs(1);
    let (_, _, hello_a, code_a) = hello(&mut rng);
    PrimaryPairing::respond(&mut rng, &mut primary, &hello_a, code_a, freed).unwrap();
    let (_, _, hello_b, code_b) = hello(&mut rng);
    assert_eq!(
        PrimaryPairing::respond(&mut rng, &mut primary, &hello_b, code_b, freed).unwrap_err(),
        LinkError::TooManyPairingAttempts
    );
}

/// A pairing attempt `primary` answered at `T0`, with the companion's confirmation.
fn answered(rng: &mut StdRng, primary: &mut Device) -> (PrimaryPairing, Vec<u8>) {
    let (_, mut attempt, hello, code) = hello(rng);
    let (pairing, response) = PrimaryPairing::respond(rng, primary, &hello, code, T0).unwrap();
    let confirm = attempt.handle_response(&response, T0).unwrap();
    (pairing, confirm)
}

/// `PAIRING_CODE_LIFETIME_SECS` on the primary's side: it takes the companion's confirmation
/// exactly 180 s after answering, and not one second later (the attempt is then over).
#[test]
fn pairing_code_lifetime_holds_on_the_primary_at_n_and_n_plus_one() {
    let mut rng = rng(7010);
    let primary = Device::new(&mut rng, addr(1, 0), T0);
    let lifetime = PAIRING_CODE_LIFETIME_SECS;
    let mut on_time = copy(&primary);
    let (mut pairing, confirm) = answered(&mut rng, &mut on_time);
    pairing.handle_confirm(&mut on_time, &confirm, T0.plus_secs(lifetime)).unwrap();

    let mut late_primary = copy(&primary);
    let (mut pairing, confirm) = answered(&mut rng, &mut late_primary);
    let late = T0.plus_secs(lifetime + 1);
    tick(&mut late_primary, late);
    let before = snapshot(&late_primary);
    let error = pairing.handle_confirm(&mut late_primary, &confirm, late).unwrap_err();
    assert_eq!(error, LinkError::Expired);
    assert_eq!(error.action(), Action::Drop);
    unchanged(&late_primary, &before, "expired confirmation refused");
    assert_eq!(
        pairing.handle_confirm(&mut late_primary, &confirm, T0).unwrap_err(),
        LinkError::NotActive
    );
}

// ---------------------------------------------------------------------------------------------
// Fan-out, history and the store
// ---------------------------------------------------------------------------------------------

/// Two devices of different accounts that hold each other's list, and Bob's bundle.
fn two_primaries(rng: &mut StdRng) -> (Device, Device, PrekeyBundle) {
    let mut alice = Device::new(rng, addr(1, 0), T0);
    let mut bob = Device::new(rng, addr(2, 0), T0);
    alice.process_device_list(&own_list(&bob), T0).unwrap();
    bob.process_device_list(&own_list(&alice), T0).unwrap();
    let bundle = bob.prekey_upload().bundle(None);
    (alice, bob, bundle)
}

/// `MAX_FANOUT_PAYLOAD` at N + 1: one byte over 64 MiB is refused before anything is encrypted.
/// N is `fanout_payload_is_accepted_at_n`.
#[test]
fn fanout_payload_is_refused_at_n_plus_one() {
    let mut rng = rng(7011);
    let (mut alice, _bob, bundle) = two_primaries(&mut rng);
    let payload = vec![0u8; MAX_FANOUT_PAYLOAD + 1];
    let before = snapshot(&alice);
    let error =
        alice.encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], &payload, T0).unwrap_err();
    assert_eq!(error, FanoutError::PayloadTooLarge(MAX_FANOUT_PAYLOAD + 1));
    assert_eq!(error.action(), Action::Drop);
    unchanged(&alice, &before, "oversized payload refused");
}

/// `MAX_FANOUT_PAYLOAD` at N: 64 MiB are sent as one shared body and read back. Ignored in debug
/// builds, where the AES-GCM code monomorphized into this crate runs unoptimized (about 25 s for
/// the two passes); `cargo test --release --test limits` runs it.
#[test]
#[cfg_attr(debug_assertions, ignore = "64 MiB of AES-GCM; run with --release")]
fn fanout_payload_is_accepted_at_n() {
    let mut rng = rng(7011);
    let (mut alice, mut bob, bundle) = two_primaries(&mut rng);
    let mut payload = vec![0u8; MAX_FANOUT_PAYLOAD];
    payload[0] = 1;
    *payload.last_mut().unwrap() = 2;
    let sent = alice.encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], &payload, T0).unwrap();
    let body = sent.body.as_deref().unwrap();
    // Version, type, commitment, ciphertext, tag.
    assert_eq!(body.len(), 2 + 32 + MAX_FANOUT_PAYLOAD + 16);
    let (received, _) = message(bob.receive(&sent.envelopes[0].bytes, Some(body), T0).unwrap());
    assert!(received == payload, "the 64 MiB payload came back changed");
}

/// `HISTORY_WINDOW_SECS` runs from the companion's link completion (the clock mark when it first
/// processed a list naming it), not from the link time: with the list withheld for an hour,
/// history is accepted exactly 24 h after completion and refused one second later.
#[test]
fn history_window_runs_from_link_completion_at_n_and_n_plus_one() {
    let mut rng = rng(7012);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut companion = Device::new(&mut rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, T0);
    let (mut approval, message) =
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &message, T0).unwrap();
    let list = approval.finish(&mut primary, &confirmation, T0).unwrap();
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    let bundle = companion.prekey_upload().bundle(None);
    let envelope =
        primary.encrypt_history(&mut rng, companion.address(), &descriptor, &[bundle], T0).unwrap();
    let completed = T0.plus_secs(3_600);
    companion.process_device_list(&list.to_bytes(), completed).unwrap();
    let last = completed.plus_secs(HISTORY_WINDOW_SECS);
    let mut on_time = copy(&companion);
    assert!(matches!(on_time.receive(&envelope.bytes, None, last).unwrap(), Received::History(_)));
    let late = last.plus_secs(1);
    tick(&mut companion, late);
    let before = snapshot(&companion);
    let error = companion.receive(&envelope.bytes, None, late).unwrap_err();
    assert_eq!(error, ReceiveError::HistoryWindowClosed);
    assert_eq!(error.action(), Action::Drop);
    unchanged(&companion, &before, "late history refused");
}

/// `DEDUP_WINDOW`: a stored device recognizes a redelivered envelope among the last 256 from one
/// sender before any decryption (`AlreadyReceived` once acknowledged); one older than that is
/// no longer recognized, and the ratchet reports it as a duplicate. Neither changes the state.
#[test]
fn dedup_window_recognizes_n_envelopes_and_leaves_older_ones_to_the_ratchet() {
    let mut rng = rng(7013);
    let mut server = Server::default();
    let mut alice = account(&mut rng, &mut server, 1, 0, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let bob_address = bob.devices[0].address();
    let key = StoreKey::from_bytes(&[7; 32]);
    let mut stored =
        StoredDevice::import(MemoryStore::new(), &key, &mut rng, &bob.devices[0].to_bytes())
            .unwrap();
    let bundle = server.bundle(bob_address);
    let envelopes: Vec<Vec<u8>> = (0..=DEDUP_WINDOW)
        .map(|i| {
            let sent = alice.devices[0]
                .encrypt_fanout(
                    &mut rng,
                    &[AccountId(2)],
                    std::slice::from_ref(&bundle),
                    &i.to_be_bytes(),
                    T0,
                )
                .unwrap();
            envelope_for(&sent, bob_address).unwrap()
        })
        .collect();
    let receive = |stored: &mut StoredDevice<MemoryStore>, envelope: &[u8]| {
        let inbound = stored.receive(envelope, None, T0).unwrap();
        stored.acknowledge(inbound.id).unwrap();
    };
    for envelope in &envelopes[..DEDUP_WINDOW] {
        receive(&mut stored, envelope);
    }
    // N: the oldest of the last 256 envelopes is recognized.
    let before = stored.export().unwrap();
    let error = stored.receive(&envelopes[0], None, T0).unwrap_err();
    assert_eq!(error, ReceiveError::AlreadyReceived);
    assert_eq!(error.action(), Action::Drop);
    assert!(stored.export().unwrap() == before, "redelivery changed the state");
    // N + 1: it fell out of the window (and out of the window of delivered message ids, which
    // is as long); the ratchet refuses it as a spent key, and the device asks its sender for a
    // retry (which the sender answers under the same message id, delivered as `Redelivered`).
    // The second oldest is still recognized.
    receive(&mut stored, &envelopes[DEDUP_WINDOW]);
    let before = stored.export().unwrap();
    let outbox = stored.outbox().unwrap().len();
    let error = stored.receive(&envelopes[0], None, T0).unwrap_err();
    assert_eq!(error, ReceiveError::Session(SessionError::Duplicate));
    assert_eq!(error.action(), Action::Drop);
    assert_eq!(stored.outbox().unwrap().len(), outbox + 1, "a retry request queued");
    let counted = stored.export().unwrap();
    assert_eq!(stored.receive(&envelopes[1], None, T0).unwrap_err(), ReceiveError::AlreadyReceived);
    assert!(stored.export().unwrap() == counted, "refused redelivery changed the state");
    assert!(counted != before, "asking for the retry counts it");
}

// =============================================================================================
// Every error says what to do
// =============================================================================================

/// The variants pinned so far, by enum name.
#[derive(Default)]
struct Pins(BTreeMap<&'static str, BTreeSet<String>>);

impl Pins {
    fn record(&mut self, enum_name: &'static str, debug: &str, action: Action, expected: Action) {
        assert_eq!(action, expected, "{enum_name}::{debug}");
        let variant = debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default();
        self.0.entry(enum_name).or_default().insert(variant.to_owned());
    }
}

/// Asserts that `$error`, of type `$ty`, matches `$pattern` and that its `action()` is
/// `$action`; records the variant and evaluates to the error.
macro_rules! pin {
    ($pins:expr, $ty:ident, $error:expr, $pattern:pat => $action:expr) => {{
        let error: $ty = $error;
        assert!(matches!(error, $pattern), "expected {}, got {error:?}", stringify!($pattern));
        $pins.record(stringify!($ty), &format!("{error:?}"), error.action(), $action);
        error
    }};
}

/// The variants of `pub enum name` as declared in `source`.
fn declared_variants(source: &str, name: &str) -> BTreeSet<String> {
    let start = source.find(&format!("pub enum {name} {{")).unwrap();
    let body = &source[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .skip(1)
        .filter_map(|line| line.strip_prefix("    "))
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|rest| rest.split(|c: char| !c.is_alphanumeric()).next().unwrap().to_owned())
        .collect()
}

/// `bytes` with the byte at `at` replaced by `value`.
fn edited(bytes: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[at] = value;
    bytes
}

/// The 12-byte wire form of an address: account id (u64) and device id (u32), big-endian.
fn address_bytes(address: DeviceAddress) -> Vec<u8> {
    [&address.account.0.to_be_bytes()[..], &address.device.0.to_be_bytes()].concat()
}

/// Carol (account 1: her primary and one companion, linked at `T0`), Bob (account 2, a primary)
/// and the server; every device holds every list.
fn fixture(seed: u64) -> (StdRng, Server, Account, Account) {
    let mut rng = rng(seed);
    let mut server = Server::default();
    let mut carol = account(&mut rng, &mut server, 1, 1, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut carol, &mut bob], T0);
    (rng, server, carol, bob)
}

/// The version and digest of `device`'s own newest list, as its messages announce them.
fn announced(device: &Device) -> (u64, [u8; 32]) {
    let list = device.device_list(device.account()).unwrap();
    (list.version(), list.digest())
}

/// A signed companion identity for `holder` at `device` of `account`, approved by `primary`.
fn entry(primary: &Device, holder: &Device, account: u64, device: u32) -> SignedDeviceIdentity {
    let metadata = LinkingMetadata {
        account: AccountId(account),
        device: DeviceId(device),
        key_index: device,
        timestamp: T0,
    };
    SignedDeviceIdentity {
        metadata,
        identity: holder.public_identity().clone(),
        account_signature: test_support::account_sign(primary, metadata, holder.public_identity()),
        device_signature: test_support::device_sign(holder, metadata, primary.public_identity()),
    }
}

fn decode_and_key_errors(pins: &mut Pins) {
    let mut rng = rng(7100);
    let (mut alice, bob) = support::pair(&mut rng);
    let upload = bob.prekey_upload();
    // A bundle: version, type, address (12), identity (IKs 14..46, IKa, signature 78..142),
    // signed prekey (100), has_opk at 242, one-time prekey.
    let bundle = upload.bundle(Some(0)).to_bytes();
    let parse = |bytes: &[u8]| PrekeyBundle::try_from(bytes).unwrap_err();
    pin!(pins, DecodeError, parse(&bundle[..10]), DecodeError::Truncated { .. } => Action::Drop);
    pin!(pins, DecodeError, parse(&edited(&bundle, 0, 2)),
        DecodeError::UnsupportedVersion(2) => Action::Drop);
    pin!(pins, DecodeError, parse(&edited(&bundle, 1, 0x7f)),
        DecodeError::UnknownType(0x7f) => Action::Drop);
    pin!(pins, DecodeError, parse(&[&bundle[..], &[0]].concat()),
        DecodeError::TrailingBytes(1) => Action::Drop);
    pin!(pins, DecodeError, parse(&edited(&bundle, 242, 2)),
        DecodeError::OutOfRange => Action::Drop);
    let mut key = bundle.clone();
    key[14..46].fill(0xff);
    pin!(pins, DecodeError, parse(&key), DecodeError::InvalidSigningKey => Action::Drop);
    pin!(pins, DecodeError, parse(&edited(&bundle, 100, bundle[100] ^ 1)),
        DecodeError::BadIdentitySignature => Action::Drop);
    let mut many = upload.to_bytes();
    many[242..244].copy_from_slice(&201u16.to_be_bytes());
    pin!(pins, DecodeError, PrekeyUpload::try_from(&many[..]).unwrap_err(),
        DecodeError::TooLong { limit: 200, got: 201 } => Action::Drop);
    pin!(pins, DecodeError, Device::from_bytes(&[]).unwrap_err(),
        DecodeError::MalformedState => Action::Drop);
    // A prekey message: kind at 2, base key at 155..187, ratchet key at 212..244.
    let first = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"x").unwrap();
    let parse = |bytes: &[u8]| SessionMessage::try_from(bytes).map(|_| ()).unwrap_err();
    pin!(pins, DecodeError, parse(&edited(&first, 2, 9)),
        DecodeError::UnknownKind(9) => Action::Drop);
    pin!(pins, DecodeError, parse(&edited(&first, 212, first[212] ^ 1)),
        DecodeError::BaseKeyMismatch => Action::Drop);
    // `NotStrictlyIncreasing` is provoked in `receive_errors`.

    let mut forged = upload.bundle(None);
    forged.signed_prekey.signature[0] ^= 1;
    pin!(pins, KeyError, forged.verify().unwrap_err(),
        KeyError::BadSignature(SignatureKind::SignedPrekey) => Action::Drop);
    let mut with_otk = |public: [u8; 32]| {
        let mut bundle = upload.bundle(Some(0));
        bundle.one_time_prekey.as_mut().unwrap().public = public;
        let before = snapshot(&alice);
        let error =
            hazmat::start_session(&mut alice, &mut rng, &bundle.verify().unwrap()).unwrap_err();
        unchanged(&alice, &before, "bad one-time prekey refused");
        error
    };
    let error = pin!(pins, SessionError, with_otk([0; 32]), SessionError::Key(_) => Action::Drop);
    let SessionError::Key(key) = error else { panic!("{error:?}") };
    pin!(pins, KeyError, key, KeyError::NonContributoryKey => Action::Drop);
    let error =
        pin!(pins, SessionError, with_otk([0xff; 32]), SessionError::Key(_) => Action::Drop);
    let SessionError::Key(key) = error else { panic!("{error:?}") };
    pin!(pins, KeyError, key, KeyError::NonCanonicalKey => Action::Drop);
    // Constructed: the identity's signature over its agreement key is checked only while an
    // identity is parsed, which reports it as `DecodeError::BadIdentitySignature`.
    pin!(pins, KeyError, KeyError::BadSignature(SignatureKind::IdentityAgreementKey),
        KeyError::BadSignature(_) => Action::Drop);
    // Device list, account, device and logout-request signatures: `device_list_errors`.
}

fn session_errors(pins: &mut Pins) {
    let mut rng = rng(7200);
    let (mut alice, mut bob) = established(&mut rng);
    let mut carol = Device::new(&mut rng, addr(3, 0), T0);
    let decrypt = |device: &mut Device, bytes: &[u8]| {
        let before = snapshot(device);
        let error = hazmat::decrypt(device, bytes, T0).map(|_| ()).unwrap_err();
        unchanged(device, &before, "refused decryption");
        error
    };
    pin!(pins, SessionError, decrypt(&mut bob, &[]), SessionError::Decode(_) => Action::Drop);
    let before_turn = copy(&alice);
    // A message on a confirmed session: session id at 27..43, counter at 75..79.
    let m = hazmat::encrypt(&mut alice, &mut rng, bob.address(), b"m").unwrap();
    pin!(pins, SessionError, decrypt(&mut carol, &m),
        SessionError::WrongRecipient { .. } => Action::Drop);
    pin!(pins, SessionError,
        hazmat::encrypt(&mut carol, &mut rng, bob.address(), b"x").unwrap_err(),
        SessionError::NoSession(_) => Action::Drop);
    pin!(pins, SessionError, decrypt(&mut bob, &edited(&m, 27, m[27] ^ 1)),
        SessionError::UnknownSession(_) => Action::Drop);
    let mut far = m.clone();
    far[75..79].copy_from_slice(&u32::MAX.to_be_bytes());
    pin!(pins, SessionError, decrypt(&mut bob, &far),
        SessionError::TooFarAhead { .. } => Action::Drop);
    let last = m.len() - 1;
    pin!(pins, SessionError, decrypt(&mut bob, &edited(&m, last, m[last] ^ 1)),
        SessionError::AuthenticationFailed => Action::Drop);
    hazmat::decrypt(&mut bob, &m, T0).unwrap();
    pin!(pins, SessionError, decrypt(&mut bob, &m), SessionError::Duplicate => Action::Drop);
    // An old copy of Alice turns her ratchet again: a second new ratchet key before Bob
    // answered the first.
    let mut forked = before_turn;
    let fork = hazmat::encrypt(&mut forked, &mut rng, bob.address(), b"fork").unwrap();
    pin!(pins, SessionError, decrypt(&mut bob, &fork),
        SessionError::NoReceivingChain => Action::Drop);

    // Prekey fields of an initial message: signed prekey id at 187..191, one-time at 192..196.
    let (mut initiator, mut responder) = support::pair(&mut rng);
    let first = hazmat::encrypt(&mut initiator, &mut rng, responder.address(), b"1").unwrap();
    let mut spk = first.clone();
    spk[187..191].copy_from_slice(&999u32.to_be_bytes());
    pin!(pins, SessionError, decrypt(&mut responder, &spk),
        SessionError::UnknownSignedPrekey(999) => Action::Drop);
    let mut otk = first.clone();
    otk[192..196].copy_from_slice(&999u32.to_be_bytes());
    pin!(pins, SessionError, decrypt(&mut responder, &otk),
        SessionError::UnknownOneTimePrekey(999) => Action::Drop);
    hazmat::decrypt(&mut responder, &first, T0).unwrap();
    // Another identity claims the initiator's address.
    let mut mallory = Device::new(&mut rng, initiator.address(), T0);
    let bundle = responder.prekey_upload().bundle(None).verify().unwrap();
    hazmat::start_session(&mut mallory, &mut rng, &bundle).unwrap();
    let claim = hazmat::encrypt(&mut mallory, &mut rng, responder.address(), b"me").unwrap();
    pin!(pins, SessionError, decrypt(&mut responder, &claim),
        SessionError::IdentityMismatch(_) => Action::FetchList(AccountId(1)));

    let own = alice.prekey_upload().bundle(None).verify().unwrap();
    pin!(pins, SessionError, hazmat::start_session(&mut alice, &mut rng, &own).unwrap_err(),
        SessionError::SelfSession => Action::Drop);
    let big = vec![0; MAX_MESSAGE_PLAINTEXT + 1];
    pin!(pins, SessionError,
        hazmat::encrypt(&mut alice, &mut rng, bob.address(), &big).unwrap_err(),
        SessionError::PlaintextTooLarge(_) => Action::Drop);
    pin!(pins, SessionError, alice.set_max_forward_jump(0).unwrap_err(),
        SessionError::InvalidConfig => Action::Drop);
    pin!(pins, SessionError,
        alice.generate_one_time_prekeys(&mut rng, MAX_ONE_TIME_PREKEYS + 1).unwrap_err(),
        SessionError::TooManyOneTimePrekeys { .. } => Action::Drop);
    // Constructed: a sending chain runs out after 2^32 - 1 messages, far beyond a test.
    pin!(pins, SessionError, SessionError::CounterExhausted,
        SessionError::CounterExhausted => Action::Drop);
    // `SignedOut`, `NotLinked`: `fanout_errors`; `WrongKind`: `receive_errors`; `Store`:
    // `store_errors`.
}

fn device_list_errors(pins: &mut Pins) {
    let (mut rng, mut server, mut carol, mut bob) = fixture(7300);
    let process = |device: &mut Device, bytes: &[u8]| {
        let before = snapshot(device);
        let error = device.process_device_list(bytes, T0).map(|_| ()).unwrap_err();
        unchanged(device, &before, "refused list");
        error
    };
    let list = server.newest(AccountId(1));
    let (version, digest) = announced(&carol.devices[0]);
    pin!(pins, DeviceListError, process(&mut bob.devices[0], &[]),
        DeviceListError::Decode(_) => Action::Drop);
    // The list body of a list naming two devices is 187 + 2 x 40 bytes; its signature follows.
    let error = pin!(pins, DeviceListError,
        process(&mut bob.devices[0], &edited(&list, 267, list[267] ^ 1)),
        DeviceListError::Key(_) => Action::Drop);
    let DeviceListError::Key(key) = error else { panic!("{error:?}") };
    pin!(pins, KeyError, key, KeyError::BadSignature(SignatureKind::DeviceList) => Action::Drop);

    let sign = |entries: Vec<SignedDeviceIdentity>, version: u64, issued_at: Timestamp| {
        test_support::sign_device_list(&carol.devices[0], version, issued_at, digest, entries)
    };
    let holders: Vec<Device> = (0..5).map(|_| Device::new(&mut rng, addr(1, 99), T0)).collect();
    let primary = &carol.devices[0];
    let five = (1..=5).map(|d| entry(primary, &holders[d - 1], 1, u32::try_from(d).unwrap()));
    pin!(pins, DeviceListError, sign(five.collect(), 3, T0).verify().unwrap_err(),
        DeviceListError::TooManyCompanions { got: 5 } => Action::Drop);
    pin!(pins, DeviceListError, sign(Vec::new(), 0, T0).verify().unwrap_err(),
        DeviceListError::ZeroVersion => Action::Drop);
    let unsorted = vec![entry(primary, &holders[1], 1, 2), entry(primary, &holders[0], 1, 1)];
    pin!(pins, DeviceListError, sign(unsorted, 3, T0).verify().unwrap_err(),
        DeviceListError::UnsortedEntries => Action::Drop);
    pin!(pins, DeviceListError,
        sign(vec![entry(primary, &holders[0], 3, 1)], 3, T0).verify().unwrap_err(),
        DeviceListError::EntryMismatch { .. } => Action::Drop);
    // Constructed: rule 4 cannot fail for a list the API or test_support signs (the signer
    // always names itself first, as device 0), and any edit of a list breaks its signature,
    // which rule 1 checks first.
    pin!(pins, DeviceListError, DeviceListError::MissingPrimary,
        DeviceListError::MissingPrimary => Action::Drop);
    let ahead = sign(Vec::new(), version + 1, T0.plus_secs(2 * DAY_SECS)).to_bytes();
    pin!(pins, DeviceListError, process(&mut bob.devices[0], &ahead),
        DeviceListError::IssuedInFuture { .. } => Action::RetryLater);
    let own = carol.devices[0].public_identity().clone();
    pin!(pins, DeviceListError, carol.devices[0].approve_companion(&own, T0).unwrap_err(),
        DeviceListError::DuplicateIdentity => Action::Drop);
    let v1 = server.every_list(AccountId(1))[0].clone();
    pin!(pins, DeviceListError, process(&mut bob.devices[0], &v1),
        DeviceListError::RollbackRejected { seen: 2, got: 1 } => Action::Drop);
    let other = test_support::sign_device_list(
        &carol.devices[0],
        version,
        T0.plus_secs(1),
        [0; 32],
        Vec::new(),
    );
    pin!(pins, DeviceListError, process(&mut bob.devices[0], &other.to_bytes()),
        DeviceListError::Equivocation { version: 2 } => Action::AskUser);
    let impostor = own_list(&Device::new(&mut rng, addr(1, 0), T0));
    let bob_device = &mut bob.devices[0];
    pin!(pins, DeviceListError, bob_device.process_device_list(&impostor, T0).unwrap_err(),
        DeviceListError::IdentityChanged { .. } => Action::AskUser);
    bob_device.reject_identity_change(AccountId(1), T0).unwrap();
    pin!(pins, DeviceListError, process(bob_device, &impostor),
        DeviceListError::RefusedIdentity { .. } => Action::Drop);
    pin!(pins, DeviceListError, bob_device.reject_identity_change(AccountId(1), T0).unwrap_err(),
        DeviceListError::NotPendingChange { .. } => Action::Drop);
    let bob_list = own_list(bob_device);
    pin!(pins, DeviceListError, bob_device.accept_identity_change(&bob_list, T0).unwrap_err(),
        DeviceListError::ForeignOwnList { account: AccountId(2) } => Action::Drop);
    pin!(pins, DeviceListError, carol.devices[1].refresh_device_list(T0).unwrap_err(),
        DeviceListError::NotPrimary => Action::Drop);
    pin!(pins, DeviceListError, carol.devices[0].logout_request(T0).unwrap_err(),
        DeviceListError::NotCompanion => Action::Drop);
    let mut unlinked = Device::new(&mut rng, addr(1, 99), T0);
    pin!(pins, DeviceListError, unlinked.logout_request(T0).unwrap_err(),
        DeviceListError::NotLinked => Action::Drop);
    let approval = carol.devices[0].approve_companion(holders[0].public_identity(), T0).unwrap();
    pin!(pins, DeviceListError, carol.devices[1].countersign_approval(&approval).unwrap_err(),
        DeviceListError::AlreadyLinked => Action::Drop);
    pin!(pins, DeviceListError, carol.devices[0].remove_companion(DeviceId(42), T0).unwrap_err(),
        DeviceListError::UnknownCompanion(DeviceId(42)) => Action::Drop);
    let request = carol.devices[1].logout_request(T0).unwrap().to_bytes();
    pin!(pins, DeviceListError, bob.devices[0].process_logout(&request, T0).unwrap_err(),
        DeviceListError::WrongAccount { .. } => Action::Drop);
    let last = request.len() - 1;
    let forged = edited(&request, last, request[last] ^ 1);
    let error = pin!(pins, DeviceListError,
        carol.devices[0].process_logout(&forged, T0).unwrap_err(),
        DeviceListError::Key(_) => Action::Drop);
    let DeviceListError::Key(key) = error else { panic!("{error:?}") };
    pin!(pins, KeyError, key, KeyError::BadSignature(SignatureKind::LogoutRequest) => Action::Drop);

    // A fresh primary and the companions it approves.
    let mut dave = Device::new(&mut rng, addr(4, 0), T0);
    let mut tablet = Device::new(&mut rng, addr(4, 99), T0);
    let approval = dave.approve_companion(tablet.public_identity(), T0).unwrap();
    let mut forged = approval.clone();
    forged.account_signature[0] ^= 1;
    let error = pin!(pins, DeviceListError, tablet.countersign_approval(&forged).unwrap_err(),
        DeviceListError::Key(_) => Action::Drop);
    let DeviceListError::Key(key) = error else { panic!("{error:?}") };
    pin!(pins, KeyError, key,
        KeyError::BadSignature(SignatureKind::AccountSignature) => Action::Drop);
    let signed = tablet.countersign_approval(&approval).unwrap();
    let mut forged = signed.clone();
    forged.device_signature[0] ^= 1;
    let error = pin!(pins, DeviceListError, dave.add_companion(&forged, T0).unwrap_err(),
        DeviceListError::Key(_) => Action::Drop);
    let DeviceListError::Key(key) = error else { panic!("{error:?}") };
    pin!(pins, KeyError, key,
        KeyError::BadSignature(SignatureKind::DeviceSignature) => Action::Drop);
    dave.add_companion(&signed, T0).unwrap();
    // The same companion again is a retry (the list again); another identity at its id is not.
    assert!(dave.add_companion(&signed, T0).is_ok());
    let mut other = Device::new(&mut rng, addr(4, 98), T0);
    let other_signed = other
        .countersign_approval(&CompanionApproval {
            metadata: signed.metadata,
            account_identity: dave.public_identity().clone(),
            account_signature: test_support::account_sign(
                &dave,
                signed.metadata,
                other.public_identity(),
            ),
        })
        .unwrap();
    pin!(pins, DeviceListError, dave.add_companion(&other_signed, T0).unwrap_err(),
        DeviceListError::DeviceIdInUse(DeviceId(1)) => Action::Drop);
    // An approval under Dave's key for metadata Dave never assigned.
    let mut phone = Device::new(&mut rng, addr(4, 99), T0);
    let metadata =
        LinkingMetadata { account: AccountId(4), device: DeviceId(7), key_index: 9, timestamp: T0 };
    let unapproved = CompanionApproval {
        metadata,
        account_identity: dave.public_identity().clone(),
        account_signature: test_support::account_sign(&dave, metadata, phone.public_identity()),
    };
    let signed = phone.countersign_approval(&unapproved).unwrap();
    pin!(pins, DeviceListError, dave.add_companion(&signed, T0).unwrap_err(),
        DeviceListError::UnknownApproval => Action::Drop);
    for _ in 0..3 {
        dave.approve_companion(Device::new(&mut rng, addr(4, 99), T0).public_identity(), T0)
            .unwrap();
    }
    pin!(pins, DeviceListError, dave.approve_companion(phone.public_identity(), T0).unwrap_err(),
        DeviceListError::CompanionLimit { .. } => Action::Drop);
    // Constructed: device ids and key indices run out after 2^32 approvals.
    pin!(pins, DeviceListError, DeviceListError::IdsExhausted,
        DeviceListError::IdsExhausted => Action::Drop);

    // Carol's primary restored from a backup: her companion, which holds a newer own list,
    // announces it; the primary refuses the message and then refuses to sign a fork.
    let mut restored = copy(&carol.devices[0]);
    carol.devices[0].refresh_device_list(T0).unwrap();
    let newer = own_list(&carol.devices[0]);
    carol.devices[1].process_device_list(&newer, T0).unwrap();
    let primary_address = carol.devices[0].address();
    let bundle = server.bundle(primary_address);
    let note =
        carol.devices[1].encrypt_fanout(&mut rng, &[AccountId(1)], &[bundle], b"n", T0).unwrap();
    let wire = envelope_for(&note, primary_address).unwrap();
    pin!(pins, ReceiveError, restored.receive(&wire, None, T0).unwrap_err(),
        ReceiveError::StaleList { announced: Some(3), .. } => Action::FetchList(AccountId(1)));
    pin!(pins, DeviceListError, restored.refresh_device_list(T0).unwrap_err(),
        DeviceListError::OwnListBehind { held: 2, announced: 3, .. }
            => Action::FetchList(AccountId(1)));
    // `Store`: `store_errors`.
}

fn fanout_errors(pins: &mut Pins) {
    let (mut rng, mut server, carol, mut bob) = fixture(7400);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let mut send_rng = support::rng(7401);
    let mut send = |device: &mut Device, to: &[AccountId], payload: &[u8], now: Timestamp| {
        let before = snapshot(device);
        let error = device.encrypt_fanout(&mut send_rng, to, &bundles, payload, now).unwrap_err();
        if now == T0 {
            unchanged(device, &before, "refused fan-out");
        }
        error
    };
    let fifteen_days = T0.plus_secs(15 * DAY_SECS);
    let error = pin!(pins, FanoutError,
        send(&mut copy(&carol.devices[1]), &[AccountId(2)], b"x", fifteen_days),
        FanoutError::Session(_) => Action::RetryLater);
    let FanoutError::Session(session) = error else { panic!("{error:?}") };
    pin!(pins, SessionError, session, SessionError::SignedOut => Action::RetryLater);
    let mut unlinked = Device::new(&mut rng, addr(1, 99), T0);
    let error = pin!(pins, FanoutError, send(&mut unlinked, &[AccountId(2)], b"x", T0),
        FanoutError::Session(_) => Action::RetryLater);
    let FanoutError::Session(session) = error else { panic!("{error:?}") };
    pin!(pins, SessionError, session, SessionError::NotLinked => Action::RetryLater);
    pin!(pins, FanoutError, send(&mut bob.devices[0], &[AccountId(9)], b"x", T0),
        FanoutError::UnknownAccount(AccountId(9)) => Action::FetchList(AccountId(9)));
    pin!(pins, FanoutError, send(&mut bob.devices[0], &[], b"x", T0),
        FanoutError::TooManyAccounts(0) => Action::Drop);
    let big = vec![0; MAX_FANOUT_PAYLOAD + 1];
    pin!(pins, FanoutError, send(&mut bob.devices[0], &[AccountId(1)], &big, T0),
        FanoutError::PayloadTooLarge(_) => Action::Drop);
    let impostor = own_list(&Device::new(&mut rng, addr(1, 0), T0));
    bob.devices[0].process_device_list(&impostor, T0).unwrap_err();
    pin!(pins, FanoutError, send(&mut bob.devices[0], &[AccountId(1)], b"x", T0),
        FanoutError::IdentityChangePending(AccountId(1)) => Action::AskUser);
    // `Store`: `store_errors`.
}

fn receive_errors(pins: &mut Pins) {
    let (mut rng, mut server, mut carol, mut bob) = fixture(7500);
    let bob_address = bob.devices[0].address();
    let companion = carol.devices[1].address();
    let (version, digest) = announced(&carol.devices[0]);
    let receive = |device: &mut Device, bytes: &[u8], body: Option<&[u8]>| {
        let before = snapshot(device);
        let error = device.receive(bytes, body, T0).map(|_| ()).unwrap_err();
        unchanged(device, &before, "refused message");
        error
    };
    let sent = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"hi", T0)
        .unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    pin!(pins, SessionError, hazmat::decrypt(&mut copy(&bob.devices[0]), &wire, T0).unwrap_err(),
        SessionError::WrongKind(MessageKind::Direct) => Action::Drop);
    read(&mut bob.devices[0], &wire, T0).unwrap();
    pin!(pins, ReceiveError, receive(&mut bob.devices[0], &wire, None),
        ReceiveError::Session(SessionError::Duplicate) => Action::Drop);

    // A raw message from 1:7, which no list names, relabelled: kind at 2, sender at 3..15.
    let mut stranger = Device::new(&mut rng, addr(1, 7), T0);
    let bundle = server.bundle(bob_address).verify().unwrap();
    hazmat::start_session(&mut stranger, &mut rng, &bundle).unwrap();
    let raw = hazmat::encrypt(&mut stranger, &mut rng, bob_address, b"raw").unwrap();
    let bob_device = &mut bob.devices[0];
    pin!(pins, ReceiveError, receive(bob_device, &raw, None),
        ReceiveError::WrongKind(MessageKind::Raw) => Action::Drop);
    pin!(pins, ReceiveError, receive(bob_device, &edited(&raw, 2, 1), None),
        ReceiveError::UnlistedSender(_) => Action::FetchList(AccountId(1)));
    pin!(pins, ReceiveError, receive(bob_device, &edited(&raw, 2, 2), None),
        ReceiveError::ForeignOwnCopy(_) => Action::Drop);
    pin!(pins, ReceiveError, receive(bob_device, &edited(&raw, 2, 3), None),
        ReceiveError::HistoryNotFromPrimary(_) => Action::Drop);
    let mut to_itself = edited(&raw, 2, 3);
    to_itself[3..15].copy_from_slice(&address_bytes(bob_address));
    pin!(pins, ReceiveError, receive(bob_device, &to_itself, None),
        ReceiveError::NotLinkedCompanion => Action::Drop);
    let mut dave = Device::new(&mut rng, addr(3, 0), T0);
    dave.process_device_list(&own_list(bob_device), T0).unwrap();
    let bundle = bob_device.prekey_upload().bundle(None);
    let sent = dave.encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"d", T0).unwrap();
    pin!(pins, ReceiveError, receive(bob_device, &sent.envelopes[0].bytes, None),
        ReceiveError::NoList(AccountId(3)) => Action::FetchList(AccountId(3)));
    let bundle = server.bundle(bob_address);
    let sent =
        carol.devices[1].encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"c", T0).unwrap();
    let from_companion = envelope_for(&sent, bob_address).unwrap();
    let mut late = copy(&bob.devices[0]);
    pin!(pins, ReceiveError,
        late.receive(&from_companion, None, T0.plus_secs(15 * DAY_SECS)).map(|_| ()).unwrap_err(),
        ReceiveError::StaleList { announced: None, .. } => Action::FetchList(AccountId(1)));

    // Inner plaintexts the API never sends, sealed on Carol's session with Bob.
    // Announced version, digest and a message id.
    let header = [&version.to_be_bytes()[..], &digest, &[0x2a; 16]].concat();
    let mut seal_rng = support::rng(7501);
    let mut seal = |device: &mut Device, to, kind, inner: &[u8]| {
        test_support::seal_inner(device, &mut seal_rng, to, kind, inner, &[]).unwrap()
    };
    let lie = [&version.to_be_bytes()[..], &[7; 32], &[0x2b; 16], &[1], b"lie"].concat();
    let wire = seal(&mut carol.devices[0], bob_address, MessageKind::Direct, &lie);
    pin!(pins, ReceiveError, receive(&mut bob.devices[0], &wire, None),
        ReceiveError::Equivocation { version: 2, .. } => Action::AskUser);
    let big = vec![5; INLINE_THRESHOLD + 1];
    let sent = carol.devices[0].encrypt_fanout(&mut rng, &[AccountId(2)], &[], &big, T0).unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let body = sent.body.unwrap();
    pin!(pins, ReceiveError, receive(&mut bob.devices[0], &wire, None),
        ReceiveError::BodyMissing => Action::RetryLater);
    pin!(pins, ReceiveError,
        receive(&mut bob.devices[0], &wire, Some(&edited(&body, 40, body[40] ^ 1))),
        ReceiveError::BodyDigestMismatch => Action::Drop);
    let reference = |key: &[u8; 32], body: &[u8]| {
        let digest: [u8; 32] = Sha256::digest(body).into();
        [&header[..], &[2], key, &digest].concat()
    };
    let other_key = test_support::seal_fanout_body(&[2; 32], &big);
    let wire = seal(
        &mut carol.devices[0],
        bob_address,
        MessageKind::Direct,
        &reference(&[1; 32], &other_key),
    );
    pin!(pins, ReceiveError, receive(&mut bob.devices[0], &wire, Some(&other_key)),
        ReceiveError::BodyKeyCommitment => Action::Drop);
    let mut tampered = test_support::seal_fanout_body(&[1; 32], &big);
    tampered[40] ^= 1;
    let wire = seal(
        &mut carol.devices[0],
        bob_address,
        MessageKind::Direct,
        &reference(&[1; 32], &tampered),
    );
    pin!(pins, ReceiveError, receive(&mut bob.devices[0], &wire, Some(&tampered)),
        ReceiveError::BodyAuthentication => Action::Drop);

    // Carol's primary and her companion, linked at T0.
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    let history = carol.devices[0]
        .encrypt_history(&mut rng, companion, &descriptor, &[server.bundle(companion)], T0)
        .unwrap();
    let mut late = copy(&carol.devices[1]);
    let closed = T0.plus_secs(HISTORY_WINDOW_SECS + 1);
    pin!(pins, ReceiveError, late.receive(&history.bytes, None, closed).map(|_| ()).unwrap_err(),
        ReceiveError::HistoryWindowClosed => Action::Drop);
    let garbage = [&header[..], &[1, 2, 3]].concat();
    let wire = seal(&mut carol.devices[0], companion, MessageKind::History, &garbage);
    pin!(pins, ReceiveError, receive(&mut carol.devices[1], &wire, None),
        ReceiveError::Descriptor(_) => Action::Drop);
    let unsorted =
        [&header[..], &[2], &2u64.to_be_bytes(), &1u64.to_be_bytes(), &[1], b"x"].concat();
    let wire = seal(&mut carol.devices[0], companion, MessageKind::OwnCopy, &unsorted);
    let error = pin!(pins, ReceiveError, receive(&mut carol.devices[1], &wire, None),
        ReceiveError::Content(_) => Action::Drop);
    let ReceiveError::Content(decode) = error else { panic!("{error:?}") };
    pin!(pins, DecodeError, decode, DecodeError::NotStrictlyIncreasing => Action::Drop);
    // `AlreadyReceived`, `Store`: `store_errors`.
}

fn link_errors(pins: &mut Pins) {
    let mut rng = rng(7600);
    let mut primary = Device::new(&mut rng, addr(1, 0), T0);
    let mut phone = Device::new(&mut rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(&mut rng, &mut phone, T0);
    let text = offer.qr_text().to_string();
    let approve = |primary: &mut Device, text: &str, now: Timestamp| {
        let before = snapshot(primary);
        let error = QrLinkApproval::approve(primary, text, now).map(|_| ()).unwrap_err();
        if now == T0 {
            unchanged(primary, &before, "refused approval");
        }
        error
    };
    pin!(pins, LinkError, approve(&mut primary, "hello", T0), LinkError::BadPrefix => Action::Drop);
    pin!(pins, LinkError, approve(&mut primary, &format!("{QR_PREFIX}a!"), T0),
        LinkError::BadEncoding => Action::Drop);
    pin!(pins, LinkError, approve(&mut primary, &format!("{QR_PREFIX}AA"), T0),
        LinkError::Decode(_) => Action::Drop);
    let at = QR_PREFIX.len() + 10;
    let swapped = if &text[at..=at] == "A" { "B" } else { "A" };
    let misread = format!("{}{swapped}{}", &text[..at], &text[at + 1..]);
    pin!(pins, LinkError, approve(&mut primary, &misread, T0),
        LinkError::BadChecksum => Action::Drop);
    let late = T0.plus_secs(QR_OFFER_LIFETIME_SECS + 1);
    pin!(pins, LinkError, approve(&mut copy(&primary), &text, late),
        LinkError::Expired => Action::Drop);
    let (mut approval, message) = QrLinkApproval::approve(&mut primary, &text, T0).unwrap();
    pin!(pins, LinkError, approve(&mut primary, &text, T0), LinkError::OfferReused => Action::Drop);
    let mut other = Device::new(&mut rng, addr(1, 99), T0);
    let accept = |offer: &mut QrLinkOffer, device: &mut Device, message: &[u8]| {
        offer.accept_approval(device, message, T0).unwrap_err()
    };
    pin!(pins, LinkError, accept(&mut offer, &mut other, &message),
        LinkError::WrongAttempt => Action::Drop);
    pin!(pins, LinkError, accept(&mut offer, &mut phone, &edited(&message, 20, message[20] ^ 1)),
        LinkError::MacMismatch => Action::Drop);
    let confirmation = offer.accept_approval(&mut phone, &message, T0).unwrap();
    pin!(pins, LinkError, accept(&mut offer, &mut phone, &message),
        LinkError::NotActive => Action::Drop);
    // Whoever saw the QR code holds the link secret: a confirmation MAC'ed under it that
    // countersigns another timestamp (at 36..44) than the one approved.
    let forged =
        remac(&confirmation, &link_secret(&text), b"multidevice/v1/mac/link-confirmation", 43);
    pin!(pins, LinkError, approval.finish(&mut primary, &forged, T0).unwrap_err(),
        LinkError::ConfirmationMismatch => Action::Drop);
    approval.finish(&mut primary, &confirmation, T0).unwrap();
    pin!(pins, LinkError, render_pixels(&text, 1 << 20).unwrap_err(),
        LinkError::ImageTooLarge => Action::Drop);
    let mut full = Device::new(&mut rng, addr(5, 0), T0);
    for _ in 0..4 {
        full.approve_companion(Device::new(&mut rng, addr(5, 99), T0).public_identity(), T0)
            .unwrap();
    }
    let mut fifth = Device::new(&mut rng, addr(5, 99), T0);
    let offer = QrLinkOffer::new(&mut rng, &mut fifth, T0);
    pin!(pins, LinkError, approve(&mut full, &offer.qr_text(), T0),
        LinkError::DeviceList(DeviceListError::CompanionLimit { .. }) => Action::Drop);

    // Pairing codes.
    let mut primary = Device::new(&mut rng, addr(6, 0), T0);
    let (_, mut attempt, hello_1, code) = hello(&mut rng);
    let wrong =
        PairingCode::parse(if code.to_string() == "0000-0000" { "1111-1111" } else { "0000-0000" })
            .unwrap();
    let (_, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello_1, wrong, T0).unwrap();
    pin!(pins, LinkError, attempt.handle_response(&response, T0).unwrap_err(),
        LinkError::ConfirmationFailed => Action::AskUser);
    let (_, _, hello_2, code) = hello(&mut rng);
    let mut zero_share = hello_2.clone();
    zero_share[18..50].fill(0);
    let again = PairingCode::parse(&code.to_string()).unwrap();
    pin!(pins, LinkError,
        PrimaryPairing::respond(&mut rng, &mut primary, &zero_share, code, T0).unwrap_err(),
        LinkError::InvalidShare => Action::Drop);
    PrimaryPairing::respond(&mut rng, &mut primary, &hello_2, again, T0).unwrap();
    let (_, _, hello_3, _) = hello(&mut rng);
    let (_, _, _, used) = hello(&mut rng);
    let used_again = PairingCode::parse(&used.to_string()).unwrap();
    PrimaryPairing::respond(&mut rng, &mut primary, &hello_3, used, T0).unwrap();
    pin!(pins, LinkError,
        PrimaryPairing::respond(&mut rng, &mut primary, &hello_3, used_again, T0).unwrap_err(),
        LinkError::CodeAlreadyUsed => Action::AskUser);
    let (mut companion, _, hello_4, code) = hello(&mut rng);
    pin!(pins, LinkError,
        PrimaryPairing::respond(&mut rng, &mut companion, &hello_4, code, T0).unwrap_err(),
        LinkError::NotPrimary => Action::Drop);
    // Three codes answered so far (the wrong one, and two more); fill up to the limit.
    for _ in 0..MAX_ANSWERED_PAIRING_CODES - 3 {
        let (_, _, hello, code) = hello(&mut rng);
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, T0).unwrap();
    }
    let (_, _, hello_5, code) = hello(&mut rng);
    pin!(pins, LinkError,
        PrimaryPairing::respond(&mut rng, &mut primary, &hello_5, code, T0).unwrap_err(),
        LinkError::TooManyPairingAttempts => Action::RetryLater);
    // One primary answers the hello, another approves: the approval names an account identity
    // the PAKE did not authenticate.
    let mut first = Device::new(&mut rng, addr(7, 0), T0);
    let mut second = Device::new(&mut rng, addr(7, 0), T0);
    let (mut tablet, mut attempt, hello_6, code) = hello(&mut rng);
    let (mut pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut first, &hello_6, code, T0).unwrap();
    let confirm = attempt.handle_response(&response, T0).unwrap();
    let approval = pairing.handle_confirm(&mut second, &confirm, T0).unwrap();
    pin!(pins, LinkError, attempt.accept_approval(&mut tablet, &approval, T0).unwrap_err(),
        LinkError::UnexpectedAccountIdentity => Action::Drop);
    // Constructed: no linking step returns a bare key error (signature checks run inside
    // `countersign_approval` and `add_companion` and surface as `LinkError::DeviceList`), and
    // linking runs on a `Device`, never on a store.
    pin!(pins, LinkError, LinkError::Key(KeyError::BadSignature(SignatureKind::AccountSignature)),
        LinkError::Key(_) => Action::Drop);
    pin!(pins, LinkError, LinkError::Store(StoreError::Busy),
        LinkError::Store(StoreError::Busy) => Action::RetryLater);
    pin!(pins, LinkError, LinkError::Store(StoreError::WrongKey),
        LinkError::Store(_) => Action::AskUser);
}

/// The 32-byte link secret inside a QR text's offer (`0x01 0x40 || reference || secret ...`).
fn link_secret(text: &str) -> Vec<u8> {
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bytes, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.strip_prefix(QR_PREFIX).unwrap().bytes() {
        let value = BASE32.iter().position(|&b| b == c).unwrap();
        buffer = (buffer << 5) | u32::try_from(value).unwrap();
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push(u8::try_from((buffer >> bits) & 0xff).unwrap());
            buffer &= (1 << bits) - 1;
        }
    }
    bytes[18..50].to_vec()
}

/// `message` (body || MAC) with the body byte at `at` flipped and the MAC recomputed under
/// `secret`: `HMAC(secret, label || 0x00 || body)`.
fn remac(message: &[u8], secret: &[u8], label: &[u8], at: usize) -> Vec<u8> {
    let mut body = message[..message.len() - 32].to_vec();
    body[at] ^= 1;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(label);
    mac.update(&[0]);
    mac.update(&body);
    body.extend_from_slice(&mac.finalize().into_bytes());
    body
}

fn history_errors(pins: &mut Pins) {
    let (mut rng, mut server, mut carol, bob) = fixture(7700);
    let companion = carol.devices[1].address();
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    let mut send = |device: &mut Device, to, bundles: &[PrekeyBundle], now: Timestamp| {
        let before = snapshot(device);
        let error = device.encrypt_history(&mut rng, to, &descriptor, bundles, now).unwrap_err();
        if now == T0 {
            unchanged(device, &before, "refused history");
        }
        error
    };
    let mut zero = server.bundle(companion);
    zero.one_time_prekey.as_mut().unwrap().public = [0; 32];
    pin!(pins, HistoryError, send(&mut carol.devices[0], companion, &[zero], T0),
        HistoryError::Session(SessionError::Key(KeyError::NonContributoryKey)) => Action::Drop);
    pin!(pins, HistoryError, send(&mut carol.devices[0], companion, &[], T0),
        HistoryError::NoSession(_, FanoutSkip::MissingBundle) => Action::Drop);
    let primary = carol.devices[0].address();
    pin!(pins, HistoryError, send(&mut carol.devices[1], primary, &[], T0),
        HistoryError::NotPrimary => Action::Drop);
    pin!(pins, HistoryError, send(&mut carol.devices[0], bob.devices[0].address(), &[], T0),
        HistoryError::NotOwnCompanion(_) => Action::Drop);
    let bundle = server.bundle(companion);
    let closed = T0.plus_secs(HISTORY_WINDOW_SECS + 1);
    pin!(pins, HistoryError, send(&mut copy(&carol.devices[0]), companion, &[bundle], closed),
        HistoryError::NotNewlyLinked(_) => Action::Drop);
    let media = MediaType::new(HISTORY_MEDIA_TYPE).unwrap();
    let mut import = |plaintext: &[u8], flip: Option<usize>| {
        let (mut blob, descriptor) = encrypt_blob(&mut rng, plaintext, media.clone()).unwrap();
        if let Some(at) = flip {
            blob[at] ^= 1;
        }
        import_history(descriptor, Cursor::new(blob), |_| {}).unwrap_err()
    };
    pin!(pins, HistoryError, import(b"\0\0\0\x01x", Some(20)),
        HistoryError::Blob(BlobError::DigestMismatch) => Action::Drop);
    let too_long = u32::try_from(MAX_HISTORY_RECORD + 1).unwrap().to_be_bytes();
    pin!(pins, HistoryError, import(&too_long, None),
        HistoryError::RecordTooLarge { .. } => Action::Drop);
    pin!(pins, HistoryError, import(&[0, 0, 0, 5, 1], None),
        HistoryError::TruncatedRecord => Action::Drop);
    // `Store`: `store_errors`.
}

/// A memory store that fails every transaction with `fault` while one is set.
#[derive(Clone, Default)]
struct Faulty {
    rows: MemoryStore,
    fault: Arc<Mutex<Option<StoreError>>>,
}

impl Faulty {
    fn fail_with(&self, fault: Option<StoreError>) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Store for Faulty {
    fn transaction(&mut self, mode: Mode) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let fault = *self.fault.lock().unwrap();
        match fault {
            Some(fault) => Err(fault),
            None => self.rows.transaction(mode),
        }
    }
}

fn store_errors(pins: &mut Pins) {
    let (mut rng, mut server, mut carol, mut bob) = fixture(7800);
    let key = StoreKey::from_bytes(&[7; 32]);
    let bob_address = bob.devices[0].address();
    let companion = carol.devices[1].address();
    let mut stored_bob =
        StoredDevice::import(MemoryStore::new(), &key, &mut rng, &bob.devices[0].to_bytes())
            .unwrap();
    let sent = carol.devices[0]
        .encrypt_fanout(&mut rng, &[AccountId(2)], &[server.bundle(bob_address)], b"once", T0)
        .unwrap();
    let wire = envelope_for(&sent, bob_address).unwrap();
    let inbound = stored_bob.receive(&wire, None, T0).unwrap();
    stored_bob.acknowledge(inbound.id).unwrap();
    pin!(pins, ReceiveError, stored_bob.receive(&wire, None, T0).unwrap_err(),
        ReceiveError::AlreadyReceived => Action::Drop);

    // A group message whose sender key has not arrived: kept and retried.
    let group = carol.devices[0].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send = carol.devices[0].encrypt_group(&mut rng, group, &bundles, b"g", T0).unwrap();
    pin!(pins, ReceiveError, bob.devices[0].receive(&send.message, None, T0).unwrap_err(),
        ReceiveError::NoSenderKey { .. } => Action::RetryLater);

    // Every call of a stored device reports a failed store as `Store`, with its action.
    let faulty = Faulty::default();
    let mut stored =
        StoredDevice::import(faulty.clone(), &key, &mut rng, &carol.devices[0].to_bytes()).unwrap();
    let descriptor = build_history(&mut rng, [b"chat"], Vec::new()).unwrap();
    for (fault, action) in [
        (StoreError::Injected, Action::RetryLater),
        (StoreError::Corrupt(Table::Session), Action::AskUser),
    ] {
        faulty.fail_with(Some(fault));
        pin!(pins, StoreError, stored.clock().unwrap_err(), _ => action);
        pin!(pins, SessionError, stored.set_max_forward_jump(10).unwrap_err(),
            SessionError::Store(_) => action);
        pin!(pins, DeviceListError, stored.refresh_device_list(T0).unwrap_err(),
            DeviceListError::Store(_) => action);
        pin!(pins, FanoutError,
            stored.encrypt_fanout(&mut rng, &[AccountId(2)], &[], b"x", T0).unwrap_err(),
            FanoutError::Store(_) => action);
        pin!(pins, ReceiveError, stored.receive(&wire, None, T0).unwrap_err(),
            ReceiveError::Store(_) => action);
        pin!(pins, HistoryError,
            stored.encrypt_history(&mut rng, companion, &descriptor, &[], T0).unwrap_err(),
            HistoryError::Store(_) => action);
    }
    faulty.fail_with(None);
    stored.clock().unwrap();

    let memory = MemoryStore::new();
    pin!(pins, StoreError, StoredDevice::open(memory.clone(), &key, &mut rng).unwrap_err(),
        StoreError::Missing(Table::Meta) => Action::AskUser);
    StoredDevice::create(memory.clone(), &key, &mut rng, addr(9, 0), T0).unwrap();
    pin!(pins, StoreError,
        StoredDevice::create(memory.clone(), &key, &mut rng, addr(9, 0), T0).unwrap_err(),
        StoreError::AlreadyExists => Action::Drop);
    pin!(pins, StoreError,
        StoredDevice::open(memory.clone(), &StoreKey::from_bytes(&[8; 32]), &mut rng).unwrap_err(),
        StoreError::WrongKey => Action::AskUser);
    let (table, row_key, mut value) = memory
        .rows()
        .into_iter()
        .find(|(table, row_key, _)| *table == Table::Meta && row_key.len() == 32)
        .unwrap();
    let last = value.len() - 1;
    value[last] ^= 1;
    memory.set_row(table, &row_key, Some(&value));
    let error = match StoredDevice::open(memory.clone(), &key, &mut rng) {
        Err(error) => error,
        Ok(mut device) => device.clock().unwrap_err(),
    };
    pin!(pins, StoreError, error, StoreError::Corrupt(Table::Meta) => Action::AskUser);
    pin!(pins, StoreError,
        StoredDevice::import(MemoryStore::new(), &key, &mut rng, b"junk").unwrap_err(),
        StoreError::InvalidImport(_) => Action::Drop);
    let mut store = MemoryStore::new();
    let mut txn = store.transaction(Mode::Read).unwrap();
    pin!(pins, StoreError, txn.put(Table::Meta, b"k", b"v").unwrap_err(),
        StoreError::ReadOnly => Action::Drop);
    drop(txn);
    // Constructed: refusing to overwrite a record that was not read guards against a bug in
    // the crate; no input reaches it.
    pin!(pins, StoreError, StoreError::Conflict(Table::Session),
        StoreError::Conflict(_) => Action::Drop);

    // SQLite: a writer holding the lock, a file that is no database, a newer schema.
    let dir = std::env::temp_dir().join(format!("multidevice-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("busy.db");
    let options = SqliteOptions::default().with_busy_timeout(Duration::from_millis(10));
    let sqlite = SqliteStore::open(&path, &options).unwrap();
    let mut device = StoredDevice::create(sqlite, &key, &mut rng, addr(9, 0), T0).unwrap();
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    let error = device.set_max_forward_jump(10).unwrap_err();
    let SessionError::Store(store_error) = error else {
        panic!("expected a store error, got {error:?}")
    };
    pin!(pins, StoreError, store_error, StoreError::Busy => Action::RetryLater);
    writer.execute_batch("ROLLBACK").unwrap();
    drop(device);
    let garbage = dir.join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    pin!(pins, StoreError, SqliteStore::open(&garbage, &SqliteOptions::default()).unwrap_err(),
        StoreError::Backend { .. } => Action::RetryLater);
    let newer = dir.join("newer.db");
    drop(SqliteStore::open(&newer, &SqliteOptions::default()).unwrap());
    let db = rusqlite::Connection::open(&newer).unwrap();
    db.execute("UPDATE schema_version SET version = 99", []).unwrap();
    drop(db);
    pin!(pins, StoreError, SqliteStore::open(&newer, &SqliteOptions::default()).unwrap_err(),
        StoreError::SchemaTooNew { found: 99 } => Action::AskUser);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn blob_errors(pins: &mut Pins) {
    let mut rng = rng(7900);
    let media = MediaType::new("application/octet-stream").unwrap();
    let (blob, descriptor) = encrypt_blob(&mut rng, &[7; 100], media.clone()).unwrap();
    let stream = |descriptor: &BlobDescriptor, bytes: &[u8]| {
        decrypt_stream(descriptor, bytes, std::io::sink()).unwrap_err()
    };
    // Header: version (2), chunk size (u32), nonce prefix (7), key commitment (32); the first
    // chunk from byte 44.
    pin!(pins, BlobError, stream(&descriptor, &blob[..blob.len() - 1]),
        BlobError::Truncated => Action::Drop);
    pin!(pins, BlobError, stream(&descriptor, &[&blob[..], &[0]].concat()),
        BlobError::TrailingData => Action::Drop);
    pin!(pins, BlobError, stream(&descriptor, &edited(&blob, 12, blob[12] ^ 1)),
        BlobError::KeyCommitment => Action::Drop);
    pin!(pins, BlobError, stream(&descriptor, &edited(&blob, 44, blob[44] ^ 1)),
        BlobError::ChunkAuthentication { index: 0 } => Action::Drop);
    pin!(pins, BlobError, stream(&descriptor, &edited(&blob, 0, 1)),
        BlobError::UnsupportedVersion(1) => Action::Drop);
    let mut small = blob.clone();
    small[1..5].copy_from_slice(&1024u32.to_be_bytes());
    pin!(pins, BlobError, stream(&descriptor, &small),
        BlobError::UnsupportedChunkSize(1024) => Action::Drop);
    pin!(pins, BlobError, decrypt_blob(&descriptor, &edited(&blob, 12, blob[12] ^ 1)).unwrap_err(),
        BlobError::DigestMismatch => Action::Drop);
    pin!(pins, BlobError, decrypt_stream(&descriptor, Failing, std::io::sink()).unwrap_err(),
        BlobError::Io(std::io::ErrorKind::ConnectionReset) => Action::RetryLater);
    // Descriptor: version, key (1..33), plaintext length (33..41), digest, media type.
    let bytes = descriptor.to_bytes().to_vec();
    let parse = |bytes: &[u8]| BlobDescriptor::try_from(bytes).unwrap_err();
    let longer = BlobDescriptor::try_from(&edited(&bytes, 40, 101)[..]).unwrap();
    pin!(pins, BlobError, decrypt_blob(&longer, &blob).unwrap_err(),
        BlobError::LengthMismatch { expected: 101, got: 100 } => Action::Drop);
    pin!(pins, BlobError, parse(&bytes[..10]), BlobError::DescriptorTruncated => Action::Drop);
    pin!(pins, BlobError, parse(&[&bytes[..], &[0]].concat()),
        BlobError::DescriptorTrailingBytes => Action::Drop);
    pin!(pins, BlobError, parse(&edited(&bytes, 0, 9)),
        BlobError::UnsupportedDescriptorVersion(9) => Action::Drop);
    let last = bytes.len() - 1;
    pin!(pins, BlobError, parse(&edited(&bytes, last, b'M')),
        BlobError::InvalidMediaType(_) => Action::Drop);
    let zero_key = BlobKey::from_bytes(&[0; 32]);
    pin!(pins, BlobError,
        BlobDescriptor::new(zero_key, u64::MAX, [0; 32], media.clone()).unwrap_err(),
        BlobError::TooManyChunks => Action::Drop);
    // A key holder's non-canonical framing: a full chunk, then an empty final one.
    let key = [9u8; 32];
    let mut okm = [0u8; 64];
    hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), &key)
        .expand(b"multidevice/v1/kdf/blob", &mut okm)
        .unwrap();
    let header = [&[2u8][..], &65_536u32.to_be_bytes(), &[3; 7], &okm[32..]].concat();
    let cipher = Aes256Gcm::new_from_slice(&okm[..32]).unwrap();
    let seal = |index: u32, last: bool, plaintext: &[u8]| {
        let nonce: [u8; 12] =
            [&[3u8; 7][..], &index.to_be_bytes(), &[u8::from(last)]].concat().try_into().unwrap();
        cipher.encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: &header }).unwrap()
    };
    let crafted = [header.clone(), seal(0, false, &[0; 65_536]), seal(1, true, &[])].concat();
    let digest: [u8; 32] = Sha256::digest(&crafted).into();
    let framing = BlobDescriptor::new(BlobKey::from_bytes(&key), 65_536, digest, media).unwrap();
    pin!(pins, BlobError, decrypt_blob(&framing, &crafted).unwrap_err(),
        BlobError::EmptyFinalChunk { index: 1 } => Action::Drop);
    // Constructed: AES-GCM refuses nothing for chunks of at most 64 KiB, and the hashing thread
    // fails only if it panics or is lost, which no input causes.
    pin!(pins, BlobError, BlobError::CipherFailure, BlobError::CipherFailure => Action::Drop);
    pin!(pins, BlobError, BlobError::HashWorker, BlobError::HashWorker => Action::RetryLater);

    let parse = |text: &str| MediaType::new(text).unwrap_err();
    pin!(pins, MediaTypeError, parse("a/"), MediaTypeError::TooShort => Action::Drop);
    pin!(pins, MediaTypeError, parse(&"a".repeat(65)),
        MediaTypeError::TooLong { len: 65 } => Action::Drop);
    pin!(pins, MediaTypeError, parse("abc"), MediaTypeError::MissingSlash => Action::Drop);
    pin!(pins, MediaTypeError, parse("ab/"), MediaTypeError::EmptyPart => Action::Drop);
    pin!(pins, MediaTypeError, parse("Ab/c"),
        MediaTypeError::InvalidByte { position: 0 } => Action::Drop);
}

/// A reader whose every read fails.
struct Failing;

impl std::io::Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::ConnectionReset.into())
    }
}

/// `RetryError`: provoked where the API reaches it. Bob answers Carol's devices, which lost
/// their sessions with him; Carol's companion answers Bob.
fn retry_errors(pins: &mut Pins) {
    let (mut rng, mut server, mut carol, mut bob) = fixture(7950);
    let bob_address = bob.devices[0].address();
    let (carol0, carol1) = (carol.devices[0].address(), carol.devices[1].address());
    let bundles = server.bundles(&[AccountId(1)]);
    let hello = bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &bundles, b"hi", T0);
    let hello = hello.unwrap();
    for device in &mut carol.devices {
        read(device, &envelope_for(&hello, device.address()).unwrap(), T0).unwrap();
    }
    let bundle = server.bundle(bob_address);
    let reply =
        carol.devices[1].encrypt_fanout(&mut rng, &[AccountId(2)], &[bundle], b"back", T0).unwrap();
    read(&mut bob.devices[0], &envelope_for(&reply, bob_address).unwrap(), T0).unwrap();
    // Each side loses its sessions; the next messages fail and ask for retries.
    for device in &mut carol.devices {
        device.delete_sessions(bob_address);
    }
    let lost = bob.devices[0].encrypt_fanout(&mut rng, &[AccountId(1)], &[], b"m", T0).unwrap();
    let asks = |device: &mut Device, bytes: &[u8]| {
        let failure = device.receive_or_retry(bytes, None, T0).unwrap_err();
        let error = failure.error;
        *failure.retry.unwrap_or_else(|| panic!("{error:?}"))
    };
    let verify = |device: &mut Device, request: &multidevice::RetryRequest| match device
        .receive(&request.to_bytes(), None, T0)
        .unwrap()
    {
        Received::RetryRequest(verified) => verified,
        other => panic!("expected a retry request, got {other:?}"),
    };
    let to_carol0 = envelope_for(&lost, carol0).unwrap();
    let first = asks(&mut carol.devices[0], &to_carol0);
    let to_carol1 = envelope_for(&lost, carol1).unwrap();
    let from_companion = asks(&mut carol.devices[1], &to_carol1);
    // Carol's companion, asked by Bob, answers only while it is signed in.
    // (A group message whose sender key Bob never got.)
    let group = carol.devices[1].create_group(&mut rng, &[AccountId(2)]).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let send = carol.devices[1].encrypt_group(&mut rng, group, &bundles, b"c", T0).unwrap();
    let request = asks(&mut bob.devices[0], &send.message);
    let verified = verify(&mut carol.devices[1], &request);
    let late = T0.plus_secs(PRIMARY_INACTIVITY_SECS + 1);
    pin!(pins, RetryError, carol.devices[1].answer_retry(&mut rng, &verified, late).unwrap_err(),
        RetryError::Session(SessionError::SignedOut) => Action::RetryLater);

    let bob0 = &mut bob.devices[0];
    let verified = verify(bob0, &first);
    bob0.answer_retry(&mut rng, &verified, T0).unwrap();
    pin!(pins, RetryError, bob0.answer_retry(&mut rng, &verified, T0).unwrap_err(),
        RetryError::Replayed => Action::Drop);
    let mut last = verified;
    for _ in 1..MAX_RETRIES {
        last = verify(bob0, &asks(&mut carol.devices[0], &to_carol0));
        bob0.answer_retry(&mut rng, &last, T0).unwrap();
    }
    pin!(pins, RetryError, bob0.answer_retry(&mut rng, &last, T0).unwrap_err(),
        RetryError::GaveUp { .. } => Action::AskUser);
    let companion = verify(bob0, &from_companion);
    let limits = SentCacheLimits { max_entries: 0, ..SentCacheLimits::default() };
    bob0.set_sent_cache_limits(limits);
    pin!(pins, RetryError, bob0.answer_retry(&mut rng, &companion, T0).unwrap_err(),
        RetryError::NotCached => Action::Drop);
    bob0.set_sent_cache_limits(SentCacheLimits::default());
    let removal = carol.devices[0].remove_companion(carol1.device, T0).unwrap();
    bob.devices[0].process_device_list(&removal.to_bytes(), T0).unwrap();
    let error = pin!(pins, RetryError,
        bob.devices[0].answer_retry(&mut rng, &companion, T0).unwrap_err(),
        RetryError::NotAuthorized(_) => Action::FetchList(AccountId(1)));
    assert_eq!(error, RetryError::NotAuthorized(carol1));

    // A stored device whose store fails.
    let key = StoreKey::from_bytes(&[7; 32]);
    let faulty = Faulty::default();
    let mut stored =
        StoredDevice::import(faulty.clone(), &key, &mut rng, &bob.devices[0].to_bytes()).unwrap();
    faulty.fail_with(Some(StoreError::Injected));
    pin!(pins, RetryError, stored.answer_retry(&mut rng, &companion, T0).unwrap_err(),
        RetryError::Store(StoreError::Injected) => Action::RetryLater);
}

/// `GroupError`: provoked where the API reaches it.
fn group_errors(pins: &mut Pins) {
    let mut rng = rng(7301);
    let mut alice = Device::new(&mut rng, addr(1, 0), T0);
    let unknown = multidevice::GroupId::random(&mut rng);
    pin!(pins, GroupError, alice.encrypt_group(&mut rng, unknown, &[], b"x", T0).unwrap_err(),
        GroupError::UnknownGroup(_) => Action::Drop);
    let many: Vec<AccountId> = (2..2 + MAX_GROUP_MEMBERS as u64 + 1).map(AccountId).collect();
    pin!(pins, GroupError, alice.create_group(&mut rng, &many).unwrap_err(),
        GroupError::TooManyMembers { .. } => Action::Drop);
    let group = alice.create_group(&mut rng, &many[..MAX_GROUP_MEMBERS]).unwrap();
    let large = vec![0u8; MAX_MESSAGE_PLAINTEXT + 1];
    pin!(pins, GroupError, alice.encrypt_group(&mut rng, group, &[], &large, T0).unwrap_err(),
        GroupError::PayloadTooLarge(_) => Action::Drop);
    let mut companion = Device::new(&mut rng, addr(1, 5), T0);
    let group = companion.create_group(&mut rng, &[]).unwrap();
    pin!(pins, GroupError, companion.encrypt_group(&mut rng, group, &[], b"x", T0).unwrap_err(),
        GroupError::Session(SessionError::NotLinked) => Action::RetryLater);
    // 2^32 messages under one sender key: constructed.
    pin!(pins, GroupError, GroupError::KeyExhausted, GroupError::KeyExhausted => Action::Drop);
    pin!(pins, GroupError, GroupError::Store(StoreError::Busy),
        GroupError::Store(StoreError::Busy) => Action::RetryLater);
}

/// Every variant of every public error enum, provoked through the API where it can be (and
/// constructed, with the reason, where it cannot), has the documented `action()`. The variants
/// pinned are checked against the enums as declared in src/error.rs and src/blob.rs, so a new
/// variant fails this test until its action is pinned.
#[test]
fn every_error_says_what_to_do() {
    let mut pins = Pins::default();
    decode_and_key_errors(&mut pins);
    session_errors(&mut pins);
    device_list_errors(&mut pins);
    fanout_errors(&mut pins);
    receive_errors(&mut pins);
    link_errors(&mut pins);
    history_errors(&mut pins);
    store_errors(&mut pins);
    blob_errors(&mut pins);
    group_errors(&mut pins);
    retry_errors(&mut pins);
    let sources = [include_str!("../src/error.rs")];
    for name in [
        "DecodeError",
        "KeyError",
        "SessionError",
        "DeviceListError",
        "FanoutError",
        "ReceiveError",
        "LinkError",
        "HistoryError",
        "StoreError",
        "BlobError",
        "MediaTypeError",
        "GroupError",
        "RetryError",
    ] {
        let source = sources.iter().find(|s| s.contains(&format!("pub enum {name} {{"))).unwrap();
        let declared = declared_variants(source, name);
        let pinned = pins.0.remove(name).unwrap_or_default();
        assert_eq!(pinned, declared, "{name}: variants pinned vs declared");
    }
    assert!(pins.0.is_empty(), "pinned but not checked: {:?}", pins.0.keys());
}
