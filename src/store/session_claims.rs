//! `session_claims`: which instance holds each client id's session, under
//! which epoch, among several sharing a PostgreSQL database (see
//! `cluster::ownership`). An instance is alive while its `node:<instance>`
//! lease runs.

use std::time::SystemTime;

use sqlx::Row;

use super::Store;
use crate::domain::SEQ_BLOCK_BITS;
use crate::domain::time::millis;

/// The lease an instance renews to say it is alive.
pub fn node_lease(node: &str) -> String {
    format!("node:{node}")
}

/// What claiming a client id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// Higher than every epoch the id was claimed under before.
    pub epoch: u64,
    /// The instance that held it until now, if any.
    pub previous: Option<String>,
    /// Whether that instance's lease still runs.
    pub previous_alive: bool,
    /// The instance that last held the session, if one did.
    pub source: Option<String>,
}

/// A dead instance's claim taken over by [`Store::adopt_dead_claims`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadClaim {
    pub client_id: String,
    /// The dead instance (run) that last held it (queued for it).
    pub node: String,
    /// The new claim's epoch.
    pub epoch: u64,
    /// The packed will of the dead holder's connection, if it had one
    /// that was not published yet.
    pub will: Option<Vec<u8>>,
    pub will_delay: u32,
    /// When the dead holder's lease ran out (now, if it gave it up).
    pub lapsed_at: SystemTime,
    /// Whether a session is stored for it.
    pub has_session: bool,
}

