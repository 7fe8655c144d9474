//! SQL persistence of runs, epochs and artifacts, on SQLite or Postgres through `sqlx::Any`.
//! Every write a client can observe is one transaction, so a crash never leaves half of it.

use std::collections::BTreeMap;

use automl_common::db::{Database, Timed, is_unique_violation};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::error::MetadataError;
use crate::model::{
    Artifact, Epoch, Lineage, NewArtifact, NewRun, RUNNING_MESSAGE, Run, RunEnd, RunFilter,
};

/// How often CreateArtifact retries when a concurrent writer took the same version number.
const VERSION_RETRIES: usize = 5;

/// Runs, epochs and artifacts in SQL.
#[derive(Debug, Clone)]
pub struct RunStore {
    db: Database,
}

/// The run columns every read selects.
const RUN_COLUMNS: &str = "run_id, run_name, start_time, end_time, success, ended, message, \
                           dataset_id, version_hash, code_version, base_run_id, \
                           pretrained_model";

impl RunStore {
    /// A store over an open, migrated database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Records a new run; `RunExists` if the id is taken, unless by this very run: a retried
    /// LogRunStart (same name, start time and lineage, not ended) returns the run.
    pub async fn start_run(&self, tenant: &str, run: &NewRun) -> Result<Run, MetadataError> {
        let result = sqlx::query(
            "INSERT INTO runs (tenant, run_id, run_name, start_time, message, dataset_id, \
             version_hash, code_version, base_run_id, pretrained_model) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(tenant)
        .bind(&run.run_id)
        .bind(&run.run_name)
        .bind(&run.start_time)
        .bind(RUNNING_MESSAGE)
        .bind(&run.lineage.dataset_id)
        .bind(&run.lineage.version_hash)
        .bind(&run.lineage.code_version)
        .bind(&run.lineage.base_run_id)
        .bind(&run.lineage.pretrained_model)
        .execute(&self.db.pool)
        .timed("insert")
        .await;
        match result {
            Ok(_) => self.get_run(tenant, &run.run_id).await,
            Err(err) if is_unique_violation(&err) => {
                let existing = self.get_run(tenant, &run.run_id).await?;
                let same = !existing.ended
                    && existing.run_name == run.run_name
                    && existing.start_time == run.start_time
                    && existing.lineage == run.lineage;
                if same {
                    Ok(existing)
                } else {
                    Err(MetadataError::RunExists(run.run_id.clone()))
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Records an epoch of a running run. Logging an epoch again with the same times and
    /// metrics (a retry) changes nothing and succeeds; other content is `EpochExists`.
    pub async fn log_epoch(&self, tenant: &str, epoch: &Epoch) -> Result<(), MetadataError> {
        let metrics = serde_json::to_string(&epoch.metrics)
            .map_err(|err| MetadataError::Corrupt(err.to_string()))?;
        let mut tx = self.db.pool.begin().await?;
        require_running(&mut tx, tenant, &epoch.run_id).await?;
        let inserted = sqlx::query(
            "INSERT INTO epochs (tenant, run_id, epoch_id, start_time, end_time, metrics) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(&epoch.run_id)
        .bind(&epoch.epoch_id)
        .bind(&epoch.start_time)
        .bind(&epoch.end_time)
        .bind(metrics)
        .execute(&mut *tx)
        .timed("insert")
        .await;
        match inserted {
            Ok(_) => {}
            Err(err) if is_unique_violation(&err) => {
                // The failed insert aborted the transaction (on Postgres): read outside it.
                drop(tx);
                let existing = self
                    .get_epoch(tenant, &epoch.run_id, &epoch.epoch_id)
                    .await?;
                return if existing.as_ref() == Some(epoch) {
                    Ok(())
                } else {
                    Err(MetadataError::EpochExists {
                        run_id: epoch.run_id.clone(),
                        epoch_id: epoch.epoch_id.clone(),
                    })
                };
            }
            Err(err) => return Err(err.into()),
        }
        tx.commit().timed("transaction").await?;
        Ok(())
    }

    /// One epoch of a run, if logged.
    async fn get_epoch(
        &self,
        tenant: &str,
        run_id: &str,
        epoch_id: &str,
    ) -> Result<Option<Epoch>, MetadataError> {
        let row = sqlx::query(
            "SELECT run_id, epoch_id, start_time, end_time, metrics FROM epochs \
             WHERE tenant = $1 AND run_id = $2 AND epoch_id = $3",
        )
        .bind(tenant)
        .bind(run_id)
        .bind(epoch_id)
        .fetch_optional(&self.db.pool)
        .timed("select")
        .await?;
        row.as_ref().map(decode_epoch).transpose()
    }

    /// Ends a running run. Ending it again with the same outcome and message (a retry)
    /// returns the run as it ended; any other end of an ended run is `RunEnded`.
    pub async fn end_run(&self, tenant: &str, end: &RunEnd) -> Result<Run, MetadataError> {
        let mut tx = self.db.pool.begin().await?;
        match require_running(&mut tx, tenant, &end.run_id).await {
            Ok(()) => {}
            Err(MetadataError::RunEnded(run_id)) => {
                drop(tx);
                let run = self.get_run(tenant, &end.run_id).await?;
                return if run.success == end.success && run.message == end.message {
                    Ok(run)
                } else {
                    Err(MetadataError::RunEnded(run_id))
                };
            }
            Err(err) => return Err(err),
        }
        sqlx::query(
            "UPDATE runs SET end_time = $1, success = $2, message = $3, ended = 1 \
             WHERE tenant = $4 AND run_id = $5",
        )
        .bind(&end.end_time)
        .bind(i64::from(end.success))
        .bind(&end.message)
        .bind(tenant)
        .bind(&end.run_id)
        .execute(&mut *tx)
        .timed("update")
        .await?;
        tx.commit().timed("transaction").await?;
        self.get_run(tenant, &end.run_id).await
    }

    /// A run with all its epochs.
    pub async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Run, MetadataError> {
        let mut run = self.get_run_header(tenant, run_id).await?;
        run.epochs = self
            .epochs_after(tenant, run_id, 0)
            .await?
            .into_iter()
            .map(|(_, epoch)| epoch)
            .collect();
        Ok(run)
    }

    /// A run without its epochs.
    pub async fn get_run_header(&self, tenant: &str, run_id: &str) -> Result<Run, MetadataError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = $1 AND run_id = $2"
        )))
        .bind(tenant)
        .bind(run_id)
        .fetch_optional(&self.db.pool)
        .timed("select")
        .await?
        .ok_or_else(|| MetadataError::RunNotFound(run_id.to_string()))?;
        decode_run(&row)
    }

    /// The run's epochs logged after position `after_seq`, with their positions, in order.
    pub async fn epochs_after(
        &self,
        tenant: &str,
        run_id: &str,
        after_seq: i64,
    ) -> Result<Vec<(i64, Epoch)>, MetadataError> {
        let rows = sqlx::query(
            "SELECT seq, run_id, epoch_id, start_time, end_time, metrics FROM epochs \
             WHERE tenant = $1 AND run_id = $2 AND seq > $3 ORDER BY seq",
        )
        .bind(tenant)
        .bind(run_id)
        .bind(after_seq)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<i64, _>("seq")?, decode_epoch(row)?)))
            .collect()
    }

    /// A page of runs matching `filter`, in start order, with the total number of matches.
    pub async fn list_runs(
        &self,
        tenant: &str,
        filter: &RunFilter,
    ) -> Result<(Vec<Run>, i64), MetadataError> {
        let total: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM runs WHERE tenant = $1 \
             AND ($2 = '' OR dataset_id = $2) AND ($3 = '' OR run_name = $3)",
        )
        .bind(tenant)
        .bind(&filter.dataset_id)
        .bind(&filter.run_name)
        .fetch_one(&self.db.pool)
        .timed("select")
        .await?
        .try_get("n")?;
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            filter.limit
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = $1 \
             AND ($2 = '' OR dataset_id = $2) AND ($3 = '' OR run_name = $3) \
             ORDER BY seq LIMIT $4 OFFSET $5"
        )))
        .bind(tenant)
        .bind(&filter.dataset_id)
        .bind(&filter.run_name)
        .bind(limit)
        .bind(filter.offset)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut run = decode_run(row)?;
            run.epochs = self
                .epochs_after(tenant, &run.run_id, 0)
                .await?
                .into_iter()
                .map(|(_, epoch)| epoch)
                .collect();
            runs.push(run);
        }
        Ok((runs, total))
    }

    /// Records the run's artifact with the next version of its name. Recording the same
    /// artifact again returns the existing record; a different one is `ArtifactConflict`.
    pub async fn create_artifact(
        &self,
        tenant: &str,
        artifact: &NewArtifact,
    ) -> Result<Artifact, MetadataError> {
        for _ in 0..VERSION_RETRIES {
            match self.try_create_artifact(tenant, artifact).await {
                Err(MetadataError::Db(err)) if is_unique_violation(&err) => continue,
                other => return other,
            }
        }
        Err(MetadataError::ArtifactConflict(artifact.run_id.clone()))
    }

    async fn try_create_artifact(
        &self,
        tenant: &str,
        artifact: &NewArtifact,
    ) -> Result<Artifact, MetadataError> {
        let mut tx = self.db.pool.begin().await?;
        let exists = sqlx::query("SELECT 1 AS one FROM runs WHERE tenant = $1 AND run_id = $2")
            .bind(tenant)
            .bind(&artifact.run_id)
            .fetch_optional(&mut *tx)
            .timed("select")
            .await?;
        if exists.is_none() {
            return Err(MetadataError::RunNotFound(artifact.run_id.clone()));
        }
        if let Some(existing) = artifact_of_run(&mut tx, tenant, &artifact.run_id).await? {
            let same = existing.name == artifact.name
                && existing.bucket == artifact.bucket
                && existing.path == artifact.path
                && existing.algorithm == artifact.algorithm;
            return if same {
                Ok(existing)
            } else {
                Err(MetadataError::ArtifactConflict(artifact.run_id.clone()))
            };
        }
        let version: i64 = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM artifacts \
             WHERE tenant = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(&artifact.name)
        .fetch_one(&mut *tx)
        .timed("select")
        .await?
        .try_get("next")?;
        sqlx::query(
            "INSERT INTO artifacts (tenant, name, version, run_id, bucket, path, algorithm, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(tenant)
        .bind(&artifact.name)
        .bind(version)
        .bind(&artifact.run_id)
        .bind(&artifact.bucket)
        .bind(&artifact.path)
        .bind(&artifact.algorithm)
        .bind(automl_common::time::now_iso())
        .execute(&mut *tx)
        .timed("insert")
        .await?;
        tx.commit().timed("transaction").await?;
        Ok(Artifact {
            name: artifact.name.clone(),
            version,
            run_id: artifact.run_id.clone(),
            bucket: artifact.bucket.clone(),
            path: artifact.path.clone(),
            algorithm: artifact.algorithm.clone(),
        })
    }

    /// The artifact recorded for a run.
    pub async fn get_artifact(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Artifact, MetadataError> {
        let mut conn = self.db.pool.acquire().await?;
        let row = sqlx::query(
            "SELECT name, version, run_id, bucket, path, algorithm FROM artifacts \
             WHERE tenant = $1 AND run_id = $2",
        )
        .bind(tenant)
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .timed("select")
        .await?;
        match row {
            Some(row) => decode_artifact(&row),
            None => Err(MetadataError::ArtifactNotFound(run_id.to_string())),
        }
    }
}

async fn require_running(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    run_id: &str,
) -> Result<(), MetadataError> {
    let row = sqlx::query("SELECT ended FROM runs WHERE tenant = $1 AND run_id = $2")
        .bind(tenant)
        .bind(run_id)
        .fetch_optional(&mut **tx)
        .timed("select")
        .await?
        .ok_or_else(|| MetadataError::RunNotFound(run_id.to_string()))?;
    if row.try_get::<i64, _>("ended")? != 0 {
        return Err(MetadataError::RunEnded(run_id.to_string()));
    }
    Ok(())
}

async fn artifact_of_run(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    run_id: &str,
) -> Result<Option<Artifact>, MetadataError> {
    let row = sqlx::query(
        "SELECT name, version, run_id, bucket, path, algorithm FROM artifacts \
         WHERE tenant = $1 AND run_id = $2",
    )
    .bind(tenant)
    .bind(run_id)
    .fetch_optional(&mut **tx)
    .timed("select")
    .await?;
    row.as_ref().map(decode_artifact).transpose()
}

fn decode_run(row: &AnyRow) -> Result<Run, MetadataError> {
    Ok(Run {
        run_id: row.try_get("run_id")?,
        run_name: row.try_get("run_name")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        success: row.try_get::<i64, _>("success")? != 0,
        ended: row.try_get::<i64, _>("ended")? != 0,
        message: row.try_get("message")?,
        lineage: Lineage {
            dataset_id: row.try_get("dataset_id")?,
            version_hash: row.try_get("version_hash")?,
            code_version: row.try_get("code_version")?,
            base_run_id: row.try_get("base_run_id")?,
            pretrained_model: row.try_get("pretrained_model")?,
        },
        epochs: Vec::new(),
    })
}

fn decode_epoch(row: &AnyRow) -> Result<Epoch, MetadataError> {
    let metrics_json: String = row.try_get("metrics")?;
    let metrics: BTreeMap<String, String> = serde_json::from_str(&metrics_json)
        .map_err(|err| MetadataError::Corrupt(format!("epoch metrics: {err}")))?;
    Ok(Epoch {
        run_id: row.try_get("run_id")?,
        epoch_id: row.try_get("epoch_id")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        metrics,
    })
}

fn decode_artifact(row: &AnyRow) -> Result<Artifact, MetadataError> {
    Ok(Artifact {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        run_id: row.try_get("run_id")?,
        bucket: row.try_get("bucket")?,
        path: row.try_get("path")?,
        algorithm: row.try_get("algorithm")?,
    })
}
