//! Users, the devices they own, and the bearer tokens they sign in with:
//! registration, sign-in and sign-out, device provisioning, and checking the
//! secrets each presents. One service behind the REST API, the CLI and the
//! MQTT authenticator ([`DbAuthenticator`]).
//!
//! Secrets are generated here from the OS's random source and stored hashed:
//! passwords and device secrets with argon2id (computed on the bounded
//! [`HashPool`], successes cached briefly), tokens as their SHA-256 (they are
//! long and random, so a fast hash is enough and lets a token be looked up
//! directly). REST sign-ups and sign-ins pass a per-address rate first; every
//! check of a password or secret passes the [`SignInGuard`]: repeated
//! failures lock a name from one address, or the address, out for a while.

mod authenticator;
mod cache;
pub mod hashing;
mod lifts;
pub mod lockout;
mod throttle;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

pub use authenticator::DbAuthenticator;
use cache::VerifyCache;
pub use hashing::{Busy, HashPool, HashingSettings};
pub use lifts::LockoutLifts;
use lockout::{Locked, LockoutSettings, SignInGuard};
use throttle::Throttle;
pub use throttle::Throttled;

use crate::domain::{DeviceKind, DeviceName, Password, Username, Visibility, time, to_hex};
use crate::domain::{Identity, Role, Secret};
use crate::store::{DeviceRecord, InsertError, Store, TokenRecord, UserRecord};
use crate::telemetry::names;

/// How long a successful password or device-secret check is remembered.
const VERIFY_CACHE_TTL: Duration = Duration::from_secs(300);
/// Random bytes in a bearer token and in a device secret.
const SECRET_BYTES: usize = 32;
/// Random bytes in a user or device id (hex-encoded: twice as many characters).
const ID_BYTES: usize = 12;
/// Expired tokens are deleted this long after they expire.
const TOKEN_PURGE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The policy knobs of the service, from `[auth]`.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Lifetime of a bearer token.
    pub token_ttl: Duration,
    /// Whether anyone may create an account with `POST /api/v1/users`.
    pub self_registration: bool,
    /// Whether requests without credentials are served (as anonymous).
    pub allow_anonymous: bool,
    /// Brute-force protection of sign-ins, from `[auth.lockout]`.
    pub lockout: LockoutSettings,
    /// The password hashing pool and the per-address rate, from `[auth.hashing]`.
    pub hashing: HashingSettings,
    /// The visibility of a device created without one (`map.default_visibility`).
    pub default_visibility: Visibility,
}

/// A user as callers see it (no hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub role: Role,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A device as callers see it (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub kind: DeviceKind,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub visibility: Visibility,
}

/// A device just created, with the secret shown this once.
#[derive(Debug)]
pub struct NewDevice {
    pub device: Device,
    pub secret: Secret,
}

/// A bearer token just issued.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: Secret,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the username is already taken")]
    UsernameTaken,
    #[error("bad user name or password")]
    BadCredentials,
    #[error("no user named {0:?}")]
    UnknownUser(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The hashing pool's queue is full or too slow: retry shortly.
    #[error("password hashing is busy; retry later")]
    Busy,
    /// Too many failed sign-ins for this user name or from this address.
    #[error("too many failed sign-ins; retry later")]
    LockedOut(Locked),
    /// Too many sign-ups or sign-ins from this address, before any check.
    #[error("too many requests from this address; retry later")]
    Throttled(Throttled),
}

impl From<Busy> for IdentityError {
    fn from(_: Busy) -> Self {
        Self::Busy
    }
}

impl From<InsertError> for IdentityError {
    fn from(e: InsertError) -> Self {
        match e {
            InsertError::Duplicate => Self::UsernameTaken,
            InsertError::Database(e) => Self::Database(e),
        }
    }
}

/// The identity service: a cloneable handle.
#[derive(Clone)]
pub struct Identities {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: IdentitySettings,
    cache: VerifyCache,
    guard: SignInGuard,
    hashing: HashPool,
    throttle: Throttle,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities").field("settings", &self.inner.settings).finish()
    }
}

