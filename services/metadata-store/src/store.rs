//! SQL persistence of runs, epochs and artifacts, on SQLite or Postgres through `sqlx::Any`.
//! Every write a client can observe is one transaction, so a crash never leaves half of it.

use std::collections::{BTreeMap, HashMap};

use automl_common::db::{Database, Timed, is_unique_violation};
use futures::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::error::MetadataError;
use crate::model::{
    Artifact, ArtifactFilter, Epoch, Lineage, MetricSummary, NewArtifact, NewRun, RUNNING_MESSAGE,
    Run, RunEnd, RunFilter, RunOrder, duration_ms, lower_is_better, metric_number,
};

/// How often CreateArtifact retries when a concurrent writer took the same version number.
const VERSION_RETRIES: usize = 5;
/// Run ids per `IN (...)` list: well under either backend's limit on parameters.
const IN_CHUNK: usize = 500;
/// Rows per multi-row upsert into `run_metrics` (9 parameters each).
const UPSERT_CHUNK: usize = 50;

/// Folds rows into `run_metrics`: `last` moves only to a newer epoch (higher `last_seq`), `best`
/// only to a strictly better value. Merging commutes, so LogEpoch and the startup backfill may
/// write the same rows concurrently.
const UPSERT_METRICS_TAIL: &str = " ON CONFLICT (tenant, run_id, name) DO UPDATE SET \
     last_value = CASE WHEN excluded.last_seq > run_metrics.last_seq \
       THEN excluded.last_value ELSE run_metrics.last_value END, \
     last_epoch = CASE WHEN excluded.last_seq > run_metrics.last_seq \
       THEN excluded.last_epoch ELSE run_metrics.last_epoch END, \
     last_seq = CASE WHEN excluded.last_seq > run_metrics.last_seq \
       THEN excluded.last_seq ELSE run_metrics.last_seq END, \
     best_value = CASE WHEN (run_metrics.lower_is_better <> 0 \
         AND excluded.best_value < run_metrics.best_value) \
       OR (run_metrics.lower_is_better = 0 AND excluded.best_value > run_metrics.best_value) \
       THEN excluded.best_value ELSE run_metrics.best_value END, \
     best_epoch = CASE WHEN (run_metrics.lower_is_better <> 0 \
         AND excluded.best_value < run_metrics.best_value) \
       OR (run_metrics.lower_is_better = 0 AND excluded.best_value > run_metrics.best_value) \
       THEN excluded.best_epoch ELSE run_metrics.best_epoch END";

/// One row to fold into `run_metrics`.
#[derive(Debug, Clone)]
struct MetricRow<'a> {
    tenant: &'a str,
    run_id: &'a str,
    name: &'a str,
    last: f64,
    last_epoch: &'a str,
    last_seq: i64,
    best: f64,
    best_epoch: &'a str,
    lower_is_better: bool,
}

/// A metric's summary while the backfill folds epochs in log order.
#[derive(Debug, Clone)]
struct Folded {
    last: f64,
    last_epoch: String,
    last_seq: i64,
    best: f64,
    best_epoch: String,
    lower_is_better: bool,
}

/// Runs, epochs and artifacts in SQL.
#[derive(Debug, Clone)]
pub struct RunStore {
    db: Database,
}

/// The run columns every read selects.
const RUN_COLUMNS: &str = "run_id, run_name, start_time, end_time, success, ended, message, \
                           dataset_id, version_hash, code_version, base_run_id, \
                           pretrained_model";
/// [`RUN_COLUMNS`] of `runs r`, for queries joining other tables.
const RUN_COLUMNS_R: &str = "r.run_id, r.run_name, r.start_time, r.end_time, r.success, \
                             r.ended, r.message, r.dataset_id, r.version_hash, r.code_version, \
                             r.base_run_id, r.pretrained_model";
