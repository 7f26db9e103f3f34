//! Attacks a stranger on the internet can try, each run from outside against
//! the real server: one module per attack.

mod admin_routes;
mod crash_files;
mod encoded_bodies;
mod invalid_utf8;
mod malformed_requests;
mod slow_requests;
mod sse_streams;
