//! Several instances, one of them gone: a killed instance's clients' wills
//! are published by one survivor within the lease plus a few seconds (after
//! their delay, unless the client resumes first), its persistent sessions
//! are held by a survivor and queue from then on, and an instance stopped
//! gently lets its sessions go at once; a QoS 2 delivery left mid-flow
//! completes once after its session moved to another instance. Runs when
//! `MAPCAST_TEST_POSTGRES_URL` is set and `redis-server` is on the PATH.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::helpers::{
    Cluster, QUIET, RawConn, ServerProcess, V5Client, V5Options, mark_redis_ran, packet_type, text,
};

/// How long an instance's lease runs (`cluster::ownership::NODE_LEASE`).
const LEASE: Duration = Duration::from_secs(10);

/// Take node `i` out of the cluster (the others keep their indexes shifted
/// down by one), with its log.
fn take(c: &mut Cluster, i: usize) -> (ServerProcess, tempfile::TempDir) {
    c.nodes.remove(i)
}

/// The instance holding `client`'s claim, if any.
async fn holder(c: &Cluster, client: &str) -> Option<String> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&c.url).await.unwrap();
    let node: Option<String> =
        sqlx::query_scalar("SELECT node FROM session_claims WHERE client_id = $1")
            .bind(client)
            .fetch_optional(&mut db)
            .await
            .unwrap();
    let _ = db.close().await;
    node
}

/// Wait until `client` has a subscription stored. Its SUBACK does not wait
/// for the commit: an instance killed within milliseconds of it can lose
/// the subscription, which is not what these tests are about.
async fn subscription_stored(c: &Cluster, client: &str) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&c.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM session_subscriptions WHERE client_id = $1")
                .bind(client)
                .fetch_one(&mut db)
                .await
                .unwrap();
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{client}'s subscription never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = db.close().await;
}

