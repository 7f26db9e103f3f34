//! `GET /api/v1/subscribe`: publishes as Server-Sent Events, from MQTT and
//! REST alike, ACL-checked.

use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{expect_problem, location, spawn_app, spawn_app_with};

#[tokio::test]
async fn an_sse_subscriber_gets_rest_and_mqtt_publishes() {
    let app = spawn_app().await;
    let mut mqtt = app.v5_client("mqtt-sub", true, None).await;
    mqtt.subscribe("devices/+/location", QoS::AtLeastOnce).await;
    let mut sse = app.sse("devices/+/location").await;
    let payload = location(9.0, 45.0);

    let put = app.put_json("devices/car-9/location", &payload).await;
    let publisher = app.v5_client("pub", true, None).await;
    publisher.publish("devices/car-8/location", QoS::AtMostOnce, false, location(1.0, 1.0)).await;

    assert_eq!(put.status(), 200, "two subscribers matched");
    let first = sse.next_event().await;
    assert_eq!(first["topic"], "devices/car-9/location");
    assert_eq!(first["payload"], serde_json::from_str::<serde_json::Value>(&payload).unwrap());
    assert_eq!(first["qos"], 1);
    let second = sse.next_event().await;
    assert_eq!(second["topic"], "devices/car-8/location");
    assert_eq!(second["qos"], 0);
    assert_eq!(crate::helpers::v5_topic(&mqtt.recv_publish().await), "devices/car-9/location");
}

#[tokio::test]
async fn an_sse_stream_starts_with_the_retained_values() {
    let app = spawn_app().await;
    app.topic_request(Method::PUT, "status/door", "", Some(("text/plain", "open".into()))).await;

    let mut sse = app.sse("status/#").await;

    let first = sse.next_event().await;
    assert_eq!(first["topic"], "status/door");
    assert_eq!(first["payload"], "open");
    assert_eq!(first["retain"], true);
}

#[tokio::test]
async fn bad_or_forbidden_filters_are_problems() {
    let app = spawn_app_with(|s| {
        s.auth.allow_anonymous = Some(true);
        s.auth.anonymous_acl = Some(mapcast::broker::acl::AnonymousAcl::ReadMap);
    })
    .await;

    expect_problem(app.sse_request("a/#/b").await, 400, "bad-request").await;
    expect_problem(app.sse_request("$share/g/a").await, 400, "bad-request").await;
    expect_problem(app.sse_request("devices/#").await, 403, "forbidden").await;
    assert_eq!(app.sse_request("map/#").await.status(), 200, "anonymous may read the map");
}

/// `POST /api/v1/subscribe/tickets` for `filter` as the holder of `token`.
async fn ticket(app: &crate::helpers::TestApp, token: &str, filter: &str) -> reqwest::Response {
    app.api()
        .post_json("/api/v1/subscribe/tickets", Some(token), &serde_json::json!({"filter": filter}))
        .await
}

