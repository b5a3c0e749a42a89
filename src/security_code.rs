//! The security code two users compare to verify each other's accounts.
//!
//! It covers each account's identity (the primary's identity key), not the individual devices:
//! it stays the same when companions come and go, because every companion is already vouched
//! for by the account signature and the signed device list, and it changes when a primary
//! re-registers. docs/PROTOCOL.md explains the choice against covering every device.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::crypto::{self, label};
use crate::keys::{AccountId, PublicIdentity};

/// Rounds of SHA-256 per half, to make grinding for a colliding code expensive.
const ITERATIONS: usize = 1024;
/// Version byte of the scannable form.
const SCANNABLE_VERSION: u8 = 1;

/// A 60-digit code for a pair of accounts, identical on both sides, plus a compact scannable
/// form. Comparisons are constant-time.
#[derive(Clone)]
pub struct SecurityCode {
    digits: [u8; 60],
    scannable: Vec<u8>,
}

impl SecurityCode {
    /// The code for the conversation between two accounts, each given by id and identity.
    pub fn new(local: (AccountId, &PublicIdentity), remote: (AccountId, &PublicIdentity)) -> Self {
        let (first, second) = if local.0 <= remote.0 { (local, remote) } else { (remote, local) };
        let mut digits = [0u8; 60];
        let (left, right) = digits.split_at_mut(30);
        half(first.0, first.1, left);
        half(second.0, second.1, right);
        let mut scannable = vec![SCANNABLE_VERSION];
        for (account, identity) in [first, second] {
            scannable.extend_from_slice(&account.0.to_be_bytes());
            scannable.extend_from_slice(identity.signing_key_bytes());
        }
        Self { digits, scannable }
    }

    /// The 60 digits, as ASCII.
    pub fn digits(&self) -> &str {
        core::str::from_utf8(&self.digits).unwrap_or_default()
    }

    /// The compact form to put in a QR code.
    pub fn scannable(&self) -> &[u8] {
        &self.scannable
    }

    /// True if a code scanned from the other device matches, in constant time.
    pub fn matches_scanned(&self, scanned: &[u8]) -> bool {
        crypto::ct_eq(&self.scannable, scanned)
    }

    /// True if digits typed or read aloud match (spaces ignored), in constant time.
    pub fn matches_digits(&self, typed: &str) -> bool {
        let typed: Vec<u8> = typed.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        crypto::ct_eq(&self.digits, &typed)
    }
}

impl PartialEq for SecurityCode {
    fn eq(&self, other: &Self) -> bool {
        crypto::ct_eq(&self.digits, &other.digits)
            & crypto::ct_eq(&self.scannable, &other.scannable)
    }
}

impl Eq for SecurityCode {}

/// Twelve groups of five digits.
impl fmt::Display for SecurityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.digits.chunks(5).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(core::str::from_utf8(group).unwrap_or_default())?;
        }
        Ok(())
    }
}

impl fmt::Debug for SecurityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecurityCode({self})")
    }
}

/// Thirty digits for one account: six 5-digit groups from an iterated hash of its identity.
fn half(account: AccountId, identity: &PublicIdentity, out: &mut [u8]) {
    let mut digest = crypto::hash(
        label::HASH_SECURITY_CODE,
        &[&account.0.to_be_bytes(), identity.signing_key_bytes()],
    );
    for _ in 0..ITERATIONS {
        digest = Sha256::new()
            .chain_update(digest)
            .chain_update(identity.signing_key_bytes())
            .finalize()
            .into();
    }
    for (group, chunk) in out.chunks_mut(5).zip(digest.chunks(5)) {
        let mut value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)) % 100_000;
        for slot in group.iter_mut().rev() {
            // `value % 10` is below 10, so the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let digit = (value % 10) as u8;
            *slot = b'0' + digit;
            value /= 10;
        }
    }
}
