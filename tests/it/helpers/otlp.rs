//! A local OTLP/HTTP receiver (JSON encoding): it keeps every span posted
//! to `/v1/traces`, flattened to (name, trace id, span id, parent span id),
//! every metric data point posted to `/v1/metrics`, flattened to (name,
//! attributes, value), and records anything that is not a well-formed export.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
}

/// One data point of a sum or gauge, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedPoint {
    pub name: String,
    /// `key=value` pairs, sorted.
    pub attributes: Vec<String>,
    pub value: f64,
    /// Whether it came from a monotonic sum (a counter).
    pub monotonic: bool,
}

#[derive(Default)]
struct State {
    spans: Vec<ExportedSpan>,
    points: Vec<ExportedPoint>,
    violations: Vec<String>,
    /// Every request body as received, for tests that grep what was sent.
    bodies: Vec<Bytes>,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
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
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.state.lock().unwrap().spans.clone()
    }

    pub fn points(&self) -> Vec<ExportedPoint> {
        self.state.lock().unwrap().points.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Every export body received so far, byte for byte.
    pub fn raw_bodies(&self) -> Vec<Bytes> {
        self.state.lock().unwrap().bodies.clone()
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let parsed = serde_json::from_slice::<Value>(&body);
    let mut s = state.lock().unwrap();
    s.bodies.push(body.clone());
    match parsed {
        Ok(export) if path == "/v1/traces" && content_type.starts_with("application/json") => {
            s.spans.extend(spans(&export));
        }
        Ok(export)
            if path == "/v1/metrics"
                && content_type.starts_with("application/json")
                && export["resourceMetrics"].is_array() =>
        {
            s.points.extend(points(&export));
        }
        _ => s.violations.push(format!("{path} ({content_type}): not an OTLP/JSON export")),
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap())
}

fn spans(export: &Value) -> Vec<ExportedSpan> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    for rs in export["resourceSpans"].as_array().into_iter().flatten() {
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                out.push(ExportedSpan {
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                });
            }
        }
    }
    out
}

fn points(export: &Value) -> Vec<ExportedPoint> {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for rm in list(&export["resourceMetrics"]) {
        for sm in list(&rm["scopeMetrics"]) {
            for metric in list(&sm["metrics"]) {
                let name = metric["name"].as_str().unwrap_or_default().to_owned();
                let (data, monotonic) = if metric["sum"].is_object() {
                    (&metric["sum"], metric["sum"]["isMonotonic"] == true)
                } else {
                    (&metric["gauge"], false)
                };
                for dp in list(&data["dataPoints"]) {
                    let mut attributes: Vec<String> = list(&dp["attributes"])
                        .iter()
                        .map(|a| {
                            format!("{}={}", text(&a["key"]), text(&a["value"]["stringValue"]))
                        })
                        .collect();
                    attributes.sort();
                    let Some(value) = number(&dp["asInt"]).or_else(|| number(&dp["asDouble"]))
                    else {
                        continue;
                    };
                    out.push(ExportedPoint { name: name.clone(), attributes, value, monotonic });
                }
            }
        }
    }
    out
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// OTLP/JSON writes 64-bit integers as strings; accept numbers too.
fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}
