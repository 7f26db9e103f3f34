//! `telemetry.logstash_tcp`: log lines and metrics documents reach a
//! Logstash `tcp` input as JSON lines (`json_lines` codec), and the writer
//! reconnects when Logstash goes away and comes back. The receiving end here
//! is a plain TCP listener reading lines, as that input does. With Logstash
//! as the only way out, crash reports go there too (also those of an
//! earlier run), and the pipeline file routes each kind to its data stream.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Api, ServerProcess, V3Options};

/// Read JSON lines from `conn` until `done` holds for one of them.
async fn read_until(conn: TcpStream, done: impl Fn(&Value) -> bool) -> (Vec<Value>, TcpStream) {
    let mut reader = BufReader::new(conn);
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap() == 0 {
                return false;
            }
            let doc: Value = serde_json::from_str(line.trim_end())
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
            let hit = done(&doc);
            seen.push(doc);
            if hit {
                return true;
            }
        }
    })
    .await;
    assert!(matches!(found, Ok(true)), "not found among {} lines: {seen:?}", seen.len());
    (seen, reader.into_inner())
}

#[tokio::test]
async fn logs_and_metrics_reach_logstash_as_json_lines_across_a_reconnect() {
    let logstash = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = logstash.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[telemetry]\nmetrics_interval_secs = 1\nlogstash_tcp = \"{addr}\"\n");
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);

    let (conn, _) = tokio::time::timeout(Duration::from_secs(10), logstash.accept())
        .await
        .expect("mapcast connects to Logstash")
        .unwrap();
    api.get("/logstash-first", None).await;
    let (seen, conn) = read_until(conn, |d| d["url.path"] == "/logstash-first").await;
    assert!(seen.iter().all(|d| d["@timestamp"].is_string()), "ECS documents");
    let (_, conn) = read_until(conn, |d| d["event.dataset"] == "mapcast.broker").await;

    // Logstash restarts: the connection drops, mapcast reconnects.
    drop(conn);
    api.get("/logstash-lost-maybe", None).await;
    let (conn, _) = tokio::time::timeout(Duration::from_secs(15), logstash.accept())
        .await
        .expect("mapcast reconnects")
        .unwrap();
    api.get("/logstash-second", None).await;
    read_until(conn, |d| d["url.path"] == "/logstash-second").await;
    drop(server);
}

/// Waits until `path` exists.
async fn wait_for_file(path: &std::path::Path) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !path.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    path.exists()
}

#[tokio::test]
async fn without_elasticsearch_crash_reports_and_metrics_go_to_logstash_and_reach_their_streams() {
    let logstash = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = logstash.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A report an earlier run wrote but could not send (killed before it could).
    let crashes = dir.path().join("crashes");
    std::fs::create_dir_all(&crashes).unwrap();
    let earlier_id = "20260101T000000Z-0badf00d";
    let earlier = serde_json::json!({
        "@timestamp": "2026-01-01T00:00:00.000000Z",
        "event.dataset": "mapcast.crash",
        "error.type": "panic",
        "error.message": "left by a killed process",
        "error.id": earlier_id,
    });
    tokio::fs::write(crashes.join(format!("{earlier_id}.json")), earlier.to_string())
        .await
        .unwrap();
    let config = format!(
        "[debug]\npanic_endpoint = true\n[telemetry]\nmetrics_interval_secs = 1\nlogstash_tcp = \"{addr}\"\n"
    );
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let (conn, _) = tokio::time::timeout(Duration::from_secs(10), logstash.accept())
        .await
        .expect("mapcast connects to Logstash")
        .unwrap();

    let (mut seen, conn) = read_until(conn, |d| d["error.id"] == earlier_id).await;
    assert!(
        wait_for_file(&crashes.join(format!("{earlier_id}.shipped"))).await,
        "the earlier report is marked shipped once sent"
    );
    // A crash now: an anonymous client on loopback may trigger one.
    let victim = V3Options::new("victim", server.mqtt_addr).connect().await;
    victim.publish("$debug/panic", rumqttc::QoS::AtMostOnce, false, "boom").await;
    let (more, conn) =
        read_until(conn, |d| d["event.dataset"] == "mapcast.crash" && d["error.id"] != earlier_id)
            .await;
    seen.extend(more);
    let (more, _conn) = read_until(conn, |d| d["event.dataset"] == "mapcast.broker").await;
    seen.extend(more);
    let live = seen
        .iter()
        .find(|d| d["event.dataset"] == "mapcast.crash" && d["error.id"] != earlier_id)
        .unwrap();
    let live_id = live["error.id"].as_str().unwrap();
    assert!(
        wait_for_file(&crashes.join(format!("{live_id}.shipped"))).await,
        "a live report is marked shipped once sent"
    );

    // Through the pipeline file as Logstash would route them.
    let pipeline = crate::elk_files::logstash::pipeline_text();
    let indices = mapcast::telemetry::elastic::Indices::new("default", false);
    let routed = |d: &Value| crate::elk_files::logstash::routed_stream(&pipeline, d);
    use mapcast::telemetry::elastic::Stream;
    assert_eq!(routed(&earlier), indices.of(Stream::Crash));
    assert_eq!(routed(live), indices.of(Stream::Crash));
    let metrics = seen.iter().find(|d| d["event.dataset"] == "mapcast.broker").unwrap();
    assert_eq!(routed(metrics), indices.of(Stream::Metrics));
    let log =
        seen.iter().find(|d| d["event.dataset"].is_null() || d["event.dataset"] == "mapcast.app");
    assert_eq!(routed(log.expect("a log line")), indices.of(Stream::App));
    drop(server);
}
