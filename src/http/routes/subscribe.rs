//! `GET /api/v1/subscribe?filter=F`: matching publishes as Server-Sent
//! Events, for clients that speak only HTTP. A browser's `EventSource`
//! cannot send `Authorization`, so it first gets a one-time ticket from
//! `POST /api/v1/subscribe/tickets` and passes it as `?ticket=` (see
//! [`crate::http::tickets`]).
//!
//! Each stream is a broker session of its own (`sse:{128 random bits}`,
//! unguessable so no MQTT client can take it over; clean, not persistent)
//! subscribed at QoS 0: the broker fans out to it like to any MQTT client,
//! its outbox is bounded like theirs (a slow reader loses the oldest
//! messages, counted as drops), and it ends when the client goes away or the
//! broker shuts down. A user and an address may hold only so many streams
//! (see [`crate::http::streams`]).

use std::time::Duration;

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{FromRequest, HttpRequest, HttpResponse, get, post, web};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::broker::journal::{Missed, ResumePoint};
use crate::broker::{
    BrokerHandle, ConnectRequest, ConnectionId, DisconnectKind, Next, Outbox, ProtocolVersion,
    SubscribeRequest,
};
use crate::domain::time::{format_rfc3339, millis};
use crate::domain::{ClientId, SharedFilter, TopicFilter};
use crate::domain::{Delivery, Message, QoS, SubscriptionOptions};
use crate::domain::{Identity, Secret};
use crate::http::auth::Caller;
use crate::http::conformance;
use crate::http::errors::ApiError;
use crate::http::payload::{DeferredJson, payload_json};
use crate::http::state::AppState;
use crate::http::streams::{SseStreams, StreamPermit};
use crate::http::tickets::{IssueError, SseTickets, TICKET_TTL};

/// A comment line this often keeps proxies from closing an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Deliveries taken from the outbox per wake-up.
const BATCH: usize = 64;
/// `Retry-After` of a stream refused past a cap: streams end when their
/// readers go, so a place may free up soon.
const RETRY_AFTER_SECS: u64 = 5;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(subscribe).service(create_ticket);
}

/// Filters one stream may carry.
const MAX_FILTERS: usize = 8;

/// The query, for the API description; read by [`query_of`] since
/// `filter` may repeat.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "only describes the query in /openapi.json")]
pub struct SubscribeParams {
    /// MQTT topic filter; `+` and `#` wildcards allowed (no `$share/`).
    /// Repeat it (`?filter=a&filter=b`, up to 8) for one stream of several.
    filter: String,
    /// A ticket from `POST /api/v1/subscribe/tickets` for this filter,
    /// instead of `Authorization` (for `EventSource`). Works once.
    #[param(value_type = Option<String>)]
    ticket: Option<Secret>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TicketRequest {
    /// The filter the ticket is for, exactly as it will be passed to
    /// `GET /api/v1/subscribe`.
    #[schema(example = "devices/+/location")]
    filter: String,
    /// More filters for the same stream, passed after `filter` in this
    /// order (`?filter=F&filter=G...`).
    #[serde(default)]
    more_filters: Vec<String>,
}

/// A one-time ticket for one SSE stream.
#[derive(Serialize, ToSchema)]
pub struct SseTicket {
    /// Pass as `?ticket=` with the same `filter`, within `expires_at`.
    ticket: String,
    filter: String,
    /// RFC 3339; about a minute from now.
    expires_at: String,
}

/// The `data:` of each event.
#[derive(Debug, Serialize, ToSchema)]
pub struct SseEvent {
    topic: String,
    /// The payload as JSON when it is JSON, else a string (base64 when
    /// `payload_encoding` is `base64`).
    payload: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_encoding: Option<&'static str>,
    /// Set for retained messages sent when the stream starts.
    retain: bool,
    /// The QoS it was published with.
    qos: u8,
}

/// The filters of a request, in order (every `filter` parameter), and its
/// ticket.
fn query_of(req: &HttpRequest) -> Result<(Vec<String>, Option<Secret>), ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::BadRequest("unreadable query".into()))?;
    let mut filters = Vec::new();
    let mut ticket = None;
    for (k, v) in pairs.into_inner() {
        match k.as_str() {
            "filter" => filters.push(v),
            "ticket" => ticket = Some(Secret::new(v)),
            _ => {}
        }
    }
    if filters.is_empty() {
        return Err(ApiError::BadRequest("a `filter` parameter is required".into()));
    }
    if filters.len() > MAX_FILTERS {
        return Err(ApiError::BadRequest(format!("at most {MAX_FILTERS} filters per stream")));
    }
    Ok((filters, ticket))
}

