//! The embedded store: one SQLite file (compiled in through `rusqlite`'s `bundled` feature).
//!
//! One table holds every row, keyed by (table number, stored key); a schema-version table drives
//! forward migrations; a one-row table keeps the Argon2id parameters and salt of a store opened
//! with a passphrase. The file is in WAL mode, so readers never block the writer, and write
//! transactions start with `BEGIN IMMEDIATE`: two processes on one file take turns, waiting up
//! to the configured busy timeout before [`StoreError::Busy`]. Deleted rows are overwritten
//! (`secure_delete`). This module never sees a plaintext record.

use std::path::Path;
use std::time::Duration;

use rand_core::CryptoRng;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::sealed::StoreKey;
use super::{Mode, Store, StoreError, Table, Transaction};

/// The newest schema this crate writes. Each entry of [`MIGRATIONS`] moves one version up.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// Forward migrations: `MIGRATIONS[i]` takes a file from version `i` to `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 0 -> 1: the rows, and the passphrase parameters.
    "CREATE TABLE rows (
         tbl INTEGER NOT NULL,
         key BLOB NOT NULL,
         value BLOB NOT NULL,
         PRIMARY KEY (tbl, key)
     ) WITHOUT ROWID;
     CREATE TABLE passphrase_kdf (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         salt BLOB NOT NULL,
         memory_kib INTEGER NOT NULL,
         iterations INTEGER NOT NULL,
         parallelism INTEGER NOT NULL
     );",
];

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit reaches the disk before it returns (`PRAGMA synchronous = FULL`): a power
    /// loss never undoes a commit, so a message the app sent after a commit is never encrypted
    /// again under the same key. The default.
    Full,
    /// Commits survive a crash of the app but may be undone by a power loss or an OS crash
    /// (`PRAGMA synchronous = NORMAL`): faster, and a message sent just before the power loss
    /// may then be rejected by its recipient as a duplicate.
    Normal,
}

/// Argon2id parameters for a store opened with a passphrase. Kept in the file when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassphraseParams {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for PassphraseParams {
    /// OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How long a write waits for another process's transaction before [`StoreError::Busy`].
    pub busy_timeout: Duration,
    /// How durable a commit is.
    pub synchronous: Synchronous,
    /// Argon2id parameters of a new store opened with a passphrase.
    pub passphrase: PassphraseParams,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Full,
            passphrase: PassphraseParams::default(),
        }
    }
}

impl SqliteOptions {
    /// These options with another busy timeout.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// These options with another durability.
    pub fn with_synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// These options with other Argon2id parameters for a new passphrase store.
    pub fn with_passphrase_params(mut self, params: PassphraseParams) -> Self {
        self.passphrase = params;
        self
    }
}

/// A [`Store`] in one SQLite file.
///
/// ```
/// use multidevice::store::{SqliteOptions, SqliteStore, StoreKey};
/// # let dir = std::env::temp_dir().join(format!("md-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("device.db"), &SqliteOptions::default())?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SqliteStore {
    connection: Connection,
}

impl core::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.connection.path()).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, and migrates it to the newest schema.
    /// The app supplies the store key to [`crate::StoredDevice`].
    pub fn open(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(backend)?;
        Self::configure(connection, options)
    }

    /// Opens (creating if needed) the store at `path` and derives its key from `passphrase`
    /// with Argon2id. A new store draws a random salt and keeps it, with
    /// [`SqliteOptions::passphrase`], in the file; an existing one uses what it keeps. A wrong
    /// passphrase surfaces as [`StoreError::WrongKey`] when the device is opened.
    pub fn open_with_passphrase(
        path: impl AsRef<Path>,
        passphrase: &[u8],
        options: &SqliteOptions,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<(Self, StoreKey), StoreError> {
        let mut store = Self::open(path, options)?;
        let (salt, params) = store.passphrase_kdf(options.passphrase, rng)?;
        let key = derive_passphrase_key(passphrase, &salt, params)?;
        Ok((store, key))
    }

    fn configure(connection: Connection, options: &SqliteOptions) -> Result<Self, StoreError> {
        connection.busy_timeout(options.busy_timeout).map_err(backend)?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(backend)?;
        // An in-memory database stays in its own journal mode; a file must be in WAL.
        if mode != "wal" && mode != "memory" {
            return Err(StoreError::Backend { code: 0 });
        }
        let synchronous = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        connection.pragma_update(None, "synchronous", synchronous).map_err(backend)?;
        connection.pragma_update(None, "secure_delete", "ON").map_err(backend)?;
        let mut store = Self { connection };
        store.migrate()?;
        Ok(store)
    }

    /// Brings the file to [`SCHEMA_VERSION`], one migration at a time, in one transaction. A file
    /// already current is only read, so opening it never waits for another process's writer.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let current: Option<u32> = self
            .connection
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .optional()
            .ok()
            .flatten();
        if let Some(found) = current {
            return match found.cmp(&SCHEMA_VERSION) {
                core::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew { found }),
                core::cmp::Ordering::Equal => Ok(()),
                core::cmp::Ordering::Less => self.migrate_in_transaction(),
            };
        }
        self.migrate_in_transaction()
    }

    fn migrate_in_transaction(&mut self) -> Result<(), StoreError> {
        let txn = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", [])
            .map_err(backend)?;
        let found: Option<u32> = txn
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .optional()
            .map_err(backend)?;
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found });
        }
        for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(usize::MAX)) {
            txn.execute_batch(migration).map_err(backend)?;
        }
        if found < SCHEMA_VERSION {
            txn.execute("DELETE FROM schema_version", []).map_err(backend)?;
            txn.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION])
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.connection
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .map_err(backend)
    }

    /// The salt and parameters kept in the file, written first if the store has none.
    fn passphrase_kdf(
        &mut self,
        params: PassphraseParams,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<([u8; 16], PassphraseParams), StoreError> {
        let txn = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let kept = txn
            .query_row(
                "SELECT salt, memory_kib, iterations, parallelism FROM passphrase_kdf WHERE id = 1",
                [],
                |row| {
                    let salt: Vec<u8> = row.get(0)?;
                    Ok((
                        salt,
                        PassphraseParams {
                            memory_kib: row.get(1)?,
                            iterations: row.get(2)?,
                            parallelism: row.get(3)?,
                        },
                    ))
                },
            )
            .optional()
            .map_err(backend)?;
        let (salt, params) = match kept {
            Some((salt, params)) => {
                let salt: [u8; 16] =
                    salt.as_slice().try_into().map_err(|_| StoreError::Corrupt(Table::Meta))?;
                (salt, params)
            }
            None => {
                let mut salt = [0u8; 16];
                rng.fill_bytes(&mut salt);
                txn.execute(
                    "INSERT INTO passphrase_kdf (id, salt, memory_kib, iterations, parallelism)
                     VALUES (1, ?1, ?2, ?3, ?4)",
                    params![
                        salt.as_slice(),
                        params.memory_kib,
                        params.iterations,
                        params.parallelism
                    ],
                )
                .map_err(backend)?;
                (salt, params)
            }
        };
        txn.commit().map_err(backend)?;
        Ok((salt, params))
    }
}

