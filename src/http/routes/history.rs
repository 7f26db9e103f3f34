//! `GET /api/v1/history/{topic}`: the stored messages of a topic with
//! history enabled (`history.topics`), newest first, a page at a time.

use actix_web::{HttpResponse, get, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::topics::parse_topic;
use crate::domain::TopicFilter;
use crate::domain::time::{format_rfc3339, parse_rfc3339};
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::payload::payload_json;
use crate::http::state::AppState;
use crate::store::{HistoryCursor, HistoryQuery};

/// Items per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Longest a page query may take before the answer is 503.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(get_history);
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Oldest `received_at` to include: RFC 3339 or epoch milliseconds.
    since: Option<String>,
    /// Newest `received_at` to include: RFC 3339 or epoch milliseconds.
    until: Option<String>,
    /// Items per page, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItemView {
    topic: String,
    /// The payload as JSON when it is JSON, else a string (base64 when
    /// `payload_encoding` is `base64`).
    payload: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    /// When the broker received it (RFC 3339).
    received_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPageView {
    items: Vec<HistoryItemView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last one.
    next_cursor: Option<String>,
}

/// A page of stored messages, newest first.
#[utoipa::path(
    tag = "history",
    params(("topic" = String, Path, description = "Topic name (no wildcards)"), HistoryParams),
    responses(
        (status = 200, description = "A page, newest first", body = HistoryPageView),
        (status = 400, description = "Invalid topic, time, limit or cursor", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "The ACL forbids reading this topic", content_type = "application/problem+json"),
        (status = 404, description = "History is not kept for this topic", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/history/{topic:.*}")]
#[tracing::instrument(skip_all, fields(mqtt.topic = %topic))]
async fn get_history(
    state: web::Data<AppState>,
    caller: Caller,
    topic: web::Path<String>,
    params: web::Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    let topic = parse_topic(&state, &topic)?;
    let p = params.into_inner();
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let since = p.since.as_deref().map(|s| time_param("since", s)).transpose()?;
    let until = p.until.as_deref().map(|s| time_param("until", s)).transpose()?;
    let before = p.cursor.as_deref().map(decode_cursor).transpose()?;
    if !state.history_topics.matches(&topic) {
        return Err(ApiError::NotFound);
    }
    let filter = TopicFilter::parse(topic.as_bytestring().clone(), Default::default())
        .map_err(|e| ApiError::BadRequest(format!("invalid topic: {e}")))?;
    if !state.broker.auth().can_subscribe(&caller.identity, &caller.client_id, &filter) {
        return Err(ApiError::Forbidden(format!("not allowed to read {topic}")));
    }

    let query = state.store.history_page(HistoryQuery {
        topic: topic.to_string(),
        since,
        until,
        before,
        limit,
    });
    // A database that is down makes the pool wait; the client gets its 503 sooner.
    let page = tokio::time::timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| {
            tracing::warn!("history query timed out");
            ApiError::Unavailable("the database did not answer in time".into())
        })?
        .map_err(|e| {
            tracing::warn!(error.message = %e, "history query failed");
            ApiError::Unavailable("the database is unavailable".into())
        })?;
    let items = page
        .items
        .into_iter()
        .map(|i| {
            let (payload, binary) = payload_json(&i.payload);
            HistoryItemView {
                topic: i.topic,
                payload,
                payload_encoding: binary.then_some("base64"),
                content_type: i.content_type,
                received_at: format_rfc3339(i.received_at),
            }
        })
        .collect();
    Ok(HttpResponse::Ok()
        .json(HistoryPageView { items, next_cursor: page.next.map(|c| encode_cursor(&c)) }))
}

fn time_param(name: &str, value: &str) -> Result<i64, ApiError> {
    value.parse::<i64>().ok().or_else(|| parse_rfc3339(value)).ok_or_else(|| {
        ApiError::BadRequest(format!("{name} must be an RFC 3339 time or epoch milliseconds"))
    })
}

/// Opaque to clients: base64url of `received_at` and `seq`, 8 bytes each.
fn encode_cursor(c: &HistoryCursor) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&c.received_at.to_be_bytes());
    raw[8..].copy_from_slice(&c.seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(s: &str) -> Result<HistoryCursor, ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this server issued".into());
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let raw: [u8; 16] = raw.try_into().map_err(|_| bad())?;
    let received_at = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let seq = i64::from_be_bytes(raw[8..].try_into().expect("8 bytes"));
    Ok(HistoryCursor { received_at, seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = HistoryCursor { received_at: 1_795_600_800_123, seq: 42 };
        assert_eq!(decode_cursor(&encode_cursor(&c)).unwrap(), c);
        for bad in ["", "abc", "!!!!", &URL_SAFE_NO_PAD.encode([1u8; 15])] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_epoch_millis() {
        assert_eq!(time_param("since", "1000").unwrap(), 1000);
        assert_eq!(time_param("since", "1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(time_param("since", "yesterday").is_err());
    }
}
