//! `GET /api/v1/history/{topic}`: stored messages of the topics with history
//! enabled, newest first, paged with an opaque cursor.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{
    TestApp, an_hour_ago_ms, expect_json, expect_problem, location_at, spawn_app_with,
};

const TOPIC: &str = "devices/car-7/location";

async fn page(app: &TestApp, query: &str) -> Value {
    let resp = app.api().get(&format!("/api/v1/history/{TOPIC}{query}"), None).await;
    expect_json(resp, reqwest::StatusCode::OK).await
}

fn lons(page: &Value) -> Vec<f64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["payload"]["geometry"]["coordinates"][0].as_f64().unwrap())
        .collect()
}

/// Five positions, one REST publish each (QoS 1: durable when answered).
async fn five_positions(app: &TestApp) {
    for i in 0..5 {
        let resp = app
            .topic_request(
                Method::POST,
                TOPIC,
                "",
                Some(("application/geo+json", location_at(i as f64, 0.0, an_hour_ago_ms() + i))),
            )
            .await;
        assert_eq!(resp.status(), 202);
        // Distinct `received_at` milliseconds, for the time filters below.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn history_pages_newest_first_until_the_cursor_runs_out() {
    let app = spawn_app_with(|_| {}).await;
    five_positions(&app).await;

    let first = page(&app, "?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = page(&app, &format!("?limit=2&cursor={cursor}")).await;
    let cursor = second["next_cursor"].as_str().unwrap().to_owned();
    let last = page(&app, &format!("?limit=2&cursor={cursor}")).await;

    assert_eq!(lons(&first), [4.0, 3.0]);
    assert_eq!(lons(&second), [2.0, 1.0]);
    assert_eq!(lons(&last), [0.0]);
    assert!(last["next_cursor"].is_null());
    let item = &first["items"][0];
    assert_eq!(item["topic"], TOPIC);
    assert_eq!(item["content_type"], "application/geo+json");
    assert!(item["received_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn since_and_until_bound_the_received_times() {
    let app = spawn_app_with(|_| {}).await;
    five_positions(&app).await;
    let all = page(&app, "").await;
    let at = |i: usize| all["items"][i]["received_at"].as_str().unwrap().to_owned();
    // Newest first: items[3] is the second oldest, items[1] the second newest.
    let (from, to) = (at(3), at(1));

    let window = page(&app, &format!("?since={from}&until={to}")).await;

    assert_eq!(lons(&window), [3.0, 2.0, 1.0]);
}

#[tokio::test]
async fn other_topics_have_history_only_when_configured() {
    let app = spawn_app_with(|s| s.history.topics.push("notes/#".into())).await;
    app.topic_request(Method::POST, "notes/a", "", Some(("text/plain", "plain text".into()))).await;
    app.topic_request(Method::POST, "other/a", "", Some(("text/plain", "x".into()))).await;

    let notes = app.api().get("/api/v1/history/notes/a", None).await;
    let other = app.api().get("/api/v1/history/other/a", None).await;

    let notes = expect_json(notes, reqwest::StatusCode::OK).await;
    assert_eq!(notes["items"][0]["payload"], "plain text");
    expect_problem(other, 404, "not-found").await;
}

#[tokio::test]
async fn bad_history_requests_are_problems() {
    let app = spawn_app_with(|_| {}).await;
    let api = app.api();
    for query in [
        "?cursor=not-a-cursor",
        "?cursor=AAAA",
        "?limit=0",
        "?limit=5000",
        "?limit=ten",
        "?since=last-tuesday",
    ] {
        let resp = api.get(&format!("/api/v1/history/{TOPIC}{query}"), None).await;
        expect_problem(resp, 400, "bad-request").await;
    }
    let wildcard = app.api().get("/api/v1/history/devices/+/location", None).await;
    expect_problem(wildcard, 400, "bad-request").await;
}
