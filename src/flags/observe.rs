//! What happens inside flagged paths, per flag and variant: requests,
//! errors, crashes and latency. Totals feed `/metrics`; a window (reset at
//! every canary check) feeds the canary guard. Recording is a few relaxed
//! atomics; the map of variants is only written when a variant is new.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde_json::{Value, json};

use super::evaluate::Evaluation;
use crate::telemetry::names;

/// Upper bounds of the latency buckets, in microseconds: 100 µs × 1.5ⁿ up to
/// about 30 s (a p99 is reported as the bound of its bucket, ±50 %).
const BUCKETS: usize = 32;

fn bucket_of(micros: u64) -> usize {
    let mut bound = 100.0;
    for i in 0..BUCKETS - 1 {
        if (micros as f64) <= bound {
            return i;
        }
        bound *= 1.5;
    }
    BUCKETS - 1
}

fn bound_ms(bucket: usize) -> f64 {
    0.1 * 1.5f64.powi(bucket as i32)
}

/// One variant's counters since the last canary check.
#[derive(Debug, Default)]
struct Window {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// What one variant did during one canary interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    /// Upper bound of the p99 latency bucket, in milliseconds (0 without requests).
    pub p99_ms: f64,
}

impl Sample {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }

    /// Two samples as one (all canary variants against the control).
    pub fn merge(self, other: Sample) -> Sample {
        Sample {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
            p99_ms: self.p99_ms.max(other.p99_ms),
        }
    }
}

impl Window {
    fn take(&self) -> Sample {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Relaxed)).collect();
        let requests = self.requests.swap(0, Relaxed);
        let errors = self.errors.swap(0, Relaxed);
        let total: u64 = counts.iter().sum();
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        let mut p99_ms = 0.0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if total > 0 && seen >= rank {
                p99_ms = bound_ms(i);
                break;
            }
        }
        Sample { requests, errors, p99_ms }
    }
}

/// Counters of one flag variant.
#[derive(Debug, Default)]
pub struct VariantStats {
    requests: AtomicU64,
    errors: AtomicU64,
    crashes: AtomicU64,
    window: Window,
}

impl VariantStats {
    fn record(&self, elapsed_micros: u64, ok: bool) {
        self.requests.fetch_add(1, Relaxed);
        self.window.requests.fetch_add(1, Relaxed);
        self.window.buckets[bucket_of(elapsed_micros)].fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
            self.window.errors.fetch_add(1, Relaxed);
        }
    }
}

/// Every variant seen, by flag key then variant.
#[derive(Debug, Default)]
pub struct Observations(RwLock<BTreeMap<String, BTreeMap<String, Arc<VariantStats>>>>);

impl Observations {
    fn stats(&self, key: &str, variant: &str) -> Arc<VariantStats> {
        let known = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .and_then(|v| v.get(variant))
            .cloned();
        known.unwrap_or_else(|| {
            self.0
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.to_owned())
                .or_default()
                .entry(variant.to_owned())
                .or_default()
                .clone()
        })
    }

    /// Start timing one pass through the path `eval` chose.
    pub fn probe(&self, eval: &Evaluation) -> Probe {
        Probe { stats: self.stats(&eval.key, &eval.variant), start: Instant::now(), done: false }
    }

    /// The window of every variant of `key` since the last call, by variant.
    pub fn take_window(&self, key: &str) -> BTreeMap<String, Sample> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .map(|v| v.iter().map(|(name, s)| (name.clone(), s.window.take())).collect())
            .unwrap_or_default()
    }

    /// Forget the window of `key` (the flag changed: old traffic says nothing).
    pub fn reset_window(&self, key: &str) {
        let _ = self.take_window(key);
    }

    /// Prometheus text: requests, errors and crashes per flag and variant.
    pub fn render_prometheus(&self, out: &mut String) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let series: [(&Metric, &str, Read); 3] = [
            (
                &names::metrics::FLAG_REQUESTS,
                "Passes through feature-flagged paths, by flag and variant.",
                |s| s.requests.load(Relaxed),
            ),
            (
                &names::metrics::FLAG_ERRORS,
                "Failed passes (errors and crashes), by flag and variant.",
                |s| s.errors.load(Relaxed),
            ),
            (
                &names::metrics::FLAG_CRASHES,
                "Panics inside feature-flagged paths, by flag and variant.",
                |s| s.crashes.load(Relaxed),
            ),
        ];
        for ((name, _), help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (key, variants) in map.iter() {
                for (variant, stats) in variants {
                    let _ = writeln!(
                        out,
                        "{name}{{flag=\"{}\",variant=\"{}\"}} {}",
                        escape(key),
                        escape(variant),
                        value(stats)
                    );
                }
            }
        }
    }
}

