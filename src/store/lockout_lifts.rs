//! Requests to lift sign-in lockouts, written by `mapcast user unlock` and
//! polled by running servers (see `identities::lifts`).

use sqlx::Row;

use super::Store;

impl Store {
    /// Ask running servers to lift the lockouts of `username`, at `now`.
    pub async fn request_lockout_lift(&self, username: &str, now: i64) -> Result<(), sqlx::Error> {
        let (pool, username) = (self.pool().clone(), username.to_owned());
        self.run(async move {
            sqlx::query(
                "INSERT INTO lockout_lifts (username, requested_at) VALUES ($1, $2) \
                 ON CONFLICT (username) DO UPDATE SET requested_at = excluded.requested_at",
            )
            .bind(username)
            .bind(now)
            .execute(&pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Lift requests made after `since`, oldest first: `(username, requested_at)`.
    pub async fn lockout_lifts_after(&self, since: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let rows = sqlx::query(
                "SELECT username, requested_at FROM lockout_lifts WHERE requested_at > $1 \
                 ORDER BY requested_at LIMIT 1000",
            )
            .bind(since)
            .fetch_all(&pool)
            .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
        .await
    }

    /// Forget lift requests made before `before`.
    pub async fn purge_lockout_lifts(&self, before: i64) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let done = sqlx::query("DELETE FROM lockout_lifts WHERE requested_at < $1")
                .bind(before)
                .execute(&pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    /// Ask running servers to close the connections of `principal`.
    pub async fn request_revocation(&self, principal: &str, now: i64) -> Result<(), sqlx::Error> {
        let (pool, principal) = (self.pool().clone(), principal.to_owned());
        self.run(async move {
            sqlx::query(
                "INSERT INTO revocation_requests (principal, requested_at) VALUES ($1, $2) \
                 ON CONFLICT (principal) DO UPDATE SET requested_at = excluded.requested_at",
            )
            .bind(principal)
            .bind(now)
            .execute(&pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Revocation requests made after `since`, oldest first: `(principal, requested_at)`.
    pub async fn revocations_after(&self, since: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let rows = sqlx::query(
                "SELECT principal, requested_at FROM revocation_requests WHERE requested_at > $1 \
                 ORDER BY requested_at LIMIT 1000",
            )
            .bind(since)
            .fetch_all(&pool)
            .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
        .await
    }

    /// Forget revocation requests made before `before`.
    pub async fn purge_revocations(&self, before: i64) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let done = sqlx::query("DELETE FROM revocation_requests WHERE requested_at < $1")
                .bind(before)
                .execute(&pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