/// The artifact columns every read selects.
const ARTIFACT_COLUMNS: &str = "name, version, run_id, bucket, path, algorithm, created_at";

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

    /// Records an epoch of a running run and folds its numeric metrics into the run's
    /// summaries, in one transaction. Logging an epoch again with the same times and metrics
    /// (a retry) changes nothing and succeeds; other content is `EpochExists`.
    pub async fn log_epoch(&self, tenant: &str, epoch: &Epoch) -> Result<(), MetadataError> {
        let metrics = serde_json::to_string(&epoch.metrics)
            .map_err(|err| MetadataError::Corrupt(err.to_string()))?;
        let mut tx = self.db.pool.begin().await?;
        require_running(&mut tx, tenant, &epoch.run_id).await?;
        let inserted = sqlx::query(
            "INSERT INTO epochs (tenant, run_id, epoch_id, start_time, end_time, metrics) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
        )
        .bind(tenant)
        .bind(&epoch.run_id)
        .bind(&epoch.epoch_id)
        .bind(&epoch.start_time)
        .bind(&epoch.end_time)
        .bind(metrics)
        .fetch_one(&mut *tx)
        .timed("insert")
        .await;
        match inserted {
            Ok(row) => {
                let seq: i64 = row.try_get("seq")?;
                let rows: Vec<MetricRow<'_>> = epoch
                    .metrics
                    .iter()
                    .filter_map(|(name, value)| {
                        let value = metric_number(value)?;
                        Some(MetricRow {
                            tenant,
                            run_id: &epoch.run_id,
                            name,
                            last: value,
                            last_epoch: &epoch.epoch_id,
                            last_seq: seq,
                            best: value,
                            best_epoch: &epoch.epoch_id,
                            lower_is_better: lower_is_better(name),
                        })
                    })
                    .collect();
                upsert_metrics(&mut tx, &rows).await?;
            }
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
        let start_time: String =
            sqlx::query("SELECT start_time FROM runs WHERE tenant = $1 AND run_id = $2")
                .bind(tenant)
                .bind(&end.run_id)
                .fetch_one(&mut *tx)
                .timed("select")
                .await?
                .try_get("start_time")?;
        sqlx::query(
            "UPDATE runs SET end_time = $1, success = $2, message = $3, ended = 1, \
             duration_ms = $4 WHERE tenant = $5 AND run_id = $6",
        )
        .bind(&end.end_time)
        .bind(i64::from(end.success))
        .bind(&end.message)
        .bind(duration_ms(&start_time, &end.end_time))
        .bind(tenant)
        .bind(&end.run_id)
        .execute(&mut *tx)
        .timed("update")
        .await?;
        tx.commit().timed("transaction").await?;
        self.get_run(tenant, &end.run_id).await
    }

    /// A run with all its epochs and its metric summaries.
    pub async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Run, MetadataError> {
        let mut run = self.get_run_header(tenant, run_id).await?;
        run.epochs = self
            .epochs_after(tenant, run_id, 0)
            .await?
            .into_iter()
            .map(|(_, epoch)| epoch)
            .collect();
        run.epoch_count = i64::try_from(run.epochs.len()).unwrap_or(i64::MAX);
        run.metric_summaries = self.metric_summaries(tenant, run_id).await?;
        Ok(run)
    }

    /// The run's metric summaries.
    pub async fn metric_summaries(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<BTreeMap<String, MetricSummary>, MetadataError> {
        Ok(self
            .summaries_of(tenant, &[run_id.to_string()])
            .await?
            .remove(run_id)
            .unwrap_or_default())
    }

    /// A run without its epochs and summaries.
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

    /// A page of runs matching `filter` in its order, with the total number of matches. The
    /// ordering and paging happen in SQL; epochs (or their counts) and summaries are then read
    /// for the page's runs only, a few queries per page whatever its size.
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
        let limit = page_limit(filter.limit);
        let rows = match metric_order(&filter.order) {
            Some((column, metric)) => {
                self.runs_by_metric(tenant, filter, limit, column, metric)
                    .await?
            }
            None => {
                let order = run_order(&filter.order, filter.descending);
                let sql = format!(
                    "SELECT {RUN_COLUMNS_R} FROM runs r WHERE r.tenant = $1 \
                     AND ($2 = '' OR r.dataset_id = $2) AND ($3 = '' OR r.run_name = $3) \
                     ORDER BY {order} LIMIT $4 OFFSET $5"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(&filter.dataset_id)
                    .bind(&filter.run_name)
                    .bind(limit)
                    .bind(filter.offset)
                    .fetch_all(&self.db.pool)
                    .timed("select")
                    .await?
            }
        };
        let mut runs = rows.iter().map(decode_run).collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<String> = runs.iter().map(|run| run.run_id.clone()).collect();
        let mut summaries = self.summaries_of(tenant, &ids).await?;
        if filter.without_epochs {
            let counts = self.epoch_counts_of(tenant, &ids).await?;
            for run in &mut runs {
                run.epoch_count = counts.get(&run.run_id).copied().unwrap_or(0);
            }
        } else {
            let mut epochs = self.epochs_of(tenant, &ids).await?;
            for run in &mut runs {
                run.epochs = epochs.remove(&run.run_id).unwrap_or_default();
                run.epoch_count = i64::try_from(run.epochs.len()).unwrap_or(i64::MAX);
            }
        }
        for run in &mut runs {
            run.metric_summaries = summaries.remove(&run.run_id).unwrap_or_default();
        }
        Ok((runs, total))
    }

    /// A page of runs ordered by a metric's `column` (`best_value` or `last_value`): first the
    /// runs that have the metric, walked in the order of the run_metrics index (so a page costs
    /// its own rows, not a sort of every run), then the runs without it in start order. Ties go
    /// by start order in the same direction. (`CROSS JOIN` makes SQLite start from run_metrics;
    /// Postgres plans it as the inner join it is.)
    async fn runs_by_metric(
        &self,
        tenant: &str,
        filter: &RunFilter,
        limit: i64,
        column: &str,
        metric: &str,
    ) -> Result<Vec<AnyRow>, MetadataError> {
        let dir = if filter.descending { " DESC" } else { "" };
        const WITH_METRIC: &str = "FROM run_metrics m CROSS JOIN runs r \
             WHERE r.tenant = m.tenant AND r.run_id = m.run_id AND m.tenant = $1 AND m.name = $4 \
             AND ($2 = '' OR r.dataset_id = $2) AND ($3 = '' OR r.run_name = $3)";
        let sql = format!(
            "SELECT {RUN_COLUMNS_R} {WITH_METRIC} \
             ORDER BY m.{column}{dir}, r.seq{dir} LIMIT $5 OFFSET $6"
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(&filter.dataset_id)
            .bind(&filter.run_name)
            .bind(metric)
            .bind(limit)
            .bind(filter.offset)
            .fetch_all(&self.db.pool)
            .timed("select")
            .await?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        if rows.len() >= wanted {
            return Ok(rows);
        }
        // The page reaches past the runs with the metric: how many there are says where the
        // runs without it start.
        let with: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n {WITH_METRIC}"
        )))
        .bind(tenant)
        .bind(&filter.dataset_id)
        .bind(&filter.run_name)
        .bind(metric)
        .fetch_one(&self.db.pool)
        .timed("select")
        .await?
        .try_get("n")?;
        let rest = limit.saturating_sub(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        let sql = format!(
            "SELECT {RUN_COLUMNS_R} FROM runs r WHERE r.tenant = $1 \
             AND ($2 = '' OR r.dataset_id = $2) AND ($3 = '' OR r.run_name = $3) \
             AND NOT EXISTS (SELECT 1 FROM run_metrics m WHERE m.tenant = r.tenant \
             AND m.run_id = r.run_id AND m.name = $4) \
             ORDER BY r.seq{dir} LIMIT $5 OFFSET $6"
        );
        let without = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(&filter.dataset_id)
            .bind(&filter.run_name)
            .bind(metric)
            .bind(rest)
            .bind((filter.offset - with).max(0))
            .fetch_all(&self.db.pool)
            .timed("select")
            .await?;
        rows.extend(without);
        Ok(rows)
    }

    /// The metric summaries of runs, by run id (runs without numeric metrics are absent).
    async fn summaries_of(
        &self,
        tenant: &str,
        run_ids: &[String],
    ) -> Result<HashMap<String, BTreeMap<String, MetricSummary>>, MetadataError> {
        let mut summaries: HashMap<String, BTreeMap<String, MetricSummary>> = HashMap::new();
        for chunk in run_ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT run_id, name, last_value, last_epoch, best_value, best_epoch, \
                 lower_is_better FROM run_metrics WHERE tenant = $1 AND run_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
            for run_id in chunk {
                query = query.bind(run_id);
            }
            for row in query.fetch_all(&self.db.pool).timed("select").await? {
                let summary = MetricSummary {
                    last: row.try_get("last_value")?,
                    last_epoch: row.try_get("last_epoch")?,
                    best: row.try_get("best_value")?,
                    best_epoch: row.try_get("best_epoch")?,
                    lower_is_better: row.try_get::<i64, _>("lower_is_better")? != 0,
                };
                summaries
                    .entry(row.try_get("run_id")?)
                    .or_default()
                    .insert(row.try_get("name")?, summary);
            }
        }
        Ok(summaries)
    }

    /// The epochs of runs in logging order, by run id.
    async fn epochs_of(
        &self,
        tenant: &str,
        run_ids: &[String],
    ) -> Result<HashMap<String, Vec<Epoch>>, MetadataError> {
        let mut epochs: HashMap<String, Vec<Epoch>> = HashMap::new();
        for chunk in run_ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT run_id, epoch_id, start_time, end_time, metrics FROM epochs \
                 WHERE tenant = $1 AND run_id IN ({}) ORDER BY seq",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
            for run_id in chunk {
                query = query.bind(run_id);
            }
            for row in query.fetch_all(&self.db.pool).timed("select").await? {
                let epoch = decode_epoch(&row)?;
                epochs.entry(epoch.run_id.clone()).or_default().push(epoch);
            }
        }
        Ok(epochs)
    }

    /// The number of epochs of runs, by run id (runs without epochs are absent).
    async fn epoch_counts_of(
        &self,
        tenant: &str,
        run_ids: &[String],
    ) -> Result<HashMap<String, i64>, MetadataError> {
        let mut counts = HashMap::new();
        for chunk in run_ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT run_id, COUNT(*) AS n FROM epochs \
                 WHERE tenant = $1 AND run_id IN ({}) GROUP BY run_id",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
            for run_id in chunk {
                query = query.bind(run_id);
            }
            for row in query.fetch_all(&self.db.pool).timed("select").await? {
                counts.insert(row.try_get("run_id")?, row.try_get("n")?);
            }
        }
        Ok(counts)
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
        let created_at = automl_common::time::now_iso();
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
        .bind(&created_at)
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
            created_at,
        })
    }

    /// The artifact recorded for a run.
    pub async fn get_artifact(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Artifact, MetadataError> {
        let mut conn = self.db.pool.acquire().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE tenant = $1 AND run_id = $2"
        )))
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

    /// A page of artifacts matching `filter`, newest first (ties: higher version first, then
    /// by name), with the total number of matches.
    pub async fn list_artifacts(
        &self,
        tenant: &str,
        filter: &ArtifactFilter,
    ) -> Result<(Vec<Artifact>, i64), MetadataError> {
        let total: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM artifacts WHERE tenant = $1 AND ($2 = '' OR name = $2)",
        )
        .bind(tenant)
        .bind(&filter.name)
        .fetch_one(&self.db.pool)
        .timed("select")
        .await?
        .try_get("n")?;
        let limit = page_limit(filter.limit);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE tenant = $1 \
             AND ($2 = '' OR name = $2) \
             ORDER BY created_at DESC, version DESC, name LIMIT $3 OFFSET $4"
        )))
        .bind(tenant)
        .bind(&filter.name)
        .bind(limit)
        .bind(filter.offset)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        let artifacts = rows.iter().map(decode_artifact).collect::<Result<_, _>>()?;
        Ok((artifacts, total))
    }

    /// Runs the backfills migration 3 left to do (`run_backfills`), each in one transaction
    /// that also deletes its row: a crash repeats it, a concurrent replica skips it.
    pub async fn backfill(&self) -> Result<(), sqlx::Error> {
        self.backfill_run_metrics().await?;
        self.backfill_durations().await
    }

    /// `run_metrics` from every logged epoch, folded in log order exactly as LogEpoch folds.
    async fn backfill_run_metrics(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        if !claim_backfill(&mut tx, "run_metrics").await? {
            return Ok(());
        }
        let mut folded: BTreeMap<(String, String, String), Folded> = BTreeMap::new();
        let mut epochs = 0_u64;
        {
            let mut rows = sqlx::query(
                "SELECT seq, tenant, run_id, epoch_id, metrics FROM epochs ORDER BY seq",
            )
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                epochs += 1;
                let seq: i64 = row.try_get("seq")?;
                let tenant: String = row.try_get("tenant")?;
                let run_id: String = row.try_get("run_id")?;
                let epoch_id: String = row.try_get("epoch_id")?;
                let json: String = row.try_get("metrics")?;
                let Ok(metrics) = serde_json::from_str::<BTreeMap<String, String>>(&json) else {
                    tracing::warn!(%tenant, %run_id, %epoch_id, "unreadable epoch metrics skipped");
                    continue;
                };
                for (name, value) in metrics {
                    let Some(value) = metric_number(&value) else {
                        continue;
                    };
                    let lower = lower_is_better(&name);
                    let key = (tenant.clone(), run_id.clone(), name);
                    match folded.get_mut(&key) {
                        None => {
                            folded.insert(
                                key,
                                Folded {
                                    last: value,
                                    last_epoch: epoch_id.clone(),
                                    last_seq: seq,
                                    best: value,
                                    best_epoch: epoch_id.clone(),
                                    lower_is_better: lower,
                                },
                            );
                        }
                        Some(summary) => {
                            if seq > summary.last_seq {
                                summary.last = value;
                                summary.last_epoch.clone_from(&epoch_id);
                                summary.last_seq = seq;
                            }
                            let better = if summary.lower_is_better {
                                value < summary.best
                            } else {
                                value > summary.best
                            };
                            if better {
                                summary.best = value;
                                summary.best_epoch.clone_from(&epoch_id);
                            }
                        }
                    }
                }
            }
        }
        let rows: Vec<MetricRow<'_>> = folded
            .iter()
            .map(|((tenant, run_id, name), summary)| MetricRow {
                tenant,
                run_id,
                name,
                last: summary.last,
                last_epoch: &summary.last_epoch,
                last_seq: summary.last_seq,
                best: summary.best,
                best_epoch: &summary.best_epoch,
                lower_is_better: summary.lower_is_better,
            })
            .collect();
        upsert_metrics(&mut tx, &rows).await?;
        tx.commit().timed("transaction").await?;
        tracing::info!(epochs, metrics = rows.len(), "run metrics backfilled");
        Ok(())
    }

    /// `runs.duration_ms` of the runs that ended before it existed.
    async fn backfill_durations(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        if !claim_backfill(&mut tx, "durations").await? {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT tenant, run_id, start_time, end_time FROM runs \
             WHERE ended = 1 AND duration_ms IS NULL",
        )
        .fetch_all(&mut *tx)
        .timed("select")
        .await?;
        let mut updated = 0_u64;
        for row in &rows {
            let start: String = row.try_get("start_time")?;
            let end: String = row.try_get("end_time")?;
            let Some(duration) = duration_ms(&start, &end) else {
                continue;
            };
            sqlx::query("UPDATE runs SET duration_ms = $1 WHERE tenant = $2 AND run_id = $3")
                .bind(duration)
                .bind(row.try_get::<String, _>("tenant")?)
                .bind(row.try_get::<String, _>("run_id")?)
                .execute(&mut *tx)
                .timed("update")
                .await?;
            updated += 1;
        }
        tx.commit().timed("transaction").await?;
        tracing::info!(runs = updated, "run durations backfilled");
        Ok(())
    }
}

