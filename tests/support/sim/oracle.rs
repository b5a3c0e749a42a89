//! The oracle: every message sent, the devices that may read it, the devices that must, and what
//! each device read.
//!
//! A message is known by the token in its payload (the sender's app numbers what it sends), so a
//! message whose send result the app never saw (a crash after the commit) is still recognized
//! when it is read. Every read is checked at once: the reader is one the sender's state
//! authorized when it sent (else an unauthorized decryption), the payload, sender, kind and
//! message id are what was sent, and the reader's state lineage has not read it before (else a
//! duplicate). Whether every message arrived is checked once the run has quiesced
//! ([`Oracle::settle`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use multidevice::{AccountId, Conversation, DeviceAddress, GroupId, Timestamp};

/// What a message was sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    /// A fan-out to these accounts (sorted, distinct).
    Fanout { to: Vec<AccountId> },
    /// A group message.
    Group { group: GroupId },
}

/// Why a device the message was sent to may never read it: the named exclusions of the
/// "every message arrives" invariant (see the module documentation of `sim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rule {
    /// Its account's newest list no longer names the recipient.
    RecipientRemoved,
    /// Its account's newest list no longer names the sender: receivers refuse what it sent.
    SenderRemoved,
    /// The relay discarded the only copy for the recipient (or the retry request or answer that
    /// was to recover it): denial of service, which no protocol prevents.
    DroppedByRelay,
    /// The recipient read it, then was restored from a backup taken before: the read went with
    /// the rest of the state the backup did not have.
    RolledBack,
    /// A retry was refused because the message left the sender's cache (older than its age
    /// limit, or pushed out by its entry limit).
    OutsideSenderCache,
    /// A retry was refused because the sender was restored from a backup taken before it sent
    /// the message, so its cache never held it.
    SenderRestored,
    /// The sender answered every retry it allows for the message and device.
    RetriesExhausted,
}

impl Rule {
    pub(crate) const ALL: [Rule; 7] = [
        Rule::RecipientRemoved,
        Rule::SenderRemoved,
        Rule::DroppedByRelay,
        Rule::RolledBack,
        Rule::OutsideSenderCache,
        Rule::SenderRestored,
        Rule::RetriesExhausted,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Rule::RecipientRemoved => "recipient removed",
            Rule::SenderRemoved => "sender removed",
            Rule::DroppedByRelay => "dropped by the relay",
            Rule::RolledBack => "read, then rolled back by a restore",
            Rule::OutsideSenderCache => "outside the sender's cache",
            Rule::SenderRestored => "sender restored to before it sent",
            Rule::RetriesExhausted => "retries exhausted",
        }
    }

    fn index(self) -> usize {
        Rule::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// One message as its sender's app sent it.
pub(crate) struct Message {
    pub(crate) sender: DeviceAddress,
    pub(crate) sent: Sent,
    pub(crate) payload: Vec<u8>,
    pub(crate) sent_at: Timestamp,
    /// Its message id, once a send result or a read showed it.
    pub(crate) id: Option<[u8; 16]>,
    /// Devices the sender's state authorized when it sent: only these may read it.
    pub(crate) authorized: BTreeSet<DeviceAddress>,
    /// Devices it was sent to: each must read it, unless a rule excuses it.
    pub(crate) owed: BTreeSet<DeviceAddress>,
    /// Exclusions found during the run, per recipient.
    excused: BTreeMap<DeviceAddress, Rule>,
    /// What happened on the way, for a loss report.
    notes: Vec<String>,
}

/// Payload bytes before the token.
const MAGIC: &[u8; 4] = b"SIM\0";
/// Payload length of an inline message, and of one with a shared body (above the 512-byte
/// inline threshold).
const SMALL: usize = 40;
const LARGE: usize = 700;

/// The payload of message `token`: the token, then bytes derived from it.
pub(crate) fn payload(token: u64, large: bool) -> Vec<u8> {
    let len = if large { LARGE } else { SMALL };
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&token.to_be_bytes());
    let fill = token.to_le_bytes();
    out.extend((out.len()..len).map(|i| fill[i % 8] ^ i.to_le_bytes()[0]));
    out
}

fn token_of(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(MAGIC)?;
    Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
}

