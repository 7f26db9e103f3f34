//! Which instance holds each client id's session: the broker's
//! [`Ownership`] port on PostgreSQL (claims with a rising epoch, a lease
//! per instance saying it is alive, reserved delivery-number blocks) and
//! Redis (one control stream per instance, on which a claimant asks the
//! previous holder to let go and hears that it did).
//!
//! A CONNECT claims its client id in one transaction and learns who held it.
//! When that is another live instance, the claimant appends a takeover to
//! the holder's control stream; the holder closes its connection (v5
//! DISCONNECT 0x8E), commits what it queued for the session, forgets it and
//! answers "released", with where its routing to the session stopped. The
//! claimant then loads the session from the store and queues the
//! publishes that neither instance routed to it while it moved (those on
//! the fabric after that point: see [`Handover`]).
//! A holder told of an epoch lower than the one it knows answers
//! "superseded" and keeps it: of racing CONNECTs the highest epoch wins.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Value};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::ports::{BoxFuture, Claim, ClaimError, MissedRead, Ownership};
use crate::broker::{Adoption, BrokerHandle, Handover, Release, Will};
use crate::cluster::codec;
use crate::cluster::redis_fabric::{self, Adopter};
use crate::domain::{ClientId, FabricPos, Message, Principal, RestoredState, StoredSession};
use crate::store::{DeadClaim, Store, node_lease};
use crate::telemetry::names;

/// How long an instance's lease runs unless renewed: a dead instance's
/// sessions are taken without its answer after this.
pub const NODE_LEASE: Duration = Duration::from_secs(10);
/// How often the lease is renewed.
const RENEW: Duration = Duration::from_secs(2);
/// Every this many renewals, forget what dead instances left behind.
const PURGE_EVERY: u64 = 150;
/// A dead instance's lease is forgotten this long after it lapsed.
const PURGE_AFTER: Duration = Duration::from_secs(3600);
/// How often a claimant waiting for an answer checks the holder is alive.
const ANSWER_POLL: Duration = Duration::from_millis(500);
/// Longest a claimant waits for a live holder that does not answer (Redis
/// away): then the CONNECT is refused as "server unavailable".
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// Entries a control stream keeps (approximately).
const CONTROL_MAX_LEN: u64 = 10_000;
/// A control stream nobody appended to for this long is dropped by Redis
/// (an instance's stream outlives it by this much).
const CONTROL_TTL_MS: u64 = 10 * 60 * 1000;
/// How long one `XREAD` on the control stream waits.
const BLOCK: Duration = Duration::from_secs(1);
/// Pause before reconnecting after a Redis error.
const RETRY: Duration = Duration::from_millis(250);
/// How long a reply on the shared connection may take: reads of what a
/// dead instance missed, many at once after it died, run to thousands of
/// entries each (the client's default, 500 ms, cut them off under load).
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// Reads of what a dead instance missed are tried this often before its
/// session is taken without them.
const MISSED_TRIES: u32 = 3;
/// Claims waiting for an answer at most.
const MAX_WAITING: usize = 16 * 1024;
/// How often an instance looks for dead instances' sessions and wills.
const ADOPT_EVERY: Duration = Duration::from_secs(1);
/// Dead instances' claims taken over per transaction (and sessions loaded
/// per round): survivors share a large number batch by batch.
const ADOPT_BATCH: u32 = 256;
/// Claims are looked through when an instance's lease lapsed since the
/// last look, and every this many looks anyway (the leases table is small,
/// the claims table is not).
const ADOPT_SWEEP_EVERY: u32 = 30;

const KIND: &str = "k";
const CLIENT: &str = "c";
const EPOCH: &str = "e";
const FROM: &str = "f";
/// In a "released" answer: the holder held the session; where its routing
/// to it stopped on the fabric, for other instances' publishes and for
/// its own (see [`Handover`]).
const HELD: &str = "h";
const ROUTED_THROUGH: &str = "p";
const OWN_THROUGH: &str = "o";
const TAKEOVER: &str = "takeover";
const RELEASED: &str = "released";
const SUPERSEDED: &str = "superseded";

