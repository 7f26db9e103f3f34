//! ECS JSON log lines: one object per event with the ECS base fields, the
//! fields of every enclosing span (inner spans win) and the event's own fields.

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::names;

/// The event formatter; pair it with [`JsonFields`] so span fields are stored as JSON.
#[derive(Debug, Default)]
pub struct EcsFormat;

impl<S> FormatEvent<S, JsonFields> for EcsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records bridged from the `log` crate carry their real metadata in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(stored) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&stored.fields) {
                    fields.extend(map);
                }
            }
        }
        let mut visitor = FieldVisitor { fields: &mut fields, message: None };
        event.record(&mut visitor);
        let message = visitor.message.take().unwrap_or_default();

        // The base fields first, so the line reads well to humans too.
        let mut line = String::with_capacity(256);
        line.push_str("{\"");
        line.push_str(names::TIMESTAMP);
        line.push_str("\":\"");
        SystemTime.format_time(&mut Writer::new(&mut line))?;
        line.push('"');
        push_field(
            &mut line,
            names::LOG_LEVEL,
            &Value::from(meta.level().as_str().to_ascii_lowercase()),
        );
        push_field(&mut line, names::MESSAGE, &Value::from(message));
        push_field(&mut line, names::ECS_VERSION, &Value::from(names::ECS_VERSION_VALUE));
        push_field(&mut line, names::SERVICE_NAME, &Value::from(names::SERVICE_NAME_VALUE));
        push_field(&mut line, names::SERVICE_VERSION, &Value::from(env!("CARGO_PKG_VERSION")));
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
        for (key, value) in &fields {
            if !is_base_field(key) {
                push_field(&mut line, key, value);
            }
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
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
    )
}

struct FieldVisitor<'a> {
    fields: &'a mut Map<String, Value>,
    message: Option<String>,
}

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            names::MESSAGE => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            name if names::LOG_BRIDGE_FIELDS.contains(&name) => {}
            name => {
                self.fields.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for FieldVisitor<'_> {
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

    use tracing_subscriber::fmt::MakeWriter;
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

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let out = Capture::default();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(EcsFormat)
            .with_writer(out.clone());
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
}
