//! MQTT 3.1.1: the handshake, publish, protocol and control services.

use std::sync::atomic::Ordering::Relaxed;

use ntex::io::types::PeerAddr;
use ntex::service::{ServiceFactory, fn_factory_with_config, fn_service};
use ntex::time::Seconds;
use ntex_mqtt::error::ProtocolError;
use ntex_mqtt::{Control, Reason, v3};
use tracing::Instrument;

use super::convert;
use super::intake;
use super::pump;
use super::qos2;
use super::reason::{self, ConnError, ConnectRefusal, PublishRejection, V3Verdict};
use super::session::{self, Conn, Ctx, OpenRequest, Sink};
use crate::broker::{DisconnectKind, ProtocolVersion, SubscriptionOptions};
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

    let opened = match session::open(ctx, req, Sink::V3(h.sink()), h.io().get_ref()).await {
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
    let res = check_and_route(conn, &p).await;
    if res.is_ok()
        && let Some(taken) = taken
    {
        // PUBREC follows, even for a message dropped here (3.1.1 has no
        // failure code for it): the id stays taken until PUBREL.
        taken.keep();
    }
    res
}

/// Check and route one PUBLISH; `Err` closes the connection.
async fn check_and_route(conn: &Conn, p: &v3::Publish) -> Result<(), ConnError> {
    let pkt = p.packet();
    let qos = convert::qos_in(pkt.qos);
    let size = p.payload_size();

    let topic = match conn.check_publish(&pkt.topic, size) {
        Ok(topic) => topic,
        Err(r) => return rejected(conn, r),
    };
    let payload = p.read_all().await.map_err(|e| {
        tracing::debug!(
            parent: &conn.span,
            { { CLIENT_ID } = %conn.client_id, { ERROR_MESSAGE } = %e },
            "publish payload incomplete"
        );
        ConnError::protocol("publish payload incomplete")
    })?;
    let msg = conn.message(topic, payload, qos, pkt.retain, None, None);
    match conn.route(msg).await {
        Ok(_) => Ok(()),
        Err(r) => rejected(conn, r),
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
            subscribe(conn, &mut s).instrument(conn.span.clone()).await;
            Ok(s.ack())
        }
        v3::ProtocolMessage::Unsubscribe(s) => {
            unsubscribe(conn, &s).instrument(conn.span.clone()).await;
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

async fn subscribe(conn: &Conn, s: &mut v3::control::Subscribe) {
    let limits = conn.broker.limits().topic_limits();
    let auth = conn.broker.auth();

    let mut requests = Vec::new();
    let mut slots = Vec::new();
    for mut sub in s.iter_mut() {
        let options = SubscriptionOptions::qos(convert::qos_in(sub.qos()));
        match convert::subscribe_request(sub.topic(), options, limits) {
            Ok(req) if auth.can_subscribe(&conn.identity, &conn.client_id, &req.filter.filter) => {
                slots.push(Some(requests.len()));
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

    let results = if requests.is_empty() {
        Vec::new()
    } else {
        conn.broker.subscribe(conn.client_id.clone(), conn.conn, requests).await
    };
    for (mut sub, slot) in s.iter_mut().zip(slots) {
        let Some(i) = slot else { continue };
        match results.get(i) {
            Some(Ok(qos)) => sub.confirm(convert::qos_out(*qos)),
            Some(Err(e)) => {
                tracing::info!(
                    { MQTT_TOPIC } = %sub.topic(),
                    { ERROR_MESSAGE } = %e,
                    "subscription refused"
                );
                sub.fail();
            }
            None => sub.fail(),
        }
    }
}

async fn unsubscribe(conn: &Conn, s: &v3::control::Unsubscribe) {
    let limits = conn.broker.limits().topic_limits();
    let filters: Vec<_> = s
        .iter()
        .filter(|topic| crate::domain::SharedFilter::parse((*topic).clone(), limits).is_ok())
        .cloned()
        .collect();
    if !filters.is_empty() {
        conn.broker.unsubscribe(conn.client_id.clone(), conn.conn, filters).await;
    }
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
        pump::spawn(conn.clone());
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
