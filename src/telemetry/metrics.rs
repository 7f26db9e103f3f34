//! Process metrics: lock-free counters, gauges and fixed-bucket histograms,
//! rendered as Prometheus text at `GET /metrics` and shipped as one document
//! per interval to `metrics-mapcast.broker-*`.
//!
//! The broker's own counters live in [`Stats`] (one per broker); this module
//! holds what belongs to the process: database batches, HTTP latency per
//! route, the telemetry queue and spool, crashes. Names come from
//! [`names::metrics`]: each pairs the Prometheus name with the document field.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::names::metrics as m;
use crate::broker::Stats;

/// Seconds: 1 ms .. 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Operations per database batch.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 4096.0];

/// A histogram with fixed upper bounds; `observe` is a few relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the `+Inf` bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// Sum of observations in millionths, to keep it an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Relaxed) as f64 / 1e6
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum());
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }

    /// `{count, sum, histogram: {values, counts}}`: the last is an
    /// Elasticsearch `histogram` field (bucket upper bounds, `+Inf` as twice
    /// the last bound), so Kibana can take percentiles.
    fn document(&self) -> Value {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let last = self.bounds.last().copied().unwrap_or(1.0);
        let values: Vec<f64> = self.bounds.iter().copied().chain([last * 2.0]).collect();
        let (values, counts): (Vec<f64>, Vec<u64>) =
            values.into_iter().zip(counts).filter(|(_, c)| *c > 0).unzip();
        json!({
            "count": self.count(),
            "sum": self.sum(),
            "histogram": { "values": values, "counts": counts },
        })
    }
}

/// The process-wide metrics. Reach them with [`global`].
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    pub db_batch_ops: Histogram,
    pub db_batch_seconds: Histogram,
    /// Per matched route pattern; written once per new route, read per request.
    http: RwLock<BTreeMap<String, Arc<Histogram>>>,
    pub telemetry_queue_depth: AtomicU64,
    pub telemetry_queue_dropped: AtomicU64,
    pub telemetry_shipped: AtomicU64,
    pub telemetry_retried: AtomicU64,
    pub telemetry_dead_lettered: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_documents: AtomicU64,
    pub spool_dropped: AtomicU64,
    pub crashes: AtomicU64,
    /// Publishes not passed to other instances (the Redis queue was full),
    /// and stream entries from them that could not be read.
    pub cluster_dropped: AtomicU64,
    pub cluster_malformed: AtomicU64,
    /// Sessions taken over from another instance, and connects refused
    /// because a later one claimed their client id.
    pub cluster_takeovers: AtomicU64,
    pub cluster_superseded: AtomicU64,
    pub cluster_adopted: AtomicU64,
    pub cluster_dead_wills: AtomicU64,
    /// Publishes passed on for shared groups whose chosen instance had no
    /// member left, and group deliveries lost for want of any member.
    pub cluster_shared_passed_on: AtomicU64,
    pub cluster_shared_lost: AtomicU64,
    /// Live instances and their connected clients, as last read from Redis.
    pub cluster_instances: AtomicU64,
    pub cluster_clients_connected: AtomicU64,
    /// Other instances' publishes a dead instance missed, queued here for
    /// its taken-over sessions; and takeovers for which some could not be
    /// read (trimmed from the stream, or no position kept).
    pub cluster_replayed: AtomicU64,
    pub cluster_replay_gaps: AtomicU64,
    /// Kept publishes of instances that did not come back, passed on here.
    pub cluster_orphans_passed_on: AtomicU64,
    /// Store transactions whose COMMIT went unanswered (timed out, or the
    /// connection broke) and were looked up; those found committed.
    pub db_commits_unanswered: AtomicU64,
    pub db_commits_found_committed: AtomicU64,
    /// Map snapshots published, and the figures of the latest.
    pub updater_builds: AtomicU64,
    pub updater_build_failures: AtomicU64,
    pub updater_build_ms: AtomicU64,
    pub updater_devices: AtomicU64,
    pub updater_raw_bytes: AtomicU64,
    pub updater_gzip_bytes: AtomicU64,
    /// Sign-ins with a wrong secret, lockouts started, attempts refused
    /// during a lockout (see `identities::lockout`).
    pub auth_failures: AtomicU64,
    pub auth_lockouts: AtomicU64,
    pub auth_locked_refusals: AtomicU64,
    /// Password checks refused "busy" by the hashing pool; sign-ups and
    /// sign-ins refused by the per-address rate; lockouts in force (raised
    /// as one starts, recounted without the expired ones at each `/metrics`
    /// scrape and each lift, by `identities::lockout`).
    pub auth_hashing_busy: AtomicU64,
    pub auth_throttled: AtomicU64,
    pub auth_lockouts_active: AtomicU64,
    /// SSE streams open, and refused past a per-user or per-address cap.
    pub sse_streams: AtomicU64,
    pub sse_refused: AtomicU64,
    /// Requests actix could not parse (see `telemetry::quiet`).
    pub http_malformed_requests: AtomicU64,
    /// Phone-app reports refused, per [`m::PHONE_PROTOCOLS`] entry.
    pub phone_reports_refused: [AtomicU64; 2],
    /// OsmAnd reports without a GPS fix, accepted and not used.
    pub phone_reports_without_fix: AtomicU64,
    /// Connections closed by the PROXY protocol step, per
    /// [`m::PROXY_REFUSE_REASONS`] entry.
    pub proxy_refused: [AtomicU64; 4],
    /// The broker whose [`Stats`] the shipped document reports.
    broker: Mutex<Option<Arc<Stats>>>,
    /// The per-flag-variant rows of the shipped document.
    flag_rows: Mutex<Option<FlagRows>>,
}

