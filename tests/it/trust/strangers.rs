//! What a stranger on the network can do with the defaults of a public
//! deployment (a listener off loopback): not sign up, so not read the map
//! that only signed-in users and devices see.

use std::net::SocketAddr;

use serde_json::json;

use crate::helpers::{PASSWORD, expect_problem, spawn_app_with};

#[tokio::test]
async fn off_loopback_strangers_cannot_sign_up_by_default() {
    // Every interface: the HTTP listener is public, so the defaults are too.
    let app = spawn_app_with(|s| s.http.listen = "0.0.0.0:0".parse().unwrap()).await;
    let api = crate::helpers::Api::new(SocketAddr::from(([127, 0, 0, 1], app.http_addr.port())));

    let resp = api
        .post_json("/api/v1/users", None, &json!({"username": "stranger", "password": PASSWORD}))
        .await;

    expect_problem(resp, 401, "unauthorized").await;
}

#[tokio::test]
async fn on_loopback_sign_up_stays_open_for_local_use() {
    let app = spawn_app_with(|_| {}).await;
    app.api().register("local", PASSWORD).await;
}
