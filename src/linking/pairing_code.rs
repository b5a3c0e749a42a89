//! The one-time pairing code a person copies from one device to another.
//!
//! A code is 8 symbols from the 32-symbol Crockford base-32 alphabet
//! (`0-9` and `A-Z` without `I`, `L`, `O`, `U`), i.e. 40 bits drawn from a
//! cryptographic RNG. It is shown as `ABCD-EFGH`, and its canonical 8 ASCII
//! bytes ([`PairingCode::as_password_bytes`]) are the CPace `PRS`.
//!
//! ```
//! use multidevice::PairingCode;
//!
//! let code = PairingCode::generate(&mut rand::rng());
//! let shown = code.to_string(); // e.g. "7KQ2-MX9A"
//! let typed = shown.to_lowercase().replace('-', " ");
//! assert_eq!(PairingCode::parse(&typed)?, code);
//! # Ok::<(), multidevice::PairingCodeError>(())
//! ```

use core::fmt::{self, Write as _};
use core::str::FromStr;

use rand_core::CryptoRng;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Number of symbols in a pairing code.
pub const PAIRING_CODE_LEN: usize = 8;

/// Crockford base-32: no `I`, `L`, `O`, `U`, so nothing reads as another
/// symbol. Exactly 32 entries, so 5 random bits pick one without bias.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Bits of entropy per symbol (`log2(ALPHABET.len())`).
const BITS_PER_SYMBOL: u32 = 5;

/// Random bytes consumed per code: 8 symbols * 5 bits = 40 bits.
const ENTROPY_BYTES: usize = 5;

/// Where the display form inserts its hyphen.
const GROUP_LEN: usize = 4;

/// Why a typed pairing code was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingCodeError {
    /// The input does not contain exactly [`PAIRING_CODE_LEN`] symbols once
    /// spaces and hyphens are removed.
    #[error("pairing code must have {expected} symbols, got {got}")]
    WrongLength {
        /// The required number of symbols.
        expected: usize,
        /// The number of symbols found.
        got: usize,
    },
    /// A character is neither a code symbol, a recognised look-alike, a
    /// space nor a hyphen. The character itself is not reported, since the
    /// error may be logged and the code is secret.
    #[error("pairing code has an invalid character at position {position}")]
    InvalidCharacter {
        /// Zero-based index, counted in `char`s, of the offending character.
        position: usize,
    },
}

/// A one-time pairing code: 8 canonical Crockford base-32 symbols.
///
/// Equality is constant-time, the symbols are wiped on drop, and `Debug`
/// never prints them (`Display` does, by design: it is what the user reads).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PairingCode {
    /// Canonical upper-case ASCII symbols, each one of [`ALPHABET`].
    symbols: [u8; PAIRING_CODE_LEN],
}

impl PairingCode {
    /// Draws a fresh uniformly random code (40 bits) from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut entropy = Zeroizing::new([0u8; ENTROPY_BYTES]);
        rng.fill_bytes(entropy.as_mut_slice());
        let mut bits =
            Zeroizing::new(entropy.iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte)));
        let mut symbols = [0u8; PAIRING_CODE_LEN];
        for slot in symbols.iter_mut().rev() {
            let [index, ..] = (*bits & 0x1f).to_le_bytes();
            *slot = symbol_at(index);
            *bits >>= BITS_PER_SYMBOL;
        }
        Self { symbols }
    }

    /// Parses a code as a person may type it.
    ///
    /// Case-insensitive; whitespace and `-` are ignored anywhere; the
    /// Crockford look-alikes `O`/`o` read as `0` and `I`/`i`/`L`/`l` as `1`.
    ///
    /// # Errors
    ///
    /// [`PairingCodeError::InvalidCharacter`] for any other character
    /// (including `U`), [`PairingCodeError::WrongLength`] if the number of
    /// symbols is not [`PAIRING_CODE_LEN`].
    pub fn parse(input: &str) -> Result<Self, PairingCodeError> {
        let mut symbols = Zeroizing::new([0u8; PAIRING_CODE_LEN]);
        let mut count = 0usize;
        for (position, ch) in input.chars().enumerate() {
            if ch.is_whitespace() || ch == '-' {
                continue;
            }
            let symbol =
                canonical_symbol(ch).ok_or(PairingCodeError::InvalidCharacter { position })?;
            if let Some(slot) = symbols.get_mut(count) {
                *slot = symbol;
            }
            count = count.saturating_add(1);
        }
        if count != PAIRING_CODE_LEN {
            return Err(PairingCodeError::WrongLength { expected: PAIRING_CODE_LEN, got: count });
        }
        Ok(Self { symbols: *symbols })
    }

    /// The canonical form (8 upper-case ASCII bytes, no hyphen), used as the
    /// CPace password string `PRS`.
    #[must_use]
    pub fn as_password_bytes(&self) -> &[u8; PAIRING_CODE_LEN] {
        &self.symbols
    }
}

