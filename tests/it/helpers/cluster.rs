//! Several real instances on one fresh PostgreSQL database and one fresh
//! `redis-server`, for the cluster tests.

use std::time::Duration;

use super::{RedisServer, ServerProcess, fresh_postgres_database, postgres_test_url};

pub struct Cluster {
    pub redis: RedisServer,
    /// The shared database.
    pub url: String,
    pub nodes: Vec<(ServerProcess, tempfile::TempDir)>,
}

impl Cluster {
    /// `n` instances, or `None` when PostgreSQL or Redis is missing (the
    /// markers make CI fail on that).
    pub async fn start(test: &str, n: usize) -> Option<Self> {
        Self::start_with_config(test, n, "").await
    }

    /// Like [`Cluster::start`], each instance with the configuration file `toml`.
    pub async fn start_with_config(test: &str, n: usize, toml: &str) -> Option<Self> {
        let base = postgres_test_url(test)?;
        let redis = RedisServer::start_if_available(test).await?;
        let url = fresh_postgres_database(&base).await;
        let mut nodes = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let args = ["--database-url", &url, "--cluster-redis-url", &redis.url()];
            nodes.push((ServerProcess::start_with_config(dir.path(), toml, &args).await, dir));
        }
        // Each instance reads the publish stream from where it started:
        // give the readers a moment to be there before the first publish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(Self { redis, url, nodes })
    }

    pub fn node(&self, i: usize) -> &ServerProcess {
        &self.nodes[i].0
    }

    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.nodes[i].0.mqtt_addr
    }

    /// Every instance's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|(n, _)| n.logs()).collect::<Vec<_>>().join("\n---\n")
    }
}

/// Instances with fixed node ids, data directories and ports on one fresh
/// PostgreSQL database and `redis-server`: each can be killed and started
/// again where a balancer in front of them expects it.
pub struct FixedCluster {
    /// Runs as long as the instances.
    _redis: RedisServer,
    pub instances: Vec<Instance>,
}

impl FixedCluster {
    /// `n` instances, `node-0` to `node-{n-1}`, each with `toml` in its
    /// config file; `None` when PostgreSQL or Redis is missing.
    pub async fn start(test: &str, n: usize, toml: &str) -> Option<Self> {
        let base = postgres_test_url(test)?;
        let redis = RedisServer::start_if_available(test).await?;
        let url = fresh_postgres_database(&base).await;
        let mut instances = Vec::new();
        for i in 0..n {
            instances.push(Instance::start(&format!("node-{i}"), toml, &url, &redis.url()).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(Self { _redis: redis, instances })
    }

    /// Every run of every instance, logged.
    pub fn logs(&self) -> String {
        self.instances.iter().map(Instance::logs).collect::<Vec<_>>().join("\n---\n")
    }
}

/// One instance that keeps its node id, data directory and ports across
/// SIGKILLs and restarts.
pub struct Instance {
    pub node_id: String,
    pub mqtt_port: u16,
    pub http_port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    process: Option<ServerProcess>,
    /// What its killed runs logged.
    earlier_logs: String,
}

impl Instance {
    async fn start(node_id: &str, toml: &str, url: &str, redis: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mapcast.toml");
        let text = format!("{toml}\n[cluster]\nnode_id = \"{node_id}\"\n");
        tokio::fs::write(&config, text).await.expect("write the config file");
        let args = vec![
            "--config".to_owned(),
            config.to_str().expect("UTF-8 path").to_owned(),
            "--database-url".to_owned(),
            url.to_owned(),
            "--cluster-redis-url".to_owned(),
            redis.to_owned(),
        ];
        let mut instance = Self {
            node_id: node_id.to_owned(),
            mqtt_port: free_port(),
            http_port: free_port(),
            dir,
            args,
            process: None,
            earlier_logs: String::new(),
        };
        instance.restart().await;
        instance
    }

    /// Start it (again) on its own data directory and ports.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "{} is running", self.node_id);
        let mqtt = format!("127.0.0.1:{}", self.mqtt_port);
        let http = format!("127.0.0.1:{}", self.http_port);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_mapcast"));
        let process =
            ServerProcess::start_listening(program, self.dir.path(), [&mqtt, &http], &args).await;
        self.process = Some(process);
    }

    /// SIGKILL; its log is kept.
    pub async fn kill9(&mut self) {
        let process = self.process.take().expect("running");
        self.earlier_logs.push_str(&process.logs());
        self.earlier_logs.push('\n');
        process.kill9().await;
    }

    /// Every run's log.
    pub fn logs(&self) -> String {
        let now = self.process.as_ref().map(ServerProcess::logs).unwrap_or_default();
        format!("{}{now}", self.earlier_logs)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
