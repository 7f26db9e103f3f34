//! `mapcast-bench reconnects`: one persistent session reconnecting N times,
//! each connection ended without DISCONNECT, as a car on a flaky cellular
//! link does. What the broker keeps per ended connection (timers, state)
//! shows up as RSS growth over the run; it should stay flat.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::procfs::{self, Probe, ProcessUsage};
use super::stats::human_count;
use super::wire::{self, Packet, Version};
use super::{TargetArgs, print_report, progress};

#[derive(Debug, Clone, Args)]
pub struct ReconnectsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections of the one session, one after the other.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub reconnects: u32,
    /// The session's client id.
    #[arg(long, default_value = "bench-reconnects")]
    pub client_id: String,
    /// Session expiry the MQTT 5 CONNECT asks for (3.1.1 sessions get the
    /// broker's `persistent_client_expiration`).
    #[arg(long, default_value_t = 86_400)]
    pub session_expiry: u32,
    /// Read the broker's RSS every this many reconnects.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_every: u32,
}

#[derive(Debug, Serialize)]
pub struct ReconnectsReport {
    pub scenario: &'static str,
    pub broker: String,
    pub mqtt_version: String,
    pub reconnects: u32,
    pub failed: u32,
    pub elapsed_s: f64,
    /// (reconnects so far, broker RSS in KiB).
    pub rss_kib: Vec<(u32, u64)>,
    pub broker_process: Option<ProcessUsage>,
}

pub async fn run(args: ReconnectsArgs) -> anyhow::Result<()> {
    let target = &args.target;
    if let Some(pid) = target.broker_pid {
        procfs::check_pid(pid)?;
    }
    let pid = target.broker_pid.map(|p| p.to_string());
    let rss = async || match &pid {
        Some(p) => procfs::rss_kib(p).await,
        None => None,
    };
    let probe = match target.broker_pid {
        Some(pid) => Some(Probe::start(pid).await),
        None => None,
    };
    let mut samples = Vec::new();
    if let Some(kib) = rss().await {
        samples.push((0, kib));
    }
    let started = Instant::now();
    let mut failed = 0;
    for n in 1..=args.reconnects {
        // Closed right after the CONNACK, without DISCONNECT.
        if connect(target, &args.client_id, args.session_expiry).await.is_none() {
            failed += 1;
        }
        if n % args.sample_every == 0 {
            if let Some(kib) = rss().await {
                samples.push((n, kib));
            }
            progress(format_args!("reconnects {n:>8}  failed {failed}"));
        }
    }
    let report = ReconnectsReport {
        scenario: "reconnects",
        broker: format!("{}:{}", target.host, target.port),
        mqtt_version: target.version_label().into(),
        reconnects: args.reconnects,
        failed,
        elapsed_s: started.elapsed().as_secs_f64(),
        rss_kib: samples,
        broker_process: match probe {
            Some(p) => Some(p.finish().await),
            None => None,
        },
    };
    let human = render(&report, target.mqtt_version);
    print_report(&report, human, target.json)
}

/// One connection of the session: CONNECT (clean session 0, keep-alive
/// 60 s) → successful CONNACK. `None` on any failure.
async fn connect(target: &TargetArgs, client_id: &str, expiry: u32) -> Option<()> {
    let v5 = target.mqtt_version == Version::V5;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, 0x00, 0, 60];
    if v5 {
        // Properties: Session Expiry Interval (0x11).
        body.extend([5, 0x11]);
        body.extend(expiry.to_be_bytes());
    }
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut out = vec![0x10];
    wire::put_varint(&mut out, body.len());
    out.extend(body);

    let handshake = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await.ok()?;
        stream.write_all(&out).await.ok()?;
        let mut buf = Vec::new();
        loop {
            if let Some((packet, _)) = wire::decode(&buf, target.mqtt_version).ok()? {
                return matches!(packet, Packet::ConnAck { code: 0, .. }).then_some(());
            }
            let mut chunk = [0u8; 256];
            match stream.read(&mut chunk).await.ok()? {
                0 => return None,
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), handshake).await.ok()?
}

fn render(r: &ReconnectsReport, version: Version) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "reconnects → {} (MQTT {}): one persistent session, {} connections ended without DISCONNECT in {:.1} s, {} failed",
        r.broker,
        match version {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        },
        human_count(f64::from(r.reconnects)),
        r.elapsed_s,
        r.failed
    );
    if !r.rss_kib.is_empty() {
        let series: Vec<String> = r
            .rss_kib
            .iter()
            .map(|(n, kib)| format!("{}: {}", human_count(f64::from(*n)), human_count(*kib as f64)))
            .collect();
        let _ = writeln!(s, "  broker RSS KiB after N reconnects  {}", series.join(", "));
    }
    s
}