/// Maps a 5-bit index to its symbol by scanning the whole alphabet, so the
/// memory access pattern does not depend on the secret index.
fn symbol_at(index: u8) -> u8 {
    let mut symbol = 0u8;
    for (candidate, &alphabet_symbol) in (0u8..).zip(ALPHABET.iter()) {
        symbol.conditional_assign(&alphabet_symbol, candidate.ct_eq(&index));
    }
    symbol
}

/// The canonical symbol a typed character stands for, if any.
fn canonical_symbol(ch: char) -> Option<u8> {
    let byte = u8::try_from(ch).ok()?.to_ascii_uppercase();
    let byte = match byte {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    };
    ALPHABET.contains(&byte).then_some(byte)
}

impl FromStr for PairingCode {
    type Err = PairingCodeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

impl fmt::Display for PairingCode {
    /// Formats as `ABCD-EFGH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, &symbol) in self.symbols.iter().enumerate() {
            if index == GROUP_LEN {
                f.write_char('-')?;
            }
            f.write_char(char::from(symbol))?;
        }
        Ok(())
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(<redacted>)")
    }
}

impl ConstantTimeEq for PairingCode {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.symbols.as_slice().ct_eq(other.symbols.as_slice())
    }
}

impl PartialEq for PairingCode {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for PairingCode {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand_core::{TryCryptoRng, TryRng};

    /// Emits a fixed byte forever, to pin down the bit-to-symbol mapping.
    struct ConstantRng(u8);

    impl TryRng for ConstantRng {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            Ok(u32::from_le_bytes([self.0; 4]))
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            Ok(u64::from_le_bytes([self.0; 8]))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            dst.fill(self.0);
            Ok(())
        }
    }

    impl TryCryptoRng for ConstantRng {}

    /// Replays a fixed byte sequence.
    struct ScriptedRng(Vec<u8>);

