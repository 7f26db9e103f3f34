//! The PROXY protocol header parser: never panics, and never asks a reader
//! for a byte past the header (the API listener reads exactly what it asks
//! for, so an over-read would eat the client's first bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapcast::proxy_protocol::header::{V1_MAX, V2_MAX_PAYLOAD};
use mapcast::proxy_protocol::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Complete { source, len }) = parse(data) else { return };
    assert!(len <= data.len() && len <= V1_MAX.max(16 + V2_MAX_PAYLOAD));
    // The header alone parses the same.
    assert_eq!(parse(&data[..len]), Ok(Parsed::Complete { source, len }));
    // Read the way the API listener reads: exactly what each step asks for.
    let mut have = 0;
    while have < len {
        match parse(&data[..have]) {
            Ok(Parsed::Incomplete { at_least }) => {
                assert!(at_least >= 1 && have + at_least <= len, "over-read at {have}");
                have += at_least;
            }
            other => panic!("{other:?} after {have} of a {len}-byte header"),
        }
    }
});
