//! The outbox, the inbox and inbound de-duplication, as records.
//!
//! What an operation sends is committed with its ratchet step as an [`OutboxItem`], so a crash
//! between the commit and the network send loses nothing and never encrypts twice: the app
//! sends what the outbox holds and marks it sent. What an operation receives is committed with
//! its ratchet step as an [`Inbound`] the app acknowledges once it has kept the message, and
//! the envelope's digest is remembered per sender, so a redelivered envelope is recognized
//! without touching the ratchet: it returns the same message while unacknowledged, and
//! [`crate::ReceiveError::AlreadyReceived`] after.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::blob::BlobDescriptor;
use crate::error::StoreError;
use crate::fanout::{Conversation, Envelope};
use crate::group::GroupId;
use crate::keys::{AccountId, DeviceAddress, Timestamp};
use crate::receive::{
    Received, ReceivedGroupMessage, ReceivedHistory, ReceivedMessage, ReceivedSenderKey,
    Redelivered, VerifiedRetryRequest,
};
use crate::retry::RetryRequest;
use crate::store::Table;

/// Envelope digests remembered per sending device: a redelivery within the last this many
/// messages from one device is recognized before any decryption.
pub const DEDUP_WINDOW: usize = 256;

/// Identifies one outbox item until [`crate::StoredDevice::mark_sent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboxId(pub(crate) u64);

/// Identifies one received message until [`crate::StoredDevice::acknowledge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InboxId(pub(crate) u64);

/// What one operation produced for the network, committed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxItem {
    /// Mark it sent with this once the server has every envelope (and the body).
    pub id: OutboxId,
    /// The clock high-water mark when it was committed.
    pub created: Timestamp,
    /// One envelope per device.
    pub envelopes: Vec<Envelope>,
    /// The shared body the envelopes refer to, if any.
    pub body: Option<Vec<u8>>,
    /// A group message, the same bytes for every device of the group: the server copies it to
    /// all of them, after the envelopes (which carry the sender key to those that lack it).
    pub group_message: Option<Vec<u8>>,
}

/// A received message, committed with its ratchet step and kept until the app acknowledges it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Inbound {
    /// Acknowledge it with this once the app has kept the message.
    pub id: InboxId,
    /// The message.
    pub received: Received,
}

/// Bytes wiped when dropped, for plaintexts kept in records.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(super) struct SecretBytes(Vec<u8>);

#[derive(Serialize, Deserialize)]
pub(super) struct OutboxRecord {
    created: Timestamp,
    envelopes: Vec<(DeviceAddress, Vec<u8>)>,
    body: Option<Vec<u8>>,
    group_message: Option<Vec<u8>>,
}

impl OutboxRecord {
    pub(super) fn new(created: Timestamp, envelopes: &[Envelope], body: Option<&[u8]>) -> Self {
        Self {
            created,
            envelopes: envelopes.iter().map(|e| (e.recipient, e.bytes.clone())).collect(),
            body: body.map(<[u8]>::to_vec),
            group_message: None,
        }
    }

    /// This item with a group message to send after its envelopes.
    pub(super) fn with_group_message(mut self, message: &[u8]) -> Self {
        self.group_message = Some(message.to_vec());
        self
    }

    pub(super) fn into_item(self, id: OutboxId) -> OutboxItem {
        OutboxItem {
            id,
            created: self.created,
            envelopes: self
                .envelopes
                .into_iter()
                .map(|(recipient, bytes)| Envelope { recipient, bytes })
                .collect(),
            body: self.body,
            group_message: self.group_message,
        }
    }
}

/// A received message as the inbox keeps it.
#[derive(Serialize, Deserialize)]
pub(super) enum InboxRecord {
    Message {
        sender: DeviceAddress,
        message_id: [u8; 16],
        own_copy_to: Option<Vec<AccountId>>,
        list_version: u64,
        list_digest: [u8; 32],
        list_refresh_needed: bool,
        payload: SecretBytes,
    },
    History {
        sender: DeviceAddress,
        descriptor: SecretBytes,
    },
    Group {
        group: GroupId,
        sender: DeviceAddress,
        membership_digest: [u8; 32],
        message_id: [u8; 16],
        list_version: u64,
        payload: SecretBytes,
    },
    SenderKey {
        group: GroupId,
        sender: DeviceAddress,
        taken: bool,
    },
    Redelivered {
        sender: DeviceAddress,
        message_id: [u8; 16],
    },
    /// A retry request, verified before it was stored.
    RetryRequest {
        request: Vec<u8>,
    },
}

