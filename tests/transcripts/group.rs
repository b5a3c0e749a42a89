//! Groups with sender keys (§20): a sender key, its distribution inside a pairwise message of
//! kind `SenderKey`, and group messages under it.

use multidevice::test_support;
use multidevice::{AccountId, GroupId, GroupSend, PrekeyBundle, Received, Timestamp};

use crate::common::*;
use crate::content::record_first_envelope;
use crate::spec::{self, label};
use crate::vector::{Kind, Tape, Vector};

/// One group message of §20 from the sender key at `chain_key`: records the chain step, header,
/// plaintext, ciphertext, signed bytes and signature, and returns the message the spec gives
/// and the next chain key.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_group_message(
    v: &mut Vector,
    p: &str,
    group: &[u8; 16],
    sender: &[u8],
    key_id: u32,
    iteration: u32,
    chain_key: &[u8; 32],
    signing_seed: &[u8; 32],
    membership: &[u8; 32],
    (message_id, nonce): (&[u8], &[u8; 12]),
    (list_version, list_digest): (u64, &[u8; 32]),
    payload: &[u8],
) -> (Vec<u8>, [u8; 32]) {
    v.int(
        Kind::Intermediate,
        &format!("{p}.iteration"),
        u64::from(iteration),
        "the iteration of this message on the sender key's chain (0 for the first)",
    );
    let (message_key, next) = spec::chain_step(chain_key);
    v.mid(
        &format!("{p}.chain_key"),
        chain_key,
        "the sender key's chain key this message steps from",
    );
    v.mid(
        &format!("{p}.message_key"),
        &message_key,
        "MK = HMAC-SHA256(CK, 0x01), as a session chain step (§5)",
    );
    v.mid(
        &format!("{p}.next_chain_key"),
        &next,
        "CK' = HMAC-SHA256(CK, 0x02): the chain key of the next iteration",
    );
    let header = spec::group_header(group, sender, key_id, iteration, membership, nonce);
    v.mid(
        &format!("{p}.header"),
        &header,
        "header, the AES-GCM associated data: 0x01 || 0x50 || group id || sender || key id (u32) || iteration (u32) || membership digest || nonce",
    );
    v.input(&format!("{p}.payload"), payload, "the group payload");
    let plaintext = spec::cat(&[message_id, &spec::be64(list_version), list_digest, payload]);
    v.mid(
        &format!("{p}.plaintext"),
        &plaintext,
        "plaintext: message id (16) || sender list version (u64) || sender list digest (32) || payload",
    );
    let sealed = spec::seal(&message_key, nonce, &header, &plaintext);
    v.mid(
        &format!("{p}.ciphertext"),
        &sealed,
        "AES-256-GCM(key = MK, nonce, aad = header, plaintext) ciphertext || tag (16)",
    );
    let signed = spec::cat(&[&header, &sealed]);
    let signed_digest = spec::sha256(&signed);
    v.mid(
        &format!("{p}.signed_digest"),
        &signed_digest,
        "SHA-256(header || ciphertext || tag): what the signature covers",
    );
    let signature_input = spec::labelled(label::SIG_GROUP_MESSAGE, &[&signed_digest]);
    v.mid(
        &format!("{p}.signature_input"),
        &signature_input,
        "the exact bytes signed: \"multidevice/v1/sig/group-message\" || 0x00 || SHA-256(header || ciphertext || tag)",
    );
    let signature = spec::sign(signing_seed, &signature_input);
    v.mid(
        &format!("{p}.signature"),
        &signature,
        "Ed25519 by the sender key's signing key over signature_input",
    );
    (spec::cat(&[&signed, &signature]), next)
}

/// The group device `creator` (named `s0` in the file) makes with the one other account
/// `other` (above its own): records the group id it drew, the members and the membership
/// digest. Returns the group and its membership digest.
pub(crate) fn record_new_group(
    v: &mut Vector,
    tape: &mut Tape,
    creator: &mut Dev,
    other: u64,
) -> (GroupId, [u8; 32]) {
    let own = creator.address().account;
    assert!(own.0 < other, "the members are recorded in ascending order");
    let group = creator.device.create_group(tape, &[AccountId(other)]).unwrap();
    let group_id =
        array::<16>(&v.draws(tape, &[("group.id", 16, "the random 128-bit group id")])[0]);
    assert_eq!(group.0, group_id);
    v.hex(
        Kind::Input,
        "group.members",
        &[spec::be64(own.0), spec::be64(other)].concat(),
        &format!("the member accounts (u64 each): s0's own account and account {other}"),
    );
    let input = spec::group_membership_input(&group_id, &[own.0, other]);
    v.mid(
        "membership.input",
        &input,
        "group id || count (u16) || the distinct member account ids, ascending (u64 each)",
    );
    let membership = spec::h(label::HASH_GROUP_MEMBERSHIP, &[&input]);
    v.output(
        "membership.digest",
        &group.membership_digest(&[AccountId(other), own]),
        &membership,
        "H(\"multidevice/v1/hash/group-membership\", membership.input): SHA-256 of the label, 0x00 and the input",
    );
    assert_eq!(creator.device.group_members(group).unwrap(), &[own, AccountId(other)]);
    (group, membership)
}