/// Reads the per-flag-variant counters (`Flags::document_rows`).
#[derive(Clone)]
pub struct FlagRows(pub Arc<dyn Fn() -> Vec<Value> + Send + Sync>);

impl std::fmt::Debug for FlagRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlagRows")
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    started: Instant::now(),
    db_batch_ops: Histogram::new(BATCH_BUCKETS),
    db_batch_seconds: Histogram::new(LATENCY_BUCKETS),
    http: RwLock::new(BTreeMap::new()),
    telemetry_queue_depth: AtomicU64::new(0),
    telemetry_queue_dropped: AtomicU64::new(0),
    telemetry_shipped: AtomicU64::new(0),
    telemetry_retried: AtomicU64::new(0),
    telemetry_dead_lettered: AtomicU64::new(0),
    spool_bytes: AtomicU64::new(0),
    spool_documents: AtomicU64::new(0),
    spool_dropped: AtomicU64::new(0),
    crashes: AtomicU64::new(0),
    cluster_dropped: AtomicU64::new(0),
    cluster_malformed: AtomicU64::new(0),
    cluster_takeovers: AtomicU64::new(0),
    cluster_superseded: AtomicU64::new(0),
    cluster_adopted: AtomicU64::new(0),
    cluster_dead_wills: AtomicU64::new(0),
    cluster_shared_passed_on: AtomicU64::new(0),
    cluster_shared_lost: AtomicU64::new(0),
    cluster_instances: AtomicU64::new(0),
    cluster_clients_connected: AtomicU64::new(0),
    cluster_replayed: AtomicU64::new(0),
    cluster_replay_gaps: AtomicU64::new(0),
    cluster_orphans_passed_on: AtomicU64::new(0),
    db_commits_unanswered: AtomicU64::new(0),
    db_commits_found_committed: AtomicU64::new(0),
    updater_builds: AtomicU64::new(0),
    updater_build_failures: AtomicU64::new(0),
    updater_build_ms: AtomicU64::new(0),
    updater_devices: AtomicU64::new(0),
    updater_raw_bytes: AtomicU64::new(0),
    updater_gzip_bytes: AtomicU64::new(0),
    auth_failures: AtomicU64::new(0),
    auth_lockouts: AtomicU64::new(0),
    auth_locked_refusals: AtomicU64::new(0),
    auth_hashing_busy: AtomicU64::new(0),
    auth_throttled: AtomicU64::new(0),
    auth_lockouts_active: AtomicU64::new(0),
    sse_streams: AtomicU64::new(0),
    sse_refused: AtomicU64::new(0),
    http_malformed_requests: AtomicU64::new(0),
    phone_reports_refused: [AtomicU64::new(0), AtomicU64::new(0)],
    phone_reports_without_fix: AtomicU64::new(0),
    proxy_refused: Default::default(),
    broker: Mutex::new(None),
    flag_rows: Mutex::new(None),
});

pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Label for requests that matched no route (keeps the label set bounded).
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl Metrics {
    /// One HTTP request on `route` (the matched pattern) took `seconds`.
    pub fn observe_http(&self, route: &str, seconds: f64) {
        let known = self.http.read().unwrap_or_else(|e| e.into_inner()).get(route).cloned();
        let histogram = match known {
            Some(h) => h,
            None => self
                .http
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(route.to_owned())
                .or_insert_with(|| Arc::new(Histogram::new(LATENCY_BUCKETS)))
                .clone(),
        };
        histogram.observe(seconds);
    }

    /// One database batch of `ops` operations committed (or failed) in `seconds`.
    pub fn observe_db_batch(&self, ops: usize, seconds: f64) {
        self.db_batch_ops.observe(ops as f64);
        self.db_batch_seconds.observe(seconds);
    }

    /// The broker the shipped metrics document reports on.
    pub fn set_broker_stats(&self, stats: Arc<Stats>) {
        *self.broker.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Where the shipped document reads the feature-flag counters.
    pub fn set_flag_rows(&self, rows: FlagRows) {
        *self.flag_rows.lock().unwrap_or_else(|e| e.into_inner()) = Some(rows);
    }

    /// The per-flag-variant rows, once the flags are registered.
    pub(crate) fn flag_rows(&self) -> Option<Vec<Value>> {
        let rows = self.flag_rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        rows.map(|r| (r.0)())
    }

    fn broker_stats(&self) -> Option<Arc<Stats>> {
        self.broker.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn scalars<'a>(&self, stats: Option<&'a Stats>) -> Vec<Scalar<'a>> {
        let g = |v: &AtomicU64| v.load(Relaxed);
        let mut out = Vec::new();
        if let Some(s) = stats {
            out.extend([
                Scalar::gauge(
                    m::CLIENTS_CONNECTED,
                    "Connected MQTT clients.",
                    g(&s.clients_connected),
                ),
                Scalar::counter(
                    m::CLIENTS_TOTAL,
                    "MQTT connections accepted.",
                    g(&s.clients_total),
                ),
                Scalar::counter(
                    m::MESSAGES_RECEIVED,
                    "PUBLISH packets received.",
                    g(&s.messages_received),
                ),
                Scalar::counter(m::MESSAGES_SENT, "PUBLISH packets sent.", g(&s.messages_sent)),
                Scalar::counter(m::BYTES_RECEIVED, "Payload bytes received.", g(&s.bytes_received)),
                Scalar::counter(m::BYTES_SENT, "Payload bytes sent.", g(&s.bytes_sent)),
                Scalar::gauge(
                    m::INFLIGHT_OUT,
                    "QoS 1/2 deliveries sent and not yet acknowledged.",
                    g(&s.inflight_out),
                ),
                Scalar::gauge(m::SUBSCRIPTIONS, "Active subscriptions.", g(&s.subscriptions)),
                Scalar::gauge(m::RETAINED, "Retained messages.", g(&s.retained_count)),
                Scalar::counter(
                    m::INVALID_PAYLOADS,
                    "Publishes refused for an invalid payload (e.g. a bad location).",
                    g(&s.invalid_payloads),
                ),
                Scalar::counter(
                    m::PROTOCOL_ERRORS,
                    "MQTT connections closed for a protocol error.",
                    g(&s.protocol_errors),
                ),
            ]);
            let drops = [
                g(&s.publish_dropped_qos0),
                g(&s.publish_dropped_qos1),
                g(&s.messages_expired),
                g(&s.rejected_publishes),
            ];
            for (reason, value) in m::DROP_REASONS.iter().zip(drops) {
                out.push(Scalar {
                    kind: "counter",
                    name: m::DROPPED,
                    help: "Messages dropped or refused, by reason.",
                    label: Some(("reason", reason)),
                    value,
                });
            }
            let (quota, rate) = (g(&s.refused_max_connections), g(&s.refused_connect_rate));
            let owner = g(&s.refused_session_owner);
            let other = g(&s.rejected_connects).saturating_sub(quota + rate + owner);
            let rejected = [quota, rate, owner, other];
            for (reason, value) in m::CONNECTION_REJECT_REASONS.iter().zip(rejected) {
                out.push(Scalar {
                    kind: "counter",
                    name: m::CONNECTIONS_REJECTED,
                    help: "MQTT connections refused, by reason.",
                    label: Some(("reason", reason)),
                    value,
                });
            }
        }
        out.extend([
            Scalar::gauge(
                m::TELEMETRY_QUEUE_DEPTH,
                "Telemetry documents waiting in memory.",
                g(&self.telemetry_queue_depth),
            ),
            Scalar::counter(
                m::TELEMETRY_QUEUE_DROPPED,
                "Telemetry documents dropped because the queue was full.",
                g(&self.telemetry_queue_dropped),
            ),
            Scalar::counter(
                m::TELEMETRY_SHIPPED,
                "Documents written to Elasticsearch.",
                g(&self.telemetry_shipped),
            ),
            Scalar::counter(
                m::TELEMETRY_RETRIED,
                "Documents sent again after a 429 or 5xx.",
                g(&self.telemetry_retried),
            ),
            Scalar::counter(
                m::TELEMETRY_DEAD_LETTERED,
                "Documents Elasticsearch refused (400/404), kept in the dead-letter file.",
                g(&self.telemetry_dead_lettered),
            ),
            Scalar::gauge(m::SPOOL_BYTES, "Bytes in the on-disk spool.", g(&self.spool_bytes)),
            Scalar::gauge(
                m::SPOOL_DOCUMENTS,
                "Documents in the on-disk spool.",
                g(&self.spool_documents),
            ),
            Scalar::counter(
                m::SPOOL_DROPPED,
                "Documents dropped because the spool was full.",
                g(&self.spool_dropped),
            ),
            Scalar::counter(m::CRASHES, "Panics caught by the crash reporter.", g(&self.crashes)),
            Scalar::counter(
                m::CLUSTER_DROPPED,
                "Publishes not passed to the other instances: the Redis queue was full.",
                g(&self.cluster_dropped),
            ),
            Scalar::counter(
                m::CLUSTER_MALFORMED,
                "Entries of the Redis stream skipped as unreadable.",
                g(&self.cluster_malformed),
            ),
            Scalar::counter(
                m::CLUSTER_TAKEOVERS,
                "Sessions taken over from another instance by a CONNECT here.",
                g(&self.cluster_takeovers),
            ),
            Scalar::counter(
                m::CLUSTER_SUPERSEDED,
                "CONNECTs refused because a later one claimed their client id.",
                g(&self.cluster_superseded),
            ),
            Scalar::counter(
                m::CLUSTER_ADOPTED,
                "Sessions of dead instances held here, offline, until their clients return.",
                g(&self.cluster_adopted),
            ),
            Scalar::counter(
                m::CLUSTER_DEAD_WILLS,
                "Wills of dead instances' clients published here.",
                g(&self.cluster_dead_wills),
            ),
            Scalar::counter(
                m::CLUSTER_SHARED_PASSED_ON,
                "Publishes passed on to another instance: the one chosen for a shared group had no member left.",
                g(&self.cluster_shared_passed_on),
            ),
            Scalar::counter(
                m::CLUSTER_SHARED_LOST,
                "Shared-group deliveries dropped: no instance had a member left (or QoS 0).",
                g(&self.cluster_shared_lost),
            ),
            Scalar::gauge(
                m::CLUSTER_INSTANCES,
                "Live instances, as last read from Redis.",
                g(&self.cluster_instances),
            ),
            Scalar::gauge(
                m::CLUSTER_CLIENTS_CONNECTED,
                "Clients connected to all live instances, as last read from Redis.",
                g(&self.cluster_clients_connected),
            ),
            Scalar::counter(
                m::CLUSTER_REPLAYED,
                "Publishes a dead instance missed, queued here for its taken-over sessions.",
                g(&self.cluster_replayed),
            ),
            Scalar::counter(
                m::CLUSTER_REPLAY_GAPS,
                "Takeovers of a dead instance's sessions for which some missed publishes could not be read.",
                g(&self.cluster_replay_gaps),
            ),
            Scalar::counter(
                m::CLUSTER_ORPHANS_PASSED_ON,
                "Publishes acknowledged by an instance that did not come back, passed on here to the others.",
                g(&self.cluster_orphans_passed_on),
            ),
            Scalar::counter(
                m::DB_COMMITS_UNANSWERED,
                "Store transactions whose COMMIT went unanswered (time limit, broken connection), looked up in the database.",
                g(&self.db_commits_unanswered),
            ),
            Scalar::counter(
                m::DB_COMMITS_FOUND_COMMITTED,
                "Unanswered COMMITs found committed: their writers were told so instead of a failure.",
                g(&self.db_commits_found_committed),
            ),
            Scalar::counter(
                m::UPDATER_BUILDS,
                "Map snapshots built and published.",
                g(&self.updater_builds),
            ),
            Scalar::counter(
                m::UPDATER_BUILD_FAILURES,
                "Map builds that failed (not recorded, so not published).",
                g(&self.updater_build_failures),
            ),
            Scalar::gauge(
                m::UPDATER_BUILD_MS,
                "Build time of the latest map snapshot (table update, snapshot, gzip), ms.",
                g(&self.updater_build_ms),
            ),
            Scalar::gauge(
                m::UPDATER_DEVICES,
                "Devices on the latest map snapshot.",
                g(&self.updater_devices),
            ),
            Scalar::gauge(
                m::UPDATER_RAW_BYTES,
                "Size of the latest map snapshot (GeoJSON), bytes.",
                g(&self.updater_raw_bytes),
            ),
            Scalar::gauge(
                m::UPDATER_GZIP_BYTES,
                "Size of the latest map snapshot gzipped, bytes.",
                g(&self.updater_gzip_bytes),
            ),
            Scalar::counter(
                m::AUTH_FAILURES,
                "Sign-ins (REST or MQTT) with a wrong secret.",
                g(&self.auth_failures),
            ),
            Scalar::counter(
                m::AUTH_LOCKOUTS,
                "Sign-in lockouts started (identity or address).",
                g(&self.auth_lockouts),
            ),
            Scalar::counter(
                m::AUTH_LOCKED_REFUSALS,
                "Sign-ins refused unchecked during a lockout.",
                g(&self.auth_locked_refusals),
            ),
            Scalar::counter(
                m::AUTH_HASHING_BUSY,
                "Password checks refused busy: the hashing pool's queue was full or too slow.",
                g(&self.auth_hashing_busy),
            ),
            Scalar::counter(
                m::AUTH_THROTTLED,
                "Sign-ups and sign-ins refused by the per-address rate, before hashing.",
                g(&self.auth_throttled),
            ),
            Scalar::gauge(
                m::AUTH_LOCKOUTS_ACTIVE,
                "Sign-in lockouts in force (per address, and per identity from one address).",
                g(&self.auth_lockouts_active),
            ),
            Scalar::gauge(m::SSE_STREAMS, "Server-Sent Events streams open.", g(&self.sse_streams)),
            Scalar::counter(
                m::SSE_REFUSED,
                "Server-Sent Events streams refused past a per-user or per-address cap.",
                g(&self.sse_refused),
            ),
            Scalar::counter(
                m::HTTP_MALFORMED,
                "HTTP requests that could not be parsed (answered 400, logged once per interval).",
                g(&self.http_malformed_requests),
            ),
        ]);
        for (protocol, refused) in m::PHONE_PROTOCOLS.iter().zip(&self.phone_reports_refused) {
            out.push(Scalar {
                kind: "counter",
                name: m::PHONE_REPORTS_REFUSED,
                help: "Phone-app location reports refused, by protocol.",
                label: Some(("protocol", protocol)),
                value: g(refused),
            });
        }
        out.push(Scalar::counter(
            m::PHONE_REPORTS_WITHOUT_FIX,
            "OsmAnd / Traccar Client reports without a GPS fix (valid=false), not used as positions.",
            g(&self.phone_reports_without_fix),
        ));
        for (reason, refused) in m::PROXY_REFUSE_REASONS.iter().zip(&self.proxy_refused) {
            out.push(Scalar {
                kind: "counter",
                name: m::PROXY_REFUSED,
                help: "Connections closed before any MQTT or HTTP by the PROXY protocol step, by reason.",
                label: Some(("reason", reason)),
                value: g(refused),
            });
        }
        out.extend([Scalar::gauge(
            m::UPTIME,
            "Seconds since the process started.",
            self.started.elapsed().as_secs(),
        )]);
        out
    }

    /// Prometheus text exposition (format 0.0.4) of `stats` and the process metrics.
    pub fn render_prometheus(&self, stats: Option<&Stats>) -> String {
        let mut out = String::with_capacity(4096);
        let mut last = "";
        for s in self.scalars(stats) {
            let (name, _) = s.name;
            if name != last {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {}", s.help, s.kind);
                last = name;
            }
            match s.label {
                Some((k, v)) => {
                    let _ = writeln!(out, "{name}{{{k}=\"{}\"}} {}", escape(v), s.value);
                }
                None => {
                    let _ = writeln!(out, "{name} {}", s.value);
                }
            }
        }
        for (h, (name, _), help) in [
            (&self.db_batch_ops, m::DB_BATCH_OPS, "Operations per database batch."),
            (&self.db_batch_seconds, m::DB_BATCH_SECONDS, "Database batch commit time."),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        let (name, _) = m::HTTP_SECONDS;
        let _ =
            writeln!(out, "# HELP {name} HTTP request latency by route.\n# TYPE {name} histogram");
        for (route, h) in self.http.read().unwrap_or_else(|e| e.into_inner()).iter() {
            h.render(&mut out, name, &format!("route=\"{}\"", escape(route)));
        }
        out
    }

    /// Name, kind (`true`: counter) and help of every counter and gauge,
    /// once each, broker ones included even before a broker is registered.
    pub(crate) fn scalar_kinds(&self) -> Vec<((&'static str, &'static str), bool, &'static str)> {
        let mut out: Vec<_> = Vec::new();
        for s in self.scalars(Some(&Stats::default())) {
            if out.last().is_none_or(|(name, _, _)| *name != s.name) {
                out.push((s.name, s.kind == "counter", s.help));
            }
        }
        out
    }

    /// Every counter and gauge of the registered broker and the process, as
    /// `(name, is_counter, help, label, value)`: what the OTLP export reads.
    pub(crate) fn visit_scalars(
        &self,
        mut f: impl FnMut((&'static str, &'static str), bool, &'static str, Option<(&str, &str)>, u64),
    ) {
        let stats = self.broker_stats();
        for s in self.scalars(stats.as_deref()) {
            f(s.name, s.kind == "counter", s.help, s.label, s.value);
        }
    }

    /// Count and sum of each histogram, with the route for HTTP latency.
    pub(crate) fn visit_histograms(
        &self,
        mut f: impl FnMut((&'static str, &'static str), Option<&str>, u64, f64),
    ) {
        for (h, name) in
            [(&self.db_batch_ops, m::DB_BATCH_OPS), (&self.db_batch_seconds, m::DB_BATCH_SECONDS)]
        {
            f(name, None, h.count(), h.sum());
        }
        for (route, h) in self.http.read().unwrap_or_else(|e| e.into_inner()).iter() {
            f(m::HTTP_SECONDS, Some(route), h.count(), h.sum());
        }
    }

    /// The fields of one metrics document (without the ECS base fields),
    /// for the registered broker.
    pub fn document(&self) -> Map<String, Value> {
        let stats = self.broker_stats();
        let mut doc = Map::new();
        for s in self.scalars(stats.as_deref()) {
            let (_, field) = s.name;
            match s.label {
                Some((_, v)) => doc.insert(format!("{field}.{v}"), s.value.into()),
                None => doc.insert(field.to_owned(), s.value.into()),
            };
        }
        doc.insert(m::DB_BATCH_OPS.1.into(), self.db_batch_ops.document());
        doc.insert(m::DB_BATCH_SECONDS.1.into(), self.db_batch_seconds.document());
        let routes: Vec<Value> = self
            .http
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(route, h)| json!({ "route": route, "count": h.count(), "sum": h.sum() }))
            .collect();
        doc.insert(m::HTTP_SECONDS.1.into(), Value::Array(routes));
        if let Some(rows) = self.flag_rows() {
            doc.insert(m::FLAG_REQUESTS.1.into(), Value::Array(rows));
        }
        doc
    }
}

struct Scalar<'a> {
    kind: &'static str,
    name: (&'static str, &'static str),
    help: &'static str,
    label: Option<(&'static str, &'a str)>,
    value: u64,
}

