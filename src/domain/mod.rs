//! Pure domain types, parsed at the edge ("parse, don't validate").

mod account;
mod client_id;
mod cluster;
mod device_id;
mod durable;
mod hex;
mod identity;
mod location;
mod map;
mod map_id;
mod message;
mod source;
mod subscription;
pub mod time;
mod topic;

pub use account::{AccountError, DeviceKind, DeviceName, Password, Username, Visibility};
pub use client_id::ClientId;
pub use cluster::{MAX_ZOOM, cluster};
pub use device_id::{DeviceId, DeviceIdError};
pub use durable::{
    FabricPos, RestoredState, SEQ_BLOCK_BITS, StoreError, StoredMessage, StoredSession, WriteOp,
};
pub use hex::{from_hex, to_hex};
pub use identity::{Identity, Principal, Role, Secret, UnknownRole};
pub use location::{Fix, Location, LocationError};
pub use map::{Bbox, BboxError, MapDiff, MapParseError, MapPositions, MapSnapshot, Position};
pub use map_id::MapIds;
pub use message::{Delivery, Message, MessageProps, QoS};
pub use source::{SourceBuckets, source_key};
pub use subscription::{RetainHandling, SubscriptionOptions};
pub use topic::{
    MAP_ROOT, SharedFilter, TopicError, TopicFilter, TopicLimits, TopicName, filter_matches,
};
