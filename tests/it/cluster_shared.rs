//! Several instances as one broker, continued: a shared subscription's
//! message reaches one member cluster-wide, `$SYS/cluster/...` sums the
//! live instances, and an instance without PostgreSQL is not ready. Runs
//! when `MAPCAST_TEST_POSTGRES_URL` (or `MAPCAST_TEST_PG_BIN`) is set and
//! `redis-server` is on the PATH.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::helpers::{
    Cluster, PgCluster, RedisServer, ServerProcess, V5Client, V5Options, location,
    mark_pg_cluster_ran, mark_redis_ran, text, v5_topic,
};

const GROUP: &str = "$share/g/devices/+/location";
/// Longer than an instance takes to hear of another's new or gone
/// members (written at once, read every 250 ms), with room for a loaded
/// machine.
const CONVERGED: Duration = Duration::from_secs(2);

/// A member of [`GROUP`] on node `i`.
async fn member(c: &Cluster, i: usize, id: &str) -> V5Client {
    let mut m = V5Options::new(id, c.addr(i)).connect().await;
    m.subscribe(GROUP, QoS::AtLeastOnce).await;
    m
}

/// Publish the positions of device `prefix` numbered by `n` in `range`
/// (its longitude in thousandths) at QoS 1 through node `from`, each
/// acknowledged with success before the next.
async fn publish(c: &Cluster, from: usize, prefix: &str, range: std::ops::Range<u32>) {
    let mut car = V5Options::new(&format!("car-{prefix}"), c.addr(from)).connect().await;
    for n in range {
        let topic = format!("devices/{prefix}/location");
        let ack = car.publish_qos1(&topic, false, location(f64::from(n) / 1000.0, 10.0)).await;
        assert_eq!(ack.reason, PubAckReason::Success, "{prefix}-{n} refused\n{}", c.logs());
    }
    car.disconnect().await;
}

/// What each member receives until `total` arrived altogether (or 30 s
/// passed), then for one more second, to catch copies.
async fn gather(members: &mut [V5Client], total: usize) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); members.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut quiet_until: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        let count: usize = got.iter().map(Vec::len).sum();
        if count >= total && quiet_until.is_none() {
            quiet_until = Some(now + Duration::from_secs(1));
        }
        if quiet_until.is_some_and(|t| now >= t) || now >= deadline {
            return got;
        }
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(p) = m.try_recv_publish(Duration::from_millis(20)).await {
                assert_eq!(p.qos, QoS::AtLeastOnce, "QoS kept");
                got[i].push(numbered(&p));
            }
        }
    }
}

/// Every one of `expected` once in `got` altogether.
fn assert_once(got: &[Vec<String>], expected: &HashSet<String>, c: &Cluster) {
    let all: Vec<&String> = got.iter().flatten().collect();
    let unique: HashSet<String> = all.iter().map(|s| (*s).clone()).collect();
    let missing = expected.difference(&unique).count();
    let per_member: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(
        (all.len(), missing),
        (expected.len(), 0),
        "each message once cluster-wide; per member {per_member:?}\n{}",
        c.logs()
    );
}

/// Within one member, one publisher's messages keep their order.
fn assert_in_order(got: &[String]) {
    let mut last: HashMap<&str, u32> = HashMap::new();
    for payload in got {
        let (prefix, n) = payload.rsplit_once('-').unwrap();
        let n: u32 = n.parse().unwrap();
        if let Some(before) = last.insert(prefix, n) {
            assert!(before < n, "{payload} after {prefix}-{before}: {got:?}");
        }
    }
}

/// The value of `name` in node `i`'s `/metrics`.
async fn metric(c: &Cluster, i: usize, name: &str) -> u64 {
    let url = format!("http://{}/metrics", c.node(i).http_addr);
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    let line = body
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// `{device}-{n}` of a position [`publish`] sent.
fn numbered(p: &rumqttc::v5::mqttbytes::v5::Publish) -> String {
    let topic = v5_topic(p);
    let device = topic.split('/').nth(1).unwrap().to_owned();
    let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    let lon = body["geometry"]["coordinates"][0].as_f64().unwrap_or_else(|| panic!("{body}"));
    format!("{device}-{}", (lon * 1000.0).round() as u32)
}

fn expected(prefixes: &[&str], range: std::ops::Range<u32>) -> HashSet<String> {
    prefixes.iter().flat_map(|p| range.clone().map(move |n| format!("{p}-{n}"))).collect()
}

#[tokio::test]
async fn a_shared_group_across_instances_gets_each_message_once() {
    let test = "a_shared_group_across_instances_gets_each_message_once";
    let Some(c) = Cluster::start(test, 3).await else { return };
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(member(&c, i, &format!("member-{i}")).await);
    }
    tokio::time::sleep(CONVERGED).await;

    // 300 publishes, 100 through each instance, at the same time.
    let prefixes = ["a", "b", "c"];
    let publishers = prefixes.iter().enumerate().map(|(i, p)| publish(&c, i, p, 0..100));
    futures::future::join_all(publishers).await;
    let got = gather(&mut members, 300).await;
    assert_once(&got, &expected(&prefixes, 0..100), &c);
    for (i, m) in got.iter().enumerate() {
        assert!(
            !m.is_empty(),
            "member {i} got none: {:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_in_order(m);
    }
    mark_redis_ran().await;
}

#[tokio::test]
async fn a_group_on_one_instance_gets_what_the_others_take_once() {
    let test = "a_group_on_one_instance_gets_what_the_others_take_once";
    let Some(c) = Cluster::start(test, 3).await else { return };
    let mut members = vec![member(&c, 2, "member-c1").await, member(&c, 2, "member-c2").await];
    tokio::time::sleep(CONVERGED).await;

    futures::future::join(publish(&c, 0, "a", 0..100), publish(&c, 1, "b", 0..100)).await;
    let got = gather(&mut members, 200).await;
    assert_once(&got, &expected(&["a", "b"], 0..100), &c);
    assert!(got.iter().all(|m| !m.is_empty()), "both members take turns");
    mark_redis_ran().await;
}

#[tokio::test]
async fn a_member_leaving_loses_nothing_and_then_gets_nothing() {
    let test = "a_member_leaving_loses_nothing_and_then_gets_nothing";
    let Some(c) = Cluster::start(test, 3).await else { return };
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(member(&c, i, &format!("member-{i}")).await);
    }
    tokio::time::sleep(CONVERGED).await;

    // Publishing goes on while the member on node 1 leaves: what node 0
    // still sends there before it knows is passed on to another member.
    let publishing = publish(&c, 0, "p", 0..300);
    let leaving = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        members[1].unsubscribe(GROUP).await;
    };
    futures::future::join(publishing, leaving).await;
    let got = gather(&mut members, 300).await;
    assert_once(&got, &expected(&["p"], 0..300), &c);
    for i in 0..3 {
        assert_eq!(metric(&c, i, "mapcast_cluster_shared_lost_total").await, 0, "node {i}");
    }

    // The member on node 2 disconnects: once the others know, only the
    // one left gets anything.
    members.pop().unwrap().disconnect().await;
    tokio::time::sleep(CONVERGED).await;
    publish(&c, 1, "q", 0..50).await;
    let got = gather(&mut members, 50).await;
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        [50, 0],
        "only the member left gets them\n{}",
        c.logs()
    );
    mark_redis_ran().await;
}

