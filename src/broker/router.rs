//! The router: the single owner of sessions, subscriptions and retained
//! messages. It runs as one task and handles commands in arrival order, so
//! no broker state needs a lock; it never blocks (store writes are queued to
//! the batching writer, deliveries pushed to bounded outboxes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use ntex::util::ByteString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::groups::{self, GroupKey, MAX_HOPS, Members, Picks};
use super::inbox::{InboxReceiver, inbox};
use super::journal::{Journal, Replay};
use super::outbox::{ConnectionId, KickReason, Outbox, Pushed};
use super::ports::{
    self, Claim, CommitReceipt, SharedDurability, SharedFabric, SharedOwnership, SharedPeers,
};
use super::retained::RetainedStore;
use super::session::Session;
use super::trie::{Entry, Removed, SubscriptionTrie};
use super::{
    Adoption, BrokerHandle, BrokerLimits, Command, ConnectError, ConnectOutcome, ConnectRequest,
    DisconnectKind, Handover, Inspection, Promised, PublishError, PublishHook, PublishOutcome,
    PublishReply, Release, Releasing, Revocation, SharedAuthenticator, Stats, SubscribeError,
    SubscribeRequest, sys,
};
use crate::domain::{ClientId, SharedFilter, TopicFilter};
use crate::domain::{
    Delivery, Identity, Message, Principal, QoS, RestoredState, RetainHandling, SEQ_BLOCK_BITS,
    StoredSession, SubscriptionOptions,
};
use crate::domain::{StoreError, WriteOp};

/// Commands queued to the router before publishers are asked to wait.
const COMMAND_QUEUE: usize = 16 * 1024;
/// ... and up to this many bytes of messages.
const COMMAND_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Remote publishes kept for [`Router::queue_missed`]: more than arrive
/// while a takeover's claim completes.
const RECENT_REMOTE: usize = 16 * 1024;
/// Commands handled per wake-up before timers get a look.
const BATCH: usize = 1024;
/// How long a claim another instance announced keeps refusing older ones
/// here: longer than a claim takes to reach the router.
const FENCE_TTL: Duration = Duration::from_secs(120);
/// Announced claims remembered at most (each a client id and two numbers).
const MAX_FENCES: usize = 100_000;
/// How often this instance's shared-group members are passed on to the
/// other instances, when they changed.
const GROUPS_EVERY: Duration = Duration::from_millis(100);
/// How often the tables sized by the fleet are looked at for room left
/// over from a peak (see [`Router::compact`]).
const COMPACT_EVERY: Duration = Duration::from_secs(2);
/// A table keeps up to this many times its entries in capacity (and at
/// least [`COMPACT_MIN_CAPACITY`] slots) before it is shrunk.
const COMPACT_SLACK: usize = 4;
const COMPACT_MIN_CAPACITY: usize = 1024;
/// Cursors of the instance choice kept at most; past it they restart.
const MAX_NODE_CURSORS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Publish the will of the session if it is still detached from `epoch`.
    Will(ClientId, ConnectionId),
    /// End the session if it is still detached from `epoch`.
    Expire(ClientId, ConnectionId),
}

/// Which of a session's timers: each session has at most one of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TimerKind {
    Will,
    Expire,
}

impl Timer {
    fn slot(&self) -> (TimerKind, ClientId) {
        match self {
            Timer::Will(client, _) => (TimerKind::Will, client.clone()),
            Timer::Expire(client, _) => (TimerKind::Expire, client.clone()),
        }
    }
}

struct Router {
    limits: Arc<BrokerLimits>,
    stats: Arc<Stats>,
    writer: SharedDurability,
    sessions: HashMap<ClientId, Session>,
    /// Sessions with a live connection (`$SYS/broker/clients/connected`).
    online: usize,
    trie: SubscriptionTrie,
    retained: RetainedStore,
    /// Round-robin cursors of shared groups, keyed by (group, filter).
    share_cursor: HashMap<(ByteString, TopicFilter), usize>,
    timers: BTreeMap<(Instant, u64), Timer>,
    /// Where each session's pending timer of each kind sits in `timers`, so
    /// a reconnect or a newer timer removes the old one instead of leaving
    /// it to fire stale: a car reconnecting every 30 s keeps two timers at
    /// most, not one per reconnect until its expiry.
    timer_slots: HashMap<(TimerKind, ClientId), (Instant, u64)>,
    timer_seq: u64,
    /// Delivery numbers (one per queued delivery and per message's mark).
    numbers: DeliveryNumbers,
    next_conn: Arc<AtomicU64>,
    /// Scratch buffer reused for every publish (no per-message allocation).
    scratch: Vec<Target>,
    push_scratch: Vec<(Arc<Outbox>, Delivery)>,
    /// The handle's publish hook, for wills: the router publishes them itself.
    /// Recent publishes, for SSE streams that resume.
    journal: Journal,
    /// Set when other instances share the work: where local publishes go
    /// to reach them.
    fabric: Option<SharedFabric>,
    hook: Option<Arc<dyn PublishHook>>,
    /// For checking a resumed session's subscriptions against its owner's
    /// current rights.
    auth: SharedAuthenticator,
    /// Set when several instances share the work: sessions move between
    /// them, and delivery numbers come from reserved blocks.
    ownership: Option<SharedOwnership>,
    /// Claims other instances made of client ids this one holds no
    /// session of, and when they were announced: a connect claimed
    /// earlier that reaches the router later is refused.
    fences: HashMap<ClientId, (u64, Instant)>,
    /// Set when several instances share the work: the others' members of
    /// shared groups, and where this one's go.
    peers: Option<SharedPeers>,
    /// Round-robin cursors of the instance choice, keyed by (group, filter).
    node_cursor: HashMap<GroupKey, u64>,
    /// Members of a shared group came, went, connected or disconnected.
    groups_dirty: bool,
    /// The instances chosen for the publish being routed.
    picked: Vec<(ByteString, TopicFilter, Arc<str>)>,
    /// Groups the routed remote publish chose this instance for and that
    /// have no member here (any more).
    orphans: Vec<GroupKey>,
    /// Sessions just taken over that were given the fabric's entries up to
    /// a point this router has not passed yet (see [`Self::queue_missed`]):
    /// those are not routed to them again. Dropped once passed.
    replayed: HashMap<ClientId, crate::domain::FabricPos>,
    /// The fabric entry of the last remote publish routed, and the latest
    /// ones: a session taken from a dead instance gets those passed after
    /// its missed publishes were read (see [`Self::queue_missed`]).
    last_remote: Option<crate::domain::FabricPos>,
    recent_remote: std::collections::VecDeque<(crate::domain::FabricPos, Arc<Message>)>,
    /// The latest acknowledged publishes routed here for the other
    /// instances, by outbox number: a session taken from a dead instance
    /// gets those appended after its missed publishes were read (see
    /// [`Self::queue_own_missed`]).
    recent_own: std::collections::VecDeque<(u64, Arc<Message>)>,
}

/// One session a publish goes to, after merging overlapping subscriptions.
struct Target {
    client: ClientId,
    qos: QoS,
    retain_as_published: bool,
    subscription_ids: Vec<u32>,
}

/// Start the router on the current tokio runtime. `hook` sees every publish
/// made through the returned handle (and its clones) before it is routed.
#[allow(clippy::too_many_arguments, reason = "the core's settings and ports, each its own")]
pub fn spawn_router(
    limits: BrokerLimits,
    auth: SharedAuthenticator,
    writer: SharedDurability,
    restored: RestoredState,
    sys_interval: Duration,
    hook: Option<Arc<dyn PublishHook>>,
    fabric: Option<SharedFabric>,
    ownership: Option<SharedOwnership>,
    peers: Option<SharedPeers>,
) -> (BrokerHandle, JoinHandle<()>) {
    let (inbox, rx) = inbox(COMMAND_QUEUE, COMMAND_QUEUE_BYTES);
    let stats = Arc::new(Stats::default());
    let limits = Arc::new(limits);
    let next_conn = Arc::new(AtomicU64::new(1));
    let mut router = Router::new(limits.clone(), auth.clone(), writer, hook.clone());
    router.stats = stats.clone();
    router.next_conn = next_conn.clone();
    router.numbers.next = restored.next_seq.max(1);
    if ownership.is_some() {
        // Restored numbers start a reserved block.
        router.numbers.start_block(router.numbers.next);
    }
    router.fabric = fabric;
    router.ownership = ownership.clone();
    router.groups_dirty = peers.is_some();
    router.peers = peers;
    router.restore(restored);
    let parts = super::HandleParts { inbox, stats, limits, auth, next_conn, hook, ownership };
    let handle = BrokerHandle(Arc::new(parts));
    let sys_handle = handle.clone();
    let task = tokio::spawn(router.run(rx, sys_handle, sys_interval));
    (handle, task)
}

impl Router {
    /// An empty router, before its state is restored.
    fn new(
        limits: Arc<BrokerLimits>,
        auth: SharedAuthenticator,
        writer: SharedDurability,
        hook: Option<Arc<dyn PublishHook>>,
    ) -> Self {
        let journal = Journal::new(limits.replay_messages);
        Router {
            limits,
            stats: Arc::new(Stats::default()),
            writer,
            sessions: HashMap::new(),
            trie: SubscriptionTrie::default(),
            retained: RetainedStore::default(),
            share_cursor: HashMap::new(),
            timers: BTreeMap::new(),
            timer_slots: HashMap::new(),
            timer_seq: 0,
            numbers: DeliveryNumbers::default(),
            next_conn: Arc::new(AtomicU64::new(1)),
            scratch: Vec::new(),
            push_scratch: Vec::new(),
            online: 0,
            journal,
            hook,
            fabric: None,
            auth,
            ownership: None,
            fences: HashMap::new(),
            peers: None,
            node_cursor: HashMap::new(),
            groups_dirty: false,
            picked: Vec::new(),
            orphans: Vec::new(),
            replayed: HashMap::new(),
            last_remote: None,
            recent_remote: std::collections::VecDeque::new(),
            recent_own: std::collections::VecDeque::new(),
        }
    }

    fn restore(&mut self, restored: RestoredState) {
        let now = Instant::now();
        for msg in restored.retained {
            if !msg.is_expired(now) {
                self.retained.insert(Arc::new(msg));
            }
        }
        self.stats.retained_count.store(self.retained.len() as u64, Relaxed);
        for stored in restored.sessions {
            self.restore_session(stored, 0);
        }
        self.stats.subscriptions.store(self.trie.len() as u64, Relaxed);
    }

    /// Hold `stored` again, offline, under claim epoch `claim`.
    fn restore_session(&mut self, stored: StoredSession, claim: u64) {
        let now_wall = SystemTime::now();
        let now = Instant::now();
        let client = stored.client_id.clone();
        let epoch = self.next_conn.fetch_add(1, Relaxed);
        // Sessions stored as never expiring get the current cap too.
        let expiry_secs = if stored.expiry_secs == u32::MAX {
            self.limits.grant_expiry(u32::MAX)
        } else {
            stored.expiry_secs
        };
        let outbox = Arc::new(self.new_outbox(&client));
        for d in stored.messages {
            outbox.restore(d);
        }
        outbox.restore_qos2(&stored.incoming_qos2, &stored.pending_releases);
        let mut session = Session {
            owner: stored.owner,
            token: None,
            outbox,
            conn: None,
            epoch,
            claim,
            protocol: super::ProtocolVersion::V5,
            expiry_secs,
            subscriptions: HashMap::new(),
            will: None,
        };
        for (filter, options) in stored.subscriptions {
            self.trie.insert(&filter.filter, entry(&client, &filter, options));
            session.subscriptions.insert(filter, options);
        }
        // Time spent down counts against the expiry; a session that
        // expired meanwhile ends at the first timer tick.
        if expiry_secs != u32::MAX {
            let gone = stored
                .disconnected_at
                .and_then(|t| now_wall.duration_since(t).ok())
                .unwrap_or_default();
            let left = Duration::from_secs(expiry_secs as u64).saturating_sub(gone);
            self.schedule(now + left, Timer::Expire(client.clone(), epoch));
        }
        self.sessions.insert(client, session);
        self.stats.subscriptions.store(self.trie.len() as u64, Relaxed);
    }

    fn new_outbox(&self, client: &ClientId) -> Outbox {
        Outbox::new(
            client.clone(),
            self.limits.max_queued_messages,
            self.limits.queue_overflow,
            self.stats.clone(),
            self.writer.clone(),
        )
        .with_headroom(
            self.limits.max_queued_messages.max(usize::from(self.limits.receive_maximum)),
        )
        .with_max_bytes(self.limits.max_queued_bytes)
    }

