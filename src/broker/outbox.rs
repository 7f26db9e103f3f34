//! A session's outbound queue: the router pushes, the connection's pump pulls.
//!
//! It outlives connections: while the client is away it is the offline queue,
//! and whatever was in flight when a connection dropped goes back to its front
//! (flagged DUP) for the next one. It is bounded; overflow follows the policy.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::message::{Delivery, QoS};
use super::stats::Stats;
use crate::store::StoreWriter;

/// Identifies one network connection of a session (sessions outlive them).
pub type ConnectionId = u64;

/// What to do with a QoS≥1 message that meets a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Drop the oldest queued message to make room (counted and logged).
    #[default]
    DropOldest,
    /// Refuse the new message (counted and logged).
    DropNew,
}

/// Why the broker asks a connection to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Another connection took the client id over (v5 reason 0x8E).
    SessionTakenOver,
    /// The broker is shutting down (v5 reason 0x8B).
    ServerShuttingDown,
}

/// What the pump gets from [`Outbox::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Deliveries were appended to the buffer.
    Ready,
    /// This connection must close.
    Kicked(KickReason),
}

struct State {
    queue: VecDeque<Delivery>,
    /// Handed to the pump, waiting for PUBACK/PUBREC; ordered for redelivery.
    inflight: Inflight,
    conn: Option<ConnectionId>,
    kicked: Option<(ConnectionId, KickReason)>,
    /// Inbound QoS 2 packet ids received (PUBREC sent) but not yet released:
    /// a resent PUBLISH with one of them, even on a new connection, is not
    /// routed again [MQTT-4.3.3-10].
    incoming_qos2: HashSet<u16>,
    /// Outbound QoS 2 packet ids past PUBREC, waiting for PUBCOMP: a new
    /// connection resends PUBREL for them, not the PUBLISH [MQTT-4.4.0-1].
    pending_release: BTreeSet<u16>,
    /// Deliveries dropped by the bound so far (for log throttling).
    dropped: u64,
}

pub struct Outbox {
    // A std Mutex: every critical section is a few queue operations and never
    // crosses an `.await`; the router and one pump are the only contenders.
    state: Mutex<State>,
    notify: Notify,
    bound: usize,
    policy: OverflowPolicy,
    stats: Arc<Stats>,
    /// Deletes stored deliveries once they are acknowledged or dropped.
    store: StoreWriter,
    client_id: crate::domain::ClientId,
}

