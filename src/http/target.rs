//! A request target must be UTF-8 once percent-decoded. actix decodes
//! `%FF` in a path or query to U+FFFD, so `/api/v1/topics/a%FF` would name
//! the topic `a\u{FFFD}`, which no MQTT client can publish to (MQTT refuses
//! the same bytes as malformed): such requests get a 400 problem instead.
//!
//! Targets and header sections past what any client of this API sends get
//! a 414 or 431 problem here; only heads past the HTTP codec's own buffer
//! (128 KiB) are refused before they reach the application, with a bare 431.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use percent_encoding::percent_decode_str;

use super::errors::ApiError;

/// Longest request target (path and query) read by default, in bytes.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// The longest request target this server reads: room for the longest
/// topic (`broker.max_topic_len`) percent-encoded (three bytes a byte),
/// and at least [`MAX_TARGET_BYTES`].
#[derive(Debug, Clone, Copy)]
pub struct TargetLimit(pub usize);

impl TargetLimit {
    pub fn for_topics(max_topic_len: usize) -> Self {
        Self(MAX_TARGET_BYTES.max(max_topic_len.saturating_mul(3).saturating_add(1024)))
    }
}
/// Largest header section read (names and values), in bytes.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Middleware: 414 for a target longer than the [`TargetLimit`], 431 for
/// headers past [`MAX_HEADER_BYTES`], 400 for a path or query that is not
/// UTF-8 once decoded.
pub async fn require_utf8(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let limit = req.app_data::<web::Data<TargetLimit>>().map_or(MAX_TARGET_BYTES, |l| l.0);
    if target > limit {
        return Err(ApiError::UriTooLong(format!(
            "the request target is {target} bytes; at most {limit} are read"
        ))
        .into());
    }
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "the header fields are {headers} bytes; at most {MAX_HEADER_BYTES} are read"
        ))
        .into());
    }
    for (part, raw) in [("path", uri.path()), ("query", uri.query().unwrap_or_default())] {
        if percent_decode_str(raw).decode_utf8().is_err() {
            return Err(ApiError::BadRequest(format!(
                "the {part} is not UTF-8 once percent-decoded"
            ))
            .into());
        }
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use actix_web::test::{TestRequest, init_service, try_call_service};
    use actix_web::{App, HttpResponse, middleware::from_fn, web};

    use super::*;

    #[test]
    fn the_target_limit_leaves_room_for_the_longest_topic_encoded() {
        assert_eq!(TargetLimit::for_topics(1024).0, MAX_TARGET_BYTES);
        assert_eq!(TargetLimit::for_topics(16_000).0, 3 * 16_000 + 1024);
        assert_eq!(TargetLimit::for_topics(usize::MAX).0, usize::MAX);
    }

    #[actix_web::test]
    async fn overlong_targets_and_headers_are_refused_with_their_status() {
        let app = init_service(
            App::new()
                .app_data(web::Data::new(TargetLimit(100)))
                .wrap(from_fn(require_utf8))
                .default_service(web::to(|| async { HttpResponse::Ok().finish() })),
        )
        .await;
        let status = |req| async {
            match try_call_service(&app, req).await {
                Ok(resp) => resp.status().as_u16(),
                Err(e) => e.as_response_error().status_code().as_u16(),
            }
        };
        let ok = format!("/{}", "a".repeat(99));
        let long = format!("/{}", "a".repeat(100));
        assert_eq!(status(TestRequest::get().uri(&ok).to_request()).await, 200);
        assert_eq!(status(TestRequest::get().uri(&long).to_request()).await, 414);
        let big = "b".repeat(MAX_HEADER_BYTES);
        let req = TestRequest::get().uri("/").insert_header(("x-pad", big)).to_request();
        assert_eq!(status(req).await, 431);
    }

    #[actix_web::test]
    async fn percent_encoded_bytes_must_decode_to_utf8() {
        let app = init_service(
            App::new()
                .wrap(from_fn(require_utf8))
                .default_service(web::to(|| async { HttpResponse::Ok().finish() })),
        )
        .await;
        for (uri, status) in [
            ("/api/v1/topics/caf%C3%A9", 200),
            ("/api/v1/subscribe?filter=a%2F%2B", 200),
            ("/api/v1/topics/a%FF", 400),
            ("/api/v1/topics/a%C3", 400),
            ("/api/v1/subscribe?filter=a%FF", 400),
        ] {
            let got = match try_call_service(&app, TestRequest::get().uri(uri).to_request()).await {
                Ok(resp) => resp.status(),
                Err(e) => e.as_response_error().status_code(),
            };
            assert_eq!(got.as_u16(), status, "{uri}");
        }
    }
}
