//! `fabric_outbox`: acknowledged publishes an instance has not appended to
//! the fabric yet. Written in the publish's own transaction, so a crash
//! during a Redis outage loses none; read back at start.

use std::sync::Arc;

use sqlx::{Any, Row};

use super::{Backend, Store};
use crate::domain::FabricPos;

/// Rows per multi-row insert (three parameters each).
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// The largest `seq` kept for `node`, or 0.
    pub async fn fabric_outbox_last(&self, node: &str) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        let node = node.to_owned();
        self.run(async move {
            let row = sqlx::query("SELECT MAX(seq) FROM fabric_outbox WHERE node = $1")
                .bind(node)
                .fetch_one(&pool)
                .await?;
            Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    /// The nodes with kept entries.
    pub async fn fabric_outbox_nodes(&self) -> Result<Vec<String>, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            sqlx::query_scalar("SELECT DISTINCT node FROM fabric_outbox").fetch_all(&pool).await
        })
        .await
    }

    /// Up to `limit` of `node`'s kept entries with `after < seq <= through`,
    /// oldest first.
    pub async fn fabric_outbox_page(
        &self,
        node: &str,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, sqlx::Error> {
        let pool = self.pool().clone();
        let node = node.to_owned();
        self.run(async move {
            let rows = sqlx::query(
                "SELECT seq, entry FROM fabric_outbox WHERE node = $1 AND seq > $2 AND seq <= $3 \
                 ORDER BY seq LIMIT $4",
            )
            .bind(node)
            .bind(after as i64)
            .bind(through as i64)
            .bind(limit as i64)
            .fetch_all(&pool)
            .await?;
            rows.into_iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)? as u64, r.try_get::<Vec<u8>, _>(1)?)))
                .collect()
        })
        .await
    }

    /// The fabric entry up to which `node` committed the effects of the
    /// other instances' publishes on its sessions (see
    /// `WriteOp::FabricCursor`), if it kept one.
    pub async fn fabric_cursor(&self, node: &str) -> Result<Option<FabricPos>, sqlx::Error> {
        let pool = self.pool().clone();
        let node = node.to_owned();
        self.run(async move {
            let row = sqlx::query("SELECT ms, seq FROM fabric_cursors WHERE node = $1")
                .bind(node)
                .fetch_optional(&pool)
                .await?;
            row.map(|r| {
                Ok(FabricPos {
                    ms: r.try_get::<i64, _>(0)?.max(0) as u64,
                    seq: r.try_get::<i64, _>(1)?.max(0) as u64,
                })
            })
            .transpose()
        })
        .await
    }
}

/// The outbox writes of one commit: rows inserted many per statement, then
/// the deletions (after, so a row appended and deleted within one commit
/// does not stay).
#[derive(Default)]
pub(crate) struct OutboxBatch {
    rows: Vec<(Arc<str>, u64, ntex::util::Bytes)>,
    deletes: Vec<(Arc<str>, u64)>,
    /// The newest fabric cursor per instance: one row written per commit.
    cursors: Vec<(Arc<str>, FabricPos)>,
}

impl OutboxBatch {
    pub(crate) fn add(&mut self, node: Arc<str>, seq: u64, entry: ntex::util::Bytes) {
        self.rows.push((node, seq, entry));
    }

    pub(crate) fn delete_through(&mut self, node: Arc<str>, through: u64) {
        match self.deletes.iter_mut().find(|(n, _)| *n == node) {
            Some((_, t)) => *t = (*t).max(through),
            None => self.deletes.push((node, through)),
        }
    }

    pub(crate) fn cursor(&mut self, node: Arc<str>, at: FabricPos) {
        match self.cursors.iter_mut().find(|(n, _)| *n == node) {
            Some((_, p)) => *p = (*p).max(at),
            None => self.cursors.push((node, at)),
        }
    }

