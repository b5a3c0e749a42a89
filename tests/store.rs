//! The per-record store: the same protocol as the in-memory device, committed per operation,
//! encrypted at rest, with an outbox and an inbox.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use multidevice::store::{
    MemoryStore, Mode, SqliteOptions, SqliteStore, Store, StoreError, StoreKey, Table,
};
use multidevice::{
    AccountId, Conversation, Device, DeviceAddress, DeviceId, ReceiveError, Received, SessionError,
    StoredDevice, Timestamp,
};
use rand::rngs::StdRng;
use support::world::{Server, account, envelope_for, introduce, link};
use support::{T0, rng};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("multidevice-store-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key() -> StoreKey {
    StoreKey::from_bytes(&[7u8; 32])
}

/// `device`'s state moved into a memory store.
fn stored(device: &Device) -> (StoredDevice<MemoryStore>, MemoryStore) {
    let store = MemoryStore::new();
    let stored =
        StoredDevice::import(store.clone(), &key(), &mut rng(900), &device.to_bytes()).unwrap();
    (stored, store)
}

fn payload(inbound: &multidevice::Inbound) -> Vec<u8> {
    match &inbound.received {
        Received::Message(message) => message.payload.to_vec(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The same conversation run on an in-memory device and on a stored one, with the same
/// randomness, gives byte-identical messages and byte-identical state after every step: the
/// store changes where state lives, never what the protocol does.
#[test]
fn stored_device_matches_in_memory_device_step_for_step() {
    let mut r = rng(1);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 1, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let alice_primary = alice.devices[0].address();
    let mut memory = alice.devices.remove(0);
    let (mut stored, _) = stored(&memory);

    let check = |memory: &Device, stored: &mut StoredDevice<MemoryStore>, step: &str| {
        assert_eq!(stored.export().unwrap().as_slice(), memory.to_bytes().as_slice(), "{step}");
    };
    check(&memory, &mut stored, "import");

    // Alice's primary sends to Bob: a new session (prekey message) to Bob's primary and to
    // her own companion.
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let now = Timestamp(T0.0 + 10);
    let sent_memory =
        memory.encrypt_fanout(&mut rng(2), &[AccountId(2)], &bundles, b"hello", now).unwrap();
    let sent_stored =
        stored.encrypt_fanout(&mut rng(2), &[AccountId(2)], &bundles, b"hello", now).unwrap();
    assert_eq!(sent_memory.envelopes, sent_stored.envelopes);
    assert!(sent_memory.outbox.is_none() && sent_stored.outbox.is_some());
    check(&memory, &mut stored, "first send");

    // Bob answers; both copies of Alice's primary receive it.
    let bob_primary = bob.devices[0].address();
    let bob_bundles = server.bundles(&[AccountId(1)]);
    let reply = bob.devices[0]
        .encrypt_fanout(&mut r, &[AccountId(1)], &bob_bundles, b"hi alice", now)
        .unwrap();
    let envelope = envelope_for(&reply, alice_primary).unwrap();
    let received_memory = memory.receive(&envelope, None, now).unwrap();
    let received_stored = stored.receive(&envelope, None, now).unwrap();
    let Received::Message(m) = received_memory else { panic!() };
    assert_eq!(m.payload.as_slice(), payload(&received_stored).as_slice());
    assert_eq!(m.sender, bob_primary);
    check(&memory, &mut stored, "receive");

    // A large payload (shared body), then a list refresh and a companion removal.
    let big = vec![0x5a; 4096];
    let later = Timestamp(T0.0 + 100);
    let a = memory.encrypt_fanout(&mut rng(3), &[AccountId(2)], &[], &big, later).unwrap();
    let b = stored.encrypt_fanout(&mut rng(3), &[AccountId(2)], &[], &big, later).unwrap();
    assert_eq!((a.envelopes, a.body), (b.envelopes, b.body));
    check(&memory, &mut stored, "body");
    let companion = alice.devices[0].address().device;
    let list_memory = memory.remove_companion(companion, later).unwrap();
    let list_stored = stored.remove_companion(companion, later).unwrap();
    assert_eq!(list_memory.to_bytes(), list_stored.to_bytes());
    check(&memory, &mut stored, "remove companion");

    // Bob's list changes: he links a companion; both copies process the new list.
    link(&mut r, &mut server, &mut bob, later);
    let list = server.newest(AccountId(2));
    let update_memory = memory.process_device_list(&list, later).unwrap();
    let update_stored = stored.process_device_list(&list, later).unwrap();
    assert_eq!(update_memory.added, update_stored.added);
    check(&memory, &mut stored, "process list");

    // Failures change the same things on both: nothing but the clock mark. (A replay is a
    // duplicate for the ratchet, and, once acknowledged, already received for the store.)
    stored.acknowledge(received_stored.id).unwrap();
    let much_later = Timestamp(T0.0 + 1_000);
    assert!(memory.receive(&envelope, None, much_later).is_err());
    assert_eq!(
        stored.receive(&envelope, None, much_later).unwrap_err(),
        ReceiveError::AlreadyReceived
    );
    let mut garbage = envelope.clone();
    *garbage.last_mut().unwrap() ^= 1;
    // A recoverable failure: both ask the sender for a retry (the stored device puts the request
    // in its outbox), which counts the request on both.
    let failure = memory.receive_or_retry(&garbage, None, much_later).unwrap_err();
    assert_eq!(failure.error, stored.receive(&garbage, None, much_later).unwrap_err());
    let request = failure.retry.unwrap();
    let queued = stored.outbox().unwrap();
    assert_eq!(queued.last().unwrap().envelopes[0].bytes, request.to_bytes());
    check(&memory, &mut stored, "refused replay");
    assert_eq!(stored.lists_to_fetch().unwrap(), memory.lists_to_fetch());
    assert_eq!(stored.account_status(much_later).unwrap(), memory.account_status(much_later));
    assert_eq!(stored.security_code(AccountId(2)).unwrap(), memory.security_code(AccountId(2)));
    assert_eq!(stored.prekey_upload().unwrap(), memory.prekey_upload());
}

/// Every operation reopens from the store: a device dropped and opened again mid-conversation
/// goes on exactly where it was, on SQLite as on memory.
#[test]
fn restart_from_sqlite_mid_conversation() {
    let dir = TempDir::new();
    let path = dir.file("alice.db");
    let mut r = rng(11);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 0, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
    let stored = StoredDevice::import(store, &key(), &mut r, &alice.devices[0].to_bytes()).unwrap();
    drop(stored);

    for round in 0..5u64 {
        let now = Timestamp(T0.0 + round);
        let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
        let mut alice = StoredDevice::open(store, &key(), &mut r).unwrap();
        let bundles = server.bundles(&[AccountId(2)]);
        let text = format!("round {round}");
        let sent =
            alice.encrypt_fanout(&mut r, &[AccountId(2)], &bundles, text.as_bytes(), now).unwrap();
        let envelope = envelope_for(&sent, bob.devices[0].address()).unwrap();
        alice.mark_sent(sent.outbox.unwrap()).unwrap();
        drop(alice);
        let got = support::world::read(&mut bob.devices[0], &envelope, now).unwrap();
        assert_eq!(got, text.as_bytes());

        let reply = bob.devices[0]
            .encrypt_fanout(&mut r, &[AccountId(1)], &[], format!("ack {round}").as_bytes(), now)
            .unwrap();
        let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
        let mut alice = StoredDevice::open(store, &key(), &mut r).unwrap();
        let inbound =
            alice.receive(&envelope_for(&reply, alice.address()).unwrap(), None, now).unwrap();
        assert_eq!(payload(&inbound), format!("ack {round}").as_bytes());
        alice.acknowledge(inbound.id).unwrap();
        assert!(alice.outbox().unwrap().is_empty() && alice.inbox().unwrap().is_empty());
    }
}

/// A crash between the commit and the network send loses nothing: the outbox still holds the
/// envelopes, and sending them later reaches the recipient once.
#[test]
fn outbox_survives_a_crash_before_sending() {
    let mut r = rng(21);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 1, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let (mut stored, store) = stored(&alice.devices[0]);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let sent = stored.encrypt_fanout(&mut r, &[AccountId(2)], &bundles, b"kept", T0).unwrap();
    // The app crashes here: the message never reached the network.
    drop(stored);
    let mut reopened = StoredDevice::open(store, &key(), &mut r).unwrap();
    let outbox = reopened.outbox().unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].id, sent.outbox.unwrap());
    assert_eq!(outbox[0].envelopes, sent.envelopes);
    for envelope in &outbox[0].envelopes {
        let device = if envelope.recipient.account == AccountId(2) {
            &mut bob.devices[0]
        } else {
            alice.device(envelope.recipient)
        };
        assert_eq!(support::world::read(device, &envelope.bytes, T0).unwrap(), b"kept");
    }
    reopened.mark_sent(outbox[0].id).unwrap();
    reopened.mark_sent(outbox[0].id).unwrap();
    assert!(reopened.outbox().unwrap().is_empty());
}

/// The server redelivers after a crash: the envelope is recognized without touching the
/// ratchet, returns the same inbox entry until acknowledged, then `AlreadyReceived`.
#[test]
fn redelivered_envelope_is_recognized_without_decrypting_again() {
    let mut r = rng(31);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 0, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let (mut stored, store) = stored(&bob.devices[0]);
    let bundles = server.bundles(&[AccountId(2)]);
    let sent =
        alice.devices[0].encrypt_fanout(&mut r, &[AccountId(2)], &bundles, b"once", T0).unwrap();
    let envelope = envelope_for(&sent, stored.address()).unwrap();
    let first = stored.receive(&envelope, None, T0).unwrap();
    let state = stored.export().unwrap().to_vec();
    // Crash before the app kept the message: the inbox still holds it.
    drop(stored);
    let mut stored = StoredDevice::open(store, &key(), &mut r).unwrap();
    let pending = stored.inbox().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id, payload(&pending[0])), (first.id, b"once".to_vec()));
    let again = stored.receive(&envelope, None, T0).unwrap();
    assert_eq!((again.id, payload(&again)), (first.id, b"once".to_vec()));
    assert_eq!(stored.export().unwrap().as_slice(), state.as_slice(), "no ratchet step");
    stored.acknowledge(first.id).unwrap();
    assert_eq!(stored.receive(&envelope, None, T0).unwrap_err(), ReceiveError::AlreadyReceived);
    assert!(stored.inbox().unwrap().is_empty());
    assert_eq!(stored.export().unwrap().as_slice(), state.as_slice());
}

