//! OTLP traces and W3C trace context; with them, the OTLP metrics
//! (`otel_metrics`), sharing endpoint, headers and resource.
//!
//! With `telemetry.otlp.endpoint`, every `tracing` span is exported through
//! tracing-opentelemetry and the OTLP/HTTP exporter (blocking client, built
//! before any runtime starts; the SDK's batch processor runs on a thread of
//! its own) to an Elastic APM Server or an OpenTelemetry collector
//! (`{endpoint}/v1/traces`). ECS log lines then carry the OpenTelemetry
//! `trace.id` / `span.id`, so Kibana links logs and traces.
//!
//! Trace context crosses protocols: an HTTP request with a `traceparent`
//! header and an MQTT 5 PUBLISH with a `traceparent` user property continue
//! the caller's trace ([`continue_trace`]); [`current_traceparent`] is what
//! to send on. Without OTLP the same ids still correlate the ECS logs.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::names;
use crate::config::{OtlpProtocol, OtlpSettings};

/// The header and MQTT 5 user property carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (the OpenTelemetry layer is installed).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Flushes and stops the exporters when dropped: metrics first (a last
/// export of the final values), then spans.
pub struct OtelGuard {
    provider: SdkTracerProvider,
    meters: SdkMeterProvider,
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.meters.shutdown() {
            eprintln!("mapcast: OTLP metric exporter did not shut down cleanly: {e}");
        }
        if let Err(e) = self.provider.shutdown() {
            eprintln!("mapcast: OTLP exporter did not shut down cleanly: {e}");
        }
    }
}

/// Build the exporters and tracer when `telemetry.otlp.endpoint` is set;
/// metrics are pushed every `metrics_interval`. Call it before any async
/// runtime exists (the blocking HTTP client needs that).
pub(crate) fn build(
    settings: &OtlpSettings,
    metrics_interval: Duration,
) -> anyhow::Result<Option<(Tracer, OtelGuard)>> {
    let Some(endpoint) = &settings.endpoint else { return Ok(None) };
    let mut headers = std::collections::HashMap::new();
    if let Some(auth) = &settings.authorization {
        headers.insert("authorization".to_owned(), auth.expose().to_owned());
    }
    let protocol = match settings.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_protocol(protocol)
        .with_timeout(Duration::from_secs(10))
        .with_headers(headers.clone())
        .build()
        .context("cannot build the OTLP exporter")?;
    let resource = Resource::builder()
        .with_service_name(names::SERVICE_NAME_VALUE)
        .with_attributes([
            KeyValue::new(names::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
            KeyValue::new(names::SERVICE_BUILD_COMMIT, super::BUILD_COMMIT),
        ])
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    let meters = super::otel_metrics::build(
        endpoint,
        protocol,
        headers,
        metrics_interval,
        resource.clone(),
    )?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(sampler)
        .build();
    let tracer = provider.tracer(names::SERVICE_NAME_VALUE);
    ENABLED.store(true, Relaxed);
    Ok(Some((tracer, OtelGuard { provider, meters })))
}

/// `traceparent` → (trace id, parent span id, flags), each as lowercase hex;
/// `None` unless it is a valid version-00 value with non-zero ids.
pub fn parse_traceparent(value: &str) -> Option<(String, String, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    if parts.next().is_some()
        || version != "00"
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
        || zero(trace)
        || zero(span)
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace.to_ascii_lowercase(), span.to_ascii_lowercase(), flags))
}

/// Make `span` continue the trace of an incoming `traceparent` (call it
/// before the span is first entered). A span that declares a `trace.id`
/// field gets the caller's trace id in its ECS logs too. Invalid values are
/// ignored (the span keeps its own trace).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let Some((trace, parent, flags)) = parse_traceparent(traceparent) else { return };
    span.record(names::TRACE_ID, trace.as_str());
    if enabled()
        && let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&trace), SpanId::from_hex(&parent))
    {
        let remote = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

/// The `traceparent` of the current span: what an outgoing HTTP request or
/// MQTT 5 message should carry to continue this trace.
pub fn current_traceparent() -> Option<String> {
    let current = tracing::Span::current();
    if enabled() {
        let cx = current.context();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            return Some(format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ));
        }
    }
    let (trace, span) = super::ecs::current_ids()?;
    Some(format!("00-{trace}-{span}-01"))
}

/// The `trace.id` of `span` as its logs and exported spans carry it.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let traceparent = span.in_scope(current_traceparent)?;
    traceparent.split('-').nth(1).map(str::to_owned)
}

/// The OpenTelemetry trace and span ids (hex) of span `id`, when exporting.
pub(crate) fn ids_of(
    id: &tracing::span::Id,
    dispatch: &tracing::Dispatch,
) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_values_are_checked_before_use() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into(), 1))
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }
}
