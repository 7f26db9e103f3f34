//! What publishers send: a realistic GeoJSON position, or opaque bytes of a
//! fixed size, each carrying a [`Stamp`] (publisher, sequence number, send
//! time) that subscribers read back cheaply.
//!
//! The GeoJSON payload has a fixed layout: every number is right-aligned in a
//! fixed-width field padded with spaces (valid JSON whitespace), so a publisher
//! renders it by copying a template and overwriting digits in place, and a
//! subscriber reads the stamp at known offsets without a JSON parser.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The process's clock origin: publishers and subscribers live in the same
/// process, so nanoseconds since this instant compare directly.
struct Epoch {
    instant: Instant,
    unix_ms: u64,
}

fn epoch() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    EPOCH.get_or_init(|| Epoch {
        instant: Instant::now(),
        unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    })
}

/// Monotonic nanoseconds since the process's clock origin.
pub fn now_ns() -> u64 {
    epoch().instant.elapsed().as_nanos() as u64
}

/// Wall-clock Unix milliseconds for a monotonic reading (for the `ts` field).
fn unix_ms_at(ns: u64) -> u64 {
    epoch().unix_ms + ns / 1_000_000
}

/// What a subscriber needs to count a delivery and time it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the publisher that sent it.
    pub publisher: u32,
    /// The publisher's sequence number, from 0.
    pub seq: u64,
    /// [`now_ns`] when it was encoded for sending.
    pub sent_ns: u64,
}

/// A moving vehicle: each message reports the next point of its track.
#[derive(Debug, Clone)]
pub struct Vehicle {
    lon: f64,
    lat: f64,
    heading: f64,
    speed: f64,
    rng: u64,
}

