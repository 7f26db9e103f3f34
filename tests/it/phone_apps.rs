//! The phone apps people already carry, pointed at mapcast as the README
//! says: OwnTracks over MQTT and HTTP, Traccar Client / OsmAnd over HTTP
//! (query, form and JSON). Payloads are replayed as each app documents
//! them; bad input from each is refused with a 4xx (or PUBACK 0x99) and a
//! reason, and the device stays where it was.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use serde_json::{Value, json};

use crate::helpers::{
    Api, DeviceCreds, QUIET, ServerProcess, TestApp, V3Options, expect_json, expect_problem,
    fast_map, feature_ids, spawn_app_with,
};

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An OwnTracks `_type: location` as the app publishes it (booklet, JSON).
fn owntracks_location(lat: f64, lon: f64) -> String {
    json!({
        "_type": "location", "acc": 12, "alt": 34, "batt": 81, "bs": 1, "cog": 270,
        "conn": "w", "created_at": now_secs(), "lat": lat, "lon": lon, "m": 1, "t": "u",
        "tid": "px", "tst": now_secs(), "vac": 3, "vel": 36
    })
    .to_string()
}

/// A user with one phone; the user's token and the phone's credentials.
async fn phone(app: &TestApp, user: &str) -> (String, DeviceCreds) {
    let api = app.api();
    let token = api.sign_up(user).await;
    let device = api.create_device(&token, "Pixel", "phone").await;
    (token, device)
}

async fn position(app: &TestApp, token: &str, id: &str) -> Value {
    let resp = app.api().get(&format!("/api/v1/devices/{id}/position"), Some(token)).await;
    expect_json(resp, StatusCode::OK).await
}

async fn history(app: &TestApp, id: &str) -> Value {
    let resp = app.api().get(&format!("/api/v1/history/devices/{id}/location"), None).await;
    expect_json(resp, StatusCode::OK).await
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-6)
}

#[tokio::test]
async fn an_owntracks_phone_over_mqtt_appears_on_the_map_with_its_trail() {
    let app = spawn_app_with(fast_map).await;
    let (token, ph) = phone(&app, "olga").await;
    let topic = format!("owntracks/{}/pixel", ph.id);
    // As the app connects: MQTT 3.1.1, its lwt registered as the will.
    let lwt = json!({"_type": "lwt", "tst": now_secs()}).to_string();
    let mut client = V3Options::new("owntracks-pixel", app.mqtt_addr)
        .credentials(&ph.id, &ph.secret)
        .will(&topic, &lwt, rumqttc::QoS::AtLeastOnce, false)
        .connect()
        .await;

    client.publish_qos1(&topic, true, owntracks_location(52.52, 13.405)).await;

    let map = app.wait_for_map(|m| feature_ids(m).contains(&ph.id)).await;
    let feature = map["features"].as_array().unwrap().iter().find(|f| f["id"] == ph.id).unwrap();
    assert_eq!(feature["geometry"]["coordinates"], json!([13.405, 52.52, 34.0]));
    let got = position(&app, &token, &ph.id).await;
    assert!(close(&got["properties"]["speed"], 10.0), "36 km/h is 10 m/s: {got}");
    assert_eq!(got["properties"]["heading"], 270.0);
    assert_eq!(got["properties"]["battery"], 81.0);
    assert_eq!(got["properties"]["kind"], "phone");
    let trail = history(&app, &ph.id).await;
    assert_eq!(
        trail["items"][0]["payload"]["geometry"]["coordinates"],
        json!([13.405, 52.52, 34.0])
    );
    // The lwt and a transition are routed, not positions.
    let transition = json!({"_type": "transition", "wtst": 1, "lat": 1.0, "lon": 2.0, "tst": now_secs(), "acc": 10, "tid": "px", "event": "enter", "desc": "Home", "t": "c"});
    client.publish_qos1(&format!("{topic}/event"), false, transition.to_string()).await;
    client.publish_qos1(&topic, false, lwt).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(position(&app, &token, &ph.id).await["geometry"], got["geometry"]);
}