/// The [`Ownership`] port of several instances; cheap to clone.
#[derive(Clone)]
pub struct ClusterOwnership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterOwnership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOwnership").field("node", &self.inner.node).finish()
    }
}

struct Inner {
    store: Store,
    node: String,
    client: Client,
    /// Control streams are `<prefix><instance>`.
    prefix: String,
    /// The fabric's stream.
    stream: String,
    /// A shared connection for appends, replaced after an error. The lock
    /// is held only to clone or replace it, never across an await.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Claims waiting for the previous holder's answer, by client id and
    /// epoch. Held only to insert, remove or take.
    waiting: Mutex<HashMap<(ClientId, u64), oneshot::Sender<Release>>>,
    /// The next delivery-number block, reserved ahead. Held only to take
    /// or put it.
    next_block: Mutex<Option<u64>>,
    reserve: Notify,
    /// Client ids taken from dead instances on their way to the router: a
    /// CONNECT claiming one waits until the router holds its session.
    adopting: Mutex<HashSet<ClientId>>,
}

/// How a claimant got a session another instance held.
enum LetGo {
    /// Its lease lapsed: it died.
    Lapsed,
    /// It let go (`None`: it held nothing).
    Released(Option<Handover>),
}

/// Where the last holder of a session stopped routing to it.
struct Stopped {
    holder: String,
    /// Its last other instance's publish routed; `None`: its kept cursor.
    from: Option<FabricPos>,
    /// Its last own publish routed; `None`: all of them (it died holding
    /// the session, or could not tell).
    own_through: Option<FabricPos>,
}

/// Answers from other instances come in here, once the broker runs.
pub struct ControlReader {
    inner: Arc<Inner>,
}

impl ClusterOwnership {
    /// Take this instance's lease, claim the stored sessions nobody alive
    /// holds and keep only those of `restored`, whose delivery numbers then
    /// start a fresh block.
    ///
    /// Two live runs of one `node_id` would pass on each other's kept
    /// publishes: while another run of it holds its lease, wait for that to
    /// lapse (a run killed moments ago elsewhere), then refuse to start.
    /// `previous_run`, the last run on this data directory, is dead.
    pub async fn start(
        store: Store,
        node_id: &str,
        node: String,
        previous_run: Option<&str>,
        redis_url: &str,
        stream: &str,
        restored: &mut RestoredState,
    ) -> anyhow::Result<(Self, ControlReader)> {
        let client = Client::open(redis_url)
            .map_err(|e| anyhow::anyhow!("cluster.redis_url is not a Redis URL: {:?}", e.kind()))?;
        let started = Instant::now();
        while let Some(other) =
            store.hold_node_run(node_id, &node, previous_run, NODE_LEASE).await?
        {
            if started.elapsed() > NODE_LEASE + RENEW {
                anyhow::bail!(
                    "another instance runs as cluster.node_id {node_id:?} ({other}): give each instance its own"
                );
            }
            if started.elapsed() < ANSWER_POLL {
                tracing::warn!(
                    node_id,
                    other,
                    "another run of this cluster.node_id holds its lease; waiting for it to lapse (at most 10 s)"
                );
            }
            tokio::time::sleep(ANSWER_POLL).await;
        }
        let claimed: HashMap<String, u64> =
            store.claim_orphaned_sessions(&node).await?.into_iter().collect();
        let before = restored.sessions.len();
        restored.sessions.retain(|s| claimed.contains_key(s.client_id.as_str()));
        restored.next_seq = store.reserve_seq_block().await?;
        tracing::info!(
            sessions = restored.sessions.len(),
            held_elsewhere = before - restored.sessions.len(),
            "sessions nobody alive held are held here"
        );
        let inner = Arc::new(Inner {
            store,
            node,
            client,
            prefix: format!("{stream}:control:"),
            stream: stream.to_owned(),
            conn: Mutex::new(None),
            waiting: Mutex::new(HashMap::new()),
            next_block: Mutex::new(None),
            reserve: Notify::new(),
            adopting: Mutex::new(HashSet::new()),
        });
        inner.reserve.notify_one();
        Ok((Self { inner: inner.clone() }, ControlReader { inner }))
    }
}

