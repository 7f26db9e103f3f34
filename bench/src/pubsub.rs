//! `mapcast-bench pubsub`: N publishers and M subscribers on separate
//! connections; throughput, loss, duplicates and end-to-end latency.
//!
//! The run: subscribers connect and subscribe, publishers connect, then load
//! for `--warmup` seconds (not counted), the measured window of `--duration`
//! seconds, and a drain of at most `--drain` seconds for what is in flight.
//! Rates count what was written and read during the window; latency covers
//! every message *sent* during the window, however late it arrives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Buf;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{ClientError, Connection, READ_BUFFER};
use super::payload::{Payload, Stamp, Vehicle, now_ns};
use super::procfs::{Probe, ProcessUsage};
use super::stats::{LatencySummary, SeqTracker, human_count, latency_histogram};
use super::wire::{self, Packet, QoS, filter_matches};
use super::{TargetArgs, client_id_prefix, print_report, progress};

/// Connections opened at once while setting up.
const SETUP_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Args)]
pub struct PubSubArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Publisher connections.
    #[arg(short = 'p', long, default_value_t = 10)]
    pub publishers: u32,
    /// Subscriber connections; each subscribes to --filter.
    #[arg(short = 's', long, default_value_t = 1)]
    pub subscribers: u32,
    /// Port the subscribers connect to, when not --port: another instance
    /// of a cluster, so every message crosses instances.
    #[arg(long, value_name = "PORT")]
    pub subscriber_port: Option<u16>,
    /// Topic each publisher sends to; `{i}` becomes the publisher's index.
    #[arg(short = 't', long, default_value = "cars/{i}/location")]
    pub topic: String,
    /// Topic filter every subscriber subscribes to.
    #[arg(short = 'f', long, default_value = "cars/+/location")]
    pub filter: String,
    /// QoS of the publishes and of the subscriptions (0, 1 or 2).
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Messages per second per publisher; 0 sends as fast as the broker takes them.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    pub rate: f64,
    /// The measured window, in seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before the measured window, not counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Longest wait, once publishers stop, for messages still in flight.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Send opaque payloads of this many bytes (at least 24) instead of GeoJSON
    /// positions (~190 bytes).
    #[arg(long, value_name = "BYTES")]
    pub payload_size: Option<usize>,
    /// Unacknowledged QoS 1/2 publishes per publisher (capped by the broker's
    /// v5 Receive Maximum).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Most messages a publisher writes in one go.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: u16,
    /// Deliveries allowed in flight (sent, not yet received or known lost)
    /// before publishers wait for subscribers; 0 = unbounded. Without a bound,
    /// a max-rate run fills the kernel's socket buffers and measures their size.
    #[arg(long, default_value_t = 20_000)]
    pub max_backlog: u64,
    /// Publisher connections opened per second before the load starts (a
    /// fleet coming online); 0 opens them as fast as the broker accepts.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
}

/// One second of the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u32,
    pub published: u64,
    pub delivered: u64,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    /// Every PUBLISH written, warmup and window included.
    pub published: u64,
    /// QoS 1/2 publishes the broker acknowledged (PUBACK / PUBCOMP).
    pub acked: u64,
    /// Acknowledged with a failure reason code (v5).
    pub rejected: u64,
    /// PUBLISHes received by subscribers, duplicates included.
    pub delivered: u64,
    /// Deliveries the subscriptions called for: each publish times the
    /// subscribers whose filter matches its topic.
    pub expected: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Received payloads that this run did not send.
    pub foreign: u64,
}

