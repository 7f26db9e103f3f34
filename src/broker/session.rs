//! A client session as the router keeps it; it outlives network connections.

use std::collections::HashMap;
use std::sync::Arc;

use super::outbox::{ConnectionId, Outbox};
use super::{ProtocolVersion, Will};
use crate::domain::Principal;
use crate::domain::SharedFilter;
use crate::domain::SubscriptionOptions;

pub struct Session {
    /// Whose session this is; only they resume or replace it. `None` for a
    /// session stored before owners were recorded: the first to connect
    /// claims it.
    pub owner: Option<Principal>,
    /// The digest of the bearer token the attached connection signed in
    /// with, if it did: revoking the token closes the connection.
    pub token: Option<Arc<str>>,
    pub outbox: Arc<Outbox>,
    /// The connection currently attached, if any.
    pub conn: Option<ConnectionId>,
    /// The last connection that was attached; names timers so a stale one is ignored.
    pub epoch: ConnectionId,
    /// The claim epoch this instance holds the session under when several
    /// share the work (0 alone): a lower claim is stale.
    pub claim: u64,
    pub protocol: ProtocolVersion,
    /// 0 = ends with the connection; `u32::MAX` = never expires.
    pub expiry_secs: u32,
    pub subscriptions: HashMap<SharedFilter, SubscriptionOptions>,
    /// Boxed: most sessions have none, and the table of sessions holds
    /// every session's fields inline.
    pub will: Option<Box<Will>>,
}

impl Session {
    pub fn is_persistent(&self) -> bool {
        self.expiry_secs > 0
    }
}
