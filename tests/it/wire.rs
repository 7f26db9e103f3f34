//! Bytes ntex-mqtt 8.2.1 mishandles on its own, answered as MQTT requires:
//! a PUBLISH whose header overruns its remaining length, and CONNECTs that
//! must be refused with a CONNACK code (unsupported levels, malformed v5
//! CONNECTs, U+0000 in the client id, will bits without a will).

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{RECV, RawConn, ServerProcess, TestApp, packet_type, spawn_app, text};

/// A fresh client still connects, subscribes, publishes and receives.
async fn assert_still_serves(app: &TestApp) {
    let mut fresh = app.v5_client("fresh-after-wire", true, None).await;
    fresh.subscribe("wire/check", QoS::AtLeastOnce).await;
    fresh.publish_qos1("wire/check", false, "still here").await;
    assert_eq!(text(&fresh.recv_publish().await.payload), "still here");
}

/// The codes of the CONNACKs and DISCONNECTs sent before the close, which
/// must come well before any keep-alive (30 s) would end the connection.
async fn closed_with(conn: &mut RawConn) -> Vec<(u8, u8)> {
    conn.expect_closed(RECV).await.iter().map(|f| (f.packet_type(), f.reason())).collect()
}

const CONNACK: u8 = packet_type::CONNACK;
const DISCONNECT: u8 = packet_type::DISCONNECT;

/// A CONNECT with protocol `name` and `level`, `flags`, keep-alive 30, the
/// client id, then `tail` (the fields the flags announce).
fn connect(name: &[u8], level: u8, flags: u8, client_id: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut body = (name.len() as u16).to_be_bytes().to_vec();
    body.extend(name);
    body.extend([level, flags, 0, 30]);
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id);
    body.extend(tail);
    assert!(body.len() < 128);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

// --- PUBLISH headers longer than the packet ---------------------------------

#[tokio::test]
async fn a_v5_publish_whose_topic_overruns_its_length_is_malformed_0x81() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "overrun-topic", true, None).await;

    // Remaining length 3; the topic claims 10 bytes.
    conn.send_bytes(&[0x30, 3, 0, 10, b'a']).await;

    assert_eq!(closed_with(&mut conn).await, [(DISCONNECT, 0x81)]);
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_v5_publish_whose_properties_overrun_its_length_is_malformed_0x81() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "overrun-props", true, None).await;

    // Topic "w/x", QoS 1 id 7, property length 100 in a 9-byte packet, then a
    // PINGREQ that must never be answered.
    conn.send_bytes(&[0x32, 9, 0, 3, b'w', b'/', b'x', 0, 7, 100, 0, 0xc0, 0]).await;

    assert_eq!(closed_with(&mut conn).await, [(DISCONNECT, 0x81)]);
    assert_still_serves(&app).await;
}

/// 3.1.1 closes on a malformed packet either way; what the old decoder did
/// differently is panic (overflow checks) or go silent (without): the real
/// binary, a debug build, must log no panic and close at once.
#[tokio::test]
async fn a_v3_publish_whose_header_overruns_its_length_closes_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;

    for (i, bad) in
        [&[0x30, 3, 0, 10, b'a'][..], &[0x32, 3, 0, 1, b'a'], &[0x30, 1, 0]].into_iter().enumerate()
    {
        let (mut conn, connack) =
            RawConn::connect_v3(server.mqtt_addr, &format!("overrun-v3-{i}"), true).await;
        assert_eq!(connack.reason(), 0);
        conn.send_bytes(bad).await;
        let frames = closed_with(&mut conn).await;
        assert!(frames.is_empty(), "{bad:?}: {frames:?}");
    }

    let (mut conn, connack) = RawConn::connect_v3(server.mqtt_addr, "after", true).await;
    assert_eq!(connack.reason(), 0);
    conn.publish_v3("wire/ok", 1, 1, b"fine").await;
    assert_eq!(conn.recv_type(packet_type::PUBACK).await.pkid(), 1);
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

// --- CONNECT -----------------------------------------------------------------

