//! Exactly-once across reconnects and restarts, seen from outside: packet
//! ids kept through redeliveries, QoS 2 state that survives SIGKILL, a v5
//! PUBREC that refuses a message, and clean sessions that are never resumed.

use std::time::Duration;

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{
    PgCluster, QUIET, RawConn, ServerProcess, mark_pg_cluster_ran, packet_type, spawn_app,
};

/// Long enough for the group commit to make what was just queued durable.
const COMMITTED: Duration = Duration::from_millis(500);

/// A persistent raw v5 session (expiry 300 s) subscribed to `filter` at QoS 2.
async fn persistent_v5_subscriber(
    addr: std::net::SocketAddr,
    id: &str,
    filter: Option<&str>,
) -> (RawConn, bool) {
    let (mut conn, connack) = RawConn::connect_v5(addr, id, false, Some(300)).await;
    if let Some(filter) = filter {
        conn.subscribe_v5(1, filter, QoS::ExactlyOnce).await;
    }
    (conn, connack.session_present())
}

/// QoS 1 `first` (acknowledged, so its packet id is free again), then QoS 2
/// `second` left unacknowledged: returns the packet id `second` went out with.
async fn one_acked_then_one_in_flight(
    sub: &mut RawConn,
    publisher: &mut crate::helpers::V3Client,
    topic: &str,
) -> u16 {
    publisher.publish_qos1(topic, false, "first").await;
    let first = sub.recv_type(packet_type::PUBLISH).await;
    sub.puback(first.pkid()).await;
    publisher.publish_qos2(topic, false, "second").await;
    let second = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!((second.qos(), second.payload(true)), (2, b"second".to_vec()));
    assert_ne!(second.pkid(), first.pkid(), "an id still in use was handed out");
    second.pkid()
}

#[tokio::test]
async fn a_qos2_redelivery_after_a_reconnect_carries_the_packet_id_of_the_first_attempt() {
    let app = spawn_app().await;
    let (mut sub, _) = persistent_v5_subscriber(app.mqtt_addr, "eo-redeliver", Some("eo/re")).await;
    let mut publisher = app.v3_client("eo-pub", true).await;
    let sent_as = one_acked_then_one_in_flight(&mut sub, &mut publisher, "eo/re").await;

    // The PUBREC is lost with the connection.
    drop(sub);
    let (mut sub, present) = persistent_v5_subscriber(app.mqtt_addr, "eo-redeliver", None).await;

    assert!(present);
    let again = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!(again.payload(true), b"second");
    assert!(again.dup(), "a redelivery is flagged DUP");
    assert_eq!(again.pkid(), sent_as, "a redelivery keeps its packet id [MQTT-4.4.0-1]");
    sub.pubrec(sent_as).await;
    assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), sent_as);
    sub.pubcomp(sent_as).await;
    assert!(sub.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(), "delivered twice");
}

#[tokio::test]
async fn a_qos2_redelivery_after_kill_9_carries_the_packet_id_of_the_first_attempt() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let (mut sub, _) =
        persistent_v5_subscriber(server.mqtt_addr, "eo-restart", Some("eo/restart")).await;
    let mut publisher = crate::helpers::V3Options::new("eo-pub", server.mqtt_addr).connect().await;
    let sent_as = one_acked_then_one_in_flight(&mut sub, &mut publisher, "eo/restart").await;
    tokio::time::sleep(COMMITTED).await;

    server.kill9().await;
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let (mut sub, present) = persistent_v5_subscriber(server.mqtt_addr, "eo-restart", None).await;

    assert!(present, "{}", server.logs());
    let again = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!(again.payload(true), b"second");
    assert!(again.dup());
    assert_eq!(again.pkid(), sent_as, "the packet id survives a restart");
    server.kill9().await;
}

