//! A minimal HTTP/1.1 keep-alive client for `bench map`: one request at a
//! time per connection, the request bytes built once per ETag, the response
//! read into a reused buffer and dropped, so the generator costs little per
//! request next to the server it measures. Plain HTTP only.

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("TCP connect failed: {0}")]
    Connect(std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl HttpError {
    /// A short stable label for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect(_) => "http_connect",
            HttpError::Io(_) => "http_io",
            HttpError::Closed => "http_closed",
            HttpError::Malformed(_) => "http_malformed",
        }
    }
}

/// Where `--http-url` points: `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (empty for the root).
    pub prefix: String,
}

impl HttpTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(HttpTarget {
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The bytes of a `GET` for `path_and_query`, with optional bearer token
    /// and `If-None-Match`.
    pub fn get_request(
        &self,
        path_and_query: &str,
        token: Option<&str>,
        etag: Option<&str>,
    ) -> Vec<u8> {
        let mut req = format!(
            "GET {}{path_and_query} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/geo+json\r\n",
            self.prefix, self.host, self.port
        );
        if let Some(token) = token {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(etag) = etag {
            req.push_str(&format!("If-None-Match: {etag}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    }
}

/// What the benchmark keeps of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub etag: Option<String>,
    pub body_bytes: usize,
    /// The server asked to close the connection after this response.
    pub close: bool,
}

pub struct HttpConnection {
    stream: TcpStream,
    buf: BytesMut,
}

impl HttpConnection {
    pub async fn open(target: &HttpTarget) -> Result<Self, HttpError> {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(HttpError::Connect)?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection { stream, buf: BytesMut::with_capacity(64 * 1024) })
    }

    /// Send `request` and read the whole response.
    pub async fn send(&mut self, request: &[u8]) -> Result<Response, HttpError> {
        self.stream.write_all(request).await?;
        let (head_len, mut response, content_length) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            self.fill().await?;
        };
        self.buf.advance(head_len);
        while self.buf.len() < content_length {
            self.fill().await?;
        }
        self.buf.advance(content_length);
        response.body_bytes = content_length;
        Ok(response)
    }

    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(HttpError::Closed);
        }
        Ok(())
    }
}

/// The status line and headers, once complete: (head length, response,
/// body length).
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Response, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = res.code.unwrap_or(0);
    let mut response = Response { status, etag: None, body_bytes: 0, close: false };
    let mut content_length = 0usize;
    for h in res.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("");
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed(format!("content-length {value:?}")))?;
        } else if h.name.eq_ignore_ascii_case("etag") {
            response.etag = Some(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("connection") {
            response.close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed(format!("unsupported transfer-encoding {value:?}")));
        }
    }
    // 1xx, 204 and 304 never have a body.
    if status == 304 || status == 204 || (100..200).contains(&status) {
        content_length = 0;
    }
    Ok(Some((head_len, response, content_length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_prefix() {
        let t = HttpTarget::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.prefix.as_str()), ("127.0.0.1", 8080, ""));
        let t = HttpTarget::parse("http://maps.example/base/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.prefix.as_str()), ("maps.example", 80, "/base"));
        assert!(HttpTarget::parse("https://x:1").is_err());
        assert!(HttpTarget::parse("http://:1").is_err());
        assert!(HttpTarget::parse("http://x:port").is_err());
    }

    #[test]
    fn a_request_carries_token_and_etag_only_when_given() {
        let t = HttpTarget::parse("http://h:1").unwrap();
        let plain = String::from_utf8(t.get_request("/api/v1/map", None, None)).unwrap();
        assert_eq!(
            plain,
            "GET /api/v1/map HTTP/1.1\r\nHost: h:1\r\nAccept: application/geo+json\r\n\r\n"
        );
        let full = String::from_utf8(t.get_request("/m", Some("tok"), Some("\"7\""))).unwrap();
        assert!(full.contains("Authorization: Bearer tok\r\n"));
        assert!(full.ends_with("If-None-Match: \"7\"\r\n\r\n"));
    }

    #[test]
    fn heads_parse_with_and_without_a_body() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let (n, r, len) =
            parse_head(b"HTTP/1.1 200 OK\r\nETag: \"3\"\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap()
                .unwrap();
        assert_eq!((n, r.status, r.etag.as_deref(), len), (49, 200, Some("\"3\""), 5));
        let (_, r, len) = parse_head(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, len), (304, 0));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"nonsense\r\n\r\n").is_err());
    }
}
