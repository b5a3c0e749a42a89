//! Groups with sender keys: one ciphertext and one signature per group message, the same bytes
//! for every device of every member.
//!
//! Each sending device holds, per group, a [`SenderKey`]: a chain key stepped once per message
//! and an Ed25519 signing key. It distributes the key once, over the pairwise sessions, to every
//! authorized device of every member account and to its own other devices, and remembers who
//! holds it. When a device that holds the key is no longer one the sender would send to (its
//! account left the group, its list no longer names it, or its list went stale), the next send
//! starts a fresh key that only the remaining devices get. Receivers keep, per sending device
//! and group, the keys it distributed, step their chain with bounded skips and decrypt
//! transactionally. This module never sends a key to a device that authorization refuses, and
//! never accepts a group message from one.

pub(crate) mod receiver;
pub(crate) mod wire;

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::consts::{MAX_GROUP_MEMBERS, MAX_MESSAGE_PLAINTEXT, PRIMARY_INACTIVITY_SECS};
use crate::crypto::{self, NONCE_LEN, Secret32, label};
use crate::device::Device;
use crate::error::GroupError;
use crate::fanout::{Content, Envelope, FanoutSkip, Inner};
use crate::keys::{AccountId, DeviceAddress, Fingerprint, Timestamp};
use crate::prekeys::PrekeyBundle;
use crate::retry::HolderSet;
use crate::session::message::MessageKind;
use crate::wire::Codec;
use wire::{Distribution, GroupMessage, MESSAGE_ID_LEN};

/// A group's random 128-bit identifier.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    /// A fresh random group id.
    pub fn random(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// The digest of a membership every group message carries (docs/PROTOCOL.md §20):
    /// `H("multidevice/v1/hash/group-membership", group id || count (u16) || account ids)`, over
    /// the distinct member accounts in ascending order. Receivers compare it with their own view
    /// of the group to see that every member was shown the same membership.
    pub fn membership_digest(&self, members: &[AccountId]) -> [u8; 32] {
        let members = sorted_members(members);
        let count = u16::try_from(members.len()).unwrap_or(u16::MAX);
        let ids: Vec<u8> = members.iter().flat_map(|a| a.0.to_be_bytes()).collect();
        crypto::hash(label::HASH_GROUP_MEMBERSHIP, &[&self.0, &count.to_be_bytes(), &ids])
    }
}

impl core::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GroupId(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

fn sorted_members(members: &[AccountId]) -> Vec<AccountId> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// A sending device's key for one group: a chain key stepped once per message, and the key that
/// signs every message.
pub(crate) struct SenderKey {
    pub(crate) key_id: u32,
    /// The iteration of the next message.
    pub(crate) iteration: u32,
    pub(crate) chain_key: Secret32,
    pub(crate) signing: SigningKey,
}

impl SenderKey {
    fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut key_id = [0u8; 4];
        rng.fill_bytes(&mut key_id);
        let mut chain_key = Secret32::new([0u8; 32]);
        rng.fill_bytes(chain_key.as_mut_bytes());
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        Self {
            key_id: u32::from_be_bytes(key_id),
            iteration: 0,
            chain_key,
            signing: SigningKey::from_bytes(&seed),
        }
    }
}

/// The persisted form of a [`SenderKey`]: the signing key as its seed.
#[derive(Serialize, Deserialize)]
struct SenderKeyRecord {
    key_id: u32,
    iteration: u32,
    chain_key: Secret32,
    signing_seed: Secret32,
}

impl Serialize for SenderKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SenderKeyRecord {
            key_id: self.key_id,
            iteration: self.iteration,
            chain_key: self.chain_key.clone(),
            signing_seed: Secret32::new(self.signing.to_bytes()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SenderKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = SenderKeyRecord::deserialize(deserializer)?;
        Ok(Self {
            key_id: record.key_id,
            iteration: record.iteration,
            chain_key: record.chain_key.clone(),
            signing: SigningKey::from_bytes(record.signing_seed.as_bytes()),
        })
    }
}

