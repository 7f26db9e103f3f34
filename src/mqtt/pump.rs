//! The pump: drains a session's [`Outbox`](crate::broker::Outbox) into the
//! connection's sink, on the connection's ntex worker.
//!
//! - QoS 0 is written and forgotten.
//! - QoS 1 uses ntex's non-blocking send; PUBACKs arrive through one callback
//!   per connection that acks the outbox (no task per message).
//! - QoS 2 runs one transaction at a time in a local task: PUBREC hands the
//!   message over (the outbox forgets it but remembers its packet id), then
//!   PUBREL/PUBCOMP ends the exchange. ntex keeps a single PUBREL slot per
//!   connection, so overlapping QoS 2 flows would confuse it. A v5 PUBREC
//!   with a failure reason ends the exchange at once, without PUBREL
//!   ([`RefusedReceiptsV5`] ends ntex's side of it).
//! - Packet ids are the session's: the outbox picks one when it queues a
//!   delivery and keeps it through redeliveries, so a DUP resend carries the
//!   id of the first attempt [MQTT-4.4.0-1], on any connection and after a
//!   restart.
//! - An exchange that an earlier connection of the session left between
//!   PUBREC and PUBCOMP resumes with PUBREL, not the PUBLISH [MQTT-4.4.0-1].
//!   ntex only releases flows it started, so the pump writes those PUBRELs
//!   itself before any delivery, and `qos2` takes their PUBCOMPs before the
//!   dispatcher (which would call them unexpected). Their ids stay reserved
//!   until then.
//!
//! In flight never exceeds the sink's credit: min(`limits.max_inflight`, the
//! client's receive maximum), enforced by ntex and waited for here. Writes are
//! buffered by ntex per connection and flushed by its I/O loop, so a batch
//! becomes few syscalls. The pump ends when the connection closes, the broker
//! kicks it, or the server stops.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::Arc;

use ntex::channel::condition::Condition;
use ntex::service::cfg::SharedCfg;
use ntex::service::{Middleware, Service, ServiceCtx};
use ntex::util::{HashMap, HashSet};
use ntex_mqtt::error::{DispatcherError, EncodeError, SendPacketError};
use ntex_mqtt::v5;
use tracing::Instrument;

use super::convert::{outbound_props_v5, qos_out};
use super::reason::{self, ConnError};
use super::session::Conn;
use crate::broker::{Next, Outbox};
use crate::domain::{Delivery, QoS};
use crate::telemetry::names::{CLIENT_ID, ERROR_MESSAGE, MQTT_REASON_CODE, MQTT_TOPIC};

/// Deliveries taken from the outbox per lock.
const BATCH: usize = 64;

/// Start the pump of a freshly opened connection.
pub(super) fn spawn(conn: Conn, sink: v5::MqttSink) {
    let span = conn.span.clone();
    ntex::rt::spawn(run(conn, sink).instrument(span));
}

/// Outbound QoS 2 state shared by the pump and the `qos2` middleware.
///
/// - Exchanges that an earlier connection of the session left after PUBREC:
///   this connection resent their PUBREL and waits for PUBCOMP (the pump
///   sends the PUBRELs and keeps the ids out of use, the middleware takes
///   the PUBCOMPs).
/// - The release gate. ntex expects the acknowledgements of a connection in
///   the order of its own queue, and on a PUBREC it queues the PUBCOMP it
///   then expects right away, as if its PUBREL went out at once. The pump
///   holds the PUBREL until the PUBREC's state is stored; a QoS ≥ 1
///   PUBLISH sent meanwhile would be acknowledged by the client before that
///   PUBCOMP [MQTT-4.6.0-2] and taken by ntex for a protocol violation. So
///   the middleware closes the gate when the PUBREC arrives (before ntex
///   sees it), and QoS ≥ 1 deliveries wait until the PUBREL is written.
#[derive(Default)]
pub(super) struct OutboundQos2 {
    resumed: RefCell<HashSet<u16>>,
    /// The packet id whose PUBREL is being held back.
    held: Cell<Option<NonZeroU16>>,
}

impl OutboundQos2 {
    /// A PUBREL for `id` went out.
    pub(super) fn insert(&self, id: u16) {
        self.resumed.borrow_mut().insert(id);
    }

    /// A PUBCOMP arrived: `true` when it ends one of these exchanges (and
    /// the session's), `false` when it belongs to ntex.
    pub(super) fn complete(&self, outbox: &Outbox, id: NonZeroU16) -> bool {
        let resumed = self.resumed.borrow_mut().remove(&id.get());
        if resumed {
            outbox.outgoing_qos2_completed(id.get());
        }
        resumed
    }

