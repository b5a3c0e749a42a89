//! Pieces every generator shares: devices made from recorded randomness, session setup and
//! message computations recorded entry by entry.

use multidevice::test_support::{self, SessionSecrets};
use multidevice::{AccountId, Device, DeviceAddress, DeviceId, PrekeyBundle, Timestamp};

use crate::spec::{self, Identity};
use crate::vector::{Tape, Vector};

/// The time every scenario starts at.
pub(crate) const T0: u64 = 1_700_000_000;

/// A device of a scenario with the secrets the spec computations start from.
pub(crate) struct Dev {
    pub(crate) device: Device,
    pub(crate) identity: Identity,
    pub(crate) spk: [u8; 32],
    pub(crate) otks: Vec<(u32, [u8; 32])>,
}

impl Dev {
    /// The current address, as the spec encodes it.
    pub(crate) fn addr(&self) -> Vec<u8> {
        let address = self.device.address();
        spec::address(address.account.0, address.device.0)
    }

    pub(crate) fn address(&self) -> DeviceAddress {
        self.device.address()
    }

    pub(crate) fn otk(&self, id: u32) -> [u8; 32] {
        self.otks.iter().find(|(i, _)| *i == id).expect("one-time prekey").1
    }
}

pub(crate) fn addr(account: u64, device: u32) -> DeviceAddress {
    DeviceAddress::new(AccountId(account), DeviceId(device))
}

pub(crate) fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("length")
}

/// `Device::new` (3 draws: Ed25519 seed, X25519 identity secret, signed prekey secret), then
/// `otks` one-time prekeys (one 32-byte draw each, ids from 1). `detail` also records the
/// identity's inner values (signature input, fingerprint, signed prekey).
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_device(
    v: &mut Vector,
    tape: &mut Tape,
    p: &str,
    address: DeviceAddress,
    now: u64,
    otks: usize,
    detail: bool,
) -> Dev {
    v.input(
        &format!("{p}.address"),
        &spec::address(address.account.0, address.device.0),
        if address.device.0 == 0 {
            "DeviceAddress: account id (u64) || device id (u32); device 0 is the primary"
        } else {
            "DeviceAddress the companion is created with; linking assigns its final one"
        },
    );
    let mut device = Device::new(tape, address, Timestamp(now));
    let draws = v.draws(
        tape,
        &[
            (&format!("{p}.identity.signing_seed"), 32, "Ed25519 secret seed of IKs (RFC 8032)"),
            (
                &format!("{p}.identity.agreement_secret"),
                32,
                "X25519 secret of IKa (clamped on use)",
            ),
            (&format!("{p}.signed_prekey.1.secret"), 32, "X25519 secret of signed prekey id 1"),
        ],
    );
    let secrets = test_support::identity_secrets(&device);
    assert_eq!(*secrets.signing_seed, draws[0][..]);
    assert_eq!(*secrets.agreement_secret, draws[1][..]);
    let spk = array::<32>(&draws[2]);
    assert_eq!(*test_support::signed_prekey_secret(&device, 1).unwrap(), spk);
    let identity = Identity::new(array(&draws[0]), array(&draws[1]));
    if detail {
        v.mid(&format!("{p}.identity.iks_public"), &identity.iks, "IKs_pub: Ed25519 public key");
        v.mid(&format!("{p}.identity.ika_public"), &identity.ika, "IKa_pub: X25519 public key");
        v.mid(
            &format!("{p}.identity.sig_a_message"),
            &identity.sig_a_message,
            "bytes sig_a signs: \"multidevice/v1/sig/identity-agreement-key\" || 0x00 || IKa_pub",
        );
        v.mid(
            &format!("{p}.identity.sig_a"),
            &identity.sig_a,
            "sig_a: Ed25519 by IKs over sig_a_message",
        );
    }
    v.output(
        &format!("{p}.public_identity"),
        &device.public_identity().to_bytes(),
        &identity.public,
        "PublicIdentity (128): IKs_pub || IKa_pub || sig_a",
    );
    if detail {
        v.output(
            &format!("{p}.fingerprint"),
            device.public_identity().fingerprint().as_bytes(),
            &identity.fingerprint,
            "Fingerprint: H(\"multidevice/v1/hash/fingerprint\", IKs_pub, IKa_pub)",
        );
        let (message, public) = spec::signed_prekey(&identity, 1, &spk);
        v.mid(
            &format!("{p}.signed_prekey.1.sig_message"),
            &message,
            "bytes the signed prekey signature signs: \"multidevice/v1/sig/signed-prekey\" || 0x00 || id || SPK_pub",
        );
        let crate_public = device.prekey_upload().signed_prekey;
        let crate_bytes =
            [&crate_public.id.to_be_bytes()[..], &crate_public.public, &crate_public.signature]
                .concat();
        v.output(
            &format!("{p}.signed_prekey.1.public"),
            &crate_bytes,
            &public,
            "SignedPrekeyPublic (100): id (u32) || SPK_pub || sig",
        );
    }
    let mut keys = Vec::new();
    if otks > 0 {
        let names: Vec<(String, String)> = (1..=otks)
            .map(|id| {
                (
                    format!("{p}.one_time_prekey.{id}.secret"),
                    format!("X25519 secret of one-time prekey id {id}"),
                )
            })
            .collect();
        let expected: Vec<(&str, usize, &str)> =
            names.iter().map(|(n, d)| (n.as_str(), 32, d.as_str())).collect();
        let fresh = device.generate_one_time_prekeys(tape, otks).unwrap();
        let draws = v.draws(tape, &expected);
        for (public, draw) in fresh.iter().zip(&draws) {
            let secret = array::<32>(draw);
            assert_eq!(*test_support::one_time_prekey_secret(&device, public.id).unwrap(), secret);
            if detail {
                v.output(
                    &format!("{p}.one_time_prekey.{}.public", public.id),
                    &[&public.id.to_be_bytes()[..], &public.public].concat(),
                    &[&spec::be32(public.id)[..], &spec::x25519_public(&secret)].concat(),
                    "OneTimePrekeyPublic (36): id (u32) || OPK_pub",
                );
            }
            keys.push((public.id, secret));
        }
    }
    Dev { device, identity, spk, otks: keys }
}

