//! ECS JSON documents: one object per event with the ECS base fields, the
//! fields of every enclosing span (inner spans win), the event's own fields
//! and `trace.id` / `span.id`.
//!
//! [`EcsLayer`] builds each document once and hands the same text to every
//! sink: the stdout line (JSON format), the crash reporter's breadcrumbs and
//! the Elasticsearch shipper.

use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, RandomState};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, OnceLock};

use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::elastic::DocSender;
use super::{crash, names};

/// What [`EcsLayer`] keeps in each span's extensions.
#[derive(Debug, Clone)]
pub(crate) struct SpanFields {
    pub fields: SpanFieldList,
    pub trace_id: String,
    pub span_id: String,
}

/// A span's own fields: a short list, not a map. A span has a handful of
/// fields and one lives as long as each MQTT connection, where a map node
/// (~630 bytes) and owned keys were a twentieth of an idle connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanFieldList(Vec<(&'static str, Value)>);

impl SpanFieldList {
    fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub(crate) fn to_map(&self) -> Map<String, Value> {
        self.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect()
    }
}

/// Where [`FieldVisitor`] puts the fields it reads.
pub(crate) trait FieldSink {
    fn put_field(&mut self, key: &'static str, value: Value);
}

impl FieldSink for Map<String, Value> {
    fn put_field(&mut self, key: &'static str, value: Value) {
        self.insert(key.to_owned(), value);
    }
}

impl FieldSink for SpanFieldList {
    fn put_field(&mut self, key: &'static str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }
}

/// The layer that writes ECS documents to its sinks.
pub struct EcsLayer {
    /// The subscriber this layer is part of, to ask the OpenTelemetry layer
    /// for its ids (set when the subscriber is installed).
    dispatch: OnceLock<WeakDispatch>,
    /// Where JSON lines go (stdout through a background writer); `None` when
    /// another layer prints for humans.
    out: Option<BoxMakeWriter>,
    /// The Elasticsearch shipper's queue, when shipping is on.
    ship: Option<DocSender>,
}

impl EcsLayer {
    pub fn new(out: Option<BoxMakeWriter>, ship: Option<DocSender>) -> Self {
        Self { dispatch: OnceLock::new(), out, ship }
    }
}

impl<S> Layer<S> for EcsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFieldList::with_capacity(attrs.fields().len());
        attrs.record(&mut FieldVisitor { fields: &mut fields, message: None });
        // An explicit `trace.id` (e.g. from a `traceparent`) wins; otherwise
        // inherit the parent's, or start a trace at a root span.
        let trace_id = match fields.get(names::TRACE_ID).and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None => span
                .parent()
                .and_then(|p| p.extensions().get::<SpanFields>().map(|f| f.trace_id.clone()))
                .unwrap_or_else(new_trace_id),
        };
        let span_id = format!("{:016x}", random_u64());
        span.extensions_mut().insert(SpanFields { fields, trace_id, span_id });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(stored) = span.extensions_mut().get_mut::<SpanFields>() {
            values.record(&mut FieldVisitor { fields: &mut stored.fields, message: None });
            // A trace continued from a `traceparent` (see `otel::continue_trace`).
            if let Some(trace_id) = stored.fields.get(names::TRACE_ID).and_then(Value::as_str) {
                stored.trace_id = trace_id.to_owned();
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
        let line =
            document(meta, event, ctx.event_scope(event).map(|s| s.from_root()), dispatch.as_ref());

        crash::breadcrumb(&line);
        if let Some(ship) = &self.ship
            && shippable(meta.target())
        {
            ship.send_log(&line);
        }
        if let Some(out) = &self.out {
            let mut w = out.make_writer();
            // One write per line, so lines never interleave.
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            let _ = w.write_all(&buf);
        }
    }
}

/// Events of the shipper and its HTTP stack stay local: shipping them would
/// feed back into the queue they report on.
fn shippable(target: &str) -> bool {
    const LOCAL: [&str; 6] =
        ["mapcast::telemetry::elastic", "elasticsearch", "reqwest", "hyper", "h2", "rustls"];
    !LOCAL.iter().any(|p| target.starts_with(p))
}

/// The ECS document of one event, as one line of JSON (no newline).
fn document<'a, S>(
    meta: &Metadata<'_>,
    event: &Event<'_>,
    scope: Option<impl Iterator<Item = SpanRef<'a, S>>>,
    dispatch: Option<&Dispatch>,
) -> String
where
    S: Subscriber + for<'l> LookupSpan<'l> + 'a,
{
    let mut fields = Map::new();
    let mut ids = None;
    let mut innermost = None;
    if let Some(scope) = scope {
        for span in scope {
            innermost = Some(span.id());
            let ext = span.extensions();
            if let Some(stored) = ext.get::<SpanFields>() {
                fields.extend(stored.fields.iter().map(|(k, v)| (k.to_owned(), v.clone())));
                ids = Some((stored.trace_id.clone(), stored.span_id.clone()));
            }
        }
    }
    // Exporting traces: the ids Kibana's APM views know (no extension held here).
    if let (Some(id), Some(dispatch)) = (&innermost, dispatch)
        && let Some(otel_ids) = super::otel::ids_of(id, dispatch)
    {
        ids = Some(otel_ids);
    }
    let mut visitor = FieldVisitor { fields: &mut fields, message: None };
    event.record(&mut visitor);
    let message = visitor.message.take().unwrap_or_default();

    // The base fields first, so the line reads well to humans too.
    let mut line = String::with_capacity(256);
    line.push_str("{\"");
    line.push_str(names::TIMESTAMP);
    line.push_str("\":\"");
    let _ = SystemTime.format_time(&mut Writer::new(&mut line));
    line.push('"');
    push_field(
        &mut line,
        names::LOG_LEVEL,
        &Value::from(meta.level().as_str().to_ascii_lowercase()),
    );
    push_field(&mut line, names::MESSAGE, &Value::from(message));
    push_field(&mut line, names::ECS_VERSION, &Value::from(names::ECS_VERSION_VALUE));
    push_field(&mut line, names::SERVICE_NAME, &Value::from(names::SERVICE_NAME_VALUE));
    push_field(&mut line, names::SERVICE_VERSION, &Value::from(super::service_version()));
    if super::canary_build() {
        push_field(&mut line, names::LABELS_CANARY, &Value::from("true"));
    }
    push_field(&mut line, names::LOG_LOGGER, &Value::from(meta.target()));
    if let Some(file) = meta.file() {
        push_field(&mut line, names::LOG_ORIGIN_FILE_NAME, &Value::from(file));
    }
    if let Some(n) = meta.line() {
        push_field(&mut line, names::LOG_ORIGIN_FILE_LINE, &Value::from(n));
    }
    if let Some(thread) = std::thread::current().name() {
        push_field(&mut line, names::PROCESS_THREAD_NAME, &Value::from(thread));
    }
    if let Some((trace_id, span_id)) = ids {
        push_field(&mut line, names::TRACE_ID, &Value::from(trace_id));
        push_field(&mut line, names::SPAN_ID, &Value::from(span_id));
    }
    for (key, value) in &fields {
        if !is_base_field(key) {
            push_field(&mut line, key, value);
        }
    }
    line.push('}');
    line
}

