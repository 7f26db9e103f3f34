//! The map snapshot build (FeatureCollection bytes + R-tree + id list) at
//! fleet sizes of 1K, 10K and 100K active devices, and a `?bbox=` selection
//! on it. `cargo bench --bench snapshot`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mapcast::domain::{Bbox, DeviceId, DeviceKind, Location, MapSnapshot, Position};

/// Devices spread over the globe, each with a full set of properties; a
/// `BTreeMap` as the updater keeps its table.
fn fleet(devices: usize) -> BTreeMap<DeviceId, Position> {
    (0..devices as i64)
        .map(|i| {
            let location = Location {
                lon: (i % 3600) as f64 / 10.0 - 180.0 + 0.012_345,
                lat: (i % 1700) as f64 / 10.0 - 85.0 + 0.006_789,
                alt: None,
                ts_ms: 1_795_600_800_000 + i,
                speed: Some(13.5),
                heading: Some(270.0),
                accuracy: Some(5.0),
                battery: Some(80.0),
                kind: Some(DeviceKind::Car),
            };
            let id = DeviceId::parse(format!("car-{i:06}")).unwrap();
            (id, Position { location, received_at_ms: 1_795_600_800_250 + i })
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    for devices in [1_000, 10_000, 100_000] {
        let table = fleet(devices);
        group.bench_with_input(BenchmarkId::from_parameter(devices), &table, |b, t| {
            b.iter(|| MapSnapshot::build(1, 1_795_600_860_000, black_box(t)))
        });
    }
    group.finish();

    let snapshot = MapSnapshot::build(1, 1_795_600_860_000, &fleet(100_000));
    let europe = Bbox::parse("-10,35,30,60").unwrap();
    c.bench_function("snapshot_bbox_select/100000", |b| {
        b.iter(|| snapshot.select(black_box(&europe)))
    });
}

criterion_group!(benches, build);
criterion_main!(benches);
