//! Checks on the raw CONNECT, before ntex-mqtt 8.2.1 reads it.
//!
//! Its handshake closes the connection without a CONNACK on every CONNECT it
//! cannot decode, where MQTT asks for an answer, and its decoder accepts what
//! MQTT calls malformed:
//! - a protocol level other than 4 or 5: 3.1.1 requires CONNACK 0x01 then
//!   close [MQTT-3.1.2-2]; v5 allows CONNACK 0x84 then close;
//! - an empty 3.1.1 client id with a persistent session: CONNACK 0x02
//!   [MQTT-3.1.3-8];
//! - a v5 CONNECT that does not decode: CONNACK 0x81 [MQTT-4.13.1];
//! - Will QoS or Will Retain set without the Will Flag [MQTT-3.1.2-11]
//!   [MQTT-3.1.2-13]: the decoder drops those bits, so they are read here;
//! - U+0000 in the client id or user name [MQTT-1.5.4-2] (3.1.1:
//!   [MQTT-1.5.3-2]), which UTF-8 validation lets through.
//!
//! v5 refusals get a CONNACK with the reason code; 3.1.1 ones get the return
//! code when 3.1.1 has one, else the connection just closes. Each refusal is
//! counted as a rejected connection and logged. Any other connection passes
//! through untouched, its bytes left for ntex-mqtt.

use std::sync::atomic::Ordering::Relaxed;

use ntex::codec::Decoder;
use ntex::io::IoBoxed;
use ntex::util::BytesMut;
use ntex_mqtt::error::DecodeError;
use ntex_mqtt::{v3, v5};

use super::server::CONNECT_TIMEOUT;
use crate::broker::Stats;
use crate::telemetry::names::{MQTT_PROTOCOL, MQTT_REASON_CODE};

/// How a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The CONNACK format: MQTT 5 (reason code, properties) or 3.1.1.
    pub v5: bool,
    /// The CONNACK code; `None`: close without a CONNACK.
    pub code: Option<u8>,
    pub why: &'static str,
}

impl Refusal {
    const fn v3(code: Option<u8>, why: &'static str) -> Self {
        Self { v5: false, code, why }
    }

    const fn v5(code: u8, why: &'static str) -> Self {
        Self { v5: true, code: Some(code), why }
    }

    /// The CONNACK bytes, if any: session present 0, the code, and for v5 an
    /// empty property block.
    pub(super) fn connack(&self) -> Option<Vec<u8>> {
        let code = self.code?;
        Some(if self.v5 {
            vec![0x20, 0x03, 0x00, code, 0x00]
        } else {
            vec![0x20, 0x02, 0x00, code]
        })
    }
}

const UNACCEPTABLE_PROTOCOL_LEVEL: u8 = 0x01;
const IDENTIFIER_REJECTED: u8 = 0x02;
const MALFORMED_PACKET: u8 = 0x81;
const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;

/// CONNECT flag bits [MQTT-3.1.2.3].
const WILL: u8 = 0x04;
const WILL_QOS: u8 = 0x18;
const WILL_RETAIN: u8 = 0x20;

/// Refuse the connection when its first packet is a CONNECT MQTT says to
/// refuse; otherwise hand the connection on.
pub(super) async fn check(io: IoBoxed, stats: &Stats, max_packet: u32) -> Result<IoBoxed, ()> {
    loop {
        match io.with_read_buf(|buf| verdict(buf, max_packet)) {
            Some(None) => return Ok(io),
            Some(Some(refusal)) => {
                stats.rejected_connects.fetch_add(1, Relaxed);
                tracing::warn!(
                    { MQTT_PROTOCOL } = if refusal.v5 { "5" } else { "3.1.1" },
                    { MQTT_REASON_CODE } = refusal.code,
                    "connection refused: {}",
                    refusal.why
                );
                if let Some(connack) = refusal.connack() {
                    let _ = io.encode_slice(&connack);
                }
                let _ = io.shutdown().await;
                return Err(());
            }
            // ntex-mqtt applies its own timeouts and reports errors.
            None => match ntex::time::timeout(CONNECT_TIMEOUT, io.read_ready()).await {
                Ok(Ok(Some(()))) => {}
                _ => return Ok(io),
            },
        }
    }
}

