//! An in-memory [`Store`]: for tests, and for apps that keep the rows in a database of their own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Mode, Store, StoreError, Table, Transaction};

type AllRows = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

/// Rows kept in memory. Clones share the same rows, as two processes share one database file:
/// transactions on any clone are serialized and atomic.
///
/// ```
/// use multidevice::store::{MemoryStore, Mode, Store, Table};
///
/// let mut store = MemoryStore::new();
/// let mut txn = store.transaction(Mode::Write)?;
/// txn.put(Table::Meta, b"k", b"v")?;
/// txn.commit()?;
/// let mut other = store.clone();
/// assert_eq!(other.transaction(Mode::Read)?.get(Table::Meta, b"k")?, Some(b"v".to_vec()));
/// # Ok::<(), multidevice::store::StoreError>(())
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    rows: Arc<Mutex<AllRows>>,
}

impl core::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryStore").field("rows", &self.lock().len()).finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, AllRows> {
        // A panic while the lock was held leaves no half-applied transaction: commits apply
        // only after every change was staged.
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every row, for tests that inspect or edit what the crate stored.
    pub fn rows(&self) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
        self.lock()
            .iter()
            .filter_map(|((table, key), value)| {
                let table = Table::ALL.into_iter().find(|t| t.number() == *table)?;
                Some((table, key.clone(), value.clone()))
            })
            .collect()
    }

    /// Replaces the row at `key` in `table` (tests that tamper with the store).
    pub fn set_row(&self, table: Table, key: &[u8], value: Option<&[u8]>) {
        let mut rows = self.lock();
        match value {
            Some(value) => rows.insert((table.number(), key.to_vec()), value.to_vec()),
            None => rows.remove(&(table.number(), key.to_vec())),
        };
    }
}

impl Store for MemoryStore {
    fn transaction(&mut self, mode: Mode) -> Result<Box<dyn Transaction + '_>, StoreError> {
        Ok(Box::new(MemoryTransaction { rows: self.lock(), staged: BTreeMap::new(), mode }))
    }
}

/// Holds the store's lock for its whole life, so transactions never interleave; changes are
/// staged and applied only at commit.
struct MemoryTransaction<'a> {
    rows: MutexGuard<'a, AllRows>,
    staged: BTreeMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    mode: Mode,
}

impl MemoryTransaction<'_> {
    fn writable(&self) -> Result<(), StoreError> {
        match self.mode {
            Mode::Write => Ok(()),
            Mode::Read => Err(StoreError::ReadOnly),
        }
    }
}

impl Transaction for MemoryTransaction<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let id = (table.number(), key.to_vec());
        Ok(match self.staged.get(&id) {
            Some(staged) => staged.clone(),
            None => self.rows.get(&id).cloned(),
        })
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.staged.insert((table.number(), key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.staged.insert((table.number(), key.to_vec()), None);
        Ok(())
    }

    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<super::Rows, StoreError> {
        let number = table.number();
        let mut found: BTreeMap<Vec<u8>, Vec<u8>> = self
            .rows
            .range((number, prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == number && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        for ((t, key), value) in &self.staged {
            if *t == number && key.starts_with(prefix) {
                match value {
                    Some(value) => found.insert(key.clone(), value.clone()),
                    None => found.remove(key),
                };
            }
        }
        Ok(found.into_iter().collect())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let staged = core::mem::take(&mut self.staged);
        for (id, value) in staged {
            match value {
                Some(value) => self.rows.insert(id, value),
                None => self.rows.remove(&id),
            };
        }
        Ok(())
    }
}
