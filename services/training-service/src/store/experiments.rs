//! SQL persistence of experiments and their trials. A trial and its job are inserted in one
//! transaction under the trial's primary key (experiment, number): whichever replica (or
//! restarted process) chooses trial N, only one job is ever queued for it.

use std::collections::BTreeMap;

use automl_common::db::{Timed, is_unique_violation};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{JobStore, from_json, to_json};
use crate::error::TrainingError;
use crate::experiment::{Experiment, ExperimentSpec, ExperimentStatus, Trial};
use crate::model::{JobSpec, JobStatus};

const COLUMNS: &str = "experiment_id, tenant, status, message, spec, created_at, updated_at";

const TRIAL_COLUMNS: &str = "t.trial_number, t.job_id, t.parameters, t.curve, t.settled, \
     t.early_stopped_epoch, j.status, j.message, j.canceling";

/// A trial to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewTrial<'a> {
    /// Its experiment.
    pub experiment_id: i64,
    /// Its number within the experiment.
    pub number: i64,
    /// The values the search chose.
    pub parameters: &'a BTreeMap<String, String>,
    /// Its job.
    pub job: &'a JobSpec,
}

impl JobStore {
    /// Records a running experiment.
    pub async fn insert_experiment(
        &self,
        tenant: &str,
        spec: &ExperimentSpec,
        now: &str,
    ) -> Result<i64, TrainingError> {
        let row = sqlx::query(
            "INSERT INTO experiments (tenant, status, message, spec, created_at, updated_at) \
             VALUES ($1, $2, 'starting', $3, $4, $4) RETURNING experiment_id",
        )
        .bind(tenant)
        .bind(ExperimentStatus::Running.number())
        .bind(to_json(spec)?)
        .bind(now)
        .fetch_one(&self.db.pool)
        .timed("insert")
        .await?;
        Ok(row.try_get("experiment_id")?)
    }

