//! Account tools: `mapcast user list|delete|passwd`, `mapcast device
//! list|delete|rotate-secret`, `mapcast flags set|list` and their REST
//! counterparts, each checked from outside against a running server.

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Api, PASSWORD, ServerProcess, V5Options, add_admin, expect_json, expect_problem, mapcast_cli,
};

const NEW_PASSWORD: &str = "a brand new password";

/// Run the CLI against `dir` (the server's data directory).
async fn cli(dir: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let args = [args, &["--data-dir", dir.to_str().unwrap()]].concat();
    mapcast_cli(&args, stdin).await
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Whether a device signs in over MQTT with `secret`.
async fn mqtt_accepts(mqtt: SocketAddr, id: &str, secret: &str) -> bool {
    V5Options::new(&format!("c-{id}"), mqtt).credentials(id, secret).try_connect().await.is_ok()
}

async fn sign_in_status(api: &Api, username: &str, password: &str) -> StatusCode {
    api.post_json("/api/v1/sessions", None, &json!({"username": username, "password": password}))
        .await
        .status()
}

#[tokio::test]
async fn user_list_passwd_and_delete_over_the_cli_with_a_last_admin_guard() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(server.http_addr);
    let (ok, _, err) =
        cli(dir.path(), &["user", "add", "--username", "ann"], "ann password\n").await;
    assert!(ok, "{err}");

    let (ok, out, err) = cli(dir.path(), &["user", "list"], "").await;
    assert!(ok, "{err}");
    let users = json_lines(&out);
    let names: Vec<_> = users.iter().map(|u| (u["username"].clone(), u["role"].clone())).collect();
    assert_eq!(names, [(json!("root"), json!("admin")), (json!("ann"), json!("user"))], "{out}");
    assert!(users.iter().all(|u| u["id"].is_string() && u["created_at"].is_string()), "{out}");

    let (ok, out, err) = cli(
        dir.path(),
        &["user", "passwd", "ann", "--password-stdin"],
        &format!("{NEW_PASSWORD}\n"),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["password_changed"], true, "{out}");
    assert_eq!(sign_in_status(&api, "ann", NEW_PASSWORD).await, StatusCode::CREATED);
    assert_eq!(sign_in_status(&api, "ann", "ann password").await, StatusCode::UNAUTHORIZED);
    let (ok, _, err) = cli(dir.path(), &["user", "passwd", "ann"], "short\n").await;
    assert!(!ok && err.contains("password"), "a short password is refused: {err}");
    let (ok, _, err) = cli(dir.path(), &["user", "passwd", "nobody"], "long enough pw\n").await;
    assert!(!ok && err.contains("nobody"), "{err}");

    let (ok, _, err) = cli(dir.path(), &["user", "delete", "root"], "").await;
    assert!(!ok && err.contains("last admin"), "the last admin stays: {err}");
    let (ok, _, err) = cli(dir.path(), &["user", "delete", "nobody"], "").await;
    assert!(!ok && err.contains("nobody"), "{err}");
    let (ok, out, err) = cli(dir.path(), &["user", "delete", "ann"], "").await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["deleted"], true, "{out}");
    assert_eq!(sign_in_status(&api, "ann", NEW_PASSWORD).await, StatusCode::UNAUTHORIZED);
    let (_, out, _) = cli(dir.path(), &["user", "list"], "").await;
    assert_eq!(json_lines(&out).len(), 1, "{out}");
    assert_eq!(sign_in_status(&api, "root", PASSWORD).await, StatusCode::CREATED);
}

