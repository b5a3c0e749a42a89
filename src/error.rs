//! Error types, one enum per domain.
//!
//! Every variant names the exact violation, and every error type has an `action()` that says what
//! the app should do about it ([`Action`]): drop the message, keep it and retry later, fetch an
//! account's device list, or ask the user. On every error the device is unchanged, except where a
//! documented latch moves (the clock high-water mark, a list version announced in traffic, a
//! pending identity change).

use crate::keys::{AccountId, DeviceAddress, DeviceId};
use crate::session::message::MessageKind;
use crate::store::Table;

/// What an app should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Drop the message (or give up on the call): the same input can never succeed, and nothing
    /// needs attention.
    Drop,
    /// Keep the message and retry it later, once the device's state has changed: a fresh device
    /// list signs this companion back in or finishes its link, or the missing body has arrived.
    /// Nothing was spent, so a retry can still succeed.
    RetryLater,
    /// Fetch this account's newest device list from the server, pass it to
    /// [`crate::Device::process_device_list`], then retry the message.
    FetchList(AccountId),
    /// Show the user: an identity change or a split view of an account needs a person's decision
    /// (compare the security code).
    AskUser,
}

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
    /// The kind byte of a session message names no known kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Bytes remained after a complete value.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
    /// A field holds a value outside its allowed range.
    #[error("field out of range")]
    OutOfRange,
    /// A list of values that must be strictly increasing (sorted, no value twice) is not.
    #[error("values are not strictly increasing")]
    NotStrictlyIncreasing,
    /// A prekey message's ratchet key differs from its base key: the initiator never ratchets
    /// before it hears back, so such a message is not canonical.
    #[error("prekey message ratchet key differs from its base key")]
    BaseKeyMismatch,
    /// An Ed25519 public key is not the canonical encoding of a curve point.
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

impl DecodeError {
    /// Always [`Action::Drop`]: malformed bytes never become valid.
    pub fn action(&self) -> Action {
        Action::Drop
    }
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
    /// A sending device's signature over a group message.
    GroupMessage,
    /// A receiver's signature over a retry request.
    RetryRequest,
}

/// The rule of strict Ed25519 verification a signature broke (docs/PROTOCOL.md, Notation).
///
/// Every signature in the crate is checked against all of these rules; only
/// [`crate::hazmat::check_ed25519_strict`] reports which one failed. The rules are checked in
/// the order of the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ed25519Rejection {
    /// The signature is not 64 bytes long.
    #[error("an Ed25519 signature is 64 bytes")]
    SignatureLength,
    /// The public key `A` is not a canonical encoding: its y-coordinate is p = 2^255 - 19 or
    /// more, or its sign bit is set although x = 0.
    #[error("non-canonical Ed25519 public key")]
    NonCanonicalKey,
    /// The public key `A` is canonical but no curve point has it.
    #[error("Ed25519 public key is not a curve point")]
    KeyNotOnCurve,
    /// The public key `A` is one of the eight points of small order.
    #[error("Ed25519 public key of small order")]
    SmallOrderKey,
    /// The signature's `R` is not a canonical encoding.
    #[error("non-canonical Ed25519 R")]
    NonCanonicalR,
    /// The signature's `R` is one of the eight points of small order.
    #[error("Ed25519 R of small order")]
    SmallOrderR,
    /// The signature's `S` is not below the group order L.
    #[error("Ed25519 S is not below the group order")]
    ScalarNotReduced,
    /// The signature's `R` is canonical but no curve point has it.
    #[error("Ed25519 R is not a curve point")]
    RNotOnCurve,
    /// The cofactorless equation `[S]B = R + [k]A` does not hold.
    #[error("Ed25519 verification equation fails")]
    EquationFails,
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

impl KeyError {
    /// Always [`Action::Drop`]: a forged or broken key stays broken.
    pub fn action(&self) -> Action {
        Action::Drop
    }
}

