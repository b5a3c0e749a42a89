//! The QR flow: the companion shows an offer, the primary scans it.
//!
//! QR text: `MULTIDEVICE://LINK/1/` followed by the base32 (RFC 4648, no padding) encoding of
//! `offer || checksum`, where `offer = 0x01 || 0x40 || reference (16) || link secret (32) ||
//! expires (u64) || companion PublicIdentity (128)` and `checksum` is the first 4 bytes of
//! `H("multidevice/v1/hash/qr-checksum", offer)`. The checksum only catches misreads; the
//! camera is the trusted channel.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{LinkSecret, Reference};
use crate::account::CompanionApproval;
use crate::consts::QR_OFFER_LIFETIME_SECS;
use crate::crypto::{self, Secret32, label};
use crate::device::Device;
use crate::device_list::SignedDeviceList;
use crate::error::{DecodeError, LinkError};
use crate::keys::{PublicIdentity, Timestamp};
use crate::wire::{Codec, Reader};

/// The URI prefix of every link QR code, with the format version.
pub const QR_PREFIX: &str = "MULTIDEVICE://LINK/1/";
const CHECKSUM_LEN: usize = 4;

/// Companion side of a QR link: the offer it displays and what it needs to finish.
pub struct QrLinkOffer {
    pub(super) secret: LinkSecret,
    pub(super) expires: Timestamp,
    pub(super) identity: PublicIdentity,
    pub(super) done: bool,
    /// The highest time this offer was used at.
    pub(super) clock: Timestamp,
}

impl core::fmt::Debug for QrLinkOffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QrLinkOffer").field("expires", &self.expires).finish_non_exhaustive()
    }
}

impl QrLinkOffer {
    /// A fresh offer for `companion`, valid for [`QR_OFFER_LIFETIME_SECS`] from its clock
    /// high-water mark, which `now` raises first.
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        companion: &mut Device,
        now: Timestamp,
    ) -> Self {
        companion.observe(now);
        Self::fresh(rng, companion.public_identity().clone(), companion.clock())
    }

    fn fresh(
        rng: &mut (impl CryptoRng + ?Sized),
        identity: PublicIdentity,
        now: Timestamp,
    ) -> Self {
        let mut reference = [0u8; 16];
        rng.fill_bytes(&mut reference);
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut_slice());
        Self {
            secret: LinkSecret { reference, secret: Secret32::new(*secret) },
            expires: now.plus_secs(QR_OFFER_LIFETIME_SECS),
            identity,
            done: false,
            clock: now,
        }
    }

    /// Replaces the offer with a new secret, reference and expiry (when the old one expired).
    pub fn refresh(&mut self, rng: &mut (impl CryptoRng + ?Sized), now: Timestamp) {
        *self = Self::fresh(rng, self.identity.clone(), now.max(self.clock));
    }

    /// When the offer stops being accepted.
    pub fn expires(&self) -> Timestamp {
        self.expires
    }

    /// The text to show as a QR code. It contains the link secret: show it, never send it.
    pub fn qr_text(&self) -> Zeroizing<String> {
        let offer = Offer {
            secret: LinkSecret {
                reference: self.secret.reference,
                secret: self.secret.secret.clone(),
            },
            expires: self.expires,
            identity: self.identity.clone(),
        };
        let mut bytes = Zeroizing::new(Vec::with_capacity(offer.encoded_len() + CHECKSUM_LEN));
        offer.write(&mut bytes);
        let checksum = crypto::hash(label::HASH_QR_CHECKSUM, &[&bytes]);
        bytes.extend_from_slice(checksum.split_at(CHECKSUM_LEN).0);
        let mut text =
            Zeroizing::new(String::with_capacity(QR_PREFIX.len() + (bytes.len() * 8).div_ceil(5)));
        text.push_str(QR_PREFIX);
        base32_encode(&bytes, &mut text);
        text
    }

    /// Companion: checks the primary's approval (MAC first, in constant time), countersigns it
    /// and links this device. Returns the confirmation to send back. The offer is single use.
    pub fn accept_approval(
        &mut self,
        companion: &mut Device,
        approval: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, LinkError> {
        let now = super::step_time(&mut self.clock, companion, now);
        if self.done {
            return Err(LinkError::NotActive);
        }
        if now > self.expires {
            return Err(LinkError::Expired);
        }
        if companion.public_identity() != &self.identity {
            return Err(LinkError::WrongAttempt);
        }
        let confirmation = super::accept_approval(companion, &self.secret, None, approval)?;
        self.done = true;
        Ok(confirmation)
    }
}

/// Primary side of a QR link, between approval and the companion's confirmation.
pub struct QrLinkApproval {
    pub(super) secret: LinkSecret,
    pub(super) approved: CompanionApproval,
    pub(super) companion: PublicIdentity,
    pub(super) done: bool,
}

impl core::fmt::Debug for QrLinkApproval {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QrLinkApproval")
            .field("metadata", &self.approved.metadata)
            .finish_non_exhaustive()
    }
}

/// An offer: `0x01 || 0x40 || reference (16) || link secret (32) || expires (u64)
/// || companion PublicIdentity (128)`.
struct Offer {
    secret: LinkSecret,
    expires: Timestamp,
    identity: PublicIdentity,
}

