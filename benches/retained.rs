//! Retained-message lookups: what every SUBSCRIBE, REST topic GET and SSE
//! open costs, with 1,000 to 100,000 retained topics held.
//! `cargo bench --bench retained`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mapcast::broker::retained::RetainedStore;
use mapcast::domain::{Message, QoS};
use mapcast::domain::{TopicFilter, TopicLimits, TopicName};
use ntex::util::Bytes;

fn store(devices: usize) -> RetainedStore {
    let mut store = RetainedStore::default();
    for i in 0..devices {
        let topic = TopicName::parse(format!("devices/car-{i}/status"), TopicLimits::default());
        let payload = Bytes::from_static(b"online");
        store.insert(Arc::new(Message::new(topic.unwrap(), payload, QoS::AtLeastOnce, true)));
    }
    store
}

fn lookups(c: &mut Criterion) {
    let limits = TopicLimits::default();
    let mut group = c.benchmark_group("retained_lookup");
    for devices in [1_000, 10_000, 100_000] {
        let mut store = store(devices);
        // One device's own status, exact and through a wildcard.
        let exact = TopicFilter::parse(format!("devices/car-{}/status", devices / 2), limits);
        let wild = TopicFilter::parse(format!("devices/car-{}/#", devices / 2), limits);
        for (name, filter) in [("exact", exact.unwrap()), ("own_subtree", wild.unwrap())] {
            group.bench_with_input(BenchmarkId::new(name, devices), &filter, |b, f| {
                b.iter(|| store.matching(black_box(f)).len())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
