//! The actix-web adapter: REST resources over the broker and the store.
//! Handlers translate HTTP to domain calls through [`AppState`]; they own no
//! shared state.

pub mod auth;
mod conformance;
mod cors;
mod deadline;
pub mod errors;
mod openapi;
mod payload;
mod proxied;
mod routes;
pub mod state;
mod streams;
mod target;
pub mod tickets;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use actix_http::{HttpService, Protocol};
use actix_rt::net::TcpStream;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{AppConfig, Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, web};
use futures::FutureExt as _;
use tracing::Instrument;
use tracing::field::Empty;
use utoipa_actix_web::AppExt;

pub use errors::ApiError;
pub use routes::PageSettings;
/// Request bodies checked without a server, for `fuzz/` (not an API).
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub use routes::fuzzing;
pub use state::AppState;

use crate::config::HttpSettings;
use crate::proxy_protocol::ProxyProtocol;
use crate::telemetry::{crash, metrics, names, otel};

/// Seconds actix waits for in-flight requests when stopping gracefully.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// The HTTP server on an already bound listener, not yet polled: the caller
/// spawns it and stops it through `Server::handle()`.
/// With `tls`, the listener speaks HTTPS.
pub fn build(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    state: AppState,
    settings: &HttpSettings,
) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let body_timeout =
        web::Data::new(deadline::BodyTimeout(Duration::from_millis(settings.body_timeout_ms)));
    let target_limit =
        web::Data::new(target::TargetLimit::for_topics(state.broker.limits().max_topic_len));
    let tickets = web::Data::new(tickets::SseTickets::default());
    let streams = web::Data::new(streams::SseStreams::new(
        settings.max_sse_streams_per_user,
        settings.max_sse_streams_per_address,
    ));
    let cors_origins = web::Data::new(cors::CorsOrigins::new(&settings.cors_origins));
    let document = openapi::document();
    let routes = web::Data::new(conformance::RouteTable::from_document(&document));
    let openapi = web::Data::new(openapi::OpenApiJson(document.to_string()));
    let app = move || {
        App::new()
            .app_data(state.clone())
            .app_data(tickets.clone())
            .app_data(streams.clone())
            .app_data(openapi.clone())
            .app_data(cors_origins.clone())
            .app_data(routes.clone())
            .app_data(target_limit.clone())
            .app_data(body_timeout.clone())
            .app_data(web::JsonConfig::default().error_handler(|e, _| errors::json_error(e)))
            .app_data(web::QueryConfig::default().error_handler(|e, _| errors::query_error(e)))
            .app_data(web::PathConfig::default().error_handler(|e, _| errors::path_error(e)))
            .wrap(from_fn(deadline::limit_body))
            .wrap(from_fn(target::require_utf8))
            .wrap(from_fn(cors::cors))
            .wrap(from_fn(trace_request))
            .into_utoipa_app()
            .configure(routes::configure)
            .default_service(web::to(|req, routes| async move {
                Err::<&str, _>(conformance::unrouted(req, routes).await)
            }))
            .into_app()
    };
    let builder = actix_server::Server::build()
        .workers(settings.workers)
        .max_concurrent_connections(settings.max_connections.div_ceil(settings.workers))
        // Signals are handled once, in `shutdown`; stopping goes through the handle.
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
    let local_addr = listener.local_addr()?;
    let head_timeout = Duration::from_millis(settings.head_timeout_ms);
    let shutdown = builder.graceful_shutdown_signal();
    // Each worker's HTTP/1 service over whatever stream the listener's chain
    // hands it: what actix-web's `HttpServer` assembles, assembled here so a
    // connection can pass through the PROXY protocol step first. A macro:
    // the service's type is unnameable and differs per stream type.
    macro_rules! http_service {
        () => {{
            let shutdown = shutdown.clone();
            HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = shutdown.clone();
                    async move { signal.notified().await }
                })
                .client_request_timeout(head_timeout)
                // actix-web's default: a second for a client to take the end of
                // an answer before its socket closes.
                .client_disconnect_timeout(Duration::from_secs(1))
                // A client that closes its side is gone: an SSE stream (and its broker
                // session) ends at once instead of at its next heartbeat's failed write.
                .h1_allow_half_closed(false)
                .local_addr(local_addr)
                .finish(map_config(
                    app().into_factory().map_err(|e: actix_web::Error| e.error_response()),
                    |_| AppConfig::default(),
                ))
        }};
    }
    let proxy = ProxyProtocol::new("http", settings.proxy_protocol, &settings.proxy_trusted);
    let builder = match (tls, proxy) {
        (None, None) => builder.listen("mapcast-http", listener, move || http_service!().tcp())?,
        (None, Some(proxy)) => builder.listen("mapcast-http", listener, move || {
            let proxy = proxy.clone();
            fn_service(move |mut io: TcpStream| {
                let proxy = proxy.clone();
                async move {
                    let client = proxied::accept(&mut io, &proxy).await.ok_or(())?;
                    Ok::<_, ()>((io, Protocol::Http1, Some(client)))
                }
            })
            .and_then(http_service!().map_err(|_| ()))
        })?,
        (Some(config), None) => builder.listen("mapcast-https", listener, move || {
            http_service!().rustls_0_23((*config).clone())
        })?,
        (Some(config), Some(proxy)) => {
            let mut config = (*config).clone();
            // As actix-http's own rustls service does: HTTP/1.1 by ALPN.
            config.alpn_protocols.insert(0, b"http/1.1".to_vec());
            builder.listen("mapcast-https", listener, move || {
                let proxy = proxy.clone();
                fn_service(move |mut io: TcpStream| {
                    let proxy = proxy.clone();
                    async move {
                        let client = proxied::accept(&mut io, &proxy).await.ok_or(())?;
                        Ok::<_, ()>(proxied::ProxiedStream { io, client: Some(client) })
                    }
                })
                .and_then(
                    actix_tls::accept::rustls_0_23::Acceptor::new(config.clone())
                        .map_err(|_| ())
                        .map_init_err(|_| ()),
                )
                .and_then(fn_service(
                    |tls: actix_tls::accept::rustls_0_23::TlsStream<proxied::ProxiedStream>| async {
                        let client = tls.get_ref().0.client;
                        Ok::<_, ()>((tls, Protocol::Http1, client))
                    },
                ))
                .and_then(http_service!().map_err(|_| ()))
            })?
        }
    };
    Ok(builder.run())
}

