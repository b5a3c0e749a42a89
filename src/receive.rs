//! The one entry point for everything a peer sends: [`Device::receive`].
//!
//! Every message names its kind in its authenticated prefix. Before any key is derived, the
//! kind must be one its sender may send, the sender's address must be authorized by the newest
//! verified list of its account ([`Device::authorize`]), and the session
//! must be under the identity that list names. The message then decrypts on an unchanged device;
//! its content and the list version it announces are checked; only then is the ratchet step
//! committed. This module never creates a session for an address no list names, never spends a
//! key on a message it refuses, and never accepts one kind as another.

use core::fmt;

use zeroize::Zeroizing;

use crate::account::Refusal;
use crate::blob::BlobDescriptor;
use crate::consts::HISTORY_WINDOW_SECS;
use crate::device::Device;
use crate::error::ReceiveError;
use crate::fanout::{Content, Conversation, Inner, open_body};
use crate::group::GroupId;
use crate::group::receiver::{GroupReceiver, ReceiverKey};
use crate::group::wire::{Distribution, GroupMessage};
use crate::keys::{DeviceAddress, DeviceId, Timestamp};
use crate::retry::{RetryRequest, message_ref};
use crate::session::SessionMessage;
use crate::session::message::MessageKind;
use crate::wire::Codec;

/// What [`Device::receive`] accepted.
#[derive(Debug)]
#[non_exhaustive]
pub enum Received {
    /// A message: sent to this account ([`Conversation::Direct`]), or a copy of what another
    /// device of this account sent ([`Conversation::OwnCopy`]).
    Message(ReceivedMessage),
    /// History from this account's primary, for this newly linked companion: import it with
    /// [`crate::import_history`].
    History(ReceivedHistory),
    /// A message to a group, under its sender's sender key.
    Group(ReceivedGroupMessage),
    /// A device's sender key for a group: kept, so its group messages decrypt. Nothing for the
    /// app to do.
    SenderKey(ReceivedSenderKey),
    /// A message this device already delivered from the same sender (same message id),
    /// received again: re-encrypted for a retry, or a copy on a fresh session. The session
    /// step was kept; nothing to show.
    Redelivered(Redelivered),
    /// A peer asks this device to re-encrypt a message it could not read: answer it with
    /// [`Device::answer_retry`].
    RetryRequest(VerifiedRetryRequest),
}

/// A message delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redelivered {
    /// The device that sent it.
    pub sender: DeviceAddress,
    /// Its message id.
    pub message_id: [u8; 16],
}

/// A retry request whose requester is authorized by this device's newest verified list, and
/// whose signature and signed prekey verify under the identity that list names. Only
/// [`Device::receive`] builds one.
#[derive(Debug, Clone)]
pub struct VerifiedRetryRequest {
    request: RetryRequest,
}

impl VerifiedRetryRequest {
    /// A request verified before it was kept in a store that authenticated it since.
    pub(crate) fn from_store(request: RetryRequest) -> Self {
        Self { request }
    }

    /// The request.
    pub fn request(&self) -> &RetryRequest {
        &self.request
    }
}

impl Received {
    /// The device that sent it.
    pub fn sender(&self) -> DeviceAddress {
        match self {
            Received::Message(message) => message.sender,
            Received::History(history) => history.sender,
            Received::Group(message) => message.sender,
            Received::SenderKey(key) => key.sender,
            Received::Redelivered(message) => message.sender,
            Received::RetryRequest(request) => request.request.requester,
        }
    }
}

/// A decrypted group message.
#[non_exhaustive]
pub struct ReceivedGroupMessage {
    /// The group.
    pub group: GroupId,
    /// The authorized device that sent it.
    pub sender: DeviceAddress,
    /// The membership digest the sender stated ([`GroupId::membership_digest`]): compare it
    /// with this device's view of the group.
    pub membership_digest: [u8; 32],
    /// The message id the sender chose.
    pub message_id: [u8; 16],
    /// The sender's device-list version, as it stated.
    pub sender_list_version: u64,
    /// The payload, wiped on drop.
    pub payload: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ReceivedGroupMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedGroupMessage")
            .field("group", &self.group)
            .field("sender", &self.sender)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// A sender key a device distributed for a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedSenderKey {
    /// The group.
    pub group: GroupId,
    /// The device whose key it is.
    pub sender: DeviceAddress,
    /// False if the key was one already held or one this device had forgotten (a late or
    /// replayed distribution): nothing about the group changed.
    pub taken: bool,
}

