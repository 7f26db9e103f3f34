//! Hand the MQTT dispatcher whole packets only, and never a PUBLISH whose
//! header does not fit inside it.
//!
//! ntex-mqtt 8.2.1 decodes a PUBLISH as soon as its header has arrived and
//! streams the rest of the payload to the handler as separate chunks, through
//! one per-connection slot that each PUBLISH claims when its handler first
//! runs. With pipelined PUBLISHes whose handlers wait (QoS 1 waits for the
//! commit), later handlers run on tasks of their own, a PUBLISH can claim the
//! slot before the previous one got its chunk, and that payload goes to the
//! wrong message or never completes (the connection then hangs with its
//! publishes unacknowledged). This I/O layer sits between the transport
//! (TCP, TLS, WebSocket) and the dispatcher and releases bytes only up to the
//! end of the last complete packet, so payloads are never streamed.
//!
//! The same codec computes a PUBLISH's payload length as its remaining length
//! minus its variable header (topic, packet id, v5 properties) without a
//! check: a header longer than the packet panics with overflow checks, and
//! wraps without them (the codec then waits for gigabytes and the connection
//! goes silent until keep-alive). Such a packet is malformed [MQTT-2.1.4]; in
//! its place the dispatcher gets bytes its codec refuses as malformed, so the
//! connection ends on ntex-mqtt's own protocol-error path (counted, logged,
//! v5 DISCONNECT 0x81), and nothing read after it is passed on.
//!
//! The codec also drops the reserved bits of a SUBSCRIBE's subscription
//! options, which the server must treat as malformed [MQTT-3.8.3-5] (3.1.1:
//! [MQTT-3-8.3-4]); such a SUBSCRIBE is replaced the same way.

use std::cell::Cell;
use std::io;

use ntex::codec::{Decoder, Encoder};
use ntex::io::{FilterBuf, FilterLayer};
use ntex::util::{BytePages, BytesMut};
use ntex_mqtt::error::DecodeError;

/// A fixed header whose remaining length has a fifth byte: ntex-mqtt's
/// decoder fails on it at once (`DecodeError::InvalidLength`, a malformed
/// packet), whatever the protocol level.
const MALFORMED: [u8; 6] = [0xf0, 0xff, 0xff, 0xff, 0xff, 0x01];

/// The protocol level of a connection, read from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    /// No CONNECT seen yet (or not one ntex-mqtt accepts).
    Unknown,
    V3,
    V5,
}

/// Keeps partial MQTT packets below the dispatcher until they are complete,
/// and stands in for a PUBLISH the codec would mishandle.
#[derive(Debug)]
pub(super) struct WholePackets {
    /// Packets announced larger than this are passed on at once, for the
    /// codec to refuse, instead of being buffered.
    max_packet: u32,
    level: Cell<Level>,
    /// A malformed packet was replaced; everything after it is dropped.
    refused: Cell<bool>,
}

impl WholePackets {
    pub(super) fn new(max_packet: u32) -> Self {
        Self { max_packet, level: Cell::new(Level::Unknown), refused: Cell::new(false) }
    }

    /// For a stream whose level is known without its CONNECT (the fuzz targets).
    #[cfg(any(fuzzing, test))]
    pub(super) fn at_level(max_packet: u32, level: Level) -> Self {
        Self { max_packet, level: Cell::new(level), refused: Cell::new(false) }
    }

    /// Move what the dispatcher may see from `read` (bytes as read) to
    /// `dst` (bytes for the codec).
    pub(super) fn release(&self, read: &mut BytesMut, dst: &mut BytesMut) {
        if self.refused.get() {
            read.clear();
            return;
        }
        let mut level = self.level.get();
        let scan = scan(read, self.max_packet, &mut level);
        self.level.set(level);
        let ready = match scan {
            Scan::Ready(n) => n,
            Scan::Malformed { at, why } => {
                tracing::debug!(level = ?level, "malformed packet replaced: {why}");
                dst.extend_from_slice(&read[..at]);
                dst.extend_from_slice(&MALFORMED);
                read.clear();
                self.refused.set(true);
                return;
            }
        };
        if ready == 0 {
            return;
        }
        if ready == read.len() && dst.is_empty() {
            // The common case: no copy, the dispatcher takes the buffer as read.
            std::mem::swap(read, dst);
        } else {
            dst.extend_from_slice(&read[..ready]);
            read.advance_to(ready);
        }
    }
}

