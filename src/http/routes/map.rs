//! `GET /api/v1/map`: the latest map snapshot the updater built — whole (as
//! prebuilt GeoJSON or gzip bytes), inside a bbox (through the R-tree), or as
//! the ids that changed since a version the client has. With `?zoom=`, the
//! `map.clustering` feature flag decides per caller whether the view comes
//! back clustered (the canary) or whole (the control).

use std::io::Write;

use actix_web::http::header::{self, CacheControl, CacheDirective, HttpDate};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, get, web};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::time::from_millis;
use tracing::Instrument;

use crate::domain::{Bbox, MAX_ZOOM, MapDiff, MapSnapshot, TopicFilter, TopicLimits, cluster};
use crate::flags::{DebugFault, Evaluation, MAP_CLUSTERING};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::payload::{accepts_gzip, if_none_match};
use crate::http::state::AppState;
use crate::updater::{DiffError, GEOJSON, SNAPSHOT_TOPIC};

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_map).service(get_my_map);
}

/// Your own devices' latest positions, private ones included and however
/// old: the view the shared map leaves out. A FeatureCollection like the
/// map's (`version` 0: it is built for this request).
#[utoipa::path(
    tag = "map",
    responses(
        (status = 200, description = "The caller's devices", content_type = "application/geo+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/map/mine")]
