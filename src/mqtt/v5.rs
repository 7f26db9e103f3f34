//! MQTT 5.0: the handshake, publish, protocol and control services.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use futures::FutureExt as _;
use ntex::io::types::PeerAddr;
use ntex::service::{ServiceFactory, fn_factory_with_config, fn_service};
use ntex::util::ByteString;
use ntex_mqtt::error::ProtocolError;
use ntex_mqtt::{Control, Reason, v5};
use tracing::Instrument;
use v5::codec::{DisconnectReasonCode, PublishAckReason, SubscribeAckReason, UnsubscribeAckReason};

use super::acks::Deferred;
use super::convert;
use super::intake;
use super::pump;
use super::reason::{
    self, ConnError, ConnectRefusal, PublishRejection, SubscribeRefusal, V5Verdict,
};
use super::session::{self, Conn, Ctx, OpenRequest, Routed};
use crate::broker::{DisconnectKind, ProtocolVersion, Submitted};
use crate::domain::QoS;
use crate::domain::WriteOp;
use crate::telemetry::names::{
    CLIENT_ID, ERROR_MESSAGE, MQTT_PROTOCOL, MQTT_REASON_CODE, MQTT_TOPIC,
};

pub(super) async fn handshake(
    ctx: &Ctx,
    h: v5::Handshake,
) -> Result<v5::HandshakeAck<Conn>, ConnError> {
    let limits = ctx.broker.limits();
    let pkt = h.packet();
    let raw_id = pkt.client_id.clone();
    if pkt.auth_method.is_some() {
        return Ok(refuse(ctx, h, &raw_id, ConnectRefusal::BadAuthMethod));
    }
    let (client_id, assigned) =
        match session::client_id(ctx, ProtocolVersion::V5, &pkt.client_id, pkt.clean_start) {
            Ok(id) => id,
            Err(r) => return Ok(refuse(ctx, h, &raw_id, r)),
        };
    let will =
        match pkt.last_will.as_ref().map(|w| convert::will_v5(w, &client_id, limits)).transpose() {
            Ok(will) => will,
            Err(r) => return Ok(refuse(ctx, h, &raw_id, r)),
        };
    let keep_alive = pkt.keep_alive;
    let requested_expiry = pkt.session_expiry_interval_secs;
    let req = OpenRequest {
        protocol: ProtocolVersion::V5,
        client_id,
        assigned,
        clean_start: pkt.clean_start,
        session_expiry_secs: requested_expiry,
        username: pkt.username.clone(),
        password: pkt.password.clone(),
        will,
        peer: h.io().query::<PeerAddr>().as_ref().map(|p| p.0),
        problem_info: pkt.request_problem_info,
    };

    let opened = match session::open(ctx, req, Some(h.sink()), h.io().get_ref()).await {
        Ok(opened) => opened,
        Err(r) => return Ok(refuse(ctx, h, &raw_id, r)),
    };
    let assigned_id = assigned.then(|| opened.conn.client_id.as_bytestring().clone());
    let session_present = opened.session_present;
    let granted_expiry = opened.session_expiry_secs;

    let mut ack = h.ack(opened.conn).max_send(Some(limits.max_inflight)).with(|p| {
        p.session_present = session_present;
        p.assigned_client_id = assigned_id;
        p.retain_available = true;
        p.wildcard_subscription_available = true;
        p.shared_subscription_available = true;
        p.subscription_identifiers_available = true;
        if granted_expiry != requested_expiry {
            p.session_expiry_interval_secs = Some(granted_expiry);
        }
    });
    let server_keep_alive = limits.server_keep_alive_secs;
    if server_keep_alive > 0 && (keep_alive == 0 || keep_alive > server_keep_alive) {
        ack = ack
            .keep_alive(server_keep_alive.saturating_add(server_keep_alive / 2))
            .with(|p| p.server_keepalive_sec = Some(server_keep_alive));
    } else if keep_alive == 0 {
        // The client asked for no keep-alive; ntex would otherwise close it
        // after 30 idle seconds. The longest timeout ntex allows.
        ack = ack.keep_alive(u16::MAX);
    }
    Ok(ack)
}

fn refuse(
    ctx: &Ctx,
    h: v5::Handshake,
    client_id: &ByteString,
    refusal: ConnectRefusal,
) -> v5::HandshakeAck<Conn> {
    let code = refusal.v5();
    ctx.broker.stats().rejected_connects.fetch_add(1, Relaxed);
    tracing::warn!(
        { CLIENT_ID } = %client_id,
        { MQTT_PROTOCOL } = "5.0",
        { MQTT_REASON_CODE } = u8::from(code),
        "connection refused: {}",
        refusal.as_str()
    );
    // CONNACK may carry a reason string whatever "request problem info" says.
    let reason = ByteString::from_static(refusal.as_str());
    h.failed(code).with(|p| p.reason_string = Some(reason))
}

