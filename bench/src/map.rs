//! `mapcast-bench map`: K devices publish positions over MQTT while H HTTP
//! clients poll the map with `If-None-Match`, as phones do. Measures the
//! request rate, how many answers were `304 Not Modified`, request latency
//! and the server's CPU per request.
//!
//! Phases as in `pubsub`: connect, `--warmup` seconds not counted, then the
//! measured window of `--duration` seconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::Connection;
use super::http::{HttpConnection, HttpTarget};
use super::payload::{Payload, Stamp, Vehicle, now_ns};
use super::procfs::{Probe, ProcessUsage};
use super::stats::{LatencySummary, human_count, latency_histogram};
use super::wire::{self, QoS};
use super::{TargetArgs, client_id_prefix, print_report, progress};

#[derive(Debug, Clone, Args)]
pub struct MapArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The HTTP API to poll (plain http://).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http_url: String,
    /// Bearer token sent with every map request; without one the requests
    /// are anonymous.
    #[arg(long, env = "MAPCAST_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Path and query polled.
    #[arg(long, default_value = "/api/v1/map")]
    pub path: String,
    /// Devices publishing positions (QoS 0), spread over --publishers connections.
    #[arg(short = 'k', long, default_value_t = 1000)]
    pub devices: u32,
    /// MQTT connections the devices publish through.
    #[arg(short = 'p', long, default_value_t = 50)]
    pub publishers: u32,
    /// Topic of each device; `{i}` becomes the device's index. The same ids
    /// every run, so repeated runs do not grow the map.
    #[arg(short = 't', long, default_value = "devices/bench-{i}/location")]
    pub topic: String,
    /// Seconds between two positions of one device.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// HTTP keep-alive connections, each polling as fast as it is answered.
    #[arg(short = 'c', long, default_value_t = 32)]
    pub pollers: u32,
    /// The measured window, in seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before the measured window, not counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MapSecond {
    pub t: u32,
    pub requests: u64,
    pub not_modified: u64,
    pub published: u64,
}

#[derive(Debug, Serialize)]
pub struct ServerUsage {
    #[serde(flatten)]
    pub usage: ProcessUsage,
    /// Requests answered in the window per CPU-second the server used.
    pub requests_per_cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct MapReport {
    pub scenario: &'static str,
    pub broker: String,
    pub http: String,
    pub path: String,
    pub devices: u32,
    pub publishers: u32,
    pub interval_s: f64,
    pub pollers: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Positions written during the window.
    pub published: u64,
    pub published_per_s: f64,
    /// Responses received during the window, whatever their status.
    pub requests: u64,
    pub requests_per_s: f64,
    pub not_modified: u64,
    pub not_modified_per_s: f64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Body bytes of the 200 answers, per second.
    pub body_bytes_per_s: f64,
    /// Map versions (ETags) seen at the start and the end of the window.
    pub map_version_first: Option<u64>,
    pub map_version_last: Option<u64>,
    /// Request latency (write → last byte read) in the window.
    pub latency: LatencySummary,
    pub series: Vec<MapSecond>,
    pub errors: BTreeMap<&'static str, u64>,
    pub server_process: Option<ServerUsage>,
    pub generator_process: ProcessUsage,
}

struct Shared {
    payload: Payload,
    start: Instant,
    /// True during the measured window: only then are requests recorded.
    measuring: AtomicBool,
    published: AtomicU64,
    requests: AtomicU64,
    not_modified: AtomicU64,
    latest_version: AtomicU64,
    stop: CancellationToken,
}

pub async fn run(args: MapArgs) -> anyhow::Result<()> {
    let report = measure(args.clone()).await?;
    print_report(&report, render(&report), args.target.json)
}

pub async fn measure(args: MapArgs) -> anyhow::Result<MapReport> {
    let http = HttpTarget::parse(&args.http_url).map_err(anyhow::Error::msg)?;
    if args.publishers == 0 || args.devices < args.publishers {
        bail!("--devices must be at least --publishers, and --publishers at least 1");
    }
    if args.pollers == 0 {
        bail!("--pollers must be at least 1");
    }
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!("--interval must be a positive number of seconds");
    }
    if let Some(pid) = args.target.broker_pid {
        super::procfs::check_pid(pid)?;
    }
    preflight(&http, &args).await?;

