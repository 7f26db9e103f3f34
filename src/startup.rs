//! Wiring: `build()` binds every listener and starts every component;
//! `run_until_stopped()` serves until asked to stop or until a component dies,
//! then shuts everything down in order.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::MapIds;
use anyhow::{Context, anyhow};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::broker::auth::ConfigAuthenticator;
use crate::broker::ports::{SharedFabric, SharedOwnership, SharedPeers};
use crate::broker::{self, BrokerHandle, SharedAuthenticator};
use crate::cluster::{ClusterOwnership, FabricSettings, RedisFabric, RedisPeers};
use crate::config::Settings;
use crate::domain::Role;
use crate::flags::{FlagTimings, Flags};
use crate::http::{self, AppState};
use crate::identities::{DbAuthenticator, Identities, LockoutLifts};
use crate::instance_lock::InstanceLock;
use crate::locations::{HistoryTopics, LocationHook, PositionFeed};
use crate::mqtt::{MqttListeners, MqttServer, TlsFiles};
use crate::shutdown::GRACE;
use crate::store::{self, Backend, HistoryRetention, Store};
use crate::telemetry::{crash, metrics, names, quiet};
use crate::updater::{MapUpdater, MapView};

/// The whole process, built and serving. Tests build the same thing on port 0.
pub struct Application {
    mqtt: MqttServer,
    mqtt_addr: SocketAddr,
    mqtts_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    http: actix_web::dev::ServerHandle,
    http_addr: SocketAddr,
    broker: BrokerHandle,
    store: Store,
    tasks: Tasks,
    stopping: CancellationToken,
    /// Several instances: this run's name, whose lease is given up once
    /// everything is committed at shutdown.
    cluster_instance: Option<String>,
    /// Released when the application is dropped, after shutdown.
    _lock: InstanceLock,
}

/// The long-lived tasks; each is `None` once joined.
struct Tasks {
    http: Option<JoinHandle<std::io::Result<()>>>,
    router: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    updater: Option<JoinHandle<()>>,
    /// Flag refreshes and the canary guard.
    flags: Option<JoinHandle<()>>,
    /// `None` when history is kept forever.
    retention: Option<JoinHandle<()>>,
    /// Lockout lifts requested with `mapcast user unlock`.
    lifts: Option<JoinHandle<()>>,
    /// Warnings about malformed HTTP requests, one per interval.
    malformed: Option<JoinHandle<()>>,
}

impl Application {
    /// Bind, connect, migrate, restore and start. Runs on the tokio runtime
    /// that will own the database pool.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Bind first: a taken port fails fast, before any state is touched.
        let mqtt_listener = bind(settings.mqtt.listen, "MQTT")?;
        let mqtts_listener = settings.mqtt.tls_listen.map(|a| bind(a, "MQTT TLS")).transpose()?;
        let ws_listener = settings.mqtt.ws_listen.map(|a| bind(a, "MQTT WebSocket")).transpose()?;
        let http_listener = bind(settings.http.listen, "HTTP")?;
        let mqtt_addr = mqtt_listener.local_addr()?;
        let mqtts_addr = mqtts_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let ws_addr = ws_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let http_addr = http_listener.local_addr()?;

        tokio::fs::create_dir_all(&settings.data_dir).await.with_context(|| {
            format!("cannot create data directory {}", settings.data_dir.display())
        })?;
        // Before the database is opened: a second instance must not touch it.
        let lock = InstanceLock::acquire(&settings.data_dir)?;
        let store = Store::connect_with(
            settings.database_url().expose(),
            settings.database.max_connections,
            settings.database.sqlite_synchronous,
        )
        .await?;
        store.migrate().await?;
        let mut restored =
            store.load_broker_state().await.context("cannot restore broker state")?;
        let node_id = node_id(
            settings.cluster.node_id.as_deref(),
            settings.mqtt.listen.port(),
            &settings.data_dir,
        );
        let instance = instance_name(&node_id);
        // Several instances: each holds only the sessions it claimed.
        let ownership = match &settings.cluster.redis_url {
            Some(url) => {
                // The run before this one on this data directory is dead
                // (this one holds its lock): its node id is free at once.
                let previous_run = swap_previous_run(&settings.data_dir, &instance).await;
                Some(
                    ClusterOwnership::start(
                        store.clone(),
                        &node_id,
                        instance.clone(),
                        previous_run.as_deref(),
                        url.expose(),
                        &settings.cluster.stream,
                        &mut restored,
                    )
                    .await
                    .context("cannot claim sessions")?,
                )
            }
            None => None,
        };

