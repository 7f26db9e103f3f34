//! Telemetry names are API: dashboards, index templates and alerts depend on
//! them. Fields follow ECS (Elastic Common Schema); mapcast's own fields live
//! under `mapcast.*` or in namespaces ECS leaves free.
//!
//! Use them as field names with braces: `info!({ names::HTTP_ADDRESS } = %addr, "..")`.

// ECS base fields written on every log line.
pub const TIMESTAMP: &str = "@timestamp";
pub const MESSAGE: &str = "message";
pub const LOG_LEVEL: &str = "log.level";
pub const LOG_LOGGER: &str = "log.logger";
pub const LOG_ORIGIN_FILE_NAME: &str = "log.origin.file.name";
pub const LOG_ORIGIN_FILE_LINE: &str = "log.origin.file.line";
pub const ECS_VERSION: &str = "ecs.version";
pub const SERVICE_NAME: &str = "service.name";
pub const SERVICE_VERSION: &str = "service.version";
pub const PROCESS_THREAD_NAME: &str = "process.thread.name";

/// The ECS version the log lines conform to.
pub const ECS_VERSION_VALUE: &str = "8.11.0";
/// `service.name` of every document this process emits.
pub const SERVICE_NAME_VALUE: &str = "mapcast";

// Errors.
pub const ERROR_MESSAGE: &str = "error.message";

// Startup: the addresses actually bound and the database in use.
pub const MQTT_ADDRESS: &str = "mqtt.address";
pub const MQTTS_ADDRESS: &str = "mqtts.address";
pub const WS_ADDRESS: &str = "ws.address";
pub const HTTP_ADDRESS: &str = "http.address";
pub const DATABASE_BACKEND: &str = "database.backend";
/// The SQLite file, or the PostgreSQL server and database (no credentials).
pub const DATABASE_LOCATION: &str = "database.location";
/// The data directory (crash reports, spool, the SQLite file by default).
pub const DATA_DIR: &str = "mapcast.data_dir";
/// While no admin exists: the command that creates the first one.
pub const ADMIN_COMMAND: &str = "mapcast.admin_command";

/// Which long-lived part of the process an event is about (router, writer, mqtt, http).
pub const COMPONENT: &str = "mapcast.component";

// The map updater (one event per snapshot) and history retention.
pub const MAP_VERSION: &str = "mapcast.map.version";
/// Which phone-app protocol a report came in by (`owntracks`, `osmand`).
pub const PHONE_PROTOCOL: &str = "mapcast.phone.protocol";
/// Devices on the map.
pub const MAP_TOTAL: &str = "mapcast.map.total";
/// Size of the GeoJSON snapshot and of its gzip encoding, in bytes.
pub const MAP_RAW_BYTES: &str = "mapcast.map.raw_bytes";
pub const MAP_GZIP_BYTES: &str = "mapcast.map.gzip_bytes";
/// Time to merge, build, index and compress one snapshot, in milliseconds.
pub const MAP_BUILD_MS: &str = "mapcast.map.build_ms";
/// Ticks skipped because a build overran its interval.
pub const MAP_SKIPPED_TICKS: &str = "mapcast.map.skipped_ticks";
/// History rows and map snapshot records deleted by one purge.
pub const HISTORY_PURGED_ROWS: &str = "mapcast.history.purged_rows";
pub const HISTORY_PURGED_SNAPSHOTS: &str = "mapcast.history.purged_snapshots";

