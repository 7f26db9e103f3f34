//! The map snapshot: a GeoJSON FeatureCollection of the latest position of
//! every active device, serialised once per build and served as bytes, with
//! an R-tree over the features for `?bbox=` and a compact id → position list
//! for `?since=`.
//!
//! Building is pure and CPU-bound (the updater runs it on a blocking thread):
//! features are written straight into one buffer, in device-id order, and
//! each remembers its byte range so a bbox query is a concatenation of slices.

use std::ops::Range;
use std::sync::Arc;

use ntex::util::{Bytes, BytesMut};
use rstar::primitives::GeomWithData;
use rstar::{AABB, RTree};
use serde::Serialize;

use super::time::rfc3339_bytes;
use super::{DeviceId, Location};

/// A device's latest position and when the broker received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub location: Location,
    pub received_at_ms: i64,
}

impl Position {
    /// Whether `self` should replace `older` as the latest position: a later
    /// fix (`ts`) wins; for the same fix, the later arrival.
    pub fn supersedes(&self, older: &Position) -> bool {
        self.order_key() >= older.order_key()
    }

    /// A fix counts as taken no later than it arrived: a device whose clock
    /// runs ahead cannot hold its place on the map against its own later
    /// (correctly stamped) fixes. The store's upsert orders rows the same way.
    fn order_key(&self) -> (i64, i64) {
        (self.location.ts_ms.min(self.received_at_ms), self.received_at_ms)
    }
}

/// `minLon,minLat,maxLon,maxLat` in degrees (RFC 7946 §5). `min_lon >
/// max_lon` is a box crossing the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bbox {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BboxError {
    #[error("bbox must be four comma-separated numbers: minLon,minLat,maxLon,maxLat")]
    Format,
    #[error("bbox longitudes must be within [-180, 180] and latitudes within [-90, 90]")]
    Range,
    #[error("bbox minLat must not be greater than maxLat")]
    Inverted,
}

impl Bbox {
    pub fn parse(s: &str) -> Result<Self, BboxError> {
        let mut parts = s.split(',').map(|p| p.trim().parse::<f64>());
        let mut next = || match parts.next() {
            Some(Ok(v)) if v.is_finite() => Ok(v),
            _ => Err(BboxError::Format),
        };
        let (min_lon, min_lat, max_lon, max_lat) = (next()?, next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(BboxError::Format);
        }
        let lon_ok = |v: f64| (-180.0..=180.0).contains(&v);
        let lat_ok = |v: f64| (-90.0..=90.0).contains(&v);
        if !(lon_ok(min_lon) && lon_ok(max_lon) && lat_ok(min_lat) && lat_ok(max_lat)) {
            return Err(BboxError::Range);
        }
        if min_lat > max_lat {
            return Err(BboxError::Inverted);
        }
        Ok(Self { min_lon, min_lat, max_lon, max_lat })
    }

    /// The one or two (across the antimeridian) boxes to look up.
    fn envelopes(&self) -> impl Iterator<Item = AABB<[f64; 2]>> {
        let (w, s, e, n) = (self.min_lon, self.min_lat, self.max_lon, self.max_lat);
        let (first, second) = if w <= e { ([w, s], [e, n]) } else { ([w, s], [180.0, n]) };
        let wrap = (w > e).then(|| AABB::from_corners([-180.0, s], [e, n]));
        std::iter::once(AABB::from_corners(first, second)).chain(wrap)
    }

    fn extend(bbox: &mut Option<Bbox>, [lon, lat]: [f64; 2]) {
        match bbox {
            None => *bbox = Some(Bbox { min_lon: lon, min_lat: lat, max_lon: lon, max_lat: lat }),
            Some(b) => {
                b.min_lon = b.min_lon.min(lon);
                b.min_lat = b.min_lat.min(lat);
                b.max_lon = b.max_lon.max(lon);
                b.max_lat = b.max_lat.max(lat);
            }
        }
    }
}

/// Device ids and positions of one snapshot, sorted by id (for diffs).
pub type MapPositions = Arc<[(DeviceId, [f64; 2])]>;

/// One published map.
pub struct MapSnapshot {
    pub version: u64,
    pub generated_at_ms: i64,
    /// Bounding box of every feature; `None` when there are none.
    pub bbox: Option<Bbox>,
    /// The whole FeatureCollection (`application/geo+json`).
    pub json: Bytes,
    /// `(device, position)` per feature, sorted by device id.
    pub positions: MapPositions,
    /// Byte range in `json` of each feature, parallel to `positions`.
    ranges: Vec<Range<u32>>,
    index: RTree<GeomWithData<[f64; 2], u32>>,
}

