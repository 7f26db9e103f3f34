//! The few MQTT 3.1.1 / 5.0 packets a load generator needs, encoded straight
//! into a caller's buffer and decoded in place from a read buffer.
//!
//! Encoding appends to a `Vec<u8>` that the caller reuses, so a batch of
//! PUBLISH packets costs one write and no allocation. Decoding borrows from
//! the read buffer: a [`Packet::Publish`] is a view of its topic and payload.

use thiserror::Error;

/// The protocol level a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    #[value(name = "3.1.1", alias = "3", alias = "4")]
    V311,
    /// MQTT 5.0 (protocol level 5).
    #[value(name = "5", alias = "5.0")]
    V5,
}

impl Version {
    fn is_v5(self) -> bool {
        self == Version::V5
    }
}

/// Quality of service levels, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// What the decoder understood of one packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        /// v3 return code or v5 reason code; 0 is success in both.
        code: u8,
        /// v5 Receive Maximum: how many QoS>0 PUBLISHes may be unacknowledged.
        receive_maximum: Option<u16>,
    },
    Publish {
        qos: QoS,
        dup: bool,
        retain: bool,
        topic: &'a [u8],
        packet_id: u16,
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
        code: u8,
    },
    PubRec {
        packet_id: u16,
        code: u8,
    },
    PubRel {
        packet_id: u16,
    },
    PubComp {
        packet_id: u16,
    },
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    PingResp,
    Disconnect {
        code: u8,
    },
    /// A packet a client never expects (CONNECT, SUBSCRIBE, AUTH, ...).
    Unexpected {
        packet_type: u8,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed remaining length")]
    RemainingLength,
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("malformed v5 properties")]
    Properties,
}

const CONNECT: u8 = 0x10;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const PUBREC: u8 = 0x50;
const PUBREL: u8 = 0x62;
const PUBCOMP: u8 = 0x70;
const SUBSCRIBE: u8 = 0x82;
const PINGREQ: u8 = 0xC0;
const DISCONNECT: u8 = 0xE0;

