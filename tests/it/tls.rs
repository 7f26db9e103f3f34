//! MQTT over TLS (rustls): the TLS listener with a certificate from the config.

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{
    RECV, TestApp, V3Options, V5Options, packet_type, self_signed_cert, spawn_app_with, text,
};

/// An app with a TLS listener; returns the CA (DER) clients must trust.
async fn app_with_tls() -> (TestApp, Vec<u8>, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = self_signed_cert(certs.path()).await;
    let app = spawn_app_with(|s| {
        s.mqtt.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        s.mqtt.tls_cert = Some(cert);
        s.mqtt.tls_key = Some(key);
    })
    .await;
    (app, ca, certs)
}

#[tokio::test]
async fn a_v5_client_over_tls_exchanges_messages_with_a_tcp_client() {
    let (app, ca, _certs) = app_with_tls().await;
    let tls_addr = app.mqtts_addr.expect("the TLS listener reports its address");
    let mut secure = V5Options::new_tls("secure-car", tls_addr, &ca).connect().await;
    let mut plain = app.v5_client("plain-phone", true, None).await;
    secure.subscribe("to/car", QoS::AtLeastOnce).await;
    plain.subscribe("to/phone", QoS::AtLeastOnce).await;

    plain.publish_qos1("to/car", false, "over tcp").await;
    secure.publish_qos1("to/phone", false, "over tls").await;

    assert_eq!(text(&secure.recv_publish().await.payload), "over tcp");
    assert_eq!(text(&plain.recv_publish().await.payload), "over tls");
}

#[tokio::test]
async fn a_v3_client_over_tls_can_publish_and_subscribe() {
    let (app, ca, _certs) = app_with_tls().await;
    let mut secure = V3Options::new_tls("secure-v3", app.mqtts_addr.unwrap(), &ca).connect().await;

    secure.subscribe("echo", rumqttc::QoS::AtLeastOnce).await;
    secure.publish_qos1("echo", false, "encrypted").await;

    assert_eq!(text(&secure.recv_publish().await.payload), "encrypted");
}

#[tokio::test]
async fn plain_mqtt_on_the_tls_port_gets_no_connack() {
    let (app, _ca, _certs) = app_with_tls().await;
    let (mut conn, connack) = {
        let mut conn = crate::helpers::RawConn::connect(app.mqtts_addr.unwrap()).await;
        // A v3 CONNECT in clear text where a TLS ClientHello is expected.
        conn.send_bytes(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 1, b'p'])
            .await;
        let connack = conn.try_recv(RECV).await;
        (conn, connack)
    };

    let is_connack = connack.as_ref().is_ok_and(|f| f.packet_type() == packet_type::CONNACK);
    assert!(!is_connack, "no MQTT answer in clear text: {connack:?}");
    assert!(conn.closed_within(RECV).await);
}

/// The REST API over HTTPS with the certificate from the config: a client
/// that trusts the CA gets answers (including a sign-in that carries a
/// password); plain HTTP on that port gets none.
#[tokio::test]
async fn the_api_speaks_https_when_given_a_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = self_signed_cert(certs.path()).await;
    let app = spawn_app_with(|s| {
        s.http.tls_cert = Some(cert);
        s.http.tls_key = Some(key);
    })
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&ca).unwrap())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", app.http_addr.port());

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let signin = client
        .post(format!("{base}/api/v1/sessions"))
        .json(&serde_json::json!({"username": "nobody", "password": "not-the-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signin.status(), 401, "answered over TLS");

    // Plain HTTP on the TLS port: no HTTP answer at all, only one fatal
    // TLS alert record (TLS 1.2 record version, 2 bytes: level fatal and
    // the reason), then the connection is closed.
    let answer = plain_http_answer(app.http_addr).await;
    assert!(
        answer.len() == 7 && answer[..6] == [TLS_ALERT, 3, 3, 0, 2, FATAL],
        "plain HTTP got something other than a fatal TLS alert: {answer:02x?} {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// The record type of a TLS alert (RFC 8446 §5.1).
const TLS_ALERT: u8 = 21;
/// The alert level that ends the connection.
const FATAL: u8 = 2;

/// Everything a TLS port sends back to a plain HTTP request before it closes
/// the connection (which it must do within a few seconds).
async fn plain_http_answer(addr: std::net::SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_to_end(&mut answer))
            .await
            .expect("the TLS port must close a plain HTTP connection");
    // A reset after the alert counts as closed.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    println!("plain HTTP on the TLS port got {} bytes: {answer:02x?}", answer.len());
    answer
}