/// Own-device copies and history keep their kind through the inbox.
#[test]
fn inbox_keeps_the_conversation() {
    let mut r = rng(41);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 1, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let companion = alice.devices[1].address();
    let (mut stored, store) = stored(&alice.devices[1]);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    let sent =
        alice.devices[0].encrypt_fanout(&mut r, &[AccountId(2)], &bundles, b"copy", T0).unwrap();
    stored.receive(&envelope_for(&sent, companion).unwrap(), None, T0).unwrap();
    drop(stored);
    let mut stored = StoredDevice::open(store, &key(), &mut r).unwrap();
    let inbox = stored.inbox().unwrap();
    let Received::Message(message) = &inbox[0].received else { panic!() };
    assert_eq!(message.conversation, Conversation::OwnCopy { to: vec![AccountId(2)] });
}

/// A wrong key is `WrongKey`; an edited, truncated, swapped or foreign row is `Corrupt`; none
/// is accepted, and the store is unchanged after each refusal.
#[test]
fn tampered_memory_rows_are_refused() {
    let mut r = rng(51);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 1, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let (mut stored, store) = stored(&alice.devices[0]);
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    stored.encrypt_fanout(&mut r, &[AccountId(2)], &bundles, b"x", T0).unwrap();

    let wrong = StoreKey::from_bytes(&[8u8; 32]);
    assert_eq!(
        StoredDevice::open(store.clone(), &wrong, &mut r).unwrap_err(),
        StoreError::WrongKey
    );

    let rows = store.rows();
    let sessions: Vec<_> = rows.iter().filter(|(t, _, _)| *t == Table::Session).collect();
    assert_eq!(sessions.len(), 2, "Bob's primary and Alice's companion");
    let send = |stored: &mut StoredDevice<MemoryStore>| {
        stored.encrypt_fanout(&mut rng(5), &[AccountId(2)], &[], b"y", T0)
    };

    // One bit flipped in a session row.
    let (_, key0, value0) = sessions[0].clone();
    let mut flipped = value0.clone();
    *flipped.last_mut().unwrap() ^= 1;
    store.set_row(Table::Session, &key0, Some(&flipped));
    assert_eq!(
        send(&mut stored).unwrap_err().to_string(),
        StoreError::Corrupt(Table::Session).to_string()
    );
    // Truncated.
    store.set_row(Table::Session, &key0, Some(&value0[..value0.len() - 1]));
    assert!(matches!(
        send(&mut stored),
        Err(multidevice::FanoutError::Store(StoreError::Corrupt(Table::Session)))
    ));
    // Swapped with the other session's row.
    let (_, key1, value1) = sessions[1].clone();
    store.set_row(Table::Session, &key0, Some(&value1));
    store.set_row(Table::Session, &key1, Some(&value0));
    assert!(matches!(
        send(&mut stored),
        Err(multidevice::FanoutError::Store(StoreError::Corrupt(Table::Session)))
    ));
    // A row moved to another table.
    store.set_row(Table::Session, &key0, Some(&value0));
    store.set_row(Table::Session, &key1, Some(&value1));
    let (_, account_key, account_value) =
        rows.iter().find(|(t, _, _)| *t == Table::Account).unwrap().clone();
    store.set_row(Table::Session, &key0, Some(&account_value));
    assert!(send(&mut stored).is_err());
    store.set_row(Table::Session, &key0, Some(&value0));
    // A row from another store under the same store key (its random identifier differs).
    let other_store = MemoryStore::new();
    StoredDevice::import(other_store.clone(), &key(), &mut rng(901), &bob.devices[0].to_bytes())
        .unwrap();
    let foreign = other_store.rows().into_iter().find(|(t, _, _)| *t == Table::Account).unwrap();
    store.set_row(Table::Account, &account_key, Some(&foreign.2));
    assert!(matches!(
        send(&mut stored),
        Err(multidevice::FanoutError::Store(StoreError::Corrupt(Table::Account)))
    ));
    store.set_row(Table::Account, &account_key, Some(&account_value));
    // Restored, it works again, and every refusal left the rows as they were.
    assert_eq!(store.rows(), rows);
    send(&mut stored).unwrap();
}

