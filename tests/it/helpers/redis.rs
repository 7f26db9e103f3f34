//! A throwaway Redis the test owns (no persistence, loopback, a free
//! port), to kill and start again on the same port. Runs when
//! `redis-server` is on the PATH; CI sets `MAPCAST_TEST_REQUIRE_REDIS=1`
//! so a missing one fails instead of skipping, and checks the marker.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl RedisServer {
    /// A running server, or `None` (and a "skipped" line) without one.
    pub async fn start_if_available(test: &str) -> Option<Self> {
        let found = std::process::Command::new("redis-server").arg("--version").output().is_ok();
        if !found {
            assert!(
                std::env::var("MAPCAST_TEST_REQUIRE_REDIS").is_err(),
                "{test} needs redis-server (MAPCAST_TEST_REQUIRE_REDIS is set)"
            );
            println!("skipped: {test} needs redis-server on the PATH");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { child: None, dir: tempfile::tempdir().unwrap(), port };
        server.start().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port, empty.
    pub async fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: what it held is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }
}

/// Tests that ran against Redis leave this, so CI sees they did not skip.
pub async fn mark_redis_ran() {
    if let Ok(dir) = std::env::var("MAPCAST_TEST_MARKER_DIR") {
        tokio::fs::create_dir_all(&dir).await.expect("create MAPCAST_TEST_MARKER_DIR");
        tokio::fs::write(std::path::Path::new(&dir).join("redis-ran"), b"ok\n")
            .await
            .expect("write the redis marker");
    }
}
