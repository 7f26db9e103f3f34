-- Per writer run, the number of its last committed transaction, stamped as
-- the first write of each: a transaction whose COMMIT went unanswered (time
-- limit, broken connection) is looked up here to tell its callers whether
-- it committed. Rows of runs that did not remove their own are pruned.
CREATE TABLE writer_commits (
    writer      TEXT PRIMARY KEY,
    batch       BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
