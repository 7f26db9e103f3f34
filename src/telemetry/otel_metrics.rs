//! OTLP metrics: the numbers of `/metrics`, pushed every
//! `telemetry.metrics_interval_secs` to `{endpoint}/v1/metrics`.
//!
//! Every instrument is observable: its callback reads the existing atomics
//! ([`global`]) when the periodic reader collects, on the reader's
//! own thread, so the hot path pays nothing for the export. Instrument names
//! are the document field names of [`names::metrics`] (`mapcast.messages.received`);
//! a Prometheus label becomes an attribute; a histogram is exported as its
//! `.count` and `.sum` (observable instruments have no buckets); the
//! feature-flag counters are `mapcast.feature_flags.{requests,errors,crashes}`
//! with `flag` and `variant` attributes.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter, MeterProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use super::metrics::global;
use super::names;

/// Build the exporter, the periodic reader and one observable instrument per
/// metric. The reader starts its thread here; shutting the provider down
/// exports a last time.
pub(crate) fn build(
    endpoint: &str,
    protocol: Protocol,
    headers: std::collections::HashMap<String, String>,
    interval: Duration,
    resource: Resource,
) -> anyhow::Result<SdkMeterProvider> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/metrics", endpoint.trim_end_matches('/')))
        .with_protocol(protocol)
        .with_timeout(Duration::from_secs(10))
        .with_headers(headers)
        .build()
        .context("cannot build the OTLP metric exporter")?;
    let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
    let provider = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    let meter = provider.meter(names::SERVICE_NAME_VALUE);
    register(&meter);
    register_flags(&meter);
    Ok(provider)
}

/// The instruments live as long as the meter provider; their handles are not needed.
fn register(meter: &Meter) {
    for ((_, field), counter, help) in global().scalar_kinds() {
        if counter {
            meter
                .u64_observable_counter(field)
                .with_description(help)
                .with_callback(move |o| observe_scalar(o, field))
                .build();
        } else {
            meter
                .u64_observable_gauge(field)
                .with_description(help)
                .with_callback(move |o| observe_scalar(o, field))
                .build();
        }
    }
    for (_, field) in [
        names::metrics::DB_BATCH_OPS,
        names::metrics::DB_BATCH_SECONDS,
        names::metrics::HTTP_SECONDS,
    ] {
        meter
            .u64_observable_counter(format!("{field}{}", names::metrics::OTEL_COUNT_SUFFIX))
            .with_description("Observations of the histogram.")
            .with_callback(move |o| observe_histogram(field, |count, _, at| o.observe(count, at)))
            .build();
        meter
            .f64_observable_counter(format!("{field}{}", names::metrics::OTEL_SUM_SUFFIX))
            .with_description("Sum of the observations of the histogram.")
            .with_callback(move |o| observe_histogram(field, |_, sum, at| o.observe(sum, at)))
            .build();
    }
}

fn register_flags(meter: &Meter) {
    use names::metrics as m;
    for (field, help) in [
        (m::FLAG_ROW_REQUESTS, "Passes through feature-flagged paths, by flag and variant."),
        (m::FLAG_ROW_ERRORS, "Failed passes (errors and crashes), by flag and variant."),
        (m::FLAG_ROW_CRASHES, "Panics inside feature-flagged paths, by flag and variant."),
    ] {
        meter
            .u64_observable_counter(field)
            .with_description(help)
            .with_callback(move |o| observe_flags(o, field))
            .build();
    }
}

/// Each row of `Flags::document_rows` holds the counter under the last
/// segment of its field name.
fn observe_flags(o: &dyn AsyncInstrument<u64>, field: &str) {
    use names::metrics as m;
    let last = |f: &'static str| f.rsplit('.').next().unwrap_or(f);
    let text = |row: &serde_json::Value, f| row[last(f)].as_str().unwrap_or_default().to_owned();
    for row in global().flag_rows().unwrap_or_default() {
        let Some(value) = row[field.rsplit('.').next().unwrap_or(field)].as_u64() else { continue };
        let attributes = [
            KeyValue::new(last(m::FLAG_ROW_FLAG), text(&row, m::FLAG_ROW_FLAG)),
            KeyValue::new(last(m::FLAG_ROW_VARIANT), text(&row, m::FLAG_ROW_VARIANT)),
        ];
        o.observe(value, &attributes);
    }
}

fn observe_scalar(o: &dyn AsyncInstrument<u64>, wanted: &str) {
    global().visit_scalars(|(_, field), _, _, label, value| {
        if field == wanted {
            match label {
                Some((k, v)) => o.observe(value, &[KeyValue::new(k.to_owned(), v.to_owned())]),
                None => o.observe(value, &[]),
            }
        }
    });
}

fn observe_histogram(wanted: &str, mut f: impl FnMut(u64, f64, &[KeyValue])) {
    global().visit_histograms(|(_, field), route, count, sum| {
        if field == wanted {
            match route {
                Some(r) => f(count, sum, &[KeyValue::new("route", r.to_owned())]),
                None => f(count, sum, &[]),
            }
        }
    });
}
