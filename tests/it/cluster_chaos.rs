//! Chaos through a balancer: three instances on one PostgreSQL database
//! and one Redis, behind HAProxy in TCP mode (leastconn, readiness checks
//! on /readyz, PROXY protocol v2 as in `deploy/haproxy.cfg`). Devices
//! publish QoS 1 locations with persistent MQTT v5 sessions through the
//! balancer; watchers with persistent sessions receive them, also through
//! the balancer. Random instances are killed with SIGKILL under that load
//! and started again on their data directory and ports; every client
//! reconnects with backoff wherever the balancer sends it. Afterwards every
//! location a device got a PUBACK for reached its watcher (duplicates, which
//! QoS 1 allows after reconnects, are counted and printed), every reconnect
//! and a final one of every client found its session, and no instance
//! panicked.
//!
//! Default: 60 devices, 6 watchers, 3 kills. `MAPCAST_TEST_LONG=1`: 200
//! devices, 20 watchers, 5 kills. `MAPCAST_TEST_CHAOS_SEED` replays the
//! kill timing and choice. Needs PostgreSQL (`MAPCAST_TEST_POSTGRES_URL`),
//! `redis-server` and `haproxy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Filter, Packet, PubAck, PubAckReason,
    Publish, Subscribe,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::chaos::{XorShift, location, wait_until};
use crate::helpers::FixedCluster;
use crate::proxy_protocol::{haproxy, mark};

const INSTANCES: usize = 3;
/// Kept by the broker this long after a client's connection ends.
const SESSION_EXPIRY_SECS: u32 = 3_600;
/// A claimant of a dead instance's session waits for that instance's lease
/// to lapse (10 s), then for the takeover: a CONNACK may take that long.
const CONNACK_WAIT: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Copy)]
struct Plan {
    devices: usize,
    watchers: usize,
    kills: usize,
    /// QoS 1 locations per second, all devices together.
    rate: f64,
    /// Which instances may be killed: `1..` keeps the watchers' instance
    /// alive when they are pinned to instance 0.
    first_killable: usize,
    /// Watchers connect through a frontend whose only server is instance 0.
    watchers_pinned: bool,
}

impl Plan {
    fn new(watchers_pinned: bool) -> Self {
        let (devices, watchers, kills, rate) =
            if std::env::var("MAPCAST_TEST_LONG").is_ok_and(|v| v == "1") {
                (200, 20, 5, 600.0)
            } else {
                (60, 6, 3, 300.0)
            };
        let first_killable = usize::from(watchers_pinned);
        Self { devices, watchers, kills, rate, first_killable, watchers_pinned }
    }

    fn watcher_of(&self, d: usize) -> usize {
        d % self.watchers
    }
}

#[derive(Default)]
struct Tally {
    /// Sequence numbers each device got a successful PUBACK for.
    acked: Mutex<HashMap<usize, Vec<u32>>>,
    /// How many times each (device, seq) reached its watcher.
    delivered: Mutex<HashMap<(usize, u32), u32>>,
    /// Reconnects that did not find their session (must stay empty).
    sessions_lost: Mutex<Vec<String>>,
    /// PUBACKs with an error reason: not acknowledged, not counted.
    refused_publishes: AtomicUsize,
    connects: AtomicUsize,
    refused_connects: AtomicUsize,
    ready: AtomicUsize,
    idle: AtomicUsize,
}

#[derive(Clone)]
struct Control {
    /// The balancer's MQTT frontend for everyone.
    balancer: SocketAddr,
    /// The frontend the watchers use (the same, or one pinned to instance 0).
    watchers_frontend: SocketAddr,
    start_publishing: CancellationToken,
    stop_publishing: CancellationToken,
    finish: CancellationToken,
}

/// The required behaviour: any instance may die, the watchers' included.
/// QoS 1 messages published while a watcher's holder is dead and before its
/// client reconnects elsewhere reach it through the survivor that takes
/// its session over (replayed from the stream).
#[tokio::test]
async fn sigkill_of_any_instance_behind_haproxy_loses_nothing_acknowledged() {
    let test = "sigkill_of_any_instance_behind_haproxy_loses_nothing_acknowledged";
    cluster_chaos(test, Plan::new(false)).await;
}

