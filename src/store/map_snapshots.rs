//! `map_snapshots`: one row per published map, so versions keep rising
//! across restarts and operators can see sizes and build times.

use ntex::util::Bytes;
use sqlx::Row;

use super::Store;

/// What is recorded about one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub version: u64,
    /// Milliseconds since the epoch.
    pub generated_at: i64,
    pub count: u64,
    pub raw_bytes: u64,
    pub gzip_bytes: u64,
    pub build_ms: u64,
}

impl Store {
    /// The highest version ever recorded (0 when none).
    pub async fn last_map_version(&self) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let row =
                sqlx::query("SELECT MAX(version) FROM map_snapshots").fetch_one(&pool).await?;
            let max: Option<i64> = row.try_get(0)?;
            Ok(max.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    /// Record a build. With `document` (several instances share the
    /// database) the snapshot's gzip document is kept with it, for the
    /// others to serve, and older documents are let go in the same commit.
    pub async fn record_map_snapshot(
        &self,
        r: SnapshotRecord,
        document: Option<Bytes>,
    ) -> Result<(), sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let mut tx = pool.begin().await?;
            let shared = document.is_some();
            sqlx::query(
                "INSERT INTO map_snapshots \
                 (version, generated_at, count, raw_bytes, gzip_bytes, build_ms, document) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(r.version as i64)
            .bind(r.generated_at)
            .bind(r.count as i64)
            .bind(r.raw_bytes as i64)
            .bind(r.gzip_bytes as i64)
            .bind(r.build_ms as i64)
            .bind(document.map(|d| d.to_vec()))
            .execute(&mut *tx)
            .await?;
            if shared {
                sqlx::query(
                    "UPDATE map_snapshots SET document = NULL \
                     WHERE version < $1 AND document IS NOT NULL",
                )
                .bind(r.version as i64)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// The newest stored map document if it is newer than `after`:
    /// `(version, gzip document)`.
    pub async fn map_document_after(
        &self,
        after: u64,
    ) -> Result<Option<(u64, Bytes)>, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let row = sqlx::query(
                "SELECT version, document FROM map_snapshots \
                 WHERE version > $1 AND document IS NOT NULL ORDER BY version DESC LIMIT 1",
            )
            .bind(after as i64)
            .fetch_optional(&pool)
            .await?;
            row.map(|r| {
                let version: i64 = r.try_get(0)?;
                let document: Vec<u8> = r.try_get(1)?;
                Ok((version.max(0) as u64, Bytes::from(document)))
            })
            .transpose()
        })
        .await
    }

    /// Forget snapshot rows generated before `cutoff_ms`, always keeping the
    /// newest (it carries the version forward).
    pub async fn purge_map_snapshots(&self, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let done = sqlx::query(
                "DELETE FROM map_snapshots WHERE generated_at < $1 \
                 AND version < (SELECT MAX(version) FROM map_snapshots)",
            )
            .bind(cutoff_ms)
            .execute(&pool)
            .await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