fn push_field(line: &mut String, key: &str, value: &Value) {
    line.push(',');
    // Serializing a str or a Value into a String cannot fail.
    line.push_str(&serde_json::to_string(key).unwrap_or_default());
    line.push(':');
    line.push_str(&serde_json::to_string(value).unwrap_or_default());
}

/// Fields the formatter owns; a span or event field of the same name would
/// make the object ambiguous (and Elasticsearch rejects duplicate keys).
fn is_base_field(key: &str) -> bool {
    matches!(
        key,
        names::TIMESTAMP
            | names::LOG_LEVEL
            | names::MESSAGE
            | names::ECS_VERSION
            | names::SERVICE_NAME
            | names::SERVICE_VERSION
            | names::LOG_LOGGER
            | names::LOG_ORIGIN_FILE_NAME
            | names::LOG_ORIGIN_FILE_LINE
            | names::PROCESS_THREAD_NAME
            | names::TRACE_ID
            | names::SPAN_ID
    )
}

/// The trace and span ids of the current span (this layer's own ids).
pub(crate) fn current_ids() -> Option<(String, String)> {
    tracing::dispatcher::get_default(|dispatch| {
        let id = dispatch.current_span().id()?.clone();
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let span = registry.span(&id)?;
        let ext = span.extensions();
        let stored = ext.get::<SpanFields>()?;
        Some((stored.trace_id.clone(), stored.span_id.clone()))
    })
}

