//! The operator's first run: the start line (JSON when stdout is not a
//! terminal) names the data directory, the database and every listener and,
//! while no admin exists, the exact command that creates one; dependencies
//! stay quiet at the default level; admin commands never start a new
//! database by accident.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
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
        .kill_on_drop(true)
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

/// The crash report of a panic, its stack trace starting at the panic site:
/// the first frame is the panicking handler with its file and line, not the
/// crash hook or the standard library's panic machinery.
#[tokio::test]
async fn a_crash_reports_stack_trace_starts_at_the_panic_site() {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::add_admin(dir.path(), "root", PASSWORD).await;
    let server =
        ServerProcess::start_with_config(dir.path(), "[debug]\npanic_endpoint = true\n", &[]).await;
    let api = Api::new(server.http_addr);
    let token = api.login("root", PASSWORD).await;

    let resp = api.post_json("/api/v1/admin/debug/panic", Some(&token), &json!({})).await;
    assert_eq!(resp.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR);

    let crashes = dir.path().join("crashes");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let found = std::fs::read_dir(&crashes).ok().and_then(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.path()))
                .find(|p| p.extension().is_some_and(|e| e == "json"))
        });
        if let Some(path) = found {
            break tokio::fs::read_to_string(path).await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no crash report");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let doc: Value = serde_json::from_str(&report).unwrap();
    let trace = doc["error.stack_trace"].as_str().unwrap();
    let mut lines = trace.lines();
    let first = lines.next().unwrap_or_default();
    let at = lines.next().unwrap_or_default();
    // The symbol depends on the debug info (line tables only name it
    // `{async_block#0}`); the file and line below do not.
    assert!(
        first.trim_start().starts_with("0: "),
        "the first frame is the panic site, numbered from 0:\n{trace}"
    );
    let line = doc["log.origin.file.line"].as_u64().unwrap();
    assert!(
        at.trim_start().starts_with("at ")
            && at.contains(&format!("src/http/routes/debug.rs:{line}:")),
        "with the panic's file and line:\n{trace}"
    );
}

/// The crash alert `docs/forensics.md` starts from, checked offline as
/// Kibana's Elasticsearch-query rule type would take it: its data stream has
/// an index template, every field it queries or groups by is mapped there
/// and emitted by mapcast, it fires on a single crash, and its window covers
/// the gap between two checks. `dashboards/import.sh` installs it.
#[test]
#[allow(clippy::disallowed_methods, reason = "offline checks of small repository files")]
fn the_crash_alert_rule_docs_forensics_starts_from_is_shipped_and_valid() {
    use crate::elk_files::catalog::{Emitted, Templates};

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).unwrap();
    let rule: Value = serde_json::from_str(&read("dashboards/alerts/mapcast-crash.json")).unwrap();
    assert!(read("docs/forensics.md").contains("dashboards/alerts/mapcast-crash.json"));
    assert!(read("dashboards/import.sh").contains("api/alerting/rule/"));

    assert_eq!(rule["rule_type_id"], ".es-query");
    assert_eq!(rule["consumer"], "stackAlerts");
    assert!(rule["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(rule.get("id").is_none(), "the id goes in the URL, not the body");
    assert!(rule["actions"].is_array());
    let p = &rule["params"];
    assert_eq!(p["searchType"], "esQuery");
    assert_eq!(p["index"], json!(["logs-mapcast.crash-*"]));
    let (threshold, comparator) = (&p["threshold"], p["thresholdComparator"].as_str());
    assert!(
        threshold == &json!([0]) && comparator == Some(">")
            || threshold == &json!([1]) && comparator == Some(">="),
        "one crash fires: {threshold} {comparator:?}"
    );
    let secs = |n: &Value, unit: &str| {
        n.as_u64().unwrap()
            * match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                other => panic!("unit {other}"),
            }
    };
    let interval = rule["schedule"]["interval"].as_str().unwrap();
    let (n, unit) = interval.split_at(interval.len() - 1);
    let every = secs(&json!(n.parse::<u64>().unwrap()), unit);
    let window = secs(&p["timeWindowSize"], p["timeWindowUnit"].as_str().unwrap());
    assert!(window >= every, "a {window} s window checked every {every} s misses crashes");

    let templates = Templates::load(&repo.join("dashboards/templates"));
    let mappings = templates.mappings();
    let fields = mappings.get("logs-mapcast.crash-*").expect("a template for the crash stream");
    let emitted = Emitted::load();
    let query: Value = serde_json::from_str(p["esQuery"].as_str().unwrap()).unwrap();
    let mut used = vec![p["timeField"].as_str().unwrap().to_owned()];
    for clause in query["query"]["bool"]["filter"].as_array().unwrap() {
        for kind in ["term", "terms", "match", "match_phrase"] {
            if let Some(obj) = clause[kind].as_object() {
                used.extend(obj.keys().cloned());
            }
        }
    }
    if p["groupBy"] == "top" {
        used.push(p["termField"].as_str().unwrap().to_owned());
    }
    assert!(used.len() >= 3, "{used:?}");
    for field in &used {
        let kind = fields.get(field).unwrap_or_else(|| panic!("{field} is not mapped"));
        assert!(
            ["keyword", "date", "constant_keyword"].contains(&kind.as_str()),
            "{field}: {kind}"
        );
        assert!(emitted.contains(field), "mapcast never writes {field}");
    }
    assert_eq!(fields[p["timeField"].as_str().unwrap()], "date");
}

#[tokio::test]
async fn a_malformed_password_hash_in_the_config_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapcast.toml");
    let toml = "[[auth.users]]\nusername = \"ops\"\npassword_hash = \"not-a-hash-oops\"\n";
    tokio::fs::write(&config, toml).await.unwrap();
    let data = dir.path().join("data");
    let args = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--mqtt-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let run = mapcast_in(dir.path(), &args, "");
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the server must refuse to start, not run");
    assert!(!ok);
    assert!(err.contains("auth.users[0]") && err.contains("password_hash"), "{err}");
    assert!(!err.contains("not-a-hash-oops"), "the hash is not quoted: {err}");
}
