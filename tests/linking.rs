//! Linking companions by QR code and by pairing code, over a relay that may tamper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::consts::{MAX_COMPANIONS, PAIRING_CODE_LIFETIME_SECS, QR_OFFER_LIFETIME_SECS};
use multidevice::{
    AccountStatus, CompanionPairing, Device, DeviceListError, LinkError, PairingCode,
    PrimaryPairing, QR_PREFIX, QrLinkApproval, QrLinkOffer, Received, SignedDeviceList,
};
use rand::rngs::StdRng;
use support::*;

fn primary(rng: &mut StdRng) -> Device {
    let mut p = Device::new(rng, addr(1, 0), T0);
    p.refresh_device_list(T0).unwrap();
    p
}

fn companion(rng: &mut StdRng) -> Device {
    Device::new(rng, addr(1, 99), T0)
}

/// Runs the QR flow to the end and lets the companion process the new list.
fn link_by_qr(rng: &mut StdRng, primary: &mut Device, companion: &mut Device) -> SignedDeviceList {
    let mut offer = QrLinkOffer::new(rng, companion, T0);
    let (mut approval, message) = QrLinkApproval::approve(primary, &offer.qr_text(), T0).unwrap();
    let confirmation = offer.accept_approval(companion, &message, T0).unwrap();
    let list = approval.finish(primary, &confirmation, T0).unwrap();
    companion.process_device_list(&list.to_bytes(), T0).unwrap();
    list
}

#[test]
fn qr_flow_links_a_companion_that_then_works_with_the_primary_offline() {
    let mut rng = rng(1);
    let mut primary = primary(&mut rng);
    let mut phone = companion(&mut rng);
    let text = QrLinkOffer::new(&mut rng, &mut phone, T0).qr_text();
    assert!(text.starts_with(QR_PREFIX));
    let list = link_by_qr(&mut rng, &mut primary, &mut phone);
    assert_eq!(phone.account_status(T0), AccountStatus::Active);
    assert_eq!(list.verify().unwrap().devices().len(), 2);
    assert_eq!(phone.address().account, primary.account());
    // The primary goes offline; a peer reaches the companion directly.
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    peer.process_device_list(&list.to_bytes(), T0).unwrap();
    phone.process_device_list(&peer.refresh_device_list(T0).unwrap().to_bytes(), T0).unwrap();
    phone.generate_one_time_prekeys(&mut rng, 2).unwrap();
    let bundles = vec![phone.prekey_upload().bundle(Some(0))];
    let fanout = peer.encrypt_fanout(&mut rng, &[primary.account()], &bundles, b"hi", T0).unwrap();
    let envelope = fanout.envelopes.iter().find(|e| e.recipient == phone.address()).unwrap();
    let Received::Message(got) = phone.receive(&envelope.bytes, None, T0).unwrap() else {
        panic!("expected a message")
    };
    assert_eq!(got.payload.as_slice(), b"hi");
}

#[test]
fn pairing_code_flow_links_a_companion() {
    let mut rng = rng(2);
    let mut primary = primary(&mut rng);
    let mut tablet = companion(&mut rng);
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    let typed = PairingCode::parse(&attempt.code().to_string().to_lowercase()).unwrap();
    let (mut pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, typed, T0).unwrap();
    let confirm = attempt.handle_response(&response, T0).unwrap();
    let approval = pairing.handle_confirm(&mut primary, &confirm, T0).unwrap();
    let confirmation = attempt.accept_approval(&mut tablet, &approval, T0).unwrap();
    // Countersigned, but not linked until a list of the account names it.
    assert_eq!(tablet.account_status(T0), AccountStatus::NotLinked);
    let list = pairing.finish(&mut primary, &confirmation, T0).unwrap();
    tablet.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(tablet.account_status(T0), AccountStatus::Active);
}