    /// A PUBREC accepting the delivery with `id` arrived: no QoS ≥ 1
    /// PUBLISH goes out until its PUBREL has.
    pub(super) fn hold_until_released(&self, id: NonZeroU16) {
        self.held.set(Some(id));
    }

    /// The PUBREL for `id` went out, or its exchange ended without one.
    fn released(&self, id: NonZeroU16) -> bool {
        let was = self.held.get() == Some(id);
        if was {
            self.held.set(None);
        }
        was
    }

    fn is_held(&self) -> bool {
        self.held.get().is_some()
    }
}

/// Packet id → outbox sequence of QoS ≥ 1 messages on the wire.
struct InFlight {
    outbox: Arc<Outbox>,
    by_packet: RefCell<HashMap<u16, u64>>,
    /// A QoS 2 transaction is running.
    qos2_busy: Cell<bool>,
    qos2_done: Condition,
}

impl InFlight {
    /// Put `d` on the wire under the packet id its outbox gave it (ntex's
    /// own counter is never used). The outbox keeps ids unique within the
    /// session, resumed exchanges included; `None` only for a delivery
    /// without one, which is dropped.
    fn register(&self, d: &Delivery) -> Option<NonZeroU16> {
        let Some(id) = d.packet_id else {
            tracing::error!({ MQTT_TOPIC } = %d.msg.topic, "message dropped: no packet id");
            self.outbox.ack(d.seq);
            return None;
        };
        self.by_packet.borrow_mut().insert(id.get(), d.seq);
        Some(id)
    }

    /// The id is no longer on the wire for `seq` (a later delivery may
    /// already use it again: the outbox freed it when the flow ended).
    fn release(&self, id: NonZeroU16, seq: u64) {
        let mut map = self.by_packet.borrow_mut();
        if map.get(&id.get()) == Some(&seq) {
            map.remove(&id.get());
        }
    }

    /// PUBACK received: the message is delivered and its id is free.
    fn acked(&self, id: NonZeroU16) {
        let seq = self.by_packet.borrow_mut().remove(&id.get());
        if let Some(seq) = seq {
            self.outbox.ack(seq);
        }
    }

    /// PUBREC received: the message is delivered, the exchange goes on (in
    /// the session too, should this connection drop before PUBCOMP). The id
    /// stays taken until the QoS 2 flow ends. `true` once this is durable
    /// and PUBREL may go out; `false` when it could not be stored.
    async fn received(&self, id: NonZeroU16) -> bool {
        let seq = self.by_packet.borrow().get(&id.get()).copied();
        let Some(seq) = seq else { return true };
        match self.outbox.outgoing_qos2_received_durably(seq, id.get()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    { ERROR_MESSAGE } = %e,
                    "PUBREL held back: the delivery's state could not be stored"
                );
                false
            }
        }
    }

    /// PUBCOMP received: the exchange is over.
    fn completed(&self, id: NonZeroU16) {
        self.outbox.outgoing_qos2_completed(id.get());
    }

    /// The message cannot be sent, or the client refused it in its PUBREC
    /// (v5, reason ≥ 0x80, which ends the exchange [MQTT-4.3.3]): the
    /// outbox is done with it, and its id is free.
    fn dropped(&self, id: NonZeroU16) {
        let seq = self.by_packet.borrow().get(&id.get()).copied();
        if let Some(seq) = seq {
            self.outbox.ack(seq);
        }
    }
}

enum Stop {
    /// The connection is gone or closing.
    Closed,
    /// Close it with this DISCONNECT.
    Close(ConnError),
}

async fn run(conn: Conn, sink: v5::MqttSink) {
    let inflight = Rc::new(InFlight {
        outbox: conn.outbox.clone(),
        by_packet: RefCell::new(HashMap::default()),
        qos2_busy: Cell::new(false),
        qos2_done: Condition::new(),
    });
    // Must be registered before the first non-blocking QoS 1 send.
    let inf = inflight.clone();
    sink.publish_ack_cb(move |ack, disconnected| {
        // A PUBACK with an error code still ends the delivery.
        if !disconnected {
            inf.acked(ack.packet_id);
        }
    });

    let stop = match resume_releases(&conn) {
        Ok(()) => pump(&conn, &sink, &inflight).await,
        Err(stop) => stop,
    };
    if let Stop::Close(err) = stop {
        tracing::info!(
            { CLIENT_ID } = %conn.client_id,
            { MQTT_REASON_CODE } = u8::from(err.code),
            "closing connection: {}",
            err.reason
        );
        conn.close(err);
    }
    tracing::debug!({ CLIENT_ID } = %conn.client_id, "pump stopped");
}

