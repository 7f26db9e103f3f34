//! Server-side clustering of the map for zoomed-out views: devices are
//! grouped into grid cells of a quarter map tile (Web Mercator, as slippy
//! maps tile the world) at the requested zoom, each cell becoming one point
//! at the mean position of its devices with their count. A client showing
//! the whole world then receives hundreds of points instead of every device.

use std::collections::BTreeMap;
use std::f64::consts::PI;

use serde_json::{Value, json};

use super::map::{Bbox, MapSnapshot};
use super::time::format_rfc3339;

/// The deepest zoom level of slippy maps.
pub const MAX_ZOOM: u8 = 22;
/// Grid cells per map tile along each axis.
const CELLS_PER_TILE: f64 = 4.0;

/// Web Mercator latitudes stop short of the poles.
const MAX_LAT: f64 = 85.051_128_78;

/// The grid cell of a position at `zoom`.
fn cell(zoom: u8, [lon, lat]: [f64; 2]) -> (u32, u32) {
    let n = 2f64.powi(i32::from(zoom)) * CELLS_PER_TILE;
    let x = ((lon + 180.0) / 360.0 * n).floor();
    let lat = lat.clamp(-MAX_LAT, MAX_LAT).to_radians();
    let y = ((1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / PI) / 2.0 * n).floor();
    let clamp = |v: f64| v.clamp(0.0, n - 1.0) as u32;
    (clamp(x), clamp(y))
}

fn inside(area: &Bbox, [lon, lat]: [f64; 2]) -> bool {
    let lon_in = if area.min_lon <= area.max_lon {
        (area.min_lon..=area.max_lon).contains(&lon)
    } else {
        lon >= area.min_lon || lon <= area.max_lon
    };
    lon_in && (area.min_lat..=area.max_lat).contains(&lat)
}

#[derive(Default)]
struct Cell<'a> {
    count: u64,
    lon_sum: f64,
    lat_sum: f64,
    /// The device id while the cell holds exactly one.
    only: Option<&'a str>,
}

/// The snapshot's devices (inside `area`, if given) clustered at `zoom`
/// (at most [`MAX_ZOOM`]), as a GeoJSON FeatureCollection: one Point per
/// cell with `properties.count`; a cell of one device keeps its id.
pub fn cluster(snapshot: &MapSnapshot, zoom: u8, area: Option<&Bbox>) -> Value {
    let zoom = zoom.min(MAX_ZOOM);
    let mut cells: BTreeMap<(u32, u32), Cell<'_>> = BTreeMap::new();
    let mut total = 0u64;
    for (id, position) in snapshot.positions.iter() {
        if area.is_some_and(|a| !inside(a, *position)) {
            continue;
        }
        total += 1;
        let c = cells.entry(cell(zoom, *position)).or_default();
        c.only = if c.count == 0 { Some(id.as_str()) } else { None };
        c.count += 1;
        c.lon_sum += position[0];
        c.lat_sum += position[1];
    }
    let features: Vec<Value> = cells
        .iter()
        .map(|((x, y), c)| {
            let coordinates = [c.lon_sum / c.count as f64, c.lat_sum / c.count as f64];
            let id = c.only.map_or_else(|| format!("cluster:{zoom}:{x}:{y}"), str::to_owned);
            json!({
                "type": "Feature",
                "id": id,
                "geometry": { "type": "Point", "coordinates": coordinates },
                "properties": { "count": c.count, "cluster": c.only.is_none() },
            })
        })
        .collect();
    json!({
        "type": "FeatureCollection",
        "version": snapshot.version,
        "generated_at": format_rfc3339(snapshot.generated_at_ms),
        "total": total,
        "zoom": zoom,
        "clustered": true,
        "features": features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeviceId, Location, Position};

    fn snapshot(points: &[(&str, f64, f64)]) -> MapSnapshot {
        let devices: Vec<(DeviceId, Position)> = points
            .iter()
            .map(|&(id, lon, lat)| {
                let payload = format!(
                    r#"{{"type":"Feature","geometry":{{"type":"Point","coordinates":[{lon},{lat}]}},"properties":{{"ts":0}}}}"#
                );
                let location = Location::parse(payload.as_bytes()).unwrap();
                (DeviceId::parse(id).unwrap(), Position { location, received_at_ms: 0 })
            })
            .collect();
        MapSnapshot::build(7, 0, devices.iter().map(|(d, p)| (d, p)))
    }

    #[test]
    fn nearby_devices_merge_and_distant_ones_stay_apart() {
        let snap = snapshot(&[
            ("berlin-a", 13.40, 52.52),
            ("berlin-b", 13.41, 52.51),
            ("paris", 2.35, 48.85),
        ]);
        let map = cluster(&snap, 4, None);
        assert_eq!(map["total"], 3);
        let features = map["features"].as_array().unwrap();
        assert_eq!(features.len(), 2, "{map}");
        let berlin = features.iter().find(|f| f["properties"]["count"] == 2).unwrap();
        assert_eq!(berlin["properties"]["cluster"], true);
        let lon = berlin["geometry"]["coordinates"][0].as_f64().unwrap();
        assert!((lon - 13.405).abs() < 1e-9);
        let paris = features.iter().find(|f| f["properties"]["count"] == 1).unwrap();
        assert_eq!(paris["id"], "paris");
        // Zoomed in far enough, every device is its own point.
        assert_eq!(cluster(&snap, 16, None)["features"].as_array().unwrap().len(), 3);
        // Zoomed out fully, the world is 4×4 cells: Berlin and Paris share one.
        assert_eq!(cluster(&snap, 0, None)["features"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_bbox_selects_before_clustering() {
        let snap = snapshot(&[("a", 13.4, 52.5), ("b", -70.0, -30.0), ("c", 179.5, 0.0)]);
        let europe = Bbox::parse("0,40,20,60").unwrap();
        assert_eq!(cluster(&snap, 3, Some(&europe))["total"], 1);
        let across = Bbox::parse("170,-10,-160,10").unwrap();
        assert_eq!(cluster(&snap, 3, Some(&across))["features"][0]["id"], "c");
    }

    #[test]
    fn cells_stay_on_the_grid_at_the_edges() {
        assert_eq!(cell(0, [-180.0, 90.0]), (0, 0));
        assert_eq!(cell(0, [180.0, -90.0]), (3, 3));
    }
}