#[test]
fn expired_offer_is_rejected_on_both_sides() {
    let mut rng = rng(3);
    let mut primary = primary(&mut rng);
    let mut phone = companion(&mut rng);
    let mut offer = QrLinkOffer::new(&mut rng, &mut phone, T0);
    let late = T0.plus_secs(QR_OFFER_LIFETIME_SECS + 1);
    // At the limit it still works (on a copy of the primary).
    let at_limit = T0.plus_secs(QR_OFFER_LIFETIME_SECS);
    let mut copy = Device::from_bytes(&primary.to_bytes()).unwrap();
    let (_approval, message) =
        QrLinkApproval::approve(&mut copy, &offer.qr_text(), at_limit).unwrap();
    // One second later it is refused, and nothing but the clock moves.
    tick(&mut primary, late);
    let before = snapshot(&primary);
    assert_eq!(
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), late).unwrap_err(),
        LinkError::Expired
    );
    assert_eq!(snapshot(&primary), before);
    // A clock wound back does not revive the offer.
    assert_eq!(
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap_err(),
        LinkError::Expired
    );
    // The companion refuses an approval arriving after expiry, even with its clock wound back.
    tick(&mut phone, late);
    let before = snapshot(&phone);
    assert_eq!(offer.accept_approval(&mut phone, &message, late).unwrap_err(), LinkError::Expired);
    assert_eq!(offer.accept_approval(&mut phone, &message, T0).unwrap_err(), LinkError::Expired);
    assert_eq!(snapshot(&phone), before);
    // Refreshing gives a new secret and reference.
    let old = offer.qr_text();
    offer.refresh(&mut rng, late);
    assert_ne!(*offer.qr_text(), *old);
}

#[test]
fn replayed_offer_and_second_approval_are_rejected() {
    let mut rng = rng(4);
    let mut primary = primary(&mut rng);
    let mut phone = companion(&mut rng);
    let mut offer = QrLinkOffer::new(&mut rng, &mut phone, T0);
    let text = offer.qr_text();
    let (mut approval, message) = QrLinkApproval::approve(&mut primary, &text, T0).unwrap();
    let before = snapshot(&primary);
    assert_eq!(
        QrLinkApproval::approve(&mut primary, &text, T0).unwrap_err(),
        LinkError::OfferReused
    );
    assert_eq!(snapshot(&primary), before);
    let confirmation = offer.accept_approval(&mut phone, &message, T0).unwrap();
    let before = snapshot(&phone);
    assert_eq!(offer.accept_approval(&mut phone, &message, T0).unwrap_err(), LinkError::NotActive);
    assert_eq!(snapshot(&phone), before);
    approval.finish(&mut primary, &confirmation, T0).unwrap();
    assert_eq!(approval.finish(&mut primary, &confirmation, T0).unwrap_err(), LinkError::NotActive);
}

#[test]
fn any_modified_character_of_the_qr_text_is_rejected() {
    let mut rng = rng(5);
    let mut primary = primary(&mut rng);
    let mut phone = companion(&mut rng);
    let text = QrLinkOffer::new(&mut rng, &mut phone, T0).qr_text().to_string();
    let before = snapshot(&primary);
    for i in 0..text.len() {
        let mut bytes = text.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let modified = String::from_utf8(bytes).unwrap();
        assert!(QrLinkApproval::approve(&mut primary, &modified, T0).is_err(), "char {i} accepted");
    }
    assert!(QrLinkApproval::approve(&mut primary, &text[..text.len() - 1], T0).is_err());
    assert!(QrLinkApproval::approve(&mut primary, &format!("{text}A"), T0).is_err());
    assert_eq!(snapshot(&primary), before);
}

#[test]
fn any_modified_byte_of_an_approval_or_confirmation_is_rejected() {
    let mut rng = rng(6);
    let mut primary = primary(&mut rng);
    let mut phone = companion(&mut rng);
    let mut offer = QrLinkOffer::new(&mut rng, &mut phone, T0);
    let (mut approval, message) =
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap();
    let before = snapshot(&phone);
    for i in 0..message.len() {
        let mut bad = message.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            offer.accept_approval(&mut phone, &bad, T0).unwrap_err(),
            LinkError::MacMismatch
        );
    }
    assert_eq!(snapshot(&phone), before);
    let confirmation = offer.accept_approval(&mut phone, &message, T0).unwrap();
    let before = snapshot(&primary);
    for i in 0..confirmation.len() {
        let mut bad = confirmation.clone();
        bad[i] ^= 0x80;
        assert_eq!(approval.finish(&mut primary, &bad, T0).unwrap_err(), LinkError::MacMismatch);
    }
    assert_eq!(snapshot(&primary), before);
    approval.finish(&mut primary, &confirmation, T0).unwrap();
}

