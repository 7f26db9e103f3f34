//! Retained messages: the last message published with retain on each topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ntex::util::ByteString;

use super::Message;
use crate::domain::{TopicFilter, filter_matches};

#[derive(Default)]
pub struct RetainedStore {
    by_topic: HashMap<ByteString, Arc<Message>>,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Set (or with an empty payload, clear) the retained message of its topic.
    /// Returns `true` when the stored set changed in a way worth persisting.
    pub fn apply(&mut self, msg: &Arc<Message>) -> bool {
        let key = msg.topic.as_bytestring();
        if msg.payload.is_empty() {
            self.by_topic.remove(key).is_some()
        } else {
            self.by_topic.insert(key.clone(), msg.clone());
            true
        }
    }

    /// Whether [`Self::apply`] would change anything (clearing a topic that
    /// has no retained message does not).
    pub fn would_change(&self, msg: &Message) -> bool {
        !msg.payload.is_empty() || self.by_topic.contains_key(msg.topic.as_bytestring())
    }

    pub fn insert(&mut self, msg: Arc<Message>) {
        self.by_topic.insert(msg.topic.as_bytestring().clone(), msg);
    }

    /// Live retained messages whose topic matches `filter`, expired ones pruned.
    pub fn matching(&mut self, filter: &TopicFilter) -> Vec<Arc<Message>> {
        let now = Instant::now();
        self.by_topic.retain(|_, m| !m.is_expired(now));
        if !filter.has_wildcards() {
            return self.by_topic.get(filter.as_str()).cloned().into_iter().collect();
        }
        let mut out: Vec<Arc<Message>> = self
            .by_topic
            .values()
            .filter(|m| filter_matches(filter.as_str(), m.topic.as_str()))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        out
    }
}
