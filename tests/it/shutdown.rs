//! Graceful shutdown under load: SIGTERM while QoS 1 publishers have
//! messages in flight. Every message the broker acknowledged before it
//! stopped is durable: after a restart on the same data directory its
//! persistent subscriber receives each of them. The process exits within
//! 10 seconds of the signal.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::helpers::{RawConn, ServerProcess, packet_type, publish_numbered};

const PUBLISHERS: usize = 10;
/// QoS 1 PUBLISHes each publisher keeps unacknowledged at once.
const WINDOW: u16 = 16;

#[tokio::test]
async fn sigterm_under_qos1_load_loses_no_acknowledged_message_and_exits_within_10_s() {
    let dir = tempfile::tempdir().unwrap();
    // Room for everything in the persistent session's queue: no drop may
    // hide a loss.
    let config = "[broker]\nmax_queued_messages = 1000000\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let (mut keeper, _) = RawConn::connect_v5(server.mqtt_addr, "keeper", false, Some(3600)).await;
    keeper.subscribe_v5(1, "load/#", QoS::AtLeastOnce).await;
    keeper.disconnect_v5(0).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut publishers = JoinSet::new();
    // Never stopped: they publish until the broker closes their connections.
    let never = CancellationToken::new();
    for n in 0..PUBLISHERS {
        let (addr, acked, never) = (server.mqtt_addr, acked.clone(), never.clone());
        publishers.spawn(async move {
            let prefix = format!("{n}-");
            let id = format!("pub-{n}");
            let record = |seq| acked.lock().unwrap().push(format!("{prefix}{seq}"));
            publish_numbered(addr, &id, "load/kept", &prefix, WINDOW, never, record).await
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_before_signal = acked.lock().unwrap().len();
    assert!(acked_before_signal > 100, "the load is running ({acked_before_signal} acked)");

    let signalled = Instant::now();
    let status = server.terminate(Duration::from_secs(10)).await;
    let exit_secs = signalled.elapsed().as_secs_f64();
    let sent: u64 = publishers.join_all().await.into_iter().sum();

    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status within 10 s of SIGTERM");
    let acked: Vec<String> = std::mem::take(&mut *acked.lock().unwrap());
    let server = ServerProcess::start(dir.path(), &[]).await;
    let (mut keeper, connack) =
        RawConn::connect_v5(server.mqtt_addr, "keeper", false, Some(3600)).await;
    assert!(connack.session_present(), "the persistent session survived");
    let mut received = HashSet::new();
    let mut deliveries = 0u64;
    while let Ok(f) = keeper.try_recv(Duration::from_secs(2)).await {
        if f.packet_type() == packet_type::PUBLISH {
            deliveries += 1;
            received.insert(String::from_utf8(f.payload(true)).unwrap());
            if f.qos() > 0 {
                keeper.puback(f.pkid()).await;
            }
        }
    }

    let lost: Vec<&String> = acked.iter().filter(|p| !received.contains(*p)).collect();
    println!(
        "shutdown under load: {sent} sent, {} acknowledged ({acked_before_signal} before \
         SIGTERM), exit {exit_secs:.2} s after it; after restart {deliveries} deliveries of {} \
         distinct messages",
        acked.len(),
        received.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(server.terminate(Duration::from_secs(10)).await.is_some());
}

/// MQTT 3.1.1 connections keep no wait on the server's stop: the stop
/// kicks them through their sessions. Idle ones close at once on SIGTERM,
/// well inside the 3 s the server gives connections before dropping them.
#[tokio::test]
async fn sigterm_closes_idle_v3_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut idle = Vec::new();
    for i in 0..20 {
        let (conn, connack) =
            RawConn::connect_v3(server.mqtt_addr, &format!("idle-v3-{i}"), i % 2 == 0).await;
        assert_eq!(connack.reason(), 0);
        idle.push(conn);
    }

    let signalled = Instant::now();
    let exited = tokio::spawn(server.terminate(Duration::from_secs(10)));
    for conn in &mut idle {
        // 3.1.1 has no server DISCONNECT: the close is the message.
        assert!(conn.expect_closed(Duration::from_millis(2_500)).await.is_empty());
    }
    let closed_after = signalled.elapsed();
    let status = exited.await.unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status within 10 s of SIGTERM");
    assert!(closed_after < Duration::from_millis(1_500), "closed {closed_after:?} after SIGTERM");
}
