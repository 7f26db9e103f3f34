//! `server_keys`: random keys the server makes once and every instance on
//! the database shares (the first to start writes it; the rest read it).

use rand_core::{OsRng, RngCore};
use sqlx::Row;

use super::Store;
use crate::domain::{from_hex, to_hex};

impl Store {
    /// The 32-byte key named `name`, made now if there is none yet.
    pub async fn server_key(&self, name: &str) -> Result<[u8; 32], sqlx::Error> {
        let (pool, name) = (self.pool().clone(), name.to_owned());
        self.run(async move {
            let mut fresh = [0u8; 32];
            OsRng.fill_bytes(&mut fresh);
            sqlx::query(
                "INSERT INTO server_keys (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name.clone())
            .bind(to_hex(&fresh))
            .execute(&pool)
            .await?;
            let row = sqlx::query("SELECT value FROM server_keys WHERE name = $1")
                .bind(name)
                .fetch_one(&pool)
                .await?;
            let value: String = row.try_get(0)?;
            from_hex(&value)
                .ok_or_else(|| sqlx::Error::Decode("a server key is not 64 hex digits".into()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::connect(&format!("sqlite://{}/k.db", dir.path().display()), 2).await.unwrap();
        store.migrate().await.unwrap();
        let first = store.server_key("map_ids").await.unwrap();
        assert_eq!(store.server_key("map_ids").await.unwrap(), first);
        assert_ne!(store.server_key("other").await.unwrap(), first);
    }
}
