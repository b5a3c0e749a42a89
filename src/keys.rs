//! Device identities and addresses.
//!
//! This module owns a device's long-term keys: an Ed25519 signing key and an X25519 agreement key
//! signed by it. A [`PublicIdentity`] can only be obtained by checking that signature, so holding
//! one proves the two halves belong together. It never sees a peer's secret and never signs
//! anything but its own agreement key.

use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::crypto::{self, Hex, Secret32, X25519KeyPair, label};
use crate::error::{DecodeError, SignatureKind};
use crate::wire::Reader;

/// Identifies an account, as assigned by the app's server (for example a hashed phone number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(pub u64);

/// Identifies a device within its account. The primary is always [`DeviceId::PRIMARY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub u32);

impl DeviceId {
    /// The primary device of every account.
    pub const PRIMARY: DeviceId = DeviceId(0);

    /// True for the account's primary device.
    pub fn is_primary(self) -> bool {
        self == Self::PRIMARY
    }
}

/// Where a device is reached: (account id, device id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceAddress {
    /// The account the device belongs to.
    pub account: AccountId,
    /// The device within the account.
    pub device: DeviceId,
}

impl DeviceAddress {
    /// Encoded length on the wire.
    pub(crate) const LEN: usize = 12;

    /// The address of `device` in `account`.
    pub fn new(account: AccountId, device: DeviceId) -> Self {
        Self { account, device }
    }

    pub(crate) fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let (account, device) = out.split_at_mut(8);
        account.copy_from_slice(&self.account.0.to_be_bytes());
        device.copy_from_slice(&self.device.0.to_be_bytes());
        out
    }

    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { account: AccountId(reader.u64()?), device: DeviceId(reader.u32()?) })
    }

    /// The address encoded in exactly `bytes`.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        let address = Self::read(&mut reader).ok()?;
        reader.finish().ok()?;
        Some(address)
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.account.0, self.device.0)
    }
}

/// A point in time: whole seconds since the Unix epoch, always supplied by the app.
///
/// The crate never reads a clock; every time-dependent call takes `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Seconds since the Unix epoch.
    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// This time plus `secs`, saturating at the far future.
    pub fn plus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs))
    }

    /// Seconds from `earlier` to `self`, or zero if `earlier` is later.
    pub fn secs_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A stable, comparable digest of a device identity.
///
/// `SHA-256("multidevice/v1/hash/fingerprint" || 0x00 || signing key || agreement key)`.
/// Equality is constant-time.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
pub struct Fingerprint(pub(crate) [u8; 32]);

impl Fingerprint {
    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        crypto::ct_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", Hex(&self.0))
    }
}

/// A device's public identity: its Ed25519 verifying key and its X25519 agreement key, with the
/// signature binding the second to the first.
///
/// Only obtainable by parsing and verifying ([`TryFrom<&[u8]>`]) or from a device's own keys.
///
/// ```
/// use multidevice::PublicIdentity;
/// # let mut rng = rand::rngs::StdRng::seed_from_u64(1);
/// # use rand::SeedableRng;
/// # let device = multidevice::Device::new(&mut rng, multidevice::DeviceAddress::new(
/// #     multidevice::AccountId(1), multidevice::DeviceId::PRIMARY), multidevice::Timestamp(0));
/// let bytes = device.public_identity().to_bytes();
/// let parsed = PublicIdentity::try_from(&bytes[..]).unwrap();
/// assert_eq!(parsed.fingerprint(), device.public_identity().fingerprint());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    signing: VerifyingKey,
    agreement: [u8; 32],
    agreement_signature: [u8; 64],
}

impl PublicIdentity {
    /// Encoded length: signing key, agreement key, signature.
    pub const LEN: usize = 32 + 32 + 64;

