//! What each instance tells the others besides its publishes: its members
//! of shared groups and its counters, in one Redis hash per instance
//! (`{stream}:peer:{instance}`) that expires [`PEER_TTL`] after its last
//! write, so an instance that dies drops out on its own. A sorted set
//! (`{stream}:peers`) lists the instances, so nobody scans the keyspace.
//! Every instance rewrites its hash at once when its groups change and
//! every [`WRITE_EVERY`] otherwise, and reads everyone's every
//! [`READ_EVERY`]: a member that subscribes on one instance is chosen by
//! the others within about half a second.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ntex::util::ByteString;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::Stats;
use crate::broker::groups::{ClusterTotals, GroupKey, Members, RemoteGroups};
use crate::broker::ports::Peers;
use crate::domain::{TopicFilter, TopicLimits};
use crate::telemetry::names;

/// How long an instance counts as alive after its last write.
pub const PEER_TTL: Duration = Duration::from_secs(4);
const WRITE_EVERY: Duration = Duration::from_secs(1);
const READ_EVERY: Duration = Duration::from_millis(250);
/// How long one Redis round trip may take before the connection is dropped.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Instances read at most.
const MAX_PEERS: isize = 1000;
/// Listed instances whose hash is gone are unlisted after this long.
const UNLIST_AFTER: Duration = Duration::from_secs(60);

const GROUP: &str = "g:";
const CONNECTED: &str = "clients_connected";
const RECEIVED: &str = "messages_received";
const SENT: &str = "messages_sent";
const SUBSCRIPTIONS: &str = "subscriptions";
const RETAINED: &str = "retained";

/// The broker's view of the other instances.
#[derive(Clone)]
pub struct RedisPeers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPeers")
    }
}

struct Inner {
    node: Arc<str>,
    remote: RwLock<Arc<RemoteGroups>>,
    /// This instance's groups, when they changed since the last write.
    local: Mutex<Option<Vec<(GroupKey, Members)>>>,
    changed: Notify,
    totals: Mutex<Option<ClusterTotals>>,
}

/// The task that writes this instance's hash and reads the others'.
pub struct PeersTask {
    inner: Arc<Inner>,
    client: Client,
    prefix: String,
    index: String,
}

impl RedisPeers {
    /// For instance `node`, on the keys of `stream`. Redis need not answer yet.
    pub fn new(redis_url: &str, stream: &str, node: &str) -> anyhow::Result<(Self, PeersTask)> {
        let client = Client::open(redis_url)
            .map_err(|e| anyhow::anyhow!("cluster.redis_url is not a Redis URL: {:?}", e.kind()))?;
        let inner = Arc::new(Inner {
            node: Arc::from(node),
            remote: RwLock::new(Arc::default()),
            local: Mutex::new(Some(Vec::new())),
            changed: Notify::new(),
            totals: Mutex::new(None),
        });
        let task = PeersTask {
            inner: inner.clone(),
            client,
            prefix: format!("{stream}:peer:"),
            index: format!("{stream}:peers"),
        };
        Ok((Self { inner }, task))
    }
}

impl Peers for RedisPeers {
    fn node(&self) -> &Arc<str> {
        &self.inner.node
    }

    fn remote_groups(&self) -> Arc<RemoteGroups> {
        self.inner.remote.read().expect("peers lock").clone()
    }

    fn set_local_groups(&self, groups: Vec<(GroupKey, Members)>) {
        *self.inner.local.lock().expect("peers lock") = Some(groups);
        self.inner.changed.notify_one();
    }

    fn totals(&self) -> Option<ClusterTotals> {
        *self.inner.totals.lock().expect("peers lock")
    }
}

