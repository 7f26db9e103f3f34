//! An MQTT 3.1.1 connection: the CONNECT, then one loop that reads packets,
//! hands them to the broker, writes their answers in order and the
//! session's deliveries.
//!
//! The loop does not read while the router's inbox is at its bound or while
//! `limits.receive_maximum` answers wait (TCP then pushes back on the
//! client), nor while the connection's write buffer is full (ntex's
//! write back-pressure): a client that does not read its deliveries is not
//! read either. Deliveries go out up to `limits.max_inflight` unacknowledged
//! QoS ≥ 1 messages, in batches of [`BATCH`] per look at the outbox.

use std::future::poll_fn;
use std::io;
use std::num::NonZeroU16;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::LocalBoxFuture;
use ntex::io::types::PeerAddr;
use ntex::io::{IoBoxed, RecvError};
use ntex::time::{Millis, Seconds};
use ntex::util::{ByteString, Bytes, Either};
use ntex_mqtt::error::{DecodeError, ProtocolError};
use ntex_mqtt::v3::codec::{
    Codec, Connect, ConnectAck, ConnectAckReason, Decoded, Encoded, Packet, Publish,
    SubscribeReturnCode,
};
use tracing::Instrument as _;

use super::super::convert;
use super::super::framing::{Level, Whole};
use super::super::qos2::Taken;
use super::super::reason::{self, ConnError, ConnectRefusal, PublishRejection, V3Verdict};
use super::super::server::CONNECT_TIMEOUT;
use super::super::session::{self, Conn, Ctx, OpenRequest, Routed};
use super::super::unexpected;
use super::answers::{Answer, Answers};
use super::flows::{Flows, Receipt};
use crate::broker::{DisconnectKind, Next, ProtocolVersion};
use crate::domain::{Delivery, QoS, SubscriptionOptions, WriteOp};
use crate::telemetry::names::{
    CLIENT_ID, ERROR_MESSAGE, MQTT_PROTOCOL, MQTT_REASON_CODE, MQTT_TOPIC,
};

/// Deliveries taken from the outbox per look.
const BATCH: usize = 64;
/// The 3.1.1 codec behind the checks the framing layer makes for the
/// dispatcher.
type Frames = Whole<Codec>;
/// How long a closing connection gets to flush what it has written.
const CLOSE_FLUSH: Millis = Millis(1_000);

/// Serve one connection whose first packet is an MQTT 3.1.1 CONNECT. A
/// panic ends only this connection (the crash reporter has recorded it).
///
/// `ctx` is borrowed: each connection's future is its memory while it is
/// idle, and the connection keeps what it needs of `ctx` in its `Conn`.
pub(in crate::mqtt) async fn serve(io: IoBoxed, ctx: &Ctx) {
    let _ = AssertUnwindSafe(run(&io, ctx)).catch_unwind().await;
    let _ = ntex::time::timeout(CLOSE_FLUSH, io.shutdown()).await;
}

async fn run(io: &IoBoxed, ctx: &Ctx) {
    // The handshake's state (the CONNECT, authentication, opening the
    // session) lives in a box of its own, gone once the session is open:
    // the connection's future keeps only the loop's. The connection stays
    // where it is, borrowed by the loop: moved into another future it
    // would be kept twice.
    let Some(mut connection) = Box::pin(open(io, ctx)).await else { return };
    let span = connection.conn.span.clone();
    let end = connection.serve().instrument(span).await;
    connection.conn.span.in_scope(|| connection.end(end));
}

