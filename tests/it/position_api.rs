//! `GET /api/v1/devices/{id}/position`: the latest fix and last-seen time
//! of one device, for its owner, and for anyone when the device is public;
//! `?since=` map diffs that carry the Features of added and moved devices.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Sse, expect_json, expect_problem, fast_map, location, location_at, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn a_device_position_is_its_latest_fix_with_its_last_seen_time() {
    let app = spawn_app().await;
    let api = app.api();
    let token = api.sign_up("pia").await;
    let car = api.create_device(&token, "Golf", "car").await;
    let path = format!("/api/v1/devices/{}/position", car.id);
    expect_problem(api.get(&path, Some(&token)).await, 404, "not-found").await;
    let mut mqtt = app.v5("golf").credentials(&car.id, &car.secret).connect().await;
    let topic = format!("devices/{}/location", car.id);
    let ts = 1_700_000_000_000_i64.max(crate::helpers::an_hour_ago_ms());

    mqtt.publish_qos1(&topic, false, location_at(13.0, 52.0, ts + 1000)).await;
    mqtt.publish_qos1(&topic, false, location_at(13.1, 52.1, ts)).await;

    let got = expect_json(api.get(&path, Some(&token)).await, StatusCode::OK).await;
    assert_eq!(got["type"], "Feature");
    assert_eq!(got["id"], car.id);
    assert_eq!(got["geometry"]["coordinates"], json!([13.0, 52.0]), "the newest fix wins");
    assert_eq!(got["properties"]["ts"], mapcast::domain::time::format_rfc3339(ts + 1000));
    assert!(got["properties"]["last_seen"].is_string());
    assert_eq!(got["properties"]["speed"], 12.5);
}

