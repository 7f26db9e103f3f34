//! The OsmAnd protocol as Traccar Client and OsmAnd send it
//! (<https://www.traccar.org/osmand/>), in both of its formats:
//!
//! - query or form parameters: `id` (or `deviceid`), `lat`, `lon` (or
//!   `location=lat,lon`), `timestamp` (epoch seconds, epoch milliseconds or
//!   ISO 8601; the server's clock when absent), `speed` in knots, `bearing`
//!   (or `heading`), `altitude`, `accuracy`, `batt` (percent);
//! - the JSON body of Traccar Client 9 and later: `device_id` and
//!   `location` with `timestamp` (ISO 8601), `coords` (`latitude`,
//!   `longitude`, `accuracy`, `speed` in m/s, `heading`, `altitude`) and
//!   `battery.level` (0–1). Its SDK writes -1 for a speed, heading or
//!   battery it does not know: those are left out.
//!
//! `valid` says whether the phone had a GPS fix; anything but `true` or
//! `1` means it had none and the coordinates are a stale or made-up
//! position (Traccar's server reads it the same way). Traccar stores such a
//! report flagged invalid and drops it only with `filter.invalid`; mapcast
//! has no such flag on a position, so a report without a fix is answered
//! 200 (the app would otherwise resend it forever) and its coordinates are
//! not used: the map, history and last position keep the last real fix.

use serde_json::Value;

use super::{checked, json_f64, parse_time};
use crate::domain::{DeviceKind, Fix, Location, LocationError};

/// One knot in m/s.
const KNOT: f64 = 1852.0 / 3600.0;

/// Why a report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// Neither `id` nor `deviceid` (`device_id` in JSON).
    NoDeviceId,
    Invalid(LocationError),
}

impl ReportError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoDeviceId => "the device id (`id`, `deviceid` or `device_id`) is required",
            Self::Invalid(e) => e.as_str(),
        }
    }
}

impl From<LocationError> for ReportError {
    fn from(e: LocationError) -> Self {
        Self::Invalid(e)
    }
}

/// A report: who claims to send it, and the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub device_id: String,
    pub location: Location,
    /// The phone had a GPS fix (`valid` absent, `true` or `1`).
    pub has_fix: bool,
}

/// A report from query or form parameters (the later of a repeated name
/// wins, as the app never repeats one). `now_ms` stands in for a missing
/// `timestamp`.
pub fn from_params(params: &[(String, String)], now_ms: i64) -> Result<Report, ReportError> {
    let get = |names: &[&str]| {
        params.iter().rev().find(|(k, _)| names.contains(&k.as_str())).map(|(_, v)| v.as_str())
    };
    let number = |names: &[&str]| -> Result<Option<f64>, LocationError> {
        match get(names) {
            None | Some("") => Ok(None),
            Some(v) => v.trim().parse::<f64>().map(Some).map_err(|_| LocationError::NotFinite),
        }
    };
    let device_id =
        get(&["id", "deviceid"]).filter(|v| !v.is_empty()).ok_or(ReportError::NoDeviceId)?;
    let (lat, lon) = match (number(&["lat"])?, number(&["lon"])?, get(&["location"])) {
        (Some(lat), Some(lon), _) => (lat, lon),
        (None, None, Some(pair)) => {
            let (lat, lon) = pair.split_once(',').ok_or(LocationError::PhoneNoLatLon)?;
            let parse = |s: &str| s.trim().parse::<f64>().map_err(|_| LocationError::PhoneNoLatLon);
            (parse(lat)?, parse(lon)?)
        }
        _ => return Err(LocationError::PhoneNoLatLon.into()),
    };
    let ts_ms = match get(&["timestamp"]) {
        None | Some("") => now_ms,
        Some(t) => parse_time(t).ok_or(LocationError::PhoneNoTimestamp)?,
    };
    let fix = Fix {
        lon,
        lat,
        alt: number(&["altitude"])?,
        ts_ms,
        speed: number(&["speed"])?.map(|knots| knots * KNOT),
        heading: number(&["bearing", "heading"])?.map(|h| if h == 360.0 { 0.0 } else { h }),
        accuracy: number(&["accuracy"])?,
        battery: number(&["batt"])?,
        kind: Some(DeviceKind::Phone),
    };
    let has_fix = get(&["valid"]).is_none_or(|v| v.eq_ignore_ascii_case("true") || v == "1");
    Ok(Report { device_id: device_id.to_owned(), location: checked(fix)?, has_fix })
}

