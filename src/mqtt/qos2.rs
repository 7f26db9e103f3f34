//! Inbound QoS 2, handled in front of ntex-mqtt 8.2.1's dispatchers.
//!
//! - v5: the dispatcher never forgets a QoS 2 packet id after PUBREL, so the
//!   connection is cut with "receive maximum exceeded" after that many QoS 2
//!   messages, and a reused id is refused with a PUBACK (0x91) instead of a
//!   PUBREC. This middleware runs the receiver side of the QoS 2 flow itself
//!   (PUBLISH → route → PUBREC, PUBREL → PUBCOMP) and never hands a QoS 2
//!   PUBLISH to the dispatcher. Because such a PUBLISH may set a topic alias
//!   the dispatcher then never sees, the middleware resolves every alias and
//!   passes the dispatcher full topic names.
//! - 3.1.1: a PUBREL for an id the connection does not know (the client
//!   resuming a flow after a reconnect) is a protocol error in ntex, which
//!   disconnects the client in a loop; it gets its PUBCOMP instead.
//!
//! Payloads always arrive whole: the server config sets the minimum chunk
//! size to the maximum packet size, so a PUBLISH is never streamed.

use std::cell::RefCell;
use std::num::NonZeroU16;

use ntex::service::cfg::SharedCfg;
use ntex::service::{Middleware, Service, ServiceCtx};
use ntex::util::{ByteString, HashMap, HashSet};
use ntex_mqtt::error::{DispatcherError, ProtocolError, SpecViolation};
use ntex_mqtt::{Payload, QoS, v3, v5};
use v5::codec::{
    Decoded, DisconnectReasonCode, Encoded, Packet, PublishAck, PublishAck2, PublishAck2Reason,
};

use super::reason::ConnError;
use super::session::Conn;
use super::v5::handle_publish;

/// The v5 middleware; see the module docs.
pub(super) struct InboundQos2V5;

impl<S> Middleware<S, (SharedCfg, v5::Session<Conn>)> for InboundQos2V5 {
    type Service = InboundQos2V5Service<S>;

    fn create(&self, inner: S, (_, session): (SharedCfg, v5::Session<Conn>)) -> Self::Service {
        InboundQos2V5Service {
            inner,
            conn: (*session).clone(),
            awaiting_release: RefCell::new(HashSet::default()),
            aliases: RefCell::new(HashMap::default()),
        }
    }
}

pub(super) struct InboundQos2V5Service<S> {
    inner: S,
    conn: Conn,
    /// PUBREC sent, PUBREL not received yet.
    awaiting_release: RefCell<HashSet<NonZeroU16>>,
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
                    return self.exactly_once(id, pkt, payload, size).await;
                }
                ctx.call(&self.inner, Decoded::Publish(pkt, payload, size)).await
            }
            Decoded::Packet(Packet::PublishRelease(rel), size) => {
                if self.awaiting_release.borrow_mut().remove(&rel.packet_id) {
                    return Ok(Some(pubcomp(rel.packet_id)));
                }
                ctx.call(&self.inner, Decoded::Packet(Packet::PublishRelease(rel), size)).await
            }
            other => ctx.call(&self.inner, other).await,
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

    async fn exactly_once(
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
        if self.awaiting_release.borrow().contains(&id) {
            // Sent again before our PUBREC arrived: acknowledge, route once.
            return Ok(Some(pubrec(id, v5::codec::PublishAckReason::Success, None)));
        }
        let receive_max = usize::from(self.conn.broker.limits().receive_maximum);
        if receive_max != 0 && self.awaiting_release.borrow().len() >= receive_max {
            return Err(ProtocolError::spec(SpecViolation::Pub_3_3_4_7).into());
        }
        if !self.conn.sink_open() {
            // As ntex does: the client resends it after reconnecting.
            return Ok(None);
        }

        let publish = v5::Publish::new(pkt, Payload::from_bytes(payload), size);
        let (code, why) =
            handle_publish(&self.conn, &publish).await.map_err(DispatcherError::Service)?;
        // A failure code ends the flow: no PUBREL follows [MQTT-4.3.3].
        if u8::from(code) < 0x80 {
            self.awaiting_release.borrow_mut().insert(id);
        }
        let why = why.filter(|_| self.conn.problem_info).map(ByteString::from_static);
        Ok(Some(pubrec(id, code, why)))
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

fn pubcomp(id: NonZeroU16) -> Encoded {
    Encoded::Packet(Packet::PublishComplete(PublishAck2 {
        packet_id: id,
        reason_code: PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    }))
}

/// The 3.1.1 middleware; see the module docs.
pub(super) struct InboundQos2V3;

impl<S> Middleware<S, (SharedCfg, v3::Session<Conn>)> for InboundQos2V3 {
    type Service = InboundQos2V3Service<S>;

    fn create(&self, inner: S, _: (SharedCfg, v3::Session<Conn>)) -> Self::Service {
        InboundQos2V3Service { inner, known: RefCell::new(HashSet::default()) }
    }
}

pub(super) struct InboundQos2V3Service<S> {
    inner: S,
    /// QoS 2 ids this connection received and the dispatcher tracks.
    known: RefCell<HashSet<NonZeroU16>>,
}

impl<S> Service<v3::codec::Decoded> for InboundQos2V3Service<S>
where
    S: Service<
            v3::codec::Decoded,
            Response = Option<v3::codec::Encoded>,
            Error = DispatcherError<ConnError>,
        >,
{
    type Response = Option<v3::codec::Encoded>;
    type Error = DispatcherError<ConnError>;

    ntex::forward_ready!(inner);
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(
        &self,
        req: v3::codec::Decoded,
        ctx: ServiceCtx<'_, Self>,
    ) -> Result<Self::Response, Self::Error> {
        use v3::codec::{Decoded, Encoded, Packet};
        match &req {
            Decoded::Publish(pkt, ..) if pkt.qos == QoS::ExactlyOnce => {
                if let Some(id) = pkt.packet_id {
                    self.known.borrow_mut().insert(id);
                }
            }
            Decoded::Packet(Packet::PublishRelease { packet_id }, _)
                if !self.known.borrow_mut().remove(packet_id) =>
            {
                return Ok(Some(Encoded::Packet(Packet::PublishComplete {
                    packet_id: *packet_id,
                })));
            }
            _ => {}
        }
        ctx.call(&self.inner, req).await
    }
}
