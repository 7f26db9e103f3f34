//! The database: one sqlx pool (SQLite by default, PostgreSQL by URL) shared
//! by the broker, the API and the background jobs.

mod broker_state;
mod pool;
mod writer;

pub use broker_state::{StoredMessage, StoredSession};
pub use pool::{Backend, Store};
pub use writer::{StoreWriter, WriteOp, spawn_writer};

/// A database failure as callers see it; the cause is logged where it happens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable")]
    Unavailable,
    #[error("write queue full")]
    Overloaded,
}
