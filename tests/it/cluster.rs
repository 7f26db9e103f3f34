//! Several instances as one broker: PostgreSQL shared, publishes crossing
//! instances on a Redis stream. Runs when `MAPCAST_TEST_POSTGRES_URL` is
//! set and `redis-server` is on the PATH.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::helpers::{
    Cluster, RedisServer, ServerProcess, V5Options, fresh_postgres_database, mark_redis_ran,
    postgres_test_url, text,
};

async fn cluster(test: &str, n: usize) -> Option<Cluster> {
    Cluster::start(test, n).await
}

/// Publish `m0`..`m{count - 1}` at QoS 1 on `topic` through node `from`,
/// each acknowledged (with success) before the next.
async fn publish_count(c: &Cluster, from: usize, client: &str, topic: &str, count: u64) {
    let mut car = V5Options::new(client, c.node(from).mqtt_addr).connect().await;
    for n in 0..count {
        let ack = car.publish_qos1(topic, false, format!("m{n}")).await;
        assert_eq!(ack.reason, PubAckReason::Success, "m{n} refused\n{}", c.logs());
    }
    car.disconnect().await;
}

#[tokio::test]
async fn a_publish_on_one_instance_reaches_subscribers_on_the_others_once_and_in_order() {
    let test = "a_publish_on_one_instance_reaches_subscribers_on_the_others_once_and_in_order";
    let Some(c) = cluster(test, 3).await else { return };
    let mut watchers = Vec::new();
    for i in 1..3 {
        let mut w = V5Options::new(&format!("watcher-{i}"), c.node(i).mqtt_addr).connect().await;
        w.subscribe("fleet/#", QoS::AtLeastOnce).await;
        watchers.push(w);
    }
    // Each node reads the stream from its end at start: give the readers
    // a moment to be there before the first publish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    const COUNT: u64 = 2_000;
    publish_count(&c, 0, "car-1", "fleet/car-1", COUNT).await;
    for w in &mut watchers {
        let got = w.recv_publishes(COUNT as usize).await;
        let numbers: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
        let expected: Vec<String> = (0..COUNT).map(|n| format!("m{n}")).collect();
        assert_eq!(numbers, expected, "every message once, in order\n{}", c.logs());
        assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce));
        w.expect_no_publish(Duration::from_millis(500)).await;
    }

    // A retained value set on one instance is there for a new subscriber
    // on another.
    let mut setter = V5Options::new("setter", c.node(2).mqtt_addr).connect().await;
    setter.publish_qos1("fleet/config", true, "v2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = V5Options::new("late", c.node(0).mqtt_addr).connect().await;
    late.subscribe("fleet/config", QoS::AtLeastOnce).await;
    assert_eq!(text(&late.recv_publish().await.payload), "v2");
    mark_redis_ran().await;
}

