//! Session settings seen from outside: the byte bound of a session's queue,
//! how long a 3.1.1 persistent session outlives its connection, and whether
//! QoS 0 is queued for it while it is away.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{metric, spawn_app_with, text};

const DROPPED_QOS1: &str = "mapcast_messages_dropped_total{reason=\"queue_full_qos1\"}";

#[tokio::test]
async fn an_offline_queue_holds_no_more_bytes_than_its_bound_and_the_overflow_is_counted() {
    // Room for 1,000 messages but only 10,000 bytes: two of the 4 kB ones
    // (small enough for the client's default maximum packet size).
    let app = spawn_app_with(|s| {
        s.broker.limits.max_queued_messages = 1000;
        s.broker.limits.max_queued_bytes = 10_000;
    })
    .await;
    let mut sub = app.v5_client("byte-bound", false, Some(300)).await;
    sub.subscribe("big", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    for i in 0..5u8 {
        publisher.publish_qos1("big", false, vec![b'0' + i; 4_000]).await;
    }
    assert_eq!(metric(app.http_addr, DROPPED_QOS1).await, 3.0, "three dropped by the byte bound");

    let mut sub = app.v5_client("byte-bound", false, Some(300)).await;

    assert!(sub.session_present());
    let got = sub.recv_publishes(2).await;
    let firsts: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
    assert_eq!(firsts, [b'3', b'4'], "the oldest went first");
    assert!(got.iter().all(|p| p.payload.len() == 4_000));
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_v3_persistent_session_lives_for_the_persistent_client_expiration_and_no_longer() {
    let app = spawn_app_with(|s| s.broker.limits.persistent_client_expiration = 2).await;
    let mut sub = app.v3_client("expiring", false).await;
    sub.subscribe("cmd/expiring", rumqttc::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v3_client("ops", true).await;

    // Back well before the expiry: the session and what was queued are there.
    publisher.publish_qos1("cmd/expiring", false, "early").await;
    let mut sub = app.v3_client("expiring", false).await;
    assert!(sub.session_present());
    assert_eq!(text(&sub.recv_publish().await.payload), "early");
    sub.disconnect().await;

    // Back after it: a new session, without the message queued meanwhile.
    publisher.publish_qos1("cmd/expiring", false, "late").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut sub = app.v3_client("expiring", false).await;
    assert!(!sub.session_present(), "the session expired");
    sub.expect_no_publish(Duration::from_secs(1)).await;
}

/// What a 3.1.1 persistent session gets on reconnect after a QoS 0 and a
/// QoS 1 message were published while it was away.
async fn delivered_after_absence(queue_qos0_messages: bool) -> Vec<(String, rumqttc::QoS)> {
    let app = spawn_app_with(|s| s.broker.limits.queue_qos0_messages = queue_qos0_messages).await;
    let mut sub = app.v3_client("away", false).await;
    sub.subscribe("news", rumqttc::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v3_client("ops", true).await;
    publisher.publish("news", rumqttc::QoS::AtMostOnce, false, "zero").await;
    publisher.publish_qos1("news", false, "one").await;

    let mut sub = app.v3_client("away", false).await;
    assert!(sub.session_present());
    let got = sub.collect_publishes(Duration::from_secs(1)).await;
    got.iter().map(|p| (text(&p.payload), p.qos)).collect()
}

#[tokio::test]
async fn qos0_is_queued_for_an_offline_persistent_session_only_when_configured() {
    assert_eq!(
        delivered_after_absence(false).await,
        [("one".to_string(), rumqttc::QoS::AtLeastOnce)],
        "by default QoS 0 is not queued while away"
    );
    assert_eq!(
        delivered_after_absence(true).await,
        [("zero".to_string(), rumqttc::QoS::AtMostOnce), ("one".into(), rumqttc::QoS::AtLeastOnce)],
        "queue_qos0_messages = true queues it"
    );
}
