//! The message as the broker routes it: shared, immutable, cheap to fan out.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ntex::util::{ByteString, Bytes};

use super::{ClientId, TopicName};

/// Quality of service, ordered so `min` gives the effective delivery QoS.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5 publish properties that travel with the message unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProps {
    pub content_type: Option<ByteString>,
    pub payload_is_utf8: bool,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl MessageProps {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// As kept with a stored message or sent to other instances; `None`
    /// when there is nothing to keep.
    pub fn to_json(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        serde_json::to_string(&PropsJson {
            content_type: self.content_type.as_ref().map(|s| s.to_string()),
            utf8: self.payload_is_utf8,
            response_topic: self.response_topic.as_ref().map(|s| s.to_string()),
            correlation_data: self.correlation_data.as_ref().map(|b| b.to_vec()),
            user_properties: self
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .ok()
    }

    /// Read back what [`MessageProps::to_json`] wrote.
    pub fn from_json(json: &str) -> Option<Self> {
        let p: PropsJson = serde_json::from_str(json).ok()?;
        Some(Self {
            content_type: p.content_type.map(ByteString::from),
            payload_is_utf8: p.utf8,
            response_topic: p.response_topic.map(ByteString::from),
            correlation_data: p.correlation_data.map(Bytes::from),
            user_properties: p
                .user_properties
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PropsJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    utf8: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
}

/// One published application message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// `None` when the publish carried no properties (every v3 publish).
    pub props: Option<Arc<MessageProps>>,
    /// From the v5 message expiry interval; expired messages are not delivered.
    pub expires_at: Option<Instant>,
    /// Wall-clock time the broker accepted it (for storage and `Last-Modified`).
    pub received_at: SystemTime,
    /// The publishing client, for no-local; `None` for REST and broker messages.
    pub publisher: Option<ClientId>,
}

impl Message {
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Self {
            topic,
            payload,
            qos,
            retain,
            props: None,
            expires_at: None,
            received_at: SystemTime::now(),
            publisher: None,
        }
    }

    /// A copy whose topic and payload own just their bytes. A decoded
    /// publish's are slices of the network read buffer they arrived in, so
    /// whatever keeps a message for long (a lagging queue, the retained set,
    /// the replay journal) would otherwise keep that whole buffer alive.
    pub fn compacted(&self) -> Self {
        Self {
            topic: self.topic.compacted(),
            payload: Bytes::copy_from_slice(&self.payload),
            ..self.clone()
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds left for the outgoing message expiry interval (v5 §3.3.2.3.3).
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            at.saturating_duration_since(now).as_secs().max(1).min(u32::MAX as u64) as u32
        })
    }
}

/// A message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Unique per broker run; also the row key when the session is persistent.
    pub seq: u64,
    pub msg: Arc<Message>,
    /// min(publish QoS, granted subscription QoS).
    pub qos: QoS,
    /// Retain flag as sent: set for retained messages sent on subscribe, or
    /// kept from the publish when the subscription asked retain-as-published.
    pub retain: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Set when this is a redelivery after a reconnect.
    pub dup: bool,
    /// The packet id of a QoS≥1 delivery, chosen by its session's outbox
    /// when queued and kept (and stored) with it: a redelivery carries the
    /// id of the first attempt [MQTT-4.4.0-1]. `None` for QoS 0.
    pub packet_id: Option<NonZeroU16>,
    /// Set when a copy is in the store (persistent session, QoS≥1): it is
    /// deleted there once acknowledged or dropped.
    pub stored: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TopicLimits;

    #[test]
    fn a_compacted_message_shares_no_storage_with_the_buffer_it_was_read_from() {
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let topic = TopicName::parse(
            ntex::util::ByteString::try_from(buffer.slice(0..40)).unwrap(),
            TopicLimits::default(),
        )
        .unwrap();
        let msg = Message::new(topic, buffer.slice(100..300), QoS::AtLeastOnce, true);

        let own = msg.compacted();

        assert_eq!((own.topic.as_str(), &own.payload[..]), (msg.topic.as_str(), &msg.payload[..]));
        let inside = |p: *const u8| buffer.as_ptr_range().contains(&p);
        assert!(inside(msg.payload.as_ptr()) && inside(msg.topic.as_str().as_ptr()));
        assert!(!inside(own.payload.as_ptr()) && !inside(own.topic.as_str().as_ptr()));
        assert_eq!((own.qos, own.retain), (msg.qos, msg.retain));
    }
}
