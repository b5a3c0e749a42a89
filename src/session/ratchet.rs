//! The Double Ratchet for one session, with transactional decryption.
//!
//! A [`Session`] owns one root key, at most one sending chain, at most
//! [`MAX_RECEIVER_CHAINS`] receiving chains and at most [`MAX_SKIPPED_KEYS`] skipped message keys.
//! Decryption never mutates: it computes a [`Commit`] that is applied only after the AEAD tag
//! verified, so a failure of any kind leaves the session byte-identical.

use std::collections::VecDeque;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::consts::{MAX_RECEIVER_CHAINS, MAX_SKIPPED_KEYS};
use crate::crypto::{self, NONCE_LEN, Secret32, X25519KeyPair, label};
use crate::error::SessionError;
use crate::keys::Fingerprint;
use crate::session::message::{PrekeyFields, RatchetHeader, SessionId};

/// The sending side of the ratchet.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Sending {
    /// A chain under our current ratchet key.
    Active(SendingChain),
    /// We received a new ratchet key; the next send generates a fresh key pair and steps the root.
    NeedsRatchet,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SendingChain {
    ratchet: X25519KeyPair,
    chain_key: Secret32,
    counter: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiverChain {
    ratchet_key: [u8; 32],
    chain_key: Secret32,
    /// The counter of the next message expected on this chain.
    counter: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SkippedKey {
    ratchet_key: [u8; 32],
    counter: u32,
    message_key: Secret32,
}

/// What the initiator repeats in every message until the responder answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingPrekey {
    pub(crate) base_key: [u8; 32],
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
}

/// One Double Ratchet session with one remote device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    /// Hash of both identities and both addresses, authenticated with every message.
    associated_data: [u8; 32],
    pub(crate) remote_fingerprint: Fingerprint,
    root_key: Secret32,
    sending: Sending,
    previous_counter: u32,
    /// Oldest first.
    receiving: VecDeque<ReceiverChain>,
    /// Oldest first.
    skipped: VecDeque<SkippedKey>,
    /// Set while we initiated and have not yet heard back.
    pub(crate) pending_prekey: Option<PendingPrekey>,
    /// Set when this session lost a simultaneous-initiation tie-break; it then never becomes
    /// active again by receiving.
    pub(crate) superseded: bool,
}

/// The state change a successful decryption makes, computed before authentication and applied
/// only after it.
pub(crate) struct Commit {
    kind: CommitKind,
    skipped: Vec<SkippedKey>,
}

enum CommitKind {
    /// A skipped key at this position was used.
    UsedSkipped(usize),
    /// An existing receiving chain moved forward.
    Advance { chain: usize, chain_key: Secret32, counter: u32 },
    /// The peer turned the ratchet: new root and a new receiving chain.
    NewChain { root_key: Secret32, chain: ReceiverChain, previous_chain_end: Option<(usize, u32)> },
}

/// Output of the root KDF: the next root key and a chain key.
fn root_step(root_key: &Secret32, dh: &[u8; 32]) -> (Secret32, Secret32) {
    let mut okm = Zeroizing::new([0u8; 64]);
    crypto::hkdf(root_key.as_bytes(), dh, &[label::KDF_ROOT], okm.as_mut_slice());
    split_keys(&okm)
}

pub(crate) fn split_keys(okm: &[u8; 64]) -> (Secret32, Secret32) {
    let (first, second) = okm.split_at(32);
    let (mut a, mut b) = (Secret32::new([0u8; 32]), Secret32::new([0u8; 32]));
    a.as_mut_bytes().copy_from_slice(first);
    b.as_mut_bytes().copy_from_slice(second);
    (a, b)
}

impl Session {
    /// A session for the initiator, whose first sending chain runs under its base key.
    pub(crate) fn new_initiator(
        id: SessionId,
        associated_data: [u8; 32],
        remote_fingerprint: Fingerprint,
        root_key: Secret32,
        chain_key: Secret32,
        base: X25519KeyPair,
        prekey: PendingPrekey,
    ) -> Self {
        Self {
            id,
            associated_data,
            remote_fingerprint,
            root_key,
            sending: Sending::Active(SendingChain { ratchet: base, chain_key, counter: 0 }),
            previous_counter: 0,
            receiving: VecDeque::new(),
            skipped: VecDeque::new(),
            pending_prekey: Some(prekey),
            superseded: false,
        }
    }

    /// A session for the responder, receiving on the initiator's base key.
    pub(crate) fn new_responder(
        id: SessionId,
        associated_data: [u8; 32],
        remote_fingerprint: Fingerprint,
        root_key: Secret32,
        chain_key: Secret32,
        base_key: [u8; 32],
    ) -> Self {
        let mut receiving = VecDeque::with_capacity(1);
        receiving.push_back(ReceiverChain { ratchet_key: base_key, chain_key, counter: 0 });
        Self {
            id,
            associated_data,
            remote_fingerprint,
            root_key,
            sending: Sending::NeedsRatchet,
            previous_counter: 0,
            receiving,
            skipped: VecDeque::new(),
            pending_prekey: None,
            superseded: false,
        }
    }

