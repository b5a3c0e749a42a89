//! Linking a companion to an account, over an untrusted relay.
//!
//! Two ways to agree on a one-time link secret: a QR code the companion shows and the primary
//! scans ([`qr`]), or an 8-character code typed on one device and run through CPace
//! ([`pairing`]). After that both flows are the same two messages: the primary's approval
//! (linking metadata and account signature) and the companion's countersignature, each MAC'ed
//! under the link secret and checked in constant time before anything else is parsed. The primary
//! then publishes the new device list. This module never signs anything the primary did not
//! approve and never adds a companion whose countersignature did not verify.

pub mod cpace;
pub(crate) mod pairing;
pub(crate) mod pairing_code;
pub(crate) mod persist;
pub(crate) mod qr;
#[cfg(feature = "qr")]
pub(crate) mod render;

use crate::account::CompanionApproval;
use crate::consts::APPROVAL_LIFETIME_SECS;
use crate::crypto::{self, Secret32, label};
use crate::device::Device;
use crate::device_list::{LinkingMetadata, SignedDeviceIdentity, SignedDeviceList};
use crate::error::{DecodeError, LinkError};
use crate::keys::{PublicIdentity, Timestamp};
use crate::wire::{Codec, Reader};

/// Identifies one linking attempt: the QR offer's reference or the pairing session id.
pub(crate) type Reference = [u8; 16];
const MAC_LEN: usize = 32;

/// The time a linking step runs at: the latest of `now`, the attempt's own high-water mark and
/// the device's. Both marks move to it, so winding the clock back never revives an expired
/// offer or code.
pub(crate) fn step_time(attempt: &mut Timestamp, device: &mut Device, now: Timestamp) -> Timestamp {
    device.observe(now.max(*attempt));
    *attempt = device.clock();
    *attempt
}

/// The secret both sides share once the QR was scanned or the PAKE finished.
pub(crate) struct LinkSecret {
    pub(crate) reference: Reference,
    pub(crate) secret: Secret32,
}

/// Splits `bytes` into body and MAC and checks the MAC in constant time, before any parsing.
fn check_mac<'a>(
    secret: &LinkSecret,
    mac_label: &[u8],
    bytes: &'a [u8],
) -> Result<&'a [u8], LinkError> {
    let body_len = bytes.len().checked_sub(MAC_LEN).ok_or(LinkError::MacMismatch)?;
    let (body, mac) = bytes.split_at(body_len);
    let expected = crypto::mac(secret.secret.as_bytes(), mac_label, &[body]);
    if crypto::ct_eq(&expected, mac) { Ok(body) } else { Err(LinkError::MacMismatch) }
}

/// Appends the MAC under the link secret. `body` came from [`Codec::encode`], sized exactly, so
/// this grows it once.
fn seal_mac(secret: &LinkSecret, mac_label: &[u8], mut body: Vec<u8>) -> Vec<u8> {
    let mac = crypto::mac(secret.secret.as_bytes(), mac_label, &[&body]);
    body.extend_from_slice(&mac);
    body
}

/// The primary's approval: `0x01 || 0x41 || reference (16) || LinkingMetadata (24)
/// || account PublicIdentity (128) || account signature (64)`, then the MAC.
struct Approval {
    reference: Reference,
    approval: CompanionApproval,
}

impl Codec<'_> for Approval {
    const TYPE: u8 = 0x41;
    const MIN_BODY_LEN: usize = 16 + LinkingMetadata::LEN + PublicIdentity::LEN + 64;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.reference);
        out.extend_from_slice(&self.approval.metadata.to_bytes());
        out.extend_from_slice(&self.approval.account_identity.to_bytes());
        out.extend_from_slice(&self.approval.account_signature);
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            reference: reader.array()?,
            approval: CompanionApproval {
                metadata: LinkingMetadata::read(reader)?,
                account_identity: PublicIdentity::read(reader)?,
                account_signature: reader.array()?,
            },
        })
    }
}

/// The companion's confirmation: `0x01 || 0x42 || reference (16) || SignedDeviceIdentity (282)`,
/// then the MAC.
struct Confirmation {
    reference: Reference,
    signed: SignedDeviceIdentity,
}

impl Codec<'_> for Confirmation {
    const TYPE: u8 = 0x42;
    const MIN_BODY_LEN: usize = 16 + 2 + <SignedDeviceIdentity as Codec<'_>>::MIN_BODY_LEN;

    fn body_len(&self) -> usize {
        16 + self.signed.encoded_len()
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.reference);
        self.signed.write(out);
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { reference: reader.array()?, signed: SignedDeviceIdentity::read(reader)? })
    }
}

/// Primary: approves `companion` and returns the MAC'ed approval message.
pub(crate) fn approve(
    primary: &mut Device,
    secret: &LinkSecret,
    companion: &PublicIdentity,
    now: Timestamp,
) -> Result<(CompanionApproval, Vec<u8>), LinkError> {
    let approval = primary.approve_companion(companion, now)?;
    let body = Approval { reference: secret.reference, approval: approval.clone() }.encode();
    Ok((approval, seal_mac(secret, label::MAC_LINK_APPROVAL, body)))
}

/// Companion: checks the approval's MAC first, then its content and the account signature, and
/// countersigns. Returns the MAC'ed confirmation for the primary.
pub(crate) fn accept_approval(
    companion: &mut Device,
    secret: &LinkSecret,
    expected_account: Option<&PublicIdentity>,
    bytes: &[u8],
) -> Result<Vec<u8>, LinkError> {
    let body = check_mac(secret, label::MAC_LINK_APPROVAL, bytes)?;
    let Approval { reference, approval } = Approval::decode(body)?;
    if reference != secret.reference {
        return Err(LinkError::WrongAttempt);
    }
    if let Some(expected) = expected_account
        && expected != &approval.account_identity
    {
        return Err(LinkError::UnexpectedAccountIdentity);
    }
    let signed = companion.countersign_approval(&approval)?;
    let body = Confirmation { reference: secret.reference, signed }.encode();
    Ok(seal_mac(secret, label::MAC_LINK_CONFIRMATION, body))
}

/// Primary: checks the confirmation's MAC, that it countersigns exactly what was approved, and
/// adds the companion. Returns the new list to publish. An approval older than
/// [`APPROVAL_LIFETIME_SECS`] has expired: its device id may already belong to another one.
pub(crate) fn finish(
    primary: &mut Device,
    secret: &LinkSecret,
    approved: &CompanionApproval,
    companion: &PublicIdentity,
    bytes: &[u8],
    now: Timestamp,
) -> Result<SignedDeviceList, LinkError> {
    primary.observe(now);
    if primary.clock().secs_since(approved.metadata.timestamp) > APPROVAL_LIFETIME_SECS {
        return Err(LinkError::Expired);
    }
    let body = check_mac(secret, label::MAC_LINK_CONFIRMATION, bytes)?;
    let Confirmation { reference, signed } = Confirmation::decode(body)?;
    if reference != secret.reference {
        return Err(LinkError::WrongAttempt);
    }
    if signed.metadata != approved.metadata
        || &signed.identity != companion
        || signed.account_signature != approved.account_signature
    {
        return Err(LinkError::ConfirmationMismatch);
    }
    Ok(primary.add_companion(&signed, now)?)
}
