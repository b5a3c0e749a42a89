//! Wire format of session messages.
//!
//! Two message types share one ratchet header, and every message names its [`MessageKind`] in
//! the authenticated prefix, so a message of one kind is never taken for another. A
//! [`SessionMessage`] is parsed strictly: length, version, type, body, no trailing bytes. It
//! keeps the original header bytes, because the AEAD authenticates them exactly as received.

use crate::consts::MAX_MESSAGE_PLAINTEXT;
use crate::crypto::{NONCE_LEN, TAG_LEN};
use crate::error::DecodeError;
use crate::keys::{DeviceAddress, PublicIdentity};
use crate::wire::{Codec, Reader, VERSION};

/// Type byte of a message on an established session.
pub(crate) const TYPE_MESSAGE: u8 = 0x01;
/// Type byte of a message that also carries the session-initiation data.
pub(crate) const TYPE_PREKEY_MESSAGE: u8 = 0x02;

/// Identifies one session between two devices; derived from the initiator's base key.
pub(crate) type SessionId = [u8; 16];

/// What a session message carries, stated in its authenticated prefix.
///
/// Each entry point accepts only its own kinds: [`crate::Device::receive`] takes every kind but
/// [`MessageKind::Raw`], and [`crate::hazmat::decrypt`] takes only [`MessageKind::Raw`]. A
/// message of another kind is refused before any key is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// A raw session message from the [`crate::hazmat`] API: no device-list authorization.
    Raw,
    /// A fan-out copy for a device of a recipient account.
    Direct,
    /// A fan-out copy for another device of the sender's own account.
    OwnCopy,
    /// A history descriptor from the primary to a newly linked companion.
    History,
    /// A sending device's sender key for a group, to a device of a member or an own device.
    SenderKey,
    /// A group message re-sent pairwise to one device that could not read it (a retry).
    GroupCopy,
}

impl MessageKind {
    /// The byte that encodes this kind on the wire.
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Self::Raw => 0x00,
            Self::Direct => 0x01,
            Self::OwnCopy => 0x02,
            Self::History => 0x03,
            Self::SenderKey => 0x04,
            Self::GroupCopy => 0x05,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte {
            0x00 => Self::Raw,
            0x01 => Self::Direct,
            0x02 => Self::OwnCopy,
            0x03 => Self::History,
            0x04 => Self::SenderKey,
            0x05 => Self::GroupCopy,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// The Double Ratchet header, authenticated as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RatchetHeader {
    pub(crate) session_id: SessionId,
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) counter: u32,
    pub(crate) previous_counter: u32,
    pub(crate) nonce: [u8; NONCE_LEN],
}

impl RatchetHeader {
    /// Encoded length.
    pub(crate) const LEN: usize = 16 + 32 + 4 + 4 + NONCE_LEN;

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.session_id);
        out.extend_from_slice(&self.ratchet_key);
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.previous_counter.to_be_bytes());
        out.extend_from_slice(&self.nonce);
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            session_id: reader.array()?,
            ratchet_key: reader.array()?,
            counter: reader.u32()?,
            previous_counter: reader.u32()?,
            nonce: reader.array()?,
        })
    }
}

/// Session-initiation data carried by a prekey message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrekeyFields {
    pub(crate) sender_identity: PublicIdentity,
    pub(crate) base_key: [u8; 32],
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
}

impl PrekeyFields {
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sender_identity.to_bytes());
        out.extend_from_slice(&self.base_key);
        out.extend_from_slice(&self.signed_prekey_id.to_be_bytes());
        match self.one_time_prekey_id {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.to_be_bytes());
            }
            None => out.push(0),
        }
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let sender_identity = PublicIdentity::read(reader)?;
        let base_key = reader.array()?;
        let signed_prekey_id = reader.u32()?;
        let one_time_prekey_id = if reader.flag()? { Some(reader.u32()?) } else { None };
        Ok(Self { sender_identity, base_key, signed_prekey_id, one_time_prekey_id })
    }
}

