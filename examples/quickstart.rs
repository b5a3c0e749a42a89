//! A tour of multidevice: two devices set up a session and exchange messages out of order, and
//! one moves into the encrypted store, crashes before sending and recovers from its outbox; then
//! an account with a primary and four companions, a refused fifth, a removal, a fan-out that
//! reaches every device while the primary is offline, a companion signed out after 15 days, and
//! a newly linked companion reading history and a photo with the primary offline.
//!
//! Run with `cargo run --release --example quickstart`.

use multidevice::blob::{BlobDescriptor, MediaType, decrypt_blob, encrypt_blob};
use multidevice::consts::DAY_SECS;
use multidevice::store::{SqliteOptions, SqliteStore, StoreKey};
use multidevice::{
    AccountId, AccountStatus, CompanionPairing, Device, DeviceAddress, DeviceId, PairingCode,
    PrimaryPairing, QrLinkApproval, QrLinkOffer, Received, SignedDeviceList, StoredDevice,
    Timestamp, build_history, hazmat, import_history,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let now = Timestamp(1_700_000_000);

    println!("== Two accounts meet");
    let mut alice = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId::PRIMARY), now);
    let mut bob = Device::new(&mut rng, DeviceAddress::new(AccountId(2), DeviceId::PRIMARY), now);
    bob.generate_one_time_prekeys(&mut rng, 20)?;
    println!("Alice is {}, fingerprint {}", alice.address(), alice.public_identity().fingerprint());
    println!("Bob   is {}, fingerprint {}", bob.address(), bob.public_identity().fingerprint());
    // Each primary publishes its signed device list; the other fetches and verifies it.
    let alice_list = own_list(&alice)?;
    let bob_list = own_list(&bob)?;
    alice.process_device_list(&bob_list, now)?;
    bob.process_device_list(&alice_list, now)?;
    println!("Each verified the other's signed device list: version 1, the primary alone.");
    println!(
        "Bob uploads his prekeys: {} one-time prekeys on the server.",
        bob.one_time_prekeys_remaining()
    );

    println!("\n== Alice sends three messages; the server delivers them out of order");
    let bundle = bob.prekey_upload().bundle(Some(0));
    let texts = ["first: hello Bob", "second: are you there?", "third: lunch at noon?"];
    let mut wire = Vec::new();
    for text in texts {
        // Only the first call needs Bob's bundle: later ones ride the session it set up.
        let sent = alice.encrypt_fanout(
            &mut rng,
            &[bob.account()],
            std::slice::from_ref(&bundle),
            text.as_bytes(),
            now,
        )?;
        wire.extend(sent.envelopes.into_iter().map(|e| e.bytes));
    }
    for index in [2usize, 0, 1] {
        let Some(bytes) = wire.get(index) else { continue };
        let Received::Message(received) = bob.receive(bytes, None, now)? else {
            return Err("expected a message".into());
        };
        println!(
            "Bob got message #{} ({} bytes on the wire) from {}: {:?}",
            index + 1,
            bytes.len(),
            received.sender,
            String::from_utf8_lossy(&received.payload)
        );
    }
    println!("Bob has {} one-time prekeys left: one was used.", bob.one_time_prekeys_remaining());

    println!("\n== The server replays a message, and plants one from an unlisted address");
    match bob.receive(wire.get(1).map_or(&[][..], Vec::as_slice), None, now) {
        Err(error) => println!("Bob rejects the replay: {error} (action: {:?})", error.action()),
        Ok(_) => println!("unexpected: replay accepted"),
    }
    let mut squatter = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId(7)), now);
    hazmat::start_session(&mut squatter, &mut rng, &bob.prekey_upload().bundle(Some(1)).verify()?)?;
    let mut planted =
        hazmat::encrypt(&mut squatter, &mut rng, bob.address(), b"I am Alice's laptop")?;
    // Claim to be a direct message (the kind byte follows the version and type bytes).
    if let Some(kind) = planted.get_mut(2) {
        *kind = 1;
    }
    match bob.receive(&planted, None, now) {
        Err(error) => println!(
            "Bob refuses it before any key is derived: {error} (action: {:?}); prekeys left: {}",
            error.action(),
            bob.one_time_prekeys_remaining()
        ),
        Ok(_) => println!("unexpected: planted message accepted"),
    }

    println!("\n== Bob answers; the ratchet turns");
    let reply = alice_only(bob.encrypt_fanout(
        &mut rng,
        &[alice.account()],
        &[],
        b"yes, noon works",
        now,
    )?)?;
    if let Received::Message(received) = alice.receive(&reply, None, now)? {
        println!("Alice got: {:?}", String::from_utf8_lossy(&received.payload));
    }

    println!("\n== Alice moves into the embedded store and restarts from it");
    let dir = std::env::temp_dir().join(format!("multidevice-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("alice.db");
    // The store key lives in the platform keychain; a passphrase (Argon2id) works too.
    let key = StoreKey::generate(&mut rng);
    let store = SqliteStore::open(&path, &SqliteOptions::default())?;
    let mut stored = StoredDevice::import(store, &key, &mut rng, &alice.to_bytes())?;
    drop(alice);
    let sent =
        stored.encrypt_fanout(&mut rng, &[bob.account()], &[], b"kept in the outbox", now)?;
    println!(
        "Alice encrypted a message; the ratchet step and {} envelope(s) committed together.",
        sent.envelopes.len()
    );
    println!("Alice's app crashes before anything reaches the network.");
    drop(stored);
    let store = SqliteStore::open(&path, &SqliteOptions::default())?;
    let mut alice = StoredDevice::open(store, &key, &mut rng)?;
    for item in alice.outbox()? {
        for envelope in &item.envelopes {
            if let Received::Message(received) = bob.receive(&envelope.bytes, None, now)? {
                println!(
                    "After the restart the outbox still held it; Bob got: {:?}",
                    String::from_utf8_lossy(&received.payload)
                );
            }
        }
        alice.mark_sent(item.id)?;
    }
    let reply =
        alice_only(bob.encrypt_fanout(&mut rng, &[alice.account()], &[], b"got it", now)?)?;
    let inbound = alice.receive(&reply, None, now)?;
    println!("Alice received Bob's reply into her inbox (entry {:?}).", inbound.id);
    println!("The server delivers it again: {:?}", alice.receive(&reply, None, now).map(|i| i.id));
    alice.acknowledge(inbound.id)?;
    println!(
        "Once acknowledged, a third delivery is refused: {:?}",
        alice.receive(&reply, None, now).err()
    );
    let file = std::fs::metadata(&path)?.len();
    println!("Alice's store: {file} bytes on disk, every row sealed; no contact named in it.");
    drop(alice);
    std::fs::remove_dir_all(&dir)?;

    accounts_tour(&mut rng, now)?;
    group_tour(&mut rng, now)?;
    recovery_tour(&mut rng, now)
}

/// The signed bytes of a device's own newest list, to publish.
fn own_list(device: &Device) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    Ok(device.device_list(device.account()).ok_or("no own list")?.signed_bytes().to_vec())
}