/// Read the CONNECT and answer it; the connection, once it is accepted.
async fn open<'a>(io: &'a IoBoxed, ctx: &Ctx) -> Option<Connection<'a>> {
    let limits = ctx.broker.limits();
    let codec = Codec::new();
    codec.set_max_size(limits.max_packet_bytes);
    // Payloads are never streamed: `Whole` hands the codec whole packets.
    codec.set_min_chunk_size(limits.max_packet_bytes);
    let codec = Whole::new(codec, limits.max_packet_bytes, Level::V3);

    io.start_timer(CONNECT_TIMEOUT);
    let connect = match io.recv(&codec).await {
        Ok(Some(Decoded::Packet(Packet::Connect(connect), _))) => connect,
        Ok(Some(_)) => {
            tracing::info!("MQTT handshake failed: the first packet is not CONNECT");
            return None;
        }
        Ok(None) => return None,
        Err(Either::Left(e)) => {
            tracing::info!({ ERROR_MESSAGE } = %e, "MQTT handshake failed");
            return None;
        }
        Err(Either::Right(e)) if e.kind() == io::ErrorKind::TimedOut => {
            tracing::debug!("MQTT handshake timed out");
            return None;
        }
        Err(Either::Right(_)) => return None,
    };
    let keep_alive = keep_alive(connect.keep_alive);
    let conn = handshake(ctx, io, &codec, *connect).await?;
    io.start_timer(keep_alive);
    Some(Connection {
        flows: Flows::new(conn.outbox.clone(), usize::from(limits.max_inflight)),
        conn,
        io,
        codec,
        keep_alive,
        answers: Answers::new(),
        receive_max: usize::from(limits.receive_maximum).max(1),
    })
}

/// ntex-mqtt's rule, kept: 1.5 × the client's keep-alive, none for 0.
fn keep_alive(secs: u16) -> Seconds {
    if secs == 0 { Seconds::ZERO } else { Seconds(secs.saturating_add(secs >> 1)) }
}

/// Open the session and write the CONNACK; `None` when the CONNECT was
/// refused (answered, counted and logged).
async fn handshake(ctx: &Ctx, io: &IoBoxed, codec: &Frames, pkt: Connect) -> Option<Conn> {
    let limits = ctx.broker.limits();
    let raw_id = &pkt.client_id;
    let clean = pkt.clean_session;
    let (client_id, assigned) = match session::client_id(ctx, ProtocolVersion::V311, raw_id, clean)
    {
        Ok(id) => id,
        Err(r) => return refuse(ctx, io, codec, raw_id, r),
    };
    let will = match pkt.last_will.as_ref().map(|w| convert::will_v3(w, &client_id, limits)) {
        None => None,
        Some(Ok(will)) => Some(will),
        Some(Err(r)) => return refuse(ctx, io, codec, raw_id, r),
    };
    let req = OpenRequest {
        protocol: ProtocolVersion::V311,
        client_id,
        assigned,
        clean_start: clean,
        session_expiry_secs: convert::session_expiry_v3(clean),
        username: pkt.username.clone(),
        password: pkt.password.clone(),
        will,
        peer: io.query::<PeerAddr>().as_ref().map(|p| p.0),
        problem_info: false,
    };
    let opened = match session::open(ctx, req, None, io.get_ref()).await {
        Ok(opened) => opened,
        Err(r) => return refuse(ctx, io, codec, raw_id, r),
    };
    let ack = ConnectAck {
        session_present: opened.session_present,
        return_code: ConnectAckReason::ConnectionAccepted,
    };
    // Dropped on failure: the session ends as if the connection was lost.
    io.encode(Encoded::Packet(Packet::ConnectAck(ack)), codec).ok()?;
    Some(opened.conn)
}

/// A refused CONNECT: a CONNACK return code, or closing without one when
/// 3.1.1 has no code for the reason.
fn refuse(
    ctx: &Ctx,
    io: &IoBoxed,
    codec: &Frames,
    client_id: &ByteString,
    refusal: ConnectRefusal,
) -> Option<Conn> {
    ctx.broker.stats().rejected_connects.fetch_add(1, Relaxed);
    let code = refusal.v3();
    tracing::warn!(
        { CLIENT_ID } = %client_id,
        { MQTT_PROTOCOL } = "3.1.1",
        { MQTT_REASON_CODE } = code.map(u8::from),
        "connection refused: {}",
        refusal.as_str()
    );
    if let Some(return_code) = code {
        let ack = ConnectAck { session_present: false, return_code };
        let _ = io.encode(Encoded::Packet(Packet::ConnectAck(ack)), codec);
    }
    None
}