/// What a device keeps about one group it sends to.
#[derive(Serialize, Deserialize)]
pub(crate) struct GroupSender {
    /// The member accounts, ascending and distinct, this device's own included.
    pub(crate) members: Vec<AccountId>,
    /// [`GroupId::membership_digest`] of `members`, which every message carries.
    pub(crate) membership: [u8; 32],
    /// The key the next message goes out under, once one was made.
    pub(crate) key: Option<SenderKey>,
    /// Every device that holds `key`, with the identity it was sent under.
    pub(crate) holders: BTreeMap<DeviceAddress, Fingerprint>,
    /// Set when `holders` was last found to be exactly the devices a send reaches: the list
    /// epoch then, and the time after which a list it relied on goes stale. While both hold, a
    /// send skips recomputing who it reaches.
    pub(crate) settled: Option<(u64, Timestamp)>,
    /// The sent-message cache's holder set recording `holders` as they are now; `None` once
    /// they changed since it was made.
    pub(crate) holder_set: Option<u64>,
    /// Holders the next send gives the current key again: each asked for a retry of a message
    /// under it, so it may lack the key. They stay holders (they may yet get the key, late), so
    /// a later departure of any of them rotates the key as for any holder.
    pub(crate) resend: BTreeSet<DeviceAddress>,
}

impl GroupSender {
    /// True if the bounds a live device keeps also hold for restored state.
    pub(crate) fn within_limits(&self) -> bool {
        self.members.len() <= MAX_GROUP_MEMBERS + 1
            && self.members.windows(2).all(|w| matches!(w, [a, b] if a < b))
            && self.holders.len() <= (MAX_GROUP_MEMBERS + 1) * (crate::consts::MAX_COMPANIONS + 1)
            && self.resend.iter().all(|device| self.holders.contains_key(device))
    }
}

/// The result of one group send.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupSend {
    /// The group message: one ciphertext and one signature, the same bytes for every device.
    pub message: Vec<u8>,
    /// The message id inside it.
    pub message_id: [u8; 16],
    /// The sender key, for devices that do not hold it yet: one pairwise envelope each. Deliver
    /// them before the message.
    pub distribution: Vec<Envelope>,
    /// True when this send started a fresh sender key, because a device that held the previous
    /// one is no longer sent to.
    pub rotated: bool,
    /// Devices that get no key, and why: they cannot read the message.
    pub skipped: Vec<(DeviceAddress, FanoutSkip)>,
    /// Accounts whose lists this device needs to reach all of their devices.
    pub lists_needed: Vec<AccountId>,
    /// The outbox item holding the distribution and the message, when a
    /// [`crate::StoredDevice`] committed them. `None` from [`Device::encrypt_group`].
    pub outbox: Option<crate::OutboxId>,
}

impl Device {
    /// Creates a group of `members` (this device's own account is always a member) with a fresh
    /// random id. No key is made or sent until the first message.
    pub fn create_group(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        members: &[AccountId],
    ) -> Result<GroupId, GroupError> {
        let group = GroupId::random(rng);
        self.set_group_members(group, members)?;
        Ok(group)
    }

    /// Sets the member accounts of `group` (a group another device created, or a change). This
    /// device's own account is always a member. Devices of accounts no longer members stop
    /// getting messages: the next send starts a fresh sender key without them.
    pub fn set_group_members(
        &mut self,
        group: GroupId,
        members: &[AccountId],
    ) -> Result<(), GroupError> {
        let mut members = members.to_vec();
        members.push(self.address.account);
        let members = sorted_members(&members);
        if members.len() > MAX_GROUP_MEMBERS + 1 {
            return Err(GroupError::TooManyMembers {
                limit: MAX_GROUP_MEMBERS,
                got: members.len() - 1,
            });
        }
        let membership = group.membership_digest(&members);
        match self.groups.get_mut(&group) {
            Some(state) => {
                if state.members != members {
                    state.members = members;
                    state.membership = membership;
                    state.settled = None;
                }
            }
            None => {
                let state = GroupSender {
                    members,
                    membership,
                    key: None,
                    holders: BTreeMap::new(),
                    settled: None,
                    holder_set: None,
                    resend: BTreeSet::new(),
                };
                self.groups.insert(group, state);
            }
        }
        Ok(())
    }

    /// The member accounts of `group` as this device holds them, own account included.
    pub fn group_members(&self, group: GroupId) -> Option<&[AccountId]> {
        self.groups.get(&group).map(|g| g.members.as_slice())
    }

    /// Forgets `group`: its sender key and members. Keys other devices sent for it are kept
    /// until their devices leave.
    pub fn leave_group(&mut self, group: GroupId) {
        self.groups.remove(&group);
    }