#[derive(Debug, Serialize)]
pub struct BrokerUsage {
    #[serde(flatten)]
    pub usage: ProcessUsage,
    /// Messages delivered in the window per CPU-second the broker used in it.
    pub delivered_per_cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct PubSubReport {
    pub scenario: &'static str,
    pub broker: String,
    pub mqtt_version: String,
    pub qos: u8,
    pub publishers: u32,
    pub subscribers: u32,
    pub topic: String,
    /// How long opening every publisher took, and each one's TCP connect +
    /// CONNECT → CONNACK.
    pub publishers_connected_s: f64,
    pub connect_latency: LatencySummary,
    pub filter: String,
    /// Messages per second per publisher; null when sending at max rate.
    pub rate_per_publisher: Option<f64>,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    /// The measured window's actual length.
    pub duration_s: f64,
    /// Written during the window.
    pub published: u64,
    pub published_per_s: f64,
    /// Received during the window.
    pub delivered: u64,
    pub delivered_per_s: f64,
    pub totals: Totals,
    /// End-to-end latency of the messages sent during the window.
    pub latency: LatencySummary,
    pub series: Vec<Second>,
    pub errors: BTreeMap<&'static str, u64>,
    pub broker_process: Option<BrokerUsage>,
    pub generator_process: ProcessUsage,
}

/// What every task of a run shares. Counters are updated once per batch.
struct Shared {
    payload: Payload,
    qos: QoS,
    rate: f64,
    batch: usize,
    publishers: u32,
    keep_alive: Duration,
    start: Instant,
    published: AtomicU64,
    /// Published messages times the subscribers that should get them.
    expected: AtomicU64,
    delivered: AtomicU64,
    unique: AtomicU64,
    /// Sequence numbers subscribers saw skipped (lost, or late and not yet in).
    skipped: AtomicI64,
    /// Subscribers made progress: publishers held back by the backlog may go on.
    drained: Notify,
    max_backlog: u64,
    publishers_done: AtomicUsize,
    /// Latency is recorded for messages sent in [start, end).
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    stop_publishing: CancellationToken,
    stop_all: CancellationToken,
}

impl Shared {
    /// Deliveries sent and not yet accounted for (received or known lost).
    fn backlog(&self) -> u64 {
        let accounted = self.unique.load(Relaxed) as i64 + self.skipped.load(Relaxed);
        (self.expected.load(Relaxed) as i64 - accounted).max(0) as u64
    }

    /// Wait while the backlog is over its bound, but never longer than
    /// `BACKLOG_PATIENCE`: messages dropped at the tail of a stream are
    /// invisible until later ones arrive, so waiting for them would stall.
    async fn backlog_room(&self) {
        if self.max_backlog == 0 {
            return;
        }
        let give_up = tokio::time::Instant::now() + BACKLOG_PATIENCE;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.backlog() < self.max_backlog {
                return;
            }
            tokio::select! {
                _ = drained => {}
                _ = tokio::time::sleep_until(give_up) => return,
                _ = self.stop_publishing.cancelled() => return,
            }
        }
    }
}

/// Longest a publisher waits for the backlog to shrink before sending anyway.
const BACKLOG_PATIENCE: Duration = Duration::from_millis(50);

pub async fn run(args: PubSubArgs) -> anyhow::Result<()> {
    let report = measure(args.clone()).await?;
    print_report(&report, render(&report), args.target.json)
}