/// The one envelope of a fan-out to a single-device account.
fn alice_only(sent: multidevice::FanoutMessage) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    Ok(sent.envelopes.into_iter().next().ok_or("no envelope")?.bytes)
}

/// The companion shows a QR code; the primary scans it. Every message but the QR goes through the
/// (untrusted) relay.
fn link_by_qr(
    rng: &mut StdRng,
    primary: &mut Device,
    companion: &mut Device,
    show: bool,
    now: Timestamp,
) -> Result<SignedDeviceList, Box<dyn std::error::Error>> {
    let mut offer = QrLinkOffer::new(rng, companion, now);
    let text = offer.qr_text();
    if show {
        println!("The laptop shows this QR code ({} characters of text):", text.len());
        println!("{}", multidevice::render_terminal(&text)?);
    }
    let (mut approval, message) = QrLinkApproval::approve(primary, &text, now)?;
    let confirmation = offer.accept_approval(companion, &message, now)?;
    Ok(approval.finish(primary, &confirmation, now)?)
}

/// The companion shows an 8-character code; the user types it on the primary; CPace runs over
/// the relay.
fn link_by_code(
    rng: &mut StdRng,
    primary: &mut Device,
    companion: &mut Device,
    now: Timestamp,
) -> Result<SignedDeviceList, Box<dyn std::error::Error>> {
    let (mut attempt, hello) = CompanionPairing::start(rng, companion, now);
    println!("The browser shows the code {}; Carol types it on her phone.", attempt.code());
    let typed = PairingCode::parse(&attempt.code().to_string().to_lowercase())?;
    let (mut pairing, response) = PrimaryPairing::respond(rng, primary, &hello, typed, now)?;
    let confirm = attempt.handle_response(&response, now)?;
    let approval = pairing.handle_confirm(primary, &confirm, now)?;
    let confirmation = attempt.accept_approval(companion, &approval, now)?;
    Ok(pairing.finish(primary, &confirmation, now)?)
}

