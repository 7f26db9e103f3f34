//! OwnTracks JSON (<https://owntracks.org/booklet/tech/json/>).
//!
//! A phone signs in with its mapcast device id and secret as MQTT user name
//! and password and publishes to the app's default topic
//! `owntracks/{user}/{device}`, where `{user}` is that user name: the device
//! id. The ACL lets a device publish only under `owntracks/{its id}/`, so
//! the topic names the device the fix belongs to. `{device}` is the app's
//! own label and is not interpreted.
//!
//! On `owntracks/{id}/{device}`:
//! - `_type: location` becomes the device's position (`lat`, `lon`; `tst`
//!   epoch seconds; `acc`, `alt` metres; `vel` km/h; `cog` degrees; `batt`
//!   percent) and is refused, with the reason, when invalid;
//! - `_type: lwt` (the will the app registers, published when it drops
//!   off) and every other type are routed to subscribers unchanged and do
//!   not move the device: they carry no fix of the device.
//!
//! Other topics below it (`.../event` with `_type: transition` enter/leave
//! events, `.../cmd`, `.../waypoint`, ...) are routed unchanged: a
//! transition repeats a fix the app also sends as a `location`.

use serde_json::Value;

use super::{checked, json_f64};
use crate::domain::{DeviceId, DeviceKind, Fix, Location, LocationError, TopicName};

/// The first level of OwnTracks topics.
pub const ROOT: &str = "owntracks";

/// The device a message on `owntracks/{id}/{device}` (exactly three levels)
/// is from; `None` for any other topic.
pub fn device_of(topic: &TopicName) -> Option<DeviceId> {
    let mut levels = topic.as_str().split('/');
    let (Some(ROOT), Some(id), Some(_), None) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return None;
    };
    DeviceId::parse(id).ok()
}

/// The topic an OwnTracks HTTP post of `_type` would have had over MQTT.
pub fn topic_for(device: &DeviceId, label: &str, kind: Option<&str>) -> String {
    let base = format!("{ROOT}/{device}/{label}");
    match kind {
        Some("transition") => format!("{base}/event"),
        Some("waypoint") => format!("{base}/waypoint"),
        Some("waypoints") => format!("{base}/waypoints"),
        Some("steps") => format!("{base}/step"),
        _ => base,
    }
}

/// `_type` of a payload, when it is an object that has one.
pub fn type_of(payload: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(payload).ok()?;
    doc.get("_type")?.as_str().map(str::to_owned)
}

/// `Some(location)` for a valid `_type: location`, `None` for the other
/// types, `Err` with the reason for anything else.
pub fn parse(payload: &[u8]) -> Result<Option<Location>, LocationError> {
    let doc: Value = serde_json::from_slice(payload).map_err(|_| LocationError::NotJson)?;
    let Some(obj) = doc.as_object() else { return Err(LocationError::PhoneNotObject) };
    match obj.get("_type").and_then(Value::as_str) {
        Some("location") => {}
        Some(_) => return Ok(None),
        None => return Err(LocationError::PhoneNotObject),
    }
    let (Some(lat), Some(lon)) = (json_f64(obj.get("lat")), json_f64(obj.get("lon"))) else {
        return Err(LocationError::PhoneNoLatLon);
    };
    let tst = json_f64(obj.get("tst"))
        .filter(|t| t.is_finite() && *t >= 0.0 && t.fract() == 0.0)
        .ok_or(LocationError::PhoneNoTimestamp)?;
    let fix = Fix {
        lon,
        lat,
        alt: json_f64(obj.get("alt")),
        ts_ms: (tst * 1000.0) as i64,
        speed: json_f64(obj.get("vel")).map(|kmh| kmh / 3.6),
        // The apps send 0–360 inclusive; 360 is north, like 0.
        heading: json_f64(obj.get("cog")).map(|c| if c == 360.0 { 0.0 } else { c }),
        accuracy: json_f64(obj.get("acc")),
        battery: json_f64(obj.get("batt")),
        kind: Some(DeviceKind::Phone),
    };
    checked(fix).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TopicLimits;

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s.to_owned(), TopicLimits::default()).unwrap()
    }

    #[test]
    fn only_the_three_level_owntracks_topic_names_a_device() {
        assert_eq!(device_of(&topic("owntracks/car-1/pixel")).unwrap().as_str(), "car-1");
        assert!(device_of(&topic("owntracks/car-1/pixel/event")).is_none());
        assert!(device_of(&topic("owntracks/car-1")).is_none());
        assert!(device_of(&topic("devices/car-1/location")).is_none());
    }

    #[test]
    fn a_documented_location_converts_to_mapcast_units() {
        let payload = br#"{"_type":"location","acc":12,"alt":34,"batt":81,"bs":1,"cog":270,"conn":"w","lat":52.52,"lon":13.405,"m":1,"t":"u","tid":"ph","tst":1700000000,"vac":3,"vel":36}"#;
        let loc = parse(payload).unwrap().unwrap();
        assert_eq!((loc.lat, loc.lon, loc.alt), (52.52, 13.405, Some(34.0)));
        assert_eq!(loc.ts_ms, 1_700_000_000_000);
        assert_eq!(loc.speed, Some(10.0));
        assert_eq!((loc.heading, loc.accuracy, loc.battery), (Some(270.0), Some(12.0), Some(81.0)));
        assert_eq!(loc.kind, Some(DeviceKind::Phone));
    }

    #[test]
    fn other_types_carry_no_fix_and_bad_locations_say_why() {
        assert_eq!(parse(br#"{"_type":"lwt","tst":1700000000}"#), Ok(None));
        assert_eq!(
            parse(br#"{"_type":"transition","event":"enter","lat":1,"lon":2,"tst":1700000000,"wtst":1,"acc":5,"t":"c"}"#),
            Ok(None)
        );
        assert_eq!(
            parse(br#"{"_type":"location","lon":2,"tst":1}"#),
            Err(LocationError::PhoneNoLatLon)
        );
        assert_eq!(
            parse(br#"{"_type":"location","lat":1,"lon":2}"#),
            Err(LocationError::PhoneNoTimestamp)
        );
        assert_eq!(
            parse(br#"{"_type":"location","lat":91,"lon":2,"tst":1}"#),
            Err(LocationError::LatitudeRange)
        );
        assert_eq!(parse(b"[1]"), Err(LocationError::PhoneNotObject));
        assert_eq!(parse(b"{"), Err(LocationError::NotJson));
    }
}
