//! Persistent sessions: offline queues, session present, clean start, v5
//! session expiry, redelivery of in-flight messages, and the queue bound.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{QUIET, RECV, RawConn, packet_type, spawn_app, spawn_app_with, text};

#[tokio::test]
async fn qos1_messages_published_while_a_v3_persistent_client_is_away_are_delivered_on_reconnect() {
    let app = spawn_app().await;
    let mut sub = app.v3_client("car-away", false).await;
    sub.subscribe("cmd/car-away", rumqttc::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v3_client("ops", true).await;
    for i in 1..=3 {
        publisher.publish_qos1("cmd/car-away", false, format!("cmd {i}")).await;
    }

    let mut sub = app.v3_client("car-away", false).await;

    assert!(sub.session_present());
    let got: Vec<String> = sub.recv_publishes(3).await.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, ["cmd 1", "cmd 2", "cmd 3"]);
    sub.expect_quiet().await;
}

#[tokio::test]
async fn qos1_messages_published_while_a_v5_session_is_away_are_delivered_on_reconnect() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("phone-away", false, Some(300)).await;
    sub.subscribe("inbox/phone-away/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v5_client("ops", true, None).await;
    publisher.publish_qos1("inbox/phone-away/a", false, "one").await;
    publisher.publish_qos2("inbox/phone-away/b", false, "two").await;

    let mut sub = app.v5_client("phone-away", false, Some(300)).await;

    assert!(sub.session_present());
    let got = sub.recv_publishes(2).await;
    assert_eq!((text(&got[0].payload), got[0].qos), ("one".into(), QoS::AtLeastOnce));
    assert_eq!((text(&got[1].payload), got[1].qos), ("two".into(), QoS::AtLeastOnce));
}

#[tokio::test]
async fn the_subscriptions_of_a_persistent_session_survive_a_reconnect() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("keeps-subs", false, Some(300)).await;
    sub.subscribe("news/#", QoS::AtLeastOnce).await;
    sub.kill().await;

    let mut sub = app.v5_client("keeps-subs", false, Some(300)).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("news/today", false, "hello").await;

    assert_eq!(text(&sub.recv_publish().await.payload), "hello");
}

#[tokio::test]
async fn clean_start_discards_the_previous_session_and_its_queue() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("forgetful", false, Some(300)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("t", false, "queued").await;

    let mut sub = app.v5_client("forgetful", true, Some(300)).await;

    assert!(!sub.session_present());
    sub.expect_quiet().await;
    // The old subscription is gone too.
    publisher.publish_qos1("t", false, "after").await;
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_v3_clean_session_does_not_outlive_its_connection() {
    let app = spawn_app().await;
    let mut sub = app.v3_client("transient", true).await;
    sub.subscribe("t", rumqttc::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v3_client("pub", true).await;
    publisher.publish_qos1("t", false, "lost").await;

    let mut sub = app.v3_client("transient", false).await;

    assert!(!sub.session_present());
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_v5_session_with_expiry_zero_ends_with_the_connection() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("no-expiry", true, None).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let sub = app.v5_client("no-expiry", false, Some(300)).await;

    assert!(!sub.session_present());
}

#[tokio::test]
async fn a_v5_session_expires_after_its_expiry_interval_with_its_queue() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("short-lived", false, Some(1)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    let ack = publisher.publish_qos1("t", false, "too late").await;
    assert_eq!(
        ack.reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
        "the session still exists and matches"
    );

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut sub = app.v5_client("short-lived", false, Some(300)).await;

    assert!(!sub.session_present(), "the session expired after 1 s");
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_v5_session_is_kept_within_its_expiry_interval() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("kept", false, Some(5)).await;
    sub.subscribe("t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sub = app.v5_client("kept", false, Some(5)).await;

    assert!(sub.session_present());
}

#[tokio::test]
async fn a_disconnect_can_shorten_the_session_expiry_to_zero() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "shorten", true, Some(300)).await;
    conn.subscribe_v5(1, "t", QoS::AtLeastOnce).await;

    // DISCONNECT, reason 0x00, properties: session expiry interval (0x11) = 0.
    conn.send_frame(0xE0, &[0x00, 5, 0x11, 0, 0, 0, 0]).await;
    conn.expect_closed(RECV).await;

    let sub = app.v5_client("shorten", false, Some(300)).await;
    assert!(!sub.session_present());
}

#[tokio::test]
async fn an_unacknowledged_v5_message_is_redelivered_with_dup_after_reconnect() {
    let app = spawn_app().await;
    let mut sub =
        app.v5("slow").clean_start(false).session_expiry(Some(300)).manual_acks().connect().await;
    sub.subscribe("work", QoS::AtLeastOnce).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("work", false, "job 1").await;
    let first = sub.recv_publish().await;
    assert!(!first.dup);

    // Crash without acknowledging.
    sub.kill().await;
    let mut sub = app.v5("slow").clean_start(false).session_expiry(Some(300)).connect().await;

    assert!(sub.session_present());
    let again = sub.recv_publish().await;
    assert_eq!(&again.payload[..], b"job 1");
    assert!(again.dup, "a redelivery carries DUP");
    assert_eq!(again.qos, QoS::AtLeastOnce);
    sub.expect_quiet().await;
}

#[tokio::test]
async fn an_unacknowledged_v3_message_is_redelivered_with_dup_after_reconnect() {
    let app = spawn_app().await;
    let mut sub = app.v3("slow3").clean_session(false).manual_acks().connect().await;
    sub.subscribe("work", rumqttc::QoS::AtLeastOnce).await;
    let mut publisher = app.v3_client("pub", true).await;
    publisher.publish_qos1("work", false, "job").await;
    sub.recv_publish().await;

    sub.kill().await;
    let mut sub = app.v3_client("slow3", false).await;

    let again = sub.recv_publish().await;
    assert_eq!(&again.payload[..], b"job");
    assert!(again.dup);
}

#[tokio::test]
async fn an_acknowledged_message_is_not_redelivered() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("fast", false, Some(300)).await;
    sub.subscribe("work", QoS::AtLeastOnce).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("work", false, "done once").await;
    sub.recv_publish().await;
    // Give the automatic PUBACK time to reach the broker.
    tokio::time::sleep(Duration::from_millis(100)).await;

    sub.kill().await;
    let mut sub = app.v5_client("fast", false, Some(300)).await;

    sub.expect_quiet().await;
}

