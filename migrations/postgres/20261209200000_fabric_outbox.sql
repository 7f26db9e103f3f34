-- Several instances: an acknowledged publish waits here, committed with its
-- own writes, until it is on the Redis stream; the instance (`node`, its
-- cluster.node_id) appends what is left after a crash when it starts again.
-- `entry` holds the stream entry's fields; `seq` grows across runs.
CREATE TABLE fabric_outbox (
    node   TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    entry  BYTEA NOT NULL,
    PRIMARY KEY (node, seq)
);
