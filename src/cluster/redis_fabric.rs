//! The fabric on a Redis stream: every instance appends the publishes it
//! accepted (`XADD`, capped at `stream_max_len`) and reads everyone's from
//! its own cursor (`XREAD`), routing the others' to its subscribers. A
//! stream, not pub/sub: an instance whose connection drops resumes from its
//! cursor and misses nothing the stream still holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ntex::util::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::codec;
use super::own_log::OwnLog;
use crate::broker::groups::Picks;
use crate::broker::ports::{Fabric, SharedDurability};
use crate::broker::{Adoption, BrokerHandle};
use crate::domain::{FabricPos, Message, WriteOp};
use crate::store::Store;
use crate::telemetry::names;

/// Publishes waiting for Redis before new ones are refused to the fabric.
const QUEUE: usize = 64 * 1024;
/// Entries appended in one round trip at most.
const BATCH: usize = 512;
/// How long one `XREAD` waits for entries.
/// Short: sessions taken from a dead instance wait for the read to end
/// before the router holds them.
const BLOCK: Duration = Duration::from_millis(100);
/// How long a reply may take, beyond the blocking read's own wait.
const REPLY_WAIT: Duration = Duration::from_secs(3);
/// Missed publishes kept in memory at most for one batch of taken-over
/// sessions; beyond, they are counted as lost.
const MAX_REPLAY: usize = 256 * 1024;
/// Pause before reconnecting after a Redis error.
const RETRY: Duration = Duration::from_millis(250);
/// Kept publishes on the stream are deleted at most this often (one range
/// per interval, not one statement per batch): what a crash leaves is
/// skipped at the next start anyway.
const FORGET_EVERY: Duration = Duration::from_millis(250);

/// What the fabric needs to know.
#[derive(Debug, Clone)]
pub struct FabricSettings {
    /// Never logged: it may hold a password.
    pub redis_url: String,
    /// This instance (this run of it), on every entry it appends.
    pub node: String,
    /// This instance across its runs (`cluster.node_id`): whose kept
    /// publishes a run appends at start.
    pub node_id: String,
    pub stream: String,
    pub max_len: u64,
}

/// What the appender takes, in order.
enum Queued {
    Publish(Outgoing),
    /// Answered with where the last entry queued before it landed, once
    /// it is appended (see [`Fabric::mark`]).
    Mark(oneshot::Sender<FabricPos>),
}

struct Outgoing {
    msg: Arc<Message>,
    kept: Option<oneshot::Receiver<bool>>,
    outbox: Option<u64>,
    picks: Option<Arc<Picks>>,
}

/// The sending side, handed to the broker.
#[derive(Clone)]
pub struct RedisFabric {
    tx: mpsc::Sender<Queued>,
    node: Arc<str>,
    node_id: Arc<str>,
    /// The next outbox number: above every kept one, also across runs.
    next_outbox: Arc<AtomicU64>,
    own: Arc<OwnLog>,
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
    /// Where reading starts.
    cursor: String,
    store: Store,
    writer: SharedDurability,
    adopt_tx: mpsc::Sender<CatchUp>,
    adopt_rx: mpsc::Receiver<CatchUp>,
}

/// Sessions taken over from the dead instance `dead`, handed to the
/// router by the reader: between two reads, so the publishes the dead
/// instance missed (from its cursor up to the reader's) are queued for
/// them before any newer one, and none twice.
pub struct CatchUp {
    pub dead: String,
    pub adoptions: Vec<Adoption>,
    /// Resolves once the router has them.
    pub done: oneshot::Sender<()>,
}

/// Passes [`CatchUp`]s to the reader.
#[derive(Clone)]
pub struct Adopter(mpsc::Sender<CatchUp>);

impl Adopter {
    /// Hand `adoptions` to the router through the reader; given back when
    /// the reader stopped.
    pub async fn adopt(&self, dead: String, adoptions: Vec<Adoption>) -> Result<(), ()> {
        let (done, rx) = oneshot::channel();
        if self.0.send(CatchUp { dead, adoptions, done }).await.is_err() {
            return Err(());
        }
        rx.await.map_err(|_| ())
    }
}

