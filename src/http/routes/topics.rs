//! `/api/v1/topics/{topic}`: every topic is a REST resource. `GET` reads the
//! retained message; `PUT` publishes retained, `POST` not retained, `DELETE`
//! clears the retained message — each through `BrokerHandle::publish`
//! exactly like an MQTT PUBLISH: same ACLs, location validation, history and
//! fan-out, attributed to the caller's client id.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::http::header::{self, CacheControl, CacheDirective, HttpDate};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use ntex::util::ByteString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::{Message, MessageProps, QoS};
use crate::domain::{SharedFilter, TopicFilter, TopicName};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::payload::{if_none_match, read_body, sniff_content_type};
use crate::http::state::AppState;
use crate::telemetry::otel;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_topic).service(put_topic).service(post_topic).service(delete_topic);
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublishParams {
    /// QoS of the publish, 0, 1 or 2 (default 1): subscribers get at most this.
    #[param(maximum = 2)]
    qos: Option<u8>,
}

/// What a publish did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Published {
    topic: String,
    qos: u8,
    retain: bool,
    /// Subscriptions on this instance that matched (with several
    /// instances, the others' are not counted).
    matched: usize,
    /// `"no subscribers"` when none matched anywhere (status 202).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'static str>,
}

/// The latest retained payload, raw, with its content type.
#[utoipa::path(
    tag = "topics",
    params(("topic" = String, Path, description = "Topic name, levels separated by `/`, no wildcards")),
    responses(
        (status = 200, description = "The retained payload, with `ETag` and `Last-Modified`"),
        (status = 304, description = "`If-None-Match` names the current `ETag`"),
        (status = 400, description = "Invalid topic name", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "The ACL forbids reading this topic", content_type = "application/problem+json"),
        (status = 404, description = "No retained message", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/topics/{topic:.*}")]
#[tracing::instrument(skip_all, fields(mqtt.topic = %topic))]
async fn get_topic(
    state: web::Data<AppState>,
    caller: Caller,
    topic: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let topic = parse_topic(&state, &topic)?;
    let filter = TopicFilter::parse(topic.as_bytestring().clone(), Default::default())
        .map_err(|e| ApiError::BadRequest(format!("invalid topic: {e}")))?;
    if !state.broker.auth().can_subscribe(&caller.identity, &caller.client_id, &filter) {
        return Err(ApiError::Forbidden(format!("not allowed to read {topic}")));
    }
    let retained = state.broker.retained(SharedFilter { group: None, filter }).await;
    let msg = retained.into_iter().find(|m| m.topic == topic).ok_or(ApiError::NotFound)?;

    let etag = etag(&msg);
    let last_modified = HttpDate::from(msg.received_at);
    let not_modified = if_none_match(&req, &etag);
    let mut res = if not_modified { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    res.insert_header((header::ETAG, etag))
        .insert_header((header::LAST_MODIFIED, last_modified))
        .insert_header(CacheControl(vec![CacheDirective::NoCache]));
    if not_modified {
        return Ok(res.finish());
    }
    let content_type = msg
        .props
        .as_ref()
        .and_then(|p| p.content_type.as_ref().map(|c| c.to_string()))
        .unwrap_or_else(|| sniff_content_type(&msg.payload).to_owned());
    Ok(res.content_type(content_type).body(bytes::Bytes::from_owner(msg.payload.clone())))
}

/// The answers of a REST publish (PUT and POST), for the API description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "only describes responses in /openapi.json")]
enum PublishResponses {
    /// Published (and, for PUT, retained)
    #[response(status = 200)]
    Published(Published),
    /// Published, but no subscriber matched
    #[response(status = 202)]
    NoSubscriber(Published),
    /// Invalid topic, QoS or payload (locations: not JSON)
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest,
    /// No valid credentials
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized,
    /// The ACL forbids publishing here
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden,
    /// The client took longer than `http.body_timeout_ms` to send the body
    #[response(status = 408, content_type = "application/problem+json")]
    TimedOut,
    /// Larger than the broker's payload limit
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge,
    /// A `Content-Encoding` other than `identity`: payloads are stored as sent
    #[response(status = 415, content_type = "application/problem+json")]
    Encoded,
    /// Invalid location (`devices/{id}/location`)
    #[response(status = 422, content_type = "application/problem+json")]
    InvalidLocation,
    /// Broker or storage unavailable
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable,
}

/// Publish the body retained (what MQTT retain=1 does).
#[utoipa::path(
    tag = "topics",
    params(("topic" = String, Path, description = "Topic name"), PublishParams),
    request_body(
        description = "The payload, stored as sent (up to the broker's payload limit): bytes of any media type (JSON for locations); its `Content-Type` becomes the MQTT 5 content type",
        content(("application/octet-stream"))
    ),
    responses(PublishResponses)
)]
#[put("/api/v1/topics/{topic:.*}")]
#[tracing::instrument(skip_all, fields(mqtt.topic = %topic))]
async fn put_topic(
    state: web::Data<AppState>,
    caller: Caller,
    topic: web::Path<String>,
    params: web::Query<PublishParams>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    publish(&state, &caller, &topic, params.qos, true, Some((&req, body))).await
}

/// Publish the body, not retained.
#[utoipa::path(
    tag = "topics",
    params(("topic" = String, Path, description = "Topic name"), PublishParams),
    request_body(
        description = "The payload, stored as sent (up to the broker's payload limit): bytes of any media type (JSON for locations); its `Content-Type` becomes the MQTT 5 content type",
        content(("application/octet-stream"))
    ),
    responses(PublishResponses)
)]
#[post("/api/v1/topics/{topic:.*}")]
#[tracing::instrument(skip_all, fields(mqtt.topic = %topic))]
async fn post_topic(
    state: web::Data<AppState>,
    caller: Caller,
    topic: web::Path<String>,
    params: web::Query<PublishParams>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    publish(&state, &caller, &topic, params.qos, false, Some((&req, body))).await
}

