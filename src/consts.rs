//! Every limit the crate enforces, in one place.
//!
//! Each constant says why it has its value. Tests exercise every limit at N and N + 1.

/// Seconds in one day; the unit every time limit below is written in.
pub const DAY_SECS: u64 = 24 * 60 * 60;

/// Companion devices an account may have besides its primary.
///
/// WhatsApp's promise to users (brief row 1). Bounding it also bounds fan-out cost and the size of a
/// signed device list.
pub const MAX_COMPANIONS: usize = 4;

/// A companion whose newest verified device list is older than this considers itself signed out,
/// and peers whose newest list of an account is older than this neither send to nor accept from
/// its companions.
///
/// The primary refreshes the list whenever it is used, so an old list means the primary has been
/// unused for this long (brief row 6), or that the server withholds its lists. Honest companions
/// sign themselves out at this age, so a peer that trusted them longer would only extend what a
/// server withholding a removal can do.
pub const PRIMARY_INACTIVITY_SECS: u64 = 14 * DAY_SECS;

/// How far past this device's clock high-water mark a device list's `issued_at` may lie.
///
/// A list issued in the future would stay fresh past the 14-day rule by as much; one day covers
/// the clock differences honest devices have, and a later list is refused until the clock
/// catches up (the action says retry later).
pub const MAX_LIST_ISSUED_AHEAD_SECS: u64 = DAY_SECS;

/// The lifetime of a device list as a whole: past it, a list is expired, and only the account's
/// primary, whose identity is the account identity, is still sent to.
///
/// Companions are already excluded after [`PRIMARY_INACTIVITY_SECS`]; the primary stays
/// reachable at least this long, and after it too, because only an identity change (a list under
/// a new account identity) can revoke the account identity.
pub const DEVICE_LIST_TTL_SECS: u64 = 35 * DAY_SECS;

/// Default bound on how far ahead of the receiving chain a message counter may be.
///
/// Every skipped message key costs one HMAC and 68 bytes; this bounds both the work and memory a
/// single hostile header can cause. Configurable up to [`MAX_FORWARD_JUMP_CEILING`].
pub const DEFAULT_MAX_FORWARD_JUMP: u32 = 2_000;

/// The largest forward jump a configuration may allow.
///
/// Keeps the worst-case work of one decryption bounded (about 5 ms of HMACs) whatever the app sets.
pub const MAX_FORWARD_JUMP_CEILING: u32 = 25_000;

/// Skipped message keys kept per session; the oldest is discarded first.
///
/// Bounds the memory of a session while tolerating heavy reordering and loss.
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// Receiving chains kept per session; the oldest is discarded first.
///
/// A chain older than the last few ratchet turns only matters for very late messages, whose keys
/// are then found among the skipped keys if they were stored.
pub const MAX_RECEIVER_CHAINS: usize = 5;

/// Archived sessions kept per remote device besides the active one (Sesame).
///
/// Lets late messages on superseded sessions still decrypt, without unbounded growth.
pub const MAX_ARCHIVED_SESSIONS: usize = 40;

/// One-time prekeys a device holds at most.
///
/// The server hands out one per initiator; the app replenishes when
/// [`crate::Device::one_time_prekeys_remaining`] runs low.
pub const MAX_ONE_TIME_PREKEYS: usize = 200;

/// How long an unused one-time prekey lives after it was generated for upload.
///
/// The server may hand a one-time prekey to an initiator that never sends, and the device cannot
/// tell which ones were handed out; expiring them frees room under [`MAX_ONE_TIME_PREKEYS`], so
/// the cap can never lock a device up. An initial message naming an expired one fails with
/// `UnknownOneTimePrekey`. Long enough for an initiator that fetched a bundle offline to send.
pub const ONE_TIME_PREKEY_LIFETIME_SECS: u64 = 30 * DAY_SECS;

/// One-time prekeys a device keeps uploaded: [`crate::Device::one_time_prekeys_needed`] says how
/// many to generate to get back to it.
///
/// Half the cap, so a burst of new contacts between two uploads still finds prekeys while the
/// other half leaves room for ones the server holds but has not handed out.
pub const ONE_TIME_PREKEY_TARGET: usize = 100;

/// How long a superseded signed prekey still accepts initial messages after rotation.
///
/// Initial messages can sit on the server for a while; the grace period lets them decrypt while
/// still bounding how long a stolen old prekey is useful.
pub const SIGNED_PREKEY_GRACE_SECS: u64 = 30 * DAY_SECS;

