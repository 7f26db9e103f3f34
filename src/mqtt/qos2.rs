//! Inbound QoS 2, handled in front of ntex-mqtt 8.2.1's MQTT 5.0
//! dispatcher; [`Taken`] is shared with the 3.1.1 loop (`direct`).
//!
//! Which inbound QoS 2 packet ids were received and not released yet is the
//! session's, not the connection's (`Outbox::incoming_qos2_*`): a PUBLISH
//! resent after a reconnect is acknowledged again but routed once
//! [MQTT-4.3.3-10]; see [`Taken`].
//!
//! - The dispatcher never forgets a QoS 2 packet id after PUBREL, so the
//!   connection is cut with "receive maximum exceeded" after that many QoS 2
//!   messages, and a reused id is refused with a PUBACK (0x91) instead of a
//!   PUBREC. This middleware runs the receiver side of the QoS 2 flow itself
//!   (PUBLISH → route → PUBREC, PUBREL → PUBCOMP) and never hands a QoS 2
//!   PUBLISH (nor a PUBREL) to the dispatcher. Because such a PUBLISH may set
//!   a topic alias the dispatcher then never sees, the middleware resolves
//!   every alias and passes the dispatcher full topic names.
//! - A PUBCOMP ending an outbound exchange that the pump resumed with
//!   PUBREL after a reconnect is taken here
//!   ([`OutboundQos2`](super::pump::OutboundQos2)); ntex does not know that
//!   exchange and would call it a protocol error.
//!
//! Payloads always arrive whole: the server config sets the minimum chunk
//! size to the maximum packet size, so a PUBLISH is never streamed.

use std::cell::RefCell;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use ntex::service::cfg::SharedCfg;
use ntex::service::{Middleware, Service, ServiceCtx};
use ntex::util::{ByteString, HashMap, HashSet};
use ntex_mqtt::error::{DispatcherError, ProtocolError, SpecViolation};
use ntex_mqtt::{Payload, QoS, v5};
use v5::codec::{
    Decoded, DisconnectReasonCode, Encoded, Packet, PublishAck, PublishAck2, PublishAck2Reason,
};

use super::acks::Deferred;

use super::reason::ConnError;
use super::session::Conn;
use super::v5::{Handled, amend_ack, handle_publish, settle};
use crate::broker::Outbox;

/// An inbound QoS 2 packet id the session took for a PUBLISH being routed
/// ([`Outbox::incoming_qos2_begin`]). Dropped before [`Taken::keep`] (the
/// routing failed, the PUBLISH was refused, or the connection went away
/// mid-way) it gives the id back, so that a resend is routed rather than
/// acknowledged and lost.
pub(super) struct Taken {
    outbox: Arc<Outbox>,
    id: NonZeroU16,
    kept: bool,
}

impl Taken {
    /// `None` when the id was already received and not released: a resend,
    /// to acknowledge again without routing it.
    pub(super) fn begin(outbox: &Arc<Outbox>, id: NonZeroU16) -> Option<Self> {
        // Not `then_some`: an eager `Taken` would be dropped, giving the id back.
        outbox.incoming_qos2_begin(id.get()).then(|| Self {
            outbox: outbox.clone(),
            id,
            kept: false,
        })
    }

    /// The writes that store the id, for the message's own commit.
    pub(super) fn record(&self) -> Vec<crate::domain::WriteOp> {
        self.outbox.incoming_qos2_record(self.id.get())
    }

    /// The PUBLISH was taken (PUBREC follows): keep the id until PUBREL.
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if !self.kept {
            self.outbox.incoming_qos2_release(self.id.get());
        }
    }
}

/// The v5 middleware; see the module docs.
pub(super) struct InboundQos2V5;

impl<S> Middleware<S, (SharedCfg, v5::Session<Conn>)> for InboundQos2V5 {
    type Service = InboundQos2V5Service<S>;

    fn create(&self, inner: S, (_, session): (SharedCfg, v5::Session<Conn>)) -> Self::Service {
        InboundQos2V5Service {
            inner,
            conn: (*session).clone(),
            unreleased: Rc::default(),
            aliases: RefCell::new(HashMap::default()),
        }
    }
}

pub(super) struct InboundQos2V5Service<S> {
    inner: S,
    conn: Conn,
    /// PUBREC sent on this connection, PUBREL not received yet: only for the
    /// receive maximum, which counts per connection. Whether an id was
    /// received is the session's (see [`Taken`]).
    unreleased: Rc<RefCell<HashSet<NonZeroU16>>>,
    /// Inbound topic aliases of this connection.
    aliases: RefCell<HashMap<NonZeroU16, ByteString>>,
}

