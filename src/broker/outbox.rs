//! A session's outbound queue: the router pushes, the connection's pump pulls.
//!
//! It outlives connections: while the client is away it is the offline queue,
//! and whatever was in flight when a connection dropped goes back to its front
//! (flagged DUP) for the next one. It is bounded in messages and in bytes
//! (map snapshots are megabytes each); overflow follows the policy.
//!
//! A QoS≥1 message for a consumer that is connected and keeping up is never
//! dropped at the bound: it is queued (within a headroom past it) and the
//! publisher's acknowledgement waits until the queue is back under the bound
//! ([`Outbox::room`]), so fast publishers slow down to the pace of the
//! subscriber instead of losing messages. A consumer that stopped reading
//! gets the overflow policy, so it cannot stall everyone else.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::sync::{Notify, oneshot};

use super::ports::SharedDurability;
use super::stats::Stats;
use crate::domain::{Delivery, QoS};
use crate::domain::{StoreError, WriteOp};

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
    /// The credentials the connection signed in with were revoked (the
    /// user or device deleted, the token signed out; v5 reason 0x98).
    Revoked,
}

/// A connected consumer that has not taken a delivery for this long while
/// deliveries wait counts as stalled: no backpressure on its behalf.
const STALLED_AFTER: Duration = Duration::from_secs(1);
/// Queued deliveries past which the consumer is lagging and new ones are
/// queued as compacted copies (see [`crate::domain::Message::compacted`]): a queue of
/// `max_queued_messages` slices could otherwise pin as many network read
/// buffers, far more memory than the byte bound counts.
const LAGGING_AFTER: usize = 32;

/// What happened to a pushed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued past the bound for a live consumer: the publisher should wait
    /// for [`Outbox::room`] before acknowledging.
    Congested,
    /// Dropped by the bound (counted and logged).
    Dropped,
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
    queue: Queue,
    /// Handed to the pump, waiting for PUBACK/PUBREC; ordered for redelivery.
    inflight: Inflight,
    conn: Option<ConnectionId>,
    kicked: Option<(ConnectionId, KickReason)>,
    /// QoS 2 state; boxed on the first QoS 2 exchange, as most sessions
    /// (an idle connection's, one at QoS 0 or 1) never have one.
    qos2: Option<Box<Qos2>>,
    /// Outbound packet ids held by deliveries, queued or in flight. Together
    /// with `Qos2::pending_release` these are the ids not free for a new
    /// delivery.
    ids: HashSet<u16>,
    /// The last packet id handed out.
    last_id: u16,
    /// The session outlives its connections: its exactly-once state is
    /// stored. Changed under the lock, and writes that depend on it are
    /// submitted under the lock, so none lands after the session's deletion.
    persistent: bool,
    /// Deliveries dropped by the bound so far (for log throttling).
    dropped: u64,
    /// When the pump last took deliveries (or the connection attached).
    last_pull: Instant,
    /// The pump found the queue empty and waits for the next push.
    pump_parked: bool,
}

/// One consumer counted in [`Outbox::waiting`] for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A session's QoS 2 exchanges.
#[derive(Default)]
struct Qos2 {
    /// Inbound QoS 2 packet ids received (PUBREC sent) but not yet released:
    /// a resent PUBLISH with one of them, even on a new connection, is not
    /// routed again [MQTT-4.3.3-10].
    incoming: HashSet<u16>,
    /// Outbound QoS 2 packet ids past PUBREC, waiting for PUBCOMP: a new
    /// connection resends PUBREL for them, not the PUBLISH [MQTT-4.4.0-1].
    pending_release: BTreeSet<u16>,
    /// Queued deliveries the pump must not send yet, by seq: QoS 2 ones whose
    /// stored copy is not committed (see [`Outbox::push_held`]).
    held: HashSet<u64>,
}

impl State {
    fn qos2(&mut self) -> &mut Qos2 {
        self.qos2.get_or_insert_default()
    }

    /// Whether the delivery `seq` is held (see [`Outbox::push_held`]).
    fn is_held(&self, seq: u64) -> bool {
        self.qos2.as_ref().is_some_and(|q| !q.held.is_empty() && q.held.contains(&seq))
    }

    fn is_pending_release(&self, packet_id: u16) -> bool {
        self.qos2.as_ref().is_some_and(|q| q.pending_release.contains(&packet_id))
    }

    /// Connected and taking deliveries: worth slowing publishers down for.
    /// A pump parked on an empty queue takes the next push at once, however
    /// long it has been idle.
    fn consumer_live(&self, now: Instant) -> bool {
        self.conn.is_some()
            && (self.pump_parked || now.duration_since(self.last_pull) < STALLED_AFTER)
    }
}

