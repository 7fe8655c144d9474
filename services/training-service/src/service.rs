//! The training-service operations: submission checks, the FIFO scheduler that waits for
//! snapshots and claims jobs under the concurrency limit, launching through the local backend,
//! exit handling, restart reconciliation, and the status watch and log follow streams.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automl_common::config::S3Config;
use automl_common::error::error_chain;
use automl_common::time::now_iso;
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use automl_proto::data_management::{SnapshotState, VersionQuery};
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::metadata_store::{GetRunStatusRequest, LogRunEndRequest};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::config::{TrainingConfig, host_port};
use crate::error::TrainingError;
use crate::local::{Exit, LocalBackend, process_alive};
use crate::model::{Job, JobSpec, JobStatus, check_spec};
use crate::store::JobStore;

/// The backend name recorded on jobs run as local processes.
pub const LOCAL: &str = "local";
/// Longest a snapshot check waits before looking again.
const MAX_SNAPSHOT_BACKOFF: Duration = Duration::from_secs(5);

/// A job with its place in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// The job.
    pub job: Job,
    /// Queued jobs ahead of it (0 unless queued).
    pub position: i64,
}

/// A job's new state, as watchers receive it.
#[derive(Debug, Clone)]
struct Change {
    job_id: i64,
    status: JobStatus,
    message: String,
}

/// Order of states: a watcher never reports a state older than one it has sent.
fn rank(status: JobStatus) -> u8 {
    match status {
        JobStatus::Queuing => 0,
        JobStatus::Launch => 1,
        JobStatus::Running => 2,
        JobStatus::Succeed | JobStatus::Failure | JobStatus::Canceled => 3,
    }
}

/// What the scheduler learns about a job's snapshot.
enum Snapshot {
    Ready(String),
    NotYet,
    Failed(String),
}

/// training-service's operations.
#[derive(Debug)]
pub struct Training {
    store: JobStore,
    config: TrainingConfig,
    backend: LocalBackend,
    data: DataManagementServiceClient<Channel>,
    metadata: MetadataStoreServiceClient<Channel>,
    s3: S3Config,
    minio_server: String,
    wake: Notify,
    events: broadcast::Sender<Change>,
    exits: mpsc::UnboundedSender<(i64, Exit)>,
    backoff: Mutex<HashMap<i64, (Instant, Duration)>>,
    shutdown: CancellationToken,
}