        let (writer, writer_task) = store::spawn_writer(
            store.clone(),
            Duration::from_millis(settings.database.commit_interval_ms),
        );
        let identities = Identities::new(store.clone(), settings.identity_settings());
        let auth: SharedAuthenticator = Arc::new(DbAuthenticator::new(
            identities.clone(),
            ConfigAuthenticator::new(
                settings.effective_allow_anonymous(),
                settings.auth.users.clone(),
            ),
            settings.acl_policy()?,
        ));
        // Every publish (MQTT or REST) passes the location hook: validation,
        // latest position and history, and the feed of the map updater.
        let history_topics =
            HistoryTopics::parse(&settings.history.topics, settings.broker.limits.topic_limits())?;
        let feed = Arc::new(PositionFeed::default());
        let hook =
            Arc::new(LocationHook::new(history_topics.clone(), feed.clone(), settings.locations));
        let fabric = match &settings.cluster.redis_url {
            Some(url) => Some(
                RedisFabric::start(
                    FabricSettings {
                        redis_url: url.expose().to_owned(),
                        node: instance.clone(),
                        node_id,
                        stream: settings.cluster.stream.clone(),
                        max_len: settings.cluster.stream_max_len,
                    },
                    store.clone(),
                    Arc::new(writer.clone()),
                )
                .await?,
            ),
            None => None,
        };
        // Several instances: shared groups and `$SYS/cluster` totals.
        let peers = match &settings.cluster.redis_url {
            Some(url) => Some(RedisPeers::new(url.expose(), &settings.cluster.stream, &instance)?),
            None => None,
        };
        let (broker, router_task) = broker::spawn_router(
            settings.broker.limits.clone(),
            auth,
            Arc::new(writer.clone()),
            restored,
            Duration::from_secs(settings.broker.sys_interval_secs),
            Some(hook),
            fabric.as_ref().map(|(f, ..)| Arc::new(f.clone()) as SharedFabric),
            ownership.as_ref().map(|(o, _)| Arc::new(o.clone()) as SharedOwnership),
            peers.as_ref().map(|(p, _)| Arc::new(p.clone()) as SharedPeers),
        );
        let map_view = MapView::default();
        let map_ids = if settings.effective_public_map_ids() {
            Some(MapIds::new(store.server_key("map_ids").await.context("reading the map id key")?))
        } else {
            None
        };
        let mut updater = MapUpdater::load(
            &settings.map,
            settings.effective_default_visibility(),
            map_ids.clone(),
            broker.clone(),
            store.clone(),
            feed,
            map_view.clone(),
        )
        .await?;
        // Other instances may share a PostgreSQL database (an embedded
        // SQLite one is this process's alone): one of them builds the map.
        if store.backend() == Backend::Postgres {
            updater = updater.shared_as(instance.clone());
        }

        let flags = Flags::load(
            store.clone(),
            &settings.data_dir,
            FlagTimings {
                refresh: Duration::from_millis(settings.flags.refresh_ms),
                canary_interval: Duration::from_secs(settings.flags.canary_interval_secs),
            },
        )
        .await
        .context("cannot load the feature flags")?;

        metrics::global().set_broker_stats(broker.stats().clone());
        let flag_rows = flags.clone();
        metrics::global()
            .set_flag_rows(metrics::FlagRows(Arc::new(move || flag_rows.document_rows())));
        crash::set_debug_triggers(settings.debug.panic_endpoint);

