//! MQTT over WebSocket (`/mqtt`, subprotocol `mqtt`), for browsers and phones.

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{TestApp, V3Options, V5Options, spawn_app_with, text};

async fn app_with_websocket() -> (TestApp, String, u16) {
    let app = spawn_app_with(|s| s.mqtt.ws_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = app.ws_addr.expect("the WebSocket listener reports its address");
    let url = format!("ws://{addr}/mqtt");
    (app, url, addr.port())
}

#[tokio::test]
async fn a_v5_client_over_websocket_exchanges_messages_with_a_tcp_client() {
    let (app, url, port) = app_with_websocket().await;
    let mut ws = V5Options::new_ws("ws-phone", &url, port).connect().await;
    let mut tcp = app.v5_client("tcp-car", true, None).await;
    ws.subscribe("to/phone", QoS::AtLeastOnce).await;
    tcp.subscribe("to/car", QoS::AtLeastOnce).await;

    tcp.publish_qos1("to/phone", false, "hello phone").await;
    ws.publish_qos1("to/car", false, "hello car").await;

    assert_eq!(text(&ws.recv_publish().await.payload), "hello phone");
    assert_eq!(text(&tcp.recv_publish().await.payload), "hello car");
}

#[tokio::test]
async fn a_v3_client_over_websocket_can_publish_and_subscribe() {
    let (_app, url, port) = app_with_websocket().await;
    let mut ws = V3Options::new_ws("ws-v3", &url, port).connect().await;

    ws.subscribe("echo", rumqttc::QoS::AtLeastOnce).await;
    ws.publish_qos1("echo", false, "over ws").await;

    assert_eq!(text(&ws.recv_publish().await.payload), "over ws");
}

#[tokio::test]
async fn the_websocket_handshake_answers_with_the_mqtt_subprotocol() {
    let (_app, _url, port) = app_with_websocket().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();

    stream
        .write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n =
        tokio::time::timeout(crate::helpers::RECV, stream.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();

    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: mqtt"), "{head}");
}
