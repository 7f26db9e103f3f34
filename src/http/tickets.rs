//! Short-lived, single-use tickets for `GET /api/v1/subscribe`.
//!
//! A browser's `EventSource` cannot send an `Authorization` header, and a
//! bearer token in a URL would outlive the request in proxy logs and
//! browser history. So a signed-in client first asks for a ticket (with its
//! header), then opens the stream with `?ticket=`: the ticket names one
//! filter, works once, and expires after [`TICKET_TTL`] — little to steal.
//!
//! Tickets live in memory (a restart voids them; they are for the next
//! second, not for later), stored by SHA-256 so the table holds nothing
//! usable. The table is bounded in total and per caller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::domain::ClientId;
use crate::domain::{Identity, Secret};

/// How long a ticket may wait to be used.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Tickets outstanding at once, all callers together.
const MAX_TICKETS: usize = 10_000;
/// Tickets one caller may hold at once (a page opening a few streams).
const MAX_PER_CALLER: usize = 16;

/// Why a ticket could not be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("this caller holds too many unused tickets")]
    CallerLimit,
    #[error("too many unused tickets")]
    Full,
}

/// What a ticket stands for: who asked, for which filter, until when.
#[derive(Debug, Clone)]
pub struct TicketGrant {
    pub identity: Identity,
    pub client_id: ClientId,
    pub filter: String,
    expires: Instant,
}

/// The outstanding tickets, shared by every HTTP worker.
#[derive(Default)]
pub struct SseTickets {
    // Held for one map operation (and a purge of expired entries), never
    // across an `.await`.
    grants: Mutex<HashMap<[u8; 32], TicketGrant>>,
}

impl SseTickets {
    /// A new ticket for `identity` to stream `filter` (already checked
    /// against its ACL); shown to the caller once.
    pub fn issue(
        &self,
        identity: Identity,
        client_id: ClientId,
        filter: String,
    ) -> Result<Secret, IssueError> {
        let now = Instant::now();
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        grants.retain(|_, g| g.expires > now);
        if grants.len() >= MAX_TICKETS {
            return Err(IssueError::Full);
        }
        if grants.values().filter(|g| g.client_id == client_id).count() >= MAX_PER_CALLER {
            return Err(IssueError::CallerLimit);
        }
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let ticket = URL_SAFE_NO_PAD.encode(bytes);
        let grant = TicketGrant { identity, client_id, filter, expires: now + TICKET_TTL };
        grants.insert(digest(&ticket), grant);
        Ok(Secret::new(ticket))
    }

    /// Use `ticket` for `filter`: the grant, if the ticket is live and was
    /// issued for exactly that filter. A ticket is gone after one try,
    /// whatever its outcome, so guessing at filters gains nothing.
    pub fn redeem(&self, ticket: &str, filter: &str) -> Option<TicketGrant> {
        let grant =
            self.grants.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest(ticket))?;
        (grant.expires > Instant::now() && grant.filter == filter).then_some(grant)
    }

    /// What [`Self::redeem`] would grant, leaving a matching ticket live
    /// (for a `HEAD`, which must not use it up). A wrong filter spends it
    /// all the same, so probing filters this way gains nothing either.
    pub fn check(&self, ticket: &str, filter: &str) -> Option<TicketGrant> {
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(ticket);
        let grant = grants.get(&key)?;
        if grant.expires > Instant::now() && grant.filter == filter {
            return Some(grant.clone());
        }
        grants.remove(&key);
        None
    }
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> (Identity, ClientId) {
        let who = Identity::user("u1".into(), "ann".into(), crate::domain::Role::User, vec![]);
        (who, ClientId::from("rest:u1"))
    }

    #[test]
    fn a_ticket_works_once_and_only_for_its_filter() {
        let tickets = SseTickets::default();
        let (who, id) = ann();
        let t = tickets.issue(who.clone(), id.clone(), "map/#".into()).unwrap();

        let grant = tickets.redeem(t.expose(), "map/#").unwrap();
        assert_eq!(grant.identity.user_id.as_deref(), Some("u1"));
        assert!(tickets.redeem(t.expose(), "map/#").is_none(), "used up");

        let t = tickets.issue(who, id, "map/#".into()).unwrap();
        assert!(tickets.redeem(t.expose(), "devices/#").is_none(), "another filter");
        assert!(tickets.redeem(t.expose(), "map/#").is_none(), "a wrong try spends it");
        assert!(tickets.redeem("made-up", "map/#").is_none());
    }

    #[test]
    fn checking_a_ticket_leaves_it_usable_unless_the_filter_is_wrong() {
        let tickets = SseTickets::default();
        let (who, id) = ann();
        let t = tickets.issue(who.clone(), id.clone(), "map/#".into()).unwrap();
        assert!(tickets.check(t.expose(), "map/#").is_some());
        assert!(tickets.check(t.expose(), "map/#").is_some(), "still live");
        assert!(tickets.redeem(t.expose(), "map/#").is_some());

        let t = tickets.issue(who, id, "map/#".into()).unwrap();
        assert!(tickets.check(t.expose(), "devices/#").is_none());
        assert!(tickets.redeem(t.expose(), "map/#").is_none(), "a wrong try spends it");
    }

    #[test]
    fn each_caller_holds_a_bounded_number_of_tickets() {
        let tickets = SseTickets::default();
        let (who, id) = ann();
        for _ in 0..MAX_PER_CALLER {
            tickets.issue(who.clone(), id.clone(), "map/#".into()).unwrap();
        }
        let more = tickets.issue(who.clone(), id, "map/#".into());
        assert_eq!(more.unwrap_err(), IssueError::CallerLimit);
        assert!(tickets.issue(who, ClientId::from("rest:u2"), "map/#".into()).is_ok());
    }
}