/// A report from the JSON body of Traccar Client 9 and later.
pub fn from_json(body: &[u8]) -> Result<Report, ReportError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| LocationError::NotJson)?;
    let device_id = match doc.get("device_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ReportError::NoDeviceId),
    };
    let location =
        doc.get("location").and_then(Value::as_object).ok_or(LocationError::PhoneNotObject)?;
    let coords =
        location.get("coords").and_then(Value::as_object).ok_or(LocationError::PhoneNoLatLon)?;
    let (Some(lat), Some(lon)) =
        (json_f64(coords.get("latitude")), json_f64(coords.get("longitude")))
    else {
        return Err(LocationError::PhoneNoLatLon.into());
    };
    let ts_ms = match location.get("timestamp") {
        Some(Value::String(s)) => parse_time(s),
        Some(Value::Number(n)) => n.as_f64().and_then(|n| parse_time(&n.to_string())),
        _ => None,
    }
    .ok_or(LocationError::PhoneNoTimestamp)?;
    // The SDK's "unknown" is -1.
    let known = |v: Option<f64>| v.filter(|v| *v != -1.0);
    let battery = location
        .get("battery")
        .and_then(|b| known(json_f64(b.get("level"))))
        .map(|level| level * 100.0);
    let fix = Fix {
        lon,
        lat,
        alt: json_f64(coords.get("altitude")),
        ts_ms,
        speed: known(json_f64(coords.get("speed"))),
        heading: known(json_f64(coords.get("heading"))).map(|h| if h == 360.0 { 0.0 } else { h }),
        accuracy: known(json_f64(coords.get("accuracy"))),
        battery,
        kind: Some(DeviceKind::Phone),
    };
    Ok(Report { device_id, location: checked(fix)?, has_fix: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn query_parameters_convert_knots_and_read_every_time_format() {
        let r = from_params(
            &params("id=ph-1&lat=52.52&lon=13.405&timestamp=1700000000&speed=10&bearing=90&altitude=34&accuracy=5&batt=81"),
            0,
        )
        .unwrap();
        assert_eq!(r.device_id, "ph-1");
        let l = r.location;
        assert_eq!((l.lat, l.lon, l.alt, l.ts_ms), (52.52, 13.405, Some(34.0), 1_700_000_000_000));
        assert!((l.speed.unwrap() - 5.144_444).abs() < 1e-5);
        assert_eq!((l.heading, l.accuracy, l.battery), (Some(90.0), Some(5.0), Some(81.0)));
        for ts in ["1700000000000", "2023-11-14T22:13:20Z"] {
            let r = from_params(&params(&format!("id=a&lat=1&lon=2&timestamp={ts}")), 0).unwrap();
            assert_eq!(r.location.ts_ms, 1_700_000_000_000, "{ts}");
        }
        let r = from_params(&params("deviceid=a&location=1.5,2.5"), 42).unwrap();
        assert_eq!((r.location.lat, r.location.lon, r.location.ts_ms), (1.5, 2.5, 42));
    }

    #[test]
    fn bad_parameters_say_why() {
        let err = |q: &str| from_params(&params(q), 0).unwrap_err();
        assert_eq!(err("lat=1&lon=2"), ReportError::NoDeviceId);
        assert_eq!(err("id=a&lon=2"), ReportError::Invalid(LocationError::PhoneNoLatLon));
        assert_eq!(err("id=a&lat=91&lon=2"), ReportError::Invalid(LocationError::LatitudeRange));
        assert_eq!(
            err("id=a&lat=1&lon=2&timestamp=soon"),
            ReportError::Invalid(LocationError::PhoneNoTimestamp)
        );
        assert_eq!(err("id=a&lat=x&lon=2"), ReportError::Invalid(LocationError::NotFinite));
    }

    #[test]
    fn the_documented_json_body_converts() {
        let body = br#"{"location":{"timestamp":"2023-11-14T22:13:20.000Z","coords":{"latitude":52.52,"longitude":13.405,"accuracy":5,"speed":2.5,"heading":-1,"altitude":34},"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":0.81,"is_charging":false},"activity":{"type":"still"},"extras":{}},"device_id":"ph-1"}"#;
        let r = from_json(body).unwrap();
        assert_eq!(r.device_id, "ph-1");
        let l = r.location;
        assert_eq!(
            (l.lat, l.lon, l.ts_ms, l.speed, l.heading),
            (52.52, 13.405, 1_700_000_000_000, Some(2.5), None)
        );
        assert!((l.battery.unwrap() - 81.0).abs() < 1e-9);
        assert_eq!(from_json(br#"{"location":{"coords":{}}}"#), Err(ReportError::NoDeviceId));
        assert_eq!(
            from_json(br#"{"device_id":"a","location":{"timestamp":"2023-11-14T22:13:20Z","coords":{"longitude":1}}}"#),
            Err(ReportError::Invalid(LocationError::PhoneNoLatLon))
        );
    }
}
