//! Replays each vector file through the public API alone: devices are rebuilt from the recorded
//! randomness (`Device::new` fed the recorded draws), recorded bytes are parsed, verified and
//! decrypted, and every output the scenario produced is produced again and compared.

use std::io::Cursor;

use sha2::{Digest, Sha256};

use multidevice::blob::{self, BlobDescriptor, MediaType};
use multidevice::{
    AccountId, CompanionPairing, Conversation, Device, DeviceAddress, DeviceId, PairingCode,
    PrekeyBundle, PrekeyUpload, PrimaryPairing, PublicIdentity, QrLinkApproval, QrLinkOffer,
    Received, RetryError, RetryReason, RetryRequest, SecurityCode, SignedDeviceIdentity,
    SignedDeviceList, Timestamp, build_history, hazmat, import_history,
};

use crate::vector::{File, Replay};

/// The device `p` of a file, rebuilt from its recorded draws: `Device::new`, then its one-time
/// prekeys.
fn device(file: &File, p: &str, otks: usize) -> Device {
    let address = address(&file.hex(&format!("{p}.address")));
    let mut rng = Replay::new(vec![
        file.hex(&format!("{p}.identity.signing_seed")),
        file.hex(&format!("{p}.identity.agreement_secret")),
        file.hex(&format!("{p}.signed_prekey.1.secret")),
    ]);
    let time = Timestamp(crate::common::T0);
    let mut device = Device::new(&mut rng, address, time);
    rng.finish();
    assert_eq!(device.public_identity().to_bytes()[..], file.hex(&format!("{p}.public_identity")));
    if otks > 0 {
        let mut rng = file.replay(&format!("{p}.one_time_prekey."));
        device.generate_one_time_prekeys(&mut rng, otks).unwrap();
        rng.finish();
    }
    device
}

/// A `DeviceAddress` from its 12 bytes: account id (u64) || device id (u32).
fn address(bytes: &[u8]) -> DeviceAddress {
    DeviceAddress::new(
        AccountId(u64::from_be_bytes(bytes[..8].try_into().unwrap())),
        DeviceId(u32::from_be_bytes(bytes[8..].try_into().unwrap())),
    )
}

fn named(file: &File, names: &[&str]) -> Replay {
    Replay::new(names.iter().map(|n| file.hex(n)).collect())
}

fn time(file: &File, name: &str) -> Timestamp {
    Timestamp(file.int(name))
}

pub(crate) fn identities(file: &File) {
    for p in ["alice", "bob"] {
        let device = device(file, p, 2);
        let identity =
            PublicIdentity::try_from(&file.hex(&format!("{p}.public_identity"))[..]).unwrap();
        assert_eq!(identity.fingerprint().as_bytes()[..], file.hex(&format!("{p}.fingerprint")));
        let iks = &identity.signing_key_bytes()[..];
        let sig_a = &file.hex(&format!("{p}.public_identity"))[64..];
        assert!(hazmat::verify_ed25519_strict(
            iks.try_into().unwrap(),
            &file.hex(&format!("{p}.identity.sig_a_message")),
            sig_a
        ));
        let upload = device.prekey_upload();
        for (name, index) in [("bundle_with_opk", Some(0)), ("bundle_without_opk", None)] {
            let bytes = file.hex(&format!("{p}.{name}"));
            assert_eq!(upload.bundle(index).to_bytes(), bytes);
            let bundle = PrekeyBundle::try_from(&bytes[..]).unwrap();
            assert_eq!(bundle.identity, identity);
            bundle.verify().unwrap();
        }
        let bytes = file.hex(&format!("{p}.upload"));
        assert_eq!(upload.to_bytes(), bytes);
        assert_eq!(PrekeyUpload::try_from(&bytes[..]).unwrap(), upload);
    }
}

