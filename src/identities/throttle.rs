//! The rate at which one source address may ask for password work over REST
//! (sign-up and sign-in): a token bucket per address (IPv6: per /64),
//! checked before anything is hashed, so one stranger cannot keep the
//! hashing pool to itself. MQTT CONNECTs have their own per-address rate
//! (`broker.max_connect_rate_per_ip`).

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::domain::SourceBuckets;
use crate::telemetry::metrics;

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

pub(super) struct Throttle {
    // `None`: a rate of 0, no throttle. Held for one take, never across an
    // `.await`.
    buckets: Option<Mutex<SourceBuckets>>,
}

impl Throttle {
    /// `rate` requests per second sustained after a `burst`; a rate of 0
    /// turns the throttle off.
    pub(super) fn new(rate: f64, burst: u32) -> Self {
        Self {
            buckets: (rate > 0.0)
                .then(|| Mutex::new(SourceBuckets::new(rate, burst, Instant::now()))),
        }
    }

    /// Take one request's token for `from`.
    pub(super) fn take(&self, from: Option<IpAddr>) -> Result<(), Throttled> {
        let (Some(buckets), Some(ip)) = (&self.buckets, from) else { return Ok(()) };
        let taken = buckets.lock().unwrap_or_else(|e| e.into_inner()).take(ip, Instant::now());
        taken.map_err(|retry_after| {
            metrics::global().auth_throttled.fetch_add(1, Relaxed);
            Throttled { retry_after }
        })
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
