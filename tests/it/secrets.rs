//! No secret ever leaves the process: one full scenario against the real
//! binary — every way a password, device secret, bearer token, SSE ticket or
//! Elasticsearch credential enters it, good and bad, plus a crash — then a
//! grep of every byte it wrote: its output, every file in its data dir
//! (crash reports, spool, database), every document shipped to
//! Elasticsearch, every OTLP export and every HTTP error body.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::elastic::{APP, CRASH, shipping_config};
use crate::helpers::{
    Api, EsBulk, OtlpReceiver, RECV, ServerProcess, V3Options, V5Options, location, mapcast_cli,
};

const ADMIN_PW: &str = "admin pw/Q7xKz31+hush";
const USER_PW: &str = "user pw/Lm94Rtt8+hush";
const WRONG_PW: &str = "wrong pw/Zz81Kqq+hush";
const BOGUS_TOKEN: &str = "bogusTokenHn27Xcv4411";
const ES_USER: &str = "shipper";
const ES_PASSWORD: &str = "es pw/Wq62Lop+hush";
const ES_API_KEY: &str = "ZXNBcGlLZXlSdDU1TW5vOmhpZGRlbg==";

/// The forms a secret could be written in: as is, base64 (also as a Basic
/// credential with `user`) and percent-encoded.
fn forms(secret: &str, user: Option<&str>) -> Vec<String> {
    let mut out = vec![
        secret.to_owned(),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        percent_encode(secret),
    ];
    if let Some(user) = user {
        out.push(STANDARD.encode(format!("{user}:{secret}")));
    }
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every file under `dir`, as (path, bytes).
async fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(mut entries) = tokio::fs::read_dir(&next).await else { continue };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if let Ok(bytes) = tokio::fs::read(&path).await {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Records the body of every refused request for the grep.
#[derive(Default)]
struct ErrorBodies(Vec<(String, String)>);

impl ErrorBodies {
    async fn expect(&mut self, what: &str, resp: reqwest::Response, status: u16) {
        let got = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(got, status, "{what}: {body}");
        self.0.push((what.to_owned(), body));
    }
}

#[tokio::test]
async fn no_secret_appears_in_any_output_of_a_full_scenario() {
    let es = EsBulk::start().await;
    let otlp = OtlpReceiver::start().await;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let data_arg = data.to_str().unwrap();
    let config = root.path().join("mapcast.toml");
    let extra = format!(
        "[telemetry.otlp]\nendpoint = \"{}\"\nprotocol = \"http/json\"\n\
         [log]\nlevel = \"debug\"\n[debug]\npanic_endpoint = true\n",
        otlp.url()
    );
    let es_auth = format!(
        "username = \"{ES_USER}\"\npassword = \"{ES_PASSWORD}\"\napi_key = \"{ES_API_KEY}\"\n"
    );
    // The credentials belong to `[telemetry.elasticsearch]`, which
    // `shipping_config` ends with before `extra`.
    let toml = shipping_config(&es.url(), &format!("{es_auth}{extra}"));
    tokio::fs::write(&config, toml).await.unwrap();
    let mut cli_output = String::new();

    // The admin comes from the command line, once right and once a duplicate.
    let add = ["user", "add", "--username", "root", "--admin", "--password-stdin", "--create"];
    let with_dir = |args: &[&'static str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--data-dir", data_arg]);
        v
    };
    let (ok, out, err) = mapcast_cli(&with_dir(&add), &format!("{ADMIN_PW}\n")).await;
    assert!(ok, "mapcast user add: {err}");
    cli_output.push_str(&format!("{out}\n{err}\n"));
    let (ok, out, err) = mapcast_cli(&with_dir(&add), &format!("{WRONG_PW}\n")).await;
    assert!(!ok, "a duplicate user name must fail");
    cli_output.push_str(&format!("{out}\n{err}\n"));

    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]).await;
    let api = Api::new(server.http_addr);
    let mut errors = ErrorBodies::default();
    // The first two sign-in log lines are refused by Elasticsearch, so they
    // land in the dead-letter file, which is grepped too. (Only two: the
    // crash report quotes them in its breadcrumbs and must get through.)
    es.fail_items("token issued", 400, Some(2));

    // Everything that works.
    let admin = api.login("root", ADMIN_PW).await;
    api.register("ann", USER_PW).await;
    let token = api.login("ann", USER_PW).await;
    let car = api.create_device(&token, "Golf", "car").await;
    assert_eq!(api.get("/api/v1/sessions/current", Some(&token)).await.status(), 200);
    let ticket_resp =
        api.post_json("/api/v1/subscribe/tickets", Some(&token), &json!({"filter": "map/#"})).await;
    assert!(ticket_resp.status().is_success(), "ticket: {}", ticket_resp.status());
    let ticket: Value = ticket_resp.json().await.unwrap();
    let ticket = ticket["ticket"].as_str().expect("a ticket").to_owned();
    let sse_path = format!("/api/v1/subscribe?filter=map%2F%23&ticket={}", percent_encode(&ticket));
    let stream = api.get(&sse_path, None).await;
    assert_eq!(stream.status(), 200, "the ticket opens a stream");
    drop(stream);
    let mut golf =
        V5Options::new("golf", server.mqtt_addr).credentials(&car.id, &car.secret).connect().await;
    golf.publish_qos1(&format!("devices/{}/location", car.id), true, location(13.4, 52.5)).await;
    let ann_v5 =
        V5Options::new("ann-v5", server.mqtt_addr).credentials("ann", USER_PW).connect().await;
    let mut ann_v3 =
        V3Options::new("ann-v3", server.mqtt_addr).credentials("ann", &token).connect().await;

    // Everything that must be refused.
    let reused = api.get(&sse_path, None).await;
    errors.expect("a reused ticket", reused, 401).await;
    let wrong_login = api
        .post_json("/api/v1/sessions", None, &json!({"username": "ann", "password": WRONG_PW}))
        .await;
    errors.expect("a wrong password", wrong_login, 401).await;
    let short = api
        .post_json("/api/v1/users", None, &json!({"username": "bob", "password": "2short"}))
        .await;
    errors.expect("a too short password", short, 422).await;
    let taken = api
        .post_json("/api/v1/users", None, &json!({"username": "ann", "password": USER_PW}))
        .await;
    errors.expect("a taken user name", taken, 409).await;
    errors
        .expect(
            "an unknown token",
            api.get("/api/v1/sessions/current", Some(BOGUS_TOKEN)).await,
            401,
        )
        .await;
    for (id, user, password) in [
        ("wrong-secret", car.id.as_str(), WRONG_PW),
        ("wrong-password", "ann", WRONG_PW),
        ("bogus-token", "ann", BOGUS_TOKEN),
    ] {
        let refused =
            V5Options::new(id, server.mqtt_addr).credentials(user, password).try_connect().await;
        assert!(refused.is_err(), "{id} must be refused");
    }
    let revoked = api.delete("/api/v1/sessions/current", Some(&token)).await;
    assert_eq!(revoked.status(), 204);
    // Revoking the token closed the connection that signed in with it.
    ann_v3.wait_closed(RECV).await;
    errors
        .expect("a revoked token", api.get("/api/v1/sessions/current", Some(&token)).await, 401)
        .await;
    let after_revoke =
        V5Options::new("revoked", server.mqtt_addr).credentials("ann", &token).try_connect().await;
    assert!(after_revoke.is_err(), "a revoked token must not connect");

    // A crash, with the admin's token on the request.
    let crash = api.post_json("/api/v1/admin/debug/panic", Some(&admin), &json!({})).await;
    errors.expect("a panicking request", crash, 500).await;
    // And one in an MQTT connection that signed in with a password.
    let mut victim =
        V3Options::new("victim", server.mqtt_addr).credentials("root", ADMIN_PW).connect().await;
    victim.publish("$debug/panic", rumqttc::QoS::AtMostOnce, false, "boom").await;
    victim.wait_closed(RECV).await;

    golf.disconnect().await;
    ann_v5.disconnect().await;
    let shipped = es
        .wait_for(Duration::from_secs(10), |es| {
            let docs = es.accepted();
            docs.iter().any(|d| d.index == CRASH) && docs.iter().any(|d| d.index == APP)
        })
        .await;
    assert!(shipped, "no crash and app documents shipped; violations: {:?}", es.violations());
    let deadline = tokio::time::Instant::now() + RECV;
    while otlp.raw_bodies().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = server.logs();
    server.terminate(Duration::from_secs(10)).await.expect("the server stops on SIGTERM");

    // Gather every byte the product wrote.
    let mut outputs: Vec<(String, Vec<u8>)> = vec![
        ("server output".into(), logs.clone().into_bytes()),
        ("CLI output".into(), cli_output.into_bytes()),
    ];
    outputs.extend(files_under(&data).await);
    outputs.extend(
        es.accepted()
            .iter()
            .map(|d| (format!("{} doc {}", d.index, d.id), d.doc.to_string().into())),
    );
    outputs.extend(otlp.raw_bodies().iter().map(|b| ("OTLP export".to_owned(), b.to_vec())));
    outputs.extend(
        errors.0.iter().map(|(what, body)| (format!("body of {what}"), body.clone().into())),
    );

    // Not vacuous: the scenario did leave traces everywhere that is grepped.
    assert!(logs.contains("token issued"), "the log must show the flow:\n{logs}");
    let crash_files = files_under(&data.join("crashes")).await.len();
    assert!(crash_files >= 2, "not both crash reports in {}", data.display());
    let dead_letters = tokio::fs::metadata(data.join("telemetry/dead-letter.ndjson")).await;
    assert!(dead_letters.is_ok_and(|m| m.len() > 0), "nothing dead-lettered");
    assert!(!otlp.raw_bodies().is_empty(), "no OTLP export received");
    assert!(errors.0.iter().all(|(_, body)| !body.is_empty()), "{:?}", errors.0);
    // The grep does see what sits next to the secrets: the device's id, and
    // the Elasticsearch user in the crash report's configuration.
    let seen = |needle: &str| outputs.iter().any(|(_, bytes)| contains(bytes, needle));
    assert!(seen(&car.id), "the device id appears nowhere: the grep looks at the wrong bytes");
    let crash_docs: Vec<_> = es.accepted().into_iter().filter(|d| d.index == CRASH).collect();
    assert!(
        crash_docs.iter().any(|d| d.doc.to_string().contains(ES_USER)),
        "the crash report's configuration lacks the Elasticsearch section: {crash_docs:?}"
    );

    let secrets: Vec<(&str, Vec<String>)> = vec![
        ("admin password", forms(ADMIN_PW, Some("root"))),
        ("user password", forms(USER_PW, Some("ann"))),
        ("wrong password", forms(WRONG_PW, Some("ann"))),
        ("unknown token", forms(BOGUS_TOKEN, None)),
        ("user token", forms(&token, Some("ann"))),
        ("admin token", forms(&admin, None)),
        ("device secret", forms(&car.secret, Some(&car.id))),
        ("SSE ticket", forms(&ticket, None)),
        ("Elasticsearch password", forms(ES_PASSWORD, Some(ES_USER))),
        ("Elasticsearch API key", forms(ES_API_KEY, None)),
    ];
    let mut leaks = Vec::new();
    for (what, forms) in &secrets {
        for form in forms {
            for (place, bytes) in &outputs {
                if contains(bytes, form) {
                    leaks.push(format!("the {what} ({form:?}) appears in {place}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
