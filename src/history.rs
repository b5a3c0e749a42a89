//! History sync: the primary hands a newly linked companion its recent conversations.
//!
//! The app gives the primary opaque records. They are framed (`u32` length, then the bytes) and
//! encrypted as one blob under a one-time key; the blob's descriptor travels only to the new
//! companion, inside their pairwise session, as a message of the history kind. The companion
//! accepts it through [`Device::receive`] only from its own account's primary, only while it is
//! a linked companion within [`HISTORY_WINDOW_SECS`] of its link, and imports the records
//! through a callback after the blob's digest has been checked. This module never sends history
//! to a device outside the primary's own list and never presents records from a blob whose
//! digest did not match.

use std::io::{self, Read, Seek, Write};

use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use crate::account::Role;
use crate::blob::{self, BlobDescriptor, MediaType};
use crate::device::Device;
use crate::error::{BlobError, HistoryError};
use crate::fanout::{Content, Envelope, FanoutSkip, Inner};
use crate::keys::{DeviceAddress, Timestamp};
use crate::prekeys::PrekeyBundle;
use crate::session::message::MessageKind;
use crate::wiping::reserve_wiping;

use crate::consts::{HISTORY_WINDOW_SECS, MAX_HISTORY_RECORD};

/// The media type of history blobs.
pub const HISTORY_MEDIA_TYPE: &str = "application/x-multidevice-history";

/// Length of the big-endian `u32` length prefix of every framed record.
const RECORD_PREFIX_LEN: usize = 4;

/// Frames records lazily, serving each length prefix and record straight from the caller's
/// buffers (no copy of the plaintext), so a history of any size is read in constant memory.
struct RecordReader<I: Iterator> {
    records: I,
    current: Option<I::Item>,
    prefix: [u8; RECORD_PREFIX_LEN],
    /// Position within `prefix || current`.
    position: usize,
    /// Set when a record over [`MAX_HISTORY_RECORD`] stopped the stream.
    oversized: Option<u64>,
}

impl<I: Iterator> RecordReader<I> {
    fn new(records: I) -> Self {
        Self {
            records,
            current: None,
            prefix: [0; RECORD_PREFIX_LEN],
            position: 0,
            oversized: None,
        }
    }
}

impl<I, R> Read for RecordReader<I>
where
    I: Iterator<Item = R>,
    R: AsRef<[u8]>,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.oversized.is_some() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        loop {
            let Some(record) = &self.current else {
                let Some(record) = self.records.next() else { return Ok(0) };
                let len = record.as_ref().len();
                let prefix = u32::try_from(len).ok().filter(|_| len <= MAX_HISTORY_RECORD);
                let Some(prefix) = prefix else {
                    self.oversized = Some(u64::try_from(len).unwrap_or(u64::MAX));
                    return Err(io::Error::from(io::ErrorKind::InvalidInput));
                };
                self.prefix = prefix.to_be_bytes();
                self.position = 0;
                self.current = Some(record);
                continue;
            };
            let record = record.as_ref();
            let source = match self.position.checked_sub(RECORD_PREFIX_LEN) {
                None => self.prefix.get(self.position..).unwrap_or_default(),
                Some(offset) => record.get(offset..).unwrap_or_default(),
            };
            if source.is_empty() && self.position >= RECORD_PREFIX_LEN {
                self.current = None;
                continue;
            }
            let n = source.len().min(out.len());
            if let (Some(dst), Some(src)) = (out.get_mut(..n), source.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.position += n;
            return Ok(n);
        }
    }
}

/// Parses framed records as plaintext arrives and hands each complete one to the callback.
struct RecordSink<F: FnMut(&[u8])> {
    on_record: F,
    /// The bytes of a record not yet complete; grown only by [`reserve_wiping`].
    pending: Zeroizing<Vec<u8>>,
    records: u64,
    /// Set when a length prefix over [`MAX_HISTORY_RECORD`] stopped the import.
    oversized: Option<u64>,
}

impl<F: FnMut(&[u8])> RecordSink<F> {
    fn new(on_record: F) -> Self {
        Self { on_record, pending: Zeroizing::new(Vec::new()), records: 0, oversized: None }
    }

    /// Hands out every complete record at the start of `data`; returns how many bytes it used.
    fn hand_out(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut used = 0;
        while let Some((prefix, rest)) =
            data.get(used..).and_then(|d| d.split_first_chunk::<RECORD_PREFIX_LEN>())
        {
            let len = self.checked_len(*prefix)?;
            let Some(record) = rest.get(..len) else { break };
            (self.on_record)(record);
            self.records += 1;
            used += RECORD_PREFIX_LEN + len;
        }
        Ok(used)
    }

