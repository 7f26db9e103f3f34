//! A connection's answers, written in the order of the packets they answer
//! [MQTT-4.6.0-2].
//!
//! An answer known when its packet is read (a PINGRESP, the PUBACK of a
//! refused publish) goes out at once while nothing waits ahead of it; one
//! that depends on something still running (the commit behind a PUBACK, the
//! router's verdict behind a SUBACK) waits in the queue, and so does every
//! answer after it. Only the head is polled: what waits behind it is a
//! receiver that holds its result until asked.

use std::collections::VecDeque;
use std::future::Future;
use std::task::{Context, Poll};

use futures::future::LocalBoxFuture;

use super::super::reason::ConnError;

/// The answer to write (`None`: nothing), or the error that closes the
/// connection.
pub(super) type Answer<P> = Result<Option<P>, ConnError>;

pub(super) struct Answers<P> {
    queue: VecDeque<Pending<P>>,
}

enum Pending<P> {
    Ready(Answer<P>),
    Waiting(LocalBoxFuture<'static, Answer<P>>),
}

impl<P: 'static> Answers<P> {
    pub(super) fn new() -> Self {
        Self { queue: VecDeque::new() }
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// An answer known now: given back to be written at once when nothing
    /// waits ahead of it, queued otherwise.
    #[must_use]
    pub(super) fn now(&mut self, answer: P) -> Option<P> {
        if self.queue.is_empty() {
            return Some(answer);
        }
        self.queue.push_back(Pending::Ready(Ok(Some(answer))));
        None
    }

    /// An answer that `pending` decides.
    pub(super) fn later(&mut self, pending: impl Future<Output = Answer<P>> + 'static) {
        self.queue.push_back(Pending::Waiting(Box::pin(pending)));
    }

    /// The answer at the head, once decided. Never ready while empty.
    /// An undecided head stays where it is.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Answer<P>> {
        match self.queue.front_mut() {
            None => Poll::Pending,
            Some(Pending::Waiting(fut)) => {
                let answer = std::task::ready!(fut.as_mut().poll(cx));
                self.queue.pop_front();
                Poll::Ready(answer)
            }
            Some(Pending::Ready(_)) => match self.queue.pop_front() {
                Some(Pending::Ready(answer)) => Poll::Ready(answer),
                _ => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures::FutureExt as _;

    use super::*;

    #[test]
    fn answers_leave_in_the_order_of_their_packets() {
        let mut answers = Answers::<u32>::new();
        assert_eq!(answers.now(1), Some(1), "nothing waits: written at once");
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        answers.later(async move { Ok(Some(rx.await.unwrap())) });
        assert_eq!(answers.now(3), None, "queued behind the undecided answer");
        assert_eq!(answers.len(), 2);
        let mut next = || poll_fn(|cx| answers.poll_next(cx)).now_or_never();
        assert!(next().is_none(), "the head is not decided yet");
        tx.send(2).unwrap();
        assert_eq!(next().unwrap().unwrap(), Some(2));
        assert_eq!(next().unwrap().unwrap(), Some(3));
        assert!(next().is_none(), "empty: never ready");
        assert!(answers.is_empty());
    }
}
