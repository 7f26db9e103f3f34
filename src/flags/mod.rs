//! Feature flags and canaries.
//!
//! Flags live in the database (`store`) and change at run time through the
//! REST API or `mapcast flags set`; every instance re-reads them each
//! `flags.refresh_ms`, so a change made anywhere is live everywhere within
//! that delay. Evaluation (`evaluate`) reads an in-memory snapshot: no
//! database on the request path. Each evaluation emits a
//! `feature_flag.evaluation` event, and the flagged path runs in a span
//! carrying `feature_flag.key` and `feature_flag.result.variant`, so every
//! log line, crash report and metric of that path names the variant.
//!
//! The canary guard (`guard`) compares each interval's canary variants with
//! the control (`canary`) and rolls a failing canary back to 0 %, persisted.

pub mod canary;
pub mod evaluate;
mod guard;
pub mod model;
mod murmur3;
pub mod observe;
pub mod rollout;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use evaluate::{Evaluation, Reason, Snapshot};
pub use guard::CheckOutcome;
pub use model::{
    CONTROL, CanaryThresholds, DebugFault, Flag, FlagError, FlagKey, FlagSpec, FlagState,
};
pub use murmur3::murmur3_x86_32;
pub use observe::{Observations, Probe};

use crate::store::Store;
use crate::telemetry::{crash, names};

/// Server-side clustering of the map for zoomed-out views (`GET
/// /api/v1/map?zoom=`): the first canary. Control serves the whole snapshot.
pub const MAP_CLUSTERING: &str = "map.clustering";

/// `feature_flag.provider.name` of every evaluation.
const PROVIDER: &str = "mapcast";

/// How often flags are re-read and canaries checked.
#[derive(Debug, Clone, Copy)]
pub struct FlagTimings {
    pub refresh: Duration,
    pub canary_interval: Duration,
}

/// The flags of this process: a cloneable handle.
#[derive(Clone)]
pub struct Flags(Arc<Inner>);

struct Inner {
    store: Store,
    /// Replaced whole on every refresh; readers clone the `Arc` and go.
    snapshot: RwLock<Arc<Snapshot>>,
    observations: Observations,
    crash_dir: PathBuf,
    timings: FlagTimings,
}

impl Flags {
    /// Read every flag from the database. `data_dir` holds the crash reports
    /// the canary guard counts.
    pub async fn load(
        store: Store,
        data_dir: &std::path::Path,
        timings: FlagTimings,
    ) -> anyhow::Result<Self> {
        let flags = store::load_all(&store).await?;
        crash::set_feature_flag_source(observe::active_variants);
        Ok(Self(Arc::new(Inner {
            store,
            snapshot: RwLock::new(Arc::new(Snapshot::new(flags))),
            observations: Observations::default(),
            crash_dir: crash::crash_dir(data_dir),
            timings,
        })))
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.0.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The variant of flag `key` for `targeting_key` (an MQTT client id or
    /// `rest:{user id}`), with its `feature_flag.evaluation` event emitted
    /// inside the returned span; run the flagged path in that span.
    pub fn evaluate(&self, key: &str, targeting_key: &str) -> (Evaluation, tracing::Span) {
        let eval = self.snapshot().evaluate(key, targeting_key, crash::debug_triggers_enabled());
        let span = tracing::info_span!(
            "feature_flag",
            { names::FEATURE_FLAG_KEY } = &*eval.key,
            { names::FEATURE_FLAG_VARIANT } = &*eval.variant,
        );
        span.in_scope(|| {
            tracing::info!(
                { names::EVENT_ACTION } = names::FEATURE_FLAG_EVALUATION,
                { names::FEATURE_FLAG_REASON } = eval.reason.as_str(),
                { names::FEATURE_FLAG_PROVIDER } = PROVIDER,
                { names::FEATURE_FLAG_CONTEXT_ID } = targeting_key,
                "feature_flag.evaluation"
            );
        });
        (eval, span)
    }

    /// Start recording one pass through the path `eval` chose.
    pub fn probe(&self, eval: &Evaluation) -> Probe {
        self.0.observations.probe(eval)
    }

    /// Every flag as stored now.
    pub async fn list(&self) -> Result<Vec<Flag>, sqlx::Error> {
        store::load_all(&self.0.store).await
    }

    pub async fn get(&self, key: &FlagKey) -> Result<Option<Flag>, sqlx::Error> {
        store::load(&self.0.store, key).await
    }

    /// Create or replace a flag (validated by the caller) and make it live here
    /// at once; other instances follow within their refresh interval.
    pub async fn put(&self, key: &FlagKey, spec: &FlagSpec) -> Result<Flag, sqlx::Error> {
        let flag = set(&self.0.store, key, spec).await?;
        self.refresh().await?;
        Ok(flag)
    }

    /// Re-read every flag. A flag set again since the last read starts its
    /// canary window afresh.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        let fresh = Snapshot::new(store::load_all(&self.0.store).await?);
        let old = self.snapshot();
        for (key, c) in &fresh.flags {
            if old.flags.get(key).is_none_or(|o| o.flag.updated_at != c.flag.updated_at) {
                self.0.observations.reset_window(key);
            }
        }
        *self.0.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Requests, errors and crashes per flag variant, for the metrics document.
    pub fn document_rows(&self) -> Vec<serde_json::Value> {
        self.0.observations.document_rows()
    }

    /// Requests, errors and crashes per flag variant, in Prometheus text.
    pub fn render_prometheus(&self, out: &mut String) {
        self.0.observations.render_prometheus(out);
    }

    /// Refresh the flags and run the canary guard until `stopping`.
    pub async fn run_until_stopped(self, stopping: CancellationToken) {
        let mut refresh = tokio::time::interval(self.0.timings.refresh);
        let mut check = tokio::time::interval(self.0.timings.canary_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval is immediate: the first check then
        // counts crashes a previous run left behind.
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!({ names::ERROR_MESSAGE } = %e, "cannot refresh feature flags");
                    }
                }
                _ = check.tick() => {
                    if let Err(e) = self.try_check_once().await {
                        tracing::warn!({ names::ERROR_MESSAGE } = %e, "canary check failed to run");
                    }
                }
            }
        }
    }
}

/// Store a flag definition, starting its canary afresh (crash reports
/// written before now do not count against it).
pub async fn set(store: &Store, key: &FlagKey, spec: &FlagSpec) -> Result<Flag, sqlx::Error> {
    let now = crate::domain::time::millis(std::time::SystemTime::now());
    store::put(store, key, spec, now, &guard::watermark_now()).await
}
