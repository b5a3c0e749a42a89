//! The receiving side of sender keys: per sending device and group, the keys it distributed,
//! each a chain stepped with bounded skips. Decryption computes on an unchanged state and
//! commits only after the signature and the AEAD tag verified.

use std::collections::VecDeque;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::wire::{Distribution, GroupMessage, MESSAGE_ID_LEN, PLAINTEXT_PREFIX_LEN};
use crate::consts::MAX_SKIPPED_KEYS;
use crate::crypto::{self, Secret32, label};
use crate::error::{KeyError, ReceiveError, SessionError, SignatureKind};
use crate::keys::Fingerprint;

/// Keys kept per sending device and group: the current one and the one before, so messages
/// sent just before a rotation still decrypt.
pub(crate) const KEYS_PER_SENDER: usize = 2;

/// Signing keys of forgotten keys remembered per sending device and group, so a late or
/// replayed distribution of one cannot bring it back and reopen the messages read under it.
pub(crate) const RETIRED_KEYS_PER_SENDER: usize = 8;

/// One distributed key as a receiver holds it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ReceiverKey {
    key_id: u32,
    /// The iteration of the next message expected on the chain.
    iteration: u32,
    chain_key: Secret32,
    /// The distributed signing key, decoded once when the key is taken (or loaded).
    #[serde(with = "verifying_key_bytes")]
    signing_public: VerifyingKey,
    /// Keys of iterations skipped over, oldest first, at most [`MAX_SKIPPED_KEYS`].
    skipped: VecDeque<(u32, Secret32)>,
}

/// Everything a device keeps about one sending device in one group.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct GroupReceiver {
    /// The identity the sending device had when it distributed its keys: keys from a device
    /// whose list now names another identity are never used.
    pub(crate) sender_identity: Fingerprint,
    /// Oldest first, at most [`KEYS_PER_SENDER`].
    keys: VecDeque<ReceiverKey>,
    /// Signing keys of keys forgotten, oldest first, at most [`RETIRED_KEYS_PER_SENDER`].
    retired: VecDeque<[u8; 32]>,
}

/// A group message decrypted on an unchanged receiver, applied only by
/// [`GroupReceiver::commit`].
pub(crate) struct OpenedGroup {
    pub(crate) message_id: [u8; MESSAGE_ID_LEN],
    pub(crate) list_version: u64,
    pub(crate) list_digest: [u8; 32],
    pub(crate) payload: Zeroizing<Vec<u8>>,
    key_index: usize,
    change: Change,
}

enum Change {
    UsedSkipped(usize),
    Advance { chain_key: Secret32, iteration: u32, skipped: Vec<(u32, Secret32)> },
}

impl GroupReceiver {
    pub(crate) fn new(sender_identity: Fingerprint) -> Self {
        Self { sender_identity, keys: VecDeque::new(), retired: VecDeque::new() }
    }

    /// True if restored state respects the bounds.
    pub(crate) fn within_limits(&self) -> bool {
        !self.keys.is_empty()
            && self.keys.len() <= KEYS_PER_SENDER
            && self.retired.len() <= RETIRED_KEYS_PER_SENDER
            && self.keys.iter().all(|k| k.skipped.len() <= MAX_SKIPPED_KEYS)
    }

    /// Takes a distributed key and says whether it was taken. A key already held is kept as
    /// it is (a replayed or late distribution never winds a chain back) and a retired one is
    /// not taken again; a new one becomes the current key, and the oldest beyond
    /// [`KEYS_PER_SENDER`] is forgotten and retired. A key is its signing key: every sender key
    /// has a fresh one, so a new signing key under a held key id replaces that key.
    pub(crate) fn accept(&mut self, key: ReceiverKey) -> bool {
        let signing = *key.signing_public.as_bytes();
        if self
            .keys
            .iter()
            .any(|k| k.key_id == key.key_id && k.signing_public == key.signing_public)
            || self.retired.contains(&signing)
        {
            return false;
        }
        let (replaced, kept): (VecDeque<_>, VecDeque<_>) = core::mem::take(&mut self.keys)
            .into_iter()
            .partition(|k| k.key_id == key.key_id || k.signing_public == key.signing_public);
        self.keys = kept;
        self.keys.push_back(key);
        let forgotten = self.keys.len().saturating_sub(KEYS_PER_SENDER);
        let retiring: Vec<_> = replaced.into_iter().chain(self.keys.drain(..forgotten)).collect();
        for old in retiring {
            self.retired.push_back(*old.signing_public.as_bytes());
        }
        while self.retired.len() > RETIRED_KEYS_PER_SENDER {
            self.retired.pop_front();
        }
        true
    }

