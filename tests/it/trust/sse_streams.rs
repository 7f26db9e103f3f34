//! Server-Sent Events streams are bounded and let go: one user or one
//! address may hold only so many (429 past it, counted), and a stream whose
//! reader goes away leaves the broker within a second, not at its next
//! heartbeat.

use std::time::Duration;

use crate::helpers::{
    RawAnswer, RawHttp, TestApp, expect_problem, metric, spawn_app_with, wait_for_metric,
};

const SUBSCRIPTIONS: &str = "mapcast_subscriptions";
const SESSIONS: &str = "mapcast_clients_connected";
const REFUSED: &str = "mapcast_http_sse_refused_total";
const RELEASED_WITHIN: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_closed_stream_leaves_the_broker_within_a_second() {
    let app = spawn_app_with(|_| {}).await;
    let (subscriptions, sessions) =
        (metric(app.http_addr, SUBSCRIPTIONS).await, metric(app.http_addr, SESSIONS).await);
    let mut conn = RawHttp::connect(app.http_addr).await;
    conn.send(b"GET /api/v1/subscribe?filter=status/%23 HTTP/1.1\r\nHost: mapcast\r\n\r\n").await;
    let opened = conn.read_until_closed(Duration::from_millis(500)).await;
    assert!(opened.text.contains(": subscribed"), "{opened:?}");
    assert_eq!(metric(app.http_addr, SUBSCRIPTIONS).await, subscriptions + 1.0);
    assert_eq!(metric(app.http_addr, SESSIONS).await, sessions + 1.0);

    drop(conn);

    let left =
        wait_for_metric(app.http_addr, SUBSCRIPTIONS, RELEASED_WITHIN, |v| v == subscriptions)
            .await;
    assert_eq!(left, subscriptions, "the subscription outlived its reader");
    assert_eq!(metric(app.http_addr, SESSIONS).await, sessions, "the session outlived its reader");
}

/// An SSE request for `map/#` as `token` on a bare connection, and what
/// came back within half a second.
async fn stream_as(app: &TestApp, token: &str) -> (RawHttp, RawAnswer) {
    let mut conn = RawHttp::connect(app.http_addr).await;
    let head = format!(
        "GET /api/v1/subscribe?filter=map/%23 HTTP/1.1\r\nHost: mapcast\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    conn.send(head.as_bytes()).await;
    let answer = conn.read_until_closed(Duration::from_millis(500)).await;
    (conn, answer)
}

#[tokio::test]
async fn one_user_past_the_stream_cap_is_refused_with_429_and_counted() {
    let app = spawn_app_with(|s| {
        s.http.max_sse_streams_per_user = 2;
        s.http.max_sse_streams_per_address = 0;
    })
    .await;
    let ann = app.api().sign_up("ann").await;
    let refused_before = metric(app.http_addr, REFUSED).await;
    let (first, answer) = stream_as(&app, &ann).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    let (_second, answer) = stream_as(&app, &ann).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");

    let (_, third) = stream_as(&app, &ann).await;

    assert_eq!(third.status(), Some(429), "{third:?}");
    assert!(third.has_header("retry-after", "5"), "{third:?}");
    assert!(third.body().contains("urn:mapcast:problem:too-many-requests"), "{third:?}");
    assert!(metric(app.http_addr, REFUSED).await > refused_before, "the refusal is counted");
    let bob = app.api().sign_up("bob").await;
    assert_eq!(stream_as(&app, &bob).await.1.status(), Some(200), "another user is not held up");

    drop(first);
    let deadline = tokio::time::Instant::now() + RELEASED_WITHIN;
    loop {
        let (_conn, again) = stream_as(&app, &ann).await;
        if again.status() == Some(200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the closed stream's place never freed");
    }
}

#[tokio::test]
async fn one_address_past_the_stream_cap_is_refused_with_429() {
    let app = spawn_app_with(|s| s.http.max_sse_streams_per_address = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.sse("status/#").await);
    }

    expect_problem(app.sse_request("status/#").await, 429, "too-many-requests").await;
}