fn millis_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl PeersTask {
    /// Write and read until `stop`; `stats` are this instance's counters.
    pub fn spawn(self, stats: Arc<Stats>, stop: CancellationToken) {
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = self.run(stats) => {}
            }
        });
    }

    async fn run(self, stats: Arc<Stats>) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn: Option<MultiplexedConnection> = None;
        let mut groups = Vec::new();
        let mut written_at: Option<Instant> = None;
        let mut read_at = Instant::now();
        let mut failing = false;
        loop {
            if let Some(changed) = self.inner.local.lock().expect("peers lock").take() {
                groups = changed;
                written_at = None;
            }
            if conn.is_none() {
                conn = self.client.get_multiplexed_async_connection_with_config(&config).await.ok();
            }
            let result = match conn.as_mut() {
                Some(c) => self.round(c, &groups, &stats, &mut written_at).await,
                None => Err(redis::RedisError::from((redis::ErrorKind::Io, "not connected"))),
            };
            match result {
                Ok(()) => {
                    read_at = Instant::now();
                    if std::mem::take(&mut failing) {
                        tracing::info!("reading the other instances from Redis again");
                    }
                }
                Err(e) => {
                    conn = None;
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "the other instances could not be read from Redis; retrying");
                    }
                    // What was read last is stale by now: nobody is known
                    // (each instance then delivers to its own members).
                    if read_at.elapsed() > PEER_TTL {
                        *self.inner.remote.write().expect("peers lock") = Arc::default();
                        *self.inner.totals.lock().expect("peers lock") = None;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(READ_EVERY) => {}
                _ = self.inner.changed.notified() => {}
            }
        }
    }

    /// Write this instance's hash when due, then read everyone's.
    async fn round(
        &self,
        conn: &mut MultiplexedConnection,
        groups: &[(GroupKey, Members)],
        stats: &Stats,
        written_at: &mut Option<Instant>,
    ) -> redis::RedisResult<()> {
        let now = millis_now();
        let own = format!("{}{}", self.prefix, self.inner.node);
        if written_at.is_none_or(|at| at.elapsed() >= WRITE_EVERY) {
            let c = |v: &std::sync::atomic::AtomicU64| v.load(Relaxed).to_string();
            let mut fields = vec![
                (CONNECTED.to_owned(), c(&stats.clients_connected)),
                (RECEIVED.to_owned(), c(&stats.messages_received)),
                (SENT.to_owned(), c(&stats.messages_sent)),
                (SUBSCRIPTIONS.to_owned(), c(&stats.subscriptions)),
                (RETAINED.to_owned(), c(&stats.retained_count)),
            ];
            for ((group, filter), m) in groups {
                fields.push((
                    format!("{GROUP}{group}/{}", filter.as_str()),
                    format!("{} {}", m.total, m.online),
                ));
            }
            redis::pipe()
                .atomic()
                .del(&own)
                .ignore()
                .hset_multiple(&own, &fields)
                .ignore()
                .pexpire(&own, PEER_TTL.as_millis() as i64)
                .ignore()
                .zadd(&self.index, &*self.inner.node, now)
                .ignore()
                .zrembyscore(&self.index, "-inf", now - UNLIST_AFTER.as_millis() as i64)
                .ignore()
                .query_async::<()>(conn)
                .await?;
            *written_at = Some(Instant::now());
        }
        let listed: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(&self.index)
            .arg(0)
            .arg(MAX_PEERS - 1)
            .query_async(conn)
            .await?;
        let mut pipe = redis::pipe();
        for node in &listed {
            pipe.hgetall(format!("{}{node}", self.prefix));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(conn).await?;
        let mut totals = ClusterTotals::default();
        let mut others = Vec::new();
        for (node, hash) in listed.into_iter().zip(hashes) {
            // Expired: that instance stopped writing.
            if hash.is_empty() {
                continue;
            }
            let n = |field: &str| hash.get(field).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            totals.instances += 1;
            totals.clients_connected += n(CONNECTED);
            totals.messages_received += n(RECEIVED);
            totals.messages_sent += n(SENT);
            totals.subscriptions += n(SUBSCRIPTIONS);
            // Every instance holds every retained message.
            totals.retained = totals.retained.max(n(RETAINED));
            if *node != *self.inner.node {
                others.push((Arc::from(node.as_str()), parse_groups(&hash)));
            }
        }
        let metrics = crate::telemetry::metrics::global();
        metrics.cluster_instances.store(totals.instances, Relaxed);
        metrics.cluster_clients_connected.store(totals.clients_connected, Relaxed);
        *self.inner.totals.lock().expect("peers lock") = Some(totals);
        *self.inner.remote.write().expect("peers lock") = Arc::new(RemoteGroups::new(others));
        Ok(())
    }
}

/// The groups in an instance's hash; unreadable ones are skipped.
fn parse_groups(hash: &HashMap<String, String>) -> Vec<(GroupKey, Members)> {
    let limits = TopicLimits { max_len: usize::from(u16::MAX), max_levels: usize::from(u16::MAX) };
    hash.iter()
        .filter_map(|(field, value)| {
            // A group's name holds no `/`: the first one ends it.
            let (group, filter) = field.strip_prefix(GROUP)?.split_once('/')?;
            let filter = TopicFilter::parse(ByteString::from(filter.to_owned()), limits).ok()?;
            let (total, online) = value.split_once(' ')?;
            let members = Members { total: total.parse().ok()?, online: online.parse().ok()? };
            Some(((ByteString::from(group.to_owned()), filter), members))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_back_from_their_fields() {
        let hash: HashMap<String, String> = [
            ("g:g/devices/+/location", "2 1"),
            ("g:h/#", "1 0"),
            ("g:broken", "1 1"),
            ("g:x/a", "many"),
            (CONNECTED, "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut groups: Vec<(String, String, Members)> = parse_groups(&hash)
            .into_iter()
            .map(|((g, f), m)| (g.to_string(), f.as_str().to_owned(), m))
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            groups,
            [
                ("g".to_owned(), "devices/+/location".to_owned(), Members { total: 2, online: 1 }),
                ("h".to_owned(), "#".to_owned(), Members { total: 1, online: 0 }),
            ]
        );
    }
}
