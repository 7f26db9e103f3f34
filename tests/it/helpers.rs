//! Test harness: the application in-process on port 0 with an isolated data
//! directory, plus clients that own every wire detail so tests read as
//! Arrange / Act / Assert.
//!
//! - [`spawn_app`] / [`spawn_app_with`]: the same `Application` `main` builds.
//! - [`V3Client`] / [`V5Client`]: rumqttc clients whose event loop runs in a task
//!   and forwards what the broker sends over a channel.
//! - [`RawConn`]: a bare MQTT connection for the failure paths and for flows a
//!   well-behaved client library will not produce (half-finished QoS 2,
//!   withheld acknowledgements, invalid packets).
//! - [`ServerProcess`]: the real binary, for kill -9 tests.

mod api;
mod binary;
mod browser;
mod cluster;
mod es_bulk;
mod inbox;
mod locations;
mod numbered;
mod otlp;
mod pg_cluster;
mod postgres;
mod probe;
mod raw;
mod raw_http;
mod redis;
mod v3;
mod v5;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use std::sync::mpsc as std_mpsc;

use mapcast::config::Settings;
use mapcast::startup::Application;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use api::{Api, DeviceCreds, PASSWORD, add_admin, expect_json, expect_problem, mapcast_cli};
pub use binary::ServerProcess;
pub use browser::{Browser, OffServer, browser_available, mark_browser_ran};
pub use cluster::{Cluster, FixedCluster};
pub use es_bulk::{AdminCall, EsBulk};
pub use locations::{MAP_WAIT, Sse, an_hour_ago_ms, fast_map, feature_ids, location, location_at};
pub use numbered::publish_numbered;
pub use otlp::{ExportedPoint, OtlpReceiver};
pub use pg_cluster::{PgCluster, mark_pg_cluster_ran};
pub use postgres::{fresh_postgres_database, mark_postgres_ran, postgres_test_url};
pub use probe::{metric, rss_kib, wait_for_metric};
pub use raw::{RawConn, RawEnd, packet_type, qos0_publish};
pub use raw_http::{RawAnswer, RawHttp};
pub use redis::{RedisServer, mark_redis_ran};
pub use v3::{V3Client, V3Options};
pub use v5::{V5Client, V5Options, topic as v5_topic, will_properties};

/// Upper bound for something that must arrive; only reached when a test fails.
pub const RECV: Duration = Duration::from_secs(3);
/// How long a test watches for something that must not arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// The application under test, serving until dropped.
///
/// It runs on its own thread and tokio runtime, as in production where the
/// clients are other processes: the test's runtime (and its clients) can end
/// or stall without taking the server's tasks with it, and dropping the app
/// shuts it down in order instead of abandoning it mid-flight.
pub struct TestApp {
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
    pub mqtts_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    stopped: Option<std_mpsc::Receiver<anyhow::Result<()>>>,
    // Deleted on drop, after the server has stopped.
    _data_dir_guard: Option<tempfile::TempDir>,
}

/// Start the application with test defaults (loopback, port 0, temp data dir).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Start the application after `configure` adjusted the test defaults.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("create temp data dir");
    let mut app = spawn_app_in(dir.path(), configure).await;
    app._data_dir_guard = Some(dir);
    app
}

