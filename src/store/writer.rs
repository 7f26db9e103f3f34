//! The batching writer: every broker write goes through one task that commits
//! whatever has queued up in one transaction (group commit). Publishers that
//! need durability wait for the commit holding their write; nobody waits for
//! the database on the routing path.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Any;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Store;
use super::broker_state::encode_props;
use super::commit_marks::CommitMarks;
use super::commit_pace::CommitPace;
use super::write_health::{self, WriteHealth};
use crate::broker::ports::{BoxFuture, CommitReceipt, Durability};
use crate::domain::{ClientId, Message, Principal, StoreError, WriteOp};

/// Items queued before callers get `StoreError::Overloaded`.
const QUEUE: usize = 64 * 1024;
/// Operations committed in one transaction at most.
const MAX_BATCH_OPS: usize = 4096;
/// A commit taking longer than this counts as failed: its durable callers
/// are told so (they retry; duplicates are allowed at QoS 1).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a COMMIT that went unanswered is looked up before its callers
/// are told it failed (see [`CommitMarks`]).
const LOOKUP_LIMIT: Duration = Duration::from_secs(60);
/// Pause between attempts while writes fail, and between probes when idle.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// The writer's own connection goes back to the pool after this long
/// without writes.
const KEEP_IDLE_CONNECTION: Duration = Duration::from_secs(1);
/// Non-durable publish writes (QoS 0 positions, history, retained) kept for
/// retry while the database is down; older ones are dropped beyond this
/// (memory stays bounded during long outages). Session-state writes are
/// never dropped: see [`StateLane`].
const MAX_KEPT_OPS: usize = 64 * 1024;

type Commit = oneshot::Sender<Result<(), StoreError>>;

enum Item {
    /// Writes with their ticket (their place in submission order).
    Ops(Vec<WriteOp>, Option<Commit>, u64),
    /// Session-state writes wait in the lane.
    Wake,
    Stop(oneshot::Sender<()>),
}

/// Session-state writes (sessions, subscriptions, deletions of acknowledged
/// deliveries): what a SUBACK or a CONNACK promised. They are never refused
/// nor dropped, however full the queue or long the outage: they wait here
/// instead of in the bounded queue, and the writer coalesces them (the last
/// write per session and per subscription wins; a session's deletion
/// replaces everything before it about that session), so they take memory
/// in proportion to the sessions and subscriptions that exist, not to the
/// number of changes.
///
/// Every write, in either path, takes a ticket; the writer commits in
/// ticket order, so a lane write never overtakes a queued write submitted
/// before it (a delivery's delete never precedes its insert).
#[derive(Default)]
struct StateLane {
    /// A std mutex: pushed to and drained without an `.await` inside.
    ops: Mutex<Vec<(u64, WriteOp)>>,
    next_ticket: AtomicU64,
}

impl StateLane {
    fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::SeqCst)
    }

    /// Adds `ops` under one ticket; returns it.
    fn push(&self, ops: Vec<WriteOp>) -> u64 {
        let mut lane = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = self.ticket();
        lane.extend(ops.into_iter().map(|op| (ticket, op)));
        ticket
    }

    fn is_empty(&self) -> bool {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Take the writes with a ticket below `horizon`.
    fn take_before(&self, horizon: u64, into: &mut Vec<Pending>) {
        let mut lane = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let kept = lane.iter().take_while(|(t, _)| *t < horizon).count();
        into.extend(lane.drain(..kept).map(|(ticket, op)| Pending {
            op,
            ticket,
            kind: Kind::State,
        }));
    }
}

/// Cloneable, non-blocking entry to the writer; usable from any thread.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Item>,
    health: Arc<WriteHealth>,
    lane: Arc<StateLane>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreWriter")
    }
}

impl StoreWriter {
    /// Queue writes without waiting for them. While the database is down
    /// they are kept and retried (up to a bound).
    pub fn submit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.send(Item::Ops(ops, None, self.lane.ticket()))
    }

    /// Queue session-state writes (sessions, subscriptions, deletions of
    /// sessions or acknowledged deliveries): never refused, never dropped,
    /// retried until the database takes them. See [`StateLane`].
    pub fn submit_state(&self, ops: Vec<WriteOp>) {
        debug_assert!(ops.iter().all(WriteOp::is_session_state));
        self.lane.push(ops);
        // A full queue means the writer is busy and drains the lane anyway.
        let _ = self.tx.try_send(Item::Wake);
    }

    /// [`StoreWriter::submit_state`], with a receipt that resolves once the
    /// writes are committed: what a CONNACK or SUBACK waits for before it
    /// promises them. `None` while the database does not take writes or the
    /// queue is full: the writes are kept all the same and committed later,
    /// the caller answers without waiting.
    pub fn submit_state_confirmed(
        &self,
        ops: Vec<WriteOp>,
    ) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
        debug_assert!(ops.iter().all(WriteOp::is_session_state));
        let ticket = self.lane.push(ops);
        if self.health.admit_durable().is_err() {
            let _ = self.tx.try_send(Item::Wake);
            return None;
        }
        // No operations of its own: its ticket, the lane's, makes the batch
        // that takes it take the lane's writes too (see `take_lane`).
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(Item::Ops(Vec::new(), Some(tx), ticket)).ok().map(|()| rx)
    }

    /// Queue writes; the receiver resolves once they are committed. Refused
    /// at once while the database does not take writes.
    pub fn submit_durable(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        self.health.admit_durable()?;
        let (tx, rx) = oneshot::channel();
        self.send(Item::Ops(ops, Some(tx), self.lane.ticket()))?;
        Ok(rx)
    }

    /// `Ok` while writes succeed; otherwise why they fail.
    pub fn health(&self) -> Result<(), StoreError> {
        self.health.check()
    }

    /// A persisted delivery was acknowledged (or dropped): forget it.
    pub fn delete_message(&self, seq: u64) {
        self.submit_state(vec![WriteOp::DeleteMessage(seq)]);
    }

    /// Commit everything queued so far, then stop the writer task.
    pub async fn flush_and_stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, item: Item) -> Result<(), StoreError> {
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })
    }
}