pub(crate) fn session(file: &File) {
    let now = time(file, "time");
    let mut alice = device(file, "alice", 0);
    let mut bob = device(file, "bob", 1);
    let bundle = PrekeyBundle::try_from(&file.hex("bob.bundle")[..]).unwrap().verify().unwrap();
    let mut rng = named(file, &["setup.base_key_secret"]);
    hazmat::start_session(&mut alice, &mut rng, &bundle).unwrap();
    rng.finish();
    let send = |from: &mut Device, to: DeviceAddress, p: &str, draws: &[&str]| {
        let mut rng = named(file, draws);
        let bytes =
            hazmat::encrypt(from, &mut rng, to, &file.hex(&format!("{p}.plaintext"))).unwrap();
        rng.finish();
        assert_eq!(bytes, file.hex(&format!("{p}.bytes")), "{p}");
    };
    let deliver = |to: &mut Device, p: &str| {
        let got = hazmat::decrypt(to, &file.hex(&format!("{p}.bytes")), now).unwrap();
        assert_eq!(got.plaintext.as_slice(), file.hex(&format!("{p}.plaintext")), "{p}");
    };
    for p in ["a1", "a2", "a3"] {
        send(&mut alice, bob.address(), p, &[&format!("{p}.nonce")]);
    }
    for p in ["a1", "a2", "a3"] {
        deliver(&mut bob, p);
    }
    send(&mut bob, alice.address(), "b1", &["b1.ratchet_secret", "b1.nonce"]);
    send(&mut bob, alice.address(), "b2", &["b2.nonce"]);
    send(&mut bob, alice.address(), "b3", &["b3.nonce"]);
    for p in ["b1", "b2", "b3"] {
        deliver(&mut alice, p);
    }
    send(&mut alice, bob.address(), "a4", &["a4.ratchet_secret", "a4.nonce"]);
    deliver(&mut bob, "a4");
    let info = alice.session_info(bob.address()).unwrap();
    assert_eq!(info.active_session[..], file.hex("setup.session_id"));
}

pub(crate) fn device_list(file: &File) {
    let primary = PublicIdentity::try_from(&file.hex("primary.public_identity")[..]).unwrap();
    let iks: [u8; 32] = *primary.signing_key_bytes();
    let mut observer = Device::new(
        &mut crate::vector::Tape::new([0x0a; 32]),
        DeviceAddress::new(AccountId(1), DeviceId(0)),
        Timestamp(crate::common::T0),
    );
    for (version, p) in [(1, "list1"), (2, "list2"), (3, "list3")] {
        let bytes = file.hex(&format!("{p}.bytes"));
        let list = SignedDeviceList::try_from(&bytes[..]).unwrap();
        assert_eq!(list.version(), version);
        let verified = list.verify().unwrap();
        assert_eq!(verified.digest()[..], file.hex(&format!("{p}.digest")));
        assert_eq!(verified.account_identity(), &primary);
        assert_eq!(verified.devices().len(), usize::try_from(version).unwrap());
        assert!(hazmat::verify_ed25519_strict(
            &iks,
            &file.hex(&format!("{p}.sig_message")),
            &file.hex(&format!("{p}.signature"))
        ));
        assert_eq!(bytes[..file.hex(&format!("{p}.body")).len()], file.hex(&format!("{p}.body")));
        observer.process_device_list(&bytes, Timestamp(crate::common::T0 + 120)).unwrap();
    }
    for p in ["companion1", "companion2"] {
        let signed =
            SignedDeviceIdentity::try_from(&file.hex(&format!("{p}.signed_device_identity"))[..])
                .unwrap();
        signed.verify(&primary).unwrap();
        assert!(hazmat::verify_ed25519_strict(
            &iks,
            &file.hex(&format!("{p}.account_sig_message")),
            &file.hex(&format!("{p}.account_signature"))
        ));
        let companion: [u8; 32] = *signed.identity.signing_key_bytes();
        assert!(hazmat::verify_ed25519_strict(
            &companion,
            &file.hex(&format!("{p}.device_sig_message")),
            &file.hex(&format!("{p}.device_signature"))
        ));
        // A signature made for one purpose verifies for no other.
        assert!(!hazmat::verify_ed25519_strict(
            &companion,
            &file.hex(&format!("{p}.account_sig_message")),
            &file.hex(&format!("{p}.device_signature"))
        ));
    }
    let list3 = observer.device_list(AccountId(5)).unwrap();
    assert_eq!(list3.version(), 3);
}

