//! The README's "First five minutes" recipe, run as written: its code
//! blocks are read from README.md and executed (the server with the same
//! arguments, the second block by bash with curl, jq and mosquitto_pub), so
//! the README cannot drift from the product unnoticed. Only what cannot be
//! the same in a test is replaced: `cargo run --release --` by the binary
//! under test, and the fixed ports by the ones the server bound.
//!
//! Runs when bash, curl, jq and mosquitto_pub are on PATH and otherwise
//! prints "skipped: ..." — unless `MAPCAST_TEST_REQUIRE_INTEROP=1` (CI).

use std::path::Path;

use serde_json::Value;

use crate::helpers::ServerProcess;

const SECTION: &str = "## First five minutes";

/// The fenced `sh` blocks of the README section starting with `heading`.
fn code_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("no {heading:?} in README.md"));
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest[..rest.find("```").expect("a closed block")].to_owned())
        .collect()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[tokio::test]
async fn the_first_five_minutes_recipe_puts_a_car_on_the_map_as_written() {
    let missing: Vec<&str> =
        ["bash", "curl", "jq", "mosquitto_pub"].into_iter().filter(|p| !on_path(p)).collect();
    if !missing.is_empty() {
        let required =
            std::env::var("MAPCAST_TEST_REQUIRE_INTEROP").is_ok_and(|v| v == "1" || v == "true");
        assert!(!required, "MAPCAST_TEST_REQUIRE_INTEROP is set but {missing:?} are missing");
        println!("skipped: the README recipe needs {missing:?}");
        return;
    }
    let readme = tokio::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .await
        .unwrap();
    let blocks = code_blocks(&readme, SECTION);
    assert_eq!(blocks.len(), 2, "the server, then the rest: {blocks:#?}");

    // Terminal one: the server, started in a fresh directory (its data in ./data).
    let serve = blocks[0].trim();
    let args = serve.strip_prefix("cargo run --release -- ").unwrap_or_else(|| panic!("{serve}"));
    let args: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(args[0], "serve", "{serve}");
    let cwd = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&cwd.path().join("data"), &args[1..]).await;

    // Terminal two, "from the same directory".
    let script = blocks[1]
        .replace("cargo run --release --", "\"$MAPCAST_BIN\"")
        .replace("localhost:8080", &server.http_addr.to_string())
        .replace(
            "mosquitto_pub -h localhost",
            &format!("mosquitto_pub -h 127.0.0.1 -p {}", server.mqtt_addr.port()),
        );
    assert!(!script.contains("localhost"), "a host the test did not redirect:\n{script}");
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &format!("set -euo pipefail\n{script}")])
        .current_dir(cwd.path())
        .env("MAPCAST_BIN", env!("CARGO_BIN_EXE_mapcast"))
        .env_remove("MAPCAST_CONFIG")
        .env_remove("MAPCAST_DATA_DIR")
        .env_remove("MAPCAST_DATABASE_URL");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run bash")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the recipe failed:\n{stdout}\n{stderr}\n{}", server.logs());

    // What the recipe printed: the new admin, the device's position, the map.
    let printed: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(printed.len(), 3, "{stdout}");
    assert_eq!((&printed[0]["username"], &printed[0]["role"]), (&"root".into(), &"admin".into()));
    let position = &printed[1];
    assert_eq!(position["geometry"]["coordinates"], serde_json::json!([13.4, 52.5]), "{position}");
    let device = position["id"].as_str().unwrap_or_else(|| panic!("{position}"));
    let map = &printed[2];
    let on_map =
        map["features"].as_array().unwrap_or_else(|| panic!("no features: {map}")).iter().any(
            |f| {
                f["id"] == device && f["geometry"]["coordinates"] == serde_json::json!([13.4, 52.5])
            },
        );
    assert!(on_map, "the car is not on the map after the tick: {map}");
}
