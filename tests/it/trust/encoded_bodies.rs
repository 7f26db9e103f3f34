//! A topic payload sent with a `Content-Encoding` is refused with 415: it
//! would be stored encoded and served back as if it were not.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::helpers::{RECV, expect_problem, spawn_app};

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn a_gzip_encoded_topic_payload_is_refused_with_415_and_not_stored() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/topics/status/door", app.http_addr);

    for (method, coding) in [
        (reqwest::Method::PUT, "gzip"),
        (reqwest::Method::POST, "deflate"),
        (reqwest::Method::PUT, "br"),
    ] {
        let resp = client
            .request(method, &url)
            .header("content-type", "text/plain")
            .header("content-encoding", coding)
            .body(gzip("open"))
            .timeout(RECV)
            .send()
            .await
            .unwrap();
        expect_problem(resp, 415, "unsupported-media-type").await;
    }

    expect_problem(app.http_get("/api/v1/topics/status/door").await, 404, "not-found").await;
    let identity = client
        .put(&url)
        .header("content-type", "text/plain")
        .header("content-encoding", "identity")
        .body("open")
        .timeout(RECV)
        .send()
        .await
        .unwrap();
    assert!(identity.status().is_success(), "identity is no encoding: {}", identity.status());
    assert_eq!(app.http_get("/api/v1/topics/status/door").await.text().await.unwrap(), "open");
}
