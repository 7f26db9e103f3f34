//! MQTT connections served by a loop of mapcast's own: one task per
//! connection reads packets with ntex-mqtt's codec straight from ntex `Io`,
//! writes its answers and its session's deliveries from the same task, and
//! keeps no service pipeline, dispatcher or boxed readiness futures per
//! connection (what an idle connection mostly cost on ntex-mqtt's
//! dispatcher; see BENCHMARKS.md, "Idle connection memory").
//!
//! Because nothing runs a packet on a task of its own, the connection's
//! packets reach the broker in the order they arrived and their answers leave
//! in that order without the ordering layer the dispatcher needs (`acks`);
//! the outbound QoS 2 flow has no single-slot PUBREL to work around.
//!
//! - `answers`: the connection's answers, finished in arrival order.
//! - `flows`: outbound QoS ≥ 1 deliveries on the wire, by packet id.
//! - `v3`: the MQTT 3.1.1 connection.

mod answers;
mod flows;
mod v3;

pub(super) use v3::serve as serve_v3;

/// The protocol level byte in CONNECT of MQTT 3.1.1 and 5.0.
pub(super) const LEVEL_311: u8 = 4;
pub(super) const LEVEL_5: u8 = 5;

/// The protocol level of the CONNECT at the start of `buf`, when it is one
/// and its header is complete (`connect_check` let it through).
pub(super) fn connect_level(buf: &[u8]) -> Option<u8> {
    let (&first, rest) = buf.split_first()?;
    if first != 0x10 {
        return None;
    }
    // Remaining length: 1 to 4 bytes of 7 bits.
    let len_bytes = rest.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let header = rest.get(len_bytes..len_bytes + 7)?;
    (header[..6] == [0, 4, b'M', b'Q', b'T', b'T']).then_some(header[6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_protocol_level_of_a_connect() {
        let v311 = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a'];
        assert_eq!(connect_level(&v311), Some(4));
        let v5 = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'a'];
        assert_eq!(connect_level(&v5), Some(5));
        // Two-byte remaining length.
        let long = [0x10, 0x80, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
        assert_eq!(connect_level(&long), Some(4));
        // MQTT 3.1's "MQIsdp", a PINGREQ, a cut header.
        assert_eq!(connect_level(&[0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]), None);
        assert_eq!(connect_level(&[0xC0, 0]), None);
        assert_eq!(connect_level(&v311[..6]), None);
        assert_eq!(connect_level(&[]), None);
    }
}
