//! Access control over MQTT: devices stay in their own tree, users read the
//! map and their own devices, admins everything, anonymous clients what the
//! config allows, plus extra rules from the config.

use mapcast::broker::acl::{AclAction, AclRule, AnonymousAcl};
use mapcast::broker::auth::{ConfigUser, hash_password};
use mapcast::domain::Role;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, PubAckReason, SubscribeReasonCode as V5Sub};

use crate::helpers::{Api, DeviceCreds, PASSWORD, TestApp, V5Client, spawn_app_with, text};

/// An admin from the config file, for watching everything.
fn with_admin(s: &mut mapcast::config::Settings) {
    s.auth.users = vec![ConfigUser {
        username: "ops".into(),
        password_hash: hash_password(PASSWORD),
        role: Role::Admin,
    }];
}

/// A v5 client of the config admin subscribed to `#`.
async fn watcher(app: &TestApp) -> V5Client {
    let mut w = app.v5("ops-watch").credentials("ops", PASSWORD).connect().await;
    w.subscribe("#", QoS::AtLeastOnce).await;
    w
}

/// `ann` with a car, `bob` with a car: (ann's token, ann's car, bob's car).
async fn two_owners(api: &Api) -> (String, DeviceCreds, DeviceCreds) {
    let ann = api.sign_up("ann").await;
    let ann_car = api.create_device(&ann, "Ann's car", "car").await;
    let bob = api.sign_up("bob").await;
    let bob_car = api.create_device(&bob, "Bob's car", "car").await;
    (ann, ann_car, bob_car)
}

async fn subscribe_code(client: &mut V5Client, filter: &str) -> V5Sub {
    let codes = client.subscribe_with(Filter::new(filter, QoS::AtLeastOnce), None).await;
    assert_eq!(codes.len(), 1, "{codes:?}");
    codes[0]
}

#[tokio::test]
async fn a_device_publishing_outside_its_tree_gets_0x87_on_v5_and_is_dropped_on_v3() {
    let app = spawn_app_with(|s| {
        with_admin(s);
        s.auth.allow_anonymous = Some(false);
    })
    .await;
    let (_ann, car, other) = two_owners(&app.api()).await;
    let mut watch = watcher(&app).await;
    let mut v5 = app.v5("car-v5").credentials(&car.id, &car.secret).connect().await;
    let mut v3 = app.v3("car-v3").credentials(&car.id, &car.secret).connect().await;
    let elsewhere = format!("devices/{}/location", other.id);

    let denied = v5.publish_qos1(&elsewhere, false, "spoofed v5").await;
    // 3.1.1 has no negative PUBACK: the broker acks and drops.
    v3.publish_qos1(&elsewhere, false, "spoofed v3").await;
    v5.publish_qos1("map/snapshot", false, "fake map").await;
    // (Not `location`: that payload would have to be a valid GeoJSON position.)
    let own = v5.publish_qos1(&format!("devices/{}/status", car.id), false, "mine").await;

    assert_eq!(denied.reason, PubAckReason::NotAuthorized);
    assert_eq!(own.reason, PubAckReason::Success);
    let seen = watch.collect_publishes(crate::helpers::QUIET * 2).await;
    // The map updater's own `map/*` messages aside.
    let payloads: Vec<_> = seen
        .iter()
        .filter(|p| !p.topic.starts_with(b"map/") || &p.payload[..] == b"fake map")
        .map(|p| text(&p.payload))
        .collect();
    assert!(payloads.contains(&"mine".to_owned()), "{payloads:?}");
    for refused in ["spoofed v5", "spoofed v3", "fake map"] {
        assert!(!payloads.contains(&refused.to_owned()), "{refused:?} got through: {payloads:?}");
    }
}

