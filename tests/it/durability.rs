//! What an acknowledgement survives and what one data directory holds: the
//! SQLite sync mode the running store commits with, one instance per data
//! directory, and a map build that fails being counted and shown.

use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Api, ServerProcess, expect_json, location, metric};

/// `PRAGMA synchronous` of the running application's own store (2 FULL, 1 NORMAL).
async fn synchronous_of_running_store(
    configure: impl FnOnce(&mut mapcast::config::Settings),
) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = mapcast::config::Settings::default();
    settings.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.data_dir = dir.path().to_path_buf();
    configure(&mut settings);
    let app = mapcast::startup::Application::build(settings).await.expect("build the application");
    let mut conn = app.store().pool().acquire().await.unwrap();
    let level: (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
    drop(conn);
    let stop = CancellationToken::new();
    stop.cancel();
    app.run_until_stopped(stop).await.expect("a clean stop");
    level.0
}

#[tokio::test]
async fn the_running_store_commits_power_safe_by_default_and_normal_when_configured() {
    assert_eq!(synchronous_of_running_store(|_| {}).await, 2, "FULL by default");
    let normal = synchronous_of_running_store(|s| {
        s.database.sqlite_synchronous = mapcast::store::SqliteSynchronous::Normal;
    })
    .await;
    assert_eq!(normal, 1, "NORMAL when database.sqlite_synchronous = \"normal\"");
}

#[tokio::test]
async fn a_second_instance_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(first.http_addr);
    assert_eq!(api.get("/readyz", None).await.status(), StatusCode::OK);

    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_mapcast"))
        .args(["serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("MAPCAST_CONFIG")
        .env_remove("MAPCAST_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second instance must exit, not serve")
        .unwrap();
    let output =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the second instance exited {:?}: {output}", out.status);
    assert!(
        output.contains("another mapcast instance")
            && output.contains(&format!("process {}", first.pid()))
            && output.contains("mapcast.lock"),
        "no clear message naming the holder: {output}"
    );

    // The first one still works, database included.
    let put = api
        .send(
            Method::POST,
            "/api/v1/topics/devices/car-1/location",
            None,
            Some(("application/geo+json", location(4.9, 52.4))),
        )
        .await;
    assert!(put.status().is_success(), "{:?}", put.text().await);
    assert_eq!(api.get("/readyz", None).await.status(), StatusCode::OK);
    let status = first.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));

    // Once the first has exited, the directory is free again.
    let again = ServerProcess::start(dir.path(), &[]).await;
    assert_eq!(Api::new(again.http_addr).get("/readyz", None).await.status(), StatusCode::OK);
}

/// Poll `/readyz` until its JSON body has `status` = `want`.
async fn wait_for_readiness(api: &Api, want: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body = expect_json(api.get("/readyz", None).await, StatusCode::OK).await;
        if body["status"] == want {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never said {want}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_failing_map_build_is_counted_and_readiness_shows_the_map_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_config(dir.path(), "[map]\ninterval_secs = 1\n", &[]).await;
    let api = Api::new(server.http_addr);
    let put = |lon: f64| {
        api.send(
            Method::POST,
            "/api/v1/topics/devices/car-1/location",
            None,
            Some(("application/geo+json", location(lon, 52.4))),
        )
    };
    assert!(put(4.9).await.status().is_success());
    wait_for_readiness(&api, "ready").await;
    assert_eq!(metric(server.http_addr, "mapcast_updater_build_failures_total").await, 0.0);

    // From outside, the database refuses map records only: every other
    // write (the positions included) still commits.
    let url = format!("sqlite://{}", dir.path().join("mapcast.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_maps BEFORE INSERT ON map_snapshots \
         BEGIN SELECT RAISE(ABORT, 'map records refused'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert!(put(5.0).await.status().is_success());

    let body = wait_for_readiness(&api, "degraded").await;
    let why = body["degraded"]["map"].as_str().unwrap_or_default();
    assert!(why.contains("map records refused"), "{body}");
    let failures = metric(server.http_addr, "mapcast_updater_build_failures_total").await;
    assert!(failures >= 1.0, "{failures}");

    // A failed build is retried without waiting for another change.
    sqlx::query("DROP TRIGGER refuse_maps").execute(&mut db).await.unwrap();
    wait_for_readiness(&api, "ready").await;
    let map = expect_json(api.get("/api/v1/map", None).await, StatusCode::OK).await;
    assert_eq!(map["features"][0]["geometry"]["coordinates"][0], 5.0, "{map}");
}
