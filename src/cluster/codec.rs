//! A message as it travels on the stream: one entry of named fields, so an
//! instance of another version can skip what it does not know.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use ntex::util::{ByteString, Bytes};
use redis::Value;

use crate::broker::groups::Picks;
use crate::domain::time::{from_millis, millis};
use crate::domain::{ClientId, Message, MessageProps, QoS, TopicFilter, TopicLimits, TopicName};

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
/// The instance chosen for each shared group (see [`Picks`]): per group
/// its name, filter and instance, each a length (two bytes, big-endian)
/// and the bytes. Instances that do not know it deliver to their members
/// as before.
const PICKS: &str = "s";
/// How often the entry was passed on (see [`Picks::hops`]), when it was.
const HOPS: &str = "h";
/// The topic of an entry passed on, in place of [`TOPIC`]: an instance
/// that does not know passed-on entries skips them as unreadable instead
/// of delivering them to every subscriber again.
const TOPIC_PASSED_ON: &str = "u";

/// The fields of `msg`'s entry, sent by instance `node`.
pub fn encode(node: &str, msg: &Message, picks: Option<&Picks>) -> Vec<(&'static str, Vec<u8>)> {
    let passed_on = picks.is_some_and(|p| p.hops > 0);
    let mut fields = vec![
        (NODE, node.as_bytes().to_vec()),
        (if passed_on { TOPIC_PASSED_ON } else { TOPIC }, msg.topic.as_str().as_bytes().to_vec()),
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
    if let Some(picks) = picks.filter(|p| !p.groups.is_empty()) {
        let mut out = Vec::new();
        for (group, filter, node) in &picks.groups {
            for part in [group.as_bytes(), filter.as_str().as_bytes(), node.as_bytes()] {
                // Names, filters and instance names are far below 64 KiB.
                let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&part[..usize::from(len)]);
            }
        }
        fields.push((PICKS, out));
        if passed_on {
            fields.push((HOPS, picks.hops.to_string().into_bytes()));
        }
    }
    fields
}

/// The picks [`encode`] wrote; `None` if cut short or not UTF-8.
fn decode_picks(mut bytes: &[u8], hops: u8) -> Option<Picks> {
    let mut groups = Vec::new();
    let part = |bytes: &mut &[u8]| -> Option<String> {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let (value, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
        *bytes = rest;
        String::from_utf8(value.to_vec()).ok()
    };
    while !bytes.is_empty() {
        let group = ByteString::from(part(&mut bytes)?);
        let limits =
            TopicLimits { max_len: usize::from(u16::MAX), max_levels: usize::from(u16::MAX) };
        let filter = TopicFilter::parse(ByteString::from(part(&mut bytes)?), limits).ok()?;
        let node: std::sync::Arc<str> = part(&mut bytes)?.into();
        groups.push((group, filter, node));
    }
    Some(Picks { groups, hops })
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

/// The message of an entry, the instance that sent it, and the instances
/// it chose for shared groups (`None` from one that does not choose).
pub fn decode(
    fields: &HashMap<String, Value>,
) -> Result<(String, Message, Option<Picks>), DecodeError> {
    let bytes = |name: &'static str| match fields.get(name) {
        Some(Value::BulkString(b)) => Some(b.as_slice()),
        _ => None,
    };
    let text = |name: &'static str| bytes(name).and_then(|b| std::str::from_utf8(b).ok());
    let number = |name: &'static str| text(name).and_then(|t| t.parse::<i64>().ok());

    let node = text(NODE).ok_or(DecodeError::Field(NODE))?.to_owned();
    // Generous limits: the sending instance already checked the topic
    // against its own.
    let topic = text(TOPIC).or_else(|| text(TOPIC_PASSED_ON)).ok_or(DecodeError::Field(TOPIC))?;
    let topic = TopicName::parse(
        ByteString::from(topic.to_owned()),
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
    let hops = match number(HOPS) {
        Some(h) => u8::try_from(h).map_err(|_| DecodeError::Field(HOPS))?,
        None => 0,
    };
    let picks = match bytes(PICKS) {
        Some(b) => Some(decode_picks(b, hops).ok_or(DecodeError::Field(PICKS))?),
        None => None,
    };
    Ok((node, msg, picks))
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
        let fields: HashMap<String, Value> = encode("node-1", &msg, None)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v)))
            .collect();
        let (node, back, picks) = decode(&fields).unwrap();
        assert_eq!(picks, None);
        assert_eq!(node, "node-1");
        assert_eq!(back.topic, msg.topic);
        assert_eq!(back.payload, msg.payload);
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.publisher, msg.publisher);
        assert_eq!(back.props, msg.props);
        assert_eq!(millis(back.received_at), millis(msg.received_at));
        let left = back.expires_at.unwrap().saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
        let packed = pack(&encode("node-1", &msg, None));
        let unpacked: HashMap<String, Value> = unpack(&packed, "node-2")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, Value::BulkString(v)))
            .collect();
        let (node, again, _) = decode(&unpacked).unwrap();
        assert_eq!(node, "node-2", "appended again by its new run");
        assert_eq!((again.topic, again.payload), (msg.topic.clone(), msg.payload.clone()));
        assert!(unpack(&packed[..packed.len() - 1], "node-2").is_none());
        let mut broken = fields.clone();
        broken.remove(QOS);
        assert!(decode(&broken).is_err());
    }

    #[test]
    fn picks_travel_with_the_entry_and_passed_on_entries_hide_their_topic() {
        let topic = TopicName::parse("devices/a/location", TopicLimits::default()).unwrap();
        let msg = Message::new(topic, Bytes::from_static(b"x"), QoS::AtLeastOnce, false);
        let filter = TopicFilter::parse("devices/+/location", TopicLimits::default()).unwrap();
        let to_map = |fields: Vec<(&'static str, Vec<u8>)>| -> HashMap<String, Value> {
            fields.into_iter().map(|(k, v)| (k.to_owned(), Value::BulkString(v))).collect()
        };
        for hops in [0, 2] {
            let picks = Picks {
                groups: vec![
                    (ByteString::from_static("g"), filter.clone(), Arc::from("node-b/1/ab")),
                    (ByteString::from_static("h"), filter.clone(), Arc::from("node-c/2/cd")),
                ],
                hops,
            };
            let fields = to_map(encode("node-a", &msg, Some(&picks)));
            assert_eq!(fields.contains_key(TOPIC), hops == 0, "an older reader skips it");
            let (_, back, got) = decode(&fields).unwrap();
            assert_eq!(back.topic, msg.topic);
            assert_eq!(got.as_ref(), Some(&picks));
            assert_eq!(
                got.unwrap().chosen(&ByteString::from_static("h"), &filter),
                Some("node-c/2/cd")
            );
            let mut cut = fields.clone();
            let Some(Value::BulkString(b)) = cut.get_mut(PICKS) else { panic!() };
            b.pop();
            assert!(decode(&cut).is_err(), "cut short");
        }
        let none = Picks::default();
        assert!(!to_map(encode("node-a", &msg, Some(&none))).contains_key(PICKS));
    }
}
