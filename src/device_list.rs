//! Companion authorization and the signed device list.
//!
//! The primary's signing key is the account identity. It signs each companion into a
//! [`SignedDeviceIdentity`] (account signature), the companion countersigns (device signature),
//! and the primary signs the list of all devices. [`SignedDeviceList::verify`] is the only way
//! to obtain a [`VerifiedDeviceList`], and only a verified list yields the [`AuthorizedDevice`]s
//! that encryption accepts. This module never decides what a device does with a list (rollback,
//! equivocation and the 14-day rule live in [`crate::Device`]); it only proves what the primary
//! signed.

use serde::{Deserialize, Serialize};

use crate::consts::MAX_COMPANIONS;
use crate::crypto::{self, label};
use crate::error::{DecodeError, DeviceListError, KeyError, SignatureKind};
use crate::keys::{
    AccountId, DeviceAddress, DeviceId, Fingerprint, IdentityKeyPair, PublicIdentity, Timestamp,
};
use crate::wire::{self, Codec, Reader};

/// What the primary states about a companion when it links it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkingMetadata {
    /// The account the companion joins.
    pub account: AccountId,
    /// The device id the primary assigned.
    pub device: DeviceId,
    /// Increases with every device the primary links; never reused.
    pub key_index: u32,
    /// When the primary approved the link.
    pub timestamp: Timestamp,
}

impl LinkingMetadata {
    pub(crate) const LEN: usize = 8 + 4 + 4 + 8;

    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.account.0.to_be_bytes());
        out.extend_from_slice(&self.device.0.to_be_bytes());
        out.extend_from_slice(&self.key_index.to_be_bytes());
        out.extend_from_slice(&self.timestamp.0.to_be_bytes());
        out
    }

    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            account: AccountId(reader.u64()?),
            device: DeviceId(reader.u32()?),
            key_index: reader.u32()?,
            timestamp: Timestamp(reader.u64()?),
        })
    }

    /// The address this metadata assigns.
    pub fn address(&self) -> DeviceAddress {
        DeviceAddress::new(self.account, self.device)
    }
}

/// A companion's identity with the account signature and the companion's countersignature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDeviceIdentity {
    /// The linking metadata both signatures cover.
    pub metadata: LinkingMetadata,
    /// The companion's device identity.
    pub identity: PublicIdentity,
    /// The primary's signature: `"multidevice/v1/sig/account-signature"`.
    #[serde(with = "crate::serde_util::bytes64")]
    pub account_signature: [u8; 64],
    /// The companion's signature: `"multidevice/v1/sig/device-signature"`.
    #[serde(with = "crate::serde_util::bytes64")]
    pub device_signature: [u8; 64],
}

impl SignedDeviceIdentity {
    /// The primary's account signature over the metadata and the companion identity.
    pub(crate) fn account_sign(
        primary: &IdentityKeyPair,
        metadata: LinkingMetadata,
        identity: &PublicIdentity,
    ) -> [u8; 64] {
        crypto::sign(
            primary.signing_key(),
            label::SIG_ACCOUNT,
            &[&metadata.to_bytes(), &identity.to_bytes()],
        )
    }

    /// Checks the account signature alone: what a companion checks before countersigning.
    pub(crate) fn verify_account_signature(
        metadata: LinkingMetadata,
        identity: &PublicIdentity,
        account_identity: &PublicIdentity,
        signature: &[u8; 64],
    ) -> Result<(), KeyError> {
        crypto::verify(
            account_identity.verifying_key(),
            label::SIG_ACCOUNT,
            &[&metadata.to_bytes(), &identity.to_bytes()],
            signature,
            SignatureKind::AccountSignature,
        )
    }

    /// The companion's device signature over the metadata, its identity and the account
    /// identity.
    pub(crate) fn device_sign(
        companion: &IdentityKeyPair,
        metadata: LinkingMetadata,
        account_identity: &PublicIdentity,
    ) -> [u8; 64] {
        crypto::sign(
            companion.signing_key(),
            label::SIG_DEVICE,
            &[
                &metadata.to_bytes(),
                &companion.public().to_bytes(),
                account_identity.signing_key_bytes(),
            ],
        )
    }

