//! OTLP traces, OTLP metrics and W3C trace context across protocols,
//! against a local OTLP/HTTP receiver ([`OtlpReceiver`]). The server is the
//! real binary; its span exporter flushes at shutdown, so trace tests stop it
//! before looking.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::Value;

use crate::helpers::{
    Api, ExportedPoint, OtlpReceiver, PASSWORD, RECV, ServerProcess, V3Options, V5Options,
    add_admin, location,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{PARENT}-01")
}

fn otlp_config(receiver: &OtlpReceiver) -> String {
    format!("[telemetry.otlp]\nendpoint = \"{}\"\nprotocol = \"http/json\"\n", receiver.url())
}

/// The stdout line (ECS) whose `url.path` is `path`, once it is printed.
async fn log_line(server: &ServerProcess, path: &str) -> Value {
    let deadline = std::time::Instant::now() + RECV;
    loop {
        let found = server
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["url.path"] == path);
        if let Some(line) = found {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "no log line for {path}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_with_traceparent(api_addr: std::net::SocketAddr, path: &str) {
    let resp = reqwest::Client::new()
        .get(format!("http://{api_addr}{path}"))
        .header("traceparent", traceparent())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn an_http_request_with_a_traceparent_continues_the_callers_trace() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(dir.path(), &otlp_config(&receiver), &[]).await;

    get_with_traceparent(server.http_addr, "/traced").await;
    Api::new(server.http_addr).get("/untraced", None).await;
    let line = log_line(&server, "/traced").await;
    let untraced = log_line(&server, "/untraced").await;
    assert!(server.terminate(Duration::from_secs(15)).await.is_some_and(|s| s.success()));

    let spans = receiver.spans();
    let request = spans
        .iter()
        .find(|s| s.name == "http.request" && s.trace_id == TRACE)
        .unwrap_or_else(|| panic!("no http.request span in the caller's trace: {spans:?}"));
    assert_eq!(request.parent_span_id, PARENT);
    // The log line names the same trace and span as the exported span.
    assert_eq!(line["trace.id"], TRACE);
    assert_eq!(line["span.id"], request.span_id.as_str());
    // A request without one starts its own trace, exported too.
    let own = untraced["trace.id"].as_str().unwrap();
    assert_ne!(own, TRACE);
    assert!(spans.iter().any(|s| s.trace_id == own && s.parent_span_id.is_empty()), "{spans:?}");
    assert!(receiver.violations().is_empty(), "{:?}", receiver.violations());
}

#[tokio::test]
async fn an_mqtt5_publish_with_a_traceparent_continues_the_publishers_trace() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(dir.path(), &otlp_config(&receiver), &[]).await;
    let mut subscriber = V5Options::new("trace-sub", server.mqtt_addr).connect().await;
    subscriber.subscribe("traced/#", QoS::AtLeastOnce).await;
    let publisher = V5Options::new("trace-pub", server.mqtt_addr).connect().await;

    let props = PublishProperties {
        user_properties: vec![("traceparent".into(), traceparent())],
        ..Default::default()
    };
    publisher.publish_with("traced/1", QoS::AtLeastOnce, false, "x", props).await;

    // The subscriber gets the context with the message.
    let delivered = subscriber.recv_publish().await;
    let user = delivered.properties.map(|p| p.user_properties).unwrap_or_default();
    assert!(user.contains(&("traceparent".into(), traceparent())), "{user:?}");
    assert!(server.terminate(Duration::from_secs(15)).await.is_some_and(|s| s.success()));

    let spans = receiver.spans();
    let publish = spans
        .iter()
        .find(|s| s.name == "mqtt.publish")
        .unwrap_or_else(|| panic!("no mqtt.publish span: {spans:?}"));
    assert_eq!(publish.trace_id, TRACE);
    assert_eq!(publish.parent_span_id, PARENT);
}

#[tokio::test]
async fn without_otlp_a_traceparent_still_correlates_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    get_with_traceparent(server.http_addr, "/traced-logs").await;
    assert_eq!(log_line(&server, "/traced-logs").await["trace.id"], TRACE);
}

/// The last exported value of metric `name` with exactly `attributes`.
fn last_point(points: &[ExportedPoint], name: &str, attributes: &[&str]) -> Option<f64> {
    points.iter().rev().find(|p| p.name == name && p.attributes == attributes).map(|p| p.value)
}

