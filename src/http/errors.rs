//! The one place where failures become HTTP responses: RFC 9457
//! `application/problem+json` with a stable `type` per kind of problem.
//! Causes are logged here and never sent to the client.

use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use super::deadline;
use crate::broker::PublishError;
use crate::domain::StoreError;
use crate::domain::{AccountError, LocationError};
use crate::identities::IdentityError;
use crate::telemetry::names;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (body, query or path); the text says how.
    #[error("{0}")]
    BadRequest(String),
    /// No valid credentials (missing, invalid, expired or revoked token, or
    /// a wrong password); answered with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("the requested resource does not exist")]
    NotFound,
    /// The path exists but not with this method; answered with `Allow`.
    #[error("{method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: String },
    /// It existed but is no longer available (e.g. a map version too old to diff).
    #[error("{0}")]
    Gone(String),
    /// The resource already exists (e.g. a taken user name).
    #[error("{0}")]
    Conflict(String),
    /// The client took longer than `http.body_timeout_ms` to send its
    /// body; the connection is closed after the answer.
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is not of the media type the endpoint reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request target is longer than the server reads.
    #[error("{0}")]
    UriTooLong(String),
    /// The request's header fields are larger than the server reads.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Well-formed, but the values are wrong (a wrong type, a missing field,
    /// a password too short); the text says which.
    #[error("{0}")]
    UnprocessableEntity(String),
    /// Too many attempts (e.g. failed sign-ins): answered with `Retry-After`.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_secs: u64 },
    /// A dependency is down or the process is stopping; the text says which.
    #[error("{0}")]
    Unavailable(String),
    /// Overloaded right now (503 with `Retry-After`): retrying shortly may work.
    #[error("{detail}")]
    Busy { detail: String, retry_after_secs: u64 },
    /// The disk under the database is full (507): retrying soon will not help.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// An RFC 9457 problem document. A 5xx answer adds `trace.id` and, for a
/// crash, `error.id`: the ids to search the logs and crash reports by.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:mapcast:problem:{code}`, stable per kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request, for a human.
    pub detail: String,
    /// The trace of the request (5xx only): search `trace.id` in the logs.
    #[serde(rename = "trace.id", skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub trace_id: Option<String>,
    /// The crash report of a panicked request (5xx only): `mapcast crashes
    /// show ID`, or `error.id` in the crash data stream.
    #[serde(rename = "error.id", skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

