//! The endpoints the phone apps post to, as each app is configured to:
//!
//! - `POST /api/v1/owntracks`: OwnTracks in HTTP mode, HTTP Basic auth with
//!   the device id and secret; the body is published to the topic the app
//!   would have used over MQTT (`owntracks/{id}/{X-Limit-D or "phone"}`), so
//!   it takes the MQTT path exactly: the same hook, ACLs and fan-out.
//! - `GET|POST /api/v1/osmand/{secret}`: Traccar Client and OsmAnd, which
//!   send no password: the device's secret is the last path segment of the
//!   URL the app is given, `id` (or `device_id`) its device id. The fix is
//!   published as GeoJSON to `devices/{id}/location`. The path is redacted
//!   in the request log.
//!
//! These apps only tell success (200) from failure, so every refusal is a
//! 4xx with a problem body, logged with its reason and counted in
//! `mapcast_phone_reports_refused_total{protocol}`.

use std::sync::atomic::Ordering::Relaxed;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ntex::util::Bytes;

use crate::broker::auth::{AuthError, Credentials};
use crate::domain::time::millis;
use crate::domain::{ClientId, DeviceId, TopicName};
use crate::domain::{Identity, Role, Secret};
use crate::domain::{Message, QoS};
use crate::http::errors::ApiError;
use crate::http::payload::read_body;
use crate::http::state::AppState;
use crate::phones::{osmand, owntracks};
use crate::telemetry::{metrics, names};

/// The path prefix whose next segment is a secret.
pub const OSMAND_PREFIX: &str = "/api/v1/osmand/";

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(post_owntracks).service(osmand_query).service(osmand_report);
}

#[derive(Clone, Copy)]
enum Protocol {
    OwnTracks = 0,
    OsmAnd = 1,
}

/// Log and count a refusal; the app sees the 4xx.
fn refused(protocol: Protocol, e: ApiError) -> ApiError {
    let name = names::metrics::PHONE_PROTOCOLS[protocol as usize];
    metrics::global().phone_reports_refused[protocol as usize].fetch_add(1, Relaxed);
    tracing::warn!({ names::PHONE_PROTOCOL } = name, { names::ERROR_MESSAGE } = %e, "phone report refused");
    e
}

/// The device `id` proven by `secret`, through the same authenticator (and
/// lockouts) as an MQTT CONNECT.
async fn device_identity(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    secret: String,
) -> Result<(DeviceId, Identity), ApiError> {
    let device = DeviceId::parse(id)
        .map_err(|e| ApiError::UnprocessableEntity(format!("invalid device id: {e}")))?;
    let creds = Credentials {
        client_id: ClientId::from(format!("phone:{device}").as_str()),
        username: Some(id.to_owned()),
        password: Some(Secret::new(secret)),
        peer: req.peer_addr(),
    };
    let identity = state.broker.auth().authenticate(&creds).await.map_err(|e| match e {
        AuthError::BadCredentials | AuthError::NotAuthorized => {
            ApiError::Unauthorized("unknown device or wrong secret".into())
        }
        AuthError::TooManyAttempts => ApiError::TooManyRequests {
            detail: "too many failed sign-ins; retry later".into(),
            retry_after_secs: 60,
        },
        AuthError::Busy => ApiError::Busy {
            detail: "the server is busy checking passwords; retry shortly".into(),
            retry_after_secs: 1,
        },
        AuthError::Unavailable => ApiError::Unavailable("authentication is unavailable".into()),
    })?;
    if identity.role != Role::Device || identity.device_id.as_deref() != Some(device.as_str()) {
        return Err(ApiError::Forbidden("these are not a device's credentials".into()));
    }
    Ok((device, identity))
}

async fn publish(
    state: &AppState,
    identity: &Identity,
    device: &DeviceId,
    topic: String,
    payload: Bytes,
    retain: bool,
) -> Result<(), ApiError> {
    let topic = TopicName::parse(topic, state.broker.limits().topic_limits())
        .map_err(|e| ApiError::BadRequest(format!("invalid topic: {e}")))?;
    let client_id = ClientId::from(format!("phone:{device}").as_str());
    if !state.broker.auth().can_publish(identity, &client_id, &topic) {
        return Err(ApiError::Forbidden(format!("not allowed to publish to {topic}")));
    }
    let mut msg = Message::new(topic, payload, QoS::AtLeastOnce, retain);
    msg.publisher = Some(client_id);
    state.broker.publish(msg).await?;
    Ok(())
}