#[test]
fn wrong_link_mac_and_substituted_keys_are_rejected() {
    let mut rng = rng(7);
    let mut primary = primary(&mut rng);
    let mut phone = companion(&mut rng);
    let mut offer = QrLinkOffer::new(&mut rng, &mut phone, T0);
    // The relay's own primary approves a different offer and forwards that approval: wrong MAC.
    let mut relay_primary = Device::new(&mut rng, addr(1, 0), T0);
    let relay_offer = QrLinkOffer::new(&mut rng, &mut phone, T0);
    let (_r, forged) =
        QrLinkApproval::approve(&mut relay_primary, &relay_offer.qr_text(), T0).unwrap();
    let before = snapshot(&phone);
    assert_eq!(offer.accept_approval(&mut phone, &forged, T0).unwrap_err(), LinkError::MacMismatch);
    assert_eq!(snapshot(&phone), before);
    // The relay substitutes its own companion identity in the confirmation: wrong MAC.
    let (mut approval, message) =
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap();
    let mut relay_companion = companion(&mut rng);
    let mut relay_side_offer = QrLinkOffer::new(&mut rng, &mut relay_companion, T0);
    let (_x, relay_message) =
        QrLinkApproval::approve(&mut relay_primary, &relay_side_offer.qr_text(), T0).unwrap();
    let relay_confirmation =
        relay_side_offer.accept_approval(&mut relay_companion, &relay_message, T0).unwrap();
    let before = snapshot(&primary);
    assert_eq!(
        approval.finish(&mut primary, &relay_confirmation, T0).unwrap_err(),
        LinkError::MacMismatch
    );
    assert_eq!(snapshot(&primary), before);
    let confirmation = offer.accept_approval(&mut phone, &message, T0).unwrap();
    approval.finish(&mut primary, &confirmation, T0).unwrap();
}

#[test]
fn wrong_pairing_code_aborts_the_attempt() {
    let mut rng = rng(8);
    let mut primary = primary(&mut rng);
    let mut tablet = companion(&mut rng);
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    let mut wrong = PairingCode::generate(&mut rng);
    while wrong == *attempt.code() {
        wrong = PairingCode::generate(&mut rng);
    }
    let (mut pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, wrong, T0).unwrap();
    assert_eq!(attempt.handle_response(&response, T0).unwrap_err(), LinkError::ConfirmationFailed);
    // The attempt is over: even the right response would not be accepted now.
    assert_eq!(attempt.handle_response(&response, T0).unwrap_err(), LinkError::NotActive);
    // The primary side aborts on a confirmation that does not verify.
    let before = snapshot(&primary);
    let fake_confirm = [&[1u8, 0x45][..], &hello[2..18], &[0u8; 32]].concat();
    assert_eq!(
        pairing.handle_confirm(&mut primary, &fake_confirm, T0).unwrap_err(),
        LinkError::ConfirmationFailed
    );
    assert_eq!(
        pairing.handle_confirm(&mut primary, &fake_confirm, T0).unwrap_err(),
        LinkError::NotActive
    );
    assert_eq!(snapshot(&primary), before);
}

#[test]
fn expired_pairing_code_is_refused() {
    let mut rng = rng(9);
    let mut primary = primary(&mut rng);
    let mut tablet = companion(&mut rng);
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    let code = PairingCode::parse(&attempt.code().to_string()).unwrap();
    let (_pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, T0).unwrap();
    let late = T0.plus_secs(PAIRING_CODE_LIFETIME_SECS + 1);
    assert_eq!(attempt.handle_response(&response, late).unwrap_err(), LinkError::Expired);
    assert_eq!(attempt.handle_response(&response, T0).unwrap_err(), LinkError::NotActive);
}

