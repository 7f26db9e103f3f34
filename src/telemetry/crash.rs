//! Crash forensics: a panic hook that writes one ECS crash document per
//! panic to `{data_dir}/crashes/{timestamp}-{id}.json` (fsync'd, before
//! anything else can go wrong), then hands it to the Elasticsearch shipper
//! (`logs-mapcast.crash-*`). Files not shipped yet (no `{stem}.shipped`
//! marker beside them) are shipped at the next start.
//!
//! The document: `error.type` "panic", `error.message`, `error.stack_trace`
//! (forced backtrace), source location, thread, `service.version` and build
//! commit, uptime, `trace.id`/`span.id` and the fields of every enclosing
//! span (client id, route, ...), the last [`BREADCRUMBS`] log events, the
//! active feature-flag variants and the redacted configuration.
//!
//! Inside the hook: no network, bounded allocation, and no lock a handler
//! may hold (the breadcrumb ring is only `try_lock`ed).
//!
//! The directory is bounded by [`CrashLimits`]: before a report is written
//! the oldest reports go (with their markers), because the newest crash is
//! the one worth reading and a crash loop must not fill the disk.
#![allow(
    clippy::disallowed_methods,
    reason = "the hook writes synchronously on purpose (the process may be about to die); \
              the listing helpers serve the CLI and the shipper's blocking threads"
)]

use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Write as _;
use std::panic::PanicHookInfo;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, Once, OnceLock};

use serde_json::{Map, Value, json};
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan;

use super::ecs::SpanFields;
use super::elastic::{DocSender, Stream};
use super::{metrics, names};

/// Log events kept for the next crash report.
pub const BREADCRUMBS: usize = 100;
/// Longest breadcrumb kept, in bytes (a crash report stays small).
const BREADCRUMB_MAX_BYTES: usize = 2048;

/// The last log events, oldest first. Writers hold the lock for one push;
/// the panic hook only ever `try_lock`s it.
static RING: Mutex<VecDeque<Box<str>>> = Mutex::new(VecDeque::new());

/// Remember one log event (an ECS document) for the next crash report.
pub(crate) fn breadcrumb(line: &str) {
    let mut end = line.len().min(BREADCRUMB_MAX_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let crumb: Box<str> = line[..end].into();
    let mut ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    if ring.len() == BREADCRUMBS {
        ring.pop_front();
    }
    ring.push_back(crumb);
}

fn breadcrumbs() -> Vec<Value> {
    for _ in 0..100 {
        if let Ok(ring) = RING.try_lock() {
            return ring.iter().map(|c| Value::from(&**c)).collect();
        }
        std::thread::yield_now();
    }
    Vec::new()
}

/// Bounds of the crash directory (`telemetry.crash_max_files`,
/// `telemetry.crash_max_bytes`). Before a report is written, the oldest
/// reports (by modification time) are removed until it fits; one larger
/// than `max_bytes` on its own is not written at all (it is still shipped).
#[derive(Debug, Clone, Copy)]
pub struct CrashLimits {
    pub max_files: usize,
    pub max_bytes: u64,
}

struct Context {
    dir: PathBuf,
    limits: CrashLimits,
    config: Value,
    ship: Option<DocSender>,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();
static INSTALL: Once = Once::new();
static DEBUG_TRIGGERS: AtomicBool = AtomicBool::new(false);
static FEATURE_FLAGS: OnceLock<fn() -> Vec<Value>> = OnceLock::new();

thread_local! {
    /// A panic inside the hook must not recurse into it.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// The id of the last report made on this thread: whoever catches the
    /// unwind on the same thread (the HTTP layer) tells the client.
    static LAST_ID: Cell<Option<String>> = const { Cell::new(None) };
}

/// The id (`error.id`) of the crash report of the last panic on this
/// thread, once: call it where the unwind was caught.
pub fn take_last_crash_id() -> Option<String> {
    LAST_ID.take()
}

/// The crash directory under a data directory.
pub fn crash_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("crashes")
}

/// Install the panic hook once per process (later calls do nothing),
/// chaining the hook that was there before.
pub(crate) fn install(
    data_dir: &Path,
    limits: CrashLimits,
    config: Value,
    ship: Option<DocSender>,
) {
    INSTALL.call_once(|| {
        let _ = CONTEXT.set(Context { dir: crash_dir(data_dir), limits, config, ship });
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_HOOK.replace(true) {
                report(info);
                IN_HOOK.set(false);
            }
            previous(info);
        }));
    });
}

