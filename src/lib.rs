//! mapcast: a live-location service in one process — an MQTT broker, a REST API
//! whose resources are the broker's topics, a map updater and telemetry.
//!
//! The folder tree is the architecture: `domain` holds pure wire-independent
//! types, `broker` owns all broker state, `mqtt` and `http` are thin inbound
//! adapters over it, `store` is the database, `cluster` joins instances
//! through Redis, `telemetry` the observability. The load generator is a
//! crate of its own (`bench/`, `mapcast-bench`).

pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod flags;
pub mod http;
pub mod identities;
pub mod instance_lock;
pub mod locations;
pub mod mqtt;
pub mod phones;
pub mod proxy_protocol;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod updater;