#[test]
fn reused_pairing_code_does_not_link_again() {
    let mut rng = rng(10);
    let mut primary = primary(&mut rng);
    let mut tablet = companion(&mut rng);
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    let code = PairingCode::parse(&attempt.code().to_string()).unwrap();
    let (mut pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, T0).unwrap();
    let confirm = attempt.handle_response(&response, T0).unwrap();
    let approval = pairing.handle_confirm(&mut primary, &confirm, T0).unwrap();
    let confirmation = attempt.accept_approval(&mut tablet, &approval, T0).unwrap();
    pairing.finish(&mut primary, &confirmation, T0).unwrap();
    // The relay replays the hello and the user types the code again: the primary answers no
    // second hello with a code, and the companion's attempt is finished.
    let again = PairingCode::parse(&attempt.code().to_string()).unwrap();
    let before = snapshot(&primary);
    let refused = PrimaryPairing::respond(&mut rng, &mut primary, &hello, again, T0).unwrap_err();
    assert_eq!(refused, LinkError::CodeAlreadyUsed);
    assert_eq!(refused.action(), multidevice::Action::AskUser);
    assert_eq!(snapshot(&primary), before);
    assert_eq!(attempt.handle_response(&response, T0).unwrap_err(), LinkError::NotActive);
    assert_eq!(
        attempt.accept_approval(&mut tablet, &approval, T0).unwrap_err(),
        LinkError::NotActive
    );
}

#[test]
fn man_in_the_middle_on_the_pake_is_detected() {
    let mut rng = rng(11);
    let mut primary = primary(&mut rng);
    let mut tablet = companion(&mut rng);
    let mut relay = companion(&mut rng);
    let mut relay_primary = self::primary(&mut rng);
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    // The relay answers the companion itself, guessing a code.
    let guess = PairingCode::generate(&mut rng);
    let (_relay_side, relay_response) =
        PrimaryPairing::respond(&mut rng, &mut relay_primary, &hello, guess, T0).unwrap();
    assert_eq!(
        attempt.handle_response(&relay_response, T0).unwrap_err(),
        LinkError::ConfirmationFailed
    );
    // The relay starts its own attempt towards the primary, which the user's code does not fit.
    let (mut relay_attempt, relay_hello) = CompanionPairing::start(&mut rng, &mut relay, T0);
    let typed = PairingCode::parse(&attempt.code().to_string()).unwrap();
    let (_p, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &relay_hello, typed, T0).unwrap();
    assert_eq!(
        relay_attempt.handle_response(&response, T0).unwrap_err(),
        LinkError::ConfirmationFailed
    );
    // Swapping the share inside a genuine response breaks the confirmation too.
    let (mut attempt2, hello2) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    let code2 = PairingCode::parse(&attempt2.code().to_string()).unwrap();
    let (_p2, mut response2) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello2, code2, T0).unwrap();
    response2[18..50].copy_from_slice(&relay_response[18..50]);
    assert!(attempt2.handle_response(&response2, T0).is_err());
}

#[test]
fn fifth_companion_is_refused_before_anything_is_signed() {
    let mut rng = rng(12);
    let mut primary = primary(&mut rng);
    for _ in 0..MAX_COMPANIONS {
        let mut c = companion(&mut rng);
        link_by_qr(&mut rng, &mut primary, &mut c);
    }
    let mut fifth = companion(&mut rng);
    let before = snapshot(&primary);
    let offer = QrLinkOffer::new(&mut rng, &mut fifth, T0);
    assert_eq!(
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap_err(),
        LinkError::DeviceList(DeviceListError::CompanionLimit { limit: MAX_COMPANIONS })
    );
    assert_eq!(snapshot(&primary), before);
}

