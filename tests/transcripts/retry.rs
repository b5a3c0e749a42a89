//! Message ids and retries (§21): a receiver restored from a backup taken before its session
//! cannot read a message, signs a retry request, and the sender re-encrypts the message on a
//! fresh session under the same message id; a second request after the answer is answered
//! again and delivered as `Redelivered`. Then a group message read before its sender key is
//! re-sent pairwise as a `GroupCopy`, and the original, read once the key arrives, is
//! `Redelivered`.

use multidevice::error::{ReceiveError, SessionError};
use multidevice::{
    AccountId, Conversation, Device, Received, RetryReason, RetryRequest, Timestamp,
    VerifiedRetryRequest,
};

use crate::common::*;
use crate::content::{record_envelope_on_new_session, record_first_envelope};
use crate::group::{FirstSend, record_first_group_send, record_new_group};
use crate::spec::{self, label};
use crate::vector::{Kind, Tape, Vector};

/// The reason byte of `NoSession` (§21).
const REASON_NO_SESSION: u8 = 1;
/// The reason byte of `NoSenderKey` (§21).
const REASON_NO_SENDER_KEY: u8 = 5;

/// Records a time the scenario steps at and returns it.
fn step(v: &mut Vector, name: &str, secs_after_start: u64, description: &str) -> Timestamp {
    let time = T0 + secs_after_start;
    v.int(Kind::Input, name, time, description);
    Timestamp(time)
}

/// `Inner` of §10 with inline content (`0x01 || payload`): `sender list version (u64) ||
/// sender list digest || message id || [group id || membership digest] || 0x01 || payload`.
fn inline_inner(
    list_version: u64,
    list_digest: &[u8; 32],
    message_id: &[u8],
    group: Option<(&[u8; 16], &[u8; 32])>,
    payload: &[u8],
) -> Vec<u8> {
    let group = group.map(|(id, membership)| spec::cat(&[id, membership])).unwrap_or_default();
    spec::cat(&[&spec::be64(list_version), list_digest, message_id, &group, &[0x01], payload])
}

