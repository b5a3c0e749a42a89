//! Device lists (§8) and linking (§11): the companion signatures, the signed list, the QR flow
//! and the pairing-code flow.

use multidevice::{
    CompanionPairing, PairingCode, PrimaryPairing, QrLinkApproval, QrLinkOffer, SignedDeviceList,
    Timestamp,
};

use crate::common::*;
use crate::spec::{self, label};
use crate::vector::{Kind, Tape, Vector};

/// A companion's signatures (§8): records their inputs and values, returns the spec's
/// `SignedDeviceIdentity` encoding.
fn record_companion_signatures(
    v: &mut Vector,
    p: &str,
    primary: &Dev,
    companion: &Dev,
    metadata: &[u8],
    account_signature: &[u8; 64],
    device_signature: &[u8; 64],
) -> Vec<u8> {
    v.mid(
        &format!("{p}.linking_metadata"),
        metadata,
        "LinkingMetadata (24): account id (u64) || device id (u32) || key index (u32) || timestamp (u64)",
    );
    let account_message =
        spec::labelled(label::SIG_ACCOUNT, &[metadata, &companion.identity.public]);
    v.mid(
        &format!("{p}.account_sig_message"),
        &account_message,
        "bytes the primary signs: \"multidevice/v1/sig/account-signature\" || 0x00 || LinkingMetadata || PublicIdentity_companion",
    );
    v.output(
        &format!("{p}.account_signature"),
        account_signature,
        &spec::sign(&primary.identity.signing_seed, &account_message),
        "account_sig: Ed25519 by the primary's IKs",
    );
    let device_message = spec::labelled(
        label::SIG_DEVICE,
        &[metadata, &companion.identity.public, &primary.identity.iks],
    );
    v.mid(
        &format!("{p}.device_sig_message"),
        &device_message,
        "bytes the companion signs: \"multidevice/v1/sig/device-signature\" || 0x00 || LinkingMetadata || PublicIdentity_companion || account IKs_pub",
    );
    v.output(
        &format!("{p}.device_signature"),
        device_signature,
        &spec::sign(&companion.identity.signing_seed, &device_message),
        "device_sig: Ed25519 by the companion's IKs",
    );
    spec::cat(&[
        &[0x01, 0x21],
        metadata,
        &companion.identity.public,
        account_signature,
        device_signature,
    ])
}

/// A signed list (§8): records body, signature input, signature, digest and bytes.
#[allow(clippy::too_many_arguments)]
fn record_list(
    v: &mut Vector,
    p: &str,
    primary: &Dev,
    list: &SignedDeviceList,
    account: u64,
    version: u64,
    issued_at: u64,
    previous: &[u8; 32],
    companions: &[(u32, u32, [u8; 32], Vec<u8>)],
) -> [u8; 32] {
    let mut entries = vec![(0, 0, primary.identity.fingerprint)];
    entries.extend(companions.iter().map(|c| (c.0, c.1, c.2)));
    let body =
        spec::list_body(account, &primary.identity.public, version, issued_at, previous, &entries);
    v.mid(
        &format!("{p}.body"),
        &body,
        "ListBody: 0x01 || 0x20 || account id || account PublicIdentity || version || issued_at || previous digest || count || count x (device id || key index || fingerprint)",
    );
    let message = spec::labelled(label::SIG_DEVICE_LIST, &[&body]);
    v.mid(
        &format!("{p}.sig_message"),
        &message,
        "bytes list_sig signs: \"multidevice/v1/sig/device-list\" || 0x00 || ListBody",
    );
    let signature = spec::sign(&primary.identity.signing_seed, &message);
    v.mid(&format!("{p}.signature"), &signature, "list_sig: Ed25519 by the primary's IKs");
    let digest = spec::h(label::HASH_DEVICE_LIST, &[&body]);
    let verified = list.verify().unwrap();
    v.output(
        &format!("{p}.digest"),
        &verified.digest(),
        &digest,
        "digest = H(\"multidevice/v1/hash/device-list\", ListBody)",
    );
    let mut expected = spec::cat(&[&body, &signature]);
    for companion in companions {
        expected.extend_from_slice(&companion.3);
    }
    v.output(
        &format!("{p}.bytes"),
        &list.to_bytes(),
        &expected,
        "SignedDeviceList: ListBody || list_sig || one SignedDeviceIdentity per companion",
    );
    digest
}

