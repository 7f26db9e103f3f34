//! Authentication and authorisation hook, called on CONNECT, PUBLISH and SUBSCRIBE.
//!
//! Transports build [`Credentials`] from the wire and ask; the broker core and
//! the REST API use the same [`Authenticator`], so ACLs hold over every protocol.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{ClientId, Identity, Role, Secret, TopicFilter, TopicName};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a client presented at CONNECT. The password is never logged.
pub struct Credentials {
    pub client_id: ClientId,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub peer: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("bad user name or password")]
    BadCredentials,
    #[error("not authorized")]
    NotAuthorized,
    #[error("authentication backend unavailable")]
    Unavailable,
    /// The user name or the client's address is locked out after repeated
    /// failures; the secret was not checked.
    #[error("too many failed sign-ins")]
    TooManyAttempts,
    /// Password checking is saturated; the secret was not checked.
    #[error("server busy")]
    Busy,
}

pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, Result<Identity, AuthError>>;
    fn can_publish(&self, who: &Identity, client_id: &ClientId, topic: &TopicName) -> bool;
    fn can_subscribe(&self, who: &Identity, client_id: &ClientId, filter: &TopicFilter) -> bool;
}

pub type SharedAuthenticator = Arc<dyn Authenticator>;

/// A user defined in the config file, with an argon2 PHC password hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUser {
    pub username: String,
    /// `$argon2id$...` PHC string, e.g. from `mapcast hash-password`.
    pub password_hash: String,
    #[serde(default)]
    pub role: Role,
}

/// Anonymous policy plus users from the config file.
pub struct ConfigAuthenticator {
    allow_anonymous: bool,
    users: Vec<ConfigUser>,
}

impl ConfigAuthenticator {
    pub fn new(allow_anonymous: bool, users: Vec<ConfigUser>) -> Self {
        Self { allow_anonymous, users }
    }

    /// The config-file user named `username`.
    pub fn user(&self, username: &str) -> Option<&ConfigUser> {
        self.users.iter().find(|u| u.username == username)
    }
}

impl Authenticator for ConfigAuthenticator {
    fn authenticate<'a>(
        &'a self,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            let Some(username) = &creds.username else {
                return if self.allow_anonymous {
                    Ok(Identity::anonymous())
                } else {
                    Err(AuthError::NotAuthorized)
                };
            };
            let Some(user) = self.users.iter().find(|u| &u.username == username) else {
                return Err(AuthError::BadCredentials);
            };
            let Some(password) = creds.password.clone() else {
                return Err(AuthError::BadCredentials);
            };
            let hash = user.password_hash.clone();
            // argon2 is deliberately slow: keep it off the connection's thread.
            let ok = tokio::task::spawn_blocking(move || verify_password(password.expose(), &hash))
                .await
                .map_err(|_| AuthError::Unavailable)?;
            if ok {
                Ok(Identity::configured(user.username.clone(), user.role))
            } else {
                Err(AuthError::BadCredentials)
            }
        })
    }

    fn can_publish(&self, _who: &Identity, _client_id: &ClientId, topic: &TopicName) -> bool {
        // `$SYS` and the map belong to the server; other `$` topics are the
        // clients' (as in Mosquitto), only never matched by wildcards.
        !topic.is_server_owned()
    }

    fn can_subscribe(&self, _who: &Identity, _client_id: &ClientId, _filter: &TopicFilter) -> bool {
        true
    }
}

/// Check `password` against an argon2 PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(phc) {
        Ok(parsed) => {
            argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
        }
        Err(_) => false,
    }
}

/// Hash a password as an argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with default params cannot fail")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>, pass: Option<&str>) -> Credentials {
        Credentials {
            client_id: ClientId::from("c1"),
            username: user.map(str::to_owned),
            password: pass.map(Secret::new),
            peer: None,
        }
    }

    #[tokio::test]
    async fn config_users_are_checked_against_argon2_hashes() {
        let auth = ConfigAuthenticator::new(
            false,
            vec![ConfigUser {
                username: "ann".into(),
                password_hash: hash_password("s3cret"),
                role: Role::Admin,
            }],
        );
        let id = auth.authenticate(&creds(Some("ann"), Some("s3cret"))).await.unwrap();
        assert_eq!(id.role, Role::Admin);
        assert_eq!(
            auth.authenticate(&creds(Some("ann"), Some("nope"))).await.unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            auth.authenticate(&creds(Some("bob"), Some("s3cret"))).await.unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            auth.authenticate(&creds(None, None)).await.unwrap_err(),
            AuthError::NotAuthorized
        );
    }

    #[tokio::test]
    async fn anonymous_is_allowed_only_when_configured() {
        let auth = ConfigAuthenticator::new(true, vec![]);
        assert_eq!(auth.authenticate(&creds(None, None)).await.unwrap().role, Role::Anonymous);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"[redacted]\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
    }
}