pub(crate) fn qr_link(file: &File) {
    let mut primary = device(file, "primary", 0);
    let mut companion = device(file, "companion", 0);
    let mut rng = named(file, &["offer.reference", "offer.link_secret"]);
    let mut offer = QrLinkOffer::new(&mut rng, &mut companion, time(file, "offer.created_at"));
    rng.finish();
    let text = file.text("offer.qr_text");
    assert_eq!(offer.qr_text().as_str(), text);
    let (mut approval_state, approval) =
        QrLinkApproval::approve(&mut primary, &text, time(file, "approval.time")).unwrap();
    assert_eq!(approval, file.hex("approval.bytes"));
    let confirmation = offer
        .accept_approval(
            &mut companion,
            &file.hex("approval.bytes"),
            time(file, "confirmation.time"),
        )
        .unwrap();
    assert_eq!(confirmation, file.hex("confirmation.bytes"));
    let list = approval_state
        .finish(&mut primary, &file.hex("confirmation.bytes"), time(file, "list.time"))
        .unwrap();
    assert_eq!(list.to_bytes(), file.hex("list.bytes"));
    companion.process_device_list(&file.hex("list.bytes"), time(file, "list.time")).unwrap();
    assert_eq!(companion.address(), DeviceAddress::new(AccountId(7), DeviceId(1)));
}

pub(crate) fn pairing_code(file: &File) {
    let mut primary = device(file, "primary", 0);
    let mut companion = device(file, "companion", 0);
    let mut rng = named(file, &["code.entropy", "hello.sid", "companion.cpace_scalar_bytes"]);
    let (mut attempt, hello) =
        CompanionPairing::start(&mut rng, &mut companion, time(file, "hello.time"));
    rng.finish();
    assert_eq!(hello, file.hex("hello.bytes"));
    assert_eq!(attempt.code().to_string(), file.text("code.display"));
    let typed = PairingCode::parse(&file.text("code.prs")).unwrap();
    let mut rng = named(file, &["primary.cpace_scalar_bytes"]);
    let (mut responder, response) = PrimaryPairing::respond(
        &mut rng,
        &mut primary,
        &file.hex("hello.bytes"),
        typed,
        time(file, "response.time"),
    )
    .unwrap();
    rng.finish();
    assert_eq!(response, file.hex("response.bytes"));
    let confirm =
        attempt.handle_response(&file.hex("response.bytes"), time(file, "confirm.time")).unwrap();
    assert_eq!(confirm, file.hex("confirm.bytes"));
    let approval = responder
        .handle_confirm(&mut primary, &file.hex("confirm.bytes"), time(file, "approval.time"))
        .unwrap();
    assert_eq!(approval, file.hex("approval.bytes"));
    let confirmation = attempt
        .accept_approval(
            &mut companion,
            &file.hex("approval.bytes"),
            time(file, "confirmation.time"),
        )
        .unwrap();
    assert_eq!(confirmation, file.hex("confirmation.bytes"));
    let list = responder
        .finish(&mut primary, &file.hex("confirmation.bytes"), time(file, "list.time"))
        .unwrap();
    assert_eq!(list.to_bytes(), file.hex("list.bytes"));
}

/// Links `companion` to `primary` with the direct API; returns the list's bytes.
fn link(primary: &mut Device, companion: &mut Device, now: Timestamp) -> Vec<u8> {
    let approval = primary.approve_companion(companion.public_identity(), now).unwrap();
    let signed = companion.countersign_approval(&approval).unwrap();
    let list = primary.add_companion(&signed, now).unwrap().to_bytes();
    companion.process_device_list(&list, now).unwrap();
    list
}

fn read(
    device: &mut Device,
    bytes: &[u8],
    body: Option<&[u8]>,
    now: Timestamp,
) -> (Vec<u8>, Conversation) {
    match device.receive(bytes, body, now).unwrap() {
        Received::Message(message) => (message.payload.to_vec(), message.conversation),
        other => panic!("expected a message, got {other:?}"),
    }
}

