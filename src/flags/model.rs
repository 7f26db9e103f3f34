//! What a flag is: its definition as admins write it ([`FlagSpec`], the body
//! of `PUT /api/v1/flags/{key}`) and what the canary guard keeps beside it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The variant of everyone outside the rollout (and of everyone while the
/// flag is off or rolled back): the code path as it was before the flag.
pub const CONTROL: &str = "control";
/// The variant clients in the rollout get when the flag names none.
pub const DEFAULT_VARIANT: &str = "on";

/// Longest flag key, variant name or client id in a list.
const MAX_NAME: usize = 128;
/// Most client ids in an allow or deny list.
const MAX_LIST: usize = 1000;
/// Most variants of one flag.
const MAX_VARIANTS: usize = 8;

/// A flag's key: 1–64 lowercase letters, digits, `.`, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlagKey(String);

impl FlagKey {
    pub fn parse(key: &str) -> Result<Self, FlagError> {
        let ok = !key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if ok {
            Ok(Self(key.to_owned()))
        } else {
            Err(FlagError::Invalid(format!(
                "flag key {key:?} must be 1-64 lowercase letters, digits, '.', '_' or '-'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FlagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// The definition breaks a rule; the text says which.
    #[error("{0}")]
    Invalid(String),
}

/// When the canary guard rolls a flag back (Flagger-style analysis). A check
/// needs `min_samples` requests in both the canary and the control variant;
/// it fails when the canary's error rate is above the control's by more than
/// `max_error_ratio` times *and* `max_error_increase` (absolute, 0–1), or when
/// its p99 latency is above both `max_p99_factor` × the control's and
/// `min_p99_ms`. A crash in the canary path fails the check by itself. After
/// `failed_checks` failed checks the rollout goes to 0 for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryThresholds {
    /// Requests each side needs in one interval before it is compared. Default 20.
    pub min_samples: u64,
    /// Canary error rate ÷ control error rate above which a check fails. Default 2.0.
    pub max_error_ratio: f64,
    /// Canary error rate − control error rate above which a check fails. Default 0.05.
    pub max_error_increase: f64,
    /// Canary p99 ÷ control p99 above which a check fails. Default 2.0.
    pub max_p99_factor: f64,
    /// A canary p99 below this many milliseconds never fails a check. Default 50.
    pub min_p99_ms: f64,
    /// Failed checks that roll the flag back. Default 3.
    pub failed_checks: u32,
}

impl Default for CanaryThresholds {
    fn default() -> Self {
        Self {
            min_samples: 20,
            max_error_ratio: 2.0,
            max_error_increase: 0.05,
            max_p99_factor: 2.0,
            min_p99_ms: 50.0,
            failed_checks: 3,
        }
    }
}

/// A fault the canary variants inject, to rehearse a rollback. Accepted and
/// acted on only with `debug.panic_endpoint = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DebugFault {
    /// Answer 500.
    Error,
    /// Panic inside the flagged path (a crash report, a 500).
    Panic,
    /// Take 250 ms longer.
    Slow,
}

/// A flag as admins define it (`PUT /api/v1/flags/{key}`, `mapcast flags set`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FlagSpec {
    /// Off: everyone gets `control`.
    pub enabled: bool,
    /// Percent of clients (0–100) that get a canary variant.
    #[schema(maximum = 100)]
    pub rollout: u8,
    /// The canary variants, spread evenly over the clients in the rollout.
    /// Default `["on"]`; `control` is reserved.
    #[schema(min_items = 1, max_items = 8)]
    pub variants: Vec<String>,
    /// The bucketing group; clients keep their bucket across flags of one
    /// group. Default: the flag key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Client ids that always get a canary variant while the flag is enabled.
    #[schema(max_items = 1000)]
    pub allow: Vec<String>,
    /// Client ids that never do (wins over `allow`).
    #[schema(max_items = 1000)]
    pub deny: Vec<String>,
    pub canary: CanaryThresholds,
    /// Fault injection into the canary variants (`debug.panic_endpoint` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_fault: Option<DebugFault>,
}

impl Default for FlagSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            rollout: 0,
            variants: vec![DEFAULT_VARIANT.into()],
            group: None,
            allow: Vec::new(),
            deny: Vec::new(),
            canary: CanaryThresholds::default(),
            debug_fault: None,
        }
    }
}