    impl TryRng for ScriptedRng {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            let mut bytes = [0u8; 4];
            self.try_fill_bytes(&mut bytes)?;
            Ok(u32::from_le_bytes(bytes))
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            let mut bytes = [0u8; 8];
            self.try_fill_bytes(&mut bytes)?;
            Ok(u64::from_le_bytes(bytes))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            let rest = self.0.split_off(dst.len());
            dst.copy_from_slice(&self.0);
            self.0 = rest;
            Ok(())
        }
    }

    impl TryCryptoRng for ScriptedRng {}

    fn code(s: &str) -> PairingCode {
        PairingCode::parse(s).unwrap()
    }

    #[test]
    fn alphabet_is_crockford() {
        assert_eq!(ALPHABET.len(), 1 << BITS_PER_SYMBOL);
        for excluded in [b'I', b'L', b'O', b'U'] {
            assert!(!ALPHABET.contains(&excluded));
        }
        let mut sorted = ALPHABET.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), 32);
        for (index, &symbol) in ALPHABET.iter().enumerate() {
            assert_eq!(symbol_at(u8::try_from(index).unwrap()), symbol);
        }
    }

    #[test]
    fn generation_maps_bits_to_symbols() {
        assert_eq!(PairingCode::generate(&mut ConstantRng(0x00)).to_string(), "0000-0000");
        assert_eq!(PairingCode::generate(&mut ConstantRng(0xff)).to_string(), "ZZZZ-ZZZZ");
        // 40 bits 00000 00001 00010 ... 00111 => symbols 0..7.
        let bits: u64 = (0..8).fold(0, |acc, i| (acc << 5) | i);
        let bytes = bits.to_be_bytes()[3..].to_vec();
        assert_eq!(PairingCode::generate(&mut ScriptedRng(bytes)).to_string(), "0123-4567");
        // 11111 11110 ... 11000 => symbols 31..24.
        let bits: u64 = (24..32).rev().fold(0, |acc, i| (acc << 5) | i);
        let bytes = bits.to_be_bytes()[3..].to_vec();
        assert_eq!(PairingCode::generate(&mut ScriptedRng(bytes)).to_string(), "ZYXW-VTSR");
    }

    #[test]
    fn display_parse_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let original = PairingCode::generate(&mut rng);
            let shown = original.to_string();
            assert_eq!(shown.len(), 9);
            assert_eq!(shown.as_bytes()[4], b'-');
            let parsed: PairingCode = shown.parse().unwrap();
            assert_eq!(parsed, original);
            assert_eq!(parsed.as_password_bytes(), original.as_password_bytes());
        }
    }

    #[test]
    fn password_bytes_are_canonical() {
        assert_eq!(code("abcd-efgh").as_password_bytes(), b"ABCDEFGH");
        assert_eq!(code("O0Il-L1zz").as_password_bytes(), b"001111ZZ");
    }

    #[test]
    fn normalization() {
        let canonical = code("7KQ2-MX9A");
        for typed in [
            "7KQ2MX9A",
            "7kq2-mx9a",
            "7kq2 mx9a",
            " 7 k q 2 - m x 9 a ",
            "7KQ2--MX9A",
            "-7KQ2MX9A-",
            "7KQ2\tMX9A\n",
        ] {
            assert_eq!(code(typed), canonical, "{typed:?}");
        }
        assert_eq!(code("oOiI-lL01"), code("0011-1101"));
        assert_eq!(code("oOiI-lL01").to_string(), "0011-1101");
    }

    #[test]
    fn rejects_wrong_length() {
        for (typed, got) in [
            ("", 0),
            ("   --  ", 0),
            ("ABC", 3),
            ("ABCD-EFG", 7),
            ("ABCD-EFGHJ", 9),
            ("ABCD-EFGH-ABCD-EFGH", 16),
        ] {
            assert_eq!(
                PairingCode::parse(typed).unwrap_err(),
                PairingCodeError::WrongLength { expected: 8, got },
                "{typed:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_characters() {
        for (typed, position) in [
            ("ABCD-EFGU", 8),
            ("uBCD-EFGH", 0),
            ("ABCD_EFGH", 4),
            ("ABCD.EFGH", 4),
            ("AB+D-EFGH", 2),
            ("ABCD-EFG\u{0}", 8),
            ("ÄBCD-EFGH", 0),
            ("AB😀D-EFGH", 2),
            ("ABCD\u{2013}EFGH", 4),
            ("ＡBCD-EFGH", 0),
        ] {
            assert_eq!(
                PairingCode::parse(typed).unwrap_err(),
                PairingCodeError::InvalidCharacter { position },
                "{typed:?}"
            );
        }
    }

    #[test]
    fn debug_hides_code() {
        let c = code("ABCD-EFGH");
        let shown = format!("{c:?}");
        assert_eq!(shown, "PairingCode(<redacted>)");
        let err = PairingCode::parse("ABCD-EFGU").unwrap_err();
        assert!(!err.to_string().contains('U'));
    }

    #[test]
    fn equality() {
        assert_eq!(code("ABCD-EFGH"), code("abcdefgh"));
        assert_ne!(code("ABCD-EFGH"), code("ABCD-EFGJ"));
        assert!(bool::from(code("0000-0000").ct_eq(&code("oooo-oooo"))));
    }

    #[test]
    fn every_symbol_appears_in_each_position() {
        let mut rng = StdRng::seed_from_u64(42);
        let samples = 4000;
        let mut counts = [[0u32; 32]; PAIRING_CODE_LEN];
        for _ in 0..samples {
            let c = PairingCode::generate(&mut rng);
            for (position, symbol) in c.as_password_bytes().iter().enumerate() {
                let index = ALPHABET.iter().position(|s| s == symbol).unwrap();
                counts[position][index] += 1;
            }
        }
        // Expected 125 per cell; a 6-sigma band still catches a dead or
        // doubled symbol.
        for (position, row) in counts.iter().enumerate() {
            for (index, &count) in row.iter().enumerate() {
                assert!(
                    (60..=190).contains(&count),
                    "position {position} symbol {} appeared {count} times",
                    char::from(ALPHABET[index])
                );
            }
        }
    }
}
