//! A QoS 1 publisher of numbered messages over a raw MQTT 5 connection,
//! keeping a window of them unacknowledged (distinct packet ids, so nothing
//! is ever reordered on the way), for load and ordering tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use tokio_util::sync::CancellationToken;

use super::raw::{RawConn, RawEnd, packet_type};

/// Publish `{prefix}{n}` for n = 0, 1, ... to `topic`, up to `window` in
/// flight, until `stop` (then wait for the acknowledgements in flight and
/// disconnect) or until the broker closes the connection. `on_ack` gets
/// each n the broker acknowledged with a success code. Returns how many
/// were sent.
pub async fn publish_numbered(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    prefix: &str,
    window: u16,
    stop: CancellationToken,
    mut on_ack: impl FnMut(u64),
) -> u64 {
    let (mut conn, connack) = RawConn::connect_v5(addr, client_id, true, None).await;
    assert_eq!(connack.reason(), 0, "{client_id} refused");
    // Packet id → number of the message in flight under it.
    let mut in_flight = HashMap::new();
    let mut next = 0u64;
    let send = async |conn: &mut RawConn, pkid: u16, n: u64| {
        let payload = format!("{prefix}{n}");
        conn.publish_v5(topic, QoS::AtLeastOnce, pkid, false, false, payload.as_bytes(), None)
            .await;
    };
    for pkid in 1..=window {
        send(&mut conn, pkid, next).await;
        in_flight.insert(pkid, next);
        next += 1;
    }
    loop {
        if stop.is_cancelled() && in_flight.is_empty() {
            conn.disconnect_v5(0).await;
            return next;
        }
        match conn.try_recv(Duration::from_secs(15)).await {
            Ok(f) if f.packet_type() == packet_type::PUBACK => {
                let pkid = f.pkid();
                let done = in_flight.remove(&pkid).expect("a PUBACK for a packet in flight");
                if f.reason() < 0x80 {
                    on_ack(done);
                }
                if !stop.is_cancelled() {
                    send(&mut conn, pkid, next).await;
                    in_flight.insert(pkid, next);
                    next += 1;
                }
            }
            // A DISCONNECT (the server shutting down), then the close.
            Ok(_) => {}
            Err(RawEnd::Closed) => return next,
            Err(RawEnd::Timeout) => panic!("{client_id}: the broker neither acked nor closed"),
        }
    }
}
