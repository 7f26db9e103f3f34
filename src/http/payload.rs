//! Wire details shared by the resources: bodies read under the broker's
//! payload limit, JSON bodies read after the caller is checked, payloads
//! shown as JSON, content types guessed, conditional requests and gzip
//! negotiation.

use std::future::{Ready, ready};
use std::marker::PhantomData;

use actix_web::http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, HeaderValue, IF_NONE_MATCH,
};
use actix_web::{FromRequest, HttpRequest, dev, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use ntex::util::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::errors::{ApiError, json_problem, payload_error};

/// Largest JSON body a [`DeferredJson`] reads (actix's default for `Json`).
const JSON_LIMIT: usize = 2 * 1024 * 1024;

/// The request body as sent, refused with 413 past `limit` bytes (before
/// reading it when `Content-Length` says so), and with 415 when it carries a
/// `Content-Encoding` other than `identity`: it would be stored encoded and
/// served back as if it were not.
pub async fn read_body(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(coding) = req.headers().get(CONTENT_ENCODING).filter(|v| !is_identity(v)) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {:?} is not accepted; send the payload unencoded",
            coding.to_str().unwrap_or("(not text)")
        )));
    }
    let too_large = || ApiError::PayloadTooLarge(format!("the body is larger than {limit} bytes"));
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(payload_error)?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn is_identity(coding: &HeaderValue) -> bool {
    coding.to_str().is_ok_and(|c| c.trim().eq_ignore_ascii_case("identity"))
}

/// A JSON body read only when the handler asks, once it has checked the
/// caller. As a plain `Json` argument the body would be read alongside the
/// bearer token's lookup, and a stranger's malformed body answered 400 or
/// 422 before the 401 or 403 it has earned.
pub struct DeferredJson<T> {
    req: HttpRequest,
    payload: dev::Payload,
    body: PhantomData<T>,
}

impl<T: DeserializeOwned> DeferredJson<T> {
    /// Read and parse the body, with the problems `Json` answers with.
    pub async fn read(mut self) -> Result<T, ApiError> {
        web::JsonBody::new(&self.req, &mut self.payload, None, true)
            .limit(JSON_LIMIT)
            .await
            .map_err(json_problem)
    }
}

impl<T> FromRequest for DeferredJson<T> {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut dev::Payload) -> Self::Future {
        ready(Ok(Self { req: req.clone(), payload: payload.take(), body: PhantomData }))
    }
}

/// A payload as a JSON value: itself when it is JSON, a string when it is
/// other UTF-8 text, else base64 (with `binary` set for the caller to say so).
pub fn payload_json(payload: &[u8]) -> (Value, bool) {
    if let Ok(v) = serde_json::from_slice::<Value>(payload) {
        return (v, false);
    }
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.to_owned()), false),
        Err(_) => (Value::String(STANDARD.encode(payload)), true),
    }
}

/// The content type to serve a payload with when the publisher named none.
pub fn sniff_content_type(payload: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// Whether `If-None-Match` names `etag` (or `*`); weak tags compare equal.
pub fn if_none_match(req: &HttpRequest, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    req.headers()
        .get_all(IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(strip).any(|t| t == "*" || t == strip(etag)))
}

/// Whether the client accepts a gzip-encoded response.
pub fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers().get_all(ACCEPT_ENCODING).filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
    })
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn payloads_show_as_json_text_or_base64() {
        assert_eq!(payload_json(br#"{"a":1}"#), (serde_json::json!({"a": 1}), false));
        assert_eq!(payload_json(b"on"), (Value::String("on".into()), false));
        assert_eq!(payload_json(&[0xff, 0x00]), (Value::String("/wA=".into()), true));
        assert_eq!(sniff_content_type(b"[1,2]"), "application/json");
        assert_eq!(sniff_content_type(b"on"), "application/octet-stream");
    }

    #[test]
    fn conditional_and_encoding_headers_are_understood() {
        let req = TestRequest::default()
            .insert_header((IF_NONE_MATCH, "\"a\", W/\"7\""))
            .to_http_request();
        assert!(if_none_match(&req, "\"7\""));
        assert!(!if_none_match(&req, "\"8\""));
        let any = TestRequest::default().insert_header((IF_NONE_MATCH, "*")).to_http_request();
        assert!(if_none_match(&any, "\"8\""));

        let gz = TestRequest::default()
            .insert_header((ACCEPT_ENCODING, "br, gzip;q=0.8"))
            .to_http_request();
        assert!(accepts_gzip(&gz));
        let no = TestRequest::default()
            .insert_header((ACCEPT_ENCODING, "gzip;q=0, br"))
            .to_http_request();
        assert!(!accepts_gzip(&no));
        assert!(!accepts_gzip(&TestRequest::default().to_http_request()));
    }
}
