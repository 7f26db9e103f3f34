//! Durability across `kill -9`: the real binary is killed with SIGKILL and
//! restarted on the same data directory; everything the broker acknowledged
//! is still there and delivered exactly once.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{QUIET, ServerProcess, V3Options, V5Options, spawn_app_in, text};

/// Publish a retained message and queue QoS 1 messages for an offline
/// persistent session, SIGKILL, restart, and check both survived. `extra_args`
/// pick the database (none: SQLite in the data dir).
pub async fn retained_and_queued_messages_survive_kill_9(extra_args: &[&str]) {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), extra_args).await;
    let mut car = V5Options::new("car-9", server.mqtt_addr)
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    car.subscribe("cmd/car-9", QoS::AtLeastOnce).await;
    car.disconnect().await;
    let mut ops = V3Options::new("ops", server.mqtt_addr).connect().await;
    ops.publish_qos1("fleet/version", true, "42").await;
    for i in 1..=3 {
        // Each PUBACK promises the message is durable.
        ops.publish_qos1("cmd/car-9", false, format!("cmd {i}")).await;
    }

    server.kill9().await;
    let server = ServerProcess::start(data_dir.path(), extra_args).await;

    let mut car = V5Options::new("car-9", server.mqtt_addr)
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    assert!(car.session_present(), "the persistent session survived the crash\n{}", server.logs());
    let got: Vec<String> = car.recv_publishes(3).await.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, ["cmd 1", "cmd 2", "cmd 3"]);
    car.expect_quiet().await;
    let mut viewer = V5Options::new("viewer", server.mqtt_addr).connect().await;
    viewer.subscribe("fleet/version", QoS::AtLeastOnce).await;
    let retained = viewer.recv_publish().await;
    assert_eq!((text(&retained.payload), retained.retain), ("42".into(), true));

    // The subscription itself survived too: live messages reach the session.
    let mut ops = V3Options::new("ops", server.mqtt_addr).connect().await;
    ops.publish_qos1("cmd/car-9", false, "after restart").await;
    assert_eq!(text(&car.recv_publish().await.payload), "after restart");

    // Acknowledged deliveries stay delivered: another crash does not replay them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    car.kill().await;
    server.kill9().await;
    let server = ServerProcess::start(data_dir.path(), extra_args).await;
    let mut car = V5Options::new("car-9", server.mqtt_addr)
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    assert!(car.session_present());
    car.expect_no_publish(QUIET).await;
    server.kill9().await;
}

#[tokio::test]
async fn retained_and_queued_messages_survive_kill_9_on_sqlite() {
    retained_and_queued_messages_survive_kill_9(&[]).await;
}

#[tokio::test]
async fn a_cleared_retained_message_stays_cleared_after_kill_9() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let mut ops = V5Options::new("ops", server.mqtt_addr).connect().await;
    ops.publish_qos1("alerts/x", true, "on").await;
    ops.publish_qos1("alerts/x", true, "").await;

    server.kill9().await;
    let server = ServerProcess::start(data_dir.path(), &[]).await;

    let mut viewer = V5Options::new("viewer", server.mqtt_addr).connect().await;
    viewer.subscribe("alerts/#", QoS::AtLeastOnce).await;
    viewer.expect_quiet().await;
    server.kill9().await;
}

#[tokio::test]
async fn a_graceful_restart_keeps_retained_messages_and_sessions() {
    let data_dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(data_dir.path(), |_| {}).await;
    let mut sub = app.v5_client("graceful", false, Some(3600)).await;
    sub.subscribe("later", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("kept", true, "retained").await;
    publisher.publish_qos1("later", false, "queued").await;

    app.stop().await;
    let app = spawn_app_in(data_dir.path(), |_| {}).await;

    let mut sub = app.v5_client("graceful", false, Some(3600)).await;
    assert!(sub.session_present());
    assert_eq!(text(&sub.recv_publish().await.payload), "queued");
    sub.subscribe("kept", QoS::AtLeastOnce).await;
    assert_eq!(text(&sub.recv_publish().await.payload), "retained");
}

#[tokio::test]
async fn sigterm_stops_the_server_with_exit_code_0_within_10_seconds() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let _client = V5Options::new("connected", server.mqtt_addr).connect().await;
    let health =
        reqwest::get(format!("http://{}/healthz", server.http_addr)).await.expect("GET /healthz");
    assert_eq!(health.status(), 200);

    let status = server.terminate(Duration::from_secs(10)).await;

    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status after SIGTERM");
}