/// Whether `POST /api/v1/admin/debug/panic` and `$debug/panic` may panic
/// (`debug.panic_endpoint`; process-wide, set at start).
pub fn debug_triggers_enabled() -> bool {
    DEBUG_TRIGGERS.load(Relaxed)
}

pub fn set_debug_triggers(enabled: bool) {
    DEBUG_TRIGGERS.store(enabled, Relaxed);
}

/// Where crash reports get the active feature-flag variants
/// (`[{"key":..,"variant":..}]`); none until flags exist.
pub fn set_feature_flag_source(source: fn() -> Vec<Value>) {
    let _ = FEATURE_FLAGS.set(source);
}

fn report(info: &PanicHookInfo<'_>) {
    metrics::global().crashes.fetch_add(1, Relaxed);
    let Some(ctx) = CONTEXT.get() else { return };
    let (stem, doc) = document(info, &ctx.config);
    LAST_ID.set(Some(stem.clone()));
    let body = Value::Object(doc).to_string();
    let path = ctx.dir.join(format!("{stem}.json"));
    let room = make_room(&ctx.dir, ctx.limits, body.len() as u64);
    let written = match room {
        Room::Made { .. } => write_synced(&path, body.as_bytes()),
        Room::TooLarge => Err(std::io::Error::other("larger than telemetry.crash_max_bytes")),
    };
    if let Some(ship) = &ctx.ship {
        ship.send(Stream::Crash, stem.clone(), body);
    }
    if let Room::Made { removed } = room
        && removed > 0
    {
        tracing::warn!(removed, "oldest crash reports removed to stay within the caps");
    }
    match written {
        Ok(()) => tracing::error!(
            { names::ERROR_ID } = %stem,
            file = %path.display(),
            "panic: crash report written"
        ),
        Err(e) => eprintln!("mapcast: cannot write crash report {}: {e}", path.display()),
    }
}

/// What [`make_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// A report of the given size fits now; `removed` old ones went for it.
    Made { removed: usize },
    /// It could not fit even in an empty directory.
    TooLarge,
}

/// Remove the oldest reports in `dir` until one more of `incoming` bytes
/// fits within `limits`.
fn make_room(dir: &Path, limits: CrashLimits, incoming: u64) -> Room {
    if incoming > limits.max_bytes {
        return Room::TooLarge;
    }
    let mut reports: Vec<(std::time::SystemTime, String, u64)> = stems(dir)
        .into_iter()
        .filter_map(|stem| {
            let meta = fs::metadata(dir.join(format!("{stem}.json"))).ok()?;
            Some((meta.modified().ok()?, stem, meta.len()))
        })
        .collect();
    reports.sort();
    let mut bytes: u64 = reports.iter().map(|(_, _, len)| len).sum();
    let mut kept = reports.len();
    let mut removed = 0;
    for (_, stem, len) in &reports {
        if kept < limits.max_files && bytes + incoming <= limits.max_bytes {
            break;
        }
        let _ = fs::remove_file(marker(dir, stem));
        if fs::remove_file(dir.join(format!("{stem}.json"))).is_ok() {
            removed += 1;
        }
        kept -= 1;
        bytes -= len;
    }
    Room::Made { removed }
}

