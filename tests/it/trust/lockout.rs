//! Lockout as a weapon: the map publishes every device id, which is also its
//! MQTT user name, and user names are easy to guess. A stranger's wrong
//! guesses from their address must lock out only that address (and the
//! names tried from it), never the real car or user connecting from
//! elsewhere; admins can lift any lockout, from the CLI or over REST.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mapcast_bench::wire::Version;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{connect_from, host, http_from};
use crate::helpers::{Api, PASSWORD, ServerProcess, add_admin, mapcast_cli, metric};

const WRONG: &str = "wrong horse battery";
const ACTIVE: &str = "mapcast_auth_lockouts_active";
/// MQTT 5 reason codes.
const SUCCESS: u8 = 0x00;
const BAD_CREDENTIALS: u8 = 0x86;
const RATE_EXCEEDED: u8 = 0x9F;

/// A user's name locks from one address after 3 failures, an address after 8.
const CONFIG: &str = "
[auth.lockout]
max_failures_per_identity = 3
max_failures_per_address = 8
duration_secs = 60
";

struct Site {
    server: ServerProcess,
    dir: tempfile::TempDir,
}

impl Site {
    async fn sign_in_from(&self, from: IpAddr, username: &str, password: &str) -> StatusCode {
        http_from(from)
            .post(format!("http://{}/api/v1/sessions", self.server.http_addr))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("the server answers")
            .status()
    }

    async fn connect_from(&self, from: IpAddr, username: &str, password: &str) -> Option<u8> {
        let mqtt = self.server.mqtt_addr;
        connect_from(from, mqtt, Version::V5, "c", username, password).await.1
    }

    async fn active(&self) -> f64 {
        metric(self.server.http_addr, ACTIVE).await
    }
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(dir.path(), CONFIG, &[]).await;
    Site { server, dir }
}

#[tokio::test]
async fn a_strangers_wrong_secrets_never_lock_out_the_car_from_its_own_address() {
    let site = site().await;
    let api = Api::new(site.server.http_addr);
    let token = api.sign_up("ann").await;
    let car = api.create_device(&token, "car", "car").await;
    let (stranger, car_host) = (host(2), host(3));

    // Ten wrong secrets for the car's public id: each is just wrong, the
    // device is never locked, until the stranger's own address is.
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(site.connect_from(stranger, &car.id, WRONG).await);
    }
    let right_from_car = site.connect_from(car_host, &car.id, &car.secret).await;
    let right_from_stranger = site.connect_from(stranger, &car.id, &car.secret).await;

    let mut expected = vec![Some(BAD_CREDENTIALS); 8];
    expected.extend([Some(RATE_EXCEEDED); 2]);
    assert_eq!(answers, expected, "8 wrong secrets lock the address, not the car");
    assert_eq!(right_from_car, Some(SUCCESS), "the car connects from its own address");
    assert_eq!(right_from_stranger, Some(RATE_EXCEEDED), "the stranger's address stays locked");
    assert_eq!(site.active().await, 1.0, "one lockout: the stranger's address");
}