impl Training {
    /// Builds the service and starts its scheduler, exit handler and restart reconciliation.
    pub async fn start(
        store: JobStore,
        config: TrainingConfig,
        s3: S3Config,
        s3_endpoint: &str,
        log_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, TrainingError> {
        let channel = |url: &str| {
            tonic::transport::Endpoint::from_shared(url.to_string())
                .map(|endpoint| endpoint.connect_lazy())
                .map_err(|err| TrainingError::InvalidArgument(format!("{url}: {err}")))
        };
        let minio_server = if config.trainer_minio_server.is_empty() {
            host_port(s3_endpoint)
        } else {
            config.trainer_minio_server.clone()
        };
        let (exits, exit_receiver) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let service = Arc::new(Self {
            store,
            data: DataManagementServiceClient::new(channel(&config.data_management)?),
            metadata: MetadataStoreServiceClient::new(channel(&config.metadata_store)?),
            config,
            backend: LocalBackend::new(log_dir),
            s3,
            minio_server,
            wake: Notify::new(),
            events,
            exits,
            backoff: Mutex::new(HashMap::new()),
            shutdown,
        });
        service.reconcile().await?;
        tokio::spawn(Arc::clone(&service).handle_exits(exit_receiver));
        tokio::spawn(Arc::clone(&service).schedule_forever());
        Ok(service)
    }

    /// Train: checks the submission and queues the job.
    pub async fn submit(&self, tenant: &str, spec: JobSpec) -> Result<i64, TrainingError> {
        check_spec(&spec)?;
        if !self.config.algorithms.contains_key(&spec.algorithm) {
            let known: Vec<&str> = self.config.algorithms.keys().map(String::as_str).collect();
            return Err(TrainingError::InvalidArgument(format!(
                "metadata.algorithm `{}` is unknown (known: {})",
                spec.algorithm,
                known.join(", ")
            )));
        }
        if let Snapshot::Failed(reason) = self.snapshot(&spec).await? {
            // The version exists but its build failed: accept, the scheduler fails the job
            // with the reason, as for a build that fails later.
            tracing::info!(%reason, "job submitted for a FAILED snapshot");
        }
        let job_id = self.store.insert(tenant, &spec, LOCAL, &now_iso()).await?;
        tracing::info!(job_id, algorithm = %spec.algorithm, dataset_id = %spec.dataset_id, "job queued");
        self.changed(job_id, JobStatus::Queuing, "");
        Ok(job_id)
    }

    /// GetTrainingStatus.
    pub async fn status(&self, tenant: &str, job_id: i64) -> Result<JobView, TrainingError> {
        let job = self.store.get(tenant, job_id).await?;
        let position = if job.status == JobStatus::Queuing {
            self.store.position(job_id).await?
        } else {
            0
        };
        Ok(JobView { job, position })
    }

    /// ListTrainingJobs.
    pub async fn list(
        &self,
        tenant: &str,
        statuses: &[JobStatus],
        limit: i32,
        index: i32,
    ) -> Result<(Vec<JobView>, i64), TrainingError> {
        if limit < 0 || index < 0 {
            return Err(TrainingError::InvalidArgument(
                "limit and index must not be negative".into(),
            ));
        }
        let (jobs, total) = self
            .store
            .list(tenant, statuses, i64::from(limit), i64::from(index))
            .await?;
        let mut views = Vec::with_capacity(jobs.len());
        for job in jobs {
            let position = if job.status == JobStatus::Queuing {
                self.store.position(job.job_id).await?
            } else {
                0
            };
            views.push(JobView { job, position });
        }
        Ok((views, total))
    }

    /// CancelTrainingJob: a queued job is taken out of the queue, a running one is killed.
    pub async fn cancel(&self, tenant: &str, job_id: i64) -> Result<JobView, TrainingError> {
        let job = self.store.get(tenant, job_id).await?;
        if job.status.is_final() {
            return Err(TrainingError::FailedPrecondition(format!(
                "job {job_id} has already ended"
            )));
        }
        let message = "canceled by request";
        let moved = self
            .store
            .transition(
                job_id,
                &[JobStatus::Queuing, JobStatus::Launch, JobStatus::Running],
                JobStatus::Canceled,
                message,
                None,
                &now_iso(),
            )
            .await?;
        if moved {
            if job.status != JobStatus::Queuing {
                if !self.backend.cancel(job_id) && process_alive(&job.backend_ref) {
                    kill_pid(&job.backend_ref).await;
                }
                self.end_run(job_id, message).await;
            }
            tracing::info!(job_id, "job canceled");
            self.changed(job_id, JobStatus::Canceled, message);
        }
        self.status(tenant, job_id).await
    }

    /// WatchTrainingStatus: the job now, then each change, ending after a final state.
    pub async fn watch(
        self: &Arc<Self>,
        tenant: &str,
        job_id: i64,
    ) -> Result<mpsc::Receiver<Result<JobView, TrainingError>>, TrainingError> {
        let mut notifications = self.events.subscribe();
        let first = self.status(tenant, job_id).await?;
        let (sender, receiver) = mpsc::channel(16);
        let this = Arc::clone(self);
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let mut last = first.clone();
            if sender.send(Ok(first)).await.is_err() || last.job.status.is_final() {
                return;
            }
            loop {
                let next = tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    () = sender.closed() => return,
                    // Writes through another replica reach us by re-reading.
                    () = tokio::time::sleep(this.config.poll_interval()) => {
                        match this.status(&tenant, job_id).await {
                            Ok(view) => view,
                            Err(err) => {
                                let _ = sender.send(Err(err)).await;
                                return;
                            }
                        }
                    }
                    received = notifications.recv() => match received {
                        Ok(change) if change.job_id == job_id => {
                            let mut view = last.clone();
                            view.job.status = change.status;
                            view.job.message = change.message;
                            view.position = 0;
                            view
                        }
                        Ok(_) => continue,
                        // Fell behind: the database has the truth.
                        Err(_) => match this.status(&tenant, job_id).await {
                            Ok(view) => view,
                            Err(err) => {
                                let _ = sender.send(Err(err)).await;
                                return;
                            }
                        },
                    },
                };
                if rank(next.job.status) > rank(last.job.status)
                    || (next.job.status == JobStatus::Queuing && next.position != last.position)
                {
                    last = next.clone();
                    if sender.send(Ok(next)).await.is_err() || last.job.status.is_final() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }

    /// GetTrainingLogs: the job's log from `from_line`, followed until the job ends.
    pub async fn logs(
        self: &Arc<Self>,
        tenant: &str,
        job_id: i64,
        from_line: i64,
    ) -> Result<mpsc::Receiver<Result<(i64, String), TrainingError>>, TrainingError> {
        if from_line < 0 {
            return Err(TrainingError::InvalidArgument(
                "from_line must not be negative".into(),
            ));
        }
        self.store.get(tenant, job_id).await?;
        let (sender, receiver) = mpsc::channel(256);
        let this = Arc::clone(self);
        let tenant = tenant.to_string();
        let path = self.backend.log_path(job_id);
        tokio::spawn(async move {
            let mut offset = 0u64;
            let mut line_number = 0i64;
            let mut partial = String::new();
            loop {
                // Read the job's state before the file, so lines written before it ended are
                // all read before the stream ends.
                let ended = match this.store.get(&tenant, job_id).await {
                    Ok(job) => job.status.is_final(),
                    Err(err) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                };
                match read_lines(&path, &mut offset, &mut partial).await {
                    Ok(lines) => {
                        for line in lines {
                            if line_number >= from_line
                                && sender.send(Ok((line_number, line))).await.is_err()
                            {
                                return;
                            }
                            line_number += 1;
                        }
                    }
                    Err(err) => {
                        let _ = sender.send(Err(err.into())).await;
                        return;
                    }
                }
                if ended {
                    if !partial.is_empty() && line_number >= from_line {
                        let _ = sender
                            .send(Ok((line_number, std::mem::take(&mut partial))))
                            .await;
                    }
                    return;
                }
                tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    () = sender.closed() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Ok(receiver)
    }

    fn changed(&self, job_id: i64, status: JobStatus, message: &str) {
        let _ = self.events.send(Change {
            job_id,
            status,
            message: message.to_string(),
        });
        self.wake.notify_one();
    }

    /// Asks data-management about the job's snapshot.
    async fn snapshot(&self, spec: &JobSpec) -> Result<Snapshot, TrainingError> {
        let response = self
            .data
            .clone()
            .fetch_training_dataset(VersionQuery {
                dataset_id: spec.dataset_id.clone(),
                version_hash: spec.train_data_version_hash.clone(),
            })
            .await;
        match response {
            Ok(found) => {
                let found = found.into_inner();
                Ok(match found.state() {
                    SnapshotState::Ready => {
                        Snapshot::Ready(found.root.map(|root| root.path).unwrap_or_default())
                    }
                    SnapshotState::Running => Snapshot::NotYet,
                    SnapshotState::Failed => Snapshot::Failed(found.message),
                })
            }
            Err(status) => Err(match status.code() {
                Code::NotFound => TrainingError::VersionNotFound {
                    dataset_id: spec.dataset_id.clone(),
                    version_hash: spec.train_data_version_hash.clone(),
                },
                Code::InvalidArgument => TrainingError::InvalidArgument(status.message().into()),
                _ => TrainingError::Unavailable("data-management".into()),
            }),
        }
    }

    async fn schedule_forever(self: Arc<Self>) {
        loop {
            if let Err(err) = self.schedule_once().await {
                tracing::warn!(error = %error_chain(&err), "scheduling pass failed");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval()) => {}
            }
        }
    }

    /// One pass: in queue order, launch every job whose snapshot is READY while the limit
    /// allows; fail those whose snapshot FAILED.
    async fn schedule_once(&self) -> Result<(), TrainingError> {
        for job in self.store.queued(256).await? {
            if !self.due(job.job_id) {
                continue;
            }
            let snapshot = match self.snapshot(&job.spec).await {
                Ok(snapshot) => snapshot,
                Err(TrainingError::VersionNotFound { .. }) => {
                    Snapshot::Failed("the dataset version no longer exists".into())
                }
                Err(err) => return Err(err),
            };
            match snapshot {
                Snapshot::NotYet => self.back_off(job.job_id),
                Snapshot::Failed(reason) => {
                    self.finish(
                        job.job_id,
                        &[JobStatus::Queuing],
                        JobStatus::Failure,
                        &format!("snapshot FAILED: {reason}"),
                    )
                    .await?;
                }
                Snapshot::Ready(path) => {
                    if !self
                        .store
                        .claim(job.job_id, self.config.max_concurrent_jobs, &now_iso())
                        .await?
                    {
                        // At the limit (or another replica took it): wait for a change.
                        return Ok(());
                    }
                    self.changed(job.job_id, JobStatus::Launch, "launching the trainer");
                    self.launch(&job, &path).await?;
                }
            }
        }
        Ok(())
    }

    fn due(&self, job_id: i64) -> bool {
        self.backoff
            .lock()
            .map(|backoff| {
                backoff
                    .get(&job_id)
                    .is_none_or(|(at, _)| Instant::now() >= *at)
            })
            .unwrap_or(true)
    }

    fn back_off(&self, job_id: i64) {
        if let Ok(mut backoff) = self.backoff.lock() {
            let delay = backoff
                .get(&job_id)
                .map_or(Duration::from_millis(100), |(_, d)| {
                    (*d * 2).min(MAX_SNAPSHOT_BACKOFF)
                });
            backoff.insert(job_id, (Instant::now() + delay, delay));
        }
    }

    fn trainer_command(&self, algorithm: &str) -> PathBuf {
        let configured = self
            .config
            .algorithms
            .get(algorithm)
            .map(|a| a.command.clone())
            .unwrap_or_default();
        if !configured.is_empty() {
            return PathBuf::from(configured);
        }
        std::env::current_exe()
            .map(|exe| exe.with_file_name("automl-train"))
            .unwrap_or_else(|_| PathBuf::from("automl-train"))
    }

    /// The trainer environment of the contract.
    fn trainer_env(&self, job: &Job, data_path: &str) -> Vec<(String, String)> {
        let spec = &job.spec;
        let mut env: Vec<(String, String)> = [
            ("JOB_ID", job.job_id.to_string()),
            ("ALGORITHM_NAME", spec.algorithm.clone()),
            (
                "METADATA_STORE_SERVER",
                host_port(&self.config.metadata_store),
            ),
            ("TRAINING_DATASET_ID", spec.dataset_id.clone()),
            (
                "TRAINING_DATASET_VERSION_HASH",
                spec.train_data_version_hash.clone(),
            ),
            ("MODEL_BUCKET", self.s3.models_bucket.clone()),
            ("MODEL_NAME", spec.output_model_name.clone()),
            ("MINIO_SERVER", self.minio_server.clone()),
            ("MINIO_SERVER_ACCESS_KEY", self.s3.access_key.clone()),
            ("MINIO_SERVER_SECRET_KEY", self.s3.secret_key.clone()),
            ("TRAINING_DATA_BUCKET", self.s3.datasets_bucket.clone()),
            ("TRAINING_DATA_PATH", data_path.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if !spec.base_run_id.is_empty() {
            env.push(("BASE_RUN_ID".into(), spec.base_run_id.clone()));
        }
        env.extend(spec.parameters.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    async fn launch(&self, job: &Job, data_path: &str) -> Result<(), TrainingError> {
        let command = self.trainer_command(&job.spec.algorithm);
        let env = self.trainer_env(job, data_path);
        match self
            .backend
            .launch(job.job_id, &command, &env, self.exits.clone())
        {
            Ok(pid) => {
                self.store
                    .transition(
                        job.job_id,
                        &[JobStatus::Launch],
                        JobStatus::Running,
                        "trainer running",
                        Some(&pid.to_string()),
                        &now_iso(),
                    )
                    .await?;
                tracing::info!(job_id = job.job_id, pid, "trainer started");
                self.changed(job.job_id, JobStatus::Running, "trainer running");
                Ok(())
            }
            Err(err) => {
                self.finish(
                    job.job_id,
                    &[JobStatus::Launch],
                    JobStatus::Failure,
                    &err.to_string(),
                )
                .await
            }
        }
    }

    async fn finish(
        &self,
        job_id: i64,
        from: &[JobStatus],
        to: JobStatus,
        message: &str,
    ) -> Result<(), TrainingError> {
        if self
            .store
            .transition(job_id, from, to, message, None, &now_iso())
            .await?
        {
            tracing::info!(job_id, status = ?to, %message, "job ended");
            self.changed(job_id, to, message);
        }
        Ok(())
    }

    async fn handle_exits(self: Arc<Self>, mut exits: mpsc::UnboundedReceiver<(i64, Exit)>) {
        while let Some((job_id, exit)) = exits.recv().await {
            self.backend.finished(job_id);
            if let Err(err) = self.record_exit(job_id, exit).await {
                tracing::error!(job_id, error = %error_chain(&err), "cannot record a trainer's exit");
            }
        }
    }

    async fn record_exit(&self, job_id: i64, exit: Exit) -> Result<(), TrainingError> {
        let active = [JobStatus::Launch, JobStatus::Running];
        match exit {
            Exit::Success => {
                let message = self
                    .run_outcome(job_id)
                    .await
                    .map_or_else(|| "training succeeded".to_string(), |(_, message)| message);
                self.finish(job_id, &active, JobStatus::Succeed, &message)
                    .await
            }
            Exit::Failed(reason) => {
                self.end_run(job_id, &reason).await;
                self.finish(job_id, &active, JobStatus::Failure, &reason)
                    .await
            }
            // The cancel already recorded it.
            Exit::Canceled => Ok(()),
        }
    }

    /// (success, message) of the job's run in metadata-store, when it has ended.
    async fn run_outcome(&self, job_id: i64) -> Option<(bool, String)> {
        let run = self
            .metadata
            .clone()
            .get_run_status(GetRunStatusRequest {
                run_id: job_id.to_string(),
            })
            .await
            .ok()?
            .into_inner()
            .run_info?;
        (!run.end_time.is_empty()).then_some((run.success, run.message))
    }

    /// Ends the job's run as failed, if the trainer started it and did not end it.
    async fn end_run(&self, job_id: i64, reason: &str) {
        let result = self
            .metadata
            .clone()
            .log_run_end(LogRunEndRequest {
                run_id: job_id.to_string(),
                end_time: now_iso(),
                success: false,
                message: reason.to_string(),
            })
            .await;
        match result {
            Ok(_) => tracing::info!(job_id, "run ended as failed"),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {}
            Err(status) => tracing::warn!(job_id, code = ?status.code(), "cannot end the run"),
        }
    }

    /// After a restart: jobs this backend was running are followed until their process is
    /// gone, then settled from their run's outcome; none stays running forever.
    async fn reconcile(self: &Arc<Self>) -> Result<(), TrainingError> {
        for job in self.store.active().await? {
            if job.backend != LOCAL {
                continue;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                while process_alive(&job.backend_ref) {
                    tokio::select! {
                        () = this.shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                let settled = match this.run_outcome(job.job_id).await {
                    Some((true, message)) => (JobStatus::Succeed, message),
                    Some((false, message)) => (JobStatus::Failure, message),
                    None => {
                        let reason = "the trainer process ended while training-service was down";
                        this.end_run(job.job_id, reason).await;
                        (JobStatus::Failure, reason.to_string())
                    }
                };
                let active = [JobStatus::Launch, JobStatus::Running];
                if let Err(err) = this
                    .finish(job.job_id, &active, settled.0, &settled.1)
                    .await
                {
                    tracing::error!(error = %error_chain(&err), "cannot settle a job after a restart");
                }
            });
        }
        Ok(())
    }
}

async fn kill_pid(pid: &str) {
    let _ = tokio::process::Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .await;
}

/// New complete lines of `path` from `offset`; an unfinished last line stays in `partial`.
async fn read_lines(
    path: &std::path::Path,
    offset: &mut u64,
    partial: &mut String,
) -> std::io::Result<Vec<String>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    file.seek(std::io::SeekFrom::Start(*offset)).await?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut lines = Vec::new();
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = reader.read_until(b'\n', &mut buffer).await?;
        if read == 0 {
            return Ok(lines);
        }
        *offset += read as u64;
        partial.push_str(&String::from_utf8_lossy(&buffer));
        if partial.ends_with('\n') {
            let line = std::mem::take(partial);
            lines.push(line.trim_end_matches(['\n', '\r']).to_string());
        }
    }
}
