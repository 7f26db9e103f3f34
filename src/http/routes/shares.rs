//! Share links: an owner (or an admin) lets anyone holding a link see one
//! device's position until a time it chooses, and can revoke the link.
//!
//! `POST /api/v1/devices/{id}/shares` answers with the token, once; the
//! link is `/s/{token}`. The token is 256 random bits, stored as its
//! SHA-256 only, and kept out of the request log (see `http::trace_request`).
//! Whoever opens the link reads only `GET /api/v1/shared/position`, with the
//! token in the `X-Share-Token` header: that device's latest position,
//! nothing else, and a 410 once the link is over.

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::devices::owned_device;
use crate::domain::time::{format_rfc3339, millis};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::payload::DeferredJson;
use crate::http::state::AppState;
use crate::identities::token_id;
use crate::store::ShareRecord;

/// The longest a link may live: 30 days.
pub const MAX_SHARE_SECS: u64 = 30 * 24 * 3600;
/// Live links one device may have at once.
const MAX_LIVE_PER_DEVICE: i64 = 50;
/// Ended links are kept this long (to list them), then purged.
const KEEP_ENDED_MS: i64 = 7 * 24 * 3600 * 1000;
/// The header carrying the token to the share-scoped endpoint.
pub const SHARE_TOKEN_HEADER: &str = "X-Share-Token";

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_share).service(list_shares).service(revoke_share).service(shared_position);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewShare {
    /// How long the link works, in seconds: 1 to 2,592,000 (30 days).
    #[schema(example = 3600)]
    expires_in_secs: u64,
}

/// A new link: the only time its token is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedShare {
    /// Names the link to list and revoke it.
    id: String,
    /// The secret part of the link.
    token: String,
    /// The link, relative to this server: `/s/{token}`.
    url: String,
    /// RFC 3339.
    expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ShareView {
    id: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    expires_at: String,
    /// RFC 3339, when it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// Whether the link works now.
    live: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ShareList {
    items: Vec<ShareView>,
}

/// The shared device's latest position.
#[derive(Serialize, ToSchema)]
pub struct SharedPosition {
    name: String,
    /// `car` or `phone`.
    kind: String,
    /// RFC 3339: when the link stops working.
    expires_at: String,
    /// `null` until the device has reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<SharedFix>,
}

#[derive(Serialize, ToSchema)]
pub struct SharedFix {
    lon: f64,
    lat: f64,
    /// RFC 3339: when the device took the fix.
    ts: String,
    /// RFC 3339: when the server received it.
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    battery: Option<f64>,
}

fn now_ms() -> i64 {
    millis(std::time::SystemTime::now())
}

fn unavailable(e: sqlx::Error) -> ApiError {
    tracing::warn!({ crate::telemetry::names::ERROR_MESSAGE } = %e, "share links not read");
    ApiError::Unavailable("the database is unavailable".into())
}

/// The link `token` opens, if it is live now.
pub(super) async fn live_share(
    state: &AppState,
    token: &str,
) -> Result<Option<ShareRecord>, ApiError> {
    let share = state.store.share_by_token_hash(&token_id(token)).await.map_err(unavailable)?;
    let now = now_ms();
    Ok(share.filter(|s| s.revoked_at.is_none() && s.expires_at > now))
}

/// Create a link to device `id` (its owner or an admin).
#[utoipa::path(
    tag = "shares",
    params(("id" = String, Path, description = "Device id")),
    request_body = NewShare,
    responses(
        (status = 201, description = "The link and its token, shown once", body = CreatedShare),
        (status = 400, description = "Malformed JSON", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user's device", content_type = "application/problem+json"),
        (status = 404, description = "No such device", content_type = "application/problem+json"),
        (status = 422, description = "An expiry out of range", content_type = "application/problem+json"),
        (status = 429, description = "The device has as many live links as allowed", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/devices/{id}/shares")]
#[tracing::instrument(skip_all, fields(device.id = %id))]
async fn create_share(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: DeferredJson<NewShare>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &caller, &id).await?;
    let secs = body.read().await?.expires_in_secs;
    if !(1..=MAX_SHARE_SECS).contains(&secs) {
        return Err(ApiError::UnprocessableEntity(format!(
            "expires_in_secs must be between 1 and {MAX_SHARE_SECS}, got {secs}"
        )));
    }
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let mut id_bytes = [0u8; 8];
    OsRng.fill_bytes(&mut id_bytes);
    let now = now_ms();
    let expires_at = now + i64::try_from(secs * 1000).expect("at most 30 days");
    let record = ShareRecord {
        id: crate::domain::to_hex(&id_bytes),
        token_hash: token_id(&token),
        device_id: device.id,
        created_by: caller.require_user()?.to_owned(),
        expires_at,
        revoked_at: None,
        created_at: now,
    };
    let share_id = record.id.clone();
    let stored = state
        .store
        .insert_share(record, now, now - KEEP_ENDED_MS, MAX_LIVE_PER_DEVICE)
        .await
        .map_err(unavailable)?;
    if !stored {
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "this device has {MAX_LIVE_PER_DEVICE} live links; revoke one or let it expire"
            ),
            retry_after_secs: 60,
        });
    }
    tracing::info!(share.id = %share_id, "share link created");
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(CreatedShare {
        url: format!("/s/{token}"),
        id: share_id,
        token,
        expires_at: format_rfc3339(expires_at),
    }))
}