impl std::fmt::Debug for MapSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapSnapshot")
            .field("version", &self.version)
            .field("total", &self.total())
            .field("bytes", &self.json.len())
            .finish_non_exhaustive()
    }
}

impl MapSnapshot {
    /// The Feature of device `id` as the snapshot serialised it.
    pub fn feature_json(&self, id: &str) -> Option<&[u8]> {
        let i = self.positions.binary_search_by(|(d, _)| d.as_str().cmp(id)).ok()?;
        let r = self.ranges.get(i)?;
        self.json.get(r.start as usize..r.end as usize)
    }

    /// The snapshot of `devices` (already filtered to the active ones).
    pub fn build<'a>(
        version: u64,
        generated_at_ms: i64,
        devices: impl IntoIterator<Item = (&'a DeviceId, &'a Position)>,
    ) -> Self {
        let mut devices: Vec<(&DeviceId, &Position)> = devices.into_iter().collect();
        devices.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut bbox = None;
        for (_, p) in &devices {
            Bbox::extend(&mut bbox, [p.location.lon, p.location.lat]);
        }

        // The R-tree is built on a second thread while the JSON is written.
        let points: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, (_, p))| GeomWithData::new([p.location.lon, p.location.lat], i as u32))
            .collect();
        let (out, ranges, index) = std::thread::scope(|scope| {
            let index = scope.spawn(move || RTree::bulk_load(points));
            // Written straight into the buffer that is published (no copy).
            let mut out = BytesMut::with_capacity(256 + devices.len() * 300);
            write_header(&mut out, version, generated_at_ms, devices.len(), bbox);
            let mut ranges = Vec::with_capacity(devices.len());
            // Each feature is written to a small Vec (cheap pushes), then
            // copied once into the buffer.
            let mut feature = Vec::with_capacity(512);
            for (i, (id, p)) in devices.iter().enumerate() {
                feature.clear();
                if i > 0 {
                    feature.push(b',');
                }
                write_feature(&mut feature, id, p);
                let start = Sink::len(&out) + usize::from(i > 0);
                out.extend_from_slice(&feature);
                ranges.push(start as u32..Sink::len(&out) as u32);
            }
            Sink::extend_from_slice(&mut out, b"]}");
            (out, ranges, index.join().expect("R-tree build panicked"))
        });
        let positions: Vec<(DeviceId, [f64; 2])> = devices
            .iter()
            .map(|(id, p)| ((*id).clone(), [p.location.lon, p.location.lat]))
            .collect();
        Self {
            version,
            generated_at_ms,
            bbox,
            json: out.freeze(),
            positions: positions.into(),
            ranges,
            index,
        }
    }

    /// A snapshot from the document another instance built, so every
    /// instance serves the same bytes (and so the same ETag). Only the ids
    /// and coordinates are read back; the features are served as written.
    pub fn parse(json: Bytes) -> Result<Self, MapParseError> {
        #[derive(serde::Deserialize)]
        struct Doc<'a> {
            version: u64,
            generated_at: &'a str,
            #[serde(default)]
            bbox: Option<[f64; 4]>,
            #[serde(borrow)]
            features: Vec<&'a serde_json::value::RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct Feature {
            id: String,
            geometry: Geometry,
        }
        #[derive(serde::Deserialize)]
        struct Geometry {
            coordinates: Vec<f64>,
        }

        let doc: Doc = serde_json::from_slice(&json).map_err(MapParseError::Json)?;
        let generated_at_ms =
            super::time::parse_rfc3339(doc.generated_at).ok_or(MapParseError::Invalid)?;
        let base = json.as_ptr() as usize;
        let mut positions = Vec::with_capacity(doc.features.len());
        let mut ranges = Vec::with_capacity(doc.features.len());
        let mut points = Vec::with_capacity(doc.features.len());
        for (i, raw) in doc.features.iter().enumerate() {
            let f: Feature = serde_json::from_str(raw.get()).map_err(MapParseError::Json)?;
            let id = DeviceId::parse(f.id).map_err(|_| MapParseError::Invalid)?;
            let [lon, lat, ..] = f.geometry.coordinates[..] else {
                return Err(MapParseError::Invalid);
            };
            // The raw value borrows from `json`: its offset is its byte range.
            let start = raw.get().as_ptr() as usize - base;
            ranges.push(start as u32..(start + raw.get().len()) as u32);
            points.push(GeomWithData::new([lon, lat], i as u32));
            positions.push((id, [lon, lat]));
        }
        let bbox = doc.bbox.map(|[min_lon, min_lat, max_lon, max_lat]| Bbox {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        });
        Ok(Self {
            version: doc.version,
            generated_at_ms,
            bbox,
            positions: positions.into(),
            ranges,
            index: RTree::bulk_load(points),
            json,
        })
    }

    /// Active devices in this snapshot.
    pub fn total(&self) -> usize {
        self.positions.len()
    }

    /// A FeatureCollection of the features inside `area`, in device-id order;
    /// `total` and `bbox` describe what it contains.
    pub fn select(&self, area: &Bbox) -> Vec<u8> {
        let mut hits: Vec<usize> = area
            .envelopes()
            .flat_map(|env| self.index.locate_in_envelope(env).map(|p| p.data as usize))
            .collect();
        hits.sort_unstable();
        hits.dedup();
        let mut bbox = None;
        for &i in &hits {
            Bbox::extend(&mut bbox, self.positions[i].1);
        }
        let bytes: usize = hits.iter().map(|&i| self.ranges[i].len() + 1).sum();
        let mut out = Vec::with_capacity(256 + bytes);
        write_header(&mut out, self.version, self.generated_at_ms, hits.len(), bbox);
        for (n, &i) in hits.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            let r = &self.ranges[i];
            out.extend_from_slice(&self.json[r.start as usize..r.end as usize]);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// Why a stored map document could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum MapParseError {
    #[error("map document is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("map document is not a map snapshot")]
    Invalid,
}

