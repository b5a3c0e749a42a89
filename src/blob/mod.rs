//! Encrypted blobs for history sync and media attachments.
//!
//! A blob is encrypted under a fresh one-time [`BlobKey`] with a chunked,
//! streaming AEAD: the STREAM construction (Hoang, Reyhanitabar, Rogaway,
//! Vizár, "Online authenticated-encryption and its nonce-reuse misuse
//! resistance") instantiated with AES-256-GCM. Encryption and decryption run
//! in constant memory (one [`SEALED_CHUNK_LEN`] buffer by default,
//! [`STREAM_BUFFER_BYTES`] at most) whatever the blob size. This module never
//! writes a plaintext byte that did not authenticate, and never starts a
//! thread unless the caller asks for one.
//!
//! The sender uploads the ciphertext and sends the recipient a
//! [`BlobDescriptor`] (key, plaintext length, SHA-256 of the ciphertext, media
//! type) over the end-to-end encrypted channel.
//!
//! # Format (version 2)
//!
//! ```text
//! cipher key || commitment = HKDF-SHA256(salt = 0^32, ikm = blob key,
//!                                        info = "multidevice/v1/kdf/blob")   (64 bytes)
//! blob    = header || chunk_0 || ... || chunk_{n-1}                            (n >= 1)
//! header  = version:u8 (=2) || chunk_size:u32be (=65536) || nonce_prefix:[u8; 7]
//!           || commitment:[u8; 32]                                            (44 bytes)
//! chunk_i = AES-256-GCM(cipher key, nonce_i, aad = header, plaintext_i) || tag_i:[u8; 16]
//! nonce_i = nonce_prefix || i:u32be || final:u8   (final = 0x01 for chunk n-1, else 0x00)
//! ```
//!
//! Every non-final plaintext chunk holds exactly `chunk_size` bytes; the final
//! one holds 1..=`chunk_size` bytes, or 0 bytes only when it is the sole chunk
//! (empty blob). The stream is self-delimiting: a decoder takes
//! `chunk_size + 16` bytes as a non-final chunk while strictly more than that
//! remains, and the rest as the final chunk.
//!
//! # Digest and key commitment
//!
//! The descriptor's `ciphertext_sha256` covers every byte of the blob, the
//! header (and so the commitment) included. AES-GCM alone is not
//! key-committing: a sender who chooses two keys can craft one ciphertext that
//! opens under both, to two plaintexts. The commitment in the header, derived
//! from the blob key and checked in constant time before any chunk is
//! decrypted ([`BlobError::KeyCommitment`]), lets a blob open under one key
//! only; the digest binds every recipient to one blob. Together, every
//! recipient of one digest sees one plaintext.
//!
//! # Threads
//!
//! SHA-256 costs about as much per byte as AES-GCM. By default both passes run
//! on the calling thread, chunk by chunk. An app that wants the hashing on a
//! second core opts in by passing [`Hashing::SECOND_THREAD`] to
//! [`BlobEncryptor::hashing`] or [`BlobDecryptor::hashing`]: the ciphertext is then hashed on a
//! scoped thread (pipelined over [`PIPELINE_DEPTH`] chunk buffers, joined
//! before the call returns) once a blob goes on past chunk
//! [`BACKGROUND_HASHING_FROM_CHUNK`], which caps throughput at the slower of
//! the two passes instead of their sum. The free functions ([`encrypt_stream`],
//! [`decrypt_stream`], [`decrypt_verified`], [`encrypt_blob`],
//! [`encrypt_blob_into`], [`decrypt_blob`], [`decrypt_blob_into`]) never start
//! a thread.
//!
//! # In memory or streaming
//!
//! The in-memory functions ([`encrypt_blob`], [`encrypt_blob_into`],
//! [`decrypt_blob`], [`decrypt_blob_into`]) copy each chunk once, into the
//! vector they fill, and seal or open it there. The streaming ones work over
//! [`Read`](std::io::Read) and [`Write`](std::io::Write) in constant memory,
//! which costs a second copy (into their chunk buffer and out of it).

mod descriptor;
mod format;
mod fuzz;
mod media_type;
mod memory;
mod pipeline;
mod stream;

pub use descriptor::{BlobDescriptor, DESCRIPTOR_MAX_LEN, DESCRIPTOR_MIN_LEN, DESCRIPTOR_VERSION};
pub use format::{
    BlobKey, CHUNK_SIZE, COMMITMENT_LEN, FORMAT_VERSION, HEADER_LEN, KEY_LEN, MAX_CHUNKS,
    MAX_PLAINTEXT_LEN, NONCE_PREFIX_LEN, SEALED_CHUNK_LEN, TAG_LEN, ciphertext_len,
};
#[cfg(feature = "test-support")]
pub(crate) use fuzz::seed_blob;
#[doc(hidden)]
pub use fuzz::{fuzz_chunk_stream, fuzz_descriptor};
pub use media_type::{MEDIA_TYPE_MAX_LEN, MEDIA_TYPE_MIN_LEN, MediaType};
pub use memory::{decrypt_blob, decrypt_blob_into, encrypt_blob, encrypt_blob_into};
pub use pipeline::{BACKGROUND_HASHING_FROM_CHUNK, Hashing, PIPELINE_DEPTH, STREAM_BUFFER_BYTES};
pub use stream::{
    BlobDecryptor, BlobEncryptor, StreamStats, decrypt_stream, decrypt_verified, encrypt_stream,
};

pub use crate::error::{BlobError, MediaTypeError};
