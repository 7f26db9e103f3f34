-- Several instances on one database: which instance (which run of it) holds
-- each client id's session now, and under which epoch. A CONNECT claims the
-- id with a fresh epoch; an instance told of a higher epoch lets go, and
-- one holding a higher epoch refuses a lower one, so a stale owner is fenced.
-- Instances prove they are alive by renewing the `node:<instance>` lease.
CREATE TABLE session_claims (
    client_id  TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    -- The principal that claimed it (see sessions.owner): another one may
    -- not take a session over from a live instance.
    owner      TEXT NOT NULL
);

CREATE SEQUENCE session_claim_epochs;

-- Delivery sequence numbers unique across instances: each instance numbers
-- its queued messages inside a block of 2^32 it reserved from this sequence,
-- and blocks reserved later number higher, so the order by `seq` stays the
-- delivery order when a session moves to another instance.
CREATE SEQUENCE session_message_blocks;
