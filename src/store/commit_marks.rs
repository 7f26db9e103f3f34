//! Commits whose answer was lost. A COMMIT that ran past the writer's time
//! limit, or whose connection broke while it ran, may have committed or
//! not. Telling its callers "failed" when it did commit makes them send
//! again (a QoS 2 message stored twice, reaching its subscriber twice);
//! telling them "done" when it did not loses their writes. So each
//! transaction of a writer first stamps its number in the writer's row of
//! `writer_commits`, and an unanswered COMMIT is looked up there behind the
//! row's lock: the lookup waits until that transaction has ended, either way.

use std::time::{Duration, SystemTime};

use rand_core::{OsRng, RngCore};
use sqlx::Any;

use super::Store;
use crate::domain::time::millis;

/// Rows of writers that have not stamped for this long are removed (runs
/// that ended without removing their own, e.g. killed).
const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// One writer's numbering of its transactions.
pub(super) struct CommitMarks {
    /// Random per run: instances sharing a database, and runs one after
    /// another, never share a row.
    writer: String,
    last: i64,
    pruned: bool,
}

impl CommitMarks {
    pub(super) fn new() -> Self {
        Self { writer: format!("{:016x}", OsRng.next_u64()), last: 0, pruned: false }
    }

    /// The number of the next transaction.
    pub(super) fn next(&mut self) -> i64 {
        self.last += 1;
        self.last
    }

    /// Stamp `n` as the first write of the transaction on `conn`, so the
    /// row stays locked until it ends. Once per run, older writers' rows go.
    pub(super) async fn stamp(
        &mut self,
        conn: &mut sqlx::AnyConnection,
        n: i64,
    ) -> Result<(), sqlx::Error> {
        let now = millis(SystemTime::now());
        sqlx::query::<Any>(
            "INSERT INTO writer_commits (writer, batch, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (writer) DO UPDATE SET batch = excluded.batch, updated_at = excluded.updated_at",
        )
        .bind(self.writer.as_str())
        .bind(n)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if !self.pruned {
            sqlx::query::<Any>("DELETE FROM writer_commits WHERE updated_at < $1")
                .bind(now - STALE_AFTER.as_millis() as i64)
                .execute(&mut *conn)
                .await?;
            self.pruned = true;
        }
        Ok(())
    }

    /// Whether transaction `n`, whose COMMIT went unanswered, committed.
    /// Takes the row's lock on a fresh connection (waiting for that
    /// transaction to end), reads, and rolls back. A row that is not there
    /// yet (the run's first transaction did not commit) is inserted only
    /// inside this rolled-back lookup, which also waits on such an insert.
    pub(super) async fn committed(&self, store: &Store, n: i64) -> Result<bool, sqlx::Error> {
        let mut conn = store.pool().acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query::<Any>(
            "INSERT INTO writer_commits (writer, batch, updated_at) VALUES ($1, 0, 0) \
             ON CONFLICT (writer) DO UPDATE SET updated_at = writer_commits.updated_at",
        )
        .bind(self.writer.as_str())
        .execute(&mut *tx)
        .await?;
        let stamped: i64 =
            sqlx::query_scalar::<Any, i64>("SELECT batch FROM writer_commits WHERE writer = $1")
                .bind(self.writer.as_str())
                .fetch_one(&mut *tx)
                .await?;
        tx.rollback().await?;
        Ok(stamped >= n)
    }

    /// The run ends: its row goes with it.
    pub(super) async fn remove(&self, conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        sqlx::query::<Any>("DELETE FROM writer_commits WHERE writer = $1")
            .bind(self.writer.as_str())
            .execute(conn)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::temp_store as store;

    async fn stamp(store: &Store, marks: &mut CommitMarks, commit: bool) -> i64 {
        let n = marks.next();
        let mut conn = store.pool().acquire().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        marks.stamp(&mut tx, n).await.unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        n
    }

    #[tokio::test]
    async fn a_lookup_tells_a_committed_transaction_from_one_that_was_not() {
        let (_dir, store) = store().await;
        let mut marks = CommitMarks::new();
        // The run's first transaction, rolled back: no row yet.
        let first = stamp(&store, &mut marks, false).await;
        assert!(!marks.committed(&store, first).await.unwrap());
        let second = stamp(&store, &mut marks, true).await;
        assert!(marks.committed(&store, second).await.unwrap());
        let third = stamp(&store, &mut marks, false).await;
        assert!(!marks.committed(&store, third).await.unwrap());
        // Another run's row is its own.
        let other = CommitMarks::new();
        assert!(!other.committed(&store, 1).await.unwrap());
    }

    #[tokio::test]
    async fn a_stopping_run_removes_its_row_and_a_new_run_prunes_stale_ones() {
        let (_dir, store) = store().await;
        let mut marks = CommitMarks::new();
        stamp(&store, &mut marks, true).await;
        sqlx::query::<Any>("INSERT INTO writer_commits VALUES ('killed', 9, 0)")
            .execute(store.pool())
            .await
            .unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        marks.remove(&mut conn).await.unwrap();
        let rows: Vec<String> =
            sqlx::query_scalar::<Any, String>("SELECT writer FROM writer_commits")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, vec!["killed".to_owned()]);
        let mut next_run = CommitMarks::new();
        stamp(&store, &mut next_run, true).await;
        let rows: Vec<String> =
            sqlx::query_scalar::<Any, String>("SELECT writer FROM writer_commits")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, vec![next_run.writer.clone()], "the stale row is pruned");
    }
}
