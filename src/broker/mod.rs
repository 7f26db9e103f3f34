//! The broker core. One router task owns sessions, subscriptions and retained
//! messages; transports (MQTT, REST, the map updater) talk to it through a
//! cloneable [`BrokerHandle`] and never touch its state.

pub mod acl;
pub mod auth;
pub mod groups;
mod inbox;
pub mod journal;
pub mod limits;
pub mod outbox;
pub mod ports;
pub mod retained;
mod router;
mod session;
pub mod stats;
mod sys;
pub mod trie;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ntex::util::ByteString;
use tokio::sync::oneshot;

pub use auth::{Authenticator, SharedAuthenticator};
pub use limits::BrokerLimits;
pub use outbox::{ConnectionId, KickReason, Next, Outbox, OverflowPolicy, Pushed};
pub use ports::{Claim, ClaimError, Ownership, SharedOwnership};

pub use router::spawn_router;
pub use stats::Stats;

use crate::domain::{
    ClientId, Identity, LocationError, Message, Principal, QoS, SharedFilter, StoreError,
    SubscriptionOptions, WriteOp,
};

/// Which MQTT protocol level a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    V311,
    V5,
}

/// A will message and when to send it after an unclean disconnect.
#[derive(Debug, Clone)]
pub struct Will {
    pub message: Message,
    /// v5 will delay interval; 0 for v3.
    pub delay_secs: u32,
}

/// Everything the router needs to open or resume a session.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: ClientId,
    pub protocol: ProtocolVersion,
    /// v3 clean session / v5 clean start.
    pub clean_start: bool,
    /// Seconds the session outlives the connection: v3 clean=false → u32::MAX,
    /// clean=true → 0; v5 as requested (the router caps it by the limits).
    pub session_expiry_secs: u32,
    pub will: Option<Will>,
    /// Who is connecting: the session is theirs, and on resume each stored
    /// subscription is checked against their current rights.
    pub identity: Identity,
}

/// Credentials that stopped being valid while connections may be using them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A user or device was deleted: its connections close and its sessions
    /// end (nobody can resume them).
    Principal(Principal),
    /// A bearer token was revoked (its digest): the connections it opened
    /// close; the user's sessions stay for its other sign-ins.
    Token(Arc<str>),
}

/// Why the router would not open or resume a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// A session with this client id belongs to another identity.
    #[error("the client id's session belongs to another identity")]
    NotOwner,
    #[error("broker is shutting down")]
    ShuttingDown,
    /// A later CONNECT with the same client id (on any instance) claimed
    /// the session first.
    #[error("a later connection claimed the client id")]
    Superseded,
    /// The instance holding the session could not be reached in time.
    #[error("the session's holder could not be reached")]
    Unavailable,
}

impl From<ports::ClaimError> for ConnectError {
    fn from(e: ports::ClaimError) -> Self {
        match e {
            ports::ClaimError::NotOwner => Self::NotOwner,
            ports::ClaimError::Superseded => Self::Superseded,
            ports::ClaimError::Unavailable => Self::Unavailable,
        }
    }
}

/// What an instance did when told another claimed a session it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Let go (`None`: held nothing): its writes for the session are
    /// committed.
    Released(Option<Handover>),
    /// It holds the session under a higher epoch: the claim is stale.
    Superseded,
}

/// Which publishes an instance had routed to a session when it let go of
/// it: the instance taking it over queues those that came after, which
/// neither routed to it while it moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// The other instances' publishes on the fabric up to here; `None`
    /// when it had routed none yet (it started reading where its run's
    /// first kept position says).
    pub through: Option<crate::domain::FabricPos>,
    /// Its own publishes on the fabric up to here (the later ones it
    /// accepted after letting go); `None` when it could not tell (all of
    /// them are taken as routed).
    pub own_through: Option<crate::domain::FabricPos>,
}

/// The router's side of a release: the answer, the receipt of the
/// session's writes, and the mark that fills in [`Handover::own_through`].
pub(crate) type Releasing =
    (Release, Option<ports::CommitReceipt>, Option<oneshot::Receiver<crate::domain::FabricPos>>);

/// How long a release waits for its own publishes to reach the fabric
/// before it answers without saying where they end.
const OWN_MARK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
pub struct ConnectOutcome {
    pub conn: ConnectionId,
    pub session_present: bool,
    pub outbox: Arc<Outbox>,
    /// Session expiry actually granted (v5 CONNACK property when it differs).
    pub session_expiry_secs: u32,
}