/// What the final check needs to know about a device.
pub(crate) struct Reader<'a> {
    /// Read by the device's current state lineage.
    pub(crate) delivered: &'a BTreeSet<u64>,
    /// Read by an earlier lineage, which a restore rolled back.
    pub(crate) rolled_back: &'a BTreeSet<u64>,
    /// Named by its account's newest list.
    pub(crate) listed: bool,
}

/// The counts the final check adds to the run's statistics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Settled {
    /// (message, device) pairs that had to arrive.
    pub(crate) owed: u64,
    /// Of those, read.
    pub(crate) arrived: u64,
    /// Of those, excused, by rule.
    pub(crate) excluded: [u64; Rule::ALL.len()],
    /// Of those, neither read nor excused.
    pub(crate) lost: u64,
}

#[derive(Default)]
pub(crate) struct Oracle {
    messages: BTreeMap<u64, Message>,
    next_token: u64,
    by_id: BTreeMap<[u8; 16], u64>,
    /// The reference (last 16 bytes) of every envelope and group message that carried a
    /// message, with the message and, for an envelope, the device it was for.
    refs: BTreeMap<[u8; 16], (u64, Option<DeviceAddress>)>,
}

/// The reference of an envelope or group message: its last 16 bytes, as retry requests name it.
pub(crate) fn reference(bytes: &[u8]) -> Option<[u8; 16]> {
    bytes.split_last_chunk::<16>().map(|(_, tail)| *tail)
}

impl Oracle {
    /// The next message's token and payload; the message exists once [`Oracle::record`]ed.
    pub(crate) fn next(&mut self, large: bool) -> (u64, Vec<u8>) {
        let token = self.next_token;
        self.next_token += 1;
        (token, payload(token, large))
    }

