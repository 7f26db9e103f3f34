//! Where this instance's acknowledged publishes landed on the stream. A
//! session taken over here from a dead instance must get what that
//! instance never read, this instance's own publishes included; those
//! routed here before the session was held, but appended after the read
//! that looked for them, are found by number through this log.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::domain::FabricPos;

/// Positions kept at most: several seconds of the peak rate, far more
/// than a takeover takes between its read and its hold.
const KEPT: usize = 64 * 1024;

/// Outbox numbers and stream positions of this run's appended publishes,
/// both rising. The lock is held only to add a batch or to search.
#[derive(Debug, Default)]
pub struct OwnLog {
    appended: Mutex<Appended>,
}

#[derive(Debug, Default)]
struct Appended {
    entries: VecDeque<(u64, FabricPos)>,
    /// Older positions were let go: a search before them cannot answer.
    trimmed: bool,
}

impl OwnLog {
    /// Note a batch just appended, oldest first.
    pub fn record(&self, batch: impl IntoIterator<Item = (u64, FabricPos)>) {
        let mut appended = self.appended.lock().expect("own log lock");
        for entry in batch {
            if appended.entries.len() == KEPT {
                appended.entries.pop_front();
                appended.trimmed = true;
            }
            appended.entries.push_back(entry);
        }
    }

    /// The lowest outbox number of this run whose publish is on the stream
    /// after `at`, or not on it yet: every higher one is too. `None` when
    /// the positions around `at` were let go.
    pub fn first_after(&self, at: FabricPos) -> Option<u64> {
        let appended = self.appended.lock().expect("own log lock");
        let i = appended.entries.partition_point(|(_, p)| *p <= at);
        match appended.entries.get(i) {
            Some(&(n, _)) if i > 0 || !appended.trimmed => Some(n),
            Some(_) => None,
            None => Some(appended.entries.back().map_or(0, |&(n, _)| n + 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ms: u64) -> FabricPos {
        FabricPos { ms, seq: 0 }
    }

    #[test]
    fn nothing_appended_yet_means_every_number_is_after() {
        assert_eq!(OwnLog::default().first_after(pos(5)), Some(0));
    }

    #[test]
    fn the_first_number_past_a_position_is_found() {
        let log = OwnLog::default();
        log.record([(10, pos(100)), (11, pos(105)), (14, pos(110))]);
        assert_eq!(log.first_after(pos(99)), Some(10));
        assert_eq!(log.first_after(pos(100)), Some(11));
        assert_eq!(log.first_after(pos(107)), Some(14));
        // Past the newest: only what is not appended yet.
        assert_eq!(log.first_after(pos(110)), Some(15));
    }

    #[test]
    fn a_position_older_than_what_is_kept_has_no_answer() {
        let log = OwnLog::default();
        log.record((0..KEPT as u64 + 2).map(|n| (n, pos(1_000 + n))));
        assert_eq!(log.first_after(pos(1_000)), None);
        assert_eq!(log.first_after(pos(1_002)), Some(3));
    }
}
