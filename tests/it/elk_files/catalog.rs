//! What the shipped files may name: the fields the code emits and the fields
//! the index templates map, per index pattern. Also the checks of the
//! templates themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use mapcast::broker::Stats;
use mapcast::telemetry::elastic::{Indices, Stream};
use mapcast::telemetry::metrics;
use serde_json::Value;

use super::{assert_reports, read, repo};

/// Types Kibana computes max, average, percentiles and rates of.
pub fn numeric(kind: &str) -> bool {
    ["long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float"]
        .contains(&kind)
        || kind == "unsigned_long"
}

/// Types Kibana can bucket by (terms) and sort on.
pub fn aggregatable(kind: &str) -> bool {
    numeric(kind)
        || ["keyword", "constant_keyword", "boolean", "date", "date_nanos", "ip"].contains(&kind)
}

/// Field types of Elasticsearch 8/9 mappings that the templates may use.
fn known_type(kind: &str) -> bool {
    aggregatable(kind)
        || ["wildcard", "text", "match_only_text", "object", "flattened", "histogram", "geo_point"]
            .contains(&kind)
}

/// The templates of one directory laid out as `dashboards/templates/`:
/// component templates are the files whose name has an `@`.
pub struct Templates {
    pub components: BTreeMap<String, Value>,
    pub indices: BTreeMap<String, Value>,
}

impl Templates {
    #[allow(clippy::disallowed_methods, reason = "offline checks of small repository files")]
    pub fn load(dir: &Path) -> Self {
        let mut components = BTreeMap::new();
        let mut indices = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(stem) = name.strip_suffix(".json") else { continue };
            let body: Value = serde_json::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let into = if stem.contains('@') { &mut components } else { &mut indices };
            into.insert(stem.to_owned(), body);
        }
        Self { components, indices }
    }

    /// Field path → type of every index pattern, after composition.
    pub fn mappings(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for body in self.indices.values() {
            let mut fields = BTreeMap::new();
            for name in body["composed_of"].as_array().into_iter().flatten() {
                if let Some(component) = name.as_str().and_then(|n| self.components.get(n)) {
                    flatten(&component["template"]["mappings"]["properties"], "", &mut fields);
                }
            }
            flatten(&body["template"]["mappings"]["properties"], "", &mut fields);
            for pattern in body["index_patterns"].as_array().into_iter().flatten() {
                if let Some(p) = pattern.as_str() {
                    out.insert(p.to_owned(), fields.clone());
                }
            }
        }
        out
    }
}

/// Mapping `properties` as dotted paths; objects appear as type `object`.
fn flatten(properties: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    let Some(map) = properties.as_object() else { return };
    for (key, spec) in map {
        let path = format!("{prefix}{key}");
        let kind = spec["type"].as_str().unwrap_or("object");
        out.insert(path.clone(), kind.to_owned());
        if spec.get("properties").is_some() {
            flatten(&spec["properties"], &format!("{path}."), out);
        }
    }
}

/// The fields mapcast emits: every field name in `src/telemetry/names.rs`
/// and every field of a real metrics document.
pub struct Emitted(BTreeSet<String>);

impl Emitted {
    pub fn load() -> Self {
        let mut fields = names_rs_fields(&read(&repo("src/telemetry/names.rs")));
        let m = metrics::global();
        m.set_broker_stats(Arc::new(Stats::default()));
        m.observe_http("/emitted", 0.01);
        m.observe_db_batch(3, 0.01);
        let document = Value::Object(m.document());
        leaves(&document, "", &mut fields);
        Self(fields)
    }

    /// Every field of `documents`, as shipped (nested objects as dotted
    /// paths): what the code really emitted, not what it could.
    pub fn from_documents<'d>(documents: impl IntoIterator<Item = &'d Value>) -> Self {
        let mut fields = BTreeSet::new();
        for document in documents {
            leaves(document, "", &mut fields);
        }
        Self(fields)
    }

    /// `field` or something below it (a `flattened` or `histogram` field
    /// holds a whole object) is emitted.
    pub fn contains(&self, field: &str) -> bool {
        self.0.contains(field)
            || self
                .0
                .range(format!("{field}.")..)
                .next()
                .is_some_and(|f| f.starts_with(&format!("{field}.")))
    }
}

/// The string values of `pub const` items that look like field names
/// (lowercase, digits, `._@`), leaving out values (`*_VALUE`) and datasets
/// (`DATASET_*`).
/// Pairs are `(Prometheus name, field)`: the second string is the field.
fn names_rs_fields(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for item in source.split("pub const ").skip(1) {
        let item = item.split(';').next().unwrap_or_default();
        let name = item.split(':').next().unwrap_or_default().trim();
        if name.ends_with("_VALUE") || name.starts_with("DATASET_") {
            continue;
        }
        let literals: Vec<&str> = item.split('"').skip(1).step_by(2).collect();
        let value = if item.contains("(&str, &str)") { literals.get(1) } else { literals.first() };
        let field_like = |v: &&&str| {
            v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._@".contains(c))
                && !v.starts_with(|c: char| c.is_ascii_digit())
        };
        if let Some(v) = value.filter(field_like) {
            out.insert((*v).to_owned());
        }
    }
    out
}

