//! Slow clients: headers or a body that stall half-way are cut at a
//! deadline with a 408, and the connections they can hold are capped, so a
//! stranger cannot sit on the descriptors MQTT shares.

use std::time::{Duration, Instant};

use crate::helpers::{RawAnswer, RawHttp, TestApp, spawn_app_with};

const TIMEOUT: Duration = Duration::from_millis(500);
/// The deadline plus the slack a loaded machine needs.
const CUT_WITHIN: Duration = Duration::from_millis(2500);
/// The head deadline is actix-http's, set from a clock it refreshes every
/// half second: a cut may come up to that much early.
const HEAD_TIMEOUT: Duration = Duration::from_millis(1500);
const HEAD_CLOCK_TICK: Duration = Duration::from_millis(500);

/// An app whose body deadline is [`TIMEOUT`] (headers get the default 5 s,
/// so only the body deadline can answer).
async fn app_with_short_body_timeout() -> TestApp {
    spawn_app_with(|s| s.http.body_timeout_ms = TIMEOUT.as_millis() as u64).await
}

/// A request head announcing a 100-byte body, and the first bytes of it.
fn stalled_post(method: &str, path: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: mapcast\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"username\":"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_body_that_stalls_gets_a_408_problem_and_the_connection_closed() {
    let app = app_with_short_body_timeout().await;

    for (method, path) in [
        ("POST", "/api/v1/users"),
        ("POST", "/api/v1/sessions"),
        ("PUT", "/api/v1/topics/status/door"),
    ] {
        let mut conn = RawHttp::connect(app.http_addr).await;
        let start = Instant::now();
        conn.send(&stalled_post(method, path)).await;

        let answer = conn.read_until_closed(CUT_WITHIN).await;

        assert!(answer.closed, "{method} {path} still open after {CUT_WITHIN:?}: {answer:?}");
        assert!(start.elapsed() >= TIMEOUT, "{method} {path} cut before the deadline: {answer:?}");
        assert_eq!(answer.status(), Some(408), "{method} {path}: {answer:?}");
        assert!(answer.has_header("content-type", "application/problem+json"), "{answer:?}");
        assert!(answer.body().contains("urn:mapcast:problem:request-timeout"), "{answer:?}");
    }
}

/// A chunked POST to `path` whose first chunk comes and the rest never
/// does: what the server answers within [`CUT_WITHIN`].
async fn stalled_chunked_post(app: &TestApp, path: &str) -> RawAnswer {
    let mut conn = RawHttp::connect(app.http_addr).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: mapcast\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"nam\r\n"
    );
    conn.send(head.as_bytes()).await;
    conn.read_until_closed(CUT_WITHIN).await
}

#[tokio::test]
async fn a_chunked_body_that_stalls_gets_a_408_too() {
    let app = app_with_short_body_timeout().await;

    let answer = stalled_chunked_post(&app, "/api/v1/sessions").await;

    assert_eq!(answer.status(), Some(408), "{answer:?}");
    assert!(answer.closed, "still open after {CUT_WITHIN:?}: {answer:?}");
}

#[tokio::test]
async fn a_chunked_body_refused_before_it_is_read_does_not_hold_the_connection() {
    let app = app_with_short_body_timeout().await;

    // Anonymous callers may not create devices: 401 without reading the body.
    let answer = stalled_chunked_post(&app, "/api/v1/devices").await;

    assert_eq!(answer.status(), Some(401), "{answer:?}");
    assert!(answer.closed, "the rest of the body is waited for: {answer:?}");
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_is_cut_at_the_same_deadline() {
    let app = app_with_short_body_timeout().await;
    let mut conn = RawHttp::connect(app.http_addr).await;
    let start = Instant::now();
    conn.send(&stalled_post("POST", "/api/v1/users")).await;

    // A byte every 100 ms never leaves the connection idle for long.
    let mut answer = None;
    for _ in 0..20 {
        conn.send(b" ").await;
        let read = conn.read_until_closed(Duration::from_millis(100)).await;
        if read.closed || !read.text.is_empty() {
            answer = Some(read);
            break;
        }
    }

    let answer = answer.expect("the trickle was never cut");
    assert!(start.elapsed() < CUT_WITHIN, "cut only after {:?}", start.elapsed());
    assert_eq!(answer.status(), Some(408), "{answer:?}");
}

#[tokio::test]
async fn headers_that_stall_get_a_408_and_the_connection_closed() {
    let app = spawn_app_with(|s| s.http.head_timeout_ms = HEAD_TIMEOUT.as_millis() as u64).await;
    // The server's clock starts at accept, which a loaded machine may run
    // well before `connect` returns here: start ours before connecting.
    let start = Instant::now();
    let mut conn = RawHttp::connect(app.http_addr).await;

    conn.send(b"GET /healthz HTTP/1.1\r\nHost: mapcast\r\n").await;
    let answer = conn.read_until_closed(HEAD_TIMEOUT + CUT_WITHIN).await;

    assert!(answer.closed, "still open after {:?}: {answer:?}", HEAD_TIMEOUT + CUT_WITHIN);
    let elapsed = start.elapsed();
    assert!(elapsed >= HEAD_TIMEOUT - HEAD_CLOCK_TICK, "cut before the deadline: {elapsed:?}");
    assert_eq!(answer.status(), Some(408), "{answer:?}");
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_waits_until_a_held_one_is_cut() {
    let app = spawn_app_with(|s| {
        s.http.workers = 1;
        s.http.max_connections = 2;
        s.http.body_timeout_ms = 1500;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = RawHttp::connect(app.http_addr).await;
        conn.send(&stalled_post("POST", "/api/v1/users")).await;
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = RawHttp::connect(app.http_addr).await;
    third.send(b"GET /healthz HTTP/1.1\r\nHost: mapcast\r\nConnection: close\r\n\r\n").await;
    let while_held = third.read_until_closed(Duration::from_millis(700)).await;
    let after = third.read_until_closed(Duration::from_secs(5)).await;

    assert!(while_held.text.is_empty(), "served past the cap: {while_held:?}");
    assert_eq!(after.status(), Some(200), "not served once a slot freed: {after:?}");
}
