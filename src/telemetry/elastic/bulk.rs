//! The `_bulk` wire format and the retry matrix, as pure functions.
//!
//! | answer | what happens |
//! |---|---|
//! | item 200/201, or 409 (our `_id` exists: written before) | written |
//! | item 429, or item 5xx | retried alone, with exponential backoff |
//! | item 400/404 (and any other 4xx) | dead-lettered locally, counted |
//! | request 502/503/504, 429, timeout, connection error | whole request retried later (spool) |
//! | request 401/403 | kept (spool), logged once a minute, backoff |
//! | request other 4xx | dead-lettered (the request itself is wrong) |

use serde::Deserialize;
use serde_json::Value;

use super::{Doc, Indices};

/// `Content-Type` of a `_bulk` request.
pub const NDJSON: &str = "application/x-ndjson";

/// The NDJSON body: a `create` action line and the document line per doc,
/// every line ending in `\n`.
pub fn body(docs: &[Doc], indices: &Indices) -> String {
    let mut out = String::with_capacity(docs.iter().map(|d| d.body.len() + 96).sum());
    for doc in docs {
        let action =
            serde_json::json!({ "create": { "_index": indices.of(doc.stream), "_id": doc.id } });
        out.push_str(&action.to_string());
        out.push('\n');
        out.push_str(doc.body.trim_end_matches('\n'));
        out.push('\n');
    }
    out
}

/// What to do with one document after a `_bulk` answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    Written,
    Retry,
    DeadLetter { status: u16, error: Value },
}

/// What to do with a whole request after its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// 2xx: look at the items.
    Items,
    /// Try the whole request again later.
    Retry,
    /// Credentials refused: keep the documents, back off, alert.
    AuthFailed,
    /// The request itself is refused: dead-letter every document.
    DeadLetter,
}

pub fn classify_status(status: u16) -> RequestOutcome {
    match status {
        200..=299 => RequestOutcome::Items,
        401 | 403 => RequestOutcome::AuthFailed,
        408 | 429 | 500..=599 => RequestOutcome::Retry,
        _ => RequestOutcome::DeadLetter,
    }
}

pub fn classify_item(status: u16, error: Option<&Value>) -> ItemOutcome {
    match status {
        200..=299 | 409 => ItemOutcome::Written,
        429 | 500..=599 => ItemOutcome::Retry,
        _ => ItemOutcome::DeadLetter { status, error: error.cloned().unwrap_or(Value::Null) },
    }
}

#[derive(Deserialize)]
struct Response {
    items: Vec<Value>,
}

/// The outcome of each document of a 2xx `_bulk` answer, in order; `None`
/// when the answer cannot be matched to the request (retry it all).
pub fn parse_items(body: &[u8], expected: usize) -> Option<Vec<ItemOutcome>> {
    let response: Response = serde_json::from_slice(body).ok()?;
    if response.items.len() != expected {
        return None;
    }
    response
        .items
        .iter()
        .map(|item| {
            // `{"create": {"status": 201, ...}}`: one key, the action.
            let result = item.as_object()?.values().next()?;
            let status = u16::try_from(result.get("status")?.as_u64()?).ok()?;
            Some(classify_item(status, result.get("error")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::telemetry::elastic::Stream;

    fn doc(stream: Stream, id: &str) -> Doc {
        Doc { stream, id: id.into(), body: format!("{{\"@timestamp\":\"t\",\"n\":\"{id}\"}}") }
    }

    #[test]
    fn the_body_pairs_create_actions_with_documents_and_ends_every_line() {
        let indices = Indices::new("default", false);
        let body = body(&[doc(Stream::App, "a"), doc(Stream::Crash, "b")], &indices);
        let lines: Vec<_> = body.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.ends_with('\n')));
        let action: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(action, json!({"create": {"_index": "logs-mapcast.crash-default", "_id": "b"}}));
    }

    #[test]
    fn plain_indices_avoid_data_stream_names() {
        let i = Indices::new("ci", true);
        assert_eq!(i.of(Stream::Crash), "mapcast-logs-crash-ci");
        assert_eq!(Indices::new("ci", false).of(Stream::Metrics), "metrics-mapcast.broker-ci");
    }

    #[test]
    fn the_retry_matrix() {
        assert_eq!(classify_status(200), RequestOutcome::Items);
        for s in [429, 502, 503, 504, 500] {
            assert_eq!(classify_status(s), RequestOutcome::Retry, "{s}");
        }
        assert_eq!(classify_status(401), RequestOutcome::AuthFailed);
        assert_eq!(classify_status(403), RequestOutcome::AuthFailed);
        assert_eq!(classify_status(400), RequestOutcome::DeadLetter);
        assert_eq!(classify_item(201, None), ItemOutcome::Written);
        assert_eq!(classify_item(409, None), ItemOutcome::Written, "409 = written before");
        assert_eq!(classify_item(429, None), ItemOutcome::Retry);
        assert_eq!(classify_item(503, None), ItemOutcome::Retry);
        assert!(matches!(classify_item(400, None), ItemOutcome::DeadLetter { status: 400, .. }));
        assert!(matches!(classify_item(404, None), ItemOutcome::DeadLetter { status: 404, .. }));
    }

    #[test]
    fn items_are_matched_in_order_and_a_short_answer_is_refused() {
        let answer = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception"}}},
        ]})
        .to_string();
        let items = parse_items(answer.as_bytes(), 3).unwrap();
        assert_eq!(items[0], ItemOutcome::Written);
        assert_eq!(items[1], ItemOutcome::Retry);
        assert!(matches!(&items[2], ItemOutcome::DeadLetter { status: 400, error }
            if error["type"] == "mapper_parsing_exception"));
        assert!(parse_items(answer.as_bytes(), 4).is_none());
        assert!(parse_items(b"not json", 3).is_none());
    }
}