/// The links to device `id`, newest first (its owner or an admin).
#[utoipa::path(
    tag = "shares",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Its links, live and recently ended", body = ShareList),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user's device", content_type = "application/problem+json"),
        (status = 404, description = "No such device", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/devices/{id}/shares")]
#[tracing::instrument(skip_all, fields(device.id = %id))]
async fn list_shares(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &caller, &id).await?;
    let now = now_ms();
    let items = state
        .store
        .shares_of(&device.id)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|s| ShareView {
            live: s.revoked_at.is_none() && s.expires_at > now,
            id: s.id,
            created_at: format_rfc3339(s.created_at),
            expires_at: format_rfc3339(s.expires_at),
            revoked_at: s.revoked_at.map(format_rfc3339),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ShareList { items }))
}

/// Revoke a link: it stops working at once (its owner or an admin).
#[utoipa::path(
    tag = "shares",
    params(
        ("id" = String, Path, description = "Device id"),
        ("share_id" = String, Path, description = "The link's id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user's device", content_type = "application/problem+json"),
        (status = 404, description = "No such device, or no such live link", content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/devices/{id}/shares/{share_id}")]
#[tracing::instrument(skip_all, fields(device.id = %path.0, share.id = %path.1))]
async fn revoke_share(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, share_id) = path.into_inner();
    let device = owned_device(&state, &caller, &id).await?;
    if state.store.revoke_share(&device.id, &share_id, now_ms()).await.map_err(unavailable)? {
        tracing::info!("share link revoked");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}

/// The shared device's latest position, for whoever holds a live link
/// (token in `X-Share-Token`, never in the URL of this request).
#[utoipa::path(
    tag = "shares",
    params(("X-Share-Token" = String, Header, description = "The link's token")),
    responses(
        (status = 200, description = "The device's name, kind and latest position", body = SharedPosition),
        (status = 401, description = "No `X-Share-Token`", content_type = "application/problem+json"),
        (status = 410, description = "The link expired, was revoked or never existed", content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/shared/position")]
#[tracing::instrument(skip_all)]
async fn shared_position(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let token = req
        .headers()
        .get(SHARE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(format!("send the link's token as {SHARE_TOKEN_HEADER}"))
        })?;
    let gone = || ApiError::Gone("this link has expired or was revoked".into());
    let share = live_share(&state, token).await?.ok_or_else(gone)?;
    let device = state.identities.device(&share.device_id).await?.ok_or_else(gone)?;
    let position = state
        .store
        .latest_positions_of(vec![device.id.clone()])
        .await
        .map_err(unavailable)?
        .into_iter()
        .next()
        .map(|(_, p)| SharedFix {
            lon: p.location.lon,
            lat: p.location.lat,
            ts: format_rfc3339(p.location.ts_ms),
            received_at: format_rfc3339(p.received_at_ms),
            speed: p.location.speed,
            heading: p.location.heading,
            battery: p.location.battery,
        });
    Ok(HttpResponse::Ok().insert_header(CacheControl(vec![CacheDirective::NoStore])).json(
        SharedPosition {
            name: device.name,
            kind: device.kind.to_string(),
            expires_at: format_rfc3339(share.expires_at),
            position,
        },
    ))
}