impl FlagSpec {
    /// Check every rule; `debug_faults` says whether fault injection is allowed.
    pub fn validate(&self, debug_faults: bool) -> Result<(), FlagError> {
        let invalid = |m: String| Err(FlagError::Invalid(m));
        if self.rollout > 100 {
            return invalid(format!("rollout must be 0-100, got {}", self.rollout));
        }
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return invalid(format!("variants must name 1-{MAX_VARIANTS} variants"));
        }
        for (i, v) in self.variants.iter().enumerate() {
            if !is_name(v) {
                return invalid(format!(
                    "variant {v:?} must be 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
                ));
            }
            if v == CONTROL {
                return invalid(format!("variant name {CONTROL:?} is reserved for the control"));
            }
            if self.variants[..i].contains(v) {
                return invalid(format!("variant {v:?} is listed twice"));
            }
        }
        if let Some(group) = &self.group
            && (group.is_empty() || group.len() > MAX_NAME)
        {
            return invalid(format!("group must be 1-{MAX_NAME} characters"));
        }
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_LIST {
                return invalid(format!("{name} holds at most {MAX_LIST} client ids"));
            }
            if let Some(bad) = list.iter().find(|id| id.is_empty() || id.len() > 65_535) {
                return invalid(format!("{name} holds an invalid client id {bad:?}"));
            }
        }
        let c = &self.canary;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if c.min_samples == 0 || c.failed_checks == 0 {
            return invalid(
                "canary.min_samples and canary.failed_checks must be at least 1".into(),
            );
        }
        if !positive(c.max_error_ratio) || !positive(c.max_p99_factor) {
            return invalid("canary.max_error_ratio and canary.max_p99_factor must be > 0".into());
        }
        if !(0.0..=1.0).contains(&c.max_error_increase) {
            return invalid("canary.max_error_increase must be between 0 and 1".into());
        }
        if !c.min_p99_ms.is_finite() || c.min_p99_ms < 0.0 {
            return invalid("canary.min_p99_ms must be 0 or more".into());
        }
        if self.debug_fault.is_some() && !debug_faults {
            return invalid("debug_fault needs debug.panic_endpoint = true".into());
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Whether the canary guard has rolled a flag back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagState {
    /// Evaluated as defined.
    Active,
    /// The canary failed: everyone gets `control` until an admin sets the flag again.
    RolledBack,
}

impl FlagState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "rolled_back" { Self::RolledBack } else { Self::Active }
    }
}

/// A stored flag: the definition and the guard's state.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Flag {
    #[schema(value_type = String)]
    pub key: FlagKey,
    #[serde(flatten)]
    pub spec: FlagSpec,
    pub state: FlagState,
    /// Failed canary checks since the flag was last set.
    pub failed_checks: u32,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// Crash reports up to this id were counted by the canary guard.
    #[serde(skip)]
    pub crash_watermark: String,
}

impl Flag {
    /// A flag as first set: active, no check failed, no crash counted yet.
    pub fn new(key: FlagKey, spec: FlagSpec) -> Self {
        Self {
            key,
            spec,
            state: FlagState::Active,
            failed_checks: 0,
            updated_at: 0,
            crash_watermark: String::new(),
        }
    }

    /// The bucketing group.
    pub fn group(&self) -> &str {
        self.spec.group.as_deref().unwrap_or(self.key.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lowercase_names() {
        assert!(FlagKey::parse("map.clustering").is_ok());
        for bad in ["", "Map", "a b", "x/y", &"k".repeat(65)] {
            assert!(FlagKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn specs_are_validated() {
        let ok = FlagSpec { enabled: true, rollout: 50, ..FlagSpec::default() };
        assert!(ok.validate(false).is_ok());
        let cases = [
            FlagSpec { rollout: 101, ..ok.clone() },
            FlagSpec { variants: vec![], ..ok.clone() },
            FlagSpec { variants: vec!["control".into()], ..ok.clone() },
            FlagSpec { variants: vec!["a".into(), "a".into()], ..ok.clone() },
            FlagSpec { variants: vec!["a b".into()], ..ok.clone() },
            FlagSpec { allow: vec![String::new()], ..ok.clone() },
            FlagSpec { debug_fault: Some(DebugFault::Panic), ..ok.clone() },
            FlagSpec {
                canary: CanaryThresholds { max_error_increase: 2.0, ..Default::default() },
                ..ok.clone()
            },
            FlagSpec {
                canary: CanaryThresholds { min_samples: 0, ..Default::default() },
                ..ok.clone()
            },
        ];
        for spec in cases {
            assert!(spec.validate(false).is_err(), "{spec:?}");
        }
        let fault = FlagSpec { debug_fault: Some(DebugFault::Error), ..ok };
        assert!(fault.validate(true).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<FlagSpec, _> = serde_json::from_str(r#"{"enabled":true,"rolout":5}"#);
        assert!(r.is_err());
        let spec: FlagSpec = serde_json::from_str(r#"{"enabled":true,"rollout":5}"#).unwrap();
        assert_eq!(spec.variants, ["on"]);
        assert_eq!(spec.canary, CanaryThresholds::default());
    }
}
