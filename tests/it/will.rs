//! Will messages: sent on an unclean end of a connection, never on a clean
//! DISCONNECT, and in v5 after the will delay unless the client comes back.

use std::time::Duration;

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectProperties, LastWill, LastWillProperties, Packet,
};

use crate::helpers::{packet_type, spawn_app, text, will_properties};

#[tokio::test]
async fn a_v3_will_is_published_when_the_connection_drops() {
    let app = spawn_app().await;
    let mut watcher = app.v3_client("watcher", true).await;
    watcher.subscribe("status/#", rumqttc::QoS::AtLeastOnce).await;
    let car = app
        .v3("car-1")
        .will("status/car-1", "offline", rumqttc::QoS::AtLeastOnce, false)
        .connect()
        .await;

    car.kill().await;

    let will = watcher.recv_publish().await;
    assert_eq!(will.topic, "status/car-1");
    assert_eq!(&will.payload[..], b"offline");
    assert_eq!(will.qos, rumqttc::QoS::AtLeastOnce);
}

#[tokio::test]
async fn a_v3_will_is_not_published_after_a_clean_disconnect() {
    let app = spawn_app().await;
    let mut watcher = app.v3_client("watcher", true).await;
    watcher.subscribe("status/#", rumqttc::QoS::AtLeastOnce).await;
    let car = app
        .v3("car-2")
        .will("status/car-2", "offline", rumqttc::QoS::AtLeastOnce, false)
        .connect()
        .await;

    car.disconnect().await;

    watcher.expect_quiet().await;
}

#[tokio::test]
async fn a_retained_will_is_kept_for_later_subscribers() {
    let app = spawn_app().await;
    let car = app
        .v3("car-3")
        .will("status/car-3", "offline", rumqttc::QoS::AtLeastOnce, true)
        .connect()
        .await;

    car.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut late = app.v5_client("late", true, None).await;
    late.subscribe("status/car-3", QoS::AtLeastOnce).await;
    let got = late.recv_publish().await;
    assert_eq!(&got.payload[..], b"offline");
    assert!(got.retain);
}

#[tokio::test]
async fn a_will_is_published_when_the_keep_alive_expires() {
    let app = spawn_app().await;
    let mut watcher = app.v3_client("watcher", true).await;
    watcher.subscribe("status/#", rumqttc::QoS::AtLeastOnce).await;
    let mut conn = app.raw().await;
    conn.send_v4(v4::Packet::Connect(v4::Connect {
        protocol: rumqttc::mqttbytes::Protocol::V4,
        keep_alive: 1,
        client_id: "silent".into(),
        clean_session: true,
        last_will: Some(v4::LastWill::new(
            "status/silent",
            "timed out",
            rumqttc::QoS::AtMostOnce,
            false,
        )),
        login: None,
    }))
    .await;
    assert_eq!(conn.recv_type(packet_type::CONNACK).await.reason(), 0);

    // Say nothing: after 1.5 × keep-alive the broker gives up on us.
    let will = watcher.try_recv_publish(Duration::from_millis(3000)).await;

    assert_eq!(will.map(|p| text(&p.payload)), Some("timed out".into()));
}

#[tokio::test]
async fn a_will_is_published_when_the_client_is_taken_over() {
    let app = spawn_app().await;
    let mut watcher = app.v3_client("watcher", true).await;
    watcher.subscribe("status/#", rumqttc::QoS::AtLeastOnce).await;
    let _old = app
        .v3("twin")
        .will("status/twin", "replaced", rumqttc::QoS::AtLeastOnce, false)
        .connect()
        .await;

    let _new = app.v3_client("twin", true).await;

    assert_eq!(&watcher.recv_publish().await.payload[..], b"replaced");
}

#[tokio::test]
async fn a_v5_will_is_published_when_the_connection_drops() {
    let app = spawn_app().await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let phone =
        app.v5("phone").will("status/phone", "gone", QoS::AtLeastOnce, false, None).connect().await;

    phone.kill().await;

    assert_eq!(&watcher.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn a_v5_will_is_not_published_after_a_normal_disconnect() {
    let app = spawn_app().await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let phone =
        app.v5("phone").will("status/phone", "gone", QoS::AtLeastOnce, false, None).connect().await;

    phone.disconnect().await;

    watcher.expect_quiet().await;
}

#[tokio::test]
async fn a_v5_disconnect_with_reason_0x04_publishes_the_will() {
    let app = spawn_app().await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let mut conn = app.raw().await;
    conn.send_v5(Packet::Connect(
        Connect { keep_alive: 30, client_id: "polite".into(), clean_start: true, properties: None },
        Some(LastWill::new("status/polite", "bye with will", QoS::AtLeastOnce, false, None)),
        None,
    ))
    .await;
    conn.recv_type(packet_type::CONNACK).await;

    conn.disconnect_v5(0x04).await;

    assert_eq!(&watcher.recv_publish().await.payload[..], b"bye with will");
}

#[tokio::test]
async fn a_v5_will_with_a_delay_is_published_only_after_the_delay() {
    let app = spawn_app().await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let phone = app
        .v5("delayed")
        .session_expiry(Some(60))
        .will("status/delayed", "gone for good", QoS::AtLeastOnce, false, Some(1))
        .connect()
        .await;

    phone.kill().await;

    watcher.expect_no_publish(Duration::from_millis(600)).await;
    let will = watcher.try_recv_publish(Duration::from_millis(2000)).await;
    assert_eq!(will.map(|p| text(&p.payload)), Some("gone for good".into()));
}

#[tokio::test]
async fn a_delayed_v5_will_is_cancelled_when_the_client_reconnects_in_time() {
    let app = spawn_app().await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let phone = app
        .v5("tunnel")
        .session_expiry(Some(60))
        .will("status/tunnel", "lost", QoS::AtLeastOnce, false, Some(1))
        .connect()
        .await;

    phone.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let back = app.v5("tunnel").clean_start(false).session_expiry(Some(60)).connect().await;

    assert!(back.session_present());
    watcher.expect_no_publish(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_delayed_v5_will_is_published_when_the_session_ends_first() {
    let app = spawn_app().await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    // Will delay 30 s, but the session only lives 1 s after the connection.
    let mut conn = app.raw().await;
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(1);
    let will_props = LastWillProperties { delay_interval: Some(30), ..will_properties() };
    conn.send_v5(Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: "brief".into(),
            clean_start: true,
            properties: Some(props),
        },
        Some(LastWill::new(
            "status/brief",
            "session over",
            QoS::AtLeastOnce,
            false,
            Some(will_props),
        )),
        None,
    ))
    .await;
    conn.recv_type(packet_type::CONNACK).await;

    drop(conn);

    let will = watcher.try_recv_publish(Duration::from_millis(2500)).await;
    assert_eq!(will.map(|p| text(&p.payload)), Some("session over".into()));
}

#[tokio::test]
async fn a_will_with_properties_carries_them_to_subscribers() {
    let app = spawn_app().await;
    let mut watcher = app.v5_client("watcher", true, None).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let mut conn = app.raw().await;
    let will_props = LastWillProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("reason".into(), "crash".into())],
        ..will_properties()
    };
    conn.send_v5(Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: "propped".into(),
            clean_start: true,
            properties: None,
        },
        Some(LastWill::new("status/propped", "x", QoS::AtLeastOnce, false, Some(will_props))),
        None,
    ))
    .await;
    conn.recv_type(packet_type::CONNACK).await;

    drop(conn);

    let will = watcher.recv_publish().await;
    let props = will.properties.expect("will properties");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.user_properties, [("reason".to_string(), "crash".to_string())]);
}
