//! The REST API as the tests use it: JSON in, JSON or problem+json out, plus
//! the `mapcast user add` / `device add` command line.

use std::net::SocketAddr;
use std::process::Stdio;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{RECV, TestApp};

/// A password every test user gets unless a test says otherwise.
pub const PASSWORD: &str = "correct horse battery";

/// A device's MQTT credentials: user name = id, password = secret.
#[derive(Debug, Clone)]
pub struct DeviceCreds {
    pub id: String,
    pub secret: String,
}

/// A REST client for one server.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl TestApp {
    pub fn api(&self) -> Api {
        Api::new(self.http_addr)
    }
}

impl Api {
    pub fn new(http_addr: SocketAddr) -> Self {
        Self { client: reqwest::Client::new(), base: format!("http://{http_addr}") }
    }

    /// Any request; `body` is sent as-is with `content_type`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Response {
        let mut req =
            self.client.request(method.clone(), format!("{}{path}", self.base)).timeout(RECV);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some((content_type, body)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        req.send().await.unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.send(Method::POST, path, token, Some(("application/json", body.to_string()))).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.send(Method::GET, path, token, None).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        self.send(Method::DELETE, path, token, None).await
    }

    /// `POST /api/v1/users`; panics unless 201. Returns the body.
    pub async fn register(&self, username: &str, password: &str) -> Value {
        let resp = self
            .post_json("/api/v1/users", None, &json!({"username": username, "password": password}))
            .await;
        expect_json(resp, StatusCode::CREATED).await
    }

    /// `POST /api/v1/sessions`; panics unless 201. Returns the token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let resp = self
            .post_json(
                "/api/v1/sessions",
                None,
                &json!({"username": username, "password": password}),
            )
            .await;
        let body = expect_json(resp, StatusCode::CREATED).await;
        body["token"].as_str().expect("a token").to_owned()
    }

    /// Register `username` with [`PASSWORD`] and sign in: its token.
    pub async fn sign_up(&self, username: &str) -> String {
        self.register(username, PASSWORD).await;
        self.login(username, PASSWORD).await
    }

    /// `POST /api/v1/devices`; panics unless 201.
    pub async fn create_device(&self, token: &str, name: &str, kind: &str) -> DeviceCreds {
        let resp = self
            .post_json("/api/v1/devices", Some(token), &json!({"name": name, "kind": kind}))
            .await;
        let body = expect_json(resp, StatusCode::CREATED).await;
        DeviceCreds {
            id: body["id"].as_str().expect("an id").to_owned(),
            secret: body["secret"].as_str().expect("a secret").to_owned(),
        }
    }
}

/// The JSON body of a response that must have `status`.
pub async fn expect_json(resp: Response, status: StatusCode) -> Value {
    let got = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Assert an RFC 9457 problem with `status` and `type` ending in `:{code}`;
/// returns the problem.
pub async fn expect_problem(resp: Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert_eq!(content_type, "application/problem+json", "body: {text}");
    let problem: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let kind = problem["type"].as_str().unwrap_or_default();
    assert!(kind.ends_with(&format!(":{code}")), "type {kind:?} is not {code:?}: {text}");
    assert_eq!(problem["status"], status, "{text}");
    assert!(problem["title"].is_string() && problem["detail"].is_string(), "{text}");
    problem
}

/// Run the `mapcast` binary with `args`, writing `stdin`; returns
/// (success, stdout, stderr).
pub async fn mapcast_cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mapcast"))
        .args(args)
        // The CLI must not pick up the developer's settings.
        .env_remove("MAPCAST_CONFIG")
        .env_remove("MAPCAST_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the mapcast binary");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.expect("run the mapcast binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mapcast user add --admin --create` on `data_dir` (which may hold no
/// database yet); panics if it fails.
pub async fn add_admin(data_dir: &std::path::Path, username: &str, password: &str) -> Value {
    let dir = data_dir.to_str().unwrap();
    let args = [
        "user",
        "add",
        "--username",
        username,
        "--admin",
        "--password-stdin",
        "--create",
        "--data-dir",
        dir,
    ];
    let (ok, stdout, stderr) = mapcast_cli(&args, &format!("{password}\n")).await;
    assert!(ok, "mapcast user add failed: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
