//! The broker's authenticator: devices, users and bearer tokens from the
//! database first, then the users of the config file and the anonymous
//! policy; ACL decisions by [`AclPolicy`].

use crate::broker::acl::AclPolicy;
use crate::broker::auth::{AuthError, Authenticator, BoxFuture, ConfigAuthenticator, Credentials};
use crate::domain::Identity;
use crate::domain::{ClientId, TopicFilter, TopicName};
use crate::telemetry::names;

use super::lockout::Target;
use super::{Identities, IdentityError, looks_like_secret};

/// What the database says about presented credentials.
enum Lookup {
    Found(Identity),
    /// The user name is a device's id and the secret is not its secret.
    WrongDeviceSecret,
    /// No database identity matches.
    NotFound,
}

/// MQTT `username`/`password`, in the order tried:
/// 1. any user name (or none) with a live bearer token as password → that user;
/// 2. a device id with its secret → that device;
/// 3. a user name with its password → that user (admin or user);
/// 4. the `[[auth.users]]` of the config file, then the anonymous policy.
pub struct DbAuthenticator {
    identities: Identities,
    config: ConfigAuthenticator,
    acl: AclPolicy,
}

impl DbAuthenticator {
    pub fn new(identities: Identities, config: ConfigAuthenticator, acl: AclPolicy) -> Self {
        Self { identities, config, acl }
    }

    async fn look_up(&self, creds: &Credentials) -> Result<Lookup, IdentityError> {
        let Some(password) = &creds.password else { return Ok(Lookup::NotFound) };
        let password = password.expose();
        if looks_like_secret(password)
            && let Some(who) = self.identities.identity_for_token(password).await?
        {
            return Ok(Lookup::Found(who));
        }
        let Some(username) = creds.username.as_deref() else { return Ok(Lookup::NotFound) };
        match self.identities.check_device(username, password).await? {
            Some(Ok(who)) => return Ok(Lookup::Found(who)),
            Some(Err(())) => return Ok(Lookup::WrongDeviceSecret),
            None => {}
        }
        Ok(match self.identities.verify_user(username, password).await? {
            Some(who) => Lookup::Found(who),
            None => Lookup::NotFound,
        })
    }

    /// A user of the config file, its password checked on the hashing pool.
    async fn config_user(&self, creds: &Credentials) -> Result<Identity, AuthError> {
        let (Some(username), Some(password)) = (&creds.username, &creds.password) else {
            return Err(AuthError::BadCredentials);
        };
        let Some(user) = self.config.user(username) else { return Err(AuthError::BadCredentials) };
        match self.identities.verify_phc(password.expose(), &user.password_hash).await {
            Ok(true) => Ok(Identity::configured(user.username.clone(), user.role)),
            Ok(false) => Err(AuthError::BadCredentials),
            Err(_busy) => Err(AuthError::Busy),
        }
    }
}

