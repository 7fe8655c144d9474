//! SQL persistence of jobs. Claiming a job is one transaction that also enforces the
//! concurrency limit, so replicas sharing a Postgres database never launch a job twice.

use automl_common::db::{Backend, Database, Timed};
use sqlx::Row;
use sqlx::any::AnyRow;

use std::collections::HashMap;

mod experiments;

pub use experiments::NewTrial;

use crate::config::Quota;
use crate::error::TrainingError;
use crate::model::{Job, JobSpec, JobStatus};
use crate::policy::{TenantLoad, quota_wait};

/// Key of the Postgres advisory lock that serializes claims across replicas.
const CLAIM_LOCK: i64 = 0x6175_746f_6d6c;

/// Jobs in SQL.
#[derive(Debug, Clone)]
pub struct JobStore {
    db: Database,
}

const COLUMNS: &str = "job_id, tenant, status, message, metadata, backend, backend_ref, claimed_ms, canceling, \
     cancel_reason";

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The job is now `launch`, this replica's to start.
    Claimed,
    /// The platform's concurrency limit is reached.
    AtLimit,
    /// The tenant's quota is reached (its queued jobs say which when read).
    Quota,
    /// Another replica took it, or it was canceled.
    Gone,
}

impl JobStore {
    /// A store over an open, migrated database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Records a queued job.
    pub async fn insert(
        &self,
        tenant: &str,
        spec: &JobSpec,
        backend: &str,
        now: &str,
    ) -> Result<i64, TrainingError> {
        let row = insert_job(tenant, spec, backend, now)?
            .fetch_one(&self.db.pool)
            .timed("insert")
            .await?;
        Ok(row.try_get("job_id")?)
    }