impl ApiError {
    /// The stable code (the last segment of `type`) and the title.
    fn code_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest(_) => ("bad-request", "The request is invalid"),
            Self::Unauthorized(_) => ("unauthorized", "Authentication required"),
            Self::Forbidden(_) => ("forbidden", "Forbidden"),
            Self::NotFound => ("not-found", "Not found"),
            Self::MethodNotAllowed { .. } => ("method-not-allowed", "Method not allowed"),
            Self::Gone(_) => ("gone", "Gone"),
            Self::Conflict(_) => ("conflict", "Conflict"),
            Self::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::PayloadTooLarge(_) => ("payload-too-large", "Payload too large"),
            Self::UriTooLong(_) => ("uri-too-long", "URI too long"),
            Self::HeadersTooLarge(_) => ("headers-too-large", "Request header fields too large"),
            Self::UnprocessableEntity(_) => ("unprocessable", "The request is invalid"),
            Self::TooManyRequests { .. } => ("too-many-requests", "Too many requests"),
            Self::Unavailable(_) => ("unavailable", "Service unavailable"),
            Self::Busy { .. } => ("busy", "Server busy"),
            Self::InsufficientStorage(_) => ("insufficient-storage", "Insufficient storage"),
            Self::Internal(_) => ("internal", "Internal error"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (code, title) = self.code_and_title();
        Problem {
            kind: format!("urn:mapcast:problem:{code}"),
            title,
            status: self.status_code().as_u16(),
            detail: self.to_string(),
            trace_id: None,
            error_id: None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Gone(_) => StatusCode::GONE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UnprocessableEntity(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(error.message = format!("{cause:#}"), "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Self::Unauthorized(_) = self {
            response.insert_header((WWW_AUTHENTICATE, r#"Bearer realm="mapcast""#));
        }
        if let Self::TooManyRequests { retry_after_secs, .. }
        | Self::Busy { retry_after_secs, .. } = self
        {
            response.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
        }
        if let Self::MethodNotAllowed { allow, .. } = self {
            response.insert_header((ALLOW, allow.as_str()));
        }
        if let Self::RequestTimeout(_) = self {
            // The rest of the body may still come; the connection cannot be reused.
            response.force_close();
        }
        response.content_type(PROBLEM_JSON).json(self.problem())
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::UsernameTaken => Self::Conflict("the username is already taken".into()),
            IdentityError::BadCredentials => Self::Unauthorized("bad user name or password".into()),
            IdentityError::UnknownUser(_) => Self::NotFound,
            IdentityError::Database(cause) => {
                tracing::error!({ names::ERROR_MESSAGE } = %cause, "identity store query failed");
                Self::Unavailable("the database is unavailable".into())
            }
            IdentityError::Busy => Self::Busy {
                detail: "the server is busy checking passwords; retry shortly".into(),
                retry_after_secs: 1,
            },
            IdentityError::LockedOut(locked) => Self::TooManyRequests {
                detail: "too many failed sign-ins; retry later".into(),
                retry_after_secs: locked.retry_after_secs(),
            },
            IdentityError::Throttled(throttled) => Self::TooManyRequests {
                detail: "too many sign-ups or sign-ins from this address; retry later".into(),
                retry_after_secs: throttled.retry_after.as_secs()
                    + u64::from(throttled.retry_after.subsec_nanos() > 0),
            },
        }
    }
}

/// A publish the broker refused: an invalid location payload is the
/// client's fault (not JSON → 400, wrong values → 422); the rest are ours.
impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::InvalidPayload(LocationError::NotJson) => {
                Self::BadRequest(format!("invalid location: {}", LocationError::NotJson))
            }
            PublishError::InvalidPayload(why) => {
                Self::UnprocessableEntity(format!("invalid location: {why}"))
            }
            PublishError::Busy => Self::Unavailable("the broker is overloaded; retry".into()),
            PublishError::Storage(StoreError::Full) => {
                Self::InsufficientStorage("the disk under the database is full".into())
            }
            PublishError::Storage(_) => Self::Unavailable("storage is unavailable; retry".into()),
            PublishError::ShuttingDown => Self::Unavailable("the broker is shutting down".into()),
        }
    }
}

/// Invalid names, passwords and kinds in a well-formed body.
impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        Self::UnprocessableEntity(e.to_string())
    }
}

/// A body that could not be read: too slow (408), or cut off or garbled.
pub fn payload_error(e: PayloadError) -> ApiError {
    if deadline::timed_out(&e) {
        ApiError::RequestTimeout("the request body did not arrive in time".into())
    } else {
        ApiError::BadRequest(format!("cannot read the body: {e}"))
    }
}

/// Query-string failures as problems, in the client's terms: the
/// framework's prefix and Rust type names are replaced.
pub fn query_error(err: actix_web::error::QueryPayloadError) -> actix_web::Error {
    let actix_web::error::QueryPayloadError::Deserialize(e) = err else {
        return ApiError::BadRequest("invalid query string".into()).into();
    };
    ApiError::BadRequest(format!("invalid query string: {}", plain_words(&e.to_string()))).into()
}

/// Path-segment failures as problems, in the client's terms.
pub fn path_error(err: actix_web::error::PathError) -> actix_web::Error {
    let actix_web::error::PathError::Deserialize(e) = err else {
        return ApiError::BadRequest("invalid path".into()).into();
    };
    ApiError::BadRequest(format!("invalid path: {}", plain_words(&e.to_string()))).into()
}

/// serde's wording for values, without Rust type names (`u64`, `struct
/// MapParams`): a client knows numbers, text and objects.
pub fn plain_words(msg: &str) -> String {
    const NAMES: [(&str, &str); 14] = [
        ("u8", "a small whole number"),
        ("u16", "a whole number"),
        ("u32", "a whole number"),
        ("u64", "a whole number"),
        ("usize", "a whole number"),
        ("i8", "a small integer"),
        ("i16", "an integer"),
        ("i32", "an integer"),
        ("i64", "an integer"),
        ("isize", "an integer"),
        ("f32", "a number"),
        ("f64", "a number"),
        ("bool", "true or false"),
        ("char", "a character"),
    ];
    let mut out = Vec::new();
    let mut words = msg.split(' ').peekable();
    while let Some(word) = words.next() {
        let bare = word.trim_end_matches([',', '.', ';', ':']);
        let tail = &word[bare.len()..];
        if let Some((_, plain)) = NAMES.iter().find(|(rust, _)| *rust == bare) {
            // "a u64" / "an i32": the article goes with the replacement.
            if matches!(out.last().map(String::as_str), Some("a" | "an")) {
                out.pop();
            }
            out.push(format!("{plain}{tail}"));
        } else if matches!(bare, "struct" | "enum" | "tuple" | "variant")
            && words.peek().is_some_and(|next| next.starts_with(char::is_uppercase))
        {
            let name = words.next().unwrap_or_default();
            let tail = &name[name.trim_end_matches([',', '.', ';', ':']).len()..];
            out.push(format!(
                "{}{tail}",
                if bare == "enum" { "one of the allowed values" } else { "a set of fields" }
            ));
        } else {
            out.push(word.to_owned());
        }
    }
    out.join(" ")
}

