//! History retention: messages older than `history.retention_days` (and map
//! snapshot records as old) are deleted in small batches with a pause
//! between them, so the purge never holds the table long enough to stall the
//! batching writer.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Store;
use crate::domain::time::millis;
use crate::telemetry::names;

/// Rows per DELETE statement.
pub const PURGE_BATCH: u32 = 1000;
/// Pause between two DELETE statements, for the writer to get its turn.
const PAUSE: Duration = Duration::from_millis(50);
/// Time between two purges.
const EVERY: Duration = Duration::from_secs(3600);

/// What one purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeOutcome {
    pub history_rows: u64,
    pub snapshot_rows: u64,
    /// DELETE statements issued.
    pub batches: u32,
}

pub struct HistoryRetention {
    store: Store,
    retention: Duration,
    batch: u32,
    pause: Duration,
}

impl HistoryRetention {
    pub fn new(store: Store, retention_days: u32) -> Self {
        Self {
            store,
            retention: Duration::from_secs(u64::from(retention_days) * 86_400),
            batch: PURGE_BATCH,
            pause: PAUSE,
        }
    }

    /// Smaller batches and no pause, for tests.
    pub fn with_batch(mut self, batch: u32, pause: Duration) -> Self {
        self.batch = batch.max(1);
        self.pause = pause;
        self
    }

    /// Purge everything older than the retention, batch by batch.
    #[tracing::instrument(name = "history.purge", skip_all)]
    pub async fn try_purge_once(
        &self,
        stop: &CancellationToken,
    ) -> Result<PurgeOutcome, sqlx::Error> {
        let cutoff =
            millis(SystemTime::now().checked_sub(self.retention).unwrap_or(SystemTime::UNIX_EPOCH));
        let mut outcome = PurgeOutcome::default();
        while !stop.is_cancelled() {
            let deleted = self.store.purge_history(cutoff, self.batch).await?;
            outcome.batches += 1;
            outcome.history_rows += deleted;
            if deleted == 0 {
                break;
            }
            tokio::time::sleep(self.pause).await;
        }
        outcome.snapshot_rows = self.store.purge_map_snapshots(cutoff).await?;
        if outcome.history_rows > 0 || outcome.snapshot_rows > 0 {
            tracing::info!(
                { names::HISTORY_PURGED_ROWS } = outcome.history_rows,
                { names::HISTORY_PURGED_SNAPSHOTS } = outcome.snapshot_rows,
                batches = outcome.batches,
                "old history purged"
            );
        }
        Ok(outcome)
    }

    /// Purge at start and then hourly until `stop`. Failures are logged and
    /// retried at the next round.
    pub async fn run_until_stopped(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.try_purge_once(&stop).await {
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "history purge failed; retrying later");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
        tracing::debug!("history retention stopped");
    }
}

#[cfg(test)]
mod tests {
    use ntex::util::Bytes;

    use super::*;
    use crate::domain::WriteOp;
    use crate::domain::time::from_millis;
    use crate::domain::{TopicLimits, TopicName};
    use crate::store::{HistoryQuery, spawn_writer};

    #[tokio::test]
    async fn old_history_goes_in_small_batches_and_recent_history_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::connect(&format!("sqlite://{}/t.db", dir.path().display()), 2).await.unwrap();
        store.migrate().await.unwrap();
        let (writer, _) = spawn_writer(store.clone(), Duration::ZERO);
        let topic = TopicName::parse("devices/a/location", TopicLimits::default()).unwrap();
        let now = millis(SystemTime::now());
        let row = |at: i64| WriteOp::AppendHistory {
            topic: topic.clone(),
            payload: Bytes::from_static(b"{}"),
            content_type: None,
            received_at: from_millis(at),
        };
        // 25 rows 40 days old, then 3 from today, in arrival order.
        let mut ops: Vec<WriteOp> = (0..25).map(|i| row(now - 40 * 86_400_000 + i)).collect();
        ops.extend((0..3).map(|i| row(now - 1000 + i)));
        writer.submit_durable(ops).unwrap().await.unwrap().unwrap();

        let retention =
            HistoryRetention::new(store.clone(), 30).with_batch(10, Duration::from_millis(1));
        let outcome = retention.try_purge_once(&CancellationToken::new()).await.unwrap();

        assert_eq!(outcome.history_rows, 25);
        assert_eq!(outcome.batches, 4, "three batches of at most 10, then an empty one");
        let left = store
            .history_page(HistoryQuery {
                topic: topic.to_string(),
                since: None,
                until: None,
                before: None,
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(left.items.len(), 3);
        let again = retention.try_purge_once(&CancellationToken::new()).await.unwrap();
        assert_eq!((again.history_rows, again.batches), (0, 1));
    }
}
