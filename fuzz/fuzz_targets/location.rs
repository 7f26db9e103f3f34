//! A `devices/{id}/location` payload: validation, then, when valid, the map
//! snapshot it ends up in, whose feature must read back as the same location.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapcast::domain::{Bbox, DeviceId, Location, MapSnapshot, Position};

fuzz_target!(|data: &[u8]| {
    let location = match Location::parse(data) {
        Ok(l) => l,
        Err(e) => {
            assert!(!e.as_str().is_empty());
            return;
        }
    };
    check_ranges(&location);

    let id = DeviceId::parse("car-1").unwrap();
    let position = Position { location: location.clone(), received_at_ms: 0 };
    let snapshot = MapSnapshot::build(1, 0, [(&id, &position)]);
    let whole: serde_json::Value =
        serde_json::from_slice(&snapshot.json).expect("snapshot is JSON");
    let world = Bbox::parse("-180,-90,180,90").unwrap();
    let selected: serde_json::Value =
        serde_json::from_slice(&snapshot.select(&world)).expect("selection is JSON");
    assert_eq!(whole["features"], selected["features"]);

    let feature = serde_json::to_vec(&whole["features"][0]).unwrap();
    let again = Location::parse(&feature).expect("the snapshot's feature is a valid location");
    assert_eq!(again, location, "the map shows another position than was sent");
});

fn check_ranges(l: &Location) {
    assert!((-180.0..=180.0).contains(&l.lon));
    assert!((-90.0..=90.0).contains(&l.lat));
    assert!(l.alt.is_none_or(f64::is_finite));
    assert!((0..=mapcast::domain::time::MAX_MILLIS).contains(&l.ts_ms));
    assert!(l.speed.is_none_or(|v| v.is_finite() && v >= 0.0));
    assert!(l.heading.is_none_or(|v| (0.0..360.0).contains(&v)));
    assert!(l.accuracy.is_none_or(|v| v.is_finite() && v >= 0.0));
    assert!(l.battery.is_none_or(|v| (0.0..=100.0).contains(&v)));
}