    /// Checks both signatures against the account identity.
    pub fn verify(&self, account_identity: &PublicIdentity) -> Result<(), KeyError> {
        Self::verify_account_signature(
            self.metadata,
            &self.identity,
            account_identity,
            &self.account_signature,
        )?;
        crypto::verify(
            self.identity.verifying_key(),
            label::SIG_DEVICE,
            &[
                &self.metadata.to_bytes(),
                &self.identity.to_bytes(),
                account_identity.signing_key_bytes(),
            ],
            &self.device_signature,
            SignatureKind::DeviceSignature,
        )
    }

    /// Canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
}

impl Codec<'_> for SignedDeviceIdentity {
    const TYPE: u8 = 0x21;
    const MIN_BODY_LEN: usize = LinkingMetadata::LEN + PublicIdentity::LEN + 64 + 64;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.metadata.to_bytes());
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.account_signature);
        out.extend_from_slice(&self.device_signature);
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            metadata: LinkingMetadata::read(reader)?,
            identity: PublicIdentity::read(reader)?,
            account_signature: reader.array()?,
            device_signature: reader.array()?,
        })
    }
}

impl TryFrom<&[u8]> for SignedDeviceIdentity {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}

/// One device in a list: what the primary's list signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListEntry {
    /// The device id.
    pub device: DeviceId,
    /// Its key index (0 for the primary).
    pub key_index: u32,
    /// The fingerprint of its identity.
    pub identity_digest: Fingerprint,
}

/// The signed content of a device list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListBody {
    account: AccountId,
    account_identity: PublicIdentity,
    version: u64,
    issued_at: Timestamp,
    previous_digest: [u8; 32],
    entries: Vec<DeviceListEntry>,
}

impl ListBody {
    /// Length of the fields before the entries.
    const FIXED_LEN: usize = 8 + PublicIdentity::LEN + 8 + 8 + 32 + 1;
    /// Length of one entry.
    const ENTRY_LEN: usize = 4 + 4 + 32;

