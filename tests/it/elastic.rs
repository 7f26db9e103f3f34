//! Shipping to Elasticsearch, against the strict local `_bulk` endpoint
//! ([`EsBulk`]) and, when `MAPCAST_TEST_OSMEM` names an `osmem-server`
//! binary, end to end against a real Elasticsearch-API server.
//!
//! The server under test is the real binary (its telemetry is process-wide:
//! one subscriber, one shipper, one panic hook per process). Log documents
//! are made on demand: every HTTP request logs one `request completed` line
//! carrying its `url.path`, so `GET /marker-N` ships a document we can find.

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::Value;

use crate::helpers::{
    Api, EsBulk, PASSWORD, ServerProcess, V3Options, add_admin, location, mapcast_cli,
};

pub const APP: &str = "logs-mapcast.app-default";
pub const CRASH: &str = "logs-mapcast.crash-default";
pub const METRICS: &str = "metrics-mapcast.broker-default";

/// Shipping to `url` with short intervals, so tests run in seconds.
pub fn shipping_config(url: &str, extra: &str) -> String {
    format!(
        r#"
[telemetry]
metrics_interval_secs = 1
[telemetry.elasticsearch]
url = "{url}"
flush_interval_ms = 100
request_timeout_secs = 1
max_backoff_secs = 1
{extra}
"#
    )
}

/// Accepted documents of `index` whose `url.path` is `path`.
fn with_path(es: &EsBulk, index: &str, path: &str) -> usize {
    es.accepted().iter().filter(|a| a.index == index && a.doc["url.path"] == path).count()
}

async fn get_paths(api: &Api, paths: impl IntoIterator<Item = String>) {
    for path in paths {
        api.get(&path, None).await;
    }
}

/// A counter or gauge of `GET /metrics` (summed over its label sets).
pub async fn metric(api: &Api, name: &str) -> f64 {
    let text = api.get("/metrics", None).await.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[allow(clippy::disallowed_methods, reason = "a test reading a few small files")]
fn spooled_lines(data_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir.join("telemetry/spool")) else { return 0 };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .map(|text| text.lines().count())
        .sum()
}

#[tokio::test]
async fn logs_and_metrics_are_bulk_created_into_their_data_streams() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_config(dir.path(), &shipping_config(&es.url(), ""), &[]).await;
    let api = Api::new(server.http_addr);

    get_paths(&api, (0..20).map(|i| format!("/ship-normal-{i}"))).await;

    let all_arrived = es
        .wait_for(Duration::from_secs(10), |es| {
            (0..20).all(|i| with_path(es, APP, &format!("/ship-normal-{i}")) == 1)
        })
        .await;
    assert!(all_arrived, "missing log documents; violations: {:?}", es.violations());
    assert!(
        es.wait_for(Duration::from_secs(10), |es| !es
            .find(METRICS, "mapcast.uptime_seconds")
            .is_empty())
            .await,
        "no metrics document"
    );
    assert!(es.violations().is_empty(), "{:?}", es.violations());

    // The shipped document is the stdout line, field for field.
    let shipped = es.find(APP, "/ship-normal-3\"").remove(0).doc;
    let printed: Value = server
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["url.path"] == "/ship-normal-3")
        .expect("the stdout line");
    assert_eq!(shipped, printed);
    assert_eq!(shipped["trace.id"].as_str().unwrap().len(), 32);

    let metrics = es.find(METRICS, "mapcast.uptime_seconds").remove(0).doc;
    assert_eq!(metrics["event.dataset"], "mapcast.broker");
    assert!(metrics["mapcast.messages.received"].is_u64(), "{metrics}");
    assert!(metrics["mapcast.db.batch_duration_seconds"]["count"].is_u64(), "{metrics}");
}

