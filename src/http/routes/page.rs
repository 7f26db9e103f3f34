//! The live map page: `GET /` and the shared-device page `GET /s/{token}`
//! (the same document; the script tells them apart by path), its assets
//! under `/ui/`, and `GET /api/v1/page/config`, which tells the page where
//! tiles come from. Everything is compiled into the binary.
//!
//! The page may load only what this server serves, plus tiles from the one
//! configured origin: its Content-Security-Policy says so, and with no tile
//! URL the page asks nothing of any other host.

use std::io::Write;
use std::sync::LazyLock;

use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, get, web};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::config::MapSettings;
use crate::domain::Identity;
use crate::domain::{ClientId, TopicFilter, TopicLimits};
use crate::http::errors::ApiError;
use crate::http::payload::{accepts_gzip, if_none_match};
use crate::http::state::AppState;
use crate::updater::SNAPSHOT_TOPIC;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(index).service(shared_page).service(asset).service(page_config);
}

const INDEX_HTML: &str = include_str!("../../../ui/index.html");
const EXPIRED_HTML: &str = include_str!("../../../ui/expired.html");

/// Every file under `/ui/`: path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../../ui/app.js")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../../ui/app.css")),
    (
        "vendor/leaflet/leaflet.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../ui/vendor/leaflet/leaflet.js"),
    ),
    (
        "vendor/leaflet/leaflet.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../ui/vendor/leaflet/leaflet.css"),
    ),
    (
        "vendor/leaflet/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../../ui/vendor/leaflet/LICENSE"),
    ),
];

/// An asset ready to send: its bytes as they are and gzip-compressed, each
/// with its own strong validator (two encodings are two representations).
struct Prepared {
    etag: String,
    gzip: Vec<u8>,
    gzip_etag: String,
}

/// Compressed once, on the first request for any asset: the files are fixed
/// at build time, so no request pays for compression.
static PREPARED: LazyLock<Vec<Prepared>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|(_, _, bytes)| {
            let tag = crate::domain::to_hex(&Sha256::digest(bytes)[..12]);
            let mut gz = GzEncoder::new(Vec::with_capacity(bytes.len() / 3), Compression::best());
            gz.write_all(bytes).expect("writing into a Vec cannot fail");
            Prepared {
                etag: format!("\"{tag}\""),
                gzip: gz.finish().expect("writing into a Vec cannot fail"),
                gzip_etag: format!("\"{tag}-gz\""),
            }
        })
        .collect()
});

/// What the page needs to know about this deployment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PageConfig {
    /// Leaflet URL template of the tiles; `null`: a plain background.
    tile_url: Option<String>,
    tile_attribution: Option<String>,
    max_zoom: u8,
    /// Seconds between map snapshots: how often public devices move.
    map_interval_secs: u64,
    /// Whether this server lets a signed-out viewer read the map
    /// (`auth.allow_anonymous` and the ACL's answer for `map/snapshot`).
    anonymous_map: bool,
    /// Whether `GET /api/v1/devices/{id}/position` answers for the public
    /// devices of the map (not when `map.public_ids` hides device ids).
    device_positions: bool,
}

/// The page's settings and its Content-Security-Policy, fixed at start.
#[derive(Debug, Clone)]
pub struct PageSettings {
    config: PageConfig,
    csp: String,
}

impl PageSettings {
    pub fn new(map: &MapSettings) -> Self {
        let tiles = map.tile_origin().map(|o| format!(" {o}")).unwrap_or_default();
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{tiles}; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        Self {
            config: PageConfig {
                tile_url: map.tile_url.clone(),
                tile_attribution: map.tile_attribution.clone(),
                max_zoom: map.max_zoom,
                map_interval_secs: map.interval_secs,
                anonymous_map: false,
                device_positions: false,
            },
            csp,
        }
    }

    /// The headers every HTML answer carries. `no-referrer`: a share link's
    /// token is in the page's URL and must not travel to the tile server.
    fn html(&self, mut res: HttpResponseBuilder) -> HttpResponseBuilder {
        res.content_type("text/html; charset=utf-8")
            .insert_header(("Content-Security-Policy", self.csp.as_str()))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(CacheControl(vec![CacheDirective::NoStore]));
        res
    }
}

/// The live map (HTML): sign in, see your devices and the shared map move.
#[utoipa::path(
    tag = "page",
    responses((status = 200, description = "The map page", content_type = "text/html"))
)]
#[get("/")]
async fn index(state: web::Data<AppState>) -> HttpResponse {
    state.page.html(HttpResponse::Ok()).body(INDEX_HTML)
}

