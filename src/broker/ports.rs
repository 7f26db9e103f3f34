//! What the broker needs from the outside, as traits it owns: the stores
//! implement them, so the core never depends on how state is kept.

use std::sync::Arc;

use tokio::sync::oneshot;

pub use super::auth::BoxFuture;
use super::groups::{ClusterTotals, GroupKey, Members, Picks, RemoteGroups};
use crate::domain::{ClientId, FabricPos, Message, Principal, StoreError, StoredSession, WriteOp};

/// Resolves once a durable write is committed, or says why it was not.
pub type CommitReceipt = oneshot::Receiver<Result<(), StoreError>>;

/// Where the broker's writes become durable: retained messages, sessions,
/// subscriptions, queued deliveries and exactly-once state, and whatever a
/// [`PublishHook`](super::PublishHook) adds to a publish. Writes are applied
/// in submission order, whichever method queued them.
pub trait Durability: Send + Sync + std::fmt::Debug + 'static {
    /// Queue writes without waiting for them; refused only when the queue is
    /// full or closed.
    fn submit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError>;

    /// Queue session-state writes (what a SUBACK or CONNACK promised): never
    /// refused nor dropped, retried until kept.
    fn submit_state(&self, ops: Vec<WriteOp>);

    /// [`Durability::submit_state`], with a receipt once they are kept, for
    /// an answer that promises them; `None` when it cannot be had now (the
    /// writes are kept later all the same).
    fn submit_state_confirmed(&self, ops: Vec<WriteOp>) -> Option<CommitReceipt> {
        self.submit_state(ops);
        None
    }

    /// Queue writes; the receipt resolves once they are committed. Refused
    /// at once while nothing can be kept.
    fn submit_durable(&self, ops: Vec<WriteOp>) -> Result<CommitReceipt, StoreError>;

    /// `Ok` while writes succeed; otherwise why they fail.
    fn health(&self) -> Result<(), StoreError>;

    /// Keep everything queued so far, then stop taking writes (at shutdown).
    fn flush_and_stop(&self) -> BoxFuture<'_, ()>;

    /// A persisted delivery was acknowledged (or dropped): forget it.
    fn delete_message(&self, seq: u64) {
        self.submit_state(vec![WriteOp::DeleteMessage(seq)]);
    }
}

pub type SharedDurability = Arc<dyn Durability>;

/// How publishes accepted here reach the other instances, and theirs reach
/// this one's subscribers (which arrive through
/// [`BrokerHandle::route_remote`](super::BrokerHandle::route_remote)).
pub trait Fabric: Send + Sync + std::fmt::Debug + 'static {
    /// Hand `msg` to the other instances, in call order, once `kept`
    /// resolves `true` (at once without it; never when it resolves `false`:
    /// its publisher was refused and will resend). `outbox` is the number
    /// [`Fabric::outbox`] gave it. Never blocks; `false` when the fabric is
    /// too far behind to take it.
    fn share(
        &self,
        msg: Arc<Message>,
        kept: Option<oneshot::Receiver<bool>>,
        outbox: Option<u64>,
        picks: Option<Arc<Picks>>,
    ) -> bool;

    /// The write that keeps an acknowledged publish for the other instances
    /// until it is shared, committed with the publish's own writes so a
    /// crash of this instance before then loses nothing; with its number,
    /// for [`Fabric::share`]. `None` when nothing needs keeping. `picks`
    /// go with it (see [`Peers`]).
    fn outbox(&self, _msg: &Message, _picks: Option<&Picks>) -> Option<(u64, WriteOp)> {
        None
    }

    /// The write that notes this instance is done with the other
    /// instances' publishes up to `at`, submitted after the writes they
    /// caused. `None` when nothing needs noting.
    fn cursor(&self, _at: FabricPos) -> Option<WriteOp> {
        None
    }

    /// The lowest [`Fabric::outbox`] number whose publish is on the fabric
    /// after `at`, or not on it yet (every higher one is too): those this
    /// instance routed itself that an instance which read up to `at` never
    /// saw. `None` when it cannot tell.
    fn own_after(&self, _at: FabricPos) -> Option<u64> {
        None
    }

    /// A mark queued after every publish shared so far: resolves, once
    /// those are on the fabric (or given up), with where the last of them
    /// landed (`0-0` when none has). `None` when it cannot be queued.
    fn mark(&self) -> Option<oneshot::Receiver<FabricPos>> {
        None
    }
}

