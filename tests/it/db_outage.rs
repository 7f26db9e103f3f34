//! PostgreSQL stopped hard and started again under the running binary:
//! QoS 0 routing goes on, QoS≥1 publishes that need the database are
//! refused (v5 PUBACK 0x80, v3 connection closed without PUBACK) instead of
//! acknowledged and lost, REST answers 503 problem+json, `/readyz` fails,
//! and everything recovers without restarting mapcast. Needs
//! `MAPCAST_TEST_PG_BIN` (the test runs its own cluster).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

use crate::helpers::{
    Api, PgCluster, RawConn, ServerProcess, V5Options, an_hour_ago_ms, expect_json, expect_problem,
    location_at, mark_pg_cluster_ran, packet_type::PUBACK, text,
};

const TOPIC: &str = "devices/car-1/location";
/// The first write after the database vanished fails within the writer's
/// attempt timeout (5 s); later ones are refused at once.
const FIRST_REFUSAL: Duration = Duration::from_secs(10);
/// How long the writer holds its connection without writes (1 s), with margin.
const QUIET_SPELL: Duration = Duration::from_millis(1_500);
/// How long recovery may take once PostgreSQL is back.
const RECOVERY: Duration = Duration::from_secs(20);

async fn readyz(api: &Api) -> StatusCode {
    api.get("/readyz", None).await.status()
}

async fn publish_location(api: &Api, topic: &str, lon: f64) -> reqwest::Response {
    let body = location_at(lon, 0.0, an_hour_ago_ms() + lon as i64);
    api.send(
        Method::POST,
        &format!("/api/v1/topics/{topic}"),
        None,
        Some(("application/geo+json", body)),
    )
    .await
}

fn lons(page: &Value) -> Vec<f64> {
    let items = page["items"].as_array().expect("items");
    items.iter().map(|i| i["payload"]["geometry"]["coordinates"][0].as_f64().unwrap()).collect()
}

/// A v5 QoS 1 publish of a location with `lon`; returns the PUBACK reason
/// (success is 0x00, or 0x10 with nobody subscribed).
async fn v5_qos1(conn: &mut RawConn, pkid: u16, lon: f64, timeout: Duration) -> u8 {
    let payload = location_at(lon, 0.0, an_hour_ago_ms() + lon as i64);
    conn.publish_v5(TOPIC, QoS::AtLeastOnce, pkid, false, false, payload.as_bytes(), None).await;
    let ack = conn.try_recv_type(PUBACK, timeout).await.expect("a PUBACK");
    assert_eq!(ack.pkid(), pkid);
    ack.reason()
}

