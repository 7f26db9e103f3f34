//! A strict local `_bulk` endpoint standing in for Elasticsearch, with
//! programmable faults. It enforces the contract real Elasticsearch has for
//! data streams and records every violation (tests assert there are none):
//!
//! - `POST /_bulk` with `Content-Type: application/x-ndjson`;
//! - every line ends with `\n`, is JSON, and lines pair as action + document;
//! - the action is `create` (the only one data streams accept) with
//!   `_index` and `_id`;
//! - every document is an object with a string `@timestamp`.
//!
//! It answers per item like Elasticsearch: 201, 409 for an `_id` already
//! written to that index, or the injected fault. Faults: a status for the
//! whole request (e.g. 503), a delay before answering (a stall), and
//! per-item statuses for documents containing a marker (429 a number of
//! times, 400 always).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One document the server accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub index: String,
    pub id: String,
    pub doc: Value,
}

/// A per-item fault: documents whose text contains `marker` get `status`,
/// `times` times (`None`: always).
#[derive(Debug, Clone)]
struct ItemFault {
    marker: String,
    status: u16,
    times: Option<usize>,
}

#[derive(Default)]
struct State {
    accepted: Vec<Accepted>,
    ids: HashSet<(String, String)>,
    violations: Vec<String>,
    /// Item answers by status, across all requests.
    item_statuses: HashMap<u16, usize>,
    whole: Option<u16>,
    delay: Duration,
    item_faults: Vec<ItemFault>,
    /// Templates installed with `PUT /_component_template/{name}` or
    /// `PUT /_index_template/{name}`, by path.
    templates: HashMap<String, Value>,
    /// Security API and Kibana API calls, in order (the compose setup scripts).
    admin_calls: Vec<AdminCall>,
}

/// One call of the security API, or of the Kibana API the same server
/// stands in for: what the compose setup scripts send.
#[derive(Debug, Clone)]
pub struct AdminCall {
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub body: String,
}

/// The running endpoint; stops when dropped.
#[derive(Clone)]
pub struct EsBulk {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for EsBulk {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl EsBulk {
    /// Listen on loopback port 0.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the _bulk server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, state, task: Arc::new(task) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The security and Kibana API calls received, in order.
    pub fn admin_calls(&self) -> Vec<AdminCall> {
        self.with(|s| s.admin_calls.clone())
    }

    /// Answer every request with `status` (e.g. 503), or normally with `None`.
    pub fn fail_whole(&self, status: Option<u16>) {
        self.with(|s| s.whole = status);
    }

