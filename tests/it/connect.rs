//! CONNECT: both protocol levels, session present, client-id takeover, empty
//! client ids, authentication, and connects the broker must refuse.

use std::time::Duration;

use mapcast::broker::auth::{ConfigUser, hash_password};
use mapcast::domain::Role;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, DisconnectReasonCode};

use crate::helpers::{RECV, RawConn, packet_type, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_v3_client_connects_and_gets_a_fresh_session() {
    let app = spawn_app().await;

    let client = app.v3_client("car-1", true).await;

    assert_eq!(client.connack.code, rumqttc::ConnectReturnCode::Success);
    assert!(!client.session_present());
}

#[tokio::test]
async fn a_v5_client_connects_and_gets_a_fresh_session() {
    let app = spawn_app().await;

    let client = app.v5_client("phone-1", true, None).await;

    assert_eq!(client.connack.code, V5Code::Success);
    assert!(!client.session_present());
}

#[tokio::test]
async fn v3_and_v5_clients_share_one_port_and_talk_to_each_other() {
    let app = spawn_app().await;
    let mut v3 = app.v3_client("old-car", true).await;
    let mut v5 = app.v5_client("new-phone", true, None).await;
    v3.subscribe("chat/v3", rumqttc::QoS::AtLeastOnce).await;
    v5.subscribe("chat/v5", QoS::AtLeastOnce).await;

    v5.publish_qos1("chat/v3", false, "from v5").await;
    v3.publish_qos1("chat/v5", false, "from v3").await;

    assert_eq!(&v3.recv_publish().await.payload[..], b"from v5");
    assert_eq!(&v5.recv_publish().await.payload[..], b"from v3");
}

#[tokio::test]
async fn reconnecting_to_a_persistent_session_reports_session_present() {
    let app = spawn_app().await;
    let first = app.v5_client("car-7", false, Some(300)).await;
    assert!(!first.session_present(), "a brand-new session is never present");
    first.disconnect().await;

    let second = app.v5_client("car-7", false, Some(300)).await;

    assert!(second.session_present());
}

#[tokio::test]
async fn reconnecting_a_v3_persistent_session_reports_session_present() {
    let app = spawn_app().await;
    app.v3_client("car-8", false).await.disconnect().await;

    let second = app.v3_client("car-8", false).await;

    assert!(second.session_present());
}

#[tokio::test]
async fn a_second_v5_connection_with_the_same_client_id_takes_over_and_the_first_sees_0x8e() {
    let app = spawn_app().await;
    let mut old = app.v5_client("dup-id", true, None).await;

    let mut new = app.v5_client("dup-id", true, None).await;

    let closed = old.wait_closed(RECV).await;
    assert_eq!(closed.server_reason, Some(DisconnectReasonCode::SessionTakenOver), "{closed:?}");
    // The new connection is the one that works.
    new.subscribe("t", QoS::AtMostOnce).await;
    new.publish("t", QoS::AtMostOnce, false, "still here").await;
    assert_eq!(&new.recv_publish().await.payload[..], b"still here");
}

#[tokio::test]
async fn a_second_v3_connection_with_the_same_client_id_closes_the_first() {
    let app = spawn_app().await;
    let mut old = app.v3_client("dup-v3", true).await;

    let mut new = app.v3_client("dup-v3", true).await;

    old.wait_closed(RECV).await;
    new.subscribe("t", rumqttc::QoS::AtMostOnce).await;
}

#[tokio::test]
async fn a_takeover_keeps_the_persistent_sessions_subscriptions() {
    let app = spawn_app().await;
    let mut old = app.v5_client("handover", false, Some(300)).await;
    old.subscribe("jobs/#", QoS::AtLeastOnce).await;

    let mut new = app.v5_client("handover", false, Some(300)).await;
    let mut publisher = app.v5_client("boss", true, None).await;
    publisher.publish_qos1("jobs/1", false, "do it").await;

    assert!(new.session_present());
    assert_eq!(&new.recv_publish().await.payload[..], b"do it");
    old.wait_closed(RECV).await;
}

#[tokio::test]
async fn a_v3_client_with_an_empty_client_id_and_clean_session_is_accepted() {
    let app = spawn_app().await;

    let (_conn, connack) = RawConn::connect_v3(app.mqtt_addr, "", true).await;

    assert_eq!(connack.reason(), 0x00, "{connack:?}");
}

#[tokio::test]
async fn a_v3_client_with_an_empty_client_id_and_a_persistent_session_is_rejected_with_0x02() {
    let app = spawn_app().await;

    let (mut conn, connack) = RawConn::connect_v3(app.mqtt_addr, "", false).await;

    assert_eq!(connack.reason(), 0x02, "identifier rejected; got {connack:?}");
    conn.expect_closed(RECV).await;
}

#[tokio::test]
async fn a_v5_client_with_an_empty_client_id_gets_an_assigned_identifier() {
    let app = spawn_app().await;

    let (_conn, connack) = RawConn::connect_v5(app.mqtt_addr, "", true, None).await;

    let rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack) = connack.v5() else { unreachable!() };
    assert_eq!(ack.code, V5Code::Success);
    let assigned = ack.properties.and_then(|p| p.assigned_client_identifier);
    assert!(
        assigned.is_some_and(|id| !id.is_empty()),
        "CONNACK must carry an assigned client identifier"
    );
}