/// A router answer that promises session state (a CONNACK's session, a
/// SUBACK's subscriptions), with the receipt of that state's commit: it
/// reaches the client once the state is kept, so a crash right after the
/// answer cannot take back what it promised. Without a receipt (the
/// database is down, the queue full) the answer goes at once and the state
/// is kept as soon as it can be, as with any session-state write.
pub(crate) struct Promised<T> {
    answer: T,
    kept: Option<ports::CommitReceipt>,
}

impl<T> Promised<T> {
    pub(crate) fn new(answer: T, kept: Option<ports::CommitReceipt>) -> Self {
        Self { answer, kept }
    }

    /// The answer, once what it promises is kept (or could not be: the
    /// writes stay queued and the client is answered anyway, as before a
    /// database outage).
    async fn kept(self) -> T {
        if let Some(kept) = self.kept {
            let _ = kept.await;
        }
        self.answer
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// DISCONNECT received (v5 reason 0x00): the will is discarded.
    Clean,
    /// v5 DISCONNECT with reason 0x04: close, but send the will.
    CleanWithWill,
    /// Network loss, keep-alive timeout, protocol error, takeover: the will is sent.
    Unclean,
}

/// One entry of a SUBSCRIBE, already parsed.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub filter: SharedFilter,
    pub options: SubscriptionOptions,
}

/// Why the broker refused one subscription of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("subscription quota exceeded")]
    QuotaExceeded,
    #[error("not authorized")]
    NotAuthorized,
    #[error("topic filter invalid")]
    FilterInvalid,
    #[error("session not found")]
    NoSession,
}

/// Why the broker refused a publish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("broker is overloaded")]
    Busy,
    #[error("storage unavailable: {0}")]
    Storage(#[from] StoreError),
    #[error("broker is shutting down")]
    ShuttingDown,
    /// A [`PublishHook`] refused the payload (v5 PUBACK 0x99).
    #[error("payload format invalid: {0}")]
    InvalidPayload(LocationError),
}

/// Looks at every publish that enters through a [`BrokerHandle`] (MQTT, REST,
/// the map updater), on the publisher's thread, before the router sees it:
/// it may refuse the payload, and add store writes that commit in the same
/// batch as the publish's own (so a QoS≥1 acknowledgement covers them).
pub trait PublishHook: Send + Sync + 'static {
    fn inspect(&self, msg: &Message) -> Result<Inspection, PublishError>;
}

/// What a [`PublishHook`] wants done with an accepted publish.
#[derive(Default)]
pub struct Inspection {
    /// Store writes committed with the publish.
    pub ops: Vec<WriteOp>,
    /// Runs once the router took the publish (for [`BrokerHandle::publish`],
    /// once it is durable); not at all if it was refused.
    pub on_accepted: Option<Box<dyn FnOnce() + Send>>,
}

/// What routing a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Subscriptions on this instance that matched.
    pub matched: usize,
    /// Passed on to the other instances, whose subscribers `matched` does
    /// not count.
    pub shared: bool,
}

impl PublishOutcome {
    /// Whether nobody anywhere can have got it (v5 reason 0x10 "no
    /// matching subscribers").
    pub fn unheard(&self) -> bool {
        self.matched == 0 && !self.shared
    }
}

/// A client id whose holder died, claimed here (several instances).
pub struct Adoption {
    pub client_id: ClientId,
    /// The claim's epoch here.
    pub epoch: u64,
    /// Its stored session, held offline here until its client returns.
    pub session: Option<crate::domain::StoredSession>,
    /// The will of its last connection, published once `will_at` passes
    /// (now, when the session does not outlive it).
    pub will: Option<Message>,
    pub will_at: std::time::SystemTime,
    /// A delivery-number block reserved after the session's messages
    /// were numbered (see [`Claim::seq_block`]).
    pub seq_block: Option<u64>,
    /// The other instances' publishes the dead instance had not queued for
    /// the session, oldest first: queued here before anything newer.
    pub replay: Vec<Arc<Message>>,
    /// Where the read that found `replay` ended, when it was read: this
    /// instance's own publishes appended after it are added to it.
    pub replayed_through: Option<crate::domain::FabricPos>,
}

