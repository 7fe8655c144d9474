-- Per run and numeric metric: its value in the last epoch and its best value, maintained by
-- LogEpoch in the epoch's transaction, so ListRuns can sort and page by a metric in SQL.
-- "Best" is the lowest value when lower_is_better (the name contains "loss" or "error").
CREATE TABLE run_metrics (
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    last_value REAL NOT NULL,
    last_epoch TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    best_value REAL NOT NULL,
    best_epoch TEXT NOT NULL,
    lower_is_better BIGINT NOT NULL,
    PRIMARY KEY (tenant, run_id, name)
);
CREATE INDEX run_metrics_best ON run_metrics (tenant, name, best_value);
CREATE INDEX run_metrics_last ON run_metrics (tenant, name, last_value);

-- End time minus start time in milliseconds, set by LogRunEnd; NULL while running or when
-- either time is not RFC 3339.
ALTER TABLE runs ADD COLUMN duration_ms BIGINT;

-- ListArtifacts: newest first.
CREATE INDEX artifacts_created ON artifacts (tenant, created_at);

-- Backfills still to do at startup, each in one transaction that deletes its row (the service
-- computes them: numbers parse exactly as LogEpoch parses them).
CREATE TABLE run_backfills (
    name TEXT PRIMARY KEY
);
INSERT INTO run_backfills (name) VALUES ('run_metrics'), ('durations');
