//! Kibana saved objects (`dashboards/*.ndjson`), checked as Kibana's import
//! and Lens would meet them: one JSON object per line with `type`, `id`,
//! `attributes` and `references`; the stringified JSON inside parses;
//! every reference resolves inside the bundle; every field a data view,
//! visualization or saved search uses is mapped by the index template of
//! its data view, with a type the operation accepts, and emitted by the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::catalog::{Emitted, Templates, aggregatable, numeric};
use super::{assert_reports, read, repo};

const TYPES: &[&str] = &["index-pattern", "search", "lens", "visualization", "dashboard"];

/// Field path → type, per data view id.
type Views = BTreeMap<String, BTreeMap<String, String>>;

struct Checker<'a> {
    emitted: &'a Emitted,
    mappings: BTreeMap<String, BTreeMap<String, String>>,
    errors: Vec<String>,
}

/// Everything wrong with the saved objects in `text` (an NDJSON export).
pub fn check_bundle(text: &str, templates: &Templates, emitted: &Emitted) -> Vec<String> {
    let mut checker = Checker { emitted, mappings: templates.mappings(), errors: Vec::new() };
    let mut objects = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            // The export summary line Kibana appends is not an object.
            Ok(v) if v.get("exportedCount").is_some() => {}
            Ok(v) => objects.push(v),
            Err(e) => checker.errors.push(format!("line {}: not JSON: {e}", n + 1)),
        }
    }
    let mut known = BTreeSet::new();
    for o in &objects {
        let (kind, id) =
            (o["type"].as_str().unwrap_or_default(), o["id"].as_str().unwrap_or_default());
        if !TYPES.contains(&kind) || id.is_empty() || !o["attributes"].is_object() {
            checker.errors.push(format!("{kind}/{id}: needs a known type, an id and attributes"));
        }
        if !known.insert((kind.to_owned(), id.to_owned())) {
            checker.errors.push(format!("{kind}/{id}: duplicate"));
        }
    }
    for o in &objects {
        let here =
            format!("{}/{}", o["type"].as_str().unwrap_or("?"), o["id"].as_str().unwrap_or("?"));
        for r in o["references"].as_array().into_iter().flatten() {
            let target = (
                r["type"].as_str().unwrap_or("").to_owned(),
                r["id"].as_str().unwrap_or("").to_owned(),
            );
            if r["name"].as_str().is_none_or(str::is_empty) || !known.contains(&target) {
                checker
                    .errors
                    .push(format!("{here}: reference {r} does not resolve in the bundle"));
            }
        }
    }
    let views: Views = objects
        .iter()
        .filter(|o| o["type"] == "index-pattern")
        .map(|o| (o["id"].as_str().unwrap_or_default().to_owned(), checker.data_view(o)))
        .collect();
    for o in &objects {
        match o["type"].as_str() {
            Some("lens") => checker.lens(o, &views),
            Some("search") => checker.search(o, &views),
            Some("dashboard") => checker.dashboard(o),
            _ => {}
        }
    }
    checker.errors
}

fn here(o: &Value) -> String {
    format!("{}/{}", o["type"].as_str().unwrap_or("?"), o["id"].as_str().unwrap_or("?"))
}

/// The id referenced under `name`.
fn reference<'v>(o: &'v Value, name: &str) -> Option<&'v str> {
    o["references"].as_array()?.iter().find(|r| r["name"] == name)?["id"].as_str()
}

/// Parses a stringified JSON attribute.
fn embedded(o: &Value, pointer: &str, errors: &mut Vec<String>) -> Option<Value> {
    let text = o.pointer(pointer)?.as_str()?;
    serde_json::from_str(text)
        .map_err(|e| errors.push(format!("{}: {pointer} is not JSON: {e}", here(o))))
        .ok()
}

/// The `dataType` Lens gives a column of a field of mapping type `kind`.
fn lens_data_type(kind: &str) -> &'static str {
    match kind {
        k if numeric(k) => "number",
        "date" | "date_nanos" => "date",
        "boolean" => "boolean",
        "ip" => "ip",
        _ => "string",
    }
}

