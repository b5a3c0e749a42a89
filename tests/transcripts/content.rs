//! Fan-out (§10), blobs (§13), history (§12) and the security code (§8).

use std::io::Cursor;

use multidevice::blob::{self, MediaType};
use multidevice::{
    AccountId, Conversation, Received, SecurityCode, Timestamp, build_history, import_history,
};

use crate::common::*;
use crate::spec::{self, label};
use crate::vector::{Kind, Tape, Vector};

/// Links `companion` to `primary` with the direct API at `time`; returns the new list's bytes.
fn link(primary: &mut Dev, companion: &mut Dev, time: u64) -> Vec<u8> {
    let approval = primary
        .device
        .approve_companion(companion.device.public_identity(), Timestamp(time))
        .unwrap();
    let signed = companion.device.countersign_approval(&approval).unwrap();
    let list = primary.device.add_companion(&signed, Timestamp(time)).unwrap().to_bytes();
    companion.device.process_device_list(&list, Timestamp(time)).unwrap();
    list
}

/// One envelope of a fan-out whose session is new: setup from the recipient's signed prekey 1
/// and one-time prekey 1, then the message.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_first_envelope(
    v: &mut Vector,
    p: &str,
    sender: &Dev,
    recipient: &Dev,
    kind: u8,
    ek: &[u8; 32],
    nonce: &[u8; 12],
    plaintext: &[u8],
) -> (spec::Setup, Chain, Vec<u8>, Vec<u8>) {
    record_envelope_on_new_session(v, p, sender, recipient, Some(1), kind, ek, nonce, plaintext)
}

/// One envelope on a session set up just before it from the recipient's signed prekey 1 and,
/// if `opk` names one, that one-time prekey: setup, then the message. Returns the setup, the
/// sending chain after the message, the prekey fields and the message bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_envelope_on_new_session(
    v: &mut Vector,
    p: &str,
    sender: &Dev,
    recipient: &Dev,
    opk: Option<u32>,
    kind: u8,
    ek: &[u8; 32],
    nonce: &[u8; 12],
    plaintext: &[u8],
) -> (spec::Setup, Chain, Vec<u8>, Vec<u8>) {
    let setup = record_setup(v, &format!("{p}.setup"), sender, ek, recipient, opk);
    let mut chain =
        Chain { ratchet_public: spec::x25519_public(ek), chain_key: setup.chain_key, counter: 0 };
    let prekey = spec::prekey_fields(&sender.identity.public, &chain.ratchet_public, 1, opk);
    let description = match opk {
        Some(id) => format!("PrekeyFields: PublicIdentity_sender || base_key || 1 || 0x01 || {id}"),
        None => "PrekeyFields: PublicIdentity_sender || base_key || 1 || 0x00 (no one-time prekey)"
            .to_owned(),
    };
    v.mid(&format!("{p}.prekey_fields"), &prekey, &description);
    let bytes = record_message(
        v,
        p,
        kind,
        &sender.addr(),
        &recipient.addr(),
        Some(&prekey),
        &setup.session_id,
        &setup.ad,
        &mut chain,
        0,
        nonce,
        plaintext,
    );
    (setup, chain, prekey, bytes)
}

