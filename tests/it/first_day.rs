//! The operator's first run: the start line (JSON when stdout is not a
//! terminal) names the data directory, the database and every listener and,
//! while no admin exists, the exact command that creates one; dependencies
//! stay quiet at the default level; admin commands never start a new
//! database by accident.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::helpers::{Api, PASSWORD, ServerProcess};

/// The JSON log lines the server printed so far.
fn json_lines(server: &ServerProcess) -> Vec<Value> {
    server
        .logs()
        .lines()
        .filter(|l| !l.starts_with("stderr: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn start_line(server: &ServerProcess) -> Value {
    let lines = json_lines(server);
    let mut started = lines
        .iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("mapcast started")));
    let line = started.next().unwrap_or_else(|| panic!("no start line in {lines:#?}")).clone();
    assert!(started.next().is_none(), "one start line");
    line
}

/// `mapcast ARGS` run in `cwd` with `stdin`: (success, stdout, stderr).
async fn mapcast_in(cwd: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mapcast"))
        .args(args)
        .current_dir(cwd)
        .env_remove("MAPCAST_CONFIG")
        .env_remove("MAPCAST_DATABASE_URL")
        .env_remove("MAPCAST_DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the mapcast binary");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn the_start_line_names_where_everything_is_and_how_to_create_the_first_admin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]).await;
    let api = Api::new(server.http_addr);
    // Let the listeners and the first map tick log whatever they log.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let line = start_line(&server);
    assert_eq!(line["mqtt.address"], server.mqtt_addr.to_string(), "{line}");
    assert_eq!(line["http.address"], server.http_addr.to_string(), "{line}");
    assert_eq!(line["mapcast.data_dir"], data.to_str().unwrap(), "{line}");
    let db_file = data.join("mapcast.db");
    assert_eq!(line["database.backend"], "sqlite", "{line}");
    assert_eq!(line["database.location"], format!("sqlite {}", db_file.display()), "{line}");
    let hint = line["mapcast.admin_command"].as_str().unwrap_or_else(|| panic!("{line}"));
    assert!(line["message"].as_str().unwrap().contains(hint), "the hint is in the message");

    // Nothing but mapcast itself speaks at info level by default.
    for l in json_lines(&server) {
        let logger = l["log.logger"].as_str().unwrap_or_default();
        let level = l["log.level"].as_str().unwrap_or_default();
        assert!(
            logger.starts_with("mapcast") || level == "warn" || level == "error",
            "a dependency logs at {level} by default: {l}"
        );
    }

    // The hint works as printed, from any directory, against this server.
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[0], "mapcast", "{hint}");
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, _, err) = mapcast_in(elsewhere.path(), &words[1..], &format!("{PASSWORD}\n")).await;
    assert!(ok, "`{hint}` failed: {err}");
    assert!(err.contains(&db_file.display().to_string()), "names its database: {err}");
    let admin = api.login("admin", PASSWORD).await;
    assert!(!admin.is_empty());

    server.terminate(Duration::from_secs(10)).await.expect("a clean stop");
    let again = ServerProcess::start(&data, &[]).await;
    let line = start_line(&again);
    assert!(line.get("mapcast.admin_command").is_none(), "an admin exists: {line}");
    assert_eq!(line["message"], "mapcast started", "{line}");
}

#[tokio::test]
async fn admin_commands_refuse_to_create_a_database_unless_told() {
    let empty = tempfile::tempdir().unwrap();
    let add = ["user", "add", "--username", "root", "--admin", "--password-stdin"];

    let (ok, out, err) = mapcast_in(empty.path(), &add, &format!("{PASSWORD}\n")).await;
    assert!(!ok, "no database here: {out}");
    let expected = empty.path().join("data").join("mapcast.db");
    assert!(err.contains(&expected.display().to_string()), "names the database: {err}");
    assert!(err.contains("--create") && err.contains("--data-dir"), "says what to do: {err}");
    let left: Vec<_> = std::fs::read_dir(empty.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing created: {left:?}");
    for other in [&["user", "list"][..], &["device", "list"], &["flags", "list"], &["migrate"]] {
        let (ok, _, err) = mapcast_in(empty.path(), other, "").await;
        assert!(!ok && err.contains("--create"), "{other:?}: {err}");
    }
    assert!(std::fs::read_dir(empty.path()).unwrap().next().is_none(), "still nothing");

    let with_create = [&add[..], &["--create"]].concat();
    let (ok, out, err) = mapcast_in(empty.path(), &with_create, &format!("{PASSWORD}\n")).await;
    assert!(ok, "{err}");
    assert!(err.contains(&expected.display().to_string()), "names the database: {err}");
    let user: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(user["role"], "admin");
    assert!(expected.exists());

    // The server started on that directory knows the admin.
    let server = ServerProcess::start(&empty.path().join("data"), &[]).await;
    Api::new(server.http_addr).login("root", PASSWORD).await;
}
