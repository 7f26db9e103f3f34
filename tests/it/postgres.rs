//! The durability round trip on PostgreSQL. Runs only when
//! `MAPCAST_TEST_POSTGRES_URL` is set (CI starts a throwaway cluster); each
//! run gets a fresh database.

use crate::helpers::{fresh_postgres_database, mark_postgres_ran, postgres_test_url};

#[tokio::test]
async fn retained_and_queued_messages_survive_kill_9_on_postgres() {
    let Some(base) = postgres_test_url("retained_and_queued_messages_survive_kill_9_on_postgres")
    else {
        return;
    };
    let url = fresh_postgres_database(&base).await;

    crate::restart::retained_and_queued_messages_survive_kill_9(&["--database-url", &url]).await;

    mark_postgres_ran().await;
}

#[tokio::test]
async fn the_in_process_app_runs_on_postgres() {
    let Some(base) = postgres_test_url("the_in_process_app_runs_on_postgres") else {
        return;
    };
    let url = fresh_postgres_database(&base).await;
    let app = crate::helpers::spawn_app_with(|s| {
        s.database.url = Some(mapcast::domain::Secret::new(url.clone()));
    })
    .await;

    let ready = app.http_get("/readyz").await;
    let mut publisher = app.v5_client("pg-pub", true, None).await;
    publisher.publish_qos1("pg/retained", true, "stored in postgres").await;
    let mut viewer = app.v5_client("pg-viewer", true, None).await;
    viewer.subscribe("pg/retained", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;

    assert_eq!(ready.status(), 200);
    assert_eq!(&viewer.recv_publish().await.payload[..], b"stored in postgres");
    mark_postgres_ran().await;
}
