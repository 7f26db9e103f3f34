//! Authentication and authorisation hook, called on CONNECT, PUBLISH and SUBSCRIBE.
//!
//! Transports build [`Credentials`] from the wire and ask; the broker core and
//! the REST API use the same [`Authenticator`], so ACLs hold over every protocol.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{ClientId, TopicFilter, TopicName};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a client presented at CONNECT. The password is never logged.
pub struct Credentials {
    pub client_id: ClientId,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub peer: Option<std::net::SocketAddr>,
}

/// A secret value whose `Debug` and `Display` never show it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    #[default]
    User,
    Device,
    Anonymous,
}

impl Role {
    /// The name used in the database, the config file and the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Device => "device",
            Self::Anonymous => "anonymous",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            "device" => Ok(Self::Device),
            "anonymous" => Ok(Self::Anonymous),
            _ => Err(UnknownRole),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown role (expected admin, user, device or anonymous)")]
pub struct UnknownRole;

/// Who a connection or request acts as, once authenticated.
///
/// A user's `owned_devices` are read when it authenticates: an MQTT session
/// that is already open does not see devices created (or deleted) after its
/// CONNECT until it reconnects; REST requests see them at once.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user name (for a device: its id); `None` when anonymous.
    pub username: Option<String>,
    pub role: Role,
    /// The id of a user stored in the database (`None` for devices, config
    /// users and anonymous callers).
    pub user_id: Option<String>,
    /// The id of the device this is (role `Device` only).
    pub device_id: Option<String>,
    /// Ids of the devices this user owns, whose topics it may read and write.
    pub owned_devices: Vec<String>,
    /// The digest of the bearer token this identity signed in with, if it
    /// did: revoking that token closes what it opened.
    pub token: Option<Arc<str>>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            username: None,
            role: Role::Anonymous,
            user_id: None,
            device_id: None,
            owned_devices: Vec::new(),
            token: None,
        }
    }

    /// A user stored in the database.
    pub fn user(user_id: String, username: String, role: Role, owned_devices: Vec<String>) -> Self {
        Self {
            username: Some(username),
            role,
            user_id: Some(user_id),
            device_id: None,
            owned_devices,
            token: None,
        }
    }

    /// A device stored in the database; it signs in with its id as user name.
    pub fn device(device_id: String) -> Self {
        Self {
            username: Some(device_id.clone()),
            role: Role::Device,
            user_id: None,
            device_id: Some(device_id),
            owned_devices: Vec::new(),
            token: None,
        }
    }

    /// A user from `[[auth.users]]`; one with role `device` is the device
    /// whose id is its user name.
    pub fn configured(username: String, role: Role) -> Self {
        Self {
            device_id: (role == Role::Device).then(|| username.clone()),
            username: Some(username),
            role,
            user_id: None,
            owned_devices: Vec::new(),
            token: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn is_anonymous(&self) -> bool {
        self.role == Role::Anonymous
    }

    /// Whether `device_id` is one of this user's devices.
    pub fn owns_device(&self, device_id: &str) -> bool {
        self.owned_devices.iter().any(|d| d == device_id)
    }
}

/// Who owns a session: the identity behind the CONNECT that opened it. Two
/// connections are the same principal when they signed in as the same stored
/// user, the same device, or the same config user; every anonymous client is
/// one principal (anonymous sessions protect nothing from each other).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    /// As stored with a persistent session.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Read back from the store.
    pub fn from_stored(s: &str) -> Self {
        Self(s.into())
    }

    /// A user stored in the database, by id.
    pub fn user(id: &str) -> Self {
        Self(format!("user:{id}").into())
    }

    /// A device, by id.
    pub fn device(id: &str) -> Self {
        Self(format!("device:{id}").into())
    }

    /// What kind of principal this is (`user`, `device`, `config` or
    /// `anonymous`), for logs: never the id itself.
    pub fn kind(&self) -> &str {
        self.0.split_once(':').map_or(&*self.0, |(kind, _)| kind)
    }
}

impl Identity {
    /// The principal this identity acts as.
    pub fn principal(&self) -> Principal {
        if let Some(id) = &self.user_id {
            Principal::user(id)
        } else if let Some(id) = &self.device_id {
            Principal::device(id)
        } else if let Some(name) = &self.username {
            Principal(format!("config:{name}").into())
        } else {
            Principal("anonymous".into())
        }
    }
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
