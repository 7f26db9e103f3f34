//! Brute-force protection for every way of signing in with a secret (REST
//! `POST /api/v1/sessions` and MQTT CONNECT): failures are counted per
//! (identity, address) — the user name or device id tried, from one source
//! address — and per address, and past a threshold within a window that key
//! is locked out for a while.
//!
//! - No lockout is ever keyed on an identity alone: the map publishes every
//!   device id (its MQTT user name) and user names are easy to guess, so a
//!   stranger must not be able to lock the real car or user out from their
//!   own address. Their failures lock only themselves: the (identity, their
//!   address) pair after `max_failures_per_identity`, their address after
//!   `max_failures_per_address`.
//! - Device secrets never lock the device, not even from one address: they
//!   are 256 random bits, guessing one is hopeless, and the per-address
//!   limit still stops the guesser. Failures against a device count only
//!   towards the address.
//! - A distributed guesser (many addresses, one user name) is not slowed per
//!   identity. Every form of a global per-identity brake either refuses or
//!   delays the right password too — the weapon this module exists to take
//!   away — or needs a memory of "known good" addresses the owner of a new
//!   phone does not have. What bounds such a guesser instead: each address
//!   gets `max_failures_per_address` guesses per window over all accounts
//!   (an IPv6 /64 counts as one address), every guess costs it an argon2
//!   computation on the bounded hashing pool (see `hashing`), and passwords
//!   are at least 8 characters. Operators who see one account attacked from
//!   many addresses can watch `mapcast_auth_failures_total` and lift or
//!   tighten limits; admins lift lockouts with `mapcast user unlock` or
//!   `DELETE /api/v1/lockouts`.
//! - Attempts still being checked count against a pair's threshold
//!   ([`SignInGuard::begin`]), so parallel guesses from one address cannot
//!   overshoot it while argon2 runs. An address is judged on finished
//!   failures only: a fleet behind one NAT reconnecting at once is not
//!   refused for being many.
//! - A success resets its pair's counter, but only takes back its own
//!   attempt from the address: a correct password for one account cannot
//!   clear the lockout that guesses at other accounts earned that address.
//! - Locked keys are refused before any password hashing, so a lockout also
//!   sheds the CPU cost of an attack.
//! - Memory is bounded: at most `max_entries` keys per scope; expired ones
//!   go first, then unlocked partial counts. Lockouts are never evicted.
//!
//! The tables sit behind a std `Mutex` held for one map operation (a scan of
//! one table when an admin lifts lockouts or `/metrics` counts them), never
//! across an `.await`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::source_key;
use crate::telemetry::{metrics, names};

/// `[auth.lockout]`: thresholds and durations of the sign-in lockout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutSettings {
    /// Failed sign-ins for one user name from one address (IPv6: one /64),
    /// within `window_secs`, that lock that name out from that address only;
    /// device secrets never lock their device. 0 turns it off. Default 5.
    pub max_failures_per_identity: u32,
    /// Failed sign-ins from one address (IPv6: one /64), within
    /// `window_secs`, that lock it out. 0 turns it off. Default 20.
    pub max_failures_per_address: u32,
    /// How long failures are remembered, in seconds. Default 300.
    pub window_secs: u64,
    /// How long a lockout lasts, in seconds. Default 300.
    pub duration_secs: u64,
    /// (Name, address) pairs and addresses tracked at most, each. Default 100000.
    pub max_entries: usize,
}

impl Default for LockoutSettings {
    fn default() -> Self {
        Self {
            max_failures_per_identity: 5,
            max_failures_per_address: 20,
            window_secs: 300,
            duration_secs: 300,
            max_entries: 100_000,
        }
    }
}

/// What to tell a client whose attempt would exceed the threshold while
/// earlier ones are still being checked.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(1);

/// Which key a lockout is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockScope {
    /// One user name from one address.
    Identity,
    Address,
}

impl LockScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Address => "address",
        }
    }
}

