//! Connection storms: the per-address connect rate and the global cap on
//! connections are enforced with the CONNACK codes of each protocol level,
//! on every listener, and the memory of thousands of connections is given
//! back once they close.
//!
//! The 10,000-connection run is long: it runs when `MAPCAST_TEST_LONG=1`;
//! a 1,000-connection run always does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::helpers::{
    RECV, ServerProcess, V3Options, V5Options, metric, rss_kib, self_signed_cert, spawn_app_with,
    wait_for_metric,
};

const RATE_REFUSED: &str = "mapcast_connections_rejected_total{reason=\"connect_rate\"}";
const CAP_REFUSED: &str = "mapcast_connections_rejected_total{reason=\"max_connections\"}";
const CONNECTED: &str = "mapcast_clients_connected";

/// A loopback source address other than 127.0.0.1 (all of 127/8 is local).
fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A CONNECT for `id`: MQTT 5 or 3.1.1, clean, keep-alive 60 s.
fn connect_packet(id: &str, v5: bool) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT".to_vec();
    body.push(if v5 { 5 } else { 4 });
    body.extend([0x02, 0x00, 0x3c]);
    if v5 {
        body.push(0); // no properties
    }
    body.extend((id.len() as u16).to_be_bytes());
    body.extend(id.as_bytes());
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend(body);
    pkt
}

/// Connect from `source`, send a CONNECT, return the socket and the CONNACK
/// code (`None`: closed without a CONNACK).
async fn connect_from(
    source: IpAddr,
    broker: SocketAddr,
    id: &str,
    v5: bool,
) -> (TcpStream, Option<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(broker).await.expect("TCP connect");
    stream.set_nodelay(true).unwrap();
    stream.write_all(&connect_packet(id, v5)).await.unwrap();
    let mut head = [0u8; 2];
    let code = match tokio::time::timeout(RECV, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) if head[0] == 0x20 => {
            let mut body = vec![0u8; usize::from(head[1])];
            stream.read_exact(&mut body).await.expect("CONNACK body");
            Some(body[1])
        }
        Ok(_) => None,
        Err(_) => panic!("no CONNACK and no close within {RECV:?}"),
    };
    (stream, code)
}

