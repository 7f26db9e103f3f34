//! The inbound packet path without a socket, for the fuzz targets in `fuzz/`.
//!
//! Bytes go through ntex-mqtt's codec set up as the server sets it up (size
//! limit, whole payloads), read by read as a socket would deliver them; each
//! decoded packet then takes the pure steps its handler takes: topic and
//! filter parsing, wills, v5 properties, location validation and the choice
//! of reason code. A decode error gets the DISCONNECT the server would send,
//! which must encode and decode again. Broken invariants panic.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use ntex::codec::{Decoder, Encoder};
use ntex::util::{BytePages, ByteString, Bytes, BytesMut};
use ntex_mqtt::error::{DecodeError, ProtocolError};
use ntex_mqtt::{v3, v5};

use super::convert;
use super::reason::{self, ConnectRefusal, PublishRejection, SubscribeRefusal};
use crate::broker::{BrokerLimits, Message, PublishHook, QoS, SubscriptionOptions};
use crate::domain::{ClientId, SharedFilter, TopicName};
use crate::locations::{HistoryTopics, LocationHook, PositionFeed};

/// The protocol level a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    V3,
    V5,
}

/// Decode `reads` (successive socket reads) at `level` under `limits` and
/// handle every packet; returns how many packets decoded.
pub fn inbound(level: Level, reads: &[&[u8]], limits: &BrokerLimits) -> usize {
    let cut = Framing { level, max: limits.max_packet_bytes }.underflow_at(&reads.concat());
    let reads = truncate(reads, cut);
    let reads = &reads[..];
    let steps = Steps::new(limits);
    match level {
        Level::V3 => {
            let codec = v3::codec::Codec::new();
            codec.set_max_size(limits.max_packet_bytes);
            codec.set_min_chunk_size(limits.max_packet_bytes);
            let decoded = decode_all(&codec, reads, |d| steps.v3(d));
            if let Some(first) = decoded.first_connect_v3 {
                check_sniffer(reads, &first);
            }
            decoded.count
        }
        Level::V5 => {
            let codec = v5::codec::Codec::new();
            codec.set_max_inbound_size(limits.max_packet_bytes);
            codec.set_min_chunk_size(limits.max_packet_bytes);
            decode_all(&codec, reads, |d| steps.v5(d)).count
        }
    }
}

/// ntex-mqtt 8.2.1 computes a PUBLISH's payload length as its remaining
/// length minus its variable header without checking: a header (topic,
/// packet id, v5 properties) longer than the remaining length underflows
/// (`codec.rs`, v3 and v5) — a panic with overflow checks, a wrapped length
/// without. The connection ends either way (the panic is caught per
/// connection); the stream is cut before such a packet so the rest of the
/// path stays reachable.
struct Framing {
    level: Level,
    max: u32,
}

impl Framing {
    fn underflow_at(&self, b: &[u8]) -> Option<usize> {
        let mut pos = 0;
        loop {
            let &first = b.get(pos)?;
            let (remaining, n) = var_int(b.get(pos + 1..)?)?;
            if self.max != 0 && remaining > self.max {
                return None;
            }
            let body = pos + 1 + n;
            if first >> 4 == 3 {
                let header = self.publish_header(b.get(body..)?, first)?;
                if header > u64::from(remaining) {
                    return Some(pos);
                }
            }
            pos = body + remaining as usize;
        }
    }

    fn publish_header(&self, b: &[u8], first: u8) -> Option<u64> {
        let topic = u64::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
        let packet_id = match (first >> 1) & 3 {
            0 => 0,
            3 => return None,
            _ => 2,
        };
        let mut len = 2 + topic + packet_id;
        if self.level == Level::V5 {
            let (props, n) = var_int(b.get(len as usize..)?)?;
            len += n as u64 + u64::from(props);
        }
        Some(len)
    }
}

/// An MQTT variable byte integer and its length; `None` when incomplete or malformed.
fn var_int(b: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, &byte) in b.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn truncate<'a>(reads: &[&'a [u8]], cut: Option<usize>) -> Vec<&'a [u8]> {
    let Some(mut left) = cut else { return reads.to_vec() };
    let mut out = Vec::new();
    for read in reads {
        if left == 0 {
            break;
        }
        let take = read.len().min(left);
        out.push(&read[..take]);
        left -= take;
    }
    out
}

