//! Crash forensics: a panic in a request or in an MQTT connection costs only
//! that request or connection, and leaves a crash report on disk that is
//! shipped to `logs-mapcast.crash-*` — also when an earlier run left it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::{Value, json};

use crate::elastic::{CRASH, shipping_config};
use crate::helpers::{
    Api, EsBulk, PASSWORD, RECV, ServerProcess, V3Options, add_admin, expect_problem, mapcast_cli,
};

const DEBUG_ON: &str = "[debug]\npanic_endpoint = true";

pub(crate) fn crash_files(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("crashes")) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Wait for the `n`th crash report and return it.
async fn nth_crash(data_dir: &Path, n: usize) -> (String, Value) {
    let deadline = Instant::now() + RECV;
    loop {
        let files = crash_files(data_dir);
        if let Some(path) = files.get(n - 1) {
            let doc =
                serde_json::from_str(&tokio::fs::read_to_string(path).await.unwrap()).unwrap();
            return (path.file_stem().unwrap().to_str().unwrap().to_owned(), doc);
        }
        assert!(Instant::now() < deadline, "no crash report #{n} in {}", data_dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_crash_fields(doc: &Value) {
    assert_eq!(doc["error.type"], "panic", "{doc}");
    assert!(doc["error.message"].as_str().unwrap().contains("debug panic"), "{doc}");
    assert!(!doc["error.stack_trace"].as_str().unwrap().is_empty());
    assert_eq!(doc["log.level"], "fatal");
    assert_eq!(doc["service.name"], "mapcast");
    assert_eq!(doc["service.version"], env!("CARGO_PKG_VERSION"));
    assert!(!doc["mapcast.build.commit"].as_str().unwrap().is_empty());
    assert!(!doc["process.thread.name"].as_str().unwrap().is_empty());
    assert!(doc["process.uptime"].is_u64());
    assert!(doc["log.origin.file.name"].as_str().unwrap().ends_with(".rs"), "{doc}");
    assert!(doc["log.origin.file.line"].as_u64().unwrap() > 0);
    assert_eq!(doc["trace.id"].as_str().unwrap().len(), 32, "{doc}");
    assert!(!doc["mapcast.crash.breadcrumbs"].as_array().unwrap().is_empty());
    assert!(!doc["mapcast.crash.spans"].as_array().unwrap().is_empty(), "{doc}");
    assert!(doc["mapcast.crash.feature_flags"].is_array());
    assert!(doc["mapcast.crash.config"]["data_dir"].is_string());
}

#[tokio::test]
async fn a_panicking_request_gets_a_500_problem_and_leaves_a_crash_report() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server =
        ServerProcess::start_with_config(dir.path(), &shipping_config(&es.url(), DEBUG_ON), &[])
            .await;
    let api = Api::new(server.http_addr);
    let token = api.login("root", PASSWORD).await;

    let anonymous = api.post_json("/api/v1/admin/debug/panic", None, &json!({})).await;
    expect_problem(anonymous, 401, "unauthorized").await;
    assert!(crash_files(dir.path()).is_empty(), "only admins may trigger it");

    let resp = api.post_json("/api/v1/admin/debug/panic", Some(&token), &json!({})).await;
    expect_problem(resp, 500, "internal").await;
    assert!(api.get("/healthz", None).await.status().is_success(), "the process survived");

    let (id, doc) = nth_crash(dir.path(), 1).await;
    assert_crash_fields(&doc);
    assert_eq!(doc["error.id"], id);
    assert_eq!(doc["http.route"], "/api/v1/admin/debug/panic", "{doc}");
    assert!(doc["log.origin.file.name"].as_str().unwrap().ends_with("debug.rs"), "{doc}");
    assert!(!doc.to_string().contains(PASSWORD), "no secret in a crash report");
    // The breadcrumbs end with what led here.
    let crumbs = doc["mapcast.crash.breadcrumbs"].as_array().unwrap();
    assert!(
        crumbs.last().unwrap().as_str().unwrap().contains("panicking on request"),
        "{crumbs:?}"
    );
    // The request's own log line carries the crash's trace id.
    let logged = server.logs();
    assert!(logged.contains(doc["trace.id"].as_str().unwrap()));

    // Shipped to the crash data stream, then marked as shipped.
    assert!(
        es.wait_for(RECV, |es| es.accepted().iter().any(|a| a.index == CRASH && a.id == id)).await,
        "crash report not shipped; violations: {:?}",
        es.violations()
    );
    let marker = dir.path().join("crashes").join(format!("{id}.shipped"));
    let deadline = Instant::now() + RECV;
    while !marker.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marker.exists());

    // The command line reads the same report, while the server runs.
    let data_dir = dir.path().to_str().unwrap();
    let (ok, list, err) = mapcast_cli(&["crashes", "list", "--data-dir", data_dir], "").await;
    assert!(ok, "{err}");
    assert!(list.contains(&id) && list.contains("shipped") && list.contains("debug.rs"), "{list}");
    let (ok, shown, err) = mapcast_cli(&["crashes", "show", &id, "--data-dir", data_dir], "").await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&shown).unwrap(), doc);
}

