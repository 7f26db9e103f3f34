//! Public map ids: what the shared map calls a device instead of its id,
//! which is also its MQTT user name. A keyed hash, so the same device keeps
//! its map id across builds, restarts and instances (the key is kept in the
//! database), while nobody without the key can tell which device it is.

use sha2::{Digest, Sha256};

use super::{DeviceId, to_hex};

/// Hex characters of a map id (80 bits: collisions in a fleet of millions
/// are vanishingly unlikely).
const ID_CHARS: usize = 20;

#[derive(Clone)]
pub struct MapIds {
    key: [u8; 32],
}

impl MapIds {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The map id of `device`.
    pub fn of(&self, device: &DeviceId) -> DeviceId {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((device.as_str().len() as u64).to_le_bytes());
        h.update(device.as_str().as_bytes());
        let digest = h.finalize();
        DeviceId::parse(to_hex(&digest[..ID_CHARS / 2])).expect("hex digits make a valid device id")
    }
}

impl std::fmt::Debug for MapIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MapIds(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn map_ids_are_stable_per_key_and_tell_nothing_without_it() {
        let a = MapIds::new([1; 32]);
        let b = MapIds::new([2; 32]);
        assert_eq!(a.of(&id("car-1")), a.of(&id("car-1")));
        assert_ne!(a.of(&id("car-1")), a.of(&id("car-2")));
        assert_ne!(a.of(&id("car-1")), b.of(&id("car-1")), "another key, other ids");
        let m = a.of(&id("car-1"));
        assert_eq!(m.as_str().len(), ID_CHARS);
        assert!(m.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!m.as_str().contains("car"));
    }
}