#[tokio::test]
async fn device_list_delete_and_rotate_secret_over_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start(dir.path(), &[]).await;
    let (ok, _, err) =
        cli(dir.path(), &["user", "add", "--username", "ann"], "ann password\n").await;
    assert!(ok, "{err}");
    let mut devices = Vec::new();
    for name in ["Golf", "Polo"] {
        let (ok, out, err) =
            cli(dir.path(), &["device", "add", "--owner", "ann", "--name", name], "").await;
        assert!(ok, "{err}");
        devices.push(json_lines(&out).remove(0));
    }
    let id = |i: usize| devices[i]["id"].as_str().unwrap().to_owned();
    let secret = |i: usize| devices[i]["secret"].as_str().unwrap().to_owned();

    let (ok, out, err) = cli(dir.path(), &["device", "list"], "").await;
    assert!(ok, "{err}");
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 2, "{out}");
    assert!(listed.iter().all(|d| d["owner"] == "ann" && d["kind"] == "car"), "{out}");
    assert!(!out.contains(&secret(0)), "a listing never shows a secret");
    let (ok, out, _) = cli(dir.path(), &["device", "list", "--owner", "root"], "").await;
    assert!(ok && out.trim().is_empty(), "{out}");

    assert!(mqtt_accepts(server.mqtt_addr, &id(0), &secret(0)).await);
    let (ok, out, err) = cli(dir.path(), &["device", "rotate-secret", &id(0)], "").await;
    assert!(ok, "{err}");
    let rotated = json_lines(&out).remove(0);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret(0));
    assert!(!mqtt_accepts(server.mqtt_addr, &id(0), &secret(0)).await, "the old secret is dead");
    assert!(mqtt_accepts(server.mqtt_addr, &id(0), new_secret).await, "the new one works");

    let (ok, out, err) = cli(dir.path(), &["device", "delete", &id(1)], "").await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["deleted"], true);
    assert!(!mqtt_accepts(server.mqtt_addr, &id(1), &secret(1)).await, "a deleted device");
    let (ok, _, err) = cli(dir.path(), &["device", "delete", &id(1)], "").await;
    assert!(!ok && err.contains(&id(1)), "{err}");
    let (ok, _, err) = cli(dir.path(), &["device", "rotate-secret", "nosuchdevice"], "").await;
    assert!(!ok && err.contains("nosuchdevice"), "{err}");
    let (_, out, _) = cli(dir.path(), &["device", "list"], "").await;
    assert_eq!(json_lines(&out).len(), 1, "{out}");
}