/// The field names a KQL query tests (`field : v`, `field >= n`).
pub fn kql_fields(query: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut chars = query.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c == '"' {
            // Skip a quoted value, with its escapes.
            while let Some((_, q)) = chars.next() {
                match q {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
        } else if c.is_alphanumeric() || "_@.".contains(c) {
            let mut end = start + c.len_utf8();
            while let Some(&(i, n)) = chars.peek() {
                if !(n.is_alphanumeric() || "_@.*".contains(n)) {
                    break;
                }
                end = i + n.len_utf8();
                chars.next();
            }
            let rest = query[end..].trim_start();
            if rest.starts_with([':', '<', '>']) {
                fields.push(query[start..end].to_owned());
            }
        }
    }
    fields
}

impl Checker<'_> {
    /// A data view's mapped fields: those of the index template whose pattern
    /// is its title.
    fn data_view(&mut self, o: &Value) -> BTreeMap<String, String> {
        let title = o["attributes"]["title"].as_str().unwrap_or_default();
        let Some(fields) = self.mappings.get(title).cloned() else {
            self.errors.push(format!("{}: no index template has the pattern {title}", here(o)));
            return BTreeMap::new();
        };
        let time = o["attributes"]["timeFieldName"].as_str().unwrap_or_default();
        if fields.get(time).map(String::as_str) != Some("date") {
            self.errors.push(format!("{}: time field {time} is not a mapped date", here(o)));
        }
        if let Some(formats) = embedded(o, "/attributes/fieldFormatMap", &mut self.errors) {
            for field in formats.as_object().into_iter().flat_map(|m| m.keys()) {
                self.field(o, &fields, field, None);
            }
        }
        fields
    }

    /// `field` is mapped in `fields` (with a type `usable` accepts, if given) and emitted.
    fn field(
        &mut self,
        o: &Value,
        fields: &BTreeMap<String, String>,
        field: &str,
        usable: Option<fn(&str) -> bool>,
    ) {
        let field = field.trim_end_matches(".*").trim_end_matches('*');
        match fields.get(field) {
            None => {
                self.errors.push(format!("{}: field {field} is not in the index template", here(o)))
            }
            Some(kind) if usable.is_some_and(|usable| !usable(kind)) => {
                self.errors.push(format!("{}: field {field} is {kind}, not usable here", here(o)));
            }
            Some(_) => {}
        }
        if !self.emitted.contains(field) {
            self.errors.push(format!("{}: field {field} is never emitted", here(o)));
        }
    }

    fn kql(&mut self, o: &Value, fields: &BTreeMap<String, String>, query: &Value) {
        for field in kql_fields(query.as_str().unwrap_or_default()) {
            self.field(o, fields, &field, None);
        }
    }

    fn view<'v>(
        &mut self,
        o: &Value,
        ref_name: &str,
        views: &'v Views,
    ) -> Option<&'v BTreeMap<String, String>> {
        let view = reference(o, ref_name).and_then(|id| views.get(id));
        if view.is_none() {
            self.errors.push(format!("{}: no data view under reference {ref_name}", here(o)));
        }
        view
    }

    fn lens(&mut self, o: &Value, views: &Views) {
        let state = &o["attributes"]["state"];
        let Some(layers) = state["datasourceStates"]["formBased"]["layers"].as_object() else {
            self.errors.push(format!("{}: no formBased layers", here(o)));
            return;
        };
        let mut column_ids = BTreeSet::new();
        for (layer_id, layer) in layers {
            let Some(fields) =
                self.view(o, &format!("indexpattern-datasource-layer-{layer_id}"), views)
            else {
                continue;
            };
            let columns = layer["columns"].as_object().cloned().unwrap_or_default();
            let order: BTreeSet<&str> = layer["columnOrder"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if order != columns.keys().map(String::as_str).collect() {
                self.errors
                    .push(format!("{}: columnOrder of {layer_id} is not its columns", here(o)));
            }
            for (id, column) in &columns {
                column_ids.insert(id.clone());
                for r in column["references"].as_array().into_iter().flatten() {
                    if !r.as_str().is_some_and(|r| columns.contains_key(r)) {
                        self.errors
                            .push(format!("{}: column {id} references missing {r}", here(o)));
                    }
                }
                self.kql(o, fields, &column["filter"]["query"]);
                if let Some(filters) = column["params"]["filters"].as_array() {
                    for f in filters {
                        self.kql(o, fields, &f["input"]["query"]);
                    }
                }
                let Some(source) = column["sourceField"].as_str().filter(|f| *f != "___records___")
                else {
                    continue;
                };
                let usable: Option<fn(&str) -> bool> = match column["operationType"].as_str() {
                    Some("date_histogram") => Some(|kind| kind.starts_with("date")),
                    Some("terms") => Some(aggregatable),
                    Some("max" | "min" | "average" | "sum" | "median" | "percentile") => {
                        Some(numeric)
                    }
                    _ => None,
                };
                self.field(o, fields, source, usable);
                if let Some(kind) = fields.get(source) {
                    let expected = lens_data_type(kind);
                    if column["dataType"] != expected {
                        self.errors.push(format!(
                            "{}: column {id} is {}, {source} is {expected}",
                            here(o),
                            column["dataType"]
                        ));
                    }
                }
            }
            self.kql(o, fields, &state["query"]["query"]);
        }
        let vis = &state["visualization"];
        let mut accessors: Vec<&Value> = Vec::new();
        for layer in vis["layers"].as_array().into_iter().flatten() {
            accessors.extend(layer["accessors"].as_array().into_iter().flatten());
            accessors.extend([&layer["xAccessor"], &layer["splitAccessor"]]);
        }
        accessors.extend(vis["columns"].as_array().into_iter().flatten().map(|c| &c["columnId"]));
        accessors.push(&vis["metricAccessor"]);
        let used: Vec<&str> = accessors.into_iter().filter_map(Value::as_str).collect();
        if used.is_empty() {
            self.errors.push(format!("{}: the visualization shows no column", here(o)));
        }
        for a in used {
            if !column_ids.contains(a) {
                self.errors
                    .push(format!("{}: the visualization shows missing column {a}", here(o)));
            }
        }
    }

    fn search(&mut self, o: &Value, views: &Views) {
        let Some(source) =
            embedded(o, "/attributes/kibanaSavedObjectMeta/searchSourceJSON", &mut self.errors)
        else {
            return;
        };
        let ref_name = source["indexRefName"].as_str().unwrap_or_default().to_owned();
        let Some(fields) = self.view(o, &ref_name, views) else { return };
        let attributes = &o["attributes"];
        let columns = attributes["columns"].as_array().into_iter().flatten();
        let sort = attributes["sort"].as_array().into_iter().flatten().map(|s| &s[0]);
        for field in columns.chain(sort).filter_map(Value::as_str) {
            self.field(o, fields, field, None);
        }
        self.kql(o, fields, &source["query"]["query"]);
    }

    fn dashboard(&mut self, o: &Value) {
        embedded(o, "/attributes/optionsJSON", &mut self.errors);
        embedded(o, "/attributes/kibanaSavedObjectMeta/searchSourceJSON", &mut self.errors);
        let Some(panels) = embedded(o, "/attributes/panelsJSON", &mut self.errors) else { return };
        let panels = panels.as_array().cloned().unwrap_or_default();
        if panels.is_empty() {
            self.errors.push(format!("{}: no panels", here(o)));
        }
        let mut cells = BTreeSet::new();
        for p in &panels {
            let index = p["panelIndex"].as_str().unwrap_or_default();
            let ref_name = format!("{index}:{}", p["panelRefName"].as_str().unwrap_or_default());
            let target = o["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["name"] == ref_name.as_str());
            if target.is_none_or(|r| r["type"] != p["type"]) {
                self.errors.push(format!(
                    "{}: panel {index} has no {} reference {ref_name}",
                    here(o),
                    p["type"]
                ));
            }
            let g = &p["gridData"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or(0));
            if w == 0 || h == 0 || x + w > 48 {
                self.errors
                    .push(format!("{}: panel {index} lies outside the 48-column grid", here(o)));
            }
            for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
                if !cells.insert(cell) {
                    self.errors.push(format!("{}: panel {index} overlaps another", here(o)));
                    break;
                }
            }
        }
    }
}