// MQTT clients (ECS `client.*`, `user.*`) and their connections.
pub const CLIENT_ID: &str = "client.id";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const USER_NAME: &str = "user.name";
/// A user's id in the database (ECS `user.id`).
pub const USER_ID: &str = "user.id";
/// A user's role, `admin` or `user` (ECS `user.roles`).
pub const USER_ROLES: &str = "user.roles";
/// A device's id (its MQTT user name).
pub const DEVICE_ID: &str = "device.id";
/// `car` or `phone`.
pub const DEVICE_KIND: &str = "device.kind";
/// "3.1.1" or "5.0".
pub const MQTT_PROTOCOL: &str = "mqtt.protocol";
/// The broker's number for one network connection of a session.
pub const MQTT_CONNECTION_ID: &str = "mqtt.connection_id";
pub const MQTT_TOPIC: &str = "mqtt.topic";
/// A CONNACK, PUBACK, SUBACK or DISCONNECT reason code (3.1.1 return codes too).
pub const MQTT_REASON_CODE: &str = "mqtt.reason_code";
pub const MQTT_PAYLOAD_SIZE: &str = "mqtt.payload_size";
pub const MQTT_CLEAN_START: &str = "mqtt.clean_start";
pub const MQTT_SESSION_PRESENT: &str = "mqtt.session_present";
/// Granted session expiry, in seconds.
pub const MQTT_SESSION_EXPIRY: &str = "mqtt.session_expiry";
/// The broker generated the client id (the client sent none).
pub const MQTT_CLIENT_ID_ASSIGNED: &str = "mqtt.client_id_assigned";
/// How a connection ended (clean, clean with will, unclean).
pub const MQTT_DISCONNECT: &str = "mqtt.disconnect";

// Sign-in lockouts (brute-force protection on REST sign-in and MQTT CONNECT).
/// `identity` (a user name, from one source address) or `address` (a source IP).
pub const AUTH_LOCKOUT_SCOPE: &str = "mapcast.auth.lockout.scope";
/// How long the lockout lasts, in seconds.
pub const AUTH_LOCKOUT_SECS: &str = "mapcast.auth.lockout.duration_secs";
/// Lockouts in force that an admin lifted.
pub const AUTH_LOCKOUTS_LIFTED: &str = "mapcast.auth.lockout.lifted";
/// Threads of the password hashing pool (on a "busy" refusal).
pub const AUTH_HASHING_THREADS: &str = "mapcast.auth.hashing.threads";

// HTTP requests (ECS `http.*`, `url.*`, `event.duration` in nanoseconds).
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_ROUTE: &str = "http.route";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const URL_PATH: &str = "url.path";
pub const EVENT_DURATION: &str = "event.duration";

/// Fields the log bridge (`tracing-log`) adds to records from the `log`
/// crate; they duplicate metadata and are left out of the output.
pub(crate) const LOG_BRIDGE_FIELDS: [&str; 4] =
    ["log.target", "log.module_path", "log.file", "log.line"];

// Tracing correlation (ECS `trace.*`, `span.*`): a root span gets a trace id,
// every span an id; events and crash documents carry both.
pub const TRACE_ID: &str = "trace.id";
pub const SPAN_ID: &str = "span.id";

// Process and host identity on shipped documents.
pub const SERVICE_NODE_NAME: &str = "service.node.name";
pub const SERVICE_ENVIRONMENT: &str = "service.environment";
pub const HOST_NAME: &str = "host.name";
pub const HOST_OS_TYPE: &str = "host.os.type";
pub const HOST_ARCHITECTURE: &str = "host.architecture";
pub const PROCESS_PID: &str = "process.pid";
pub const PROCESS_UPTIME: &str = "process.uptime";
pub const EVENT_DATASET: &str = "event.dataset";
pub const EVENT_KIND: &str = "event.kind";
pub const DATA_STREAM_TYPE: &str = "data_stream.type";
pub const DATA_STREAM_DATASET: &str = "data_stream.dataset";
pub const DATA_STREAM_NAMESPACE: &str = "data_stream.namespace";