#[tokio::test]
async fn an_in_flight_message_is_resent_with_the_same_packet_id() {
    let app = spawn_app().await;
    let (mut sub, _) = RawConn::connect_v5(app.mqtt_addr, "raw-slow", true, Some(300)).await;
    sub.subscribe_v5(1, "work", QoS::AtLeastOnce).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("work", false, "job").await;
    let first = sub.recv_type(packet_type::PUBLISH).await;
    drop(sub);

    let (mut sub, connack) = RawConn::connect_v5(app.mqtt_addr, "raw-slow", false, Some(300)).await;
    assert!(connack.session_present());
    let again = sub.recv_type(packet_type::PUBLISH).await;

    assert!(again.dup());
    assert_eq!(again.pkid(), first.pkid());
    sub.puback(again.pkid()).await;
    assert!(sub.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err());
}

#[tokio::test]
async fn a_full_offline_queue_drops_the_oldest_messages_and_counts_them() {
    let app = spawn_app_with(|s| {
        s.broker.limits.max_queued_messages = 3;
        s.broker.sys_interval_secs = 1;
    })
    .await;
    let mut sub = app.v5_client("tiny-queue", false, Some(300)).await;
    sub.subscribe("burst", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    for i in 0..5 {
        publisher.publish_qos1("burst", false, format!("m{i}")).await;
    }

    let mut sub = app.v5_client("tiny-queue", false, Some(300)).await;

    let got: Vec<String> = sub.recv_publishes(3).await.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, ["m2", "m3", "m4"], "the two oldest were dropped");
    sub.expect_quiet().await;

    let mut sys = app.v5_client("sys", true, None).await;
    sys.subscribe("$SYS/broker/publish/messages/dropped", QoS::AtMostOnce).await;
    let counted = wait_for_count(&mut sys, 2).await;
    assert!(counted, "$SYS/broker/publish/messages/dropped never reached 2");
}

#[tokio::test]
async fn an_online_client_that_does_not_ack_gets_no_more_than_the_inflight_window() {
    let app = spawn_app_with(|s| s.broker.limits.max_inflight = 2).await;
    let (mut sub, _) = RawConn::connect_v5(app.mqtt_addr, "stalled", true, None).await;
    sub.subscribe_v5(1, "flow", QoS::AtLeastOnce).await;
    let publisher = app.v5_client("pub", true, None).await;
    for i in 0..5 {
        publisher.publish("flow", QoS::AtLeastOnce, false, format!("{i}")).await;
    }

    let mut got = Vec::new();
    while let Ok(f) = sub.try_recv_type(packet_type::PUBLISH, QUIET).await {
        got.push(f);
    }
    assert_eq!(got.len(), 2, "only the in-flight window is sent before any PUBACK");

    sub.puback(got[0].pkid()).await;
    let next = sub.try_recv_type(packet_type::PUBLISH, RECV).await;
    assert!(next.is_ok(), "acknowledging one opens the window for the next");
}

/// Wait (up to ~3 s) until a `$SYS` counter shows at least `at_least`.
async fn wait_for_count(sys: &mut crate::helpers::V5Client, at_least: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if let Some(p) = sys.try_recv_publish(Duration::from_millis(1500)).await
            && text(&p.payload).trim().parse::<u64>().is_ok_and(|n| n >= at_least)
        {
            return true;
        }
    }
    false
}