/// A parsed session message, borrowing the bytes it was parsed from.
///
/// Layout (all integers big-endian):
///
/// ```text
/// version u8 = 1 | type u8 | kind u8 | sender address (12) | recipient address (12)
/// [prekey fields, type 0x02 only]
/// ratchet header (68) | AES-256-GCM ciphertext and 16-byte tag
/// ```
#[derive(Debug, Clone)]
pub struct SessionMessage<'a> {
    pub(crate) kind: MessageKind,
    pub(crate) sender: DeviceAddress,
    pub(crate) recipient: DeviceAddress,
    pub(crate) prekey: Option<PrekeyFields>,
    pub(crate) header: RatchetHeader,
    /// Every byte before the ciphertext, authenticated as associated data.
    pub(crate) authenticated: &'a [u8],
    pub(crate) ciphertext: &'a [u8],
}

impl SessionMessage<'_> {
    /// The device that claims to have sent the message (authenticated only by decryption).
    pub fn sender(&self) -> DeviceAddress {
        self.sender
    }

    /// The device the message is addressed to; a server routes on this.
    pub fn recipient(&self) -> DeviceAddress {
        self.recipient
    }

    /// True for a message that can start a session at the recipient.
    pub fn is_prekey_message(&self) -> bool {
        self.prekey.is_some()
    }

    /// What the message carries, as its authenticated prefix states.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }
}

impl<'a> Codec<'a> for SessionMessage<'a> {
    const TYPE: u8 = TYPE_MESSAGE;
    /// Kind, two addresses, ratchet header, tag.
    const MIN_BODY_LEN: usize = 1 + 2 * DeviceAddress::LEN + RatchetHeader::LEN + TAG_LEN;

    fn accepts(type_byte: u8) -> bool {
        matches!(type_byte, TYPE_MESSAGE | TYPE_PREKEY_MESSAGE)
    }

    fn type_byte(&self) -> u8 {
        if self.prekey.is_some() { TYPE_PREKEY_MESSAGE } else { TYPE_MESSAGE }
    }

    fn body_len(&self) -> usize {
        self.authenticated.len() - 2 + self.ciphertext.len()
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.authenticated.get(2..).unwrap_or_default());
        out.extend_from_slice(self.ciphertext);
    }

    /// Decoded only at the top of its input: the authenticated prefix is everything read
    /// before the ciphertext.
    fn read_body(type_byte: u8, reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let kind = MessageKind::from_byte(reader.u8()?)?;
        let sender = DeviceAddress::read(reader)?;
        let recipient = DeviceAddress::read(reader)?;
        let prekey = match type_byte {
            TYPE_PREKEY_MESSAGE => Some(PrekeyFields::read(reader)?),
            _ => None,
        };
        let header = RatchetHeader::read(reader)?;
        if let Some(fields) = &prekey {
            // Until the initiator hears back it never ratchets, so its ratchet key is its base
            // key; anything else is not a canonical prekey message.
            if fields.base_key != header.ratchet_key {
                return Err(DecodeError::BaseKeyMismatch);
            }
        }
        let authenticated = reader.consumed();
        let ciphertext = reader.rest();
        if ciphertext.len() < TAG_LEN {
            return Err(DecodeError::Truncated { needed: TAG_LEN - ciphertext.len() });
        }
        if ciphertext.len() > MAX_MESSAGE_PLAINTEXT + TAG_LEN {
            return Err(DecodeError::TooLong {
                limit: MAX_MESSAGE_PLAINTEXT + TAG_LEN,
                got: ciphertext.len(),
            });
        }
        Ok(Self { kind, sender, recipient, prekey, header, authenticated, ciphertext })
    }
}

impl<'a> TryFrom<&'a [u8]> for SessionMessage<'a> {
    type Error = DecodeError;

    fn try_from(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes)
    }
}

/// Writes the bytes before the ciphertext for a message from `sender` to `recipient`.
pub(crate) fn write_prefix(
    out: &mut Vec<u8>,
    kind: MessageKind,
    sender: DeviceAddress,
    recipient: DeviceAddress,
    prekey: Option<&PrekeyFields>,
    header: &RatchetHeader,
) {
    let message_type = if prekey.is_some() { TYPE_PREKEY_MESSAGE } else { TYPE_MESSAGE };
    out.extend_from_slice(&[VERSION, message_type, kind.to_byte()]);
    out.extend_from_slice(&sender.to_bytes());
    out.extend_from_slice(&recipient.to_bytes());
    if let Some(fields) = prekey {
        fields.write(out);
    }
    header.write(out);
}