    fn len(&self) -> usize {
        Self::FIXED_LEN + self.entries.len() * Self::ENTRY_LEN
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.account.0.to_be_bytes());
        out.extend_from_slice(&self.account_identity.to_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.issued_at.0.to_be_bytes());
        out.extend_from_slice(&self.previous_digest);
        out.push(u8::try_from(self.entries.len()).unwrap_or(u8::MAX));
        for entry in &self.entries {
            out.extend_from_slice(&entry.device.0.to_be_bytes());
            out.extend_from_slice(&entry.key_index.to_be_bytes());
            out.extend_from_slice(entry.identity_digest.as_bytes());
        }
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let account = AccountId(reader.u64()?);
        let account_identity = PublicIdentity::read(reader)?;
        let version = reader.u64()?;
        let issued_at = Timestamp(reader.u64()?);
        let previous_digest = reader.array()?;
        let count = usize::from(reader.u8()?);
        if count > MAX_COMPANIONS + 1 {
            return Err(DecodeError::TooLong { limit: MAX_COMPANIONS + 1, got: count });
        }
        let entries = (0..count)
            .map(|_| {
                Ok(DeviceListEntry {
                    device: DeviceId(reader.u32()?),
                    key_index: reader.u32()?,
                    identity_digest: Fingerprint(reader.array()?),
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        Ok(Self { account, account_identity, version, issued_at, previous_digest, entries })
    }
}

/// A device list as served by the (untrusted) server: the primary-signed body, its signature,
/// and the signed identity of every companion it names.
///
/// Layout: `body || signature (64) || SignedDeviceIdentity x (entries - 1)`, see
/// docs/PROTOCOL.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDeviceList {
    body: ListBody,
    body_bytes: Vec<u8>,
    signature: [u8; 64],
    companions: Vec<SignedDeviceIdentity>,
}

impl SignedDeviceList {
    /// Builds and signs a list. Callers guarantee the entries are sorted, unique and bounded.
    pub(crate) fn sign(
        primary: &IdentityKeyPair,
        account: AccountId,
        version: u64,
        issued_at: Timestamp,
        previous_digest: [u8; 32],
        companions: Vec<SignedDeviceIdentity>,
    ) -> Self {
        let mut entries = vec![DeviceListEntry {
            device: DeviceId::PRIMARY,
            key_index: 0,
            identity_digest: primary.public().fingerprint(),
        }];
        entries.extend(companions.iter().map(|c| DeviceListEntry {
            device: c.metadata.device,
            key_index: c.metadata.key_index,
            identity_digest: c.identity.fingerprint(),
        }));
        let body = ListBody {
            account,
            account_identity: primary.public().clone(),
            version,
            issued_at,
            previous_digest,
            entries,
        };
        let mut body_bytes = Vec::with_capacity(2 + body.len());
        body_bytes.extend_from_slice(&[wire::VERSION, Self::TYPE]);
        body.write(&mut body_bytes);
        let signature = crypto::sign(primary.signing_key(), label::SIG_DEVICE_LIST, &[&body_bytes]);
        Self { body, body_bytes, signature, companions }
    }

    /// The account the list claims to describe.
    pub fn account(&self) -> AccountId {
        self.body.account
    }

    /// The version it claims.
    pub fn version(&self) -> u64 {
        self.body.version
    }

    /// Canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }

    /// Checks the list signature under the account identity it names, the list rules, and both
    /// signatures of every companion.
    ///
    /// Rule for a bad companion: the whole list is rejected, because the primary signed an entry
    /// that does not verify, or the server tampered with what it relays.
    pub fn verify(&self) -> Result<VerifiedDeviceList, DeviceListError> {
        let body = &self.body;
        crypto::verify(
            body.account_identity.verifying_key(),
            label::SIG_DEVICE_LIST,
            &[&self.body_bytes],
            &self.signature,
            SignatureKind::DeviceList,
        )?;
        // Version 0 is never signed: it is what a device announces when it holds no own list.
        if body.version == 0 {
            return Err(DeviceListError::ZeroVersion);
        }
        let companions = body.entries.len().saturating_sub(1);
        if companions > MAX_COMPANIONS {
            return Err(DeviceListError::TooManyCompanions { got: companions });
        }
        let mut entries = body.entries.iter();
        match entries.next() {
            Some(primary)
                if primary.device.is_primary()
                    && primary.key_index == 0
                    && primary.identity_digest == body.account_identity.fingerprint() => {}
            _ => return Err(DeviceListError::MissingPrimary),
        }
        let mut devices = Vec::with_capacity(body.entries.len());
        devices.push(AuthorizedDevice {
            address: DeviceAddress::new(body.account, DeviceId::PRIMARY),
            key_index: 0,
            identity: body.account_identity.clone(),
        });
        let mut previous = DeviceId::PRIMARY;
        for (entry, signed) in entries.zip(&self.companions) {
            if entry.device <= previous {
                return Err(DeviceListError::UnsortedEntries);
            }
            previous = entry.device;
            if body.entries.iter().filter(|e| e.identity_digest == entry.identity_digest).count()
                > 1
            {
                return Err(DeviceListError::DuplicateIdentity);
            }
            let metadata = signed.metadata;
            if metadata.account != body.account
                || metadata.device != entry.device
                || metadata.key_index != entry.key_index
                || signed.identity.fingerprint() != entry.identity_digest
            {
                return Err(DeviceListError::EntryMismatch { device: entry.device });
            }
            signed.verify(&body.account_identity)?;
            devices.push(AuthorizedDevice {
                address: metadata.address(),
                key_index: metadata.key_index,
                identity: signed.identity.clone(),
            });
        }
        Ok(VerifiedDeviceList {
            account: body.account,
            account_identity: body.account_identity.clone(),
            version: body.version,
            issued_at: body.issued_at,
            previous_digest: body.previous_digest,
            digest: list_digest(&self.body_bytes),
            devices,
            companions: self.companions.clone(),
            bytes: self.to_bytes(),
        })
    }
}

fn list_digest(body_bytes: &[u8]) -> [u8; 32] {
    crypto::hash(label::HASH_DEVICE_LIST, &[body_bytes])
}

/// `ListBody || list signature (64) || SignedDeviceIdentity x (entries - 1)`: the header and
/// list body are what the signature and the digest cover, kept exactly as received.
impl Codec<'_> for SignedDeviceList {
    const TYPE: u8 = 0x20;
    const MIN_BODY_LEN: usize = ListBody::FIXED_LEN + 64;

    fn body_len(&self) -> usize {
        self.body_bytes.len() - 2
            + 64
            + self.companions.iter().map(SignedDeviceIdentity::encoded_len).sum::<usize>()
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.body_bytes.get(2..).unwrap_or_default());
        out.extend_from_slice(&self.signature);
        for companion in &self.companions {
            companion.write(out);
        }
    }

