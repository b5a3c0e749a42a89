//! The blob descriptor: everything a recipient needs to fetch, verify and decrypt one blob.
//!
//! This module owns the descriptor's canonical encoding and its strict parser. It never
//! serializes the key anywhere but into a buffer wiped on drop.

use std::fmt;

use zeroize::Zeroizing;

use super::format::{BlobKey, KEY_LEN, MAX_PLAINTEXT_LEN, ciphertext_len};
use super::media_type::{MEDIA_TYPE_MAX_LEN, MEDIA_TYPE_MIN_LEN, MediaType};
use crate::crypto::{self, Hex};
use crate::error::BlobError;

/// Descriptor encoding version written in its first byte.
pub const DESCRIPTOR_VERSION: u8 = 1;
/// Descriptor bytes before the media type: version (1) + key (32) +
/// plaintext length (8) + digest (32) + media type length (1).
const DESCRIPTOR_FIXED_LEN: usize = 74;
/// Shortest valid descriptor encoding.
pub const DESCRIPTOR_MIN_LEN: usize = DESCRIPTOR_FIXED_LEN + MEDIA_TYPE_MIN_LEN;
/// Longest valid descriptor encoding.
pub const DESCRIPTOR_MAX_LEN: usize = DESCRIPTOR_FIXED_LEN + MEDIA_TYPE_MAX_LEN;

/// Everything a recipient needs to fetch-verify and decrypt one blob.
///
/// Travels inside an end-to-end encrypted message. Its canonical encoding
/// ([`to_bytes`](Self::to_bytes), parsed back by `TryFrom<&[u8]>`) is:
/// `version:u8 (=1) || key:[u8; 32] || plaintext_len:u64be ||
/// ciphertext_sha256:[u8; 32] || media_type_len:u8 || media_type`.
///
/// There is deliberately no serde support: a generic deserializer would leave
/// unwiped copies of the key in its own buffers. Use the byte encoding inside a
/// [`Zeroizing`] buffer instead.
#[derive(PartialEq, Eq)]
pub struct BlobDescriptor {
    key: BlobKey,
    plaintext_len: u64,
    ciphertext_sha256: [u8; 32],
    media_type: MediaType,
}

impl BlobDescriptor {
    /// Assembles a descriptor.
    ///
    /// # Errors
    /// [`BlobError::TooManyChunks`] if `plaintext_len` exceeds
    /// [`MAX_PLAINTEXT_LEN`].
    pub fn new(
        key: BlobKey,
        plaintext_len: u64,
        ciphertext_sha256: [u8; 32],
        media_type: MediaType,
    ) -> Result<Self, BlobError> {
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(BlobError::TooManyChunks);
        }
        Ok(Self { key, plaintext_len, ciphertext_sha256, media_type })
    }

    /// The blob key.
    pub fn key(&self) -> &BlobKey {
        &self.key
    }

    /// Length of the plaintext in bytes.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// SHA-256 of the complete blob: every byte from the first header byte (key commitment
    /// included) to the last tag.
    pub fn ciphertext_sha256(&self) -> &[u8; 32] {
        &self.ciphertext_sha256
    }

    /// The media type.
    pub fn media_type(&self) -> &MediaType {
        &self.media_type
    }

    /// Length of the ciphertext this descriptor describes.
    pub fn ciphertext_len(&self) -> u64 {
        ciphertext_len(self.plaintext_len).unwrap_or(u64::MAX)
    }

    /// Checks what a decryption found against the descriptor: the plaintext length, then (where
    /// the run hashed the ciphertext) the digest, in constant time.
    pub(super) fn check(
        &self,
        plaintext_len: u64,
        digest: Option<&[u8; 32]>,
    ) -> Result<(), BlobError> {
        if plaintext_len != self.plaintext_len {
            return Err(BlobError::LengthMismatch {
                expected: self.plaintext_len,
                got: plaintext_len,
            });
        }
        match digest {
            Some(digest) if !crypto::ct_eq(digest, &self.ciphertext_sha256) => {
                Err(BlobError::DigestMismatch)
            }
            _ => Ok(()),
        }
    }

    /// Canonical encoding, in a buffer wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let media = self.media_type.as_str().as_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(DESCRIPTOR_FIXED_LEN + media.len()));
        out.push(DESCRIPTOR_VERSION);
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.plaintext_len.to_be_bytes());
        out.extend_from_slice(&self.ciphertext_sha256);
        out.push(self.media_type.encoded_len());
        out.extend_from_slice(media);
        out
    }
}

impl TryFrom<&[u8]> for BlobDescriptor {
    type Error = BlobError;

    /// Strict parser: length range, then version, then fields; rejects any
    /// truncation and any trailing byte.
    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        if bytes.len() < DESCRIPTOR_MIN_LEN {
            return Err(BlobError::DescriptorTruncated);
        }
        if bytes.len() > DESCRIPTOR_MAX_LEN {
            return Err(BlobError::DescriptorTrailingBytes);
        }
        let (&version, rest) = bytes.split_first().ok_or(BlobError::DescriptorTruncated)?;
        if version != DESCRIPTOR_VERSION {
            return Err(BlobError::UnsupportedDescriptorVersion(version));
        }
        let (key, rest) =
            rest.split_first_chunk::<KEY_LEN>().ok_or(BlobError::DescriptorTruncated)?;
        let (len, rest) = rest.split_first_chunk::<8>().ok_or(BlobError::DescriptorTruncated)?;
        let (digest, rest) =
            rest.split_first_chunk::<32>().ok_or(BlobError::DescriptorTruncated)?;
        let (&media_len, media) = rest.split_first().ok_or(BlobError::DescriptorTruncated)?;
        match media.len().cmp(&usize::from(media_len)) {
            std::cmp::Ordering::Less => return Err(BlobError::DescriptorTruncated),
            std::cmp::Ordering::Greater => return Err(BlobError::DescriptorTrailingBytes),
            std::cmp::Ordering::Equal => {}
        }
        let media_type = MediaType::from_bytes(media)?;
        Self::new(BlobKey::from_bytes(key), u64::from_be_bytes(*len), *digest, media_type)
    }
}

impl fmt::Debug for BlobDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobDescriptor")
            .field("key", &self.key)
            .field("plaintext_len", &self.plaintext_len)
            .field("ciphertext_sha256", &Hex(&self.ciphertext_sha256))
            .field("media_type", &self.media_type)
            .finish()
    }
}