impl Identities {
    pub fn new(store: Store, settings: IdentitySettings) -> Self {
        let cache = VerifyCache::new(VERIFY_CACHE_TTL);
        let guard = SignInGuard::new(settings.lockout.clone());
        let hashing = HashPool::new(&settings.hashing);
        let throttle =
            Throttle::new(settings.hashing.rate_per_address, settings.hashing.burst_per_address);
        let inner = Inner { store, settings, cache, guard, hashing, throttle };
        Self { inner: Arc::new(inner) }
    }

    /// Count a REST sign-up or sign-in from `from` against its address's
    /// rate, before any password work.
    pub fn throttle(&self, from: Option<IpAddr>) -> Result<(), IdentityError> {
        self.inner.throttle.take(from).map_err(IdentityError::Throttled)
    }

    /// Ask every running server to lift the lockouts of `username` (for the
    /// CLI, which cannot reach their memory); applied within a second.
    pub async fn request_unlock(&self, username: &str) -> Result<(), IdentityError> {
        Ok(self.store().request_lockout_lift(username, now_ms()).await?)
    }

    /// Ask every running server to close the live connections of
    /// `principals` (for the CLI); applied within a second.
    pub async fn request_revocations(&self, principals: &[String]) -> Result<(), IdentityError> {
        let now = now_ms();
        for p in principals {
            self.store().request_revocation(p, now).await?;
        }
        Ok(())
    }

    /// The lockout state every password or secret check goes through.
    pub fn sign_in_guard(&self) -> &SignInGuard {
        &self.inner.guard
    }

    pub fn settings(&self) -> &IdentitySettings {
        &self.inner.settings
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Create a user. The REST API creates role `user` only; the CLI may
    /// create admins.
    pub async fn register_user(
        &self,
        username: Username,
        password: Password,
        role: Role,
    ) -> Result<User, IdentityError> {
        let password_hash = self.hash(password.expose().to_owned()).await?;
        let record = UserRecord {
            id: random_id(),
            username: username.into_string(),
            password_hash,
            role,
            created_at: now_ms(),
        };
        self.store().insert_user(record.clone()).await?;
        tracing::info!(
            { names::USER_ID } = %record.id,
            { names::USER_NAME } = %record.username,
            { names::USER_ROLES } = %role,
            "user created"
        );
        Ok(user(record))
    }

    /// Check a user name and password from address `from` and issue a
    /// bearer token; refused unchecked while either is locked out.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<IssuedToken, IdentityError> {
        let attempt =
            self.sign_in_guard().begin(Some(username), from).map_err(IdentityError::LockedOut)?;
        let record = match self.check_user(username, password).await {
            Ok(Some(record)) => {
                attempt.succeeded();
                record
            }
            Ok(None) => {
                attempt.failed();
                return Err(IdentityError::BadCredentials);
            }
            Err(e) => {
                attempt.inconclusive();
                return Err(e);
            }
        };
        let token = random_secret();
        let now = now_ms();
        let expires_at = now.saturating_add(millis(self.inner.settings.token_ttl));
        let row = TokenRecord {
            id: token_id(token.expose()),
            user_id: record.id.clone(),
            expires_at,
            created_at: now,
        };
        self.store().insert_token(row, now - millis(TOKEN_PURGE_AFTER)).await?;
        tracing::info!(
            { names::USER_ID } = %record.id,
            { names::USER_NAME } = %record.username,
            "token issued"
        );
        Ok(IssuedToken { token, expires_at })
    }

    /// Revoke a bearer token; `false` if it was not live.
    pub async fn revoke_token(&self, token: &str) -> Result<bool, IdentityError> {
        Ok(self.store().revoke_token(&token_id(token), now_ms()).await?)
    }

    /// The identity a live (issued, unexpired, unrevoked) token stands for.
    pub async fn identity_for_token(&self, token: &str) -> Result<Option<Identity>, IdentityError> {
        if !looks_like_secret(token) {
            return Ok(None);
        }
        match self.store().user_by_token(&token_id(token), now_ms()).await? {
            Some(record) => {
                let mut identity = self.identity_of(record).await?;
                identity.token = Some(token_id(token).into());
                Ok(Some(identity))
            }
            None => Ok(None),
        }
    }

