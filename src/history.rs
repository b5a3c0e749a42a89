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

/// Frames records lazily, so a history of any size is read in constant memory.
struct RecordReader<I: Iterator> {
    records: I,
    current: Vec<u8>,
    position: usize,
}

impl<I, R> Read for RecordReader<I>
where
    I: Iterator<Item = R>,
    R: AsRef<[u8]>,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            let Some(record) = self.records.next() else { return Ok(0) };
            let record = record.as_ref();
            if record.len() > MAX_HISTORY_RECORD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "history record too large",
                ));
            }
            self.current.clear();
            self.current
                .extend_from_slice(&u32::try_from(record.len()).unwrap_or(u32::MAX).to_be_bytes());
            self.current.extend_from_slice(record);
            self.position = 0;
        }
        let available = self.current.get(self.position..).unwrap_or_default();
        let n = available.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), available.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.position += n;
        Ok(n)
    }
}

/// Parses framed records as plaintext arrives and hands each complete one to the callback.
struct RecordSink<F: FnMut(&[u8])> {
    on_record: F,
    buffer: Zeroizing<Vec<u8>>,
    records: u64,
}

impl<F: FnMut(&[u8])> RecordSink<F> {
    fn drain(&mut self) -> io::Result<()> {
        loop {
            let Some(prefix) = self.buffer.first_chunk::<4>() else { return Ok(()) };
            let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
            if len > MAX_HISTORY_RECORD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "history record too large"));
            }
            let Some(record) = self.buffer.get(4..4 + len) else { return Ok(()) };
            (self.on_record)(record);
            self.records += 1;
            self.buffer.drain(..4 + len);
        }
    }
}

impl<F: FnMut(&[u8])> Write for RecordSink<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        self.drain()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encrypts `records` as a history blob into `writer` (the bytes to upload) and returns the
/// descriptor to send with [`Device::encrypt_history`].
pub fn build_history<R: AsRef<[u8]>>(
    rng: &mut (impl CryptoRng + ?Sized),
    records: impl IntoIterator<Item = R>,
    writer: impl Write,
) -> Result<BlobDescriptor, BlobError> {
    let media_type = MediaType::new(HISTORY_MEDIA_TYPE).map_err(BlobError::from)?;
    let reader = RecordReader { records: records.into_iter(), current: Vec::new(), position: 0 };
    blob::encrypt_stream(rng, reader, writer, media_type)
}

/// Decrypts a downloaded history blob, checking its digest in a first pass before any record
/// comes out, and hands each record to `on_record`. Returns the number of records. The
/// descriptor (and its key) should be dropped afterwards, which wipes the key.
pub fn import_history(
    descriptor: &BlobDescriptor,
    blob_bytes: impl Read + Seek,
    on_record: impl FnMut(&[u8]),
) -> Result<u64, BlobError> {
    let mut sink = RecordSink { on_record, buffer: Zeroizing::new(Vec::new()), records: 0 };
    blob::decrypt_verified(descriptor, blob_bytes, &mut sink)?;
    if !sink.buffer.is_empty() {
        return Err(BlobError::Truncated);
    }
    Ok(sink.records)
}

impl Device {
    /// Primary: sends a history descriptor to one newly linked companion of its own account,
    /// through their pairwise session (set up from `bundles` if needed).
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
        self.ensure_active(now).map_err(FanoutError::from)?;
        let listed = self.device_list(self.address.account).and_then(|l| l.device(companion));
        if listed.is_none() {
            return Err(HistoryError::NotOwnCompanion(companion));
        }
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
