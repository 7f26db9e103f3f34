//! Liveness and readiness on the HTTP listener.

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_answers_200_while_the_process_is_alive() {
    let app = spawn_app().await;

    let response = app.http_get("/healthz").await;

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn readyz_answers_200_once_the_database_is_migrated() {
    let app = spawn_app().await;

    let response = app.http_get("/readyz").await;

    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test]
async fn an_unknown_path_is_404() {
    let app = spawn_app().await;

    let response = app.http_get("/no-such-thing").await;

    assert_eq!(response.status(), 404);
}
