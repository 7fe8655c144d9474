//! The metadata-store operations: validation, persistence, object checks and notifications,
//! independent of gRPC.

use std::time::Duration;

use automl_common::s3::ObjectStore;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::MetadataError;
use crate::events::{RunEvents, key};
use crate::model::{
    Artifact, ArtifactFilter, Epoch, NewArtifact, NewRun, Run, RunEnd, RunFilter, check_id,
    check_metrics, check_text, run_prefix,
};
use crate::store::RunStore;

/// What a `WatchRun` stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The run when the watch began.
    Snapshot(Run),
    /// A newly logged epoch.
    Epoch(Epoch),
    /// The run ended; nothing follows.
    End(Run),
}

/// Where a run uploads its model files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLocation {
    /// The models bucket.
    pub bucket: String,
    /// `run_<run_id>`.
    pub path: String,
}

/// metadata-store's operations.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    store: RunStore,
    objects: ObjectStore,
    events: RunEvents,
    /// Re-read interval of watch streams.
    poll_interval: Duration,
}

impl MetadataStore {
    /// The service over a store and the object store holding the model files.
    pub fn new(store: RunStore, objects: ObjectStore, poll_interval: Duration) -> Self {
        Self {
            store,
            objects,
            events: RunEvents::new(),
            poll_interval,
        }
    }

    /// LogRunStart: records a running run and says where its model files go.
    pub async fn start_run(
        &self,
        tenant: &str,
        run: NewRun,
    ) -> Result<(Run, UploadLocation), MetadataError> {
        check_id("run_id", &run.run_id)?;
        for (field, value) in [
            ("run_name", &run.run_name),
            ("start_time", &run.start_time),
            ("tracing.dataset_id", &run.lineage.dataset_id),
            ("tracing.version_hash", &run.lineage.version_hash),
            ("tracing.code_version", &run.lineage.code_version),
            ("tracing.pretrained_model", &run.lineage.pretrained_model),
        ] {
            check_text(field, value)?;
        }
        if !run.lineage.base_run_id.is_empty() {
            check_id("tracing.base_run_id", &run.lineage.base_run_id)?;
        }
        let stored = self.store.start_run(tenant, &run).await?;
        tracing::info!(run_id = %run.run_id, run_name = %run.run_name, "run started");
        self.events.notify(tenant, &run.run_id);
        let location = UploadLocation {
            bucket: self.objects.models_bucket.clone(),
            path: run_prefix(tenant, &run.run_id),
        };
        Ok((stored, location))
    }

    /// LogEpoch: records one epoch of a running run.
    pub async fn log_epoch(&self, tenant: &str, epoch: Epoch) -> Result<Epoch, MetadataError> {
        check_id("epoch_info.run_id", &epoch.run_id)?;
        check_id("epoch_info.epoch_id", &epoch.epoch_id)?;
        check_text("epoch_info.start_time", &epoch.start_time)?;
        check_text("epoch_info.end_time", &epoch.end_time)?;
        check_metrics(&epoch.metrics)?;
        self.store.log_epoch(tenant, &epoch).await?;
        tracing::debug!(run_id = %epoch.run_id, epoch_id = %epoch.epoch_id, "epoch logged");
        self.events.notify(tenant, &epoch.run_id);
        Ok(epoch)
    }

    /// LogRunEnd: ends a running run with its outcome.
    pub async fn end_run(&self, tenant: &str, end: RunEnd) -> Result<Run, MetadataError> {
        check_id("run_id", &end.run_id)?;
        check_text("end_time", &end.end_time)?;
        check_text("message", &end.message)?;
        let run = self.store.end_run(tenant, &end).await?;
        tracing::info!(run_id = %end.run_id, success = end.success, "run ended");
        self.events.notify(tenant, &end.run_id);
        Ok(run)
    }

    /// GetRunStatus.
    pub async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Run, MetadataError> {
        check_id("run_id", run_id)?;
        self.store.get_run(tenant, run_id).await
    }

    /// CreateArtifact: checks that the files exist under the run's own prefix in the models
    /// bucket and records that location with the next version of the artifact's name.
    pub async fn create_artifact(
        &self,
        tenant: &str,
        mut artifact: NewArtifact,
    ) -> Result<Artifact, MetadataError> {
        check_id("run_id", &artifact.run_id)?;
        if artifact.name.is_empty() {
            return Err(MetadataError::InvalidArgument(
                "artifact.name is required".into(),
            ));
        }
        check_text("artifact.name", &artifact.name)?;
        check_text("algorithm", &artifact.algorithm)?;
        if artifact.path.is_empty() {
            return Err(MetadataError::InvalidArgument(
                "artifact.path is required".into(),
            ));
        }
        if artifact.bucket.is_empty() {
            artifact.bucket = self.objects.models_bucket.clone();
        }
        if artifact.bucket != self.objects.models_bucket {
            return Err(MetadataError::InvalidArgument(format!(
                "artifact.bucket must be the models bucket `{}`",
                self.objects.models_bucket
            )));
        }
        let prefix = run_prefix(tenant, &artifact.run_id);
        let path = artifact.path.trim_end_matches('/');
        let own = path == prefix
            || (path.starts_with(&format!("{prefix}/")) && !path.split('/').any(|s| s == ".."));
        if !own {
            return Err(MetadataError::InvalidArgument(format!(
                "artifact.path must be the run's own location `{prefix}` or a key under it"
            )));
        }
        artifact.path = path.to_string();
        // The run must exist before we look at objects, so unknown runs are NOT_FOUND.
        self.store.get_run_header(tenant, &artifact.run_id).await?;
        let files = self
            .objects
            .resolve_location(&artifact.bucket, &artifact.path)
            .await?;
        if files.is_empty() {
            return Err(MetadataError::ArtifactFilesMissing {
                bucket: artifact.bucket,
                path: artifact.path,
            });
        }
        let recorded = self.store.create_artifact(tenant, &artifact).await?;
        tracing::info!(
            run_id = %recorded.run_id,
            name = %recorded.name,
            version = recorded.version,
            files = files.len(),
            "artifact recorded"
        );
        Ok(recorded)
    }

