//! MQTT 3.1.1: the handshake, publish, protocol and control services.

use std::sync::atomic::Ordering::Relaxed;

use futures::FutureExt as _;
use ntex::io::types::PeerAddr;
use ntex::service::{ServiceFactory, fn_factory_with_config, fn_service};
use ntex::time::Seconds;
use ntex_mqtt::error::ProtocolError;
use ntex_mqtt::{Control, Reason, v3};

use super::acks::Deferred;
use super::convert;
use super::intake;
use super::pump;
use super::qos2;
use super::reason::{self, ConnError, ConnectRefusal, PublishRejection, V3Verdict};
use super::session::{self, Conn, Ctx, OpenRequest, Routed, Sink};
use crate::broker::{DisconnectKind, ProtocolVersion, Submitted};
use crate::domain::SubscriptionOptions;
use crate::domain::WriteOp;
use crate::telemetry::names::{
    CLIENT_ID, ERROR_MESSAGE, MQTT_PROTOCOL, MQTT_REASON_CODE, MQTT_TOPIC,
};

pub(super) async fn handshake(
    ctx: &Ctx,
    h: v3::Handshake,
) -> Result<v3::HandshakeAck<Conn>, ConnError> {
    let limits = ctx.broker.limits();
    let pkt = h.packet();
    let raw_id = pkt.client_id.clone();
    let clean = pkt.clean_session;
    let (client_id, assigned) =
        match session::client_id(ctx, ProtocolVersion::V311, &pkt.client_id, clean) {
            Ok(id) => id,
            Err(r) => return refuse(ctx, h, &raw_id, r),
        };
    let will =
        match pkt.last_will.as_ref().map(|w| convert::will_v3(w, &client_id, limits)).transpose() {
            Ok(will) => will,
            Err(r) => return refuse(ctx, h, &raw_id, r),
        };
    let keep_alive = pkt.keep_alive;
    let req = OpenRequest {
        protocol: ProtocolVersion::V311,
        client_id,
        assigned,
        clean_start: clean,
        session_expiry_secs: convert::session_expiry_v3(clean),
        username: pkt.username.clone(),
        password: pkt.password.clone(),
        will,
        peer: h.io().query::<PeerAddr>().as_ref().map(|p| p.0),
        problem_info: false,
    };

    let opened = match session::open(ctx, req, Some(Sink::V3(h.sink())), h.io().get_ref()).await {
        Ok(opened) => opened,
        Err(r) => return refuse(ctx, h, &raw_id, r),
    };
    let session_present = opened.session_present;
    let ack = h.ack(opened.conn, session_present).max_send(Some(limits.max_inflight));
    // Keep-alive 0 means none; ntex would otherwise close after 30 idle seconds.
    Ok(if keep_alive == 0 { ack.idle_timeout(Seconds::ZERO) } else { ack })
}

/// A refused CONNECT: a CONNACK return code, or closing without one when
/// 3.1.1 has no code for the reason.
fn refuse(
    ctx: &Ctx,
    h: v3::Handshake,
    client_id: &ntex::util::ByteString,
    refusal: ConnectRefusal,
) -> Result<v3::HandshakeAck<Conn>, ConnError> {
    ctx.broker.stats().rejected_connects.fetch_add(1, Relaxed);
    let code = refusal.v3();
    tracing::warn!(
        { CLIENT_ID } = %client_id,
        { MQTT_PROTOCOL } = "3.1.1",
        { MQTT_REASON_CODE } = code.map(u8::from),
        "connection refused: {}",
        refusal.as_str()
    );
    match code {
        Some(code) => Ok(h.failed(code)),
        None => Err(ConnError::protocol(refusal.as_str())),
    }
}

pub(super) async fn publish(conn: &Conn, p: v3::Publish) -> Result<(), ConnError> {
    let pkt = p.packet();
    conn.broker.stats().received(p.payload_size());

    // QoS 2: route a packet id once per session, across its connections
    // [MQTT-4.3.3-10]. A resend gets its PUBREC (from ntex) unrouted.
    let taken = match pkt.packet_id.filter(|_| pkt.qos == ntex_mqtt::QoS::ExactlyOnce) {
        Some(id) => match qos2::Taken::begin(&conn.outbox, id) {
            Some(taken) => Some(taken),
            None => return Ok(()),
        },
        None => None,
    };
    // PUBREC follows, even for a message dropped here (3.1.1 has no failure
    // code for it): the id stays taken until PUBREL.
    let keep = |taken: Option<qos2::Taken>| taken.map(qos2::Taken::keep);
    let record = taken.as_ref().map(qos2::Taken::record).unwrap_or_default();
    match check_and_route(conn, &p, record)? {
        None => {
            keep(taken);
            Ok(())
        }
        Some(waiting) => {
            // PUBACK or PUBREC once committed (see `acks`).
            let c = conn.clone();
            conn.defer(Deferred::V3(Box::new(move |provisional| {
                Box::pin(async move {
                    match session::settle(&c, waiting).await {
                        Ok(_) => {}
                        Err(r) => rejected(&c, r)?,
                    }
                    keep(taken);
                    Ok(Some(provisional))
                })
            })));
            Ok(())
        }
    }
}

