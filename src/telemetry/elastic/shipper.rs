//! The shipper loop, on the `mapcast-telemetry` thread: queue → batches →
//! `_bulk`; spool while Elasticsearch cannot take them; replay in order.
//!
//! Order is kept by one rule: while the spool holds anything, new batches
//! are appended to it too, and only the spool's oldest segment is sent.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderValue};
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bulk::{self, ItemOutcome, RequestOutcome};
use super::spool::{self, Spool};
use super::{Doc, DocSender, Indices, Paths, Stream};
use crate::telemetry::{crash, metrics, names};

pub(super) struct Config {
    pub indices: Indices,
    pub paths: Paths,
    pub batch_max_docs: usize,
    pub flush_interval: Duration,
    pub max_backoff: Duration,
    pub metrics_interval: Duration,
    pub spool_max_bytes: u64,
}

/// First wait after a failure; doubles up to `max_backoff`.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Rounds of retrying 429'd items in place before they go to the spool.
const ITEM_RETRY_ROUNDS: u32 = 4;
/// "Elasticsearch refuses our credentials" is logged at most this often.
const AUTH_ALERT_EVERY: Duration = Duration::from_secs(60);
/// At exit, how long queued documents may take to ship before they are spooled.
const FINAL_FLUSH: Duration = Duration::from_secs(3);

struct Shipper {
    client: Elasticsearch,
    cfg: Config,
    spool: Option<Arc<Mutex<Spool>>>,
    /// Consecutive failed requests; sets the backoff.
    failures: u32,
    /// No request before this instant (backoff after a failure).
    next_attempt: Instant,
    auth_alerted: Option<Instant>,
    /// Set on the first success after a failure, to log the recovery once.
    failing_since: Option<Instant>,
}

pub(super) async fn run(
    client: Elasticsearch,
    cfg: Config,
    mut rx: mpsc::Receiver<Doc>,
    sender: DocSender,
    stop: CancellationToken,
) {
    let spool_dir = cfg.paths.spool.clone();
    let max = cfg.spool_max_bytes;
    let spool = match tokio::task::spawn_blocking(move || Spool::open(&spool_dir, max)).await {
        Ok(Ok(s)) => Some(Arc::new(Mutex::new(s))),
        Ok(Err(e)) => {
            tracing::error!(
                error.message = %e,
                "cannot open the telemetry spool; documents are kept in memory only"
            );
            None
        }
        Err(_) => None,
    };
    let mut shipper = Shipper {
        client,
        cfg,
        spool,
        failures: 0,
        next_attempt: Instant::now(),
        auth_alerted: None,
        failing_since: None,
    };

    // Crash reports a previous run could not ship go first.
    let mut batch: Vec<Doc> = shipper.pending_crashes().await;
    let mut flush = tokio::time::interval(shipper.cfg.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(shipper.cfg.metrics_interval);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    report.tick().await;

    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            doc = rx.recv() => {
                let Some(doc) = doc else { break };
                metrics::global().telemetry_queue_depth.fetch_sub(1, Relaxed);
                batch.push(doc);
                if batch.len() >= shipper.cfg.batch_max_docs {
                    shipper.flush(&mut batch).await;
                }
            }
            _ = flush.tick() => {
                shipper.flush(&mut batch).await;
                shipper.drain_spool().await;
            }
            _ = report.tick() => {
                batch.push(metrics_document(&sender));
            }
        }
    }

    // Exit: take what is queued, try once to ship it, spool what is left.
    while let Ok(doc) = rx.try_recv() {
        metrics::global().telemetry_queue_depth.fetch_sub(1, Relaxed);
        batch.push(doc);
    }
    batch.push(metrics_document(&sender));
    let docs = std::mem::take(&mut batch);
    let leftover = if shipper.spool_is_empty().await && Instant::now() >= shipper.next_attempt {
        match tokio::time::timeout(FINAL_FLUSH, shipper.send_all(docs.clone())).await {
            Ok(left) => left,
            Err(_) => docs,
        }
    } else {
        docs
    };
    shipper.spool_append(leftover).await;
}

impl Shipper {
    /// Send (or spool, to keep the order) the current batch.
    async fn flush(&mut self, batch: &mut Vec<Doc>) {
        if batch.is_empty() {
            return;
        }
        let docs = std::mem::take(batch);
        if !self.spool_is_empty().await || Instant::now() < self.next_attempt {
            self.spool_append(docs).await;
            return;
        }
        let leftover = self.send_all(docs).await;
        self.spool_append(leftover).await;
    }

