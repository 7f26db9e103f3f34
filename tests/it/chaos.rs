//! Chaos restarts: persistent-session devices publish QoS 1 locations
//! (history on) and QoS 2 events to persistent watchers while the real
//! binary is killed with SIGKILL at random moments and restarted on the same
//! data directory (on a new port each time; clients follow). Afterwards:
//! every PUBACKed location is in history and reached its watcher at least
//! once; every QoS 2 event the broker took (PUBREC) reached its watcher
//! exactly once, and no event arrived twice; retained messages and
//! subscriptions are back; every reconnect found its session.
//!
//! Both sides of QoS 2 keep their session state across reconnects as the
//! protocol asks of a client: a device resends an unfinished PUBLISH (DUP,
//! same packet id) or its PUBREL; a watcher delivers a QoS 2 message when
//! its packet id is new and remembers the id until PUBREL, so a broker that
//! resent a delivered message under another id would be caught.
//!
//! Default: 100 devices, 10 watchers, 5 kills. `MAPCAST_TEST_LONG=1`:
//! 1,000 devices, 50 watchers, 10 kills. `MAPCAST_TEST_CHAOS_SEED` replays
//! the kill timing. Also on PostgreSQL when `MAPCAST_TEST_POSTGRES_URL` is set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use reqwest::StatusCode;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, PubRel, Publish,
    Subscribe, SubscribeFilter,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Api, ServerProcess, expect_json, fresh_postgres_database, mark_postgres_ran, postgres_test_url,
};

/// How many clients, how many kills, how fast.
#[derive(Debug, Clone, Copy)]
struct Plan {
    devices: usize,
    watchers: usize,
    kills: usize,
    /// QoS 1 locations per second, all devices together.
    rate: f64,
}

impl Plan {
    fn from_env() -> Self {
        if std::env::var("MAPCAST_TEST_LONG").is_ok_and(|v| v == "1") {
            Self { devices: 1_000, watchers: 50, kills: 10, rate: 1_000.0 }
        } else {
            Self { devices: 100, watchers: 10, kills: 5, rate: 500.0 }
        }
    }

    /// The watcher that subscribes to device `d`'s location topic.
    fn watcher_of(&self, d: usize) -> usize {
        d % self.watchers
    }
}

/// Everything the clients saw, for the final checks.
#[derive(Default)]
struct Tally {
    /// Sequence numbers of the locations each device got a PUBACK for.
    acked: Mutex<HashMap<usize, Vec<u32>>>,
    /// (device, seq) pairs the watchers received.
    delivered: Mutex<HashSet<(usize, u32)>>,
    /// QoS 2 events each device got a PUBREC for: the broker has them.
    events_acked: Mutex<Vec<(usize, u32)>>,
    /// How many times the watchers' applications got each QoS 2 event.
    events_delivered: Mutex<HashMap<(usize, u32), u32>>,
    /// QoS 2 events that came under a packet id awaiting release (taken
    /// for resends, not delivered).
    events_skipped: Mutex<HashSet<(usize, u32)>>,
    /// The highest `status/dev-N` retained value each device got a PUBACK for.
    retained_acked: Mutex<HashMap<usize, u32>>,
    /// Devices that received their `cmd/dev-N` message.
    commands: Mutex<HashSet<usize>>,
    /// Reconnects that did not find their session (must stay empty).
    sessions_lost: Mutex<Vec<String>>,
    connects: AtomicUsize,
    refused_connects: AtomicUsize,
    /// Clients connected and subscribed at least once.
    ready: AtomicUsize,
    /// Devices that stopped publishing after the last kill.
    idle: AtomicUsize,
}

/// Where the broker listens now (`None` while it is down), and when to stop.
#[derive(Clone)]
struct Control {
    addr: watch::Receiver<Option<SocketAddr>>,
    /// Every watcher has subscribed: what is published from now on has a reader.
    start_publishing: CancellationToken,
    stop_publishing: CancellationToken,
    finish: CancellationToken,
}

