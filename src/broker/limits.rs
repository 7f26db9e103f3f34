//! Broker limits, each with a default; violations get precise reason codes.

use serde::{Deserialize, Serialize};

use super::outbox::OverflowPolicy;
use crate::domain::TopicLimits;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerLimits {
    /// Largest accepted application payload in bytes.
    pub max_payload_bytes: u32,
    /// Largest accepted MQTT packet in bytes (also advertised to v5 clients).
    pub max_packet_bytes: u32,
    /// Longest topic name or filter in bytes.
    pub max_topic_len: usize,
    /// Most levels ('/'-separated) in a topic name or filter.
    pub max_topic_levels: usize,
    /// Most subscriptions one client may hold.
    pub max_subscriptions_per_client: usize,
    /// QoS≥1 messages in flight to one client (server side of receive maximum).
    pub max_inflight: u16,
    /// QoS≥1 messages the broker accepts in flight from one client (advertised receive maximum).
    pub receive_maximum: u16,
    /// Per-session outbound queue bound (messages), online and offline.
    pub max_queued_messages: usize,
    /// Per-session outbound queue bound in bytes (payloads and topics of
    /// the queued messages), online and offline: map snapshots run to
    /// megabytes, so the message bound alone does not bound memory.
    pub max_queued_bytes: usize,
    /// What to do with QoS≥1 messages that meet a full queue.
    pub queue_overflow: OverflowPolicy,
    /// Topic aliases a v5 client may use towards the broker.
    pub max_topic_alias: u16,
    /// Upper bound on session expiry granted to clients, in seconds.
    pub max_session_expiry_secs: u32,
    /// Seconds a session that asked never to expire (MQTT 3.1.1
    /// CleanSession=0, v5 expiry 0xFFFFFFFF) lives on once disconnected,
    /// like Mosquitto's option of the same name: phones with random client
    /// ids would otherwise leave sessions and queued messages forever.
    /// Default 7 days (as `max_session_expiry_secs`); 0 = never expire.
    pub persistent_client_expiration: u32,
    /// Whether QoS 0 messages are queued for persistent sessions while
    /// they are offline (Mosquitto's `queue_qos0_messages`). Default false:
    /// QoS 0 is for the connected, and a stale position is worth nothing.
    pub queue_qos0_messages: bool,
    /// Keep-alive the broker imposes when a client asks for none or more (v5 server keep-alive), seconds; 0 = accept the client's.
    pub server_keep_alive_secs: u16,
    /// Most MQTT connections open at once, all listeners together; more get CONNACK 0x97 (3.1.1: 0x03). 0 = no limit.
    pub max_connections: usize,
    /// New MQTT connections per second one source address (IPv6: one /64) may open, sustained; more get CONNACK 0x9F (3.1.1: 0x03). 0 = no limit.
    pub max_connect_rate_per_ip: u32,
    /// Connections one source address may open in a burst before its rate
    /// applies. Default 100: one second of the default rate, so a fleet of
    /// 1,000 cars behind one NAT is back within ten seconds of a restart,
    /// while one stranger can start at most 100 password checks at once
    /// (each ~20 ms of CPU and 19 MiB on the bounded hashing pool) instead
    /// of the 1,000 an earlier default allowed.
    pub connect_burst_per_ip: u32,
    /// Whether an admin may CONNECT with a client id whose session belongs to
    /// another identity (and so replace or resume it). Everyone else is
    /// refused with CONNACK 0x87 (3.1.1: 0x05). Default false.
    pub admin_session_takeover: bool,
    /// Recent publishes kept for SSE streams resuming with `Last-Event-ID`
    /// (also bounded to 32 MiB of payloads); 0 keeps none. Default 10,000.
    pub replay_messages: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_packet_bytes: 256 * 1024 + 64 * 1024,
            max_topic_len: 1024,
            max_topic_levels: 32,
            max_subscriptions_per_client: 256,
            max_inflight: 64,
            receive_maximum: 1024,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_overflow: OverflowPolicy::DropOldest,
            max_topic_alias: 64,
            max_session_expiry_secs: 7 * 24 * 3600,
            persistent_client_expiration: 7 * 24 * 3600,
            queue_qos0_messages: false,
            server_keep_alive_secs: 0,
            max_connections: 50_000,
            max_connect_rate_per_ip: 100,
            connect_burst_per_ip: 100,
            admin_session_takeover: false,
            replay_messages: 10_000,
        }
    }
}

impl BrokerLimits {
    /// The expiry a session gets for the expiry it asked for.
    pub fn grant_expiry(&self, requested: u32) -> u32 {
        match requested {
            u32::MAX if self.persistent_client_expiration == 0 => u32::MAX,
            u32::MAX => self.persistent_client_expiration,
            secs => secs.min(self.max_session_expiry_secs),
        }
    }

    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits { max_len: self.max_topic_len, max_levels: self.max_topic_levels }
    }
}
