//! Several instances on one PostgreSQL database: one map, built once per
//! interval by whichever instance holds the map lease, served alike by all.
//! Runs only when `MAPCAST_TEST_POSTGRES_URL` is set.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

use crate::helpers::{
    ServerProcess, V5Options, feature_ids, fresh_postgres_database, location, mark_postgres_ran,
    postgres_test_url,
};

/// The map lease lapses this long after its holder dies (`updater::LEASE_TTL`).
const LEASE_TTL: Duration = Duration::from_secs(10);

async fn start_instance(url: &str) -> (ServerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start(dir.path(), &["--database-url", url, "--map-interval", "1"]).await;
    (server, dir)
}

async fn publish_position(mqtt: SocketAddr, device: &str, lon: f64, lat: f64) {
    let mut car = V5Options::new(device, mqtt).connect().await;
    car.publish_qos1(&format!("devices/{device}/location"), false, location(lon, lat)).await;
    car.disconnect().await;
}

/// `GET /api/v1/map` on one instance: its ETag and document.
async fn map_of(http: SocketAddr) -> (String, Value) {
    let resp = reqwest::get(format!("http://{http}/api/v1/map")).await.unwrap();
    if resp.status() == 503 {
        return (String::new(), Value::Null);
    }
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    (etag, resp.json().await.unwrap())
}

/// Poll every instance until each serves a map that `done` accepts, with
/// one ETag and one document among them.
async fn wait_for_one_map(
    instances: &[&ServerProcess],
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> (String, Value) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        seen.clear();
        for node in instances {
            seen.push(map_of(node.http_addr).await);
        }
        let agreed = seen.windows(2).all(|w| w[0] == w[1]);
        if agreed && done(&seen[0].1) {
            return seen.swap_remove(0);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = instances.iter().map(|n| n.logs()).collect();
            panic!(
                "instances never served one map; last seen {seen:#?}\nlogs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn instances_sharing_a_database_serve_one_map_of_every_device_and_it_survives_its_builder() {
    let Some(base) = postgres_test_url(
        "instances_sharing_a_database_serve_one_map_of_every_device_and_it_survives_its_builder",
    ) else {
        return;
    };
    let url = fresh_postgres_database(&base).await;
    let (a, _da) = start_instance(&url).await;
    let (b, _db) = start_instance(&url).await;

    // Each car talks to a different instance.
    publish_position(a.mqtt_addr, "car-a", 13.4, 52.5).await;
    publish_position(b.mqtt_addr, "car-b", 2.35, 48.85).await;
    let (etag, map) =
        wait_for_one_map(&[&a, &b], Duration::from_secs(20), |m| m["total"] == 2).await;
    assert_eq!(feature_ids(&map), ["car-a", "car-b"]);
    assert_eq!(etag, format!("\"{}\"", map["version"]));

    // A subscriber on the instance that does not build gets the map too.
    let builds = |n: &ServerProcess| n.logs().contains("this instance builds the map now");
    assert!(
        builds(&a) != builds(&b),
        "exactly one instance builds:\n{}\n---\n{}",
        a.logs(),
        b.logs()
    );
    let (builder, other) = if builds(&a) { (a, b) } else { (b, a) };
    let mut phone = V5Options::new("phone", other.mqtt_addr).connect().await;
    phone.subscribe("map/version", QoS::AtLeastOnce).await;
    let retained: Value = serde_json::from_slice(&phone.recv_publish().await.payload).unwrap();
    assert_eq!(retained["total"], 2);

    for node in [&builder, &other] {
        let logs = node.logs();
        assert!(!logs.contains("snapshot not recorded"), "no version was built twice:\n{logs}");
    }

    // The builder dies: the other instance takes over within the lease.
    let before = map["version"].as_u64().unwrap();
    builder.kill9().await;
    publish_position(other.mqtt_addr, "car-c", -0.1, 51.5).await;
    let (_, after) =
        wait_for_one_map(&[&other], LEASE_TTL + Duration::from_secs(10), |m| m["total"] == 3).await;
    assert!(after["version"].as_u64().unwrap() > before, "versions keep rising: {after}");
    assert_eq!(feature_ids(&after), ["car-a", "car-b", "car-c"]);
    assert!(builds(&other), "the survivor took the lease:\n{}", other.logs());
    mark_postgres_ran().await;
}
