//! How many SSE streams are open, per signed-in user and per source
//! address, and the caps on both: every stream is a descriptor and a broker
//! session, so one caller (or one address, for anonymous callers) may hold
//! only so many. A stream holds a [`StreamPermit`] for as long as it is
//! open; dropping it gives the place back.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crate::domain::source_key;
use crate::telemetry::metrics;

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefused {
    #[error("this user has {0} event streams open, the most allowed")]
    User(usize),
    #[error("this address has {0} event streams open, the most allowed")]
    Address(usize),
}

/// The open streams, shared by every HTTP worker.
#[derive(Clone)]
pub struct SseStreams {
    per_user: usize,
    per_address: usize,
    // Held for a few map operations, never across an `.await`. Entries go
    // when their count drops to zero, so the maps hold at most one entry
    // per open stream.
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    users: HashMap<String, usize>,
    addresses: HashMap<IpAddr, usize>,
}

/// One open stream's place; released on drop.
pub struct StreamPermit {
    open: Arc<Mutex<Open>>,
    user: Option<String>,
    address: Option<IpAddr>,
}

impl SseStreams {
    /// At most `per_user` streams per signed-in user and `per_address` per
    /// source address (IPv6: per /64); `0` lifts a cap.
    pub fn new(per_user: usize, per_address: usize) -> Self {
        Self { per_user, per_address, open: Arc::default() }
    }

    /// A place for one more stream of `user` from `address`, or why not.
    pub fn admit(
        &self,
        user: Option<&str>,
        address: Option<IpAddr>,
    ) -> Result<StreamPermit, StreamRefused> {
        let address = address.map(source_key);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let full =
            |count: Option<&usize>, cap: usize| cap > 0 && count.copied().unwrap_or(0) >= cap;
        let refused = if user.is_some_and(|u| full(open.users.get(u), self.per_user)) {
            Some(StreamRefused::User(self.per_user))
        } else if address.is_some_and(|a| full(open.addresses.get(&a), self.per_address)) {
            Some(StreamRefused::Address(self.per_address))
        } else {
            None
        };
        if let Some(refused) = refused {
            metrics::global().sse_refused.fetch_add(1, Relaxed);
            return Err(refused);
        }
        if let Some(u) = user {
            *open.users.entry(u.to_owned()).or_default() += 1;
        }
        if let Some(a) = address {
            *open.addresses.entry(a).or_default() += 1;
        }
        metrics::global().sse_streams.fetch_add(1, Relaxed);
        Ok(StreamPermit { open: self.open.clone(), user: user.map(str::to_owned), address })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let open = &mut *open;
        if let Some(u) = &self.user {
            release(&mut open.users, u);
        }
        if let Some(a) = &self.address {
            release(&mut open.addresses, a);
        }
        metrics::global().sse_streams.fetch_sub(1, Relaxed);
    }
}

fn release<K: Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_user_and_per_address_and_given_back_on_drop() {
        let streams = SseStreams::new(2, 3);
        let home: IpAddr = "192.0.2.1".parse().unwrap();
        let away: IpAddr = "192.0.2.2".parse().unwrap();

        let a = streams.admit(Some("ann"), Some(home)).unwrap();
        let b = streams.admit(Some("ann"), Some(away)).unwrap();
        assert_eq!(streams.admit(Some("ann"), Some(away)).err(), Some(StreamRefused::User(2)));
        let c = streams.admit(None, Some(home)).unwrap();
        let d = streams.admit(Some("bob"), Some(home)).unwrap();
        assert_eq!(streams.admit(None, Some(home)).err(), Some(StreamRefused::Address(3)));

        drop(a);
        assert!(streams.admit(Some("ann"), Some(away)).is_ok(), "ann's place is free again");
        assert!(streams.admit(None, Some(home)).is_ok(), "and so is one of home's");
        drop((b, c, d));
        let open = streams.open.lock().unwrap();
        assert!(open.users.is_empty() && open.addresses.is_empty(), "no empty entries");
    }
}
