//! A store that fails on purpose: it wraps a [`MemoryStore`] and fails the k-th write or the
//! k-th commit with [`StoreError::Injected`], counting writes and commits across every store
//! that shares one [`Faults`] plan. Used by the crash-safety scenarios through the public
//! `Store` and `Transaction` traits only.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use multidevice::store::{MemoryStore, Mode, Rows, Store, StoreError, Table, Transaction};
use multidevice::{Action, DeviceListError, FanoutError, ReceiveError, SessionError};

/// An error that may carry a store failure.
pub(crate) trait StoreFailure: fmt::Debug {
    /// The store failure, if that is what the error is.
    fn store_error(&self) -> Option<StoreError>;
    /// What the app should do about it.
    fn what_to_do(&self) -> Action;
}

macro_rules! store_failure_via_variant {
    ($($error:ty),*) => {$(
        impl StoreFailure for $error {
            fn store_error(&self) -> Option<StoreError> {
                match self {
                    Self::Store(error) => Some(*error),
                    _ => None,
                }
            }
            fn what_to_do(&self) -> Action {
                self.action()
            }
        }
    )*};
}
store_failure_via_variant!(FanoutError, ReceiveError, DeviceListError, SessionError);

impl StoreFailure for StoreError {
    fn store_error(&self) -> Option<StoreError> {
        Some(*self)
    }
    fn what_to_do(&self) -> Action {
        self.action()
    }
}

/// Where to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// The k-th `put` or `delete` (counted from 0 across the plan) fails; the caller sees
    /// `Injected` and the transaction is rolled back when dropped.
    Write(u64),
    /// The k-th commit of a write transaction fails before anything lands: a crash just before
    /// the commit reached the disk. Every change of the transaction is lost.
    Commit(u64),
    /// The k-th commit of a write transaction lands, then the caller sees `Injected`: a crash
    /// right after the commit, before the app saw the result of its call.
    CommitLands(u64),
}

impl Fault {
    /// Every kind of fault at `k`.
    pub(crate) fn kinds(k: u64) -> [Fault; 3] {
        [Fault::Write(k), Fault::Commit(k), Fault::CommitLands(k)]
    }

    /// Parses what [`fmt::Display`] prints (`write:17`, `commit:3`, `commit-lands:3`).
    pub(crate) fn parse(text: &str) -> Option<Fault> {
        let (kind, k) = text.split_once(':')?;
        let k = k.parse().ok()?;
        match kind {
            "write" => Some(Fault::Write(k)),
            "commit" => Some(Fault::Commit(k)),
            "commit-lands" => Some(Fault::CommitLands(k)),
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Write(k) => write!(f, "write:{k}"),
            Fault::Commit(k) => write!(f, "commit:{k}"),
            Fault::CommitLands(k) => write!(f, "commit-lands:{k}"),
        }
    }
}

/// The counters and the faults still to fire, shared by every store of one run.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Writes (`put` and `delete`) seen so far.
    pub(crate) writes: u64,
    /// Commits of write transactions seen so far.
    pub(crate) commits: u64,
    /// Faults not fired yet.
    pub(crate) pending: BTreeSet<Fault>,
    /// Faults fired, each with what it hit.
    pub(crate) fired: Vec<(Fault, String)>,
}

/// A shared fault plan. Clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults(Arc<Mutex<Plan>>);

impl Faults {
    /// A plan that fires each of `faults` once.
    pub(crate) fn new(faults: impl IntoIterator<Item = Fault>) -> Self {
        let plan = Plan { pending: faults.into_iter().collect(), ..Plan::default() };
        Self(Arc::new(Mutex::new(plan)))
    }

    pub(crate) fn plan(&self) -> MutexGuard<'_, Plan> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// (writes, commits) counted so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let plan = self.plan();
        (plan.writes, plan.commits)
    }

    /// The faults fired so far, with what each hit.
    pub(crate) fn fired(&self) -> Vec<(Fault, String)> {
        self.plan().fired.clone()
    }

    /// Counts one write; true if it must fail.
    fn write(&self, what: &str, table: Table) -> bool {
        let mut plan = self.plan();
        let fault = Fault::Write(plan.writes);
        plan.writes += 1;
        let fire = plan.pending.remove(&fault);
        if fire {
            plan.fired.push((fault, format!("{what} in {table:?}")));
        }
        fire
    }

    /// Counts one commit; the fault to apply to it, if any.
    fn commit(&self, writes_in_txn: usize) -> Option<Fault> {
        let mut plan = self.plan();
        let k = plan.commits;
        plan.commits += 1;
        let fault =
            [Fault::Commit(k), Fault::CommitLands(k)].into_iter().find(|f| plan.pending.remove(f));
        if let Some(fault) = fault {
            plan.fired.push((fault, format!("commit of {writes_in_txn} writes")));
        }
        fault
    }
}

/// A [`MemoryStore`] that fails as its [`Faults`] plan says.
#[derive(Debug, Clone)]
pub(crate) struct FaultStore {
    inner: MemoryStore,
    faults: Faults,
}

impl FaultStore {
    pub(crate) fn new(inner: MemoryStore, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

impl Store for FaultStore {
    fn transaction(&mut self, mode: Mode) -> Result<Box<dyn Transaction + '_>, StoreError> {
        let inner = self.inner.transaction(mode)?;
        Ok(Box::new(FaultTransaction { inner, faults: self.faults.clone(), mode, writes: 0 }))
    }
}

struct FaultTransaction<'a> {
    inner: Box<dyn Transaction + 'a>,
    faults: Faults,
    mode: Mode,
    writes: usize,
}

impl Transaction for FaultTransaction<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.mode == Mode::Write && self.faults.write("put", table) {
            return Err(StoreError::Injected);
        }
        self.writes += 1;
        self.inner.put(table, key, value)
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if self.mode == Mode::Write && self.faults.write("delete", table) {
            return Err(StoreError::Injected);
        }
        self.writes += 1;
        self.inner.delete(table, key)
    }

    fn scan(&mut self, table: Table, prefix: &[u8]) -> Result<Rows, StoreError> {
        self.inner.scan(table, prefix)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.mode != Mode::Write {
            return self.inner.commit();
        }
        match self.faults.commit(self.writes) {
            None => self.inner.commit(),
            // Dropping the inner transaction rolls it back: nothing lands.
            Some(Fault::Commit(_)) => Err(StoreError::Injected),
            Some(_) => {
                self.inner.commit()?;
                Err(StoreError::Injected)
            }
        }
    }
}
