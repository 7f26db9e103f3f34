//! The batching writer: every broker write goes through one task that commits
//! whatever has queued up in one transaction (group commit). Publishers that
//! need durability wait for the commit holding their write; nobody waits for
//! the database on the routing path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ntex::util::{ByteString, Bytes};
use sqlx::Any;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::broker_state::encode_props;
use super::write_health::{self, WriteHealth};
use super::{Store, StoreError};
use crate::broker::{Delivery, Message, SubscriptionOptions};
use crate::domain::{ClientId, DeviceId, Position, TopicName};

/// Items queued before callers get `StoreError::Overloaded`.
const QUEUE: usize = 64 * 1024;
/// Operations committed in one transaction at most.
const MAX_BATCH_OPS: usize = 4096;
/// A commit taking longer than this counts as failed: its durable callers
/// are told so (they retry; duplicates are allowed at QoS 1).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while writes fail, and between probes when idle.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Non-durable writes kept for retry while the database is down; older ones
/// are dropped beyond this (memory stays bounded during long outages).
const MAX_KEPT_OPS: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub enum WriteOp {
    UpsertRetained(std::sync::Arc<Message>),
    DeleteRetained(ByteString),
    UpsertSession {
        client_id: ClientId,
        expiry_secs: u32,
        disconnected_at: Option<SystemTime>,
    },
    /// Deletes the session with its subscriptions and queued messages.
    DeleteSession(ClientId),
    PutSubscription {
        client_id: ClientId,
        filter: String,
        options: SubscriptionOptions,
    },
    DeleteSubscription {
        client_id: ClientId,
        filter: String,
    },
    EnqueueMessage {
        client_id: ClientId,
        delivery: Delivery,
    },
    DeleteMessage(u64),
    /// A device's latest position; an older fix never replaces a newer one.
    UpsertLocation {
        device_id: DeviceId,
        position: Position,
    },
    /// One message of a topic with history enabled.
    AppendHistory {
        topic: TopicName,
        payload: Bytes,
        content_type: Option<ByteString>,
        received_at: SystemTime,
    },
}

type Commit = oneshot::Sender<Result<(), StoreError>>;

enum Item {
    Ops(Vec<WriteOp>, Option<Commit>),
    Stop(oneshot::Sender<()>),
}

