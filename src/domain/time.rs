//! Wall-clock times as the API shows them: milliseconds since the Unix epoch
//! inside, RFC 3339 (`2026-11-25T10:00:00.000Z`) on the wire. Formatting is
//! hand-written because the map snapshot formats two times per device.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
pub const MAX_MILLIS: i64 = 253_402_300_799_999;

/// Milliseconds since the epoch (negative before 1970).
pub fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The `SystemTime` of `ms` milliseconds since the epoch.
pub fn from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Parse an RFC 3339 date-time into epoch milliseconds (sub-millisecond
/// digits are truncated).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// `ms` as RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T10:00:00.000Z`.
pub fn format_rfc3339(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339(&mut out, ms);
    String::from_utf8(out).expect("RFC 3339 is ASCII")
}

/// Append `ms` as RFC 3339 (see [`format_rfc3339`]).
pub fn write_rfc3339(out: &mut Vec<u8>, ms: i64) {
    out.extend_from_slice(&rfc3339_bytes(ms));
}

/// `ms` as the 24 bytes of RFC 3339 in UTC with milliseconds; clamps to
/// years 0000–9999. By hand, not `write!`: the map snapshot writes two per
/// device.
pub fn rfc3339_bytes(ms: i64) -> [u8; 24] {
    let ms = ms.clamp(-62_167_219_200_000, MAX_MILLIS);
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(d));
    put(11, 2, (sod / 3600) as u64);
    put(14, 2, (sod % 3600 / 60) as u64);
    put(17, 2, (sod % 60) as u64);
    put(20, 3, milli as u64);
    buf
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_matches_the_time_crate_across_the_calendar() {
        // A deterministic walk over 1970–2100 in uneven steps, plus edges.
        let mut ms: i64 = -86_400_000 * 400;
        while ms < 4_102_444_800_000 {
            let ours = format_rfc3339(ms);
            let theirs = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                .unwrap()
                .format(&Rfc3339)
                .unwrap();
            // `time` omits a zero fraction and writes fewer digits; compare parsed.
            assert_eq!(parse_rfc3339(&ours), Some(ms), "{ours} vs {theirs}");
            assert_eq!(parse_rfc3339(&theirs), Some(ms));
            assert_eq!(&ours[..19], &theirs[..19]);
            ms += 7_777_777_777;
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_rfc3339(MAX_MILLIS), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_offsets_and_fractions_are_understood() {
        assert_eq!(parse_rfc3339("2026-11-25T10:00:00Z"), Some(1_795_600_800_000));
        assert_eq!(parse_rfc3339("2026-11-25T11:00:00.5+01:00"), Some(1_795_600_800_500));
        assert_eq!(parse_rfc3339("2026-11-25 10:00:00"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn system_times_round_trip_through_millis() {
        let t = from_millis(1_795_600_800_123);
        assert_eq!(millis(t), 1_795_600_800_123);
        assert_eq!(millis(from_millis(-5)), -5);
    }
}