pub struct Outbox {
    // A std Mutex: every critical section is a few queue operations and never
    // crosses an `.await`; the router and one pump are the only contenders.
    state: Mutex<State>,
    notify: Notify,
    /// Consumers waiting on `notify` ([`Outbox::next`]): a push wakes
    /// `notify`, which takes its lock, only when one waits.
    waiting: AtomicUsize,
    /// The waker of a consumer that polls ([`Outbox::poll_next`]); woken
    /// with `notify`.
    consumer: AtomicWaker,
    /// Publishers waiting for the queue to shrink under the bound.
    room: Notify,
    bound: usize,
    /// Bytes (payload and topic) the queued deliveries may hold; a hard
    /// bound, no headroom: it is what keeps a session's memory in check.
    max_bytes: usize,
    /// Reliable deliveries queued past `bound` for a live consumer before
    /// the overflow policy applies after all.
    headroom: usize,
    policy: OverflowPolicy,
    stats: Arc<Stats>,
    /// Deletes stored deliveries once they are acknowledged or dropped.
    store: SharedDurability,
    client_id: crate::domain::ClientId,
}

impl Outbox {
    pub fn new(
        client_id: crate::domain::ClientId,
        bound: usize,
        policy: OverflowPolicy,
        stats: Arc<Stats>,
        store: SharedDurability,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                queue: Queue::default(),
                inflight: Inflight { map: BTreeMap::new(), stats: stats.clone() },
                conn: None,
                kicked: None,
                qos2: None,
                ids: HashSet::new(),
                last_id: 0,
                persistent: false,
                dropped: 0,
                last_pull: Instant::now(),
                pump_parked: false,
            }),
            notify: Notify::new(),
            waiting: AtomicUsize::new(0),
            consumer: AtomicWaker::new(),
            room: Notify::new(),
            bound: bound.max(1),
            max_bytes: usize::MAX,
            headroom: bound.max(1),
            policy,
            stats,
            store,
            client_id,
        }
    }

    /// Let up to `headroom` reliable deliveries queue past the bound while
    /// publishers wait (default: the bound again). One publisher's whole
    /// receive window should fit, or its concurrent publishes overflow.
    pub fn with_headroom(mut self, headroom: usize) -> Self {
        self.headroom = headroom.max(1);
        self
    }

    /// Bound the bytes the queued deliveries hold (default: unbounded).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-edited
        // in a way that matters more than losing the connection, so recover.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a delivery, applying the bounds.
    pub fn push(&self, mut d: Delivery) -> Pushed {
        let mut st = self.lock();
        let mut pushed = Pushed::Queued;
        let size = delivery_bytes(&d);
        let over_bytes = st.queue.bytes + size > self.max_bytes;
        let over_count = st.queue.len() >= self.bound;
        if over_count || over_bytes {
            let reliable = d.qos != QoS::AtMostOnce;
            if reliable
                && !over_bytes
                && st.queue.len() < self.bound + self.headroom
                && st.consumer_live(Instant::now())
            {
                pushed = Pushed::Congested;
            } else if !reliable || self.policy == OverflowPolicy::DropNew || size > self.max_bytes {
                // A delivery larger than the whole byte bound never fits.
                st.dropped += 1;
                let dropped = st.dropped;
                st.free_id(&d);
                drop(st);
                self.stats.dropped_queue_full(d.qos);
                self.log_drop(dropped, "new");
                self.forget(&d);
                return Pushed::Dropped;
            } else {
                // Drop the oldest until the new one fits both bounds: one for
                // the message bound, as many as it takes for the byte bound.
                let mut count_victim = over_count;
                while count_victim || st.queue.bytes + size > self.max_bytes {
                    count_victim = false;
                    // Prefer a QoS0 one so reliable messages survive longer.
                    let victim = match st.queue.position(|q| q.qos == QoS::AtMostOnce) {
                        Some(i) => st.queue.remove(i),
                        None => st.queue.pop_front(),
                    };
                    let Some(v) = victim else { break };
                    st.dropped += 1;
                    let dropped = st.dropped;
                    st.free_id(&v);
                    self.stats.dropped_queue_full(v.qos);
                    self.log_drop(dropped, "oldest");
                    self.forget(&v);
                }
            }
        }
        if st.queue.len() >= LAGGING_AFTER {
            d.msg = Arc::new(d.msg.compacted());
        }
        if d.qos != QoS::AtMostOnce && d.packet_id.is_none() {
            // Normally reserved by the caller (its stored copy carries it).
            match st.allocate_id() {
                Some(id) => d.packet_id = Some(id),
                None => {
                    st.dropped += 1;
                    let dropped = st.dropped;
                    drop(st);
                    self.stats.dropped_queue_full(d.qos);
                    self.log_drop(dropped, "new: no packet id free");
                    self.forget(&d);
                    return Pushed::Dropped;
                }
            }
        }
        st.queue.push_back(d);
        drop(st);
        // Pumps enable their `Notified` before looking at the queue, so
        // waking current waiters cannot lose a delivery.
        self.wake_consumer();
        pushed
    }

    /// [`Outbox::push`] for a QoS 2 delivery whose stored copy is not
    /// committed yet: queued in order, but the pump stops at it until
    /// [`Outbox::release_held`]. Sent earlier, a crash before the commit
    /// would leave the client holding its packet id unreleased while the
    /// restarted broker, which knows nothing of the delivery, reuses the id
    /// for a new message; the client takes that for a resend and drops it
    /// [MQTT-4.3.3-10]. Later deliveries wait behind it, keeping order.
    pub fn push_held(&self, d: Delivery) -> Pushed {
        let seq = d.seq;
        // Before the push, so that no pump can take it in between.
        self.lock().qos2().held.insert(seq);
        let pushed = self.push(d);
        if pushed == Pushed::Dropped {
            self.lock().qos2().held.remove(&seq);
        }
        pushed
    }

    /// The stored copy of the held delivery `seq` is committed: the pump may
    /// send it. Or it will not be (`committed` false): the publisher was
    /// refused and will resend, so the delivery goes.
    pub fn release_held(&self, seq: u64, committed: bool) {
        let mut st = self.lock();
        if !st.qos2.as_mut().is_some_and(|q| q.held.remove(&seq)) {
            // Dropped by the bounds meanwhile.
            return;
        }
        if !committed {
            let at = st.queue.position(|d| d.seq == seq);
            if let Some(d) = at.and_then(|i| st.queue.remove(i)) {
                st.free_id(&d);
            }
            return;
        }
        drop(st);
        self.wake_consumer();
    }

    /// Resolves once the queue is under its bound again, or its consumer
    /// stalled or went away (then the overflow policy applies, not waiting).
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.queue.len() < self.bound || !st.consumer_live(Instant::now()) {
                    return;
                }
            }
            // Re-check at the stall horizon even if nothing wakes us.
            let _ = tokio::time::timeout(STALLED_AFTER, notified).await;
        }
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
                max_bytes = self.max_bytes,
                "outbound queue full: messages dropped"
            );
        }
    }

    /// A packet id for a QoS≥1 delivery about to be queued (and stored with
    /// it): unique among the session's deliveries and unfinished QoS 2
    /// exchanges until the delivery is done or dropped. `None` when all
    /// 65,535 are taken (the delivery cannot be queued).
    pub fn reserve_packet_id(&self) -> Option<NonZeroU16> {
        self.lock().allocate_id()
    }

    /// Give back an id from [`Outbox::reserve_packet_id`] whose delivery was
    /// not queued after all.
    pub fn unreserve_packet_id(&self, id: NonZeroU16) {
        self.lock().ids.remove(&id.get());
    }

    /// Whether the session's exactly-once state is stored; set by the router
    /// when the session is opened or resumed, cleared when it ends.
    pub fn set_persistent(&self, persistent: bool) {
        self.lock().persistent = persistent;
    }

    /// Restore a delivery read back from the store at start (no bound check:
    /// the store never holds more than the bound allowed). It keeps its
    /// stored packet id; one stored without gets a new one.
    pub fn restore(&self, mut d: Delivery) {
        let mut st = self.lock();
        if d.qos != QoS::AtMostOnce {
            match d.packet_id {
                Some(id) if st.ids.insert(id.get()) => {}
                _ => d.packet_id = st.allocate_id(),
            }
        }
        st.queue.push_back(d);
    }

    /// Restore the exactly-once state read back from the store at start:
    /// inbound QoS 2 ids not released yet, outbound ones waiting for PUBCOMP.
    pub fn restore_qos2(&self, incoming: &[u16], pending_release: &[u16]) {
        let mut st = self.lock();
        st.persistent = true;
        if !incoming.is_empty() {
            st.qos2().incoming.extend(incoming.iter().copied().filter(|id| *id != 0));
        }
        for id in pending_release.iter().copied().filter(|id| *id != 0) {
            st.ids.remove(&id);
            st.qos2().pending_release.insert(id);
        }
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
        st.last_pull = Instant::now();
        st.pump_parked = false;
        drop(st);
        // Wake a pump of an older connection so it sees it lost the session.
        self.wake_consumer();
    }

    /// The connection ended: requeue what it had in flight.
    pub fn detach(&self, conn: ConnectionId) {
        let mut st = self.lock();
        if st.conn == Some(conn) {
            requeue_inflight(&mut st);
            st.conn = None;
            drop(st);
            // The ended connection's task is not kept alive by its waker.
            drop(self.consumer.take());
            // Publishers waiting on this consumer stop waiting.
            self.room.notify_waiters();
        }
    }

    /// Tell the pump of `conn` to close its connection.
    pub fn kick(&self, conn: ConnectionId, reason: KickReason) {
        self.lock().kicked = Some((conn, reason));
        self.wake_consumer();
    }

    /// Wait for deliveries for `conn`: appends up to `max` to `out`. QoS≥1
    /// deliveries move to the in-flight set until [`Outbox::ack`].
    pub async fn next(&self, conn: ConnectionId, out: &mut Vec<Delivery>, max: usize) -> Next {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Counted before the look (which takes the state's lock): a push
            // after the look sees the count and wakes `notify`.
            let _waiting = Waiting::enter(&self.waiting);
            if let Some(next) = self.take(conn, out, max, None) {
                return next;
            }
            notified.await;
        }
    }

    fn wake_consumer(&self) {
        if self.waiting.load(SeqCst) > 0 {
            self.notify.notify_waiters();
        }
        self.consumer.wake();
    }

    /// [`Outbox::next`] for a consumer that polls (a connection's own loop):
    /// no future to keep between polls, only the waker of the one consumer.
    pub fn poll_next(
        &self,
        cx: &mut Context<'_>,
        conn: ConnectionId,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Poll<Next> {
        match self.take(conn, out, max, Some(cx.waker())) {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }

    /// Take up to `max` deliveries for `conn`; `None` when there are none
    /// (the consumer waits). `waker`: a polling consumer's, registered
    /// only while `conn` is the session's connection (a kicked one must not
    /// take its successor's wake-ups) and before the look, so that a push
    /// after it wakes the consumer.
    fn take(
        &self,
        conn: ConnectionId,
        out: &mut Vec<Delivery>,
        max: usize,
        waker: Option<&Waker>,
    ) -> Option<Next> {
        let mut st = self.lock();
        if let Some((k, reason)) = st.kicked
            && k == conn
        {
            return Some(Next::Kicked(reason));
        }
        if st.conn != Some(conn) {
            // Another connection owns the session now.
            return Some(Next::Kicked(KickReason::SessionTakenOver));
        }
        if let Some(waker) = waker {
            self.consumer.register(waker);
        }
        let now = Instant::now();
        // Publishers only wait on a queue at its bound: wake them
        // when this pull brings it under, not on every pull.
        let was_full = st.queue.len() >= self.bound;
        while out.len() < max {
            if st.queue.front().is_some_and(|d| st.is_held(d.seq)) {
                break;
            }
            let Some(d) = st.queue.pop_front() else { break };
            if d.msg.is_expired(now) {
                st.free_id(&d);
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
            st.last_pull = now;
            st.pump_parked = false;
            let freed = was_full && st.queue.len() < self.bound;
            drop(st);
            if freed {
                self.room.notify_waiters();
            }
            return Some(Next::Ready);
        }
        // Nothing waiting: an idle consumer is not a stalled one.
        st.last_pull = now;
        st.pump_parked = true;
        None
    }

    /// The delivery `seq` is done: PUBACK, a refusing v5 PUBREC (which ends
    /// a QoS 2 exchange), or undeliverable to this client. Its packet id is free.
    pub fn ack(&self, seq: u64) {
        let mut st = self.lock();
        let removed = st.inflight.remove(&seq);
        if let Some(d) = &removed {
            st.free_id(d);
        }
        drop(st);
        if let Some(d) = removed {
            self.forget(&d);
        }
    }

    /// An inbound QoS 2 PUBLISH with `packet_id` arrived: `true` when it is
    /// new and must be routed, `false` when it is a resend of one already
    /// received (acknowledge it again, do not route it). Recorded in memory
    /// only: see [`Outbox::incoming_qos2_record`].
    pub fn incoming_qos2_begin(&self, packet_id: u16) -> bool {
        self.lock().qos2().incoming.insert(packet_id)
    }

    /// The writes that store the inbound `packet_id` of a persistent session
    /// (none for another), to be committed in one transaction with the
    /// message's own writes (its queued copies, history, retained): stored
    /// first, a crash before the message could leave the id recorded and a
    /// resend acknowledged but never routed; stored after, a crash in
    /// between could route the resend twice.
    pub fn incoming_qos2_record(&self, packet_id: u16) -> Vec<WriteOp> {
        let st = self.lock();
        if !st.persistent {
            return Vec::new();
        }
        vec![WriteOp::PutIncomingQos2 { client_id: self.client_id.clone(), packet_id }]
    }

    /// PUBREL for an inbound QoS 2 message (or its routing failed): its
    /// packet id may be reused. `false` when the id was not awaiting release.
    pub fn incoming_qos2_release(&self, packet_id: u16) -> bool {
        let mut st = self.lock();
        let released = st.qos2.as_mut().is_some_and(|q| q.incoming.remove(&packet_id));
        if released && st.persistent {
            self.store_locked(vec![WriteOp::DeleteIncomingQos2 {
                client_id: self.client_id.clone(),
                packet_id,
            }]);
        }
        released
    }

    /// [`Outbox::incoming_qos2_release`] for a receiver about to send
    /// PUBCOMP: also how to wait until the release is durable. A PUBCOMP sent
    /// before that could leave the id recorded after a crash, and a client
    /// that reuses the id for a new message would get PUBREC for it and lose
    /// it. `None`: nothing to wait for (or the write is queued for retry).
    pub fn incoming_qos2_release_durably(
        &self,
        packet_id: u16,
    ) -> (bool, Option<oneshot::Receiver<Result<(), StoreError>>>) {
        let mut st = self.lock();
        let released = st.qos2.as_mut().is_some_and(|q| q.incoming.remove(&packet_id));
        if !(released && st.persistent) {
            return (released, None);
        }
        let ops =
            vec![WriteOp::DeleteIncomingQos2 { client_id: self.client_id.clone(), packet_id }];
        match self.store.submit_durable(ops.clone()) {
            Ok(committed) => (released, Some(committed)),
            Err(_) => {
                // Refused for now: kept for retry like any other write.
                self.store_locked(ops);
                (released, None)
            }
        }
    }

    /// PUBREC for the outbound delivery `seq` sent as `packet_id`: the message
    /// is delivered (forget it) but the exchange goes on until PUBCOMP.
    /// Stored, the message's row goes and the pending PUBREL's comes in one
    /// commit: after a crash the next connection gets exactly one of them.
    pub fn outgoing_qos2_received(&self, seq: u64, packet_id: u16) {
        // Not waited for: queued (or logged) either way.
        drop(self.outgoing_qos2_receipt(seq, packet_id, false));
    }

    /// [`Outbox::outgoing_qos2_received`] for a sender about to send PUBREL:
    /// resolves once the new state is durable. A PUBREL sent before that
    /// could be followed, after a crash, by the stored PUBLISH again, which
    /// a client that released the id takes for a new message
    /// [MQTT-4.3.3-5]. `Err` when it could not be stored: do not send PUBREL.
    pub async fn outgoing_qos2_received_durably(
        &self,
        seq: u64,
        packet_id: u16,
    ) -> Result<(), StoreError> {
        match self.outgoing_qos2_receipt(seq, packet_id, true) {
            None => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(committed)) => committed.await.map_err(|_| StoreError::Unavailable)?,
        }
    }

    /// Record a PUBREC, and queue the store writes it takes, if any (under
    /// the lock, see `State::persistent`); with `durable`, how to wait for them.
    fn outgoing_qos2_receipt(
        &self,
        seq: u64,
        packet_id: u16,
        durable: bool,
    ) -> Option<Result<oneshot::Receiver<Result<(), StoreError>>, StoreError>> {
        let mut st = self.lock();
        let removed = st.inflight.remove(&seq);
        if let Some(d) = &removed {
            st.free_id(d);
        }
        st.qos2().pending_release.insert(packet_id);
        let mut ops = Vec::new();
        if let Some(d) = removed.as_ref().filter(|d| d.stored) {
            ops.push(WriteOp::DeleteMessage(d.seq));
        }
        if st.persistent {
            ops.push(WriteOp::PutPendingRelease { client_id: self.client_id.clone(), packet_id });
        }
        if ops.is_empty() {
            return None;
        }
        if !durable {
            self.store_locked(ops);
            return None;
        }
        Some(self.store.submit_durable(ops.clone()).inspect_err(|_| {
            // Refused for now: kept for retry like any other write.
            self.store_locked(ops);
        }))
    }

    /// PUBCOMP for `packet_id`: the QoS 2 exchange is over.
    pub fn outgoing_qos2_completed(&self, packet_id: u16) {
        let mut st = self.lock();
        let completed = st.qos2.as_mut().is_some_and(|q| q.pending_release.remove(&packet_id));
        if completed && st.persistent {
            self.store_locked(vec![WriteOp::DeletePendingRelease {
                client_id: self.client_id.clone(),
                packet_id,
            }]);
        }
    }

    /// Queue store writes; the caller holds the lock (see `State::persistent`).
    fn store_locked(&self, ops: Vec<WriteOp>) {
        if let Err(e) = self.store.submit(ops) {
            tracing::error!(
                client.id = %self.client_id,
                error = %e,
                "exactly-once state not stored: writer queue full"
            );
        }
    }

    /// Packet ids whose PUBREL a new connection must (re)send, oldest first.
    pub fn pending_releases(&self) -> Vec<u16> {
        let st = self.lock();
        st.qos2.as_ref().map(|q| q.pending_release.iter().copied().collect()).unwrap_or_default()
    }

    /// Queued plus in-flight deliveries.
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.queue.len() + st.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every delivery, queued or in flight, that `keep` refuses; how
    /// many went. In-flight ones go back to the queue first, as on attach.
    pub fn retain(&self, mut keep: impl FnMut(&Delivery) -> bool) -> usize {
        let mut st = self.lock();
        requeue_inflight(&mut st);
        let (kept, dropped): (Vec<Delivery>, Vec<Delivery>) =
            std::mem::take(&mut st.queue).into_iter().partition(|d| keep(d));
        st.queue = kept.into_iter().collect();
        for d in &dropped {
            st.free_id(d);
        }
        drop(st);
        for d in &dropped {
            self.forget(d);
        }
        dropped.len()
    }

    /// Drop everything (clean start over an existing session).
    pub fn clear(&self) {
        let mut st = self.lock();
        let inflight = st.inflight.take();
        let queued = std::mem::take(&mut st.queue);
        let dropped: Vec<Delivery> = queued.into_iter().chain(inflight.into_values()).collect();
        for d in &dropped {
            st.free_id(d);
        }
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

impl State {
    /// The next packet id held by no delivery and no unfinished exchange.
    fn allocate_id(&mut self) -> Option<NonZeroU16> {
        let pending = self.qos2.as_ref().map_or(0, |q| q.pending_release.len());
        if self.ids.len() + pending >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.last_id.wrapping_add(1).max(1);
            self.last_id = id;
            if !self.is_pending_release(id) && self.ids.insert(id) {
                return NonZeroU16::new(id);
            }
        }
    }

    /// The delivery is done or dropped: its packet id is free (and a hold
    /// on it, if any, goes).
    fn free_id(&mut self, d: &Delivery) {
        if let Some(id) = d.packet_id {
            self.ids.remove(&id.get());
        }
        if let Some(q) = &mut self.qos2
            && !q.held.is_empty()
        {
            q.held.remove(&d.seq);
        }
    }
}

/// In-flight deliveries of a connection that went away go back to the front
/// of the queue as duplicates, with the packet ids they were sent with.
fn requeue_inflight(st: &mut State) {
    let inflight = st.inflight.take();
    for (_, mut d) in inflight.into_iter().rev() {
        d.dup = true;
        st.queue.push_front(d);
    }
}

/// What a queued delivery counts against the byte bound: its payload and
/// topic, the part that can be megabytes (the rest is a fixed few dozen).
fn delivery_bytes(d: &Delivery) -> usize {
    d.msg.payload.len() + d.msg.topic.as_str().len()
}

/// The queued deliveries with the bytes they hold, kept in step.
#[derive(Default)]
struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
}

impl Queue {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn push_back(&mut self, d: Delivery) {
        self.bytes += delivery_bytes(&d);
        self.items.push_back(d);
    }

    fn push_front(&mut self, d: Delivery) {
        self.bytes += delivery_bytes(&d);
        self.items.push_front(d);
    }

    fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.items.pop_front()?;
        self.bytes -= delivery_bytes(&d);
        Some(d)
    }

    fn remove(&mut self, i: usize) -> Option<Delivery> {
        let d = self.items.remove(i)?;
        self.bytes -= delivery_bytes(&d);
        Some(d)
    }

    fn position(&self, f: impl FnMut(&Delivery) -> bool) -> Option<usize> {
        self.items.iter().position(f)
    }
}