// Crash documents (`logs-mapcast.crash-*`).
pub const ERROR_TYPE: &str = "error.type";
pub const ERROR_ID: &str = "error.id";
pub const ERROR_STACK_TRACE: &str = "error.stack_trace";
/// The build's git commit (short hash), or "unknown".
pub const SERVICE_BUILD_COMMIT: &str = "mapcast.build.commit";
/// Enclosing spans at the panic, outermost first: `[{name, fields}]`.
pub const CRASH_SPANS: &str = "mapcast.crash.spans";
/// The last log events before the panic, oldest first (ECS documents).
pub const CRASH_BREADCRUMBS: &str = "mapcast.crash.breadcrumbs";
/// Active feature-flag variants: `[{key, variant}]`.
pub const CRASH_FEATURE_FLAGS: &str = "mapcast.crash.feature_flags";
/// The configuration with every secret redacted.
pub const CRASH_CONFIG: &str = "mapcast.crash.config";
/// `error.type` of a crash document.
pub const ERROR_TYPE_PANIC: &str = "panic";

// Feature flags (OpenTelemetry semantic conventions) and canaries.
/// `event.action` of an evaluation, a failed canary check and a rollback.
pub const EVENT_ACTION: &str = "event.action";
pub const EVENT_REASON: &str = "event.reason";
pub const FEATURE_FLAG_EVALUATION: &str = "feature_flag.evaluation";
pub const FEATURE_FLAG_KEY: &str = "feature_flag.key";
pub const FEATURE_FLAG_VARIANT: &str = "feature_flag.result.variant";
pub const FEATURE_FLAG_REASON: &str = "feature_flag.result.reason";
pub const FEATURE_FLAG_PROVIDER: &str = "feature_flag.provider.name";
/// The targeting key: the MQTT client id or `rest:{user id}`.
pub const FEATURE_FLAG_CONTEXT_ID: &str = "feature_flag.context.id";
pub const CANARY_CHECK_FAILED: &str = "canary-check-failed";
pub const CANARY_ROLLBACK: &str = "canary-rollback";
pub const CANARY_FAILED_CHECKS: &str = "mapcast.canary.failed_checks";
/// Crash reports from canary paths counted by one check.
pub const CANARY_CRASHES: &str = "mapcast.canary.crashes";
pub const CANARY_CONTROL_REQUESTS: &str = "mapcast.canary.control.requests";
pub const CANARY_CONTROL_ERROR_RATE: &str = "mapcast.canary.control.error_rate";
pub const CANARY_CONTROL_P99_MS: &str = "mapcast.canary.control.p99_ms";
pub const CANARY_CANARY_REQUESTS: &str = "mapcast.canary.canary.requests";
pub const CANARY_CANARY_ERROR_RATE: &str = "mapcast.canary.canary.error_rate";
pub const CANARY_CANARY_P99_MS: &str = "mapcast.canary.canary.p99_ms";
/// `"true"` on every document of a canary build (`telemetry.canary`).
pub const LABELS_CANARY: &str = "labels.canary";

// Datasets (the middle of a data stream name).
pub const DATASET_APP: &str = "mapcast.app";
pub const DATASET_CRASH: &str = "mapcast.crash";
pub const DATASET_BROKER: &str = "mapcast.broker";

