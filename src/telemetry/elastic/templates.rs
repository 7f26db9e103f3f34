//! `mapcast es setup`: the component and index templates of the three data
//! streams, from `dashboards/templates/` (compiled in, so the binary needs no
//! checkout). With `plain_indices` the same mappings are installed for the
//! plain index names, without `data_stream`.
//!
//! The files are written for Elasticsearch 8/9. Setup first asks the server
//! who it is (`GET /`); an OpenSearch server gets the field types it lacks
//! replaced ([`Distribution::adapt`]).

use anyhow::{Context as _, bail};
use elasticsearch::Elasticsearch;
use elasticsearch::cluster::ClusterPutComponentTemplateParts;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::IndicesPutIndexTemplateParts;
use serde_json::Value;

use super::{Indices, Stream};

/// The component template every index template is composed of.
pub const COMPONENT: (&str, &str) = (
    "mapcast-ecs@mappings",
    include_str!("../../../dashboards/templates/mapcast-ecs@mappings.json"),
);

/// Index templates: (name, stream, JSON).
pub const INDEX_TEMPLATES: [(&str, Stream, &str); 3] = [
    (
        "logs-mapcast.app",
        Stream::App,
        include_str!("../../../dashboards/templates/logs-mapcast.app.json"),
    ),
    (
        "logs-mapcast.crash",
        Stream::Crash,
        include_str!("../../../dashboards/templates/logs-mapcast.crash.json"),
    ),
    (
        "metrics-mapcast.broker",
        Stream::Metrics,
        include_str!("../../../dashboards/templates/metrics-mapcast.broker.json"),
    ),
];

/// The templates to install, as (kind, name, body): the component first.
pub fn bodies(plain: bool, namespace: &str) -> anyhow::Result<Vec<(&'static str, String, Value)>> {
    let indices = Indices::new(namespace, plain);
    let mut out = Vec::new();
    let component: Value =
        serde_json::from_str(COMPONENT.1).context("component template is not JSON")?;
    out.push(("component", COMPONENT.0.to_owned(), component));
    for (name, stream, text) in INDEX_TEMPLATES {
        let mut body: Value =
            serde_json::from_str(text).with_context(|| format!("{name} is not JSON"))?;
        let Some(obj) = body.as_object_mut() else { bail!("{name} is not an object") };
        let name = if plain {
            obj.remove("data_stream");
            // The plain index name with its namespace replaced by a wildcard.
            let index = indices.of(stream);
            let pattern = format!("{}*", index.strip_suffix(namespace).unwrap_or(index));
            obj.insert("index_patterns".into(), Value::from(vec![pattern]));
            format!("mapcast-plain-{name}")
        } else {
            name.to_owned()
        };
        out.push(("index", name, body));
    }
    Ok(out)
}

/// The kind of server behind the URL, as its root endpoint tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    Elasticsearch,
    /// OpenSearch (or a server presenting itself as such), with its version.
    OpenSearch(String),
}

impl Distribution {
    /// From the body of `GET /`: OpenSearch names itself in
    /// `version.distribution`; Elasticsearch has no such field.
    pub fn from_info(info: &Value) -> Self {
        match info["version"]["distribution"].as_str() {
            Some("opensearch") => {
                Self::OpenSearch(info["version"]["number"].as_str().unwrap_or("unknown").to_owned())
            }
            _ => Self::Elasticsearch,
        }
    }

    /// Asks the server. A key allowed to manage templates may not be allowed
    /// to read `GET /` (403): then the Elasticsearch mappings are used as
    /// written.
    pub async fn detect(client: &Elasticsearch) -> anyhow::Result<Self> {
        let response = client
            .info()
            .send()
            .await
            .context("cannot reach Elasticsearch to ask which server it is")?;
        match response.status_code() {
            StatusCode::UNAUTHORIZED => bail!("Elasticsearch refused the credentials (HTTP 401)"),
            s if s.is_success() => Ok(Self::from_info(&response.json().await.unwrap_or_default())),
            _ => Ok(Self::Elasticsearch),
        }
    }

    /// Rewrites the mapping types the distribution lacks, in place:
    /// OpenSearch has `flat_object` for `flattened`, no `histogram` (the
    /// buckets are kept in `_source`, not indexed) and no `constant_keyword`
    /// without a value.
    pub fn adapt(&self, body: &mut Value) {
        if *self == Self::Elasticsearch {
            return;
        }
        match body {
            Value::Object(map) => {
                match map.get("type").and_then(Value::as_str) {
                    Some("flattened") => {
                        map.insert("type".into(), "flat_object".into());
                    }
                    Some("histogram") => {
                        map.insert("type".into(), "object".into());
                        map.insert("enabled".into(), false.into());
                    }
                    // OpenSearch wants the value up front; Elasticsearch takes
                    // it from the first document.
                    Some("constant_keyword") if !map.contains_key("value") => {
                        map.insert("type".into(), "keyword".into());
                    }
                    _ => {}
                }
                map.values_mut().for_each(|v| self.adapt(v));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.adapt(v)),
            _ => {}
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Elasticsearch => String::new(),
            Self::OpenSearch(version) => format!(" (OpenSearch {version} mappings)"),
        }
    }
}