    /// Encrypts `payload` once for every device of the group's members and this account's
    /// other devices: one group message under this device's sender key, signed with it.
    ///
    /// The sender key goes, over the pairwise sessions (set up from `bundles` where needed), to
    /// every device the message reaches that does not hold it yet, and to none twice. When a
    /// device that holds it is no longer reached (its account left the group, its list no longer
    /// names it under that identity, or its list is stale), a fresh key is made first and only
    /// the remaining devices get it, so the departed one cannot read this message or any later
    /// one. Devices are reached exactly as by [`Device::encrypt_fanout`].
    pub fn encrypt_group(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        group: GroupId,
        bundles: &[PrekeyBundle],
        payload: &[u8],
        now: Timestamp,
    ) -> Result<GroupSend, GroupError> {
        self.observe(now);
        if payload.len() > MAX_MESSAGE_PLAINTEXT {
            return Err(GroupError::PayloadTooLarge(payload.len()));
        }
        self.require_active()?;
        let clock = self.clock;
        let epoch = self.list_epoch;
        let state = self.groups.get(&group).ok_or(GroupError::UnknownGroup(group))?;
        let settled = state.key.is_some()
            && state.settled.is_some_and(|(at, until)| at == epoch && clock <= until);
        let mut send = GroupSend {
            message: Vec::new(),
            message_id: [0u8; 16],
            distribution: Vec::new(),
            rotated: false,
            skipped: Vec::new(),
            lists_needed: Vec::new(),
            outbox: None,
        };
        if !settled {
            self.settle_group(rng, group, bundles, &mut send)?;
        }
        rng.fill_bytes(&mut send.message_id);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let sender = self.address;
        let announcement = self.own_list_announcement();
        let state = self.groups.get_mut(&group).ok_or(GroupError::UnknownGroup(group))?;
        let membership = state.membership;
        let key = state.key.as_mut().ok_or(GroupError::UnknownGroup(group))?;
        let header = GroupHeader { group, sender, membership: &membership, nonce: &nonce };
        send.message = seal_group_message(key, &header, &send.message_id, announcement, payload)?;
        let reference = crate::retry::message_ref(&send.message).unwrap_or_default();
        if state.holders.is_empty() {
            // Nobody to retry for; the id still counts.
            self.sent.issue(1);
            return Ok(send);
        }
        let holders = &state.holders;
        let set = self.sent.holder_set(state.holder_set, || {
            HolderSet(
                holders
                    .iter()
                    .map(|(address, identity)| (*address, crate::retry::mark_of(&identity.0)))
                    .collect(),
            )
        });
        state.holder_set = Some(set);
        let kind = crate::retry::SentKind::Group { group, membership };
        let recipients = crate::retry::Recipients::Holders { set, reference };
        self.remember_sent(send.message_id, kind, payload, recipients);
        Ok(send)
    }

    /// Works out which devices the group's messages reach now, rotates the sender key if a
    /// holder is no longer among them, and distributes it to those that lack it.
    fn settle_group(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        group: GroupId,
        bundles: &[PrekeyBundle],
        send: &mut GroupSend,
    ) -> Result<(), GroupError> {
        let members = self.groups.get(&group).map(|g| g.members.clone()).unwrap_or_default();
        let mut reached: BTreeMap<DeviceAddress, Fingerprint> = BTreeMap::new();
        let mut valid_until = Timestamp(u64::MAX);
        let own_account = self.address.account;
        for &account in &members {
            let Some(known) = self.accounts.get(&account) else {
                send.lists_needed.push(account);
                continue;
            };
            if known.pending_change.is_some() {
                for device in known.list.devices() {
                    send.skipped.push((device.address(), FanoutSkip::IdentityChangePending));
                }
                continue;
            }
            let current = self.companions_current(known);
            if !current {
                send.lists_needed.push(account);
            }
            let has_companions = known.list.devices().len() > 1;
            let own_signed = account == own_account && self.is_primary();
            if current && has_companions && !own_signed {
                let stale_at = known.list.issued_at().plus_secs(PRIMARY_INACTIVITY_SECS);
                valid_until = valid_until.min(stale_at);
            }
            for device in known.list.devices() {
                if device.address() == self.address {
                    continue;
                }
                if device.address().device.is_primary() || current {
                    reached.insert(device.address(), device.identity().fingerprint());
                } else {
                    send.skipped.push((device.address(), FanoutSkip::StaleList));
                }
            }
        }
        let state = self.groups.get_mut(&group).ok_or(GroupError::UnknownGroup(group))?;
        let departed =
            state.holders.iter().any(|(address, identity)| reached.get(address) != Some(identity));
        if state.key.is_none() || departed {
            state.key = Some(SenderKey::generate(rng));
            state.holders.clear();
            state.holder_set = None;
            state.resend.clear();
            send.rotated = departed;
        }
        let (key_id, iteration, chain_key, signing_public) = match &state.key {
            Some(key) => (
                key.key_id,
                key.iteration,
                key.chain_key.clone(),
                key.signing.verifying_key().to_bytes(),
            ),
            None => return Err(GroupError::UnknownGroup(group)),
        };
        let missing: Vec<(DeviceAddress, Fingerprint)> = reached
            .iter()
            .filter(|(address, _)| {
                !state.holders.contains_key(address) || state.resend.contains(address)
            })
            .map(|(a, f)| (*a, *f))
            .collect();
        let mut distribution = Zeroizing::new(Vec::with_capacity(Distribution::LEN));
        Distribution { group, key_id, iteration, chain_key: chain_key.as_bytes(), signing_public }
            .write(&mut distribution);
        let (list_version, list_digest) = self.own_list_announcement();
        let mut message_id = [0u8; 16];
        rng.fill_bytes(&mut message_id);
        let plaintext = Inner {
            list_version,
            list_digest,
            message_id,
            group: None,
            to: Vec::new(),
            content: Content::SenderKey(&distribution),
        }
        .encode();
        let mut delivered = Vec::with_capacity(missing.len());
        for (address, identity) in missing {
            match self.seal_authorized(rng, address, MessageKind::SenderKey, &plaintext, bundles) {
                Ok(bytes) => {
                    send.distribution.push(Envelope { recipient: address, bytes });
                    delivered.push((address, identity));
                }
                Err(reason) => send.skipped.push((address, reason)),
            }
        }
        let everyone = send.skipped.is_empty() && send.lists_needed.is_empty();
        let epoch = self.list_epoch;
        if !delivered.is_empty() {
            // A device given the key gets two ids with this send: the distribution's, then the
            // group message's.
            self.sent.issue(1);
        }
        let state = self.groups.get_mut(&group).ok_or(GroupError::UnknownGroup(group))?;
        let new_holders = delivered.iter().any(|(address, _)| !state.holders.contains_key(address));
        for (address, _) in &delivered {
            state.resend.remove(address);
        }
        state.holders.extend(delivered);
        if new_holders {
            state.holder_set = None;
        }
        // Only when every device reached holds the key can later sends skip this work.
        state.settled = everyone.then_some((epoch, valid_until));
        Ok(())
    }
}

