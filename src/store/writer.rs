//! The batching writer: every broker write goes through one task that commits
//! whatever has queued up in one transaction (group commit). Publishers that
//! need durability wait for the commit holding their write; nobody waits for
//! the database on the routing path.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ntex::util::{ByteString, Bytes};
use sqlx::Any;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::broker_state::encode_props;
use super::{Store, StoreError};
use crate::broker::{Delivery, Message, SubscriptionOptions};
use crate::domain::{ClientId, DeviceId, Position, TopicName};

/// Items queued before callers get `StoreError::Overloaded`.
const QUEUE: usize = 64 * 1024;
/// Operations committed in one transaction at most.
const MAX_BATCH_OPS: usize = 4096;

#[derive(Debug)]
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
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreWriter")
    }
}

impl StoreWriter {
    /// Queue writes without waiting for them.
    pub fn submit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.send(Item::Ops(ops, None))
    }

    /// Queue writes; the receiver resolves once they are committed.
    pub fn submit_durable(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Item::Ops(ops, Some(tx)))?;
        Ok(rx)
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
    (StoreWriter { tx }, tokio::spawn(run(store, rx)))
}

async fn run(store: Store, mut rx: mpsc::Receiver<Item>) {
    let mut ops: Vec<WriteOp> = Vec::new();
    let mut commits: Vec<Commit> = Vec::new();
    let mut stop: Option<oneshot::Sender<()>> = None;
    while stop.is_none() {
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        // Take whatever else is already queued: that is the group commit.
        while let Some(item) = next.take() {
            match item {
                Item::Ops(o, c) => {
                    ops.extend(o);
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
        let started = std::time::Instant::now();
        let n = ops.len();
        let result = commit(&store, &mut ops).await;
        crate::telemetry::metrics::global().observe_db_batch(n, started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => tracing::trace!(
                ops = n,
                elapsed_us = started.elapsed().as_micros() as u64,
                "store batch committed"
            ),
            Err(e) => tracing::error!(ops = n, error = %e, "store batch failed"),
        }
        let reply = result.map_err(|_| StoreError::Unavailable);
        for c in commits.drain(..) {
            let _ = c.send(reply.clone());
        }
        if reply.is_err() {
            // Do not hot-loop against a database that is down.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if let Some(s) = stop {
        let _ = s.send(());
    }
    tracing::debug!("store writer stopped");
}

async fn commit(store: &Store, ops: &mut Vec<WriteOp>) -> Result<(), sqlx::Error> {
    if ops.is_empty() {
        return Ok(());
    }
    // A delivery acknowledged before its insert reached the database needs
    // neither the insert nor the delete.
    let mut enqueued = HashSet::new();
    let mut deleted = HashSet::new();
    for op in ops.iter() {
        match op {
            WriteOp::EnqueueMessage { delivery, .. } => enqueued.insert(delivery.seq),
            WriteOp::DeleteMessage(seq) => deleted.insert(*seq),
            _ => false,
        };
    }
    let mut tx = store.pool().begin().await?;
    let mut delete_seqs: Vec<i64> = Vec::new();
    let mut locations = super::locations::LatestBatch::default();
    let mut history = super::history::HistoryBatch::default();
    for op in ops.drain(..) {
        match op {
            WriteOp::EnqueueMessage { delivery, .. } if deleted.contains(&delivery.seq) => {}
            WriteOp::DeleteMessage(seq) if enqueued.contains(&seq) => {}
            WriteOp::DeleteMessage(seq) => delete_seqs.push(seq as i64),
            WriteOp::UpsertLocation { device_id, position } => locations.add(device_id, position),
            WriteOp::AppendHistory { topic, payload, content_type, received_at } => {
                history.add(topic, payload, content_type, received_at)
            }
            op => execute(&mut tx, op).await?,
        }
    }
    // Many rows per statement: the hot path writes one of each per position.
    locations.execute(&mut tx).await?;
    history.execute(&mut tx).await?;
    for chunk in delete_seqs.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("DELETE FROM session_messages WHERE seq IN ({})", placeholders.join(","));
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

async fn execute(tx: &mut sqlx::Transaction<'_, Any>, op: WriteOp) -> Result<(), sqlx::Error> {
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
            .bind(expiry_millis(&msg))
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
            .bind(expiry_secs as i64)
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
            let options = serde_json::to_string(&options).unwrap_or_default();
            sqlx::query(
                "INSERT INTO session_subscriptions (client_id, filter, options) VALUES ($1, $2, $3) \
                 ON CONFLICT (client_id, filter) DO UPDATE SET options = excluded.options",
            )
            .bind(client_id.to_string())
            .bind(filter)
            .bind(options)
            .execute(conn)
            .await?;
        }
        WriteOp::DeleteSubscription { client_id, filter } => {
            sqlx::query("DELETE FROM session_subscriptions WHERE client_id = $1 AND filter = $2")
                .bind(client_id.to_string())
                .bind(filter)
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