pub(crate) fn fanout(file: &File) {
    let now = time(file, "time");
    let mut a0 = device(file, "a0", 0);
    let mut a1 = device(file, "a1", 1);
    let mut b0 = device(file, "b0", 1);
    let list_a = link(&mut a0, &mut a1, now);
    assert_eq!(list_a, file.hex("lists.account10"));
    let list_b = file.hex("lists.account20");
    assert_eq!(b0.device_list(AccountId(20)).unwrap().signed_bytes(), list_b);
    a0.process_device_list(&list_b, now).unwrap();
    a1.process_device_list(&list_b, now).unwrap();
    b0.process_device_list(&list_a, now).unwrap();
    let bundles = [
        PrekeyBundle::try_from(&file.hex("b0.bundle")[..]).unwrap(),
        PrekeyBundle::try_from(&file.hex("a1.bundle")[..]).unwrap(),
    ];
    for (p, body) in [("inline", false), ("body", true)] {
        let payload = file.hex(&format!("{p}.payload"));
        let mut rng = file.replay(&format!("{p}."));
        let sent = a0.encrypt_fanout(&mut rng, &[AccountId(20)], &bundles, &payload, now).unwrap();
        rng.finish();
        assert_eq!(sent.body.is_some(), body);
        if body {
            assert_eq!(sent.body.as_deref(), Some(&file.hex("body.bytes")[..]));
        }
        let body_bytes = body.then(|| file.hex("body.bytes"));
        assert_eq!(sent.envelopes[0].bytes, file.hex(&format!("{p}.to_b0.bytes")));
        assert_eq!(sent.envelopes[1].bytes, file.hex(&format!("{p}.to_a1.bytes")));
        let got = read(&mut b0, &file.hex(&format!("{p}.to_b0.bytes")), body_bytes.as_deref(), now);
        assert_eq!(got, (payload.clone(), Conversation::Direct));
        let got = read(&mut a1, &file.hex(&format!("{p}.to_a1.bytes")), body_bytes.as_deref(), now);
        assert_eq!(got, (payload, Conversation::OwnCopy { to: vec![AccountId(20)] }));
    }
}

pub(crate) fn history(file: &File) {
    let now = time(file, "time");
    let mut primary = device(file, "primary", 0);
    let mut companion = device(file, "companion", 1);
    assert_eq!(link(&mut primary, &mut companion, now), file.hex("list"));
    let records: Vec<Vec<u8>> = (0..3).map(|i| file.hex(&format!("record{i}"))).collect();
    let mut rng = file.replay("blob.");
    let mut blob_bytes = Vec::new();
    let descriptor = build_history(&mut rng, &records, &mut blob_bytes).unwrap();
    rng.finish();
    assert_eq!(blob_bytes, file.hex("blob.bytes"));
    assert_eq!(descriptor.to_bytes().as_slice(), file.hex("descriptor.bytes"));
    let bundle = PrekeyBundle::try_from(&file.hex("companion.bundle")[..]).unwrap();
    let mut rng = file.replay("history.");
    let sent = primary
        .encrypt_history(
            &mut rng,
            companion.address(),
            &descriptor,
            &[bundle],
            time(file, "history.time"),
        )
        .unwrap();
    rng.finish();
    assert_eq!(sent.bytes, file.hex("history.bytes"));
    let Received::History(received) =
        companion.receive(&file.hex("history.bytes"), None, time(file, "history.time")).unwrap()
    else {
        panic!("expected history")
    };
    assert_eq!(received.descriptor.to_bytes().as_slice(), file.hex("descriptor.bytes"));
    let mut imported = Vec::new();
    import_history(received.descriptor, Cursor::new(file.hex("blob.bytes")), |r| {
        imported.push(r.to_vec())
    })
    .unwrap();
    assert_eq!(imported, records);
}

pub(crate) fn security_code(file: &File) {
    let alice = device(file, "alice", 0);
    let bob = device(file, "bob", 0);
    let code = SecurityCode::new(
        (AccountId(42), alice.public_identity()),
        (AccountId(7), bob.public_identity()),
    );
    let other_side = SecurityCode::new(
        (AccountId(7), bob.public_identity()),
        (AccountId(42), alice.public_identity()),
    );
    assert!(code == other_side);
    assert_eq!(code.digits(), file.text("code.digits"));
    assert!(code.matches_digits(&file.text("code.digits")));
    assert!(code.matches_scanned(&file.hex("code.scannable")));
    assert_eq!(
        format!("{}{}", file.text("half7.digits"), file.text("half42.digits")),
        code.digits()
    );
}

pub(crate) fn blob(file: &File) {
    let plaintext = file.hex("plaintext");
    let descriptor = BlobDescriptor::try_from(&file.hex("descriptor.bytes")[..]).unwrap();
    let mut ciphertext = file.hex("blob.header");
    let mut chunk = 0;
    while file.entries.iter().any(|e| e.0 == format!("blob.chunk{chunk}.sealed")) {
        ciphertext.extend_from_slice(&file.hex(&format!("blob.chunk{chunk}.sealed")));
        chunk += 1;
    }
    assert_eq!(blob::decrypt_blob(&descriptor, &ciphertext).unwrap().as_slice(), plaintext);
    let mut rng = file.replay("blob.");
    let (again, descriptor) =
        blob::encrypt_blob(&mut rng, &plaintext, MediaType::new(&file.text("media_type")).unwrap())
            .unwrap();
    rng.finish();
    assert_eq!(again, ciphertext);
    assert_eq!(descriptor.to_bytes().as_slice(), file.hex("descriptor.bytes"));
}

