//! Sticky bucketing as Unleash's flexible rollout does it: a client is in a
//! rollout of `p` percent when `murmur3("{group}:{id}", 0) % 100 + 1 <= p`.
//! The bucket depends only on the group and the client id, so a client
//! keeps its variant across requests, restarts and instances, and raising
//! the percentage never drops a client that was already in.

use super::murmur3::murmur3_x86_32;

/// Unleash's seed for picking a variant, independent of the rollout bucket
/// (the same seed for both would give the first variant to the first
/// percent of clients only).
const VARIANT_SEED: u32 = 86_028_157;

/// The client's bucket in `1..=normalizer` within `group`.
pub fn normalized_value(group: &str, id: &str, normalizer: u32, seed: u32) -> u32 {
    let hashed = murmur3_x86_32(format!("{group}:{id}").as_bytes(), seed);
    hashed % normalizer + 1
}

/// Whether `id` is in a rollout of `percent` (0–100) within `group`.
pub fn in_rollout(group: &str, id: &str, percent: u8) -> bool {
    percent > 0 && normalized_value(group, id, 100, 0) <= u32::from(percent)
}

/// Which of `count` equally weighted variants `id` gets (an index), sticky
/// per group; `count` must be at least 1.
pub fn variant_index(group: &str, id: &str, count: usize) -> usize {
    let count = count.max(1) as u32;
    let value = normalized_value(group, id, 1000, VARIANT_SEED);
    let weight = 1000 / count;
    // The first variant whose cumulative weight reaches the value; the last
    // one takes the rounding remainder.
    ((value - 1) / weight).min(count - 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unleash client specification, `10-flexible-rollout-strategy.json`
    /// (default stickiness, groupId = the toggle name): group, rollout,
    /// targeting key, expected result.
    const FLEXIBLE_ROLLOUT: &[(&str, u8, &str, bool)] = &[
        ("Feature.flexibleRollout.100", 100, "", true),
        ("Feature.flexibleRollout.10", 10, "174", true),
        ("Feature.flexibleRollout.10", 10, "499", false),
        ("Feature.flexibleRollout.userId.55", 55, "25", true),
        ("Feature.flexibleRollout.sessionId.42", 42, "147", true),
    ];

    #[test]
    fn agrees_with_the_unleash_flexible_rollout_specification() {
        for &(group, percent, id, expected) in FLEXIBLE_ROLLOUT {
            assert_eq!(in_rollout(group, id, percent), expected, "{group} {percent}% for {id:?}");
        }
    }

    /// Normalized values the Unleash SDKs document in their own tests.
    #[test]
    fn normalized_values_match_unleash() {
        assert_eq!(normalized_value("gr1", "123", 100, 0), 73);
        assert_eq!(normalized_value("groupX", "999", 100, 0), 25);
    }

    #[test]
    fn zero_percent_is_nobody_and_raising_the_percentage_keeps_everyone_in() {
        let ids: Vec<String> = (0..500).map(|i| format!("client-{i}")).collect();
        assert!(ids.iter().all(|id| !in_rollout("g", id, 0)));
        assert!(ids.iter().all(|id| in_rollout("g", id, 100)));
        let mut previous = 0;
        for percent in [5, 20, 50, 80] {
            let inside: Vec<&String> =
                ids.iter().filter(|id| in_rollout("g", id, percent)).collect();
            assert!(inside.len() >= previous);
            for id in &inside {
                assert!(in_rollout("g", id, percent + 10), "{id} dropped when raising {percent}%");
            }
            // Roughly the share asked for (500 clients: within ±8 points).
            let share = inside.len() as f64 / ids.len() as f64 * 100.0;
            assert!((share - f64::from(percent)).abs() < 8.0, "{percent}% gave {share}%");
            previous = inside.len();
        }
    }

    #[test]
    fn variants_are_sticky_and_spread() {
        let mut counts = [0usize; 3];
        for i in 0..900 {
            let id = format!("c{i}");
            let v = variant_index("g", &id, 3);
            assert_eq!(v, variant_index("g", &id, 3));
            counts[v] += 1;
        }
        assert!(counts.iter().all(|&c| c > 200), "{counts:?}");
        assert_eq!(variant_index("g", "x", 1), 0);
    }
}
