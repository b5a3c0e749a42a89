//! Media types of blobs (`image/jpeg`, ...).
//!
//! This module owns the one rule for what a media type may be, applied wherever one is made or
//! parsed; it never accepts parameters, uppercase letters or anything outside ASCII.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::MediaTypeError;

/// Shortest media type (`a/b`).
pub const MEDIA_TYPE_MIN_LEN: usize = 3;
/// Longest media type.
pub const MEDIA_TYPE_MAX_LEN: usize = 64;

/// A validated, canonical media type such as `image/jpeg`.
///
/// Rules: 3..=64 ASCII bytes, `type/subtype`, each part a lowercase RFC 6838
/// restricted name (first byte `[a-z0-9]`, then `[a-z0-9!#$&^_.+-]`), no
/// parameters.
///
/// ```
/// use multidevice::blob::{MediaType, MediaTypeError};
/// assert_eq!(MediaType::new("image/jpeg").unwrap().as_str(), "image/jpeg");
/// assert_eq!(MediaType::new("image"), Err(MediaTypeError::MissingSlash));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MediaType(String);

impl MediaType {
    /// Validates `value` as a media type.
    ///
    /// # Errors
    /// A [`MediaTypeError`] naming the first rule `value` breaks.
    pub fn new(value: &str) -> Result<Self, MediaTypeError> {
        validate(value.as_bytes())?;
        Ok(Self(value.to_owned()))
    }

    /// Validates raw bytes as a media type.
    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, MediaTypeError> {
        validate(bytes)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| MediaTypeError::InvalidByte { position: e.valid_up_to() })?;
        Ok(Self(text.to_owned()))
    }

    /// The media type as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes (always within 3..=64).
    pub(super) fn encoded_len(&self) -> u8 {
        u8::try_from(self.0.len()).unwrap_or(u8::MAX)
    }
}

fn validate(bytes: &[u8]) -> Result<(), MediaTypeError> {
    if bytes.len() < MEDIA_TYPE_MIN_LEN {
        return Err(MediaTypeError::TooShort);
    }
    if bytes.len() > MEDIA_TYPE_MAX_LEN {
        return Err(MediaTypeError::TooLong { len: bytes.len() });
    }
    let slash = bytes.iter().position(|&b| b == b'/').ok_or(MediaTypeError::MissingSlash)?;
    let (kind, rest) = bytes.split_at_checked(slash).ok_or(MediaTypeError::MissingSlash)?;
    let subtype = rest.get(1..).unwrap_or_default();
    if kind.is_empty() || subtype.is_empty() {
        return Err(MediaTypeError::EmptyPart);
    }
    validate_restricted_name(kind, 0)?;
    validate_restricted_name(subtype, slash.saturating_add(1))
}

fn validate_restricted_name(part: &[u8], offset: usize) -> Result<(), MediaTypeError> {
    for (i, &b) in part.iter().enumerate() {
        let ok = if i == 0 {
            b.is_ascii_lowercase() || b.is_ascii_digit()
        } else {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'!' | b'#' | b'$' | b'&' | b'^' | b'_' | b'.' | b'+' | b'-')
        };
        if !ok {
            return Err(MediaTypeError::InvalidByte { position: offset.saturating_add(i) });
        }
    }
    Ok(())
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MediaType {
    type Err = MediaTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for MediaType {
    type Error = MediaTypeError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for MediaType {
    type Error = MediaTypeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        validate(value.as_bytes())?;
        Ok(Self(value))
    }
}

impl From<MediaType> for String {
    fn from(value: MediaType) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_accepts_common_types() {
        for ok in [
            "image/jpeg",
            "application/octet-stream",
            "application/vnd.whatsapp+json",
            "a/b",
            "audio/ogg",
            "x-3/y_z.1",
        ] {
            assert_eq!(MediaType::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn media_type_rejects_with_precise_errors() {
        use MediaTypeError as E;
        assert_eq!(MediaType::new(""), Err(E::TooShort));
        assert_eq!(MediaType::new("a/"), Err(E::TooShort));
        assert_eq!(MediaType::new("abc"), Err(E::MissingSlash));
        assert_eq!(MediaType::new("/abc"), Err(E::EmptyPart));
        assert_eq!(MediaType::new("abc/"), Err(E::EmptyPart));
        assert_eq!(MediaType::new("image/JPEG"), Err(E::InvalidByte { position: 6 }));
        assert_eq!(MediaType::new("image/jp/eg"), Err(E::InvalidByte { position: 8 }));
        assert_eq!(MediaType::new("-mage/jpeg"), Err(E::InvalidByte { position: 0 }));
        assert_eq!(MediaType::new("image/.jpeg"), Err(E::InvalidByte { position: 6 }));
        assert_eq!(
            MediaType::new("text/plain; charset=utf-8"),
            Err(E::InvalidByte { position: 10 })
        );
        assert_eq!(MediaType::new("image/jpé"), Err(E::InvalidByte { position: 8 }));
        let long = format!("a/{}", "b".repeat(63));
        assert_eq!(MediaType::new(&long), Err(E::TooLong { len: 65 }));
        let max = format!("a/{}", "b".repeat(62));
        assert!(MediaType::new(&max).is_ok());
    }

    #[test]
    fn media_type_serde_validates() {
        let parsed: Result<MediaType, _> = MediaType::try_from(String::from("Image/png"));
        assert!(parsed.is_err());
        let s: String = MediaType::new("image/png").unwrap().into();
        assert_eq!(s, "image/png");
    }
}
