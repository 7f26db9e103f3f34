//! `mapcast bench page`: the live map page in headless Chromium. It fills
//! the map with `--devices` positions over MQTT, signs a viewer in, then
//! loads the page `--runs` times and reports
//!
//! - page weight: the bytes of every script and style sheet the page
//!   fetched, as sent (compressed when the server compresses) and decoded,
//!   from the browser's own Resource Timing entries of the first, cold load;
//! - time to first render: navigation start to the frame in which the page
//!   holds a marker for every device of the map, on the page's own clock
//!   (`performance.now()`), each run a reload with the session kept.
//!
//! Chromium is driven through chromedriver (W3C WebDriver); the few
//! commands needed are spoken over a plain HTTP/1.1 exchange, one
//! connection each, so the generator needs no HTTP client library.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::Connection;
use super::http::HttpTarget;
use super::wire::{self, QoS};
use super::{TargetArgs, client_id_prefix, print_report, progress};

#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The server's HTTP address (plain http://), where the page is.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http_url: String,
    /// The account the page signs in as.
    #[arg(long)]
    pub viewer: String,
    /// Its password.
    #[arg(long, env = "MAPCAST_BENCH_VIEWER_PASSWORD", hide_env_values = true)]
    pub viewer_password: String,
    /// Devices to publish one position each (QoS 0) before measuring; 0
    /// measures the map as it is.
    #[arg(short = 'k', long, default_value_t = 10_000)]
    pub devices: u32,
    /// Topic of each device; `{i}` becomes the device's index. The same ids
    /// every run, so repeated runs do not grow the map.
    #[arg(short = 't', long, default_value = "devices/bench-{i}/location")]
    pub topic: String,
    /// Measured page loads.
    #[arg(short = 'n', long, default_value_t = 5)]
    pub runs: u32,
    /// Seconds one load may take to show every marker.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    #[arg(long, default_value = "/usr/bin/chromium")]
    pub chromium: PathBuf,
    #[arg(long, default_value = "/usr/bin/chromedriver")]
    pub chromedriver: PathBuf,
}