/// What a failed sign-in was tried against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A user's password, or a name that is no identity at all.
    User,
    /// A device's random secret: the failure counts against the address only.
    Device,
}

/// Lockouts an admin lifted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifted {
    /// Counters (locked or not) forgotten.
    pub cleared: usize,
    /// Of those, lockouts that were in force.
    pub lockouts: usize,
}

/// A refused attempt: the key is locked for `retry_after` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    pub scope: LockScope,
    pub retry_after: Duration,
}

impl Locked {
    /// Whole seconds to wait, at least 1 (for `Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
}

/// An identity as tracked: a hash of the name, so the table holds no names
/// and its entries have a fixed size whatever an MQTT client sends.
type IdentityKey = [u8; 16];
/// One identity from one address (`None`: no address known, e.g. the CLI).
type PairKey = (IdentityKey, Option<IpAddr>);

#[derive(Debug, Clone, Copy)]
struct Counter {
    /// Failed attempts in the window.
    failures: u32,
    /// Attempts started and not yet settled.
    in_flight: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl Counter {
    fn new(now: Instant) -> Self {
        Self { failures: 0, in_flight: 0, window_start: now, locked_until: None }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Forget failures older than the window and lockouts that are over.
    fn refresh(&mut self, now: Instant, window: Duration) {
        let lock_over = self.locked_until.is_some_and(|until| until <= now);
        let window_over = self.locked_until.is_none() && now - self.window_start >= window;
        if lock_over || window_over {
            *self = Self { in_flight: self.in_flight, ..Self::new(now) };
        }
    }

    /// Still worth keeping: locked, checking, or holding failures within the window.
    fn live(&self, now: Instant, window: Duration) -> bool {
        self.locked(now).is_some()
            || self.in_flight > 0
            || (self.failures > 0 && now - self.window_start < window)
    }
}

/// One bounded table of counters.
struct Table<K> {
    max_failures: u32,
    /// Whether attempts in flight use up the threshold (identities) or only
    /// finished failures count (addresses).
    in_flight_counts: bool,
    counters: HashMap<K, Counter>,
}

impl<K: Eq + Hash + Copy> Table<K> {
    fn new(max_failures: u32, in_flight_counts: bool) -> Self {
        Self { max_failures, in_flight_counts, counters: HashMap::new() }
    }

    fn enabled(&self) -> bool {
        self.max_failures > 0
    }

    /// How long `key` is still locked out.
    fn locked(&mut self, key: &K, now: Instant, window: Duration) -> Option<Duration> {
        let counter = self.counters.get_mut(key)?;
        counter.refresh(now, window);
        counter.locked(now)
    }

    /// The counter of `key`, made if there is room; `None` when the table
    /// is full of lockouts (the attempt then goes uncounted on this key).
    fn counter(&mut self, key: K, now: Instant, s: &LockoutSettings) -> Option<&mut Counter> {
        let window = Duration::from_secs(s.window_secs);
        if !self.counters.contains_key(&key) && self.counters.len() >= s.max_entries {
            self.counters.retain(|_, c| c.live(now, window));
            if self.counters.len() >= s.max_entries {
                self.counters.retain(|_, c| c.locked(now).is_some());
            }
            if self.counters.len() >= s.max_entries {
                return None;
            }
        }
        let counter = self.counters.entry(key).or_insert_with(|| Counter::new(now));
        counter.refresh(now, window);
        Some(counter)
    }

    /// Whether attempts in flight on `key` already reach the threshold.
    fn exhausted(&self, key: &K) -> bool {
        self.enabled()
            && self.in_flight_counts
            && self.counters.get(key).is_some_and(|c| c.failures + c.in_flight >= self.max_failures)
    }

    /// Forget the counters of the keys `matches` picks.
    fn forget(&mut self, now: Instant, matches: impl Fn(&K) -> bool) -> Lifted {
        let mut lifted = Lifted::default();
        self.counters.retain(|key, c| {
            if !matches(key) {
                return true;
            }
            lifted.cleared += 1;
            lifted.lockouts += usize::from(c.locked(now).is_some());
            false
        });
        lifted
    }

    /// Lockouts in force now.
    fn active(&self, now: Instant) -> usize {
        self.counters.values().filter(|c| c.locked(now).is_some()).count()
    }

    /// An attempt on `key` ended without failing.
    fn settle(&mut self, key: &K) {
        if let Some(c) = self.counters.get_mut(key) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    /// An attempt on `key` failed: lock it if that reached the threshold.
    /// `true` when a lockout starts now.
    fn failed(&mut self, key: &K, now: Instant, lockout: Duration) -> bool {
        let Some(c) = self.counters.get_mut(key) else { return false };
        c.in_flight = c.in_flight.saturating_sub(1);
        c.failures += 1;
        if c.locked_until.is_none() && c.failures >= self.max_failures {
            c.locked_until = Some(now + lockout);
            return true;
        }
        false
    }
}

struct Tables {
    pairs: Table<PairKey>,
    addresses: Table<IpAddr>,
}

/// The lockout state, shared by the REST API and the MQTT authenticator.
pub struct SignInGuard {
    settings: LockoutSettings,
    // Held for a few map operations, never across an `.await`.
    tables: Mutex<Tables>,
}

impl SignInGuard {
    pub fn new(settings: LockoutSettings) -> Self {
        let tables = Tables {
            pairs: Table::new(settings.max_failures_per_identity, true),
            addresses: Table::new(settings.max_failures_per_address, false),
        };
        Self { settings, tables: Mutex::new(tables) }
    }

    /// Start a sign-in as `identity` (the user name or device id presented,
    /// if any) from `from`: refused while that name from that address, or
    /// the address, is locked out; else counted until the [`Attempt`] says
    /// how it went.
    pub fn begin<'a>(
        &'a self,
        identity: Option<&str>,
        from: Option<IpAddr>,
    ) -> Result<Attempt<'a>, Locked> {
        let now = Instant::now();
        let window = Duration::from_secs(self.settings.window_secs);
        let address = from.map(source_key);
        let pair = identity.map(|name| (identity_key(name), address));
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());

        let locked = [
            (LockScope::Identity, pair.and_then(|k| t.pairs.locked(&k, now, window))),
            (LockScope::Address, address.and_then(|k| t.addresses.locked(&k, now, window))),
        ]
        .into_iter()
        .find_map(|(scope, left)| left.map(|retry_after| Locked { scope, retry_after }))
        .or_else(|| {
            // Attempts in flight already use up the pair's budget: wait for them.
            let busy = [
                (LockScope::Identity, pair.is_some_and(|k| t.pairs.exhausted(&k))),
                (LockScope::Address, address.is_some_and(|k| t.addresses.exhausted(&k))),
            ];
            busy.into_iter()
                .find(|(_, busy)| *busy)
                .map(|(scope, _)| Locked { scope, retry_after: IN_FLIGHT_WAIT })
        });
        if let Some(locked) = locked {
            drop(t);
            metrics::global().auth_locked_refusals.fetch_add(1, Relaxed);
            tracing::debug!(
                { names::CLIENT_ADDRESS } = from.map(tracing::field::display),
                { names::AUTH_LOCKOUT_SCOPE } = locked.scope.as_str(),
                "sign-in refused: locked out"
            );
            return Err(locked);
        }

        let mut attempt = Attempt {
            guard: self,
            identity: identity.map(|name| name.chars().take(64).collect()),
            pair: None,
            address: None,
            from,
            done: false,
        };
        if t.pairs.enabled()
            && let Some(key) = pair
            && let Some(c) = t.pairs.counter(key, now, &self.settings)
        {
            c.in_flight += 1;
            attempt.pair = Some(key);
        }
        if t.addresses.enabled()
            && let Some(key) = address
            && let Some(c) = t.addresses.counter(key, now, &self.settings)
        {
            c.in_flight += 1;
            attempt.address = Some(key);
        }
        Ok(attempt)
    }

