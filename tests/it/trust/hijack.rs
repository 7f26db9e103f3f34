//! A session belongs to the identity that opened it: nobody else takes it
//! over (kicking the owner off) or resumes it (inheriting its subscriptions
//! and queued messages), over either protocol level, across a restart; the
//! server's own client ids (SSE streams, REST) cannot be used at all.

use std::path::Path;

use mapcast::broker::acl::AnonymousAcl;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;

use crate::helpers::{
    Api, PASSWORD, RECV, TestApp, V5Client, add_admin, metric, spawn_app_in, text,
};

const ADMIN_PW: &str = "admin-password-long";
/// The owner's persistent session.
const OWNED: &str = "ann-phone";

/// The identities of the table: how each signs in over MQTT.
struct World {
    app: TestApp,
    /// (who, user name and password; `None` = anonymous)
    others: Vec<(&'static str, Option<(String, String)>)>,
    /// Ann's car, whose topics her session follows.
    car: crate::helpers::DeviceCreds,
}

async fn world(dir: &Path) -> World {
    add_admin(dir, "root", ADMIN_PW).await;
    let app = spawn_app_in(dir, |s| s.auth.allow_anonymous = Some(true)).await;
    let api: Api = app.api();
    let ann = api.sign_up("ann").await;
    let car = api.create_device(&ann, "Ann's car", "car").await;
    let bob = api.sign_up("bob").await;
    let bobs_car = api.create_device(&bob, "Bob's car", "car").await;
    let creds = |u: &str, p: &str| Some((u.to_owned(), p.to_owned()));
    let others = vec![
        ("another user", creds("bob", PASSWORD)),
        ("another device", creds(&bobs_car.id, &bobs_car.secret)),
        ("the owner's own device", creds(&car.id, &car.secret)),
        ("anonymous", None),
        ("an admin", creds("root", ADMIN_PW)),
    ];
    World { app, others, car }
}

fn status_topic(w: &World) -> String {
    format!("devices/{}/status", w.car.id)
}

/// Ann's persistent session, subscribed to her car, connected.
async fn owner(app: &TestApp, clean: bool) -> V5Client {
    app.v5(OWNED)
        .credentials("ann", PASSWORD)
        .clean_start(clean)
        .session_expiry(Some(3600))
        .connect()
        .await
}

async fn publish_as_car(w: &World, payload: &str) {
    let mut car = w.app.v5("car-pub").credentials(&w.car.id, &w.car.secret).connect().await;
    car.publish_qos1(&status_topic(w), false, payload.to_owned()).await;
    car.disconnect().await;
}

#[tokio::test]
async fn nobody_but_the_owner_takes_over_or_resumes_a_session_on_v5_or_v3() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path()).await;
    let mut ann = owner(&w.app, true).await;
    ann.subscribe(&status_topic(&w), QoS::AtLeastOnce).await;

    // While the owner is connected: takeover attempts with either flag.
    for (who, creds) in &w.others {
        for clean in [true, false] {
            let mut o = w.app.v5(OWNED).clean_start(clean).session_expiry(Some(3600));
            if let Some((u, p)) = creds {
                o = o.credentials(u, p);
            }
            let refused = o.try_connect().await.err().unwrap_or_else(|| {
                panic!("{who} took over the connected session (clean_start {clean})")
            });
            assert_eq!(refused.refused, Some(ConnectReturnCode::NotAuthorized), "{who}");

            let mut o3 = w.app.v3(OWNED).clean_session(clean);
            if let Some((u, p)) = creds {
                o3 = o3.credentials(u, p);
            }
            let refused = o3.try_connect().await.err().unwrap_or_else(|| {
                panic!("{who} took over the connected session over 3.1.1 (clean {clean})")
            });
            assert_eq!(refused.refused, Some(rumqttc::ConnectReturnCode::NotAuthorized), "{who}");
        }
    }
    // The owner was never kicked off.
    publish_as_car(&w, "still mine").await;
    assert_eq!(text(&ann.recv_publish().await.payload), "still mine");

    // While the owner is away, messages queue; nobody else resumes them.
    ann.disconnect().await;
    publish_as_car(&w, "queued").await;
    for (who, creds) in &w.others {
        let mut o = w.app.v5(OWNED).clean_start(false).session_expiry(Some(3600));
        if let Some((u, p)) = creds {
            o = o.credentials(u, p);
        }
        let refused = o.try_connect().await.err();
        let refused = refused.unwrap_or_else(|| panic!("{who} resumed the owner's session"));
        assert_eq!(refused.refused, Some(ConnectReturnCode::NotAuthorized), "{who}");
    }
    let refused =
        metric(w.app.http_addr, r#"mapcast_connections_rejected_total{reason="session_owner"}"#);
    assert!(refused.await >= 25.0, "the refusals are counted");

    let mut back = owner(&w.app, false).await;
    assert!(back.session_present(), "the owner's session was replaced");
    assert_eq!(text(&back.recv_publish().await.payload), "queued", "the queue was taken");
}

