//! One typed settings tree, layered: defaults → TOML file (`--config`) →
//! `MAPCAST_*` environment variables → command-line flags.
//!
//! Loading never reads or mutates the process environment by itself: callers
//! pass the environment in ([`Env`]), so tests layer settings in isolation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::broker::BrokerLimits;
use crate::broker::acl::{AclPolicy, AclRule, AnonymousAcl};
use crate::broker::auth::ConfigUser;
use crate::domain::Secret;
use crate::domain::Visibility;
use crate::identities::lockout::LockoutSettings;
use crate::identities::{HashingSettings, IdentitySettings};
use crate::proxy_protocol::Network;
use crate::store::SqliteSynchronous;

/// The whole configuration. Every section and field has a default, so an
/// empty file (or none) is a valid configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// MQTT listeners.
    pub mqtt: MqttSettings,
    /// The REST API listener.
    pub http: HttpSettings,
    /// Directory for the embedded database and local files. Default `./data`.
    pub data_dir: PathBuf,
    /// Database connection.
    pub database: DatabaseSettings,
    /// Broker limits and `$SYS` publishing.
    pub broker: BrokerSettings,
    /// Authentication of MQTT clients and API callers.
    pub auth: AuthSettings,
    /// Log output on stdout.
    pub log: LogSettings,
    /// The map updater: how often the snapshot is built and who is on it.
    pub map: MapSettings,
    /// Stored history of selected topics, and how long it is kept.
    pub history: HistorySettings,
    /// Which position timestamps are believed.
    pub locations: LocationSettings,
    /// Metrics, Elasticsearch shipping and its spool.
    pub telemetry: TelemetrySettings,
    /// Switches for verifying the crash reporter; all off by default.
    pub debug: DebugSettings,
    /// Feature flags: how often they are re-read and canaries checked.
    pub flags: FlagSettings,
    /// Several instances as one broker (off unless `redis_url` is set).
    pub cluster: ClusterSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mqtt: MqttSettings::default(),
            http: HttpSettings::default(),
            data_dir: PathBuf::from("./data"),
            database: DatabaseSettings::default(),
            broker: BrokerSettings::default(),
            auth: AuthSettings::default(),
            log: LogSettings::default(),
            map: MapSettings::default(),
            cluster: ClusterSettings::default(),
            history: HistorySettings::default(),
            locations: LocationSettings::default(),
            telemetry: TelemetrySettings::default(),
            debug: DebugSettings::default(),
            flags: FlagSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// Plain TCP listener. Default `127.0.0.1:1883`.
    pub listen: SocketAddr,
    /// TLS listener (MQTT over TLS, usually port 8883); needs `tls_cert` and
    /// `tls_key`. Default: none.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listener. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener. Default: none.
    pub tls_key: Option<PathBuf>,
    /// MQTT-over-WebSocket listener (path `/mqtt`, subprotocol `mqtt`). Default: none.
    pub ws_listen: Option<SocketAddr>,
    /// Worker threads serving MQTT connections. Default 2.
    pub workers: usize,
    /// Every MQTT listener (TCP, TLS, WebSocket) expects a PROXY protocol
    /// header (v1 or v2, e.g. HAProxy `send-proxy-v2`) before anything
    /// else, and takes the client address from it: connect limits and logs
    /// see the client, not the balancer. Connections from outside
    /// `proxy_trusted`, or without a valid header within 3 s, are closed.
    /// Default false.
    pub proxy_protocol: bool,
    /// Networks (`10.0.0.0/8`, `192.0.2.7`, `fd00::/8`) allowed to send a
    /// PROXY protocol header: the load balancers. Needed when
    /// `proxy_protocol` is on. Default: none. Env: comma-separated.
    pub proxy_trusted: Vec<Network>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            ws_listen: None,
            workers: 2,
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// REST API listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Worker threads serving HTTP requests. Default 2.
    pub workers: usize,
    /// PEM certificate chain: with `tls_key`, the API listener speaks HTTPS
    /// (rustls) instead of HTTP. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Milliseconds a client has to send a request's headers once connected;
    /// past it the connection gets 408 and is closed. Default 5000. The
    /// HTTP engine keeps time in half-second ticks, so the cut may come up
    /// to 500 ms early.
    pub head_timeout_ms: u64,
    /// Milliseconds a client has to send a request's whole body once its
    /// headers are in; past it the request gets a 408 problem and the
    /// connection is closed. Default 15000.
    pub body_timeout_ms: u64,
    /// HTTP connections open at once (SSE streams included), split evenly
    /// among the workers; past it new connections wait in the listen backlog
    /// until one closes. Keep it below the process's open-files limit, which
    /// MQTT shares. Default 4096.
    pub max_connections: usize,
    /// Server-Sent Events streams one signed-in user may hold open at once;
    /// the next gets 429. 0: no limit. Default 8.
    pub max_sse_streams_per_user: usize,
    /// Server-Sent Events streams one source address (IPv6: one /64) may
    /// hold open at once, whoever is signed in; the next gets 429. Phones
    /// behind one carrier NAT share an address. 0: no limit. Default 32.
    pub max_sse_streams_per_address: usize,
    /// Origins (`https://app.example.org`, scheme, host and port exactly as
    /// a browser sends `Origin`) whose pages may call the API from another
    /// origin (CORS); `"*"` for any. Default: none (same origin only).
    /// Env: comma-separated.
    pub cors_origins: Vec<String>,
    /// The API listener expects a PROXY protocol header (v1 or v2) before
    /// each connection's first request and takes the client address from
    /// it, for per-address limits (sign-in throttles and lockouts, SSE
    /// streams per address) and logs. Connections from outside
    /// `proxy_trusted`, or without a valid header within 3 s, are closed.
    /// Default false.
    pub proxy_protocol: bool,
    /// Networks allowed to send a PROXY protocol header on the API
    /// listener. Needed when `proxy_protocol` is on. Default: none. Env:
    /// comma-separated.
    pub proxy_trusted: Vec<Network>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 2,
            tls_cert: None,
            tls_key: None,
            head_timeout_ms: 5000,
            body_timeout_ms: 15_000,
            max_connections: 4096,
            max_sse_streams_per_user: 8,
            max_sse_streams_per_address: 32,
            cors_origins: Vec::new(),
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`. Never logged.
    /// Default `sqlite://{data_dir}/mapcast.db`.
    pub url: Option<Secret>,
    /// Most pooled connections. Default 10.
    pub max_connections: u32,
    /// Least milliseconds between two commits of broker writes while they
    /// keep coming: a steady stream shares transactions instead of paying
    /// one each, at the cost of up to this much on QoS 1/2 acknowledgements.
    /// 0 commits as soon as the previous commit ends. Default 1.
    pub commit_interval_ms: u64,
    /// SQLite only: `full` fsyncs every commit, so an acknowledged QoS 1/2
    /// publish (or session change) survives power loss and OS crashes;
    /// `normal` fsyncs at WAL checkpoints only, faster, but power loss can
    /// lose the last acknowledged commits (a killed process loses nothing
    /// either way). Default `full`.
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            commit_interval_ms: 1,
            sqlite_synchronous: SqliteSynchronous::Full,
        }
    }
}

/// Broker limits (see [`BrokerLimits`] for each field and its default) plus
/// `$SYS` publishing, all in the `[broker]` table.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerSettings {
    #[serde(flatten)]
    pub limits: BrokerLimits,
    /// Seconds between `$SYS/broker/...` statistics publishes. Default 10.
    pub sys_interval_secs: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self { limits: BrokerLimits::default(), sys_interval_secs: 10 }
    }
}

