//! `/healthz`: the process serves HTTP. `/readyz`: it can do its job — the
//! database answers and takes writes, migrations are applied and the broker
//! core runs.

use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use serde_json::json;

use crate::domain::StoreError;
use crate::http::errors::ApiError;
use crate::http::state::AppState;

/// Readiness must answer quickly even when the database hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(healthz).service(readyz);
}

/// The process is alive and serves HTTP.
#[utoipa::path(tag = "meta", responses((status = 200, description = "`{\"status\":\"ok\"}`")))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The process can do its job: database reachable, migrations applied,
/// broker running, not shutting down.
#[utoipa::path(
    tag = "meta",
    responses(
        (status = 200, description = "Ready (`status: ready`), or serving with a part failing (`status: degraded`, `degraded` says which: `map` while map builds fail)"),
        (status = 503, description = "Not ready; the detail says why", content_type = "application/problem+json"),
    )
)]
#[get("/readyz")]
#[tracing::instrument(skip_all)]
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.stopping.is_cancelled() {
        return Err(ApiError::Unavailable("the broker is shutting down".into()));
    }
    if !state.broker.is_running() {
        return Err(ApiError::Unavailable("the broker core has stopped".into()));
    }
    let store = &state.store;
    match tokio::time::timeout(CHECK_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error.message = %e, "readiness: database unreachable");
            return Err(ApiError::Unavailable("the database is unreachable".into()));
        }
        Err(_) => {
            return Err(ApiError::Unavailable("the database did not answer in time".into()));
        }
    }
    if !tokio::time::timeout(CHECK_TIMEOUT, store.migrations_applied()).await.unwrap_or(false) {
        return Err(ApiError::Unavailable("database migrations are not applied".into()));
    }
    // Reads may work while writes fail (a full disk): durable publishes are
    // refused then, so the process cannot do its job.
    match store.write_health().check() {
        Ok(()) => {}
        Err(StoreError::Full) => {
            return Err(ApiError::Unavailable("the database refuses writes: disk full".into()));
        }
        Err(_) => return Err(ApiError::Unavailable("database writes are failing".into())),
    }
    if state.fabric.as_ref().is_some_and(|f| !f.is_up()) {
        return Err(ApiError::Unavailable(
            "Redis is unreachable: publishes do not reach the other instances".into(),
        ));
    }
    let uptime_secs = state.started_at.elapsed().as_secs();
    // The broker and the API still serve while map builds fail, so traffic
    // stays; the map they serve is stale, which monitoring must see.
    if let Some(reason) = state.map.failing() {
        return Ok(HttpResponse::Ok().json(json!({
            "status": "degraded",
            "degraded": { "map": format!("the latest map build failed ({reason}); the map served is stale") },
            "uptime_secs": uptime_secs,
        })));
    }
    Ok(HttpResponse::Ok().json(json!({ "status": "ready", "uptime_secs": uptime_secs })))
}