    /// GetArtifact.
    pub async fn get_artifact(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Artifact, MetadataError> {
        check_id("run_id", run_id)?;
        self.store.get_artifact(tenant, run_id).await
    }

    /// ListRuns.
    pub async fn list_runs(
        &self,
        tenant: &str,
        filter: RunFilter,
    ) -> Result<(Vec<Run>, i64), MetadataError> {
        check_page(filter.limit, filter.offset)?;
        check_text("dataset_id", &filter.dataset_id)?;
        check_text("run_name", &filter.run_name)?;
        self.store.list_runs(tenant, &filter).await
    }

    /// ListArtifacts: newest first.
    pub async fn list_artifacts(
        &self,
        tenant: &str,
        filter: ArtifactFilter,
    ) -> Result<(Vec<Artifact>, i64), MetadataError> {
        check_page(filter.limit, filter.offset)?;
        check_text("name", &filter.name)?;
        self.store.list_artifacts(tenant, &filter).await
    }

    /// WatchRun: the run now, then every new epoch in order, then the end. Fails at once for
    /// an unknown run; the stream stops early when `shutdown` is cancelled or the receiver goes.
    pub async fn watch_run(
        &self,
        tenant: &str,
        run_id: &str,
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, MetadataError>>, MetadataError> {
        check_id("run_id", run_id)?;
        // Subscribe before reading so no change between the read and the wait is missed.
        let notifications = self.events.subscribe();
        let mut run = self.store.get_run_header(tenant, run_id).await?;
        let epochs = self.store.epochs_after(tenant, run_id, 0).await?;
        let last_seq = epochs.last().map_or(0, |(seq, _)| *seq);
        run.epochs = epochs.into_iter().map(|(_, epoch)| epoch).collect();
        run.epoch_count = i64::try_from(run.epochs.len()).unwrap_or(i64::MAX);
        run.metric_summaries = self.store.metric_summaries(tenant, run_id).await?;
        let (sender, receiver) = mpsc::channel(64);
        let watcher = Watcher {
            store: self.store.clone(),
            tenant: tenant.to_string(),
            run_id: run_id.to_string(),
            poll_interval: self.poll_interval,
            notifications,
            sender,
            shutdown,
        };
        tokio::spawn(watcher.run(run, last_seq));
        Ok(receiver)
    }
}

/// Checks a page request: neither size nor offset negative.
fn check_page(limit: i64, offset: i64) -> Result<(), MetadataError> {
    if limit < 0 {
        return Err(MetadataError::InvalidArgument(
            "limit must not be negative".into(),
        ));
    }
    if offset < 0 {
        return Err(MetadataError::InvalidArgument(
            "index must not be negative".into(),
        ));
    }
    Ok(())
}

/// The task behind one WatchRun stream.
struct Watcher {
    store: RunStore,
    tenant: String,
    run_id: String,
    poll_interval: Duration,
    notifications: broadcast::Receiver<String>,
    sender: mpsc::Sender<Result<WatchEvent, MetadataError>>,
    shutdown: CancellationToken,
}

impl Watcher {
    async fn run(mut self, snapshot: Run, mut last_seq: i64) {
        let ended = snapshot.ended;
        if self
            .sender
            .send(Ok(WatchEvent::Snapshot(snapshot.clone())))
            .await
            .is_err()
        {
            return;
        }
        if ended {
            let _ = self.sender.send(Ok(WatchEvent::End(snapshot))).await;
            return;
        }
        let my_key = key(&self.tenant, &self.run_id);
        loop {
            if !self.wait_for_change(&my_key).await {
                return;
            }
            // Read the header first: once a run has ended no epoch can follow, so epochs read
            // after seeing `ended` are complete.
            let step = async {
                let header = self
                    .store
                    .get_run_header(&self.tenant, &self.run_id)
                    .await?;
                let epochs = self
                    .store
                    .epochs_after(&self.tenant, &self.run_id, last_seq)
                    .await?;
                Ok::<_, MetadataError>((header, epochs))
            };
            let (header, epochs) = match step.await {
                Ok(found) => found,
                Err(err) => {
                    let _ = self.sender.send(Err(err)).await;
                    return;
                }
            };
            for (seq, epoch) in epochs {
                last_seq = seq;
                if self
                    .sender
                    .send(Ok(WatchEvent::Epoch(epoch)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if header.ended {
                let end = match self.store.get_run(&self.tenant, &self.run_id).await {
                    Ok(run) => Ok(WatchEvent::End(run)),
                    Err(err) => Err(err),
                };
                let _ = self.sender.send(end).await;
                return;
            }
        }
    }

    /// Waits for a notification about this run, the poll interval, or shutdown; false when
    /// the stream should stop.
    async fn wait_for_change(&mut self, my_key: &str) -> bool {
        let deadline = tokio::time::sleep(self.poll_interval);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return false,
                () = self.sender.closed() => return false,
                () = &mut deadline => return true,
                received = self.notifications.recv() => match received {
                    Ok(changed) if changed == my_key => return true,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut deadline).await;
                        return true;
                    }
                },
            }
        }
    }
}
