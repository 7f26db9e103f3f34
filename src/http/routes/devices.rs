//! `/api/v1/devices`: a user provisions its cars and phones (the secret for
//! MQTT is shown once), lists and reads them; admins see and delete any.

use actix_web::http::header::LOCATION;
use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::broker::Revocation;
use crate::domain::Principal;
use crate::domain::time::format_rfc3339;
use crate::domain::{DeviceId, DeviceKind, DeviceName, MapIds, Visibility};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::payload::DeferredJson;
use crate::http::state::AppState;
use crate::identities::Device;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_device)
        .service(list_devices)
        .service(get_device)
        .service(patch_device)
        .service(delete_device)
        .service(rotate_secret);
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewDevice {
    /// 1–100 characters.
    #[schema(example = "Golf", min_length = 1, max_length = 100)]
    name: String,
    /// `car` or `phone`.
    #[schema(example = "car", pattern = "^(car|phone)$")]
    kind: String,
    /// `public` (on the shared map) or `private` (its owner and admins
    /// only). Default: `map.default_visibility`.
    #[schema(example = "private", pattern = "^(public|private)$")]
    visibility: Option<String>,
}

impl NewDevice {
    pub(super) fn parse(self) -> Result<(DeviceName, DeviceKind, Option<Visibility>), ApiError> {
        let visibility = self.visibility.map(|v| v.parse()).transpose()?;
        Ok((DeviceName::parse(self.name)?, self.kind.parse()?, visibility))
    }
}

/// A change to a device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// `public` or `private`.
    #[schema(example = "public", pattern = "^(public|private)$")]
    visibility: String,
}

/// The answer to a creation: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedDevice {
    /// The device id: its MQTT user name.
    id: String,
    /// Its MQTT password, shown this once.
    secret: String,
    name: String,
    /// `car` or `phone`.
    #[schema(value_type = String)]
    kind: DeviceKind,
    /// `public` or `private`.
    #[schema(value_type = String)]
    visibility: Visibility,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    id: String,
    name: String,
    /// `car` or `phone`.
    #[schema(value_type = String)]
    kind: DeviceKind,
    /// `public` (on the shared map) or `private`.
    #[schema(value_type = String)]
    visibility: Visibility,
    /// Its feature id on the shared map, when the map names devices by
    /// public map ids (`map.public_ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    map_id: Option<String>,
    owner_id: String,
    /// RFC 3339.
    created_at: String,
}

