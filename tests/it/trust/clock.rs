//! A device with a wrong clock cannot freeze its place on the map: fixes
//! stamped too far ahead of the server clock, or implausibly old, are refused
//! with a reason; one stamped a little ahead counts as taken on arrival.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::helpers::{expect_problem, fast_map, location, location_at, spawn_app_with};

const TOPIC: &str = "devices/car-1/location";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// `location()` with an RFC 3339 `ts`.
fn location_stamped(ts: &str) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(&location(1.0, 2.0)).unwrap();
    doc["properties"]["ts"] = ts.into();
    doc.to_string()
}

#[tokio::test]
async fn fixes_stamped_in_the_future_or_at_the_epoch_get_0x99_and_422() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("car-1", true, None).await;
    let ahead = "properties.ts is too far ahead of the server clock";
    let old = "properties.ts is older than the server accepts";
    let cases = [
        (location_stamped("2099-01-01T00:00:00Z"), ahead),
        (location_at(1.0, 2.0, now_ms() + 3_600_000), ahead),
        (location_at(1.0, 2.0, 0), old),
        (location_stamped("1970-01-01T00:00:00Z"), old),
        (location_at(1.0, 2.0, now_ms() - 40 * 24 * 3_600_000), old),
    ];

    for (payload, reason) in &cases {
        let ack = car.publish_qos1(TOPIC, false, payload.clone()).await;
        assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid, "{payload}");
        let said = ack.properties.and_then(|p| p.reason_string);
        assert_eq!(said.as_deref(), Some(*reason), "{payload}");

        let body = Some(("application/geo+json", payload.clone()));
        let resp = app.topic_request(Method::POST, TOPIC, "", body).await;
        let problem = expect_problem(resp, 422, "unprocessable").await;
        assert_eq!(problem["detail"], format!("invalid location: {reason}"), "{payload}");
    }

    let resource = app.api().get(&format!("/api/v1/topics/{TOPIC}"), None).await;
    expect_problem(resource, 404, "not-found").await;
}

fn accepted(reason: PubAckReason) -> bool {
    matches!(reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers)
}

#[tokio::test]
async fn a_fix_stamped_a_little_ahead_does_not_pin_the_map_against_later_fixes() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("car-1", true, None).await;

    // Four minutes ahead: within the allowed skew, so accepted...
    let ahead = car.publish_qos1(TOPIC, false, location_at(1.0, 1.0, now_ms() + 240_000)).await;
    assert!(accepted(ahead.reason), "{:?}", ahead.reason);
    app.wait_for_map(|m| m["total"] == 1).await;
    // ...but the next correct fix moves the device all the same.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let next = car.publish_qos1(TOPIC, false, location_at(2.0, 2.0, now_ms())).await;
    assert!(accepted(next.reason), "{:?}", next.reason);

    app.wait_for_map(|m| {
        m["features"][0]["geometry"]["coordinates"] == serde_json::json!([2.0, 2.0])
    })
    .await;
}