impl Vehicle {
    /// A vehicle somewhere around Berlin; the same `seed` gives the same track.
    pub fn new(seed: u64) -> Self {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut unit = || {
            rng = xorshift(rng);
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let lon = 13.1 + 0.6 * unit();
        let lat = 52.35 + 0.3 * unit();
        let heading = 360.0 * unit();
        let speed = 3.0 + 25.0 * unit();
        Vehicle { lon, lat, heading, speed, rng }
    }

    /// Advance one second along the track, turning a little.
    fn step(&mut self) {
        self.rng = xorshift(self.rng);
        let turn = ((self.rng >> 40) % 21) as f64 - 10.0;
        self.heading = (self.heading + turn).rem_euclid(360.0);
        let metres = self.speed;
        let rad = self.heading.to_radians();
        self.lat += metres * rad.cos() / 111_320.0;
        self.lon += metres * rad.sin() / (111_320.0 * self.lat.to_radians().cos());
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Where each fixed-width field sits in the GeoJSON template.
#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    width: usize,
}

/// The GeoJSON template and where its fields sit.
#[derive(Debug, Clone)]
pub struct GeoJsonLayout {
    template: Vec<u8>,
    lon: Field,
    lat: Field,
    ts: Field,
    speed: Field,
    heading: Field,
    seq: Field,
    publisher: Field,
    sent: Field,
}

impl GeoJsonLayout {
    fn new() -> Self {
        let mut template = Vec::new();
        let field = |template: &mut Vec<u8>, before: &str, width: usize| {
            template.extend_from_slice(before.as_bytes());
            let at = template.len();
            template.resize(at + width, b'0');
            Field { at, width }
        };
        let lon = field(
            &mut template,
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":["#,
            10,
        );
        let lat = field(&mut template, ",", 9);
        let ts = field(&mut template, r#"]},"properties":{"ts":"#, 13);
        let speed = field(&mut template, r#","speed":"#, 4);
        let heading = field(&mut template, r#","heading":"#, 3);
        let seq = field(&mut template, r#","seq":"#, 10);
        let publisher = field(&mut template, r#","dev":"#, 6);
        let sent = field(&mut template, r#","t":"#, 15);
        template.extend_from_slice(b"}}");
        GeoJsonLayout { template, lon, lat, ts, speed, heading, seq, publisher, sent }
    }
}

const BYTES_MAGIC: &[u8; 4] = b"MCB1";
/// Magic, send time, publisher, sequence number.
pub const MIN_BYTES_SIZE: usize = 4 + 8 + 4 + 8;

/// The payload every publisher of a run sends, and how its subscribers read it.
#[derive(Debug, Clone)]
pub enum Payload {
    GeoJson(Box<GeoJsonLayout>),
    /// Opaque bytes of this size: a binary stamp, then filler.
    Bytes(usize),
}

impl Payload {
    pub fn geojson() -> Self {
        Payload::GeoJson(Box::new(GeoJsonLayout::new()))
    }

    /// Fixed-size bytes; `None` when `size` cannot hold the stamp.
    pub fn bytes(size: usize) -> Option<Self> {
        (size >= MIN_BYTES_SIZE).then_some(Payload::Bytes(size))
    }

    pub fn size(&self) -> usize {
        match self {
            Payload::GeoJson(layout) => layout.template.len(),
            Payload::Bytes(size) => *size,
        }
    }

    /// Append the payload for `stamp` (exactly [`Self::len`] bytes) to `out`;
    /// a GeoJSON payload also moves `vehicle` one step.
    pub fn write(&self, out: &mut Vec<u8>, stamp: Stamp, vehicle: &mut Vehicle) {
        match self {
            Payload::GeoJson(layout) => {
                vehicle.step();
                let base = out.len();
                out.extend_from_slice(&layout.template);
                let buf = &mut out[base..];
                put_fixed(buf, layout.lon, vehicle.lon, 5);
                put_fixed(buf, layout.lat, vehicle.lat, 5);
                put_uint(buf, layout.ts, unix_ms_at(stamp.sent_ns));
                put_fixed(buf, layout.speed, vehicle.speed, 1);
                put_uint(buf, layout.heading, vehicle.heading as u64);
                put_uint(buf, layout.seq, stamp.seq);
                put_uint(buf, layout.publisher, u64::from(stamp.publisher));
                put_uint(buf, layout.sent, stamp.sent_ns);
            }
            Payload::Bytes(size) => {
                out.extend_from_slice(BYTES_MAGIC);
                out.extend_from_slice(&stamp.sent_ns.to_le_bytes());
                out.extend_from_slice(&stamp.publisher.to_le_bytes());
                out.extend_from_slice(&stamp.seq.to_le_bytes());
                out.resize(out.len() + size - MIN_BYTES_SIZE, b'x');
            }
        }
    }

    /// The stamp of a payload this run's publishers wrote; `None` for anything else.
    pub fn parse(&self, payload: &[u8]) -> Option<Stamp> {
        if payload.len() != self.size() {
            return None;
        }
        match self {
            Payload::GeoJson(layout) => Some(Stamp {
                publisher: u32::try_from(get_uint(payload, layout.publisher)?).ok()?,
                seq: get_uint(payload, layout.seq)?,
                sent_ns: get_uint(payload, layout.sent)?,
            }),
            Payload::Bytes(_) => {
                if &payload[..4] != BYTES_MAGIC {
                    return None;
                }
                let u64_at =
                    |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().unwrap());
                Some(Stamp {
                    sent_ns: u64_at(4),
                    publisher: u32::from_le_bytes(payload[12..16].try_into().unwrap()),
                    seq: u64_at(16),
                })
            }
        }
    }
}

/// Right-align `value` in the field, padding with spaces; a value too wide
/// for the field saturates to all nines rather than overwriting a neighbour.
fn put_uint(buf: &mut [u8], field: Field, value: u64) {
    let dst = &mut buf[field.at..field.at + field.width];
    let max = 10u64.checked_pow(field.width as u32).map_or(u64::MAX, |p| p - 1);
    let mut v = value.min(max);
    let mut i = field.width;
    while i > 0 {
        i -= 1;
        dst[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    dst[..i].fill(b' ');
}

/// Right-align `value` with `decimals` fractional digits (and a sign when
/// negative), padding with spaces. Digits that do not fit are cut on the left.
fn put_fixed(buf: &mut [u8], field: Field, value: f64, decimals: u32) {
    let scaled = (value.abs() * 10f64.powi(decimals as i32)).round() as u64;
    let dst = &mut buf[field.at..field.at + field.width];
    let mut push = |i: &mut usize, byte: u8| {
        if *i > 0 {
            *i -= 1;
            dst[*i] = byte;
        }
    };
    let (mut i, mut v, mut digits) = (field.width, scaled, 0);
    loop {
        if digits == decimals && decimals > 0 {
            push(&mut i, b'.');
        }
        push(&mut i, b'0' + (v % 10) as u8);
        v /= 10;
        digits += 1;
        if (digits > decimals && v == 0) || i == 0 {
            break;
        }
    }
    if value < 0.0 {
        push(&mut i, b'-');
    }
    dst[..i].fill(b' ');
}

/// Read a right-aligned, space-padded unsigned integer field.
fn get_uint(payload: &[u8], field: Field) -> Option<u64> {
    let digits = payload[field.at..field.at + field.width].trim_ascii_start();
    if digits.is_empty() {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(publisher: u32, seq: u64, sent_ns: u64) -> Stamp {
        Stamp { publisher, seq, sent_ns }
    }

    #[test]
    fn a_geojson_payload_is_a_valid_point_feature_of_about_180_bytes() {
        let payload = Payload::geojson();
        let mut out = Vec::new();
        payload.write(&mut out, stamp(42, 7, 123_456_789), &mut Vehicle::new(42));
        assert_eq!(out.len(), payload.size());
        assert!((170..=200).contains(&out.len()), "{} bytes", out.len());
        let json: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(json["type"], "Feature");
        assert_eq!(json["geometry"]["type"], "Point");
        let lon = json["geometry"]["coordinates"][0].as_f64().unwrap();
        let lat = json["geometry"]["coordinates"][1].as_f64().unwrap();
        assert!((12.5..14.5).contains(&lon) && (52.0..53.0).contains(&lat), "{lon},{lat}");
        let props = &json["properties"];
        assert!(props["ts"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(props["speed"].as_f64().unwrap() > 0.0);
        assert!(props["heading"].as_u64().unwrap() < 360);
        assert_eq!(props["seq"], 7);
        assert_eq!(props["dev"], 42);
        assert_eq!(props["t"], 123_456_789);
    }

    #[test]
    fn the_stamp_reads_back_from_both_payload_kinds() {
        for payload in [Payload::geojson(), Payload::bytes(64).unwrap()] {
            for s in [stamp(0, 0, 0), stamp(99_999, 1_234_567_890, 987_654_321_012_345)] {
                let mut out = Vec::new();
                payload.write(&mut out, s, &mut Vehicle::new(1));
                assert_eq!(payload.parse(&out), Some(s), "{payload:?}");
            }
        }
    }

    #[test]
    fn the_vehicle_moves_between_messages_and_stays_valid_json() {
        let payload = Payload::geojson();
        let mut vehicle = Vehicle::new(3);
        let mut coords = Vec::new();
        for seq in 0..500 {
            let mut out = Vec::new();
            payload.write(&mut out, stamp(3, seq, seq * 1000), &mut vehicle);
            let json: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            coords.push(json["geometry"]["coordinates"].clone());
        }
        assert_ne!(coords[0], coords[499]);
    }

    #[test]
    fn foreign_payloads_do_not_parse() {
        let geo = Payload::geojson();
        assert_eq!(geo.parse(b"{\"type\":\"Feature\"}"), None);
        assert_eq!(geo.parse(&vec![b' '; geo.size()]), None);
        let bytes = Payload::bytes(32).unwrap();
        assert_eq!(bytes.parse(&[0u8; 32]), None);
        assert_eq!(bytes.parse(&[0u8; 31]), None);
    }

    #[test]
    fn a_bytes_payload_has_exactly_the_requested_size() {
        assert!(Payload::bytes(MIN_BYTES_SIZE - 1).is_none());
        let payload = Payload::bytes(1000).unwrap();
        let mut out = vec![1, 2, 3];
        payload.write(&mut out, stamp(1, 2, 3), &mut Vehicle::new(0));
        assert_eq!(out.len(), 3 + 1000);
    }

    #[test]
    fn fixed_width_numbers_pad_saturate_and_sign() {
        let mut buf = [0u8; 6];
        let f = Field { at: 0, width: 6 };
        put_uint(&mut buf, f, 0);
        assert_eq!(&buf, b"     0");
        put_uint(&mut buf, f, 1234);
        assert_eq!(&buf, b"  1234");
        put_uint(&mut buf, f, 12_345_678);
        assert_eq!(&buf, b"999999");
        put_fixed(&mut buf, f, -1.25, 2);
        assert_eq!(&buf, b" -1.25");
        put_fixed(&mut buf, f, 0.05, 2);
        assert_eq!(&buf, b"  0.05");
        put_fixed(&mut buf, f, 3.0, 1);
        assert_eq!(&buf, b"   3.0");
    }
}
