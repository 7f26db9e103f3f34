-- Who owns each persistent session (see Identity::principal): only they
-- resume or replace it. NULL for sessions stored before owners were kept.
ALTER TABLE sessions ADD COLUMN owner TEXT;