/// The verdict on the first packet in `buf`: `None` when it is not complete
/// yet (a CONNECT over `max_packet` bytes is not waited for), `Some(None)`
/// to let it through, `Some(Some(_))` to refuse it.
pub(super) fn verdict(buf: &[u8], max_packet: u32) -> Option<Option<Refusal>> {
    let (&first, rest) = buf.split_first()?;
    if first != 0x10 {
        // Not a CONNECT: ntex-mqtt closes the connection.
        return Some(None);
    }
    let mut remaining = 0usize;
    let mut len_bytes = 0;
    loop {
        let b = *rest.get(len_bytes)?;
        remaining |= usize::from(b & 0x7f) << (7 * len_bytes);
        len_bytes += 1;
        if b & 0x80 == 0 {
            break;
        }
        if len_bytes == 4 {
            return Some(None);
        }
    }
    if 1 + len_bytes + remaining > max_packet as usize {
        // Passed on at once by the framing layer, for the codec to refuse.
        return Some(None);
    }
    let body = rest.get(len_bytes..len_bytes + remaining)?;
    Some(judge(&buf[..1 + len_bytes + remaining], body))
}

/// `packet` is the whole CONNECT, `body` its variable header and payload.
fn judge(packet: &[u8], body: &[u8]) -> Option<Refusal> {
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let name = body.get(2..2 + name_len)?;
    let level = *body.get(2 + name_len)?;
    let v5 = match (name, level) {
        (b"MQTT", 4) => false,
        (b"MQTT", 5) => true,
        // MQTT 3.1 ("MQIsdp", level 3) and other 3.x levels understand a 3.1.1 CONNACK.
        (b"MQTT" | b"MQIsdp", ..5) => {
            return Some(Refusal::v3(
                Some(UNACCEPTABLE_PROTOCOL_LEVEL),
                "unsupported protocol level",
            ));
        }
        (b"MQTT", _) => {
            return Some(Refusal::v5(UNSUPPORTED_PROTOCOL_VERSION, "unsupported protocol version"));
        }
        // Not MQTT at all: ntex-mqtt closes the connection [MQTT-3.1.2-1].
        _ => return None,
    };
    let flags = *body.get(2 + name_len + 1)?;
    if flags & WILL == 0 && flags & (WILL_QOS | WILL_RETAIN) != 0 {
        let why = "will QoS or will retain set without a will";
        return Some(if v5 { Refusal::v5(MALFORMED_PACKET, why) } else { Refusal::v3(None, why) });
    }
    let mut copy = BytesMut::from(packet);
    if v5 {
        match v5::codec::Codec::new().decode(&mut copy) {
            Ok(Some(v5::codec::Decoded::Packet(v5::codec::Packet::Connect(c), _))) => {
                let will = c.last_will.as_ref().map(|w| w.topic.as_str());
                nul_in(&c.client_id, c.username.as_deref(), will)
                    .map(|why| Refusal::v5(MALFORMED_PACKET, why))
            }
            Ok(_) => None,
            Err(_) => Some(Refusal::v5(MALFORMED_PACKET, "malformed CONNECT")),
        }
    } else {
        match v3::codec::Codec::new().decode(&mut copy) {
            Ok(Some(v3::codec::Decoded::Packet(v3::codec::Packet::Connect(c), _))) => {
                let will = c.last_will.as_ref().map(|w| w.topic.as_str());
                match nul_in(&c.client_id, c.username.as_deref(), will) {
                    Some(why @ CLIENT_ID_NUL) => Some(Refusal::v3(Some(IDENTIFIER_REJECTED), why)),
                    Some(why) => Some(Refusal::v3(None, why)),
                    None => None,
                }
            }
            Err(DecodeError::InvalidClientId) => Some(Refusal::v3(
                Some(IDENTIFIER_REJECTED),
                "empty client id requires a clean session",
            )),
            // ntex-mqtt closes on the rest: 3.1.1 has no code for them.
            _ => None,
        }
    }
}

const CLIENT_ID_NUL: &str = "client id contains U+0000";

