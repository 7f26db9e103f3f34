//! `telemetry.logstash_tcp`: log lines and metrics documents reach a
//! Logstash `tcp` input as JSON lines (`json_lines` codec), and the writer
//! reconnects when Logstash goes away and comes back. The receiving end here
//! is a plain TCP listener reading lines, as that input does.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Api, ServerProcess};

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