/// A group's first send, recorded by [`record_first_group_send`].
pub(crate) struct FirstSend {
    /// What `encrypt_group` returned.
    pub(crate) send: GroupSend,
    pub(crate) key_id: u32,
    pub(crate) signing_seed: [u8; 32],
    pub(crate) signing_public: [u8; 32],
    /// The sender key's chain key after the message.
    pub(crate) next_chain_key: [u8; 32],
}

/// The first send of `group` by `sender` (named `s0` in the file, announcing list version 1
/// with `digest`) when the one device it reaches is `recipient` (named `to`), whose session
/// is set up from `bundle`: records the fresh sender key, the distribution inside a
/// `PrekeyMessage` of kind `SenderKey` and the group message `p`, each checked against the
/// spec.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_first_group_send(
    v: &mut Vector,
    tape: &mut Tape,
    sender: &mut Dev,
    (recipient, to): (&Dev, &str),
    (group, membership, digest): (GroupId, &[u8; 32], &[u8; 32]),
    bundle: PrekeyBundle,
    (p, payload): (&str, &[u8]),
    now: Timestamp,
) -> FirstSend {
    let group_id = group.0;
    let first = sender.device.encrypt_group(tape, group, &[bundle], payload, now).unwrap();
    assert!(!first.rotated && first.skipped.is_empty() && first.lists_needed.is_empty());
    let draws = v.draws(
        tape,
        &[
            ("sender_key.key_id", 4, "the key id, as a big-endian u32"),
            ("sender_key.chain_key", 32, "the sender key's first chain key (iteration 0)"),
            (
                "sender_key.signing_seed",
                32,
                "the Ed25519 secret seed of the sender key's signing key (RFC 8032)",
            ),
            (
                "distribution.message_id",
                16,
                "the message id of the pairwise message carrying the distribution",
            ),
            (
                "distribution.base_key_secret",
                32,
                &format!("X25519 secret of the base key of s0's new session with {to}"),
            ),
            ("distribution.nonce", 12, "header nonce of the distribution message"),
            (&format!("{p}.message_id"), 16, "the first group message's message id"),
            (&format!("{p}.nonce"), 12, "the first group message's AES-GCM nonce"),
        ],
    );
    let key_id = u32::from_be_bytes(array(&draws[0]));
    v.int(Kind::Intermediate, "sender_key.key_id_u32", u64::from(key_id), "the key id as a number");
    let chain_key = array::<32>(&draws[1]);
    let signing_seed = array::<32>(&draws[2]);
    let signing_public = spec::ed25519_public(&signing_seed);
    v.mid("sender_key.signing_public", &signing_public, "the sender key's Ed25519 public key");
    let content = spec::group_distribution(&group_id, key_id, 0, &chain_key, &signing_public);
    v.mid(
        "distribution.content",
        &content,
        "distribution (88): group id || key id (u32) || iteration (u32, 0) || chain key || signing public key",
    );
    let inner = spec::cat(&[&spec::be64(1), digest, &draws[3], &content]);
    v.mid(
        "distribution.inner",
        &inner,
        "Inner (SenderKey): sender list version (u64) || sender list digest || message id || distribution, with no content type byte",
    );
    assert_eq!(first.distribution.len(), 1);
    assert_eq!(first.distribution[0].recipient, recipient.address());
    let (_, _, _, expected) = record_first_envelope(
        v,
        "distribution",
        sender,
        recipient,
        0x04,
        &array(&draws[4]),
        &array(&draws[5]),
        &inner,
    );
    v.output(
        "distribution.bytes",
        &first.distribution[0].bytes,
        &expected,
        &format!("the distribution for {to}: PrekeyMessage (type 0x02), kind 0x04 SenderKey"),
    );
    assert_eq!(first.message_id[..], draws[6][..]);
    let (expected, next_chain_key) = record_group_message(
        v,
        p,
        &group_id,
        &sender.addr(),
        key_id,
        0,
        &chain_key,
        &signing_seed,
        membership,
        (&draws[6], &array(&draws[7])),
        (1, digest),
        payload,
    );
    v.output(
        &format!("{p}.bytes"),
        &first.message,
        &expected,
        "GroupMessage: header || ciphertext || tag || signature (64), the same bytes for every recipient",
    );
    FirstSend { send: first, key_id, signing_seed, signing_public, next_chain_key }
}