/// `Basic base64(user:password)`.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let (scheme, encoded) = value.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// An OwnTracks message, as the app posts it in HTTP mode.
#[utoipa::path(
    tag = "phones",
    request_body(content = Object, description = "An OwnTracks JSON message (`_type` location, lwt, transition, ...)", content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted; an empty list of messages for the app", body = Vec<Object>),
        (status = 400, description = "Not JSON, or not an OwnTracks object", content_type = "application/problem+json"),
        (status = 401, description = "No Basic credentials, an unknown device or a wrong secret", content_type = "application/problem+json"),
        (status = 403, description = "Not a device's credentials", content_type = "application/problem+json"),
        (status = 422, description = "An invalid location (e.g. missing lat, out of range)", content_type = "application/problem+json"),
        (status = 429, description = "Too many failed sign-ins", content_type = "application/problem+json"),
        (status = 503, description = "Broker or storage unavailable", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/owntracks")]
#[tracing::instrument(skip_all)]
async fn post_owntracks(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    owntracks_report(&state, &req, body).await.map_err(|e| refused(Protocol::OwnTracks, e))
}

async fn owntracks_report(
    state: &AppState,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Some((user, password)) =
        req.headers().get(header::AUTHORIZATION).and_then(basic_credentials)
    else {
        return Err(ApiError::Unauthorized(
            "send the device id and secret as HTTP Basic credentials".into(),
        ));
    };
    let (device, identity) = device_identity(state, req, &user, password).await?;
    let payload = read_body(req, body, state.broker.limits().max_payload_bytes as usize).await?;
    let kind = owntracks::type_of(&payload);
    if kind.is_none() {
        return Err(ApiError::BadRequest(
            "the body must be an OwnTracks JSON object with a `_type`".into(),
        ));
    }
    // The app's device label (`X-Limit-D`) names the topic's last level when
    // it can be one, as over MQTT.
    let label = req
        .headers()
        .get("x-limit-d")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| DeviceId::parse(d).ok())
        .map_or_else(|| "phone".to_owned(), |d| d.as_str().to_owned());
    let retain = kind.as_deref() == Some("location");
    let topic = owntracks::topic_for(&device, &label, kind.as_deref());
    publish(state, &identity, &device, topic, payload, retain).await?;
    Ok(HttpResponse::Ok().content_type("application/json").body("[]"))
}

/// The query (or form) parameters of an OsmAnd-protocol report; documented
/// only: the handler reads them itself, from the query or the body.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct OsmandParams {
    /// Device id (also `deviceid`).
    id: Option<String>,
    /// Latitude, degrees.
    lat: Option<f64>,
    /// Longitude, degrees.
    lon: Option<f64>,
    /// Epoch seconds, epoch milliseconds or ISO 8601.
    timestamp: Option<String>,
    /// Knots.
    speed: Option<f64>,
    /// Degrees.
    bearing: Option<f64>,
    /// Metres.
    altitude: Option<f64>,
    /// Metres.
    accuracy: Option<f64>,
    /// Battery, percent.
    batt: Option<f64>,
    /// Whether the phone had a GPS fix; `false`: answered 200 and the
    /// coordinates are not used.
    valid: Option<bool>,
}

/// The answers to an OsmAnd-protocol report (documented only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum OsmandAnswers {
    #[response(status = 200, description = "Accepted")]
    Accepted,
    #[response(
        status = 400,
        description = "No device id, unreadable values or body",
        content_type = "application/problem+json"
    )]
    Unreadable,
    #[response(
        status = 401,
        description = "An unknown device or a wrong secret",
        content_type = "application/problem+json"
    )]
    Unknown,
    #[response(
        status = 422,
        description = "An invalid location (e.g. missing lat, out of range)",
        content_type = "application/problem+json"
    )]
    Invalid,
    #[response(
        status = 429,
        description = "Too many failed sign-ins",
        content_type = "application/problem+json"
    )]
    LockedOut,
    #[response(
        status = 503,
        description = "Broker or storage unavailable",
        content_type = "application/problem+json"
    )]
    Unavailable,
}

