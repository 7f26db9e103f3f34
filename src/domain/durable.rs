//! The durable state's vocabulary, shared by the broker (which decides what
//! must be kept) and the stores that keep it (which decide how).

use std::sync::Arc;
use std::time::SystemTime;

use ntex::util::{ByteString, Bytes};

use super::{
    ClientId, Delivery, DeviceId, Message, Position, Principal, SharedFilter, SubscriptionOptions,
    TopicName,
};

/// A database failure as callers see it; the cause is logged where it happens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable")]
    Unavailable,
    #[error("write queue full")]
    Overloaded,
    /// The disk under the database is full: writes fail, reads still work.
    #[error("storage full")]
    Full,
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    UpsertRetained(Arc<Message>),
    DeleteRetained(ByteString),
    UpsertSession {
        client_id: ClientId,
        /// `None` keeps the stored owner.
        owner: Option<Principal>,
        expiry_secs: u32,
        disconnected_at: Option<SystemTime>,
    },
    /// Deletes the session with its subscriptions, queued messages and
    /// exactly-once state.
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
    /// Several instances: the session claimed under `epoch` ended here;
    /// forget the claim unless a later one replaced it.
    ReleaseClaim {
        client_id: ClientId,
        epoch: u64,
    },
    /// Several instances: the session claimed under `epoch` is held (queued
    /// for) by the claiming instance now.
    ClaimHeld {
        client_id: ClientId,
        epoch: u64,
    },
    /// Several instances: the will kept with the claim under `epoch` was
    /// published or discarded; forget it unless a later claim replaced it.
    ClearWill {
        client_id: ClientId,
        epoch: u64,
    },
    /// An inbound QoS 2 packet id received and not yet released.
    PutIncomingQos2 {
        client_id: ClientId,
        packet_id: u16,
    },
    DeleteIncomingQos2 {
        client_id: ClientId,
        packet_id: u16,
    },
    /// An outbound QoS 2 exchange past PUBREC, waiting for PUBCOMP.
    PutPendingRelease {
        client_id: ClientId,
        packet_id: u16,
    },
    DeletePendingRelease {
        client_id: ClientId,
        packet_id: u16,
    },
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
    /// An acknowledged publish kept for the other instances until it is on
    /// the fabric: `entry` is what the fabric appends, `seq` its place in
    /// `node`'s order.
    PutFabricOutbox {
        node: Arc<str>,
        seq: u64,
        entry: Bytes,
    },
    /// `node`'s kept publishes up to `through` reached the fabric.
    DeleteFabricOutbox {
        node: Arc<str>,
        through: u64,
    },
    /// The other instances' publishes up to fabric entry `at` have had
    /// their effects on `node`'s sessions submitted before this op: once it
    /// is committed, so are they.
    FabricCursor {
        node: Arc<str>,
        at: FabricPos,
    },
}

/// A fabric stream entry's id: milliseconds, then a sequence number.
/// The default, `0-0`, is before every entry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FabricPos {
    pub ms: u64,
    pub seq: u64,
}

impl FabricPos {
    /// `<ms>-<seq>`, as Redis writes it.
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl std::fmt::Display for FabricPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl WriteOp {
    /// Whether the op is session state, which goes through the lane.
    pub fn is_session_state(&self) -> bool {
        matches!(
            self,
            Self::UpsertSession { .. }
                | Self::DeleteSession(_)
                | Self::PutSubscription { .. }
                | Self::DeleteSubscription { .. }
                | Self::DeleteMessage(_)
                | Self::ReleaseClaim { .. }
                | Self::ClearWill { .. }
                | Self::ClaimHeld { .. }
        )
    }
}

/// A persistent session as stored.
pub struct StoredSession {
    pub client_id: ClientId,
    /// `None` for a session stored before owners were kept.
    pub owner: Option<Principal>,
    pub expiry_secs: u32,
    pub disconnected_at: Option<SystemTime>,
    pub subscriptions: Vec<(SharedFilter, SubscriptionOptions)>,
    /// Queued QoS≥1 deliveries, oldest first.
    pub messages: Vec<StoredMessage>,
    /// Inbound QoS 2 packet ids received and not released yet.
    pub incoming_qos2: Vec<u16>,
    /// Outbound QoS 2 packet ids past PUBREC, waiting for PUBCOMP.
    pub pending_releases: Vec<u16>,
}

pub type StoredMessage = Delivery;

/// Several instances number queued deliveries inside blocks of
/// `1 << SEQ_BLOCK_BITS` reserved from the shared database.
pub const SEQ_BLOCK_BITS: u32 = 32;

/// Broker state read back from the store at start.
#[derive(Default)]
pub struct RestoredState {
    pub retained: Vec<Message>,
    pub sessions: Vec<StoredSession>,
    /// Larger than every stored delivery sequence number.
    pub next_seq: u64,
}
