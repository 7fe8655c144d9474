-- Fair share, quotas, priorities, deadlines and cancels that hold.
-- priority: 0 low, 1 normal, 2 high. gpus: what the job asked for, summed for GPU quotas.
-- claim_seq: order of claims, for serving the tenant served longest ago; claimed_ms: when the
-- job was claimed (ms since the Unix epoch), for run-time deadlines and the launch timeout.
-- canceling: a cancel was asked for and the trainer is not yet gone.
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN gpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN claim_seq BIGINT;
ALTER TABLE jobs ADD COLUMN claimed_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN canceling BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_tenant_claim ON jobs (tenant, claim_seq);
CREATE INDEX jobs_claim ON jobs (claim_seq);
CREATE INDEX jobs_tenant_status ON jobs (tenant, status, priority, job_id);
