//! The command line. Doc comments here are the `--help` text.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod accounts;
mod flags;
mod telemetry;

pub use accounts::{DeviceCommand, UserCommand, device_command, user_command};
pub use flags::{FlagChanges, FlagSetArgs, FlagsCommand, flags_command};
pub use telemetry::{CrashesArgs, CrashesCommand, EsCommand, crashes_command, es_command};

use crate::broker::auth::hash_password;
use crate::config::{Env, Overrides, Settings};
use crate::domain::Secret;

/// mapcast: a live-location service — MQTT broker, REST API over its topics
/// and map updater in one binary.
#[derive(Debug, Parser)]
#[command(name = "mapcast", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum Command {
    /// Run the broker and the REST API until SIGTERM or SIGINT.
    #[command(after_help = MORE_SETTINGS)]
    Serve(ConfigArgs),
    /// Apply pending database migrations, then exit.
    Migrate(DbArgs),
    /// Read a password from stdin and print its argon2id hash, for the
    /// `password_hash` of a user in `[[auth.users]]`.
    HashPassword,
    /// Manage the users stored in the database (e.g. the first admin).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the devices stored in the database.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Elasticsearch: install the index templates of mapcast's data streams.
    #[command(subcommand)]
    Es(EsCommand),
    /// Read the crash reports under the data directory.
    Crashes(CrashesArgs),
    /// List and set the feature flags in the database.
    #[command(subcommand)]
    Flags(FlagsCommand),
    /// Copy the SQLite database to a new file while the server runs.
    Backup(BackupArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub location: DbLocation,
    /// The copy to write; it must not exist yet.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

const MORE_SETTINGS: &str = "Settings are layered: defaults, then the --config file, then \
MAPCAST_* environment variables, then these flags. Workers, the database pool, broker limits, \
users and logging are set in the file or their environment variables (see README.md).";

/// Settings come from defaults, then `--config FILE`, then `MAPCAST_*`
/// environment variables, then these flags. The variables are read by the
/// settings loader (not by the flag parser), so an empty one counts as unset.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file [env: MAPCAST_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// MQTT TCP listener [default: 127.0.0.1:1883] [env: MAPCAST_MQTT_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub mqtt_listen: Option<SocketAddr>,
    /// MQTT over TLS listener, e.g. 0.0.0.0:8883; needs --tls-cert and --tls-key
    /// [default: off] [env: MAPCAST_MQTTS_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub mqtts_listen: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listener [env: MAPCAST_TLS_CERT].
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener [env: MAPCAST_TLS_KEY].
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// MQTT over WebSocket listener (path /mqtt) [default: off] [env: MAPCAST_WS_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub ws_listen: Option<SocketAddr>,
    /// REST API listener [default: 127.0.0.1:8080] [env: MAPCAST_HTTP_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Directory for the embedded database and local files [default: ./data]
    /// [env: MAPCAST_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL, sqlite://PATH or postgres://USER:PASSWORD@HOST/DB
    /// [default: sqlite://{data_dir}/mapcast.db] [env: MAPCAST_DATABASE_URL].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Redis URL that joins this instance to the others on the same
    /// PostgreSQL database [default: off] [env: MAPCAST_CLUSTER_REDIS_URL].
    #[arg(long, value_name = "URL")]
    pub cluster_redis_url: Option<String>,
    /// This instance's name among the others, the same across its restarts
    /// [default: the host name and the MQTT port] [env: MAPCAST_NODE_ID].
    #[arg(long, value_name = "NAME")]
    pub cluster_node_id: Option<String>,
    /// Seconds between map snapshots, 1–300 [default: 60]
    /// [env: MAPCAST_MAP_INTERVAL_SECS].
    #[arg(long, value_name = "SECS")]
    pub map_interval: Option<u64>,
    /// Ship logs, crashes and metrics to this Elasticsearch [default: off]
    /// [env: MAPCAST_ELASTICSEARCH_URL].
    #[arg(long, value_name = "URL")]
    pub elasticsearch_url: Option<String>,
    /// Export traces and metrics over OTLP/HTTP to this APM Server or collector
    /// [default: off] [env: MAPCAST_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Also write every log line, crash report and metrics document to this
    /// Logstash `tcp` input (`json_lines` codec), `host:port` [default: off]
    /// [env: MAPCAST_LOGSTASH_TCP].
    #[arg(long, value_name = "ADDR")]
    pub logstash_tcp: Option<String>,
}