/// One shared device, live, without signing in (HTML); a page saying the
/// link has expired once it has, or was revoked.
#[utoipa::path(
    tag = "page",
    params(("token" = String, Path, description = "The share link's token")),
    responses(
        (status = 200, description = "The shared device's page", content_type = "text/html"),
        (status = 410, description = "The link expired, was revoked or never existed", content_type = "text/html"),
        (status = 503, description = "The database is unavailable", content_type = "application/problem+json"),
    )
)]
#[get("/s/{token}")]
#[tracing::instrument(skip_all)]
async fn shared_page(
    state: web::Data<AppState>,
    token: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match super::shares::live_share(&state, &token).await? {
        Some(_) => Ok(state.page.html(HttpResponse::Ok()).body(INDEX_HTML)),
        None => Ok(state.page.html(HttpResponse::Gone()).body(EXPIRED_HTML)),
    }
}

/// A file of the page (script, style, the vendored map library).
#[utoipa::path(
    tag = "page",
    params(("path" = String, Path, description = "e.g. `app.js`")),
    responses(
        (status = 200, description = "The file"),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 404, description = "No such file", content_type = "application/problem+json"),
    )
)]
#[get("/ui/{path:.*}")]
async fn asset(path: web::Path<String>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let i = ASSETS.iter().position(|(p, _, _)| *p == path.as_str()).ok_or(ApiError::NotFound)?;
    let (_, content_type, bytes) = ASSETS[i];
    let prepared = &PREPARED[i];
    let gzip = accepts_gzip(&req);
    let (etag, body) = if gzip {
        (&prepared.gzip_etag, prepared.gzip.as_slice())
    } else {
        (&prepared.etag, bytes)
    };
    // Revalidated on each load: a new binary serves new files at once.
    let cache = CacheControl(vec![CacheDirective::NoCache]);
    if if_none_match(&req, etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag.as_str()))
            .insert_header((header::VARY, "Accept-Encoding"))
            .insert_header(cache)
            .finish());
    }
    let mut res = HttpResponse::Ok();
    res.content_type(content_type)
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header(cache)
        .insert_header(("X-Content-Type-Options", "nosniff"));
    if gzip {
        res.insert_header((header::CONTENT_ENCODING, "gzip"));
    }
    Ok(res.body(body))
}

/// Where the page's tiles come from (`map.tile_url`), their attribution and
/// the deepest zoom; public, like the page.
#[utoipa::path(
    tag = "page",
    responses((status = 200, description = "The page's settings", body = PageConfig))
)]
#[get("/api/v1/page/config")]
async fn page_config(state: web::Data<AppState>) -> HttpResponse {
    let mut config = state.page.config.clone();
    // Asked of the ACL on each request: rules can be reloaded.
    let anonymous = Identity::anonymous();
    let snapshot =
        TopicFilter::parse(SNAPSHOT_TOPIC, TopicLimits::default()).expect("static filter");
    config.anonymous_map = state.identities.settings().allow_anonymous
        && state.broker.auth().can_subscribe(
            &anonymous,
            &ClientId::from("rest:anonymous"),
            &snapshot,
        );
    config.device_positions = state.map_ids.is_none();
    HttpResponse::Ok().insert_header(CacheControl(vec![CacheDirective::NoStore])).json(config)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn the_policy_admits_only_this_server_and_the_tile_origin() {
        let mut map = MapSettings::default();
        let bare = PageSettings::new(&map);
        assert!(bare.csp.contains("img-src 'self' data:;"), "{}", bare.csp);
        assert!(bare.csp.contains("connect-src 'self';"), "{}", bare.csp);
        map.tile_url = Some("https://{s}.tile.example.org:8443/{z}/{x}/{y}.png".into());
        let tiles = PageSettings::new(&map);
        assert!(
            tiles.csp.contains("img-src 'self' data: https://*.tile.example.org:8443;"),
            "{}",
            tiles.csp
        );
    }

    #[test]
    fn every_asset_has_a_validator_per_encoding_and_gzip_round_trips() {
        assert_eq!(PREPARED.len(), ASSETS.len());
        for ((_, _, bytes), p) in ASSETS.iter().zip(PREPARED.iter()) {
            assert!(!bytes.is_empty());
            assert_ne!(p.etag, p.gzip_etag);
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(p.gzip.as_slice()).read_to_end(&mut plain).unwrap();
            assert_eq!(plain, *bytes);
        }
    }
}
