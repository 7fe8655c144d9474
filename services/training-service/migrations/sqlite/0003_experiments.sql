-- Experiments: hyperparameter searches whose trials are jobs.
-- spec: the experiment as created (JSON), defaults filled in. An experiment that has ended
-- with trials still unfinished has them canceled by the driver.
CREATE TABLE experiments (
    experiment_id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    status BIGINT NOT NULL,
    message TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX experiments_tenant ON experiments (tenant, experiment_id);
CREATE INDEX experiments_status ON experiments (status, experiment_id);
-- A trial and its job are inserted in one transaction; the primary key makes a trial number
-- taken once, whichever replica drives the experiment. parameters: the chosen values (JSON).
-- curve: the objective per epoch read so far (JSON). settled: the job has ended and its curve
-- was read after. early_stopped_epoch: the epoch the median rule stopped it at, 0 for none.
CREATE TABLE trials (
    experiment_id BIGINT NOT NULL,
    trial_number BIGINT NOT NULL,
    job_id BIGINT NOT NULL,
    parameters TEXT NOT NULL,
    curve TEXT NOT NULL,
    settled BIGINT NOT NULL DEFAULT 0,
    early_stopped_epoch BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_id, trial_number)
);
CREATE UNIQUE INDEX trials_job ON trials (job_id);
-- Why a canceled job was canceled (empty: by request).
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';