    pub(crate) async fn execute(
        self,
        tx: &mut sqlx::Transaction<'_, Any>,
        backend: Backend,
    ) -> Result<(), sqlx::Error> {
        for chunk in self.rows.chunks(ROWS_PER_STATEMENT) {
            // A row already there is the same publish (a retried commit).
            let sql = format!(
                "INSERT INTO fabric_outbox (node, seq, entry) VALUES {} \
                 ON CONFLICT (node, seq) DO NOTHING",
                backend.value_rows(chunk.len(), 3)
            );
            let mut q = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql));
            for (node, seq, entry) in chunk {
                q = q.bind(node.to_string()).bind(*seq as i64).bind(entry.to_vec());
            }
            q.execute(&mut **tx).await?;
        }
        for (node, through) in self.deletes {
            sqlx::query("DELETE FROM fabric_outbox WHERE node = $1 AND seq <= $2")
                .bind(node.to_string())
                .bind(through as i64)
                .execute(&mut **tx)
                .await?;
        }
        for (node, at) in self.cursors {
            // Never backwards: a cursor only grows.
            sqlx::query(
                "INSERT INTO fabric_cursors (node, ms, seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (node) DO UPDATE SET ms = excluded.ms, seq = excluded.seq \
                 WHERE fabric_cursors.ms < excluded.ms \
                   OR (fabric_cursors.ms = excluded.ms AND fabric_cursors.seq < excluded.seq)",
            )
            .bind(node.to_string())
            .bind(at.ms as i64)
            .bind(at.seq as i64)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WriteOp;
    use crate::store::spawn_writer;

    #[tokio::test]
    async fn kept_entries_come_back_in_order_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/o.db", dir.path().display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let (writer, _task) = spawn_writer(store.clone(), std::time::Duration::ZERO);
        let a: Arc<str> = Arc::from("a");
        let put = |node: &Arc<str>, seq: u64| WriteOp::PutFabricOutbox {
            node: node.clone(),
            seq,
            entry: ntex::util::Bytes::from(format!("e{seq}")),
        };
        let ops = vec![put(&a, 12), put(&a, 10), put(&a, 11), put(&Arc::from("b"), 99)];
        writer.submit_durable(ops).unwrap().await.unwrap().unwrap();
        assert_eq!(store.fabric_outbox_last("a").await.unwrap(), 12);
        assert_eq!(store.fabric_outbox_last("nobody").await.unwrap(), 0);
        let page = store.fabric_outbox_page("a", 0, 11, 10).await.unwrap();
        assert_eq!(page, vec![(10, b"e10".to_vec()), (11, b"e11".to_vec())]);

        let done = WriteOp::DeleteFabricOutbox { node: a.clone(), through: 11 };
        writer.submit_durable(vec![done]).unwrap().await.unwrap().unwrap();
        let page = store.fabric_outbox_page("a", 0, u64::MAX >> 1, 10).await.unwrap();
        assert_eq!(page, vec![(12, b"e12".to_vec())]);
        assert_eq!(store.fabric_outbox_page("b", 0, 100, 10).await.unwrap().len(), 1);

        let at = |ms, seq| WriteOp::FabricCursor { node: a.clone(), at: FabricPos { ms, seq } };
        assert_eq!(store.fabric_cursor("a").await.unwrap(), None);
        writer.submit_durable(vec![at(5, 2), at(7, 0), at(6, 9)]).unwrap().await.unwrap().unwrap();
        assert_eq!(store.fabric_cursor("a").await.unwrap(), Some(FabricPos { ms: 7, seq: 0 }));
        writer.submit_durable(vec![at(7, 0)]).unwrap().await.unwrap().unwrap();
        writer.submit_durable(vec![at(6, 1)]).unwrap().await.unwrap().unwrap();
        assert_eq!(store.fabric_cursor("a").await.unwrap(), Some(FabricPos { ms: 7, seq: 0 }));
        writer.submit_durable(vec![at(7, 1)]).unwrap().await.unwrap().unwrap();
        assert_eq!(store.fabric_cursor("a").await.unwrap(), Some(FabricPos { ms: 7, seq: 1 }));
    }
}