impl Observations {
    /// One object per flag variant, `{flag, variant, requests, errors,
    /// crashes}`, for the metrics document.
    pub fn document_rows(&self) -> Vec<Value> {
        use names::metrics as m;
        // The object keys are the last segment of each field name.
        let key = |field: &'static str| field.rsplit('.').next().unwrap_or(field);
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut rows = Vec::new();
        for (flag, variants) in map.iter() {
            for (variant, s) in variants {
                let mut row = serde_json::Map::new();
                row.insert(key(m::FLAG_ROW_FLAG).into(), flag.as_str().into());
                row.insert(key(m::FLAG_ROW_VARIANT).into(), variant.as_str().into());
                row.insert(key(m::FLAG_ROW_REQUESTS).into(), s.requests.load(Relaxed).into());
                row.insert(key(m::FLAG_ROW_ERRORS).into(), s.errors.load(Relaxed).into());
                row.insert(key(m::FLAG_ROW_CRASHES).into(), s.crashes.load(Relaxed).into());
                rows.push(Value::Object(row));
            }
        }
        rows
    }
}

/// A metric's Prometheus and document names.
type Metric = (&'static str, &'static str);
/// Reads one counter of a variant.
type Read = fn(&VariantStats) -> u64;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One pass through a flagged path. [`Probe::finish`] records it; a probe
/// dropped while its thread panics records a crash (and an error).
#[must_use = "finish the probe with the outcome"]
pub struct Probe {
    stats: Arc<VariantStats>,
    start: Instant,
    done: bool,
}

impl Probe {
    pub fn finish(mut self, ok: bool) {
        self.done = true;
        let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.record(micros, ok);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Dropped unfinished without a panic: the client went away; that
        // says nothing about the variant.
        if !self.done && std::thread::panicking() {
            self.stats.crashes.fetch_add(1, Relaxed);
            let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.stats.record(micros, false);
        }
    }
}

thread_local! {
    /// Variants of the flagged code running on this thread, for crash reports.
    static ACTIVE: RefCell<Vec<(Arc<str>, Arc<str>)>> = const { RefCell::new(Vec::new()) };
}

/// Marks synchronous code as running under a flag's variant until dropped:
/// a panic there lists the variant in the crash report.
pub struct ActiveVariant(());

impl Evaluation {
    pub fn enter(&self) -> ActiveVariant {
        ACTIVE.with(|a| a.borrow_mut().push((self.key.clone(), self.variant.clone())));
        ActiveVariant(())
    }
}

impl Drop for ActiveVariant {
    fn drop(&mut self) {
        ACTIVE.with(|a| {
            a.borrow_mut().pop();
        });
    }
}

/// The variants active on the calling thread: `[{key, variant}]` (the crash
/// reporter's source; never blocks).
pub fn active_variants() -> Vec<Value> {
    ACTIVE
        .try_with(|a| {
            a.try_borrow()
                .map(|list| {
                    list.iter().map(|(k, v)| json!({ "key": &**k, "variant": &**v })).collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::evaluate::Reason;

    fn eval(variant: &str) -> Evaluation {
        Evaluation { key: "f".into(), variant: variant.into(), reason: Reason::Split, fault: None }
    }

    #[test]
    fn windows_count_and_take_the_p99_then_reset() {
        let obs = Observations::default();
        let stats = obs.stats("f", "on");
        for _ in 0..99 {
            stats.record(1_000, true);
        }
        stats.record(2_000_000, false);
        let window = obs.take_window("f");
        let s = window["on"];
        assert_eq!((s.requests, s.errors), (100, 1));
        assert!((0.9..=2.5).contains(&s.p99_ms), "p99 of 99×1 ms and 1×2 s: {}", s.p99_ms);
        assert_eq!(obs.take_window("f")["on"], Sample::default());
    }

    #[test]
    fn document_rows_hold_the_totals_of_each_variant() {
        let obs = Observations::default();
        obs.stats("f", "on").record(10, true);
        obs.stats("f", "on").record(10, false);
        obs.stats("f", "off").record(10, true);
        let _ = obs.take_window("f");
        assert_eq!(
            obs.document_rows(),
            vec![
                json!({"flag": "f", "variant": "off", "requests": 1, "errors": 0, "crashes": 0}),
                json!({"flag": "f", "variant": "on", "requests": 2, "errors": 1, "crashes": 0}),
            ]
        );
    }

    #[test]
    fn a_probe_dropped_in_a_panic_counts_a_crash() {
        let obs = Arc::new(Observations::default());
        let o = obs.clone();
        let result = std::thread::spawn(move || {
            let e = eval("on");
            let _active = e.enter();
            let _probe = o.probe(&e);
            assert_eq!(active_variants(), vec![json!({"key": "f", "variant": "on"})]);
            panic!("inside the canary");
        })
        .join();
        assert!(result.is_err());
        obs.probe(&eval("control")).finish(true);
        let mut text = String::new();
        obs.render_prometheus(&mut text);
        assert!(
            text.contains("mapcast_feature_flag_crashes_total{flag=\"f\",variant=\"on\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mapcast_feature_flag_errors_total{flag=\"f\",variant=\"on\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mapcast_feature_flag_requests_total{flag=\"f\",variant=\"control\"} 1")
        );
        assert!(active_variants().is_empty());
    }
}
