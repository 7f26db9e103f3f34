-- Locations, history and map snapshots. Times are milliseconds since the Unix epoch.

-- Each device's latest position (the newest fix by `ts`).
CREATE TABLE locations_latest (
    device_id    TEXT PRIMARY KEY,
    lon          DOUBLE PRECISION NOT NULL,
    lat          DOUBLE PRECISION NOT NULL,
    alt          DOUBLE PRECISION,
    ts           BIGINT NOT NULL,
    speed        DOUBLE PRECISION,
    heading      DOUBLE PRECISION,
    accuracy     DOUBLE PRECISION,
    battery      DOUBLE PRECISION,
    kind         TEXT,
    received_at  BIGINT NOT NULL
);

-- Messages of the topics with history enabled (`history.topics`).
-- An identity column: sequence numbers are never reused, so cursors stay valid.
CREATE TABLE history (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic         TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    content_type  TEXT,
    received_at   BIGINT NOT NULL
);

CREATE INDEX history_by_topic_time ON history (topic, received_at, seq);

-- One row per published map snapshot; versions only rise.
CREATE TABLE map_snapshots (
    version       BIGINT PRIMARY KEY,
    generated_at  BIGINT NOT NULL,
    count         BIGINT NOT NULL,
    raw_bytes     BIGINT NOT NULL,
    gzip_bytes    BIGINT NOT NULL,
    build_ms      BIGINT NOT NULL
);
