//! Broker counters: lock-free, updated on the hot path, read by `$SYS` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::domain::QoS;

#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub clients_connected: AtomicU64,
    pub clients_total: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub publish_dropped_qos0: AtomicU64,
    pub publish_dropped_qos1: AtomicU64,
    pub messages_expired: AtomicU64,
    pub retained_count: AtomicU64,
    pub subscriptions: AtomicU64,
    pub rejected_publishes: AtomicU64,
    pub rejected_connects: AtomicU64,
    /// Of `rejected_connects`: turned away at `broker.max_connections`.
    pub refused_max_connections: AtomicU64,
    /// Of `rejected_connects`: over `broker.max_connect_rate_per_ip`.
    pub refused_connect_rate: AtomicU64,
    /// Of `rejected_connects`: the client id's session belongs to another identity.
    pub refused_session_owner: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Publishes refused for their payload (invalid locations), any protocol.
    pub invalid_payloads: AtomicU64,
    /// QoS 1/2 deliveries handed to connections and not yet acknowledged.
    pub inflight_out: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            clients_connected: AtomicU64::new(0),
            clients_total: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            publish_dropped_qos0: AtomicU64::new(0),
            publish_dropped_qos1: AtomicU64::new(0),
            messages_expired: AtomicU64::new(0),
            retained_count: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            rejected_publishes: AtomicU64::new(0),
            rejected_connects: AtomicU64::new(0),
            refused_max_connections: AtomicU64::new(0),
            refused_connect_rate: AtomicU64::new(0),
            refused_session_owner: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            invalid_payloads: AtomicU64::new(0),
            inflight_out: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn dropped_queue_full(&self, qos: QoS) {
        match qos {
            QoS::AtMostOnce => self.publish_dropped_qos0.fetch_add(1, Relaxed),
            _ => self.publish_dropped_qos1.fetch_add(1, Relaxed),
        };
    }

    pub fn dropped_expired(&self) {
        self.messages_expired.fetch_add(1, Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.messages_sent.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
