//! Remembers recent successful argon2 verifications, so a fleet of cars
//! reconnecting at once (or a phone polling with its password) does not pay
//! ~20 ms of CPU per attempt.
//!
//! An entry is a keyed SHA-256 of (stored hash, presented secret): it cannot
//! be reversed or replayed from a memory dump without the per-process key, and
//! it stops matching by itself when the stored hash changes (new password,
//! deleted and recreated account). Only positive results are kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::hashing::{Busy, HashPool};

/// Entries kept at most; past it, expired entries go, then everything.
const CAPACITY: usize = 10_000;

type Fingerprint = [u8; 32];

pub(super) struct VerifyCache {
    key: [u8; 32],
    ttl: Duration,
    // Held only to look up or insert one entry, never across an `.await`.
    entries: Mutex<HashMap<Fingerprint, Instant>>,
}

impl VerifyCache {
    pub(super) fn new(ttl: Duration) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self { key, ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Whether `secret` matches the argon2 PHC string `phc`; argon2 runs on
    /// `pool` unless the answer is cached.
    pub(super) async fn verify(
        &self,
        pool: &HashPool,
        secret: &str,
        phc: &str,
    ) -> Result<bool, Busy> {
        let fingerprint = self.fingerprint(phc, secret);
        if self.hit(&fingerprint) {
            return Ok(true);
        }
        let ok = pool.verify(secret.to_owned(), phc.to_owned()).await?;
        if ok {
            self.remember(fingerprint);
        }
        Ok(ok)
    }

    fn fingerprint(&self, phc: &str, secret: &str) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((phc.len() as u64).to_le_bytes());
        h.update(phc.as_bytes());
        h.update(secret.as_bytes());
        h.finalize().into()
    }

    fn hit(&self, fingerprint: &Fingerprint) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(fingerprint) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                entries.remove(fingerprint);
                false
            }
            None => false,
        }
    }

    fn remember(&self, fingerprint: Fingerprint) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY {
            entries.retain(|_, until| *until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(fingerprint, now + self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::auth::hash_password;
    use crate::identities::HashingSettings;

    fn pool() -> HashPool {
        HashPool::new(&HashingSettings { threads: 1, ..HashingSettings::default() })
    }

    #[tokio::test]
    async fn only_successes_are_cached_and_only_for_the_same_hash() {
        let cache = VerifyCache::new(Duration::from_secs(60));
        let phc = hash_password("right horse");
        let pool = pool();

        assert_eq!(cache.verify(&pool, "wrong horse", &phc).await, Ok(false));
        assert!(!cache.hit(&cache.fingerprint(&phc, "wrong horse")));
        assert_eq!(cache.verify(&pool, "right horse", &phc).await, Ok(true));
        assert!(cache.hit(&cache.fingerprint(&phc, "right horse")));

        let other = hash_password("right horse");
        assert!(!cache.hit(&cache.fingerprint(&other, "right horse")), "new hash, new entry");
    }

    #[tokio::test]
    async fn entries_expire() {
        let cache = VerifyCache::new(Duration::ZERO);
        let phc = hash_password("right horse");
        assert_eq!(cache.verify(&pool(), "right horse", &phc).await, Ok(true));
        assert!(!cache.hit(&cache.fingerprint(&phc, "right horse")));
    }
}