impl FilterLayer for WholePackets {
    fn process_read_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        buf.with_read_buffers(|src, dst| {
            if let Some(read) = src {
                self.release(read, dst);
            }
        });
        Ok(())
    }

    fn process_write_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        pass_writes(buf)
    }
}

/// How much of the read bytes can go to the codec.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// This many bytes are whole packets (all of them when the codec should
    /// refuse what follows: a bad fixed header, an oversized packet).
    Ready(usize),
    /// Whole packets up to `at`, then a packet the codec would mishandle.
    Malformed { at: usize, why: &'static str },
}

/// Writes through a layer that only looks at reads: handed down as they are.
pub(super) fn pass_writes(buf: &FilterBuf<'_>) -> io::Result<()> {
    buf.with_write_buffers(|ours, below| {
        if below.is_empty() {
            std::mem::swap(ours, below);
        } else {
            while let Some(page) = ours.take() {
                below.append(page);
            }
        }
    });
    Ok(())
}

/// Walk the whole packets at the start of `bytes`, learning the protocol
/// level from a CONNECT and checking each PUBLISH's header against its
/// length.
fn scan(bytes: &[u8], max_packet: u32, level: &mut Level) -> Scan {
    let mut at = 0;
    while at < bytes.len() {
        match first_packet(&bytes[at..], max_packet, level) {
            First::Whole(len) => at += len,
            First::Incomplete => return Scan::Ready(at),
            First::Refused => return Scan::Ready(bytes.len()),
            First::Malformed(why) => return Scan::Malformed { at, why },
        }
    }
    Scan::Ready(at)
}

/// What the packet at the start of some bytes is to the codec.
#[derive(Debug, PartialEq, Eq)]
enum First {
    /// Whole and fit to decode; this many bytes long.
    Whole(usize),
    /// Not all there yet.
    Incomplete,
    /// The codec refuses it as soon as it sees it (a bad fixed header, an
    /// oversized packet, not MQTT at all): nothing to wait for.
    Refused,
    /// Whole, but one the codec would mishandle.
    Malformed(&'static str),
}

/// Look at the packet at the start of `bytes` (not empty), learning the
/// protocol level from a CONNECT and checking a PUBLISH's header against
/// its length.
fn first_packet(bytes: &[u8], max_packet: u32, level: &mut Level) -> First {
    let first = bytes[0];
    if !plausible_first_byte(first) {
        return First::Refused;
    }
    let (remaining, len_bytes) = match var_int(&bytes[1..]) {
        VarInt::Value(v, n) => (v, n),
        VarInt::Incomplete => return First::Incomplete,
        VarInt::Malformed => return First::Refused,
    };
    // The codec refuses a remaining length over its limit, not a whole
    // packet over it: anything it would take is waited for and checked.
    if remaining > max_packet {
        return First::Refused;
    }
    let total = 1 + len_bytes as u64 + u64::from(remaining);
    if (bytes.len() as u64) < total {
        return First::Incomplete;
    }
    let body = &bytes[1 + len_bytes..total as usize];
    let checked = match first >> 4 {
        1 if *level == Level::Unknown => {
            *level = connect_level(body);
            Ok(())
        }
        3 => publish_header_fits(body, first, *level),
        8 => subscription_options_valid(body, *level),
        _ => Ok(()),
    };
    match checked {
        Ok(()) => First::Whole(total as usize),
        Err(why) => First::Malformed(why),
    }
}

/// A decoder for a connection read without [`WholePackets`] (MQTT 3.1.1 on
/// the connection loop): it hands `codec` one whole packet at a time and
/// refuses, as malformed, the packets that layer would replace.
pub(super) struct Whole<C> {
    codec: C,
    max_packet: u32,
    level: Level,
}

impl<C> Whole<C> {
    /// For a connection whose CONNECT asked for `level`.
    pub(super) fn new(codec: C, max_packet: u32, level: Level) -> Self {
        Self { codec, max_packet, level }
    }
}

impl<C: Encoder> Encoder for Whole<C> {
    type Item = C::Item;
    type Error = C::Error;