/// A decrypted message and who sent it.
#[non_exhaustive]
pub struct ReceivedMessage {
    /// The authorized device that sent it.
    pub sender: DeviceAddress,
    /// The id the sender gave the message.
    pub message_id: [u8; 16],
    /// Direct message, or a copy of what this account sent to others.
    pub conversation: Conversation,
    /// The sender's device-list version, as it stated.
    pub sender_list_version: u64,
    /// The sender's device-list digest, as it stated.
    pub sender_list_digest: [u8; 32],
    /// True when this device should fetch the sender account's list: the sender (its primary)
    /// announced a newer version, or the list held is more than 14 days old. Until then that
    /// account's companions are neither sent to nor accepted.
    pub list_refresh_needed: bool,
    /// The payload, wiped on drop.
    pub payload: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("sender", &self.sender)
            .field("conversation", &self.conversation)
            .field("sender_list_version", &self.sender_list_version)
            .field("list_refresh_needed", &self.list_refresh_needed)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// History a primary sent to this newly linked companion.
#[derive(Debug)]
#[non_exhaustive]
pub struct ReceivedHistory {
    /// The account's primary.
    pub sender: DeviceAddress,
    /// Where the history blob is and how to decrypt it.
    pub descriptor: BlobDescriptor,
}

impl Device {
    /// Accepts one message from a peer: a fan-out envelope (with its shared `body`, if the
    /// message has one) or a history envelope.
    ///
    /// Refused, with the device unchanged but for the documented latches: a raw
    /// [`crate::hazmat`] message ([`ReceiveError::WrongKind`]); a sender its account's newest
    /// list does not name ([`ReceiveError::UnlistedSender`], no session created and no prekey
    /// consumed) or names under another identity; a companion sender while the list held for
    /// its account is more than 14 days old or a newer version was announced
    /// ([`ReceiveError::StaleList`]); an announced digest that contradicts the list held at that
    /// version ([`ReceiveError::Equivocation`]); history from anyone but this account's primary,
    /// or outside the window after this companion's link. [`ReceiveError::action`] says whether
    /// to drop the message, keep it and retry, fetch a list, or ask the user.
    ///
    /// Latches that move even on a refusal: the clock high-water mark takes `now`, and a newer
    /// list version announced by an authorized device is remembered.
    pub fn receive(
        &mut self,
        envelope: &[u8],
        body: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Received, ReceiveError> {
        self.observe(now);
        match envelope.get(1) {
            Some(&GroupMessage::TYPE) => return self.receive_group(envelope),
            Some(&RetryRequest::TYPE) => return self.receive_retry_request(envelope),
            _ => {}
        }
        let message = SessionMessage::try_from(envelope)?;
        let sender = message.sender;
        let kind = message.kind;
        self.check_kind(kind, sender)?;
        self.require_active()?;
        let device = self.authorized_sender(sender)?;
        let sender_identity = device.identity().fingerprint();
        let opened = self.open(&message, Some(device.identity()), now)?;
        let inner = Inner::decode(kind, &opened.plaintext).map_err(ReceiveError::Content)?;
        self.note_announcement(sender, inner.list_version, inner.list_digest)?;
        let list_refresh_needed =
            self.accounts.get(&sender.account).is_some_and(|known| !self.companions_current(known));
        let message_id = inner.message_id;
        let reference = message_ref(envelope).ok_or(ReceiveError::Session(
            crate::error::SessionError::Decode(crate::error::DecodeError::Truncated { needed: 16 }),
        ))?;
        if self.peers.get(&sender).is_some_and(|peer| peer.delivered(&message_id)) {
            // The envelope is remembered too: a replay of it is a replay, not a failure to ask
            // about.
            self.peers.entry(sender).or_default().deliver(message_id, reference);
            self.commit(opened);
            return Ok(Received::Redelivered(Redelivered { sender, message_id }));
        }
        let received = match inner.content {
            Content::SenderKey(bytes) => {
                let distribution = Distribution::parse(bytes).map_err(ReceiveError::Content)?;
                let key = ReceiverKey::new(&distribution)?;
                let group = distribution.group;
                let receiver = self
                    .group_keys
                    .entry((sender, group))
                    .or_insert_with(|| GroupReceiver::new(sender_identity));
                if receiver.sender_identity != sender_identity {
                    *receiver = GroupReceiver::new(sender_identity);
                }
                let taken = receiver.accept(key);
                Received::SenderKey(ReceivedSenderKey { group, sender, taken })
            }
            Content::History(descriptor) => Received::History(ReceivedHistory {
                sender,
                descriptor: BlobDescriptor::try_from(descriptor)
                    .map_err(ReceiveError::Descriptor)?,
            }),
            content => {
                let payload = match content {
                    Content::Body { key, digest } => open_body(key, &digest, body)?,
                    Content::Inline(payload)
                    | Content::History(payload)
                    | Content::SenderKey(payload) => Zeroizing::new(payload.to_vec()),
                };
                let conversation = match kind {
                    MessageKind::OwnCopy => Conversation::OwnCopy { to: inner.to },
                    _ => Conversation::Direct,
                };
                match inner.group {
                    Some((group, membership_digest)) => Received::Group(ReceivedGroupMessage {
                        group,
                        sender,
                        membership_digest,
                        message_id,
                        sender_list_version: inner.list_version,
                        payload,
                    }),
                    None => Received::Message(ReceivedMessage {
                        sender,
                        message_id,
                        conversation,
                        sender_list_version: inner.list_version,
                        sender_list_digest: inner.list_digest,
                        list_refresh_needed,
                        payload,
                    }),
                }
            }
        };
        self.peers.entry(sender).or_default().deliver(message_id, reference);
        self.commit(opened);
        Ok(received)
    }

    /// The device at `sender`, if authorization admits it (see [`Device::authorize`]).
    fn authorized_sender(
        &self,
        sender: DeviceAddress,
    ) -> Result<&crate::AuthorizedDevice, ReceiveError> {
        self.authorize(sender).map_err(|refusal| match refusal {
            Refusal::NoList => ReceiveError::NoList(sender.account),
            Refusal::Unlisted => ReceiveError::UnlistedSender(sender),
            Refusal::Stale { announced } => {
                ReceiveError::StaleList { account: sender.account, announced }
            }
        })
    }

    /// A group message: authorize the sender as for any message, find its sender key for the
    /// group (held under the identity the list names now), verify, step, decrypt, check the
    /// announcement, and only then commit.
    fn receive_group(&mut self, envelope: &[u8]) -> Result<Received, ReceiveError> {
        let message = GroupMessage::decode(envelope)?;
        let sender = message.sender;
        let group = message.group;
        if sender == self.address {
            return Err(ReceiveError::Session(crate::error::SessionError::SelfSession));
        }
        self.require_active()?;
        let identity = self.authorized_sender(sender)?.identity().fingerprint();
        let receiver = self
            .group_keys
            .get(&(sender, group))
            .filter(|r| r.sender_identity == identity)
            .ok_or(ReceiveError::NoSenderKey { group, sender })?;
        let mut opened = receiver.open(&message, self.max_forward_jump)?;
        let reference = message_ref(envelope).ok_or(ReceiveError::Session(
            crate::error::SessionError::Decode(crate::error::DecodeError::Truncated { needed: 16 }),
        ))?;
        self.note_announcement(sender, opened.list_version, opened.list_digest)?;
        if let Some(receiver) = self.group_keys.get_mut(&(sender, group)) {
            receiver.commit(&mut opened);
        }
        let message_id = opened.message_id;
        let peer = self.peers.entry(sender).or_default();
        let again = peer.delivered(&message_id);
        // Remembered even when delivered before: a replay of it is a replay, not a failure to ask
        // about.
        peer.deliver(message_id, reference);
        if again {
            return Ok(Received::Redelivered(Redelivered { sender, message_id }));
        }
        Ok(Received::Group(ReceivedGroupMessage {
            group,
            sender,
            membership_digest: message.membership,
            message_id: opened.message_id,
            sender_list_version: opened.list_version,
            payload: core::mem::take(&mut opened.payload),
        }))
    }

    /// A retry request: from a device the newest list authorizes, for a message this device
    /// sent, signed under the identity the list names, with a signed prekey under it too.
    fn receive_retry_request(&mut self, bytes: &[u8]) -> Result<Received, ReceiveError> {
        let request = RetryRequest::try_from(bytes)?;
        let requester = request.requester;
        if request.sender != self.address {
            return Err(ReceiveError::Session(crate::error::SessionError::WrongRecipient {
                addressed_to: request.sender,
            }));
        }
        if requester == self.address {
            return Err(ReceiveError::Session(crate::error::SessionError::SelfSession));
        }
        self.require_active()?;
        let identity = self.authorized_sender(requester)?.identity().clone();
        request.verify(&identity)?;
        Ok(Received::RetryRequest(VerifiedRetryRequest { request }))
    }

    /// Refuses a message of a kind its sender may not send to this device, before any key is
    /// derived.
    fn check_kind(&self, kind: MessageKind, sender: DeviceAddress) -> Result<(), ReceiveError> {
        let own = self.address.account;
        match kind {
            MessageKind::Raw => Err(ReceiveError::WrongKind(kind)),
            MessageKind::Direct if sender.account == own => Err(ReceiveError::WrongKind(kind)),
            MessageKind::OwnCopy if sender.account != own => {
                Err(ReceiveError::ForeignOwnCopy(sender))
            }
            MessageKind::History => {
                if sender != DeviceAddress::new(own, DeviceId::PRIMARY) {
                    return Err(ReceiveError::HistoryNotFromPrimary(sender));
                }
                // The window opens when linking finishes, so history that arrives before the
                // list naming this companion waits (retry later) without losing time.
                let linked_at = self
                    .own_link_time()
                    .map_err(|()| ReceiveError::NotLinkedCompanion)?
                    .ok_or(ReceiveError::Session(crate::error::SessionError::NotLinked))?;
                if self.clock.secs_since(linked_at) > HISTORY_WINDOW_SECS {
                    return Err(ReceiveError::HistoryWindowClosed);
                }
                Ok(())
            }
            MessageKind::Direct
            | MessageKind::OwnCopy
            | MessageKind::SenderKey
            | MessageKind::GroupCopy => Ok(()),
        }
    }

    /// Compares the list version and digest an authorized device announced with what is held
    /// for its account. The same version with another digest (than the list held, or than
    /// announced before at that version) is equivocation. A newer version is remembered (a
    /// latch, kept even when the message is refused): until a list of at least that version is
    /// processed, the account's companions are stale. A companion's message announcing it is
    /// refused until then; the primary's is accepted. This holds for the own account too: a
    /// primary told of a newer own list than it holds was restored from a backup and must
    /// fetch it before it signs again.
    fn note_announcement(
        &mut self,
        sender: DeviceAddress,
        version: u64,
        digest: [u8; 32],
    ) -> Result<(), ReceiveError> {
        let account = sender.account;
        let Some(known) = self.accounts.get_mut(&account) else {
            return Ok(());
        };
        let held = known.list.version();
        if version < held {
            return Ok(());
        }
        if version == held {
            return if digest == known.list.digest() {
                Ok(())
            } else {
                Err(ReceiveError::Equivocation { account, version })
            };
        }
        let changed = known
            .announce(version, digest, sender.device)
            .map_err(|version| ReceiveError::Equivocation { account, version })?;
        let highest = known.highest_announced();
        if changed {
            self.lists_changed();
        }
        if sender.device.is_primary() {
            Ok(())
        } else {
            Err(ReceiveError::StaleList { account, announced: highest })
        }
    }
}