    /// Send spooled segments, oldest first, while Elasticsearch takes them.
    async fn drain_spool(&mut self) {
        let Some(spool) = self.spool.clone() else { return };
        while Instant::now() >= self.next_attempt {
            let taken = blocking(&spool, |s| s.oldest()).await;
            let Some(Some((seq, docs))) = taken else { return };
            let leftover = self.send_all(docs).await;
            let done = leftover.is_empty();
            blocking(&spool, move |s| s.replace(seq, &leftover)).await;
            if !done {
                return;
            }
        }
    }

    /// Send `docs` in batches; returns those not written yet, in order (the
    /// rest of the input after a failed request included).
    async fn send_all(&mut self, mut docs: Vec<Doc>) -> Vec<Doc> {
        let mut start = 0;
        while start < docs.len() {
            let end = (start + self.cfg.batch_max_docs).min(docs.len());
            let chunk: Vec<Doc> = docs[start..end].to_vec();
            let left = self.send_batch(chunk).await;
            if !left.is_empty() {
                let mut rest = left;
                rest.extend(docs.drain(end..));
                return rest;
            }
            start = end;
        }
        Vec::new()
    }

    /// One `_bulk` request and its item-level retries.
    async fn send_batch(&mut self, mut docs: Vec<Doc>) -> Vec<Doc> {
        let mut round = 0;
        loop {
            let body = bulk::body(&docs, &self.cfg.indices);
            let sent = self
                .client
                .bulk(BulkParts::None)
                .header(CONTENT_TYPE, HeaderValue::from_static(bulk::NDJSON))
                .body(vec![Bytes::from(body)])
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.failed(&format!("request failed: {e}"));
                    return docs;
                }
            };
            let status = response.status_code().as_u16();
            match bulk::classify_status(status) {
                RequestOutcome::Retry => {
                    self.failed(&format!("answered HTTP {status}"));
                    return docs;
                }
                RequestOutcome::AuthFailed => {
                    self.auth_failed(status);
                    return docs;
                }
                RequestOutcome::DeadLetter => {
                    let error = response.text().await.map(Value::from).unwrap_or(Value::Null);
                    let entries = docs.into_iter().map(|d| (d, status, error.clone())).collect();
                    self.dead_letter(entries).await;
                    self.succeeded();
                    return Vec::new();
                }
                RequestOutcome::Items => {}
            }
            let Ok(bytes) = response.bytes().await else {
                self.failed("the answer was cut short");
                return docs;
            };
            let Some(items) = bulk::parse_items(&bytes, docs.len()) else {
                self.failed("the answer does not match the request");
                return docs;
            };
            let mut retry = Vec::new();
            let mut dead = Vec::new();
            let mut written = 0;
            for (doc, outcome) in docs.into_iter().zip(items) {
                match outcome {
                    ItemOutcome::Written => {
                        written += 1;
                        if doc.stream == Stream::Crash {
                            let dir = self.cfg.paths.crashes.clone();
                            let id = doc.id.clone();
                            let _ =
                                tokio::task::spawn_blocking(move || crash::mark_shipped(&dir, &id))
                                    .await;
                        }
                    }
                    ItemOutcome::Retry => retry.push(doc),
                    ItemOutcome::DeadLetter { status, error } => dead.push((doc, status, error)),
                }
            }
            let m = metrics::global();
            m.telemetry_shipped.fetch_add(written, Relaxed);
            self.dead_letter(dead).await;
            if retry.is_empty() {
                self.succeeded();
                return Vec::new();
            }
            m.telemetry_retried.fetch_add(retry.len() as u64, Relaxed);
            round += 1;
            if round > ITEM_RETRY_ROUNDS {
                self.failed(&format!("{} documents still rejected after retries", retry.len()));
                return retry;
            }
            tracing::debug!(documents = retry.len(), round, "retrying rejected documents");
            tokio::time::sleep(backoff(round, self.cfg.max_backoff)).await;
            docs = retry;
        }
    }

    async fn dead_letter(&self, entries: Vec<(Doc, u16, Value)>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        metrics::global().telemetry_dead_lettered.fetch_add(n, Relaxed);
        let first = entries[0].2.to_string();
        let path = self.cfg.paths.dead_letter.clone();
        let written =
            tokio::task::spawn_blocking(move || spool::dead_letter(&path, &entries)).await;
        tracing::warn!(
            documents = n,
            { names::ERROR_MESSAGE } = truncate(&first, 300),
            file = %self.cfg.paths.dead_letter.display(),
            written = matches!(written, Ok(Ok(()))),
            "Elasticsearch refused documents; dead-lettered"
        );
    }

    fn failed(&mut self, why: &str) {
        self.failures += 1;
        let wait = backoff(self.failures, self.cfg.max_backoff);
        self.next_attempt = Instant::now() + wait;
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            tracing::warn!(
                { names::ERROR_MESSAGE } = why,
                retry_in_ms = wait.as_millis() as u64,
                "Elasticsearch unavailable; spooling telemetry"
            );
        } else {
            tracing::debug!({ names::ERROR_MESSAGE } = why, "Elasticsearch still unavailable");
        }
    }

    fn auth_failed(&mut self, status: u16) {
        self.failures += 1;
        self.next_attempt = Instant::now() + backoff(self.failures, self.cfg.max_backoff);
        self.failing_since.get_or_insert_with(Instant::now);
        if self.auth_alerted.is_none_or(|t| t.elapsed() >= AUTH_ALERT_EVERY) {
            self.auth_alerted = Some(Instant::now());
            tracing::error!(
                http.response.status_code = status,
                "Elasticsearch refuses our credentials; keeping telemetry in the spool"
            );
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.next_attempt = Instant::now();
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                outage_ms = since.elapsed().as_millis() as u64,
                "Elasticsearch reachable again; replaying the spool"
            );
        }
    }

    async fn spool_is_empty(&self) -> bool {
        match &self.spool {
            Some(spool) => spool.lock().unwrap_or_else(|e| e.into_inner()).is_empty(),
            None => true,
        }
    }

    async fn spool_append(&self, docs: Vec<Doc>) {
        if docs.is_empty() {
            return;
        }
        match &self.spool {
            Some(spool) => {
                let n = docs.len();
                let ok = blocking(spool, move |s| s.append(&docs)).await;
                if ok.is_none() {
                    metrics::global().spool_dropped.fetch_add(n as u64, Relaxed);
                }
            }
            None => {
                metrics::global().spool_dropped.fetch_add(docs.len() as u64, Relaxed);
            }
        }
    }

    async fn pending_crashes(&self) -> Vec<Doc> {
        let dir = self.cfg.paths.crashes.clone();
        let pending = tokio::task::spawn_blocking(move || crash::pending(&dir)).await;
        let docs: Vec<Doc> = pending
            .unwrap_or_default()
            .into_iter()
            .map(|(id, body)| Doc { stream: Stream::Crash, id, body })
            .collect();
        if !docs.is_empty() {
            tracing::info!(crashes = docs.len(), "shipping crash reports of an earlier run");
        }
        docs
    }
}