/// 64 random bits: a per-process random hasher over a counter.
pub(crate) fn random_u64() -> u64 {
    static SEED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    SEED.hash_one(COUNTER.fetch_add(1, Relaxed))
}

/// A W3C-sized trace id: 32 lowercase hex digits.
pub(crate) fn new_trace_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

pub(crate) struct FieldVisitor<'a, F: FieldSink> {
    pub fields: &'a mut F,
    pub message: Option<String>,
}

impl<F: FieldSink> FieldVisitor<'_, F> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            names::MESSAGE => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            name if names::LOG_BRIDGE_FIELDS.contains(&name) => {}
            name => self.fields.put_field(name, value),
        }
    }
}

impl<F: FieldSink> Visit for FieldVisitor<'_, F> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Keep the whole cause chain: "outer: inner: root".
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        self.put(field, Value::from(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let out = Capture::default();
        let writer = out.clone();
        let layer = EcsLayer::new(Some(BoxMakeWriter::new(move || writer.clone())), None);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn events_carry_ecs_base_fields_and_flattened_span_fields() {
        let lines = capture(|| {
            let outer = tracing::info_span!("conn", client.id = "car-1", topic = "a");
            let _o = outer.enter();
            let inner = tracing::info_span!("publish", topic = "devices/car-1/location");
            let _i = inner.enter();
            tracing::warn!(bytes = 42_u64, "slow consumer");
        });

        let line = &lines[0];
        assert_eq!(line["message"], "slow consumer");
        assert_eq!(line["log.level"], "warn");
        assert_eq!(line["ecs.version"], names::ECS_VERSION_VALUE);
        assert_eq!(line["service.name"], "mapcast");
        assert_eq!(line["log.logger"], module_path!());
        assert!(line["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["client.id"], "car-1");
        assert_eq!(line["topic"], "devices/car-1/location", "the inner span wins");
        assert_eq!(line["bytes"], 42);
    }

    #[test]
    fn fields_cannot_shadow_base_fields() {
        let lines = capture(|| tracing::info!(log.level = "fake", "hello"));
        assert_eq!(lines[0]["log.level"], "info");
    }

    #[test]
    fn spans_share_the_trace_id_of_their_root_and_have_their_own_span_id() {
        let lines = capture(|| {
            let root = tracing::info_span!("request");
            let _r = root.enter();
            tracing::info!("in root");
            let child = tracing::info_span!("query");
            let _c = child.enter();
            tracing::info!("in child");
        });
        let trace = lines[0]["trace.id"].as_str().unwrap();
        assert_eq!(trace.len(), 32);
        assert_eq!(lines[1]["trace.id"], trace);
        assert_ne!(lines[0]["span.id"], lines[1]["span.id"]);
    }

    #[test]
    fn fields_recorded_later_appear_on_later_events() {
        let lines = capture(|| {
            let span = tracing::info_span!("request", http.route = tracing::field::Empty);
            let _s = span.enter();
            span.record("http.route", "/a");
            tracing::info!("done");
        });
        assert_eq!(lines[0]["http.route"], "/a");
    }

    #[test]
    fn the_shipper_never_sees_its_own_events() {
        assert!(!shippable("mapcast::telemetry::elastic::shipper"));
        assert!(!shippable("reqwest::connect"));
        assert!(shippable("mapcast::broker::router"));
    }
}
