//! A commit whose answer comes too late, or never, may still have
//! committed. PostgreSQL is made to spend 7 s in one COMMIT (a deferred
//! trigger that sleeps once), past the writer's 5 s attempt limit, and then
//! to commit or to fail: the publisher must be told which of the two
//! happened, and a QoS 2 message must reach its subscriber once, not once
//! from the commit that was called failed and again from the client's
//! resend.

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use sqlx::Connection;

use crate::helpers::{
    QUIET, RawConn, ServerProcess, fresh_postgres_database, mark_postgres_ran, packet_type,
    postgres_test_url,
};

const TOPIC: &str = "events/slow";
/// Longer than the writer's attempt limit (5 s).
const COMMIT_TAKES: &str = "7";

/// Make the next COMMIT that stores a copy of a `TOPIC` message take
/// [`COMMIT_TAKES`] seconds, then succeed or (with `fail`) raise.
async fn slow_down_the_next_commit(url: &str, fail: bool) {
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let end = if fail { "RAISE EXCEPTION 'commit refused';" } else { "" };
    let function = format!(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.topic = '{TOPIC}' AND nextval('slow_once') = 1 THEN \
             PERFORM pg_sleep({COMMIT_TAKES}); {end} \
           END IF; \
           RETURN NULL; \
         END $$"
    );
    for sql in [
        // A sequence: what a failing commit took back, it keeps.
        "CREATE SEQUENCE slow_once".to_owned(),
        function,
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON session_messages \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
            .to_owned(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut db).await.unwrap();
    }
}

/// Publish `payload` at QoS 2 as a v5 client would: a refusal ends the
/// exchange, and the client sends the message again under a new id until it
/// is taken, a second after each refusal. Returns the PUBREC reasons in order and how long the first took.
async fn publish_until_taken(conn: &mut RawConn, payload: &[u8]) -> (Vec<u8>, Duration) {
    let mut reasons = Vec::new();
    let started = Instant::now();
    let mut first_took = None;
    for pkid in 1..=20u16 {
        if pkid > 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        conn.publish_v5(TOPIC, QoS::ExactlyOnce, pkid, false, false, payload, None).await;
        let rec = conn
            .try_recv_type(packet_type::PUBREC, Duration::from_secs(30))
            .await
            .expect("a PUBREC");
        assert_eq!(rec.pkid(), pkid);
        first_took.get_or_insert(started.elapsed());
        reasons.push(rec.reason());
        if rec.reason() < 0x80 {
            conn.pubrel(pkid).await;
            assert_eq!(conn.recv_type(packet_type::PUBCOMP).await.pkid(), pkid);
            break;
        }
    }
    (reasons, first_took.unwrap())
}

/// How many copies of `payload` the persistent session `id` gets.
async fn copies_delivered(addr: std::net::SocketAddr, id: &str, payload: &[u8]) -> usize {
    let (mut sub, connack) = RawConn::connect_v5(addr, id, false, Some(300)).await;
    assert!(connack.session_present(), "the watcher's session is kept");
    let mut copies = 0;
    while let Ok(p) = sub.try_recv_type(packet_type::PUBLISH, QUIET * 4).await {
        if p.payload(true) == payload {
            copies += 1;
        }
        sub.pubrec(p.pkid()).await;
        assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), p.pkid());
        sub.pubcomp(p.pkid()).await;
    }
    copies
}

/// A watcher that subscribed and went away: what it gets is stored for it.
async fn offline_watcher(addr: std::net::SocketAddr, id: &str) {
    let (mut sub, _) = RawConn::connect_v5(addr, id, false, Some(300)).await;
    sub.subscribe_v5(1, "events/#", QoS::ExactlyOnce).await;
    sub.disconnect_v5(0).await;
}

async fn slow_commit_run(test: &str, fail: bool) -> Option<(Vec<u8>, Duration, usize)> {
    let base = postgres_test_url(test)?;
    let url = fresh_postgres_database(&base).await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &["--database-url", &url]).await;
    offline_watcher(server.mqtt_addr, "watch-slow").await;
    slow_down_the_next_commit(&url, fail).await;

    let (mut publisher, _) = RawConn::connect_v5(server.mqtt_addr, "pub-slow", true, None).await;
    let (reasons, first_took) = publish_until_taken(&mut publisher, b"once").await;
    // What the watcher gets comes from the database after a restart.
    server.terminate(Duration::from_secs(10)).await;
    let server = ServerProcess::start(data_dir.path(), &["--database-url", &url]).await;
    let copies = copies_delivered(server.mqtt_addr, "watch-slow", b"once").await;
    server.kill9().await;
    mark_postgres_ran().await;
    Some((reasons, first_took, copies))
}

#[tokio::test]
async fn a_commit_answered_late_is_reported_as_committed_and_delivered_once() {
    let test = "a commit answered late";
    let Some((reasons, first_took, copies)) = slow_commit_run(test, false).await else { return };
    println!("PUBREC reasons {reasons:?}, the first after {first_took:?}; {copies} copies");
    assert_eq!(copies, 1, "a message committed late was delivered {copies} times");
    assert_eq!(reasons, vec![0x00], "the publisher is told its message was taken");
    assert!(first_took >= Duration::from_secs(6), "answered after the commit: {first_took:?}");
}

#[tokio::test]
async fn a_commit_that_fails_late_is_reported_as_refused_and_the_resend_delivered_once() {
    let test = "a commit that fails late";
    let Some((reasons, first_took, copies)) = slow_commit_run(test, true).await else { return };
    println!("PUBREC reasons {reasons:?}, the first after {first_took:?}; {copies} copies");
    assert_eq!(copies, 1, "delivered {copies} times");
    // Refused, then (once the database takes writes again) taken.
    assert!(reasons[0] >= 0x80 && *reasons.last().unwrap() < 0x80, "{reasons:?}");
}