/// The crash document and its id (`{timestamp}-{random}`, also its file stem
/// and its `_id` in Elasticsearch).
fn document(info: &PanicHookInfo<'_>, config: &Value) -> (String, Map<String, Value>) {
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    let mut doc = super::base_document();
    let timestamp = doc[names::TIMESTAMP].as_str().unwrap_or_default().to_owned();
    let compact: String =
        timestamp.chars().take(19).filter(|c| c.is_ascii_alphanumeric()).collect();
    let stem = format!("{compact}Z-{:08x}", super::ecs::random_u64() as u32);

    let (spans, span_fields) = span_stack();
    // Span fields first, so they never replace the crash's own fields.
    for (k, v) in span_fields {
        doc.entry(k).or_insert(v);
    }
    let thread = std::thread::current();
    let fields = [
        (names::LOG_LEVEL, Value::from("fatal")),
        (names::MESSAGE, format!("panic: {message}").into()),
        (names::EVENT_DATASET, names::DATASET_CRASH.into()),
        (names::ERROR_TYPE, names::ERROR_TYPE_PANIC.into()),
        (names::ERROR_ID, stem.clone().into()),
        (names::ERROR_MESSAGE, message.into()),
        (names::ERROR_STACK_TRACE, from_panic_site(&Backtrace::force_capture().to_string()).into()),
        (names::PROCESS_THREAD_NAME, thread.name().unwrap_or("unnamed").into()),
        (names::PROCESS_UPTIME, super::uptime_secs().into()),
        (names::CRASH_SPANS, Value::Array(spans)),
        (names::CRASH_BREADCRUMBS, Value::Array(breadcrumbs())),
        (
            names::CRASH_FEATURE_FLAGS,
            Value::Array(FEATURE_FLAGS.get().map(|f| f()).unwrap_or_default()),
        ),
        (names::CRASH_CONFIG, config.clone()),
    ];
    for (k, v) in fields {
        doc.insert(k.into(), v);
    }
    if let Some(loc) = info.location() {
        doc.insert(names::LOG_ORIGIN_FILE_NAME.into(), loc.file().into());
        doc.insert(names::LOG_ORIGIN_FILE_LINE.into(), loc.line().into());
    }
    (stem, doc)
}

/// The enclosing spans of the panicking code, outermost first, and their
/// merged fields (inner wins) with the innermost `trace.id` and `span.id`.
fn span_stack() -> (Vec<Value>, Map<String, Value>) {
    let mut spans = Vec::new();
    let mut merged = Map::new();
    tracing::dispatcher::get_default(|dispatch| {
        let Some(id) = dispatch.current_span().id().cloned() else { return };
        // Before any extension is borrowed: the exporter's ids, when exporting.
        let otel_ids = super::otel::ids_of(&id, dispatch);
        let Some(registry) = dispatch.downcast_ref::<Registry>() else { return };
        let Some(span) = registry.span(&id) else { return };
        for s in span.scope().from_root() {
            let ext = s.extensions();
            let fields = ext.get::<SpanFields>();
            if let Some(f) = fields {
                merged.extend(f.fields.iter().map(|(k, v)| (k.to_owned(), v.clone())));
                merged.insert(names::TRACE_ID.into(), f.trace_id.clone().into());
                merged.insert(names::SPAN_ID.into(), f.span_id.clone().into());
            }
            spans.push(json!({
                "name": s.name(),
                "target": s.metadata().target(),
                "fields": fields.map(|f| Value::Object(f.fields.to_map())).unwrap_or_default(),
            }));
        }
        if let Some((trace_id, span_id)) = otel_ids {
            merged.insert(names::TRACE_ID.into(), trace_id.into());
            merged.insert(names::SPAN_ID.into(), span_id.into());
        }
    });
    (spans, merged)
}