/// Clear the retained message (an empty retained publish, as in MQTT).
#[utoipa::path(
    tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Cleared (whether or not there was one)"),
        (status = 400, description = "Invalid topic", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "The ACL forbids publishing here", content_type = "application/problem+json"),
        (status = 503, description = "Broker or storage unavailable", content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/topics/{topic:.*}")]
#[tracing::instrument(skip_all, fields(mqtt.topic = %topic))]
async fn delete_topic(
    state: web::Data<AppState>,
    caller: Caller,
    topic: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    publish(&state, &caller, &topic, Some(1), true, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn publish(
    state: &AppState,
    caller: &Caller,
    topic: &str,
    qos: Option<u8>,
    retain: bool,
    body: Option<(&HttpRequest, web::Payload)>,
) -> Result<HttpResponse, ApiError> {
    let topic = parse_topic(state, topic)?;
    let qos = match qos {
        None => QoS::AtLeastOnce,
        Some(q) => QoS::from_u8(q)
            .ok_or_else(|| ApiError::BadRequest(format!("qos must be 0, 1 or 2, got {q}")))?,
    };
    if !state.broker.auth().can_publish(&caller.identity, &caller.client_id, &topic) {
        return Err(ApiError::Forbidden(format!("not allowed to publish to {topic}")));
    }
    let (payload, content_type) = match body {
        Some((req, body)) => {
            let limit = state.broker.limits().max_payload_bytes as usize;
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| ByteString::from(v.to_owned()));
            (read_body(req, body, limit).await?, content_type)
        }
        None => (Default::default(), None),
    };
    let mut msg = Message::new(topic.clone(), payload, qos, retain);
    msg.publisher = Some(caller.client_id.clone());
    let mut props = MessageProps { content_type, ..MessageProps::default() };
    // The publish continues the request's trace, as an MQTT 5 publish with a
    // `traceparent` would: subscribers get the context with the message.
    if let Some(traceparent) = otel::current_traceparent() {
        props
            .user_properties
            .push((ByteString::from_static(otel::TRACEPARENT), ByteString::from(traceparent)));
    }
    msg.props = (!props.is_empty()).then(|| Arc::new(props));
    let outcome = state.broker.publish(msg).await?;
    let mut published = Published {
        topic: topic.to_string(),
        qos: qos as u8,
        retain,
        matched: outcome.matched,
        note: None,
    };
    if outcome.unheard() {
        published.note = Some("no subscribers");
        return Ok(HttpResponse::Accepted().json(published));
    }
    Ok(HttpResponse::Ok().json(published))
}

/// The topic of a request path, within the broker's topic limits.
pub(super) fn parse_topic(state: &AppState, raw: &str) -> Result<TopicName, ApiError> {
    TopicName::parse(raw.to_owned(), state.broker.limits().topic_limits())
        .map_err(|e| ApiError::BadRequest(format!("invalid topic: {e}")))
}

/// A strong validator of the retained message: its payload and when it was
/// received.
fn etag(msg: &Message) -> String {
    let mut h = std::hash::DefaultHasher::new();
    msg.payload.as_ref().hash(&mut h);
    msg.received_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}
