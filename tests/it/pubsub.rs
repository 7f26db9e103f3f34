//! Publish/subscribe: QoS 0/1/2 in both directions for v3 and v5, wildcards,
//! `$`-topics, and publishes the broker must refuse.

use std::time::Duration;

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, Subscribe, SubscribeReasonCode};

use crate::helpers::{QUIET, RECV, RawConn, RawEnd, packet_type, spawn_app, spawn_app_with, text};

fn v3_qos(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

const ALL_QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

#[tokio::test]
async fn v3_messages_flow_at_qos_0_1_and_2_from_publisher_to_subscriber() {
    let app = spawn_app().await;
    let mut sub = app.v3_client("v3-sub", true).await;
    let mut publisher = app.v3_client("v3-pub", true).await;

    for qos in ALL_QOS {
        let topic = format!("v3/qos{}", qos as u8);
        sub.subscribe(&topic, v3_qos(qos)).await;

        match qos {
            QoS::AtMostOnce => publisher.publish(&topic, v3_qos(qos), false, "zero").await,
            QoS::AtLeastOnce => {
                publisher.publish_qos1(&topic, false, "one").await;
            }
            QoS::ExactlyOnce => publisher.publish_qos2(&topic, false, "two").await,
        }

        let got = sub.recv_publish().await;
        assert_eq!(got.topic, topic);
        assert_eq!(got.qos, v3_qos(qos), "delivered at the subscription's QoS");
        assert!(!got.retain);
    }
    sub.expect_quiet().await;
}

#[tokio::test]
async fn v5_messages_flow_at_qos_0_1_and_2_from_publisher_to_subscriber() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("v5-sub", true, None).await;
    let mut publisher = app.v5_client("v5-pub", true, None).await;

    for qos in ALL_QOS {
        let topic = format!("v5/qos{}", qos as u8);
        sub.subscribe(&topic, qos).await;

        match qos {
            QoS::AtMostOnce => publisher.publish(&topic, qos, false, "zero").await,
            QoS::AtLeastOnce => {
                let ack = publisher.publish_qos1(&topic, false, "one").await;
                assert_eq!(ack.reason, PubAckReason::Success);
            }
            QoS::ExactlyOnce => {
                publisher.publish_qos2(&topic, false, "two").await;
            }
        }

        let got = sub.recv_publish().await;
        assert_eq!(&got.topic[..], topic.as_bytes());
        assert_eq!(got.qos, qos);
    }
    sub.expect_quiet().await;
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription_qos() {
    let app = spawn_app().await;
    let mut low = app.v5_client("low", true, None).await;
    let mut high = app.v5_client("high", true, None).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    low.subscribe("mix", QoS::AtLeastOnce).await;
    high.subscribe("mix", QoS::ExactlyOnce).await;

    publisher.publish_qos2("mix", false, "a").await;
    publisher.publish("mix", QoS::AtMostOnce, false, "b").await;

    assert_eq!(low.recv_publish().await.qos, QoS::AtLeastOnce);
    assert_eq!(high.recv_publish().await.qos, QoS::ExactlyOnce);
    assert_eq!(low.recv_publish().await.qos, QoS::AtMostOnce);
    assert_eq!(high.recv_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn a_v5_qos1_publish_with_no_subscribers_is_acknowledged_with_0x10() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("lonely", true, None).await;

    let ack = publisher.publish_qos1("nobody/listens", false, "x").await;

    assert_eq!(ack.reason, PubAckReason::NoMatchingSubscribers);
}

#[tokio::test]
async fn qos1_messages_from_one_publisher_arrive_in_order() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("ordered-sub", true, None).await;
    let publisher = app.v5_client("ordered-pub", true, None).await;
    sub.subscribe("seq", QoS::AtLeastOnce).await;

    for i in 0..50 {
        publisher.publish("seq", QoS::AtLeastOnce, false, i.to_string()).await;
    }

    let got: Vec<String> = sub.recv_publishes(50).await.iter().map(|p| text(&p.payload)).collect();
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn plus_matches_exactly_one_level() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("plus", true, None).await;
    let publisher = app.v5_client("pub", true, None).await;
    sub.subscribe("devices/+/status", QoS::AtMostOnce).await;

    for topic in
        ["devices/car1/status", "devices/status", "devices/car1/x/status", "devices//status"]
    {
        publisher.publish(topic, QoS::AtMostOnce, false, topic).await;
    }

    let got: Vec<String> =
        sub.collect_publishes(QUIET).await.iter().map(crate::helpers::v5_topic).collect();
    assert_eq!(got, ["devices/car1/status", "devices//status"]);
}

#[tokio::test]
async fn hash_matches_the_parent_and_every_level_below() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("hash", true, None).await;
    let publisher = app.v5_client("pub", true, None).await;
    sub.subscribe("fleet/#", QoS::AtMostOnce).await;

    for topic in ["fleet", "fleet/a", "fleet/a/b/c", "fleetwood", "other/fleet"] {
        publisher.publish(topic, QoS::AtMostOnce, false, topic).await;
    }

    let got: Vec<String> =
        sub.collect_publishes(QUIET).await.iter().map(crate::helpers::v5_topic).collect();
    assert_eq!(got, ["fleet", "fleet/a", "fleet/a/b/c"]);
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_a_message_once_per_client() {
    let app = spawn_app().await;
    let mut sub = app.v3_client("overlap", true).await;
    let publisher = app.v3_client("pub", true).await;
    sub.subscribe("a/#", rumqttc::QoS::AtLeastOnce).await;
    sub.subscribe("a/+", rumqttc::QoS::AtLeastOnce).await;

    publisher.publish("a/b", rumqttc::QoS::AtLeastOnce, false, "once").await;

    assert_eq!(sub.collect_publishes(QUIET).await.len(), 1);
}

#[tokio::test]
async fn after_unsubscribe_nothing_more_is_delivered() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("unsub", true, None).await;
    let publisher = app.v5_client("pub", true, None).await;
    sub.subscribe("news", QoS::AtLeastOnce).await;
    publisher.publish("news", QoS::AtLeastOnce, false, "first").await;
    sub.recv_publish().await;

    sub.unsubscribe("news").await;
    publisher.publish("news", QoS::AtLeastOnce, false, "second").await;

    sub.expect_quiet().await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_hash_or_plus() {
    let app = spawn_app_with(|s| s.broker.sys_interval_secs = 1).await;
    let mut everything = app.v5_client("hash-all", true, None).await;
    let mut plus = app.v5_client("plus-all", true, None).await;
    let mut sys = app.v5_client("sys", true, None).await;
    everything.subscribe("#", QoS::AtMostOnce).await;
    plus.subscribe("+/broker/#", QoS::AtMostOnce).await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;

    // $SYS is published every second: wait past one interval.
    let sys_msgs = sys.collect_publishes(Duration::from_millis(1300)).await;
    let hash_msgs = everything.collect_publishes(Duration::from_millis(100)).await;
    let plus_msgs = plus.collect_publishes(Duration::from_millis(100)).await;

    assert!(!sys_msgs.is_empty(), "the control subscription to $SYS/# must see statistics");
    let leaked: Vec<String> = hash_msgs
        .iter()
        .chain(&plus_msgs)
        .map(crate::helpers::v5_topic)
        .filter(|t| t.starts_with('$'))
        .collect();
    assert!(leaked.is_empty(), "wildcards matched $-topics: {leaked:?}");
}

#[tokio::test]
async fn a_v5_publish_to_a_wildcard_topic_is_refused_and_not_delivered() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("watcher", true, None).await;
    // Not `#`: the map updater publishes `map/*` retained from the start.
    sub.subscribe("cars/#", QoS::AtLeastOnce).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "bad-pub", true, None).await;

    conn.publish_v5("cars/+/speed", QoS::AtLeastOnce, 1, false, false, b"x", None).await;

    assert_refused(&mut conn).await;
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_v3_publish_to_a_wildcard_topic_closes_the_connection() {
    let app = spawn_app().await;
    let mut sub = app.v3_client("watcher", true).await;
    sub.subscribe("cars/#", rumqttc::QoS::AtLeastOnce).await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "bad-pub", true).await;

    conn.publish_v3("cars/#", 1, 1, b"x").await;

    let frames = conn.expect_closed(RECV).await;
    assert!(
        frames.iter().all(|f| f.packet_type() != packet_type::PUBACK),
        "no PUBACK for an invalid topic: {frames:?}"
    );
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_client_cannot_publish_to_sys_topics() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("sys-watch", true, None).await;
    sub.subscribe("$SYS/#", QoS::AtLeastOnce).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "forger", true, None).await;

    conn.publish_v5("$SYS/broker/version", QoS::AtLeastOnce, 1, false, false, b"fake 0.0", None)
        .await;

    assert_refused(&mut conn).await;
    let forged: Vec<_> = sub
        .collect_publishes(QUIET)
        .await
        .into_iter()
        .filter(|p| &p.payload[..] == b"fake 0.0")
        .collect();
    assert!(forged.is_empty(), "a client's $SYS publish reached subscribers");
}