/// Which string of a CONNECT contains U+0000, if one does.
fn nul_in(
    client_id: &str,
    username: Option<&str>,
    will_topic: Option<&str>,
) -> Option<&'static str> {
    if client_id.contains('\0') {
        Some(CLIENT_ID_NUL)
    } else if username.is_some_and(|u| u.contains('\0')) {
        Some("user name contains U+0000")
    } else if will_topic.is_some_and(|t| t.contains('\0')) {
        Some("will topic contains U+0000")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT: protocol `name`, `level`, `flags`, keep-alive 30, then the
    /// client id and `tail` (fields the flags announce).
    fn connect(name: &[u8], level: u8, flags: u8, client_id: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut body = (name.len() as u16).to_be_bytes().to_vec();
        body.extend(name);
        body.extend([level, flags, 0, 30]);
        if level == 5 {
            body.push(0); // no properties
        }
        body.extend((client_id.len() as u16).to_be_bytes());
        body.extend(client_id);
        body.extend(tail);
        let mut out = vec![0x10];
        mapcast_bench::wire::put_varint(&mut out, body.len());
        out.extend(body);
        out
    }

    fn refused(packet: &[u8]) -> Option<Refusal> {
        verdict(packet, 1 << 20).expect("a whole packet")
    }

    #[test]
    fn valid_connects_pass_and_partial_ones_wait() {
        let v3 = connect(b"MQTT", 4, 0x02, b"car", b"");
        let v5 = connect(b"MQTT", 5, 0x02, b"car", b"");
        assert_eq!(refused(&v3), None);
        assert_eq!(refused(&v5), None);
        assert_eq!(verdict(&v3[..v3.len() - 1], 1 << 20), None);
        assert_eq!(verdict(&[], 1 << 20), None);
        // Larger than the limit: passed on for the codec to refuse.
        assert_eq!(verdict(&v3[..v3.len() - 1], 10), Some(None));
        // Not a CONNECT, or not MQTT: left to ntex-mqtt.
        assert_eq!(refused(&[0xc0, 0x00]), None);
        assert_eq!(refused(&connect(b"HTTP", 4, 0x02, b"car", b"")), None);
        // A will with QoS 1 and retain is fine.
        let will = connect(b"MQTT", 4, 0x2e, b"car", b"\x00\x01t\x00\x01m");
        assert_eq!(refused(&will), None);
    }

    #[test]
    fn unsupported_levels_get_the_code_of_their_generation() {
        let r = refused(&connect(b"MQTT", 3, 0x02, b"c", b"")).unwrap();
        assert_eq!(r.connack(), Some(vec![0x20, 0x02, 0x00, 0x01]));
        let r = refused(&connect(b"MQIsdp", 3, 0x02, b"c", b"")).unwrap();
        assert_eq!(r.connack(), Some(vec![0x20, 0x02, 0x00, 0x01]));
        let r = refused(&connect(b"MQTT", 6, 0x02, b"c", b"")).unwrap();
        assert_eq!(r.connack(), Some(vec![0x20, 0x03, 0x00, 0x84, 0x00]));
    }

    #[test]
    fn will_bits_without_a_will_are_malformed() {
        for flags in [0x02 | 0x08, 0x02 | 0x10, 0x02 | 0x20] {
            let r = refused(&connect(b"MQTT", 5, flags, b"c", b"")).unwrap();
            assert_eq!(r.code, Some(0x81), "{flags:#x}");
            let r = refused(&connect(b"MQTT", 4, flags, b"c", b"")).unwrap();
            assert_eq!(r.connack(), None, "3.1.1 closes: {flags:#x}");
        }
    }

    #[test]
    fn nul_in_the_client_id_or_user_name_is_refused() {
        let r = refused(&connect(b"MQTT", 5, 0x02, b"a\0b", b"")).unwrap();
        assert_eq!((r.v5, r.code), (true, Some(0x81)));
        let r = refused(&connect(b"MQTT", 4, 0x02, b"a\0b", b"")).unwrap();
        assert_eq!(r.connack(), Some(vec![0x20, 0x02, 0x00, 0x02]));
        let r = refused(&connect(b"MQTT", 4, 0x82, b"car", b"\x00\x03u\0v")).unwrap();
        assert_eq!((r.code, r.why), (None, "user name contains U+0000"));
        let r = refused(&connect(b"MQTT", 5, 0x82, b"car", b"\x00\x03u\0v")).unwrap();
        // Will flag, will topic "w\0" and an empty will message (3.1.1).
        let r3 = refused(&connect(b"MQTT", 4, 0x06, b"car", b"\x00\x02w\0\x00\x00")).unwrap();
        assert_eq!((r3.v5, r3.code, r3.why), (false, None, "will topic contains U+0000"));
        assert_eq!(r.code, Some(0x81));
    }

    #[test]
    fn a_v5_connect_that_does_not_decode_gets_0x81() {
        // Reserved flag bit 0 set [MQTT-3.1.2-3].
        let r = refused(&connect(b"MQTT", 5, 0x03, b"c", b"")).unwrap();
        assert_eq!(r.connack(), Some(vec![0x20, 0x03, 0x00, 0x81, 0x00]));
        // A client id length beyond the packet.
        let mut cut = connect(b"MQTT", 5, 0x02, b"car", b"");
        cut[1] -= 1;
        cut.pop();
        assert_eq!(refused(&cut).unwrap().code, Some(0x81));
        // 3.1.1 has no code for it: left to ntex-mqtt, which closes.
        assert_eq!(refused(&connect(b"MQTT", 4, 0x03, b"c", b"")), None);
    }

    #[test]
    fn an_empty_v3_client_id_needs_a_clean_session() {
        let r = refused(&connect(b"MQTT", 4, 0x00, b"", b"")).unwrap();
        assert_eq!(r.connack(), Some(vec![0x20, 0x02, 0x00, 0x02]));
        assert_eq!(refused(&connect(b"MQTT", 4, 0x02, b"", b"")), None);
        assert_eq!(refused(&connect(b"MQTT", 5, 0x00, b"", b"")), None);
    }
}
