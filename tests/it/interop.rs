//! Other MQTT clients against the built binary: Mosquitto's command-line
//! clients and Eclipse Paho for Python (scripts in `tests/interop/`).
//!
//! Each runs when its tool is available (`mosquitto_pub` on PATH; a Python in
//! `MAPCAST_TEST_PYTHON` with paho-mqtt installed) and otherwise prints a
//! "skipped: ..." line — unless `MAPCAST_TEST_REQUIRE_INTEROP=1`, which CI
//! sets, turns a skip into a failure.

use std::path::{Path, PathBuf};
use std::process::Output;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn interop_required() -> bool {
    std::env::var("MAPCAST_TEST_REQUIRE_INTEROP").is_ok_and(|v| v == "1" || v == "true")
}

fn skip(why: &str) {
    assert!(!interop_required(), "MAPCAST_TEST_REQUIRE_INTEROP is set but {why}");
    println!("skipped: {why}");
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Run an interop script to completion (off the async runtime: it takes seconds).
async fn run(mut cmd: std::process::Command) -> Output {
    cmd.env("MAPCAST_BIN", env!("CARGO_BIN_EXE_mapcast"));
    tokio::task::spawn_blocking(move || cmd.output().expect("run interop script")).await.unwrap()
}

fn report(name: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{name} failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(" passed, 0 failed"), "{name} ran no checks:\n{stdout}");
}

#[tokio::test]
async fn mosquitto_command_line_clients_interoperate() {
    if !on_path("mosquitto_pub") || !on_path("mosquitto_sub") {
        return skip("mosquitto_pub/mosquitto_sub not on PATH (apt-get install mosquitto-clients)");
    }
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(interop_dir().join("mosquitto_clients.sh"));

    let out = run(cmd).await;

    report("mosquitto_clients.sh", &out);
}

#[tokio::test]
async fn the_paho_python_client_interoperates() {
    let Some(python) = std::env::var_os("MAPCAST_TEST_PYTHON").filter(|p| !p.is_empty()) else {
        return skip("MAPCAST_TEST_PYTHON is not set (a python with paho-mqtt 2.x installed)");
    };
    let probe =
        std::process::Command::new(&python).args(["-c", "import paho.mqtt.client"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return skip(&format!(
            "{} cannot import paho.mqtt (pip install paho-mqtt)",
            python.to_string_lossy()
        ));
    }
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(interop_dir().join("paho_interop.py"));

    let out = run(cmd).await;

    report("paho_interop.py", &out);
}