    /// True once the remote device has answered on this session.
    pub(crate) fn is_confirmed(&self) -> bool {
        self.pending_prekey.is_none()
    }

    /// True if the skipped keys and receiving chains are within their bounds.
    pub(crate) fn within_limits(&self) -> bool {
        self.skipped.len() <= MAX_SKIPPED_KEYS && self.receiving.len() <= MAX_RECEIVER_CHAINS
    }

    /// Number of receiving chains held.
    pub(crate) fn receiver_chains(&self) -> usize {
        self.receiving.len()
    }

    /// Number of skipped message keys held.
    pub(crate) fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    /// Prepares the next outgoing header and message key, turning the ratchet first if the peer
    /// did. Mutates the session: the key is never handed out twice.
    pub(crate) fn next_sending_key(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<(RatchetHeader, Zeroizing<[u8; 32]>), SessionError> {
        if let Sending::NeedsRatchet = self.sending {
            let their_key = match self.receiving.back() {
                Some(chain) => chain.ratchet_key,
                // A session only needs a ratchet after it received a chain.
                None => return Err(SessionError::NoReceivingChain),
            };
            let ratchet = X25519KeyPair::generate(rng);
            let dh = ratchet.dh(&their_key)?;
            let (root_key, chain_key) = root_step(&self.root_key, &dh);
            self.root_key = root_key;
            self.sending = Sending::Active(SendingChain { ratchet, chain_key, counter: 0 });
        }
        let Sending::Active(chain) = &mut self.sending else {
            return Err(SessionError::NoReceivingChain);
        };
        let counter = chain.counter;
        let next_counter = counter.checked_add(1).ok_or(SessionError::CounterExhausted)?;
        let mut message_key = Zeroizing::new([0u8; 32]);
        let mut next = Zeroizing::new([0u8; 32]);
        crypto::chain_step_into(chain.chain_key.as_bytes(), &mut message_key, &mut next);
        // Overwrite the chain key in place: no allocation, and the old key is gone.
        *chain.chain_key.as_mut_bytes() = *next;
        chain.counter = next_counter;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let header = RatchetHeader {
            session_id: self.id,
            ratchet_key: *chain.ratchet.public(),
            counter,
            previous_counter: self.previous_counter,
            nonce,
        };
        Ok((header, message_key))
    }

    /// The initiation fields to repeat while unconfirmed.
    pub(crate) fn prekey_fields(
        &self,
        own_identity: &crate::keys::PublicIdentity,
    ) -> Option<PrekeyFields> {
        self.pending_prekey.as_ref().map(|p| PrekeyFields {
            sender_identity: own_identity.clone(),
            base_key: p.base_key,
            signed_prekey_id: p.signed_prekey_id,
            one_time_prekey_id: p.one_time_prekey_id,
        })
    }

    /// The associated-data prefix every message on this session authenticates.
    pub(crate) fn associated_data(&self) -> &[u8; 32] {
        &self.associated_data
    }

    /// Finds or derives the message key for `header` without changing anything.
    pub(crate) fn plan_decrypt(
        &self,
        header: &RatchetHeader,
        max_jump: u32,
    ) -> Result<(Secret32, Commit), SessionError> {
        let chain =
            self.receiving.iter().enumerate().find(|(_, c)| c.ratchet_key == header.ratchet_key);
        // Only a counter behind its chain, or on a chain we no longer hold, can be a skipped key:
        // the in-order path never scans the skipped keys.
        let may_be_skipped = chain.is_none_or(|(_, c)| header.counter < c.counter);
        if may_be_skipped
            && let Some((pos, skipped)) =
                self.skipped.iter().enumerate().find(|(_, k)| {
                    k.counter == header.counter && k.ratchet_key == header.ratchet_key
                })
        {
            let commit = Commit { kind: CommitKind::UsedSkipped(pos), skipped: Vec::new() };
            return Ok((skipped.message_key.clone(), commit));
        }
        let Some((index, chain)) = chain else {
            return self.plan_new_chain(header, max_jump);
        };
        if header.counter < chain.counter {
            return Err(SessionError::Duplicate);
        }
        let mut skipped = Vec::new();
        let (key, chain_key) = advance(
            chain.ratchet_key,
            &chain.chain_key,
            chain.counter,
            header.counter,
            max_jump,
            &mut skipped,
        )?;
        let counter = header.counter.saturating_add(1);
        Ok((
            key,
            Commit { kind: CommitKind::Advance { chain: index, chain_key, counter }, skipped },
        ))
    }

    fn plan_new_chain(
        &self,
        header: &RatchetHeader,
        max_jump: u32,
    ) -> Result<(Secret32, Commit), SessionError> {
        let Sending::Active(ours) = &self.sending else {
            // We have not answered the peer's current key, so it cannot have a newer one.
            return Err(SessionError::NoReceivingChain);
        };
        let mut skipped = Vec::new();
        // Keys left on the peer's previous chain, up to the length it announces.
        let mut previous_chain_end = None;
        if let Some(last) = self.receiving.back()
            && header.previous_counter > last.counter
        {
            // The key `advance` returns, at `previous_counter`, was never used by the peer.
            advance(
                last.ratchet_key,
                &last.chain_key,
                last.counter,
                header.previous_counter,
                max_jump,
                &mut skipped,
            )?;
            previous_chain_end = Some((self.receiving.len() - 1, header.previous_counter));
        }
        let dh = ours.ratchet.dh(&header.ratchet_key)?;
        let (root_key, chain_key) = root_step(&self.root_key, &dh);
        let (key, next_chain_key) =
            advance(header.ratchet_key, &chain_key, 0, header.counter, max_jump, &mut skipped)?;
        let chain = ReceiverChain {
            ratchet_key: header.ratchet_key,
            chain_key: next_chain_key,
            counter: header.counter.saturating_add(1),
        };
        Ok((
            key,
            Commit { kind: CommitKind::NewChain { root_key, chain, previous_chain_end }, skipped },
        ))
    }

    /// Applies a planned change after the message authenticated.
    pub(crate) fn apply(&mut self, commit: Commit) {
        match commit.kind {
            CommitKind::UsedSkipped(pos) => {
                self.skipped.remove(pos);
            }
            CommitKind::Advance { chain, chain_key, counter } => {
                if let Some(chain) = self.receiving.get_mut(chain) {
                    chain.chain_key = chain_key;
                    chain.counter = counter;
                }
            }
            CommitKind::NewChain { root_key, chain, previous_chain_end } => {
                // The previous chain is finished; its remaining keys are in `skipped`.
                if let Some((index, end)) = previous_chain_end
                    && let Some(previous) = self.receiving.get_mut(index)
                {
                    previous.counter = end;
                }
                self.root_key = root_key;
                if let Sending::Active(ours) = &self.sending {
                    self.previous_counter = ours.counter;
                }
                self.sending = Sending::NeedsRatchet;
                self.receiving.push_back(chain);
                while self.receiving.len() > MAX_RECEIVER_CHAINS {
                    self.receiving.pop_front();
                }
            }
        }
        self.skipped.extend(commit.skipped);
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
        self.pending_prekey = None;
    }
}

/// The keys of a session, for the transcript vectors' independent re-computation
/// (`crate::test_support::active_session_secrets`).
#[cfg(feature = "test-support")]
impl Session {
    pub(crate) fn secrets(&self) -> crate::test_support::SessionSecrets {
        use crate::test_support::{ReceivingChainSecrets, SendingChainSecrets, SessionSecrets};
        let sending = match &self.sending {
            Sending::Active(chain) => Some(SendingChainSecrets {
                ratchet_public: *chain.ratchet.public(),
                ratchet_secret: Zeroizing::new(*Secret32::from(chain.ratchet.clone()).as_bytes()),
                chain_key: Zeroizing::new(*chain.chain_key.as_bytes()),
                counter: chain.counter,
            }),
            Sending::NeedsRatchet => None,
        };
        SessionSecrets {
            session_id: self.id,
            associated_data: self.associated_data,
            root_key: Zeroizing::new(*self.root_key.as_bytes()),
            sending,
            previous_counter: self.previous_counter,
            receiving: self
                .receiving
                .iter()
                .map(|chain| ReceivingChainSecrets {
                    ratchet_key: chain.ratchet_key,
                    chain_key: Zeroizing::new(*chain.chain_key.as_bytes()),
                    counter: chain.counter,
                })
                .collect(),
            skipped_keys: self.skipped.len(),
        }
    }
}

/// Walks a chain from `from` to `to`, pushing the skipped keys, and returns the key for `to` and
/// the chain key after it. Refuses jumps beyond `max_jump` before doing any work.
fn advance(
    ratchet_key: [u8; 32],
    chain_key: &Secret32,
    from: u32,
    to: u32,
    max_jump: u32,
    skipped: &mut Vec<SkippedKey>,
) -> Result<(Secret32, Secret32), SessionError> {
    let jump = u64::from(to).saturating_sub(u64::from(from));
    if jump > u64::from(max_jump) {
        return Err(SessionError::TooFarAhead { jump, limit: max_jump });
    }
    let (mut message_key, mut next) = crypto::chain_step(chain_key.as_bytes());
    let mut counter = from;
    while counter < to {
        let (following, after) = crypto::chain_step(next.as_bytes());
        skipped.push(SkippedKey { ratchet_key, counter, message_key });
        (message_key, next) = (following, after);
        counter = counter.saturating_add(1);
    }
    Ok((message_key, next))
}
