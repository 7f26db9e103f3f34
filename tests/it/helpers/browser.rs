//! Headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), spoken directly with reqwest: a handful of W3C
//! WebDriver commands is all the page tests need.
//!
//! Every request the browser makes off loopback goes to [`OffServer`], a
//! proxy that records it and answers nothing: a page that stays on its
//! server leaves it empty.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether the browser tests can run here; panics when
/// `MAPCAST_TEST_REQUIRE_BROWSER` is set and they cannot (CI sets it).
pub fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present && std::env::var_os("MAPCAST_TEST_REQUIRE_BROWSER").is_some() {
        panic!("MAPCAST_TEST_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing");
    }
    if !present {
        eprintln!("browser tests skipped: install chromium and chromium-driver");
    }
    present
}

/// Tell CI that the browser suite really ran (it checks for this file).
pub async fn mark_browser_ran() {
    if let Ok(dir) = std::env::var("MAPCAST_TEST_MARKER_DIR") {
        tokio::fs::create_dir_all(&dir).await.expect("create MAPCAST_TEST_MARKER_DIR");
        tokio::fs::write(Path::new(&dir).join("browser-ran"), b"ok\n")
            .await
            .expect("write browser-ran marker");
    }
}

/// A recording proxy for everything off loopback.
pub struct OffServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl OffServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stream).lines();
                    let line = lines.next_line().await.ok().flatten().unwrap_or_default();
                    seen.lock().unwrap().push(line);
                    // Dropped unanswered: the browser sees a failed request.
                });
            }
        });
        Self { addr, requests }
    }

    /// The request lines (`CONNECT host:443 ...`, `GET http://...`) so far,
    /// but for the browser's own services: Chromium talks to Google (updates,
    /// sign-in, password checks) and preconnects to Debian's default search
    /// engine whatever page it shows, and no flag silences all of it. A page
    /// cannot reach those hosts anyway: its Content-Security-Policy admits
    /// only its server and the tile origin.
    pub fn requests(&self) -> Vec<String> {
        const BROWSER_SERVICES: &[&str] =
            &["google.com", "googleapis.com", "gstatic.com", "gvt1.com", "duckduckgo.com"];
        let service = |line: &str| {
            let target = line.split_whitespace().nth(1).unwrap_or_default();
            let host = target
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .split(['/', ':'])
                .next()
                .unwrap_or_default();
            BROWSER_SERVICES.iter().any(|s| host == *s || host.ends_with(&format!(".{s}")))
        };
        self.requests.lock().unwrap().iter().filter(|l| !service(l)).cloned().collect()
    }
}

/// One chromedriver with one browser session; both end on drop.
pub struct Browser {
    client: reqwest::Client,
    session: String,
    base: String,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go.
    pub artifacts: PathBuf,
}

impl Browser {
    /// Start chromedriver and a headless Chromium whose off-loopback
    /// traffic goes to `proxy`.
    pub async fn start(proxy: &OffServer, artifacts: PathBuf) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,800".to_owned(),
            // The browser's own services (search preconnect, clock, sign-in,
            // autofill, password checks) would talk to the internet too;
            // only the page's requests are under test.
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-domain-reliability".to_owned(),
            "--disable-client-side-phishing-detection".to_owned(),
            "--disable-search-engine-choice-screen".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--no-pings".to_owned(),
            "--dns-prefetch-disable".to_owned(),
            "--password-store=basic".to_owned(),
            "--disable-features=NetworkTimeServiceQuerying,AutofillServerCommunication,\
             PasswordLeakDetection,OptimizationHints,Translate,MediaRouter,\
             SignInProfileCreation,AccountConsistency,PreconnectToSearch,\
             NetworkPrediction,SafeBrowsing,InterestFeedContentSuggestions"
                .to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
            // Loopback bypasses a proxy by default: only off-server
            // requests reach it.
            format!("--proxy-server=http://{}", proxy.addr),
        ];
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args, "prefs": {
                    "credentials_enable_service": false,
                    "profile.password_manager_enabled": false,
                    "profile.password_manager_leak_detection": false,
                    "signin.allowed": false,
                    "search.suggest_enabled": false,
                    "net.network_prediction_options": 2,
                }},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}
        });
        let resp = client
            .post(format!("{base}/session"))
            .json(&caps)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("create a WebDriver session");
        let body: Value = resp.json().await.unwrap();
        let session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {body}"))
            .to_owned();
        tokio::fs::create_dir_all(&artifacts).await.unwrap();
        Self { client, session, base, driver, _profile: profile, artifacts }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.client.request(method, &url).timeout(Duration::from_secs(30));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "WebDriver {path} failed ({status}): {body}");
        body["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        let body = json!({"script": script, "args": args});
        self.command(reqwest::Method::POST, "/execute/sync", Some(body)).await
    }

    /// Poll `script` until it returns `true`; panics with `what` after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str) -> Duration {
        let start = tokio::time::Instant::now();
        loop {
            if self.eval(script, json!([])).await == Value::Bool(true) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                let status = self
                    .eval("return document.getElementById('status')?.textContent", json!([]))
                    .await;
                panic!("timed out after {limit:?} waiting for {what} (status: {status})");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    /// Type `text` into the element `css`, as keystrokes.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        let rect = json!({"width": width, "height": height});
        self.command(reqwest::Method::POST, "/window/rect", Some(rect)).await;
    }

    /// Save a PNG of the viewport as `{name}.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("valid base64");
        let path = self.artifacts.join(format!("{name}.png"));
        tokio::fs::write(&path, png).await.unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// End the session (the browser quits), then chromedriver.
    pub async fn quit(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.client.delete(url).timeout(Duration::from_secs(10)).send().await;
    }

    /// The browser console since the last call: `(level, message)`.
    pub async fn console(&self) -> Vec<(String, String)> {
        let logs = self.command(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"})));
        let logs = logs.await;
        logs.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or_default().to_owned(),
                            e["message"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The console's errors since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        self.console()
            .await
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .map(|(_, message)| message)
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver ends its browser with it; the session is not
        // deleted first because drop cannot wait for an HTTP answer.
        let _ = self.driver.start_kill();
    }
}
