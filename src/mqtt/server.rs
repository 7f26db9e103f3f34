//! The `mapcast-mqtt` thread: an ntex `System` serving the bound listeners
//! (TCP, TLS, WebSocket): MQTT 3.1.1 on mapcast's own connection loop, MQTT
//! 5.0 on ntex-mqtt's dispatcher.

use std::fs::File;
use std::io::{self, BufReader};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ntex::http::body::BodySize;
use ntex::http::header::{SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL};
use ntex::http::{HttpService, Request, RequestHead, Response, StatusCode, h1};
use ntex::io::{Filter, Io, IoBoxed, IoConfig, Layer, Sealed};
use ntex::service::cfg::SharedCfgBuilder;
use ntex::service::{
    Pipeline, Service, ServiceFactory, chain_factory, fn_factory_with_config, fn_service,
};
use ntex::time::{Millis, Seconds};
use ntex::tls::rustls::TlsAcceptor;
use ntex::{SharedCfg, ws};
use ntex_mqtt::{HandshakeError, MqttError, MqttServiceConfig, QoS};
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::framing::WholePackets;
use super::proxied::proxied;
use super::reason::ConnError;
use super::session::Ctx;
use super::{
    MqttListeners, MqttServer, TlsFiles, acks, connect_check, direct, pump, qos2, trim, unexpected,
    v5,
};
use crate::broker::{BrokerHandle, BrokerLimits};
use crate::proxy_protocol::{Network, ProxyProtocol};
use crate::telemetry::names::ERROR_MESSAGE;

/// Time a client has to send CONNECT after the socket opens.
pub(super) const CONNECT_TIMEOUT: Seconds = Seconds(10);
/// How long `stop` waits for connections to take their DISCONNECT and close.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long ntex workers get to shut down.
const WORKER_SHUTDOWN: Millis = Millis(3_000);
/// Upper bound on the whole ntex stop, and on joining the thread.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl MqttServer {
    /// Starts the ntex server on its own named thread ("mapcast-mqtt") in its
    /// own ntex System (ntex `tokio` runtime feature; `.disable_signals()`),
    /// serving already-bound listeners.
    #[allow(
        clippy::disallowed_methods,
        reason = "runs once at startup: reads the TLS files and waits milliseconds for the thread"
    )]
    pub fn start(
        listeners: MqttListeners,
        broker: BrokerHandle,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let MqttListeners { tcp, tls, ws, proxy_trusted } = listeners;
        let tls = match tls {
            Some((listener, files)) => Some((listener, load_tls(&files)?)),
            None => None,
        };
        let admission = Admission::new(broker.limits(), broker.stats().clone());
        let ctx =
            Ctx { broker, shutdown: CancellationToken::new(), open: Arc::new(AtomicUsize::new(0)) };
        trim::spawn(admission.clone(), ctx.shutdown.clone());

        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread_ctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("mapcast-mqtt".into())
            .spawn(move || {
                ntex::rt::System::build()
                    .name("mapcast-mqtt")
                    .disable_signals()
                    .build(ntex::rt::DefaultRuntime)
                    .block_on(async move {
                        let listeners = (tcp, tls, ws, proxy_trusted);
                        match build(listeners, thread_ctx, admission, workers) {
                            Ok(server) => {
                                let _ = tx.send(Ok(server.clone()));
                                // Resolves when the server has stopped.
                                let _ = server.await;
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                            }
                        }
                    });
            })
            .context("cannot spawn the mapcast-mqtt thread")?;
        let server = rx
            .recv()
            .context("the mapcast-mqtt thread exited while starting")?
            .context("cannot start the MQTT server")?;
        tracing::info!(workers, "MQTT server started");
        Ok(Self { server, thread: Some(thread), ctx })
    }

    /// Stop accepting, close connections gracefully, join the thread (bounded wait).
    pub async fn stop(mut self) {
        // Every MQTT 5.0 pump sends DISCONNECT "server shutting down" and
        // closes; 3.1.1 connection loops, which keep no wait on the token,
        // are kicked by the router (and look at the token when they start).
        self.ctx.shutdown.cancel();
        self.ctx.broker.kick_all();
        let deadline = Instant::now() + CLOSE_GRACE;
        while self.ctx.open.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.ctx.open.load(Relaxed);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "MQTT connections still open at stop; dropping them"
            );
        }
        // Let the last DISCONNECTs reach the sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;

        if tokio::time::timeout(STOP_TIMEOUT, self.server.stop(true)).await.is_err() {
            tracing::warn!("MQTT server did not stop in time");
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout(STOP_TIMEOUT, joined).await {
                Ok(Ok(Ok(()))) => tracing::info!("MQTT server stopped"),
                Ok(Ok(Err(_))) => tracing::error!("the mapcast-mqtt thread panicked"),
                Ok(Err(e)) => {
                    tracing::error!({ ERROR_MESSAGE } = %e, "cannot join the mapcast-mqtt thread")
                }
                Err(_) => {
                    tracing::warn!("the mapcast-mqtt thread did not exit in time; leaving it")
                }
            }
        }
    }
}