/// JSON body failures: not JSON at all → 400, not `application/json` → 415,
/// too big → 413, valid JSON of the wrong shape (wrong type, missing field)
/// → 422, too slow → 408.
pub fn json_error(err: JsonPayloadError) -> actix_web::Error {
    json_problem(err).into()
}

/// The problem [`json_error`] answers with.
pub fn json_problem(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::Payload(e) => payload_error(e),
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("the body must be application/json".into())
        }
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge(format!("the body is larger than {limit} bytes"))
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::UnprocessableEntity(format!("invalid body: {}", without_value(&e)))
        }
        JsonPayloadError::Deserialize(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// serde's message for a body of the wrong shape, without the offending
/// value: a password sent as a number must not come back in the error body.
/// Field names (missing, unknown) stay: they are the schema's or the client's
/// keys, never values.
fn without_value(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let msg = full.split(" at line ").next().unwrap_or(&full);
    let redacted = ["invalid type", "invalid value", "invalid length", "unknown variant"]
        .into_iter()
        .find(|head| msg.starts_with(head))
        .map(|head| match msg.split_once(", expected ") {
            Some((_, expected)) => format!("{head}, expected {expected}"),
            None => head.to_owned(),
        });
    let msg = redacted.as_deref().unwrap_or(msg);
    format!("{msg} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;

    use super::*;

    #[test]
    fn shape_errors_name_the_expectation_not_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code, reason = "only deserialised")]
        struct Login {
            username: String,
            password: String,
            role: Option<Role>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            Admin,
        }
        for (body, secret, kept) in [
            (r#"{"username":"ann","password":98765431}"#, "98765431", "expected a string"),
            (r#"{"username":"ann","password":["hunter2x"]}"#, "hunter2x", "expected a string"),
            (r#"{"username":"ann","password":"p","role":"s3cr3t-role"}"#, "s3cr3t-role", "admin"),
            (r#"{"username":"ann"}"#, "", "missing field `password`"),
        ] {
            let e = serde_json::from_str::<Login>(body).unwrap_err();
            let text = without_value(&e);
            assert!(secret.is_empty() || !text.contains(secret), "{text}");
            assert!(text.contains(kept), "{text}");
            assert!(text.contains(" at line 1 column "), "{text}");
        }
    }

    #[actix_web::test]
    async fn errors_render_as_problem_json_without_their_cause() {
        let err = ApiError::Internal(anyhow::anyhow!("password=hunter2 rejected"));
        let resp = err.error_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers().get("content-type").unwrap(), PROBLEM_JSON);
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(resp.into_body()).await.unwrap()).unwrap();
        assert_eq!(body["type"], "urn:mapcast:problem:internal");
        assert_eq!(body["status"], 500);
        assert!(!body.to_string().contains("hunter2"));
    }

    #[actix_web::test]
    async fn a_lockout_is_429_with_retry_after() {
        let locked = crate::identities::lockout::Locked {
            scope: crate::identities::lockout::LockScope::Identity,
            retry_after: std::time::Duration::from_millis(1500),
        };
        let resp = ApiError::from(IdentityError::LockedOut(locked)).error_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers().get(RETRY_AFTER).unwrap(), "2");
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(resp.into_body()).await.unwrap()).unwrap();
        assert_eq!(body["type"], "urn:mapcast:problem:too-many-requests");
    }

    #[actix_web::test]
    async fn unauthorized_asks_for_a_bearer_token() {
        let resp = ApiError::Unauthorized("sign in".into()).error_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let challenge = resp.headers().get(WWW_AUTHENTICATE).unwrap().to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(resp.into_body()).await.unwrap()).unwrap();
        assert_eq!(body["type"], "urn:mapcast:problem:unauthorized");
    }
}
