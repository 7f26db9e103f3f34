//! `POST /api/v1/admin/debug/panic`: panics inside the request, to check
//! crash reports end to end. Only with `debug.panic_endpoint = true`, and
//! only for admins; otherwise the route does not exist (404).

use actix_web::{HttpResponse, post};

use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::telemetry::crash;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(panic);
}

/// Panic inside the request, to check crash reports (admins only, and only
/// with `debug.panic_endpoint = true`; otherwise 404).
#[utoipa::path(
    tag = "meta",
    responses(
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
        (status = 404, description = "`debug.panic_endpoint` is off", content_type = "application/problem+json"),
        (status = 500, description = "The panic, as a problem", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/admin/debug/panic")]
#[tracing::instrument(skip_all)]
async fn panic(caller: Caller) -> Result<HttpResponse, ApiError> {
    if !crash::debug_triggers_enabled() {
        return Err(ApiError::NotFound);
    }
    caller.require_admin()?;
    tracing::warn!("panicking on request (debug.panic_endpoint)");
    panic!("debug panic requested through POST /api/v1/admin/debug/panic");
}
