//! A device: its identity, its prekeys and its sessions with every remote device.
//!
//! [`Device`] is the one stateful object an app holds per local device. Every method that changes
//! it takes `&mut self` and either succeeds completely or leaves it exactly as it was, so an app
//! persists it ([`Device::to_bytes`]) after each successful call and before sending what the call
//! produced. It never performs I/O and never reads a clock.

use std::collections::BTreeMap;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::account::{KnownAccounts, Role};
use crate::consts::{DEFAULT_MAX_FORWARD_JUMP, MAX_FORWARD_JUMP_CEILING, MAX_MESSAGE_PLAINTEXT};
use crate::crypto;
use crate::error::{DecodeError, SessionError};
use crate::keys::{DeviceAddress, Fingerprint, IdentityKeyPair, PublicIdentity, Timestamp};
use crate::prekeys::{
    OneTimePrekeyPublic, PrekeyStore, PrekeyUpload, SignedPrekeyPublic, VerifiedPrekeyBundle,
};
use crate::session::handshake;
use crate::session::message::{SessionMessage, write_prefix};
use crate::session::ratchet::Session;
use crate::session::record::SessionRecord;

/// Version of the persisted [`Device`] format.
const STATE_FORMAT: u16 = 1;

/// Longest prefix a session message can have before its ciphertext, plus the session's
/// associated data: the size of the stack buffer the AEAD's associated data is built in.
const MAX_AAD_LEN: usize = 32 + 2 + 24 + PublicIdentity::LEN + 32 + 4 + 5 + 68;

/// A decrypted message and who sent it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Decrypted {
    /// The sending device, authenticated by the session.
    pub sender: DeviceAddress,
    /// The fingerprint of the sending device's identity.
    pub sender_fingerprint: Fingerprint,
    /// True when this message created a new session.
    pub new_session: bool,
    /// The plaintext, wiped on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// A public summary of the sessions held with one remote device, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// Identifier of the active session.
    pub active_session: [u8; 16],
    /// Whether the remote device has answered on the active session.
    pub confirmed: bool,
    /// Number of archived sessions.
    pub archived: usize,
    /// Skipped message keys held by the active session.
    pub skipped_keys: usize,
    /// Receiving chains held by the active session.
    pub receiver_chains: usize,
}

/// One local device with all of its long-term and session state.
///
/// ```
/// use multidevice::{AccountId, Device, DeviceAddress, DeviceId, PrekeyBundle, Timestamp};
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
/// let now = Timestamp(1_700_000_000);
/// let mut alice = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId(0)), now);
/// let mut bob = Device::new(&mut rng, DeviceAddress::new(AccountId(2), DeviceId(0)), now);
/// bob.generate_one_time_prekeys(&mut rng, 10)?;
///
/// // Bob uploads prekeys; the server hands Alice a bundle with one one-time prekey.
/// let bundle = bob.prekey_upload().bundle(Some(0));
/// alice.start_session(&mut rng, &bundle.verify()?)?;
/// let wire = alice.encrypt(&mut rng, bob.address(), b"hello Bob")?;
///
/// let received = bob.decrypt(&wire, now)?;
/// assert_eq!(received.plaintext.as_slice(), b"hello Bob");
/// assert_eq!(received.sender, alice.address());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize, Deserialize)]
pub struct Device {
    #[serde(deserialize_with = "check_format")]
    format: u16,
    pub(crate) address: DeviceAddress,
    pub(crate) identity: IdentityKeyPair,
    prekeys: PrekeyStore,
    pub(crate) sessions: BTreeMap<DeviceAddress, SessionRecord>,
    max_forward_jump: u32,
    pub(crate) role: Role,
    pub(crate) accounts: KnownAccounts,
    /// The highest time the app has passed in: winding the clock back cannot undo a sign-out.
    pub(crate) clock: Timestamp,
}

