//! Persistent state as records in a transactional key-value store.
//!
//! A [`Store`] keeps opaque rows in a few tables. [`crate::StoredDevice`] runs every operation
//! in one write transaction: it reads the records the operation needs, and commits the records
//! the operation changed, with what it sends (the outbox) and what it received (the inbox),
//! atomically. A store never sees a secret or a contact's address: every row is encrypted under
//! keys derived from the 32-byte [`StoreKey`] and every lookup key is a keyed hash before a row
//! reaches a [`Store`]. This module owns the row layer; it never decides anything about the
//! protocol.
//!
//! Two stores come with the crate: [`MemoryStore`], for tests and for apps that bring their own
//! database, and (feature `sqlite`, on by default) [`SqliteStore`], one SQLite file in WAL mode.
//! An app may implement [`Store`] over its own database: a write transaction must be atomic and
//! isolated, and serialized with every other writer of the same state.

mod memory;
pub(crate) mod sealed;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use crate::error::StoreError;
pub use memory::MemoryStore;
pub use sealed::StoreKey;
#[cfg(feature = "sqlite")]
pub use sqlite::{PassphraseParams, SqliteOptions, SqliteStore, Synchronous};

/// The tables of a store. Their numbers are part of the stored format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Table {
    /// The device's identity and settings, role, clock and prekey bookkeeping.
    Meta,
    /// One row per one-time prekey.
    OneTimePrekey,
    /// One row per remote device: its session record.
    Session,
    /// One row per remote account: its held device list.
    Account,
    /// Pending link state: offers, approvals, pairing attempts.
    Link,
    /// What operations produced and the app has not marked sent yet.
    Outbox,
    /// Per remote device, the messages already processed.
    Dedup,
    /// What operations received and the app has not acknowledged yet.
    Inbox,
    /// One row per group this device sends to: its sender key and who holds it.
    Group,
    /// One row per sending device and group: the sender keys it distributed.
    GroupKey,
    /// One row per message kept for retries.
    SentMessage,
    /// One row per sending device: the message ids it delivered last, and retries asked of it.
    Peer,
}

impl Table {
    /// Every table, in number order.
    pub const ALL: [Table; 12] = [
        Table::Meta,
        Table::OneTimePrekey,
        Table::Session,
        Table::Account,
        Table::Link,
        Table::Outbox,
        Table::Dedup,
        Table::Inbox,
        Table::Group,
        Table::GroupKey,
        Table::SentMessage,
        Table::Peer,
    ];

    /// The table's number in the stored format.
    pub fn number(self) -> u8 {
        match self {
            Table::Meta => 1,
            Table::OneTimePrekey => 2,
            Table::Session => 3,
            Table::Account => 4,
            Table::Link => 5,
            Table::Outbox => 6,
            Table::Dedup => 7,
            Table::Inbox => 8,
            Table::Group => 9,
            Table::GroupKey => 10,
            Table::SentMessage => 11,
            Table::Peer => 12,
        }
    }
}

/// Whether a transaction only reads or also writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reads only; [`Transaction::put`] and [`Transaction::delete`] fail.
    Read,
    /// Reads and writes; writers are serialized, across processes where the store is shared.
    Write,
}

/// Rows as a scan returns them: stored key, then value.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A transactional key-value store of opaque rows, grouped in [`Table`]s.
///
/// Implementations must make a write transaction atomic and isolated: either all of its puts
/// and deletes become visible at [`Transaction::commit`], or none does, and no two write
/// transactions interleave. The rows the crate hands over are already encrypted and their keys
/// already hashed; a store only keeps bytes.
pub trait Store: Send {
    /// Starts a transaction.
    fn transaction(&mut self, mode: Mode) -> Result<Box<dyn Transaction + '_>, StoreError>;
}

/// One transaction of a [`Store`]. Dropping it without [`Transaction::commit`] rolls it back.
pub trait Transaction {
    /// The row at `key` in `table`, if any.
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Inserts or replaces the row at `key`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Deletes the row at `key`, if any.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
    /// Every row of `table` whose key starts with `prefix`, in key order.
    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<Rows, StoreError>;
    /// Makes every change of the transaction durable and visible, atomically.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}