/// Setting up, using or restoring a pairwise session failed.
///
/// On every error the device's sessions and prekeys are exactly as they were before the call.
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
    /// The ratchet cannot proceed without a receiving chain it lacks: a message carries a new
    /// ratchet key although this side has not answered the peer's current one (an honest peer
    /// cannot have a newer one), or a restored session must turn its ratchet but holds no
    /// receiving chain.
    #[error("the session has no receiving chain for this step")]
    NoReceivingChain,
    /// The sending chain has used all 2^32 message numbers; start a new session.
    #[error("the sending chain is exhausted")]
    CounterExhausted,
    /// The initial message names a signed prekey this device does not hold (or no longer holds).
    #[error("unknown signed prekey {0}")]
    UnknownSignedPrekey(u32),
    /// The initial message names a one-time prekey that does not exist or was already used.
    #[error("unknown or already used one-time prekey {0}")]
    UnknownOneTimePrekey(u32),
    /// The sender's identity differs from the one held for that address: the one its account's
    /// newest verified list names, or (on the raw [`crate::hazmat`] path) the one of the sessions
    /// already held.
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
    /// This companion has not finished linking: no verified list of its account names it yet.
    #[error("this device is not linked to an account yet")]
    NotLinked,
    /// The device already holds the maximum number of one-time prekeys.
    #[error("one-time prekey limit of {limit} reached")]
    TooManyOneTimePrekeys {
        /// The limit.
        limit: usize,
    },
    /// The message is of another kind than this entry point takes (for example a fan-out copy
    /// passed to [`crate::hazmat::decrypt`]); no key was spent.
    #[error("a {0:?} message cannot be handled here")]
    WrongKind(MessageKind),
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionError {
    /// What to do: [`Action::RetryLater`] while signed out or not linked yet (nothing was spent,
    /// so the message can still be read once a fresh list arrives), [`Action::FetchList`] when
    /// the sender's identity differs from the held one, [`Action::Drop`] otherwise.
    pub fn action(&self) -> Action {
        match self {
            Self::Store(error) => error.action(),
            Self::SignedOut | Self::NotLinked => Action::RetryLater,
            Self::IdentityMismatch(address) => Action::FetchList(address.account),
            _ => Action::Drop,
        }
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
    /// The list has version 0: lists start at version 1, and version 0 is what a device
    /// announces when it holds no list of its own account.
    #[error("a device list has version 0")]
    ZeroVersion,
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
    /// The list's `issued_at` lies more than
    /// [`crate::consts::MAX_LIST_ISSUED_AHEAD_SECS`] past this device's clock high-water mark.
    /// Retry once the clock has caught up.
    #[error("list issued in the future, at {issued_at:?}")]
    IssuedInFuture {
        /// The list's `issued_at`.
        issued_at: crate::keys::Timestamp,
    },
    /// One identity appears twice in a list, or the account identity appears as a companion.
    #[error("an identity appears twice in the list")]
    DuplicateIdentity,
    /// The list is older than one already seen for this account: refuse it.
    #[error("rollback: saw version {seen}, got {got}")]
    RollbackRejected {
        /// Highest version seen.
        seen: u64,
        /// Version offered.
        got: u64,
    },
    /// Two different lists were signed with the same version, a successor does not chain to
    /// its predecessor, or a list contradicts the digest an authorized device announced for its
    /// version: the primary's key is misused or the server shows different views.
    #[error("equivocation at version {version}")]
    Equivocation {
        /// The version in conflict.
        version: u64,
    },
    /// The account identity differs from the accepted one. Ask the user; nothing is sent to the
    /// account until the app calls [`crate::Device::accept_identity_change`] with this list.
    #[error("account {account:?} changed its identity")]
    IdentityChanged {
        /// The account.
        account: AccountId,
    },
    /// A list for this device's own account under another account identity: a primary signs
    /// every list of its own account, and a companion is bound to the identity it linked under.
    /// Nothing is kept.
    #[error("a list for this device's own account {account:?} under another identity")]
    ForeignOwnList {
        /// The own account.
        account: AccountId,
    },
    /// A list under an account identity this device no longer accepts for the account: one an
    /// accepted identity change replaced, or one the user rejected
    /// ([`crate::Device::reject_identity_change`]). Nothing is kept.
    #[error("account {account:?} presents an identity refused earlier")]
    RefusedIdentity {
        /// The account.
        account: AccountId,
    },
    /// [`crate::Device::accept_identity_change`] was given a list other than the pending one,
    /// or no change is pending.
    #[error("the list is not the pending identity change of account {account:?}")]
    NotPendingChange {
        /// The account.
        account: AccountId,
    },
    /// The operation needs the account's primary device.
    #[error("only the primary can do this")]
    NotPrimary,
    /// The operation needs a companion.
    #[error("this device is not a companion")]
    NotCompanion,
    /// The operation needs a linked companion, and this one has not finished linking.
    #[error("this device is not linked to an account")]
    NotLinked,
    /// This companion is already linked; a companion links once.
    #[error("this device is already linked")]
    AlreadyLinked,
    /// The account already has [`crate::consts::MAX_COMPANIONS`] companions, counting approvals
    /// still pending.
    #[error("the account already has {limit} companions")]
    CompanionLimit {
        /// The limit.
        limit: usize,
    },
    /// The device is not a companion of this account.
    #[error("device {0:?} is not a companion of this account")]
    UnknownCompanion(DeviceId),
    /// A companion with this device id is already in the list.
    #[error("device {0:?} is already in the list")]
    DeviceIdInUse(DeviceId),
    /// The countersigned identity matches no pending approval: it was never approved, its
    /// approval expired, or it was already added.
    #[error("no pending approval matches this companion")]
    UnknownApproval,
    /// Device ids or key indices are exhausted (2^32 links).
    #[error("device ids are exhausted")]
    IdsExhausted,
    /// The signed object belongs to another account.
    #[error("object belongs to account {got:?}, expected {expected:?}")]
    WrongAccount {
        /// The account expected.
        expected: AccountId,
        /// The account found.
        got: AccountId,
    },
    /// This primary holds an older own list than one a device of the account announced: it
    /// was restored from a backup. Fetch the own list and process it before signing again.
    #[error("own list v{held} is behind the announced v{announced}: fetch it first")]
    OwnListBehind {
        /// The own account.
        account: AccountId,
        /// The version held.
        held: u64,
        /// The version announced.
        announced: u64,
    },
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DeviceListError {
    /// What to do: [`Action::AskUser`] for an identity change or equivocation,
    /// [`Action::RetryLater`] while signed out, [`Action::Drop`] otherwise.
    pub fn action(&self) -> Action {
        match self {
            Self::Store(error) => error.action(),
            Self::IdentityChanged { .. } | Self::Equivocation { .. } => Action::AskUser,
            Self::OwnListBehind { account, .. } => Action::FetchList(*account),
            Self::IssuedInFuture { .. } => Action::RetryLater,
            _ => Action::Drop,
        }
    }
}

/// A fan-out could not be encrypted. On every error the device is unchanged but for the clock
/// high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FanoutError {
    /// The underlying session operation failed (for example this companion is signed out).
    #[error(transparent)]
    Session(SessionError),
    /// No verified device list is held for the account: fetch and process it, then retry.
    #[error("no device list held for account {0:?}")]
    UnknownAccount(AccountId),
    /// The account changed its identity; the app must accept the change first.
    #[error("account {0:?} has an unaccepted identity change")]
    IdentityChangePending(AccountId),
    /// A fan-out must name between 1 and [`crate::MAX_FANOUT_ACCOUNTS`] distinct accounts.
    #[error("{0} recipient accounts")]
    TooManyAccounts(usize),
    /// The payload exceeds the fan-out limit.
    #[error("payload of {0} bytes is too large")]
    PayloadTooLarge(usize),
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FanoutError {
    /// What to do: fetch the list of an unknown account, ask the user about a pending identity
    /// change, follow the session error, or give up on the call.
    pub fn action(&self) -> Action {
        match self {
            Self::Store(error) => error.action(),
            Self::Session(error) => error.action(),
            Self::UnknownAccount(account) => Action::FetchList(*account),
            Self::IdentityChangePending(_) => Action::AskUser,
            Self::TooManyAccounts(_) | Self::PayloadTooLarge(_) => Action::Drop,
        }
    }
}

impl From<SessionError> for FanoutError {
    fn from(error: SessionError) -> Self {
        FanoutError::Session(error)
    }
}

/// A message passed to [`crate::Device::receive`] was refused. The device is unchanged but for
/// the documented latches (the clock high-water mark, and a newer list version announced by an
/// authorized device), so the message can be kept and retried when [`ReceiveError::action`] says
/// so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The session layer refused the message (parse, authentication, duplicate, prekeys, ...).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The decrypted content is malformed (the sender is buggy or hostile).
    #[error("malformed message content: {0}")]
    Content(DecodeError),
    /// The blob descriptor in a history message is malformed.
    #[error("malformed history descriptor: {0}")]
    Descriptor(BlobError),
    /// No verified list is held for the sender's account: fetch it, then retry.
    #[error("no device list held for account {0:?}")]
    NoList(AccountId),
    /// The newest list held for the sender's account does not name the sending address: fetch
    /// the account's list, then retry. No session was created and no prekey consumed.
    #[error("{0} is not in its account's verified device list")]
    UnlistedSender(DeviceAddress),
    /// The sender is a companion and the list held for its account is too old to trust for
    /// companions (more than 14 days), or one of its devices announced a newer version: fetch
    /// the list, then retry.
    #[error("the device list of account {account:?} must be refreshed")]
    StaleList {
        /// The sender's account.
        account: AccountId,
        /// The newest version announced in traffic, when that is what made the list stale.
        announced: Option<u64>,
    },
    /// The sender announced a digest for a list version that differs from the list held (or
    /// announced before) at that version: the server shows different views of the account.
    #[error("account {account:?} equivocates at version {version}")]
    Equivocation {
        /// The account.
        account: AccountId,
        /// The version in conflict.
        version: u64,
    },
    /// The message is of a kind this entry point never accepts (a raw [`crate::hazmat`]
    /// message), or of a kind its sender may not send (a direct message from an own device).
    #[error("a {0:?} message is not accepted here")]
    WrongKind(MessageKind),
    /// A device of another account sent a copy of this account's own message.
    #[error("{0} sent an own-device copy but is not in this account")]
    ForeignOwnCopy(DeviceAddress),
    /// History came from a device other than this account's primary.
    #[error("history from {0}, which is not this account's primary")]
    HistoryNotFromPrimary(DeviceAddress),
    /// History is accepted only by a linked companion.
    #[error("this device does not take history")]
    NotLinkedCompanion,
    /// The history window after this companion's link has closed.
    #[error("the history window has closed")]
    HistoryWindowClosed,
    /// The message refers to a shared body that was not supplied: fetch it and retry.
    #[error("the message body is missing")]
    BodyMissing,
    /// The supplied body does not match the digest in the message.
    #[error("the message body does not match its digest")]
    BodyDigestMismatch,
    /// The body does not commit to the message's content key: it was made for another key.
    #[error("the message body does not commit to the message's key")]
    BodyKeyCommitment,
    /// The body failed authentication.
    #[error("the message body failed authentication")]
    BodyAuthentication,
    /// The same envelope was received before and its message acknowledged: the server
    /// delivered it again. Drop it.
    #[error("this envelope was already received")]
    AlreadyReceived,
    /// No sender key of the sending device for this group (and key id) is held: its
    /// distribution has not arrived yet. Keep the message and retry once it has.
    #[error("no sender key from {sender} for group {group:?}")]
    NoSenderKey {
        /// The group.
        group: crate::group::GroupId,
        /// The sending device.
        sender: DeviceAddress,
    },
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReceiveError {
    /// What to do with the message: drop it, keep it and retry later, fetch a list and retry,
    /// or ask the user.
    pub fn action(&self) -> Action {
        match self {
            Self::Store(error) => error.action(),
            Self::Session(error) => error.action(),
            Self::NoList(account)
            | Self::StaleList { account, .. }
            | Self::UnlistedSender(DeviceAddress { account, .. }) => Action::FetchList(*account),
            Self::Equivocation { .. } => Action::AskUser,
            Self::BodyMissing => Action::RetryLater,
            Self::Content(_)
            | Self::Descriptor(_)
            | Self::WrongKind(_)
            | Self::ForeignOwnCopy(_)
            | Self::HistoryNotFromPrimary(_)
            | Self::NotLinkedCompanion
            | Self::HistoryWindowClosed
            | Self::BodyDigestMismatch
            | Self::BodyKeyCommitment
            | Self::BodyAuthentication
            | Self::AlreadyReceived => Action::Drop,
            Self::NoSenderKey { .. } => Action::RetryLater,
        }
    }
}

impl From<DecodeError> for ReceiveError {
    fn from(error: DecodeError) -> Self {
        ReceiveError::Session(SessionError::Decode(error))
    }
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
    /// The offer, code or approval has expired, or claims an expiry further out than its
    /// lifetime.
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
    /// A QR image at the requested scale would exceed `MAX_QR_PIXELS` pixels.
    #[error("the QR image would be too large")]
    ImageTooLarge,
    /// This pairing code already answered a hello: a code answers one only, so a relay that
    /// injects hellos gets no second guess at it. Ask the user for a new code.
    #[error("this pairing code already answered a hello")]
    CodeAlreadyUsed,
    /// More pairing codes answered hellos within one code lifetime than a primary remembers:
    /// wait for the oldest to expire.
    #[error("too many pairing attempts at once")]
    TooManyPairingAttempts,
    /// Only a primary answers pairing hellos.
    #[error("only a primary answers pairing hellos")]
    NotPrimary,
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LinkError {
    /// What to do: [`Action::AskUser`] when a pairing code failed its confirmation (the user
    /// must start again with a new code, and may be under attack), the device-list error's
    /// action, or [`Action::Drop`] (start a new attempt).
    pub fn action(&self) -> Action {
        match self {
            Self::Store(error) => error.action(),
            Self::ConfirmationFailed | Self::CodeAlreadyUsed => Action::AskUser,
            Self::TooManyPairingAttempts => Action::RetryLater,
            Self::DeviceList(error) => error.action(),
            _ => Action::Drop,
        }
    }
}

/// Everything that can go wrong while encrypting, decrypting or parsing a blob
/// ([`crate::blob`]).
///
/// On any error from a decrypting function, plaintext already written to the caller's writer is
/// unauthenticated as a whole and must be discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The ciphertext ends before its final chunk: cut at a chunk boundary, mid-chunk, inside
    /// the header, or its final chunk was lost.
    #[error("blob is truncated: its final chunk is missing or incomplete")]
    Truncated,
    /// Bytes follow the authentic final chunk.
    #[error("blob has data after its final chunk")]
    TrailingData,
    /// The chunk at this position does not authenticate there: it was modified, reordered,
    /// duplicated, taken from another blob, or the header's nonce prefix was changed.
    #[error("chunk {index} failed authentication")]
    ChunkAuthentication {
        /// Zero-based position of the offending chunk.
        index: u32,
    },
    /// The key commitment in the blob header is not the one the descriptor's key derives: the
    /// blob was made under another key (or its commitment was altered). Checked in constant
    /// time before any chunk is decrypted.
    #[error("blob header does not commit to the descriptor's key")]
    KeyCommitment,
    /// The blob would need more than [`MAX_CHUNKS`](crate::blob::MAX_CHUNKS) chunks (the chunk
    /// index would overflow), or a length exceeds
    /// [`MAX_PLAINTEXT_LEN`](crate::blob::MAX_PLAINTEXT_LEN).
    #[error("blob needs more than 2^32 chunks")]
    TooManyChunks,
    /// An authentic but non-canonical empty final chunk follows other chunks.
    #[error("final chunk {index} is empty but is not the only chunk")]
    EmptyFinalChunk {
        /// Zero-based position of the empty final chunk.
        index: u32,
    },
    /// The blob header names a format version this library does not know.
    #[error("unsupported blob format version {0}")]
    UnsupportedVersion(u8),
    /// The blob header names a chunk size other than [`CHUNK_SIZE`](crate::blob::CHUNK_SIZE).
    #[error("unsupported chunk size {0}")]
    UnsupportedChunkSize(u32),
    /// The SHA-256 of the ciphertext differs from the descriptor's.
    #[error("ciphertext SHA-256 does not match the descriptor")]
    DigestMismatch,
    /// The authenticated plaintext length differs from the descriptor's.
    #[error("plaintext is {got} bytes but the descriptor says {expected}")]
    LengthMismatch {
        /// Length stated by the descriptor.
        expected: u64,
        /// Length actually decrypted.
        got: u64,
    },
    /// A descriptor encoding is shorter than its fields require.
    #[error("descriptor encoding is truncated")]
    DescriptorTruncated,
    /// A descriptor encoding has bytes after its last field.
    #[error("descriptor encoding has trailing bytes")]
    DescriptorTrailingBytes,
    /// A descriptor encoding names an unknown version.
    #[error("unsupported descriptor version {0}")]
    UnsupportedDescriptorVersion(u8),
    /// A media type is malformed.
    #[error("invalid media type: {0}")]
    InvalidMediaType(#[from] MediaTypeError),
    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(std::io::ErrorKind),
    /// The AEAD primitive refused an operation (cannot happen for chunks of at most
    /// [`CHUNK_SIZE`](crate::blob::CHUNK_SIZE) bytes).
    #[error("AES-GCM refused the operation")]
    CipherFailure,
    /// The hashing thread the caller opted into stopped abnormally.
    #[error("background hashing thread failed")]
    HashWorker,
}

impl From<std::io::Error> for BlobError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err.kind())
    }
}