/// The draws of a group's first send, whose group message is `message`: the sender key, the
/// distribution's message id, base key and nonce, the group message's id and nonce.
fn first_group_send_draws(file: &File, message: &str) -> Replay {
    let mut names: Vec<String> = [
        "sender_key.key_id",
        "sender_key.chain_key",
        "sender_key.signing_seed",
        "distribution.message_id",
        "distribution.base_key_secret",
        "distribution.nonce",
    ]
    .map(str::to_owned)
    .to_vec();
    names.push(format!("{message}.message_id"));
    names.push(format!("{message}.nonce"));
    Replay::new(names.iter().map(|n| file.hex(n)).collect())
}

pub(crate) fn group(file: &File) {
    let now = time(file, "time");
    let mut sender = device(file, "s0", 0);
    let mut recipient = device(file, "r0", 1);
    let list_s = file.hex("lists.account40");
    let list_r = file.hex("lists.account50");
    assert_eq!(sender.device_list(AccountId(40)).unwrap().signed_bytes(), list_s);
    assert_eq!(recipient.device_list(AccountId(50)).unwrap().signed_bytes(), list_r);
    sender.process_device_list(&list_r, now).unwrap();
    recipient.process_device_list(&list_s, now).unwrap();
    let mut rng = named(file, &["group.id"]);
    let group = sender.create_group(&mut rng, &[AccountId(50)]).unwrap();
    rng.finish();
    assert_eq!(group.0[..], file.hex("group.id"));
    let members = [AccountId(40), AccountId(50)];
    assert_eq!(group.membership_digest(&members)[..], file.hex("membership.digest"));
    let bundle = PrekeyBundle::try_from(&file.hex("r0.bundle")[..]).unwrap();
    let mut rng = first_group_send_draws(file, "m1");
    let first =
        sender.encrypt_group(&mut rng, group, &[bundle], &file.hex("m1.payload"), now).unwrap();
    rng.finish();
    assert_eq!(first.distribution.len(), 1);
    assert_eq!(first.distribution[0].recipient, recipient.address());
    assert_eq!(first.distribution[0].bytes, file.hex("distribution.bytes"));
    assert_eq!(first.message, file.hex("m1.bytes"));
    let mut rng = named(file, &["m2.message_id", "m2.nonce"]);
    let second = sender.encrypt_group(&mut rng, group, &[], &file.hex("m2.payload"), now).unwrap();
    rng.finish();
    assert_eq!(second.message, file.hex("m2.bytes"));
    let public: [u8; 32] = file.hex("sender_key.signing_public").try_into().unwrap();
    match recipient.receive(&file.hex("distribution.bytes"), None, now).unwrap() {
        Received::SenderKey(key) => assert_eq!((key.group, key.sender), (group, sender.address())),
        other => panic!("expected a sender key, got {other:?}"),
    }
    for p in ["m1", "m2"] {
        let bytes = file.hex(&format!("{p}.bytes"));
        // The signature is the last 64 bytes, over the label and the SHA-256 of the header and
        // ciphertext.
        let (signed, signature) = bytes.split_at(bytes.len() - 64);
        let input = file.hex(&format!("{p}.signature_input"));
        assert_eq!(&input[input.len() - 32..], Sha256::digest(signed).as_slice());
        assert_eq!(signature, file.hex(&format!("{p}.signature")));
        assert!(hazmat::verify_ed25519_strict(&public, &input, signature));
        let Received::Group(message) = recipient.receive(&bytes, None, now).unwrap() else {
            panic!("expected a group message")
        };
        assert_eq!(message.payload.as_slice(), file.hex(&format!("{p}.payload")));
        assert_eq!(message.message_id[..], file.hex(&format!("{p}.message_id")));
        assert_eq!(message.membership_digest[..], file.hex("membership.digest"));
    }
}