struct Decoded {
    count: usize,
    /// The first packet, when it is a 3.1.1 CONNECT: (client id empty, clean session).
    first_connect_v3: Option<(bool, bool)>,
}

trait Item {
    fn v3_connect(&self) -> Option<(bool, bool)>;
}

impl Item for v3::codec::Decoded {
    fn v3_connect(&self) -> Option<(bool, bool)> {
        match self {
            v3::codec::Decoded::Packet(v3::codec::Packet::Connect(c), _) => {
                Some((c.client_id.is_empty(), c.clean_session))
            }
            _ => None,
        }
    }
}

impl Item for v5::codec::Decoded {
    fn v3_connect(&self) -> Option<(bool, bool)> {
        None
    }
}

fn decode_all<C>(codec: &C, reads: &[&[u8]], mut handle: impl FnMut(C::Item)) -> Decoded
where
    C: Decoder<Error = DecodeError>,
    C::Item: Item,
{
    let mut out = Decoded { count: 0, first_connect_v3: None };
    let mut buf = BytesMut::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    if out.count == 0 {
                        out.first_connect_v3 = item.v3_connect();
                    }
                    out.count += 1;
                    handle(item);
                }
                Ok(None) => break,
                Err(e) => {
                    // The server closes the connection here.
                    answer_decode_error(e);
                    return out;
                }
            }
        }
    }
    out
}

/// The DISCONNECT sent for an undecodable packet encodes, and a v5 client
/// reads back the same reason.
fn answer_decode_error(e: DecodeError) {
    let disconnect = reason::protocol_error(&ProtocolError::Decode(e));
    let code = disconnect.reason_code;
    let codec = v5::codec::Codec::new();
    let mut pages = BytePages::default();
    codec
        .encodev(v5::codec::Packet::Disconnect(disconnect).into(), &mut pages)
        .expect("the broker's DISCONNECT encodes");
    let mut wire = BytesMut::from(pages);
    match codec.decode(&mut wire) {
        Ok(Some(v5::codec::Decoded::Packet(v5::codec::Packet::Disconnect(d), _))) => {
            assert_eq!(d.reason_code, code);
        }
        other => panic!("the broker's DISCONNECT does not decode: {other:?}"),
    }
}

/// The raw-bytes check that refuses an empty 3.1.1 client id with a
/// persistent session before ntex-mqtt sees the CONNECT must agree with the
/// codec whenever it says "refuse".
fn check_sniffer(reads: &[&[u8]], (id_empty, clean_session): &(bool, bool)) {
    let all: Vec<u8> = reads.concat();
    if super::v3::empty_persistent_client_id(&all) == Some(true) {
        assert!(*id_empty && !*clean_session, "the sniffer refused a CONNECT the codec accepts");
    }
}

/// The handlers' pure steps, with the broker's limits.
struct Steps<'a> {
    limits: &'a BrokerLimits,
    hook: LocationHook,
    client_id: ClientId,
}

impl<'a> Steps<'a> {
    fn new(limits: &'a BrokerLimits) -> Self {
        let history =
            HistoryTopics::parse(&["devices/+/location".to_owned()], limits.topic_limits())
                .expect("a valid filter");
        Self {
            limits,
            hook: LocationHook::new(history, Arc::new(PositionFeed::default()), Default::default()),
            client_id: ClientId::from("fuzz"),
        }
    }

    fn v3(&self, item: v3::codec::Decoded) {
        use v3::codec::Packet;
        match item {
            v3::codec::Decoded::Packet(Packet::Connect(c), _) => {
                if c.client_id.is_empty() && !c.clean_session {
                    refusal(ConnectRefusal::ClientIdRejected);
                }
                let _ = convert::password(c.password.as_ref());
                if let Some(will) = &c.last_will
                    && let Err(r) =
                        convert::will_v3(will, &self.client_id(&c.client_id), self.limits)
                {
                    refusal(r);
                }
            }
            v3::codec::Decoded::Packet(Packet::Subscribe { topic_filters, .. }, _) => {
                for (filter, qos) in &topic_filters {
                    let options = SubscriptionOptions::qos(convert::qos_in(*qos));
                    self.subscribe(filter, options);
                }
            }
            v3::codec::Decoded::Packet(Packet::Unsubscribe { topic_filters, .. }, _) => {
                self.unsubscribe(&topic_filters);
            }
            v3::codec::Decoded::Publish(p, payload, _) => {
                let qos = convert::qos_in(p.qos);
                if let Err(r) = self.publish(&p.topic, p.payload_size, payload, qos, p.retain) {
                    let _ = r.v3();
                }
            }
            _ => {}
        }
    }

