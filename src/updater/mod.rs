//! The map updater: every `map.interval_secs` it builds the snapshot of the
//! devices seen within `map.ttl_secs`, records it in `map_snapshots`, serves
//! it to the REST API ([`MapView`]) and publishes it retained to
//! `map/snapshot` (GeoJSON), `map/snapshot.gz` (gzip) and `map/version`.
//!
//! The latest positions live in memory here: loaded from `locations_latest`
//! at start, then fed by the location hook ([`PositionFeed`]); a tick never
//! queries the database for them. The build runs on a blocking thread, never
//! on the router. A build that overruns its interval is logged and the next
//! tick is skipped rather than piled up.
//!
//! When several instances share a PostgreSQL database, the one holding the
//! `map` lease builds (merging the positions the others stored) and keeps
//! the snapshot's document with its record; the others serve that document,
//! so every instance answers with the same version and ETag. A lease its
//! holder stops renewing passes to another instance within [`LEASE_TTL`].

mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use flate2::Compression;
use flate2::write::GzEncoder;
use ntex::util::{ByteString, Bytes};
use tokio_util::sync::CancellationToken;

pub use view::{DIFF_WINDOW, DiffError, MapView, PublishedMap};

use crate::broker::BrokerHandle;
use crate::config::MapSettings;
use crate::domain::time::{format_rfc3339, millis};
use crate::domain::{DeviceId, MapIds, MapSnapshot, Position, TopicLimits, TopicName, Visibility};
use crate::domain::{Message, MessageProps, QoS};
use crate::locations::PositionFeed;
use crate::store::{SnapshotRecord, Store};
use crate::telemetry::names;

pub const SNAPSHOT_TOPIC: &str = "map/snapshot";
pub const SNAPSHOT_GZ_TOPIC: &str = "map/snapshot.gz";
pub const VERSION_TOPIC: &str = "map/version";
pub const GEOJSON: &str = "application/geo+json";
pub const GZIP: &str = "application/gzip";

/// The lease whose holder builds the map among instances sharing a database.
const MAP_LEASE: &str = "map";
/// How long a lease outlives its holder's last renewal: the longest the map
/// goes unbuilt after its builder dies.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often an instance sharing the database renews its lease, or looks
/// for a newer document if it does not hold it.
const LEASE_POLL: Duration = Duration::from_secs(1);
/// Positions stored by other instances are re-read this far behind the
/// last read, so one committed late is still seen.
const MERGE_OVERLAP: Duration = Duration::from_secs(30);

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    Published {
        version: u64,
        total: usize,
        raw_bytes: usize,
        gzip_bytes: usize,
        build_ms: u64,
    },
    /// Nothing moved, arrived or expired since `version`: no new snapshot,
    /// so subscribers are not woken for nothing.
    Unchanged {
        version: u64,
    },
    /// Built but not published: its record could not be stored. The version
    /// is used up either way (versions never repeat).
    Failed {
        version: u64,
        reason: String,
    },
}

pub struct MapUpdater {
    broker: BrokerHandle,
    store: Store,
    feed: Arc<PositionFeed>,
    view: MapView,
    interval: Duration,
    ttl: Duration,
    /// Latest position per device seen within the TTL, owned by the updater;
    /// ordered, so the snapshot (written in id order) needs no sort.
    table: BTreeMap<DeviceId, Position>,
    /// The last version built (stored or not).
    version: u64,
    /// Whether this run has published a snapshot yet (the first build always
    /// publishes, so the retained topics hold this run's map).
    published: bool,
    /// Whether the last build failed: the next tick builds again even if
    /// nothing changed since, or the stale map would stay.
    failed: bool,
    /// Whether a device is on the shared map unless its owner said otherwise.
    default_visibility: Visibility,
    /// The devices whose owners said otherwise, re-read from the database
    /// every tick (changes through any instance or the CLI count).
    exceptions: Arc<HashSet<DeviceId>>,
    /// When set, the map names devices by their public map id.
    map_ids: Option<MapIds>,
    /// The map ids of the devices in `table`, computed once each.
    map_id_cache: HashMap<DeviceId, DeviceId>,
    /// Set when instances share the database: this instance's lease holder
    /// name, and what it knows of the other instances' positions.
    shared: Option<Shared>,
}