/// `PrekeyBundle` of §3, as the spec writes it.
pub(crate) fn spec_bundle(dev: &Dev, opk: Option<u32>) -> Vec<u8> {
    let (_, spk) = spec::signed_prekey(&dev.identity, 1, &dev.spk);
    let opk = match opk {
        Some(id) => spec::cat(&[&[1], &spec::be32(id), &spec::x25519_public(&dev.otk(id))]),
        None => vec![0],
    };
    spec::cat(&[&[0x01, 0x10], &dev.addr(), &dev.identity.public, &spk, &opk])
}

/// `dev`'s `PrekeyBundle` with one-time prekey 1, recorded as `{p}.bundle` after checking it
/// against §3.
pub(crate) fn record_bundle(v: &mut Vector, p: &str, dev: &Dev) -> PrekeyBundle {
    let bundle = dev.device.prekey_upload().bundle(Some(0));
    v.output(
        &format!("{p}.bundle"),
        &bundle.to_bytes(),
        &spec_bundle(dev, Some(1)),
        &format!("{p}'s PrekeyBundle (one-time prekey 1)"),
    );
    bundle
}

/// Records the session setup of §4 from initiator `a`'s base key secret `ek` towards `b`, and
/// checks the responder's DH values from `b`'s own secrets.
pub(crate) fn record_setup(
    v: &mut Vector,
    p: &str,
    a: &Dev,
    ek: &[u8; 32],
    b: &Dev,
    opk: Option<u32>,
) -> spec::Setup {
    let ek_public = spec::x25519_public(ek);
    let opk_public = opk.map(|id| spec::x25519_public(&b.otk(id)));
    let setup = spec::setup(
        &a.identity.agreement_secret,
        &a.addr(),
        &a.identity.public,
        ek,
        &b.addr(),
        &b.identity.public,
        &b.identity.ika,
        &spec::x25519_public(&b.spk),
        opk_public.as_ref(),
    );
    let responder = spec::responder_dh(
        &b.identity.agreement_secret,
        &b.spk,
        opk.map(|id| b.otk(id)).as_ref(),
        &a.identity.ika,
        &ek_public,
    );
    assert_eq!(setup.dh, responder, "initiator and responder DH values differ");
    v.mid(&format!("{p}.base_key"), &ek_public, "EK_pub: the initiator's base key");
    let descriptions = [
        "DH1 = DH(IKa_A, SPK_B)",
        "DH2 = DH(EK, IKa_B)",
        "DH3 = DH(EK, SPK_B)",
        "DH4 = DH(EK, OPK_B)",
    ];
    for (i, (value, description)) in setup.dh.iter().zip(descriptions).enumerate() {
        v.mid(&format!("{p}.dh{}", i + 1), value, description);
    }
    v.mid(
        &format!("{p}.ad_input"),
        &setup.ad_input,
        "addr_A || PublicIdentity_A || addr_B || PublicIdentity_B",
    );
    v.mid(
        &format!("{p}.ad"),
        &setup.ad,
        "AD = H(\"multidevice/v1/hash/associated-data\", ad_input)",
    );
    v.mid(&format!("{p}.hkdf_ikm"), &setup.ikm, "HKDF ikm: 0xFF^32 || DH1 || DH2 || DH3 [|| DH4]");
    v.mid(
        &format!("{p}.hkdf_info"),
        &setup.info,
        "HKDF info: \"multidevice/v1/kdf/x3dh\" || AD (salt = 0^32)",
    );
    v.mid(
        &format!("{p}.root_key"),
        &setup.root_key,
        "RK: first 32 bytes of the 64-byte HKDF output",
    );
    v.mid(&format!("{p}.chain_key"), &setup.chain_key, "CK: last 32 bytes of the HKDF output");
    v.mid(
        &format!("{p}.session_id"),
        &setup.session_id,
        "first 16 bytes of H(\"multidevice/v1/hash/session-id\", EK_pub)",
    );
    setup
}

