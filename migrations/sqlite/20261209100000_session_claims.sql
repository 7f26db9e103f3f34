-- Several instances on one database: which instance (which run of it) holds
-- each client id's session now, and under which epoch. Kept in step with
-- the PostgreSQL schema; only a shared PostgreSQL database uses it (one
-- instance owns an embedded SQLite database alone). PostgreSQL also has the
-- sequences epochs and delivery-number blocks come from.
CREATE TABLE session_claims (
    client_id  TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    -- The principal that claimed it (see sessions.owner): another one may
    -- not take a session over from a live instance.
    owner      TEXT NOT NULL
);
