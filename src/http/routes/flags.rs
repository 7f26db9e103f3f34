//! `/api/v1/flags`: feature flags for admins. A change is stored, live on
//! this instance at once and on the others within `flags.refresh_ms`.

use actix_web::{HttpResponse, get, put, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::flags::{Flag, FlagError, FlagKey, FlagSpec};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::payload::DeferredJson;
use crate::http::state::AppState;
use crate::telemetry::{crash, names};

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_flags).service(get_flag).service(put_flag);
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlagList {
    items: Vec<Flag>,
}

fn key(raw: &str) -> Result<FlagKey, ApiError> {
    FlagKey::parse(raw).map_err(|FlagError::Invalid(why)| ApiError::BadRequest(why))
}

fn database(e: sqlx::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::from(e).context("feature flags"))
}

/// Every flag with its canary state (admins only).
#[utoipa::path(
    tag = "flags",
    responses(
        (status = 200, description = "Every flag, by key", body = FlagList),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/flags")]
#[tracing::instrument(skip_all)]
async fn list_flags(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let items = state.flags.list().await.map_err(database)?;
    Ok(HttpResponse::Ok().json(FlagList { items }))
}

/// One flag with its canary state (admins only).
#[utoipa::path(
    tag = "flags",
    params(("key" = String, Path, description = "Flag key, e.g. `map.clustering`")),
    responses(
        (status = 200, description = "The flag", body = Flag),
        (status = 400, description = "Malformed key", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
        (status = 404, description = "No such flag", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/flags/{key}")]
#[tracing::instrument(skip_all, fields({ names::FEATURE_FLAG_KEY } = %raw))]
async fn get_flag(
    state: web::Data<AppState>,
    caller: Caller,
    raw: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let key = key(&raw)?;
    let flag = state.flags.get(&key).await.map_err(database)?.ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(flag))
}

/// Create or replace a flag (admins only). Setting a flag restarts its
/// canary: state `active`, no failed checks.
#[utoipa::path(
    tag = "flags",
    params(("key" = String, Path, description = "Flag key: 1-64 lowercase letters, digits, `.`, `_` or `-`")),
    request_body = FlagSpec,
    responses(
        (status = 200, description = "The flag as stored", body = Flag),
        (status = 400, description = "Malformed key or JSON", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", content_type = "application/problem+json"),
        (status = 422, description = "A rule is broken (rollout over 100, a reserved variant, ...)", content_type = "application/problem+json"),
    )
)]
#[put("/api/v1/flags/{key}")]
#[tracing::instrument(skip_all, fields({ names::FEATURE_FLAG_KEY } = %raw))]
async fn put_flag(
    state: web::Data<AppState>,
    caller: Caller,
    raw: web::Path<String>,
    body: DeferredJson<FlagSpec>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let key = key(&raw)?;
    let spec = body.read().await?;
    spec.validate(crash::debug_triggers_enabled())
        .map_err(|FlagError::Invalid(why)| ApiError::UnprocessableEntity(why))?;
    let flag = state.flags.put(&key, &spec).await.map_err(database)?;
    tracing::info!(enabled = flag.spec.enabled, rollout = flag.spec.rollout, "feature flag set");
    Ok(HttpResponse::Ok().json(flag))
}
