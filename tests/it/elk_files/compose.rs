//! `docker-compose.yml` and the `Dockerfile`, read as files (no Docker engine
//! here): the services the stack needs, their ports, health checks, volumes
//! and mounted files, the variables they use, and the settings they give
//! mapcast.

use std::collections::BTreeSet;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use super::{assert_reports, read, repo, yaml_text as text};

/// Long-running services and the container ports they must publish.
const SERVICES: &[(&str, &[u16])] = &[
    ("elasticsearch", &[9200]),
    ("kibana", &[5601]),
    ("logstash", &[5000]),
    ("apm-server", &[8200]),
    ("postgres", &[]),
    ("mapcast", &[1883, 8080]),
];

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

    errors.extend(check_health_check_tools(services, root));
    errors.extend(check_least_privilege(services));
    // mapcast must not wait for Kibana (directly or through the import).
    for waited in waits_for(services, "mapcast") {
        if waited == "kibana" || waited == "dashboards" {
            errors.push(format!("mapcast waits for {waited}"));
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

/// Every service `name` waits for, directly or through others.
fn waits_for(services: &Yaml, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_owned()];
    while let Some(next) = todo.pop() {
        let depends = &services[next.as_str()]["depends_on"];
        let listed = depends.as_vec().into_iter().flatten().filter_map(text);
        for dependency in keys(depends).into_iter().chain(listed) {
            if seen.insert(dependency.clone()) {
                todo.push(dependency);
            }
        }
    }
    seen
}

/// What the published images ship that a health check may run, read from
/// their Dockerfiles: Elasticsearch (elastic/elasticsearch,
/// distribution/docker/.../default/Dockerfile) and Kibana (elastic/kibana,
/// docker_generator/templates/base/Dockerfile) install curl; Logstash
/// (elastic/logstash, docker/templates/Dockerfile.erb) runs curl in its own
/// build on a UBI minimal base; the APM Server (elastic/apm-server,
/// packaging/docker/Dockerfile) is plain ubuntu:22.04 with a bash entrypoint
/// script and installs nothing, so no curl; postgres has its client tools.
const IMAGE_TOOLS: &[(&str, &[&str])] = &[
    ("docker.elastic.co/elasticsearch/elasticsearch:", &["curl", "bash", "sh", "grep"]),
    ("docker.elastic.co/kibana/kibana:", &["curl", "bash", "sh", "grep"]),
    ("docker.elastic.co/logstash/logstash:", &["curl", "bash", "sh", "grep"]),
    ("docker.elastic.co/apm/apm-server:", &["bash", "sh", "grep"]),
    ("postgres:", &["pg_isready", "bash", "sh"]),
];

/// Shell builtins: always there where the shell is.
const BUILTINS: &[&str] =
    &["exec", "printf", "read", "test", "[[", "[", "echo", ":", "true", "exit"];

/// What the image built from `root`'s Dockerfile ships: a Debian base's
/// shells and grep, what its last stage installs with apt-get, and mapcast.
fn built_image_tools(root: &Path) -> Vec<String> {
    let dockerfile = read(&root.join("Dockerfile"));
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap_or_default();
    let mut tools: Vec<String> =
        ["sh", "bash", "grep", "mapcast"].iter().map(|t| (*t).to_owned()).collect();
    if let Some(at) = last_stage.find("apt-get install") {
        let rest = &last_stage[at..];
        let end = rest.find("&&").unwrap_or(rest.len());
        tools.extend(
            rest[..end]
                .split_whitespace()
                .skip(2)
                .filter(|w| !w.starts_with('-') && *w != "\\")
                .map(str::to_owned),
        );
    }
    tools
}

/// The programs a shell command line runs (first word of each command).
fn shell_programs(script: &str) -> Vec<String> {
    // `>&3` is a redirection, not a separator: split on `&&` only.
    script
        .replace("&&", ";")
        .split(['|', ';'])
        .filter_map(|part| part.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The programs a compose `healthcheck.test` runs.
fn health_check_programs(test: &Yaml) -> Vec<String> {
    let words: Vec<String> = test.as_vec().into_iter().flatten().filter_map(text).collect();
    match words.first().map(String::as_str) {
        Some("CMD-SHELL") => {
            let mut out = vec!["sh".to_owned()];
            out.extend(words.get(1).map(|s| shell_programs(s)).unwrap_or_default());
            out
        }
        Some("CMD") => {
            let mut out = vec![words.get(1).cloned().unwrap_or_default()];
            if matches!(out[0].as_str(), "bash" | "sh")
                && words.get(2).map(String::as_str) == Some("-c")
            {
                out.extend(words.get(3).map(|s| shell_programs(s)).unwrap_or_default());
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Each health check runs only what its image ships.
fn check_health_check_tools(services: &Yaml, root: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for name in keys(services) {
        let service = &services[name.as_str()];
        let test = &service["healthcheck"]["test"];
        if test.is_badvalue() {
            continue;
        }
        let tools: Vec<String> = if service["build"].as_str().is_some() {
            built_image_tools(root)
        } else {
            let image = service["image"].as_str().unwrap_or_default();
            match IMAGE_TOOLS.iter().find(|(prefix, _)| image.starts_with(prefix)) {
                Some((_, tools)) => tools.iter().map(|t| (*t).to_owned()).collect(),
                None => {
                    errors.push(format!("{name}: what image {image} ships is not known"));
                    continue;
                }
            }
        };
        for program in health_check_programs(test) {
            if !BUILTINS.contains(&program.as_str()) && !tools.contains(&program) {
                errors.push(format!("{name}'s health check runs {program}, which its image lacks"));
            }
        }
    }
    errors
}

/// Services allowed to act as the `elastic` superuser.
const SUPERUSER_SERVICES: &[&str] = &["elasticsearch", "setup", "dashboards"];

/// Only Elasticsearch itself and the one-shot setup services hold the
/// superuser's password or sign in as `elastic`.
fn check_least_privilege(services: &Yaml) -> Vec<String> {
    let mut errors = Vec::new();
    for name in keys(services) {
        if SUPERUSER_SERVICES.contains(&name.as_str()) {
            continue;
        }
        let service = &services[name.as_str()];
        let mut values: Vec<String> = Vec::new();
        if let Some(env) = service["environment"].as_hash() {
            values.extend(env.values().filter_map(text));
        }
        values.extend(service["command"].as_str().map(str::to_owned));
        values.extend(service["command"].as_vec().into_iter().flatten().filter_map(text));
        for value in values {
            let signs_in_as_elastic = value == "elastic" || value.contains("username=elastic ");
            if value.contains("${ELASTIC_PASSWORD}") || signs_in_as_elastic {
                errors.push(format!("{name} uses the elastic superuser"));
                break;
            }
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
    // The script each one-shot service runs, found through its mount.
    let script_of = |service: &str| {
        let service = &compose["services"][service];
        let script = service["entrypoint"][1].as_str().unwrap();
        let mount = service["volumes"][0].as_str().unwrap();
        let (host, container) = mount.split_once(':').unwrap();
        let relative = script.strip_prefix(container.trim_end_matches(":ro")).unwrap();
        read(&repo(host).join(relative.trim_start_matches('/')))
    };
    let setup = script_of("setup");
    assert!(setup.contains("mapcast es setup"), "{setup}");
    assert!(
        !setup.contains("kibana:5601") && !setup.contains("KIBANA_URL"),
        "setup waits for no Kibana"
    );
    let import = script_of("dashboards");
    assert!(import.contains("/api/saved_objects/_import?overwrite=true"), "{import}");
}

#[test]
fn the_logstash_variant_sends_every_document_to_the_pipelines_tcp_input() {
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
    // Every document (logs, crash reports, metrics) goes over the TCP writer,
    // to the pipeline's tcp input on the logstash service.
    let target =
        mapcast["environment"]["MAPCAST_LOGSTASH_TCP"].as_str().expect("MAPCAST_LOGSTASH_TCP");
    let (host, port) = target.split_once(':').unwrap();
    assert!(main_services.iter().any(|s| s == host), "{host} is no service");
    let pipeline = read(&repo("logstash/pipeline/mapcast.conf"));
    assert_eq!(super::logstash::input_settings(&pipeline, "tcp", "port"), [port]);
    assert_eq!(super::logstash::input_settings(&pipeline, "tcp", "codec"), ["json_lines"]);
    assert_eq!(mapcast["depends_on"][host]["condition"].as_str(), Some("service_healthy"));
    // mapcast itself is PID 1 again: no shell wrapper left from a log-file route.
    assert!(mapcast["entrypoint"].is_badvalue() && mapcast["command"].is_badvalue());
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

/// The instructions of a Dockerfile, continuation lines joined, comments out.
pub(crate) fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dependencies_build_in_their_own_layer_and_the_shipped_binary_is_stripped() {
    let steps = instructions(&read(&repo("Dockerfile")));
    let at = |pred: &dyn Fn(&str) -> bool| steps.iter().position(|s| pred(s));
    let copy_all = at(&|s| s == "COPY . .").expect("the sources are copied");
    let copy_manifest =
        at(&|s| s.starts_with("COPY Cargo.toml Cargo.lock")).expect("the manifest alone");
    let deps = at(&|s| s.starts_with("RUN ") && s.contains("cargo build --release --locked"))
        .expect("a dependency build");
    // The manifest, then a build of the dependencies, then the sources: a
    // source edit leaves the dependency layer cached.
    assert!(copy_manifest < deps && deps < copy_all, "{steps:#?}");
    for step in &steps[copy_manifest + 1..deps] {
        let args: Vec<&str> = step.split_whitespace().skip(1).collect();
        let manifests_only = step.starts_with("COPY ")
            && args.split_last().is_some_and(|(_, s)| s.iter().all(|s| s.ends_with("Cargo.toml")));
        assert!(
            manifests_only || (!step.starts_with("COPY") && !step.starts_with("ADD")),
            "{step}: more than the manifests"
        );
    }
    // The stub's outputs are dropped, or cargo would keep the stub binary.
    assert!(
        steps[deps].contains("rm -rf target/release/.fingerprint/mapcast-*"),
        "{}",
        steps[deps]
    );

    let build = steps[copy_all..]
        .iter()
        .find(|s| s.contains("cargo build --release --locked"))
        .expect("the real build");
    let build = build.split_whitespace().collect::<Vec<_>>().join(" ");
    let keep = "objcopy --only-keep-debug --compress-debug-sections=zlib \
                target/release/mapcast /usr/local/bin/mapcast.debug";
    assert!(build.contains(keep), "{build}");
    let strip = "objcopy --strip-all --add-gnu-debuglink=/usr/local/bin/mapcast.debug \
                 target/release/mapcast /usr/local/bin/mapcast";
    assert!(build.contains(strip), "{build}");
    // Both reach the runtime image, side by side (the debug link is looked
    // up beside the binary).
    let last_from = steps.iter().rposition(|s| s.starts_with("FROM ")).unwrap();
    let shipped = steps[last_from..]
        .iter()
        .find(|s| s.starts_with("COPY --from=build"))
        .expect("the binary is copied from the build stage");
    assert_eq!(
        shipped,
        "COPY --from=build /usr/local/bin/mapcast /usr/local/bin/mapcast.debug /usr/local/bin/"
    );
    // What the release profile keeps is what crash reports need: line tables.
    let cargo = read(&repo("Cargo.toml"));
    let release = cargo.split("[profile.release]").nth(1).expect("a release profile");
    assert!(release.contains("debug = \"line-tables-only\""), "{release}");
}

/// The dependency layer, replayed here from only the files it copies: the
/// workspace must load from them and its stubs, or the image does not build
/// (a workspace member's manifest left out fails as "failed to load
/// manifest"). `cargo metadata` stands in for the release build of the
/// dependencies, which would take the suite minutes.
#[test]
fn the_dependency_layer_loads_the_workspace_from_the_files_it_copies() {
    let steps = instructions(&read(&repo("Dockerfile")));
    let first = steps.iter().position(|s| s.starts_with("COPY Cargo.toml")).expect("manifest");
    let deps = steps.iter().position(|s| s.starts_with("RUN ") && s.contains("cargo build"));
    let deps = deps.expect("a dependency build");
    let dir = tempfile::tempdir().unwrap();
    for step in &steps[first..deps] {
        let Some(args) = step.strip_prefix("COPY ") else { continue };
        let args: Vec<&str> = args.split_whitespace().collect();
        let (dest, sources) = args.split_last().expect("COPY sources dest");
        for source in sources {
            let to = match dest.ends_with('/') {
                true => dir.path().join(dest).join(Path::new(source).file_name().unwrap()),
                false => dir.path().join(dest),
            };
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(repo(source), &to).unwrap_or_else(|e| panic!("{source}: {e}"));
        }
    }
    let run = steps[deps].strip_prefix("RUN ").unwrap().replace(
        "cargo build --release --locked --bin mapcast",
        "cargo metadata --no-deps --offline --format-version 1 > metadata.json",
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &run])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "{run}\n{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("metadata.json"))).unwrap();
    let members = metadata["workspace_members"].as_array().map_or(0, Vec::len);
    let root = read(&repo("Cargo.toml"));
    let listed = root.split("members = [").nth(1).and_then(|s| s.split(']').next()).unwrap();
    assert_eq!(members, listed.split(',').filter(|m| !m.trim().is_empty()).count(), "{listed}");
}

/// The writers' roles (dashboards/roles/) and who uses them.
#[test]
fn each_writer_gets_a_role_limited_to_its_own_data_streams() {
    use mapcast::telemetry::elastic::{Indices, Stream};

    let compose = YamlLoader::load_from_str(&read(&repo("docker-compose.yml"))).unwrap().remove(0);
    let services = &compose["services"];
    let setup = read(&repo("dashboards/setup.sh"));
    let users = [
        ("mapcast", services["mapcast"]["environment"]["MAPCAST_ELASTICSEARCH_USERNAME"].as_str()),
        ("logstash", services["logstash"]["environment"]["ELASTICSEARCH_USER"].as_str()),
        (
            "apm-server",
            services["apm-server"]["command"]
                .as_str()
                .and_then(|c| c.split("output.elasticsearch.username=").nth(1))
                .and_then(|rest| rest.split_whitespace().next()),
        ),
    ];
    let streams: Vec<String> = [Stream::App, Stream::Crash, Stream::Metrics]
        .iter()
        .map(|s| Indices::new("*", false).of(*s).to_owned())
        .collect();
    for (service, user) in users {
        let user = user.unwrap_or_else(|| panic!("{service} names no Elasticsearch user"));
        assert!(setup.contains(&format!("writer {user} ")), "setup.sh does not create {user}");
        let role: serde_json::Value =
            serde_json::from_str(&read(&repo(&format!("dashboards/roles/{user}.json")))).unwrap();
        for cluster in role["cluster"].as_array().unwrap() {
            assert_eq!(cluster, "monitor", "{user}: only the read-only cluster privilege");
        }
        let indices = role["indices"].as_array().unwrap();
        for grant in indices {
            for privilege in grant["privileges"].as_array().unwrap() {
                let privilege = privilege.as_str().unwrap();
                assert!(
                    ["create_doc", "auto_configure"].contains(&privilege),
                    "{user} may {privilege}: more than creating documents"
                );
            }
        }
        let names: Vec<&str> = indices
            .iter()
            .flat_map(|g| g["names"].as_array().unwrap())
            .filter_map(|n| n.as_str())
            .collect();
        if service == "apm-server" {
            assert!(names.iter().all(|n| n.ends_with("-apm*")), "{names:?}");
        } else {
            assert_eq!(names, streams, "{user} writes exactly mapcast's data streams");
        }
    }
    // mapcast only writes: `mapcast es setup` (templates) runs in the setup.
    let writer: serde_json::Value =
        serde_json::from_str(&read(&repo("dashboards/roles/mapcast_writer.json"))).unwrap();
    assert_eq!(writer["cluster"], serde_json::json!([]));
}

/// Runs the APM Server health check (as compose hands it to the container:
/// `$$` is `$`) with this machine's bash against a local HTTP endpoint.
#[allow(clippy::disallowed_methods, reason = "a test thread serving one connection")]
fn apm_health_check_against(answer: Option<&'static str>) -> bool {
    use std::io::{Read, Write};

    let compose = YamlLoader::load_from_str(&read(&repo("docker-compose.yml"))).unwrap().remove(0);
    let test = &compose["services"]["apm-server"]["healthcheck"]["test"];
    assert_eq!(test[0].as_str(), Some("CMD"));
    assert_eq!((test[1].as_str(), test[2].as_str()), (Some("bash"), Some("-c")));
    let script = test[3].as_str().unwrap().replace("$$", "$");
    assert!(script.contains("/dev/tcp/127.0.0.1/8200"), "{script}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = script.replace("/dev/tcp/127.0.0.1/8200", &format!("/dev/tcp/127.0.0.1/{port}"));
    // Without an answer nothing listens: the port is closed again.
    let server = match answer {
        Some(answer) => Some(std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).unwrap();
            assert!(request[..n].starts_with(b"GET / HTTP/1."), "{:?}", &request[..n]);
            conn.write_all(answer.as_bytes()).unwrap();
        })),
        None => {
            drop(listener);
            None
        }
    };
    let status =
        std::process::Command::new("bash").args(["-c", &script]).status().expect("bash runs");
    if let Some(server) = server {
        server.join().unwrap();
    }
    status.success()
}

#[test]
fn the_apm_server_health_check_passes_on_200_only() {
    let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"version\":\"9.1.0\"}";
    assert!(apm_health_check_against(Some(ok)), "healthy when APM Server answers 200");
    let busy = "HTTP/1.1 503 Service Unavailable\r\n\r\n";
    assert!(!apm_health_check_against(Some(busy)), "unhealthy on 503");
    assert!(!apm_health_check_against(None), "unhealthy when nothing listens");
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

    let errors = check_compose(
        &read(&repo("tests/fixtures/compose/broken-deploy.yml")),
        &repo(""),
        &read(&repo(".env.example")),
        &settings_source(),
    );
    assert_reports(
        &errors,
        &[
            "apm-server's health check runs curl, which its image lacks",
            "mapcast's health check runs wget, which its image lacks",
            "mapcast waits for dashboards",
            "mapcast uses the elastic superuser",
            "logstash uses the elastic superuser",
            "apm-server uses the elastic superuser",
        ],
    );
}
