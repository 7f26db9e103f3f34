//! Log records a stranger can cause at will. actix logs one ERROR line
//! (`stream error: ...`) for every malformed HTTP request, so anyone could
//! flood the logs, and the shipper behind them, by sending bytes that are
//! not HTTP. [`QuietLayer`] counts those records
//! (`mapcast_http_malformed_requests_total`) and drops them; the reporter
//! logs one warning with how many came, at most once per
//! [`REPORT_INTERVAL`]. The clients still get their 400.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer};

use super::metrics;

/// Least time between two warnings about malformed requests.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The `log` target and message prefix of actix's line per malformed request.
const ACTIX_DISPATCHER: &str = "actix_http::h1::dispatcher";
const STREAM_ERROR: &str = "stream error";

/// Malformed requests since the last warning.
static UNREPORTED: AtomicU64 = AtomicU64::new(0);

/// Drops (and counts) actix's line per malformed request, for every sink.
pub struct QuietLayer;

impl<S: Subscriber> Layer<S> for QuietLayer {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        if !is_malformed_request(event) {
            return true;
        }
        metrics::global().http_malformed_requests.fetch_add(1, Relaxed);
        UNREPORTED.fetch_add(1, Relaxed);
        false
    }
}

fn is_malformed_request(event: &Event<'_>) -> bool {
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    if *meta.level() != Level::ERROR || meta.target() != ACTIX_DISPATCHER {
        return false;
    }
    let mut message = MessageStart(false);
    event.record(&mut message);
    message.0
}

/// Whether the event's message starts with [`STREAM_ERROR`].
struct MessageStart(bool);

impl Visit for MessageStart {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}").starts_with(STREAM_ERROR);
        }
    }
}

/// One step of the reporter: a warning with the malformed requests since
/// the last step, if there were any; their number.
pub fn report_malformed_once() -> u64 {
    let count = UNREPORTED.swap(0, Relaxed);
    if count > 0 {
        tracing::warn!(
            count,
            interval_secs = REPORT_INTERVAL.as_secs(),
            "malformed HTTP requests refused with 400 (one line per interval; each is counted in mapcast_http_malformed_requests_total)"
        );
    }
    count
}

/// Report every [`REPORT_INTERVAL`] until `stopping`, then once more.
pub async fn run_until_stopped(stopping: CancellationToken) {
    loop {
        tokio::select! {
            _ = stopping.cancelled() => break,
            _ = tokio::time::sleep(REPORT_INTERVAL) => {}
        }
        report_malformed_once();
    }
    report_malformed_once();
}