type V5Result = Result<Option<Encoded>, DispatcherError<ConnError>>;

impl<S> Service<Decoded> for InboundQos2V5Service<S>
where
    S: Service<Decoded, Response = Option<Encoded>, Error = DispatcherError<ConnError>>,
{
    type Response = Option<Encoded>;
    type Error = DispatcherError<ConnError>;

    ntex::forward_ready!(inner);
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(&self, req: Decoded, ctx: ServiceCtx<'_, Self>) -> V5Result {
        match req {
            Decoded::Publish(mut pkt, payload, size) => {
                self.resolve_alias(&mut pkt)?;
                if pkt.qos == QoS::ExactlyOnce
                    && let Some(id) = pkt.packet_id
                    && pkt.payload_size as usize == payload.len()
                {
                    return self.exactly_once(id, pkt, payload, size);
                }
                ctx.call_nowait(&self.inner, Decoded::Publish(pkt, payload, size)).await
            }
            // The dispatcher never sees a QoS 2 PUBLISH, so every PUBREL is ours.
            Decoded::Packet(Packet::PublishRelease(rel), _) => {
                let id = rel.packet_id;
                self.unreleased.borrow_mut().remove(&id);
                let (released, durable) = self.conn.outbox.incoming_qos2_release_durably(id.get());
                if let Some(durable) = durable {
                    self.conn.defer(Deferred::V5(Box::new(after(durable)), false));
                }
                let reason = if released {
                    PublishAck2Reason::Success
                } else {
                    PublishAck2Reason::PacketIdNotFound
                };
                Ok(Some(pubcomp(id, reason)))
            }
            Decoded::Packet(Packet::PublishComplete(comp), _)
                if self.conn.qos2_out.complete(&self.conn.outbox, comp.packet_id) =>
            {
                Ok(None)
            }
            Decoded::Packet(Packet::PublishReceived(rec), _) => {
                // Before ntex queues the PUBCOMP it then expects (see
                // `OutboundQos2`); a refusal ends the exchange without PUBREL.
                if u8::from(rec.reason_code) < 0x80 {
                    self.conn.qos2_out.hold_until_released(rec.packet_id);
                }
                ctx.call_nowait(&self.inner, Decoded::Packet(Packet::PublishReceived(rec), 0)).await
            }
            other => ctx.call_nowait(&self.inner, other).await,
        }
    }
}

impl<S> InboundQos2V5Service<S> {
    /// Replace an empty topic with its alias, record new aliases.
    fn resolve_alias(
        &self,
        pkt: &mut v5::codec::Publish,
    ) -> Result<(), DispatcherError<ConnError>> {
        let Some(alias) = pkt.properties.topic_alias else { return Ok(()) };
        let mut aliases = self.aliases.borrow_mut();
        if pkt.topic.is_empty() {
            match aliases.get(&alias) {
                Some(topic) => pkt.topic = topic.clone(),
                None => return Err(alias_invalid("unknown topic alias")),
            }
        } else if alias.get() > self.conn.broker.limits().max_topic_alias {
            return Err(alias_invalid("topic alias above the maximum"));
        } else if aliases.get(&alias) != Some(&pkt.topic) {
            let mut topic = pkt.topic.clone();
            // Do not keep the whole read buffer alive for one topic.
            topic.trimdown();
            aliases.insert(alias, topic);
        }
        Ok(())
    }

