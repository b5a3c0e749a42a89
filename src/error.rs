//! Error types, one enum per domain.
//!
//! Every variant names the exact violation. Callers can tell "drop this message"
//! ([`SessionError::is_drop`]) from "ask the user" (identity changes) from "fetch fresh keys".

use crate::keys::{AccountId, DeviceAddress, DeviceId};

/// A wire message or persisted blob could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the field being read.
    #[error("input truncated: needed {needed} more bytes")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// The version byte is not one this crate speaks.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The type byte names no known message.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Bytes remained after a complete value.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
    /// A field holds a value outside its allowed range.
    #[error("field out of range")]
    OutOfRange,
    /// An Ed25519 public key is not a valid point encoding.
    #[error("invalid Ed25519 public key encoding")]
    InvalidSigningKey,
    /// An identity's signature over its X25519 agreement key fails `verify_strict`.
    #[error("identity signature over the agreement key is invalid")]
    BadIdentitySignature,
    /// A length field exceeds its limit.
    #[error("length {got} exceeds limit {limit}")]
    TooLong {
        /// The limit.
        limit: usize,
        /// The length found.
        got: usize,
    },
    /// Persisted state could not be read back.
    #[error("persisted state is malformed")]
    MalformedState,
}

/// Which signature failed to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureKind {
    /// A device's signature over its own X25519 identity key.
    IdentityAgreementKey,
    /// A device's signature over its signed prekey.
    SignedPrekey,
    /// The primary's account signature over a companion.
    AccountSignature,
    /// The companion's device signature over its linking metadata.
    DeviceSignature,
    /// The primary's signature over a device list.
    DeviceList,
    /// A companion's signed request to be removed.
    LogoutRequest,
}

/// A cryptographic check on a key or signature failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A signature did not verify under `verify_strict`.
    #[error("invalid {0:?} signature")]
    BadSignature(SignatureKind),
    /// A peer-supplied X25519 key gave an all-zero (non-contributory) shared secret.
    #[error("non-contributory X25519 key")]
    NonContributoryKey,
    /// A peer-supplied X25519 key is not canonically encoded (u-coordinate of p or more, or the
    /// top bit set).
    #[error("non-canonical X25519 key")]
    NonCanonicalKey,
}

/// Setting up, using or restoring a pairwise session failed.
///
/// On every error the device's state is exactly as it was before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The message could not be parsed.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// A key or signature check failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The message is addressed to another device.
    #[error("message addressed to {addressed_to}, not to this device")]
    WrongRecipient {
        /// The address the message names.
        addressed_to: DeviceAddress,
    },
    /// No session exists with this device; fetch its prekey bundle and start one.
    #[error("no session with {0}")]
    NoSession(DeviceAddress),
    /// The message names a session this device does not hold (unknown or evicted).
    #[error("message from {0} is for an unknown session")]
    UnknownSession(DeviceAddress),
    /// This message was already decrypted, or its key was discarded under the skipped-key limit.
    #[error("duplicate message")]
    Duplicate,
    /// The message counter is further ahead than the configured forward-jump limit.
    #[error("counter jump of {jump} exceeds the limit of {limit}")]
    TooFarAhead {
        /// How many keys would have to be skipped.
        jump: u64,
        /// The configured limit.
        limit: u32,
    },
    /// The ciphertext or its header failed authentication.
    #[error("message failed authentication")]
    AuthenticationFailed,
    /// The initial message names a signed prekey this device does not hold (or no longer holds).
    #[error("unknown signed prekey {0}")]
    UnknownSignedPrekey(u32),
    /// The initial message names a one-time prekey that does not exist or was already used.
    #[error("unknown or already used one-time prekey {0}")]
    UnknownOneTimePrekey(u32),
    /// The sender's identity differs from the one this device holds for that address.
    #[error("identity of {0} differs from the known one")]
    IdentityMismatch(DeviceAddress),
    /// A device cannot hold a session with itself.
    #[error("a device cannot open a session with itself")]
    SelfSession,
    /// The plaintext exceeds [`crate::consts::MAX_MESSAGE_PLAINTEXT`].
    #[error("plaintext of {0} bytes is too large")]
    PlaintextTooLarge(usize),
    /// A configuration value is outside its allowed range.
    #[error("configuration value out of range")]
    InvalidConfig,
    /// This companion is signed out: its primary has been inactive for more than 14 days, or it
    /// was removed. Only a fresh device list from the primary brings it back.
    #[error("this device is signed out")]
    SignedOut,
    /// The device already holds the maximum number of one-time prekeys.
    #[error("one-time prekey limit of {limit} reached")]
    TooManyOneTimePrekeys {
        /// The limit.
        limit: usize,
    },
}