/// The path as logged: a share link's token or a phone's secret in the URL
/// opens a device to whoever reads it, so neither reaches a log line or a
/// trace.
fn logged_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.starts_with("/s/") { "/s/{token}".into() } else { routes::phones::loggable_path(path) }
}

/// Every request runs in a span; one line per request with route, status and
/// duration, and its latency in the route's histogram. A panicking handler
/// costs only its request: the crash reporter has recorded it, the client
/// gets a 500 problem naming the report. Every answer goes out through
/// [`conformance::finish`].
async fn trace_request(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // The route is known before the handler runs, so a crash report has it.
    let pattern = req.match_pattern();
    let span = tracing::info_span!(
        "http.request",
        { names::HTTP_REQUEST_METHOD } = %req.method(),
        { names::URL_PATH } = &*logged_path(req.path()),
        { names::HTTP_ROUTE } = pattern.as_deref(),
        // The peer, or the client a trusted balancer's PROXY header named.
        { names::CLIENT_ADDRESS } = req.peer_addr().map(tracing::field::display),
        { names::HTTP_RESPONSE_STATUS_CODE } = Empty,
        { names::EVENT_DURATION } = Empty,
        { names::TRACE_ID } = Empty,
        { names::FEATURE_FLAG_KEY } = Empty,
        { names::FEATURE_FLAG_VARIANT } = Empty,
    );
    // A caller's `traceparent` makes this request part of its trace.
    if let Some(traceparent) = req.headers().get(otel::TRACEPARENT).and_then(|v| v.to_str().ok()) {
        otel::continue_trace(&span, traceparent);
    }
    let asked = conformance::Asked::take(&mut req);
    let start = Instant::now();
    let mut crash_id = None;
    let result =
        match AssertUnwindSafe(next.call(req).instrument(span.clone())).catch_unwind().await {
            Ok(result) => result.map(ServiceResponse::map_into_boxed_body),
            // actix renders the error as the response (a 500 problem); the
            // request is gone with the unwound handler, so no response of our own.
            Err(_) => {
                // The hook ran on this thread just before the unwind.
                crash_id = crash::take_last_crash_id();
                Err(ApiError::Internal(anyhow::anyhow!("the request handler panicked")).into())
            }
        };
    let ids = |status: actix_web::http::StatusCode| conformance::Ids {
        trace_id: status.is_server_error().then(|| otel::trace_id_of(&span)).flatten(),
        crash_id: crash_id.clone(),
    };
    // Handler errors are already answers; errors from the layers in between
    // are rendered here so they get the same treatment.
    let result = match result {
        Ok(res) => {
            let ids = ids(res.status());
            let (http_req, res) = res.into_parts();
            Ok(ServiceResponse::new(http_req, conformance::finish(res, &asked, ids).await))
        }
        Err(e) => {
            let res = e.error_response();
            let ids = ids(res.status());
            Err(conformance::prepared(conformance::finish(res, &asked, ids).await))
        }
    };
    let elapsed = start.elapsed();
    let duration_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);

    let (status, route) = match &result {
        Ok(res) => (res.status(), pattern.or_else(|| res.request().match_pattern())),
        Err(e) => (e.as_response_error().status_code(), pattern),
    };
    span.record(names::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
    span.record(names::EVENT_DURATION, duration_ns);
    if let Some(route) = &route {
        span.record(names::HTTP_ROUTE, route.as_str());
    }
    // A flagged handler left its evaluation: the request line names the
    // variant, so latency and errors split by variant.
    if let Ok(res) = &result
        && let Some(flag) = res.request().extensions().get::<crate::flags::Evaluation>()
    {
        span.record(names::FEATURE_FLAG_KEY, &*flag.key);
        span.record(names::FEATURE_FLAG_VARIANT, &*flag.variant);
    }
    metrics::global()
        .observe_http(route.as_deref().unwrap_or(metrics::UNMATCHED_ROUTE), elapsed.as_secs_f64());
    let _entered = span.enter();
    let probe = matches!(route.as_deref(), Some("/healthz" | "/readyz"));
    if probe {
        // Probes arrive every few seconds; keep them out of the default output.
        tracing::debug!("request completed");
    } else if status.is_server_error() {
        tracing::error!("request failed");
    } else {
        tracing::info!("request completed");
    }
    result
}
