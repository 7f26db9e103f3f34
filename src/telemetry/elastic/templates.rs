//! `mapcast es setup`: the component and index templates of the three data
//! streams, from `dashboards/templates/` (compiled in, so the binary needs no
//! checkout). With `plain_indices` the same mappings are installed for the
//! plain index names, without `data_stream`.

use anyhow::{Context as _, bail};
use elasticsearch::Elasticsearch;
use elasticsearch::cluster::ClusterPutComponentTemplateParts;
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

/// Install (or overwrite) every template; one line per template on success.
pub async fn install(
    client: &Elasticsearch,
    plain: bool,
    namespace: &str,
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for (kind, name, body) in bodies(plain, namespace)? {
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
        done.push(format!("{kind} template {name}"));
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
