//! Behind a load balancer: with the PROXY protocol on, the MQTT and HTTP
//! listeners take the client address from the header a trusted balancer
//! sends (v1 text, v2 binary), so per-address limits count the client, not
//! the balancer; a connection from elsewhere, or without a valid header in
//! time, is closed and counted. Then the same through a real HAProxy with
//! `send-proxy-v2`, and the shipped `deploy/haproxy.cfg` passes HAProxy's
//! own check.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{
    RECV, RawConn, RawHttp, TestApp, V5Options, metric, packet_type, spawn_app_with,
};

/// `PROXY TCP4 client 10.0.0.1 port 1883\r\n`.
fn v1(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 10.0.0.1 {port} 1883\r\n").into_bytes()
}

/// A v2 PROXY header for an IPv4 client, with a TLV the server must skip.
fn v2(client: &str, port: u16) -> Vec<u8> {
    let IpAddr::V4(ip) = client.parse().unwrap() else { panic!("IPv4 only") };
    let mut body = ip.octets().to_vec();
    body.extend([10, 0, 0, 1]);
    body.extend(port.to_be_bytes());
    body.extend(1883u16.to_be_bytes());
    body.extend([0x05, 0x00, 0x02, b'i', b'd']);
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend([0x21, 0x11]);
    out.extend((body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

/// A v2 LOCAL header: the balancer's own connection (its health checks).
fn v2_local() -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend([0x20, 0x00, 0x00, 0x00]);
    out
}

async fn proxied_mqtt_app(trusted: &str, burst: u32) -> TestApp {
    let trusted = trusted.parse().unwrap();
    spawn_app_with(|s| {
        s.mqtt.proxy_protocol = true;
        s.mqtt.proxy_trusted = vec![trusted];
        s.broker.limits.connect_burst_per_ip = burst;
        s.broker.limits.max_connect_rate_per_ip = 1;
    })
    .await
}

/// The CONNACK reason code of an MQTT 5 CONNECT sent after `header`.
async fn connack_after(addr: SocketAddr, header: &[u8], client_id: &str) -> u8 {
    let mut conn = RawConn::connect(addr).await;
    conn.send_bytes(header).await;
    conn.send_v5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    conn.recv_type(packet_type::CONNACK).await.reason()
}

#[tokio::test]
async fn mqtt_connect_bursts_count_the_client_named_by_a_v1_or_v2_header() {
    // Two connects per address in a burst; every test connection comes
    // from 127.0.0.1, the "balancer".
    let app = proxied_mqtt_app("127.0.0.0/8", 2).await;

    assert_eq!(connack_after(app.mqtt_addr, &v1("192.0.2.1", 40001), "a1").await, 0x00);
    assert_eq!(connack_after(app.mqtt_addr, &v2("192.0.2.1", 40002), "a2").await, 0x00);
    let third = connack_after(app.mqtt_addr, &v1("192.0.2.1", 40003), "a3").await;
    assert_eq!(third, 0x9F, "192.0.2.1's burst is spent: connect rate exceeded");

    // Another client behind the same balancer has its own burst.
    assert_eq!(connack_after(app.mqtt_addr, &v2("192.0.2.2", 40004), "b1").await, 0x00);
    // A LOCAL header speaks for nobody: the balancer's own address counts.
    assert_eq!(connack_after(app.mqtt_addr, &v2_local(), "hc").await, 0x00);
}

#[tokio::test]
async fn mqtt_connections_without_a_valid_header_in_time_are_closed_and_counted() {
    let app = proxied_mqtt_app("127.0.0.0/8", 100).await;
    let closed_without_a_frame = |mut conn: RawConn, wait: Duration| async move {
        let frames = conn.expect_closed(wait).await;
        assert!(frames.is_empty(), "the server answered {frames:?}");
    };

    // No header at all: a client connecting straight to the node.
    let mut plain = RawConn::connect(app.mqtt_addr).await;
    plain.send_bytes(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x1e\x00\x01a").await;
    closed_without_a_frame(plain, RECV).await;
    // A malformed header.
    let mut bad = RawConn::connect(app.mqtt_addr).await;
    bad.send_bytes(b"PROXY TCP4 192.0.2.1 10.0.0.1 99999 1883\r\n").await;
    closed_without_a_frame(bad, RECV).await;
    // Half a header, then nothing: closed at the 3 s deadline.
    let mut slow = RawConn::connect(app.mqtt_addr).await;
    slow.send_bytes(b"PROXY TCP4 192.0.2.1 ").await;
    let started = std::time::Instant::now();
    closed_without_a_frame(slow, Duration::from_secs(6)).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "closed before the deadline");

    let refused =
        |reason: &str| format!("mapcast_proxy_protocol_refused_total{{reason=\"{reason}\"}}");
    // The counters are process-wide, shared with the other tests' apps.
    assert!(metric(app.http_addr, &refused("malformed")).await >= 2.0);
    assert!(metric(app.http_addr, &refused("timeout")).await >= 1.0);
    // The listener still serves a well-behaved balancer.
    assert_eq!(connack_after(app.mqtt_addr, &v1("192.0.2.1", 40001), "ok").await, 0x00);
}

#[tokio::test]
async fn a_header_from_an_untrusted_peer_is_never_believed() {
    // Only 10.0.0.0/8 may speak for clients; the test connects from 127.0.0.1.
    let app = proxied_mqtt_app("10.0.0.0/8", 100).await;
    let mut conn = RawConn::connect(app.mqtt_addr).await;
    conn.send_bytes(&v2("192.0.2.1", 40001)).await;
    conn.send_bytes(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x1e\x00\x01a").await;
    let frames = conn.expect_closed(RECV).await;
    assert!(frames.is_empty(), "the server answered {frames:?}");
    let untrusted = "mapcast_proxy_protocol_refused_total{reason=\"untrusted\"}";
    assert!(metric(app.http_addr, untrusted).await >= 1.0);
}

async fn proxied_http_app(burst: u32) -> TestApp {
    spawn_app_with(|s| {
        s.http.proxy_protocol = true;
        s.http.proxy_trusted = vec!["127.0.0.0/8".parse().unwrap()];
        // Sign-ins per address: a burst, then one a minute.
        s.auth.hashing.rate_per_address = 1.0 / 60.0;
        s.auth.hashing.burst_per_address = burst;
    })
    .await
}

/// One HTTP/1.1 request after `header`; the status of its answer.
async fn status_after(
    addr: SocketAddr,
    header: &[u8],
    method: &str,
    path: &str,
    body: &str,
) -> Option<u16> {
    let mut conn = RawHttp::connect(addr).await;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: mapcast\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.send(&[header, request.as_bytes()].concat()).await;
    conn.read_until_closed(RECV).await.status()
}

async fn sign_in_after(addr: SocketAddr, header: &[u8]) -> Option<u16> {
    let body = json!({"username": "nobody", "password": "wrong horse battery"}).to_string();
    status_after(addr, header, "POST", "/api/v1/sessions", &body).await
}

#[tokio::test]
async fn http_sign_in_throttles_count_the_client_named_by_a_v1_or_v2_header() {
    let app = proxied_http_app(2).await;

    assert_eq!(sign_in_after(app.http_addr, &v1("192.0.2.1", 40001)).await, Some(401));
    assert_eq!(sign_in_after(app.http_addr, &v2("192.0.2.1", 40002)).await, Some(401));
    assert_eq!(
        sign_in_after(app.http_addr, &v1("192.0.2.1", 40003)).await,
        Some(429),
        "192.0.2.1 has spent its burst"
    );
    assert_eq!(sign_in_after(app.http_addr, &v2("192.0.2.2", 40004)).await, Some(401));
    // A balancer's health check (LOCAL) is answered as the balancer.
    assert_eq!(status_after(app.http_addr, &v2_local(), "GET", "/readyz", "").await, Some(200));
}

#[tokio::test]
async fn http_connections_without_a_valid_header_in_time_are_closed_and_counted() {
    let app = proxied_http_app(100).await;
    let refused_at_once = |bytes: &'static [u8], wait: Duration| async move {
        let mut conn = RawHttp::connect(app.http_addr).await;
        conn.send(bytes).await;
        let answer = conn.read_until_closed(wait).await;
        assert!(answer.closed && answer.text.is_empty(), "{answer:?}");
    };
    refused_at_once(b"GET /readyz HTTP/1.1\r\nHost: mapcast\r\n\r\n", RECV).await;
    refused_at_once(b"PROXY TCP5 192.0.2.1 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n", RECV).await;
    let started = std::time::Instant::now();
    refused_at_once(b"\r\n\r\n\0\r\nQUIT\n\x21", Duration::from_secs(6)).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "closed before the deadline");

    let refused = |body: &str, reason: &str| -> f64 {
        let name = format!("mapcast_proxy_protocol_refused_total{{reason=\"{reason}\"}} ");
        let line = body.lines().find_map(|l| l.strip_prefix(&name)).expect("the metric");
        line.trim().parse().unwrap()
    };
    let mut conn = RawHttp::connect(app.http_addr).await;
    conn.send(
        &[
            v1("192.0.2.9", 1).as_slice(),
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        ]
        .concat(),
    )
    .await;
    let answer = conn.read_until_closed(RECV).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    // The counters are process-wide, shared with the other tests' apps.
    assert!(refused(answer.body(), "malformed") >= 2.0, "{}", answer.body());
    assert!(refused(answer.body(), "timeout") >= 1.0, "{}", answer.body());
}

/// The `haproxy` binary, or `None` (the test is then skipped, and CI fails
/// on the missing marker).
pub(crate) fn haproxy() -> Option<&'static str> {
    let found = std::process::Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("haproxy not installed: skipping (CI installs it and checks the marker)");
    }
    found.then_some("haproxy")
}