    /// A job.
    pub async fn get(&self, tenant: &str, job_id: i64) -> Result<Job, TrainingError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE tenant = $1 AND job_id = $2"
        )))
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&self.db.pool)
        .timed("select")
        .await?
        .ok_or(TrainingError::JobNotFound(job_id))?;
        decode(&row)
    }

    /// The tenant's own queued jobs ahead of `job` (higher priority, or the same and older).
    pub async fn position(&self, job: &Job) -> Result<i64, TrainingError> {
        let rank = job.spec.priority.rank();
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM jobs WHERE tenant = $1 AND status = $2 \
             AND (priority > $3 OR (priority = $3 AND job_id < $4))",
        )
        .bind(&job.tenant)
        .bind(JobStatus::Queuing.number())
        .bind(rank)
        .bind(job.job_id)
        .fetch_one(&self.db.pool)
        .timed("select")
        .await?;
        Ok(row.try_get("n")?)
    }

    /// What each tenant holds now (launched and running jobs, their GPUs) and when it was
    /// last served, for the tenants named.
    pub async fn tenant_loads(
        &self,
        tenants: &[&str],
    ) -> Result<HashMap<String, TenantLoad>, TrainingError> {
        let mut loads: HashMap<String, TenantLoad> = tenants
            .iter()
            .map(|t| (t.to_string(), TenantLoad::default()))
            .collect();
        let rows = sqlx::query(
            "SELECT tenant, COUNT(*) AS n, CAST(COALESCE(SUM(gpus), 0) AS BIGINT) AS g \
             FROM jobs WHERE status IN ($1, $2) GROUP BY tenant",
        )
        .bind(JobStatus::Launch.number())
        .bind(JobStatus::Running.number())
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        for row in rows {
            let tenant: String = row.try_get("tenant")?;
            if let Some(load) = loads.get_mut(&tenant) {
                load.active = row.try_get("n")?;
                load.gpus = row.try_get("g")?;
            }
        }
        for tenant in tenants {
            let last: Option<i64> =
                sqlx::query("SELECT MAX(claim_seq) AS s FROM jobs WHERE tenant = $1")
                    .bind(*tenant)
                    .fetch_one(&self.db.pool)
                    .timed("select")
                    .await?
                    .try_get("s")?;
            if let Some(load) = loads.get_mut(*tenant) {
                load.last_claim = last.unwrap_or(0);
            }
        }
        Ok(loads)
    }

    /// Marks a launched or running job as being canceled, for `reason` (empty: by request);
    /// false when it is in neither state.
    pub async fn mark_canceling(
        &self,
        job_id: i64,
        message: &str,
        reason: &str,
        now: &str,
    ) -> Result<bool, TrainingError> {
        let updated = sqlx::query(
            "UPDATE jobs SET canceling = 1, message = $1, updated_at = $2, cancel_reason = $6 \
             WHERE job_id = $3 AND status IN ($4, $5)",
        )
        .bind(message)
        .bind(now)
        .bind(job_id)
        .bind(JobStatus::Launch.number())
        .bind(JobStatus::Running.number())
        .bind(reason)
        .execute(&self.db.pool)
        .timed("update")
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// A page of jobs in id order, optionally only some states and only some ids (one `IN`
    /// list each), with the total count.
    pub async fn list(
        &self,
        tenant: &str,
        statuses: &[JobStatus],
        job_ids: &[i64],
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Job>, i64), TrainingError> {
        let mut filter = status_filter(statuses.iter().map(|s| s.number()));
        filter.push_str(&id_filter(job_ids));
        let total: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM jobs WHERE tenant = $1{filter}"
        )))
        .bind(tenant)
        .fetch_one(&self.db.pool)
        .timed("select")
        .await?
        .try_get("n")?;
        let limit = if limit == 0 { i64::MAX } else { limit };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE tenant = $1{filter} ORDER BY job_id LIMIT $2 OFFSET $3"
        )))
        .bind(tenant)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        let jobs = rows.iter().map(decode).collect::<Result<_, _>>()?;
        Ok((jobs, total))
    }

    /// Queued jobs, oldest first.
    pub async fn queued(&self, limit: i64) -> Result<Vec<Job>, TrainingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE status = $1 ORDER BY job_id LIMIT $2"
        )))
        .bind(JobStatus::Queuing.number())
        .bind(limit)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter().map(decode).collect()
    }

    /// A job of any tenant (for the service's own bookkeeping).
    pub async fn get_by_id(&self, job_id: i64) -> Result<Job, TrainingError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE job_id = $1"
        )))
        .bind(job_id)
        .fetch_optional(&self.db.pool)
        .timed("select")
        .await?
        .ok_or(TrainingError::JobNotFound(job_id))?;
        decode(&row)
    }

    /// (queued, launched or running) job counts, for the gauges.
    pub async fn counts(&self) -> Result<(i64, i64), TrainingError> {
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN status = $1 THEN 1 ELSE 0 END), 0) AS queued, \
               COALESCE(SUM(CASE WHEN status IN ($2, $3) THEN 1 ELSE 0 END), 0) AS active \
             FROM jobs WHERE status IN ($1, $2, $3)",
        )
        .bind(JobStatus::Queuing.number())
        .bind(JobStatus::Launch.number())
        .bind(JobStatus::Running.number())
        .fetch_one(&self.db.pool)
        .timed("select")
        .await?;
        Ok((row.try_get("queued")?, row.try_get("active")?))
    }

    /// Jobs a backend is (or was, before a restart) running.
    pub async fn active(&self) -> Result<Vec<Job>, TrainingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE status IN ($1, $2) ORDER BY job_id"
        )))
        .bind(JobStatus::Launch.number())
        .bind(JobStatus::Running.number())
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Moves a queued job to `launch` if fewer than `limit` jobs are active and its tenant is
    /// under `quota`; one transaction, serialized across replicas, so a job is claimed exactly
    /// once and no limit is passed.
    pub async fn claim(
        &self,
        job: &Job,
        limit: i64,
        quota: &Quota,
        now: &str,
        now_ms: i64,
    ) -> Result<Claim, TrainingError> {
        let mut tx = self.db.pool.begin().await?;
        if self.db.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CLAIM_LOCK)
                .execute(&mut *tx)
                .timed("select")
                .await?;
            let locked = sqlx::query(
                "SELECT job_id FROM jobs WHERE job_id = $1 AND status = $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(job.job_id)
            .bind(JobStatus::Queuing.number())
            .fetch_optional(&mut *tx)
            .timed("select")
            .await?;
            if locked.is_none() {
                return Ok(Claim::Gone);
            }
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, \
               COALESCE(SUM(CASE WHEN tenant = $3 THEN 1 ELSE 0 END), 0) AS own, \
               CAST(COALESCE(SUM(CASE WHEN tenant = $3 THEN gpus ELSE 0 END), 0) AS BIGINT) AS own_gpus \
             FROM jobs WHERE status IN ($1, $2)",
        )
        .bind(JobStatus::Launch.number())
        .bind(JobStatus::Running.number())
        .bind(&job.tenant)
        .fetch_one(&mut *tx)
        .timed("select")
        .await?;
        let active: i64 = row.try_get("n")?;
        if active >= limit {
            return Ok(Claim::AtLimit);
        }
        let load = TenantLoad {
            active: row.try_get("own")?,
            gpus: row.try_get("own_gpus")?,
            last_claim: 0,
        };
        if quota_wait(quota, &load, i64::from(job.spec.resources.gpus)).is_some() {
            return Ok(Claim::Quota);
        }
        let seq: i64 = sqlx::query("SELECT COALESCE(MAX(claim_seq), 0) + 1 AS s FROM jobs")
            .fetch_one(&mut *tx)
            .timed("select")
            .await?
            .try_get("s")?;
        let updated = sqlx::query(
            "UPDATE jobs SET status = $1, message = 'launching the trainer', updated_at = $2, \
             claim_seq = $3, claimed_ms = $4 WHERE job_id = $5 AND status = $6",
        )
        .bind(JobStatus::Launch.number())
        .bind(now)
        .bind(seq)
        .bind(now_ms)
        .bind(job.job_id)
        .bind(JobStatus::Queuing.number())
        .execute(&mut *tx)
        .timed("update")
        .await?;
        tx.commit().timed("transaction").await?;
        Ok(if updated.rows_affected() == 1 {
            Claim::Claimed
        } else {
            Claim::Gone
        })
    }

    /// Moves a job from one of `from` to `to`; false when it was in none of them.
    pub async fn transition(
        &self,
        job_id: i64,
        from: &[JobStatus],
        to: JobStatus,
        message: &str,
        backend_ref: Option<&str>,
        now: &str,
    ) -> Result<bool, TrainingError> {
        let from: Vec<String> = from.iter().map(|s| s.number().to_string()).collect();
        let set_ref = if backend_ref.is_some() {
            ", backend_ref = $5"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE jobs SET status = $1, message = $2, updated_at = $3{set_ref} \
             WHERE job_id = $4 AND status IN ({})",
            from.join(",")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to.number())
            .bind(message)
            .bind(now)
            .bind(job_id);
        if let Some(reference) = backend_ref {
            query = query.bind(reference);
        }
        Ok(query
            .execute(&self.db.pool)
            .timed("update")
            .await?
            .rows_affected()
            == 1)
    }
}