/// The SQLite file, edited directly: a flipped byte, a truncated value, rows swapped between
/// keys, a wrong key; each a typed error.
#[test]
fn tampered_sqlite_file_is_refused() {
    let dir = TempDir::new();
    let path = dir.file("tamper.db");
    let mut r = rng(61);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 1, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
    let mut stored =
        StoredDevice::import(store, &key(), &mut r, &alice.devices[0].to_bytes()).unwrap();
    let bundles = server.bundles(&[AccountId(1), AccountId(2)]);
    stored.encrypt_fanout(&mut r, &[AccountId(2)], &bundles, b"x", T0).unwrap();
    drop(stored);

    let db = rusqlite::Connection::open(&path).unwrap();
    let session_rows: Vec<(Vec<u8>, Vec<u8>)> = db
        .prepare("SELECT key, value FROM rows WHERE tbl = 3 ORDER BY key")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(session_rows.len(), 2);
    let set = |key: &[u8], value: &[u8]| {
        db.execute("UPDATE rows SET value = ?1 WHERE tbl = 3 AND key = ?2", (value, key)).unwrap();
    };
    let reopen_and_send = |r: &mut StdRng| {
        let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
        let mut stored = StoredDevice::open(store, &key(), r).unwrap();
        stored.encrypt_fanout(r, &[AccountId(2)], &[], b"y", T0)
    };
    let corrupt: Result<(), _> =
        Err(multidevice::FanoutError::Store(StoreError::Corrupt(Table::Session)));
    let (k0, v0) = session_rows[0].clone();
    let (k1, v1) = session_rows[1].clone();
    let mut flipped = v0.clone();
    flipped[20] ^= 0x80;
    set(&k0, &flipped);
    assert_eq!(reopen_and_send(&mut r).map(|_| ()), corrupt);
    set(&k0, &v0[..v0.len() - 3]);
    assert_eq!(reopen_and_send(&mut r).map(|_| ()), corrupt);
    set(&k0, &v1);
    set(&k1, &v0);
    assert_eq!(reopen_and_send(&mut r).map(|_| ()), corrupt);
    set(&k0, &v0);
    set(&k1, &v1);
    let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
    assert_eq!(
        StoredDevice::open(store, &StoreKey::from_bytes(&[1u8; 32]), &mut r).unwrap_err(),
        StoreError::WrongKey
    );
    reopen_and_send(&mut r).unwrap();
}