    async fn run(mut self, mut rx: InboxReceiver, handle: BrokerHandle, sys_interval: Duration) {
        // The router holds a handle only to publish $SYS; drop it so the
        // channel closes when every other handle is gone.
        drop(handle);
        let mut sys_tick = tokio::time::interval(sys_interval.max(Duration::from_secs(1)));
        sys_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut groups_tick = tokio::time::interval(GROUPS_EVERY);
        groups_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut compact_tick = tokio::time::interval(COMPACT_EVERY);
        compact_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let deadline = self.timers.first_key_value().map(|((at, _), _)| *at);
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.handle(cmd) {
                        break;
                    }
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Some(cmd) => if self.handle(cmd) { return },
                            None => break,
                        }
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.fire_timers(),
                _ = sys_tick.tick() => self.publish_sys(),
                _ = groups_tick.tick(), if self.groups_dirty => self.tell_groups(),
                _ = compact_tick.tick() => self.compact(),
            }
        }
        tracing::debug!("router stopped");
    }

    /// Handle one command; `true` means stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Connect(req, claim, reply) => {
                let outcome = self.connect(req, claim.map(|c| *c));
                let _ = reply.send(outcome);
            }
            Command::Release { client, epoch, reply } => {
                let _ = reply.send(self.release(&client, epoch));
            }
            Command::Disconnect { client_id, conn, kind, session_expiry_secs } => {
                self.disconnect(&client_id, conn, kind, session_expiry_secs)
            }
            Command::Subscribe { client_id, conn, subs, reply } => {
                let _ = reply.send(self.subscribe(&client_id, conn, subs));
            }
            Command::Unsubscribe { client_id, conn, filters, reply } => {
                let _ = reply.send(self.unsubscribe(&client_id, conn, filters));
            }
            Command::Publish { msg, ops, reply } => {
                let result = self.publish(Arc::new(msg), ops, reply.is_some());
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Remote(msg, picks, at) => {
                // Best effort, as for a will: nobody waits here (the
                // publisher had its answer on its own instance). The cursor
                // goes in the same submission as the queued copies, so it
                // never says more is committed than is.
                let cursor = at.and_then(|at| self.fabric.as_ref()?.cursor(at));
                let ops = cursor.into_iter().collect();
                let msg = Arc::new(msg);
                if let Some(at) = at {
                    self.last_remote = Some(at);
                    if !self.replayed.is_empty() {
                        self.replayed.retain(|_, through| *through >= at);
                    }
                    if self.recent_remote.len() >= RECENT_REMOTE {
                        self.recent_remote.pop_front();
                    }
                    self.recent_remote.push_back((at, msg.clone()));
                }
                let origin = Origin::Remote(picks.as_deref(), at);
                let _ = self.publish_from(msg.clone(), ops, false, origin);
                if !self.orphans.is_empty() {
                    self.pass_on(msg, picks.map_or(0, |p| p.hops));
                }
            }
            Command::Replay { after, filters, reply } => {
                let missed = self.journal.since(after, &filters);
                let horizon = self.numbers.next;
                let _ = reply.send(missed.map(|messages| Replay { horizon, messages }));
            }
            Command::Retained { filter, reply } => {
                let _ = reply.send(self.retained.matching(&filter.filter));
            }
            Command::Revoke(what, reply) => {
                let _ = reply.send(self.revoke(&what));
            }
            Command::Adopt(adoption) => self.adopt(*adoption),
            Command::KickAll => self.kick_all(),
            Command::Shutdown(reply) => {
                self.shutdown(reply);
                return true;
            }
        }
        false
    }

    fn connect(
        &mut self,
        req: ConnectRequest,
        claim: Option<Claim>,
    ) -> Result<Promised<ConnectOutcome>, ConnectError> {
        let client = req.client_id.clone();
        let claim_epoch = match claim {
            Some(claim) => {
                let epoch = claim.epoch;
                self.take_claim(&client, claim)?;
                epoch
            }
            None => 0,
        };
        let owner = req.identity.principal();
        self.check_owner(&client, &owner, &req.identity)?;
        let conn = self.next_conn.fetch_add(1, Relaxed);
        let expiry = self.limits.grant_expiry(req.session_expiry_secs);

        // A session that ends with its connection (3.1.1 clean session, v5
        // expiry 0) ends when a takeover closes that connection: it is never
        // resumed, whatever the new CONNECT asks [MQTT-3.1.2-6].
        let resumable =
            !req.clean_start && self.sessions.get(&client).is_some_and(|s| s.is_persistent());
        if let Some(old) = self.sessions.get_mut(&client) {
            if let Some(old_conn) = old.conn.take() {
                self.online -= 1;
                if client.is_sse() {
                    self.journal.stream_closed();
                }
                tracing::info!(client.id = %client, "session taken over by a new connection");
                old.outbox.kick(old_conn, KickReason::SessionTakenOver);
            }
            // The previous connection's will: a resumed session cancels a
            // delayed will [MQTT-3.1.3-9]; an immediate one goes out now.
            if let Some(will) = old.will.take()
                && (will.delay_secs == 0 || !resumable)
            {
                self.route_will(*will);
            }
        }
        if !resumable && self.sessions.contains_key(&client) {
            self.end_session(&client);
        }
        let session_present = resumable;

        let persistent = expiry > 0;
        if !session_present {
            let outbox = Arc::new(self.new_outbox(&client));
            self.sessions.insert(
                client.clone(),
                Session {
                    owner: None,
                    token: None,
                    outbox,
                    conn: None,
                    epoch: conn,
                    claim: claim_epoch,
                    protocol: req.protocol,
                    expiry_secs: expiry,
                    subscriptions: HashMap::new(),
                    will: None,
                },
            );
        }
        if session_present {
            self.recheck_subscriptions(&client, &req.identity);
        }
        // Attached again: its will-delay and expiry timers are moot.
        self.cancel_timers(&client);
        let session = self.sessions.get_mut(&client).expect("session inserted above");
        session.claim = claim_epoch;
        let was_persistent = session.is_persistent();
        session.owner = Some(owner.clone());
        session.token = req.identity.token.clone();
        session.conn = Some(conn);
        self.online += 1;
        if client.is_sse() {
            self.journal.stream_opened();
        }
        session.epoch = conn;
        session.protocol = req.protocol;
        session.expiry_secs = expiry;
        session.will = req.will.map(Box::new);
        session.outbox.set_persistent(persistent);
        session.outbox.attach(conn);
        self.groups_dirty |= has_groups(session);
        let outbox = session.outbox.clone();
        let subs: Vec<(SharedFilter, SubscriptionOptions)> = if persistent && !was_persistent {
            session.subscriptions.iter().map(|(f, o)| (f.clone(), *o)).collect()
        } else {
            Vec::new()
        };

        // Persist the session row (and, if it just became persistent, what it
        // has) before the CONNACK says it exists.
        let mut kept = None;
        if persistent {
            let mut ops = vec![WriteOp::UpsertSession {
                client_id: client.clone(),
                owner: Some(owner),
                expiry_secs: expiry,
                disconnected_at: None,
            }];
            ops.extend(subs.into_iter().map(|(filter, options)| WriteOp::PutSubscription {
                client_id: client.clone(),
                filter: filter.to_wire(),
                options,
            }));
            kept = self.writer.submit_state_confirmed(ops);
        } else if was_persistent {
            kept = self.writer.submit_state_confirmed(vec![WriteOp::DeleteSession(client.clone())]);
        }
        self.stats.clients_connected.store(self.online as u64, Relaxed);
        let outcome = ConnectOutcome { conn, session_present, outbox, session_expiry_secs: expiry };
        Ok(Promised::new(outcome, kept))
    }

    /// The claim epoch this instance knows `client` by: the session it
    /// holds, or the latest claim another instance announced.
    fn known_claim(&self, client: &ClientId) -> Option<u64> {
        let held = self.sessions.get(client).map(|s| s.claim);
        held.max(self.fences.get(client).map(|(epoch, _)| *epoch))
    }

    /// Check `claim` is the newest this instance knows of, and hold the
    /// session another instance left, if it moved.
    fn take_claim(&mut self, client: &ClientId, claim: Claim) -> Result<(), ConnectError> {
        if self.known_claim(client).is_some_and(|known| known > claim.epoch) {
            crate::telemetry::metrics::global().cluster_superseded.fetch_add(1, Relaxed);
            tracing::info!(client.id = %client, claim.epoch = claim.epoch, "connect refused: a later connection claimed the client id");
            return Err(ConnectError::Superseded);
        }
        self.fences.remove(client);
        // Held here from now on: should this instance die, what the session
        // missed is replayed from its cursor.
        self.writer.submit_state(vec![WriteOp::ClaimHeld {
            client_id: client.clone(),
            epoch: claim.epoch,
        }]);
        let Some(moved) = claim.moved else { return Ok(()) };
        // What this instance still keeps of it is older than what the last
        // holder left in the store.
        if self.sessions.contains_key(client) {
            drop(self.hand_over(client));
        }
        let Some(stored) = moved else { return Ok(()) };
        tracing::info!(
            client.id = %client,
            claim.epoch = claim.epoch,
            queued = stored.messages.len(),
            "session moved here from another instance"
        );
        self.hold_moved(stored, claim.epoch, claim.seq_block);
        if let Some(missed) = claim.missed {
            self.queue_missed(client, missed);
        }
        Ok(())
    }

    /// Queue for `client`'s session, just taken from an instance that died
    /// or let go of it, the publishes read for it (up to `missed.through`),
    /// and those this router passed after the read, from its recent ones.
    /// Those it has yet to pass up to there are not routed to the session
    /// again.
    fn queue_missed(&mut self, client: &ClientId, missed: ports::MissedRead) {
        let here = self.last_remote;
        let mut replay = missed.messages;
        if here.is_none_or(|here| here < missed.through) {
            self.replayed.insert(client.clone(), missed.through);
        }
        if let Some(here) = here
            && here > missed.through
        {
            let oldest = self.recent_remote.front().map(|(at, _)| *at);
            if oldest.is_none_or(|o| o > missed.through)
                && self.recent_remote.len() >= RECENT_REMOTE
            {
                crate::telemetry::metrics::global().cluster_replay_gaps.fetch_add(1, Relaxed);
                tracing::warn!(client.id = %client, "publishes a previous holder missed may be lost: too many since they were read");
            }
            replay.extend(
                self.recent_remote
                    .iter()
                    .filter(|(at, _)| *at > missed.through)
                    .map(|(_, msg)| msg.clone()),
            );
        }
        self.own_missed(client, missed.through, &mut replay);
        self.queue_replay(client, replay);
    }

    /// Add to `replay` this instance's own acknowledged publishes that were
    /// routed before `client`'s session was held here but appended to the
    /// fabric after `through`, the end of the read that looked for them.
    fn own_missed(
        &self,
        client: &ClientId,
        through: crate::domain::FabricPos,
        replay: &mut Vec<Arc<Message>>,
    ) {
        let Some(fabric) = &self.fabric else { return };
        let gap = || {
            crate::telemetry::metrics::global().cluster_replay_gaps.fetch_add(1, Relaxed);
            tracing::warn!(client.id = %client, "publishes accepted here while a dead instance's session was taken over may be lost: too many since they were read");
        };
        let Some(first) = fabric.own_after(through) else { return gap() };
        let oldest = self.recent_own.front().map(|(n, _)| *n);
        if oldest.is_some_and(|o| o > first) && self.recent_own.len() >= RECENT_REMOTE {
            gap();
        }
        let start = self.recent_own.partition_point(|(n, _)| *n < first);
        replay.extend(self.recent_own.range(start..).map(|(_, msg)| msg.clone()));
    }

    /// Hold, offline, a session another instance kept until now.
    fn hold_moved(&mut self, stored: StoredSession, claim: u64, seq_block: Option<u64>) {
        let newest = stored.messages.iter().map(|d| d.seq).max();
        if let (Some(newest), Some(block)) = (newest, seq_block)
            && newest >= self.numbers.next
            && block > newest
        {
            // Its messages were numbered in a later block than this
            // instance's: number on above them.
            self.numbers.start_block(block);
        }
        self.restore_session(stored, claim);
    }

    /// Hold the session and will of a client whose instance died: its
    /// subscriptions queue here from now on, and its will goes out when
    /// due, unless a later claim of the id got here first.
    fn adopt(&mut self, adoption: Adoption) {
        let Adoption {
            client_id: client,
            epoch,
            session,
            will,
            will_at,
            seq_block,
            mut replay,
            replayed_through,
        } = adoption;
        if self.known_claim(&client).is_some_and(|known| known >= epoch) {
            tracing::info!(client.id = %client, claim.epoch = epoch, "a dead instance's client id was claimed again meanwhile; left to that claim");
            return;
        }
        self.fences.remove(&client);
        if self.sessions.contains_key(&client) {
            drop(self.hand_over(&client));
        }
        let metrics = crate::telemetry::metrics::global();
        if let Some(stored) = session {
            tracing::info!(
                client.id = %client,
                claim.epoch = epoch,
                queued = stored.messages.len(),
                "session of a dead instance held here until its client returns"
            );
            metrics.cluster_adopted.fetch_add(1, Relaxed);
            self.writer.submit_state(vec![WriteOp::ClaimHeld { client_id: client.clone(), epoch }]);
            self.hold_moved(stored, epoch, seq_block);
            if let Some(through) = replayed_through {
                self.own_missed(&client, through, &mut replay);
            }
            self.queue_replay(&client, replay);
        }
        if let Some(message) = will {
            metrics.cluster_dead_wills.fetch_add(1, Relaxed);
            let wait = will_at.duration_since(SystemTime::now()).unwrap_or_default();
            match self.sessions.get_mut(&client) {
                // The session outlives the delay (or it ends first, and its
                // end publishes the will): wait for it, cancelled should
                // the client resume first [MQTT-3.1.3-9].
                Some(session) if !wait.is_zero() => {
                    tracing::info!(client.id = %client, delay_ms = wait.as_millis() as u64, "a dead instance's client's will is published here after its delay");
                    // A delayed will: a resume here cancels it.
                    let delay_secs = wait.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
                    session.will = Some(Box::new(super::Will { message, delay_secs }));
                    let conn = session.epoch;
                    self.schedule(Instant::now() + wait, Timer::Will(client.clone(), conn));
                }
                _ => {
                    tracing::info!(client.id = %client, topic = %message.topic, "a dead instance's client's will is published");
                    self.route_will(super::Will { message, delay_secs: 0 });
                    self.writer.submit_state(vec![WriteOp::ClearWill {
                        client_id: client.clone(),
                        epoch,
                    }]);
                }
            }
        }
        if !self.sessions.contains_key(&client) {
            // Nothing is held for it here: no claim either.
            self.writer.submit_state(vec![WriteOp::ReleaseClaim { client_id: client, epoch }]);
        }
    }

    /// Queue for the adopted session of `client` what its dead instance
    /// missed, oldest first, through its own (not shared) subscriptions.
    fn queue_replay(&mut self, client: &ClientId, replay: Vec<Arc<Message>>) {
        if replay.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        let mut pushes = Vec::new();
        let mut targets = Vec::new();
        for msg in replay {
            targets.clear();
            let publisher = msg.publisher.as_ref();
            self.trie.for_each_match(msg.topic.as_str(), |e| {
                let own = e.options.no_local && publisher == Some(&e.client);
                if e.client == *client && e.group.is_none() && !own {
                    add_target(&mut targets, &e.client, &e.options, msg.qos);
                }
            });
            merge_targets(&mut targets);
            let Some(session) = self.sessions.get(client) else { return };
            let queue_qos0 = self.limits.queue_qos0_messages;
            for t in targets.drain(..) {
                let seq = || self.numbers.take(self.ownership.as_ref());
                if let Some(d) =
                    queue_delivery(session, t, &msg, queue_qos0, &self.stats, seq, &mut ops)
                {
                    pushes.push((session.outbox.clone(), d));
                }
            }
        }
        crate::telemetry::metrics::global()
            .cluster_replayed
            .fetch_add(pushes.len() as u64, Relaxed);
        tracing::info!(client.id = %client, queued = pushes.len(), "publishes its dead instance missed queued for a taken-over session");
        let hold = pushes.iter().any(|(_, d)| held_until_stored(d));
        let stored = match self.writer.submit_durable(ops.clone()) {
            Ok(rx) => hold.then_some(rx),
            Err(_) => {
                // As for a will: stored as well as it gets, held by nothing.
                self.submit(ops);
                None
            }
        };
        let mut held = Vec::new();
        for (outbox, d) in pushes {
            if stored.is_some() && held_until_stored(&d) {
                held.push((outbox.clone(), d.seq));
                outbox.push_held(d);
            } else {
                outbox.push(d);
            }
        }
        if let Some(stored) = stored {
            release_when_stored(stored, held, false);
        }
    }

    /// The will kept with `session`'s claim is gone (published or
    /// discarded): another instance must not publish it should this one die.
    fn forget_stored_will(&self, client: &ClientId, claim: u64) {
        if claim > 0 {
            self.writer
                .submit_state(vec![WriteOp::ClearWill { client_id: client.clone(), epoch: claim }]);
        }
    }

    /// Another instance claimed `client` under `epoch`: let go of the
    /// session (its writes so far committed when the receipt resolves),
    /// unless this instance holds a newer claim.
    /// With the release, a mark on the fabric after this instance's own
    /// publishes so far (see [`Handover::own_through`]).
    fn release(&mut self, client: &ClientId, epoch: u64) -> Releasing {
        if self.known_claim(client).is_some_and(|known| known > epoch) {
            return (Release::Superseded, None, None);
        }
        if self.fences.len() >= MAX_FENCES {
            let now = Instant::now();
            self.fences.retain(|_, (_, at)| now.duration_since(*at) < FENCE_TTL);
        }
        if self.fences.len() < MAX_FENCES {
            self.fences.insert(client.clone(), (epoch, Instant::now()));
        }
        if !self.sessions.contains_key(client) {
            return (Release::Released(None), None, None);
        }
        tracing::info!(client.id = %client, claim.epoch = epoch, "session taken over by another instance");
        // A session taken over here moments ago was given entries this
        // router has not passed yet: those are routed to it too.
        let through = self.last_remote.max(self.replayed.get(client).copied());
        let routed = Handover { through, own_through: None };
        let own = self.fabric.as_ref().and_then(|f| f.mark());
        (Release::Released(Some(routed)), self.hand_over(client), own)
    }

    /// Forget a session another instance takes over, closing its
    /// connection; the store keeps it for them. The receipt resolves once
    /// every write queued for it so far is committed.
    fn hand_over(&mut self, client: &ClientId) -> Option<CommitReceipt> {
        let mut session = self.sessions.remove(client)?;
        self.replayed.remove(client);
        self.cancel_timers(client);
        let was_connected = session.conn.is_some();
        self.groups_dirty |= has_groups(&session);
        if let Some(conn) = session.conn.take() {
            self.online -= 1;
            self.stats.clients_connected.store(self.online as u64, Relaxed);
            session.outbox.kick(conn, KickReason::SessionTakenOver);
        }
        for filter in session.subscriptions.keys() {
            remove_subscription(&mut self.trie, &mut self.share_cursor, client, filter);
        }
        self.stats.subscriptions.store(self.trie.len() as u64, Relaxed);
        // As for a takeover here: an immediate will goes out; a delayed one
        // is cancelled by the session being resumed [MQTT-3.1.3-9].
        if let Some(will) = session.will.take()
            && was_connected
            && will.delay_secs == 0
        {
            self.route_will(*will);
        }
        let receipt = session.is_persistent().then(|| {
            // Writes commit in submission order: this one commits after
            // every earlier write for the session.
            let op = WriteOp::UpsertSession {
                client_id: client.clone(),
                owner: session.owner.clone(),
                expiry_secs: session.expiry_secs,
                disconnected_at: Some(SystemTime::now()),
            };
            self.writer
                .submit_durable(vec![op.clone()])
                .map_err(|_| self.writer.submit_state(vec![op]))
        });
        // Its pump may still be at work: it stores nothing more for it.
        session.outbox.set_persistent(false);
        receipt.and_then(Result::ok)
    }

    /// Close the connections `what` covers; a deleted principal's sessions
    /// end too, without their wills (they would speak for someone gone). A
    /// kicked connection ends as any other (its DISCONNECT report settles a
    /// session that lives on).
    fn revoke(&mut self, what: &Revocation) -> usize {
        let covered: Vec<ClientId> = self
            .sessions
            .iter()
            .filter(|(_, s)| match what {
                Revocation::Principal(p) => s.owner.as_ref() == Some(p),
                Revocation::Token(t) => s.conn.is_some() && s.token.as_ref() == Some(t),
            })
            .map(|(client, _)| client.clone())
            .collect();
        let mut closed = 0;
        for client in covered {
            let session = self.sessions.get_mut(&client).expect("listed above");
            if let Some(conn) = session.conn {
                session.outbox.kick(conn, KickReason::Revoked);
                closed += 1;
                tracing::info!(client.id = %client, "connection closed: its credentials were revoked");
            }
            if matches!(what, Revocation::Principal(_)) {
                session.will = None;
                self.end_session(&client);
            }
        }
        closed
    }

    /// A session is resumed or replaced only by its owner; an admin too when
    /// `broker.admin_session_takeover` is on.
    fn check_owner(
        &self,
        client: &ClientId,
        owner: &Principal,
        identity: &Identity,
    ) -> Result<(), ConnectError> {
        let Some(existing) = self.sessions.get(client) else { return Ok(()) };
        match &existing.owner {
            Some(current) if current == owner => Ok(()),
            Some(current) if identity.is_admin() && self.limits.admin_session_takeover => {
                tracing::warn!(
                    client.id = %client,
                    session.owner_kind = current.kind(),
                    "an admin took over a session of another identity"
                );
                Ok(())
            }
            Some(current) => {
                self.stats.refused_session_owner.fetch_add(1, Relaxed);
                tracing::warn!(
                    client.id = %client,
                    session.owner_kind = current.kind(),
                    session.claimant_kind = owner.kind(),
                    "connect refused: the client id's session belongs to another identity"
                );
                Err(ConnectError::NotOwner)
            }
            None => {
                tracing::warn!(
                    client.id = %client,
                    session.claimant_kind = owner.kind(),
                    "a session stored without an owner is claimed by the first to connect"
                );
                Ok(())
            }
        }
    }

    /// Drop the subscriptions of a resumed session that its owner may no
    /// longer hold (a device deleted, an ACL rule removed, a role changed),
    /// and the queued messages on topics it may no longer read.
    fn recheck_subscriptions(&mut self, client: &ClientId, identity: &Identity) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        let limits = self.limits.topic_limits();
        let dropped = session.outbox.retain(|d| {
            TopicFilter::parse(d.msg.topic.as_bytestring().clone(), limits)
                .is_ok_and(|topic| self.auth.can_subscribe(identity, client, &topic))
        });
        if dropped > 0 {
            tracing::warn!(
                client.id = %client,
                dropped,
                "queued messages the resumed session may no longer read were dropped"
            );
        }
        let refused: Vec<SharedFilter> = session
            .subscriptions
            .keys()
            .filter(|f| !self.auth.can_subscribe(identity, client, &f.filter))
            .cloned()
            .collect();
        let mut ops = Vec::new();
        for filter in refused {
            session.subscriptions.remove(&filter);
            remove_subscription(&mut self.trie, &mut self.share_cursor, client, &filter);
            tracing::warn!(
                client.id = %client,
                mqtt.filter = %filter.to_wire(),
                "a resumed subscription is no longer allowed; dropped"
            );
            if session.is_persistent() {
                ops.push(WriteOp::DeleteSubscription {
                    client_id: client.clone(),
                    filter: filter.to_wire(),
                });
            }
        }
        self.stats.subscriptions.store(self.trie.len() as u64, Relaxed);
        if !ops.is_empty() {
            self.writer.submit_state(ops);
        }
    }

    fn disconnect(
        &mut self,
        client: &ClientId,
        conn: ConnectionId,
        kind: DisconnectKind,
        expiry_override: Option<u32>,
    ) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        if session.conn != Some(conn) {
            // A connection that was taken over; the session belongs to another.
            return;
        }
        session.conn = None;
        self.online -= 1;
        self.groups_dirty |= has_groups(session);
        if client.is_sse() {
            self.journal.stream_closed();
        }
        session.epoch = conn;
        session.outbox.detach(conn);
        if let Some(e) = expiry_override {
            session.expiry_secs = e.min(self.limits.max_session_expiry_secs);
        }
        let expiry = session.expiry_secs;
        let claim = session.claim;
        let will = session.will.take();
        let will = match kind {
            DisconnectKind::Clean => {
                if will.is_some() {
                    self.forget_stored_will(client, claim);
                }
                None
            }
            DisconnectKind::CleanWithWill | DisconnectKind::Unclean => will,
        };
        self.stats.clients_connected.store(self.online as u64, Relaxed);

        if let Some(will) = will {
            if will.delay_secs == 0 || expiry == 0 {
                self.route_will(*will);
                self.forget_stored_will(client, claim);
            } else {
                let delay = will.delay_secs.min(expiry);
                let at = Instant::now() + Duration::from_secs(delay as u64);
                self.sessions.get_mut(client).expect("exists").will = Some(will);
                self.schedule(at, Timer::Will(client.clone(), conn));
            }
        }
        if expiry == 0 {
            self.end_session(client);
        } else {
            let owner = self.sessions.get(client).and_then(|s| s.owner.clone());
            self.writer.submit_state(vec![WriteOp::UpsertSession {
                client_id: client.clone(),
                owner,
                expiry_secs: expiry,
                disconnected_at: Some(SystemTime::now()),
            }]);
            if expiry != u32::MAX {
                let at = Instant::now() + Duration::from_secs(expiry as u64);
                self.schedule(at, Timer::Expire(client.clone(), conn));
            }
        }
    }

    /// Remove a session and everything it owns, in memory and in the store.
    fn end_session(&mut self, client: &ClientId) {
        let Some(mut session) = self.sessions.remove(client) else { return };
        self.replayed.remove(client);
        self.cancel_timers(client);
        self.groups_dirty |= has_groups(&session);
        if session.conn.is_some() {
            self.online -= 1;
            if client.is_sse() {
                self.journal.stream_closed();
            }
            self.stats.clients_connected.store(self.online as u64, Relaxed);
        }
        for filter in session.subscriptions.keys() {
            remove_subscription(&mut self.trie, &mut self.share_cursor, client, filter);
        }
        self.stats.subscriptions.store(self.trie.len() as u64, Relaxed);
        if let Some(will) = session.will.take() {
            self.route_will(*will);
        }
        // Its pump or handlers may still be at work: from now on they
        // store nothing for it (see `Outbox::set_persistent`).
        session.outbox.set_persistent(false);
        let mut ops = Vec::new();
        if session.is_persistent() {
            ops.push(WriteOp::DeleteSession(client.clone()));
        }
        // Several instances: nobody holds it now (claims grow with every
        // client id otherwise).
        if session.claim > 0 {
            ops.push(WriteOp::ReleaseClaim { client_id: client.clone(), epoch: session.claim });
        }
        if !ops.is_empty() {
            self.writer.submit_state(ops);
        }
    }

    fn subscribe(
        &mut self,
        client: &ClientId,
        conn: ConnectionId,
        subs: Vec<SubscribeRequest>,
    ) -> Promised<Vec<Result<QoS, SubscribeError>>> {
        let Some(session) = self.sessions.get_mut(client).filter(|s| s.conn == Some(conn)) else {
            return Promised::new(vec![Err(SubscribeError::NoSession); subs.len()], None);
        };
        let mut results = Vec::with_capacity(subs.len());
        let mut ops = Vec::new();
        let mut to_send: Vec<(Arc<Message>, SubscriptionOptions)> = Vec::new();
        let persistent = session.is_persistent();
        for req in subs {
            let existed = session.subscriptions.contains_key(&req.filter);
            if !existed && session.subscriptions.len() >= self.limits.max_subscriptions_per_client {
                tracing::warn!(client.id = %client, filter = %req.filter.to_wire(), "subscription quota exceeded");
                results.push(Err(SubscribeError::QuotaExceeded));
                continue;
            }
            let options = req.options;
            self.groups_dirty |= req.filter.group.is_some();
            session.subscriptions.insert(req.filter.clone(), options);
            self.trie.insert(&req.filter.filter, entry(client, &req.filter, options));
            if persistent {
                ops.push(WriteOp::PutSubscription {
                    client_id: client.clone(),
                    filter: req.filter.to_wire(),
                    options,
                });
            }
            // Retained messages are not sent for shared subscriptions [MQTT-4.8.2-6 note].
            let send_retained = req.filter.group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for msg in self.retained.matching(&req.filter.filter) {
                    to_send.push((msg, options));
                }
            }
            results.push(Ok(options.qos));
        }
        self.stats.subscriptions.store(self.trie.len() as u64, Relaxed);
        let kept = (!ops.is_empty()).then(|| self.writer.submit_state_confirmed(ops)).flatten();
        let outbox = self.sessions[client].outbox.clone();
        for (msg, options) in to_send {
            let qos = msg.qos.min(options.qos);
            let packet_id = match qos {
                QoS::AtMostOnce => None,
                _ => match outbox.reserve_packet_id() {
                    Some(id) => Some(id),
                    None => {
                        self.stats.dropped_queue_full(qos);
                        continue;
                    }
                },
            };
            let stored = qos != QoS::AtMostOnce && persistent;
            let d = Delivery {
                seq: self.next_seq(),
                qos,
                retain: true,
                subscription_ids: options.subscription_id.into_iter().collect(),
                dup: false,
                packet_id,
                stored,
                msg,
            };
            if !stored {
                // Retained messages on subscribe: no publisher to slow down.
                let _ = outbox.push(d);
                continue;
            }
            let op = WriteOp::EnqueueMessage { client_id: client.clone(), delivery: d.clone() };
            if held_until_stored(&d)
                && let Ok(committed) = self.writer.submit_durable(vec![op.clone()])
            {
                let seq = d.seq;
                let _ = outbox.push_held(d);
                release_when_stored(committed, vec![(outbox.clone(), seq)], false);
            } else {
                self.submit(vec![op]);
                let _ = outbox.push(d);
            }
        }
        Promised::new(results, kept)
    }

    fn unsubscribe(
        &mut self,
        client: &ClientId,
        conn: ConnectionId,
        filters: Vec<ByteString>,
    ) -> Promised<Vec<bool>> {
        let limits = self.limits.topic_limits();
        let Some(session) = self.sessions.get_mut(client).filter(|s| s.conn == Some(conn)) else {
            return Promised::new(vec![false; filters.len()], None);
        };
        let mut ops = Vec::new();
        let results = filters
            .into_iter()
            .map(|raw| {
                let Ok(filter) = SharedFilter::parse(raw, limits) else { return false };
                let existed = session.subscriptions.remove(&filter).is_some();
                if existed {
                    self.groups_dirty |= filter.group.is_some();
                    remove_subscription(&mut self.trie, &mut self.share_cursor, client, &filter);
                    if session.is_persistent() {
                        ops.push(WriteOp::DeleteSubscription {
                            client_id: client.clone(),
                            filter: filter.to_wire(),
                        });
                    }
                }
                existed
            })
            .collect();
        self.stats.subscriptions.store(self.trie.len() as u64, Relaxed);
        let kept = (!ops.is_empty()).then(|| self.writer.submit_state_confirmed(ops)).flatten();
        Promised::new(results, kept)
    }

    /// Route `msg`; `ops` are extra writes (from the publish hook) committed
    /// in the same batch as the retained and queued copies.
    fn publish(
        &mut self,
        msg: Arc<Message>,
        ops: Vec<WriteOp>,
        wants_reply: bool,
    ) -> Result<PublishReply, PublishError> {
        self.publish_from(msg, ops, wants_reply, Origin::Local)
    }

    fn publish_from(
        &mut self,
        msg: Arc<Message>,
        mut ops: Vec<WriteOp>,
        wants_reply: bool,
        origin: Origin<'_>,
    ) -> Result<PublishReply, PublishError> {
        // `$SYS` topics are the broker's own and never stored, nor is the
        // map (`map/...`): the updater rebuilds and republishes it at start,
        // so writing multi-MB snapshots on every tick would buy nothing. The
        // retained value changes only once the write is queued: a refused
        // publish changes nothing.
        // A remote message's retained copy was stored by its own instance.
        let stored_retained = msg.retain && !msg.topic.is_server_owned() && origin == Origin::Local;
        if stored_retained && self.retained.would_change(&msg) {
            ops.push(if msg.payload.is_empty() {
                WriteOp::DeleteRetained(msg.topic.as_bytestring().clone())
            } else {
                WriteOp::UpsertRetained(msg.clone())
            });
        }

        let matched = self.collect_targets(&msg, origin);
        // The message's mark: below its deliveries' numbers, above earlier ones.
        let mark = self.next_seq();
        let queue_qos0 = self.limits.queue_qos0_messages;
        let mut targets = std::mem::take(&mut self.scratch);
        let mut pushes = std::mem::take(&mut self.push_scratch);
        for t in targets.drain(..) {
            let Some(session) = self.sessions.get(&t.client) else { continue };
            let seq = || self.numbers.take(self.ownership.as_ref());
            if let Some(d) =
                queue_delivery(session, t, &msg, queue_qos0, &self.stats, seq, &mut ops)
            {
                pushes.push((session.outbox.clone(), d));
            }
        }
        self.scratch = targets;

        // An acknowledged publish is kept for the other instances in its own
        // commit: acknowledged means it reaches them, even if this instance
        // dies before the fabric takes it.
        let shares = origin == Origin::Local && !msg.topic.is_server_owned();
        let picks = (shares && self.peers.is_some())
            .then(|| Arc::new(Picks { groups: std::mem::take(&mut self.picked), hops: 0 }));
        let outbox = match &self.fabric {
            Some(fabric) if shares && wants_reply && msg.qos != QoS::AtMostOnce => {
                fabric.outbox(&msg, picks.as_deref()).map(|(n, op)| {
                    ops.push(op);
                    n
                })
            }
            _ => None,
        };
        // Writes go to the writer before the deliveries reach the pumps, so a
        // fast PUBACK's delete can never overtake the insert it deletes.
        let hold = pushes.iter().any(|(_, d)| held_until_stored(d));
        let mut commit = if ops.is_empty() {
            None
        } else if wants_reply && msg.qos != QoS::AtMostOnce {
            match self.writer.submit_durable(ops) {
                Ok(rx) => Some(rx),
                Err(e) => {
                    // Not stored, so not routed either: the publisher gets an
                    // error instead of an acknowledgement and will retry.
                    tracing::warn!(topic = %msg.topic, error = %e, "publish refused: not stored");
                    for (outbox, d) in pushes.drain(..) {
                        if let Some(id) = d.packet_id {
                            outbox.unreserve_packet_id(id);
                        }
                    }
                    self.push_scratch = pushes;
                    return Err(PublishError::Storage(e));
                }
            }
        } else if hold {
            // No publisher waits (a will), but the held deliveries do; if
            // the writer refuses, they go out unheld, as stored as it gets.
            match self.writer.submit_durable(ops.clone()) {
                Ok(rx) => Some(rx),
                Err(_) => {
                    self.submit(ops);
                    None
                }
            }
        } else {
            self.submit(ops);
            None
        };
        // Taken (a refused publish returned above): resuming streams may
        // replay it (once: not again when passed on for a shared group).
        if !matches!(origin, Origin::Remote(Some(p), _) if p.hops > 0) {
            self.journal.push(mark, &msg);
        }
        if msg.retain && self.retained.apply(&msg) && !msg.topic.is_broker_reserved() {
            self.stats.retained_count.store(self.retained.len() as u64, Relaxed);
        }
        // Held only while a commit is coming (not when the writer refused).
        let hold = hold && commit.is_some();
        let mut held = Vec::new();
        let mut congested = Vec::new();
        for (outbox, d) in pushes.drain(..) {
            let pushed = if hold && held_until_stored(&d) {
                held.push((outbox.clone(), d.seq));
                outbox.push_held(d)
            } else {
                outbox.push(d)
            };
            if pushed == Pushed::Congested && wants_reply {
                congested.push(outbox);
            }
        }
        self.push_scratch = pushes;
        // After the pushes: a release must find its delivery held.
        if let Some(stored) = commit.take_if(|_| hold) {
            commit = release_when_stored(stored, held, wants_reply);
        }
        let mut shared = false;
        if shares && let Some(fabric) = &self.fabric {
            if let Some(n) = outbox {
                if self.recent_own.len() >= RECENT_REMOTE {
                    self.recent_own.pop_front();
                }
                self.recent_own.push_back((n, msg.clone()));
            }
            commit = share_when_stored(fabric, msg, commit, outbox, picks);
            shared = true;
        }
        Ok(PublishReply { outcome: PublishOutcome { matched, shared }, commit, congested })
    }

    /// Fill `self.scratch` with one target per session; returns the match
    /// count. With other instances, shared groups go where the publish's
    /// instance chose (`self.picked` when that is this one).
    fn collect_targets(&mut self, msg: &Message, origin: Origin<'_>) -> usize {
        let publisher = msg.publisher.as_ref();
        let mut shared: Vec<&Entry> = Vec::new();
        let scratch = &mut self.scratch;
        scratch.clear();
        self.picked.clear();
        self.orphans.clear();
        // Passed on for shared groups: nobody else gets it again.
        let groups_only = matches!(origin, Origin::Remote(Some(p), _) if p.hops > 0);
        // Given to a session just taken over with its replay already (its
        // own subscriptions only: shared groups pick anew).
        let fence = match origin {
            Origin::Remote(_, Some(at)) if !self.replayed.is_empty() => Some(at),
            _ => None,
        };
        let replayed = |client: &ClientId| {
            fence.is_some_and(|at| self.replayed.get(client).is_some_and(|through| at <= *through))
        };
        let mut matched = 0;
        self.trie.for_each_match(msg.topic.as_str(), |e| {
            matched += 1;
            if e.group.is_some() {
                shared.push(e);
                return;
            }
            if groups_only || e.options.no_local && publisher == Some(&e.client) {
                return;
            }
            if replayed(&e.client) {
                return;
            }
            add_target(scratch, &e.client, &e.options, msg.qos);
        });
        let me = self.peers.as_ref().map(|p| p.node().clone());
        let view = match (&self.peers, origin) {
            (Some(peers), Origin::Local) if !msg.topic.is_server_owned() => {
                Some(peers.remote_groups())
            }
            _ => None,
        };
        if self.node_cursor.len() > MAX_NODE_CURSORS {
            self.node_cursor.clear();
        }
        let mut local_groups: Vec<GroupKey> = Vec::new();
        if !shared.is_empty() {
            // Each (group, filter) picks one member, round-robin, preferring
            // members that are connected now.
            shared.sort_by(|a, b| {
                (&a.group, &a.filter, &a.client).cmp(&(&b.group, &b.filter, &b.client))
            });
            let mut i = 0;
            while i < shared.len() {
                let key = (shared[i].group.clone().unwrap_or_default(), shared[i].filter.clone());
                let mut j = i;
                while j < shared.len()
                    && shared[j].group.as_ref() == Some(&key.0)
                    && shared[j].filter == key.1
                {
                    j += 1;
                }
                let members = &shared[i..j];
                i = j;
                let online =
                    |e: &&Entry| self.sessions.get(&e.client).is_some_and(|s| s.conn.is_some());
                let here = match (&me, origin) {
                    (None, _) => true,
                    (Some(me), Origin::Local) => match &view {
                        Some(view) => {
                            let local = Members {
                                total: members.len() as u32,
                                online: members.iter().filter(|e| online(e)).count() as u32,
                            };
                            let mut candidates = view.members(&key).to_vec();
                            candidates.push((me.clone(), local));
                            let cursor = self.node_cursor.entry(key.clone()).or_insert(0);
                            let chosen =
                                groups::pick(cursor, &candidates).unwrap_or_else(|| me.clone());
                            let here = chosen == *me;
                            self.picked.push((key.0.clone(), key.1.clone(), chosen));
                            here
                        }
                        None => true,
                    },
                    (Some(me), Origin::Remote(picks, _)) => {
                        local_groups.push(key.clone());
                        match picks {
                            // From an instance that does not choose.
                            None => true,
                            Some(p) => match p.chosen(&key.0, &key.1) {
                                Some(chosen) => chosen == &**me,
                                // Its sender did not know of the group yet.
                                None => p.hops == 0,
                            },
                        }
                    }
                };
                if !here {
                    continue;
                }
                let cursor = self.share_cursor.entry(key).or_insert(0);
                let n = members.len();
                let pick = (0..n)
                    .map(|k| (*cursor + k) % n)
                    .find(|&k| online(&members[k]))
                    .unwrap_or(*cursor % n);
                *cursor = pick + 1;
                let e = members[pick];
                add_target(scratch, &e.client, &e.options, msg.qos);
            }
        }
        // Groups with members on other instances only.
        if let Some(view) = view.as_deref().filter(|v| !v.is_empty()) {
            let (cursors, picked) = (&mut self.node_cursor, &mut self.picked);
            view.for_each_match(msg.topic.as_str(), |key, listed| {
                if picked.iter().any(|(g, f, _)| *g == key.0 && *f == key.1) {
                    return;
                }
                if let Some(chosen) = groups::pick(cursors.entry(key.clone()).or_insert(0), listed)
                {
                    picked.push((key.0.clone(), key.1.clone(), chosen));
                }
            });
        }
        // Chosen here for a group with nobody here any more.
        if let (Some(me), Origin::Remote(Some(picks), _)) = (&me, origin) {
            for (g, f, chosen) in &picks.groups {
                if chosen == me && !local_groups.iter().any(|(lg, lf)| lg == g && lf == f) {
                    self.orphans.push((g.clone(), f.clone()));
                }
            }
        }
        merge_targets(scratch);
        matched
    }

    /// A remote publish chose this instance for groups it has no member of
    /// (they left since the sender last heard): pass it on to another
    /// instance with members, at most [`MAX_HOPS`] times. QoS 0 is not
    /// passed on, as it would not be queued either.
    fn pass_on(&mut self, msg: Arc<Message>, hops: u8) {
        let orphans = std::mem::take(&mut self.orphans);
        let metrics = crate::telemetry::metrics::global();
        let (Some(peers), Some(fabric)) = (&self.peers, &self.fabric) else { return };
        let mut groups = Vec::new();
        if msg.qos != QoS::AtMostOnce && hops < MAX_HOPS {
            let view = peers.remote_groups();
            for key in &orphans {
                let cursor = self.node_cursor.entry(key.clone()).or_insert(0);
                if let Some(chosen) = groups::pick(cursor, view.members(key)) {
                    groups.push((key.0.clone(), key.1.clone(), chosen));
                }
            }
        }
        let lost = orphans.len() - groups.len();
        if lost > 0 {
            metrics.cluster_shared_lost.fetch_add(lost as u64, Relaxed);
            tracing::warn!(
                topic = %msg.topic,
                lost,
                hops,
                "a publish chosen here for shared groups with no member left had nowhere to go"
            );
        }
        if !groups.is_empty() {
            metrics.cluster_shared_passed_on.fetch_add(1, Relaxed);
            fabric.share(msg, None, None, Some(Arc::new(Picks { groups, hops: hops + 1 })));
        }
    }

    /// Tell the other instances this one's members of each shared group.
    fn tell_groups(&mut self) {
        self.groups_dirty = false;
        let Some(peers) = &self.peers else { return };
        let mut counts: HashMap<GroupKey, Members> = HashMap::new();
        for session in self.sessions.values() {
            for filter in session.subscriptions.keys() {
                if let Some(group) = &filter.group {
                    let m = counts.entry((group.clone(), filter.filter.clone())).or_default();
                    m.total += 1;
                    m.online += u32::from(session.conn.is_some());
                }
            }
        }
        peers.set_local_groups(counts.into_iter().collect());
    }

    /// Publish a will like any publish: through the hook, so a location
    /// will updates the latest position, the history and the map. Wills are
    /// rare, so the hook's small cost on the router's task does not matter.
    fn route_will(&mut self, will: super::Will) {
        let mut msg = will.message;
        // Published now, so stored and mapped as received now.
        msg.received_at = SystemTime::now();
        let inspection = self.hook.as_ref().map_or(Ok(Inspection::default()), |h| h.inspect(&msg));
        let Inspection { ops, on_accepted } = match inspection {
            Ok(inspection) => inspection,
            Err(e) => {
                // CONNECT refuses invalid wills: this only guards a hook that changed.
                if let PublishError::InvalidPayload(_) = e {
                    self.stats.invalid_payloads.fetch_add(1, Relaxed);
                }
                tracing::warn!(topic = %msg.topic, error = %e, "will message refused");
                return;
            }
        };
        tracing::debug!(topic = %msg.topic, "publishing will message");
        if self.publish(Arc::new(msg), ops, false).is_ok()
            && let Some(accepted) = on_accepted
        {
            accepted();
        }
    }

    /// Set a session's timer of this kind, replacing the one it had.
    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        let key = (at, self.timer_seq);
        if let Some(old) = self.timer_slots.insert(timer.slot(), key) {
            self.timers.remove(&old);
        }
        self.timers.insert(key, timer);
    }

    /// Drop a session's timers: it is attached again, or gone.
    fn cancel_timers(&mut self, client: &ClientId) {
        for kind in [TimerKind::Will, TimerKind::Expire] {
            if let Some(key) = self.timer_slots.remove(&(kind, client.clone())) {
                self.timers.remove(&key);
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.timer_slots.remove(&timer.slot());
            match timer {
                Timer::Will(client, epoch) => {
                    let will = self
                        .sessions
                        .get_mut(&client)
                        .filter(|s| s.conn.is_none() && s.epoch == epoch)
                        .and_then(|s| s.will.take().map(|w| (w, s.claim)));
                    if let Some((will, claim)) = will {
                        self.route_will(*will);
                        self.forget_stored_will(&client, claim);
                    }
                }
                Timer::Expire(client, epoch) => {
                    let stale = self
                        .sessions
                        .get(&client)
                        .is_none_or(|s| s.conn.is_some() || s.epoch != epoch);
                    if !stale {
                        tracing::info!(client.id = %client, "session expired");
                        self.end_session(&client);
                    }
                }
            }
        }
    }

    fn publish_sys(&mut self) {
        let totals = self.peers.as_ref().and_then(|p| p.totals());
        let cluster = totals.as_ref().map(sys::cluster).unwrap_or_default();
        for msg in sys::snapshot(&self.stats).into_iter().chain(cluster) {
            let _ = self.publish(Arc::new(msg), Vec::new(), false);
        }
    }

    /// Give back the room a storm of connections left in the tables sized
    /// by the fleet: a hash table keeps its peak capacity, and every slot
    /// of the sessions' table holds a whole `Session`. Rehashing what is
    /// left is cheap when most of the table is empty, which is when it runs.
    fn compact(&mut self) {
        fn shrink<K: Eq + std::hash::Hash, V>(table: &mut HashMap<K, V>) {
            let (len, capacity) = (table.len(), table.capacity());
            if capacity > COMPACT_MIN_CAPACITY && capacity > len * COMPACT_SLACK {
                table.shrink_to(len * 2);
            }
        }
        shrink(&mut self.sessions);
        shrink(&mut self.timer_slots);
        shrink(&mut self.fences);
    }

    fn kick_all(&self) {
        for session in self.sessions.values() {
            if let Some(conn) = session.conn {
                session.outbox.kick(conn, KickReason::ServerShuttingDown);
            }
        }
    }

    fn shutdown(&mut self, reply: oneshot::Sender<()>) {
        self.kick_all();
        // Reply once everything queued so far is committed.
        let writer = self.writer.clone();
        tokio::spawn(async move {
            writer.flush_and_stop().await;
            let _ = reply.send(());
        });
    }

    /// Writes of a publish nobody waits for (QoS 0) and retained copies
    /// queued on subscribe; session state goes to `submit_state` instead.
    fn submit(&self, ops: Vec<WriteOp>) {
        if let Err(e) = self.writer.submit(ops) {
            tracing::error!(error = %e, "store write dropped: writer queue full");
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.numbers.take(self.ownership.as_ref())
    }
}

/// `msg`'s delivery to `session` for `t`, numbered by `seq`, with its
/// stored copy added to `ops` for a persistent session; `None` when it is
/// not queued (QoS 0 for an offline client unless those are queued, or no
/// packet id free: counted).
fn queue_delivery(
    session: &Session,
    t: Target,
    msg: &Arc<Message>,
    queue_qos0: bool,
    stats: &Stats,
    seq: impl FnOnce() -> u64,
    ops: &mut Vec<WriteOp>,
) -> Option<Delivery> {
    if t.qos == QoS::AtMostOnce && session.conn.is_none() && !queue_qos0 {
        return None;
    }
    // Chosen now, so the stored copy carries the id it goes out with.
    let packet_id = match t.qos {
        QoS::AtMostOnce => None,
        _ => match session.outbox.reserve_packet_id() {
            Some(id) => Some(id),
            None => {
                stats.dropped_queue_full(t.qos);
                return None;
            }
        },
    };
    let d = Delivery {
        seq: seq(),
        msg: msg.clone(),
        qos: t.qos,
        retain: msg.retain && t.retain_as_published,
        subscription_ids: t.subscription_ids,
        dup: false,
        packet_id,
        stored: t.qos != QoS::AtMostOnce && session.is_persistent(),
    };
    if d.stored {
        ops.push(WriteOp::EnqueueMessage { client_id: t.client, delivery: d.clone() });
    }
    Some(d)
}

/// Delivery numbers: one sequence, in reserved blocks when several
/// instances share the store (alone the block never ends).
struct DeliveryNumbers {
    next: u64,
    /// End (exclusive) of the block in use; `u64::MAX` alone.
    block_end: u64,
    /// The numbers ran past their block with no new one ready.
    overrun: bool,
}

impl Default for DeliveryNumbers {
    fn default() -> Self {
        Self { next: 1, block_end: u64::MAX, overrun: false }
    }
}

impl DeliveryNumbers {
    /// Number on from `start`, the first of a reserved block.
    fn start_block(&mut self, start: u64) {
        self.next = start;
        self.block_end = start.saturating_add(1 << SEQ_BLOCK_BITS);
        self.overrun = false;
    }

    /// The next number, moving to a new reserved block when the one in use
    /// is spent.
    fn take(&mut self, ownership: Option<&SharedOwnership>) -> u64 {
        if self.next >= self.block_end {
            match ownership.and_then(|o| o.take_seq_block()) {
                Some(start) if start >= self.next => self.start_block(start),
                _ => {
                    // Running on keeps the order here but may meet a block
                    // reserved later elsewhere: asked again at every number.
                    if !self.overrun {
                        self.overrun = true;
                        tracing::error!(
                            "delivery numbers ran past their reserved block: none ready"
                        );
                    }
                }
            }
        }
        let n = self.next;
        self.next += 1;
        n
    }
}

/// Whether a delivery waits in its outbox until its stored copy is
/// committed: QoS 2 to a persistent session (see [`Outbox::push_held`]).
/// QoS 1 need not: a delivery the broker forgets is at worst delivered again.
fn held_until_stored(d: &Delivery) -> bool {
    d.qos == QoS::ExactlyOnce && d.stored
}

/// Once `stored` resolves, release the `held` deliveries (or drop them, if
/// the writes failed: the publisher is refused and resends); the returned
/// receiver, when `reply`, passes the result on to the publisher.
fn release_when_stored(
    stored: oneshot::Receiver<Result<(), StoreError>>,
    held: Vec<(Arc<Outbox>, u64)>,
    reply: bool,
) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let result = stored.await.unwrap_or(Err(StoreError::Unavailable));
        for (outbox, seq) in held {
            outbox.release_held(seq, result.is_ok());
        }
        let _ = tx.send(result);
    });
    reply.then_some(rx)
}

