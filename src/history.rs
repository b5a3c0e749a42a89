//! History sync: the primary hands a newly linked companion its recent conversations.
//!
//! The app gives the primary opaque records. They are framed (`u32` length, then the bytes) and
//! encrypted as one blob under a one-time key; the blob's descriptor travels only to the new
//! companion, inside their pairwise session, marked as history. The companion accepts history
//! only from a device of its own account that its newest list authorizes, only while it is a
//! linked companion within [`HISTORY_WINDOW_SECS`] of its link, and imports the records through
//! a callback after the blob's digest has been checked. This module never accepts history from
//! another account and never presents records from a blob whose digest did not match.

use std::io::{self, Read, Seek, Write};

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::account::Role;
use crate::blob::{self, BlobDescriptor, MediaType};
use crate::device::Device;
use crate::error::{BlobError, FanoutError, HistoryError, SessionError};
use crate::fanout::{Envelope, HistoryContent};
use crate::keys::{DeviceAddress, Timestamp};
use crate::prekeys::PrekeyBundle;

/// How long after its link a companion accepts history: long enough for a large history to
/// upload over a slow network, short enough that a later compromise of the primary's session
/// cannot push fabricated history into an established companion.
pub const HISTORY_WINDOW_SECS: u64 = 24 * 60 * 60;

/// Largest single history record.
pub const MAX_HISTORY_RECORD: usize = 16 * 1024 * 1024;

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

impl<I, R> Read for RecordReader<I>
where
    I: Iterator<Item = R>,
    R: AsRef<[u8]>,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
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
    /// The bytes of a record not yet complete; grown only by [`extend_wiping`].
    pending: Zeroizing<Vec<u8>>,
    records: u64,
    /// Set when a length prefix over [`MAX_HISTORY_RECORD`] stopped the import.
    oversized: Option<u64>,
}

impl<F: FnMut(&[u8])> RecordSink<F> {
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

impl<F: FnMut(&[u8])> Write for RecordSink<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut fresh = data;
        if !self.pending.is_empty() {
            // Complete the pending record first: its prefix, then its body.
            let missing_prefix = RECORD_PREFIX_LEN.saturating_sub(self.pending.len());
            let (head, rest) = fresh.split_at(missing_prefix.min(fresh.len()));
            extend_wiping(&mut self.pending, head);
            fresh = rest;
            let Some(prefix) = self.pending.first_chunk::<RECORD_PREFIX_LEN>().copied() else {
                return Ok(data.len());
            };
            let total = RECORD_PREFIX_LEN + self.checked_len(prefix)?;
            let missing = total.saturating_sub(self.pending.len());
            let (head, rest) = fresh.split_at(missing.min(fresh.len()));
            extend_wiping(&mut self.pending, head);
            fresh = rest;
            if self.pending.len() < total {
                return Ok(data.len());
            }
            (self.on_record)(self.pending.get(RECORD_PREFIX_LEN..).unwrap_or_default());
            self.records += 1;
            self.pending.clear();
        }
        let used = self.hand_out(fresh)?;
        extend_wiping(&mut self.pending, fresh.get(used..).unwrap_or_default());
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends to a wiped-on-drop buffer without leaving an unwiped copy behind when it grows
/// (`Vec` would free its old allocation without wiping it).
fn extend_wiping(buffer: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    let needed = buffer.len().saturating_add(data.len());
    if needed > buffer.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(needed.max(buffer.capacity() * 2)));
        grown.extend_from_slice(buffer);
        *buffer = grown;
    }
    buffer.extend_from_slice(data);
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
    let mut reader = RecordReader {
        records: records.into_iter(),
        current: None,
        prefix: [0; RECORD_PREFIX_LEN],
        position: 0,
        oversized: None,
    };
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
    let mut sink =
        RecordSink { on_record, pending: Zeroizing::new(Vec::new()), records: 0, oversized: None };
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
    /// (linked at most [`HISTORY_WINDOW_SECS`] ago), through their pairwise session (set up
    /// from `bundles` if needed).
    pub fn encrypt_history(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        companion: DeviceAddress,
        descriptor: &BlobDescriptor,
        bundles: &[PrekeyBundle],
        now: Timestamp,
    ) -> Result<Envelope, HistoryError> {
        if !matches!(self.role, Role::Primary(_)) {
            return Err(HistoryError::NotPrimary);
        }
        if companion.account != self.address.account || companion == self.address {
            return Err(HistoryError::NotOwnCompanion(companion));
        }
        let listed = self.device_list(self.address.account).and_then(|l| l.device(companion));
        let linked_at = self.companion_linked_at(companion.device);
        let (Some(_), Some(linked_at)) = (listed, linked_at) else {
            return Err(HistoryError::NotOwnCompanion(companion));
        };
        if now.max(self.clock).secs_since(linked_at) > HISTORY_WINDOW_SECS {
            return Err(HistoryError::NotNewlyLinked(companion));
        }
        self.ensure_active(now).map_err(FanoutError::from)?;
        if !self.has_session(companion) {
            self.session_from_bundle(rng, companion, bundles)
                .map_err(|skip| HistoryError::NoSession(companion, skip))?;
        }
        let inner = self.history_plaintext(descriptor);
        let bytes = self
            .encrypt_unchecked(rng, companion, &inner)
            .map_err(|e| HistoryError::Fanout(FanoutError::Session(e)))?;
        Ok(Envelope { recipient: companion, bytes })
    }

    /// Companion: accepts a history descriptor from its own account's authorized device, only
    /// within [`HISTORY_WINDOW_SECS`] of its link. On any error the device is unchanged.
    pub fn decrypt_history(
        &mut self,
        envelope: &[u8],
        now: Timestamp,
    ) -> Result<BlobDescriptor, HistoryError> {
        let linked_at = match &self.role {
            Role::Companion(state) => state.link.as_ref().map(|l| l.metadata.timestamp),
            Role::Primary(_) => None,
        }
        .ok_or(HistoryError::NotLinkedCompanion)?;
        if now.max(self.clock).secs_since(linked_at) > HISTORY_WINDOW_SECS {
            return Err(HistoryError::WindowClosed);
        }
        let sender = crate::SessionMessage::try_from(envelope)
            .map_err(|e| HistoryError::Fanout(FanoutError::Session(SessionError::from(e))))?
            .sender();
        if sender.account != self.address.account {
            return Err(HistoryError::NotOwnAccount(sender));
        }
        let listed = self
            .device_list(sender.account)
            .and_then(|l| l.device(sender))
            .map(|d| d.identity().fingerprint())
            .ok_or(HistoryError::Fanout(FanoutError::UnauthorizedSender(sender)))?;
        let (_, descriptor) = self.decrypt_with(envelope, now, |decrypted| {
            if decrypted.sender_fingerprint != listed {
                return Err(HistoryError::Fanout(FanoutError::UnauthorizedSender(sender)));
            }
            match HistoryContent::parse(&decrypted.plaintext)? {
                Some(bytes) => Ok(BlobDescriptor::try_from(bytes)?),
                None => Err(HistoryError::NotHistory),
            }
        })?;
        Ok(descriptor)
    }
}

