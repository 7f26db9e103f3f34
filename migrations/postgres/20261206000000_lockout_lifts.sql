-- Requests to lift the sign-in lockouts of a user name, from
-- `mapcast user unlock`: running servers poll the table and apply each
-- request newer than the last they saw. Lockouts themselves live in memory.
-- Times are milliseconds since the Unix epoch.
CREATE TABLE lockout_lifts (
    username      TEXT PRIMARY KEY,
    requested_at  BIGINT NOT NULL
);

CREATE INDEX lockout_lifts_by_time ON lockout_lifts (requested_at);
