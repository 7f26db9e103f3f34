//! `telemetry.logstash_tcp`: every document (log line, crash report,
//! metrics) also goes, one JSON object per line, to a Logstash `tcp` input
//! with the `json_lines` codec (`logstash/pipeline/mapcast.conf`).
//!
//! Like the Elasticsearch shipper it never blocks a caller: documents go to a
//! bounded queue (dropped and counted when full) drained by one thread that
//! owns the socket, reconnecting with backoff. There is no spool: with
//! Logstash in front, its persistent queue is the buffer.
//!
//! When Logstash is the only way out (no `telemetry.elasticsearch.url`),
//! crash reports are its to deliver: a report is marked shipped once its
//! line has been flushed to Logstash, and the reports an earlier run left
//! unshipped (the process died before sending) are queued at start.
//! Logstash gives a report its `error.id` as `_id`, so one sent twice is
//! written once.

use std::io::{self, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use super::{crash, metrics};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One queued document: its JSON line and, for a crash report this writer
/// delivers, the report's id (marked shipped once flushed).
struct Line {
    text: String,
    crash: Option<String>,
}

/// The producer side: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct LogstashSink {
    tx: SyncSender<Line>,
    /// Set when crash reports are this writer's to deliver.
    marks_crashes: bool,
}

impl LogstashSink {
    /// Start the writer thread for `addr` (`host:port`). With
    /// `metrics_every`, it also writes a metrics document at that interval
    /// (when no Elasticsearch shipper produces them). With `crash_dir`
    /// (likewise), it delivers the crash reports of that directory: those
    /// left unshipped are queued now, and each is marked once flushed.
    pub fn start(
        addr: String,
        capacity: usize,
        metrics_every: Option<(Duration, Box<dyn Fn() -> String + Send>)>,
        crash_dir: Option<PathBuf>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let sink = Self { tx, marks_crashes: crash_dir.is_some() };
        if let Some(dir) = &crash_dir {
            // Bounded by telemetry.crash_max_files; a report that does not
            // fit the queue stays unshipped for the next start.
            for (id, body) in crash::pending(dir) {
                sink.send_crash(&id, &body);
            }
        }
        std::thread::Builder::new()
            .name("mapcast-logstash".into())
            .spawn(move || run(&addr, rx, metrics_every, crash_dir))?;
        Ok(sink)
    }

    /// Queue one document (a single-line JSON object).
    pub fn send(&self, body: &str) {
        self.queue(Line { text: body.trim_end().to_owned(), crash: None });
    }

    /// Queue the crash report `id`.
    pub fn send_crash(&self, id: &str, body: &str) {
        let crash = self.marks_crashes.then(|| id.to_owned());
        self.queue(Line { text: body.trim_end().to_owned(), crash });
    }

    fn queue(&self, line: Line) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::global().telemetry_queue_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Flush `conn`; on success mark the crash reports written before it.
/// `false` when the connection failed (the reports stay unshipped).
fn flush(
    conn: &mut BufWriter<TcpStream>,
    written: &mut Vec<String>,
    crash_dir: Option<&PathBuf>,
) -> bool {
    if conn.flush().is_err() {
        written.clear();
        return false;
    }
    if let Some(dir) = crash_dir {
        for id in written.drain(..) {
            if let Err(e) = crash::mark_shipped(dir, &id) {
                eprintln!("mapcast: cannot mark crash report {id} shipped: {e}");
            }
        }
    }
    true
}

fn run(
    addr: &str,
    rx: Receiver<Line>,
    metrics_every: Option<(Duration, Box<dyn Fn() -> String + Send>)>,
    crash_dir: Option<PathBuf>,
) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut pending: Option<Line> = None;
    // Crash reports written to the socket buffer, not yet flushed.
    let mut written: Vec<String> = Vec::new();
    let mut next_metrics = metrics_every.as_ref().map(|(every, _)| Instant::now() + *every);
    loop {
        if let (Some((every, document)), Some(at)) = (&metrics_every, next_metrics)
            && pending.is_none()
            && Instant::now() >= at
        {
            next_metrics = Some(at + *every);
            pending = Some(Line { text: document(), crash: None });
        }
        let line = match pending.take() {
            Some(line) => line,
            None => match rx.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // Nothing queued: push what is buffered out before waiting.
                    if let Some(w) = conn.as_mut()
                        && !flush(w, &mut written, crash_dir.as_ref())
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
        if w.write_all(line.text.as_bytes()).and_then(|()| w.write_all(b"\n")).is_err() {
            conn = None;
            written.clear();
            pending = Some(line);
            continue;
        }
        written.extend(line.crash);
    }
    if let Some(mut w) = conn {
        flush(&mut w, &mut written, crash_dir.as_ref());
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