    /// Keys tracked now, pairs and addresses together (for tests).
    pub fn tracked(&self) -> usize {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.pairs.counters.len() + t.addresses.counters.len()
    }

    /// Lockouts in force now, pairs and addresses together; also kept in
    /// the `mapcast_auth_lockouts_active` gauge.
    pub fn active_lockouts(&self) -> usize {
        let now = Instant::now();
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let active = t.pairs.active(now) + t.addresses.active(now);
        drop(t);
        metrics::global().auth_lockouts_active.store(active as u64, Relaxed);
        active
    }

    /// Lift the lockouts of the user name or device id `name`, from every
    /// address, and forget its failures.
    pub fn unlock_identity(&self, name: &str) -> Lifted {
        let key = identity_key(name);
        let lifted = self.lift(|t, now| t.pairs.forget(now, |(k, _)| *k == key));
        tracing::info!(
            { names::USER_NAME } = %name.chars().take(64).collect::<String>(),
            { names::AUTH_LOCKOUTS_LIFTED } = lifted.lockouts,
            "sign-in lockouts lifted"
        );
        lifted
    }

    /// Lift the lockouts of the address `ip` (IPv6: its /64): its own and
    /// those of every name tried from it.
    pub fn unlock_address(&self, ip: IpAddr) -> Lifted {
        let ip = source_key(ip);
        let lifted = self.lift(|t, now| {
            let pairs = t.pairs.forget(now, |(_, from)| *from == Some(ip));
            let own = t.addresses.forget(now, |k| *k == ip);
            Lifted { cleared: pairs.cleared + own.cleared, lockouts: pairs.lockouts + own.lockouts }
        });
        tracing::info!(
            { names::CLIENT_ADDRESS } = %ip,
            { names::AUTH_LOCKOUTS_LIFTED } = lifted.lockouts,
            "sign-in lockouts lifted"
        );
        lifted
    }