/// Hand `msg` to the other instances once `stored` resolves well (at once
/// without a commit to wait for); the returned receiver passes the result
/// on to the publisher. A publish kept in the `outbox` that the fabric
/// cannot take is refused (its publisher resends): its kept copy would
/// otherwise be forgotten with the ones after it, never shared.
fn share_when_stored(
    fabric: &SharedFabric,
    msg: Arc<Message>,
    stored: Option<oneshot::Receiver<Result<(), StoreError>>>,
    outbox: Option<u64>,
    picks: Option<Arc<Picks>>,
) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
    let Some(stored) = stored else {
        fabric.share(msg, None, outbox, picks);
        return None;
    };
    let (kept_tx, kept_rx) = oneshot::channel();
    let (tx, rx) = oneshot::channel();
    let taken = fabric.share(msg, Some(kept_rx), outbox, picks);
    tokio::spawn(async move {
        let mut result = stored.await.unwrap_or(Err(StoreError::Unavailable));
        let _ = kept_tx.send(result.is_ok());
        if !taken && outbox.is_some() && result.is_ok() {
            result = Err(StoreError::Overloaded);
        }
        let _ = tx.send(result);
    });
    Some(rx)
}

/// Where a publish came from: a remote one is not shared again, and its
/// retained copy is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin<'a> {
    Local,
    /// With the instances its sender chose for shared groups (`None`: it
    /// chose none, as before instances chose), and its place on the fabric.
    Remote(Option<&'a Picks>, Option<crate::domain::FabricPos>),
}