/// Run the scenario and return its report.
pub async fn measure(args: PubSubArgs) -> anyhow::Result<PubSubReport> {
    let target = args.target.clone();
    let payload = match args.payload_size {
        Some(size) => Payload::bytes(size).with_context(|| {
            format!("--payload-size must be at least {} bytes", super::payload::MIN_BYTES_SIZE)
        })?,
        None => Payload::geojson(),
    };
    if args.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    if args.filter.starts_with("$share/") {
        bail!("shared subscriptions are not supported: loss accounting needs every subscriber");
    }
    if !(args.connect_rate >= 0.0 && args.connect_rate.is_finite()) {
        bail!("--connect-rate must be a non-negative number of connections per second");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a non-negative number of messages per second");
    }
    let topics: Vec<String> =
        (0..args.publishers).map(|i| args.topic.replace("{i}", &i.to_string())).collect();
    if topics.iter().any(|t| t.contains(['+', '#'])) {
        bail!("--topic must not contain wildcards");
    }
    let qos = QoS::from_u8(args.qos).expect("clap checks the range");
    if let Some(pid) = target.broker_pid {
        super::procfs::check_pid(pid)?;
    }
    let prefix = client_id_prefix();

    // Subscribers first, so nothing published is missed.
    super::raise_open_files_limit(u64::from(args.publishers) + u64::from(args.subscribers) + 256);
    let (subscribers, _) = open_all(args.subscribers, SETUP_CONCURRENCY, 0.0, |j| {
        let mut target = target.clone();
        target.port = args.subscriber_port.unwrap_or(target.port);
        let filter = args.filter.clone();
        let id = format!("{prefix}-s{j}");
        async move {
            let mut conn = Connection::open(&target, &id).await?;
            conn.subscribe(&filter, qos).await?;
            Ok(conn)
        }
    })
    .await
    .context("cannot set up the subscribers")?;
    let connecting = Instant::now();
    let (publishers, connect_took) =
        open_all(args.publishers, SETUP_CONCURRENCY, args.connect_rate, |i| {
            let target = target.clone();
            let id = format!("{prefix}-p{i}");
            async move { Connection::open(&target, &id).await }
        })
        .await
        .context("cannot set up the publishers")?;
    let publishers_connected_in = connecting.elapsed().as_secs_f64();
    let weights: Vec<u64> = topics
        .iter()
        .map(|t| if filter_matches(&args.filter, t) { u64::from(args.subscribers) } else { 0 })
        .collect();

    let shared = Arc::new(Shared {
        payload,
        qos,
        rate: args.rate,
        batch: usize::from(args.batch),
        publishers: args.publishers,
        keep_alive: Duration::from_secs(u64::from(target.keep_alive)),
        start: Instant::now() + Duration::from_millis(10),
        published: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        unique: AtomicU64::new(0),
        skipped: AtomicI64::new(0),
        drained: Notify::new(),
        max_backlog: args.max_backlog,
        publishers_done: AtomicUsize::new(0),
        window_start_ns: AtomicU64::new(u64::MAX),
        window_end_ns: AtomicU64::new(u64::MAX),
        stop_publishing: CancellationToken::new(),
        stop_all: CancellationToken::new(),
    });

    let mut sub_tasks = JoinSet::new();
    for conn in subscribers {
        sub_tasks.spawn(subscribe_loop(shared.clone(), conn));
    }
    let mut pub_tasks = JoinSet::new();
    for (i, conn) in publishers.into_iter().enumerate() {
        let topic = topics[i].clone().into_bytes();
        let window = args.inflight.min(conn.receive_maximum.unwrap_or(u16::MAX)).max(1);
        pub_tasks.spawn(publish_loop(shared.clone(), i as u32, topic, weights[i], window, conn));
    }

    let window = run_phases(&shared, &args).await;

    // Drain: until everything expected arrived, nothing arrived for a second,
    // or the drain time ran out.
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let mut last = (shared.delivered.load(Relaxed), Instant::now());
    while Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let publishers_done = shared.publishers_done.load(Relaxed) == args.publishers as usize;
        let delivered = shared.delivered.load(Relaxed);
        if delivered != last.0 {
            last = (delivered, Instant::now());
        }
        let all_in = shared.unique.load(Relaxed) >= shared.expected.load(Relaxed);
        if publishers_done && (all_in || last.1.elapsed() > Duration::from_secs(1)) {
            break;
        }
    }
    shared.stop_all.cancel();

    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut published_by = vec![0u64; args.publishers as usize];
    let (mut acked, mut rejected) = (0, 0);
    while let Some(joined) = pub_tasks.join_next().await {
        let r = joined.context("a publisher task panicked")?;
        published_by[r.index as usize] = r.published;
        acked += r.acked;
        rejected += r.rejected;
        if let Some(kind) = r.error {
            *errors.entry(kind).or_default() += 1;
        }
    }
    let mut histogram = latency_histogram();
    let (mut delivered, mut duplicates, mut reordered, mut foreign, mut lost) = (0, 0, 0, 0, 0);
    while let Some(joined) = sub_tasks.join_next().await {
        let r = joined.context("a subscriber task panicked")?;
        histogram.add(&r.histogram).expect("histograms share bounds");
        delivered += r.delivered;
        foreign += r.foreign;
        for (p, tracker) in r.trackers.iter().enumerate() {
            duplicates += tracker.duplicates();
            reordered += tracker.reordered();
            if weights[p] > 0 {
                lost += tracker.missing(published_by[p]);
            }
        }
        if let Some(kind) = r.error {
            *errors.entry(kind).or_default() += 1;
        }
    }
    let published: u64 = published_by.iter().sum();
    let expected: u64 = published_by.iter().zip(&weights).map(|(p, w)| p * w).sum();

    let secs = window.duration_s.max(1e-9);
    Ok(PubSubReport {
        scenario: "pubsub",
        broker: format!("{}:{}", target.host, target.port),
        mqtt_version: target.version_label().to_owned(),
        qos: args.qos,
        publishers: args.publishers,
        subscribers: args.subscribers,
        topic: args.topic,
        publishers_connected_s: publishers_connected_in,
        connect_latency: LatencySummary::of(&connect_took),
        filter: args.filter,
        rate_per_publisher: (args.rate > 0.0).then_some(args.rate),
        payload_bytes: shared.payload.size(),
        warmup_s: args.warmup,
        duration_s: window.duration_s,
        published: window.published,
        published_per_s: window.published as f64 / secs,
        delivered: window.delivered,
        delivered_per_s: window.delivered as f64 / secs,
        totals: Totals {
            published,
            acked,
            rejected,
            delivered,
            expected,
            lost,
            loss_pct: if expected > 0 { 100.0 * lost as f64 / expected as f64 } else { 0.0 },
            duplicates,
            reordered,
            foreign,
        },
        latency: LatencySummary::of(&histogram),
        series: window.series,
        errors,
        broker_process: window.broker.map(|usage| BrokerUsage {
            delivered_per_cpu_s: usage.per_cpu_s(window.delivered),
            usage,
        }),
        generator_process: window.generator,
    })
}