impl Codec<'_> for Offer {
    const TYPE: u8 = 0x40;
    const MIN_BODY_LEN: usize = 16 + 32 + 8 + PublicIdentity::LEN;

    fn body_len(&self) -> usize {
        Self::MIN_BODY_LEN
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.secret.reference);
        out.extend_from_slice(self.secret.secret.as_bytes());
        out.extend_from_slice(&self.expires.0.to_be_bytes());
        out.extend_from_slice(&self.identity.to_bytes());
    }

    fn read_body(_: u8, reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let reference: Reference = reader.array()?;
        let mut secret = Secret32::new([0u8; 32]);
        secret.as_mut_bytes().copy_from_slice(reader.take(32)?);
        let expires = Timestamp(reader.u64()?);
        let identity = PublicIdentity::read(reader)?;
        Ok(Self { secret: LinkSecret { reference, secret }, expires, identity })
    }
}

fn parse_qr(text: &str) -> Result<Offer, LinkError> {
    let encoded = text.strip_prefix(QR_PREFIX).ok_or(LinkError::BadPrefix)?;
    let bytes = Zeroizing::new(base32_decode(encoded).ok_or(LinkError::BadEncoding)?);
    let body_len = bytes
        .len()
        .checked_sub(CHECKSUM_LEN)
        .ok_or(DecodeError::Truncated { needed: CHECKSUM_LEN })?;
    let (offer, checksum) = bytes.split_at(body_len);
    let expected = crypto::hash(label::HASH_QR_CHECKSUM, &[offer]);
    if expected.get(..CHECKSUM_LEN) != Some(checksum) {
        return Err(LinkError::BadChecksum);
    }
    Ok(Offer::decode(offer)?)
}

impl QrLinkApproval {
    /// Primary: parses scanned QR text, checks expiry and single use, approves the companion
    /// and returns the MAC'ed approval to send. A fifth companion is refused before anything is
    /// signed.
    pub fn approve(
        primary: &mut Device,
        qr_text: &str,
        now: Timestamp,
    ) -> Result<(Self, Vec<u8>), LinkError> {
        primary.observe(now);
        let now = primary.clock();
        let offer = parse_qr(qr_text)?;
        if now > offer.expires
            || offer.expires
                > now.plus_secs(QR_OFFER_LIFETIME_SECS + crate::consts::QR_CLOCK_SKEW_SECS)
        {
            return Err(LinkError::Expired);
        }
        if primary.link_reference_used(&offer.secret.reference) {
            return Err(LinkError::OfferReused);
        }
        let (approved, message) = super::approve(primary, &offer.secret, &offer.identity, now)?;
        primary.record_link_reference(offer.secret.reference);
        Ok((
            Self { secret: offer.secret, approved, companion: offer.identity, done: false },
            message,
        ))
    }

    /// Primary: verifies the companion's confirmation and adds it. Returns the new device list
    /// to publish. Fails with [`LinkError::Expired`] once the approval is older than
    /// [`crate::consts::APPROVAL_LIFETIME_SECS`].
    pub fn finish(
        &mut self,
        primary: &mut Device,
        confirmation: &[u8],
        now: Timestamp,
    ) -> Result<SignedDeviceList, LinkError> {
        primary.observe(now);
        let now = primary.clock();
        if self.done {
            return Err(LinkError::NotActive);
        }
        let list = super::finish(
            primary,
            &self.secret,
            &self.approved,
            &self.companion,
            confirmation,
            now,
        )?;
        self.done = true;
        Ok(list)
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32_symbol(value: u32) -> char {
    BASE32.get(usize::try_from(value & 31).unwrap_or(0)).map_or('A', |&b| char::from(b))
}

fn base32_encode(bytes: &[u8], out: &mut String) {
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(base32_symbol(buffer >> bits));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(base32_symbol(buffer << (5 - bits)));
    }
}

/// Strict decoding: only the 32 symbols, and no non-zero or whole leftover symbols, so every
/// byte string has exactly one encoding.
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for c in text.bytes() {
        let value = BASE32.iter().position(|&b| b == c)?;
        buffer = (buffer << 5) | u32::try_from(value).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
            buffer &= (1 << bits) - 1;
        }
    }
    if bits >= 5 || buffer != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips_and_is_canonical() {
        for len in 0..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| u8::try_from(i * 37 % 256).unwrap()).collect();
            let mut text = String::new();
            base32_encode(&bytes, &mut text);
            assert_eq!(base32_decode(&text), Some(bytes));
            // A different final symbol with non-zero padding bits is refused.
            if len % 5 != 0 {
                let mut other = text.clone();
                let last = other.pop().unwrap();
                let index = BASE32.iter().position(|&b| char::from(b) == last).unwrap();
                other.push(char::from(BASE32[(index + 1) % 32]));
                assert_ne!(base32_decode(&other), Some(bytes_of(&text)));
            }
        }
        assert_eq!(base32_decode("a"), None);
    }

    fn bytes_of(text: &str) -> Vec<u8> {
        base32_decode(text).unwrap()
    }
}