/// Run a spool operation on a blocking thread; `None` (logged) on failure.
async fn blocking<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> std::io::Result<T> + Send + 'static,
) -> Option<T> {
    let spool = spool.clone();
    let joined = tokio::task::spawn_blocking(move || {
        // Only this thread's tasks use the spool, one at a time.
        let mut guard = spool.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    })
    .await;
    match joined {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::error!(error.message = %e, "telemetry spool I/O failed");
            None
        }
        Err(e) => {
            tracing::error!(error.message = %e, "telemetry spool task failed");
            None
        }
    }
}

fn backoff(attempt: u32, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    (BACKOFF_START * factor).min(max)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One metrics document: ECS base fields plus every metric.
pub(super) fn metrics_document(sender: &DocSender) -> Doc {
    let mut doc = crate::telemetry::base_document();
    doc.insert(names::EVENT_DATASET.into(), names::DATASET_BROKER.into());
    doc.insert(names::EVENT_KIND.into(), "metric".into());
    doc.extend(metrics::global().document());
    Doc { stream: Stream::Metrics, id: sender.next_id(), body: Value::Object(doc).to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(2);
        assert_eq!(backoff(1, max), Duration::from_millis(250));
        assert_eq!(backoff(2, max), Duration::from_millis(500));
        assert_eq!(backoff(4, max), Duration::from_secs(2));
        assert_eq!(backoff(40, max), Duration::from_secs(2));
    }
}