fn check_format<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let format = u16::deserialize(deserializer)?;
    if format == STATE_FORMAT {
        Ok(format)
    } else {
        Err(serde::de::Error::custom("unsupported persisted state format"))
    }
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("address", &self.address)
            .field("identity", &self.identity.public().fingerprint())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Creates a device with fresh identity keys and a first signed prekey.
    ///
    /// Device id 0 makes the account's primary, whose identity is the account identity. Any
    /// other id makes a companion waiting to be linked; linking assigns its final address.
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        address: DeviceAddress,
        now: Timestamp,
    ) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let prekeys = PrekeyStore::new(rng, &identity);
        Self {
            format: STATE_FORMAT,
            address,
            identity,
            prekeys,
            sessions: BTreeMap::new(),
            max_forward_jump: DEFAULT_MAX_FORWARD_JUMP,
            role: Role::for_address(address),
            accounts: KnownAccounts::new(),
            clock: now,
        }
    }

    /// This device's address.
    pub fn address(&self) -> DeviceAddress {
        self.address
    }

    /// This device's public identity.
    pub fn public_identity(&self) -> &PublicIdentity {
        self.identity.public()
    }

    /// Everything the server needs to hand out prekey bundles for this device.
    pub fn prekey_upload(&self) -> PrekeyUpload {
        PrekeyUpload {
            address: self.address,
            identity: self.identity.public().clone(),
            signed_prekey: self.prekeys.signed_public(),
            one_time_prekeys: self.prekeys.one_time_publics(),
        }
    }

    /// Creates `count` one-time prekeys to upload.
    ///
    /// Fails with [`SessionError::TooManyOneTimePrekeys`] if the device would then hold more than
    /// [`crate::consts::MAX_ONE_TIME_PREKEYS`].
    pub fn generate_one_time_prekeys(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        count: usize,
    ) -> Result<Vec<OneTimePrekeyPublic>, SessionError> {
        self.prekeys.generate_one_time(rng, count).ok_or(SessionError::TooManyOneTimePrekeys {
            limit: crate::consts::MAX_ONE_TIME_PREKEYS,
        })
    }

    /// How many one-time prekeys are left; replenish when this runs low.
    pub fn one_time_prekeys_remaining(&self) -> usize {
        self.prekeys.one_time_remaining()
    }

    /// Replaces the signed prekey. The previous one keeps working for
    /// [`crate::consts::SIGNED_PREKEY_GRACE_SECS`] after `now`.
    pub fn rotate_signed_prekey(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
    ) -> SignedPrekeyPublic {
        self.prekeys.rotate_signed(rng, &self.identity, now)
    }

    /// Sets how far ahead of a receiving chain a message may be (default
    /// [`DEFAULT_MAX_FORWARD_JUMP`], at most [`MAX_FORWARD_JUMP_CEILING`]).
    pub fn set_max_forward_jump(&mut self, limit: u32) -> Result<(), SessionError> {
        if limit == 0 || limit > MAX_FORWARD_JUMP_CEILING {
            return Err(SessionError::InvalidConfig);
        }
        self.max_forward_jump = limit;
        Ok(())
    }

    /// Starts a session with the device a verified bundle belongs to. The new session becomes
    /// active; earlier ones with that device are archived.
    pub fn start_session(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        bundle: &VerifiedPrekeyBundle,
    ) -> Result<(), SessionError> {
        let remote = bundle.bundle().address;
        if remote == self.address {
            return Err(SessionError::SelfSession);
        }
        let session = handshake::initiate(rng, &self.identity, self.address, bundle)?;
        let identity = bundle.bundle().identity.clone();
        match self.sessions.get_mut(&remote) {
            Some(record) => record.insert_initiated(identity, session),
            None => {
                self.sessions.insert(remote, SessionRecord::new(identity, session));
            }
        }
        Ok(())
    }

    /// True if an active session with `remote` exists.
    pub fn has_session(&self, remote: DeviceAddress) -> bool {
        self.sessions.get(&remote).is_some_and(|r| r.active().is_some())
    }

    /// A summary of the sessions with `remote`.
    pub fn session_info(&self, remote: DeviceAddress) -> Option<SessionInfo> {
        let record = self.sessions.get(&remote)?;
        let active = record.active()?;
        Some(SessionInfo {
            active_session: active.id,
            confirmed: active.is_confirmed(),
            archived: record.archived_len(),
            skipped_keys: active.skipped_len(),
            receiver_chains: active.receiver_chains(),
        })
    }

    /// The identity held for `remote`, from its newest session.
    pub fn remote_identity(&self, remote: DeviceAddress) -> Option<&PublicIdentity> {
        self.sessions.get(&remote).map(|r| &r.remote_identity)
    }

    /// Forgets every session with `remote`, for example after it was removed from its account or
    /// after the app accepted a changed identity.
    pub fn delete_sessions(&mut self, remote: DeviceAddress) {
        self.sessions.remove(&remote);
    }

    /// Encrypts `plaintext` for `remote` on the active session.
    ///
    /// Persist the device before sending the returned bytes: the message key is spent.
    pub fn encrypt(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        remote: DeviceAddress,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        self.ensure_active(self.clock)?;
        self.encrypt_unchecked(rng, remote, plaintext)
    }

    /// Encrypts on the active session without the sign-out check (the caller made it).
    pub(crate) fn encrypt_unchecked(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        remote: DeviceAddress,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        if plaintext.len() > MAX_MESSAGE_PLAINTEXT {
            return Err(SessionError::PlaintextTooLarge(plaintext.len()));
        }
        let session = self
            .sessions
            .get_mut(&remote)
            .and_then(SessionRecord::active_mut)
            .ok_or(SessionError::NoSession(remote))?;
        seal_message(rng, session, self.address, remote, self.identity.public(), plaintext)
    }

    /// Decrypts a session message addressed to this device.
    ///
    /// On any error the device is unchanged. A message that starts a session consumes the
    /// one-time prekey it names only when it decrypts.
    pub fn decrypt(&mut self, bytes: &[u8], now: Timestamp) -> Result<Decrypted, SessionError> {
        self.decrypt_with(bytes, now, |_| Ok::<(), SessionError>(()))
            .map(|(decrypted, ())| decrypted)
    }

    /// Decrypts, then lets `accept` inspect the authenticated result before anything is
    /// committed: if `accept` fails, the device stays byte-identical. Every decryption in the
    /// crate goes through here.
    pub(crate) fn decrypt_with<T, E: From<SessionError>>(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
        accept: impl FnOnce(&Decrypted) -> Result<T, E>,
    ) -> Result<(Decrypted, T), E> {
        let message = SessionMessage::try_from(bytes).map_err(SessionError::from)?;
        self.ensure_active(now)?;
        if message.recipient != self.address {
            return Err(SessionError::WrongRecipient { addressed_to: message.recipient }.into());
        }
        if message.sender == self.address {
            return Err(SessionError::SelfSession.into());
        }
        let sender = message.sender;
        let max_jump = self.max_forward_jump;
        if let Some(record) = self.sessions.get_mut(&sender)
            && let Some(index) = record.find(&message.header.session_id)
        {
            let session = record.get(index).ok_or(SessionError::UnknownSession(sender))?;
            let (plaintext, commit) = open_message(session, &message, max_jump)?;
            let decrypted = Decrypted {
                sender,
                sender_fingerprint: session.remote_fingerprint,
                new_session: false,
                plaintext,
            };
            let accepted = accept(&decrypted)?;
            if let Some(session) = record.get_mut(index) {
                session.apply(commit);
            }
            record.promote(index);
            self.advance_clock(now);
            return Ok((decrypted, accepted));
        }
        let Some(fields) = &message.prekey else {
            return Err(match self.sessions.contains_key(&sender) {
                true => SessionError::UnknownSession(sender),
                false => SessionError::NoSession(sender),
            }
            .into());
        };
        if let Some(record) = self.sessions.get(&sender)
            && record.remote_identity != fields.sender_identity
        {
            return Err(SessionError::IdentityMismatch(sender).into());
        }
        let signed_prekey = self
            .prekeys
            .signed_secret(fields.signed_prekey_id, now)
            .ok_or(SessionError::UnknownSignedPrekey(fields.signed_prekey_id))?;
        let one_time_prekey = match fields.one_time_prekey_id {
            Some(id) => Some(
                self.prekeys.one_time_secret(id).ok_or(SessionError::UnknownOneTimePrekey(id))?,
            ),
            None => None,
        };
        let mut session = handshake::respond(
            &self.identity,
            self.address,
            sender,
            fields,
            signed_prekey,
            one_time_prekey,
        )?;
        let (plaintext, commit) = open_message(&session, &message, max_jump)?;
        let identity = fields.sender_identity.clone();
        let decrypted = Decrypted {
            sender,
            sender_fingerprint: identity.fingerprint(),
            new_session: true,
            plaintext,
        };
        let accepted = accept(&decrypted)?;
        // Authenticated and accepted: commit.
        session.apply(commit);
        if let Some(id) = fields.one_time_prekey_id {
            self.prekeys.consume_one_time(id);
        }
        match self.sessions.get_mut(&sender) {
            Some(record) => record.insert_received(identity, session),
            None => {
                self.sessions.insert(sender, SessionRecord::new(identity, session));
            }
        }
        self.advance_clock(now);
        Ok((decrypted, accepted))
    }

    /// Serializes the whole device state, secrets included, in a compact versioned binary form.
    ///
    /// Store it encrypted at rest; the buffer is wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // Serializing plain structs into a growable buffer cannot fail.
        Zeroizing::new(postcard::to_allocvec(self).unwrap_or_default())
    }

    /// Restores a device from [`Device::to_bytes`]. Rejects other format versions, trailing
    /// bytes, non-canonical encodings and any state beyond the crate's limits, so a tampered
    /// store cannot lift a bound (for example the forward-jump limit).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (device, rest) =
            postcard::take_from_bytes::<Self>(bytes).map_err(|_| DecodeError::MalformedState)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        if !device.within_limits() || device.to_bytes().as_slice() != bytes {
            return Err(DecodeError::MalformedState);
        }
        Ok(device)
    }

    /// Every bound a live device keeps also holds for restored state.
    fn within_limits(&self) -> bool {
        (1..=MAX_FORWARD_JUMP_CEILING).contains(&self.max_forward_jump)
            && self.prekeys.one_time_remaining() <= crate::consts::MAX_ONE_TIME_PREKEYS
            && self.sessions.values().all(SessionRecord::within_limits)
    }
}