    /// The identity of a user signing in with its password; `None` if there
    /// is no such user or the password is wrong.
    pub async fn verify_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Identity>, IdentityError> {
        match self.check_user(username, password).await? {
            Some(record) => Ok(Some(self.identity_of(record).await?)),
            None => Ok(None),
        }
    }

    /// The identity of a device signing in with its id and secret; `None` if
    /// there is no such device or the secret is wrong.
    pub async fn verify_device(
        &self,
        device_id: &str,
        secret: &str,
    ) -> Result<Option<Identity>, IdentityError> {
        Ok(self.check_device(device_id, secret).await?.and_then(Result::ok))
    }

    /// `None` if there is no such device; else the device, or `Err(())`
    /// when the secret is wrong.
    async fn check_device(
        &self,
        device_id: &str,
        secret: &str,
    ) -> Result<Option<Result<Identity, ()>>, IdentityError> {
        let Some(record) = self.store().device_by_id(device_id).await? else {
            return Ok(None);
        };
        let ok = self.verify(secret, &record.secret_hash).await?;
        Ok(Some(if ok { Ok(Identity::device(record.id)) } else { Err(()) }))
    }

    /// Provision a device for `owner_id` (visible as `visibility`, else as
    /// configured); its secret is returned this once.
    pub async fn create_device(
        &self,
        owner_id: &str,
        name: DeviceName,
        kind: DeviceKind,
        visibility: Option<Visibility>,
    ) -> Result<NewDevice, IdentityError> {
        let secret = random_secret();
        let secret_hash = self.hash(secret.expose().to_owned()).await?;
        let record = DeviceRecord {
            id: random_id(),
            owner_id: owner_id.to_owned(),
            name: name.as_str().to_owned(),
            kind: kind.as_str().to_owned(),
            secret_hash,
            created_at: now_ms(),
            visibility: visibility
                .unwrap_or(self.settings().default_visibility)
                .as_str()
                .to_owned(),
        };
        self.store().insert_device(record.clone()).await?;
        tracing::info!(
            { names::DEVICE_ID } = %record.id,
            { names::USER_ID } = %owner_id,
            { names::DEVICE_KIND } = %kind,
            "device created"
        );
        Ok(NewDevice { device: device(record), secret })
    }

    /// Provision a device for the user named `owner` (for the CLI).
    pub async fn create_device_for(
        &self,
        owner: &str,
        name: DeviceName,
        kind: DeviceKind,
    ) -> Result<NewDevice, IdentityError> {
        let Some(user) = self.store().user_by_username(owner).await? else {
            return Err(IdentityError::UnknownUser(owner.to_owned()));
        };
        self.create_device(&user.id, name, kind, None).await
    }

