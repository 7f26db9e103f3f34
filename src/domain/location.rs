//! A device position: an RFC 7946 GeoJSON Feature with a Point geometry,
//! parsed once where it enters (MQTT or REST) and rejected with a precise,
//! fixed reason when it is not one.
//!
//! ```json
//! {"type": "Feature",
//!  "geometry": {"type": "Point", "coordinates": [13.4050, 52.5200, 34.0]},
//!  "properties": {"ts": "2026-11-25T10:00:00Z", "speed": 12.5, "heading": 270,
//!                 "accuracy": 5, "battery": 81, "kind": "car"}}
//! ```

use geojson::{Feature, GeometryValue, JsonObject, JsonValue};

use super::DeviceKind;
use super::time::{MAX_MILLIS, parse_rfc3339};

/// Why a payload is not a location. `Display` is the MQTT v5 reason string
/// and the REST problem detail: fixed text naming the field and the rule, so
/// rejecting costs no allocation and never echoes client data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationError {
    NotJson,
    NotFeature,
    NoGeometry,
    NotPoint,
    BadCoordinates,
    NotFinite,
    LongitudeRange,
    LatitudeRange,
    PropertiesNotObject,
    MissingTs,
    BadTs,
    BadSpeed,
    BadHeading,
    BadAccuracy,
    BadBattery,
    BadKind,
    Malformed,
    TsInFuture,
    TsTooOld,
    /// The phone-app formats (OwnTracks, OsmAnd / Traccar Client) name
    /// their fields differently; these say which of theirs is missing.
    PhoneNoLatLon,
    PhoneNoTimestamp,
    PhoneNotObject,
}

impl std::fmt::Display for LocationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for LocationError {}

impl LocationError {
    /// The fixed reason text (what `Display` writes).
    pub fn as_str(self) -> &'static str {
        use LocationError::*;
        match self {
            NotJson => "payload is not valid UTF-8 JSON",
            NotFeature => "payload must be a GeoJSON Feature object (\"type\": \"Feature\")",
            NoGeometry => "feature has no geometry",
            NotPoint => "geometry must be a GeoJSON Point",
            BadCoordinates => "Point coordinates must be [lon, lat] or [lon, lat, alt] numbers",
            NotFinite => "coordinates must be finite numbers",
            LongitudeRange => "longitude must be within [-180, 180]",
            LatitudeRange => "latitude must be within [-90, 90]",
            PropertiesNotObject => "properties must be a JSON object",
            MissingTs => "properties.ts is required",
            BadTs => "properties.ts must be an RFC 3339 date-time or integer epoch milliseconds",
            BadSpeed => "properties.speed must be a number >= 0",
            BadHeading => "properties.heading must be a number in [0, 360)",
            BadAccuracy => "properties.accuracy must be a number >= 0",
            BadBattery => "properties.battery must be a number in [0, 100]",
            BadKind => "properties.kind must be \"car\" or \"phone\"",
            Malformed => "malformed GeoJSON Feature",
            TsInFuture => "properties.ts is too far ahead of the server clock",
            TsTooOld => "properties.ts is older than the server accepts",
            PhoneNoLatLon => "lat and lon are required numbers",
            PhoneNoTimestamp => "the fix time is missing or not a valid time",
            PhoneNotObject => "payload must be a JSON object of the app's documented format",
        }
    }
}

/// A validated position report.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Longitude in degrees, [-180, 180].
    pub lon: f64,
    /// Latitude in degrees, [-90, 90].
    pub lat: f64,
    /// Altitude in metres, when the Point has a third coordinate.
    pub alt: Option<f64>,
    /// `properties.ts`: when the fix was taken, milliseconds since the epoch.
    pub ts_ms: i64,
    /// ≥ 0, in the device's unit (m/s by convention).
    pub speed: Option<f64>,
    /// Degrees clockwise from north, [0, 360).
    pub heading: Option<f64>,
    /// Horizontal accuracy in metres, ≥ 0.
    pub accuracy: Option<f64>,
    /// Battery level in percent, [0, 100].
    pub battery: Option<f64>,
    pub kind: Option<DeviceKind>,
}

