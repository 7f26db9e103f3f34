//! The PROXY protocol in front of the MQTT and HTTP listeners: a load
//! balancer (HAProxy `send-proxy-v2`) opens each connection with a header
//! naming the client it speaks for, so per-address limits, lockouts, logs and
//! traces see the client, not the balancer.
//!
//! Off by default. When a listener has it on, every connection must come
//! from a trusted network and open with a well-formed header, read within
//! [`HEADER_DEADLINE`]; anything else is closed, logged and counted, and its
//! address is never believed. Listeners without it pay nothing: the step is
//! not in their chain.
//!
//! - `header`: the v1/v2 parser, pure.
//! - [`Network`]: a trusted network (`127.0.0.0/8`, `10.1.2.3`, `fd00::/8`).

pub mod header;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use header::{HeaderError, Parsed, parse};

use crate::telemetry::metrics;
use crate::telemetry::names::{CLIENT_ADDRESS, ERROR_MESSAGE};

/// Time a trusted peer has to send the whole header once connected. A
/// balancer sends it with the connection's first bytes; this only bounds
/// how long a stuck or hostile peer holds a socket.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(3);
/// At most one log line per reason in this period (a misconfigured
/// balancer, or a scan, refuses thousands).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A network in CIDR notation; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is inside (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a network (`10.0.0.0/8`, `192.0.2.7`, `fd00::/8`)");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A listener's PROXY protocol policy: who may speak for clients.
#[derive(Debug)]
pub struct ProxyProtocol {
    /// `"mqtt"`, `"mqtt-tls"`, `"mqtt-ws"` or `"http"`, for the logs.
    listener: &'static str,
    trusted: Vec<Network>,
}

/// Why a connection was closed before its first byte of MQTT or HTTP; the
/// label values of [`metrics::Metrics::proxy_refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not in a trusted network.
    Untrusted,
    /// Not a header, or a malformed one.
    Malformed(HeaderError),
    /// The header did not arrive within [`HEADER_DEADLINE`].
    Timeout,
    /// The peer closed (or the socket failed) before the header was whole.
    Closed,
}

impl Refusal {
    /// Index into [`crate::telemetry::names::metrics::PROXY_REFUSE_REASONS`].
    pub fn index(self) -> usize {
        match self {
            Self::Untrusted => 0,
            Self::Malformed(_) => 1,
            Self::Timeout => 2,
            Self::Closed => 3,
        }
    }
}

impl ProxyProtocol {
    /// The policy for one listener, or `None` when it is off.
    pub fn new(listener: &'static str, enabled: bool, trusted: &[Network]) -> Option<Arc<Self>> {
        enabled.then(|| Arc::new(Self { listener, trusted: trusted.to_vec() }))
    }

    /// Whether `peer` may send a header at all.
    pub fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| self.trusted.iter().any(|n| n.contains(p.ip())))
    }

    /// Count the refusal and log it (at most once per reason per
    /// [`LOG_EVERY`], with how many went unlogged).
    pub fn refused(&self, peer: Option<SocketAddr>, why: Refusal) {
        let i = why.index();
        metrics::global().proxy_refused[i].fetch_add(1, Relaxed);
        if !LOG_GATE.due(i) {
            return;
        }
        let unlogged = LOG_GATE.unlogged[i].swap(0, Relaxed);
        let reason = crate::telemetry::names::metrics::PROXY_REFUSE_REASONS[i];
        match why {
            Refusal::Malformed(e) => tracing::warn!(
                { CLIENT_ADDRESS } = peer.map(tracing::field::display),
                { ERROR_MESSAGE } = %e,
                listener = self.listener,
                reason,
                refused_since_last_log = unlogged,
                "PROXY protocol: connection closed, malformed header"
            ),
            _ => tracing::warn!(
                { CLIENT_ADDRESS } = peer.map(tracing::field::display),
                listener = self.listener,
                reason,
                refused_since_last_log = unlogged,
                "PROXY protocol: connection closed, {}",
                match why {
                    Refusal::Untrusted => "the peer is not a trusted proxy",
                    Refusal::Timeout => "no header in time",
                    _ => "closed before its header",
                }
            ),
        }
    }
}

/// Rate limit of the refusal log lines, per reason.
struct LogGate {
    started: Instant,
    /// When the last line was logged (ms since `started`, +1: 0 is never).
    logged_at: [AtomicU64; 4],
    unlogged: [AtomicU64; 4],
}

static LOG_GATE: LazyLock<LogGate> = LazyLock::new(|| LogGate {
    started: Instant::now(),
    logged_at: Default::default(),
    unlogged: Default::default(),
});

impl LogGate {
    fn due(&self, i: usize) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at[i].load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due && self.logged_at[i].compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            return true;
        }
        self.unlogged[i].fetch_add(1, Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        assert!(net("127.0.0.0/8").contains(ip("127.4.5.6")));
        assert!(!net("127.0.0.0/8").contains(ip("128.0.0.1")));
        assert!(net("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!net("10.1.2.3").contains(ip("10.1.2.4")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
        assert!(net("::/0").contains(ip("::1")));
        // A v4-mapped peer (a dual-stack listener) is its IPv4 address.
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn networks_parse_strictly_and_print_back() {
        assert_eq!(net("192.0.2.0/24").to_string(), "192.0.2.0/24");
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(net("::1").to_string(), "::1/128");
        for bad in ["", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/+8", "host/8", "10/8"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_trusted_peers_may_speak_for_clients() {
        let p = ProxyProtocol::new("mqtt", true, &[net("127.0.0.0/8")]).unwrap();
        assert!(p.trusts(Some("127.0.0.2:4000".parse().unwrap())));
        assert!(!p.trusts(Some("192.0.2.1:4000".parse().unwrap())));
        assert!(!p.trusts(None));
        assert!(ProxyProtocol::new("mqtt", false, &[net("127.0.0.0/8")]).is_none());
    }
}