#[tokio::test]
async fn owners_delete_and_rotate_their_own_devices_over_rest_admins_any() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(server.http_addr);
    let ann = api.sign_up("ann").await;
    let bob = api.sign_up("bob").await;
    let root = api.login("root", PASSWORD).await;
    let golf = api.create_device(&ann, "Golf", "car").await;
    let polo = api.create_device(&ann, "Polo", "car").await;
    let rotate = |id: &str| format!("/api/v1/devices/{id}/secret");

    let resp = api.post_json(&rotate(&golf.id), Some(&bob), &json!({})).await;
    expect_problem(resp, 403, "forbidden").await;
    let resp = api.delete(&format!("/api/v1/devices/{}", golf.id), Some(&bob)).await;
    expect_problem(resp, 403, "forbidden").await;

    let resp = api.post_json(&rotate(&golf.id), Some(&ann), &json!({})).await;
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let rotated = expect_json(resp, StatusCode::OK).await;
    assert_eq!(rotated["id"], golf.id.as_str());
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(!mqtt_accepts(server.mqtt_addr, &golf.id, &golf.secret).await);
    assert!(mqtt_accepts(server.mqtt_addr, &golf.id, new_secret).await);
    let resp = api.post_json(&rotate("nosuchdevice"), Some(&ann), &json!({})).await;
    expect_problem(resp, 404, "not-found").await;

    let resp = api.delete(&format!("/api/v1/devices/{}", golf.id), Some(&ann)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = api.get(&format!("/api/v1/devices/{}", golf.id), Some(&ann)).await;
    expect_problem(resp, 404, "not-found").await;

    // An admin may act on anyone's device.
    let resp = api.post_json(&rotate(&polo.id), Some(&root), &json!({})).await;
    expect_json(resp, StatusCode::OK).await;
    let resp = api.delete(&format!("/api/v1/devices/{}", polo.id), Some(&root)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(!mqtt_accepts(server.mqtt_addr, &polo.id, &polo.secret).await);
}

#[tokio::test]
async fn users_change_their_password_over_rest_admins_anyones() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(server.http_addr);
    let ann_id = api.register("ann", PASSWORD).await["id"].as_str().unwrap().to_owned();
    let ann = api.login("ann", PASSWORD).await;
    let bob = api.sign_up("bob").await;
    let root = api.login("root", PASSWORD).await;
    let path = format!("/api/v1/users/{ann_id}/password");
    let put = |token: &str, password: &str| {
        let body = json!({ "password": password }).to_string();
        let (api, path, token) = (api.clone(), path.clone(), token.to_owned());
        async move { api.send(Method::PUT, &path, Some(&token), Some(("application/json", body))).await }
    };

    expect_problem(put(&bob, NEW_PASSWORD).await, 403, "forbidden").await;
    expect_problem(put(&ann, "short").await, 422, "unprocessable").await;
    assert_eq!(put(&ann, NEW_PASSWORD).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(sign_in_status(&api, "ann", PASSWORD).await, StatusCode::UNAUTHORIZED);
    assert_eq!(sign_in_status(&api, "ann", NEW_PASSWORD).await, StatusCode::CREATED);

    assert_eq!(put(&root, "set by the admin").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(sign_in_status(&api, "ann", "set by the admin").await, StatusCode::CREATED);
    let resp = api
        .send(
            Method::PUT,
            "/api/v1/users/nosuchuser/password",
            Some(&root),
            Some(("application/json", json!({"password": NEW_PASSWORD}).to_string())),
        )
        .await;
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn the_last_admin_cannot_be_deleted_over_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root_id = add_admin(dir.path(), "root", PASSWORD).await["id"].as_str().unwrap().to_owned();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(server.http_addr);
    let root = api.login("root", PASSWORD).await;

    let resp = api.delete(&format!("/api/v1/users/{root_id}"), Some(&root)).await;
    expect_problem(resp, 409, "conflict").await;
    let (_, out, _) = cli(dir.path(), &["user", "list"], "").await;
    assert_eq!(json_lines(&out).len(), 1, "{out}");
}

#[tokio::test]
async fn flags_set_refuses_unknown_keys_unless_create_and_sets_every_threshold() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;

    let typo = ["flags", "set", "map.clusterin", "--enabled", "true"];
    let (ok, _, err) = cli(dir.path(), &typo, "").await;
    assert!(!ok && err.contains("--create") && err.contains("map.clusterin"), "{err}");
    let (_, out, _) = cli(dir.path(), &["flags", "list"], "").await;
    assert!(out.trim().is_empty(), "the typo created nothing: {out}");
    let (ok, out, err) = cli(dir.path(), &[&typo[..], &["--create"]].concat(), "").await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["key"], "map.clusterin");

    // A flag the product reads needs no --create; every threshold is settable.
    let args = [
        "flags",
        "set",
        "map.clustering",
        "--max-error-ratio",
        "3.5",
        "--max-error-increase",
        "0.1",
        "--max-p99-factor",
        "4",
        "--min-p99-ms",
        "75",
        "--min-samples",
        "9",
        "--failed-checks",
        "2",
        "--group",
        "maps",
    ];
    let (ok, out, err) = cli(dir.path(), &args, "").await;
    assert!(ok, "{err}");
    let flag = json_lines(&out).remove(0);
    let canary = &flag["canary"];
    assert_eq!(
        (
            &canary["max_error_ratio"],
            &canary["max_error_increase"],
            &canary["max_p99_factor"],
            &canary["min_p99_ms"],
            &canary["min_samples"],
            &canary["failed_checks"],
            &flag["group"],
        ),
        (&json!(3.5), &json!(0.1), &json!(4.0), &json!(75.0), &json!(9), &json!(2), &json!("maps")),
        "{flag}"
    );
    let (_, out, _) = cli(dir.path(), &["flags", "list"], "").await;
    assert_eq!(json_lines(&out).len(), 2, "not a terminal: JSON lines: {out}");
}

#[tokio::test]
async fn each_subcommand_help_shows_only_its_own_options() {
    let serve_only = ["--mqtt-listen", "--http-listen", "--tls-cert", "--map-interval"];
    let cases: &[&[&str]] = &[
        &["user", "add"],
        &["user", "list"],
        &["user", "delete"],
        &["user", "passwd"],
        &["user", "unlock"],
        &["device", "add"],
        &["device", "list"],
        &["device", "delete"],
        &["device", "rotate-secret"],
        &["flags", "list"],
        &["flags", "set"],
        &["migrate"],
        &["es", "setup"],
    ];
    for args in cases {
        let (ok, out, err) = mapcast_cli(&[args, &["--help"][..]].concat(), "").await;
        assert!(ok, "{args:?}: {err}");
        for flag in serve_only {
            assert!(
                !out.contains(flag),
                "`mapcast {} --help` lists {flag}:\n{out}",
                args.join(" ")
            );
        }
    }
    let (_, out, _) = mapcast_cli(&["serve", "--help"], "").await;
    assert!(serve_only.iter().all(|f| out.contains(f)), "{out}");
}

