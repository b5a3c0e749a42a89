//! Wire formats of groups: the group message (one ciphertext and one signature, the same bytes
//! for every device) and the sender-key distribution carried inside a pairwise message.

use crate::consts::MAX_MESSAGE_PLAINTEXT;
use crate::crypto::{NONCE_LEN, TAG_LEN};
use crate::error::DecodeError;
use crate::keys::DeviceAddress;
use crate::wire::{Codec, Reader};

use super::GroupId;

/// Length of a group message's header: what the AEAD authenticates as associated data.
pub(crate) const HEADER_LEN: usize = 2 + 16 + DeviceAddress::LEN + 4 + 4 + 32 + NONCE_LEN;
/// Length of the message id that leads every group plaintext.
pub(crate) const MESSAGE_ID_LEN: usize = 16;
/// What precedes the payload in every group plaintext: the message id, then the sender's own
/// list version (u64) and digest (32), as in every authorized message.
pub(crate) const PLAINTEXT_PREFIX_LEN: usize = MESSAGE_ID_LEN + 8 + 32;

/// ```text
/// GroupMessage = 0x01 || 0x50 || group id (16) || sender (12) || key id (u32)
///                || iteration (u32) || membership digest (32) || nonce (12)
///                || AES-256-GCM(message key, nonce, header, message id (16)
///                   || sender list version (u64) || sender list digest (32) || payload) || tag
///                || signature (64)
/// ```
pub(crate) struct GroupMessage<'a> {
    pub(crate) group: GroupId,
    pub(crate) sender: DeviceAddress,
    pub(crate) key_id: u32,
    pub(crate) iteration: u32,
    pub(crate) membership: [u8; 32],
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) ciphertext: &'a [u8],
    pub(crate) signature: [u8; 64],
    /// Every byte before the ciphertext, as received: the AEAD's associated data.
    pub(crate) header: &'a [u8],
    /// Every byte before the signature, as received: what the signature covers.
    pub(crate) signed: &'a [u8],
}

impl<'a> Codec<'a> for GroupMessage<'a> {
    const TYPE: u8 = 0x50;
    const MIN_BODY_LEN: usize = HEADER_LEN - 2 + PLAINTEXT_PREFIX_LEN + TAG_LEN + 64;

    fn body_len(&self) -> usize {
        HEADER_LEN - 2 + self.ciphertext.len() + 64
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        write_header_body(
            out,
            self.group,
            self.sender,
            self.key_id,
            self.iteration,
            &self.membership,
            &self.nonce,
        );
        out.extend_from_slice(self.ciphertext);
        out.extend_from_slice(&self.signature);
    }

    fn read_body(_: u8, reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let group = GroupId(reader.array()?);
        let sender = DeviceAddress::read(reader)?;
        let key_id = reader.u32()?;
        let iteration = reader.u32()?;
        let membership = reader.array()?;
        let nonce = reader.array()?;
        let header = reader.consumed();
        let rest = reader.rest();
        let limit = PLAINTEXT_PREFIX_LEN + MAX_MESSAGE_PLAINTEXT + TAG_LEN + 64;
        if rest.len() > limit {
            return Err(DecodeError::TooLong { limit, got: rest.len() });
        }
        let (ciphertext, signature) =
            rest.split_last_chunk::<64>().ok_or(DecodeError::Truncated { needed: 64 })?;
        let signed = reader
            .consumed()
            .get(..header.len() + ciphertext.len())
            .ok_or(DecodeError::OutOfRange)?;
        Ok(Self {
            group,
            sender,
            key_id,
            iteration,
            membership,
            nonce,
            ciphertext,
            signature: *signature,
            header,
            signed,
        })
    }
}

/// Appends a group message's header body (after version and type).
pub(crate) fn write_header_body(
    out: &mut Vec<u8>,
    group: GroupId,
    sender: DeviceAddress,
    key_id: u32,
    iteration: u32,
    membership: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
) {
    out.extend_from_slice(&group.0);
    out.extend_from_slice(&sender.to_bytes());
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(&iteration.to_be_bytes());
    out.extend_from_slice(membership);
    out.extend_from_slice(nonce);
}

/// The content of a sender-key distribution, inside a pairwise message of kind `SenderKey`:
///
/// ```text
/// Distribution = group id (16) || key id (u32) || iteration (u32) || chain key (32)
///                || signing public key (32)                      ; exactly 88 bytes
/// ```
pub(crate) struct Distribution<'a> {
    pub(crate) group: GroupId,
    pub(crate) key_id: u32,
    pub(crate) iteration: u32,
    pub(crate) chain_key: &'a [u8; 32],
    pub(crate) signing_public: [u8; 32],
}

impl<'a> Distribution<'a> {
    pub(crate) const LEN: usize = 16 + 4 + 4 + 32 + 32;

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.group.0);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(self.chain_key);
        out.extend_from_slice(&self.signing_public);
    }

    /// Parses exactly [`Distribution::LEN`] bytes; the chain key is borrowed, never copied.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let group = GroupId(reader.array()?);
        let key_id = reader.u32()?;
        let iteration = reader.u32()?;
        let chain_key =
            reader.take(32)?.try_into().map_err(|_| DecodeError::Truncated { needed: 32 })?;
        let signing_public = reader.array()?;
        reader.finish()?;
        Ok(Self { group, key_id, iteration, chain_key, signing_public })
    }
}
