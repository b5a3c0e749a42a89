//! Every row encrypted at rest, every lookup key a keyed hash.
//!
//! From the 32-byte [`StoreKey`] and the store's random 16-byte identifier come a record key
//! (AES-256-GCM) and a lookup key (HMAC-SHA256); a key check tells a wrong key. A record of table `t` with natural key `n` (an address, an
//! account id, a prekey id) is stored at `lookup = HMAC(lookup key, label || 0x00 || t || n)`
//! as `nonce (12) || AES-256-GCM(record key, nonce, aad, len(n) (u16) || n || record) || tag`,
//! with `aad = label || 0x00 || schema version (u32) || t || lookup`. A row moved to another key
//! or table, copied from another store, or sealed under another schema version fails
//! authentication, and the file names no contact. Nonces are `HMAC(nonce key, counter)` from a
//! nonce key drawn from the app's randomness each time a store is opened, so two processes on
//! one file never share a nonce sequence. This module never interprets a record.

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{StoreError, Table, Transaction};
use crate::crypto::{self, Secret32};

/// The version of the record format, bound into every row's associated data.
pub(crate) const RECORD_SCHEMA: u32 = 1;

use crate::crypto::label::{
    STORE_GROUP as LABEL_GROUP, STORE_KEY_CHECK as LABEL_KEY_CHECK, STORE_LOOKUP as LABEL_LOOKUP,
    STORE_LOOKUP_KEY as LABEL_LOOKUP_KEY, STORE_NONCE as LABEL_NONCE,
    STORE_RECORD_AAD as LABEL_RECORD_AAD, STORE_RECORD_KEY as LABEL_RECORD_KEY,
};
/// The stored key of the row holding the store's identifier and key check.
const KEY_CHECK: &[u8] = b"key-check";

/// The 32-byte key a store is encrypted under, wiped on drop.
///
/// Take it from the platform's keychain ([`StoreKey::from_bytes`]), generate one
/// ([`StoreKey::generate`]) and keep it there, or derive it from a passphrase with Argon2id
/// ([`crate::store::SqliteStore::open_with_passphrase`]).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct StoreKey(Box<[u8; 32]>);

impl StoreKey {
    /// A key the app keeps itself, for example in the platform keychain.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Box::new(*bytes))
    }

    /// A fresh random key.
    pub fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut key = Self(Box::new([0u8; 32]));
        rng.fill_bytes(key.0.as_mut_slice());
        key
    }

    /// The key bytes, to keep in the platform keychain.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn as_mut_bytes(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl core::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// The keys derived from a [`StoreKey`], and the nonce sequence of this opening.
pub(crate) struct Keys {
    record: Secret32,
    lookup: Secret32,
    nonce_key: Secret32,
    nonce_counter: u64,
}

impl Keys {
    /// The keys of the store `txn` belongs to: reads its identifier and key check, or, for a
    /// new store (`create`), draws an identifier and writes them. Every key is derived with the
    /// identifier as salt, so two stores under one store key share no key: a row copied from
    /// one into the other fails authentication. A wrong key is [`StoreError::WrongKey`].
    ///
    /// The identifier and check sit at a fixed stored key no lookup hash can take (lookup keys
    /// are 32 bytes), so they are found whatever the key; the check is
    /// `HMAC(store key, label || 0x00 || identifier)`, which reveals nothing about the key.
    pub(crate) fn open(
        txn: &mut dyn Transaction,
        key: &StoreKey,
        rng: &mut (impl CryptoRng + ?Sized),
        create: bool,
    ) -> Result<Self, StoreError> {
        let check = |id: &[u8; 16]| crypto::mac(key.as_bytes(), LABEL_KEY_CHECK, &[id]);
        let id = match txn.get(Table::Meta, KEY_CHECK)? {
            None if create => {
                let mut id = [0u8; 16];
                rng.fill_bytes(&mut id);
                let mut row = id.to_vec();
                row.extend_from_slice(&check(&id));
                txn.put(Table::Meta, KEY_CHECK, &row)?;
                id
            }
            None => return Err(StoreError::Missing(Table::Meta)),
            Some(row) => {
                let (id, stored) =
                    row.split_first_chunk::<16>().ok_or(StoreError::Corrupt(Table::Meta))?;
                if !crypto::ct_eq(stored, &check(id)) {
                    return Err(StoreError::WrongKey);
                }
                *id
            }
        };
        let derive = |label: &[u8]| {
            let mut out = Secret32::new([0u8; 32]);
            crypto::hkdf(&id, key.as_bytes(), &[label], out.as_mut_bytes());
            out
        };
        let mut nonce_key = Secret32::new([0u8; 32]);
        rng.fill_bytes(nonce_key.as_mut_bytes());
        Ok(Self {
            record: derive(LABEL_RECORD_KEY),
            lookup: derive(LABEL_LOOKUP_KEY),
            nonce_key,
            nonce_counter: 0,
        })
    }