fn associated(session: &Session, authenticated: &[u8], buffer: &mut [u8; MAX_AAD_LEN]) -> usize {
    let len = 32 + authenticated.len();
    if let Some((ad, rest)) = buffer.split_first_chunk_mut::<32>() {
        *ad = *session.associated_data();
        if let Some(dst) = rest.get_mut(..authenticated.len()) {
            dst.copy_from_slice(authenticated);
        }
    }
    len
}

fn seal_message(
    rng: &mut (impl CryptoRng + ?Sized),
    session: &mut Session,
    sender: DeviceAddress,
    recipient: DeviceAddress,
    own_identity: &PublicIdentity,
    plaintext: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let (header, key) = session.next_sending_key(rng)?;
    let prekey = session.prekey_fields(own_identity);
    let mut out = Vec::with_capacity(MAX_AAD_LEN + plaintext.len() + crypto::TAG_LEN);
    write_prefix(&mut out, sender, recipient, prekey.as_ref(), &header);
    let prefix_len = out.len();
    let mut aad = [0u8; MAX_AAD_LEN];
    let aad_len = associated(session, &out, &mut aad);
    out.extend_from_slice(plaintext);
    crypto::seal(
        key.as_bytes(),
        &header.nonce,
        aad.get(..aad_len).unwrap_or_default(),
        &mut out,
        prefix_len,
    );
    Ok(out)
}

fn open_message(
    session: &Session,
    message: &SessionMessage<'_>,
    max_jump: u32,
) -> Result<(Zeroizing<Vec<u8>>, crate::session::ratchet::Commit), SessionError> {
    let (key, commit) = session.plan_decrypt(&message.header, max_jump)?;
    let mut aad = [0u8; MAX_AAD_LEN];
    let aad_len = associated(session, message.authenticated, &mut aad);
    let plaintext = crypto::open(
        key.as_bytes(),
        &message.header.nonce,
        aad.get(..aad_len).unwrap_or_default(),
        message.ciphertext,
    )
    .map_err(|_| SessionError::AuthenticationFailed)?;
    Ok((plaintext, commit))
}