pub(crate) async fn mark(name: &str) {
    if let Ok(dir) = std::env::var("MAPCAST_TEST_MARKER_DIR") {
        tokio::fs::create_dir_all(&dir).await.expect("create MAPCAST_TEST_MARKER_DIR");
        tokio::fs::write(Path::new(&dir).join(name), b"ok\n").await.expect("write the marker");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP connection to `to` from the loopback address `from` (any 127.x
/// address is this machine), so HAProxy sees distinct clients.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    socket.connect(to).await
}

/// An MQTT 3.1.1 CONNECT from `from` through `to`: the CONNACK return code,
/// or `None` if the connection closed first.
async fn connack_v3_from(from: &str, to: SocketAddr) -> Option<u8> {
    let mut s = connect_from(from, to).await.ok()?;
    s.write_all(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x1e\x00\x01a").await.ok()?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(RECV, s.read_exact(&mut ack)).await.ok()?.ok()?;
    (ack[0] == 0x20).then_some(ack[3])
}

#[tokio::test]
async fn through_haproxy_with_send_proxy_v2_the_node_sees_each_client() {
    let Some(haproxy) = haproxy() else { return };
    let app = spawn_app_with(|s| {
        for (on, trusted) in [
            (&mut s.mqtt.proxy_protocol, &mut s.mqtt.proxy_trusted),
            (&mut s.http.proxy_protocol, &mut s.http.proxy_trusted),
        ] {
            *on = true;
            *trusted = vec!["127.0.0.1".parse().unwrap()];
        }
        s.broker.limits.connect_burst_per_ip = 1;
        s.broker.limits.max_connect_rate_per_ip = 1;
    })
    .await;
    let (mqtt_port, http_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global\n  log stderr local0 warning\n\
         defaults\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend mqtt\n  mode tcp\n  bind 127.0.0.1:{mqtt_port}\n  default_backend mqtt_nodes\n\
         backend mqtt_nodes\n  mode tcp\n  balance leastconn\n\
         \x20 option httpchk GET /readyz\n  http-check expect status 200\n\
         \x20 server n1 {mqtt} send-proxy-v2 check port {api_port} check-send-proxy inter 300ms fall 2\n\
         frontend api\n  mode http\n  bind 127.0.0.1:{http_port}\n  default_backend api_nodes\n\
         backend api_nodes\n  mode http\n  option httpchk GET /readyz\n\
         \x20 server n1 {api} send-proxy-v2 check check-send-proxy inter 300ms fall 2\n",
        mqtt = app.mqtt_addr,
        api = app.http_addr,
        api_port = app.http_addr.port(),
    );
    let cfg = dir.path().join("haproxy.cfg");
    tokio::fs::write(&cfg, config).await.unwrap();
    let mut proxy = tokio::process::Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy");
    let mqtt = SocketAddr::from(([127, 0, 0, 1], mqtt_port));
    let api = SocketAddr::from(([127, 0, 0, 1], http_port));

    // Wait until HAProxy listens and its health check (with its own PROXY
    // header) finds the node ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(code) = connack_v3_from("127.0.0.5", mqtt).await {
            break code;
        }
        assert!(tokio::time::Instant::now() < deadline, "HAProxy never passed a connection");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first, 0x00, "127.0.0.5's first connect");
    // One connect per address in a burst: HAProxy's own address would be
    // spent after the first; each client's is its own.
    assert_ne!(connack_v3_from("127.0.0.5", mqtt).await, Some(0x00), "127.0.0.5's burst is spent");
    assert_eq!(connack_v3_from("127.0.0.6", mqtt).await, Some(0x00), "127.0.0.6 is another client");

    // Enough health-check rounds to have marked the node down if its checks
    // (with their own PROXY header) were refused: HAProxy would then close
    // MQTT connections and answer API requests 503 itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(connack_v3_from("127.0.0.8", mqtt).await, Some(0x00), "the node is still up");

    // The API in HTTP mode.
    let get = |path: &'static str| async move {
        let mut conn = connect_from("127.0.0.7", api).await.expect("connect to HAProxy");
        let request = format!("GET {path} HTTP/1.1\r\nHost: mapcast\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(RECV, conn.read_to_string(&mut answer)).await.unwrap().unwrap();
        answer
    };
    let ready = get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let _ = proxy.kill().await;
    mark("haproxy-ran").await;
}

/// `haproxy -c` on `deploy/{name}`, which must pass; the file's text.
async fn haproxy_checks(haproxy: &str, name: &str) -> String {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(name);
    let out = tokio::process::Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .await
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c -f deploy/{name}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::fs::read_to_string(&cfg).await.unwrap()
}

#[tokio::test]
async fn the_shipped_haproxy_config_passes_haproxys_check() {
    let Some(haproxy) = haproxy() else { return };
    let text = haproxy_checks(haproxy, "haproxy.cfg").await;
    for needed in ["balance leastconn", "send-proxy-v2", "uri /readyz", "127.0.0.2", "127.0.0.4"] {
        assert!(text.contains(needed), "deploy/haproxy.cfg lacks {needed:?}");
    }
    mark("haproxy-config-ran").await;
}

#[tokio::test]
async fn the_compose_clusters_haproxy_config_passes_haproxys_check() {
    let Some(haproxy) = haproxy() else { return };
    // The instances' names resolve inside the compose network only: offline
    // they are warned about, not errors.
    haproxy_checks(haproxy, "haproxy.compose.cfg").await;
    mark("haproxy-compose-config-ran").await;
}

/// A stand-in balancer: every connection to the returned address is
/// forwarded to `to`, opened with `header`.
async fn forwarder(header: Vec<u8>, to: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let Ok(mut node) = TcpStream::connect(to).await else { return };
                if node.write_all(&header).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_tls_websocket_and_https_listeners_take_the_client_from_the_header_too() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = crate::helpers::self_signed_cert(certs.path()).await;
    let app = spawn_app_with(|s| {
        s.mqtt.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        s.mqtt.ws_listen = Some("127.0.0.1:0".parse().unwrap());
        (s.mqtt.tls_cert, s.mqtt.tls_key) = (Some(cert.clone()), Some(key.clone()));
        (s.http.tls_cert, s.http.tls_key) = (Some(cert), Some(key));
        for (on, trusted) in [
            (&mut s.mqtt.proxy_protocol, &mut s.mqtt.proxy_trusted),
            (&mut s.http.proxy_protocol, &mut s.http.proxy_trusted),
        ] {
            *on = true;
            *trusted = vec!["127.0.0.0/8".parse().unwrap()];
        }
        s.broker.limits.connect_burst_per_ip = 1;
        s.broker.limits.max_connect_rate_per_ip = 1;
        s.auth.hashing.rate_per_address = 1.0 / 60.0;
        s.auth.hashing.burst_per_address = 1;
    })
    .await;
    let (tls, ws) = (app.mqtts_addr.unwrap(), app.ws_addr.unwrap());

    // MQTT over TLS: the header precedes the TLS handshake.
    let a = forwarder(v2("192.0.2.1", 1), tls).await;
    let first = V5Options::new_tls("tls-1", a, &ca).try_connect().await;
    assert!(first.is_ok(), "{:?}", first.err());
    let again = V5Options::new_tls("tls-2", a, &ca).try_connect().await;
    assert!(again.is_err(), "192.0.2.1's burst is spent");
    let b = forwarder(v1("192.0.2.2", 1), tls).await;
    assert!(V5Options::new_tls("tls-3", b, &ca).try_connect().await.is_ok(), "192.0.2.2");

    // MQTT over WebSocket: the header precedes the HTTP upgrade.
    let c = forwarder(v1("192.0.2.3", 1), ws).await;
    let url = |addr: SocketAddr| format!("ws://{addr}/mqtt");
    assert!(V5Options::new_ws("ws-1", &url(c), c.port()).try_connect().await.is_ok());
    assert!(V5Options::new_ws("ws-2", &url(c), c.port()).try_connect().await.is_err());
    let d = forwarder(v2("192.0.2.4", 1), ws).await;
    assert!(V5Options::new_ws("ws-3", &url(d), d.port()).try_connect().await.is_ok());

    // The API over HTTPS: sign-ins throttled per client.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&ca).unwrap())
        .build()
        .unwrap();
    let sign_in = |addr: SocketAddr| {
        https
            .post(format!("https://127.0.0.1:{}/api/v1/sessions", addr.port()))
            .json(&json!({"username": "nobody", "password": "wrong horse battery"}))
            .timeout(RECV)
            .send()
    };
    let e = forwarder(v2("192.0.2.5", 1), app.http_addr).await;
    assert_eq!(sign_in(e).await.unwrap().status(), 401);
    assert_eq!(sign_in(e).await.unwrap().status(), 429, "192.0.2.5's burst is spent");
    let f = forwarder(v1("192.0.2.6", 1), app.http_addr).await;
    assert_eq!(sign_in(f).await.unwrap().status(), 401);
}

/// The first log line (JSON) whose `message` is `message`, waiting for it.
async fn log_line(server: &crate::helpers::ServerProcess, message: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + RECV;
    loop {
        let logs = server.logs();
        let found = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == message);
        if let Some(line) = found {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "no {message:?} line in:\n{logs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_api_request_line_names_its_client_from_the_header_or_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[http]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]\n";
    let proxied = crate::helpers::ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let header = v1("192.0.2.31", 4711);
    let status = status_after(proxied.http_addr, &header, "GET", "/nowhere", "").await;
    assert_eq!(status, Some(404));
    let line = log_line(&proxied, "request completed").await;
    assert_eq!(line["client.address"], "192.0.2.31:4711", "{line}");
    assert_eq!(line["url.path"], "/nowhere", "{line}");

    let dir = tempfile::tempdir().unwrap();
    let direct = crate::helpers::ServerProcess::start(dir.path(), &[]).await;
    let mut conn = TcpStream::connect(direct.http_addr).await.unwrap();
    let from = conn.local_addr().unwrap();
    let request = "GET /nowhere HTTP/1.1\r\nHost: mapcast\r\nConnection: close\r\n\r\n";
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&answer));
    let line = log_line(&direct, "request completed").await;
    assert_eq!(line["client.address"], from.to_string(), "{line}");
}