pub type SharedFabric = Arc<dyn Fabric>;

/// What the other live instances say of themselves (several instances):
/// their members of shared groups, so a publish accepted here goes to one
/// member cluster-wide, and their counters, for `$SYS/cluster/...`.
pub trait Peers: Send + Sync + std::fmt::Debug + 'static {
    /// This instance, as [`Picks`] name it.
    fn node(&self) -> &Arc<str>;
    /// The others' shared groups, as last read.
    fn remote_groups(&self) -> Arc<RemoteGroups>;
    /// This instance's members of each shared group changed: tell the others.
    fn set_local_groups(&self, groups: Vec<(GroupKey, Members)>);
    /// Sums over the live instances, once known.
    fn totals(&self) -> Option<ClusterTotals>;
}

pub type SharedPeers = Arc<dyn Peers>;

/// A client id claimed for this instance before its CONNECT reaches the
/// router (several instances: see [`Ownership`]).
pub struct Claim {
    /// Rises with every claim of the id anywhere: the router refuses a
    /// connect, and lets go of a session, only for a higher one.
    pub epoch: u64,
    /// Another instance held the session until now: what it left in the
    /// store replaces anything this one still keeps of it (`None` inside:
    /// nothing stored).
    pub moved: Option<Option<StoredSession>>,
    /// The first number of a delivery-number block reserved after the
    /// moved session's messages were numbered: taken when they number
    /// above the router's own block, so order by number stays delivery
    /// order.
    pub seq_block: Option<u64>,
    /// The previous holder died or let go: the publishes it had not queued
    /// for the session (see [`MissedRead`]).
    pub missed: Option<MissedRead>,
}

/// Publishes read from the fabric for a session whose holder died or let
/// go, after where that holder stopped routing to it up to `through`,
/// oldest first.
pub struct MissedRead {
    pub through: FabricPos,
    pub messages: Vec<Arc<Message>>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("epoch", &self.epoch)
            .field("moved", &self.moved.as_ref().map(|s| s.as_ref().map(|s| s.messages.len())))
            .field("seq_block", &self.seq_block)
            .finish()
    }
}

/// Why a client id could not be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the client id's session belongs to another identity")]
    NotOwner,
    /// A later CONNECT with the same client id claimed it meanwhile.
    #[error("a later connection claimed the client id")]
    Superseded,
    /// The store, or the instance holding the session, did not answer in time.
    #[error("the session's holder could not be reached")]
    Unavailable,
}

/// Who holds each client id's session when several instances share the
/// work: one instance at a time, under a rising epoch that fences a stale
/// holder. Absent on a single instance.
pub trait Ownership: Send + Sync + std::fmt::Debug + 'static {
    /// Claim `client` for this instance for `owner` (any owner's with
    /// `take_over_any`); the instance that held it lets go first. `will`
    /// is kept with the claim: should this instance die, another one
    /// publishes it.
    fn claim(
        &self,
        client: ClientId,
        owner: Principal,
        take_over_any: bool,
        will: Option<&super::Will>,
    ) -> BoxFuture<'static, Result<Claim, ClaimError>>;

    /// The first number of a freshly reserved delivery-number block, when
    /// one is ready (never waits); the next is reserved in the background.
    fn take_seq_block(&self) -> Option<u64>;
}

pub type SharedOwnership = Arc<dyn Ownership>;

/// A [`Durability`] that commits everything at once and keeps what it was
/// given, for the core's own tests.
#[cfg(test)]
pub(crate) mod memory {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    pub struct Kept {
        pub ops: Mutex<Vec<WriteOp>>,
    }

    impl Kept {
        pub fn shared() -> Arc<Self> {
            Arc::new(Self::default())
        }
    }

    impl Durability for Kept {
        fn submit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
            self.ops.lock().unwrap().extend(ops);
            Ok(())
        }

        fn submit_state(&self, ops: Vec<WriteOp>) {
            self.ops.lock().unwrap().extend(ops);
        }

        fn submit_durable(&self, ops: Vec<WriteOp>) -> Result<CommitReceipt, StoreError> {
            self.ops.lock().unwrap().extend(ops);
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            Ok(rx)
        }

        fn health(&self) -> Result<(), StoreError> {
            Ok(())
        }

        fn flush_and_stop(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }
}
