//! The ELK files shipped beside the binary, checked offline: Kibana saved
//! objects (`dashboards/*.ndjson`), index and component templates
//! (`dashboards/templates/`), the Logstash pipeline (`logstash/`) and
//! `docker-compose.yml`. Elasticsearch, Kibana and Logstash themselves are not
//! available to the tests; each checker is also run on a deliberately broken
//! fixture (`tests/fixtures/`) to prove it can fail.

pub(crate) mod catalog;
pub(crate) mod compose;
mod compose_cluster;
pub(crate) mod logstash;
mod saved_objects;

use std::path::{Path, PathBuf};

/// A path inside the repository.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[allow(clippy::disallowed_methods, reason = "offline checks of small repository files")]
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts that `errors` has one entry containing each of `expected`.
#[track_caller]
/// A YAML scalar as the text Compose would read it.
fn yaml_text(y: &yaml_rust2::Yaml) -> Option<String> {
    use yaml_rust2::Yaml;
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn assert_reports(errors: &[String], expected: &[&str]) {
    for want in expected {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "no error mentions {want:?}; errors: {errors:#?}"
        );
    }
}
