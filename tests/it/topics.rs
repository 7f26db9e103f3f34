//! Every topic is a REST resource: `GET` the retained value, `PUT` publishes
//! retained, `POST` not retained, `DELETE` clears — all through the same path
//! as MQTT publishes (ACLs, fan-out, retained store).

use crate::helpers::{TestApp, expect_json, expect_problem, spawn_app, spawn_app_with, text};
use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test]
async fn a_rest_put_reaches_an_mqtt_subscriber_and_becomes_the_retained_value() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("phone", true, None).await;
    sub.subscribe("cmd/#", QoS::AtLeastOnce).await;

    let put =
        app.topic_request(Method::PUT, "cmd/car-1", "", Some(("text/plain", "lock".into()))).await;

    let body = expect_json(put, reqwest::StatusCode::OK).await;
    assert_eq!(body["matched"], 1);
    assert_eq!(body["retain"], true);
    let got = sub.recv_publish().await;
    assert_eq!(text(&got.payload), "lock");
    let content_type = got.properties.and_then(|p| p.content_type);
    assert_eq!(content_type.as_deref(), Some("text/plain"), "the v5 content type travels");
    let resource = app.topic_request(Method::GET, "cmd/car-1", "", None).await;
    assert_eq!(resource.status(), 200);
    assert_eq!(resource.headers()["content-type"], "text/plain");
    assert!(resource.headers().contains_key("last-modified"));
    let etag = resource.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(resource.text().await.unwrap(), "lock");

    let again = get_with(&app, "/api/v1/topics/cmd/car-1", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn a_retained_mqtt_message_is_served_with_a_guessed_content_type() {
    let app = spawn_app().await;
    let mut publisher = app.v3_client("sensor", true).await;
    publisher.publish_qos1("sensors/t1", true, r#"{"celsius":21.5}"#).await;
    publisher.publish_qos1("sensors/raw", true, vec![0xde, 0xad, 0xbe, 0xef]).await;

    let json = app.topic_request(Method::GET, "sensors/t1", "", None).await;
    let raw = app.topic_request(Method::GET, "sensors/raw", "", None).await;

    assert_eq!(json.headers()["content-type"], "application/json");
    assert_eq!(raw.headers()["content-type"], "application/octet-stream");
    assert_eq!(&raw.bytes().await.unwrap()[..], [0xde, 0xad, 0xbe, 0xef]);
}

#[tokio::test]
async fn post_is_not_retained_and_answers_202_when_nobody_listens() {
    let app = spawn_app().await;

    let post = app
        .topic_request(Method::POST, "alerts/x", "?qos=0", Some(("text/plain", "hi".into())))
        .await;

    let body = expect_json(post, reqwest::StatusCode::ACCEPTED).await;
    assert_eq!(body["note"], "no subscribers");
    assert_eq!(body["qos"], 0);
    let resource = app.topic_request(Method::GET, "alerts/x", "", None).await;
    expect_problem(resource, 404, "not-found").await;
}

#[tokio::test]
async fn delete_clears_the_retained_value_for_rest_and_mqtt() {
    let app = spawn_app().await;
    app.topic_request(Method::PUT, "flags/door", "", Some(("text/plain", "open".into()))).await;

    let deleted = app.topic_request(Method::DELETE, "flags/door", "", None).await;

    assert_eq!(deleted.status(), 204);
    let resource = app.topic_request(Method::GET, "flags/door", "", None).await;
    expect_problem(resource, 404, "not-found").await;
    let mut late = app.v5_client("late", true, None).await;
    late.subscribe("flags/#", QoS::AtLeastOnce).await;
    late.expect_quiet().await;
}

#[tokio::test]
async fn bad_topic_requests_are_problems_with_the_right_status() {
    let app = spawn_app_with(|s| s.broker.limits.max_payload_bytes = 1024).await;

    let wildcard = app.topic_request(Method::GET, "a/+/b", "", None).await;
    let empty = app.topic_request(Method::PUT, "", "", Some(("text/plain", "x".into()))).await;
    let bad_qos =
        app.topic_request(Method::POST, "a/b", "?qos=3", Some(("text/plain", "x".into()))).await;
    let not_a_number =
        app.topic_request(Method::POST, "a/b", "?qos=one", Some(("text/plain", "x".into()))).await;
    let oversized =
        app.topic_request(Method::PUT, "a/b", "", Some(("text/plain", "x".repeat(1025)))).await;
    let sys =
        app.topic_request(Method::PUT, "$SYS/fake", "", Some(("text/plain", "x".into()))).await;

    expect_problem(wildcard, 400, "bad-request").await;
    expect_problem(empty, 400, "bad-request").await;
    expect_problem(bad_qos, 400, "bad-request").await;
    expect_problem(not_a_number, 400, "bad-request").await;
    expect_problem(oversized, 413, "payload-too-large").await;
    expect_problem(sys, 403, "forbidden").await;
    // Exactly at the limit is fine.
    let at_limit =
        app.topic_request(Method::PUT, "a/b", "", Some(("text/plain", "x".repeat(1024)))).await;
    assert_eq!(at_limit.status(), 202);
}

#[tokio::test]
async fn topic_resources_follow_the_mqtt_acls() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let api = app.api();
    let ann = api.sign_up("ann").await;
    let ann_car = api.create_device(&ann, "Ann's car", "car").await;
    let bob = api.sign_up("bob").await;
    let bob_car = api.create_device(&bob, "Bob's car", "car").await;
    let cmd = |id: &str| format!("/api/v1/topics/devices/{id}/cmd");

    let anonymous =
        api.send(Method::PUT, &cmd(&ann_car.id), None, Some(("text/plain", "x".into()))).await;
    let own = api
        .send(Method::PUT, &cmd(&ann_car.id), Some(&ann), Some(("text/plain", "lock".into())))
        .await;
    let foreign = api
        .send(Method::PUT, &cmd(&bob_car.id), Some(&ann), Some(("text/plain", "lock".into())))
        .await;
    let foreign_read = api.get(&cmd(&bob_car.id), Some(&ann)).await;

    expect_problem(anonymous, 401, "unauthorized").await;
    assert_eq!(own.status(), 202, "ann may command her own car");
    expect_problem(foreign, 403, "forbidden").await;
    expect_problem(foreign_read, 403, "forbidden").await;
    let read_back = api.get(&cmd(&ann_car.id), Some(&ann)).await;
    assert_eq!(read_back.text().await.unwrap(), "lock");
    // The device itself, over MQTT, sees its retained command.
    let mut car = app.v5("ann-car").credentials(&ann_car.id, &ann_car.secret).connect().await;
    car.subscribe(&format!("devices/{}/cmd", ann_car.id), QoS::AtLeastOnce).await;
    assert_eq!(text(&car.recv_publish().await.payload), "lock");
}

/// `GET path` with extra headers.
async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", app.http_addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The trace id of a `traceparent` user property, if the publish has one.
fn trace_id_of(publish: &rumqttc::v5::mqttbytes::v5::Publish) -> Option<String> {
    let props = publish.properties.as_ref()?;
    let (_, value) = props.user_properties.iter().find(|(k, _)| k == "traceparent")?;
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "not a W3C traceparent: {value}");
    Some(parts[1].to_owned())
}

#[tokio::test]
async fn a_rest_publish_carries_the_requests_trace_to_mqtt5_subscribers() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::ServerProcess::start(dir.path(), &[]).await;
    let mut sub = crate::helpers::V5Options::new("trace-sub", server.mqtt_addr).connect().await;
    sub.subscribe("cmd/#", QoS::AtMostOnce).await;
    let url = |topic: &str| format!("http://{}/api/v1/topics/{topic}", server.http_addr);
    let http = reqwest::Client::new();

    let traced = http
        .post(url("cmd/traced"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .body("honk")
        .send()
        .await
        .unwrap();
    let untraced = http.post(url("cmd/untraced")).body("honk").send().await.unwrap();

    assert_eq!(traced.status(), 200);
    assert_eq!(untraced.status(), 200);
    let first = sub.recv_publish().await;
    assert_eq!(crate::helpers::v5_topic(&first), "cmd/traced");
    assert_eq!(trace_id_of(&first).as_deref(), Some(TRACE), "{:?}", first.properties);
    let second = sub.recv_publish().await;
    let own = trace_id_of(&second).expect("a request without one starts its own trace");
    assert_ne!(own, TRACE);
}
