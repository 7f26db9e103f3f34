//! The database: one sqlx pool (SQLite by default, PostgreSQL by URL) shared
//! by the broker, the API and the background jobs.

mod broker_state;
mod commit_marks;
mod commit_pace;
mod fabric_outbox;
mod history;
mod identities;
mod leases;
mod locations;
mod lockout_lifts;
mod map_snapshots;
mod pool;
mod retention;
mod server_keys;
mod session_claims;
mod shares;
mod write_health;
mod writer;

pub use history::{HistoryCursor, HistoryItem, HistoryPage, HistoryQuery};
pub use identities::{DeviceRecord, InsertError, TokenRecord, UserRecord};
pub use map_snapshots::SnapshotRecord;
pub use pool::{Backend, SqliteSynchronous, Store, describe_database, sqlite_file};
pub use retention::{HistoryRetention, PURGE_BATCH, PurgeOutcome};
pub use session_claims::{ClaimRecord, DeadClaim, node_lease};
pub use shares::ShareRecord;
pub use write_health::WriteHealth;
pub use writer::{StoreWriter, spawn_writer};

/// A migrated SQLite store in a directory of its own, for unit tests.
#[cfg(test)]
pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/test.db", dir.path().display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    (dir, store)
}
