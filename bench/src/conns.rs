//! `mapcast-bench conns`: open C idle MQTT connections at a connect rate,
//! hold them, and report connect latency, failures and the broker's memory
//! per connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::Connection;
use super::procfs::{self, Probe, ProcessUsage};
use super::stats::{LatencySummary, human_count, latency_histogram};
use super::{TargetArgs, client_id_prefix, print_report, progress};

#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub connections: u32,
    /// New connections per second; 0 opens them as fast as --concurrency allows.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Seconds to hold the connections once all attempts finished.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Seconds to wait after the last connect before reading the broker's memory.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
}

#[derive(Debug, Serialize)]
pub struct ConnsReport {
    pub scenario: &'static str,
    pub broker: String,
    pub mqtt_version: String,
    pub attempted: u32,
    pub connected: u64,
    pub failed: u64,
    /// Connections the broker closed while they were held.
    pub dropped: u64,
    /// From the first attempt to the last attempt's end.
    pub connect_s: f64,
    pub connects_per_s: f64,
    /// TCP connect + CONNECT → CONNACK.
    pub connect_latency: LatencySummary,
    pub errors: BTreeMap<&'static str, u64>,
    pub broker_process: Option<ProcessUsage>,
    /// (RSS with the connections open − RSS before) / connected.
    pub rss_kib_per_connection: Option<f64>,
}

pub async fn run(args: ConnsArgs) -> anyhow::Result<()> {
    let report = measure(args.clone()).await?;
    print_report(&report, render(&report), args.target.json)
}

/// How one connection attempt ended.
enum Attempt {
    Connected(u64),
    Failed(&'static str),
}

pub async fn measure(args: ConnsArgs) -> anyhow::Result<ConnsReport> {
    let target = Arc::new(args.target.clone());
    if let Some(pid) = target.broker_pid {
        procfs::check_pid(pid)?;
    }
    super::raise_open_files_limit(u64::from(args.connections) + 256);
    let probe = match target.broker_pid {
        Some(pid) => Some(Probe::start(pid).await),
        None => None,
    };
    let prefix = client_id_prefix();
    let release = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(Semaphore::new(args.concurrency as usize));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut holders = JoinSet::new();
    let start = Instant::now();

    let opener = {
        let (release, dropped, target) = (release.clone(), dropped.clone(), target.clone());
        let (count, rate) = (args.connections, args.connect_rate);
        tokio::spawn(async move {
            for k in 0..count {
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(f64::from(k) / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let permit = limit.clone().acquire_owned().await.expect("never closed");
                let id = format!("{prefix}-c{k}");
                let (tx, release, dropped, target) =
                    (tx.clone(), release.clone(), dropped.clone(), target.clone());
                holders.spawn(async move {
                    let began = Instant::now();
                    let opened = Connection::open(&target, &id).await;
                    drop(permit);
                    match opened {
                        Ok(conn) => {
                            let _ = tx.send(Attempt::Connected(began.elapsed().as_nanos() as u64));
                            hold(conn, target.keep_alive, release, dropped).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Attempt::Failed(e.kind()));
                        }
                    }
                });
            }
            holders
        })
    };

    let mut histogram = latency_histogram();
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut connected, mut failed) = (0u64, 0u64);
    let mut ticker =
        tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
    while connected + failed < u64::from(args.connections) {
        tokio::select! {
            attempt = rx.recv() => match attempt {
                Some(Attempt::Connected(ns)) => {
                    connected += 1;
                    histogram.saturating_record(ns);
                }
                Some(Attempt::Failed(kind)) => {
                    failed += 1;
                    *errors.entry(kind).or_default() += 1;
                }
                None => break,
            },
            _ = ticker.tick() => progress(format_args!(
                "connecting {:>4.0}s  connected {:>7}  failed {:>5}",
                start.elapsed().as_secs_f64(),
                human_count(connected as f64),
                human_count(failed as f64),
            )),
        }
    }
    let connect_s = start.elapsed().as_secs_f64();
    let mut holders = opener.await?;

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_open = match target.broker_pid {
        Some(pid) => procfs::rss_kib(&pid.to_string()).await,
        None => None,
    };
    let hold_end = Instant::now() + Duration::from_secs_f64(args.hold);
    while Instant::now() < hold_end {
        tokio::time::sleep_until(hold_end.min(Instant::now() + Duration::from_secs(1)).into())
            .await;
        progress(format_args!(
            "holding {:>7.0}s  open {:>9}  dropped {:>5}",
            (hold_end - Instant::now()).as_secs_f64(),
            human_count((connected - dropped.load(Relaxed)) as f64),
            human_count(dropped.load(Relaxed) as f64),
        ));
    }
    let mut broker_process = match &probe {
        Some(p) => Some(p.finish().await),
        None => None,
    };
    release.cancel();
    while holders.join_next().await.is_some() {}

