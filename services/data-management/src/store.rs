//! SQL persistence of datasets, commits and snapshots (SQLite or Postgres through `sqlx::Any`).
//!
//! An ingest first reserves its commit as a `pending` row (invisible to every read) holding a
//! lease it renews while it runs, writes its objects, then flips the row to `committed` in one
//! transaction. A failed ingest deletes its reservation; one whose process died is swept when
//! its lease expires. So readers only ever see complete commits.

use std::collections::BTreeMap;

use automl_common::db::{Database, Timed, is_unique_violation};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::DataError;
use crate::model::{Commit, Dataset, DatasetType, Part, Snapshot, SnapshotState, Tag};

const COMMITTED: &str = "committed";
const PENDING: &str = "pending";
/// Retries when concurrent writers on Postgres took the same id.
const RETRIES: usize = 20;

/// A reserved (pending) commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The tenant owning the dataset.
    pub tenant: String,
    /// The dataset.
    pub dataset_id: i64,
    /// The reserved commit id.
    pub commit_id: i64,
}

/// The metadata of a commit as it becomes visible.
#[derive(Debug, Clone)]
pub struct CommitRecord<'a> {
    /// Commit message.
    pub message: &'a str,
    /// Tags.
    pub tags: &'a [Tag],
    /// Object prefix of its files.
    pub path: &'a str,
    /// Statistics.
    pub statistics: &'a BTreeMap<String, String>,
    /// Content digest.
    pub content_digest: &'a str,
    /// Commit time.
    pub now: &'a str,
}

