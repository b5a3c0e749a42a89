//! Signed prekeys, one-time prekeys and the bundles peers fetch to start a session.
//!
//! A device owns its [`PrekeyStore`]: the current signed prekey, the previous one during its grace
//! period, and the unused one-time prekeys. Peers see only [`PrekeyBundle`]s, which they must turn
//! into a [`VerifiedPrekeyBundle`] before a session can start. A one-time prekey leaves the store
//! only when a session was successfully created from it.

use std::collections::BTreeMap;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::consts::{
    MAX_ONE_TIME_PREKEYS, ONE_TIME_PREKEY_LIFETIME_SECS, SIGNED_PREKEY_GRACE_SECS,
};
use crate::crypto::{self, X25519KeyPair, label};
use crate::error::{DecodeError, KeyError, SignatureKind};
use crate::keys::{DeviceAddress, IdentityKeyPair, PublicIdentity, Timestamp};
use crate::wire::{Codec, Reader};

/// The public half of a signed prekey, with the identity's signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPrekeyPublic {
    /// Identifier chosen by the owning device.
    pub id: u32,
    /// X25519 public key.
    pub public: [u8; 32],
    /// Ed25519 signature by the device identity over the id and the key.
    pub signature: [u8; 64],
}

impl SignedPrekeyPublic {
    pub(crate) const LEN: usize = 4 + 32 + 64;

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.public);
        out.extend_from_slice(&self.signature);
    }

    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { id: reader.u32()?, public: reader.array()?, signature: reader.array()? })
    }

    pub(crate) fn verify(&self, identity: &PublicIdentity) -> Result<(), KeyError> {
        crypto::verify(
            identity.verifying_key(),
            label::SIG_SIGNED_PREKEY,
            &[&self.id.to_be_bytes(), &self.public],
            &self.signature,
            SignatureKind::SignedPrekey,
        )
    }
}

/// The public half of a one-time prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneTimePrekeyPublic {
    /// Identifier chosen by the owning device.
    pub id: u32,
    /// X25519 public key.
    pub public: [u8; 32],
}

impl OneTimePrekeyPublic {
    const LEN: usize = 4 + 32;

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.public);
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { id: reader.u32()?, public: reader.array()? })
    }
}

/// What a device uploads to the server: its identity, signed prekey and one-time prekeys.
///
/// The server hands each initiator a [`PrekeyBundle`] made from it with at most one one-time
/// prekey, which it then deletes ([`PrekeyUpload::bundle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyUpload {
    /// The uploading device.
    pub address: DeviceAddress,
    /// Its identity.
    pub identity: PublicIdentity,
    /// Its current signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// Its unused one-time prekeys.
    pub one_time_prekeys: Vec<OneTimePrekeyPublic>,
}

impl PrekeyUpload {
    /// The bundle a server serves to one initiator, using the one-time prekey at `index` if any.
    pub fn bundle(&self, one_time_index: Option<usize>) -> PrekeyBundle {
        PrekeyBundle {
            address: self.address,
            identity: self.identity.clone(),
            signed_prekey: self.signed_prekey.clone(),
            one_time_prekey: one_time_index.and_then(|i| self.one_time_prekeys.get(i).copied()),
        }
    }

    /// Canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }

    /// The one-time prekeys that fit the encoding (its count is a `u16`).
    fn encoded_one_time_prekeys(&self) -> &[OneTimePrekeyPublic] {
        let count = self.one_time_prekeys.len().min(usize::from(u16::MAX));
        self.one_time_prekeys.get(..count).unwrap_or_default()
    }
}

impl Codec<'_> for PrekeyUpload {
    const TYPE: u8 = 0x11;
    const MIN_BODY_LEN: usize =
        DeviceAddress::LEN + PublicIdentity::LEN + SignedPrekeyPublic::LEN + 2;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN + self.encoded_one_time_prekeys().len() * OneTimePrekeyPublic::LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.address.to_bytes());
        out.extend_from_slice(&self.identity.to_bytes());
        self.signed_prekey.write(out);
        let keys = self.encoded_one_time_prekeys();
        out.extend_from_slice(&u16::try_from(keys.len()).unwrap_or(u16::MAX).to_be_bytes());
        for key in keys {
            key.write(out);
        }
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let address = DeviceAddress::read(reader)?;
        let identity = PublicIdentity::read(reader)?;
        let signed_prekey = SignedPrekeyPublic::read(reader)?;
        let count = usize::from(reader.u16()?);
        if count > MAX_ONE_TIME_PREKEYS {
            return Err(DecodeError::TooLong { limit: MAX_ONE_TIME_PREKEYS, got: count });
        }
        let one_time_prekeys =
            (0..count).map(|_| OneTimePrekeyPublic::read(reader)).collect::<Result<_, _>>()?;
        Ok(Self { address, identity, signed_prekey, one_time_prekeys })
    }
}

