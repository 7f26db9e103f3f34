//! The inbound packet path without a socket, for the fuzz targets in `fuzz/`.
//!
//! Bytes go read by read, as a socket would deliver them, through the
//! server's framing layer, its checks on the raw CONNECT, and ntex-mqtt's
//! codec set up as the server sets it up (size limit, whole payloads); each
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

use super::framing::{self, WholePackets};
use super::reason::{self, ConnectRefusal, PublishRejection, SubscribeRefusal};
use super::{connect_check, convert};
use crate::broker::{BrokerLimits, PublishHook};
use crate::domain::{ClientId, SharedFilter, TopicName};
use crate::domain::{Message, QoS, SubscriptionOptions};
use crate::locations::{HistoryTopics, LocationHook, PositionFeed};

/// The protocol level a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    V3,
    V5,
}

/// Decode `reads` (successive socket reads) at `level` under `limits` and
/// handle every packet; returns how many packets decoded.
///
/// The bytes take the server's path: the checks on the raw CONNECT, then
/// ntex-mqtt's codec behind whole-packet framing (at 5.0 the framing layer,
/// which replaces a malformed PUBLISH header by bytes the codec refuses; at
/// 3.1.1 the connection loop's decoder, which refuses it).
pub fn inbound(level: Level, reads: &[&[u8]], limits: &BrokerLimits) -> usize {
    let steps = Steps::new(limits);
    let max = limits.max_packet_bytes;
    match level {
        // The connection loop reads without the framing layer: its decoder
        // makes the same checks, packet by packet.
        Level::V3 => {
            let codec = v3::codec::Codec::new();
            codec.set_max_size(max);
            codec.set_min_chunk_size(max);
            let codec = framing::Whole::new(codec, max, framing::Level::V3);
            decode_all(&codec, None, max, reads, |d| steps.v3(d))
        }
        Level::V5 => {
            let framing = WholePackets::at_level(max, framing::Level::V5);
            let codec = v5::codec::Codec::new();
            codec.set_max_inbound_size(max);
            codec.set_min_chunk_size(max);
            decode_all(&codec, Some(&framing), max, reads, |d| steps.v5(d))
        }
    }
}

/// A decoded packet that may be the CONNECT the raw checks let through.
trait Item {
    /// For a CONNECT: whether its client id and user name could have passed
    /// `connect_check` (no U+0000; at 3.1.1 no empty id with a persistent
    /// session).
    fn connect_acceptable(&self) -> Option<bool>;
}

impl Item for v3::codec::Decoded {
    fn connect_acceptable(&self) -> Option<bool> {
        match self {
            v3::codec::Decoded::Packet(v3::codec::Packet::Connect(c), _) => Some(
                !c.client_id.contains('\0')
                    && !c.username.as_ref().is_some_and(|u| u.contains('\0'))
                    && (c.clean_session || !c.client_id.is_empty()),
            ),
            _ => None,
        }
    }
}

impl Item for v5::codec::Decoded {
    fn connect_acceptable(&self) -> Option<bool> {
        match self {
            v5::codec::Decoded::Packet(v5::codec::Packet::Connect(c), _) => Some(
                !c.client_id.contains('\0')
                    && !c.username.as_ref().is_some_and(|u| u.contains('\0')),
            ),
            _ => None,
        }
    }
}

fn decode_all<C>(
    codec: &C,
    framing: Option<&WholePackets>,
    max_packet: u32,
    reads: &[&[u8]],
    mut handle: impl FnMut(C::Item),
) -> usize
where
    C: Decoder<Error = DecodeError>,
    C::Item: Item,
{
    let mut count = 0;
    let mut checked = false;
    let mut read_buf = BytesMut::new();
    let mut buf = BytesMut::new();
    for read in reads {
        match framing {
            Some(framing) => {
                read_buf.extend_from_slice(read);
                framing.release(&mut read_buf, &mut buf);
            }
            None => buf.extend_from_slice(read),
        }
        if !checked {
            match connect_check::verdict(&buf, max_packet) {
                None => continue,
                Some(Some(refusal)) => {
                    // The server answers and closes here.
                    assert!(!refusal.why.is_empty());
                    let _ = refusal.connack();
                    return count;
                }
                Some(None) => checked = true,
            }
        }
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    if count == 0
                        && let Some(acceptable) = item.connect_acceptable()
                    {
                        assert!(
                            acceptable,
                            "the raw CONNECT checks let a refusable CONNECT through"
                        );
                    }
                    count += 1;
                    handle(item);
                }
                Ok(None) => break,
                Err(e) => {
                    // The server closes the connection here.
                    answer_decode_error(e);
                    return count;
                }
            }
        }
    }
    count
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
    fn a_publish_header_longer_than_its_packet_reaches_the_codec_as_an_error() {
        // CONNECT, then a QoS 0 PUBLISH of remaining length 2 whose topic
        // claims 16 bytes, then a PINGREQ that must not be decoded.
        let connect = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a";
        let bad = b"\x30\x02\x00\x10";
        let stream = [&connect[..], &bad[..], b"\xc0\x00"].concat();
        let limits = BrokerLimits::default();
        assert_eq!(inbound(Level::V3, &[&stream[..]], &limits), 1);
        // Byte by byte, as slow sockets deliver it.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(inbound(Level::V3, &bytes, &limits), 1);
        // Without a CONNECT the checks pass it on: the codec refuses it.
        assert_eq!(inbound(Level::V5, &[&bad[..], &bad[..]], &limits), 0);
    }

    #[test]
    fn a_refused_connect_ends_the_stream_before_the_codec() {
        // A 3.1.1 CONNECT with Will QoS 1 but no will.
        let connect = b"\x10\x0d\x00\x04MQTT\x04\x0a\x00\x3c\x00\x01a";
        let limits = BrokerLimits::default();
        assert_eq!(inbound(Level::V3, &[&connect[..]], &limits), 0);
        let fine = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a";
        assert_eq!(inbound(Level::V3, &[&fine[..], b"\xc0\x00"], &limits), 2);
    }
}
