//! What every request handler can reach: cloneable handles, no owned state.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::broker::BrokerHandle;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub broker: BrokerHandle,
    pub started_at: Instant,
    /// Cancelled when the process starts shutting down (or a core component
    /// died): readiness fails from then on so load balancers drain us.
    pub stopping: CancellationToken,
}
