//! Share links over REST: who may create, list and revoke them, what the
//! holder of a link may read (one device's position, until expiry or
//! revocation), and that the token never reaches the log.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Api, ServerProcess, TestApp, expect_json, expect_problem, fast_map, fresh_postgres_database,
    location, mark_postgres_ran, postgres_test_url, spawn_app_with,
};

/// `GET /api/v1/shared/position` with `token` in `X-Share-Token`.
async fn shared_position(http: std::net::SocketAddr, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{http}/api/v1/shared/position"))
        .header("X-Share-Token", token)
        .send()
        .await
        .expect("GET /api/v1/shared/position")
}

async fn create_share(api: &Api, token: &str, device: &str, secs: u64) -> Value {
    let resp = api
        .post_json(
            &format!("/api/v1/devices/{device}/shares"),
            Some(token),
            &json!({"expires_in_secs": secs}),
        )
        .await;
    expect_json(resp, StatusCode::CREATED).await
}

#[tokio::test]
async fn a_link_shows_one_device_until_it_expires_or_is_revoked() {
    let app = spawn_app_with(fast_map).await;
    links_work(&app).await;
}

#[tokio::test]
async fn share_links_work_on_postgres() {
    let Some(app) = app_on_postgres("share_links_work_on_postgres").await else { return };
    links_work(&app).await;
    mark_postgres_ran().await;
}

/// Create, read, list, expire and revoke links on `app`.
/// An app on a fresh PostgreSQL database, or `None` without one.
async fn app_on_postgres(test: &str) -> Option<TestApp> {
    let url = fresh_postgres_database(&postgres_test_url(test)?).await;
    let app = spawn_app_with(|s| {
        fast_map(s);
        s.database.url = Some(mapcast::domain::Secret::new(url.clone()));
    })
    .await;
    Some(app)
}

async fn links_work(app: &TestApp) {
    let api = app.api();
    let ann = api.sign_up("ann").await;
    let bob = api.sign_up("bob").await;
    let car = api.create_device(&ann, "Golf", "car").await;
    let other = api.create_device(&ann, "Polo", "car").await;
    let mut mqtt = app.v5("golf").credentials(&car.id, &car.secret).connect().await;
    mqtt.publish_qos1(&format!("devices/{}/location", car.id), false, location(13.4, 52.5)).await;
    let mut mqtt2 = app.v5("polo").credentials(&other.id, &other.secret).connect().await;
    mqtt2.publish_qos1(&format!("devices/{}/location", other.id), false, location(2.3, 48.8)).await;

    // Only the owner (or an admin) makes links; the token is long and random.
    let refused = api
        .post_json(
            &format!("/api/v1/devices/{}/shares", car.id),
            Some(&bob),
            &json!({"expires_in_secs": 60}),
        )
        .await;
    expect_problem(refused, 403, "forbidden").await;
    let anonymous = api
        .post_json(
            &format!("/api/v1/devices/{}/shares", car.id),
            None,
            &json!({"expires_in_secs": 60}),
        )
        .await;
    assert_eq!(anonymous.status(), 401);
    for bad in [json!({"expires_in_secs": 0}), json!({"expires_in_secs": 2_592_001})] {
        let resp =
            api.post_json(&format!("/api/v1/devices/{}/shares", car.id), Some(&ann), &bad).await;
        expect_problem(resp, 422, "unprocessable").await;
    }
    let short = create_share(&api, &ann, &car.id, 2).await;
    let long = create_share(&api, &ann, &car.id, 3600).await;
    let token = long["token"].as_str().unwrap();
    assert!(token.len() >= 43, "at least 256 bits in base64url: {token}");
    assert_eq!(long["url"], format!("/s/{token}"));

    // The holder reads that device only: name, kind, position; no ids.
    let seen = expect_json(shared_position(app.http_addr, token).await, StatusCode::OK).await;
    assert_eq!(seen["name"], "Golf", "{seen}");
    assert_eq!(seen["kind"], "car");
    assert_eq!(seen["position"]["lon"], 13.4, "{seen}");
    assert!(!seen.to_string().contains(&car.id), "the device id is not shared: {seen}");
    let page = api.get(&format!("/s/{token}"), None).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");

    // The list shows both, live; bob may not see it.
    let list = api.get(&format!("/api/v1/devices/{}/shares", car.id), Some(&ann)).await;
    let list = expect_json(list, StatusCode::OK).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    assert!(!list.to_string().contains(token), "a list never shows tokens: {list}");
    let foreign = api.get(&format!("/api/v1/devices/{}/shares", car.id), Some(&bob)).await;
    expect_problem(foreign, 403, "forbidden").await;

    // Expiry: the short link ends by itself.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let expired = shared_position(app.http_addr, short["token"].as_str().unwrap()).await;
    expect_problem(expired, 410, "gone").await;
    let page = api.get(&format!("/s/{}", short["token"].as_str().unwrap()), None).await;
    assert_eq!(page.status(), 410);
    assert!(page.text().await.unwrap().contains("This link has expired"));

    // Revocation: bob cannot, ann can, and then the link is over.
    let id = long["id"].as_str().unwrap();
    let path = format!("/api/v1/devices/{}/shares/{id}", car.id);
    expect_problem(api.delete(&path, Some(&bob)).await, 403, "forbidden").await;
    assert_eq!(api.delete(&path, Some(&ann)).await.status(), 204);
    expect_problem(shared_position(app.http_addr, token).await, 410, "gone").await;
    assert_eq!(api.get(&format!("/s/{token}"), None).await.status(), 410);
    expect_problem(api.delete(&path, Some(&ann)).await, 404, "not-found").await;

    // A made-up token and a missing header.
    expect_problem(shared_position(app.http_addr, "made-up").await, 410, "gone").await;
    let bare = api.send(Method::GET, "/api/v1/shared/position", None, None).await;
    expect_problem(bare, 401, "unauthorized").await;
}