impl Store {
    /// Claim `client_id` for `node` on behalf of `owner` with a fresh
    /// epoch, in one transaction: concurrent claims of one id are
    /// serialized by an advisory lock, so each sees the one before it as
    /// the previous holder. `None` when the id's session belongs to another
    /// principal (its stored session, or a live instance's claim) and
    /// `take_over_any` (an admin's right) is not set.
    ///
    /// `will` (the packed message and its delay) is kept with the claim, so
    /// another instance publishes it should this one die.
    pub async fn claim_session(
        &self,
        client_id: &str,
        node: &str,
        owner: &str,
        take_over_any: bool,
        will: Option<(Vec<u8>, u32)>,
    ) -> Result<Option<ClaimRecord>, sqlx::Error> {
        let pool = self.pool().clone();
        let (will, will_delay) = will.map_or((None, 0), |(w, d)| (Some(w), i64::from(d)));
        let client_id = client_id.to_owned();
        let node = node.to_owned();
        let owner = owner.to_owned();
        let now = millis(SystemTime::now());
        self.run(async move {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::TEXT")
                .bind(&client_id)
                .execute(&mut *tx)
                .await?;
            let previous = sqlx::query(
                "SELECT c.node, c.owner, EXISTS (SELECT 1 FROM leases l \
                   WHERE l.name = 'node:' || c.node AND l.expires_at >= $2), c.source \
                 FROM session_claims c WHERE c.client_id = $1",
            )
            .bind(&client_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let stored_owner: Option<Option<String>> =
                sqlx::query("SELECT owner FROM sessions WHERE client_id = $1")
                    .bind(&client_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
            let mut record =
                ClaimRecord { epoch: 0, previous: None, previous_alive: false, source: None };
            let mut theirs = stored_owner.flatten().is_some_and(|o| o != owner);
            if let Some(r) = previous {
                let claimed_by: String = r.try_get(1)?;
                record.previous = Some(r.try_get(0)?);
                record.previous_alive = r.try_get(2)?;
                record.source = r.try_get(3)?;
                theirs |= record.previous_alive && !claimed_by.is_empty() && claimed_by != owner;
            }
            if theirs && !take_over_any {
                return Ok(None);
            }
            let epoch: i64 = sqlx::query(
                "INSERT INTO session_claims (client_id, node, epoch, owner, will, will_delay) \
                 VALUES ($1, $2, nextval('session_claim_epochs'), $3, $4, $5) \
                 ON CONFLICT (client_id) DO UPDATE SET node = excluded.node, \
                 epoch = excluded.epoch, owner = excluded.owner, will = excluded.will, \
                 will_delay = excluded.will_delay \
                 RETURNING epoch",
            )
            .bind(&client_id)
            .bind(&node)
            .bind(&owner)
            .bind(will)
            .bind(will_delay)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            tx.commit().await?;
            record.epoch = epoch as u64;
            Ok(Some(record))
        })
        .await
    }

    /// Take `instance`'s lease (see [`node_lease`]) unless another run of
    /// cluster node `node_id` still holds its own: then that run's name.
    /// Runs are named `<node_id>/<pid>/<mark>`; `predecessor`, the run
    /// before `instance` on the same data directory, is known to be dead
    /// and does not count. Checks and takes under one lock per node id, so
    /// of two runs starting at once one finds the other.
    pub async fn hold_node_run(
        &self,
        node_id: &str,
        instance: &str,
        predecessor: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, sqlx::Error> {
        let pool = self.pool().clone();
        let node_id = node_id.to_owned();
        let instance = instance.to_owned();
        let predecessor = predecessor.map(str::to_owned);
        let now = millis(SystemTime::now());
        self.run(async move {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('node_id:' || $1))::TEXT")
                .bind(&node_id)
                .execute(&mut *tx)
                .await?;
            let live: Vec<String> = sqlx::query_scalar(
                "SELECT holder FROM leases WHERE name LIKE 'node:%' AND expires_at >= $1",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let other = live.into_iter().find(|run| {
                *run != instance
                    && predecessor.as_ref() != Some(run)
                    && run.rsplitn(3, '/').nth(2) == Some(node_id.as_str())
            });
            if other.is_some() {
                return Ok(other);
            }
            sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at",
            )
            .bind(node_lease(&instance))
            .bind(&instance)
            .bind(now + ttl.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(None)
        })
        .await
    }

    /// Claim, for `node`, every stored session no instance ever claimed
    /// (kept by a single instance before several shared the store); the
    /// ids and their epochs. A dead instance's claims are left to
    /// [`Store::adopt_dead_claims`]: whoever takes one replays what its
    /// holder missed, which a plain restore here would not.
    pub async fn claim_orphaned_sessions(
        &self,
        node: &str,
    ) -> Result<Vec<(String, u64)>, sqlx::Error> {
        let pool = self.pool().clone();
        let node = node.to_owned();
        self.run(async move {
            let rows = sqlx::query(
                "INSERT INTO session_claims (client_id, node, epoch, owner) \
                 SELECT s.client_id, $1, nextval('session_claim_epochs'), COALESCE(s.owner, '') \
                 FROM sessions s \
                 LEFT JOIN session_claims c ON c.client_id = s.client_id \
                 WHERE c.client_id IS NULL \
                 ON CONFLICT (client_id) DO NOTHING \
                 RETURNING client_id, epoch",
            )
            .bind(&node)
            .fetch_all(&pool)
            .await?;
            rows.into_iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)? as u64)))
                .collect()
        })
        .await
    }

    /// Take over, for `node`, up to `limit` claims of dead instances (lease
    /// lapsed or given up) that left a stored session or a will, each under
    /// a fresh epoch. Each claim goes to one instance only: rows another
    /// instance is taking are skipped (so survivors share the work), a
    /// claim a CONNECT holds the client id's lock for is left to it, and a
    /// claim that changed meanwhile is not touched.
    pub async fn adopt_dead_claims(
        &self,
        node: &str,
        limit: u32,
    ) -> Result<Vec<DeadClaim>, sqlx::Error> {
        let pool = self.pool().clone();
        let node = node.to_owned();
        let now = millis(SystemTime::now());
        self.run(async move {
            let rows = sqlx::query(
                "WITH dead AS ( \
                   SELECT x.client_id, COALESCE(x.source, x.node) AS node, x.epoch, x.will, x.will_delay, \
                     (SELECT max(l.expires_at) FROM leases l WHERE l.name = 'node:' || x.node) \
                       AS lapsed_at \
                   FROM session_claims x \
                   WHERE NOT EXISTS (SELECT 1 FROM leases l \
                       WHERE l.name = 'node:' || x.node AND l.expires_at >= $2) \
                     AND (x.will IS NOT NULL \
                       OR EXISTS (SELECT 1 FROM sessions s WHERE s.client_id = x.client_id)) \
                     AND pg_try_advisory_xact_lock(hashtext(x.client_id)) \
                   LIMIT $3 FOR UPDATE OF x SKIP LOCKED) \
                 UPDATE session_claims c SET node = $1, epoch = nextval('session_claim_epochs') \
                 FROM dead WHERE c.client_id = dead.client_id AND c.epoch = dead.epoch \
                 RETURNING c.client_id, c.epoch, dead.will, dead.will_delay, dead.lapsed_at, \
                   EXISTS (SELECT 1 FROM sessions s WHERE s.client_id = c.client_id), dead.node",
            )
            .bind(&node)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    let lapsed_at: Option<i64> = r.try_get(4)?;
                    Ok(DeadClaim {
                        client_id: r.try_get(0)?,
                        epoch: r.try_get::<i64, _>(1)? as u64,
                        will: r.try_get(2)?,
                        will_delay: r.try_get::<i64, _>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
                        lapsed_at: lapsed_at
                            .map_or(SystemTime::now(), crate::domain::time::from_millis)
                            .min(SystemTime::now()),
                        has_session: r.try_get(5)?,
                        node: r.try_get(6)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// The instances whose lease runs now.
    pub async fn live_nodes(&self) -> Result<Vec<String>, sqlx::Error> {
        let pool = self.pool().clone();
        let now = millis(SystemTime::now());
        self.run(async move {
            let rows = sqlx::query(
                "SELECT holder FROM leases WHERE name LIKE 'node:%' AND expires_at >= $1",
            )
            .bind(now)
            .fetch_all(&pool)
            .await?;
            rows.into_iter().map(|r| r.try_get(0)).collect()
        })
        .await
    }

    /// Whether `node`'s lease still runs.
    pub async fn node_alive(&self, node: &str) -> Result<bool, sqlx::Error> {
        let pool = self.pool().clone();
        let name = node_lease(node);
        let now = millis(SystemTime::now());
        self.run(async move {
            let row = sqlx::query("SELECT 1 FROM leases WHERE name = $1 AND expires_at >= $2")
                .bind(name)
                .bind(now)
                .fetch_optional(&pool)
                .await?;
            Ok(row.is_some())
        })
        .await
    }

    /// Forget instances gone for over `gone_for` (their lapsed leases),
    /// and the claims of dead instances on sessions that are not stored:
    /// both tables grow with every run and client id otherwise. How many
    /// rows went.
    pub async fn purge_dead_claims(
        &self,
        gone_for: std::time::Duration,
    ) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        let now = millis(SystemTime::now());
        let long_ago = now - gone_for.as_millis() as i64;
        self.run(async move {
            let claims = sqlx::query(
                "DELETE FROM session_claims c \
                 WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.client_id = c.client_id) \
                 AND c.will IS NULL AND NOT EXISTS (SELECT 1 FROM leases l \
                   WHERE l.name = 'node:' || c.node AND l.expires_at >= $1)",
            )
            .bind(now)
            .execute(&pool)
            .await?;
            let leases =
                sqlx::query("DELETE FROM leases WHERE name LIKE 'node:%' AND expires_at < $1")
                    .bind(long_ago)
                    .execute(&pool)
                    .await?;
            // A cursor serves only to take over its instance's sessions.
            let cursors = sqlx::query(
                "DELETE FROM fabric_cursors f WHERE NOT EXISTS (SELECT 1 FROM leases l \
                   WHERE l.name = 'node:' || f.node)",
            )
            .execute(&pool)
            .await?;
            Ok(claims.rows_affected() + leases.rows_affected() + cursors.rows_affected())
        })
        .await
    }

    /// The first delivery number of a block no instance has used: above
    /// every block reserved before.
    pub async fn reserve_seq_block(&self) -> Result<u64, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let block: i64 = sqlx::query("SELECT nextval('session_message_blocks')")
                .fetch_one(&pool)
                .await?
                .try_get(0)?;
            Ok((block as u64) << SEQ_BLOCK_BITS)
        })
        .await
    }
}
