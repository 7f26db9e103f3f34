//! HTTP semantics every route gets without declaring them, so monitors,
//! caches and generated clients can rely on them for routes added later too:
//!
//! - `HEAD` is answered by the route's `GET`, with its headers and no body;
//! - a path that exists with another method gets `405` and `Allow` (the
//!   methods come from the OpenAPI document, which lists every route);
//! - `If-Modified-Since` gets `304` wherever `Last-Modified` is sent;
//! - every error answer is `application/problem+json`, whoever made it;
//! - a 5xx answer names its `trace.id` (header and body) and, for a panic,
//!   the `error.id` of its crash report, the two ids support searches by.

use std::collections::HashMap;
use std::time::SystemTime;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::ServiceRequest;
use actix_web::http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, HttpDate,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, TRANSFER_ENCODING,
};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde_json::{Map, Value};

use super::errors::{ApiError, PROBLEM_JSON};
use crate::telemetry::names;

/// Header naming the `trace.id` of a 5xx answer.
pub const TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-trace-id");
/// Header naming the crash report (`error.id`) of a panicked request.
pub const CRASH_ID_HEADER: HeaderName = HeaderName::from_static("x-crash-id");

/// Largest error body rewritten into a problem; error bodies are small, and
/// a larger one is left as it is rather than buffered.
const MAX_PROBLEM_BYTES: u64 = 64 * 1024;

/// The methods of every documented path, keyed by its OpenAPI path
/// (`/api/v1/topics/{topic}`).
#[derive(Debug, Default)]
pub struct RouteTable {
    methods: HashMap<String, Vec<Method>>,
}

impl RouteTable {
    pub fn from_document(doc: &Value) -> Self {
        let mut methods: HashMap<String, Vec<Method>> = HashMap::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let entry = methods.entry(path.clone()).or_default();
            for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
                if let Ok(method) = Method::from_bytes(key.to_ascii_uppercase().as_bytes()) {
                    entry.push(method);
                }
            }
        }
        Self { methods }
    }

    /// The `Allow` value of an actix route pattern (`{topic:.*}` is the
    /// OpenAPI `{topic}`), `HEAD` beside `GET`; `None` for an unknown path.
    pub fn allow(&self, pattern: &str) -> Option<String> {
        let methods = self.methods.get(&openapi_path(pattern))?;
        let mut names: Vec<&str> = Vec::new();
        for m in methods {
            names.push(m.as_str());
            if m == Method::GET {
                names.push("HEAD");
            }
        }
        (!names.is_empty()).then(|| names.join(", "))
    }
}

