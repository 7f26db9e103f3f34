//! Retained messages: set, replace, clear, delivery on subscribe, and the v5
//! subscription options retain-handling and retain-as-published.

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};

use crate::helpers::{spawn_app, text, v5_topic};

#[tokio::test]
async fn a_retained_message_is_delivered_to_a_later_subscriber_with_the_retain_flag() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("cars/1/status", true, "parked").await;

    let mut late = app.v5_client("late", true, None).await;
    late.subscribe("cars/1/status", QoS::AtLeastOnce).await;

    let got = late.recv_publish().await;
    assert_eq!(&got.payload[..], b"parked");
    assert!(got.retain, "a retained message sent on subscribe carries the retain flag");
    late.expect_quiet().await;
}

#[tokio::test]
async fn a_v3_subscriber_gets_retained_messages_too() {
    let app = spawn_app().await;
    let mut publisher = app.v3_client("pub", true).await;
    publisher.publish_qos1("cars/2/status", true, "driving").await;

    let mut late = app.v3_client("late", true).await;
    late.subscribe("cars/+/status", rumqttc::QoS::AtLeastOnce).await;

    let got = late.recv_publish().await;
    assert_eq!(&got.payload[..], b"driving");
    assert!(got.retain);
}

#[tokio::test]
async fn a_new_retained_message_replaces_the_old_one() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("fleet/version", true, "1").await;
    publisher.publish_qos1("fleet/version", true, "2").await;

    let mut late = app.v5_client("late", true, None).await;
    late.subscribe("fleet/version", QoS::AtLeastOnce).await;

    assert_eq!(text(&late.recv_publish().await.payload), "2");
    late.expect_quiet().await;
}

#[tokio::test]
async fn an_empty_retained_publish_clears_the_retained_message() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("alerts/fire", true, "everyone out").await;

    publisher.publish_qos1("alerts/fire", true, "").await;

    let mut late = app.v5_client("late", true, None).await;
    late.subscribe("alerts/#", QoS::AtLeastOnce).await;
    late.expect_quiet().await;
}

#[tokio::test]
async fn a_wildcard_subscription_receives_every_matching_retained_message() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    for car in ["a", "b", "c"] {
        publisher.publish_qos1(&format!("fleet/{car}/pos"), true, car).await;
    }
    publisher.publish_qos1("fleet/a/other", true, "no").await;

    let mut late = app.v5_client("late", true, None).await;
    late.subscribe("fleet/+/pos", QoS::AtMostOnce).await;

    let got = late.recv_publishes(3).await;
    let topics = crate::helpers::V5Client::topics(&got);
    assert_eq!(topics, ["fleet/a/pos", "fleet/b/pos", "fleet/c/pos"].map(String::from).into());
    late.expect_quiet().await;
}

#[tokio::test]
async fn a_retained_publish_forwarded_live_has_retain_cleared_without_retain_as_published() {
    let app = spawn_app().await;
    let mut v3_sub = app.v3_client("v3", true).await;
    let mut v5_sub = app.v5_client("v5", true, None).await;
    v3_sub.subscribe("live", rumqttc::QoS::AtLeastOnce).await;
    v5_sub.subscribe("live", QoS::AtLeastOnce).await;
    let mut publisher = app.v5_client("pub", true, None).await;

    publisher.publish_qos1("live", true, "now").await;

    assert!(!v3_sub.recv_publish().await.retain);
    assert!(!v5_sub.recv_publish().await.retain);
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_messages() {
    let app = spawn_app().await;
    let mut sub = app.v5_client("rap", true, None).await;
    let mut filter = Filter::new("rap/#", QoS::AtLeastOnce);
    filter.preserve_retain = true;
    sub.subscribe_with(filter, None).await;
    let mut publisher = app.v5_client("pub", true, None).await;

    publisher.publish_qos1("rap/a", true, "retained").await;
    publisher.publish_qos1("rap/b", false, "plain").await;

    let got = sub.recv_publishes(2).await;
    assert_eq!((v5_topic(&got[0]), got[0].retain), ("rap/a".into(), true));
    assert_eq!((v5_topic(&got[1]), got[1].retain), ("rap/b".into(), false));
}

#[tokio::test]
async fn retain_handling_1_sends_retained_messages_only_for_a_new_subscription() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("rh1/x", true, "kept").await;
    let mut sub = app.v5_client("rh1", true, None).await;
    let mut filter = Filter::new("rh1/#", QoS::AtLeastOnce);
    filter.retain_forward_rule = RetainForwardRule::OnNewSubscribe;

    sub.subscribe_with(filter.clone(), None).await;
    assert_eq!(text(&sub.recv_publish().await.payload), "kept", "new subscription: retained sent");

    sub.subscribe_with(filter, None).await;
    sub.expect_quiet().await;
}

#[tokio::test]
async fn retain_handling_0_resends_retained_messages_on_every_subscribe() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("rh0/x", true, "kept").await;
    let mut sub = app.v5_client("rh0", true, None).await;

    sub.subscribe("rh0/#", QoS::AtLeastOnce).await;
    sub.recv_publish().await;
    sub.subscribe("rh0/#", QoS::AtLeastOnce).await;

    assert_eq!(text(&sub.recv_publish().await.payload), "kept");
}

#[tokio::test]
async fn retain_handling_2_never_sends_retained_messages_on_subscribe() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos1("rh2/x", true, "kept").await;
    let mut sub = app.v5_client("rh2", true, None).await;
    let mut filter = Filter::new("rh2/#", QoS::AtLeastOnce);
    filter.retain_forward_rule = RetainForwardRule::Never;

    sub.subscribe_with(filter, None).await;

    sub.expect_quiet().await;
    // Live messages still flow.
    publisher.publish_qos1("rh2/x", false, "live").await;
    assert_eq!(text(&sub.recv_publish().await.payload), "live");
}

#[tokio::test]
async fn a_retained_message_is_sent_at_the_lower_of_its_qos_and_the_subscriptions() {
    let app = spawn_app().await;
    let mut publisher = app.v5_client("pub", true, None).await;
    publisher.publish_qos2("q/retained", true, "two").await;

    let mut sub = app.v5_client("sub", true, None).await;
    sub.subscribe("q/retained", QoS::AtLeastOnce).await;

    assert_eq!(sub.recv_publish().await.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn a_qos0_retained_message_is_kept() {
    let app = spawn_app().await;
    let publisher = app.v3_client("pub", true).await;
    publisher.publish("q0/retained", rumqttc::QoS::AtMostOnce, true, "zero").await;
    publisher.disconnect().await;

    let mut sub = app.v3_client("sub", true).await;
    sub.subscribe("q0/retained", rumqttc::QoS::AtLeastOnce).await;

    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"zero");
    assert_eq!(got.qos, rumqttc::QoS::AtMostOnce);
}