/// Takes the backfill `name` in `tx`: true when it was still to do (its row is deleted with
/// the transaction's commit). A concurrent claimer waits for this transaction, then finds none.
async fn claim_backfill(
    tx: &mut Transaction<'static, Any>,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM run_backfills WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .timed("delete")
        .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Folds `rows` (one per run and metric) into `run_metrics`.
async fn upsert_metrics(
    tx: &mut Transaction<'static, Any>,
    rows: &[MetricRow<'_>],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(1 + i * 9, 9)))
            .collect();
        let sql = format!(
            "INSERT INTO run_metrics (tenant, run_id, name, last_value, last_epoch, last_seq, \
             best_value, best_epoch, lower_is_better) VALUES {}{UPSERT_METRICS_TAIL}",
            values.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.tenant)
                .bind(row.run_id)
                .bind(row.name)
                .bind(row.last)
                .bind(row.last_epoch)
                .bind(row.last_seq)
                .bind(row.best)
                .bind(row.best_epoch)
                .bind(i64::from(row.lower_is_better));
        }
        query.execute(&mut **tx).timed("insert").await?;
    }
    Ok(())
}

/// `$first, $first+1, …`: `count` numbered parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ORDER BY list of a ListRuns order that is not by a metric ([`metric_order`]). Ties go
/// by start order in the same direction; runs without the key sort last in both directions.
fn run_order(order: &RunOrder, descending: bool) -> String {
    let dir = if descending { " DESC" } else { "" };
    match order {
        RunOrder::Start | RunOrder::Last(_) | RunOrder::Best(_) => format!("r.seq{dir}"),
        RunOrder::Name => format!("r.run_name{dir}, r.seq{dir}"),
        RunOrder::StartTime => format!("r.start_time{dir}, r.seq{dir}"),
        RunOrder::Duration => format!("(r.duration_ms IS NULL), r.duration_ms{dir}, r.seq{dir}"),
        RunOrder::State => format!(
            "CASE WHEN r.ended = 0 THEN 0 WHEN r.success <> 0 THEN 1 ELSE 2 END{dir}, r.seq{dir}"
        ),
    }
}

/// A page size as SQL's LIMIT takes it: 0 means every row.
fn page_limit(limit: i64) -> i64 {
    if limit == 0 { i64::MAX } else { limit }
}

/// The run_metrics column and metric name of an order by a metric.
fn metric_order(order: &RunOrder) -> Option<(&'static str, &str)> {
    match order {
        RunOrder::Last(metric) => Some(("last_value", metric)),
        RunOrder::Best(metric) => Some(("best_value", metric)),
        _ => None,
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
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE tenant = $1 AND run_id = $2"
    )))
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
        epoch_count: 0,
        metric_summaries: BTreeMap::new(),
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
        created_at: row.try_get("created_at")?,
    })
}