impl Durability for StoreWriter {
    fn submit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        StoreWriter::submit(self, ops)
    }

    fn submit_state(&self, ops: Vec<WriteOp>) {
        StoreWriter::submit_state(self, ops)
    }

    fn submit_state_confirmed(&self, ops: Vec<WriteOp>) -> Option<CommitReceipt> {
        StoreWriter::submit_state_confirmed(self, ops)
    }

    fn submit_durable(&self, ops: Vec<WriteOp>) -> Result<CommitReceipt, StoreError> {
        StoreWriter::submit_durable(self, ops)
    }

    fn health(&self) -> Result<(), StoreError> {
        StoreWriter::health(self)
    }

    fn flush_and_stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(StoreWriter::flush_and_stop(self))
    }
}

/// Start the writer on the current runtime (the one that owns the pool).
/// While writes keep coming, commits start at most once per
/// `commit_interval` (see [`CommitPace`]); a write after a quiet spell is
/// committed at once.
pub fn spawn_writer(store: Store, commit_interval: Duration) -> (StoreWriter, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let health = store.write_health().clone();
    let lane = Arc::new(StateLane::default());
    (
        StoreWriter { tx, health, lane: lane.clone() },
        tokio::spawn(run(store, rx, lane, commit_interval)),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A caller waits for its commit and is told of a failure (and retries
    /// itself): not retried here.
    Durable,
    /// Retried after a failure, dropped oldest first beyond a bound.
    Droppable,
    /// Retried until committed, never dropped.
    State,
}

/// One queued write.
struct Pending {
    op: WriteOp,
    ticket: u64,
    kind: Kind,
}

/// What the next transaction commits.
#[derive(Default)]
struct Batch {
    ops: Vec<Pending>,
    commits: Vec<Commit>,
    stop: Option<oneshot::Sender<()>>,
    /// One past the highest ticket taken from the queue so far.
    queued_through: u64,
}

impl Batch {
    /// Adds `item`; false once the batch is full or a stop was asked for.
    fn take(&mut self, item: Item) -> bool {
        match item {
            Item::Ops(o, c, ticket) => {
                self.queued_through = self.queued_through.max(ticket + 1);
                let kind = if c.is_some() { Kind::Durable } else { Kind::Droppable };
                self.ops.extend(o.into_iter().map(|op| Pending { op, ticket, kind }));
                self.commits.extend(c);
                self.ops.len() < MAX_BATCH_OPS
            }
            Item::Wake => true,
            Item::Stop(s) => {
                self.stop = Some(s);
                false
            }
        }
    }

    /// Adds whatever is already queued.
    fn take_queued(&mut self, rx: &mut mpsc::Receiver<Item>) -> bool {
        while let Ok(item) = rx.try_recv() {
            if !self.take(item) {
                return false;
            }
        }
        true
    }

    /// Adds what arrives until `deadline`, or until as many callers wait
    /// as `pace` finds enough.
    async fn gather_until(
        &mut self,
        rx: &mut mpsc::Receiver<Item>,
        deadline: Instant,
        pace: &CommitPace,
    ) {
        while !pace.enough(self.commits.len())
            && let Ok(Some(item)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await
        {
            if !self.take(item) || !self.take_queued(rx) {
                return;
            }
        }
    }
}

/// Take the lane's writes that no queued write precedes: all of them once
/// the queue is empty (a write submitted after the horizon was read comes
/// next time), else those older than the last item taken from the queue
/// (a confirmation, which carries its lane writes' ticket, included).
fn take_lane(batch: &mut Batch, lane: &StateLane, rx: &mpsc::Receiver<Item>) {
    // Read before the queue is looked at: whatever a lane write waits for
    // was queued before its ticket was taken.
    let horizon = lane.next_ticket.load(Ordering::SeqCst);
    if lane.is_empty() {
        return;
    }
    let horizon =
        if rx.is_empty() || batch.stop.is_some() { horizon } else { batch.queued_through };
    lane.take_before(horizon, &mut batch.ops);
    // Kept writes of a failed batch come first; queue and lane interleave.
    batch.ops.sort_by_key(|p| p.ticket);
    coalesce_state(&mut batch.ops);
}

/// Drop session-state writes a later one in `ops` makes void: an earlier
/// write of the same session or subscription, and everything about a
/// session before its deletion. A session upsert that keeps the stored
/// owner inherits the owner of the upsert it replaces.
fn coalesce_state(ops: &mut Vec<Pending>) {
    if !ops.iter().any(|p| p.kind == Kind::State) {
        return;
    }
    let mut later_session: HashMap<ClientId, usize> = HashMap::new();
    let mut deleted_later: HashSet<ClientId> = HashSet::new();
    let mut later_sub: HashSet<(ClientId, String)> = HashSet::new();
    let mut void = vec![false; ops.len()];
    let mut inherited: Vec<(usize, Principal)> = Vec::new();
    for i in (0..ops.len()).rev() {
        if ops[i].kind != Kind::State {
            continue;
        }
        match &ops[i].op {
            WriteOp::UpsertSession { client_id, owner, .. } => {
                if deleted_later.contains(client_id) {
                    void[i] = true;
                } else if let Some(&j) = later_session.get(client_id) {
                    void[i] = true;
                    if let Some(owner) = owner {
                        inherited.push((j, owner.clone()));
                    }
                } else {
                    later_session.insert(client_id.clone(), i);
                }
            }
            WriteOp::DeleteSession(client_id) => {
                if deleted_later.contains(client_id) {
                    void[i] = true;
                } else {
                    deleted_later.insert(client_id.clone());
                }
            }
            WriteOp::PutSubscription { client_id, filter, .. }
            | WriteOp::DeleteSubscription { client_id, filter } => {
                let key = (client_id.clone(), filter.clone());
                if deleted_later.contains(client_id) || later_sub.contains(&key) {
                    void[i] = true;
                } else {
                    later_sub.insert(key);
                }
            }
            _ => {}
        }
    }
    // Walking backwards, the first owner found is the latest one.
    for (j, owner) in inherited.into_iter().rev() {
        if let WriteOp::UpsertSession { owner: kept @ None, .. } = &mut ops[j].op {
            *kept = Some(owner);
        }
    }
    let mut i = 0;
    ops.retain(|_| {
        i += 1;
        !void[i - 1]
    });
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Item>,
    lane: Arc<StateLane>,
    commit_interval: Duration,
) {
    let health = store.write_health().clone();
    let mut batch = Batch::default();
    let mut closed = false;
    let mut pace = CommitPace::new(commit_interval);
    // The writer keeps its own connection: a SQLite connection drops its
    // page cache whenever another connection wrote since its last
    // transaction, so alternating pooled connections read every touched
    // B-tree page back from disk on each commit.
    let mut conn = None;
    let mut marks = CommitMarks::new();
    while batch.stop.is_none() && !closed {
        // Healthy: sleep until work arrives, holding the connection only
        // for a while. Down: wake up to retry or probe.
        let up = health.is_up();
        let wait =
            if up { conn.is_some().then_some(KEEP_IDLE_CONNECTION) } else { Some(RETRY_INTERVAL) };
        let first = match wait {
            None => rx.recv().await,
            Some(wait) => match tokio::time::timeout(wait, rx.recv()).await {
                Ok(item) => item,
                Err(_) if up => {
                    // Back to the pool, which checks it before the next use
                    // (a PostgreSQL restart in a quiet spell fails no batch).
                    conn = None;
                    continue;
                }
                Err(_) => {
                    health.open_probe();
                    if batch.ops.is_empty() && lane.is_empty() {
                        probe_connection(&store, &health).await;
                        continue;
                    }
                    None
                }
            },
        };
        closed = first.is_none() && rx.is_closed();
        // Take whatever else is already queued: that is the group commit.
        let open = first.is_some_and(|item| batch.take(item)) && batch.take_queued(&mut rx);
        // Writes keep coming: gather more to share this transaction.
        if open
            && health.is_up()
            && let Some(at) = pace.gather_until(batch.commits.len(), Instant::now())
        {
            batch.gather_until(&mut rx, at, &pace).await;
        }
        take_lane(&mut batch, &lane, &rx);
        if batch.ops.is_empty() && batch.commits.is_empty() && batch.stop.is_none() {
            // A wake-up for lane writes an earlier batch already took: an
            // empty commit would prove nothing about the database.
            continue;
        }
        pace.started(batch.commits.len(), Instant::now());
        let reply = attempt(&store, &mut conn, &health, &batch.ops, &mut marks).await;
        let failed = reply.is_err();
        for c in batch.commits.drain(..) {
            let _ = c.send(reply.clone());
        }
        if failed {
            batch.ops.retain(|p| p.kind != Kind::Durable);
            drop_oldest_beyond_bound(&mut batch.ops);
            if batch.stop.is_none() {
                // Do not hot-loop against a database that is down.
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
        } else {
            batch.ops.clear();
        }
    }
    if !batch.ops.is_empty() {
        tracing::error!(
            ops = batch.ops.len(),
            "store writer stopped with writes it could not commit"
        );
    }
    // Not while writes fail: a stop must not wait on a database that is down.
    if batch.ops.is_empty() && health.is_up() {
        remove_mark(&store, conn, &marks).await;
    }
    if let Some(s) = batch.stop {
        let _ = s.send(());
    }
    tracing::debug!("store writer stopped");
}

/// Commit `ops` in one transaction, bounded in time; records the outcome.
/// After a failure the connection is given up, so a broken one is replaced.
async fn attempt(
    store: &Store,
    conn: &mut Option<PoolConnection<Any>>,
    health: &WriteHealth,
    ops: &[Pending],
    marks: &mut CommitMarks,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let n = ops.len();
    let number = marks.next();
    let commit_sent = AtomicBool::new(false);
    let outcome = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        commit(store, conn, ops, marks, number, &commit_sent),
    )
    .await;
    if !matches!(outcome, Ok(Ok(())))
        && let Some(mut c) = conn.take()
    {
        c.close_on_drop();
    }
    let mut result = match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let err = write_health::classify(&e);
            tracing::error!(ops = n, error = %e, "store batch failed");
            Err(err)
        }
        Err(_) => {
            tracing::error!(
                ops = n,
                timeout_ms = ATTEMPT_TIMEOUT.as_millis() as u64,
                "store batch timed out"
            );
            Err(StoreError::Unavailable)
        }
    };
    crate::telemetry::metrics::global().observe_db_batch(n, started.elapsed().as_secs_f64());
    record_health(health, &result, n, started);
    // Down while it is looked up: durable writes are refused meanwhile
    // rather than left waiting behind it.
    if result.is_err() && commit_sent.load(Ordering::Relaxed) {
        let metrics = crate::telemetry::metrics::global();
        metrics.db_commits_unanswered.fetch_add(1, Ordering::Relaxed);
        match look_up(store, marks, number).await {
            Some(true) => {
                metrics.db_commits_found_committed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    ops = n,
                    "store batch committed although its COMMIT went unanswered"
                );
                result = Ok(());
                record_health(health, &result, n, started);
            }
            Some(false) => {
                tracing::warn!(ops = n, "store batch whose COMMIT went unanswered did not commit");
            }
            None => tracing::error!(
                ops = n,
                "store batch whose COMMIT went unanswered could not be looked up: reported as failed"
            ),
        }
    }
    result
}