    /// Verifies and decrypts `message` without changing anything.
    pub(crate) fn open(
        &self,
        message: &GroupMessage<'_>,
        max_jump: u32,
    ) -> Result<OpenedGroup, ReceiveError> {
        let (key_index, key) =
            self.keys.iter().enumerate().find(|(_, k)| k.key_id == message.key_id).ok_or(
                ReceiveError::NoSenderKey { group: message.group, sender: message.sender },
            )?;
        let digest: [u8; 32] = Sha256::digest(message.signed).into();
        crypto::verify(
            &key.signing_public,
            label::SIG_GROUP_MESSAGE,
            &[&digest],
            &message.signature,
            SignatureKind::GroupMessage,
        )
        .map_err(|error: KeyError| ReceiveError::Session(SessionError::Key(error)))?;
        let (message_key, change) = key.plan(message.iteration, max_jump)?;
        let plaintext = crypto::open(
            message_key.as_bytes(),
            &message.nonce,
            message.header,
            message.ciphertext,
        )
        .map_err(|_| ReceiveError::Session(SessionError::AuthenticationFailed))?;
        let malformed = ReceiveError::Content(crate::error::DecodeError::Truncated {
            needed: PLAINTEXT_PREFIX_LEN,
        });
        let (id, rest) = plaintext.split_first_chunk::<MESSAGE_ID_LEN>().ok_or(malformed)?;
        let (version, rest) = rest.split_first_chunk::<8>().ok_or(malformed)?;
        let (digest, payload) = rest.split_first_chunk::<32>().ok_or(malformed)?;
        Ok(OpenedGroup {
            message_id: *id,
            list_version: u64::from_be_bytes(*version),
            list_digest: *digest,
            payload: Zeroizing::new(payload.to_vec()),
            key_index,
            change,
        })
    }

    /// Applies a decryption [`GroupReceiver::open`] computed on this unchanged receiver.
    pub(crate) fn commit(&mut self, opened: &mut OpenedGroup) {
        let Some(key) = self.keys.get_mut(opened.key_index) else { return };
        match core::mem::replace(&mut opened.change, Change::UsedSkipped(usize::MAX)) {
            Change::UsedSkipped(position) => {
                key.skipped.remove(position);
            }
            Change::Advance { chain_key, iteration, skipped } => {
                key.chain_key = chain_key;
                key.iteration = iteration;
                key.skipped.extend(skipped);
                while key.skipped.len() > MAX_SKIPPED_KEYS {
                    key.skipped.pop_front();
                }
            }
        }
    }
}

impl ReceiverKey {
    /// The key a distribution carries; refused if its signing key is not one a signature could
    /// verify under (not canonical, not a point, or of small order).
    pub(crate) fn new(distribution: &Distribution<'_>) -> Result<Self, ReceiveError> {
        let signing_public = crypto::ed25519_public_key(&distribution.signing_public)
            .ok()
            .filter(|key| !key.is_weak())
            .ok_or(ReceiveError::Content(crate::error::DecodeError::InvalidSigningKey))?;
        Ok(Self {
            key_id: distribution.key_id,
            iteration: distribution.iteration,
            chain_key: Secret32::new(*distribution.chain_key),
            signing_public,
            skipped: VecDeque::new(),
        })
    }

    /// The message key for `iteration` and the change taking it makes: a skipped key, or the
    /// chain stepped forward (at most `max_jump` steps), keeping the keys it passes.
    fn plan(&self, iteration: u32, max_jump: u32) -> Result<(Secret32, Change), ReceiveError> {
        if iteration < self.iteration {
            return self
                .skipped
                .iter()
                .position(|(i, _)| *i == iteration)
                .and_then(|p| self.skipped.get(p).map(|(_, k)| (k.clone(), Change::UsedSkipped(p))))
                .ok_or(ReceiveError::Session(SessionError::Duplicate));
        }
        let jump = u64::from(iteration) - u64::from(self.iteration);
        if jump > u64::from(max_jump) {
            return Err(ReceiveError::Session(SessionError::TooFarAhead { jump, limit: max_jump }));
        }
        let next_iteration = iteration
            .checked_add(1)
            .ok_or(ReceiveError::Session(SessionError::CounterExhausted))?;
        let (mut message_key, mut chain_key) = crypto::chain_step(self.chain_key.as_bytes());
        let mut skipped = Vec::new();
        let mut at = self.iteration;
        while at < iteration {
            let (following, after) = crypto::chain_step(chain_key.as_bytes());
            // Only the newest MAX_SKIPPED_KEYS can ever be kept: do not collect older ones.
            if u64::from(iteration - at) <= MAX_SKIPPED_KEYS as u64 {
                skipped.push((at, message_key));
            }
            (message_key, chain_key) = (following, after);
            at += 1;
        }
        Ok((message_key, Change::Advance { chain_key, iteration: next_iteration, skipped }))
    }
}

/// A verifying key as its 32-byte encoding, decoded (and checked to be a point) on load.
mod verifying_key_bytes {
    use ed25519_dalek::VerifyingKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        key: &VerifyingKey,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(key.as_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<VerifyingKey, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))?;
        VerifyingKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}