impl TryFrom<&[u8]> for PrekeyUpload {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}

/// A prekey bundle as served by the (untrusted) server. Verify it before use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// The device the bundle claims to belong to.
    pub address: DeviceAddress,
    /// The device identity it claims.
    pub identity: PublicIdentity,
    /// The signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// A one-time prekey, if the server had one left.
    pub one_time_prekey: Option<OneTimePrekeyPublic>,
}

impl PrekeyBundle {
    /// Checks the signed prekey's signature against the bundle's identity.
    ///
    /// This proves only that the bundle is internally consistent. Whether the identity belongs to
    /// the device at `address` is for the device list to say; see
    /// [`crate::VerifiedDeviceList`] and the fan-out API, which check both.
    pub fn verify(self) -> Result<VerifiedPrekeyBundle, KeyError> {
        self.signed_prekey.verify(&self.identity)?;
        Ok(VerifiedPrekeyBundle(self))
    }

    /// Canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
}

impl Codec<'_> for PrekeyBundle {
    const TYPE: u8 = 0x10;
    const MIN_BODY_LEN: usize =
        DeviceAddress::LEN + PublicIdentity::LEN + SignedPrekeyPublic::LEN + 1;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN + self.one_time_prekey.map_or(0, |_| OneTimePrekeyPublic::LEN)
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.address.to_bytes());
        out.extend_from_slice(&self.identity.to_bytes());
        self.signed_prekey.write(out);
        match &self.one_time_prekey {
            Some(key) => {
                out.push(1);
                key.write(out);
            }
            None => out.push(0),
        }
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let address = DeviceAddress::read(reader)?;
        let identity = PublicIdentity::read(reader)?;
        let signed_prekey = SignedPrekeyPublic::read(reader)?;
        let one_time_prekey =
            if reader.flag()? { Some(OneTimePrekeyPublic::read(reader)?) } else { None };
        Ok(Self { address, identity, signed_prekey, one_time_prekey })
    }
}

impl TryFrom<&[u8]> for PrekeyBundle {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}

/// A prekey bundle whose signed prekey signature was checked. Only [`PrekeyBundle::verify`]
/// builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPrekeyBundle(PrekeyBundle);

impl VerifiedPrekeyBundle {
    /// The verified bundle.
    pub fn bundle(&self) -> &PrekeyBundle {
        &self.0
    }
}

/// A signed prekey with its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedPrekey {
    id: u32,
    pair: X25519KeyPair,
    #[serde(with = "crate::serde_util::bytes64")]
    signature: [u8; 64],
}

impl SignedPrekey {
    fn generate(rng: &mut (impl CryptoRng + ?Sized), identity: &IdentityKeyPair, id: u32) -> Self {
        let pair = X25519KeyPair::generate(rng);
        let signature = crypto::sign(
            identity.signing_key(),
            label::SIG_SIGNED_PREKEY,
            &[&id.to_be_bytes(), pair.public()],
        );
        Self { id, pair, signature }
    }

    fn public(&self) -> SignedPrekeyPublic {
        SignedPrekeyPublic { id: self.id, public: *self.pair.public(), signature: self.signature }
    }
}

/// A one-time prekey with its secret and the time it was generated for upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OneTimePrekey {
    pub(crate) pair: X25519KeyPair,
    /// The clock high-water mark when it was generated: it expires
    /// [`ONE_TIME_PREKEY_LIFETIME_SECS`] later if no session used it.
    pub(crate) created: Timestamp,
}

impl OneTimePrekey {
    /// True until [`ONE_TIME_PREKEY_LIFETIME_SECS`] after it was generated.
    fn live_at(&self, clock: Timestamp) -> bool {
        clock.secs_since(self.created) <= ONE_TIME_PREKEY_LIFETIME_SECS
    }
}

/// The signed prekeys and the one-time id counter: the part of a device's prekeys that lives in
/// its own record. One-time prekeys are records of their own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SignedPrekeys {
    current: SignedPrekey,
    /// The superseded signed prekey and when it stops being accepted.
    previous: Option<(SignedPrekey, Timestamp)>,
    next_one_time_id: u32,
}

/// A device's own prekeys, with their secrets. Its one-time map holds every one-time prekey of an
/// in-memory device, and the ones an operation loaded for a stored device.
#[derive(Debug, Clone)]
pub(crate) struct PrekeyStore {
    pub(crate) signed: SignedPrekeys,
    pub(crate) one_time: BTreeMap<u32, OneTimePrekey>,
}

