//! Several instances, one session per client id: a CONNECT on one
//! instance takes the session over from another (which closes its
//! connection with 0x8E), the session's subscriptions and queued messages
//! move with it, and only the instance holding a session queues for it.
//! Runs when `MAPCAST_TEST_POSTGRES_URL` is set and `redis-server` is on
//! the PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, PubAckReason};

use tokio_util::sync::CancellationToken;

use crate::helpers::{Cluster, V5Client, V5Options, mark_redis_ran, publish_numbered, text};

async fn cluster(test: &str, n: usize) -> Option<Cluster> {
    Cluster::start(test, n).await
}

/// What these tests add to the shared cluster helper.
trait Takeovers {
    fn persistent(&self, id: &str, node: usize) -> V5Options;
    async fn publish_round_robin(&self, topic: &str, payloads: &[String]);
}

impl Takeovers for Cluster {
    /// A client with a persistent session (v5, expiry one hour).
    fn persistent(&self, id: &str, node: usize) -> V5Options {
        V5Options::new(id, self.addr(node)).clean_start(false).session_expiry(Some(3600))
    }

    /// Publish each of `payloads` at QoS 1 on `topic` through node
    /// `i % n` in turn, each acknowledged with success.
    async fn publish_round_robin(&self, topic: &str, payloads: &[String]) {
        let n = self.nodes.len();
        let mut publishers = Vec::new();
        for i in 0..n {
            publishers.push(V5Options::new(&format!("pub-{i}"), self.addr(i)).connect().await);
        }
        for (k, payload) in payloads.iter().enumerate() {
            let ack = publishers[k % n].publish_qos1(topic, false, payload.clone()).await;
            assert!(
                matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers),
                "{payload} refused: {:?}\n{}",
                ack.reason,
                self.logs()
            );
        }
        for p in publishers {
            p.disconnect().await;
        }
    }
}

/// Queued messages stored for `client`.
async fn stored_for(c: &Cluster, client: &str) -> i64 {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&c.url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM session_messages WHERE client_id = $1")
        .bind(client)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let _ = db.close().await;
    n
}

/// Payloads received, each with how many times it came.
fn counted(publishes: &[rumqttc::v5::mqttbytes::v5::Publish]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for p in publishes {
        *seen.entry(text(&p.payload)).or_default() += 1;
    }
    seen
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{prefix}-{k}")).collect()
}