pub(crate) enum Command {
    Connect(
        ConnectRequest,
        Option<Box<ports::Claim>>,
        oneshot::Sender<Result<Promised<ConnectOutcome>, ConnectError>>,
    ),
    /// Another instance claimed `client` under `epoch`: let go of it.
    Release {
        client: ClientId,
        epoch: u64,
        reply: oneshot::Sender<Releasing>,
    },
    Disconnect {
        client_id: ClientId,
        conn: ConnectionId,
        kind: DisconnectKind,
        session_expiry_secs: Option<u32>,
    },
    Subscribe {
        client_id: ClientId,
        conn: ConnectionId,
        subs: Vec<SubscribeRequest>,
        reply: oneshot::Sender<Promised<Vec<Result<QoS, SubscribeError>>>>,
    },
    Unsubscribe {
        client_id: ClientId,
        conn: ConnectionId,
        filters: Vec<ByteString>,
        reply: oneshot::Sender<Promised<Vec<bool>>>,
    },
    /// A publish accepted by another instance, for this one's subscribers,
    /// with the instances it chose for shared groups (`None` from an
    /// instance that does not choose), and its place on the fabric (see
    /// [`WriteOp::FabricCursor`]).
    Remote(Message, Option<Box<groups::Picks>>, Option<crate::domain::FabricPos>),
    Publish {
        msg: Message,
        /// Writes added by the [`PublishHook`].
        ops: Vec<WriteOp>,
        reply: Option<oneshot::Sender<Result<PublishReply, PublishError>>>,
    },
    /// Recent publishes since a time, for a resuming SSE stream.
    Replay {
        after: journal::ResumePoint,
        filters: Vec<crate::domain::TopicFilter>,
        reply: oneshot::Sender<journal::Missed>,
    },
    Retained {
        filter: SharedFilter,
        reply: oneshot::Sender<Vec<Arc<Message>>>,
    },
    Revoke(Revocation, oneshot::Sender<usize>),
    /// Hold a dead instance's session (offline) and its will.
    Adopt(Box<Adoption>),
    /// Kick every attached connection (server shutting down); the router
    /// goes on until `Shutdown`.
    KickAll,
    Shutdown(oneshot::Sender<()>),
}

/// The router's answer to a publish: routed now, durable when `commit` resolves.
/// Longest a QoS≥1 acknowledgement waits for congested subscribers.
const MAX_BACKPRESSURE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) struct PublishReply {
    outcome: PublishOutcome,
    commit: Option<oneshot::Receiver<Result<(), StoreError>>>,
    /// Live subscribers whose queues this publish pushed past their bound.
    congested: Vec<Arc<Outbox>>,
}

/// A durable publish the router has taken; [`Submitted::settled`] says
/// when it may be acknowledged and how many subscriptions it matched.
#[must_use = "a publish is acknowledged only once settled"]
pub struct Submitted {
    settle: oneshot::Receiver<Result<PublishReply, PublishError>>,
    on_accepted: Option<Box<dyn FnOnce() + Send>>,
}

impl Submitted {
    /// Wait until every store write of the publish is committed and the
    /// subscribers it congested have room (bounded).
    pub async fn settled(self) -> Result<PublishOutcome, PublishError> {
        let Submitted { settle, on_accepted } = self;
        let reply = settle.await.map_err(|_| PublishError::ShuttingDown)??;
        if let Some(commit) = reply.commit {
            commit.await.map_err(|_| PublishError::ShuttingDown)??;
        }
        // Backpressure: acknowledge once the subscribers this publish
        // congested have room again, so a fast publisher slows to their pace
        // instead of their queues dropping its messages. The message is
        // queued either way; the wait is bounded so one subscriber cannot
        // hold a publisher's acknowledgement for long.
        if !reply.congested.is_empty() {
            let all_room = futures::future::join_all(reply.congested.iter().map(|o| o.room()));
            let _ = tokio::time::timeout(MAX_BACKPRESSURE_WAIT, all_room).await;
        }
        Ok(accepted(on_accepted, reply.outcome))
    }
}

/// Run the publish's acceptance hook, once it may be acknowledged.
fn accepted<T>(hook: Option<Box<dyn FnOnce() + Send>>, outcome: T) -> T {
    if let Some(f) = hook {
        f();
    }
    outcome
}

/// A cloneable handle on the broker core, usable from any thread or runtime.
/// One pointer: every MQTT connection keeps a clone.
#[derive(Clone)]
pub struct BrokerHandle(Arc<HandleParts>);

struct HandleParts {
    inbox: inbox::InboxSender,
    stats: Arc<Stats>,
    limits: Arc<BrokerLimits>,
    auth: SharedAuthenticator,
    next_conn: Arc<AtomicU64>,
    hook: Option<Arc<dyn PublishHook>>,
    /// Set when several instances share the work: a CONNECT claims its
    /// client id first.
    ownership: Option<ports::SharedOwnership>,
}