    let prefix = client_id_prefix();
    let mut publishers = Vec::with_capacity(args.publishers as usize);
    for j in 0..args.publishers {
        let conn = Connection::open(&args.target, &format!("{prefix}-d{j}"))
            .await
            .context("cannot connect the device publishers")?;
        publishers.push(conn);
    }
    let shared = Arc::new(Shared {
        payload: Payload::geojson(),
        start: Instant::now() + Duration::from_millis(10),
        measuring: AtomicBool::new(false),
        published: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        not_modified: AtomicU64::new(0),
        latest_version: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });

    let mut pub_tasks = JoinSet::new();
    for (j, conn) in publishers.into_iter().enumerate() {
        let topics: Vec<Vec<u8>> = (j as u32..args.devices)
            .step_by(args.publishers as usize)
            .map(|i| args.topic.replace("{i}", &i.to_string()).into_bytes())
            .collect();
        pub_tasks.spawn(publish_loop(shared.clone(), j as u32, topics, args.interval, conn));
    }
    let mut poll_tasks = JoinSet::new();
    for _ in 0..args.pollers {
        poll_tasks.spawn(poll_loop(shared.clone(), http.clone(), args.clone()));
    }

    let window = run_phases(&shared, &args).await;
    shared.stop.cancel();

    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    while let Some(joined) = pub_tasks.join_next().await {
        if let Some(kind) = joined.context("a publisher task panicked")? {
            *errors.entry(kind).or_default() += 1;
        }
    }
    let mut histogram = latency_histogram();
    let mut statuses = BTreeMap::new();
    let mut body_bytes = 0u64;
    while let Some(joined) = poll_tasks.join_next().await {
        let r = joined.context("a poller task panicked")?;
        histogram.add(&r.histogram).expect("histograms share bounds");
        for (status, n) in r.statuses {
            *statuses.entry(status).or_default() += n;
        }
        body_bytes += r.body_bytes;
        for (kind, n) in r.errors {
            *errors.entry(kind).or_default() += n;
        }
    }

    let secs = window.duration_s.max(1e-9);
    Ok(MapReport {
        scenario: "map",
        broker: format!("{}:{}", args.target.host, args.target.port),
        http: args.http_url.clone(),
        path: args.path.clone(),
        devices: args.devices,
        publishers: args.publishers,
        interval_s: args.interval,
        pollers: args.pollers,
        warmup_s: args.warmup,
        duration_s: window.duration_s,
        published: window.published,
        published_per_s: window.published as f64 / secs,
        requests: window.requests,
        requests_per_s: window.requests as f64 / secs,
        not_modified: window.not_modified,
        not_modified_per_s: window.not_modified as f64 / secs,
        statuses,
        body_bytes_per_s: body_bytes as f64 / secs,
        map_version_first: window.versions.0,
        map_version_last: window.versions.1,
        latency: LatencySummary::of(&histogram),
        series: window.series,
        errors,
        server_process: window.server.map(|usage| ServerUsage {
            requests_per_cpu_s: usage.per_cpu_s(window.requests),
            usage,
        }),
        generator_process: window.generator,
    })
}