/// A retry request `requester` made for `failed`, the message from `sender` it could not read:
/// records its fields, the signed bytes, the signature input and the signature, each computed
/// from §21 and §1; checks the signature with `verify_strict` under the requester's identity
/// signing key; returns the request's bytes.
fn record_request(
    v: &mut Vector,
    p: &str,
    (requester, sender): (&Dev, &Dev),
    failed: &[u8],
    request: &RetryRequest,
    (count, reason): (u8, u8),
    issued_at: Timestamp,
) -> Vec<u8> {
    let message_ref = array::<16>(&failed[failed.len() - 16..]);
    assert_eq!(request.requester, requester.address());
    assert_eq!(request.sender, sender.address());
    assert_eq!(request.message_ref, message_ref);
    assert_eq!(request.count, count);
    assert_eq!(request.issued_at, issued_at);
    let expected_reason = match reason {
        REASON_NO_SESSION => RetryReason::NoSession,
        REASON_NO_SENDER_KEY => RetryReason::NoSenderKey,
        other => panic!("no scenario asks with reason {other}"),
    };
    assert_eq!(request.reason, expected_reason);
    v.mid(
        &format!("{p}.requester"),
        &requester.addr(),
        "requester: the address of the device asking",
    );
    v.mid(
        &format!("{p}.sender"),
        &sender.addr(),
        "sender: the address of the device that sent the message, read from its unauthenticated bytes",
    );
    v.mid(
        &format!("{p}.message_ref"),
        &message_ref,
        "message ref: the last 16 bytes of the message that failed (a session message's AEAD tag, or the end of a group message's signature)",
    );
    v.int(
        Kind::Intermediate,
        &format!("{p}.count"),
        u64::from(count),
        "count (u8): which request this is for that message ref, from 1",
    );
    v.int(
        Kind::Intermediate,
        &format!("{p}.reason"),
        u64::from(reason),
        "reason (u8): 1 NoSession (no session the message names), 5 NoSenderKey (no sender key for the group message)",
    );
    v.int(
        Kind::Intermediate,
        &format!("{p}.issued_at"),
        issued_at.0,
        "issued at (u64): the requester's clock mark when it asked",
    );
    let (_, signed_prekey) = spec::signed_prekey(&requester.identity, 1, &requester.spk);
    let crate_prekey = &request.signed_prekey;
    v.output(
        &format!("{p}.signed_prekey"),
        &[&crate_prekey.id.to_be_bytes()[..], &crate_prekey.public, &crate_prekey.signature]
            .concat(),
        &signed_prekey,
        "the requester's current SignedPrekeyPublic (100): id (u32) || SPK_pub || sig",
    );
    let signed = spec::retry_request_signed(
        &requester.addr(),
        &sender.addr(),
        &message_ref,
        count,
        reason,
        issued_at.0,
        &signed_prekey,
    );
    v.mid(
        &format!("{p}.signed_bytes"),
        &signed,
        "the bytes signed: 0x01 || 0x60 || requester || sender || message ref || count || reason || issued at || SignedPrekeyPublic",
    );
    let input = spec::labelled(label::SIG_RETRY_REQUEST, &[&signed]);
    v.mid(
        &format!("{p}.signature_input"),
        &input,
        "the exact Ed25519 message: \"multidevice/v1/sig/retry-request\" || 0x00 || signed_bytes",
    );
    let bytes = request.to_bytes();
    assert_eq!(bytes.len(), 216);
    let signature = array::<64>(&bytes[bytes.len() - 64..]);
    v.output(
        &format!("{p}.signature"),
        &signature,
        &spec::sign(&requester.identity.signing_seed, &input),
        "Ed25519 by the requester's identity signing key IKs over signature_input",
    );
    assert!(spec::verify_strict(&requester.identity.iks, &input, &signature));
    // The label is part of what is signed: the signed bytes alone do not verify.
    assert!(!spec::verify_strict(&requester.identity.iks, &signed, &signature));
    v.output(
        &format!("{p}.bytes"),
        &bytes,
        &spec::cat(&[&signed, &signature]),
        "RetryRequest (216): signed_bytes || signature (64)",
    );
    assert_eq!(&RetryRequest::try_from(&bytes[..]).unwrap(), request);
    bytes
}

/// One retry: `requester` fails to read `failed`, a message from `sender`, with `error`, and
/// asks (entries `request`, at `ask_secs` after the start, which `ask` describes); `sender`
/// receives and verifies the request and answers on a fresh session (entries `answer`, at
/// `answer_secs`, described by `reply`), as a message of `kind` carrying `inner` (the
/// original's message id). Returns the answer's bytes and the time it was sent.
#[allow(clippy::too_many_arguments)]
fn ask_and_answer(
    v: &mut Vector,
    tape: &mut Tape,
    (sender, requester): (&mut Dev, &mut Dev),
    (failed, error): (&[u8], ReceiveError),
    (request, count, reason, (ask_secs, ask)): (&str, u8, u8, (u64, &str)),
    (answer, kind, kind_name, (answer_secs, reply)): (&str, u8, &str, (u64, &str)),
    (message_id, inner): (&[u8], &[u8]),
) -> (Vec<u8>, Timestamp) {
    let now = step(v, &format!("{request}.time"), ask_secs, ask);
    let failure = requester.device.receive_or_retry(failed, None, now).unwrap_err();
    assert_eq!(failure.error, error);
    assert!(!failure.gave_up);
    let request_bytes = record_request(
        v,
        request,
        (requester, sender),
        failed,
        &failure.retry.unwrap(),
        (count, reason),
        now,
    );
    let now = step(v, &format!("{answer}.time"), answer_secs, reply);
    let verified = match sender.device.receive(&request_bytes, None, now).unwrap() {
        Received::RetryRequest(verified) => verified,
        other => panic!("expected a retry request, got {other:?}"),
    };
    let bytes = record_answer(
        v,
        tape,
        answer,
        (sender, requester),
        &verified,
        (kind, kind_name),
        (message_id, inner),
        now,
    );
    (bytes, now)
}

