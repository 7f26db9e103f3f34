//! `/api/v1/users`: sign-up (open unless `auth.self_registration = false`),
//! and user management for admins.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::broker::Revocation;
use crate::domain::Principal;
use crate::domain::Role;
use crate::domain::time::format_rfc3339;
use crate::domain::{Password, Username};
use crate::http::auth::{Caller, OptionalCaller};
use crate::http::errors::ApiError;
use crate::http::payload::DeferredJson;
use crate::http::state::AppState;
use crate::identities::User;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_user).service(list_users).service(delete_user).service(set_password);
}

#[derive(Deserialize, ToSchema)]
pub struct NewUser {
    /// 3–64 letters, digits, `_`, `.` or `-`.
    #[schema(example = "ann", min_length = 3, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")]
    username: String,
    /// At least 8 characters.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 1024)]
    password: String,
    /// `user` (the default) or `admin`; only an admin may create admins.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "user")]
    role: Option<Role>,
}

impl NewUser {
    /// `user` (the default) or `admin`; no other role is created here.
    pub(super) fn role(&self) -> Result<Role, ApiError> {
        match self.role.unwrap_or(Role::User) {
            role @ (Role::User | Role::Admin) => Ok(role),
            other => Err(ApiError::UnprocessableEntity(format!(
                "role must be \"user\" or \"admin\", not {:?}",
                other.as_str()
            ))),
        }
    }

    pub(super) fn credentials(self) -> Result<(Username, Password), ApiError> {
        Ok((Username::parse(self.username)?, Password::parse(self.password)?))
    }
}

// Hand-written: the password must never reach a log line.
impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The answer to a sign-up: `{"id","username","role"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    id: String,
    username: String,
    /// `user` or `admin`.
    #[schema(value_type = String)]
    role: Role,
}

/// A user in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    id: String,
    username: String,
    /// `user` or `admin`.
    #[schema(value_type = String)]
    role: Role,
    /// RFC 3339.
    created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            created_at: format_rfc3339(u.created_at),
            id: u.id,
            username: u.username,
            role: u.role,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    items: Vec<UserView>,
}

/// Sign up (open unless `auth.self_registration = false`; then admins only).
#[utoipa::path(
    tag = "identities",
    request_body = NewUser,
    responses(
        (status = 201, description = "The user", body = CreatedUser),
        (status = 400, description = "Malformed JSON", content_type = "application/problem+json"),
        (status = 401, description = "An invalid token, or sign-up needs an admin", content_type = "application/problem+json"),
        (status = 403, description = "Only admins create admins (or any user, when self-registration is off)", content_type = "application/problem+json"),
        (status = 409, description = "The username is taken", content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", content_type = "application/problem+json"),
        (status = 422, description = "Wrong fields, a short password or an invalid username", content_type = "application/problem+json"),
        (status = 429, description = "Too many sign-ups or sign-ins from this address; see `Retry-After`", content_type = "application/problem+json"),
        (status = 503, description = "Server busy hashing passwords; see `Retry-After`", content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/users")]
#[tracing::instrument(skip_all)]
async fn create_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    OptionalCaller(caller): OptionalCaller,
    body: DeferredJson<NewUser>,
) -> Result<HttpResponse, ApiError> {
    if !state.identities.settings().self_registration {
        caller.require_admin()?;
    }
    // Strangers' sign-ups count against the socket's peer before any
    // hashing (see sign-in); an admin's scripts are not throttled.
    if !caller.identity.is_admin() {
        state.identities.throttle(req.peer_addr().map(|a| a.ip()))?;
    }
    let body = body.read().await?;
    let role = body.role()?;
    if role == Role::Admin {
        caller.require_admin()?;
    }
    let (username, password) = body.credentials()?;

    let user = state.identities.register_user(username, password, role).await?;

    Ok(HttpResponse::Created().json(CreatedUser { id: user.id, username: user.username, role }))
}

/// Every user (admins only).
#[utoipa::path(
    tag = "identities",
    responses(
        (status = 200, description = "Every user, oldest first", body = UserList),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/users")]
#[tracing::instrument(skip_all)]
async fn list_users(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let users = state.identities.users().await?;
    Ok(HttpResponse::Ok().json(UserList { items: users.into_iter().map(UserView::from).collect() }))
}

/// Delete a user with its devices and tokens (admins only). The last admin
/// stays: without one, nobody could manage users or flags over the API.
#[utoipa::path(
    tag = "identities",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
        (status = 404, description = "No such user", content_type = "application/problem+json"),
        (status = 409, description = "The user is the last admin", content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/users/{id}")]
#[tracing::instrument(skip_all, fields(user.id = %id))]
async fn delete_user(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let users = state.identities.users().await?;
    let target = users.iter().find(|u| u.id == *id).ok_or(ApiError::NotFound)?;
    if target.role == Role::Admin && users.iter().filter(|u| u.role == Role::Admin).count() < 2 {
        return Err(ApiError::Conflict(
            "the last admin cannot be deleted; make another user admin first".into(),
        ));
    }
    // The store re-checks inside its transaction: two admins deleting each
    // other at once leave one (the second delete finds nothing to delete).
    let devices = state.identities.device_ids_of(&id).await?;
    if state.identities.delete_user(&id).await? {
        // The user's devices went with it (the store cascades).
        let gone = std::iter::once(Principal::user(&id))
            .chain(devices.iter().map(|d| Principal::device(d)));
        for principal in gone {
            state.broker.revoke(Revocation::Principal(principal)).await;
        }
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// At least 8 characters.
    #[schema(example = "correct horse battery staple")]
    password: String,
}

// Hand-written: the password must never reach a log line.
impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPassword").finish_non_exhaustive()
    }
}

/// Set a user's password (the user themself or an admin). Tokens already
/// issued stay valid; sign-ins with the old password fail at once.
#[utoipa::path(
    tag = "identities",
    params(("id" = String, Path, description = "User id")),
    request_body = NewPassword,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "Malformed JSON", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Another user, and not an admin", content_type = "application/problem+json"),
        (status = 404, description = "No such user", content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", content_type = "application/problem+json"),
        (status = 422, description = "A short password or wrong fields", content_type = "application/problem+json"),
        (status = 503, description = "Server busy hashing passwords; see `Retry-After`", content_type = "application/problem+json"),
    )
)]
#[put("/api/v1/users/{id}/password")]
#[tracing::instrument(skip_all, fields(user.id = %id))]
async fn set_password(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: DeferredJson<NewPassword>,
) -> Result<HttpResponse, ApiError> {
    if caller.require_user()? != id.as_str() {
        caller.require_admin()?;
    }
    let password = Password::parse(body.read().await?.password)?;
    if state.identities.set_password(&id, password).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}