impl DeviceView {
    fn new(d: Device, map_ids: Option<&MapIds>) -> Self {
        let map_id = map_ids
            .zip(DeviceId::parse(d.id.as_str()).ok())
            .map(|(ids, id)| ids.of(&id).as_str().to_owned());
        Self {
            map_id,
            created_at: format_rfc3339(d.created_at),
            id: d.id,
            name: d.name,
            kind: d.kind,
            visibility: d.visibility,
            owner_id: d.owner_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    items: Vec<DeviceView>,
}

/// Provision a car or phone; the answer holds its MQTT secret, once.
#[utoipa::path(
    tag = "identities",
    request_body = NewDevice,
    responses(
        (status = 201, description = "The device and its secret", body = CreatedDevice),
        (status = 400, description = "Malformed JSON", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 422, description = "Wrong fields, an invalid name or kind", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/devices")]
#[tracing::instrument(skip_all)]
async fn create_device(
    state: web::Data<AppState>,
    caller: Caller,
    body: DeferredJson<NewDevice>,
) -> Result<HttpResponse, ApiError> {
    let owner = caller.require_user()?;
    let (name, kind, visibility) = body.read().await?.parse()?;

    let new = state.identities.create_device(owner, name, kind, visibility).await?;

    let d = new.device;
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/api/v1/devices/{}", d.id)))
        .insert_header(("Cache-Control", "no-store"))
        .json(CreatedDevice {
            secret: new.secret.expose().to_owned(),
            id: d.id,
            name: d.name,
            kind: d.kind,
            visibility: d.visibility,
        }))
}

/// Device `id` if the caller owns it or is an admin.
pub(super) async fn owned_device(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Device, ApiError> {
    let user = caller.require_user()?;
    let device = state.identities.device(id).await?.ok_or(ApiError::NotFound)?;
    if device.owner_id != user && !caller.identity.is_admin() {
        return Err(ApiError::Forbidden("this device belongs to another user".into()));
    }
    Ok(device)
}

/// Your devices (an admin: every device).
#[utoipa::path(
    tag = "identities",
    responses(
        (status = 200, description = "Devices, oldest first", body = DeviceList),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/devices")]
#[tracing::instrument(skip_all)]
async fn list_devices(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let user = caller.require_user()?;
    let owner = (!caller.identity.is_admin()).then_some(user);
    let devices = state.identities.devices(owner).await?;
    Ok(HttpResponse::Ok().json(DeviceList {
        items: devices.into_iter().map(|d| DeviceView::new(d, state.map_ids.as_ref())).collect(),
    }))
}

/// One device (its owner or an admin).
#[utoipa::path(
    tag = "identities",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device", body = DeviceView),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user's device", content_type = "application/problem+json"),
        (status = 404, description = "No such device", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/devices/{id}")]
#[tracing::instrument(skip_all, fields(device.id = %id))]
async fn get_device(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &caller, &id).await?;
    Ok(HttpResponse::Ok().json(DeviceView::new(device, state.map_ids.as_ref())))
}

/// Show a device on the shared map or hide it (its owner or an admin);
/// the map follows at its next build.
#[utoipa::path(
    tag = "identities",
    params(("id" = String, Path, description = "Device id")),
    request_body = DevicePatch,
    responses(
        (status = 200, description = "The device as changed", body = DeviceView),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user's device", content_type = "application/problem+json"),
        (status = 404, description = "No such device", content_type = "application/problem+json"),
        (status = 422, description = "An unknown visibility", content_type = "application/problem+json"),
    )
)]
#[patch("/api/v1/devices/{id}")]
#[tracing::instrument(skip_all, fields(device.id = %id))]
async fn patch_device(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<DevicePatch>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &caller, &id).await?;
    let visibility: Visibility = body.into_inner().visibility.parse()?;
    if !state.identities.set_visibility(&id, visibility).await? {
        return Err(ApiError::NotFound);
    }
    let device = Device { visibility, ..device };
    Ok(HttpResponse::Ok().json(DeviceView::new(device, state.map_ids.as_ref())))
}

/// Delete a device (its owner or an admin); its MQTT credentials stop
/// working and its connections are closed.
#[utoipa::path(
    tag = "identities",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user's device", content_type = "application/problem+json"),
        (status = 404, description = "No such device", content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/devices/{id}")]
#[tracing::instrument(skip_all, fields(device.id = %id))]
async fn delete_device(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    owned_device(&state, &caller, &id).await?;
    if state.identities.delete_device(&id).await? {
        state.broker.revoke(Revocation::Principal(Principal::device(&id))).await;
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}

/// A device's new secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The device id: its MQTT user name.
    id: String,
    /// Its new MQTT password.
    secret: String,
}

/// Give a device a new secret (its owner or an admin): the old one stops
/// working and the device's connections are closed.
#[utoipa::path(
    tag = "identities",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The new secret, shown this once", body = RotatedSecret),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user's device", content_type = "application/problem+json"),
        (status = 404, description = "No such device", content_type = "application/problem+json"),
        (status = 503, description = "Server busy hashing secrets; see `Retry-After`", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/devices/{id}/secret")]
#[tracing::instrument(skip_all, fields(device.id = %id))]
async fn rotate_secret(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    owned_device(&state, &caller, &id).await?;
    let secret = state.identities.rotate_device_secret(&id).await?.ok_or(ApiError::NotFound)?;
    // Sessions signed in with the old secret must not outlive it.
    state.broker.revoke(Revocation::Principal(Principal::device(&id))).await;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(RotatedSecret { id: id.into_inner(), secret: secret.expose().to_owned() }))
}
