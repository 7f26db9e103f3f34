//! REST request bodies, decoded and checked as their handlers do; a refusal
//! must be a 400 or 422 problem+json. Byte 0 chooses the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapcast::http::fuzzing::{Body, check, payload_reads_back};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let kind = match which % 4 {
        0 => Body::NewUser,
        1 => Body::NewDevice,
        2 => Body::SignIn,
        _ => Body::LocationPublish,
    };
    let _ = check(kind, body);
    payload_reads_back(body);
});