impl RedisFabric {
    /// Start appending, first what earlier runs kept in `store` and did not
    /// append. Redis need not answer yet: publishes are taken (and kept)
    /// meanwhile, and readiness says it is missing.
    pub async fn start(
        settings: FabricSettings,
        store: Store,
        writer: SharedDurability,
    ) -> anyhow::Result<(Self, FabricReader, FabricHealth)> {
        let client = Client::open(settings.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis_url is not a Redis URL: {:?}", e.kind()))?;
        let left = store
            .fabric_outbox_last(&settings.node_id)
            .await
            .context("cannot read the publishes kept for the other instances")?;
        let mut conn =
            match client.get_multiplexed_async_connection_with_config(&appender_config()).await {
                Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await.ok().map(|_| c),
                Err(_) => None,
            };
        // Others' publishes are read from the stream's end now; without
        // Redis, from what it appends after this moment (by the clock: its
        // entry ids are milliseconds), whenever it comes.
        let cursor = match conn.as_mut() {
            Some(c) => last_id(c, &settings.stream).await.ok(),
            None => None,
        };
        let cursor = cursor.unwrap_or_else(|| format!("{}-0", micros_now() / 1000));
        if conn.is_none() {
            tracing::warn!(
                "Redis at cluster.redis_url does not answer; publishes are kept until it does"
            );
        }
        let up = Arc::new(AtomicBool::new(conn.is_some()));
        let (tx, rx) = mpsc::channel(QUEUE);
        // Numbers grow across runs (a run starts above the clock in
        // microseconds), so what Redis says was appended is never mistaken
        // for a newer run's.
        let first = (left + 1).max(micros_now());
        let own = Arc::new(OwnLog::default());
        let appender = Appender {
            client: client.clone(),
            conn,
            done_key: format!("{}:appended:{}", settings.stream, settings.node_id),
            node_id: Arc::from(settings.node_id.as_str()),
            settings: settings.clone(),
            up: up.clone(),
            writer: writer.clone(),
            unforgotten: 0,
            forgot_at: std::time::Instant::now(),
            own: own.clone(),
            last_appended: FabricPos::default(),
        };
        tokio::spawn(appender.run(rx, store.clone(), left));
        let health = FabricHealth(up.clone());
        tokio::spawn(super::orphans::pass_on_orphans(
            settings.clone(),
            store.clone(),
            writer.clone(),
            health.clone(),
        ));
        let (adopt_tx, adopt_rx) = mpsc::channel(16);
        let reader = FabricReader {
            client: client.clone(),
            settings: settings.clone(),
            up: up.clone(),
            cursor,
            store: store.clone(),
            writer: writer.clone(),
            adopt_tx,
            adopt_rx,
        };
        let fabric = Self {
            tx,
            node: Arc::from(settings.node.as_str()),
            node_id: Arc::from(settings.node_id.as_str()),
            next_outbox: Arc::new(AtomicU64::new(first)),
            own,
        };
        Ok((fabric, reader, health))
    }
}

fn micros_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Fabric for RedisFabric {
    fn share(
        &self,
        msg: Arc<Message>,
        kept: Option<oneshot::Receiver<bool>>,
        outbox: Option<u64>,
        picks: Option<Arc<Picks>>,
    ) -> bool {
        if self.tx.try_send(Queued::Publish(Outgoing { msg, kept, outbox, picks })).is_err() {
            crate::telemetry::metrics::global().cluster_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("publish not passed to other instances: Redis is behind");
            return false;
        }
        true
    }

    fn outbox(&self, msg: &Message, picks: Option<&Picks>) -> Option<(u64, WriteOp)> {
        let seq = self.next_outbox.fetch_add(1, Ordering::Relaxed);
        let entry = Bytes::from(codec::pack(&codec::encode(&self.node, msg, picks)));
        Some((seq, WriteOp::PutFabricOutbox { node: self.node_id.clone(), seq, entry }))
    }

    fn cursor(&self, at: FabricPos) -> Option<WriteOp> {
        Some(WriteOp::FabricCursor { node: self.node.clone(), at })
    }

    fn own_after(&self, at: FabricPos) -> Option<u64> {
        self.own.first_after(at)
    }

    fn mark(&self) -> Option<oneshot::Receiver<FabricPos>> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(Queued::Mark(tx)).ok().map(|()| rx)
    }
}

/// The appender's connection: a batch of entries may take longer than the
/// client's default 500 ms on a loaded instance, and a batch cut off is sent
/// again (so appended twice).
fn appender_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_response_timeout(Some(REPLY_WAIT))
}

