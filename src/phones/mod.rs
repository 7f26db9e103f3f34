//! The wire formats of the phone apps people already carry, read into
//! mapcast [`Location`]s so their fixes take the same path as any other
//! device's (validation, history, latest position, map, ACLs):
//!
//! - [`owntracks`]: OwnTracks JSON, over MQTT (`owntracks/{device id}/{name}`)
//!   or HTTP (`POST /api/v1/owntracks`);
//! - [`osmand`]: the OsmAnd protocol of Traccar Client and OsmAnd, query/form
//!   parameters or JSON (`/api/v1/osmand/{secret}`).
//!
//! Units are converted here (km/h and knots to m/s, a 0–1 battery level to
//! percent); ranges are checked by [`Location::from_fix`], so a fix from an
//! app is held to exactly the rules a GeoJSON one is.

pub mod osmand;
pub mod owntracks;

use crate::domain::time::parse_rfc3339;
use crate::domain::{Location, LocationError};

/// A JSON number, or a string holding one (older app versions quote them).
fn json_f64(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A time as the apps send it: epoch seconds, epoch milliseconds (told apart
/// by size: 10^11 seconds is the year 5138), or ISO 8601 / RFC 3339 text.
fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let ms = if n < 1e11 { n * 1000.0 } else { n };
        return Some(ms.round() as i64);
    }
    // A `+` of an offset arrives as a space when the app did not escape it.
    parse_rfc3339(s).or_else(|| parse_rfc3339(&s.replace(' ', "+")))
}

/// Convert and check: `Err` names the first rule the fix breaks.
fn checked(fix: crate::domain::Fix) -> Result<Location, LocationError> {
    Location::from_fix(fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_seconds_milliseconds_and_iso_8601_are_read() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("1700000000.5"), Some(1_700_000_000_500));
        assert_eq!(parse_time("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.000Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-15T00:13:20 02:00"), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("-5"), None);
    }
}
