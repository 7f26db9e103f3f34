-- Kept in step with the PostgreSQL schema (several instances run on
-- PostgreSQL only): the will of the connection that holds a claim.
ALTER TABLE session_claims ADD COLUMN will BLOB;
ALTER TABLE session_claims ADD COLUMN will_delay BIGINT NOT NULL DEFAULT 0;
