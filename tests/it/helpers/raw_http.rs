//! A bare HTTP/1.1 connection for what a well-behaved client never sends:
//! heads or bodies that stall half-way, bytes that are not HTTP at all.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawHttp {
    stream: TcpStream,
}

/// What the server sent before it closed the connection (or before the
/// wait ran out).
#[derive(Debug)]
pub struct RawAnswer {
    pub text: String,
    /// Whether the server closed the connection within the wait.
    pub closed: bool,
}

impl RawAnswer {
    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        self.text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The body of the first response (after the blank line).
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    /// Whether the head carries `header: value` (case-insensitive).
    pub fn has_header(&self, header: &str, value: &str) -> bool {
        let head = self.text.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
        head.lines().any(|l| l == format!("{header}: {value}").to_ascii_lowercase())
    }
}

impl RawHttp {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to the HTTP listener");
        Self { stream }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to the HTTP listener");
    }

    /// Everything the server sends until it closes the connection, waiting
    /// at most `wait`.
    pub async fn read_until_closed(&mut self, wait: Duration) -> RawAnswer {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let closed = loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break false,
            }
        };
        RawAnswer { text: String::from_utf8_lossy(&buf).into_owned(), closed }
    }
}
