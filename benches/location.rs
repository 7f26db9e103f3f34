//! Location validation: every `devices/{id}/location` publish is parsed and
//! checked as a GeoJSON Point Feature before it is routed or stored.
//! `cargo bench --bench location`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mapcast::domain::Location;

/// The shape cars send (≈180 bytes), as `mapcast-bench` generates it.
const CAR: &[u8] = br#"{"type":"Feature","geometry":{"type":"Point","coordinates":[13.404954,52.520008]},"properties":{"ts":"2026-11-25T13:00:00.123Z","speed":13.9,"heading":271.5,"accuracy":4.0,"battery":81,"kind":"car"}}"#;
/// The least a phone must send.
const MINIMAL: &[u8] =
    br#"{"type":"Feature","geometry":{"type":"Point","coordinates":[2.35,48.85]},"properties":{"ts":1795600800000}}"#;
/// Rejected: latitude out of range (the error path builds a reason string).
const INVALID: &[u8] = br#"{"type":"Feature","geometry":{"type":"Point","coordinates":[13.4,95.0]},"properties":{"ts":"2026-11-25T13:00:00Z"}}"#;

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("location_parse");
    for (name, payload) in [("car", CAR), ("minimal", MINIMAL)] {
        assert!(Location::parse(payload).is_ok(), "{name} must be valid");
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_function(name, |b| b.iter(|| Location::parse(black_box(payload))));
    }
    assert!(Location::parse(INVALID).is_err());
    group.throughput(Throughput::Bytes(INVALID.len() as u64));
    group.bench_function("invalid_latitude", |b| b.iter(|| Location::parse(black_box(INVALID))));
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