/// The INSERT of a queued job, returning its id.
fn insert_job<'q>(
    tenant: &'q str,
    spec: &JobSpec,
    backend: &'q str,
    now: &'q str,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>, TrainingError> {
    let metadata = to_json(spec)?;
    Ok(sqlx::query(
        "INSERT INTO jobs (tenant, status, message, metadata, backend, backend_ref, \
         created_at, updated_at, priority, gpus) \
         VALUES ($1, $2, '', $3, $4, '', $5, $5, $6, $7) RETURNING job_id",
    )
    .bind(tenant)
    .bind(JobStatus::Queuing.number())
    .bind(metadata)
    .bind(backend)
    .bind(now)
    .bind(spec.priority.rank())
    .bind(i64::from(spec.resources.gpus.max(0))))
}

/// A stored JSON column.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, TrainingError> {
    serde_json::to_string(value).map_err(|err| TrainingError::Corrupt(err.to_string()))
}

/// A stored JSON column read back.
fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TrainingError> {
    serde_json::from_str(text).map_err(|err| TrainingError::Corrupt(err.to_string()))
}

/// ` AND status IN (…)` for a list filter, empty for none: a fixed set of numbers, never
/// client text.
fn status_filter(numbers: impl Iterator<Item = i64>) -> String {
    let numbers: Vec<String> = numbers.map(|n| n.to_string()).collect();
    if numbers.is_empty() {
        String::new()
    } else {
        format!(" AND status IN ({})", numbers.join(","))
    }
}

/// ` AND job_id IN (...)` for a non-empty id list (integers, so inlined like the statuses).
fn id_filter(job_ids: &[i64]) -> String {
    if job_ids.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = job_ids.iter().map(i64::to_string).collect();
    format!(" AND job_id IN ({})", ids.join(","))
}

fn decode(row: &AnyRow) -> Result<Job, TrainingError> {
    let metadata: String = row.try_get("metadata")?;
    Ok(Job {
        job_id: row.try_get("job_id")?,
        tenant: row.try_get("tenant")?,
        status: JobStatus::from_number(row.try_get("status")?)?,
        message: row.try_get("message")?,
        spec: from_json(&metadata)?,
        backend: row.try_get("backend")?,
        backend_ref: row.try_get("backend_ref")?,
        claimed_ms: row.try_get("claimed_ms")?,
        canceling: row.try_get::<i64, _>("canceling")? != 0,
        cancel_reason: row.try_get("cancel_reason")?,
    })
}