impl Location {
    /// Parse and validate a payload published to `devices/{id}/location`.
    pub fn parse(payload: &[u8]) -> Result<Self, LocationError> {
        let feature: Feature = match serde_json::from_slice(payload) {
            Ok(f) => f,
            // Only the error path pays for a second, diagnostic parse.
            Err(_) => return Err(diagnose(payload)),
        };
        let geometry = feature.geometry.ok_or(LocationError::NoGeometry)?;
        let GeometryValue::Point { coordinates } = &geometry.value else {
            return Err(LocationError::NotPoint);
        };
        let (lon, lat, alt) = coordinates_of(coordinates.as_slice())?;
        let props = feature.properties.as_ref().ok_or(LocationError::MissingTs)?;
        Self::from_parts(lon, lat, alt, props)
    }

    fn from_parts(
        lon: f64,
        lat: f64,
        alt: Option<f64>,
        props: &JsonObject,
    ) -> Result<Self, LocationError> {
        let ts_ms = match props.get("ts") {
            None | Some(JsonValue::Null) => return Err(LocationError::MissingTs),
            Some(v) => parse_ts(v).ok_or(LocationError::BadTs)?,
        };
        let speed = number(props, "speed", |v| v >= 0.0, LocationError::BadSpeed)?;
        let heading =
            number(props, "heading", |v| (0.0..360.0).contains(&v), LocationError::BadHeading)?;
        let accuracy = number(props, "accuracy", |v| v >= 0.0, LocationError::BadAccuracy)?;
        let battery =
            number(props, "battery", |v| (0.0..=100.0).contains(&v), LocationError::BadBattery)?;
        let kind = match props.get("kind") {
            None | Some(JsonValue::Null) => None,
            Some(JsonValue::String(s)) => Some(match s.as_str() {
                "car" => DeviceKind::Car,
                "phone" => DeviceKind::Phone,
                _ => return Err(LocationError::BadKind),
            }),
            Some(_) => return Err(LocationError::BadKind),
        };
        Ok(Self { lon, lat, alt, ts_ms, speed, heading, accuracy, battery, kind })
    }
}

/// A fix read from another wire format (OwnTracks, OsmAnd / Traccar
/// Client), converted to mapcast's units but not yet checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fix {
    pub lon: f64,
    pub lat: f64,
    pub alt: Option<f64>,
    pub ts_ms: i64,
    /// m/s.
    pub speed: Option<f64>,
    pub heading: Option<f64>,
    pub accuracy: Option<f64>,
    /// Percent.
    pub battery: Option<f64>,
    pub kind: Option<DeviceKind>,
}

impl Location {
    /// Hold a fix from another format to exactly the rules a GeoJSON
    /// location meets.
    pub fn from_fix(f: Fix) -> Result<Self, LocationError> {
        let (lon, lat, alt) = match f.alt {
            Some(alt) => coordinates_of(&[f.lon, f.lat, alt])?,
            None => coordinates_of(&[f.lon, f.lat])?,
        };
        if !(0..=MAX_MILLIS).contains(&f.ts_ms) {
            return Err(LocationError::BadTs);
        }
        let check = |v: Option<f64>, ok: fn(f64) -> bool, err| match v {
            Some(v) if !(v.is_finite() && ok(v)) => Err(err),
            v => Ok(v),
        };
        Ok(Self {
            lon,
            lat,
            alt,
            ts_ms: f.ts_ms,
            speed: check(f.speed, |v| v >= 0.0, LocationError::BadSpeed)?,
            heading: check(f.heading, |v| (0.0..360.0).contains(&v), LocationError::BadHeading)?,
            accuracy: check(f.accuracy, |v| v >= 0.0, LocationError::BadAccuracy)?,
            battery: check(f.battery, |v| (0.0..=100.0).contains(&v), LocationError::BadBattery)?,
            kind: f.kind,
        })
    }

    /// The GeoJSON Feature [`Location::parse`] reads back as this location.
    pub fn to_feature_json(&self) -> Vec<u8> {
        let mut coordinates = vec![self.lon, self.lat];
        coordinates.extend(self.alt);
        let mut props = JsonObject::new();
        props.insert("ts".into(), self.ts_ms.into());
        for (key, value) in [
            ("speed", self.speed),
            ("heading", self.heading),
            ("accuracy", self.accuracy),
            ("battery", self.battery),
        ] {
            if let Some(v) = value.and_then(serde_json::Number::from_f64) {
                props.insert(key.into(), JsonValue::Number(v));
            }
        }
        if let Some(kind) = self.kind {
            let kind = match kind {
                DeviceKind::Car => "car",
                DeviceKind::Phone => "phone",
            };
            props.insert("kind".into(), kind.into());
        }
        let feature = serde_json::json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": coordinates},
            "properties": props,
        });
        serde_json::to_vec(&feature).unwrap_or_default()
    }
}