/// What the controller saw of the measured window.
struct Window {
    duration_s: f64,
    published: u64,
    delivered: u64,
    series: Vec<Second>,
    broker: Option<ProcessUsage>,
    generator: ProcessUsage,
}

/// Warmup, then the measured window with a progress line each second; stop
/// the publishers at its end.
async fn run_phases(shared: &Shared, args: &PubSubArgs) -> Window {
    let counts = || (shared.published.load(Relaxed), shared.delivered.load(Relaxed));
    let start = shared.start;
    let mut prev = counts();
    let mut prev_at = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let mut tick = start + Duration::from_secs(1);
    while tick < start + warmup {
        tokio::time::sleep_until(tick.into()).await;
        let now = counts();
        let dt = prev_at.elapsed().as_secs_f64();
        progress(format_args!(
            "warmup {:>4.0}s  pub {:>9}/s  dlv {:>9}/s",
            (tick - start).as_secs_f64(),
            human_count((now.0 - prev.0) as f64 / dt),
            human_count((now.1 - prev.1) as f64 / dt),
        ));
        (prev, prev_at) = (now, Instant::now());
        tick += Duration::from_secs(1);
    }
    tokio::time::sleep_until((start + warmup).into()).await;

    let broker_probe = match args.target.broker_pid {
        Some(pid) => Some(Probe::start(pid).await),
        None => None,
    };
    let generator_probe = Probe::start(std::process::id()).await;
    let window_start = Instant::now();
    shared.window_start_ns.store(now_ns(), Relaxed);
    let first = counts();
    let (mut prev, mut prev_at) = (first, window_start);
    let duration = Duration::from_secs_f64(args.duration);
    let mut series = Vec::new();
    let mut t = 0u32;
    let end = window_start + duration;
    while prev_at < end {
        t += 1;
        let next = (window_start + Duration::from_secs(u64::from(t))).min(end);
        tokio::time::sleep_until(next.into()).await;
        let now = counts();
        let at = Instant::now();
        let dt = at.duration_since(prev_at).as_secs_f64().max(1e-9);
        let second = Second { t, published: now.0 - prev.0, delivered: now.1 - prev.1 };
        progress(format_args!(
            "run {:>7.0}s  pub {:>9}/s  dlv {:>9}/s  in flight {:>9}",
            at.duration_since(window_start).as_secs_f64(),
            human_count(second.published as f64 / dt),
            human_count(second.delivered as f64 / dt),
            human_count(shared.backlog() as f64),
        ));
        series.push(second);
        (prev, prev_at) = (now, at);
    }
    shared.window_end_ns.store(now_ns(), Relaxed);
    let last = counts();
    let duration_s = Instant::now().duration_since(window_start).as_secs_f64();
    shared.stop_publishing.cancel();
    let broker = match broker_probe {
        Some(p) => Some(p.finish().await),
        None => None,
    };
    Window {
        duration_s,
        published: last.0 - first.0,
        delivered: last.1 - first.1,
        series,
        broker,
        generator: generator_probe.finish().await,
    }
}

