//! MQTT 5 features: properties passed through, message expiry, topic aliases,
//! no-local, subscription identifiers, receive maximum, maximum packet size,
//! and what CONNACK tells the client.

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, SubscribeProperties};

use crate::helpers::{QUIET, RECV, RawConn, packet_type, spawn_app, spawn_app_with, text};

#[tokio::test]
async fn user_properties_content_type_and_request_response_properties_reach_the_subscriber() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("sub", true, None).await;
    sub.subscribe("props", QoS::AtLeastOnce).await;
    let publisher = app.v5_client("pub", true, None).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/geo+json".into()),
        response_topic: Some("replies/pub".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"req-42")),
        user_properties: vec![
            ("device".into(), "car-1".into()),
            ("fw".into(), "1.2.3".into()),
            ("device".into(), "duplicate keys are kept".into()),
        ],
        ..Default::default()
    };

    publisher.publish_with("props", QoS::AtLeastOnce, false, "{}", props).await;

    let got = sub.recv_publish().await.properties.expect("properties delivered");
    assert_eq!(got.content_type.as_deref(), Some("application/geo+json"));
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.response_topic.as_deref(), Some("replies/pub"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"req-42"[..]));
    assert_eq!(
        got.user_properties,
        [("device", "car-1"), ("fw", "1.2.3"), ("device", "duplicate keys are kept")]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        "user properties arrive complete and in order"
    );
}

#[tokio::test]
async fn a_v3_subscriber_gets_the_payload_of_a_v5_publish_with_properties() {
    let app = spawn_app().await;
    let mut sub = app.v3_client("old", true).await;
    sub.subscribe("mixed", rumqttc::QoS::AtLeastOnce).await;
    let publisher = app.v5_client("new", true, None).await;
    let props =
        PublishProperties { user_properties: vec![("k".into(), "v".into())], ..Default::default() };

    publisher.publish_with("mixed", QoS::AtLeastOnce, false, "payload", props).await;

    assert_eq!(&sub.recv_publish().await.payload[..], b"payload");
}

#[tokio::test]
async fn an_expired_message_is_dropped_from_the_offline_queue_and_the_rest_carry_the_remaining_expiry()
 {
    let app = spawn_app().await;
    let mut sub = app.v5_client("away", false, Some(300)).await;
    sub.subscribe("expiring", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let publisher = app.v5_client("pub", true, None).await;
    let short = PublishProperties { message_expiry_interval: Some(1), ..Default::default() };
    let long = PublishProperties { message_expiry_interval: Some(60), ..Default::default() };
    publisher.publish_with("expiring", QoS::AtLeastOnce, false, "short-lived", short).await;
    publisher.publish_with("expiring", QoS::AtLeastOnce, false, "long-lived", long).await;

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut sub = app.v5_client("away", false, Some(300)).await;

    let got = sub.recv_publish().await;
    assert_eq!(text(&got.payload), "long-lived");
    let left = got.properties.and_then(|p| p.message_expiry_interval);
    assert!(
        left.is_some_and(|s| (1..60).contains(&s)),
        "remaining expiry is counted down: {left:?}"
    );
    sub.expect_quiet().await;
}

#[tokio::test]
async fn an_expired_retained_message_is_no_longer_sent_on_subscribe() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    let short = PublishProperties { message_expiry_interval: Some(1), ..Default::default() };
    publisher.publish_with("fading", QoS::AtLeastOnce, true, "soon gone", short).await;
    publisher.recv_puback().await;

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut sub = app.v5_client("late", true, None).await;
    sub.subscribe("fading", QoS::AtLeastOnce).await;

    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_topic_alias_set_by_the_client_is_resolved_for_subscribers() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("sub", true, None).await;
    sub.subscribe("devices/car-1/status", QoS::AtLeastOnce).await;
    let publisher = app.v5_client("pub", true, None).await;
    let max = publisher.connack.properties.as_ref().and_then(|p| p.topic_alias_max);
    assert!(max.is_some_and(|m| m >= 1), "CONNACK advertises a topic alias maximum: {max:?}");
    let alias = |a| PublishProperties { topic_alias: Some(a), ..Default::default() };

    // First publish sets alias 1, the second uses it with an empty topic.
    publisher
        .publish_with("devices/car-1/status", QoS::AtLeastOnce, false, "first", alias(1))
        .await;
    publisher.publish_with("", QoS::AtLeastOnce, false, "second", alias(1)).await;

    let got = sub.recv_publishes(2).await;
    for (p, want) in got.iter().zip(["first", "second"]) {
        assert_eq!(crate::helpers::v5_topic(p), "devices/car-1/status");
        assert_eq!(text(&p.payload), want);
    }
}