/// Account 10 (primary a0, companion a1) sends to account 20 (primary b0): an inline payload,
/// then one above the inline threshold as a shared body. a1 gets own-device copies.
pub(crate) fn fanout() -> Vector {
    let seed = [0x06; 32];
    let mut v = Vector::new(
        "fanout",
        "Client fan-out from a primary (account 10) to another account's primary (account 20) and to its own companion: an inline payload, then a 600-byte payload as a key-committing shared body; Direct and OwnCopy envelopes on new sessions.",
        "docs/PROTOCOL.md §4-§6, §9, §10",
        seed,
    );
    let mut tape = Tape::new(seed);
    v.int(Kind::Input, "time", T0, "the time of every step (Unix seconds)");
    let mut a0 = new_device(&mut v, &mut tape, "a0", addr(10, 0), T0, 0, false);
    let mut a1 = new_device(&mut v, &mut tape, "a1", addr(10, 99), T0, 1, false);
    let mut b0 = new_device(&mut v, &mut tape, "b0", addr(20, 0), T0, 1, false);
    let list_a = link(&mut a0, &mut a1, T0);
    let list_b = b0.device.device_list(b0.device.account()).unwrap().signed_bytes().to_vec();
    let now = Timestamp(T0);
    a0.device.process_device_list(&list_b, now).unwrap();
    a1.device.process_device_list(&list_b, now).unwrap();
    b0.device.process_device_list(&list_a, now).unwrap();
    v.input("lists.account10", &list_a, "account 10's signed device list, version 2 (a0 and a1 at 10:1), as every device processed it");
    v.input("lists.account20", &list_b, "account 20's signed device list, version 1 (b0 only)");
    let digest = list_digest(&list_a);
    v.mid(
        "lists.account10.digest",
        &digest,
        "digest of account 10's list: what a0 announces in every Inner",
    );
    let bundle_b0 = b0.device.prekey_upload().bundle(Some(0));
    let bundle_a1 = a1.device.prekey_upload().bundle(Some(0));
    v.output(
        "b0.bundle",
        &bundle_b0.to_bytes(),
        &spec_bundle(&b0, Some(1)),
        "b0's PrekeyBundle (one-time prekey 1)",
    );
    v.output(
        "a1.bundle",
        &bundle_a1.to_bytes(),
        &spec_bundle(&a1, Some(1)),
        "a1's PrekeyBundle at its linked address 10:1 (one-time prekey 1)",
    );
    let bundles = [bundle_b0, bundle_a1];

    // Inline.
    let payload = b"Hello account 20: an inline fan-out payload.";
    let sent =
        a0.device.encrypt_fanout(&mut tape, &[AccountId(20)], &bundles, payload, now).unwrap();
    assert!(sent.body.is_none() && sent.skipped.is_empty());
    assert_eq!(
        sent.envelopes.iter().map(|e| e.recipient).collect::<Vec<_>>(),
        [b0.address(), a1.address()]
    );
    let draws = v.draws(
        &mut tape,
        &[
            ("inline.message_id", 16, "the message id, the same in every envelope"),
            (
                "inline.to_b0.base_key_secret",
                32,
                "X25519 secret of the base key of a0's new session with b0",
            ),
            ("inline.to_b0.nonce", 12, "header nonce of the envelope for b0"),
            (
                "inline.to_a1.base_key_secret",
                32,
                "X25519 secret of the base key of a0's new session with a1",
            ),
            ("inline.to_a1.nonce", 12, "header nonce of the envelope for a1"),
        ],
    );
    v.input("inline.payload", payload, "the fan-out payload (at most 512 bytes: inline)");
    assert_eq!(draws[0].as_slice(), sent.message_id.as_slice());
    let id = draws[0].clone();
    let draws = &draws[1..];
    let content = spec::cat(&[&[0x01], payload]);
    let direct = spec::cat(&[&spec::be64(2), &digest, &id, &content]);
    v.mid(
        "inline.inner_direct",
        &direct,
        "Inner (Direct): list version (u64) || list digest || message id || Content (0x01 || payload)",
    );
    let own = spec::cat(&[&spec::be64(2), &digest, &id, &[1], &spec::be64(20), &content]);
    v.mid(
        "inline.inner_own_copy",
        &own,
        "Inner (OwnCopy): list version || list digest || message id || n = 1 || account 20 (u64) || Content",
    );
    let (setup_b0, mut chain_b0, prekey_b0, expected) = record_first_envelope(
        &mut v,
        "inline.to_b0",
        &a0,
        &b0,
        0x01,
        &array(&draws[0]),
        &array(&draws[1]),
        &direct,
    );
    v.output(
        "inline.to_b0.bytes",
        &sent.envelopes[0].bytes,
        &expected,
        "envelope for b0: PrekeyMessage, kind 0x01 Direct",
    );
    let (setup_a1, mut chain_a1, prekey_a1, expected) = record_first_envelope(
        &mut v,
        "inline.to_a1",
        &a0,
        &a1,
        0x02,
        &array(&draws[2]),
        &array(&draws[3]),
        &own,
    );
    v.output(
        "inline.to_a1.bytes",
        &sent.envelopes[1].bytes,
        &expected,
        "envelope for a1: PrekeyMessage, kind 0x02 OwnCopy",
    );
    assert_session(
        &session_state(&a0.device, b0.address()),
        &setup_b0.session_id,
        &setup_b0.ad,
        &setup_b0.root_key,
        Some(&chain_b0),
    );
    assert_session(
        &session_state(&a0.device, a1.address()),
        &setup_a1.session_id,
        &setup_a1.ad,
        &setup_a1.root_key,
        Some(&chain_a1),
    );
    receive(&mut b0, &sent.envelopes[0].bytes, None, payload, Conversation::Direct);
    receive(
        &mut a1,
        &sent.envelopes[1].bytes,
        None,
        payload,
        Conversation::OwnCopy { to: vec![AccountId(20)] },
    );

    // Shared body.
    let payload: Vec<u8> = (0..600u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let sent =
        a0.device.encrypt_fanout(&mut tape, &[AccountId(20)], &bundles, &payload, now).unwrap();
    let draws = v.draws(
        &mut tape,
        &[
            ("body.message_id", 16, "the message id, the same in every envelope"),
            ("body.content_key", 32, "the fresh content key"),
            ("body.to_b0.nonce", 12, "header nonce of the envelope for b0"),
            ("body.to_a1.nonce", 12, "header nonce of the envelope for a1"),
        ],
    );
    v.input(
        "body.payload",
        &payload,
        "the fan-out payload: 600 bytes, byte i = i mod 251 (above 512: a shared body)",
    );
    assert_eq!(draws[0].as_slice(), sent.message_id.as_slice());
    let id = draws[0].clone();
    let draws = &draws[1..];
    let key = array::<32>(&draws[0]);
    let okm = spec::split32(&spec::hkdf(&[0u8; 32], &key, label::KDF_BODY, 64));
    v.mid(
        "body.cipher_key",
        &okm[0],
        "bytes 0..32 of HKDF(salt = 0^32, ikm = content key, info = \"multidevice/v1/kdf/body\")",
    );
    v.mid("body.commitment", &okm[1], "bytes 32..64 of that HKDF output: the key commitment");
    let sealed = spec::seal(&okm[0], &[0u8; 12], label::FANOUT_BODY_AAD, &payload);
    v.mid(
        "body.sealed",
        &sealed,
        "AES-256-GCM(cipher key, nonce 0^12, aad \"multidevice/v1/fanout-body\", payload) || tag",
    );
    let body = spec::cat(&[&[0x01, 0x30], &okm[1], &sealed]);
    v.output(
        "body.bytes",
        sent.body.as_deref().unwrap(),
        &body,
        "Body: 0x01 || 0x30 || commitment || sealed",
    );
    let body_digest = spec::sha256(&body);
    v.mid("body.digest", &body_digest, "SHA-256(Body)");
    let content = spec::cat(&[&[0x02], &key, &body_digest]);
    let direct = spec::cat(&[&spec::be64(2), &digest, &id, &content]);
    v.mid("body.inner_direct", &direct, "Inner (Direct): list version || list digest || message id || Content (0x02 || content key || SHA-256(Body))");
    let own = spec::cat(&[&spec::be64(2), &digest, &id, &[1], &spec::be64(20), &content]);
    v.mid(
        "body.inner_own_copy",
        &own,
        "Inner (OwnCopy): list version || list digest || message id || 1 || account 20 || Content",
    );
    // The second message on each session: still unanswered, so still a prekey message.
    let expected = record_message(
        &mut v,
        "body.to_b0",
        0x01,
        &a0.addr(),
        &b0.addr(),
        Some(&prekey_b0),
        &setup_b0.session_id,
        &setup_b0.ad,
        &mut chain_b0,
        0,
        &array(&draws[1]),
        &direct,
    );
    v.output(
        "body.to_b0.bytes",
        &sent.envelopes[0].bytes,
        &expected,
        "envelope for b0: PrekeyMessage (counter 1), kind 0x01 Direct",
    );
    let expected = record_message(
        &mut v,
        "body.to_a1",
        0x02,
        &a0.addr(),
        &a1.addr(),
        Some(&prekey_a1),
        &setup_a1.session_id,
        &setup_a1.ad,
        &mut chain_a1,
        0,
        &array(&draws[2]),
        &own,
    );
    v.output(
        "body.to_a1.bytes",
        &sent.envelopes[1].bytes,
        &expected,
        "envelope for a1: PrekeyMessage (counter 1), kind 0x02 OwnCopy",
    );
    receive(
        &mut b0,
        &sent.envelopes[0].bytes,
        sent.body.as_deref(),
        &payload,
        Conversation::Direct,
    );
    receive(
        &mut a1,
        &sent.envelopes[1].bytes,
        sent.body.as_deref(),
        &payload,
        Conversation::OwnCopy { to: vec![AccountId(20)] },
    );
    tape.finish();
    v
}

fn receive(
    dev: &mut Dev,
    bytes: &[u8],
    body: Option<&[u8]>,
    payload: &[u8],
    conversation: Conversation,
) {
    match dev.device.receive(bytes, body, Timestamp(T0)).unwrap() {
        Received::Message(message) => {
            assert_eq!(message.payload.as_slice(), payload);
            assert_eq!(message.conversation, conversation);
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The blob format of §13, version 1: header, then chunks of 65,536 bytes, each sealed under
/// `nonce prefix || index || final`. **The one place the blob format lives in the vectors**:
/// when the format changes, change this function and regenerate (see tests/transcripts.rs).
fn record_blob(
    v: &mut Vector,
    p: &str,
    key: &[u8; 32],
    prefix: &[u8; 7],
    plaintext: &[u8],
) -> Vec<u8> {
    let okm = spec::hkdf(&[0u8; 32], key, b"multidevice/v1/kdf/blob", 64);
    let (cipher_key, commitment) = okm.split_at(32);
    let cipher_key: [u8; 32] = array(cipher_key);
    v.mid(
        &format!("{p}.cipher_key"),
        &cipher_key,
        "first 32 bytes of HKDF-SHA256(salt 0^32, blob key, \"multidevice/v1/kdf/blob\")",
    );
    v.mid(&format!("{p}.commitment"), commitment, "the last 32 bytes of that HKDF output");
    let header = spec::cat(&[&[2], &65_536u32.to_be_bytes(), prefix, commitment]);
    v.mid(
        &format!("{p}.header"),
        &header,
        "header: version (2) || chunk size (u32 65536) || nonce prefix (7) || commitment (32)",
    );
    let mut blob = header.clone();
    let chunks: Vec<&[u8]> =
        if plaintext.is_empty() { vec![&[]] } else { plaintext.chunks(65_536).collect() };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let nonce: [u8; 12] = array(&spec::cat(&[
            prefix,
            &u32::try_from(i).unwrap().to_be_bytes(),
            &[u8::from(last)],
        ]));
        v.mid(
            &format!("{p}.chunk{i}.nonce"),
            &nonce,
            "nonce prefix || index (u32) || final (0x01 for the last chunk)",
        );
        let sealed = spec::seal(&cipher_key, &nonce, &header, chunk);
        v.mid(
            &format!("{p}.chunk{i}.sealed"),
            &sealed,
            "AES-256-GCM(cipher key, nonce, aad = header, chunk plaintext) || tag",
        );
        blob.extend_from_slice(&sealed);
    }
    v.mid(
        &format!("{p}.digest"),
        &spec::sha256(&blob),
        "SHA-256 of the whole blob (header || every sealed chunk)",
    );
    blob
}

fn descriptor(key: &[u8; 32], len: u64, digest: &[u8; 32], media_type: &str) -> Vec<u8> {
    spec::cat(&[
        &[1],
        key,
        &spec::be64(len),
        digest,
        &[u8::try_from(media_type.len()).unwrap()],
        media_type.as_bytes(),
    ])
}

/// A blob of 65,536 + 100 bytes: one full chunk and a final one.
pub(crate) fn blob() -> Vector {
    let seed = [0x07; 32];
    let mut v = Vector::new(
        "blob",
        "A media blob across a chunk boundary (65,636 bytes: a full 64 KiB chunk and a 100-byte final chunk) and its descriptor. Regenerate after a blob format change: MULTIDEVICE_REGENERATE_VECTORS=1 cargo test --test transcripts.",
        "docs/PROTOCOL.md §13",
        seed,
    );
    let mut tape = Tape::new(seed);
    let plaintext: Vec<u8> = (0..65_636u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
    v.input("plaintext", &plaintext, "the blob plaintext: 65,636 bytes, byte i = i mod 251");
    let media_type = "image/jpeg";
    v.text(Kind::Input, "media_type", media_type, "the media type in the descriptor");
    let (ciphertext, desc) =
        blob::encrypt_blob(&mut tape, &plaintext, MediaType::new(media_type).unwrap()).unwrap();
    let draws = v.draws(
        &mut tape,
        &[
            ("blob.key", 32, "the one-time blob key"),
            ("blob.nonce_prefix", 7, "the per-blob nonce prefix"),
        ],
    );
    let key = array::<32>(&draws[0]);
    let expected = record_blob(&mut v, "blob", &key, &array(&draws[1]), &plaintext);
    assert_eq!(ciphertext, expected, "blob bytes");
    v.hex(Kind::Output, "blob.sha256_of_bytes", &spec::sha256(&ciphertext), "SHA-256 of the blob bytes the crate wrote (= blob.digest; the blob is header || chunk0.sealed || chunk1.sealed)");
    let spec_descriptor = descriptor(&key, 65_636, &spec::sha256(&expected), media_type);
    v.output("descriptor.bytes", &desc.to_bytes(), &spec_descriptor, "BlobDescriptor: version (1) || key || plaintext length (u64) || SHA-256 of the blob || media type length (u8) || media type");
    assert_eq!(blob::decrypt_blob(&desc, &ciphertext).unwrap().as_slice(), plaintext);
    tape.finish();
    v
}

/// A primary (account 30) sends its new companion a history of three records.
pub(crate) fn history() -> Vector {
    let seed = [0x08; 32];
    let mut v = Vector::new(
        "history",
        "History sync: three records framed and encrypted as a blob, the descriptor sent by the primary to its newly linked companion in a message of kind 0x03 History on a new session, imported by the companion.",
        "docs/PROTOCOL.md §4-§6, §12, §13",
        seed,
    );
    let mut tape = Tape::new(seed);
    v.int(Kind::Input, "time", T0, "the time the companion is linked");
    let mut primary = new_device(&mut v, &mut tape, "primary", addr(30, 0), T0, 0, false);
    let mut companion = new_device(&mut v, &mut tape, "companion", addr(30, 99), T0, 1, false);
    let list = link(&mut primary, &mut companion, T0);
    v.input("list", &list, "account 30's list, version 2, naming the companion at 30:1");
    let digest = list_digest(&list);
    v.mid("list.digest", &digest, "its digest, announced in the history message");
    let records: [&[u8]; 3] = [b"alice: are you there?", b"bob: yes", b"alice: see you at noon"];
    let mut framed = Vec::new();
    for (i, record) in records.iter().enumerate() {
        v.input(&format!("record{i}"), record, "a history record");
        framed.extend_from_slice(&u32::try_from(record.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(record);
    }
    v.mid("framed", &framed, "the blob plaintext: each record as length (u32) || bytes");
    let mut blob_bytes = Vec::new();
    let desc = build_history(&mut tape, records, &mut blob_bytes).unwrap();
    let draws = v.draws(
        &mut tape,
        &[
            ("blob.key", 32, "the one-time blob key"),
            ("blob.nonce_prefix", 7, "the per-blob nonce prefix"),
        ],
    );
    let key = array::<32>(&draws[0]);
    let expected = record_blob(&mut v, "blob", &key, &array(&draws[1]), &framed);
    v.output("blob.bytes", &blob_bytes, &expected, "the history blob");
    let media_type = "application/x-multidevice-history";
    let spec_descriptor = descriptor(
        &key,
        u64::try_from(framed.len()).unwrap(),
        &spec::sha256(&expected),
        media_type,
    );
    v.output(
        "descriptor.bytes",
        &desc.to_bytes(),
        &spec_descriptor,
        "BlobDescriptor of the history blob",
    );

    let bundle = companion.device.prekey_upload().bundle(Some(0));
    v.output(
        "companion.bundle",
        &bundle.to_bytes(),
        &spec_bundle(&companion, Some(1)),
        "the companion's PrekeyBundle at 30:1",
    );
    v.int(Kind::Input, "history.time", T0 + 10, "the time the primary sends the history");
    let envelope = primary
        .device
        .encrypt_history(&mut tape, companion.address(), &desc, &[bundle], Timestamp(T0 + 10))
        .unwrap();
    let draws = v.draws(
        &mut tape,
        &[
            ("history.message_id", 16, "the message id"),
            (
                "history.base_key_secret",
                32,
                "X25519 secret of the base key of the primary's new session with the companion",
            ),
            ("history.nonce", 12, "the header nonce"),
        ],
    );
    let id = draws[0].clone();
    let draws = &draws[1..];
    let inner = spec::cat(&[&spec::be64(2), &digest, &id, &spec_descriptor]);
    v.mid(
        "history.inner",
        &inner,
        "Inner (History): list version (u64) || list digest || message id || BlobDescriptor",
    );
    let (_, _, _, expected) = record_first_envelope(
        &mut v,
        "history",
        &primary,
        &companion,
        0x03,
        &array(&draws[0]),
        &array(&draws[1]),
        &inner,
    );
    v.output("history.bytes", &envelope.bytes, &expected, "PrekeyMessage, kind 0x03 History");
    let Received::History(received) =
        companion.device.receive(&envelope.bytes, None, Timestamp(T0 + 10)).unwrap()
    else {
        panic!("expected history")
    };
    let mut imported = Vec::new();
    import_history(received.descriptor, Cursor::new(&blob_bytes), |r| imported.push(r.to_vec()))
        .unwrap();
    assert_eq!(imported, records.map(<[u8]>::to_vec));
    tape.finish();
    v
}

/// The security code between accounts 42 and 7 (ordered by id: 7 first).
pub(crate) fn security_code() -> Vector {
    let seed = [0x09; 32];
    let mut v = Vector::new(
        "security_code",
        "The 60-digit security code and its scannable form between accounts 42 and 7, from their primaries' identities.",
        "docs/PROTOCOL.md §8 (Security code)",
        seed,
    );
    let mut tape = Tape::new(seed);
    let mut alice = new_device(&mut v, &mut tape, "alice", addr(42, 0), T0, 0, false);
    let bob = new_device(&mut v, &mut tape, "bob", addr(7, 0), T0, 0, false);
    let mut digits = String::new();
    for (p, account, dev) in [("half7", 7u64, &bob), ("half42", 42, &alice)] {
        let (d0, d1, d1024, half) = spec::security_code_half(account, &dev.identity.iks);
        v.mid(
            &format!("{p}.d0_input"),
            &spec::labelled(label::HASH_SECURITY_CODE, &[&spec::be64(account), &dev.identity.iks]),
            "\"multidevice/v1/hash/security-code\" || 0x00 || account id (u64) || IKs_pub",
        );
        v.mid(&format!("{p}.d0"), &d0, "d_0 = SHA-256(d0_input)");
        v.mid(&format!("{p}.d1"), &d1, "d_1 = SHA-256(d_0 || IKs_pub)");
        v.mid(
            &format!("{p}.d1024"),
            &d1024,
            "d_1024, after 1,024 rounds of d_{i+1} = SHA-256(d_i || IKs_pub)",
        );
        v.text(
            Kind::Intermediate,
            &format!("{p}.digits"),
            &half,
            "six 5-byte big-endian chunks of d_1024, each mod 100,000, as five digits",
        );
        digits.push_str(&half);
    }
    let bob_list = bob.device.device_list(bob.device.account()).unwrap().signed_bytes().to_vec();
    alice.device.process_device_list(&bob_list, Timestamp(T0)).unwrap();
    let code = alice.device.security_code(AccountId(7)).unwrap();
    let direct = SecurityCode::new(
        (AccountId(42), alice.device.public_identity()),
        (AccountId(7), bob.device.public_identity()),
    );
    assert!(code == direct);
    assert_eq!(code.digits(), digits);
    v.text(
        Kind::Output,
        "code.digits",
        code.digits(),
        "the 60 digits: account 7's half, then account 42's (ordered by account id)",
    );
    let scannable =
        spec::cat(&[&[1], &spec::be64(7), &bob.identity.iks, &spec::be64(42), &alice.identity.iks]);
    v.output(
        "code.scannable",
        code.scannable(),
        &scannable,
        "0x01 || id_1 || IKs_1 || id_2 || IKs_2 (ordered by account id)",
    );
    tape.finish();
    v
}