        let tls = match (mqtts_listener, &settings.mqtt.tls_cert, &settings.mqtt.tls_key) {
            (Some(listener), Some(cert), Some(key)) => {
                Some((listener, TlsFiles { cert: cert.clone(), key: key.clone() }))
            }
            (Some(_), _, _) => {
                unreachable!("Settings::load requires tls_cert and tls_key with tls_listen")
            }
            (None, _, _) => None,
        };
        let proxy_trusted =
            settings.mqtt.proxy_protocol.then(|| settings.mqtt.proxy_trusted.clone());
        let listeners = MqttListeners { tcp: mqtt_listener, tls, ws: ws_listener, proxy_trusted };
        let mqtt = MqttServer::start(listeners, broker.clone(), settings.mqtt.workers)
            .context("cannot start the MQTT server")?;

        let stopping = CancellationToken::new();
        let state = AppState {
            store: store.clone(),
            broker: broker.clone(),
            identities: identities.clone(),
            map: map_view,
            map_ids,
            flags: flags.clone(),
            page: http::PageSettings::new(&settings.map),
            history_topics,
            started_at: Instant::now(),
            fabric: fabric.as_ref().map(|(_, _, health)| health.clone()),
            stopping: stopping.clone(),
        };
        let http_tls = match (&settings.http.tls_cert, &settings.http.tls_key) {
            (Some(cert), Some(key)) => Some(
                crate::mqtt::load_tls(&TlsFiles { cert: cert.clone(), key: key.clone() })
                    .context("cannot load the HTTPS certificate")?,
            ),
            _ => None,
        };
        let http_server = http::build(http_listener, http_tls, state, &settings.http)
            .context("cannot start the HTTP server")?;
        let http = http_server.handle();
        let http_task = tokio::spawn(http_server);
        let updater_task = tokio::spawn(updater.run_until_stopped(stopping.clone()));
        let flags_task = tokio::spawn(flags.run_until_stopped(stopping.clone()));
        let lifts_task = tokio::spawn(
            LockoutLifts::new(identities.clone())
                .with_revocations(broker.clone())
                .run_until_stopped(stopping.clone()),
        );
        let malformed_task = tokio::spawn(quiet::run_until_stopped(stopping.clone()));
        let adopter = fabric.as_ref().map(|(_, reader, _)| reader.adopter());
        if let Some((_, reader, _)) = fabric {
            reader.spawn(broker.clone(), stopping.clone());
        }
        if let Some((_, control)) = ownership {
            control.spawn(broker.clone(), stopping.clone(), adopter);
        }
        if let Some((_, task)) = peers {
            task.spawn(broker.stats().clone(), stopping.clone());
        }
        let retention_task = (settings.history.retention_days > 0).then(|| {
            let retention = HistoryRetention::new(store.clone(), settings.history.retention_days);
            tokio::spawn(retention.run_until_stopped(stopping.clone()))
        });

        tracing::debug!(config = %settings.redacted_digest(), "configuration");
        let admin_command = match identities.users().await {
            Ok(users) if users.iter().any(|u| u.role == Role::Admin) => None,
            // Unknown counts as none: a hint too many costs nothing.
            _ => Some(first_admin_command(&settings)),
        };
        let data_dir =
            std::path::absolute(&settings.data_dir).unwrap_or_else(|_| settings.data_dir.clone());
        let database = store::describe_database(settings.database_url().expose());
        let message = match &admin_command {
            None => "mapcast started".to_owned(),
            Some(cmd) => format!("mapcast started; no admin yet, create one with: {cmd}"),
        };
        tracing::info!(
            { names::MQTT_ADDRESS } = %mqtt_addr,
            { names::MQTTS_ADDRESS } = mqtts_addr.map(tracing::field::display),
            { names::WS_ADDRESS } = ws_addr.map(tracing::field::display),
            { names::HTTP_ADDRESS } = %http_addr,
            { names::DATABASE_BACKEND } = %store.backend(),
            { names::DATABASE_LOCATION } = %database,
            { names::DATA_DIR } = %data_dir.display(),
            { names::ADMIN_COMMAND } = admin_command.as_deref(),
            auth.allow_anonymous = settings.effective_allow_anonymous(),
            "{message}"
        );