/// Checks the request `p` of the file field by field against its bytes, and its signature with
/// the requester's identity signing key over the label, `0x00` and the signed bytes.
fn check_request(file: &File, p: &str, requester: &PublicIdentity) -> RetryRequest {
    let bytes = file.hex(&format!("{p}.bytes"));
    let request = RetryRequest::try_from(&bytes[..]).unwrap();
    assert_eq!(request.to_bytes(), bytes);
    assert_eq!(request.requester, address(&file.hex(&format!("{p}.requester"))));
    assert_eq!(request.sender, address(&file.hex(&format!("{p}.sender"))));
    assert_eq!(request.message_ref[..], file.hex(&format!("{p}.message_ref")));
    assert_eq!(u64::from(request.count), file.int(&format!("{p}.count")));
    let reason = match file.int(&format!("{p}.reason")) {
        1 => RetryReason::NoSession,
        5 => RetryReason::NoSenderKey,
        other => panic!("reason {other}"),
    };
    assert_eq!(request.reason, reason);
    assert_eq!(request.issued_at, time(file, &format!("{p}.issued_at")));
    let prekey = &request.signed_prekey;
    assert_eq!(
        [&prekey.id.to_be_bytes()[..], &prekey.public, &prekey.signature].concat(),
        file.hex(&format!("{p}.signed_prekey"))
    );
    let (signed, signature) = bytes.split_at(bytes.len() - 64);
    assert_eq!(signed, file.hex(&format!("{p}.signed_bytes")));
    assert_eq!(signature, file.hex(&format!("{p}.signature")));
    let input = file.hex(&format!("{p}.signature_input"));
    assert_eq!(input, [&b"multidevice/v1/sig/retry-request\0"[..], signed].concat());
    assert!(hazmat::verify_ed25519_strict(requester.signing_key_bytes(), &input, signature));
    request
}

/// `device` receives the retry request `p` and answers it with the draws recorded for
/// `answer`; the answer must be the recorded bytes, under the message id `id`.
fn answer(
    file: &File,
    device: &mut Device,
    (p, answer): (&str, &str),
    id: &[u8],
    now: Timestamp,
) -> Vec<u8> {
    let Received::RetryRequest(request) =
        device.receive(&file.hex(&format!("{p}.bytes")), None, now).unwrap()
    else {
        panic!("expected a retry request")
    };
    let mut rng = file.replay(&format!("{answer}."));
    let sent = device.answer_retry(&mut rng, &request, now).unwrap();
    rng.finish();
    assert_eq!(sent.message_id[..], *id);
    assert!(sent.body.is_none());
    assert_eq!(sent.envelope.bytes, file.hex(&format!("{answer}.bytes")));
    sent.envelope.bytes
}

fn redelivered(
    device: &mut Device,
    bytes: &[u8],
    sender: DeviceAddress,
    id: &[u8],
    now: Timestamp,
) {
    match device.receive(bytes, None, now).unwrap() {
        Received::Redelivered(again) => {
            assert_eq!(again.sender, sender);
            assert_eq!(again.message_id[..], *id);
        }
        other => panic!("expected Redelivered, got {other:?}"),
    }
}