impl BrokerHandle {
    pub fn stats(&self) -> &Arc<Stats> {
        &self.0.stats
    }

    pub fn limits(&self) -> &BrokerLimits {
        &self.0.limits
    }

    pub fn auth(&self) -> &SharedAuthenticator {
        &self.0.auth
    }

    /// Open or resume the session of `req.client_id`, taking it over from any
    /// connection that still holds it.
    pub async fn connect(&self, req: ConnectRequest) -> Result<ConnectOutcome, ConnectError> {
        let claim = match &self.0.ownership {
            Some(ownership) => {
                let take_over_any = req.identity.is_admin() && self.0.limits.admin_session_takeover;
                let claim = ownership.claim(
                    req.client_id.clone(),
                    req.identity.principal(),
                    take_over_any,
                    req.will.as_ref(),
                );
                Some(Box::new(claim.await?))
            }
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        self.send(Command::Connect(req, claim, tx)).map_err(|_| ConnectError::ShuttingDown)?;
        Ok(rx.await.map_err(|_| ConnectError::ShuttingDown)??.kept().await)
    }

    /// Another instance claimed `client` under `epoch`: close its
    /// connection here, commit what was queued for it and forget it
    /// (the store keeps it for the claimant), unless this instance holds
    /// it under a higher epoch.
    pub async fn release(&self, client: ClientId, epoch: u64) -> Result<Release, StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Release { client, epoch, reply: tx }).is_err() {
            return Err(StoreError::Unavailable);
        }
        let (mut release, committed, own) = rx.await.map_err(|_| StoreError::Unavailable)?;
        if let Some(committed) = committed {
            committed.await.map_err(|_| StoreError::Unavailable)??;
        }
        if let (Release::Released(Some(routed)), Some(own)) = (&mut release, own) {
            // Bounded: the claimant's CONNECT waits for this answer.
            routed.own_through =
                tokio::time::timeout(OWN_MARK_WAIT, own).await.ok().and_then(Result::ok);
        }
        Ok(release)
    }

    /// Report that connection `conn` of `client_id` has ended.
    /// `session_expiry_secs` is the v5 DISCONNECT override, if any. Queued
    /// at once, so a reconnect that follows finds the session already ended.
    pub fn disconnect(
        &self,
        client_id: ClientId,
        conn: ConnectionId,
        kind: DisconnectKind,
        session_expiry_secs: Option<u32>,
    ) {
        let _ = self.send(Command::Disconnect { client_id, conn, kind, session_expiry_secs });
    }

    /// Add subscriptions; retained messages are queued on the session's outbox.
    /// One result per request, in order: the granted QoS or why not. Handed
    /// to the router at the call, so it is routed after what came before;
    /// resolves once a persistent session's subscriptions are stored.
    pub fn subscribe(
        &self,
        client_id: ClientId,
        conn: ConnectionId,
        subs: Vec<SubscribeRequest>,
    ) -> impl Future<Output = Vec<Result<QoS, SubscribeError>>> + Send + 'static {
        let n = subs.len();
        let (tx, rx) = oneshot::channel();
        // Refused at once: the dropped reply says so below.
        let _ = self.send(Command::Subscribe { client_id, conn, subs, reply: tx });
        async move {
            match rx.await {
                Ok(promised) => promised.kept().await,
                _ => vec![Err(SubscribeError::NoSession); n],
            }
        }
    }

    /// Remove subscriptions; `true` per filter that existed. Handed to the
    /// router at the call, like [`BrokerHandle::subscribe`].
    pub fn unsubscribe(
        &self,
        client_id: ClientId,
        conn: ConnectionId,
        filters: Vec<ByteString>,
    ) -> impl Future<Output = Vec<bool>> + Send + 'static {
        let n = filters.len();
        let (tx, rx) = oneshot::channel();
        // Refused at once: the dropped reply says so below.
        let _ = self.send(Command::Unsubscribe { client_id, conn, filters, reply: tx });
        async move {
            match rx.await {
                Ok(promised) => promised.kept().await,
                _ => vec![false; n],
            }
        }
    }

    /// Route a message and wait until it is durable (every store write it
    /// caused is committed). Acknowledge a QoS≥1 publish only after this.
    pub async fn publish(&self, msg: Message) -> Result<PublishOutcome, PublishError> {
        self.room().await;
        self.submit_durable(msg)?.settled().await
    }

    /// Hand a message to the router now, without waiting: publishes
    /// submitted one after the other are routed in that order.
    /// [`Submitted::settled`] resolves once it may be acknowledged. Callers
    /// wait for [`BrokerHandle::room`] first.
    pub fn submit_durable(&self, msg: Message) -> Result<Submitted, PublishError> {
        self.submit_durable_with(msg, Vec::new())
    }

    /// [`BrokerHandle::submit_durable`] with `extra` writes committed in the
    /// same transaction as the message's own.
    pub fn submit_durable_with(
        &self,
        msg: Message,
        extra: Vec<WriteOp>,
    ) -> Result<Submitted, PublishError> {
        let Inspection { mut ops, on_accepted } = self.inspect(&msg)?;
        ops.extend(extra);
        let (tx, rx) = oneshot::channel();
        self.send(Command::Publish { msg, ops, reply: Some(tx) })?;
        Ok(Submitted { settle: rx, on_accepted })
    }

    /// Hand a message to the router now for a publisher that waits for
    /// nothing (QoS 0): routed in submission order like
    /// [`BrokerHandle::submit_durable`], but the router sends no reply, so
    /// there is no match count to report.
    pub fn submit(&self, msg: Message) -> Result<(), PublishError> {
        let Inspection { ops, on_accepted } = self.inspect(&msg)?;
        self.send(Command::Publish { msg, ops, reply: None })?;
        accepted(on_accepted, ());
        Ok(())
    }

    /// Route a publish another instance accepted to this instance's
    /// subscribers (its retained value too), waiting while the router is
    /// full. Hooks do not see it again; it is not shared back. `at` is its
    /// place on the fabric: once its queued copies are committed, so is a
    /// note that this instance is done up to there.
    pub async fn route_remote(
        &self,
        msg: Message,
        picks: Option<groups::Picks>,
        at: Option<crate::domain::FabricPos>,
    ) -> Result<(), PublishError> {
        self.room().await;
        self.send(Command::Remote(msg, picks.map(Box::new), at))
    }

    /// Resolves once the router has room for more publishes.
    pub async fn room(&self) {
        self.0.inbox.room().await
    }

    /// Whether the router has room for more publishes now.
    pub fn has_room(&self) -> bool {
        self.0.inbox.has_room()
    }

    /// Validate a message that will be published later (a will) the way
    /// a publish would be, without storing anything.
    pub fn check_payload(&self, msg: &Message) -> Result<(), PublishError> {
        self.inspect(msg).map(drop)
    }

    fn inspect(&self, msg: &Message) -> Result<Inspection, PublishError> {
        let Some(hook) = &self.0.hook else { return Ok(Inspection::default()) };
        let inspection = hook.inspect(msg);
        if let Err(PublishError::InvalidPayload(_)) = &inspection {
            self.0.stats.invalid_payloads.fetch_add(1, Ordering::Relaxed);
        }
        inspection
    }

    /// Retained messages whose topics match `filter` (for REST GET).
    /// Publishes after `after` on topics `filters` match, with their marks
    /// (see [`journal::Journal::since`]).
    pub async fn replay(
        &self,
        after: journal::ResumePoint,
        filters: Vec<crate::domain::TopicFilter>,
    ) -> journal::Missed {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Replay { after, filters, reply: tx }).is_err() {
            return Err(journal::ReplayGap);
        }
        rx.await.unwrap_or(Err(journal::ReplayGap))
    }

    pub async fn retained(&self, filter: SharedFilter) -> Vec<Arc<Message>> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Retained { filter, reply: tx }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Close, at once, every connection (MQTT or SSE) that `what` no longer
    /// lets in; how many were closed.
    pub async fn revoke(&self, what: Revocation) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Revoke(what, tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or_default()
    }

    /// Hold a dead instance's session and will (see [`Adoption`]); waits
    /// while the router is full.
    pub async fn adopt(&self, adoption: Adoption) -> Result<(), PublishError> {
        self.room().await;
        self.send(Command::Adopt(Box::new(adoption)))
    }

    /// Ask the router to kick every attached connection (server shutting
    /// down) and go on: the first step of a graceful stop.
    pub fn kick_all(&self) {
        let _ = self.send(Command::KickAll);
    }

    /// Ask the router to kick every connection, flush and stop.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// A number unique in this process (names generated client ids).
    pub fn next_connection_id(&self) -> ConnectionId {
        self.0.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the router is still taking commands (for readiness probes).
    pub fn is_running(&self) -> bool {
        !self.0.inbox.is_closed()
    }

    fn send(&self, cmd: Command) -> Result<(), PublishError> {
        self.0.inbox.send(cmd).map_err(|_| PublishError::ShuttingDown)
    }
}