/// A location report from OsmAnd or Traccar Client in the query string.
#[utoipa::path(
    tag = "phones",
    params(
        ("secret" = String, Path, description = "The device's secret (the URL configured in the app)"),
        OsmandParams,
    ),
    responses(OsmandAnswers)
)]
#[get("/api/v1/osmand/{secret}")]
#[tracing::instrument(skip_all)]
async fn osmand_query(
    state: web::Data<AppState>,
    secret: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    osmand(&state, secret.into_inner(), &req, body).await.map_err(|e| refused(Protocol::OsmAnd, e))
}

/// A location report from Traccar Client or OsmAnd: query or form
/// parameters, or the JSON body of Traccar Client 9+.
#[utoipa::path(
    tag = "phones",
    params(
        ("secret" = String, Path, description = "The device's secret (the URL configured in the app)"),
        OsmandParams,
    ),
    request_body(content = Object, description = "Form parameters as in the query, or Traccar Client's JSON (`device_id`, `location.coords`, `location.timestamp`)", content_type = "application/json"),
    responses(OsmandAnswers)
)]
#[post("/api/v1/osmand/{secret}")]
#[tracing::instrument(skip_all)]
async fn osmand_report(
    state: web::Data<AppState>,
    secret: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    osmand(&state, secret.into_inner(), &req, body).await.map_err(|e| refused(Protocol::OsmAnd, e))
}

async fn osmand(
    state: &AppState,
    secret: String,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(req, body, state.broker.limits().max_payload_bytes as usize).await?;
    let now_ms = millis(std::time::SystemTime::now());
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || body.first() == Some(&b'{');
    let report = if is_json {
        osmand::from_json(&body)
    } else {
        let mut params = form(req.query_string())?;
        params.extend(form(
            std::str::from_utf8(&body)
                .map_err(|_| ApiError::BadRequest("the form body is not UTF-8".into()))?,
        )?);
        osmand::from_params(&params, now_ms)
    };
    let report = report.map_err(|e| match e {
        osmand::ReportError::NoDeviceId => ApiError::BadRequest(e.as_str().into()),
        osmand::ReportError::Invalid(crate::domain::LocationError::NotJson) => {
            ApiError::BadRequest(e.as_str().into())
        }
        osmand::ReportError::Invalid(_) => {
            ApiError::UnprocessableEntity(format!("invalid location: {}", e.as_str()))
        }
    })?;
    let (device, identity) = device_identity(state, req, &report.device_id, secret).await?;
    if !report.has_fix {
        // Answered 200 so the app drops it from its queue; see `phones::osmand`.
        metrics::global().phone_reports_without_fix.fetch_add(1, Relaxed);
        tracing::info!(
            { names::PHONE_PROTOCOL } = names::metrics::PHONE_PROTOCOLS[Protocol::OsmAnd as usize],
            { names::DEVICE_ID } = %device,
            "phone report without a GPS fix: position not used"
        );
        return Ok(HttpResponse::Ok().finish());
    }
    let payload = Bytes::from(report.location.to_feature_json());
    publish(state, &identity, &device, device.location_topic(), payload, false).await?;
    Ok(HttpResponse::Ok().finish())
}

/// `a=1&b=2` decoded (`+` as a space, percent escapes).
fn form(s: &str) -> Result<Vec<(String, String)>, ApiError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    web::Query::<Vec<(String, String)>>::from_query(s)
        .map(web::Query::into_inner)
        .map_err(|_| ApiError::BadRequest("unreadable parameters".into()))
}

/// The request path as it may be logged: an OsmAnd secret is replaced.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix(OSMAND_PREFIX) {
        Some(rest) if !rest.is_empty() => {
            let tail = rest.find('/').map_or("", |i| &rest[i..]);
            format!("{OSMAND_PREFIX}[redacted]{tail}").into()
        }
        _ => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_osmand_secret_never_reaches_the_log() {
        assert_eq!(loggable_path("/api/v1/osmand/s3cret"), "/api/v1/osmand/[redacted]");
        assert_eq!(loggable_path("/api/v1/osmand/s3cret/x"), "/api/v1/osmand/[redacted]/x");
        assert_eq!(loggable_path("/api/v1/map"), "/api/v1/map");
    }

    #[test]
    fn basic_credentials_are_read() {
        let v = HeaderValue::from_static("Basic cGgtMTpzM2NyZXQ=");
        assert_eq!(basic_credentials(&v), Some(("ph-1".into(), "s3cret".into())));
        assert_eq!(basic_credentials(&HeaderValue::from_static("Bearer x")), None);
    }
}