/// Install (or overwrite) every template; one line per template on success.
pub async fn install(
    client: &Elasticsearch,
    plain: bool,
    namespace: &str,
) -> anyhow::Result<Vec<String>> {
    let distribution = Distribution::detect(client).await?;
    let mut done = Vec::new();
    for (kind, name, mut body) in bodies(plain, namespace)? {
        distribution.adapt(&mut body);
        let response = match kind {
            "component" => {
                client
                    .cluster()
                    .put_component_template(ClusterPutComponentTemplateParts::Name(&name))
                    .body(body)
                    .send()
                    .await
            }
            _ => {
                client
                    .indices()
                    .put_index_template(IndicesPutIndexTemplateParts::Name(&name))
                    .body(body)
                    .send()
                    .await
            }
        }
        .with_context(|| format!("cannot reach Elasticsearch to install {kind} template {name}"))?;
        let status = response.status_code();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("installing {kind} template {name}: HTTP {status}: {text}");
        }
        done.push(format!("{kind} template {name}{}", distribution.label()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::names;

    #[test]
    fn data_stream_templates_match_the_stream_names_and_outrank_the_builtins() {
        let indices = Indices::new("default", false);
        for (kind, name, body) in bodies(false, "default").unwrap() {
            if kind == "component" {
                continue;
            }
            assert!(body["priority"].as_u64().unwrap() > 100, "{name}");
            assert!(body["data_stream"].is_object(), "{name}");
            let pattern = body["index_patterns"][0].as_str().unwrap();
            let prefix = pattern.strip_suffix('*').unwrap();
            let matched = [Stream::App, Stream::Crash, Stream::Metrics]
                .iter()
                .filter(|s| indices.of(**s).starts_with(prefix))
                .count();
            assert_eq!(matched, 1, "{name}: {pattern}");
        }
    }

    #[test]
    fn plain_templates_have_no_data_stream_and_match_the_plain_names() {
        let indices = Indices::new("ci", true);
        for (kind, name, body) in bodies(true, "ci").unwrap() {
            if kind == "component" {
                continue;
            }
            assert!(body.get("data_stream").is_none(), "{name}");
            let prefix = body["index_patterns"][0].as_str().unwrap().trim_end_matches('*');
            assert!(
                [Stream::App, Stream::Crash, Stream::Metrics]
                    .iter()
                    .any(|s| indices.of(*s).starts_with(prefix)),
                "{name}"
            );
        }
    }

    #[test]
    fn opensearch_is_recognised_by_its_root_endpoint() {
        let os = serde_json::json!({"version": {"distribution": "opensearch", "number": "3.8.0"}});
        assert_eq!(Distribution::from_info(&os), Distribution::OpenSearch("3.8.0".into()));
        let es = serde_json::json!({"version": {"number": "8.19.0", "build_flavor": "default"}});
        assert_eq!(Distribution::from_info(&es), Distribution::Elasticsearch);
    }

    #[test]
    fn opensearch_gets_its_own_types_and_elasticsearch_the_files_as_written() {
        let types = |body: &Value| {
            let text = body.to_string();
            ["flattened", "histogram", "flat_object"]
                .map(|t| text.contains(&format!("\"type\":\"{t}\"")))
        };
        let os = Distribution::OpenSearch("3.8.0".into());
        for (_, name, mut body) in bodies(false, "default").unwrap() {
            let before = types(&body);
            Distribution::Elasticsearch.adapt(&mut body);
            assert_eq!(types(&body), before, "{name}: Elasticsearch gets the file as written");
            os.adapt(&mut body);
            let [flattened, histogram, flat_object] = types(&body);
            assert!(!flattened && !histogram, "{name}: {body}");
            assert!(!body.to_string().contains("\"type\":\"constant_keyword\""), "{name}");
            assert_eq!(flat_object, before[0], "{name}");
        }
        let mut metrics = bodies(false, "default").unwrap().remove(3).2;
        os.adapt(&mut metrics);
        let histogram = &metrics["template"]["mappings"]["properties"]["mapcast.db.batch_duration_seconds"]
            ["properties"]["histogram"];
        assert_eq!(histogram, &serde_json::json!({"type": "object", "enabled": false}));
    }

    #[test]
    fn the_templates_map_the_fields_crash_reports_are_searched_by() {
        let component: Value = serde_json::from_str(COMPONENT.1).unwrap();
        let props = &component["template"]["mappings"]["properties"];
        for field in [
            names::TIMESTAMP,
            names::ERROR_TYPE,
            names::ERROR_MESSAGE,
            names::ERROR_STACK_TRACE,
            names::TRACE_ID,
            names::SERVICE_VERSION,
            names::LOG_ORIGIN_FILE_NAME,
            names::PROCESS_THREAD_NAME,
        ] {
            assert!(props.get(field).is_some(), "{field} is not mapped");
        }
    }
}