#[tokio::test]
async fn a_topic_alias_above_the_maximum_is_a_protocol_error() {
    let app = spawn_app_with(|s| s.broker.limits.max_topic_alias = 4).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "alias-abuser", true, None).await;
    let props = PublishProperties { topic_alias: Some(5), ..Default::default() };

    conn.publish_v5("x", QoS::AtLeastOnce, 1, false, false, b"x", Some(props)).await;

    let frames = conn.expect_closed(RECV).await;
    let disconnect = frames.iter().find(|f| f.packet_type() == packet_type::DISCONNECT);
    assert_eq!(disconnect.map(|f| f.reason()), Some(0x94), "topic alias invalid; got {frames:?}");
}

#[tokio::test]
async fn an_unknown_topic_alias_with_an_empty_topic_is_a_protocol_error() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "alias-unknown", true, None).await;
    let props = PublishProperties { topic_alias: Some(1), ..Default::default() };

    conn.publish_v5("", QoS::AtLeastOnce, 1, false, false, b"x", Some(props)).await;

    let frames = conn.expect_closed(RECV).await;
    assert!(
        frames.iter().all(|f| f.packet_type() != packet_type::PUBACK || f.reason() >= 0x80),
        "never acknowledged as success: {frames:?}"
    );
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_coming_back() {
    let app = spawn_app().await;
    let mut chatty = app.v5_client("chatty", true, None).await;
    let mut filter = Filter::new("room", QoS::AtLeastOnce);
    filter.nolocal = true;
    chatty.subscribe_with(filter, None).await;
    let mut other = app.v5_client("other", true, None).await;
    other.subscribe("room", QoS::AtLeastOnce).await;

    chatty.publish_qos1("room", false, "from chatty").await;
    other.publish_qos1("room", false, "from other").await;

    assert_eq!(text(&other.recv_publish().await.payload), "from chatty");
    assert_eq!(text(&other.recv_publish().await.payload), "from other");
    let to_chatty = chatty.collect_publishes(QUIET).await;
    assert_eq!(to_chatty.iter().map(|p| text(&p.payload)).collect::<Vec<_>>(), ["from other"]);
}

#[tokio::test]
async fn without_no_local_a_client_receives_its_own_messages() {
    let app = spawn_app().await;
    let mut echo = app.v5_client("echo", true, None).await;
    echo.subscribe("room", QoS::AtLeastOnce).await;

    echo.publish_qos1("room", false, "hello me").await;

    assert_eq!(text(&echo.recv_publish().await.payload), "hello me");
}

#[tokio::test]
async fn a_subscription_identifier_is_sent_with_matching_messages() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("ids", true, None).await;
    let with_id = |id| Some(SubscribeProperties { id: Some(id), user_properties: vec![] });
    sub.subscribe_with(Filter::new("ids/+", QoS::AtLeastOnce), with_id(7)).await;
    sub.subscribe_with(Filter::new("ids/b", QoS::AtLeastOnce), with_id(9)).await;
    let mut publisher = app.v5_client("pub", true, None).await;

    publisher.publish_qos1("ids/a", false, "a").await;
    let a = sub.recv_publish().await;
    publisher.publish_qos1("ids/b", false, "b").await;
    // Overlapping subscriptions: one message carrying both ids, or one per subscription.
    let b_copies = sub.collect_publishes(QUIET).await;

    assert_eq!(a.properties.map(|p| p.subscription_identifiers), Some(vec![7]));
    let b_ids: BTreeSet<usize> = b_copies
        .into_iter()
        .flat_map(|p| p.properties.map(|p| p.subscription_identifiers).unwrap_or_default())
        .collect();
    assert_eq!(b_ids, BTreeSet::from([7, 9]));
}