/// Publishes received on `client` within `dur`, by payload, with counts.
async fn counted(client: &mut V5Client, dur: Duration) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for p in client.collect_publishes(dur).await {
        *seen.entry(text(&p.payload)).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_killed_instances_wills_are_published_once_by_a_survivor_within_the_lease() {
    let test = "a_killed_instances_wills_are_published_once_by_a_survivor_within_the_lease";
    let Some(mut c) = Cluster::start(test, 3).await else { return };
    let mut watchers = Vec::new();
    for i in 1..3 {
        let mut w = V5Options::new(&format!("watcher-{i}"), c.addr(i)).connect().await;
        w.subscribe("status/#", QoS::AtLeastOnce).await;
        watchers.push(w);
    }
    // A will of a session that ends with its connection, and a retained
    // one of a persistent session.
    let car = V5Options::new("car", c.addr(0))
        .will("status/car", "car lost", QoS::AtLeastOnce, false, None)
        .connect()
        .await;
    let van = V5Options::new("van", c.addr(0))
        .clean_start(false)
        .session_expiry(Some(3600))
        .will("status/van", "van lost", QoS::AtLeastOnce, true, None)
        .connect()
        .await;

    let (a, _dir) = take(&mut c, 0);
    let a_logs = a.logs();
    a.kill9().await;
    let killed = Instant::now();

    // Both survivors race for the dead instance's claims: each will goes
    // out once, from one of them, and crosses to the other.
    let want: BTreeMap<String, usize> =
        [("car lost".to_owned(), 1), ("van lost".to_owned(), 1)].into();
    for w in &mut watchers {
        let mut got = BTreeMap::new();
        while got != want && killed.elapsed() < LEASE + Duration::from_secs(8) {
            for (k, n) in counted(w, Duration::from_millis(250)).await {
                *got.entry(k).or_insert(0) += n;
            }
        }
        assert_eq!(got, want, "after {:?}\n{a_logs}\n---\n{}", killed.elapsed(), c.logs());
    }
    let took = killed.elapsed();
    println!("wills published {took:?} after the kill");
    assert!(took < LEASE + Duration::from_secs(7), "{took:?}\n{}", c.logs());
    // No second copy comes later.
    for w in &mut watchers {
        assert_eq!(counted(w, Duration::from_secs(3)).await, BTreeMap::new(), "{}", c.logs());
    }
    // The retained will is kept, on every instance.
    for i in 0..2 {
        let mut late = V5Options::new(&format!("late-{i}"), c.addr(i)).connect().await;
        late.subscribe("status/van", QoS::AtLeastOnce).await;
        let got = late.try_recv_publish(Duration::from_secs(3)).await;
        assert_eq!(got.map(|p| text(&p.payload)), Some("van lost".to_owned()), "{}", c.logs());
    }
    drop((car, van));
    mark_redis_ran().await;
}

#[tokio::test]
async fn a_killed_instances_delayed_will_waits_its_delay_and_a_resumed_session_cancels_it() {
    let test = "a_killed_instances_delayed_will_waits_its_delay_and_a_resumed_session_cancels_it";
    let Some(mut c) = Cluster::start(test, 2).await else { return };
    let mut watcher = V5Options::new("watcher", c.addr(1)).connect().await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    let delay = 8;
    let persistent = |id: &str, addr| {
        V5Options::new(id, addr).clean_start(false).session_expiry(Some(3600)).will(
            &format!("status/{id}"),
            &format!("{id} lost"),
            QoS::AtLeastOnce,
            false,
            Some(delay),
        )
    };
    let gone = persistent("gone", c.addr(0)).connect().await;
    let back = persistent("back", c.addr(0)).connect().await;
    let dead = holder(&c, "back").await.expect("claimed at CONNECT");

    let (a, _dir) = take(&mut c, 0);
    a.kill9().await;
    let killed = Instant::now();
    drop((gone, back));
    // `back` returns (to the survivor) once the lease lapsed and before
    // its delay ran out.
    while holder(&c, "back").await.as_ref() == Some(&dead)
        && killed.elapsed() < LEASE + Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = V5Options::new("back", c.addr(0))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    assert!(back.session_present(), "{}", c.logs());

    let mut got = Vec::new();
    while killed.elapsed() < LEASE + Duration::from_secs(u64::from(delay) + 8) {
        for p in watcher.collect_publishes(Duration::from_millis(250)).await {
            got.push((text(&p.payload), killed.elapsed()));
        }
    }
    let payloads: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(payloads, ["gone lost"], "{got:?}\n{}", c.logs());
    // Not before the delay from the kill (the lease lapses later still).
    assert!(got[0].1 >= Duration::from_secs(u64::from(delay)), "{got:?}");
    drop(back);
    mark_redis_ran().await;
}

#[tokio::test]
async fn a_killed_instances_persistent_session_queues_on_a_survivor_until_its_client_returns() {
    let test =
        "a_killed_instances_persistent_session_queues_on_a_survivor_until_its_client_returns";
    let Some(mut c) = Cluster::start(test, 3).await else { return };
    let mut sub = V5Options::new("sub", c.addr(0))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    sub.subscribe("fleet/#", QoS::AtLeastOnce).await;
    subscription_stored(&c, "sub").await;
    let dead = holder(&c, "sub").await.expect("claimed at CONNECT");

    let (a, _dir) = take(&mut c, 0);
    a.kill9().await;
    let killed = Instant::now();
    drop(sub);
    // A survivor holds it once the lease lapsed.
    let mut held = holder(&c, "sub").await;
    while held.as_ref() == Some(&dead) && killed.elapsed() < LEASE + Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        held = holder(&c, "sub").await;
    }
    assert!(held.is_some_and(|h| h != dead), "nobody took the session over\n{}", c.logs());

    let mut publisher = V5Options::new("pub", c.addr(0)).connect().await;
    let sent: Vec<String> = (0..50).map(|k| format!("m{k}")).collect();
    for payload in &sent {
        let ack = publisher.publish_qos1("fleet/car", false, payload.clone()).await;
        assert_eq!(ack.reason, PubAckReason::Success, "{payload}\n{}", c.logs());
    }
    publisher.disconnect().await;

    let mut sub = V5Options::new("sub", c.addr(1))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    assert!(sub.session_present(), "{}", c.logs());
    let mut got = counted(&mut sub, Duration::from_secs(3)).await;
    let want: BTreeMap<String, usize> = sent.iter().map(|p| (p.clone(), 1)).collect();
    got.retain(|k, _| k.starts_with('m'));
    assert_eq!(got, want, "each queued message once\n{}", c.logs());
    mark_redis_ran().await;
}

