//! Several instances as one broker: publishes cross instances on a Redis
//! stream ([`RedisFabric`], the broker's [`Fabric`](crate::broker::ports::Fabric)
//! port); state is shared in PostgreSQL.

mod codec;
mod orphans;
mod own_log;
mod ownership;
mod peers;
mod redis_fabric;

pub use ownership::{ClusterOwnership, ControlReader, NODE_LEASE};
pub use peers::{PEER_TTL, PeersTask, RedisPeers};
pub use redis_fabric::{FabricHealth, FabricReader, FabricSettings, RedisFabric};
