//! Pairwise sessions: X3DH-style setup, the Double Ratchet, and the per-device session record.

pub(crate) mod handshake;
pub(crate) mod message;
pub(crate) mod ratchet;
pub(crate) mod record;

pub use message::SessionMessage;