impl Outbox {
    pub fn new(
        client_id: crate::domain::ClientId,
        bound: usize,
        policy: OverflowPolicy,
        stats: Arc<Stats>,
        store: StoreWriter,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                inflight: Inflight { map: BTreeMap::new(), stats: stats.clone() },
                conn: None,
                kicked: None,
                incoming_qos2: HashSet::new(),
                pending_release: BTreeSet::new(),
                dropped: 0,
            }),
            notify: Notify::new(),
            bound: bound.max(1),
            policy,
            stats,
            store,
            client_id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-edited
        // in a way that matters more than losing the connection, so recover.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a delivery. Returns `false` when it was dropped by the bound.
    pub fn push(&self, d: Delivery) -> bool {
        let mut st = self.lock();
        if st.queue.len() >= self.bound {
            st.dropped += 1;
            let dropped = st.dropped;
            if d.qos == QoS::AtMostOnce || self.policy == OverflowPolicy::DropNew {
                drop(st);
                self.stats.dropped_queue_full(d.qos);
                self.log_drop(dropped, "new");
                self.forget(&d);
                return false;
            }
            // Drop the oldest; prefer a QoS0 one so reliable messages survive longer.
            let victim = match st.queue.iter().position(|q| q.qos == QoS::AtMostOnce) {
                Some(i) => st.queue.remove(i),
                None => st.queue.pop_front(),
            };
            if let Some(v) = victim {
                self.stats.dropped_queue_full(v.qos);
                self.log_drop(dropped, "oldest");
                self.forget(&v);
            }
        }
        st.queue.push_back(d);
        drop(st);
        // Pumps enable their `Notified` before looking at the queue, so
        // waking current waiters cannot lose a delivery.
        self.notify.notify_waiters();
        true
    }

    /// A slow consumer can overflow thousands of times a second: log the
    /// first drop and then every thousandth, with the running total.
    fn log_drop(&self, dropped: u64, which: &'static str) {
        if dropped == 1 || dropped.is_multiple_of(1000) {
            tracing::warn!(
                client.id = %self.client_id,
                dropped_total = dropped,
                dropped = which,
                bound = self.bound,
                "outbound queue full: messages dropped"
            );
        }
    }

    /// Restore a delivery read back from the store at start (no bound check:
    /// the store never holds more than the bound allowed).
    pub fn restore(&self, d: Delivery) {
        self.lock().queue.push_back(d);
    }

    /// Remove a delivery's stored copy, if it has one (acked, dropped or expired).
    fn forget(&self, d: &Delivery) {
        if d.stored {
            self.store.delete_message(d.seq);
        }
    }

    /// Bind the outbox to a new connection. In-flight deliveries of an older
    /// connection go back to the front of the queue as duplicates.
    pub fn attach(&self, conn: ConnectionId) {
        let mut st = self.lock();
        requeue_inflight(&mut st);
        st.conn = Some(conn);
        drop(st);
        // Wake a pump of an older connection so it sees it lost the session.
        self.notify.notify_waiters();
    }

    /// The connection ended: requeue what it had in flight.
    pub fn detach(&self, conn: ConnectionId) {
        let mut st = self.lock();
        if st.conn == Some(conn) {
            requeue_inflight(&mut st);
            st.conn = None;
        }
    }

    /// Tell the pump of `conn` to close its connection.
    pub fn kick(&self, conn: ConnectionId, reason: KickReason) {
        self.lock().kicked = Some((conn, reason));
        self.notify.notify_waiters();
    }

    /// Wait for deliveries for `conn`: appends up to `max` to `out`. QoS≥1
    /// deliveries move to the in-flight set until [`Outbox::ack`].
    pub async fn next(&self, conn: ConnectionId, out: &mut Vec<Delivery>, max: usize) -> Next {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if let Some((k, reason)) = st.kicked
                    && k == conn
                {
                    return Next::Kicked(reason);
                }
                if st.conn != Some(conn) {
                    // Another connection owns the session now.
                    return Next::Kicked(KickReason::SessionTakenOver);
                }
                let now = Instant::now();
                while out.len() < max {
                    let Some(d) = st.queue.pop_front() else { break };
                    if d.msg.is_expired(now) {
                        self.stats.dropped_expired();
                        self.forget(&d);
                        continue;
                    }
                    if d.qos != QoS::AtMostOnce {
                        st.inflight.insert(d.seq, d.clone());
                    }
                    out.push(d);
                }
                if !out.is_empty() {
                    return Next::Ready;
                }
            }
            notified.await;
        }
    }

    /// The client acknowledged `seq` (PUBACK, or PUBREC for QoS 2).
    pub fn ack(&self, seq: u64) {
        let removed = self.lock().inflight.remove(&seq);
        if let Some(d) = removed {
            self.forget(&d);
        }
    }

    /// An inbound QoS 2 PUBLISH with `packet_id` arrived: `true` when it is
    /// new and must be routed, `false` when it is a resend of one already
    /// received (acknowledge it again, do not route it).
    pub fn incoming_qos2_begin(&self, packet_id: u16) -> bool {
        self.lock().incoming_qos2.insert(packet_id)
    }

    /// PUBREL for an inbound QoS 2 message: its packet id may be reused.
    /// `false` when the id was not awaiting release.
    pub fn incoming_qos2_release(&self, packet_id: u16) -> bool {
        self.lock().incoming_qos2.remove(&packet_id)
    }

    /// PUBREC for the outbound delivery `seq` sent as `packet_id`: the message
    /// is delivered (forget it) but the exchange goes on until PUBCOMP.
    pub fn outgoing_qos2_received(&self, seq: u64, packet_id: u16) {
        let mut st = self.lock();
        st.pending_release.insert(packet_id);
        let removed = st.inflight.remove(&seq);
        drop(st);
        if let Some(d) = removed {
            self.forget(&d);
        }
    }

    /// PUBCOMP for `packet_id`: the QoS 2 exchange is over.
    pub fn outgoing_qos2_completed(&self, packet_id: u16) {
        self.lock().pending_release.remove(&packet_id);
    }

    /// Packet ids whose PUBREL a new connection must (re)send, oldest first.
    pub fn pending_releases(&self) -> Vec<u16> {
        self.lock().pending_release.iter().copied().collect()
    }

    /// Queued plus in-flight deliveries.
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.queue.len() + st.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop everything (clean start over an existing session).
    pub fn clear(&self) {
        let mut st = self.lock();
        let inflight = st.inflight.take();
        let dropped: Vec<Delivery> = st.queue.drain(..).chain(inflight.into_values()).collect();
        drop(st);
        for d in &dropped {
            self.forget(d);
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("client_id", &self.client_id)
            .field("len", &self.len())
            .finish()
    }
}

fn requeue_inflight(st: &mut State) {
    let inflight = st.inflight.take();
    for (_, mut d) in inflight.into_iter().rev() {
        d.dup = true;
        st.queue.push_front(d);
    }
}

/// The in-flight map, kept in step with the `inflight_out` gauge of [`Stats`].
struct Inflight {
    map: BTreeMap<u64, Delivery>,
    stats: Arc<Stats>,
}

impl Inflight {
    fn insert(&mut self, seq: u64, d: Delivery) {
        if self.map.insert(seq, d).is_none() {
            self.stats.inflight_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn remove(&mut self, seq: &u64) -> Option<Delivery> {
        let removed = self.map.remove(seq);
        if removed.is_some() {
            self.stats.inflight_out.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        removed
    }

    fn take(&mut self) -> BTreeMap<u64, Delivery> {
        let n = self.map.len() as u64;
        self.stats.inflight_out.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut self.map)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.take();
    }
}
