//! `deploy/mapcast.service`, the systemd unit: checked with
//! `systemd-analyze verify` and `systemd-analyze security --offline` where
//! systemd is installed (`.ci/run` installs it; elsewhere a machine without
//! it prints "skipped: ..."), and its hardening keys read as a file everywhere.

use std::path::Path;
use std::process::Command;

#[allow(clippy::disallowed_methods, reason = "offline checks of small repository files")]
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unit() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mapcast.service"))
}

/// The `key=value` settings of `section`, in order.
fn settings(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

#[test]
fn the_unit_keeps_the_hardening_it_promises() {
    let unit = unit();
    let service = settings(&unit, "Service");
    let get = |key: &str| -> Vec<&str> {
        service.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    };
    let one = |key: &str| -> &str {
        let values = get(key);
        assert_eq!(values.len(), 1, "{key}: {values:?}");
        values[0]
    };
    assert!(one("ExecStart").starts_with("/usr/local/bin/mapcast serve"));
    assert_eq!(one("User"), "mapcast");
    assert_eq!(one("StateDirectory"), "mapcast");
    assert_eq!(one("Environment"), "MAPCAST_DATA_DIR=/var/lib/mapcast");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("ProtectSystem"), "strict");
    for yes in ["NoNewPrivileges", "MemoryDenyWriteExecute", "ProtectHome", "PrivateTmp"] {
        assert_eq!(one(yes), "yes", "{yes}");
    }
    // The listeners use unprivileged ports: no capability is needed.
    assert_eq!(one("CapabilityBoundingSet"), "");
    let files: u64 = one("LimitNOFILE").parse().expect("a number");
    assert!(files >= 65_536, "room for many connections: {files}");
    // mapcast's own stop deadline (10 s) fits inside systemd's.
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > 10, "{stop}");
    assert_eq!(settings(&unit, "Install"), [("WantedBy".into(), "multi-user.target".into())]);
}

/// `systemd-analyze ARGS` when systemd is installed here.
fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            // CI installs systemd and sets this: there a missing tool fails.
            let required = std::env::var("MAPCAST_TEST_REQUIRE_INTEROP")
                .is_ok_and(|v| v == "1" || v == "true");
            assert!(
                !required,
                "MAPCAST_TEST_REQUIRE_INTEROP is set but systemd-analyze fails: {e}"
            );
            println!(
                "skipped: systemd-analyze is not available ({e}); only the offline key checks ran"
            );
            None
        }
    }
}

#[test]
fn systemd_accepts_the_unit_and_rates_its_exposure_ok() {
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapcast.service");
    let text =
        unit().replace("/usr/local/bin/mapcast ", &format!("{} ", env!("CARGO_BIN_EXE_mapcast")));
    #[allow(clippy::disallowed_methods, reason = "a test's scratch file")]
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();

    let Some(verify) = systemd_analyze(&["verify", path]) else { return };
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "{complaints}");
    // A deliberately broken copy is refused, so the check above can fail.
    let broken = dir.path().join("broken.service");
    #[allow(clippy::disallowed_methods, reason = "a test's scratch file")]
    std::fs::write(
        &broken,
        read(Path::new(path)).replace("ProtectSystem=strict", "ProtectSystem=strcit"),
    )
    .unwrap();
    let verify = systemd_analyze(&["verify", broken.to_str().unwrap()]).unwrap();
    assert!(String::from_utf8_lossy(&verify.stderr).contains("strcit"));

    // Exposure 0 (locked down) to 10 (unprotected); 2.0 or less is "OK".
    let security = systemd_analyze(&["security", "--offline=yes", "--threshold=20", path]).unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "exposure above 2.0:\n{report}");
}