#[tokio::test]
async fn cli_deletes_and_rotations_close_the_devices_live_connections_on_a_running_server() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;

    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut devices = Vec::new();
    for name in ["Golf", "Polo"] {
        let (ok, out, err) =
            cli(dir.path(), &["device", "add", "--owner", "root", "--name", name], "").await;
        assert!(ok, "{err}");
        devices.push(json_lines(&out).remove(0));
    }
    let creds = |i: usize| {
        (devices[i]["id"].as_str().unwrap().to_owned(), devices[i]["secret"].as_str().unwrap())
    };
    let (golf, golf_secret) = creds(0);
    let (polo, polo_secret) = creds(1);
    let mut golf_live =
        V5Options::new("golf", server.mqtt_addr).credentials(&golf, golf_secret).connect().await;
    let mut polo_live =
        V5Options::new("polo", server.mqtt_addr).credentials(&polo, polo_secret).connect().await;

    let (ok, _, err) = cli(dir.path(), &["device", "rotate-secret", &golf], "").await;
    assert!(ok, "{err}");
    let closed = golf_live.wait_closed(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        closed.server_reason,
        Some(DisconnectReasonCode::AdministrativeAction),
        "{closed:?}"
    );

    let (ok, _, err) = cli(dir.path(), &["device", "delete", &polo], "").await;
    assert!(ok, "{err}");
    let closed = polo_live.wait_closed(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        closed.server_reason,
        Some(DisconnectReasonCode::AdministrativeAction),
        "{closed:?}"
    );
}

/// `mapcast backup` copies the database while the server runs; a server
/// started on the copy has the accounts, the devices and the retained
/// location; an existing file is never overwritten, and PostgreSQL is
/// pointed to pg_dump.
#[tokio::test]
async fn backup_copies_the_database_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(server.http_addr);
    let token = api.sign_up("ann").await;
    let car = api.create_device(&token, "Golf", "car").await;
    let mut mqtt =
        V5Options::new("car", server.mqtt_addr).credentials(&car.id, &car.secret).connect().await;
    let topic = format!("devices/{}/location", car.id);
    let fix = json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [13.4, 52.5]},
        "properties": {"ts": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64}});
    mqtt.publish_qos1(&topic, true, fix.to_string()).await;

    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("mapcast.db");
    let (ok, out, err) = cli(dir.path(), &["backup", "--to", copy.to_str().unwrap()], "").await;
    assert!(ok, "{err}");
    assert!(err.contains("mapcast: database sqlite"), "names its database: {err}");
    assert_eq!(json_lines(&out)[0]["backup"], copy.to_str().unwrap());
    let (ok, _, err) = cli(dir.path(), &["backup", "--to", copy.to_str().unwrap()], "").await;
    assert!(!ok && err.contains("exists already"), "overwrote a file: {err}");
    let (ok, _, err) = mapcast_cli(
        &["backup", "--to", "/tmp/never", "--database-url", "postgres://u@127.0.0.1:1/db"],
        "",
    )
    .await;
    assert!(!ok && err.contains("pg_dump"), "{err}");
    drop(mqtt);
    server.kill9().await;

    // The copy is a whole database.
    let restored = ServerProcess::start(copy_dir.path(), &[]).await;
    let api = Api::new(restored.http_addr);
    let token = api.login("ann", PASSWORD).await;
    let retained = api.get(&format!("/api/v1/topics/{topic}"), Some(&token)).await;
    assert_eq!(retained.status(), StatusCode::OK, "the retained location is in the copy");
    let fix_back: Value = retained.json().await.unwrap();
    assert_eq!(fix_back["geometry"], fix["geometry"]);
    restored.kill9().await;
}
