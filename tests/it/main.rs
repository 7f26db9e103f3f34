//! The integration suite: the real server on port 0, driven over real sockets
//! by tokio-native MQTT clients (rumqttc) and, where a test needs exact control
//! of the wire, by a small raw MQTT connection.
//!
//! One module per capability; `helpers` owns every wire detail.

mod helpers;

mod abuse;
mod accounts;
mod acl;
mod acl_matrix;
mod bench;
mod browser;
mod chaos;
mod cluster;
mod cluster_chaos;
mod cluster_deadnode;
mod cluster_shared;
mod cluster_takeover;
mod commit_outcome;
mod connect;
mod crash;
mod db_outage;
mod deploy;
mod disk_full;
mod durability;
mod durable_acks;
mod elastic;
mod elk_files;
mod es_setup;
mod exactly_once;
mod first_day;
mod flags;
mod health;
mod history;
mod http_conformance;
mod identities;
mod interop;
mod locations;
mod lockout;
mod logstash;
mod map;
mod metrics;
mod nul_strings;
mod ordering;
mod otlp;
mod page_assets;
mod phone_apps;
mod position_api;
mod postgres;
mod proxy_protocol;
mod pubsub;
mod readme_recipe;
mod restart;
mod retained;
mod secrets;
mod session_bounds;
mod sessions;
mod several_instances;
mod shared;
mod shares;
mod shutdown;
mod slow_consumer;
mod spool_bound;
mod sse;
mod storms;
mod sys;
mod tls;
mod topics;
mod trust;
mod v5_features;
mod websocket;
mod will;
mod wire;
mod wire_order;