#[tokio::test]
async fn the_token_of_a_link_never_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let api = Api::new(server.http_addr);
    let ann = api.sign_up("ann").await;
    let car = api.create_device(&ann, "Golf", "car").await;
    let share = create_share(&api, &ann, &car.id, 3600).await;
    let token = share["token"].as_str().unwrap();

    assert_eq!(api.get(&format!("/s/{token}"), None).await.status(), 200);
    assert_eq!(shared_position(server.http_addr, token).await.status(), 200);
    assert_eq!(api.get(&format!("/s/{token}x"), None).await.status(), 410);

    // The request lines are written; wait for the last one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.logs().matches("/s/{token}").count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no request lines:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = server.logs();
    assert!(!logs.contains(token), "the share token is in the log:\n{logs}");
}

/// 80 creates at once for one device: exactly 50 links, the rest 429.
async fn the_cap_holds_under_concurrency(app: &TestApp) {
    let api = app.api();
    let ann = api.sign_up("ann").await;
    let golf = api.create_device(&ann, "Golf", "car").await;
    let creates = (0..80).map(|_| {
        let (api, ann, id) = (app.api(), ann.clone(), golf.id.clone());
        tokio::spawn(async move {
            let path = format!("/api/v1/devices/{id}/shares");
            api.post_json(&path, Some(&ann), &json!({"expires_in_secs": 600})).await.status()
        })
    });
    let statuses: Vec<StatusCode> =
        futures::future::join_all(creates).await.into_iter().map(Result::unwrap).collect();
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((created, refused), (50, 30), "{statuses:?}");
    let listed = expect_json(
        api.get(&format!("/api/v1/devices/{}/shares", golf.id), Some(&ann)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(50), "{listed}");
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_cap_of_live_links() {
    let app = spawn_app_with(fast_map).await;
    the_cap_holds_under_concurrency(&app).await;
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_cap_of_live_links_on_postgres() {
    let test = "concurrent_creates_never_pass_the_cap_of_live_links_on_postgres";
    let Some(app) = app_on_postgres(test).await else { return };
    the_cap_holds_under_concurrency(&app).await;
    mark_postgres_ran().await;
}
