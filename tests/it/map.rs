//! The map updater and `GET /api/v1/map`: snapshots of the active devices
//! with a rising version, conditional and gzip responses, bbox filtering,
//! diffs since a version, the retained `map/*` topics, and restarts.

use std::io::Read;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

use crate::helpers::{
    expect_problem, fast_map, feature_ids, location, spawn_app_in, spawn_app_with, text,
};

#[tokio::test]
async fn the_map_lists_active_devices_with_version_total_and_bbox() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("fleet", true, None).await;
    car.publish_qos1("devices/berlin/location", false, location(13.4, 52.5)).await;
    car.publish_qos1("devices/paris/location", false, location(2.35, 48.85)).await;

    let map = app.wait_for_map(|m| m["total"] == 2).await;

    assert_eq!(map["type"], "FeatureCollection");
    assert_eq!(feature_ids(&map), ["berlin", "paris"]);
    assert_eq!(map["bbox"], serde_json::json!([2.35, 48.85, 13.4, 52.5]));
    assert!(map["version"].as_u64().unwrap() >= 1);
    assert!(map["generated_at"].as_str().unwrap().ends_with('Z'));
    car.publish_qos1("devices/paris/location", false, location(2.36, 48.85)).await;
    let later = app.wait_for_map(|m| m["version"].as_u64() > map["version"].as_u64()).await;
    assert_eq!(later["total"], 2, "a move makes a new version");
}

#[tokio::test]
async fn an_unchanged_map_keeps_its_version_and_is_not_republished() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("car", true, None).await;
    car.publish_qos1("devices/car/location", false, location(7.0, 8.0)).await;
    let map = app.wait_for_map(|m| m["total"] == 1).await;
    let mut phone = app.v5_client("phone", true, None).await;
    phone.subscribe("map/version", QoS::AtLeastOnce).await;
    let retained = phone.recv_publish().await;
    assert!(retained.retain);

    // Several 1 s ticks pass with nothing new.
    phone.expect_no_publish(Duration::from_millis(2500)).await;

    let again: Value = app.get_map("", &[]).await.json().await.unwrap();
    assert_eq!(again["version"], map["version"]);
}

#[tokio::test]
async fn etag_is_the_version_and_gzip_is_served_when_accepted() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("car", true, None).await;
    car.publish_qos1("devices/car/location", false, location(1.0, 2.0)).await;
    app.wait_for_map(|m| m["total"] == 1).await;

    let plain = app.get_map("", &[]).await;
    let etag = plain.headers()["etag"].to_str().unwrap().to_owned();
    let doc: Value = plain.json().await.unwrap();
    let cached = app.get_map("", &[("if-none-match", &etag)]).await;
    let gz = app.get_map("", &[("accept-encoding", "gzip")]).await;

    assert_eq!(etag, format!("\"{}\"", doc["version"]));
    assert!(
        cached.status() == 304 || cached.headers()["etag"] != etag.as_str(),
        "304 unless a new version came out in between"
    );
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.headers()["content-type"], "application/geo+json");
    let mut unpacked = String::new();
    flate2::read::GzDecoder::new(&gz.bytes().await.unwrap()[..])
        .read_to_string(&mut unpacked)
        .unwrap();
    let unpacked: Value = serde_json::from_str(&unpacked).unwrap();
    assert_eq!(feature_ids(&unpacked), ["car"]);
}

#[tokio::test]
async fn bbox_filters_and_bad_bboxes_are_problems() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("fleet", true, None).await;
    car.publish_qos1("devices/berlin/location", false, location(13.4, 52.5)).await;
    car.publish_qos1("devices/sf/location", false, location(-122.4, 37.8)).await;
    app.wait_for_map(|m| m["total"] == 2).await;

    let europe: Value = app.get_map("?bbox=-10,35,30,60", &[]).await.json().await.unwrap();

    assert_eq!(feature_ids(&europe), ["berlin"]);
    assert_eq!(europe["total"], 1);
    for bad in ["1,2,3", "a,b,c,d", "0,10,1,5", "-200,0,0,1"] {
        let resp = app.get_map(&format!("?bbox={bad}"), &[]).await;
        expect_problem(resp, 400, "bad-request").await;
    }
}

#[tokio::test]
async fn since_answers_with_added_moved_and_removed_ids() {
    let app = spawn_app_with(|s| {
        fast_map(s);
        s.map.ttl_secs = 3;
    })
    .await;
    let mut fleet = app.v5_client("fleet", true, None).await;
    fleet.publish_qos1("devices/a/location", false, location(1.0, 1.0)).await;
    fleet.publish_qos1("devices/b/location", false, location(2.0, 2.0)).await;
    let before = app.wait_for_map(|m| m["total"] == 2).await;
    let v1 = before["version"].as_u64().unwrap();

    fleet.publish_qos1("devices/b/location", false, location(2.5, 2.0)).await;
    fleet.publish_qos1("devices/c/location", false, location(3.0, 3.0)).await;
    app.wait_for_map(|m| m["total"] == 3).await;
    let diff: Value = app.get_map(&format!("?since={v1}"), &[]).await.json().await.unwrap();

    assert_eq!(diff["since"], v1);
    assert_eq!(diff["added"], serde_json::json!(["c"]));
    assert_eq!(diff["moved"], serde_json::json!(["b"]));
    assert_eq!(diff["removed"], serde_json::json!([]));
    // `a` falls out of the TTL while `c` keeps reporting.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        fleet.publish_qos1("devices/c/location", false, location(3.0, 3.0)).await;
        fleet.publish_qos1("devices/b/location", false, location(2.5, 2.0)).await;
    }
    let now = app.wait_for_map(|m| !feature_ids(m).contains(&"a".to_owned())).await;
    let diff: Value = app.get_map(&format!("?since={v1}"), &[]).await.json().await.unwrap();
    assert!(diff["version"].as_u64() >= now["version"].as_u64());
    assert_eq!(diff["removed"], serde_json::json!(["a"]));
    expect_problem(app.get_map("?since=0", &[]).await, 410, "gone").await;
    expect_problem(app.get_map("?since=999999", &[]).await, 400, "bad-request").await;
    expect_problem(app.get_map("?since=abc", &[]).await, 400, "bad-request").await;
}