    fn encodev(&self, item: C::Item, dst: &mut BytePages) -> Result<(), C::Error> {
        self.codec.encodev(item, dst)
    }
}

impl<C: Decoder<Error = DecodeError>> Decoder for Whole<C> {
    type Item = C::Item;
    type Error = DecodeError;

    fn decode(&self, src: &mut BytesMut) -> Result<Option<C::Item>, DecodeError> {
        if src.is_empty() {
            return Ok(None);
        }
        let mut level = self.level;
        match first_packet(src, self.max_packet, &mut level) {
            First::Incomplete => Ok(None),
            First::Whole(_) | First::Refused => self.codec.decode(src),
            First::Malformed(why) => {
                tracing::debug!(level = ?self.level, "malformed packet refused: {why}");
                Err(DecodeError::MalformedPacket)
            }
        }
    }
}

/// The level a CONNECT asks for, as ntex-mqtt tells them apart.
fn connect_level(body: &[u8]) -> Level {
    match body.get(..7) {
        Some(b"\x00\x04MQTT\x04") => Level::V3,
        Some(b"\x00\x04MQTT\x05") => Level::V5,
        _ => Level::Unknown,
    }
}

/// Whether the variable header of a PUBLISH (topic, packet id, and at v5 the
/// properties) ends inside its `body`. Without a known level only the part
/// both levels share is checked.
fn publish_header_fits(body: &[u8], first: u8, level: Level) -> Result<(), &'static str> {
    const SHORT: &str = "PUBLISH header longer than its remaining length";
    let Some(&[hi, lo]) = body.get(..2) else { return Err(SHORT) };
    let packet_id = if (first >> 1) & 0b11 == 0 { 0 } else { 2 };
    let mut header = 2 + usize::from(u16::from_be_bytes([hi, lo])) + packet_id;
    if header > body.len() {
        return Err(SHORT);
    }
    if level == Level::V5 {
        match var_int(&body[header..]) {
            VarInt::Value(props, n) => header += n + props as usize,
            VarInt::Incomplete => return Err(SHORT),
            VarInt::Malformed => return Err("PUBLISH property length malformed"),
        }
        if header > body.len() {
            return Err(SHORT);
        }
    }
    Ok(())
}

/// Whether every subscription option byte of a SUBSCRIBE leaves its
/// reserved bits zero (v5: bits 6 and 7; 3.1.1: all but the QoS). A body too
/// short for its fields is left to the codec, which refuses it.
fn subscription_options_valid(body: &[u8], level: Level) -> Result<(), &'static str> {
    let reserved = match level {
        Level::Unknown => return Ok(()),
        Level::V3 => 0b1111_1100,
        Level::V5 => 0b1100_0000,
    };
    let mut at = 2; // packet id
    if level == Level::V5 {
        match var_int(body.get(at..).unwrap_or_default()) {
            VarInt::Value(props, n) => at += n + props as usize,
            VarInt::Incomplete | VarInt::Malformed => return Ok(()),
        }
    }
    while let Some(&[hi, lo]) = body.get(at..at + 2) {
        at += 2 + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(&options) = body.get(at) else { return Ok(()) };
        if options & reserved != 0 {
            return Err("SUBSCRIBE with reserved option bits set");
        }
        at += 1;
    }
    Ok(())
}

enum VarInt {
    /// The value and how many bytes encode it.
    Value(u32, usize),
    Incomplete,
    /// More than four bytes [MQTT-1.5.5].
    Malformed,
}

