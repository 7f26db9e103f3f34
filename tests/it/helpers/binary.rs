//! The real `mapcast` binary as a child process, for tests that need
//! `kill -9`. It learns its ports from the one structured startup line the
//! binary logs on stdout.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub struct ServerProcess {
    child: Child,
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// `mapcast serve` on loopback port 0 with `data_dir`, plus `extra_args`.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::start_program(Path::new(env!("CARGO_BIN_EXE_mapcast")), data_dir, extra_args).await
    }

    /// Like [`ServerProcess::start`], with another build of the binary.
    pub async fn start_program(program: &Path, data_dir: &Path, extra_args: &[&str]) -> Self {
        let listen = ["127.0.0.1:0", "127.0.0.1:0"];
        Self::start_listening(program, data_dir, listen, extra_args).await
    }

    /// Like [`ServerProcess::start_program`], on given MQTT and HTTP
    /// addresses (an instance restarted where a balancer expects it).
    pub async fn start_listening(
        program: &Path,
        data_dir: &Path,
        [mqtt, http]: [&str; 2],
        extra_args: &[&str],
    ) -> Self {
        let mut cmd = Command::new(program);
        cmd.arg("serve")
            .args(["--mqtt-listen", mqtt, "--http-listen", http, "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn the mapcast binary");
        let logs = Arc::new(Mutex::new(Vec::new()));

        // Keep draining both pipes for the whole life of the child, or it
        // blocks on a full pipe; remember the lines for failure messages.
        let (addr_tx, addr_rx) = oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        let out_logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if addr_tx.is_some()
                    && let Some(addrs) = startup_addresses(&line)
                {
                    let _ = addr_tx.take().unwrap().send(addrs);
                }
                out_logs.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let err_logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                err_logs.lock().unwrap().push(format!("stderr: {line}"));
            }
        });

        let (mqtt_addr, http_addr) = match tokio::time::timeout(Duration::from_secs(30), addr_rx)
            .await
        {
            Ok(Ok(addrs)) => addrs,
            _ => {
                let status = child.try_wait().ok().flatten();
                let _ = child.start_kill();
                panic!(
                    "no startup line with the bound addresses within 30 s (exit status {status:?}); output:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Self { child, mqtt_addr, http_addr, logs }
    }

    /// Like [`ServerProcess::start`], with `toml` written to
    /// `{data_dir}/mapcast.toml` and passed as `--config`.
    pub async fn start_with_config(data_dir: &Path, toml: &str, extra_args: &[&str]) -> Self {
        let config = data_dir.join("mapcast.toml");
        tokio::fs::write(&config, toml).await.expect("write the config file");
        let mut args = vec!["--config", config.to_str().expect("UTF-8 path")];
        args.extend_from_slice(extra_args);
        Self::start(data_dir, &args).await
    }

    /// The process id, to read its memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server process is running")
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("SIGKILL the server");
    }

    /// SIGTERM, then wait up to `grace` for the exit; `None` if it did not exit
    /// in time (it is then killed).
    pub async fn terminate(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().expect("child still running");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Some(status.expect("wait for the child")),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

/// The MQTT and HTTP addresses from the startup line, whatever its nesting:
/// `{"mqtt":{"address":..}}`, `{"mqtt.address":..}` or under `fields`.
pub fn startup_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    let mut flat = Vec::new();
    flatten("", &json, &mut flat);
    let find = |names: &[&str]| {
        flat.iter().find_map(|(k, v)| {
            let k = k.strip_prefix("fields.").unwrap_or(k);
            if names.contains(&k) { v.parse::<SocketAddr>().ok() } else { None }
        })
    };
    let mqtt =
        find(&["mqtt.address", "mqtt.tcp.address", "mqtt_address", "mqtt.listen", "mqtt_addr"])?;
    let http = find(&["http.address", "http_address", "http.listen", "http_addr"])?;
    Some((mqtt, http))
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
