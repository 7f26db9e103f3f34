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