/// Resend PUBREL for every QoS 2 exchange of the session past PUBREC, before
/// any delivery [MQTT-4.4.0-1]. Written straight to the connection: ntex's
/// sink only releases flows it saw the PUBREC of.
fn resume_releases(conn: &Conn) -> Result<(), Stop> {
    for id in conn.outbox.pending_releases() {
        let Some(id) = NonZeroU16::new(id) else { continue };
        conn.qos2_out.insert(id.get());
        if let Err(e) = write_pubrel(conn, id) {
            tracing::error!({ ERROR_MESSAGE } = %e, "cannot resend PUBREL");
            return Err(Stop::Close(ConnError::new(
                v5::codec::DisconnectReasonCode::ImplementationSpecificError,
                "cannot resend PUBREL",
            )));
        }
    }
    Ok(())
}

/// A PUBREL with `id`, encoded into the connection's write buffer (a codec of
/// its own: a PUBREL depends on no setting of the connection's).
fn write_pubrel(conn: &Conn, id: NonZeroU16) -> Result<(), EncodeError> {
    conn.io.encode(
        v5::codec::Encoded::Packet(v5::codec::Packet::PublishRelease(v5::codec::PublishAck2 {
            packet_id: id,
            reason_code: v5::codec::PublishAck2Reason::Success,
            properties: Vec::new(),
            reason_string: None,
        })),
        &v5::codec::Codec::new(),
    )
}

async fn pump(conn: &Conn, sink: &v5::MqttSink, inflight: &Rc<InFlight>) -> Stop {
    let gone = conn.io.on_disconnect();
    let cancelled = conn.shutdown.cancelled();
    tokio::pin!(gone, cancelled);
    // Grows on the first deliveries and keeps its capacity (≤ BATCH) after:
    // an idle connection, most of them, never pays for a batch (3 KiB).
    let mut buf: Vec<Delivery> = Vec::new();
    // `Outbox::next` with a `max` of 0 never takes anything: it only waits
    // for a kick. Used while waiting for credit or back-pressure.
    let mut none: Vec<Delivery> = Vec::new();
    let stats = conn.broker.stats().clone();

    loop {
        if !sink.is_open() {
            return Stop::Closed;
        }
        let max = sink.credit().min(BATCH);
        let next = tokio::select! {
            biased;
            _ = &mut gone => return Stop::Closed,
            _ = &mut cancelled => return Stop::Close(reason::shutting_down()),
            ready = sink.ready(), if max == 0 => {
                if !ready {
                    return Stop::Closed;
                }
                continue;
            }
            next = conn.outbox.next(conn.conn, &mut buf, max) => next,
        };
        if let Next::Kicked(why) = next {
            return Stop::Close(reason::kicked(why));
        }

        for d in buf.drain(..) {
            if !sendable(conn, sink, inflight, d.qos) {
                tokio::select! {
                    biased;
                    _ = &mut gone => return Stop::Closed,
                    _ = &mut cancelled => return Stop::Close(reason::shutting_down()),
                    next = conn.outbox.next(conn.conn, &mut none, 0) => {
                        if let Next::Kicked(why) = next {
                            return Stop::Close(reason::kicked(why));
                        }
                    }
                    res = wait_sendable(conn, sink, inflight, d.qos) => {
                        if let Err(stop) = res {
                            return stop;
                        }
                    }
                }
            }
            match send(conn, sink, inflight, &d) {
                Ok(Some(len)) => stats.sent(len),
                Ok(None) => {}
                Err(stop) => return stop,
            }
        }
    }
}

/// Can a delivery of this QoS be written right now?
fn sendable(conn: &Conn, sink: &v5::MqttSink, inflight: &InFlight, qos: QoS) -> bool {
    match qos {
        QoS::AtMostOnce => !conn.wr_backpressure(),
        QoS::AtLeastOnce => !conn.qos2_out.is_held() && sink.is_ready(),
        QoS::ExactlyOnce => !inflight.qos2_busy.get() && sink.is_ready(),
    }
}

async fn wait_sendable(
    conn: &Conn,
    sink: &v5::MqttSink,
    inflight: &InFlight,
    qos: QoS,
) -> Result<(), Stop> {
    match qos {
        QoS::AtMostOnce => conn.wr_ready().await,
        QoS::AtLeastOnce => {
            // The release gate opens with the QoS 2 exchange's progress.
            wait_qos2(inflight, || conn.qos2_out.is_held()).await;
            wait_ready(sink).await?;
        }
        QoS::ExactlyOnce => {
            wait_qos2(inflight, || inflight.qos2_busy.get()).await;
            wait_ready(sink).await?;
        }
    }
    Ok(())
}

