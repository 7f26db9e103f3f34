-- Share links: anyone holding the token sees one device's position until
-- `expires_at` or `revoked_at`. `token_hash` is the hex SHA-256 of the
-- token: the table holds nothing that opens a link.
CREATE TABLE shares (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    device_id   TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_by  TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE INDEX shares_by_device ON shares (device_id);