/// Entries gathered for one round trip: each one's outbox number (`None`
/// for a publish nobody waited for), and the highest.
#[derive(Default)]
struct Pending {
    pipe: redis::Pipeline,
    numbers: Vec<Option<u64>>,
    through: Option<u64>,
}

/// The task that appends to the stream.
pub(super) struct Appender {
    client: Client,
    conn: Option<MultiplexedConnection>,
    /// Holds the newest outbox number appended, set in the same `MULTI` as
    /// its entry: a run that finds kept publishes skips those Redis has.
    done_key: String,
    node_id: Arc<str>,
    settings: FabricSettings,
    up: Arc<AtomicBool>,
    writer: SharedDurability,
    /// Appended kept publishes not deleted yet, up to this number.
    unforgotten: u64,
    forgot_at: std::time::Instant,
    own: Arc<OwnLog>,
    /// Where the last entry this run appended landed (`0-0`: none yet).
    last_appended: FabricPos,
}

impl Appender {
    /// An appender for `settings.node_id`'s kept publishes, connecting
    /// when it first needs Redis (see [`super::orphans`]).
    pub(super) fn new(settings: FabricSettings, writer: SharedDurability) -> Option<Self> {
        let client = Client::open(settings.redis_url.as_str()).ok()?;
        Some(Self {
            client,
            conn: None,
            done_key: format!("{}:appended:{}", settings.stream, settings.node_id),
            node_id: Arc::from(settings.node_id.as_str()),
            settings,
            up: Arc::new(AtomicBool::new(true)),
            writer,
            unforgotten: 0,
            forgot_at: std::time::Instant::now(),
            own: Arc::new(OwnLog::default()),
            last_appended: FabricPos::default(),
        })
    }

