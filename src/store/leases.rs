//! `leases`: roles one instance holds at a time (building the map) among
//! several sharing a database. A lease lapses unless its holder renews it,
//! so a dead instance's role passes on by itself.

use std::time::{Duration, SystemTime};

use super::Store;
use crate::domain::time::millis;

impl Store {
    /// Take or renew `name` for `holder` until `ttl` from now; `false`
    /// while another holder's lease runs. Times are this instance's clock:
    /// instances must keep their clocks within a small part of `ttl`.
    pub async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        let pool = self.pool().clone();
        let name = name.to_owned();
        let holder = holder.to_owned();
        let now = millis(SystemTime::now());
        let until = now + ttl.as_millis() as i64;
        self.run(async move {
            let done = sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(until)
            .bind(now)
            .execute(&pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Give `name` up at once (at shutdown), if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), sqlx::Error> {
        let pool = self.pool().clone();
        let name = name.to_owned();
        let holder = holder.to_owned();
        self.run(async move {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(&pool)
                .await
                .map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_until_the_lease_lapses_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/l.db", dir.path().display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let long = Duration::from_secs(60);
        assert!(store.hold_lease("map", "a", long).await.unwrap());
        assert!(store.hold_lease("map", "a", long).await.unwrap(), "the holder renews");
        assert!(!store.hold_lease("map", "b", long).await.unwrap(), "taken");
        store.release_lease("map", "b").await.unwrap();
        assert!(!store.hold_lease("map", "b", long).await.unwrap(), "only the holder releases");
        store.release_lease("map", "a").await.unwrap();
        assert!(store.hold_lease("map", "b", Duration::ZERO).await.unwrap(), "released");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(store.hold_lease("map", "a", long).await.unwrap(), "lapsed");
    }
}