#[tokio::test]
async fn a_private_device_position_is_its_owners_alone() {
    let app = spawn_app().await;
    let api = app.api();
    let owner = api.sign_up("quinn").await;
    let stranger = api.sign_up("rex").await;
    let car = api.create_device(&owner, "Golf", "car").await;
    let path = format!("/api/v1/devices/{}/position", car.id);
    let mut mqtt = app.v5("golf").credentials(&car.id, &car.secret).connect().await;
    mqtt.publish_qos1(&format!("devices/{}/location", car.id), false, location(1.0, 2.0)).await;
    let public = expect_json(api.get(&path, Some(&stranger)).await, StatusCode::OK).await;
    assert_eq!(public["geometry"]["coordinates"], json!([1.0, 2.0]));

    let patch = reqwest::Client::new()
        .patch(format!("http://{}/api/v1/devices/{}", app.http_addr, car.id))
        .bearer_auth(&owner)
        .json(&json!({"visibility": "private"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);

    expect_problem(api.get(&path, Some(&stranger)).await, 404, "not-found").await;
    expect_json(api.get(&path, Some(&owner)).await, StatusCode::OK).await;
    expect_problem(api.get("/api/v1/devices/nope/position", Some(&owner)).await, 404, "not-found")
        .await;
}

#[tokio::test]
async fn a_map_diff_carries_the_features_of_added_and_moved_devices() {
    let app = spawn_app_with(fast_map).await;
    let mut fleet = app.v5_client("fleet", true, None).await;
    fleet.publish_qos1("devices/a/location", false, location(1.0, 1.0)).await;
    fleet.publish_qos1("devices/b/location", false, location(2.0, 2.0)).await;
    let before = app.wait_for_map(|m| m["total"] == 2).await;
    let v1 = before["version"].as_u64().unwrap();

    fleet.publish_qos1("devices/b/location", false, location(2.5, 2.0)).await;
    fleet.publish_qos1("devices/c/location", false, location(3.0, 3.0)).await;
    let after = app.wait_for_map(|m| m["total"] == 3).await;
    let diff: Value = app.get_map(&format!("?since={v1}"), &[]).await.json().await.unwrap();

    assert_eq!(diff["added"], json!(["c"]));
    assert_eq!(diff["moved"], json!(["b"]));
    let features = diff["features"].as_array().expect("features");
    let ids: Vec<_> = features.iter().map(|f| f["id"].clone()).collect();
    assert_eq!(ids, [json!("b"), json!("c")]);
    assert_eq!(features[0]["geometry"]["coordinates"], json!([2.5, 2.0]));
    assert_eq!(features[1]["geometry"]["coordinates"], json!([3.0, 3.0]));
    // Exactly the Features of the whole map: applying the diff gives the map.
    let in_map = after["features"].as_array().unwrap();
    assert!(features.iter().all(|f| in_map.contains(f)), "{diff}\n{after}");
    let same: Value =
        app.get_map(&format!("?since={}", after["version"]), &[]).await.json().await.unwrap();
    assert_eq!(same["features"], json!([]));
}

#[tokio::test]
async fn listed_cors_origins_may_call_the_api_and_others_get_no_cors_headers() {
    let app =
        spawn_app_with(|s| s.http.cors_origins = vec!["https://app.example.org".into()]).await;
    let plain = spawn_app().await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", app.http_addr);
    let acao = |r: &reqwest::Response| {
        r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
    };

    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{base}/api/v1/devices"))
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    let get = client
        .get(format!("{base}/healthz"))
        .header("origin", "https://app.example.org")
        .send()
        .await
        .unwrap();
    let refused = client
        .get(format!("{base}/api/v1/devices"))
        .header("origin", "https://app.example.org")
        .send()
        .await
        .unwrap();
    let stranger = client
        .get(format!("{base}/healthz"))
        .header("origin", "https://evil.example.org")
        .send()
        .await
        .unwrap();
    let unconfigured = client
        .get(format!("http://{}/healthz", plain.http_addr))
        .header("origin", "https://app.example.org")
        .send()
        .await
        .unwrap();

    assert_eq!(preflight.status(), 204);
    assert_eq!(acao(&preflight).as_deref(), Some("https://app.example.org"));
    let h = preflight.headers();
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    assert_eq!(acao(&get).as_deref(), Some("https://app.example.org"));
    assert!(get.headers()["access-control-expose-headers"].to_str().unwrap().contains("etag"));
    assert_eq!(refused.status(), 401);
    assert_eq!(acao(&refused).as_deref(), Some("https://app.example.org"), "errors too");
    assert_eq!(acao(&stranger), None);
    assert_eq!(acao(&unconfigured), None);
}

async fn sse_with(app: &crate::helpers::TestApp, query: &str, last_id: Option<&str>) -> Sse {
    let mut req =
        reqwest::Client::new().get(format!("http://{}/api/v1/subscribe?{query}", app.http_addr));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    Sse::open(req.send().await.unwrap()).await
}

#[tokio::test]
async fn one_sse_stream_carries_several_filters_with_an_id_on_every_event_and_resumes() {
    let app = spawn_app().await;
    let mut fleet = app.v5_client("fleet", true, None).await;
    fleet.publish_qos1("devices/a/location", true, location(1.0, 1.0)).await;
    fleet.publish_qos1("devices/b/location", true, location(2.0, 2.0)).await;
    let query = "filter=devices/a/location&filter=devices/b/location";

    let mut sse = sse_with(&app, query, None).await;
    let mut retained = [sse.next_event_with_id().await, sse.next_event_with_id().await];
    retained.sort_by(|x, y| x.1["topic"].as_str().cmp(&y.1["topic"].as_str()));
    fleet.publish_qos1("devices/b/location", true, location(2.5, 2.0)).await;
    let (last_id, live) = sse.next_event_with_id().await;
    drop(sse);

    assert_eq!(retained[0].1["topic"], "devices/a/location");
    assert_eq!(retained[1].1["topic"], "devices/b/location");
    assert!(retained.iter().all(|(id, _)| id.is_some()), "an id on every event");
    assert_eq!(live["topic"], "devices/b/location");
    let last_id = last_id.expect("an id on a live event");
    // While the client is away only `a` changes; resuming gets just that.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    fleet.publish_qos1("devices/a/location", true, location(1.5, 1.0)).await;
    let mut resumed = sse_with(&app, query, Some(&last_id)).await;
    let (_, first) = resumed.next_event_with_id().await;
    assert_eq!(first["topic"], "devices/a/location");
    assert_eq!(first["payload"]["geometry"]["coordinates"], json!([1.5, 1.0]));
    assert!(resumed.try_next_event(crate::helpers::QUIET).await.is_none(), "b was not sent again");
    let too_many = (0..9).map(|i| format!("filter=x/{i}")).collect::<Vec<_>>().join("&");
    let resp = app.sse_request_with(&[]).await;
    expect_problem(resp, 400, "bad-request").await;
    let resp = reqwest::get(format!("http://{}/api/v1/subscribe?{too_many}", app.http_addr))
        .await
        .unwrap();
    expect_problem(resp, 400, "bad-request").await;
}

#[tokio::test]
async fn a_resuming_sse_stream_gets_the_publishes_it_missed_once_or_a_reset_beyond_the_window() {
    let app = spawn_app_with(|s| s.broker.limits.replay_messages = 5).await;
    let mut car = app.v5_client("car", true, None).await;
    let mut sse = sse_with(&app, "filter=fleet/%2B/status", None).await;
    car.publish_qos1("fleet/a/status", false, "\"parked\"").await;
    let (last_id, _) = sse.next_event_with_id().await;
    drop(sse);

    // Away: three publishes on the stream's topics, one elsewhere.
    for (topic, payload) in [
        ("fleet/a/status", "driving"),
        ("fleet/b/status", "parked"),
        ("chat/x", "hi"),
        ("fleet/a/status", "parked"),
    ] {
        car.publish_qos1(topic, false, format!("\"{payload}\"")).await;
    }
    let mut resumed = sse_with(&app, "filter=fleet/%2B/status", last_id.as_deref()).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (id, event) = resumed.next_event_with_id().await;
        assert!(id.is_some(), "replayed events carry ids too");
        got.push(format!("{} {}", event["topic"].as_str().unwrap(), event["payload"]));
    }
    assert_eq!(
        got,
        [r#"fleet/a/status "driving""#, r#"fleet/b/status "parked""#, r#"fleet/a/status "parked""#]
    );
    // Live again, and nothing twice.
    car.publish_qos1("fleet/b/status", false, "\"driving\"").await;
    let (_, live) = resumed.next_event_with_id().await;
    assert_eq!(live["payload"], "driving");
    assert!(resumed.try_next_event(crate::helpers::QUIET).await.is_none(), "nothing sent twice");
    drop(resumed);

    // More than the broker keeps went by: the client is told to start over.
    for i in 0..10 {
        car.publish_qos1("fleet/c/status", false, format!("{i}")).await;
    }
    let mut late = sse_with(&app, "filter=fleet/%2B/status", last_id.as_deref()).await;
    let (name, data) = late.next_named_event().await;
    assert_eq!(name.as_deref(), Some("reset"), "{data}");
    assert!(data["reason"].as_str().unwrap().contains("no longer kept"));
}

#[tokio::test]
async fn a_ticket_opens_one_stream_of_exactly_its_filters() {
    let app = spawn_app().await;
    let api = app.api();
    let token = api.sign_up("tia").await;
    let car = api.create_device(&token, "Golf", "car").await;
    let own = format!("devices/{}/location", car.id);
    let ticket = |more: Vec<String>| {
        let api = api.clone();
        let token = token.clone();
        async move {
            let body = json!({"filter": "map/version", "more_filters": more});
            let resp = api.post_json("/api/v1/subscribe/tickets", Some(&token), &body).await;
            expect_json(resp, StatusCode::CREATED).await["ticket"].as_str().unwrap().to_owned()
        }
    };
    let open = |query: String| async move {
        reqwest::get(format!("http://{}/api/v1/subscribe?{query}", app.http_addr)).await.unwrap()
    };

    let t = ticket(vec![own.clone()]).await;
    let both = format!("filter=map/version&filter={own}&ticket={t}");
    let _stream = Sse::open(open(both.clone()).await).await;
    let again = open(both).await;
    let t2 = ticket(vec![own.clone()]).await;
    let fewer = open(format!("filter=map/version&ticket={t2}")).await;
    let foreign = json!({"filter": "map/version", "more_filters": ["devices/other/location"]});
    let refused = api.post_json("/api/v1/subscribe/tickets", Some(&token), &foreign).await;

    expect_problem(again, 401, "unauthorized").await;
    expect_problem(fewer, 401, "unauthorized").await;
    expect_problem(refused, 403, "forbidden").await;
}