/// Append `len` as an MQTT variable byte integer (a remaining length).
pub fn put_varint(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// The options of a CONNECT packet the generator sends.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    pub version: Version,
    pub client_id: &'a str,
    pub keep_alive_secs: u16,
    /// v3 clean session / v5 clean start (with session expiry 0).
    pub clean: bool,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

pub fn encode_connect(out: &mut Vec<u8>, c: &Connect<'_>) {
    let mut flags = 0u8;
    if c.clean {
        flags |= 0x02;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    let props_len = usize::from(c.version.is_v5()); // one byte: an empty property list
    let mut len = 2 + 4 + 1 + 1 + 2 + props_len + 2 + c.client_id.len();
    len += c.username.map_or(0, |u| 2 + u.len());
    len += c.password.map_or(0, |p| 2 + p.len());
    out.push(CONNECT);
    put_varint(out, len);
    put_str(out, b"MQTT");
    out.push(if c.version.is_v5() { 5 } else { 4 });
    out.push(flags);
    out.extend_from_slice(&c.keep_alive_secs.to_be_bytes());
    if c.version.is_v5() {
        out.push(0);
    }
    put_str(out, c.client_id.as_bytes());
    if let Some(u) = c.username {
        put_str(out, u.as_bytes());
    }
    if let Some(p) = c.password {
        put_str(out, p.as_bytes());
    }
}

/// Append a PUBLISH whose payload `fill` writes: exactly `payload_len` bytes,
/// straight into `out`, so the payload is never built separately.
pub fn encode_publish_with(
    out: &mut Vec<u8>,
    version: Version,
    qos: QoS,
    topic: &[u8],
    packet_id: u16,
    payload_len: usize,
    fill: impl FnOnce(&mut Vec<u8>),
) {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let props_len = usize::from(version.is_v5());
    let len = 2 + topic.len() + id_len + props_len + payload_len;
    out.push(PUBLISH | ((qos as u8) << 1));
    put_varint(out, len);
    put_str(out, topic);
    if qos != QoS::AtMostOnce {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    if version.is_v5() {
        out.push(0);
    }
    let start = out.len();
    fill(out);
    debug_assert_eq!(out.len() - start, payload_len, "payload filler wrote the wrong length");
}

pub fn encode_publish(
    out: &mut Vec<u8>,
    version: Version,
    qos: QoS,
    topic: &[u8],
    packet_id: u16,
    payload: &[u8],
) {
    encode_publish_with(out, version, qos, topic, packet_id, payload.len(), |out| {
        out.extend_from_slice(payload)
    });
}

fn encode_ack(out: &mut Vec<u8>, header: u8, packet_id: u16) {
    // A two-byte ack means "success" in v5 as in v3.
    out.push(header);
    out.push(2);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub fn encode_puback(out: &mut Vec<u8>, packet_id: u16) {
    encode_ack(out, PUBACK, packet_id);
}

pub fn encode_pubrec(out: &mut Vec<u8>, packet_id: u16) {
    encode_ack(out, PUBREC, packet_id);
}

pub fn encode_pubrel(out: &mut Vec<u8>, packet_id: u16) {
    encode_ack(out, PUBREL, packet_id);
}

pub fn encode_pubcomp(out: &mut Vec<u8>, packet_id: u16) {
    encode_ack(out, PUBCOMP, packet_id);
}

/// One SUBSCRIBE with one filter at `qos`.
pub fn encode_subscribe(
    out: &mut Vec<u8>,
    version: Version,
    packet_id: u16,
    filter: &str,
    qos: QoS,
) {
    let props_len = usize::from(version.is_v5());
    let len = 2 + props_len + 2 + filter.len() + 1;
    out.push(SUBSCRIBE);
    put_varint(out, len);
    out.extend_from_slice(&packet_id.to_be_bytes());
    if version.is_v5() {
        out.push(0);
    }
    put_str(out, filter.as_bytes());
    out.push(qos as u8);
}

pub fn encode_pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[PINGREQ, 0]);
}

pub fn encode_disconnect(out: &mut Vec<u8>) {
    // Remaining length 0: v3 DISCONNECT, and v5 "normal disconnection".
    out.extend_from_slice(&[DISCONNECT, 0]);
}

/// Decode the packet at the start of `buf`: `Ok(None)` when it is not
/// complete yet, else the packet and how many bytes it took.
pub fn decode(buf: &[u8], version: Version) -> Result<Option<(Packet<'_>, usize)>, WireError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else { return Ok(None) };
        len |= usize::from(byte & 0x7F) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len > 4 {
            return Err(WireError::RemainingLength);
        }
    }
    let total = header_len + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[header_len..total];
    let packet = decode_body(first, body, version)?;
    Ok(Some((packet, total)))
}

fn u16_at(body: &[u8], at: usize, what: &'static str) -> Result<u16, WireError> {
    body.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(WireError::Malformed(what))
}

fn decode_body(first: u8, body: &[u8], version: Version) -> Result<Packet<'_>, WireError> {
    let v5 = version.is_v5();
    // v5 acks may carry a reason code after the packet id; absent means success.
    let ack = |what| -> Result<(u16, u8), WireError> {
        Ok((u16_at(body, 0, what)?, body.get(2).copied().unwrap_or(0)))
    };
    match first >> 4 {
        2 => {
            let flags = *body.first().ok_or(WireError::Malformed("CONNACK"))?;
            let code = *body.get(1).ok_or(WireError::Malformed("CONNACK"))?;
            let receive_maximum = if v5 && body.len() > 2 {
                let (props, _) = properties(&body[2..])?;
                receive_maximum(props)?
            } else {
                None
            };
            Ok(Packet::ConnAck { session_present: flags & 1 == 1, code, receive_maximum })
        }
        3 => {
            let qos = QoS::from_u8((first >> 1) & 3).ok_or(WireError::Malformed("PUBLISH"))?;
            let topic_len = usize::from(u16_at(body, 0, "PUBLISH")?);
            let topic = body.get(2..2 + topic_len).ok_or(WireError::Malformed("PUBLISH"))?;
            let mut at = 2 + topic_len;
            let mut packet_id = 0;
            if qos != QoS::AtMostOnce {
                packet_id = u16_at(body, at, "PUBLISH")?;
                at += 2;
            }
            if v5 {
                let (_, used) = properties(body.get(at..).ok_or(WireError::Malformed("PUBLISH"))?)?;
                at += used;
            }
            let payload = body.get(at..).ok_or(WireError::Malformed("PUBLISH"))?;
            Ok(Packet::Publish {
                qos,
                dup: first & 0x08 != 0,
                retain: first & 0x01 != 0,
                topic,
                packet_id,
                payload,
            })
        }
        4 => ack("PUBACK").map(|(packet_id, code)| Packet::PubAck { packet_id, code }),
        5 => ack("PUBREC").map(|(packet_id, code)| Packet::PubRec { packet_id, code }),
        6 => u16_at(body, 0, "PUBREL").map(|packet_id| Packet::PubRel { packet_id }),
        7 => u16_at(body, 0, "PUBCOMP").map(|packet_id| Packet::PubComp { packet_id }),
        9 => {
            let packet_id = u16_at(body, 0, "SUBACK")?;
            let mut at = 2;
            if v5 {
                let (_, used) = properties(body.get(2..).ok_or(WireError::Malformed("SUBACK"))?)?;
                at += used;
            }
            Ok(Packet::SubAck { packet_id, codes: &body[at.min(body.len())..] })
        }
        13 => Ok(Packet::PingResp),
        14 => Ok(Packet::Disconnect { code: body.first().copied().unwrap_or(0) }),
        packet_type => Ok(Packet::Unexpected { packet_type }),
    }
}