fn coordinates_of(c: &[f64]) -> Result<(f64, f64, Option<f64>), LocationError> {
    let (lon, lat, alt) = match *c {
        [lon, lat] => (lon, lat, None),
        [lon, lat, alt] => (lon, lat, Some(alt)),
        _ => return Err(LocationError::BadCoordinates),
    };
    if !(lon.is_finite() && lat.is_finite() && alt.is_none_or(f64::is_finite)) {
        return Err(LocationError::NotFinite);
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(LocationError::LongitudeRange);
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(LocationError::LatitudeRange);
    }
    Ok((lon, lat, alt))
}

/// RFC 3339 text, or whole epoch milliseconds (an integral JSON number).
fn parse_ts(v: &JsonValue) -> Option<i64> {
    let ms = match v {
        JsonValue::String(s) => parse_rfc3339(s)?,
        JsonValue::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => {
                let f = n.as_f64()?;
                if f.fract() != 0.0 || !(0.0..=MAX_MILLIS as f64).contains(&f) {
                    return None;
                }
                f as i64
            }
        },
        _ => return None,
    };
    (0..=MAX_MILLIS).contains(&ms).then_some(ms)
}

/// An optional numeric property that must satisfy `ok`.
fn number(
    props: &JsonObject,
    key: &str,
    ok: impl Fn(f64) -> bool,
    err: LocationError,
) -> Result<Option<f64>, LocationError> {
    match props.get(key) {
        None | Some(JsonValue::Null) => Ok(None),
        Some(JsonValue::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && ok(v) => Ok(Some(v)),
            _ => Err(err),
        },
        Some(_) => Err(err),
    }
}

