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

/// Which long-lived part of the process an event is about (router, writer, mqtt, http).
pub const COMPONENT: &str = "mapcast.component";

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