/// Read a v5 property list: its content and the bytes it took with its length.
fn properties(buf: &[u8]) -> Result<(&[u8], usize), WireError> {
    let mut len = 0usize;
    let mut at = 0;
    loop {
        let byte = *buf.get(at).ok_or(WireError::Properties)?;
        len |= usize::from(byte & 0x7F) << (7 * at);
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at >= 4 {
            return Err(WireError::Properties);
        }
    }
    let props = buf.get(at..at + len).ok_or(WireError::Properties)?;
    Ok((props, at + len))
}

/// Find Receive Maximum (0x21) in a CONNACK property list, skipping the rest.
fn receive_maximum(mut props: &[u8]) -> Result<Option<u16>, WireError> {
    let mut found = None;
    while let Some((&id, rest)) = props.split_first() {
        let two = |rest: &[u8]| rest.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let size = match id {
            // Byte.
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            // Two-byte integer.
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            // Four-byte integer.
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            // Variable byte integer.
            0x0B => rest.iter().position(|b| b & 0x80 == 0).ok_or(WireError::Properties)? + 1,
            // UTF-8 string or binary data.
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                2 + usize::from(two(rest).ok_or(WireError::Properties)?)
            }
            // String pair.
            0x26 => {
                let k = 2 + usize::from(two(rest).ok_or(WireError::Properties)?);
                let v = rest.get(k..).and_then(two).ok_or(WireError::Properties)?;
                k + 2 + usize::from(v)
            }
            _ => return Err(WireError::Properties),
        };
        if rest.len() < size {
            return Err(WireError::Properties);
        }
        if id == 0x21 {
            found = two(rest);
        }
        props = &rest[size..];
    }
    Ok(found)
}

