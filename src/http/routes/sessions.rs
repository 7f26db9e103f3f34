//! `/api/v1/sessions`: sign in for a bearer token, see who a token is, sign out.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::broker::Revocation;
use crate::domain::Role;
use crate::domain::time::format_rfc3339;
use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::state::AppState;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_session).service(current_session).service(delete_session);
}

#[derive(Deserialize, ToSchema)]
pub struct SignIn {
    #[schema(example = "ann")]
    username: String,
    #[schema(example = "correct horse battery")]
    password: String,
}

// Hand-written: the password must never reach a log line.
impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn").field("username", &self.username).finish_non_exhaustive()
    }
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    /// Send as `Authorization: Bearer TOKEN`, or as the MQTT password.
    token: String,
    /// RFC 3339.
    expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    /// The user's id.
    id: String,
    username: String,
    /// `user` or `admin`.
    #[schema(value_type = String)]
    role: Role,
    /// Ids of the devices this user owns.
    devices: Vec<String>,
}

/// Sign in: a bearer token for the REST API and MQTT.
#[utoipa::path(
    tag = "identities",
    request_body = SignIn,
    responses(
        (status = 201, description = "A bearer token", body = Session),
        (status = 400, description = "Malformed JSON", content_type = "application/problem+json"),
        (status = 401, description = "Wrong user name or password", content_type = "application/problem+json"),
        (status = 422, description = "Wrong or missing fields", content_type = "application/problem+json"),
        (status = 429, description = "Too many failed sign-ins for this user name from this address, or from this address; or too many sign-ins from this address at all; see `Retry-After`", content_type = "application/problem+json"),
        (status = 503, description = "Server busy checking passwords; see `Retry-After`", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/sessions")]
#[tracing::instrument(skip_all)]
async fn create_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SignIn>,
) -> Result<HttpResponse, ApiError> {
    // The socket's peer, not `X-Forwarded-For`: a header any client can
    // forge must not pick the address its failures are counted against.
    let from = req.peer_addr().map(|a| a.ip());
    state.identities.throttle(from)?;
    let issued = state.identities.login(&body.username, &body.password, from).await?;
    Ok(HttpResponse::Created()
        // A token is a credential: no cache may keep it.
        .insert_header(("Cache-Control", "no-store"))
        .json(Session {
            token: issued.token.expose().to_owned(),
            expires_at: format_rfc3339(issued.expires_at),
        }))
}

/// Who the bearer token belongs to.
#[utoipa::path(
    tag = "identities",
    responses(
        (status = 200, description = "The signed-in user", body = Me),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/sessions/current")]
#[tracing::instrument(skip_all)]
async fn current_session(caller: Caller) -> Result<HttpResponse, ApiError> {
    let id = caller.require_user()?.to_owned();
    let who = caller.identity;
    Ok(HttpResponse::Ok().json(Me {
        id,
        username: who.username.unwrap_or_default(),
        role: who.role,
        devices: who.owned_devices,
    }))
}

/// Sign out: revoke the bearer token of this request.
#[utoipa::path(
    tag = "identities",
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/sessions/current")]
#[tracing::instrument(skip_all)]
async fn delete_session(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = caller.token() else {
        return Err(ApiError::Unauthorized("sign in: send Authorization: Bearer TOKEN".into()));
    };
    state.identities.revoke_token(token).await?;
    state.broker.revoke(Revocation::Token(crate::identities::token_id(token).into())).await;
    Ok(HttpResponse::NoContent().finish())
}
