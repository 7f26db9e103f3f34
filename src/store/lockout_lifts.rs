//! Requests from the command line to running servers, polled by them (see
//! `identities::lifts`): lift sign-in lockouts (`mapcast user unlock`), and
//! close the connections of a deleted or re-keyed principal. Both are one
//! table of `(key, requested_at)` rows.

use sqlx::Row;

use super::Store;

/// A kind of request: its three statements (one table of `(key,
/// requested_at)` each, one row per key).
struct Requests {
    insert: &'static str,
    after: &'static str,
    purge: &'static str,
}

const LOCKOUT_LIFTS: Requests = Requests {
    insert: "INSERT INTO lockout_lifts (username, requested_at) VALUES ($1, $2) \
             ON CONFLICT (username) DO UPDATE SET requested_at = excluded.requested_at",
    after: "SELECT username, requested_at FROM lockout_lifts WHERE requested_at > $1 \
            ORDER BY requested_at LIMIT 1000",
    purge: "DELETE FROM lockout_lifts WHERE requested_at < $1",
};

const REVOCATIONS: Requests = Requests {
    insert: "INSERT INTO revocation_requests (principal, requested_at) VALUES ($1, $2) \
             ON CONFLICT (principal) DO UPDATE SET requested_at = excluded.requested_at",
    after: "SELECT principal, requested_at FROM revocation_requests WHERE requested_at > $1 \
            ORDER BY requested_at LIMIT 1000",
    purge: "DELETE FROM revocation_requests WHERE requested_at < $1",
};

impl Store {
    /// Ask running servers to lift the lockouts of `username`, at `now`.
    pub async fn request_lockout_lift(&self, username: &str, now: i64) -> Result<(), sqlx::Error> {
        self.request(&LOCKOUT_LIFTS, username, now).await
    }

    /// Lift requests made after `since`, oldest first: `(username, requested_at)`.
    pub async fn lockout_lifts_after(&self, since: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        self.requests_after(&LOCKOUT_LIFTS, since).await
    }

    /// Forget lift requests made before `before`.
    pub async fn purge_lockout_lifts(&self, before: i64) -> Result<u64, sqlx::Error> {
        self.purge_requests(&LOCKOUT_LIFTS, before).await
    }

    /// Ask running servers to close the connections of `principal`.
    pub async fn request_revocation(&self, principal: &str, now: i64) -> Result<(), sqlx::Error> {
        self.request(&REVOCATIONS, principal, now).await
    }

    /// Revocation requests made after `since`, oldest first: `(principal, requested_at)`.
    pub async fn revocations_after(&self, since: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
        self.requests_after(&REVOCATIONS, since).await
    }

    /// Forget revocation requests made before `before`.
    pub async fn purge_revocations(&self, before: i64) -> Result<u64, sqlx::Error> {
        self.purge_requests(&REVOCATIONS, before).await
    }

    /// One request per key: a newer one replaces it.
    async fn request(&self, kind: &Requests, key: &str, now: i64) -> Result<(), sqlx::Error> {
        let (pool, key, sql) = (self.pool().clone(), key.to_owned(), kind.insert);
        self.run(async move {
            sqlx::query(sql).bind(key).bind(now).execute(&pool).await?;
            Ok(())
        })
        .await
    }

    async fn requests_after(
        &self,
        kind: &Requests,
        since: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let (pool, sql) = (self.pool().clone(), kind.after);
        self.run(async move {
            let rows = sqlx::query(sql).bind(since).fetch_all(&pool).await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
        .await
    }

    async fn purge_requests(&self, kind: &Requests, before: i64) -> Result<u64, sqlx::Error> {
        let (pool, sql) = (self.pool().clone(), kind.purge);
        self.run(async move {
            let done = sqlx::query(sql).bind(before).execute(&pool).await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