/// One request before the load, so a wrong URL or a missing token is a
/// clear error rather than a report full of 401s.
async fn preflight(http: &HttpTarget, args: &MapArgs) -> anyhow::Result<()> {
    let mut conn = HttpConnection::open(http)
        .await
        .with_context(|| format!("cannot reach {}", args.http_url))?;
    let request = http.get_request(&args.path, args.token.as_deref(), None);
    // A server that just started answers 503 until its first map is built.
    let give_up = Instant::now() + Duration::from_secs(10);
    let res = loop {
        let res = conn
            .send(&request)
            .await
            .with_context(|| format!("GET {}{} failed", args.http_url, args.path))?;
        if res.status != 503 || Instant::now() >= give_up {
            break res;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match res.status {
        200 => Ok(()),
        401 | 403 => bail!(
            "GET {}{} answered {}: pass a token that may read the map (--token)",
            args.http_url,
            args.path,
            res.status
        ),
        status => bail!("GET {}{} answered {status}, not a map", args.http_url, args.path),
    }
}

struct Window {
    duration_s: f64,
    published: u64,
    requests: u64,
    not_modified: u64,
    versions: (Option<u64>, Option<u64>),
    series: Vec<MapSecond>,
    server: Option<ProcessUsage>,
    generator: ProcessUsage,
}

async fn run_phases(shared: &Shared, args: &MapArgs) -> Window {
    let counts = || {
        (
            shared.requests.load(Relaxed),
            shared.not_modified.load(Relaxed),
            shared.published.load(Relaxed),
        )
    };
    let version = || Some(shared.latest_version.load(Relaxed)).filter(|v| *v > 0);
    let warmup_end = shared.start + Duration::from_secs_f64(args.warmup);
    let mut tick = shared.start + Duration::from_secs(1);
    let mut prev = counts();
    while tick < warmup_end {
        tokio::time::sleep_until(tick.into()).await;
        let now = counts();
        progress(format_args!(
            "warmup {:>4.0}s  req {:>9}/s  304 {:>9}/s  pub {:>7}/s",
            (tick - shared.start).as_secs_f64(),
            human_count((now.0 - prev.0) as f64),
            human_count((now.1 - prev.1) as f64),
            human_count((now.2 - prev.2) as f64),
        ));
        prev = now;
        tick += Duration::from_secs(1);
    }
    tokio::time::sleep_until(warmup_end.into()).await;

    let server_probe = match args.target.broker_pid {
        Some(pid) => Some(Probe::start(pid).await),
        None => None,
    };
    let generator_probe = Probe::start(std::process::id()).await;
    shared.measuring.store(true, Relaxed);
    let window_start = Instant::now();
    let first = counts();
    let first_version = version();
    let (mut prev, mut prev_at) = (first, window_start);
    let end = window_start + Duration::from_secs_f64(args.duration);
    let mut series = Vec::new();
    let mut t = 0u32;
    while prev_at < end {
        t += 1;
        let next = (window_start + Duration::from_secs(u64::from(t))).min(end);
        tokio::time::sleep_until(next.into()).await;
        let now = counts();
        let at = Instant::now();
        let dt = at.duration_since(prev_at).as_secs_f64().max(1e-9);
        let second = MapSecond {
            t,
            requests: now.0 - prev.0,
            not_modified: now.1 - prev.1,
            published: now.2 - prev.2,
        };
        progress(format_args!(
            "run {:>7.0}s  req {:>9}/s  304 {:>9}/s  pub {:>7}/s  map v{}",
            at.duration_since(window_start).as_secs_f64(),
            human_count(second.requests as f64 / dt),
            human_count(second.not_modified as f64 / dt),
            human_count(second.published as f64 / dt),
            shared.latest_version.load(Relaxed),
        ));
        series.push(second);
        (prev, prev_at) = (now, at);
    }
    shared.measuring.store(false, Relaxed);
    let last = counts();
    let duration_s = window_start.elapsed().as_secs_f64();
    let server = match server_probe {
        Some(p) => Some(p.finish().await),
        None => None,
    };
    Window {
        duration_s,
        published: last.2 - first.2,
        requests: last.0 - first.0,
        not_modified: last.1 - first.1,
        versions: (first_version, version()),
        series,
        server,
        generator: generator_probe.finish().await,
    }
}

/// One MQTT connection publishing the positions of its devices in turn,
/// each device every `interval` seconds. Returns an error kind, if any.
async fn publish_loop(
    shared: Arc<Shared>,
    index: u32,
    topics: Vec<Vec<u8>>,
    interval: f64,
    conn: Connection,
) -> Option<&'static str> {
    let Connection { stream, version, .. } = conn;
    let (mut rd, mut wr) = stream.into_split();
    // Nothing is subscribed on these connections: read only to notice a close.
    let reader = tokio::spawn(async move {
        let mut sink = vec![0u8; 4096];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let rate = topics.len() as f64 / interval;
    let mut vehicles: Vec<Vehicle> =
        (0..topics.len()).map(|d| Vehicle::new(u64::from(index) << 20 | d as u64)).collect();
    let payload = &shared.payload;
    let mut out = Vec::with_capacity(16 * (payload.size() + 64));
    let mut sent = 0u64;
    let error = loop {
        let due = (shared.start.elapsed().as_secs_f64() * rate) as u64 + 1;
        if due <= sent {
            let next = shared.start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => continue,
                _ = shared.stop.cancelled() => break None,
            }
        }
        out.clear();
        let sent_ns = now_ns();
        let n = (due - sent).min(16);
        for _ in 0..n {
            let d = (sent % topics.len() as u64) as usize;
            let stamp = Stamp { publisher: index, seq: sent, sent_ns };
            wire::encode_publish_with(
                &mut out,
                version,
                QoS::AtMostOnce,
                &topics[d],
                0,
                payload.size(),
                |o| payload.write(o, stamp, &mut vehicles[d]),
            );
            sent += 1;
        }
        if wr.write_all(&out).await.is_err() {
            break Some("mqtt_io");
        }
        shared.published.fetch_add(n, Relaxed);
    };
    out.clear();
    wire::encode_disconnect(&mut out);
    let _ = wr.write_all(&out).await;
    reader.abort();
    error
}

struct PollerReport {
    histogram: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    body_bytes: u64,
    errors: BTreeMap<&'static str, u64>,
}

/// One HTTP connection asking for the map again as soon as it is answered,
/// with the last ETag it saw; reconnects after errors.
async fn poll_loop(shared: Arc<Shared>, http: HttpTarget, args: MapArgs) -> PollerReport {
    let mut report = PollerReport {
        histogram: latency_histogram(),
        statuses: BTreeMap::new(),
        body_bytes: 0,
        errors: BTreeMap::new(),
    };
    let token = args.token.as_deref();
    let mut etag: Option<String> = None;
    let mut request = http.get_request(&args.path, token, None);
    let mut conn: Option<HttpConnection> = None;
    while !shared.stop.is_cancelled() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match HttpConnection::open(&http).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    *report.errors.entry(e.kind()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let started = now_ns();
        let result = tokio::select! {
            r = c.send(&request) => r,
            _ = shared.stop.cancelled() => break,
        };
        let measuring = shared.measuring.load(Relaxed);
        match result {
            Ok(res) => {
                if measuring {
                    let _ = report.histogram.record(now_ns().saturating_sub(started).max(1));
                    *report.statuses.entry(res.status).or_default() += 1;
                    shared.requests.fetch_add(1, Relaxed);
                    if res.status == 304 {
                        shared.not_modified.fetch_add(1, Relaxed);
                    } else {
                        report.body_bytes += res.body_bytes as u64;
                    }
                }
                if res.status == 200 && res.etag.is_some() && res.etag != etag {
                    etag = res.etag;
                    let tag = etag.as_deref().expect("just set");
                    if let Ok(v) = tag.trim_matches('"').parse::<u64>() {
                        shared.latest_version.fetch_max(v, Relaxed);
                    }
                    request = http.get_request(&args.path, token, Some(tag));
                }
                if res.close {
                    conn = None;
                }
            }
            Err(e) => {
                if measuring {
                    *report.errors.entry(e.kind()).or_default() += 1;
                }
                conn = None;
            }
        }
    }
    report
}

fn render(r: &MapReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "map → {} (MQTT) + {}{}: {} devices every {} s over {} connections, {} pollers, \
         {:.1} s measured after {:.1} s warmup",
        r.broker,
        r.http,
        r.path,
        r.devices,
        r.interval_s,
        r.publishers,
        r.pollers,
        r.duration_s,
        r.warmup_s
    );
    let _ = writeln!(
        s,
        "  requests    {:>12} req/s  ({} in the window; statuses {:?})",
        human_count(r.requests_per_s),
        human_count(r.requests as f64),
        r.statuses
    );
    let _ = writeln!(
        s,
        "  304         {:>12} req/s  ({:.1} % of answers), 200 bodies {}/s",
        human_count(r.not_modified_per_s),
        if r.requests > 0 { 100.0 * r.not_modified as f64 / r.requests as f64 } else { 0.0 },
        human_bytes(r.body_bytes_per_s)
    );
    let _ = writeln!(
        s,
        "  positions   {:>12} msgs/s  (map version {} → {})",
        human_count(r.published_per_s),
        r.map_version_first.map_or("?".into(), |v| v.to_string()),
        r.map_version_last.map_or("?".into(), |v| v.to_string()),
    );
    let _ = writeln!(s, "  latency     {}", r.latency.line());
    if let Some(b) = &r.server_process {
        let _ = writeln!(s, "  server      {}", b.usage.summary(b.requests_per_cpu_s, "requests"));
    }
    let _ = writeln!(
        s,
        "  generator   {:.2} CPU-s ({:.0} % of a core)",
        r.generator_process.cpu_s, r.generator_process.cpu_pct
    );
    if r.errors.is_empty() {
        let _ = writeln!(s, "  errors      none");
    } else {
        let _ = writeln!(s, "  errors      {:?}", r.errors);
    }
    s
}

fn human_bytes(b: f64) -> String {
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}