    /// A message the sender's state committed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        token: u64,
        sender: DeviceAddress,
        sent: Sent,
        payload: Vec<u8>,
        sent_at: Timestamp,
        id: Option<[u8; 16]>,
        authorized: BTreeSet<DeviceAddress>,
        owed: BTreeSet<DeviceAddress>,
    ) {
        assert!(
            owed.is_subset(&authorized),
            "message {token}: sent to a device it did not authorize"
        );
        if let Some(id) = id {
            self.by_id.insert(id, token);
        }
        let message = Message {
            sender,
            sent,
            payload,
            sent_at,
            id,
            authorized,
            owed,
            excused: BTreeMap::new(),
            notes: Vec::new(),
        };
        self.messages.insert(token, message);
    }

    pub(crate) fn message(&self, token: u64) -> Option<&Message> {
        self.messages.get(&token)
    }

    /// Remembers that `bytes` carried message `token` (to `recipient`, for an envelope).
    pub(crate) fn carried(&mut self, bytes: &[u8], token: u64, recipient: Option<DeviceAddress>) {
        if let Some(reference) = reference(bytes) {
            self.refs.insert(reference, (token, recipient));
        }
    }

    /// The message, and the device for an envelope, that the bytes with `reference` carried.
    pub(crate) fn carrier(&self, reference: &[u8; 16]) -> Option<(u64, Option<DeviceAddress>)> {
        self.refs.get(reference).copied()
    }

    pub(crate) fn token_by_id(&self, id: &[u8; 16]) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// Binds a message id learned later (from a read, or a retry answer) to its message.
    pub(crate) fn learn_id(&mut self, token: u64, id: [u8; 16]) {
        if let Some(message) = self.messages.get_mut(&token) {
            assert!(
                message.id.is_none_or(|known| known == id),
                "message {token} came with two message ids"
            );
            message.id = Some(id);
            self.by_id.insert(id, token);
        }
    }

    /// Excuses `device` from reading `token` (the first rule found stays).
    pub(crate) fn excuse(&mut self, token: u64, device: DeviceAddress, rule: Rule) {
        if let Some(message) = self.messages.get_mut(&token)
            && message.owed.contains(&device)
        {
            message.excused.entry(device).or_insert(rule);
        }
    }

    /// Notes what happened to a message, for the report should it be lost.
    pub(crate) fn note(&mut self, token: u64, note: impl fmt::Display) {
        if let Some(message) = self.messages.get_mut(&token) {
            message.notes.push(note.to_string());
        }
    }

    /// Checks one read of a message by `reader`, whose lineage has read `delivered`, and adds
    /// it there. Panics on an unauthorized or duplicate read, or one that differs from what was
    /// sent.
    pub(crate) fn read(
        &mut self,
        reader: DeviceAddress,
        delivered: &mut BTreeSet<u64>,
        read: Read<'_>,
    ) -> u64 {
        let token = token_of(read.payload)
            .unwrap_or_else(|| panic!("{reader} read a payload nobody sent: {:?}", read.payload));
        let message = self
            .messages
            .get(&token)
            .unwrap_or_else(|| panic!("{reader} read message {token}, which was never sent"));
        assert!(
            message.authorized.contains(&reader),
            "UNAUTHORIZED DECRYPTION: {reader} read message {token} from {}, which its sender \
             authorized only for {:?}",
            message.sender,
            message.authorized
        );
        assert_eq!(read.payload, message.payload.as_slice(), "{reader}: message {token} altered");
        assert_eq!(read.sender, message.sender, "{reader}: message {token} from the wrong sender");
        match (&message.sent, &read.how) {
            (Sent::Fanout { to }, How::Message(conversation)) => {
                let expected = if reader.account == message.sender.account {
                    Conversation::OwnCopy { to: to.clone() }
                } else {
                    Conversation::Direct
                };
                assert_eq!(*conversation, &expected, "{reader}: message {token} as the wrong kind");
            }
            (Sent::Group { group }, How::Group(read_group)) => {
                assert_eq!(group, *read_group, "{reader}: message {token} in the wrong group");
            }
            (sent, how) => panic!("{reader}: message {token} sent as {sent:?}, read as {how:?}"),
        }
        self.learn_id(token, read.id);
        assert!(
            delivered.insert(token),
            "DUPLICATE: {reader} read message {token} twice on one state lineage"
        );
        token
    }

    /// Checks a message `reader` decrypted again and reported as `Redelivered`: it decrypted it,
    /// so it too must be authorized.
    pub(crate) fn read_again(&self, reader: DeviceAddress, sender: DeviceAddress, id: &[u8; 16]) {
        let Some(token) = self.token_by_id(id) else { return };
        let message = &self.messages[&token];
        assert_eq!(
            sender, message.sender,
            "{reader}: message {token} again, from the wrong sender"
        );
        assert!(
            message.authorized.contains(&reader),
            "UNAUTHORIZED DECRYPTION: {reader} decrypted message {token} from {} again, which \
             its sender authorized only for {:?}",
            message.sender,
            message.authorized
        );
    }

    /// Checks that every (message, device) pair owed was read or is excused, given what each
    /// device read (`readers`); returns the counts and a report of every loss.
    pub(crate) fn settle(
        &self,
        readers: &BTreeMap<DeviceAddress, Reader<'_>>,
    ) -> (Settled, Vec<String>) {
        let mut settled = Settled::default();
        let mut losses = Vec::new();
        for (token, message) in &self.messages {
            let sender_listed = readers.get(&message.sender).is_some_and(|r| r.listed);
            for device in &message.owed {
                settled.owed += 1;
                let Some(reader) = readers.get(device) else { continue };
                if reader.delivered.contains(token) {
                    settled.arrived += 1;
                    continue;
                }
                let rule = if !reader.listed {
                    Some(Rule::RecipientRemoved)
                } else if !sender_listed {
                    Some(Rule::SenderRemoved)
                } else if reader.rolled_back.contains(token) {
                    Some(Rule::RolledBack)
                } else {
                    message.excused.get(device).copied()
                };
                match rule {
                    Some(rule) => settled.excluded[rule.index()] += 1,
                    None => {
                        settled.lost += 1;
                        losses.push(format!(
                            "LOST: message {token} ({:?}) from {} to {device}, sent at {}; \
                             history: {:?}",
                            message.sent, message.sender, message.sent_at.0, message.notes
                        ));
                    }
                }
            }
        }
        (settled, losses)
    }
}

/// How a message was read.
#[derive(Debug)]
pub(crate) enum How<'a> {
    Message(&'a Conversation),
    Group(&'a GroupId),
}

/// One read, as the reader's device reported it.
pub(crate) struct Read<'a> {
    pub(crate) sender: DeviceAddress,
    pub(crate) id: [u8; 16],
    pub(crate) payload: &'a [u8],
    pub(crate) how: How<'a>,
}