/// Carol's account: a primary phone and companions, seen by Dave's account.
fn accounts_tour(rng: &mut StdRng, now: Timestamp) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n== Carol's phone (the primary) links four companions");
    let mut carol = Device::new(rng, DeviceAddress::new(AccountId(3), DeviceId::PRIMARY), now);
    let mut companions = Vec::new();
    let first = carol.refresh_device_list(now)?;
    println!("Carol's phone signs list version {} naming itself.", first.version());
    for (name, by_code, show) in [
        ("laptop", false, true),
        ("tablet", false, false),
        ("browser", true, false),
        ("work phone", false, false),
    ] {
        let mut companion = Device::new(rng, DeviceAddress::new(AccountId(3), DeviceId(99)), now);
        let list = if by_code {
            link_by_code(rng, &mut carol, &mut companion, now)?
        } else {
            link_by_qr(rng, &mut carol, &mut companion, show, now)?
        };
        companion.process_device_list(&list.to_bytes(), now)?;
        println!(
            "Linked Carol's {name} by {} as device {}; list version {}.",
            if by_code { "pairing code" } else { "QR code" },
            companion.address(),
            list.version()
        );
        companions.push((name, companion));
    }
    let fifth = Device::new(rng, DeviceAddress::new(AccountId(3), DeviceId(99)), now);
    match carol.approve_companion(fifth.public_identity(), now) {
        Err(error) => println!("A fifth companion is refused before anything is signed: {error}."),
        Ok(_) => println!("unexpected: fifth companion approved"),
    }

    println!("\n== Carol removes her work phone");
    let (_, work_phone) = companions.pop().ok_or("no companion")?;
    let list = carol.remove_companion(work_phone.address().device, now)?;
    println!("New list version {} names {} devices.", list.version(), 1 + companions.len());

    println!("\n== Dave's account learns Carol's list and sends one message to all of it");
    let mut dave = Device::new(rng, DeviceAddress::new(AccountId(4), DeviceId::PRIMARY), now);
    let dave_list = dave.refresh_device_list(now)?;
    let verified = dave.process_device_list(&list.to_bytes(), now)?.list;
    println!("Dave verified Carol's list: {} authorized devices.", verified.devices().len());
    let mut bundles = Vec::new();
    for device in std::iter::once(&mut carol).chain(companions.iter_mut().map(|(_, d)| d)) {
        let _ = device.process_device_list(&list.to_bytes(), now)?;
        device.process_device_list(&dave_list.to_bytes(), now)?;
        device.generate_one_time_prekeys(rng, 5)?;
        bundles.push(device.prekey_upload().bundle(Some(0)));
    }
    println!("Carol's phone goes offline now; her companions keep working.");
    let fanout = dave.encrypt_fanout(rng, &[AccountId(3)], &bundles, b"dinner on Friday?", now)?;
    println!(
        "One call made {} envelopes; skipped: {}.",
        fanout.envelopes.len(),
        fanout.skipped.len()
    );
    for (name, companion) in &mut companions {
        let envelope = fanout
            .envelopes
            .iter()
            .find(|e| e.recipient == companion.address())
            .ok_or("no envelope")?;
        let Received::Message(got) =
            companion.receive(&envelope.bytes, fanout.body.as_deref(), now)?
        else {
            return Err("expected a message".into());
        };
        println!(
            "Carol's {name} reads {:?} from {}.",
            String::from_utf8_lossy(&got.payload),
            got.sender
        );
    }
    println!(
        "Security code for Dave and Carol: {}",
        dave.security_code(AccountId(3)).ok_or("no code")?
    );

    println!("\n== Carol's phone stays unused for 15 days");
    let (name, laptop) = companions.first_mut().ok_or("no companion")?;
    let day13 = now.plus_secs(13 * DAY_SECS);
    let day15 = now.plus_secs(15 * DAY_SECS);
    println!("Day 13: Carol's {name} is {:?}.", laptop.account_status(day13));
    match laptop.encrypt_fanout(rng, &[AccountId(4)], &[], b"anyone there?", day15) {
        Err(error) => println!(
            "Day 15: Carol's {name} is {:?}; sending fails: {error} (action: {:?}).",
            laptop.account_status(day15),
            error.action()
        ),
        Ok(_) => println!("unexpected: a signed-out companion sent a message"),
    }
    println!("Clock wound back to day 1: still {:?}.", laptop.account_status(now));
    let fresh = carol.refresh_device_list(day15)?;
    laptop.process_device_list(&fresh.to_bytes(), day15)?;
    let status = laptop.account_status(day15);
    println!("Carol opens her phone; a fresh list arrives: {:?}.", status);
    assert_eq!(status, AccountStatus::Active);

    let bundles: Vec<_> =
        companions.iter().map(|(_, d)| d.prekey_upload().bundle(Some(1))).collect();
    history_tour(rng, &mut carol, &bundles, day15)
}

