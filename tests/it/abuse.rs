//! Protocol abuse over raw sockets: each hostile or broken packet gets the
//! reaction MQTT prescribes (v5: DISCONNECT with the precise reason code;
//! 3.1.1: the connection closes), nothing of it is delivered, and the broker
//! goes on serving a fresh client.
//!
//! Cases covered elsewhere: garbage and PINGREQ before CONNECT, unsupported
//! protocol level and the 3.1.1 empty client id (`connect.rs`); a wildcard
//! in a QoS 1 PUBLISH and a packet over the maximum size (`pubsub.rs`);
//! topic aliases above the maximum or unknown (`v5_features.rs`).

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};

use crate::helpers::{
    QUIET, RECV, RawConn, TestApp, V5Client, packet_type, spawn_app, spawn_app_with, text,
};

/// A fresh client still connects, subscribes, publishes and receives.
async fn assert_still_serves(app: &TestApp) {
    let mut fresh = app.v5_client("fresh-after-abuse", true, None).await;
    fresh.subscribe("alive/check", QoS::AtLeastOnce).await;
    fresh.publish_qos1("alive/check", false, "still here").await;
    assert_eq!(text(&fresh.recv_publish().await.payload), "still here");
}

/// The reason code of the DISCONNECT the broker sent before closing.
async fn disconnect_reason(conn: &mut RawConn) -> Option<u8> {
    let frames = conn.expect_closed(RECV).await;
    assert!(
        frames.iter().all(|f| f.packet_type() != packet_type::PUBACK || f.reason() >= 0x80),
        "nothing is acknowledged as a success: {frames:?}"
    );
    frames.iter().find(|f| f.packet_type() == packet_type::DISCONNECT).map(|f| f.reason())
}

/// A 3.1.1 connection closed with no acknowledgement of anything.
async fn assert_closed_quietly(conn: &mut RawConn) {
    let frames = conn.expect_closed(RECV).await;
    assert!(
        frames.iter().all(|f| f.packet_type() != packet_type::PUBACK),
        "3.1.1 closes without acknowledging: {frames:?}"
    );
}

/// A subscriber to `abuse/#`, to show nothing of an abusive packet arrives.
async fn watcher(app: &TestApp) -> V5Client {
    let mut w = app.v5_client("abuse-watcher", true, None).await;
    w.subscribe("abuse/#", QoS::AtLeastOnce).await;
    w
}

/// A v5 PUBLISH body: topic bytes as given, no packet id (QoS 0), no properties.
fn qos0_body(topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic);
    body.push(0);
    body.extend(payload);
    body
}