/// A primary (account 5) signs in two companions; the lists of versions 1, 2 and 3.
pub(crate) fn device_list() -> Vector {
    let seed = [0x03; 32];
    let mut v = Vector::new(
        "device_list",
        "A primary links two companions through approve_companion, countersign_approval and add_companion: every signature input and signature, the lists of versions 1 to 3 and their digests.",
        "docs/PROTOCOL.md §8",
        seed,
    );
    let mut tape = Tape::new(seed);
    let account = 5;
    let mut primary = new_device(&mut v, &mut tape, "primary", addr(account, 0), T0, 0, false);
    v.int(
        Kind::Input,
        "list1.issued_at",
        T0,
        "creation time of the primary, which signs list version 1 at once",
    );
    let list1 = SignedDeviceList::try_from(
        primary.device.device_list(primary.device.account()).unwrap().signed_bytes(),
    )
    .unwrap();
    let mut previous =
        record_list(&mut v, "list1", &primary, &list1, account, 1, T0, &[0u8; 32], &[]);
    let mut companions = Vec::new();
    for (n, time) in [(1u32, T0 + 60), (2, T0 + 120)] {
        let p = format!("companion{n}");
        let mut companion = new_device(&mut v, &mut tape, &p, addr(account, 99), T0, 0, false);
        v.int(
            Kind::Input,
            &format!("{p}.approved_at"),
            time,
            "the time the primary approves and adds the companion",
        );
        let approval = primary
            .device
            .approve_companion(companion.device.public_identity(), Timestamp(time))
            .unwrap();
        let signed = companion.device.countersign_approval(&approval).unwrap();
        let metadata = spec::linking_metadata(account, n, n, time);
        let expected = record_companion_signatures(
            &mut v,
            &p,
            &primary,
            &companion,
            &metadata,
            &approval.account_signature,
            &signed.device_signature,
        );
        v.output(&format!("{p}.signed_device_identity"), &signed.to_bytes(), &expected, "SignedDeviceIdentity (282): 0x01 || 0x21 || LinkingMetadata || PublicIdentity || account_sig || device_sig");
        let list = primary.device.add_companion(&signed, Timestamp(time)).unwrap();
        companions.push((n, n, companion.identity.fingerprint, expected));
        let version = u64::from(n) + 1;
        v.int(Kind::Intermediate, &format!("list{version}.version"), version, "list version");
        previous = record_list(
            &mut v,
            &format!("list{version}"),
            &primary,
            &list,
            account,
            version,
            time,
            &previous,
            &companions,
        );
        companion.device.process_device_list(&list.to_bytes(), Timestamp(time)).unwrap();
    }
    tape.finish();
    v
}