#[tokio::test]
async fn a_user_subscribing_to_another_users_device_gets_0x87_on_v5_and_0x80_on_v3() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let (_ann, _ann_car, bob_car) = two_owners(&app.api()).await;
    let mut v5 = app.v5("ann-v5").credentials("ann", PASSWORD).connect().await;
    let mut v3 = app.v3("ann-v3").credentials("ann", PASSWORD).connect().await;
    let bobs = format!("devices/{}/location", bob_car.id);

    let v5_code = subscribe_code(&mut v5, &bobs).await;
    let v3_codes = v3.subscribe_codes(&bobs, rumqttc::QoS::AtLeastOnce).await;

    assert_eq!(v5_code, V5Sub::NotAuthorized);
    assert_eq!(v3_codes, [rumqttc::SubscribeReasonCode::Failure]);
}

#[tokio::test]
async fn a_user_reads_and_writes_its_own_devices_topics() {
    let app = spawn_app_with(|s| s.auth.allow_anonymous = Some(false)).await;
    let (_ann, car, _bob_car) = two_owners(&app.api()).await;
    let mut ann = app.v5("ann-phone").credentials("ann", PASSWORD).connect().await;
    let mut golf = app.v5("golf").credentials(&car.id, &car.secret).connect().await;
    ann.subscribe(&format!("devices/{}/#", car.id), QoS::AtLeastOnce).await;
    golf.subscribe(&format!("devices/{}/cmd", car.id), QoS::AtLeastOnce).await;

    golf.publish_qos1(&format!("devices/{}/status", car.id), false, "here").await;
    let cmd = ann.publish_qos1(&format!("devices/{}/cmd", car.id), false, "lock").await;

    assert_eq!(cmd.reason, PubAckReason::Success);
    assert_eq!(&golf.recv_publish().await.payload[..], b"lock");
    let got: Vec<_> = ann.recv_publishes(2).await.iter().map(|p| text(&p.payload)).collect();
    assert!(got.contains(&"here".to_owned()), "{got:?}");
}

#[tokio::test]
async fn wildcards_that_reach_beyond_what_a_caller_may_read_are_refused() {
    let app = spawn_app_with(|s| {
        with_admin(s);
        s.auth.allow_anonymous = Some(false);
    })
    .await;
    let (_ann, car, _bob_car) = two_owners(&app.api()).await;
    let mut ann = app.v5("ann").credentials("ann", PASSWORD).connect().await;
    let mut golf = app.v5("golf").credentials(&car.id, &car.secret).connect().await;
    let mut ops = app.v5("ops").credentials("ops", PASSWORD).connect().await;

    let user_codes = [
        subscribe_code(&mut ann, "devices/#").await,
        subscribe_code(&mut ann, "devices/+/location").await,
        subscribe_code(&mut ann, "#").await,
        subscribe_code(&mut ann, "$SYS/#").await,
        subscribe_code(&mut ann, "map/#").await,
    ];
    let device_codes = [
        subscribe_code(&mut golf, "devices/+/location").await,
        subscribe_code(&mut golf, "map/#").await,
        subscribe_code(&mut golf, &format!("devices/{}/#", car.id)).await,
    ];
    let admin_codes =
        [subscribe_code(&mut ops, "#").await, subscribe_code(&mut ops, "$SYS/#").await];

    use V5Sub::{NotAuthorized as No, Success};
    assert_eq!(user_codes, [No, No, No, No, Success(QoS::AtLeastOnce)]);
    assert_eq!(device_codes, [No, Success(QoS::AtLeastOnce), Success(QoS::AtLeastOnce)]);
    assert_eq!(admin_codes, [Success(QoS::AtLeastOnce), Success(QoS::AtLeastOnce)]);
}