/// The prekeys as persisted state format 2 kept them, before one-time prekeys recorded when they
/// were generated: read only to import that format.
#[derive(Deserialize)]
pub(crate) struct LegacyPrekeys {
    current: SignedPrekey,
    previous: Option<(SignedPrekey, Timestamp)>,
    one_time: BTreeMap<u32, X25519KeyPair>,
    next_one_time_id: u32,
}

impl LegacyPrekeys {
    /// The current form; one-time prekeys count as generated at `created`.
    pub(crate) fn upgrade(self, created: Timestamp) -> PrekeyStore {
        PrekeyStore {
            signed: SignedPrekeys {
                current: self.current,
                previous: self.previous,
                next_one_time_id: self.next_one_time_id,
            },
            one_time: self
                .one_time
                .into_iter()
                .map(|(id, pair)| (id, OneTimePrekey { pair, created }))
                .collect(),
        }
    }
}

impl PrekeyStore {
    pub(crate) fn new(rng: &mut (impl CryptoRng + ?Sized), identity: &IdentityKeyPair) -> Self {
        Self {
            signed: SignedPrekeys {
                current: SignedPrekey::generate(rng, identity, 1),
                previous: None,
                next_one_time_id: 1,
            },
            one_time: BTreeMap::new(),
        }
    }

    /// Replaces the signed prekey; the old one is accepted for [`SIGNED_PREKEY_GRACE_SECS`].
    pub(crate) fn rotate_signed(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        now: Timestamp,
    ) -> SignedPrekeyPublic {
        let signed = &mut self.signed;
        let id = signed.current.id.wrapping_add(1).max(1);
        let old =
            core::mem::replace(&mut signed.current, SignedPrekey::generate(rng, identity, id));
        signed.previous = Some((old, now.plus_secs(SIGNED_PREKEY_GRACE_SECS)));
        signed.current.public()
    }

    pub(crate) fn signed_public(&self) -> SignedPrekeyPublic {
        self.signed.current.public()
    }

    /// The secret for signed prekey `id`, if it is current or still within its grace period.
    pub(crate) fn signed_secret(&self, id: u32, now: Timestamp) -> Option<&X25519KeyPair> {
        let signed = &self.signed;
        if id == signed.current.id {
            return Some(&signed.current.pair);
        }
        match &signed.previous {
            Some((old, expires)) if old.id == id && now <= *expires => Some(&old.pair),
            _ => None,
        }
    }

    /// The secret of one-time prekey `id`, if it is held and has not expired at `clock`.
    pub(crate) fn one_time_secret(&self, id: u32, clock: Timestamp) -> Option<&X25519KeyPair> {
        self.one_time.get(&id).filter(|k| k.live_at(clock)).map(|k| &k.pair)
    }

    pub(crate) fn consume_one_time(&mut self, id: u32) {
        self.one_time.remove(&id);
    }

    pub(crate) fn one_time_remaining(&self) -> usize {
        self.one_time.len()
    }

    pub(crate) fn one_time_publics(&self) -> Vec<OneTimePrekeyPublic> {
        self.one_time
            .iter()
            .map(|(&id, key)| OneTimePrekeyPublic { id, public: *key.pair.public() })
            .collect()
    }

    /// Forgets the one-time prekeys generated more than [`ONE_TIME_PREKEY_LIFETIME_SECS`] before
    /// `clock`: handed out and never used, or never handed out.
    pub(crate) fn expire_one_time(&mut self, clock: Timestamp) {
        self.one_time.retain(|_, key| key.live_at(clock));
    }

    /// How many one-time prekeys have not expired at `clock`.
    pub(crate) fn live_one_time(&self, clock: Timestamp) -> usize {
        self.one_time.values().filter(|key| key.live_at(clock)).count()
    }

    /// Adds `count` one-time prekeys, refusing to exceed [`MAX_ONE_TIME_PREKEYS`].
    pub(crate) fn generate_one_time(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        count: usize,
        created: Timestamp,
    ) -> Option<Vec<OneTimePrekeyPublic>> {
        if self.one_time.len().saturating_add(count) > MAX_ONE_TIME_PREKEYS {
            return None;
        }
        let mut fresh = Vec::with_capacity(count);
        for _ in 0..count {
            let id = self.signed.next_one_time_id;
            self.signed.next_one_time_id = id.wrapping_add(1).max(1);
            let pair = X25519KeyPair::generate(rng);
            fresh.push(OneTimePrekeyPublic { id, public: *pair.public() });
            self.one_time.insert(id, OneTimePrekey { pair, created });
        }
        Some(fresh)
    }
}
