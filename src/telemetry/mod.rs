//! Telemetry: set up once at start, torn down through the returned guard.
//!
//! Logs go to stdout as ECS JSON lines (or a human format), written by a
//! background thread so a slow reader of stdout never stalls the broker.
//! Records of the `log` crate (ntex, actix, sqlx) are bridged into `tracing`.

mod ecs;
pub mod names;

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use ecs::EcsFormat;

use crate::config::{LogFormat, LogSettings};

/// Keeps the log writer alive; dropping it flushes pending lines. Hold it
/// until the very end of `main`.
#[must_use = "dropping the guard stops log output"]
pub struct TelemetryGuard {
    _writer: Option<WorkerGuard>,
}

/// Install the global subscriber. Safe to call more than once (tests): later
/// calls leave the first subscriber in place and return an inert guard.
pub fn init(settings: &LogSettings) -> TelemetryGuard {
    // `Settings` validated the directives already; fall back rather than fail.
    let filter =
        EnvFilter::builder().parse(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let registry = tracing_subscriber::registry().with(filter);

    // `try_init` also installs the `log` → `tracing` bridge.
    let installed = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(EcsFormat)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(writer),
            )
            .try_init(),
    };
    TelemetryGuard { _writer: installed.is_ok().then_some(guard) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_can_be_called_twice() {
        let first = init(&LogSettings::default());
        let second = init(&LogSettings::default());
        assert!(second._writer.is_none() || first._writer.is_none());
    }
}
