//! What the kernel says about a process: CPU time and resident memory, read
//! from `/proc` so any broker (mapcast, Mosquitto, ...) can be measured alike.

use std::time::Instant;

use super::stats::human_count;
use serde::Serialize;

/// CPU seconds (user + system, all threads) a process has used so far.
pub async fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await.ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
pub async fn rss_kib(pid: &str) -> Option<u64> {
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await.ok()?;
    parse_rss_kib(&status)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// A CPU-time reading of a process at an instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    cpu_s: f64,
}

impl CpuSample {
    pub async fn take(pid: &str) -> Option<Self> {
        let at = Instant::now();
        cpu_seconds(pid).await.map(|cpu_s| CpuSample { at, cpu_s })
    }

    /// CPU seconds used between `self` and `later`, and as a share of one core.
    pub fn until(&self, later: &CpuSample) -> (f64, f64) {
        let cpu_s = later.cpu_s - self.cpu_s;
        let wall = later.at.duration_since(self.at).as_secs_f64();
        (cpu_s, if wall > 0.0 { 100.0 * cpu_s / wall } else { 0.0 })
    }
}

/// CPU and memory of a process over a measured window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessUsage {
    pub pid: u32,
    /// User + system CPU seconds during the window.
    pub cpu_s: f64,
    /// `cpu_s` over the window's wall time, in % of one core.
    pub cpu_pct: f64,
    pub rss_kib_start: Option<u64>,
    pub rss_kib_end: Option<u64>,
}

impl ProcessUsage {
    /// `count` things done in the window per CPU-second the process used.
    pub fn per_cpu_s(&self, count: u64) -> f64 {
        if self.cpu_s > 0.0 { count as f64 / self.cpu_s } else { 0.0 }
    }

    /// `pid …: CPU-s (share of a core), N <what> per CPU-second, RSS a → b KiB`
    /// for a report's broker or server line.
    pub fn summary(&self, per_cpu_s: f64, what: &str) -> String {
        let kib = |k: Option<u64>| k.map_or("?".into(), |k| human_count(k as f64));
        format!(
            "pid {}: {:.2} CPU-s ({:.0} % of a core), {} {what} per CPU-second, RSS {} → {} KiB",
            self.pid,
            self.cpu_s,
            self.cpu_pct,
            human_count(per_cpu_s),
            kib(self.rss_kib_start),
            kib(self.rss_kib_end),
        )
    }
}

/// Samples a process at the start and the end of a window.
pub struct Probe {
    pid: u32,
    cpu: Option<CpuSample>,
    rss_kib: Option<u64>,
}

impl Probe {
    pub async fn start(pid: u32) -> Self {
        let p = pid.to_string();
        Probe { pid, cpu: CpuSample::take(&p).await, rss_kib: rss_kib(&p).await }
    }

    pub async fn finish(&self) -> ProcessUsage {
        let p = self.pid.to_string();
        let end = CpuSample::take(&p).await;
        let (cpu_s, cpu_pct) = match (self.cpu, end) {
            (Some(start), Some(end)) => start.until(&end),
            _ => (0.0, 0.0),
        };
        ProcessUsage {
            pid: self.pid,
            cpu_s,
            cpu_pct,
            rss_kib_start: self.rss_kib,
            rss_kib_end: rss_kib(&p).await,
        }
    }
}

/// Fail early, with a clear message, on a pid that is not a running process.
pub fn check_pid(pid: u32) -> anyhow::Result<()> {
    if std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
        Ok(())
    } else {
        anyhow::bail!("no process {pid}: --broker-pid must be the broker's running process id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parens() {
        let stat = "1234 (my (odd) broker) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 4 0 100 123456 789 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn rss_comes_from_the_vmrss_line() {
        let status = "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmRSS:\t    7312 kB\nThreads:\t1\n";
        assert_eq!(parse_rss_kib(status), Some(7312));
    }

    #[tokio::test]
    async fn this_process_can_be_measured() {
        let pid = std::process::id();
        let probe = Probe::start(pid).await;
        let usage = probe.finish().await;
        assert!(usage.rss_kib_start.unwrap() > 0);
        assert!(usage.cpu_s >= 0.0);
    }
}