/// The approval and confirmation messages of §11 under `secret`: records them and checks the
/// crate's bytes.
#[allow(clippy::too_many_arguments)]
fn record_link_messages(
    v: &mut Vector,
    primary: &Dev,
    companion: &Dev,
    secret: &[u8; 32],
    reference: &[u8; 16],
    metadata: &[u8],
    approval: &[u8],
    confirmation: &[u8],
) {
    let account_message =
        spec::labelled(label::SIG_ACCOUNT, &[metadata, &companion.identity.public]);
    let account_signature = spec::sign(&primary.identity.signing_seed, &account_message);
    v.mid("approval.linking_metadata", metadata, "LinkingMetadata the primary assigns");
    v.mid("approval.account_sig_message", &account_message, "\"multidevice/v1/sig/account-signature\" || 0x00 || LinkingMetadata || PublicIdentity_companion");
    let body = spec::cat(&[
        &[0x01, 0x41],
        reference,
        metadata,
        &primary.identity.public,
        &account_signature,
    ]);
    v.mid(
        "approval.body",
        &body,
        "0x01 || 0x41 || reference || LinkingMetadata || account PublicIdentity || account_sig",
    );
    let mac_input = spec::labelled(label::MAC_LINK_APPROVAL, &[&body]);
    v.mid("approval.mac_input", &mac_input, "\"multidevice/v1/mac/link-approval\" || 0x00 || body");
    let mac = spec::hmac(secret, &mac_input);
    v.mid("approval.mac", &mac, "HMAC(link secret, mac_input)");
    v.output("approval.bytes", approval, &spec::cat(&[&body, &mac]), "Approval: body || mac");

    let device_message = spec::labelled(
        label::SIG_DEVICE,
        &[metadata, &companion.identity.public, &primary.identity.iks],
    );
    v.mid("confirmation.device_sig_message", &device_message, "\"multidevice/v1/sig/device-signature\" || 0x00 || LinkingMetadata || PublicIdentity_companion || account IKs_pub");
    let device_signature = spec::sign(&companion.identity.signing_seed, &device_message);
    let signed = spec::cat(&[
        &[0x01, 0x21],
        metadata,
        &companion.identity.public,
        &account_signature,
        &device_signature,
    ]);
    v.mid(
        "confirmation.signed_device_identity",
        &signed,
        "SignedDeviceIdentity the companion countersigned",
    );
    let body = spec::cat(&[&[0x01, 0x42], reference, &signed]);
    v.mid("confirmation.body", &body, "0x01 || 0x42 || reference || SignedDeviceIdentity");
    let mac_input = spec::labelled(label::MAC_LINK_CONFIRMATION, &[&body]);
    v.mid(
        "confirmation.mac_input",
        &mac_input,
        "\"multidevice/v1/mac/link-confirmation\" || 0x00 || body",
    );
    let mac = spec::hmac(secret, &mac_input);
    v.mid("confirmation.mac", &mac, "HMAC(link secret, mac_input)");
    v.output(
        "confirmation.bytes",
        confirmation,
        &spec::cat(&[&body, &mac]),
        "Confirmation: body || mac",
    );
}