impl Drop for MqttServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Dropped without `stop`: stop without waiting.
            self.ctx.shutdown.cancel();
            // The stop command is sent by the call; the future only waits for it.
            drop(self.server.stop(false));
        }
    }
}

/// The listeners `build` serves: TCP, TLS with its configuration,
/// WebSocket, and the PROXY protocol's trusted networks when it is on.
type Listeners = (
    TcpListener,
    Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    Option<TcpListener>,
    Option<Vec<Network>>,
);

/// Runs inside the ntex System: register the listeners and start the workers.
/// With the PROXY protocol on, each listener's chain starts with its step
/// (before TLS: the balancer's header precedes the handshake); off, the
/// chains are as if it did not exist.
fn build(
    (tcp, tls, ws, proxy_trusted): Listeners,
    ctx: Ctx,
    admission: Arc<Admission>,
    workers: usize,
) -> io::Result<ntex::server::Server> {
    let limits = ctx.broker.limits().clone();
    let policy =
        |name| proxy_trusted.as_deref().and_then(|trusted| ProxyProtocol::new(name, true, trusted));
    let builder = ntex::server::build()
        .name("mapcast-mqtt")
        .workers(workers.max(1))
        .disable_signals()
        .shutdown_timeout(WORKER_SHUTDOWN);

    let (c, a) = (ctx.clone(), admission.clone());
    let mut builder = match policy("mqtt") {
        None => builder.listen("mqtt", tcp, async move |_| mqtt_over(c.clone(), a.clone()))?,
        Some(p) => builder.listen("mqtt", tcp, async move |_| {
            chain_factory(proxied(p.clone())).and_then(mqtt_over(c.clone(), a.clone()))
        })?,
    }
    .config("mqtt", listener_config("MQTT", &limits));

    if let Some((listener, tls)) = tls {
        let (c, a) = (ctx.clone(), admission.clone());
        builder = match policy("mqtt-tls") {
            None => builder.listen("mqtt-tls", listener, async move |_| {
                tls_then_mqtt(tls.clone(), c.clone(), a.clone())
            })?,
            Some(p) => builder.listen("mqtt-tls", listener, async move |_| {
                chain_factory(proxied(p.clone())).and_then(tls_then_mqtt(
                    tls.clone(),
                    c.clone(),
                    a.clone(),
                ))
            })?,
        }
        .config("mqtt-tls", listener_config("MQTT-TLS", &limits));
    }
    if let Some(listener) = ws {
        let c = ctx.clone();
        builder = match policy("mqtt-ws") {
            None => builder.listen("mqtt-ws", listener, async move |_| {
                ws_service(c.clone(), admission.clone())
            })?,
            Some(p) => builder.listen("mqtt-ws", listener, async move |_| {
                chain_factory(proxied(p.clone())).and_then(ws_service(c.clone(), admission.clone()))
            })?,
        }
        .config("mqtt-ws", listener_config("MQTT-WS", &limits));
    }
    Ok(builder.run())
}

