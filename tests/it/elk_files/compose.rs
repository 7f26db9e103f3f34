//! `docker-compose.yml` and the `Dockerfile`, read as files (no Docker engine
//! here): the services the stack needs, their ports, health checks, volumes
//! and mounted files, the variables they use, and the settings they give
//! mapcast.

use std::collections::BTreeSet;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use super::{assert_reports, read, repo};

/// Long-running services and the container ports they must publish.
const SERVICES: &[(&str, &[u16])] = &[
    ("elasticsearch", &[9200]),
    ("kibana", &[5601]),
    ("logstash", &[5000]),
    ("apm-server", &[8200]),
    ("postgres", &[]),
    ("mapcast", &[1883, 8080]),
];

fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Names of a mapping's keys.
fn keys(y: &Yaml) -> Vec<String> {
    y.as_hash().map(|h| h.keys().filter_map(text).collect()).unwrap_or_default()
}

/// `${NAME}` and `${NAME:-default}` references (`$${...}` is escaped, for the container's shell).
fn variables(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("${") {
        let escaped = rest[..at].ends_with('$');
        rest = &rest[at + 2..];
        let end = rest.find('}').unwrap_or(rest.len());
        let name = rest[..end].split([':', '-']).next().unwrap_or_default();
        if !escaped {
            out.insert(name.to_owned());
        }
    }
    out
}

/// Everything wrong with a compose file in `root` (mounts resolve against it).
fn check_compose(source: &str, root: &Path, env_example: &str, settings: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let docs = match YamlLoader::load_from_str(source) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("not YAML: {e}")],
    };
    let doc = &docs[0];
    let services = &doc["services"];
    let names = keys(services);
    let declared_volumes = keys(&doc["volumes"]);

    for (name, ports) in SERVICES {
        let service = &services[*name];
        if service.is_badvalue() {
            errors.push(format!("no service {name}"));
            continue;
        }
        if service["healthcheck"]["test"].is_badvalue() {
            errors.push(format!("{name} has no health check"));
        }
        let published: Vec<String> =
            service["ports"].as_vec().into_iter().flatten().filter_map(text).collect();
        for port in *ports {
            if !published.iter().any(|p| p.ends_with(&format!(":{port}"))) {
                errors.push(format!("{name} does not publish port {port}"));
            }
        }
    }
    if services["setup"].is_badvalue() {
        errors.push("no one-shot setup service".into());
    }
    let mapcast_needs_setup = services["mapcast"]["depends_on"]["setup"]["condition"].as_str()
        == Some("service_completed_successfully");
    if !mapcast_needs_setup {
        errors.push("mapcast does not wait for the setup to complete".into());
    }

    for name in &names {
        let service = &services[name.as_str()];
        // `depends_on` is a list of names or a mapping of name → condition.
        let listed = service["depends_on"].as_vec().into_iter().flatten().filter_map(text);
        for dependency in keys(&service["depends_on"]).into_iter().chain(listed) {
            if !names.contains(&dependency) {
                errors.push(format!("{name} depends on unknown service {dependency}"));
            }
        }
        if let Some(context) = service["build"].as_str()
            && !root.join(context).join("Dockerfile").is_file()
        {
            errors.push(format!("{name} builds {context} which has no Dockerfile"));
        }
        for volume in service["volumes"].as_vec().into_iter().flatten().filter_map(Yaml::as_str) {
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with('.') || source.starts_with('/') {
                if !root.join(source).exists() {
                    errors.push(format!("{name} mounts missing {source}"));
                }
            } else if !declared_volumes.iter().any(|v| v == source) {
                errors.push(format!("{name} uses undeclared volume {source}"));
            }
        }
        // Every MAPCAST_* variable given to mapcast is one its settings read.
        for key in keys(&service["environment"]).iter().filter(|k| k.starts_with("MAPCAST_")) {
            let known = settings.contains(&format!("\"{key}\"")) || key == "MAPCAST_NAMESPACE";
            if !known {
                errors.push(format!("{name} sets {key}, which mapcast does not read"));
            }
        }
    }

    let defined: BTreeSet<String> = env_example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .collect();
    for variable in variables(source) {
        if !defined.contains(&variable) {
            errors.push(format!("${{{variable}}} is not in .env.example"));
        }
    }
    // Passwords come from .env, never written into the file.
    for line in source.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.contains("password") && lower.contains("changeme") {
            errors.push(format!("a literal password: {}", line.trim()));
        }
    }
    errors
}

fn settings_source() -> String {
    read(&repo("src/config.rs"))
}

