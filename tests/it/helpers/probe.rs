//! What a running server says about itself: the resident memory of its
//! process (from `/proc`) and single samples of its `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    #[allow(clippy::disallowed_methods, reason = "test code reading /proc")]
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The value of one sample of `GET /metrics`, named as exposed, labels
/// included: `mapcast_clients_connected` or `name{reason="x"}`.
pub async fn metric(http_addr: SocketAddr, sample: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("http://{http_addr}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
}

/// Poll `sample` until `done` holds for it; returns the last value read.
pub async fn wait_for_metric(
    http_addr: SocketAddr,
    sample: &str,
    timeout: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = metric(http_addr, sample).await;
        if done(value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