#[tokio::test]
async fn an_outage_spools_to_disk_and_replays_in_order_across_a_restart() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shipping_config(&es.url(), "");
    es.fail_whole(Some(503));

    // Before and across a restart, while Elasticsearch answers 503.
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);
    get_paths(&api, (0..200).map(|i| format!("/outage-{i:04}"))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled_lines(dir.path()) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(spooled_lines(dir.path()) >= 200, "spooled: {}", spooled_lines(dir.path()));
    assert!(metric(&api, "mapcast_telemetry_spool_documents").await >= 200.0);
    assert!(server.terminate(Duration::from_secs(15)).await.is_some_and(|s| s.success()));

    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);
    get_paths(&api, (200..300).map(|i| format!("/outage-{i:04}"))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(es.accepted().len(), 0, "nothing can be written during the outage");

    // Elasticsearch returns: everything arrives once, in order.
    es.fail_whole(None);
    let arrived = es
        .wait_for(Duration::from_secs(30), |es| {
            (0..300).all(|i| with_path(es, APP, &format!("/outage-{i:04}")) == 1)
        })
        .await;
    let missing: Vec<_> =
        (0..300).filter(|i| with_path(&es, APP, &format!("/outage-{i:04}")) != 1).collect();
    assert!(arrived, "lost or duplicated: {missing:?}");
    let order: Vec<String> = es
        .accepted()
        .iter()
        .filter_map(|a| {
            a.doc["url.path"].as_str().filter(|p| p.starts_with("/outage-")).map(str::to_owned)
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "replayed out of order");
    assert!(es.violations().is_empty(), "{:?}", es.violations());

    let drained = es.wait_for(Duration::from_secs(10), |_| spooled_lines(dir.path()) == 0).await;
    assert!(drained, "the spool still holds {} documents", spooled_lines(dir.path()));
}

#[tokio::test]
async fn items_rejected_with_429_are_retried_alone_until_written() {
    let es = EsBulk::start().await;
    es.fail_items("/p429-", 429, Some(6));
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_config(dir.path(), &shipping_config(&es.url(), ""), &[]).await;
    let api = Api::new(server.http_addr);

    get_paths(
        &api,
        (0..3).map(|i| format!("/p429-{i}")).chain((0..10).map(|i| format!("/fine-{i}"))),
    )
    .await;

    let arrived = es
        .wait_for(Duration::from_secs(15), |es| {
            (0..3).all(|i| with_path(es, APP, &format!("/p429-{i}")) == 1)
                && (0..10).all(|i| with_path(es, APP, &format!("/fine-{i}")) == 1)
        })
        .await;
    assert!(arrived, "violations: {:?}", es.violations());
    assert_eq!(es.item_status_count(429), 6, "every injected 429 was met");
    assert_eq!(es.item_status_count(409), 0, "only the rejected items were sent again");
    assert!(metric(&api, "mapcast_telemetry_retried_total").await >= 6.0);
    assert!(es.violations().is_empty(), "{:?}", es.violations());
}

#[tokio::test]
async fn items_rejected_with_400_are_dead_lettered_and_counted_not_retried() {
    let es = EsBulk::start().await;
    es.fail_items("/p400-", 400, None);
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_config(dir.path(), &shipping_config(&es.url(), ""), &[]).await;
    let api = Api::new(server.http_addr);

    get_paths(
        &api,
        (0..3).map(|i| format!("/p400-{i}")).chain((0..5).map(|i| format!("/good-{i}"))),
    )
    .await;

    let good = es
        .wait_for(Duration::from_secs(10), |es| {
            (0..5).all(|i| with_path(es, APP, &format!("/good-{i}")) == 1)
        })
        .await;
    assert!(good);
    let dead_letter = dir.path().join("telemetry/dead-letter.ndjson");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        let text = tokio::fs::read_to_string(&dead_letter).await.unwrap_or_default();
        lines = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert_eq!(line["status"], 400);
        assert_eq!(line["error"]["type"], "mapper_parsing_exception");
        assert!(line["document"]["url.path"].as_str().unwrap().starts_with("/p400-"));
    }
    assert_eq!(es.item_status_count(400), 3, "a 400 is never retried");
    assert_eq!(metric(&api, "mapcast_telemetry_dead_lettered_total").await, 3.0);
}