/// The file names no contact: no account id or address appears in it, in any table, whatever
/// it holds; lookups are keyed hashes and every value is sealed.
#[test]
fn sqlite_file_does_not_list_contacts() {
    let dir = TempDir::new();
    let path = dir.file("private.db");
    let mut r = rng(71);
    let mut server = Server::default();
    // Distinctive account ids, so a plaintext occurrence cannot be a coincidence.
    let mut alice = account(&mut r, &mut server, 0x0a11_ce00_dead_beef, 1, T0);
    let mut bob = account(&mut r, &mut server, 0x0b0b_0000_feed_f00d, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
    let mut stored =
        StoredDevice::import(store, &key(), &mut r, &alice.devices[0].to_bytes()).unwrap();
    let bundles = server.bundles(&[alice.id(), bob.id()]);
    stored.encrypt_fanout(&mut r, &[bob.id()], &bundles, b"x", T0).unwrap();
    drop(stored);
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(db);
    let bytes = std::fs::read(&path).unwrap();
    for account in [alice.id(), bob.id()] {
        let needle = account.0.to_be_bytes();
        assert!(!bytes.windows(8).any(|w| w == needle), "{account:?} in the file");
        let needle = account.0.to_le_bytes();
        assert!(!bytes.windows(8).any(|w| w == needle), "{account:?} in the file");
    }
}

/// A passphrase store keeps its Argon2id salt and parameters; the same passphrase opens it,
/// another is `WrongKey`.
#[test]
fn passphrase_store_opens_with_its_passphrase_only() {
    let dir = TempDir::new();
    let path = dir.file("pass.db");
    let mut r = rng(81);
    let options =
        SqliteOptions::default().with_passphrase_params(multidevice::store::PassphraseParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        });
    let (store, key) =
        SqliteStore::open_with_passphrase(&path, b"correct horse", &options, &mut r).unwrap();
    let address = DeviceAddress::new(AccountId(1), DeviceId::PRIMARY);
    StoredDevice::create(store, &key, &mut r, address, T0).unwrap();
    // Other parameters passed later do not matter: the file's are used.
    let later = SqliteOptions::default();
    let (store, key) =
        SqliteStore::open_with_passphrase(&path, b"correct horse", &later, &mut r).unwrap();
    assert_eq!(StoredDevice::open(store, &key, &mut r).unwrap().address(), address);
    let (store, key) =
        SqliteStore::open_with_passphrase(&path, b"wrong horse", &later, &mut r).unwrap();
    assert_eq!(StoredDevice::open(store, &key, &mut r).unwrap_err(), StoreError::WrongKey);
}