/// A backtrace without its first frames (the capture, this hook, the panic
/// machinery, `unwrap`/`expect`), renumbered from 0: frame 0 is where the
/// code panicked, as `log.origin.file.*` says.
fn from_panic_site(backtrace: &str) -> String {
    const MACHINERY: [&str; 14] = [
        "mapcast::telemetry::crash::",
        "std::backtrace::",
        "std::backtrace_rs::",
        "std::panicking::",
        "core::panicking::",
        "std::sys::backtrace::",
        "rust_begin_unwind",
        "<alloc::boxed::Box<dyn",
        "std::panic::",
        "core::option::unwrap_failed",
        "core::option::expect_failed",
        "core::result::unwrap_failed",
        "core::option::Option<T>::",
        "core::result::Result<T,E>::",
    ];
    // Frames are "  N: symbol" lines, each followed by "at file:line" lines.
    let frames: Vec<&str> = backtrace.split_inclusive('\n').collect();
    let frame_number = |l: &str| {
        let (n, _) = l.trim_start().split_once(": ")?;
        n.parse::<u32>().ok()
    };
    // Builds with line tables only name this crate's inlined frames without
    // their module ("report"), so the crash handler is also known by its file.
    let machinery = |i: usize| {
        MACHINERY.iter().any(|m| frames[i].contains(m))
            || frames.get(i + 1).is_some_and(|at| {
                frame_number(at).is_none() && at.contains("src/telemetry/crash.rs:")
            })
    };
    let Some(first) =
        (0..frames.len()).find(|&i| frame_number(frames[i]).is_some() && !machinery(i))
    else {
        return backtrace.to_owned();
    };
    let mut out = String::with_capacity(backtrace.len());
    let mut number = 0u32;
    for line in &frames[first..] {
        match (frame_number(line), line.split_once(": ")) {
            (Some(_), Some((_, symbol))) => {
                out.push_str(&format!("{number:>4}: {symbol}"));
                number += 1;
            }
            _ => out.push_str(line),
        }
    }
    out
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn marker(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.shipped"))
}

/// Crash reports not shipped yet: (id, document text), oldest first.
pub(crate) fn pending(dir: &Path) -> Vec<(String, String)> {
    stems(dir)
        .into_iter()
        .filter(|stem| !marker(dir, stem).exists())
        .filter_map(|stem| {
            let body = fs::read_to_string(dir.join(format!("{stem}.json"))).ok()?;
            // Re-serialize: a file edited by hand still ships as one line.
            let doc: Value = serde_json::from_str(&body).ok()?;
            Some((stem, doc.to_string()))
        })
        .collect()
}

/// Elasticsearch has the crash report `stem`.
pub(crate) fn mark_shipped(dir: &Path, stem: &str) -> std::io::Result<()> {
    if dir.join(format!("{stem}.json")).exists() {
        File::create(marker(dir, stem))?;
    }
    Ok(())
}

fn stems(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut stems: Vec<String> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "json").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    stems.sort();
    stems
}

/// One line of `mapcast crashes list`.
#[derive(Debug, serde::Serialize)]
pub struct CrashSummary {
    pub id: String,
    pub timestamp: String,
    pub message: String,
    pub location: String,
    pub thread: String,
    pub shipped: bool,
}

/// The crash reports in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<CrashSummary> {
    stems(dir)
        .into_iter()
        .map(|stem| {
            let doc = show(dir, &stem).ok().unwrap_or_default();
            let text = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let line = doc.get(names::LOG_ORIGIN_FILE_LINE).and_then(Value::as_u64).unwrap_or(0);
            CrashSummary {
                timestamp: text(names::TIMESTAMP),
                message: text(names::ERROR_MESSAGE),
                location: format!("{}:{line}", text(names::LOG_ORIGIN_FILE_NAME)),
                thread: text(names::PROCESS_THREAD_NAME),
                shipped: marker(dir, &stem).exists(),
                id: stem,
            }
        })
        .collect()
}