#[tokio::test]
async fn redis_restarting_loses_no_acknowledged_publish_and_readiness_follows_it() {
    let test = "redis_restarting_loses_no_acknowledged_publish_and_readiness_follows_it";
    let Some(mut c) = cluster(test, 2).await else { return };
    let mut watcher = V5Options::new("watcher", c.node(1).mqtt_addr).connect().await;
    watcher.subscribe("fleet/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_count(&c, 0, "car-1", "fleet/before", 100).await;
    assert_eq!(watcher.recv_publishes(100).await.len(), 100);

    c.redis.kill().await;
    // Publishes are still taken (and stored) while Redis is away...
    publish_count(&c, 0, "car-2", "fleet/during", 100).await;
    // ...and both instances say they are not ready.
    for i in 0..2 {
        wait_for_readiness(&c, i, 503).await;
    }
    c.redis.start().await;
    let got = watcher.recv_publishes(100).await;
    let numbers: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let expected: Vec<String> = (0..100).map(|n| format!("m{n}")).collect();
    assert_eq!(
        numbers,
        expected,
        "the ones taken during the outage arrive, in order\n{}",
        c.logs()
    );
    for i in 0..2 {
        wait_for_readiness(&c, i, 200).await;
    }
    mark_redis_ran().await;
}

/// An instance named `id` (kept across its restarts) on `db` and `redis`.
async fn named_node(dir: &std::path::Path, id: &str, db: &str, redis: &str) -> ServerProcess {
    let toml = format!("[cluster]\nnode_id = \"{id}\"\n");
    ServerProcess::start_with_config(
        dir,
        &toml,
        &["--database-url", db, "--cluster-redis-url", redis],
    )
    .await
}

/// Instances `node-a` and `node-b` on a fresh database and their own
/// Redis, with a watcher of `fleet/#` on B.
struct Pair {
    redis: RedisServer,
    db: String,
    dir_a: tempfile::TempDir,
    dir_b: tempfile::TempDir,
    a: ServerProcess,
    b: ServerProcess,
    watcher: crate::helpers::V5Client,
}

async fn pair(test: &str) -> Option<Pair> {
    let base = postgres_test_url(test)?;
    let redis = RedisServer::start_if_available(test).await?;
    let db = fresh_postgres_database(&base).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = named_node(dir_a.path(), "node-a", &db, &redis.url()).await;
    let b = named_node(dir_b.path(), "node-b", &db, &redis.url()).await;
    let mut watcher = V5Options::new("watcher", b.mqtt_addr).connect().await;
    watcher.subscribe("fleet/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Some(Pair { redis, db, dir_a, dir_b, a, b, watcher })
}

#[tokio::test]
async fn publishes_acknowledged_during_a_redis_outage_survive_their_instance_dying() {
    let test = "publishes_acknowledged_during_a_redis_outage_survive_their_instance_dying";
    let Some(Pair { mut redis, db, dir_a, dir_b: _dir_b, a, b, mut watcher }) = pair(test).await
    else {
        return;
    };
    let logs = |a: &ServerProcess| format!("{}\n---\n{}", a.logs(), b.logs());

    // Shared while Redis is there: none of these may come again later.
    let mut car = V5Options::new("car-0", a.mqtt_addr).connect().await;
    for n in 0..20 {
        car.publish_qos1("fleet/before", false, format!("b{n}")).await;
    }
    assert_eq!(watcher.recv_publishes(20).await.len(), 20);

    redis.kill().await;
    let mut car = V5Options::new("car-1", a.mqtt_addr).connect().await;
    for n in 0..100 {
        let ack = car.publish_qos1("fleet/during", false, format!("m{n}")).await;
        assert_eq!(ack.reason, PubAckReason::Success, "m{n} refused\n{}", logs(&a));
    }
    // Acknowledged, still waiting for Redis on node A: now it dies.
    a.kill9().await;
    redis.start().await;
    let a = named_node(dir_a.path(), "node-a", &db, &redis.url()).await;

    let got = watcher.recv_publishes(100).await;
    let numbers: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let expected: Vec<String> = (0..100).map(|n| format!("m{n}")).collect();
    assert_eq!(numbers, expected, "every acknowledged publish, in order\n{}", logs(&a));
    watcher.expect_no_publish(Duration::from_secs(1)).await;

    // Once passed on, they are forgotten: another restart repeats none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stopped = a.terminate(Duration::from_secs(10)).await;
    assert!(stopped.take().is_some_and(|s| s.success()));
    let a = named_node(dir_a.path(), "node-a", &db, &redis.url()).await;
    watcher.expect_no_publish(Duration::from_secs(2)).await;

    // Dying right after Redis took them (their kept copies not deleted
    // yet) repeats none either: Redis says which it has.
    let mut car = V5Options::new("car-2", a.mqtt_addr).connect().await;
    for n in 0..20 {
        car.publish_qos1("fleet/after", false, format!("a{n}")).await;
    }
    assert_eq!(watcher.recv_publishes(20).await.len(), 20);
    a.kill9().await;
    let a = named_node(dir_a.path(), "node-a", &db, &redis.url()).await;
    watcher.expect_no_publish(Duration::from_secs(2)).await;
    drop(a);
    mark_redis_ran().await;
}

#[tokio::test]
async fn instances_started_without_redis_take_publishes_and_share_them_once_it_comes() {
    let test = "instances_started_without_redis_take_publishes_and_share_them_once_it_comes";
    let Some(base) = postgres_test_url(test) else { return };
    let Some(mut redis) = RedisServer::start_if_available(test).await else { return };
    redis.kill().await;
    let db = fresh_postgres_database(&base).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = named_node(dir_a.path(), "node-a", &db, &redis.url()).await;
    let b = named_node(dir_b.path(), "node-b", &db, &redis.url()).await;
    let logs = || format!("{}\n---\n{}", a.logs(), b.logs());

    for node in [&a, &b] {
        let live = reqwest::get(format!("http://{}/healthz", node.http_addr)).await.unwrap();
        assert_eq!(live.status(), 200, "{}", logs());
        let ready = reqwest::get(format!("http://{}/readyz", node.http_addr)).await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        assert!(body.contains("Redis is unreachable"), "{body}");
    }
    let mut watcher = V5Options::new("watcher", b.mqtt_addr).connect().await;
    watcher.subscribe("fleet/#", QoS::AtLeastOnce).await;
    let mut car = V5Options::new("car-1", a.mqtt_addr).connect().await;
    for n in 0..50 {
        let ack = car.publish_qos1("fleet/car-1", false, format!("m{n}")).await;
        assert_eq!(ack.reason, PubAckReason::Success, "m{n} refused\n{}", logs());
    }
    watcher.expect_no_publish(Duration::from_millis(300)).await;

    redis.start().await;
    let got = watcher.recv_publishes(50).await;
    let numbers: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let expected: Vec<String> = (0..50).map(|n| format!("m{n}")).collect();
    assert_eq!(numbers, expected, "taken before Redis came, in order\n{}", logs());
    watcher.expect_no_publish(Duration::from_millis(500)).await;
    for node in [&a, &b] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reqwest::get(format!("http://{}/readyz", node.http_addr)).await.unwrap().status()
            != 200
        {
            assert!(std::time::Instant::now() < deadline, "never ready\n{}", logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    mark_redis_ran().await;
}

/// Poll node `i`'s `/readyz` until it answers `status` (within 10 s).
async fn wait_for_readiness(c: &Cluster, i: usize, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(format!("http://{}/readyz", c.node(i).http_addr)).await.unwrap();
        if ready.status() == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {i} never answered {status}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn cluster_mode_refuses_an_embedded_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mapcast"))
        .args(["serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--cluster-redis-url", "redis://127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.redis_url needs a PostgreSQL database.url"), "{stderr}");
}

/// Two live instances with one `cluster.node_id` would pass on each
/// other's kept publishes: a second one refuses to start, naming the id,
/// once the first's lease has not lapsed within the lease's length. A
/// restart on the same data directory right after SIGKILL starts at once
/// (its predecessor there is dead), one elsewhere once the dead run's lease
/// lapsed.
#[tokio::test]
async fn one_node_id_runs_once_at_a_time() {
    let test = "one_node_id_runs_once_at_a_time";
    let Some(base) = postgres_test_url(test) else { return };
    let Some(redis) = RedisServer::start_if_available(test).await else { return };
    let db = fresh_postgres_database(&base).await;
    let (home, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = named_node(home.path(), "twin", &db, &redis.url()).await;

    let started = std::time::Instant::now();
    let twin = tokio::process::Command::new(env!("CARGO_BIN_EXE_mapcast"))
        .args(["serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(elsewhere.path())
        .args(["--database-url", &db, "--cluster-redis-url", &redis.url()])
        .args(["--cluster-node-id", "twin"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), twin)
        .await
        .expect("the twin gives up within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the twin ran\n{stderr}");
    assert!(stderr.contains(r#"another instance runs as cluster.node_id "twin""#), "{stderr}");
    let refused = started.elapsed();
    assert!(
        refused >= Duration::from_secs(10),
        "gave up after {refused:?}, before a lease could lapse"
    );

    first.kill9().await;
    let started = std::time::Instant::now();
    let again = named_node(home.path(), "twin", &db, &redis.url()).await;
    let restart = started.elapsed();
    assert!(restart < Duration::from_secs(5), "a restart in place waited {restart:?}");

    again.kill9().await;
    let started = std::time::Instant::now();
    let moved = named_node(elsewhere.path(), "twin", &db, &redis.url()).await;
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(25)).contains(&waited),
        "a run elsewhere started {waited:?} after its predecessor's SIGKILL\n{}",
        moved.logs()
    );
    println!("twin refused after {refused:?}; restart in place {restart:?}; elsewhere {waited:?}");
    mark_redis_ran().await;
}

/// An instance that dies during a Redis outage and never comes back: a
/// survivor passes on the publishes it acknowledged and kept, once no run
/// of its node id is alive, in order and once; a run of that node id
/// started afterwards repeats none.
#[tokio::test]
async fn publishes_kept_by_an_instance_that_never_returns_are_passed_on_by_a_survivor() {
    let test = "publishes_kept_by_an_instance_that_never_returns_are_passed_on_by_a_survivor";
    let Some(Pair { mut redis, db, dir_a, dir_b: _dir_b, a, b, mut watcher }) = pair(test).await
    else {
        return;
    };

    redis.kill().await;
    let mut car = V5Options::new("car", a.mqtt_addr).connect().await;
    for n in 0..100 {
        let ack = car.publish_qos1("fleet/during", false, format!("m{n}")).await;
        assert_eq!(ack.reason, PubAckReason::Success, "m{n} refused\n{}", a.logs());
    }
    a.kill9().await;
    redis.start().await;
    let died = std::time::Instant::now();

    let mut got = Vec::new();
    while got.len() < 100 && died.elapsed() < Duration::from_secs(30) {
        got.extend(watcher.collect_publishes(Duration::from_secs(1)).await);
    }
    let passed_after = died.elapsed();
    let numbers: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let expected: Vec<String> = (0..100).map(|n| format!("m{n}")).collect();
    assert_eq!(numbers, expected, "every acknowledged publish, in order\n{}", b.logs());
    watcher.expect_no_publish(Duration::from_secs(1)).await;
    let counted =
        crate::helpers::metric(b.http_addr, "mapcast_cluster_orphans_passed_on_total").await;
    assert_eq!(counted, 100.0, "counted where they were passed on");
    println!("passed on by the survivor {passed_after:?} after the death");

    let a = named_node(dir_a.path(), "node-a", &db, &redis.url()).await;
    watcher.expect_no_publish(Duration::from_secs(3)).await;
    drop(a);
    mark_redis_ran().await;
}