    /// Append what earlier runs kept (up to `left`), then the new
    /// publishes in submission order; a publish whose commit fails is not
    /// appended (its publisher resends). While Redis is away, retry the
    /// same batch: the queue behind it bounds what waits.
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>, store: Store, left: u64) {
        if left > 0 {
            let count = self.append_left(&store, left).await;
            if count > 0 {
                tracing::info!(
                    count,
                    "publishes kept from an earlier run passed to the other instances"
                );
            }
        }
        let mut batch = Vec::with_capacity(BATCH);
        let mut pending = Pending::default();
        loop {
            let got = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = tokio::time::sleep(FORGET_EVERY), if self.unforgotten > 0 => {
                    self.forget();
                    continue;
                }
            };
            if got == 0 {
                break;
            }
            for queued in batch.drain(..) {
                let out = match queued {
                    Queued::Publish(out) => out,
                    Queued::Mark(tx) => {
                        // What was queued before it goes first.
                        self.append(&mut pending).await;
                        let _ = tx.send(self.last_appended);
                        continue;
                    }
                };
                if let Some(kept) = out.kept
                    && !kept.await.unwrap_or(false)
                {
                    continue;
                }
                let fields = codec::encode(&self.settings.node, &out.msg, out.picks.as_deref());
                self.xadd(&mut pending.pipe, fields);
                pending.through = out.outbox.or(pending.through);
                pending.numbers.push(out.outbox);
            }
            self.append(&mut pending).await;
        }
    }

    /// Append `pending` and start it afresh.
    async fn append(&mut self, pending: &mut Pending) {
        let Pending { pipe, numbers, through } = std::mem::take(pending);
        if numbers.is_empty() {
            return;
        }
        let ids = self.send(pipe, through).await;
        if let Some(last) = ids.last().and_then(|id| FabricPos::parse(id)) {
            self.last_appended = last;
        }
        // Where each acknowledged publish landed (see `OwnLog`).
        self.own.record(numbers.into_iter().zip(ids).filter_map(|(n, id)| {
            let n = n?;
            Some((n, FabricPos::parse(&id)?))
        }));
    }

    /// Kept publishes of earlier runs with numbers up to `left`, oldest
    /// first, skipping those already appended; how many were appended.
    pub(super) async fn append_left(&mut self, store: &Store, left: u64) -> usize {
        let mut after = loop {
            match self.appended().await {
                Ok(n) => break n,
                Err(e) => {
                    self.down(&e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        self.unforgotten = after;
        self.forget();
        let mut count = 0usize;
        loop {
            let page = match store.fabric_outbox_page(&self.node_id, after, left, BATCH).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!({ names::ERROR_MESSAGE } = %e, "reading kept publishes failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let Some(&(last, _)) = page.last() else { break };
            let mut pipe = redis::pipe();
            for (seq, entry) in page {
                match codec::unpack(&entry, &self.settings.node) {
                    Some(fields) => {
                        self.xadd(&mut pipe, fields);
                        count += 1;
                    }
                    None => tracing::error!(seq, "kept publish unreadable; skipped"),
                }
            }
            let ids = self.send(pipe, Some(last)).await;
            if let Some(at) = ids.last().and_then(|id| FabricPos::parse(id)) {
                self.last_appended = at;
            }
            after = last;
        }
        count
    }

    fn xadd<K: redis::ToRedisArgs, V: redis::ToRedisArgs>(
        &self,
        pipe: &mut redis::Pipeline,
        fields: Vec<(K, V)>,
    ) {
        pipe.cmd("XADD")
            .arg(&self.settings.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.settings.max_len)
            .arg("*")
            .arg(fields);
    }

    /// Send `pipe` until Redis takes it; with kept publishes up to
    /// `through` in it, atomically with the note that they are appended,
    /// and forget them here after. The entries' ids, in order.
    async fn send(&mut self, mut pipe: redis::Pipeline, through: Option<u64>) -> Vec<String> {
        if let Some(n) = through {
            pipe.atomic().set(&self.done_key, n).ignore();
        }
        let ids = loop {
            let Some(c) = self.conn.as_mut() else {
                self.conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&appender_config())
                    .await
                    .ok();
                if self.conn.is_none() {
                    tokio::time::sleep(RETRY).await;
                }
                continue;
            };
            match pipe.query_async::<Vec<String>>(c).await {
                Ok(ids) => break ids,
                Err(e) => {
                    self.down(&e);
                    // A Redis that restarts empty forgets which kept
                    // publishes it took: delete them now, not at a start.
                    if self.unforgotten > 0 {
                        self.forget();
                    }
                    self.conn = None;
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        if let Some(n) = through {
            self.unforgotten = n;
            if self.forgot_at.elapsed() >= FORGET_EVERY {
                self.forget();
            }
        }
        ids
    }

    /// The newest outbox number Redis has (0 when it has none).
    async fn appended(&mut self) -> redis::RedisResult<u64> {
        if self.conn.is_none() {
            self.conn = Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&appender_config())
                    .await?,
            );
        }
        let conn = self.conn.as_mut().expect("connected above");
        let n: Option<u64> = conn.get(&self.done_key).await.inspect_err(|_| self.conn = None)?;
        Ok(n.unwrap_or(0))
    }

    /// Delete the kept publishes appended so far: they are on the stream.
    /// A refused delete is covered by the next (it deletes a range).
    pub(super) fn forget(&mut self) {
        let through = std::mem::take(&mut self.unforgotten);
        if through > 0 {
            let op = WriteOp::DeleteFabricOutbox { node: self.node_id.clone(), through };
            let _ = self.writer.submit(vec![op]);
        }
        self.forgot_at = std::time::Instant::now();
    }

    fn down(&self, e: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "appending to the Redis stream failed; retrying");
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

    /// Hands sessions taken over from dead instances to the router.
    pub fn adopter(&self) -> Adopter {
        Adopter(self.adopt_tx.clone())
    }

    async fn read_loop(mut self, broker: BrokerHandle) {
        // A blocking read holds its connection: give it time beyond BLOCK.
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK + REPLY_WAIT));
        let options = StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(BATCH);
        let mut cursor = self.cursor.clone();
        // Where this run starts, so that should it die before routing any
        // publish, whoever takes over its sessions knows where to replay from.
        if let Some(at) = FabricPos::parse(&cursor) {
            let op = WriteOp::FabricCursor { node: Arc::from(self.settings.node.as_str()), at };
            if self.writer.submit(vec![op]).is_err() {
                tracing::warn!("this run's first stream position not kept: writer queue full");
            }
        }
        let mut waiting: Vec<(CatchUp, Option<FabricPos>)> = Vec::new();
        loop {
            let mut conn =
                match self.client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.down(&e);
                        // Sessions and wills are not held back for Redis:
                        // taken over without what their instance missed.
                        while let Ok(req) = self.adopt_rx.try_recv() {
                            waiting.push((req, None));
                        }
                        for (req, _) in waiting.drain(..) {
                            gap(&req.dead, "Redis unreachable");
                            if hand_over(&broker, req).await.is_err() {
                                return;
                            }
                        }
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
            if !self.up.swap(true, Ordering::Relaxed) {
                tracing::info!("reading the Redis stream again");
            }
            loop {
                while let Ok(req) = self.adopt_rx.try_recv() {
                    waiting.push(self.with_cursor(req).await);
                }
                // Everything up to `cursor` reached the router: replay up
                // to there, unless the dead instance got further (then its
                // sessions wait until this reader is there too).
                let here = FabricPos::parse(&cursor);
                let mut i = 0;
                while i < waiting.len() {
                    let ready = match (waiting[i].1, here) {
                        (Some(from), Some(here)) => from <= here,
                        _ => true,
                    };
                    if !ready {
                        i += 1;
                        continue;
                    }
                    let (mut req, from) = waiting.swap_remove(i);
                    match (from, here) {
                        (Some(from), Some(here)) => {
                            if let Err(e) = self.replay(&mut conn, &mut req, from, here).await {
                                tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "publishes a dead instance missed not read");
                                gap(&req.dead, "stream unreadable");
                            }
                        }
                        _ => gap(&req.dead, "no stream position kept"),
                    }
                    if hand_over(&broker, req).await.is_err() {
                        return;
                    }
                }
                let reply: Result<Option<StreamReadReply>, _> =
                    conn.xread_options(&[&self.settings.stream], &[&cursor], &options).await;
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
                            Ok((node, msg, picks)) if node != self.settings.node => {
                                let at = FabricPos::parse(&entry.id);
                                if broker.route_remote(msg, picks, at).await.is_err() {
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
                        cursor = entry.id;
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// `req` with the dead instance's cursor, if it kept one.
    async fn with_cursor(&self, req: CatchUp) -> (CatchUp, Option<FabricPos>) {
        let from = match self.store.fabric_cursor(&req.dead).await {
            Ok(from) => from,
            Err(e) => {
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "a dead instance's stream position not read");
                None
            }
        };
        (req, from)
    }

    /// Add to `req`'s sessions the stream's entries after `from` up to
    /// `through` that their own subscriptions match.
    async fn replay(
        &self,
        conn: &mut MultiplexedConnection,
        req: &mut CatchUp,
        from: FabricPos,
        through: FabricPos,
    ) -> redis::RedisResult<()> {
        if req.adoptions.iter().all(|a| a.session.is_none()) {
            return Ok(());
        }
        if from >= through {
            for a in &mut req.adoptions {
                a.replayed_through = Some(through);
            }
            return Ok(());
        }
        let adoptions = &req.adoptions;
        let wanted = |m: &Message| adoptions.iter().any(|a| wants(a, m));
        let stream = &self.settings.stream;
        let previous = Previous { node: &req.dead, own_through: None };
        let (missed, _) = read_missed(conn, stream, &previous, from, Some(through), wanted).await?;
        for msg in missed {
            for a in &mut req.adoptions {
                if wants(a, &msg) {
                    a.replay.push(msg.clone());
                }
            }
        }
        for a in &mut req.adoptions {
            a.replayed_through = Some(through);
        }
        Ok(())
    }

    fn down(&self, e: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "Redis stream unreadable; reconnecting");
        }
    }
}

/// The instance whose sessions are taken over, and which of its own
/// entries it routed to them itself.
pub(crate) struct Previous<'a> {
    pub node: &'a str,
    /// Its entries up to here; `None`: all of them (it died holding them).
    pub own_through: Option<FabricPos>,
}

impl Previous<'_> {
    /// Whether the entry at `at` appended by `node` reached the sessions
    /// through their previous instance.
    fn routed(&self, node: &str, at: FabricPos) -> bool {
        node == self.node && self.own_through.is_none_or(|t| at <= t)
    }
}

/// The stream's entries after `from` up to `through` (its end without),
/// oldest first, except those `previous` routed to its sessions itself
/// (queued in their publish's commit there), that `keep` wants; and the
/// last entry read (`from` when none). Entries trimmed after `from`, or more than [`MAX_REPLAY`]
/// wanted, are logged and counted as a gap.
pub(crate) async fn read_missed(
    conn: &mut MultiplexedConnection,
    stream: &str,
    previous: &Previous<'_>,
    from: FabricPos,
    through: Option<FabricPos>,
    keep: impl Fn(&Message) -> bool,
) -> redis::RedisResult<(Vec<Arc<Message>>, FabricPos)> {
    let dead = previous.node;
    // Entries trimmed (MAXLEN) after the cursor are gone for good.
    let info: HashMap<String, redis::Value> =
        redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(conn).await?;
    let deleted = match info.get("max-deleted-entry-id") {
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(FabricPos::parse),
        Some(redis::Value::SimpleString(t)) => FabricPos::parse(t),
        _ => None,
    };
    if deleted.is_some_and(|d| d > from) {
        gap(dead, "trimmed from the stream");
    }
    let end = through.map_or_else(|| "+".to_owned(), |t| t.to_string());
    let mut start = format!("({from}");
    let mut last = from;
    let (mut missed, mut dropped, mut read) = (Vec::new(), 0u64, 0u64);
    loop {
        let page: redis::streams::StreamRangeReply =
            conn.xrange_count(stream, &start, &end, BATCH).await?;
        let n = page.ids.len();
        for entry in page.ids {
            start = format!("({}", entry.id);
            let Some(at) = FabricPos::parse(&entry.id) else { continue };
            last = at;
            read += 1;
            let msg = match codec::decode(&entry.map) {
                Ok((node, _, _)) if previous.routed(&node, at) => continue,
                // Passed on for a shared group: a copy of an earlier entry.
                Ok((_, _, Some(picks))) if picks.hops > 0 => continue,
                Ok((_, msg, _)) if keep(&msg) => Arc::new(msg),
                _ => continue,
            };
            if missed.len() >= MAX_REPLAY {
                dropped += 1;
            } else {
                missed.push(msg);
            }
        }
        if n < BATCH {
            break;
        }
    }
    tracing::info!(previous = dead, %from, through = %last, read, kept = missed.len(), "publishes a previous holder missed read back from the stream");
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "too many missed publishes for taken-over sessions; the rest dropped"
        );
        gap(dead, "too many to hold");
    }
    Ok((missed, last))
}

