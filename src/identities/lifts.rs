//! Lockout lifts asked for with `mapcast user unlock`: the CLI cannot reach
//! a running server's memory, so it writes a request to the database and
//! every server applies the requests newer than the last it saw, within
//! [`POLL_EVERY`]. `DELETE /api/v1/lockouts` acts at once instead.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Identities;
use crate::broker::{BrokerHandle, Revocation};
use crate::domain::Principal;
use crate::domain::time;
use crate::telemetry::names;

/// How often the requests are read.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Requests are forgotten this long after they were made.
const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// The polling job of one server.
pub struct LockoutLifts {
    identities: Identities,
    /// The newest request applied (ms since the Unix epoch).
    since: i64,
    /// Where revocation requests are applied; `None`: they are not read.
    broker: Option<BrokerHandle>,
    /// The newest revocation request applied.
    revoked_since: i64,
}

impl LockoutLifts {
    /// Requests made from now on are applied; older ones were for lockouts
    /// this process never had.
    pub fn new(identities: Identities) -> Self {
        let now = time::millis(SystemTime::now());
        Self { identities, since: now, broker: None, revoked_since: now }
    }

    /// Also close the connections of the principals the CLI revokes
    /// (`mapcast user delete`, `device delete`, `device rotate-secret`).
    pub fn with_revocations(mut self, broker: BrokerHandle) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Apply the requests made since the last step; how many.
    pub async fn try_apply_once(&mut self) -> Result<usize, sqlx::Error> {
        let store = self.identities.store();
        let requests = store.lockout_lifts_after(self.since).await?;
        for (username, requested_at) in &requests {
            self.identities.sign_in_guard().unlock_identity(username);
            self.since = self.since.max(*requested_at);
        }
        let before = time::millis(SystemTime::now() - KEEP_FOR);
        store.purge_lockout_lifts(before).await?;
        let mut applied = requests.len();
        if let Some(broker) = &self.broker {
            let revocations = store.revocations_after(self.revoked_since).await?;
            for (principal, requested_at) in &revocations {
                broker.revoke(Revocation::Principal(Principal::from_stored(principal))).await;
                self.revoked_since = self.revoked_since.max(*requested_at);
            }
            store.purge_revocations(before).await?;
            applied += revocations.len();
        }
        Ok(applied)
    }

    /// Poll every [`POLL_EVERY`] until `stop`; failures are logged and the
    /// next round tries again.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.try_apply_once().await {
                tracing::warn!(
                    { names::ERROR_MESSAGE } = %e,
                    "reading lockout lift requests failed; retrying"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identities::IdentitySettings;
    use crate::identities::lockout::LockoutSettings;
    use crate::store::Store;

    #[tokio::test]
    async fn a_request_written_to_the_database_lifts_the_lockout_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let lockout = LockoutSettings { max_failures_per_identity: 1, ..Default::default() };
        let settings = IdentitySettings {
            token_ttl: Duration::from_secs(60),
            self_registration: true,
            allow_anonymous: false,
            lockout,
            hashing: Default::default(),
            default_visibility: crate::domain::Visibility::Public,
        };
        let ids = Identities::new(store.clone(), settings);
        let mut lifts = LockoutLifts::new(ids.clone());
        let guard = ids.sign_in_guard();
        guard.begin(Some("ann"), None).unwrap().failed();
        assert!(guard.begin(Some("ann"), None).is_err());

        store.request_lockout_lift("ann", time::millis(SystemTime::now()) + 1).await.unwrap();

        assert_eq!(lifts.try_apply_once().await.unwrap(), 1);
        guard.begin(Some("ann"), None).expect("lifted").failed();
        assert_eq!(lifts.try_apply_once().await.unwrap(), 0, "applied once only");
        assert!(guard.begin(Some("ann"), None).is_err(), "locked again, and it stays so");
    }
}
