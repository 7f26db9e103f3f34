//! The MQTT adapter: MQTT 3.1.1 and 5.0 on one port over TCP, TLS (rustls)
//! and WebSocket (ntex), translating packets into broker calls. 3.1.1
//! connections run on a loop of mapcast's own over ntex-mqtt's codec, 5.0
//! connections on ntex-mqtt's dispatcher.
//!
//! ntex needs its own runtime: the server runs on the `mapcast-mqtt` thread in
//! its own ntex `System` (tokio flavour, signals off), and ntex's `!Send`
//! connection types never leave this module. Everything else reaches the
//! broker through the `Send` [`BrokerHandle`](crate::broker::BrokerHandle).
//!
//! - `server`: the thread, listeners, TLS and the WebSocket upgrade.
//! - `admission`: connection cap and per-address connect rate, before CONNECT.
//! - `proxied`: the PROXY protocol header, when on: the client behind a balancer.
//! - `framing`: whole packets only to the codec; malformed PUBLISH headers refused.
//! - `connect_check`: CONNECTs ntex-mqtt would mishandle, answered before it reads them.
//! - `trim`: the memory of closed connections handed back to the system.
//! - `direct`: the 3.1.1 connection loop: packets, answers and deliveries.
//! - `v5`: handshake, publish, protocol and control services of MQTT 5.0.
//! - `session`: per-connection state and the steps both levels share.
//! - `pump`: a session's outbox → an MQTT 5.0 connection's sink.
//! - `acks`: MQTT 5.0 packets reach the broker, and answers leave, in arrival order.
//! - `qos2`: the receiver side of QoS 2, in front of ntex-mqtt's dispatcher.
//! - `unexpected`: packets a connected client must not send, refused.
//! - `convert`: wire ↔ domain types.
//! - `reason`: every reason code sent to clients, in one place.
//! - `fuzzing`: the packet path without a socket, for `fuzz/` (not an API;
//!   compiled only under cargo-fuzz's `cfg(fuzzing)` and in unit tests, so
//!   the release binary does not carry it).

mod acks;
mod admission;
mod connect_check;
mod convert;
mod direct;
mod framing;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
mod intake;
mod proxied;
mod pump;
mod qos2;
mod reason;
mod server;

pub(crate) use server::load_tls;
mod session;
mod trim;
mod unexpected;
mod v5;

use std::net::TcpListener;
use std::path::PathBuf;

/// Sockets the MQTT server serves, bound by the caller (port 0 allowed).
pub struct MqttListeners {
    /// Plain MQTT (1883).
    pub tcp: TcpListener,
    /// MQTT over TLS (8883) with its certificate files.
    pub tls: Option<(TcpListener, TlsFiles)>,
    /// MQTT over WebSocket: HTTP upgrade on any path (`/mqtt` by convention),
    /// subprotocol `mqtt`.
    pub ws: Option<TcpListener>,
    /// PROXY protocol on every listener, from these trusted networks only;
    /// `None`: off.
    pub proxy_trusted: Option<Vec<crate::proxy_protocol::Network>>,
}

/// PEM files for the TLS listener.
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A running MQTT server: the ntex server handle and its thread.
pub struct MqttServer {
    server: ntex::server::Server,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What the connections share: the token that tells them to close with
    /// "server shutting down", the broker that kicks the attached ones, the
    /// count of open ones to wait for at stop.
    ctx: session::Ctx,
}