/// Round-trip times of `n` QoS 1 publishes (PUBLISH → PUBACK), sorted.
async fn qos1_round_trips(addr: std::net::SocketAddr, id: &str, n: usize) -> Vec<Duration> {
    let mut client = V3Options::new(id, addr).connect().await;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        client.publish_qos1("latency/probe", false, format!("{i}")).await;
        times.push(start.elapsed());
    }
    client.disconnect().await;
    times.sort();
    times
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test]
async fn a_stalled_elasticsearch_does_not_slow_the_broker() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_config(dir.path(), &shipping_config(&es.url(), ""), &[]).await;
    let api = Api::new(server.http_addr);
    // Keep the shipper busy with log documents the whole time.
    let noise = tokio::spawn({
        let api = api.clone();
        async move {
            for i in 0.. {
                api.get(&format!("/noise-{i}"), None).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    let _warm_up = qos1_round_trips(server.mqtt_addr, "lat-warm", 50).await;
    let healthy = qos1_round_trips(server.mqtt_addr, "lat-healthy", 300).await;
    // Every `_bulk` now hangs past the shipper's 1 s timeout.
    es.stall(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = qos1_round_trips(server.mqtt_addr, "lat-stalled", 300).await;
    noise.abort();

    let (healthy_p99, stalled_p99) = (p99(&healthy), p99(&stalled));
    eprintln!(
        "QoS 1 round trip p99: healthy {healthy_p99:?}, Elasticsearch stalled {stalled_p99:?}"
    );
    assert!(
        stalled_p99 <= healthy_p99 * 5 + Duration::from_millis(50),
        "p99 {stalled_p99:?} with Elasticsearch stalled vs {healthy_p99:?} healthy"
    );
    assert!(spooled_lines(dir.path()) > 0, "the stalled shipper spools");
}

#[tokio::test]
async fn es_setup_installs_the_templates_of_the_three_data_streams() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = mapcast_cli(
        &[
            "es",
            "setup",
            "--elasticsearch-url",
            &es.url(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    let templates = es.templates();
    let component = &templates["/_component_template/mapcast-ecs@mappings"];
    assert!(component["template"]["mappings"]["properties"]["error.type"].is_object());
    for (name, index) in [
        ("logs-mapcast.app", APP),
        ("logs-mapcast.crash", CRASH),
        ("metrics-mapcast.broker", METRICS),
    ] {
        let t = &templates[&format!("/_index_template/{name}")];
        assert!(t["data_stream"].is_object(), "{name}");
        assert!(t["priority"].as_u64().unwrap() > 100, "{name}");
        assert_eq!(t["composed_of"][0], "mapcast-ecs@mappings");
        let pattern = t["index_patterns"][0].as_str().unwrap();
        assert!(index.starts_with(pattern.trim_end_matches('*')), "{pattern} vs {index}");
    }
    assert!(es.violations().is_empty(), "{:?}", es.violations());
}

/// End to end against osmem-server (an Elasticsearch-API server from PyPI):
/// logs, metrics and a crash land in plain indices and `_search` finds the
/// crash by `error.type` and its connection's logs by `trace.id`.
#[tokio::test]
async fn logs_and_a_crash_are_found_with_search_in_a_real_server() {
    let Ok(bin) = std::env::var("MAPCAST_TEST_OSMEM") else {
        eprintln!("skipped: MAPCAST_TEST_OSMEM is not set");
        return;
    };
    let osmem = Osmem::start(&bin).await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        shipping_config(&osmem.url, "plain_indices = true\n[debug]\npanic_endpoint = true");
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);

    get_paths(&api, (0..5).map(|i| format!("/osmem-{i}"))).await;
    let victim = V3Options::new("osmem-victim", server.mqtt_addr).connect().await;
    victim.publish("$debug/panic", QoS::AtMostOnce, false, "boom").await;

    let crash = osmem
        .search_until(
            "mapcast-logs-crash-default",
            serde_json::json!({"match": {"error.type": "panic"}}),
        )
        .await;
    assert_eq!(crash["client.id"], "osmem-victim", "{crash}");
    let trace_id = crash["trace.id"].as_str().expect("a trace id").to_owned();
    let log = osmem
        .search_until(
            "mapcast-logs-app-default",
            serde_json::json!({"match": {"trace.id": trace_id}}),
        )
        .await;
    assert_eq!(log["client.id"], "osmem-victim", "{log}");
    osmem
        .search_until(
            "mapcast-logs-app-default",
            serde_json::json!({"match": {"url.path": "/osmem-3"}}),
        )
        .await;
    osmem
        .search_until("mapcast-metrics-broker-default", serde_json::json!({"match_all": {}}))
        .await;
    assert!(api.get("/healthz", None).await.status().is_success(), "the process survived");

    if let Ok(marker_dir) = std::env::var("MAPCAST_TEST_MARKER_DIR") {
        std::fs::create_dir_all(&marker_dir).unwrap();
        tokio::fs::write(Path::new(&marker_dir).join("osmem-ran"), b"ok\n").await.unwrap();
    }
}

/// A running osmem-server, killed on drop.
pub(crate) struct Osmem {
    pub(crate) url: String,
    _child: tokio::process::Child,
    http: reqwest::Client,
}

impl Osmem {
    pub(crate) async fn start(bin: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(bin)
            .args(["-addr", "127.0.0.1:0", "-parent-pid", &std::process::id().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start osmem-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("osmem-server printed nothing")
            .unwrap()
            .expect("osmem-server exited");
        let info: Value = serde_json::from_str(&first).expect("osmem-server's first line is JSON");
        let url = info["url"].as_str().expect("a url").to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { url, _child: child, http: reqwest::Client::new() }
    }

    /// The first hit of `query` in `index`, polling until there is one.
    pub(crate) async fn search_until(&self, index: &str, query: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let resp = self
                .http
                .post(format!("{}/{index}/_search", self.url))
                .json(&serde_json::json!({ "query": query }))
                .send()
                .await;
            if let Ok(resp) = resp
                && let Ok(body) = resp.json::<Value>().await
                && let Some(hit) = body["hits"]["hits"].get(0)
            {
                return hit["_source"].clone();
            }
            assert!(Instant::now() < deadline, "nothing in {index} matches {query}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The per-variant counters of `/metrics` are in the shipped metrics
/// document too, one object per flag variant.
#[tokio::test]
async fn flag_variant_counters_are_shipped_in_the_metrics_document() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let config = shipping_config(&es.url(), "[map]\ninterval_secs = 1\n");
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);
    let mut car = V3Options::new("car-flags", server.mqtt_addr).connect().await;
    car.publish_qos1("devices/car-flags/location", false, location(13.4, 52.5)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.get("/api/v1/map", None).await.status() != 200 {
        assert!(Instant::now() < deadline, "no map snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = api.login("root", PASSWORD).await;
    let body = serde_json::json!({ "enabled": true, "rollout": 100 }).to_string();
    let put = api
        .send(
            reqwest::Method::PUT,
            "/api/v1/flags/map.clustering",
            Some(&token),
            Some(("application/json", body)),
        )
        .await;
    assert_eq!(put.status(), 200);
    for _ in 0..3 {
        assert_eq!(api.get("/api/v1/map?zoom=3", Some(&token)).await.status(), 200);
    }
    let line = "mapcast_feature_flag_requests_total{flag=\"map.clustering\",variant=\"on\"} 3";
    let text = api.get("/metrics", None).await.text().await.unwrap();
    assert!(text.contains(line), "{text}");

    let row = serde_json::json!({
        "flag": "map.clustering", "variant": "on", "requests": 3, "errors": 0, "crashes": 0,
    });
    let shipped = es
        .wait_for(Duration::from_secs(10), |es| {
            es.accepted().iter().any(|a| {
                a.index == METRICS
                    && a.doc["mapcast.feature_flags"].as_array().is_some_and(|r| r.contains(&row))
            })
        })
        .await;
    assert!(shipped, "no metrics document with {row}");
    assert!(es.violations().is_empty(), "{:?}", es.violations());
}
