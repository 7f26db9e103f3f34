//! A subscriber that never reads while 100 publishers send at full rate:
//! the broker's memory stays within its bounds, the overflow is dropped and
//! counted as the policy says, and a subscriber that keeps up gets every
//! message in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    RawConn, ServerProcess, V5Options, metric, publish_numbered, qos0_publish, rss_kib, text,
    wait_for_metric,
};

const PUBLISHERS: usize = 100;
const PAYLOAD: usize = 1024;
const LOAD: Duration = Duration::from_secs(6);
/// Growth of the broker's RSS the test tolerates under the load: the slow
/// session's queue (1,000 messages of 1 KiB) and the buffers of 100 busy
/// connections fit many times over; an unbounded queue does not.
const RSS_BOUND_KIB: u64 = 48 * 1024;
const RECEIVED: &str = "mapcast_messages_received_total";
const DROPPED_QOS0: &str = "mapcast_messages_dropped_total{reason=\"queue_full_qos0\"}";
const DROPPED_QOS1: &str = "mapcast_messages_dropped_total{reason=\"queue_full_qos1\"}";

/// A batch of 32 QoS 0 PUBLISHes of `PAYLOAD` bytes to `topic`, encoded once.
fn publish_batch(topic: &str) -> Vec<u8> {
    qos0_publish(topic, &[b'p'; PAYLOAD]).repeat(32)
}

/// A 3.1.1 publisher writing QoS 0 batches as fast as the broker reads them
/// until `stop`; returns the messages it wrote.
async fn flood(addr: std::net::SocketAddr, n: usize, stop: Arc<AtomicBool>) -> u64 {
    // A small send buffer: what the broker has not read yet stays small, so
    // the test does not wait long for it after the load.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let id = format!("load-{n}");
    let mut connect = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
    connect.extend((id.len() as u16).to_be_bytes());
    connect.extend(id.as_bytes());
    stream.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[3], 0, "publisher {n} refused");
    let batch = publish_batch(&format!("load/{n}"));
    let mut sent = 0;
    while !stop.load(Relaxed) {
        if stream.write_all(&batch).await.is_err() {
            break;
        }
        sent += 32;
    }
    sent
}

#[tokio::test]
async fn a_subscriber_that_never_reads_costs_bounded_memory_and_others_get_everything() {
    let dir = tempfile::tempdir().unwrap();
    // Over a hundred clients connect at once from 127.0.0.1: more than one
    // address's default burst.
    let config = "[broker]\nmax_queued_messages = 1000\nqueue_overflow = \"drop_oldest\"\n\
                  connect_burst_per_ip = 1000\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let pid = server.pid();
    // Subscribes to everything, then never reads again.
    let (mut slow, _) = RawConn::connect_v5(server.mqtt_addr, "slow", true, None).await;
    slow.subscribe_v5(1, "load/#", QoS::AtLeastOnce).await;
    slow.subscribe_v5(2, "seq/#", QoS::AtLeastOnce).await;
    let mut steady = V5Options::new("steady", server.mqtt_addr).connect().await;
    steady.subscribe("seq/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = JoinSet::new();
    for n in 0..PUBLISHERS {
        publishers.spawn(flood(server.mqtt_addr, n, stop.clone()));
    }
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampled = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, sampled) = (peak.clone(), sampled.clone());
        tokio::spawn(async move {
            while !sampled.load(Relaxed) {
                peak.fetch_max(rss_kib(pid), Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Numbered QoS 1 messages through the same broker all along the load.
    let end_sequence = CancellationToken::new();
    let sequencer = tokio::spawn(publish_numbered(
        server.mqtt_addr,
        "sequencer",
        "seq/1",
        "",
        16,
        end_sequence.clone(),
        |_| {},
    ));
    tokio::time::sleep(LOAD).await;
    end_sequence.cancel();
    let sequenced = sequencer.await.unwrap() as u32;
    stop.store(true, Relaxed);
    let published: u64 = publishers.join_all().await.into_iter().sum();
    // Until the broker has read everything the publishers wrote.
    let all = (published + u64::from(sequenced)) as f64;
    wait_for_metric(server.http_addr, RECEIVED, Duration::from_secs(60), |v| v >= all).await;
    sampled.store(true, Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Relaxed).max(rss_kib(pid));

    let received: Vec<u32> = steady
        .recv_publishes(sequenced as usize)
        .await
        .iter()
        .map(|p| text(&p.payload).parse().unwrap())
        .collect();
    let dropped = metric(server.http_addr, DROPPED_QOS0).await as u64;
    let dropped_qos1 = metric(server.http_addr, DROPPED_QOS1).await as u64;
    // Every number exactly once. (Their order is not asserted: under this
    // load ntex-mqtt may start a later PUBLISH of a connection before an
    // earlier one, see the README's reliability notes.)
    let mut numbers = received.clone();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..sequenced).collect::<Vec<_>>(), "the steady subscriber lost none");
    let out_of_order = received.windows(2).filter(|w| w[0] > w[1]).count();
    println!(
        "slow consumer: {published} messages of {PAYLOAD} B from {PUBLISHERS} publishers in \
         {LOAD:?}; RSS baseline {baseline} KiB, peak {peak} KiB (+{}); dropped {dropped} QoS 0 \
         and {dropped_qos1} QoS 1; {sequenced} sequenced messages, {out_of_order} out of order",
        peak - baseline
    );

    assert!(peak - baseline < RSS_BOUND_KIB, "RSS grew by {} KiB", peak - baseline);
    // The bound did the work: nearly everything for the slow session was
    // dropped, and held instead it would have overrun the memory bound.
    assert!(dropped >= published / 2, "only {dropped} messages dropped of {published} published");
    assert!(
        dropped * PAYLOAD as u64 / 1024 > RSS_BOUND_KIB,
        "only {dropped} messages dropped of {published} published: too few to test the bound"
    );
    // drop_oldest sacrifices QoS 0 first: the slow session's QoS 1 messages
    // are dropped only when no QoS 0 one is left in its queue.
    assert!(dropped_qos1 <= u64::from(sequenced), "{dropped_qos1} QoS 1 drops");
    let logs = server.logs();
    let warnings = logs.matches("outbound queue full").count() as u64;
    assert!(warnings >= 1, "the overflow is logged");
    assert!(warnings <= (dropped + dropped_qos1) / 1000 + 2, "{warnings} log lines: throttled");
    drop(slow);
    assert!(server.terminate(Duration::from_secs(10)).await.is_some());
}
