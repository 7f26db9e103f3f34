//! Per-connection state shared by the MQTT 5.0 handlers and the 3.1.1
//! connection loop (`direct`), and the steps both protocol levels take: open
//! a session, check and route a publish, end.
//!
//! A [`Conn`] lives on the ntex worker that accepted the connection (`!Send`);
//! only `Send` broker calls leave it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use ntex::io::IoRef;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::v5;
use tokio_util::sync::CancellationToken;

use super::acks::Deferred;
use super::convert;
use super::pump::OutboundQos2;
use super::reason::{ConnError, ConnectRefusal, PublishRejection};
use crate::broker::auth::Credentials;
use crate::broker::{
    BrokerHandle, ConnectError, ConnectRequest, ConnectionId, DisconnectKind, Outbox,
    ProtocolVersion, PublishOutcome, Submitted, Will,
};
use crate::domain::WriteOp;
use crate::domain::{ClientId, TopicError, TopicName};
use crate::domain::{Identity, Message, MessageProps, QoS};
use crate::telemetry::names::{
    CLIENT_ADDRESS, CLIENT_ID, ERROR_MESSAGE, MQTT_CLEAN_START, MQTT_CLIENT_ID_ASSIGNED,
    MQTT_CONNECTION_ID, MQTT_DISCONNECT, MQTT_PAYLOAD_SIZE, MQTT_PROTOCOL, MQTT_SESSION_EXPIRY,
    MQTT_SESSION_PRESENT, MQTT_TOPIC, USER_NAME,
};

/// Publishing here panics inside the connection task when
/// `debug.panic_endpoint` is on (to check crash reports end to end).
pub(super) const DEBUG_PANIC_TOPIC: &str = "$debug/panic";

/// Run a packet handler so that a panic in it ends only its connection: the
/// crash reporter has recorded the panic; the connection closes as on an
/// error (v5: DISCONNECT "implementation specific error").
pub(super) fn catch_panic<T>(
    handler: impl Future<Output = Result<T, ConnError>>,
) -> impl Future<Output = Result<T, ConnError>> {
    // A combinator, not an `async fn`: that would hold the handler's state
    // twice (argument and moved copy) in every packet's future.
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(handler).catch_unwind().map(|result| {
        result.unwrap_or_else(|_| {
            Err(ConnError::new(
                ntex_mqtt::v5::codec::DisconnectReasonCode::ImplementationSpecificError,
                "internal error",
            ))
        })
    })
}

/// The span of an MQTT 5 publish that carries a W3C `traceparent` user
/// property: it continues the publisher's trace, so the broker's work is
/// part of it. Publishes without one get no span (no per-message cost).
pub(super) fn publish_span(conn: &ConnState, props: &[(ByteString, ByteString)]) -> tracing::Span {
    use crate::telemetry::otel;
    let Some((_, traceparent)) = props.iter().find(|(k, _)| k == otel::TRACEPARENT) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        parent: &conn.span,
        "mqtt.publish",
        { crate::telemetry::names::TRACE_ID } = tracing::field::Empty,
    );
    otel::continue_trace(&span, traceparent);
    span
}

/// What every worker of the MQTT server shares (`Send`, cloned per worker).
#[derive(Clone)]
pub(super) struct Ctx {
    pub broker: BrokerHandle,
    /// Cancelled by `MqttServer::stop`: pumps send DISCONNECT 0x8B and close.
    pub shutdown: CancellationToken,
    /// Open MQTT connections (sessions that passed CONNECT), for a graceful stop.
    pub open: Arc<AtomicUsize>,
}

/// One connected client.
pub(super) struct ConnState {
    pub broker: BrokerHandle,
    pub shutdown: CancellationToken,
    open: Arc<AtomicUsize>,
    pub client_id: ClientId,
    pub conn: ConnectionId,
    pub identity: Identity,
    pub outbox: Arc<Outbox>,
    /// Outbound QoS 2 state shared by the pump and the `qos2` middleware.
    pub qos2_out: Rc<OutboundQos2>,
    /// ntex-mqtt's sink (MQTT 5.0); `None` for a connection served by
    /// `direct`, which writes straight to its `Io`.
    pub sink: Option<v5::MqttSink>,
    pub io: IoRef,
    /// v5 "request problem information": reason strings only when asked.
    pub problem_info: bool,
    pub span: tracing::Span,
    /// Write back-pressure, as reported by the dispatcher's control messages.
    wr_backpressure: Cell<bool>,
    wr_ready: ntex::channel::condition::Condition,
    /// `broker.disconnect` was sent (exactly once per connection).
    finished: Cell<bool>,
    /// What the packet handler running now left undecided (see `acks`).
    deferred: Cell<Option<Deferred>>,
}