#[tokio::test]
async fn an_older_protocol_level_gets_connack_0x01_and_a_newer_one_0x84() {
    let app = spawn_app().await;
    let cases: [(&[u8], u8, &[u8]); 3] = [
        // MQTT 3.1, then "MQTT" at level 3: a 3.1.1 CONNACK, code 0x01 [MQTT-3.1.2-2].
        (b"MQIsdp", 3, &[0x20, 2, 0, 0x01]),
        (b"MQTT", 3, &[0x20, 2, 0, 0x01]),
        // Beyond 5: the v5 CONNACK 0x84 "unsupported protocol version".
        (b"MQTT", 6, &[0x20, 3, 0, 0x84, 0]),
    ];
    for (name, level, expected) in cases {
        let mut conn = app.raw().await;
        conn.send_bytes(&connect(name, level, 0x02, b"old", b"")).await;
        let frames = conn.expect_closed(RECV).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        let f = &frames[0];
        let mut wire = vec![f.byte1, f.body.len() as u8];
        wire.extend(&f.body[..]);
        assert_eq!(wire, expected, "level {level}");
    }
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_malformed_v5_connect_gets_connack_0x81() {
    let app = spawn_app().await;
    // Reserved flag set [MQTT-3.1.2-3].
    let reserved = connect(b"MQTT", 5, 0x03, b"r", b"");
    // The user name flag set, its length beyond the packet.
    let short = connect(b"MQTT", 5, 0x82, b"s", b"\x00\x09ab");
    for bad in [reserved, short] {
        let mut conn = app.raw().await;
        conn.send_bytes(&bad).await;
        assert_eq!(closed_with(&mut conn).await, [(CONNACK, 0x81)], "{bad:?}");
    }
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn a_client_id_with_u0000_is_refused_at_both_levels() {
    let app = spawn_app().await;

    let mut v5 = app.raw().await;
    v5.send_bytes(&connect(b"MQTT", 5, 0x02, b"car\0one", b"")).await;
    // A UTF-8 string with U+0000 is a malformed packet [MQTT-1.5.4-2].
    assert_eq!(closed_with(&mut v5).await, [(CONNACK, 0x81)]);

    let mut v3 = app.raw().await;
    v3.send_bytes(&connect(b"MQTT", 4, 0x02, b"car\0one", b"")).await;
    // 3.1.1 closes [MQTT-1.5.3-2], after telling the client its id is rejected.
    assert_eq!(closed_with(&mut v3).await, [(CONNACK, 0x02)]);

    // The same ids without U+0000 connect.
    let (_ok, connack) = RawConn::connect_v5(app.mqtt_addr, "carone", true, None).await;
    assert_eq!(connack.reason(), 0);
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn will_qos_or_retain_without_a_will_is_refused() {
    let app = spawn_app().await;
    // Will QoS 1, Will QoS 2, Will Retain: each without the Will Flag.
    for bits in [0x08, 0x10, 0x20] {
        let mut v5 = app.raw().await;
        v5.send_bytes(&connect(b"MQTT", 5, 0x02 | bits, b"nowill5", b"")).await;
        assert_eq!(closed_with(&mut v5).await, [(CONNACK, 0x81)], "v5 {bits:#x}");

        let mut v3 = app.raw().await;
        v3.send_bytes(&connect(b"MQTT", 4, 0x02 | bits, b"nowill3", b"")).await;
        // [MQTT-3.1.2-11]/[MQTT-3.1.2-13]: a protocol violation, 3.1.1 closes.
        let frames = closed_with(&mut v3).await;
        assert!(frames.is_empty(), "v3 {bits:#x}: {frames:?}");
    }
    // With the Will Flag the same bits are a valid will.
    let mut ok = app.raw().await;
    ok.send_bytes(&connect(b"MQTT", 4, 0x02 | 0x04 | 0x08 | 0x20, b"will3", b"\x00\x01w\x00\x01m"))
        .await;
    let connack = ok.recv_type(CONNACK).await;
    assert_eq!(connack.reason(), 0);
    assert!(!ok.closed_within(Duration::from_millis(300)).await);
    assert_still_serves(&app).await;
}

#[tokio::test]
async fn subscription_options_with_reserved_bits_are_malformed() {
    let app = spawn_app().await;
    // v5: bits 6 and 7 of the options are reserved [MQTT-3.8.3-5].
    let (mut v5, _) = RawConn::connect_v5(app.mqtt_addr, "reserved-v5", true, None).await;
    v5.send_frame(0x82, b"\x00\x07\x00\x00\x03a/b\xc0").await;
    assert_eq!(closed_with(&mut v5).await, [(DISCONNECT, 0x81)]);
    // 3.1.1: everything but the QoS is reserved [MQTT-3-8.3-4].
    let (mut v3, _) = RawConn::connect_v3(app.mqtt_addr, "reserved-v3", true).await;
    v3.send_frame(0x82, b"\x00\x07\x00\x03a/b\xc1").await;
    assert_eq!(closed_with(&mut v3).await, []);
    assert_still_serves(&app).await;
}