/// Why a string is not a valid [`MediaType`](crate::blob::MediaType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaTypeError {
    /// Shorter than [`MEDIA_TYPE_MIN_LEN`](crate::blob::MEDIA_TYPE_MIN_LEN) bytes.
    #[error("media type is shorter than 3 bytes")]
    TooShort,
    /// Longer than [`MEDIA_TYPE_MAX_LEN`](crate::blob::MEDIA_TYPE_MAX_LEN) bytes.
    #[error("media type is {len} bytes, more than 64")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
    },
    /// No `/` separates type and subtype.
    #[error("media type has no '/'")]
    MissingSlash,
    /// The type or the subtype is empty.
    #[error("media type has an empty type or subtype")]
    EmptyPart,
    /// A byte outside the allowed set (lowercase RFC 6838 restricted names), including a second
    /// `/` or a non-alphanumeric first character.
    #[error("media type has an invalid byte at position {position}")]
    InvalidByte {
        /// Zero-based position of the offending byte.
        position: usize,
    },
}

impl BlobError {
    /// What to do: [`Action::RetryLater`] for an I/O failure, [`Action::Drop`] for every
    /// malformed or forged blob.
    pub fn action(&self) -> Action {
        match self {
            Self::Io(_) | Self::HashWorker => Action::RetryLater,
            _ => Action::Drop,
        }
    }
}