#[tokio::test]
async fn a_v5_subscribe_with_an_invalid_filter_is_refused() {
    let app = spawn_app().await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "bad-filter", true, None).await;

    // rumqttc's codec writes the filter verbatim; "a/#/b" is invalid.
    let mut sub = Subscribe::new(Filter::new("a/#/b", QoS::AtMostOnce), None);
    sub.pkid = 1;
    conn.send_v5(Packet::Subscribe(sub)).await;

    // SUBACK 0x8F, or a DISCONNECT for the malformed packet; never a grant.
    match conn.try_recv(RECV).await {
        Ok(f) if f.packet_type() == packet_type::SUBACK => {
            let Packet::SubAck(ack) = f.v5() else { unreachable!() };
            assert_eq!(ack.return_codes, [SubscribeReasonCode::TopicFilterInvalid], "{ack:?}");
        }
        Ok(f) if f.packet_type() == packet_type::DISCONNECT => assert!(f.reason() >= 0x80, "{f:?}"),
        Ok(f) => panic!("unexpected answer {f:?}"),
        Err(e) => assert_eq!(e, RawEnd::Closed),
    }
}

#[tokio::test]
async fn a_payload_over_the_limit_is_refused_and_not_delivered() {
    let app = spawn_app_with(|s| s.broker.limits.max_payload_bytes = 1024).await;
    let mut sub = app.v5_client("big-watch", true, None).await;
    sub.subscribe("big", QoS::AtLeastOnce).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "big-pub", true, None).await;

    // Within the limit: delivered.
    conn.publish_v5("big", QoS::AtLeastOnce, 1, false, false, &[b'a'; 1024], None).await;
    assert_eq!(conn.recv_type(packet_type::PUBACK).await.reason(), 0x00);
    assert_eq!(sub.recv_publish().await.payload.len(), 1024);

    // Over it: refused with a reason code (PUBACK ≥ 0x80, or DISCONNECT 0x95).
    conn.publish_v5("big", QoS::AtLeastOnce, 2, false, false, &[b'b'; 1025], None).await;
    assert_refused(&mut conn).await;
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_v3_payload_over_the_limit_disconnects_and_is_not_delivered() {
    let app = spawn_app_with(|s| s.broker.limits.max_payload_bytes = 1024).await;
    let mut sub = app.v3_client("big-watch", true).await;
    sub.subscribe("big", rumqttc::QoS::AtLeastOnce).await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "big-pub", true).await;

    conn.publish_v3("big", 1, 1, &[b'b'; 4096]).await;

    let frames = conn.expect_closed(RECV).await;
    assert!(frames.iter().all(|f| f.packet_type() != packet_type::PUBACK), "{frames:?}");
    sub.expect_quiet().await;
}