#[tokio::test]
async fn bad_owntracks_input_over_mqtt_is_refused_with_its_reason() {
    let app = spawn_app_with(fast_map).await;
    let (token, ph) = phone(&app, "oskar").await;
    let (_, other) = phone(&app, "otto").await;
    let topic = format!("owntracks/{}/pixel", ph.id);
    let mut client = app.v5("ot-v5").credentials(&ph.id, &ph.secret).connect().await;
    let ok = client.publish_qos1(&topic, false, owntracks_location(1.0, 2.0)).await;
    assert!(matches!(ok.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers));

    let no_lat = json!({"_type": "location", "lon": 2.0, "tst": now_secs()}).to_string();
    let lat_91 = owntracks_location(91.0, 2.0);
    let no_tst = json!({"_type": "location", "lat": 1.0, "lon": 2.0}).to_string();
    let cases = [
        (no_lat, "lat and lon are required numbers"),
        (lat_91, "latitude must be within [-90, 90]"),
        (no_tst, "the fix time is missing or not a valid time"),
        ("not json".to_owned(), "payload is not valid UTF-8 JSON"),
    ];
    for (payload, reason) in cases {
        let ack = client.publish_qos1(&topic, false, payload.clone()).await;
        assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid, "{payload}");
        assert_eq!(ack.properties.and_then(|p| p.reason_string).as_deref(), Some(reason));
    }
    // Another device's tree is not this phone's to write.
    let foreign = format!("owntracks/{}/pixel", other.id);
    let ack = client.publish_qos1(&foreign, false, owntracks_location(5.0, 5.0)).await;
    assert_eq!(ack.reason, PubAckReason::NotAuthorized);
    // Unknown device and wrong secret: no session at all.
    assert!(app.v5("ot-x").credentials("no-such-device", &ph.secret).try_connect().await.is_err());
    assert!(app.v5("ot-y").credentials(&ph.id, "wrong secret").try_connect().await.is_err());

    let got = position(&app, &token, &ph.id).await;
    assert_eq!(got["geometry"]["coordinates"], json!([2.0, 1.0, 34.0]));
}

/// A request as OwnTracks sends it in HTTP mode.
async fn owntracks_http(app: &TestApp, user: &str, secret: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}/api/v1/owntracks", app.http_addr))
        .header("authorization", format!("Basic {}", STANDARD.encode(format!("{user}:{secret}"))))
        .header("content-type", "application/json")
        .header("x-limit-u", user)
        .header("x-limit-d", "pixel")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn owntracks_http_mode_posts_reach_the_map_and_mqtt_subscribers() {
    let app = spawn_app_with(fast_map).await;
    let (token, ph) = phone(&app, "hanna").await;
    let mut watcher = app.v5("watch").credentials(&ph.id, &ph.secret).connect().await;
    watcher.subscribe(&format!("owntracks/{}/#", ph.id), V5QoS::AtLeastOnce).await;

    let resp = owntracks_http(&app, &ph.id, &ph.secret, &owntracks_location(48.1, 11.5)).await;

    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "[]");
    let got = watcher.recv_publish().await;
    assert_eq!(&*got.topic, format!("owntracks/{}/pixel", ph.id).as_bytes());
    app.wait_for_map(|m| feature_ids(m).contains(&ph.id)).await;
    assert_eq!(
        position(&app, &token, &ph.id).await["geometry"]["coordinates"],
        json!([11.5, 48.1, 34.0])
    );
}

#[tokio::test]
async fn bad_owntracks_http_posts_are_4xx_with_a_reason_and_counted() {
    let app = spawn_app_with(fast_map).await;
    let (_, ph) = phone(&app, "henri").await;
    let before = refused(&app, "owntracks").await;
    let good = owntracks_location(1.0, 2.0);
    let no_lat = json!({"_type": "location", "lon": 2.0, "tst": now_secs()}).to_string();

    let cases = [
        (owntracks_http(&app, &ph.id, "wrong secret", &good).await, 401, "unauthorized"),
        (owntracks_http(&app, "no-such-device", &ph.secret, &good).await, 401, "unauthorized"),
        (owntracks_http(&app, &ph.id, &ph.secret, &no_lat).await, 422, "unprocessable"),
        (
            owntracks_http(&app, &ph.id, &ph.secret, &owntracks_location(91.0, 2.0)).await,
            422,
            "unprocessable",
        ),
        (owntracks_http(&app, &ph.id, &ph.secret, "{\"lat\":1}").await, 400, "bad-request"),
    ];
    let n = cases.len() as f64;
    let reasons = [
        "unknown device or wrong secret",
        "unknown device or wrong secret",
        "lat and lon are required numbers",
        "latitude must be within [-90, 90]",
        "OwnTracks JSON object",
    ];
    for ((resp, status, code), reason) in cases.into_iter().zip(reasons) {
        let problem = expect_problem(resp, status, code).await;
        assert!(problem["detail"].as_str().unwrap().contains(reason), "{problem}");
    }
    let anonymous = app
        .api()
        .send(Method::POST, "/api/v1/owntracks", None, Some(("application/json", good)))
        .await;
    expect_problem(anonymous, 401, "unauthorized").await;
    assert_eq!(refused(&app, "owntracks").await, before + n + 1.0);
    let resp = app.api().get(&format!("/api/v1/topics/owntracks/{}/pixel", ph.id), None).await;
    assert_eq!(resp.status(), 404, "nothing was published");
}