#[tokio::test]
async fn a_users_lockout_holds_only_for_the_address_that_guessed() {
    let site = site().await;
    let api = Api::new(site.server.http_addr);
    api.register("ann", PASSWORD).await;
    let (stranger, ann_host) = (host(4), host(5));

    let guesses = [
        site.sign_in_from(stranger, "ann", WRONG).await,
        site.sign_in_from(stranger, "ann", WRONG).await,
        site.connect_from(stranger, "ann", WRONG).await.map_or(StatusCode::IM_A_TEAPOT, |c| {
            if c == BAD_CREDENTIALS { StatusCode::UNAUTHORIZED } else { StatusCode::IM_A_TEAPOT }
        }),
    ];
    let right_from_stranger = site.sign_in_from(stranger, "ann", PASSWORD).await;
    let right_mqtt_from_stranger = site.connect_from(stranger, "ann", PASSWORD).await;
    let right_from_ann = site.sign_in_from(ann_host, "ann", PASSWORD).await;
    let right_mqtt_from_ann = site.connect_from(ann_host, "ann", PASSWORD).await;

    assert_eq!(guesses, [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(right_from_stranger, StatusCode::TOO_MANY_REQUESTS, "locked from there");
    assert_eq!(right_mqtt_from_stranger, Some(RATE_EXCEEDED), "over MQTT too");
    assert_eq!(right_from_ann, StatusCode::CREATED, "ann signs in from her own address");
    assert_eq!(right_mqtt_from_ann, Some(SUCCESS));
    assert_eq!(site.active().await, 1.0, "one lockout: ann from the stranger's address");

    // Ann's own typos lock her out from her address only, as before.
    for _ in 0..3 {
        assert_eq!(site.sign_in_from(ann_host, "ann", WRONG).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(site.sign_in_from(ann_host, "ann", PASSWORD).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(site.active().await, 2.0);
}

#[tokio::test]
async fn an_admin_lifts_lockouts_over_rest_by_name_or_address_and_users_may_not() {
    let site = site().await;
    let api = Api::new(site.server.http_addr);
    add_admin(site.dir.path(), "root", PASSWORD).await;
    let admin = api.login("root", PASSWORD).await;
    let user = api.sign_up("ann").await;
    let stranger = host(6);
    for _ in 0..3 {
        site.sign_in_from(stranger, "ann", WRONG).await;
    }
    for name in ["x1", "x2", "x3", "x4", "x5"] {
        site.sign_in_from(stranger, name, WRONG).await;
    }
    assert_eq!(site.sign_in_from(stranger, "ann", PASSWORD).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(site.active().await, 2.0, "ann from there, and the address");

    let by_user = api.delete("/api/v1/lockouts?username=ann", Some(&user)).await;
    let neither = api.delete("/api/v1/lockouts", Some(&admin)).await;
    let bad_address = api.delete("/api/v1/lockouts?address=nowhere", Some(&admin)).await;
    let by_name = api.delete("/api/v1/lockouts?username=ann", Some(&admin)).await;
    let still_address = site.sign_in_from(stranger, "ann", PASSWORD).await;
    let by_address = api.delete("/api/v1/lockouts?address=127.0.0.6", Some(&admin)).await;
    let after = site.sign_in_from(stranger, "ann", PASSWORD).await;

    assert_eq!(by_user.status(), StatusCode::FORBIDDEN);
    assert_eq!(neither.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad_address.status(), StatusCode::BAD_REQUEST);
    assert_eq!(by_name.status(), StatusCode::OK);
    assert_eq!(by_name.json::<Value>().await.unwrap()["lifted"], 1);
    assert_eq!(still_address, StatusCode::TOO_MANY_REQUESTS, "the address's own lockout stays");
    assert_eq!(by_address.json::<Value>().await.unwrap()["lifted"], 1);
    assert_eq!(after, StatusCode::CREATED);
    assert_eq!(site.active().await, 0.0);
}

#[tokio::test]
async fn mapcast_user_unlock_lifts_a_running_servers_lockout() {
    let site = site().await;
    let api = Api::new(site.server.http_addr);
    api.register("ann", PASSWORD).await;
    let stranger = host(7);
    for _ in 0..3 {
        site.sign_in_from(stranger, "ann", WRONG).await;
    }
    assert_eq!(site.sign_in_from(stranger, "ann", PASSWORD).await, StatusCode::TOO_MANY_REQUESTS);

    let dir = site.dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = mapcast_cli(&["user", "unlock", "ann", "--data-dir", dir], "").await;

    assert!(ok, "mapcast user unlock failed: {stderr}");
    assert_eq!(serde_json::from_str::<Value>(stdout.trim()).unwrap()["requested"], true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while site.active().await > 0.0 {
        assert!(Instant::now() < deadline, "the lockout was not lifted within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(site.sign_in_from(stranger, "ann", PASSWORD).await, StatusCode::CREATED);
    assert!(site.server.logs().contains("sign-in lockouts lifted"));
}