    fn checked_len(&mut self, prefix: [u8; RECORD_PREFIX_LEN]) -> io::Result<usize> {
        let len = u32::from_be_bytes(prefix);
        match usize::try_from(len) {
            Ok(len) if len <= MAX_HISTORY_RECORD => Ok(len),
            _ => {
                self.oversized = Some(u64::from(len));
                Err(io::Error::from(io::ErrorKind::InvalidData))
            }
        }
    }
}

impl<F: FnMut(&[u8])> RecordSink<F> {
    /// Appends to the pending record, growing its buffer once to exactly the record's framed
    /// size as soon as the length prefix is known (only the prefix's size before that).
    fn stash(&mut self, bytes: &[u8]) -> io::Result<()> {
        let have = self.pending.len();
        let mut prefix = [0u8; RECORD_PREFIX_LEN];
        let known = self.pending.iter().chain(bytes).take(RECORD_PREFIX_LEN);
        let mut filled = 0;
        for (slot, byte) in prefix.iter_mut().zip(known) {
            *slot = *byte;
            filled += 1;
        }
        let framed_len = match filled {
            RECORD_PREFIX_LEN => RECORD_PREFIX_LEN + self.checked_len(prefix)?,
            _ => RECORD_PREFIX_LEN,
        };
        reserve_wiping(&mut self.pending, framed_len.max(have + bytes.len()));
        self.pending.extend_from_slice(bytes);
        Ok(())
    }
}

impl<F: FnMut(&[u8])> Write for RecordSink<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut fresh = data;
        if !self.pending.is_empty() {
            // Complete the pending record first: its prefix, then its body.
            let missing_prefix = RECORD_PREFIX_LEN.saturating_sub(self.pending.len());
            let (head, rest) = fresh.split_at(missing_prefix.min(fresh.len()));
            self.stash(head)?;
            fresh = rest;
            let Some(prefix) = self.pending.first_chunk::<RECORD_PREFIX_LEN>().copied() else {
                return Ok(data.len());
            };
            let framed_len = RECORD_PREFIX_LEN + self.checked_len(prefix)?;
            let missing = framed_len.saturating_sub(self.pending.len());
            let (head, rest) = fresh.split_at(missing.min(fresh.len()));
            self.stash(head)?;
            fresh = rest;
            if self.pending.len() < framed_len {
                return Ok(data.len());
            }
            (self.on_record)(self.pending.get(RECORD_PREFIX_LEN..).unwrap_or_default());
            self.records += 1;
            self.pending.as_mut_slice().zeroize();
            self.pending.clear();
        }
        let used = self.hand_out(fresh)?;
        self.stash(fresh.get(used..).unwrap_or_default())?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Fuzz entry point for the history record parser. Never panics; returns `false` only if an
