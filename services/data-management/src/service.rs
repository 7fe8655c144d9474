//! The data-management operations, independent of gRPC: ingest into reserved commits,
//! snapshot preparation on a bounded pool of builders, and the sweeper that removes the
//! reservations of ingests whose process died.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automl_common::error::error_chain;
use automl_common::s3::{ObjectStore, ObjectWriter};
use automl_common::time::now_iso;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::DataManagementConfig;
use crate::error::DataError;
use crate::ingest::{self, Ingested};
use crate::model::{
    Commit, Dataset, DatasetType, Snapshot, Tag, check_key, check_tags, check_text, commit_prefix,
    dataset_prefix, parse_commit_id, parse_dataset_id, snapshot_prefix, snapshots_prefix,
    version_hash,
};
use crate::snapshot;
use crate::store::{CommitRecord, DataStore, Reservation};
use automl_common::auth::tenant_prefix;

/// Message of every dataset's first commit.
pub const INITIAL_COMMIT_MESSAGE: &str = "Initial commit";
/// Key prefixes clients may not upload into: they hold commits and snapshots.
const RESERVED_PREFIXES: [&str; 2] = ["dataset/", "versionedDatasets/"];

/// Where an ingest reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Bucket; empty means the datasets bucket.
    pub bucket: String,
    /// Key of the object, or of a folder (GENERIC).
    pub path: String,
}

/// A new dataset as CreateDataset describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDataset {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The contract's enum number.
    pub dataset_type: i32,
    /// Raw data.
    pub source: Source,
    /// Tags of commit 1.
    pub tags: Vec<Tag>,
}

/// A prepared selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The dataset, with all its commits.
    pub dataset: Dataset,
    /// Names the selection.
    pub version_hash: String,
    /// The selected commits, in order.
    pub selected: Vec<Commit>,
}