pub(super) async fn publish(conn: &Conn, p: v5::Publish) -> Result<v5::PublishAck, ConnError> {
    let qos = convert::qos_in(p.packet().qos);
    let (code, why) = match handle_publish(conn, &p, Vec::new())? {
        Handled::Now(code, why) => (code, why),
        Handled::Later(waiting) => {
            // PUBACK once committed; the provisional one below is amended.
            let c = conn.clone();
            conn.defer(Deferred::V5(
                Box::new(move |provisional| {
                    Box::pin(async move {
                        let (code, why) = settle(&c, waiting, qos).await?;
                        Ok(Some(amend_ack(provisional, code, why, c.problem_info)))
                    })
                }),
                qos == QoS::AtLeastOnce,
            ));
            (PublishAckReason::Success, None)
        }
    };
    let ack = v5::PublishAck::new(code);
    Ok(match why {
        Some(why) if conn.problem_info => ack.reason(ByteString::from_static(why)),
        _ => ack,
    })
}

/// The verdict on a PUBLISH, now or once its writes are committed.
pub(super) enum Handled {
    Now(PublishAckReason, Option<&'static str>),
    Later(Submitted),
}

/// Check and route one PUBLISH and decide its acknowledgement (the PUBACK or
/// PUBREC reason and its reason string), or leave it to [`settle`]. Never
/// waits (see `acks`). `Err` closes the connection. `record`: writes to
/// commit with the message's own (see [`Conn::route`]).
pub(super) fn handle_publish(
    conn: &Conn,
    p: &v5::Publish,
    record: Vec<WriteOp>,
) -> Result<Handled, ConnError> {
    let pkt = p.packet();
    let qos = convert::qos_in(pkt.qos);
    let size = p.payload_size();
    conn.broker.stats().received(size);

    let topic = match conn.check_publish(&pkt.topic, size) {
        Ok(topic) => topic,
        Err(r) => return rejected(conn, r, qos),
    };
    let limits = conn.broker.limits().topic_limits();
    let Ok((props, expires_at)) =
        convert::inbound_props_v5(&pkt.properties, limits, Instant::now())
    else {
        tracing::warn!(
            parent: &conn.span,
            { { CLIENT_ID } = %conn.client_id, { MQTT_TOPIC } = %topic },
            "publish rejected: invalid response topic"
        );
        return rejected(conn, PublishRejection::TopicInvalid, qos);
    };
    // Whole: the framing layer hands the dispatcher complete packets only.
    let payload = match p.read_all().now_or_never() {
        Some(Ok(payload)) => payload,
        _ => {
            tracing::debug!(
                parent: &conn.span,
                { { CLIENT_ID } = %conn.client_id },
                "publish payload incomplete"
            );
            return Err(ConnError::new(
                DisconnectReasonCode::UnspecifiedError,
                "publish payload incomplete",
            ));
        }
    };

    let msg = conn.message(topic, payload, qos, pkt.retain, props, expires_at);
    match conn.route(msg, record) {
        // QoS 0: no PUBACK carries a reason.
        Ok(Routed::Done) => Ok(Handled::Now(PublishAckReason::Success, None)),
        Ok(Routed::Waiting(waiting)) => Ok(Handled::Later(waiting)),
        Err(r) => rejected(conn, r, qos),
    }
}

/// The acknowledgement of a publish [`Handled::Later`], once settled.
pub(super) async fn settle(
    conn: &Conn,
    waiting: Submitted,
    qos: QoS,
) -> Result<(PublishAckReason, Option<&'static str>), ConnError> {
    match session::settle(conn, waiting).await {
        Ok(outcome) => Ok((reason::publish_routed_v5(outcome), None)),
        Err(r) => match rejected(conn, r, qos)? {
            Handled::Now(code, why) => Ok((code, why)),
            Handled::Later(_) => unreachable!("a rejection is decided at once"),
        },
    }
}

/// The provisional PUBACK or PUBREC of a deferred publish, with its verdict.
pub(super) fn amend_ack(
    mut answer: v5::codec::Encoded,
    code: PublishAckReason,
    why: Option<&'static str>,
    problem_info: bool,
) -> v5::codec::Encoded {
    use v5::codec::{Encoded, Packet};
    if let Encoded::Packet(Packet::PublishAck(ack) | Packet::PublishReceived(ack)) = &mut answer {
        ack.reason_code = code;
        ack.reason_string = why.filter(|_| problem_info).map(ByteString::from_static);
    }
    answer
}

fn rejected(conn: &Conn, rejection: PublishRejection, qos: QoS) -> Result<Handled, ConnError> {
    conn.rejected();
    match rejection.v5(qos) {
        V5Verdict::Ack(code, why) => Ok(Handled::Now(code, Some(why))),
        // QoS 0: nothing is sent back.
        V5Verdict::Drop => Ok(Handled::Now(PublishAckReason::Success, None)),
        V5Verdict::Disconnect(err) => Err(err),
    }
}

pub(super) async fn protocol(
    conn: &Conn,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, ConnError> {
    match msg {
        v5::ProtocolMessage::Subscribe(mut s) => {
            let _entered = conn.span.enter();
            subscribe(conn, &mut s)?;
            Ok(s.ack())
        }
        v5::ProtocolMessage::Unsubscribe(mut s) => {
            let _entered = conn.span.enter();
            unsubscribe(conn, &mut s)?;
            Ok(s.ack())
        }
        v5::ProtocolMessage::Disconnect(d) => {
            let pkt = d.packet();
            let kind = if pkt.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                DisconnectKind::CleanWithWill
            } else {
                DisconnectKind::Clean
            };
            conn.finish(kind, pkt.session_expiry_interval_secs);
            Ok(d.ack())
        }
        v5::ProtocolMessage::Auth(_) => Err(ConnError::new(
            DisconnectReasonCode::BadAuthenticationMethod,
            "enhanced authentication is not supported",
        )),
        v5::ProtocolMessage::Ping(p) => Ok(p.ack()),
        v5::ProtocolMessage::PublishRelease(r) => Ok(r.ack()),
    }
}

/// Check a SUBSCRIBE and hand it to the broker; its SUBACK is finished
/// once the broker answers (see `acks`).
fn subscribe(conn: &Conn, s: &mut v5::control::Subscribe) -> Result<(), ConnError> {
    let limits = conn.broker.limits().topic_limits();
    let sub_id = s.packet().id.map(NonZeroU32::get);
    let auth = conn.broker.auth();

    // Entries refused here never reach the broker; `slots` maps each entry
    // to its request (and result) index.
    let mut requests = Vec::new();
    let mut slots = Vec::new();
    for mut sub in s.iter_mut() {
        if sub.topic().contains('\0') {
            return Err(conn.nul_in_filter());
        }
        let options = convert::subscription_options_v5(sub.options(), sub_id);
        let refusal = match convert::subscribe_request(sub.topic(), options, limits) {
            Ok(req) if auth.can_subscribe(&conn.identity, &conn.client_id, &req.filter.filter) => {
                slots.push(Some((requests.len(), sub.topic().clone())));
                requests.push(req);
                continue;
            }
            Ok(_) => SubscribeRefusal::NotAuthorized,
            Err(Some(refusal)) => refusal,
            Err(None) => return Err(reason::NO_LOCAL_ON_SHARED),
        };
        tracing::info!(
            { MQTT_TOPIC } = %sub.topic(),
            { MQTT_REASON_CODE } = u8::from(refusal.v5()),
            "subscription refused"
        );
        sub.fail(refusal.v5());
        slots.push(None);
    }
    if requests.is_empty() {
        return Ok(());
    }

    let results = conn.broker.subscribe(conn.client_id.clone(), conn.conn, requests);
    let span = conn.span.clone();
    conn.defer(Deferred::V5(
        Box::new(move |mut provisional| {
            Box::pin(async move {
                let results = results.await;
                let _entered = span.enter();
                if let v5::codec::Encoded::Packet(v5::codec::Packet::SubscribeAck(ack)) =
                    &mut provisional
                {
                    for (status, slot) in ack.status.iter_mut().zip(slots) {
                        let Some((i, topic)) = slot else { continue };
                        *status = match results.get(i) {
                            Some(Ok(qos)) => granted(*qos),
                            Some(Err(e)) => {
                                let code = reason::suback_v5(*e);
                                tracing::info!(
                                    { MQTT_TOPIC } = %topic,
                                    { MQTT_REASON_CODE } = u8::from(code),
                                    { ERROR_MESSAGE } = %e,
                                    "subscription refused"
                                );
                                code
                            }
                            None => SubscribeAckReason::UnspecifiedError,
                        };
                    }
                }
                Ok(Some(provisional))
            })
        }),
        false,
    ));
    Ok(())
}

fn granted(qos: QoS) -> SubscribeAckReason {
    match qos {
        QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
        QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
        QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
    }
}

/// Hand an UNSUBSCRIBE to the broker; its UNSUBACK is finished once the
/// broker answers (see `acks`).
fn unsubscribe(conn: &Conn, s: &mut v5::control::Unsubscribe) -> Result<(), ConnError> {
    let limits = conn.broker.limits().topic_limits();
    let mut filters = Vec::new();
    let mut slots = Vec::new();
    for mut item in s.iter_mut() {
        if item.topic().contains('\0') {
            return Err(conn.nul_in_filter());
        }
        if crate::domain::SharedFilter::parse(item.topic().clone(), limits).is_ok() {
            slots.push(Some(filters.len()));
            filters.push(item.topic().clone());
        } else {
            item.fail(UnsubscribeAckReason::TopicFilterInvalid);
            slots.push(None);
        }
    }
    if filters.is_empty() {
        return Ok(());
    }
    let existed = conn.broker.unsubscribe(conn.client_id.clone(), conn.conn, filters);
    conn.defer(Deferred::V5(
        Box::new(move |mut provisional| {
            Box::pin(async move {
                let existed = existed.await;
                if let v5::codec::Encoded::Packet(v5::codec::Packet::UnsubscribeAck(ack)) =
                    &mut provisional
                {
                    for (status, slot) in ack.status.iter_mut().zip(slots) {
                        let Some(i) = slot else { continue };
                        *status = if existed.get(i).copied().unwrap_or(false) {
                            UnsubscribeAckReason::Success
                        } else {
                            UnsubscribeAckReason::NoSubscriptionExisted
                        };
                    }
                }
                Ok(Some(provisional))
            })
        }),
        false,
    ));
    Ok(())
}

pub(super) async fn control(
    conn: &Conn,
    msg: Control<ConnError>,
) -> Result<Option<v5::codec::Encoded>, ConnError> {
    match msg {
        Control::WrBackpressure(w) => {
            conn.set_wr_backpressure(w.enabled());
            Ok(None)
        }
        Control::Stop(why) => {
            let _entered = conn.span.enter();
            let disconnect = match why {
                Reason::Error(e) => {
                    let e = e.get_ref();
                    tracing::info!(
                        { CLIENT_ID } = %conn.client_id,
                        { MQTT_REASON_CODE } = u8::from(e.code),
                        "closing connection: {}",
                        e.reason
                    );
                    Some(e.disconnect())
                }
                Reason::Protocol(p) => Some(protocol_error(conn, p.get_ref())),
                Reason::PeerGone(g) => {
                    tracing::debug!(
                        { CLIENT_ID } = %conn.client_id,
                        { ERROR_MESSAGE } = g.err().map(tracing::field::display),
                        "connection lost"
                    );
                    None
                }
            };
            conn.finish(DisconnectKind::Unclean, None);
            Ok(disconnect.map(|d| v5::codec::Encoded::Packet(v5::codec::Packet::Disconnect(d))))
        }
    }
}

fn protocol_error(conn: &Conn, err: &ProtocolError) -> v5::codec::Disconnect {
    let d = reason::protocol_error(err);
    if matches!(err, ProtocolError::KeepAliveTimeout) {
        tracing::info!(
            { CLIENT_ID } = %conn.client_id,
            { MQTT_REASON_CODE } = u8::from(d.reason_code),
            "keep-alive timeout"
        );
    } else {
        conn.broker.stats().protocol_errors.fetch_add(1, Relaxed);
        tracing::warn!(
            { CLIENT_ID } = %conn.client_id,
            { MQTT_REASON_CODE } = u8::from(d.reason_code),
            { ERROR_MESSAGE } = %err,
            "protocol error"
        );
    }
    d
}

pub(super) fn control_factory() -> impl ServiceFactory<
    Control<ConnError>,
    v5::Session<Conn>,
    Response = Option<v5::codec::Encoded>,
    Error = ConnError,
    InitError = ConnError,
> {
    fn_factory_with_config(async |session: v5::Session<Conn>| {
        // Created once per connection, after the CONNACK is written.
        let conn = (*session).clone();
        pump::spawn(conn.clone(), session.sink().clone());
        let control = fn_service({
            let conn = conn.clone();
            async move |msg| control(&conn, msg).await
        });
        Ok::<_, ConnError>(intake::Paced::new(control, conn))
    })
}

pub(super) fn protocol_factory() -> impl ServiceFactory<
    v5::ProtocolMessage,
    v5::Session<Conn>,
    Response = v5::ProtocolMessageAck,
    Error = ConnError,
    InitError = ConnError,
> {
    fn_factory_with_config(async |session: v5::Session<Conn>| {
        let conn = (*session).clone();
        Ok::<_, ConnError>(fn_service(async move |msg| {
            session::catch_panic(protocol(&conn, msg)).await
        }))
    })
}

pub(super) fn publish_factory() -> impl ServiceFactory<
    v5::Publish,
    v5::Session<Conn>,
    Response = v5::PublishAck,
    Error = ConnError,
    InitError = ConnError,
> {
    fn_factory_with_config(async |session: v5::Session<Conn>| {
        let conn = (*session).clone();
        Ok::<_, ConnError>(fn_service(async move |p: v5::Publish| {
            let span = session::publish_span(&conn, &p.packet().properties.user_properties);
            session::catch_panic(publish(&conn, p)).instrument(span).await
        }))
    })
}