#[allow(clippy::disallowed_methods, reason = "offline checks of small repository files")]
fn ndjson_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    files
}

/// Structure and mappings, offline; a field passes here when the code could
/// emit it (a constant in `names.rs`). Whether it really is emitted is
/// checked against shipped documents below.
#[test]
fn the_dashboards_import_cleanly_and_use_only_fields_the_code_emits() {
    let templates = Templates::load(&repo("dashboards/templates"));
    let emitted = Emitted::load();
    let files = ndjson_files(&repo("dashboards"));
    assert!(!files.is_empty(), "no dashboards/*.ndjson");
    let mut text = String::new();
    for file in &files {
        text.push_str(&read(file));
        text.push('\n');
    }
    let errors = check_bundle(&text, &templates, &emitted);
    assert!(errors.is_empty(), "{errors:#?}");

    let objects: Vec<Value> =
        text.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    let titles: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o["type"] == "dashboard" || o["type"] == "index-pattern")
        .filter_map(|o| o["attributes"]["title"].as_str())
        .collect();
    for want in [
        "logs-mapcast.app-*",
        "logs-mapcast.crash-*",
        "metrics-mapcast.broker-*",
        "mapcast: Crash forensics",
        "mapcast: Broker overview",
        "mapcast: Canary",
    ] {
        assert!(titles.contains(want), "missing {want}: {titles:?}");
    }
}