#[tokio::test]
async fn a_packet_over_the_maximum_packet_size_gets_disconnect_0x95() {
    let app = spawn_app_with(|s| {
        s.broker.limits.max_packet_bytes = 2048;
        s.broker.limits.max_payload_bytes = 1024;
    })
    .await;
    let (mut conn, connack) = RawConn::connect_v5(app.mqtt_addr, "huge", true, None).await;
    let Packet::ConnAck(ack) = connack.v5() else { unreachable!() };
    assert_eq!(ack.properties.and_then(|p| p.max_packet_size), Some(2048), "advertised in CONNACK");

    conn.publish_v5("huge", QoS::AtLeastOnce, 1, false, false, &[0u8; 8000], None).await;

    let frames = conn.expect_closed(RECV).await;
    let disconnect = frames.iter().find(|f| f.packet_type() == packet_type::DISCONNECT);
    assert_eq!(disconnect.map(|f| f.reason()), Some(0x95), "{frames:?}");
}

#[tokio::test]
async fn a_qos2_publish_whose_exchange_is_cut_after_pubrec_is_delivered_exactly_once() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("q2-sub", true, None).await;
    sub.subscribe("q2/in", QoS::ExactlyOnce).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "q2-pub", true, Some(300)).await;
    conn.publish_v5("q2/in", QoS::ExactlyOnce, 7, false, false, b"exactly once", None).await;
    assert_eq!(conn.recv_type(packet_type::PUBREC).await.pkid(), 7);

    // The connection drops before PUBREL; the client resumes and releases.
    drop(conn);
    let (mut conn, connack) = RawConn::connect_v5(app.mqtt_addr, "q2-pub", false, Some(300)).await;
    assert!(connack.session_present());
    conn.pubrel(7).await;
    let comp = conn.recv_type(packet_type::PUBCOMP).await;

    assert_eq!(comp.pkid(), 7);
    let got = sub.collect_publishes(QUIET).await;
    assert_eq!(got.len(), 1, "delivered {} times", got.len());
    assert_eq!(&got[0].payload[..], b"exactly once");
}

