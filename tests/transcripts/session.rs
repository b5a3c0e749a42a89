//! Identities and prekey bundles (§2-§3); session setup and the Double Ratchet (§4-§6).

use multidevice::{PrekeyBundle, Timestamp, hazmat};

use crate::common::*;
use crate::spec;
use crate::vector::{Kind, Tape, Vector};

pub(crate) fn identities() -> Vector {
    let seed = [0x01; 32];
    let mut v = Vector::new(
        "identities",
        "Two primaries' identities, signed prekeys, one-time prekeys, a prekey bundle with and without a one-time prekey, and a prekey upload.",
        "docs/PROTOCOL.md §1-§3",
        seed,
    );
    let mut tape = Tape::new(seed);
    v.int(Kind::Input, "time", T0, "the time the devices are created (Unix seconds)");
    let alice = new_device(&mut v, &mut tape, "alice", addr(1, 0), T0, 2, true);
    let bob = new_device(&mut v, &mut tape, "bob", addr(2, 0), T0, 2, true);
    for (p, dev) in [("alice", &alice), ("bob", &bob)] {
        let upload = dev.device.prekey_upload();
        v.output(
            &format!("{p}.bundle_with_opk"),
            &upload.bundle(Some(0)).to_bytes(),
            &spec_bundle(dev, Some(1)),
            "PrekeyBundle: 0x01 || 0x10 || address || PublicIdentity || SignedPrekeyPublic || 0x01 || OneTimePrekeyPublic (id 1)",
        );
        v.output(
            &format!("{p}.bundle_without_opk"),
            &upload.bundle(None).to_bytes(),
            &spec_bundle(dev, None),
            "PrekeyBundle without a one-time prekey: ... || SignedPrekeyPublic || 0x00",
        );
        let (_, spk) = spec::signed_prekey(&dev.identity, 1, &dev.spk);
        let mut expected = spec::cat(&[&[0x01, 0x11], &dev.addr(), &dev.identity.public, &spk]);
        expected.extend_from_slice(&2u16.to_be_bytes());
        for (id, secret) in &dev.otks {
            expected.extend_from_slice(&spec::be32(*id));
            expected.extend_from_slice(&spec::x25519_public(secret));
        }
        v.output(
            &format!("{p}.upload"),
            &upload.to_bytes(),
            &expected,
            "PrekeyUpload: 0x01 || 0x11 || address || PublicIdentity || SignedPrekeyPublic || count (u16) || count x OneTimePrekeyPublic",
        );
    }
    tape.finish();
    v
}