#[tokio::test]
async fn a_stopped_instance_lets_its_sessions_go_at_once() {
    let test = "a_stopped_instance_lets_its_sessions_go_at_once";
    let Some(mut c) = Cluster::start(test, 2).await else { return };
    let mut car = V5Options::new("car", c.addr(0))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    car.subscribe("fleet/car", QoS::AtLeastOnce).await;

    let (a, _dir) = take(&mut c, 0);
    let status = a.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    drop(car);

    let started = Instant::now();
    let mut car = V5Options::new("car", c.addr(0))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    let took = started.elapsed();
    println!("CONNECT to CONNACK on the other instance: {took:?}");
    assert!(car.session_present(), "{}", c.logs());
    assert!(took < Duration::from_secs(3), "CONNECT to CONNACK took {took:?}\n{}", c.logs());
    // And the subscription came along.
    let mut publisher = V5Options::new("pub", c.addr(0)).connect().await;
    publisher.publish_qos1("fleet/car", false, "hello").await;
    let got = car.try_recv_publish(Duration::from_secs(3)).await;
    assert_eq!(got.map(|p| text(&p.payload)), Some("hello".to_owned()), "{}", c.logs());
    mark_redis_ran().await;
}

/// A persistent raw v5 session (expiry 300 s) on node `i`, subscribed to
/// `filter` at QoS 2 when given; whether the session was present.
async fn raw_subscriber(c: &Cluster, i: usize, filter: Option<&str>) -> (RawConn, bool) {
    let (mut conn, connack) = RawConn::connect_v5(c.addr(i), "eo-sub", false, Some(300)).await;
    if let Some(filter) = filter {
        conn.subscribe_v5(1, filter, QoS::ExactlyOnce).await;
    }
    (conn, connack.session_present())
}

#[tokio::test]
async fn a_qos2_delivery_not_yet_received_completes_once_after_its_session_moved() {
    let test = "a_qos2_delivery_not_yet_received_completes_once_after_its_session_moved";
    let Some(c) = Cluster::start(test, 3).await else { return };
    let (mut sub, _) = raw_subscriber(&c, 0, Some("eo/move")).await;
    let mut publisher = V5Options::new("eo-pub", c.addr(2)).connect().await;
    publisher.publish_qos2("eo/move", false, "one").await;
    let first = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!((first.qos(), first.payload(true)), (2, b"one".to_vec()));

    // No PUBREC: the session moves to B with the exchange open.
    let (mut moved, present) = raw_subscriber(&c, 1, None).await;
    assert!(present, "{}", c.logs());
    let again = moved.recv_type(packet_type::PUBLISH).await;
    assert_eq!(again.payload(true), b"one");
    assert!(again.dup(), "a redelivery is flagged DUP");
    assert_eq!(again.pkid(), first.pkid(), "a redelivery keeps its packet id [MQTT-4.4.0-1]");
    moved.pubrec(again.pkid()).await;
    assert_eq!(moved.recv_type(packet_type::PUBREL).await.pkid(), first.pkid());
    moved.pubcomp(first.pkid()).await;
    assert!(moved.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(), "delivered twice");

    // Completed, it stays completed when the session moves again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop((sub, moved));
    let (mut back, present) = raw_subscriber(&c, 0, None).await;
    assert!(present, "{}", c.logs());
    let quiet = back.try_recv(QUIET).await;
    assert!(quiet.is_err(), "nothing is left to resend: {quiet:?}\n{}", c.logs());
    mark_redis_ran().await;
}

#[tokio::test]
async fn a_qos2_delivery_past_pubrec_resumes_with_pubrel_after_its_session_moved() {
    let test = "a_qos2_delivery_past_pubrec_resumes_with_pubrel_after_its_session_moved";
    let Some(c) = Cluster::start(test, 3).await else { return };
    let (mut sub, _) = raw_subscriber(&c, 0, Some("eo/move")).await;
    let mut publisher = V5Options::new("eo-pub", c.addr(2)).connect().await;
    publisher.publish_qos2("eo/move", false, "one").await;
    let publish = sub.recv_type(packet_type::PUBLISH).await;
    sub.pubrec(publish.pkid()).await;
    assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), publish.pkid());

    // No PUBCOMP: the session moves to B past PUBREC.
    let (mut moved, present) = raw_subscriber(&c, 1, None).await;
    assert!(present, "{}", c.logs());
    let resumed = moved.recv().await;
    assert_eq!(resumed.packet_type(), packet_type::PUBREL, "PUBREL, not the PUBLISH: {resumed:?}");
    assert_eq!(resumed.pkid(), publish.pkid());
    moved.pubcomp(publish.pkid()).await;
    assert!(moved.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(), "delivered twice");

    tokio::time::sleep(Duration::from_millis(500)).await;
    drop((sub, moved));
    let (mut back, present) = raw_subscriber(&c, 2, None).await;
    assert!(present, "{}", c.logs());
    let quiet = back.try_recv(QUIET).await;
    assert!(quiet.is_err(), "nothing is left to resend: {quiet:?}\n{}", c.logs());
    mark_redis_ran().await;
}