async fn refused(app: &TestApp, protocol: &str) -> f64 {
    crate::helpers::metric(
        app.http_addr,
        &format!("mapcast_phone_reports_refused_total{{protocol=\"{protocol}\"}}"),
    )
    .await
}

fn osmand_url(app: &TestApp, secret: &str) -> String {
    format!("http://{}/api/v1/osmand/{secret}", app.http_addr)
}

#[tokio::test]
async fn traccar_client_reports_in_query_form_and_json_formats_all_move_the_device() {
    let app = spawn_app_with(fast_map).await;
    let (token, ph) = phone(&app, "tess").await;
    let client = reqwest::Client::new();
    let url = osmand_url(&app, &ph.secret);

    // Query, as Traccar Client before 9 and OsmAnd send it (speed in knots).
    let query = format!(
        "{url}?id={}&timestamp={}&lat=52.52&lon=13.405&speed=10&bearing=90&altitude=34&accuracy=5&batt=81",
        ph.id,
        now_secs()
    );
    assert_eq!(client.post(&query).send().await.unwrap().status(), 200);
    let got = position(&app, &token, &ph.id).await;
    assert_eq!(got["geometry"]["coordinates"], json!([13.405, 52.52, 34.0]));
    assert!(close(&got["properties"]["speed"], 10.0 * 1852.0 / 3600.0), "{got}");
    assert_eq!(got["properties"]["battery"], 81.0);

    // Form body, timestamp in milliseconds.
    let form = format!("id={}&lat=52.6&lon=13.5&timestamp={}", ph.id, now_secs() * 1000);
    let resp = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        position(&app, &token, &ph.id).await["geometry"]["coordinates"],
        json!([13.5, 52.6])
    );

    // JSON, as Traccar Client 9+ sends it (its documented example).
    let iso = iso_now();
    let body = json!({
        "location": {
            "timestamp": iso,
            "coords": {"latitude": 52.7, "longitude": 13.6, "accuracy": 5, "speed": 2.5, "heading": 90, "altitude": 40},
            "is_moving": true, "odometer": 0, "event": "motionchange",
            "battery": {"level": 0.5, "is_charging": false},
            "activity": {"type": "still"}, "extras": {}
        },
        "device_id": ph.id
    });
    let resp = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = position(&app, &token, &ph.id).await;
    assert_eq!(got["geometry"]["coordinates"], json!([13.6, 52.7, 40.0]));
    assert_eq!(got["properties"]["battery"], 50.0);
    assert_eq!(got["properties"]["speed"], 2.5);
    app.wait_for_map(|m| feature_ids(m).contains(&ph.id)).await;
    assert_eq!(history(&app, &ph.id).await["items"].as_array().unwrap().len(), 3);
}

/// Now as ISO 8601 with milliseconds, as the Traccar Client SDK writes it.
fn iso_now() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    mapcast::domain::time::format_rfc3339(ms)
}

