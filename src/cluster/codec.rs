//! A message as it travels on the stream: one entry of named fields, so an
//! instance of another version can skip what it does not know.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use ntex::util::{ByteString, Bytes};
use redis::Value;

use crate::domain::time::{from_millis, millis};
use crate::domain::{ClientId, Message, MessageProps, QoS, TopicLimits, TopicName};

/// The instance that accepted it (its own entries are skipped).
pub const NODE: &str = "n";
const TOPIC: &str = "t";
const PAYLOAD: &str = "p";
const QOS: &str = "q";
const RETAIN: &str = "r";
/// Wall-clock expiry in milliseconds since the epoch.
const EXPIRES: &str = "e";
const RECEIVED: &str = "a";
const PUBLISHER: &str = "c";
const PROPS: &str = "m";

/// The fields of `msg`'s entry, sent by instance `node`.
pub fn encode(node: &str, msg: &Message) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![
        (NODE, node.as_bytes().to_vec()),
        (TOPIC, msg.topic.as_str().as_bytes().to_vec()),
        (PAYLOAD, msg.payload.to_vec()),
        (QOS, vec![b'0' + msg.qos as u8]),
        (RETAIN, vec![if msg.retain { b'1' } else { b'0' }]),
        (RECEIVED, millis(msg.received_at).to_string().into_bytes()),
    ];
    if let Some(at) = msg.expires_at {
        let left = at.saturating_duration_since(Instant::now());
        fields.push((EXPIRES, millis(SystemTime::now() + left).to_string().into_bytes()));
    }
    if let Some(publisher) = &msg.publisher {
        fields.push((PUBLISHER, publisher.as_str().as_bytes().to_vec()));
    }
    if let Some(json) = msg.props.as_deref().and_then(MessageProps::to_json) {
        fields.push((PROPS, json.into_bytes()));
    }
    fields
}

/// An entry's fields as one byte string, to keep it outside the stream:
/// per field a name length (one byte), the name, a value length (four
/// bytes, big-endian), the value.
pub fn pack(fields: &[(&'static str, Vec<u8>)]) -> Vec<u8> {
    let size = fields.iter().map(|(k, v)| 5 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (name, value) in fields {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The fields [`pack`] wrote, with the sending instance replaced by
/// `node`; `None` if `bytes` is cut short.
pub fn unpack(mut bytes: &[u8], node: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = vec![(NODE.to_owned(), node.as_bytes().to_vec())];
    while let Some((&len, rest)) = bytes.split_first() {
        let (name, rest) = rest.split_at_checked(usize::from(len))?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let (value, rest) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
        let name = std::str::from_utf8(name).ok()?;
        if name != NODE {
            fields.push((name.to_owned(), value.to_vec()));
        }
        bytes = rest;
    }
    Some(fields)
}

/// Why an entry was skipped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("field {0} missing or malformed")]
    Field(&'static str),
}

/// The message of an entry, and the instance that sent it.
pub fn decode(fields: &HashMap<String, Value>) -> Result<(String, Message), DecodeError> {
    let bytes = |name: &'static str| match fields.get(name) {
        Some(Value::BulkString(b)) => Some(b.as_slice()),
        _ => None,
    };
    let text = |name: &'static str| bytes(name).and_then(|b| std::str::from_utf8(b).ok());
    let number = |name: &'static str| text(name).and_then(|t| t.parse::<i64>().ok());

    let node = text(NODE).ok_or(DecodeError::Field(NODE))?.to_owned();
    // Generous limits: the sending instance already checked the topic
    // against its own.
    let topic = TopicName::parse(
        ByteString::from(text(TOPIC).ok_or(DecodeError::Field(TOPIC))?.to_owned()),
        TopicLimits { max_len: usize::from(u16::MAX), max_levels: usize::from(u16::MAX) },
    )
    .map_err(|_| DecodeError::Field(TOPIC))?;
    let payload = Bytes::copy_from_slice(bytes(PAYLOAD).ok_or(DecodeError::Field(PAYLOAD))?);
    let qos = match bytes(QOS) {
        Some([q]) => QoS::from_u8(q.wrapping_sub(b'0')).ok_or(DecodeError::Field(QOS))?,
        _ => return Err(DecodeError::Field(QOS)),
    };
    let retain = matches!(bytes(RETAIN), Some(b"1"));
    let mut msg = Message::new(topic, payload, qos, retain);
    msg.received_at = from_millis(number(RECEIVED).ok_or(DecodeError::Field(RECEIVED))?);
    if let Some(at) = number(EXPIRES) {
        let left = from_millis(at).duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        msg.expires_at = Some(Instant::now() + left);
    }
    msg.publisher = text(PUBLISHER).map(ClientId::from);
    msg.props = text(PROPS).and_then(MessageProps::from_json).map(std::sync::Arc::new);
    Ok((node, msg))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn an_entry_carries_the_whole_message() {
        let topic = TopicName::parse("devices/a/location", TopicLimits::default()).unwrap();
        let mut msg =
            Message::new(topic, Bytes::from_static(b"\x00\xffpos"), QoS::ExactlyOnce, true);
        msg.publisher = Some(ClientId::from("car-a"));
        msg.expires_at = Some(Instant::now() + Duration::from_secs(60));
        msg.props = Some(Arc::new(MessageProps {
            content_type: Some(ByteString::from_static("application/geo+json")),
            ..MessageProps::default()
        }));
        let fields: HashMap<String, Value> = encode("node-1", &msg)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v)))
            .collect();
        let (node, back) = decode(&fields).unwrap();
        assert_eq!(node, "node-1");
        assert_eq!(back.topic, msg.topic);
        assert_eq!(back.payload, msg.payload);
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.publisher, msg.publisher);
        assert_eq!(back.props, msg.props);
        assert_eq!(millis(back.received_at), millis(msg.received_at));
        let left = back.expires_at.unwrap().saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
        let packed = pack(&encode("node-1", &msg));
        let unpacked: HashMap<String, Value> = unpack(&packed, "node-2")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, Value::BulkString(v)))
            .collect();
        let (node, again) = decode(&unpacked).unwrap();
        assert_eq!(node, "node-2", "appended again by its new run");
        assert_eq!((again.topic, again.payload), (msg.topic.clone(), msg.payload.clone()));
        assert!(unpack(&packed[..packed.len() - 1], "node-2").is_none());
        let mut broken = fields.clone();
        broken.remove(QOS);
        assert!(decode(&broken).is_err());
    }
}
