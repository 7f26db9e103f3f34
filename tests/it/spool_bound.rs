//! The telemetry spool bound under a long Elasticsearch outage: the spool
//! never grows past `telemetry.spool_max_bytes`, what it drops is counted
//! (`mapcast_telemetry_spool_dropped_total`) and logged, and every document
//! it did not drop is delivered once Elasticsearch is back.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::elastic::{APP, metric, shipping_config};
use crate::helpers::{Api, EsBulk, ServerProcess};

/// Documents are about 500 bytes: 1,500 of them are several times the bound.
const BOUND: u64 = 128 * 1024;
const REQUESTS: usize = 1_500;

/// The spool's size on disk. A directory cannot be read in one instant:
/// only files listed both before and after their sizes are read count, so
/// a segment dropped during the reading and its successor created during
/// it (never on disk together) are not added up.
#[allow(clippy::disallowed_methods, reason = "a test sizing a few small files")]
fn spool_bytes(data_dir: &Path) -> u64 {
    let dir = data_dir.join("telemetry/spool");
    let list = || -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        entries.filter_map(|e| Some(e.ok()?.path())).collect()
    };
    let sized: Vec<_> =
        list().into_iter().filter_map(|p| Some((std::fs::metadata(&p).ok()?.len(), p))).collect();
    let still = list();
    sized.into_iter().filter(|(_, p)| still.contains(p)).map(|(len, _)| len).sum()
}

#[tokio::test]
async fn the_spool_stays_within_its_bound_and_counts_and_logs_what_it_drops() {
    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shipping_config(&es.url(), "")
        .replace("[telemetry]\n", &format!("[telemetry]\nspool_max_bytes = {BOUND}\n"));
    es.fail_whole(Some(503));
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);

    let mut largest = 0;
    for i in 0..REQUESTS {
        api.get(&format!("/spooled-{i:04}"), None).await;
        largest = largest.max(spool_bytes(dir.path()));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&api, "mapcast_telemetry_spool_dropped_total").await == 0.0 {
        assert!(Instant::now() < deadline, "nothing dropped past the bound\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
        largest = largest.max(spool_bytes(dir.path()));
    }
    // Segments are a quarter of the bound; one being rewritten after a
    // partial replay is briefly on disk twice.
    assert!(largest <= BOUND + BOUND / 4, "spool reached {largest} bytes with a bound of {BOUND}");
    assert!(server.logs().contains("telemetry spool full: oldest segment dropped"));

    es.fail_whole(None);
    let shipped = |es: &EsBulk| {
        es.accepted()
            .iter()
            .filter(|a| {
                a.index == APP
                    && a.doc["url.path"].as_str().is_some_and(|p| p.starts_with("/spooled-"))
            })
            .count()
    };
    let drained = es.wait_for(Duration::from_secs(15), |_| spool_bytes(dir.path()) == 0).await;
    assert!(drained, "the spool still holds {} bytes", spool_bytes(dir.path()));
    let delivered = shipped(&es);
    let dropped = metric(&api, "mapcast_telemetry_spool_dropped_total").await;
    // Each request logs one document; the spool may also hold other log lines
    // and metrics documents, which count among the dropped ones too.
    assert!(
        delivered as f64 + dropped >= REQUESTS as f64,
        "{REQUESTS} documents: {delivered} delivered, {dropped} dropped — the rest vanished"
    );
    println!(
        "spool bound {BOUND} B: largest {largest} B, {dropped} documents dropped and counted, {delivered} delivered after the outage"
    );
}