impl SessionError {
    /// True when the right reaction is to drop the message and carry on: nothing about the
    /// session or the peer needs attention.
    pub fn is_drop(&self) -> bool {
        matches!(
            self,
            Self::Decode(_)
                | Self::WrongRecipient { .. }
                | Self::Duplicate
                | Self::TooFarAhead { .. }
                | Self::AuthenticationFailed
                | Self::UnknownSession(_)
                | Self::Key(KeyError::NonContributoryKey | KeyError::NonCanonicalKey)
        )
    }
}

/// Processing, verifying or changing a device list failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The list or request could not be parsed.
    #[error("malformed device list: {0}")]
    Decode(#[from] DecodeError),
    /// A signature in the list did not verify.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The list names more than [`crate::consts::MAX_COMPANIONS`] companions.
    #[error("{got} companions exceed the limit")]
    TooManyCompanions {
        /// Companions named.
        got: usize,
    },
    /// The first entry is not the primary with the account identity.
    #[error("the list does not start with the account's primary")]
    MissingPrimary,
    /// Entries are not in strictly increasing device order.
    #[error("device list entries are not sorted and unique")]
    UnsortedEntries,
    /// A companion's entry does not match its signed device identity.
    #[error("entry for device {device:?} does not match its signed identity")]
    EntryMismatch {
        /// The device whose entry mismatched.
        device: DeviceId,
    },
    /// The list is older than one already seen for this account: refuse it.
    #[error("rollback: saw version {seen}, got {got}")]
    RollbackRejected {
        /// Highest version seen.
        seen: u64,
        /// Version offered.
        got: u64,
    },
    /// Two different lists were signed with the same version, or a successor does not chain to
    /// its predecessor: the primary's key is misused or the server equivocates.
    #[error("equivocation at version {version}")]
    Equivocation {
        /// The version in conflict.
        version: u64,
    },
    /// The account identity differs from the accepted one. Ask the user; nothing is sent to the
    /// account until the app calls [`crate::Device::accept_identity_change`].
    #[error("account {account:?} changed its identity")]
    IdentityChanged {
        /// The account.
        account: AccountId,
    },
    /// The operation needs the account's primary device.
    #[error("only the primary can do this")]
    NotPrimary,
    /// The operation needs a linked companion.
    #[error("this device is not a linked companion")]
    NotCompanion,
    /// The account already has [`crate::consts::MAX_COMPANIONS`] companions.
    #[error("the account already has {limit} companions")]
    CompanionLimit {
        /// The limit.
        limit: usize,
    },
    /// The device is not a companion of this account.
    #[error("device {0:?} is not a companion of this account")]
    UnknownCompanion(DeviceId),
    /// The signed object belongs to another account.
    #[error("object belongs to account {got:?}, expected {expected:?}")]
    WrongAccount {
        /// The account expected.
        expected: AccountId,
        /// The account found.
        got: AccountId,
    },
    /// This companion is signed out.
    #[error("this device is signed out")]
    SignedOut,
}

/// A fan-out could not be encrypted or an envelope could not be accepted.
///
/// On every error the device is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FanoutError {
    /// The underlying session operation failed.
    #[error(transparent)]
    Session(SessionError),
    /// The envelope's inner content could not be parsed.
    #[error("malformed envelope content: {0}")]
    Decode(#[from] DecodeError),
    /// No verified device list is held for the account: fetch and process it, then retry.
    #[error("no device list held for account {0:?}")]
    UnknownAccount(AccountId),
    /// The account changed its identity; the app must accept the change first.
    #[error("account {0:?} has an unaccepted identity change")]
    IdentityChangePending(AccountId),
    /// The sender is not authorized by the newest list held for its account.
    #[error("sender {0} is not in its account's verified device list")]
    UnauthorizedSender(DeviceAddress),
    /// The sender announced a newer list that may authorize it: fetch it, then retry.
    #[error("account {account:?} has a newer device list (version {version})")]
    RefreshSenderList {
        /// The sender's account.
        account: AccountId,
        /// The version it announced.
        version: u64,
    },
    /// A device of another account claimed to send a copy of this account's own message.
    #[error("{0} sent an own-device copy but is not in this account")]
    ForeignOwnCopy(DeviceAddress),
    /// The envelope refers to a shared body that was not supplied.
    #[error("the message body is missing")]
    BodyMissing,
    /// The supplied body does not match the digest in the envelope.
    #[error("the message body does not match its digest")]
    BodyDigestMismatch,
    /// The body failed authentication.
    #[error("the message body failed authentication")]
    BodyAuthentication,
    /// The envelope carries a history descriptor: handle it with
    /// [`crate::Device::decrypt_history`].
    #[error("the envelope carries history, not a message")]
    UnexpectedHistory,
    /// A fan-out must name between 1 and [`crate::MAX_FANOUT_ACCOUNTS`] accounts.
    #[error("{0} recipient accounts")]
    TooManyAccounts(usize),
    /// The payload exceeds the fan-out limit.
    #[error("payload of {0} bytes is too large")]
    PayloadTooLarge(usize),
}

