//! `$SYS/broker/...` statistics, published periodically like Mosquitto's.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{TestApp, V5Client, spawn_app_with, text, v5_topic};

async fn app_with_fast_sys() -> TestApp {
    spawn_app_with(|s| s.broker.sys_interval_secs = 1).await
}

/// Collect `$SYS` values until `done` says enough, or ~3.5 s pass.
async fn watch_sys(
    sys: &mut V5Client,
    mut done: impl FnMut(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    while !done(&seen) && tokio::time::Instant::now() < deadline {
        if let Some(p) = sys.try_recv_publish(Duration::from_millis(200)).await {
            seen.insert(v5_topic(&p), text(&p.payload));
        }
    }
    seen
}

fn number(seen: &HashMap<String, String>, topic: &str) -> Option<u64> {
    seen.get(topic).and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn sys_topics_report_version_uptime_clients_and_messages() {
    let app = app_with_fast_sys().await;
    let mut sys = app.v5_client("sys", true, None).await;

    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;

    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
    ];
    // Retained values from before this client connected arrive first; wait
    // for a tick that counts it.
    let seen = watch_sys(&mut sys, |s| {
        wanted.iter().all(|t| s.contains_key(*t))
            && number(s, "$SYS/broker/clients/connected").is_some_and(|n| n >= 1)
    })
    .await;
    let missing: Vec<_> = wanted.iter().filter(|t| !seen.contains_key(**t)).collect();
    assert!(missing.is_empty(), "missing {missing:?}; saw {seen:?}");
    assert!(seen["$SYS/broker/version"].contains(env!("CARGO_PKG_VERSION")), "{seen:?}");
    let uptime = &seen["$SYS/broker/uptime"];
    assert!(
        uptime.split_whitespace().next().is_some_and(|n| n.parse::<u64>().is_ok()),
        "uptime: {uptime:?}"
    );
    assert!(number(&seen, "$SYS/broker/clients/connected").is_some_and(|n| n >= 1), "{seen:?}");
}

#[tokio::test]
async fn clients_connected_follows_connections_and_disconnections() {
    let app = app_with_fast_sys().await;
    let mut sys = app.v5_client("sys", true, None).await;
    let a = app.v5_client("a", true, None).await;
    let b = app.v3_client("b", true).await;
    let _c = app.v5_client("c", true, None).await;
    sys.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce).await;

    let four = watch_sys(&mut sys, |s| number(s, "$SYS/broker/clients/connected") == Some(4)).await;
    assert_eq!(number(&four, "$SYS/broker/clients/connected"), Some(4));

    a.disconnect().await;
    b.kill().await;

    let two = watch_sys(&mut sys, |s| number(s, "$SYS/broker/clients/connected") == Some(2)).await;
    assert_eq!(number(&two, "$SYS/broker/clients/connected"), Some(2));
}

#[tokio::test]
async fn messages_received_counts_publishes() {
    let app = app_with_fast_sys().await;
    let mut sys = app.v5_client("sys", true, None).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    for i in 0..5 {
        publisher.publish_qos1("counted", false, i.to_string()).await;
    }

    sys.subscribe("$SYS/broker/messages/received", QoS::AtMostOnce).await;

    let seen =
        watch_sys(&mut sys, |s| number(s, "$SYS/broker/messages/received").is_some_and(|n| n >= 5))
            .await;
    assert!(number(&seen, "$SYS/broker/messages/received").is_some_and(|n| n >= 5), "{seen:?}");
}

#[tokio::test]
async fn sys_statistics_are_retained_so_a_new_subscriber_gets_them_at_once() {
    let app = app_with_fast_sys().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut sys = app.v5_client("sys", true, None).await;

    sys.subscribe("$SYS/broker/version", QoS::AtMostOnce).await;

    let got = sys.try_recv_publish(Duration::from_millis(200)).await;
    assert!(got.is_some_and(|p| p.retain), "the last $SYS value is retained");
}