impl ConfigArgs {
    /// Layer the sources into validated settings.
    pub fn load_settings(self) -> anyhow::Result<Settings> {
        let overrides = Overrides {
            mqtt_listen: self.mqtt_listen,
            mqtts_listen: self.mqtts_listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            ws_listen: self.ws_listen,
            http_listen: self.http_listen,
            data_dir: self.data_dir,
            database_url: self.database_url.map(Secret::new),
            cluster_redis_url: self.cluster_redis_url.map(Secret::new),
            cluster_node_id: self.cluster_node_id,
            map_interval_secs: self.map_interval,
            elasticsearch_url: self.elasticsearch_url,
            otlp_endpoint: self.otlp_endpoint,
            logstash_tcp: self.logstash_tcp,
        };
        let env = Env::from_process();
        let file = self.config.or_else(|| env.config_file());
        Settings::load(file.as_deref(), &env, overrides)
    }
}

/// Where an admin command finds the database: the same `--config`,
/// `--data-dir` or `--database-url` the server runs with (or their
/// `MAPCAST_*` variables).
#[derive(Debug, Args)]
pub struct DbLocation {
    /// TOML configuration file [env: MAPCAST_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded database [default: ./data] [env: MAPCAST_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL, sqlite://PATH or postgres://USER:PASSWORD@HOST/DB
    /// [default: sqlite://{data_dir}/mapcast.db] [env: MAPCAST_DATABASE_URL].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// The database of an admin command, and whether it may be created.
#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(flatten)]
    pub location: DbLocation,
    /// Create what does not exist yet: the database (and for `flags set`,
    /// the flag). Without it the command refuses, so a wrong directory or a
    /// typo never yields a new, empty database or a new flag.
    #[arg(long)]
    pub create: bool,
}

impl DbArgs {
    pub fn load_settings(&self) -> anyhow::Result<Settings> {
        self.location.load_settings()
    }
}

impl DbLocation {
    /// The settings, with only the database options taken from the command line.
    pub fn load_settings(&self) -> anyhow::Result<Settings> {
        ConfigArgs {
            config: self.config.clone(),
            mqtt_listen: None,
            mqtts_listen: None,
            tls_cert: None,
            tls_key: None,
            ws_listen: None,
            http_listen: None,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            cluster_redis_url: None,
            cluster_node_id: None,
            map_interval: None,
            elasticsearch_url: None,
            otlp_endpoint: None,
            logstash_tcp: None,
        }
        .load_settings()
    }
}

/// Open and migrate the database of `args`, say on stderr which one it is,
/// run `act`, close it. A database that does not exist yet is created only
/// with `--create`.
pub(crate) fn with_database<T, F, Fut>(args: &DbArgs, act: F) -> anyhow::Result<T>
where
    F: FnOnce(crate::store::Store, Settings) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    use anyhow::bail;

    use crate::store::{Store, describe_database, sqlite_file};

    let settings = args.load_settings()?;
    let url = settings.database_url();
    let url = url.expose();
    let shown = describe_database(url);
    if let Some(file) = sqlite_file(url)
        && !file.exists()
        && !args.create
    {
        bail!(
            "no database at {shown}: point at the server's one with the --config, --data-dir \
             or --database-url it runs with (or run from its working directory), \
             or pass --create to start a new database there"
        );
    }
    eprintln!("mapcast: database {shown}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let store = Store::connect(url, 1).await?;
        if !args.create && sqlite_file(url).is_none() && !store.has_users_table().await {
            store.close().await;
            bail!(
                "the database {shown} holds no mapcast tables: check the URL, or pass \
                 --create to set it up"
            );
        }
        store.migrate().await?;
        let result = act(store.clone(), settings).await;
        store.close().await;
        result
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Rows as an aligned table (for a terminal).
pub(crate) fn write_table(
    mut out: impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> =
            cells.zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
        writeln!(out, "{}", padded.join("  ").trim_end())
    };
    line(&mut out, &mut headers.iter().copied())?;
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Whether list output goes to a person (a table) or a program (JSON lines).
pub(crate) fn stdout_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
}