#[tokio::test]
async fn a_v5_publish_with_qos_3_is_malformed_0x81() {
    let app = spawn_app().await;
    let mut w = watcher(&app).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "qos3", true, None).await;

    conn.send_frame(0x36, &[0, 7, b'a', b'b', b'u', b's', b'e', b'/', b'q', 0, 1, 0, b'x']).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x81));
    w.expect_quiet().await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v3_publish_with_qos_3_closes_the_connection() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "qos3-v3", true).await;

    conn.send_frame(0x36, &[0, 7, b'a', b'b', b'u', b's', b'e', b'/', b'q', 0, 1, b'x']).await;

    assert_closed_quietly(&mut conn).await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_property_mqtt_5_does_not_define_is_malformed_0x81() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "bad-prop", true, None).await;

    // Properties: length 2, identifier 0x7F (undefined), one byte.
    conn.send_frame(0x30, &[0, 7, b'a', b'b', b'u', b's', b'e', b'/', b'p', 2, 0x7F, 0, b'x'])
        .await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x81));
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_reserved_packet_type_is_malformed_0x81() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "type-0", true, None).await;

    conn.send_bytes(&[0x00, 0x00]).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x81));
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_remaining_length_over_the_maximum_packet_size_gets_0x95_before_any_body() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "huge-len", true, None).await;

    // A PUBLISH announcing 268,435,455 bytes; none of them follow.
    conn.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x95));
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v3_remaining_length_over_the_maximum_closes_before_any_body() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "huge-len-v3", true).await;

    conn.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;

    assert_closed_quietly(&mut conn).await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_five_byte_remaining_length_is_malformed_0x81() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "varint-5", true, None).await;

    // The remaining length may take at most four bytes [MQTT-1.5.5].
    conn.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x81));
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v3_five_byte_remaining_length_closes_the_connection() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "varint-5-v3", true).await;

    conn.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;

    assert_closed_quietly(&mut conn).await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_truncated_connect_is_closed_at_once_not_after_the_connect_timeout() {
    let app = spawn_app().await;
    let mut conn = app.raw().await;
    let started = std::time::Instant::now();

    // A complete packet holding only the protocol name, level and flags.
    conn.send_frame(0x10, b"\x00\x04MQTT\x04\x02").await;

    let frames = conn.expect_closed(RECV).await;
    assert!(frames.iter().all(|f| f.packet_type() != packet_type::CONNACK), "{frames:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_publish_before_connect_closes_the_connection_unrouted() {
    let app = spawn_app().await;
    let mut w = watcher(&app).await;
    let mut conn = app.raw().await;

    conn.publish_v3("abuse/early", 0, 0, b"sneaked in").await;

    let frames = conn.expect_closed(RECV).await;
    assert!(frames.is_empty(), "no answer to a PUBLISH before CONNECT: {frames:?}");
    w.expect_quiet().await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_second_v5_connect_is_a_protocol_error_0x82() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "twice", true, None).await;

    conn.send_v5(rumqttc::v5::mqttbytes::v5::Packet::Connect(
        rumqttc::v5::mqttbytes::v5::Connect {
            keep_alive: 30,
            client_id: "twice".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x82));
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_second_v3_connect_closes_the_connection() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "twice-v3", true).await;

    conn.send_v4(rumqttc::mqttbytes::v4::Packet::Connect(rumqttc::mqttbytes::v4::Connect {
        protocol: rumqttc::mqttbytes::Protocol::V4,
        keep_alive: 30,
        client_id: "twice-v3".into(),
        clean_session: true,
        last_will: None,
        login: None,
    }))
    .await;

    assert_closed_quietly(&mut conn).await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn v3_acknowledgements_for_deliveries_never_sent_close_the_connection() {
    let app = spawn_app().await;
    // PUBACK, PUBREC and PUBCOMP for packet id 7, which the broker never
    // used on this connection: each is a protocol error.
    for (n, ack) in [[0x40, 2, 0, 7], [0x50, 2, 0, 7], [0x70, 2, 0, 7]].iter().enumerate() {
        let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, &format!("acks-{n}"), true).await;
        conn.send_bytes(ack).await;
        assert_closed_quietly(&mut conn).await;
    }
    // Counted, for operators: one per connection closed.
    let counted = crate::helpers::metric(app.http_addr, "mapcast_protocol_errors_total").await;
    assert_eq!(counted, 3.0);
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_topic_that_is_not_utf8_is_malformed_0x81_and_not_delivered() {
    let app = spawn_app().await;
    let mut w = watcher(&app).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "latin1", true, None).await;

    conn.send_frame(0x30, &qos0_body(b"abuse/\xff\xfe", b"x")).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x81));
    w.expect_quiet().await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v3_topic_that_is_not_utf8_closes_the_connection() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "latin1-v3", true).await;

    conn.send_frame(0x32, b"\x00\x08abuse/\xff\xfe\x00\x01x").await;

    assert_closed_quietly(&mut conn).await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_client_id_that_is_not_utf8_gets_no_connack() {
    let app = spawn_app().await;
    let mut conn = app.raw().await;

    conn.send_frame(0x10, b"\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x02a\xff").await;

    let frames = conn.expect_closed(RECV).await;
    assert!(
        frames.iter().all(|f| f.packet_type() != packet_type::CONNACK || f.reason() >= 0x80),
        "never accepted: {frames:?}"
    );
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v5_qos0_publish_to_a_wildcard_topic_gets_disconnect_0x90() {
    let app = spawn_app().await;
    let mut w = watcher(&app).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "wild-0", true, None).await;

    conn.send_frame(0x30, &qos0_body(b"abuse/#", b"x")).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x90));
    w.expect_quiet().await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v5_empty_client_id_without_clean_start_gets_an_assigned_id_to_resume_with() {
    let app = spawn_app().await;
    let (mut conn, connack) = RawConn::connect_v5(app.mqtt_addr, "", false, Some(600)).await;
    let Packet::ConnAck(ack) = connack.v5() else { unreachable!() };
    assert_eq!(connack.reason(), 0, "accepted");
    let assigned = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("CONNACK carries the assigned client identifier");
    conn.subscribe_v5(1, "abuse/resume", QoS::AtLeastOnce).await;
    conn.disconnect_v5(0).await;

    let mut again = app.v5_client(&assigned, false, Some(600)).await;
    assert!(again.session_present(), "the assigned id names a persistent session");
    let mut publisher = app.v5_client("resume-pub", true, None).await;
    publisher.publish_qos1("abuse/resume", false, "kept for you").await;
    assert_eq!(text(&again.recv_publish().await.payload), "kept for you");
}

