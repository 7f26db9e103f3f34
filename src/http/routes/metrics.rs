//! `GET /metrics`: Prometheus text exposition of the broker's counters and
//! the process metrics (names in `telemetry::names::metrics`).

use actix_web::{HttpResponse, get, web};

use crate::http::state::AppState;
use crate::telemetry::metrics;

/// The Prometheus text format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(metrics_text);
}

/// Prometheus text exposition of the broker and process metrics.
#[utoipa::path(
    tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"))
)]
#[get("/metrics")]
async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    // Brings the gauge of lockouts in force up to date (expired ones go).
    state.identities.sign_in_guard().active_lockouts();
    let mut body = metrics::global().render_prometheus(Some(state.broker.stats()));
    state.flags.render_prometheus(&mut body);
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(body)
}
