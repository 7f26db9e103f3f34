//! The canary check, as Flagger and Argo Rollouts analyse a canary: one
//! interval's sample of the canary variants against the control's.

use super::model::CanaryThresholds;
use super::observe::Sample;

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few requests on one side to compare.
    NotEnoughSamples,
    Passed,
    /// Why it failed, in words for the log.
    Failed(String),
}

/// Compare the canary with the control. `crashed`: a crash report from a
/// canary path arrived since the last check; it fails the check whatever
/// the numbers say.
pub fn check(control: Sample, canary: Sample, t: &CanaryThresholds, crashed: bool) -> Verdict {
    if crashed {
        return Verdict::Failed("the canary path crashed".into());
    }
    if control.requests < t.min_samples || canary.requests < t.min_samples {
        return Verdict::NotEnoughSamples;
    }
    let (base, rate) = (control.error_rate(), canary.error_rate());
    let mut reasons = Vec::new();
    // Both bounds must be crossed: the ratio alone flaps when the control
    // has (almost) no errors, the difference alone when both are high.
    if rate > base * t.max_error_ratio && rate - base > t.max_error_increase {
        reasons.push(format!("error rate {rate:.3} against {base:.3} for the control"));
    }
    if canary.p99_ms > control.p99_ms * t.max_p99_factor && canary.p99_ms > t.min_p99_ms {
        reasons.push(format!(
            "p99 {:.1} ms against {:.1} ms for the control",
            canary.p99_ms, control.p99_ms
        ));
    }
    if reasons.is_empty() { Verdict::Passed } else { Verdict::Failed(reasons.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, errors: u64, p99_ms: f64) -> Sample {
        Sample { requests, errors, p99_ms }
    }

    #[test]
    fn too_few_samples_on_either_side_decide_nothing() {
        let t = CanaryThresholds { min_samples: 10, ..Default::default() };
        let bad = sample(9, 9, 900.0);
        assert_eq!(check(sample(100, 0, 1.0), bad, &t, false), Verdict::NotEnoughSamples);
        assert_eq!(
            check(sample(9, 0, 1.0), sample(100, 100, 1.0), &t, false),
            Verdict::NotEnoughSamples
        );
    }

    #[test]
    fn a_crash_fails_the_check_even_without_traffic() {
        let t = CanaryThresholds::default();
        assert!(matches!(
            check(Sample::default(), Sample::default(), &t, true),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn errors_fail_only_past_both_the_ratio_and_the_increase() {
        let t = CanaryThresholds { min_samples: 10, ..Default::default() };
        let control = sample(1000, 10, 5.0); // 1 %
        // 2.5 % is 2.5× the control but only 1.5 points more: passes.
        assert_eq!(check(control, sample(1000, 25, 5.0), &t, false), Verdict::Passed);
        // 10 % is 10× and 9 points more: fails.
        let Verdict::Failed(why) = check(control, sample(1000, 100, 5.0), &t, false) else {
            panic!("should fail")
        };
        assert!(why.contains("error rate 0.100"), "{why}");
        // Both at 40 %: no worse than the control.
        assert_eq!(check(sample(100, 40, 5.0), sample(100, 40, 5.0), &t, false), Verdict::Passed);
    }

    #[test]
    fn latency_fails_past_the_factor_and_the_floor() {
        let t = CanaryThresholds { min_samples: 1, min_p99_ms: 50.0, ..Default::default() };
        assert_eq!(check(sample(10, 0, 1.0), sample(10, 0, 30.0), &t, false), Verdict::Passed);
        assert!(matches!(
            check(sample(10, 0, 40.0), sample(10, 0, 300.0), &t, false),
            Verdict::Failed(why) if why.contains("p99")
        ));
        assert_eq!(check(sample(10, 0, 100.0), sample(10, 0, 150.0), &t, false), Verdict::Passed);
    }
}
