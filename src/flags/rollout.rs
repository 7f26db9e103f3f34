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
    let hashed = with_bucket_key(group, id, |key| murmur3_x86_32(key, seed));
    hashed % normalizer + 1
}

/// `f` of `"{group}:{id}"`, built on the stack when short (evaluation runs
/// per request: no allocation for usual keys).
fn with_bucket_key<R>(group: &str, id: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 256;
    let len = group.len() + 1 + id.len();
    if len > STACK {
        return f(format!("{group}:{id}").as_bytes());
    }
    let mut buf = [0u8; STACK];
    buf[..group.len()].copy_from_slice(group.as_bytes());
    buf[group.len()] = b':';
    buf[group.len() + 1..len].copy_from_slice(id.as_bytes());
    f(&buf[..len])
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
    fn long_keys_hash_like_short_ones() {
        let id = "x".repeat(300);
        let expected = murmur3_x86_32(format!("g:{id}").as_bytes(), 0) % 100 + 1;
        assert_eq!(normalized_value("g", &id, 100, 0), expected);
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