impl Ownership for ClusterOwnership {
    fn claim(
        &self,
        client: ClientId,
        owner: Principal,
        take_over_any: bool,
        will: Option<&Will>,
    ) -> BoxFuture<'static, Result<Claim, ClaimError>> {
        let inner = self.inner.clone();
        // Packed as on the fabric: another instance reads it back.
        let will = will.map(|w| {
            (codec::pack(&codec::encode(&self.inner.node, &w.message, None)), w.delay_secs)
        });
        Box::pin(async move { inner.claim(client, owner, take_over_any, will).await })
    }

    fn take_seq_block(&self) -> Option<u64> {
        let block = self.inner.next_block.lock().expect("block lock").take();
        self.inner.reserve.notify_one();
        block
    }
}

impl Inner {
    async fn claim(
        self: &Arc<Self>,
        client: ClientId,
        owner: Principal,
        take_over_any: bool,
        will: Option<(Vec<u8>, u32)>,
    ) -> Result<Claim, ClaimError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(client.id = %client, { names::ERROR_MESSAGE } = %e, "client id not claimed: the store failed");
            ClaimError::Unavailable
        };
        let record = self
            .store
            .claim_session(client.as_str(), &self.node, owner.as_str(), take_over_any, will)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or(ClaimError::NotOwner)?;
        let epoch = record.epoch;
        let mut missed = None;
        let moved = match record.previous {
            Some(previous) if previous == self.node => {
                // Taken over from a dead instance just now: held by the
                // router once the missed publishes are read (bounded: the
                // reader answers within a read).
                let started = Instant::now();
                while self.adopting.lock().expect("adopting lock").contains(&client)
                    && started.elapsed() < ANSWER_WAIT
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None
            }
            previous => {
                // Whose routing to the session stopped where: what it
                // missed is read from the fabric after that.
                let mut stopped = None;
                if let Some(previous) = &previous {
                    let started = Instant::now();
                    let released = if record.previous_alive {
                        self.wait_release(previous, &client, epoch).await?
                    } else {
                        LetGo::Lapsed
                    };
                    stopped = match released {
                        // Where the instance that last held it stopped,
                        // not a claimant that died waiting for it.
                        LetGo::Lapsed => Some(Stopped {
                            holder: record.source.clone().unwrap_or_else(|| previous.clone()),
                            from: None,
                            own_through: None,
                        }),
                        LetGo::Released(Some(routed)) => {
                            if routed.own_through.is_none() {
                                let why = "its own publishes did not reach the stream in time";
                                redis_fabric::gap(previous, why);
                            }
                            Some(Stopped {
                                holder: previous.clone(),
                                from: routed.through,
                                own_through: routed.own_through,
                            })
                        }
                        LetGo::Released(None) => None,
                    };
                    crate::telemetry::metrics::global()
                        .cluster_takeovers
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        client.id = %client,
                        claim.epoch = epoch,
                        waited_ms = started.elapsed().as_millis() as u64,
                        previous_alive = record.previous_alive,
                        "client id taken over from another instance"
                    );
                }
                let session =
                    self.store.load_session(client.as_str()).await.map_err(|e| unavailable(&e))?;
                if let (Some(stopped), Some(session)) = (&stopped, &session)
                    && !session.subscriptions.is_empty()
                {
                    missed = self.missed(stopped, session).await;
                }
                Some(session)
            }
        };
        let has_messages =
            moved.as_ref().and_then(Option::as_ref).is_some_and(|s| !s.messages.is_empty());
        let seq_block = if has_messages {
            Some(self.store.reserve_seq_block().await.map_err(|e| unavailable(&e))?)
        } else {
            None
        };
        Ok(Claim { epoch, moved, seq_block, missed })
    }

    /// The publishes the instance that held `session` had not queued for
    /// it when it died or let go, read from the fabric after where it
    /// stopped to the end.
    async fn missed(&self, stopped: &Stopped, session: &StoredSession) -> Option<MissedRead> {
        let holder = stopped.holder.as_str();
        let from = match stopped.from {
            Some(from) => from,
            None => match self.store.fabric_cursor(holder).await {
                Ok(Some(from)) => from,
                Ok(None) => {
                    redis_fabric::gap(holder, "no stream position kept");
                    return None;
                }
                Err(e) => {
                    tracing::warn!({ names::ERROR_MESSAGE } = %e, "a previous holder's stream position not read");
                    redis_fabric::gap(holder, "stream position unreadable");
                    return None;
                }
            },
        };
        let previous = redis_fabric::Previous { node: holder, own_through: stopped.own_through };
        let read = || async {
            let mut conn = self.redis().await?;
            let wanted = |m: &Message| redis_fabric::session_wants(session, m);
            redis_fabric::read_missed(&mut conn, &self.stream, &previous, from, None, wanted).await
        };
        let mut tries = 0;
        loop {
            tries += 1;
            match read().await {
                Ok((messages, through)) => return Some(MissedRead { through, messages }),
                Err(e) => {
                    *self.conn.lock().expect("conn lock") = None;
                    tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), tries, "publishes a previous holder missed not read");
                    if tries >= MISSED_TRIES {
                        redis_fabric::gap(holder, "stream unreadable");
                        return None;
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// The shared connection, connected if need be.
    async fn redis(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cached = self.conn.lock().expect("conn lock").clone();
        match cached {
            Some(c) => Ok(c),
            None => {
                let config = AsyncConnectionConfig::new().set_response_timeout(Some(REPLY_WAIT));
                let c = self.client.get_multiplexed_async_connection_with_config(&config).await?;
                *self.conn.lock().expect("conn lock") = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// Ask `holder` to let go of `client` and wait for its answer; go on
    /// without one once its lease lapsed.
    async fn wait_release(
        self: &Arc<Self>,
        holder: &str,
        client: &ClientId,
        epoch: u64,
    ) -> Result<LetGo, ClaimError> {
        let (tx, mut rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            if waiting.len() >= MAX_WAITING {
                return Err(ClaimError::Unavailable);
            }
            waiting.insert((client.clone(), epoch), tx);
        }
        let _forget = Forget { inner: self, key: (client.clone(), epoch) };
        let epoch_text = epoch.to_string();
        let fields = [
            (KIND, TAKEOVER.as_bytes()),
            (CLIENT, client.as_str().as_bytes()),
            (EPOCH, epoch_text.as_bytes()),
            (FROM, self.node.as_bytes()),
        ];
        if let Err(e) = self.append(holder, &fields).await {
            tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "takeover not sent: Redis failed");
        }
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            match tokio::time::timeout(ANSWER_POLL, &mut rx).await {
                Ok(Ok(Release::Released(routed))) => return Ok(LetGo::Released(routed)),
                Ok(Ok(Release::Superseded)) => return Err(ClaimError::Superseded),
                Ok(Err(_)) => return Err(ClaimError::Unavailable),
                Err(_) => {}
            }
            match self.store.node_alive(holder).await {
                Ok(false) => {
                    tracing::info!(client.id = %client, "the previous holder's lease lapsed; taken without its answer");
                    return Ok(LetGo::Lapsed);
                }
                Ok(true) | Err(_) if Instant::now() >= deadline => {
                    tracing::warn!(client.id = %client, "the previous holder did not answer in time");
                    return Err(ClaimError::Unavailable);
                }
                _ => {}
            }
        }
    }

    /// Append one entry to `node`'s control stream.
    async fn append(&self, node: &str, fields: &[(&str, &[u8])]) -> redis::RedisResult<()> {
        let key = format!("{}{node}", self.prefix);
        let mut conn = self.redis().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(CONTROL_MAX_LEN)
            .arg("*")
            .arg(fields)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(CONTROL_TTL_MS)
            .ignore();
        let sent = pipe.query_async::<()>(&mut conn).await;
        if sent.is_err() {
            *self.conn.lock().expect("conn lock") = None;
        }
        sent
    }

    /// Keep one delivery-number block reserved ahead.
    async fn reserve_blocks(self: Arc<Self>) {
        loop {
            self.reserve.notified().await;
            while self.next_block.lock().expect("block lock").is_none() {
                match self.store.reserve_seq_block().await {
                    Ok(block) => *self.next_block.lock().expect("block lock") = Some(block),
                    Err(e) => {
                        tracing::warn!({ names::ERROR_MESSAGE } = %e, "no delivery-number block reserved; retrying");
                        tokio::time::sleep(RENEW).await;
                    }
                }
            }
        }
    }

    /// Take over, batch by batch, the sessions and wills of instances whose
    /// lease lapsed: their sessions queue here until their clients return,
    /// their wills go out from here.
    async fn adopt_dead(self: Arc<Self>, broker: BrokerHandle, adopter: Option<Adopter>) {
        let mut live: HashSet<String> = HashSet::new();
        let mut looks = ADOPT_SWEEP_EVERY;
        loop {
            tokio::time::sleep(ADOPT_EVERY).await;
            match self.store.live_nodes().await {
                Ok(now_live) => {
                    let now_live: HashSet<String> = now_live.into_iter().collect();
                    if live.iter().any(|node| !now_live.contains(node)) {
                        looks = ADOPT_SWEEP_EVERY;
                    }
                    live = now_live;
                }
                Err(e) => {
                    tracing::warn!({ names::ERROR_MESSAGE } = %e, "instances' leases not read; retrying");
                    looks = ADOPT_SWEEP_EVERY;
                    continue;
                }
            }
            looks += 1;
            if looks < ADOPT_SWEEP_EVERY {
                continue;
            }
            looks = 0;
            loop {
                let claims = match self.store.adopt_dead_claims(&self.node, ADOPT_BATCH).await {
                    Ok(claims) => claims,
                    Err(e) => {
                        tracing::warn!({ names::ERROR_MESSAGE } = %e, "dead instances' sessions not taken over; retrying");
                        looks = ADOPT_SWEEP_EVERY;
                        break;
                    }
                };
                let full = claims.len() == ADOPT_BATCH as usize;
                if claims.is_empty() {
                    break;
                }
                tracing::info!(
                    claims = claims.len(),
                    "taking over the client ids of dead instances"
                );
                self.adopting
                    .lock()
                    .expect("adopting lock")
                    .extend(claims.iter().map(|c| ClientId::from(c.client_id.as_str())));
                let mut adoptions = Vec::with_capacity(claims.len());
                for claim in claims {
                    let dead = claim.node.clone();
                    adoptions.push((dead, self.adoption(claim).await));
                }
                // One block above every number the dead instances used.
                let seq_block = if adoptions
                    .iter()
                    .any(|(_, a)| a.session.as_ref().is_some_and(|s| !s.messages.is_empty()))
                {
                    match self.store.reserve_seq_block().await {
                        Ok(block) => Some(block),
                        Err(e) => {
                            tracing::warn!({ names::ERROR_MESSAGE } = %e, "no delivery-number block for taken-over sessions");
                            None
                        }
                    }
                } else {
                    None
                };
                // By dead instance: the fabric reader queues for them what
                // their instance missed, then hands them to the router.
                let mut by_node: Vec<(String, Vec<Adoption>)> = Vec::new();
                for (dead, mut adoption) in adoptions {
                    adoption.seq_block = seq_block;
                    match by_node.iter_mut().find(|(n, _)| *n == dead) {
                        Some((_, list)) => list.push(adoption),
                        None => by_node.push((dead, vec![adoption])),
                    }
                }
                for (dead, adoptions) in by_node {
                    let ids: Vec<ClientId> =
                        adoptions.iter().map(|a| a.client_id.clone()).collect();
                    let handed = match &adopter {
                        Some(adopter) => adopter.adopt(dead, adoptions).await.is_ok(),
                        None => {
                            let mut ok = true;
                            for adoption in adoptions {
                                ok &= broker.adopt(adoption).await.is_ok();
                            }
                            ok
                        }
                    };
                    {
                        let mut adopting = self.adopting.lock().expect("adopting lock");
                        for id in &ids {
                            adopting.remove(id);
                        }
                    }
                    if !handed {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// What the router needs to hold `claim`: its stored session and will.
    async fn adoption(&self, claim: DeadClaim) -> Adoption {
        let client_id = ClientId::from(claim.client_id.as_str());
        let session = if claim.has_session {
            match self.store.load_session(&claim.client_id).await {
                Ok(session) => session,
                Err(e) => {
                    // Held by this instance but not loaded: its client's
                    // next CONNECT loads it (this instance lets go of it).
                    tracing::warn!(client.id = %client_id, { names::ERROR_MESSAGE } = %e, "a dead instance's session was not loaded");
                    None
                }
            }
        } else {
            None
        };
        let will = claim.will.as_deref().and_then(|packed| {
            let will = decode_will(packed, &self.node);
            if will.is_none() {
                tracing::warn!(client.id = %client_id, "a dead instance's client's will is unreadable; dropped");
            }
            will
        });
        Adoption {
            client_id,
            epoch: claim.epoch,
            session,
            will,
            will_at: claim.lapsed_at + Duration::from_secs(u64::from(claim.will_delay)),
            seq_block: None,
            replay: Vec::new(),
            replayed_through: None,
        }
    }

    /// Renew this instance's lease: other instances take its sessions
    /// without asking once it lapses.
    async fn renew_lease(self: Arc<Self>) {
        let name = node_lease(&self.node);
        let mut renewals = 0u64;
        loop {
            tokio::time::sleep(RENEW).await;
            renewals += 1;
            if renewals.is_multiple_of(PURGE_EVERY)
                && let Err(e) = self.store.purge_dead_claims(PURGE_AFTER).await
            {
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "dead instances' claims not purged");
            }
            match self.store.hold_lease(&name, &self.node, NODE_LEASE).await {
                Ok(true) => {}
                Ok(false) => tracing::error!("this instance's lease is held by another"),
                Err(e) => {
                    tracing::warn!({ names::ERROR_MESSAGE } = %e, "this instance's lease not renewed")
                }
            }
        }
    }
}

/// Drops a claim's waiting slot however the wait ends.
struct Forget<'a> {
    inner: &'a Inner,
    key: (ClientId, u64),
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.inner.waiting.lock().expect("waiting lock").remove(&self.key);
    }
}

impl ControlReader {
    /// Answer takeovers and hear answers until `stop`; keep the lease and
    /// a block of delivery numbers meanwhile.
    /// `adopter` (the fabric reader's) hands over dead instances' sessions.
    pub fn spawn(self, broker: BrokerHandle, stop: CancellationToken, adopter: Option<Adopter>) {
        let inner = self.inner;
        spawn_until(&stop, inner.clone().renew_lease());
        spawn_until(&stop, inner.clone().reserve_blocks());
        spawn_until(&stop, inner.clone().adopt_dead(broker.clone(), adopter));
        spawn_until(&stop, read_loop(inner, broker));
    }
}

/// A will packed by [`ClusterOwnership::claim`].
fn decode_will(packed: &[u8], node: &str) -> Option<Message> {
    let fields = codec::unpack(packed, node)?
        .into_iter()
        .map(|(name, value)| (name, redis::Value::BulkString(value)))
        .collect();
    codec::decode(&fields).ok().map(|(_, msg, _)| msg)
}

/// Run `work` until it ends or `stop` is cancelled.
fn spawn_until(stop: &CancellationToken, work: impl Future<Output = ()> + Send + 'static) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = work => {}
        }
    });
}

async fn read_loop(inner: Arc<Inner>, broker: BrokerHandle) {
    let key = format!("{}{}", inner.prefix, inner.node);
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK * 3));
    let options = StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(512);
    // The stream is this run's own: everything on it is for this run.
    let mut cursor = "0-0".to_owned();
    let mut down = false;
    loop {
        let mut conn = match inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if !std::mem::replace(&mut down, true) {
                    tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "control stream unreadable; reconnecting");
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        down = false;
        loop {
            let reply: Result<Option<StreamReadReply>, _> =
                conn.xread_options(&[&key], &[&cursor], &options).await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "control stream unreadable; reconnecting");
                    break;
                }
            };
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                cursor = entry.id.clone();
                handle(&inner, &broker, &entry.map);
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One control entry: a takeover to answer, or an answer to a claim here.
fn handle(inner: &Arc<Inner>, broker: &BrokerHandle, fields: &HashMap<String, Value>) {
    let text = |name: &str| match fields.get(name) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    };
    let (Some(kind), Some(client), Some(epoch)) =
        (text(KIND), text(CLIENT), text(EPOCH).and_then(|e| e.parse::<u64>().ok()))
    else {
        crate::telemetry::metrics::global()
            .cluster_malformed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!("control entry skipped: fields missing or malformed");
        return;
    };
    let client = ClientId::from(client);
    match kind {
        TAKEOVER => {
            let Some(from) = text(FROM).map(str::to_owned) else { return };
            let inner = inner.clone();
            let broker = broker.clone();
            // Its own task: committing the session's writes takes a round
            // trip to the store, and other takeovers need not wait.
            tokio::spawn(async move {
                let (answer, routed) = match broker.release(client.clone(), epoch).await {
                    Ok(Release::Released(routed)) => (RELEASED, routed),
                    Ok(Release::Superseded) => (SUPERSEDED, None),
                    Err(e) => {
                        // The claimant loads what the store has.
                        tracing::warn!(client.id = %client, { names::ERROR_MESSAGE } = %e, "released with writes not confirmed");
                        (RELEASED, None)
                    }
                };
                let epoch = epoch.to_string();
                let mut fields = vec![
                    (KIND, answer.as_bytes().to_vec()),
                    (CLIENT, client.as_str().as_bytes().to_vec()),
                    (EPOCH, epoch.into_bytes()),
                    (FROM, inner.node.as_bytes().to_vec()),
                ];
                if let Some(routed) = routed {
                    fields.push((HELD, b"1".to_vec()));
                    let positions =
                        [(ROUTED_THROUGH, routed.through), (OWN_THROUGH, routed.own_through)];
                    for (name, at) in positions {
                        if let Some(at) = at {
                            fields.push((name, at.to_string().into_bytes()));
                        }
                    }
                }
                let fields: Vec<(&str, &[u8])> =
                    fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                if let Err(e) = inner.append(&from, &fields).await {
                    tracing::warn!({ names::ERROR_MESSAGE } = ?e.kind(), "takeover answer not sent: Redis failed");
                }
            });
        }
        RELEASED | SUPERSEDED => {
            let at = |name| text(name).and_then(FabricPos::parse);
            let routed = text(HELD)
                .is_some()
                .then(|| Handover { through: at(ROUTED_THROUGH), own_through: at(OWN_THROUGH) });
            let answer =
                if kind == RELEASED { Release::Released(routed) } else { Release::Superseded };
            if let Some(tx) = inner.waiting.lock().expect("waiting lock").remove(&(client, epoch)) {
                let _ = tx.send(answer);
            }
        }
        _ => {}
    }
}