    /// The tenant's experiment.
    pub async fn experiment(
        &self,
        tenant: &str,
        experiment_id: i64,
    ) -> Result<Experiment, TrainingError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM experiments WHERE tenant = $1 AND experiment_id = $2"
        )))
        .bind(tenant)
        .bind(experiment_id)
        .fetch_optional(&self.db.pool)
        .timed("select")
        .await?
        .ok_or(TrainingError::ExperimentNotFound(experiment_id))?;
        decode_experiment(&row)
    }

    /// A page of the tenant's experiments in id order, optionally only some states, with the
    /// total count.
    pub async fn experiments(
        &self,
        tenant: &str,
        statuses: &[ExperimentStatus],
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Experiment>, i64), TrainingError> {
        let filter = super::status_filter(statuses.iter().map(|s| s.number()));
        let total: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM experiments WHERE tenant = $1{filter}"
        )))
        .bind(tenant)
        .fetch_one(&self.db.pool)
        .timed("select")
        .await?
        .try_get("n")?;
        let limit = if limit == 0 { i64::MAX } else { limit };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM experiments WHERE tenant = $1{filter} \
             ORDER BY experiment_id LIMIT $2 OFFSET $3"
        )))
        .bind(tenant)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        let experiments = rows
            .iter()
            .map(decode_experiment)
            .collect::<Result<_, _>>()?;
        Ok((experiments, total))
    }

    /// Experiments the driver has work on: running ones, and ended ones with trials not yet
    /// settled (to cancel, or whose last epochs are still to be read).
    pub async fn experiments_to_drive(&self) -> Result<Vec<Experiment>, TrainingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM experiments e WHERE e.status = $1 OR EXISTS (\
               SELECT 1 FROM trials t WHERE t.experiment_id = e.experiment_id AND t.settled = 0) \
             ORDER BY experiment_id"
        )))
        .bind(ExperimentStatus::Running.number())
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter().map(decode_experiment).collect()
    }

    /// An experiment's trials in order, with their jobs' states.
    pub async fn trials(&self, experiment_id: i64) -> Result<Vec<Trial>, TrainingError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIAL_COLUMNS} FROM trials t JOIN jobs j ON j.job_id = t.job_id \
             WHERE t.experiment_id = $1 ORDER BY t.trial_number"
        )))
        .bind(experiment_id)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter().map(decode_trial).collect()
    }

    /// Queues a trial as a job of `tenant`, in one transaction; `None` when that trial exists
    /// already (another replica, or this one before a restart).
    pub async fn insert_trial(
        &self,
        tenant: &str,
        trial: &NewTrial<'_>,
        backend: &str,
        now: &str,
    ) -> Result<Option<i64>, TrainingError> {
        let NewTrial {
            experiment_id,
            number,
            parameters,
            job,
        } = *trial;
        let mut tx = self.db.pool.begin().await?;
        let job_id: i64 = super::insert_job(tenant, job, backend, now)?
            .fetch_one(&mut *tx)
            .timed("insert")
            .await?
            .try_get("job_id")?;
        let inserted = sqlx::query(
            "INSERT INTO trials (experiment_id, trial_number, job_id, parameters, curve) \
             VALUES ($1, $2, $3, $4, '[]')",
        )
        .bind(experiment_id)
        .bind(number)
        .bind(job_id)
        .bind(to_json(parameters)?)
        .execute(&mut *tx)
        .timed("insert")
        .await;
        match inserted {
            Ok(_) => {}
            Err(err) if is_unique_violation(&err) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
        tx.commit().timed("transaction").await?;
        Ok(Some(job_id))
    }

    /// Records what was read of a trial's epochs.
    pub async fn update_trial(
        &self,
        experiment_id: i64,
        trial: &Trial,
        now: &str,
    ) -> Result<(), TrainingError> {
        sqlx::query(
            "UPDATE trials SET curve = $1, settled = $2, early_stopped_epoch = $3 \
             WHERE experiment_id = $4 AND trial_number = $5",
        )
        .bind(to_json(&trial.curve)?)
        .bind(i64::from(trial.settled))
        .bind(trial.early_stopped_epoch)
        .bind(experiment_id)
        .bind(trial.number)
        .execute(&self.db.pool)
        .timed("update")
        .await?;
        self.touch_experiment(experiment_id, now).await
    }

    /// Marks an experiment changed (watchers of other replicas compare `updated_at`).
    pub async fn touch_experiment(
        &self,
        experiment_id: i64,
        now: &str,
    ) -> Result<(), TrainingError> {
        sqlx::query("UPDATE experiments SET updated_at = $1 WHERE experiment_id = $2")
            .bind(now)
            .bind(experiment_id)
            .execute(&self.db.pool)
            .timed("update")
            .await?;
        Ok(())
    }

    /// Sets a running experiment's message.
    pub async fn experiment_message(
        &self,
        experiment_id: i64,
        message: &str,
        now: &str,
    ) -> Result<(), TrainingError> {
        sqlx::query(
            "UPDATE experiments SET message = $1, updated_at = $2 \
             WHERE experiment_id = $3 AND status = $4 AND message <> $1",
        )
        .bind(message)
        .bind(now)
        .bind(experiment_id)
        .bind(ExperimentStatus::Running.number())
        .execute(&self.db.pool)
        .timed("update")
        .await?;
        Ok(())
    }

    /// Ends a running experiment; false when it had ended already.
    pub async fn end_experiment(
        &self,
        experiment_id: i64,
        status: ExperimentStatus,
        message: &str,
        now: &str,
    ) -> Result<bool, TrainingError> {
        let updated = sqlx::query(
            "UPDATE experiments SET status = $1, message = $2, updated_at = $3 \
             WHERE experiment_id = $4 AND status = $5",
        )
        .bind(status.number())
        .bind(message)
        .bind(now)
        .bind(experiment_id)
        .bind(ExperimentStatus::Running.number())
        .execute(&self.db.pool)
        .timed("update")
        .await?;
        Ok(updated.rows_affected() == 1)
    }
}

fn decode_experiment(row: &AnyRow) -> Result<Experiment, TrainingError> {
    let spec: String = row.try_get("spec")?;
    Ok(Experiment {
        experiment_id: row.try_get("experiment_id")?,
        tenant: row.try_get("tenant")?,
        status: ExperimentStatus::from_number(row.try_get("status")?)?,
        message: row.try_get("message")?,
        spec: from_json(&spec)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn decode_trial(row: &AnyRow) -> Result<Trial, TrainingError> {
    let parameters: String = row.try_get("parameters")?;
    let curve: String = row.try_get("curve")?;
    Ok(Trial {
        number: row.try_get("trial_number")?,
        job_id: row.try_get("job_id")?,
        parameters: from_json(&parameters)?,
        curve: from_json(&curve)?,
        settled: row.try_get::<i64, _>("settled")? != 0,
        early_stopped_epoch: row.try_get("early_stopped_epoch")?,
        status: JobStatus::from_number(row.try_get("status")?)?,
        message: row.try_get("message")?,
        canceling: row.try_get::<i64, _>("canceling")? != 0,
    })
}
