//! Positions published to `devices/{id}/location`: valid ones reach the
//! retained value, the history and the map; invalid ones are refused (v5
//! PUBACK 0x99 with a reason, v3 dropped) and stored nowhere — over MQTT and
//! REST alike.

use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use serde_json::Value;

use crate::helpers::{
    QUIET, TestApp, expect_problem, fast_map, feature_ids, location, spawn_app, spawn_app_with,
    text,
};

async fn history(app: &TestApp, topic: &str) -> Value {
    let resp = app.api().get(&format!("/api/v1/history/{topic}"), None).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_location_published_over_mqtt_appears_as_resource_in_history_and_on_the_map() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("car-1", true, None).await;
    let payload = location(13.405, 52.52);

    let ack = car.publish_qos1("devices/car-1/location", true, payload.clone()).await;

    assert!(
        matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers),
        "{ack:?}"
    );
    let resource = app.api().get("/api/v1/topics/devices/car-1/location", None).await;
    assert_eq!(resource.status(), 200);
    assert_eq!(resource.headers()["content-type"], "application/json");
    assert!(resource.headers().contains_key("etag"));
    assert_eq!(resource.text().await.unwrap(), payload);
    let stored = history(&app, "devices/car-1/location").await;
    let want: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(stored["items"][0]["payload"], want);
    assert_eq!(stored["items"][0]["topic"], "devices/car-1/location");
    let map = app.wait_for_map(|m| feature_ids(m).contains(&"car-1".to_owned())).await;
    let feature = &map["features"][0];
    assert_eq!(feature["geometry"]["coordinates"], serde_json::json!([13.405, 52.52]));
    assert_eq!(feature["properties"]["kind"], "car");
    assert_eq!(map["total"], 1);
}

#[tokio::test]
async fn an_invalid_location_gets_puback_0x99_with_the_reason_and_is_stored_nowhere() {
    let app = spawn_app_with(fast_map).await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("devices/#", QoS::AtLeastOnce).await;
    let mut car = app.v5_client("car-2", true, None).await;
    let out_of_range = location(13.4, 52.5).replace("13.4", "200.0");

    let ack = car.publish_qos1("devices/car-2/location", true, out_of_range).await;
    let not_json = car.publish_qos1("devices/car-2/location", false, "here").await;

    assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid);
    let reason = ack.properties.and_then(|p| p.reason_string);
    assert_eq!(reason.as_deref(), Some("longitude must be within [-180, 180]"));
    assert_eq!(not_json.reason, PubAckReason::PayloadFormatInvalid);
    watcher.expect_quiet().await;
    let resource = app.api().get("/api/v1/topics/devices/car-2/location", None).await;
    expect_problem(resource, 404, "not-found").await;
    assert_eq!(history(&app, "devices/car-2/location").await["items"], serde_json::json!([]));
    // The connection is still fine: a valid one goes through.
    let ok = car.publish_qos1("devices/car-2/location", false, location(1.0, 2.0)).await;
    assert_eq!(ok.reason, PubAckReason::Success);
}

#[tokio::test]
async fn an_invalid_location_from_a_v3_client_is_dropped_and_the_connection_survives() {
    let app = spawn_app_with(fast_map).await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("devices/#", QoS::AtLeastOnce).await;
    let mut car = app.v3_client("car-3", true).await;

    // 3.1.1 has no negative PUBACK: acked (so it is not resent) and dropped.
    car.publish_qos1("devices/car-3/location", false, r#"{"type":"Feature"}"#).await;
    watcher.expect_quiet().await;
    car.publish_qos1("devices/car-3/location", false, location(5.0, 6.0)).await;

    let got = watcher.recv_publish().await;
    assert!(text(&got.payload).contains("[5.0,6.0]"), "{}", text(&got.payload));
    watcher.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn a_rest_publish_of_an_invalid_location_is_a_problem_and_not_stored() {
    let app = spawn_app_with(fast_map).await;
    let topic = "devices/car-4/location";

    let malformed = app.put_json(topic, "{not json").await;
    let wrong_type = app.put_json(topic, r#"{"type":"Feature","geometry":null}"#).await;
    let no_ts = app
        .put_json(
            topic,
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2]},"properties":{}}"#,
        )
        .await;

    expect_problem(malformed, 400, "bad-request").await;
    let p = expect_problem(wrong_type, 422, "unprocessable").await;
    assert_eq!(p["detail"], "invalid location: feature has no geometry");
    let p = expect_problem(no_ts, 422, "unprocessable").await;
    assert_eq!(p["detail"], "invalid location: properties.ts is required");
    let resource = app.topic_request(Method::GET, topic, "", None).await;
    expect_problem(resource, 404, "not-found").await;
    assert_eq!(history(&app, topic).await["items"], serde_json::json!([]));
}

#[tokio::test]
async fn clearing_a_retained_location_with_an_empty_payload_is_allowed() {
    let app = spawn_app_with(fast_map).await;
    let topic = "devices/car-5/location";
    assert_eq!(app.put_json(topic, &location(1.0, 1.0)).await.status(), 202);

    let cleared = app.topic_request(Method::DELETE, topic, "", None).await;

    assert_eq!(cleared.status(), 204);
    let resource = app.topic_request(Method::GET, topic, "", None).await;
    expect_problem(resource, 404, "not-found").await;
}