/// Shared handle on [`ConnState`]; the ntex `Session` state of both levels.
#[derive(Clone)]
pub(super) struct Conn(Rc<ConnState>);

impl Deref for Conn {
    type Target = ConnState;

    fn deref(&self) -> &ConnState {
        &self.0
    }
}

/// A CONNECT, translated.
pub(super) struct OpenRequest {
    pub protocol: ProtocolVersion,
    pub client_id: ClientId,
    /// The broker chose the client id (the client sent none).
    pub assigned: bool,
    pub clean_start: bool,
    pub session_expiry_secs: u32,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    pub peer: Option<SocketAddr>,
    pub problem_info: bool,
}

/// A session opened for a connection.
pub(super) struct Opened {
    pub conn: Conn,
    pub session_present: bool,
    pub session_expiry_secs: u32,
}

/// The client id of a CONNECT, and whether the broker assigned it: an empty
/// id gets a generated one, except for a 3.1.1 persistent session.
pub(super) fn client_id(
    ctx: &Ctx,
    protocol: ProtocolVersion,
    raw: &ByteString,
    clean_start: bool,
) -> Result<(ClientId, bool), ConnectRefusal> {
    if !raw.is_empty() {
        let id = ClientId::new(raw.clone());
        if id.is_internal() {
            return Err(ConnectRefusal::ClientIdReserved);
        }
        return Ok((id, false));
    }
    if protocol == ProtocolVersion::V311 && !clean_start {
        return Err(ConnectRefusal::ClientIdRejected);
    }
    Ok((convert::generated_client_id(ctx.broker.next_connection_id()), true))
}

/// Authenticate, check the will, and open (or resume) the session.
pub(super) async fn open(
    ctx: &Ctx,
    req: OpenRequest,
    sink: Option<v5::MqttSink>,
    io: IoRef,
) -> Result<Opened, ConnectRefusal> {
    let broker = &ctx.broker;
    let client_id = req.client_id;

    let creds = Credentials {
        client_id: client_id.clone(),
        username: req.username.map(|u| u.to_string()),
        password: convert::password(req.password.as_ref()),
        peer: req.peer,
    };
    let identity = broker.auth().authenticate(&creds).await.map_err(ConnectRefusal::Auth)?;
    let username = creds.username;
    drop(creds.password);

    if let Some(will) = &req.will
        && !broker.auth().can_publish(&identity, &client_id, &will.message.topic)
    {
        return Err(ConnectRefusal::WillNotAuthorized);
    }
    // A will lands on its topic like any publish: an invalid location there
    // is refused now, while the client can still be told.
    if let Some(will) = &req.will
        && broker.check_payload(&will.message).is_err()
    {
        return Err(ConnectRefusal::WillPayloadInvalid);
    }

    let outcome = broker
        .connect(ConnectRequest {
            client_id: client_id.clone(),
            protocol: req.protocol,
            clean_start: req.clean_start,
            session_expiry_secs: req.session_expiry_secs,
            will: req.will,
            identity: identity.clone(),
        })
        .await
        .map_err(|e| match e {
            ConnectError::NotOwner => ConnectRefusal::SessionOwnedByOther,
            ConnectError::ShuttingDown | ConnectError::Unavailable => ConnectRefusal::Unavailable,
            ConnectError::Superseded => ConnectRefusal::Superseded,
        })?;

    // `clients_connected` is the router's (it counts attached sessions).
    broker.stats().clients_total.fetch_add(1, Relaxed);
    ctx.open.fetch_add(1, Relaxed);

    let span = tracing::info_span!(
        parent: None,
        "mqtt.connection",
        { CLIENT_ID } = %client_id,
        { CLIENT_ADDRESS } = req.peer.map(tracing::field::display),
        { USER_NAME } = username.as_deref(),
        { MQTT_PROTOCOL } = protocol_name(req.protocol),
        { MQTT_CONNECTION_ID } = outcome.conn,
    );
    span.in_scope(|| {
        tracing::info!(
            { MQTT_CLEAN_START } = req.clean_start,
            { MQTT_SESSION_PRESENT } = outcome.session_present,
            { MQTT_SESSION_EXPIRY } = outcome.session_expiry_secs,
            { MQTT_CLIENT_ID_ASSIGNED } = req.assigned,
            "client connected"
        );
    });

    let state = ConnState {
        broker: broker.clone(),
        shutdown: ctx.shutdown.clone(),
        open: ctx.open.clone(),
        client_id,
        conn: outcome.conn,
        identity,
        outbox: outcome.outbox,
        qos2_out: Rc::default(),
        sink,
        io,
        problem_info: req.problem_info,
        span,
        wr_backpressure: Cell::new(false),
        wr_ready: ntex::channel::condition::Condition::new(),
        finished: Cell::new(false),
        deferred: Cell::new(None),
    };
    Ok(Opened {
        conn: Conn(Rc::new(state)),
        session_present: outcome.session_present,
        session_expiry_secs: outcome.session_expiry_secs,
    })
}