impl InboxRecord {
    pub(super) fn new(received: &Received) -> Self {
        match received {
            Received::Message(message) => InboxRecord::Message {
                sender: message.sender,
                message_id: message.message_id,
                own_copy_to: match &message.conversation {
                    Conversation::OwnCopy { to } => Some(to.clone()),
                    Conversation::Direct => None,
                },
                list_version: message.sender_list_version,
                list_digest: message.sender_list_digest,
                list_refresh_needed: message.list_refresh_needed,
                payload: SecretBytes(message.payload.to_vec()),
            },
            Received::History(history) => InboxRecord::History {
                sender: history.sender,
                descriptor: SecretBytes(history.descriptor.to_bytes().to_vec()),
            },
            Received::Group(message) => InboxRecord::Group {
                group: message.group,
                sender: message.sender,
                membership_digest: message.membership_digest,
                message_id: message.message_id,
                list_version: message.sender_list_version,
                payload: SecretBytes(message.payload.to_vec()),
            },
            Received::SenderKey(key) => {
                InboxRecord::SenderKey { group: key.group, sender: key.sender, taken: key.taken }
            }
            Received::Redelivered(message) => {
                InboxRecord::Redelivered { sender: message.sender, message_id: message.message_id }
            }
            Received::RetryRequest(request) => {
                InboxRecord::RetryRequest { request: request.request().to_bytes() }
            }
        }
    }

    pub(super) fn to_received(&self) -> Result<Received, StoreError> {
        Ok(match self {
            InboxRecord::Message {
                sender,
                message_id,
                own_copy_to,
                list_version,
                list_digest,
                list_refresh_needed,
                payload,
            } => Received::Message(ReceivedMessage {
                sender: *sender,
                message_id: *message_id,
                conversation: match own_copy_to {
                    Some(to) => Conversation::OwnCopy { to: to.clone() },
                    None => Conversation::Direct,
                },
                sender_list_version: *list_version,
                sender_list_digest: *list_digest,
                list_refresh_needed: *list_refresh_needed,
                payload: Zeroizing::new(payload.0.clone()),
            }),
            InboxRecord::History { sender, descriptor } => Received::History(ReceivedHistory {
                sender: *sender,
                descriptor: BlobDescriptor::try_from(descriptor.0.as_slice())
                    .map_err(|_| StoreError::Corrupt(Table::Inbox))?,
            }),
            InboxRecord::Group {
                group,
                sender,
                membership_digest,
                message_id,
                list_version,
                payload,
            } => Received::Group(ReceivedGroupMessage {
                group: *group,
                sender: *sender,
                membership_digest: *membership_digest,
                message_id: *message_id,
                sender_list_version: *list_version,
                payload: Zeroizing::new(payload.0.clone()),
            }),
            InboxRecord::SenderKey { group, sender, taken } => {
                Received::SenderKey(ReceivedSenderKey {
                    group: *group,
                    sender: *sender,
                    taken: *taken,
                })
            }
            InboxRecord::Redelivered { sender, message_id } => {
                Received::Redelivered(Redelivered { sender: *sender, message_id: *message_id })
            }
            InboxRecord::RetryRequest { request } => {
                Received::RetryRequest(VerifiedRetryRequest::from_store(
                    RetryRequest::try_from(request.as_slice())
                        .map_err(|_| StoreError::Corrupt(Table::Inbox))?,
                ))
            }
        })
    }
}

/// The envelope digests last received from one device, newest last, each with the inbox entry
/// it produced.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct DedupRecord {
    seen: VecDeque<([u8; 32], u64)>,
}

impl DedupRecord {
    /// The inbox entry an envelope with this digest produced, if it was received.
    pub(super) fn find(&self, digest: &[u8; 32]) -> Option<InboxId> {
        self.seen
            .iter()
            .find(|(seen, _)| crate::crypto::ct_eq(seen, digest))
            .map(|(_, inbox)| InboxId(*inbox))
    }

    pub(super) fn remember(&mut self, digest: [u8; 32], inbox: InboxId) {
        self.seen.push_back((digest, inbox.0));
        while self.seen.len() > DEDUP_WINDOW {
            self.seen.pop_front();
        }
    }
}

/// The next outbox and inbox sequence numbers.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct Counters {
    pub(super) next_outbox: u64,
    pub(super) next_inbox: u64,
}