/// Whether `file` has a (non-empty) DWARF line table section, by its
/// section headers (binutils' readelf, beside the objcopy the image uses).
fn has_line_tables(file: &Path) -> bool {
    let out = Command::new("readelf").args(["-S", "-W"]).arg(file).output().expect("readelf runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" .debug_line "))
        // --only-keep-debug leaves NOBITS sections in place: only PROGBITS holds data.
        .any(|l| l.contains("PROGBITS"))
}

/// Start `program`, make one of its MQTT connections panic, and return the
/// crash report's stack trace.
async fn panic_trace(program: &Path, data: &Path) -> String {
    let config = "[debug]\npanic_endpoint = true\n";
    tokio::fs::create_dir_all(data).await.unwrap();
    let config_file = data.join("mapcast.toml");
    tokio::fs::write(&config_file, config).await.unwrap();
    let server = crate::helpers::ServerProcess::start_program(
        program,
        data,
        &["--config", config_file.to_str().unwrap()],
    )
    .await;
    // Anonymous clients on loopback may trigger it.
    let victim = crate::helpers::V3Options::new("victim", server.mqtt_addr).connect().await;
    victim.publish("$debug/panic", rumqttc::QoS::AtMostOnce, false, "boom").await;
    // Symbolizing reads (and inflates) the debug file: seconds for a debug
    // build with full debug info on a busy machine.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    let report = loop {
        if let Some(path) = crate::crash::crash_files(data).first() {
            break path.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no crash report in {}", data.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let doc: serde_json::Value =
        serde_json::from_str(&tokio::fs::read_to_string(&report).await.unwrap()).unwrap();
    drop(server);
    doc["error.stack_trace"].as_str().expect("a stack trace").to_owned()
}

/// The Dockerfile's own objcopy commands, applied to the binary under test
/// (same profile settings: line tables), leave a stripped binary whose crash
/// reports still name file and line, because of the debug file beside it.
#[tokio::test]
async fn the_images_split_debug_info_keeps_file_and_line_in_crash_reports() {
    let dockerfile = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"));
    let steps = crate::elk_files::compose::instructions(&dockerfile);
    let build = steps.iter().find(|s| s.contains("objcopy")).expect("the split in the Dockerfile");
    let commands: Vec<&str> =
        build.split("&&").map(str::trim).filter(|c| c.starts_with("objcopy")).collect();
    assert_eq!(commands.len(), 2, "{build}");

    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    tokio::fs::create_dir_all(&bin_dir).await.unwrap();
    for command in commands {
        let command = command
            .replace("target/release/mapcast", env!("CARGO_BIN_EXE_mapcast"))
            .replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        let status = tokio::process::Command::new("sh").args(["-c", &command]).status().await;
        assert!(status.expect("sh runs").success(), "{command}");
    }
    let stripped = bin_dir.join("mapcast");
    let debug = bin_dir.join("mapcast.debug");
    assert!(!has_line_tables(&stripped), "the shipped binary is stripped");
    assert!(has_line_tables(&debug), "the line tables moved to mapcast.debug");

    // The panic site is in mqtt/session.rs; a line number follows the name.
    let trace = panic_trace(&stripped, &dir.path().join("with-debug")).await;
    let names_line = trace
        .match_indices("session.rs:")
        .any(|(at, m)| trace[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
    assert!(names_line, "no session.rs:LINE in\n{trace}");

    // Without the debug file the same binary cannot say where: the file is
    // what crash reports rely on.
    tokio::fs::remove_file(&debug).await.unwrap();
    let trace = panic_trace(&stripped, &dir.path().join("without-debug")).await;
    assert!(!trace.contains("session.rs:"), "{trace}");
}

/// The image itself, built where a Docker engine answers (not on the
/// machines this suite usually runs on: it then prints "skipped: ...").
#[tokio::test]
async fn the_image_builds_and_ships_the_binary_its_debug_file_and_curl() {
    let engine = tokio::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .await;
    if !engine.is_ok_and(|o| o.status.success()) {
        println!("skipped: no Docker engine answers here, the image is not built");
        return;
    }
    let tag = "mapcast:deploy-test";
    let root = env!("CARGO_MANIFEST_DIR");
    let built = tokio::process::Command::new("docker")
        .args(["build", "-t", tag, root])
        .status()
        .await
        .expect("docker build runs");
    assert!(built.success(), "docker build failed");
    let check = "test -x /usr/local/bin/mapcast && test -f /usr/local/bin/mapcast.debug \
                 && command -v curl && mapcast --help";
    let out = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--entrypoint", "sh", tag, "-c", check])
        .output()
        .await
        .expect("docker run runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `dashboards/setup.sh` and `dashboards/import.sh`, the compose one-shots,
/// run with this machine's sh and curl against a stand-in for
/// Elasticsearch and Kibana: the setup creates each writer with exactly its
/// role file and installs the templates (with the real `mapcast es setup`),
/// touching no Kibana; the import sends every bundle and alert rule.
#[tokio::test]
async fn the_setup_creates_each_writer_with_its_role_and_the_import_sends_the_dashboards() {
    use base64::Engine as _;

    let es = crate::helpers::EsBulk::start().await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_mapcast")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let data = tempfile::tempdir().unwrap();
    let run = |script: &str, env: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg(repo.join(script))
            .current_dir(data.path())
            .env("PATH", &path)
            .env("DASHBOARDS_DIR", repo.join("dashboards"))
            .env("MAPCAST_DATA_DIR", data.path())
            .env_remove("MAPCAST_CONFIG")
            .env_remove("MAPCAST_DATABASE_URL")
            .envs(env.iter().copied())
            .kill_on_drop(true);
        // A script that waits for something absent (Kibana, for the setup)
        // would loop forever: a minute is far more than either needs here.
        let script = script.to_owned();
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
                .await
                .unwrap_or_else(|_| panic!("{script} did not finish within 60 s"))
        }
    };
    let url = es.url();
    let out = run(
        "dashboards/setup.sh",
        &[
            ("MAPCAST_ELASTICSEARCH_URL", &url),
            ("MAPCAST_ELASTICSEARCH_USERNAME", "elastic"),
            ("MAPCAST_ELASTICSEARCH_PASSWORD", "super-secret"),
            ("MAPCAST_ELASTICSEARCH_NAMESPACE", "default"),
            ("KIBANA_PASSWORD", "kibana-pw"),
            ("ES_MAPCAST_PASSWORD", "writer-pw"),
            ("ES_LOGSTASH_PASSWORD", "logstash-pw"),
            ("ES_APM_PASSWORD", "apm-pw"),
        ],
    )
    .await
    .unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "setup.sh failed:\n{said}");
    assert!(es.violations().is_empty(), "{:?}", es.violations());
    assert!(!es.templates().is_empty(), "mapcast es setup installed the templates");

    let superuser = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("elastic:super-secret")
    );
    let calls = es.admin_calls();
    assert!(calls.iter().all(|c| c.authorization == superuser), "{calls:#?}");
    assert!(
        calls.iter().all(|c| c.path.starts_with("/_security/")),
        "the setup touched Kibana: {calls:#?}"
    );
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let call = |method: &str, path: &str| {
        calls
            .iter()
            .find(|c| c.method == method && c.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} in {calls:#?}"))
    };
    assert_eq!(
        json(&call("POST", "/_security/user/kibana_system/_password").body),
        serde_json::json!({"password": "kibana-pw"})
    );
    for (user, password) in [
        ("mapcast_writer", "writer-pw"),
        ("mapcast_logstash", "logstash-pw"),
        ("mapcast_apm", "apm-pw"),
    ] {
        let role = read(&repo.join(format!("dashboards/roles/{user}.json")));
        assert_eq!(json(&call("PUT", &format!("/_security/role/{user}")).body), json(&role));
        assert_eq!(
            json(&call("PUT", &format!("/_security/user/{user}")).body),
            serde_json::json!({"password": password, "roles": [user]})
        );
    }

    let before = calls.len();
    let out = run(
        "dashboards/import.sh",
        &[
            ("KIBANA_URL", &url),
            ("KIBANA_USERNAME", "elastic"),
            ("KIBANA_USER_PASSWORD", "super-secret"),
        ],
    )
    .await
    .unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "import.sh failed:\n{said}");
    let calls = es.admin_calls().split_off(before);
    assert!(calls.iter().all(|c| c.authorization == superuser), "{calls:#?}");
    let imports = calls.iter().filter(|c| c.path == "/api/saved_objects/_import").count();
    assert_eq!(imports, 1, "one bundle, dashboards/mapcast.ndjson: {calls:#?}");
    let import = calls.iter().find(|c| c.path == "/api/saved_objects/_import").unwrap();
    assert!(import.body.contains("filename=\"mapcast.ndjson\""), "sent as a file upload");
    let rule = read(&repo.join("dashboards/alerts/mapcast-crash.json"));
    assert_eq!(
        json(&call_in(&calls, "POST", "/api/alerting/rule/mapcast-crash").body),
        json(&rule)
    );
}

fn call_in<'a>(
    calls: &'a [crate::helpers::AdminCall],
    method: &str,
    path: &str,
) -> &'a crate::helpers::AdminCall {
    calls
        .iter()
        .find(|c| c.method == method && c.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {calls:#?}"))
}
