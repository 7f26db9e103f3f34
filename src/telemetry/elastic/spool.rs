//! The on-disk spool: documents that could not be shipped yet, in order,
//! in NDJSON segment files `{seq:020}.ndjson` (one envelope per line:
//! `{"stream":..,"id":..,"doc":{..}}`). Bounded: past `max_bytes` the oldest
//! segment is dropped, counted and logged. Survives restarts: a new process
//! replays what an old one left.
//!
//! Blocking file I/O: the shipper calls it through `spawn_blocking`.
#![allow(
    clippy::disallowed_methods,
    reason = "blocking file I/O by design; callers run it on blocking threads"
)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Doc, Stream};
use crate::telemetry::metrics;

/// A segment is closed for appending past this size.
const SEGMENT_MAX_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    stream: Stream,
    id: &'a str,
    #[serde(borrow)]
    doc: &'a RawValue,
}

#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    bytes: u64,
    docs: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// The segment being appended to, with its open file.
    current: Option<(u64, File)>,
}

impl Spool {
    /// Open (creating) the spool directory and take over its segments.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(seq) = segment_seq(&path) else { continue };
            let bytes = fs::metadata(&path)?.len();
            let docs = BufReader::new(File::open(&path)?).lines().count() as u64;
            segments.insert(seq, Segment { bytes, docs });
        }
        let spool = Self { dir: dir.to_owned(), max_bytes, segments, current: None };
        spool.publish_gauges();
        Ok(spool)
    }

    pub fn is_empty(&self) -> bool {
        self.segments.values().all(|s| s.docs == 0)
    }

    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    pub fn docs(&self) -> u64 {
        self.segments.values().map(|s| s.docs).sum()
    }

    /// Append `docs` after everything spooled so far (fsync'd), then enforce the bound.
    pub fn append(&mut self, docs: &[Doc]) -> io::Result<()> {
        let mut lines = Vec::with_capacity(docs.len());
        for doc in docs {
            let Ok(raw) = RawValue::from_string(doc.body.clone()) else {
                tracing::warn!(id = %doc.id, "not JSON; left out of the spool");
                continue;
            };
            let env = Envelope { stream: doc.stream, id: &doc.id, doc: &raw };
            lines.push(serde_json::to_string(&env).map_err(io::Error::other)? + "\n");
        }
        // A batch larger than the whole bound keeps only its newest documents.
        let mut total: u64 = lines.iter().map(|l| l.len() as u64).sum();
        let mut skip = 0;
        while total > self.max_bytes && skip < lines.len() {
            total -= lines[skip].len() as u64;
            skip += 1;
        }
        if skip > 0 {
            self.count_dropped(
                skip as u64,
                "telemetry spool full: oldest documents of a batch dropped",
            );
        }
        // Segments hold at most a quarter of the bound each, so dropping the
        // oldest ones keeps the spool within the bound.
        let segment_limit = (self.max_bytes / 4).clamp(1, SEGMENT_MAX_BYTES);
        let mut lines = lines[skip..].iter().peekable();
        while lines.peek().is_some() {
            let seq = match &self.current {
                Some((seq, _))
                    if self.segments.get(seq).is_some_and(|s| s.bytes < segment_limit) =>
                {
                    *seq
                }
                _ => self.roll()?,
            };
            let room =
                segment_limit - self.segments.get(&seq).map_or(0, |s| s.bytes).min(segment_limit);
            let mut text = String::new();
            let mut count = 0u64;
            // At least one line per segment, however long.
            while let Some(line) =
                lines.next_if(|l| count == 0 || ((text.len() + l.len()) as u64) <= room)
            {
                text.push_str(line);
                count += 1;
            }
            // Room first, so the spool is within its bound on disk at every
            // moment, not only once the write is done.
            self.enforce_bound(text.len() as u64);
            let Some((_, file)) = self.current.as_mut().filter(|(c, _)| *c == seq) else {
                unreachable!("the segment being written is never the one dropped");
            };
            file.write_all(text.as_bytes())?;
            file.sync_data()?;
            let seg = self.segments.entry(seq).or_default();
            seg.bytes += text.len() as u64;
            seg.docs += count;
            if seg.bytes >= segment_limit {
                self.current = None;
            }
            self.enforce_bound(0);
        }
        self.publish_gauges();
        Ok(())
    }

    fn count_dropped(&self, docs: u64, message: &'static str) {
        metrics::global().spool_dropped.fetch_add(docs, Relaxed);
        tracing::error!(documents = docs, max_bytes = self.max_bytes, "{message}");
    }

    /// The oldest segment's documents, closing it for appending first.
    pub fn oldest(&mut self) -> io::Result<Option<(u64, Vec<Doc>)>> {
        let Some((&seq, _)) = self.segments.iter().next() else { return Ok(None) };
        if self.current.as_ref().is_some_and(|(c, _)| *c == seq) {
            self.current = None;
        }
        let text = fs::read_to_string(self.path(seq))?;
        let mut docs = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            match serde_json::from_str::<Envelope<'_>>(line) {
                Ok(env) => docs.push(Doc {
                    stream: env.stream,
                    id: env.id.to_owned(),
                    body: env.doc.get().to_owned(),
                }),
                // A torn last line after a crash: skip it, keep the rest.
                Err(e) => {
                    tracing::warn!(segment = seq, error.message = %e, "bad spool line skipped")
                }
            }
        }
        Ok(Some((seq, docs)))
    }

    /// Replace segment `seq` (closed by [`Spool::oldest`]) with `docs`,
    /// atomically; an empty list removes it.
    pub fn replace(&mut self, seq: u64, docs: &[Doc]) -> io::Result<()> {
        if !self.segments.contains_key(&seq) {
            // Dropped for the bound while its documents were being sent
            // (and counted as dropped then): writing it back would bring
            // it over the bound again.
            return Ok(());
        }
        let path = self.path(seq);
        if docs.is_empty() {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.segments.remove(&seq);
        } else {
            let tmp = path.with_extension("tmp");
            let mut file = File::create(&tmp)?;
            let mut bytes = 0;
            for doc in docs {
                let raw = RawValue::from_string(doc.body.clone()).map_err(io::Error::other)?;
                let env = Envelope { stream: doc.stream, id: &doc.id, doc: &raw };
                let line = serde_json::to_string(&env).map_err(io::Error::other)? + "\n";
                file.write_all(line.as_bytes())?;
                bytes += line.len() as u64;
            }
            file.sync_data()?;
            fs::rename(&tmp, &path)?;
            self.segments.insert(seq, Segment { bytes, docs: docs.len() as u64 });
        }
        self.publish_gauges();
        Ok(())
    }

    fn roll(&mut self) -> io::Result<u64> {
        let seq = self.segments.keys().next_back().map_or(1, |s| s + 1);
        let file = OpenOptions::new().create(true).append(true).open(self.path(seq))?;
        self.segments.insert(seq, Segment::default());
        self.current = Some((seq, file));
        Ok(seq)
    }

    /// Drop the oldest segments (never the newest, which is the one being
    /// written) while they and `incoming` more bytes would be over the bound.
    fn enforce_bound(&mut self, incoming: u64) {
        while self.bytes() + incoming > self.max_bytes && self.segments.len() > 1 {
            let Some((&seq, &seg)) = self.segments.iter().next() else { break };
            if self.current.as_ref().is_some_and(|(c, _)| *c == seq) {
                self.current = None;
            }
            let _ = fs::remove_file(self.path(seq));
            self.segments.remove(&seq);
            metrics::global().spool_dropped.fetch_add(seg.docs, Relaxed);
            tracing::error!(
                segment = seq,
                documents = seg.docs,
                bytes = seg.bytes,
                max_bytes = self.max_bytes,
                "telemetry spool full: oldest segment dropped"
            );
        }
        // One segment over the bound on its own: close it so the next append rolls.
        if self.bytes() > self.max_bytes {
            self.current = None;
        }
    }

    fn publish_gauges(&self) {
        let m = metrics::global();
        m.spool_bytes.store(self.bytes(), Relaxed);
        m.spool_documents.store(self.docs(), Relaxed);
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.ndjson"))
    }
}