/// The QR flow: a companion's offer, the primary's approval, the companion's confirmation, the
/// new list.
pub(crate) fn qr_link() -> Vector {
    let seed = [0x04; 32];
    let mut v = Vector::new(
        "qr_link",
        "Linking by QR code: the offer and its text, the primary's approval, the companion's confirmation (MACs under the link secret) and the resulting device list.",
        "docs/PROTOCOL.md §8, §11 (QR flow)",
        seed,
    );
    let mut tape = Tape::new(seed);
    let account = 7;
    let mut primary = new_device(&mut v, &mut tape, "primary", addr(account, 0), T0, 0, false);
    let mut companion = new_device(&mut v, &mut tape, "companion", addr(account, 99), T0, 0, false);
    v.int(Kind::Input, "offer.created_at", T0, "the time the companion creates the offer");
    let mut offer = QrLinkOffer::new(&mut tape, &mut companion.device, Timestamp(T0));
    let draws = v.draws(
        &mut tape,
        &[
            ("offer.reference", 16, "reference of the attempt"),
            ("offer.link_secret", 32, "the link secret"),
        ],
    );
    let (reference, secret) = (array::<16>(&draws[0]), array::<32>(&draws[1]));
    let offer_bytes = spec::cat(&[
        &[0x01, 0x40],
        &reference,
        &secret,
        &spec::be64(T0 + 60),
        &companion.identity.public,
    ]);
    v.mid("offer.bytes", &offer_bytes, "offer: 0x01 || 0x40 || reference || link secret || expires (u64, created + 60 s) || PublicIdentity_companion");
    let checksum = spec::h(label::HASH_QR_CHECKSUM, &[&offer_bytes]);
    v.mid(
        "offer.checksum",
        &checksum[..4],
        "first 4 bytes of H(\"multidevice/v1/hash/qr-checksum\", offer)",
    );
    let text = format!(
        "MULTIDEVICE://LINK/1/{}",
        spec::base32(&spec::cat(&[&offer_bytes, &checksum[..4]]))
    );
    let crate_text = offer.qr_text();
    assert_eq!(crate_text.as_str(), text, "QR text");
    v.text(
        Kind::Output,
        "offer.qr_text",
        &text,
        "\"MULTIDEVICE://LINK/1/\" || base32(offer || checksum), RFC 4648 alphabet, no padding",
    );

    let approved_at = T0 + 5;
    v.int(
        Kind::Input,
        "approval.time",
        approved_at,
        "the time the primary scans the offer and approves",
    );
    let (mut approval_state, approval) =
        QrLinkApproval::approve(&mut primary.device, &text, Timestamp(approved_at)).unwrap();
    v.int(Kind::Input, "confirmation.time", T0 + 6, "the time the companion countersigns");
    let confirmation =
        offer.accept_approval(&mut companion.device, &approval, Timestamp(T0 + 6)).unwrap();
    let metadata = spec::linking_metadata(account, 1, 1, approved_at);
    record_link_messages(
        &mut v,
        &primary,
        &companion,
        &secret,
        &reference,
        &metadata,
        &approval,
        &confirmation,
    );
    v.int(
        Kind::Input,
        "list.time",
        T0 + 7,
        "the time the primary finishes and signs list version 2",
    );
    let list =
        approval_state.finish(&mut primary.device, &confirmation, Timestamp(T0 + 7)).unwrap();
    record_new_list(&mut v, &primary, &mut companion, &list, T0 + 7);
    tape.finish();
    v
}

/// The list of version 2 a link produced, naming the countersigned companion at device 1,
/// which then processes it.
fn record_new_list(
    v: &mut Vector,
    primary: &Dev,
    companion: &mut Dev,
    list: &SignedDeviceList,
    time: u64,
) {
    let previous = list_digest(&primary_list_v1(primary));
    let signed = v.bytes("confirmation.signed_device_identity");
    let account = primary.device.account().0;
    let entry = (1, 1, companion.identity.fingerprint, signed);
    record_list(v, "list", primary, list, account, 2, time, &previous, &[entry]);
    companion.device.process_device_list(&list.to_bytes(), Timestamp(time)).unwrap();
}

/// The version-1 list a primary signed at creation, rebuilt from the spec (naming only itself).
fn primary_list_v1(primary: &Dev) -> Vec<u8> {
    let address = primary.device.address();
    let body = spec::list_body(
        address.account.0,
        &primary.identity.public,
        1,
        T0,
        &[0u8; 32],
        &[(0, 0, primary.identity.fingerprint)],
    );
    spec::cat(&[
        &body,
        &spec::sign(
            &primary.identity.signing_seed,
            &spec::labelled(label::SIG_DEVICE_LIST, &[&body]),
        ),
    ])
}

/// The code a 5-byte draw gives: 40 bits, big-endian, as 8 Crockford base-32 symbols, most
/// significant first (the crate's choice; any uniform code is interoperable).
fn code_from_entropy(entropy: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let bits = entropy.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    (0..8)
        .map(|i| char::from(ALPHABET[usize::try_from((bits >> (35 - 5 * i)) & 31).unwrap()]))
        .collect()
}