#[tokio::test]
async fn a_postgres_outage_refuses_durable_publishes_and_recovers_without_a_restart() {
    let Some(pg) = PgCluster::start_if_configured("db_outage").await else { return };
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &["--database-url", &pg.url()]).await;
    let api = Api::new(server.http_addr);
    let mut watcher = V5Options::new("watcher", server.mqtt_addr).connect().await;
    watcher.subscribe("chat/#", QoS::AtMostOnce).await;
    let (mut car, _) = RawConn::connect_v5(server.mqtt_addr, "car-1", true, None).await;
    assert_eq!(readyz(&api).await, 200);
    assert!(v5_qos1(&mut car, 1, 1.0, FIRST_REFUSAL).await < 0x80, "stored before the outage");
    car.publish_v5("fleet/version", QoS::AtLeastOnce, 4, false, true, b"v1", None).await;
    assert!(car.recv_type(PUBACK).await.reason() < 0x80);

    pg.stop_immediate().await;
    let outage = Instant::now();

    // QoS≥1 on a stored topic: refused with 0x80 "unspecified error" (no
    // PUBACK code means "retry later"; the reason string says why).
    assert_eq!(v5_qos1(&mut car, 2, 2.0, FIRST_REFUSAL).await, 0x80);
    let refused_at = Instant::now();
    assert_eq!(v5_qos1(&mut car, 3, 3.0, FIRST_REFUSAL).await, 0x80);
    let fast_refusal = refused_at.elapsed();
    assert!(fast_refusal < Duration::from_secs(1), "refused at once once known: {fast_refusal:?}");
    // A retained message is not kept either: the old value stays.
    car.publish_v5("fleet/version", QoS::AtLeastOnce, 5, false, true, b"v2", None).await;
    assert_eq!(car.recv_type(PUBACK).await.reason(), 0x80);
    let mut viewer = V5Options::new("viewer", server.mqtt_addr).connect().await;
    viewer.subscribe("fleet/version", QoS::AtMostOnce).await;
    assert_eq!(text(&viewer.recv_publish().await.payload), "v1");
    // QoS 0 routing goes on.
    car.publish_v5("chat/room", QoS::AtMostOnce, 0, false, false, b"still routing", None).await;
    assert_eq!(text(&watcher.recv_publish().await.payload), "still routing");
    // 3.1.1 has no negative PUBACK: the connection closes instead.
    let (mut v3, _) = RawConn::connect_v3(server.mqtt_addr, "car-3", true).await;
    v3.publish_v3(
        "devices/car-3/location",
        1,
        7,
        location_at(4.0, 0.0, an_hour_ago_ms() + 4).as_bytes(),
    )
    .await;
    let frames = v3.expect_closed(FIRST_REFUSAL).await;
    assert!(frames.iter().all(|f| f.packet_type() != PUBACK), "no PUBACK: {frames:?}");
    // REST: 503 problem+json for writes and reads; not ready.
    expect_problem(publish_location(&api, "devices/car-4/location", 5.0).await, 503, "unavailable")
        .await;
    let history = api.get(&format!("/api/v1/history/{TOPIC}"), None).await;
    expect_problem(history, 503, "unavailable").await;
    let ready = api.get("/readyz", None).await;
    expect_problem(ready, 503, "unavailable").await;

    pg.start().await;
    let outage_duration = outage.elapsed();

    let back = Instant::now();
    while readyz(&api).await != 200 {
        assert!(back.elapsed() < RECOVERY, "not ready {RECOVERY:?} after PostgreSQL came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Durable publishes are accepted again (one passes as the probe).
    let mut pkid = 10;
    while v5_qos1(&mut car, pkid, 6.0, FIRST_REFUSAL).await >= 0x80 {
        assert!(back.elapsed() < RECOVERY, "QoS 1 still refused {RECOVERY:?} after recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
        pkid += 1;
    }
    let recovered_in = back.elapsed();
    assert_eq!(publish_location(&api, "devices/car-4/location", 7.0).await.status(), 202);
    let (mut v3, _) = RawConn::connect_v3(server.mqtt_addr, "car-3", true).await;
    v3.publish_v3(
        "devices/car-3/location",
        1,
        8,
        location_at(8.0, 0.0, an_hour_ago_ms() + 8).as_bytes(),
    )
    .await;
    assert_eq!(v3.recv_type(PUBACK).await.pkid(), 8);

    // What was acknowledged is stored; what was refused is not.
    let page =
        expect_json(api.get(&format!("/api/v1/history/{TOPIC}"), None).await, StatusCode::OK).await;
    let mut stored = lons(&page);
    stored.dedup();
    assert_eq!(stored, [6.0, 1.0], "acknowledged positions only");
    println!(
        "database outage: {:.1} s down; first refusal in {:?}, then {fast_refusal:?}; QoS 1 accepted {recovered_in:?} after PostgreSQL was back",
        outage_duration.as_secs_f64(),
        refused_at.duration_since(outage),
    );
    drop(server);
    mark_pg_cluster_ran().await;
}

/// The batching writer keeps one connection while writes come; one that
/// PostgreSQL dropped while nothing was written must not cost the next
/// durable publish a refusal.
#[tokio::test]
async fn a_postgres_restart_in_a_quiet_spell_refuses_no_publish() {
    let Some(pg) = PgCluster::start_if_configured("db_quiet_restart").await else { return };
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &["--database-url", &pg.url()]).await;
    let api = Api::new(server.http_addr);
    let (mut car, _) = RawConn::connect_v5(server.mqtt_addr, "car-1", true, None).await;
    assert!(v5_qos1(&mut car, 1, 1.0, FIRST_REFUSAL).await < 0x80, "stored before the restart");

    tokio::time::sleep(QUIET_SPELL).await;
    pg.stop_immediate().await;
    pg.start().await;

    assert!(v5_qos1(&mut car, 2, 2.0, FIRST_REFUSAL).await < 0x80, "refused after the restart");
    let page =
        expect_json(api.get(&format!("/api/v1/history/{TOPIC}"), None).await, StatusCode::OK).await;
    assert_eq!(lons(&page), [2.0, 1.0]);
    drop(server);
    mark_pg_cluster_ran().await;
}

/// QoS 0 positions written to the wire in one go: each is a write nobody
/// waits for, so together they fill the writer's queue during an outage.
async fn flood_qos0_locations(addr: std::net::SocketAddr, n: usize) {
    let (mut flooder, _) = RawConn::connect_v3(addr, "flooder", true).await;
    let base = an_hour_ago_ms();
    let mut bytes = Vec::new();
    for i in 0..n {
        let payload = location_at((i % 170) as f64, 0.0, base + i as i64);
        bytes.extend(crate::helpers::qos0_publish("devices/flooder/location", payload.as_bytes()));
        if bytes.len() > 1 << 20 {
            flooder.send_bytes(&bytes).await;
            bytes.clear();
        }
    }
    flooder.send_bytes(&bytes).await;
}

/// Session state acknowledged during a long outage (a SUBACK, an UNSUBACK)
/// while the writer's queue is full of writes nobody waits for: once the
/// database is back and the server restarts, the stored subscriptions are
/// exactly the acknowledged ones.
#[tokio::test]
async fn subscriptions_acknowledged_during_a_long_outage_survive_a_restart() {
    let Some(pg) = PgCluster::start_if_configured("db_outage_sessions").await else { return };
    let data_dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", &pg.url()];
    let server = ServerProcess::start(data_dir.path(), &args).await;
    let api = Api::new(server.http_addr);
    let keeper = || {
        V5Options::new("keeper", server.mqtt_addr).clean_start(false).session_expiry(Some(3_600))
    };
    let mut kept = keeper().connect().await;
    kept.subscribe("before/#", QoS::AtLeastOnce).await;
    kept.subscribe("dropped/#", QoS::AtLeastOnce).await;
    let mut watcher = V5Options::new("watcher", server.mqtt_addr).connect().await;
    watcher.subscribe("sync/#", QoS::AtMostOnce).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    pg.stop_immediate().await;
    // More writes than the queue holds and than are kept for retry.
    flood_qos0_locations(server.mqtt_addr, 140_000).await;
    // Routing is in order: once this arrives, the flood has been routed.
    let (mut marker, _) = RawConn::connect_v3(server.mqtt_addr, "marker", true).await;
    marker.publish_v3("sync/flood", 0, 0, b"routed").await;
    let synced = tokio::time::timeout(Duration::from_secs(120), watcher.recv_publish()).await;
    assert_eq!(text(&synced.expect("the flood is routed").payload), "routed");
    kept.subscribe("during/#", QoS::AtLeastOnce).await;
    kept.unsubscribe("dropped/#").await;
    // The outage goes on for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;

    pg.start().await;
    let back = Instant::now();
    while readyz(&api).await != 200 {
        assert!(back.elapsed() < RECOVERY, "not ready {RECOVERY:?} after PostgreSQL came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kept.disconnect().await;
    let status = server.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "a clean stop");

    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url()).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT filter FROM session_subscriptions WHERE client_id = 'keeper' ORDER BY filter",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(stored, ["before/#", "during/#"], "the database holds what was acknowledged");

    let server = ServerProcess::start(data_dir.path(), &args).await;
    let mut kept = V5Options::new("keeper", server.mqtt_addr)
        .clean_start(false)
        .session_expiry(Some(3_600))
        .connect()
        .await;
    assert!(kept.session_present(), "the session was restored");
    let publisher = V5Options::new("publisher", server.mqtt_addr).connect().await;
    for topic in ["dropped/1", "during/1", "before/1"] {
        publisher.publish(topic, QoS::AtLeastOnce, false, topic.to_owned()).await;
    }
    let got: Vec<String> = kept.recv_publishes(2).await.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, ["during/1", "before/1"]);
    kept.expect_no_publish(Duration::from_millis(500)).await;
    drop(server);
    mark_pg_cluster_ran().await;
}