#[test]
fn simultaneous_second_link_attempt() {
    let mut rng = rng(13);
    let mut primary = primary(&mut rng);
    let mut a = companion(&mut rng);
    let mut b = companion(&mut rng);
    let mut offer_a = QrLinkOffer::new(&mut rng, &mut a, T0);
    let mut offer_b = QrLinkOffer::new(&mut rng, &mut b, T0);
    let (mut approval_a, message_a) =
        QrLinkApproval::approve(&mut primary, &offer_a.qr_text(), T0).unwrap();
    let (mut approval_b, message_b) =
        QrLinkApproval::approve(&mut primary, &offer_b.qr_text(), T0).unwrap();
    // Crossed messages are refused (wrong secret), then each completes.
    assert_eq!(
        offer_a.accept_approval(&mut a, &message_b, T0).unwrap_err(),
        LinkError::MacMismatch
    );
    let confirmation_b = offer_b.accept_approval(&mut b, &message_b, T0).unwrap();
    let confirmation_a = offer_a.accept_approval(&mut a, &message_a, T0).unwrap();
    assert_eq!(
        approval_a.finish(&mut primary, &confirmation_b, T0).unwrap_err(),
        LinkError::MacMismatch
    );
    approval_b.finish(&mut primary, &confirmation_b, T0).unwrap();
    let list = approval_a.finish(&mut primary, &confirmation_a, T0).unwrap();
    let verified = list.verify().unwrap();
    assert!(verified.device(a.address()).is_some());
    assert!(verified.device(b.address()).is_some());
    assert_ne!(a.address(), b.address());
    a.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(a.account_status(T0), AccountStatus::Active);
    // A second primary approving an already linked companion's new offer cannot link it twice.
    let mut other_primary = Device::new(&mut rng, addr(5, 0), T0);
    let mut offer = QrLinkOffer::new(&mut rng, &mut a, T0);
    let (_o, message) = QrLinkApproval::approve(&mut other_primary, &offer.qr_text(), T0).unwrap();
    let error = offer.accept_approval(&mut a, &message, T0).unwrap_err();
    assert_eq!(error, LinkError::DeviceList(DeviceListError::AlreadyLinked));
}

#[cfg(feature = "qr")]
#[test]
fn qr_flow_completes_from_real_qr_pixels() {
    let mut rng = rng(14);
    let mut primary = primary(&mut rng);
    let mut phone = companion(&mut rng);
    let mut offer = QrLinkOffer::new(&mut rng, &mut phone, T0);
    let image = multidevice::render_pixels(&offer.qr_text(), 4).unwrap();
    assert!(!multidevice::render_terminal(&offer.qr_text()).unwrap().is_empty());
    let mut prepared =
        rqrr::PreparedImage::prepare_from_greyscale(image.size, image.size, |x, y| {
            image.pixels[y * image.size + x]
        });
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_meta, scanned) = grids[0].decode().unwrap();
    assert_eq!(scanned, *offer.qr_text());
    let (mut approval, message) = QrLinkApproval::approve(&mut primary, &scanned, T0).unwrap();
    let confirmation = offer.accept_approval(&mut phone, &message, T0).unwrap();
    approval.finish(&mut primary, &confirmation, T0).unwrap();
}

#[test]
fn pairing_code_works_at_its_lifetime_limit() {
    let mut rng = rng(15);
    let mut primary = primary(&mut rng);
    let mut tablet = companion(&mut rng);
    let (mut attempt, hello) = CompanionPairing::start(&mut rng, &mut tablet, T0);
    let code = PairingCode::parse(&attempt.code().to_string()).unwrap();
    let at_limit = T0.plus_secs(PAIRING_CODE_LIFETIME_SECS);
    let (mut pairing, response) =
        PrimaryPairing::respond(&mut rng, &mut primary, &hello, code, T0).unwrap();
    let confirm = attempt.handle_response(&response, at_limit).unwrap();
    let approval = pairing.handle_confirm(&mut primary, &confirm, T0.plus_secs(1)).unwrap();
    let confirmation = attempt.accept_approval(&mut tablet, &approval, at_limit).unwrap();
    pairing.finish(&mut primary, &confirmation, at_limit).unwrap();
}