    fn lift(&self, f: impl FnOnce(&mut Tables, Instant) -> Lifted) -> Lifted {
        let lifted = {
            let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut t, Instant::now())
        };
        self.active_lockouts();
        lifted
    }
}

/// A sign-in in progress. Dropped without a verdict it counts as failed.
#[must_use = "say how the sign-in went"]
pub struct Attempt<'a> {
    guard: &'a SignInGuard,
    /// The name tried, for the lockout warning (at most 64 characters).
    identity: Option<String>,
    pair: Option<PairKey>,
    address: Option<IpAddr>,
    from: Option<IpAddr>,
    done: bool,
}

impl Attempt<'_> {
    /// The secret was right: the name starts afresh from this address; the
    /// address keeps the failures it has.
    pub fn succeeded(mut self) {
        self.done = true;
        let mut t = self.guard.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = &self.pair {
            t.pairs.counters.remove(key);
        }
        if let Some(key) = &self.address {
            t.addresses.settle(key);
        }
    }

    /// No verdict (the database was down): the attempt does not count.
    pub fn inconclusive(mut self) {
        self.done = true;
        let mut t = self.guard.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = &self.pair {
            t.pairs.settle(key);
        }
        if let Some(key) = &self.address {
            t.addresses.settle(key);
        }
    }

    /// The password was wrong (or there is no such identity).
    pub fn failed(self) {
        self.failed_on(Target::User);
    }

    /// The secret presented for `target` was wrong.
    pub fn failed_on(mut self, target: Target) {
        self.done = true;
        self.record_failure(target);
    }

    fn record_failure(&self, target: Target) {
        let now = Instant::now();
        let lockout = Duration::from_secs(self.guard.settings.duration_secs);
        let started = {
            let mut t = self.guard.tables.lock().unwrap_or_else(|e| e.into_inner());
            let pair = match target {
                Target::User => self.pair.filter(|k| t.pairs.failed(k, now, lockout)),
                Target::Device => {
                    self.pair.inspect(|k| t.pairs.settle(k));
                    None
                }
            };
            [
                pair.map(|_| LockScope::Identity),
                self.address
                    .filter(|k| t.addresses.failed(k, now, lockout))
                    .map(|_| LockScope::Address),
            ]
        };
        let m = metrics::global();
        m.auth_failures.fetch_add(1, Relaxed);
        for scope in started.into_iter().flatten() {
            m.auth_lockouts.fetch_add(1, Relaxed);
            m.auth_lockouts_active.fetch_add(1, Relaxed);
            tracing::warn!(
                { names::USER_NAME } = self.identity.as_deref(),
                { names::CLIENT_ADDRESS } = self.from.map(tracing::field::display),
                { names::AUTH_LOCKOUT_SCOPE } = scope.as_str(),
                { names::AUTH_LOCKOUT_SECS } = lockout.as_secs(),
                "sign-in locked out after repeated failures"
            );
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record_failure(Target::User);
        }
    }
}

