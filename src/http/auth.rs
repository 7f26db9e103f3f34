//! Who is calling: the [`Caller`] extractor turns `Authorization: Bearer T`
//! into the [`Identity`] the broker's ACLs decide on, so REST requests are
//! held to exactly the rules MQTT clients are.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

use crate::domain::ClientId;
use crate::domain::{Identity, Secret};
use crate::http::errors::ApiError;
use crate::http::state::AppState;

/// The authenticated caller of a request.
///
/// - `Authorization: Bearer TOKEN` → the token's user; an unknown, expired or
///   revoked token → 401 (never silently anonymous).
/// - no `Authorization` header → the anonymous identity when anonymous access
///   is allowed (`auth.allow_anonymous`), else 401.
pub struct Caller {
    pub identity: Identity,
    /// `rest:{user id}` or `rest:anonymous`: the client id REST publishes and
    /// flag evaluations are attributed to.
    pub client_id: ClientId,
    /// The bearer token presented, if any (to revoke it). Never printed.
    token: Option<Secret>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("identity", &self.identity)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Caller {
    fn new(identity: Identity, token: Option<Secret>) -> Self {
        let client_id = match &identity.user_id {
            Some(id) => ClientId::from(format!("rest:{id}").as_str()),
            None => ClientId::from("rest:anonymous"),
        };
        Self { identity, client_id, token }
    }

    /// 401 for anonymous callers, 403 for anyone but an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_user()?;
        if self.identity.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs an admin".into()))
        }
    }

    /// The id of the signed-in user; 401 for anonymous callers.
    pub fn require_user(&self) -> Result<&str, ApiError> {
        self.identity.user_id.as_deref().ok_or_else(|| {
            ApiError::Unauthorized("sign in: send Authorization: Bearer TOKEN".into())
        })
    }

    /// The bearer token this request carried.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.expose())
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        resolve(req, false)
    }
}

/// Like [`Caller`], but a request without credentials is anonymous whatever
/// the anonymous policy: for the endpoints that let people in (sign-up,
/// sign-in). A token that is sent must still be valid.
pub struct OptionalCaller(pub Caller);

impl FromRequest for OptionalCaller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let caller = resolve(req, true);
        Box::pin(async move { caller.await.map(Self) })
    }
}

fn resolve(
    req: &HttpRequest,
    always_anonymous: bool,
) -> Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let header = req.headers().get(AUTHORIZATION).map(|v| bearer_token(v.as_bytes()));
    Box::pin(async move {
        let state = state.ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("AppState is not registered with the app"))
        })?;
        let identities = &state.identities;
        match header {
            None if always_anonymous || identities.settings().allow_anonymous => {
                Ok(Caller::new(Identity::anonymous(), None))
            }
            None => Err(ApiError::Unauthorized(
                "authentication required: send Authorization: Bearer TOKEN".into(),
            )),
            Some(None) => Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer TOKEN`".into(),
            )),
            Some(Some(token)) => match identities.identity_for_token(&token).await {
                Ok(Some(identity)) => Ok(Caller::new(identity, Some(Secret::new(token)))),
                Ok(None) => {
                    Err(ApiError::Unauthorized("the token is invalid, expired or revoked".into()))
                }
                Err(e) => Err(e.into()),
            },
        }
    })
}

/// `Some(token)` for `Bearer TOKEN` (scheme case-insensitive), `None` for
/// anything else.
fn bearer_token(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_credentials_are_taken() {
        assert_eq!(bearer_token(b"Bearer abc").as_deref(), Some("abc"));
        assert_eq!(bearer_token(b"bearer   abc ").as_deref(), Some("abc"));
        assert_eq!(bearer_token(b"Basic YTpi"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"abc"), None);
    }

    #[test]
    fn rest_client_ids_name_the_user() {
        let ann = Identity::user("u1".into(), "ann".into(), crate::domain::Role::User, vec![]);
        assert_eq!(Caller::new(ann, None).client_id.as_str(), "rest:u1");
        assert_eq!(Caller::new(Identity::anonymous(), None).client_id.as_str(), "rest:anonymous");
    }
}
