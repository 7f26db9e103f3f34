//! Pipelined publishes whose packets arrive split across the broker's reads:
//! QoS 0 ones of a connection reach subscribers in the order they were sent
//! [MQTT-4.6.0-6] even when it sends faster than the broker routes, and
//! QoS 1 ones all arrive (they used to hang the connection, see `framing`).

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    RawConn, ServerProcess, V5Options, packet_type, publish_numbered, qos0_publish, text,
};

/// QoS 0 PUBLISHes `order/a` numbered 0..count, padded so that many of them
/// straddle the broker's reads, encoded back to back.
fn numbered_batch(count: u32, padding: usize) -> Vec<u8> {
    let pad = "x".repeat(padding);
    (0..count).flat_map(|n| qos0_publish("order/a", format!("{n:08}{pad}").as_bytes())).collect()
}

#[tokio::test]
async fn a_flood_of_qos0_publishes_from_one_connection_arrives_in_order() {
    const COUNT: u32 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let config = "[broker]\nmax_queued_messages = 100000\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let (mut sub, _) = RawConn::connect_v5(server.mqtt_addr, "order-sub", true, None).await;
    sub.subscribe_v5(1, "order/#", QoS::AtMostOnce).await;

    let mut publisher = TcpStream::connect(server.mqtt_addr).await.unwrap();
    let id = b"order-pub";
    let mut connect = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
    connect.extend((id.len() as u16).to_be_bytes());
    connect.extend(id);
    publisher.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    publisher.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[3], 0, "publisher refused");
    // 12 MB in one write: the broker reads it in buffer-sized pieces, as fast
    // as it can, with PUBLISHes cut at every piece's end.
    let writer = tokio::spawn(async move {
        publisher.write_all(&numbered_batch(COUNT, 600)).await.unwrap();
        publisher
    });

    let mut received = Vec::new();
    while let Ok(frame) = sub.try_recv(Duration::from_secs(3)).await {
        if frame.packet_type() == packet_type::PUBLISH {
            received.push(text(&frame.payload(true))[..8].parse::<u32>().unwrap());
        }
        if received.last() == Some(&(COUNT - 1)) {
            break;
        }
    }
    drop(writer.await.unwrap());

    let inversions = received.windows(2).filter(|w| w[0] >= w[1]).count();
    println!("{} of {COUNT} delivered, {inversions} out of order", received.len());
    assert_eq!(inversions, 0, "delivered out of order");
    assert!(received.len() as u32 > COUNT / 2, "only {} of {COUNT} delivered", received.len());
}

#[tokio::test]
async fn pipelined_qos1_publishes_split_across_reads_are_all_acknowledged_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut sub = V5Options::new("order-sub", server.mqtt_addr).connect().await;
    sub.subscribe("order/#", QoS::AtLeastOnce).await;

    let stop = CancellationToken::new();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (addr, stop) = (server.mqtt_addr, stop.clone());
            tokio::spawn(async move {
                let topic = format!("order/{p}");
                // Padded, so that PUBLISHes straddle the broker's reads.
                let prefix = format!("{p}:{}:", "x".repeat(600));
                publish_numbered(
                    addr,
                    &format!("order-pub-{p}"),
                    &topic,
                    &prefix,
                    100,
                    stop,
                    |_| {},
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let mut sent = Vec::new();
    for p in publishers {
        sent.push(p.await.unwrap());
    }

    let got = sub.recv_publishes(sent.iter().sum::<u64>() as usize).await;
    let mut inverted = 0;
    for (p, &count) in sent.iter().enumerate() {
        let numbers: Vec<u64> = got
            .iter()
            .map(|m| text(&m.payload))
            .filter(|t| t.starts_with(&format!("{p}:")))
            .map(|t| t.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        let inversions = numbers.windows(2).filter(|w| w[0] > w[1]).count();
        inverted += inversions;
        let mut sorted = numbers;
        sorted.sort_unstable();
        assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "publisher {p}: each message once");
    }
    assert_eq!(
        inverted, 0,
        "pipelined QoS 1: {sent:?} messages per publisher, {inverted} inversions"
    );
}