#[tokio::test]
async fn bad_traccar_reports_are_4xx_with_a_reason_and_counted() {
    let app = spawn_app_with(fast_map).await;
    let (token, ph) = phone(&app, "theo").await;
    let client = reqwest::Client::new();
    let url = osmand_url(&app, &ph.secret);
    let before = refused(&app, "osmand").await;
    let t = now_secs();
    let get = |q: String| {
        let client = client.clone();
        async move { client.get(q).send().await.unwrap() }
    };

    let cases = [
        (get(format!("{url}?id={}&lon=13.4&timestamp={t}", ph.id)).await, 422, "unprocessable"),
        (get(format!("{url}?id={}&lat=91&lon=13.4&timestamp={t}", ph.id)).await, 422, "unprocessable"),
        (get(format!("{url}?id={}&lat=1&lon=181&timestamp={t}", ph.id)).await, 422, "unprocessable"),
        (get(format!("{url}?lat=1&lon=2&timestamp={t}")).await, 400, "bad-request"),
        (get(format!("{url}?id=no-such-device&lat=1&lon=2&timestamp={t}")).await, 401, "unauthorized"),
        (get(format!("{}?id={}&lat=1&lon=2&timestamp={t}", osmand_url(&app, "wrong-secret"), ph.id)).await, 401, "unauthorized"),
        (
            client.post(&url).json(&json!({"device_id": ph.id, "location": {"timestamp": iso_now(), "coords": {"longitude": 1}}})).send().await.unwrap(),
            422,
            "unprocessable",
        ),
        (client.post(&url).header("content-type", "application/json").body("{").send().await.unwrap(), 400, "bad-request"),
    ];
    let n = cases.len() as f64;
    let reasons = [
        "lat and lon are required numbers",
        "latitude must be within [-90, 90]",
        "longitude must be within [-180, 180]",
        "device id",
        "unknown device or wrong secret",
        "unknown device or wrong secret",
        "lat and lon are required numbers",
        "not valid UTF-8 JSON",
    ];
    for ((resp, status, code), reason) in cases.into_iter().zip(reasons) {
        let problem = expect_problem(resp, status, code).await;
        assert!(problem["detail"].as_str().unwrap().contains(reason), "{problem}");
    }
    assert_eq!(refused(&app, "osmand").await, before + n);
    let resp = app.api().get(&format!("/api/v1/devices/{}/position", ph.id), Some(&token)).await;
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn the_osmand_secret_in_the_url_never_reaches_the_log() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]).await;
    let api = Api::new(server.http_addr);
    let token = api.sign_up("sam").await;
    let ph = api.create_device(&token, "Pixel", "phone").await;
    let url = format!("http://{}/api/v1/osmand/{}", server.http_addr, ph.secret);

    let ok = reqwest::get(format!("{url}?id={}&lat=1&lon=2&timestamp={}", ph.id, now_secs()))
        .await
        .unwrap();
    let bad = reqwest::get(format!("{url}?id={}&lat=91&lon=2", ph.id)).await.unwrap();

    assert_eq!(ok.status(), 200);
    assert_eq!(bad.status(), 422);
    tokio::time::sleep(QUIET).await;
    let logs = server.logs();
    assert!(!logs.contains(&ph.secret), "the secret leaked into the log: {logs}");
    assert!(logs.contains("/api/v1/osmand/[redacted]"), "the request is logged: {logs}");
    assert!(logs.contains("phone report refused"), "the refusal is logged: {logs}");
}

/// Traccar Client sends `valid=false` when the phone has no GPS fix; its
/// coordinates are then stale or zero. The app gets its 200 (or it would
/// resend the report forever), and the device stays at its last real fix.
#[tokio::test]
async fn a_traccar_report_without_a_gps_fix_is_answered_but_does_not_move_the_device() {
    let app = spawn_app_with(fast_map).await;
    let (token, ph) = phone(&app, "vera").await;
    let client = reqwest::Client::new();
    let url = osmand_url(&app, &ph.secret);
    let fix =
        format!("{url}?id={}&timestamp={}&lat=52.52&lon=13.405&valid=true", ph.id, now_secs());
    assert_eq!(client.post(&fix).send().await.unwrap().status(), 200);

    for valid in ["false", "0"] {
        let stale = format!(
            "{url}?id={}&timestamp={}&lat=0&lon=0&valid={valid}&batt=40",
            ph.id,
            now_secs() + 1
        );
        let resp = client.post(&stale).send().await.unwrap();
        assert_eq!(resp.status(), 200, "valid={valid}");
    }
    let got = position(&app, &token, &ph.id).await;
    assert_eq!(got["geometry"]["coordinates"], json!([13.405, 52.52]), "{got}");
    assert_eq!(history(&app, &ph.id).await["items"].as_array().unwrap().len(), 1);
    let without_fix =
        crate::helpers::metric(app.http_addr, "mapcast_phone_reports_without_fix_total").await;
    assert_eq!(without_fix, 2.0);

    // A wrong secret is still refused, fix or not.
    let bad = format!("{}?id={}&lat=0&lon=0&valid=false", osmand_url(&app, "nope"), ph.id);
    assert_eq!(client.post(&bad).send().await.unwrap().status(), 401);
}