/// invariant is broken: `data` fed to the parser in one write and again in pieces of 1 to 9
/// bytes (sizes taken from `data` itself) must give the same records and the same verdict,
/// and records accepted as complete must frame back to exactly the bytes they came from.
#[cfg(any(test, feature = "test-support"))]
pub fn fuzz_record_stream(data: &[u8]) -> bool {
    let mut cuts = Vec::new();
    let mut position = 0;
    for &byte in data {
        position += 1 + usize::from(byte % 9);
        if position >= data.len() {
            break;
        }
        cuts.push(position);
    }
    let whole = parse_records(data, &[]);
    let pieces = parse_records(data, &cuts);
    let reframed = whole.records.iter().fold(Vec::new(), |mut out, record| {
        out.extend_from_slice(&u32::try_from(record.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(record);
        out
    });
    let consistent = match whole.oversized {
        None => {
            data.get(..reframed.len()) == Some(reframed.as_slice())
                && reframed.len() + whole.pending == data.len()
        }
        Some(_) => data.starts_with(&reframed),
    };
    whole == pieces && consistent
}

/// What the record parser made of a stream.
#[cfg(any(test, feature = "test-support"))]
#[derive(PartialEq, Eq)]
struct ParsedRecords {
    records: Vec<Vec<u8>>,
    pending: usize,
    oversized: Option<u64>,
}

/// Feeds `stream` to a record parser in pieces ending at `cuts` (ascending), stopping at the
/// first error as a blob decryptor would.
#[cfg(any(test, feature = "test-support"))]
fn parse_records(stream: &[u8], cuts: &[usize]) -> ParsedRecords {
    let mut records = Vec::new();
    let mut sink = RecordSink::new(|r: &[u8]| records.push(r.to_vec()));
    let mut start = 0;
    for &end in cuts.iter().chain([&stream.len()]) {
        let piece = stream.get(start..end).unwrap_or_default();
        if sink.write(piece).is_err() {
            break;
        }
        start = end;
    }
    // Where a stream stopped on an oversized prefix, what was pending is moot.
    let oversized = sink.oversized;
    let pending = if oversized.is_some() { 0 } else { sink.pending.len() };
    ParsedRecords { records, pending, oversized }
}

/// Encrypts `records` as a history blob into `writer` (the bytes to upload) and returns the
/// descriptor to send with [`Device::encrypt_history`]. Records are read lazily, in constant
/// memory.
///
/// ```
/// use multidevice::{build_history, import_history};
///
/// let mut rng = rand::rng();
/// let chats = [&b"alice: hi"[..], &b"bob: hello"[..]];
/// let mut upload = Vec::new();
/// let descriptor = build_history(&mut rng, chats, &mut upload)?;
///
/// // The companion receives the descriptor through `Device::decrypt_history`.
/// let mut imported = Vec::new();
/// let count = import_history(descriptor, std::io::Cursor::new(&upload), |record| {
///     imported.push(record.to_vec())
/// })?;
/// assert_eq!((count, imported), (2, vec![b"alice: hi".to_vec(), b"bob: hello".to_vec()]));
/// # Ok::<(), multidevice::HistoryError>(())
/// ```
///
/// # Errors
/// [`HistoryError::RecordTooLarge`] for a record over [`MAX_HISTORY_RECORD`] bytes (the bytes
/// written so far are then no valid blob); [`HistoryError::Blob`] if writing fails.
pub fn build_history<R: AsRef<[u8]>>(
    rng: &mut (impl CryptoRng + ?Sized),
    records: impl IntoIterator<Item = R>,
    writer: impl Write,
) -> Result<BlobDescriptor, HistoryError> {
    let media_type = MediaType::new(HISTORY_MEDIA_TYPE).map_err(BlobError::from)?;
    let mut reader = RecordReader::new(records.into_iter());
    let result = blob::encrypt_stream(rng, &mut reader, writer, media_type);
    match reader.oversized {
        Some(len) => Err(HistoryError::RecordTooLarge { len }),
        None => Ok(result?),
    }
}

/// Decrypts a downloaded history blob, checking its digest in a first pass before any record
/// comes out, and hands each record to `on_record`. Returns the number of records. Takes the
/// descriptor by value: its key is wiped when the import ends, whatever the outcome.
///
/// On an error after some records were handed out (the blob is authentic, but its sender
/// framed it wrongly), the import as a whole failed and those records should be discarded.
///
/// # Errors
/// [`HistoryError::Blob`] for any blob failure ([`BlobError::DigestMismatch`] before any
/// record), [`HistoryError::RecordTooLarge`] for a length prefix over [`MAX_HISTORY_RECORD`],
/// [`HistoryError::TruncatedRecord`] if the plaintext ends inside a record.
pub fn import_history(
    descriptor: BlobDescriptor,
    blob_bytes: impl Read + Seek,
    on_record: impl FnMut(&[u8]),
) -> Result<u64, HistoryError> {
    let mut sink = RecordSink::new(on_record);
    let result = blob::decrypt_verified(&descriptor, blob_bytes, &mut sink);
    drop(descriptor);
    if let Some(len) = sink.oversized {
        return Err(HistoryError::RecordTooLarge { len });
    }
    result?;
    if !sink.pending.is_empty() {
        return Err(HistoryError::TruncatedRecord);
    }
    Ok(sink.records)
}

impl Device {
    /// Primary: sends a history descriptor to one newly linked companion of its own account
    /// (linked at most [`HISTORY_WINDOW_SECS`] ago by the clock high-water mark), through their
    /// pairwise session under the identity the own list names (set up from `bundles` if
    /// needed). The companion accepts it through [`Device::receive`].
    pub fn encrypt_history(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        companion: DeviceAddress,
        descriptor: &BlobDescriptor,
        bundles: &[PrekeyBundle],
        now: Timestamp,
    ) -> Result<Envelope, HistoryError> {
        self.observe(now);
        if !matches!(self.role, Role::Primary(_)) {
            return Err(HistoryError::NotPrimary);
        }
        if companion.account != self.address.account
            || companion.device.is_primary()
            || self.authorize(companion).is_err()
        {
            return Err(HistoryError::NotOwnCompanion(companion));
        }
        let linked_at = self
            .companion_linked_at(companion.device)
            .ok_or(HistoryError::NotOwnCompanion(companion))?;
        if self.clock.secs_since(linked_at) > HISTORY_WINDOW_SECS {
            return Err(HistoryError::NotNewlyLinked(companion));
        }
        let (list_version, list_digest) = self.own_list_announcement();
        let descriptor = descriptor.to_bytes();
        let mut message_id = [0u8; 16];
        rng.fill_bytes(&mut message_id);
        let plaintext = Inner {
            list_version,
            list_digest,
            message_id,
            group: None,
            to: Vec::new(),
            content: Content::History(&descriptor),
        }
        .encode();
        let (bytes, mark) = self
            .seal_authorized_marked(rng, companion, MessageKind::History, &plaintext, bundles)
            .map_err(|skip| match skip {
                FanoutSkip::Session(error) => HistoryError::Session(error),
                skip => HistoryError::NoSession(companion, skip),
            })?;
        let sent = crate::retry::message_ref(&bytes).map(|reference| (companion, mark, reference));
        let kind = crate::retry::SentKind::History;
        let recipients = crate::retry::Recipients::Devices(sent.into_iter().collect());
        self.remember_sent(message_id, kind, &descriptor, recipients);
        Ok(Envelope { recipient: companion, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[&[u8]]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| {
                let len = u32::try_from(r.len()).unwrap_or(u32::MAX);
                len.to_be_bytes().into_iter().chain(r.iter().copied())
            })
            .collect()
    }

    fn owned(records: &[&[u8]]) -> Vec<Vec<u8>> {
        records.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn sink_reassembles_records_cut_anywhere() {
        let records: [&[u8]; 5] = [b"", b"a", b"hello world", b"", &[9; 300]];
        let stream = framed(&records);
        for cut in 0..=stream.len() {
            let parsed = parse_records(&stream, &[cut]);
            assert!(parsed.records == owned(&records) && parsed.pending == 0, "cut {cut}");
        }
        let every_byte: Vec<usize> = (0..=stream.len()).collect();
        assert_eq!(parse_records(&stream, &every_byte).records, owned(&records));
    }

    #[test]
    fn sink_keeps_a_partial_record_pending() {
        let stream = framed(&[b"complete", b"partial"]);
        let cut = stream.len() - 3;
        let parsed = parse_records(stream.get(..cut).unwrap_or_default(), &[5]);
        assert_eq!(parsed.records, owned(&[b"complete"]));
        assert_eq!(parsed.pending, 4 + b"partial".len() - 3);
    }

    #[test]
    fn sink_rejects_an_oversized_prefix_split_across_writes() {
        let oversized = u32::try_from(MAX_HISTORY_RECORD + 1).unwrap_or(u32::MAX).to_be_bytes();
        let largest = u32::try_from(MAX_HISTORY_RECORD).unwrap_or(u32::MAX).to_be_bytes();
        let stream = [&framed(&[b"first"])[..], &oversized, b"body"].concat();
        let prefix_start = 4 + b"first".len();
        for cut in prefix_start..prefix_start + 4 {
            let parsed = parse_records(&stream, &[cut]);
            assert_eq!(parsed.records, owned(&[b"first"]), "cut {cut}");
            assert_eq!(parsed.oversized, Some(u64::from(u32::from_be_bytes(oversized))));
        }
        // At exactly the limit the prefix is accepted and the record waits for its body.
        let stream = [&largest[..], b"body"].concat();
        let parsed = parse_records(&stream, &[2]);
        assert_eq!((parsed.oversized, parsed.pending), (None, stream.len()));
    }

    #[test]
    fn sink_buffers_a_split_record_in_exactly_its_size() {
        let record = [7u8; 1000];
        let stream = framed(&[&record[..]]);
        let mut seen = Vec::new();
        let mut sink = RecordSink::new(|r: &[u8]| seen.push(r.len()));
        for piece in stream.chunks(10) {
            assert_eq!(sink.write(piece).ok(), Some(piece.len()));
            assert!(sink.pending.capacity() <= stream.len(), "grew past the record");
        }
        assert!(sink.pending.is_empty());
        assert_eq!(seen, vec![1000]);
    }

    #[test]
    fn record_stream_fuzz_invariants_hold_on_samples() {
        let samples: [&[u8]; 5] = [
            &framed(&[b"abc", b"", b"defgh"]),
            &[0, 0, 0, 9, 1, 2],
            &[0xff, 0xff, 0xff, 0xff, 0],
            &[0, 0],
            b"",
        ];
        for sample in samples {
            assert!(fuzz_record_stream(sample), "{sample:?}");
        }
    }

    #[test]
    fn reader_frames_records_for_any_read_size() {
        let records: [&[u8]; 4] = [b"x", b"", &[1; 70_000], b"end"];
        for read_size in [1, 3, 4, 5, 4096, 100_000] {
            let mut reader = RecordReader::new(records.iter());
            let mut out = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
            assert_eq!(out, framed(&records), "read size {read_size}");
        }
    }

    #[test]
    fn reader_stays_failed_after_an_oversized_record() {
        let too_large = vec![0u8; MAX_HISTORY_RECORD + 1];
        let records: [&[u8]; 2] = [&too_large, b"next"];
        let mut reader = RecordReader::new(records.iter());
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            assert_eq!(
                reader.read(&mut buf).map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidInput)
            );
        }
        assert_eq!(reader.oversized, Some(u64::try_from(too_large.len()).unwrap_or(0)));
    }
}
