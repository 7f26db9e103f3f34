//! Password-hash exhaustion: every sign-up, sign-in and password CONNECT
//! costs an argon2 computation of 19 MiB. A burst of them must neither grow
//! the server without bound nor starve the devices already in service: the
//! surplus is told "busy" (REST 503, MQTT 5 0x89, MQTT 3.1.1 0x03).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use mapcast_bench::wire::Version;
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

use super::{connect_from, host, http_from};
use crate::helpers::{Api, ServerProcess, V5Options, location, rss_kib};

/// Attackers of each kind, each sending its next request as soon as the
/// last is answered, for [`BURST_FOR`].
const BURST: usize = 150;
const BURST_FOR: Duration = Duration::from_secs(4);
const MIB: u64 = 1024;

/// Hashing on two threads; no lockout or rate gets in the way, so every
/// request of the burst reaches the password hashing.
const CONFIG: &str = "
[broker]
max_connect_rate_per_ip = 0
[auth.lockout]
max_failures_per_identity = 0
max_failures_per_address = 0
[auth.hashing]
threads = 2
rate_per_address = 0
";

#[derive(Default)]
struct Answers {
    rest_busy: AtomicU64,
    rest_other: AtomicU64,
    v5_busy: AtomicU64,
    v3_busy: AtomicU64,
    mqtt_other: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_password_work_stays_bounded_answers_busy_and_lets_a_known_device_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(dir.path(), CONFIG, &[]).await;
    let api = Api::new(server.http_addr);
    let token = api.sign_up("owner").await;
    let car = api.create_device(&token, "car", "car").await;
    // The car has connected before: its secret check is remembered.
    V5Options::new("car", server.mqtt_addr)
        .credentials(&car.id, &car.secret)
        .connect()
        .await
        .disconnect()
        .await;
    let pid = server.pid();
    let baseline = rss_kib(pid);