#[tokio::test]
async fn kill_9_at_random_points_loses_nothing_acknowledged_on_sqlite() {
    chaos_restarts(&[]).await;
}

#[tokio::test]
async fn kill_9_at_random_points_loses_nothing_acknowledged_on_postgres() {
    let Some(base) = postgres_test_url("chaos restarts on PostgreSQL") else { return };
    let url = fresh_postgres_database(&base).await;
    chaos_restarts(&["--database-url", &url]).await;
    mark_postgres_ran().await;
}

async fn chaos_restarts(extra_args: &[&str]) {
    let plan = Plan::from_env();
    let seed = std::env::var("MAPCAST_TEST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("chaos: {plan:?}, seed {seed}");
    let mut rng = XorShift(seed | 1);
    let data_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut server = ServerProcess::start(data_dir.path(), extra_args).await;
    let (addr_tx, addr_rx) = watch::channel(Some(server.mqtt_addr));
    let control = Control {
        addr: addr_rx,
        start_publishing: CancellationToken::new(),
        stop_publishing: CancellationToken::new(),
        finish: CancellationToken::new(),
    };
    let tally = Arc::new(Tally::default());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..plan.watchers {
        tasks.spawn(watcher(plan, w, control.clone(), tally.clone()));
    }
    for d in 0..plan.devices {
        tasks.spawn(device(plan, d, control.clone(), tally.clone()));
    }
    wait_until("every client connected and subscribed", Duration::from_secs(60), || {
        (tally.ready.load(Relaxed), plan.devices + plan.watchers)
    })
    .await;
    control.start_publishing.cancel();
    // Group commit persists the sessions and subscriptions within milliseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut restarts = Vec::new();
    let mut earlier_logs = String::new();
    for _ in 0..plan.kills {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(2_500))).await;
        addr_tx.send_replace(None);
        earlier_logs.push_str(&server.logs());
        server.kill9().await;
        let down = Instant::now();
        server = ServerProcess::start(data_dir.path(), extra_args).await;
        restarts.push(down.elapsed());
        addr_tx.send_replace(Some(server.mqtt_addr));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    control.stop_publishing.cancel();
    wait_until("devices stopped publishing", Duration::from_secs(60), || {
        (tally.idle.load(Relaxed), plan.devices)
    })
    .await;
    let chaos_for = started.elapsed();
    let all_logs = format!("{earlier_logs}\n{}", server.logs());
    let troubles: Vec<&str> = all_logs
        .lines()
        .filter(|l| l.contains(r#""log.level":"warn""#) || l.contains(r#""log.level":"error""#))
        .filter(|l| !l.contains("unknown MAPCAST_ environment variable"))
        .collect();
    println!("chaos: {} warnings and errors logged by the broker", troubles.len());
    // By message first: a failure's output is cut, and the rare kinds are
    // what tells its cause.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for line in &troubles {
        let message = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| {
                let message = v["message"].as_str()?;
                Some(match v["error.message"].as_str() {
                    Some(e) => format!("{message}: {e}"),
                    None => message.to_owned(),
                })
            })
            .unwrap_or_else(|| "(not JSON)".to_owned());
        *kinds.entry(message).or_default() += 1;
    }
    for (message, n) in &kinds {
        println!("  {n:>6} × {message}");
    }
    for line in troubles.iter().take(5) {
        println!("  {}", &line[..line.len().min(400)]);
    }
    // The clients here keep to the protocol: a violation the broker sees
    // is its own (e.g. acknowledgements it expected in another order).
    let violations: usize =
        kinds.iter().filter(|(k, _)| k.starts_with("protocol error")).map(|(_, n)| n).sum();
    assert_eq!(violations, 0, "the broker saw protocol errors from well-behaved clients");

    // Every acknowledged location reached its watcher at least once.
    let acked: Vec<(usize, u32)> = {
        let acked = tally.acked.lock().unwrap();
        acked.iter().flat_map(|(d, seqs)| seqs.iter().map(move |s| (*d, *s))).collect()
    };
    let missing = || {
        let delivered = tally.delivered.lock().unwrap();
        acked.iter().filter(|m| !delivered.contains(m)).count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while missing() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let undelivered: Vec<(usize, u32)> = {
        let delivered = tally.delivered.lock().unwrap();
        acked.iter().filter(|m| !delivered.contains(m)).copied().collect()
    };
    if !undelivered.is_empty() {
        let api = Api::new(server.http_addr);
        let mut report = Vec::new();
        for (d, seq) in undelivered.iter().take(20) {
            let stored = history_seqs(&api, *d).await.contains(seq);
            let delivered = tally.delivered.lock().unwrap();
            let near: Vec<u32> = (seq.saturating_sub(3)..seq + 4)
                .filter(|s| delivered.contains(&(*d, *s)))
                .collect();
            report
                .push(format!("dev-{d} seq {seq}: in history {stored}, delivered nearby {near:?}"));
        }
        panic!(
            "{} acknowledged locations never delivered (seed {seed}):\n{}",
            undelivered.len(),
            report.join("\n")
        );
    }

    // Every QoS 2 event the broker took reached its watcher exactly once,
    // and none arrived twice.
    let events_acked = tally.events_acked.lock().unwrap().clone();
    let events_missing = || {
        let delivered = tally.events_delivered.lock().unwrap();
        events_acked.iter().filter(|e| !delivered.contains_key(e)).count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while events_missing() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let delivered = tally.events_delivered.lock().unwrap();
        let missing: Vec<_> = events_acked.iter().filter(|e| !delivered.contains_key(e)).collect();
        let skipped = tally.events_skipped.lock().unwrap();
        let as_resends: Vec<_> = missing.iter().filter(|e| skipped.contains(**e)).collect();
        let lost: Vec<_> = missing.iter().filter(|e| !skipped.contains(**e)).collect();
        assert!(
            lost.is_empty(),
            "{} QoS 2 events taken by the broker never delivered (seed {seed}), e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        // A broker that forgot a delivery it had sent (not yet stored when
        // it was killed) could reuse its packet id for a new message, which
        // the watcher, still holding the id, takes for a resend and drops.
        assert!(
            as_resends.is_empty(),
            "{} QoS 2 events came under a packet id awaiting release and were not delivered (seed {seed}), e.g. {:?}",
            as_resends.len(),
            &as_resends[..as_resends.len().min(20)]
        );
        let mut twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
        twice.sort();
        assert!(
            twice.is_empty(),
            "{} QoS 2 events delivered more than once (seed {seed}), e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(20)]
        );
    }

    // ... and is in history.
    let api = Api::new(server.http_addr);
    let mut not_in_history = Vec::new();
    let per_device = group(&acked);
    for (d, seqs) in &per_device {
        let stored = history_seqs(&api, *d).await;
        not_in_history.extend(seqs.iter().filter(|s| !stored.contains(s)).map(|s| (*d, *s)));
    }
    assert!(not_in_history.is_empty(), "acknowledged but not in history: {not_in_history:?}");

    // Retained messages are back, each at least as new as its last PUBACK.
    let retained = retained_status(server.mqtt_addr, plan.devices).await;
    let retained_acked = tally.retained_acked.lock().unwrap().clone();
    for d in 0..plan.devices {
        let kept = retained.get(&d).copied();
        assert!(
            kept >= retained_acked.get(&d).copied(),
            "status/dev-{d}: retained {kept:?}, acknowledged {:?}",
            retained_acked.get(&d)
        );
    }

    // Subscriptions are back: a command reaches every device.
    send_commands(server.mqtt_addr, plan.devices).await;
    wait_until("every device got its command", Duration::from_secs(30), || {
        (tally.commands.lock().unwrap().len(), plan.devices)
    })
    .await;

    let lost = tally.sessions_lost.lock().unwrap().clone();
    assert!(lost.is_empty(), "reconnects without their session: {lost:?}");
    control.finish.cancel();
    while tasks.join_next().await.is_some() {}

    let delivered = tally.delivered.lock().unwrap().len();
    let worst = restarts.iter().max().copied().unwrap_or_default();
    println!(
        "chaos: {} devices + {} watchers, {} SIGKILLs in {:.1} s (restart ≤ {worst:?}); {} locations acknowledged, all in history and delivered ({delivered} distinct deliveries); {} QoS 2 events taken, each delivered exactly once; {} connects ({} refused and retried), 0 sessions lost",
        plan.devices,
        plan.watchers,
        plan.kills,
        chaos_for.as_secs_f64(),
        acked.len(),
        events_acked.len(),
        tally.connects.load(Relaxed),
        tally.refused_connects.load(Relaxed),
    );
    server.kill9().await;
}

/// A device: persistent session, subscribed to its command topic, a
/// retained status on every connect, then QoS 1 locations and QoS 2 events
/// at its share of the rate, one of each in flight, until told to stop. A
/// QoS 2 exchange a reconnect cut short is finished first.
async fn device(plan: Plan, d: usize, control: Control, tally: Arc<Tally>) {
    let id = format!("dev-{d}");
    let period = Duration::from_secs_f64(plan.devices as f64 / plan.rate);
    let (mut seq, mut connects, mut idle) = (0u32, 0u32, false);
    let mut unfinished: Option<Qos2Out> = None;
    while let Some(mut link) = Link::connect(&id, &control, &tally, connects > 0).await {
        connects += 1;
        let result: Result<(), Gone> = async {
            if connects == 1 {
                link.subscribe(1, &format!("cmd/{id}")).await?;
                tally.ready.fetch_add(1, Relaxed);
            }
            if let Some(out) = &mut unfinished {
                out.dup = true;
                link.publish_qos2(out, &tally, d).await?;
                unfinished = None;
            }
            let status = Publish {
                retain: true,
                pkid: 2,
                ..Publish::new(format!("status/{id}"), QoS::AtLeastOnce, connects.to_string())
            };
            link.publish(status, &tally, d).await?;
            tally.retained_acked.lock().unwrap().insert(d, connects);
            control.start_publishing.cancelled().await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !control.stop_publishing.is_cancelled() {
                tick.tick().await;
                seq += 1;
                let topic = format!("devices/{id}/location");
                let pkid = (seq % 60_000 + 10) as u16;
                let msg = Publish { pkid, ..Publish::new(topic, QoS::AtLeastOnce, location(seq)) };
                link.publish(msg, &tally, d).await?;
                tally.acked.lock().unwrap().entry(d).or_default().push(seq);
                // Ids of their own, apart from the QoS 1 ones.
                let pkid = (seq % 5_000 + 60_010) as u16;
                let out = unfinished.insert(Qos2Out::new(d, seq, pkid));
                link.publish_qos2(out, &tally, d).await?;
                unfinished = None;
            }
            if !idle {
                idle = true;
                tally.idle.fetch_add(1, Relaxed);
            }
            link.serve_until(&control.finish, &tally, d).await
        }
        .await;
        if result.is_ok() {
            return;
        }
    }
}

/// A watcher: persistent session subscribed to its share of the devices'
/// location topics; records and acknowledges what it receives.
async fn watcher(plan: Plan, w: usize, control: Control, tally: Arc<Tally>) {
    let id = format!("watch-{w}");
    let mine: Vec<usize> = (0..plan.devices).filter(|d| plan.watcher_of(*d) == w).collect();
    let locations: Vec<String> = mine.iter().map(|d| format!("devices/dev-{d}/location")).collect();
    let events: Vec<String> = mine.iter().map(|d| format!("events/dev-{d}")).collect();
    let mut connects = 0;
    // The session's inbound QoS 2 ids, kept across connections.
    let mut unreleased = HashSet::new();
    while let Some(mut link) = Link::connect(&id, &control, &tally, connects > 0).await {
        connects += 1;
        link.unreleased = std::mem::take(&mut unreleased);
        let result: Result<(), Gone> = async {
            if connects == 1 {
                link.subscribe_many(1, &locations, QoS::AtLeastOnce).await?;
                link.subscribe_many(2, &events, QoS::ExactlyOnce).await?;
                tally.ready.fetch_add(1, Relaxed);
            }
            link.serve_until(&control.finish, &tally, usize::MAX).await
        }
        .await;
        unreleased = std::mem::take(&mut link.unreleased);
        if result.is_ok() {
            return;
        }
    }
}

/// An outbound QoS 2 exchange of a device, as its session keeps it.
struct Qos2Out {
    device: usize,
    seq: u32,
    pkid: u16,
    /// Sent before, on an earlier connection: resend with DUP.
    dup: bool,
    /// PUBREC received: what is left is PUBREL → PUBCOMP.
    received: bool,
}

impl Qos2Out {
    fn new(device: usize, seq: u32, pkid: u16) -> Self {
        Self { device, seq, pkid, dup: false, received: false }
    }
}

/// The connection ended (broker killed) or misbehaved: reconnect.
#[derive(Debug)]
struct Gone;

/// One MQTT 3.1.1 connection with exact control of what is acknowledged.
struct Link {
    stream: TcpStream,
    buf: BytesMut,
    /// Inbound QoS 2 ids delivered and not released yet (the session's,
    /// carried over by the watcher).
    unreleased: HashSet<u16>,
}

impl Link {
    /// Connect with a persistent session to wherever the broker is now,
    /// retrying until it accepts; `None` once the test is finishing.
    async fn connect(
        id: &str,
        control: &Control,
        tally: &Tally,
        expect_session: bool,
    ) -> Option<Self> {
        let mut addr_rx = control.addr.clone();
        loop {
            if control.finish.is_cancelled() {
                return None;
            }
            let Some(addr) = *addr_rx.borrow_and_update() else {
                tokio::select! {
                    _ = addr_rx.changed() => {}
                    _ = control.finish.cancelled() => return None,
                }
                continue;
            };
            match Self::try_connect(addr, id).await {
                Ok((link, ack)) if ack.code == ConnectReturnCode::Success => {
                    tally.connects.fetch_add(1, Relaxed);
                    if expect_session && !ack.session_present {
                        tally.sessions_lost.lock().unwrap().push(id.to_owned());
                    }
                    return Some(link);
                }
                Ok(_) => {
                    // Refused (e.g. the per-address connect rate): back off.
                    tally.refused_connects.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Gone) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn try_connect(addr: SocketAddr, id: &str) -> Result<(Self, ConnAck), Gone> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| Gone)?
            .map_err(|_| Gone)?;
        stream.set_nodelay(true).map_err(|_| Gone)?;
        let mut link =
            Self { stream, buf: BytesMut::with_capacity(4096), unreleased: HashSet::new() };
        link.send(Packet::Connect(Connect {
            protocol: Protocol::V4,
            // No keep-alive: the watchers idle for long stretches.
            keep_alive: 0,
            client_id: id.to_owned(),
            clean_session: false,
            last_will: None,
            login: None,
        }))
        .await?;
        match link.next(Duration::from_secs(10)).await? {
            Packet::ConnAck(ack) => Ok((link, ack)),
            _ => Err(Gone),
        }
    }

    async fn subscribe(&mut self, pkid: u16, filter: &str) -> Result<(), Gone> {
        self.subscribe_many(pkid, &[filter.to_owned()], QoS::AtLeastOnce).await
    }

    async fn subscribe_many(
        &mut self,
        pkid: u16,
        filters: &[String],
        qos: QoS,
    ) -> Result<(), Gone> {
        let filters = filters.iter().map(|f| SubscribeFilter::new(f.clone(), qos));
        let mut sub = Subscribe::new_many(filters);
        sub.pkid = pkid;
        self.send(Packet::Subscribe(sub)).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Packet::SubAck(ack) if ack.pkid == pkid => return Ok(()),
                _ => {}
            }
        }
    }

    /// Publish QoS 1 and wait for its PUBACK, handling what arrives meanwhile.
    async fn publish(&mut self, msg: Publish, tally: &Tally, who: usize) -> Result<(), Gone> {
        let pkid = msg.pkid;
        self.send(Packet::Publish(msg)).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Packet::PubAck(ack) if ack.pkid == pkid => return Ok(()),
                Packet::Publish(p) => self.receive(p, tally, who).await?,
                _ => {}
            }
        }
    }

    /// Run (or finish) a QoS 2 exchange for `out` up to PUBCOMP, handling
    /// what arrives meanwhile. `out` records how far it got, for a resume
    /// on the next connection.
    async fn publish_qos2(
        &mut self,
        out: &mut Qos2Out,
        tally: &Tally,
        who: usize,
    ) -> Result<(), Gone> {
        if !out.received {
            let msg = Publish {
                pkid: out.pkid,
                dup: out.dup,
                ..Publish::new(
                    format!("events/dev-{}", out.device),
                    QoS::ExactlyOnce,
                    out.seq.to_string(),
                )
            };
            self.send(Packet::Publish(msg)).await?;
            loop {
                match self.next(Duration::from_secs(10)).await? {
                    Packet::PubRec(rec) if rec.pkid == out.pkid => break,
                    Packet::Publish(p) => self.receive(p, tally, who).await?,
                    Packet::PubRel(rel) => self.released(rel.pkid).await?,
                    _ => {}
                }
            }
            out.received = true;
            tally.events_acked.lock().unwrap().push((out.device, out.seq));
        }
        self.send(Packet::PubRel(PubRel::new(out.pkid))).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Packet::PubComp(comp) if comp.pkid == out.pkid => return Ok(()),
                Packet::Publish(p) => self.receive(p, tally, who).await?,
                Packet::PubRel(rel) => self.released(rel.pkid).await?,
                _ => {}
            }
        }
    }

    /// PUBREL from the broker: the id may be reused; PUBCOMP, also for an id
    /// this session does not know (a resumed exchange).
    async fn released(&mut self, pkid: u16) -> Result<(), Gone> {
        self.unreleased.remove(&pkid);
        self.send(Packet::PubComp(PubComp::new(pkid))).await
    }

    /// Receive and acknowledge until `finish`; `Ok` when finished.
    async fn serve_until(
        &mut self,
        finish: &CancellationToken,
        tally: &Tally,
        who: usize,
    ) -> Result<(), Gone> {
        loop {
            let packet = tokio::select! {
                p = self.next(Duration::from_secs(3_600)) => p?,
                _ = finish.cancelled() => return Ok(()),
            };
            match packet {
                Packet::Publish(p) => self.receive(p, tally, who).await?,
                Packet::PubRel(rel) => self.released(rel.pkid).await?,
                _ => {}
            }
        }
    }

    /// Record an incoming message, then acknowledge it (so a crash in
    /// between can only cause a redelivery). A QoS 2 message is delivered
    /// only under a packet id not awaiting release [MQTT-4.3.3-10]; its
    /// PUBREC follows either way.
    async fn receive(&mut self, p: Publish, tally: &Tally, who: usize) -> Result<(), Gone> {
        if p.qos == QoS::ExactlyOnce {
            let device = p.topic.strip_prefix("events/dev-").expect("an event topic");
            let device: usize = device.parse().expect("device number");
            let seq: u32 = std::str::from_utf8(&p.payload).unwrap().parse().expect("seq");
            if self.unreleased.insert(p.pkid) {
                *tally.events_delivered.lock().unwrap().entry((device, seq)).or_default() += 1;
            } else {
                tally.events_skipped.lock().unwrap().insert((device, seq));
            }
            return self.send(Packet::PubRec(PubRec::new(p.pkid))).await;
        }
        if let Some(device) = p.topic.strip_prefix("devices/dev-").and_then(|t| t.split('/').next())
        {
            let device: usize = device.parse().expect("device number");
            let payload: Value = serde_json::from_slice(&p.payload).expect("JSON location");
            let seq = payload["properties"]["seq"].as_u64().expect("seq") as u32;
            tally.delivered.lock().unwrap().insert((device, seq));
        } else if p.topic.starts_with("cmd/") {
            tally.commands.lock().unwrap().insert(who);
        }
        if p.qos != QoS::AtMostOnce {
            self.send(Packet::PubAck(PubAck::new(p.pkid))).await?;
        }
        Ok(())
    }

    async fn send(&mut self, packet: Packet) -> Result<(), Gone> {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).map_err(|_| Gone)?;
        self.stream.write_all(&out).await.map_err(|_| Gone)
    }

    async fn next(&mut self, timeout: Duration) -> Result<Packet, Gone> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Packet::read(&mut self.buf, usize::MAX) {
                Ok(packet) => return Ok(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return Err(Gone),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(Gone),
            }
        }
    }
}