impl MediaTypeError {
    /// Always [`Action::Drop`].
    pub fn action(&self) -> Action {
        Action::Drop
    }
}

/// Sending or importing history failed. On every error the device is unchanged but for the
/// clock high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The session operation failed.
    #[error(transparent)]
    Session(#[from] SessionError),
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
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HistoryError {
    /// What to do: follow the session or blob error, or [`Action::Drop`].
    pub fn action(&self) -> Action {
        match self {
            Self::Store(error) => error.action(),
            Self::Session(error) => error.action(),
            Self::Blob(error) => error.action(),
            _ => Action::Drop,
        }
    }
}

impl From<DecodeError> for HistoryError {
    fn from(error: DecodeError) -> Self {
        HistoryError::Session(SessionError::Decode(error))
    }
}

/// A store failed. The device is unchanged: the transaction was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process held the store locked past the configured timeout: retry later.
    #[error("the store stayed locked past its timeout")]
    Busy,
    /// The store key does not open this store.
    #[error("wrong store key")]
    WrongKey,
    /// A row failed authentication: it was edited, truncated, moved to another key or table,
    /// or comes from another store.
    #[error("a row of table {0:?} is corrupt or was moved")]
    Corrupt(Table),
    /// A record this operation needs is missing: the store was not created, or rows were
    /// deleted behind the crate's back.
    #[error("a record of table {0:?} is missing")]
    Missing(Table),
    /// The store holds a device already.
    #[error("the store already holds a device")]
    AlreadyExists,
    /// The store was written by a newer version of this crate.
    #[error("the store's schema version {found} is newer than this crate's")]
    SchemaTooNew {
        /// The schema version found.
        found: u32,
    },
    /// A write in a read-only transaction.
    #[error("a write in a read-only transaction")]
    ReadOnly,
    /// The database engine failed (I/O, disk full, ...), with its (extended) error code: retry
    /// later.
    #[error("the database failed with code {code}")]
    Backend {
        /// The engine's (extended) error code.
        code: i32,
    },
    /// A fault the store was told to inject (tests of crash safety).
    #[error("injected fault")]
    Injected,
    /// An operation would have replaced a record of `table` it had not read: a bug in the
    /// crate, refused rather than risk losing state.
    #[error("a record of table {0:?} would have been overwritten unread")]
    Conflict(Table),
    /// The state given to import is not a valid persisted device.
    #[error("the state to import is invalid: {0}")]
    InvalidImport(DecodeError),
}

