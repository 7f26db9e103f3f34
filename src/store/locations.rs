//! `locations_latest`: each device's latest position, written by the batching
//! writer (many rows per statement) and read back once at start by the map
//! updater.

use std::collections::HashMap;
use std::str::FromStr;

use sqlx::{Any, Row};

use super::{Backend, Store};
use crate::domain::{DeviceId, DeviceKind, Location, Position};

/// Columns bound per row of the multi-row upsert.
const COLUMNS: usize = 11;
/// Rows per statement (SQLite binds at most 32 766 parameters).
const ROWS_PER_STATEMENT: usize = 200;

/// The latest positions of one writer batch, one per device.
#[derive(Default)]
pub(crate) struct LatestBatch(HashMap<DeviceId, Position>);

impl LatestBatch {
    pub(crate) fn add(&mut self, device: DeviceId, position: Position) {
        match self.0.get(&device) {
            Some(kept) if !position.supersedes(kept) => {}
            _ => {
                self.0.insert(device, position);
            }
        }
    }

    /// Upsert every row; the database keeps whichever fix is newer, in
    /// [`Position::supersedes`]'s order.
    pub(crate) async fn execute(
        self,
        tx: &mut sqlx::Transaction<'_, Any>,
        backend: Backend,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<(DeviceId, Position)> = self.0.into_iter().collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO locations_latest \
                 (device_id, lon, lat, alt, ts, speed, heading, accuracy, battery, kind, received_at) \
                 VALUES {} ON CONFLICT (device_id) DO UPDATE SET lon = excluded.lon, \
                 lat = excluded.lat, alt = excluded.alt, ts = excluded.ts, speed = excluded.speed, \
                 heading = excluded.heading, accuracy = excluded.accuracy, \
                 battery = excluded.battery, kind = excluded.kind, received_at = excluded.received_at \
                 WHERE {new} > {old} OR ({new} = {old} \
                 AND excluded.received_at >= locations_latest.received_at)",
                backend.value_rows(chunk.len(), COLUMNS),
                new = taken_at("excluded"),
                old = taken_at("locations_latest"),
            );
            let mut q = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql));
            for (device, p) in chunk {
                let l = &p.location;
                q = q
                    .bind(device.as_str().to_owned())
                    .bind(l.lon)
                    .bind(l.lat)
                    .bind(l.alt)
                    .bind(l.ts_ms)
                    .bind(l.speed)
                    .bind(l.heading)
                    .bind(l.accuracy)
                    .bind(l.battery)
                    .bind(l.kind.map(|k| k.as_str().to_owned()))
                    .bind(p.received_at_ms);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// The columns [`position_row`] reads.
const POSITION_COLUMNS: &str =
    "device_id, lon, lat, alt, ts, speed, heading, accuracy, battery, kind, received_at";

impl Store {
    /// Latest positions of the devices seen at or after `since_ms`.
    pub async fn load_latest_positions(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(DeviceId, Position)>, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let sql =
                format!("SELECT {POSITION_COLUMNS} FROM locations_latest WHERE received_at >= $1");
            let rows =
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since_ms).fetch_all(&pool).await?;
            rows.iter().filter_map(|r| position_row(r).transpose()).collect()
        })
        .await
    }

    /// The latest position of each of `devices` that has one, however old.
    pub async fn latest_positions_of(
        &self,
        devices: Vec<String>,
    ) -> Result<Vec<(DeviceId, Position)>, sqlx::Error> {
        let pool = self.pool().clone();
        self.run(async move {
            let mut out = Vec::with_capacity(devices.len());
            for chunk in devices.chunks(ROWS_PER_STATEMENT) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT {POSITION_COLUMNS} FROM locations_latest WHERE device_id IN ({})",
                    marks.join(", ")
                );
                let mut q = sqlx::query::<Any>(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(id.clone());
                }
                for r in q.fetch_all(&pool).await? {
                    out.extend(position_row(&r)?);
                }
            }
            Ok(out)
        })
        .await
    }
}

/// One row of [`POSITION_COLUMNS`]; `None` for an id that is no longer valid.
fn position_row(r: &sqlx::any::AnyRow) -> Result<Option<(DeviceId, Position)>, sqlx::Error> {
    let id: String = r.try_get(0)?;
    let Ok(device) = DeviceId::parse(id) else { return Ok(None) };
    let kind: Option<String> = r.try_get(9)?;
    let location = Location {
        lon: r.try_get(1)?,
        lat: r.try_get(2)?,
        alt: r.try_get(3)?,
        ts_ms: r.try_get(4)?,
        speed: r.try_get(5)?,
        heading: r.try_get(6)?,
        accuracy: r.try_get(7)?,
        battery: r.try_get(8)?,
        kind: kind.as_deref().and_then(|k| DeviceKind::from_str(k).ok()),
    };
    Ok(Some((device, Position { location, received_at_ms: r.try_get(10)? })))
}

/// `ts` capped at `received_at` (portable SQL: no `LEAST`/`MIN` of two).
fn taken_at(table: &str) -> String {
    format!(
        "(CASE WHEN {table}.ts < {table}.received_at THEN {table}.ts ELSE {table}.received_at END)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WriteOp;
    use crate::store::spawn_writer;

    fn at(lon: f64, ts_ms: i64, received_at_ms: i64) -> Position {
        let location = Location {
            lon,
            lat: 1.0,
            alt: Some(30.0),
            ts_ms,
            speed: None,
            heading: Some(90.0),
            accuracy: None,
            battery: Some(55.0),
            kind: Some(DeviceKind::Phone),
        };
        Position { location, received_at_ms }
    }

    async fn fresh_store() -> (tempfile::TempDir, Store, crate::store::StoreWriter) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::connect(&format!("sqlite://{}/t.db", dir.path().display()), 2).await.unwrap();
        store.migrate().await.unwrap();
        let (writer, _) = spawn_writer(store.clone(), std::time::Duration::ZERO);
        (dir, store, writer)
    }

    #[tokio::test]
    async fn the_newest_fix_wins_whatever_the_order_it_arrives_in() {
        let (_dir, store, writer) = fresh_store().await;
        let id = DeviceId::parse("p1").unwrap();
        let put = |p: Position| WriteOp::UpsertLocation { device_id: id.clone(), position: p };

        // One batch with two fixes, then a late, older fix in its own batch.
        writer
            .submit_durable(vec![put(at(1.0, 100, 1005)), put(at(2.0, 200, 1006))])
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        writer.submit_durable(vec![put(at(3.0, 150, 1007))]).unwrap().await.unwrap().unwrap();

        let loaded = store.load_latest_positions(0).await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].0, id);
        assert_eq!(loaded[0].1, at(2.0, 200, 1006));
        assert!(
            store.load_latest_positions(1007).await.unwrap().is_empty(),
            "seen before the cutoff"
        );
    }

    #[tokio::test]
    async fn a_fix_stamped_ahead_of_its_arrival_loses_to_a_later_arrival() {
        let (_dir, store, writer) = fresh_store().await;
        let id = DeviceId::parse("p1").unwrap();
        let put = |p: Position| WriteOp::UpsertLocation { device_id: id.clone(), position: p };

        // Stamped four minutes ahead, then a correct fix a second later.
        writer.submit_durable(vec![put(at(1.0, 241_000, 1_000))]).unwrap().await.unwrap().unwrap();
        writer.submit_durable(vec![put(at(2.0, 2_000, 2_000))]).unwrap().await.unwrap().unwrap();

        let loaded = store.load_latest_positions(0).await.unwrap();
        assert_eq!(loaded[0].1, at(2.0, 2_000, 2_000));
    }
}