/// The value of an unlabelled sample in the Prometheus text.
fn prometheus_value(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_are_pushed_periodically_with_the_numbers_of_the_metrics_endpoint() {
    const SENT: usize = 25;
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[telemetry]\nmetrics_interval_secs = 1\n{}", otlp_config(&receiver));
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let mut subscriber = V5Options::new("otlp-metrics-sub", server.mqtt_addr).connect().await;
    subscriber.subscribe("otlp/metrics/#", QoS::AtLeastOnce).await;
    let publisher = V5Options::new("otlp-metrics-pub", server.mqtt_addr).connect().await;
    for i in 0..SENT {
        publisher.publish(&format!("otlp/metrics/{i}"), QoS::AtLeastOnce, false, "hello").await;
    }
    assert_eq!(subscriber.recv_publishes(SENT).await.len(), SENT);
    let text = Api::new(server.http_addr).get("/metrics", None).await.text().await.unwrap();
    let on_endpoint = prometheus_value(&text, "mapcast_messages_received_total");
    assert!(on_endpoint >= SENT as f64, "{text}");

    // A periodic export (not only the one at shutdown) catches up with the endpoint.
    let deadline = std::time::Instant::now() + RECV + Duration::from_secs(5);
    let received = loop {
        let points = receiver.points();
        match last_point(&points, "mapcast.messages.received", &[]) {
            Some(v) if v >= on_endpoint => break v,
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "no catching-up export: {points:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let points = receiver.points();
    let counter = points.iter().find(|p| p.name == "mapcast.messages.received").unwrap();
    assert!(counter.monotonic, "{counter:?}");
    assert!(received >= SENT as f64);
    assert!(last_point(&points, "mapcast.messages.sent", &[]).is_some_and(|v| v >= SENT as f64));
    assert!(
        last_point(&points, "mapcast.bytes.received", &[]).is_some_and(|v| v >= 5.0 * SENT as f64)
    );
    assert_eq!(last_point(&points, "mapcast.clients.connected", &[]), Some(2.0), "{points:?}");
    // Labels become attributes: one series per drop reason, as on `/metrics`.
    for reason in ["queue_full_qos0", "queue_full_qos1", "expired", "rejected_publish"] {
        let attributes = [format!("reason={reason}")];
        let attributes: Vec<&str> = attributes.iter().map(String::as_str).collect();
        assert!(
            last_point(&points, "mapcast.dropped", &attributes).is_some(),
            "{reason}: {points:?}"
        );
    }
    // Histograms arrive as count and sum; HTTP latency per route.
    assert!(
        points.iter().any(|p| p.name == "mapcast.http.request_duration_seconds.count"
            && p.attributes == ["route=/metrics"]
            && p.value >= 1.0),
        "{points:?}"
    );
    assert!(points.iter().any(|p| p.name == "mapcast.db.batch_ops.count"));

    // Shutting down exports the final values once more.
    let before = receiver.points().len();
    assert!(server.terminate(Duration::from_secs(15)).await.is_some_and(|s| s.success()));
    let after = receiver.points();
    assert!(after.len() > before, "no export at shutdown");
    assert!(last_point(&after, "mapcast.messages.received", &[]).is_some_and(|v| v >= received));
    assert!(receiver.violations().is_empty(), "{:?}", receiver.violations());
}

#[tokio::test]
async fn flag_variant_counters_are_exported_with_flag_and_variant_attributes() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let config = format!(
        "[map]\ninterval_secs = 1\n[telemetry]\nmetrics_interval_secs = 1\n{}",
        otlp_config(&receiver)
    );
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);
    let mut car = V3Options::new("car-otlp", server.mqtt_addr).connect().await;
    car.publish_qos1("devices/car-otlp/location", false, location(13.4, 52.5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while api.get("/api/v1/map", None).await.status() != 200 {
        assert!(std::time::Instant::now() < deadline, "no map snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = api.login("root", PASSWORD).await;
    let body = serde_json::json!({ "enabled": true, "rollout": 100 }).to_string();
    let flag = "/api/v1/flags/map.clustering";
    let put =
        api.send(reqwest::Method::PUT, flag, Some(&token), Some(("application/json", body))).await;
    assert_eq!(put.status(), 200);
    for _ in 0..3 {
        assert_eq!(api.get("/api/v1/map?zoom=3", Some(&token)).await.status(), 200);
    }

    let attributes = ["flag=map.clustering", "variant=on"];
    let deadline = std::time::Instant::now() + RECV + Duration::from_secs(5);
    loop {
        let points = receiver.points();
        if last_point(&points, "mapcast.feature_flags.requests", &attributes) == Some(3.0) {
            assert_eq!(last_point(&points, "mapcast.feature_flags.errors", &attributes), Some(0.0));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no flag counters: {points:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receiver.violations().is_empty(), "{:?}", receiver.violations());
}
