//! A connection's packets reach the broker in the order they arrived, and
//! its answers leave in that order too [MQTT-4.6.0-2].
//!
//! ntex-mqtt 8.2.1's dispatcher polls a packet's handler inline only while no
//! earlier call of the connection is pending; packets decoded meanwhile run
//! on tasks of their own, and the first packet decoded after the pending call
//! ends is polled before those tasks start. A handler that waited (for a
//! commit, for the router's answer) would therefore let the connection's
//! packets overtake each other on their way to the router: QoS 1 publishes
//! out of order, a QoS 0 publish ahead of an earlier one, a topic alias used
//! before the PUBLISH that defines it.
//!
//! So no handler waits. Each does all its work, the hand-off to the router
//! included, before it returns, and leaves what is still undecided (the
//! commit behind a PUBACK, the router's verdict behind a SUBACK) on the
//! connection as a [`Finish`]. This middleware, the outermost service of the
//! connection, takes it together with the provisional answer ntex built and
//! queues both; one writer task per connection finishes the queue in order
//! and writes the final answers. While the queue holds anything, every other
//! answer of the connection (PINGRESP, PUBCOMP, an immediate PUBACK) waits
//! behind it. The queue is bounded: at its bound the connection is not read.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use ntex::channel::condition::Condition;
use ntex::io::IoRef;
use ntex::service::cfg::SharedCfg;
use ntex::service::{Middleware, Service, ServiceCtx};
use ntex_mqtt::error::{DispatcherError, EncodeError, ProtocolError, SpecViolation};
use ntex_mqtt::{QoS, v5};

use super::reason::ConnError;
use super::session::{Conn, ConnState};
use crate::telemetry::names::{CLIENT_ID, ERROR_MESSAGE};

/// What a handler leaves to decide its packet's answer later: given the
/// provisional answer, the final one (`None`: send nothing), or the error
/// that closes the connection.
pub(super) type Finish<E> =
    Box<dyn FnOnce(E) -> LocalBoxFuture<'static, Result<Option<E>, ConnError>>>;

/// A [`Finish`], as a handler leaves it on its connection.
pub(super) enum Deferred {
    /// `true` for a QoS ≥ 1 PUBLISH: counted against the receive maximum.
    V5(Finish<v5::codec::Encoded>, bool),
}

/// What differs between the protocol levels.
pub(super) trait Level: 'static {
    type Decoded;
    type Encoded: 'static;

    /// Take what the handler of the packet just handled left, if anything.
    fn take(conn: &ConnState) -> Option<(Finish<Self::Encoded>, bool)>;
    /// Whether `pkt` is a PUBLISH that needs a PUBACK from this queue.
    fn is_qos1_publish(pkt: &Self::Decoded) -> bool;
    fn encode(io: &IoRef, answer: Self::Encoded) -> Result<(), EncodeError>;
}

pub(super) struct V5;

impl Level for V5 {
    type Decoded = v5::codec::Decoded;
    type Encoded = v5::codec::Encoded;

    fn take(conn: &ConnState) -> Option<(Finish<Self::Encoded>, bool)> {
        let Deferred::V5(finish, publish) = conn.take_deferred()?;
        Some((finish, publish))
    }

    fn is_qos1_publish(pkt: &Self::Decoded) -> bool {
        matches!(pkt, v5::codec::Decoded::Publish(p, ..) if p.qos == QoS::AtLeastOnce)
    }

    fn encode(io: &IoRef, answer: Self::Encoded) -> Result<(), EncodeError> {
        io.encode(answer, &v5::codec::Codec::new())
    }
}

/// The middleware for MQTT 5 connections.
pub(super) struct InOrderV5;

impl<S> Middleware<S, (SharedCfg, v5::Session<Conn>)> for InOrderV5 {
    type Service = InOrder<S, V5>;

    fn create(&self, inner: S, (_, session): (SharedCfg, v5::Session<Conn>)) -> Self::Service {
        InOrder::new(inner, (*session).clone())
    }
}

pub(super) struct InOrder<S, L: Level> {
    inner: S,
    conn: Conn,
    queue: Rc<Queue<L>>,
    /// Answers outstanding at which the connection is no longer read.
    bound: usize,
    /// The client's promise (v5): QoS 1 PUBLISHes awaiting their PUBACK.
    receive_maximum: usize,
}

impl<S, L: Level> InOrder<S, L> {
    fn new(inner: S, conn: Conn) -> Self {
        let receive_maximum = usize::from(conn.broker.limits().receive_maximum);
        // A compliant v5 client never has more publishes outstanding than its
        // receive maximum; SUBSCRIBEs and PINGREQs come on top.
        let bound = receive_maximum.max(1) + 64;
        Self { inner, conn, queue: Rc::new(Queue::default()), bound, receive_maximum }
    }
}

struct Queue<L: Level> {
    items: RefCell<VecDeque<Item<L::Encoded>>>,
    /// Answers queued or being finished: every other answer waits behind.
    outstanding: Cell<usize>,
    /// Of those, QoS 1 PUBACKs (v5, for the receive maximum).
    publishes: Cell<usize>,
    /// The writer task runs.
    writing: Cell<bool>,
    /// Notified whenever an answer leaves the queue.
    room: Condition,
}