/// `mapcast migrate`.
pub fn migrate_command(args: DbArgs, mut output: impl Write) -> anyhow::Result<()> {
    let backend = with_database(&args, |store, _| async move { Ok(store.backend()) })?;
    writeln!(output, "{}", serde_json::json!({ "migrated": true, "backend": backend.as_str() }))?;
    Ok(())
}

/// `mapcast backup`: a consistent copy of the database, taken online.
pub fn backup_command(args: BackupArgs, mut output: impl Write) -> anyhow::Result<()> {
    // Never `--create`: a backup of a database that is not there is a mistake.
    let db = DbArgs { location: args.location, create: false };
    let url = db.load_settings()?.database_url();
    anyhow::ensure!(
        crate::store::sqlite_file(url.expose()).is_some(),
        "backup copies the embedded SQLite database; for PostgreSQL use pg_dump"
    );
    anyhow::ensure!(!args.to.exists(), "{} exists already: name a new file", args.to.display());
    let to = std::path::absolute(&args.to)?;
    let copy = to.clone();
    with_database(&db, |store, _| async move { store.backup_sqlite(&copy).await })?;
    let bytes = std::fs::metadata(&to)?.len();
    writeln!(output, "{}", serde_json::json!({ "backup": to, "bytes": bytes }))?;
    Ok(())
}

/// `mapcast hash-password`: the first line of `input`, hashed, to `output`.
pub fn hash_password_command(input: impl BufRead, mut output: impl Write) -> anyhow::Result<()> {
    let password = accounts::read_password(input, "mapcast hash-password < file")?;
    writeln!(output, "{}", hash_password(&password))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::broker::auth::verify_password;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_become_overrides() {
        let cli = Cli::try_parse_from([
            "mapcast",
            "serve",
            "--mqtt-listen",
            "0.0.0.0:1884",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.mqtt_listen, Some("0.0.0.0:1884".parse().unwrap()));
        assert_eq!(args.data_dir, Some(PathBuf::from("/d")));
    }

    #[test]
    fn hash_password_prints_a_verifiable_argon2id_hash() {
        let mut out = Vec::new();
        hash_password_command(&b"s3cret\r\n"[..], &mut out).unwrap();
        let phc = String::from_utf8(out).unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("s3cret", phc.trim_end()));
    }

    #[test]
    fn tables_align_their_columns() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["map.clustering".to_owned(), "on".to_owned()],
            vec!["x".to_owned(), "off".to_owned()],
        ];
        write_table(&mut out, &["KEY", "ENABLED"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text, "KEY             ENABLED\nmap.clustering  on\nx               off\n",
            "{text}"
        );
    }

    #[test]
    fn admin_commands_take_only_the_database_options() {
        let parsed = Cli::try_parse_from(["mapcast", "user", "list", "--mqtt-listen", "0.0.0.0:1"]);
        assert!(parsed.is_err(), "a serve option is not an option of user list");
        let cli = Cli::try_parse_from([
            "mapcast",
            "device",
            "list",
            "--database-url",
            "sqlite://x.db",
            "--create",
        ])
        .unwrap();
        let Command::Device(DeviceCommand::List(args)) = cli.command else { panic!() };
        assert!(args.db.create);
        assert_eq!(args.db.location.database_url.as_deref(), Some("sqlite://x.db"));
    }

    #[test]
    fn hash_password_refuses_an_empty_password() {
        assert!(hash_password_command(&b"\n"[..], Vec::new()).is_err());
    }
}
