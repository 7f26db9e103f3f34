//! `$SYS/broker/...` statistics, named like Mosquitto's so dashboards and
//! tools written for it work unchanged.

use ntex::util::Bytes;

use super::groups::ClusterTotals;
use super::stats::Stats;
use crate::domain::{Message, QoS};
use crate::domain::{TopicLimits, TopicName};

/// One retained message per statistic, built from the current counters.
pub fn snapshot(stats: &Stats) -> Vec<Message> {
    let c = |counter: &std::sync::atomic::AtomicU64| Stats::get(counter).to_string();
    let dropped = Stats::get(&stats.publish_dropped_qos0) + Stats::get(&stats.publish_dropped_qos1);
    let entries: [(&str, String); 17] = [
        ("$SYS/broker/version", format!("mapcast {}", env!("CARGO_PKG_VERSION"))),
        ("$SYS/broker/uptime", format!("{} seconds", stats.uptime_secs())),
        ("$SYS/broker/clients/connected", c(&stats.clients_connected)),
        ("$SYS/broker/clients/total", c(&stats.clients_total)),
        ("$SYS/broker/messages/received", c(&stats.messages_received)),
        ("$SYS/broker/messages/sent", c(&stats.messages_sent)),
        ("$SYS/broker/bytes/received", c(&stats.bytes_received)),
        ("$SYS/broker/bytes/sent", c(&stats.bytes_sent)),
        ("$SYS/broker/publish/messages/dropped", dropped.to_string()),
        ("$SYS/broker/publish/messages/expired", c(&stats.messages_expired)),
        ("$SYS/broker/retained messages/count", c(&stats.retained_count)),
        ("$SYS/broker/subscriptions/count", c(&stats.subscriptions)),
        ("$SYS/broker/connections/rejected", c(&stats.rejected_connects)),
        ("$SYS/broker/connections/rejected/max_connections", c(&stats.refused_max_connections)),
        ("$SYS/broker/connections/rejected/connect_rate", c(&stats.refused_connect_rate)),
        ("$SYS/broker/publish/messages/rejected", c(&stats.rejected_publishes)),
        ("$SYS/broker/publish/messages/invalid", c(&stats.invalid_payloads)),
    ];
    retained(entries)
}

/// Sums over the live instances (several instances), each published by
/// every instance for its own subscribers.
pub fn cluster(t: &ClusterTotals) -> Vec<Message> {
    let entries: [(&str, String); 6] = [
        ("$SYS/cluster/instances", t.instances.to_string()),
        ("$SYS/cluster/clients/connected", t.clients_connected.to_string()),
        ("$SYS/cluster/messages/received", t.messages_received.to_string()),
        ("$SYS/cluster/messages/sent", t.messages_sent.to_string()),
        ("$SYS/cluster/subscriptions/count", t.subscriptions.to_string()),
        ("$SYS/cluster/retained messages/count", t.retained.to_string()),
    ];
    retained(entries)
}

fn retained<const N: usize>(entries: [(&str, String); N]) -> Vec<Message> {
    entries
        .into_iter()
        .filter_map(|(topic, value)| {
            let topic = TopicName::parse(topic, TopicLimits::default()).ok()?;
            Some(Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true))
        })
        .collect()
}
