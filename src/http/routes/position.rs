//! `GET /api/v1/devices/{id}/position`: one device's latest position and
//! when it was last heard from, for a page or a phone following one device
//! without downloading the map.
//!
//! Its owner, an admin and the device itself may read it; anyone who may
//! read the shared map (the ACL of `map/snapshot`) may read a public
//! device's, name included, unless the map hides device ids behind public
//! map ids (`map.public_ids`). Anyone else gets 404, as if the device did
//! not exist.

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::time::format_rfc3339;
use crate::domain::{DeviceKind, Position, Visibility};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::state::AppState;

use super::map::may_read_map;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_position);
}

/// A GeoJSON Feature: the device's latest fix.
#[derive(Debug, Serialize, ToSchema)]
pub struct PositionView {
    /// Always `Feature`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The device id.
    id: String,
    /// The device's name, as its owner set it.
    name: String,
    /// A GeoJSON Point: `[lon, lat]` or `[lon, lat, alt]`.
    #[schema(value_type = Object)]
    geometry: serde_json::Value,
    properties: PositionProperties,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PositionProperties {
    /// When the fix was taken (RFC 3339).
    ts: String,
    /// When the server last heard from the device: when it received this fix (RFC 3339).
    last_seen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    battery: Option<f64>,
    /// `car` or `phone`.
    #[schema(value_type = String)]
    kind: DeviceKind,
}

impl PositionView {
    fn new(id: String, name: String, kind: DeviceKind, p: &Position) -> Self {
        let l = &p.location;
        let mut coordinates = vec![l.lon, l.lat];
        coordinates.extend(l.alt);
        Self {
            kind: "Feature",
            id,
            name,
            geometry: serde_json::json!({"type": "Point", "coordinates": coordinates}),
            properties: PositionProperties {
                ts: format_rfc3339(l.ts_ms),
                last_seen: format_rfc3339(p.received_at_ms),
                speed: l.speed,
                heading: l.heading,
                accuracy: l.accuracy,
                battery: l.battery,
                kind: l.kind.unwrap_or(kind),
            },
        }
    }
}

/// A device's latest position and last-seen time.
#[utoipa::path(
    tag = "map",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The latest position", body = PositionView, content_type = "application/geo+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 404, description = "No such device visible to the caller, or no position yet", content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/devices/{id}/position")]
#[tracing::instrument(skip_all, fields(device.id = %id))]
async fn get_position(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = state.identities.device(&id).await?.ok_or(ApiError::NotFound)?;
    let who = &caller.identity;
    let own = who.is_admin()
        || who.user_id.as_deref() == Some(device.owner_id.as_str())
        || who.device_id.as_deref() == Some(device.id.as_str());
    // What the shared map shows, under the same ACL: a public device, by
    // its id, to whoever may read the map.
    let shared = device.visibility == Visibility::Public
        && state.map_ids.is_none()
        && may_read_map(&state, &caller).is_ok();
    if !own && !shared {
        return Err(ApiError::NotFound);
    }
    let positions =
        state.store.latest_positions_of(vec![device.id.clone()]).await.map_err(|e| {
            tracing::warn!({ crate::telemetry::names::ERROR_MESSAGE } = %e, "position not read");
            ApiError::Unavailable("the database is unavailable".into())
        })?;
    let (_, position) = positions.first().ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("application/geo+json")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .json(PositionView::new(device.id, device.name, device.kind, position)))
}
