//! Feature flags and the canary guard, on the real binary: admins change
//! flags at run time (REST or `mapcast flags set`), evaluation is sticky per
//! caller, and a failing canary — errors, or a crash even in an earlier run —
//! rolls itself back to 0 % for good.

use std::path::Path;
use std::time::{Duration, Instant};

use mapcast::flags::rollout::in_rollout;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Api, PASSWORD, ServerProcess, V3Options, add_admin, expect_json, expect_problem,
    fresh_postgres_database, location, mapcast_cli, mark_postgres_ran, postgres_test_url,
};

const FLAG: &str = "/api/v1/flags/map.clustering";
/// Fast refreshes and checks, a map every second, fault injection allowed.
const CANARY_CONFIG: &str = "[map]\ninterval_secs = 1\n\
    [flags]\nrefresh_ms = 200\ncanary_interval_secs = 1\n\
    [debug]\npanic_endpoint = true\n";
const WAIT: Duration = Duration::from_secs(20);

/// An admin, signed in; returns (api, token, the admin's targeting key).
async fn admin(server: &ServerProcess, user: &Value) -> (Api, String, String) {
    let api = Api::new(server.http_addr);
    let token = api.login("root", PASSWORD).await;
    (api, token, format!("rest:{}", user["id"].as_str().unwrap()))
}

async fn put_flag(api: &Api, token: &str, body: Value) -> reqwest::Response {
    api.send(reqwest::Method::PUT, FLAG, Some(token), Some(("application/json", body.to_string())))
        .await
}

/// Publish one position and wait until the map has it.
async fn map_with_one_device(server: &ServerProcess) {
    let mut car = V3Options::new("car-1", server.mqtt_addr).connect().await;
    car.publish_qos1("devices/car-1/location", false, location(13.4, 52.5)).await;
    let api = Api::new(server.http_addr);
    let deadline = Instant::now() + WAIT;
    while api.get("/api/v1/map", None).await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "no map snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /api/v1/map?zoom=3` as `token`: (status, clustered?).
async fn zoomed(api: &Api, token: Option<&str>) -> (StatusCode, bool) {
    let resp = api.get("/api/v1/map?zoom=3", token).await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["clustered"] == true)
}

