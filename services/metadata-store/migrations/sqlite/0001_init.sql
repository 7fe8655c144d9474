-- Runs, their epochs and their model artifacts. Every row belongs to a tenant.
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    run_name TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT NOT NULL DEFAULT '',
    success BIGINT NOT NULL DEFAULT 0,
    ended BIGINT NOT NULL DEFAULT 0,
    message TEXT NOT NULL,
    dataset_id TEXT NOT NULL DEFAULT '',
    version_hash TEXT NOT NULL DEFAULT '',
    code_version TEXT NOT NULL DEFAULT '',
    base_run_id TEXT NOT NULL DEFAULT '',
    UNIQUE (tenant, run_id)
);
CREATE INDEX runs_dataset ON runs (tenant, dataset_id);

CREATE TABLE epochs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    epoch_id TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT NOT NULL,
    metrics TEXT NOT NULL,
    UNIQUE (tenant, run_id, epoch_id)
);
CREATE INDEX epochs_run ON epochs (tenant, run_id, seq);

CREATE TABLE artifacts (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    path TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, name, version),
    UNIQUE (tenant, run_id)
);
