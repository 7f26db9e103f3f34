//! Revocation reaches live connections: deleting a device or a user, or
//! signing a token out, closes the MQTT connections and SSE streams that
//! signed in with it within a second, with a reason, and the credentials
//! open nothing afterwards.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode};

use crate::helpers::{Api, PASSWORD, Sse, TestApp, add_admin, spawn_app_in};

const ADMIN_PW: &str = "admin-password-long";
/// How soon a revoked connection must be gone.
const WITHIN: Duration = Duration::from_secs(1);

async fn app(dir: &std::path::Path) -> (TestApp, Api, String) {
    add_admin(dir, "root", ADMIN_PW).await;
    let app = spawn_app_in(dir, |s| s.auth.allow_anonymous = Some(false)).await;
    let api = app.api();
    let admin = api.login("root", ADMIN_PW).await;
    (app, api, admin)
}

/// An SSE stream opened with a bearer token.
async fn sse_with_token(app: &TestApp, token: &str, filter: &str) -> Sse {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/v1/subscribe", app.http_addr))
        .query(&[("filter", filter)])
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/v1/subscribe");
    Sse::open(resp).await
}

#[tokio::test]
async fn deleting_a_device_closes_its_live_connection_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (app, api, admin) = app(dir.path()).await;
    let ann = api.sign_up("ann").await;
    let car = api.create_device(&ann, "Golf", "car").await;
    let other = api.create_device(&ann, "Polo", "car").await;
    let mut live = app.v5("golf").credentials(&car.id, &car.secret).connect().await;
    let mut bystander = app.v5("polo").credentials(&other.id, &other.secret).connect().await;

    let resp = api.delete(&format!("/api/v1/devices/{}", car.id), Some(&admin)).await;
    assert_eq!(resp.status(), 204);

    let closed = live.wait_closed(WITHIN).await;
    assert_eq!(
        closed.server_reason,
        Some(DisconnectReasonCode::AdministrativeAction),
        "{closed:?}"
    );
    let again = app.v5("golf").credentials(&car.id, &car.secret).try_connect().await.err();
    assert_eq!(again.and_then(|c| c.refused), Some(ConnectReturnCode::BadUserNamePassword));
    let topic = format!("devices/{}/status", other.id);
    bystander.publish_qos1(&topic, false, "still here").await;
}

#[tokio::test]
async fn deleting_a_user_closes_its_mqtt_connections_sse_streams_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (app, api, admin) = app(dir.path()).await;
    let ann_token = api.sign_up("ann").await;
    let car = api.create_device(&ann_token, "Golf", "car").await;
    let me: serde_json::Value =
        api.get("/api/v1/sessions/current", Some(&ann_token)).await.json().await.unwrap();
    let ann_id = me["id"].as_str().expect("an id").to_owned();
    let mut phone = app.v5("ann-phone").credentials("ann", PASSWORD).connect().await;
    let mut car_conn = app.v5("golf").credentials(&car.id, &car.secret).connect().await;
    let mut stream = sse_with_token(&app, &ann_token, "map/#").await;

    let resp = api.delete(&format!("/api/v1/users/{ann_id}"), Some(&admin)).await;
    assert_eq!(resp.status(), 204);

    let closed = phone.wait_closed(WITHIN).await;
    assert_eq!(closed.server_reason, Some(DisconnectReasonCode::AdministrativeAction));
    let closed = car_conn.wait_closed(WITHIN).await;
    assert_eq!(closed.server_reason, Some(DisconnectReasonCode::AdministrativeAction));
    assert!(stream.ended_within(WITHIN).await, "the SSE stream outlived its user");
}

#[tokio::test]
async fn signing_a_token_out_closes_what_it_opened_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (app, api, _) = app(dir.path()).await;
    api.register("ann", PASSWORD).await;
    let kept = api.login("ann", PASSWORD).await;
    let revoked = api.login("ann", PASSWORD).await;
    let mut by_token = app.v5("by-token").credentials("ann", &revoked).connect().await;
    let mut by_password = app.v5("by-password").credentials("ann", PASSWORD).connect().await;
    let mut stream = sse_with_token(&app, &revoked, "map/#").await;
    let mut other_stream = sse_with_token(&app, &kept, "map/#").await;

    let resp = api.delete("/api/v1/sessions/current", Some(&revoked)).await;
    assert_eq!(resp.status(), 204);

    let closed = by_token.wait_closed(WITHIN).await;
    assert_eq!(closed.server_reason, Some(DisconnectReasonCode::AdministrativeAction));
    assert!(stream.ended_within(WITHIN).await, "the SSE stream outlived its token");
    assert!(!other_stream.ended_within(Duration::from_millis(300)).await);
    by_password.subscribe("map/#", QoS::AtMostOnce).await;
}