/// A new companion links, receives Carol's recent history and a photo, then reads both with the
/// primary offline.
fn history_tour(
    rng: &mut StdRng,
    carol: &mut Device,
    companion_bundles: &[multidevice::PrekeyBundle],
    now: Timestamp,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n== Carol links a new tablet; her phone shares recent history and a photo");
    let mut tablet = Device::new(rng, DeviceAddress::new(AccountId(3), DeviceId(99)), now);
    let list = link_by_qr(rng, carol, &mut tablet, false, now)?;
    tablet.process_device_list(&list.to_bytes(), now)?;
    tablet.generate_one_time_prekeys(rng, 5)?;
    let chats: Vec<String> =
        (1..=200).map(|i| format!("chat message {i} from the last month")).collect();
    let mut history_upload = Vec::new();
    let history = build_history(rng, &chats, &mut history_upload)?;
    let bundle = tablet.prekey_upload().bundle(Some(0));
    let envelope = carol.encrypt_history(rng, tablet.address(), &history, &[bundle], now)?;
    println!(
        "History: {} records, {} encrypted bytes uploaded once; its key goes only to {}.",
        chats.len(),
        history_upload.len(),
        envelope.recipient
    );
    let photo: Vec<u8> = (0..200_000u32).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
    let (photo_upload, photo_descriptor) =
        encrypt_blob(rng, &photo, MediaType::new("image/jpeg")?)?;
    let fanout = carol.encrypt_fanout(
        rng,
        &[AccountId(3)],
        companion_bundles,
        &photo_descriptor.to_bytes(),
        now,
    )?;
    println!(
        "Photo: {} bytes uploaded once; descriptor fanned out to {} devices.",
        photo_upload.len(),
        fanout.envelopes.len()
    );

    println!("Carol's phone goes offline.");
    let Received::History(received) = tablet.receive(&envelope.bytes, None, now.plus_secs(120))?
    else {
        return Err("expected history".into());
    };
    let mut imported = 0;
    import_history(received.descriptor, std::io::Cursor::new(&history_upload), |_record| {
        imported += 1
    })?;
    println!("The tablet imported {imported} history records.");
    let mine =
        fanout.envelopes.iter().find(|e| e.recipient == tablet.address()).ok_or("no envelope")?;
    let Received::Message(message) =
        tablet.receive(&mine.bytes, fanout.body.as_deref(), now.plus_secs(120))?
    else {
        return Err("expected a message".into());
    };
    let descriptor = BlobDescriptor::try_from(message.payload.as_slice())?;
    let decrypted = decrypt_blob(&descriptor, &photo_upload)?;
    println!(
        "The tablet decrypted the {} photo: {} bytes, intact: {}.",
        descriptor.media_type(),
        decrypted.len(),
        decrypted.as_slice() == photo.as_slice()
    );
    Ok(())
}