        Ok(Self {
            mqtt,
            mqtt_addr,
            mqtts_addr,
            ws_addr,
            http,
            http_addr,
            broker,
            store,
            tasks: Tasks {
                http: Some(http_task),
                router: Some(router_task),
                writer: Some(writer_task),
                updater: Some(updater_task),
                flags: Some(flags_task),
                retention: retention_task,
                lifts: Some(lifts_task),
                malformed: Some(malformed_task),
            },
            stopping,
            cluster_instance: settings.cluster.redis_url.is_some().then_some(instance),
            _lock: lock,
        })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts_addr
    }

    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn broker(&self) -> &BrokerHandle {
        &self.broker
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serve until `shutdown` is cancelled or a core component stops, then
    /// shut down in order within [`GRACE`]. An error means a component died
    /// or the shutdown could not finish.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let t = &mut self.tasks;
        let failure = tokio::select! {
            _ = shutdown.cancelled() => None,
            r = join(&mut t.http) => Some(component_died("http", r)),
            r = join(&mut t.router) => Some(component_died("broker router", r)),
            r = join(&mut t.writer) => Some(component_died("store writer", r)),
            r = join(&mut t.updater) => Some(component_died("map updater", r)),
            r = join(&mut t.flags) => Some(component_died("feature flags", r)),
            r = join(&mut t.retention) => Some(component_died("history retention", r)),
            r = join(&mut t.lifts) => Some(component_died("lockout lifts", r)),
            r = join(&mut t.malformed) => Some(component_died("malformed request reporter", r)),
        };
        tracing::info!("shutting down");
        self.stopping.cancel();

        let Self { mqtt, http, broker, store, mut tasks, cluster_instance, .. } = self;
        let orderly = async move {
            // The background jobs saw `stopping` and end their current step.
            log_exit("map updater", finish(&mut tasks.updater).await);
            log_exit("feature flags", finish(&mut tasks.flags).await);
            log_exit("history retention", finish(&mut tasks.retention).await);
            log_exit("lockout lifts", finish(&mut tasks.lifts).await);
            log_exit("malformed request reporter", finish(&mut tasks.malformed).await);
            // Stop taking MQTT connections and close the open ones, then let
            // the router flush its state; HTTP goes last so /readyz reports
            // the drain (it answers 503 from now on).
            mqtt.stop().await;
            broker.shutdown().await;
            drop(broker);
            http.stop(true).await;
            log_exit("http", finish(&mut tasks.http).await);
            log_exit("broker router", finish(&mut tasks.router).await);
            // The router held the last writer handle: the writer now drains
            // its queue, commits and returns.
            log_exit("store writer", finish(&mut tasks.writer).await);
            // Everything held here is committed: the other instances take
            // its sessions and wills now instead of once the lease lapses,
            // and a client reconnecting elsewhere does not wait for it.
            if let Some(instance) = cluster_instance {
                match store.release_lease(&store::node_lease(&instance), &instance).await {
                    Ok(()) => tracing::info!("this instance's sessions are left to the others"),
                    Err(e) => tracing::warn!(
                        { crate::telemetry::names::ERROR_MESSAGE } = %e,
                        "lease not given up; it lapses by itself"
                    ),
                }
            }
            store.close().await;
        };
        if tokio::time::timeout(GRACE, orderly).await.is_err() {
            tracing::error!(
                grace_secs = GRACE.as_secs(),
                "shutdown did not finish in time; pending writes may be lost"
            );
            return Err(
                failure.unwrap_or_else(|| anyhow!("shutdown did not finish within {GRACE:?}"))
            );
        }
        tracing::info!("shutdown complete");
        failure.map_or(Ok(()), Err)
    }
}

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("cannot bind the {what} listener to {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What a finished task returned, reduced to success or failure.
trait TaskOutput {
    fn into_result(self) -> anyhow::Result<()>;
}

impl TaskOutput for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<E: Into<anyhow::Error>> TaskOutput for Result<(), E> {
    fn into_result(self) -> anyhow::Result<()> {
        self.map_err(Into::into)
    }
}

type Outcome = Result<anyhow::Result<()>, JoinError>;

/// Await a task that has not been joined yet; `None` if it has.
async fn finish<T: TaskOutput>(task: &mut Option<JoinHandle<T>>) -> Option<Outcome> {
    let outcome = task.as_mut()?.await;
    *task = None;
    Some(outcome.map(TaskOutput::into_result))
}

/// Like [`finish`], but a task already joined never completes (for `select!`).
async fn join<T: TaskOutput>(task: &mut Option<JoinHandle<T>>) -> Outcome {
    match finish(task).await {
        Some(outcome) => outcome,
        None => std::future::pending().await,
    }
}

/// Why a task ended, as an error; `None` when it returned successfully.
fn exit_error(outcome: Outcome) -> Option<anyhow::Error> {
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) if e.is_panic() => Some(anyhow!("panicked: {}", panic_message(e.into_panic()))),
        Err(e) => Some(anyhow!("{e}")),
    }
}