#[tokio::test]
async fn clients_with_empty_ids_get_distinct_working_sessions() {
    let app = spawn_app().await;
    let (mut a, _) = RawConn::connect_v5(app.mqtt_addr, "", true, None).await;
    let (mut b, _) = RawConn::connect_v3(app.mqtt_addr, "", true).await;
    a.subscribe_v5(1, "x", QoS::AtMostOnce).await;
    let mut subscribe = rumqttc::mqttbytes::v4::Subscribe::new("x", rumqttc::QoS::AtMostOnce);
    subscribe.pkid = 1;
    b.send_v4(rumqttc::mqttbytes::v4::Packet::Subscribe(subscribe)).await;
    b.recv_type(packet_type::SUBACK).await;

    // Neither took the other over: both still receive.
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("x", false, "to both").await;

    assert_eq!(a.recv_type(packet_type::PUBLISH).await.payload(true), b"to both");
    assert_eq!(b.recv_type(packet_type::PUBLISH).await.payload(false), b"to both");
}

fn with_user(s: &mut mapcast::config::Settings) {
    s.auth.allow_anonymous = Some(false);
    s.auth.users = vec![ConfigUser {
        username: "ann".into(),
        password_hash: hash_password("correct horse"),
        role: Role::Admin,
    }];
}

#[tokio::test]
async fn a_configured_user_with_the_right_password_connects() {
    let app = spawn_app_with(with_user).await;

    let v3 = app.v3("ann-car").credentials("ann", "correct horse").try_connect().await;
    let v5 = app.v5("ann-phone").credentials("ann", "correct horse").try_connect().await;

    assert!(v3.is_ok(), "{:?}", v3.err());
    assert!(v5.is_ok(), "{:?}", v5.err());
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_bad_user_name_or_password() {
    let app = spawn_app_with(with_user).await;

    let v3 = app.v3("c3").credentials("ann", "wrong").try_connect().await;
    let v5 = app.v5("c5").credentials("ann", "wrong").try_connect().await;

    assert_eq!(
        v3.err().and_then(|c| c.refused),
        Some(rumqttc::ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(v5.err().and_then(|c| c.refused), Some(V5Code::BadUserNamePassword));
}

#[tokio::test]
async fn an_unknown_user_is_refused() {
    let app = spawn_app_with(with_user).await;

    let v5 = app.v5("c5").credentials("mallory", "correct horse").try_connect().await;

    assert_eq!(v5.err().and_then(|c| c.refused), Some(V5Code::BadUserNamePassword));
}

#[tokio::test]
async fn anonymous_clients_are_refused_when_the_config_says_so() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;

    let v3 = app.v3("anon3").try_connect().await;
    let v5 = app.v5("anon5").try_connect().await;

    assert_eq!(v3.err().and_then(|c| c.refused), Some(rumqttc::ConnectReturnCode::NotAuthorized));
    assert_eq!(v5.err().and_then(|c| c.refused), Some(V5Code::NotAuthorized));
}

#[tokio::test]
async fn anonymous_clients_are_allowed_on_loopback_by_default() {
    let app = spawn_app().await;

    let v5 = app.v5("anon").try_connect().await;

    assert!(v5.is_ok(), "{:?}", v5.err());
}

#[tokio::test]
async fn an_unsupported_protocol_level_is_refused() {
    let app = spawn_app().await;
    let mut conn = app.raw().await;

    // CONNECT, protocol name "MQTT", level 9, clean session, keep-alive 30, client id "x".
    conn.send_bytes(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 30, 0, 1, b'x']).await;

    let frames = conn.expect_closed(RECV).await;
    // Refusing with a CONNACK first is allowed (0x01 in v3 terms, 0x84 in v5), never success.
    for f in &frames {
        assert_eq!(
            f.packet_type(),
            packet_type::CONNACK,
            "only a refusal may precede the close: {f:?}"
        );
        assert!(matches!(f.reason(), 0x01 | 0x84), "refusal code: {f:?}");
    }
}

#[tokio::test]
async fn garbage_instead_of_connect_closes_the_connection_and_the_broker_keeps_serving() {
    let app = spawn_app().await;
    let mut conn = app.raw().await;

    conn.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;

    conn.expect_closed(RECV).await;
    app.v5_client("after-garbage", true, None).await;
}

#[tokio::test]
async fn a_packet_other_than_connect_first_closes_the_connection() {
    let app = spawn_app().await;
    let mut conn = app.raw().await;

    conn.send_bytes(&[0xC0, 0x00]).await; // PINGREQ before CONNECT

    let frames = conn.expect_closed(RECV).await;
    assert!(
        frames.iter().all(|f| f.packet_type() != packet_type::CONNACK || f.reason() != 0),
        "{frames:?}"
    );
}

#[tokio::test]
async fn a_client_that_goes_silent_is_disconnected_after_one_and_a_half_keep_alives() {
    let app = spawn_app().await;
    let mut conn = app.raw().await;
    // v3 CONNECT with keep-alive 1 s, then silence.
    conn.send_bytes(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 1, 0, 1, b'k']).await;
    assert_eq!(conn.recv_type(packet_type::CONNACK).await.reason(), 0);

    let closed = conn.closed_within(Duration::from_millis(2500)).await;

    assert!(closed, "a client silent for 2.5 s with keep-alive 1 s must be disconnected");
}
