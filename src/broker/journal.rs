//! The most recent publishes, so an SSE stream resuming with
//! `Last-Event-ID` gets what it missed while it was away. Bounded by count
//! (`broker.replay_messages`) and by payload bytes; the server's own topics
//! (`map/...`, `$SYS/...`) are not kept: clients fetch the map again.
//!
//! Kept only while some SSE stream is open or closed less than
//! [`RESUME_WINDOW`] ago: a deployment whose clients all speak MQTT does
//! not pay for replay (a full journal holds up to 32 MiB, and at a high
//! publish rate churns through as many copies a second).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::time::millis;
use crate::domain::{Message, TopicFilter};

/// Payload bytes kept at most, whatever the count bound.
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// How long after the last SSE stream closed publishes are still kept for
/// it to resume.
pub const RESUME_WINDOW: Duration = Duration::from_secs(300);

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
    /// SSE streams open now.
    streams: usize,
    /// When the last one closed; `None` while one is open or before any was.
    last_closed: Option<Instant>,
}

impl Journal {
    pub fn new(cap: usize) -> Self {
        let started_ms = millis(std::time::SystemTime::now());
        Self {
            cap,
            recent: VecDeque::new(),
            bytes: 0,
            forgotten_up_to: None,
            started_ms,
            streams: 0,
            last_closed: None,
        }
    }

    pub fn stream_opened(&mut self) {
        self.streams += 1;
        self.last_closed = None;
    }

    pub fn stream_closed(&mut self) {
        self.streams = self.streams.saturating_sub(1);
        if self.streams == 0 {
            self.last_closed = Some(Instant::now());
        }
    }

    /// Whether a stream is open, or one closed recently enough to resume.
    fn keeping(&self) -> bool {
        self.streams > 0 || self.last_closed.is_some_and(|t| t.elapsed() < RESUME_WINDOW)
    }

    /// Stop keeping: what was kept is let go, and so is every later
    /// publish, so a resume from before any of them starts over.
    fn let_go(&mut self, mark: u64) {
        // Past the window for good (until a stream opens): later publishes
        // need not read the clock to know it.
        self.last_closed = None;
        if !self.recent.is_empty() {
            self.recent = VecDeque::new();
            self.bytes = 0;
        }
        self.forgotten_up_to = Some(mark);
    }

    pub fn push(&mut self, mark: u64, msg: &Arc<Message>) {
        if self.cap == 0 || msg.topic.is_server_owned() {
            return;
        }
        if !self.keeping() {
            self.let_go(mark);
            return;
        }
        self.recent.push_back((mark, Arc::new(msg.compacted())));
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

    use ntex::util::Bytes;

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
        j.stream_opened();
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
        none.stream_opened();
        none.push(70, &msg("devices/d/location", now as u64));
        let at_start = ResumePoint { ms: none.started_ms, seq: 0 };
        assert_eq!(none.since(at_start, &devices).err(), Some(ReplayGap), "keeps nothing");
    }

    #[test]
    fn nothing_is_kept_without_a_stream_and_kept_a_while_after_the_last_closed() {
        let mut j = Journal::new(10);
        let now = j.started_ms;
        let devices = [filter("devices/+/location")];
        let at = |seq| ResumePoint { ms: now, seq };
        j.push(10, &msg("devices/a/location", now as u64));
        assert!(j.recent.is_empty(), "no stream was ever open");
        assert_eq!(j.since(at(5), &devices).err(), Some(ReplayGap), "missed a");

        j.stream_opened();
        j.push(20, &msg("devices/b/location", now as u64));
        j.stream_closed();
        // Closed just now: a resume still gets what it missed.
        j.push(30, &msg("devices/c/location", now as u64));
        assert_eq!(j.since(at(15), &devices).unwrap().len(), 2);

        // Past the window the journal lets everything go.
        j.last_closed = Instant::now().checked_sub(RESUME_WINDOW + Duration::from_secs(1));
        j.push(40, &msg("devices/d/location", now as u64));
        assert!(j.recent.is_empty() && j.bytes == 0);
        assert_eq!(j.since(at(35), &devices).err(), Some(ReplayGap), "missed d");
        assert_eq!(j.since(at(40), &devices).unwrap().len(), 0, "nothing missed after d");
    }
}