/// Whether a subscription of `a`'s own (not a shared one) matches `msg`.
fn wants(a: &Adoption, msg: &Message) -> bool {
    a.session.as_ref().is_some_and(|s| session_wants(s, msg))
}

/// Whether a subscription of `session`'s own (not a shared one) matches `msg`.
pub(crate) fn session_wants(session: &crate::domain::StoredSession, msg: &Message) -> bool {
    session.subscriptions.iter().any(|(f, o)| {
        f.group.is_none()
            && f.filter.matches(&msg.topic)
            && !(o.no_local && msg.publisher.as_ref() == Some(&session.client_id))
    })
}

async fn hand_over(broker: &BrokerHandle, req: CatchUp) -> Result<(), ()> {
    for adoption in req.adoptions {
        broker.adopt(adoption).await.map_err(|_| ())?;
    }
    let _ = req.done.send(());
    Ok(())
}

/// Some publishes the instance `previous` missed (it died, or let its
/// sessions go) cannot be queued for its taken-over sessions.
pub(crate) fn gap(previous: &str, why: &str) {
    crate::telemetry::metrics::global().cluster_replay_gaps.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        previous,
        why,
        "publishes a previous holder missed may be lost to its taken-over sessions"
    );
}

/// The id of the stream's newest entry, or `0-0` when it is empty.
async fn last_id(conn: &mut MultiplexedConnection, stream: &str) -> redis::RedisResult<String> {
    let newest: redis::streams::StreamRangeReply =
        conn.xrevrange_count(stream, "+", "-", 1).await?;
    Ok(newest.ids.into_iter().next().map_or_else(|| "0-0".to_owned(), |e| e.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ms: u64) -> FabricPos {
        FabricPos { ms, seq: 0 }
    }

    #[test]
    fn a_previous_holder_routed_its_own_entries_up_to_where_it_let_go() {
        let died = Previous { node: "a", own_through: None };
        assert!(died.routed("a", pos(99)), "all of a dead holder's own");
        assert!(!died.routed("b", pos(1)), "never another instance's");

        let let_go = Previous { node: "a", own_through: Some(pos(10)) };
        assert!(let_go.routed("a", pos(10)));
        assert!(!let_go.routed("a", pos(11)), "accepted after it let go");
        assert!(!let_go.routed("b", pos(5)));
    }
}