/// Poll the flag until `pred` holds.
async fn wait_for_flag(api: &Api, token: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let flag = expect_json(api.get(FLAG, Some(token)).await, StatusCode::OK).await;
        if pred(&flag) {
            return flag;
        }
        assert!(Instant::now() < deadline, "flag never matched: {flag}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log_lines(server: &ServerProcess) -> Vec<Value> {
    server.logs().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test]
async fn flags_are_for_admins_and_bodies_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let root = add_admin(dir.path(), "root", PASSWORD).await;
    let config = "[telemetry]\ncanary = true\nservice_version = \"9.9.9-canary\"\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let (api, token, _) = admin(&server, &root).await;
    let user = api.sign_up("ann").await;

    expect_problem(api.get("/api/v1/flags", None).await, 401, "unauthorized").await;
    expect_problem(api.get("/api/v1/flags", Some(&user)).await, 403, "forbidden").await;
    expect_problem(put_flag(&api, &user, json!({"enabled": true})).await, 403, "forbidden").await;
    expect_problem(api.get(FLAG, Some(&token)).await, 404, "not-found").await;
    let bad_key = api.get("/api/v1/flags/Not%20A%20Key", Some(&token)).await;
    expect_problem(bad_key, 400, "bad-request").await;
    for body in [
        json!({"enabled": true, "rollout": 101}),
        json!({"enabled": true, "variants": ["control"]}),
        json!({"enabled": true, "rolout": 5}),
        json!({"enabled": true, "canary": {"failed_checks": 0}}),
        json!({"enabled": true, "debug_fault": "panic"}),
    ] {
        let problem =
            expect_problem(put_flag(&api, &token, body.clone()).await, 422, "unprocessable").await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{body}");
    }
    let not_json = api
        .send(reqwest::Method::PUT, FLAG, Some(&token), Some(("application/json", "{".into())))
        .await;
    expect_problem(not_json, 400, "bad-request").await;

    let body = json!({"enabled": true, "rollout": 25, "variants": ["grid"], "deny": ["rest:x"]});
    let stored = expect_json(put_flag(&api, &token, body).await, StatusCode::OK).await;
    assert_eq!(stored["key"], "map.clustering");
    assert_eq!((stored["rollout"].as_u64(), stored["state"].as_str()), (Some(25), Some("active")));
    assert_eq!(stored["canary"]["failed_checks"], 3, "defaults filled in: {stored}");
    let listed = expect_json(api.get("/api/v1/flags", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(listed["items"], json!([stored]));

    // A canary build says so on every line.
    let lines = log_lines(&server);
    assert!(!lines.is_empty());
    for line in &lines {
        assert_eq!(line["labels.canary"], "true", "{line}");
        assert_eq!(line["service.version"], "9.9.9-canary", "{line}");
    }
}

#[tokio::test]
async fn a_flag_set_from_the_command_line_goes_live_in_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    cli_changes_go_live(dir.path(), &[]).await;
}

/// `db` selects the database (none: SQLite in the data directory).
pub async fn cli_changes_go_live(dir: &Path, db: &[&str]) {
    let server = ServerProcess::start_with_config(dir, CANARY_CONFIG, db).await;
    map_with_one_device(&server).await;
    let api = Api::new(server.http_addr);
    assert_eq!(zoomed(&api, None).await, (StatusCode::OK, false), "no flag: the whole map");

    let data_dir = dir.to_str().unwrap();
    let target = [&["--data-dir", data_dir][..], db].concat();
    let args = ["flags", "set", "map.clustering", "--enabled", "true", "--rollout", "100"];
    let (ok, out, err) = mapcast_cli(&[&args[..], &target].concat(), "").await;
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(printed["rollout"], 100);

    let deadline = Instant::now() + WAIT;
    while zoomed(&api, None).await != (StatusCode::OK, true) {
        assert!(Instant::now() < deadline, "the server never picked the change up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without `zoom`, nothing is flagged.
    let whole: Value = api.get("/api/v1/map", None).await.json().await.unwrap();
    assert!(whole.get("clustered").is_none());

    let (ok, out, err) = mapcast_cli(&[&["flags", "list"][..], &target].concat(), "").await;
    assert!(ok, "{err}");
    assert!(out.contains("\"key\":\"map.clustering\""), "{out}");
    let too_much = ["flags", "set", "map.clustering", "--rollout", "200"];
    let (ok, _, err) = mapcast_cli(&[&too_much[..], &target].concat(), "").await;
    assert!(!ok && err.contains("200"), "{err}");
}

#[tokio::test]
async fn each_caller_keeps_its_variant_across_requests_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start_with_config(dir.path(), CANARY_CONFIG, &[]).await;
    map_with_one_device(&server).await;
    let (api, token, _) = admin(&server, &root).await;
    let mut callers = Vec::new();
    for name in ["ann", "bob", "cyd", "dan", "eve"] {
        let user = api.register(name, PASSWORD).await;
        callers.push((name, format!("rest:{}", user["id"].as_str().unwrap())));
    }
    // Half by bucket; the lists make sure both variants occur.
    let body = json!({
        "enabled": true, "rollout": 50, "deny": [callers[0].1], "allow": [callers[1].1],
    });
    expect_json(put_flag(&api, &token, body).await, StatusCode::OK).await;

    let mut seen = Vec::new();
    for (i, (name, key)) in callers.iter().enumerate() {
        let token = api.login(name, PASSWORD).await;
        let expected = match i {
            0 => false,
            1 => true,
            _ => in_rollout("map.clustering", key, 50),
        };
        for _ in 0..3 {
            assert_eq!(zoomed(&api, Some(&token)).await, (StatusCode::OK, expected), "{name}");
        }
        seen.push(expected);
    }

    // Each evaluation is an event inside the request, with the variant and
    // the targeting key.
    let lines = log_lines(&server);
    let evaluation = lines
        .iter()
        .find(|l| {
            l["event.action"] == "feature_flag.evaluation"
                && l["feature_flag.context.id"] == callers[0].1
        })
        .expect("an evaluation event");
    assert_eq!(evaluation["feature_flag.key"], "map.clustering");
    assert_eq!(evaluation["feature_flag.result.variant"], "control");
    assert_eq!(evaluation["feature_flag.result.reason"], "targeting_match");
    assert_eq!(evaluation["feature_flag.provider.name"], "mapcast");
    assert_eq!(evaluation["http.route"], "/api/v1/map", "{evaluation}");
    // So does the request's own line, with its duration and status.
    let request = lines
        .iter()
        .find(|l| l["message"] == "request completed" && l["trace.id"] == evaluation["trace.id"])
        .expect("the request line");
    assert_eq!(request["feature_flag.key"], "map.clustering", "{request}");
    assert_eq!(request["feature_flag.result.variant"], "control", "{request}");
    assert!(request["event.duration"].is_u64());
    let metrics = api.get("/metrics", None).await.text().await.unwrap();
    let on = 3 * seen.iter().filter(|s| **s).count();
    for (variant, count) in [("control", 3 * seen.len() - on), ("on", on)] {
        let line = format!(
            "mapcast_feature_flag_requests_total{{flag=\"map.clustering\",variant=\"{variant}\"}} {count}\n"
        );
        assert!(metrics.contains(&line), "no {line:?} in {metrics}");
    }

    // The same callers, the same variants after a restart.
    server.terminate(Duration::from_secs(10)).await.expect("a clean exit");
    let server = ServerProcess::start_with_config(dir.path(), CANARY_CONFIG, &[]).await;
    map_with_one_device(&server).await;
    let api = Api::new(server.http_addr);
    for (i, (name, _)) in callers.iter().enumerate() {
        let token = api.login(name, PASSWORD).await;
        assert_eq!(
            zoomed(&api, Some(&token)).await,
            (StatusCode::OK, seen[i]),
            "{name} after restart"
        );
    }
}

fn rollback_events(server: &ServerProcess) -> Vec<Value> {
    log_lines(server).into_iter().filter(|l| l["event.action"] == "canary-rollback").collect()
}

#[tokio::test]
async fn a_failing_canary_rolls_itself_back_and_stays_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    failing_canary_rolls_back(dir.path(), &[]).await;
}

/// `mapcast user add --admin` for `root` on the database `db` selects.
async fn add_root(dir: &Path, db: &[&str]) -> Value {
    if db.is_empty() {
        return add_admin(dir, "root", PASSWORD).await;
    }
    let args = [
        "user",
        "add",
        "--username",
        "root",
        "--admin",
        "--password-stdin",
        "--create",
        "--data-dir",
    ];
    let args = [&args[..], &[dir.to_str().unwrap()], db].concat();
    let (ok, stdout, stderr) = mapcast_cli(&args, &format!("{PASSWORD}\n")).await;
    assert!(ok, "{stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

pub async fn failing_canary_rolls_back(dir: &Path, db: &[&str]) {
    let root = add_root(dir, db).await;
    let server = ServerProcess::start_with_config(dir, CANARY_CONFIG, db).await;
    map_with_one_device(&server).await;
    let (api, token, me) = admin(&server, &root).await;
    // The admin is the canary, anonymous callers the control.
    let body = json!({
        "enabled": true, "rollout": 0, "allow": [me], "debug_fault": "error",
        "canary": {"min_samples": 5, "failed_checks": 2},
    });
    expect_json(put_flag(&api, &token, body).await, StatusCode::OK).await;

    let deadline = Instant::now() + WAIT;
    let mut canary_errors = 0;
    loop {
        for _ in 0..5 {
            let (status, _) = zoomed(&api, Some(&token)).await;
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                canary_errors += 1;
            }
            assert_eq!(zoomed(&api, None).await, (StatusCode::OK, false));
        }
        let flag = expect_json(api.get(FLAG, Some(&token)).await, StatusCode::OK).await;
        if flag["state"] == "rolled_back" {
            assert_eq!(flag["rollout"], 0);
            assert_eq!(flag["failed_checks"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "never rolled back: {flag}\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(canary_errors >= 10, "the canary failed {canary_errors} times");
    // Rolled back: the admin gets the control (the whole map, no fault).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(zoomed(&api, Some(&token)).await, (StatusCode::OK, false));

    let events = rollback_events(&server);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["feature_flag.key"], "map.clustering");
    assert_eq!(e["mapcast.canary.canary.error_rate"], 1.0, "{e}");
    assert_eq!(e["mapcast.canary.control.error_rate"], 0.0, "{e}");
    assert!(e["mapcast.canary.canary.requests"].as_u64().unwrap() >= 5, "{e}");
    assert!(e["mapcast.canary.control.requests"].as_u64().unwrap() >= 5, "{e}");
    assert!(e["event.reason"].as_str().unwrap().contains("error rate"), "{e}");
    let metrics = api.get("/metrics", None).await.text().await.unwrap();
    let errors = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "mapcast_feature_flag_errors_total{flag=\"map.clustering\",variant=\"on\"}",
            )
        })
        .expect("errors of the canary variant");
    assert!(errors.ends_with(&format!(" {canary_errors}")), "{errors}");

    // A restart does not resume the bad canary.
    server.terminate(Duration::from_secs(10)).await.expect("a clean exit");
    let server = ServerProcess::start_with_config(dir, CANARY_CONFIG, db).await;
    map_with_one_device(&server).await;
    let api = Api::new(server.http_addr);
    let token = api.login("root", PASSWORD).await;
    let flag = expect_json(api.get(FLAG, Some(&token)).await, StatusCode::OK).await;
    assert_eq!((flag["state"].as_str(), flag["rollout"].as_u64()), (Some("rolled_back"), Some(0)));
    assert_eq!(zoomed(&api, Some(&token)).await, (StatusCode::OK, false));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rollback_events(&server).is_empty(), "nothing new to roll back");
}

#[allow(clippy::disallowed_methods, reason = "a few small files, read by the test")]
fn crash_reports(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir.join("crashes")) else { return Vec::new() };
    entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
        .collect()
}