fn add_target(
    targets: &mut Vec<Target>,
    client: &ClientId,
    options: &SubscriptionOptions,
    msg_qos: QoS,
) {
    targets.push(Target {
        client: client.clone(),
        qos: msg_qos.min(options.qos),
        retain_as_published: options.retain_as_published,
        subscription_ids: options.subscription_id.into_iter().collect(),
    });
}

/// Overlapping subscriptions of one client become one delivery with the
/// highest QoS and every subscription identifier [MQTT-3.3.4-2, -3.3.4-5].
/// Sorting keeps this O(n log n) for large fan-outs.
fn merge_targets(targets: &mut Vec<Target>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by(|a, b| a.client.cmp(&b.client));
    targets.dedup_by(|later, kept| {
        if later.client != kept.client {
            return false;
        }
        kept.qos = kept.qos.max(later.qos);
        kept.retain_as_published |= later.retain_as_published;
        kept.subscription_ids.append(&mut later.subscription_ids);
        true
    });
}

/// Take a subscription out of the trie; a shared group's round-robin cursor
/// goes with its last member, so groups that come and go leave nothing behind.
fn remove_subscription(
    trie: &mut SubscriptionTrie,
    cursors: &mut HashMap<(ByteString, TopicFilter), usize>,
    client: &ClientId,
    filter: &SharedFilter,
) {
    if trie.remove(&filter.filter, client, &filter.group) == Removed::LastOfGroup
        && let Some(group) = &filter.group
    {
        cursors.remove(&(group.clone(), filter.filter.clone()));
    }
}

