//! Shared subscriptions across instances: every instance tells the others
//! how many members each of its `$share` groups has, and the instance that
//! accepts a publish chooses one instance per matching group, so a message
//! reaches one member cluster-wide. The choice travels with the message
//! ([`Picks`]); receivers deliver to a group only when chosen.

use std::collections::HashMap;
use std::sync::Arc;

use ntex::util::ByteString;

use super::trie::{Entry, SubscriptionTrie};
use crate::domain::{ClientId, QoS, SubscriptionOptions, TopicFilter};

/// A shared group: its name and its filter.
pub type GroupKey = (ByteString, TopicFilter);

/// Members of one group on one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Members {
    pub total: u32,
    /// Of `total`: connected now.
    pub online: u32,
}

/// Redirected at most this many times: an instance chosen for a group it
/// no longer has members of passes the message on to another.
pub const MAX_HOPS: u8 = 3;

/// The instance chosen for each shared group a message matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Picks {
    pub groups: Vec<(ByteString, TopicFilter, Arc<str>)>,
    /// 0 for a message as published; above, passed on by an instance that
    /// was chosen and had no member left: only the named groups get it.
    pub hops: u8,
}

impl Picks {
    /// The instance chosen for `group` on `filter`, if the sender knew it.
    pub fn chosen(&self, group: &ByteString, filter: &TopicFilter) -> Option<&str> {
        self.groups.iter().find(|(g, f, _)| g == group && f == filter).map(|(_, _, n)| &**n)
    }
}

/// The members of shared groups on the other live instances, as last read.
#[derive(Debug, Default)]
pub struct RemoteGroups {
    /// One entry per group, to find those a topic matches.
    trie: SubscriptionTrie,
    members: HashMap<GroupKey, Vec<(Arc<str>, Members)>>,
}

impl RemoteGroups {
    /// Built from each instance's groups.
    pub fn new(nodes: impl IntoIterator<Item = (Arc<str>, Vec<(GroupKey, Members)>)>) -> Self {
        let mut view = Self::default();
        for (node, groups) in nodes {
            for (key, m) in groups {
                if m.total == 0 {
                    continue;
                }
                let listed = view.members.entry(key.clone()).or_default();
                if listed.is_empty() {
                    view.trie.insert(
                        &key.1,
                        Entry {
                            client: ClientId::from(""),
                            group: Some(key.0.clone()),
                            filter: key.1.clone(),
                            options: SubscriptionOptions::qos(QoS::AtMostOnce),
                        },
                    );
                }
                listed.push((node.clone(), m));
            }
        }
        for listed in view.members.values_mut() {
            listed.sort_by(|a, b| a.0.cmp(&b.0));
        }
        view
    }

    /// The groups `topic` matches, with their members per instance.
    pub fn for_each_match<'a>(
        &'a self,
        topic: &str,
        mut f: impl FnMut(&'a GroupKey, &'a [(Arc<str>, Members)]),
    ) {
        self.trie.for_each_match(topic, |e| {
            let Some(group) = &e.group else { return };
            if let Some((key, listed)) =
                self.members.get_key_value(&(group.clone(), e.filter.clone()))
            {
                f(key, listed);
            }
        });
    }

    /// The members of one group per instance.
    pub fn members(&self, key: &GroupKey) -> &[(Arc<str>, Members)] {
        self.members.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// One of `candidates`, weighted round-robin on `cursor`: by connected
/// members while any instance has some, else by all members (queued for
/// sessions that come back).
pub fn pick(cursor: &mut u64, candidates: &[(Arc<str>, Members)]) -> Option<Arc<str>> {
    let online = candidates.iter().any(|(_, m)| m.online > 0);
    let weight = |m: &Members| u64::from(if online { m.online } else { m.total });
    let sum: u64 = candidates.iter().map(|(_, m)| weight(m)).sum();
    if sum == 0 {
        return None;
    }
    let mut at = *cursor % sum;
    *cursor = cursor.wrapping_add(1);
    for (node, m) in candidates {
        let w = weight(m);
        if at < w {
            return Some(node.clone());
        }
        at -= w;
    }
    None
}

/// Sums of the live instances' counters, for `$SYS/cluster/...`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterTotals {
    pub instances: u64,
    pub clients_connected: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub subscriptions: u64,
    pub retained: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TopicLimits;

    fn key(group: &str, filter: &str) -> GroupKey {
        (
            ByteString::from(group.to_owned()),
            TopicFilter::parse(filter.to_owned(), TopicLimits::default()).unwrap(),
        )
    }

    #[test]
    fn picks_go_round_by_connected_members() {
        let m = |total, online| Members { total, online };
        let nodes: Vec<(Arc<str>, Members)> =
            vec![(Arc::from("a"), m(1, 1)), (Arc::from("b"), m(2, 2)), (Arc::from("c"), m(5, 0))];
        let mut cursor = 0;
        let got: Vec<String> =
            (0..6).map(|_| pick(&mut cursor, &nodes).unwrap().to_string()).collect();
        assert_eq!(got, ["a", "b", "b", "a", "b", "b"], "c has nobody connected");
        let offline = vec![(Arc::from("a"), m(1, 0)), (Arc::from("c"), m(2, 0))];
        let got: Vec<String> =
            (0..3).map(|_| pick(&mut cursor, &offline).unwrap().to_string()).collect();
        assert_eq!(got.iter().filter(|n| *n == "c").count(), 2, "queued by weight: {got:?}");
        assert_eq!(pick(&mut cursor, &[]), None);
    }

    #[test]
    fn remote_groups_are_found_by_topic() {
        let one = Members { total: 1, online: 1 };
        let view = RemoteGroups::new([
            (Arc::from("b"), vec![(key("g", "devices/+/location"), one), (key("h", "x/#"), one)]),
            (Arc::from("c"), vec![(key("g", "devices/+/location"), one)]),
        ]);
        let mut found = Vec::new();
        view.for_each_match("devices/7/location", |k, listed| {
            found.push((
                k.0.to_string(),
                listed.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
            ))
        });
        assert_eq!(found, [("g".to_owned(), vec!["b".to_owned(), "c".to_owned()])]);
        assert_eq!(view.members(&key("h", "x/#")).len(), 1);
        assert!(view.members(&key("h", "y")).is_empty());
    }
}