/// `sender` answers `request` on a fresh session with `recipient` from its signed prekey 1 and
/// no one-time prekey: records the draws, the session setup, the `Inner` (`inner`, the
/// original's message id) and the answer's `PrekeyMessage` of `kind`; returns its bytes.
#[allow(clippy::too_many_arguments)]
fn record_answer(
    v: &mut Vector,
    tape: &mut Tape,
    p: &str,
    (sender, recipient): (&mut Dev, &Dev),
    request: &VerifiedRetryRequest,
    (kind, kind_name): (u8, &str),
    (message_id, inner): (&[u8], &[u8]),
    now: Timestamp,
) -> Vec<u8> {
    let answer = sender.device.answer_retry(tape, request, now).unwrap();
    let draws = v.draws(
        tape,
        &[
            (
                &format!("{p}.base_key_secret"),
                32,
                "X25519 secret of the base key of the fresh session the answer starts",
            ),
            (&format!("{p}.nonce"), 12, "header nonce of the answer"),
        ],
    );
    assert_eq!(answer.message_id[..], *message_id, "the answer keeps the original's message id");
    assert_eq!(answer.envelope.recipient, recipient.address());
    assert!(answer.body.is_none(), "an inline payload needs no body");
    v.mid(
        &format!("{p}.inner"),
        inner,
        &format!(
            "Inner ({kind_name}) of the answer: the sender's current list version and digest, the original's message id, then as the original"
        ),
    );
    let (setup, chain, _, expected) = record_envelope_on_new_session(
        v,
        p,
        sender,
        recipient,
        None,
        kind,
        &array(&draws[0]),
        &array(&draws[1]),
        inner,
    );
    v.output(
        &format!("{p}.bytes"),
        &answer.envelope.bytes,
        &expected,
        &format!(
            "the answer: PrekeyMessage (type 0x02), kind {kind:#04x} {kind_name}, on a session from the request's signed prekey without a one-time prekey"
        ),
    );
    assert_session(
        &session_state(&sender.device, recipient.address()),
        &setup.session_id,
        &setup.ad,
        &setup.root_key,
        Some(&chain),
    );
    answer.envelope.bytes
}

/// A fan-out message `p` from `from` (named `who`) to the one device `to` of another account,
/// on their session `setup`, the first after `from`'s ratchet turn: records the draws (message
/// id, ratchet key, nonce), the root step from `root` with `their` newest ratchet key, the
/// `Inner` (list version 1 and `digest`) and the `Message` with `previous_counter`. Returns the
/// message's bytes and id, the new root key and `from`'s new sending chain.
#[allow(clippy::too_many_arguments)]
fn record_turn_message(
    v: &mut Vector,
    tape: &mut Tape,
    p: &str,
    (from, who, to): (&mut Dev, &str, &Dev),
    (setup, digest): (&spec::Setup, &[u8; 32]),
    (root, their, previous_counter): (&[u8; 32], &[u8; 32], u32),
    payload: &[u8],
    now: Timestamp,
) -> (Vec<u8>, Vec<u8>, [u8; 32], Chain) {
    v.input(&format!("{p}.payload"), payload, "the fan-out payload (inline)");
    let account = to.address().account;
    let sent = from.device.encrypt_fanout(tape, &[account], &[], payload, now).unwrap();
    let draws = v.draws(
        tape,
        &[
            (&format!("{p}.message_id"), 16, "the message id"),
            (
                &format!("{p}.ratchet_secret"),
                32,
                &format!("X25519 secret of {who}'s new ratchet key"),
            ),
            (&format!("{p}.nonce"), 12, "the header nonce"),
        ],
    );
    assert_eq!(sent.message_id[..], draws[0][..]);
    assert_eq!(sent.envelopes.len(), 1);
    let secret = array::<32>(&draws[1]);
    let public = spec::x25519_public(&secret);
    v.mid(&format!("{p}.ratchet_public"), &public, &format!("{who}'s new ratchet key"));
    let (root, chain_key) = record_root_step(v, &format!("{p}.root_step"), root, &secret, their);
    let mut chain = Chain { ratchet_public: public, chain_key, counter: 0 };
    let inner = inline_inner(1, digest, &draws[0], None, payload);
    v.mid(
        &format!("{p}.inner"),
        &inner,
        "Inner (Direct): list version || list digest || message id || 0x01 || payload",
    );
    let expected = record_message(
        v,
        p,
        0x01,
        &from.addr(),
        &to.addr(),
        None,
        &setup.session_id,
        &setup.ad,
        &mut chain,
        previous_counter,
        &array(&draws[2]),
        &inner,
    );
    v.output(
        &format!("{p}.bytes"),
        &sent.envelopes[0].bytes,
        &expected,
        &format!("Message (type 0x01), kind 0x01 Direct, previous_counter {previous_counter}"),
    );
    (sent.envelopes[0].bytes.clone(), draws[0].clone(), root, chain)
}