/// Why `payload` did not deserialize as a Feature, as precisely as the
/// document allows.
fn diagnose(payload: &[u8]) -> LocationError {
    let Ok(doc) = serde_json::from_slice::<JsonValue>(payload) else {
        return LocationError::NotJson;
    };
    let Some(obj) = doc.as_object() else { return LocationError::NotFeature };
    if obj.get("type").and_then(JsonValue::as_str) != Some("Feature") {
        return LocationError::NotFeature;
    }
    let geometry = match obj.get("geometry") {
        None | Some(JsonValue::Null) => return LocationError::NoGeometry,
        Some(JsonValue::Object(g)) => g,
        Some(_) => return LocationError::NotPoint,
    };
    if geometry.get("type").and_then(JsonValue::as_str) != Some("Point") {
        return LocationError::NotPoint;
    }
    let coords: Option<Vec<f64>> = geometry
        .get("coordinates")
        .and_then(JsonValue::as_array)
        .and_then(|a| a.iter().map(JsonValue::as_f64).collect());
    if let Err(e) = coords.as_deref().map_or(Err(LocationError::BadCoordinates), coordinates_of) {
        return e;
    }
    match obj.get("properties") {
        None | Some(JsonValue::Null) => LocationError::MissingTs,
        Some(JsonValue::Object(_)) => LocationError::Malformed,
        Some(_) => LocationError::PropertiesNotObject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fix_round_trips_through_its_feature_and_is_held_to_the_same_rules() {
        let fix = Fix {
            lon: 13.4,
            lat: 52.5,
            alt: Some(34.0),
            ts_ms: 1_795_600_800_000,
            speed: Some(3.5),
            heading: Some(90.0),
            accuracy: Some(5.0),
            battery: Some(81.0),
            kind: Some(DeviceKind::Phone),
        };
        let loc = Location::from_fix(fix.clone()).unwrap();
        assert_eq!(Location::parse(&loc.to_feature_json()).unwrap(), loc);
        let bad = |f: Fix| Location::from_fix(f).unwrap_err();
        assert_eq!(bad(Fix { lat: 91.0, ..fix.clone() }), LocationError::LatitudeRange);
        assert_eq!(bad(Fix { lon: -181.0, ..fix.clone() }), LocationError::LongitudeRange);
        assert_eq!(bad(Fix { heading: Some(360.0), ..fix.clone() }), LocationError::BadHeading);
        assert_eq!(bad(Fix { battery: Some(101.0), ..fix.clone() }), LocationError::BadBattery);
        assert_eq!(bad(Fix { ts_ms: -1, ..fix }), LocationError::BadTs);
    }

    const GOOD: &str = r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[13.405,52.52]},"properties":{"ts":"2026-11-25T10:00:00Z"}}"#;

    fn feature(coords: &str, props: &str) -> String {
        format!(
            r#"{{"type":"Feature","geometry":{{"type":"Point","coordinates":{coords}}},"properties":{props}}}"#
        )
    }

    #[test]
    fn a_minimal_feature_parses() {
        let loc = Location::parse(GOOD.as_bytes()).unwrap();
        assert_eq!((loc.lon, loc.lat, loc.alt), (13.405, 52.52, None));
        assert_eq!(loc.ts_ms, 1_795_600_800_000);
        assert_eq!(
            (loc.speed, loc.heading, loc.accuracy, loc.battery, loc.kind),
            Default::default()
        );
    }

    #[test]
    fn numbers_parse_to_the_nearest_double_however_many_digits_they_have() {
        // 17 significant digits, and 64 of them: both name 110/9's double.
        for speed in ["12.222222222222221", &format!("12.{}5", "2".repeat(62))] {
            let payload = feature("[1, 2]", &format!(r#"{{"ts":0,"speed":{speed}}}"#));
            let loc = Location::parse(payload.as_bytes()).unwrap();
            assert_eq!(loc.speed, Some(110.0 / 9.0), "{speed}");
        }
    }

    #[test]
    fn every_optional_property_is_read() {
        let payload = feature(
            "[-122.4194, 37.7749, 16.5]",
            r#"{"ts":1795600800123,"speed":12.5,"heading":359.9,"accuracy":4,"battery":100,"kind":"phone","extra":"kept"}"#,
        );
        let loc = Location::parse(payload.as_bytes()).unwrap();
        assert_eq!(loc.alt, Some(16.5));
        assert_eq!(loc.ts_ms, 1_795_600_800_123);
        assert_eq!(loc.speed, Some(12.5));
        assert_eq!(loc.heading, Some(359.9));
        assert_eq!(loc.accuracy, Some(4.0));
        assert_eq!(loc.battery, Some(100.0));
        assert_eq!(loc.kind, Some(DeviceKind::Phone));
    }

    #[test]
    fn range_edges_are_inclusive_where_the_spec_says_so() {
        for (coords, ok) in [
            ("[180, 90]", true),
            ("[-180, -90]", true),
            ("[180.0001, 0]", false),
            ("[0, -90.0001]", false),
        ] {
            let payload = feature(coords, r#"{"ts":0}"#);
            assert_eq!(Location::parse(payload.as_bytes()).is_ok(), ok, "{coords}");
        }
        let heading_360 = feature("[0, 0]", r#"{"ts":0,"heading":360}"#);
        assert_eq!(Location::parse(heading_360.as_bytes()), Err(LocationError::BadHeading));
    }

    #[test]
    fn each_bad_input_gets_its_own_reason() {
        use LocationError::*;
        let f = feature;
        let cases: Vec<(String, LocationError)> = vec![
            ("".into(), NotJson),
            ("{".into(), NotJson),
            ("not json".into(), NotJson),
            ("\u{1F600}".into(), NotJson),
            ("[1, 2]".into(), NotFeature),
            ("42".into(), NotFeature),
            (r#"{"type":"Point","coordinates":[1,2]}"#.into(), NotFeature),
            (r#"{"geometry":null,"properties":{"ts":0}}"#.into(), NotFeature),
            (r#"{"type":"Feature","properties":{"ts":0}}"#.into(), NoGeometry),
            (r#"{"type":"Feature","geometry":null,"properties":{"ts":0}}"#.into(), NoGeometry),
            (
                r#"{"type":"Feature","geometry":{"type":"LineString","coordinates":[[1,2],[3,4]]},"properties":{"ts":0}}"#
                    .into(),
                NotPoint,
            ),
            (r#"{"type":"Feature","geometry":"here","properties":{"ts":0}}"#.into(), NotPoint),
            (f("[1]", r#"{"ts":0}"#), BadCoordinates),
            (f("[]", r#"{"ts":0}"#), BadCoordinates),
            (f("[1, 2, 3, 4]", r#"{"ts":0}"#), BadCoordinates),
            (f(r#"["1", "2"]"#, r#"{"ts":0}"#), BadCoordinates),
            (f("[200, 10]", r#"{"ts":0}"#), LongitudeRange),
            (f("[-180.5, 10]", r#"{"ts":0}"#), LongitudeRange),
            (f("[10, 91]", r#"{"ts":0}"#), LatitudeRange),
            (f("[1, 2]", "null"), MissingTs),
            (f("[1, 2]", "{}"), MissingTs),
            (f("[1, 2]", r#"{"ts":null}"#), MissingTs),
            (f("[1, 2]", r#""ts""#), PropertiesNotObject),
            (f("[1, 2]", r#"{"ts":"yesterday"}"#), BadTs),
            (f("[1, 2]", r#"{"ts":-1}"#), BadTs),
            (f("[1, 2]", r#"{"ts":1.5}"#), BadTs),
            (f("[1, 2]", r#"{"ts":true}"#), BadTs),
            (f("[1, 2]", r#"{"ts":0,"speed":-1}"#), BadSpeed),
            (f("[1, 2]", r#"{"ts":0,"speed":"fast"}"#), BadSpeed),
            (f("[1, 2]", r#"{"ts":0,"heading":-0.1}"#), BadHeading),
            (f("[1, 2]", r#"{"ts":0,"accuracy":-3}"#), BadAccuracy),
            (f("[1, 2]", r#"{"ts":0,"battery":101}"#), BadBattery),
            (f("[1, 2]", r#"{"ts":0,"kind":"bike"}"#), BadKind),
            (f("[1, 2]", r#"{"ts":0,"kind":1}"#), BadKind),
        ];
        for (payload, want) in cases {
            assert_eq!(Location::parse(payload.as_bytes()), Err(want), "{payload}");
        }
    }

    #[test]
    fn reasons_are_their_display_text() {
        for e in [LocationError::NotJson, LocationError::BadKind, LocationError::Malformed] {
            assert_eq!(e.to_string(), e.as_str());
        }
    }

    /// A tiny deterministic generator (no extra dependency for property tests).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn any_in_range_point_parses_back_exactly() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let lon = rng.unit() * 360.0 - 180.0;
            let lat = rng.unit() * 180.0 - 90.0;
            let ts = (rng.next() % MAX_MILLIS as u64) as i64;
            let payload = feature(&format!("[{lon}, {lat}]"), &format!(r#"{{"ts":{ts}}}"#));
            let loc = Location::parse(payload.as_bytes()).unwrap();
            // serde_json's float parsing may be one ULP off: nanometres here.
            assert!((loc.lon - lon).abs() < 1e-12 && (loc.lat - lat).abs() < 1e-12, "{payload}");
            assert_eq!(loc.ts_ms, ts);
        }
    }

    #[test]
    fn any_out_of_range_point_is_rejected() {
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let lon = 180.0 + 1e-9 + rng.unit() * 1e6;
            let lon = if rng.next().is_multiple_of(2) { lon } else { -lon };
            let lat = 90.0 + 1e-9 + rng.unit() * 1e6;
            let lat = if rng.next().is_multiple_of(2) { lat } else { -lat };
            let bad_lon = feature(&format!("[{lon}, 0]"), r#"{"ts":0}"#);
            let bad_lat = feature(&format!("[0, {lat}]"), r#"{"ts":0}"#);
            assert_eq!(Location::parse(bad_lon.as_bytes()), Err(LocationError::LongitudeRange));
            assert_eq!(Location::parse(bad_lat.as_bytes()), Err(LocationError::LatitudeRange));
        }
    }

    #[test]
    fn mangled_payloads_never_panic_and_never_pass_unchecked() {
        let mut rng = Rng(7);
        let good = GOOD.as_bytes();
        for _ in 0..5000 {
            let mut p = good.to_vec();
            for _ in 0..(rng.next() % 4 + 1) {
                let i = (rng.next() as usize) % p.len();
                match rng.next() % 3 {
                    0 => p[i] = rng.next() as u8,
                    1 => {
                        p.remove(i);
                    }
                    _ => p.truncate(i),
                }
                if p.is_empty() {
                    break;
                }
            }
            if let Ok(loc) = Location::parse(&p) {
                assert!((-180.0..=180.0).contains(&loc.lon) && (-90.0..=90.0).contains(&loc.lat));
            }
        }
    }
}
