//! Counting what arrived: per-publisher sequence tracking (loss, duplicates,
//! reordering) and latency percentiles from an HdrHistogram.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram records; anything slower counts as this.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Latency of a message sent at `sent_ns` and received at `received_ns` (same
/// clock). A stamp from the future (never expected) counts as zero.
pub fn latency_ns(sent_ns: u64, received_ns: u64) -> u64 {
    received_ns.saturating_sub(sent_ns)
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// `p50 … max` for a human, in the unit that reads best.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".to_owned();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, {} samples)",
            human_us(self.p50_us),
            human_us(self.p90_us),
            human_us(self.p99_us),
            human_us(self.p999_us),
            human_us(self.max_us),
            human_us(self.mean_us),
            self.count
        )
    }
}

pub fn human_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Thousands separators for counts and rates.
pub fn human_count(n: f64) -> String {
    let whole = n.round() as u64;
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Which sequence numbers of one publisher one subscriber has seen.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    bits: Vec<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    /// One past the highest sequence number seen.
    next: u64,
}

/// What recording one sequence number found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one expected.
    InOrder,
    /// A first arrival that skipped this many sequence numbers: lost, or
    /// still to come out of order.
    Gap(u64),
    /// A first arrival below one already seen: it fills an earlier gap.
    Late,
    Duplicate,
}

impl Seen {
    pub fn is_first(self) -> bool {
        self != Seen::Duplicate
    }

    /// How this arrival changes the count of sequence numbers skipped so far.
    pub fn skipped_delta(self) -> i64 {
        match self {
            Seen::Gap(n) => n as i64,
            Seen::Late => -1,
            Seen::InOrder | Seen::Duplicate => 0,
        }
    }
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> Seen {
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            let len = (word + 1).max(self.bits.len() * 2).max(16);
            self.bits.resize(len, 0);
        }
        let mask = 1u64 << (seq % 64);
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.bits[word] |= mask;
        self.unique += 1;
        if seq < self.next {
            self.reordered += 1;
            return Seen::Late;
        }
        let skipped = seq - self.next;
        self.next = seq + 1;
        if skipped == 0 { Seen::InOrder } else { Seen::Gap(skipped) }
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Arrivals with a lower sequence number than one already seen.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Of the first `sent` sequence numbers, how many never arrived.
    pub fn missing(&self, sent: u64) -> u64 {
        let full_words = (sent / 64) as usize;
        let mut seen: u64 =
            self.bits.iter().take(full_words).map(|w| u64::from(w.count_ones())).sum();
        let rest = sent % 64;
        if rest > 0
            && let Some(w) = self.bits.get(full_words)
        {
            seen += u64::from((w & ((1u64 << rest) - 1)).count_ones());
        }
        sent - seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_arrivals_are_all_first_and_nothing_is_missing() {
        let mut t = SeqTracker::default();
        for seq in 0..1000 {
            assert_eq!(t.record(seq), Seen::InOrder);
        }
        assert_eq!((t.unique(), t.duplicates(), t.reordered(), t.missing(1000)), (1000, 0, 0, 0));
    }

    #[test]
    fn gaps_count_as_missing_until_they_arrive() {
        let mut t = SeqTracker::default();
        let mut skipped = 0;
        for seq in (0..200).filter(|s| s % 10 != 3) {
            skipped += t.record(seq).skipped_delta();
        }
        assert_eq!(t.missing(200), 20);
        assert_eq!(skipped, 20);
        assert_eq!(t.record(13), Seen::Late);
        assert_eq!(Seen::Late.skipped_delta(), -1);
        assert_eq!(t.missing(200), 19);
        assert_eq!(t.reordered(), 1);
        // Sent but never seen at the tail also counts.
        assert_eq!(t.missing(250), 19 + 50);
    }

    #[test]
    fn a_repeated_sequence_number_is_a_duplicate_not_a_delivery() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(5), Seen::Gap(5));
        assert_eq!(t.record(5), Seen::Duplicate);
        assert!(!Seen::Duplicate.is_first());
        assert_eq!((t.unique(), t.duplicates()), (1, 1));
        assert_eq!(t.missing(6), 5);
    }

    #[test]
    fn latency_is_receive_minus_send_on_a_known_delay() {
        let mut h = latency_histogram();
        let sent = 1_000_000_000;
        for delay_us in 1..=1000u64 {
            h.record(latency_ns(sent, sent + delay_us * 1000)).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1 %.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p90_us, 900.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert!(close(s.max_us, 1000.0), "{s:?}");
        assert!(close(s.mean_us, 500.5), "{s:?}");
    }

    #[test]
    fn a_stamp_from_the_future_is_zero_latency() {
        assert_eq!(latency_ns(10, 5), 0);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(human_count(1_234_567.4), "1,234,567");
        assert_eq!(human_count(999.0), "999");
        assert_eq!(human_us(370.0), "370 µs");
        assert_eq!(human_us(29_600.0), "29.60 ms");
        assert_eq!(human_us(2_500_000.0), "2.50 s");
    }
}
