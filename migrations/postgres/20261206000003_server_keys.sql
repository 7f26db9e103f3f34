-- Keys the server keeps for itself, shared by every instance on the
-- database: 'map_ids' names devices on the shared map (see MapIds).
CREATE TABLE server_keys (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
