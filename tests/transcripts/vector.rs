//! The vector file format, the recording RNG that fills the files' randomness, and the replaying
//! RNG that feeds it back.
//!
//! A file is one JSON object:
//!
//! ```text
//! {
//!   "vector": name, "format": 1, "description": ..., "spec": sections of docs/PROTOCOL.md,
//!   "rng": { "algorithm": ..., "seed": hex },
//!   "entries": [ { "name", "kind", one of "hex" | "text" | "int", "description" }, ... ]
//! }
//! ```
//!
//! Entries are in the order the scenario produced them; names are unique within a file. Kinds:
//! `input` (chosen by the scenario: addresses, times, payloads), `random` (bytes the crate drew
//! from its RNG, in the exact order and sizes it drew them: every draw is recorded, none is
//! left out), `secret` (a secret key the crate derived or holds, read through
//! `multidevice::test_support`), `intermediate` (a value computed on the way), `output` (bytes
//! the crate produced, compared with the independent computation).

use std::convert::Infallible;
use std::fmt::Write as _;

use chacha20::ChaCha20Rng;
use rand::{SeedableRng, TryCryptoRng, TryRng};

/// Version of the file format.
pub(crate) const FORMAT: u64 = 1;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Input,
    Random,
    Secret,
    Intermediate,
    Output,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Input => "input",
            Kind::Random => "random",
            Kind::Secret => "secret",
            Kind::Intermediate => "intermediate",
            Kind::Output => "output",
        }
    }
}

/// An entry's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Hex(Vec<u8>),
    Text(String),
    Int(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) value: Value,
    pub(crate) description: String,
}

/// One vector file being built.
pub(crate) struct Vector {
    name: &'static str,
    description: &'static str,
    spec: &'static str,
    seed: [u8; 32],
    entries: Vec<Entry>,
}

impl Vector {
    pub(crate) fn new(
        name: &'static str,
        description: &'static str,
        spec: &'static str,
        seed: [u8; 32],
    ) -> Self {
        Self { name, description, spec, seed, entries: Vec::new() }
    }

    fn push(&mut self, name: &str, kind: Kind, value: Value, description: &str) {
        assert!(
            self.entries.iter().all(|e| e.name != name),
            "{}: entry {name} recorded twice",
            self.name
        );
        self.entries.push(Entry {
            name: name.to_owned(),
            kind,
            value,
            description: description.to_owned(),
        });
    }

    pub(crate) fn hex(&mut self, kind: Kind, name: &str, bytes: &[u8], description: &str) {
        self.push(name, kind, Value::Hex(bytes.to_vec()), description);
    }

    pub(crate) fn text(&mut self, kind: Kind, name: &str, text: &str, description: &str) {
        self.push(name, kind, Value::Text(text.to_owned()), description);
    }

    pub(crate) fn int(&mut self, kind: Kind, name: &str, value: u64, description: &str) {
        self.push(name, kind, Value::Int(value), description);
    }

    pub(crate) fn input(&mut self, name: &str, bytes: &[u8], description: &str) {
        self.hex(Kind::Input, name, bytes, description);
    }

    pub(crate) fn secret(&mut self, name: &str, bytes: &[u8], description: &str) {
        self.hex(Kind::Secret, name, bytes, description);
    }

    pub(crate) fn mid(&mut self, name: &str, bytes: &[u8], description: &str) {
        self.hex(Kind::Intermediate, name, bytes, description);
    }

    /// Records bytes the crate produced, after checking them against the independent
    /// computation from the spec.
    pub(crate) fn output(
        &mut self,
        name: &str,
        crate_bytes: &[u8],
        spec: &[u8],
        description: &str,
    ) {
        assert_eq!(
            hex(crate_bytes),
            hex(spec),
            "{}: {name}: the crate's bytes differ from docs/PROTOCOL.md's computation",
            self.name
        );
        self.hex(Kind::Output, name, crate_bytes, description);
    }

    /// Takes the draws the crate made since the last call and records them, one entry per draw,
    /// checking their number and sizes against `expected` (name, length, description).
    pub(crate) fn draws(
        &mut self,
        tape: &mut Tape,
        expected: &[(&str, usize, &str)],
    ) -> Vec<Vec<u8>> {
        let draws = tape.take();
        let sizes: Vec<usize> = draws.iter().map(Vec::len).collect();
        let wanted: Vec<usize> = expected.iter().map(|e| e.1).collect();
        assert_eq!(sizes, wanted, "{}: the crate drew {sizes:?}, expected {wanted:?}", self.name);
        for ((name, _, description), draw) in expected.iter().zip(&draws) {
            self.hex(Kind::Random, name, draw, description);
        }
        draws
    }