/// Wait while `blocked`, which only a QoS 2 exchange's progress changes.
async fn wait_qos2(inflight: &InFlight, blocked: impl Fn() -> bool) {
    while blocked() {
        let waiter = inflight.qos2_done.wait();
        if blocked() {
            waiter.ready().await;
        }
    }
}

async fn wait_ready(sink: &v5::MqttSink) -> Result<(), Stop> {
    while !sink.is_ready() {
        if !sink.ready().await {
            return Err(Stop::Closed);
        }
    }
    Ok(())
}

/// Write one delivery (the caller checked [`sendable`]). `Some(len)` when it
/// went out, `None` when it was dropped.
fn send(
    conn: &Conn,
    sink: &v5::MqttSink,
    inflight: &Rc<InFlight>,
    d: &Delivery,
) -> Result<Option<usize>, Stop> {
    let res = match d.qos {
        QoS::AtMostOnce => send_qos0(sink, d),
        // `sendable` guarantees credit, or ntex would panic.
        QoS::AtLeastOnce => send_qos1(sink, inflight, d),
        QoS::ExactlyOnce => send_qos2(conn, sink, inflight, d),
    };
    match res {
        Ok(()) => Ok(Some(d.msg.payload.len())),
        Err(e) => send_failed(d, e).map(|()| None),
    }
}

fn v5_packet(d: &Delivery, qos: QoS, packet_id: Option<NonZeroU16>) -> v5::codec::Publish {
    v5::codec::Publish {
        dup: d.dup && qos != QoS::AtMostOnce,
        retain: d.retain,
        qos: qos_out(qos),
        topic: d.msg.topic.as_bytestring().clone(),
        packet_id,
        payload_size: 0,
        properties: outbound_props_v5(d),
    }
}

/// A send that failed. Encoding errors (a message above the client's maximum
/// packet size) drop that message [MQTT-3.1.2-25]; anything else ends the pump.
fn send_failed(d: &Delivery, err: SendPacketError) -> Result<(), Stop> {
    match err {
        SendPacketError::Encode(e) => {
            tracing::warn!(
                { MQTT_TOPIC } = %d.msg.topic,
                { ERROR_MESSAGE } = %e,
                "message dropped: cannot be sent to this client"
            );
            Ok(())
        }
        SendPacketError::Disconnected => Err(Stop::Closed),
        other => {
            tracing::error!(
                { MQTT_TOPIC } = %d.msg.topic,
                { ERROR_MESSAGE } = %other,
                "outbound publish failed"
            );
            Err(Stop::Close(ConnError::new(
                v5::codec::DisconnectReasonCode::ImplementationSpecificError,
                "outbound publish failed",
            )))
        }
    }
}

fn send_qos0(sink: &v5::MqttSink, d: &Delivery) -> Result<(), SendPacketError> {
    let payload = d.msg.payload.clone();
    sink.publish_pkt(v5_packet(d, QoS::AtMostOnce, None)).send_at_most_once(payload)
}

/// The sink must be ready, or ntex panics.
fn send_qos1(
    sink: &v5::MqttSink,
    inflight: &InFlight,
    d: &Delivery,
) -> Result<(), SendPacketError> {
    let Some(id) = inflight.register(d) else { return Ok(()) };
    let payload = d.msg.payload.clone();
    let res = sink
        .publish_pkt(v5_packet(d, QoS::AtLeastOnce, Some(id)))
        .send_at_least_once_no_block(payload);
    if let Err(e) = &res {
        inflight.release(id, d.seq);
        if matches!(e, SendPacketError::Encode(_)) {
            // Undeliverable to this client: do not redeliver it forever.
            inflight.outbox.ack(d.seq);
        }
    }
    res
}