#[tokio::test]
async fn the_broker_respects_the_clients_receive_maximum() {
    let app = spawn_app().await;
    let (mut sub, _) = {
        let mut conn = app.raw().await;
        let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
        props.receive_maximum = Some(2);
        conn.send_v5(rumqttc::v5::mqttbytes::v5::Packet::Connect(
            rumqttc::v5::mqttbytes::v5::Connect {
                keep_alive: 30,
                client_id: "narrow".into(),
                clean_start: true,
                properties: Some(props),
            },
            None,
            None,
        ))
        .await;
        let connack = conn.recv_type(packet_type::CONNACK).await;
        (conn, connack)
    };
    sub.subscribe_v5(1, "flood", QoS::AtLeastOnce).await;
    let publisher = app.v5_client("pub", true, None).await;
    for i in 0..6 {
        publisher.publish("flood", QoS::AtLeastOnce, false, format!("{i}")).await;
    }

    let mut first = Vec::new();
    while let Ok(f) = sub.try_recv_type(packet_type::PUBLISH, QUIET).await {
        first.push(f);
    }
    assert_eq!(first.len(), 2, "no more than receive-maximum unacknowledged QoS 1 publishes");

    for f in &first {
        sub.puback(f.pkid()).await;
    }
    let mut rest = Vec::new();
    while let Ok(f) = sub.try_recv_type(packet_type::PUBLISH, QUIET).await {
        sub.puback(f.pkid()).await;
        rest.push(f);
    }
    assert_eq!(rest.len(), 4, "the rest follows as acknowledgements free the window");
}

#[tokio::test]
async fn messages_larger_than_the_clients_maximum_packet_size_are_not_sent_to_it() {
    let app = spawn_app().await;
    let mut small = app.v5("small").max_packet_size(256).connect().await;
    small.subscribe("sizes", QoS::AtLeastOnce).await;
    let mut big = app.v5("big").max_packet_size(64 * 1024).connect().await;
    big.subscribe("sizes", QoS::AtLeastOnce).await;
    let publisher = app.v5_client("pub", true, None).await;

    publisher.publish("sizes", QoS::AtLeastOnce, false, vec![b'x'; 1000]).await;
    publisher.publish("sizes", QoS::AtLeastOnce, false, "tiny").await;

    let to_small = small.recv_publish().await;
    assert_eq!(
        text(&to_small.payload),
        "tiny",
        "the oversized message is skipped, not the connection"
    );
    small.expect_quiet().await;
    assert_eq!(big.recv_publishes(2).await[0].payload.len(), 1000);
}

#[tokio::test]
async fn connack_advertises_the_brokers_limits_and_capabilities() {
    let app = spawn_app_with(|s| {
        s.broker.limits.receive_maximum = 100;
        s.broker.limits.max_packet_bytes = 100_000;
        s.broker.limits.max_topic_alias = 10;
    })
    .await;

    let client = app.v5_client("curious", true, None).await;

    let props = client.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(100));
    assert_eq!(props.max_packet_size, Some(100_000));
    assert_eq!(props.topic_alias_max, Some(10));
    // Absent means available; if present they must say so.
    for (name, flag) in [
        ("retain available", props.retain_available),
        ("wildcard subscriptions", props.wildcard_subscription_available),
        ("subscription identifiers", props.subscription_identifiers_available),
        ("shared subscriptions", props.shared_subscription_available),
    ] {
        assert_ne!(flag, Some(0), "{name} must be available");
    }
    assert!(props.max_qos.is_none_or(|q| q == 2), "QoS 2 supported: {:?}", props.max_qos);
}

#[tokio::test]
async fn the_server_keep_alive_overrides_the_clients_when_configured() {
    let app = spawn_app_with(|s| s.broker.limits.server_keep_alive_secs = 5).await;

    let client = app.v5("kept-alive").keep_alive(30).connect().await;

    assert_eq!(client.connack.properties.as_ref().and_then(|p| p.server_keep_alive), Some(5));
}

#[tokio::test]
async fn a_session_expiry_above_the_maximum_is_capped_and_reported() {
    let app = spawn_app_with(|s| s.broker.limits.max_session_expiry_secs = 60).await;

    let client = app.v5_client("greedy", true, Some(100_000)).await;

    let granted = client.connack.properties.as_ref().and_then(|p| p.session_expiry_interval);
    assert_eq!(granted, Some(60));
}