#[test]
fn the_canary_dashboard_splits_by_flag_variant_and_shows_rollbacks() {
    let text = read(&repo("dashboards/mapcast.ndjson"));
    let canary = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|o| o["id"] == "mapcast-canary")
        .expect("the canary dashboard");
    let panels: Vec<String> = canary["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let shown: String = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|o| panels.iter().any(|p| o["id"] == p.as_str()))
        .map(|o| o["attributes"].to_string())
        .collect();
    for needle in
        ["feature_flag.key", "feature_flag.result.variant", "canary-rollback", "\"percentile\":99"]
    {
        assert!(shown.contains(needle), "the canary dashboard never uses {needle}");
    }
}

#[test]
fn a_broken_bundle_is_rejected_for_each_defect() {
    let templates = Templates::load(&repo("dashboards/templates"));
    let errors = check_bundle(
        &read(&repo("tests/fixtures/dashboards/broken.ndjson")),
        &templates,
        &Emitted::load(),
    );
    assert_reports(
        &errors,
        &[
            "line 2: not JSON",
            "no index template has the pattern logs-mapcast.ap-*",
            "field mapcast.clients.conected is not in the index template",
            "field mapcast.clients.conected is never emitted",
            "field error.message is match_only_text, not usable here",
            "field feature_flag.varient is not in the index template",
            "searchSourceJSON is not JSON",
            "does not resolve in the bundle",
            "panel p2 has no \"lens\" reference p2:panel_p2",
            "the visualization shows missing column zz",
            "column n is \"string\", log.origin.file.line is number",
            "panel p3 overlaps another",
        ],
    );
}

#[test]
fn kql_fields_are_the_names_before_an_operator_outside_quotes() {
    let q =
        r#"log.level : ("error" or "fatal") or http.response.status_code >= 500 and not a:"b : c""#;
    assert_eq!(kql_fields(q), ["log.level", "http.response.status_code", "a"]);
    assert_eq!(kql_fields("feature_flag.key : *"), ["feature_flag.key"]);
}

