//! Brute-force protection: repeated failed sign-ins lock a user name (from
//! the address that failed) or an address out, over REST (429 + `Retry-After`) and MQTT (v5 CONNACK 0x9F,
//! v3 0x05) alike; the lockout is logged without the password and counted.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use serde_json::json;

use crate::helpers::{
    Api, PASSWORD, RECV, ServerProcess, TestApp, V3Options, V5Options, expect_problem,
    spawn_app_with,
};

/// An app whose lockouts start after `per_identity` failures for one name
/// or `per_address` from one address, and last a minute.
async fn app(per_identity: u32, per_address: u32) -> TestApp {
    spawn_app_with(|s| {
        s.auth.lockout.max_failures_per_identity = per_identity;
        s.auth.lockout.max_failures_per_address = per_address;
        s.auth.lockout.duration_secs = 60;
    })
    .await
}

async fn sign_in(api: &Api, username: &str, password: &str) -> Response {
    api.post_json("/api/v1/sessions", None, &json!({"username": username, "password": password}))
        .await
}

/// The problem of a refused sign-in: 429 with a `Retry-After` within the lockout.
async fn expect_locked(resp: Response) {
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After: {retry_after}");
    expect_problem(resp, 429, "too-many-requests").await;
}

#[tokio::test]
async fn a_user_name_is_locked_after_repeated_failures_even_for_the_right_password() {
    let app = app(3, 100).await;
    let api = app.api();
    api.register("ann", PASSWORD).await;
    api.register("bob", PASSWORD).await;

    for _ in 0..3 {
        expect_problem(sign_in(&api, "ann", "wrong horse battery").await, 401, "unauthorized")
            .await;
    }
    let right_password = sign_in(&api, "ann", PASSWORD).await;

    expect_locked(right_password).await;
    assert_eq!(sign_in(&api, "bob", PASSWORD).await.status(), StatusCode::CREATED, "bob is fine");
}

#[tokio::test]
async fn a_success_resets_its_user_but_never_lifts_the_lockout_of_its_address() {
    let app = app(3, 4).await;
    let api = app.api();
    api.register("ann", PASSWORD).await;
    api.register("bob", PASSWORD).await;
    let wrong = |user| sign_in(&api, user, "wrong horse battery");

    // Two failures, then the right password: ann starts afresh...
    wrong("ann").await;
    wrong("ann").await;
    assert_eq!(sign_in(&api, "ann", PASSWORD).await.status(), StatusCode::CREATED);
    // ...so two more do not lock her, but they are the address's 3rd and 4th.
    wrong("ann").await;
    expect_problem(wrong("bob").await, 401, "unauthorized").await;

    // The address is locked: a right password from it is refused, for
    // anyone, and trying does not unlock it.
    expect_locked(sign_in(&api, "ann", PASSWORD).await).await;
    expect_locked(sign_in(&api, "bob", PASSWORD).await).await;
}

#[tokio::test]
async fn mqtt_connects_are_locked_out_too_with_0x9f_on_v5_and_0x05_on_v3() {
    let app = app(2, 100).await;
    let api = app.api();
    api.register("ann", PASSWORD).await;
    let v5 = |id: &str, password: &str| {
        V5Options::new(id, app.mqtt_addr).credentials("ann", password).try_connect()
    };

    let first = v5("p1", "wrong horse battery").await.err().and_then(|c| c.refused);
    let second = v5("p2", "wrong horse battery").await.err().and_then(|c| c.refused);
    let right_v5 = v5("p3", PASSWORD).await.err().and_then(|c| c.refused);
    let right_v3 = V3Options::new("p4", app.mqtt_addr)
        .credentials("ann", PASSWORD)
        .try_connect()
        .await
        .err()
        .and_then(|c| c.refused);

    assert_eq!(first, Some(V5Code::BadUserNamePassword));
    assert_eq!(second, Some(V5Code::BadUserNamePassword));
    assert_eq!(right_v5, Some(V5Code::ConnectionRateExceeded));
    assert_eq!(right_v3, Some(rumqttc::ConnectReturnCode::NotAuthorized));
    // One lockout for both protocols.
    expect_locked(sign_in(&api, "ann", PASSWORD).await).await;
}

#[tokio::test]
async fn a_lockout_is_logged_as_a_warning_without_the_password_and_counted() {
    const GUESS: &str = "guess-hunter2-horse";
    let dir = tempfile::tempdir().unwrap();
    let config = "[auth.lockout]\nmax_failures_per_identity = 2\nduration_secs = 60\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let api = Api::new(server.http_addr);
    api.register("ann", PASSWORD).await;

    sign_in(&api, "ann", GUESS).await;
    sign_in(&api, "ann", GUESS).await;
    expect_locked(sign_in(&api, "ann", GUESS).await).await;

    let metrics = api.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("\nmapcast_auth_failures_total 2\n"), "{metrics}");
    assert!(metrics.contains("\nmapcast_auth_lockouts_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nmapcast_auth_locked_refusals_total 1\n"), "{metrics}");
    let deadline = std::time::Instant::now() + RECV;
    let warning = loop {
        let logs = server.logs();
        let found = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "sign-in locked out after repeated failures");
        if let Some(line) = found {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "no lockout warning in:\n{logs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(warning["log.level"], "warn", "{warning}");
    assert_eq!(warning["user.name"], "ann", "{warning}");
    assert_eq!(warning["client.address"], "127.0.0.1", "{warning}");
    assert_eq!(warning["mapcast.auth.lockout.scope"], "identity", "{warning}");
    assert!(!server.logs().contains(GUESS), "a password reached the logs");
}