    // Arrange: a sampler of the server's resident memory, and the car
    // reconnecting and publishing all through the burst.
    let running = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = tokio::spawn({
        let (running, peak) = (running.clone(), peak.clone());
        async move {
            while running.load(Relaxed) {
                peak.fetch_max(rss_kib(pid), Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let legit = tokio::spawn({
        let (running, car, mqtt) = (running.clone(), car.clone(), server.mqtt_addr);
        async move {
            let mut took = Vec::new();
            while running.load(Relaxed) {
                let start = Instant::now();
                let mut client = V5Options::new("car", mqtt)
                    .credentials(&car.id, &car.secret)
                    .try_connect()
                    .await
                    .unwrap_or_else(|closed| panic!("the car was refused: {closed:?}"));
                let topic = format!("devices/{}/location", car.id);
                client.publish_qos1(&topic, false, location(13.4, 52.5)).await;
                took.push(start.elapsed());
                client.disconnect().await;
            }
            took
        }
    });

    // Act: the burst, all at once.
    let answers = Arc::new(Answers::default());
    let mut burst = JoinSet::new();
    let http = http_from(host(1));
    let base = format!("http://{}", server.http_addr);
    let end = Instant::now() + BURST_FOR;
    let rest = |path: &'static str, body: Box<dyn Fn(usize) -> serde_json::Value + Send>| {
        let (http, url, answers) = (http.clone(), format!("{base}{path}"), answers.clone());
        async move {
            for n in 0.. {
                if Instant::now() > end {
                    break;
                }
                count_rest(&answers, http.post(&url).json(&body(n)).send().await);
            }
        }
    };
    for i in 0..BURST {
        // Unknown names and a wrong password for a real one.
        let username = if i % 2 == 0 { format!("guess-{i}") } else { "owner".into() };
        let guess = move |_| json!({"username": username, "password": "wrong horse battery"});
        burst.spawn(rest("/api/v1/sessions", Box::new(guess)));
        let sign_up = move |n| json!({"username": format!("new-{i}-{n}"), "password": "correct horse battery"});
        burst.spawn(rest("/api/v1/users", Box::new(sign_up)));
        for version in [Version::V5, Version::V311] {
            let (answers, mqtt) = (answers.clone(), server.mqtt_addr);
            burst.spawn(async move {
                let id = format!("guess-{version:?}-{i}");
                while Instant::now() < end {
                    let (_stream, code) =
                        connect_from(host(1), mqtt, version, &id, &id, "wrong horse battery").await;
                    let busy = match (version, code) {
                        (Version::V5, Some(0x89)) => &answers.v5_busy,
                        (Version::V311, Some(0x03)) => &answers.v3_busy,
                        _ => &answers.mqtt_other,
                    };
                    busy.fetch_add(1, Relaxed);
                }
            });
        }
    }
    while let Some(done) = burst.join_next().await {
        done.expect("a burst request");
    }
    running.store(false, Relaxed);
    sampler.await.unwrap();
    let mut took = legit.await.unwrap();

    // Assert: bounded, busy answers, the car unharmed.
    let growth_mib = peak.load(Relaxed).saturating_sub(baseline) / MIB;
    let a = &answers;
    eprintln!(
        "baseline {} MiB, peak growth {growth_mib} MiB; REST busy {} other {}; v5 0x89 {}, v3 0x03 {}, MQTT other {}",
        baseline / MIB,
        a.rest_busy.load(Relaxed),
        a.rest_other.load(Relaxed),
        a.v5_busy.load(Relaxed),
        a.v3_busy.load(Relaxed),
        a.mqtt_other.load(Relaxed),
    );
    assert!(growth_mib < 256, "RSS grew {growth_mib} MiB during the burst");
    assert!(a.rest_busy.load(Relaxed) > 0, "no REST 503 busy answer");
    assert!(a.v5_busy.load(Relaxed) > 0, "no MQTT 5 CONNACK 0x89");
    assert!(a.v3_busy.load(Relaxed) > 0, "no MQTT 3.1.1 CONNACK 0x03");
    took.sort();
    assert!(took.len() >= 10, "the car got only {} rounds in during the burst", took.len());
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    eprintln!("car connect+publish: {} samples, p99 {p99:?}", took.len());
    assert!(p99 < Duration::from_secs(1), "the car's p99 connect+publish took {p99:?}");

    // Memory goes back: the burst's connections and requests are gone, and
    // hashing keeps at most its two blocks.
    let deadline = Instant::now() + Duration::from_secs(20);
    let settled = loop {
        let now = rss_kib(pid);
        if now.saturating_sub(baseline) < 64 * MIB || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let after_mib = settled.saturating_sub(baseline) / MIB;
    eprintln!("after the burst: {after_mib} MiB above baseline");
    assert!(after_mib < 64, "RSS stayed {after_mib} MiB above its baseline after the burst");
    assert!(server.logs().contains("password hashing is busy"), "no busy warning logged");
    assert!(!server.logs().contains("wrong horse battery"), "a password reached the logs");
}

fn count_rest(answers: &Answers, resp: reqwest::Result<reqwest::Response>) {
    let resp = resp.expect("the server answers");
    let busy = resp.status() == StatusCode::SERVICE_UNAVAILABLE
        && resp.headers().get("retry-after").is_some_and(|v| v == "1");
    if busy { &answers.rest_busy } else { &answers.rest_other }.fetch_add(1, Relaxed);
}

#[tokio::test]
async fn sign_ups_and_sign_ins_past_an_addresss_burst_get_429_before_any_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[auth.hashing]\nrate_per_address = 0.05\nburst_per_address = 10\n";
    let server = ServerProcess::start_with_config(dir.path(), config, &[]).await;
    let base = format!("http://{}", server.http_addr);
    let (stranger, neighbour) = (http_from(host(8)), http_from(host(9)));
    let sign_up =
        |n: usize| json!({"username": format!("bot-{n}"), "password": "correct horse battery"});

    let mut statuses = Vec::new();
    for n in 0..12 {
        let path = if n % 2 == 0 { "/api/v1/users" } else { "/api/v1/sessions" };
        let resp = stranger.post(format!("{base}{path}")).json(&sign_up(n)).send().await.unwrap();
        statuses.push((resp.status(), resp.headers().get("retry-after").cloned()));
    }
    let neighbour_signs_up =
        neighbour.post(format!("{base}/api/v1/users")).json(&sign_up(99)).send().await.unwrap();

    let refused: Vec<_> = statuses.iter().skip(10).collect();
    assert!(
        statuses[..10].iter().all(|(s, _)| *s != StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    for (status, retry_after) in refused {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
        let secs: u64 = retry_after.as_ref().unwrap().to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&secs), "Retry-After {secs}");
    }
    assert_eq!(neighbour_signs_up.status(), StatusCode::CREATED, "another address is unaffected");
    let throttled = crate::helpers::metric(server.http_addr, "mapcast_auth_throttled_total").await;
    assert_eq!(throttled, 2.0);
}
