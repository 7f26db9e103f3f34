//! `GET /openapi.json`: the OpenAPI 3.1 description of the REST API,
//! generated from the handlers. Routes are mounted through
//! `utoipa_actix_web`'s `ServiceConfig`, whose `service(..)` only takes
//! handlers annotated with `#[utoipa::path]`: what is served is what is
//! documented.

use actix_web::{App, HttpResponse, get, web};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mapcast",
        description = "Live locations: an MQTT broker whose topics are REST resources, \
                       the map snapshot, history and identities.",
    ),
    tags(
        (name = "topics", description = "Every MQTT topic as a resource, and SSE subscriptions"),
        (name = "history", description = "Stored messages of topics with history enabled"),
        (name = "map", description = "The map snapshot built by the updater"),
        (name = "identities", description = "Users, sign-in tokens, devices, and lifting sign-in lockouts"),
        (name = "flags", description = "Feature flags and their canaries (admins)"),
        (name = "shares", description = "Links that show one device to anyone holding them, until they expire"),
        (name = "page", description = "The live map page and its files"),
        (name = "meta", description = "Health, readiness and this document"),
    ),
)]
struct ApiDoc;

/// The document, served as built once at start.
pub struct OpenApiJson(pub String);

/// The OpenAPI document of every route `routes::configure` mounts.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = App::new().into_utoipa_app().configure(routes::configure).split_for_parts();
    let info = ApiDoc::openapi();
    doc.info = info.info;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.tags = info.tags;
    doc
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(openapi_json);
}

/// This document (OpenAPI 3.1).
#[utoipa::path(tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
#[get("/openapi.json")]
async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(doc.0.clone())
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;
    use actix_web::test::{TestRequest, call_service, init_service};

    use super::*;

    /// Every route the server mounts, as `(method, OpenAPI path)`.
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("post", "/api/v1/admin/debug/panic"),
        ("get", "/openapi.json"),
        ("post", "/api/v1/users"),
        ("get", "/api/v1/users"),
        ("delete", "/api/v1/users/{id}"),
        ("post", "/api/v1/sessions"),
        ("get", "/api/v1/sessions/current"),
        ("delete", "/api/v1/sessions/current"),
        ("delete", "/api/v1/lockouts"),
        ("post", "/api/v1/devices"),
        ("get", "/api/v1/devices"),
        ("get", "/api/v1/devices/{id}"),
        ("delete", "/api/v1/devices/{id}"),
        ("get", "/api/v1/topics/{topic}"),
        ("put", "/api/v1/topics/{topic}"),
        ("post", "/api/v1/topics/{topic}"),
        ("delete", "/api/v1/topics/{topic}"),
        ("get", "/api/v1/history/{topic}"),
        ("get", "/api/v1/subscribe"),
        ("post", "/api/v1/subscribe/tickets"),
        ("get", "/api/v1/map"),
        ("get", "/api/v1/flags"),
        ("get", "/api/v1/flags/{key}"),
        ("put", "/api/v1/flags/{key}"),
        ("post", "/api/v1/devices/{id}/shares"),
        ("get", "/api/v1/devices/{id}/shares"),
        ("delete", "/api/v1/devices/{id}/shares/{share_id}"),
        ("get", "/api/v1/shared/position"),
        ("get", "/"),
        ("get", "/s/{token}"),
        ("get", "/ui/{path}"),
        ("get", "/api/v1/page/config"),
    ];

    fn operations(doc: &serde_json::Value) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.push((method.clone(), path.clone()));
            }
        }
        ops
    }

    #[test]
    fn the_document_is_openapi_3_1_and_names_every_route() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
        let ops = operations(&doc);
        for (method, path) in ROUTES {
            assert!(
                ops.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is not in /openapi.json; documented: {ops:?}"
            );
        }
    }

    #[test]
    fn publishing_documents_its_answers_including_the_problem_cases() {
        let doc = serde_json::to_value(document()).unwrap();
        for method in ["put", "post"] {
            let responses = &doc["paths"]["/api/v1/topics/{topic}"][method]["responses"];
            for status in ["200", "202", "400", "401", "403", "413", "422", "503"] {
                assert!(responses.get(status).is_some(), "{method} lacks {status}: {responses}");
            }
        }
    }

    /// The other direction: everything documented is really routed (the
    /// request reaches a resource, whatever the handler then answers).
    #[actix_web::test]
    async fn every_documented_operation_is_routed() {
        let app =
            init_service(App::new().into_utoipa_app().configure(routes::configure).into_app())
                .await;
        let doc = serde_json::to_value(document()).unwrap();
        for (method, path) in operations(&doc) {
            let uri = path
                .replace("{topic}", "a/b")
                .replace("{id}", "x")
                .replace("{key}", "k")
                .replace("{share_id}", "s")
                .replace("{token}", "t")
                .replace("{path}", "app.js");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let req = TestRequest::default().method(method.clone()).uri(&uri).to_request();
            let res = call_service(&app, req).await;
            assert!(
                res.request().match_pattern().is_some(),
                "{method} {uri} is documented but not routed"
            );
        }
    }
}