/// What a ticket is issued for: the filters in order. NUL never appears in
/// a valid filter, so the joined form is unambiguous.
fn ticket_key(filters: &[String]) -> String {
    filters.join("\0")
}

/// Where a `Last-Event-ID` this server wrote (`{ms}-{seq}`) left off.
fn resume_after(req: &HttpRequest) -> Option<ResumePoint> {
    let id = req.headers().get("last-event-id")?.to_str().ok()?;
    let (ms, seq) = id.split_once('-')?;
    Some(ResumePoint { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
}

/// Stream matching publishes as `text/event-stream`.
#[utoipa::path(
    tag = "topics",
    params(SubscribeParams),
    responses(
        (status = 200, description = "An event stream; each `data:` is one publish", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Invalid filter", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "The ACL forbids subscribing to this filter", content_type = "application/problem+json"),
        (status = 429, description = "This user or address holds as many streams as allowed; see `Retry-After`", content_type = "application/problem+json"),
        (status = 503, description = "The broker is shutting down", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/subscribe")]
#[tracing::instrument(skip_all, fields(mqtt.filter = tracing::field::Empty))]
async fn subscribe(
    state: web::Data<AppState>,
    tickets: web::Data<SseTickets>,
    streams: web::Data<SseStreams>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (raw_filters, ticket) = query_of(&req)?;
    tracing::Span::current().record("mqtt.filter", raw_filters.join(" ").as_str());
    // A HEAD answers what its GET would, but opens no stream and leaves the
    // ticket for the GET.
    let head = conformance::is_head(&req);
    let (identity, caller_id) = match &ticket {
        Some(ticket) => {
            let key = ticket_key(&raw_filters);
            let grant = if head {
                tickets.check(ticket.expose(), &key)
            } else {
                tickets.redeem(ticket.expose(), &key)
            };
            let grant = grant.ok_or_else(|| {
                ApiError::Unauthorized(
                    "the ticket is unknown, expired, already used or for another filter".into(),
                )
            })?;
            (grant.identity, grant.client_id)
        }
        None => {
            let caller = Caller::extract(&req).await?;
            (caller.identity, caller.client_id)
        }
    };
    // Checked again for a ticket: the rules may have changed since.
    let filters = raw_filters
        .iter()
        .map(|f| allowed_filter(&state, &identity, &caller_id, f))
        .collect::<Result<Vec<_>, _>>()?;
    let resume = resume_after(&req);
    let permit = streams
        .admit(identity.user_id.as_deref(), req.peer_addr().map(|a| a.ip()))
        .map_err(|e| {
            tracing::warn!(caller = %caller_id, error.message = %e, "SSE stream refused");
            ApiError::TooManyRequests {
                detail: format!("{e}; close one first"),
                retry_after_secs: RETRY_AFTER_SECS,
            }
        })?;
    if head {
        drop(permit);
        // The GET's headers; a stream announces no length.
        let nothing = futures::stream::empty::<Result<bytes::Bytes, actix_web::Error>>();
        return Ok(stream_answer().streaming(nothing));
    }

    let broker = state.broker.clone();
    let client_id = sse_client_id();
    let unavailable = || ApiError::Unavailable("the broker is shutting down".into());
    let session = broker
        .connect(ConnectRequest {
            client_id: client_id.clone(),
            protocol: ProtocolVersion::V5,
            clean_start: true,
            session_expiry_secs: 0,
            will: None,
            identity: identity.clone(),
        })
        .await
        .map_err(|_| unavailable())?;
    // From here on the session is ended when the stream is dropped.
    let mut stream = SseStream {
        guard: SessionGuard {
            broker: broker.clone(),
            client_id: client_id.clone(),
            conn: session.conn,
        },
        outbox: session.outbox,
        buf: Vec::with_capacity(BATCH),
        replayed_below: 0,
        _permit: permit,
    };
    let requests: Vec<SubscribeRequest> = filters
        .iter()
        .cloned()
        .map(|filter| SubscribeRequest {
            filter: SharedFilter { group: None, filter },
            options: SubscriptionOptions::qos(QoS::AtMostOnce),
        })
        .collect();
    let wanted = requests.len();
    let granted = broker.subscribe(client_id.clone(), session.conn, requests).await;
    if granted.len() != wanted || granted.iter().any(|g| g.is_err()) {
        tracing::warn!(client.id = %client_id, result = ?granted, "SSE subscription refused");
        return Err(unavailable());
    }
    tracing::info!(client.id = %client_id, caller = %caller_id, "SSE stream opened");
    // Subscribed first, then the recent past: nothing falls between the
    // two, and what is in both is sent once.
    let missed = match resume {
        Some(after) => stream.replay(broker.replay(after, filters).await),
        None => bytes::Bytes::new(),
    };

    let events = futures::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, actix_web::Error>(chunk), Some(stream)))
    });
    let opening = futures::stream::once(async move {
        let mut first = b": subscribed\n\n".to_vec();
        first.extend_from_slice(&missed);
        Ok(bytes::Bytes::from(first))
    });
    Ok(stream_answer().streaming(futures::StreamExt::chain(opening, events)))
}

/// The status and headers of an event stream.
fn stream_answer() -> actix_web::HttpResponseBuilder {
    let mut answer = HttpResponse::Ok();
    answer
        .content_type("text/event-stream")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .insert_header(("X-Accel-Buffering", "no"));
    answer
}

/// A one-time ticket to open an SSE stream without an `Authorization` header.
#[utoipa::path(
    tag = "topics",
    request_body = TicketRequest,
    responses(
        (status = 201, description = "A ticket for `GET /api/v1/subscribe?filter=F&ticket=T`, valid once for about a minute", body = SseTicket),
        (status = 400, description = "Invalid filter", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "The ACL forbids subscribing to this filter", content_type = "application/problem+json"),
        (status = 429, description = "Too many unused tickets; see `Retry-After`", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/subscribe/tickets")]
#[tracing::instrument(skip_all, fields(mqtt.filter = tracing::field::Empty))]
async fn create_ticket(
    state: web::Data<AppState>,
    tickets: web::Data<SseTickets>,
    caller: Caller,
    body: DeferredJson<TicketRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.read().await?;
    let filter = request.filter;
    tracing::Span::current().record("mqtt.filter", filter.as_str());
    let mut all = vec![filter.clone()];
    all.extend(request.more_filters);
    if all.len() > MAX_FILTERS {
        return Err(ApiError::UnprocessableEntity(format!(
            "at most {MAX_FILTERS} filters per stream"
        )));
    }
    for f in &all {
        allowed_filter(&state, &caller.identity, &caller.client_id, f)?;
    }
    let ticket = tickets.issue(caller.identity, caller.client_id, ticket_key(&all)).map_err(
        |e: IssueError| ApiError::TooManyRequests {
            detail: format!("{e}; use or let expire the ones issued"),
            retry_after_secs: TICKET_TTL.as_secs(),
        },
    )?;
    let expires_at = millis(std::time::SystemTime::now() + TICKET_TTL);
    Ok(HttpResponse::Created()
        // A credential, if a short-lived one: no cache may keep it.
        .insert_header(("Cache-Control", "no-store"))
        .json(SseTicket {
            ticket: ticket.expose().to_owned(),
            filter,
            expires_at: format_rfc3339(expires_at),
        }))
}

/// `raw` as a filter `identity` may stream: 400 when it is invalid or
/// shared, 403 when the ACL forbids it.
fn allowed_filter(
    state: &AppState,
    identity: &Identity,
    client_id: &ClientId,
    raw: &str,
) -> Result<TopicFilter, ApiError> {
    if raw.starts_with("$share/") {
        return Err(ApiError::BadRequest("shared subscriptions are MQTT-only".into()));
    }
    let filter = TopicFilter::parse(raw.to_owned(), state.broker.limits().topic_limits())
        .map_err(|e| ApiError::BadRequest(format!("invalid filter: {e}")))?;
    if !state.broker.auth().can_subscribe(identity, client_id, &filter) {
        return Err(ApiError::Forbidden(format!("not allowed to subscribe to {filter}")));
    }
    Ok(filter)
}

/// A client id no one can guess: 128 random bits, so no MQTT client can
/// connect under it and take the stream's session over.
fn sse_client_id() -> ClientId {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    ClientId::from(format!("sse:{}", crate::domain::to_hex(&bytes)).as_str())
}

struct SseStream {
    guard: SessionGuard,
    outbox: std::sync::Arc<Outbox>,
    buf: Vec<Delivery>,
    /// From `Last-Event-ID`: retained messages the client already had (not
    /// newer than its last event) are not sent again.
    /// On resume, deliveries numbered below this were made before the
    /// missed publishes were gathered: those are sent from the replay, or
    /// were had before (retained values too), so not again.
    replayed_below: u64,
    /// The stream's place under the caps, given back when it ends.
    _permit: StreamPermit,
}

impl SseStream {
    /// The next bytes to send: events, or a heartbeat; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<bytes::Bytes> {
        self.buf.clear();
        let next = tokio::time::timeout(
            HEARTBEAT,
            self.outbox.next(self.guard.conn, &mut self.buf, BATCH),
        )
        .await;
        match next {
            Err(_) => Some(bytes::Bytes::from_static(b": keep-alive\n\n")),
            Ok(Next::Kicked(reason)) => {
                tracing::debug!(client.id = %self.guard.client_id, ?reason, "SSE stream ended by the broker");
                None
            }
            Ok(Next::Ready) => {
                let mut out = Vec::new();
                for d in &self.buf {
                    if d.seq < self.replayed_below {
                        continue;
                    }
                    write_event(&mut out, &d.msg, d.retain, d.seq);
                    self.guard.broker.stats().sent(d.msg.payload.len());
                }
                Some(bytes::Bytes::from(out))
            }
        }
    }
}

impl SseStream {
    /// The events a resuming client missed, or a `reset` event when the
    /// broker no longer keeps them all (the client must fetch the state
    /// again; the retained values follow as for a new stream).
    fn replay(&mut self, missed: Missed) -> bytes::Bytes {
        let mut out = Vec::new();
        match missed {
            Ok(replay) => {
                for (mark, msg) in replay.messages {
                    write_event(&mut out, &msg, false, mark);
                    self.guard.broker.stats().sent(msg.payload.len());
                }
                self.replayed_below = replay.horizon;
            }
            Err(gap) => {
                out.extend_from_slice(b"event: reset\ndata: ");
                let reason = serde_json::json!({ "reason": gap.to_string() });
                serde_json::to_writer(&mut out, &reason).expect("writing to a Vec cannot fail");
                out.extend_from_slice(b"\n\n");
            }
        }
        bytes::Bytes::from(out)
    }
}

/// One `data:` event with its `id:` `{receive ms}-{seq}`: the time tells
/// whether this run of the broker saw it, the sequence number exactly which
/// publishes came after it (see [`ResumePoint`]).
fn write_event(out: &mut Vec<u8>, msg: &Message, retain: bool, seq: u64) {
    let (payload, binary) = payload_json(&msg.payload);
    let event = SseEvent {
        topic: msg.topic.to_string(),
        payload,
        payload_encoding: binary.then_some("base64"),
        retain,
        qos: msg.qos as u8,
    };
    out.extend_from_slice(format!("id: {}-{seq}\n", millis(msg.received_at)).as_bytes());
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, &event).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b"\n\n");
}

/// Ends the broker session when the stream is dropped (client gone, server
/// stopping).
struct SessionGuard {
    broker: BrokerHandle,
    client_id: ClientId,
    conn: ConnectionId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        tracing::debug!(client.id = %self.client_id, "SSE stream closed");
        self.broker.disconnect(self.client_id.clone(), self.conn, DisconnectKind::Clean, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_client_ids_carry_128_random_bits() {
        let (a, b) = (sse_client_id(), sse_client_id());
        assert_ne!(a, b);
        let hex = a.as_str().strip_prefix("sse:").unwrap();
        assert!(hex.len() == 32 && hex.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    }
}