/// Creating over an existing device, opening an empty store, importing garbage: typed errors.
#[test]
fn store_lifecycle_errors() {
    let mut r = rng(91);
    let store = MemoryStore::new();
    let address = DeviceAddress::new(AccountId(1), DeviceId::PRIMARY);
    assert_eq!(
        StoredDevice::open(store.clone(), &key(), &mut r).unwrap_err(),
        StoreError::Missing(Table::Meta)
    );
    StoredDevice::create(store.clone(), &key(), &mut r, address, T0).unwrap();
    assert_eq!(
        StoredDevice::create(store.clone(), &key(), &mut r, address, T0).unwrap_err(),
        StoreError::AlreadyExists
    );
    assert!(matches!(
        StoredDevice::import(MemoryStore::new(), &key(), &mut r, b"not a device"),
        Err(StoreError::InvalidImport(_))
    ));
    let mut store = store;
    let mut txn = store.transaction(Mode::Read).unwrap();
    assert_eq!(txn.put(Table::Meta, b"k", b"v").unwrap_err(), StoreError::ReadOnly);
}

/// The SQLite file carries a schema version; a file from a newer crate is refused.
#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new();
    let path = dir.file("schema.db");
    let store = SqliteStore::open(&path, &SqliteOptions::default()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    drop(store);
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute("UPDATE schema_version SET version = 99", []).unwrap();
    drop(db);
    assert_eq!(
        SqliteStore::open(&path, &SqliteOptions::default()).unwrap_err(),
        StoreError::SchemaTooNew { found: 99 }
    );
}

