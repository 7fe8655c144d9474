//! SQL persistence of jobs. Claiming a job is one transaction that also enforces the
//! concurrency limit, so replicas sharing a Postgres database never launch a job twice.

use automl_common::db::{Backend, Database, Timed};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::TrainingError;
use crate::model::{Job, JobSpec, JobStatus};

/// Key of the Postgres advisory lock that serializes claims across replicas.
const CLAIM_LOCK: i64 = 0x6175_746f_6d6c;

/// Jobs in SQL.
#[derive(Debug, Clone)]
pub struct JobStore {
    db: Database,
}

const COLUMNS: &str = "job_id, tenant, status, message, metadata, backend, backend_ref";

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
        let metadata =
            serde_json::to_string(spec).map_err(|err| TrainingError::Corrupt(err.to_string()))?;
        let row = sqlx::query(
            "INSERT INTO jobs (tenant, status, message, metadata, backend, backend_ref, \
             created_at, updated_at) VALUES ($1, $2, '', $3, $4, '', $5, $5) RETURNING job_id",
        )
        .bind(tenant)
        .bind(JobStatus::Queuing.number())
        .bind(metadata)
        .bind(backend)
        .bind(now)
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

    /// Queued jobs ahead of `job_id`.
    pub async fn position(&self, job_id: i64) -> Result<i64, TrainingError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE status = $1 AND job_id < $2")
            .bind(JobStatus::Queuing.number())
            .bind(job_id)
            .fetch_one(&self.db.pool)
            .timed("select")
            .await?;
        Ok(row.try_get("n")?)
    }

    /// A page of jobs in id order, optionally only some states, with the total count.
    pub async fn list(
        &self,
        tenant: &str,
        statuses: &[JobStatus],
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Job>, i64), TrainingError> {
        // The filter is a fixed set of numbers, never client text.
        let filter = if statuses.is_empty() {
            String::new()
        } else {
            let numbers: Vec<String> = statuses.iter().map(|s| s.number().to_string()).collect();
            format!(" AND status IN ({})", numbers.join(","))
        };
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

    /// Moves a queued job to `launch` if fewer than `limit` jobs are active; one transaction,
    /// serialized across replicas, so a job is claimed exactly once.
    pub async fn claim(&self, job_id: i64, limit: i64, now: &str) -> Result<bool, TrainingError> {
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
            .bind(job_id)
            .bind(JobStatus::Queuing.number())
            .fetch_optional(&mut *tx)
            .timed("select")
            .await?;
            if locked.is_none() {
                return Ok(false);
            }
        }
        let active: i64 = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE status IN ($1, $2)")
            .bind(JobStatus::Launch.number())
            .bind(JobStatus::Running.number())
            .fetch_one(&mut *tx)
            .timed("select")
            .await?
            .try_get("n")?;
        if active >= limit {
            return Ok(false);
        }
        let updated = sqlx::query(
            "UPDATE jobs SET status = $1, message = 'launching the trainer', updated_at = $2 \
             WHERE job_id = $3 AND status = $4",
        )
        .bind(JobStatus::Launch.number())
        .bind(now)
        .bind(job_id)
        .bind(JobStatus::Queuing.number())
        .execute(&mut *tx)
        .timed("update")
        .await?;
        tx.commit().timed("transaction").await?;
        Ok(updated.rows_affected() == 1)
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

fn decode(row: &AnyRow) -> Result<Job, TrainingError> {
    let metadata: String = row.try_get("metadata")?;
    Ok(Job {
        job_id: row.try_get("job_id")?,
        tenant: row.try_get("tenant")?,
        status: JobStatus::from_number(row.try_get("status")?)?,
        message: row.try_get("message")?,
        spec: serde_json::from_str(&metadata)
            .map_err(|err| TrainingError::Corrupt(err.to_string()))?,
        backend: row.try_get("backend")?,
        backend_ref: row.try_get("backend_ref")?,
    })
}
