//! Topic names, filters and shared filters: parsing within the limits, and
//! matching checked three ways — `filter_matches`, the broker's subscription
//! trie, and a direct reading of MQTT 5.0 §4.7 written here.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mapcast::broker::trie::{Entry, SubscriptionTrie};
use mapcast::domain::{QoS, SubscriptionOptions};
use mapcast::domain::{
    ClientId, SharedFilter, TopicFilter, TopicLimits, TopicName, filter_matches,
};
use mapcast::locations::HistoryTopics;

#[derive(Debug, Arbitrary)]
struct Input {
    topics: Vec<String>,
    filters: Vec<String>,
    tight_limits: bool,
}

fuzz_target!(|input: Input| {
    let limits = if input.tight_limits {
        TopicLimits { max_len: 24, max_levels: 4 }
    } else {
        TopicLimits::default()
    };

    let topics: Vec<TopicName> = input.topics.iter().filter_map(|t| name(t, limits)).collect();
    let filters: Vec<TopicFilter> =
        input.filters.iter().filter_map(|f| filter(f, limits)).collect();
    for f in &input.filters {
        shared(f, limits);
    }

    let mut trie = SubscriptionTrie::default();
    for (i, f) in filters.iter().enumerate() {
        assert!(trie.insert(f, entry(i, f)), "each client's subscription is new");
    }
    assert_eq!(trie.len(), filters.len());

    for t in &topics {
        let expected: BTreeSet<usize> =
            (0..filters.len()).filter(|&i| spec_matches(filters[i].as_str(), t.as_str())).collect();
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(f.matches(t), expected.contains(&i), "{f:?} on {t:?}");
        }
        let mut found = BTreeSet::new();
        trie.for_each_match(t.as_str(), |e| {
            assert!(found.insert(client_index(e)), "{t:?} matched {:?} twice", e.filter);
        });
        assert_eq!(found, expected, "the trie disagrees on {t:?}");
    }

    let configured: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    let history = HistoryTopics::parse(&configured, limits).expect("valid filters");
    for t in &topics {
        assert_eq!(history.matches(t), filters.iter().any(|f| f.matches(t)));
    }

    for (i, f) in filters.iter().enumerate() {
        assert!(trie.remove(f, &client(i), &None).existed());
    }
    assert_eq!(trie.len(), 0);
});

/// A topic name; when valid, also a filter matching itself, and matched by
/// `#` and one `+` per level unless it starts with `$`.
fn name(s: &str, limits: TopicLimits) -> Option<TopicName> {
    let t = TopicName::parse(s.to_owned(), limits).ok()?;
    assert_eq!(t.as_str(), s);
    within(s, limits);
    assert!(!s.contains(['+', '#', '\0']));
    let itself = TopicFilter::parse(s.to_owned(), limits).expect("a name is a filter");
    assert!(itself.matches(&t));
    assert!(!itself.has_wildcards());
    let pluses = vec!["+"; s.split('/').count()].join("/");
    let dollar = s.starts_with('$');
    assert_eq!(filter_matches("#", s), !dollar);
    assert_eq!(filter_matches(&pluses, s), !dollar);
    Some(t)
}

fn filter(s: &str, limits: TopicLimits) -> Option<TopicFilter> {
    let f = TopicFilter::parse(s.to_owned(), limits).ok()?;
    assert_eq!(f.as_str(), s);
    within(s, limits);
    for (i, level) in s.split('/').enumerate() {
        assert!(level == "+" || !level.contains('+'));
        assert!(level != "#" || i == s.split('/').count() - 1);
        assert!(level == "#" || !level.contains('#'));
    }
    Some(f)
}

/// A shared filter writes back as the text it came from.
fn shared(s: &str, limits: TopicLimits) {
    let Ok(sf) = SharedFilter::parse(s.to_owned(), limits) else { return };
    assert_eq!(sf.to_wire(), s);
    assert_eq!(SharedFilter::parse(sf.to_wire(), limits).as_ref(), Ok(&sf));
    match &sf.group {
        Some(g) => {
            assert!(!g.is_empty() && !g.contains(['/', '+', '#']));
        }
        None => assert!(!s.starts_with("$share/")),
    }
}

fn within(s: &str, limits: TopicLimits) {
    assert!(!s.is_empty() && s.len() <= limits.max_len);
    assert!(s.split('/').count() <= limits.max_levels);
}

/// MQTT 5.0 §4.7 read directly: `#` matches the rest including its parent
/// level, `+` exactly one level, and first-level wildcards skip `$` topics.
fn spec_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    levels_match(&f, &t)
}

fn levels_match(f: &[&str], t: &[&str]) -> bool {
    match (f.split_first(), t.split_first()) {
        (Some((&"#", _)), _) => true,
        (Some((&"+", fr)), Some((_, tr))) => levels_match(fr, tr),
        (Some((fl, fr)), Some((tl, tr))) => fl == tl && levels_match(fr, tr),
        (None, None) => true,
        _ => false,
    }
}

fn client(i: usize) -> ClientId {
    ClientId::new(format!("c{i}"))
}

fn client_index(e: &Entry) -> usize {
    e.client.as_str()[1..].parse().expect("c{index}")
}

fn entry(i: usize, f: &TopicFilter) -> Entry {
    Entry {
        client: client(i),
        group: None,
        filter: f.clone(),
        options: SubscriptionOptions::qos(QoS::AtLeastOnce),
    }
}
