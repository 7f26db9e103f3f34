//! `GET /openapi.json`: the OpenAPI 3.1 description of the REST API,
//! generated from the handlers. Routes are mounted through
//! `utoipa_actix_web`'s `ServiceConfig`, whose `service(..)` only takes
//! handlers annotated with `#[utoipa::path]`: what is served is what is
//! documented.

use actix_web::{App, HttpResponse, get, web};
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use super::errors::Problem;
use super::routes::{self, Published};

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
    components(schemas(Published, Problem)),
)]
struct ApiDoc;

/// The security scheme's name in the document.
const BEARER: &str = "bearer";

/// The document, served as built once at start.
pub struct OpenApiJson(pub String);

/// The OpenAPI document of every route `routes::configure` mounts, as JSON
/// (some of what [`complete`] adds, such as any-value schemas, utoipa's own
/// types do not read back).
pub fn document() -> Value {
    let (_, mut doc) = App::new().into_utoipa_app().configure(routes::configure).split_for_parts();
    let ours = ApiDoc::openapi();
    doc.info = ours.info;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.tags = ours.tags;
    if let Some(schemas) = ours.components.map(|c| c.schemas) {
        doc.components.get_or_insert_with(Default::default).schemas.extend(schemas);
    }
    let mut json = serde_json::to_value(&doc).expect("an OpenAPI document serializes");
    complete(&mut json);
    json
}

/// What the handlers' annotations do not say on their own: how to sign in,
/// the shape of every problem, the errors any route may answer, schemas for
/// bodies named only by media type, and one object where a flattened struct
/// was described as an impossible `allOf`.
fn complete(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `POST /api/v1/sessions`. Routes that allow \
                            anonymous callers (`auth.allow_anonymous`) take none.",
        }
    });
    // Optional everywhere: each operation says what an anonymous caller gets.
    doc["security"] = json!([{}, { BEARER: [] }]);

    let problem = json!({ "$ref": "#/components/schemas/Problem" });
    for item in doc["paths"].as_object_mut().into_iter().flat_map(|p| p.values_mut()) {
        for op in item.as_object_mut().into_iter().flat_map(|i| i.values_mut()) {
            // A body named only by its media types takes anything of them:
            // say so in a schema, which code generators need.
            let bodies = op.pointer_mut("/requestBody/content").and_then(Value::as_object_mut);
            for (media, content) in bodies.into_iter().flatten() {
                if content.get("schema").is_none() {
                    content["schema"] = match media.as_str() {
                        "application/octet-stream" => {
                            json!({ "type": "string", "format": "binary" })
                        }
                        "application/json" => json!({ "description": "Any JSON value" }),
                        _ => json!({ "type": "string" }),
                    };
                }
            }
            let Some(responses) = op["responses"].as_object_mut() else { continue };
            for response in responses.values_mut() {
                if let Some(media) = response.pointer_mut("/content/application~1problem+json") {
                    media["schema"] = problem.clone();
                }
            }
            responses.entry("default").or_insert_with(|| {
                json!({
                    "description": "Any other error: a method the path does not have (405, \
                                    with `Allow`), a target or headers too large (414, 431), \
                                    an internal error (500, with `trace.id`)",
                    "content": { "application/problem+json": { "schema": problem.clone() } },
                })
            });
        }
    }

    let Some(schemas) = doc["components"]["schemas"].as_object_mut() else { return };
    let snapshot = schemas.clone();
    for schema in schemas.values_mut() {
        if let Some(merged) = merged_all_of(schema, &snapshot) {
            *schema = merged;
        }
    }
}

/// An `allOf` of object schemas as one object: a `#[serde(flatten)]`ed
/// struct whose own schema forbids other properties makes the `allOf`
/// unsatisfiable, though the data is one plain object.
fn merged_all_of(schema: &Value, schemas: &serde_json::Map<String, Value>) -> Option<Value> {
    let parts = schema["allOf"].as_array()?;
    let mut properties = serde_json::Map::new();
    let mut required: Vec<Value> = Vec::new();
    for part in parts {
        let part = match part["$ref"].as_str() {
            Some(r) => schemas.get(r.strip_prefix("#/components/schemas/")?)?,
            None => part,
        };
        if part.get("allOf").is_some() || part["type"] != "object" {
            return None;
        }
        properties.extend(part["properties"].as_object().cloned().unwrap_or_default());
        for name in part["required"].as_array().into_iter().flatten() {
            if !required.contains(name) {
                required.push(name.clone());
            }
        }
    }
    let mut merged = json!({ "type": "object", "properties": properties, "required": required });
    if let Some(description) = schema.get("description") {
        merged["description"] = description.clone();
    }
    Some(merged)
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
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
        let ops = operations(&doc);
        for (method, path) in ROUTES {
            assert!(
                ops.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is not in /openapi.json; documented: {ops:?}"
            );
        }
    }

    /// Every `$ref` in `value`.
    fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r.to_owned());
                }
                map.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_every_problem_has_its_schema() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.iter().any(|r| r.ends_with("/Published")), "{found:?}");
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
            assert!(doc["components"]["schemas"].get(name).is_some(), "{r} does not exist");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("default"), "{method} {path}");
                for (status, response) in responses {
                    if let Some(media) = response["content"].get("application/problem+json") {
                        assert!(media.get("schema").is_some(), "{method} {path} {status}");
                    }
                }
            }
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }

    #[test]
    fn a_stored_flag_is_one_object_its_answers_satisfy() {
        let doc = document();
        let flag = &doc["components"]["schemas"]["Flag"];
        assert!(flag.get("allOf").is_none(), "{flag}");
        let properties = flag["properties"].as_object().unwrap();
        for name in ["key", "state", "enabled", "rollout", "variants", "canary"] {
            assert!(properties.contains_key(name), "Flag lacks {name}: {flag}");
        }
        // What the handler serializes has exactly the documented properties.
        let key = crate::flags::FlagKey::parse("map.clustering").unwrap();
        let sent = serde_json::to_value(crate::flags::Flag::new(key, Default::default())).unwrap();
        for name in sent.as_object().unwrap().keys() {
            assert!(properties.contains_key(name), "{name} is not in the Flag schema");
        }
    }

    /// Limits the handlers enforce are in the schemas, so clients and
    /// generated validators refuse what the server would.
    #[test]
    fn enforced_limits_are_documented() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for (pointer, expected) in [
            ("/NewUser/properties/username/minLength", json!(3)),
            ("/NewUser/properties/username/maxLength", json!(64)),
            ("/NewUser/properties/password/minLength", json!(8)),
            ("/NewDevice/properties/name/maxLength", json!(100)),
            ("/NewDevice/properties/kind/pattern", json!("^(car|phone)$")),
            ("/FlagSpec/properties/rollout/maximum", json!(100)),
            ("/FlagSpec/properties/variants/maxItems", json!(8)),
            ("/FlagSpec/properties/allow/maxItems", json!(1000)),
        ] {
            assert_eq!(schemas.pointer(pointer), Some(&expected), "{pointer}");
        }
        let param = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .clone()
        };
        assert_eq!(param("/api/v1/history/{topic}", "limit")["maximum"], 1000);
        assert_eq!(param("/api/v1/history/{topic}", "limit")["minimum"], 1);
        assert_eq!(param("/api/v1/map", "zoom")["maximum"], 22);
        let qos = doc["paths"]["/api/v1/topics/{topic}"]["put"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "qos")
            .unwrap()["schema"]
            .clone();
        assert_eq!(qos["maximum"], 2);
    }

    #[test]
    fn publishing_documents_its_answers_including_the_problem_cases() {
        let doc = document();
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
        let doc = document();
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
