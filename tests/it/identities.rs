//! Users, devices and bearer tokens over REST, and what they let MQTT
//! clients do: sign-up, sign-in, provisioning, expiry, revocation, admin-only
//! management, input validation, and secrets kept out of the logs.

use std::time::Duration;

use mapcast::domain::Secret;
use reqwest::{Method, StatusCode};
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use serde_json::{Value, json};

use crate::helpers::{
    Api, DeviceCreds, PASSWORD, ServerProcess, TestApp, V3Options, V5Options, add_admin,
    expect_json, expect_problem, fresh_postgres_database, mark_postgres_ran, postgres_test_url,
    spawn_app, spawn_app_in, spawn_app_with,
};

/// Register → sign in → provision a car: the car's MQTT credentials.
async fn user_with_car(api: &Api, username: &str) -> (String, DeviceCreds) {
    let token = api.sign_up(username).await;
    let car = api.create_device(&token, "Golf", "car").await;
    (token, car)
}

#[tokio::test]
async fn a_registered_user_signs_in_and_its_new_device_connects_over_v3_and_v5() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let api = app.api();

    let user = api.register("ann", PASSWORD).await;
    let token = api.login("ann", PASSWORD).await;
    let resp = api
        .post_json("/api/v1/devices", Some(&token), &json!({"name": "Golf", "kind": "car"}))
        .await;
    let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    let device = expect_json(resp, StatusCode::CREATED).await;
    let (id, secret) = (device["id"].as_str().unwrap(), device["secret"].as_str().unwrap());
    let v3 = app.v3("golf-v3").credentials(id, secret).try_connect().await;
    let v5 = app.v5("golf-v5").credentials(id, secret).try_connect().await;

    assert_eq!(user["username"], "ann");
    assert_eq!(user["role"], "user");
    assert!(user["id"].is_string());
    assert_eq!(device["name"], "Golf");
    assert_eq!(device["kind"], "car");
    assert_eq!(location.as_deref(), Some(format!("/api/v1/devices/{id}").as_str()));
    assert!(v3.is_ok(), "{:?}", v3.err());
    assert!(v5.is_ok(), "{:?}", v5.err());
}

#[tokio::test]
async fn a_session_answers_with_a_token_and_an_rfc3339_expiry() {
    let app = spawn_app().await;
    let api = app.api();
    api.register("ann", PASSWORD).await;

    let resp = api
        .post_json("/api/v1/sessions", None, &json!({"username": "ann", "password": PASSWORD}))
        .await;

    assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
    let session = expect_json(resp, StatusCode::CREATED).await;
    assert_eq!(session["token"].as_str().unwrap().len(), 43);
    let expires = session["expires_at"].as_str().unwrap();
    let expires =
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{expires}: {e}"));
    let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::hours(24);
    assert!((expires - in_a_day).abs() < time::Duration::minutes(1), "{expires}");
}