/// A persistent session on instance A, offline, subscribed at `qos`; A is
/// killed while a publisher on B sends at `qos` 20 times a second, from
/// before the kill until after a survivor took the session over. Back on C,
/// the subscriber gets every acknowledged message once, in order.
async fn publishes_during_the_lapse_reach_the_session_once(test: &str, qos: QoS) {
    let Some(mut c) = Cluster::start(test, 3).await else { return };
    let sub = V5Options::new("lapse-sub", c.addr(0))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    let mut sub = sub;
    sub.subscribe("lapse/#", qos).await;
    sub.disconnect().await;
    let dead = holder(&c, "lapse-sub").await.expect("claimed at CONNECT");

    // After the kill, B is index 0 and C index 1.
    let mut publisher = V5Options::new("lapse-pub", c.addr(1)).connect().await;
    let started = Instant::now();
    let mut killed = None;
    let mut adopted = None;
    let mut acked = Vec::new();
    for k in 0u32.. {
        let payload = format!("{k:06}");
        let ok = match qos {
            QoS::ExactlyOnce => {
                publisher.publish_qos2("lapse/car", false, payload.clone()).await.reason
                    == rumqttc::v5::mqttbytes::v5::PubRecReason::Success
            }
            _ => {
                publisher.publish_qos1("lapse/car", false, payload.clone()).await.reason
                    == PubAckReason::Success
            }
        };
        if ok {
            acked.push(payload);
        }
        if killed.is_none() && started.elapsed() >= Duration::from_secs(2) {
            let (a, _dir) = take(&mut c, 0);
            a.kill9().await;
            killed = Some(Instant::now());
        }
        if let Some(at) = killed
            && adopted.is_none()
            && k % 10 == 0
            && holder(&c, "lapse-sub").await.is_some_and(|h| h != dead)
        {
            adopted = Some(at.elapsed());
        }
        let done = adopted.is_some() && started.elapsed() >= Duration::from_secs(15);
        if done || started.elapsed() > LEASE + Duration::from_secs(25) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let adopted = adopted.unwrap_or_else(|| panic!("nobody took the session over\n{}", c.logs()));
    println!("{} acknowledged; the session was taken over {adopted:?} after the kill", acked.len());
    publisher.disconnect().await;

    let mut sub = V5Options::new("lapse-sub", c.addr(1))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    assert!(sub.session_present(), "{}", c.logs());
    let mut got = Vec::new();
    loop {
        let more = sub.collect_publishes(Duration::from_secs(3)).await;
        if more.is_empty() {
            break;
        }
        got.extend(more.iter().map(|p| text(&p.payload)));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &got {
        *counts.entry(p).or_default() += 1;
    }
    let missing: Vec<&String> = acked.iter().filter(|p| !counts.contains_key(p.as_str())).collect();
    let twice: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    println!("received {}, missing {}, duplicated {}", got.len(), missing.len(), twice.len());
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged never delivered: {missing:?}",
        missing.len(),
        acked.len()
    );
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "out of the publisher's order");
    mark_redis_ran().await;
}

