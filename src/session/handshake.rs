//! Session setup in the style of X3DH.
//!
//! The initiator combines its identity key and a fresh base key with the responder's identity
//! key, signed prekey and optional one-time prekey. Both sides derive the same root and chain key
//! only if they agree on both identities and both addresses, which are hashed into the
//! associated data. Every Diffie-Hellman result is checked to be contributory.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::{self, X25519KeyPair, label};
use crate::error::SessionError;
use crate::keys::{DeviceAddress, IdentityKeyPair, PublicIdentity};
use crate::prekeys::VerifiedPrekeyBundle;
use crate::session::message::{PrekeyFields, SessionId};
use crate::session::ratchet::{PendingPrekey, Session, split_keys};

/// The associated data of a session: who initiated, who responded, at which addresses.
pub(crate) fn associated_data(
    initiator: DeviceAddress,
    initiator_identity: &PublicIdentity,
    responder: DeviceAddress,
    responder_identity: &PublicIdentity,
) -> [u8; 32] {
    crypto::hash(
        label::HASH_AD,
        &[
            &initiator.to_bytes(),
            &initiator_identity.to_bytes(),
            &responder.to_bytes(),
            &responder_identity.to_bytes(),
        ],
    )
}

/// The identifier both sides derive from the initiator's base key.
pub(crate) fn session_id(base_key: &[u8; 32]) -> SessionId {
    crypto::first_16(&crypto::hash(label::HASH_SESSION_ID, &[base_key]))
}

fn derive(
    secrets: &[&[u8; 32]],
    associated_data: &[u8; 32],
) -> (crypto::Secret32, crypto::Secret32) {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (secrets.len() + 1)));
    ikm.extend_from_slice(&[0xFF; 32]);
    for secret in secrets {
        ikm.extend_from_slice(secret.as_slice());
    }
    let mut okm = Zeroizing::new([0u8; 64]);
    crypto::hkdf(&[0u8; 32], &ikm, &[label::KDF_X3DH, associated_data], okm.as_mut_slice());
    split_keys(&okm)
}

/// Starts a session as initiator towards the device a verified bundle describes.
pub(crate) fn initiate(
    rng: &mut (impl CryptoRng + ?Sized),
    own: &IdentityKeyPair,
    own_address: DeviceAddress,
    bundle: &VerifiedPrekeyBundle,
) -> Result<Session, SessionError> {
    let bundle = bundle.bundle();
    let base = X25519KeyPair::generate(rng);
    let dh1 = own.agreement().dh(&bundle.signed_prekey.public)?;
    let dh2 = base.dh(bundle.identity.agreement_key_bytes())?;
    let dh3 = base.dh(&bundle.signed_prekey.public)?;
    let dh4 = bundle.one_time_prekey.map(|otk| base.dh(&otk.public)).transpose()?;
    let ad = associated_data(own_address, own.public(), bundle.address, &bundle.identity);
    let mut secrets: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(dh4) = &dh4 {
        secrets.push(dh4);
    }
    let (root_key, chain_key) = derive(&secrets, &ad);
    let pending = PendingPrekey {
        base_key: *base.public(),
        signed_prekey_id: bundle.signed_prekey.id,
        one_time_prekey_id: bundle.one_time_prekey.map(|otk| otk.id),
    };
    Ok(Session::new_initiator(
        session_id(base.public()),
        ad,
        bundle.identity.fingerprint(),
        root_key,
        chain_key,
        base,
        pending,
    ))
}

/// Derives the responder's session from an initial message. The caller looked up the prekeys the
/// message names and commits nothing until the first message decrypts.
pub(crate) fn respond(
    own: &IdentityKeyPair,
    own_address: DeviceAddress,
    sender: DeviceAddress,
    fields: &PrekeyFields,
    signed_prekey: &X25519KeyPair,
    one_time_prekey: Option<&X25519KeyPair>,
) -> Result<Session, SessionError> {
    let their_identity = &fields.sender_identity;
    let dh1 = signed_prekey.dh(their_identity.agreement_key_bytes())?;
    let dh2 = own.agreement().dh(&fields.base_key)?;
    let dh3 = signed_prekey.dh(&fields.base_key)?;
    let dh4 = one_time_prekey.map(|otk| otk.dh(&fields.base_key)).transpose()?;
    let ad = associated_data(sender, their_identity, own_address, own.public());
    let mut secrets: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(dh4) = &dh4 {
        secrets.push(dh4);
    }
    let (root_key, chain_key) = derive(&secrets, &ad);
    Ok(Session::new_responder(
        session_id(&fields.base_key),
        ad,
        their_identity.fingerprint(),
        root_key,
        chain_key,
        fields.base_key,
    ))
}
