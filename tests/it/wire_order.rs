//! A connection's packets reach the broker in the order they were sent, and
//! its acknowledgements leave in that order [MQTT-4.6.0-2]: pipelined
//! publishes of every QoS mixed with SUBSCRIBEs while earlier publishes wait
//! for their commit, topic aliases defined by a publish that waits,
//! PUBACKs of publishes that wait for a congested subscriber, and a
//! subscriber's acknowledgements around a PUBREL that waits for its PUBREC
//! to be stored.

use std::net::SocketAddr;
use std::time::Duration;

use mapcast_bench::wire::{self, Packet, QoS, Version};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};

use crate::helpers::{RawConn, ServerProcess};

/// The long run (100,000 messages) with `MAPCAST_TEST_LONG=1`, as in CI.
fn long_runs() -> bool {
    std::env::var("MAPCAST_TEST_LONG").is_ok_and(|v| v == "1")
}

/// A v5 connection for writing exact packets fast and reading answers.
async fn connect(addr: SocketAddr, client_id: &str) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut out = Vec::new();
    wire::encode_connect(
        &mut out,
        &wire::Connect {
            version: Version::V5,
            client_id,
            keep_alive_secs: 60,
            clean: true,
            username: None,
            password: None,
        },
    );
    stream.write_all(&out).await.unwrap();
    let (mut rd, wr) = stream.into_split();
    let mut buf = Vec::new();
    match next_packet(&mut rd, &mut buf).await {
        Some(Answer::ConnAck(0)) => {}
        other => panic!("{client_id}: no successful CONNACK: {other:?}"),
    }
    assert!(buf.is_empty());
    (rd, wr)
}

/// Reads whole packets; owned copies of what the tests look at.
#[derive(Debug)]
enum Answer {
    ConnAck(u8),
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubComp,
    SubAck(u16),
    Publish(String, Vec<u8>),
    Disconnect(u8),
    Other,
}

