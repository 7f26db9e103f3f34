//! Hand the MQTT dispatcher whole packets only.
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

use std::io;

use ntex::io::{FilterBuf, FilterLayer};

/// Keeps partial MQTT packets below the dispatcher until they are complete.
#[derive(Debug)]
pub(super) struct WholePackets {
    /// Packets announced larger than this are passed on at once, for the
    /// codec to refuse, instead of being buffered.
    max_packet: u32,
}

impl WholePackets {
    pub(super) fn new(max_packet: u32) -> Self {
        Self { max_packet }
    }
}

impl FilterLayer for WholePackets {
    fn process_read_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        buf.with_read_buffers(|src, dst| {
            let Some(read) = src else { return };
            let ready = complete_prefix(read, self.max_packet);
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
        });
        Ok(())
    }

    fn process_write_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
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
}

/// Length of the longest prefix of `bytes` made of whole MQTT packets; all
/// of it when a packet is malformed or announced larger than `max_packet`
/// (the codec reports those).
fn complete_prefix(bytes: &[u8], max_packet: u32) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        if !plausible_first_byte(bytes[at]) {
            return bytes.len();
        }
        let header = &bytes[at + 1..];
        let mut remaining: u64 = 0;
        let mut len_bytes = 0;
        loop {
            let Some(&b) = header.get(len_bytes) else { return at };
            remaining |= u64::from(b & 0x7f) << (7 * len_bytes);
            len_bytes += 1;
            if b & 0x80 == 0 {
                break;
            }
            if len_bytes == 4 {
                return bytes.len();
            }
        }
        let total = 1 + len_bytes as u64 + remaining;
        if total > u64::from(max_packet) {
            return bytes.len();
        }
        if ((bytes.len() - at) as u64) < total {
            return at;
        }
        at += total as usize;
    }
    at
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

    /// A packet of type `first` with `body_len` body bytes.
    fn packet(first: u8, body_len: usize) -> Vec<u8> {
        let mut out = vec![first];
        crate::bench::wire::put_varint(&mut out, body_len);
        out.extend(std::iter::repeat_n(0xaa, body_len));
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
}
