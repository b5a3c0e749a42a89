//! A tour of multidevice: two devices set up a session and exchange messages out of order.
//!
//! Run with `cargo run --release --example quickstart`.

use multidevice::{AccountId, Device, DeviceAddress, DeviceId, Timestamp};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let now = Timestamp(1_700_000_000);

    println!("== Two devices meet");
    let mut alice = Device::new(&mut rng, DeviceAddress::new(AccountId(1), DeviceId::PRIMARY), now);
    let mut bob = Device::new(&mut rng, DeviceAddress::new(AccountId(2), DeviceId::PRIMARY), now);
    bob.generate_one_time_prekeys(&mut rng, 20)?;
    println!("Alice is {}, fingerprint {}", alice.address(), alice.public_identity().fingerprint());
    println!("Bob   is {}, fingerprint {}", bob.address(), bob.public_identity().fingerprint());
    println!(
        "Bob uploads his prekeys: {} one-time prekeys on the server.",
        bob.one_time_prekeys_remaining()
    );

    let bundle = bob.prekey_upload().bundle(Some(0)).verify()?;
    alice.start_session(&mut rng, &bundle)?;
    println!("Alice fetched and verified Bob's bundle and started a session.");

    println!("\n== Alice sends three messages; the server delivers them out of order");
    let texts = ["first: hello Bob", "second: are you there?", "third: lunch at noon?"];
    let mut wire = Vec::new();
    for text in texts {
        wire.push(alice.encrypt(&mut rng, bob.address(), text.as_bytes())?);
    }
    for index in [2usize, 0, 1] {
        let Some(bytes) = wire.get(index) else { continue };
        let received = bob.decrypt(bytes, now)?;
        println!(
            "Bob got message #{} ({} bytes on the wire){}: {:?}",
            index + 1,
            bytes.len(),
            if received.new_session { ", which opened a new session" } else { "" },
            String::from_utf8_lossy(&received.plaintext)
        );
    }
    println!("Bob has {} one-time prekeys left: one was used.", bob.one_time_prekeys_remaining());

    println!("\n== The server replays a message");
    match bob.decrypt(wire.get(1).map_or(&[][..], Vec::as_slice), now) {
        Err(error) => println!("Bob rejects it: {error}"),
        Ok(_) => println!("unexpected: replay accepted"),
    }

    println!("\n== Bob answers; the ratchet turns");
    let reply = bob.encrypt(&mut rng, alice.address(), b"yes, noon works")?;
    let received = alice.decrypt(&reply, now)?;
    println!("Alice got: {:?}", String::from_utf8_lossy(&received.plaintext));

    println!("\n== Both devices persist and restore their state");
    let saved = alice.to_bytes();
    println!("Alice's state is {} bytes.", saved.len());
    let mut alice = Device::from_bytes(&saved)?;
    let message = alice.encrypt(&mut rng, bob.address(), b"still here after a restart")?;
    println!("Bob got: {:?}", String::from_utf8_lossy(&bob.decrypt(&message, now)?.plaintext));
    Ok(())
}