/// Linking a companion failed. Every rejection leaves both devices unchanged, except that a
/// failed pairing-code confirmation aborts that attempt, as it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A linking message could not be parsed.
    #[error("malformed linking message: {0}")]
    Decode(#[from] DecodeError),
    /// A signature check failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Authorizing or adding the companion failed (for example a fifth companion).
    #[error(transparent)]
    DeviceList(#[from] DeviceListError),
    /// The QR text does not start with the expected URI prefix and version.
    #[error("not a multidevice link code")]
    BadPrefix,
    /// The QR text is not valid base32.
    #[error("invalid characters in the link code")]
    BadEncoding,
    /// The QR text's checksum does not match (a misread code).
    #[error("link code checksum mismatch")]
    BadChecksum,
    /// The offer or code has expired, or claims an expiry further out than its lifetime.
    #[error("the offer or code has expired")]
    Expired,
    /// This offer was already approved once; offers are single use.
    #[error("the offer was already used")]
    OfferReused,
    /// The MAC under the link secret did not verify: the message was modified or forged.
    #[error("link MAC mismatch")]
    MacMismatch,
    /// The message belongs to another linking attempt.
    #[error("message for another linking attempt")]
    WrongAttempt,
    /// The pairing-code key confirmation failed: a wrong code, or a relay in the middle. The
    /// attempt is aborted; start a new one with a new code.
    #[error("key confirmation failed; the pairing attempt is aborted")]
    ConfirmationFailed,
    /// The attempt was aborted earlier or has already completed.
    #[error("the linking attempt is no longer active")]
    NotActive,
    /// A PAKE share was invalid.
    #[error("invalid PAKE share")]
    InvalidShare,
    /// The approval names an account identity other than the authenticated primary's.
    #[error("approval from an unexpected account identity")]
    UnexpectedAccountIdentity,
    /// The confirmation does not match what was approved.
    #[error("confirmation does not match the approval")]
    ConfirmationMismatch,
}

pub use crate::blob::{BlobError, MediaTypeError};

/// Sending or accepting history failed. On every error the device is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The envelope could not be decrypted or its sender is not authorized.
    #[error(transparent)]
    Fanout(#[from] FanoutError),
    /// The descriptor is malformed, or the blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Only the primary sends history.
    #[error("only the primary sends history")]
    NotPrimary,
    /// History goes only to a companion in the primary's own verified list.
    #[error("{0} is not a companion of this account")]
    NotOwnCompanion(DeviceAddress),
    /// No session and no usable bundle for the companion.
    #[error("no session with {0}: {1:?}")]
    NoSession(DeviceAddress, crate::FanoutSkip),
    /// History is accepted only by a linked companion.
    #[error("this device is not a linked companion")]
    NotLinkedCompanion,
    /// History came from a device of another account.
    #[error("history from {0}, which is not of this account")]
    NotOwnAccount(DeviceAddress),
    /// The history window after linking has closed.
    #[error("the history window has closed")]
    WindowClosed,
    /// The envelope is a regular message, not history.
    #[error("the envelope is not history")]
    NotHistory,
    /// History goes only to a companion linked at most `HISTORY_WINDOW_SECS` ago.
    #[error("{0} was linked too long ago to receive history")]
    NotNewlyLinked(DeviceAddress),
    /// A history record is longer than `MAX_HISTORY_RECORD` bytes.
    #[error("history record of {len} bytes is over the limit")]
    RecordTooLarge {
        /// The record's length (as given, or as its length prefix claims).
        len: u64,
    },
    /// The history plaintext ends inside a record.
    #[error("history ends inside a record")]
    TruncatedRecord,
}

impl From<DecodeError> for HistoryError {
    fn from(error: DecodeError) -> Self {
        HistoryError::Fanout(FanoutError::Decode(error))
    }
}