#[tokio::test]
async fn a_browser_streams_with_a_one_time_ticket_instead_of_a_header() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let api = app.api();
    let token = api.sign_up("ann").await;
    let car = api.create_device(&token, "Golf", "car").await;
    let filter = format!("devices/{}/location", car.id);

    let issued = ticket(&app, &token, &filter).await;

    assert_eq!(issued.headers()["cache-control"], "no-store");
    let issued = crate::helpers::expect_json(issued, reqwest::StatusCode::CREATED).await;
    assert_eq!(issued["filter"], filter.as_str());
    assert!(issued["expires_at"].is_string());
    let t = issued["ticket"].as_str().unwrap();
    let query = [("filter", filter.as_str()), ("ticket", t)];
    let mut sse = crate::helpers::Sse::open(app.sse_request_with(&query).await).await;
    let put = api
        .send(
            Method::PUT,
            &format!("/api/v1/topics/{filter}"),
            Some(&token),
            Some(("application/json", location(3.0, 4.0))),
        )
        .await;
    assert_eq!(put.status(), 200);
    assert_eq!(sse.next_event().await["topic"], filter.as_str());
    // Used once: the same ticket opens nothing more.
    expect_problem(app.sse_request_with(&query).await, 401, "unauthorized").await;
    expect_problem(app.sse_request(&filter).await, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_ticket_is_only_for_its_filter_and_only_for_what_the_caller_may_read() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let token = app.api().sign_up("ann").await;

    let forbidden = ticket(&app, &token, "devices/#").await;
    let invalid = ticket(&app, &token, "a/#/b").await;
    let anonymous = app
        .api()
        .post_json("/api/v1/subscribe/tickets", None, &serde_json::json!({"filter": "map/#"}))
        .await;
    let for_map = crate::helpers::expect_json(
        ticket(&app, &token, "map/#").await,
        reqwest::StatusCode::CREATED,
    )
    .await;
    let for_map = for_map["ticket"].as_str().unwrap();
    let other_filter = app.sse_request_with(&[("filter", "map/+"), ("ticket", for_map)]).await;

    expect_problem(forbidden, 403, "forbidden").await;
    expect_problem(invalid, 400, "bad-request").await;
    expect_problem(anonymous, 401, "unauthorized").await;
    expect_problem(other_filter, 401, "unauthorized").await;
    let made_up = app.sse_request_with(&[("filter", "map/#"), ("ticket", "made-up")]).await;
    expect_problem(made_up, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_ticket_never_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::ServerProcess::start(dir.path(), &[]).await;
    let api = crate::helpers::Api::new(server.http_addr);
    let token = api.sign_up("ann").await;
    let issued = api
        .post_json(
            "/api/v1/subscribe/tickets",
            Some(&token),
            &serde_json::json!({"filter": "map/#"}),
        )
        .await;
    let issued = crate::helpers::expect_json(issued, reqwest::StatusCode::CREATED).await;
    let t = issued["ticket"].as_str().unwrap().to_owned();

    let stream = reqwest::Client::new()
        .get(format!("http://{}/api/v1/subscribe", server.http_addr))
        .query(&[("filter", "map/#"), ("ticket", t.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);

    // The request line of the stream is there, without its query.
    let deadline = std::time::Instant::now() + crate::helpers::RECV;
    while !server.logs().contains("\"url.path\":\"/api/v1/subscribe\"") {
        assert!(std::time::Instant::now() < deadline, "no request line:\n{}", server.logs());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!server.logs().contains(&t), "the ticket reached the logs");
    assert!(!server.logs().contains(&token), "the token reached the logs");
}

/// `mapcast_messages_dropped_total{reason="queue_full_qos0"}` of `app`.
async fn qos0_drops(app: &crate::helpers::TestApp) -> u64 {
    let text = app.http_get("/metrics").await.text().await.unwrap();
    let sample = "mapcast_messages_dropped_total{reason=\"queue_full_qos0\"} ";
    text.lines().find_map(|l| l.strip_prefix(sample)).and_then(|v| v.parse().ok()).unwrap()
}

#[tokio::test]
async fn a_stalled_sse_reader_loses_the_overflow_counted_and_others_are_unaffected() {
    let app = spawn_app_with(|s| s.broker.limits.max_queued_messages = 4).await;
    // Opened, then never read: the socket buffers fill, then its queue.
    let stalled = app.sse_request("bulk/#").await;
    assert_eq!(stalled.status(), 200);
    let payload = "x".repeat(200 * 1024);

    for i in 0..150 {
        let resp = app
            .topic_request(
                Method::POST,
                &format!("bulk/{i}"),
                "?qos=0",
                Some(("text/plain", payload.clone())),
            )
            .await;
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    assert!(qos0_drops(&app).await > 0, "the stalled reader's overflow is counted");
    let mut fresh = app.sse("bulk/#").await;
    app.topic_request(Method::POST, "bulk/last", "?qos=0", Some(("text/plain", "done".into())))
        .await;
    assert_eq!(fresh.next_event().await["payload"], "done");
    drop(stalled);
}

#[tokio::test]
async fn a_head_with_a_ticket_answers_like_its_get_and_leaves_the_ticket_usable() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let api = app.api();
    let token = api.sign_up("ann").await;
    let issued = crate::helpers::expect_json(
        ticket(&app, &token, "map/#").await,
        reqwest::StatusCode::CREATED,
    )
    .await;
    let t = issued["ticket"].as_str().unwrap();
    let query = [("filter", "map/#"), ("ticket", t)];
    let head = || async {
        reqwest::Client::new()
            .head(format!("http://{}/api/v1/subscribe", app.http_addr))
            .query(&query)
            .send()
            .await
            .unwrap()
    };

    let first = head().await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    assert_eq!(head().await.status(), 200, "a HEAD uses nothing up");
    assert_eq!(app.sse_request_with(&query).await.status(), 200, "the GET still gets its stream");
    assert_eq!(head().await.status(), 401, "the GET used it");

    // A HEAD for another filter spends the ticket, as a GET would.
    let issued = crate::helpers::expect_json(
        ticket(&app, &token, "map/#").await,
        reqwest::StatusCode::CREATED,
    )
    .await;
    let t = issued["ticket"].as_str().unwrap();
    let wrong = reqwest::Client::new()
        .head(format!("http://{}/api/v1/subscribe", app.http_addr))
        .query(&[("filter", "map/+"), ("ticket", t)])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    expect_problem(
        app.sse_request_with(&[("filter", "map/#"), ("ticket", t)]).await,
        401,
        "unauthorized",
    )
    .await;
}
