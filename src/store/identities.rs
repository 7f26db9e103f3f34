//! Users, devices and bearer tokens as stored. Plain records and queries; the
//! rules (hashing, validation, expiry) live in [`crate::identities`].
//!
//! Every query runs through [`Store::run`]: callers sit on actix and ntex
//! worker runtimes, and PostgreSQL connections must stay on the pool's own.

use std::str::FromStr;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use crate::domain::{Role, Secret};

/// A user row. The password hash is a [`Secret`]: it never prints.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub password_hash: Secret,
    pub role: Role,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A device row. The secret hash is a [`Secret`]: it never prints.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    /// `car` or `phone`.
    pub kind: String,
    pub secret_hash: Secret,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// `public` or `private`.
    pub visibility: String,
}

/// A token row: `id` is the hex SHA-256 of the token.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub expires_at: i64,
    pub created_at: i64,
}

/// Why an insert failed.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// A unique column (the user name, an id) is taken.
    #[error("already exists")]
    Duplicate,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

const USER_COLUMNS: &str = "id, username, password_hash, role, created_at";
const DEVICE_COLUMNS: &str = "id, owner_id, name, kind, secret_hash, created_at, visibility";

fn user(row: &AnyRow) -> Result<UserRecord, sqlx::Error> {
    let role: String = row.try_get(3)?;
    Ok(UserRecord {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        password_hash: Secret::new(row.try_get::<String, _>(2)?),
        role: Role::from_str(&role).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        created_at: row.try_get(4)?,
    })
}

fn device(row: &AnyRow) -> Result<DeviceRecord, sqlx::Error> {
    Ok(DeviceRecord {
        id: row.try_get(0)?,
        owner_id: row.try_get(1)?,
        name: row.try_get(2)?,
        kind: row.try_get(3)?,
        secret_hash: Secret::new(row.try_get::<String, _>(4)?),
        created_at: row.try_get(5)?,
        visibility: row.try_get(6)?,
    })
}

fn insert_error(e: sqlx::Error) -> InsertError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => InsertError::Duplicate,
        _ => InsertError::Database(e),
    }
}