/// Check and route one PUBLISH, without waiting: `Some` when its
/// acknowledgement waits for its commit. `Err` closes the connection.
/// `record`: writes to commit with the message's own (see [`Conn::route`]).
fn check_and_route(
    conn: &Conn,
    p: &v3::Publish,
    record: Vec<WriteOp>,
) -> Result<Option<Submitted>, ConnError> {
    let pkt = p.packet();
    let qos = convert::qos_in(pkt.qos);
    let size = p.payload_size();

    let topic = match conn.check_publish(&pkt.topic, size) {
        Ok(topic) => topic,
        Err(r) => return rejected(conn, r).map(|()| None),
    };
    // Whole: the framing layer hands the dispatcher complete packets only.
    let Some(Ok(payload)) = p.read_all().now_or_never() else {
        tracing::debug!(
            parent: &conn.span,
            { { CLIENT_ID } = %conn.client_id },
            "publish payload incomplete"
        );
        return Err(ConnError::protocol("publish payload incomplete"));
    };
    let msg = conn.message(topic, payload, qos, pkt.retain, None, None);
    match conn.route(msg, record) {
        Ok(Routed::Done) => Ok(None),
        Ok(Routed::Waiting(waiting)) => Ok(Some(waiting)),
        Err(r) => rejected(conn, r).map(|()| None),
    }
}

fn rejected(conn: &Conn, rejection: PublishRejection) -> Result<(), ConnError> {
    conn.rejected();
    match rejection.v3() {
        V3Verdict::AckAndDrop => Ok(()),
        V3Verdict::Close(err) => Err(err),
    }
}