/// Open `count` connections, `concurrency` at a time, in index order,
/// starting them `rate` a second (0: as fast as `concurrency` allows); with
/// how long each took (TCP connect and CONNECT → CONNACK, plus whatever
/// `open` adds).
async fn open_all<F, Fut>(
    count: u32,
    concurrency: usize,
    rate: f64,
    open: F,
) -> Result<(Vec<Connection>, Histogram<u64>), ClientError>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Connection, ClientError>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for i in 0..count {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(f64::from(i) / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let fut = open(i);
        tasks.spawn(async move {
            let began = Instant::now();
            let result = fut.await;
            drop(permit);
            (i, began.elapsed(), result)
        });
    }
    let mut conns: Vec<Option<Connection>> = (0..count).map(|_| None).collect();
    let mut took = latency_histogram();
    while let Some(joined) = tasks.join_next().await {
        let (i, elapsed, result) = joined.expect("connection setup does not panic");
        conns[i as usize] = Some(result?);
        took.saturating_record(elapsed.as_nanos() as u64);
    }
    Ok((conns.into_iter().map(|c| c.expect("every index joined")).collect(), took))
}

/// What the ack reader tells the writer.
enum Ack {
    /// The flow of this packet id ended (PUBACK, PUBCOMP, or a failed PUBREC).
    Done { packet_id: u16, rejected: bool },
    /// PUBREC: the writer owes a PUBREL.
    Release(u16),
}

struct PublisherReport {
    index: u32,
    published: u64,
    acked: u64,
    rejected: u64,
    error: Option<&'static str>,
}

