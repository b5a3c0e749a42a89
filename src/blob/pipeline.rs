//! Hasher the ciphertext: on the calling thread by default, or pipelined on a second thread
//! the caller opts into.
//!
//! This module owns the only thread the crate can start, and starts it only for a blob
//! encryptor or decryptor given [`Hashing::SecondThread`]: a scoped thread, fed one sealed
//! chunk at a time over at most [`PIPELINE_DEPTH`] buffers and joined before the call returns.
//! It never starts a thread by default and never holds more than [`STREAM_BUFFER_BYTES`].

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, Scope, ScopedJoinHandle};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::format::SEALED_CHUNK_LEN;
use crate::error::BlobError;

/// Number of sealed-chunk buffers in flight when hashing runs on a second
/// thread (1 MiB of ciphertext). SHA-256 is the slower pass, so the encrypting
/// side runs ahead by up to this many chunks before it waits for a buffer.
pub const PIPELINE_DEPTH: usize = 16;
/// Chunk index from which the opted-in hashing thread of
/// [`Hashing::SECOND_THREAD`] starts, if the blob goes
/// on past it: blobs of up to 1 MiB (16 chunks) never start one. In criterion
/// runs on the 2-core development machine a thread (50–70 µs to start) changed
/// 1 MiB blobs by −4% to +8%, within the noise, and made 64 MiB blobs 23–43%
/// faster.
pub const BACKGROUND_HASHING_FROM_CHUNK: u32 = 15;
/// Upper bound, in bytes, on the chunk buffers held at once by any streaming
/// function of [`crate::blob`]: at most [`PIPELINE_DEPTH`] sealed-chunk buffers
/// plus one plaintext buffer when a hashing thread runs. Without one (the
/// default, and for opted-in blobs that end by chunk
/// [`BACKGROUND_HASHING_FROM_CHUNK`]) a single [`SEALED_CHUNK_LEN`] buffer is
/// used.
pub const STREAM_BUFFER_BYTES: usize = (PIPELINE_DEPTH + 1) * SEALED_CHUNK_LEN;

/// Where a blob encryptor or decryptor computes the ciphertext's SHA-256.
///
/// The crate starts no thread unless the app asks for one: the default is
/// [`CallingThread`](Self::CallingThread). An app that wants the hashing on a
/// second core passes [`Hashing::SECOND_THREAD`] to
/// [`BlobEncryptor::hashing`](super::BlobEncryptor::hashing) or
/// [`BlobDecryptor::hashing`](super::BlobDecryptor::hashing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Hashing {
    /// On the calling thread, chunk by chunk right after each chunk is sealed
    /// or before it is opened, with one [`SEALED_CHUNK_LEN`] buffer.
    #[default]
    CallingThread,
    /// On a second, scoped thread, once the blob goes on past chunk
    /// `from_chunk`, pipelined over up to [`PIPELINE_DEPTH`] chunk buffers and
    /// joined before the call returns (if the thread cannot be spawned,
    /// hashing stays on the calling thread).
    SecondThread {
        /// The chunk index from which hashing moves to the thread, if more
        /// chunks follow it.
        from_chunk: u32,
    },
}

impl Hashing {
    /// A second thread from chunk [`BACKGROUND_HASHING_FROM_CHUNK`] on, so blobs of up to
    /// 1 MiB never start one.
    pub const SECOND_THREAD: Self =
        Self::SecondThread { from_chunk: BACKGROUND_HASHING_FROM_CHUNK };

    /// The chunk index from which hashing moves to a thread, if ever.
    pub(super) fn thread_from(self) -> Option<u32> {
        match self {
            Self::CallingThread => None,
            Self::SecondThread { from_chunk } => Some(from_chunk),
        }
    }
}

/// One sealed-chunk buffer, wiped on drop.
pub(super) type ChunkBuf = Zeroizing<Vec<u8>>;

/// Runs `f` inside a thread scope when `threaded`, so a hashing thread can be spawned and is
/// joined before this returns; otherwise runs it directly, with no scope at all.
pub(super) fn with_scope<'env, T>(
    threaded: bool,
    f: impl for<'scope> FnOnce(Option<&'scope Scope<'scope, 'env>>) -> T,
) -> T {
    if threaded { thread::scope(|scope| f(Some(scope))) } else { f(None) }
}

pub(super) struct Worker<'scope> {
    jobs: SyncSender<(ChunkBuf, usize)>,
    returned: Receiver<ChunkBuf>,
    handle: ScopedJoinHandle<'scope, Sha256>,
}

