-- Several instances: per instance (per run, as in session_claims.node) the
-- Redis stream entry up to which the effects of the other instances'
-- publishes on its sessions are committed, written in the same transaction
-- as the queued copies it covers. Whoever takes over the sessions of a dead
-- instance queues the stream's entries after this point itself.
CREATE TABLE fabric_cursors (
    node  TEXT PRIMARY KEY,
    ms    BIGINT NOT NULL,
    seq   BIGINT NOT NULL
);

-- The instance that last held each claimed session (queued for it), which a
-- claim leaves as it was until its instance holds the session: a claimant
-- that died waiting for the session never held it, and the publishes to
-- replay start from the cursor of the one that did.
ALTER TABLE session_claims ADD COLUMN source TEXT;