    fn v5(&self, item: v5::codec::Decoded) {
        use v5::codec::Packet;
        match item {
            v5::codec::Decoded::Packet(Packet::Connect(c), _) => {
                if c.auth_method.is_some() {
                    refusal(ConnectRefusal::BadAuthMethod);
                }
                let _ = convert::password(c.password.as_ref());
                if let Some(will) = &c.last_will
                    && let Err(r) =
                        convert::will_v5(will, &self.client_id(&c.client_id), self.limits)
                {
                    refusal(r);
                }
            }
            v5::codec::Decoded::Packet(Packet::Subscribe(s), _) => {
                let id = s.id.map(NonZeroU32::get);
                for (filter, opts) in &s.topic_filters {
                    self.subscribe(filter, convert::subscription_options_v5(opts, id));
                }
            }
            v5::codec::Decoded::Packet(Packet::Unsubscribe(u), _) => {
                self.unsubscribe(&u.topic_filters);
            }
            v5::codec::Decoded::Publish(p, payload, _) => {
                let qos = convert::qos_in(p.qos);
                let limits = self.limits.topic_limits();
                if convert::inbound_props_v5(&p.properties, limits, Instant::now()).is_err() {
                    let _ = PublishRejection::TopicInvalid.v5(qos);
                }
                // An empty topic with an alias is resolved by the dispatcher, not here.
                if p.topic.is_empty() && p.properties.topic_alias.is_some() {
                    return;
                }
                if let Err(r) = self.publish(&p.topic, p.payload_size, payload, qos, p.retain) {
                    let _ = r.v5(qos);
                }
            }
            _ => {}
        }
    }

    fn client_id(&self, raw: &ByteString) -> ClientId {
        if raw.is_empty() { self.client_id.clone() } else { ClientId::new(raw.clone()) }
    }

    /// `check_publish` (without the ACL), then the publish hook once the
    /// whole payload is there.
    fn publish(
        &self,
        topic: &ByteString,
        payload_size: u32,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), PublishRejection> {
        let topic = TopicName::parse(topic.clone(), self.limits.topic_limits())
            .map_err(|e| PublishRejection::from(&e))?;
        if payload_size > self.limits.max_payload_bytes {
            return Err(PublishRejection::PayloadTooLarge);
        }
        if payload.len() < payload_size as usize {
            return Ok(());
        }
        let msg = Message::new(topic, payload, qos, retain);
        match self.hook.inspect(&msg) {
            Ok(_) => Ok(()),
            Err(e) => Err(PublishRejection::from(&e)),
        }
    }

    fn subscribe(&self, filter: &ByteString, options: SubscriptionOptions) {
        match convert::subscribe_request(filter, options, self.limits.topic_limits()) {
            Ok(req) => {
                assert_eq!(req.filter.to_wire(), filter.as_ref() as &str);
            }
            Err(Some(r)) => {
                assert_eq!(r, SubscribeRefusal::FilterInvalid);
                let _ = r.v5();
            }
            Err(None) => {
                let _ = reason::NO_LOCAL_ON_SHARED.disconnect();
            }
        }
    }

    fn unsubscribe(&self, filters: &[ByteString]) {
        for f in filters {
            let _ = SharedFilter::parse(f.clone(), self.limits.topic_limits());
        }
    }
}

/// Every refusal has a v5 code and a reason text.
fn refusal(r: ConnectRefusal) {
    let _ = (r.v5(), r.v3());
    assert!(!r.as_str().is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_header_longer_than_its_packet_is_cut_before_the_codec() {
        // CONNECT, then a QoS 0 PUBLISH of remaining length 2 whose topic claims 16 bytes.
        let connect = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a";
        let bad = b"\x30\x02\x00\x10AAAAAAAAAAAAAAAAAAAA";
        let stream = [&connect[..], &bad[..]].concat();
        let v3 = Framing { level: Level::V3, max: 0 };
        assert_eq!(v3.underflow_at(&stream), Some(connect.len()));
        assert_eq!(v3.underflow_at(connect), None);
        let limits = BrokerLimits::default();
        assert_eq!(inbound(Level::V3, &[&stream[..]], &limits), 1);
        assert_eq!(inbound(Level::V5, &[&bad[..], &bad[..]], &limits), 0);
    }
}
