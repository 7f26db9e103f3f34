//! When the group commit starts its next transaction.
//!
//! Every transaction costs SQLite an append of each page it touched to the
//! WAL, so a steady stream of positions should share transactions rather
//! than pay one each: while writes keep coming, transactions start at most
//! once per interval. Waiting is pointless, though, once every caller that
//! could add to the batch is already in it: publishers with a bounded number
//! of messages in flight send nothing more until this commit acknowledges
//! them. A batch holding as many waiting callers as the largest recent batch
//! therefore commits at once.

use std::time::{Duration, Instant};

/// How long a batch size counts as recent.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct CommitPace {
    interval: Duration,
    last_start: Option<Instant>,
    window_start: Option<Instant>,
    /// Most waiting callers in one batch, this window and the one before.
    largest: [usize; 2],
}

impl CommitPace {
    pub(super) fn new(interval: Duration) -> Self {
        Self { interval, last_start: None, window_start: None, largest: [0; 2] }
    }

    /// Until when a batch with `waiting` callers should gather more; `None`
    /// commits now. A first write after a quiet spell never waits.
    pub(super) fn gather_until(&self, waiting: usize, now: Instant) -> Option<Instant> {
        let at = self.last_start? + self.interval;
        (at > now && !self.enough(waiting)).then_some(at)
    }

    /// Whether `waiting` callers are as many as the recent batches held.
    pub(super) fn enough(&self, waiting: usize) -> bool {
        waiting > 0 && waiting >= self.largest[0].max(self.largest[1])
    }

    /// A transaction with `waiting` callers starts now.
    pub(super) fn started(&mut self, waiting: usize, now: Instant) {
        let elapsed = self.window_start.map(|t| now.saturating_duration_since(t));
        match elapsed {
            Some(e) if e < WINDOW => {}
            // The previous window ended just now: it becomes the older one.
            Some(e) if e < 2 * WINDOW => {
                self.largest = [0, self.largest[0]];
                self.window_start = Some(now);
            }
            _ => {
                self.largest = [0; 2];
                self.window_start = Some(now);
            }
        }
        self.largest[0] = self.largest[0].max(waiting);
        self.last_start = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_batch_and_one_after_the_interval_commit_at_once() {
        let t0 = Instant::now();
        let mut pace = CommitPace::new(5 * MS);
        assert_eq!(pace.gather_until(1, t0), None);
        pace.started(1, t0);
        assert_eq!(pace.gather_until(0, t0 + 5 * MS), None);
        assert_eq!(pace.gather_until(0, t0 + 9 * MS), None);
    }

    #[test]
    fn a_batch_within_the_interval_gathers_until_it_ends() {
        let t0 = Instant::now();
        let mut pace = CommitPace::new(5 * MS);
        pace.started(10, t0);
        assert_eq!(pace.gather_until(3, t0 + MS), Some(t0 + 5 * MS));
        assert_eq!(pace.gather_until(0, t0 + 4 * MS), Some(t0 + 5 * MS), "writes nobody waits for");
    }

    #[test]
    fn a_batch_as_large_as_the_recent_ones_commits_at_once() {
        let t0 = Instant::now();
        let mut pace = CommitPace::new(5 * MS);
        pace.started(100, t0);
        pace.started(60, t0 + 5 * MS);
        assert_eq!(pace.gather_until(100, t0 + 6 * MS), None);
        assert_eq!(pace.gather_until(99, t0 + 6 * MS), Some(t0 + 10 * MS));
    }

    #[test]
    fn large_batches_stop_counting_after_two_windows() {
        let t0 = Instant::now();
        let mut pace = CommitPace::new(5 * MS);
        pace.started(100, t0);
        pace.started(10, t0 + WINDOW);
        assert!(!pace.enough(10), "the previous window still counts");
        pace.started(10, t0 + 2 * WINDOW);
        assert!(pace.enough(10));
        pace.started(5, t0 + 5 * WINDOW);
        assert!(pace.enough(5), "after a quiet spell only new batches count");
    }
}