/// One publisher: writes PUBLISHes in batches, paced or as fast as the
/// broker reads them, keeping at most `window` QoS 1/2 flows open.
async fn publish_loop(
    shared: Arc<Shared>,
    index: u32,
    topic: Vec<u8>,
    weight: u64,
    window: u16,
    conn: Connection,
) -> PublisherReport {
    let Connection { stream, version, read_buf, .. } = conn;
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_acks(rd, read_buf, version, tx));
    let qos = shared.qos;
    let payload = &shared.payload;
    let mut report = PublisherReport { index, published: 0, acked: 0, rejected: 0, error: None };
    let mut flows = Flows::new(if qos == QoS::AtMostOnce { 0 } else { window });
    let mut out = Vec::with_capacity(shared.batch * (payload.size() + topic.len() + 16));
    let mut vehicle = Vehicle::new(u64::from(index) + 1);
    // Paced publishers are spread evenly over one message interval.
    let t0 = if shared.rate > 0.0 {
        shared.start
            + Duration::from_secs_f64(
                f64::from(index) / (f64::from(shared.publishers) * shared.rate),
            )
    } else {
        shared.start
    };
    let mut last_write = Instant::now();

    tokio::time::sleep_until(t0.into()).await;
    let error = 'run: loop {
        if shared.stop_publishing.is_cancelled() {
            break None;
        }
        let mut n = shared.batch;
        if shared.rate > 0.0 {
            let now = Instant::now();
            let due = ((now - t0).as_secs_f64() * shared.rate) as u64 + 1;
            let behind = due.saturating_sub(report.published);
            if behind == 0 {
                let next = t0 + Duration::from_secs_f64(report.published as f64 / shared.rate);
                let ping_at = last_write + shared.keep_alive / 2;
                let keep_alive = !shared.keep_alive.is_zero() && ping_at < next;
                let wake = if keep_alive { ping_at } else { next };
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if keep_alive {
                            out.clear();
                            wire::encode_pingreq(&mut out);
                            if wr.write_all(&out).await.is_err() {
                                break 'run Some("io");
                            }
                            last_write = Instant::now();
                        }
                    }
                    ack = rx.recv(), if qos != QoS::AtMostOnce => match ack {
                        Some(ack) => flows.on_ack(ack),
                        None => break 'run Some("closed"),
                    },
                    _ = shared.stop_publishing.cancelled() => break 'run None,
                }
                if flows.owes_releases()
                    && send_releases(&mut wr, &mut out, &mut flows.releases).await
                {
                    break 'run Some("io");
                }
                continue;
            }
            n = n.min(behind as usize);
        }
        shared.backlog_room().await;
        if shared.stop_publishing.is_cancelled() {
            break None;
        }
        if qos != QoS::AtMostOnce {
            while let Ok(ack) = rx.try_recv() {
                flows.on_ack(ack);
            }
            while flows.free.is_empty() {
                if flows.owes_releases()
                    && send_releases(&mut wr, &mut out, &mut flows.releases).await
                {
                    break 'run Some("io");
                }
                tokio::select! {
                    ack = rx.recv() => match ack {
                        Some(ack) => flows.on_ack(ack),
                        None => break 'run Some("closed"),
                    },
                    _ = shared.stop_publishing.cancelled() => break 'run None,
                }
            }
            n = n.min(flows.free.len());
        }
        out.clear();
        for packet_id in flows.releases.drain(..) {
            wire::encode_pubrel(&mut out, packet_id);
        }
        let sent_ns = now_ns();
        for _ in 0..n {
            let packet_id = flows.free.pop().unwrap_or(0);
            let stamp = Stamp { publisher: index, seq: report.published, sent_ns };
            wire::encode_publish_with(
                &mut out,
                version,
                qos,
                &topic,
                packet_id,
                payload.size(),
                |o| payload.write(o, stamp, &mut vehicle),
            );
            report.published += 1;
        }
        if wr.write_all(&out).await.is_err() {
            break 'run Some("io");
        }
        last_write = Instant::now();
        shared.published.fetch_add(n as u64, Relaxed);
        shared.expected.fetch_add(n as u64 * weight, Relaxed);
    };

    // Wait for the open flows to finish (or for the drain to end).
    if error.is_none() && qos != QoS::AtMostOnce {
        while flows.open() > 0 {
            if flows.owes_releases() && send_releases(&mut wr, &mut out, &mut flows.releases).await
            {
                break;
            }
            tokio::select! {
                ack = rx.recv() => match ack {
                    Some(ack) => flows.on_ack(ack),
                    None => break,
                },
                _ = shared.stop_all.cancelled() => break,
            }
        }
    }
    shared.publishers_done.fetch_add(1, Relaxed);
    // Stay connected until the drain ends: disconnecting earlier could
    // discard what the broker still queues for this client's messages.
    shared.stop_all.cancelled().await;
    out.clear();
    wire::encode_disconnect(&mut out);
    let _ = wr.write_all(&out).await;
    let _ = wr.shutdown().await;
    reader.abort();
    report.acked = flows.acked;
    report.rejected = flows.rejected;
    report.error = error;
    report
}

/// A publisher's QoS 1/2 flows: free packet ids and owed PUBRELs.
struct Flows {
    window: usize,
    free: Vec<u16>,
    releases: Vec<u16>,
    acked: u64,
    rejected: u64,
}

impl Flows {
    fn new(window: u16) -> Self {
        Flows {
            window: usize::from(window),
            free: (1..=window).rev().collect(),
            releases: Vec::new(),
            acked: 0,
            rejected: 0,
        }
    }

