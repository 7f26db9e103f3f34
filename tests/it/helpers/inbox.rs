//! What a client's event-loop task forwards, buffered so a test can wait for
//! one kind of packet (say a PUBACK) without losing the others (publishes that
//! arrived first stay available, in order).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// An event that may mean "the connection is gone".
pub trait InboxEvent {
    fn is_closed(&self) -> bool;
}

pub struct Inbox<E> {
    rx: mpsc::UnboundedReceiver<E>,
    pending: VecDeque<E>,
}

impl<E: InboxEvent> Inbox<E> {
    pub fn new(rx: mpsc::UnboundedReceiver<E>) -> Self {
        Self { rx, pending: VecDeque::new() }
    }

    /// The first event (buffered or new) that `wanted` accepts, within `timeout`.
    /// Returns `None` on timeout, or as soon as the connection is known closed
    /// before such an event (the closing event stays buffered).
    pub async fn next_where(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&E) -> bool,
    ) -> Option<E> {
        for i in 0..self.pending.len() {
            if wanted(&self.pending[i]) {
                return self.pending.remove(i);
            }
            if self.pending[i].is_closed() {
                return None;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => {
                    if wanted(&event) {
                        return Some(event);
                    }
                    let closed = event.is_closed();
                    self.pending.push_back(event);
                    if closed {
                        return None;
                    }
                }
                // The event-loop task ended without saying why (aborted).
                Ok(None) => return None,
                Err(_) => return None,
            }
        }
    }

    /// Everything received so far, without waiting (for failure messages).
    pub fn drain_now(&mut self) -> Vec<E> {
        while let Ok(e) = self.rx.try_recv() {
            self.pending.push_back(e);
        }
        self.pending.drain(..).collect()
    }
}
