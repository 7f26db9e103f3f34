//! `mapcast-bench`: a load generator for any MQTT broker.
//!
//! A crate of its own, so the server never compiles or ships it; it knows
//! the broker only from the outside, through MQTT and HTTP on the wire.
//!
//! It speaks MQTT itself ([`wire`]) over tokio TCP sockets with `TCP_NODELAY`,
//! writes PUBLISHes in batches straight from a reused buffer and reads
//! deliveries in place, so on one machine it measures the broker rather than
//! itself. Publishers and subscribers use separate connections; every payload
//! carries its publisher, sequence number and send time on a clock shared by
//! the whole process ([`payload`]), which gives loss, duplicates and
//! end-to-end latency ([`stats`]). With `--broker-pid` it also reads the
//! broker's CPU time and memory from `/proc` ([`procfs`]).
//!
//! Scenarios: [`pubsub`] (throughput, loss, latency), [`conns`] (connection
//! storms and memory per idle connection), [`map`] (devices publishing
//! while phones poll the map over HTTP with `If-None-Match`) and [`page`]
//! (the live map page in headless Chromium: page weight and first render).

pub mod client;
pub mod conns;
pub mod http;
pub mod map;
pub mod page;
pub mod payload;
pub mod procfs;
pub mod pubsub;
pub mod reconnects;
pub mod stats;
pub mod wire;

use std::io::{IsTerminal, Write};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use self::conns::ConnsArgs;
use self::map::MapArgs;
use self::pubsub::PubSubArgs;
use self::wire::Version;

/// Load-test an MQTT broker (mapcast or any other) and report throughput,
/// loss, latency percentiles and the broker's CPU and memory.
#[derive(Debug, Parser)]
#[command(name = "mapcast-bench", version, propagate_version = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N publishers → M subscribers: throughput, loss, duplicates and
    /// end-to-end latency.
    Pubsub(PubSubArgs),
    /// C idle connections at a connect rate: connect latency, failures and
    /// broker memory per connection.
    Conns(ConnsArgs),
    /// K devices publishing positions while H HTTP clients poll the map
    /// with `If-None-Match`: request rate, 304 share, latency, server CPU.
    Map(MapArgs),
    /// One persistent session reconnecting N times without DISCONNECT:
    /// the broker's RSS over the run.
    Reconnects(reconnects::ReconnectsArgs),
    /// The live map page in headless Chromium: page weight and time to
    /// first render of K devices.
    Page(page::PageArgs),
}

/// Which broker to load and how to talk to it.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Broker host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker MQTT port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// MQTT protocol version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    pub mqtt_version: Version,
    /// User name for every connection.
    #[arg(long)]
    pub username: Option<String>,
    /// Password for every connection.
    #[arg(long)]
    pub password: Option<String>,
    /// Keep-alive in seconds sent in CONNECT; idle connections ping at half of it.
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// The broker's process id: report its CPU time (utime + stime) and RSS
    /// over the measured window, read from /proc.
    #[arg(long, visible_alias = "pid", value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Print one JSON object with every result as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Spread connections over this many loopback source addresses
    /// (127.0.0.1, 127.0.0.2, …): one address reaches one broker port from
    /// about 28,000 ephemeral ports only. Used when --host is 127.0.0.1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub source_addresses: u8,
}

impl TargetArgs {
    pub fn version_label(&self) -> &'static str {
        match self.mqtt_version {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// Run a scenario on its own multi-threaded runtime.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mapcast-bench")
        .build()?;
    runtime.block_on(async {
        match args.scenario {
            Scenario::Pubsub(args) => pubsub::run(args).await,
            Scenario::Conns(args) => conns::run(args).await,
            Scenario::Map(args) => map::run(args).await,
            Scenario::Reconnects(args) => reconnects::run(args).await,
            Scenario::Page(args) => page::run(args).await,
        }
    })
}

/// The human report on stdout, then (with `--json`) the JSON object as the last line.
fn print_report(report: &impl Serialize, human: String, json: bool) -> anyhow::Result<()> {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let mut out = std::io::stdout().lock();
    out.write_all(human.as_bytes())?;
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// One live progress line on stderr (redrawn in place on a terminal).
fn progress(line: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
}

/// A client id prefix unique to this run, so runs never take over each
/// other's sessions.
fn client_id_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("mcb{:x}{:x}", std::process::id(), nanos >> 12)
}

/// Raise the soft open-files limit towards `wanted` (within the hard limit),
/// so thousands of connections do not fail with EMFILE.
fn raise_open_files_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
