//! Who a connection comes from, for per-source limits: the key a source is
//! counted under, and the bounded token buckets that rate it (MQTT connects,
//! REST sign-ins).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Sources whose buckets are kept; beyond it the sources not yet tracked
/// share one bucket, so a spread-out storm cannot grow the map.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// The key a source is counted under: an IPv4 address as is (also when
/// mapped into IPv6), an IPv6 address by its /64, which one subscriber
/// usually holds whole.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// A token bucket: `burst` requests at once, then `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant, burst: f64) -> Self {
        Self { tokens: burst, at: now }
    }

    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst)
    }

    /// Take a token, or say how long until one is there.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        self.tokens = self.refilled(now, rate, burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// One bucket per recent source ([`source_key`]), bounded by
/// [`MAX_TRACKED_SOURCES`]. Callers keep it behind a lock held for one take.
pub struct SourceBuckets {
    rate: f64,
    burst: f64,
    map: HashMap<IpAddr, Bucket>,
    /// Shared by sources arriving while the map is full of active ones.
    overflow: Bucket,
    last_prune: Instant,
}

impl SourceBuckets {
    /// `rate` per second after a `burst` (at least 1); `rate` must be > 0.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            map: HashMap::new(),
            overflow: Bucket::full(now, burst),
            last_prune: now,
        }
    }

    /// Take one token for `ip`'s source, or say how long until it has one.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let key = source_key(ip);
        if let Some(bucket) = self.map.get_mut(&key) {
            return bucket.take(now, rate, burst);
        }
        if self.map.len() >= MAX_TRACKED_SOURCES {
            self.prune(now);
        }
        if self.map.len() >= MAX_TRACKED_SOURCES {
            return self.overflow.take(now, rate, burst);
        }
        let mut bucket = Bucket::full(now, burst);
        let taken = bucket.take(now, rate, burst);
        self.map.insert(key, bucket);
        taken
    }

    /// Forget sources whose bucket has refilled (they behave as new ones);
    /// at most once a second, so a full map of active sources stays cheap.
    fn prune(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_prune) < Duration::from_secs(1) {
            return;
        }
        self.last_prune = now;
        let (rate, burst) = (self.rate, self.burst);
        self.map.retain(|_, b| b.refilled(now, rate, burst) < burst);
        self.map.shrink_to(MAX_TRACKED_SOURCES);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn ipv6_sources_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_refused_take_says_when_the_next_token_comes() {
        let now = Instant::now();
        let mut buckets = SourceBuckets::new(2.0, 1, now);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(buckets.take(ip, now).is_ok());
        assert_eq!(buckets.take(ip, now), Err(Duration::from_millis(500)));
        assert!(buckets.take(ip, now + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn the_bucket_map_stays_bounded_and_forgets_idle_sources() {
        let mut buckets = SourceBuckets::new(1.0, 5, Instant::now());
        let now = Instant::now() + Duration::from_secs(5);
        for n in 0..MAX_TRACKED_SOURCES as u32 {
            let key = IpAddr::V4(Ipv4Addr::from(n));
            assert!(buckets.take(key, now).is_ok(), "a new source gets its burst");
        }
        // The map is full of active sources: newcomers share one bucket.
        let newcomer = |n: u32| IpAddr::V4(Ipv4Addr::from(MAX_TRACKED_SOURCES as u32 + n));
        for n in 0..5 {
            assert!(buckets.take(newcomer(n), now).is_ok());
        }
        assert!(buckets.take(newcomer(5), now).is_err());
        assert_eq!(buckets.map.len(), MAX_TRACKED_SOURCES);
        // Ten seconds later every bucket has refilled: the next new source
        // prunes them all and gets a bucket of its own.
        let later = now + Duration::from_secs(10);
        assert!(buckets.take(IpAddr::V4(Ipv4Addr::BROADCAST), later).is_ok());
        assert_eq!(buckets.map.len(), 1);
    }
}