#[tokio::test]
async fn an_inbound_qos2_id_received_before_kill_9_is_not_routed_again_when_resent() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    // A persistent subscriber, away: the message is stored for it.
    let (watcher, _) =
        persistent_v5_subscriber(server.mqtt_addr, "eo-watch", Some("eo/inbound")).await;
    drop(watcher);
    let (mut publisher, _) =
        RawConn::connect_v5(server.mqtt_addr, "eo-sender", false, Some(300)).await;
    publisher.publish_v5("eo/inbound", QoS::ExactlyOnce, 7, false, false, b"once", None).await;
    assert_eq!(publisher.recv_type(packet_type::PUBREC).await.pkid(), 7);

    // The PUBREC is lost in the crash; the client resends after it.
    server.kill9().await;
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let (mut publisher, connack) =
        RawConn::connect_v5(server.mqtt_addr, "eo-sender", false, Some(300)).await;
    assert!(connack.session_present());
    publisher.publish_v5("eo/inbound", QoS::ExactlyOnce, 7, true, false, b"once", None).await;
    assert_eq!(publisher.recv_type(packet_type::PUBREC).await.pkid(), 7);
    publisher.pubrel(7).await;
    let comp = publisher.recv_type(packet_type::PUBCOMP).await;
    assert_eq!((comp.pkid(), comp.reason()), (7, 0), "the id was known: PUBCOMP success");

    let (mut watcher, _) = persistent_v5_subscriber(server.mqtt_addr, "eo-watch", None).await;
    let first = watcher.recv_type(packet_type::PUBLISH).await;
    assert_eq!(first.payload(true), b"once");
    watcher.pubrec(first.pkid()).await;
    watcher.recv_type(packet_type::PUBREL).await;
    watcher.pubcomp(first.pkid()).await;
    assert!(
        watcher.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(),
        "the resend was routed a second time"
    );
    server.kill9().await;
}

/// A QoS 2 delivery that reached a client before its stored copy was
/// committed would, after a crash, be unknown to the restarted broker while
/// the client still holds its packet id: the publisher's resend would then
/// arrive under a new id (a duplicate), or a new message under the held one
/// (taken for a resend and dropped). The database is frozen so that the
/// commit hangs.
#[tokio::test]
async fn a_qos2_delivery_to_a_persistent_session_waits_for_its_commit_and_arrives_once_across_kill_9()
 {
    let Some(pg) = PgCluster::start_if_configured("eo_commit_hold").await else { return };
    let data_dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", &pg.url()];
    let server = ServerProcess::start(data_dir.path(), &args).await;
    let (mut watcher, _) =
        persistent_v5_subscriber(server.mqtt_addr, "eo-hold-watch", Some("eo/held")).await;
    let (mut publisher, _) =
        RawConn::connect_v5(server.mqtt_addr, "eo-hold-sender", false, Some(300)).await;
    tokio::time::sleep(COMMITTED).await;

    pg.freeze().await;
    publisher.publish_v5("eo/held", QoS::ExactlyOnce, 9, false, false, b"once", None).await;
    let early = watcher.try_recv_type(packet_type::PUBLISH, Duration::from_secs(1)).await;
    server.kill9().await;
    pg.thaw().await;
    assert!(early.is_err(), "delivered before it was stored");

    // No PUBREC came: the publisher resends, and the watcher gets it once.
    let server = ServerProcess::start(data_dir.path(), &args).await;
    let (mut publisher, connack) =
        RawConn::connect_v5(server.mqtt_addr, "eo-hold-sender", false, Some(300)).await;
    assert!(connack.session_present());
    publisher.publish_v5("eo/held", QoS::ExactlyOnce, 9, true, false, b"once", None).await;
    assert_eq!(publisher.recv_type(packet_type::PUBREC).await.pkid(), 9);
    publisher.pubrel(9).await;
    assert_eq!(publisher.recv_type(packet_type::PUBCOMP).await.pkid(), 9);

    let (mut watcher, present) =
        persistent_v5_subscriber(server.mqtt_addr, "eo-hold-watch", None).await;
    assert!(present);
    let first = watcher.recv_type(packet_type::PUBLISH).await;
    assert_eq!(first.payload(true), b"once");
    watcher.pubrec(first.pkid()).await;
    watcher.recv_type(packet_type::PUBREL).await;
    watcher.pubcomp(first.pkid()).await;
    assert!(watcher.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(), "delivered twice");
    server.kill9().await;
    mark_pg_cluster_ran().await;
}

#[tokio::test]
async fn an_outbound_qos2_exchange_past_pubrec_resumes_with_pubrel_after_kill_9() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let (mut sub, _) =
        persistent_v5_subscriber(server.mqtt_addr, "eo-receiver", Some("eo/outbound")).await;
    let mut publisher = crate::helpers::V3Options::new("eo-pub", server.mqtt_addr).connect().await;
    publisher.publish_qos2("eo/outbound", false, "one").await;
    let publish = sub.recv_type(packet_type::PUBLISH).await;
    sub.pubrec(publish.pkid()).await;
    assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), publish.pkid());
    tokio::time::sleep(COMMITTED).await;

    server.kill9().await;
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let (mut sub, present) = persistent_v5_subscriber(server.mqtt_addr, "eo-receiver", None).await;

    assert!(present);
    let resumed = sub.recv().await;
    assert_eq!(resumed.packet_type(), packet_type::PUBREL, "PUBREL, not the PUBLISH: {resumed:?}");
    assert_eq!(resumed.pkid(), publish.pkid());
    sub.pubcomp(publish.pkid()).await;
    assert!(sub.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(), "delivered twice");

    // Completed, the exchange stays completed through another crash.
    tokio::time::sleep(COMMITTED).await;
    drop(sub);
    server.kill9().await;
    let server = ServerProcess::start(data_dir.path(), &[]).await;
    let (mut sub, present) = persistent_v5_subscriber(server.mqtt_addr, "eo-receiver", None).await;
    assert!(present);
    let quiet = sub.try_recv(QUIET).await;
    assert!(quiet.is_err(), "nothing is left to resend: {quiet:?}");
    server.kill9().await;
}