#[tokio::test]
async fn logs_name_the_client_behind_the_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[mqtt]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]\n\
                  [http]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]\n\
                  [auth.lockout]\nmax_failures_per_identity = 1\nduration_secs = 60\n";
    let server = crate::helpers::ServerProcess::start_with_config(dir.path(), config, &[]).await;

    // An MQTT session's connection line.
    assert_eq!(connack_after(server.mqtt_addr, &v2("192.0.2.21", 1), "logged").await, 0x00);
    let connected = log_line(&server, "client connected").await;
    assert_eq!(connected["client.address"], "192.0.2.21:1", "{connected}");

    // A REST sign-in lockout's warning.
    assert_eq!(sign_in_after(server.http_addr, &v1("192.0.2.22", 1)).await, Some(401));
    let locked = log_line(&server, "sign-in locked out after repeated failures").await;
    assert_eq!(locked["client.address"], "192.0.2.22", "{locked}");

    // A refused connection names the peer that sent it, never its header.
    let mut bare = RawConn::connect(server.mqtt_addr).await;
    bare.send_bytes(b"PROXY TCP4 192.0.2.23 10.0.0.1 1 2\r").await;
    bare.send_bytes(b"\x10").await;
    assert!(bare.expect_closed(RECV).await.is_empty());
    let refused = log_line(&server, "PROXY protocol: connection closed, malformed header").await;
    assert_eq!(refused["log.level"], "warn", "{refused}");
    assert!(refused["client.address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")));
}

#[tokio::test]
async fn an_api_header_from_an_untrusted_peer_is_never_believed() {
    // Only 10.0.0.0/8 may speak for clients; the test connects from 127.0.0.1.
    let app = spawn_app_with(|s| {
        s.http.proxy_protocol = true;
        s.http.proxy_trusted = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut conn = RawHttp::connect(app.http_addr).await;
    conn.send(
        &[v2("192.0.2.1", 1).as_slice(), b"GET /readyz HTTP/1.1\r\nHost: m\r\n\r\n"].concat(),
    )
    .await;
    let answer = conn.read_until_closed(RECV).await;
    assert!(answer.closed && answer.text.is_empty(), "{answer:?}");
}
