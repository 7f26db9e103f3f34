//! A CONNACK, SUBACK or UNSUBACK of a persistent session promises that what
//! it answers is stored: the broker killed with SIGKILL the moment the
//! answer arrives, then restarted, still knows the session and its
//! subscriptions as answered.
//!
//! A steady stream of QoS 0 positions keeps the store writer committing at
//! its interval (set long here), so a write that nobody waits for would sit
//! in memory for most of it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use tokio::task::JoinHandle;

use crate::helpers::{
    QUIET, ServerProcess, V5Client, V5Options, fresh_postgres_database, location,
    mark_postgres_ran, postgres_test_url, text,
};

const SLOW_COMMITS: &str = "[database]\ncommit_interval_ms = 500\n";
/// Each round is a fresh crash; one lucky commit must not pass the test.
const ROUNDS: usize = 3;

/// QoS 0 positions every 2 ms until dropped.
fn keep_the_writer_busy(addr: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let car = V5Options::new("busy-car", addr).connect().await;
        loop {
            car.publish("devices/busy-car/location", QoS::AtMostOnce, false, location(1.0, 2.0))
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

async fn start(data_dir: &Path, db: &[&str]) -> (ServerProcess, JoinHandle<()>) {
    let server = ServerProcess::start_with_config(data_dir, SLOW_COMMITS, db).await;
    let busy = keep_the_writer_busy(server.mqtt_addr);
    // Let the stream set the writer's pace.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (server, busy)
}

fn phone(client_id: &str, addr: SocketAddr) -> V5Options {
    V5Options::new(client_id, addr).clean_start(false).session_expiry(Some(3600))
}

/// Publish an alert for phone `id`, acknowledged.
async fn alert(addr: SocketAddr, id: &str) {
    let mut ops = V5Options::new("ops", addr).connect().await;
    ops.publish_qos1(&format!("alerts/{id}/battery"), false, "low").await;
}

/// Crash, restart, and resume `client_id`'s session.
async fn crash_and_resume(
    server: ServerProcess,
    busy: JoinHandle<()>,
    data_dir: &Path,
    db: &[&str],
    client_id: &str,
) -> (ServerProcess, V5Client) {
    // The stream stops first (its client would panic on the dead
    // connection); the writer keeps the pace it set.
    busy.abort();
    server.kill9().await;
    let server = ServerProcess::start(data_dir, db).await;
    let resumed = phone(client_id, server.mqtt_addr).connect().await;
    (server, resumed)
}

async fn a_session_is_stored_before_its_connack(db: &[&str]) {
    for round in 0..ROUNDS {
        let data_dir = tempfile::tempdir().unwrap();
        let (server, busy) = start(data_dir.path(), db).await;
        let id = format!("phone-1-{round}");
        let fresh = phone(&id, server.mqtt_addr).connect().await;
        assert!(!fresh.session_present());
        let (server, resumed) = crash_and_resume(server, busy, data_dir.path(), db, &id).await;
        assert!(
            resumed.session_present(),
            "round {round}: the session its CONNACK created is gone after the crash\n{}",
            server.logs()
        );
        server.kill9().await;
    }
}

async fn a_subscription_is_stored_before_its_suback(db: &[&str]) {
    for round in 0..ROUNDS {
        let data_dir = tempfile::tempdir().unwrap();
        let (server, busy) = start(data_dir.path(), db).await;
        let id = format!("phone-2-{round}");
        let mut fresh = phone(&id, server.mqtt_addr).connect().await;
        fresh.subscribe(&format!("alerts/{id}/#"), QoS::AtLeastOnce).await;
        let (server, mut resumed) = crash_and_resume(server, busy, data_dir.path(), db, &id).await;
        assert!(resumed.session_present(), "round {round}: session lost\n{}", server.logs());
        alert(server.mqtt_addr, &id).await;
        match resumed.try_recv_publish(Duration::from_secs(3)).await {
            Some(p) => assert_eq!(text(&p.payload), "low"),
            None => panic!(
                "round {round}: the subscription its SUBACK granted is gone after the crash\n{}",
                server.logs()
            ),
        }
        server.kill9().await;
    }
}

async fn an_unsubscription_is_stored_before_its_unsuback(db: &[&str]) {
    for round in 0..ROUNDS {
        let data_dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(data_dir.path(), db).await;
        let id = format!("phone-3-{round}");
        let mut first = phone(&id, server.mqtt_addr).connect().await;
        first.subscribe(&format!("alerts/{id}/#"), QoS::AtLeastOnce).await;
        first.disconnect().await;
        assert!(server.terminate(Duration::from_secs(10)).await.is_some());

        let (server, busy) = start(data_dir.path(), db).await;
        let mut fresh = phone(&id, server.mqtt_addr).connect().await;
        fresh.unsubscribe(&format!("alerts/{id}/#")).await;
        let (server, mut resumed) = crash_and_resume(server, busy, data_dir.path(), db, &id).await;
        alert(server.mqtt_addr, &id).await;
        if let Some(p) = resumed.try_recv_publish(QUIET).await {
            panic!(
                "round {round}: received {:?} on a filter its UNSUBACK removed\n{}",
                text(&p.payload),
                server.logs()
            );
        }
        server.kill9().await;
    }
}

#[tokio::test]
async fn a_persistent_session_is_stored_before_its_connack_on_sqlite() {
    a_session_is_stored_before_its_connack(&[]).await;
}

#[tokio::test]
async fn a_subscription_is_stored_before_its_suback_on_sqlite() {
    a_subscription_is_stored_before_its_suback(&[]).await;
}

#[tokio::test]
async fn an_unsubscription_is_stored_before_its_unsuback_on_sqlite() {
    an_unsubscription_is_stored_before_its_unsuback(&[]).await;
}

#[tokio::test]
async fn session_answers_are_stored_before_they_leave_on_postgres() {
    let Some(base) = postgres_test_url("session_answers_are_stored_before_they_leave_on_postgres")
    else {
        return;
    };
    for check in 0..3 {
        let url = fresh_postgres_database(&base).await;
        let db = ["--database-url", url.as_str()];
        match check {
            0 => a_session_is_stored_before_its_connack(&db).await,
            1 => a_subscription_is_stored_before_its_suback(&db).await,
            _ => an_unsubscription_is_stored_before_its_unsuback(&db).await,
        }
    }
    mark_postgres_ran().await;
}