impl StoreError {
    /// What to do: retry later while the store is busy or failed transiently; ask the user for
    /// a wrong key or passphrase, a damaged store (restore a backup) or one written by a newer
    /// version (update the app); drop a misuse.
    pub fn action(&self) -> Action {
        match self {
            StoreError::Busy | StoreError::Backend { .. } | StoreError::Injected => {
                Action::RetryLater
            }
            StoreError::WrongKey
            | StoreError::Corrupt(_)
            | StoreError::Missing(_)
            | StoreError::SchemaTooNew { .. } => Action::AskUser,
            StoreError::AlreadyExists
            | StoreError::ReadOnly
            | StoreError::Conflict(_)
            | StoreError::InvalidImport(_) => Action::Drop,
        }
    }
}

/// A group message could not be sent. The device is unchanged but for the clock mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The session layer refused (for example this companion is signed out).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// This device holds no group with this id: create it or set its members first.
    #[error("unknown group {0:?}")]
    UnknownGroup(crate::group::GroupId),
    /// More member accounts than [`crate::consts::MAX_GROUP_MEMBERS`].
    #[error("{got} member accounts exceed the limit of {limit}")]
    TooManyMembers {
        /// The limit.
        limit: usize,
        /// The number given.
        got: usize,
    },
    /// The payload exceeds [`crate::consts::MAX_MESSAGE_PLAINTEXT`]; send large payloads as a
    /// blob and the descriptor in the group.
    #[error("payload of {0} bytes is too large")]
    PayloadTooLarge(usize),
    /// The sender key has sent 2^32 messages; it is replaced at the next change of devices.
    #[error("the sender key is exhausted")]
    KeyExhausted,
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GroupError {
    /// What to do: the session or store error's action, [`Action::Drop`] otherwise.
    pub fn action(&self) -> Action {
        match self {
            Self::Session(error) => error.action(),
            Self::Store(error) => error.action(),
            _ => Action::Drop,
        }
    }
}