/// One script or style sheet the page fetched.
#[derive(Debug, Clone, Serialize)]
pub struct Asset {
    pub path: String,
    /// Bytes of the body as sent (compressed or not).
    pub sent_bytes: u64,
    /// Bytes of the body once decoded.
    pub decoded_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageReport {
    pub scenario: &'static str,
    pub http: String,
    /// Features of the map the page had to draw.
    pub markers: usize,
    pub assets: Vec<Asset>,
    pub js_css_sent_bytes: u64,
    pub js_css_decoded_bytes: u64,
    /// Navigation start to every marker drawn, per run.
    pub first_render_ms: Vec<f64>,
    pub first_render_median_ms: f64,
}

pub async fn run(args: PageArgs) -> anyhow::Result<()> {
    let report = measure(args.clone()).await?;
    print_report(&report, render(&report), args.target.json)
}

pub async fn measure(args: PageArgs) -> anyhow::Result<PageReport> {
    let http = HttpTarget::parse(&args.http_url).map_err(anyhow::Error::msg)?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;

    let (status, body) = exchange(
        &http.host,
        http.port,
        "POST",
        &format!("{}/api/v1/sessions", http.prefix),
        None,
        Some(&json!({"username": args.viewer, "password": args.viewer_password})),
    )
    .await
    .with_context(|| format!("cannot reach {}", args.http_url))?;
    if status != 201 && status != 200 {
        bail!(
            "signing in as {:?} answered {status}: {}",
            args.viewer,
            String::from_utf8_lossy(&body)
        );
    }
    let session: Value = serde_json::from_slice(&body).context("the sign-in answer")?;
    let token = session["token"].as_str().context("the sign-in answer has no token")?.to_owned();

    if args.devices > 0 {
        fill_map(&args, &http, &token, timeout).await?;
    }
    let markers = map_features(&http, &token).await?;

    let driver = Driver::start(&args).await?;
    let result = measure_page(&driver, &args, &http, &token, markers, timeout).await;
    driver.quit().await;
    let (assets, runs) = result?;

    let js_css = assets.iter().filter(|a| a.path.ends_with(".js") || a.path.ends_with(".css"));
    Ok(PageReport {
        scenario: "page",
        http: args.http_url.clone(),
        markers,
        js_css_sent_bytes: js_css.clone().map(|a| a.sent_bytes).sum(),
        js_css_decoded_bytes: js_css.map(|a| a.decoded_bytes).sum(),
        assets,
        first_render_median_ms: median(&runs),
        first_render_ms: runs,
    })
}

/// Publish one position per device until the map holds them all (QoS 0 may
/// be shed under load, so the whole set is sent again while it does not).
async fn fill_map(
    args: &PageArgs,
    http: &HttpTarget,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut conn = Connection::open(&args.target, &format!("{}-page", client_id_prefix()))
        .await
        .context("cannot connect the device publisher")?;
    let give_up = Instant::now() + timeout;
    loop {
        let mut out = Vec::with_capacity(1 << 20);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for i in 0..args.devices {
            // A grid over the world, so the markers spread over the view.
            let lon = -170.0 + f64::from(i % 100) * 3.4;
            let lat = -60.0 + f64::from((i / 100) % 100) * 1.2;
            let payload = format!(
                r#"{{"type":"Feature","geometry":{{"type":"Point","coordinates":[{lon:.5},{lat:.5}]}},"properties":{{"ts":{now_ms},"speed":12.5,"battery":80}}}}"#
            );
            let topic = args.topic.replace("{i}", &i.to_string());
            wire::encode_publish(
                &mut out,
                conn.version,
                QoS::AtMostOnce,
                topic.as_bytes(),
                0,
                payload.as_bytes(),
            );
            if out.len() > 256 * 1024 {
                conn.stream.write_all(&out).await?;
                out.clear();
            }
        }
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
        let resend = Instant::now() + Duration::from_secs(15);
        loop {
            let n = map_features(http, token).await?;
            progress(format_args!("map: {n} of {} devices", args.devices));
            if n >= args.devices as usize {
                return Ok(());
            }
            if Instant::now() >= give_up {
                bail!("the map holds {n} of {} devices after {timeout:?}", args.devices);
            }
            if Instant::now() >= resend {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Features in the viewer's `GET /api/v1/map`.
async fn map_features(http: &HttpTarget, token: &str) -> anyhow::Result<usize> {
    let path = format!("{}/api/v1/map", http.prefix);
    let (status, body) = exchange(&http.host, http.port, "GET", &path, Some(token), None).await?;
    if status == 503 {
        return Ok(0); // no map built yet
    }
    if status != 200 {
        bail!("GET {path} answered {status}");
    }
    let map: Value = serde_json::from_slice(&body).context("the map is not JSON")?;
    Ok(map["features"].as_array().map_or(0, Vec::len))
}

async fn measure_page(
    driver: &Driver,
    args: &PageArgs,
    http: &HttpTarget,
    token: &str,
    markers: usize,
    timeout: Duration,
) -> anyhow::Result<(Vec<Asset>, Vec<f64>)> {
    let page = format!("http://{}:{}{}/", http.host, http.port, http.prefix);
    driver
        .command(
            "POST",
            "/timeouts",
            json!({"script": timeout.as_millis() as u64, "pageLoad": 60_000}),
        )
        .await?;
    // The first load, with an empty cache, gives the page weight (later
    // loads revalidate and fetch no bodies); then the page keeps the token
    // in session storage, as its sign-in form does, for the measured loads.
    driver.command("POST", "/url", json!({"url": page})).await?;
    let entries = driver
        .command(
            "POST",
            "/execute/sync",
            json!({"script": "return performance.getEntriesByType('resource') \
                .map(e => [new URL(e.name).pathname, e.encodedBodySize, e.decodedBodySize])",
                   "args": []}),
        )
        .await?;
    let assets = assets_of(&entries);
    driver
        .command(
            "POST",
            "/execute/sync",
            json!({"script": "sessionStorage.setItem('mapcast.token', arguments[0])", "args": [token]}),
        )
        .await?;
    driver.command("POST", "/url", json!({"url": page})).await?;
    wait_for_markers(driver, markers).await.context("signing in")?;

    let mut runs = Vec::with_capacity(args.runs as usize);
    for run in 1..=args.runs {
        driver.command("POST", "/url", json!({"url": page})).await?;
        let ms = wait_for_markers(driver, markers).await.with_context(|| format!("run {run}"))?;
        progress(format_args!("run {run}: {ms:.0} ms"));
        runs.push(ms);
    }
    Ok((assets, runs))
}

/// `performance.now()` at the first frame with a marker per map feature.
async fn wait_for_markers(driver: &Driver, markers: usize) -> anyhow::Result<f64> {
    let script = "const [n, done] = arguments; \
        const tick = () => document.querySelectorAll('path.device-marker').length >= n \
          ? done(performance.now()) : requestAnimationFrame(tick); \
        tick();";
    let value = driver
        .command("POST", "/execute/async", json!({"script": script, "args": [markers]}))
        .await?;
    value.as_f64().with_context(|| format!("the page answered {value}"))
}

/// Scripts and style sheets from Resource Timing entries `[path, sent, decoded]`.
fn assets_of(entries: &Value) -> Vec<Asset> {
    let mut assets: Vec<Asset> = entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let path = e[0].as_str()?;
            (path.ends_with(".js") || path.ends_with(".css")).then(|| Asset {
                path: path.to_owned(),
                sent_bytes: e[1].as_u64().unwrap_or(0),
                decoded_bytes: e[2].as_u64().unwrap_or(0),
            })
        })
        .collect();
    assets.sort_by(|a, b| a.path.cmp(&b.path));
    assets.dedup_by(|a, b| a.path == b.path);
    assets
}

fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn render(r: &PageReport) -> String {
    let mut out = format!("page at {}: {} markers\n", r.http, r.markers);
    for a in &r.assets {
        out.push_str(&format!(
            "  {:<36} {:>9} B sent {:>9} B decoded\n",
            a.path, a.sent_bytes, a.decoded_bytes
        ));
    }
    out.push_str(&format!(
        "page weight (JS + CSS): {} B sent, {} B decoded\n",
        r.js_css_sent_bytes, r.js_css_decoded_bytes
    ));
    let runs: Vec<String> = r.first_render_ms.iter().map(|ms| format!("{ms:.0}")).collect();
    out.push_str(&format!(
        "first render: median {:.0} ms over {} runs [{}]\n",
        r.first_render_median_ms,
        runs.len(),
        runs.join(", ")
    ));
    out
}

/// chromedriver with one headless Chromium session.
struct Driver {
    port: u16,
    session: String,
    process: Child,
    profile: PathBuf,
}

impl Driver {
    async fn start(args: &PageArgs) -> anyhow::Result<Self> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let process = Command::new(&args.chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", args.chromedriver.display()))?;
        let profile = std::env::temp_dir().join(format!("{}-chromium", client_id_prefix()));
        let mut driver = Driver { port, session: String::new(), process, profile };
        let ready = Instant::now() + Duration::from_secs(10);
        while exchange("127.0.0.1", port, "GET", "/status", None, None).await.is_err() {
            if Instant::now() >= ready {
                bail!("chromedriver did not answer on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Without the background-networking flags Chromium keeps calling
        // home, which would share the machine with the measurement.
        let chrome_args = [
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,800".into(),
            format!("--user-data-dir={}", driver.profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": args.chromium, "args": chrome_args},
        }}});
        let (status, body) =
            exchange("127.0.0.1", port, "POST", "/session", None, Some(&caps)).await?;
        let answer: Value = serde_json::from_slice(&body).context("chromedriver's answer")?;
        driver.session = answer["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no browser session ({status}): {answer}"))?
            .to_owned();
        Ok(driver)
    }

    /// One WebDriver command on the session; its `value`.
    async fn command(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        // Longer than any script or page-load timeout set on the session.
        let answer = exchange("127.0.0.1", self.port, method, &path, None, Some(&body));
        let (status, bytes) = tokio::time::timeout(Duration::from_secs(600), answer)
            .await
            .with_context(|| format!("chromedriver did not answer {method} {path}"))??;
        let answer: Value = serde_json::from_slice(&bytes).context("chromedriver's answer")?;
        if status != 200 {
            bail!("{method} {path}: {status} {}", answer["value"]);
        }
        Ok(answer["value"].clone())
    }

    async fn quit(self) {
        let path = format!("/session/{}", self.session);
        let _ = exchange("127.0.0.1", self.port, "DELETE", &path, None, None).await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One HTTP/1.1 request on its own connection: (status, body).
async fn exchange(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await?;
    // Read until the response is whole: chromedriver keeps the connection
    // open whatever `Connection: close` says.
    let mut raw = Vec::with_capacity(16 * 1024);
    loop {
        if stream.read_buf(&mut raw).await? == 0 || is_complete(&raw) {
            return parse_response(&raw);
        }
    }
}

/// Whether `raw` holds a whole response (by Content-Length or the last
/// chunk); one without either ends at EOF.
fn is_complete(raw: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = res.parse(raw) else {
        return false;
    };
    let value = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return raw.ends_with(b"0\r\n\r\n");
    }
    value("content-length")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| raw.len() >= head + n)
}

/// Status and body of a whole response (Content-Length, chunked or to EOF).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = res.parse(raw)? else {
        bail!("the response ended inside its head");
    };
    let status = res.code.unwrap_or(0);
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let rest = &raw[head..];
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return Ok((status, dechunk(rest)?));
    }
    let body = match header("content-length").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if n <= rest.len() => rest[..n].to_vec(),
        Some(n) => bail!("the body ended after {} of {n} bytes", rest.len()),
        None => rest.to_vec(),
    };
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").context("a chunk size")?;
        let size = std::str::from_utf8(&rest[..line_end])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("a chunk ended early");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_by_length_by_chunks_and_to_the_end() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(r, (200, b"ok".to_vec()));
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r, (201, b"abcde".to_vec()));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\ngone").unwrap();
        assert_eq!(r, (404, b"gone".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }

    #[test]
    fn a_response_is_complete_by_its_length_or_last_chunk() {
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no"));
        assert!(is_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        ));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"));
    }

    #[test]
    fn only_scripts_and_style_sheets_count_once_each() {
        let entries = json!([
            ["/ui/app.js", 6000, 21000],
            ["/api/v1/map", 900, 900],
            ["/ui/app.css", 1100, 2900],
            ["/ui/app.js", 0, 21000]
        ]);
        let assets = assets_of(&entries);
        let paths: Vec<_> = assets.iter().map(|a| (a.path.as_str(), a.sent_bytes)).collect();
        assert_eq!(paths, [("/ui/app.css", 1100), ("/ui/app.js", 6000)]);
    }

    #[test]
    fn the_median_of_odd_and_even_runs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