#[tokio::test]
async fn a_qos2_publish_resent_with_dup_after_a_reconnect_is_delivered_exactly_once() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("q2-sub", true, None).await;
    sub.subscribe("q2/dup", QoS::ExactlyOnce).await;
    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "q2-pub", true, Some(300)).await;
    conn.publish_v5("q2/dup", QoS::ExactlyOnce, 9, false, false, b"once", None).await;
    // Make sure the broker had it (PUBREC) but the client "lost" that PUBREC.
    conn.recv_type(packet_type::PUBREC).await;
    drop(conn);

    let (mut conn, _) = RawConn::connect_v5(app.mqtt_addr, "q2-pub", false, Some(300)).await;
    conn.publish_v5("q2/dup", QoS::ExactlyOnce, 9, true, false, b"once", None).await;
    assert_eq!(conn.recv_type(packet_type::PUBREC).await.pkid(), 9);
    conn.pubrel(9).await;
    conn.recv_type(packet_type::PUBCOMP).await;

    let got = sub.collect_publishes(QUIET).await;
    assert_eq!(got.len(), 1, "a resent QoS 2 PUBLISH must not be delivered twice");
}

#[tokio::test]
async fn an_outgoing_qos2_exchange_cut_after_pubrec_resumes_with_pubrel_not_a_second_publish() {
    let app = spawn_app().await;
    let (mut sub, _) = RawConn::connect_v5(app.mqtt_addr, "q2-out", true, Some(300)).await;
    sub.subscribe_v5(1, "q2/out", QoS::ExactlyOnce).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos2("q2/out", false, "one").await;
    let publish = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!(publish.qos(), 2);
    sub.pubrec(publish.pkid()).await;
    assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), publish.pkid());

    // Drop before PUBCOMP, then resume.
    drop(sub);
    let (mut sub, connack) = RawConn::connect_v5(app.mqtt_addr, "q2-out", false, Some(300)).await;
    assert!(connack.session_present());

    let resumed = sub.recv().await;
    assert_eq!(
        resumed.packet_type(),
        packet_type::PUBREL,
        "the broker must resend PUBREL: {resumed:?}"
    );
    assert_eq!(resumed.pkid(), publish.pkid());
    sub.pubcomp(publish.pkid()).await;
    assert!(
        sub.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(),
        "the message was delivered twice"
    );
}

