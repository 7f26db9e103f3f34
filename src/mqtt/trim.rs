//! Gives the memory of closed connections back to the operating system.
//!
//! glibc's malloc keeps what connections free in its per-thread arenas: after
//! a storm of thousands of connections the process would stay at its peak
//! resident size for good (the memory is reused, not leaked). Once enough
//! connections have closed, `malloc_trim` returns the free pages. It runs on
//! a blocking thread: it takes the arenas' locks for a few milliseconds.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::admission::Admission;

/// Closed connections that make a trim worth its cost.
const TRIM_AFTER_CLOSED: usize = 256;
/// Closed connections after which a storm still going on gets a trim too.
const TRIM_DURING_STORM: usize = 4096;
/// How often the closed connections are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Check every [`CHECK_EVERY`] until `shutdown`; trim once at least
/// [`TRIM_AFTER_CLOSED`] connections closed and the closing has calmed down
/// (none in the last period), or every [`TRIM_DURING_STORM`] closes. Call
/// from within the tokio runtime.
pub(super) fn spawn(admission: Arc<Admission>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        let (mut trimmed_at, mut seen) = (0, 0);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let closed = admission.closed_total();
            let pending = closed - trimmed_at;
            let calm = closed == seen;
            seen = closed;
            if (calm && pending >= TRIM_AFTER_CLOSED) || pending >= TRIM_DURING_STORM {
                trimmed_at = closed;
                let _ = tokio::task::spawn_blocking(release_free_memory).await;
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released == 1, "freed connection memory returned to the system");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