#[tokio::test]
async fn the_owner_itself_may_take_its_session_over() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path()).await;
    let mut first = owner(&w.app, true).await;
    let second = owner(&w.app, false).await;
    assert!(second.session_present());
    let closed = first.wait_closed(RECV).await;
    assert!(closed.server_reason.is_some(), "the old connection was told why: {closed:?}");
}

#[tokio::test]
async fn the_servers_own_client_ids_are_refused_and_sse_streams_survive() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path()).await;
    let mut stream = w.app.sse("news/#").await;

    for id in (0..64).map(|n| format!("sse:{n}")).chain(["rest:anonymous".into(), "rest:1".into()])
    {
        let refused = w.app.v5(&id).try_connect().await.err();
        let refused = refused.unwrap_or_else(|| panic!("CONNECT as {id:?} was accepted"));
        assert_eq!(refused.refused, Some(ConnectReturnCode::ClientIdentifierNotValid), "{id}");
        let refused = w.app.v3(&id).try_connect().await.err();
        let refused = refused.unwrap_or_else(|| panic!("3.1.1 CONNECT as {id:?} was accepted"));
        assert_eq!(refused.refused, Some(rumqttc::ConnectReturnCode::BadClientId), "{id}");
    }

    let publisher = w.app.v5("newsroom").connect().await;
    publisher.publish("news/1", QoS::AtLeastOnce, false, "hello").await;
    let event = stream.next_event().await;
    assert_eq!(event["topic"], "news/1", "{event}");
}

#[tokio::test]
async fn ownership_survives_a_restart_and_resumed_subscriptions_are_checked_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = world(dir.path()).await;
        let mut ann = owner(&w.app, true).await;
        ann.subscribe(&status_topic(&w), QoS::AtLeastOnce).await;
        ann.disconnect().await;
        // An anonymous persistent session that may read everything today.
        let mut anon =
            w.app.v5("anon-all").clean_start(true).session_expiry(Some(3600)).connect().await;
        anon.subscribe("#", QoS::AtLeastOnce).await;
        anon.disconnect().await;
        let admin = w.app.v5("ops").credentials("root", ADMIN_PW).connect().await;
        admin.publish("private/old", QoS::AtLeastOnce, false, "queued secret").await;
        admin.disconnect().await;
        w.app.stop().await;
    }
    // Restarted with anonymous clients reduced to reading the map.
    let app = spawn_app_in(dir.path(), |s| {
        s.auth.allow_anonymous = Some(true);
        s.auth.anonymous_acl = Some(AnonymousAcl::ReadMap);
    })
    .await;

    let stolen =
        app.v5(OWNED).credentials("bob", PASSWORD).clean_start(false).session_expiry(Some(3600));
    let refused =
        stolen.try_connect().await.err().expect("bob resumed ann's session after a restart");
    assert_eq!(refused.refused, Some(ConnectReturnCode::NotAuthorized));
    assert!(owner(&app, false).await.session_present());

    let mut anon = app.v5("anon-all").clean_start(false).session_expiry(Some(3600)).connect().await;
    assert!(anon.session_present());
    let admin = app.v5("ops").credentials("root", ADMIN_PW).connect().await;
    admin.publish("private/notes", QoS::AtLeastOnce, false, "secret").await;
    // What the map topics carry is still the anonymous client's to read.
    let seen = anon.collect_publishes(crate::helpers::QUIET * 2).await;
    let leaked: Vec<_> = seen.iter().filter(|p| p.topic.starts_with(b"private/")).collect();
    assert!(leaked.is_empty(), "read after its rights shrank: {leaked:?}");
}

#[tokio::test]
async fn an_admin_takes_a_session_over_only_when_the_operator_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    add_admin(dir.path(), "root", ADMIN_PW).await;
    let app = spawn_app_in(dir.path(), |s| s.broker.limits.admin_session_takeover = true).await;
    app.api().sign_up("ann").await;
    let mut ann = owner(&app, true).await;

    let admin = app
        .v5(OWNED)
        .credentials("root", ADMIN_PW)
        .clean_start(false)
        .session_expiry(Some(3600))
        .connect()
        .await;

    assert!(admin.session_present());
    let closed = ann.wait_closed(RECV).await;
    assert_eq!(
        closed.server_reason,
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver)
    );
}