/// An instance's part in building the map with others.
struct Shared {
    holder: String,
    /// Whether this instance holds the lease (builds) right now.
    leading: bool,
    /// When positions stored by other instances were last read.
    merged_at: SystemTime,
}

impl MapUpdater {
    /// Load the last version and the positions still within the TTL.
    pub async fn load(
        settings: &MapSettings,
        default_visibility: Visibility,
        map_ids: Option<MapIds>,
        broker: BrokerHandle,
        store: Store,
        feed: Arc<PositionFeed>,
        view: MapView,
    ) -> anyhow::Result<Self> {
        let ttl = Duration::from_secs(settings.ttl_secs);
        let version = store.last_map_version().await.context("reading the last map version")?;
        let since = millis(SystemTime::now() - ttl);
        let table: BTreeMap<DeviceId, Position> = store
            .load_latest_positions(since)
            .await
            .context("loading the latest positions")?
            .into_iter()
            .collect();
        tracing::info!(
            { names::MAP_VERSION } = version,
            { names::MAP_TOTAL } = table.len(),
            "map updater loaded"
        );
        Ok(Self {
            broker,
            store,
            feed,
            view,
            interval: Duration::from_secs(settings.interval_secs),
            ttl,
            table,
            version,
            published: false,
            failed: false,
            default_visibility,
            exceptions: Arc::default(),
            map_ids,
            map_id_cache: HashMap::new(),
            shared: None,
        })
    }

    /// Build only while holding the map lease as `holder`, and otherwise
    /// serve the document the holder stored: for instances sharing a
    /// database.
    pub fn shared_as(mut self, holder: String) -> Self {
        self.shared = Some(Shared { holder, leading: false, merged_at: SystemTime::UNIX_EPOCH });
        self
    }

