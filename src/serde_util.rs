//! Serde helpers for fixed-size byte arrays that serde does not cover natively.

/// `[u8; 64]` as a byte string.
pub(crate) mod bytes64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        bytes: &[u8; 64],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 64], D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        <[u8; 64]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))
    }
}

/// Decoding state the crate itself stored and a store authenticated.
///
/// Every signature inside such state was checked before it was stored, and the store's AEAD
/// (see `store::sealed`) proves the bytes are the ones stored, so checking the signatures again
/// would only cost time: loading a session record would otherwise verify its remote identity,
/// and loading a held list every signature in it. While [`decode`] runs, [`crate::crypto::verify`]
/// accepts without checking; nothing else changes, and every structural check still runs.
pub(crate) mod authenticated {
    use std::cell::Cell;

    thread_local! {
        static ACTIVE: Cell<bool> = const { Cell::new(false) };
    }

    /// Resets the scope when decoding ends, however it ends.
    struct Scope(bool);

    impl Drop for Scope {
        fn drop(&mut self) {
            ACTIVE.with(|active| active.set(self.0));
        }
    }

    /// Runs `decode` on bytes a store authenticated. Only `store::sealed` calls it, after the
    /// record's AEAD tag verified.
    pub(crate) fn decode<T>(decode: impl FnOnce() -> T) -> T {
        let _scope = Scope(ACTIVE.with(|active| active.replace(true)));
        decode()
    }

    /// True while decoding authenticated state.
    pub(crate) fn active() -> bool {
        ACTIVE.with(Cell::get)
    }
}
