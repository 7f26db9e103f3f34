//! Whether the database takes writes, as the batching writer last saw it.
//!
//! While writes fail, durable writes are refused at once (a QoS≥1 publisher
//! gets a negative acknowledgement instead of waiting on a dead database),
//! except one now and then: real traffic is the probe that notices the
//! database is back, even when only writing can tell (a full disk still
//! answers `SELECT 1`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::domain::StoreError;

const UP: u8 = 0;
const UNAVAILABLE: u8 = 1;
const FULL: u8 = 2;

#[derive(Debug, Default)]
pub struct WriteHealth {
    state: AtomicU8,
    /// One durable write may pass while down; reopened by the writer.
    probe: AtomicBool,
    down_since: Mutex<Option<Instant>>,
}

impl WriteHealth {
    /// `Ok` while writes succeed; otherwise why the last one failed.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.state.load(Ordering::Acquire) {
            UP => Ok(()),
            FULL => Err(StoreError::Full),
            _ => Err(StoreError::Unavailable),
        }
    }

    /// Whether a durable write may be queued now.
    pub(super) fn admit_durable(&self) -> Result<(), StoreError> {
        match self.check() {
            Err(_) if self.probe.swap(false, Ordering::AcqRel) => Ok(()),
            other => other,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Let the next durable write through as a probe.
    pub(super) fn open_probe(&self) {
        self.probe.store(true, Ordering::Release);
    }

    /// A write failed with `err`; true when that ends a healthy period.
    pub(super) fn failed(&self, err: &StoreError) -> bool {
        let state = if matches!(err, StoreError::Full) { FULL } else { UNAVAILABLE };
        let before = self.state.swap(state, Ordering::AcqRel);
        if before == UP {
            *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        before == UP
    }

    /// A write succeeded; how long writes had failed, if they had.
    pub(super) fn succeeded(&self) -> Option<Duration> {
        if self.state.swap(UP, Ordering::AcqRel) == UP {
            return None;
        }
        self.probe.store(false, Ordering::Release);
        let since = self.down_since.lock().unwrap_or_else(|e| e.into_inner()).take();
        Some(since.map(|t| t.elapsed()).unwrap_or_default())
    }
}

/// How a failed write reads to callers: a full disk is not an outage.
pub(super) fn classify(err: &sqlx::Error) -> StoreError {
    // SQLITE_FULL (13) and PostgreSQL's disk_full (53100); ENOSPC from the OS.
    const ENOSPC: i32 = 28;
    let full = match err {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("13" | "53100"))
                || db.message().contains("disk is full")
        }
        sqlx::Error::Io(io) => io.raw_os_error() == Some(ENOSPC),
        _ => false,
    };
    if full { StoreError::Full } else { StoreError::Unavailable }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_refuses_durable_writes_except_one_probe_until_a_success() {
        let health = WriteHealth::default();
        assert!(health.admit_durable().is_ok());

        assert!(health.failed(&StoreError::Full));
        assert!(!health.failed(&StoreError::Full), "already down");
        assert!(matches!(health.admit_durable(), Err(StoreError::Full)));
        health.open_probe();
        assert!(health.admit_durable().is_ok(), "the probe passes");
        assert!(health.admit_durable().is_err(), "only one");

        assert!(health.succeeded().is_some());
        assert!(health.succeeded().is_none());
        assert!(health.check().is_ok() && health.admit_durable().is_ok());
    }

    #[test]
    fn io_errors_for_a_full_disk_are_told_apart_from_outages() {
        let full = sqlx::Error::Io(std::io::Error::from_raw_os_error(28));
        let refused = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(matches!(classify(&full), StoreError::Full));
        assert!(matches!(classify(&refused), StoreError::Unavailable));
        assert!(matches!(classify(&sqlx::Error::PoolTimedOut), StoreError::Unavailable));
    }
}
