-- Training jobs. The job id is also the run id in metadata-store.
CREATE TABLE jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    status BIGINT NOT NULL,
    message TEXT NOT NULL,
    metadata TEXT NOT NULL,
    backend TEXT NOT NULL,
    backend_ref TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, job_id);