/// What changed between two snapshots, by device id.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MapDiff {
    /// The newer snapshot's version.
    pub version: u64,
    /// The version the client had.
    pub since: u64,
    /// Devices in the newer snapshot only.
    pub added: Vec<String>,
    /// Devices in both whose position changed.
    pub moved: Vec<String>,
    /// Devices in the older snapshot only (gone quiet past the TTL).
    pub removed: Vec<String>,
    /// The Features of the `added` and `moved` devices, exactly as in the
    /// newer snapshot (coordinates and properties), in id order: a client
    /// applies the diff without fetching the whole map.
    #[schema(value_type = Vec<Object>)]
    pub features: Vec<Box<serde_json::value::RawValue>>,
}

impl PartialEq for MapDiff {
    fn eq(&self, other: &Self) -> bool {
        let text = |d: &Self| d.features.iter().map(|f| f.get().to_owned()).collect::<Vec<_>>();
        (self.version, self.since, &self.added, &self.moved, &self.removed)
            == (other.version, other.since, &other.added, &other.moved, &other.removed)
            && text(self) == text(other)
    }
}

impl MapDiff {
    /// Both lists sorted by device id (as [`MapSnapshot::positions`] is).
    pub fn between(
        since: u64,
        old: &[(DeviceId, [f64; 2])],
        version: u64,
        new: &[(DeviceId, [f64; 2])],
    ) -> Self {
        let mut diff = Self {
            version,
            since,
            added: Vec::new(),
            moved: Vec::new(),
            removed: Vec::new(),
            features: Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if o.0 == n.0 => {
                    if o.1 != n.1 {
                        diff.moved.push(n.0.to_string());
                    }
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o.0 < n.0 => {
                    diff.removed.push(o.0.to_string());
                    i += 1;
                }
                (Some(o), None) => {
                    diff.removed.push(o.0.to_string());
                    i += 1;
                }
                (_, Some(n)) => {
                    diff.added.push(n.0.to_string());
                    j += 1;
                }
                (None, None) => unreachable!("loop condition"),
            }
        }
        diff
    }
}

/// Where features are written: the published buffer, or a bbox selection.
/// (Method names as on `Vec`; in the writers below these are the trait's.)
trait Sink {
    fn extend_from_slice(&mut self, bytes: &[u8]);
    fn push(&mut self, byte: u8);
    fn len(&self) -> usize;
}

impl Sink for Vec<u8> {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl Sink for BytesMut {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        BytesMut::extend_from_slice(self, bytes);
    }
    fn push(&mut self, byte: u8) {
        BytesMut::extend_from_slice(self, &[byte]);
    }
    fn len(&self) -> usize {
        BytesMut::len(self)
    }
}

