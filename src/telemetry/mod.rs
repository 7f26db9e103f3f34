//! Telemetry: set up once at start, torn down through the returned guard.
//!
//! - `ecs`: every event becomes one ECS JSON document, built once and given
//!   to each sink: stdout (JSON format; written by a background thread so a
//!   slow reader of stdout never stalls the broker), the crash reporter's
//!   breadcrumbs and the Elasticsearch shipper.
//! - `elastic`: bulk shipping to Elasticsearch data streams, with a bounded
//!   queue, an on-disk spool and dead-lettering.
//! - `crash`: the panic hook writing crash reports.
//! - `metrics`: counters and histograms for `/metrics` and Elasticsearch.
//! - `otel`: OTLP trace export and W3C trace context; `otel_metrics`: OTLP
//!   metric export.
//! - `names`: every field and metric name (they are API).
//! - `quiet`: log records a stranger can cause at will, counted instead of
//!   logged one by one.
//!
//! Records of the `log` crate (ntex, actix, sqlx) are bridged into `tracing`.

pub mod crash;
mod ecs;
pub mod elastic;
mod logstash;
pub mod metrics;
pub mod names;
pub mod otel;
mod otel_metrics;
pub mod quiet;

use std::io::IsTerminal;
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

use serde_json::{Map, Value};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use ecs::EcsLayer;

use crate::config::{LogFormat, Settings};

/// Keeps the log writer and the shipper alive; dropping it ships (or
/// spools) what is queued and flushes pending lines. Hold it until the very
/// end of `main`.
#[must_use = "dropping the guard stops log output and shipping"]
pub struct TelemetryGuard {
    // Field order is drop order: the shipper first (it may still log).
    _shipper: Option<elastic::ShipperHandle>,
    _otel: Option<otel::OtelGuard>,
    _writer: Option<WorkerGuard>,
}

/// Install the global subscriber, the panic hook and, when configured, the
/// Elasticsearch shipper. Safe to call more than once (tests): later calls
/// leave the first subscriber in place and return an inert guard.
pub fn init(settings: &Settings) -> TelemetryGuard {
    LazyLock::force(&STARTED);
    let _ = IDENTITY.set(Identity {
        version: settings
            .telemetry
            .service_version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
        canary: settings.telemetry.canary,
    });
    // `Settings` validated the directives already; fall back rather than fail.
    let filter = EnvFilter::builder()
        .parse(effective_filter(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new(effective_filter("info")));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let shipper = match elastic::start(&settings.telemetry, &settings.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mapcast: Elasticsearch shipping is off: {e:#}");
            None
        }
    };
    let (ship, handle) = shipper.map_or((None, None), |(s, h)| (Some(s), h));
    let metrics_interval = std::time::Duration::from_secs(settings.telemetry.metrics_interval_secs);
    let (tracer, otel_guard) = match otel::build(&settings.telemetry.otlp, metrics_interval) {
        Ok(Some((tracer, guard))) => (Some(tracer), Some(guard)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("mapcast: OTLP export is off: {e:#}");
            (None, None)
        }
    };
    // The OpenTelemetry layer goes first, so spans exist there before the
    // ECS layer asks for their ids.
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(quiet::QuietLayer)
        .with(tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t)));

    // `try_init` also installs the `log` → `tracing` bridge.
    let format = match settings.log.format {
        LogFormat::Auto if std::io::stdout().is_terminal() => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    };
    let installed = match format {
        LogFormat::Auto | LogFormat::Json => {
            registry.with(EcsLayer::new(Some(BoxMakeWriter::new(writer)), ship.clone())).try_init()
        }
        LogFormat::Pretty => registry
            .with(EcsLayer::new(None, ship.clone()))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(writer),
            )
            .try_init(),
    };
    if installed.is_err() {
        return TelemetryGuard { _shipper: None, _otel: None, _writer: None };
    }
    let limits = crash::CrashLimits {
        max_files: settings.telemetry.crash_max_files,
        max_bytes: settings.telemetry.crash_max_bytes,
    };
    crash::install(&settings.data_dir, limits, settings.redacted_digest(), ship);
    TelemetryGuard { _shipper: handle, _otel: otel_guard, _writer: Some(guard) }
}