#[tokio::test]
async fn a_panicking_mqtt_connection_dies_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(dir.path(), DEBUG_ON, &[]).await;
    let mut bystander = V3Options::new("bystander", server.mqtt_addr).connect().await;
    bystander.subscribe("t/#", QoS::AtLeastOnce).await;

    // Anonymous clients (allowed on loopback) may trigger it, like admins.
    let mut victim = V3Options::new("victim", server.mqtt_addr).connect().await;
    victim.publish("$debug/panic", QoS::AtMostOnce, false, "boom").await;
    victim.wait_closed(RECV).await;

    let mut publisher = V3Options::new("publisher", server.mqtt_addr).connect().await;
    publisher.publish_qos1("t/1", false, "still here").await;
    assert_eq!(&bystander.recv_publish().await.payload[..], b"still here");

    let (_, doc) = nth_crash(dir.path(), 1).await;
    assert_crash_fields(&doc);
    assert_eq!(doc["client.id"], "victim", "{doc}");
    assert_eq!(doc["mqtt.protocol"], "3.1.1", "{doc}");
    assert!(doc["log.origin.file.name"].as_str().unwrap().ends_with("session.rs"), "{doc}");
    let spans = doc["mapcast.crash.spans"].as_array().unwrap();
    assert!(spans.iter().any(|s| s["name"] == "mqtt.connection"), "{spans:?}");
}

#[tokio::test]
async fn debug_panics_are_off_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(server.http_addr);

    let resp = api.post_json("/api/v1/admin/debug/panic", None, &json!({})).await;
    expect_problem(resp, 404, "not-found").await;
    let client = V3Options::new("curious", server.mqtt_addr).connect().await;
    client.publish("$debug/panic", QoS::AtMostOnce, false, "boom").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(crash_files(dir.path()).is_empty());
    assert!(api.get("/healthz", None).await.status().is_success());
}

#[tokio::test]
async fn a_crash_report_left_by_an_earlier_run_is_shipped_at_start() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let crashes = dir.path().join("crashes");
    std::fs::create_dir_all(&crashes).unwrap();
    let id = "20260101T000000Z-0badf00d";
    let earlier = json!({
        "@timestamp": "2026-01-01T00:00:00.000000Z",
        "error.type": "panic",
        "error.message": "left by a killed process",
        "error.id": id,
    });
    tokio::fs::write(crashes.join(format!("{id}.json")), earlier.to_string()).await.unwrap();

    let _server =
        ServerProcess::start_with_config(dir.path(), &shipping_config(&es.url(), ""), &[]).await;

    assert!(
        es.wait_for(RECV, |es| es.accepted().iter().any(|a| a.index == CRASH && a.id == id)).await,
        "violations: {:?}",
        es.violations()
    );
    let shipped = es.accepted().into_iter().find(|a| a.id == id).unwrap();
    assert_eq!(shipped.doc, earlier);
    let marker = crashes.join(format!("{id}.shipped"));
    let deadline = Instant::now() + RECV;
    while !marker.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marker.exists(), "marked as shipped");
}