#[tokio::test]
async fn a_v5_pubrec_with_a_failure_reason_ends_the_exchange_without_pubrel() {
    let app = spawn_app().await;
    let (mut sub, _) = persistent_v5_subscriber(app.mqtt_addr, "eo-refuser", Some("eo/no")).await;
    let mut publisher = app.v5_client("eo-pub", true, None).await;
    publisher.publish_qos2("eo/no", false, "refused").await;
    let publish = sub.recv_type(packet_type::PUBLISH).await;
    let [hi, lo] = publish.pkid().to_be_bytes();

    // PUBREC, reason 0x80 (unspecified error), no properties.
    sub.send_frame(0x50, &[hi, lo, 0x80, 0]).await;

    let rel = sub.try_recv_type(packet_type::PUBREL, QUIET).await;
    assert!(rel.is_err(), "the exchange ended with the refusing PUBREC: {rel:?}");
    // The connection goes on: the next message flows normally.
    publisher.publish_qos2("eo/no", false, "taken").await;
    let next = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!(next.payload(true), b"taken");
    sub.pubrec(next.pkid()).await;
    assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), next.pkid());
    sub.pubcomp(next.pkid()).await;
    // The refused message is done: not redelivered on the next connection.
    drop(sub);
    let (mut sub, present) = persistent_v5_subscriber(app.mqtt_addr, "eo-refuser", None).await;
    assert!(present);
    let quiet = sub.try_recv(QUIET).await;
    assert!(quiet.is_err(), "nothing to resend after a refusal: {quiet:?}");
}

#[tokio::test]
async fn a_live_v3_clean_session_taken_over_by_a_persistent_connect_is_not_resumed() {
    let app = spawn_app().await;
    let (mut clean, _) = RawConn::connect_v3(app.mqtt_addr, "eo-clean3", true).await;
    let mut subscribe = v4::Subscribe::new("eo/clean3", rumqttc::QoS::AtLeastOnce);
    subscribe.pkid = 1;
    clean.send_v4(v4::Packet::Subscribe(subscribe)).await;
    clean.recv_type(packet_type::SUBACK).await;

    let (mut persistent, connack) = RawConn::connect_v3(app.mqtt_addr, "eo-clean3", false).await;

    assert!(!connack.session_present(), "a clean session is never resumed [MQTT-3.1.2-6]");
    let mut publisher = app.v3_client("eo-pub", true).await;
    publisher.publish_qos1("eo/clean3", false, "for the old session").await;
    let got = persistent.try_recv_type(packet_type::PUBLISH, QUIET).await;
    assert!(got.is_err(), "the old session's subscription was kept: {got:?}");
    // The new session is the persistent one asked for.
    drop(persistent);
    let (_again, connack) = RawConn::connect_v3(app.mqtt_addr, "eo-clean3", false).await;
    assert!(connack.session_present());
}

#[tokio::test]
async fn a_live_v5_session_with_expiry_0_taken_over_by_a_persistent_connect_is_not_resumed() {
    let app = spawn_app().await;
    let (mut clean, _) = RawConn::connect_v5(app.mqtt_addr, "eo-clean5", true, None).await;
    clean.subscribe_v5(1, "eo/clean5", QoS::AtLeastOnce).await;

    let (mut persistent, connack) =
        RawConn::connect_v5(app.mqtt_addr, "eo-clean5", false, Some(300)).await;

    assert!(!connack.session_present(), "a session with expiry 0 is never resumed");
    let publisher = app.v5_client("eo-pub", true, None).await;
    publisher.publish("eo/clean5", QoS::AtLeastOnce, false, "for the old session").await;
    let got = persistent.try_recv_type(packet_type::PUBLISH, QUIET).await;
    assert!(got.is_err(), "the old session's subscription was kept: {got:?}");
    // The old connection was told why it lost its session.
    let frames = clean.expect_closed(Duration::from_secs(3)).await;
    let disconnect = frames.iter().find(|f| f.packet_type() == packet_type::DISCONNECT);
    assert_eq!(disconnect.map(|f| f.reason()), Some(0x8E), "{frames:?}");
}
