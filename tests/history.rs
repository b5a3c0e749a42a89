//! History sync and media attachments: blobs keyed through fan-out and pairwise messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::Cursor;

use multidevice::blob::{BlobDescriptor, CHUNK_SIZE, MediaType, decrypt_blob, encrypt_blob};
use multidevice::{
    AccountId, BlobError, Device, HISTORY_MEDIA_TYPE, HISTORY_WINDOW_SECS, HistoryError,
    MAX_HISTORY_RECORD, QrLinkApproval, QrLinkOffer, ReceiveError, Received, ReceivedHistory,
    ReceivedMessage, Timestamp, build_history, hazmat, import_history,
};
use rand::rngs::StdRng;
use support::*;

/// A primary of account 1 with one freshly linked companion that has published prekeys.
fn linked(rng: &mut StdRng) -> (Device, Device) {
    let mut primary = Device::new(rng, addr(1, 0), T0);
    primary.refresh_device_list(T0).unwrap();
    let mut companion = Device::new(rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(rng, &mut companion, T0);
    let (mut approval, message) =
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap();
    let confirmation = offer.accept_approval(&mut companion, &message, T0).unwrap();
    let list = approval.finish(&mut primary, &confirmation, T0).unwrap();
    companion.process_device_list(&list.to_bytes(), T0).unwrap();
    companion.generate_one_time_prekeys(rng, 4).unwrap();
    (primary, companion)
}

/// Receives `bytes` as history at `now`.
fn receive_history(
    device: &mut Device,
    bytes: &[u8],
    now: Timestamp,
) -> Result<ReceivedHistory, ReceiveError> {
    match device.receive(bytes, None, now)? {
        Received::History(history) => Ok(history),
        other => panic!("expected history, got {other:?}"),
    }
}

/// Receives `bytes` with `body` as a message.
fn message(device: &mut Device, bytes: &[u8], body: Option<&[u8]>) -> ReceivedMessage {
    match device.receive(bytes, body, T0).unwrap() {
        Received::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A raw session message from `sender` to `receiver`, relabelled as history: what a device
/// other than the primary would need to push history.
fn forged_history(rng: &mut StdRng, sender: &mut Device, receiver: &Device, otk: usize) -> Vec<u8> {
    let bundle = receiver.prekey_upload().bundle(Some(otk)).verify().unwrap();
    hazmat::start_session(sender, rng, &bundle).unwrap();
    let mut wire = hazmat::encrypt(sender, rng, receiver.address(), b"history?").unwrap();
    wire[2] = 3;
    wire
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("chat {i}: {}", "x".repeat(i * 37 % 300)).into_bytes()).collect()
}

#[test]
fn new_companion_reads_history_after_the_primary_goes_offline() {
    let mut rng = rng(1);
    let (mut primary, mut companion) = linked(&mut rng);
    let history = records(500);
    let mut uploaded = Vec::new();
    let descriptor = build_history(&mut rng, &history, &mut uploaded).unwrap();
    let bundle = companion.prekey_upload().bundle(Some(0));
    let envelope =
        primary.encrypt_history(&mut rng, companion.address(), &descriptor, &[bundle], T0).unwrap();
    drop(primary); // offline from here on
    let received = receive_history(&mut companion, &envelope.bytes, T0.plus_secs(60)).unwrap();
    assert_eq!(received.sender, addr(1, 0));
    let mut imported = Vec::new();
    let count =
        import_history(received.descriptor, Cursor::new(&uploaded), |r| imported.push(r.to_vec()))
            .unwrap();
    assert_eq!(count, 500);
    assert_eq!(imported, history);
}

#[test]
fn history_from_another_accounts_device_is_rejected() {
    let mut rng = rng(2);
    let (_primary, mut companion) = linked(&mut rng);
    let mut stranger = Device::new(&mut rng, addr(2, 0), T0);
    let stranger_list = stranger.refresh_device_list(T0).unwrap();
    companion.process_device_list(&stranger_list.to_bytes(), T0).unwrap();
    let wire = forged_history(&mut rng, &mut stranger, &companion, 0);
    let before = snapshot(&companion);
    assert_eq!(
        receive_history(&mut companion, &wire, T0).unwrap_err(),
        ReceiveError::HistoryNotFromPrimary(stranger.address())
    );
    assert_eq!(snapshot(&companion), before);
}

#[test]
fn history_from_a_companion_of_the_own_account_is_rejected() {
    let mut rng = rng(3);
    let (mut primary, mut new_companion) = linked(&mut rng);
    // A second companion, listed and then removed, tries to push history to the new one.
    let mut other = Device::new(&mut rng, addr(1, 99), T0);
    let mut offer = QrLinkOffer::new(&mut rng, &mut other, T0);
    let (mut approval, message) =
        QrLinkApproval::approve(&mut primary, &offer.qr_text(), T0).unwrap();
    let confirmation = offer.accept_approval(&mut other, &message, T0).unwrap();
    let with = approval.finish(&mut primary, &confirmation, T0).unwrap();
    new_companion.process_device_list(&with.to_bytes(), T0).unwrap();
    let wire = forged_history(&mut rng, &mut other, &new_companion, 1);
    let before = snapshot(&new_companion);
    // Only the primary sends history, even while the other companion is listed.
    assert_eq!(
        receive_history(&mut new_companion, &wire, T0).unwrap_err(),
        ReceiveError::HistoryNotFromPrimary(other.address())
    );
    let without = primary.remove_companion(other.address().device, T0).unwrap();
    new_companion.process_device_list(&without.to_bytes(), T0).unwrap();
    let before_removed = snapshot(&new_companion);
    assert_ne!(before_removed, before);
    assert_eq!(
        receive_history(&mut new_companion, &wire, T0).unwrap_err(),
        ReceiveError::HistoryNotFromPrimary(other.address())
    );
    assert_eq!(snapshot(&new_companion), before_removed);
}

#[test]
fn history_after_the_window_is_rejected() {
    let mut rng = rng(4);
    let (mut primary, mut companion) = linked(&mut rng);
    let descriptor = build_history(&mut rng, records(3), Vec::new()).unwrap();
    let bundle = companion.prekey_upload().bundle(Some(0));
    let envelope =
        primary.encrypt_history(&mut rng, companion.address(), &descriptor, &[bundle], T0).unwrap();
    // At the last second of the window it is accepted (on a copy of the companion).
    let mut copy = Device::from_bytes(&companion.to_bytes()).unwrap();
    assert!(receive_history(&mut copy, &envelope.bytes, T0.plus_secs(HISTORY_WINDOW_SECS)).is_ok());
    let late = T0.plus_secs(HISTORY_WINDOW_SECS + 1);
    tick(&mut companion, late);
    let before = snapshot(&companion);
    assert_eq!(
        receive_history(&mut companion, &envelope.bytes, late).unwrap_err(),
        ReceiveError::HistoryWindowClosed
    );
    assert_eq!(snapshot(&companion), before);
    // Winding the clock back does not reopen the window.
    assert_eq!(
        receive_history(&mut companion, &envelope.bytes, T0).unwrap_err(),
        ReceiveError::HistoryWindowClosed
    );
}

#[test]
fn history_goes_only_to_own_companions_and_is_not_a_message() {
    let mut rng = rng(5);
    let (mut primary, mut companion) = linked(&mut rng);
    let descriptor = build_history(&mut rng, records(2), Vec::new()).unwrap();
    assert!(matches!(
        primary.encrypt_history(&mut rng, addr(2, 0), &descriptor, &[], T0),
        Err(HistoryError::NotOwnCompanion(_))
    ));
    assert_eq!(
        companion.encrypt_history(&mut rng, primary.address(), &descriptor, &[], T0).unwrap_err(),
        HistoryError::NotPrimary
    );
    let bundle = companion.prekey_upload().bundle(Some(0));
    let envelope =
        primary.encrypt_history(&mut rng, companion.address(), &descriptor, &[bundle], T0).unwrap();
    // The kind travels authenticated: relabelled as a message, the envelope fails and spends
    // nothing.
    let before = snapshot(&companion);
    let mut relabelled = envelope.bytes.clone();
    relabelled[2] = 2;
    assert!(companion.receive(&relabelled, None, T0).is_err());
    assert_eq!(snapshot(&companion), before);
    // The primary takes no history.
    let fanout = primary.encrypt_fanout(&mut rng, &[AccountId(1)], &[], b"hello", T0).unwrap();
    let message = &fanout.envelopes[0].bytes;
    let got = match companion.receive(message, None, T0).unwrap() {
        Received::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(got.payload.as_slice(), b"hello");
    assert!(receive_history(&mut companion, &envelope.bytes, T0).is_ok());
    let mut back = Device::new(&mut rng, addr(1, 99), T0);
    let wire = forged_history(&mut rng, &mut back, &primary, 0);
    assert_eq!(
        primary.receive(&wire, None, T0).unwrap_err(),
        ReceiveError::HistoryNotFromPrimary(back.address())
    );
}

#[test]
fn media_attachment_reaches_every_device_and_decrypts_with_the_descriptor_alone() {
    let mut rng = rng(6);
    let (mut primary, mut companion) = linked(&mut rng);
    let photo: Vec<u8> = (0..300_000u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let (uploaded, descriptor) =
        encrypt_blob(&mut rng, &photo, MediaType::new("image/jpeg").unwrap()).unwrap();
    let mut peer = Device::new(&mut rng, addr(2, 0), T0);
    let peer_list = peer.refresh_device_list(T0).unwrap();
    primary.process_device_list(&peer_list.to_bytes(), T0).unwrap();
    companion.process_device_list(&peer_list.to_bytes(), T0).unwrap();
    peer.process_device_list(&primary.refresh_device_list(T0).unwrap().to_bytes(), T0).unwrap();
    companion
        .process_device_list(&primary.refresh_device_list(T0).unwrap().to_bytes(), T0)
        .unwrap();
    let bundles =
        vec![peer.prekey_upload().bundle(None), companion.prekey_upload().bundle(Some(0))];
    let fanout = primary
        .encrypt_fanout(&mut rng, &[AccountId(2)], &bundles, &descriptor.to_bytes(), T0)
        .unwrap();
    assert_eq!(fanout.envelopes.len(), 2);
    for device in [&mut peer, &mut companion] {
        let envelope = fanout.envelopes.iter().find(|e| e.recipient == device.address()).unwrap();
        let got = message(device, &envelope.bytes, fanout.body.as_deref());
        let descriptor = BlobDescriptor::try_from(got.payload.as_slice()).unwrap();
        assert_eq!(decrypt_blob(&descriptor, &uploaded).unwrap().as_slice(), photo.as_slice());
    }
}

#[test]
fn attachment_with_a_wrong_digest_is_rejected_before_any_plaintext() {
    let mut rng = rng(7);
    let (uploaded, descriptor) =
        encrypt_blob(&mut rng, b"a photo", MediaType::new("image/png").unwrap()).unwrap();
    let (other, _) =
        encrypt_blob(&mut rng, b"another", MediaType::new("image/png").unwrap()).unwrap();
    assert_eq!(decrypt_blob(&descriptor, &other).unwrap_err(), BlobError::DigestMismatch);
    let mut tampered = uploaded.clone();
    tampered[20] ^= 1;
    assert_eq!(decrypt_blob(&descriptor, &tampered).unwrap_err(), BlobError::DigestMismatch);
    let mut sink = Vec::new();
    let error =
        import_history(descriptor, Cursor::new(&other), |r| sink.push(r.to_vec())).unwrap_err();
    assert_eq!(error, HistoryError::Blob(BlobError::DigestMismatch));
    assert!(sink.is_empty());
}

#[test]
fn primary_sends_history_only_within_the_window_after_the_link() {
    let mut rng = rng(8);
    let (mut primary, companion) = linked(&mut rng);
    let descriptor = build_history(&mut rng, records(2), Vec::new()).unwrap();
    let bundle = companion.prekey_upload().bundle(Some(0));
    let last_moment = T0.plus_secs(HISTORY_WINDOW_SECS);
    let mut copy = Device::from_bytes(&primary.to_bytes()).unwrap();
    let slice = std::slice::from_ref(&bundle);
    copy.encrypt_history(&mut rng, companion.address(), &descriptor, slice, last_moment).unwrap();
    let late = T0.plus_secs(HISTORY_WINDOW_SECS + 1);
    tick(&mut primary, late);
    let before = snapshot(&primary);
    assert_eq!(
        primary
            .encrypt_history(&mut rng, companion.address(), &descriptor, slice, late)
            .unwrap_err(),
        HistoryError::NotNewlyLinked(companion.address())
    );
    assert_eq!(snapshot(&primary), before);
}

/// Imports `uploaded` and returns the records, or the error.
fn import_all(descriptor: BlobDescriptor, uploaded: &[u8]) -> Result<Vec<Vec<u8>>, HistoryError> {
    let mut imported = Vec::new();
    let count = import_history(descriptor, Cursor::new(uploaded), |r| imported.push(r.to_vec()))?;
    assert_eq!(count, imported.len() as u64);
    Ok(imported)
}

#[test]
fn records_and_length_prefixes_split_across_chunks_round_trip() {
    let mut rng = rng(9);
    // The first record ends 2 bytes before the first chunk boundary, so the second record's
    // length prefix straddles it; the others split record bodies at later boundaries.
    let sizes = [CHUNK_SIZE - 6, 0, 1, CHUNK_SIZE - 5, CHUNK_SIZE, CHUNK_SIZE + 1, 3, 200_000, 7];
    let history: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| u8::try_from((i * 31 + j) % 256).unwrap()).collect())
        .collect();
    let mut uploaded = Vec::new();
    let descriptor = build_history(&mut rng, &history, &mut uploaded).unwrap();
    assert_eq!(import_all(descriptor, &uploaded).unwrap(), history);
}

#[test]
fn history_record_limit_at_n_and_n_plus_one() {
    let mut rng = rng(10);
    let largest = vec![0x5a; MAX_HISTORY_RECORD];
    let mut uploaded = Vec::new();
    let descriptor = build_history(&mut rng, [&largest[..], b"next"], &mut uploaded).unwrap();
    let imported = import_all(descriptor, &uploaded).unwrap();
    assert_eq!(imported.len(), 2);
    assert!(imported[0] == largest && imported[1] == b"next");

    let too_large = vec![0x5a; MAX_HISTORY_RECORD + 1];
    assert_eq!(
        build_history(&mut rng, [&too_large[..]], Vec::new()).unwrap_err(),
        HistoryError::RecordTooLarge { len: MAX_HISTORY_RECORD as u64 + 1 }
    );
}

/// Imports a history blob whose plaintext is `plaintext` exactly, framing and all, and returns
/// the error it must fail with.
fn import_error(rng: &mut StdRng, plaintext: &[u8]) -> HistoryError {
    let (uploaded, descriptor) =
        encrypt_blob(rng, plaintext, MediaType::new(HISTORY_MEDIA_TYPE).unwrap()).unwrap();
    import_all(descriptor, &uploaded).unwrap_err()
}

#[test]
fn import_rejects_a_length_prefix_over_the_limit() {
    let mut rng = rng(11);
    let claimed = u32::try_from(MAX_HISTORY_RECORD + 1).unwrap();
    let plaintext = [&claimed.to_be_bytes()[..], b"short"].concat();
    assert_eq!(
        import_error(&mut rng, &plaintext),
        HistoryError::RecordTooLarge { len: u64::from(claimed) }
    );
}

#[test]
fn import_rejects_an_oversized_prefix_straddling_a_chunk_boundary() {
    let mut rng = rng(13);
    let filler = vec![1u8; CHUNK_SIZE - 6];
    let claimed = u32::try_from(MAX_HISTORY_RECORD + 1).unwrap();
    let plaintext = [
        &u32::try_from(filler.len()).unwrap().to_be_bytes()[..],
        &filler,
        &claimed.to_be_bytes(),
        b"body",
    ]
    .concat();
    assert_eq!(
        import_error(&mut rng, &plaintext),
        HistoryError::RecordTooLarge { len: u64::from(claimed) }
    );
}

#[test]
fn primary_history_window_follows_its_clock_high_water_mark() {
    let mut rng = rng(14);
    let (mut primary, mut companion) = linked(&mut rng);
    let primary_bundle = primary.prekey_upload().bundle(None);
    let sent = companion
        .encrypt_fanout(&mut rng, &[AccountId(1)], &[primary_bundle], b"still here", T0)
        .unwrap();
    message(&mut primary, &sent.envelopes[0].bytes, None);
    tick(&mut primary, T0.plus_secs(HISTORY_WINDOW_SECS + 1));
    let descriptor = build_history(&mut rng, records(1), Vec::new()).unwrap();
    let bundle = companion.prekey_upload().bundle(Some(0));
    // A clock wound back into the window does not reopen it.
    assert_eq!(
        primary.encrypt_history(&mut rng, companion.address(), &descriptor, &[bundle], T0),
        Err(HistoryError::NotNewlyLinked(companion.address()))
    );
}

#[test]
fn primary_sends_no_history_to_a_removed_companion() {
    let mut rng = rng(15);
    let (mut primary, companion) = linked(&mut rng);
    primary.remove_companion(companion.address().device, T0).unwrap();
    let descriptor = build_history(&mut rng, records(1), Vec::new()).unwrap();
    let bundle = companion.prekey_upload().bundle(Some(0));
    let before = snapshot(&primary);
    assert_eq!(
        primary.encrypt_history(&mut rng, companion.address(), &descriptor, &[bundle], T0),
        Err(HistoryError::NotOwnCompanion(companion.address()))
    );
    assert_eq!(snapshot(&primary), before);
}

#[test]
fn import_rejects_history_ending_inside_a_record() {
    let mut rng = rng(12);
    for plaintext in [&[0u8, 0, 0, 5, b'a', b'b', b'c'][..], &[0, 0], &[0, 0, 0, 0, 0]] {
        assert_eq!(import_error(&mut rng, plaintext), HistoryError::TruncatedRecord);
    }
}
