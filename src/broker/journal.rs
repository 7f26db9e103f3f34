//! The most recent publishes, so an SSE stream resuming with
//! `Last-Event-ID` gets what it missed while it was away. Bounded by count
//! (`broker.replay_messages`) and by payload bytes; the server's own topics
//! (`map/...`, `$SYS/...`) are not kept: clients fetch the map again.

use std::collections::VecDeque;
use std::sync::Arc;

use ntex::util::Bytes;

use crate::domain::time::millis;
use crate::domain::{Message, TopicFilter};

/// Payload bytes kept at most, whatever the count bound.
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// Some publishes after the asked-for point are no longer kept (or this
/// run of the broker started after it): the client must fetch the state
/// again instead of resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("publishes after that point are no longer kept")]
pub struct ReplayGap;

/// Where a client's stream stopped: the receive time and the sequence
/// number of its last event (a delivery's, or a replayed message's mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    pub ms: i64,
    pub seq: u64,
}

/// What a resuming stream missed, or the gap that makes it start over.
pub type Missed = Result<Replay, ReplayGap>;

/// The publishes a resuming stream missed, each with its mark, oldest
/// first; every delivery numbered below `horizon` was made before they
/// were gathered, so a live copy of one of them is not sent again.
#[derive(Debug, Default)]
pub struct Replay {
    pub horizon: u64,
    pub messages: Vec<(u64, Arc<Message>)>,
}

#[derive(Debug)]
pub struct Journal {
    cap: usize,
    /// `(mark, message)`, oldest first. A message's mark is the sequence
    /// number the router took just before numbering its deliveries, so it
    /// is above every delivery of earlier messages and below its own.
    recent: VecDeque<(u64, Arc<Message>)>,
    bytes: usize,
    /// Mark of the newest message let go.
    forgotten_up_to: Option<u64>,
    /// What happened before this run is not here.
    started_ms: i64,
}

impl Journal {
    pub fn new(cap: usize) -> Self {
        let started_ms = millis(std::time::SystemTime::now());
        Self { cap, recent: VecDeque::new(), bytes: 0, forgotten_up_to: None, started_ms }
    }

    pub fn push(&mut self, mark: u64, msg: &Arc<Message>) {
        if self.cap == 0 || msg.topic.is_server_owned() {
            return;
        }
        // A copy whose payload owns just its bytes: the publish's may be a
        // slice of a whole network read buffer, which it would keep alive.
        let own = Message { payload: Bytes::copy_from_slice(&msg.payload), ..Message::clone(msg) };
        self.recent.push_back((mark, Arc::new(own)));
        self.bytes += msg.payload.len();
        while self.recent.len() > self.cap || self.bytes > MAX_BYTES {
            let Some((mark, old)) = self.recent.pop_front() else { break };
            self.bytes -= old.payload.len();
            self.forgotten_up_to = Some(mark);
        }
    }

    /// Publishes after `after` on topics some filter matches, oldest first,
    /// each with its mark.
    pub fn since(
        &self,
        after: ResumePoint,
        filters: &[TopicFilter],
    ) -> Result<Vec<(u64, Arc<Message>)>, ReplayGap> {
        let forgotten = self.forgotten_up_to.is_some_and(|f| f > after.seq);
        if self.cap == 0 || after.ms < self.started_ms || forgotten {
            return Err(ReplayGap);
        }
        Ok(self
            .recent
            .iter()
            .filter(|(mark, m)| *mark > after.seq && filters.iter().any(|f| f.matches(&m.topic)))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::domain::{QoS, TopicLimits, TopicName};

    fn msg(topic: &str, at_ms: u64) -> Arc<Message> {
        let topic = TopicName::parse(topic.to_owned(), TopicLimits::default()).unwrap();
        let mut m = Message::new(topic, Bytes::from_static(b"x"), QoS::AtMostOnce, false);
        m.received_at = UNIX_EPOCH + Duration::from_millis(at_ms);
        Arc::new(m)
    }

    fn filter(f: &str) -> TopicFilter {
        TopicFilter::parse(f.to_owned(), TopicLimits::default()).unwrap()
    }

    #[test]
    fn replays_what_matches_after_a_point_until_it_was_let_go() {
        let mut j = Journal::new(3);
        let now = j.started_ms;
        for (mark, t) in [
            (10, "devices/a/location"),
            (20, "map/version"),
            (30, "devices/b/location"),
            (40, "chat/x"),
        ] {
            j.push(mark, &msg(t, now as u64));
        }
        let topics = |v: Vec<(u64, Arc<Message>)>| -> Vec<String> {
            v.iter().map(|(_, m)| m.topic.to_string()).collect()
        };
        let at = |seq| ResumePoint { ms: now, seq };
        let devices = [filter("devices/+/location")];
        assert_eq!(
            topics(j.since(at(9), &devices).unwrap()),
            ["devices/a/location", "devices/b/location"]
        );
        // A delivery of `a` (numbered after its mark) resumes after it.
        assert_eq!(topics(j.since(at(11), &devices).unwrap()), ["devices/b/location"]);
        j.push(50, &msg("devices/c/location", now as u64));
        assert_eq!(j.since(at(9), &devices).err(), Some(ReplayGap), "a was let go");
        assert_eq!(
            topics(j.since(at(10), &devices).unwrap()),
            ["devices/b/location", "devices/c/location"]
        );
        let before_this_run = ResumePoint { ms: now - 1, seq: 60 };
        assert_eq!(j.since(before_this_run, &devices).err(), Some(ReplayGap));
        let mut none = Journal::new(0);
        none.push(70, &msg("devices/d/location", now as u64));
        let at_start = ResumePoint { ms: none.started_ms, seq: 0 };
        assert_eq!(none.since(at_start, &devices).err(), Some(ReplayGap), "keeps nothing");
    }
}