#[tokio::test]
async fn a_reused_qos2_packet_id_is_acknowledged_again_and_delivered_once() {
    let app = spawn_app().await;
    let mut w = watcher(&app).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "reuse", true, None).await;

    conn.publish_v5("abuse/q2", QoS::ExactlyOnce, 7, false, false, b"first", None).await;
    let first = conn.recv_type(packet_type::PUBREC).await;
    conn.publish_v5("abuse/q2", QoS::ExactlyOnce, 7, false, false, b"second", None).await;
    let second = conn.recv_type(packet_type::PUBREC).await;

    assert_eq!((first.pkid(), first.reason()), (7, 0));
    assert_eq!((second.pkid(), second.reason()), (7, 0), "PUBREC again [MQTT-4.3.3-10]");
    assert_eq!(text(&w.recv_publish().await.payload), "first");
    w.expect_quiet().await;
    // Released, the id is free for a new message.
    conn.pubrel(7).await;
    conn.recv_type(packet_type::PUBCOMP).await;
    conn.publish_v5("abuse/q2", QoS::ExactlyOnce, 7, false, false, b"third", None).await;
    conn.recv_type(packet_type::PUBREC).await;
    assert_eq!(text(&w.recv_publish().await.payload), "third");
}

#[tokio::test]
async fn a_reused_v3_qos2_packet_id_is_acknowledged_again_and_delivered_once() {
    let app = spawn_app().await;
    let mut w = watcher(&app).await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "reuse-v3", true).await;

    conn.publish_v3("abuse/q2", 2, 7, b"first").await;
    let first = conn.recv_type(packet_type::PUBREC).await;
    conn.publish_v3("abuse/q2", 2, 7, b"second").await;
    let second = conn.recv_type(packet_type::PUBREC).await;

    assert_eq!((first.pkid(), second.pkid()), (7, 7), "PUBREC again [MQTT-4.3.3-2]");
    assert_eq!(text(&w.recv_publish().await.payload), "first");
    w.expect_quiet().await;
    assert!(!conn.closed_within(QUIET).await, "the connection stays open");
}

#[tokio::test]
async fn a_topic_alias_of_zero_is_malformed_0x81() {
    let app = spawn_app().await;
    let mut w = watcher(&app).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "alias-0", true, None).await;
    let props = PublishProperties { topic_alias: Some(0), ..Default::default() };

    // Alias 0 is not permitted [MQTT-3.3.2-8]; it does not even decode.
    conn.publish_v5("abuse/alias", QoS::AtLeastOnce, 1, false, false, b"x", Some(props)).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x81));
    w.expect_quiet().await;
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn more_unreleased_qos2_messages_than_the_receive_maximum_get_0x93() {
    let app = spawn_app_with(|s| s.broker.limits.receive_maximum = 3).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "greedy", true, None).await;

    // Three unreleased is the maximum; releasing one makes room for one more.
    for id in 1..=3 {
        conn.publish_v5("abuse/rm", QoS::ExactlyOnce, id, false, false, b"x", None).await;
        conn.recv_type(packet_type::PUBREC).await;
    }
    conn.pubrel(1).await;
    conn.recv_type(packet_type::PUBCOMP).await;
    conn.publish_v5("abuse/rm", QoS::ExactlyOnce, 4, false, false, b"x", None).await;
    conn.recv_type(packet_type::PUBREC).await;

    conn.publish_v5("abuse/rm", QoS::ExactlyOnce, 5, false, false, b"x", None).await;

    let frames = conn.expect_closed(RECV).await;
    let disconnect = frames.iter().find(|f| f.packet_type() == packet_type::DISCONNECT);
    assert_eq!(disconnect.map(|f| f.reason()), Some(0x93), "receive maximum exceeded: {frames:?}");
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_subscribe_without_topic_filters_is_a_protocol_error_0x82() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "empty-sub", true, None).await;

    // Packet id 1, no properties, no filters [MQTT-3.8.3-2].
    conn.send_frame(0x82, &[0, 1, 0]).await;

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x82));
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v3_unsubscribe_without_topic_filters_closes_the_connection() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "empty-unsub", true).await;

    conn.send_frame(0xA2, &[0, 1]).await;

    let frames = conn.expect_closed(RECV).await;
    assert!(frames.iter().all(|f| f.packet_type() != 11), "no UNSUBACK: {frames:?}");
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_packet_only_a_server_sends_is_a_protocol_error_0x82() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "role-swap", true, None).await;

    conn.send_frame(0x20, &[0, 0, 0]).await; // CONNACK

    assert_eq!(disconnect_reason(&mut conn).await, Some(0x82));
    assert_still_serves(&app).await;
}