#[tokio::test]
async fn a_session_follows_its_client_to_another_instance_with_its_queued_messages_once() {
    let test = "a_session_follows_its_client_to_another_instance_with_its_queued_messages_once";
    let Some(c) = cluster(test, 2).await else { return };

    // On A: subscribe, then go away; the session stays.
    let mut first = c.persistent("car", 0).connect().await;
    first.subscribe("fleet/car/#", QoS::AtLeastOnce).await;
    first.disconnect().await;
    let offline = names("while-away", 6);
    c.publish_round_robin("fleet/car/cmd", &offline).await;

    // Back on B: the session came along with what was queued for it.
    let mut on_b = c.persistent("car", 1).connect().await;
    assert!(on_b.session_present(), "B resumed the session A held\n{}", c.logs());
    let got = on_b.collect_publishes(Duration::from_secs(2)).await;
    let expected: BTreeMap<String, usize> = offline.iter().map(|p| (p.clone(), 1)).collect();
    assert_eq!(counted(&got), expected, "each queued message once, on B\n{}", c.logs());

    // Back on A while connected on B: B's connection is told 0x8E.
    let mut on_a = c.persistent("car", 0).connect().await;
    assert!(on_a.session_present(), "A resumed the session B held\n{}", c.logs());
    let closed = on_b.closed_within(Duration::from_secs(5)).await;
    assert_eq!(
        closed.as_ref().and_then(|c| c.server_reason),
        Some(DisconnectReasonCode::SessionTakenOver),
        "{closed:?}\n{}",
        c.logs()
    );

    // New publishes, through either instance, reach it on A only, once.
    let live = names("live", 4);
    c.publish_round_robin("fleet/car/cmd", &live).await;
    let got = on_a.collect_publishes(Duration::from_secs(2)).await;
    let expected: BTreeMap<String, usize> = live.iter().map(|p| (p.clone(), 1)).collect();
    assert_eq!(counted(&got), expected, "each live message once, on A\n{}", c.logs());

    // How long a takeover from a live connection on the other instance
    // takes, CONNECT to CONNACK, hopping back and forth.
    let mut held = on_a;
    let mut took = Vec::new();
    for hop in 0..10 {
        let started = Instant::now();
        let next = c.persistent("car", (hop + 1) % 2).connect().await;
        took.push(started.elapsed());
        assert!(next.session_present());
        let closed = held.closed_within(Duration::from_secs(5)).await;
        assert_eq!(
            closed.and_then(|c| c.server_reason),
            Some(DisconnectReasonCode::SessionTakenOver)
        );
        held = next;
    }
    took.sort();
    println!(
        "cross-instance takeover, CONNECT to CONNACK over 10 hops: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    held.disconnect().await;
    mark_redis_ran().await;
}

/// A session moving between two live instances while a third one's
/// publisher keeps sending: the publishes that arrive while it moves (the
/// old holder stopped queueing for it, the new one not yet started) reach
/// it too, on the instance it moved to.
#[tokio::test]
async fn publishes_made_while_a_session_moves_between_live_instances_reach_it() {
    let test = "publishes_made_while_a_session_moves_between_live_instances_reach_it";
    let Some(c) = cluster(test, 3).await else { return };
    const HOPS: usize = 4;

    let mut held = c.persistent("watcher", 0).connect().await;
    held.subscribe("load/#", QoS::AtLeastOnce).await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = CancellationToken::new();
    let publisher = tokio::spawn({
        let (addr, acked, stop) = (c.addr(2), acked.clone(), stop.clone());
        async move {
            publish_numbered(addr, "publisher", "load/x", "m", 10, stop, |n| {
                acked.lock().unwrap().insert(n);
            })
            .await
        }
    });

    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    // Copies beyond the first that were not marked as redeliveries.
    let mut unmarked = Vec::new();
    let mut note = |publishes: Vec<rumqttc::v5::mqttbytes::v5::Publish>| {
        for p in publishes {
            let n = text(&p.payload)[1..].parse::<u64>().expect("numbered payload");
            let copies = received.entry(n).or_default();
            *copies += 1;
            if *copies > 1 && !p.dup {
                unmarked.push(n);
            }
        }
    };
    // Each takeover with publishes flowing since the last: at least 250
    // acknowledged in between, however slow the machine.
    let flowing = async |since: usize| {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = acked.lock().unwrap().len();
            if n >= since + 250 && started.elapsed() >= Duration::from_millis(500) {
                return n;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "publishes stalled at {n}");
        }
    };
    let mut since = 0;
    for hop in 0..HOPS {
        since = flowing(since).await;
        let next = c.persistent("watcher", (hop + 1) % 2).connect().await;
        assert!(next.session_present(), "hop {hop}\n{}", c.logs());
        let closed = held.wait_closed(Duration::from_secs(5)).await;
        assert_eq!(closed.server_reason, Some(DisconnectReasonCode::SessionTakenOver));
        note(held.collect_publishes(Duration::from_millis(100)).await);
        held = next;
    }
    flowing(since).await;
    stop.cancel();
    let sent = publisher.await.unwrap();
    note(held.collect_publishes(Duration::from_secs(3)).await);
    held.disconnect().await;

    let acked = acked.lock().unwrap().clone();
    let lost: Vec<u64> = acked.iter().copied().filter(|n| !received.contains_key(n)).collect();
    let twice = received.values().filter(|&&k| k > 1).count();
    println!(
        "{sent} sent, {} acknowledged, {} received, {twice} more than once ({} of them not marked DUP), {} lost over {HOPS} takeovers",
        acked.len(),
        received.len(),
        unmarked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but never received: {lost:?}\n{}", c.logs());
    // Copies beyond the first are redeliveries of deliveries in flight
    // when the connection was taken over, never a second routing.
    assert!(unmarked.is_empty(), "received again without DUP: {unmarked:?}\n{}", c.logs());
    mark_redis_ran().await;
}

#[tokio::test]
async fn twenty_simultaneous_connects_with_one_client_id_leave_exactly_one_connection() {
    let test = "twenty_simultaneous_connects_with_one_client_id_leave_exactly_one_connection";
    let Some(c) = cluster(test, 3).await else { return };
    let attempts: Vec<_> = (0..20).map(|i| c.persistent("storm", i % 3).try_connect()).collect();
    let results = futures::future::join_all(attempts).await;
    let mut open: Vec<V5Client> = results.into_iter().filter_map(Result::ok).collect();
    assert!(!open.is_empty(), "some connect must succeed\n{}", c.logs());

    // Let every takeover land, then see who is left.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut survivors = Vec::new();
    for mut client in open.drain(..) {
        let left = settle.saturating_duration_since(Instant::now());
        if client.closed_within(left).await.is_none() {
            survivors.push(client);
        }
    }
    assert_eq!(survivors.len(), 1, "exactly one connection stays open\n{}", c.logs());

    // The survivor works: a publish through another instance reaches it.
    let mut survivor = survivors.pop().unwrap();
    survivor.subscribe("storm/t", QoS::AtLeastOnce).await;
    c.publish_round_robin("storm/t", &names("after", 3)).await;
    let got = survivor.collect_publishes(Duration::from_secs(2)).await;
    assert_eq!(got.len(), 3, "{:?}\n{}", counted(&got), c.logs());
    assert!(survivor.closed_within(Duration::from_millis(200)).await.is_none());
    mark_redis_ran().await;
}

#[tokio::test]
async fn instances_queueing_for_their_own_offline_sessions_do_not_collide() {
    let test = "instances_queueing_for_their_own_offline_sessions_do_not_collide";
    let Some(c) = cluster(test, 2).await else { return };
    for (id, node) in [("sub-a", 0), ("sub-b", 1)] {
        let mut s = c.persistent(id, node).connect().await;
        s.subscribe("q/#", QoS::AtLeastOnce).await;
        s.disconnect().await;
    }
    let sent = names("m", 40);
    c.publish_round_robin("q/x", &sent).await;
    // Acknowledged means stored: each instance kept its own session's
    // copies, those of the other instance's publishes once the fabric
    // brought them (a few milliseconds after their PUBACK).
    for id in ["sub-a", "sub-b"] {
        let until = Instant::now() + Duration::from_secs(2);
        let mut n = stored_for(&c, id).await;
        while n < 40 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            n = stored_for(&c, id).await;
        }
        assert_eq!(n, 40, "{id}'s queued messages stored\n{}", c.logs());
    }

    let expected: BTreeMap<String, usize> = sent.iter().map(|p| (p.clone(), 1)).collect();
    let mut a = c.persistent("sub-a", 0).connect().await;
    assert!(a.session_present());
    let got = a.collect_publishes(Duration::from_secs(2)).await;
    assert_eq!(counted(&got), expected, "sub-a: every message once\n{}", c.logs());
    a.disconnect().await;
    // sub-a's acknowledgements delete its copies, and only its.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored_for(&c, "sub-a").await, 0, "{}", c.logs());
    assert_eq!(stored_for(&c, "sub-b").await, 40, "sub-b's copies are its own\n{}", c.logs());

    let mut b = c.persistent("sub-b", 1).connect().await;
    assert!(b.session_present());
    let got = b.collect_publishes(Duration::from_secs(2)).await;
    assert_eq!(counted(&got), expected, "sub-b: every message once\n{}", c.logs());
    b.disconnect().await;
    assert!(!c.logs().contains(r#""log.level":"error""#), "no errors logged\n{}", c.logs());
    mark_redis_ran().await;
}

#[tokio::test]
async fn a_session_that_ends_leaves_no_claim_behind() {
    let test = "a_session_that_ends_leaves_no_claim_behind";
    let Some(c) = cluster(test, 2).await else { return };
    for i in 0..5 {
        let id = format!("passer-by-{i}");
        V5Options::new(&id, c.addr(i % 2)).connect().await.disconnect().await;
    }
    c.persistent("stays", 1).connect().await.disconnect().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&c.url).await.unwrap();
    let claimed: Vec<String> =
        sqlx::query_scalar("SELECT client_id FROM session_claims ORDER BY client_id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(claimed, ["stays"], "only the stored session is still claimed\n{}", c.logs());
    mark_redis_ran().await;
}
