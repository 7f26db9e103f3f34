//! `mapcast`: parse the command line, load settings, install telemetry, run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mapcast::cli::{Cli, Command, ConfigArgs};
use mapcast::config::Env;
use mapcast::startup::Application;
use mapcast::{cli, shutdown, telemetry};

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Migrate(args) => cli::migrate_command(args, std::io::stdout().lock()),
        Command::HashPassword => {
            cli::hash_password_command(std::io::stdin().lock(), std::io::stdout().lock())
        }
        Command::User(cmd) => {
            cli::user_command(cmd, std::io::stdin().lock(), std::io::stdout().lock())
        }
        Command::Device(cmd) => cli::device_command(cmd, std::io::stdout().lock()),
        Command::Es(cmd) => cli::es_command(cmd, std::io::stdout().lock()),
        Command::Crashes(args) => cli::crashes_command(args, std::io::stdout().lock()),
        Command::Flags(cmd) => cli::flags_command(cmd, std::io::stdout().lock()),
        Command::Backup(args) => cli::backup_command(args, std::io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mapcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ConfigArgs) -> anyhow::Result<()> {
    let settings = args.load_settings()?;
    let _telemetry = telemetry::init(&settings);
    warn_unknown_env();
    let result = with_runtime(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown::signal_token()).await
    });
    if let Err(e) = &result {
        tracing::error!(error.message = format!("{e:#}"), "mapcast stopped with an error");
    }
    result
}

fn warn_unknown_env() {
    for name in Env::from_process().unknown_vars() {
        tracing::warn!(env.name = name, "unknown MAPCAST_ environment variable ignored");
    }
}

/// Run `fut` on the multi-threaded runtime that owns the database pool.
fn with_runtime(fut: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("mapcast").build()?;
    let result = runtime.block_on(fut);
    // Do not wait on stray blocking tasks (e.g. a pending stdin read).
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
