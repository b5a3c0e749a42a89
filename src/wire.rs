//! The one codec every wire type goes through, and its byte-level helpers.
//!
//! Every wire message is `version (u8 = 1) || type (u8) || body`. [`Codec`] decodes it in one
//! order for all of them (length, version, type, body, no trailing bytes) and encodes it into a
//! buffer of exactly the right size. Integers are big-endian and fixed-width, so each value has
//! exactly one encoding. The reader never panics: every read checks the remaining length first.

use crate::error::DecodeError;

/// Protocol version byte carried first in every wire message.
pub(crate) const VERSION: u8 = 1;

/// A wire type: `version || type || body`, with one canonical encoding.
///
/// Implementors describe their body; the provided methods own the header, the length checks and
/// the buffer sizing, so no wire type checks its header or sizes its buffer by hand.
pub(crate) trait Codec<'a>: Sized {
    /// The type byte.
    const TYPE: u8;
    /// The shortest possible body: input shorter than the header plus this fails with
    /// [`DecodeError::Truncated`] before anything else is read.
    const MIN_BODY_LEN: usize;

    /// True if `type_byte` names this wire type (one type byte unless overridden).
    fn accepts(type_byte: u8) -> bool {
        type_byte == Self::TYPE
    }

    /// The type byte of this value (`TYPE` unless overridden).
    fn type_byte(&self) -> u8 {
        Self::TYPE
    }

    /// The exact length of the body.
    fn body_len(&self) -> usize;

    /// Appends the body.
    fn write_body(&self, out: &mut Vec<u8>);

    /// Reads the body of a message whose type byte was `type_byte`.
    fn read_body(type_byte: u8, reader: &mut Reader<'a>) -> Result<Self, DecodeError>;

    /// The exact encoded length, header included.
    fn encoded_len(&self) -> usize {
        2 + self.body_len()
    }

    /// Appends the full encoding, header included.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[VERSION, self.type_byte()]);
        self.write_body(out);
    }

    /// The canonical encoding, in a buffer of exactly [`Codec::encoded_len`] bytes (so secret
    /// bodies can be wrapped in `Zeroizing` without a stale copy behind).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write(&mut out);
        out
    }

    /// Reads one value, header included, from `reader`: version, then type, then body.
    fn read(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        if reader.remaining() < 2 + Self::MIN_BODY_LEN {
            return Err(DecodeError::Truncated {
                needed: 2 + Self::MIN_BODY_LEN - reader.remaining(),
            });
        }
        reader.version()?;
        let type_byte = reader.u8()?;
        if !Self::accepts(type_byte) {
            return Err(DecodeError::UnknownType(type_byte));
        }
        Self::read_body(type_byte, reader)
    }

    /// Decodes exactly one value: length, version, type, body, and no trailing bytes.
    fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let value = Self::read(&mut reader)?;
        reader.finish()?;
        Ok(value)
    }
}

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    all: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { all: bytes, rest: bytes }
    }

    /// Every byte read so far, from the start of the input.
    pub(crate) fn consumed(&self) -> &'a [u8] {
        self.all.get(..self.all.len() - self.rest.len()).unwrap_or_default()
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < len {
            return Err(DecodeError::Truncated { needed: len - self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a boolean encoded as exactly 0 or 1.
    pub(crate) fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::OutOfRange),
        }
    }

    /// Reads the version byte and checks it.
    pub(crate) fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            VERSION => Ok(()),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }

    /// How many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }

    /// Succeeds only when every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes(self.rest.len())) }
    }
}
