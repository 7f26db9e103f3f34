//! An MQTT 3.1.1 listener reduced to one task per connection that reads
//! packets with ntex-mqtt's codec straight from ntex `Io`: CONNECT gets a
//! CONNACK, PINGREQ a PINGRESP, the keep-alive is ntex's per-`Io` timer, and
//! the task also waits on a wake-up a broker would use to hand it
//! deliveries. Nothing else: it answers what an idle connection costs
//! without ntex-mqtt's service pipeline, with the broker's ntex versions,
//! worker count and read buffer settings.
//!
//! It also relays, so the per-message cost of such a loop can be set beside
//! Mosquitto's: a PUBLISH is acknowledged (QoS 1) and written, at the lower
//! of its QoS and the granted one, to every connection on the same worker
//! that has subscribed to anything (filters are not matched: the
//! benchmark's subscribers want every publish). QoS 0 to a connection whose
//! write buffer is full is dropped. Run it with one worker for that, as
//! Mosquitto has one thread.
//!
//! With `5` as third argument it speaks MQTT 5.0 instead, for idle
//! connections only (CONNECT, PINGREQ, DISCONNECT).
//!
//! `mapcast-readloop-probe 127.0.0.1:18850 [workers] [3|5]`, then
//! `mapcast-bench conns -c 10000 --connect-rate 2000 --hold 5 --port 18850 --broker-pid PID`
//! or `mapcast-bench pubsub … --port 18850 --broker-pid PID`.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU16;
use std::sync::Arc;

use ntex::SharedCfg;
use ntex::io::{Io, IoConfig, IoRef};
use ntex::service::fn_service;
use ntex::time::Seconds;
use ntex::util::{Bytes, BytesMut};
use ntex::util::{Either, select};
use ntex_mqtt::v3::codec::{
    Codec, ConnectAck, ConnectAckReason, Decoded, Encoded, Packet, Publish, QoS,
    SubscribeReturnCode,
};
use tokio::sync::Notify;

/// The broker's read buffer settings (`src/mqtt/server.rs`).
const READ_BUF_HIGH: usize = 4 * 1024;
const READ_BUF_LOW: usize = 512;
const READ_BUF_CACHE: usize = 256;
const MAX_PACKET: u32 = 64 * 1024;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18850".into());
    let workers = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    let v5 = args.next().is_some_and(|level| level == "5");
    ntex::rt::System::new("readloop", ntex::rt::DefaultRuntime).block_on(async move {
        let server = ntex::server::build().workers(workers);
        let server = if v5 {
            server.bind("mqtt", addr, async |_| fn_service(idle_v5))?
        } else {
            server.bind("mqtt", addr, async |_| fn_service(connection))?
        };
        server
            .config(
                "mqtt",
                SharedCfg::new("MQTT").add(IoConfig::new().set_read_buf(
                    READ_BUF_HIGH,
                    READ_BUF_LOW,
                    READ_BUF_CACHE,
                )),
            )
            .run()
            .await
    })
}

/// A subscribed connection on this worker: its id, its `Io`, the QoS it was
/// granted and its next packet id.
struct Subscriber {
    id: usize,
    io: IoRef,
    qos: QoS,
    next_id: Cell<u16>,
}

thread_local! {
    static SUBSCRIBERS: RefCell<Vec<Subscriber>> = const { RefCell::new(Vec::new()) };
    static NEXT_CONN: Cell<usize> = const { Cell::new(0) };
}

/// Removes the connection from the subscribers when its task ends.
struct Unsubscribe(usize);

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        SUBSCRIBERS.with_borrow_mut(|subs| subs.retain(|s| s.id != self.0));
    }
}

/// Writes one message to every subscriber on this worker.
fn relay(codec: &Codec, publish: &Publish, payload: &Bytes) {
    SUBSCRIBERS.with_borrow(|subs| {
        for sub in subs {
            let qos = publish.qos.min(sub.qos);
            let packet_id = if qos == QoS::AtMostOnce {
                if sub.io.is_wr_backpressure() {
                    continue;
                }
                None
            } else {
                let id = sub.next_id.get().checked_add(1).unwrap_or(1);
                sub.next_id.set(id);
                NonZeroU16::new(id)
            };
            let out = Publish {
                dup: false,
                retain: false,
                qos,
                topic: publish.topic.clone(),
                packet_id,
                payload_size: publish.payload_size,
            };
            let _ = sub.io.encode(Encoded::Publish(out, Some(payload.clone())), codec);
        }
    });
}

