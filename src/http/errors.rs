//! The one place where failures become HTTP responses: RFC 9457
//! `application/problem+json` with a stable `type` per kind of problem.
//! Causes are logged here and never sent to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (body, query or path); the text says how.
    #[error("{0}")]
    BadRequest(String),
    #[error("the requested resource does not exist")]
    NotFound,
    /// A dependency is down or the process is stopping; the text says which.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    /// The stable code (the last segment of `type`) and the title.
    fn code_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest(_) => ("bad-request", "The request is invalid"),
            Self::NotFound => ("not-found", "Not found"),
            Self::Unavailable(_) => ("unavailable", "Service unavailable"),
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
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(error.message = format!("{cause:#}"), "request failed");
        }
        HttpResponse::build(self.status_code()).content_type(PROBLEM_JSON).json(self.problem())
    }
}

/// Extractor failures (bad JSON, query or path) as problems too.
pub fn extractor_error(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::BadRequest(err.to_string()).into()
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;

    use super::*;

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
}
