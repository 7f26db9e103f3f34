//! `history`: messages of the topics with history enabled, appended by the
//! batching writer, paged newest first by `(received_at, seq)`, and purged
//! in small batches by the retention job.

use std::time::SystemTime;

use ntex::util::{ByteString, Bytes};
use sqlx::{Any, Row};

use super::{Backend, Store};
use crate::domain::TopicName;
use crate::domain::time::millis;

/// Rows per multi-row insert (4 parameters each).
const ROWS_PER_STATEMENT: usize = 250;

/// The history rows of one writer batch.
#[derive(Default)]
pub(crate) struct HistoryBatch(Vec<(TopicName, Bytes, Option<ByteString>, i64)>);

impl HistoryBatch {
    pub(crate) fn add(
        &mut self,
        topic: TopicName,
        payload: Bytes,
        content_type: Option<ByteString>,
        received_at: SystemTime,
    ) {
        self.0.push((topic, payload, content_type, millis(received_at)));
    }

    pub(crate) async fn execute(
        self,
        tx: &mut sqlx::Transaction<'_, Any>,
        backend: Backend,
    ) -> Result<(), sqlx::Error> {
        for chunk in self.0.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO history (topic, payload, content_type, received_at) VALUES {}",
                backend.value_rows(chunk.len(), 4)
            );
            let mut q = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql));
            for (topic, payload, content_type, at) in chunk {
                q = q
                    .bind(topic.as_str().to_owned())
                    .bind(payload.to_vec())
                    .bind(content_type.as_ref().map(|c| c.to_string()))
                    .bind(*at);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub seq: i64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    /// Milliseconds since the epoch.
    pub received_at: i64,
}

/// Where a page starts: strictly older than this `(received_at, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    pub received_at: i64,
    pub seq: i64,
}

/// A page request for one topic; times in epoch milliseconds, inclusive.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub topic: String,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub before: Option<HistoryCursor>,
    pub limit: u32,
}

/// A page, newest first, and where the next one starts (if there is one).
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub items: Vec<HistoryItem>,
    pub next: Option<HistoryCursor>,
}

impl Store {
    pub async fn history_page(&self, q: HistoryQuery) -> Result<HistoryPage, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let before = q.before.unwrap_or(HistoryCursor { received_at: i64::MAX, seq: i64::MAX });
            let rows = sqlx::query(
                "SELECT seq, topic, payload, content_type, received_at FROM history \
                 WHERE topic = $1 AND received_at >= $2 AND received_at <= $3 \
                 AND (received_at < $4 OR (received_at = $4 AND seq < $5)) \
                 ORDER BY received_at DESC, seq DESC LIMIT $6",
            )
            .bind(q.topic)
            .bind(q.since.unwrap_or(i64::MIN))
            .bind(q.until.unwrap_or(i64::MAX))
            .bind(before.received_at)
            .bind(before.seq)
            .bind(i64::from(q.limit) + 1)
            .fetch_all(&pool)
            .await?;
            let mut items = rows
                .iter()
                .map(|r| {
                    Ok(HistoryItem {
                        seq: r.try_get(0)?,
                        topic: r.try_get(1)?,
                        payload: r.try_get(2)?,
                        content_type: r.try_get(3)?,
                        received_at: r.try_get(4)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let more = items.len() > q.limit as usize;
            items.truncate(q.limit as usize);
            let next = more
                .then(|| {
                    items.last().map(|i| HistoryCursor { received_at: i.received_at, seq: i.seq })
                })
                .flatten();
            Ok(HistoryPage { items, next })
        })
        .await
    }

    /// Delete the history rows received before `cutoff_ms` among the `batch`
    /// oldest sequence numbers; returns how many went (0: nothing old is
    /// left). One short statement over a primary-key range, so it never
    /// holds the table for long nor scans it: rows are appended in
    /// `received_at` order, so the old ones are the low sequence numbers.
    pub async fn purge_history(&self, cutoff_ms: i64, batch: u32) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let done = sqlx::query(
                "DELETE FROM history WHERE seq IN (SELECT seq FROM history \
                 WHERE seq < (SELECT MIN(seq) FROM history) + $2 AND received_at < $1)",
            )
            .bind(cutoff_ms)
            .bind(i64::from(batch))
            .execute(&pool)
            .await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