#[tracing::instrument(skip_all)]
async fn get_my_map(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let who = &caller.identity;
    if who.is_anonymous() {
        return Err(ApiError::Unauthorized("sign in: send Authorization: Bearer TOKEN".into()));
    }
    let mut devices = who.owned_devices.clone();
    devices.extend(who.device_id.clone());
    let positions = state.store.latest_positions_of(devices).await.map_err(|e| {
        tracing::warn!({ crate::telemetry::names::ERROR_MESSAGE } = %e, "positions not read");
        ApiError::Unavailable("the database is unavailable".into())
    })?;
    let now = crate::domain::time::millis(std::time::SystemTime::now());
    let snapshot = MapSnapshot::build(0, now, positions.iter().map(|(id, p)| (id, p)));
    Ok(HttpResponse::Ok()
        .content_type(GEOJSON)
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .body(bytes::Bytes::from_owner(snapshot.json)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MapParams {
    /// `minLon,minLat,maxLon,maxLat`: only devices inside (minLon > maxLon
    /// crosses the antimeridian).
    bbox: Option<String>,
    /// A version the client has: answer with the ids added, moved and
    /// removed since (the last 16 versions are kept; older → 410).
    since: Option<u64>,
    /// A zoom level 0–22 of the view: with the `map.clustering` flag on for
    /// the caller, nearby devices come back as one point with a `count`
    /// (`"clustered": true`); otherwise the whole map as without it.
    #[param(maximum = 22)]
    zoom: Option<u8>,
}

/// The map: a GeoJSON FeatureCollection with `version`, `generated_at`,
/// `total` and `bbox`; each Feature's `id` is a device id. Only public
/// devices are on it (see `GET /api/v1/map/mine` for your own).
#[utoipa::path(
    tag = "map",
    params(MapParams),
    responses(
        (status = 200, description = "The snapshot (`application/geo+json`, gzip when accepted), or with `since` the changes", content_type = "application/geo+json", body = MapDiff),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "Malformed bbox, since or zoom", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "The ACL forbids reading the map", content_type = "application/problem+json"),
        (status = 410, description = "`since` is older than the versions kept: fetch the whole map", content_type = "application/problem+json"),
        (status = 503, description = "The first snapshot is not built yet", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/map")]
#[tracing::instrument(skip_all)]
async fn get_map(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<MapParams>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    match params.zoom {
        None => whole_map(&state, &caller, &params, &req).await,
        Some(zoom) => zoomed_map(&state, &caller, &params, &req, zoom).await,
    }
}

/// A zoomed-out view: the `map.clustering` canary clusters it, the control
/// serves the whole map. Both are timed and counted per variant.
async fn zoomed_map(
    state: &AppState,
    caller: &Caller,
    params: &MapParams,
    req: &HttpRequest,
    zoom: u8,
) -> Result<HttpResponse, ApiError> {
    if zoom > MAX_ZOOM {
        return Err(ApiError::BadRequest(format!("zoom must be 0-{MAX_ZOOM}, got {zoom}")));
    }
    let (eval, span) = state.flags.evaluate(MAP_CLUSTERING, caller.client_id.as_str());
    req.extensions_mut().insert(eval.clone());
    let probe = state.flags.probe(&eval);
    let result = async {
        if eval.is_canary() {
            clustered_map(state, caller, params, zoom, &eval).await
        } else {
            whole_map(state, caller, params, req).await
        }
    }
    .instrument(span)
    .await;
    probe.finish(result.as_ref().map_or_else(|e| !e.status_code().is_server_error(), |_| true));
    result
}

async fn clustered_map(
    state: &AppState,
    caller: &Caller,
    params: &MapParams,
    zoom: u8,
    eval: &Evaluation,
) -> Result<HttpResponse, ApiError> {
    let bbox = parse_bbox(params)?;
    may_read_map(state, caller)?;
    let map = state
        .map
        .current()
        .ok_or_else(|| ApiError::Unavailable("the first map snapshot is being built".into()))?;
    if eval.fault == Some(DebugFault::Slow) {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let clustered = {
        // A panic from here on names the variant in its crash report.
        let _active = eval.enter();
        match eval.fault {
            Some(DebugFault::Panic) => panic!("debug fault: {MAP_CLUSTERING} panics"),
            Some(DebugFault::Error) => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "debug fault: {MAP_CLUSTERING} fails"
                )));
            }
            _ => cluster(&map.snapshot, zoom, bbox.as_ref()),
        }
    };
    tracing::debug!(
        features = clustered["features"].as_array().map_or(0, Vec::len),
        "map clustered"
    );
    Ok(HttpResponse::Ok()
        .content_type(GEOJSON)
        .insert_header((header::ETAG, format!("\"{}-z{zoom}\"", map.snapshot.version)))
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .body(clustered.to_string()))
}

fn parse_bbox(params: &MapParams) -> Result<Option<Bbox>, ApiError> {
    params
        .bbox
        .as_deref()
        .map(Bbox::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The map is what `map/snapshot` carries: the same ACL as MQTT.
pub(super) fn may_read_map(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let topic = TopicFilter::parse(SNAPSHOT_TOPIC, TopicLimits::default()).expect("static filter");
    if state.broker.auth().can_subscribe(&caller.identity, &caller.client_id, &topic) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("not allowed to read the map".into()))
    }
}

async fn whole_map(
    state: &AppState,
    caller: &Caller,
    params: &MapParams,
    req: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let bbox = parse_bbox(params)?;
    may_read_map(state, caller)?;

    if let Some(since) = params.since {
        let diff = state.map.diff(since).map_err(|e| match e {
            DiffError::NoSnapshot => ApiError::Unavailable(e.to_string()),
            DiffError::Ahead { .. } => ApiError::BadRequest(e.to_string()),
            DiffError::TooOld { .. } => ApiError::Gone(e.to_string()),
        })?;
        return Ok(HttpResponse::Ok()
            .insert_header((header::ETAG, format!("\"{}\"", diff.version)))
            .insert_header(CacheControl(vec![CacheDirective::NoCache]))
            .json(diff));
    }

    let map = state
        .map
        .current()
        .ok_or_else(|| ApiError::Unavailable("the first map snapshot is being built".into()))?;
    let snap = &map.snapshot;
    let etag = format!("\"{}\"", snap.version);
    let mut res = HttpResponse::Ok();
    res.insert_header((header::ETAG, etag.clone()))
        .insert_header((header::LAST_MODIFIED, HttpDate::from(from_millis(snap.generated_at_ms))))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header(CacheControl(vec![CacheDirective::NoCache]));
    if if_none_match(req, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::VARY, "Accept-Encoding"))
            .finish());
    }
    res.content_type(GEOJSON);
    let gzip = accepts_gzip(req);
    if gzip {
        res.insert_header((header::CONTENT_ENCODING, "gzip"));
    }
    let body = match (&bbox, gzip) {
        (None, true) => bytes::Bytes::from_owner(map.gzip.clone()),
        (None, false) => bytes::Bytes::from_owner(snap.json.clone()),
        (Some(area), gzip) => {
            let selected = snap.select(area);
            if gzip { compress(&selected) } else { bytes::Bytes::from(selected) }
        }
    };
    Ok(res.body(body))
}

fn compress(bytes: &[u8]) -> bytes::Bytes {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    bytes::Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
}