    let rss_kib_per_connection = match (&mut broker_process, rss_open) {
        (Some(usage), Some(open)) if connected > 0 => {
            let before = usage.rss_kib_start.unwrap_or(open);
            usage.rss_kib_end = Some(open);
            Some((open as f64 - before as f64) / connected as f64)
        }
        _ => None,
    };
    Ok(ConnsReport {
        scenario: "conns",
        broker: format!("{}:{}", target.host, target.port),
        mqtt_version: target.version_label().to_owned(),
        attempted: args.connections,
        connected,
        failed,
        dropped: dropped.load(Relaxed),
        connect_s,
        connects_per_s: connected as f64 / connect_s.max(1e-9),
        connect_latency: LatencySummary::of(&histogram),
        errors,
        broker_process,
        rss_kib_per_connection,
    })
}

/// Keep one connection open and alive until `release`, then disconnect with
/// a reset so thousands of closes leave no TIME_WAIT behind.
async fn hold(
    conn: Connection,
    keep_alive_secs: u16,
    release: CancellationToken,
    dropped: Arc<AtomicU64>,
) {
    let mut stream = conn.stream;
    let every = if keep_alive_secs == 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(u64::from(keep_alive_secs)) / 2
    };
    let mut ping = tokio::time::interval_at((Instant::now() + every).into(), every);
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            _ = release.cancelled() => break,
            read = stream.read(&mut scratch) => {
                // PINGRESPs are all an idle client expects; EOF or an error means closed.
                if matches!(read, Ok(0) | Err(_)) {
                    dropped.fetch_add(1, Relaxed);
                    return;
                }
            }
            _ = ping.tick() => {
                if stream.write_all(&[0xC0, 0]).await.is_err() {
                    dropped.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
    }
    let _ = stream.write_all(&[0xE0, 0]).await;
    #[allow(deprecated, reason = "zero linger resets without blocking the thread on close")]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

fn render(r: &ConnsReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "conns → {} (MQTT {}): {} connections",
        r.broker,
        r.mqtt_version,
        human_count(f64::from(r.attempted))
    );
    let _ = writeln!(
        s,
        "  connected   {} in {:.2} s ({} /s), {} failed, {} dropped while held",
        human_count(r.connected as f64),
        r.connect_s,
        human_count(r.connects_per_s),
        human_count(r.failed as f64),
        human_count(r.dropped as f64)
    );
    let _ = writeln!(s, "  connect     {}", r.connect_latency.line());
    if let Some(b) = &r.broker_process {
        let _ = writeln!(
            s,
            "  broker      pid {}: RSS {} → {} KiB, {:.2} KiB per connection, {:.2} CPU-s",
            b.pid,
            b.rss_kib_start.map_or("?".into(), |k| human_count(k as f64)),
            b.rss_kib_end.map_or("?".into(), |k| human_count(k as f64)),
            r.rss_kib_per_connection.unwrap_or(f64::NAN),
            b.cpu_s
        );
    }
    if !r.errors.is_empty() {
        let _ = writeln!(s, "  errors      {:?}", r.errors);
    }
    s
}
