//! `/api/v1/lockouts`: admins lift sign-in lockouts (see
//! `identities::lockout`), by user name or by address.

use std::net::IpAddr;

use actix_web::{HttpResponse, delete, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::auth::Caller;
use crate::http::errors::ApiError;
use crate::http::state::AppState;

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(lift_lockouts);
}

/// Exactly one of the two.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiftQuery {
    /// A user name (or device id): its lockouts from every address end.
    username: Option<String>,
    /// An IP address (IPv6: its /64): its own lockout and those of every
    /// name tried from it end.
    address: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LiftedLockouts {
    /// Lockouts that were in force and are lifted.
    lifted: usize,
    /// Failure counts forgotten, lockouts included.
    cleared: usize,
}

/// Lift sign-in lockouts (admins only): the failures counted so far are
/// forgotten too. Lockouts are per (name, address) and per address; a
/// stranger's guesses never lock out the owner connecting from elsewhere.
#[utoipa::path(
    tag = "identities",
    params(LiftQuery),
    responses(
        (status = 200, description = "What was lifted (0 when nothing was locked)", body = LiftedLockouts),
        (status = 400, description = "Neither or both of `username` and `address`, or an invalid address", content_type = "application/problem+json"),
        (status = 401, description = "No valid credentials", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/lockouts")]
#[tracing::instrument(skip_all)]
async fn lift_lockouts(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<LiftQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let guard = state.identities.sign_in_guard();
    let lifted = match (&query.username, &query.address) {
        (Some(name), None) => guard.unlock_identity(name),
        (None, Some(address)) => {
            let ip: IpAddr = address.parse().map_err(|_| {
                ApiError::BadRequest(format!("address {address:?} is not an IP address"))
            })?;
            guard.unlock_address(ip)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of the query parameters username and address".into(),
            ));
        }
    };
    Ok(HttpResponse::Ok().json(LiftedLockouts { lifted: lifted.lockouts, cleared: lifted.cleared }))
}