#[tokio::test]
async fn a_wrong_device_secret_is_refused_with_0x86_on_v5_and_0x04_on_v3() {
    let app = spawn_app().await;
    let (_token, car) = user_with_car(&app.api(), "ann").await;

    let v3 = app.v3("golf-v3").credentials(&car.id, "not the secret").try_connect().await;
    let v5 = app.v5("golf-v5").credentials(&car.id, "not the secret").try_connect().await;

    assert_eq!(
        v3.err().and_then(|c| c.refused),
        Some(rumqttc::ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(v5.err().and_then(|c| c.refused), Some(V5Code::BadUserNamePassword));
}

#[tokio::test]
async fn a_user_connects_over_mqtt_with_its_password_or_a_bearer_token() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let token = app.api().sign_up("ann").await;

    let by_password = app.v5("ann-pw").credentials("ann", PASSWORD).try_connect().await;
    let by_token_v5 = app.v5("ann-tok5").credentials("ann", &token).try_connect().await;
    let by_token_v3 = app.v3("ann-tok3").credentials("any-name", &token).try_connect().await;

    assert!(by_password.is_ok(), "{:?}", by_password.err());
    assert!(by_token_v5.is_ok(), "{:?}", by_token_v5.err());
    assert!(by_token_v3.is_ok(), "{:?}", by_token_v3.err());
}

/// REST answers 401 with a Bearer challenge, MQTT refuses the token.
async fn assert_token_refused(app: &TestApp, token: &str) {
    let resp = app.api().get("/api/v1/devices", Some(token)).await;
    let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    expect_problem(resp, 401, "unauthorized").await;
    assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));
    let v5 = app.v5("tok-v5").credentials("ann", token).try_connect().await;
    let v3 = app.v3("tok-v3").credentials("ann", token).try_connect().await;
    assert_eq!(v5.err().and_then(|c| c.refused), Some(V5Code::BadUserNamePassword));
    assert_eq!(
        v3.err().and_then(|c| c.refused),
        Some(rumqttc::ConnectReturnCode::BadUserNamePassword)
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_by_rest_and_mqtt() {
    let app = spawn_app_with(|s| s.auth.token_ttl_secs = 1).await;
    let token = app.api().sign_up("ann").await;
    assert_eq!(app.api().get("/api/v1/devices", Some(&token)).await.status(), 200);

    tokio::time::sleep(Duration::from_millis(1200)).await;

    assert_token_refused(&app, &token).await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_rest_and_mqtt() {
    let app = spawn_app().await;
    let api = app.api();
    let token = api.sign_up("ann").await;
    let other = api.login("ann", PASSWORD).await;

    let revoked = api.delete("/api/v1/sessions/current", Some(&token)).await;

    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_token_refused(&app, &token).await;
    assert_eq!(
        api.get("/api/v1/devices", Some(&other)).await.status(),
        200,
        "other sessions live on"
    );
    expect_problem(api.delete("/api/v1/sessions/current", None).await, 401, "unauthorized").await;
}

#[tokio::test]
async fn the_current_session_names_the_user_and_its_devices() {
    let app = spawn_app().await;
    let (token, car) = user_with_car(&app.api(), "ann").await;

    let me =
        expect_json(app.api().get("/api/v1/sessions/current", Some(&token)).await, StatusCode::OK)
            .await;

    assert_eq!(me["username"], "ann");
    assert_eq!(me["role"], "user");
    assert_eq!(me["devices"], json!([car.id]));
}

#[tokio::test]
async fn wrong_credentials_at_sign_in_are_401() {
    let app = spawn_app().await;
    let api = app.api();
    api.register("ann", PASSWORD).await;

    for (user, pass) in [("ann", "wrong password"), ("nobody", PASSWORD)] {
        let resp = api
            .post_json("/api/v1/sessions", None, &json!({"username": user, "password": pass}))
            .await;
        expect_problem(resp, 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn a_taken_username_is_a_409_problem() {
    let app = spawn_app().await;
    let api = app.api();
    api.register("ann", PASSWORD).await;

    let again = api
        .post_json("/api/v1/users", None, &json!({"username": "ann", "password": "another one"}))
        .await;

    expect_problem(again, 409, "conflict").await;
}

/// One bad request and the problem it must get.
struct BadInput {
    name: &'static str,
    path: &'static str,
    signed_in: bool,
    content_type: &'static str,
    body: String,
    status: u16,
    code: &'static str,
}

fn bad(
    name: &'static str,
    path: &'static str,
    body: &str,
    status: u16,
    code: &'static str,
) -> BadInput {
    let signed_in = path == "/api/v1/devices";
    let content_type = "application/json";
    BadInput { name, path, signed_in, content_type, body: body.to_owned(), status, code }
}

#[tokio::test]
async fn bad_input_is_answered_with_the_right_problem() {
    let app = spawn_app().await;
    let api = app.api();
    let token = api.sign_up("ann").await;
    let (users, sessions, devices) = ("/api/v1/users", "/api/v1/sessions", "/api/v1/devices");
    let long_name = format!(r#"{{"name": "{}", "kind": "car"}}"#, "x".repeat(101));
    let cases = [
        bad("malformed JSON", users, r#"{"username": "bob""#, 400, "bad-request"),
        bad("not JSON", sessions, "username=bob", 400, "bad-request"),
        bad(
            "wrong type",
            users,
            r#"{"username": 5, "password": "12345678"}"#,
            422,
            "unprocessable",
        ),
        bad("missing field", users, r#"{"username": "bob"}"#, 422, "unprocessable"),
        bad(
            "short password",
            users,
            r#"{"username": "bob", "password": "1234567"}"#,
            422,
            "unprocessable",
        ),
        bad(
            "short username",
            users,
            r#"{"username": "bo", "password": "12345678"}"#,
            422,
            "unprocessable",
        ),
        bad(
            "bad username",
            users,
            r#"{"username": "bob/1", "password": "12345678"}"#,
            422,
            "unprocessable",
        ),
        bad(
            "device role",
            users,
            r#"{"username": "bob", "password": "12345678", "role": "device"}"#,
            422,
            "unprocessable",
        ),
        bad(
            "self-made admin",
            users,
            r#"{"username": "bob", "password": "12345678", "role": "admin"}"#,
            401,
            "unauthorized",
        ),
        BadInput {
            content_type: "text/plain",
            ..bad(
                "not application/json",
                users,
                r#"{"username": "bob", "password": "12345678"}"#,
                415,
                "unsupported-media-type",
            )
        },
        bad(
            "sign-in wrong type",
            sessions,
            r#"{"username": "ann", "password": 12345678}"#,
            422,
            "unprocessable",
        ),
        bad("unknown kind", devices, r#"{"name": "Golf", "kind": "bike"}"#, 422, "unprocessable"),
        bad("empty name", devices, r#"{"name": "", "kind": "car"}"#, 422, "unprocessable"),
        bad("long name", devices, &long_name, 422, "unprocessable"),
        bad(
            "name of wrong type",
            devices,
            r#"{"name": ["Golf"], "kind": "car"}"#,
            422,
            "unprocessable",
        ),
        bad("device JSON malformed", devices, "{", 400, "bad-request"),
    ];

    for case in cases {
        let token = case.signed_in.then_some(token.as_str());
        let resp =
            api.send(Method::POST, case.path, token, Some((case.content_type, case.body))).await;
        assert_eq!(resp.status().as_u16(), case.status, "{}", case.name);
        expect_problem(resp, case.status, case.code).await;
    }
    // Nothing above created a user.
    let bob = api
        .post_json("/api/v1/sessions", None, &json!({"username": "bob", "password": "12345678"}))
        .await;
    expect_problem(bob, 401, "unauthorized").await;
}

#[tokio::test]
async fn device_endpoints_need_a_valid_bearer_token() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let api = app.api();
    let body = json!({"name": "Golf", "kind": "car"});

    let none = api.post_json("/api/v1/devices", None, &body).await;
    let garbage = api.post_json("/api/v1/devices", Some("not-a-token"), &body).await;
    let basic = reqwest::Client::new()
        .get(format!("http://{}/api/v1/devices", app.http_addr))
        .basic_auth("ann", Some(PASSWORD))
        .send()
        .await
        .unwrap();

    expect_problem(none, 401, "unauthorized").await;
    expect_problem(garbage, 401, "unauthorized").await;
    expect_problem(basic, 401, "unauthorized").await;
}

#[tokio::test]
async fn anonymous_callers_cannot_provision_devices_even_when_anonymous_is_allowed() {
    let app = spawn_app().await; // loopback: anonymous allowed

    let resp =
        app.api().post_json("/api/v1/devices", None, &json!({"name": "x", "kind": "car"})).await;

    expect_problem(resp, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_device_is_visible_to_its_owner_and_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let app = spawn_app_in(dir.path(), |_| {}).await;
    let api = app.api();
    let (ann, car) = user_with_car(&api, "ann").await;
    let bob = api.sign_up("bob").await;
    let root = api.login("root", PASSWORD).await;
    let path = format!("/api/v1/devices/{}", car.id);

    let by_owner = expect_json(api.get(&path, Some(&ann)).await, StatusCode::OK).await;
    let by_admin = api.get(&path, Some(&root)).await.status();
    let by_other = api.get(&path, Some(&bob)).await;
    let missing = api.get("/api/v1/devices/no-such-device", Some(&ann)).await;
    let anns = expect_json(api.get("/api/v1/devices", Some(&ann)).await, StatusCode::OK).await;
    let bobs = expect_json(api.get("/api/v1/devices", Some(&bob)).await, StatusCode::OK).await;
    let all = expect_json(api.get("/api/v1/devices", Some(&root)).await, StatusCode::OK).await;

    assert_eq!(by_owner["id"], car.id.as_str());
    assert_eq!(by_owner["kind"], "car");
    assert!(by_owner.get("secret").is_none(), "the secret is shown once only: {by_owner}");
    assert!(by_owner["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(by_admin, 200);
    expect_problem(by_other, 403, "forbidden").await;
    expect_problem(missing, 404, "not-found").await;
    assert_eq!(anns["items"].as_array().unwrap().len(), 1);
    assert_eq!(bobs["items"], json!([]));
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    drop(app);
}

#[tokio::test]
async fn admin_only_endpoints_are_403_for_users_and_work_for_admins() {
    let dir = tempfile::tempdir().unwrap();
    let admin = add_admin(dir.path(), "root", PASSWORD).await;
    assert_eq!(admin["role"], "admin");
    let app = spawn_app_in(dir.path(), |_| {}).await;
    let api = app.api();
    let (ann, car) = user_with_car(&api, "ann").await;
    let ann_id = expect_json(api.get("/api/v1/sessions/current", Some(&ann)).await, StatusCode::OK)
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let root = api.login("root", PASSWORD).await;
    let device_path = format!("/api/v1/devices/{}", car.id);
    let user_path = format!("/api/v1/users/{ann_id}");

    // A user is forbidden, an anonymous caller unauthenticated.
    expect_problem(api.get("/api/v1/users", Some(&ann)).await, 403, "forbidden").await;
    expect_problem(api.delete(&user_path, Some(&ann)).await, 403, "forbidden").await;
    // Owners may delete their own devices (tests/it/accounts.rs), nobody else's.
    let bob = api.sign_up("bob").await;
    expect_problem(api.delete(&device_path, Some(&bob)).await, 403, "forbidden").await;
    expect_problem(api.get("/api/v1/users", None).await, 401, "unauthorized").await;
    let made_admin = api
        .post_json(
            "/api/v1/users",
            Some(&ann),
            &json!({"username": "eve", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    expect_problem(made_admin, 403, "forbidden").await;

    // The admin lists users, deletes the device (its MQTT login stops
    // working), then the user (its token stops working).
    let users = expect_json(api.get("/api/v1/users", Some(&root)).await, StatusCode::OK).await;
    let names: Vec<_> =
        users["items"].as_array().unwrap().iter().map(|u| u["username"].clone()).collect();
    assert_eq!(names, [json!("root"), json!("ann"), json!("bob")]);
    assert!(users.to_string().find("password").is_none(), "{users}");
    assert_eq!(api.delete(&device_path, Some(&root)).await.status(), StatusCode::NO_CONTENT);
    expect_problem(api.delete(&device_path, Some(&root)).await, 404, "not-found").await;
    let gone = app.v5("golf").credentials(&car.id, &car.secret).try_connect().await;
    assert_eq!(gone.err().and_then(|c| c.refused), Some(V5Code::BadUserNamePassword));
    assert_eq!(api.delete(&user_path, Some(&root)).await.status(), StatusCode::NO_CONTENT);
    expect_problem(api.get("/api/v1/devices", Some(&ann)).await, 401, "unauthorized").await;
    let admin_made = api
        .post_json(
            "/api/v1/users",
            Some(&root),
            &json!({"username": "ops", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_eq!(expect_json(admin_made, StatusCode::CREATED).await["role"], "admin");
}

#[tokio::test]
async fn self_registration_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let app = spawn_app_in(dir.path(), |s| s.auth.self_registration = Some(false)).await;
    let api = app.api();
    let root = api.login("root", PASSWORD).await;
    let body = json!({"username": "ann", "password": PASSWORD});

    let anonymous = api.post_json("/api/v1/users", None, &body).await;
    let by_admin = api.post_json("/api/v1/users", Some(&root), &body).await;
    let ann = api.login("ann", PASSWORD).await;
    let by_user = api
        .post_json("/api/v1/users", Some(&ann), &json!({"username": "bob", "password": PASSWORD}))
        .await;

    expect_problem(anonymous, 401, "unauthorized").await;
    assert_eq!(expect_json(by_admin, StatusCode::CREATED).await["role"], "user");
    expect_problem(by_user, 403, "forbidden").await;
}

#[tokio::test]
async fn the_cli_refuses_bad_input_and_unknown_owners() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cli = crate::helpers::mapcast_cli;

    let (short, _, short_err) =
        cli(&["user", "add", "--username", "ann", "--password-stdin", "--data-dir", d], "short\n")
            .await;
    let (ok, out, _) = cli(
        &["user", "add", "--username", "ann", "--password-stdin", "--create", "--data-dir", d],
        "long enough\n",
    )
    .await;
    let (dup, _, dup_err) =
        cli(&["user", "add", "--username", "ann", "--data-dir", d], "long enough\n").await;
    let (car, car_out, _) = cli(
        &["device", "add", "--owner", "ann", "--name", "Golf", "--kind", "car", "--data-dir", d],
        "",
    )
    .await;
    let (orphan, _, orphan_err) =
        cli(&["device", "add", "--owner", "bob", "--name", "Golf", "--data-dir", d], "").await;

    assert!(!short && short_err.contains("password"), "{short_err}");
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["role"], "user");
    assert!(!dup && dup_err.contains("already exists"), "{dup_err}");
    assert!(car, "{car_out}");
    let device: Value = serde_json::from_str(&car_out).unwrap();
    assert_eq!(device["kind"], "car");
    assert!(device["id"].is_string() && device["secret"].is_string());
    assert!(!orphan && orphan_err.contains("bob"), "{orphan_err}");
}

#[tokio::test]
async fn a_device_added_with_the_cli_connects_over_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let (ok, out, err) = crate::helpers::mapcast_cli(
        &["device", "add", "--owner", "root", "--name", "Truck", "--kind", "car", "--data-dir", d],
        "",
    )
    .await;
    assert!(ok, "{err}");
    let device: Value = serde_json::from_str(&out).unwrap();
    let app = spawn_app_in(dir.path(), |s| s.auth.allow_anonymous = Some(false)).await;

    let v5 = app
        .v5("truck")
        .credentials(device["id"].as_str().unwrap(), device["secret"].as_str().unwrap())
        .try_connect()
        .await;

    assert!(v5.is_ok(), "{:?}", v5.err());
}

#[tokio::test]
async fn secrets_never_appear_in_the_server_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapcast.toml");
    tokio::fs::write(&config, "[log]\nlevel = \"debug\"\n").await.unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]).await;
    let api = Api::new(server.http_addr);
    let wrong = "wrong-password-4711";

    let token = api.sign_up("ann").await;
    let car = api.create_device(&token, "Golf", "car").await;
    let failed = api
        .post_json("/api/v1/sessions", None, &json!({"username": "ann", "password": wrong}))
        .await;
    let v5 = V5Options::new("golf-v5", server.mqtt_addr)
        .credentials(&car.id, &car.secret)
        .connect()
        .await;
    let mut v3 =
        V3Options::new("ann-v3", server.mqtt_addr).credentials("ann", &token).connect().await;
    let refused =
        V5Options::new("bad", server.mqtt_addr).credentials("ann", wrong).try_connect().await;
    let revoked = api.delete("/api/v1/sessions/current", Some(&token)).await;
    v5.disconnect().await;
    // Revoking the token closed the connection that signed in with it.
    v3.wait_closed(crate::helpers::RECV).await;
    let logs = server.logs();
    server.terminate(Duration::from_secs(10)).await;

    assert_eq!(failed.status(), 401);
    assert!(refused.is_err());
    assert_eq!(revoked.status(), 204);
    assert!(logs.contains("token issued"), "the log must show the flow happened:\n{logs}");
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", wrong),
        ("token", &token),
        ("device secret", &car.secret),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the log:\n{logs}");
    }
}

#[tokio::test]
async fn identities_work_on_postgres() {
    let Some(base) = postgres_test_url("identities_work_on_postgres") else {
        return;
    };
    let url = fresh_postgres_database(&base).await;
    let app = spawn_app_with(|s| {
        s.database.url = Some(Secret::new(url.clone()));
        s.auth.allow_anonymous = Some(false);
    })
    .await;
    let api = app.api();

    let (token, car) = user_with_car(&api, "ann").await;
    let v3 = app.v3("pg-golf-v3").credentials(&car.id, &car.secret).try_connect().await;
    let v5 = app.v5("pg-golf-v5").credentials(&car.id, &car.secret).try_connect().await;
    let wrong = app.v5("pg-wrong").credentials(&car.id, "nope").try_connect().await;
    let by_token = app.v5("pg-ann").credentials("ann", &token).try_connect().await;
    let dup = api
        .post_json("/api/v1/users", None, &json!({"username": "ann", "password": PASSWORD}))
        .await;
    let revoked = api.delete("/api/v1/sessions/current", Some(&token)).await.status();
    let after = api.get("/api/v1/devices", Some(&token)).await;

    assert!(v3.is_ok(), "{:?}", v3.err());
    assert!(v5.is_ok(), "{:?}", v5.err());
    assert_eq!(wrong.err().and_then(|c| c.refused), Some(V5Code::BadUserNamePassword));
    assert!(by_token.is_ok(), "{:?}", by_token.err());
    expect_problem(dup, 409, "conflict").await;
    assert_eq!(revoked, 204);
    expect_problem(after, 401, "unauthorized").await;
    mark_postgres_ran().await;
}

#[tokio::test]
async fn users_devices_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |s: &mut mapcast::config::Settings| s.auth.allow_anonymous = Some(false);
    let app = spawn_app_in(dir.path(), settings).await;
    let (token, car) = user_with_car(&app.api(), "ann").await;
    app.stop().await;

    let app = spawn_app_in(dir.path(), settings).await;
    let api = app.api();

    api.login("ann", PASSWORD).await;
    let me =
        expect_json(api.get("/api/v1/sessions/current", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(me["devices"], json!([car.id]), "the token and the device are back");
    V5Options::new("car", app.mqtt_addr).credentials(&car.id, &car.secret).connect().await;
}