/// The watchers stay on an instance that is never killed: the publishers'
/// instances die under load, so acknowledged publishes must survive their
/// instance (its outbox, replayed when it restarts) and device sessions must
/// follow their clients to the other instances.
#[tokio::test]
async fn sigkill_of_publishers_instances_behind_haproxy_loses_nothing_acknowledged() {
    let test = "sigkill_of_publishers_instances_behind_haproxy_loses_nothing_acknowledged";
    cluster_chaos(test, Plan::new(true)).await;
}

async fn cluster_chaos(test: &str, plan: Plan) {
    let Some(haproxy) = haproxy() else { return };
    let seed = std::env::var("MAPCAST_TEST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("cluster chaos: {plan:?}, seed {seed}");
    let mut rng = XorShift(seed | 1);
    // Every instance takes PROXY headers from the balancer only, so its
    // per-address limits see each client's own address.
    let toml = "[mqtt]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n\
                [http]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n";
    let Some(mut cluster) = FixedCluster::start(test, INSTANCES, toml).await else { return };
    let (mut proxy, balancer, pinned) = start_haproxy(haproxy, &cluster).await;
    let control = Control {
        balancer,
        watchers_frontend: if plan.watchers_pinned { pinned } else { balancer },
        start_publishing: CancellationToken::new(),
        stop_publishing: CancellationToken::new(),
        finish: CancellationToken::new(),
    };
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
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
    // Subscriptions are committed by group commit within milliseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    control.start_publishing.cancel();

    let mut killed = Vec::new();
    for _ in 0..plan.kills {
        tokio::time::sleep(Duration::from_millis(3_000 + rng.below(3_000))).await;
        // The high bits: successive low bits of the generator are correlated.
        let high = (rng.below(u64::MAX) >> 40) as usize;
        let victim = plan.first_killable + high % (INSTANCES - plan.first_killable);
        let instance = &mut cluster.instances[victim];
        instance.kill9().await;
        killed.push(instance.node_id.clone());
        tokio::time::sleep(Duration::from_millis(rng.below(1_000))).await;
        instance.restart().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    control.stop_publishing.cancel();
    // A device in the middle of a reconnect finishes it first.
    wait_until("devices stopped publishing", Duration::from_secs(90), || {
        (tally.idle.load(Relaxed), plan.devices)
    })
    .await;
    let chaos_for = started.elapsed();

    let acked: Vec<(usize, u32)> = {
        let acked = tally.acked.lock().unwrap();
        acked.iter().flat_map(|(d, seqs)| seqs.iter().map(move |s| (*d, *s))).collect()
    };
    let undelivered = || {
        let delivered = tally.delivered.lock().unwrap();
        acked.iter().filter(|m| !delivered.contains_key(m)).copied().collect::<Vec<_>>()
    };
    // Watchers of a killed instance may still be reconnecting.
    let deadline = Instant::now() + Duration::from_secs(45);
    while !undelivered().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let undelivered = undelivered();
    let (duplicates, delivered) = {
        let delivered = tally.delivered.lock().unwrap();
        (delivered.values().map(|n| u64::from(n - 1)).sum::<u64>(), delivered.len())
    };

    control.finish.cancel();
    while tasks.join_next().await.is_some() {}
    // A final reconnect of every client through the balancer finds its session.
    let mut without_session = Vec::new();
    let ids = (0..plan.devices)
        .map(|d| (format!("dev-{d}"), d))
        .chain((0..plan.watchers).map(|w| (format!("watch-{w}"), plan.devices + w)));
    for (id, n) in ids {
        let (_, ack) = try_connect(balancer, source(n), &id).await.unwrap_or_else(|Gone| {
            panic!("{id}: no CONNACK through the balancer\n{}", tail(&cluster.logs()))
        });
        if ack.code != ConnectReturnCode::Success || !ack.session_present {
            without_session
                .push(format!("{id}: {:?}, session present {}", ack.code, ack.session_present));
        }
    }
    let logs = cluster.logs();
    let panics: Vec<&str> = logs.lines().filter(|l| l.contains("panicked")).collect();
    let _ = proxy.kill().await;

    let per_watcher = {
        let mut per: HashMap<usize, usize> = HashMap::new();
        for (d, _) in &undelivered {
            *per.entry(plan.watcher_of(*d)).or_default() += 1;
        }
        let mut per: Vec<_> = per.into_iter().collect();
        per.sort();
        per
    };
    println!(
        "cluster chaos: {} devices + {} watchers through HAProxy, SIGKILLs of {killed:?} in {:.1} s; \
         {} locations acknowledged, {} undelivered (per watcher {per_watcher:?}), {delivered} distinct \
         deliveries, {duplicates} duplicates; {} connects ({} refused and retried), {} PUBACKs with an \
         error reason; sessions lost on reconnect {}, at the end {}; panics {}",
        plan.devices,
        plan.watchers,
        chaos_for.as_secs_f64(),
        acked.len(),
        undelivered.len(),
        tally.connects.load(Relaxed),
        tally.refused_connects.load(Relaxed),
        tally.refused_publishes.load(Relaxed),
        tally.sessions_lost.lock().unwrap().len(),
        without_session.len(),
        panics.len(),
    );
    assert!(panics.is_empty(), "an instance panicked:\n{}", panics.join("\n"));
    assert!(!acked.is_empty(), "nothing was acknowledged");
    assert!(
        undelivered.is_empty(),
        "{} acknowledged locations never reached their watcher (seed {seed}), e.g. {:?}\n\
         the instances' warnings:\n{}",
        undelivered.len(),
        &undelivered[..undelivered.len().min(20)],
        warnings(&logs)
    );
    let lost = tally.sessions_lost.lock().unwrap().clone();
    assert!(lost.is_empty(), "reconnects without their session (seed {seed}): {lost:?}");
    assert!(
        without_session.is_empty(),
        "final reconnects without their session: {without_session:?}"
    );
    mark("haproxy-cluster-chaos-ran").await;
}

/// HAProxy in front of the instances: the shared MQTT frontend, and one
/// whose only server is instance 0 (for pinned watchers).
async fn start_haproxy(
    haproxy: &str,
    cluster: &FixedCluster,
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let (port, pinned_port) = (free_port(), free_port());
    let server = |i: usize| {
        let n = &cluster.instances[i];
        format!(
            "  server n{i} 127.0.0.1:{} send-proxy-v2 check port {} check-send-proxy\n",
            n.mqtt_port, n.http_port
        )
    };
    let servers: String = (0..cluster.instances.len()).map(server).collect();
    let backend = |name: &str, servers: &str| {
        format!(
            "backend {name}\n  mode tcp\n  balance leastconn\n  option redispatch\n  retries 3\n\
             \x20 option httpchk\n  http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host mapcast\n\
             \x20 http-check expect status 200\n{servers}"
        )
    };
    let config = format!(
        "global\n  log stderr local0 warning\n  maxconn 2000\n\
         defaults\n  timeout connect 2s\n  timeout client 10m\n  timeout server 10m\n\
         \x20 default-server inter 500ms fall 2 rise 2\n\
         frontend mqtt\n  mode tcp\n  bind 127.0.0.1:{port}\n  default_backend mqtt_nodes\n\
         frontend mqtt_pinned\n  mode tcp\n  bind 127.0.0.1:{pinned_port}\n  default_backend mqtt_node0\n\
         {}{}",
        backend("mqtt_nodes", &servers),
        backend("mqtt_node0", &server(0)),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    tokio::fs::write(&cfg, config).await.unwrap();
    let proxy = tokio::process::Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy");
    let balancer = SocketAddr::from(([127, 0, 0, 1], port));
    let pinned = SocketAddr::from(([127, 0, 0, 1], pinned_port));
    // Until HAProxy reads its config and its checks find every instance ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (n, frontend) in [balancer, pinned].into_iter().enumerate() {
        loop {
            if let Ok((_, ack)) = try_connect(frontend, [127, 0, 1, n as u8], "probe").await
                && ack.code == ConnectReturnCode::Success
            {
                break;
            }
            assert!(Instant::now() < deadline, "HAProxy never passed a connection");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every server up (rise 2 × 500 ms), not only the first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (proxy, balancer, pinned)
}

/// A device: QoS 1 locations at its share of the rate, one in flight, until
/// told to stop; reconnects with backoff whenever its connection ends.
async fn device(plan: Plan, d: usize, control: Control, tally: Arc<Tally>) {
    let id = format!("dev-{d}");
    let period = Duration::from_secs_f64(plan.devices as f64 / plan.rate);
    let (mut seq, mut connects, mut idle) = (0u32, 0u32, false);
    while let Some(mut link) =
        Link::connect(&id, control.balancer, source(d), &control.finish, &tally, connects > 0).await
    {
        connects += 1;
        let result: Result<(), Gone> = async {
            if connects == 1 {
                tally.ready.fetch_add(1, Relaxed);
            }
            control.start_publishing.cancelled().await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !control.stop_publishing.is_cancelled() {
                tick.tick().await;
                seq += 1;
                let mut msg = Publish::new(
                    format!("devices/{id}/location"),
                    QoS::AtLeastOnce,
                    location(seq),
                    None,
                );
                msg.pkid = (seq % 60_000 + 1) as u16;
                match link.publish(msg).await? {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                        tally.acked.lock().unwrap().entry(d).or_default().push(seq);
                    }
                    _ => {
                        tally.refused_publishes.fetch_add(1, Relaxed);
                    }
                }
            }
            if !idle {
                idle = true;
                tally.idle.fetch_add(1, Relaxed);
            }
            link.serve_until(&control.finish, &tally).await
        }
        .await;
        if result.is_ok() {
            return;
        }
    }
}

/// A watcher: subscribed with QoS 1 to its share of the devices' location
/// topics on its first connect; records and acknowledges what it receives.
async fn watcher(plan: Plan, w: usize, control: Control, tally: Arc<Tally>) {
    let id = format!("watch-{w}");
    let filters: Vec<Filter> = (0..plan.devices)
        .filter(|d| plan.watcher_of(*d) == w)
        .map(|d| Filter::new(format!("devices/dev-{d}/location"), QoS::AtLeastOnce))
        .collect();
    let frontend = control.watchers_frontend;
    let mut connects = 0;
    let from = source(plan.devices + w);
    while let Some(mut link) =
        Link::connect(&id, frontend, from, &control.finish, &tally, connects > 0).await
    {
        connects += 1;
        let result: Result<(), Gone> = async {
            if connects == 1 {
                link.subscribe(filters.clone(), &tally).await?;
                tally.ready.fetch_add(1, Relaxed);
            }
            link.serve_until(&control.finish, &tally).await
        }
        .await;
        if result.is_ok() {
            return;
        }
    }
}

/// Each client connects from a loopback address of its own (the instances
/// see it in the PROXY header), so per-address connect limits apply per
/// client as they would in the field.
fn source(n: usize) -> [u8; 4] {
    [127, 0, 2 + (n / 250) as u8, 2 + (n % 250) as u8]
}

/// The connection ended (instance killed) or misbehaved: reconnect.
#[derive(Debug)]
struct Gone;

/// One MQTT v5 connection with exact control of what is acknowledged.
struct Link {
    stream: TcpStream,
    buf: BytesMut,
}

impl Link {
    /// Connect with a persistent session through `to`, with backoff, until
    /// accepted; `None` once the test is finishing.
    async fn connect(
        id: &str,
        to: SocketAddr,
        from: [u8; 4],
        finish: &CancellationToken,
        tally: &Tally,
        expect_session: bool,
    ) -> Option<Self> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if finish.is_cancelled() {
                return None;
            }
            match try_connect(to, from, id).await {
                Ok((link, ack)) if ack.code == ConnectReturnCode::Success => {
                    tally.connects.fetch_add(1, Relaxed);
                    if expect_session && !ack.session_present {
                        tally.sessions_lost.lock().unwrap().push(id.to_owned());
                    }
                    return Some(link);
                }
                Ok(_) => {
                    tally.refused_connects.fetch_add(1, Relaxed);
                }
                Err(Gone) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = finish.cancelled() => return None,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn subscribe(&mut self, filters: Vec<Filter>, tally: &Tally) -> Result<(), Gone> {
        let mut sub = Subscribe::new_many(filters, None);
        sub.pkid = 1;
        self.send(Packet::Subscribe(sub)).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Packet::SubAck(ack) if ack.pkid == 1 => return Ok(()),
                Packet::Publish(p) => self.receive(p, tally).await?,
                _ => {}
            }
        }
    }

    /// Publish QoS 1 and wait for its PUBACK's reason.
    async fn publish(&mut self, msg: Publish) -> Result<PubAckReason, Gone> {
        let pkid = msg.pkid;
        self.send(Packet::Publish(msg)).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Packet::PubAck(ack) if ack.pkid == pkid => return Ok(ack.reason),
                _ => {}
            }
        }
    }

    async fn serve_until(&mut self, finish: &CancellationToken, tally: &Tally) -> Result<(), Gone> {
        loop {
            let packet = tokio::select! {
                p = self.next(Duration::from_secs(3_600)) => p?,
                _ = finish.cancelled() => return Ok(()),
            };
            if let Packet::Publish(p) = packet {
                self.receive(p, tally).await?;
            }
        }
    }

    /// Record a location, then acknowledge it (a connection lost in between
    /// can only cause a redelivery).
    async fn receive(&mut self, p: Publish, tally: &Tally) -> Result<(), Gone> {
        let topic = std::str::from_utf8(&p.topic).expect("UTF-8 topic");
        let device = topic
            .strip_prefix("devices/dev-")
            .and_then(|t| t.split('/').next())
            .and_then(|d| d.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("unexpected topic {topic}"));
        let payload: Value = serde_json::from_slice(&p.payload).expect("JSON location");
        let seq = payload["properties"]["seq"].as_u64().expect("seq") as u32;
        *tally.delivered.lock().unwrap().entry((device, seq)).or_default() += 1;
        if p.qos != QoS::AtMostOnce {
            self.send(Packet::PubAck(PubAck::new(p.pkid, None))).await?;
        }
        Ok(())
    }

    async fn send(&mut self, packet: Packet) -> Result<(), Gone> {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).map_err(|_| Gone)?;
        self.stream.write_all(&out).await.map_err(|_| Gone)
    }

    async fn next(&mut self, timeout: Duration) -> Result<Packet, Gone> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Packet::read(&mut self.buf, None) {
                Ok(packet) => return Ok(packet),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return Err(Gone),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(Gone),
            }
        }
    }
}

