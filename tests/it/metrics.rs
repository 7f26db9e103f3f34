//! `GET /metrics`: valid Prometheus text exposition that counts what the
//! broker and the API did.

use std::collections::{HashMap, HashSet};

use crate::helpers::spawn_app;

/// A strict reader of the Prometheus text format (0.0.4): every sample
/// belongs to a metric declared by `# TYPE` before it, names and labels are
/// well-formed, values are numbers, histograms end with `+Inf`, `_sum` and
/// `_count`. Returns each sample line's value by `name{labels}`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut samples = HashMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "bad name in {line:?}");
            helped.insert(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "TYPE twice: {line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad name in {line:?}");
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
            let inner = inner.unwrap_or_else(|| panic!("bad labels in {line:?}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label {line:?}"));
                assert!(valid_name(k) && v.starts_with('"'), "bad label in {line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line:?}");
        assert!(helped.contains(family), "sample without HELP: {line:?}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_a_publish() {
    let app = spawn_app().await;
    let before = parse_exposition(&app.http_get("/metrics").await.text().await.unwrap());

    let mut client = app.v3_client("metered", true).await;
    client.publish_qos1("metrics/probe", false, "12345").await;

    let resp = app.http_get("/metrics").await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let after = parse_exposition(&resp.text().await.unwrap());

    let received = "mapcast_messages_received_total";
    assert_eq!(after[received] - before[received], 1.0);
    assert!(after["mapcast_bytes_received_total"] - before["mapcast_bytes_received_total"] >= 5.0);
    assert_eq!(after["mapcast_clients_connected"], 1.0);
    assert!(after.contains_key("mapcast_messages_dropped_total{reason=\"expired\"}"));
    // The first /metrics request is in the latency histogram of its route.
    assert!(after["mapcast_http_request_duration_seconds_count{route=\"/metrics\"}"] >= 1.0);
    assert_eq!(
        after["mapcast_http_request_duration_seconds_bucket{route=\"/metrics\",le=\"+Inf\"}"],
        after["mapcast_http_request_duration_seconds_count{route=\"/metrics\"}"]
    );
    // The publish was committed by the store writer: its batch is counted.
    assert!(after["mapcast_db_batch_ops_count"] >= 1.0);
}

#[test]
fn the_reader_refuses_malformed_text() {
    for bad in [
        "mapcast_x 1\n",                                  // no TYPE
        "# HELP a h\n# TYPE a counter\na one\n",          // bad value
        "# HELP a h\n# TYPE a counter\n# TYPE a gauge\n", // TYPE twice
        "# HELP a h\n# TYPE a counter\na{b=c} 1\n",       // unquoted label
    ] {
        assert!(std::panic::catch_unwind(|| parse_exposition(bad)).is_err(), "{bad:?}");
    }
}

/// `mapcast_qos_inflight_outbound` as `/metrics` reports it.
async fn inflight(app: &crate::helpers::TestApp) -> f64 {
    let text = app.http_get("/metrics").await.text().await.unwrap();
    parse_exposition(&text)["mapcast_qos_inflight_outbound"]
}

#[tokio::test]
async fn a_qos1_delivery_is_in_flight_until_its_puback() {
    let app = spawn_app().await;
    let mut slow = app.v3("slow-acker").manual_acks().connect().await;
    slow.subscribe("inflight/#", rumqttc::QoS::AtLeastOnce).await;
    let mut publisher = app.v3_client("publisher", true).await;

    publisher.publish_qos1("inflight/1", false, "x").await;
    let delivery = slow.recv_publish().await;
    assert_eq!(inflight(&app).await, 1.0);

    slow.client.ack(&delivery).await.unwrap();
    let deadline = std::time::Instant::now() + crate::helpers::RECV;
    while inflight(&app).await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "still in flight after the PUBACK");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
