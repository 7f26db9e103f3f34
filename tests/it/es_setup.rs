//! `mapcast es setup` end to end against osmem-server (an Elasticsearch-API
//! server that presents itself as OpenSearch; `MAPCAST_TEST_OSMEM` names its
//! binary). The template files are written for Elasticsearch; OpenSearch
//! lacks `flattened` and `histogram`, so setup must detect the server and
//! adapt, and the indices mapcast then writes must carry those mappings.

use std::path::Path;

use rumqttc::QoS;
use serde_json::Value;

use crate::elastic::{Osmem, shipping_config};
use crate::helpers::{Api, ServerProcess, V3Options, mapcast_cli};

fn osmem_bin() -> Option<String> {
    let bin = std::env::var("MAPCAST_TEST_OSMEM").ok();
    if bin.is_none() {
        eprintln!("skipped: MAPCAST_TEST_OSMEM is not set");
    }
    bin
}

async fn es_setup(url: &str, dir: &Path, toml: &str) -> (bool, String, String) {
    let config = dir.join("setup.toml");
    tokio::fs::write(&config, toml).await.unwrap();
    mapcast_cli(
        &[
            "es",
            "setup",
            "--config",
            config.to_str().unwrap(),
            "--elasticsearch-url",
            url,
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        "",
    )
    .await
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or_default())
}

/// The mapping of `field` (dotted) in a `_mapping` or template `properties`,
/// whether the server keeps dotted names or expands them into objects.
fn mapping_of<'v>(properties: &'v Value, field: &str) -> Option<&'v Value> {
    if let Some(m) = properties.get(field) {
        return Some(m);
    }
    let (head, rest) = field.split_once('.')?;
    mapping_of(&properties.get(head)?["properties"], rest)
}

#[tokio::test]
async fn es_setup_installs_opensearch_mappings_on_an_opensearch_server() {
    let Some(bin) = osmem_bin() else { return };
    let osmem = Osmem::start(&bin).await;
    let dir = tempfile::tempdir().unwrap();

    // The files as written are refused: that is why setup adapts them.
    let raw = include_str!("../../dashboards/templates/metrics-mapcast.broker.json");
    let http = reqwest::Client::new();
    let component = include_str!("../../dashboards/templates/mapcast-ecs@mappings.json");
    http.put(format!("{}/_component_template/mapcast-ecs@mappings", osmem.url))
        .header("content-type", "application/json")
        .body(component)
        .send()
        .await
        .unwrap();
    let refused = http
        .put(format!("{}/_index_template/raw-metrics", osmem.url))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400, "osmem-server accepts histogram now?");

    let (ok, stdout, stderr) = es_setup(&osmem.url, dir.path(), "").await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(stdout.lines().all(|l| l.contains("(OpenSearch ")), "{stdout}");

    let (status, crash) = get(&format!("{}/_index_template/logs-mapcast.crash", osmem.url)).await;
    assert_eq!(status, 200, "{crash}");
    let template = &crash["index_templates"][0]["index_template"];
    assert!(template["data_stream"].is_object(), "{template}");
    let props = &template["template"]["mappings"]["properties"];
    assert_eq!(mapping_of(props, "mapcast.crash.spans").unwrap()["type"], "flat_object");
}

#[tokio::test]
async fn after_es_setup_a_shipped_crash_lands_in_an_index_with_the_templates_mappings() {
    let Some(bin) = osmem_bin() else { return };
    let osmem = Osmem::start(&bin).await;
    let dir = tempfile::tempdir().unwrap();
    let plain = "[telemetry.elasticsearch]\nplain_indices = true\n";
    let (ok, stdout, stderr) = es_setup(&osmem.url, dir.path(), plain).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("index template mapcast-plain-logs-mapcast.crash"), "{stdout}");

    let config =
        shipping_config(&osmem.url, "plain_indices = true\n[debug]\npanic_endpoint = true");
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);
    let victim = V3Options::new("setup-victim", server.mqtt_addr).connect().await;
    victim.publish("$debug/panic", QoS::AtMostOnce, false, "boom").await;

    let crash = osmem
        .search_until(
            "mapcast-logs-crash-default",
            serde_json::json!({"term": {"client.id": "setup-victim"}}),
        )
        .await;
    assert_eq!(crash["error.type"], "panic", "{crash}");
    osmem
        .search_until("mapcast-metrics-broker-default", serde_json::json!({"match_all": {}}))
        .await;

    // The indices got the templates' mappings, not dynamic ones.
    let (_, mapping) = get(&format!("{}/mapcast-logs-crash-default/_mapping", osmem.url)).await;
    let props = &mapping["mapcast-logs-crash-default"]["mappings"]["properties"];
    for (field, kind) in [
        ("mapcast.crash.spans", "flat_object"),
        ("mapcast.crash.breadcrumbs", "match_only_text"),
        ("error.stack_trace", "wildcard"),
        ("trace.id", "keyword"),
        ("feature_flag.result.variant", "keyword"),
    ] {
        let found =
            mapping_of(props, field).unwrap_or_else(|| panic!("{field} not mapped: {props}"));
        assert_eq!(found["type"], kind, "{field}: {found}");
    }
    let (_, mapping) = get(&format!("{}/mapcast-metrics-broker-default/_mapping", osmem.url)).await;
    let props = &mapping["mapcast-metrics-broker-default"]["mappings"]["properties"];
    let histogram = mapping_of(props, "mapcast.db.batch_duration_seconds.histogram").unwrap();
    assert_eq!(histogram["enabled"], false, "{histogram}");
    assert_eq!(mapping_of(props, "mapcast.dropped.expired").unwrap()["type"], "long");

    assert!(api.get("/healthz", None).await.status().is_success());
}