fn write_header(
    out: &mut impl Sink,
    version: u64,
    generated_at_ms: i64,
    total: usize,
    bbox: Option<Bbox>,
) {
    out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"version\":");
    out.extend_from_slice(version.to_string().as_bytes());
    out.extend_from_slice(b",\"generated_at\":\"");
    out.extend_from_slice(&rfc3339_bytes(generated_at_ms));
    out.extend_from_slice(b"\",\"total\":");
    out.extend_from_slice(total.to_string().as_bytes());
    if let Some(b) = bbox {
        out.extend_from_slice(b",\"bbox\":[");
        for (k, v) in [b.min_lon, b.min_lat, b.max_lon, b.max_lat].into_iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            write_f64(out, v);
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"features\":[");
}

fn write_feature(out: &mut impl Sink, id: &DeviceId, p: &Position) {
    let l = &p.location;
    out.extend_from_slice(b"{\"type\":\"Feature\",\"id\":");
    // Ids are printable (no control characters) but may hold quotes or
    // backslashes: escape those properly, copy the rest.
    if id.as_str().bytes().any(|b| b == b'"' || b == b'\\') {
        let quoted = serde_json::to_string(id.as_str()).expect("strings always serialize");
        out.extend_from_slice(quoted.as_bytes());
    } else {
        out.push(b'"');
        out.extend_from_slice(id.as_str().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"geometry\":{\"type\":\"Point\",\"coordinates\":[");
    write_f64(out, l.lon);
    out.push(b',');
    write_f64(out, l.lat);
    if let Some(alt) = l.alt {
        out.push(b',');
        write_f64(out, alt);
    }
    out.extend_from_slice(b"]},\"properties\":{\"ts\":\"");
    out.extend_from_slice(&rfc3339_bytes(l.ts_ms));
    out.extend_from_slice(b"\",\"received_at\":\"");
    out.extend_from_slice(&rfc3339_bytes(p.received_at_ms));
    out.push(b'"');
    for (key, value) in [
        ("speed", l.speed),
        ("heading", l.heading),
        ("accuracy", l.accuracy),
        ("battery", l.battery),
    ] {
        if let Some(v) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            write_f64(out, v);
        }
    }
    if let Some(kind) = l.kind {
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(kind.as_str().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
}

fn write_f64(out: &mut impl Sink, v: f64) {
    // Validated finite on the way in; shortest round-trip form, as serde_json writes.
    if let Some((digits, len)) = short_decimal(v) {
        out.extend_from_slice(&digits[..len]);
    } else if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Decimal places a GPS fix ever needs (1e-7° ≈ 1 cm).
const SHORT_PLACES: u32 = 7;

/// The text of `v` when it is exactly a decimal with at most seven places
/// and at most fifteen significant digits, as nearly every coordinate and
/// reading is; `None` sends it to ryu. The text is the shortest that parses
/// back to `v` (two decimals of ≤ 15 significant digits never share a
/// double), so it is the one ryu would print, at a third of the cost — the
/// snapshot formats six numbers per device.
fn short_decimal(v: f64) -> Option<([u8; 24], usize)> {
    let scale = 10f64.powi(SHORT_PLACES as i32);
    let scaled = (v * scale).round();
    // |scaled| < 1e15 keeps it exact in an i64 and within 15 significant digits;
    // below 1e-5 ryu switches to exponent notation, so leave those to it.
    if scaled.is_nan()
        || scaled.abs() >= 1e15
        || scaled / scale != v
        || (v != 0.0 && v.abs() < 1e-5)
    {
        return None;
    }
    let n = scaled as i64;
    let (int, mut frac) =
        (n.unsigned_abs() / 10u64.pow(SHORT_PLACES), n.unsigned_abs() % 10u64.pow(SHORT_PLACES));
    let mut buf = [0u8; 24];
    let mut len = 0;
    if v.is_sign_negative() {
        buf[0] = b'-';
        len = 1;
    }
    len += write_u64(&mut buf[len..], int);
    buf[len] = b'.';
    len += 1;
    // Trailing zeros go, but one digit stays: `80.0`, as ryu writes it.
    let mut places = SHORT_PLACES;
    while places > 1 && frac % 10 == 0 {
        frac /= 10;
        places -= 1;
    }
    for i in (0..places as usize).rev() {
        buf[len + i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    Some((buf, len + places as usize))
}

fn write_u64(buf: &mut [u8], mut v: u64) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    buf[..len].copy_from_slice(&tmp[i..]);
    len
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::DeviceKind;

    fn pos(lon: f64, lat: f64, ts_ms: i64) -> Position {
        Position {
            location: Location {
                lon,
                lat,
                alt: None,
                ts_ms,
                speed: Some(3.5),
                heading: None,
                accuracy: None,
                battery: Some(80.0),
                kind: Some(DeviceKind::Car),
            },
            received_at_ms: ts_ms + 10,
        }
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s.to_owned()).unwrap()
    }

    fn table(entries: &[(&str, f64, f64)]) -> HashMap<DeviceId, Position> {
        entries.iter().map(|(d, lon, lat)| (id(d), pos(*lon, *lat, 1_000))).collect()
    }

    #[test]
    fn a_snapshot_is_a_feature_collection_with_version_total_and_bbox() {
        let t = table(&[("b", 13.4, 52.5), ("a", -0.1, 51.5), ("q\"x", 2.35, 48.85)]);
        let snap = MapSnapshot::build(7, 0, &t);
        let doc: serde_json::Value = serde_json::from_slice(&snap.json).unwrap();
        assert_eq!(doc["type"], "FeatureCollection");
        assert_eq!(doc["version"], 7);
        assert_eq!(doc["total"], 3);
        assert_eq!(doc["generated_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(doc["bbox"], serde_json::json!([-0.1, 48.85, 13.4, 52.5]));
        let ids: Vec<_> = doc["features"].as_array().unwrap().iter().map(|f| &f["id"]).collect();
        assert_eq!(ids, ["a", "b", "q\"x"]);
        let f = &doc["features"][1];
        assert_eq!(f["geometry"]["coordinates"], serde_json::json!([13.4, 52.5]));
        assert_eq!(f["properties"]["kind"], "car");
        assert_eq!(f["properties"]["speed"], 3.5);
        assert_eq!(f["properties"]["ts"], "1970-01-01T00:00:01.000Z");
        // It is GeoJSON the geojson crate reads back.
        let fc: geojson::FeatureCollection =
            std::str::from_utf8(&snap.json).unwrap().parse().unwrap();
        assert_eq!(fc.features.len(), 3);
    }

    #[test]
    fn a_parsed_document_answers_like_the_snapshot_that_wrote_it() {
        let t = table(&[("berlin", 13.4, 52.5), ("london", -0.1, 51.5), ("q\"x", 2.35, 48.85)]);
        let built = MapSnapshot::build(9, 1_700_000_000_123, &t);
        let read = MapSnapshot::parse(built.json.clone()).unwrap();
        assert_eq!(read.version, 9);
        assert_eq!(read.generated_at_ms, 1_700_000_000_123);
        assert_eq!(read.bbox, built.bbox);
        assert_eq!(read.positions, built.positions);
        let europe = Bbox::parse("-10,35,30,60").unwrap();
        assert_eq!(read.select(&europe), built.select(&europe));
        assert!(MapSnapshot::parse(Bytes::from_static(b"{\"features\":[]}")).is_err());
    }

    #[test]
    fn an_empty_snapshot_has_no_bbox_and_no_features() {
        let snap = MapSnapshot::build(1, 0, &HashMap::new());
        let doc: serde_json::Value = serde_json::from_slice(&snap.json).unwrap();
        assert_eq!(doc["total"], 0);
        assert!(doc.get("bbox").is_none());
        assert_eq!(doc["features"], serde_json::json!([]));
    }

    #[test]
    fn bbox_selection_returns_only_the_features_inside() {
        let t = table(&[("berlin", 13.4, 52.5), ("london", -0.1, 51.5), ("sf", -122.4, 37.8)]);
        let snap = MapSnapshot::build(3, 0, &t);
        let europe = Bbox::parse("-10,35,30,60").unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&snap.select(&europe)).unwrap();
        let ids: Vec<_> = doc["features"].as_array().unwrap().iter().map(|f| &f["id"]).collect();
        assert_eq!(ids, ["berlin", "london"]);
        assert_eq!(doc["total"], 2);
        assert_eq!(doc["version"], 3);
        let nowhere = Bbox::parse("50,-10,60,-5").unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&snap.select(&nowhere)).unwrap();
        assert_eq!(doc["total"], 0);
    }

    #[test]
    fn a_bbox_across_the_antimeridian_wraps() {
        let t = table(&[("fiji", 178.4, -18.1), ("samoa", -171.8, -13.8), ("paris", 2.35, 48.85)]);
        let snap = MapSnapshot::build(1, 0, &t);
        let pacific = Bbox::parse("170,-30,-160,0").unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&snap.select(&pacific)).unwrap();
        let ids: Vec<_> = doc["features"].as_array().unwrap().iter().map(|f| &f["id"]).collect();
        assert_eq!(ids, ["fiji", "samoa"]);
    }

    #[test]
    fn malformed_bboxes_are_rejected_with_a_reason() {
        assert_eq!(Bbox::parse("1,2,3"), Err(BboxError::Format));
        assert_eq!(Bbox::parse("1,2,3,4,5"), Err(BboxError::Format));
        assert_eq!(Bbox::parse("a,2,3,4"), Err(BboxError::Format));
        assert_eq!(Bbox::parse("1,2,NaN,4"), Err(BboxError::Format));
        assert_eq!(Bbox::parse(""), Err(BboxError::Format));
        assert_eq!(Bbox::parse("-181,0,0,1"), Err(BboxError::Range));
        assert_eq!(Bbox::parse("0,-91,0,1"), Err(BboxError::Range));
        assert_eq!(Bbox::parse("0,10,1,5"), Err(BboxError::Inverted));
        assert!(Bbox::parse(" -10, 35 ,30,60").is_ok());
    }

    #[test]
    fn diffs_name_added_moved_and_removed_devices() {
        let old =
            MapSnapshot::build(1, 0, &table(&[("a", 1.0, 1.0), ("b", 2.0, 2.0), ("c", 3.0, 3.0)]));
        let new =
            MapSnapshot::build(2, 0, &table(&[("b", 2.0, 2.0), ("c", 3.5, 3.0), ("d", 4.0, 4.0)]));
        let diff = MapDiff::between(1, &old.positions, 2, &new.positions);
        assert_eq!(diff.added, ["d"]);
        assert_eq!(diff.moved, ["c"]);
        assert_eq!(diff.removed, ["a"]);
        let c: serde_json::Value = serde_json::from_slice(new.feature_json("c").unwrap()).unwrap();
        assert_eq!(c["geometry"]["coordinates"], serde_json::json!([3.5, 3.0]));
        assert!(new.feature_json("a").is_none());
        let same = MapDiff::between(2, &new.positions, 2, &new.positions);
        assert!(same.added.is_empty() && same.moved.is_empty() && same.removed.is_empty());
    }

    #[test]
    fn numbers_print_as_ryu_prints_them() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            80.0,
            13.5,
            0.1,
            0.2,
            0.3,
            1e-5,
            1.5e-5,
            9.9e-6,
            1e-7,
            180.0,
            -180.0,
            -179.999_999_9,
            52.520_008,
            13.404_954,
            99_999_999.999_999_9,
            1e8,
            1e15,
            1e16,
            123_456_789.123_456_7,
            0.000_123_4,
            f64::MIN_POSITIVE,
        ];
        for _ in 0..200_000 {
            let r = next();
            // Coordinates with 0–7 decimals, and arbitrary doubles.
            let places = (r % 8) as i32;
            let whole = ((r >> 8) % 3_600_000_000) as f64 / 10f64.powi(7) - 180.0;
            let x = (whole * 10f64.powi(places)).round() / 10f64.powi(places);
            values.push(x);
            values.push(f64::from_bits(next()));
        }
        for v in values.into_iter().filter(|v| v.is_finite()) {
            let mut ours = Vec::new();
            write_f64(&mut ours, v);
            let ryu = ryu::Buffer::new().format_finite(v).to_owned();
            assert_eq!(String::from_utf8(ours).unwrap(), ryu, "{v:e}");
        }
    }

    #[test]
    fn later_fixes_supersede_earlier_ones() {
        let early = pos(0.0, 0.0, 1_000);
        let late = pos(1.0, 1.0, 2_000);
        assert!(late.supersedes(&early));
        assert!(!early.supersedes(&late));
    }

    #[test]
    fn a_fix_stamped_ahead_of_its_arrival_counts_as_taken_on_arrival() {
        let mut ahead = pos(0.0, 0.0, 1_000_000);
        ahead.received_at_ms = 1_000;
        let next = pos(1.0, 1.0, 2_000);
        assert!(next.supersedes(&ahead), "the clock that ran ahead pinned the position");
        assert!(!ahead.supersedes(&next));
    }
}
