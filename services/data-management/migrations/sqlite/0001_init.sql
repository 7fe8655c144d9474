-- Datasets, their commits and their training snapshots. Every row belongs to a tenant.
-- A dataset or commit is visible once `state` is 'committed'; 'pending' rows belong to an ingest
-- in progress (its lease is renewed while it runs) and are swept when the lease expires.
CREATE TABLE datasets (
    dataset_id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    dataset_type BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_updated_at TEXT NOT NULL
);
CREATE INDEX datasets_tenant ON datasets (tenant, dataset_id);

CREATE TABLE commits (
    dataset_id BIGINT NOT NULL,
    commit_id BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    commit_message TEXT NOT NULL,
    tags TEXT NOT NULL,
    path TEXT NOT NULL,
    statistics TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    PRIMARY KEY (dataset_id, commit_id)
);

CREATE TABLE snapshots (
    dataset_id BIGINT NOT NULL,
    version_hash TEXT NOT NULL,
    tenant TEXT NOT NULL,
    state BIGINT NOT NULL,
    commit_ids TEXT NOT NULL,
    message TEXT NOT NULL,
    statistics TEXT NOT NULL,
    parts TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, version_hash)
);