/// Lifetime of a QR link offer shown by a companion.
pub const QR_OFFER_LIFETIME_SECS: u64 = 60;

/// Lifetime of a one-time pairing code.
pub const PAIRING_CODE_LIFETIME_SECS: u64 = 180;

/// How long a primary holds a device id for an approval that waits for its companion's
/// countersignature.
///
/// As long as the longer of the two link flows lets a companion take to answer (a pairing
/// code's lifetime), so an honest link always completes; an approval left unanswered past it
/// expires, and its device id goes to the next approval.
pub const APPROVAL_LIFETIME_SECS: u64 = PAIRING_CODE_LIFETIME_SECS;

/// Largest plaintext one session message may carry.
///
/// Large payloads travel as an encrypted body referenced from the message, so the per-device
/// messages stay small; the bound stops a peer from making us allocate without limit.
pub const MAX_MESSAGE_PLAINTEXT: usize = 256 * 1024;

/// Payloads up to this size travel inside each envelope; larger ones in one shared body.
///
/// Below it, encrypting the payload per device costs less than the extra body digest and
/// decryption on every receiver.
pub const INLINE_THRESHOLD: usize = 512;

/// Most recipient accounts one fan-out may address (a group conversation).
pub const MAX_FANOUT_ACCOUNTS: usize = 64;

/// Largest payload a fan-out accepts (bodies are held in memory; use blobs for more).
pub const MAX_FANOUT_PAYLOAD: usize = 64 * 1024 * 1024;

/// How long after its link finished (a verified own list first named it) a companion accepts
/// history: long enough for a large history to upload over a slow network, short enough that a
/// later compromise of the primary's session cannot push fabricated history into an established
/// companion.
pub const HISTORY_WINDOW_SECS: u64 = 24 * 60 * 60;

/// Largest single history record.
pub const MAX_HISTORY_RECORD: usize = 16 * 1024 * 1024;

/// Tolerated clock difference when the primary checks a QR offer's expiry: an offer may claim
/// to expire at most this much later than an offer made now would.
pub const QR_CLOCK_SKEW_SECS: u64 = 30;

/// List versions remembered per account as announced above the held list; the lowest is
/// forgotten first.
///
/// Enough for every version an honest account can move ahead while a peer is behind on it,
/// while a hostile companion cannot grow the record.
pub const MAX_ANNOUNCEMENTS: usize = 8;

/// Account identities remembered per account as refused (former ones after an accepted change,
/// and ones the user rejected); the oldest is forgotten first.
pub const MAX_REFUSED_IDENTITIES: usize = 8;

/// Approved QR offer references a primary remembers, so an offer is used once; the oldest is
/// forgotten first. An offer older than this many approvals has long expired (offers live
/// [`QR_OFFER_LIFETIME_SECS`]).
pub const USED_LINK_REFERENCES: usize = 64;

/// Pairing codes a primary remembers as having answered a hello, each until it expires
/// ([`PAIRING_CODE_LIFETIME_SECS`]), so a code answers one hello only. More codes than this
/// in one lifetime are refused until the oldest expires.
pub const MAX_ANSWERED_PAIRING_CODES: usize = 16;

/// Member accounts of one group, besides the sender's own.
///
/// WhatsApp's group size; with five devices each, about 5,000 devices hold a sender key.
pub const MAX_GROUP_MEMBERS: usize = 1024;

/// Message ids remembered per sending device, so a message delivered again (re-encrypted for a
/// retry, or replayed on a fresh session) is recognized: the last this many. A sender answers a
/// retry only for a message followed by fewer than this many of its messages, so the receiver
/// always recognizes a message it already delivered, whatever the sent cache's limits.
pub const MESSAGE_ID_WINDOW: usize = 256;

/// Retries a sender answers per message and device, and a receiver asks for; past them the
/// message is given up (`RetryError::GaveUp`), for the app to show.
pub const MAX_RETRIES: usize = 5;

/// Messages a sender keeps for retries by default (`Device::set_sent_cache_limits`); the oldest
/// is wiped first.
///
/// Enough for the messages a device sends while a peer restores from a backup or catches up.
pub const DEFAULT_SENT_CACHE_ENTRIES: u32 = 256;

/// How long a sender keeps a message for retries by default: a week. A message older than the
/// cache cannot be recovered.
pub const DEFAULT_SENT_CACHE_AGE_SECS: u64 = 7 * DAY_SECS;
