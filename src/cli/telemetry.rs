//! `mapcast es setup` (install the Elasticsearch templates) and
//! `mapcast crashes list|show` (read the local crash reports; works while
//! the server runs, it only reads files).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::config::{Env, Overrides, Settings};
use crate::telemetry::{crash, elastic};

#[derive(Debug, Subcommand)]
pub enum EsCommand {
    /// Install (or update) the component and index templates of the data
    /// streams logs-mapcast.app-*, logs-mapcast.crash-* and
    /// metrics-mapcast.broker-* (from dashboards/templates/). Uses
    /// telemetry.elasticsearch.* (url, credentials, plain_indices). An
    /// OpenSearch server (told by `GET /`) gets its own types for the
    /// Elasticsearch-only ones (flattened, histogram, constant_keyword).
    Setup(EsSetupArgs),
}

#[derive(Debug, Args)]
pub struct EsSetupArgs {
    /// TOML configuration file [env: MAPCAST_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The Elasticsearch to set up [default: telemetry.elasticsearch.url]
    /// [env: MAPCAST_ELASTICSEARCH_URL].
    #[arg(long, value_name = "URL")]
    pub elasticsearch_url: Option<String>,
    /// Data directory [default: ./data] [env: MAPCAST_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CrashesArgs {
    #[command(subcommand)]
    pub command: CrashesCommand,
    /// Data directory holding `crashes/` [default: data_dir from the
    /// settings, ./data] [env: MAPCAST_DATA_DIR].
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file, to find data_dir [env: MAPCAST_CONFIG].
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CrashesCommand {
    /// One line per crash report: id, time, shipped, location, thread, message.
    List,
    /// One crash report as JSON (stack trace, breadcrumbs, spans, config).
    Show {
        /// The report's id (its file name without `.json`) or a unique part of it.
        id: String,
    },
}

/// `mapcast es setup`.
pub fn es_command(command: EsCommand, mut out: impl Write) -> anyhow::Result<()> {
    let EsCommand::Setup(args) = command;
    let env = Env::from_process();
    let file = args.config.or_else(|| env.config_file());
    let overrides = Overrides {
        elasticsearch_url: args.elasticsearch_url,
        data_dir: args.data_dir,
        ..Overrides::default()
    };
    let settings = Settings::load(file.as_deref(), &env, overrides)?;
    let es = &settings.telemetry.elasticsearch;
    let client = elastic::client(es)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let installed =
        runtime.block_on(elastic::templates::install(&client, es.plain_indices, &es.namespace))?;
    for line in installed {
        writeln!(out, "installed {line}")?;
    }
    Ok(())
}

/// `mapcast crashes list|show`.
pub fn crashes_command(args: CrashesArgs, mut out: impl Write) -> anyhow::Result<()> {
    let env = Env::from_process();
    let file = args.config.or_else(|| env.config_file());
    let overrides = Overrides { data_dir: args.data_dir, ..Overrides::default() };
    let settings = Settings::load(file.as_deref(), &env, overrides)?;
    let dir = crash::crash_dir(&settings.data_dir);
    match args.command {
        CrashesCommand::List => {
            let reports = crash::list(&dir);
            if reports.is_empty() {
                writeln!(out, "no crash reports in {}", dir.display())?;
            }
            for r in reports {
                let first_line = r.message.lines().next().unwrap_or("");
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    r.id,
                    r.timestamp,
                    if r.shipped { "shipped" } else { "local" },
                    r.location,
                    r.thread,
                    first_line
                )?;
            }
        }
        CrashesCommand::Show { id } => {
            let doc = crash::show(&dir, &id)?;
            let text = serde_json::to_string_pretty(&doc).context("cannot print the report")?;
            writeln!(out, "{text}")?;
        }
    }
    Ok(())
}
