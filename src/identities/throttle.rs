//! The rate at which one source address may ask for password work over REST
//! (sign-up and sign-in): a token bucket per address (IPv6: per /64),
//! checked before anything is hashed, so one stranger cannot keep the
//! hashing pool to itself. MQTT CONNECTs have their own per-address rate
//! (`broker.max_connect_rate_per_ip`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::domain::source_key;
use crate::telemetry::metrics;

/// Addresses tracked at most; past it the untracked share one bucket, so a
/// spread-out flood cannot grow the map.
const MAX_TRACKED: usize = 65_536;

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub(super) struct Throttle {
    rate: f64,
    burst: f64,
    // Held for one map operation (a prune when full), never across an `.await`.
    buckets: Mutex<(HashMap<IpAddr, Bucket>, Option<Bucket>)>,
}

impl Throttle {
    /// `rate` requests per second sustained after a `burst`; a rate of 0
    /// turns the throttle off.
    pub(super) fn new(rate: f64, burst: u32) -> Self {
        Self { rate, burst: f64::from(burst.max(1)), buckets: Mutex::new((HashMap::new(), None)) }
    }

    /// Take one request's token for `from`.
    pub(super) fn take(&self, from: Option<IpAddr>) -> Result<(), Throttled> {
        let Some(ip) = from.filter(|_| self.rate > 0.0) else { return Ok(()) };
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, shared) = &mut *guard;
        let key = source_key(ip);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let fresh = Bucket { tokens: self.burst, at: now };
        let bucket = if buckets.len() < MAX_TRACKED || buckets.contains_key(&key) {
            buckets.entry(key).or_insert(fresh)
        } else {
            shared.get_or_insert(fresh)
        };
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.rate;
        drop(guard);
        metrics::global().auth_throttled.fetch_add(1, Relaxed);
        Err(Throttled { retry_after: Duration::from_secs_f64(wait) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_waits_and_others_are_unaffected() {
        let t = Throttle::new(1.0, 3);
        let a = Some("10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            t.take(a).unwrap();
        }
        let refused = t.take(a).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1)
        );
        assert!(t.take(Some("10.0.0.2".parse().unwrap())).is_ok());
        assert!(t.take(None).is_ok(), "no address, nothing to key on");
        assert!(Throttle::new(0.0, 1).take(a).is_ok() && Throttle::new(0.0, 1).take(a).is_ok());
    }
}
