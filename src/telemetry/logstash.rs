//! `telemetry.logstash_tcp`: every document (log line, crash report,
//! metrics) also goes, one JSON object per line, to a Logstash `tcp` input
//! with the `json_lines` codec (`logstash/pipeline/mapcast.conf`).
//!
//! Like the Elasticsearch shipper it never blocks a caller: documents go to a
//! bounded queue (dropped and counted when full) drained by one thread that
//! owns the socket, reconnecting with backoff. There is no spool: with
//! Logstash in front, its persistent queue is the buffer.

use std::io::{self, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use super::metrics;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The producer side: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct LogstashSink {
    tx: SyncSender<String>,
}

impl LogstashSink {
    /// Start the writer thread for `addr` (`host:port`). With
    /// `metrics_every`, it also writes a metrics document at that interval
    /// (when no Elasticsearch shipper produces them).
    pub fn start(
        addr: String,
        capacity: usize,
        metrics_every: Option<(Duration, Box<dyn Fn() -> String + Send>)>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("mapcast-logstash".into())
            .spawn(move || run(&addr, rx, metrics_every))?;
        Ok(Self { tx })
    }

    /// Queue one document (a single-line JSON object).
    pub fn send(&self, body: &str) {
        match self.tx.try_send(body.trim_end().to_owned()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::global().telemetry_queue_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

fn run(
    addr: &str,
    rx: Receiver<String>,
    metrics_every: Option<(Duration, Box<dyn Fn() -> String + Send>)>,
) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut pending: Option<String> = None;
    let mut next_metrics = metrics_every.as_ref().map(|(every, _)| Instant::now() + *every);
    loop {
        if let (Some((every, document)), Some(at)) = (&metrics_every, next_metrics)
            && pending.is_none()
            && Instant::now() >= at
        {
            next_metrics = Some(at + *every);
            pending = Some(document());
        }
        let line = match pending.take() {
            Some(line) => line,
            None => match rx.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // Nothing queued: push what is buffered out before waiting.
                    if let Some(w) = conn.as_mut()
                        && w.flush().is_err()
                    {
                        conn = None;
                    }
                    let wait = next_metrics.map_or(Duration::from_secs(3600), |at| {
                        at.saturating_duration_since(Instant::now())
                    });
                    match rx.recv_timeout(wait) {
                        Ok(line) => line,
                        Err(RecvTimeoutError::Disconnected) => break,
                        // The metrics document is due: the loop's top writes it.
                        Err(RecvTimeoutError::Timeout) => continue,
                    }
                }
            },
        };
        if conn.is_none() {
            match connect(addr) {
                Ok(stream) => {
                    backoff = Duration::from_millis(100);
                    conn = Some(BufWriter::with_capacity(64 * 1024, stream));
                }
                Err(e) => {
                    // Keep the line; a line that cannot be sent while
                    // Logstash is away waits here, the queue fills behind it
                    // and newer documents are dropped and counted.
                    if backoff >= MAX_BACKOFF {
                        eprintln!("mapcast: Logstash at {addr} unreachable: {e}");
                    }
                    pending = Some(line);
                    #[allow(clippy::disallowed_methods, reason = "the writer's own thread")]
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let w = conn.as_mut().expect("connected above");
        if w.write_all(line.as_bytes()).and_then(|()| w.write_all(b"\n")).is_err() {
            conn = None;
            pending = Some(line);
        }
    }
    if let Some(mut w) = conn {
        let _ = w.flush();
    }
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