/// `$SYS/cluster/...` values seen on `sys` until `done` says enough, or 15 s pass.
async fn watch_cluster(
    sys: &mut V5Client,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done(&seen) && tokio::time::Instant::now() < deadline {
        if let Some(p) = sys.try_recv_publish(Duration::from_millis(200)).await {
            seen.insert(v5_topic(&p), text(&p.payload));
        }
    }
    seen
}

fn number(seen: &HashMap<String, String>, topic: &str) -> Option<u64> {
    seen.get(topic).and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn sys_cluster_totals_sum_the_live_instances() {
    let test = "sys_cluster_totals_sum_the_live_instances";
    let config = "[broker]\nsys_interval_secs = 1\n";
    let Some(mut c) = Cluster::start_with_config(test, 3, config).await else { return };
    let mut sys = V5Options::new("sys", c.addr(0)).connect().await;
    sys.subscribe("$SYS/cluster/#", QoS::AtMostOnce).await;
    // 1 + 2 + 3 clients, the watcher being node 0's first.
    let mut clients = Vec::new();
    for (i, n) in [(0, 0), (1, 2), (2, 3)] {
        for k in 0..n {
            clients.push(V5Options::new(&format!("car-{i}-{k}"), c.addr(i)).connect().await);
        }
    }
    let connected = "$SYS/cluster/clients/connected";
    let seen = watch_cluster(&mut sys, |s| {
        number(s, connected) == Some(6)
            && number(s, "$SYS/cluster/instances") == Some(3)
            && number(s, "$SYS/cluster/subscriptions/count").is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(number(&seen, connected), Some(6), "{seen:?}\n{}", c.logs());
    assert_eq!(number(&seen, "$SYS/cluster/instances"), Some(3), "{seen:?}");
    assert!(number(&seen, "$SYS/cluster/subscriptions/count").is_some_and(|n| n >= 1));
    let metrics = reqwest::get(format!("http://{}/metrics", c.node(1).http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("mapcast_cluster_instances 3"), "{metrics}");

    // The third instance dies: its three clients drop out of the total
    // once its record expires (4 s), and it out of the instances.
    let (dead, _dir) = c.nodes.remove(2);
    let killed = std::time::Instant::now();
    dead.kill9().await;
    let seen = watch_cluster(&mut sys, |s| {
        number(s, connected) == Some(3) && number(s, "$SYS/cluster/instances") == Some(2)
    })
    .await;
    assert_eq!(number(&seen, connected), Some(3), "{seen:?}\n{}", c.logs());
    assert_eq!(number(&seen, "$SYS/cluster/instances"), Some(2), "{seen:?}");
    assert!(killed.elapsed() < Duration::from_secs(12), "took {:?}", killed.elapsed());
    mark_redis_ran().await;
}

/// Poll `node`'s `/readyz` until it answers `status` (within 20 s).
async fn wait_for_readiness(node: &ServerProcess, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("http://{}/readyz", node.http_addr);
        let answer = reqwest::get(url).await.map(|r| r.status().as_u16());
        if answer.as_ref().is_ok_and(|s| *s == status) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered {status} (last {answer:?})\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn instances_that_lost_postgresql_are_not_ready_until_it_is_back() {
    let test = "instances_that_lost_postgresql_are_not_ready_until_it_is_back";
    let Some(pg) = PgCluster::start_if_configured(test).await else { return };
    let Some(redis) = RedisServer::start_if_available(test).await else { return };
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let args = ["--database-url", &pg.url(), "--cluster-redis-url", &redis.url()];
        nodes.push((ServerProcess::start(dir.path(), &args).await, dir));
    }
    for (node, _) in &nodes {
        wait_for_readiness(node, 200).await;
    }
    pg.stop_immediate().await;
    for (node, _) in &nodes {
        wait_for_readiness(node, 503).await;
    }
    pg.start().await;
    for (node, _) in &nodes {
        wait_for_readiness(node, 200).await;
    }
    mark_pg_cluster_ran().await;
    mark_redis_ran().await;
}
