//! The canary guard's step: for every flag with a live canary, take the
//! interval's samples, count crash reports from its canary paths, check,
//! and after `canary.failed_checks` failed checks roll it back (rollout 0,
//! state `rolled_back`, in the database, so a restart does not resume it).

use std::path::Path;

use serde_json::Value;

use super::canary::{Verdict, check};
use super::model::{CONTROL, Flag, FlagState};
use super::observe::Sample;
use super::{Flags, store};
use crate::telemetry::names;

/// What one check of one flag found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    pub key: String,
    pub verdict: Verdict,
    pub rolled_back: bool,
}

/// A crash-report id for "now": reports with a greater id came later (ids
/// start with their compact UTC timestamp).
pub(super) fn watermark_now() -> String {
    let now = crate::telemetry::now_rfc3339();
    let compact: String = now.chars().take(19).filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{compact}Z")
}

/// Whether a canary is running: the flag is on, not rolled back, and
/// someone can get a canary variant.
fn guarded(flag: &Flag) -> bool {
    flag.spec.enabled
        && flag.state == FlagState::Active
        && (flag.spec.rollout > 0 || !flag.spec.allow.is_empty())
}

/// Whether a crash document names a canary variant of `key`: in its list of
/// active variants, or in the fields of the span it happened in.
fn crashed_in_canary(doc: &Value, key: &str) -> bool {
    let listed = doc[names::CRASH_FEATURE_FLAGS].as_array().is_some_and(|flags| {
        flags.iter().any(|f| f["key"] == key && f["variant"].as_str().is_some_and(|v| v != CONTROL))
    });
    let in_span = doc[names::FEATURE_FLAG_KEY] == key
        && doc[names::FEATURE_FLAG_VARIANT].as_str().is_some_and(|v| v != CONTROL);
    listed || in_span
}

/// Crash reports after `watermark`: (the newest id, the documents).
fn crashes_after(dir: &Path, watermark: &str) -> (Option<String>, Vec<Value>) {
    #[allow(clippy::disallowed_methods, reason = "runs on a blocking thread")]
    let Ok(entries) = std::fs::read_dir(dir) else { return (None, Vec::new()) };
    let mut newest: Option<String> = None;
    let mut docs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if stem.as_str() <= watermark {
            continue;
        }
        #[allow(clippy::disallowed_methods, reason = "runs on a blocking thread")]
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(doc) = serde_json::from_str::<Value>(&text)
        {
            docs.push(doc);
        }
        if newest.as_deref().is_none_or(|n| n < stem.as_str()) {
            newest = Some(stem);
        }
    }
    (newest, docs)
}

