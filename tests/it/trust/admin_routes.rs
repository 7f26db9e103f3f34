//! Admin routes answer who is asking before what is asked: a stranger's
//! malformed body gets 401 and a user's 403, never a 400 or 422 that reads
//! the body first. The last admin cannot be deleted.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, add_admin, expect_problem, spawn_app_in};

const NOT_JSON: &str = "{\"enabled\": tru";
const WRONG_SHAPE: &str = "{\"enabled\": \"yes\", \"rollout\": -1}";

/// An app on `dir` whose only admin is `root` (its user record returned).
async fn app_with_root(dir: &std::path::Path) -> (TestApp, Value) {
    let root = add_admin(dir, "root", PASSWORD).await;
    let app = spawn_app_in(dir, |s| {
        s.auth.allow_anonymous = Some(false);
        s.auth.self_registration = Some(false);
    })
    .await;
    (app, root)
}

#[tokio::test]
async fn admin_routes_refuse_strangers_and_users_before_reading_their_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app_with_root(dir.path()).await;
    let api = app.api();
    let root = api.login("root", PASSWORD).await;
    let created = api
        .post_json("/api/v1/users", Some(&root), &json!({"username": "ann", "password": PASSWORD}))
        .await;
    assert_eq!(created.status(), 201);
    let ann = api.login("ann", PASSWORD).await;

    for (method, path) in
        [(Method::PUT, "/api/v1/flags/map.clustering"), (Method::POST, "/api/v1/users")]
    {
        for body in [NOT_JSON, WRONG_SHAPE] {
            for (token, status, code) in [
                (None, 401, "unauthorized"),
                (Some("not-a-token"), 401, "unauthorized"),
                (Some(ann.as_str()), 403, "forbidden"),
            ] {
                let json = Some(("application/json", body.to_owned()));
                let resp = api.send(method.clone(), path, token, json).await;
                expect_problem(resp, status, code).await;
            }
        }
    }
    // Admins get the body's problem.
    let bad = api
        .send(
            Method::PUT,
            "/api/v1/flags/map.clustering",
            Some(&root),
            Some(("application/json", NOT_JSON.into())),
        )
        .await;
    expect_problem(bad, 400, "bad-request").await;
}

#[tokio::test]
async fn the_last_admin_cannot_be_deleted_but_a_second_one_can() {
    let dir = tempfile::tempdir().unwrap();
    let (app, root_user) = app_with_root(dir.path()).await;
    let api = app.api();
    let root = api.login("root", PASSWORD).await;
    let root_path = format!("/api/v1/users/{}", root_user["id"].as_str().unwrap());

    let alone = api.delete(&root_path, Some(&root)).await;

    expect_problem(alone, 409, "conflict").await;
    assert_eq!(
        api.get("/api/v1/sessions/current", Some(&root)).await.status(),
        200,
        "still signed in"
    );

    let second = api
        .post_json(
            "/api/v1/users",
            Some(&root),
            &json!({"username": "bob", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    let bob_id = crate::helpers::expect_json(second, reqwest::StatusCode::CREATED).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = api.login("bob", PASSWORD).await;
    assert_eq!(api.delete(&root_path, Some(&bob)).await.status(), 204, "one admin is left");
    let last = api.delete(&format!("/api/v1/users/{bob_id}"), Some(&bob)).await;
    expect_problem(last, 409, "conflict").await;
}
