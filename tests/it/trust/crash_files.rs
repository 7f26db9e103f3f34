//! A stranger who finds a way to make requests panic cannot fill the disk
//! with crash reports: past `telemetry.crash_max_files` the oldest go, and
//! the newest are always kept.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::crash::crash_files;
use crate::helpers::{Api, PASSWORD, RECV, ServerProcess, add_admin, expect_problem};

const CONFIG: &str = "[debug]\npanic_endpoint = true\n\n[telemetry]\ncrash_max_files = 3\n";

/// Make the server panic `n` times; wait until each report is on disk (or
/// the cap holds the count).
async fn panic_times(api: &Api, token: &str, dir: &Path, n: usize) {
    for _ in 0..n {
        let before = crash_files(dir);
        let resp = api.post_json("/api/v1/admin/debug/panic", Some(token), &json!({})).await;
        expect_problem(resp, 500, "internal").await;
        let deadline = tokio::time::Instant::now() + RECV;
        while crash_files(dir) == before {
            assert!(tokio::time::Instant::now() < deadline, "no new crash report");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn names(files: Vec<PathBuf>) -> BTreeSet<PathBuf> {
    files.into_iter().collect()
}

#[tokio::test]
async fn crash_reports_past_the_cap_replace_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start_with_config(dir.path(), CONFIG, &[]).await;
    let api = Api::new(server.http_addr);
    let token = api.login("root", PASSWORD).await;
    panic_times(&api, &token, dir.path(), 3).await;
    let first_three = names(crash_files(dir.path()));
    assert_eq!(first_three.len(), 3);

    panic_times(&api, &token, dir.path(), 4).await;

    let now = names(crash_files(dir.path()));
    assert_eq!(now.len(), 3, "the cap holds: {now:?}");
    assert!(now.is_disjoint(&first_three), "the newest reports are the ones kept: {now:?}");
    assert!(api.get("/healthz", None).await.status().is_success(), "the process survived");
}
