//! The subscription trie: filters stored level by level, so matching a topic
//! costs one walk over its levels, not a scan over every subscription. Each
//! level keys its subscribers by client (and shared group), so subscribing,
//! replacing and unsubscribing cost the same with 10 or 100,000 subscribers
//! of one filter.

use std::collections::HashMap;

use ntex::util::ByteString;

use crate::domain::SubscriptionOptions;
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

/// The subscriptions of one filter: plain ones by client, shared ones by
/// group, then client (so a group's last member is seen leaving).
#[derive(Default, Debug)]
struct Subscribers {
    plain: HashMap<ClientId, Entry>,
    shared: HashMap<ByteString, HashMap<ClientId, Entry>>,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }

    /// Insert or replace; `true` when new.
    fn insert(&mut self, entry: Entry) -> bool {
        let members = match &entry.group {
            None => &mut self.plain,
            Some(g) => self.shared.entry(g.clone()).or_default(),
        };
        members.insert(entry.client.clone(), entry).is_none()
    }

    fn remove(&mut self, client: &ClientId, group: &Option<ByteString>) -> Removed {
        match group {
            None => Removed::from_plain(self.plain.remove(client).is_some()),
            Some(g) => {
                let Some(members) = self.shared.get_mut(g) else { return Removed::Absent };
                if members.remove(client).is_none() {
                    return Removed::Absent;
                }
                if members.is_empty() {
                    self.shared.remove(g);
                    Removed::LastOfGroup
                } else {
                    Removed::Removed
                }
            }
        }
    }

    fn for_each<'a>(&'a self, f: &mut impl FnMut(&'a Entry)) {
        self.plain.values().for_each(&mut *f);
        self.shared.values().flat_map(|m| m.values()).for_each(f);
    }
}

/// What [`SubscriptionTrie::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Absent,
    Removed,
    /// The shared group has no members left on this filter.
    LastOfGroup,
}

impl Removed {
    fn from_plain(found: bool) -> Self {
        if found { Self::Removed } else { Self::Absent }
    }

    pub fn existed(self) -> bool {
        self != Self::Absent
    }
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Subscriptions whose filter ends at this level.
    here: Subscribers,
    /// Subscriptions whose filter continues with `#` from this level.
    multi: Subscribers,
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
        let new = list.insert(entry);
        if new {
            self.len += 1;
        }
        new
    }

    /// Remove one subscription. Empty branches are pruned.
    pub fn remove(
        &mut self,
        filter: &TopicFilter,
        client: &ClientId,
        group: &Option<ByteString>,
    ) -> Removed {
        let levels: Vec<&str> = filter.levels().collect();
        let removed = remove_at(&mut self.root, &levels, client, group);
        if removed.existed() {
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
) -> Removed {
    match levels {
        [] => node.here.remove(client, group),
        ["#"] => node.multi.remove(client, group),
        [first, rest @ ..] => {
            let Some(child) = node.children.get_mut(*first) else { return Removed::Absent };
            let removed = remove_at(child, rest, client, group);
            if removed.existed() && child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

/// Walk `node` against the remaining `topic` levels.
fn walk<'a>(node: &'a Node, topic: &str, first: bool, dollar: bool, f: &mut impl FnMut(&'a Entry)) {
    let wild_ok = !(first && dollar);
    // `a/#` also matches `a` itself (the parent level).
    if wild_ok {
        node.multi.for_each(f);
    }
    let (level, rest) = match topic.split_once('/') {
        Some((l, r)) => (l, Some(r)),
        None => (topic, None),
    };
    let mut visit = |child: &'a Node| match rest {
        Some(r) => walk(child, r, false, dollar, f),
        None => {
            child.here.for_each(f);
            child.multi.for_each(f);
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
    use crate::domain::QoS;
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
        assert_eq!(t.remove(&f("a/+/c"), &ClientId::from("x"), &None), Removed::Removed);
        assert_eq!(t.remove(&f("a/+/c"), &ClientId::from("x"), &None), Removed::Absent);
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

    #[test]
    fn removing_a_groups_last_member_says_so() {
        let mut t = SubscriptionTrie::default();
        let g = Some(ByteString::from("g"));
        for c in ["a", "b"] {
            let mut e = entry_on(c, "t/#");
            e.group = g.clone();
            t.insert(&f("t/#"), e);
        }
        t.insert(&f("t/#"), entry_on("plain", "t/#"));
        assert_eq!(t.remove(&f("t/#"), &ClientId::from("a"), &g), Removed::Removed);
        assert_eq!(t.remove(&f("t/#"), &ClientId::from("b"), &g), Removed::LastOfGroup);
        assert_eq!(matches(&t, "t/x"), vec!["plain".to_owned()]);
    }
}