// Hand-written because serde ignores `deny_unknown_fields` under `flatten`:
// take our own key out, then let `BrokerLimits` reject typos itself.
impl<'de> Deserialize<'de> for BrokerSettings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let sys_interval_secs = match table.remove("sys_interval_secs") {
            None => Self::default().sys_interval_secs,
            Some(v) => u64::deserialize(v).map_err(D::Error::custom)?,
        };
        let limits =
            BrokerLimits::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(Self { limits, sys_interval_secs })
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Whether clients may connect without a user name. Default: allowed only
    /// when every listener is bound to a loopback address (like Mosquitto 2).
    pub allow_anonymous: Option<bool>,
    /// What anonymous clients may do: `all` (publish and subscribe anywhere
    /// but `$`-topics) or `read_map` (subscribe to `map/#` only). Default:
    /// `all` when every listener is on loopback, else `read_map`.
    pub anonymous_acl: Option<AnonymousAcl>,
    /// Users defined here, each `{ username, password_hash, role }` with an
    /// argon2id hash from `mapcast hash-password`. Default: none.
    pub users: Vec<ConfigUser>,
    /// Lifetime of the bearer tokens `POST /api/v1/sessions` issues, in
    /// seconds. Default 86400 (24 h).
    pub token_ttl_secs: u64,
    /// Whether anyone may create an account with `POST /api/v1/users`; when
    /// off only admins can. Default: on only when every listener is bound to
    /// a loopback address (like anonymous access): off loopback a stranger
    /// who signs up would read the whole map.
    pub self_registration: Option<bool>,
    /// Extra ACL rules, each `{ role, action, filter, effect }`: `role`
    /// (`admin`, `user`, `device`, `anonymous`) may (`effect = "allow"`, the
    /// default) or may not (`effect = "deny"`) `action` (`publish`,
    /// `subscribe`, `both`) on topics matching `filter`. Deny rules win over
    /// built-in and allow rules whatever their order; a subscription is
    /// refused when its filter can match a denied topic. Default: none.
    pub acl: Vec<AclRule>,
    /// Brute-force protection of REST sign-in and MQTT CONNECT (`[auth.lockout]`).
    pub lockout: LockoutSettings,
    /// The bounded password hashing pool and the per-address rate of REST
    /// sign-ups and sign-ins (`[auth.hashing]`).
    pub hashing: HashingSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            allow_anonymous: None,
            anonymous_acl: None,
            users: Vec::new(),
            token_ttl_secs: 24 * 3600,
            self_registration: None,
            acl: Vec::new(),
            lockout: LockoutSettings::default(),
            hashing: HashingSettings::default(),
        }
    }
}

