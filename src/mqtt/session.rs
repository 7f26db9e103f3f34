//! Per-connection state shared by the v3 and v5 handlers, and the steps both
//! protocol levels take: open a session, check and route a publish, end.
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
use ntex_mqtt::{v3, v5};
use tokio_util::sync::CancellationToken;

use super::convert;
use super::reason::{ConnectRefusal, PublishRejection};
use crate::broker::auth::Credentials;
use crate::broker::{
    BrokerHandle, ConnectRequest, ConnectionId, DisconnectKind, Identity, Message, MessageProps,
    Outbox, ProtocolVersion, PublishOutcome, QoS, Will,
};
use crate::domain::{ClientId, TopicName};
use crate::telemetry::names::ERROR_MESSAGE;

/// What every worker of the MQTT server shares (`Send`, cloned per worker).
#[derive(Clone)]
pub(super) struct Ctx {
    pub broker: BrokerHandle,
    /// Cancelled by `MqttServer::stop`: pumps send DISCONNECT 0x8B and close.
    pub shutdown: CancellationToken,
    /// Open MQTT connections (sessions that passed CONNECT), for a graceful stop.
    pub open: Arc<AtomicUsize>,
}

/// The outbound side of a connection, per protocol level.
pub(super) enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink),
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
    pub sink: Sink,
    pub io: IoRef,
    /// v5 "request problem information": reason strings only when asked.
    pub problem_info: bool,
    pub span: tracing::Span,
    /// Write back-pressure, as reported by the dispatcher's control messages.
    wr_backpressure: Cell<bool>,
    wr_ready: ntex::channel::condition::Condition,
    /// `broker.disconnect` was sent (exactly once per connection).
    finished: Cell<bool>,
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
        return Ok((ClientId::new(raw.clone()), false));
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
    sink: Sink,
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

    let outcome = broker
        .connect(ConnectRequest {
            client_id: client_id.clone(),
            protocol: req.protocol,
            clean_start: req.clean_start,
            session_expiry_secs: req.session_expiry_secs,
            will: req.will,
        })
        .await
        .map_err(|_| ConnectRefusal::Unavailable)?;

    // `clients_connected` is the router's (it counts attached sessions).
    broker.stats().clients_total.fetch_add(1, Relaxed);
    ctx.open.fetch_add(1, Relaxed);

    let span = tracing::info_span!(
        parent: None,
        "mqtt.connection",
        client.id = %client_id,
        client.address = req.peer.map(tracing::field::display),
        user.name = username.as_deref(),
        mqtt.protocol = protocol_name(req.protocol),
        mqtt.connection_id = outcome.conn,
    );
    span.in_scope(|| {
        tracing::info!(
            mqtt.clean_start = req.clean_start,
            mqtt.session_present = outcome.session_present,
            mqtt.session_expiry = outcome.session_expiry_secs,
            mqtt.client_id_assigned = req.assigned,
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
        sink,
        io,
        problem_info: req.problem_info,
        span,
        wr_backpressure: Cell::new(false),
        wr_ready: ntex::channel::condition::Condition::new(),
        finished: Cell::new(false),
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
        let limits = self.broker.limits();
        let topic = match TopicName::parse(topic.clone(), limits.topic_limits()) {
            Ok(t) => t,
            Err(e) => {
                self.broker.stats().protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    parent: &self.span,
                    client.id = %self.client_id,
                    mqtt.topic = %topic,
                    { ERROR_MESSAGE } = %e,
                    "publish rejected: invalid topic name"
                );
                return Err(PublishRejection::TopicInvalid);
            }
        };
        if payload_size > limits.max_payload_bytes as usize {
            tracing::warn!(
                parent: &self.span,
                client.id = %self.client_id,
                mqtt.topic = %topic,
                mqtt.payload_size = payload_size,
                "publish rejected: payload too large"
            );
            return Err(PublishRejection::PayloadTooLarge);
        }
        if !self.broker.auth().can_publish(&self.identity, &self.client_id, &topic) {
            tracing::warn!(
                parent: &self.span,
                client.id = %self.client_id,
                mqtt.topic = %topic,
                "publish rejected: not authorized"
            );
            return Err(PublishRejection::NotAuthorized);
        }
        Ok(topic)
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

    /// Route a message: QoS 0 without waiting, QoS ≥ 1 until it is durable.
    pub(super) async fn route(&self, msg: Message) -> Result<PublishOutcome, PublishRejection> {
        let result = if msg.qos == QoS::AtMostOnce {
            self.broker.publish_fire(msg).await.map(|()| PublishOutcome { matched: 1 })
        } else {
            self.broker.publish(msg).await
        };
        result.map_err(|e| {
            tracing::warn!(
                parent: &self.span,
                client.id = %self.client_id,
                { ERROR_MESSAGE } = %e,
                "publish failed"
            );
            PublishRejection::from(&e)
        })
    }

    pub(super) fn sink_open(&self) -> bool {
        match &self.sink {
            Sink::V3(s) => s.is_open(),
            Sink::V5(s) => s.is_open(),
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
            client.id = %self.client_id,
            mqtt.disconnect = ?kind,
            "client disconnected"
        );

        let broker = self.broker.clone();
        let client_id = self.client_id.clone();
        let conn = self.conn;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    broker.disconnect(client_id, conn, kind, session_expiry_secs).await
                });
            }
            Err(_) => {
                tracing::warn!(
                    client.id = %client_id,
                    "no runtime left to report the disconnect to the broker"
                );
            }
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        // Normally `finish` already ran (DISCONNECT or the control service's
        // Stop); this covers connections dropped without either.
        self.finish(DisconnectKind::Unclean, None);
    }
}