#[tokio::test]
async fn nobody_publishes_to_dollar_topics_not_even_an_admin() {
    let app = spawn_app_with(with_admin).await;
    let mut ops = app.v5("ops").credentials("ops", PASSWORD).connect().await;

    let ack = ops.publish_qos1("$SYS/broker/uptime", false, "0").await;

    assert_eq!(ack.reason, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn anonymous_read_map_clients_only_read_the_map() {
    let app = spawn_app_with(|s| {
        s.auth.allow_anonymous = Some(true);
        s.auth.anonymous_acl = Some(AnonymousAcl::ReadMap);
    })
    .await;
    let mut anon = app.v5_client("anon", true, None).await;

    let map = subscribe_code(&mut anon, "map/#").await;
    let all = subscribe_code(&mut anon, "#").await;
    let publish = anon.publish_qos1("map/snapshot", false, "fake").await;

    assert_eq!(map, V5Sub::Success(QoS::AtLeastOnce));
    assert_eq!(all, V5Sub::NotAuthorized);
    assert_eq!(publish.reason, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn extra_acl_rules_from_the_config_grant_more() {
    let app = spawn_app_with(|s| {
        s.auth.allow_anonymous = Some(false);
        s.auth.acl = vec![AclRule::allow(Role::User, AclAction::Both, "public/#")];
    })
    .await;
    app.api().sign_up("ann").await;
    let mut ann = app.v5("ann").credentials("ann", PASSWORD).connect().await;

    let sub = subscribe_code(&mut ann, "public/#").await;
    let ack = ann.publish_qos1("public/chat", false, "hello").await;
    let outside = ann.publish_qos1("private/chat", false, "psst").await;

    assert_eq!(sub, V5Sub::Success(QoS::AtLeastOnce));
    assert_eq!(ack.reason, PubAckReason::Success);
    assert_eq!(&ann.recv_publish().await.payload[..], b"hello");
    assert_eq!(outside.reason, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn deny_rules_refuse_even_an_admin_and_anonymous_clients() {
    let app = spawn_app_with(|s| {
        with_admin(s);
        s.auth.allow_anonymous = Some(true);
        s.auth.anonymous_acl = Some(AnonymousAcl::All);
        s.auth.acl = vec![
            // The admin rule grants everything; the deny rule still wins.
            AclRule::deny(Role::Admin, AclAction::Both, "vault/#"),
            AclRule::deny(Role::Anonymous, AclAction::Subscribe, "devices/#"),
            AclRule::deny(Role::Anonymous, AclAction::Publish, "alerts/+"),
        ];
    })
    .await;
    let mut ops = app.v5("ops-deny").credentials("ops", PASSWORD).connect().await;
    let mut ops3 = app.v3("ops-deny-v3").credentials("ops", PASSWORD).connect().await;
    let mut anon = app.v5("anon-deny").connect().await;
    let mut anon3 = app.v3("anon-deny-v3").connect().await;

    assert_eq!(subscribe_code(&mut ops, "vault/keys").await, V5Sub::NotAuthorized);
    // `#` would deliver vault/… too: refused as a whole.
    assert_eq!(subscribe_code(&mut ops, "#").await, V5Sub::NotAuthorized);
    assert_eq!(
        ops3.subscribe_codes("vault/#", rumqttc::QoS::AtLeastOnce).await,
        [rumqttc::SubscribeReasonCode::Failure]
    );
    let ack = ops.publish_qos1("vault/keys", false, "secret").await;
    assert_eq!(ack.reason, PubAckReason::NotAuthorized);
    // Everything the rules do not name stays as granted.
    assert_eq!(subscribe_code(&mut ops, "public/#").await, V5Sub::Success(QoS::AtLeastOnce));
    let ack = ops.publish_qos1("public/news", false, "hello").await;
    assert_eq!(ack.reason, PubAckReason::Success);
    assert_eq!(text(&ops.recv_publish().await.payload), "hello");

    assert_eq!(subscribe_code(&mut anon, "devices/+/location").await, V5Sub::NotAuthorized);
    assert_eq!(
        anon3.subscribe_codes("#", rumqttc::QoS::AtLeastOnce).await,
        [rumqttc::SubscribeReasonCode::Failure]
    );
    let ack = anon.publish_qos1("alerts/fire", false, "false alarm").await;
    assert_eq!(ack.reason, PubAckReason::NotAuthorized);
    let ack = anon.publish_qos1("alerts/fire/drill", false, "drill").await;
    assert_eq!(ack.reason, PubAckReason::NoMatchingSubscribers, "outside alerts/+");
    assert_eq!(subscribe_code(&mut anon, "map/#").await, V5Sub::Success(QoS::AtLeastOnce));
}
