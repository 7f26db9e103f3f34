//! The `feature_flags` table. The definition is stored as JSON beside the
//! columns the canary guard changes on its own (`rollout`, `state`,
//! `failed_checks`), so a rollback is one plain UPDATE on any backend.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::model::{Flag, FlagKey, FlagSpec, FlagState};
use crate::store::Store;

/// The columns [`flag`] reads, in order.
macro_rules! columns {
    () => {
        "key, enabled, rollout, spec, state, failed_checks, crash_watermark, updated_at"
    };
}

fn flag(row: &AnyRow) -> Result<Flag, sqlx::Error> {
    let decode = |e: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::Decode(e);
    let key: String = row.try_get(0)?;
    let spec_json: String = row.try_get(3)?;
    let mut spec: FlagSpec = serde_json::from_str(&spec_json).map_err(|e| decode(e.into()))?;
    spec.enabled = row.try_get::<i64, _>(1)? != 0;
    spec.rollout = row.try_get::<i64, _>(2)?.clamp(0, 100) as u8;
    Ok(Flag {
        key: FlagKey::parse(&key).map_err(|e| decode(e.into()))?,
        spec,
        state: FlagState::parse(&row.try_get::<String, _>(4)?),
        failed_checks: row.try_get::<i64, _>(5)?.max(0) as u32,
        crash_watermark: row.try_get(6)?,
        updated_at: row.try_get(7)?,
    })
}

/// Every flag, by key.
pub async fn load_all(store: &Store) -> Result<Vec<Flag>, sqlx::Error> {
    let pool = store.pool().clone();
    store
        .run(async move {
            let rows =
                sqlx::query(concat!("SELECT ", columns!(), " FROM feature_flags ORDER BY key"))
                    .fetch_all(&pool)
                    .await?;
            rows.iter().map(flag).collect()
        })
        .await
}

pub async fn load(store: &Store, key: &FlagKey) -> Result<Option<Flag>, sqlx::Error> {
    let pool = store.pool().clone();
    let key = key.as_str().to_owned();
    store
        .run(async move {
            let row =
                sqlx::query(concat!("SELECT ", columns!(), " FROM feature_flags WHERE key = $1"))
                    .bind(key)
                    .fetch_optional(&pool)
                    .await?;
            row.as_ref().map(flag).transpose()
        })
        .await
}

/// Create or replace a flag's definition. Setting a flag starts its canary
/// afresh: state active, no failed checks, crash reports before
/// `crash_watermark` ignored.
pub async fn put(
    store: &Store,
    key: &FlagKey,
    spec: &FlagSpec,
    now_ms: i64,
    crash_watermark: &str,
) -> Result<Flag, sqlx::Error> {
    let pool = store.pool().clone();
    let spec_json = serde_json::to_string(spec).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let (k, enabled, rollout, watermark) = (
        key.as_str().to_owned(),
        i64::from(spec.enabled),
        i64::from(spec.rollout),
        crash_watermark.to_owned(),
    );
    store
        .run(async move {
            sqlx::query(
                "INSERT INTO feature_flags (key, enabled, rollout, spec, state, failed_checks, crash_watermark, updated_at) \
                 VALUES ($1, $2, $3, $4, 'active', 0, $5, $6) \
                 ON CONFLICT (key) DO UPDATE SET enabled = $2, rollout = $3, spec = $4, \
                 state = 'active', failed_checks = 0, crash_watermark = $5, updated_at = $6",
            )
            .bind(k)
            .bind(enabled)
            .bind(rollout)
            .bind(spec_json)
            .bind(watermark)
            .bind(now_ms)
            .execute(&pool)
            .await
            .map(drop)
        })
        .await?;
    load(store, key).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Count one failed canary check (and move the crash watermark); returns
/// the failed checks so far, or `None` if the flag was set again meanwhile
/// (`updated_at` changed) or is gone.
pub async fn record_failed_check(
    store: &Store,
    key: &FlagKey,
    updated_at: i64,
    crash_watermark: &str,
) -> Result<Option<u32>, sqlx::Error> {
    let pool = store.pool().clone();
    let (k, watermark) = (key.as_str().to_owned(), crash_watermark.to_owned());
    let updated = store
        .run(async move {
            sqlx::query(
                "UPDATE feature_flags SET failed_checks = failed_checks + 1, crash_watermark = $1 \
                 WHERE key = $2 AND updated_at = $3 AND state = 'active'",
            )
            .bind(watermark)
            .bind(k)
            .bind(updated_at)
            .execute(&pool)
            .await
            .map(|d| d.rows_affected())
        })
        .await?;
    if updated == 0 {
        return Ok(None);
    }
    Ok(load(store, key).await?.map(|f| f.failed_checks))
}

/// Move the crash watermark only (crash reports of other flags were read).
pub async fn set_crash_watermark(
    store: &Store,
    key: &FlagKey,
    crash_watermark: &str,
) -> Result<(), sqlx::Error> {
    let pool = store.pool().clone();
    let (k, watermark) = (key.as_str().to_owned(), crash_watermark.to_owned());
    store
        .run(async move {
            sqlx::query("UPDATE feature_flags SET crash_watermark = $1 WHERE key = $2")
                .bind(watermark)
                .bind(k)
                .execute(&pool)
                .await
                .map(drop)
        })
        .await
}

/// Roll the canary back for good: rollout 0, state `rolled_back`.
pub async fn roll_back(store: &Store, key: &FlagKey, updated_at: i64) -> Result<bool, sqlx::Error> {
    let pool = store.pool().clone();
    let k = key.as_str().to_owned();
    store
        .run(async move {
            sqlx::query(
                "UPDATE feature_flags SET rollout = 0, state = 'rolled_back' \
                 WHERE key = $1 AND updated_at = $2 AND state = 'active'",
            )
            .bind(k)
            .bind(updated_at)
            .execute(&pool)
            .await
            .map(|d| d.rows_affected() > 0)
        })
        .await
}
