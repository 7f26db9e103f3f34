//! A bare MQTT connection: the test writes exact packets and reads exact
//! frames. For failure paths (invalid topics, bad protocol levels, oversized
//! packets) and for flows a client library will not produce (a QoS 2 exchange
//! cut in half, acknowledgements withheld).
//!
//! Packets are encoded with rumqttc's codecs where they exist, by hand where a
//! test needs bytes no codec would write; frames are decoded lazily so a reason
//! code rumqttc does not know is still readable.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::RECV;

/// A 3.1.1 QoS 0 PUBLISH of `payload` to `topic`, as bytes (for floods
/// written in one go).
pub fn qos0_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    use mapcast_bench::wire::{QoS, Version, encode_publish};
    let mut out = Vec::new();
    encode_publish(&mut out, Version::V311, QoS::AtMostOnce, topic.as_bytes(), 0, payload);
    out
}

/// MQTT control packet types (the high nibble of the first byte).
pub mod packet_type {
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBACK: u8 = 9;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}
use packet_type::*;

/// One frame as received.
#[derive(Debug, Clone)]
pub struct Frame {
    pub byte1: u8,
    /// Variable header and payload.
    pub body: Bytes,
}

impl Frame {
    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }

    pub fn flags(&self) -> u8 {
        self.byte1 & 0x0f
    }

    fn encoded(&self) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u8(self.byte1);
        put_varint(&mut out, self.body.len());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decoded as an MQTT 5 packet.
    pub fn v5(&self) -> v5::Packet {
        v5::Packet::read(&mut self.encoded(), None)
            .unwrap_or_else(|e| panic!("undecodable v5 frame {self:?}: {e:?}"))
    }

    /// The payload of a PUBLISH; `v5` says whether a properties block
    /// precedes it.
    pub fn payload(&self, v5: bool) -> Vec<u8> {
        assert_eq!(self.packet_type(), PUBLISH);
        let mut b = self.body.clone();
        let len = b.get_u16() as usize;
        b.advance(len);
        if self.qos() > 0 {
            b.advance(2);
        }
        if v5 {
            let mut props_len = 0usize;
            let mut shift = 0;
            loop {
                let byte = b.get_u8();
                props_len |= ((byte & 0x7f) as usize) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            b.advance(props_len);
        }
        b.to_vec()
    }

    /// The reason (v5) or return (v3) code: CONNACK's second byte; for
    /// PUBACK/PUBREC/PUBREL/PUBCOMP the byte after the packet id (0 when
    /// omitted); for DISCONNECT the first byte (0 when omitted).
    pub fn reason(&self) -> u8 {
        match self.packet_type() {
            CONNACK => self.body.get(1).copied().unwrap_or(0),
            PUBACK | PUBREC | PUBREL | PUBCOMP => self.body.get(2).copied().unwrap_or(0),
            DISCONNECT => self.body.first().copied().unwrap_or(0),
            t => panic!("packet type {t} has no single reason code"),
        }
    }

    /// CONNACK's session-present flag.
    pub fn session_present(&self) -> bool {
        assert_eq!(self.packet_type(), CONNACK);
        self.body[0] & 1 == 1
    }

    /// The packet identifier of an ack, or of a QoS≥1 PUBLISH.
    pub fn pkid(&self) -> u16 {
        match self.packet_type() {
            PUBLISH => {
                let mut b = self.body.clone();
                let len = b.get_u16() as usize;
                b.advance(len);
                b.get_u16()
            }
            _ => u16::from_be_bytes([self.body[0], self.body[1]]),
        }
    }

    /// PUBLISH fixed-header flags.
    pub fn dup(&self) -> bool {
        self.flags() & 0b1000 != 0
    }

    pub fn qos(&self) -> u8 {
        (self.flags() >> 1) & 0b11
    }
}

/// Why a read ended without a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEnd {
    Closed,
    Timeout,
}

pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    pending: VecDeque<Frame>,
    closed: bool,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream =
            TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("TCP connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        Self { stream, buf: BytesMut::with_capacity(4096), pending: VecDeque::new(), closed: false }
    }

    /// TCP connect, send an MQTT 5 CONNECT, return the connection and its CONNACK frame.
    pub async fn connect_v5(
        addr: SocketAddr,
        client_id: &str,
        clean_start: bool,
        session_expiry: Option<u32>,
    ) -> (Self, Frame) {
        let mut conn = Self::connect(addr).await;
        let mut props = v5::ConnectProperties::new();
        props.session_expiry_interval = session_expiry;
        conn.send_v5(v5::Packet::Connect(
            v5::Connect {
                keep_alive: 30,
                client_id: client_id.into(),
                clean_start,
                properties: Some(props),
            },
            None,
            None,
        ))
        .await;
        let connack = conn.recv_type(CONNACK).await;
        (conn, connack)
    }

    /// TCP connect, send an MQTT 3.1.1 CONNECT, return the connection and its CONNACK frame.
    pub async fn connect_v3(
        addr: SocketAddr,
        client_id: &str,
        clean_session: bool,
    ) -> (Self, Frame) {
        let mut conn = Self::connect(addr).await;
        conn.send_v4(v4::Packet::Connect(v4::Connect {
            protocol: rumqttc::mqttbytes::Protocol::V4,
            keep_alive: 30,
            client_id: client_id.into(),
            clean_session,
            last_will: None,
            login: None,
        }))
        .await;
        let connack = conn.recv_type(CONNACK).await;
        (conn, connack)
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed; a failed write shows up on the next read.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    pub async fn send_v5(&mut self, packet: v5::Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode v5 packet");
        self.send_bytes(&out).await;
    }

    pub async fn send_v4(&mut self, packet: v4::Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).expect("encode v3 packet");
        self.send_bytes(&out).await;
    }

    /// A v5 PUBLISH with an explicit packet id and DUP flag.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish_v5(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        dup: bool,
        retain: bool,
        payload: &[u8],
        props: Option<v5::PublishProperties>,
    ) {
        let mut p = v5::Publish::new(topic, qos, payload.to_vec(), props);
        p.pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
        p.dup = dup;
        p.retain = retain;
        self.send_v5(v5::Packet::Publish(p)).await;
    }

    /// A v3 PUBLISH; the topic is written as given, even when invalid.
    pub async fn publish_v3(&mut self, topic: &str, qos: u8, pkid: u16, payload: &[u8]) {
        let mut body = BytesMut::new();
        body.put_u16(topic.len() as u16);
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.put_u16(pkid);
        }
        body.extend_from_slice(payload);
        self.send_frame(0x30 | (qos << 1), &body).await;
    }

    pub async fn subscribe_v5(&mut self, pkid: u16, filter: &str, qos: QoS) -> Frame {
        let mut sub = v5::Subscribe::new(v5::Filter::new(filter, qos), None);
        sub.pkid = pkid;
        self.send_v5(v5::Packet::Subscribe(sub)).await;
        self.recv_type(SUBACK).await
    }

    /// PUBACK / PUBREC / PUBREL / PUBCOMP with success (valid in v3 and v5).
    pub async fn puback(&mut self, pkid: u16) {
        self.send_frame(0x40, &pkid.to_be_bytes()).await;
    }
    pub async fn pubrec(&mut self, pkid: u16) {
        self.send_frame(0x50, &pkid.to_be_bytes()).await;
    }
    pub async fn pubrel(&mut self, pkid: u16) {
        self.send_frame(0x62, &pkid.to_be_bytes()).await;
    }
    pub async fn pubcomp(&mut self, pkid: u16) {
        self.send_frame(0x70, &pkid.to_be_bytes()).await;
    }

    /// v5 DISCONNECT with a reason code (0x00 normal, 0x04 with will).
    pub async fn disconnect_v5(&mut self, reason: u8) {
        self.send_frame(0xE0, &[reason, 0]).await;
    }

    pub async fn send_frame(&mut self, byte1: u8, body: &[u8]) {
        let mut out = BytesMut::new();
        out.put_u8(byte1);
        put_varint(&mut out, body.len());
        out.extend_from_slice(body);
        self.send_bytes(&out).await;
    }

    /// The next frame (buffered first), or why there is none.
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<Frame, RawEnd> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        self.read_frame(timeout).await
    }

    async fn read_frame(&mut self, timeout: Duration) -> Result<Frame, RawEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = parse_frame(&mut self.buf) {
                if frame.packet_type() == PINGRESP {
                    continue;
                }
                return Ok(frame);
            }
            if self.closed {
                return Err(RawEnd::Closed);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(RawEnd::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame; panics on timeout or close.
    pub async fn recv(&mut self) -> Frame {
        match self.try_recv(RECV).await {
            Ok(f) => f,
            Err(e) => panic!("expected a frame, connection {e:?}"),
        }
    }

    /// The next frame of type `pt`; frames of other types stay buffered, in order.
    pub async fn recv_type(&mut self, pt: u8) -> Frame {
        match self.try_recv_type(pt, RECV).await {
            Ok(f) => f,
            Err(e) => {
                panic!("expected packet type {pt}, connection {e:?}; buffered: {:?}", self.pending)
            }
        }
    }

    pub async fn try_recv_type(&mut self, pt: u8, timeout: Duration) -> Result<Frame, RawEnd> {
        if let Some(i) = self.pending.iter().position(|f| f.packet_type() == pt) {
            return Ok(self.pending.remove(i).unwrap());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            if f.packet_type() == pt {
                return Ok(f);
            }
            self.pending.push_back(f);
        }
    }

    /// Read until the broker closes the connection; returns the frames it sent
    /// first (e.g. a DISCONNECT). Panics if it is still open after `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let mut frames: Vec<Frame> = self.pending.drain(..).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(f) => frames.push(f),
                Err(RawEnd::Closed) => return frames,
                Err(RawEnd::Timeout) => {
                    panic!("broker kept the connection open for {timeout:?}; it sent {frames:?}")
                }
            }
        }
    }

    /// True when the broker has closed the connection within `timeout`
    /// (frames received meanwhile are kept).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(f) => self.pending.push_back(f),
                Err(RawEnd::Closed) => return true,
                Err(RawEnd::Timeout) => return false,
            }
        }
    }
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

/// Split one complete frame off the front of `buf`, if there is one.
fn parse_frame(buf: &mut BytesMut) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len += (b & 0x7f) as usize * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            panic!("malformed remaining length from broker: {:?}", &buf[..]);
        }
    }
    if buf.len() < i + len {
        return None;
    }
    let byte1 = buf[0];
    buf.advance(i);
    let body = buf.split_to(len).freeze();
    Some(Frame { byte1, body })
}