/// data-management's operations.
#[derive(Debug, Clone)]
pub struct DataManagement {
    store: DataStore,
    objects: ObjectStore,
    config: DataManagementConfig,
    builders: Arc<Semaphore>,
    shutdown: CancellationToken,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl DataManagement {
    /// The service over a store and the object store.
    pub fn new(
        store: DataStore,
        objects: ObjectStore,
        config: DataManagementConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let builders = Arc::new(Semaphore::new(config.snapshot_workers));
        Self {
            store,
            objects,
            config,
            builders,
            shutdown,
        }
    }

    /// The object store (for the gRPC layer's answers).
    pub fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    /// Resumes snapshot builds a previous process left RUNNING and starts the sweeper.
    pub async fn start_background_work(&self) {
        match self.store.running_snapshots().await {
            Ok(running) => {
                for (tenant, dataset_id, hash) in running {
                    tracing::info!(dataset_id, version_hash = %hash, "resuming snapshot build");
                    self.enqueue_build(tenant, dataset_id, hash);
                }
            }
            Err(err) => {
                tracing::error!(error = %error_chain(&err), "cannot list interrupted builds")
            }
        }
        let sweeper = self.clone();
        tokio::spawn(async move { sweeper.sweep_forever().await });
    }

    fn lease_until(&self) -> i64 {
        now_ms() + i64::try_from(self.config.lease().as_millis()).unwrap_or(i64::MAX)
    }

    /// CreateDataset: a dataset whose commit 1 ingests `source`; visible only once complete.
    pub async fn create_dataset(
        &self,
        tenant: &str,
        new: NewDataset,
    ) -> Result<Dataset, DataError> {
        if new.name.is_empty() {
            return Err(DataError::InvalidArgument("name is required".into()));
        }
        check_text("name", &new.name)?;
        check_text("description", &new.description)?;
        check_tags("tags", &new.tags)?;
        let dataset_type = DatasetType::from_number(i64::from(new.dataset_type))?;
        let source = self.check_source(tenant, new.source)?;
        let reservation = self
            .store
            .create_pending_dataset(
                tenant,
                &new.name,
                &new.description,
                dataset_type,
                self.lease_until(),
                &now_iso(),
            )
            .await?;
        self.ingest(
            reservation.clone(),
            dataset_type,
            source,
            INITIAL_COMMIT_MESSAGE.into(),
            new.tags,
        )
        .await?;
        self.store.get_dataset(tenant, reservation.dataset_id).await
    }

    /// UpdateDataset: the next commit of a dataset ingests `source`.
    pub async fn update_dataset(
        &self,
        tenant: &str,
        dataset_id: &str,
        message: String,
        source: Source,
        tags: Vec<Tag>,
    ) -> Result<Dataset, DataError> {
        let dataset_id = parse_dataset_id(dataset_id)?;
        check_text("commit_message", &message)?;
        check_tags("tags", &tags)?;
        let source = self.check_source(tenant, source)?;
        let (reservation, dataset_type) = self
            .store
            .reserve_commit(tenant, dataset_id, self.lease_until())
            .await?;
        self.ingest(reservation, dataset_type, source, message, tags)
            .await?;
        self.store.get_dataset(tenant, dataset_id).await
    }

    /// The object a dataset ingests: a relative key without `..`; for a tenant other than
    /// the default one, in the datasets bucket and under the tenant's prefix.
    fn check_source(&self, tenant: &str, mut source: Source) -> Result<Source, DataError> {
        if source.bucket.is_empty() {
            source.bucket = self.objects.datasets_bucket.clone();
        }
        if !automl_common::config::valid_bucket_name(&source.bucket) {
            return Err(DataError::InvalidArgument(format!(
                "bucket `{}` is not a valid bucket name",
                crate::model::truncate(&source.bucket)
            )));
        }
        check_key("path", &source.path)?;
        let prefix = tenant_prefix(tenant);
        if !prefix.is_empty() {
            if source.bucket != self.objects.datasets_bucket {
                return Err(DataError::InvalidArgument(format!(
                    "bucket must be empty or the datasets bucket `{}`",
                    self.objects.datasets_bucket
                )));
            }
            if !source.path.starts_with(&prefix) {
                return Err(DataError::InvalidArgument(format!(
                    "path must be under `{prefix}` (UploadData returns such paths)"
                )));
            }
        }
        Ok(source)
    }

    /// Runs an ingest into a reservation to completion in its own task (a client that goes
    /// away cannot leave it half done), renewing the lease while it runs.
    async fn ingest(
        &self,
        reservation: Reservation,
        dataset_type: DatasetType,
        source: Source,
        message: String,
        tags: Vec<Tag>,
    ) -> Result<(), DataError> {
        let this = self.clone();
        let task = tokio::spawn(async move {
            this.ingest_in_task(reservation, dataset_type, source, message, tags)
                .await
        });
        task.await
            .map_err(|err| DataError::Corrupt(format!("ingest task failed: {err}")))?
    }

    async fn ingest_in_task(
        &self,
        reservation: Reservation,
        dataset_type: DatasetType,
        source: Source,
        message: String,
        tags: Vec<Tag>,
    ) -> Result<(), DataError> {
        let prefix = commit_prefix(
            &reservation.tenant,
            reservation.dataset_id,
            reservation.commit_id,
        );
        let renewer = self.spawn_lease_renewer(reservation.clone());
        let started = std::time::Instant::now();
        let ingested = match dataset_type {
            DatasetType::TextIntent => {
                ingest::text_intent(
                    &self.objects,
                    &source.bucket,
                    &source.path,
                    &prefix,
                    self.config.max_labels,
                )
                .await
            }
            DatasetType::Generic => {
                ingest::generic(&self.objects, &source.bucket, &source.path, &prefix).await
            }
        };
        renewer.cancel();
        let outcome = match ingested {
            Ok(ingested) => {
                self.finish(reservation.clone(), &prefix, &message, &tags, &ingested)
                    .await
            }
            Err(err) => Err(err),
        };
        match &outcome {
            Ok(()) => tracing::info!(
                dataset_id = reservation.dataset_id,
                commit_id = reservation.commit_id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "commit ingested"
            ),
            Err(err) => {
                tracing::info!(
                    dataset_id = reservation.dataset_id,
                    commit_id = reservation.commit_id,
                    error = %error_chain(err),
                    "ingest failed, nothing committed"
                );
                self.remove_reservation(reservation).await;
            }
        }
        outcome
    }

    async fn finish(
        &self,
        reservation: Reservation,
        prefix: &str,
        message: &str,
        tags: &[Tag],
        ingested: &Ingested,
    ) -> Result<(), DataError> {
        let record = CommitRecord {
            message,
            tags,
            path: prefix,
            statistics: &ingested.statistics,
            content_digest: &ingested.content_digest,
            now: &now_iso(),
        };
        self.store.finish_commit(reservation, &record).await
    }

    fn spawn_lease_renewer(&self, reservation: Reservation) -> CancellationToken {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let this = self.clone();
        let every = self.config.lease() / 3;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(err) = this
                    .store
                    .renew_lease(reservation.clone(), this.lease_until())
                    .await
                {
                    tracing::warn!(error = %error_chain(&err), "lease renewal failed");
                }
            }
        });
        stop
    }

    /// Deletes a reservation's objects, then the reservation.
    async fn remove_reservation(&self, reservation: Reservation) {
        let prefix = format!(
            "{}/",
            commit_prefix(
                &reservation.tenant,
                reservation.dataset_id,
                reservation.commit_id
            )
        );
        if let Err(err) = self
            .objects
            .delete_prefix(&self.objects.datasets_bucket, &prefix)
            .await
        {
            tracing::warn!(error = %error_chain(&err), %prefix, "cannot delete objects of a failed ingest");
            return;
        }
        if let Err(err) = self.store.discard(reservation).await {
            tracing::warn!(error = %error_chain(&err), "cannot delete a failed reservation");
        }
    }

    async fn sweep_forever(&self) {
        let every = (self.config.lease() / 2).max(Duration::from_secs(1));
        loop {
            match self.store.expired_reservations(now_ms()).await {
                Ok(expired) => {
                    for reservation in expired {
                        tracing::info!(
                            dataset_id = reservation.dataset_id,
                            commit_id = reservation.commit_id,
                            "removing an abandoned ingest"
                        );
                        self.remove_reservation(reservation).await;
                    }
                }
                Err(err) => tracing::warn!(error = %error_chain(&err), "sweep failed"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// GetDatasetSummary.
    pub async fn get_dataset(&self, tenant: &str, dataset_id: &str) -> Result<Dataset, DataError> {
        self.store
            .get_dataset(tenant, parse_dataset_id(dataset_id)?)
            .await
    }

    /// ListDatasets: ids in order, `limit` (0 = all) from `index`.
    pub async fn list_datasets(
        &self,
        tenant: &str,
        limit: i32,
        index: i32,
    ) -> Result<Vec<i64>, DataError> {
        if limit < 0 {
            return Err(DataError::InvalidArgument(
                "limit must not be negative".into(),
            ));
        }
        if index < 0 {
            return Err(DataError::InvalidArgument(
                "index must not be negative".into(),
            ));
        }
        self.store
            .list_dataset_ids(tenant, i64::from(limit), i64::from(index))
            .await
    }

    /// DeleteDataset: the rows in one transaction, then the objects.
    pub async fn delete_dataset(&self, tenant: &str, dataset_id: &str) -> Result<(), DataError> {
        let dataset_id = parse_dataset_id(dataset_id)?;
        self.store.delete_dataset(tenant, dataset_id).await?;
        let bucket = &self.objects.datasets_bucket;
        let mut removed = 0;
        for prefix in [
            dataset_prefix(tenant, dataset_id),
            snapshots_prefix(tenant, dataset_id),
        ] {
            removed += self.objects.delete_prefix(bucket, &prefix).await?;
        }
        tracing::info!(dataset_id, objects = removed, "dataset deleted");
        Ok(())
    }

    /// PrepareTrainingDataset: selects commits 1..commit_id (empty = all) carrying every tag,
    /// names the selection, and starts its build unless it is READY or RUNNING.
    pub async fn prepare(
        &self,
        tenant: &str,
        dataset_id: &str,
        commit_id: &str,
        tags: &[Tag],
    ) -> Result<Prepared, DataError> {
        let dataset_id = parse_dataset_id(dataset_id)?;
        check_tags("tags", tags)?;
        let dataset = self.store.get_dataset(tenant, dataset_id).await?;
        let upto = if commit_id.is_empty() {
            i64::MAX
        } else {
            let id = parse_commit_id(commit_id)?;
            if !dataset.commits.iter().any(|c| c.commit_id == id) {
                return Err(DataError::CommitNotFound {
                    dataset_id,
                    commit_id: id,
                });
            }
            id
        };
        let selected: Vec<Commit> = dataset
            .commits
            .iter()
            .filter(|c| c.commit_id <= upto && tags.iter().all(|t| c.tags.contains(t)))
            .cloned()
            .collect();
        if selected.is_empty() {
            return Err(DataError::FailedPrecondition(format!(
                "no commit of dataset {dataset_id} matches the query"
            )));
        }
        let ids: Vec<i64> = selected.iter().map(|c| c.commit_id).collect();
        let hash = version_hash(&ids);
        if self
            .store
            .prepare_snapshot(tenant, dataset_id, &hash, &ids, &now_iso())
            .await?
        {
            tracing::info!(dataset_id, version_hash = %hash, commits = ?ids, "snapshot build queued");
            self.enqueue_build(tenant.to_string(), dataset_id, hash.clone());
        }
        Ok(Prepared {
            dataset,
            version_hash: hash,
            selected,
        })
    }

    /// ListTrainingSnapshots: the dataset's snapshots, newest first, without their parts.
    pub async fn list_snapshots(
        &self,
        tenant: &str,
        dataset_id: &str,
    ) -> Result<Vec<Snapshot>, DataError> {
        let dataset_id = parse_dataset_id(dataset_id)?;
        self.store.list_snapshots(tenant, dataset_id).await
    }

    /// FetchTrainingDataset.
    pub async fn fetch(
        &self,
        tenant: &str,
        dataset_id: &str,
        version_hash: &str,
    ) -> Result<Snapshot, DataError> {
        let dataset_id = parse_dataset_id(dataset_id)?;
        if version_hash.is_empty() {
            return Err(DataError::InvalidArgument(
                "version_hash is required".into(),
            ));
        }
        self.store
            .get_snapshot(tenant, dataset_id, version_hash)
            .await?
            .ok_or_else(|| DataError::SnapshotNotFound {
                dataset_id,
                version_hash: crate::model::truncate(version_hash),
            })
    }

    fn enqueue_build(&self, tenant: String, dataset_id: i64, hash: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.builders.clone().acquire_owned().await else {
                return;
            };
            this.build(&tenant, dataset_id, &hash).await;
        });
    }

    async fn build(&self, tenant: &str, dataset_id: i64, hash: &str) {
        let started = std::time::Instant::now();
        let result = self.try_build(tenant, dataset_id, hash).await;
        let now = now_iso();
        let recorded = match result {
            Ok(true) => {
                tracing::info!(dataset_id, version_hash = %hash, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot ready");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(err) => {
                let reason = error_chain(&err);
                tracing::warn!(dataset_id, version_hash = %hash, error = %reason, "snapshot build failed");
                self.store
                    .fail_snapshot(dataset_id, hash, &format!("build failed: {reason}"), &now)
                    .await
            }
        };
        if let Err(err) = recorded {
            tracing::error!(error = %error_chain(&err), "cannot record the snapshot state");
        }
    }

    /// Builds and records a snapshot; false when it or its dataset vanished meanwhile.
    async fn try_build(
        &self,
        tenant: &str,
        dataset_id: i64,
        hash: &str,
    ) -> Result<bool, DataError> {
        let Some(snapshot) = self.store.get_snapshot(tenant, dataset_id, hash).await? else {
            return Ok(false);
        };
        let dataset = match self.store.get_dataset(tenant, dataset_id).await {
            Ok(dataset) => dataset,
            Err(DataError::DatasetNotFound(_)) => return Ok(false),
            Err(err) => return Err(err),
        };
        let mut commits = Vec::new();
        for id in &snapshot.commit_ids {
            let commit = dataset.commits.iter().find(|c| c.commit_id == *id).ok_or(
                DataError::CommitNotFound {
                    dataset_id,
                    commit_id: *id,
                },
            )?;
            commits.push(commit.clone());
        }
        let prefix = snapshot_prefix(tenant, dataset_id, hash);
        let built = snapshot::build(&self.objects, dataset.dataset_type, &commits, &prefix).await?;
        let recorded = self
            .store
            .finish_snapshot(
                dataset_id,
                hash,
                &built.parts,
                &built.statistics,
                &built.content_digest,
                &now_iso(),
            )
            .await?;
        if !recorded {
            let _ = self
                .objects
                .delete_prefix(&self.objects.datasets_bucket, &format!("{prefix}/"))
                .await;
        }
        Ok(recorded)
    }

    /// Starts an upload into the datasets bucket (UploadData).
    pub fn begin_upload(
        &self,
        tenant: &str,
        bucket: &str,
        path: &str,
    ) -> Result<Upload, DataError> {
        if !bucket.is_empty() && bucket != self.objects.datasets_bucket {
            return Err(DataError::InvalidArgument(format!(
                "bucket must be empty or the datasets bucket `{}`",
                self.objects.datasets_bucket
            )));
        }
        // Keys of a tenant other than the default one start with `<tenant>/`; a path without
        // it gets it.
        let prefix = tenant_prefix(tenant);
        let key = if path.is_empty() {
            format!("{prefix}upload/{}", uuid::Uuid::new_v4())
        } else {
            check_key("path", path)?;
            let relative = path.strip_prefix(&prefix).unwrap_or(path);
            if RESERVED_PREFIXES.iter().any(|p| relative.starts_with(p)) {
                return Err(DataError::InvalidArgument(format!(
                    "path must not start with {}: those keys hold commits and snapshots",
                    RESERVED_PREFIXES.join(" or ")
                )));
            }
            format!("{prefix}{relative}")
        };
        Ok(Upload {
            writer: self.objects.writer(&self.objects.datasets_bucket, &key),
            bucket: self.objects.datasets_bucket.clone(),
            key,
            limit: self.config.max_upload_bytes,
        })
    }
}

/// An upload in progress; nothing is visible until [`Upload::finish`].
#[derive(Debug)]
pub struct Upload {
    writer: ObjectWriter,
    /// The datasets bucket.
    pub bucket: String,
    /// The key being written.
    pub key: String,
    limit: u64,
}

impl Upload {
    /// Appends a chunk; `RESOURCE_EXHAUSTED`-style refusal past the size limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), DataError> {
        if self.writer.written() + chunk.len() as u64 > self.limit {
            return Err(DataError::InvalidArgument(format!(
                "upload is larger than the limit of {} bytes",
                self.limit
            )));
        }
        self.writer.write(chunk).await?;
        automl_common::metrics::metrics()
            .data
            .upload_bytes
            .inc_by(chunk.len() as u64);
        Ok(())
    }

    /// Completes the object; returns its size.
    pub async fn finish(self) -> Result<u64, DataError> {
        Ok(self.writer.finish().await?)
    }

    /// Discards it.
    pub async fn abort(self) {
        self.writer.abort().await;
    }
}
