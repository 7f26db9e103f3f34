//! The map (`map/#`) and `$SYS/#` are the server's: no client replaces the
//! snapshot phones read, not over MQTT, REST or a will, admins and
//! anonymous loopback clients included.

use mapcast::broker::acl::{AclAction, AclRule};
use mapcast::domain::Role;
use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason};

use crate::helpers::{Api, PASSWORD, TestApp, V5Client, add_admin, expect_problem, spawn_app_in};

const ADMIN_PW: &str = "admin-password-long";

/// An admin in the database, anonymous access on (loopback default), and an
/// extra rule that would let every user publish under `map/#`.
async fn app(dir: &std::path::Path) -> (TestApp, String) {
    add_admin(dir, "root", ADMIN_PW).await;
    let app = spawn_app_in(dir, |s| {
        s.auth.allow_anonymous = Some(true);
        s.auth.acl = vec![AclRule::allow(Role::User, AclAction::Publish, "map/#")];
    })
    .await;
    let admin = app.api().login("root", ADMIN_PW).await;
    (app, admin)
}

/// The retained `map/snapshot` a fresh subscriber gets: the server's GeoJSON.
async fn retained_snapshot(app: &TestApp, id: &str) -> serde_json::Value {
    let mut reader = app.v5(id).connect().await;
    reader.subscribe("map/snapshot", QoS::AtMostOnce).await;
    let p = reader.recv_publish().await;
    serde_json::from_slice(&p.payload)
        .unwrap_or_else(|e| panic!("map/snapshot is not JSON ({e}): {:?}", p.payload))
}

async fn wait_for_first_map(app: &TestApp) {
    let first = retained_snapshot(app, "first-reader").await;
    assert_eq!(first["type"], "FeatureCollection", "{first}");
}

#[tokio::test]
async fn no_mqtt_client_can_replace_the_retained_map_admins_and_anonymous_included() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(dir.path()).await;
    wait_for_first_map(&app).await;
    app.api().register("ann", PASSWORD).await;

    let mut clients: Vec<(&str, V5Client)> = vec![
        ("admin", app.v5("admin-c").credentials("root", ADMIN_PW).connect().await),
        ("anonymous", app.v5("anon-c").connect().await),
        ("user with a map/# rule", app.v5("ann-c").credentials("ann", PASSWORD).connect().await),
    ];
    for (who, client) in &mut clients {
        for topic in ["map/snapshot", "map/version", "map", "$SYS/broker/uptime"] {
            let ack = client.publish_qos1(topic, true, "garbage").await;
            assert_eq!(ack.reason, PubAckReason::NotAuthorized, "{who} publishing to {topic}");
        }
        // QoS 0 has no answer: it must be dropped all the same.
        client.publish("map/snapshot", QoS::AtMostOnce, true, "garbage").await;
    }
    let mut v3 = app.v3("admin-v3").credentials("root", ADMIN_PW).connect().await;
    v3.publish_qos1("map/snapshot", true, "garbage").await;

    let after = retained_snapshot(&app, "late-reader").await;
    assert_eq!(after["type"], "FeatureCollection", "the map was replaced: {after}");
}

#[tokio::test]
async fn a_will_on_a_server_owned_topic_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(dir.path()).await;
    wait_for_first_map(&app).await;

    for topic in ["map/snapshot", "$SYS/broker/clients"] {
        let refused = app
            .v5("will-admin")
            .credentials("root", ADMIN_PW)
            .will(topic, "garbage", QoS::AtLeastOnce, true, None)
            .try_connect()
            .await
            .err()
            .unwrap_or_else(|| panic!("a will on {topic} was accepted"));
        assert_eq!(refused.refused, Some(ConnectReturnCode::NotAuthorized), "{topic}");
    }
    let v3 = app
        .v3("will-anon-v3")
        .will("map/snapshot", "garbage", rumqttc::QoS::AtLeastOnce, true)
        .try_connect()
        .await;
    assert!(v3.is_err(), "a 3.1.1 will on map/snapshot was accepted");

    let after = retained_snapshot(&app, "late-reader").await;
    assert_eq!(after["type"], "FeatureCollection", "{after}");
}

#[tokio::test]
async fn rest_writes_to_server_owned_topics_are_forbidden_to_admins() {
    let dir = tempfile::tempdir().unwrap();
    let (app, admin) = app(dir.path()).await;
    wait_for_first_map(&app).await;
    let api: Api = app.api();

    for (method, topic) in [
        (Method::PUT, "map/snapshot"),
        (Method::POST, "map/snapshot"),
        (Method::DELETE, "map/snapshot"),
        (Method::PUT, "map/version"),
        (Method::PUT, "$SYS/broker/uptime"),
    ] {
        let path = format!("/api/v1/topics/{}", topic.replace('$', "%24"));
        let body = (method != Method::DELETE).then(|| ("text/plain", "garbage".to_owned()));
        let resp = api.send(method.clone(), &path, Some(&admin), body).await;
        expect_problem(resp, 403, "forbidden").await;
    }

    let after = retained_snapshot(&app, "late-reader").await;
    assert_eq!(after["type"], "FeatureCollection", "{after}");
}
