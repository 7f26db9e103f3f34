//! `GET /api/v1/map`: the latest map snapshot the updater built — whole (as
//! prebuilt GeoJSON or gzip bytes), inside a bbox (through the R-tree), or as
//! the ids that changed since a version the client has.

use std::io::Write;

use actix_web::http::header::{self, CacheControl, CacheDirective, HttpDate};
use actix_web::{HttpRequest, HttpResponse, get, web};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::time::from_millis;
use crate::domain::{Bbox, MapDiff, TopicFilter, TopicLimits};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::payload::{accepts_gzip, if_none_match};
use crate::http::state::AppState;
use crate::updater::{DiffError, GEOJSON, SNAPSHOT_TOPIC};

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_map);
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
}

/// The map: a GeoJSON FeatureCollection with `version`, `generated_at`,
/// `total` and `bbox`; each Feature's `id` is a device id.
#[utoipa::path(
    tag = "map",
    params(MapParams),
    responses(
        (status = 200, description = "The snapshot (`application/geo+json`, gzip when accepted), or with `since` the changes", content_type = "application/geo+json", body = MapDiff),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, description = "Malformed bbox or since", content_type = "application/problem+json"),
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
    let bbox = params
        .bbox
        .as_deref()
        .map(Bbox::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // The map is what `map/snapshot` carries: the same ACL as MQTT.
    let topic = TopicFilter::parse(SNAPSHOT_TOPIC, TopicLimits::default()).expect("static filter");
    if !state.broker.auth().can_subscribe(&caller.identity, &caller.client_id, &topic) {
        return Err(ApiError::Forbidden("not allowed to read the map".into()));
    }

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
    if if_none_match(&req, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::VARY, "Accept-Encoding"))
            .finish());
    }
    res.content_type(GEOJSON);
    let gzip = accepts_gzip(&req);
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