impl Scalar<'_> {
    fn gauge(name: (&'static str, &'static str), help: &'static str, value: u64) -> Self {
        Self { kind: "gauge", name, help, label: None, value }
    }
    fn counter(name: (&'static str, &'static str), help: &'static str, value: u64) -> Self {
        Self { kind: "counter", name, help, label: None, value }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "route=\"/a\"");
        assert!(out.contains("x_bucket{route=\"/a\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{route=\"/a\",le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{route=\"/a\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{route=\"/a\"} 4\n"), "{out}");
        assert!((h.sum() - 12.7).abs() < 1e-6);
    }

    #[test]
    fn every_metric_has_help_and_type_before_its_samples() {
        let metrics = global();
        metrics.observe_http("/x/{id}", 0.01);
        let stats = Stats::default();
        stats.received(10);
        let text = metrics.render_prometheus(Some(&stats));
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
                    .unwrap_or(name);
                assert!(typed.contains(base), "no TYPE before {line}");
            }
        }
        assert!(text.contains("mapcast_messages_received_total 1\n"), "{text}");
        assert!(text.contains("route=\"/x/{id}\""), "{text}");
    }

    #[test]
    fn the_document_has_one_field_per_drop_reason() {
        let doc = global().document();
        // No broker registered in this test: process metrics only.
        assert!(doc.contains_key(m::SPOOL_BYTES.1));
        assert!(doc[m::DB_BATCH_SECONDS.1]["histogram"]["values"].is_array());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