/// A keyed-free hash of a name is enough here: the key only has to be
/// stable and fixed-size, and the table is never shown to anyone.
fn identity_key(name: &str) -> IdentityKey {
    let digest = Sha256::digest(name.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(per_identity: u32, per_address: u32) -> SignInGuard {
        SignInGuard::new(LockoutSettings {
            max_failures_per_identity: per_identity,
            max_failures_per_address: per_address,
            window_secs: 60,
            duration_secs: 60,
            max_entries: 100,
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_name_is_locked_only_from_the_address_its_failures_came_from() {
        let g = guard(3, 100);
        for _ in 0..3 {
            g.begin(Some("ann"), ip("10.0.0.1")).unwrap().failed();
        }
        let locked = g.begin(Some("ann"), ip("10.0.0.1")).err().unwrap();
        assert_eq!(locked.scope, LockScope::Identity);
        assert!(locked.retry_after_secs() > 0 && locked.retry_after_secs() <= 60);
        assert!(g.begin(Some("ann"), ip("10.9.9.9")).is_ok(), "ann's own address is unaffected");
        assert!(g.begin(Some("bob"), ip("10.0.0.1")).is_ok(), "others are unaffected");
    }

    #[test]
    fn wrong_device_secrets_never_lock_the_device_but_count_against_the_address() {
        let g = guard(2, 4);
        for _ in 0..3 {
            g.begin(Some("car-1"), ip("10.0.0.1")).unwrap().failed_on(Target::Device);
        }
        let fourth = g.begin(Some("car-1"), ip("10.0.0.1")).expect("no pair lockout for a device");
        fourth.failed_on(Target::Device);
        let locked = g.begin(Some("car-1"), ip("10.0.0.1")).err().unwrap();
        assert_eq!(locked.scope, LockScope::Address);
        let car = g.begin(Some("car-1"), ip("10.0.0.2")).expect("the car itself is fine");
        car.succeeded();
    }

    #[test]
    fn lifting_a_name_or_an_address_ends_its_lockouts_and_the_gauge_follows() {
        let g = guard(2, 3);
        for from in ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.2"] {
            g.begin(Some("ann"), ip(from)).map(Attempt::failed).ok();
        }
        // ann is locked from .1 and from .2 (the fifth try was refused).
        assert!(g.begin(Some("ann"), ip("10.0.0.1")).is_err());
        assert_eq!(g.active_lockouts(), 2);

        let lifted = g.unlock_identity("ann");

        assert_eq!(lifted.lockouts, 2);
        g.begin(Some("ann"), ip("10.0.0.1")).expect("lifted").succeeded();
        assert_eq!(g.active_lockouts(), 0);
        for name in ["x", "y", "z"] {
            g.begin(Some(name), ip("10.0.0.3")).unwrap().failed();
        }
        assert!(g.begin(Some("bob"), ip("10.0.0.3")).is_err());
        assert_eq!(g.unlock_address(ip("10.0.0.3").unwrap()).lockouts, 1);
        g.begin(Some("bob"), ip("10.0.0.3")).expect("lifted").succeeded();
    }

    #[test]
    fn a_success_resets_its_name_but_not_the_lockout_its_address_earned() {
        let g = guard(3, 4);
        g.begin(Some("ann"), ip("10.0.0.1")).unwrap().failed();
        g.begin(Some("ann"), ip("10.0.0.1")).unwrap().failed();
        g.begin(Some("ann"), ip("10.0.0.1")).unwrap().succeeded();
        // Ann's counter from there is back to zero: one more failure does not lock her.
        g.begin(Some("ann"), ip("10.0.0.1")).unwrap().failed();
        g.begin(Some("ann"), ip("10.0.0.1")).expect("not locked yet").succeeded();

        // 10.0.0.1 guesses at others until locked; ann's right password from
        // there is refused, and trying it does not unlock the address.
        g.begin(Some("x"), ip("10.0.0.1")).unwrap().failed();
        let locked = g.begin(Some("ann"), ip("10.0.0.1")).err().unwrap();
        assert_eq!(locked.scope, LockScope::Address);
        assert!(g.begin(Some("ann"), ip("10.0.0.1")).is_err());
    }

    #[test]
    fn attempts_in_flight_count_so_parallel_guesses_cannot_overshoot() {
        let g = guard(2, 100);
        let a = g.begin(Some("ann"), None).unwrap();
        let b = g.begin(Some("ann"), None).unwrap();
        let third = g.begin(Some("ann"), None).err().expect("the budget is in flight");
        assert_eq!(third.retry_after, IN_FLIGHT_WAIT);
        // Both in flight already use up the budget: both fail, lockout.
        a.failed();
        b.failed();
        assert!(g.begin(Some("ann"), None).is_err());
    }

    #[test]
    fn many_sign_ins_at_once_from_one_address_are_not_refused_for_being_many() {
        let g = guard(3, 3);
        let fleet: Vec<_> = (0..50)
            .map(|i| g.begin(Some(&format!("car-{i}")), ip("10.0.0.1")).expect("not refused"))
            .collect();
        fleet.into_iter().for_each(Attempt::succeeded);
        // Only failures lock an address out.
        for i in 0..3 {
            g.begin(Some(&format!("x-{i}")), ip("10.0.0.1")).unwrap().failed();
        }
        assert_eq!(g.begin(Some("car-0"), ip("10.0.0.1")).err().unwrap().scope, LockScope::Address);
    }

    #[test]
    fn inconclusive_attempts_do_not_count_and_dropped_ones_do() {
        let g = guard(1, 100);
        g.begin(Some("ann"), None).unwrap().inconclusive();
        assert!(g.begin(Some("ann"), None).is_ok_and(|a| {
            drop(a);
            true
        }));
        assert!(g.begin(Some("ann"), None).is_err(), "a dropped attempt is a failure");
    }

    #[test]
    fn lockouts_and_windows_expire() {
        let g = SignInGuard::new(LockoutSettings {
            max_failures_per_identity: 1,
            duration_secs: 0,
            window_secs: 0,
            ..LockoutSettings::default()
        });
        g.begin(Some("ann"), None).unwrap().failed();
        assert!(g.begin(Some("ann"), None).is_ok(), "a zero-length lockout is over at once");
    }

    #[test]
    fn zero_turns_a_scope_off() {
        let g = guard(0, 0);
        for _ in 0..10 {
            g.begin(Some("ann"), ip("10.0.0.1")).unwrap().failed();
        }
        assert!(g.begin(Some("ann"), ip("10.0.0.1")).is_ok());
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_and_lockouts_survive_a_flood_of_new_keys() {
        let g = SignInGuard::new(LockoutSettings {
            max_failures_per_identity: 2,
            max_failures_per_address: 0,
            max_entries: 10,
            ..LockoutSettings::default()
        });
        g.begin(Some("ann"), None).unwrap().failed();
        g.begin(Some("ann"), None).unwrap().failed();
        for i in 0..1000 {
            g.begin(Some(&format!("spray-{i}")), None).unwrap().failed();
        }
        assert!(g.tracked() <= 10, "{}", g.tracked());
        assert!(g.begin(Some("ann"), None).is_err(), "ann is still locked");
    }
}