/// True when the broker closes `stream` within `RECV`.
async fn closed_by_broker(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(RECV, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn a_burst_over_the_connect_rate_is_refused_with_0x9f_for_v5_and_0x03_for_v3() {
    let app = spawn_app_with(|s| {
        s.broker.limits.max_connect_rate_per_ip = 1;
        s.broker.limits.connect_burst_per_ip = 10;
    })
    .await;
    let source = loopback(11);

    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..30 {
        let v5 = n % 2 == 0;
        let (mut stream, code) = connect_from(source, app.mqtt_addr, &format!("s{n}"), v5).await;
        match code {
            Some(0) => accepted.push(stream),
            Some(code) => {
                assert_eq!(code, if v5 { 0x9F } else { 0x03 }, "refusal of attempt {n}");
                assert!(closed_by_broker(&mut stream).await, "attempt {n} left open");
                refused += 1;
            }
            None => panic!("attempt {n} closed without a CONNACK"),
        }
    }

    // The burst, plus at most what 1/s refilled meanwhile.
    assert!((10..=12).contains(&accepted.len()), "{} accepted", accepted.len());
    assert_eq!(refused, 30 - accepted.len());
    assert_eq!(metric(app.http_addr, RATE_REFUSED).await, refused as f64);
    // Another address has a bucket of its own.
    let (_other, code) = connect_from(loopback(12), app.mqtt_addr, "elsewhere", true).await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn connections_over_the_cap_get_0x97_and_a_closed_one_frees_its_slot() {
    let app = spawn_app_with(|s| {
        s.broker.limits.max_connections = 5;
        s.broker.limits.max_connect_rate_per_ip = 0;
    })
    .await;
    let mut held = Vec::new();
    for n in 0..5 {
        let (stream, code) = connect_from(loopback(1), app.mqtt_addr, &format!("h{n}"), true).await;
        assert_eq!(code, Some(0));
        held.push(stream);
    }

    let (mut v5, code) = connect_from(loopback(1), app.mqtt_addr, "over-v5", true).await;
    assert_eq!(code, Some(0x97), "v5: quota exceeded");
    assert!(closed_by_broker(&mut v5).await);
    let (_v3, code) = connect_from(loopback(2), app.mqtt_addr, "over-v3", false).await;
    assert_eq!(code, Some(0x03), "3.1.1: server unavailable");
    assert_eq!(metric(app.http_addr, CAP_REFUSED).await, 2.0);

    drop(held.pop());
    let deadline = Instant::now() + RECV;
    loop {
        let (_s, code) = connect_from(loopback(1), app.mqtt_addr, "after", true).await;
        if code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused ({code:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_cap_covers_websocket_and_tls_clients_too() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = self_signed_cert(certs.path()).await;
    let app = spawn_app_with(|s| {
        s.broker.limits.max_connections = 1;
        s.mqtt.ws_listen = Some("127.0.0.1:0".parse().unwrap());
        s.mqtt.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        s.mqtt.tls_cert = Some(cert);
        s.mqtt.tls_key = Some(key);
    })
    .await;
    let _only = V5Options::new("only", app.mqtt_addr).connect().await;
    let ws = app.ws_addr.unwrap();
    let tls = app.mqtts_addr.unwrap();

    let over_ws =
        V5Options::new_ws("ws", &format!("ws://{ws}/mqtt"), ws.port()).try_connect().await;
    let over_tls = V5Options::new_tls("tls", tls, &ca).try_connect().await;
    let over_ws_v3 = V3Options::new_ws("ws3", &format!("ws://{ws}/mqtt"), ws.port()).try_connect();

    assert_eq!(over_ws.err().and_then(|c| c.refused), Some(ConnectReturnCode::QuotaExceeded));
    assert_eq!(over_tls.err().and_then(|c| c.refused), Some(ConnectReturnCode::QuotaExceeded));
    assert!(over_ws_v3.await.is_err(), "a 3.1.1 client over WebSocket is refused too");
}

/// Open `count` idle 3.1.1 connections (each CONNACKed) from a few loopback
/// addresses, at most `concurrency` attempts at a time.
async fn open_idle(broker: SocketAddr, count: usize, concurrency: usize) -> Vec<TcpStream> {
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for n in 0..count {
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            // Spread over addresses so no single source needs 10,000 ports.
            let source = loopback(20 + (n % 4) as u8);
            let (stream, code) = connect_from(source, broker, &format!("storm-{n}"), false).await;
            assert_eq!(code, Some(0), "connection {n} refused");
            stream
        });
    }
    tasks.join_all().await
}

/// Close like a client dropping off the network: RST, no TIME_WAIT left.
fn reset(streams: Vec<TcpStream>) {
    for s in streams {
        #[allow(deprecated, reason = "zero linger resets without blocking the thread on close")]
        let _ = s.set_linger(Some(Duration::ZERO));
    }
}

async fn settled_rss_kib(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    rss_kib(pid)
}

/// Open `count` connections on the real binary, close them all, and check
/// its resident memory comes back near where it started.
async fn memory_returns_to_baseline_after(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = "[broker]\nmax_connections = 20000\nmax_connect_rate_per_ip = 0\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let pid = server.pid();
    // Warm the allocator and the worker threads with a small round first, so
    // the baseline is the idle broker rather than a cold start.
    reset(open_idle(server.mqtt_addr, 200, 100).await);
    wait_for_metric(server.http_addr, CONNECTED, Duration::from_secs(10), |v| v == 0.0).await;
    let baseline = settled_rss_kib(pid).await;

    let first = storm(&server, count, baseline).await;
    // The connections cost real memory (so the measure can see them: an
    // idle 3.1.1 connection is ~5 KiB, part of it taken from what the
    // warm-up round left), and at least half of it is given back once they
    // close.
    assert!(
        first.grown >= count as u64 * 2,
        "{count} connections grew RSS by only {} KiB",
        first.grown
    );
    assert!(
        first.kept <= first.grown / 2,
        "kept {} of {} KiB after all {count} connections closed",
        first.kept,
        first.grown
    );
    // What stays (buffer pools, table capacity) is reused by the next
    // storm, not added to: a second one ends where the first did.
    let second = storm(&server, count, baseline).await;
    assert!(
        second.kept <= first.kept + first.grown / 10,
        "kept {} KiB after a second storm of {count}, {} after the first",
        second.kept,
        first.kept
    );
    assert!(server.terminate(Duration::from_secs(10)).await.is_some());
}

/// RSS growth while `count` connections are open, and what stays of it
/// once they closed, in KiB over `baseline`.
struct Storm {
    grown: u64,
    kept: u64,
}

/// Open `count` idle connections, close them, and watch the memory come back.
async fn storm(server: &ServerProcess, count: usize, baseline: u64) -> Storm {
    let pid = server.pid();
    let started = Instant::now();
    let open = open_idle(server.mqtt_addr, count, 500).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = wait_for_metric(server.http_addr, CONNECTED, Duration::from_secs(30), |v| {
        v >= count as f64
    })
    .await;
    assert_eq!(connected, count as f64, "every connection is counted");
    let peak = settled_rss_kib(pid).await;

    let closing = Instant::now();
    reset(open);
    let left =
        wait_for_metric(server.http_addr, CONNECTED, Duration::from_secs(30), |v| v == 0.0).await;
    assert_eq!(left, 0.0, "connections still counted after closing them all");
    let close_secs = closing.elapsed().as_secs_f64();
    // The broker hands freed memory back every few seconds, not at once:
    // watch it come down for a while.
    let grown = peak.saturating_sub(baseline);
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut after = settled_rss_kib(pid).await;
    while after.saturating_sub(baseline) > grown / 8 && Instant::now() < deadline {
        after = after.min(settled_rss_kib(pid).await);
    }
    let returned_secs = closing.elapsed().as_secs_f64();
    let kept = after.saturating_sub(baseline);
    println!(
        "{count} connections: opened in {connect_secs:.1} s, closed in {close_secs:.1} s; \
         RSS baseline {baseline} KiB, open {peak} KiB (+{grown}), {returned_secs:.1} s after \
         closing {after} KiB (+{kept})"
    );
    Storm { grown, kept }
}

#[tokio::test]
async fn memory_returns_to_baseline_after_1000_connections_close() {
    memory_returns_to_baseline_after(1_000).await;
}

#[tokio::test]
async fn memory_returns_to_baseline_after_10000_connections_close() {
    if std::env::var_os("MAPCAST_TEST_LONG").is_none() {
        eprintln!("skipped: set MAPCAST_TEST_LONG=1 to open 10,000 connections");
        return;
    }
    memory_returns_to_baseline_after(10_000).await;
}