async fn next_packet(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<Answer> {
    loop {
        if let Some((packet, used)) = wire::decode(buf, Version::V5).expect("malformed answer") {
            let answer = match packet {
                Packet::ConnAck { code, .. } => Answer::ConnAck(code),
                Packet::PubAck { packet_id, code } => Answer::PubAck(packet_id, code),
                Packet::PubRec { packet_id, code } => Answer::PubRec(packet_id, code),
                Packet::PubComp { .. } => Answer::PubComp,
                Packet::SubAck { packet_id, .. } => Answer::SubAck(packet_id),
                Packet::Publish { topic, payload, .. } => {
                    Answer::Publish(String::from_utf8_lossy(topic).into_owned(), payload.to_vec())
                }
                Packet::Disconnect { code } => Answer::Disconnect(code),
                _ => Answer::Other,
            };
            buf.drain(..used);
            return Some(answer);
        }
        let mut chunk = [0u8; 64 * 1024];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The number at the start of a payload.
fn number(payload: &[u8]) -> u32 {
    std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap()
}

/// A subscriber that collects the numbers of everything it receives until
/// `last` arrives or nothing comes for a while; `(topic, number)` in order.
fn collect(mut rd: OwnedReadHalf, last: u32) -> tokio::task::JoinHandle<Vec<(String, u32)>> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let next =
                tokio::time::timeout(Duration::from_secs(10), next_packet(&mut rd, &mut buf));
            match next.await {
                Ok(Some(Answer::Publish(topic, payload))) => {
                    let n = number(&payload);
                    got.push((topic, n));
                    if n == last {
                        return got;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return got,
            }
        }
    })
}

async fn subscribe(addr: SocketAddr, client_id: &str, filter: &str) -> OwnedReadHalf {
    let (mut rd, mut wr) = connect(addr, client_id).await;
    let mut out = Vec::new();
    wire::encode_subscribe(&mut out, Version::V5, 1, filter, QoS::AtMostOnce);
    wr.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    assert!(matches!(next_packet(&mut rd, &mut buf).await, Some(Answer::SubAck(1))));
    // Kept open for the test: the write half closes the socket when dropped.
    std::mem::forget(wr);
    rd
}

/// A persistent session, offline, subscribed to `filter` at QoS 1: every
/// QoS ≥ 1 publish to it is queued and stored, so its acknowledgement
/// waits for a commit.
async fn offline_persistent_subscriber(addr: SocketAddr, client_id: &str, filter: &str) {
    let (mut conn, connack) = RawConn::connect_v5(addr, client_id, false, Some(3600)).await;
    assert_eq!(connack.reason(), 0);
    conn.subscribe_v5(1, filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
    conn.disconnect_v5(0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A v5 publisher that writes packets back to back while a reader task
/// takes the answers: QoS 2 exchanges get their PUBREL, and at most
/// `WINDOW` publishes and SUBSCRIBEs wait for an answer (within the
/// broker's receive maximum, 1,024).
struct Pipeline {
    wr: OwnedWriteHalf,
    out: Vec<u8>,
    window: Arc<Semaphore>,
    pubrels: mpsc::UnboundedReceiver<u16>,
    reader: tokio::task::JoinHandle<u32>,
    next_id: u16,
}

const WINDOW: u32 = 512;

impl Pipeline {
    async fn connect(addr: SocketAddr, client_id: &str) -> Self {
        let (mut rd, wr) = connect(addr, client_id).await;
        let window = Arc::new(Semaphore::new(WINDOW as usize));
        let (pubrel_tx, pubrels) = mpsc::unbounded_channel::<u16>();
        let answered = window.clone();
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut pubacks = 0u32;
            while let Some(answer) = next_packet(&mut rd, &mut buf).await {
                match answer {
                    Answer::PubAck(_, code) => {
                        assert!(code < 0x80, "PUBACK with failure 0x{code:02x}");
                        pubacks += 1;
                        answered.add_permits(1);
                    }
                    Answer::PubRec(id, code) => {
                        assert!(code < 0x80, "PUBREC with failure 0x{code:02x}");
                        pubrel_tx.send(id).unwrap();
                    }
                    Answer::PubComp | Answer::SubAck(_) => answered.add_permits(1),
                    Answer::Disconnect(code) => panic!("publisher disconnected: 0x{code:02x}"),
                    _ => {}
                }
            }
            pubacks
        });
        Self { wr, out: Vec::new(), window, pubrels, reader, next_id: 0 }
    }

    /// A packet id for a packet that waits for an answer, once the window
    /// has room. A stuck exchange fails the test instead of hanging it.
    async fn take_id(&mut self) -> u16 {
        if self.window.available_permits() == 0 {
            self.write().await;
        }
        let window = self.window.clone();
        let taken = async {
            loop {
                tokio::select! {
                    permit = window.acquire() => break permit.unwrap().forget(),
                    // QoS 2 exchanges in the window end only after PUBREL.
                    Some(id) = self.pubrels.recv() => {
                        wire::encode_pubrel(&mut self.out, id);
                        self.write().await;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), taken)
            .await
            .expect("the broker stopped answering");
        self.next_id = self.next_id % 60_000 + 1;
        self.next_id
    }

    async fn write(&mut self) {
        while let Ok(id) = self.pubrels.try_recv() {
            wire::encode_pubrel(&mut self.out, id);
        }
        self.wr.write_all(&self.out).await.unwrap();
        self.out.clear();
    }

    /// Write once enough is buffered.
    async fn flush_some(&mut self) {
        if self.out.len() > 16 * 1024 {
            self.write().await;
        }
    }

    /// Write the rest, answer the last QoS 2 exchanges, wait until every
    /// packet is answered; the number of PUBACKs.
    async fn finish(mut self) -> u32 {
        self.write().await;
        let window = self.window.clone();
        let drained = async {
            loop {
                tokio::select! {
                    Some(id) = self.pubrels.recv() => {
                        wire::encode_pubrel(&mut self.out, id);
                        self.write().await;
                    }
                    permits = window.acquire_many(WINDOW) => {
                        permits.unwrap().forget();
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), drained)
            .await
            .expect("not every publish and SUBSCRIBE was answered");
        drop(self.wr);
        self.reader.await.unwrap()
    }
}

#[tokio::test]
async fn pipelined_publishes_of_every_qos_with_subscribes_arrive_in_the_order_sent() {
    let count: u32 = if long_runs() { 100_000 } else { 20_000 };
    let dir = tempfile::tempdir().unwrap();
    let config = "[broker]\nmax_queued_messages = 200000\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let addr = server.mqtt_addr;

    offline_persistent_subscriber(addr, "order-stored", "mix/#").await;
    let checker = collect(subscribe(addr, "order-check", "mix/#").await, count - 1);
    // Reads in sips: the broker's writes to it back up now and then.
    let slow = subscribe(addr, "order-slow", "mix/#").await;
    let slow = tokio::spawn(async move {
        let mut rd = slow;
        let mut chunk = vec![0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(5), rd.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let mut publisher = Pipeline::connect(addr, "order-pub").await;
    let mut subscribes = 0;
    for n in 0..count {
        if n % 20 == 19 {
            let id = publisher.take_id().await;
            wire::encode_subscribe(
                &mut publisher.out,
                Version::V5,
                id,
                &format!("extra/{n}"),
                QoS::AtMostOnce,
            );
            subscribes += 1;
        }
        let qos = QoS::from_u8((n % 3) as u8).unwrap();
        let id = if qos == QoS::AtMostOnce { 0 } else { publisher.take_id().await };
        let payload = format!("{n:08}");
        wire::encode_publish(
            &mut publisher.out,
            Version::V5,
            qos,
            b"mix/a",
            id,
            payload.as_bytes(),
        );
        publisher.flush_some().await;
    }
    let pubacks = publisher.finish().await;
    let got = checker.await.unwrap();
    let numbers: Vec<u32> = got.iter().map(|(_, n)| *n).collect();
    let inversions = numbers.windows(2).filter(|w| w[0] >= w[1]).count();
    assert_eq!(inversions, 0, "{inversions} inversions in {} messages", numbers.len());
    assert_eq!(numbers.len() as u32, count, "every message arrives once");
    assert_eq!(pubacks, (0..count).filter(|n| n % 3 == 1).count() as u32);
    assert!(subscribes > 0);
    slow.abort();
}

/// A v5 PUBLISH with a topic alias: `topic` empty to use it.
fn publish_with_alias(out: &mut Vec<u8>, qos: QoS, topic: &str, alias: u16, id: u16, n: u32) {
    let payload = format!("{n:08}");
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    // Properties: Topic Alias (0x23) and its two bytes.
    let len = 2 + topic.len() + id_len + 1 + 3 + payload.len();
    out.push(0x30 | ((qos as u8) << 1));
    wire::put_varint(out, len);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos != QoS::AtMostOnce {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(&[3, 0x23]);
    out.extend_from_slice(&alias.to_be_bytes());
    out.extend_from_slice(payload.as_bytes());
}

#[tokio::test]
async fn a_topic_alias_set_by_a_publish_that_waits_is_used_in_order() {
    const ROUNDS: u32 = 2_000;
    const USES: u32 = 9;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let addr = server.mqtt_addr;
    offline_persistent_subscriber(addr, "alias-stored", "alias/#").await;
    let last = ROUNDS * (USES + 1) - 1;
    let checker = collect(subscribe(addr, "alias-check", "alias/#").await, last);

    // Each round: a QoS 1 PUBLISH (waiting for its commit) that points alias
    // 1 at the round's topic, then QoS 0 ones that use only the alias, then
    // a SUBSCRIBE (which waits for the broker's answer).
    let mut publisher = Pipeline::connect(addr, "alias-pub").await;
    let mut n = 0;
    for round in 0..ROUNDS {
        let topic = format!("alias/{}", round % 2);
        let id = publisher.take_id().await;
        publish_with_alias(&mut publisher.out, QoS::AtLeastOnce, &topic, 1, id, n);
        n += 1;
        for _ in 0..USES {
            publish_with_alias(&mut publisher.out, QoS::AtMostOnce, "", 1, 0, n);
            n += 1;
        }
        let id = publisher.take_id().await;
        wire::encode_subscribe(&mut publisher.out, Version::V5, id, "other/x", QoS::AtMostOnce);
        publisher.flush_some().await;
    }
    assert_eq!(publisher.finish().await, ROUNDS);

    let got = checker.await.unwrap();
    assert_eq!(got.len() as u32, last + 1, "every message arrives");
    for (topic, n) in got {
        let round = n / (USES + 1);
        assert_eq!(topic, format!("alias/{}", round % 2), "message {n} on the wrong topic");
    }
}

#[tokio::test]
async fn pubacks_leave_in_arrival_order_while_some_wait_for_a_congested_subscriber() {
    const COUNT: u16 = 60;
    let dir = tempfile::tempdir().unwrap();
    let config = "[broker]\nmax_queued_messages = 5\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let addr = server.mqtt_addr;

    // Subscribed at QoS 1 and not reading for a second: its queue is full
    // at once, so publishes to `slow/x` wait for room before their PUBACK;
    // nobody subscribes to `free/x`, those are answered at once.
    let (mut stalled, _) = RawConn::connect_v5(addr, "stalled", true, None).await;
    stalled.subscribe_v5(1, "slow/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;

    let (mut rd, mut wr) = connect(addr, "acks-pub").await;
    let mut out = Vec::new();
    for id in 1..=COUNT {
        let topic: &[u8] = if id % 2 == 1 { b"slow/x" } else { b"free/x" };
        let payload = format!("{id:08}");
        wire::encode_publish(
            &mut out,
            Version::V5,
            QoS::AtLeastOnce,
            topic,
            id,
            payload.as_bytes(),
        );
    }
    wr.write_all(&out).await.unwrap();

    // Drain the stalled subscriber after a while (acknowledging), so the
    // waiting publishes get their room.
    let drainer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(frame) = stalled.try_recv(Duration::from_secs(2)).await {
            if frame.packet_type() == crate::helpers::packet_type::PUBLISH && frame.qos() == 1 {
                stalled.puback(frame.pkid()).await;
            }
        }
    });

    let mut buf = Vec::new();
    let mut order = Vec::new();
    while order.len() < usize::from(COUNT) {
        let next = tokio::time::timeout(Duration::from_secs(15), next_packet(&mut rd, &mut buf));
        match next.await.expect("PUBACKs stopped coming") {
            Some(Answer::PubAck(id, _)) => order.push(id),
            Some(Answer::Disconnect(code)) => panic!("disconnected: 0x{code:02x}"),
            None => panic!("connection closed"),
            Some(_) => {}
        }
    }
    assert_eq!(order, (1..=COUNT).collect::<Vec<_>>(), "PUBACKs out of arrival order");
    drainer.abort();
}

/// A v5 client that keeps more QoS 1 publishes unacknowledged than the
/// receive maximum it was given (1,024) is disconnected with 0x93 [MQTT-3.3.4-9].
/// The database is frozen, so that every PUBACK waits for its commit.
#[tokio::test]
async fn more_unacknowledged_qos1_publishes_than_the_receive_maximum_get_0x93() {
    use crate::helpers::{PgCluster, mark_pg_cluster_ran, packet_type};
    use rumqttc::v5::mqttbytes::QoS as V5QoS;

    let Some(pg) = PgCluster::start_if_configured("receive_maximum").await else { return };
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &["--database-url", &pg.url()]).await;
    // A persistent subscriber away: every publish is stored for it.
    let (mut sub, _) = RawConn::connect_v5(server.mqtt_addr, "rm-sub", false, Some(300)).await;
    sub.subscribe_v5(1, "rm/t", V5QoS::AtLeastOnce).await;
    drop(sub);
    let (mut publisher, connack) =
        RawConn::connect_v5(server.mqtt_addr, "rm-pub", true, None).await;
    let granted = match connack.v5() {
        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack) => {
            ack.properties.and_then(|p| p.receive_max).unwrap_or(u16::MAX)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert_eq!(granted, 1024);
    tokio::time::sleep(Duration::from_millis(500)).await;

    pg.freeze().await;
    for pkid in 1..=granted {
        publisher.publish_v5("rm/t", V5QoS::AtLeastOnce, pkid, false, false, b"x", None).await;
    }
    let quiet = publisher.try_recv(Duration::from_millis(500)).await;
    assert!(quiet.is_err(), "answered while every commit hangs: {quiet:?}");
    publisher.publish_v5("rm/t", V5QoS::AtLeastOnce, granted + 1, false, false, b"x", None).await;
    let frames = publisher.expect_closed(Duration::from_secs(5)).await;
    pg.thaw().await;
    let disconnect = frames.iter().find(|f| f.packet_type() == packet_type::DISCONNECT);
    assert_eq!(disconnect.map(|f| f.reason()), Some(0x93), "{frames:?}");
    server.kill9().await;
    mark_pg_cluster_ran().await;
}

/// A persistent subscriber that gets QoS 2 and QoS 1 messages mixed answers
/// each in the order it arrives [MQTT-4.6.0-2]: a PUBREC, then PUBACKs of
/// the QoS 1 messages that follow, then PUBCOMP once the PUBREL comes. The
/// broker sends that PUBREL only once the PUBREC's state is stored, so QoS 1
/// messages go out in between and are acknowledged before the PUBCOMP; the
/// subscriber must keep its connection and get everything.
async fn acks_around_a_stored_pubrec_keep_the_connection(v5: bool) {
    const ROUNDS: u16 = 40;
    const QOS1_PER_ROUND: u16 = 25;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let addr = server.mqtt_addr;
    let id = if v5 { "mixed-v5" } else { "mixed-v3" };
    let mut sub = if v5 {
        let (mut sub, _) = RawConn::connect_v5(addr, id, false, Some(300)).await;
        sub.subscribe_v5(1, "mixed/two", rumqttc::v5::mqttbytes::QoS::ExactlyOnce).await;
        sub.subscribe_v5(2, "mixed/one", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
        sub
    } else {
        use rumqttc::mqttbytes::v4;
        let (mut sub, _) = RawConn::connect_v3(addr, id, false).await;
        for (pkid, filter, qos) in [
            (1, "mixed/two", rumqttc::mqttbytes::QoS::ExactlyOnce),
            (2, "mixed/one", rumqttc::mqttbytes::QoS::AtLeastOnce),
        ] {
            let mut s = v4::Subscribe::new(filter, qos);
            s.pkid = pkid;
            sub.send_v4(v4::Packet::Subscribe(s)).await;
            sub.recv_type(crate::helpers::packet_type::SUBACK).await;
        }
        sub
    };

    // Two publishers, paced: QoS 1 messages keep flowing while each QoS 2
    // exchange runs.
    let (mut rd1, mut wr1) = connect(addr, "mixed-pub-1").await;
    let ones_publisher = tokio::spawn(async move {
        for pkid in 1..=ROUNDS * QOS1_PER_ROUND {
            let mut out = Vec::new();
            wire::encode_publish(&mut out, Version::V5, QoS::AtLeastOnce, b"mixed/one", pkid, b"1");
            wr1.write_all(&out).await.unwrap();
            tokio::time::sleep(Duration::from_micros(400)).await;
        }
        let mut buf = Vec::new();
        let mut acked = 0;
        while acked < ROUNDS * QOS1_PER_ROUND {
            if let Answer::PubAck(..) = next_packet(&mut rd1, &mut buf).await.expect("publisher") {
                acked += 1;
            }
        }
    });
    let (mut rd2, mut wr2) = connect(addr, "mixed-pub-2").await;
    let twos_publisher = tokio::spawn(async move {
        let mut buf = Vec::new();
        for pkid in 1..=ROUNDS {
            let mut out = Vec::new();
            wire::encode_publish(&mut out, Version::V5, QoS::ExactlyOnce, b"mixed/two", pkid, b"2");
            wr2.write_all(&out).await.unwrap();
            loop {
                match next_packet(&mut rd2, &mut buf).await.expect("publisher") {
                    Answer::PubRec(..) => {
                        let mut rel = Vec::new();
                        wire::encode_pubrel(&mut rel, pkid);
                        wr2.write_all(&rel).await.unwrap();
                    }
                    Answer::PubComp => break,
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let (mut twos, mut ones) = (0u16, 0u16);
    while twos < ROUNDS || ones < ROUNDS * QOS1_PER_ROUND {
        let frame = match sub.try_recv(Duration::from_secs(15)).await {
            Ok(frame) => frame,
            Err(end) => panic!(
                "{id}: connection ended ({end:?}) after {twos} QoS 2 and {ones} QoS 1 messages"
            ),
        };
        match (frame.packet_type(), frame.qos()) {
            (crate::helpers::packet_type::PUBLISH, 2) => {
                twos += 1;
                sub.pubrec(frame.pkid()).await;
            }
            (crate::helpers::packet_type::PUBLISH, 1) => {
                ones += 1;
                sub.puback(frame.pkid()).await;
            }
            (crate::helpers::packet_type::PUBREL, _) => sub.pubcomp(frame.pkid()).await,
            (crate::helpers::packet_type::DISCONNECT, _) => {
                panic!(
                    "{id}: disconnected with 0x{:02x} after {twos} QoS 2 and {ones} QoS 1",
                    frame.reason()
                )
            }
            _ => {}
        }
    }
    ones_publisher.await.unwrap();
    twos_publisher.await.unwrap();
}

#[tokio::test]
async fn a_v3_subscriber_acknowledging_in_arrival_order_around_a_stored_pubrec_stays_connected() {
    acks_around_a_stored_pubrec_keep_the_connection(false).await;
}

#[tokio::test]
async fn a_v5_subscriber_acknowledging_in_arrival_order_around_a_stored_pubrec_stays_connected() {
    acks_around_a_stored_pubrec_keep_the_connection(true).await;
}
