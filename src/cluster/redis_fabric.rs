//! The fabric on a Redis stream: every instance appends the publishes it
//! accepted (`XADD`, capped at `stream_max_len`) and reads everyone's from
//! its own cursor (`XREAD`), routing the others' to its subscribers. A
//! stream, not pub/sub: an instance whose connection drops resumes from its
//! cursor and misses nothing the stream still holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::codec;
use crate::broker::BrokerHandle;
use crate::broker::ports::Fabric;
use crate::domain::Message;
use crate::telemetry::names;

/// Publishes waiting for Redis before new ones are refused to the fabric.
const QUEUE: usize = 64 * 1024;
/// Entries appended in one round trip at most.
const BATCH: usize = 512;
/// How long one `XREAD` waits for entries.
const BLOCK: Duration = Duration::from_secs(1);
/// Pause before reconnecting after a Redis error.
const RETRY: Duration = Duration::from_millis(250);

/// What the fabric needs to know.
#[derive(Debug, Clone)]
pub struct FabricSettings {
    /// Never logged: it may hold a password.
    pub redis_url: String,
    /// This instance (this run of it), on every entry it appends.
    pub node: String,
    pub stream: String,
    pub max_len: u64,
}

struct Outgoing {
    msg: Arc<Message>,
    kept: Option<oneshot::Receiver<bool>>,
}

/// The sending side, handed to the broker.
#[derive(Clone)]
pub struct RedisFabric {
    tx: mpsc::Sender<Outgoing>,
}

/// Whether this instance reaches Redis now: readiness fails without it, so
/// a balancer sends clients to instances that do.
#[derive(Debug, Clone)]
pub struct FabricHealth(Arc<AtomicBool>);

impl FabricHealth {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for RedisFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisFabric")
    }
}

/// The receiving side, started once the broker runs.
pub struct FabricReader {
    client: Client,
    settings: FabricSettings,
    up: Arc<AtomicBool>,
}

impl RedisFabric {
    /// Check that Redis answers (a clear error at start rather than a
    /// silent instance apart), then start appending.
    pub async fn connect(
        settings: FabricSettings,
    ) -> anyhow::Result<(Self, FabricReader, FabricHealth)> {
        let client = Client::open(settings.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis_url is not a Redis URL: {:?}", e.kind()))?;
        let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| {
            anyhow::anyhow!("Redis at cluster.redis_url does not answer: {:?}", e.kind())
        })?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let up = Arc::new(AtomicBool::new(true));
        tokio::spawn(append_loop(client.clone(), Some(conn), rx, settings.clone(), up.clone()));
        let health = FabricHealth(up.clone());
        Ok((Self { tx }, FabricReader { client, settings, up }, health))
    }
}

impl Fabric for RedisFabric {
    fn share(&self, msg: Arc<Message>, kept: Option<oneshot::Receiver<bool>>) {
        if self.tx.try_send(Outgoing { msg, kept }).is_err() {
            crate::telemetry::metrics::global().cluster_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("publish not passed to other instances: Redis is behind");
        }
    }
}

/// Append in submission order; a publish whose commit fails is not
/// appended (its publisher resends). While Redis is away, retry the same
/// batch: the queue behind it bounds what waits.
async fn append_loop(
    client: Client,
    mut conn: Option<MultiplexedConnection>,
    mut rx: mpsc::Receiver<Outgoing>,
    settings: FabricSettings,
    up: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut entries = 0;
        for out in batch.drain(..) {
            if let Some(kept) = out.kept
                && !kept.await.unwrap_or(false)
            {
                continue;
            }
            pipe.cmd("XADD")
                .arg(&settings.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(settings.max_len)
                .arg("*")
                .arg(codec::encode(&settings.node, &out.msg))
                .ignore();
            entries += 1;
        }
        if entries == 0 {
            continue;
        }
        loop {
            let Some(c) = conn.as_mut() else {
                conn = client.get_multiplexed_async_connection().await.ok();
                if conn.is_none() {
                    tokio::time::sleep(RETRY).await;
                }
                continue;
            };
            match pipe.query_async::<()>(c).await {
                Ok(()) => break,
                Err(e) => {
                    if up.swap(false, Ordering::Relaxed) {
                        tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "appending to the Redis stream failed; retrying");
                    }
                    conn = None;
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

impl FabricReader {
    /// Route the other instances' publishes to `broker` until `stop`.
    pub fn spawn(
        self,
        broker: BrokerHandle,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = self.read_loop(broker) => {}
            }
        })
    }

    async fn read_loop(self, broker: BrokerHandle) {
        // A blocking read holds its connection: give it time beyond BLOCK.
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK * 3));
        let options = StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(BATCH);
        let mut cursor: Option<String> = None;
        loop {
            let mut conn =
                match self.client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.down(&e);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
            // From the stream's end at start; from where it stopped after.
            let from = match &cursor {
                Some(c) => c.clone(),
                None => match last_id(&mut conn, &self.settings.stream).await {
                    Ok(id) => id,
                    Err(e) => {
                        self.down(&e);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
            };
            cursor = Some(from);
            if !self.up.swap(true, Ordering::Relaxed) {
                tracing::info!("reading the Redis stream again");
            }
            loop {
                let at = cursor.as_deref().unwrap_or("$");
                let reply: Result<Option<StreamReadReply>, _> =
                    conn.xread_options(&[&self.settings.stream], &[at], &options).await;
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        self.down(&e);
                        break;
                    }
                };
                for key in reply.into_iter().flat_map(|r| r.keys) {
                    for entry in key.ids {
                        match codec::decode(&entry.map) {
                            Ok((node, msg)) if node != self.settings.node => {
                                if broker.route_remote(msg).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                crate::telemetry::metrics::global()
                                    .cluster_malformed
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::warn!({ names::ERROR_MESSAGE } = %e, "stream entry skipped");
                            }
                        }
                        cursor = Some(entry.id);
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    fn down(&self, e: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "Redis stream unreadable; reconnecting");
        }
    }
}

/// The id of the stream's newest entry, or `0-0` when it is empty.
async fn last_id(conn: &mut MultiplexedConnection, stream: &str) -> redis::RedisResult<String> {
    let newest: redis::streams::StreamRangeReply =
        conn.xrevrange_count(stream, "+", "-", 1).await?;
    Ok(newest.ids.into_iter().next().map_or_else(|| "0-0".to_owned(), |e| e.id))
}
