-- Principals (`user:ID`, `device:ID`) whose live MQTT connections and
-- streams must close, from `mapcast user delete`, `device delete` and
-- `device rotate-secret`: the CLI cannot reach a running server's memory,
-- so running servers poll the table like `lockout_lifts`.
-- Times are milliseconds since the Unix epoch.
CREATE TABLE revocation_requests (
    principal     TEXT PRIMARY KEY,
    requested_at  BIGINT NOT NULL
);

CREATE INDEX revocation_requests_by_time ON revocation_requests (requested_at);