    /// The stored key of the row for `natural` in `table`.
    pub(crate) fn lookup(&self, table: Table, natural: &[u8]) -> [u8; 32] {
        crypto::mac(self.lookup.as_bytes(), LABEL_LOOKUP, &[&[table.number()], natural])
    }

    /// The stored key of a row grouped under `group` (the sessions of one account): 16 bytes
    /// hashing the group, then 16 hashing the member, so a group is one prefix scan.
    pub(crate) fn grouped_lookup(&self, table: Table, group: &[u8], natural: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let (head, tail) = out.split_at_mut(16);
        head.copy_from_slice(&self.group_prefix(table, group));
        tail.copy_from_slice(&crypto::first_16(&self.lookup(table, natural)));
        out
    }

    /// The 16 bytes that prefix every row of `group` in `table`.
    pub(crate) fn group_prefix(&self, table: Table, group: &[u8]) -> [u8; 16] {
        crypto::first_16(&crypto::mac(
            self.lookup.as_bytes(),
            LABEL_GROUP,
            &[&[table.number()], group],
        ))
    }

    fn next_nonce(&mut self) -> [u8; crypto::NONCE_LEN] {
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        let out = crypto::mac(
            self.nonce_key.as_bytes(),
            LABEL_NONCE,
            &[&self.nonce_counter.to_be_bytes()],
        );
        let mut nonce = [0u8; crypto::NONCE_LEN];
        nonce.copy_from_slice(out.split_at(crypto::NONCE_LEN).0);
        nonce
    }
}

/// Length of a row's associated data: label, separator, schema, table, lookup key.
const AAD_LEN: usize = LABEL_RECORD_AAD.len() + 1 + 4 + 1 + 32;

fn aad(table: Table, lookup: &[u8; 32]) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    let (label, rest) = aad.split_at_mut(LABEL_RECORD_AAD.len());
    label.copy_from_slice(LABEL_RECORD_AAD);
    let (zero, rest) = rest.split_at_mut(1);
    zero.copy_from_slice(&[0]);
    let (schema, rest) = rest.split_at_mut(4);
    schema.copy_from_slice(&RECORD_SCHEMA.to_be_bytes());
    let (number, rest) = rest.split_at_mut(1);
    number.copy_from_slice(&[table.number()]);
    rest.copy_from_slice(lookup);
    aad
}

/// A transaction of a store seen through its keys: plaintext records in and out.
///
/// Once the store fails a call, the transaction can no longer commit: a protocol step whose
/// inbox entry or outbox item failed to be written must not commit its ratchet step without it,
/// even when the caller treats the step's error as a failure to commit latches for.
pub(crate) struct Sealed<'t> {
    txn: Box<dyn Transaction + 't>,
    keys: &'t mut Keys,
    failed: Option<StoreError>,
}

impl<'t> Sealed<'t> {
    pub(crate) fn new(txn: Box<dyn Transaction + 't>, keys: &'t mut Keys) -> Self {
        Self { txn, keys, failed: None }
    }