    /// Decoded only at the top of its input: the signed bytes are everything read up to the
    /// signature.
    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let body = ListBody::read(reader)?;
        let body_bytes = reader.consumed().to_vec();
        let signature = reader.array()?;
        let companions = (1..body.entries.len())
            .map(|_| SignedDeviceIdentity::read(reader))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { body, body_bytes, signature, companions })
    }
}

impl TryFrom<&[u8]> for SignedDeviceList {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}

/// A device the account's primary authorized, from a verified list. Only list verification
/// builds one; encryption accepts only these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedDevice {
    address: DeviceAddress,
    key_index: u32,
    identity: PublicIdentity,
}

impl AuthorizedDevice {
    /// The device's address.
    pub fn address(&self) -> DeviceAddress {
        self.address
    }

    /// Its key index.
    pub fn key_index(&self) -> u32 {
        self.key_index
    }

    /// Its verified identity.
    pub fn identity(&self) -> &PublicIdentity {
        &self.identity
    }
}

/// A device list whose every signature and rule checked out. Only
/// [`SignedDeviceList::verify`] builds one; it has no other constructor and no `Deserialize`
/// implementation, so holding one proves the primary signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDeviceList {
    account: AccountId,
    account_identity: PublicIdentity,
    version: u64,
    issued_at: Timestamp,
    previous_digest: [u8; 32],
    digest: [u8; 32],
    devices: Vec<AuthorizedDevice>,
    /// The signed identity of every companion, in list order.
    companions: Vec<SignedDeviceIdentity>,
    bytes: Vec<u8>,
}

impl VerifiedDeviceList {
    /// The account.
    pub fn account(&self) -> AccountId {
        self.account
    }

    /// The account identity (the primary's identity).
    pub fn account_identity(&self) -> &PublicIdentity {
        &self.account_identity
    }

    /// The list version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the primary signed it.
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// The digest of the signed body: what messages carry and what the next list chains to.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The digest of the list this one replaced.
    pub fn previous_digest(&self) -> [u8; 32] {
        self.previous_digest
    }

    /// Every authorized device, primary first.
    pub fn devices(&self) -> &[AuthorizedDevice] {
        &self.devices
    }

    /// The authorized device at `address`, if listed.
    pub fn device(&self, address: DeviceAddress) -> Option<&AuthorizedDevice> {
        self.devices.iter().find(|d| d.address == address)
    }

    /// The account's primary: always the first device, with the account identity.
    pub fn primary(&self) -> &AuthorizedDevice {
        // `verify` refuses a list without its primary first, and nothing else builds one.
        #[allow(clippy::indexing_slicing)]
        &self.devices[0]
    }

    /// The companions, in device order.
    pub fn companion_devices(&self) -> &[AuthorizedDevice] {
        self.devices.get(1..).unwrap_or_default()
    }

