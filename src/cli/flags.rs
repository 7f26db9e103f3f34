//! `mapcast flags list|set`: feature flags straight in the configured
//! database, for scripts and for when the API is down. A running server
//! picks a change up within `flags.refresh_ms`. Output: one JSON line per flag.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::ConfigArgs;
use crate::flags::{self, FlagKey, FlagSpec};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Print every flag with its canary state, one JSON object per line.
    List(ConfigArgs),
    /// Create a flag or change some of its settings (the others are kept);
    /// setting a flag restarts its canary. Prints the flag.
    Set(FlagSetArgs),
}

#[derive(Debug, Args)]
pub struct FlagSetArgs {
    /// The flag key, e.g. `map.clustering`.
    pub key: String,
    #[command(flatten)]
    pub changes: FlagChanges,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The settings `mapcast flags set` changes; those not given are kept.
#[derive(Debug, Args)]
pub struct FlagChanges {
    /// Turn the flag on or off.
    #[arg(long, value_name = "BOOL")]
    pub enabled: Option<bool>,
    /// Percent of clients (0–100) that get a canary variant.
    #[arg(long, value_name = "PERCENT")]
    pub rollout: Option<u8>,
    /// Canary variants, comma-separated (default `on`).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Client ids that always get a canary variant, comma-separated
    /// (an empty value clears the list).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub allow: Option<Vec<String>>,
    /// Client ids that never do, comma-separated (an empty value clears it).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub deny: Option<Vec<String>>,
    /// Failed canary checks that roll the flag back.
    #[arg(long, value_name = "N")]
    pub failed_checks: Option<u32>,
    /// Requests each side needs per check.
    #[arg(long, value_name = "N")]
    pub min_samples: Option<u64>,
}

impl FlagChanges {
    /// `spec` with the options given applied.
    fn apply(&self, mut spec: FlagSpec) -> FlagSpec {
        let list = |v: &Vec<String>| v.iter().filter(|s| !s.is_empty()).cloned().collect();
        if let Some(v) = self.enabled {
            spec.enabled = v;
        }
        if let Some(v) = self.rollout {
            spec.rollout = v;
        }
        if let Some(v) = &self.variants {
            spec.variants = list(v);
        }
        if let Some(v) = &self.allow {
            spec.allow = list(v);
        }
        if let Some(v) = &self.deny {
            spec.deny = list(v);
        }
        if let Some(v) = self.failed_checks {
            spec.canary.failed_checks = v;
        }
        if let Some(v) = self.min_samples {
            spec.canary.min_samples = v;
        }
        spec
    }
}

/// `mapcast flags ...`.
pub fn flags_command(cmd: FlagsCommand, mut output: impl Write) -> anyhow::Result<()> {
    match cmd {
        FlagsCommand::List(config) => {
            let settings = config.load_settings()?;
            let all = with_store(settings.database_url().expose(), |store| async move {
                Ok(flags::store::load_all(&store).await?)
            })?;
            for flag in all {
                writeln!(output, "{}", serde_json::to_string(&flag)?)?;
            }
        }
        FlagsCommand::Set(args) => {
            let FlagSetArgs { key, changes, config } = args;
            let key = FlagKey::parse(&key).context("invalid flag key")?;
            let settings = config.load_settings()?;
            let flag = with_store(settings.database_url().expose(), |store| async move {
                let current = flags::store::load(&store, &key).await?;
                let spec = changes.apply(current.map(|f| f.spec).unwrap_or_default());
                // The command line sets no fault; one set through the API stays.
                if let Err(e) = spec.validate(true) {
                    bail!("{e}");
                }
                Ok(flags::set(&store, &key, &spec).await?)
            })?;
            writeln!(output, "{}", serde_json::to_string(&flag)?)?;
        }
    }
    Ok(())
}

/// Open and migrate the database, run `act`, close it.
fn with_store<T, F, Fut>(url: &str, act: F) -> anyhow::Result<T>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let store = Store::connect(url, 1).await?;
        store.migrate().await?;
        let result = act(store.clone()).await;
        store.close().await;
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn set_changes_only_what_is_given() {
        let cli = Cli::try_parse_from([
            "mapcast",
            "flags",
            "set",
            "k",
            "--rollout",
            "30",
            "--allow",
            "",
            "--deny",
            "a,b",
            "--min-samples",
            "5",
        ])
        .unwrap();
        let Command::Flags(FlagsCommand::Set(args)) = cli.command else { panic!("not set") };
        let before = FlagSpec { enabled: true, allow: vec!["x".into()], ..FlagSpec::default() };
        let after = args.changes.apply(before);
        assert!(after.enabled);
        assert_eq!(after.rollout, 30);
        assert!(after.allow.is_empty());
        assert_eq!(after.deny, ["a", "b"]);
        assert_eq!(after.canary.min_samples, 5);
        assert_eq!(after.variants, ["on"]);
    }
}