    /// Passes a store result on, remembering a failure so that [`Sealed::commit`] refuses.
    fn note<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            self.failed.get_or_insert(*error);
        }
        result
    }

    pub(crate) fn keys(&self) -> &Keys {
        self.keys
    }

    fn seal(&mut self, table: Table, lookup: &[u8; 32], natural: &[u8], record: &[u8]) -> Vec<u8> {
        // Natural keys are addresses, ids and short names: far below 64 KiB.
        let natural_len = u16::try_from(natural.len()).unwrap_or(u16::MAX);
        let mut plaintext = Zeroizing::new(Vec::with_capacity(2 + natural.len() + record.len()));
        plaintext.extend_from_slice(&natural_len.to_be_bytes());
        plaintext.extend_from_slice(natural);
        plaintext.extend_from_slice(record);
        let nonce = self.keys.next_nonce();
        let mut row = Vec::with_capacity(crypto::NONCE_LEN + plaintext.len() + crypto::TAG_LEN);
        row.extend_from_slice(&nonce);
        crypto::seal_append(
            self.keys.record.as_bytes(),
            &nonce,
            &aad(table, lookup),
            &mut row,
            &plaintext,
        );
        row
    }

    /// Opens a row: the natural key and the record bytes, or [`StoreError::Corrupt`].
    fn open(
        &self,
        table: Table,
        lookup: &[u8; 32],
        row: &[u8],
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), StoreError> {
        let (nonce, sealed) =
            row.split_first_chunk::<{ crypto::NONCE_LEN }>().ok_or(StoreError::Corrupt(table))?;
        let plaintext =
            crypto::open(self.keys.record.as_bytes(), nonce, &aad(table, lookup), sealed)
                .map_err(|_| StoreError::Corrupt(table))?;
        let (len, rest) = plaintext.split_first_chunk::<2>().ok_or(StoreError::Corrupt(table))?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (natural, record) = rest.split_at_checked(len).ok_or(StoreError::Corrupt(table))?;
        Ok((natural.to_vec(), Zeroizing::new(record.to_vec())))
    }

    /// The record bytes at `natural` in `table`.
    pub(crate) fn get(
        &mut self,
        table: Table,
        natural: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let lookup = self.keys.lookup(table, natural);
        self.get_at(table, &lookup, natural)
    }

    /// The record bytes at an explicit stored key (grouped rows). The natural key sealed in
    /// the row must be `natural`.
    pub(crate) fn get_at(
        &mut self,
        table: Table,
        lookup: &[u8; 32],
        natural: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let row = self.txn.get(table, lookup);
        let Some(row) = self.note(row)? else {
            return Ok(None);
        };
        let (found, record) = self.open(table, lookup, &row)?;
        if found != natural {
            return Err(StoreError::Corrupt(table));
        }
        Ok(Some(record))
    }

    /// Stores `record` at `natural` in `table`.
    pub(crate) fn put(
        &mut self,
        table: Table,
        natural: &[u8],
        record: &[u8],
    ) -> Result<(), StoreError> {
        let lookup = self.keys.lookup(table, natural);
        self.put_at(table, &lookup, natural, record)
    }

    /// Stores `record` at an explicit stored key (grouped rows).
    pub(crate) fn put_at(
        &mut self,
        table: Table,
        lookup: &[u8; 32],
        natural: &[u8],
        record: &[u8],
    ) -> Result<(), StoreError> {
        let row = self.seal(table, lookup, natural, record);
        let result = self.txn.put(table, lookup, &row);
        self.note(result)
    }

    /// Deletes the record at `natural`.
    pub(crate) fn delete(&mut self, table: Table, natural: &[u8]) -> Result<(), StoreError> {
        let lookup = self.keys.lookup(table, natural);
        let result = self.txn.delete(table, &lookup);
        self.note(result)
    }

    /// Deletes the row at an explicit stored key.
    pub(crate) fn delete_at(&mut self, table: Table, lookup: &[u8; 32]) -> Result<(), StoreError> {
        let result = self.txn.delete(table, lookup);
        self.note(result)
    }

    /// Every record of `table` whose stored key starts with `prefix`: natural key, stored key
    /// and record bytes.
    #[allow(clippy::type_complexity)]
    pub(crate) fn scan(
        &mut self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, [u8; 32], Zeroizing<Vec<u8>>)>, StoreError> {
        let rows = self.txn.scan(table, prefix);
        let rows = self.note(rows)?;
        rows.into_iter()
            .map(|(key, row)| {
                let lookup: [u8; 32] =
                    key.as_slice().try_into().map_err(|_| StoreError::Corrupt(table))?;
                let (natural, record) = self.open(table, &lookup, &row)?;
                Ok((natural, lookup, record))
            })
            .collect()
    }

    /// Commits every change, unless a store call of the transaction failed: then it rolls back
    /// and returns that failure.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        match self.failed {
            Some(error) => Err(error),
            None => self.txn.commit(),
        }
    }
}

/// Encodes a record: postcard into a buffer wiped on drop.
pub(crate) fn encode<T: serde::Serialize + ?Sized>(record: &T) -> Zeroizing<Vec<u8>> {
    crate::wiping::to_wiped_bytes(record)
}

/// Decodes a record the store authenticated: structural checks run, signatures checked before
/// storing are not checked again (see [`crate::serde_util::authenticated`]). Trailing bytes are
/// corruption.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    table: Table,
    bytes: &[u8],
) -> Result<T, StoreError> {
    crate::serde_util::authenticated::decode(|| {
        let (value, rest) =
            postcard::take_from_bytes::<T>(bytes).map_err(|_| StoreError::Corrupt(table))?;
        if rest.is_empty() { Ok(value) } else { Err(StoreError::Corrupt(table)) }
    })
}
