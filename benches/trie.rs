//! Subscription-trie matching: the per-publish routing lookup.
//!
//! A fleet-shaped trie (one exact subscription per device, a few wildcard
//! watchers and shared groups), matched against device topics that hit and
//! topics that miss; and subscribing to one filter that already has
//! thousands of subscribers (100,000 phones on `map/version`).
//! `cargo bench --bench trie`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mapcast::broker::trie::{Entry, SubscriptionTrie};
use mapcast::domain::{ClientId, TopicFilter, TopicLimits};
use mapcast::domain::{QoS, SubscriptionOptions};

fn entry(client: &str, filter: &TopicFilter, group: Option<&str>) -> Entry {
    Entry {
        client: ClientId::new(client.to_owned()),
        group: group.map(|g| g.to_owned().into()),
        filter: filter.clone(),
        options: SubscriptionOptions::qos(QoS::AtMostOnce),
    }
}

fn fleet_trie(devices: usize) -> SubscriptionTrie {
    let limits = TopicLimits::default();
    let mut trie = SubscriptionTrie::default();
    for i in 0..devices {
        // Each owner's phone follows its own car, and the car its commands.
        let filter = TopicFilter::parse(format!("devices/car-{i}/location"), limits).unwrap();
        trie.insert(&filter, entry(&format!("phone-{i}"), &filter, None));
        let filter = TopicFilter::parse(format!("devices/car-{i}/cmd/#"), limits).unwrap();
        trie.insert(&filter, entry(&format!("car-{i}"), &filter, None));
    }
    for (n, f) in ["devices/+/location", "devices/#", "map/#", "$SYS/#"].iter().enumerate() {
        let filter = TopicFilter::parse(f.to_string(), limits).unwrap();
        trie.insert(&filter, entry(&format!("watcher-{n}"), &filter, None));
    }
    let filter = TopicFilter::parse("devices/+/location".to_owned(), limits).unwrap();
    for w in 0..4 {
        trie.insert(&filter, entry(&format!("ingest-{w}"), &filter, Some("ingest")));
    }
    trie
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_match");
    for devices in [1_000, 10_000, 100_000] {
        let trie = fleet_trie(devices);
        let hit = format!("devices/car-{}/location", devices / 2);
        let miss = "cars/unknown/telemetry";
        group.bench_with_input(BenchmarkId::new("device_location", devices), &hit, |b, t| {
            b.iter(|| {
                let mut n = 0usize;
                trie.for_each_match(black_box(t), |_| n += 1);
                n
            })
        });
        group.bench_with_input(BenchmarkId::new("no_subscriber", devices), &miss, |b, t| {
            b.iter(|| {
                let mut n = 0usize;
                trie.for_each_match(black_box(t), |_| n += 1);
                n
            })
        });
    }
    group.finish();
}

/// One more phone subscribes to (and leaves) a filter `n` phones hold.
fn subscribing(c: &mut Criterion) {
    let limits = TopicLimits::default();
    let filter = TopicFilter::parse("map/version".to_owned(), limits).unwrap();
    let mut group = c.benchmark_group("trie_subscribe");
    for n in [1_000, 10_000, 100_000] {
        let mut trie = SubscriptionTrie::default();
        for i in 0..n {
            trie.insert(&filter, entry(&format!("phone-{i}"), &filter, None));
        }
        let newcomer = entry("phone-new", &filter, None);
        group.bench_function(BenchmarkId::new("one_filter", n), |b| {
            b.iter(|| {
                trie.insert(&filter, black_box(newcomer.clone()));
                trie.remove(&filter, &newcomer.client, &None)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matching, subscribing);
criterion_main!(benches);