pub(super) async fn protocol(
    conn: &Conn,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, ConnError> {
    match msg {
        v3::ProtocolMessage::Subscribe(mut s) => {
            let _entered = conn.span.enter();
            subscribe(conn, &mut s)?;
            Ok(s.ack())
        }
        v3::ProtocolMessage::Unsubscribe(s) => {
            let _entered = conn.span.enter();
            unsubscribe(conn, &s)?;
            Ok(s.ack())
        }
        v3::ProtocolMessage::Disconnect(d) => {
            conn.finish(DisconnectKind::Clean, None);
            Ok(d.ack())
        }
        v3::ProtocolMessage::Ping(p) => Ok(p.ack()),
        // The session forgot the id already (`qos2`, in front of ntex).
        v3::ProtocolMessage::PublishRelease(r) => Ok(r.ack()),
    }
}

/// Check a SUBSCRIBE and hand it to the broker; its SUBACK is finished
/// once the broker answers (see `acks`).
fn subscribe(conn: &Conn, s: &mut v3::control::Subscribe) -> Result<(), ConnError> {
    let limits = conn.broker.limits().topic_limits();
    let auth = conn.broker.auth();

    let mut requests = Vec::new();
    let mut slots = Vec::new();
    for mut sub in s.iter_mut() {
        if sub.topic().contains('\0') {
            return Err(conn.nul_in_filter());
        }
        let options = SubscriptionOptions::qos(convert::qos_in(sub.qos()));
        match convert::subscribe_request(sub.topic(), options, limits) {
            Ok(req) if auth.can_subscribe(&conn.identity, &conn.client_id, &req.filter.filter) => {
                slots.push(Some((requests.len(), sub.topic().clone())));
                requests.push(req);
            }
            refused => {
                let why = if refused.is_ok() { "not authorized" } else { "topic filter invalid" };
                tracing::info!({ MQTT_TOPIC } = %sub.topic(), "subscription refused: {why}");
                sub.fail();
                slots.push(None);
            }
        }
    }
    if requests.is_empty() {
        return Ok(());
    }

    let results = conn.broker.subscribe(conn.client_id.clone(), conn.conn, requests);
    let span = conn.span.clone();
    conn.defer(Deferred::V3(Box::new(move |mut provisional| {
        Box::pin(async move {
            use v3::codec::{Encoded, Packet, SubscribeReturnCode};
            let results = results.await;
            let _entered = span.enter();
            if let Encoded::Packet(Packet::SubscribeAck { status, .. }) = &mut provisional {
                for (status, slot) in status.iter_mut().zip(slots) {
                    let Some((i, topic)) = slot else { continue };
                    *status = match results.get(i) {
                        Some(Ok(qos)) => SubscribeReturnCode::Success(convert::qos_out(*qos)),
                        Some(Err(e)) => {
                            tracing::info!(
                                { MQTT_TOPIC } = %topic,
                                { ERROR_MESSAGE } = %e,
                                "subscription refused"
                            );
                            SubscribeReturnCode::Failure
                        }
                        None => SubscribeReturnCode::Failure,
                    };
                }
            }
            Ok(Some(provisional))
        })
    })));
    Ok(())
}

/// Hand an UNSUBSCRIBE to the broker; its UNSUBACK leaves once the broker
/// has taken it (see `acks`).
fn unsubscribe(conn: &Conn, s: &v3::control::Unsubscribe) -> Result<(), ConnError> {
    if s.iter().any(|topic| topic.contains('\0')) {
        return Err(conn.nul_in_filter());
    }
    let limits = conn.broker.limits().topic_limits();
    let filters: Vec<_> = s
        .iter()
        .filter(|topic| crate::domain::SharedFilter::parse((*topic).clone(), limits).is_ok())
        .cloned()
        .collect();
    if filters.is_empty() {
        return Ok(());
    }
    let done = conn.broker.unsubscribe(conn.client_id.clone(), conn.conn, filters);
    conn.defer(Deferred::V3(Box::new(move |provisional| {
        Box::pin(async move {
            done.await;
            Ok(Some(provisional))
        })
    })));
    Ok(())
}

pub(super) async fn control(
    conn: &Conn,
    msg: Control<ConnError>,
) -> Result<Option<v3::codec::Encoded>, ConnError> {
    match msg {
        Control::WrBackpressure(w) => conn.set_wr_backpressure(w.enabled()),
        Control::Stop(why) => {
            let _entered = conn.span.enter();
            match why {
                Reason::Error(e) => {
                    let e = e.get_ref();
                    tracing::info!(
                        { CLIENT_ID } = %conn.client_id,
                        { MQTT_REASON_CODE } = u8::from(e.code),
                        "closing connection: {}",
                        e.reason
                    );
                }
                Reason::Protocol(p) => protocol_error(conn, p.get_ref()),
                Reason::PeerGone(g) => {
                    tracing::debug!(
                        { CLIENT_ID } = %conn.client_id,
                        { ERROR_MESSAGE } = g.err().map(tracing::field::display),
                        "connection lost"
                    );
                }
            }
            conn.finish(DisconnectKind::Unclean, None);
        }
    }
    // 3.1.1 has no server DISCONNECT: closing is the message.
    Ok(None)
}

fn protocol_error(conn: &Conn, err: &ProtocolError) {
    if matches!(err, ProtocolError::KeepAliveTimeout) {
        tracing::info!({ CLIENT_ID } = %conn.client_id, "keep-alive timeout");
    } else {
        conn.broker.stats().protocol_errors.fetch_add(1, Relaxed);
        let code = reason::protocol_error(err).reason_code;
        tracing::warn!(
            { CLIENT_ID } = %conn.client_id,
            { MQTT_REASON_CODE } = u8::from(code),
            { ERROR_MESSAGE } = %err,
            "protocol error"
        );
    }
}

pub(super) fn control_factory() -> impl ServiceFactory<
    Control<ConnError>,
    v3::Session<Conn>,
    Response = Option<v3::codec::Encoded>,
    Error = ConnError,
    InitError = ConnError,
> {
    fn_factory_with_config(async |session: v3::Session<Conn>| {
        // Created once per connection, after the CONNACK is written.
        let conn = (*session).clone();
        pump::spawn(conn.clone(), Sink::V3(session.sink().clone()));
        let control = fn_service({
            let conn = conn.clone();
            async move |msg| control(&conn, msg).await
        });
        Ok::<_, ConnError>(intake::Paced::new(control, conn))
    })
}

pub(super) fn protocol_factory() -> impl ServiceFactory<
    v3::ProtocolMessage,
    v3::Session<Conn>,
    Response = v3::ProtocolMessageAck,
    Error = ConnError,
    InitError = ConnError,
> {
    fn_factory_with_config(async |session: v3::Session<Conn>| {
        let conn = (*session).clone();
        Ok::<_, ConnError>(fn_service(async move |msg| {
            session::catch_panic(protocol(&conn, msg)).await
        }))
    })
}

pub(super) fn publish_factory() -> impl ServiceFactory<
    v3::Publish,
    v3::Session<Conn>,
    Response = (),
    Error = ConnError,
    InitError = ConnError,
> {
    fn_factory_with_config(async |session: v3::Session<Conn>| {
        let conn = (*session).clone();
        Ok::<_, ConnError>(fn_service(async move |p| session::catch_panic(publish(&conn, p)).await))
    })
}