/// Argon2id over the passphrase and salt, to a 32-byte store key.
fn derive_passphrase_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    params: PassphraseParams,
) -> Result<StoreKey, StoreError> {
    let argon_params =
        argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
            .map_err(|_| StoreError::Corrupt(Table::Meta))?;
    let argon =
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut key = StoreKey::from_bytes(&[0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut_bytes())
        .map_err(|_| StoreError::Corrupt(Table::Meta))?;
    Ok(key)
}

/// A store error from a database error: a lock held past the timeout is [`StoreError::Busy`].
fn backend(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error() {
        Some(e) if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy
        }
        Some(e) => StoreError::Backend { code: e.extended_code },
        None => StoreError::Backend { code: -1 },
    }
}

impl Store for SqliteStore {
    fn transaction(&mut self, mode: Mode) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let behavior = match mode {
            Mode::Read => TransactionBehavior::Deferred,
            Mode::Write => TransactionBehavior::Immediate,
        };
        let txn = self.connection.transaction_with_behavior(behavior).map_err(backend)?;
        Ok(Box::new(SqliteTransaction { txn, mode }))
    }
}

/// One SQLite transaction; dropped without commit, it rolls back.
struct SqliteTransaction<'c> {
    txn: rusqlite::Transaction<'c>,
    mode: Mode,
}

impl SqliteTransaction<'_> {
    fn writable(&self) -> Result<(), StoreError> {
        match self.mode {
            Mode::Write => Ok(()),
            Mode::Read => Err(StoreError::ReadOnly),
        }
    }
}

impl Transaction for SqliteTransaction<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut statement = self
            .txn
            .prepare_cached("SELECT value FROM rows WHERE tbl = ?1 AND key = ?2")
            .map_err(backend)?;
        statement
            .query_row(params![table.number(), key], |row| row.get(0))
            .optional()
            .map_err(backend)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        let mut statement = self
            .txn
            .prepare_cached("INSERT OR REPLACE INTO rows (tbl, key, value) VALUES (?1, ?2, ?3)")
            .map_err(backend)?;
        statement.execute(params![table.number(), key, value]).map_err(backend)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        let mut statement = self
            .txn
            .prepare_cached("DELETE FROM rows WHERE tbl = ?1 AND key = ?2")
            .map_err(backend)?;
        statement.execute(params![table.number(), key]).map_err(backend)?;
        Ok(())
    }

    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<super::Rows, StoreError> {
        // Keys with the prefix sort from the prefix itself up to (not including) the prefix
        // with its last non-0xff byte incremented; an all-0xff or empty prefix has no bound.
        let mut upper = prefix.to_vec();
        while upper.last() == Some(&0xff) {
            upper.pop();
        }
        if let Some(last) = upper.last_mut() {
            *last += 1;
        }
        let mut statement = if upper.is_empty() {
            self.txn
                .prepare_cached("SELECT key, value FROM rows WHERE tbl = ?1 AND key >= ?2 ORDER BY key")
        } else {
            self.txn.prepare_cached(
                "SELECT key, value FROM rows WHERE tbl = ?1 AND key >= ?2 AND key < ?3 ORDER BY key",
            )
        }
        .map_err(backend)?;
        let map = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?));
        let rows = if upper.is_empty() {
            statement.query_map(params![table.number(), prefix], map)
        } else {
            statement.query_map(params![table.number(), prefix, upper], map)
        }
        .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.txn.commit().map_err(backend)
    }
}
