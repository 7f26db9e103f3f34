//! A PostgreSQL cluster the test owns, for outages: stopped the hard way
//! (`pg_ctl stop -m immediate`, as a crash would) and started again on the
//! same data directory. Runs when `MAPCAST_TEST_PG_BIN` names PostgreSQL's
//! `bin` directory; as root, the server runs as the `postgres` user (it
//! refuses to run as root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

pub struct PgCluster {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// A fresh, running cluster, or `None` (and a "skipped" line) when
    /// `MAPCAST_TEST_PG_BIN` is not set.
    pub async fn start_if_configured(test: &str) -> Option<Self> {
        let bin = match std::env::var("MAPCAST_TEST_PG_BIN") {
            Ok(bin) if !bin.is_empty() => PathBuf::from(bin),
            _ => {
                println!(
                    "skipped: {test} needs its own PostgreSQL; set MAPCAST_TEST_PG_BIN=/usr/lib/postgresql/15/bin"
                );
                return None;
            }
        };
        let cluster = tokio::task::spawn_blocking(move || Self::init(bin)).await.unwrap();
        cluster.start().await;
        Some(cluster)
    }

    fn init(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for PostgreSQL");
        let as_postgres = run_plain("id", &["-u"]).trim() == "0";
        if as_postgres {
            // The server user must reach and own its directory.
            run_plain("chmod", &["755", path_str(dir.path())]);
            run_plain("chown", &["postgres", path_str(dir.path())]);
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { bin, dir, port, as_postgres };
        let data = cluster.data_dir();
        cluster
            .pg("initdb", &["-D", path_str(&data), "-A", "trust", "-U", "postgres", "--no-sync"]);
        cluster
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Start (or start again) on the same data directory and port; returns
    /// once it accepts connections.
    pub async fn start(&self) {
        let (data, log) = (self.data_dir(), self.dir.path().join("log"));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            path_str(self.dir.path())
        );
        self.pg_async(&[
            "-D",
            path_str(&data),
            "-l",
            path_str(&log),
            "-w",
            "-o",
            &options,
            "start",
        ])
        .await;
    }

    /// Stop without a shutdown checkpoint: every connection drops at once.
    pub async fn stop_immediate(&self) {
        let data = self.data_dir();
        self.pg_async(&["-D", path_str(&data), "-m", "immediate", "-w", "stop"]).await;
    }

    /// Stop every process of the server where it stands (SIGSTOP): open
    /// transactions hang, as on a stalled disk, until [`PgCluster::thaw`].
    pub async fn freeze(&self) {
        self.signal("STOP").await;
    }

    pub async fn thaw(&self) {
        self.signal("CONT").await;
    }

    /// Signal the postmaster and its children (the backends).
    async fn signal(&self, sig: &str) {
        let pid_file = tokio::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .await
            .expect("postmaster.pid of a running cluster");
        let pid = pid_file.lines().next().expect("the postmaster's pid").trim().to_owned();
        let sig = format!("-{sig}");
        // Children first, so that none is forked after the postmaster stops.
        let _ = tokio::process::Command::new("pkill").args([&sig, "-P", &pid]).status().await;
        let status = tokio::process::Command::new("kill").args([&sig, &pid]).status().await;
        assert!(status.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn pg_async(&self, args: &[&str]) {
        let (bin, as_postgres) = (self.bin.clone(), self.as_postgres);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_pg(&bin, as_postgres, "pg_ctl", &args)
        })
        .await
        .unwrap();
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        run_pg(&self.bin, self.as_postgres, tool, args);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        if data.join("postmaster.pid").exists() {
            let tool = self.bin.join("pg_ctl");
            let mut cmd = command(&tool, self.as_postgres);
            let _ = cmd.args(["-D", path_str(&data), "-m", "immediate", "stop"]).output();
        }
    }
}

/// Tell CI that a test with its own cluster really ran (it checks for this file).
pub async fn mark_pg_cluster_ran() {
    if let Ok(dir) = std::env::var("MAPCAST_TEST_MARKER_DIR") {
        tokio::fs::create_dir_all(&dir).await.expect("create MAPCAST_TEST_MARKER_DIR");
        tokio::fs::write(Path::new(&dir).join("pg-cluster-ran"), b"ok\n")
            .await
            .expect("write pg-cluster-ran marker");
    }
}

fn command(tool: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(tool);
        cmd
    } else {
        Command::new(tool)
    }
}

fn run_pg(bin: &Path, as_postgres: bool, tool: &str, args: &[&str]) {
    let out = command(&bin.join(tool), as_postgres)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_plain(program: &str, args: &[&str]) -> String {
    let out =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}
