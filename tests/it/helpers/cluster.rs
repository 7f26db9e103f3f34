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