    fn on_ack(&mut self, ack: Ack) {
        match ack {
            Ack::Done { packet_id, rejected } => {
                self.free.push(packet_id);
                self.acked += 1;
                self.rejected += u64::from(rejected);
            }
            Ack::Release(packet_id) => self.releases.push(packet_id),
        }
    }

    fn owes_releases(&self) -> bool {
        !self.releases.is_empty()
    }

    /// Flows started and not finished.
    fn open(&self) -> usize {
        self.window - self.free.len()
    }
}

/// Write owed PUBRELs; true when the write failed.
async fn send_releases(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    releases: &mut Vec<u16>,
) -> bool {
    out.clear();
    for packet_id in releases.drain(..) {
        wire::encode_pubrel(out, packet_id);
    }
    wr.write_all(out).await.is_err()
}

/// A publisher's read side: turn acknowledgements into [`Ack`]s.
async fn read_acks(
    mut rd: OwnedReadHalf,
    mut buf: bytes::BytesMut,
    version: wire::Version,
    tx: mpsc::UnboundedSender<Ack>,
) -> Result<(), ClientError> {
    loop {
        let mut used = 0;
        while let Some((packet, n)) =
            wire::decode(&buf[used..], version).map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            used += n;
            let ack = match packet {
                Packet::PubAck { packet_id, code } => {
                    Ack::Done { packet_id, rejected: code >= 0x80 }
                }
                Packet::PubRec { packet_id, code } if code >= 0x80 => {
                    Ack::Done { packet_id, rejected: true }
                }
                Packet::PubRec { packet_id, .. } => Ack::Release(packet_id),
                Packet::PubComp { packet_id } => Ack::Done { packet_id, rejected: false },
                Packet::Disconnect { code } => {
                    return Err(ClientError::Protocol(format!("DISCONNECT {code:#04x}")));
                }
                _ => continue,
            };
            if tx.send(ack).is_err() {
                return Ok(());
            }
        }
        buf.advance(used);
        buf.reserve(READ_BUFFER / 4);
        if rd.read_buf(&mut buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

struct SubscriberReport {
    trackers: Vec<SeqTracker>,
    histogram: Histogram<u64>,
    delivered: u64,
    foreign: u64,
    error: Option<&'static str>,
}

/// One subscriber: read, account every PUBLISH, acknowledge in one write per read.
async fn subscribe_loop(shared: Arc<Shared>, conn: Connection) -> SubscriberReport {
    let Connection { mut stream, version, read_buf: mut buf, .. } = conn;
    let mut report = SubscriberReport {
        trackers: vec![SeqTracker::default(); shared.publishers as usize],
        histogram: latency_histogram(),
        delivered: 0,
        foreign: 0,
        error: None,
    };
    let mut out = Vec::with_capacity(4096);
    let ping_every =
        if shared.keep_alive.is_zero() { Duration::from_secs(3600) } else { shared.keep_alive / 2 };
    let mut ping = tokio::time::interval_at((Instant::now() + ping_every).into(), ping_every);
    loop {
        let received_ns = now_ns();
        let window_start = shared.window_start_ns.load(Relaxed);
        let window_end = shared.window_end_ns.load(Relaxed);
        let (mut delivered, mut unique, mut skipped) = (0u64, 0u64, 0i64);
        let mut used = 0;
        loop {
            let (packet, n) = match wire::decode(&buf[used..], version) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(_) => {
                    report.error = Some("protocol");
                    return report;
                }
            };
            used += n;
            match packet {
                Packet::Publish { qos, packet_id, payload, .. } => {
                    delivered += 1;
                    match shared.payload.parse(payload) {
                        Some(stamp) if (stamp.publisher as usize) < report.trackers.len() => {
                            let tracker = &mut report.trackers[stamp.publisher as usize];
                            let seen = tracker.record(stamp.seq);
                            unique += u64::from(seen.is_first());
                            skipped += seen.skipped_delta();
                            if stamp.sent_ns >= window_start && stamp.sent_ns < window_end {
                                let latency = super::stats::latency_ns(stamp.sent_ns, received_ns);
                                report.histogram.saturating_record(latency);
                            }
                        }
                        _ => report.foreign += 1,
                    }
                    match qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => wire::encode_puback(&mut out, packet_id),
                        QoS::ExactlyOnce => wire::encode_pubrec(&mut out, packet_id),
                    }
                }
                Packet::PubRel { packet_id } => wire::encode_pubcomp(&mut out, packet_id),
                Packet::Disconnect { .. } => {
                    report.error = Some("disconnected");
                    return report;
                }
                _ => {}
            }
        }
        buf.advance(used);
        if delivered > 0 {
            report.delivered += delivered;
            shared.delivered.fetch_add(delivered, Relaxed);
            shared.unique.fetch_add(unique, Relaxed);
            shared.skipped.fetch_add(skipped, Relaxed);
            shared.drained.notify_waiters();
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                report.error = Some("io");
                return report;
            }
            out.clear();
        }
        buf.reserve(READ_BUFFER / 4);
        tokio::select! {
            biased;
            _ = shared.stop_all.cancelled() => break,
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) => {
                    report.error = Some("closed");
                    return report;
                }
                Ok(_) => {}
                Err(_) => {
                    report.error = Some("io");
                    return report;
                }
            },
            _ = ping.tick() => wire::encode_pingreq(&mut out),
        }
    }
    out.clear();
    wire::encode_disconnect(&mut out);
    let _ = stream.write_all(&out).await;
    report
}

