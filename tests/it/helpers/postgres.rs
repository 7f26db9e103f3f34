//! PostgreSQL for the tests that need it: they run only when
//! `MAPCAST_TEST_POSTGRES_URL` points at a server where the test may create
//! databases; each test gets a fresh one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server URL, or `None` (and a "skipped" line) when not configured.
pub fn postgres_test_url(test: &str) -> Option<String> {
    match std::env::var("MAPCAST_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!(
                "skipped: {test} needs PostgreSQL; set MAPCAST_TEST_POSTGRES_URL=postgres://user@host:port/db"
            );
            None
        }
    }
}

/// Create an empty database on the server at `base_url`; returns its URL.
pub async fn fresh_postgres_database(base_url: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    let name = format!(
        "mapcast_test_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );

    let mut conn = PgConnection::connect(base_url)
        .await
        .unwrap_or_else(|e| panic!("connect to MAPCAST_TEST_POSTGRES_URL: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    with_database(base_url, &name)
}

/// `base_url` with its database name replaced by `db`, query string kept.
fn with_database(base_url: &str, db: &str) -> String {
    let (head, query) = match base_url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base_url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Tell CI that a PostgreSQL test really ran (it checks for this file).
pub async fn mark_postgres_ran() {
    if let Ok(dir) = std::env::var("MAPCAST_TEST_MARKER_DIR") {
        tokio::fs::create_dir_all(&dir).await.expect("create MAPCAST_TEST_MARKER_DIR");
        tokio::fs::write(std::path::Path::new(&dir).join("postgres-ran"), b"ok\n")
            .await
            .expect("write postgres-ran marker");
    }
}

#[test]
fn database_name_is_replaced_and_query_kept() {
    assert_eq!(with_database("postgres://u@h:5/postgres", "t1"), "postgres://u@h:5/t1");
    assert_eq!(
        with_database("postgres://u@h:5/postgres?sslmode=disable", "t1"),
        "postgres://u@h:5/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h:5", "t1"), "postgres://u@h:5/t1");
}