/// The broker refused the last publish: a PUBACK with a failure reason, or a
/// DISCONNECT with one, or a close.
async fn assert_refused(conn: &mut RawConn) {
    match conn.try_recv(RECV).await {
        Ok(f) if f.packet_type() == packet_type::PUBACK => {
            assert!(f.reason() >= 0x80, "PUBACK must carry a failure reason: 0x{:02x}", f.reason())
        }
        Ok(f) if f.packet_type() == packet_type::DISCONNECT => {
            assert!(
                f.reason() >= 0x80,
                "DISCONNECT must carry a failure reason: 0x{:02x}",
                f.reason()
            )
        }
        Ok(f) => panic!("expected a refusal, got {f:?}"),
        Err(RawEnd::Closed) => {}
        Err(e) => panic!("no answer to an invalid publish: {e:?}"),
    }
}

#[tokio::test]
async fn a_publish_without_subscribers_does_not_disturb_other_topics() {
    let app = spawn_app().await;
    let mut sub = app.v3_client("s", true).await;
    let publisher = app.v3_client("p", true).await;
    sub.subscribe("a", rumqttc::QoS::AtMostOnce).await;

    publisher.publish("b", rumqttc::QoS::AtMostOnce, false, "to b").await;
    publisher.publish("a", rumqttc::QoS::AtMostOnce, false, "to a").await;

    assert_eq!(text(&sub.recv_publish().await.payload), "to a");
    sub.expect_quiet().await;
}

#[tokio::test]
async fn many_subscribers_each_get_every_message() {
    let app = spawn_app().await;
    let mut subs = Vec::new();
    for i in 0..5 {
        let mut s = app.v5_client(&format!("fan-{i}"), true, None).await;
        s.subscribe_with(Filter::new("fan/out", QoS::AtLeastOnce), None).await;
        subs.push(s);
    }
    let publisher = app.v5_client("pub", true, None).await;

    for i in 0..10 {
        publisher.publish("fan/out", QoS::AtLeastOnce, false, i.to_string()).await;
    }

    for s in &mut subs {
        assert_eq!(s.recv_publishes(10).await.len(), 10);
    }
}

#[tokio::test]
async fn a_v3_qos2_publish_resent_with_dup_after_a_reconnect_is_delivered_exactly_once() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("q2-sub", true, None).await;
    sub.subscribe("q2/dup3", QoS::ExactlyOnce).await;
    let (mut conn, _) = RawConn::connect_v3(app.mqtt_addr, "q2-pub3", false).await;
    conn.publish_v3("q2/dup3", 2, 9, b"once").await;
    conn.recv_type(packet_type::PUBREC).await;
    drop(conn);

    let (mut conn, connack) = RawConn::connect_v3(app.mqtt_addr, "q2-pub3", false).await;
    assert!(connack.session_present());
    let mut resent = v4::Publish::new("q2/dup3", rumqttc::QoS::ExactlyOnce, b"once".to_vec());
    resent.pkid = 9;
    resent.dup = true;
    conn.send_v4(v4::Packet::Publish(resent)).await;
    assert_eq!(conn.recv_type(packet_type::PUBREC).await.pkid(), 9);
    conn.pubrel(9).await;
    assert_eq!(conn.recv_type(packet_type::PUBCOMP).await.pkid(), 9);

    // Released: the same id starts a new message.
    conn.publish_v3("q2/dup3", 2, 9, b"twice").await;
    conn.recv_type(packet_type::PUBREC).await;
    conn.pubrel(9).await;
    conn.recv_type(packet_type::PUBCOMP).await;

    let got = sub.collect_publishes(QUIET).await;
    let payloads: Vec<_> = got.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, [&b"once"[..], &b"twice"[..]], "a resent QoS 2 PUBLISH is routed once");
}

