-- Broker state that survives restarts: retained messages and persistent sessions.
-- Times are milliseconds since the Unix epoch.

CREATE TABLE retained (
    topic       TEXT PRIMARY KEY,
    payload     BYTEA NOT NULL,
    qos         BIGINT NOT NULL,
    props       TEXT,
    expires_at  BIGINT,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE sessions (
    client_id        TEXT PRIMARY KEY,
    expiry_secs      BIGINT NOT NULL,
    disconnected_at  BIGINT,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE session_subscriptions (
    client_id  TEXT NOT NULL,
    filter     TEXT NOT NULL,
    options    TEXT NOT NULL,
    PRIMARY KEY (client_id, filter)
);

CREATE TABLE session_messages (
    seq          BIGINT PRIMARY KEY,
    client_id    TEXT NOT NULL,
    topic        TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    qos          BIGINT NOT NULL,
    retain       BIGINT NOT NULL,
    props        TEXT,
    sub_ids      TEXT,
    expires_at   BIGINT,
    received_at  BIGINT NOT NULL
);

CREATE INDEX session_messages_by_client ON session_messages (client_id, seq);