/// Whether `session` is a member of a shared group.
fn has_groups(session: &Session) -> bool {
    session.subscriptions.keys().any(|f| f.group.is_some())
}

fn entry(client: &ClientId, filter: &SharedFilter, options: SubscriptionOptions) -> Entry {
    Entry {
        client: client.clone(),
        group: filter.group.clone(),
        filter: filter.filter.clone(),
        options,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ntex::util::Bytes;

    use super::*;
    use crate::broker::auth::ConfigAuthenticator;
    use crate::broker::ports::Fabric;
    use crate::broker::ports::memory::Kept;
    use crate::broker::{Next, ProtocolVersion, SubscribeRequest, Will};
    use crate::domain::{StoredSession, TopicLimits, TopicName};

    async fn broker() -> BrokerHandle {
        broker_with(RestoredState::default()).await
    }

    async fn broker_with(restored: RestoredState) -> BrokerHandle {
        let auth = Arc::new(ConfigAuthenticator::new(true, vec![]));
        // Durability that commits at once: these tests are about routing.
        let (h, _) = spawn_router(
            BrokerLimits::default(),
            auth,
            Kept::shared(),
            restored,
            Duration::from_secs(3600),
            None,
            None,
            None,
            None,
        );
        h
    }

    fn msg(topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
        let topic = TopicName::parse(topic.to_owned(), TopicLimits::default()).unwrap();
        Message::new(topic, Bytes::from(payload.to_owned()), qos, retain)
    }

    fn sub(filter: &str, qos: QoS) -> SubscribeRequest {
        SubscribeRequest {
            filter: SharedFilter::parse(filter.to_owned(), TopicLimits::default()).unwrap(),
            options: SubscriptionOptions::qos(qos),
        }
    }

    async fn connect(
        h: &BrokerHandle,
        id: &str,
        clean: bool,
        expiry: u32,
        will: Option<Will>,
    ) -> ConnectOutcome {
        h.connect(request(id, clean, expiry, will, Identity::anonymous())).await.unwrap()
    }

    fn request(
        id: &str,
        clean: bool,
        expiry: u32,
        will: Option<Will>,
        identity: Identity,
    ) -> ConnectRequest {
        ConnectRequest {
            client_id: ClientId::from(id),
            protocol: ProtocolVersion::V5,
            clean_start: clean,
            session_expiry_secs: expiry,
            will,
            identity,
        }
    }

    async fn connect_as(
        h: &BrokerHandle,
        id: &str,
        clean: bool,
        identity: Identity,
    ) -> Result<ConnectOutcome, ConnectError> {
        h.connect(request(id, clean, 60, None, identity)).await
    }

    #[tokio::test]
    async fn a_session_stored_without_an_owner_is_claimed_by_the_first_to_connect() {
        let stored = StoredSession {
            client_id: ClientId::from("old-car"),
            owner: None,
            expiry_secs: 3600,
            disconnected_at: None,
            subscriptions: Vec::new(),
            messages: Vec::new(),
            incoming_qos2: Vec::new(),
            pending_releases: Vec::new(),
        };
        let h = broker_with(RestoredState { sessions: vec![stored], ..Default::default() }).await;
        let car = || Identity::device("old-car".into());

        let claimed = connect_as(&h, "old-car", false, car()).await.unwrap();
        assert!(claimed.session_present, "the stored session was resumed");
        let other = connect_as(&h, "old-car", false, Identity::device("thief".into())).await;
        assert_eq!(other.err(), Some(ConnectError::NotOwner), "claimed sessions have an owner");
    }

    #[tokio::test]
    async fn only_the_owner_resumes_or_replaces_a_session() {
        let h = broker().await;
        let car = || Identity::device("car-1".into());
        let admin = Identity::configured("ops".into(), crate::domain::Role::Admin);
        connect_as(&h, "car-1", false, car()).await.unwrap();

        for (other, clean) in [
            (Identity::device("car-2".into()), false),
            (Identity::device("car-2".into()), true),
            (Identity::anonymous(), false),
            (admin, false),
        ] {
            let refused = connect_as(&h, "car-1", clean, other.clone()).await.err();
            assert_eq!(refused, Some(ConnectError::NotOwner), "{other:?} clean={clean}");
        }
        let resumed = connect_as(&h, "car-1", false, car()).await.unwrap();
        assert!(resumed.session_present);
    }

    async fn next(c: &ConnectOutcome) -> Option<Delivery> {
        let mut buf = Vec::new();
        match tokio::time::timeout(Duration::from_millis(200), c.outbox.next(c.conn, &mut buf, 1))
            .await
        {
            Ok(Next::Ready) => buf.pop(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn publishes_reach_matching_subscribers_at_the_lower_qos() {
        let h = broker().await;
        let c = connect(&h, "sub", true, 0, None).await;
        let granted = h
            .subscribe(
                ClientId::from("sub"),
                c.conn,
                vec![sub("cars/+/location", QoS::AtLeastOnce)],
            )
            .await;
        assert_eq!(granted, vec![Ok(QoS::AtLeastOnce)]);

        let out = h.publish(msg("cars/7/location", "x", QoS::ExactlyOnce, false)).await.unwrap();
        assert_eq!(out.matched, 1);
        let d = next(&c).await.expect("delivered");
        assert_eq!(d.qos, QoS::AtLeastOnce);
        assert_eq!(d.msg.topic.as_str(), "cars/7/location");

        let out = h.publish(msg("cars/7/speed", "x", QoS::AtLeastOnce, false)).await.unwrap();
        assert_eq!(out.matched, 0);
        assert!(next(&c).await.is_none());
    }

    #[tokio::test]
    async fn retained_messages_are_sent_on_subscribe_and_cleared_by_empty_payload() {
        let h = broker().await;
        h.publish(msg("a/b", "one", QoS::AtLeastOnce, true)).await.unwrap();
        h.publish(msg("a/b", "two", QoS::AtLeastOnce, true)).await.unwrap();
        let c = connect(&h, "s", true, 0, None).await;
        h.subscribe(ClientId::from("s"), c.conn, vec![sub("a/#", QoS::AtLeastOnce)]).await;
        let d = next(&c).await.unwrap();
        assert!(d.retain);
        assert_eq!(&d.msg.payload[..], b"two");

        h.publish(msg("a/b", "", QoS::AtLeastOnce, true)).await.unwrap();
        assert_eq!(&next(&c).await.unwrap().msg.payload[..], b"");
        assert!(
            h.retained(SharedFilter::parse("a/#", TopicLimits::default()).unwrap())
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn shared_subscriptions_deliver_each_message_to_one_member_in_turn() {
        let h = broker().await;
        let a = connect(&h, "a", true, 0, None).await;
        let b = connect(&h, "b", true, 0, None).await;
        h.subscribe(ClientId::from("a"), a.conn, vec![sub("$share/g/t", QoS::AtMostOnce)]).await;
        h.subscribe(ClientId::from("b"), b.conn, vec![sub("$share/g/t", QoS::AtMostOnce)]).await;
        for _ in 0..4 {
            h.publish(msg("t", "x", QoS::AtMostOnce, false)).await.unwrap();
        }
        assert_eq!(a.outbox.len() + b.outbox.len(), 4);
        assert_eq!(a.outbox.len(), 2);
    }

    #[tokio::test]
    async fn a_second_connection_takes_the_session_over() {
        let h = broker().await;
        let first = connect(&h, "car", false, 60, None).await;
        let second = connect(&h, "car", false, 60, None).await;
        assert!(second.session_present);
        let mut buf = Vec::new();
        assert_eq!(
            first.outbox.next(first.conn, &mut buf, 1).await,
            Next::Kicked(KickReason::SessionTakenOver)
        );
    }

    #[tokio::test]
    async fn a_durable_publish_reports_its_real_match_count_and_a_fire_and_forget_one_none() {
        let h = broker().await;
        let c = connect(&h, "sub", true, 0, None).await;
        h.subscribe(ClientId::from("sub"), c.conn, vec![sub("a/+", QoS::AtLeastOnce)]).await;

        // Nobody waits for a QoS 0 publish: it is routed, with no count.
        h.submit(msg("a/b", "fire", QoS::AtMostOnce, false)).unwrap();
        assert_eq!(next(&c).await.map(|d| d.msg.payload.clone()), Some(Bytes::from("fire")));

        let matched = |topic: &'static str| {
            let waiting = h.submit_durable(msg(topic, "x", QoS::AtLeastOnce, false)).unwrap();
            async move { waiting.settled().await.unwrap().matched }
        };
        assert_eq!(matched("a/b").await, 1);
        assert_eq!(matched("elsewhere").await, 0);
    }

    /// A fabric that keeps every acknowledged publish and takes shares
    /// while `room` says so.
    #[derive(Debug)]
    struct Recorder {
        room: std::sync::atomic::AtomicBool,
        shared: std::sync::Mutex<Vec<(String, Option<u64>)>>,
        next: AtomicU64,
    }

    impl Fabric for Recorder {
        fn share(
            &self,
            msg: Arc<Message>,
            _kept: Option<oneshot::Receiver<bool>>,
            outbox: Option<u64>,
            _picks: Option<Arc<Picks>>,
        ) -> bool {
            let room = self.room.load(Relaxed);
            if room {
                self.shared.lock().unwrap().push((msg.topic.as_str().to_owned(), outbox));
            }
            room
        }

        fn outbox(&self, _msg: &Message, _picks: Option<&Picks>) -> Option<(u64, WriteOp)> {
            let seq = self.next.fetch_add(1, Relaxed);
            let node = Arc::from("n");
            Some((seq, WriteOp::DeleteFabricOutbox { node, through: seq }))
        }
    }

    #[tokio::test]
    async fn acknowledged_publishes_are_kept_for_the_fabric_and_refused_when_it_is_full() {
        let kept = Kept::shared();
        let fabric = Arc::new(Recorder {
            room: true.into(),
            shared: Default::default(),
            next: AtomicU64::new(7),
        });
        let (h, _) = spawn_router(
            BrokerLimits::default(),
            Arc::new(ConfigAuthenticator::new(true, vec![])),
            kept.clone(),
            RestoredState::default(),
            Duration::from_secs(3600),
            None,
            Some(fabric.clone()),
            None,
            None,
        );
        let outbox_ops = || {
            let ops = kept.ops.lock().unwrap();
            ops.iter().filter(|op| matches!(op, WriteOp::DeleteFabricOutbox { .. })).count()
        };

        h.publish(msg("a/1", "x", QoS::AtLeastOnce, false)).await.unwrap();
        h.publish(msg("a/0", "x", QoS::AtMostOnce, false)).await.unwrap();
        assert_eq!(outbox_ops(), 1, "only the acknowledged publish is kept");
        let shared = fabric.shared.lock().unwrap().clone();
        assert_eq!(shared, vec![("a/1".to_owned(), Some(7)), ("a/0".to_owned(), None)]);

        // A fabric too far behind: an acknowledged publish is refused (its
        // publisher resends), never acknowledged and left unshared.
        fabric.room.store(false, Relaxed);
        let refused = h.publish(msg("a/2", "x", QoS::AtLeastOnce, false)).await;
        assert!(matches!(refused, Err(PublishError::Storage(StoreError::Overloaded))));
        h.publish(msg("a/3", "x", QoS::AtMostOnce, false)).await.unwrap();
    }

    #[tokio::test]
    async fn connected_clients_are_counted_through_takeovers_and_disconnects() {
        let h = broker().await;
        let online = |h: &BrokerHandle| h.stats().clients_connected.load(Relaxed);
        connect(&h, "a", false, 60, None).await;
        connect(&h, "b", true, 0, None).await;
        assert_eq!(online(&h), 2);
        let a = connect(&h, "a", false, 60, None).await;
        assert_eq!(online(&h), 2, "a takeover replaces a connection");
        connect(&h, "b", true, 0, None).await;
        assert_eq!(online(&h), 2, "so does a clean start");

        h.disconnect(ClientId::from("a"), a.conn, DisconnectKind::Clean, None);
        connect(&h, "c", true, 0, None).await;
        assert_eq!(online(&h), 2, "b and c; a's session is kept offline");
        connect(&h, "a", true, 0, None).await;
        assert_eq!(online(&h), 3);
    }

    #[tokio::test]
    async fn wills_go_out_on_unclean_disconnect_only() {
        let h = broker().await;
        let watcher = connect(&h, "w", true, 0, None).await;
        h.subscribe(ClientId::from("w"), watcher.conn, vec![sub("wills/#", QoS::AtMostOnce)]).await;
        let will = || {
            Some(Will { message: msg("wills/x", "gone", QoS::AtMostOnce, false), delay_secs: 0 })
        };

        let c = connect(&h, "x", true, 0, will()).await;
        h.disconnect(ClientId::from("x"), c.conn, DisconnectKind::Clean, None);
        assert!(next(&watcher).await.is_none());

        let c = connect(&h, "x", true, 0, will()).await;
        h.disconnect(ClientId::from("x"), c.conn, DisconnectKind::Unclean, None);
        assert_eq!(&next(&watcher).await.unwrap().msg.payload[..], b"gone");
    }

    #[tokio::test]
    async fn persistent_sessions_queue_while_away_and_clean_start_discards() {
        let h = broker().await;
        let c = connect(&h, "p", false, 3600, None).await;
        h.subscribe(ClientId::from("p"), c.conn, vec![sub("q", QoS::AtLeastOnce)]).await;
        h.disconnect(ClientId::from("p"), c.conn, DisconnectKind::Clean, None);
        h.publish(msg("q", "while away", QoS::AtLeastOnce, false)).await.unwrap();

        let c = connect(&h, "p", false, 3600, None).await;
        assert!(c.session_present);
        assert_eq!(&next(&c).await.unwrap().msg.payload[..], b"while away");

        h.disconnect(ClientId::from("p"), c.conn, DisconnectKind::Clean, None);
        h.publish(msg("q", "dropped", QoS::AtLeastOnce, false)).await.unwrap();
        let c = connect(&h, "p", true, 0, None).await;
        assert!(!c.session_present);
        assert!(next(&c).await.is_none());
    }

    #[tokio::test]
    async fn no_local_skips_the_publishers_own_messages() {
        let h = broker().await;
        let c = connect(&h, "me", true, 0, None).await;
        let mut req = sub("t", QoS::AtMostOnce);
        req.options.no_local = true;
        h.subscribe(ClientId::from("me"), c.conn, vec![req]).await;
        let mut m = msg("t", "x", QoS::AtMostOnce, false);
        m.publisher = Some(ClientId::from("me"));
        h.publish(m).await.unwrap();
        assert!(next(&c).await.is_none());
    }

    /// A router driven directly (no task), to look at what it keeps.
    impl Router {
        /// The CONNACK's content, without waiting for what it promises.
        fn connect_now(
            &mut self,
            req: ConnectRequest,
            claim: Option<Claim>,
        ) -> Result<ConnectOutcome, ConnectError> {
            self.connect(req, claim).map(|promised| promised.answer)
        }
    }

    fn bare_router() -> Router {
        bare_router_with(BrokerLimits::default())
    }

    fn bare_router_with(limits: BrokerLimits) -> Router {
        let auth = Arc::new(ConfigAuthenticator::new(true, vec![]));
        Router::new(Arc::new(limits), auth, Kept::shared(), None)
    }

    #[tokio::test]
    async fn a_shared_groups_cursor_goes_with_its_last_member() {
        let mut r = bare_router();
        let mut conns = Vec::new();
        for id in ["a", "b"] {
            let c = r.connect_now(request(id, true, 0, None, Identity::anonymous()), None).unwrap();
            r.subscribe(&ClientId::from(id), c.conn, vec![sub("$share/g/t", QoS::AtMostOnce)]);
            conns.push(c);
        }
        r.publish(Arc::new(msg("t", "x", QoS::AtMostOnce, false)), Vec::new(), false).unwrap();
        assert_eq!(r.share_cursor.len(), 1);

        r.unsubscribe(&ClientId::from("a"), conns[0].conn, vec!["$share/g/t".into()]);
        assert_eq!(r.share_cursor.len(), 1, "b is still a member");
        // The last member leaves by its session ending.
        r.disconnect(&ClientId::from("b"), conns[1].conn, DisconnectKind::Clean, None);
        assert!(r.share_cursor.is_empty(), "no cursor outlives its group");
    }

    /// Other instances as fixed: `remote` has the others' groups.
    #[derive(Debug)]
    struct FixedPeers {
        me: Arc<str>,
        remote: Arc<groups::RemoteGroups>,
        told: std::sync::Mutex<Vec<Vec<(GroupKey, Members)>>>,
    }

    impl super::super::ports::Peers for FixedPeers {
        fn node(&self) -> &Arc<str> {
            &self.me
        }
        fn remote_groups(&self) -> Arc<groups::RemoteGroups> {
            self.remote.clone()
        }
        fn set_local_groups(&self, groups: Vec<(GroupKey, Members)>) {
            self.told.lock().unwrap().push(groups);
        }
        fn totals(&self) -> Option<groups::ClusterTotals> {
            None
        }
    }

    /// A fabric that keeps the picks of what it is given.
    #[derive(Debug, Default)]
    struct PickRecorder {
        shared: std::sync::Mutex<Vec<Option<Arc<Picks>>>>,
    }

    impl Fabric for PickRecorder {
        fn share(
            &self,
            _msg: Arc<Message>,
            _kept: Option<oneshot::Receiver<bool>>,
            _outbox: Option<u64>,
            picks: Option<Arc<Picks>>,
        ) -> bool {
            self.shared.lock().unwrap().push(picks);
            true
        }
    }

    #[tokio::test]
    async fn shared_groups_go_where_chosen_and_are_passed_on_when_nobody_is_left() {
        let mut r = bare_router();
        let key: GroupKey = ("g".into(), TopicFilter::parse("t", TopicLimits::default()).unwrap());
        let one = Members { total: 1, online: 1 };
        let peers = Arc::new(FixedPeers {
            me: Arc::from("me"),
            remote: Arc::new(groups::RemoteGroups::new([(
                Arc::from("other"),
                vec![(key.clone(), one)],
            )])),
            told: Default::default(),
        });
        let fabric = Arc::new(PickRecorder::default());
        r.peers = Some(peers.clone());
        r.fabric = Some(fabric.clone());
        let id = ClientId::from("a");
        let c = r.connect_now(request("a", true, 0, None, Identity::anonymous()), None).unwrap();
        r.subscribe(&id, c.conn, vec![sub("$share/g/t", QoS::AtLeastOnce)]);
        r.tell_groups();
        assert_eq!(peers.told.lock().unwrap().last().unwrap(), &vec![(key.clone(), one)]);

        // Publishes taken here go in turn here and to the other instance.
        for _ in 0..4 {
            r.publish(Arc::new(msg("t", "x", QoS::AtMostOnce, false)), Vec::new(), false).unwrap();
        }
        assert_eq!(c.outbox.len(), 2, "every other one here");
        let chosen: Vec<String> = fabric
            .shared
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.as_ref().unwrap().chosen(&key.0, &key.1).unwrap().to_owned())
            .collect();
        assert_eq!(chosen.iter().filter(|n| *n == "other").count(), 2, "{chosen:?}");

        // Others' publishes: delivered here only when chosen here, or when
        // their instance does not choose.
        let picks = |node: &str| {
            Some(Box::new(Picks {
                groups: vec![(key.0.clone(), key.1.clone(), Arc::from(node))],
                hops: 0,
            }))
        };
        let m = msg("t", "x", QoS::AtLeastOnce, false);
        r.handle(Command::Remote(m.clone(), picks("other"), None));
        assert_eq!(c.outbox.len(), 2);
        r.handle(Command::Remote(m.clone(), picks("me"), None));
        assert_eq!(c.outbox.len(), 3);
        r.handle(Command::Remote(m.clone(), None, None));
        assert_eq!(c.outbox.len(), 4);

        // Chosen here after the last member left: passed on to the other.
        r.unsubscribe(&id, c.conn, vec!["$share/g/t".into()]);
        r.tell_groups();
        assert!(peers.told.lock().unwrap().last().unwrap().is_empty());
        let before = fabric.shared.lock().unwrap().len();
        r.handle(Command::Remote(m, picks("me"), None));
        let shared = fabric.shared.lock().unwrap();
        assert_eq!(shared.len(), before + 1);
        let passed = shared.last().unwrap().as_deref().unwrap();
        assert_eq!((passed.chosen(&key.0, &key.1), passed.hops), (Some("other"), 1));
    }

    #[tokio::test]
    async fn reconnects_replace_a_sessions_timers_instead_of_piling_them_up() {
        let mut r = bare_router();
        let will = || {
            Some(Will {
                message: msg("wills/car", "gone", QoS::AtMostOnce, false),
                delay_secs: 600,
            })
        };
        for _ in 0..10_000 {
            let c = r
                .connect_now(request("car", false, 86_400, will(), Identity::anonymous()), None)
                .unwrap();
            assert!(r.timers.is_empty(), "an attached session has no timers");
            r.disconnect(&ClientId::from("car"), c.conn, DisconnectKind::Unclean, None);
        }
        assert_eq!(r.timers.len(), 2, "one will-delay and one expiry timer");
        assert_eq!(r.timer_slots.len(), 2);
        assert!(r.sessions[&ClientId::from("car")].will.is_some(), "the delayed will still waits");
    }

    #[tokio::test]
    async fn the_sessions_table_gives_back_what_a_storm_left() {
        let mut r = bare_router();
        let mut conns = Vec::new();
        for i in 0..5_000 {
            let id = format!("storm-{i}");
            let c = r.connect_now(request(&id, true, 0, None, Identity::anonymous()), None);
            conns.push((ClientId::from(id.as_str()), c.unwrap().conn));
        }
        let peak = r.sessions.capacity();
        r.compact();
        assert_eq!(r.sessions.capacity(), peak, "a full table is left alone");
        for (client, conn) in conns.drain(10..) {
            r.disconnect(&client, conn, DisconnectKind::Clean, None);
        }
        assert_eq!(r.sessions.len(), 10);
        r.compact();
        assert!(r.sessions.capacity() < peak / 100, "{} of {peak}", r.sessions.capacity());
        for (client, conn) in conns {
            assert!(r.sessions.contains_key(&client), "the rest is kept");
            r.disconnect(&client, conn, DisconnectKind::Clean, None);
        }
    }

    #[tokio::test]
    async fn sessions_asking_never_to_expire_get_the_persistent_client_expiration() {
        let limits = BrokerLimits { persistent_client_expiration: 1, ..BrokerLimits::default() };
        let mut r = bare_router_with(limits);
        let c = r
            .connect_now(request("phone", false, u32::MAX, None, Identity::anonymous()), None)
            .unwrap();
        assert_eq!(c.session_expiry_secs, 1);
        r.disconnect(&ClientId::from("phone"), c.conn, DisconnectKind::Clean, None);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        r.fire_timers();
        assert!(r.sessions.is_empty(), "the session expired");

        let never = BrokerLimits { persistent_client_expiration: 0, ..BrokerLimits::default() };
        assert_eq!(never.grant_expiry(u32::MAX), u32::MAX);
        assert_eq!(BrokerLimits::default().grant_expiry(u32::MAX), 7 * 24 * 3600);
    }

    #[tokio::test]
    async fn qos0_is_not_queued_for_offline_sessions_unless_configured() {
        for queue_qos0_messages in [false, true] {
            let limits = BrokerLimits { queue_qos0_messages, ..BrokerLimits::default() };
            let mut r = bare_router_with(limits);
            let id = ClientId::from("p");
            let c = r
                .connect_now(request("p", false, 3600, None, Identity::anonymous()), None)
                .unwrap();
            r.subscribe(&id, c.conn, vec![sub("q", QoS::AtLeastOnce)]);
            r.disconnect(&id, c.conn, DisconnectKind::Clean, None);
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                r.publish(Arc::new(msg("q", "x", qos, false)), Vec::new(), false).unwrap();
            }
            let queued = if queue_qos0_messages { 2 } else { 1 };
            assert_eq!(c.outbox.len(), queued, "queue_qos0_messages = {queue_qos0_messages}");
        }
    }

    #[tokio::test]
    async fn the_map_is_retained_in_memory_but_not_stored() {
        let mut r = bare_router();
        let map = Arc::new(msg("map/version", "{}", QoS::AtLeastOnce, true));
        let reply = r.publish(map, Vec::new(), true).unwrap();
        assert!(reply.commit.is_none(), "nothing to write for the map");
        assert_eq!(r.retained.len(), 1, "subscribers still get it on subscribe");
        let car = Arc::new(msg("devices/car/status", "on", QoS::AtLeastOnce, true));
        assert!(r.publish(car, Vec::new(), true).unwrap().commit.is_some());
    }

    fn claim(epoch: u64) -> Option<Claim> {
        Some(Claim { epoch, moved: None, seq_block: None, missed: None })
    }

    fn stored(id: &str, seqs: &[u64]) -> StoredSession {
        StoredSession {
            client_id: ClientId::from(id),
            owner: Some(Identity::anonymous().principal()),
            expiry_secs: 3600,
            disconnected_at: None,
            subscriptions: vec![(
                SharedFilter::parse("q", TopicLimits::default()).unwrap(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            messages: seqs
                .iter()
                .map(|&seq| Delivery {
                    seq,
                    msg: Arc::new(msg("q", "queued", QoS::AtLeastOnce, false)),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    dup: true,
                    packet_id: std::num::NonZeroU16::new(seq as u16),
                    stored: true,
                })
                .collect(),
            incoming_qos2: Vec::new(),
            pending_releases: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_connect_claimed_before_the_newest_claim_is_refused() {
        let mut r = bare_router();
        let car = || request("car", false, 3600, None, Identity::anonymous());
        let newer = r.connect_now(car(), claim(7)).unwrap();
        assert_eq!(r.connect_now(car(), claim(5)).err(), Some(ConnectError::Superseded));
        assert_eq!(r.sessions[&ClientId::from("car")].conn, Some(newer.conn), "7 stays");
        r.connect_now(car(), claim(9)).unwrap();
        assert_eq!(r.sessions[&ClientId::from("car")].claim, 9);
    }

    #[tokio::test]
    async fn another_instances_claim_takes_the_session_only_when_newer() {
        let mut r = bare_router();
        let id = ClientId::from("car");
        let c = r
            .connect_now(request("car", false, 3600, None, Identity::anonymous()), claim(4))
            .unwrap();
        r.subscribe(&id, c.conn, vec![sub("q", QoS::AtLeastOnce)]);

        assert_eq!(r.release(&id, 3).0, Release::Superseded, "an older claim is stale");
        assert_eq!(r.sessions[&id].conn, Some(c.conn));

        let (released, committed, _) = r.release(&id, 6);
        let routed = Handover { through: None, own_through: None };
        assert_eq!(released, Release::Released(Some(routed)), "it had routed nothing yet");
        assert!(committed.is_some(), "its writes are committed before the answer");
        assert!(!r.sessions.contains_key(&id) && r.trie.is_empty(), "forgotten here");
        let mut buf = Vec::new();
        assert_eq!(
            c.outbox.next(c.conn, &mut buf, 1).await,
            Next::Kicked(KickReason::SessionTakenOver)
        );
        // A connect claimed before that takeover, arriving late, is refused.
        let late =
            r.connect_now(request("car", false, 3600, None, Identity::anonymous()), claim(5));
        assert_eq!(late.err(), Some(ConnectError::Superseded));
    }

    /// What `c`'s outbox hands its pump in up to `rounds` rounds.
    async fn drain(c: &ConnectOutcome, rounds: usize) -> Vec<Delivery> {
        let mut buf = Vec::new();
        for _ in 0..rounds {
            let next = c.outbox.next(c.conn, &mut buf, 8);
            if !matches!(
                tokio::time::timeout(Duration::from_millis(50), next).await,
                Ok(Next::Ready)
            ) {
                break;
            }
        }
        buf
    }

    fn pos(ms: u64) -> crate::domain::FabricPos {
        crate::domain::FabricPos { ms, seq: 0 }
    }

    fn remote(payload: &str) -> Message {
        msg("q", payload, QoS::AtLeastOnce, false)
    }

    /// "car" moved here with the fabric read up to 20 for it (one entry
    /// matched, at 12) while this router had passed 5.
    fn moved_ahead_of_the_router(r: &mut Router) -> ConnectOutcome {
        r.handle(Command::Remote(remote("before"), None, Some(pos(5))));
        let moved = Claim {
            epoch: 2,
            moved: Some(Some(stored("car", &[]))),
            seq_block: None,
            missed: Some(ports::MissedRead {
                through: pos(20),
                messages: vec![Arc::new(remote("read at 12"))],
            }),
        };
        let req = request("car", false, 3600, None, Identity::anonymous());
        r.connect_now(req, Some(moved)).unwrap()
    }

    #[tokio::test]
    async fn a_moved_session_gets_what_its_last_holder_missed_once() {
        let mut r = bare_router();
        let c = moved_ahead_of_the_router(&mut r);
        for (at, payload) in [(12, "read at 12"), (20, "read at 20"), (21, "after the read")] {
            r.handle(Command::Remote(remote(payload), None, Some(pos(at))));
        }
        assert!(r.replayed.is_empty(), "forgotten once passed");

        let buf = drain(&c, 4).await;
        let got: Vec<String> =
            buf.iter().map(|d| String::from_utf8_lossy(&d.msg.payload).into_owned()).collect();
        assert_eq!(got, ["read at 12", "after the read"]);
    }

    #[tokio::test]
    async fn a_session_let_go_before_the_router_passed_its_replay_says_it_had_that_too() {
        let mut r = bare_router();
        moved_ahead_of_the_router(&mut r);
        let (released, _, _) = r.release(&ClientId::from("car"), 3);
        let routed = Handover { through: Some(pos(20)), own_through: None };
        assert_eq!(released, Release::Released(Some(routed)));
        assert!(r.replayed.is_empty());
    }

    #[tokio::test]
    async fn a_moved_sessions_messages_keep_their_order_before_new_ones() {
        let mut r = bare_router();
        r.numbers.block_end = 1 << SEQ_BLOCK_BITS;
        let later_block = 5 << SEQ_BLOCK_BITS;
        let moved = Claim {
            epoch: 2,
            moved: Some(Some(stored("car", &[later_block - 100, later_block - 99]))),
            seq_block: Some(later_block),
            missed: None,
        };
        let req = request("car", false, 3600, None, Identity::anonymous());
        let c = r.connect_now(req, Some(moved)).unwrap();
        assert!(c.session_present, "the moved session is resumed");
        r.publish(Arc::new(msg("q", "new", QoS::AtLeastOnce, false)), Vec::new(), false).unwrap();
        let buf = drain(&c, 3).await;
        let mut seqs: Vec<u64> = buf.iter().map(|d| d.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), 3, "{seqs:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "numbered in delivery order: {seqs:?}");
    }

    fn adoption(id: &str, epoch: u64, session: bool, will_in: Duration) -> Adoption {
        Adoption {
            client_id: ClientId::from(id),
            epoch,
            session: session.then(|| stored(id, &[])),
            will: Some(msg("wills/car", "lost", QoS::AtLeastOnce, false)),
            will_at: SystemTime::now() + will_in,
            seq_block: None,
            replay: Vec::new(),
            replayed_through: None,
        }
    }

    #[tokio::test]
    async fn a_dead_instances_session_is_held_and_its_will_waits_unless_a_later_claim_came() {
        let kept = Kept::shared();
        let auth = Arc::new(ConfigAuthenticator::new(true, vec![]));
        let mut r = Router::new(Arc::new(BrokerLimits::default()), auth, kept.clone(), None);
        let car = ClientId::from("car");

        // Claimed again elsewhere before the adoption reached the router.
        assert_eq!(r.release(&car, 9).0, Release::Released(None), "it held nothing");
        r.adopt(adoption("car", 8, true, Duration::ZERO));
        assert!(r.sessions.is_empty(), "a later claim wins");

        // Held, queueing, with its delayed will waiting.
        r.adopt(adoption("car", 10, true, Duration::from_secs(60)));
        assert_eq!(r.sessions[&car].claim, 10);
        r.publish(Arc::new(msg("q", "x", QoS::AtLeastOnce, false)), Vec::new(), false).unwrap();
        assert_eq!(r.sessions[&car].outbox.len(), 1, "queued while its client is away");
        assert!(r.sessions[&car].will.is_some() && r.timers.len() == 2);
        // Its client returns here: the delayed will is cancelled.
        let c = r.connect_now(request("car", false, 3600, None, Identity::anonymous()), claim(11));
        assert!(c.unwrap().session_present);
        assert!(r.sessions[&car].will.is_none() && r.timers.is_empty());

        // No session: the will goes out now, and nothing stays claimed.
        kept.ops.lock().unwrap().clear();
        r.adopt(adoption("van", 12, false, Duration::from_secs(60)));
        assert!(!r.sessions.contains_key(&ClientId::from("van")));
        let ops = kept.ops.lock().unwrap();
        let van = ClientId::from("van");
        let cleared = |op: &WriteOp| matches!(op, WriteOp::ClearWill { client_id, epoch: 12 } if *client_id == van);
        let released = |op: &WriteOp| matches!(op, WriteOp::ReleaseClaim { client_id, epoch: 12 } if *client_id == van);
        assert!(ops.iter().any(cleared) && ops.iter().any(released), "{ops:?}");
    }
}