impl Authenticator for DbAuthenticator {
    fn authenticate<'a>(
        &'a self,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            // No credentials at all is the anonymous policy's call, not a guess.
            if creds.username.is_none() && creds.password.is_none() {
                return self.config.authenticate(creds).await;
            }
            let guard = self.identities.sign_in_guard();
            let from = creds.peer.map(|p| p.ip());
            let Ok(attempt) = guard.begin(creds.username.as_deref(), from) else {
                return Err(AuthError::TooManyAttempts);
            };
            match self.look_up(creds).await {
                Ok(Lookup::Found(who)) => {
                    attempt.succeeded();
                    return Ok(who);
                }
                Ok(Lookup::WrongDeviceSecret) => {
                    attempt.failed_on(Target::Device);
                    return Err(AuthError::BadCredentials);
                }
                Ok(Lookup::NotFound) => {}
                Err(IdentityError::Busy) => {
                    attempt.inconclusive();
                    return Err(AuthError::Busy);
                }
                Err(e) => {
                    attempt.inconclusive();
                    tracing::warn!(
                        { names::CLIENT_ID } = %creds.client_id,
                        { names::ERROR_MESSAGE } = %e,
                        "authentication: identity lookup failed"
                    );
                    return Err(AuthError::Unavailable);
                }
            }
            // A password without a user name was meant as a token: it is not one.
            if creds.username.is_none() {
                attempt.failed();
                return Err(AuthError::BadCredentials);
            }
            match self.config_user(creds).await {
                Ok(who) => {
                    attempt.succeeded();
                    Ok(who)
                }
                Err(AuthError::BadCredentials) => {
                    attempt.failed();
                    Err(AuthError::BadCredentials)
                }
                Err(e) => {
                    attempt.inconclusive();
                    Err(e)
                }
            }
        })
    }

    fn can_publish(&self, who: &Identity, _client_id: &ClientId, topic: &TopicName) -> bool {
        self.acl.can_publish(who, topic)
    }

    fn can_subscribe(&self, who: &Identity, _client_id: &ClientId, filter: &TopicFilter) -> bool {
        self.acl.can_subscribe(who, filter)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::acl::AnonymousAcl;
    use crate::broker::auth::{ConfigUser, hash_password};
    use crate::domain::{DeviceKind, DeviceName, Password, Username};
    use crate::domain::{Role, Secret};
    use crate::identities::IdentitySettings;
    use crate::identities::lockout::LockoutSettings;
    use crate::store::Store;

    async fn setup(allow_anonymous: bool) -> (tempfile::TempDir, Identities, DbAuthenticator) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let settings = IdentitySettings {
            token_ttl: Duration::from_secs(60),
            self_registration: true,
            allow_anonymous,
            lockout: LockoutSettings::default(),
            hashing: crate::identities::HashingSettings::default(),
            default_visibility: crate::domain::Visibility::Public,
        };
        let ids = Identities::new(store, settings);
        let config = ConfigAuthenticator::new(
            allow_anonymous,
            vec![ConfigUser {
                username: "ops".into(),
                password_hash: hash_password("config pass"),
                role: Role::Admin,
            }],
        );
        let acl = AclPolicy::new(AnonymousAcl::All, &[]).unwrap();
        let auth = DbAuthenticator::new(ids.clone(), config, acl);
        (dir, ids, auth)
    }

    fn creds(user: Option<&str>, pass: Option<&str>) -> Credentials {
        Credentials {
            client_id: ClientId::from("c1"),
            username: user.map(str::to_owned),
            password: pass.map(Secret::new),
            peer: None,
        }
    }

    #[tokio::test]
    async fn devices_users_tokens_and_config_users_all_sign_in() {
        let (_dir, ids, auth) = setup(false).await;
        let ann = Username::parse("ann").unwrap();
        ids.register_user(ann, Password::parse("correct horse").unwrap(), Role::User)
            .await
            .unwrap();
        let car = ids
            .create_device_for("ann", DeviceName::parse("car").unwrap(), DeviceKind::Car)
            .await
            .unwrap();
        let token = ids.login("ann", "correct horse", None).await.unwrap().token;

        let auth = &auth;
        let sign_in = |user, pass| {
            let creds = creds(user, pass);
            async move { auth.authenticate(&creds).await.unwrap() }
        };

        let device = sign_in(Some(&car.device.id), Some(car.secret.expose())).await;
        let user = sign_in(Some("ann"), Some("correct horse")).await;
        let by_token = sign_in(Some("whatever"), Some(token.expose())).await;
        let by_token_alone = sign_in(None, Some(token.expose())).await;
        let config = sign_in(Some("ops"), Some("config pass")).await;

        assert_eq!(device.device_id.as_deref(), Some(car.device.id.as_str()));
        assert_eq!(device.role, Role::Device);
        assert!(user.owns_device(&car.device.id));
        assert_eq!(by_token.username.as_deref(), Some("ann"));
        assert_eq!(by_token_alone.username.as_deref(), Some("ann"));
        assert_eq!(config.role, Role::Admin);
    }

    #[tokio::test]
    async fn wrong_secrets_are_bad_credentials_and_no_name_follows_the_anonymous_policy() {
        let (_dir, ids, auth) = setup(false).await;
        ids.register_user(
            Username::parse("ann").unwrap(),
            Password::parse("correct horse").unwrap(),
            Role::User,
        )
        .await
        .unwrap();

        for (user, pass) in [
            (Some("ann"), Some("wrong horse")),
            (Some("nobody"), Some("correct horse")),
            (Some("ann"), None),
            (None, Some("not-a-token")),
        ] {
            assert_eq!(
                auth.authenticate(&creds(user, pass)).await.unwrap_err(),
                AuthError::BadCredentials,
                "{user:?}"
            );
        }
        assert_eq!(
            auth.authenticate(&creds(None, None)).await.unwrap_err(),
            AuthError::NotAuthorized
        );
        let (_dir, _ids, open) = setup(true).await;
        assert!(open.authenticate(&creds(None, None)).await.unwrap().is_anonymous());
    }
}
