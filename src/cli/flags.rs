//! `mapcast flags list|set`: feature flags straight in the configured
//! database, for scripts and for when the API is down. A running server
//! picks a change up within `flags.refresh_ms`. Output: a table on a
//! terminal (list), else one JSON line per flag.

use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{DbArgs, stdout_is_terminal, with_database, write_table};
use crate::domain::time::format_rfc3339;
use crate::flags::{self, FlagKey, FlagSpec};

#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Every flag with its canary state: a table on a terminal, else one
    /// JSON object per line.
    List(DbArgs),
    /// Change some settings of a flag (the others are kept); setting a flag
    /// restarts its canary. A key that is neither stored nor read by mapcast
    /// is refused unless `--create` (a typo must not make a new flag).
    /// Prints the flag.
    Set(Box<FlagSetArgs>),
}

#[derive(Debug, Args)]
pub struct FlagSetArgs {
    /// The flag key, e.g. `map.clustering`.
    pub key: String,
    #[command(flatten)]
    pub changes: FlagChanges,
    #[command(flatten)]
    pub db: DbArgs,
}

/// The settings `mapcast flags set` changes; those not given are kept.
/// Every field `PUT /api/v1/flags/{key}` takes except the fault injection.
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
    /// The bucketing group (clients keep their bucket across the flags of
    /// one group); an empty value resets it to the flag key.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
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
    /// Canary error rate ÷ control error rate above which a check fails.
    #[arg(long, value_name = "RATIO")]
    pub max_error_ratio: Option<f64>,
    /// Canary error rate − control error rate above which a check fails.
    #[arg(long, value_name = "RATE")]
    pub max_error_increase: Option<f64>,
    /// Canary p99 ÷ control p99 above which a check fails.
    #[arg(long, value_name = "FACTOR")]
    pub max_p99_factor: Option<f64>,
    /// A canary p99 below this many milliseconds never fails a check.
    #[arg(long, value_name = "MS")]
    pub min_p99_ms: Option<f64>,
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
        if let Some(v) = &self.group {
            spec.group = Some(v.clone()).filter(|g| !g.is_empty());
        }
        if let Some(v) = &self.allow {
            spec.allow = list(v);
        }
        if let Some(v) = &self.deny {
            spec.deny = list(v);
        }
        let c = &mut spec.canary;
        if let Some(v) = self.failed_checks {
            c.failed_checks = v;
        }
        if let Some(v) = self.min_samples {
            c.min_samples = v;
        }
        if let Some(v) = self.max_error_ratio {
            c.max_error_ratio = v;
        }
        if let Some(v) = self.max_error_increase {
            c.max_error_increase = v;
        }
        if let Some(v) = self.max_p99_factor {
            c.max_p99_factor = v;
        }
        if let Some(v) = self.min_p99_ms {
            c.min_p99_ms = v;
        }
        spec
    }
}

/// Flags the product reads: setting one never needs `--create`.
const PRODUCT_FLAGS: &[&str] = &[flags::MAP_CLUSTERING];

/// `mapcast flags ...`.
pub fn flags_command(cmd: FlagsCommand, mut output: impl Write) -> anyhow::Result<()> {
    match cmd {
        FlagsCommand::List(db) => {
            let all =
                with_database(
                    &db,
                    |store, _| async move { Ok(flags::store::load_all(&store).await?) },
                )?;
            if stdout_is_terminal() {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|f| {
                        let state = serde_json::to_value(f.state).unwrap_or_default();
                        vec![
                            f.key.as_str().to_owned(),
                            if f.spec.enabled { "on" } else { "off" }.to_owned(),
                            format!("{}%", f.spec.rollout),
                            f.spec.variants.join(","),
                            state.as_str().map_or_else(|| state.to_string(), str::to_owned),
                            f.failed_checks.to_string(),
                            format_rfc3339(f.updated_at),
                        ]
                    })
                    .collect();
                let headers =
                    ["KEY", "ENABLED", "ROLLOUT", "VARIANTS", "STATE", "FAILED", "UPDATED"];
                write_table(output, &headers, &rows)?;
            } else {
                for flag in all {
                    writeln!(output, "{}", serde_json::to_string(&flag)?)?;
                }
            }
        }
        FlagsCommand::Set(args) => {
            let FlagSetArgs { key, changes, db } = *args;
            let create = db.create;
            let key = FlagKey::parse(&key).context("invalid flag key")?;
            let flag = with_database(&db, |store, _| async move {
                let current = flags::store::load(&store, &key).await?;
                if current.is_none() && !create && !PRODUCT_FLAGS.contains(&key.as_str()) {
                    bail!(
                        "no flag {:?}: mapcast reads {}; pass --create to make a new one",
                        key.as_str(),
                        PRODUCT_FLAGS.join(", ")
                    );
                }
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