    /// Wait this long before answering each request.
    pub fn stall(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    /// Documents containing `marker` get `status`, `times` times (`None`: always).
    pub fn fail_items(&self, marker: &str, status: u16, times: Option<usize>) {
        self.with(|s| s.item_faults.push(ItemFault { marker: marker.into(), status, times }));
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.with(|s| s.accepted.clone())
    }

    /// Accepted documents of `index` whose text contains `needle`.
    pub fn find(&self, index: &str, needle: &str) -> Vec<Accepted> {
        self.accepted()
            .into_iter()
            .filter(|a| a.index == index && a.doc.to_string().contains(needle))
            .collect()
    }

    /// Installed templates by path, e.g. `/_index_template/logs-mapcast.app`.
    pub fn templates(&self) -> HashMap<String, Value> {
        self.with(|s| s.templates.clone())
    }

    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    /// How many items were answered with `status` so far.
    pub fn item_status_count(&self, status: u16) -> usize {
        self.with(|s| s.item_statuses.get(&status).copied().unwrap_or(0))
    }

    /// Poll until `check` holds (true) or `timeout` passes (false).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&EsBulk) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-elastic-product", "Elasticsearch")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = percent_decode(req.uri().path());
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();

    let delay = state.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    // The root endpoint as Elasticsearch 8 answers it (no `distribution`).
    if path == "/" && method == hyper::Method::GET {
        let info = json!({ "version": { "number": "8.19.0", "build_flavor": "default" } });
        return Ok(reply(StatusCode::OK, info));
    }
    let template = ["/_component_template/", "/_index_template/"]
        .iter()
        .any(|p| path.starts_with(p) && path.len() > p.len());
    if template && method == hyper::Method::PUT {
        return Ok(match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_object() && content_type.starts_with("application/json") => {
                state.lock().unwrap().templates.insert(path, v);
                reply(StatusCode::OK, json!({ "acknowledged": true }))
            }
            _ => {
                let why = format!("template {path} is not a JSON object ({content_type})");
                state.lock().unwrap().violations.push(why.clone());
                reply(StatusCode::BAD_REQUEST, json!({ "error": why, "status": 400 }))
            }
        });
    }
    // What dashboards/setup.sh and import.sh ask (Kibana's API included, so
    // one server stands in for both): answered as a healthy stack would.
    if path == "/_cluster/health" && method == hyper::Method::GET {
        return Ok(reply(StatusCode::OK, json!({ "status": "green" })));
    }
    if path == "/api/status" && method == hyper::Method::GET {
        return Ok(reply(
            StatusCode::OK,
            json!({ "status": { "overall": { "level": "available" } } }),
        ));
    }
    if path.starts_with("/_security/") || path.starts_with("/api/") {
        state.lock().unwrap().admin_calls.push(AdminCall {
            method: method.to_string(),
            path: path.clone(),
            authorization,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let answer = if path.starts_with("/api/saved_objects/_import") {
            json!({ "success": true, "successCount": 1 })
        } else {
            json!({ "acknowledged": true })
        };
        return Ok(reply(StatusCode::OK, answer));
    }
    if path != "/_bulk" || method != hyper::Method::POST {
        let why = format!("unexpected request {method} {path}");
        state.lock().unwrap().violations.push(why.clone());
        return Ok(reply(StatusCode::NOT_FOUND, json!({ "error": why })));
    }
    if let Some(status) = state.lock().unwrap().whole {
        let code = StatusCode::from_u16(status).unwrap();
        return Ok(reply(code, json!({ "error": "injected", "status": status })));
    }
    let pairs = match parse(&content_type, &body) {
        Ok(pairs) => pairs,
        Err(why) => {
            state.lock().unwrap().violations.push(why.clone());
            return Ok(reply(StatusCode::BAD_REQUEST, json!({ "error": why, "status": 400 })));
        }
    };

    let mut guard = state.lock().unwrap();
    let s = &mut *guard;
    let mut items = Vec::new();
    let mut errors = false;
    for (index, id, doc) in pairs {
        let text = doc.to_string();
        let fault = s
            .item_faults
            .iter_mut()
            .find(|f| text.contains(&f.marker) && f.times.is_none_or(|t| t > 0));
        let status = match fault {
            Some(f) => {
                if let Some(t) = &mut f.times {
                    *t -= 1;
                }
                f.status
            }
            None if s.ids.contains(&(index.clone(), id.clone())) => 409,
            None => 201,
        };
        *s.item_statuses.entry(status).or_default() += 1;
        let result = match status {
            201 => {
                s.ids.insert((index.clone(), id.clone()));
                s.accepted.push(Accepted { index: index.clone(), id: id.clone(), doc });
                json!({ "_index": index, "_id": id, "status": 201, "result": "created" })
            }
            409 => item_error(&index, &id, 409, "version_conflict_engine_exception"),
            429 => item_error(&index, &id, 429, "es_rejected_execution_exception"),
            other => item_error(&index, &id, other, "mapper_parsing_exception"),
        };
        errors |= status != 201;
        items.push(json!({ "create": result }));
    }
    Ok(reply(StatusCode::OK, json!({ "took": 1, "errors": errors, "items": items })))
}

/// A failed item as Elasticsearch reports it.
fn item_error(index: &str, id: &str, status: u16, kind: &str) -> Value {
    json!({
        "_index": index,
        "_id": id,
        "status": status,
        "error": { "type": kind, "reason": format!("{kind} (injected)") },
    })
}

/// `%XX` escapes decoded, as Elasticsearch reads paths (`@` comes as `%40`).
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The (index, id, document) triples of a well-formed `_bulk` body, or why
/// it is not well-formed.
fn parse(content_type: &str, body: &[u8]) -> Result<Vec<(String, String, Value)>, String> {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime != "application/x-ndjson" {
        return Err(format!("Content-Type must be application/x-ndjson, got {content_type:?}"));
    }
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_owned())?;
    if text.is_empty() {
        return Err("empty body".into());
    }
    if !text.ends_with('\n') {
        return Err("the last line does not end with \\n".into());
    }
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    if !lines.len().is_multiple_of(2) {
        return Err(format!("{} lines: not action/document pairs", lines.len()));
    }
    let mut out = Vec::new();
    for (n, pair) in lines.chunks(2).enumerate() {
        let action: Value =
            serde_json::from_str(pair[0]).map_err(|e| format!("action {n} is not JSON: {e}"))?;
        let doc: Value =
            serde_json::from_str(pair[1]).map_err(|e| format!("document {n} is not JSON: {e}"))?;
        let obj = action.as_object().ok_or(format!("action {n} is not an object"))?;
        if obj.len() != 1 || !obj.contains_key("create") {
            return Err(format!("action {n} must be `create` only (data streams): {action}"));
        }
        let meta = &obj["create"];
        let index = meta["_index"].as_str().ok_or(format!("action {n} has no _index"))?;
        let id = meta["_id"].as_str().ok_or(format!("action {n} has no _id"))?;
        if !doc.is_object() {
            return Err(format!("document {n} is not an object"));
        }
        if !doc["@timestamp"].is_string() {
            return Err(format!("document {n} has no @timestamp: {doc}"));
        }
        out.push((index.to_owned(), id.to_owned(), doc));
    }
    Ok(out)
}

#[test]
fn the_contract_is_enforced() {
    let ok = "{\"create\":{\"_index\":\"logs-a-b\",\"_id\":\"1\"}}\n{\"@timestamp\":\"t\"}\n";
    assert_eq!(parse("application/x-ndjson", ok.as_bytes()).unwrap().len(), 1);
    assert!(parse("application/json", ok.as_bytes()).is_err());
    assert!(parse("application/x-ndjson", ok.trim_end().as_bytes()).is_err());
    let index = ok.replace("create", "index");
    assert!(parse("application/x-ndjson", index.as_bytes()).is_err());
    let no_ts = ok.replace("@timestamp", "ts");
    assert!(parse("application/x-ndjson", no_ts.as_bytes()).is_err());
    let unpaired = ok.lines().next().unwrap().to_owned() + "\n";
    assert!(parse("application/x-ndjson", unpaired.as_bytes()).is_err());
}
