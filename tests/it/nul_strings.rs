//! U+0000 in a topic name or filter makes the packet malformed
//! [MQTT-1.5.4-2]: the connection is closed (v5 with DISCONNECT 0x81
//! "malformed packet"), not answered with a refusal while it stays open.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{RawConn, ServerProcess, packet_type};

const MALFORMED: u8 = 0x81;

/// A SUBSCRIBE (v5 when `v5`) of one filter at QoS 0, bytes as given.
fn subscribe_body(filter: &[u8], v5: bool) -> Vec<u8> {
    let mut body = vec![0, 7];
    if v5 {
        body.push(0); // no properties
    }
    body.extend((filter.len() as u16).to_be_bytes());
    body.extend(filter);
    body.push(0);
    body
}

/// Expect the broker to close `conn`, v5 with DISCONNECT 0x81 first.
async fn expect_malformed(conn: &mut RawConn, v5: bool) {
    let frames = conn.expect_closed(Duration::from_secs(3)).await;
    if v5 {
        let disconnect = frames.iter().find(|f| f.packet_type() == packet_type::DISCONNECT);
        let disconnect = disconnect.unwrap_or_else(|| panic!("no DISCONNECT in {frames:?}"));
        assert_eq!(disconnect.reason(), MALFORMED, "{frames:?}");
    }
    assert!(
        frames
            .iter()
            .all(|f| f.packet_type() != packet_type::SUBACK
                && f.packet_type() != packet_type::PUBACK),
        "answered instead of closed: {frames:?}"
    );
}

#[tokio::test]
async fn a_topic_filter_or_name_with_u0000_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let addr = server.mqtt_addr;

    for v5 in [true, false] {
        let connect = async |id: &str| {
            let (conn, connack) = if v5 {
                RawConn::connect_v5(addr, id, true, None).await
            } else {
                RawConn::connect_v3(addr, id, true).await
            };
            assert_eq!(connack.reason(), 0);
            conn
        };

        let mut sub = connect("nul-sub").await;
        sub.send_frame(0x82, &subscribe_body(b"a/\0b", v5)).await;
        expect_malformed(&mut sub, v5).await;

        let mut unsub = connect("nul-unsub").await;
        let mut body = vec![0, 8];
        if v5 {
            body.push(0);
        }
        body.extend(b"\x00\x03a\x00b");
        unsub.send_frame(0xA2, &body).await;
        expect_malformed(&mut unsub, v5).await;

        let mut publisher = connect("nul-pub").await;
        if v5 {
            publisher.publish_v5("a/\0b", QoS::AtLeastOnce, 1, false, false, b"x", None).await;
        } else {
            publisher.publish_v3("a/\0b", 1, 1, b"x").await;
        }
        expect_malformed(&mut publisher, v5).await;
    }

    // The server is up and counts them.
    let (mut ok, connack) = RawConn::connect_v5(addr, "after", true, None).await;
    assert_eq!(connack.reason(), 0);
    assert_eq!(ok.subscribe_v5(1, "a/b", QoS::AtMostOnce).await.packet_type(), packet_type::SUBACK);
}