/// Whether a topic filter matches a topic name, by the MQTT rules: `+` one
/// level, `#` the rest, and no first-level wildcard matching a `$` topic
/// [MQTT-4.7.2-1]. Only used to count the deliveries a run should see.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes a remaining-length varint takes for `len`.
    fn varint_len(len: usize) -> usize {
        match len {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            _ => 4,
        }
    }

    fn publish_bytes(version: Version, qos: QoS, topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_publish(&mut out, version, qos, topic.as_bytes(), id, payload);
        out
    }

    #[test]
    fn a_v3_connect_matches_the_spec_example_layout() {
        let mut out = Vec::new();
        let connect = Connect {
            version: Version::V311,
            client_id: "c",
            keep_alive_secs: 60,
            clean: true,
            username: None,
            password: None,
        };
        encode_connect(&mut out, &connect);
        assert_eq!(out, [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c']);
    }

    #[test]
    fn a_v5_connect_carries_an_empty_property_list_and_credentials() {
        let mut out = Vec::new();
        let connect = Connect {
            version: Version::V5,
            client_id: "c",
            keep_alive_secs: 0,
            clean: true,
            username: Some("u"),
            password: Some("p"),
        };
        encode_connect(&mut out, &connect);
        assert_eq!(
            out,
            [
                0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 0, 0, 0, 1, b'c', 0, 1, b'u',
                0, 1, b'p'
            ]
        );
    }

    #[test]
    fn publishes_round_trip_at_every_qos_and_version() {
        for version in [Version::V311, Version::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let bytes = publish_bytes(version, qos, "cars/7/location", 513, b"{\"a\":1}");
                let (packet, used) = decode(&bytes, version).unwrap().unwrap();
                assert_eq!(used, bytes.len());
                let expected_id = if qos == QoS::AtMostOnce { 0 } else { 513 };
                assert_eq!(
                    packet,
                    Packet::Publish {
                        qos,
                        dup: false,
                        retain: false,
                        topic: b"cars/7/location",
                        packet_id: expected_id,
                        payload: b"{\"a\":1}",
                    }
                );
            }
        }
    }

    #[test]
    fn remaining_lengths_round_trip_across_every_varint_width() {
        for size in [0, 1, 100, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let payload = vec![7u8; size];
            let bytes = publish_bytes(Version::V311, QoS::AtMostOnce, "t", 0, &payload);
            let body = 2 + 1 + size;
            assert_eq!(bytes.len(), 1 + varint_len(body) + body, "size {size}");
            let (packet, used) = decode(&bytes, Version::V311).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            let Packet::Publish { payload: got, .. } = packet else { panic!("not a publish") };
            assert_eq!(got.len(), size);
        }
    }

    #[test]
    fn an_incomplete_packet_decodes_to_none_at_every_cut() {
        let bytes = publish_bytes(Version::V5, QoS::AtLeastOnce, "a/b", 9, &[1; 300]);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], Version::V5), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn back_to_back_packets_decode_one_at_a_time() {
        let mut buf = Vec::new();
        encode_puback(&mut buf, 1);
        encode_publish(&mut buf, Version::V311, QoS::AtMostOnce, b"x", 0, b"p");
        encode_pubrel(&mut buf, 2);
        let (first, n1) = decode(&buf, Version::V311).unwrap().unwrap();
        assert_eq!(first, Packet::PubAck { packet_id: 1, code: 0 });
        let (second, n2) = decode(&buf[n1..], Version::V311).unwrap().unwrap();
        assert!(matches!(second, Packet::Publish { payload: b"p", .. }));
        let (third, n3) = decode(&buf[n1 + n2..], Version::V311).unwrap().unwrap();
        assert_eq!(third, Packet::PubRel { packet_id: 2 });
        assert_eq!(n1 + n2 + n3, buf.len());
    }

    #[test]
    fn acks_encode_as_four_bytes_with_the_right_headers() {
        let mut out = Vec::new();
        encode_puback(&mut out, 0x0102);
        encode_pubrec(&mut out, 3);
        encode_pubrel(&mut out, 4);
        encode_pubcomp(&mut out, 5);
        assert_eq!(out, [0x40, 2, 1, 2, 0x50, 2, 0, 3, 0x62, 2, 0, 4, 0x70, 2, 0, 5],);
    }

    #[test]
    fn a_v5_puback_reason_code_is_reported() {
        let bytes = [0x40, 4, 0, 9, 0x99, 0];
        let (packet, _) = decode(&bytes, Version::V5).unwrap().unwrap();
        assert_eq!(packet, Packet::PubAck { packet_id: 9, code: 0x99 });
    }

    #[test]
    fn a_v5_connack_yields_its_receive_maximum_past_other_properties() {
        // Properties: Assigned Client Identifier "ab", Receive Maximum 1000,
        // User Property ("k", "v"), Maximum QoS 1.
        let props =
            [0x12, 0, 2, b'a', b'b', 0x21, 0x03, 0xE8, 0x26, 0, 1, b'k', 0, 1, b'v', 0x24, 1];
        let mut bytes = vec![0x20, (2 + 1 + props.len()) as u8, 0, 0, props.len() as u8];
        bytes.extend_from_slice(&props);
        let (packet, _) = decode(&bytes, Version::V5).unwrap().unwrap();
        assert_eq!(
            packet,
            Packet::ConnAck { session_present: false, code: 0, receive_maximum: Some(1000) }
        );
    }

    #[test]
    fn a_v3_connack_reports_its_return_code() {
        let (packet, _) = decode(&[0x20, 2, 1, 5], Version::V311).unwrap().unwrap();
        assert_eq!(
            packet,
            Packet::ConnAck { session_present: true, code: 5, receive_maximum: None }
        );
    }

    #[test]
    fn subscribe_encodes_and_suback_decodes_in_both_versions() {
        let mut v3 = Vec::new();
        encode_subscribe(&mut v3, Version::V311, 1, "a/+", QoS::AtLeastOnce);
        assert_eq!(v3, [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'+', 1]);
        let mut v5 = Vec::new();
        encode_subscribe(&mut v5, Version::V5, 1, "a/+", QoS::ExactlyOnce);
        assert_eq!(v5, [0x82, 9, 0, 1, 0, 0, 3, b'a', b'/', b'+', 2]);

        let (packet, _) = decode(&[0x90, 3, 0, 1, 1], Version::V311).unwrap().unwrap();
        assert_eq!(packet, Packet::SubAck { packet_id: 1, codes: &[1] });
        let (packet, _) = decode(&[0x90, 4, 0, 1, 0, 0x80], Version::V5).unwrap().unwrap();
        assert_eq!(packet, Packet::SubAck { packet_id: 1, codes: &[0x80] });
    }

    #[test]
    fn a_v5_publish_skips_its_properties() {
        // Message Expiry Interval (4 bytes) and Content Type "j".
        let props = [0x02, 0, 0, 0, 9, 0x03, 0, 1, b'j'];
        let mut bytes = vec![0x32, (2 + 1 + 2 + 1 + props.len() + 2) as u8, 0, 1, b't', 0, 7];
        bytes.push(props.len() as u8);
        bytes.extend_from_slice(&props);
        bytes.extend_from_slice(b"hi");
        let (packet, _) = decode(&bytes, Version::V5).unwrap().unwrap();
        let Packet::Publish { payload, packet_id, .. } = packet else { panic!("not a publish") };
        assert_eq!((payload, packet_id), (&b"hi"[..], 7));
    }

    #[test]
    fn pings_and_disconnects_encode_and_decode() {
        let mut out = Vec::new();
        encode_pingreq(&mut out);
        encode_disconnect(&mut out);
        assert_eq!(out, [0xC0, 0, 0xE0, 0]);
        assert_eq!(decode(&[0xD0, 0], Version::V311), Ok(Some((Packet::PingResp, 2))));
        assert_eq!(
            decode(&[0xE0, 1, 0x8B], Version::V5),
            Ok(Some((Packet::Disconnect { code: 0x8B }, 3)))
        );
    }

    #[test]
    fn a_five_byte_remaining_length_is_malformed() {
        let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(decode(&bytes, Version::V311), Err(WireError::RemainingLength));
    }

    #[test]
    fn a_truncated_publish_body_is_malformed() {
        // Claims a 10-byte topic in a 3-byte body.
        assert!(decode(&[0x30, 3, 0, 10, b'a'], Version::V311).is_err());
    }

    #[test]
    fn filters_match_by_level_with_wildcards() {
        assert!(filter_matches("cars/+/location", "cars/7/location"));
        assert!(filter_matches("cars/#", "cars/7/location"));
        assert!(filter_matches("cars/#", "cars"));
        assert!(filter_matches("#", "cars/7"));
        assert!(!filter_matches("cars/+/location", "cars/7/speed"));
        assert!(!filter_matches("cars/+", "cars/7/location"));
        assert!(!filter_matches("cars/+/location", "cars/location"));
        assert!(!filter_matches("+/status", "$SYS/status"));
        assert!(!filter_matches("#", "$SYS/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/uptime"));
    }
}