    /// The value of an entry recorded earlier.
    pub(crate) fn get(&self, name: &str) -> &Value {
        &self.entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name}")).value
    }

    /// The bytes of a hex entry recorded earlier.
    pub(crate) fn bytes(&self, name: &str) -> Vec<u8> {
        match self.get(name) {
            Value::Hex(bytes) => bytes.clone(),
            other => panic!("{name} is {other:?}, not bytes"),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The file's JSON text: one entry per line, so a change shows as a line diff.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("{\n");
        writeln!(out, "  \"vector\": {},", json_string(self.name)).unwrap();
        writeln!(out, "  \"format\": {FORMAT},").unwrap();
        writeln!(out, "  \"description\": {},", json_string(self.description)).unwrap();
        writeln!(out, "  \"spec\": {},", json_string(self.spec)).unwrap();
        writeln!(
            out,
            "  \"rng\": {{\"algorithm\": {}, \"seed\": \"{}\"}},",
            json_string(RNG_ALGORITHM),
            hex(&self.seed)
        )
        .unwrap();
        out.push_str("  \"entries\": [\n");
        for (i, entry) in self.entries.iter().enumerate() {
            let value = match &entry.value {
                Value::Hex(bytes) => format!("\"hex\": \"{}\"", hex(bytes)),
                Value::Text(text) => format!("\"text\": {}", json_string(text)),
                Value::Int(value) => format!("\"int\": {value}"),
            };
            let comma = if i + 1 == self.entries.len() { "" } else { "," };
            writeln!(
                out,
                "    {{\"name\": {}, \"kind\": \"{}\", {value}, \"description\": {}}}{comma}",
                json_string(&entry.name),
                entry.kind.as_str(),
                json_string(&entry.description)
            )
            .unwrap();
        }
        out.push_str("  ]\n}\n");
        out
    }
}

/// How the files' randomness was produced (another implementation never needs it: every byte
/// drawn is in the file).
pub(crate) const RNG_ALGORITHM: &str =
    "ChaCha20Rng (chacha20 0.10, rand_core SeedableRng::from_seed), fill_bytes only";

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        write!(s, "{b:02x}").unwrap();
        s
    })
}

pub(crate) fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The RNG handed to the crate while a vector is generated: a seeded ChaCha20 stream that
/// records every draw. The crate draws only with `fill_bytes` (keys, nonces, scalars); a
/// `next_u32`/`next_u64` call would make the recorded bytes depend on how the generator buffers
/// words, so it fails the test instead.
pub(crate) struct Tape {
    rng: ChaCha20Rng,
    drawn: Vec<Vec<u8>>,
}

impl Tape {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self { rng: ChaCha20Rng::from_seed(seed), drawn: Vec::new() }
    }

    /// The draws since the last call, oldest first.
    pub(crate) fn take(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.drawn)
    }

    /// Asserts that every draw was recorded.
    pub(crate) fn finish(mut self) {
        assert!(self.take().is_empty(), "the crate drew bytes no entry records");
    }
}

impl TryRng for Tape {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        panic!("the crate drew a u32; the vectors record fill_bytes draws only")
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        panic!("the crate drew a u64; the vectors record fill_bytes draws only")
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.rng.try_fill_bytes(dst)?;
        self.drawn.push(dst.to_vec());
        Ok(())
    }
}

impl TryCryptoRng for Tape {}

/// Feeds recorded draws back, one `fill_bytes` call per draw, each of exactly the recorded
/// length: what another implementation does with a file's `random` entries.
pub(crate) struct Replay {
    draws: std::collections::VecDeque<Vec<u8>>,
}

impl Replay {
    pub(crate) fn new(draws: Vec<Vec<u8>>) -> Self {
        Self { draws: draws.into() }
    }

    /// Asserts that every recorded draw was used.
    pub(crate) fn finish(self) {
        assert!(self.draws.is_empty(), "{} recorded draws left unused", self.draws.len());
    }
}

impl TryRng for Replay {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        panic!("replay serves fill_bytes draws only")
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        panic!("replay serves fill_bytes draws only")
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let draw = self.draws.pop_front().expect("a recorded draw left");
        assert_eq!(draw.len(), dst.len(), "a draw of another size than recorded");
        dst.copy_from_slice(&draw);
        Ok(())
    }
}

impl TryCryptoRng for Replay {}

/// A parsed vector file, for the replay tests.
pub(crate) struct File {
    pub(crate) entries: Vec<(String, String, serde_json::Value)>,
}

impl File {
    pub(crate) fn parse(text: &str) -> Self {
        let json: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(json["format"].as_u64(), Some(FORMAT));
        let entries = json["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                let name = e["name"].as_str().expect("name").to_owned();
                let kind = e["kind"].as_str().expect("kind").to_owned();
                assert!(e["description"].as_str().is_some_and(|d| !d.is_empty()), "{name}");
                (name, kind, e.clone())
            })
            .collect();
        Self { entries }
    }

    fn entry(&self, name: &str) -> &serde_json::Value {
        &self.entries.iter().find(|e| e.0 == name).unwrap_or_else(|| panic!("no {name}")).2
    }

    pub(crate) fn hex(&self, name: &str) -> Vec<u8> {
        unhex(self.entry(name)["hex"].as_str().unwrap_or_else(|| panic!("{name} is no hex")))
    }

    pub(crate) fn text(&self, name: &str) -> String {
        self.entry(name)["text"].as_str().unwrap_or_else(|| panic!("{name} is no text")).to_owned()
    }

    pub(crate) fn int(&self, name: &str) -> u64 {
        self.entry(name)["int"].as_u64().unwrap_or_else(|| panic!("{name} is no int"))
    }

    /// The recorded draws whose names start with `prefix`, in file order.
    pub(crate) fn draws(&self, prefix: &str) -> Vec<Vec<u8>> {
        self.entries
            .iter()
            .filter(|e| e.1 == "random" && e.0.starts_with(prefix))
            .map(|e| unhex(e.2["hex"].as_str().expect("hex")))
            .collect()
    }

    /// A replaying RNG over the draws whose names start with `prefix`.
    pub(crate) fn replay(&self, prefix: &str) -> Replay {
        Replay::new(self.draws(prefix))
    }
}