    /// Show a device on the shared map or hide it; `false` if there is none.
    pub async fn set_visibility(
        &self,
        id: &str,
        visibility: Visibility,
    ) -> Result<bool, IdentityError> {
        let updated = self.store().set_device_visibility(id, visibility.as_str()).await?;
        if updated {
            tracing::info!(
                { names::DEVICE_ID } = %id,
                device.visibility = visibility.as_str(),
                "device visibility changed"
            );
        }
        Ok(updated)
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>, IdentityError> {
        Ok(self.store().device_by_id(id).await?.map(device))
    }

    /// The devices of `owner_id`, or all of them when `None`.
    pub async fn devices(&self, owner_id: Option<&str>) -> Result<Vec<Device>, IdentityError> {
        Ok(self.store().list_devices(owner_id).await?.into_iter().map(device).collect())
    }

    pub async fn users(&self) -> Result<Vec<User>, IdentityError> {
        Ok(self.store().list_users().await?.into_iter().map(user).collect())
    }

    /// Delete a user, its devices and its tokens; `false` if there was none.
    pub async fn delete_user(&self, id: &str) -> Result<bool, IdentityError> {
        let deleted = self.store().delete_user(id).await?;
        if deleted {
            tracing::info!({ names::USER_ID } = %id, "user deleted");
        }
        Ok(deleted)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, IdentityError> {
        Ok(self.store().user_by_username(username).await?.map(user))
    }

    /// Replace the password of user `id`; `false` if there is no such user.
    /// Cached checks of the old password stop matching: the cache is keyed
    /// by the stored hash.
    pub async fn set_password(&self, id: &str, password: Password) -> Result<bool, IdentityError> {
        let hash = self.hash(password.expose().to_owned()).await?;
        let updated = self.store().set_user_password(id, hash).await?;
        if updated {
            tracing::info!({ names::USER_ID } = %id, "user password changed");
        }
        Ok(updated)
    }

    /// Give device `id` a new secret, shown this once; `None` if there is
    /// no such device. The old secret stops working at once.
    pub async fn rotate_device_secret(&self, id: &str) -> Result<Option<Secret>, IdentityError> {
        let secret = random_secret();
        let hash = self.hash(secret.expose().to_owned()).await?;
        if !self.store().set_device_secret(id, hash).await? {
            return Ok(None);
        }
        tracing::info!({ names::DEVICE_ID } = %id, "device secret rotated");
        Ok(Some(secret))
    }

    /// The ids of the devices `user_id` owns.
    pub async fn device_ids_of(&self, user_id: &str) -> Result<Vec<String>, IdentityError> {
        Ok(self.store().device_ids_of(user_id).await?)
    }

    /// `false` if there was no such device.
    pub async fn delete_device(&self, id: &str) -> Result<bool, IdentityError> {
        let deleted = self.store().delete_device(id).await?;
        if deleted {
            tracing::info!({ names::DEVICE_ID } = %id, "device deleted");
        }
        Ok(deleted)
    }

    /// The user named `username` if `password` is theirs. An unknown user
    /// costs as much time as a wrong password, so the answer's speed does not
    /// tell which names exist.
    async fn check_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<UserRecord>, IdentityError> {
        let Some(record) = self.store().user_by_username(username).await? else {
            let dummy = self.dummy_hash().await?;
            self.verify(password, &dummy).await?;
            return Ok(None);
        };
        let ok = self.verify(password, &record.password_hash).await?;
        Ok(ok.then_some(record))
    }

    async fn verify(&self, secret: &str, phc: &Secret) -> Result<bool, IdentityError> {
        Ok(self.inner.cache.verify(&self.inner.hashing, secret, phc.expose()).await?)
    }

    /// Whether `password` matches the argon2 PHC string `phc` (a user of
    /// the config file), on the hashing pool.
    pub(crate) async fn verify_phc(&self, password: &str, phc: &str) -> Result<bool, Busy> {
        self.inner.cache.verify(&self.inner.hashing, password, phc).await
    }

    /// argon2id on the hashing pool.
    async fn hash(&self, secret: String) -> Result<Secret, IdentityError> {
        Ok(Secret::new(self.inner.hashing.hash(secret).await?))
    }

    /// A hash no password matches, for timing-safe "no such user" answers.
    async fn dummy_hash(&self) -> Result<Secret, IdentityError> {
        static DUMMY: OnceLock<Secret> = OnceLock::new();
        if let Some(h) = DUMMY.get() {
            return Ok(h.clone());
        }
        let h = self.hash(random_secret().expose().to_owned()).await?;
        Ok(DUMMY.get_or_init(|| h).clone())
    }

    /// A stored user as an identity, with the devices it owns right now.
    async fn identity_of(&self, record: UserRecord) -> Result<Identity, IdentityError> {
        let owned = self.store().device_ids_of(&record.id).await?;
        Ok(Identity::user(record.id, record.username, record.role, owned))
    }
}

fn user(r: UserRecord) -> User {
    User { id: r.id, username: r.username, role: r.role, created_at: r.created_at }
}

fn device(r: DeviceRecord) -> Device {
    Device {
        // Only `car` and `phone` are ever written.
        kind: r.kind.parse().unwrap_or(DeviceKind::Car),
        // Only `public` and `private` are ever written.
        visibility: r.visibility.parse().unwrap_or(Visibility::Private),
        id: r.id,
        owner_id: r.owner_id,
        name: r.name,
        created_at: r.created_at,
    }
}

/// 32 random bytes, base64url without padding (43 characters).
fn random_secret() -> Secret {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    Secret::new(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `s` has the shape of a token or device secret we issue.
pub fn looks_like_secret(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new user or device id: lowercase hex, safe as an MQTT topic level.
fn random_id() -> String {
    let mut bytes = [0u8; ID_BYTES];
    OsRng.fill_bytes(&mut bytes);
    to_hex(&bytes)
}

/// The stored id of a token: its SHA-256, hex.
/// What a bearer token is stored and known by (never the token itself).
pub fn token_id(token: &str) -> String {
    to_hex(&Sha256::digest(token.as_bytes()))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    time::millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn identities(ttl: Duration) -> (tempfile::TempDir, Identities) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let settings = IdentitySettings {
            token_ttl: ttl,
            self_registration: true,
            allow_anonymous: false,
            lockout: LockoutSettings::default(),
            hashing: HashingSettings::default(),
            default_visibility: Visibility::Public,
        };
        (dir, Identities::new(store, settings))
    }

    fn name(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    fn password(s: &str) -> Password {
        Password::parse(s).unwrap()
    }

    #[test]
    fn secrets_ids_and_times_have_their_documented_shapes() {
        let s = random_secret();
        assert!(looks_like_secret(s.expose()), "{}", s.expose());
        assert_ne!(random_secret().expose(), s.expose());
        let id = random_id();
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(token_id("abc").len(), 64);
    }

    #[tokio::test]
    async fn a_user_registers_signs_in_and_out() {
        let (_dir, ids) = identities(Duration::from_secs(60)).await;
        let ann =
            ids.register_user(name("ann"), password("correct horse"), Role::User).await.unwrap();

        let issued = ids.login("ann", "correct horse", None).await.unwrap();
        let who = ids.identity_for_token(issued.token.expose()).await.unwrap().unwrap();
        assert_eq!(who.user_id.as_deref(), Some(ann.id.as_str()));
        assert_eq!(who.role, Role::User);
        assert!(issued.expires_at > now_ms());

        assert!(ids.revoke_token(issued.token.expose()).await.unwrap());
        assert!(ids.identity_for_token(issued.token.expose()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn wrong_passwords_unknown_users_and_duplicates_are_refused() {
        let (_dir, ids) = identities(Duration::from_secs(60)).await;
        ids.register_user(name("ann"), password("correct horse"), Role::User).await.unwrap();

        assert!(matches!(
            ids.login("ann", "wrong horse", None).await,
            Err(IdentityError::BadCredentials)
        ));
        assert!(matches!(
            ids.login("bob", "correct horse", None).await,
            Err(IdentityError::BadCredentials)
        ));
        assert!(matches!(
            ids.register_user(name("ann"), password("other horse"), Role::User).await,
            Err(IdentityError::UsernameTaken)
        ));
    }

    #[tokio::test]
    async fn tokens_expire() {
        let (_dir, ids) = identities(Duration::from_millis(1)).await;
        ids.register_user(name("ann"), password("correct horse"), Role::User).await.unwrap();
        let issued = ids.login("ann", "correct horse", None).await.unwrap();

        tokio::time::sleep(Duration::from_millis(5)).await;

        assert!(ids.identity_for_token(issued.token.expose()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_device_signs_in_with_its_secret_and_shows_up_as_owned() {
        let (_dir, ids) = identities(Duration::from_secs(60)).await;
        let ann =
            ids.register_user(name("ann"), password("correct horse"), Role::User).await.unwrap();
        let name = DeviceName::parse("Ann's car").unwrap();

        let new = ids.create_device_for("ann", name, DeviceKind::Car).await.unwrap();

        let id = &new.device.id;
        let who = ids.verify_device(id, new.secret.expose()).await.unwrap().unwrap();
        assert_eq!(who.device_id.as_deref(), Some(id.as_str()));
        assert!(ids.verify_device(id, "wrong").await.unwrap().is_none());
        let owner = ids.verify_user("ann", "correct horse").await.unwrap().unwrap();
        assert!(owner.owns_device(id));
        assert_eq!(ids.devices(Some(&ann.id)).await.unwrap()[0].kind, DeviceKind::Car);
        assert!(matches!(
            ids.create_device_for("bob", DeviceName::parse("x").unwrap(), DeviceKind::Phone).await,
            Err(IdentityError::UnknownUser(_))
        ));
    }
}
