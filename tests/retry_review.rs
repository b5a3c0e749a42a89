//! Review of the retry path (issue 14) as a hostile server would attack it: replays of old
//! requests after new answers, restored senders, identity changes pending at the requester's
//! account, group holder sets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use multidevice::{
    AccountId, Device, FanoutMessage, Received, RetryAnswer, RetryError, RetryRequest,
    VerifiedRetryRequest,
};
use rand::rngs::StdRng;
use support::world::{Account, Server, account, envelope_for, introduce};
use support::{T0, rng, snapshot, tick};

/// Alice (account 1) and Bob (account 2), no companions, introduced.
fn world(seed: u64) -> (StdRng, Server, Account, Account) {
    let mut rng = rng(seed);
    let mut server = Server::default();
    let mut alice = account(&mut rng, &mut server, 1, 0, T0);
    let mut bob = account(&mut rng, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    (rng, server, alice, bob)
}

/// A fan-out from `from` to `to`, with bundles for both accounts.
fn send(
    rng: &mut StdRng,
    server: &mut Server,
    from: &mut Device,
    to: AccountId,
    payload: &[u8],
) -> FanoutMessage {
    let bundles = server.bundles(&[to, from.account()]);
    let sent = from.encrypt_fanout(rng, &[to], &bundles, payload, T0).unwrap();
    assert!(sent.skipped.is_empty(), "{:?}", sent.skipped);
    sent
}

/// `device` receives `bytes` and returns what it delivered: `Some(id)` for a new message,
/// `None` for a redelivery.
fn delivered(device: &mut Device, bytes: &[u8], body: Option<&[u8]>) -> Option<[u8; 16]> {
    match device.receive(bytes, body, T0).unwrap() {
        Received::Message(message) => Some(message.message_id),
        Received::Group(message) => Some(message.message_id),
        Received::Redelivered(_) => None,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// `bytes` fails at `device`, which asks for a retry.
fn ask(device: &mut Device, bytes: &[u8]) -> RetryRequest {
    let failure = device.receive_or_retry(bytes, None, T0).unwrap_err();
    *failure.retry.unwrap_or_else(|| panic!("no retry request for {:?}", failure.error))
}

fn verified(sender: &mut Device, request: &RetryRequest) -> VerifiedRetryRequest {
    match sender.receive(&request.to_bytes(), None, T0).unwrap() {
        Received::RetryRequest(verified) => verified,
        other => panic!("expected a retry request, got {other:?}"),
    }
}

fn respond(
    rng: &mut StdRng,
    sender: &mut Device,
    request: &RetryRequest,
) -> Result<RetryAnswer, RetryError> {
    let verified = verified(sender, request);
    sender.answer_retry(rng, &verified, T0)
}

/// Bob's session with Alice confirmed both ways.
fn converse(rng: &mut StdRng, server: &mut Server, alice: &mut Account, bob: &mut Account) {
    let hello = send(rng, server, &mut alice.devices[0], AccountId(2), b"hello");
    let bytes = envelope_for(&hello, bob.devices[0].address()).unwrap();
    delivered(&mut bob.devices[0], &bytes, None).unwrap();
    let back = send(rng, server, &mut bob.devices[0], AccountId(1), b"back");
    let bytes = envelope_for(&back, alice.devices[0].address()).unwrap();
    delivered(&mut alice.devices[0], &bytes, None).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------------

/// While a peer account has an identity change pending (the server shows a list under a new
/// account identity; the user has not decided), nothing may be sent to the account (§9:
/// `IdentityChangePending`). A retry answer is a send: the old identity's request must not be
/// answered either.
#[test]
fn a_retry_is_not_answered_to_an_account_with_an_identity_change_pending() {
    let (mut rng, mut server, mut alice, mut bob) = world(1402);
    converse(&mut rng, &mut server, &mut alice, &mut bob);
    let bob0 = bob.devices[0].address();
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"m");
    let request = ask(&mut bob.devices[0], &envelope_for(&sent, bob0).unwrap());
    let verified = verified(&mut alice.devices[0], &request);
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

// ---------------------------------------------------------------------------------------------
// Checks that held
// ---------------------------------------------------------------------------------------------

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
    let (mut rng, mut server, mut alice, mut bob) = world(1403);
    converse(&mut rng, &mut server, &mut alice, &mut bob);
    let bob0 = bob.devices[0].address();
    bob.devices[0].delete_sessions(alice.devices[0].address());
    let sent = send(&mut rng, &mut server, &mut alice.devices[0], AccountId(2), b"m");
    let original = envelope_for(&sent, bob0).unwrap();
    let mut requests = vec![ask(&mut bob.devices[0], &original)];
    // Bob asks again (the server redelivered the failed envelope): a higher count for the same
    // copy, which asks anew until an answer to it fails in turn.
    let mut again = Some(ask(&mut bob.devices[0], &original));
    assert_eq!((requests[0].count, again.as_ref().unwrap().count), (1, 2));
    let mut answers = Vec::new();
    let mut request = requests[0].clone();
    for _ in 0..5 {
        let answer = respond(&mut rng, &mut alice.devices[0], &request).unwrap();
        assert_eq!(answer.message_id, sent.message_id);
        // Every request made so far is a replay now, and starts nothing.
        tick(&mut alice.devices[0], T0);
        let before = snapshot(&alice.devices[0]);
        for old in &requests {
            let error = respond(&mut rng, &mut alice.devices[0], old).unwrap_err();
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
        request = ask(&mut bob.devices[0], &tampered(&answer.envelope.bytes));
        requests.push(request.clone());
        requests.extend(again.take());
        answers.push(answer);
    }
    let error = respond(&mut rng, &mut alice.devices[0], &request).unwrap_err();
    assert_eq!(error, RetryError::GaveUp { message_id: sent.message_id });
    // The last answer, delivered intact, delivers the message once; the original then is nothing
    // new.
    let last = answers.last().unwrap();
    assert_eq!(delivered(&mut bob.devices[0], &last.envelope.bytes, None), Some(sent.message_id));
    assert!(bob.devices[0].receive(&original, None, T0).is_err());
    Device::from_bytes(&alice.devices[0].to_bytes()).unwrap();
}