/// The same flow on PostgreSQL: history, latest position and the map.
#[tokio::test]
async fn locations_history_and_the_map_work_on_postgres() {
    use crate::helpers::{fresh_postgres_database, mark_postgres_ran, postgres_test_url};
    let Some(base) = postgres_test_url("locations_history_and_the_map_work_on_postgres") else {
        return;
    };
    let url = fresh_postgres_database(&base).await;
    let data_dir = tempfile::tempdir().unwrap();
    let settings = |s: &mut mapcast::config::Settings| {
        fast_map(s);
        s.database.url = Some(mapcast::domain::Secret::new(url.clone()));
    };
    let app = crate::helpers::spawn_app_in(data_dir.path(), settings).await;
    let mut car = app.v5_client("pg-car", true, None).await;
    for (i, lon) in [10.0, 10.5, 11.0].into_iter().enumerate() {
        let ack = car.publish_qos1("devices/pg-car/location", false, location(lon, 50.0)).await;
        assert!(
            matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers),
            "{i}: {ack:?}"
        );
    }
    let page = app.api().get("/api/v1/history/devices/pg-car/location?limit=2", None).await;
    let page: Value = page.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["payload"]["geometry"]["coordinates"][0], 11.0);
    let cursor = page["next_cursor"].as_str().expect("a second page").to_owned();
    let rest = app
        .api()
        .get(&format!("/api/v1/history/devices/pg-car/location?cursor={cursor}"), None)
        .await;
    let rest: Value = rest.json().await.unwrap();
    assert_eq!(rest["items"][0]["payload"]["geometry"]["coordinates"][0], 10.0);
    let map = app.wait_for_map(|m| feature_ids(m) == ["pg-car"]).await;
    let version = map["version"].as_u64().unwrap();
    app.stop().await;

    let app = crate::helpers::spawn_app_in(data_dir.path(), settings).await;
    let map = app.wait_for_map(|m| m["version"].as_u64() > Some(version)).await;
    assert_eq!(feature_ids(&map), ["pg-car"], "the position survived the restart");
    assert_eq!(map["features"][0]["geometry"]["coordinates"][0], 11.0);
    mark_postgres_ran().await;
}

#[tokio::test]
async fn a_will_that_is_an_invalid_location_is_refused_at_connect_with_0x99() {
    let app = spawn_app().await;

    let refused = app
        .v5("car")
        .will("devices/car/location", "{\"type\":\"Feature\"}", QoS::AtLeastOnce, false, None)
        .try_connect()
        .await;
    let valid = app
        .v5("car2")
        .will("devices/car2/location", &location(1.0, 2.0), QoS::AtLeastOnce, false, None)
        .try_connect()
        .await;

    assert_eq!(
        refused.err().and_then(|c| c.refused),
        Some(rumqttc::v5::mqttbytes::v5::ConnectReturnCode::PayloadFormatInvalid)
    );
    assert!(valid.is_ok(), "a valid location will is accepted");
}

#[tokio::test]
async fn a_location_will_is_stored_like_a_published_position() {
    let data_dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::spawn_app_in(data_dir.path(), fast_map).await;
    let topic = "devices/car-w/location";
    let car = app
        .v5("car-w")
        .will(topic, &location(7.5, 45.5), QoS::AtLeastOnce, false, None)
        .connect()
        .await;

    car.kill().await;

    let deadline = tokio::time::Instant::now() + crate::helpers::RECV;
    let stored = loop {
        let stored = history(&app, topic).await;
        if stored["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break stored;
        }
        assert!(tokio::time::Instant::now() < deadline, "the will never reached the history");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(stored["items"][0]["payload"]["geometry"]["coordinates"][0], 7.5);
    let map = app.wait_for_map(|m| feature_ids(m).contains(&"car-w".to_owned())).await;
    let version = map["version"].as_u64().unwrap();
    app.stop().await;
    // After a restart the map is rebuilt from the stored latest positions.
    let app = crate::helpers::spawn_app_in(data_dir.path(), fast_map).await;
    let map = app.wait_for_map(|m| m["version"].as_u64() > Some(version)).await;
    assert_eq!(feature_ids(&map), ["car-w"], "the will's position is the latest one");
}

/// The value of an unlabelled Prometheus sample in `/metrics`.
async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app.http_get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[tokio::test]
async fn invalid_locations_are_counted_on_sys_and_in_metrics() {
    let app = spawn_app_with(|s| {
        fast_map(s);
        s.broker.sys_interval_secs = 1;
    })
    .await;
    let mut sys = app.v5_client("sys-watch", true, None).await;
    sys.subscribe("$SYS/broker/publish/messages/invalid", QoS::AtMostOnce).await;
    let mut car = app.v5_client("car-6", true, None).await;
    assert_eq!(metric(&app, "mapcast_publish_invalid_payload_total").await, 0);

    let mqtt = car.publish_qos1("devices/car-6/location", false, "{}").await;
    let rest = app.put_json("devices/car-6/location", "[1,2]").await;

    assert_eq!(mqtt.reason, PubAckReason::PayloadFormatInvalid);
    assert_eq!(rest.status(), 422);
    assert_eq!(metric(&app, "mapcast_publish_invalid_payload_total").await, 2);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(4);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let got = sys.try_recv_publish(left).await.expect("$SYS never counted both");
        if text(&got.payload) == "2" {
            break;
        }
    }
}
