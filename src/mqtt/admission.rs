//! Admission of new MQTT connections, before anything of their CONNECT is
//! handled: a cap on open connections (all listeners together) and a
//! connect rate per source address (a token bucket). A connection storm thus
//! costs an atomic increment and a map lookup per socket, never an
//! authentication or a session.
//!
//! A refused client is told why in the CONNACK of its own protocol level
//! (see [`Overload`] for the codes), then the socket closes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ntex::io::IoBoxed;
use ntex::io::types::PeerAddr;

use super::reason::Overload;
use crate::broker::{BrokerLimits, Stats};
use crate::domain::SourceBuckets;
use crate::telemetry::names::{CLIENT_ADDRESS, MQTT_REASON_CODE};

/// How long a refused client has to send its CONNECT before the socket just
/// closes (most send it with the TCP handshake's first data).
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one refusal log line per reason in this period (storms refuse thousands).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The admission policy and its state, shared by every worker.
pub(super) struct Admission {
    max_connections: usize,
    open: AtomicUsize,
    /// Connections closed so far (for `trim`).
    closed: AtomicUsize,
    // A std Mutex: the critical section is one map lookup (a prune at most
    // once a second) and never crosses an `.await`.
    /// `None` when `broker.max_connect_rate_per_ip` is 0 (no rate).
    buckets: Option<Mutex<SourceBuckets>>,
    stats: Arc<Stats>,
    started: Instant,
    /// Per reason: when the last refusal was logged (ms since `started`,
    /// +1 so 0 means never) and how many refusals went unlogged since.
    logged_at: [AtomicU64; 2],
    unlogged: [AtomicU64; 2],
}

/// An admitted connection; dropping it frees its slot.
pub(super) struct Permit(Arc<Admission>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.closed.fetch_add(1, Relaxed);
    }
}

impl Admission {
    pub(super) fn new(limits: &BrokerLimits, stats: Arc<Stats>) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            max_connections: limits.max_connections,
            open: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            buckets: (limits.max_connect_rate_per_ip > 0).then(|| {
                let rate = f64::from(limits.max_connect_rate_per_ip);
                Mutex::new(SourceBuckets::new(rate, limits.connect_burst_per_ip, now))
            }),
            stats,
            started: now,
            logged_at: Default::default(),
            unlogged: Default::default(),
        })
    }

    /// Admitted connections closed so far.
    pub(super) fn closed_total(&self) -> usize {
        self.closed.load(Relaxed)
    }

    /// Admit the connection on `io`, or answer its CONNECT with the refusal
    /// and close it (`None`).
    pub(super) async fn admit(self: &Arc<Self>, io: &IoBoxed) -> Option<Permit> {
        let peer = io.query::<PeerAddr>().as_ref().map(|p| p.0.ip());
        match self.try_admit(peer, Instant::now()) {
            Ok(permit) => Some(permit),
            Err(overload) => {
                self.count_refusal(overload, peer);
                refuse(io, overload).await;
                None
            }
        }
    }

    /// The decision alone: the global cap first (one atomic), then the
    /// source's bucket.
    fn try_admit(self: &Arc<Self>, peer: Option<IpAddr>, now: Instant) -> Result<Permit, Overload> {
        let before = self.open.fetch_add(1, Relaxed);
        let permit = Permit(self.clone());
        if self.max_connections > 0 && before >= self.max_connections {
            return Err(Overload::MaxConnections);
        }
        if let (Some(buckets), Some(ip)) = (&self.buckets, peer) {
            let mut buckets = buckets.lock().unwrap_or_else(|e| e.into_inner());
            if buckets.take(ip, now).is_err() {
                return Err(Overload::ConnectRate);
            }
        }
        Ok(permit)
    }

    fn count_refusal(&self, overload: Overload, peer: Option<IpAddr>) {
        self.stats.rejected_connects.fetch_add(1, Relaxed);
        let (i, counter) = match overload {
            Overload::MaxConnections => (0, &self.stats.refused_max_connections),
            Overload::ConnectRate => (1, &self.stats.refused_connect_rate),
        };
        counter.fetch_add(1, Relaxed);

        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at[i].load(Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if !due || self.logged_at[i].compare_exchange(last, now_ms, Relaxed, Relaxed).is_err() {
            self.unlogged[i].fetch_add(1, Relaxed);
            return;
        }
        tracing::warn!(
            { CLIENT_ADDRESS } = peer.map(tracing::field::display),
            { MQTT_REASON_CODE } = u8::from(overload.v5()),
            open_connections = self.open.load(Relaxed),
            refused_since_last_log = self.unlogged[i].swap(0, Relaxed),
            "connection refused: {}",
            overload.as_str()
        );
    }
}