/// One CONNECT with clean start off and a session expiry, from `from`.
async fn try_connect(to: SocketAddr, from: [u8; 4], id: &str) -> Result<(Link, ConnAck), Gone> {
    let socket = TcpSocket::new_v4().map_err(|_| Gone)?;
    socket.bind(SocketAddr::from((from, 0))).map_err(|_| Gone)?;
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| Gone)?
        .map_err(|_| Gone)?;
    stream.set_nodelay(true).map_err(|_| Gone)?;
    let mut link = Link { stream, buf: BytesMut::with_capacity(4096) };
    let properties = ConnectProperties {
        session_expiry_interval: Some(SESSION_EXPIRY_SECS),
        ..ConnectProperties::new()
    };
    let connect = Connect {
        // No keep-alive: the watchers idle for long stretches.
        keep_alive: 0,
        client_id: id.to_owned(),
        clean_start: false,
        properties: Some(properties),
    };
    link.send(Packet::Connect(connect, None, None)).await?;
    match link.next(CONNACK_WAIT).await? {
        Packet::ConnAck(ack) => Ok((link, ack)),
        _ => Err(Gone),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The end of a long log, for a failure message.
/// The instances' warnings and errors, at most 40 lines of them.
fn warnings(logs: &str) -> String {
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(r#""log.level":"warn""#) || l.contains(r#""log.level":"error""#))
        .take(40)
        .collect();
    lines.join("\n")
}

fn tail(logs: &str) -> &str {
    &logs[logs.floor_char_boundary(logs.len().saturating_sub(4_000))..]
}
