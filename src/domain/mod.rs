//! Pure domain types, parsed at the edge ("parse, don't validate").

mod client_id;
mod topic;

pub use client_id::ClientId;
pub use topic::{SharedFilter, TopicError, TopicFilter, TopicLimits, TopicName, filter_matches};