#[tokio::test]
async fn a_crash_in_a_canary_path_rolls_it_back_even_after_the_process_died() {
    let dir = tempfile::tempdir().unwrap();
    let root = add_admin(dir.path(), "root", PASSWORD).await;
    // Checks once at start, then hourly: only the restart can count the crash.
    let config = CANARY_CONFIG.replace("canary_interval_secs = 1", "canary_interval_secs = 3600");
    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    map_with_one_device(&server).await;
    let (api, token, me) = admin(&server, &root).await;
    let body = json!({
        "enabled": true, "allow": [me], "debug_fault": "panic", "canary": {"failed_checks": 1},
    });
    expect_json(put_flag(&api, &token, body).await, StatusCode::OK).await;

    let resp = api.get("/api/v1/map?zoom=2", Some(&token)).await;
    expect_problem(resp, 500, "internal").await;
    assert_eq!(zoomed(&api, None).await, (StatusCode::OK, false), "the process survived");
    let crash = crash_reports(dir.path()).pop().expect("a crash report");
    assert_eq!(
        crash["mapcast.crash.feature_flags"],
        json!([{"key": "map.clustering", "variant": "on"}])
    );
    assert_eq!(crash["feature_flag.result.variant"], "on", "{crash}");
    assert_eq!(crash["feature_flag.key"], "map.clustering", "{crash}");
    let flag = expect_json(api.get(FLAG, Some(&token)).await, StatusCode::OK).await;
    assert_eq!(flag["state"], "active", "no check ran yet");
    server.kill9().await;

    let server = ServerProcess::start_with_config(dir.path(), &config, &[]).await;
    let api = Api::new(server.http_addr);
    let token = api.login("root", PASSWORD).await;
    let flag = wait_for_flag(&api, &token, |f| f["state"] == "rolled_back").await;
    assert_eq!(flag["rollout"], 0);
    let events = rollback_events(&server);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["mapcast.canary.crashes"], 1);
    assert!(events[0]["event.reason"].as_str().unwrap().contains("crashed"));
}