/// The sink must be ready: then ntex writes the PUBLISH before returning,
/// which keeps the wire order of the pump. The rest of the flow runs in a
/// local task; `qos2_busy` holds the next QoS 2 delivery until it ends.
fn send_qos2(
    conn: &Conn,
    sink: &v5::MqttSink,
    inflight: &Rc<InFlight>,
    d: &Delivery,
) -> Result<(), SendPacketError> {
    let Some(id) = inflight.register(d) else { return Ok(()) };
    let seq = d.seq;
    let payload = d.msg.payload.clone();
    inflight.qos2_busy.set(true);
    let inf = inflight.clone();
    let out = conn.qos2_out.clone();
    let span = conn.span.clone();
    let fut = sink.publish_pkt(v5_packet(d, QoS::ExactlyOnce, Some(id))).send_exactly_once(payload);
    let sink = sink.clone();
    ntex::rt::spawn(
        async move {
            match fut.await {
                Ok(rec) if u8::from(rec.packet().reason_code) >= 0x80 => {
                    // Refused: the exchange ends here, no PUBREL
                    // follows [MQTT-4.3.3]. `RefusedReceiptsV5`
                    // closed ntex's flow, so dropping `rec` sends
                    // nothing.
                    inf.dropped(id);
                    drop(rec);
                }
                Ok(rec) => {
                    if inf.received(id).await {
                        let release = rec.release();
                        if release_written(release, &out, &inf, id).await.is_ok() {
                            inf.completed(id);
                        }
                    } else {
                        // ntex would send PUBREL when `rec` drops:
                        // close first. The next connection resends it.
                        sink.close();
                    }
                }
                Err(SendPacketError::Encode(e)) => {
                    tracing::warn!(
                        { ERROR_MESSAGE } = %e,
                        "message dropped: cannot be sent to this client"
                    );
                    inf.dropped(id);
                }
                Err(_) => {}
            }
            qos2_finished(&inf, &out, id, seq);
        }
        .instrument(span),
    );
    Ok(())
}

/// Await ntex's PUBREL future, opening the release gate (see
/// [`OutboundQos2`]) as soon as the PUBREL is written: on its first poll.
async fn release_written(
    release: impl Future<Output = Result<(), SendPacketError>>,
    out: &OutboundQos2,
    inflight: &InFlight,
    id: NonZeroU16,
) -> Result<(), SendPacketError> {
    let mut release = std::pin::pin!(release);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(release.as_mut().poll(cx))).await;
    if out.released(id) {
        inflight.qos2_done.notify();
    }
    match first {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => release.await,
    }
}

fn qos2_finished(inflight: &InFlight, out: &OutboundQos2, id: NonZeroU16, seq: u64) {
    // Ended without a PUBREL (refused, undeliverable, connection gone).
    out.released(id);
    inflight.release(id, seq);
    inflight.qos2_busy.set(false);
    inflight.qos2_done.notify();
}

/// A v5 PUBREC with a failure reason ends an outbound QoS 2 exchange: no
/// PUBREL, no PUBCOMP, the id is free [MQTT-4.3.3]. ntex 8.2.1 would send
/// PUBREL after it and keep waiting for PUBCOMP (holding a send slot, and
/// expecting that PUBCOMP before any later acknowledgement). This middleware
/// hands ntex the PUBREC and then a PUBCOMP of its own making, in the same
/// call, so ntex's flow is over before the pump sees the refusal.
pub(super) struct RefusedReceiptsV5;

impl<S> Middleware<S, (SharedCfg, v5::Session<Conn>)> for RefusedReceiptsV5 {
    type Service = RefusedReceiptsService<S>;

    fn create(&self, inner: S, _: (SharedCfg, v5::Session<Conn>)) -> Self::Service {
        RefusedReceiptsService { inner }
    }
}

pub(super) struct RefusedReceiptsService<S> {
    inner: S,
}

impl<S> Service<v5::codec::Decoded> for RefusedReceiptsService<S>
where
    S: Service<
            v5::codec::Decoded,
            Response = Option<v5::codec::Encoded>,
            Error = DispatcherError<ConnError>,
        >,
{
    type Response = Option<v5::codec::Encoded>;
    type Error = DispatcherError<ConnError>;

    ntex::forward_ready!(inner);
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(
        &self,
        req: v5::codec::Decoded,
        ctx: ServiceCtx<'_, Self>,
    ) -> Result<Self::Response, Self::Error> {
        use v5::codec::{Decoded, Packet, PublishAck2, PublishAck2Reason};
        let refused = match &req {
            Decoded::Packet(Packet::PublishReceived(ack), _)
                if u8::from(ack.reason_code) >= 0x80 =>
            {
                Some(ack.packet_id)
            }
            _ => None,
        };
        let res = ctx.call_nowait(&self.inner, req).await?;
        if let Some(packet_id) = refused {
            let end = PublishAck2 {
                packet_id,
                reason_code: PublishAck2Reason::Success,
                properties: Vec::new(),
                reason_string: None,
            };
            ctx.call_nowait(&self.inner, Decoded::Packet(Packet::PublishComplete(end), 0)).await?;
        }
        Ok(res)
    }
}