/// The TLS handshake, then MQTT over the TLS layer.
fn tls_then_mqtt<F: Filter>(
    tls: Arc<rustls::ServerConfig>,
    ctx: Ctx,
    admission: Arc<Admission>,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = (), InitError = ()> {
    chain_factory(TlsAcceptor::new(tls))
        .map_err(|e: io::Error| {
            tracing::debug!({ ERROR_MESSAGE } = %e, "TLS handshake failed");
        })
        .map_init_err(|_| ())
        .and_then(mqtt_over(ctx, admission))
}

/// Socket read buffer per connection while it reads. ntex's default is
/// 16 KiB; 4 KiB still takes a batch of ~20 position publishes per read, at
/// a quarter of the memory of a busy connection. An idle connection holds
/// none: ntex returns an emptied read buffer to the worker's cache.
const READ_BUF_HIGH: usize = 4 * 1024;
const READ_BUF_LOW: usize = 512;
/// Released read buffers each worker keeps for reuse.
const READ_BUF_CACHE: usize = 256;

/// One listener's ntex configuration: the MQTT settings and the read buffers.
fn listener_config(tag: &'static str, limits: &BrokerLimits) -> SharedCfgBuilder {
    SharedCfg::new(tag).add(service_config(limits)).add(IoConfig::new().set_read_buf(
        READ_BUF_HIGH,
        READ_BUF_LOW,
        READ_BUF_CACHE,
    ))
}

/// ntex-mqtt settings from the broker limits.
fn service_config(limits: &BrokerLimits) -> MqttServiceConfig {
    MqttServiceConfig::new()
        .set_max_qos(QoS::ExactlyOnce)
        .set_max_size(limits.max_packet_bytes)
        .set_max_receive(limits.receive_maximum)
        .set_max_receive_size((limits.max_packet_bytes as usize).max(64 * 1024))
        .set_max_topic_alias(limits.max_topic_alias)
        // Payloads are never streamed: `framing` hands the codec whole
        // packets only, and `qos2` relies on it.
        .set_min_chunk_size(limits.max_packet_bytes)
        .set_max_send(limits.max_inflight)
        .set_handle_qos_after_disconnect(Some(QoS::AtLeastOnce))
        .set_connect_timeout(CONNECT_TIMEOUT)
}

/// The MQTT service over one transport: admission (connection cap and
/// connect rate), the checks on the raw CONNECT (`connect_check`), then the
/// protocol: MQTT 3.1.1 on `direct`'s connection loop, MQTT 5.0 on
/// ntex-mqtt's dispatcher behind the framing layer (whole packets only,
/// `framing`) with connection errors logged; anything else is closed.
/// The admission permit lives as long as the connection.
fn mqtt_over<F: Filter>(
    ctx: Ctx,
    admission: Arc<Admission>,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = (), InitError = ()> {
    let stats = ctx.broker.stats().clone();
    let max_packet = ctx.broker.limits().max_packet_bytes;
    let dispatched = chain_factory::<_, IoBoxed, _, _>(mqtt_service(ctx.clone()))
        .map_err(log_conn_error)
        .map_init_err(|_| ());
    fn_factory_with_config(async move |cfg: SharedCfg| {
        let dispatched = Pipeline::new(dispatched.create(cfg).await?);
        let (admission, stats, ctx) = (admission.clone(), stats.clone(), ctx.clone());
        Ok::<_, ()>(fn_service(async move |io: Io<F>| {
            let io = IoBoxed::from(io);
            // Boxed, as each path below: what a step waits with is freed
            // when it is done, not kept in the connection's future.
            let admitted = Box::pin(async {
                let permit = admission.admit(&io).await?;
                let io = connect_check::check(io, &stats, max_packet).await.ok()?;
                Some((io, permit))
            });
            let Some((io, _permit)) = admitted.await else { return Ok(()) };
            match io.with_read_buf(|buf| direct::connect_level(buf)) {
                // The loop frames packets itself; the dispatcher needs the
                // framing layer (see `framing`).
                Some(direct::LEVEL_311) => Box::pin(direct::serve_v3(io, &ctx)).await,
                Some(direct::LEVEL_5) => {
                    let io = Io::<Sealed>::from(io).add_filter(WholePackets::new(max_packet));
                    let io = IoBoxed::from(io);
                    return Box::pin(dispatched.call(io)).await;
                }
                // Not a CONNECT, not MQTT, or none within the connect timeout.
                _ => {
                    tracing::info!("MQTT handshake failed: no MQTT 3.1.1 or 5.0 CONNECT");
                    let _ = ntex::time::timeout(Millis(1_000), io.shutdown()).await;
                }
            }
            Ok(())
        }))
    })
}

/// MQTT 5.0 on ntex-mqtt's dispatcher, over any transport.
fn mqtt_service(
    ctx: Ctx,
) -> impl ServiceFactory<IoBoxed, SharedCfg, Response = (), Error = MqttError<ConnError>, InitError = ()>
{
    let c5 = ctx;
    ntex_mqtt::v5::MqttServer::new(async move |h| v5::handshake(&c5, h).await)
        .control(v5::control_factory())
        .protocol(v5::protocol_factory())
        .middleware(qos2::InboundQos2V5)
        .middleware(pump::RefusedReceiptsV5)
        .middleware(unexpected::UnexpectedV5)
        .middleware(acks::InOrderV5)
        .publish(v5::publish_factory())
}

/// Connection-level failures our handlers did not already log.
fn log_conn_error(err: MqttError<ConnError>) {
    match err {
        MqttError::Handshake(HandshakeError::Timeout) => {
            tracing::debug!("MQTT handshake timed out")
        }
        MqttError::Handshake(HandshakeError::Disconnected(_)) => {}
        MqttError::Handshake(HandshakeError::Protocol(e)) => {
            tracing::info!({ ERROR_MESSAGE } = %e, "MQTT handshake failed");
        }
        MqttError::Handshake(HandshakeError::Service(e)) | MqttError::Service(e) => {
            tracing::debug!({ ERROR_MESSAGE } = %e, "MQTT connection closed");
        }
    }
}

/// Load the certificate chain and key for the TLS listener (at startup, before
/// any runtime serves connections).
#[allow(clippy::disallowed_methods, reason = "startup only, before serving")]
pub(crate) fn load_tls(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let open = |path: &std::path::Path| -> anyhow::Result<BufReader<File>> {
        Ok(BufReader::new(
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ))
    };
    let certs = rustls_pemfile::certs(&mut open(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read certificates from {}", files.cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate found in {}", files.cert.display());
    let key = rustls_pemfile::private_key(&mut open(&files.key)?)
        .with_context(|| format!("cannot read the private key from {}", files.key.display()))?
        .with_context(|| format!("no private key found in {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("invalid TLS certificate or key")?;
    Ok(Arc::new(config))
}

/// MQTT over WebSocket: an HTTP/1 service whose only useful request is the
/// upgrade; the upgraded stream runs the same MQTT service.
fn ws_service<F: Filter>(
    ctx: Ctx,
    admission: Arc<Admission>,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = (), InitError = ()> {
    let max_frame = (ctx.broker.limits().max_packet_bytes as usize).max(64 * 1024) + 16;
    HttpService::new(fn_service(async |_: Request| {
        Ok::<_, io::Error>(
            Response::build(StatusCode::UPGRADE_REQUIRED)
                .header(ntex::http::header::UPGRADE, "websocket")
                .body("MQTT over WebSocket: upgrade with subprotocol \"mqtt\""),
        )
    }))
    .h1_control(fn_factory_with_config(async move |cfg: SharedCfg| {
        let mqtt = Pipeline::new(
            mqtt_over(ctx.clone(), admission.clone())
                .create(cfg)
                .await
                .map_err(|()| WsInitError)?,
        );
        Ok::<_, WsInitError>(fn_service(async move |msg: h1::Control<F, io::Error>| {
            Ok::<_, io::Error>(match msg {
                h1::Control::Upgrade(up) => upgrade(up, mqtt.clone(), max_frame),
                other => other.ack(),
            })
        }))
    }))
    .map_err(|e| tracing::debug!({ ERROR_MESSAGE } = %e, "MQTT over WebSocket: HTTP error"))
    .map_init_err(|()| ())
}

#[derive(Debug)]
struct WsInitError;

fn upgrade<F, S>(
    up: h1::control::Upgrade<F>,
    mqtt: Pipeline<S>,
    max_frame: usize,
) -> h1::ControlAck<F>
where
    F: Filter,
    S: Service<Io<Layer<ws::WsTransport, F>>, Response = (), Error = ()> + 'static,
{
    if let Err(e) = ws::verify_handshake(up.get_ref().head()) {
        tracing::debug!({ ERROR_MESSAGE } = %e, "MQTT over WebSocket: bad upgrade request");
        return up.fail(e);
    }
    up.handle(move |req, io, codec| async move {
        let offered = req.head().headers.get(SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
        let res = ws_response(req.head(), ws_subprotocol(offered));
        if io.send(h1::Message::Item((res.drop_body(), BodySize::None)), &codec).await.is_err() {
            return;
        }
        let io = ws::WsTransport::create(io, ws::Codec::new().max_size(max_frame));
        let _ = mqtt.call(io).await;
    })
}

/// The 101 response, with the MQTT subprotocol when the client offered it
/// (browsers and rumqttc drop the connection otherwise).
fn ws_response(req: &RequestHead, subprotocol: Option<&'static str>) -> Response {
    let accept = req
        .headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|key| ws::hash_key(key.as_ref()).ok())
        .unwrap_or_default();
    let mut res = Response::build(StatusCode::SWITCHING_PROTOCOLS);
    res.upgrade("websocket").no_chunking().header(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = subprotocol {
        res.header(SEC_WEBSOCKET_PROTOCOL, p);
    }
    res.finish()
}

/// The subprotocol to answer: `mqtt`, or the legacy `mqttv3.1` (old Paho
/// clients), when offered.
fn ws_subprotocol(offered: Option<&str>) -> Option<&'static str> {
    let mut legacy = None;
    for p in offered?.split(',').map(str::trim) {
        if p.eq_ignore_ascii_case("mqtt") {
            return Some("mqtt");
        }
        if p.eq_ignore_ascii_case("mqttv3.1") {
            legacy = Some("mqttv3.1");
        }
    }
    legacy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_subprotocol_prefers_mqtt() {
        assert_eq!(ws_subprotocol(Some("mqtt")), Some("mqtt"));
        assert_eq!(ws_subprotocol(Some("mqttv3.1, MQTT")), Some("mqtt"));
        assert_eq!(ws_subprotocol(Some("mqttv3.1")), Some("mqttv3.1"));
        assert_eq!(ws_subprotocol(Some("graphql-ws")), None);
        assert_eq!(ws_subprotocol(None), None);
    }

    #[test]
    fn service_config_follows_the_limits() {
        let limits = BrokerLimits::default();
        let cfg = format!("{:?}", service_config(&limits));
        assert!(cfg.contains("max_qos: ExactlyOnce"), "{cfg}");
        assert!(cfg.contains(&format!("max_size: {}", limits.max_packet_bytes)), "{cfg}");
        assert!(cfg.contains(&format!("max_receive: {}", limits.receive_maximum)), "{cfg}");
        assert!(cfg.contains(&format!("max_topic_alias: {}", limits.max_topic_alias)), "{cfg}");
        assert!(cfg.contains("handle_qos_after_disconnect: Some(AtLeastOnce)"), "{cfg}");
    }

    #[test]
    fn missing_tls_files_are_reported_with_their_path() {
        let files =
            TlsFiles { cert: "/nonexistent/cert.pem".into(), key: "/nonexistent/key.pem".into() };
        let err = load_tls(&files).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/cert.pem"), "{err:#}");
    }

    #[test]
    #[allow(clippy::disallowed_methods, reason = "test fixture")]
    fn tls_config_loads_from_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, TEST_CERT).unwrap();
        std::fs::write(&key, TEST_KEY).unwrap();
        load_tls(&TlsFiles { cert, key }).unwrap();
    }

    // A self-signed EC P-256 certificate for `localhost`, for tests only.
    const TEST_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUXb+1Op6hmLNtFCZdIDXbzSaP1tUwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNTExMDk0MVoYDzIxMjYxMTAx
MTEwOTQxWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARUpsUFUdcY4ugwqx1+9HviahCaZf31Tz/RdX/Ao92Sjbjc5umyDn0v
UzyIqG6teAERpKKtKsFHpHVSE4FiDP/4o28wbTAdBgNVHQ4EFgQUOrEWJEfsSF6r
ZSOxS0M02u5WQfkwHwYDVR0jBBgwFoAUOrEWJEfsSF6rZSOxS0M02u5WQfkwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSAAwRQIhAOGKosHX3VN8l3/4rS6pWUWhT03rNCZz/QjJdv3F3cfPAiBq
9D8xKKhGmLeCQvzAZ7fJFqC/OWpJsGqheZOrYEkqcg==
-----END CERTIFICATE-----
";
    const TEST_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeZkXDl4DlH8Gec5w
uPZs4HKUa0N5+JF8x8tTrKTI3GahRANCAARUpsUFUdcY4ugwqx1+9HviahCaZf31
Tz/RdX/Ao92Sjbjc5umyDn0vUzyIqG6teAERpKKtKsFHpHVSE4FiDP/4
-----END PRIVATE KEY-----
";
}
