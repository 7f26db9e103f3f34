//! Cross-origin requests (`http.cors_origins`): a front end served from
//! another origin may call the API. Only listed origins get the CORS
//! headers; others get none, and their browsers refuse the answers. No
//! cookies are involved (credentials travel in `Authorization`), so
//! `Access-Control-Allow-Credentials` is never sent.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};

/// Methods a preflight may ask for.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// Request headers a page may send beyond the safelisted ones.
const HEADERS: &str = "authorization, content-type, if-none-match, last-event-id";
/// Response headers a page may read beyond the safelisted ones.
const EXPOSED: &str = "etag, location, retry-after";
/// Seconds a browser may keep a preflight's answer.
const MAX_AGE: &str = "600";

/// The configured origins.
#[derive(Debug, Clone, Default)]
pub struct CorsOrigins {
    any: bool,
    origins: Vec<String>,
}

impl CorsOrigins {
    pub fn new(configured: &[String]) -> Self {
        Self {
            any: configured.iter().any(|o| o == "*"),
            origins: configured.iter().filter(|o| *o != "*").cloned().collect(),
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`.
    fn allow(&self, origin: &str) -> Option<HeaderValue> {
        if self.any {
            Some(HeaderValue::from_static("*"))
        } else if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            HeaderValue::from_str(origin).ok()
        } else {
            None
        }
    }
}

/// Middleware: answers preflights from allowed origins and adds the CORS
/// headers to every answer to them, errors included.
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let allowed = req
        .app_data::<web::Data<CorsOrigins>>()
        .zip(req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()))
        .and_then(|(cors, origin)| cors.allow(origin));
    let Some(allow) = allowed else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let res = HttpResponse::build(StatusCode::NO_CONTENT)
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, METHODS))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, HEADERS))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, MAX_AGE))
            .insert_header((header::VARY, "Origin"))
            .finish();
        return Ok(req.into_response(res));
    }
    // Handler errors (problems) arrive here as responses and get the
    // headers too; only a middleware's refusal inside this one is an `Err`.
    let mut res = next.call(req).await?.map_into_boxed_body();
    let headers = res.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED));
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed() {
        let cors = CorsOrigins::new(&["https://app.example.org".into()]);
        assert_eq!(cors.allow("https://app.example.org").unwrap(), "https://app.example.org");
        assert!(cors.allow("https://evil.example.org").is_none());
        assert!(CorsOrigins::default().allow("https://app.example.org").is_none());
        assert_eq!(CorsOrigins::new(&["*".into()]).allow("https://x.org").unwrap(), "*");
    }
}
