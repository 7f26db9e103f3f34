//! Locations, topics-as-resources, the map and SSE as the tests use them:
//! payload builders, REST calls that return what the test asserts on, and
//! an SSE reader.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, Response};
use serde_json::Value;

use super::{RECV, TestApp};

/// How long a test waits for the map updater (1 s interval in tests).
pub const MAP_WAIT: Duration = Duration::from_secs(8);

/// A fixed `properties.ts` an hour before this test process started: tests
/// that order fixes by `ts` add small offsets to it, and every such fix is
/// recent enough for the server to believe it.
pub fn an_hour_ago_ms() -> i64 {
    static BASE: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 - 3_600_000
    });
    *BASE
}

/// A valid location payload fixed now.
pub fn location(lon: f64, lat: f64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    location_at(lon, lat, now)
}

/// A valid location payload with `properties.ts` = `ts_ms` and a few extras.
pub fn location_at(lon: f64, lat: f64, ts_ms: i64) -> String {
    serde_json::json!({
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"ts": ts_ms, "speed": 12.5, "battery": 80, "kind": "car"}
    })
    .to_string()
}

/// Test settings for this capability: a map tick every second.
pub fn fast_map(s: &mut mapcast::config::Settings) {
    s.map.interval_secs = 1;
}

impl TestApp {
    /// `METHOD /api/v1/topics/{topic}` with `body` as `content_type`, anonymous.
    pub async fn topic_request(
        &self,
        method: Method,
        topic: &str,
        query: &str,
        body: Option<(&str, String)>,
    ) -> Response {
        self.api().send(method, &format!("/api/v1/topics/{topic}{query}"), None, body).await
    }

    /// `PUT /api/v1/topics/{topic}` (publish retained) as JSON.
    pub async fn put_json(&self, topic: &str, body: &str) -> Response {
        self.topic_request(Method::PUT, topic, "", Some(("application/json", body.to_owned())))
            .await
    }

    /// `GET /api/v1/map{query}` with extra headers.
    pub async fn get_map(&self, query: &str, headers: &[(&str, &str)]) -> Response {
        // No transparent decompression: the tests look at the encoding.
        let client = reqwest::Client::builder().no_gzip().build().expect("a client");
        let mut req =
            client.get(format!("http://{}/api/v1/map{query}", self.http_addr)).timeout(RECV);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("GET /api/v1/map")
    }

    /// Poll `/api/v1/map` until `ready` holds for the document; panics after
    /// [`MAP_WAIT`].
    pub async fn wait_for_map(&self, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + MAP_WAIT;
        let mut last = Value::Null;
        while tokio::time::Instant::now() < deadline {
            let resp = self.get_map("", &[]).await;
            if resp.status() == 200 {
                last = resp.json().await.expect("the map is JSON");
                if ready(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the map never got there within {MAP_WAIT:?}; last: {last}");
    }

    /// `GET /api/v1/subscribe?filter=...` as an open event stream.
    pub async fn sse(&self, filter: &str) -> Sse {
        Sse::open(self.sse_request(filter).await).await
    }

    /// The raw response of a subscribe request (for the failure cases).
    pub async fn sse_request(&self, filter: &str) -> Response {
        self.sse_request_with(&[("filter", filter)]).await
    }

    /// `GET /api/v1/subscribe` with `query` (e.g. a filter and a ticket) and
    /// no credentials, as a browser's `EventSource` sends it.
    pub async fn sse_request_with(&self, query: &[(&str, &str)]) -> Response {
        reqwest::Client::new()
            .get(format!("http://{}/api/v1/subscribe", self.http_addr))
            .query(query)
            .send()
            .await
            .expect("GET /api/v1/subscribe")
    }
}

/// The IDs of a FeatureCollection's features.
pub fn feature_ids(map: &Value) -> Vec<String> {
    map["features"]
        .as_array()
        .map(|fs| fs.iter().map(|f| f["id"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

/// An open Server-Sent Events stream.
pub struct Sse {
    resp: Response,
    buf: String,
}

impl Sse {
    /// The stream of an accepted subscribe request; panics unless it is one.
    pub async fn open(resp: Response) -> Self {
        assert_eq!(resp.status(), 200, "SSE refused: {}", resp.text().await.unwrap_or_default());
        let mut sse = Sse { resp, buf: String::new() };
        // The server opens with a comment once subscribed.
        sse.next_block(RECV).await.expect("the stream opens");
        sse
    }

    /// The next event's `data:` as JSON (comments skipped); panics after [`RECV`].
    pub async fn next_event(&mut self) -> Value {
        match self.try_next_event(RECV).await {
            Some(v) => v,
            None => panic!("no SSE event within {RECV:?}"),
        }
    }

    /// The next event within `timeout`, if any.
    pub async fn try_next_event(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self.next_block(left).await?;
            let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if !data.is_empty() {
                return Some(serde_json::from_str(&data.join("\n")).expect("SSE data is JSON"));
            }
        }
    }

    /// The next event's `id:` and `data:` (comments skipped); panics after [`RECV`].
    pub async fn next_event_with_id(&mut self) -> (Option<String>, Value) {
        loop {
            let block = self.next_block(RECV).await.expect("an SSE event");
            let id = block.lines().find_map(|l| l.strip_prefix("id: ")).map(str::to_owned);
            let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if !data.is_empty() {
                return (id, serde_json::from_str(&data.join("\n")).expect("SSE data is JSON"));
            }
        }
    }

    /// The next block with data: its `event:` name (`None` for a plain
    /// message event) and its `data:` as JSON.
    pub async fn next_named_event(&mut self) -> (Option<String>, Value) {
        loop {
            let block = self.next_block(RECV).await.expect("an SSE event");
            let name = block.lines().find_map(|l| l.strip_prefix("event: ")).map(str::to_owned);
            let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if !data.is_empty() {
                return (name, serde_json::from_str(&data.join("\n")).expect("SSE data is JSON"));
            }
        }
    }

    /// Whether the server ends the stream within `timeout` (events and
    /// heartbeats before the end are skipped).
    pub async fn ended_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next blank-line-terminated block.
    async fn next_block(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block = self.buf[..end].to_owned();
                self.buf.drain(..end + 2);
                return Some(block);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }
}
