//! Growable buffers for secrets that never leave an unwiped copy behind.
//!
//! `Vec` frees its old allocation without wiping it when it grows, so a secret serialized into a
//! growing `Vec` survives in freed memory. Everything here grows by allocating a wiped-on-drop
//! buffer, copying, and wiping the old one. This module never holds a secret itself.

use serde::Serialize;
use zeroize::Zeroizing;

/// Grows a wiped-on-drop buffer to hold at least `capacity` bytes without leaving an unwiped
/// copy behind.
pub(crate) fn reserve_wiping(buffer: &mut Zeroizing<Vec<u8>>, capacity: usize) {
    if capacity > buffer.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
        grown.extend_from_slice(buffer);
        *buffer = grown;
    }
}

/// A postcard output that grows with [`reserve_wiping`].
struct WipingFlavor(Zeroizing<Vec<u8>>);

impl postcard::ser_flavors::Flavor for WipingFlavor {
    type Output = Zeroizing<Vec<u8>>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let needed = self.0.len().saturating_add(data.len());
        if needed > self.0.capacity() {
            let doubled = self.0.capacity().saturating_mul(2);
            reserve_wiping(&mut self.0, needed.max(doubled));
        }
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        Ok(self.0)
    }
}

/// Serializes `value` with postcard into a wiped-on-drop buffer, wiping every buffer it
/// outgrows.
pub(crate) fn to_wiped_bytes<T: Serialize + ?Sized>(value: &T) -> Zeroizing<Vec<u8>> {
    let flavor = WipingFlavor(Zeroizing::new(Vec::with_capacity(1024)));
    // Serializing plain data into a growable buffer has no failure mode: postcard fails only
    // when a fixed-size output runs out or a type's `Serialize` fails, and this output grows
    // and the crate's persisted types never fail.
    #[allow(clippy::expect_used)]
    postcard::serialize_with_flavor(value, flavor).expect("a growable buffer never runs out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiped_serialization_matches_postcard() {
        let value: (u16, Vec<u8>, String) = (7, vec![9; 5000], "x".repeat(3000));
        let wiped = to_wiped_bytes(&value);
        assert_eq!(wiped.as_slice(), postcard::to_allocvec(&value).unwrap().as_slice());
    }
}