/// The fields of a group message's header that do not come from the sender key.
pub(crate) struct GroupHeader<'a> {
    pub(crate) group: GroupId,
    pub(crate) sender: DeviceAddress,
    pub(crate) membership: &'a [u8; 32],
    pub(crate) nonce: &'a [u8; NONCE_LEN],
}

/// Steps the sender key and seals one group message under it.
pub(crate) fn seal_group_message(
    key: &mut SenderKey,
    header: &GroupHeader<'_>,
    message_id: &[u8; MESSAGE_ID_LEN],
    (list_version, list_digest): (u64, [u8; 32]),
    payload: &[u8],
) -> Result<Vec<u8>, GroupError> {
    let GroupHeader { group, sender, membership, nonce } = *header;
    let iteration = key.iteration;
    let next_iteration = iteration.checked_add(1).ok_or(GroupError::KeyExhausted)?;
    let mut message_key = Zeroizing::new([0u8; 32]);
    let mut next = Zeroizing::new([0u8; 32]);
    crypto::chain_step_into(key.chain_key.as_bytes(), &mut message_key, &mut next);
    let mut out = Vec::with_capacity(
        wire::HEADER_LEN + wire::PLAINTEXT_PREFIX_LEN + payload.len() + crypto::TAG_LEN + 64,
    );
    out.extend_from_slice(&[crate::wire::VERSION, GroupMessage::TYPE]);
    wire::write_header_body(&mut out, group, sender, key.key_id, iteration, membership, nonce);
    let header_len = out.len();
    let mut plaintext =
        Zeroizing::new(Vec::with_capacity(wire::PLAINTEXT_PREFIX_LEN + payload.len()));
    plaintext.extend_from_slice(message_id);
    plaintext.extend_from_slice(&list_version.to_be_bytes());
    plaintext.extend_from_slice(&list_digest);
    plaintext.extend_from_slice(payload);
    // The associated data is the header just written.
    let aad = out.split_at(header_len).0.to_vec();
    crypto::seal_append(&message_key, nonce, &aad, &mut out, &plaintext);
    // The signature covers the SHA-256 of everything before it: one pass over the message,
    // where Ed25519 itself would hash it twice to sign and once more to verify.
    let digest: [u8; 32] = Sha256::digest(&out).into();
    let signature = crypto::sign(&key.signing, label::SIG_GROUP_MESSAGE, &[&digest]);
    out.extend_from_slice(&signature);
    key.chain_key.as_mut_bytes().copy_from_slice(next.as_slice());
    key.iteration = next_iteration;
    Ok(out)
}
