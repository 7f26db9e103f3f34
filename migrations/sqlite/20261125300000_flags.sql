-- Feature flags. `spec` is the definition as JSON (variants, allow/deny
-- lists, canary thresholds); the columns beside it are what the canary
-- guard changes on its own. Times are milliseconds since the Unix epoch.
CREATE TABLE feature_flags (
    key              TEXT PRIMARY KEY,
    enabled          BIGINT NOT NULL,
    rollout          BIGINT NOT NULL,
    spec             TEXT NOT NULL,
    -- `active` or `rolled_back` (the guard rolled the canary back).
    state            TEXT NOT NULL,
    failed_checks    BIGINT NOT NULL,
    -- Crash reports up to this id (a timestamp-led file stem) were counted.
    crash_watermark  TEXT NOT NULL,
    updated_at       BIGINT NOT NULL
);