    /// The signed identities of the companions, in device order.
    pub(crate) fn signed_companions(&self) -> &[SignedDeviceIdentity] {
        &self.companions
    }

    /// Seconds from `issued_at` to `now` (zero if `now` is earlier).
    pub fn age(&self, now: Timestamp) -> u64 {
        now.secs_since(self.issued_at)
    }

    /// The signed list as received, to re-serve or persist.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Persists a [`VerifiedDeviceList`] as its signed bytes and verifies them again on load, so
/// edited state cannot add or change a device. `VerifiedDeviceList` itself implements no
/// `Deserialize`.
pub(crate) mod stored {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{SignedDeviceList, VerifiedDeviceList};

    fn reverify<E: serde::de::Error>(bytes: &[u8]) -> Result<VerifiedDeviceList, E> {
        SignedDeviceList::try_from(bytes)
            .ok()
            .and_then(|signed| signed.verify().ok())
            .ok_or_else(|| E::custom("stored device list does not verify"))
    }

    pub(crate) fn serialize<S: Serializer>(
        list: &VerifiedDeviceList,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        list.bytes.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<VerifiedDeviceList, D::Error> {
        reverify(&Vec::<u8>::deserialize(deserializer)?)
    }

    /// The same for an optional list.
    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        use super::VerifiedDeviceList;

        pub(crate) fn serialize<S: Serializer>(
            list: &Option<VerifiedDeviceList>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            list.as_ref().map(|l| &l.bytes).serialize(serializer)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<VerifiedDeviceList>, D::Error> {
            Option::<Vec<u8>>::deserialize(deserializer)?
                .map(|bytes| super::reverify(&bytes))
                .transpose()
        }
    }
}

/// A companion's signed request to be removed from its account.
///
/// Layout: `0x01 || 0x22 || address (12) || key_index (u32) || timestamp (u64) || signature (64)`,
/// signed by the companion under `"multidevice/v1/sig/logout-request"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    /// The companion asking to leave.
    pub address: DeviceAddress,
    /// Its key index.
    pub key_index: u32,
    /// When it asked.
    pub timestamp: Timestamp,
    signature: [u8; 64],
}

impl LogoutRequest {
    /// Length of the signed part: address, key index, timestamp.
    const SIGNED_LEN: usize = DeviceAddress::LEN + 4 + 8;

    fn signed_part(address: DeviceAddress, key_index: u32, timestamp: Timestamp) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIGNED_LEN);
        out.extend_from_slice(&address.to_bytes());
        out.extend_from_slice(&key_index.to_be_bytes());
        out.extend_from_slice(&timestamp.0.to_be_bytes());
        out
    }

    pub(crate) fn sign(
        companion: &IdentityKeyPair,
        address: DeviceAddress,
        key_index: u32,
        timestamp: Timestamp,
    ) -> Self {
        let part = Self::signed_part(address, key_index, timestamp);
        let signature = crypto::sign(companion.signing_key(), label::SIG_LOGOUT, &[&part]);
        Self { address, key_index, timestamp, signature }
    }

    pub(crate) fn verify(&self, identity: &PublicIdentity) -> Result<(), KeyError> {
        let part = Self::signed_part(self.address, self.key_index, self.timestamp);
        crypto::verify(
            identity.verifying_key(),
            label::SIG_LOGOUT,
            &[&part],
            &self.signature,
            SignatureKind::LogoutRequest,
        )
    }

    /// Canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
}

impl Codec<'_> for LogoutRequest {
    const TYPE: u8 = 0x22;
    const MIN_BODY_LEN: usize = Self::SIGNED_LEN + 64;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::signed_part(self.address, self.key_index, self.timestamp));
        out.extend_from_slice(&self.signature);
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let address = DeviceAddress::read(reader)?;
        let key_index = reader.u32()?;
        let timestamp = Timestamp(reader.u64()?);
        let signature = reader.array()?;
        Ok(Self { address, key_index, timestamp, signature })
    }
}

impl TryFrom<&[u8]> for LogoutRequest {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}