/// A primary with `companions` companions, its list processed by all of them; returns the
/// devices (primary first) and the list.
fn small_account(
    rng: &mut StdRng,
    id: u64,
    companions: usize,
    now: Timestamp,
) -> Result<(Vec<Device>, Vec<u8>), Box<dyn std::error::Error>> {
    let mut primary = Device::new(rng, DeviceAddress::new(AccountId(id), DeviceId::PRIMARY), now);
    let mut list = own_list(&primary)?;
    let mut devices = Vec::new();
    for _ in 0..companions {
        let mut companion = Device::new(rng, DeviceAddress::new(AccountId(id), DeviceId(9)), now);
        let approval = primary.approve_companion(companion.public_identity(), now)?;
        let signed = companion.countersign_approval(&approval)?;
        list = primary.add_companion(&signed, now)?.to_bytes();
        devices.push(companion);
    }
    devices.insert(0, primary);
    for device in &mut devices {
        device.process_device_list(&list, now)?;
        device.generate_one_time_prekeys(rng, 5)?;
    }
    Ok((devices, list))
}

/// Hands a group send to `device`: its sender key if it has one, then the message.
fn read_group(
    device: &mut Device,
    send: &multidevice::GroupSend,
    now: Timestamp,
) -> Result<String, Box<dyn std::error::Error>> {
    if let Some(envelope) = send.distribution.iter().find(|e| e.recipient == device.address()) {
        device.receive(&envelope.bytes, None, now)?;
    }
    match device.receive(&send.message, None, now) {
        Ok(Received::Group(message)) => Ok(String::from_utf8_lossy(&message.payload).into_owned()),
        Ok(_) => Err("expected a group message".into()),
        Err(error) => Ok(format!("cannot read it ({error})")),
    }
}

/// A group of three accounts with sender keys: one ciphertext for every device, a companion
/// removed, a member removed, and a fresh key each time.
fn group_tour(rng: &mut StdRng, now: Timestamp) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n== A group: Erin, Frank and Grace, eight devices in all");
    let (mut erin, erin_list) = small_account(rng, 10, 1, now)?;
    let (mut frank, frank_list) = small_account(rng, 11, 2, now)?;
    let (mut grace, grace_list) = small_account(rng, 12, 1, now)?;
    for device in erin.iter_mut().chain(frank.iter_mut()).chain(grace.iter_mut()) {
        for list in [&erin_list, &frank_list, &grace_list] {
            device.process_device_list(list, now)?;
        }
    }
    let bundles: Vec<_> = erin
        .iter()
        .chain(frank.iter())
        .chain(grace.iter())
        .map(|d| d.prekey_upload().bundle(Some(0)))
        .collect();
    let [erin_phone, erin_laptop] = erin.as_mut_slice() else { return Err("two devices".into()) };
    let [frank_phone, frank_laptop, frank_tablet] = frank.as_mut_slice() else {
        return Err("three devices".into());
    };
    let members = [AccountId(11), AccountId(12)];
    let group = erin_phone.create_group(rng, &members)?;
    let send = erin_phone.encrypt_group(rng, group, &bundles, b"dinner at eight?", now)?;
    println!(
        "Erin's phone sent its sender key to {} devices, then one group message of {} bytes.",
        send.distribution.len(),
        send.message.len()
    );
    let everyone = [&mut *erin_laptop, &mut *frank_phone, &mut *frank_laptop, &mut *frank_tablet];
    for device in everyone.into_iter().chain(grace.iter_mut()) {
        println!("  {} reads: {}", device.address(), read_group(device, &send, now)?);
    }
    let next = erin_phone.encrypt_group(rng, group, &[], b"I'll bring dessert", now)?;
    println!(
        "The next message needs no key at all: {} distributions, {} bytes for everyone.",
        next.distribution.len(),
        next.message.len()
    );
    for device in [&mut *frank_phone, &mut *frank_laptop, &mut *frank_tablet] {
        read_group(device, &next, now)?;
    }

    println!("\n== Frank removes his old tablet; Erin removes Grace from the group");
    let list = frank_phone.remove_companion(frank_tablet.address().device, now)?.to_bytes();
    erin_phone.process_device_list(&list, now)?;
    erin_phone.set_group_members(group, &[AccountId(11)])?;
    let after = erin_phone.encrypt_group(rng, group, &bundles, b"change of plan", now)?;
    println!(
        "Erin's next send made a fresh sender key (rotated: {}) for the {} devices still in it.",
        after.rotated,
        after.distribution.len()
    );
    println!("  Frank's phone reads: {}", read_group(frank_phone, &after, now)?);
    println!("  The removed tablet: {}", read_group(frank_tablet, &after, now)?);
    if let Some(grace_phone) = grace.first_mut() {
        println!("  Grace's phone: {}", read_group(grace_phone, &after, now)?);
    }
    Ok(())
}

