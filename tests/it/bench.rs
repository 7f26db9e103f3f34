//! `mapcast-bench` measures what it claims: against the real broker, every
//! message the subscriptions call for is counted once, with latency.

use mapcast_bench::TargetArgs;
use mapcast_bench::conns::{ConnsArgs, measure as measure_conns};
use mapcast_bench::map::{MapArgs, measure as measure_map};
use mapcast_bench::pubsub::{PubSubArgs, measure as measure_pubsub};
use mapcast_bench::wire::Version;

use crate::helpers::{TestApp, fast_map, spawn_app, spawn_app_with};

fn target(app: &TestApp, version: Version) -> TargetArgs {
    TargetArgs {
        host: app.mqtt_addr.ip().to_string(),
        port: app.mqtt_addr.port(),
        mqtt_version: version,
        username: None,
        password: None,
        keep_alive: 60,
        broker_pid: Some(std::process::id()),
        json: false,
        source_addresses: 1,
    }
}

fn pubsub(app: &TestApp, version: Version, qos: u8) -> PubSubArgs {
    PubSubArgs {
        target: target(app, version),
        publishers: 4,
        subscribers: 2,
        subscriber_port: None,
        topic: "cars/{i}/location".into(),
        filter: "cars/+/location".into(),
        qos,
        rate: 200.0,
        duration: 1.0,
        warmup: 0.2,
        drain: 3.0,
        payload_size: None,
        inflight: 10,
        batch: 16,
        max_backlog: 20_000,
        connect_rate: 0.0,
    }
}

#[tokio::test]
async fn every_publish_reaches_every_matching_subscriber_exactly_once_at_each_qos() {
    let app = spawn_app().await;
    for (version, qos) in
        [(Version::V311, 0), (Version::V311, 1), (Version::V5, 1), (Version::V5, 2)]
    {
        let report = measure_pubsub(pubsub(&app, version, qos)).await.unwrap();

        let t = &report.totals;
        assert!(t.published >= 4 * 200, "{version:?} QoS {qos}: {t:?}");
        assert_eq!(t.expected, 2 * t.published, "{version:?} QoS {qos}");
        assert_eq!(t.delivered, t.expected, "{version:?} QoS {qos}: {t:?}");
        assert_eq!((t.lost, t.duplicates, t.foreign), (0, 0, 0), "{version:?} QoS {qos}");
        if qos > 0 {
            assert_eq!((t.acked, t.rejected), (t.published, 0), "{version:?} QoS {qos}");
        }
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.latency.count > 0 && report.latency.p50_us > 0.0, "{:?}", report.latency);
        assert!(report.latency.p50_us <= report.latency.p99_us);
        assert!(!report.series.is_empty());
        assert!(report.broker_process.is_some());
    }
}

#[tokio::test]
async fn subscribers_only_count_the_publishers_their_filter_matches() {
    let app = spawn_app().await;
    let mut args = pubsub(&app, Version::V311, 1);
    args.filter = "cars/1/location".into();
    args.payload_size = Some(64);

    let report = measure_pubsub(args).await.unwrap();

    let t = &report.totals;
    // One of four publishers matches, for each of two subscribers.
    assert!(t.expected > 0 && t.expected < t.published, "{t:?}");
    assert_eq!((t.delivered, t.lost), (t.expected, 0), "{t:?}");
    assert_eq!(report.payload_bytes, 64);
}

#[tokio::test]
async fn a_fleet_comes_online_paced_from_several_source_addresses_then_publishes() {
    let app = spawn_app().await;
    let mut args = pubsub(&app, Version::V311, 1);
    args.target.source_addresses = 4;
    args.publishers = 200;
    args.connect_rate = 400.0;
    args.rate = 2.0;

    let report = measure_pubsub(args).await.unwrap();

    assert_eq!(report.connect_latency.count, 200, "{:?}", report.connect_latency);
    // 200 connections at 400/s: the last starts half a second after the first.
    assert!(report.publishers_connected_s >= 0.49, "{}", report.publishers_connected_s);
    let t = &report.totals;
    assert!(t.published >= 200, "{t:?}");
    assert_eq!((t.delivered, t.lost, t.acked), (t.expected, 0, t.published), "{t:?}");
}

#[tokio::test]
async fn idle_connections_are_opened_held_and_measured() {
    let app = spawn_app().await;
    let args = ConnsArgs {
        target: target(&app, Version::V5),
        connections: 200,
        connect_rate: 0.0,
        concurrency: 50,
        hold: 0.5,
        settle: 0.1,
    };

    let report = measure_conns(args).await.unwrap();

    assert_eq!((report.connected, report.failed, report.dropped), (200, 0, 0), "{report:?}");
    assert_eq!(report.connect_latency.count, 200);
    assert!(report.rss_kib_per_connection.is_some());
}

#[tokio::test]
async fn the_map_scenario_counts_304s_and_sees_the_map_advance() {
    let app = spawn_app_with(fast_map).await;
    let args = MapArgs {
        target: target(&app, Version::V311),
        http_url: format!("http://{}", app.http_addr),
        token: None,
        path: "/api/v1/map".into(),
        devices: 50,
        publishers: 5,
        topic: "devices/bench-{i}/location".into(),
        interval: 0.5,
        pollers: 4,
        duration: 2.5,
        warmup: 1.2,
    };

    let report = measure_map(args).await.unwrap();

    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.published >= 200, "50 devices twice a second for 2.5 s: {}", report.published);
    // Pollers send the ETag they hold: nearly every answer is a 304, and
    // each new map version is fetched once per poller.
    let ok = report.statuses.get(&200).copied().unwrap_or(0);
    assert_eq!(ok + report.not_modified, report.requests, "{:?}", report.statuses);
    assert!(report.not_modified > 10 * ok, "{:?}", report.statuses);
    assert!(ok >= 1, "the map changed during the window: {:?}", report.statuses);
    let (first, last) = (report.map_version_first.unwrap(), report.map_version_last.unwrap());
    assert!(last > first, "versions {first} → {last}");
    assert_eq!(report.latency.count, report.requests);
    assert!(report.server_process.is_some());
}