    fn exactly_once(
        &self,
        id: NonZeroU16,
        pkt: v5::codec::Publish,
        payload: ntex::util::Bytes,
        size: u32,
    ) -> V5Result {
        // The checks ntex makes before its publish service.
        if pkt.topic.contains(['#', '+']) {
            return Err(ProtocolError::spec(SpecViolation::Pub_3_3_2_2).into());
        }
        let receive_max = usize::from(self.conn.broker.limits().receive_maximum);
        let over_quota = {
            let unreleased = self.unreleased.borrow();
            receive_max != 0 && unreleased.len() >= receive_max && !unreleased.contains(&id)
        };
        if over_quota {
            return Err(ProtocolError::spec(SpecViolation::Pub_3_3_4_7).into());
        }
        if !self.conn.sink_open() {
            // As ntex does: the client resends it after reconnecting.
            return Ok(None);
        }
        let Some(taken) = Taken::begin(&self.conn.outbox, id) else {
            // Received before, on this connection or an earlier one of the
            // session: acknowledge again, route once.
            self.unreleased.borrow_mut().insert(id);
            return Ok(Some(pubrec(id, v5::codec::PublishAckReason::Success, None)));
        };

        // Counted against the receive maximum from now on: the dispatcher
        // hands over pipelined PUBLISHes while earlier ones are still routed.
        self.unreleased.borrow_mut().insert(id);
        let publish = v5::Publish::new(pkt, Payload::from_bytes(payload), size);
        let handled = handle_publish(&self.conn, &publish, taken.record()).map_err(|e| {
            self.unreleased.borrow_mut().remove(&id);
            DispatcherError::Service(e)
        })?;
        let (code, why) = match handled {
            Handled::Now(code, why) => (code, why),
            Handled::Later(waiting) => {
                // PUBREC once committed (see `acks`); provisional until then.
                let (conn, unreleased) = (self.conn.clone(), self.unreleased.clone());
                let finish = move |provisional| -> LocalBoxFuture<'static, _> {
                    Box::pin(async move {
                        let settled = settle(&conn, waiting, crate::domain::QoS::ExactlyOnce).await;
                        let (code, why) = settled.inspect_err(|_| {
                            unreleased.borrow_mut().remove(&id);
                        })?;
                        decided(taken, &unreleased, id, code);
                        Ok(Some(amend_ack(provisional, code, why, conn.problem_info)))
                    })
                };
                self.conn.defer(Deferred::V5(Box::new(finish), false));
                return Ok(Some(pubrec(id, v5::codec::PublishAckReason::Success, None)));
            }
        };
        decided(taken, &self.unreleased, id, code);
        let why = why.filter(|_| self.conn.problem_info).map(ByteString::from_static);
        Ok(Some(pubrec(id, code, why)))
    }
}

/// A QoS 2 PUBLISH got its verdict: a failure code ends the flow, no
/// PUBREL follows [MQTT-4.3.3]; otherwise the id stays taken until PUBREL.
fn decided(
    taken: Taken,
    unreleased: &RefCell<HashSet<NonZeroU16>>,
    id: NonZeroU16,
    code: v5::codec::PublishAckReason,
) {
    if u8::from(code) < 0x80 {
        taken.keep();
    } else {
        unreleased.borrow_mut().remove(&id);
    }
}

/// A [`Finish`](super::acks::Finish) that sends the answer as it is once
/// `durable` resolves (PUBCOMP once the released id is forgotten for good).
/// Sent even if the write failed: it stays queued for retry.
fn after<E: 'static>(
    durable: tokio::sync::oneshot::Receiver<Result<(), crate::domain::StoreError>>,
) -> impl FnOnce(E) -> LocalBoxFuture<'static, Result<Option<E>, ConnError>> {
    move |answer| {
        Box::pin(async move {
            let _ = durable.await;
            Ok(Some(answer))
        })
    }
}

fn alias_invalid(why: &'static str) -> DispatcherError<ConnError> {
    DispatcherError::Service(ConnError::new(DisconnectReasonCode::TopicAliasInvalid, why))
}

fn pubrec(
    id: NonZeroU16,
    reason_code: v5::codec::PublishAckReason,
    reason_string: Option<ByteString>,
) -> Encoded {
    Encoded::Packet(Packet::PublishReceived(PublishAck {
        packet_id: id,
        reason_code,
        properties: Vec::new(),
        reason_string,
    }))
}

fn pubcomp(id: NonZeroU16, reason_code: PublishAck2Reason) -> Encoded {
    Encoded::Packet(Packet::PublishComplete(PublishAck2 {
        packet_id: id,
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ports::memory::Kept;
    use crate::broker::{OverflowPolicy, Stats};
    use crate::domain::ClientId;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    /// An outbox whose writes commit at once (these tests are about ids).
    fn outbox() -> Arc<Outbox> {
        let stats = Arc::new(Stats::default());
        let writer = Kept::shared();
        Arc::new(Outbox::new(ClientId::new("c"), 8, OverflowPolicy::default(), stats, writer))
    }

    #[ntex::test]
    async fn a_taken_id_is_given_back_unless_kept() {
        let outbox = outbox();
        let taken = Taken::begin(&outbox, id(1)).unwrap();
        assert!(Taken::begin(&outbox, id(1)).is_none(), "a resend while routing");
        drop(taken);
        Taken::begin(&outbox, id(1)).unwrap().keep();
        assert!(Taken::begin(&outbox, id(1)).is_none(), "a resend after PUBREC");
        assert!(outbox.incoming_qos2_release(1));
        assert!(Taken::begin(&outbox, id(1)).is_some());
    }
}