fn leaves(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                leaves(v, &format!("{prefix}{k}."), out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            items.iter().for_each(|v| leaves(v, prefix, out));
        }
        _ => {
            out.insert(prefix.trim_end_matches('.').to_owned());
        }
    }
}

/// Everything wrong with a set of templates: structure, composition, field
/// types, fields the code never emits, and coverage of the data streams the
/// shipper writes to.
pub fn check_templates(templates: &Templates, emitted: &Emitted) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, body) in &templates.components {
        if !body["template"]["mappings"]["properties"].is_object() {
            errors.push(format!("component {name}: no template.mappings.properties"));
        }
    }
    for (name, body) in &templates.indices {
        let patterns: Vec<&str> = body["index_patterns"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if patterns.is_empty() {
            errors.push(format!("index template {name}: no index_patterns"));
        }
        // Elasticsearch's built-in logs-*-* and metrics-*-* have priority 100.
        if body["priority"].as_u64().is_none_or(|p| p <= 100) {
            errors.push(format!("index template {name}: priority must be above 100"));
        }
        if !body["data_stream"].is_object() {
            errors.push(format!("index template {name}: no data_stream"));
        }
        for component in body["composed_of"].as_array().into_iter().flatten() {
            let component = component.as_str().unwrap_or_default();
            if !templates.components.contains_key(component) {
                errors.push(format!("index template {name}: composed_of {component} is missing"));
            }
        }
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (pattern, fields) in templates.mappings() {
        for (field, kind) in fields {
            if !known_type(&kind) {
                errors.push(format!("{pattern}: {field} has unknown type {kind}"));
            }
            if kind != "object" && !emitted.contains(&field) {
                errors.push(format!("{pattern}: {field} is mapped but never emitted"));
            }
            if let Some(other) = seen.insert(field.clone(), kind.clone())
                && other != kind
            {
                errors.push(format!("{field} is {kind} in {pattern} but {other} elsewhere"));
            }
        }
    }
    let indices = Indices::new("default", false);
    let patterns: Vec<String> = templates.mappings().into_keys().collect();
    for stream in [Stream::App, Stream::Crash, Stream::Metrics] {
        let name = indices.of(stream);
        let matching = patterns.iter().filter(|p| glob(p, name)).count();
        if matching != 1 {
            errors.push(format!("data stream {name} is matched by {matching} templates"));
        }
    }
    errors
}

/// `pattern` with `*` wildcards matches `name`.
pub fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let tail: Vec<&str> = parts.collect();
    for (i, part) in tail.iter().enumerate() {
        if i + 1 == tail.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[test]
fn the_shipped_templates_map_only_emitted_fields_with_known_types_for_each_data_stream() {
    let templates = Templates::load(&repo("dashboards/templates"));
    let errors = check_templates(&templates, &Emitted::load());
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(templates.indices.len(), 3);
}

#[test]
fn broken_templates_are_rejected_for_each_defect() {
    let templates = Templates::load(&repo("tests/fixtures/templates/broken"));
    let errors = check_templates(&templates, &Emitted::load());
    assert_reports(
        &errors,
        &[
            "client.idd is mapped but never emitted",
            "log.level has unknown type strng",
            "priority must be above 100",
            "composed_of mapcast-missing@mappings is missing",
            "index template logs-mapcast.crash: no data_stream",
            "data stream metrics-mapcast.broker-default is matched by 0 templates",
            "process.pid is keyword",
        ],
    );
}

#[test]
fn the_emitted_fields_come_from_names_rs_and_the_metrics_document() {
    let emitted = Emitted::load();
    for field in
        ["@timestamp", "trace.id", "feature_flag.result.variant", "mapcast.dropped.expired"]
    {
        assert!(emitted.contains(field), "{field}");
    }
    assert!(emitted.contains("mapcast.db.batch_duration_seconds.histogram"));
    assert!(emitted.contains("message"));
    for not_a_field in ["8.11.0", "mapcast.app", "canary-rollback", "mapcast.clients.conected"] {
        assert!(!emitted.contains(not_a_field), "{not_a_field}");
    }
}

#[test]
fn glob_matches_like_elasticsearch_index_patterns() {
    assert!(glob("logs-mapcast.app-*", "logs-mapcast.app-default"));
    assert!(!glob("logs-mapcast.app-*", "logs-mapcast.crash-default"));
    assert!(glob("*-mapcast.*-*", "metrics-mapcast.broker-x"));
    assert!(glob("exact", "exact") && !glob("exact", "exactly"));
}
