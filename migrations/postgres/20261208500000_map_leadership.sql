-- Several instances on one database: one builds the map (the holder of the
-- `map` lease), the others serve the document it stored.

-- The gzip-compressed GeoJSON of the newest snapshot only (older rows keep
-- their figures, not their documents).
ALTER TABLE map_snapshots ADD COLUMN document BYTEA;

-- Time-limited roles held by one instance at a time. `expires_at` is in
-- milliseconds since the Unix epoch; a holder renews well before it.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