/// A core component ended while the process was serving: log which and why.
fn component_died(component: &'static str, outcome: Outcome) -> anyhow::Error {
    let why = exit_error(outcome).unwrap_or_else(|| anyhow!("stopped unexpectedly"));
    tracing::error!(
        { names::COMPONENT } = component,
        { names::ERROR_MESSAGE } = format!("{why:#}"),
        "a core component stopped; shutting down"
    );
    why.context(format!("{component} stopped"))
}

/// A component ended during shutdown: only failures are news.
fn log_exit(component: &'static str, outcome: Option<Outcome>) {
    if let Some(why) = outcome.and_then(exit_error) {
        tracing::error!(
            { names::COMPONENT } = component,
            { names::ERROR_MESSAGE } = format!("{why:#}"),
            "component failed while shutting down"
        );
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// The command that creates the first admin against this server's database.
fn first_admin_command(settings: &Settings) -> String {
    let target = match &settings.database.url {
        None => {
            let dir = std::path::absolute(&settings.data_dir)
                .unwrap_or_else(|_| settings.data_dir.clone());
            format!("--data-dir {}", shell_quote(&dir.display().to_string()))
        }
        Some(url) if url.expose().starts_with("sqlite:") => {
            format!("--database-url {}", shell_quote(url.expose()))
        }
        // Never print a password: the operator fills the credentials in.
        Some(url) => format!(
            "--database-url 'postgres://USER:PASSWORD@{}'",
            store::describe_database(url.expose()).trim_start_matches("postgres ")
        ),
    };
    format!("mapcast user add --username admin --admin --password-stdin {target}")
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Where a run notes its name, so the next run on the same data directory
/// knows its predecessor (see `ClusterOwnership::start`).
const PREVIOUS_RUN_FILE: &str = "cluster-run";

/// This run of this process, unique among instances sharing a database:
/// `cluster.node_id`, then the run's own mark, so
/// a restarted instance is never mistaken for its old self.
fn instance_name(node_id: &str) -> String {
    use rand_core::{OsRng, RngCore};
    format!("{node_id}/{}/{:08x}", std::process::id(), OsRng.next_u32())
}

/// This instance across its runs: `cluster.node_id`; by default the host
/// name and the MQTT listener's port, or, on an ephemeral port, a mark of
/// the data directory (one process per directory): distinct for instances
/// on one host, the same for each across its restarts.
fn node_id(configured: Option<&str>, mqtt_port: u16, data_dir: &std::path::Path) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    #[allow(clippy::disallowed_methods, reason = "read once, at startup")]
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname");
    let host = host.map(|s| s.trim().to_owned()).unwrap_or_default();
    if mqtt_port != 0 {
        return format!("{host}:{mqtt_port}");
    }
    #[allow(clippy::disallowed_methods, reason = "read once, at startup")]
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    // FNV-1a: a short, stable mark (not a secret).
    let mark = dir.as_os_str().as_encoded_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{host}:{:08x}", mark as u32)
}

/// The run name the previous run on `data_dir` noted, replaced by `instance`.
async fn swap_previous_run(data_dir: &std::path::Path, instance: &str) -> Option<String> {
    let path = data_dir.join(PREVIOUS_RUN_FILE);
    let previous = tokio::fs::read_to_string(&path).await.ok().map(|s| s.trim().to_owned());
    if let Err(e) = tokio::fs::write(&path, instance).await {
        tracing::warn!({ crate::telemetry::names::ERROR_MESSAGE } = %e, "this run's name not noted in the data directory; a restart waits for its lease");
    }
    previous.filter(|p| !p.is_empty())
}
