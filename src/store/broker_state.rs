//! Reading the broker's durable state back at start, and the encoding of
//! message properties shared with the writer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ntex::util::Bytes;
use sqlx::Row;

use super::Store;
use crate::domain::{
    ClientId, Delivery, Message, MessageProps, Principal, QoS, RestoredState, SharedFilter,
    StoredSession, SubscriptionOptions, TopicLimits, TopicName,
};

pub(crate) fn encode_props(props: Option<&MessageProps>) -> Option<String> {
    props.and_then(MessageProps::to_json)
}

fn decode_props(json: Option<String>) -> Option<Arc<MessageProps>> {
    MessageProps::from_json(&json?).map(Arc::new)
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Wall-clock expiry back to a monotonic deadline (past ones become "now").
fn expires_at(ms: Option<i64>) -> Option<Instant> {
    let at = from_millis(ms?);
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    Some(Instant::now() + left)
}

fn message(
    topic: String,
    payload: Vec<u8>,
    qos: i64,
    retain: bool,
    props: Option<String>,
    expires: Option<i64>,
    received: i64,
) -> Option<Message> {
    // Stored topics were valid when stored; skip anything that is not.
    let topic = TopicName::parse(topic, TopicLimits::default()).ok()?;
    let mut msg = Message::new(topic, Bytes::from(payload), QoS::from_u8(qos as u8)?, retain);
    msg.props = decode_props(props);
    msg.expires_at = expires_at(expires);
    msg.received_at = from_millis(received);
    Some(msg)
}

impl Store {
    /// Everything the router needs to resume where the last run stopped.
    pub async fn load_broker_state(&self) -> anyhow::Result<RestoredState> {
        let pool = self.pool();
        let mut state = RestoredState::default();

        let rows =
            sqlx::query("SELECT topic, payload, qos, props, expires_at, updated_at FROM retained")
                .fetch_all(pool)
                .await
                .context("loading retained messages")?;
        for r in rows {
            if let Some(m) = message(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                true,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
            ) {
                state.retained.push(m);
            }
        }

        let (sessions, max_seq) = self.load_sessions(None).await?;
        state.next_seq = max_seq + 1;
        state.sessions = sessions;
        tracing::info!(
            retained = state.retained.len(),
            sessions = state.sessions.len(),
            queued = state.sessions.iter().map(|s| s.messages.len()).sum::<usize>(),
            "broker state restored"
        );
        Ok(state)
    }

    /// One client's stored session, for the instance taking it over from
    /// another; `None` when nothing is stored for it.
    pub async fn load_session(&self, client_id: &str) -> anyhow::Result<Option<StoredSession>> {
        let store = self.clone();
        let client_id = client_id.to_owned();
        self.run(async move {
            let (sessions, _) = store.load_sessions(Some(&client_id)).await?;
            Ok(sessions.into_iter().next())
        })
        .await
    }

    /// Stored sessions (all, or the one of `only`) and the highest queued
    /// delivery number among them.
    async fn load_sessions(&self, only: Option<&str>) -> anyhow::Result<(Vec<StoredSession>, u64)> {
        let pool = self.pool();
        // `$1 IS NULL` keeps one statement per table for both uses.
        let only = only.map(str::to_owned);
        let rows = sqlx::query(
            "SELECT client_id, expiry_secs, disconnected_at, owner FROM sessions \
             WHERE ($1 IS NULL OR client_id = $1)",
        )
        .bind(only.clone())
        .fetch_all(pool)
        .await
        .context("loading sessions")?;
        let mut sessions: std::collections::HashMap<String, StoredSession> = rows
            .into_iter()
            .map(|r| -> anyhow::Result<_> {
                let id: String = r.try_get(0)?;
                let expiry: i64 = r.try_get(1)?;
                let gone: Option<i64> = r.try_get(2)?;
                let owner: Option<String> = r.try_get(3)?;
                Ok((
                    id.clone(),
                    StoredSession {
                        client_id: ClientId::from(id.as_str()),
                        owner: owner.as_deref().map(Principal::from_stored),
                        expiry_secs: expiry.clamp(0, u32::MAX as i64) as u32,
                        // A session that was connected when the process died
                        // has been gone since then; count from the start.
                        disconnected_at: Some(
                            gone.map(from_millis).unwrap_or_else(SystemTime::now),
                        ),
                        subscriptions: Vec::new(),
                        messages: Vec::new(),
                        incoming_qos2: Vec::new(),
                        pending_releases: Vec::new(),
                    },
                ))
            })
            .collect::<anyhow::Result<_>>()?;

        let rows = sqlx::query(
            "SELECT client_id, filter, options FROM session_subscriptions \
             WHERE ($1 IS NULL OR client_id = $1)",
        )
        .bind(only.clone())
        .fetch_all(pool)
        .await
        .context("loading subscriptions")?;
        for r in rows {
            let id: String = r.try_get(0)?;
            let filter: String = r.try_get(1)?;
            let options: String = r.try_get(2)?;
            let (Some(s), Ok(f), Ok(o)) = (
                sessions.get_mut(&id),
                SharedFilter::parse(filter, TopicLimits::default()),
                serde_json::from_str::<SubscriptionOptions>(&options),
            ) else {
                continue;
            };
            s.subscriptions.push((f, o));
        }

        let rows = sqlx::query(
            "SELECT seq, client_id, topic, payload, qos, retain, props, sub_ids, expires_at, received_at, packet_id \
             FROM session_messages WHERE ($1 IS NULL OR client_id = $1) ORDER BY seq",
        )
        .bind(only.clone())
        .fetch_all(pool)
        .await
        .context("loading queued messages")?;
        let mut max_seq = 0u64;
        for r in rows {
            let seq: i64 = r.try_get(0)?;
            max_seq = max_seq.max(seq as u64);
            let id: String = r.try_get(1)?;
            let retain: i64 = r.try_get(5)?;
            let sub_ids: Option<String> = r.try_get(7)?;
            let packet_id: Option<i64> = r.try_get(10)?;
            let Some(msg) = message(
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                retain != 0,
                r.try_get(6)?,
                r.try_get(8)?,
                r.try_get(9)?,
            ) else {
                continue;
            };
            let Some(s) = sessions.get_mut(&id) else { continue };
            s.messages.push(Delivery {
                seq: seq as u64,
                qos: msg.qos,
                retain: msg.retain,
                subscription_ids: sub_ids
                    .as_deref()
                    .and_then(|j: &str| serde_json::from_str::<Vec<u32>>(j).ok())
                    .unwrap_or_default(),
                // It may have reached the client before the restart.
                dup: true,
                packet_id: packet_id
                    .and_then(|id| u16::try_from(id).ok())
                    .and_then(std::num::NonZeroU16::new),
                stored: true,
                msg: Arc::new(msg),
            });
        }
        for (table, pending) in
            [("session_incoming_qos2", false), ("session_pending_releases", true)]
        {
            let sql = format!(
                "SELECT client_id, packet_id FROM {table} WHERE ($1 IS NULL OR client_id = $1)"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(only.clone())
                .fetch_all(pool)
                .await
                .context("loading QoS 2 state")?;
            for r in rows {
                let id: String = r.try_get(0)?;
                let packet_id: i64 = r.try_get(1)?;
                let (Some(s), Ok(packet_id)) = (sessions.get_mut(&id), u16::try_from(packet_id))
                else {
                    continue;
                };
                if pending {
                    s.pending_releases.push(packet_id);
                } else {
                    s.incoming_qos2.push(packet_id);
                }
            }
        }
        Ok((sessions.into_values().collect(), max_seq))
    }
}