fn render(r: &PubSubReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let rate = match r.rate_per_publisher {
        // A fleet's devices each publish less than once a second.
        Some(rate) if rate < 10.0 => format!("{rate:.3} msgs/s each"),
        Some(rate) => format!("{} msgs/s each", human_count(rate)),
        None => "max rate".to_owned(),
    };
    let _ = writeln!(
        s,
        "pubsub → {} (MQTT {}): {} publishers → {} subscribers, QoS {}, {rate}, \
         {}-byte payloads, {:.1} s measured after {:.1} s warmup",
        r.broker,
        r.mqtt_version,
        r.publishers,
        r.subscribers,
        r.qos,
        r.payload_bytes,
        r.duration_s,
        r.warmup_s
    );
    let _ = writeln!(
        s,
        "  connected   {} publishers in {:.1} s; {}",
        r.publishers,
        r.publishers_connected_s,
        r.connect_latency.line()
    );
    let _ = writeln!(
        s,
        "  published   {:>12} msgs/s  ({} in the window)",
        human_count(r.published_per_s),
        human_count(r.published as f64)
    );
    let _ = writeln!(
        s,
        "  delivered   {:>12} msgs/s  ({} in the window)",
        human_count(r.delivered_per_s),
        human_count(r.delivered as f64)
    );
    let t = &r.totals;
    let _ = writeln!(
        s,
        "  loss        {} of {} expected deliveries ({:.3} %), {} duplicates, {} reordered",
        human_count(t.lost as f64),
        human_count(t.expected as f64),
        t.loss_pct,
        human_count(t.duplicates as f64),
        human_count(t.reordered as f64),
    );
    if r.qos > 0 {
        let _ = writeln!(
            s,
            "  acked       {} of {} published, {} rejected",
            human_count(t.acked as f64),
            human_count(t.published as f64),
            human_count(t.rejected as f64)
        );
    }
    let _ = writeln!(s, "  latency     {}", r.latency.line());
    if let Some(b) = &r.broker_process {
        let _ = writeln!(
            s,
            "  broker      {}",
            b.usage.summary(b.delivered_per_cpu_s, "msgs delivered")
        );
    }
    let _ = writeln!(
        s,
        "  generator   {:.2} CPU-s ({:.0} % of a core)",
        r.generator_process.cpu_s, r.generator_process.cpu_pct
    );
    if r.errors.is_empty() && t.foreign == 0 {
        let _ = writeln!(s, "  errors      none");
    } else {
        let _ = writeln!(s, "  errors      {:?}, {} foreign payloads", r.errors, t.foreign);
    }
    s
}