#[tokio::test]
async fn a_v3_outgoing_qos2_exchange_cut_after_pubrec_resumes_with_pubrel() {
    let app = spawn_app().await;
    let (mut sub, _) = RawConn::connect_v3(app.mqtt_addr, "q2-out3", false).await;
    let mut subscribe = v4::Subscribe::new("q2/out3", rumqttc::QoS::ExactlyOnce);
    subscribe.pkid = 1;
    sub.send_v4(v4::Packet::Subscribe(subscribe)).await;
    sub.recv_type(packet_type::SUBACK).await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos2("q2/out3", false, "one").await;
    let publish = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!(publish.qos(), 2);
    sub.pubrec(publish.pkid()).await;
    assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), publish.pkid());

    // Drop before PUBCOMP; a second message waits while the client is away.
    drop(sub);
    publisher.publish_qos2("q2/out3", false, "two").await;
    let (mut sub, connack) = RawConn::connect_v3(app.mqtt_addr, "q2-out3", false).await;
    assert!(connack.session_present());

    // PUBREL first, then the queued message, under another packet id while
    // the first exchange is not complete.
    let resumed = sub.recv().await;
    assert_eq!(resumed.packet_type(), packet_type::PUBREL, "{resumed:?}");
    assert_eq!(resumed.pkid(), publish.pkid());
    let next = sub.recv_type(packet_type::PUBLISH).await;
    assert_eq!(next.payload(false), b"two");
    assert_ne!(next.pkid(), publish.pkid(), "a packet id still in use was handed out");
    sub.pubcomp(publish.pkid()).await;
    sub.pubrec(next.pkid()).await;
    assert_eq!(sub.recv_type(packet_type::PUBREL).await.pkid(), next.pkid());
    sub.pubcomp(next.pkid()).await;
    assert!(sub.try_recv_type(packet_type::PUBLISH, QUIET).await.is_err(), "delivered twice");
}

/// A subscriber that keeps reading but cannot take messages as fast as four
/// publishers send them: its queue (bound 5) overflows many times over, yet
/// every QoS 1 message arrives, in order per publisher, because the
/// publishers' PUBACKs wait for room instead of the queue dropping.
#[tokio::test]
async fn qos1_publishers_slow_down_to_a_live_subscriber_instead_of_losing_messages() {
    let app = spawn_app_with(|s| s.broker.limits.max_queued_messages = 5).await;
    let mut sub = app.v5_client("steady-sub", true, None).await;
    sub.subscribe("fleet/+", QoS::AtLeastOnce).await;
    let mut publishers = Vec::new();
    for p in 0..4 {
        publishers.push(app.v5_client(&format!("fast-pub-{p}"), true, None).await);
    }

    const EACH: usize = 200;
    for (p, publisher) in publishers.iter().enumerate() {
        for i in 0..EACH {
            publisher.publish(&format!("fleet/{p}"), QoS::AtLeastOnce, false, i.to_string()).await;
        }
    }

    let got = sub.recv_publishes(4 * EACH).await;
    for p in 0..4 {
        let topic = format!("fleet/{p}");
        let seqs: Vec<usize> = got
            .iter()
            .filter(|m| crate::helpers::v5_topic(m) == topic)
            .map(|m| text(&m.payload).parse().unwrap())
            .collect();
        assert_eq!(seqs, (0..EACH).collect::<Vec<_>>(), "publisher {p}");
    }
    let dropped = crate::helpers::metric(
        app.http_addr,
        "mapcast_messages_dropped_total{reason=\"queue_full_qos1\"}",
    )
    .await;
    assert_eq!(dropped, 0.0);
}