/// Metrics: the Prometheus name at `/metrics` and the field of the periodic
/// document in `metrics-mapcast.broker-*`, side by side.
pub mod metrics {
    pub const CLIENTS_CONNECTED: (&str, &str) =
        ("mapcast_clients_connected", "mapcast.clients.connected");
    pub const CLIENTS_TOTAL: (&str, &str) = ("mapcast_clients_total", "mapcast.clients.total");
    pub const MESSAGES_RECEIVED: (&str, &str) =
        ("mapcast_messages_received_total", "mapcast.messages.received");
    pub const MESSAGES_SENT: (&str, &str) =
        ("mapcast_messages_sent_total", "mapcast.messages.sent");
    pub const BYTES_RECEIVED: (&str, &str) =
        ("mapcast_bytes_received_total", "mapcast.bytes.received");
    pub const BYTES_SENT: (&str, &str) = ("mapcast_bytes_sent_total", "mapcast.bytes.sent");
    pub const INFLIGHT_OUT: (&str, &str) =
        ("mapcast_qos_inflight_outbound", "mapcast.qos.inflight_outbound");
    pub const SUBSCRIPTIONS: (&str, &str) = ("mapcast_subscriptions", "mapcast.subscriptions");
    pub const RETAINED: (&str, &str) = ("mapcast_retained_messages", "mapcast.retained");
    /// Labelled by `reason`; the document has one field per reason below it.
    pub const DROPPED: (&str, &str) = ("mapcast_messages_dropped_total", "mapcast.dropped");
    pub const DROP_REASONS: [&str; 4] =
        ["queue_full_qos0", "queue_full_qos1", "expired", "rejected_publish"];
    /// Publishes refused for their payload (invalid locations), any protocol.
    pub const INVALID_PAYLOADS: (&str, &str) =
        ("mapcast_publish_invalid_payload_total", "mapcast.publish.invalid_payload");
    /// MQTT connections closed for a protocol error: malformed packets,
    /// packets out of place, acknowledgements for unknown packet ids.
    pub const PROTOCOL_ERRORS: (&str, &str) =
        ("mapcast_protocol_errors_total", "mapcast.mqtt.protocol_errors");
    /// Sign-ins (REST or MQTT CONNECT) with a wrong secret.
    pub const AUTH_FAILURES: (&str, &str) =
        ("mapcast_auth_failures_total", "mapcast.auth.failures");
    /// Lockouts started (an identity or an address hit its threshold).
    pub const AUTH_LOCKOUTS: (&str, &str) =
        ("mapcast_auth_lockouts_total", "mapcast.auth.lockouts");
    /// Sign-ins refused unchecked because of a lockout.
    pub const AUTH_LOCKED_REFUSALS: (&str, &str) =
        ("mapcast_auth_locked_refusals_total", "mapcast.auth.locked_refusals");
    /// Password checks and hashes refused "busy" (pool queue full or too slow).
    pub const AUTH_HASHING_BUSY: (&str, &str) =
        ("mapcast_auth_hashing_busy_total", "mapcast.auth.hashing.busy");
    /// Lockouts in force now (address, and identity from one address).
    pub const AUTH_LOCKOUTS_ACTIVE: (&str, &str) =
        ("mapcast_auth_lockouts_active", "mapcast.auth.lockouts_active");
    /// Sign-ups and sign-ins refused by the per-address rate, before hashing.
    pub const AUTH_THROTTLED: (&str, &str) =
        ("mapcast_auth_throttled_total", "mapcast.auth.throttled");
    /// Labelled by `reason`; the document has one field per reason below it.
    pub const CONNECTIONS_REJECTED: (&str, &str) =
        ("mapcast_connections_rejected_total", "mapcast.connections.rejected");
    /// `other`: authentication, client id, will (any CONNECT refused later).
    pub const CONNECTION_REJECT_REASONS: [&str; 4] =
        ["max_connections", "connect_rate", "session_owner", "other"];
    pub const DB_BATCH_OPS: (&str, &str) = ("mapcast_db_batch_ops", "mapcast.db.batch_ops");
    pub const DB_COMMITS_UNANSWERED: (&str, &str) =
        ("mapcast_db_commits_unanswered_total", "mapcast.db.commits_unanswered");
    pub const DB_COMMITS_FOUND_COMMITTED: (&str, &str) =
        ("mapcast_db_commits_found_committed_total", "mapcast.db.commits_found_committed");
    pub const DB_BATCH_SECONDS: (&str, &str) =
        ("mapcast_db_batch_duration_seconds", "mapcast.db.batch_duration_seconds");
    /// Labelled by `route`; the document holds one object per route.
    pub const HTTP_SECONDS: (&str, &str) =
        ("mapcast_http_request_duration_seconds", "mapcast.http.request_duration_seconds");
    pub const TELEMETRY_QUEUE_DEPTH: (&str, &str) =
        ("mapcast_telemetry_queue_depth", "mapcast.telemetry.queue_depth");
    pub const TELEMETRY_QUEUE_DROPPED: (&str, &str) =
        ("mapcast_telemetry_queue_dropped_total", "mapcast.telemetry.queue_dropped");
    pub const TELEMETRY_SHIPPED: (&str, &str) =
        ("mapcast_telemetry_shipped_total", "mapcast.telemetry.shipped");
    pub const TELEMETRY_RETRIED: (&str, &str) =
        ("mapcast_telemetry_retried_total", "mapcast.telemetry.retried");
    pub const TELEMETRY_DEAD_LETTERED: (&str, &str) =
        ("mapcast_telemetry_dead_lettered_total", "mapcast.telemetry.dead_lettered");
    pub const SPOOL_BYTES: (&str, &str) =
        ("mapcast_telemetry_spool_bytes", "mapcast.telemetry.spool_bytes");
    pub const SPOOL_DOCUMENTS: (&str, &str) =
        ("mapcast_telemetry_spool_documents", "mapcast.telemetry.spool_documents");
    pub const SPOOL_DROPPED: (&str, &str) =
        ("mapcast_telemetry_spool_dropped_total", "mapcast.telemetry.spool_dropped");
    pub const CRASHES: (&str, &str) = ("mapcast_crashes_total", "mapcast.crashes");
    /// Several instances: what did not cross between them.
    pub const CLUSTER_DROPPED: (&str, &str) =
        ("mapcast_cluster_dropped_total", "mapcast.cluster.dropped");
    pub const CLUSTER_MALFORMED: (&str, &str) =
        ("mapcast_cluster_malformed_total", "mapcast.cluster.malformed");
    pub const CLUSTER_TAKEOVERS: (&str, &str) =
        ("mapcast_cluster_takeovers_total", "mapcast.cluster.takeovers");
    pub const CLUSTER_SUPERSEDED: (&str, &str) =
        ("mapcast_cluster_superseded_total", "mapcast.cluster.superseded");
    pub const CLUSTER_ADOPTED: (&str, &str) =
        ("mapcast_cluster_adopted_total", "mapcast.cluster.adopted");
    pub const CLUSTER_DEAD_WILLS: (&str, &str) =
        ("mapcast_cluster_dead_wills_total", "mapcast.cluster.dead_wills");
    pub const CLUSTER_SHARED_PASSED_ON: (&str, &str) =
        ("mapcast_cluster_shared_passed_on_total", "mapcast.cluster.shared_passed_on");
    pub const CLUSTER_SHARED_LOST: (&str, &str) =
        ("mapcast_cluster_shared_lost_total", "mapcast.cluster.shared_lost");
    pub const CLUSTER_INSTANCES: (&str, &str) =
        ("mapcast_cluster_instances", "mapcast.cluster.instances");
    pub const CLUSTER_CLIENTS_CONNECTED: (&str, &str) =
        ("mapcast_cluster_clients_connected", "mapcast.cluster.clients_connected");
    pub const CLUSTER_REPLAYED: (&str, &str) =
        ("mapcast_cluster_replayed_total", "mapcast.cluster.replayed");
    pub const CLUSTER_REPLAY_GAPS: (&str, &str) =
        ("mapcast_cluster_replay_gaps_total", "mapcast.cluster.replay_gaps");
    pub const CLUSTER_ORPHANS_PASSED_ON: (&str, &str) =
        ("mapcast_cluster_orphans_passed_on_total", "mapcast.cluster.orphans_passed_on");
    /// The map updater: builds published, and the last one's figures.
    pub const UPDATER_BUILDS: (&str, &str) =
        ("mapcast_updater_builds_total", "mapcast.updater.builds");
    pub const UPDATER_BUILD_FAILURES: (&str, &str) =
        ("mapcast_updater_build_failures_total", "mapcast.updater.build_failures");
    pub const UPDATER_BUILD_MS: (&str, &str) =
        ("mapcast_updater_last_build_milliseconds", "mapcast.updater.last_build_ms");
    pub const UPDATER_DEVICES: (&str, &str) =
        ("mapcast_updater_snapshot_devices", "mapcast.updater.snapshot_devices");
    pub const UPDATER_RAW_BYTES: (&str, &str) =
        ("mapcast_updater_snapshot_bytes", "mapcast.updater.snapshot_bytes");
    pub const UPDATER_GZIP_BYTES: (&str, &str) =
        ("mapcast_updater_snapshot_gzip_bytes", "mapcast.updater.snapshot_gzip_bytes");
    pub const UPTIME: (&str, &str) = ("mapcast_uptime_seconds", "mapcast.uptime_seconds");
    /// Server-Sent Events streams open, and those refused past a cap.
    pub const SSE_STREAMS: (&str, &str) = ("mapcast_http_sse_streams", "mapcast.http.sse_streams");
    pub const SSE_REFUSED: (&str, &str) =
        ("mapcast_http_sse_refused_total", "mapcast.http.sse_refused");
    /// Phone-app reports (OwnTracks HTTP, OsmAnd / Traccar Client) refused,
    /// labelled by `protocol`: one of [`PHONE_PROTOCOLS`].
    pub const PHONE_REPORTS_REFUSED: (&str, &str) =
        ("mapcast_phone_reports_refused_total", "mapcast.phone.reports_refused");
    pub const PHONE_PROTOCOLS: [&str; 2] = ["owntracks", "osmand"];
    /// OsmAnd / Traccar Client reports with `valid=false` (no GPS fix),
    /// answered 200 and not used as positions.
    pub const PHONE_REPORTS_WITHOUT_FIX: (&str, &str) =
        ("mapcast_phone_reports_without_fix_total", "mapcast.phone.reports_without_fix");
    /// Requests that were not HTTP, answered 400 by actix before any route.
    pub const HTTP_MALFORMED: (&str, &str) =
        ("mapcast_http_malformed_requests_total", "mapcast.http.malformed_requests");
    /// Connections closed by a listener's PROXY protocol step before any
    /// MQTT or HTTP, labelled by `reason`: one of [`PROXY_REFUSE_REASONS`].
    pub const PROXY_REFUSED: (&str, &str) =
        ("mapcast_proxy_protocol_refused_total", "mapcast.proxy_protocol.refused");
    pub const PROXY_REFUSE_REASONS: [&str; 4] = ["untrusted", "malformed", "timeout", "closed"];
    /// OTLP exports a histogram as two counters: `{field}.count`, `{field}.sum`.
    pub const OTEL_COUNT_SUFFIX: &str = ".count";
    pub const OTEL_SUM_SUFFIX: &str = ".sum";
    /// Labelled by `flag` and `variant`. The document holds one object per
    /// variant below `mapcast.feature_flags`, with the fields below.
    pub const FLAG_REQUESTS: (&str, &str) =
        ("mapcast_feature_flag_requests_total", "mapcast.feature_flags");
    pub const FLAG_ERRORS: (&str, &str) =
        ("mapcast_feature_flag_errors_total", "mapcast.feature_flags");
    pub const FLAG_CRASHES: (&str, &str) =
        ("mapcast_feature_flag_crashes_total", "mapcast.feature_flags");
    pub const FLAG_ROW_FLAG: &str = "mapcast.feature_flags.flag";
    pub const FLAG_ROW_VARIANT: &str = "mapcast.feature_flags.variant";
    pub const FLAG_ROW_REQUESTS: &str = "mapcast.feature_flags.requests";
    pub const FLAG_ROW_ERRORS: &str = "mapcast.feature_flags.errors";
    pub const FLAG_ROW_CRASHES: &str = "mapcast.feature_flags.crashes";
}
