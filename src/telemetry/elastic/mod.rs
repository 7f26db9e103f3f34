//! Direct shipping to Elasticsearch: log events, crash reports and metrics
//! are bulk-`create`d into the data streams `logs-mapcast.app-{ns}`,
//! `logs-mapcast.crash-{ns}` and `metrics-mapcast.broker-{ns}`.
//!
//! Shipping never blocks or slows the broker:
//! - the tracing layer puts each document into a bounded in-memory queue
//!   with `try_send` (full: dropped and counted);
//! - the shipper runs on its own thread (`mapcast-telemetry`, its own tokio
//!   runtime) and sends batches; while Elasticsearch is down, slow or
//!   refusing, batches go to a bounded on-disk spool ([`spool`]) and are
//!   replayed in order when it answers again;
//! - every document has a deterministic `_id`, so a batch sent twice is
//!   written once (409 counts as written);
//! - per-item results follow the retry matrix in [`bulk`]: 429/5xx retried,
//!   400/404 dead-lettered to `{data_dir}/telemetry/dead-letter.ndjson`.

pub(crate) mod bulk;
mod shipper;
pub(crate) mod spool;
pub mod templates;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context as _;
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::Url;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::logstash::LogstashSink;
use super::metrics;
use super::names;
use crate::config::{ElasticsearchSettings, TelemetrySettings};

/// Which data stream (or plain index) a document belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    App,
    Crash,
    Metrics,
}

/// One document on its way: where it goes, its `_id` and its JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub stream: Stream,
    pub id: String,
    pub body: String,
}

/// The index (or data stream) name of each stream.
#[derive(Debug, Clone)]
pub struct Indices {
    pub app: String,
    pub crash: String,
    pub metrics: String,
}

impl Indices {
    pub fn new(namespace: &str, plain: bool) -> Self {
        if plain {
            Self {
                app: format!("mapcast-logs-app-{namespace}"),
                crash: format!("mapcast-logs-crash-{namespace}"),
                metrics: format!("mapcast-metrics-broker-{namespace}"),
            }
        } else {
            Self {
                app: format!("logs-{}-{namespace}", names::DATASET_APP),
                crash: format!("logs-{}-{namespace}", names::DATASET_CRASH),
                metrics: format!("metrics-{}-{namespace}", names::DATASET_BROKER),
            }
        }
    }

    pub fn of(&self, stream: Stream) -> &str {
        match stream {
            Stream::App => &self.app,
            Stream::Crash => &self.crash,
            Stream::Metrics => &self.metrics,
        }
    }
}

/// The producer side of the shipper's queue (and of the Logstash writer,
/// when one is configured): cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct DocSender {
    tx: Option<mpsc::Sender<Doc>>,
    logstash: Option<LogstashSink>,
    /// Unique per process; with `seq` it makes each `_id`.
    prefix: Arc<str>,
    seq: Arc<AtomicU64>,
}

impl DocSender {
    /// Queue a log line (an ECS document); dropped and counted when full.
    pub fn send_log(&self, line: &str) {
        self.send(Stream::App, self.next_id(), line.to_owned());
    }

    pub(crate) fn next_id(&self) -> String {
        format!("{}-{:x}", self.prefix, self.seq.fetch_add(1, Relaxed))
    }