/// Where the ciphertext's SHA-256 is being computed.
pub(super) enum Hasher<'scope> {
    /// On the calling thread, chunk by chunk.
    Inline(Sha256),
    /// On the opted-in second thread.
    Worker(Worker<'scope>),
}

impl<'scope> Hasher<'scope> {
    pub(super) fn is_worker(&self) -> bool {
        matches!(self, Self::Worker(_))
    }

    pub(super) fn update_inline(&mut self, bytes: &[u8]) {
        if let Self::Inline(h) = self {
            h.update(bytes);
        }
    }

    /// Moves inline hashing to a second thread in `scope`; stays inline if there is no scope
    /// (the caller did not opt in) or the thread cannot be spawned.
    pub(super) fn start_worker<'env>(&mut self, scope: Option<&'scope Scope<'scope, 'env>>) {
        let (Self::Inline(state), Some(scope)) = (&*self, scope) else {
            return;
        };
        let mut hasher = state.clone();
        // Both queues can hold every buffer in flight, so neither side ever
        // blocks on a send.
        let (jobs, job_rx) = mpsc::sync_channel::<(ChunkBuf, usize)>(PIPELINE_DEPTH);
        let (ret_tx, returned) = mpsc::sync_channel::<ChunkBuf>(PIPELINE_DEPTH);
        let spawned =
            thread::Builder::new().name("blob-sha256".into()).spawn_scoped(scope, move || {
                for (buf, len) in job_rx {
                    hasher.update(buf.get(..len).unwrap_or_default());
                    // Fails only once the producer has finished.
                    let _ = ret_tx.send(buf);
                }
                hasher
            });
        if let Ok(handle) = spawned {
            *self = Self::Worker(Worker { jobs, returned, handle });
        }
    }

    /// Passes a sealed buffer to the worker (one chunk at a time, so the
    /// worker starts at once and finishes one chunk after the producer), or
    /// gives it back when hashing is not pipelined.
    fn hand_off(&mut self, buf: ChunkBuf, len: usize) -> Result<Option<ChunkBuf>, BlobError> {
        match self {
            Self::Worker(w) => {
                w.jobs.send((buf, len)).map_err(|_| BlobError::HashWorker)?;
                Ok(None)
            }
            Self::Inline(_) => Ok(Some(buf)),
        }
    }

    /// Ends hashing (always joining the worker) and returns the digest.
    pub(super) fn finish(self) -> Result<[u8; 32], BlobError> {
        match self {
            Self::Inline(h) => Ok(h.finalize().into()),
            Self::Worker(Worker { jobs, returned, handle }) => {
                drop(jobs);
                let joined = handle.join();
                drop(returned);
                let hasher = joined.map_err(|_| BlobError::HashWorker)?;
                Ok(hasher.finalize().into())
            }
        }
    }
}

/// Hands out chunk buffers, recycling those the worker returns, and keeps the
/// memory accounting.
#[derive(Default)]
pub(super) struct Pool {
    sealed_buffers: usize,
    bytes: usize,
}

impl Pool {
    /// Bytes of chunk buffers handed out so far (the peak: none is ever freed early).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn fresh(&mut self, len: usize) -> ChunkBuf {
        let buf = Zeroizing::new(vec![0u8; len]);
        self.bytes = self.bytes.saturating_add(buf.capacity());
        buf
    }

    pub(super) fn acquire(&mut self, hashing: &mut Hasher<'_>) -> Result<ChunkBuf, BlobError> {
        if let Hasher::Worker(w) = hashing {
            if let Ok(buf) = w.returned.try_recv() {
                return Ok(buf);
            }
            if self.sealed_buffers >= PIPELINE_DEPTH {
                // Every buffer is queued or being hashed: wait for one.
                return w.returned.recv().map_err(|_| BlobError::HashWorker);
            }
        }
        self.sealed_buffers = self.sealed_buffers.saturating_add(1);
        Ok(self.fresh(SEALED_CHUNK_LEN))
    }
}

/// Ends a chunk: hands its sealed bytes (`buf[..sealed_len]`) to the hasher and, unless it
/// was the last chunk, moves `index` on and returns the buffer for the next one.
pub(super) fn next_chunk_buffer(
    hashing: &mut Hasher<'_>,
    pool: &mut Pool,
    buf: ChunkBuf,
    sealed_len: usize,
    last: bool,
    index: &mut u32,
) -> Result<Option<ChunkBuf>, BlobError> {
    let returned = hashing.hand_off(buf, sealed_len)?;
    if last {
        return Ok(None);
    }
    *index = index.checked_add(1).ok_or(BlobError::TooManyChunks)?;
    match returned {
        Some(buf) => Ok(Some(buf)),
        None => pool.acquire(hashing).map(Some),
    }
}