/// One crash report by id (its file stem, or a unique part of it).
pub fn show(dir: &Path, id: &str) -> anyhow::Result<Value> {
    let matches: Vec<String> = stems(dir).into_iter().filter(|s| s.contains(id)).collect();
    let stem = match matches.as_slice() {
        [one] => one,
        [] => anyhow::bail!("no crash report {id:?} in {}", dir.display()),
        _ => {
            anyhow::bail!("{id:?} matches {} crash reports: {}", matches.len(), matches.join(", "))
        }
    };
    let path = dir.join(format!("{stem}.json"));
    let text = fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breadcrumb_ring_keeps_the_last_hundred_and_truncates_long_lines() {
        for i in 0..(BREADCRUMBS + 20) {
            breadcrumb(&format!("{{\"n\":{i}}}"));
        }
        breadcrumb(&"é".repeat(BREADCRUMB_MAX_BYTES));
        let crumbs = breadcrumbs();
        assert_eq!(crumbs.len(), BREADCRUMBS);
        assert!(crumbs.last().unwrap().as_str().unwrap().len() <= BREADCRUMB_MAX_BYTES);
    }

    #[test]
    fn stack_traces_start_at_the_panic_site() {
        let trace = concat!(
            "   0: mapcast::telemetry::crash::document\n",
            "             at src/telemetry/crash.rs:1:2\n",
            "   1: std::panicking::panic_with_hook\n",
            "   2: __rustc::rust_begin_unwind\n",
            "   3: core::panicking::panic_fmt\n",
            "   4: mapcast::http::routes::debug::panic\n",
            "             at src/http/routes/debug.rs:23:5\n",
            "   5: main\n",
        );
        let trimmed = from_panic_site(trace);
        assert!(trimmed.starts_with("   0: mapcast::http::routes::debug::panic\n"), "{trimmed}");
        assert!(trimmed.contains("\n             at src/http/routes/debug.rs:23:5\n"));
        assert!(trimmed.ends_with("   1: main\n"), "{trimmed}");
        assert_eq!(from_panic_site("disabled backtrace"), "disabled backtrace");

        // An `unwrap` panics one frame further in: its caller is the site.
        let trace = concat!(
            "   0: std::backtrace_rs::backtrace::libunwind::trace\n",
            "   1: std::backtrace::Backtrace::force_capture\n",
            "   2: mapcast::telemetry::crash::report\n",
            "   3: std::panicking::panic_with_hook\n",
            "   4: core::panicking::panic_fmt\n",
            "   5: core::result::unwrap_failed\n",
            "   6: core::result::Result<T,E>::unwrap\n",
            "             at /rustc/x/library/core/src/result.rs:1:1\n",
            "   7: mapcast::store::writer::commit\n",
            "             at ./src/store/writer.rs:42:9\n",
        );
        let trimmed = from_panic_site(trace);
        assert!(trimmed.starts_with("   0: mapcast::store::writer::commit\n"), "{trimmed}");

        // Line tables only (as CI builds): the handler's own frames lose
        // their module path and are known by their file.
        let trace = concat!(
            "   0: document\n",
            "             at ./src/telemetry/crash.rs:252:53\n",
            "   1: report\n",
            "             at ./src/telemetry/crash.rs:157:23\n",
            "   2: std::panicking::panic_with_hook\n",
            "   3: core::panicking::panic_fmt\n",
            "   4: {async_block#0}\n",
            "             at ./src/http/routes/debug.rs:34:5\n",
        );
        let trimmed = from_panic_site(trace);
        assert!(trimmed.starts_with("   0: {async_block#0}\n"), "{trimmed}");
    }

    #[test]
    fn the_oldest_reports_make_room_for_a_new_one_by_count_and_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |stem: &str, len: usize| {
            write_synced(&dir.path().join(format!("{stem}.json")), &vec![b' '; len]).unwrap();
            // Distinct modification times, whatever the file system's resolution.
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        for stem in ["c-old", "a-mid", "b-new"] {
            write(stem, 100);
        }
        mark_shipped(dir.path(), "c-old").unwrap();

        let by_count = CrashLimits { max_files: 3, max_bytes: 10_000 };
        assert_eq!(make_room(dir.path(), by_count, 100), Room::Made { removed: 1 });
        assert_eq!(stems(dir.path()), ["a-mid", "b-new"], "the oldest went, not the first by name");
        assert!(!marker(dir.path(), "c-old").exists(), "with its marker");

        let by_bytes = CrashLimits { max_files: 10, max_bytes: 250 };
        assert_eq!(make_room(dir.path(), by_bytes, 100), Room::Made { removed: 1 });
        assert_eq!(stems(dir.path()), ["b-new"]);
        assert_eq!(make_room(dir.path(), by_bytes, 251), Room::TooLarge);
        assert_eq!(stems(dir.path()), ["b-new"], "nothing removed for a report that cannot fit");
    }

    #[test]
    fn pending_reports_are_the_ones_without_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        for stem in ["20260101T000000Z-aaaa", "20260102T000000Z-bbbb"] {
            write_synced(&dir.path().join(format!("{stem}.json")), b"{\"error.type\":\"panic\"}")
                .unwrap();
        }
        mark_shipped(dir.path(), "20260101T000000Z-aaaa").unwrap();
        let pending = pending(dir.path());
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].0, "20260102T000000Z-bbbb");
        let listed = list(dir.path());
        assert_eq!(listed.len(), 2);
        assert!(listed[0].shipped && !listed[1].shipped);
        assert!(show(dir.path(), "bbbb").is_ok());
        assert!(show(dir.path(), "2026").is_err(), "ambiguous");
        assert!(show(dir.path(), "cccc").is_err());
    }
}