    pub(crate) fn send(&self, stream: Stream, id: String, body: String) {
        if let Some(logstash) = &self.logstash {
            if stream == Stream::Crash {
                logstash.send_crash(&id, &body);
            } else {
                logstash.send(&body);
            }
        }
        let Some(tx) = &self.tx else { return };
        let m = metrics::global();
        match tx.try_send(Doc { stream, id, body }) {
            Ok(()) => {
                m.telemetry_queue_depth.fetch_add(1, Relaxed);
            }
            Err(_) => {
                m.telemetry_queue_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Where the shipper keeps its files under the data directory.
pub(crate) struct Paths {
    pub spool: PathBuf,
    pub dead_letter: PathBuf,
    pub crashes: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            spool: data_dir.join("telemetry").join("spool"),
            dead_letter: data_dir.join("telemetry").join("dead-letter.ndjson"),
            crashes: super::crash::crash_dir(data_dir),
        }
    }
}

/// The running shipper: stop it through [`ShipperHandle::stop`] (the
/// telemetry guard does, at exit) so queued documents are sent or spooled.
pub struct ShipperHandle {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long stopping may take before queued documents are left behind.
const STOP_WAIT: Duration = Duration::from_secs(10);

impl ShipperHandle {
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + STOP_WAIT;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                #[allow(clippy::disallowed_methods, reason = "process exit, no runtime left")]
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for ShipperHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// An Elasticsearch client for `settings` (URL required).
pub fn client(settings: &ElasticsearchSettings) -> anyhow::Result<Elasticsearch> {
    let url = settings.url.as_deref().context("telemetry.elasticsearch.url is not set")?;
    let mut url = Url::parse(url).context("invalid Elasticsearch URL")?;
    // Credentials written into the URL become Basic auth, so the URL that
    // error messages and logs may show carries none.
    let in_url = (!url.username().is_empty())
        .then(|| (url.username().to_owned(), url.password().unwrap_or_default().to_owned()));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(Duration::from_secs(settings.request_timeout_secs))
        .disable_proxy();
    if let Some(key) = &settings.api_key {
        builder = builder.auth(Credentials::EncodedApiKey(key.expose().to_owned()));
    } else if let Some(user) = &settings.username {
        let password = settings.password.as_ref().map(|p| p.expose()).unwrap_or_default();
        builder = builder.auth(Credentials::Basic(user.clone(), password.to_owned()));
    } else if let Some((user, password)) = in_url {
        builder = builder.auth(Credentials::Basic(user, password));
    }
    Ok(Elasticsearch::new(builder.build().context("cannot build the Elasticsearch client")?))
}

/// Start the Logstash writer when `telemetry.logstash_tcp` is set; it
/// writes metrics documents and delivers crash reports itself when no
/// Elasticsearch shipper does.
fn start_logstash(
    settings: &TelemetrySettings,
    data_dir: &Path,
) -> anyhow::Result<Option<LogstashSink>> {
    let Some(addr) = settings.logstash_tcp.clone() else { return Ok(None) };
    let crash_dir = settings.elasticsearch.url.is_none().then(|| Paths::new(data_dir).crashes);
    let metrics = settings.elasticsearch.url.is_none().then(|| {
        let every = Duration::from_secs(settings.metrics_interval_secs.max(1));
        let prefix: Arc<str> = format!("{:016x}", super::ecs::random_u64()).into();
        let ids = DocSender { tx: None, logstash: None, prefix, seq: Arc::new(AtomicU64::new(0)) };
        let document: Box<dyn Fn() -> String + Send> =
            Box::new(move || shipper::metrics_document(&ids).body);
        (every, document)
    });
    LogstashSink::start(addr, settings.queue_capacity, metrics, crash_dir)
        .map(Some)
        .context("cannot spawn the mapcast-logstash thread")
}

/// Start the shipper thread when `telemetry.elasticsearch.url` is set, and
/// the Logstash writer when `telemetry.logstash_tcp` is; `None` when neither.
pub(crate) fn start(
    settings: &TelemetrySettings,
    data_dir: &Path,
) -> anyhow::Result<Option<(DocSender, Option<ShipperHandle>)>> {
    let logstash = start_logstash(settings, data_dir)?;
    let prefix: Arc<str> = format!("{:016x}", super::ecs::random_u64()).into();
    let es = &settings.elasticsearch;
    if es.url.is_none() {
        return Ok(logstash.map(|logstash| {
            let sender = DocSender {
                tx: None,
                logstash: Some(logstash),
                prefix,
                seq: Arc::new(AtomicU64::new(0)),
            };
            (sender, None)
        }));
    }
    let client = client(es)?;
    let (tx, rx) = mpsc::channel(settings.queue_capacity);
    let sender = DocSender { tx: Some(tx), logstash, prefix, seq: Arc::new(AtomicU64::new(0)) };
    let config = shipper::Config {
        indices: Indices::new(&es.namespace, es.plain_indices),
        paths: Paths::new(data_dir),
        batch_max_docs: es.batch_max_docs,
        flush_interval: Duration::from_millis(es.flush_interval_ms),
        max_backoff: Duration::from_secs(es.max_backoff_secs.max(1)),
        metrics_interval: Duration::from_secs(settings.metrics_interval_secs),
        spool_max_bytes: settings.spool_max_bytes,
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let metrics_sender = sender.clone();
    let thread = std::thread::Builder::new()
        .name("mapcast-telemetry".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mapcast: cannot start the telemetry runtime: {e}");
                    return;
                }
            };
            runtime.block_on(shipper::run(client, config, rx, metrics_sender, token));
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .context("cannot spawn the mapcast-telemetry thread")?;
    Ok(Some((sender, Some(ShipperHandle { stop, thread: Some(thread) }))))
}
