//! The simulation's store: memory or an SQLite file, with a switch that makes the next write
//! commit fail (a crash just before or just after the commit reaches the disk), and whole-store
//! copies for backups.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use multidevice::store::{
    MemoryStore, Mode, Rows, SqliteOptions, SqliteStore, Store, StoreError, Synchronous, Table,
    Transaction,
};

/// Where the next write commit fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Nothing of the transaction lands.
    BeforeCommit,
    /// The transaction lands, then the caller sees the failure.
    AfterCommit,
}

/// Arms a fault for the next write commit of one device's store. Clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultSwitch(Arc<Mutex<Option<Fault>>>);

impl FaultSwitch {
    pub(crate) fn arm(&self, fault: Option<Fault>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// The armed fault, disarmed.
    fn take(&self) -> Option<Fault> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// True if the armed fault has not fired.
    pub(crate) fn armed(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

/// Where the devices of one run keep their state.
pub(crate) enum Storage {
    Memory,
    /// One SQLite file per device and restore, in a directory removed when the run ends.
    Sqlite {
        dir: PathBuf,
    },
}

impl Storage {
    pub(crate) fn sqlite() -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("multidevice-sim-{}-{run}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the simulation's SQLite directory");
        Storage::Sqlite { dir }
    }

    /// A new, empty store for `name`.
    pub(crate) fn create(&self, name: &str, fault: &FaultSwitch) -> SimStore {
        let backend = match self {
            Storage::Memory => Backend::Memory(MemoryStore::new()),
            Storage::Sqlite { dir } => {
                let path = dir.join(format!("{name}.db"));
                // A store replaced by a restore reuses no file.
                let _ = std::fs::remove_file(&path);
                Backend::Sqlite { store: open_sqlite(&path), path }
            }
        };
        SimStore { backend, fault: fault.clone() }
    }

    pub(crate) fn is_sqlite(&self) -> bool {
        matches!(self, Storage::Sqlite { .. })
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Sqlite { dir } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn open_sqlite(path: &PathBuf) -> SqliteStore {
    // An app crash (not a power loss) is what the simulation models: NORMAL keeps every commit.
    let options = SqliteOptions::default().with_synchronous(Synchronous::Normal);
    SqliteStore::open(path, &options).expect("open an SQLite store")
}

enum Backend {
    Memory(MemoryStore),
    Sqlite { store: SqliteStore, path: PathBuf },
}

/// One device's store.
pub(crate) struct SimStore {
    backend: Backend,
    fault: FaultSwitch,
}

impl SimStore {
    /// The same rows as after a process restart: an SQLite file is opened again.
    pub(crate) fn reopened(self) -> SimStore {
        let backend = match self.backend {
            Backend::Memory(store) => Backend::Memory(store),
            Backend::Sqlite { store, path } => {
                drop(store);
                Backend::Sqlite { store: open_sqlite(&path), path }
            }
        };
        SimStore { backend, fault: self.fault }
    }

    /// Every row, table by table: a backup.
    pub(crate) fn rows(&mut self) -> Vec<(Table, Rows)> {
        let mut txn = self.transaction(Mode::Read).expect("read the store");
        Table::ALL.into_iter().map(|table| (table, txn.scan(table, &[]).expect("scan"))).collect()
    }

    /// Writes `rows` into this (empty) store: a restore.
    pub(crate) fn fill(&mut self, rows: &[(Table, Rows)]) {
        let mut txn = self.transaction(Mode::Write).expect("write the store");
        for (table, rows) in rows {
            for (key, value) in rows {
                txn.put(*table, key, value).expect("put");
            }
        }
        txn.commit().expect("commit");
    }
}

impl Store for SimStore {
    fn transaction(&mut self, mode: Mode) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let inner = match &mut self.backend {
            Backend::Memory(store) => store.transaction(mode)?,
            Backend::Sqlite { store, .. } => store.transaction(mode)?,
        };
        Ok(Box::new(SimTransaction { inner, fault: self.fault.clone(), mode }))
    }
}

struct SimTransaction<'a> {
    inner: Box<dyn Transaction + 'a>,
    fault: FaultSwitch,
    mode: Mode,
}

impl Transaction for SimTransaction<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(table, key, value)
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(table, key)
    }

    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<Rows, StoreError> {
        self.inner.scan(table, prefix)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.mode != Mode::Write {
            return self.inner.commit();
        }
        match self.fault.take() {
            None => self.inner.commit(),
            // Dropping the inner transaction rolls it back.
            Some(Fault::BeforeCommit) => Err(StoreError::Injected),
            Some(Fault::AfterCommit) => {
                self.inner.commit()?;
                Err(StoreError::Injected)
            }
        }
    }
}