// Password hashes are secrets too: show who, not how.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<_> = self.users.iter().map(|u| (&u.username, u.role)).collect();
        f.debug_struct("AuthSettings")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("anonymous_acl", &self.anonymous_acl)
            .field("users", &users)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("self_registration", &self.self_registration)
            .field("acl", &self.acl)
            .field("lockout", &self.lockout)
            .field("hashing", &self.hashing)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (ECS lines, for machines), `pretty` (for humans) or `auto`
    /// (pretty when stdout is a terminal, else JSON). Default `auto`.
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `debug,sqlx=info`. A bare
    /// level applies to mapcast; dependencies log at `warn` unless named.
    /// Default `info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Auto, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            "auto" => Ok(Self::Auto),
            _ => bail!("expected `auto`, `json` or `pretty`, got {s:?}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Seconds between metrics documents shipped to Elasticsearch. Default 10.
    pub metrics_interval_secs: u64,
    /// Documents waiting in memory for the shipper; more are dropped and
    /// counted, never waited for. Default 16384.
    pub queue_capacity: usize,
    /// Bound of the on-disk spool (`{data_dir}/telemetry/spool/`) that holds
    /// documents while Elasticsearch is unreachable; past it the oldest
    /// segment is dropped and counted. Default 268435456 (256 MiB).
    pub spool_max_bytes: u64,
    /// Crash reports kept in `{data_dir}/crashes/`; before a new one is
    /// written the oldest go, so a crash loop cannot fill the disk and the
    /// latest crash is always there. At least 1. Default 100.
    pub crash_max_files: usize,
    /// Bytes of crash reports kept, enforced the same way (a report larger
    /// than this alone is shipped but not written). Default 67108864 (64 MiB).
    pub crash_max_bytes: u64,
    /// Direct shipping to Elasticsearch; off unless `url` is set.
    pub elasticsearch: ElasticsearchSettings,
    /// OTLP trace export; off unless `endpoint` is set.
    pub otlp: OtlpSettings,
    /// `host:port` of a Logstash `tcp` input with the `json_lines` codec:
    /// every log line, crash report and metrics document is also written
    /// there (bounded queue, reconnects; dropped and counted when it cannot
    /// keep up). Default: none (off).
    pub logstash_tcp: Option<String>,
    /// `service.version` on every log line and document. Default: the
    /// version of this build.
    pub service_version: Option<String>,
    /// This is a canary build: every log line and document carries
    /// `labels.canary = "true"`, so two builds behind one load balancer can
    /// be compared. Default false.
    pub canary: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            metrics_interval_secs: 10,
            queue_capacity: 16 * 1024,
            spool_max_bytes: 256 * 1024 * 1024,
            crash_max_files: 100,
            crash_max_bytes: 64 * 1024 * 1024,
            elasticsearch: ElasticsearchSettings::default(),
            otlp: OtlpSettings::default(),
            logstash_tcp: None,
            service_version: None,
            canary: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticsearchSettings {
    /// Base URL, e.g. `https://es:9200`. Default: none (shipping off).
    pub url: Option<String>,
    /// Basic-auth user (with `password`). Default: none.
    pub username: Option<String>,
    /// Basic-auth password. Never logged. Default: none.
    pub password: Option<Secret>,
    /// API key, base64 `id:key` as Elasticsearch returns it (`encoded`);
    /// wins over `username`. Never logged. Default: none.
    pub api_key: Option<Secret>,
    /// Data stream namespace: `logs-mapcast.app-{namespace}` etc. Lowercase,
    /// no `-`. Default `default`.
    pub namespace: String,
    /// Write to plain indices (`mapcast-logs-app-{namespace}`, ...) instead of
    /// data streams, for servers without data streams. Default false.
    pub plain_indices: bool,
    /// Most documents in one `_bulk` request. Default 1000.
    pub batch_max_docs: usize,
    /// Milliseconds between flushes of a partial batch. Default 1000.
    pub flush_interval_ms: u64,
    /// Seconds before a `_bulk` request counts as failed. Default 10.
    pub request_timeout_secs: u64,
    /// Longest wait between retries while Elasticsearch fails. Default 30.
    pub max_backoff_secs: u64,
}

impl Default for ElasticsearchSettings {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            api_key: None,
            namespace: "default".into(),
            plain_indices: false,
            batch_max_docs: 1000,
            flush_interval_ms: 1000,
            request_timeout_secs: 10,
            max_backoff_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpSettings {
    /// OTLP/HTTP base URL of an Elastic APM Server (`http://apm:8200`) or an
    /// OpenTelemetry collector (`http://otel:4318`); spans go to
    /// `{endpoint}/v1/traces`, metrics to `{endpoint}/v1/metrics` (every
    /// `metrics_interval_secs`). Default: none (off).
    pub endpoint: Option<String>,
    /// `http/protobuf` or `http/json`. Default `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// `Authorization` header value, e.g. `Bearer SECRET_TOKEN` or
    /// `ApiKey KEY` for an APM Server. Never logged. Default: none.
    pub authorization: Option<Secret>,
    /// Share of new traces exported, 0.0–1.0; a trace continued from a
    /// caller follows the caller's decision. Default 1.0.
    pub sample_ratio: f64,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::default(),
            authorization: None,
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl FromStr for OtlpProtocol {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Ok(Self::HttpJson),
            _ => bail!("expected `http/protobuf` or `http/json`, got {s:?}"),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugSettings {
    /// Enables `POST /api/v1/admin/debug/panic` and the MQTT topic
    /// `$debug/panic`, which panic on purpose to test crash reports.
    /// Default false.
    pub panic_endpoint: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlagSettings {
    /// Milliseconds between re-reads of the flags from the database, so a
    /// change made by another instance or `mapcast flags set` goes live;
    /// at least 100. Default 2000.
    pub refresh_ms: u64,
    /// Seconds between canary checks (each compares the interval's canary
    /// and control traffic); at least 1. Default 30.
    pub canary_interval_secs: u64,
}

impl Default for FlagSettings {
    fn default() -> Self {
        Self { refresh_ms: 2000, canary_interval_secs: 30 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`: instances sharing a PostgreSQL
    /// `database.url` pass publishes to each other's subscribers through
    /// this Redis. Never logged. Default: unset (one instance).
    pub redis_url: Option<Secret>,
    /// This instance's name among the others, in logs and on the stream.
    /// Distinct per instance and the same across its restarts: a restarted
    /// instance passes on the acknowledged publishes it had kept for the
    /// others (see README, "Running several instances"). Default: the host
    /// name and the MQTT listener's port (on an ephemeral port, a mark of
    /// the data directory instead).
    pub node_id: Option<String>,
    /// The Redis stream key publishes travel on. Default `mapcast:messages`.
    pub stream: String,
    /// Entries the stream keeps (approximately): how far an instance that
    /// lost Redis for a while can catch up. Default 1,000,000.
    pub stream_max_len: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            node_id: None,
            stream: "mapcast:messages".into(),
            stream_max_len: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapSettings {
    /// Seconds between map snapshots, 1–300. Default 60.
    pub interval_secs: u64,
    /// Devices whose last position arrived within this many seconds are on
    /// the map. Default 900 (15 minutes).
    pub ttl_secs: u64,
    /// Whether a device is on the shared map when its owner did not say
    /// (`public` or `private`); also for devices not in the database
    /// (anonymous publishers, `[[auth.users]]` devices). Default: `public`
    /// while every listener is on loopback, else `private`.
    pub default_visibility: Option<Visibility>,
    /// Whether the shared map names devices by a public map id (a keyed
    /// hash, stable across restarts and instances) instead of their id,
    /// which is also their MQTT user name. Default: on unless every
    /// listener is on loopback.
    pub public_ids: Option<bool>,
    /// The tile URL template of the page at `/` (Leaflet's `{z}/{x}/{y}`,
    /// optional `{s}`), `http://` or `https://`. Unset: the page draws on a
    /// plain background and requests nothing from anywhere else.
    pub tile_url: Option<String>,
    /// The attribution the tile provider requires, shown on the map.
    pub tile_attribution: Option<String>,
    /// The deepest zoom level the page offers, 1–22. Default 19.
    pub max_zoom: u8,
}

impl Default for MapSettings {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            ttl_secs: 900,
            default_visibility: None,
            public_ids: None,
            tile_url: None,
            tile_attribution: None,
            max_zoom: 19,
        }
    }
}

impl MapSettings {
    /// The origin (`scheme://host[:port]`) tiles come from, for the page's
    /// Content-Security-Policy; `None` without a tile URL.
    pub fn tile_origin(&self) -> Option<String> {
        let url = self.tile_url.as_deref()?;
        let (scheme, rest) = url.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        // `{s}` subdomains: the policy allows any subdomain of the rest.
        let host = host.replace("{s}.", "*.");
        Some(format!("{scheme}://{host}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySettings {
    /// Topic filters whose messages are stored and served by
    /// `GET /api/v1/history/{topic}`. Default `["devices/+/location"]`.
    pub topics: Vec<String>,
    /// Days history is kept; older messages are purged in small batches.
    /// 0 keeps everything. Default 30.
    pub retention_days: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self { topics: vec!["devices/+/location".into()], retention_days: 30 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocationSettings {
    /// A position whose `properties.ts` is more than this many seconds ahead
    /// of the server clock is refused (a device with a wrong clock would
    /// otherwise pin its place on the map). Default 300.
    pub max_future_skew_secs: u64,
    /// A position whose `properties.ts` is more than this many seconds
    /// older than the server clock is refused (`0` and other unset clocks
    /// read as 1970). Phones that queue fixes while offline need a margin.
    /// 0 turns the bound off. Default 2592000 (30 days).
    pub max_age_secs: u64,
}

impl Default for LocationSettings {
    fn default() -> Self {
        Self { max_future_skew_secs: 300, max_age_secs: 30 * 24 * 3600 }
    }
}

/// The command-line layer: each `Some` wins over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub mqtt_listen: Option<SocketAddr>,
    pub mqtts_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ws_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<Secret>,
    pub cluster_redis_url: Option<Secret>,
    pub cluster_node_id: Option<String>,
    pub map_interval_secs: Option<u64>,
    pub elasticsearch_url: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub logstash_tcp: Option<String>,
}

/// The environment variables to layer, passed in explicitly.
#[derive(Debug, Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The process's `MAPCAST_*` variables and `RUST_LOG` (read, never written).
    pub fn from_process() -> Self {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    /// A set variable with a non-empty value (empty counts as unset, as
    /// compose files often write `VAR=`).
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The config file named by `MAPCAST_CONFIG` (the CLI's `--config` wins).
    pub fn config_file(&self) -> Option<PathBuf> {
        self.get(CONFIG_ENV).map(PathBuf::from)
    }

    /// `MAPCAST_*` variables that configure nothing — most likely typos.
    pub fn unknown_vars(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with("MAPCAST_") && !k.starts_with("MAPCAST_TEST_"))
            .filter(|k| *k != CONFIG_ENV && !ENV_VARS.iter().any(|v| v.name == *k))
            .collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// The variable naming the config file (read by the CLI as `--config`).
pub const CONFIG_ENV: &str = "MAPCAST_CONFIG";

/// One environment variable of the env layer.
pub struct EnvVar {
    pub name: &'static str,
    /// The settings key it sets, as written in the TOML file.
    pub key: &'static str,
    apply: fn(&mut Settings, &str) -> anyhow::Result<()>,
}

/// Every environment variable the env layer reads, applied in this order
/// (so `MAPCAST_LOG_LEVEL` wins over `RUST_LOG`). Other broker limits and users
/// are set in the file only.
pub const ENV_VARS: &[EnvVar] = &[
    var("MAPCAST_MQTT_LISTEN", "mqtt.listen", |s, v| set(&mut s.mqtt.listen, v)),
    var("MAPCAST_MQTTS_LISTEN", "mqtt.tls_listen", |s, v| set_some(&mut s.mqtt.tls_listen, v)),
    var("MAPCAST_TLS_CERT", "mqtt.tls_cert", |s, v| set_some(&mut s.mqtt.tls_cert, v)),
    var("MAPCAST_TLS_KEY", "mqtt.tls_key", |s, v| set_some(&mut s.mqtt.tls_key, v)),
    var("MAPCAST_WS_LISTEN", "mqtt.ws_listen", |s, v| set_some(&mut s.mqtt.ws_listen, v)),
    var("MAPCAST_MQTT_WORKERS", "mqtt.workers", |s, v| set(&mut s.mqtt.workers, v)),
    var("MAPCAST_MQTT_PROXY_PROTOCOL", "mqtt.proxy_protocol", |s, v| {
        set(&mut s.mqtt.proxy_protocol, v)
    }),
    var("MAPCAST_MQTT_PROXY_TRUSTED", "mqtt.proxy_trusted", |s, v| {
        set_networks(&mut s.mqtt.proxy_trusted, v)
    }),
    var("MAPCAST_HTTP_LISTEN", "http.listen", |s, v| set(&mut s.http.listen, v)),
    var("MAPCAST_HTTP_WORKERS", "http.workers", |s, v| set(&mut s.http.workers, v)),
    var("MAPCAST_HTTP_TLS_CERT", "http.tls_cert", |s, v| set_some(&mut s.http.tls_cert, v)),
    var("MAPCAST_HTTP_TLS_KEY", "http.tls_key", |s, v| set_some(&mut s.http.tls_key, v)),
    var("MAPCAST_HTTP_HEAD_TIMEOUT_MS", "http.head_timeout_ms", |s, v| {
        set(&mut s.http.head_timeout_ms, v)
    }),
    var("MAPCAST_HTTP_BODY_TIMEOUT_MS", "http.body_timeout_ms", |s, v| {
        set(&mut s.http.body_timeout_ms, v)
    }),
    var("MAPCAST_HTTP_MAX_CONNECTIONS", "http.max_connections", |s, v| {
        set(&mut s.http.max_connections, v)
    }),
    var("MAPCAST_HTTP_MAX_SSE_STREAMS_PER_USER", "http.max_sse_streams_per_user", |s, v| {
        set(&mut s.http.max_sse_streams_per_user, v)
    }),
    var("MAPCAST_HTTP_MAX_SSE_STREAMS_PER_ADDRESS", "http.max_sse_streams_per_address", |s, v| {
        set(&mut s.http.max_sse_streams_per_address, v)
    }),
    var("MAPCAST_HTTP_CORS_ORIGINS", "http.cors_origins", |s, v| {
        s.http.cors_origins =
            v.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
        Ok(())
    }),
    var("MAPCAST_HTTP_PROXY_PROTOCOL", "http.proxy_protocol", |s, v| {
        set(&mut s.http.proxy_protocol, v)
    }),
    var("MAPCAST_HTTP_PROXY_TRUSTED", "http.proxy_trusted", |s, v| {
        set_networks(&mut s.http.proxy_trusted, v)
    }),
    var("MAPCAST_DATA_DIR", "data_dir", |s, v| set(&mut s.data_dir, v)),
    var("MAPCAST_CLUSTER_REDIS_URL", "cluster.redis_url", |s, v| {
        s.cluster.redis_url = Some(Secret::new(v));
        Ok(())
    }),
    var("MAPCAST_NODE_ID", "cluster.node_id", |s, v| set_some(&mut s.cluster.node_id, v)),
    var("MAPCAST_DATABASE_URL", "database.url", |s, v| {
        s.database.url = Some(Secret::new(v));
        Ok(())
    }),
    var("MAPCAST_DATABASE_MAX_CONNECTIONS", "database.max_connections", |s, v| {
        set(&mut s.database.max_connections, v)
    }),
    var("MAPCAST_DATABASE_COMMIT_INTERVAL_MS", "database.commit_interval_ms", |s, v| {
        set(&mut s.database.commit_interval_ms, v)
    }),
    var("MAPCAST_DATABASE_SQLITE_SYNCHRONOUS", "database.sqlite_synchronous", |s, v| {
        set(&mut s.database.sqlite_synchronous, v)
    }),
    var("MAPCAST_SYS_INTERVAL_SECS", "broker.sys_interval_secs", |s, v| {
        set(&mut s.broker.sys_interval_secs, v)
    }),
    var("MAPCAST_PERSISTENT_CLIENT_EXPIRATION", "broker.persistent_client_expiration", |s, v| {
        set(&mut s.broker.limits.persistent_client_expiration, v)
    }),
    var("MAPCAST_REPLAY_MESSAGES", "broker.replay_messages", |s, v| {
        set(&mut s.broker.limits.replay_messages, v)
    }),
    var("MAPCAST_MAX_QUEUED_BYTES", "broker.max_queued_bytes", |s, v| {
        set(&mut s.broker.limits.max_queued_bytes, v)
    }),
    var("MAPCAST_QUEUE_QOS0_MESSAGES", "broker.queue_qos0_messages", |s, v| {
        set(&mut s.broker.limits.queue_qos0_messages, v)
    }),
    var("MAPCAST_ALLOW_ANONYMOUS", "auth.allow_anonymous", |s, v| {
        set_some(&mut s.auth.allow_anonymous, v)
    }),
    var("MAPCAST_ANONYMOUS_ACL", "auth.anonymous_acl", |s, v| {
        set_some(&mut s.auth.anonymous_acl, v)
    }),
    var("MAPCAST_TOKEN_TTL_SECS", "auth.token_ttl_secs", |s, v| set(&mut s.auth.token_ttl_secs, v)),
    var("MAPCAST_SELF_REGISTRATION", "auth.self_registration", |s, v| {
        set_some(&mut s.auth.self_registration, v)
    }),
    var("MAPCAST_HASHING_THREADS", "auth.hashing.threads", |s, v| {
        set(&mut s.auth.hashing.threads, v)
    }),
    var("MAPCAST_HASHING_QUEUE_LEN", "auth.hashing.queue_len", |s, v| {
        set(&mut s.auth.hashing.queue_len, v)
    }),
    var("MAPCAST_HASHING_QUEUE_WAIT_MS", "auth.hashing.queue_wait_ms", |s, v| {
        set(&mut s.auth.hashing.queue_wait_ms, v)
    }),
    var("MAPCAST_HASHING_RATE_PER_ADDRESS", "auth.hashing.rate_per_address", |s, v| {
        set(&mut s.auth.hashing.rate_per_address, v)
    }),
    var("MAPCAST_HASHING_BURST_PER_ADDRESS", "auth.hashing.burst_per_address", |s, v| {
        set(&mut s.auth.hashing.burst_per_address, v)
    }),
    var("MAPCAST_LOG_FORMAT", "log.format", |s, v| set(&mut s.log.format, v)),
    var("MAPCAST_MAP_INTERVAL_SECS", "map.interval_secs", |s, v| set(&mut s.map.interval_secs, v)),
    var("MAPCAST_MAP_TTL_SECS", "map.ttl_secs", |s, v| set(&mut s.map.ttl_secs, v)),
    var("MAPCAST_MAP_DEFAULT_VISIBILITY", "map.default_visibility", |s, v| {
        set_some(&mut s.map.default_visibility, v)
    }),
    var("MAPCAST_MAP_PUBLIC_IDS", "map.public_ids", |s, v| set_some(&mut s.map.public_ids, v)),
    var("MAPCAST_MAP_TILE_URL", "map.tile_url", |s, v| set_some(&mut s.map.tile_url, v)),
    var("MAPCAST_MAP_TILE_ATTRIBUTION", "map.tile_attribution", |s, v| {
        set_some(&mut s.map.tile_attribution, v)
    }),
    var("MAPCAST_MAP_MAX_ZOOM", "map.max_zoom", |s, v| set(&mut s.map.max_zoom, v)),
    var("MAPCAST_HISTORY_RETENTION_DAYS", "history.retention_days", |s, v| {
        set(&mut s.history.retention_days, v)
    }),
    var("MAPCAST_LOCATIONS_MAX_FUTURE_SKEW_SECS", "locations.max_future_skew_secs", |s, v| {
        set(&mut s.locations.max_future_skew_secs, v)
    }),
    var("MAPCAST_LOCATIONS_MAX_AGE_SECS", "locations.max_age_secs", |s, v| {
        set(&mut s.locations.max_age_secs, v)
    }),
    var("MAPCAST_METRICS_INTERVAL_SECS", "telemetry.metrics_interval_secs", |s, v| {
        set(&mut s.telemetry.metrics_interval_secs, v)
    }),
    var("MAPCAST_CRASH_MAX_FILES", "telemetry.crash_max_files", |s, v| {
        set(&mut s.telemetry.crash_max_files, v)
    }),
    var("MAPCAST_CRASH_MAX_BYTES", "telemetry.crash_max_bytes", |s, v| {
        set(&mut s.telemetry.crash_max_bytes, v)
    }),
    var("MAPCAST_ELASTICSEARCH_URL", "telemetry.elasticsearch.url", |s, v| {
        set_some(&mut s.telemetry.elasticsearch.url, v)
    }),
    var("MAPCAST_ELASTICSEARCH_USERNAME", "telemetry.elasticsearch.username", |s, v| {
        set_some(&mut s.telemetry.elasticsearch.username, v)
    }),
    var("MAPCAST_ELASTICSEARCH_PASSWORD", "telemetry.elasticsearch.password", |s, v| {
        s.telemetry.elasticsearch.password = Some(Secret::new(v));
        Ok(())
    }),
    var("MAPCAST_ELASTICSEARCH_API_KEY", "telemetry.elasticsearch.api_key", |s, v| {
        s.telemetry.elasticsearch.api_key = Some(Secret::new(v));
        Ok(())
    }),
    var("MAPCAST_ELASTICSEARCH_NAMESPACE", "telemetry.elasticsearch.namespace", |s, v| {
        set(&mut s.telemetry.elasticsearch.namespace, v)
    }),
    var("MAPCAST_LOGSTASH_TCP", "telemetry.logstash_tcp", |s, v| {
        set_some(&mut s.telemetry.logstash_tcp, v)
    }),
    var("MAPCAST_OTLP_ENDPOINT", "telemetry.otlp.endpoint", |s, v| {
        set_some(&mut s.telemetry.otlp.endpoint, v)
    }),
    var("MAPCAST_OTLP_PROTOCOL", "telemetry.otlp.protocol", |s, v| {
        set(&mut s.telemetry.otlp.protocol, v)
    }),
    var("MAPCAST_OTLP_AUTHORIZATION", "telemetry.otlp.authorization", |s, v| {
        s.telemetry.otlp.authorization = Some(Secret::new(v));
        Ok(())
    }),
    var("MAPCAST_SERVICE_VERSION", "telemetry.service_version", |s, v| {
        set_some(&mut s.telemetry.service_version, v)
    }),
    var("MAPCAST_CANARY", "telemetry.canary", |s, v| set(&mut s.telemetry.canary, v)),
    var("MAPCAST_FLAGS_REFRESH_MS", "flags.refresh_ms", |s, v| set(&mut s.flags.refresh_ms, v)),
    var("MAPCAST_CANARY_INTERVAL_SECS", "flags.canary_interval_secs", |s, v| {
        set(&mut s.flags.canary_interval_secs, v)
    }),
    var("RUST_LOG", "log.level", |s, v| set(&mut s.log.level, v)),
    var("MAPCAST_LOG_LEVEL", "log.level", |s, v| set(&mut s.log.level, v)),
];

const fn var(
    name: &'static str,
    key: &'static str,
    apply: fn(&mut Settings, &str) -> anyhow::Result<()>,
) -> EnvVar {
    EnvVar { name, key, apply }
}

fn set<T: FromStr>(field: &mut T, v: &str) -> anyhow::Result<()>
where
    T::Err: std::fmt::Display,
{
    *field = v.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn set_some<T: FromStr>(field: &mut Option<T>, v: &str) -> anyhow::Result<()>
where
    T::Err: std::fmt::Display,
{
    *field = Some(v.parse().map_err(|e| anyhow::anyhow!("{e}"))?);
    Ok(())
}

/// A comma-separated list of networks (empty items skipped).
fn set_networks(field: &mut Vec<Network>, v: &str) -> anyhow::Result<()> {
    *field = v
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<_>>()?;
    Ok(())
}

impl Settings {
    /// Layer every source and validate the result.
    pub fn load(file: Option<&Path>, env: &Env, overrides: Overrides) -> anyhow::Result<Self> {
        let mut settings = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        settings.apply_env(env)?;
        settings.apply_overrides(overrides);
        settings.validate()?;
        Ok(settings)
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        #[allow(clippy::disallowed_methods, reason = "read once at startup, before any runtime")]
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    fn apply_env(&mut self, env: &Env) -> anyhow::Result<()> {
        for var in ENV_VARS {
            if let Some(value) = env.get(var.name) {
                (var.apply)(self, value)
                    .with_context(|| format!("invalid {} ({})", var.name, var.key))?;
            }
        }
        Ok(())
    }

    fn apply_overrides(&mut self, o: Overrides) {
        fn put<T>(field: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *field = v;
            }
        }
        put(&mut self.mqtt.listen, o.mqtt_listen);
        put(&mut self.mqtt.tls_listen, o.mqtts_listen.map(Some));
        put(&mut self.mqtt.tls_cert, o.tls_cert.map(Some));
        put(&mut self.mqtt.tls_key, o.tls_key.map(Some));
        put(&mut self.mqtt.ws_listen, o.ws_listen.map(Some));
        put(&mut self.http.listen, o.http_listen);
        put(&mut self.data_dir, o.data_dir);
        put(&mut self.database.url, o.database_url.map(Some));
        put(&mut self.cluster.redis_url, o.cluster_redis_url.map(Some));
        put(&mut self.cluster.node_id, o.cluster_node_id.map(Some));
        put(&mut self.map.interval_secs, o.map_interval_secs);
        put(&mut self.telemetry.elasticsearch.url, o.elasticsearch_url.map(Some));
        put(&mut self.telemetry.otlp.endpoint, o.otlp_endpoint.map(Some));
        put(&mut self.telemetry.logstash_tcp, o.logstash_tcp.map(Some));
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.cluster.redis_url.is_some()
            && !self.database.url.as_ref().is_some_and(|u| u.expose().starts_with("postgres"))
        {
            bail!(
                "cluster.redis_url needs a PostgreSQL database.url: instances share their state \
                 there (an embedded SQLite database belongs to one instance)"
            );
        }
        if self.cluster.stream.is_empty() || self.cluster.stream_max_len < 1000 {
            bail!("cluster.stream must be named and cluster.stream_max_len be at least 1000");
        }
        if self.mqtt.tls_listen.is_some()
            && (self.mqtt.tls_cert.is_none() || self.mqtt.tls_key.is_none())
        {
            bail!("mqtt.tls_listen needs both mqtt.tls_cert and mqtt.tls_key");
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            bail!("HTTPS needs both http.tls_cert and http.tls_key");
        }
        if self.mqtt.workers == 0 || self.http.workers == 0 {
            bail!("mqtt.workers and http.workers must be at least 1");
        }
        if self.http.head_timeout_ms == 0 || self.http.body_timeout_ms == 0 {
            bail!("http.head_timeout_ms and http.body_timeout_ms must be at least 1");
        }
        if self.telemetry.crash_max_files == 0 {
            bail!("telemetry.crash_max_files must be at least 1");
        }
        if self.http.max_connections < self.http.workers {
            bail!("http.max_connections must be at least http.workers");
        }
        if self.database.max_connections == 0 {
            bail!("database.max_connections must be at least 1");
        }
        if self.database.commit_interval_ms > 1000 {
            bail!(
                "database.commit_interval_ms must be at most 1000 (acknowledgements wait for it), got {}",
                self.database.commit_interval_ms
            );
        }
        if self.broker.sys_interval_secs == 0 {
            bail!("broker.sys_interval_secs must be at least 1");
        }
        if !(1..=300).contains(&self.map.interval_secs) {
            bail!("map.interval_secs must be between 1 and 300, got {}", self.map.interval_secs);
        }
        if self.map.ttl_secs == 0 {
            bail!("map.ttl_secs must be at least 1");
        }
        if !(1..=crate::domain::MAX_ZOOM).contains(&self.map.max_zoom) {
            bail!("map.max_zoom must be between 1 and {}", crate::domain::MAX_ZOOM);
        }
        if let Some(url) = &self.map.tile_url {
            let valid = (url.starts_with("http://") || url.starts_with("https://"))
                && url.contains("{z}")
                && url.contains("{x}")
                && url.contains("{y}")
                && !url.chars().any(|c| c.is_whitespace() || c == '\'' || c == ';' || c == ',')
                && self.map.tile_origin().is_some_and(|o| !o.ends_with("://"));
            if !valid {
                bail!(
                    "map.tile_url must be an http(s) URL template with {{z}}, {{x}} and {{y}}, got {url:?}"
                );
            }
        }
        let hashing = &self.auth.hashing;
        if hashing.queue_wait_ms == 0 || hashing.threads > 256 {
            bail!(
                "auth.hashing.queue_wait_ms must be at least 1 and auth.hashing.threads at most 256"
            );
        }
        if !(hashing.rate_per_address >= 0.0 && hashing.rate_per_address.is_finite()) {
            bail!("auth.hashing.rate_per_address must be a number of at least 0");
        }
        for (section, on, trusted) in [
            ("mqtt", self.mqtt.proxy_protocol, &self.mqtt.proxy_trusted),
            ("http", self.http.proxy_protocol, &self.http.proxy_trusted),
        ] {
            if on && trusted.is_empty() {
                bail!(
                    "{section}.proxy_protocol needs {section}.proxy_trusted: the networks of the load balancers allowed to send the header"
                );
            }
        }
        for origin in &self.http.cors_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.trim_end_matches('/').contains(|c: char| c.is_whitespace())
                    && !origin.ends_with('/'));
            if !ok {
                bail!(
                    "http.cors_origins: {origin:?} is not an origin (`https://host[:port]`, no path) or \"*\""
                );
            }
        }
        for topic in &self.history.topics {
            crate::domain::TopicFilter::parse(topic.clone(), self.broker.limits.topic_limits())
                .with_context(|| format!("invalid topic filter {topic:?} in history.topics"))?;
        }
        if self.flags.refresh_ms < 100 || self.flags.canary_interval_secs == 0 {
            bail!(
                "flags.refresh_ms must be at least 100 and flags.canary_interval_secs at least 1"
            );
        }
        for (i, user) in self.auth.users.iter().enumerate() {
            // Checked here, not at sign-in: a bad hash would otherwise lock
            // the user out silently. The hash itself is never quoted.
            let parsed = argon2::password_hash::PasswordHash::new(&user.password_hash);
            if !parsed.is_ok_and(|h| h.algorithm.as_str().starts_with("argon2")) {
                bail!(
                    "auth.users[{i}] ({:?}): password_hash is not an argon2 PHC string; \
                     make one with `mapcast hash-password`",
                    user.username
                );
            }
        }
        if self.auth.token_ttl_secs == 0 {
            bail!("auth.token_ttl_secs must be at least 1");
        }
        self.acl_policy()?;
        self.validate_telemetry()?;
        tracing_subscriber::EnvFilter::builder()
            .parse(crate::telemetry::effective_filter(&self.log.level))
            .with_context(|| format!("invalid log.level {:?}", self.log.level))?;
        Ok(())
    }

    fn validate_telemetry(&self) -> anyhow::Result<()> {
        let t = &self.telemetry;
        if t.metrics_interval_secs == 0 || t.queue_capacity == 0 {
            bail!(
                "telemetry.metrics_interval_secs and telemetry.queue_capacity must be at least 1"
            );
        }
        let es = &t.elasticsearch;
        if let Some(url) = &es.url {
            elasticsearch::http::Url::parse(url).context("invalid telemetry.elasticsearch.url")?;
        }
        let ns = &es.namespace;
        if ns.is_empty()
            || !ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c))
        {
            bail!(
                "telemetry.elasticsearch.namespace must be lowercase letters, digits, `_` or `.`, got {ns:?}"
            );
        }
        if es.batch_max_docs == 0 || es.flush_interval_ms == 0 || es.request_timeout_secs == 0 {
            bail!(
                "telemetry.elasticsearch.batch_max_docs, flush_interval_ms and request_timeout_secs must be at least 1"
            );
        }
        if !(0.0..=1.0).contains(&t.otlp.sample_ratio) {
            bail!("telemetry.otlp.sample_ratio must be between 0.0 and 1.0");
        }
        if let Some(endpoint) = &t.otlp.endpoint {
            elasticsearch::http::Url::parse(endpoint).context("invalid telemetry.otlp.endpoint")?;
        }
        if es.password.is_some() && es.username.is_none() {
            bail!("telemetry.elasticsearch.password needs telemetry.elasticsearch.username");
        }
        Ok(())
    }

    /// The database URL: `database.url`, or SQLite under `data_dir`.
    pub fn database_url(&self) -> Secret {
        self.database.url.clone().unwrap_or_else(|| {
            Secret::new(format!("sqlite://{}", self.data_dir.join("mapcast.db").display()))
        })
    }

    /// Every address a client can reach this process on.
    pub fn listen_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        [Some(self.mqtt.listen), self.mqtt.tls_listen, self.mqtt.ws_listen, Some(self.http.listen)]
            .into_iter()
            .flatten()
    }

    /// The policy of the identity service, from `[auth]`.
    pub fn identity_settings(&self) -> IdentitySettings {
        IdentitySettings {
            token_ttl: Duration::from_secs(self.auth.token_ttl_secs),
            self_registration: self.effective_self_registration(),
            allow_anonymous: self.effective_allow_anonymous(),
            lockout: self.auth.lockout.clone(),
            hashing: self.auth.hashing.clone(),
            default_visibility: self.effective_default_visibility(),
        }
    }

    /// `map.public_ids`, or — when unset — whether any listener is off
    /// loopback.
    pub fn effective_public_map_ids(&self) -> bool {
        self.map.public_ids.unwrap_or_else(|| !self.listen_addrs().all(|a| a.ip().is_loopback()))
    }

    /// `map.default_visibility`, or — when unset — `public` while every
    /// listener is on loopback and `private` otherwise: off loopback, a
    /// device shows on the shared map only when its owner says so.
    pub fn effective_default_visibility(&self) -> Visibility {
        self.map.default_visibility.unwrap_or_else(|| {
            if self.listen_addrs().all(|a| a.ip().is_loopback()) {
                Visibility::Public
            } else {
                Visibility::Private
            }
        })
    }

    /// `auth.allow_anonymous`, or — when unset — whether every listener
    /// (MQTT, TLS, WebSocket and HTTP) is bound to loopback only.
    pub fn effective_allow_anonymous(&self) -> bool {
        self.auth
            .allow_anonymous
            .unwrap_or_else(|| self.listen_addrs().all(|a| a.ip().is_loopback()))
    }

    /// `auth.self_registration`, or — when unset — whether every listener is
    /// bound to loopback only.
    pub fn effective_self_registration(&self) -> bool {
        self.auth
            .self_registration
            .unwrap_or_else(|| self.listen_addrs().all(|a| a.ip().is_loopback()))
    }

    /// `auth.anonymous_acl`, or — when unset — `all` while every listener is
    /// on loopback (local, Mosquitto-style use) and `read_map` otherwise.
    pub fn effective_anonymous_acl(&self) -> AnonymousAcl {
        self.auth.anonymous_acl.unwrap_or_else(|| {
            if self.listen_addrs().all(|a| a.ip().is_loopback()) {
                AnonymousAcl::All
            } else {
                AnonymousAcl::ReadMap
            }
        })
    }

    /// The ACL the broker and the REST API enforce.
    pub fn acl_policy(&self) -> anyhow::Result<AclPolicy> {
        AclPolicy::new(self.effective_anonymous_acl(), &self.auth.acl)
            .context("invalid filter in auth.acl")
    }

    /// The settings as JSON with every secret (database URL, password hashes)
    /// replaced, fit for logs and crash reports.
    pub fn redacted_digest(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("settings always serialize");
        // A password written into the Elasticsearch URL is a secret too.
        if let Some(url) = value.pointer_mut("/telemetry/elasticsearch/url")
            && let Some(mut parsed) =
                url.as_str().and_then(|u| elasticsearch::http::Url::parse(u).ok())
            && parsed.password().is_some()
        {
            let _ = parsed.set_password(Some("[redacted]"));
            *url = parsed.to_string().into();
        }
        if let Some(users) = value.pointer_mut("/auth/users").and_then(|u| u.as_array_mut()) {
            for user in users {
                user["password_hash"] = "[redacted]".into();
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter().copied().collect()
    }

    fn config_file(toml: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        f
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_sources_give_the_documented_defaults() {
        let s = Settings::load(None, &Env::default(), Overrides::default()).unwrap();
        assert_eq!(s.mqtt.listen, addr("127.0.0.1:1883"));
        assert_eq!(s.http.listen, addr("127.0.0.1:8080"));
        assert_eq!((s.mqtt.workers, s.http.workers), (2, 2));
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.database_url().expose(), "sqlite://./data/mapcast.db");
        assert_eq!(s.broker.sys_interval_secs, 10);
        assert_eq!((s.map.interval_secs, s.map.ttl_secs), (60, 900));
        assert_eq!(s.history.topics, ["devices/+/location"]);
        assert_eq!(s.history.retention_days, 30);
        assert_eq!(s.database.commit_interval_ms, 1);
        assert_eq!(s.log.format, LogFormat::Auto);
        assert_eq!(s.log.level, "info");
        assert!(s.effective_allow_anonymous());
    }

    #[test]
    fn default_database_is_sqlite_under_the_data_dir() {
        let s = Settings { data_dir: "/var/lib/mapcast".into(), ..Settings::default() };
        assert_eq!(s.database_url().expose(), "sqlite:///var/lib/mapcast/mapcast.db");
    }

    #[test]
    fn proxy_protocol_needs_trusted_networks_and_reads_them_from_file_and_env() {
        let file = config_file("[mqtt]\nproxy_protocol = true\n");
        let err =
            Settings::load(Some(file.path()), &Env::default(), Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("mqtt.proxy_trusted"), "{err:#}");
        let file = config_file("[mqtt]\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\"]\n");
        let s = Settings::load(Some(file.path()), &Env::default(), Overrides::default()).unwrap();
        assert_eq!(s.mqtt.proxy_trusted, vec!["10.0.0.0/8".parse().unwrap()]);
        let e = env(&[
            ("MAPCAST_HTTP_PROXY_PROTOCOL", "true"),
            ("MAPCAST_HTTP_PROXY_TRUSTED", "127.0.0.0/8, fd00::/8"),
        ]);
        let s = Settings::load(None, &e, Overrides::default()).unwrap();
        assert!(s.http.proxy_protocol && !s.mqtt.proxy_protocol);
        assert_eq!(s.http.proxy_trusted.len(), 2);
        let e = env(&[("MAPCAST_HTTP_PROXY_TRUSTED", "127.0.0.0/33")]);
        let err = Settings::load(None, &e, Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("127.0.0.0/33"), "{err:#}");
        let file = config_file("[http]\nproxy_trusted = [\"nonsense\"]\n");
        assert!(Settings::load(Some(file.path()), &Env::default(), Overrides::default()).is_err());
    }

    #[test]
    fn env_overrides_file_and_cli_overrides_env() {
        let file = config_file(
            r#"
            data_dir = "/from/file"
            [mqtt]
            listen = "127.0.0.1:1000"
            workers = 4
            [http]
            listen = "127.0.0.1:2000"
            [log]
            format = "pretty"
            "#,
        );
        let env = env(&[
            ("MAPCAST_MQTT_LISTEN", "127.0.0.1:1001"),
            ("MAPCAST_HTTP_LISTEN", "127.0.0.1:2001"),
            ("MAPCAST_LOG_LEVEL", "debug"),
            ("RUST_LOG", "trace"),
        ]);
        let cli = Overrides { mqtt_listen: Some(addr("127.0.0.1:1002")), ..Default::default() };

        let s = Settings::load(Some(file.path()), &env, cli).unwrap();

        assert_eq!(s.mqtt.listen, addr("127.0.0.1:1002"), "CLI wins over env");
        assert_eq!(s.http.listen, addr("127.0.0.1:2001"), "env wins over file");
        assert_eq!(s.mqtt.workers, 4, "file wins over defaults");
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.log.format, LogFormat::Pretty);
        assert_eq!(s.log.level, "debug", "MAPCAST_LOG_LEVEL wins over RUST_LOG");
    }

    #[test]
    fn the_commit_interval_is_bounded_because_acknowledgements_wait_for_it() {
        let set = |v| {
            Settings::load(
                None,
                &env(&[("MAPCAST_DATABASE_COMMIT_INTERVAL_MS", v)]),
                Overrides::default(),
            )
        };
        assert_eq!(set("0").unwrap().database.commit_interval_ms, 0);
        assert_eq!(set("1000").unwrap().database.commit_interval_ms, 1000);
        let err = set("1001").unwrap_err();
        assert!(format!("{err:#}").contains("database.commit_interval_ms"), "{err:#}");
    }

    #[test]
    fn sqlite_commits_are_power_safe_by_default_and_normal_is_a_choice() {
        let load = |vars: &[(&str, &str)], toml: Option<&str>| {
            let file = toml.map(config_file);
            Settings::load(file.as_ref().map(|f| f.path()), &env(vars), Overrides::default())
        };
        assert_eq!(load(&[], None).unwrap().database.sqlite_synchronous, SqliteSynchronous::Full);
        let file = "[database]\nsqlite_synchronous = \"normal\"\n";
        assert_eq!(
            load(&[], Some(file)).unwrap().database.sqlite_synchronous,
            SqliteSynchronous::Normal
        );
        let var = "MAPCAST_DATABASE_SQLITE_SYNCHRONOUS";
        assert_eq!(
            load(&[(var, "full")], Some(file)).unwrap().database.sqlite_synchronous,
            SqliteSynchronous::Full,
            "the environment wins over the file"
        );
        let err = load(&[(var, "off")], None).unwrap_err();
        assert!(format!("{err:#}").contains("database.sqlite_synchronous"), "{err:#}");
        let err = load(&[], Some("[database]\nsqlite_synchronous = \"off\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("sqlite_synchronous"), "{err:#}");
    }

    #[test]
    fn the_queue_byte_bound_defaults_to_64_mib_and_comes_from_file_or_env() {
        let load = |vars: &[(&str, &str)], toml: Option<&str>| {
            let file = toml.map(config_file);
            Settings::load(file.as_ref().map(|f| f.path()), &env(vars), Overrides::default())
                .unwrap()
                .broker
                .limits
                .max_queued_bytes
        };
        assert_eq!(load(&[], None), 64 * 1024 * 1024);
        let file = "[broker]\nmax_queued_bytes = 1000000\n";
        assert_eq!(load(&[], Some(file)), 1_000_000);
        assert_eq!(load(&[("MAPCAST_MAX_QUEUED_BYTES", "2000000")], Some(file)), 2_000_000);
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let s =
            Settings::load(None, &env(&[("MAPCAST_WS_LISTEN", "")]), Overrides::default()).unwrap();
        assert_eq!(s.mqtt.ws_listen, None);
    }

    #[test]
    fn invalid_env_values_name_the_variable() {
        let err =
            Settings::load(None, &env(&[("MAPCAST_MQTT_LISTEN", "nope")]), Overrides::default())
                .unwrap_err();
        assert!(format!("{err:#}").contains("MAPCAST_MQTT_LISTEN"), "{err:#}");
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere_including_broker_limits() {
        for toml in
            ["colour = 1", "[mqtt]\nlisten_on = \"127.0.0.1:1\"", "[broker]\nmax_payload_byte = 1"]
        {
            let file = config_file(toml);
            assert!(
                Settings::load(Some(file.path()), &Env::default(), Overrides::default()).is_err(),
                "{toml}"
            );
        }
    }

    #[test]
    fn broker_limits_and_sys_interval_share_one_table() {
        let file = config_file("[broker]\nmax_payload_bytes = 1024\nsys_interval_secs = 3");
        let s = Settings::load(Some(file.path()), &Env::default(), Overrides::default()).unwrap();
        assert_eq!(s.broker.limits.max_payload_bytes, 1024);
        assert_eq!(s.broker.sys_interval_secs, 3);
        assert_eq!(s.broker.limits.max_inflight, BrokerLimits::default().max_inflight);
    }

    #[test]
    fn non_loopback_listener_refuses_anonymous_unless_configured() {
        let public = Overrides { mqtt_listen: Some(addr("0.0.0.0:1883")), ..Default::default() };
        let s = Settings::load(None, &Env::default(), public.clone()).unwrap();
        assert!(!s.effective_allow_anonymous());

        let s = Settings::load(
            None,
            &env(&[("MAPCAST_HTTP_LISTEN", "[::]:8080")]),
            Overrides::default(),
        )
        .unwrap();
        assert!(!s.effective_allow_anonymous(), "the REST API counts too");

        let s = Settings::load(None, &env(&[("MAPCAST_ALLOW_ANONYMOUS", "true")]), public).unwrap();
        assert!(s.effective_allow_anonymous());
    }

    #[test]
    fn auth_keys_load_from_file_and_env_and_bad_acl_filters_are_refused() {
        let file = config_file(
            r#"
            [auth]
            token_ttl_secs = 60
            self_registration = false
            anonymous_acl = "read_map"
            [[auth.acl]]
            role = "user"
            action = "both"
            filter = "public/#"
            "#,
        );
        let s = Settings::load(Some(file.path()), &Env::default(), Overrides::default()).unwrap();
        assert_eq!(s.auth.token_ttl_secs, 60);
        assert!(!s.effective_self_registration());
        assert_eq!(s.effective_anonymous_acl(), AnonymousAcl::ReadMap);
        assert_eq!(s.auth.acl[0].action, crate::broker::acl::AclAction::Both);

        let e = env(&[("MAPCAST_TOKEN_TTL_SECS", "5"), ("MAPCAST_ANONYMOUS_ACL", "all")]);
        let s = Settings::load(Some(file.path()), &e, Overrides::default()).unwrap();
        assert_eq!((s.auth.token_ttl_secs, s.effective_anonymous_acl()), (5, AnonymousAcl::All));

        let bad =
            config_file("[[auth.acl]]\nrole = \"user\"\naction = \"both\"\nfilter = \"a/#/b\"");
        assert!(Settings::load(Some(bad.path()), &Env::default(), Overrides::default()).is_err());
        let zero = env(&[("MAPCAST_TOKEN_TTL_SECS", "0")]);
        assert!(Settings::load(None, &zero, Overrides::default()).is_err());
    }

    #[test]
    fn anonymous_clients_read_only_the_map_by_default_off_loopback() {
        let s = Settings::load(None, &Env::default(), Overrides::default()).unwrap();
        assert_eq!(s.effective_anonymous_acl(), AnonymousAcl::All);
        assert!(s.effective_self_registration());
        assert_eq!(s.auth.token_ttl_secs, 24 * 3600);
        let public = Overrides { http_listen: Some(addr("0.0.0.0:8080")), ..Default::default() };
        let s = Settings::load(None, &Env::default(), public).unwrap();
        assert_eq!(s.effective_anonymous_acl(), AnonymousAcl::ReadMap);
        assert!(!s.effective_self_registration(), "strangers would sign up and read the map");
    }

    #[test]
    fn anonymous_can_be_refused_on_loopback() {
        let s = Settings::load(
            None,
            &env(&[("MAPCAST_ALLOW_ANONYMOUS", "false")]),
            Overrides::default(),
        )
        .unwrap();
        assert!(!s.effective_allow_anonymous());
    }

    #[test]
    fn tls_listener_needs_certificate_and_key() {
        let tls = Overrides { mqtts_listen: Some(addr("127.0.0.1:8883")), ..Default::default() };
        assert!(Settings::load(None, &Env::default(), tls.clone()).is_err());
        let with_files =
            Overrides { tls_cert: Some("c.pem".into()), tls_key: Some("k.pem".into()), ..tls };
        assert!(Settings::load(None, &Env::default(), with_files).is_ok());
    }

    #[test]
    fn a_malformed_password_hash_is_a_start_up_error_that_does_not_quote_it() {
        let file = config_file(
            r#"
            [[auth.users]]
            username = "ann"
            password_hash = "plain-text-oops"
            "#,
        );
        let err =
            Settings::load(Some(file.path()), &Env::default(), Overrides::default()).unwrap_err();
        let shown = format!("{err:#}");
        assert!(shown.contains("auth.users[0]") && shown.contains("hash-password"), "{shown}");
        assert!(!shown.contains("plain-text-oops"), "{shown}");
        let good = crate::broker::auth::hash_password("pw");
        let file = config_file(&format!(
            "[[auth.users]]\nusername = \"ann\"\npassword_hash = \"{good}\"\n"
        ));
        assert!(Settings::load(Some(file.path()), &Env::default(), Overrides::default()).is_ok());
    }

    #[test]
    fn secrets_never_appear_in_debug_or_digest() {
        let file = config_file(
            r#"
            [database]
            url = "postgres://app:hunter2@db/mapcast"
            [[auth.users]]
            username = "ann"
            password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2VjcmV0aXNoc2FsdA$c2VjcmV0aXNoaGFzaHNlY3JldGlzaGhhc2g"
            "#,
        );
        let s = Settings::load(Some(file.path()), &Env::default(), Overrides::default()).unwrap();
        let shown = format!("{s:?} {}", s.redacted_digest());
        assert!(!shown.contains("hunter2") && !shown.contains("c2VjcmV0aXNo"), "{shown}");
        assert!(shown.contains("ann"));
        let env = env(&[
            ("MAPCAST_ELASTICSEARCH_PASSWORD", "es-hunter3"),
            ("MAPCAST_ELASTICSEARCH_USERNAME", "elastic"),
            ("MAPCAST_ELASTICSEARCH_API_KEY", "key-hunter4"),
            ("MAPCAST_ELASTICSEARCH_URL", "https://elastic:url-hunter5@es:9200"),
        ]);
        let s = Settings::load(None, &env, Overrides::default()).unwrap();
        let shown = format!("{s:?} {}", s.redacted_digest());
        let digest = s.redacted_digest().to_string();
        assert!(!digest.contains("hunter5"), "{digest}");
        assert!(!shown.contains("hunter3") && !shown.contains("hunter4"), "{shown}");
        assert_eq!(s.telemetry.elasticsearch.password.unwrap().expose(), "es-hunter3");
    }

    #[test]
    fn the_readme_documents_every_setting_and_variable() {
        fn keys(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            match value.as_object() {
                Some(map) => map.iter().for_each(|(k, v)| {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    keys(&key, v, out);
                }),
                None => out.push(prefix.to_owned()),
            }
        }
        let readme = include_str!("../README.md");
        let mut all = Vec::new();
        keys("", &serde_json::to_value(Settings::default()).unwrap(), &mut all);
        all.extend(ENV_VARS.iter().map(|v| v.name.to_owned()));
        let missing: Vec<_> = all.iter().filter(|k| !readme.contains(&format!("`{k}`"))).collect();
        assert!(missing.is_empty(), "README.md does not document {missing:?}");
    }

    #[test]
    fn elasticsearch_comes_from_env_and_the_cli_wins() {
        let e = env(&[
            ("MAPCAST_ELASTICSEARCH_URL", "http://from-env:9200"),
            ("MAPCAST_ELASTICSEARCH_NAMESPACE", "prod"),
        ]);
        let s = Settings::load(None, &e, Overrides::default()).unwrap();
        assert_eq!(s.telemetry.elasticsearch.url.as_deref(), Some("http://from-env:9200"));
        assert_eq!(s.telemetry.elasticsearch.namespace, "prod");
        let cli = Overrides {
            elasticsearch_url: Some("http://from-cli:9200".into()),
            ..Default::default()
        };
        let s = Settings::load(None, &e, cli).unwrap();
        assert_eq!(s.telemetry.elasticsearch.url.as_deref(), Some("http://from-cli:9200"));
    }

    #[test]
    fn bad_elasticsearch_settings_are_refused() {
        for (k, v) in [
            ("MAPCAST_ELASTICSEARCH_URL", "not a url"),
            ("MAPCAST_ELASTICSEARCH_NAMESPACE", "has-dash"),
            ("MAPCAST_ELASTICSEARCH_PASSWORD", "no-user"),
        ] {
            assert!(Settings::load(None, &env(&[(k, v)]), Overrides::default()).is_err(), "{k}");
        }
    }

    #[test]
    fn the_map_interval_is_bounded_and_the_cli_wins() {
        for bad in ["0", "301"] {
            let e = env(&[("MAPCAST_MAP_INTERVAL_SECS", bad)]);
            assert!(Settings::load(None, &e, Overrides::default()).is_err(), "{bad}");
        }
        let e = env(&[("MAPCAST_MAP_INTERVAL_SECS", "300"), ("MAPCAST_MAP_TTL_SECS", "60")]);
        let s = Settings::load(None, &e, Overrides::default()).unwrap();
        assert_eq!((s.map.interval_secs, s.map.ttl_secs), (300, 60));
        let cli = Overrides { map_interval_secs: Some(5), ..Default::default() };
        assert_eq!(Settings::load(None, &e, cli).unwrap().map.interval_secs, 5);
    }

    #[test]
    fn history_topics_must_be_valid_filters() {
        let file = config_file("[history]\ntopics = [\"a/#/b\"]");
        assert!(Settings::load(Some(file.path()), &Env::default(), Overrides::default()).is_err());
        let file = config_file("[history]\ntopics = [\"cmd/#\"]\nretention_days = 7");
        let s = Settings::load(Some(file.path()), &Env::default(), Overrides::default()).unwrap();
        assert_eq!((s.history.topics, s.history.retention_days), (vec!["cmd/#".into()], 7));
    }

    #[test]
    fn unknown_mapcast_variables_are_reported() {
        let e = env(&[
            ("MAPCAST_MQTT_LISTN", "x"),
            ("MAPCAST_TEST_PYTHON", "y"),
            ("MAPCAST_DATA_DIR", "d"),
        ]);
        assert_eq!(e.unknown_vars(), vec!["MAPCAST_MQTT_LISTN"]);
    }
}
