//! The shared connection pool and the embedded migrations.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migrate, Migrator};
use tokio::runtime::Handle;

use super::WriteHealth;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// sqlx's default migrations table.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Applied to every SQLite connection: wait for locks instead of failing;
/// statement journals of the batched multi-row writes in memory, not in a
/// temporary file per batch. `synchronous` comes from [`SqliteSynchronous`].
const SQLITE_CONNECTION_PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;";

/// How SQLite (in WAL mode) syncs a commit to disk: what an acknowledgement
/// survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// The WAL is fsynced at every commit, so every group commit (and the
    /// QoS 1/2 acknowledgements waiting for it) survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: a killed process loses nothing committed,
    /// but power loss or an OS crash can lose the last acknowledged commits.
    Normal,
}

impl SqliteSynchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Normal => "normal",
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "PRAGMA synchronous = FULL",
            Self::Normal => "PRAGMA synchronous = NORMAL",
        }
    }
}

impl std::str::FromStr for SqliteSynchronous {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            _ => bail!("expected `full` or `normal`, got {s:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            bail!("unsupported database URL scheme (expected sqlite: or postgres://)")
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// `rows` tuples of `columns` placeholders for a multi-row statement:
    /// `($1, $2), ($3, $4)` for PostgreSQL, `(?, ?), (?, ?)` for SQLite,
    /// where each numbered parameter costs a linear search of its name at
    /// bind time (quadratic in the statement's size).
    pub(crate) fn value_rows(self, rows: usize, columns: usize) -> String {
        let mut out = String::with_capacity(rows * columns * 5);
        for r in 0..rows {
            out.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..columns {
                if c > 0 {
                    out.push_str(", ");
                }
                match self {
                    Self::Sqlite => out.push('?'),
                    Self::Postgres => {
                        use std::fmt::Write as _;
                        let _ = write!(out, "${}", r * columns + c + 1);
                    }
                }
            }
            out.push(')');
        }
        out
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The database: one pool shared by every part of the process.
///
/// Queries may be issued from any runtime (actix and ntex workers run their
/// own) through [`Store::run`], which executes them on the runtime that owns
/// the pool: PostgreSQL connections break when the runtime that opened them
/// stops.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    handle: Handle,
    /// Kept by the batching writer; read by readiness.
    write_health: Arc<WriteHealth>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Store {
    /// Open the pool. Must be called on the runtime that will own it.
    /// SQLite files (and their directory) are created when missing and
    /// commit power-safe ([`SqliteSynchronous::Full`]).
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Self::connect_with(url, max_connections, SqliteSynchronous::Full).await
    }

    /// [`Store::connect`] with the SQLite sync mode chosen (PostgreSQL
    /// ignores it).
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        synchronous: SqliteSynchronous,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        let url = match backend {
            Backend::Sqlite => {
                if let Some(dir) =
                    sqlite_path(url).and_then(Path::parent).filter(|d| !d.as_os_str().is_empty())
                {
                    tokio::fs::create_dir_all(dir).await.with_context(|| {
                        format!("cannot create database directory {}", dir.display())
                    })?;
                }
                options = options.after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        sqlx::raw_sql(SQLITE_CONNECTION_PRAGMAS).execute(&mut *conn).await?;
                        sqlx::raw_sql(synchronous.pragma()).execute(conn).await.map(drop)
                    })
                });
                with_create_mode(url)
            }
            Backend::Postgres => url.to_owned(),
        };
        // The error may quote the URL: name the backend only.
        let pool = options
            .connect(&url)
            .await
            .with_context(|| format!("cannot connect to the {backend} database"))?;
        if backend == Backend::Sqlite {
            // Persistent in the file: once is enough. WAL lets readers run
            // beside the single batching writer.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .context("cannot enable SQLite WAL")?;
        }
        tracing::debug!(
            database.backend = %backend,
            max_connections,
            database.sqlite_synchronous = synchronous.as_str(),
            "database pool open"
        );
        Ok(Self { pool, backend, handle: Handle::current(), write_health: Arc::default() })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether writes succeed, as the batching writer last saw it.
    pub fn write_health(&self) -> &Arc<WriteHealth> {
        &self.write_health
    }

    /// Run a query future on the runtime that owns the pool, from any thread
    /// or runtime. A panic in `fut` resumes in the caller; a stopped runtime
    /// reads as a closed pool.
    pub async fn run<F, T, E>(&self, fut: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        match self.handle.spawn(fut).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(sqlx::Error::PoolClosed.into()),
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Apply the embedded migrations of this backend that are not applied yet.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let (pool, migrator) = (self.pool.clone(), self.migrator());
        self.run(async move { migrator.run(&pool).await.map_err(anyhow::Error::from) })
            .await
            .context("cannot apply database migrations")
    }

    /// Whether every embedded migration is applied (for readiness).
    pub async fn migrations_applied(&self) -> bool {
        let (pool, migrator) = (self.pool.clone(), self.migrator());
        let applied = self
            .run(async move {
                let mut conn = pool.acquire().await?;
                conn.list_applied_migrations(MIGRATIONS_TABLE).await.map_err(anyhow::Error::from)
            })
            .await;
        let Ok(applied) = applied else { return false };
        migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .all(|m| applied.iter().any(|a| a.version == m.version))
    }

    /// A round trip to the database.
    /// Whether mapcast's tables exist here (any migration ever ran): tells
    /// a database mapcast set up from an empty or foreign one.
    /// Copy a SQLite database, while servers keep using it, to `to` (which
    /// must not exist): one consistent snapshot (`VACUUM INTO`), compacted.
    pub async fn backup_sqlite(&self, to: &std::path::Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.backend == Backend::Sqlite,
            "backup copies the embedded SQLite database; for PostgreSQL use pg_dump"
        );
        let to = to.to_str().ok_or_else(|| anyhow::anyhow!("the backup path is not UTF-8"))?;
        let (pool, to) = (self.pool.clone(), to.to_owned());
        self.run(async move { sqlx::query("VACUUM INTO ?").bind(to).execute(&pool).await }).await?;
        Ok(())
    }

    pub async fn has_users_table(&self) -> bool {
        let pool = self.pool.clone();
        self.run(async move { sqlx::query("SELECT 1 FROM users LIMIT 1").execute(&pool).await })
            .await
            .is_ok()
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let pool = self.pool.clone();
        self.run(async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop) }).await
    }

    /// Close every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The file path of a `sqlite:` URL, unless it is in memory.
fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| Path::new(path))
}

/// Where a database URL points, for people: the absolute SQLite file, or
/// the PostgreSQL server and database without credentials.
pub fn describe_database(url: &str) -> String {
    if let Some(path) = sqlite_path(url) {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        return format!("sqlite {}", path.display());
    }
    if url.starts_with("sqlite:") {
        return "sqlite in memory".into();
    }
    // postgres://user:password@host:port/db?options → postgres host:port/db
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('?').next().unwrap_or_default();
    format!("postgres {rest}")
}

/// The SQLite file a URL names, if it names one.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    sqlite_path(url).map(Path::to_path_buf)
}

/// Ask SQLite to create the file unless the URL chose a mode.
fn with_create_mode(url: &str) -> String {
    match url.split_once('?') {
        Some((_, query)) if query.split('&').any(|p| p.starts_with("mode=")) => url.to_owned(),
        Some(_) => format!("{url}&mode=rwc"),
        None => format!("{url}?mode=rwc"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_rows_number_parameters_for_postgres_only() {
        assert_eq!(Backend::Postgres.value_rows(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(Backend::Sqlite.value_rows(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(Backend::Sqlite.value_rows(1, 1), "(?)");
    }

    #[test]
    fn backends_are_named_by_url_scheme() {
        assert_eq!(Backend::from_url("sqlite://./data/x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::from_url("postgresql://u@h/db").unwrap(), Backend::Postgres);
        assert!(Backend::from_url("mysql://u:secret@h/db").is_err());
    }

    #[test]
    fn sqlite_urls_get_a_create_mode_unless_they_chose_one() {
        assert_eq!(with_create_mode("sqlite://a.db"), "sqlite://a.db?mode=rwc");
        assert_eq!(
            with_create_mode("sqlite://a.db?cache=shared"),
            "sqlite://a.db?cache=shared&mode=rwc"
        );
        assert_eq!(with_create_mode("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
        assert_eq!(sqlite_path("sqlite:///var/x/a.db?mode=rw"), Some(Path::new("/var/x/a.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    #[tokio::test]
    async fn a_fresh_sqlite_database_is_created_migrated_and_ready() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/nested/mapcast.db", dir.path().display());
        let store = Store::connect(&url, 2).await.unwrap();
        assert!(!store.migrations_applied().await);

        store.migrate().await.unwrap();
        store.migrate().await.expect("migrating twice is a no-op");

        assert!(store.migrations_applied().await);
        store.ping().await.unwrap();
        let mode: (String,) =
            sqlx::query_as("PRAGMA journal_mode").fetch_one(store.pool()).await.unwrap();
        assert_eq!(mode.0, "wal");
    }

    /// `PRAGMA synchronous` on `n` connections held at once (so each is a
    /// separate pooled connection): 2 is FULL, 1 NORMAL.
    async fn synchronous_of_connections(store: &Store, n: usize) -> Vec<i64> {
        let mut held = Vec::new();
        let mut levels = Vec::new();
        for _ in 0..n {
            let mut conn = store.pool().acquire().await.unwrap();
            let level: (i64,) =
                sqlx::query_as("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
            levels.push(level.0);
            held.push(conn);
        }
        levels
    }

    #[tokio::test]
    async fn sqlite_commits_are_power_safe_unless_normal_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/a.db", dir.path().display());
        let default = Store::connect(&url, 3).await.unwrap();
        assert_eq!(synchronous_of_connections(&default, 3).await, [2, 2, 2], "FULL by default");
        default.close().await;

        let normal = Store::connect_with(&url, 3, SqliteSynchronous::Normal).await.unwrap();
        assert_eq!(synchronous_of_connections(&normal, 3).await, [1, 1, 1]);
    }

    #[test]
    fn sync_modes_parse_from_their_names_only() {
        assert_eq!("full".parse::<SqliteSynchronous>().unwrap(), SqliteSynchronous::Full);
        assert_eq!("normal".parse::<SqliteSynchronous>().unwrap(), SqliteSynchronous::Normal);
        assert!("off".parse::<SqliteSynchronous>().is_err());
        assert_eq!(SqliteSynchronous::default(), SqliteSynchronous::Full);
    }
}