/// A location whose `properties.seq` identifies it; `ts` grows with it.
pub(crate) fn location(seq: u32) -> String {
    serde_json::json!({
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [seq as f64 % 180.0, 10.0]},
        "properties": {"ts": crate::helpers::an_hour_ago_ms() + seq as i64, "seq": seq}
    })
    .to_string()
}

fn group(pairs: &[(usize, u32)]) -> BTreeMap<usize, Vec<u32>> {
    let mut map: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for (d, s) in pairs {
        map.entry(*d).or_default().push(*s);
    }
    map
}

/// Every `seq` in the history of device `d`, all pages.
async fn history_seqs(api: &Api, d: usize) -> HashSet<u32> {
    let mut seqs = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let path = format!("/api/v1/history/devices/dev-{d}/location?limit=1000{query}");
        let page = expect_json(api.get(&path, None).await, StatusCode::OK).await;
        for item in page["items"].as_array().unwrap() {
            seqs.insert(item["payload"]["properties"]["seq"].as_u64().unwrap() as u32);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return seqs,
        }
    }
}

/// The retained `status/dev-N` values, read by a fresh clean session.
async fn retained_status(addr: SocketAddr, devices: usize) -> HashMap<usize, u32> {
    let (mut link, _) = Link::try_connect(addr, "retained-reader").await.expect("connect");
    let mut sub = Subscribe::new("status/#", QoS::AtMostOnce);
    sub.pkid = 1;
    link.send(Packet::Subscribe(sub)).await.unwrap();
    let mut kept = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kept.len() < devices {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match link.next(left).await {
            Ok(Packet::Publish(p)) => {
                let d: usize = p.topic.trim_start_matches("status/dev-").parse().unwrap();
                kept.insert(d, std::str::from_utf8(&p.payload).unwrap().parse().unwrap());
            }
            Ok(_) => {}
            Err(Gone) => break,
        }
    }
    kept
}

/// One QoS 1 `cmd/dev-N` message per device.
async fn send_commands(addr: SocketAddr, devices: usize) {
    let (mut link, _) = Link::try_connect(addr, "commander").await.expect("connect");
    let tally = Tally::default();
    for d in 0..devices {
        let pkid = (d % 60_000 + 1) as u16;
        let msg =
            Publish { pkid, ..Publish::new(format!("cmd/dev-{d}"), QoS::AtLeastOnce, "ping") };
        link.publish(msg, &tally, usize::MAX).await.expect("command acknowledged");
    }
}

/// Poll until `progress` reports `(done, total)` with done == total.
pub(crate) async fn wait_until(
    what: &str,
    timeout: Duration,
    progress: impl Fn() -> (usize, usize),
) {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, total) = progress();
        if done == total {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: {done} of {total}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reproducible kill timing from a printed seed.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
