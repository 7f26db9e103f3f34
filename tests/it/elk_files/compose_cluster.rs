//! `docker-compose.cluster.yml` and the HAProxy configuration it mounts,
//! read as files (no Docker engine here): PostgreSQL, Redis, HAProxy and
//! three mapcast instances, each with a health check, the instances waiting
//! for healthy PostgreSQL and Redis, each with a node id of its own and the
//! shared database and Redis, and HAProxy balancing over every instance.

use std::collections::BTreeSet;

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

use super::{assert_reports, read, repo, yaml_text as text};

/// `y` with its merge keys (`<<: *anchor`) applied, as Compose does: the
/// mapping's own keys win, nested mappings are merged too.
fn merged(y: &Yaml) -> Yaml {
    let Some(hash) = y.as_hash() else { return y.clone() };
    let mut out = Hash::new();
    if let Some(base) = hash.get(&Yaml::String("<<".into()))
        && let Yaml::Hash(base) = merged(base)
    {
        out.extend(base);
    }
    for (k, v) in hash {
        if k.as_str() != Some("<<") {
            out.insert(k.clone(), merged(v));
        }
    }
    Yaml::Hash(out)
}

/// `environment` as name → value, in either list or mapping form.
fn environment(service: &Yaml) -> Vec<(String, String)> {
    match &service["environment"] {
        Yaml::Hash(h) => h.iter().filter_map(|(k, v)| Some((text(k)?, text(v)?))).collect(),
        Yaml::Array(a) => a
            .iter()
            .filter_map(|e| e.as_str()?.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect(),
        _ => Vec::new(),
    }
}

/// Everything wrong with a cluster compose file and the HAProxy
/// configuration `haproxy_cfg` (the text of the file it mounts).
fn check_cluster_compose(source: &str, haproxy_cfg: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let docs = match YamlLoader::load_from_str(source) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("not YAML: {e}")],
    };
    let doc = merged(&docs[0]);
    let Some(services) = doc["services"].as_hash() else {
        return vec!["no services".into()];
    };
    for name in ["postgres", "redis", "haproxy"] {
        if doc["services"][name].is_badvalue() {
            errors.push(format!("no service {name}"));
        }
    }
    let nodes: Vec<(String, &Yaml)> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("mapcast")))
        .filter_map(|(k, s)| Some((text(k)?, s)))
        .collect();
    if nodes.len() < 3 {
        errors.push(format!("{} mapcast instances, expected 3", nodes.len()));
    }
    for (name, service) in services {
        let name = text(name).unwrap_or_default();
        if service["healthcheck"]["test"].is_badvalue() {
            errors.push(format!("{name} has no health check"));
        }
    }

    let mut ids = BTreeSet::new();
    for (name, service) in &nodes {
        for needed in ["postgres", "redis"] {
            if service["depends_on"][needed]["condition"].as_str() != Some("service_healthy") {
                errors.push(format!("{name} does not wait for a healthy {needed}"));
            }
        }
        let env = environment(service);
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        match get("MAPCAST_NODE_ID") {
            Some(id) if !ids.insert(id.clone()) => {
                errors.push(format!("{name} shares MAPCAST_NODE_ID {id} with another instance"))
            }
            Some(_) => {}
            None => errors.push(format!("{name} has no MAPCAST_NODE_ID")),
        }
        if !get("MAPCAST_DATABASE_URL")
            .is_some_and(|u| u.starts_with("postgres://") && u.contains("@postgres:"))
        {
            errors.push(format!("{name} has no MAPCAST_DATABASE_URL on the postgres service"));
        }
        if !get("MAPCAST_CLUSTER_REDIS_URL").is_some_and(|u| u.starts_with("redis://redis:")) {
            errors.push(format!("{name} has no MAPCAST_CLUSTER_REDIS_URL on the redis service"));
        }
        for listener in ["MQTT", "HTTP"] {
            if get(&format!("MAPCAST_{listener}_PROXY_PROTOCOL")).as_deref() != Some("true") {
                errors.push(format!("{name} does not expect the PROXY protocol on {listener}"));
            }
        }
    }

    let mounted = doc["services"]["haproxy"]["volumes"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(Yaml::as_str)
        .any(|v| v.ends_with(":/usr/local/etc/haproxy/haproxy.cfg:ro"));
    if !mounted {
        errors.push("haproxy does not mount its configuration".into());
    }
    // Every backend names every instance, by its service name.
    let mut backends: Vec<(String, Vec<String>)> = Vec::new();
    for line in haproxy_cfg.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("backend ") {
            backends.push((name.trim().to_owned(), Vec::new()));
        } else if let (Some(server), Some((_, servers))) =
            (line.strip_prefix("server "), backends.last_mut())
        {
            let address = server.split_whitespace().nth(1).unwrap_or_default();
            servers.push(address.split(':').next().unwrap_or_default().to_owned());
        }
    }
    if backends.len() < 2 {
        errors.push(format!("{} HAProxy backends, expected MQTT and API", backends.len()));
    }
    for (backend, servers) in &backends {
        for (node, _) in &nodes {
            if !servers.contains(node) {
                errors.push(format!("HAProxy backend {backend} does not name {node}"));
            }
        }
    }
    errors
}

fn shipped() -> (String, String) {
    (read(&repo("docker-compose.cluster.yml")), read(&repo("deploy/haproxy.compose.cfg")))
}

#[test]
fn the_cluster_compose_file_runs_three_instances_on_shared_postgres_and_redis_behind_haproxy() {
    let (compose, cfg) = shipped();
    let errors = check_cluster_compose(&compose, &cfg);
    assert!(errors.is_empty(), "docker-compose.cluster.yml: {errors:#?}");
}

#[test]
fn the_cluster_compose_check_catches_a_shared_node_id_a_missing_server_and_no_waiting() {
    let (compose, cfg) = shipped();
    let broken = compose
        .replacen("MAPCAST_NODE_ID: mapcast-2", "MAPCAST_NODE_ID: mapcast-1", 1)
        .replacen("MAPCAST_CLUSTER_REDIS_URL: redis://redis:6379", "X: y", 1)
        .replacen("condition: service_healthy", "condition: service_started", 2);
    let cfg = cfg.replacen("    server mapcast-3 mapcast-3:8080", "    #", 1);
    let errors = check_cluster_compose(&broken, &cfg);
    assert_reports(
        &errors,
        &[
            "mapcast-2 shares MAPCAST_NODE_ID mapcast-1",
            "mapcast-1 has no MAPCAST_CLUSTER_REDIS_URL",
            "does not wait for a healthy",
            "HAProxy backend api_nodes does not name mapcast-3",
        ],
    );
}