/// Answer the CONNECT with the refusal in its protocol level's CONNACK,
/// then close. Anything that is not a CONNECT just gets closed.
async fn refuse(io: &IoBoxed, overload: Overload) {
    let level = async {
        loop {
            if let Some(level) = io.with_read_buf(|buf| connect_level(buf)) {
                return level;
            }
            match io.read_ready().await {
                Ok(Some(())) => {}
                _ => return None,
            }
        }
    };
    let level = ntex::time::timeout(REFUSAL_READ_TIMEOUT, level).await.ok().flatten();
    let connack = match level {
        Some(5) => connack_v5(overload),
        Some(3 | 4) => vec![0x20, 0x02, 0x00, u8::from(overload.v3())],
        _ => Vec::new(),
    };
    if !connack.is_empty() {
        let _ = io.encode_slice(&connack);
    }
    let _ = ntex::time::timeout(REFUSAL_READ_TIMEOUT, io.shutdown()).await;
}

/// v5 CONNACK: no session, the reason code, and a reason string.
fn connack_v5(overload: Overload) -> Vec<u8> {
    let why = overload.as_str().as_bytes();
    let props_len = 3 + why.len();
    let mut out = vec![0x20, (3 + props_len) as u8, 0x00, u8::from(overload.v5())];
    out.push(props_len as u8);
    out.push(0x1F);
    out.extend((why.len() as u16).to_be_bytes());
    out.extend(why);
    out
}

/// The protocol level of the CONNECT at the start of `buf`: `None` while
/// more bytes are needed, `Some(None)` when it is not a CONNECT.
fn connect_level(buf: &[u8]) -> Option<Option<u8>> {
    let (&first, rest) = buf.split_first()?;
    if first != 0x10 {
        return Some(None);
    }
    let mut len_bytes = 0;
    loop {
        let b = *rest.get(len_bytes)?;
        len_bytes += 1;
        if b & 0x80 == 0 {
            break;
        }
        if len_bytes == 4 {
            return Some(None);
        }
    }
    // Protocol name ("MQTT", or "MQIsdp" for 3.1) then the level byte.
    let vh = &rest[len_bytes..];
    let name_len = usize::from(u16::from_be_bytes([*vh.first()?, *vh.get(1)?]));
    if name_len > 6 {
        return Some(None);
    }
    Some(Some(*vh.get(2 + name_len)?))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn admission(max_connections: usize, rate: u32, burst: u32) -> Arc<Admission> {
        let limits = BrokerLimits {
            max_connections,
            max_connect_rate_per_ip: rate,
            connect_burst_per_ip: burst,
            ..BrokerLimits::default()
        };
        Admission::new(&limits, Arc::new(Stats::default()))
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn connections_beyond_the_cap_are_refused_until_one_closes() {
        let a = admission(2, 0, 1);
        let now = Instant::now();
        let first = a.try_admit(ip(1), now).unwrap();
        let _second = a.try_admit(ip(2), now).unwrap();
        assert_eq!(a.try_admit(ip(3), now).err(), Some(Overload::MaxConnections));
        drop(first);
        let _third = a.try_admit(ip(3), now).unwrap();
        assert_eq!(a.open.load(Relaxed), 2, "refused attempts hold no slot");
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let a = admission(0, 10, 3);
        let now = Instant::now();
        for _ in 0..3 {
            drop(a.try_admit(ip(1), now).unwrap());
        }
        assert_eq!(a.try_admit(ip(1), now).err(), Some(Overload::ConnectRate));
        // Another source has its own bucket.
        assert!(a.try_admit(ip(2), now).is_ok());
        // 10 per second: one more after 100 ms, not two.
        let later = now + Duration::from_millis(100);
        assert!(a.try_admit(ip(1), later).is_ok());
        assert_eq!(a.try_admit(ip(1), later).err(), Some(Overload::ConnectRate));
    }

    #[test]
    fn a_rate_of_zero_or_an_unknown_peer_is_not_limited() {
        let a = admission(0, 0, 1);
        let now = Instant::now();
        for _ in 0..100 {
            drop(a.try_admit(ip(1), now).unwrap());
        }
        let b = admission(0, 1, 1);
        for _ in 0..100 {
            drop(b.try_admit(None, now).unwrap());
        }
    }

    #[test]
    fn the_protocol_level_is_read_from_the_connect_header() {
        let v5 = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x03abc";
        assert_eq!(connect_level(v5), Some(Some(5)));
        let v31 = b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x1e\x00\x01a";
        assert_eq!(connect_level(v31), Some(Some(3)));
        for cut in 0..9 {
            assert_eq!(connect_level(&v5[..cut]), None, "cut at {cut}");
        }
        assert_eq!(connect_level(b"\xC0\x00"), Some(None));
        assert_eq!(connect_level(b"GET / HTTP/1.1"), Some(None));
        assert_eq!(connect_level(b"\x10\xff\xff\xff\xff\x01"), Some(None));
    }

    #[test]
    fn the_v5_connack_carries_the_code_and_a_reason_string() {
        let ack = connack_v5(Overload::ConnectRate);
        assert_eq!(&ack[..4], &[0x20, (ack.len() - 2) as u8, 0x00, 0x9F]);
        assert_eq!(ack[5], 0x1F);
        assert!(ack.ends_with(Overload::ConnectRate.as_str().as_bytes()));
        assert_eq!(connack_v5(Overload::MaxConnections)[3], 0x97);
    }
}
