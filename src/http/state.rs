//! What every request handler can reach: cloneable handles, no owned state.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::broker::BrokerHandle;
use crate::flags::Flags;
use crate::identities::Identities;
use crate::locations::HistoryTopics;
use crate::store::Store;
use crate::updater::MapView;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub broker: BrokerHandle,
    /// Users, devices and tokens; the [`crate::http::auth::Caller`]
    /// extractor resolves bearer tokens through it.
    pub identities: Identities,
    /// The latest map snapshot and recent versions, kept by the map updater.
    pub map: MapView,
    /// How the shared map names devices, when not by their ids.
    pub map_ids: Option<crate::domain::MapIds>,
    /// Topics whose history `GET /api/v1/history/...` serves.
    pub history_topics: HistoryTopics,
    /// Feature flags: evaluation from memory, changes through the store.
    pub flags: Flags,
    /// The map page's tile settings and Content-Security-Policy.
    pub page: crate::http::PageSettings,
    pub started_at: Instant,
    /// Set when instances share the work through Redis.
    pub fabric: Option<crate::cluster::FabricHealth>,
    /// Cancelled when the process starts shutting down (or a core component
    /// died): readiness fails from then on so load balancers drain us.
    pub stopping: CancellationToken,
}