impl Store {
    pub async fn insert_user(&self, user: UserRecord) -> Result<(), InsertError> {
        let pool = self.pool().clone();
        self.run(async move {
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, role, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user.id)
            .bind(user.username)
            .bind(user.password_hash.expose().to_owned())
            .bind(user.role.as_str())
            .bind(user.created_at)
            .execute(&pool)
            .await
            .map(drop)
            .map_err(insert_error)
        })
        .await
    }

    pub async fn user_by_username(
        &self,
        username: &str,
    ) -> Result<Option<UserRecord>, sqlx::Error> {
        let (pool, username) = (self.pool().clone(), username.to_owned());
        self.run(async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
            let row =
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(username).fetch_optional(&pool).await?;
            row.as_ref().map(user).transpose()
        })
        .await
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, sqlx::Error> {
        let (pool, id) = (self.pool().clone(), id.to_owned());
        self.run(async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&pool).await?;
            row.as_ref().map(user).transpose()
        })
        .await
    }

    /// Every user, oldest first.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await?;
            rows.iter().map(user).collect()
        })
        .await
    }

    /// Delete a user with its devices and tokens; `false` if there was none.
    pub async fn delete_user(&self, id: &str) -> Result<bool, sqlx::Error> {
        let (pool, id) = (self.pool().clone(), id.to_owned());
        self.run(async move {
            // Explicit rather than relying on ON DELETE CASCADE alone: SQLite
            // enforces foreign keys only where the pragma is on.
            // The user first, and never the last admin: nothing else is
            // touched when it stays.
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query(
                "DELETE FROM users WHERE id = $1 AND (role <> 'admin' \
                 OR (SELECT COUNT(*) FROM users WHERE role = 'admin') > 1)",
            )
            .bind(id.clone())
            .execute(&mut *tx)
            .await?;
            if deleted.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("DELETE FROM tokens WHERE user_id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM devices WHERE owner_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Replace a user's password hash; `false` if there is no such user.
    pub async fn set_user_password(&self, id: &str, hash: Secret) -> Result<bool, sqlx::Error> {
        self.set_hash("UPDATE users SET password_hash = $1 WHERE id = $2", id, hash).await
    }

    /// Replace a device's secret hash; `false` if there is no such device.
    pub async fn set_device_secret(&self, id: &str, hash: Secret) -> Result<bool, sqlx::Error> {
        self.set_hash("UPDATE devices SET secret_hash = $1 WHERE id = $2", id, hash).await
    }

    /// Run `statement` (`$1` the hash, `$2` the id); whether a row changed.
    async fn set_hash(
        &self,
        statement: &'static str,
        id: &str,
        hash: Secret,
    ) -> Result<bool, sqlx::Error> {
        let (pool, id) = (self.pool().clone(), id.to_owned());
        self.run(async move {
            let updated = sqlx::query(statement)
                .bind(hash.expose().to_owned())
                .bind(id)
                .execute(&pool)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
        .await
    }

    pub async fn insert_device(&self, device: DeviceRecord) -> Result<(), InsertError> {
        let pool = self.pool().clone();
        self.run(async move {
            sqlx::query(
                "INSERT INTO devices \
                 (id, owner_id, name, kind, secret_hash, created_at, visibility) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(device.id)
            .bind(device.owner_id)
            .bind(device.name)
            .bind(device.kind)
            .bind(device.secret_hash.expose().to_owned())
            .bind(device.created_at)
            .bind(device.visibility)
            .execute(&pool)
            .await
            .map(drop)
            .map_err(insert_error)
        })
        .await
    }

    pub async fn device_by_id(&self, id: &str) -> Result<Option<DeviceRecord>, sqlx::Error> {
        let (pool, id) = (self.pool().clone(), id.to_owned());
        self.run(async move {
            let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&pool).await?;
            row.as_ref().map(device).transpose()
        })
        .await
    }

    /// The devices of `owner_id`, or every device when `None`; oldest first.
    pub async fn list_devices(
        &self,
        owner_id: Option<&str>,
    ) -> Result<Vec<DeviceRecord>, sqlx::Error> {
        let (pool, owner_id) = (self.pool().clone(), owner_id.map(str::to_owned));
        self.run(async move {
            let rows = match owner_id {
                Some(owner) => {
                    let sql = format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices WHERE owner_id = $1 \
                         ORDER BY created_at, id"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner).fetch_all(&pool).await?
                }
                None => {
                    let sql =
                        format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY created_at, id");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await?
                }
            };
            rows.iter().map(device).collect()
        })
        .await
    }

    /// The ids of the devices `owner_id` owns.
    pub async fn device_ids_of(&self, owner_id: &str) -> Result<Vec<String>, sqlx::Error> {
        let (pool, owner_id) = (self.pool().clone(), owner_id.to_owned());
        self.run(async move {
            let rows = sqlx::query("SELECT id FROM devices WHERE owner_id = $1 ORDER BY id")
                .bind(owner_id)
                .fetch_all(&pool)
                .await?;
            rows.iter().map(|r| r.try_get(0)).collect()
        })
        .await
    }

    /// `false` if there was no such device.
    pub async fn set_device_visibility(
        &self,
        id: &str,
        visibility: &str,
    ) -> Result<bool, sqlx::Error> {
        let (pool, id, visibility) = (self.pool().clone(), id.to_owned(), visibility.to_owned());
        self.run(async move {
            let updated = sqlx::query("UPDATE devices SET visibility = $1 WHERE id = $2")
                .bind(visibility)
                .bind(id)
                .execute(&pool)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
        .await
    }

    /// The ids of the devices whose visibility is `visibility`.
    pub async fn device_ids_with_visibility(
        &self,
        visibility: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let (pool, visibility) = (self.pool().clone(), visibility.to_owned());
        self.run(async move {
            let rows = sqlx::query("SELECT id FROM devices WHERE visibility = $1")
                .bind(visibility)
                .fetch_all(&pool)
                .await?;
            rows.iter().map(|r| r.try_get(0)).collect()
        })
        .await
    }

    /// `false` if there was no such device.
    pub async fn delete_device(&self, id: &str) -> Result<bool, sqlx::Error> {
        let (pool, id) = (self.pool().clone(), id.to_owned());
        self.run(async move {
            let deleted =
                sqlx::query("DELETE FROM devices WHERE id = $1").bind(id).execute(&pool).await?;
            Ok(deleted.rows_affected() > 0)
        })
        .await
    }

    /// Store a new token and drop tokens that expired before `purge_before`.
    pub async fn insert_token(
        &self,
        token: TokenRecord,
        purge_before: i64,
    ) -> Result<(), sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            sqlx::query("DELETE FROM tokens WHERE expires_at < $1")
                .bind(purge_before)
                .execute(&pool)
                .await?;
            sqlx::query(
                "INSERT INTO tokens (id, user_id, expires_at, revoked_at, created_at) \
                 VALUES ($1, $2, $3, NULL, $4)",
            )
            .bind(token.id)
            .bind(token.user_id)
            .bind(token.expires_at)
            .bind(token.created_at)
            .execute(&pool)
            .await
            .map(drop)
        })
        .await
    }

    /// The user holding the token `token_id` if it is neither revoked nor
    /// expired at `now`.
    pub async fn user_by_token(
        &self,
        token_id: &str,
        now: i64,
    ) -> Result<Option<UserRecord>, sqlx::Error> {
        let (pool, token_id) = (self.pool().clone(), token_id.to_owned());
        self.run(async move {
            let row = sqlx::query(
                "SELECT u.id, u.username, u.password_hash, u.role, u.created_at \
                 FROM tokens t JOIN users u ON u.id = t.user_id \
                 WHERE t.id = $1 AND t.revoked_at IS NULL AND t.expires_at > $2",
            )
            .bind(token_id)
            .bind(now)
            .fetch_optional(&pool)
            .await?;
            row.as_ref().map(user).transpose()
        })
        .await
    }

    /// Revoke the token `token_id` at `now`; `false` if it was not live.
    pub async fn revoke_token(&self, token_id: &str, now: i64) -> Result<bool, sqlx::Error> {
        let (pool, token_id) = (self.pool().clone(), token_id.to_owned());
        self.run(async move {
            let done = sqlx::query(
                "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(token_id)
            .bind(now)
            .execute(&pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::temp_store as store;

    fn ann() -> UserRecord {
        UserRecord {
            id: "u1".into(),
            username: "ann".into(),
            password_hash: Secret::new("$argon2id$x"),
            role: Role::User,
            created_at: 1,
        }
    }

    fn car(id: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            owner_id: "u1".into(),
            name: "Car".into(),
            kind: "car".into(),
            secret_hash: Secret::new("$argon2id$y"),
            created_at: 2,
            visibility: "public".into(),
        }
    }

    #[tokio::test]
    async fn duplicate_usernames_are_reported_as_such() {
        let (_dir, store) = store().await;
        store.insert_user(ann()).await.unwrap();

        let again = store.insert_user(UserRecord { id: "u2".into(), ..ann() }).await;

        assert!(matches!(again, Err(InsertError::Duplicate)), "{again:?}");
    }

    #[tokio::test]
    async fn tokens_live_until_they_expire_or_are_revoked() {
        let (_dir, store) = store().await;
        store.insert_user(ann()).await.unwrap();
        let token =
            TokenRecord { id: "t1".into(), user_id: "u1".into(), expires_at: 100, created_at: 1 };
        store.insert_token(token, 0).await.unwrap();

        assert_eq!(store.user_by_token("t1", 99).await.unwrap().unwrap().username, "ann");
        assert!(store.user_by_token("t1", 100).await.unwrap().is_none(), "expired");
        assert!(store.revoke_token("t1", 50).await.unwrap());
        assert!(!store.revoke_token("t1", 51).await.unwrap(), "already revoked");
        assert!(store.user_by_token("t1", 60).await.unwrap().is_none(), "revoked");
    }

    #[tokio::test]
    async fn deleting_a_user_deletes_its_devices_and_tokens() {
        let (_dir, store) = store().await;
        store.insert_user(ann()).await.unwrap();
        store.insert_device(car("d1")).await.unwrap();
        store.insert_device(car("d2")).await.unwrap();
        let token =
            TokenRecord { id: "t1".into(), user_id: "u1".into(), expires_at: 100, created_at: 1 };
        store.insert_token(token, 0).await.unwrap();
        assert_eq!(store.device_ids_of("u1").await.unwrap(), ["d1", "d2"]);

        assert!(store.delete_user("u1").await.unwrap());

        assert!(store.device_by_id("d1").await.unwrap().is_none());
        assert!(store.user_by_token("t1", 1).await.unwrap().is_none());
        assert!(store.list_devices(None).await.unwrap().is_empty());
        assert!(!store.delete_user("u1").await.unwrap());
    }

    #[tokio::test]
    async fn a_device_needs_an_existing_owner() {
        let (_dir, store) = store().await;
        assert!(store.insert_device(car("d1")).await.is_err());
    }
}