async fn connection(io: Io) -> Result<(), ()> {
    let codec = Codec::new();
    codec.set_max_size(MAX_PACKET);
    // Whole payloads where they fit the read buffer; the rest comes in chunks.
    codec.set_min_chunk_size(MAX_PACKET);
    let id = NEXT_CONN.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let _unsubscribe = Unsubscribe(id);
    let mut partial: Option<(Publish, BytesMut)> = None;
    // Where a broker would signal queued deliveries for this connection.
    let deliveries = Arc::new(Notify::new());
    // CONNECT within 10 s, then 1.5 × the client's keep-alive between packets.
    let mut grace = Seconds(10);
    io.start_timer(grace);
    loop {
        let received = select(io.recv(&codec), deliveries.notified()).await;
        if let Either::Left(Ok(Some(_))) = received {
            // Any packet restarts the keep-alive (an update of the same timer slot).
            io.start_timer(grace);
        }
        let packet = match received {
            Either::Left(Ok(Some(Decoded::Packet(packet, _)))) => packet,
            Either::Left(Ok(Some(Decoded::Publish(publish, payload, _)))) => {
                if payload.len() == publish.payload_size as usize {
                    publish_in(&io, &codec, &publish, &payload);
                } else {
                    partial = Some((publish, BytesMut::from(&payload[..])));
                }
                continue;
            }
            Either::Left(Ok(Some(Decoded::PayloadChunk(chunk, eof)))) => {
                if let Some((_, buf)) = partial.as_mut() {
                    buf.extend_from_slice(&chunk);
                }
                if eof && let Some((publish, buf)) = partial.take() {
                    publish_in(&io, &codec, &publish, &buf.freeze());
                }
                continue;
            }
            Either::Left(Ok(None) | Err(_)) => return Ok(()),
            Either::Right(()) => continue,
        };
        let reply = match packet {
            Packet::Connect(connect) => {
                grace = Seconds(
                    u16::try_from(u32::from(connect.keep_alive) * 3 / 2).unwrap_or(u16::MAX),
                );
                Packet::ConnectAck(ConnectAck {
                    session_present: false,
                    return_code: ConnectAckReason::ConnectionAccepted,
                })
            }
            Packet::PingRequest => Packet::PingResponse,
            Packet::Subscribe { packet_id, topic_filters } => {
                let qos = topic_filters
                    .iter()
                    .map(|(_, qos)| (*qos).min(QoS::AtLeastOnce))
                    .max()
                    .unwrap_or(QoS::AtMostOnce);
                SUBSCRIBERS.with_borrow_mut(|subs| {
                    subs.push(Subscriber { id, io: io.get_ref(), qos, next_id: Cell::new(0) })
                });
                let status = topic_filters
                    .iter()
                    .map(|(_, q)| SubscribeReturnCode::Success((*q).min(QoS::AtLeastOnce)))
                    .collect();
                Packet::SubscribeAck { packet_id, status }
            }
            Packet::Disconnect => return Ok(()),
            _ => continue,
        };
        if let Packet::ConnectAck(_) = reply {
            io.start_timer(grace);
        }
        if io.encode(Encoded::Packet(reply), &codec).is_err() {
            return Ok(());
        }
    }
}

/// The idle part of `connection` in MQTT 5.0.
async fn idle_v5(io: Io) -> Result<(), ()> {
    use ntex_mqtt::v5::codec as v5;
    let codec = v5::Codec::new();
    codec.set_max_inbound_size(MAX_PACKET);
    let deliveries = Arc::new(Notify::new());
    let mut grace = Seconds(10);
    io.start_timer(grace);
    loop {
        let packet = match select(io.recv(&codec), deliveries.notified()).await {
            Either::Left(Ok(Some(v5::Decoded::Packet(packet, _)))) => packet,
            Either::Left(Ok(Some(_))) | Either::Right(()) => continue,
            Either::Left(Ok(None) | Err(_)) => return Ok(()),
        };
        let reply = match packet {
            v5::Packet::Connect(connect) => {
                grace = Seconds(
                    u16::try_from(u32::from(connect.keep_alive) * 3 / 2).unwrap_or(u16::MAX),
                );
                v5::Packet::ConnectAck(Box::default())
            }
            v5::Packet::PingRequest => v5::Packet::PingResponse,
            v5::Packet::Disconnect(_) => return Ok(()),
            _ => continue,
        };
        io.start_timer(grace);
        if io.encode(v5::Encoded::Packet(reply), &codec).is_err() {
            return Ok(());
        }
    }
}

