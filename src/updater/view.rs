//! What the REST API reads of the map: the latest published snapshot and the
//! positions of the last few, for `?since=` diffs.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use ntex::util::Bytes;

use crate::domain::{MapDiff, MapPositions, MapSnapshot};

/// Snapshots kept for `?since=VERSION` diffs (the current one included).
/// At the default 60 s interval that answers clients up to 15 minutes behind.
pub const DIFF_WINDOW: usize = 16;

/// A snapshot as published: the document, its gzip encoding and the facts
/// recorded about it.
#[derive(Debug)]
pub struct PublishedMap {
    pub snapshot: MapSnapshot,
    /// `snapshot.json` gzip-compressed (what `map/snapshot.gz` carries).
    pub gzip: Bytes,
    pub build_ms: u64,
}

/// Why a diff cannot be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("no map snapshot has been published yet")]
    NoSnapshot,
    #[error("version {since} is newer than the current version {current}")]
    Ahead { since: u64, current: u64 },
    /// Older than the window: the client must fetch the whole map again.
    #[error(
        "version {since} is too old to diff against (the oldest kept is {oldest}); fetch the whole map"
    )]
    TooOld { since: u64, oldest: u64 },
}

#[derive(Default)]
struct State {
    current: Option<Arc<PublishedMap>>,
    /// `(version, positions)`, oldest first, at most [`DIFF_WINDOW`].
    recent: VecDeque<(u64, MapPositions)>,
    /// Why the latest build failed; `None` once one succeeds again.
    failing: Option<String>,
}

/// Cloneable read side of the updater.
///
/// A std `RwLock`: readers clone an `Arc` out, the updater swaps one in once
/// per tick; nobody holds it across an `.await`.
#[derive(Clone, Default)]
pub struct MapView(Arc<RwLock<State>>);

impl MapView {
    /// The latest snapshot, if one has been built.
    pub fn current(&self) -> Option<Arc<PublishedMap>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).current.clone()
    }

    pub(super) fn publish(&self, map: Arc<PublishedMap>) {
        let mut st = self.0.write().unwrap_or_else(|e| e.into_inner());
        st.recent.push_back((map.snapshot.version, map.snapshot.positions.clone()));
        while st.recent.len() > DIFF_WINDOW {
            st.recent.pop_front();
        }
        st.current = Some(map);
        st.failing = None;
    }

    /// The latest build failed: the served map is older than it should be.
    pub(super) fn build_failed(&self, reason: String) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).failing = Some(reason);
    }

    /// Why the latest build failed, while the map is stale because of it.
    pub fn failing(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).failing.clone()
    }

    /// What changed between version `since` and the current snapshot.
    pub fn diff(&self, since: u64) -> Result<MapDiff, DiffError> {
        let st = self.0.read().unwrap_or_else(|e| e.into_inner());
        let Some((current, now)) = st.recent.back() else { return Err(DiffError::NoSnapshot) };
        let current = *current;
        if since > current {
            return Err(DiffError::Ahead { since, current });
        }
        let oldest = st.recent.front().map_or(current, |(v, _)| *v);
        let Some((_, then)) = st.recent.iter().find(|(v, _)| *v == since) else {
            return Err(DiffError::TooOld { since, oldest });
        };
        let mut diff = MapDiff::between(since, then, current, now);
        if let Some(map) = &st.current {
            let mut ids: Vec<&str> =
                diff.added.iter().chain(&diff.moved).map(String::as_str).collect();
            ids.sort_unstable();
            diff.features = ids
                .into_iter()
                .filter_map(|id| map.snapshot.feature_json(id))
                .filter_map(|f| std::str::from_utf8(f).ok())
                .filter_map(|f| serde_json::value::RawValue::from_string(f.to_owned()).ok())
                .collect();
        }
        Ok(diff)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::{DeviceId, Location, Position};

    fn map(version: u64, devices: &[(&str, f64)]) -> Arc<PublishedMap> {
        let table: HashMap<DeviceId, Position> = devices
            .iter()
            .map(|(id, lon)| {
                let location = Location {
                    lon: *lon,
                    lat: 0.0,
                    alt: None,
                    ts_ms: 0,
                    speed: None,
                    heading: None,
                    accuracy: None,
                    battery: None,
                    kind: None,
                };
                (DeviceId::parse(id.to_string()).unwrap(), Position { location, received_at_ms: 0 })
            })
            .collect();
        Arc::new(PublishedMap {
            snapshot: MapSnapshot::build(version, 0, &table),
            gzip: Bytes::new(),
            build_ms: 0,
        })
    }

    #[test]
    fn diffs_are_answered_within_the_window_only() {
        let view = MapView::default();
        assert_eq!(view.diff(1), Err(DiffError::NoSnapshot));
        view.publish(map(1, &[("a", 1.0), ("b", 2.0)]));
        view.publish(map(2, &[("a", 1.5), ("c", 3.0)]));

        let d = view.diff(1).unwrap();
        assert_eq!(
            (d.added, d.moved, d.removed),
            (vec!["c".into()], vec!["a".into()], vec!["b".into()])
        );
        assert!(view.diff(2).unwrap().moved.is_empty());
        assert_eq!(view.diff(3), Err(DiffError::Ahead { since: 3, current: 2 }));

        for v in 3..=(2 + DIFF_WINDOW as u64) {
            view.publish(map(v, &[]));
        }
        assert!(matches!(view.diff(2), Err(DiffError::TooOld { since: 2, .. })));
        assert_eq!(view.current().unwrap().snapshot.version, 2 + DIFF_WINDOW as u64);
    }
}