fn record_health(
    health: &WriteHealth,
    result: &Result<(), StoreError>,
    n: usize,
    started: Instant,
) {
    match result {
        Ok(()) => {
            if let Some(down) = health.succeeded() {
                tracing::warn!(
                    down_ms = down.as_millis() as u64,
                    "store writes recovered; durable publishes are accepted again"
                );
            }
            tracing::trace!(
                ops = n,
                elapsed_us = started.elapsed().as_micros() as u64,
                "store batch committed"
            );
        }
        Err(e) => {
            if health.failed(e) {
                tracing::error!(
                    reason = %e,
                    "store writes failing; durable publishes are refused until they succeed"
                );
            }
        }
    }
}

/// The run's commit mark goes when it stops (else it is pruned later).
async fn remove_mark(store: &Store, conn: Option<PoolConnection<Any>>, marks: &CommitMarks) {
    let removed = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
        let mut conn = match conn {
            Some(c) => c,
            None => store.pool().acquire().await?,
        };
        marks.remove(&mut conn).await
    })
    .await;
    if !matches!(removed, Ok(Ok(()))) {
        tracing::debug!("the writer's commit mark stays until pruned");
    }
}

/// Whether transaction `number`, whose COMMIT went unanswered, committed;
/// `None` when the database could not tell within [`LOOKUP_LIMIT`].
async fn look_up(store: &Store, marks: &CommitMarks, number: i64) -> Option<bool> {
    let give_up = Instant::now() + LOOKUP_LIMIT;
    loop {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, marks.committed(store, number)).await {
            Ok(Ok(committed)) => return Some(committed),
            Ok(Err(e)) => tracing::warn!(error = %e, "looking up an unanswered commit failed"),
            Err(_) => tracing::warn!("looking up an unanswered commit timed out"),
        }
        if Instant::now() + RETRY_INTERVAL >= give_up {
            return None;
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

/// Idle while down after a connection failure: a round trip tells whether
/// the database is back. A full disk still answers, so only a write (the
/// next durable publish, let through as a probe) can end that state.
async fn probe_connection(store: &Store, health: &WriteHealth) {
    if matches!(health.check(), Err(StoreError::Unavailable))
        && matches!(tokio::time::timeout(ATTEMPT_TIMEOUT, store.ping()).await, Ok(Ok(())))
        && let Some(down) = health.succeeded()
    {
        tracing::warn!(down_ms = down.as_millis() as u64, "database reachable again");
    }
}

/// Drop the oldest droppable writes beyond [`MAX_KEPT_OPS`] of them;
/// session state stays whatever its size.
fn drop_oldest_beyond_bound(ops: &mut Vec<Pending>) {
    let droppable = ops.iter().filter(|p| p.kind == Kind::Droppable).count();
    if droppable > MAX_KEPT_OPS {
        let mut excess = droppable - MAX_KEPT_OPS;
        let dropped = excess;
        ops.retain(|p| {
            if excess > 0 && p.kind == Kind::Droppable {
                excess -= 1;
                return false;
            }
            true
        });
        tracing::error!(
            dropped,
            "store writes dropped: too many waiting for the database (QoS 0 positions, history, retained)"
        );
    }
}

/// Commit `ops` as transaction `number` (stamped first, see
/// [`CommitMarks`]); `commit_sent` is set once the COMMIT is on its way,
/// after which a failure leaves the outcome unknown.
async fn commit(
    store: &Store,
    conn: &mut Option<PoolConnection<Any>>,
    ops: &[Pending],
    marks: &mut CommitMarks,
    number: i64,
    commit_sent: &AtomicBool,
) -> Result<(), sqlx::Error> {
    if ops.is_empty() {
        return Ok(());
    }
    // A delivery acknowledged before its insert reached the database needs
    // neither the insert nor the delete.
    let mut enqueued = HashSet::new();
    let mut deleted = HashSet::new();
    for p in ops {
        match &p.op {
            WriteOp::EnqueueMessage { delivery, .. } => enqueued.insert(delivery.seq),
            WriteOp::DeleteMessage(seq) => deleted.insert(*seq),
            _ => false,
        };
    }
    let conn = match conn {
        Some(c) => c,
        None => conn.insert(store.pool().acquire().await?),
    };
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    marks.stamp(&mut tx, number).await?;
    let mut delete_seqs: Vec<i64> = Vec::new();
    let mut locations = super::locations::LatestBatch::default();
    let mut history = super::history::HistoryBatch::default();
    let mut outbox = super::fabric_outbox::OutboxBatch::default();
    for p in ops {
        match &p.op {
            WriteOp::EnqueueMessage { delivery, .. } if deleted.contains(&delivery.seq) => {}
            WriteOp::DeleteMessage(seq) if enqueued.contains(seq) => {}
            WriteOp::DeleteMessage(seq) => delete_seqs.push(*seq as i64),
            WriteOp::UpsertLocation { device_id, position } => {
                locations.add(device_id.clone(), position.clone())
            }
            WriteOp::AppendHistory { topic, payload, content_type, received_at } => {
                history.add(topic.clone(), payload.clone(), content_type.clone(), *received_at)
            }
            WriteOp::PutFabricOutbox { node, seq, entry } => {
                outbox.add(node.clone(), *seq, entry.clone())
            }
            WriteOp::DeleteFabricOutbox { node, through } => {
                outbox.delete_through(node.clone(), *through)
            }
            WriteOp::FabricCursor { node, at } => outbox.cursor(node.clone(), *at),
            op => execute(&mut tx, op).await?,
        }
    }
    // Many rows per statement: the hot path writes one of each per position.
    locations.execute(&mut tx, store.backend()).await?;
    history.execute(&mut tx, store.backend()).await?;
    outbox.execute(&mut tx, store.backend()).await?;
    for chunk in delete_seqs.chunks(500) {
        let sql = format!(
            "DELETE FROM session_messages WHERE seq IN {}",
            store.backend().value_rows(1, chunk.len())
        );
        let mut q = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql));
        for seq in chunk {
            q = q.bind(*seq);
        }
        q.execute(&mut *tx).await?;
    }
    commit_sent.store(true, Ordering::Relaxed);
    tx.commit().await
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn expiry_millis(msg: &Message) -> Option<i64> {
    let left = msg.expires_at?.saturating_duration_since(Instant::now());
    Some(millis(SystemTime::now() + left))
}

async fn execute(tx: &mut sqlx::Transaction<'_, Any>, op: &WriteOp) -> Result<(), sqlx::Error> {
    let conn = &mut **tx;
    match op {
        WriteOp::UpsertRetained(msg) => {
            sqlx::query(
                "INSERT INTO retained (topic, payload, qos, props, expires_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos, props = excluded.props, \
                 expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            )
            .bind(msg.topic.as_str().to_owned())
            .bind(msg.payload.to_vec())
            .bind(msg.qos as i64)
            .bind(encode_props(msg.props.as_deref()))
            .bind(expiry_millis(msg))
            .bind(millis(msg.received_at))
            .execute(conn)
            .await?;
        }
        WriteOp::DeleteRetained(topic) => {
            sqlx::query("DELETE FROM retained WHERE topic = $1")
                .bind(topic.to_string())
                .execute(conn)
                .await?;
        }
        WriteOp::UpsertSession { client_id, owner, expiry_secs, disconnected_at } => {
            sqlx::query(
                "INSERT INTO sessions (client_id, expiry_secs, disconnected_at, updated_at, owner) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (client_id) DO UPDATE SET expiry_secs = excluded.expiry_secs, \
                 disconnected_at = excluded.disconnected_at, updated_at = excluded.updated_at, \
                 owner = COALESCE(excluded.owner, sessions.owner)",
            )
            .bind(client_id.to_string())
            .bind(*expiry_secs as i64)
            .bind(disconnected_at.map(millis))
            .bind(millis(SystemTime::now()))
            .bind(owner.as_ref().map(|o| o.as_str().to_owned()))
            .execute(conn)
            .await?;
        }
        WriteOp::DeleteSession(client_id) => {
            let id = client_id.to_string();
            for sql in [
                "DELETE FROM session_messages WHERE client_id = $1",
                "DELETE FROM session_incoming_qos2 WHERE client_id = $1",
                "DELETE FROM session_pending_releases WHERE client_id = $1",
                "DELETE FROM session_subscriptions WHERE client_id = $1",
                "DELETE FROM sessions WHERE client_id = $1",
            ] {
                sqlx::query(sql).bind(id.clone()).execute(&mut **tx).await?;
            }
        }
        WriteOp::ReleaseClaim { client_id, epoch } => {
            sqlx::query("DELETE FROM session_claims WHERE client_id = $1 AND epoch = $2")
                .bind(client_id.to_string())
                .bind(*epoch as i64)
                .execute(&mut **tx)
                .await?;
        }
        WriteOp::ClaimHeld { client_id, epoch } => {
            sqlx::query(
                "UPDATE session_claims SET source = node WHERE client_id = $1 AND epoch = $2",
            )
            .bind(client_id.to_string())
            .bind(*epoch as i64)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::ClearWill { client_id, epoch } => {
            sqlx::query(
                "UPDATE session_claims SET will = NULL WHERE client_id = $1 AND epoch = $2",
            )
            .bind(client_id.to_string())
            .bind(*epoch as i64)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::PutSubscription { client_id, filter, options } => {
            let options = serde_json::to_string(options).unwrap_or_default();
            sqlx::query(
                "INSERT INTO session_subscriptions (client_id, filter, options) VALUES ($1, $2, $3) \
                 ON CONFLICT (client_id, filter) DO UPDATE SET options = excluded.options",
            )
            .bind(client_id.to_string())
            .bind(filter.clone())
            .bind(options)
            .execute(conn)
            .await?;
        }
        WriteOp::DeleteSubscription { client_id, filter } => {
            sqlx::query("DELETE FROM session_subscriptions WHERE client_id = $1 AND filter = $2")
                .bind(client_id.to_string())
                .bind(filter.clone())
                .execute(conn)
                .await?;
        }
        WriteOp::EnqueueMessage { client_id, delivery } => {
            let msg = &delivery.msg;
            let sub_ids = if delivery.subscription_ids.is_empty() {
                None
            } else {
                serde_json::to_string(&delivery.subscription_ids).ok()
            };
            sqlx::query(
                "INSERT INTO session_messages (seq, client_id, topic, payload, qos, retain, props, sub_ids, expires_at, received_at, packet_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (seq) DO NOTHING",
            )
            .bind(delivery.seq as i64)
            .bind(client_id.to_string())
            .bind(msg.topic.as_str().to_owned())
            .bind(msg.payload.to_vec())
            .bind(delivery.qos as i64)
            .bind(delivery.retain as i64)
            .bind(encode_props(msg.props.as_deref()))
            .bind(sub_ids)
            .bind(expiry_millis(msg))
            .bind(millis(msg.received_at))
            .bind(delivery.packet_id.map(|id| i64::from(id.get())))
            .execute(conn)
            .await?;
        }
        WriteOp::PutIncomingQos2 { client_id, packet_id } => {
            sqlx::query(
                "INSERT INTO session_incoming_qos2 (client_id, packet_id) VALUES ($1, $2) \
                 ON CONFLICT (client_id, packet_id) DO NOTHING",
            )
            .bind(client_id.to_string())
            .bind(i64::from(*packet_id))
            .execute(conn)
            .await?;
        }
        WriteOp::DeleteIncomingQos2 { client_id, packet_id } => {
            sqlx::query(
                "DELETE FROM session_incoming_qos2 WHERE client_id = $1 AND packet_id = $2",
            )
            .bind(client_id.to_string())
            .bind(i64::from(*packet_id))
            .execute(conn)
            .await?;
        }
        WriteOp::PutPendingRelease { client_id, packet_id } => {
            sqlx::query(
                "INSERT INTO session_pending_releases (client_id, packet_id) VALUES ($1, $2) \
                 ON CONFLICT (client_id, packet_id) DO NOTHING",
            )
            .bind(client_id.to_string())
            .bind(i64::from(*packet_id))
            .execute(conn)
            .await?;
        }
        WriteOp::DeletePendingRelease { client_id, packet_id } => {
            sqlx::query(
                "DELETE FROM session_pending_releases WHERE client_id = $1 AND packet_id = $2",
            )
            .bind(client_id.to_string())
            .bind(i64::from(*packet_id))
            .execute(conn)
            .await?;
        }
        // Batched into multi-row statements by `commit`.
        WriteOp::DeleteMessage(_)
        | WriteOp::UpsertLocation { .. }
        | WriteOp::AppendHistory { .. }
        | WriteOp::PutFabricOutbox { .. }
        | WriteOp::DeleteFabricOutbox { .. }
        | WriteOp::FabricCursor { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ntex::util::ByteString;

    use super::*;
    use crate::domain::SubscriptionOptions;

    use crate::store::temp_store as store;

    fn session(name: &str) -> Vec<WriteOp> {
        let client_id = ClientId::from(name);
        vec![WriteOp::UpsertSession {
            client_id,
            owner: None,
            expiry_secs: 60,
            disconnected_at: None,
        }]
    }

    async fn sessions(store: &Store) -> i64 {
        sqlx::query_scalar::<Any, i64>("SELECT COUNT(*) FROM sessions")
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    const INTERVAL: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn a_write_after_a_quiet_spell_is_committed_at_once() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), INTERVAL);

        let started = Instant::now();
        writer.submit_durable(session("a")).unwrap().await.unwrap().unwrap();

        assert!(started.elapsed() < INTERVAL / 2, "took {:?}", started.elapsed());
        assert_eq!(sessions(&store).await, 1);
    }

    /// Three callers wait for the first commit (the writer task only runs
    /// once the test awaits).
    async fn commit_three_callers(writer: &StoreWriter, names: [&str; 3]) {
        let waiting: Vec<_> =
            names.iter().map(|n| writer.submit_durable(session(n)).unwrap()).collect();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn writes_that_keep_coming_share_the_next_commit_after_the_interval() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), INTERVAL);
        let started = Instant::now();
        commit_three_callers(&writer, ["a", "b", "c"]).await;

        let d = writer.submit_durable(session("d")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = writer.submit_durable(session("e")).unwrap();
        d.await.unwrap().unwrap();
        let d_done = started.elapsed();
        e.await.unwrap().unwrap();
        let e_done = started.elapsed();

        assert!(d_done >= INTERVAL, "committed {d_done:?} after the first, inside the interval");
        assert!(e_done - d_done < INTERVAL / 4, "d at {d_done:?}, e at {e_done:?}: not one commit");
        assert_eq!(sessions(&store).await, 5);
    }

    #[tokio::test]
    async fn a_batch_with_as_many_waiting_callers_as_the_last_commits_at_once() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), INTERVAL);
        commit_three_callers(&writer, ["a", "b", "c"]).await;

        let started = Instant::now();
        commit_three_callers(&writer, ["d", "e", "f"]).await;

        assert!(started.elapsed() < INTERVAL / 2, "took {:?}", started.elapsed());
        assert_eq!(sessions(&store).await, 6);
    }

    #[tokio::test]
    async fn the_writer_keeps_one_connection_while_writes_come_and_returns_it_when_quiet() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), Duration::from_millis(1));
        let in_use = |s: &Store| s.pool().size() - s.pool().num_idle() as u32;
        for name in ["a", "b", "c"] {
            writer.submit_durable(session(name)).unwrap().await.unwrap().unwrap();
            assert_eq!(in_use(&store), 1, "the writer holds its connection between commits");
        }
        assert_eq!(sessions(&store).await, 3, "readers get another connection");

        tokio::time::sleep(KEEP_IDLE_CONNECTION + Duration::from_millis(300)).await;
        assert_eq!(in_use(&store), 0, "kept through a quiet spell");
        writer.submit_durable(session("d")).unwrap().await.unwrap().unwrap();
        assert_eq!(sessions(&store).await, 4);
    }

    #[tokio::test]
    async fn stopping_commits_what_waits_for_the_interval_without_waiting_it_out() {
        let (_dir, store) = store().await;
        let (writer, task) = spawn_writer(store.clone(), Duration::from_secs(30));
        writer.submit_durable(session("a")).unwrap().await.unwrap().unwrap();
        writer.submit(session("b")).unwrap();

        let started = Instant::now();
        writer.flush_and_stop().await;

        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert_eq!(sessions(&store).await, 2);
        task.await.unwrap();
    }

    fn put_sub(client: &str, filter: &str) -> WriteOp {
        WriteOp::PutSubscription {
            client_id: ClientId::from(client),
            filter: filter.to_owned(),
            options: SubscriptionOptions::qos(crate::domain::QoS::AtLeastOnce),
        }
    }

    fn delete_sub(client: &str, filter: &str) -> WriteOp {
        WriteOp::DeleteSubscription { client_id: ClientId::from(client), filter: filter.to_owned() }
    }

    fn upsert(client: &str, owner: Option<&str>) -> WriteOp {
        WriteOp::UpsertSession {
            client_id: ClientId::from(client),
            owner: owner.map(Principal::from_stored),
            expiry_secs: 60,
            disconnected_at: None,
        }
    }

    fn pending(ops: Vec<WriteOp>, kind: Kind) -> Vec<Pending> {
        ops.into_iter().enumerate().map(|(i, op)| Pending { op, ticket: i as u64, kind }).collect()
    }

    fn described(ops: &[Pending]) -> Vec<String> {
        ops.iter()
            .map(|p| match &p.op {
                WriteOp::UpsertSession { client_id, owner, .. } => {
                    format!("upsert {client_id} {:?}", owner.as_ref().map(|o| o.as_str()))
                }
                WriteOp::DeleteSession(c) => format!("delete {c}"),
                WriteOp::PutSubscription { client_id, filter, .. } => {
                    format!("put {client_id} {filter}")
                }
                WriteOp::DeleteSubscription { client_id, filter } => {
                    format!("unsub {client_id} {filter}")
                }
                WriteOp::DeleteMessage(seq) => format!("ack {seq}"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn session_state_keeps_the_last_write_per_session_and_subscription() {
        let mut ops = pending(
            vec![
                upsert("a", Some("ann")),
                put_sub("a", "x/#"),
                delete_sub("a", "x/#"),
                put_sub("a", "y/#"),
                WriteOp::DeleteMessage(7),
                upsert("a", None),
                put_sub("b", "z/#"),
                upsert("b", Some("bob")),
                WriteOp::DeleteSession(ClientId::from("b")),
                put_sub("b", "w/#"),
            ],
            Kind::State,
        );
        coalesce_state(&mut ops);
        assert_eq!(
            described(&ops),
            [
                "unsub a x/#",
                "put a y/#",
                "ack 7",
                "upsert a Some(\"ann\")",
                "delete b",
                "put b w/#",
            ],
            "{:?}",
            described(&ops)
        );
    }

    #[test]
    fn a_long_outage_drops_only_droppable_writes_never_session_state() {
        let mut ops = pending(vec![put_sub("a", "x/#"), WriteOp::DeleteMessage(1)], Kind::State);
        ops.extend((0..MAX_KEPT_OPS + 10).map(|i| Pending {
            op: WriteOp::DeleteRetained(ByteString::from(format!("t/{i}"))),
            ticket: 2 + i as u64,
            kind: Kind::Droppable,
        }));
        drop_oldest_beyond_bound(&mut ops);
        assert_eq!(ops.len(), 2 + MAX_KEPT_OPS);
        assert_eq!(described(&ops[..2]), ["put a x/#", "ack 1"]);
        assert!(matches!(&ops[2].op, WriteOp::DeleteRetained(t) if t == "t/10"));
    }

    async fn subscriptions(store: &Store) -> Vec<String> {
        sqlx::query_scalar::<Any, String>(
            "SELECT client_id || ' ' || filter FROM session_subscriptions ORDER BY 1",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn session_state_is_taken_while_the_queue_is_full_and_committed_in_order() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), Duration::ZERO);
        // This runtime has one thread: the writer runs only once the test
        // awaits, so the queue fills up.
        let mut queued = 0;
        while writer.submit(session(&format!("s{queued}"))).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, QUEUE);
        assert!(matches!(writer.submit(session("late")), Err(StoreError::Overloaded)));

        writer.submit_state(vec![put_sub("a", "x/#"), put_sub("a", "y/#")]);
        writer.submit_state(vec![delete_sub("a", "x/#")]);
        writer.flush_and_stop().await;

        assert_eq!(subscriptions(&store).await, ["a y/#"]);
        assert_eq!(sessions(&store).await, QUEUE as i64);
    }

    /// Make writes of subscriptions fail (the table is away), or work again.
    async fn subscriptions_fail(store: &Store, fail: bool) {
        let (from, to) = if fail {
            ("session_subscriptions", "away")
        } else {
            ("away", "session_subscriptions")
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER TABLE {from} RENAME TO {to}")))
            .execute(store.pool())
            .await
            .unwrap();
    }

    async fn wait_for_subscriptions(store: &Store, expected: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscriptions(store).await != expected {
            assert!(Instant::now() < deadline, "{:?}", subscriptions(store).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn session_state_waits_out_a_failing_database_and_lands_when_it_returns() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), Duration::ZERO);
        subscriptions_fail(&store, true).await;
        writer.submit_state(vec![put_sub("a", "x/#"), put_sub("a", "y/#")]);
        writer.submit_state(vec![delete_sub("a", "y/#")]);
        // Several failed attempts (one per retry interval).
        tokio::time::sleep(RETRY_INTERVAL * 3).await;
        assert!(writer.health().is_err(), "the writes failed");

        subscriptions_fail(&store, false).await;
        wait_for_subscriptions(&store, &["a x/#"]).await;
        assert!(writer.health().is_ok());
    }

    #[tokio::test]
    async fn a_confirmed_state_write_resolves_once_committed_while_others_wait_the_interval() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), INTERVAL);
        // Writes nobody waits for set the pace: the next commit would wait
        // out the interval.
        writer.submit(session("paced")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.submit(session("queued")).unwrap();

        let started = Instant::now();
        let kept = writer.submit_state_confirmed(vec![put_sub("a", "x/#")]).expect("a receipt");
        kept.await.unwrap().unwrap();

        assert!(started.elapsed() < INTERVAL / 2, "took {:?}", started.elapsed());
        assert_eq!(subscriptions(&store).await, ["a x/#"]);
        assert_eq!(sessions(&store).await, 2, "the write queued before it came first");
    }

    #[tokio::test]
    async fn a_confirmed_state_write_gets_no_receipt_while_writes_fail_and_lands_later() {
        let (_dir, store) = store().await;
        let (writer, _) = spawn_writer(store.clone(), Duration::ZERO);
        subscriptions_fail(&store, true).await;
        let failed = writer.submit_state_confirmed(vec![put_sub("a", "x/#")]).expect("a receipt");
        assert!(failed.await.unwrap().is_err(), "the commit failed and says so");
        assert!(writer.submit_state_confirmed(vec![put_sub("a", "y/#")]).is_none());

        subscriptions_fail(&store, false).await;
        wait_for_subscriptions(&store, &["a x/#", "a y/#"]).await;
    }
}