/// A retry request could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError {
    /// The newest verified list does not authorize the requester (any more), or no longer
    /// under the identity that signed the request, or its account has an identity change
    /// pending (nothing is sent to it until the user decides): fetch its account's list.
    #[error("{0} is not authorized by its account's list")]
    NotAuthorized(DeviceAddress),
    /// The message is no longer in the sent-message cache (older than its limits, or followed
    /// by `MESSAGE_ID_WINDOW` messages or more, past what a receiver remembers), or was never
    /// sent to the requester (under the identity it has now): it cannot be recovered.
    #[error("the message is not in the sent-message cache")]
    NotCached,
    /// The request was answered already: it names a copy of the message older than the last
    /// answer, or the copy the last request named with no higher count. A retry answer that
    /// fails in turn is asked for by its own reference, and answered.
    #[error("a retry request already answered")]
    Replayed,
    /// Every retry for this message and device was already answered: show the user that the
    /// message could not be delivered to that device.
    #[error("gave up on the message after the last retry")]
    GaveUp {
        /// The message.
        message_id: [u8; 16],
    },
    /// The session layer refused (this companion is signed out, or the request's prekey does
    /// not verify).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store failed; nothing was committed, so the call can be retried as
    /// [`StoreError::action`] says.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RetryError {
    /// What to do: fetch the requester's list, show the user a message given up on, the session
    /// or store error's action, or drop the request.
    pub fn action(&self) -> Action {
        match self {
            Self::NotAuthorized(address) => Action::FetchList(address.account),
            Self::GaveUp { .. } => Action::AskUser,
            Self::Session(error) => error.action(),
            Self::Store(error) => error.action(),
            Self::NotCached | Self::Replayed => Action::Drop,
        }
    }
}
