-- Several instances: the will of the connection that holds a claim, kept
-- with the claim so that, once the holder's lease lapses, one surviving
-- instance publishes it (the claim's row lock makes it exactly one). The
-- message is packed as on the fabric stream; `will_delay` is the v5 will
-- delay interval in seconds.
ALTER TABLE session_claims ADD COLUMN will BYTEA;
ALTER TABLE session_claims ADD COLUMN will_delay BIGINT NOT NULL DEFAULT 0;
