//! The actix-web adapter: REST resources over the broker and the store.
//! Handlers translate HTTP to domain calls through [`AppState`]; they own no
//! shared state.

pub mod errors;
mod routes;
pub mod state;

use std::net::TcpListener;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, web};
use tracing::Instrument;
use tracing::field::Empty;

pub use errors::ApiError;
pub use state::AppState;

use crate::telemetry::names;

/// Seconds actix waits for in-flight requests when stopping gracefully.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// The HTTP server on an already bound listener, not yet polled: the caller
/// spawns it and stops it through `Server::handle()`.
pub fn build(listener: TcpListener, state: AppState, workers: usize) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = actix_web::HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::JsonConfig::default().error_handler(|e, _| errors::extractor_error(e)))
            .app_data(web::QueryConfig::default().error_handler(|e, _| errors::extractor_error(e)))
            .app_data(web::PathConfig::default().error_handler(|e, _| errors::extractor_error(e)))
            .wrap(from_fn(trace_request))
            .configure(routes::configure)
            .default_service(web::to(|| async { Err::<&str, _>(ApiError::NotFound) }))
    })
    .workers(workers)
    // Signals are handled once, in `shutdown`; stopping goes through the handle.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    .listen(listener)?
    .run();
    Ok(server)
}

/// Every request runs in a span; one line per request with route, status and duration.
async fn trace_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let span = tracing::info_span!(
        "http.request",
        { names::HTTP_REQUEST_METHOD } = %req.method(),
        { names::URL_PATH } = req.path(),
        { names::HTTP_ROUTE } = Empty,
        { names::HTTP_RESPONSE_STATUS_CODE } = Empty,
        { names::EVENT_DURATION } = Empty,
    );
    let start = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let duration_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);

    let (status, route) = match &result {
        Ok(res) => (res.status(), res.request().match_pattern()),
        Err(e) => (e.as_response_error().status_code(), None),
    };
    span.record(names::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
    span.record(names::EVENT_DURATION, duration_ns);
    if let Some(route) = &route {
        span.record(names::HTTP_ROUTE, route.as_str());
    }
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