fn segment_seq(path: &Path) -> Option<u64> {
    if path.extension()? != "ndjson" {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// Append refused documents with why to the dead-letter file (fsync'd).
pub fn dead_letter(path: &Path, entries: &[(Doc, u16, serde_json::Value)]) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut text = String::new();
    for (doc, status, error) in entries {
        let document: serde_json::Value =
            serde_json::from_str(&doc.body).unwrap_or_else(|_| doc.body.clone().into());
        let line = serde_json::json!({
            "@timestamp": crate::telemetry::now_rfc3339(),
            "stream": doc.stream,
            "id": doc.id,
            "status": status,
            "error": error,
            "document": document,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(from: usize, n: usize) -> Vec<Doc> {
        (from..from + n)
            .map(|i| Doc {
                stream: Stream::App,
                id: format!("id-{i}"),
                body: format!("{{\"@timestamp\":\"t\",\"message\":\"m{i}\\nsecond line\"}}"),
            })
            .collect()
    }

    #[test]
    fn documents_come_back_in_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), u64::MAX).unwrap();
        spool.append(&docs(0, 3)).unwrap();
        spool.append(&docs(3, 2)).unwrap();
        drop(spool);

        let mut spool = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(spool.docs(), 5);
        let (seq, got) = spool.oldest().unwrap().unwrap();
        assert_eq!(got, docs(0, 5));
        spool.replace(seq, &got[3..]).unwrap();
        assert_eq!(spool.docs(), 2);
        let (seq, got) = spool.oldest().unwrap().unwrap();
        assert_eq!(got, docs(3, 2));
        spool.replace(seq, &[]).unwrap();
        assert!(spool.is_empty());
        assert!(spool.oldest().unwrap().is_none());
    }

    #[test]
    fn appends_after_taking_the_oldest_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), u64::MAX).unwrap();
        spool.append(&docs(0, 1)).unwrap();
        let (first, _) = spool.oldest().unwrap().unwrap();
        spool.append(&docs(1, 1)).unwrap();
        spool.replace(first, &[]).unwrap();
        let (second, got) = spool.oldest().unwrap().unwrap();
        assert!(second > first);
        assert_eq!(got, docs(1, 1));
    }

    #[test]
    fn over_the_bound_the_oldest_segment_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 200).unwrap();
        let before = metrics::global().spool_dropped.load(Relaxed);
        for i in 0..6 {
            spool.append(&docs(i * 2, 2)).unwrap();
        }
        assert!(metrics::global().spool_dropped.load(Relaxed) > before);
        assert!(spool.bytes() <= 200, "{}", spool.bytes());
        // What is left is the newest, still in order.
        let mut left = Vec::new();
        while let Some((seq, got)) = spool.oldest().unwrap() {
            left.extend(got.into_iter().map(|d| d.id));
            spool.replace(seq, &[]).unwrap();
        }
        assert_eq!(left.last().map(String::as_str), Some("id-11"));
    }

    #[allow(clippy::disallowed_methods, reason = "sizing the spool's files in a test")]
    fn bytes_on_disk(dir: &Path) -> u64 {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    #[test]
    fn the_files_on_disk_never_exceed_the_bound_whatever_the_batch_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 2_000;
        let mut spool = Spool::open(dir.path(), bound).unwrap();
        let mut next = 0;
        for batch in [1, 3, 40, 2, 7, 1, 25, 1] {
            spool.append(&docs(next, batch)).unwrap();
            next += batch;
            assert!(bytes_on_disk(dir.path()) <= bound, "after a batch of {batch}");
            assert_eq!(bytes_on_disk(dir.path()), spool.bytes());
        }
        // The newest documents survive, in order.
        let mut last = None;
        while let Some((seq, got)) = spool.oldest().unwrap() {
            for d in &got {
                let n: usize = d.id.trim_start_matches("id-").parse().unwrap();
                assert!(last.is_none_or(|l| n > l), "out of order at {n}");
                last = Some(n);
            }
            spool.replace(seq, &[]).unwrap();
        }
        assert_eq!(last, Some(next - 1));
    }

    #[test]
    fn a_segment_dropped_while_it_was_being_sent_is_not_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 2_000;
        let mut spool = Spool::open(dir.path(), bound).unwrap();
        spool.append(&docs(0, 5)).unwrap();
        let (taken, sending) = spool.oldest().unwrap().unwrap();
        // Elasticsearch is down: appends meanwhile push the taken segment out.
        let mut next = 5;
        while spool.segments.contains_key(&taken) {
            spool.append(&docs(next, 5)).unwrap();
            next += 5;
        }

        spool.replace(taken, &sending).unwrap();

        assert!(!spool.segments.contains_key(&taken), "a dropped segment came back");
        assert!(bytes_on_disk(dir.path()) <= bound);
        assert_eq!(bytes_on_disk(dir.path()), spool.bytes());
    }

    #[test]
    fn dead_letters_keep_the_document_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.ndjson");
        let error = serde_json::json!({"type": "mapper_parsing_exception"});
        dead_letter(&path, &[(docs(0, 1).remove(0), 400, error)]).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["status"], 400);
        assert_eq!(line["document"]["message"], "m0\nsecond line");
    }
}