/// Cloneable, non-blocking entry to the writer; usable from any thread.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Item>,
    health: Arc<WriteHealth>,
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
        self.send(Item::Ops(ops, None))
    }

    /// Queue writes; the receiver resolves once they are committed. Refused
    /// at once while the database does not take writes.
    pub fn submit_durable(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        self.health.admit_durable()?;
        let (tx, rx) = oneshot::channel();
        self.send(Item::Ops(ops, Some(tx)))?;
        Ok(rx)
    }

    /// `Ok` while writes succeed; otherwise why they fail.
    pub fn health(&self) -> Result<(), StoreError> {
        self.health.check()
    }

    /// A persisted delivery was acknowledged (or dropped): forget it.
    pub fn delete_message(&self, seq: u64) {
        if self.submit(vec![WriteOp::DeleteMessage(seq)]).is_err() {
            // Worst case the message is redelivered after a restart (QoS≥1 allows duplicates).
            tracing::warn!(seq, "store queue full; acknowledged message stays stored");
        }
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

/// Start the writer on the current runtime (the one that owns the pool).
pub fn spawn_writer(store: Store) -> (StoreWriter, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let health = store.write_health().clone();
    (StoreWriter { tx, health }, tokio::spawn(run(store, rx)))
}

/// One queued write; only non-durable ones are retried after a failure
/// (a durable caller was told, and retries itself).
struct Pending {
    op: WriteOp,
    durable: bool,
}

async fn run(store: Store, mut rx: mpsc::Receiver<Item>) {
    let health = store.write_health().clone();
    let mut ops: Vec<Pending> = Vec::new();
    let mut commits: Vec<Commit> = Vec::new();
    let mut stop: Option<oneshot::Sender<()>> = None;
    let mut closed = false;
    while stop.is_none() && !closed {
        // Healthy: sleep until work arrives. Down: wake up to retry or probe.
        let first = if health.is_up() {
            rx.recv().await
        } else {
            match tokio::time::timeout(RETRY_INTERVAL, rx.recv()).await {
                Ok(item) => item,
                Err(_) => {
                    health.open_probe();
                    if ops.is_empty() {
                        probe_connection(&store, &health).await;
                        continue;
                    }
                    None
                }
            }
        };
        closed = first.is_none() && rx.is_closed();
        let mut next = first;
        // Take whatever else is already queued: that is the group commit.
        while let Some(item) = next.take() {
            match item {
                Item::Ops(o, c) => {
                    let durable = c.is_some();
                    ops.extend(o.into_iter().map(|op| Pending { op, durable }));
                    commits.extend(c);
                }
                Item::Stop(s) => {
                    stop = Some(s);
                    break;
                }
            }
            if ops.len() >= MAX_BATCH_OPS {
                break;
            }
            next = rx.try_recv().ok();
        }
        let reply = attempt(&store, &health, &ops).await;
        let failed = reply.is_err();
        for c in commits.drain(..) {
            let _ = c.send(reply.clone());
        }
        if failed {
            ops.retain(|p| !p.durable);
            drop_oldest_beyond_bound(&mut ops);
            if stop.is_none() {
                // Do not hot-loop against a database that is down.
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
        } else {
            ops.clear();
        }
    }
    if !ops.is_empty() {
        tracing::error!(ops = ops.len(), "store writer stopped with writes it could not commit");
    }
    if let Some(s) = stop {
        let _ = s.send(());
    }
    tracing::debug!("store writer stopped");
}

/// Commit `ops` in one transaction, bounded in time; records the outcome.
async fn attempt(store: &Store, health: &WriteHealth, ops: &[Pending]) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let n = ops.len();
    let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, commit(store, ops)).await {
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
    match &result {
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
    result
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

fn drop_oldest_beyond_bound(ops: &mut Vec<Pending>) {
    if ops.len() > MAX_KEPT_OPS {
        let dropped = ops.len() - MAX_KEPT_OPS;
        ops.drain(..dropped);
        tracing::error!(dropped, "store writes dropped: too many waiting for the database");
    }
}

async fn commit(store: &Store, ops: &[Pending]) -> Result<(), sqlx::Error> {
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
    let mut tx = store.pool().begin().await?;
    let mut delete_seqs: Vec<i64> = Vec::new();
    let mut locations = super::locations::LatestBatch::default();
    let mut history = super::history::HistoryBatch::default();
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
            op => execute(&mut tx, op).await?,
        }
    }
    // Many rows per statement: the hot path writes one of each per position.
    locations.execute(&mut tx, store.backend()).await?;
    history.execute(&mut tx, store.backend()).await?;
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
    tx.commit().await
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn expiry_millis(msg: &Message) -> Option<i64> {
    let left = msg.expires_at?.saturating_duration_since(std::time::Instant::now());
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
        WriteOp::UpsertSession { client_id, expiry_secs, disconnected_at } => {
            sqlx::query(
                "INSERT INTO sessions (client_id, expiry_secs, disconnected_at, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (client_id) DO UPDATE SET expiry_secs = excluded.expiry_secs, \
                 disconnected_at = excluded.disconnected_at, updated_at = excluded.updated_at",
            )
            .bind(client_id.to_string())
            .bind(*expiry_secs as i64)
            .bind(disconnected_at.map(millis))
            .bind(millis(SystemTime::now()))
            .execute(conn)
            .await?;
        }
        WriteOp::DeleteSession(client_id) => {
            let id = client_id.to_string();
            for sql in [
                "DELETE FROM session_messages WHERE client_id = $1",
                "DELETE FROM session_subscriptions WHERE client_id = $1",
                "DELETE FROM sessions WHERE client_id = $1",
            ] {
                sqlx::query(sql).bind(id.clone()).execute(&mut **tx).await?;
            }
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
                "INSERT INTO session_messages (seq, client_id, topic, payload, qos, retain, props, sub_ids, expires_at, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (seq) DO NOTHING",
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
            .execute(conn)
            .await?;
        }
        // Batched into multi-row statements by `commit`.
        WriteOp::DeleteMessage(_)
        | WriteOp::UpsertLocation { .. }
        | WriteOp::AppendHistory { .. } => {}
    }
    Ok(())
}