#[tokio::test]
async fn qos1_publishes_while_a_dead_instances_lease_lapses_reach_its_session_once() {
    let test = "qos1_publishes_while_a_dead_instances_lease_lapses_reach_its_session_once";
    publishes_during_the_lapse_reach_the_session_once(test, QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos2_publishes_while_a_dead_instances_lease_lapses_reach_its_session_once() {
    let test = "qos2_publishes_while_a_dead_instances_lease_lapses_reach_its_session_once";
    publishes_during_the_lapse_reach_the_session_once(test, QoS::ExactlyOnce).await;
}

/// Publishers on both survivors send QoS 1 as fast as their PUBACKs come
/// back while a killed instance's persistent session is taken over, so
/// some of the taking instance's own publishes are routed in the moment
/// between the read of what the session missed and the session's hold
/// there. Back on a survivor (`during_lapse`: its CONNECT sent while the
/// lease still runs, so it may take the session itself), the subscriber
/// gets every acknowledged message once, in each publisher's order.
async fn own_publishes_around_a_takeover_reach_the_session_once(test: &str, during_lapse: bool) {
    const PUBLISHERS: usize = 3;
    let config = "[broker]\nmax_queued_messages = 500000\n";
    let Some(mut c) = Cluster::start_with_config(test, 3, config).await else { return };
    let mut sub = V5Options::new("own-sub", c.addr(0))
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;
    sub.subscribe("own/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    subscription_stored(&c, "own-sub").await;
    let dead = holder(&c, "own-sub").await.expect("claimed at CONNECT");

    let (a, _dir) = take(&mut c, 0);
    a.kill9().await;
    let killed = Instant::now();
    // Quiet until shortly before the lease can lapse: the fast part spans
    // the takeover, and the replayed backlog stays small.
    tokio::time::sleep(LEASE - Duration::from_secs(3)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..c.nodes.len() {
        for p in 0..PUBLISHERS {
            let name = format!("own-pub-{i}-{p}");
            let mut publisher = V5Options::new(&name, c.addr(i)).connect().await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0u32.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let payload = format!("{name}-{k:07}");
                    let topic = format!("own/{name}");
                    let ack = publisher.publish_qos1(&topic, false, payload.clone()).await;
                    if ack.reason == PubAckReason::Success {
                        acked.push(payload);
                    }
                }
                publisher.disconnect().await;
                acked
            }));
        }
    }
    let resumed = during_lapse.then(|| {
        let addr = c.addr(0);
        tokio::spawn(async move {
            let sub = V5Options::new("own-sub", addr)
                .clean_start(false)
                .session_expiry(Some(3600))
                .keep_alive(60)
                .connect()
                .await;
            (Instant::now(), sub)
        })
    });
    let taken = loop {
        if holder(&c, "own-sub").await.is_some_and(|h| h != dead) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < LEASE + Duration::from_secs(20),
            "nobody took the session over\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let (mut sub, mut got) = match resumed {
        Some(resumed) => {
            let (at, mut sub) = resumed.await.unwrap();
            println!("resumed {:?} after the kill", at - killed);
            let early = sub.collect_publishes(Duration::from_millis(1)).await;
            (sub, early)
        }
        None => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sub = V5Options::new("own-sub", c.addr(0))
                .clean_start(false)
                .session_expiry(Some(3600))
                .connect()
                .await;
            (sub, Vec::new())
        }
    };
    assert!(sub.session_present(), "{}", c.logs());
    loop {
        let more = sub.collect_publishes(Duration::from_secs(3)).await;
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    let got: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &got {
        *counts.entry(p).or_default() += 1;
    }
    let missing: Vec<&String> = acked.iter().filter(|p| !counts.contains_key(p.as_str())).collect();
    let twice: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} acknowledged, taken over {taken:?} after the kill; received {}, missing {}, duplicated {}",
        acked.len(),
        got.len(),
        missing.len(),
        twice.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged never delivered: {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)],
        c.logs()
    );
    assert!(twice.is_empty(), "delivered more than once: {:?}", &twice[..twice.len().min(20)]);
    // Payloads sort by publisher, then number: each publisher's in order.
    let mut by_publisher: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in &got {
        by_publisher.entry(&p[..p.rfind('-').unwrap()]).or_default().push(p);
    }
    for (publisher, seen) in by_publisher {
        assert!(seen.is_sorted(), "{publisher}'s messages out of order");
    }
    mark_redis_ran().await;
}

#[tokio::test]
async fn own_publishes_of_the_instance_adopting_a_dead_session_reach_it_once() {
    let test = "own_publishes_of_the_instance_adopting_a_dead_session_reach_it_once";
    own_publishes_around_a_takeover_reach_the_session_once(test, false).await;
}

#[tokio::test]
async fn own_publishes_of_the_instance_a_dead_session_reconnects_to_reach_it_once() {
    let test = "own_publishes_of_the_instance_a_dead_session_reconnects_to_reach_it_once";
    own_publishes_around_a_takeover_reach_the_session_once(test, true).await;
}