/// An MQTT variable byte integer at the start of `bytes`.
fn var_int(bytes: &[u8]) -> VarInt {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return VarInt::Value(value, i + 1);
        }
        if i == 3 {
            return VarInt::Malformed;
        }
    }
    VarInt::Incomplete
}
/// Whether `b` can start an MQTT packet: a defined type with the flags the
/// type requires (PUBLISH carries its own). Anything else, HTTP sent to the
/// MQTT port for one, goes straight to the codec to be refused.
fn plausible_first_byte(b: u8) -> bool {
    match b >> 4 {
        0 => false,
        3 => true,
        6 | 8 | 10 => b & 0x0f == 0x02,
        _ => b & 0x0f == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet of type `first` with `body_len` body bytes: zeros first (a
    /// PUBLISH gets an empty topic and packet id 0), then filler.
    fn packet(first: u8, body_len: usize) -> Vec<u8> {
        let mut out = vec![first];
        mapcast_bench::wire::put_varint(&mut out, body_len);
        let zeros = body_len.min(4);
        out.extend(std::iter::repeat_n(0, zeros));
        out.extend(std::iter::repeat_n(0xaa, body_len - zeros));
        out
    }

    fn complete_prefix(bytes: &[u8], max_packet: u32) -> usize {
        match scan(bytes, max_packet, &mut Level::Unknown) {
            Scan::Ready(n) => n,
            other => panic!("{other:?}"),
        }
    }

    fn connect(level: u8) -> Vec<u8> {
        let mut body = b"\x00\x04MQTT".to_vec();
        body.extend([level, 0x02, 0, 30, 0, 1, b'c']);
        if level == 5 {
            body.insert(10, 0); // no properties
        }
        let mut out = vec![0x10, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn only_whole_packets_are_released() {
        let mut stream = packet(0x30, 10);
        stream.extend(packet(0xc0, 0)); // PINGREQ, no body
        stream.extend(packet(0x32, 300)); // two length bytes
        let ends = [12, 14, 14 + 303];
        for cut in 0..=stream.len() {
            let expect = ends.iter().copied().filter(|&e| e <= cut).max().unwrap_or(0);
            assert_eq!(complete_prefix(&stream[..cut], 1 << 20), expect, "cut at {cut}");
        }
    }

    #[test]
    fn bytes_that_cannot_start_a_packet_are_passed_on_at_once() {
        assert_eq!(complete_prefix(b"GET / HTTP/1.1\r\n", 1 << 20), 16);
        // A valid packet, then garbage: all of it goes on.
        let mut stream = packet(0xc0, 0);
        stream.extend(b"\x00\x05");
        assert_eq!(complete_prefix(&stream, 1 << 20), stream.len());
        // SUBSCRIBE needs flags 0010; a partial one is held.
        assert_eq!(complete_prefix(&[0x82, 0x10, 0x00], 1 << 20), 0);
        assert_eq!(complete_prefix(&[0x80, 0x10, 0x00], 1 << 20), 3);
    }

    #[test]
    fn malformed_or_oversized_packets_are_passed_on_for_the_codec_to_refuse() {
        // A fifth length byte: malformed.
        let malformed = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(complete_prefix(&malformed, 1 << 20), malformed.len());
        // Announced at 2,000 bytes with a 1,000-byte limit: not waited for.
        let big = packet(0x30, 2_000);
        assert_eq!(complete_prefix(&big[..50], 1_000), 50);
        // Within the limit, a partial packet is held back.
        assert_eq!(complete_prefix(&big[..50], 1 << 20), 0);
        assert_eq!(complete_prefix(&big, 1 << 20), big.len());
    }

    #[test]
    fn a_publish_header_longer_than_its_packet_is_malformed() {
        // Topic length 10 in a 3-byte body: the codec would underflow.
        let mut stream = packet(0xc0, 0);
        let bad_at = stream.len();
        stream.extend([0x30, 3, 0, 10, b'a']);
        stream.extend(packet(0xc0, 0));
        let why = "PUBLISH header longer than its remaining length";
        assert_eq!(
            scan(&stream, 1 << 20, &mut Level::Unknown),
            Scan::Malformed { at: bad_at, why }
        );
        // A body too short for the topic length itself.
        assert_eq!(scan(&[0x30, 1, 0], 1 << 20, &mut Level::V3), Scan::Malformed { at: 0, why });
        assert_eq!(scan(&[0x30, 0], 1 << 20, &mut Level::V5), Scan::Malformed { at: 0, why });
        // QoS 1: the packet id must fit as well.
        assert_eq!(
            scan(&[0x32, 3, 0, 1, b'a'], 1 << 20, &mut Level::V3),
            Scan::Malformed { at: 0, why }
        );
        assert_eq!(scan(&[0x32, 5, 0, 1, b'a', 0, 1], 1 << 20, &mut Level::V3), Scan::Ready(7));
        // An exact fit with an empty payload is fine.
        assert_eq!(scan(&[0x30, 3, 0, 1, b'a'], 1 << 20, &mut Level::V3), Scan::Ready(5));
    }

    #[test]
    fn v5_properties_count_once_the_connect_has_told_the_level() {
        // Topic "a", property length 5, one byte left: fine at 3.1.1 (the
        // byte is payload), malformed at v5.
        let publish = [0x30, 5, 0, 1, b'a', 5, 0];
        assert_eq!(scan(&publish, 1 << 20, &mut Level::V3), Scan::Ready(publish.len()));
        for (level, expect) in [(4, Level::V3), (5, Level::V5)] {
            let mut stream = connect(level);
            let at = stream.len();
            stream.extend(publish);
            let mut learned = Level::Unknown;
            let scanned = scan(&stream, 1 << 20, &mut learned);
            assert_eq!(learned, expect);
            if expect == Level::V5 {
                let why = "PUBLISH header longer than its remaining length";
                assert_eq!(scanned, Scan::Malformed { at, why });
            } else {
                assert_eq!(scanned, Scan::Ready(stream.len()));
            }
        }
        // No property length byte at all.
        assert!(matches!(
            scan(&[0x30, 3, 0, 1, b'a'], 1 << 20, &mut Level::V5),
            Scan::Malformed { .. }
        ));
        // A property length of five bytes.
        let long = [0x30, 8, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(
            scan(&long, 1 << 20, &mut Level::V5),
            Scan::Malformed { at: 0, why: "PUBLISH property length malformed" }
        );
    }

    #[test]
    fn a_malformed_publish_reaches_the_codec_as_a_decode_error_and_nothing_after_it() {
        use ntex::codec::Decoder;
        use ntex_mqtt::error::DecodeError;

        let framing = WholePackets::new(1 << 20);
        let mut read = BytesMut::from(&connect(5)[..]);
        read.extend_from_slice(&[0x30, 3, 0, 10, b'a']);
        read.extend_from_slice(&packet(0xc0, 0));
        let mut dst = BytesMut::new();
        framing.release(&mut read, &mut dst);
        assert!(read.is_empty());
        let mut later = BytesMut::from(&packet(0xc0, 0)[..]);
        framing.release(&mut later, &mut dst);
        assert!(later.is_empty(), "dropped after the malformed packet");

        let mut expected = connect(5);
        expected.extend(MALFORMED);
        assert_eq!(&dst[..], &expected[..]);

        let codec = ntex_mqtt::v5::codec::Codec::new();
        assert!(codec.decode(&mut dst).unwrap().is_some(), "the CONNECT decodes");
        let err = codec.decode(&mut dst).unwrap_err();
        assert!(!matches!(err, DecodeError::MaxSizeExceeded { .. }), "{err:?}");
        let codec = ntex_mqtt::v3::codec::Codec::new();
        let err = codec.decode(&mut BytesMut::from(&MALFORMED[..])).unwrap_err();
        assert!(!matches!(err, DecodeError::MaxSizeExceeded { .. }), "{err:?}");
    }

    #[test]
    fn the_loop_decoder_takes_one_whole_packet_at_a_time_and_refuses_what_the_layer_replaces() {
        use ntex_mqtt::v3::codec::{Codec, Decoded, Packet};

        let codec = Codec::new();
        codec.set_min_chunk_size(1 << 20);
        let frames = Whole::new(codec, 1 << 20, Level::V3);
        // A QoS 1 PUBLISH split inside its payload, then a PINGREQ.
        let mut stream = vec![0x32, 8, 0, 1, b'a', 0, 9, b'x', b'y', b'z', 0xc0, 0];
        let mut buf = BytesMut::from(&stream[..6]);
        assert!(frames.decode(&mut buf).unwrap().is_none(), "a partial packet waits");
        buf.extend_from_slice(&stream[6..]);
        match frames.decode(&mut buf).unwrap() {
            Some(Decoded::Publish(p, payload, _)) => {
                assert_eq!((p.topic.as_ref(), &payload[..]), ("a", &b"xyz"[..]));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            frames.decode(&mut buf),
            Ok(Some(Decoded::Packet(Packet::PingRequest, _)))
        ));
        assert!(frames.decode(&mut buf).unwrap().is_none());

        // A header longer than the packet, and reserved SUBSCRIBE bits.
        for bad in [&[0x30, 3, 0, 10, b'a'][..], b"\x82\x08\x00\x07\x00\x03a/b\xc1"] {
            let err = frames.decode(&mut BytesMut::from(bad)).unwrap_err();
            assert_eq!(err, DecodeError::MalformedPacket, "{bad:?}");
        }
        // Announced over the limit: the codec refuses it without waiting.
        let small = Codec::new();
        small.set_max_size(100);
        let frames = Whole::new(small, 100, Level::V3);
        stream = vec![0x30, 0xe8, 0x07, 0, 1];
        let err = frames.decode(&mut BytesMut::from(&stream[..])).unwrap_err();
        assert!(matches!(err, DecodeError::MaxSizeExceeded { .. }), "{err:?}");
    }

    #[test]
    fn a_packet_at_the_codecs_size_limit_is_still_checked() {
        // Remaining length 127 under a 128-byte limit: 129 bytes in all,
        // which the codec takes (it compares the remaining length), so its
        // PUBLISH header (topic length 0x7f00) is checked, not passed on.
        let mut publish = vec![0x32, 0x7f, 0x7f, 0x00];
        publish.resize(129, b'/');
        assert_eq!(first_packet(&publish[..50], 128, &mut Level::V5), First::Incomplete);
        assert!(matches!(first_packet(&publish, 128, &mut Level::V5), First::Malformed(_)));
        // One byte more of remaining length: refused by the codec at once.
        assert_eq!(first_packet(&[0x32, 0x81, 0x01], 128, &mut Level::V5), First::Refused);
    }

    #[test]
    fn subscribe_options_with_reserved_bits_are_malformed() {
        // Packet id 7, (v5: no properties), filter "a/b", options.
        let body = |v5: bool, options: u8| {
            let mut b = vec![0, 7];
            if v5 {
                b.push(0);
            }
            b.extend(b"\x00\x03a/b");
            b.push(options);
            b
        };
        assert_eq!(subscription_options_valid(&body(true, 0x2e), Level::V5), Ok(()));
        assert!(subscription_options_valid(&body(true, 0xc0), Level::V5).is_err());
        assert!(subscription_options_valid(&body(true, 0x41), Level::V5).is_err());
        assert_eq!(subscription_options_valid(&body(false, 0x02), Level::V3), Ok(()));
        assert!(subscription_options_valid(&body(false, 0xc1), Level::V3).is_err());
        assert!(subscription_options_valid(&body(false, 0x04), Level::V3).is_err());
        // Unknown level, or cut short: the codec decides.
        assert_eq!(subscription_options_valid(&body(false, 0xc1), Level::Unknown), Ok(()));
        assert_eq!(subscription_options_valid(&[0, 7, 0, 9, b'a'], Level::V3), Ok(()));

        let mut stream = vec![0x82];
        let b = body(true, 0xc0);
        stream.push(b.len() as u8);
        stream.extend(&b);
        let scanned = scan(&stream, 1 << 20, &mut Level::V5);
        assert!(matches!(scanned, Scan::Malformed { at: 0, .. }), "{scanned:?}");
    }
}
