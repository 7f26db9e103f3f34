//! Shared subscriptions: `$share/{group}/{filter}` spreads messages over the
//! group's members, each message to exactly one of them.

use std::collections::BTreeSet;

use rumqttc::v5::mqttbytes::QoS;

use crate::helpers::{QUIET, spawn_app, text};

#[tokio::test]
async fn a_shared_subscription_round_robins_between_two_members() {
    let app = spawn_app().await;
    let mut a = app.v5_client("worker-a", true, None).await;
    let mut b = app.v5_client("worker-b", true, None).await;
    a.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    b.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    let publisher = app.v5_client("dispatcher", true, None).await;

    for i in 0..10 {
        publisher.publish(&format!("jobs/{i}"), QoS::AtLeastOnce, false, i.to_string()).await;
    }

    let got_a: Vec<String> =
        a.collect_publishes(QUIET).await.iter().map(|p| text(&p.payload)).collect();
    let got_b: Vec<String> =
        b.collect_publishes(QUIET).await.iter().map(|p| text(&p.payload)).collect();
    assert_eq!((got_a.len(), got_b.len()), (5, 5), "round robin: a={got_a:?} b={got_b:?}");
    let all: BTreeSet<String> = got_a.iter().chain(&got_b).cloned().collect();
    assert_eq!(all.len(), 10, "each message went to exactly one member");
}

#[tokio::test]
async fn a_v3_client_can_join_a_shared_group() {
    let app = spawn_app().await;
    let mut a = app.v3_client("v3-worker", true).await;
    let mut b = app.v5_client("v5-worker", true, None).await;
    a.subscribe("$share/mixed/tasks", rumqttc::QoS::AtLeastOnce).await;
    b.subscribe("$share/mixed/tasks", QoS::AtLeastOnce).await;
    let publisher = app.v5_client("dispatcher", true, None).await;

    for i in 0..4 {
        publisher.publish("tasks", QoS::AtLeastOnce, false, i.to_string()).await;
    }

    let n_a = a.collect_publishes(QUIET).await.len();
    let n_b = b.collect_publishes(QUIET).await.len();
    assert_eq!(n_a + n_b, 4);
    assert!(n_a > 0 && n_b > 0, "both members got work: {n_a} / {n_b}");
}

#[tokio::test]
async fn different_groups_and_plain_subscribers_each_get_every_message() {
    let app = spawn_app().await;
    let mut g1 = app.v5_client("g1", true, None).await;
    let mut g2 = app.v5_client("g2", true, None).await;
    let mut plain = app.v5_client("plain", true, None).await;
    g1.subscribe("$share/one/feed", QoS::AtMostOnce).await;
    g2.subscribe("$share/two/feed", QoS::AtMostOnce).await;
    plain.subscribe("feed", QoS::AtMostOnce).await;
    let publisher = app.v5_client("pub", true, None).await;

    for i in 0..3 {
        publisher.publish("feed", QoS::AtMostOnce, false, i.to_string()).await;
    }

    assert_eq!(g1.recv_publishes(3).await.len(), 3);
    assert_eq!(g2.recv_publishes(3).await.len(), 3);
    assert_eq!(plain.recv_publishes(3).await.len(), 3);
}

#[tokio::test]
async fn a_shared_subscriber_receives_the_original_topic() {
    let app = spawn_app().await;
    let mut member = app.v5_client("member", true, None).await;
    member.subscribe("$share/g/devices/#", QoS::AtLeastOnce).await;
    let mut publisher = app.v5_client("pub", true, None).await;

    publisher.publish_qos1("devices/7/status", false, "here").await;

    assert_eq!(crate::helpers::v5_topic(&member.recv_publish().await), "devices/7/status");
}

#[tokio::test]
async fn retained_messages_are_not_sent_to_a_new_shared_subscription() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("config/x", true, "retained").await;

    let mut member = app.v5_client("member", true, None).await;
    member.subscribe("$share/g/config/#", QoS::AtLeastOnce).await;

    member.expect_quiet().await;
}

#[tokio::test]
async fn when_a_member_leaves_the_others_get_everything() {
    let app = spawn_app().await;
    let mut a = app.v5_client("stays", true, None).await;
    let b = {
        let mut b = app.v5_client("leaves", true, None).await;
        b.subscribe("$share/g/t", QoS::AtLeastOnce).await;
        b
    };
    a.subscribe("$share/g/t", QoS::AtLeastOnce).await;
    b.disconnect().await;
    let publisher = app.v5_client("pub", true, None).await;

    for i in 0..4 {
        publisher.publish("t", QoS::AtLeastOnce, false, i.to_string()).await;
    }

    assert_eq!(a.recv_publishes(4).await.len(), 4);
}
