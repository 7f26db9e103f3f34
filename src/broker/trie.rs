//! The subscription trie: filters stored level by level, so matching a topic
//! costs one walk over its levels, not a scan over every subscription.

use std::collections::HashMap;

use ntex::util::ByteString;

use super::SubscriptionOptions;
use crate::domain::{ClientId, TopicFilter};

/// One subscription as stored in a trie node.
#[derive(Debug, Clone)]
pub struct Entry {
    pub client: ClientId,
    /// `Some(group)` for a shared subscription.
    pub group: Option<ByteString>,
    /// The filter it was stored under (names the shared group's round-robin).
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Subscriptions whose filter ends at this level.
    here: Vec<Entry>,
    /// Subscriptions whose filter continues with `#` from this level.
    multi: Vec<Entry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.multi.is_empty()
    }
}

#[derive(Default, Debug)]
pub struct SubscriptionTrie {
    root: Node,
    len: usize,
}

fn same_key(a: &Entry, client: &ClientId, group: &Option<ByteString>) -> bool {
    a.client == *client && a.group == *group
}

impl SubscriptionTrie {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert or replace; returns `true` when the subscription is new.
    pub fn insert(&mut self, filter: &TopicFilter, entry: Entry) -> bool {
        let mut node = &mut self.root;
        let mut levels = filter.levels().peekable();
        let mut list = None;
        while let Some(level) = levels.next() {
            if level == "#" {
                list = Some(&mut node.multi);
                break;
            }
            node = node.children.entry(level.into()).or_default();
            if levels.peek().is_none() {
                break;
            }
        }
        let list = match list {
            Some(l) => l,
            None => &mut node.here,
        };
        if let Some(existing) = list.iter_mut().find(|e| same_key(e, &entry.client, &entry.group)) {
            *existing = entry;
            false
        } else {
            list.push(entry);
            self.len += 1;
            true
        }
    }

    /// Remove; returns `true` when it existed. Empty branches are pruned.
    pub fn remove(
        &mut self,
        filter: &TopicFilter,
        client: &ClientId,
        group: &Option<ByteString>,
    ) -> bool {
        let levels: Vec<&str> = filter.levels().collect();
        let removed = remove_at(&mut self.root, &levels, client, group);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Call `f` for every subscription whose filter matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a Entry)) {
        // Wildcards at the first level never match `$` topics [MQTT-4.7.2-1].
        walk(&self.root, topic, true, topic.starts_with('$'), &mut f);
    }
}

fn remove_at(
    node: &mut Node,
    levels: &[&str],
    client: &ClientId,
    group: &Option<ByteString>,
) -> bool {
    match levels {
        [] => remove_from(&mut node.here, client, group),
        ["#"] => remove_from(&mut node.multi, client, group),
        [first, rest @ ..] => {
            let Some(child) = node.children.get_mut(*first) else { return false };
            let removed = remove_at(child, rest, client, group);
            if removed && child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

fn remove_from(list: &mut Vec<Entry>, client: &ClientId, group: &Option<ByteString>) -> bool {
    match list.iter().position(|e| same_key(e, client, group)) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Walk `node` against the remaining `topic` levels.
fn walk<'a>(node: &'a Node, topic: &str, first: bool, dollar: bool, f: &mut impl FnMut(&'a Entry)) {
    let wild_ok = !(first && dollar);
    // `a/#` also matches `a` itself (the parent level).
    if wild_ok {
        node.multi.iter().for_each(&mut *f);
    }
    let (level, rest) = match topic.split_once('/') {
        Some((l, r)) => (l, Some(r)),
        None => (topic, None),
    };
    let mut visit = |child: &'a Node| match rest {
        Some(r) => walk(child, r, false, dollar, f),
        None => {
            child.here.iter().for_each(&mut *f);
            child.multi.iter().for_each(&mut *f);
        }
    };
    if let Some(child) = node.children.get(level) {
        visit(child);
    }
    if wild_ok && let Some(child) = node.children.get("+") {
        visit(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::QoS;
    use crate::domain::{TopicLimits, filter_matches};

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s.to_owned(), TopicLimits::default()).unwrap()
    }

    fn entry(c: &str) -> Entry {
        entry_on(c, "#")
    }

    fn entry_on(c: &str, filter: &str) -> Entry {
        Entry {
            client: ClientId::from(c),
            group: None,
            filter: f(filter),
            options: SubscriptionOptions::qos(QoS::AtMostOnce),
        }
    }

    fn matches(t: &SubscriptionTrie, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.for_each_match(topic, |e| out.push(e.client.to_string()));
        out.sort();
        out
    }

    #[test]
    fn trie_agrees_with_the_reference_matcher() {
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
            "sport/tennis/player1/#",
        ];
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "b",
            "/a",
            "a//c",
            "$SYS/x",
            "$SYS",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "a/",
            "/",
        ];
        let mut t = SubscriptionTrie::default();
        for (i, fl) in filters.iter().enumerate() {
            t.insert(&f(fl), entry(&format!("c{i:02}")));
        }
        for topic in topics {
            let mut expected: Vec<String> = filters
                .iter()
                .enumerate()
                .filter(|(_, fl)| filter_matches(fl, topic))
                .map(|(i, _)| format!("c{i:02}"))
                .collect();
            expected.sort();
            assert_eq!(matches(&t, topic), expected, "topic {topic:?}");
        }
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut t = SubscriptionTrie::default();
        assert!(t.insert(&f("a/+/c"), entry("x")));
        assert!(!t.insert(&f("a/+/c"), entry("x")));
        assert_eq!(t.len(), 1);
        assert!(t.remove(&f("a/+/c"), &ClientId::from("x"), &None));
        assert!(!t.remove(&f("a/+/c"), &ClientId::from("x"), &None));
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty());
    }

    #[test]
    fn shared_matches_carry_their_filter_text() {
        let mut t = SubscriptionTrie::default();
        let mut e = entry_on("x", "cars/+/location");
        e.group = Some("g".into());
        t.insert(&f("cars/+/location"), e);
        let mut seen = Vec::new();
        t.for_each_match("cars/1/location", |e| seen.push(e.filter.to_string()));
        assert_eq!(seen, vec!["cars/+/location".to_owned()]);
    }
}