/// Sends `text` from `from` to every device of `to`'s account and returns the envelope for `to`.
fn send_to(
    rng: &mut StdRng,
    from: &mut Device,
    to: &Device,
    text: &str,
    now: Timestamp,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let bundle = to.prekey_upload().bundle(None);
    let sent = from.encrypt_fanout(rng, &[to.account()], &[bundle], text.as_bytes(), now)?;
    let envelope = sent.envelopes.into_iter().find(|e| e.recipient == to.address());
    Ok(envelope.ok_or("no envelope for the device")?.bytes)
}

/// Reads `envelope` at `device`; on a failure a fresh session cures, carries the retry request
/// to `sender`, which answers from its sent-message cache, and reads the answer.
fn read_with_retry(
    rng: &mut StdRng,
    device: &mut Device,
    sender: &mut Device,
    envelope: &[u8],
    now: Timestamp,
) -> Result<String, Box<dyn std::error::Error>> {
    let failure = match device.receive_or_retry(envelope, None, now) {
        Ok(Received::Message(message)) => {
            return Ok(String::from_utf8_lossy(&message.payload).into_owned());
        }
        Ok(_) => return Err("expected a message".into()),
        Err(failure) => failure,
    };
    let request = failure.retry.ok_or("no retry request")?;
    println!(
        "  {} cannot read it ({}); it asks {} to retry (reason {:?}, try {}).",
        device.address(),
        failure.error,
        sender.address(),
        request.reason,
        request.count
    );
    let Received::RetryRequest(verified) = sender.receive(&request.to_bytes(), None, now)? else {
        return Err("expected a retry request".into());
    };
    let answer = sender.answer_retry(rng, &verified, now)?;
    println!("  {} re-encrypts it from its cache on a fresh session.", sender.address());
    let Received::Message(message) = device.receive(&answer.envelope.bytes, None, now)? else {
        return Err("expected the message".into());
    };
    Ok(String::from_utf8_lossy(&message.payload).into_owned())
}

/// A companion restored from an older backup: messages to it and from it fail on sessions that
/// moved on since, and retry requests recover them without the user doing anything.
fn recovery_tour(rng: &mut StdRng, now: Timestamp) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n== Dana's laptop is restored from an old backup; nothing is lost");
    let (mut dana, dana_list) = small_account(rng, 20, 1, now)?;
    let (mut carl, carl_list) = small_account(rng, 21, 0, now)?;
    for device in &mut dana {
        device.process_device_list(&carl_list, now)?;
    }
    let [_, laptop] = dana.as_mut_slice() else { return Err("two devices".into()) };
    let carl = carl.first_mut().ok_or("Carl's phone")?;
    carl.process_device_list(&dana_list, now)?;
    let hello = send_to(rng, carl, laptop, "hi Dana", now)?;
    laptop.receive(&hello, None, now)?;
    let backup = laptop.to_bytes();
    println!("Dana's laptop is backed up after Carl's first message.");
    for text in ["how was the trip?", "send photos!"] {
        let reply = send_to(rng, laptop, carl, "great, more soon", now)?;
        carl.receive(&reply, None, now)?;
        let next = send_to(rng, carl, laptop, text, now)?;
        laptop.receive(&next, None, now)?;
    }
    println!("They talk on; both ratchets turn twice. Then the laptop's disk dies.");
    *laptop = Device::from_bytes(&backup)?;
    // Both write at once: Carl on the session he has, the laptop on the one it had at the backup.
    let lost = send_to(rng, carl, laptop, "dinner on Friday?", now)?;
    let own = send_to(rng, laptop, carl, "I'm back, did I miss anything?", now)?;
    println!("Carl's message reaches the restored laptop, on a ratchet step the backup never saw:");
    println!("  It reads: {:?}", read_with_retry(rng, laptop, carl, &lost, now)?);
    println!("The laptop's message reaches Carl on the session as it was at the backup:");
    println!("  Carl reads: {:?}", read_with_retry(rng, carl, laptop, &own, now)?);
    let again = send_to(rng, carl, laptop, "see you then", now)?;
    match laptop.receive(&again, None, now)? {
        Received::Message(message) => println!(
            "From now on both sides use the fresh sessions: {:?}",
            String::from_utf8_lossy(&message.payload)
        ),
        _ => return Err("expected a message".into()),
    }
    Ok(())
}
