//! A connection is not read while the broker core is saturated.
//!
//! The connection's control service is what ntex-mqtt's dispatcher asks
//! first each time it wakes, before it reads or decodes anything: while the
//! router's inbox is at its bound that service is not ready, the dispatcher
//! stops reading and TCP pushes back on the client. Publish handlers can then
//! hand their message to the router at once, never waiting before it, so a
//! connection's publishes enter the router in the order their handlers start.
//! (Waiting in the packet handlers' own readiness would hold that pipeline's
//! readiness check and park handlers already started before they route.)

use std::cell::Cell;

use ntex::service::{Service, ServiceCtx};

use super::session::Conn;

/// A connection's control service, ready only while the broker has room.
pub(super) struct Paced<S> {
    inner: S,
    conn: Conn,
    /// The readiness check of the dispatcher itself (the first one made):
    /// only that one waits. A control call waiting in its own readiness
    /// check would hold the pipeline's check and stall the dispatcher,
    /// which polls that call only once its own check passed.
    dispatcher: Cell<Option<u32>>,
}

impl<S> Paced<S> {
    pub(super) fn new(inner: S, conn: Conn) -> Self {
        Self { inner, conn, dispatcher: Cell::new(None) }
    }
}

impl<S, R> Service<R> for Paced<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;

    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn ready(&self, ctx: ServiceCtx<'_, Self>) -> Result<(), Self::Error> {
        let dispatcher = self.dispatcher.get().unwrap_or_else(|| {
            self.dispatcher.set(Some(ctx.id()));
            ctx.id()
        });
        if dispatcher == ctx.id() && !self.conn.broker.has_room() {
            self.conn.broker.room().await;
        }
        ctx.ready(&self.inner).await
    }

    async fn call(&self, req: R, ctx: ServiceCtx<'_, Self>) -> Result<S::Response, Self::Error> {
        ctx.call_nowait(&self.inner, req).await
    }
}