    /// Re-read which devices differ from the default visibility; whether
    /// that changed since the last tick. On a database error the last
    /// answer stands.
    async fn refresh_visibility(&mut self) -> bool {
        let other = self.default_visibility.flipped();
        match self.store.device_ids_with_visibility(other.as_str()).await {
            Ok(ids) => {
                let ids: HashSet<DeviceId> =
                    ids.into_iter().filter_map(|id| DeviceId::parse(id).ok()).collect();
                let changed = ids != *self.exceptions;
                if changed {
                    self.exceptions = Arc::new(ids);
                }
                changed
            }
            Err(e) => {
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "device visibility not re-read");
                false
            }
        }
    }

    /// Build, record, serve and publish one snapshot.
    #[tracing::instrument(name = "map.update", skip_all)]
    pub async fn try_update_once(&mut self) -> UpdateOutcome {
        let mut fresh: Vec<(DeviceId, Position)> = self.feed.take().into_iter().collect();
        fresh.extend(self.stored_elsewhere().await);
        let now = SystemTime::now();
        let cutoff = millis(now.checked_sub(self.ttl).unwrap_or(SystemTime::UNIX_EPOCH));
        let generated_at = millis(now);
        let expired = self.table.values().any(|p| p.received_at_ms < cutoff);
        let visibility_changed = self.refresh_visibility().await;
        if self.published && !self.failed && fresh.is_empty() && !expired && !visibility_changed {
            return UpdateOutcome::Unchanged { version: self.version };
        }
        self.version += 1;
        let version = self.version;
        let mut table = std::mem::take(&mut self.table);
        let (exceptions, public_by_default) =
            (self.exceptions.clone(), self.default_visibility == Visibility::Public);
        let map_ids = self.map_ids.clone();
        let mut known = std::mem::take(&mut self.map_id_cache);

        let built = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            for (device, position) in fresh {
                match table.get(&device) {
                    Some(kept) if !position.supersedes(kept) => {}
                    _ => {
                        table.insert(device, position);
                    }
                }
            }
            table.retain(|_, p| p.received_at_ms >= cutoff);
            // The shared map holds public devices only.
            let public = |id: &DeviceId| exceptions.contains(id) != public_by_default;
            let shown = table.iter().filter(|(id, _)| public(id));
            let snapshot = match &map_ids {
                None => MapSnapshot::build(version, generated_at, shown),
                Some(ids) => {
                    known.retain(|id, _| table.contains_key(id));
                    let named: Vec<(DeviceId, &Position)> = shown
                        .map(|(id, p)| {
                            (known.entry(id.clone()).or_insert_with(|| ids.of(id)).clone(), p)
                        })
                        .collect();
                    MapSnapshot::build(version, generated_at, named.iter().map(|(id, p)| (id, *p)))
                }
            };
            let gzip = gzip(&snapshot.json);
            let build_ms = started.elapsed().as_millis() as u64;
            (table, known, PublishedMap { snapshot, gzip, build_ms })
        })
        .await;
        let map = match built {
            Ok((table, known, map)) => {
                self.table = table;
                self.map_id_cache = known;
                Arc::new(map)
            }
            Err(e) => {
                // The table went down with the build; the next tick starts
                // from what the hook feeds (the store still has everything).
                tracing::error!({ names::ERROR_MESSAGE } = %e, "map build panicked");
                return self.failed(version, format!("build panicked: {e}"));
            }
        };

        let snap = &map.snapshot;
        let record = SnapshotRecord {
            version,
            generated_at,
            count: snap.total() as u64,
            raw_bytes: snap.json.len() as u64,
            gzip_bytes: map.gzip.len() as u64,
            build_ms: map.build_ms,
        };
        let document = self.shared.as_ref().map(|_| map.gzip.clone());
        if let Err(e) = self.store.record_map_snapshot(record, document).await {
            tracing::error!({ names::ERROR_MESSAGE } = %e, "map snapshot not recorded; not publishing it");
            return self.failed(version, format!("snapshot not recorded: {e}"));
        }
        self.view.publish(map.clone());
        self.publish(&map).await;
        self.published = true;
        self.failed = false;
        let m = crate::telemetry::metrics::global();
        m.updater_builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (gauge, value) in [
            (&m.updater_build_ms, map.build_ms),
            (&m.updater_devices, snap.total() as u64),
            (&m.updater_raw_bytes, snap.json.len() as u64),
            (&m.updater_gzip_bytes, map.gzip.len() as u64),
        ] {
            gauge.store(value, std::sync::atomic::Ordering::Relaxed);
        }
        let outcome = UpdateOutcome::Published {
            version,
            total: snap.total(),
            raw_bytes: snap.json.len(),
            gzip_bytes: map.gzip.len(),
            build_ms: map.build_ms,
        };
        tracing::info!(
            { names::MAP_VERSION } = version,
            { names::MAP_TOTAL } = snap.total(),
            { names::MAP_RAW_BYTES } = snap.json.len(),
            { names::MAP_GZIP_BYTES } = map.gzip.len(),
            { names::MAP_BUILD_MS } = map.build_ms,
            "map snapshot published"
        );
        outcome
    }

    /// Count a failed build and show it to readiness until one succeeds.
    fn failed(&mut self, version: u64, reason: String) -> UpdateOutcome {
        self.failed = true;
        let m = crate::telemetry::metrics::global();
        m.updater_build_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.view.build_failed(reason.clone());
        UpdateOutcome::Failed { version, reason }
    }

    /// Positions other instances stored since the last look that differ
    /// from what the table holds (none when the database is not shared).
    async fn stored_elsewhere(&mut self) -> Vec<(DeviceId, Position)> {
        let Some(shared) = &mut self.shared else { return Vec::new() };
        let now = SystemTime::now();
        let since = shared.merged_at.checked_sub(MERGE_OVERLAP).unwrap_or(SystemTime::UNIX_EPOCH);
        match self.store.load_latest_positions(millis(since)).await {
            Ok(mut rows) => {
                shared.merged_at = now;
                rows.retain(|(id, p)| self.table.get(id) != Some(p));
                rows
            }
            Err(e) => {
                // The local feed still counts; the next build reads again.
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "positions of other instances not read");
                Vec::new()
            }
        }
    }

    /// This instance has just taken the map lease: carry on from the
    /// newest version any instance built, with every stored position.
    async fn take_over(&mut self) -> anyhow::Result<()> {
        let last = self.store.last_map_version().await.context("reading the last map version")?;
        self.version = self.version.max(last);
        if let Some(shared) = &mut self.shared {
            shared.merged_at = SystemTime::UNIX_EPOCH;
            shared.leading = true;
        }
        // A build right away, so the retained topics are this instance's.
        self.published = false;
        tracing::info!({ names::MAP_VERSION } = self.version, "this instance builds the map now");
        Ok(())
    }

    /// Serve the newest map another instance stored, if newer than ours.
    async fn follow(&mut self) {
        // The builder reads them from the database; this feed only grows.
        self.feed.take();
        if let Some(shared) = &mut self.shared
            && std::mem::take(&mut shared.leading)
        {
            tracing::info!("another instance builds the map now");
        }
        let served = self.view.current().map_or(0, |m| m.snapshot.version);
        let found = match self.store.map_document_after(served).await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "stored map not read");
                return;
            }
        };
        let (version, gzip) = found;
        let parsed = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let json = gunzip(&gzip)?;
            let snapshot = MapSnapshot::parse(json)?;
            anyhow::Ok(PublishedMap {
                snapshot,
                gzip,
                build_ms: started.elapsed().as_millis() as u64,
            })
        })
        .await;
        let map = match parsed {
            Ok(Ok(map)) if map.snapshot.version == version => Arc::new(map),
            Ok(Ok(_)) => {
                tracing::error!(
                    { names::MAP_VERSION } = version,
                    "stored map names another version"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::error!({ names::ERROR_MESSAGE } = %e, { names::MAP_VERSION } = version, "stored map unreadable");
                return;
            }
            Err(e) => {
                tracing::error!({ names::ERROR_MESSAGE } = %e, "reading the stored map panicked");
                return;
            }
        };
        self.version = version;
        self.view.publish(map.clone());
        self.publish(&map).await;
        self.published = true;
        tracing::debug!({ names::MAP_VERSION } = version, "map of another instance served");
    }

    /// Retained on `map/snapshot`, `map/snapshot.gz` and `map/version`. The
    /// big two go at QoS 0 so offline persistent sessions do not each store
    /// a copy (they get the retained one on subscribe); `map/version` at QoS 1.
    async fn publish(&self, map: &PublishedMap) {
        let snap = &map.snapshot;
        let version = serde_json::json!({
            "version": snap.version,
            "generated_at": format_rfc3339(snap.generated_at_ms),
            "total": snap.total(),
            "bytes": snap.json.len(),
            "gzip_bytes": map.gzip.len(),
        });
        let messages = [
            (SNAPSHOT_TOPIC, snap.json.clone(), GEOJSON, QoS::AtMostOnce, true),
            (SNAPSHOT_GZ_TOPIC, map.gzip.clone(), GZIP, QoS::AtMostOnce, false),
            (
                VERSION_TOPIC,
                Bytes::from(version.to_string()),
                "application/json",
                QoS::AtLeastOnce,
                true,
            ),
        ];
        for (name, payload, content_type, qos, utf8) in messages {
            let topic = TopicName::parse(name, TopicLimits::default()).expect("static topic");
            let mut msg = Message::new(topic, payload, qos, true);
            msg.props = Some(Arc::new(MessageProps {
                content_type: Some(ByteString::from_static(content_type)),
                payload_is_utf8: utf8,
                ..MessageProps::default()
            }));
            if let Err(e) = self.broker.publish(msg).await {
                tracing::warn!(
                    { names::ERROR_MESSAGE } = %e,
                    { names::MQTT_TOPIC } = name,
                    "map publish failed"
                );
            }
        }
    }

    /// Build every `interval` until `stop`; the first build is immediate.
    /// Sharing a database, build only while holding the map lease.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) {
        let mut next = tokio::time::Instant::now();
        loop {
            let wake = match &self.shared {
                Some(_) => next.min(tokio::time::Instant::now() + LEASE_POLL),
                None => next,
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if !self.lead().await {
                self.follow().await;
                continue;
            }
            let now = tokio::time::Instant::now();
            if now < next {
                continue;
            }
            let started = now;
            self.try_update_once().await;
            let now = tokio::time::Instant::now();
            let skipped;
            (next, skipped) = next_tick(next, now, self.interval);
            if skipped > 0 {
                tracing::warn!(
                    { names::MAP_BUILD_MS } = now.duration_since(started).as_millis() as u64,
                    { names::MAP_SKIPPED_TICKS } = skipped,
                    interval_secs = self.interval.as_secs(),
                    "map update overran its interval; skipping the next tick"
                );
            }
        }
        if let Some(shared) = &self.shared
            && shared.leading
            && let Err(e) = self.store.release_lease(MAP_LEASE, &shared.holder).await
        {
            tracing::warn!({ names::ERROR_MESSAGE } = %e, "map lease not released; it lapses");
        }
        tracing::debug!("map updater stopped");
    }
}

