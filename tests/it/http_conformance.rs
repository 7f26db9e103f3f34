//! HTTP as generic tools expect it, on every route: the routes come from
//! the server's own `/openapi.json`, so a route added later is checked too.
//! `HEAD` answers like `GET` without a body, a wrong method gets `405` with
//! `Allow`, `If-Modified-Since` gets `304` where `Last-Modified` is sent,
//! errors from the framework are problems, and a 5xx names its trace and
//! crash report.

use std::collections::BTreeSet;
use std::time::Duration;

use actix_web::http::header::HttpDate;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::crash::crash_files;
use crate::helpers::{
    Api, PASSWORD, RECV, RawHttp, ServerProcess, TestApp, add_admin, expect_problem, fast_map,
    location, spawn_app_in,
};

/// The methods a REST route may have; each route is tried with the others.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A server with one of everything a path names: a device with a retained
/// and stored location, a flag, and a built map; the admin's token.
struct World {
    app: TestApp,
    token: String,
    device: String,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        add_admin(dir.path(), "root", PASSWORD).await;
        let app = spawn_app_in(dir.path(), fast_map).await;
        let api = app.api();
        let token = api.login("root", PASSWORD).await;
        let device = api.create_device(&token, "Golf", "car").await.id;
        // A device's location: retained (topics) and kept (history).
        let put = api
            .send(
                Method::PUT,
                &format!("/api/v1/topics/devices/{device}/location"),
                Some(&token),
                Some(("application/json", location(13.4, 52.5))),
            )
            .await;
        assert!(put.status().is_success(), "retained publish: {}", put.status());
        let flag = api
            .send(
                Method::PUT,
                "/api/v1/flags/map.clustering",
                Some(&token),
                Some(("application/json", json!({"enabled": false}).to_string())),
            )
            .await;
        assert!(flag.status().is_success(), "flag: {}", flag.status());
        let world = Self { app, token, device, _dir: dir };
        // The map answers 503 until its first snapshot.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while world.call(Method::GET, "/api/v1/map", &[]).await.status() != 200 {
            assert!(tokio::time::Instant::now() < deadline, "no map snapshot");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        world
    }

    /// One request as the admin, with `headers`; no transparent gzip, so
    /// the headers compared are the ones sent.
    async fn call(&self, method: Method, uri: &str, headers: &[(&str, &str)]) -> Response {
        let client = reqwest::Client::builder().no_gzip().build().unwrap();
        let mut req = client
            .request(method.clone(), format!("http://{}{uri}", self.app.http_addr))
            .bearer_auth(&self.token)
            .timeout(RECV);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
    }

    /// Every documented operation: (OpenAPI path, a URI for it, methods).
    async fn routes(&self) -> Vec<(String, String, BTreeSet<String>)> {
        let doc: Value = self.call(Method::GET, "/openapi.json", &[]).await.json().await.unwrap();
        let mut routes = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let methods: BTreeSet<String> =
                item.as_object().unwrap().keys().map(|m| m.to_ascii_uppercase()).collect();
            let required_query: Vec<String> = item
                .as_object()
                .unwrap()
                .values()
                .flat_map(|op| op["parameters"].as_array().cloned().unwrap_or_default())
                .filter(|p| p["in"] == "query" && p["required"] == true)
                .map(|p| format!("{}={}", p["name"].as_str().unwrap(), self.value_of(&p["name"])))
                .collect();
            let mut uri = path.clone();
            for name in ["topic", "id", "key", "share_id", "token", "path", "secret"] {
                uri = uri.replace(&format!("{{{name}}}"), &self.value_of(&json!(name)));
            }
            assert!(!uri.contains('{'), "no test value for a parameter of {path}");
            if !required_query.is_empty() {
                uri = format!("{uri}?{}", required_query.join("&"));
            }
            routes.push((path.clone(), uri, methods));
        }
        assert!(routes.len() >= 20, "too few routes documented: {routes:?}");
        routes
    }

    fn value_of(&self, name: &Value) -> String {
        match name.as_str().unwrap() {
            "topic" => format!("devices/{}/location", self.device),
            "id" => self.device.clone(),
            "key" => "map.clustering".into(),
            // No such link or secret: the routes answer 404, 410 or 401,
            // which is all a method or HEAD check needs.
            "share_id" => "0".into(),
            "token" => "not-a-link".into(),
            "secret" => "not-a-secret".into(),
            "path" => "app.js".into(),
            "filter" => "conformance/%23".into(),
            other => panic!("no test value for the required parameter {other:?}"),
        }
    }
}