/// QoS 1: PUBACK first, then the deliveries, as one write for the worker.
fn publish_in(io: &Io, codec: &Codec, publish: &Publish, payload: &Bytes) {
    if let Some(packet_id) = publish.packet_id {
        let _ = io.encode(Encoded::Packet(Packet::PublishAck { packet_id }), codec);
    }
    relay(codec, publish, payload);
}

#[cfg(test)]
mod tests {
    use ntex::testing::IoTest;
    use ntex::time::{Millis, timeout};

    use super::*;

    /// A connection of the probe over an in-memory stream; the client side.
    fn open() -> IoTest {
        let (client, server) = IoTest::create();
        // Room for the probe's answers (an in-memory stream has none by default).
        client.remote_buffer_cap(4096);
        ntex::rt::spawn(connection(Io::new(server, SharedCfg::new("T"))));
        client
    }

    #[ntex::test]
    async fn answers_connect_and_ping_in_mqtt_5() {
        let (client, server) = IoTest::create();
        client.remote_buffer_cap(4096);
        ntex::rt::spawn(idle_v5(Io::new(server, SharedCfg::new("T"))));
        // CONNECT, MQTT 5.0, clean start, keep-alive 60 s, no properties, id "a".
        client.write([0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'a']);
        let connack = timeout(Millis(2_000), client.read()).await.unwrap().unwrap();
        // CONNACK, no session present, reason 0x00 (success).
        assert_eq!((connack[0], connack[2], connack[3]), (0x20, 0, 0), "{connack:02x?}");
        assert_eq!(connack.len(), 2 + usize::from(connack[1]), "{connack:02x?}");
        client.write([0xC0, 0]);
        expect(&client, &[0xD0, 0]).await;
    }

    /// Reads until `want` bytes have arrived, then compares them.
    async fn expect(client: &IoTest, want: &[u8]) {
        let mut got = Vec::new();
        while got.len() < want.len() {
            let chunk = timeout(Millis(2_000), client.read())
                .await
                .expect("the probe did not answer in time")
                .unwrap();
            assert!(!chunk.is_empty(), "closed after {got:02x?}");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, want);
    }

    // CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id "a".
    const CONNECT: &[u8] = &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a'];
    const CONNACK: &[u8] = &[0x20, 2, 0, 0];

    #[ntex::test]
    async fn answers_connect_and_ping() {
        let client = open();
        client.write(CONNECT);
        expect(&client, CONNACK).await;
        client.write([0xC0, 0]);
        expect(&client, &[0xD0, 0]).await;
    }

    #[ntex::test]
    async fn acknowledges_and_relays_a_publish() {
        let subscriber = open();
        subscriber.write(CONNECT);
        expect(&subscriber, CONNACK).await;
        // SUBSCRIBE id 1 to "#" at QoS 1: granted QoS 1.
        subscriber.write([0x82, 6, 0, 1, 0, 1, b'#', 1]);
        expect(&subscriber, &[0x90, 3, 0, 1, 1]).await;

        let publisher = open();
        publisher.write(CONNECT);
        expect(&publisher, CONNACK).await;
        // PUBLISH QoS 1, topic "t", id 7, payload "hi", split inside the payload.
        publisher.write([0x32, 7, 0, 1, b't', 0, 7, b'h']);
        // The header is decoded first, the payload's end comes as a chunk.
        ntex::time::sleep(Millis(50)).await;
        publisher.write([b'i']);
        expect(&publisher, &[0x40, 2, 0, 7]).await;
        // Delivered at QoS 1 with the subscriber's own packet id.
        expect(&subscriber, &[0x32, 7, 0, 1, b't', 0, 1, b'h', b'i']).await;
    }
}
