//! A flood of bytes that are not HTTP costs a stranger a 400 each, and
//! costs the logs one line per interval: each is counted in a metric, not
//! logged one by one.

use std::time::Duration;

use crate::helpers::{RECV, RawHttp, ServerProcess, metric};

const MALFORMED: &str = "mapcast_http_malformed_requests_total";
const FLOOD: usize = 200;

#[tokio::test]
async fn a_flood_of_malformed_requests_is_counted_and_logged_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let counted_before = metric(server.http_addr, MALFORMED).await;
    let lines_before = server.logs().lines().count();

    for _ in 0..FLOOD {
        let mut conn = RawHttp::connect(server.http_addr).await;
        conn.send(b"\x00\x01\x02 not http\r\n\r\n").await;
        let answer = conn.read_until_closed(RECV).await;
        assert_eq!(answer.status(), Some(400), "{answer:?}");
    }

    let counted = metric(server.http_addr, MALFORMED).await;
    assert_eq!(counted - counted_before, FLOOD as f64, "each one is counted");
    // The summary comes within the reporting interval (10 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(13);
    while !server.logs().contains("malformed HTTP requests") {
        assert!(tokio::time::Instant::now() < deadline, "no summary line:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = server.logs();
    let new_lines: Vec<&str> = logs.lines().skip(lines_before).collect();
    assert!(
        new_lines.len() < 10,
        "{} lines for {FLOOD} requests:\n{}",
        new_lines.len(),
        new_lines.join("\n")
    );
    let summary = new_lines.iter().find(|l| l.contains("malformed HTTP requests")).unwrap();
    assert!(summary.contains(&format!("\"count\":{FLOOD}")), "{summary}");
    assert!(!summary.contains("\"log.level\":\"error\""), "{summary}");
}
