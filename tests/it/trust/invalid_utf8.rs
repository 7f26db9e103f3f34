//! Percent-encoded bytes that are not UTF-8 in a topic path or an SSE
//! filter are a 400 problem, as MQTT refuses the same bytes, never a topic
//! with U+FFFD in it.

use reqwest::Method;

use crate::helpers::{expect_problem, spawn_app};

#[tokio::test]
async fn a_topic_path_that_is_not_utf8_is_a_400_problem_and_nothing_is_published() {
    let app = spawn_app().await;
    let mut watcher = app.sse("status/#").await;

    for method in [Method::PUT, Method::POST, Method::GET, Method::DELETE] {
        let resp = app
            .topic_request(
                method.clone(),
                "status/door%FF",
                "",
                Some(("text/plain", "open".into())),
            )
            .await;
        expect_problem(resp, 400, "bad-request").await;
    }
    let history = app.api().get("/api/v1/history/devices/car%C3/location", None).await;
    expect_problem(history, 400, "bad-request").await;

    assert!(
        watcher.try_next_event(crate::helpers::QUIET).await.is_none(),
        "something was published"
    );
    let valid = app
        .topic_request(Method::PUT, "status/caf%C3%A9", "", Some(("text/plain", "open".into())))
        .await;
    assert_eq!(valid.status(), 200, "valid UTF-8 still publishes");
    assert_eq!(watcher.next_event().await["topic"], "status/café");
}

#[tokio::test]
async fn an_sse_filter_that_is_not_utf8_is_a_400_problem() {
    let app = spawn_app().await;

    let resp = app.api().get("/api/v1/subscribe?filter=status%2F%FF%2F%23", None).await;

    expect_problem(resp, 400, "bad-request").await;
}
