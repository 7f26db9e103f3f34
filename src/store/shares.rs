//! Share links as stored: one row per link, keyed by a random id (to list
//! and revoke) and found by the SHA-256 of its token (to open it).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;

/// A share row. `token_hash` is the hex SHA-256 of the token.
#[derive(Debug, Clone)]
pub struct ShareRecord {
    pub id: String,
    pub token_hash: String,
    pub device_id: String,
    /// The user who made it.
    pub created_by: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

const COLUMNS: &str = "id, token_hash, device_id, created_by, expires_at, revoked_at, created_at";

fn share(row: &AnyRow) -> Result<ShareRecord, sqlx::Error> {
    Ok(ShareRecord {
        id: row.try_get(0)?,
        token_hash: row.try_get(1)?,
        device_id: row.try_get(2)?,
        created_by: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        revoked_at: row.try_get(5)?,
        created_at: row.try_get(6)?,
    })
}

impl Store {
    /// Store a new link unless `device_id` already has `max_live` links
    /// live at `now` (then `false`). Links that ended before `purge_before`
    /// are dropped on the way, so the table stays bounded.
    ///
    /// Count and insert are one transaction that first writes the device's
    /// row: on PostgreSQL that row lock queues concurrent creates for the
    /// same device, on SQLite the write lock queues every writer, so two
    /// requests can never both see 49 and both insert.
    pub async fn insert_share(
        &self,
        share: ShareRecord,
        now: i64,
        purge_before: i64,
        max_live: i64,
    ) -> Result<bool, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            sqlx::query(
                "DELETE FROM shares WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
            )
            .bind(purge_before)
            .execute(&pool)
            .await?;
            let mut tx = pool.begin().await?;
            let device = sqlx::query("UPDATE devices SET id = id WHERE id = $1")
                .bind(share.device_id.clone())
                .execute(&mut *tx)
                .await?;
            let live: i64 = sqlx::query(
                "SELECT COUNT(*) FROM shares WHERE device_id = $1 AND revoked_at IS NULL AND expires_at > $2",
            )
            .bind(share.device_id.clone())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            if device.rows_affected() == 0 || live >= max_live {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO shares (id, token_hash, device_id, created_by, expires_at, revoked_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, NULL, $6)",
            )
            .bind(share.id)
            .bind(share.token_hash)
            .bind(share.device_id)
            .bind(share.created_by)
            .bind(share.expires_at)
            .bind(share.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// The link whose token hashes to `token_hash`, live or not.
    pub async fn share_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<ShareRecord>, sqlx::Error> {
        let (pool, token_hash) = (self.pool().clone(), token_hash.to_owned());
        self.run(async move {
            let sql = format!("SELECT {COLUMNS} FROM shares WHERE token_hash = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(token_hash)
                .fetch_optional(&pool)
                .await?;
            row.as_ref().map(share).transpose()
        })
        .await
    }

    /// The links of `device_id`, newest first.
    pub async fn shares_of(&self, device_id: &str) -> Result<Vec<ShareRecord>, sqlx::Error> {
        let (pool, device_id) = (self.pool().clone(), device_id.to_owned());
        self.run(async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM shares WHERE device_id = $1 ORDER BY created_at DESC, id"
            );
            let rows =
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(device_id).fetch_all(&pool).await?;
            rows.iter().map(share).collect()
        })
        .await
    }

    /// Revoke link `id` of `device_id` at `now`; `false` if there is no such
    /// link or it was already revoked.
    pub async fn revoke_share(
        &self,
        device_id: &str,
        id: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let (pool, device_id, id) = (self.pool().clone(), device_id.to_owned(), id.to_owned());
        self.run(async move {
            let done = sqlx::query(
                "UPDATE shares SET revoked_at = $3 WHERE id = $1 AND device_id = $2 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(device_id)
            .bind(now)
            .execute(&pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }
}