impl From<SessionError> for HistoryError {
    fn from(error: SessionError) -> Self {
        HistoryError::Fanout(FanoutError::Session(error))
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

    /// Feeds `stream` to a sink in pieces cut at `cuts`; returns the records and what is pending.
    fn feed(stream: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, usize) {
        let mut records = Vec::new();
        let mut sink = RecordSink {
            on_record: |r: &[u8]| records.push(r.to_vec()),
            pending: Zeroizing::new(Vec::new()),
            records: 0,
            oversized: None,
        };
        let mut start = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            let piece = stream.get(start..cut).unwrap_or_default();
            assert_eq!(sink.write(piece).unwrap(), piece.len());
            start = cut;
        }
        let pending = sink.pending.len();
        (records, pending)
    }

    #[test]
    fn sink_reassembles_records_cut_anywhere() {
        let records: [&[u8]; 5] = [b"", b"a", b"hello world", b"", &[9; 300]];
        let stream = framed(&records);
        for cut in 0..=stream.len() {
            assert_eq!(feed(&stream, &[cut]), (records.map(<[u8]>::to_vec).to_vec(), 0));
        }
        let every_byte: Vec<usize> = (0..=stream.len()).collect();
        assert_eq!(feed(&stream, &every_byte), (records.map(<[u8]>::to_vec).to_vec(), 0));
    }

    #[test]
    fn sink_keeps_a_partial_record_pending() {
        let stream = framed(&[b"complete", b"partial"]);
        let cut = stream.len() - 3;
        let (records, pending) = feed(stream.get(..cut).unwrap_or_default(), &[5]);
        assert_eq!(records, vec![b"complete".to_vec()]);
        assert_eq!(pending, 4 + b"partial".len() - 3);
    }

    #[test]
    fn reader_frames_records_for_any_read_size() {
        let records: [&[u8]; 4] = [b"x", b"", &[1; 70_000], b"end"];
        for read_size in [1, 3, 4, 5, 4096, 100_000] {
            let mut reader = RecordReader {
                records: records.iter(),
                current: None,
                prefix: [0; RECORD_PREFIX_LEN],
                position: 0,
                oversized: None,
            };
            let mut out = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
            assert_eq!(out, framed(&records), "read size {read_size}");
        }
    }

    #[test]
    fn extend_wiping_grows_without_losing_bytes() {
        let mut buffer = Zeroizing::new(Vec::new());
        for i in 0..1000u32 {
            extend_wiping(&mut buffer, &i.to_be_bytes());
        }
        let expected: Vec<u8> = (0..1000u32).flat_map(u32::to_be_bytes).collect();
        assert_eq!(buffer.as_slice(), expected.as_slice());
    }
}