/// The pairing-code flow: CPace, key confirmation, then approval and confirmation under the
/// derived link secret.
pub(crate) fn pairing_code() -> Vector {
    let seed = [0x05; 32];
    let mut v = Vector::new(
        "pairing_code",
        "Linking by pairing code: the code, CPace over ristretto255 (generator inputs, shares, K, ISK), the derived confirmation keys and link secret, the key confirmations, then approval, confirmation and the resulting device list.",
        "docs/PROTOCOL.md §11 (pairing-code flow); draft-irtf-cfrg-cpace (CPACE-RISTR255-SHA512)",
        seed,
    );
    let mut tape = Tape::new(seed);
    let account = 8;
    let mut primary = new_device(&mut v, &mut tape, "primary", addr(account, 0), T0, 0, false);
    let mut companion = new_device(&mut v, &mut tape, "companion", addr(account, 99), T0, 0, false);
    v.int(Kind::Input, "hello.time", T0, "the time the companion starts the attempt");
    let (mut attempt, hello) =
        CompanionPairing::start(&mut tape, &mut companion.device, Timestamp(T0));
    let draws = v.draws(&mut tape, &[
        ("code.entropy", 5, "40 bits the code is drawn from (big-endian, 5 bits per symbol, first symbol highest)"),
        ("hello.sid", 16, "CPace session identifier sid, also the attempt's reference"),
        ("companion.cpace_scalar_bytes", 64, "64 bytes reduced mod the group order to the companion's CPace scalar ya"),
    ]);
    let code = code_from_entropy(&draws[0]);
    assert_eq!(attempt.code().as_password_bytes(), code.as_bytes());
    v.text(
        Kind::Output,
        "code.prs",
        &code,
        "PRS: the 8 canonical code symbols (shown as XXXX-XXXX)",
    );
    v.text(
        Kind::Output,
        "code.display",
        &attempt.code().to_string(),
        "the code as shown to the user",
    );
    let sid = array::<16>(&draws[1]);
    let cpace = spec::Cpace::new(code.as_bytes(), label::CPACE_CHANNEL, &sid);
    v.mid("cpace.ci", label::CPACE_CHANNEL, "CI: the channel identifier");
    v.mid(
        "cpace.generator_string",
        &cpace.generator_string,
        "lv_cat(\"CPaceRistretto255\", PRS, zero padding, CI, sid)",
    );
    v.mid("cpace.generator_hash", &cpace.generator_hash, "SHA-512(generator_string)");
    v.mid(
        "cpace.generator",
        &cpace.generator,
        "g = one-way map to ristretto255 of generator_hash, encoded",
    );
    let ya = spec::scalar_from_wide(&draws[2]);
    v.secret("companion.cpace_scalar", ya.as_bytes(), "ya, little-endian");
    let share_a = cpace.share(&ya);
    v.mid("cpace.ya_share", &share_a, "Ya = ya * g");
    let hello_expected = spec::cat(&[&[0x01, 0x43], &sid, &share_a, &companion.identity.public]);
    v.output(
        "hello.bytes",
        &hello,
        &hello_expected,
        "hello: 0x01 || 0x43 || sid || Ya || PublicIdentity_companion (ADa)",
    );

    v.int(
        Kind::Input,
        "response.time",
        T0 + 10,
        "the time the primary answers with the typed code",
    );
    let typed = PairingCode::parse(&attempt.code().to_string()).unwrap();
    let (mut responder, response) =
        PrimaryPairing::respond(&mut tape, &mut primary.device, &hello, typed, Timestamp(T0 + 10))
            .unwrap();
    let draws = v.draws(
        &mut tape,
        &[(
            "primary.cpace_scalar_bytes",
            64,
            "64 bytes reduced mod the group order to the primary's CPace scalar yb",
        )],
    );
    let yb = spec::scalar_from_wide(&draws[0]);
    v.secret("primary.cpace_scalar", yb.as_bytes(), "yb, little-endian");
    let share_b = cpace.share(&yb);
    v.mid("cpace.yb_share", &share_b, "Yb = yb * g");
    let k = spec::cpace_k(&yb, &share_a);
    assert_eq!(k, spec::cpace_k(&ya, &share_b), "both sides' K");
    v.mid("cpace.k", &k, "K = yb * Ya = ya * Yb");
    let isk_input = spec::isk_input(
        &sid,
        &k,
        &share_a,
        &companion.identity.public,
        &share_b,
        &primary.identity.public,
    );
    v.mid(
        "cpace.isk_input",
        &isk_input,
        "lv_cat(\"CPaceRistretto255_ISK\", sid, K) || lv_cat(Ya, ADa) || lv_cat(Yb, ADb)",
    );
    let isk = spec::sha512(&isk_input);
    v.mid("cpace.isk", &isk, "ISK = SHA-512(isk_input)");
    let okm = spec::split32(&spec::hkdf(&sid, &isk, label::KDF_PAIRING, 96));
    v.mid(
        "keys.ka",
        &okm[0],
        "ka: bytes 0..32 of HKDF(salt = sid, ikm = ISK, info = \"multidevice/v1/kdf/pairing\")",
    );
    v.mid("keys.kb", &okm[1], "kb: bytes 32..64");
    v.mid("keys.link_secret", &okm[2], "link secret: bytes 64..96");
    let response_signed = spec::cat(&[&[0x01, 0x44], &sid, &share_b, &primary.identity.public]);
    v.mid(
        "response.without_confirm",
        &response_signed,
        "0x01 || 0x44 || sid || Yb || PublicIdentity_primary (ADb)",
    );
    let th = spec::h(label::HASH_PAIRING_TRANSCRIPT, &[&hello_expected, &response_signed]);
    v.mid(
        "transcript.th",
        &th,
        "th = H(\"multidevice/v1/hash/pairing-transcript\", hello || response without confirm_b)",
    );
    let confirm_b =
        spec::hmac(&okm[1], &spec::labelled(label::MAC_PAIRING_CONFIRM_RESPONDER, &[&th]));
    v.mid(
        "response.confirm_b",
        &confirm_b,
        "HMAC(kb, \"multidevice/v1/mac/pairing-confirm-responder\" || 0x00 || th)",
    );
    v.output(
        "response.bytes",
        &response,
        &spec::cat(&[&response_signed, &confirm_b]),
        "response: ... || confirm_b",
    );

    v.int(Kind::Input, "confirm.time", T0 + 11, "the time the companion checks confirm_b");
    let confirm = attempt.handle_response(&response, Timestamp(T0 + 11)).unwrap();
    let confirm_a =
        spec::hmac(&okm[0], &spec::labelled(label::MAC_PAIRING_CONFIRM_INITIATOR, &[&th]));
    v.mid(
        "confirm.confirm_a",
        &confirm_a,
        "HMAC(ka, \"multidevice/v1/mac/pairing-confirm-initiator\" || 0x00 || th)",
    );
    v.output(
        "confirm.bytes",
        &confirm,
        &spec::cat(&[&[0x01, 0x45], &sid, &confirm_a]),
        "confirm: 0x01 || 0x45 || sid || confirm_a",
    );

    v.int(
        Kind::Input,
        "approval.time",
        T0 + 12,
        "the time the primary checks confirm_a and approves",
    );
    let approval =
        responder.handle_confirm(&mut primary.device, &confirm, Timestamp(T0 + 12)).unwrap();
    v.int(Kind::Input, "confirmation.time", T0 + 13, "the time the companion countersigns");
    let confirmation =
        attempt.accept_approval(&mut companion.device, &approval, Timestamp(T0 + 13)).unwrap();
    let metadata = spec::linking_metadata(account, 1, 1, T0 + 12);
    record_link_messages(
        &mut v,
        &primary,
        &companion,
        &okm[2],
        &sid,
        &metadata,
        &approval,
        &confirmation,
    );
    v.int(
        Kind::Input,
        "list.time",
        T0 + 14,
        "the time the primary finishes and signs list version 2",
    );
    let list = responder.finish(&mut primary.device, &confirmation, Timestamp(T0 + 14)).unwrap();
    record_new_list(&mut v, &primary, &mut companion, &list, T0 + 14);
    tape.finish();
    v
}