/// A sending chain of the spec model.
pub(crate) struct Chain {
    pub(crate) ratchet_public: [u8; 32],
    pub(crate) chain_key: [u8; 32],
    pub(crate) counter: u32,
}

/// One session message of §6 on `chain`: records the chain step, header, authenticated prefix
/// and AEAD inputs, and returns the message bytes the spec gives.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_message(
    v: &mut Vector,
    p: &str,
    kind: u8,
    sender: &[u8],
    recipient: &[u8],
    prekey: Option<&[u8]>,
    session_id: &[u8; 16],
    ad: &[u8; 32],
    chain: &mut Chain,
    previous_counter: u32,
    nonce: &[u8; 12],
    plaintext: &[u8],
) -> Vec<u8> {
    let (message_key, next) = spec::chain_step(&chain.chain_key);
    v.mid(&format!("{p}.chain_key"), &chain.chain_key, "CK this message steps from");
    v.mid(&format!("{p}.message_key"), &message_key, "MK = HMAC(CK, 0x01)");
    v.mid(&format!("{p}.next_chain_key"), &next, "CK' = HMAC(CK, 0x02)");
    let header =
        spec::header(session_id, &chain.ratchet_public, chain.counter, previous_counter, nonce);
    v.mid(
        &format!("{p}.header"),
        &header,
        "RatchetHeader (68): session_id || ratchet_key || counter || previous_counter || nonce",
    );
    let prefix = spec::message_prefix(kind, sender, recipient, prekey, &header);
    v.mid(
        &format!("{p}.authenticated_prefix"),
        &prefix,
        "every byte before the ciphertext: version || type || kind || sender || recipient || [PrekeyFields] || header",
    );
    let aad = spec::cat(&[ad, &prefix]);
    v.mid(&format!("{p}.aad"), &aad, "AES-GCM associated data: AD || authenticated prefix");
    v.input(&format!("{p}.plaintext"), plaintext, "the session plaintext");
    let sealed = spec::seal(&message_key, nonce, &aad, plaintext);
    v.mid(
        &format!("{p}.ciphertext"),
        &sealed,
        "AES-256-GCM(key = MK, nonce = header nonce, aad) ciphertext || tag (16)",
    );
    chain.chain_key = next;
    chain.counter += 1;
    spec::cat(&[&prefix, &sealed])
}

/// Records a root step of §5 and returns `(RK', CK_new)`.
pub(crate) fn record_root_step(
    v: &mut Vector,
    p: &str,
    root_key: &[u8; 32],
    ours: &[u8; 32],
    theirs: &[u8; 32],
) -> ([u8; 32], [u8; 32]) {
    let dh = spec::dh(ours, theirs);
    let (root, chain) = spec::root_step(root_key, &dh);
    v.mid(&format!("{p}.dh"), &dh, "DH(our new ratchet key, their newest ratchet key)");
    v.mid(
        &format!("{p}.root_key"),
        &root,
        "RK' = first half of HKDF(salt = RK, ikm = dh, info = \"multidevice/v1/kdf/root\")",
    );
    v.mid(&format!("{p}.chain_key"), &chain, "CK_new = second half of that HKDF output");
    (root, chain)
}

/// The crate's active session of `device` with `remote`.
pub(crate) fn session_state(device: &Device, remote: DeviceAddress) -> SessionSecrets {
    test_support::active_session_secrets(device, remote).expect("an active session")
}

/// Checks the crate's session state against the spec model's.
pub(crate) fn assert_session(
    state: &SessionSecrets,
    session_id: &[u8; 16],
    ad: &[u8; 32],
    root_key: &[u8; 32],
    sending: Option<&Chain>,
) {
    assert_eq!(&state.session_id, session_id, "session id");
    assert_eq!(&state.associated_data, ad, "associated data");
    assert_eq!(&*state.root_key, root_key, "root key");
    match (sending, &state.sending) {
        (Some(chain), Some(ours)) => {
            assert_eq!(ours.ratchet_public, chain.ratchet_public, "ratchet key");
            assert_eq!(*ours.chain_key, chain.chain_key, "sending chain key");
            assert_eq!(ours.counter, chain.counter, "sending counter");
        }
        (None, None) => {}
        _ => panic!("sending chain presence differs"),
    }
}

/// The digest of a signed device list's body (§8), from the list's bytes.
pub(crate) fn list_digest(list: &[u8]) -> [u8; 32] {
    let count = usize::from(list[2 + 8 + 128 + 8 + 8 + 32]);
    let body = &list[..2 + 8 + 128 + 8 + 8 + 32 + 1 + 40 * count];
    spec::h(spec::label::HASH_DEVICE_LIST, &[body])
}
