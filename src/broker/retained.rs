//! Retained messages: the last message published with retain on each topic.
//!
//! Kept in a tree of topic levels, so a filter lookup (every SUBSCRIBE, REST
//! topic GET and SSE open) visits only the branches the filter can match,
//! and expiry goes by a time-ordered index: neither scans every retained
//! topic.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ntex::util::ByteString;

use crate::domain::Message;
use crate::domain::TopicFilter;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// The retained message of the topic ending at this level.
    msg: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.msg.is_none() && self.children.is_empty()
    }

    fn collect_all(&self, out: &mut Vec<Arc<Message>>, skip_dollar: bool) {
        out.extend(self.msg.iter().cloned());
        for (level, child) in &self.children {
            if !(skip_dollar && level.starts_with('$')) {
                child.collect_all(out, false);
            }
        }
    }
}

#[derive(Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
    /// Messages with an expiry, soonest first.
    expiries: BTreeSet<(Instant, ByteString)>,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Set (or with an empty payload, clear) the retained message of its topic.
    /// Returns `true` when the stored set changed in a way worth persisting.
    pub fn apply(&mut self, msg: &Arc<Message>) -> bool {
        if msg.payload.is_empty() {
            self.remove(msg.topic.as_bytestring()).is_some()
        } else {
            // Kept until replaced: it must not pin the read buffer it came in.
            self.insert(Arc::new(msg.compacted()));
            true
        }
    }

    /// Whether [`Self::apply`] would change anything (clearing a topic that
    /// has no retained message does not).
    pub fn would_change(&self, msg: &Message) -> bool {
        !msg.payload.is_empty() || self.get(msg.topic.as_str()).is_some()
    }

    pub fn insert(&mut self, msg: Arc<Message>) {
        let topic = msg.topic.as_bytestring().clone();
        if let Some(at) = msg.expires_at {
            self.expiries.insert((at, topic.clone()));
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        match node.msg.replace(msg) {
            Some(old) => self.forget_expiry(&old),
            None => self.len += 1,
        }
    }

    fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.msg.as_ref()
    }

    fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        let levels: Vec<&str> = topic.split('/').collect();
        let old = remove_at(&mut self.root, &levels)?;
        self.len -= 1;
        self.forget_expiry(&old);
        Some(old)
    }

    fn forget_expiry(&mut self, old: &Message) {
        if let Some(at) = old.expires_at {
            self.expiries.remove(&(at, old.topic.as_bytestring().clone()));
        }
    }

    /// Drop the messages whose expiry has passed: only those are visited.
    fn prune_expired(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiries.first()
            && *at <= now
        {
            let (_, topic) = self.expiries.pop_first().expect("just seen");
            let levels: Vec<&str> = topic.split('/').collect();
            // Only the message that carried this expiry; a newer one on
            // the same topic has its own entry.
            let expired = self.get(&topic).is_some_and(|m| m.is_expired(now));
            if expired && remove_at(&mut self.root, &levels).is_some() {
                self.len -= 1;
            }
        }
    }

    /// Live retained messages whose topic matches `filter`, sorted by topic;
    /// expired ones are pruned first.
    pub fn matching(&mut self, filter: &TopicFilter) -> Vec<Arc<Message>> {
        self.prune_expired(Instant::now());
        let levels: Vec<&str> = filter.levels().collect();
        let mut out = Vec::new();
        collect(&self.root, &levels, true, &mut out);
        out.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        out
    }
}

fn remove_at(node: &mut Node, levels: &[&str]) -> Option<Arc<Message>> {
    match levels {
        [] => node.msg.take(),
        [first, rest @ ..] => {
            let child = node.children.get_mut(*first)?;
            let removed = remove_at(child, rest);
            if removed.is_some() && child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

/// Messages under `node` matching the remaining filter `levels`. Wildcards
/// at the first level never match `$` topics [MQTT-4.7.2-1].
fn collect(node: &Node, levels: &[&str], first: bool, out: &mut Vec<Arc<Message>>) {
    match levels {
        [] => out.extend(node.msg.iter().cloned()),
        // `a/#` also matches `a` itself (the parent level).
        ["#", ..] => node.collect_all(out, first),
        ["+", rest @ ..] => {
            for (level, child) in &node.children {
                if !(first && level.starts_with('$')) {
                    collect(child, rest, false, out);
                }
            }
        }
        [level, rest @ ..] => {
            if let Some(child) = node.children.get(*level) {
                collect(child, rest, false, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ntex::util::Bytes;

    use super::*;
    use crate::domain::QoS;
    use crate::domain::{TopicLimits, TopicName, filter_matches};

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        let topic = TopicName::parse(topic.to_owned(), TopicLimits::default()).unwrap();
        Arc::new(Message::new(topic, Bytes::from(payload.to_owned()), QoS::AtMostOnce, true))
    }

    fn topics(store: &mut RetainedStore, filter: &str) -> Vec<String> {
        let filter = TopicFilter::parse(filter.to_owned(), TopicLimits::default()).unwrap();
        store.matching(&filter).iter().map(|m| m.topic.to_string()).collect()
    }

    #[test]
    fn lookups_agree_with_the_reference_matcher() {
        let all = ["a", "a/b", "a/b/c", "b", "/a", "a//c", "$SYS/x", "$SYS", "a/", "/", "x/y/z/w"];
        let filters = [
            "#",
            "+",
            "a",
            "a/b",
            "a/+",
            "a/#",
            "+/b",
            "+/+",
            "/+",
            "a/b/c",
            "a/+/c",
            "+/#",
            "$SYS/#",
            "$SYS/+",
            "a//c",
            "a/+/+",
            "+/+/+/+",
            "nothing/#",
        ];
        let mut store = RetainedStore::default();
        for t in all {
            store.insert(msg(t, "x"));
        }
        assert_eq!(store.len(), all.len());
        for filter in filters {
            let mut expected: Vec<String> =
                all.iter().filter(|t| filter_matches(filter, t)).map(|t| t.to_string()).collect();
            expected.sort();
            assert_eq!(topics(&mut store, filter), expected, "filter {filter:?}");
        }
    }

    #[test]
    fn clearing_prunes_and_replacing_counts_once() {
        let mut store = RetainedStore::default();
        assert!(store.apply(&msg("a/b/c", "1")));
        assert!(store.apply(&msg("a/b/c", "2")));
        assert_eq!(store.len(), 1);
        assert!(store.would_change(&msg("a/b/c", "")));
        assert!(store.apply(&msg("a/b/c", "")));
        assert!(!store.would_change(&msg("a/b/c", "")));
        assert_eq!(store.len(), 0);
        assert!(store.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn expired_messages_go_and_a_newer_one_on_the_topic_stays() {
        let mut store = RetainedStore::default();
        let mut old = Message::clone(&msg("t/1", "old"));
        old.expires_at = Some(Instant::now());
        store.insert(Arc::new(old));
        let mut gone = Message::clone(&msg("t/2", "gone"));
        gone.expires_at = Some(Instant::now());
        store.insert(Arc::new(gone));
        let mut fresh = Message::clone(&msg("t/1", "fresh"));
        fresh.expires_at = Some(Instant::now() + Duration::from_secs(3600));
        store.insert(Arc::new(fresh));
        assert_eq!(topics(&mut store, "t/#"), vec!["t/1".to_owned()]);
        assert_eq!(store.len(), 1);
        assert_eq!(store.expiries.len(), 1, "one expiry entry per live message");
    }
}