#[tokio::test]
async fn flags_and_rollbacks_work_on_postgres() {
    let Some(base) = postgres_test_url("flags_and_rollbacks_work_on_postgres") else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_postgres_database(&base).await;
    cli_changes_go_live(dir.path(), &["--database-url", &url]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_postgres_database(&base).await;
    failing_canary_rolls_back(dir.path(), &["--database-url", &url]).await;
    mark_postgres_ran().await;
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back_for_its_p99() {
    let dir = tempfile::tempdir().unwrap();
    let root = add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start_with_config(dir.path(), CANARY_CONFIG, &[]).await;
    map_with_one_device(&server).await;
    let (api, token, me) = admin(&server, &root).await;
    let body = json!({
        "enabled": true, "allow": [me], "debug_fault": "slow",
        "canary": {"min_samples": 3, "failed_checks": 1, "min_p99_ms": 100},
    });
    expect_json(put_flag(&api, &token, body).await, StatusCode::OK).await;

    let deadline = Instant::now() + WAIT;
    while rollback_events(&server).is_empty() {
        assert!(Instant::now() < deadline, "never rolled back:\n{}", server.logs());
        // Slow answers overlap, so each interval sees enough of them.
        let canary = futures::future::join_all((0..4).map(|_| zoomed(&api, Some(&token))));
        let control = futures::future::join_all((0..8).map(|_| zoomed(&api, None)));
        let (canary, control) = tokio::join!(canary, control);
        assert!(canary.iter().chain(&control).all(|(status, _)| *status == StatusCode::OK));
    }
    let e = &rollback_events(&server)[0];
    assert!(e["event.reason"].as_str().unwrap().contains("p99"), "{e}");
    assert!(e["mapcast.canary.canary.p99_ms"].as_f64().unwrap() >= 250.0, "{e}");
    assert!(e["mapcast.canary.control.p99_ms"].as_f64().unwrap() < 100.0, "{e}");
    assert_eq!(e["mapcast.canary.canary.error_rate"], 0.0, "{e}");
    let flag = expect_json(api.get(FLAG, Some(&token)).await, StatusCode::OK).await;
    assert_eq!((flag["state"].as_str(), flag["rollout"].as_u64()), (Some("rolled_back"), Some(0)));
}
