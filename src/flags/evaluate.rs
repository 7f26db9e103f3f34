//! Evaluation: a flag and a targeting key (the MQTT client id, or
//! `rest:{user id}` for API callers) give a variant. Pure and allocation-free
//! apart from a few `Arc` clones; the flags come from an in-memory snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::model::{CONTROL, DebugFault, Flag, FlagState};
use super::rollout::{in_rollout, variant_index};

/// Why a client got its variant (OpenTelemetry `feature_flag.result.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The flag does not exist: the control.
    Default,
    /// The flag is off or rolled back.
    Disabled,
    /// An allow or deny list named the client.
    TargetingMatch,
    /// The percentage bucket decided.
    Split,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Disabled => "disabled",
            Self::TargetingMatch => "targeting_match",
            Self::Split => "split",
        }
    }
}

/// The outcome of one evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub key: Arc<str>,
    pub variant: Arc<str>,
    pub reason: Reason,
    /// The fault a canary variant injects (only when debug triggers are on).
    pub fault: Option<DebugFault>,
}

impl Evaluation {
    /// Whether this is a canary variant (not the control).
    pub fn is_canary(&self) -> bool {
        &*self.variant != CONTROL
    }
}

/// A flag prepared for evaluation: shared strings and hashed lists.
#[derive(Debug)]
pub struct Compiled {
    pub flag: Flag,
    key: Arc<str>,
    variants: Vec<Arc<str>>,
    allow: HashSet<String>,
    deny: HashSet<String>,
}

/// Every flag, as of the last refresh. Replaced whole, never mutated.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub flags: HashMap<String, Compiled>,
}

thread_local! {
    static CONTROL_VARIANT: Arc<str> = Arc::from(CONTROL);
}

fn control() -> Arc<str> {
    CONTROL_VARIANT.with(Arc::clone)
}

impl Snapshot {
    pub fn new(flags: Vec<Flag>) -> Self {
        let flags = flags
            .into_iter()
            .map(|flag| {
                let compiled = Compiled {
                    key: Arc::from(flag.key.as_str()),
                    variants: flag.spec.variants.iter().map(|v| Arc::from(v.as_str())).collect(),
                    allow: flag.spec.allow.iter().cloned().collect(),
                    deny: flag.spec.deny.iter().cloned().collect(),
                    flag,
                };
                (compiled.flag.key.as_str().to_owned(), compiled)
            })
            .collect();
        Self { flags }
    }

    /// The variant of `key` for `targeting_key`; `debug_faults` says whether
    /// a flag's fault injection is live.
    pub fn evaluate(&self, key: &str, targeting_key: &str, debug_faults: bool) -> Evaluation {
        let Some(c) = self.flags.get(key) else {
            return Evaluation {
                key: Arc::from(key),
                variant: control(),
                reason: Reason::Default,
                fault: None,
            };
        };
        let spec = &c.flag.spec;
        let (variant, reason) = if !spec.enabled || c.flag.state == FlagState::RolledBack {
            (None, Reason::Disabled)
        } else if c.deny.contains(targeting_key) {
            (None, Reason::TargetingMatch)
        } else if c.allow.contains(targeting_key) {
            (Some(c.pick(targeting_key)), Reason::TargetingMatch)
        } else if in_rollout(c.flag.group(), targeting_key, spec.rollout) {
            (Some(c.pick(targeting_key)), Reason::Split)
        } else {
            (None, Reason::Split)
        };
        let fault = variant.as_ref().and(spec.debug_fault).filter(|_| debug_faults);
        Evaluation { key: c.key.clone(), variant: variant.unwrap_or_else(control), reason, fault }
    }
}

impl Compiled {
    fn pick(&self, targeting_key: &str) -> Arc<str> {
        let i = variant_index(self.flag.group(), targeting_key, self.variants.len());
        self.variants[i].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::model::{FlagKey, FlagSpec};

    fn flag(spec: FlagSpec) -> Flag {
        Flag::new(FlagKey::parse("map.clustering").unwrap(), spec)
    }

    fn eval(f: Flag, id: &str) -> Evaluation {
        Snapshot::new(vec![f]).evaluate("map.clustering", id, true)
    }

    #[test]
    fn off_unknown_and_rolled_back_flags_give_the_control() {
        let off = eval(flag(FlagSpec { rollout: 100, ..FlagSpec::default() }), "a");
        assert_eq!((&*off.variant, off.reason), ("control", Reason::Disabled));
        let unknown = Snapshot::default().evaluate("nope", "a", true);
        assert_eq!((&*unknown.variant, unknown.reason), ("control", Reason::Default));
        let mut rolled = flag(FlagSpec { enabled: true, rollout: 100, ..FlagSpec::default() });
        rolled.state = FlagState::RolledBack;
        rolled.spec.allow = vec!["a".into()];
        assert!(!eval(rolled, "a").is_canary());
    }

    #[test]
    fn deny_beats_allow_beats_the_percentage() {
        let spec = FlagSpec {
            enabled: true,
            rollout: 0,
            allow: vec!["in".into(), "both".into()],
            deny: vec!["both".into()],
            ..FlagSpec::default()
        };
        let allowed = eval(flag(spec.clone()), "in");
        assert_eq!((&*allowed.variant, allowed.reason), ("on", Reason::TargetingMatch));
        assert!(!eval(flag(spec.clone()), "both").is_canary());
        let other = eval(flag(spec), "other");
        assert_eq!((&*other.variant, other.reason), ("control", Reason::Split));
    }

    #[test]
    fn the_same_client_always_gets_the_same_variant() {
        let spec = FlagSpec {
            enabled: true,
            rollout: 50,
            variants: vec!["grid".into(), "kmeans".into()],
            ..FlagSpec::default()
        };
        let snapshot = Snapshot::new(vec![flag(spec)]);
        let mut seen = HashSet::new();
        for i in 0..200 {
            let id = format!("device-{i}");
            let first = snapshot.evaluate("map.clustering", &id, false);
            let again = snapshot.evaluate("map.clustering", &id, false);
            assert_eq!(first.variant, again.variant);
            seen.insert(first.variant.to_string());
        }
        assert_eq!(seen.len(), 3, "control and both variants occur: {seen:?}");
    }

    #[test]
    fn faults_apply_to_canaries_only_and_only_when_debug_is_on() {
        let spec = FlagSpec {
            enabled: true,
            rollout: 100,
            deny: vec!["ctl".into()],
            debug_fault: Some(DebugFault::Error),
            ..FlagSpec::default()
        };
        let snapshot = Snapshot::new(vec![flag(spec)]);
        assert_eq!(snapshot.evaluate("map.clustering", "x", true).fault, Some(DebugFault::Error));
        assert_eq!(snapshot.evaluate("map.clustering", "x", false).fault, None);
        assert_eq!(snapshot.evaluate("map.clustering", "ctl", true).fault, None);
    }
}