#[test]
fn the_compose_file_runs_the_stack_with_health_checks_and_existing_files() {
    let errors = check_compose(
        &read(&repo("docker-compose.yml")),
        &repo(""),
        &read(&repo(".env.example")),
        &settings_source(),
    );
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_compose_file_mounts_the_pipeline_where_pipelines_yml_looks_and_imports_the_dashboards() {
    let compose = YamlLoader::load_from_str(&read(&repo("docker-compose.yml"))).unwrap().remove(0);
    let logstash: Vec<&str> = compose["services"]["logstash"]["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        logstash.contains(&"./logstash/pipeline:/usr/share/logstash/pipeline:ro"),
        "{logstash:?}"
    );
    let setup = &compose["services"]["setup"];
    let script = setup["entrypoint"][1].as_str().unwrap();
    let mount = setup["volumes"][0].as_str().unwrap();
    let (host, container) = mount.split_once(':').unwrap();
    let relative = script.strip_prefix(container.trim_end_matches(":ro")).unwrap();
    let script_text = read(&repo(host).join(relative.trim_start_matches('/')));
    assert!(script_text.contains("mapcast es setup"), "{script_text}");
    assert!(script_text.contains("/api/saved_objects/_import?overwrite=true"));
}

/// The container path `path` of `service` seen from `other`, through the
/// named volume both mount.
fn through_shared_volume(compose: &Yaml, service: &str, path: &str, other: &str) -> Option<String> {
    let mounts = |name: &str| -> Vec<(String, String)> {
        compose["services"][name]["volumes"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(Yaml::as_str)
            .filter_map(|v| {
                let mut parts = v.split(':');
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect()
    };
    let (volume, rest) = mounts(service)
        .into_iter()
        .find_map(|(volume, at)| Some((volume, path.strip_prefix(&at)?.to_owned())))?;
    let (_, at) = mounts(other).into_iter().find(|(v, _)| *v == volume)?;
    Some(format!("{at}{rest}"))
}

#[test]
fn the_logstash_variant_feeds_mapcasts_log_file_to_the_pipelines_file_input() {
    let main = YamlLoader::load_from_str(&read(&repo("docker-compose.yml"))).unwrap().remove(0);
    let overlay =
        YamlLoader::load_from_str(&read(&repo("docker-compose.logstash.yml"))).unwrap().remove(0);
    let main_services = keys(&main["services"]);
    for name in keys(&overlay["services"]) {
        assert!(main_services.contains(&name), "the overlay adds service {name}");
    }
    let mapcast = &overlay["services"]["mapcast"];
    // Direct shipping off, so no document is written twice.
    assert_eq!(mapcast["environment"]["MAPCAST_ELASTICSEARCH_URL"].as_str(), Some(""));
    let command = mapcast["command"][0].as_str().unwrap();
    assert!(command.starts_with("exec mapcast serve >> "), "{command}");
    let log_file = command.rsplit(' ').next().unwrap();
    let seen_by_logstash = through_shared_volume(&main, "mapcast", log_file, "logstash")
        .expect("the log file is on a volume Logstash mounts");
    let globs = super::logstash::file_input_paths(&read(&repo("logstash/pipeline/mapcast.conf")));
    assert!(
        globs.iter().any(|g| super::catalog::glob(g, &seen_by_logstash)),
        "{seen_by_logstash} is not read by {globs:?}"
    );
}

#[test]
fn the_image_is_multi_stage_locked_and_without_openssl() {
    let dockerfile = read(&repo("Dockerfile"));
    let stages = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a build stage and a slim runtime stage");
    assert!(dockerfile.contains("cargo build --release --locked"));
    for banned in ["libssl", "openssl"] {
        assert!(!dockerfile.to_ascii_lowercase().contains(banned), "{banned} in the Dockerfile");
    }
    let ignore = read(&repo(".dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "the build context leaves out target/");
}

#[test]
fn a_broken_compose_file_is_rejected_for_each_defect() {
    let errors = check_compose(
        &read(&repo("tests/fixtures/compose/broken.yml")),
        &repo(""),
        &read(&repo(".env.example")),
        &settings_source(),
    );
    assert_reports(
        &errors,
        &[
            "no service apm-server",
            "kibana has no health check",
            "mapcast does not publish port 1883",
            "mapcast does not wait for the setup to complete",
            "logstash depends on unknown service elastic",
            "logstash mounts missing ./logstash/pipelines",
            "mapcast uses undeclared volume mapcast-dat",
            "mapcast sets MAPCAST_ELASTIC_URL, which mapcast does not read",
            "${ELASTIC_PASS} is not in .env.example",
            "a literal password",
        ],
    );
    assert!(check_compose("services: [", &repo(""), "", "")[0].starts_with("not YAML"));
}
