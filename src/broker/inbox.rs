//! The router's inbox: an unbounded channel with a soft bound.
//!
//! Sending never waits, so the publishes of one connection enter the router
//! in the order its packet handlers run (a bounded channel parks a handler
//! when full, and the MQTT dispatcher may then start a later handler first).
//! Backpressure happens *before* a publish is submitted instead: callers wait
//! for [`InboxSender::room`], and the MQTT listener stops reading a
//! connection while the inbox is at its bound. The overshoot is bounded by
//! the number of handlers that passed that check at the same moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use super::Command;

struct Depth {
    queued: AtomicUsize,
    bound: usize,
    room: Notify,
}

/// Open an inbox holding up to `bound` commands before senders are asked to wait.
pub(crate) fn inbox(bound: usize) -> (InboxSender, InboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(Depth { queued: AtomicUsize::new(0), bound, room: Notify::new() });
    (InboxSender { tx, depth: depth.clone() }, InboxReceiver { rx, depth })
}

#[derive(Clone)]
pub(crate) struct InboxSender {
    tx: mpsc::UnboundedSender<Command>,
    depth: Arc<Depth>,
}

/// The router has stopped.
#[derive(Debug)]
pub(crate) struct Closed;

impl InboxSender {
    /// Queue `cmd` now, whatever the depth.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Closed> {
        self.depth.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(cmd).map_err(|_| {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            Closed
        })
    }

    pub(crate) fn has_room(&self) -> bool {
        self.depth.queued.load(Ordering::Acquire) < self.depth.bound
    }

    /// Resolves once the inbox is under its bound (at once when it is).
    pub(crate) async fn room(&self) {
        while !self.has_room() {
            let notified = self.depth.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The router may have made room between the check and `enable`.
            if self.has_room() || self.tx.is_closed() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub(crate) struct InboxReceiver {
    rx: mpsc::UnboundedReceiver<Command>,
    depth: Arc<Depth>,
}

impl InboxReceiver {
    pub(crate) async fn recv(&mut self) -> Option<Command> {
        let cmd = self.rx.recv().await;
        if cmd.is_some() {
            self.took();
        }
        cmd
    }

    pub(crate) fn try_recv(&mut self) -> Option<Command> {
        let cmd = self.rx.try_recv().ok();
        if cmd.is_some() {
            self.took();
        }
        cmd
    }

    fn took(&self) {
        // Wake waiters only when this take brings the depth under the bound:
        // below it nobody waits, so the common path is one atomic.
        if self.depth.queued.fetch_sub(1, Ordering::AcqRel) == self.depth.bound {
            self.depth.room.notify_waiters();
        }
    }
}

impl Drop for InboxReceiver {
    fn drop(&mut self) {
        // Senders waiting for room must see the router is gone.
        self.rx.close();
        self.depth.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::Command;

    fn cmd() -> Command {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        Command::Shutdown(tx)
    }

    #[tokio::test]
    async fn senders_never_wait_and_room_opens_when_the_router_takes_one() {
        let (tx, mut rx) = inbox(2);
        for _ in 0..3 {
            tx.send(cmd()).unwrap();
        }
        assert!(!tx.has_room());

        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "room while 3 of 2 are queued");

        rx.try_recv().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "room while 2 of 2 are queued");

        rx.recv().await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert!(tx.has_room());
    }

    #[tokio::test]
    async fn a_stopped_router_releases_waiters_and_refuses_sends() {
        let (tx, rx) = inbox(1);
        tx.send(cmd()).unwrap();
        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert!(tx.send(cmd()).is_err());
        assert!(tx.is_closed());
    }
}