/// `/a/{name:regex}/b` → `/a/{name}/b`.
fn openapi_path(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut in_regex = 0usize;
    let mut depth = 0usize;
    for c in pattern.chars() {
        match c {
            '{' => {
                depth += 1;
                if in_regex == 0 {
                    out.push(c);
                }
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if in_regex > 0 && depth < in_regex {
                    in_regex = 0;
                }
                if in_regex == 0 {
                    out.push(c);
                }
            }
            ':' if depth == 1 && in_regex == 0 => in_regex = depth,
            _ if in_regex == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// What no route answered: 405 with `Allow` when the path exists with other
/// methods, else 404.
pub async fn unrouted(req: HttpRequest, routes: web::Data<RouteTable>) -> ApiError {
    match req.match_pattern().and_then(|p| routes.allow(&p)) {
        Some(allow) => {
            ApiError::MethodNotAllowed { method: req.method().as_str().to_owned(), allow }
        }
        None => ApiError::NotFound,
    }
}

/// Marks a request that arrived as `HEAD` (it reaches the handler as its
/// `GET`): a handler whose `GET` has side effects skips them for it.
#[derive(Debug, Clone, Copy)]
pub struct HeadRequest;

/// Whether `req` arrived as `HEAD`.
pub fn is_head(req: &HttpRequest) -> bool {
    req.extensions().contains::<HeadRequest>()
}

/// What the final answer depends on in the request, taken before the
/// request is handed on.
#[derive(Debug)]
pub struct Asked {
    /// A `HEAD`, routed as `GET`.
    head: bool,
    /// A `GET` or a `HEAD`.
    safe: bool,
    if_modified_since: Option<SystemTime>,
    if_none_match: bool,
}

impl Asked {
    /// Note what the answer depends on and route a `HEAD` as its `GET`
    /// (the connection still knows it was a `HEAD` and sends no body).
    pub fn take(req: &mut ServiceRequest) -> Self {
        let head = req.method() == Method::HEAD;
        let headers = req.headers();
        let asked = Self {
            head,
            safe: head || req.method() == Method::GET,
            if_modified_since: headers
                .get(IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<HttpDate>().ok())
                .map(SystemTime::from),
            if_none_match: headers.contains_key(IF_NONE_MATCH),
        };
        if head {
            req.head_mut().method = Method::GET;
            req.extensions_mut().insert(HeadRequest);
        }
        asked
    }
}

/// Who to name in a 5xx answer.
#[derive(Debug, Default)]
pub struct Ids {
    pub trace_id: Option<String>,
    pub crash_id: Option<String>,
}

/// The answer as the client gets it: conditional, problem-shaped, with ids.
pub async fn finish(res: HttpResponse<BoxBody>, asked: &Asked, ids: Ids) -> HttpResponse<BoxBody> {
    let res = if res.status().is_client_error() || res.status().is_server_error() {
        problem_shaped(res, &ids).await
    } else {
        not_modified(res, asked)
    };
    if asked.head { without_body(res) } else { res }
}

/// `304` when the client's copy is as new as `Last-Modified` (RFC 9110
/// §13.1.3); `If-None-Match`, when sent, decides instead (the handler did).
fn not_modified(res: HttpResponse<BoxBody>, asked: &Asked) -> HttpResponse<BoxBody> {
    let Some(since) = asked.if_modified_since.filter(|_| asked.safe && !asked.if_none_match) else {
        return res;
    };
    if res.status() != StatusCode::OK {
        return res;
    }
    let modified = res
        .headers()
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<HttpDate>().ok())
        .map(SystemTime::from);
    if modified.is_none_or(|m| m > since) {
        return res;
    }
    let mut out = HttpResponse::NotModified();
    for (name, value) in res.headers() {
        if ![CONTENT_TYPE, CONTENT_LENGTH, CONTENT_ENCODING, TRANSFER_ENCODING].contains(name) {
            out.append_header((name.clone(), value.clone()));
        }
    }
    out.finish()
}

/// A `HEAD` answer keeps a sized body's length (the connection sends the
/// `Content-Length` and drops the bytes); a stream (an SSE subscription)
/// ends here instead of running for a body nobody reads.
fn without_body(res: HttpResponse<BoxBody>) -> HttpResponse<BoxBody> {
    if matches!(res.body().size(), BodySize::Stream) {
        res.set_body(BoxBody::new(actix_web::body::None::new()))
    } else {
        res
    }
}

/// Any error answer as an RFC 9457 problem; 5xx ones with their ids.
async fn problem_shaped(res: HttpResponse<BoxBody>, ids: &Ids) -> HttpResponse<BoxBody> {
    let status = res.status();
    let is_problem = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    // A page made for people (a share link's "expired" page) stays a page.
    let is_page =
        res.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let small = matches!(res.body().size(), BodySize::Sized(n) if n <= MAX_PROBLEM_BYTES)
        || matches!(res.body().size(), BodySize::None);
    if !small || ((is_problem || is_page) && !status.is_server_error()) {
        return res;
    }
    let framework = (!is_problem).then(|| framework_detail(&res));
    let (head, mut body) = res.into_parts();
    let mut problem = match framework {
        Some(detail) => from_status(status, detail),
        None => match read_small(&mut body).await {
            Some(Value::Object(map)) => map,
            _ => from_status(status, status.canonical_reason().unwrap_or("error").to_owned()),
        },
    };
    if status.is_server_error() {
        if let Some(trace) = &ids.trace_id {
            problem.insert(names::TRACE_ID.into(), trace.clone().into());
        }
        if let Some(crash) = &ids.crash_id {
            problem.insert(names::ERROR_ID.into(), crash.clone().into());
        }
    }
    let bytes = serde_json::to_vec(&Value::Object(problem)).unwrap_or_default();
    let mut res = head.set_body(BoxBody::new(Replaced { bytes: Some(bytes.into()), _old: body }));
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.remove(CONTENT_LENGTH);
    if status.is_server_error() {
        for (name, id) in [(TRACE_ID_HEADER, &ids.trace_id), (CRASH_ID_HEADER, &ids.crash_id)] {
            if let Some(value) = id.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
    }
    res
}

/// The problem of a bare status, in the form [`ApiError`] gives its own.
fn from_status(status: StatusCode, detail: String) -> Map<String, Value> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = reason.to_ascii_lowercase().replace(' ', "-");
    let mut map = Map::new();
    map.insert("type".into(), format!("urn:mapcast:problem:{code}").into());
    map.insert("title".into(), reason.into());
    map.insert("status".into(), status.as_u16().into());
    map.insert("detail".into(), detail.into());
    map
}

/// What a framework error (not made by this crate) may tell the client: its
/// status's reason only, since its text names Rust internals.
fn framework_detail(res: &HttpResponse<BoxBody>) -> String {
    if let Some(ours) = res.error().and_then(|e| e.as_error::<ApiError>()) {
        return ours.to_string();
    }
    let status = res.status();
    format!(
        "the request was refused: {}",
        status.canonical_reason().unwrap_or("error").to_ascii_lowercase()
    )
}

/// A small body as JSON; the body is read from, never dropped here, so
/// whatever it holds (an unread request body) lives as long as the answer.
async fn read_small(body: &mut BoxBody) -> Option<Value> {
    let mut buf = Vec::new();
    loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_next(cx)).await {
            Some(Ok(chunk)) => {
                if (buf.len() + chunk.len()) as u64 > MAX_PROBLEM_BYTES {
                    return None;
                }
                buf.extend_from_slice(&chunk);
            }
            Some(Err(_)) => return None,
            None => break,
        }
    }
    serde_json::from_slice(&buf).ok()
}