/// Account 60's primary s0 sends to account 70's primary r0, which replies; s0's next message
/// reaches r0 restored from a backup taken before the session. r0 asks, s0 answers, r0 reads
/// the message; the original arrives again, r0 asks again, and the second answer is
/// `Redelivered`. Then s0's first message to a group with account 80 reaches account 80's
/// primary g0 before the sender key: g0 asks, s0 re-sends it as a `GroupCopy`, and the
/// original, read once the distribution arrives, is `Redelivered`.
pub(crate) fn retry() -> Vector {
    let seed = [0x0c; 32];
    let mut v = Vector::new(
        "retry",
        "Retries: a receiver restored from a backup taken before its session cannot read a message (NoSession) and signs a RetryRequest (type 0x60); the sender verifies it and re-encrypts the message on a fresh session from the request's signed prekey (no one-time prekey) under the same message id; the message arriving again brings a second request, whose answer is Redelivered. A group message read before its sender key (NoSenderKey) is re-sent pairwise as kind 0x05 GroupCopy; the original, read after the distribution, is Redelivered.",
        "docs/PROTOCOL.md §1, §4-§6, §10, §17, §20, §21",
        seed,
    );
    let mut tape = Tape::new(seed);
    let start = step(&mut v, "time", 0, "the time the devices are made and the lists exchanged");
    let mut s0 = new_device(&mut v, &mut tape, "s0", addr(60, 0), T0, 0, false);
    let mut r0 = new_device(&mut v, &mut tape, "r0", addr(70, 0), T0, 1, false);
    let mut g0 = new_device(&mut v, &mut tape, "g0", addr(80, 0), T0, 1, false);
    let list_s = s0.device.device_list(AccountId(60)).unwrap().signed_bytes().to_vec();
    let list_r = r0.device.device_list(AccountId(70)).unwrap().signed_bytes().to_vec();
    let list_g = g0.device.device_list(AccountId(80)).unwrap().signed_bytes().to_vec();
    s0.device.process_device_list(&list_r, start).unwrap();
    s0.device.process_device_list(&list_g, start).unwrap();
    r0.device.process_device_list(&list_s, start).unwrap();
    g0.device.process_device_list(&list_s, start).unwrap();
    v.input("lists.account60", &list_s, "account 60's signed device list, version 1 (s0 only)");
    v.input("lists.account70", &list_r, "account 70's signed device list, version 1 (r0 only)");
    v.input("lists.account80", &list_g, "account 80's signed device list, version 1 (g0 only)");
    let digest_s = list_digest(&list_s);
    v.mid(
        "lists.account60.digest",
        &digest_s,
        "digest of account 60's list: what s0 announces in every Inner and group plaintext",
    );
    let digest_r = list_digest(&list_r);
    v.mid("lists.account70.digest", &digest_r, "digest of account 70's list: what r0 announces");
    // r0's backup: its state now, before any session (restored below with Device::from_bytes).
    let backup = r0.device.to_bytes();

    // hello: s0's first message to r0, on a new session (one-time prekey 1).
    let now = step(&mut v, "hello.time", 10, "s0 sends hello and r0 reads it");
    let bundle = record_bundle(&mut v, "r0", &r0);
    let payload = b"hello: s0's first message to account 70.";
    v.input("hello.payload", payload, "the fan-out payload (inline)");
    let sent =
        s0.device.encrypt_fanout(&mut tape, &[AccountId(70)], &[bundle], payload, now).unwrap();
    let draws = v.draws(
        &mut tape,
        &[
            ("hello.message_id", 16, "the message id"),
            ("hello.base_key_secret", 32, "X25519 secret of the base key of s0's session with r0"),
            ("hello.nonce", 12, "the header nonce"),
        ],
    );
    assert_eq!(sent.message_id[..], draws[0][..]);
    let inner = inline_inner(1, &digest_s, &draws[0], None, payload);
    v.mid(
        "hello.inner",
        &inner,
        "Inner (Direct): list version || list digest || message id || 0x01 || payload",
    );
    let (setup, s_chain, _, expected) = record_first_envelope(
        &mut v,
        "hello",
        &s0,
        &r0,
        0x01,
        &array(&draws[1]),
        &array(&draws[2]),
        &inner,
    );
    assert_eq!(sent.envelopes.len(), 1);
    v.output(
        "hello.bytes",
        &sent.envelopes[0].bytes,
        &expected,
        "PrekeyMessage, kind 0x01 Direct, counter 0",
    );
    read(&mut r0, &sent.envelopes[0].bytes, payload, &draws[0], now);

    // reply: r0's first message back, after its ratchet turn; s0 now has heard back.
    let now = step(&mut v, "reply.time", 20, "r0 replies and s0 reads it");
    let payload = b"reply: r0 answers, so s0's session is confirmed.";
    let (reply, reply_id, root, r_chain) = record_turn_message(
        &mut v,
        &mut tape,
        "reply",
        (&mut r0, "r0", &s0),
        (&setup, &digest_r),
        (&setup.root_key, &s_chain.ratchet_public, 0),
        payload,
        now,
    );
    read(&mut s0, &reply, payload, &reply_id, now);

    // lost: s0's next message, a Message (type 0x01) after its own ratchet turn.
    let now = step(&mut v, "lost.time", 30, "s0 sends lost");
    let lost_payload = b"lost: the message r0's restored state cannot read.";
    let (lost, lost_id, root, s_chain) = record_turn_message(
        &mut v,
        &mut tape,
        "lost",
        (&mut s0, "s0", &r0),
        (&setup, &digest_s),
        (&root, &r_chain.ratchet_public, 1),
        lost_payload,
        now,
    );
    assert_session(
        &session_state(&s0.device, r0.address()),
        &setup.session_id,
        &setup.ad,
        &root,
        Some(&s_chain),
    );
    let lost_inner = inline_inner(1, &digest_s, &lost_id, None, lost_payload);

    let sender = s0.address();
    // r0 is restored from its backup: it holds no session with s0 and cannot read lost.
    r0.device = Device::from_bytes(&backup).unwrap();
    assert!(!r0.device.has_session(s0.address()));
    let (answer1, now) = ask_and_answer(
        &mut v,
        &mut tape,
        (&mut s0, &mut r0),
        (&lost, ReceiveError::Session(SessionError::NoSession(sender))),
        ("request1", 1, REASON_NO_SESSION, (40, "the restored r0 fails to read lost and asks")),
        ("answer1", 0x01, "Direct", (50, "s0 verifies request1 and answers; r0 reads the answer")),
        (&lost_id, &lost_inner),
    );
    read(&mut r0, &answer1, lost_payload, &lost_id, now);

    // lost arrives again: r0 now holds only the answer's session, asks again (count 2), and
    // the second answer carries an id r0 delivered.
    let (answer2, now) = ask_and_answer(
        &mut v,
        &mut tape,
        (&mut s0, &mut r0),
        (&lost, ReceiveError::Session(SessionError::UnknownSession(sender))),
        ("request2", 2, REASON_NO_SESSION, (60, "lost arrives again at r0, which asks again")),
        ("answer2", 0x01, "Direct", (70, "s0 answers request2; r0 has delivered lost already")),
        (&lost_id, &lost_inner),
    );
    redelivered(&mut r0, &answer2, s0.address(), &lost_id, now);

    // A group with account 80: g0 gets the group message before the distribution.
    let now = step(&mut v, "group.time", 100, "s0 makes the group and sends to it");
    let (group, membership) = record_new_group(&mut v, &mut tape, &mut s0, 80);
    let bundle = record_bundle(&mut v, "g0", &g0);
    let payload = b"A group message that arrives before its sender key.";
    let FirstSend { send, .. } = record_first_group_send(
        &mut v,
        &mut tape,
        &mut s0,
        (&g0, "g0"),
        (group, &membership, &digest_s),
        bundle,
        ("group_message", payload),
        now,
    );
    let group_message_id = send.message_id.to_vec();
    let inner =
        inline_inner(1, &digest_s, &group_message_id, Some((&group.0, &membership)), payload);
    let (copy, now) = ask_and_answer(
        &mut v,
        &mut tape,
        (&mut s0, &mut g0),
        (&send.message, ReceiveError::NoSenderKey { group, sender }),
        (
            "group_request",
            1,
            REASON_NO_SENDER_KEY,
            (110, "g0 fails to read the group message and asks"),
        ),
        ("group_copy", 0x05, "GroupCopy", (120, "s0 answers with a GroupCopy; g0 reads it")),
        (&group_message_id, &inner),
    );
    match g0.device.receive(&copy, None, now).unwrap() {
        Received::Group(message) => {
            assert_eq!((message.group, message.sender), (group, s0.address()));
            assert_eq!(message.message_id[..], group_message_id[..]);
            assert_eq!(message.membership_digest, membership);
            assert_eq!(message.sender_list_version, 1);
            assert_eq!(message.payload.as_slice(), payload);
        }
        other => panic!("expected a group message, got {other:?}"),
    }
    // The distribution arrives late: g0 takes the key and can now read the original, which
    // it delivered already.
    let now = step(&mut v, "late.time", 130, "the distribution and the group message reach g0");
    match g0.device.receive(&send.distribution[0].bytes, None, now).unwrap() {
        Received::SenderKey(key) => assert!(key.taken && key.group == group),
        other => panic!("expected a sender key, got {other:?}"),
    }
    redelivered(&mut g0, &send.message, s0.address(), &group_message_id, now);
    tape.finish();
    v
}

/// `dev` reads a fan-out message with message id `id` and payload `payload`.
fn read(dev: &mut Dev, bytes: &[u8], payload: &[u8], id: &[u8], now: Timestamp) {
    match dev.device.receive(bytes, None, now).unwrap() {
        Received::Message(message) => {
            assert_eq!(message.payload.as_slice(), payload);
            assert_eq!(message.message_id[..], *id);
            assert_eq!(message.conversation, Conversation::Direct);
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// `dev` receives `bytes`, a message it delivered already.
fn redelivered(
    dev: &mut Dev,
    bytes: &[u8],
    sender: multidevice::DeviceAddress,
    id: &[u8],
    now: Timestamp,
) {
    match dev.device.receive(bytes, None, now).unwrap() {
        Received::Redelivered(again) => {
            assert_eq!(again.sender, sender);
            assert_eq!(again.message_id[..], *id);
        }
        other => panic!("expected Redelivered, got {other:?}"),
    }
}
