//! One access table, three transports: every identity × topic × operation is
//! tried over MQTT 5 (PUBACK / SUBACK reason codes), REST
//! (`POST`/`PUT`/`GET /api/v1/topics/...`) and SSE (`GET /api/v1/subscribe`), and
//! all three must give the answer README's "Who may do what" table gives.
//!
//! Devices hold MQTT credentials only (no bearer token), so their rows are
//! checked over MQTT; an anonymous caller with anonymous access off is
//! refused at the door everywhere (CONNACK refusal, 401).

use std::fmt::Write as _;

use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, PubAckReason, SubscribeReasonCode as V5Sub};

use crate::helpers::{Api, TestApp, V5Client, add_admin, location, spawn_app_in};

const ADMIN_PW: &str = "admin matrix password";
const PW: &str = "matrix user password";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Admin,
    Owner,
    OtherUser,
    DeviceD1,
    DeviceD2,
    Anonymous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Publish,
    Read,
}

/// The topics, with `D1`/`D2` standing for the devices' ids.
const TOPICS: [&str; 6] = [
    "devices/D1/location",
    "devices/D1/cmd/x",
    "devices/D2/location",
    "map/snapshot",
    "$SYS/broker/uptime",
    "other/topic",
];

/// README's table, spelled out cell by cell.
fn expected(who: Who, topic: &str, op: Op) -> bool {
    let dollar = topic.starts_with('$');
    let d1 = topic.starts_with("devices/D1/");
    let d2 = topic.starts_with("devices/D2/");
    let map = topic.starts_with("map/");
    match (who, op) {
        // The map is the server's to write, admins' neither.
        (Who::Admin, Op::Publish) => !dollar && !map,
        (Who::Admin, Op::Read) => true,
        (Who::Owner | Who::DeviceD1, Op::Publish) => d1,
        (Who::Owner | Who::DeviceD1, Op::Read) => d1 || map,
        (Who::DeviceD2, Op::Publish) => d2,
        (Who::DeviceD2, Op::Read) => d2 || map,
        (Who::OtherUser, Op::Publish) => false,
        (Who::OtherUser, Op::Read) => map,
        (Who::Anonymous, _) => false,
    }
}

/// How a caller reaches the server on each transport.
struct Caller {
    who: Who,
    /// MQTT user name and password; `None` for anonymous.
    mqtt: Option<(String, String)>,
    /// Bearer token for REST and SSE; `None` where the identity has none.
    token: Option<String>,
    rest: bool,
}

async fn world(dir: &std::path::Path) -> (TestApp, Vec<Caller>, String, String) {
    add_admin(dir, "root", ADMIN_PW).await;
    let app = spawn_app_in(dir, |s| s.auth.allow_anonymous = Some(false)).await;
    let api: Api = app.api();
    let admin = api.login("root", ADMIN_PW).await;
    api.register("ann", PW).await;
    let ann = api.login("ann", PW).await;
    api.register("bob", PW).await;
    let bob = api.login("bob", PW).await;
    let d1 = api.create_device(&ann, "D1", "car").await;
    // D2 belongs to a third user, so `bob` owns nothing here.
    let cy = api.sign_up("cyd").await;
    let d2 = api.create_device(&cy, "D2", "car").await;
    let user = |name: &str, pw: &str| Some((name.to_owned(), pw.to_owned()));
    let callers = vec![
        Caller { who: Who::Admin, mqtt: user("root", ADMIN_PW), token: Some(admin), rest: true },
        Caller { who: Who::Owner, mqtt: user("ann", PW), token: Some(ann), rest: true },
        Caller { who: Who::OtherUser, mqtt: user("bob", PW), token: Some(bob), rest: true },
        Caller { who: Who::DeviceD1, mqtt: user(&d1.id, &d1.secret), token: None, rest: false },
        Caller { who: Who::DeviceD2, mqtt: user(&d2.id, &d2.secret), token: None, rest: false },
        Caller { who: Who::Anonymous, mqtt: None, token: None, rest: true },
    ];
    (app, callers, d1.id, d2.id)
}