impl IntoIterator for Queue {
    type Item = Delivery;
    type IntoIter = std::collections::vec_deque::IntoIter<Delivery>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl FromIterator<Delivery> for Queue {
    fn from_iter<I: IntoIterator<Item = Delivery>>(iter: I) -> Self {
        let mut q = Queue::default();
        for d in iter {
            q.push_back(d);
        }
        q
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use ntex::util::Bytes;

    use super::*;
    use crate::broker::ports::memory::Kept;
    use crate::domain::Message;
    use crate::domain::{ClientId, TopicLimits, TopicName};

    /// An outbox of bound 2 (nothing here is stored).
    fn outbox() -> Arc<Outbox> {
        let stats = Arc::new(Stats::default());
        let writer = Kept::shared();
        Arc::new(Outbox::new(ClientId::new("c"), 2, OverflowPolicy::default(), stats, writer))
    }

    fn delivery(seq: u64, qos: QoS) -> Delivery {
        let topic = TopicName::parse("a/b", TopicLimits::default()).unwrap();
        Delivery {
            seq,
            msg: Arc::new(Message::new(topic, Bytes::from_static(b"x"), qos, false)),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            dup: false,
            packet_id: None,
            stored: false,
        }
    }

    #[tokio::test]
    async fn a_live_consumer_gets_reliable_overflow_queued_and_the_publisher_waits() {
        let outbox = outbox();
        outbox.attach(1);
        assert_eq!(outbox.push(delivery(1, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(outbox.push(delivery(2, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(outbox.push(delivery(3, QoS::AtLeastOnce)), Pushed::Congested);
        assert_eq!(outbox.push(delivery(4, QoS::AtLeastOnce)), Pushed::Congested);
        // Past the headroom (by default the bound again) the policy drops the oldest.
        assert_eq!(outbox.push(delivery(5, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(outbox.len(), 4);
        // QoS 0 is never worth waiting for.
        assert_eq!(outbox.push(delivery(6, QoS::AtMostOnce)), Pushed::Dropped);

        let room = outbox.room();
        tokio::pin!(room);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut room).await.is_err());
        let mut out = Vec::new();
        assert_eq!(outbox.next(1, &mut out, 3).await, Next::Ready);
        assert_eq!(out.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 3, 4]);
        tokio::time::timeout(Duration::from_millis(50), room).await.expect("room after a pull");
    }

    #[tokio::test]
    async fn a_consumer_idle_on_an_empty_queue_is_live_however_long_it_waited() {
        let outbox = outbox();
        outbox.attach(1);
        let pump = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                outbox.next(1, &mut out, 1).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        outbox.lock().last_pull = Instant::now() - 2 * STALLED_AFTER;
        assert!(outbox.lock().consumer_live(Instant::now()));
        outbox.push(delivery(1, QoS::AtLeastOnce));
        assert_eq!(pump.await.unwrap(), Next::Ready);
    }

    /// A delivery as the router queues it: with a packet id reserved.
    fn queued(outbox: &Outbox, seq: u64, qos: QoS) -> Delivery {
        let mut d = delivery(seq, qos);
        d.packet_id = outbox.reserve_packet_id();
        d
    }

    async fn take(outbox: &Outbox, conn: ConnectionId, n: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        assert_eq!(outbox.next(conn, &mut out, n).await, Next::Ready);
        out
    }

    #[tokio::test]
    async fn packet_ids_are_kept_through_redelivery_and_free_only_when_the_flow_ends() {
        let outbox = outbox();
        outbox.attach(1);
        outbox.push(queued(&outbox, 1, QoS::ExactlyOnce));
        outbox.push(queued(&outbox, 2, QoS::AtLeastOnce));
        let sent: Vec<_> = take(&outbox, 1, 2).await.iter().map(|d| d.packet_id).collect();
        assert_eq!(sent, [NonZeroU16::new(1), NonZeroU16::new(2)]);

        // A new connection gets both again, DUP, under the same ids.
        outbox.attach(2);
        let again = take(&outbox, 2, 2).await;
        assert!(again.iter().all(|d| d.dup));
        assert_eq!(again.iter().map(|d| d.packet_id).collect::<Vec<_>>(), sent);

        // PUBREC keeps id 1 taken until PUBCOMP; PUBACK frees id 2.
        outbox.outgoing_qos2_received(1, 1);
        outbox.ack(2);
        outbox.lock().last_id = 0;
        assert_eq!(outbox.reserve_packet_id(), NonZeroU16::new(2));
        assert_eq!(outbox.reserve_packet_id(), NonZeroU16::new(3));
        outbox.outgoing_qos2_completed(1);
        outbox.lock().last_id = 0;
        assert_eq!(outbox.reserve_packet_id(), NonZeroU16::new(1));
    }

    #[tokio::test]
    async fn a_held_delivery_and_those_behind_it_wait_for_its_commit() {
        let outbox = outbox();
        outbox.attach(1);
        outbox.push(queued(&outbox, 1, QoS::AtLeastOnce));
        outbox.push_held(queued(&outbox, 2, QoS::ExactlyOnce));
        let seqs = |ds: Vec<Delivery>| ds.iter().map(|d| d.seq).collect::<Vec<_>>();
        assert_eq!(seqs(take(&outbox, 1, 10).await), [1]);
        outbox.push(queued(&outbox, 3, QoS::AtMostOnce));

        // Nothing more until the release, then the rest in order.
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { seqs(take(&outbox, 1, 10).await) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a held delivery went out");
        outbox.release_held(2, true);
        assert_eq!(waiting.await.unwrap(), [2, 3]);

        // A failed commit drops the held delivery and frees its id.
        let held = queued(&outbox, 4, QoS::ExactlyOnce);
        let id = held.packet_id.unwrap();
        outbox.push_held(held);
        outbox.push(queued(&outbox, 5, QoS::AtLeastOnce));
        outbox.release_held(4, false);
        assert_eq!(seqs(take(&outbox, 1, 10).await), [5]);
        assert!(!outbox.lock().ids.contains(&id.get()));
    }

    #[tokio::test]
    async fn an_absent_or_stalled_consumer_gets_the_overflow_policy_not_backpressure() {
        let outbox = outbox();
        for seq in 1..=3 {
            outbox.push(delivery(seq, QoS::AtLeastOnce));
        }
        assert_eq!(outbox.len(), 2, "offline: the oldest was dropped");
        outbox.room().await;

        outbox.attach(1);
        outbox.lock().last_pull = Instant::now() - STALLED_AFTER;
        assert_eq!(outbox.push(delivery(4, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(outbox.len(), 2, "stalled: the oldest was dropped");
        outbox.room().await;
    }

    /// A QoS 1 delivery to "a/b" (3 bytes of topic) with `len` bytes of payload.
    fn big(outbox: &Outbox, seq: u64, len: usize) -> Delivery {
        let mut d = queued(outbox, seq, QoS::AtLeastOnce);
        let msg = Message::new(d.msg.topic.clone(), Bytes::from(vec![b'm'; len]), d.qos, true);
        d.msg = Arc::new(msg);
        d
    }

    #[tokio::test]
    async fn the_byte_bound_drops_the_oldest_until_the_new_one_fits_and_frees_their_ids() {
        let stats = Arc::new(Stats::default());
        let writer = Kept::shared();
        // Plenty of room in messages; 1,000 bytes.
        let outbox = Outbox::new(ClientId::new("c"), 100, OverflowPolicy::default(), stats, writer)
            .with_max_bytes(1000);
        outbox.attach(1);
        for seq in 1..=3 {
            assert_eq!(outbox.push(big(&outbox, seq, 297)), Pushed::Queued);
        }
        assert_eq!(outbox.lock().queue.bytes, 900);
        // 600 more: the two oldest go, even for a live consumer.
        assert_eq!(outbox.push(big(&outbox, 4, 597)), Pushed::Queued);
        assert_eq!(outbox.lock().queue.bytes, 900);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.stats.publish_dropped_qos1.load(Relaxed), 2);
        // Their packet ids (1 and 2) are free again; 3 and 4 are not.
        assert_eq!(outbox.lock().ids.iter().copied().collect::<BTreeSet<_>>(), [3, 4].into());
        // Larger than the whole bound: refused, its id given back.
        assert_eq!(outbox.push(big(&outbox, 5, 2000)), Pushed::Dropped);
        assert_eq!(outbox.stats.publish_dropped_qos1.load(Relaxed), 3);
        assert_eq!(outbox.lock().ids.len(), 2);
        let sent = take(&outbox, 1, 10).await;
        assert_eq!(sent.iter().map(|d| d.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(outbox.lock().queue.bytes, 0);

        // drop_new refuses the newcomer and keeps what is queued.
        let outbox = Outbox { policy: OverflowPolicy::DropNew, ..outbox };
        outbox.push(big(&outbox, 6, 797));
        assert_eq!(outbox.push(big(&outbox, 7, 297)), Pushed::Dropped);
        assert_eq!(outbox.lock().queue.bytes, 800);
    }
}