fn protocol_name(p: ProtocolVersion) -> &'static str {
    match p {
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

impl ConnState {
    /// Parse the topic, check the payload size and the ACL of a publish,
    /// before its payload is read.
    pub(super) fn check_publish(
        &self,
        topic: &ByteString,
        payload_size: usize,
    ) -> Result<TopicName, PublishRejection> {
        if self.may_trigger_debug_panic() && topic == DEBUG_PANIC_TOPIC {
            let _entered = self.span.enter();
            tracing::warn!("panicking on publish to {DEBUG_PANIC_TOPIC} (debug.panic_endpoint)");
            panic!("debug panic requested by a publish to {DEBUG_PANIC_TOPIC}");
        }
        let limits = self.broker.limits();
        let topic = match TopicName::parse(topic.clone(), limits.topic_limits()) {
            Ok(t) => t,
            Err(e) => {
                self.broker.stats().protocol_errors.fetch_add(1, Relaxed);
                let rejection = match e {
                    TopicError::Nul => PublishRejection::Malformed,
                    _ => PublishRejection::TopicInvalid,
                };
                tracing::warn!(
                    parent: &self.span,
                    {
                        { CLIENT_ID } = %self.client_id,
                        { MQTT_TOPIC } = %topic,
                        { ERROR_MESSAGE } = %e,
                    },
                    "publish rejected: invalid topic name"
                );
                return Err(rejection);
            }
        };
        if payload_size > limits.max_payload_bytes as usize {
            tracing::warn!(
                parent: &self.span,
                {
                    { CLIENT_ID } = %self.client_id,
                    { MQTT_TOPIC } = %topic,
                    { MQTT_PAYLOAD_SIZE } = payload_size,
                },
                "publish rejected: payload too large"
            );
            return Err(PublishRejection::PayloadTooLarge);
        }
        if !self.broker.auth().can_publish(&self.identity, &self.client_id, &topic) {
            tracing::warn!(
                parent: &self.span,
                { { CLIENT_ID } = %self.client_id, { MQTT_TOPIC } = %topic },
                "publish rejected: not authorized"
            );
            return Err(PublishRejection::NotAuthorized);
        }
        Ok(topic)
    }

    /// `debug.panic_endpoint` is on and the client is an admin (or
    /// anonymous, which only exists when anonymous access is allowed).
    fn may_trigger_debug_panic(&self) -> bool {
        crate::telemetry::crash::debug_triggers_enabled()
            && (self.identity.is_admin() || self.identity.is_anonymous())
    }

    /// The message a checked publish becomes.
    pub(super) fn message(
        &self,
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        props: Option<Arc<MessageProps>>,
        expires_at: Option<Instant>,
    ) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            props,
            expires_at,
            received_at: SystemTime::now(),
            publisher: Some(self.client_id.clone()),
        }
    }

    /// Hand a publish to the broker now: the connection's packets reach the
    /// router in the order they arrived (see `acks`); the listener stops
    /// reading while the broker is saturated (see `intake`). A QoS≥1 publish
    /// is acknowledged once [`settle`] says so. `record` (a QoS 2 publish's
    /// packet id, see `qos2::Taken::record`) commits with the message.
    pub(super) fn route(
        &self,
        msg: Message,
        record: Vec<WriteOp>,
    ) -> Result<Routed, PublishRejection> {
        let routed = if msg.qos == QoS::AtMostOnce {
            self.broker.submit(msg).map(|()| Routed::Done)
        } else {
            self.broker.submit_durable_with(msg, record).map(Routed::Waiting)
        };
        routed.map_err(|e| self.publish_failed(&e))
    }

    fn publish_failed(&self, e: &crate::broker::PublishError) -> PublishRejection {
        tracing::warn!(
            parent: &self.span,
            { { CLIENT_ID } = %self.client_id, { ERROR_MESSAGE } = %e },
            "publish failed"
        );
        PublishRejection::from(e)
    }

    /// Leave the undecided part of this packet's answer to the in-order
    /// writer (`acks`), which takes it as soon as the handler returns.
    pub(super) fn defer(&self, deferred: Deferred) {
        self.deferred.set(Some(deferred));
    }

    pub(super) fn take_deferred(&self) -> Option<Deferred> {
        self.deferred.take()
    }

    /// A topic filter with U+0000: counted and logged; the error closes the
    /// connection as malformed [MQTT-1.5.4-2].
    pub(super) fn nul_in_filter(&self) -> ConnError {
        self.broker.stats().protocol_errors.fetch_add(1, Relaxed);
        tracing::warn!(
            parent: &self.span,
            { { CLIENT_ID } = %self.client_id },
            "protocol error: U+0000 in a topic filter"
        );
        super::reason::NUL_IN_STRING
    }

    /// Close the connection; v5 clients are told why.
    pub(super) fn close(&self, err: ConnError) {
        match &self.sink {
            Some(s) => s.close_with_reason(err.disconnect()),
            None => self.io.close(),
        }
    }

    pub(super) fn sink_open(&self) -> bool {
        match &self.sink {
            Some(s) => s.is_open(),
            None => !self.io.is_closed(),
        }
    }

    /// Count a rejected publish.
    pub(super) fn rejected(&self) {
        self.broker.stats().rejected_publishes.fetch_add(1, Relaxed);
    }

    pub(super) fn wr_backpressure(&self) -> bool {
        self.wr_backpressure.get()
    }

    pub(super) fn set_wr_backpressure(&self, enabled: bool) {
        self.wr_backpressure.set(enabled);
        if !enabled {
            self.wr_ready.notify();
        }
    }

    /// Resolves once write back-pressure is off.
    pub(super) async fn wr_ready(&self) {
        while self.wr_backpressure.get() {
            let waiter = self.wr_ready.wait();
            if !self.wr_backpressure.get() {
                break;
            }
            waiter.ready().await;
        }
    }

    /// The connection ended: requeue what was in flight and tell the broker,
    /// exactly once. Safe to call from `Drop` (never panics, no local spawn).
    pub(super) fn finish(&self, kind: DisconnectKind, session_expiry_secs: Option<u32>) {
        if self.finished.replace(true) {
            return;
        }
        self.outbox.detach(self.conn);
        self.open.fetch_sub(1, Relaxed);
        tracing::info!(
            parent: &self.span,
            { { CLIENT_ID } = %self.client_id, { MQTT_DISCONNECT } = ?kind },
            "client disconnected"
        );

        // Queued before the socket closes: a client that reconnects as soon
        // as it sees the close must find this session already ended.
        self.broker.disconnect(self.client_id.clone(), self.conn, kind, session_expiry_secs);
    }
}

/// A publish handed to the broker.
pub(super) enum Routed {
    /// Nothing to wait for, nobody to report to (QoS 0).
    Done,
    /// Acknowledged once [`settle`]d.
    Waiting(Submitted),
}

/// Wait until a routed publish may be acknowledged.
pub(super) async fn settle(
    conn: &Conn,
    waiting: Submitted,
) -> Result<PublishOutcome, PublishRejection> {
    waiting.settled().await.map_err(|e| conn.publish_failed(&e))
}

impl Drop for ConnState {
    fn drop(&mut self) {
        // Normally `finish` already ran (DISCONNECT or the control service's
        // Stop); this covers connections dropped without either.
        self.finish(DisconnectKind::Unclean, None);
    }
}
