//! Bytes from a client, as the broker reads them: the framing layer (whole
//! packets, overrunning PUBLISH headers refused), the checks on the raw
//! CONNECT, ntex-mqtt's v3 or v5 codec (set up as the server sets it up),
//! then the handlers' pure steps.
//!
//! Byte 0 chooses the level (bit 0), tight or default limits (bit 7) and how
//! the rest is cut into socket reads (bits 1–6: read size, 0 = one read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapcast::broker::BrokerLimits;
use mapcast::mqtt::fuzzing::{Level, inbound};

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else { return };
    let level = if control & 1 == 0 { Level::V3 } else { Level::V5 };
    let limits = if control & 0x80 == 0 {
        BrokerLimits::default()
    } else {
        BrokerLimits {
            max_payload_bytes: 64,
            max_packet_bytes: 128,
            max_topic_len: 32,
            max_topic_levels: 4,
            ..BrokerLimits::default()
        }
    };
    let read_size = usize::from((control >> 1) & 0x3f);
    let reads: Vec<&[u8]> =
        if read_size == 0 { vec![bytes] } else { bytes.chunks(read_size).collect() };
    inbound(level, &reads, &limits);
});