/// A new body that keeps the one it replaced until the answer is sent.
struct Replaced {
    bytes: Option<bytes::Bytes>,
    _old: BoxBody,
}

impl MessageBody for Replaced {
    type Error = actix_web::Error;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<bytes::Bytes, Self::Error>>> {
        std::task::Poll::Ready(self.bytes.take().map(Ok))
    }
}

/// An error whose answer is already made (by [`finish`]).
pub fn prepared(res: HttpResponse<BoxBody>) -> actix_web::Error {
    let status = res.status();
    actix_web::error::InternalError::from_response(status, res).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> Asked {
        Asked { head: false, safe: true, if_modified_since: None, if_none_match: false }
    }

    async fn body_of(res: HttpResponse<BoxBody>) -> Value {
        serde_json::from_slice(&actix_web::body::to_bytes(res.into_body()).await.unwrap()).unwrap()
    }

    #[actix_web::test]
    async fn a_plain_framework_error_becomes_a_problem_without_its_text() {
        let plain = HttpResponse::BadRequest()
            .content_type("text/plain")
            .body("Query deserialize error: invalid type: expected u64");
        let res = finish(plain, &asked(), Ids::default()).await;
        assert_eq!(res.headers().get(CONTENT_TYPE).unwrap(), PROBLEM_JSON);
        let body = body_of(res).await;
        assert_eq!(body["type"], "urn:mapcast:problem:bad-request");
        assert_eq!(body["status"], 400);
        assert!(!body.to_string().contains("u64"), "{body}");
    }

    #[actix_web::test]
    async fn a_server_error_names_its_trace_and_crash() {
        let err = ApiError::Internal(anyhow::anyhow!("boom"));
        let ids =
            Ids { trace_id: Some("ab".repeat(16)), crash_id: Some("20261206T000000Z-1".into()) };
        let res = finish(actix_web::ResponseError::error_response(&err), &asked(), ids).await;
        assert_eq!(res.headers().get(TRACE_ID_HEADER).unwrap(), &"ab".repeat(16));
        assert_eq!(res.headers().get(CRASH_ID_HEADER).unwrap(), "20261206T000000Z-1");
        let body = body_of(res).await;
        assert_eq!(body["trace.id"], "ab".repeat(16));
        assert_eq!(body["error.id"], "20261206T000000Z-1");
        assert_eq!(body["type"], "urn:mapcast:problem:internal");
    }

    #[test]
    fn actix_patterns_become_openapi_paths() {
        assert_eq!(openapi_path("/api/v1/topics/{topic:.*}"), "/api/v1/topics/{topic}");
        assert_eq!(openapi_path("/a/{id}/b/{x:[0-9]{2}}"), "/a/{id}/b/{x}");
        assert_eq!(openapi_path("/healthz"), "/healthz");
    }

    #[test]
    fn rust_type_names_become_plain_words() {
        assert_eq!(
            super::super::errors::plain_words("invalid type: string \"x\", expected u64"),
            "invalid type: string \"x\", expected a whole number"
        );
        assert_eq!(
            super::super::errors::plain_words("invalid type: sequence, expected struct MapParams"),
            "invalid type: sequence, expected a set of fields"
        );
    }
}