/// The headers that describe the representation, without the ones made per
/// answer (`date`) or by the transfer (`transfer-encoding`).
fn representation(headers: &HeaderMap) -> Vec<(String, HeaderValue)> {
    let mut out: Vec<(String, HeaderValue)> = headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "transfer-encoding" | "content-length"))
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn content_length(res: &Response) -> Option<String> {
    res.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn head_answers_every_get_route_like_get_without_a_body() {
    let world = World::new().await;
    let mut checked = 0;
    for (path, uri, methods) in world.routes().await {
        if !methods.contains("GET") {
            continue;
        }
        // Bodies that change per request (metrics, uptime) may differ in
        // length between two answers: a few tries for one equal pair.
        let mut last = String::new();
        let mut same = false;
        for _ in 0..5 {
            let head = world.call(Method::HEAD, &uri, &[]).await;
            let get = world.call(Method::GET, &uri, &[]).await;
            assert_eq!(head.status(), get.status(), "HEAD {uri} vs GET");
            assert_ne!(head.status(), 404, "HEAD {uri}");
            let (head_len, get_len) = (content_length(&head), content_length(&get));
            let (head_repr, get_repr) =
                (representation(head.headers()), representation(get.headers()));
            let get_streams = get
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
            drop(get);
            let body = head.bytes().await.unwrap();
            assert!(body.is_empty(), "HEAD {uri} has a body: {body:?}");
            // A stream has no length to announce; every other answer does.
            same = head_repr == get_repr && (get_streams || head_len == get_len);
            if same {
                break;
            }
            last = format!("HEAD {head_len:?} {head_repr:?}\nGET  {get_len:?} {get_repr:?}");
        }
        assert!(same, "HEAD {path} differs from GET:\n{last}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} GET routes checked");
}

#[tokio::test]
async fn a_wrong_method_on_any_route_is_405_with_allow() {
    let world = World::new().await;
    for (path, uri, methods) in world.routes().await {
        let mut expected = methods.clone();
        if methods.contains("GET") {
            expected.insert("HEAD".into());
        }
        for method in METHODS.iter().filter(|m| !methods.contains(**m)) {
            let res = world.call(Method::from_bytes(method.as_bytes()).unwrap(), &uri, &[]).await;
            let allow: BTreeSet<String> = res
                .headers()
                .get("allow")
                .unwrap_or_else(|| panic!("{method} {path}: no Allow ({})", res.status()))
                .to_str()
                .unwrap()
                .split(',')
                .map(|m| m.trim().to_owned())
                .collect();
            assert_eq!(allow, expected, "{method} {path}");
            let problem = expect_problem(res, 405, "method-not-allowed").await;
            assert!(problem["detail"].as_str().unwrap().contains(method), "{problem}");
        }
    }
    // A path nobody serves stays 404.
    let res = world.call(Method::DELETE, "/api/v1/nowhere", &[]).await;
    assert!(res.headers().get("allow").is_none());
    expect_problem(res, 404, "not-found").await;
}

#[tokio::test]
async fn if_modified_since_gets_304_wherever_last_modified_is_sent() {
    let world = World::new().await;
    let mut checked = Vec::new();
    for (path, uri, methods) in world.routes().await {
        if !methods.contains("GET") {
            continue;
        }
        let res = world.call(Method::GET, &uri, &[]).await;
        let Some(modified) = res.headers().get("last-modified").cloned() else { continue };
        let etag = res.headers().get("etag").cloned();
        let modified = modified.to_str().unwrap().to_owned();
        assert_eq!(res.status(), 200, "{path}");

        for method in [Method::GET, Method::HEAD] {
            let res = world.call(method.clone(), &uri, &[("if-modified-since", &modified)]).await;
            assert_eq!(res.status(), 304, "{method} {path} If-Modified-Since: {modified}");
            assert_eq!(res.headers().get("etag"), etag.as_ref(), "{path}: 304 keeps the ETag");
            assert!(res.bytes().await.unwrap().is_empty());
        }
        // An older copy gets the representation.
        let date: std::time::SystemTime = modified.parse::<HttpDate>().unwrap().into();
        let older = HttpDate::from(date - Duration::from_secs(86_400)).to_string();
        let res = world.call(Method::GET, &uri, &[("if-modified-since", &older)]).await;
        assert_eq!(res.status(), 200, "{path} If-Modified-Since: {older}");
        // If-None-Match, when sent, decides instead (RFC 9110 §13.1.3).
        let res = world
            .call(
                Method::GET,
                &uri,
                &[("if-modified-since", &modified), ("if-none-match", "\"x\"")],
            )
            .await;
        assert_eq!(res.status(), 200, "{path}: a different ETag wins over the date");
        checked.push(path);
    }
    for path in ["/api/v1/topics/{topic}", "/api/v1/map"] {
        assert!(checked.iter().any(|p| p == path), "{path} sent no Last-Modified: {checked:?}");
    }
}

#[tokio::test]
async fn framework_errors_are_problems_without_rust_internals() {
    let world = World::new().await;
    for (uri, status, code) in [
        ("/api/v1/map?since=abc", 400, "bad-request"),
        ("/api/v1/map?zoom=999", 400, "bad-request"),
        ("/api/v1/history/devices/x/location?limit=-1", 400, "bad-request"),
    ] {
        let problem = expect_problem(world.call(Method::GET, uri, &[]).await, status, code).await;
        let detail = problem["detail"].as_str().unwrap();
        for internal in ["deserialize", "u64", "u8", "u32", "struct", "::"] {
            assert!(!detail.contains(internal), "{uri}: {detail:?} names {internal:?}");
        }
        assert!(detail.starts_with("invalid query string: "), "{uri}: {detail:?}");
    }

    // A target longer than anything the API takes, and oversized headers.
    let long = format!("GET /api/v1/topics/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    let big_header =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "p".repeat(40_000));
    for (request, status, code) in
        [(long, 414, "uri-too-long"), (big_header, 431, "headers-too-large")]
    {
        let mut raw = RawHttp::connect(world.app.http_addr).await;
        raw.send(request.as_bytes()).await;
        let answer = raw.read_until_closed(Duration::from_millis(500)).await;
        assert_eq!(
            answer.status(),
            Some(status),
            "{}",
            answer.text.chars().take(300).collect::<String>()
        );
        assert!(answer.has_header("content-type", "application/problem+json"));
        let problem: Value = serde_json::from_str(answer.body()).unwrap();
        assert_eq!(problem["type"], format!("urn:mapcast:problem:{code}"));
        assert_eq!(problem["status"], status);
    }
}

#[tokio::test]
async fn a_5xx_names_its_trace_and_a_panic_its_crash_report() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", PASSWORD).await;
    let server =
        ServerProcess::start_with_config(dir.path(), "[debug]\npanic_endpoint = true", &[]).await;
    let api = Api::new(server.http_addr);
    let token = api.login("root", PASSWORD).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client = reqwest::Client::new();

    let res = client
        .post(format!("http://{}/api/v1/admin/debug/panic", server.http_addr))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .timeout(RECV)
        .send()
        .await
        .unwrap();

    let header = |name: &str| {
        res.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    };
    let (trace_header, crash_header) = (header("x-trace-id"), header("x-crash-id"));
    let problem = expect_problem(res, 500, "internal").await;
    assert_eq!(trace_header, trace, "the caller's trace continues");
    assert_eq!(problem["trace.id"], trace, "{problem}");
    assert!(!crash_header.is_empty(), "no X-Crash-Id");
    assert_eq!(problem["error.id"], crash_header.as_str(), "{problem}");
    // The ids lead to the report: its file name and its own fields.
    let files = crash_files(dir.path());
    let report = files
        .iter()
        .find(|f| f.file_stem().unwrap().to_str() == Some(crash_header.as_str()))
        .unwrap_or_else(|| panic!("no report {crash_header} in {files:?}"));
    let doc: Value =
        serde_json::from_str(&tokio::fs::read_to_string(report).await.unwrap()).unwrap();
    assert_eq!(doc["error.id"], crash_header.as_str());
    assert_eq!(doc["trace.id"], trace);

    // A client error names no trace: nothing to look up.
    let res = api.get("/api/v1/map?since=abc", None).await;
    assert!(res.headers().get("x-trace-id").is_none());
    let problem = expect_problem(res, 400, "bad-request").await;
    assert!(problem.get("trace.id").is_none(), "{problem}");
}

/// `/openapi.json` through real tools (`tests/openapi/check_openapi.py`):
/// openapi-spec-validator, then a client generated by openapi-python-client
/// calling this server. Runs with a Python in `MAPCAST_TEST_PYTHON` that has
/// both installed (as `.ci/run` sets up); otherwise prints why it skipped.
/// A run leaves the `openapi-ran` marker, which CI requires.
#[tokio::test]
async fn the_openapi_document_validates_and_a_generated_client_works() {
    let Some(python) = std::env::var_os("MAPCAST_TEST_PYTHON").filter(|p| !p.is_empty()) else {
        println!(
            "skipped: MAPCAST_TEST_PYTHON is not set (a python with openapi-spec-validator and openapi-python-client)"
        );
        return;
    };
    let world = World::new().await;
    let work = tempfile::tempdir().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/check_openapi.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script)
        .arg(format!("http://{}", world.app.http_addr))
        .args(["root", PASSWORD, &world.device])
        .arg(work.path());

    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run check_openapi.py"))
        .await
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if out.status.code() == Some(77) {
        return;
    }
    assert!(out.status.success(), "check_openapi.py failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(" passed, 0 failed"), "check_openapi.py ran no checks:\n{stdout}");
    if let Ok(dir) = std::env::var("MAPCAST_TEST_MARKER_DIR") {
        tokio::fs::create_dir_all(&dir).await.expect("create MAPCAST_TEST_MARKER_DIR");
        tokio::fs::write(std::path::Path::new(&dir).join("openapi-ran"), b"ok\n")
            .await
            .expect("write the openapi-ran marker");
    }
}