/// Start the application on an existing data directory (the caller owns it).
pub async fn spawn_app_in(data_dir: &Path, configure: impl FnOnce(&mut Settings)) -> TestApp {
    init_test_logging();
    let mut settings = Settings::default();
    settings.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.data_dir = data_dir.to_path_buf();
    // Every test client comes from 127.0.0.1: one address's limits would
    // stand in for the whole internet's. Tests of those limits set them.
    settings.broker.limits.connect_burst_per_ip = 1_000;
    settings.auth.hashing.rate_per_address = 0.0;
    configure(&mut settings);

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let (built_tx, built_rx) = oneshot::channel();
    let (stopped_tx, stopped_rx) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("test-app".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("build the app's runtime");
            let result = runtime.block_on(async move {
                let app = match Application::build(settings).await {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = built_tx.send(Err(format!("{e:#}")));
                        return Ok(());
                    }
                };
                let _ = built_tx.send(Ok((
                    app.mqtt_addr(),
                    app.http_addr(),
                    app.ws_addr(),
                    app.mqtts_addr(),
                )));
                app.run_until_stopped(token).await
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
            let _ = stopped_tx.send(result);
        })
        .expect("spawn the app thread");

    let (mqtt_addr, http_addr, ws_addr, mqtts_addr) = match built_rx.await {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => panic!("Application::build failed: {e}"),
        Err(_) => panic!("the app thread died while building"),
    };
    TestApp {
        mqtt_addr,
        http_addr,
        ws_addr,
        mqtts_addr,
        shutdown,
        stopped: Some(stopped_rx),
        _data_dir_guard: None,
    }
}

/// How long a stopping app may take before the test gives up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

impl TestApp {
    /// Options for an MQTT 3.1.1 client of this app.
    pub fn v3(&self, client_id: &str) -> V3Options {
        V3Options::new(client_id, self.mqtt_addr)
    }

    /// A connected MQTT 3.1.1 client (panics if the broker refuses it).
    pub async fn v3_client(&self, client_id: &str, clean_session: bool) -> V3Client {
        self.v3(client_id).clean_session(clean_session).connect().await
    }

    /// Options for an MQTT 5 client of this app.
    pub fn v5(&self, client_id: &str) -> V5Options {
        V5Options::new(client_id, self.mqtt_addr)
    }

    /// A connected MQTT 5 client (panics if the broker refuses it).
    pub async fn v5_client(
        &self,
        client_id: &str,
        clean_start: bool,
        session_expiry: Option<u32>,
    ) -> V5Client {
        self.v5(client_id).clean_start(clean_start).session_expiry(session_expiry).connect().await
    }

    /// A bare TCP connection to the MQTT listener.
    pub async fn raw(&self) -> RawConn {
        RawConn::connect(self.mqtt_addr).await
    }

    /// `GET http://{http_addr}{path}`.
    pub async fn http_get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("http://{}{}", self.http_addr, path))
            .timeout(RECV)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
    }

    /// Shut the app down and wait until it has; panics if it failed or hung.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let stopped = self.stopped.take().expect("stopped once");
        let result =
            tokio::task::spawn_blocking(move || stopped.recv_timeout(STOP_TIMEOUT)).await.unwrap();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the app stopped with an error: {e:#}"),
            Err(_) => panic!("the app did not stop within {STOP_TIMEOUT:?} of cancellation"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(stopped) = self.stopped.take()
            && stopped.recv_timeout(STOP_TIMEOUT).is_err()
        {
            eprintln!(
                "warning: the app did not stop within {STOP_TIMEOUT:?}; leaving its thread behind"
            );
        }
    }
}

/// `TEST_LOG=1 cargo test` shows the server's logs (filter with `RUST_LOG`).
fn init_test_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
    });
}

/// A rumqttc TLS transport trusting only `ca` (DER). The crypto provider is
/// named explicitly: more than one is compiled in, so there is no default.
pub fn tls_transport(ca: &[u8]) -> rumqttc::Transport {
    use rumqttc::tokio_rustls::rustls::{self, pki_types::CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.to_vec())).expect("add the test CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM
/// files into `dir`; returns (cert path, key path, cert DER).
pub async fn self_signed_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generate a test certificate");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    tokio::fs::write(&cert_path, certified.cert.pem()).await.unwrap();
    tokio::fs::write(&key_path, certified.key_pair.serialize_pem()).await.unwrap();
    (cert_path, key_path, certified.cert.der().to_vec())
}

/// Payloads as text, for readable assertions.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