/// The tick after the one at `last`, now that a build ended at `now`, and
/// how many ticks the build overran: those are skipped, not piled up.
impl MapUpdater {
    /// Whether this instance builds the map now: always when alone;
    /// sharing a database, while it holds (and has just renewed) the lease.
    async fn lead(&mut self) -> bool {
        let Some(shared) = &self.shared else { return true };
        let was_leading = shared.leading;
        match self.store.hold_lease(MAP_LEASE, &shared.holder, LEASE_TTL).await {
            Ok(true) if was_leading => true,
            Ok(true) => match self.take_over().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!({ names::ERROR_MESSAGE } = %e, "taking over the map failed");
                    false
                }
            },
            Ok(false) => false,
            Err(e) => {
                // Unable to renew: another instance may take over once the
                // lease lapses, so stop building rather than race it.
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "map lease not renewed");
                false
            }
        }
    }
}

fn next_tick(
    last: tokio::time::Instant,
    now: tokio::time::Instant,
    interval: Duration,
) -> (tokio::time::Instant, u32) {
    let mut next = last + interval;
    let mut skipped = 0;
    while next < now {
        next += interval;
        skipped += 1;
    }
    (next, skipped)
}

/// Fast gzip: the snapshot is rebuilt every tick, so speed beats ratio.
/// A stored document, decompressed; bounded, as a damaged one could claim
/// any size.
fn gunzip(gzip: &[u8]) -> anyhow::Result<Bytes> {
    use std::io::Read;
    const MAX_DOCUMENT: u64 = 1 << 30;
    let mut out = Vec::with_capacity(gzip.len() * 8);
    flate2::read::GzDecoder::new(gzip).take(MAX_DOCUMENT).read_to_end(&mut out)?;
    Ok(Bytes::from(out))
}

fn gzip(bytes: &[u8]) -> Bytes {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn an_overrunning_build_skips_the_ticks_it_missed() {
        let t0 = tokio::time::Instant::now();
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(next_tick(t0, t0 + ms(300), second), (t0 + second, 0), "on time");
        assert_eq!(next_tick(t0, t0 + ms(2500), second), (t0 + ms(3000), 2), "two missed");
        assert_eq!(next_tick(t0, t0 + second, second), (t0 + second, 0), "just in time");
    }

    #[test]
    fn gzip_round_trips() {
        let data = br#"{"type":"FeatureCollection","features":[]}"#.repeat(100);
        let packed = gzip(&data);
        assert!(packed.len() < data.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