pub(crate) fn retry(file: &File) {
    let start = time(file, "time");
    let mut s0 = device(file, "s0", 0);
    let mut r0 = device(file, "r0", 1);
    let mut g0 = device(file, "g0", 1);
    for (dev, account, name) in
        [(&s0, 60, "lists.account60"), (&r0, 70, "lists.account70"), (&g0, 80, "lists.account80")]
    {
        assert_eq!(dev.device_list(AccountId(account)).unwrap().signed_bytes(), file.hex(name));
    }
    s0.process_device_list(&file.hex("lists.account70"), start).unwrap();
    s0.process_device_list(&file.hex("lists.account80"), start).unwrap();
    r0.process_device_list(&file.hex("lists.account60"), start).unwrap();
    g0.process_device_list(&file.hex("lists.account60"), start).unwrap();
    let backup = r0.to_bytes();

    // hello, reply and lost: a session s0 has heard back on.
    let send = |from: &mut Device, to: AccountId, p: &str, bundles: &[PrekeyBundle]| {
        let now = time(file, &format!("{p}.time"));
        let payload = file.hex(&format!("{p}.payload"));
        let mut rng = file.replay(&format!("{p}."));
        let sent = from.encrypt_fanout(&mut rng, &[to], bundles, &payload, now).unwrap();
        rng.finish();
        assert_eq!(sent.envelopes[0].bytes, file.hex(&format!("{p}.bytes")));
        assert_eq!(sent.message_id[..], file.hex(&format!("{p}.message_id")));
        sent.envelopes[0].bytes.clone()
    };
    let bundle = PrekeyBundle::try_from(&file.hex("r0.bundle")[..]).unwrap();
    let hello = send(&mut s0, AccountId(70), "hello", &[bundle]);
    let got = read(&mut r0, &hello, None, time(file, "hello.time"));
    assert_eq!(got, (file.hex("hello.payload"), Conversation::Direct));
    let reply = send(&mut r0, AccountId(60), "reply", &[]);
    let got = read(&mut s0, &reply, None, time(file, "reply.time"));
    assert_eq!(got, (file.hex("reply.payload"), Conversation::Direct));
    let lost = send(&mut s0, AccountId(70), "lost", &[]);
    let lost_id = file.hex("lost.message_id");

    // r0, restored from before the session, asks; the answer is read under lost's id.
    let mut r0 = Device::from_bytes(&backup).unwrap();
    let failure = r0.receive_or_retry(&lost, None, time(file, "request1.time")).unwrap_err();
    assert_eq!(failure.retry.unwrap().to_bytes(), file.hex("request1.bytes"));
    check_request(file, "request1", r0.public_identity());
    let now = time(file, "answer1.time");
    let answer1 = answer(file, &mut s0, ("request1", "answer1"), &lost_id, now);
    match r0.receive(&answer1, None, now).unwrap() {
        Received::Message(message) => {
            assert_eq!(message.message_id[..], lost_id);
            assert_eq!(message.payload.as_slice(), file.hex("lost.payload"));
        }
        other => panic!("expected a message, got {other:?}"),
    }

    // lost again: a second request, whose answer r0 has delivered.
    let failure = r0.receive_or_retry(&lost, None, time(file, "request2.time")).unwrap_err();
    assert_eq!(failure.retry.unwrap().to_bytes(), file.hex("request2.bytes"));
    check_request(file, "request2", r0.public_identity());
    let now = time(file, "answer2.time");
    let answer2 = answer(file, &mut s0, ("request2", "answer2"), &lost_id, now);
    redelivered(&mut r0, &answer2, s0.address(), &lost_id, now);
    // request1 again is a replay: it verifies, but starts no session and draws nothing.
    let Received::RetryRequest(replayed) =
        s0.receive(&file.hex("request1.bytes"), None, now).unwrap()
    else {
        panic!("expected a retry request")
    };
    let mut rng = Replay::new(Vec::new());
    assert!(matches!(s0.answer_retry(&mut rng, &replayed, now), Err(RetryError::Replayed)));

    // The group: g0 reads the group message before the distribution.
    let now = time(file, "group.time");
    let mut rng = named(file, &["group.id"]);
    let group = s0.create_group(&mut rng, &[AccountId(80)]).unwrap();
    rng.finish();
    let membership = group.membership_digest(&[AccountId(60), AccountId(80)]);
    assert_eq!(membership[..], file.hex("membership.digest"));
    let bundle = PrekeyBundle::try_from(&file.hex("g0.bundle")[..]).unwrap();
    let mut rng = first_group_send_draws(file, "group_message");
    let payload = file.hex("group_message.payload");
    let sent = s0.encrypt_group(&mut rng, group, &[bundle], &payload, now).unwrap();
    rng.finish();
    assert_eq!(sent.distribution[0].bytes, file.hex("distribution.bytes"));
    assert_eq!(sent.message, file.hex("group_message.bytes"));
    let message_id = file.hex("group_message.message_id");
    let now = time(file, "group_request.time");
    let failure = g0.receive_or_retry(&sent.message, None, now).unwrap_err();
    assert_eq!(failure.retry.unwrap().to_bytes(), file.hex("group_request.bytes"));
    check_request(file, "group_request", g0.public_identity());
    let now = time(file, "group_copy.time");
    let copy = answer(file, &mut s0, ("group_request", "group_copy"), &message_id, now);
    match g0.receive(&copy, None, now).unwrap() {
        Received::Group(message) => {
            assert_eq!((message.group, message.sender), (group, s0.address()));
            assert_eq!(message.message_id[..], message_id);
            assert_eq!(message.membership_digest, membership);
            assert_eq!(message.payload.as_slice(), payload);
        }
        other => panic!("expected a group message, got {other:?}"),
    }
    let now = time(file, "late.time");
    match g0.receive(&sent.distribution[0].bytes, None, now).unwrap() {
        Received::SenderKey(key) => assert!(key.taken && key.group == group),
        other => panic!("expected a sender key, got {other:?}"),
    }
    redelivered(&mut g0, &sent.message, s0.address(), &message_id, now);
}