/// `None` when the transport refused the connection itself.
async fn mqtt_answer(client: &mut Option<V5Client>, topic: &str, op: Op) -> Option<bool> {
    let client = client.as_mut()?;
    Some(match op {
        Op::Publish => {
            let ack = client.publish_qos1(topic, false, location(13.4, 52.5)).await;
            match ack.reason {
                // 0x10 is a success: nobody happened to be listening.
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => true,
                PubAckReason::NotAuthorized => false,
                other => panic!("PUBACK {other:?} for {topic}"),
            }
        }
        Op::Read => {
            let codes = client.subscribe_with(Filter::new(topic, QoS::AtLeastOnce), None).await;
            client.unsubscribe(topic).await;
            match codes[..] {
                [V5Sub::Success(_)] => true,
                [V5Sub::NotAuthorized] => false,
                ref other => panic!("SUBACK {other:?} for {topic}"),
            }
        }
    })
}

/// Allowed, denied (403), or `None` for a refusal at the door (401).
fn http_verdict(status: u16, allowed: &[u16], what: &str) -> Option<bool> {
    match status {
        s if allowed.contains(&s) => Some(true),
        403 => Some(false),
        401 => None,
        other => panic!("{what}: unexpected status {other}"),
    }
}

/// `POST` (publish), `PUT` (publish retained) or `GET` (read the retained
/// message: 404 when there is none is still an allowed read).
async fn rest_answer(api: &Api, token: Option<&str>, topic: &str, method: Method) -> Option<bool> {
    let path = format!("/api/v1/topics/{topic}");
    let body = (method != Method::GET).then(|| ("application/json", location(13.4, 52.5)));
    let resp = api.send(method.clone(), &path, token, body).await;
    http_verdict(resp.status().as_u16(), &[200, 202, 204, 404], &format!("{method} {path}"))
}

async fn sse_answer(app: &TestApp, token: Option<&str>, topic: &str) -> Option<bool> {
    let mut req = reqwest::Client::new()
        .get(format!("http://{}/api/v1/subscribe", app.http_addr))
        .query(&[("filter", topic)]);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("GET /api/v1/subscribe");
    // Dropping an accepted stream closes it.
    http_verdict(resp.status().as_u16(), &[200], &format!("SSE {topic}"))
}

#[tokio::test]
async fn mqtt_rest_and_sse_enforce_the_same_access_table() {
    let dir = tempfile::tempdir().unwrap();
    let (app, callers, d1, d2) = world(dir.path()).await;
    let api = app.api();
    let mut table = String::new();
    let mut disagreements = Vec::new();

    for caller in &callers {
        let mut mqtt = match &caller.mqtt {
            Some((user, pw)) => {
                Some(app.v5(&format!("{:?}", caller.who)).credentials(user, pw).connect().await)
            }
            None => {
                let refused = app.v5("anonymous").try_connect().await;
                assert!(refused.is_err(), "anonymous access is off: CONNECT must be refused");
                None
            }
        };
        for pattern in TOPICS {
            let topic = pattern.replace("D1", &d1).replace("D2", &d2);
            for op in [Op::Publish, Op::Read] {
                let want = expected(caller.who, pattern, op);
                let token = caller.token.as_deref();
                let mut answers = vec![("MQTT", mqtt_answer(&mut mqtt, &topic, op).await)];
                if caller.rest {
                    if op == Op::Publish {
                        answers.push((
                            "REST POST",
                            rest_answer(&api, token, &topic, Method::POST).await,
                        ));
                        answers.push((
                            "REST PUT",
                            rest_answer(&api, token, &topic, Method::PUT).await,
                        ));
                    } else {
                        answers.push((
                            "REST GET",
                            rest_answer(&api, token, &topic, Method::GET).await,
                        ));
                        answers.push(("SSE", sse_answer(&app, token, &topic).await));
                    }
                }
                let _ = writeln!(
                    table,
                    "{:?} {op:?} {pattern}: want {want}, got {answers:?}",
                    caller.who
                );
                for (transport, got) in answers {
                    // A refusal at the door denies everything.
                    if got.unwrap_or(false) != want {
                        disagreements.push(format!(
                            "{transport}: {:?} {op:?} {pattern} answered {got:?}, README says {want}",
                            caller.who
                        ));
                    }
                    if caller.who != Who::Anonymous && got.is_none() {
                        disagreements
                            .push(format!("{transport}: {:?} was refused at the door", caller.who));
                    }
                }
            }
        }
        if let Some(client) = mqtt {
            client.disconnect().await;
        }
    }

    assert!(disagreements.is_empty(), "{}\n\nfull table:\n{table}", disagreements.join("\n"));
}