/// One session record on disk, without skipped keys, is at most 1 KiB.
#[test]
fn session_record_is_at_most_one_kib() {
    let mut r = rng(101);
    let mut server = Server::default();
    let mut alice = account(&mut r, &mut server, 1, 0, T0);
    let mut bob = account(&mut r, &mut server, 2, 0, T0);
    introduce(&server, &mut [&mut alice, &mut bob], T0);
    let (mut stored, store) = stored(&alice.devices[0]);
    let bundles = server.bundles(&[AccountId(2)]);
    // Several round trips, so the session holds sending and receiving chains.
    for i in 0..4u64 {
        let now = Timestamp(T0.0 + i);
        let sent = stored.encrypt_fanout(&mut r, &[AccountId(2)], &bundles, b"ping", now).unwrap();
        let envelope = envelope_for(&sent, bob.devices[0].address()).unwrap();
        support::world::read(&mut bob.devices[0], &envelope, now).unwrap();
        let reply =
            bob.devices[0].encrypt_fanout(&mut r, &[AccountId(1)], &[], b"pong", now).unwrap();
        stored.receive(&envelope_for(&reply, stored.address()).unwrap(), None, now).unwrap();
    }
    let info = stored.session_info(bob.devices[0].address()).unwrap().unwrap();
    assert_eq!(info.skipped_keys, 0);
    let rows = store.rows();
    let session = rows.iter().find(|(t, _, _)| *t == Table::Session).unwrap();
    assert!(session.2.len() <= 1024, "session row is {} bytes", session.2.len());
}

/// One-time prekeys are records: a prekey message consumes exactly its own, and an expired one
/// makes room under the cap.
#[test]
fn one_time_prekeys_are_records() {
    let mut r = rng(111);
    let store = MemoryStore::new();
    let address = DeviceAddress::new(AccountId(1), DeviceId::PRIMARY);
    let mut device = StoredDevice::create(store.clone(), &key(), &mut r, address, T0).unwrap();
    assert_eq!(
        device.one_time_prekeys_needed().unwrap(),
        multidevice::consts::ONE_TIME_PREKEY_TARGET
    );
    let fresh = device.replenish_one_time_prekeys(&mut r, T0).unwrap();
    assert_eq!(fresh.len(), multidevice::consts::ONE_TIME_PREKEY_TARGET);
    assert_eq!(device.one_time_prekeys_needed().unwrap(), 0);
    let count = |store: &MemoryStore| {
        store.rows().iter().filter(|(t, _, _)| *t == Table::OneTimePrekey).count()
    };
    assert_eq!(count(&store), multidevice::consts::ONE_TIME_PREKEY_TARGET);
    assert_eq!(device.prekey_upload().unwrap().one_time_prekeys.len(), fresh.len());
    let extra =
        multidevice::consts::MAX_ONE_TIME_PREKEYS - multidevice::consts::ONE_TIME_PREKEY_TARGET;
    device.generate_one_time_prekeys(&mut r, extra).unwrap();
    assert!(matches!(
        device.generate_one_time_prekeys(&mut r, 1),
        Err(SessionError::TooManyOneTimePrekeys { .. })
    ));
    // At exactly their lifetime they still count; one second later they are all gone and
    // the cap has room again.
    let lifetime = multidevice::consts::ONE_TIME_PREKEY_LIFETIME_SECS;
    assert!(
        device.replenish_one_time_prekeys(&mut r, Timestamp(T0.0 + lifetime)).unwrap().is_empty()
    );
    let replenished =
        device.replenish_one_time_prekeys(&mut r, Timestamp(T0.0 + lifetime + 1)).unwrap();
    assert_eq!(replenished.len(), multidevice::consts::ONE_TIME_PREKEY_TARGET);
    assert_eq!(count(&store), multidevice::consts::ONE_TIME_PREKEY_TARGET);
}