/// Datasets, commits and snapshots in SQL.
#[derive(Debug, Clone)]
pub struct DataStore {
    db: Database,
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, DataError> {
    serde_json::to_string(value).map_err(|err| DataError::Corrupt(err.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, DataError> {
    serde_json::from_str(text).map_err(|err| DataError::Corrupt(err.to_string()))
}

impl DataStore {
    /// A store over an open, migrated database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Creates an invisible dataset with commit 1 reserved.
    pub async fn create_pending_dataset(
        &self,
        tenant: &str,
        name: &str,
        description: &str,
        dataset_type: DatasetType,
        lease_until: i64,
        now: &str,
    ) -> Result<Reservation, DataError> {
        let mut tx = self.db.pool.begin().await?;
        let dataset_id: i64 = sqlx::query(
            "INSERT INTO datasets (tenant, name, description, dataset_type, state, created_at, \
             last_updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING dataset_id",
        )
        .bind(tenant)
        .bind(name)
        .bind(description)
        .bind(i64::from(dataset_type.number()))
        .bind(PENDING)
        .bind(now)
        .fetch_one(&mut *tx)
        .timed("insert")
        .await?
        .try_get("dataset_id")?;
        insert_pending_commit(&mut tx, tenant, dataset_id, 1, lease_until).await?;
        tx.commit().timed("transaction").await?;
        Ok(Reservation {
            tenant: tenant.to_string(),
            dataset_id,
            commit_id: 1,
        })
    }

    /// Reserves the next commit id of a visible dataset.
    pub async fn reserve_commit(
        &self,
        tenant: &str,
        dataset_id: i64,
        lease_until: i64,
    ) -> Result<(Reservation, DatasetType), DataError> {
        for _ in 0..RETRIES {
            let mut tx = self.db.pool.begin().await?;
            let dataset_type = visible_dataset_type(&mut tx, tenant, dataset_id).await?;
            let commit_id: i64 = sqlx::query(
                "SELECT COALESCE(MAX(commit_id), 0) + 1 AS next FROM commits WHERE dataset_id = $1",
            )
            .bind(dataset_id)
            .fetch_one(&mut *tx)
            .timed("select")
            .await?
            .try_get("next")?;
            match insert_pending_commit(&mut tx, tenant, dataset_id, commit_id, lease_until).await {
                Ok(()) => {}
                Err(DataError::Db(err)) if is_unique_violation(&err) => continue,
                Err(err) => return Err(err),
            }
            match tx.commit().timed("transaction").await {
                Ok(()) => {
                    let reservation = Reservation {
                        tenant: tenant.to_string(),
                        dataset_id,
                        commit_id,
                    };
                    return Ok((reservation, dataset_type));
                }
                Err(err) if is_unique_violation(&err) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(DataError::FailedPrecondition(format!(
            "dataset {dataset_id} is too busy, try again"
        )))
    }

    /// Extends a reservation's lease.
    pub async fn renew_lease(
        &self,
        reservation: Reservation,
        lease_until: i64,
    ) -> Result<(), DataError> {
        sqlx::query(
            "UPDATE commits SET lease_until = $1 WHERE dataset_id = $2 AND commit_id = $3 AND state = $4",
        )
        .bind(lease_until)
        .bind(reservation.dataset_id)
        .bind(reservation.commit_id)
        .bind(PENDING)
        .execute(&self.db.pool)
        .timed("update")
        .await?;
        Ok(())
    }

    /// Makes a reserved commit (and, for commit 1, its dataset) visible, in one transaction.
    pub async fn finish_commit(
        &self,
        reservation: Reservation,
        record: &CommitRecord<'_>,
    ) -> Result<(), DataError> {
        let mut tx = self.db.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE commits SET state = $1, created_at = $2, commit_message = $3, tags = $4, \
             path = $5, statistics = $6, content_digest = $7 \
             WHERE dataset_id = $8 AND commit_id = $9 AND state = $10",
        )
        .bind(COMMITTED)
        .bind(record.now)
        .bind(record.message)
        .bind(json(&record.tags)?)
        .bind(record.path)
        .bind(json(record.statistics)?)
        .bind(record.content_digest)
        .bind(reservation.dataset_id)
        .bind(reservation.commit_id)
        .bind(PENDING)
        .execute(&mut *tx)
        .timed("update")
        .await?;
        if updated.rows_affected() != 1 {
            return Err(DataError::FailedPrecondition(format!(
                "commit {} of dataset {} was abandoned before it completed",
                reservation.commit_id, reservation.dataset_id
            )));
        }
        sqlx::query("UPDATE datasets SET state = $1, last_updated_at = $2 WHERE dataset_id = $3")
            .bind(COMMITTED)
            .bind(record.now)
            .bind(reservation.dataset_id)
            .execute(&mut *tx)
            .timed("update")
            .await?;
        tx.commit().timed("transaction").await?;
        Ok(())
    }

    /// Deletes a reservation (and a dataset that never became visible).
    pub async fn discard(&self, reservation: Reservation) -> Result<(), DataError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM commits WHERE dataset_id = $1 AND commit_id = $2 AND state = $3")
            .bind(reservation.dataset_id)
            .bind(reservation.commit_id)
            .bind(PENDING)
            .execute(&mut *tx)
            .timed("delete")
            .await?;
        sqlx::query("DELETE FROM datasets WHERE dataset_id = $1 AND state = $2")
            .bind(reservation.dataset_id)
            .bind(PENDING)
            .execute(&mut *tx)
            .timed("delete")
            .await?;
        tx.commit().timed("transaction").await?;
        Ok(())
    }

    /// Reservations whose lease ran out (their ingest died).
    pub async fn expired_reservations(&self, now_ms: i64) -> Result<Vec<Reservation>, DataError> {
        let rows = sqlx::query(
            "SELECT tenant, dataset_id, commit_id FROM commits WHERE state = $1 AND lease_until < $2",
        )
        .bind(PENDING)
        .bind(now_ms)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Reservation {
                    tenant: row.try_get("tenant")?,
                    dataset_id: row.try_get("dataset_id")?,
                    commit_id: row.try_get("commit_id")?,
                })
            })
            .collect()
    }

    /// A visible dataset with its committed commits.
    pub async fn get_dataset(&self, tenant: &str, dataset_id: i64) -> Result<Dataset, DataError> {
        let row = sqlx::query(
            "SELECT dataset_id, name, description, dataset_type, last_updated_at FROM datasets \
             WHERE tenant = $1 AND dataset_id = $2 AND state = $3",
        )
        .bind(tenant)
        .bind(dataset_id)
        .bind(COMMITTED)
        .fetch_optional(&self.db.pool)
        .timed("select")
        .await?
        .ok_or(DataError::DatasetNotFound(dataset_id))?;
        let commits = sqlx::query(
            "SELECT dataset_id, commit_id, created_at, commit_message, tags, path, statistics, \
             content_digest FROM commits WHERE dataset_id = $1 AND state = $2 ORDER BY commit_id",
        )
        .bind(dataset_id)
        .bind(COMMITTED)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        Ok(Dataset {
            dataset_id: row.try_get("dataset_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            dataset_type: DatasetType::from_number(row.try_get("dataset_type")?)
                .map_err(|err| DataError::Corrupt(err.to_string()))?,
            last_updated_at: row.try_get("last_updated_at")?,
            commits: commits
                .iter()
                .map(decode_commit)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Ids of visible datasets in id order, `limit` (0 = all) from `offset`.
    pub async fn list_dataset_ids(
        &self,
        tenant: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<i64>, DataError> {
        let limit = if limit == 0 { i64::MAX } else { limit };
        let rows = sqlx::query(
            "SELECT dataset_id FROM datasets WHERE tenant = $1 AND state = $2 \
             ORDER BY dataset_id LIMIT $3 OFFSET $4",
        )
        .bind(tenant)
        .bind(COMMITTED)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get("dataset_id")?))
            .collect()
    }

    /// Deletes a visible dataset's rows (snapshots, commits, dataset) in one transaction.
    pub async fn delete_dataset(&self, tenant: &str, dataset_id: i64) -> Result<(), DataError> {
        let mut tx = self.db.pool.begin().await?;
        visible_dataset_type(&mut tx, tenant, dataset_id).await?;
        for statement in [
            "DELETE FROM snapshots WHERE dataset_id = $1",
            "DELETE FROM commits WHERE dataset_id = $1",
            "DELETE FROM datasets WHERE dataset_id = $1",
        ] {
            sqlx::query(statement)
                .bind(dataset_id)
                .execute(&mut *tx)
                .timed("delete")
                .await?;
        }
        tx.commit().timed("transaction").await?;
        Ok(())
    }

    /// A snapshot, if it exists.
    pub async fn get_snapshot(
        &self,
        tenant: &str,
        dataset_id: i64,
        version_hash: &str,
    ) -> Result<Option<Snapshot>, DataError> {
        let row = sqlx::query(
            "SELECT dataset_id, version_hash, state, commit_ids, message, statistics, parts, \
             content_digest FROM snapshots WHERE tenant = $1 AND dataset_id = $2 AND version_hash = $3",
        )
        .bind(tenant)
        .bind(dataset_id)
        .bind(version_hash)
        .fetch_optional(&self.db.pool)
        .timed("select")
        .await?;
        row.as_ref().map(decode_snapshot).transpose()
    }

    /// A visible dataset's snapshots, newest first (ties by version hash), without their
    /// parts; `DatasetNotFound` for a dataset the tenant cannot see.
    pub async fn list_snapshots(
        &self,
        tenant: &str,
        dataset_id: i64,
    ) -> Result<Vec<Snapshot>, DataError> {
        let mut tx = self.db.pool.begin().await?;
        visible_dataset_type(&mut tx, tenant, dataset_id).await?;
        let rows = sqlx::query(
            "SELECT dataset_id, version_hash, state, commit_ids, message, statistics, \
             content_digest FROM snapshots WHERE tenant = $1 AND dataset_id = $2 \
             ORDER BY created_at DESC, version_hash",
        )
        .bind(tenant)
        .bind(dataset_id)
        .fetch_all(&mut *tx)
        .timed("select")
        .await?;
        tx.commit().timed("transaction").await?;
        rows.iter().map(decode_snapshot_without_parts).collect()
    }

    /// Records a snapshot as RUNNING unless it is READY or RUNNING already; true when the caller
    /// must build it (new, or FAILED before).
    pub async fn prepare_snapshot(
        &self,
        tenant: &str,
        dataset_id: i64,
        version_hash: &str,
        commit_ids: &[i64],
        now: &str,
    ) -> Result<bool, DataError> {
        for _ in 0..RETRIES {
            let existing = self.get_snapshot(tenant, dataset_id, version_hash).await?;
            let result = match existing.map(|s| s.state) {
                Some(SnapshotState::Ready | SnapshotState::Running) => return Ok(false),
                Some(SnapshotState::Failed) => sqlx::query(
                    "UPDATE snapshots SET state = $1, message = '', updated_at = $2 \
                     WHERE dataset_id = $3 AND version_hash = $4 AND state = $5",
                )
                .bind(SnapshotState::Running.number())
                .bind(now)
                .bind(dataset_id)
                .bind(version_hash)
                .bind(SnapshotState::Failed.number())
                .execute(&self.db.pool)
                .timed("update")
                .await
                .map(|done| done.rows_affected() == 1),
                None => sqlx::query(
                    "INSERT INTO snapshots (dataset_id, version_hash, tenant, state, commit_ids, \
                     message, statistics, parts, content_digest, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, '', '{}', '[]', '', $6, $6)",
                )
                .bind(dataset_id)
                .bind(version_hash)
                .bind(tenant)
                .bind(SnapshotState::Running.number())
                .bind(json(&commit_ids)?)
                .bind(now)
                .execute(&self.db.pool)
                .timed("insert")
                .await
                .map(|_| true),
            };
            match result {
                Ok(true) => return Ok(true),
                // Someone else changed it first: look again.
                Ok(false) => continue,
                Err(err) if is_unique_violation(&err) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(DataError::FailedPrecondition(format!(
            "version {version_hash} of dataset {dataset_id} is busy, try again"
        )))
    }

    /// Marks a RUNNING snapshot READY; false when it no longer exists (dataset deleted).
    pub async fn finish_snapshot(
        &self,
        dataset_id: i64,
        version_hash: &str,
        parts: &[Part],
        statistics: &BTreeMap<String, String>,
        content_digest: &str,
        now: &str,
    ) -> Result<bool, DataError> {
        let done = sqlx::query(
            "UPDATE snapshots SET state = $1, parts = $2, statistics = $3, content_digest = $4, \
             message = '', updated_at = $5 WHERE dataset_id = $6 AND version_hash = $7",
        )
        .bind(SnapshotState::Ready.number())
        .bind(json(&parts)?)
        .bind(json(statistics)?)
        .bind(content_digest)
        .bind(now)
        .bind(dataset_id)
        .bind(version_hash)
        .execute(&self.db.pool)
        .timed("update")
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a snapshot FAILED with the reason.
    pub async fn fail_snapshot(
        &self,
        dataset_id: i64,
        version_hash: &str,
        message: &str,
        now: &str,
    ) -> Result<(), DataError> {
        sqlx::query(
            "UPDATE snapshots SET state = $1, message = $2, updated_at = $3 \
             WHERE dataset_id = $4 AND version_hash = $5",
        )
        .bind(SnapshotState::Failed.number())
        .bind(message)
        .bind(now)
        .bind(dataset_id)
        .bind(version_hash)
        .execute(&self.db.pool)
        .timed("update")
        .await?;
        Ok(())
    }

    /// Every RUNNING snapshot as (tenant, dataset id, hash), to resume after a restart.
    pub async fn running_snapshots(&self) -> Result<Vec<(String, i64, String)>, DataError> {
        let rows = sqlx::query(
            "SELECT tenant, dataset_id, version_hash FROM snapshots WHERE state = $1 \
             ORDER BY created_at",
        )
        .bind(SnapshotState::Running.number())
        .fetch_all(&self.db.pool)
        .timed("select")
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("tenant")?,
                    row.try_get("dataset_id")?,
                    row.try_get("version_hash")?,
                ))
            })
            .collect()
    }
}

async fn insert_pending_commit(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant: &str,
    dataset_id: i64,
    commit_id: i64,
    lease_until: i64,
) -> Result<(), DataError> {
    sqlx::query(
        "INSERT INTO commits (dataset_id, commit_id, tenant, state, lease_until, created_at, \
         commit_message, tags, path, statistics, content_digest) \
         VALUES ($1, $2, $3, $4, $5, '', '', '[]', '', '{}', '')",
    )
    .bind(dataset_id)
    .bind(commit_id)
    .bind(tenant)
    .bind(PENDING)
    .bind(lease_until)
    .execute(&mut **tx)
    .timed("insert")
    .await?;
    Ok(())
}

async fn visible_dataset_type(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant: &str,
    dataset_id: i64,
) -> Result<DatasetType, DataError> {
    let row = sqlx::query(
        "SELECT dataset_type FROM datasets WHERE tenant = $1 AND dataset_id = $2 AND state = $3",
    )
    .bind(tenant)
    .bind(dataset_id)
    .bind(COMMITTED)
    .fetch_optional(&mut **tx)
    .timed("select")
    .await?
    .ok_or(DataError::DatasetNotFound(dataset_id))?;
    DatasetType::from_number(row.try_get("dataset_type")?)
        .map_err(|err| DataError::Corrupt(err.to_string()))
}

fn decode_commit(row: &AnyRow) -> Result<Commit, DataError> {
    Ok(Commit {
        dataset_id: row.try_get("dataset_id")?,
        commit_id: row.try_get("commit_id")?,
        created_at: row.try_get("created_at")?,
        message: row.try_get("commit_message")?,
        tags: from_json(&row.try_get::<String, _>("tags")?)?,
        path: row.try_get("path")?,
        statistics: from_json(&row.try_get::<String, _>("statistics")?)?,
        content_digest: row.try_get("content_digest")?,
    })
}

fn decode_snapshot(row: &AnyRow) -> Result<Snapshot, DataError> {
    Ok(Snapshot {
        parts: from_json(&row.try_get::<String, _>("parts")?)?,
        ..decode_snapshot_without_parts(row)?
    })
}

fn decode_snapshot_without_parts(row: &AnyRow) -> Result<Snapshot, DataError> {
    Ok(Snapshot {
        dataset_id: row.try_get("dataset_id")?,
        version_hash: row.try_get("version_hash")?,
        state: SnapshotState::from_number(row.try_get("state")?)?,
        commit_ids: from_json(&row.try_get::<String, _>("commit_ids")?)?,
        message: row.try_get("message")?,
        statistics: from_json(&row.try_get::<String, _>("statistics")?)?,
        parts: Vec::new(),
        content_digest: row.try_get("content_digest")?,
    })
}
