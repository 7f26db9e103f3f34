//! The router's inbox: an unbounded channel with a soft bound.
//!
//! Sending never waits, so the publishes of one connection enter the router
//! in the order its packet handlers run (a bounded channel parks a handler
//! when full, and the MQTT dispatcher may then start a later handler first).
//! Backpressure happens *before* a publish is submitted instead: callers wait
//! for [`InboxSender::room`], and the MQTT listener stops reading a
//! connection while the inbox is at its bound. The overshoot is bounded by
//! the number of handlers that passed that check at the same moment.
//!
//! The bound counts commands and the bytes of the messages they carry: a
//! count alone would let a flood of large payloads hold count × payload
//! bytes while the router catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use super::Command;

struct Depth {
    queued: AtomicUsize,
    bound: usize,
    /// Payload and topic bytes of the queued publishes.
    bytes: AtomicUsize,
    byte_bound: usize,
    room: Notify,
}

impl Depth {
    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Acquire) < self.bound
            && self.bytes.load(Ordering::Acquire) < self.byte_bound
    }
}

/// Open an inbox holding up to `bound` commands, or `byte_bound` bytes of
/// messages, before senders are asked to wait.
pub(crate) fn inbox(bound: usize, byte_bound: usize) -> (InboxSender, InboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(Depth {
        queued: AtomicUsize::new(0),
        bound,
        bytes: AtomicUsize::new(0),
        byte_bound,
        room: Notify::new(),
    });
    (InboxSender { tx, depth: depth.clone() }, InboxReceiver { rx, depth })
}

/// The bytes of a message a command carries, as the bound counts them.
fn weight(cmd: &Command) -> usize {
    match cmd {
        Command::Publish { msg, .. } => msg.payload.len() + msg.topic.as_str().len(),
        _ => 0,
    }
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
        let weight = weight(&cmd);
        self.depth.queued.fetch_add(1, Ordering::AcqRel);
        self.depth.bytes.fetch_add(weight, Ordering::AcqRel);
        self.tx.send(cmd).map_err(|_| {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            self.depth.bytes.fetch_sub(weight, Ordering::AcqRel);
            Closed
        })
    }

    pub(crate) fn has_room(&self) -> bool {
        self.depth.has_room()
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
        if let Some(cmd) = &cmd {
            self.took(cmd);
        }
        cmd
    }

    pub(crate) fn try_recv(&mut self) -> Option<Command> {
        let cmd = self.rx.try_recv().ok();
        if let Some(cmd) = &cmd {
            self.took(cmd);
        }
        cmd
    }

    fn took(&self, cmd: &Command) {
        let depth = &self.depth;
        let queued = depth.queued.fetch_sub(1, Ordering::AcqRel);
        let weight = weight(cmd);
        let bytes = if weight == 0 {
            depth.bytes.load(Ordering::Acquire)
        } else {
            depth.bytes.fetch_sub(weight, Ordering::AcqRel)
        };
        // Wake waiters only when this take makes room: while there is room
        // nobody waits, so the common path is two atomics.
        let was_full = queued >= depth.bound || bytes >= depth.byte_bound;
        if was_full && depth.has_room() {
            depth.room.notify_waiters();
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

    fn publish(payload: usize) -> Command {
        let topic = crate::domain::TopicName::parse("a/b", Default::default()).unwrap();
        let payload = ntex::util::Bytes::from(vec![0; payload]);
        let msg =
            crate::domain::Message::new(topic, payload, crate::domain::QoS::AtMostOnce, false);
        Command::Publish { msg, ops: Vec::new(), reply: None }
    }

    #[tokio::test]
    async fn large_messages_fill_the_inbox_by_their_bytes() {
        let (tx, mut rx) = inbox(100, 1_000);
        tx.send(publish(600)).unwrap();
        assert!(tx.has_room(), "603 of 1,000 bytes");
        tx.send(publish(600)).unwrap();
        assert!(!tx.has_room(), "1,206 of 1,000 bytes, 2 of 100 commands");
        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        rx.try_recv().unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert!(tx.has_room());
        rx.try_recv().unwrap();
        tx.send(cmd()).unwrap();
        rx.try_recv().unwrap();
        assert_eq!(
            tx.depth.bytes.load(Ordering::Acquire),
            0,
            "commands without a message weigh nothing"
        );
    }

    #[tokio::test]
    async fn senders_never_wait_and_room_opens_when_the_router_takes_one() {
        let (tx, mut rx) = inbox(2, usize::MAX);
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
        let (tx, rx) = inbox(1, usize::MAX);
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
