//! The database: one sqlx pool (SQLite by default, PostgreSQL by URL) shared
//! by the broker, the API and the background jobs.

mod broker_state;
mod commit_pace;
mod history;
mod identities;
mod locations;
mod lockout_lifts;
mod map_snapshots;
mod pool;
mod retention;
mod server_keys;
mod shares;
mod write_health;
mod writer;

pub use broker_state::{StoredMessage, StoredSession};
pub use history::{HistoryCursor, HistoryItem, HistoryPage, HistoryQuery};
pub use identities::{DeviceRecord, InsertError, TokenRecord, UserRecord};
pub use map_snapshots::SnapshotRecord;
pub use pool::{Backend, SqliteSynchronous, Store, describe_database, sqlite_file};
pub use retention::{HistoryRetention, PURGE_BATCH, PurgeOutcome};
pub use shares::ShareRecord;
pub use write_health::WriteHealth;
pub use writer::{StoreWriter, WriteOp, spawn_writer};

/// A database failure as callers see it; the cause is logged where it happens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable")]
    Unavailable,
    #[error("write queue full")]
    Overloaded,
    /// The disk under the database is full: writes fail, reads still work.
    #[error("storage full")]
    Full,
}