/// The dashboards against the documents a running server really shipped
/// during a scenario (to the strict `_bulk` endpoint): a field counts as
/// emitted only if some shipped document carries it, not because a constant
/// names it.
#[tokio::test]
async fn the_dashboards_use_only_fields_found_in_documents_shipped_during_a_scenario() {
    use std::time::Duration;

    use crate::elastic::{APP, CRASH, METRICS, shipping_config};
    use crate::helpers::{
        Api, EsBulk, PASSWORD, ServerProcess, V3Options, add_admin, expect_problem, location,
    };

    let es = EsBulk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = add_admin(dir.path(), "root", PASSWORD).await;
    let extra = "[debug]\npanic_endpoint = true\n[map]\ninterval_secs = 1\n\
                 [flags]\nrefresh_ms = 200\ncanary_interval_secs = 1\n";
    let server =
        ServerProcess::start_with_config(dir.path(), &shipping_config(&es.url(), extra), &[]).await;
    let api = Api::new(server.http_addr);

    // What the dashboards show: traffic, sign-ins (one failing), the map,
    // a crash.
    let token = api.login("root", PASSWORD).await;
    let wrong = api
        .post_json(
            "/api/v1/sessions",
            None,
            &serde_json::json!({"username": "root", "password": "not-the-password"}),
        )
        .await;
    expect_problem(wrong, 401, "unauthorized").await;
    let mut car = V3Options::new("car-1", server.mqtt_addr).connect().await;
    car.subscribe("devices/#", rumqttc::QoS::AtLeastOnce).await;
    car.publish_qos1("devices/car-1/location", false, location(4.9, 52.4)).await;
    car.publish("devices/car-1/location", rumqttc::QoS::AtMostOnce, false, "not json").await;
    let intruder = V3Options::new("intruder", server.mqtt_addr).connect().await;
    intruder.publish("$SYS/forged", rumqttc::QoS::AtMostOnce, false, "x").await;
    api.get("/api/v1/map", None).await;
    api.get("/no-such-page", None).await;
    // A canary (the admin) that fails until it is rolled back, and crashes
    // once on the way.
    let me = format!("rest:{}", root["id"].as_str().unwrap());
    let flag = serde_json::json!({
        "enabled": true, "rollout": 0, "allow": [me], "debug_fault": "error",
        "canary": {"min_samples": 5, "failed_checks": 2},
    });
    let put = api
        .send(
            reqwest::Method::PUT,
            "/api/v1/flags/map.clustering",
            Some(&token),
            Some(("application/json", flag.to_string())),
        )
        .await;
    assert_eq!(put.status(), 200);
    let empty = serde_json::json!({});
    let panic = api.post_json("/api/v1/admin/debug/panic", Some(&token), &empty).await;
    expect_problem(panic, 500, "internal").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..5 {
            api.get("/api/v1/map?zoom=3", Some(&token)).await;
            api.get("/api/v1/map?zoom=3", None).await;
        }
        let flag = api.get("/api/v1/flags/map.clustering", Some(&token)).await;
        let flag: Value = flag.json().await.unwrap();
        if flag["state"] == "rolled_back" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rolled back: {flag}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let shipped = es
        .wait_for(Duration::from_secs(20), |es| {
            let accepted = es.accepted();
            [APP, METRICS, CRASH].iter().all(|index| {
                accepted.iter().filter(|a| a.index == *index).count() >= 2 || *index == CRASH
            }) && accepted.iter().any(|a| a.index == CRASH)
        })
        .await;
    assert!(shipped, "not every data stream got documents; violations: {:?}", es.violations());
    // One more metrics interval, so counters of the scenario are in.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let accepted = es.accepted();
    let emitted = Emitted::from_documents(accepted.iter().map(|a| &a.doc));
    let templates = Templates::load(&repo("dashboards/templates"));
    let mut text = String::new();
    for file in ndjson_files(&repo("dashboards")) {
        text.push_str(&read(&file));
        text.push('\n');
    }
    let errors = check_bundle(&text, &templates, &emitted);
    assert!(errors.is_empty(), "{} documents shipped; {errors:#?}", accepted.len());
}