    /// The canonical encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let (signing, rest) = out.split_at_mut(32);
        let (agreement, signature) = rest.split_at_mut(32);
        signing.copy_from_slice(self.signing.as_bytes());
        agreement.copy_from_slice(&self.agreement);
        signature.copy_from_slice(&self.agreement_signature);
        out
    }

    /// The stable fingerprint of this identity.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(crypto::hash(
            label::HASH_FINGERPRINT,
            &[self.signing.as_bytes(), &self.agreement],
        ))
    }

    /// The Ed25519 verifying key.
    pub fn signing_key_bytes(&self) -> &[u8; 32] {
        self.signing.as_bytes()
    }

    /// The X25519 agreement key.
    pub fn agreement_key_bytes(&self) -> &[u8; 32] {
        &self.agreement
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.signing
    }

    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let signing: [u8; 32] = reader.array()?;
        let agreement: [u8; 32] = reader.array()?;
        let agreement_signature: [u8; 64] = reader.array()?;
        let signing =
            crypto::ed25519_public_key(&signing).map_err(|_| DecodeError::InvalidSigningKey)?;
        crypto::verify(
            &signing,
            label::SIG_IDENTITY_AGREEMENT,
            &[&agreement],
            &agreement_signature,
            SignatureKind::IdentityAgreementKey,
        )
        .map_err(|_| DecodeError::BadIdentitySignature)?;
        Ok(Self { signing, agreement, agreement_signature })
    }
}

/// Parses and verifies an identity: the signing key must be the canonical encoding of a curve
/// point, and the signature over the agreement key must pass strict verification (which also
/// refuses a signing key of small order).
impl TryFrom<&[u8]> for PublicIdentity {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let identity = Self::read(&mut reader)?;
        reader.finish()?;
        Ok(identity)
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicIdentity").field("fingerprint", &self.fingerprint()).finish()
    }
}

impl Serialize for PublicIdentity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for PublicIdentity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        PublicIdentity::try_from(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

/// A device's secret identity keys. Never leaves the device; wiped on drop.
#[derive(Serialize, Deserialize)]
#[serde(from = "IdentitySecrets", into = "IdentitySecrets")]
pub(crate) struct IdentityKeyPair {
    signing: SigningKey,
    agreement: X25519KeyPair,
    public: PublicIdentity,
}

impl IdentityKeyPair {
    pub(crate) fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let signing = SigningKey::generate(rng);
        let agreement = X25519KeyPair::generate(rng);
        Self::assemble(signing, agreement)
    }

    fn assemble(signing: SigningKey, agreement: X25519KeyPair) -> Self {
        let agreement_signature =
            crypto::sign(&signing, label::SIG_IDENTITY_AGREEMENT, &[agreement.public()]);
        let public = PublicIdentity {
            signing: signing.verifying_key(),
            agreement: *agreement.public(),
            agreement_signature,
        };
        Self { signing, agreement, public }
    }

    pub(crate) fn public(&self) -> &PublicIdentity {
        &self.public
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub(crate) fn agreement(&self) -> &X25519KeyPair {
        &self.agreement
    }
}

impl Clone for IdentityKeyPair {
    fn clone(&self) -> Self {
        Self {
            signing: self.signing.clone(),
            agreement: self.agreement.clone(),
            public: self.public.clone(),
        }
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair").field("public", &self.public).finish_non_exhaustive()
    }
}

/// The persisted form of [`IdentityKeyPair`]: the two secret seeds only.
#[derive(Serialize, Deserialize)]
struct IdentitySecrets {
    signing: Secret32,
    agreement: Secret32,
}

impl From<IdentityKeyPair> for IdentitySecrets {
    fn from(pair: IdentityKeyPair) -> Self {
        let seed = Zeroizing::new(pair.signing.to_bytes());
        Self { signing: Secret32::new(*seed), agreement: pair.agreement.clone().into() }
    }
}

impl From<IdentitySecrets> for IdentityKeyPair {
    fn from(secrets: IdentitySecrets) -> Self {
        let signing = SigningKey::from_bytes(secrets.signing.as_bytes());
        Self::assemble(signing, X25519KeyPair::from(secrets.agreement))
    }
}