/// How the loop ended.
enum End {
    /// The client left: DISCONNECT (the session already knows), lost
    /// connection or keep-alive timeout.
    Gone,
    /// The server closes the connection for this reason.
    Close(ConnError),
}

struct Connection<'a> {
    conn: Conn,
    io: &'a IoBoxed,
    codec: Frames,
    keep_alive: Seconds,
    answers: Answers<Packet>,
    flows: Flows,
    receive_max: usize,
}

impl Connection<'_> {
    async fn serve(&mut self) -> End {
        // PUBRELs of exchanges an earlier connection left after PUBREC go
        // out before any delivery [MQTT-4.4.0-1].
        for id in self.flows.resume() {
            if let Err(end) = self.write(Packet::PublishRelease { packet_id: id }) {
                return end;
            }
        }
        // A stopping server kicks every attached connection (`MqttServer::
        // stop`); one that attached after that sees the token here.
        if self.conn.shutdown.is_cancelled() {
            return End::Close(reason::shutting_down());
        }
        // Grows on the first deliveries and keeps its capacity after: an
        // idle connection, most of them, never holds a batch.
        let mut batch: Vec<Delivery> = Vec::new();
        // Exists only while the router's inbox is full.
        let mut room: Option<LocalBoxFuture<'static, ()>> = None;
        loop {
            let step = poll_fn(|cx| self.poll_step(cx, &mut batch, &mut room)).await;
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// One step of the loop, what is ready first in this order: the
    /// answer at the head, deliveries, flushing a full write buffer, room
    /// in the router's inbox, the next packet. Each source registers the
    /// task's waker itself (`Outbox::poll_next`, ntex `Io`), so the loop
    /// keeps no future per source while it sleeps.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Delivery>,
        room: &mut Option<LocalBoxFuture<'static, ()>>,
    ) -> Poll<Result<(), End>> {
        if !self.answers.is_empty()
            && let Poll::Ready(answer) = self.answers.poll_next(cx)
        {
            return Poll::Ready(self.answered(answer));
        }
        let backpressure = self.io.is_wr_backpressure();
        // With `max` 0 (no credit, or the client reads too slowly) this only
        // waits for a kick.
        let max = if backpressure { 0 } else { self.flows.credit().min(BATCH) };
        if let Poll::Ready(next) = self.conn.outbox.poll_next(cx, self.conn.conn, batch, max) {
            return Poll::Ready(self.deliver(next, batch));
        }
        if backpressure && let Poll::Ready(flushed) = self.io.poll_flush(cx, false) {
            return Poll::Ready(flushed.map_err(|_| End::Gone));
        }
        if self.conn.broker.has_room() {
            *room = None;
        } else {
            let broker = self.conn.broker.clone();
            let wait = room.get_or_insert_with(|| Box::pin(async move { broker.room().await }));
            if wait.as_mut().poll(cx).is_ready() {
                *room = None;
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
        if self.answers.len() >= self.receive_max {
            return Poll::Pending;
        }
        match self.io.poll_recv(&self.codec, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(decoded)) => Poll::Ready(self.received(decoded)),
            Poll::Ready(Err(RecvError::WriteBackpressure)) => match self.io.poll_flush(cx, false) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => Poll::Ready(Err(End::Gone)),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Err(RecvError::KeepAlive)) => {
                tracing::info!({ CLIENT_ID } = %self.conn.client_id, "keep-alive timeout");
                Poll::Ready(Err(End::Gone))
            }
            Poll::Ready(Err(RecvError::Decoder(e))) => Poll::Ready(Err(self.malformed(e))),
            Poll::Ready(Err(RecvError::PeerGone(e))) => {
                tracing::debug!(
                    { CLIENT_ID } = %self.conn.client_id,
                    { ERROR_MESSAGE } = e.as_ref().map(tracing::field::display),
                    "connection lost"
                );
                Poll::Ready(Err(End::Gone))
            }
        }
    }

    /// The loop ended: tell the broker (before the socket closes, so that a
    /// client reconnecting at once finds the session ended), then close.
    fn end(&self, end: End) {
        if let End::Close(err) = &end {
            tracing::info!(
                { CLIENT_ID } = %self.conn.client_id,
                { MQTT_REASON_CODE } = u8::from(err.code),
                "closing connection: {}",
                err.reason
            );
        }
        self.conn.finish(DisconnectKind::Unclean, None);
        // 3.1.1 has no server DISCONNECT: closing is the message.
        self.io.close();
    }

    fn write(&mut self, pkt: Packet) -> Result<(), End> {
        if let Packet::PublishRelease { packet_id } = pkt {
            self.flows.released(packet_id);
        }
        self.io.encode(Encoded::Packet(pkt), &self.codec).map_err(|e| {
            tracing::error!({ ERROR_MESSAGE } = %e, "cannot encode an answer");
            End::Gone
        })
    }

    /// Write `pkt` now, or behind the answers still waiting.
    fn answer(&mut self, pkt: Packet) -> Result<(), End> {
        match self.answers.now(pkt) {
            Some(pkt) => self.write(pkt),
            None => Ok(()),
        }
    }

    fn answered(&mut self, answer: Answer<Packet>) -> Result<(), End> {
        match answer {
            Ok(Some(pkt)) => self.write(pkt),
            Ok(None) => Ok(()),
            Err(err) => Err(End::Close(err)),
        }
    }

    fn deliver(&mut self, next: Next, batch: &mut Vec<Delivery>) -> Result<(), End> {
        kicked(next)?;
        let stats = self.conn.broker.stats();
        for d in batch.drain(..) {
            let packet_id = match d.qos {
                QoS::AtMostOnce => None,
                _ => match self.flows.send(&d) {
                    Some(id) => Some(id),
                    None => continue,
                },
            };
            let pkt = Publish {
                dup: d.dup && d.qos != QoS::AtMostOnce,
                retain: d.retain,
                qos: convert::qos_out(d.qos),
                topic: d.msg.topic.as_bytestring().clone(),
                packet_id,
                payload_size: u32::try_from(d.msg.payload.len()).unwrap_or(u32::MAX),
            };
            let payload = d.msg.payload.clone();
            match self.io.encode(Encoded::Publish(pkt, Some(payload)), &self.codec) {
                Ok(()) => stats.sent(d.msg.payload.len()),
                Err(e) => {
                    tracing::warn!(
                        { MQTT_TOPIC } = %d.msg.topic,
                        { ERROR_MESSAGE } = %e,
                        "message dropped: cannot be sent to this client"
                    );
                    if let Some(id) = packet_id {
                        self.flows.undeliverable(id, &d);
                    }
                }
            }
        }
        Ok(())
    }

    fn received(&mut self, decoded: Decoded) -> Result<(), End> {
        if !self.keep_alive.is_zero() {
            self.io.start_timer(self.keep_alive);
        }
        match decoded {
            // A payload of its own: the codec's is a view of the read
            // buffer, which it would keep whole for as long as the message
            // lives (queued for an offline session, retained, in flight).
            Decoded::Publish(pkt, payload, _) => {
                self.publish(pkt, Bytes::copy_from_slice(&payload))
            }
            Decoded::Packet(pkt, _) => self.packet(pkt),
            Decoded::PayloadChunk(..) => Err(self.incomplete()),
        }
    }

    /// Bytes the codec refused: counted and logged, the connection closes.
    fn malformed(&self, e: DecodeError) -> End {
        let err = ProtocolError::Decode(e);
        self.conn.broker.stats().protocol_errors.fetch_add(1, Relaxed);
        let code = reason::protocol_error(&err).reason_code;
        tracing::warn!(
            { CLIENT_ID } = %self.conn.client_id,
            { MQTT_REASON_CODE } = u8::from(code),
            { ERROR_MESSAGE } = %err,
            "protocol error"
        );
        End::Close(ConnError::protocol("malformed packet"))
    }

    fn incomplete(&self) -> End {
        tracing::debug!({ CLIENT_ID } = %self.conn.client_id, "publish payload incomplete");
        End::Close(ConnError::protocol("publish payload incomplete"))
    }

    fn packet(&mut self, pkt: Packet) -> Result<(), End> {
        if let Some(why) = unexpected::v3_verdict(&pkt) {
            return Err(End::Close(unexpected::refused(&self.conn, why)));
        }
        match pkt {
            Packet::PingRequest => self.answer(Packet::PingResponse),
            Packet::Disconnect => {
                self.conn.finish(DisconnectKind::Clean, None);
                Err(End::Gone)
            }
            Packet::Subscribe { packet_id, topic_filters } => {
                self.subscribe(packet_id, topic_filters)
            }
            Packet::Unsubscribe { packet_id, topic_filters } => {
                self.unsubscribe(packet_id, topic_filters)
            }
            Packet::PublishAck { packet_id } => {
                if self.flows.acked(packet_id) {
                    Ok(())
                } else {
                    Err(self.unknown_id("PUBACK", packet_id))
                }
            }
            Packet::PublishReceived { packet_id } => match self.flows.received(packet_id) {
                Some(Receipt::Store(seq)) => {
                    let span = self.conn.span.clone();
                    let outbox = self.conn.outbox.clone();
                    self.answers.later(async move {
                        match outbox.outgoing_qos2_received_durably(seq, packet_id.get()).await {
                            Ok(()) => Ok(Some(Packet::PublishRelease { packet_id })),
                            Err(e) => {
                                tracing::error!(
                                    parent: &span,
                                    { { ERROR_MESSAGE } = %e },
                                    "PUBREL held back: the delivery's state could not be stored"
                                );
                                // The next connection of the session resends it.
                                Err(ConnError::new(
                                    ntex_mqtt::v5::codec::DisconnectReasonCode::UnspecifiedError,
                                    "storage unavailable",
                                ))
                            }
                        }
                    });
                    Ok(())
                }
                Some(Receipt::Release) => self.answer(Packet::PublishRelease { packet_id }),
                Some(Receipt::Nothing) => Ok(()),
                None => Err(self.unknown_id("PUBREC", packet_id)),
            },
            Packet::PublishComplete { packet_id } => {
                if self.flows.completed(packet_id) {
                    Ok(())
                } else {
                    Err(self.unknown_id("PUBCOMP", packet_id))
                }
            }
            Packet::PublishRelease { packet_id } => self.release(packet_id),
            // Refused by `v3_verdict` above.
            Packet::Connect(_)
            | Packet::ConnectAck(_)
            | Packet::SubscribeAck { .. }
            | Packet::UnsubscribeAck { .. }
            | Packet::PingResponse => Ok(()),
        }
    }

    /// An acknowledgement for a packet id that is not waiting for it.
    fn unknown_id(&self, what: &'static str, id: NonZeroU16) -> End {
        self.conn.broker.stats().protocol_errors.fetch_add(1, Relaxed);
        tracing::warn!(
            { CLIENT_ID } = %self.conn.client_id,
            "protocol error: {what} for packet id {id}, which waits for none"
        );
        End::Close(ConnError::protocol("acknowledgement for an unknown packet id"))
    }

    /// PUBREL: the session forgets the id (durably, for a persistent
    /// session, before PUBCOMP), which a later PUBLISH may use again.
    fn release(&mut self, id: NonZeroU16) -> Result<(), End> {
        let pubcomp = Packet::PublishComplete { packet_id: id };
        match self.conn.outbox.incoming_qos2_release_durably(id.get()) {
            (_, Some(durable)) => {
                // Sent even if the write failed: it stays queued for retry.
                self.answers.later(async move {
                    let _ = durable.await;
                    Ok(Some(pubcomp))
                });
                Ok(())
            }
            (_, None) => self.answer(pubcomp),
        }
    }

    fn publish(&mut self, pkt: Publish, payload: Bytes) -> Result<(), End> {
        self.conn.broker.stats().received(pkt.payload_size as usize);
        if payload.len() != pkt.payload_size as usize {
            return Err(self.incomplete());
        }
        let qos = convert::qos_in(pkt.qos);
        let Some(id) = pkt.packet_id.filter(|_| qos != QoS::AtMostOnce) else {
            return self.route(&pkt, payload, Vec::new()).map(drop);
        };
        if qos == QoS::AtLeastOnce {
            return match self.route(&pkt, payload, Vec::new())? {
                None => self.answer(Packet::PublishAck { packet_id: id }),
                Some(waiting) => {
                    let conn = self.conn.clone();
                    self.answers.later(async move {
                        settled(&conn, waiting).await?;
                        Ok(Some(Packet::PublishAck { packet_id: id }))
                    });
                    Ok(())
                }
            };
        }
        // QoS 2: route a packet id once per session, across its connections
        // [MQTT-4.3.3-10]; a resend gets its PUBREC unrouted. PUBREC follows
        // even for a message dropped here (3.1.1 has no failure code for
        // it): the id stays taken until PUBREL.
        let pubrec = Packet::PublishReceived { packet_id: id };
        let Some(taken) = Taken::begin(&self.conn.outbox, id) else {
            return self.answer(pubrec);
        };
        let record = taken.record();
        match self.route(&pkt, payload, record)? {
            None => {
                taken.keep();
                self.answer(pubrec)
            }
            Some(waiting) => {
                let conn = self.conn.clone();
                self.answers.later(async move {
                    settled(&conn, waiting).await?;
                    taken.keep();
                    Ok(Some(pubrec))
                });
                Ok(())
            }
        }
    }

    /// Check and route one PUBLISH, without waiting: `Some` when its
    /// acknowledgement waits for its commit. `Err` closes the connection.
    /// `record`: writes to commit with the message's own.
    fn route(
        &self,
        pkt: &Publish,
        payload: Bytes,
        record: Vec<WriteOp>,
    ) -> Result<Option<crate::broker::Submitted>, End> {
        let topic = match self.conn.check_publish(&pkt.topic, payload.len()) {
            Ok(topic) => topic,
            Err(r) => return rejected(&self.conn, r).map(|()| None).map_err(End::Close),
        };
        let msg =
            self.conn.message(topic, payload, convert::qos_in(pkt.qos), pkt.retain, None, None);
        match self.conn.route(msg, record) {
            Ok(Routed::Done) => Ok(None),
            Ok(Routed::Waiting(waiting)) => Ok(Some(waiting)),
            Err(r) => rejected(&self.conn, r).map(|()| None).map_err(End::Close),
        }
    }

    /// Check a SUBSCRIBE and hand it to the broker; its SUBACK is written
    /// once the broker answers.
    fn subscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, ntex_mqtt::QoS)>,
    ) -> Result<(), End> {
        let limits = self.conn.broker.limits().topic_limits();
        let auth = self.conn.broker.auth();
        let mut requests = Vec::new();
        // Per filter: its request's index, or refused at once.
        let mut slots = Vec::with_capacity(filters.len());
        for (filter, qos) in &filters {
            if filter.contains('\0') {
                return Err(End::Close(self.conn.nul_in_filter()));
            }
            let options = SubscriptionOptions::qos(convert::qos_in(*qos));
            match convert::subscribe_request(filter, options, limits) {
                Ok(req)
                    if auth.can_subscribe(
                        &self.conn.identity,
                        &self.conn.client_id,
                        &req.filter.filter,
                    ) =>
                {
                    slots.push(Some(requests.len()));
                    requests.push(req);
                }
                refused => {
                    let why =
                        if refused.is_ok() { "not authorized" } else { "topic filter invalid" };
                    tracing::info!({ MQTT_TOPIC } = %filter, "subscription refused: {why}");
                    slots.push(None);
                }
            }
        }
        if requests.is_empty() {
            let status = vec![SubscribeReturnCode::Failure; filters.len()];
            return self.answer(Packet::SubscribeAck { packet_id, status });
        }
        let results =
            self.conn.broker.subscribe(self.conn.client_id.clone(), self.conn.conn, requests);
        let span = self.conn.span.clone();
        self.answers.later(async move {
            let results = results.await;
            let _entered = span.enter();
            let status = slots
                .into_iter()
                .zip(&filters)
                .map(|(slot, (filter, _))| match slot.and_then(|i| results.get(i)) {
                    Some(Ok(qos)) => SubscribeReturnCode::Success(convert::qos_out(*qos)),
                    Some(Err(e)) => {
                        tracing::info!(
                            { MQTT_TOPIC } = %filter,
                            { ERROR_MESSAGE } = %e,
                            "subscription refused"
                        );
                        SubscribeReturnCode::Failure
                    }
                    None => SubscribeReturnCode::Failure,
                })
                .collect();
            Ok(Some(Packet::SubscribeAck { packet_id, status }))
        });
        Ok(())
    }

    /// Hand an UNSUBSCRIBE to the broker; its UNSUBACK leaves once the
    /// broker has taken it.
    fn unsubscribe(&mut self, packet_id: NonZeroU16, filters: Vec<ByteString>) -> Result<(), End> {
        if filters.iter().any(|f| f.contains('\0')) {
            return Err(End::Close(self.conn.nul_in_filter()));
        }
        let limits = self.conn.broker.limits().topic_limits();
        let filters: Vec<_> = filters
            .into_iter()
            .filter(|f| crate::domain::SharedFilter::parse(f.clone(), limits).is_ok())
            .collect();
        let unsuback = Packet::UnsubscribeAck { packet_id };
        if filters.is_empty() {
            return self.answer(unsuback);
        }
        let done =
            self.conn.broker.unsubscribe(self.conn.client_id.clone(), self.conn.conn, filters);
        self.answers.later(async move {
            done.await;
            Ok(Some(unsuback))
        });
        Ok(())
    }
}

fn kicked(next: Next) -> Result<(), End> {
    match next {
        Next::Ready => Ok(()),
        Next::Kicked(why) => Err(End::Close(reason::kicked(why))),
    }
}

/// A refused publish: acknowledged and dropped, or the connection closes.
fn rejected(conn: &Conn, rejection: PublishRejection) -> Result<(), ConnError> {
    conn.rejected();
    match rejection.v3() {
        V3Verdict::AckAndDrop => Ok(()),
        V3Verdict::Close(err) => Err(err),
    }
}

/// Wait for a routed publish's commit: `Ok` to acknowledge it.
async fn settled(conn: &Conn, waiting: crate::broker::Submitted) -> Result<(), ConnError> {
    match session::settle(conn, waiting).await {
        Ok(_) => Ok(()),
        Err(r) => rejected(conn, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_one_and_a_half_times_the_clients() {
        assert!(keep_alive(0).is_zero());
        assert_eq!(keep_alive(60), Seconds(90));
        assert_eq!(keep_alive(1), Seconds(1));
        assert_eq!(keep_alive(u16::MAX), Seconds(u16::MAX));
    }
}