/// Both link flows between a stored primary and a stored companion, each device dropped and
/// opened again from its store between every step: pending link state persists.
#[test]
fn linking_survives_restarts_at_every_step() {
    let mut r = rng(121);
    let key = key();
    let primary_store = MemoryStore::new();
    let primary_address = DeviceAddress::new(AccountId(1), DeviceId::PRIMARY);
    StoredDevice::create(primary_store.clone(), &key, &mut r, primary_address, T0).unwrap();
    let reopen =
        |store: &MemoryStore, r: &mut StdRng| StoredDevice::open(store.clone(), &key, r).unwrap();

    // QR.
    let phone_store = MemoryStore::new();
    StoredDevice::create(
        phone_store.clone(),
        &key,
        &mut r,
        DeviceAddress::new(AccountId(1), DeviceId(99)),
        T0,
    )
    .unwrap();
    let text = reopen(&phone_store, &mut r).start_qr_link(&mut r, T0).unwrap();
    let approval = reopen(&primary_store, &mut r).approve_qr_link(&text, T0).unwrap();
    let confirmation = reopen(&phone_store, &mut r).accept_qr_approval(&approval, T0).unwrap();
    // The same approval again: the offer is used up, also after a restart.
    assert!(reopen(&phone_store, &mut r).accept_qr_approval(&approval, T0).is_err());
    let list = reopen(&primary_store, &mut r).finish_qr_link(&confirmation, T0).unwrap();
    assert!(reopen(&primary_store, &mut r).finish_qr_link(&confirmation, T0).is_err());
    let mut phone = reopen(&phone_store, &mut r);
    phone.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(phone.account_status(T0).unwrap(), multidevice::AccountStatus::Active);
    assert_eq!(phone.address(), DeviceAddress::new(AccountId(1), DeviceId(1)));

    // Pairing code.
    let tablet_store = MemoryStore::new();
    StoredDevice::create(
        tablet_store.clone(),
        &key,
        &mut r,
        DeviceAddress::new(AccountId(1), DeviceId(98)),
        T0,
    )
    .unwrap();
    let (code, hello) = reopen(&tablet_store, &mut r).start_pairing(&mut r, T0).unwrap();
    let typed = multidevice::PairingCode::parse(&code).unwrap();
    let response =
        reopen(&primary_store, &mut r).respond_to_pairing(&mut r, &hello, typed, T0).unwrap();
    let confirm = reopen(&tablet_store, &mut r).handle_pairing_response(&response, T0).unwrap();
    let approval = reopen(&primary_store, &mut r).handle_pairing_confirm(&confirm, T0).unwrap();
    let confirmation =
        reopen(&tablet_store, &mut r).accept_pairing_approval(&approval, T0).unwrap();
    let list = reopen(&primary_store, &mut r).finish_pairing(&confirmation, T0).unwrap();
    let mut tablet = reopen(&tablet_store, &mut r);
    tablet.process_device_list(&list.to_bytes(), T0).unwrap();
    assert_eq!(tablet.account_status(T0).unwrap(), multidevice::AccountStatus::Active);
    let held = reopen(&primary_store, &mut r).device_list(AccountId(1)).unwrap().unwrap();
    assert_eq!(held.companion_devices().len(), 2);
    // Nothing is left pending on the primary.
    assert!(primary_store.rows().iter().all(|(t, _, _)| *t != Table::Link));
}

/// State persisted by the previous format (2) imports, into a device and into a store, and the
/// conversation goes on both ways on the sessions it held. (A message sent before the upgrade
/// does not decode: message ids changed what a message carries.)
#[test]
fn format_two_state_imports_and_continues() {
    let legacy = |name: &str| {
        std::fs::read(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/legacy/").to_owned() + name,
        )
        .unwrap()
    };
    let mut r = rng(131);
    let now = Timestamp(1_700_000_100);
    for into_store in [false, true] {
        let mut bob = Device::from_bytes(&legacy("bob.bin")).unwrap();
        let companion = Device::from_bytes(&legacy("companion.bin")).unwrap();
        assert_eq!(companion.account_status(now), multidevice::AccountStatus::Active);
        let primary_state = legacy("primary.bin");
        let sent_by_bob =
            bob.encrypt_fanout(&mut r, &[AccountId(1)], &[], b"from bob", now).unwrap();
        let to_alice =
            envelope_for(&sent_by_bob, DeviceAddress::new(AccountId(1), DeviceId::PRIMARY))
                .unwrap();
        let (got, sent) = if into_store {
            let mut alice =
                StoredDevice::import(MemoryStore::new(), &key(), &mut r, &primary_state).unwrap();
            let got = payload(&alice.receive(&to_alice, None, now).unwrap());
            let sent = alice.encrypt_fanout(&mut r, &[AccountId(2)], &[], b"after", now).unwrap();
            (got, sent)
        } else {
            let mut alice = Device::from_bytes(&primary_state).unwrap();
            let Received::Message(m) = alice.receive(&to_alice, None, now).unwrap() else {
                panic!()
            };
            let sent = alice.encrypt_fanout(&mut r, &[AccountId(2)], &[], b"after", now).unwrap();
            (m.payload.to_vec(), sent)
        };
        assert_eq!(got, b"from bob");
        let envelope = envelope_for(&sent, bob.address()).unwrap();
        assert_eq!(support::world::read(&mut bob, &envelope, now).unwrap(), b"after");
    }
}
