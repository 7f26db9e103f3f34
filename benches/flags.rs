//! Feature-flag evaluation, as a flagged request pays for it: a lookup in
//! the in-memory snapshot, the allow/deny lists and the murmur3 bucket.
//! `cargo bench --bench flags`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mapcast::flags::{Flag, FlagKey, FlagSpec, Snapshot, murmur3_x86_32};

fn snapshot() -> Snapshot {
    let spec = FlagSpec {
        enabled: true,
        rollout: 50,
        variants: vec!["grid".into(), "kmeans".into()],
        allow: (0..100).map(|i| format!("rest:allowed-{i}")).collect(),
        ..FlagSpec::default()
    };
    Snapshot::new(vec![Flag::new(FlagKey::parse("map.clustering").unwrap(), spec)])
}

fn evaluation(c: &mut Criterion) {
    let snap = snapshot();
    let mut group = c.benchmark_group("flags");
    group.bench_function("evaluate_split", |b| {
        b.iter(|| {
            snap.evaluate(black_box("map.clustering"), black_box("rest:0f3a9c1e-user"), false)
        })
    });
    group.bench_function("evaluate_unknown_flag", |b| {
        b.iter(|| snap.evaluate(black_box("no.such.flag"), black_box("rest:0f3a9c1e-user"), false))
    });
    group.bench_function("murmur3_32_bytes", |b| {
        b.iter(|| murmur3_x86_32(black_box(b"map.clustering:rest:0f3a9c1e-user"), 0))
    });
    group.finish();
}

criterion_group!(benches, evaluation);
criterion_main!(benches);