/// The filter for `log.level`: a bare level applies to mapcast; every
/// dependency (ntex, actix, sqlx, ...) logs at `warn` unless a directive
/// names it. Their info lines are start-up chatter and routine notices
/// (e.g. listener back-pressure) that read like faults.
pub fn effective_filter(level: &str) -> String {
    let mut own = "info";
    let mut named = Vec::new();
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.parse::<tracing_subscriber::filter::LevelFilter>().is_ok() {
            own = directive;
        } else {
            named.push(directive);
        }
    }
    let mut filter = format!("warn,mapcast={own}");
    for directive in named {
        filter.push(',');
        filter.push_str(directive);
    }
    filter
}

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How this build presents itself (`telemetry.service_version`,
/// `telemetry.canary`), fixed by the first `init`.
struct Identity {
    version: String,
    canary: bool,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// `service.version` of every document.
pub(crate) fn service_version() -> &'static str {
    IDENTITY.get().map_or(env!("CARGO_PKG_VERSION"), |i| i.version.as_str())
}

/// Whether documents carry `labels.canary: "true"`.
pub(crate) fn canary_build() -> bool {
    IDENTITY.get().is_some_and(|i| i.canary)
}

/// Seconds since telemetry was set up (≈ process start).
pub(crate) fn uptime_secs() -> u64 {
    STARTED.elapsed().as_secs()
}

/// The git commit this binary was built from (short hash), or "unknown".
pub const BUILD_COMMIT: &str = env!("MAPCAST_BUILD_COMMIT");

/// Now, as ECS writes `@timestamp` (RFC 3339, UTC).
pub(crate) fn now_rfc3339() -> String {
    let mut s = String::with_capacity(32);
    let _ = SystemTime.format_time(&mut Writer::new(&mut s));
    s
}

struct Host {
    name: String,
    pid: u32,
}

static HOST: LazyLock<Host> = LazyLock::new(|| Host {
    #[allow(clippy::disallowed_methods, reason = "read once, on first use at startup")]
    name: std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into()),
    pid: std::process::id(),
});

/// The ECS fields every shipped document (metrics, crash) starts with.
pub(crate) fn base_document() -> Map<String, Value> {
    let host = &*HOST;
    let mut doc = Map::new();
    let fields = [
        (names::TIMESTAMP, Value::from(now_rfc3339())),
        (names::ECS_VERSION, names::ECS_VERSION_VALUE.into()),
        (names::SERVICE_NAME, names::SERVICE_NAME_VALUE.into()),
        (names::SERVICE_VERSION, service_version().into()),
        (names::SERVICE_BUILD_COMMIT, BUILD_COMMIT.into()),
        (names::SERVICE_NODE_NAME, host.name.clone().into()),
        (names::HOST_NAME, host.name.clone().into()),
        (names::HOST_OS_TYPE, std::env::consts::OS.into()),
        (names::HOST_ARCHITECTURE, std::env::consts::ARCH.into()),
        (names::PROCESS_PID, host.pid.into()),
    ];
    for (k, v) in fields {
        doc.insert(k.into(), v);
    }
    if canary_build() {
        doc.insert(names::LABELS_CANARY.into(), "true".into());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_can_be_called_twice() {
        // The first call installs the panic hook for this test binary: keep
        // its crash reports out of the working tree.
        let settings = Settings {
            data_dir: std::env::temp_dir().join("mapcast-lib-tests"),
            ..Settings::default()
        };
        let first = init(&settings);
        let second = init(&settings);
        assert!(second._writer.is_none() || first._writer.is_none());
    }

    #[test]
    fn a_bare_level_is_mapcasts_and_dependencies_stay_at_warn_unless_named() {
        assert_eq!(effective_filter("info"), "warn,mapcast=info");
        assert_eq!(effective_filter("debug,sqlx=info"), "warn,mapcast=debug,sqlx=info");
        assert_eq!(effective_filter("ntex=trace"), "warn,mapcast=info,ntex=trace");
        assert_eq!(effective_filter(""), "warn,mapcast=info");
    }

    #[test]
    fn base_documents_carry_the_service_identity() {
        let doc = base_document();
        assert_eq!(doc[names::SERVICE_NAME], "mapcast");
        assert!(doc[names::TIMESTAMP].as_str().unwrap().ends_with('Z'));
        assert!(!doc[names::SERVICE_BUILD_COMMIT].as_str().unwrap().is_empty());
    }
}