/// The scenario: Alice starts a raw session to Bob from his bundle (one-time prekey 1), sends
/// a1..a3 on her first chain (prekey messages); Bob turns the ratchet and sends b1..b3; Alice
/// turns it again and sends a4 (no prekey fields: she has heard back). Every message is
/// delivered in order.
pub(crate) fn session() -> Vector {
    let seed = [0x02; 32];
    let mut v = Vector::new(
        "session",
        "A raw (kind 0x00, hazmat) session: X3DH-style setup with a one-time prekey, three prekey messages from the initiator, three replies after the responder's ratchet turn, one message after the initiator's ratchet turn.",
        "docs/PROTOCOL.md §4-§6",
        seed,
    );
    let mut tape = Tape::new(seed);
    v.int(Kind::Input, "time", T0, "the time of every step (Unix seconds)");
    let mut alice = new_device(&mut v, &mut tape, "alice", addr(1, 0), T0, 0, false);
    let mut bob = new_device(&mut v, &mut tape, "bob", addr(2, 0), T0, 1, false);
    let now = Timestamp(T0);

    let bundle_bytes = bob.device.prekey_upload().bundle(Some(0)).to_bytes();
    v.output(
        "bob.bundle",
        &bundle_bytes,
        &spec_bundle(&bob, Some(1)),
        "the PrekeyBundle Alice uses: Bob's signed prekey 1 and one-time prekey 1",
    );
    let bundle = PrekeyBundle::try_from(&bundle_bytes[..]).unwrap().verify().unwrap();
    hazmat::start_session(&mut alice.device, &mut tape, &bundle).unwrap();
    let ek = array::<32>(
        &v.draws(
            &mut tape,
            &[("setup.base_key_secret", 32, "X25519 secret of Alice's base key EK")],
        )[0],
    );
    let setup = record_setup(&mut v, "setup", &alice, &ek, &bob, Some(1));
    let mut a_chain =
        Chain { ratchet_public: spec::x25519_public(&ek), chain_key: setup.chain_key, counter: 0 };
    assert_session(
        &session_state(&alice.device, bob.address()),
        &setup.session_id,
        &setup.ad,
        &setup.root_key,
        Some(&a_chain),
    );
    let prekey = spec::prekey_fields(&alice.identity.public, &a_chain.ratchet_public, 1, Some(1));
    v.mid("setup.prekey_fields", &prekey, "PrekeyFields: PublicIdentity_A || base_key || signed_prekey_id || 0x01 || one_time_prekey_id");

    // a1..a3: Alice's first chain, under her base key.
    let mut sent = Vec::new();
    for i in 1..=3u32 {
        let p = format!("a{i}");
        let plaintext = format!("message {i} from Alice to Bob");
        let bytes =
            hazmat::encrypt(&mut alice.device, &mut tape, bob.address(), plaintext.as_bytes())
                .unwrap();
        let nonce =
            array::<12>(&v.draws(&mut tape, &[(&format!("{p}.nonce"), 12, "the header nonce")])[0]);
        let expected = record_message(
            &mut v,
            &p,
            0x00,
            &alice.addr(),
            &bob.addr(),
            Some(&prekey),
            &setup.session_id,
            &setup.ad,
            &mut a_chain,
            0,
            &nonce,
            plaintext.as_bytes(),
        );
        v.output(
            &format!("{p}.bytes"),
            &bytes,
            &expected,
            "PrekeyMessage (type 0x02, kind 0x00 Raw): prefix || ciphertext || tag",
        );
        sent.push((bytes, plaintext));
    }
    for (bytes, plaintext) in &sent {
        let got = hazmat::decrypt(&mut bob.device, bytes, now).unwrap();
        assert_eq!(got.plaintext.as_slice(), plaintext.as_bytes());
    }
    let bob_state = session_state(&bob.device, alice.address());
    assert_eq!(&*bob_state.root_key, &setup.root_key);
    assert_eq!(*bob_state.receiving[0].chain_key, a_chain.chain_key);
    assert!(bob_state.sending.is_none());

    // b1..b3: Bob's first ratchet turn.
    let mut sent = Vec::new();
    let mut b_chain = None;
    let mut root = setup.root_key;
    for i in 1..=3u32 {
        let p = format!("b{i}");
        let plaintext = format!("message {i} from Bob to Alice");
        let bytes =
            hazmat::encrypt(&mut bob.device, &mut tape, alice.address(), plaintext.as_bytes())
                .unwrap();
        let nonce = if i == 1 {
            let (new_root, chain, nonce) =
                ratchet_turn(&mut v, &mut tape, "b1", "Bob", &root, &a_chain.ratchet_public);
            root = new_root;
            b_chain = Some(chain);
            nonce
        } else {
            array::<12>(&v.draws(&mut tape, &[(&format!("{p}.nonce"), 12, "the header nonce")])[0])
        };
        let chain = b_chain.as_mut().unwrap();
        let expected = record_message(
            &mut v,
            &p,
            0x00,
            &bob.addr(),
            &alice.addr(),
            None,
            &setup.session_id,
            &setup.ad,
            chain,
            0,
            &nonce,
            plaintext.as_bytes(),
        );
        v.output(
            &format!("{p}.bytes"),
            &bytes,
            &expected,
            "Message (type 0x01, kind 0x00 Raw): prefix || ciphertext || tag",
        );
        sent.push((bytes, plaintext));
    }
    assert_session(
        &session_state(&bob.device, alice.address()),
        &setup.session_id,
        &setup.ad,
        &root,
        b_chain.as_ref(),
    );
    for (bytes, plaintext) in &sent {
        let got = hazmat::decrypt(&mut alice.device, bytes, now).unwrap();
        assert_eq!(got.plaintext.as_slice(), plaintext.as_bytes());
    }
    let alice_state = session_state(&alice.device, bob.address());
    assert_eq!(&*alice_state.root_key, &root, "Alice's root step on receiving b1");
    assert_eq!(alice_state.previous_counter, 3);
    assert!(alice_state.sending.is_none());

    // a4: Alice's ratchet turn (turn 2); she has heard back, so no prekey fields.
    let plaintext = "message 4 from Alice to Bob";
    let bytes =
        hazmat::encrypt(&mut alice.device, &mut tape, bob.address(), plaintext.as_bytes()).unwrap();
    let b_public = b_chain.as_ref().unwrap().ratchet_public;
    let (root2, mut a_chain2, nonce) =
        ratchet_turn(&mut v, &mut tape, "a4", "Alice", &root, &b_public);
    let expected = record_message(
        &mut v,
        "a4",
        0x00,
        &alice.addr(),
        &bob.addr(),
        None,
        &setup.session_id,
        &setup.ad,
        &mut a_chain2,
        3,
        &nonce,
        plaintext.as_bytes(),
    );
    v.output(
        "a4.bytes",
        &bytes,
        &expected,
        "Message (type 0x01, kind 0x00 Raw), previous_counter 3",
    );
    assert_session(
        &session_state(&alice.device, bob.address()),
        &setup.session_id,
        &setup.ad,
        &root2,
        Some(&a_chain2),
    );
    let got = hazmat::decrypt(&mut bob.device, &bytes, now).unwrap();
    assert_eq!(got.plaintext.as_slice(), plaintext.as_bytes());
    let bob_state = session_state(&bob.device, alice.address());
    assert_eq!(&*bob_state.root_key, &root2, "Bob's root step on receiving a4");
    assert_eq!(*bob_state.receiving.last().unwrap().chain_key, a_chain2.chain_key);
    v.mid("final.root_key", &root2, "RK after both ratchet turns, on both sides");
    tape.finish();
    v
}

/// A ratchet turn before sending message `p` (§5): the crate drew a new ratchet key and the
/// nonce; records both and the root step with `their` newest ratchet key. Returns the new root
/// key, the new sending chain and the nonce.
fn ratchet_turn(
    v: &mut Vector,
    tape: &mut Tape,
    p: &str,
    who: &str,
    root: &[u8; 32],
    their: &[u8; 32],
) -> ([u8; 32], Chain, [u8; 12]) {
    let draws = v.draws(
        tape,
        &[
            (
                &format!("{p}.ratchet_secret"),
                32,
                &format!("X25519 secret of {who}'s new ratchet key"),
            ),
            (&format!("{p}.nonce"), 12, "the header nonce"),
        ],
    );
    let ours = array::<32>(&draws[0]);
    let public = spec::x25519_public(&ours);
    v.mid(&format!("{p}.ratchet_public"), &public, &format!("{who}'s new ratchet key"));
    let (root, chain_key) = record_root_step(v, &format!("{p}.root_step"), root, &ours, their);
    (root, Chain { ratchet_public: public, chain_key, counter: 0 }, array(&draws[1]))
}