impl Flags {
    /// One round of canary checks over every flag.
    pub async fn try_check_once(&self) -> Result<Vec<CheckOutcome>, sqlx::Error> {
        let mut outcomes = Vec::new();
        let snapshot = self.snapshot();
        for c in snapshot.flags.values() {
            let flag = &c.flag;
            let window = self.0.observations.take_window(flag.key.as_str());
            if !guarded(flag) {
                continue;
            }
            let control = window.get(CONTROL).copied().unwrap_or_default();
            let canary = window
                .iter()
                .filter(|(v, _)| v.as_str() != CONTROL)
                .fold(Sample::default(), |acc, (_, s)| acc.merge(*s));

            let dir = self.0.crash_dir.clone();
            let watermark = flag.crash_watermark.clone();
            let (newest, docs) =
                tokio::task::spawn_blocking(move || crashes_after(&dir, &watermark))
                    .await
                    .unwrap_or_default();
            let crashes = docs.iter().filter(|d| crashed_in_canary(d, flag.key.as_str())).count();
            let watermark = newest.unwrap_or_else(|| flag.crash_watermark.clone());

            let verdict = check(control, canary, &flag.spec.canary, crashes > 0);
            let mut rolled_back = false;
            match &verdict {
                Verdict::Failed(why) => {
                    let failed = store::record_failed_check(
                        &self.0.store,
                        &flag.key,
                        flag.updated_at,
                        &watermark,
                    )
                    .await?;
                    if let Some(failed) = failed {
                        let limit = flag.spec.canary.failed_checks;
                        tracing::warn!(
                            { names::FEATURE_FLAG_KEY } = flag.key.as_str(),
                            { names::EVENT_ACTION } = names::CANARY_CHECK_FAILED,
                            { names::EVENT_REASON } = why.as_str(),
                            { names::CANARY_FAILED_CHECKS } = failed,
                            { names::CANARY_CRASHES } = crashes,
                            "canary check failed ({failed} of {limit})"
                        );
                        if failed >= limit
                            && store::roll_back(&self.0.store, &flag.key, flag.updated_at).await?
                        {
                            rolled_back = true;
                            log_rollback(flag, why, failed, control, canary, crashes);
                        }
                    }
                }
                Verdict::Passed | Verdict::NotEnoughSamples => {
                    if watermark != flag.crash_watermark {
                        store::set_crash_watermark(&self.0.store, &flag.key, &watermark).await?;
                    }
                }
            }
            outcomes.push(CheckOutcome { key: flag.key.to_string(), verdict, rolled_back });
        }
        if outcomes.iter().any(|o| o.rolled_back) {
            self.refresh().await?;
        }
        Ok(outcomes)
    }
}

/// The one `canary-rollback` event, with the numbers that decided it.
fn log_rollback(
    flag: &Flag,
    why: &str,
    failed: u32,
    control: Sample,
    canary: Sample,
    crashes: usize,
) {
    tracing::error!(
        { names::EVENT_ACTION } = names::CANARY_ROLLBACK,
        { names::EVENT_REASON } = why,
        { names::FEATURE_FLAG_KEY } = flag.key.as_str(),
        { names::CANARY_FAILED_CHECKS } = failed,
        { names::CANARY_CRASHES } = crashes,
        { names::CANARY_CONTROL_REQUESTS } = control.requests,
        { names::CANARY_CONTROL_ERROR_RATE } = control.error_rate(),
        { names::CANARY_CONTROL_P99_MS } = control.p99_ms,
        { names::CANARY_CANARY_REQUESTS } = canary.requests,
        { names::CANARY_CANARY_ERROR_RATE } = canary.error_rate(),
        { names::CANARY_CANARY_P99_MS } = canary.p99_ms,
        "canary rolled back: {} is at 0 % for everyone",
        flag.key
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn crash_reports_count_when_they_name_a_canary_variant() {
        let listed = json!({ names::CRASH_FEATURE_FLAGS: [{"key": "f", "variant": "on"}] });
        let spanned = json!({ names::FEATURE_FLAG_KEY: "f", names::FEATURE_FLAG_VARIANT: "on" });
        let control = json!({ names::CRASH_FEATURE_FLAGS: [{"key": "f", "variant": "control"}] });
        assert!(crashed_in_canary(&listed, "f"));
        assert!(crashed_in_canary(&spanned, "f"));
        assert!(!crashed_in_canary(&control, "f"));
        assert!(!crashed_in_canary(&listed, "g"));
    }

    #[test]
    #[allow(clippy::disallowed_methods, reason = "test fixtures")]
    fn only_reports_after_the_watermark_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for stem in ["20260101T000000Z-aaaa", "20260102T000000Z-bbbb"] {
            std::fs::write(dir.path().join(format!("{stem}.json")), "{}").unwrap();
        }
        std::fs::write(dir.path().join("20260103T000000Z-cccc.shipped"), "").unwrap();
        let (newest, docs) = crashes_after(dir.path(), "20260101T120000Z");
        assert_eq!(newest.as_deref(), Some("20260102T000000Z-bbbb"));
        assert_eq!(docs.len(), 1);
        assert!(watermark_now().as_str() > "20260102T000000Z-bbbb");
    }
}