impl<L: Level> Default for Queue<L> {
    fn default() -> Self {
        Self {
            items: RefCell::new(VecDeque::new()),
            outstanding: Cell::new(0),
            publishes: Cell::new(0),
            writing: Cell::new(false),
            room: Condition::new(),
        }
    }
}

enum Item<E> {
    Ready(E),
    Deferred { provisional: E, finish: Finish<E>, publish: bool },
}

type Answer<L> = Result<Option<<L as Level>::Encoded>, DispatcherError<ConnError>>;

impl<S, L> Service<L::Decoded> for InOrder<S, L>
where
    L: Level,
    S: Service<L::Decoded, Response = Option<L::Encoded>, Error = DispatcherError<ConnError>>,
{
    type Response = Option<L::Encoded>;
    type Error = DispatcherError<ConnError>;

    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn ready(&self, ctx: ServiceCtx<'_, Self>) -> Result<(), Self::Error> {
        // Only the dispatcher asks (every call below is answered at once), so
        // waiting here stops reading the connection and nothing else.
        while self.queue.outstanding.get() >= self.bound {
            self.queue.room.wait().ready().await;
        }
        ctx.ready(&self.inner).await
    }

    async fn call(&self, req: L::Decoded, ctx: ServiceCtx<'_, Self>) -> Answer<L> {
        if L::is_qos1_publish(&req)
            && self.receive_maximum != 0
            && self.queue.publishes.get() >= self.receive_maximum
        {
            return Err(ProtocolError::spec(SpecViolation::Pub_3_3_4_7).into());
        }
        let answer = ctx.call_nowait(&self.inner, req).await;
        // Taken whatever the outcome: a failed call closes the connection,
        // and what it left must not be taken for the next packet's.
        let deferred = L::take(&self.conn);
        let answer = answer?;
        match (answer, deferred) {
            (Some(provisional), Some((finish, publish))) => {
                self.queue.push(&self.conn, Item::Deferred { provisional, finish, publish });
                Ok(None)
            }
            (Some(answer), None) if self.queue.outstanding.get() > 0 => {
                self.queue.push(&self.conn, Item::Ready(answer));
                Ok(None)
            }
            (answer, _) => Ok(answer),
        }
    }
}

impl<L: Level> Queue<L> {
    fn push(self: &Rc<Self>, conn: &Conn, item: Item<L::Encoded>) {
        if let Item::Deferred { publish: true, .. } = item {
            self.publishes.set(self.publishes.get() + 1);
        }
        self.outstanding.set(self.outstanding.get() + 1);
        self.items.borrow_mut().push_back(item);
        if !self.writing.replace(true) {
            ntex::rt::spawn(write(self.clone(), conn.clone()));
        }
    }

    /// One answer left the queue.
    fn done(&self, publish: bool) {
        self.outstanding.set(self.outstanding.get().saturating_sub(1));
        if publish {
            self.publishes.set(self.publishes.get().saturating_sub(1));
        }
        self.room.notify();
    }
}

/// The writer: finish the queue's answers in order and write them, until the
/// queue is empty (the next answer that must wait starts a new writer).
async fn write<L: Level>(queue: Rc<Queue<L>>, conn: Conn) {
    // Set once the connection is closed for an answer that failed: the rest
    // is still finished, never written.
    let mut closed = false;
    loop {
        let Some(item) = queue.items.borrow_mut().pop_front() else { break };
        // Finished even when the connection is gone: what a finish does
        // besides answering (keeping an inbound QoS 2 id once its message
        // is committed) must happen, or a resend would be routed twice.
        let (answer, publish) = match item {
            Item::Ready(answer) => (Ok(Some(answer)), false),
            Item::Deferred { provisional, finish, publish } => (finish(provisional).await, publish),
        };
        if !closed && !conn.io.is_closed() {
            closed = !answer_with::<L>(&conn, answer);
        }
        queue.done(publish);
    }
    queue.writing.set(false);
}

/// Write one finished answer; `false` when the connection is now closed.
fn answer_with<L: Level>(conn: &Conn, answer: Result<Option<L::Encoded>, ConnError>) -> bool {
    match answer {
        Ok(Some(answer)) => match L::encode(&conn.io, answer) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    parent: &conn.span,
                    { { CLIENT_ID } = %conn.client_id, { ERROR_MESSAGE } = %e },
                    "cannot encode an acknowledgement"
                );
                conn.close(ConnError::new(
                    v5::codec::DisconnectReasonCode::ImplementationSpecificError,
                    "cannot encode an acknowledgement",
                ));
                false
            }
        },
        Ok(None) => true,
        Err(err) => {
            tracing::info!(
                parent: &conn.span,
                { { CLIENT_ID } = %conn.client_id, { ERROR_MESSAGE } = %err },
                "closing connection: {}",
                err.reason
            );
            conn.close(err);
            false
        }
    }
}