/// Account 40's primary makes a group with account 50 and sends to it twice; account 50's
/// primary takes the distribution, then both messages.
pub(crate) fn group() -> Vector {
    let seed = [0x0b; 32];
    let mut v = Vector::new(
        "group",
        "Groups with sender keys: a sender's first group send to one recipient device (its sender key, the distribution inside a pairwise PrekeyMessage of kind 0x04 SenderKey on a new session, the group message), then a second group message on the same key.",
        "docs/PROTOCOL.md §4-§6, §10, §20",
        seed,
    );
    let mut tape = Tape::new(seed);
    v.int(Kind::Input, "time", T0, "the time of every step (Unix seconds)");
    let mut s0 = new_device(&mut v, &mut tape, "s0", addr(40, 0), T0, 0, false);
    let mut r0 = new_device(&mut v, &mut tape, "r0", addr(50, 0), T0, 1, false);
    let now = Timestamp(T0);
    let list_s = s0.device.device_list(AccountId(40)).unwrap().signed_bytes().to_vec();
    let list_r = r0.device.device_list(AccountId(50)).unwrap().signed_bytes().to_vec();
    s0.device.process_device_list(&list_r, now).unwrap();
    r0.device.process_device_list(&list_s, now).unwrap();
    v.input("lists.account40", &list_s, "account 40's signed device list, version 1 (s0 only)");
    v.input("lists.account50", &list_r, "account 50's signed device list, version 1 (r0 only)");
    let digest = list_digest(&list_s);
    v.mid(
        "lists.account40.digest",
        &digest,
        "digest of account 40's list: what s0 announces in every plaintext",
    );

    let (group, membership) = record_new_group(&mut v, &mut tape, &mut s0, 50);
    let group_id = group.0;

    let bundle = record_bundle(&mut v, "r0", &r0);

    // The first send: a fresh sender key, its distribution to r0, the first group message.
    let payload = b"Hello group: the first message under a new sender key.";
    let FirstSend { send: first, key_id, signing_seed, signing_public, next_chain_key: next } =
        record_first_group_send(
            &mut v,
            &mut tape,
            &mut s0,
            (&r0, "r0"),
            (group, &membership, &digest),
            bundle,
            ("m1", payload),
            now,
        );

    // The second send: the key is held by everyone reached, so only a message.
    let payload = b"And a second one, one chain step later.";
    let second = s0.device.encrypt_group(&mut tape, group, &[], payload, now).unwrap();
    assert!(second.distribution.is_empty() && !second.rotated);
    let draws = v.draws(
        &mut tape,
        &[
            ("m2.message_id", 16, "the second group message's message id"),
            ("m2.nonce", 12, "the second group message's AES-GCM nonce"),
        ],
    );
    let (expected, next) = record_group_message(
        &mut v,
        "m2",
        &group_id,
        &s0.addr(),
        key_id,
        1,
        &next,
        &signing_seed,
        &membership,
        (&draws[0], &array(&draws[1])),
        (1, &digest),
        payload,
    );
    v.output("m2.bytes", &second.message, &expected, "the second GroupMessage (iteration 1)");
    let held = test_support::group_sender_key(&s0.device, group).unwrap();
    assert_eq!((held.key_id, held.iteration), (key_id, 2));
    assert_eq!(*held.chain_key, next);
    assert_eq!(*held.signing_seed, signing_seed);
    assert_eq!(held.signing_public, signing_public);

    // r0 takes the key, then reads both.
    match r0.device.receive(&first.distribution[0].bytes, None, now).unwrap() {
        Received::SenderKey(key) => assert_eq!((key.group, key.sender), (group, s0.address())),
        other => panic!("expected a sender key, got {other:?}"),
    }
    for (bytes, text) in [
        (&first.message, &b"Hello group: the first message under a new sender key."[..]),
        (&second.message, payload),
    ] {
        let Received::Group(message) = r0.device.receive(bytes, None, now).unwrap() else {
            panic!("expected a group message")
        };
        assert_eq!(message.payload.as_slice(), text);
        assert_eq!(message.membership_digest, membership);
        assert_eq!(message.sender_list_version, 1);
    }
    tape.finish();
    v
}