#[tokio::test]
async fn the_snapshot_is_published_retained_over_mqtt() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("car", true, None).await;
    car.publish_qos1("devices/car/location", false, location(7.0, 8.0)).await;
    app.wait_for_map(|m| m["total"] == 1).await;

    let mut phone = app.v5_client("phone", true, None).await;
    phone.subscribe("map/#", QoS::AtLeastOnce).await;
    let got = phone.recv_publishes(3).await;

    let by_topic = |t: &str| got.iter().find(|p| crate::helpers::v5_topic(p) == t).unwrap();
    let snapshot = by_topic("map/snapshot");
    assert!(snapshot.retain);
    let ct = snapshot.properties.as_ref().and_then(|p| p.content_type.clone());
    assert_eq!(ct.as_deref(), Some("application/geo+json"));
    let doc: Value = serde_json::from_slice(&snapshot.payload).unwrap();
    assert_eq!(feature_ids(&doc), ["car"]);
    let gz = by_topic("map/snapshot.gz");
    let ct = gz.properties.as_ref().and_then(|p| p.content_type.clone());
    assert_eq!(ct.as_deref(), Some("application/gzip"));
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(&gz.payload[..]).read_to_end(&mut unpacked).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&unpacked).unwrap()["total"], 1);
    let version: Value = serde_json::from_str(&text(&by_topic("map/version").payload)).unwrap();
    assert!(version["version"].as_u64().unwrap() >= doc["version"].as_u64().unwrap());
}

#[tokio::test]
async fn a_restart_keeps_positions_and_the_version_keeps_rising() {
    let data_dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(data_dir.path(), fast_map).await;
    let mut car = app.v5_client("car", true, None).await;
    car.publish_qos1("devices/kept/location", false, location(4.0, 5.0)).await;
    let before = app.wait_for_map(|m| m["total"] == 1).await;
    let version = before["version"].as_u64().unwrap();
    drop(car);
    app.stop().await;

    let app = spawn_app_in(data_dir.path(), fast_map).await;
    let after = app.wait_for_map(|m| m["total"] == 1).await;

    assert!(after["version"].as_u64().unwrap() > version, "{} vs {version}", after["version"]);
    assert_eq!(feature_ids(&after), ["kept"]);
    assert_eq!(after["features"][0]["geometry"]["coordinates"], serde_json::json!([4.0, 5.0]));
}

#[tokio::test]
async fn each_build_records_its_version_count_sizes_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path(), fast_map).await;
    let mut car = app.v5_client("car", true, None).await;
    car.publish_qos1("devices/car/location", false, location(1.0, 2.0)).await;
    let map = app.wait_for_map(|m| feature_ids(m) == ["car"]).await;
    let version = map["version"].as_i64().unwrap();
    let served = app.get_map("", &[]).await.bytes().await.unwrap();

    let db = format!("sqlite://{}/mapcast.db", dir.path().display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let deadline = tokio::time::Instant::now() + crate::helpers::RECV;
    let (count, raw_bytes, gzip_bytes, build_ms) = loop {
        let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT count, raw_bytes, gzip_bytes, build_ms FROM map_snapshots WHERE version = ?",
        )
        .bind(version)
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(row) = row {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "version {version} is not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(count, 1);
    assert_eq!(raw_bytes, served.len() as i64, "the raw size is the served document's");
    assert!(gzip_bytes > 0, "{gzip_bytes}");
    assert!((0..5_000).contains(&build_ms), "{build_ms}");
}

#[tokio::test]
async fn each_published_build_shows_on_metrics() {
    let app = spawn_app_with(fast_map).await;
    let mut car = app.v5_client("metered", true, None).await;
    car.publish_qos1("devices/metered/location", false, location(4.9, 52.4)).await;
    app.wait_for_map(|m| m["total"] == 1).await;

    // Metrics are process-wide and other tests build maps too: lower bounds.
    let metric = |name: &'static str| crate::helpers::metric(app.http_addr, name);
    assert!(metric("mapcast_updater_builds_total").await >= 1.0);
    assert!(metric("mapcast_updater_snapshot_devices").await >= 1.0);
    assert!(metric("mapcast_updater_snapshot_bytes").await > 100.0);
    assert!(metric("mapcast_updater_snapshot_gzip_bytes").await > 0.0);
    let text = app.http_get("/metrics").await.text().await.unwrap();
    assert!(text.contains("# TYPE mapcast_updater_last_build_milliseconds gauge"), "{text}");
}
