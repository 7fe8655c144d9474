//! The training-service operations: submission checks, the fair-share scheduler that waits
//! for snapshots and claims jobs under the concurrency limit and tenant quotas (see
//! [`crate::policy`]), launching through the local or Kubernetes backend, deadlines and the
//! launch timeout, cancels that hold until the trainer is gone, exit handling, restart
//! reconciliation, and the status watch and log follow streams.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automl_common::auth::{Authenticator, Credentials, DEFAULT_TENANT, Scope, TOKEN_ENV};
use automl_common::config::S3Config;
use automl_common::error::error_chain;
use automl_common::metrics::metrics;
use automl_common::request_id;
use automl_common::s3::{ObjectStore, S3Error};
use automl_common::time::now_iso;
use automl_common::tls::{CA_FILE_ENV, TlsConfig};
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use automl_proto::data_management::{SnapshotState, VersionQuery};
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::metadata_store::{GetRunStatusRequest, LogRunEndRequest};
use automl_text_classification::pretrained;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::config::{BackendKind, TrainingConfig, host_port};
use crate::error::TrainingError;
use crate::kubernetes::{DEFAULT_TRAINER, JobRef, KubernetesBackend, Observed, TrainerSpec};
use crate::local::{Exit, LocalBackend, deadline_message, kill_trainer, trainer_alive};
use crate::model::{AlgorithmStatus, Job, JobSpec, JobStatus, check_spec, default_algorithm};
use crate::policy::{TenantLoad, check_resources, quota_wait, serve_first};
use crate::store::{Claim, JobStore};

mod experiments;

/// The backend name recorded on jobs run as local processes.
pub const LOCAL: &str = "local";
/// The backend name recorded on jobs run as Kubernetes Jobs.
pub const KUBERNETES: &str = "kubernetes";
/// Longest a snapshot check waits before looking again.
const MAX_SNAPSHOT_BACKOFF: Duration = Duration::from_secs(5);
/// Most queued jobs one scheduling pass considers (oldest first).
const QUEUE_SCAN: i64 = 10_000;
/// A canceled job's message until its trainer is gone.
const CANCELING: &str = "canceling: stopping the trainer";
/// Longest a cancel waits for a killed local trainer's exit before it answers `canceling`.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// A canceled job's final message.
const CANCELED: &str = "canceled by request";

/// Authentication and TLS of the service's own calls and its trainers.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Mints service tokens for calls on a tenant's behalf and job tokens for trainers.
    pub auth: Option<Arc<Authenticator>>,
    /// `https://` service URLs are verified with its CA.
    pub tls: TlsConfig,
}

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
    kubernetes: Option<KubernetesBackend>,
    auth: Option<Arc<Authenticator>>,
    ca_file: String,
    data: DataManagementServiceClient<Channel>,
    metadata: MetadataStoreServiceClient<Channel>,
    s3: S3Config,
    /// Where pretrained models are looked up (the models bucket).
    objects: ObjectStore,
    minio_server: String,
    wake: Notify,
    events: broadcast::Sender<Change>,
    /// Experiments changed by this process (their ids), for watchers.
    experiment_events: broadcast::Sender<i64>,
    /// Wakes the experiment driver (a job changed, an experiment was created or stopped).
    experiments_wake: Notify,
    exits: mpsc::UnboundedSender<(i64, Exit)>,
    backoff: Mutex<HashMap<i64, (Instant, Duration)>>,
    launching: Mutex<HashSet<i64>>,
    /// Jobs whose Job this process is deleting because they did not start, with the reason:
    /// the watch's report that the Job is gone must not tell another story.
    stopping: Mutex<HashMap<i64, String>>,
    launched_at: Mutex<HashMap<i64, Instant>>,
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
        security: Security,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, TrainingError> {
        let Security { auth, tls } = security;
        let channel = |url: &str| {
            tls.endpoint(url)
                .map(|endpoint| endpoint.connect_lazy())
                .map_err(|err| TrainingError::InvalidArgument(err.to_string()))
        };
        let minio_server = if config.trainer_minio_server.is_empty() {
            host_port(s3_endpoint)
        } else {
            config.trainer_minio_server.clone()
        };
        let (exits, exit_receiver) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let kubernetes = match config.backend {
            BackendKind::Local => None,
            BackendKind::Kubernetes => {
                let backend = KubernetesBackend::connect(&config.kubernetes).await?;
                tracing::info!(
                    namespace = backend.namespace(),
                    "trainers run as Kubernetes Jobs"
                );
                Some(backend)
            }
        };
        let service = Arc::new(Self {
            store,
            data: DataManagementServiceClient::new(channel(&config.data_management)?),
            metadata: MetadataStoreServiceClient::new(channel(&config.metadata_store)?),
            config,
            backend: LocalBackend::new(log_dir),
            kubernetes,
            auth,
            ca_file: tls.ca_file.clone(),
            objects: ObjectStore::new(&s3, s3_endpoint),
            s3,
            minio_server,
            wake: Notify::new(),
            events,
            experiment_events: broadcast::channel(1024).0,
            experiments_wake: Notify::new(),
            exits,
            backoff: Mutex::new(HashMap::new()),
            launching: Mutex::new(HashSet::new()),
            stopping: Mutex::new(HashMap::new()),
            launched_at: Mutex::new(HashMap::new()),
            shutdown,
        });
        service.reconcile().await?;
        tokio::spawn(Arc::clone(&service).handle_exits(exit_receiver));
        if let Some(kubernetes) = service.kubernetes.clone() {
            let (observed, receiver) = mpsc::unbounded_channel();
            tokio::spawn(kubernetes.track(observed, service.shutdown.clone()));
            tokio::spawn(Arc::clone(&service).handle_observed(receiver));
        }
        tokio::spawn(Arc::clone(&service).schedule_forever());
        tokio::spawn(Arc::clone(&service).drive_forever());
        Ok(service)
    }

    /// Train: checks the submission and queues the job.
    pub async fn submit(&self, tenant: &str, mut spec: JobSpec) -> Result<i64, TrainingError> {
        self.admit(tenant, &mut spec).await?;
        spec.submission = uuid::Uuid::new_v4().simple().to_string();
        let job_id = self
            .store
            .insert(tenant, &spec, self.config.backend.name(), &now_iso())
            .await?;
        tracing::info!(job_id, algorithm = %spec.algorithm, dataset_id = %spec.dataset_id, "job queued");
        self.changed(job_id, JobStatus::Queuing, "");
        Ok(job_id)
    }

    /// The checks of a submission (fields, resources and the tenant's ceilings, the algorithm
    /// and its parameters, its pretrained model, the dataset version); fills in the default
    /// run time.
    async fn admit(&self, tenant: &str, spec: &mut JobSpec) -> Result<(), TrainingError> {
        check_spec(spec)?;
        check_resources(spec, &self.config.limits, &self.config.quotas.of(tenant))?;
        if !self.config.algorithms.contains_key(&spec.algorithm) {
            let known: Vec<&str> = self.config.algorithms.keys().map(String::as_str).collect();
            return Err(TrainingError::InvalidArgument(format!(
                "metadata.algorithm `{}` is unknown (known: {})",
                spec.algorithm,
                known.join(", ")
            )));
        }
        // The built-in trainer's parameters are checked now, as it will read them, instead of
        // failing the job after its wait in the queue.
        if self.is_builtin(&spec.algorithm) {
            let parameters: HashMap<String, String> = spec
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            automl_text_classification::program::check_parameters(&spec.algorithm, &parameters)
                .map_err(|err| {
                    TrainingError::InvalidArgument(format!("metadata.parameters: {err}"))
                })?;
        } else {
            // A trainer of its own: the parameters its registry entry declares.
            check_declared(&self.declared_parameters(&spec.algorithm), &spec.parameters).map_err(
                |err| TrainingError::InvalidArgument(format!("metadata.parameters: {err}")),
            )?;
        }
        if let Some(name) = self.pretrained_of(&spec.algorithm)
            && self.pretrained_current(name).await?.is_none()
        {
            return Err(TrainingError::FailedPrecondition(not_imported(
                &spec.algorithm,
                name,
            )));
        }
        if let Snapshot::Failed(reason) = self.snapshot(tenant, spec).await? {
            // The version exists but its build failed: accept, the scheduler fails the job
            // with the reason, as for a build that fails later.
            tracing::info!(%reason, "job submitted for a FAILED snapshot");
        }
        Ok(())
    }

    /// The parameters `algorithm`'s trainer reads: the built-in trainer's own declarations,
    /// or the registry entry's `parameters`.
    fn declared_parameters(&self, algorithm: &str) -> Vec<crate::config::ParameterConfig> {
        if self.is_builtin(algorithm) {
            automl_text_classification::declare::parameters(algorithm)
                .iter()
                .map(crate::config::ParameterConfig::of_builtin)
                .collect()
        } else {
            self.config
                .algorithms
                .get(algorithm)
                .map(|a| a.parameters.clone())
                .unwrap_or_default()
        }
    }

    /// Whether `algorithm` runs the built-in trainer (no program of its own), whose
    /// parameters it declares itself.
    fn is_builtin(&self, algorithm: &str) -> bool {
        self.config
            .algorithms
            .get(algorithm)
            .is_some_and(|algorithm| algorithm.command.is_empty())
    }

    /// ListAlgorithms: the registry, whether each algorithm is ready, and the default.
    pub async fn algorithms(&self) -> (Vec<AlgorithmStatus>, String) {
        let mut algorithms = Vec::with_capacity(self.config.algorithms.len());
        for (name, algorithm) in &self.config.algorithms {
            let message = if algorithm.pretrained.is_empty() {
                String::new()
            } else {
                match self.pretrained_current(&algorithm.pretrained).await {
                    Ok(Some(_)) => String::new(),
                    Ok(None) => not_imported(name, &algorithm.pretrained),
                    Err(TrainingError::Unavailable(what)) => format!(
                        "cannot check the pretrained model {}: {what} is unavailable",
                        algorithm.pretrained
                    ),
                    Err(_) => format!(
                        "the pretrained model {} cannot be read: import it again with `automl pretrained import`",
                        algorithm.pretrained
                    ),
                }
            };
            let parameters = self.declared_parameters(name);
            algorithms.push(AlgorithmStatus {
                name: name.clone(),
                pretrained_model: algorithm.pretrained.clone(),
                ready: message.is_empty(),
                message,
                parameters,
            });
        }
        let default = default_algorithm(&algorithms);
        (algorithms, default)
    }

    /// The pretrained model `algorithm` needs, if any.
    fn pretrained_of(&self, algorithm: &str) -> Option<&str> {
        self.config
            .algorithms
            .get(algorithm)
            .map(|a| a.pretrained.as_str())
            .filter(|name| !name.is_empty())
    }

    /// The current import of pretrained model `name`.
    async fn pretrained_current(
        &self,
        name: &str,
    ) -> Result<Option<pretrained::PretrainedRef>, TrainingError> {
        let bucket = &self.objects.models_bucket;
        pretrained::current(&self.objects, bucket, name)
            .await
            .map_err(|err| {
                tracing::warn!(name, error = %error_chain(&err), "cannot read the pretrained model");
                match err {
                    automl_text_classification::Error::Store(S3Error::Unavailable(_)) => {
                        TrainingError::Unavailable("the object store".into())
                    }
                    other => TrainingError::Corrupt(format!("pretrained model {name}: {other}")),
                }
            })
    }

    /// `<name>@<digest>` of the pretrained model a job's algorithm needs, as imported now.
    async fn pretrained_for_launch(
        &self,
        algorithm: &str,
    ) -> Result<Option<String>, TrainingError> {
        let Some(name) = self.pretrained_of(algorithm) else {
            return Ok(None);
        };
        match self.pretrained_current(name).await? {
            Some(reference) => Ok(Some(reference.id())),
            None => Err(TrainingError::FailedPrecondition(not_imported(
                algorithm, name,
            ))),
        }
    }

    /// GetTrainingStatus.
    pub async fn status(&self, tenant: &str, job_id: i64) -> Result<JobView, TrainingError> {
        let job = self.store.get(tenant, job_id).await?;
        self.view(job, None).await
    }

    /// A job with its place among its tenant's queued jobs and, when its tenant is at its
    /// quota, why it waits. `load` is the tenant's, when the caller has read it already.
    async fn view(&self, mut job: Job, load: Option<TenantLoad>) -> Result<JobView, TrainingError> {
        if job.status != JobStatus::Queuing {
            return Ok(JobView { job, position: 0 });
        }
        let position = self.store.position(&job).await?;
        let load = match load {
            Some(load) => load,
            None => self
                .store
                .tenant_loads(&[job.tenant.as_str()])
                .await?
                .remove(&job.tenant)
                .unwrap_or_default(),
        };
        let quota = self.config.quotas.of(&job.tenant);
        job.message =
            quota_wait(&quota, &load, i64::from(job.spec.resources.gpus)).unwrap_or_default();
        Ok(JobView { job, position })
    }

    /// ListTrainingJobs: the tenant's jobs, only those in `statuses` and, when `job_ids` is
    /// not empty, only those ids (ids of no job of the tenant are left out).
    pub async fn list(
        &self,
        tenant: &str,
        statuses: &[JobStatus],
        job_ids: &[i32],
        limit: i32,
        index: i32,
    ) -> Result<(Vec<JobView>, i64), TrainingError> {
        let (limit, offset) = page(limit, index)?;
        if job_ids.len() > MAX_LISTED_JOB_IDS {
            return Err(TrainingError::InvalidArgument(format!(
                "job_ids has more than {MAX_LISTED_JOB_IDS} entries"
            )));
        }
        let job_ids: Vec<i64> = job_ids.iter().map(|id| i64::from(*id)).collect();
        let (jobs, total) = self
            .store
            .list(tenant, statuses, &job_ids, limit, offset)
            .await?;
        let load = if jobs.iter().any(|job| job.status == JobStatus::Queuing) {
            self.store.tenant_loads(&[tenant]).await?.remove(tenant)
        } else {
            None
        };
        let mut views = Vec::with_capacity(jobs.len());
        for job in jobs {
            views.push(self.view(job, load).await?);
        }
        Ok((views, total))
    }

    /// CancelTrainingJob: a queued job is taken out of the queue; a launched or running one
    /// reads `canceling` and keeps its slot until its trainer is gone (the process killed, the
    /// Kubernetes Job deleted, retried until it is), then ends `canceled`.
    pub async fn cancel(&self, tenant: &str, job_id: i64) -> Result<JobView, TrainingError> {
        self.cancel_for(tenant, job_id, "", true).await
    }

    /// Cancels a job for `reason` (empty: by request); a local trainer's end is awaited a
    /// few seconds when `wait`.
    async fn cancel_for(
        &self,
        tenant: &str,
        job_id: i64,
        reason: &str,
        wait: bool,
    ) -> Result<JobView, TrainingError> {
        let job = self.store.get(tenant, job_id).await?;
        if job.status.is_final() {
            return Err(TrainingError::FailedPrecondition(format!(
                "job {job_id} has already ended"
            )));
        }
        let message = if reason.is_empty() { CANCELED } else { reason };
        if job.status == JobStatus::Queuing
            && self
                .store
                .transition(
                    job_id,
                    &[JobStatus::Queuing],
                    JobStatus::Canceled,
                    message,
                    None,
                    &now_iso(),
                )
                .await?
        {
            tracing::info!(job_id, reason = message, "queued job canceled");
            self.record_end(job_id, JobStatus::Canceled);
            self.changed(job_id, JobStatus::Canceled, message);
            return self.status(tenant, job_id).await;
        }
        // Launched or running (or claimed just now).
        if self
            .store
            .mark_canceling(job_id, CANCELING, reason, &now_iso())
            .await?
        {
            tracing::info!(job_id, reason = message, "canceling the job");
            let job = self.store.get(tenant, job_id).await?;
            self.stop_canceling(&job).await?;
            // A killed local process is gone in moments: answer with the outcome then.
            let until = Instant::now() + CANCEL_WAIT;
            while wait && job.backend == LOCAL && Instant::now() < until {
                if self.store.get(tenant, job_id).await?.status.is_final() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.status(tenant, job_id).await
    }

    /// One attempt to stop a canceling job's trainer; the job ends `canceled` once it is gone,
    /// and the next scheduling pass tries again while it is not.
    async fn stop_canceling(&self, job: &Job) -> Result<(), TrainingError> {
        if job.backend == KUBERNETES {
            let Some(kubernetes) = &self.kubernetes else {
                tracing::warn!(
                    job_id = job.job_id,
                    "job runs on Kubernetes but this training-service has the local backend"
                );
                return Ok(());
            };
            // A Job being created right now is deleted once it exists (next pass).
            if self.is_launching(job.job_id) {
                return Ok(());
            }
            return match kubernetes.cancel(job.job_id).await {
                Ok(()) => self.canceled(job).await,
                Err(err) => {
                    tracing::warn!(job_id = job.job_id, error = %error_chain(&err), "cannot delete the Job yet; retrying");
                    let message = format!(
                        "{CANCELING}: cannot delete the Kubernetes Job yet ({err}); retrying"
                    );
                    self.store
                        .transition(
                            job.job_id,
                            &[JobStatus::Launch, JobStatus::Running],
                            job.status,
                            &message,
                            None,
                            &now_iso(),
                        )
                        .await?;
                    Ok(())
                }
            };
        }
        // This process's child: killed now, recorded `canceled` by the exit handler.
        if self.backend.cancel(job.job_id) {
            return Ok(());
        }
        // Started by an earlier process (or another replica on this machine): signalled only if
        // its pid still names the process that was started.
        if job.status == JobStatus::Running && trainer_alive(&job.backend_ref) {
            kill_trainer(&job.backend_ref);
            if trainer_alive(&job.backend_ref) {
                return Ok(());
            }
        }
        // Claimed but not yet started here: the launch sees the cancel and stops.
        if job.status == JobStatus::Launch && self.is_launching(job.job_id) {
            return Ok(());
        }
        self.canceled(job).await
    }

    /// A canceling job whose trainer is gone ends `canceled`.
    async fn canceled(&self, job: &Job) -> Result<(), TrainingError> {
        let message = if job.cancel_reason.is_empty() {
            CANCELED
        } else {
            job.cancel_reason.as_str()
        };
        self.end_run(&job.tenant, job.job_id, message).await;
        self.finish(
            job.job_id,
            &[JobStatus::Launch, JobStatus::Running],
            JobStatus::Canceled,
            message,
        )
        .await
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
        let job = self.store.get(tenant, job_id).await?;
        let (sender, receiver) = mpsc::channel(256);
        let this = Arc::clone(self);
        let tenant = tenant.to_string();
        if job.backend == KUBERNETES {
            let Some(kubernetes) = self.kubernetes.clone() else {
                return Err(TrainingError::FailedPrecondition(format!(
                    "job {job_id} ran on Kubernetes; this training-service has the local backend"
                )));
            };
            tokio::spawn(async move {
                if let Err(err) = this
                    .pod_logs(&kubernetes, &tenant, job_id, from_line, &sender)
                    .await
                {
                    let _ = sender.send(Err(err)).await;
                }
            });
            return Ok(receiver);
        }
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

    /// Streams a Kubernetes job's pod log from `from_line`, following it until the job ends.
    /// When the follow stream breaks off early the log is read again and the lines already
    /// sent are skipped.
    async fn pod_logs(
        &self,
        kubernetes: &KubernetesBackend,
        tenant: &str,
        job_id: i64,
        from_line: i64,
        sender: &mpsc::Sender<Result<(i64, String), TrainingError>>,
    ) -> Result<(), TrainingError> {
        let mut sent = from_line;
        loop {
            let ended = self.store.get(tenant, job_id).await?.status.is_final();
            let pod = kubernetes.pod_of(job_id).await?;
            let started = pod.as_ref().is_some_and(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|status| status.phase.as_deref())
                    .is_some_and(|phase| phase != "Pending")
            });
            if let (Some(pod), true) = (pod, started) {
                let name = pod.metadata.name.unwrap_or_default();
                let mut lines = Box::pin(kubernetes.log_lines(&name, !ended).await?);
                let mut number = 0i64;
                loop {
                    let line = tokio::select! {
                        () = self.shutdown.cancelled() => return Ok(()),
                        () = sender.closed() => return Ok(()),
                        line = futures::StreamExt::next(&mut lines) => line,
                    };
                    let Some(line) = line else { break };
                    let line = line?;
                    if number >= sent {
                        if sender.send(Ok((number, line))).await.is_err() {
                            return Ok(());
                        }
                        sent = number + 1;
                    }
                    number += 1;
                }
            }
            if ended {
                return Ok(());
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                () = sender.closed() => return Ok(()),
                () = tokio::time::sleep(self.config.poll_interval()) => {}
            }
        }
    }

    fn changed(&self, job_id: i64, status: JobStatus, message: &str) {
        let _ = self.events.send(Change {
            job_id,
            status,
            message: message.to_string(),
        });
        self.wake.notify_one();
        self.experiments_wake.notify_one();
    }

    /// Asks data-management about the job's snapshot.
    async fn snapshot(&self, tenant: &str, spec: &JobSpec) -> Result<Snapshot, TrainingError> {
        let response = self
            .data
            .clone()
            .fetch_training_dataset(self.on_behalf(
                tenant,
                VersionQuery {
                    dataset_id: spec.dataset_id.clone(),
                    version_hash: spec.train_data_version_hash.clone(),
                },
            ))
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
                _ => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "data-management call failed");
                    TrainingError::Unavailable("data-management".into())
                }
            }),
        }
    }

    async fn schedule_forever(self: Arc<Self>) {
        loop {
            if let Err(err) = self.supervise().await {
                tracing::warn!(error = %error_chain(&err), "supervising pass failed");
            }
            if let Err(err) = self.schedule_once().await {
                tracing::warn!(error = %error_chain(&err), "scheduling pass failed");
            }
            self.update_gauges().await;
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval()) => {}
            }
        }
    }

    async fn update_gauges(&self) {
        match self.store.counts().await {
            Ok((queued, active)) => {
                let training = &metrics().training;
                training.set_queue_depth(u64::try_from(queued).unwrap_or_default());
                training.set_running_jobs(u64::try_from(active).unwrap_or_default());
            }
            Err(err) => tracing::warn!(error = %error_chain(&err), "cannot count jobs"),
        }
    }

    /// Active jobs that need the service: canceling ones whose trainer is not yet gone, and
    /// Kubernetes jobs whose pod has not started within the launch timeout.
    async fn supervise(&self) -> Result<(), TrainingError> {
        let launch_timeout = self.config.limits.launch_timeout_seconds;
        let now = now_ms();
        for job in self.store.active().await? {
            let (id, span) = job_scope(job.job_id, &job.spec.request_id);
            let result = if job.canceling {
                request_id::scope(id, self.stop_canceling(&job).instrument(span)).await
            } else if job.backend == KUBERNETES
                && job.status == JobStatus::Launch
                && job.claimed_ms > 0
                && now - job.claimed_ms > launch_timeout.saturating_mul(1000)
                && !self.is_launching(job.job_id)
            {
                request_id::scope(id, self.launch_timed_out(&job).instrument(span)).await
            } else {
                Ok(())
            };
            if let Err(err) = result {
                tracing::warn!(job_id = job.job_id, error = %error_chain(&err), "cannot supervise a job");
            }
        }
        Ok(())
    }

    /// A Kubernetes job whose pod did not start in time: its Job is deleted (retried on the
    /// next pass when that fails) and the job fails with the pod's reason, freeing the slot.
    async fn launch_timed_out(&self, job: &Job) -> Result<(), TrainingError> {
        let Some(kubernetes) = &self.kubernetes else {
            return Ok(());
        };
        let reason = kubernetes.pending_reason(job.job_id).await;
        let message = format!(
            "the trainer did not start within {} s: {reason}",
            self.config.limits.launch_timeout_seconds
        );
        if let Ok(mut stopping) = self.stopping.lock() {
            stopping.insert(job.job_id, message.clone());
        }
        let result = match kubernetes.cancel(job.job_id).await {
            Ok(()) => self.fail_unstarted(job, &message).await,
            Err(err) => Err(err),
        };
        if let Ok(mut stopping) = self.stopping.lock() {
            stopping.remove(&job.job_id);
        }
        result
    }

    async fn fail_unstarted(&self, job: &Job, message: &str) -> Result<(), TrainingError> {
        self.end_run(&job.tenant, job.job_id, message).await;
        self.finish(
            job.job_id,
            &[JobStatus::Launch],
            JobStatus::Failure,
            message,
        )
        .await
    }

    /// One pass: serve tenants in fair order (see [`crate::policy`]), each tenant's queued jobs
    /// by priority then age; launch jobs whose snapshot is READY while the concurrency limit
    /// and the tenant's quota allow; fail those whose snapshot FAILED.
    async fn schedule_once(&self) -> Result<(), TrainingError> {
        let queued = self.store.queued(QUEUE_SCAN).await?;
        if queued.is_empty() {
            return Ok(());
        }
        let mut queues: BTreeMap<String, VecDeque<Job>> = BTreeMap::new();
        for job in queued {
            queues.entry(job.tenant.clone()).or_default().push_back(job);
        }
        for queue in queues.values_mut() {
            queue
                .make_contiguous()
                .sort_by_key(|job| (std::cmp::Reverse(job.spec.priority), job.job_id));
        }
        let tenants: Vec<&str> = queues.keys().map(String::as_str).collect();
        let mut loads = self.store.tenant_loads(&tenants).await?;
        let mut next_claim = loads.values().map(|l| l.last_claim).max().unwrap_or(0) + 1;
        loop {
            let Some(tenant) = queues
                .iter()
                .filter(|(_, queue)| !queue.is_empty())
                .map(|(tenant, _)| tenant)
                .min_by(|a, b| {
                    let load = |t: &str| loads.get(t).copied().unwrap_or_default();
                    let weight = |t: &str| self.config.quotas.of(t).weight;
                    serve_first((a, &load(a), weight(a)), (b, &load(b), weight(b)))
                })
                .cloned()
            else {
                return Ok(());
            };
            let quota = self.config.quotas.of(&tenant);
            let Some(job) = queues.get_mut(&tenant).and_then(VecDeque::pop_front) else {
                continue;
            };
            if !self.due(job.job_id) {
                continue;
            }
            let (id, span) = job_scope(job.job_id, &job.spec.request_id);
            let claim =
                request_id::scope(id, self.schedule_job(&job, &quota).instrument(span)).await?;
            match claim {
                Some(Claim::Claimed) => {
                    let load = loads.entry(tenant).or_default();
                    load.active += 1;
                    load.gpus += i64::from(job.spec.resources.gpus);
                    load.last_claim = next_claim;
                    next_claim += 1;
                }
                // The platform is full: the rest waits for a change.
                Some(Claim::AtLimit) => return Ok(()),
                // This tenant is at its quota: its other jobs wait too (they say why when
                // asked).
                Some(Claim::Quota) => {
                    queues.remove(&tenant);
                }
                Some(Claim::Gone) | None => {}
            }
        }
    }

    /// Launches or fails one queued job as its snapshot says; the claim's outcome when the
    /// snapshot is READY, `None` otherwise.
    async fn schedule_job(
        &self,
        job: &Job,
        quota: &crate::config::Quota,
    ) -> Result<Option<Claim>, TrainingError> {
        let snapshot = match self.snapshot(&job.tenant, &job.spec).await {
            Ok(snapshot) => snapshot,
            Err(TrainingError::VersionNotFound { .. }) => {
                Snapshot::Failed("the dataset version no longer exists".into())
            }
            Err(err) => return Err(err),
        };
        match snapshot {
            Snapshot::NotYet => {
                self.back_off(job.job_id);
                Ok(None)
            }
            Snapshot::Failed(reason) => {
                self.finish(
                    job.job_id,
                    &[JobStatus::Queuing],
                    JobStatus::Failure,
                    &format!("snapshot FAILED: {reason}"),
                )
                .await?;
                Ok(None)
            }
            Snapshot::Ready(path) => {
                let claim = self
                    .store
                    .claim(
                        job,
                        self.config.max_concurrent_jobs,
                        quota,
                        &now_iso(),
                        now_ms(),
                    )
                    .await?;
                if claim == Claim::Claimed {
                    self.changed(job.job_id, JobStatus::Launch, "launching the trainer");
                    self.launch(job, &path).await?;
                }
                Ok(Some(claim))
            }
        }
    }

    /// The longest `job`'s trainer may run.
    fn max_runtime(&self, job: &Job) -> Duration {
        let seconds = match job.spec.resources.max_runtime_seconds {
            0 => self.config.limits.default_max_runtime_seconds,
            seconds => seconds,
        };
        Duration::from_secs(u64::try_from(seconds).unwrap_or(1).max(1))
    }

    /// How long what a job's trainer is given (object grants, its token) must stay valid: its
    /// launch timeout and its run time.
    pub fn job_lifetime(&self, job: &Job) -> Duration {
        let launch = u64::try_from(self.config.limits.launch_timeout_seconds).unwrap_or(0);
        self.max_runtime(job) + Duration::from_secs(launch)
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

    /// The local trainer program of `algorithm` and its arguments.
    fn trainer_command(&self, algorithm: &str) -> (PathBuf, Vec<String>) {
        let configured = self
            .config
            .algorithms
            .get(algorithm)
            .cloned()
            .unwrap_or_default();
        if !configured.command.is_empty() {
            return (PathBuf::from(configured.command), configured.args);
        }
        match std::env::current_exe() {
            Ok(exe) => crate::local::builtin_trainer(&exe, configured.args),
            Err(_) => (PathBuf::from("automl-train"), configured.args),
        }
    }

    /// The trainer environment of the contract; `pretrained` is the `<name>@<digest>` of the
    /// pretrained model the algorithm builds on. The trainer reaches its objects through
    /// presigned URLs (`AUTOML_OBJECT_GRANTS`); only `raw_s3_access` algorithms get the object
    /// store's keys.
    async fn trainer_env(
        &self,
        job: &Job,
        data_path: &str,
        pretrained: Option<String>,
    ) -> Result<Vec<(String, String)>, TrainingError> {
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
            ("TRAINING_DATA_BUCKET", self.s3.datasets_bucket.clone()),
            ("TRAINING_DATA_PATH", data_path.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let algorithm = self
            .config
            .algorithms
            .get(&spec.algorithm)
            .cloned()
            .unwrap_or_default();
        if algorithm.raw_s3_access {
            env.extend(crate::grants::s3_key_env(&algorithm, &self.s3));
        } else {
            let grants = self
                .object_grants(job, &algorithm, data_path, pretrained.as_deref())
                .await?;
            env.push((
                automl_common::s3::grants::GRANTS_ENV.into(),
                grants.to_json(),
            ));
        }
        if !spec.base_run_id.is_empty() {
            env.push(("BASE_RUN_ID".into(), spec.base_run_id.clone()));
        }
        if let Some(pretrained) = pretrained {
            env.push(("PRETRAINED_MODEL".into(), pretrained));
        }
        // A job given GPUs trains on one, unless its parameters choose the device.
        if spec.resources.gpus > 0 && !spec.parameters.contains_key("DEVICE") {
            env.push(("DEVICE".into(), "cuda".into()));
        }
        if !spec.request_id.is_empty() {
            env.push((request_id::ENV_VAR.into(), spec.request_id.clone()));
        }
        env.extend(automl_common::otlp::child_env(&spec.traceparent));
        if !self.ca_file.is_empty() {
            env.push((CA_FILE_ENV.into(), self.ca_file.clone()));
        }
        if let Some(auth) = &self.auth {
            // The trainer's token reaches its own run and snapshot only, and expires with the
            // job's deadline.
            let token = auth.mint(
                &job.tenant,
                &format!("job-{}", job.job_id),
                Scope::Run {
                    run_id: job.job_id.to_string(),
                    dataset_id: spec.dataset_id.clone(),
                    version_hash: spec.train_data_version_hash.clone(),
                    base_run_id: spec.base_run_id.clone(),
                },
                self.job_lifetime(job)
                    .min(automl_common::auth::JOB_TOKEN_TTL),
            );
            env.push((TOKEN_ENV.into(), token));
        }
        // Submission refuses reserved names; a job stored before that check never overrides
        // what is set above either.
        env.extend(
            spec.parameters
                .iter()
                .filter(|(k, _)| !crate::model::is_reserved_variable(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        Ok(env)
    }

    /// Presigned URLs of exactly the objects `job`'s trainer needs, valid for the job's
    /// lifetime.
    async fn object_grants(
        &self,
        job: &Job,
        algorithm: &crate::config::AlgorithmConfig,
        data_path: &str,
        pretrained: Option<&str>,
    ) -> Result<automl_common::s3::grants::ObjectGrants, TrainingError> {
        let base = if job.spec.base_run_id.is_empty() {
            None
        } else {
            self.base_artifact(&job.tenant, &job.spec.base_run_id)
                .await?
        };
        let objects = crate::grants::JobObjects {
            job,
            algorithm,
            data_path,
            datasets_bucket: &self.s3.datasets_bucket,
            models_bucket: &self.s3.models_bucket,
            pretrained,
            base: base
                .as_ref()
                .map(|(bucket, path)| (bucket.as_str(), path.as_str())),
        };
        let signer = crate::grants::signer(&self.s3, &self.minio_server);
        crate::grants::for_job(&signer, &objects, self.job_lifetime(job)).await
    }

    /// (bucket, path) of base run `run_id`'s artifact (GetArtifact on the tenant's behalf);
    /// none when it has none, which the trainer then reports.
    async fn base_artifact(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<(String, String)>, TrainingError> {
        let request = automl_proto::metadata_store::GetArtifactRequest {
            run_id: run_id.to_string(),
        };
        match self
            .metadata
            .clone()
            .get_artifact(self.on_behalf(tenant, request))
            .await
        {
            Ok(found) => Ok(found
                .into_inner()
                .artifact
                .map(|artifact| (artifact.bucket, artifact.path))),
            Err(status)
                if matches!(
                    status.code(),
                    Code::NotFound | Code::InvalidArgument | Code::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot locate the base run's artifact");
                Err(TrainingError::Unavailable("metadata-store".into()))
            }
        }
    }

    async fn launch(&self, job: &Job, data_path: &str) -> Result<(), TrainingError> {
        if let Ok(mut launched) = self.launched_at.lock() {
            launched.insert(job.job_id, Instant::now());
        }
        let pretrained = match self.pretrained_for_launch(&job.spec.algorithm).await {
            Ok(pretrained) => pretrained,
            Err(err) => return self.launch_failed(job.job_id, &err).await,
        };
        let env = match self.trainer_env(job, data_path, pretrained).await {
            Ok(env) => env,
            Err(err) => return self.launch_failed(job.job_id, &err).await,
        };
        if let Some(kubernetes) = &self.kubernetes {
            return self.launch_kubernetes(kubernetes, job, env).await;
        }
        let (command, args) = self.trainer_command(&job.spec.algorithm);
        self.set_launching(job.job_id, true);
        let started = self.backend.launch(
            job.job_id,
            &command,
            &args,
            &env,
            self.max_runtime(job),
            self.exits.clone(),
        );
        let result = match started {
            Ok(identity) => self.started(job, &identity).await,
            Err(err) => self.launch_failed(job.job_id, &err).await,
        };
        self.set_launching(job.job_id, false);
        result
    }

    /// Records a local trainer that started (`pid:start`).
    async fn started(&self, job: &Job, identity: &str) -> Result<(), TrainingError> {
        let moved = self
            .store
            .transition(
                job.job_id,
                &[JobStatus::Launch],
                JobStatus::Running,
                "trainer running",
                Some(identity),
                &now_iso(),
            )
            .await?;
        let canceling = moved && self.store.get_by_id(job.job_id).await?.canceling;
        if !moved || canceling {
            // Canceled while the process was starting: stop it now; its exit records the end.
            tracing::info!(
                job_id = job.job_id,
                "canceled during launch; stopping the trainer"
            );
            self.backend.cancel(job.job_id);
            return Ok(());
        }
        tracing::info!(job_id = job.job_id, trainer = identity, request_id = %job.spec.request_id, "trainer started");
        self.changed(job.job_id, JobStatus::Running, "trainer running");
        Ok(())
    }

    fn set_launching(&self, job_id: i64, launching: bool) {
        if let Ok(mut set) = self.launching.lock() {
            if launching {
                set.insert(job_id);
            } else {
                set.remove(&job_id);
            }
        }
    }

    async fn launch_kubernetes(
        &self,
        kubernetes: &KubernetesBackend,
        job: &Job,
        env: Vec<(String, String)>,
    ) -> Result<(), TrainingError> {
        let algorithm = self
            .config
            .algorithms
            .get(&job.spec.algorithm)
            .cloned()
            .unwrap_or_default();
        let image = if job.spec.resources.gpus > 0 && !algorithm.gpu_image.is_empty() {
            algorithm.gpu_image
        } else {
            algorithm.image
        };
        let command = if algorithm.command.is_empty() {
            DEFAULT_TRAINER.to_string()
        } else {
            algorithm.command
        };
        let trainer = TrainerSpec {
            image,
            command,
            env,
        };
        // The Job carries the run-time deadline (`activeDeadlineSeconds`).
        let mut job = job.clone();
        job.spec.resources.max_runtime_seconds =
            i64::try_from(self.max_runtime(&job).as_secs()).unwrap_or(i64::MAX);
        self.set_launching(job.job_id, true);
        let launched = kubernetes.launch(&job, &trainer).await;
        let result = self.launched(&job, &trainer, launched).await;
        self.set_launching(job.job_id, false);
        result
    }

    async fn launched(
        &self,
        job: &Job,
        trainer: &TrainerSpec,
        launched: Result<String, TrainingError>,
    ) -> Result<(), TrainingError> {
        match launched {
            Ok(name) => {
                let message = format!("Job {name} created; waiting for its pod");
                let recorded = self
                    .store
                    .transition(
                        job.job_id,
                        &[JobStatus::Launch],
                        JobStatus::Launch,
                        &message,
                        Some(&name),
                        &now_iso(),
                    )
                    .await?;
                // Its pod may have been reported running before this was recorded: the job
                // is then `running` already and keeps its Job.
                let running = !recorded
                    && self
                        .store
                        .transition(
                            job.job_id,
                            &[JobStatus::Running],
                            JobStatus::Running,
                            "trainer running",
                            Some(&name),
                            &now_iso(),
                        )
                        .await?;
                if !recorded && !running {
                    // Ended while the Job was being created: take the Job back now.
                    tracing::info!(job_id = job.job_id, job = %name, "canceled during launch; deleting the Job");
                    if let Some(kubernetes) = &self.kubernetes {
                        kubernetes.cancel(job.job_id).await?;
                    }
                    return Ok(());
                }
                tracing::info!(
                    job_id = job.job_id,
                    job = %name,
                    image = %trainer.image,
                    request_id = %job.spec.request_id,
                    "trainer Job created"
                );
                Ok(())
            }
            Err(err) => self.launch_failed(job.job_id, &err).await,
        }
    }

    /// A job whose trainer could not be started fails with the reason.
    async fn launch_failed(&self, job_id: i64, err: &TrainingError) -> Result<(), TrainingError> {
        self.finish(
            job_id,
            &[JobStatus::Launch],
            JobStatus::Failure,
            &err.to_string(),
        )
        .await
    }

    /// Applies what the Kubernetes backend observed.
    async fn handle_observed(self: Arc<Self>, mut observed: mpsc::UnboundedReceiver<Observed>) {
        while let Some(item) = observed.recv().await {
            let result = match &item {
                Observed::Listed(present) => self.settle_missing(present).await,
                Observed::Running(found) | Observed::Gone(found) | Observed::Exited(found, _) => {
                    // One read: whether the Job is this job's, and its tenant and request id.
                    match self.store.get_by_id(found.job_id).await {
                        Ok(job) if found.is_of(&job) => {
                            let (id, span) = job_scope(job.job_id, &job.spec.request_id);
                            let applied = self.apply_observed(&job, item);
                            request_id::scope(id, applied.instrument(span)).await
                        }
                        // A Job of another job with the same id (or of a job not in this
                        // database).
                        _ => Ok(()),
                    }
                }
            };
            if let Err(err) = result {
                tracing::error!(error = %error_chain(&err), "cannot record what Kubernetes reported");
            }
        }
    }

    /// What a Job of this database's `job` reported.
    async fn apply_observed(&self, job: &Job, item: Observed) -> Result<(), TrainingError> {
        match item {
            Observed::Running(_) => self.running(job.job_id).await,
            Observed::Exited(_, exit) => self.record_exit(job, exit).await,
            // Deleted on a cancel: the job ends as asked.
            Observed::Gone(_) if job.canceling => self.canceled(job).await,
            Observed::Gone(_) => {
                let stopping = self
                    .stopping
                    .lock()
                    .ok()
                    .and_then(|stopping| stopping.get(&job.job_id).cloned());
                match stopping {
                    Some(reason) => self.fail_unstarted(job, &reason).await,
                    None => {
                        self.settle(
                            job.job_id,
                            "the Kubernetes Job was deleted before it finished",
                        )
                        .await
                    }
                }
            }
            Observed::Listed(present) => self.settle_missing(&present).await,
        }
    }

    async fn running(&self, job_id: i64) -> Result<(), TrainingError> {
        let message = "trainer running";
        if self
            .store
            .transition(
                job_id,
                &[JobStatus::Launch],
                JobStatus::Running,
                message,
                None,
                &now_iso(),
            )
            .await?
        {
            tracing::info!(job_id, "trainer pod running");
            self.changed(job_id, JobStatus::Running, message);
        }
        Ok(())
    }

    /// Re-attach after a (re)list: active Kubernetes jobs without a Job object are settled.
    async fn settle_missing(&self, present: &HashSet<JobRef>) -> Result<(), TrainingError> {
        let Some(kubernetes) = &self.kubernetes else {
            return Ok(());
        };
        for job in self.store.active().await? {
            if job.backend != KUBERNETES || present.iter().any(|found| found.is_of(&job)) {
                continue;
            }
            // A Job created after the list was taken is not missing.
            if kubernetes.exists(&job).await? {
                continue;
            }
            // Claimed by this process and being created right now.
            if job.backend_ref.is_empty() && self.is_launching(job.job_id) {
                continue;
            }
            self.settle(job.job_id, "the Kubernetes Job is gone")
                .await?;
        }
        Ok(())
    }

    fn is_launching(&self, job_id: i64) -> bool {
        self.launching
            .lock()
            .map(|launching| launching.contains(&job_id))
            .unwrap_or(false)
    }

    /// Settles a job whose trainer is gone from its run's outcome in metadata-store.
    async fn settle(&self, job_id: i64, reason: &str) -> Result<(), TrainingError> {
        let tenant = self.job_tenant(job_id).await;
        let (status, message) = match self.run_outcome(&tenant, job_id).await {
            Some((true, message)) => (JobStatus::Succeed, message),
            Some((false, message)) => (JobStatus::Failure, message),
            None => {
                self.end_run(&tenant, job_id, reason).await;
                (JobStatus::Failure, reason.to_string())
            }
        };
        self.finish(
            job_id,
            &[JobStatus::Launch, JobStatus::Running],
            status,
            &message,
        )
        .await
    }

    /// The outcome and launch-to-end duration of a job that ended (no duration for one that
    /// this process did not launch).
    fn record_end(&self, job_id: i64, status: JobStatus) {
        let launched = self
            .launched_at
            .lock()
            .ok()
            .and_then(|mut launched| launched.remove(&job_id));
        let duration = launched.map(|at| at.elapsed());
        let label = match status {
            JobStatus::Succeed => "succeed",
            JobStatus::Failure => "failure",
            _ => "canceled",
        };
        metrics().training.job_finished(label, duration);
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
            self.record_end(job_id, to);
            self.changed(job_id, to, message);
        }
        Ok(())
    }

    async fn handle_exits(self: Arc<Self>, mut exits: mpsc::UnboundedReceiver<(i64, Exit)>) {
        while let Some((job_id, exit)) = exits.recv().await {
            self.backend.finished(job_id);
            let job = match self.store.get_by_id(job_id).await {
                Ok(job) => job,
                Err(err) => {
                    tracing::error!(job_id, error = %error_chain(&err), "cannot read a job whose trainer ended");
                    continue;
                }
            };
            let (id, span) = job_scope(job_id, &job.spec.request_id);
            let recorded = self.record_exit(&job, exit).instrument(span);
            let recorded = request_id::scope(id, recorded);
            if let Err(err) = recorded.await {
                tracing::error!(job_id, error = %error_chain(&err), "cannot record a trainer's exit");
            }
        }
    }

    async fn record_exit(&self, job: &Job, exit: Exit) -> Result<(), TrainingError> {
        let (job_id, tenant) = (job.job_id, job.tenant.as_str());
        let active = [JobStatus::Launch, JobStatus::Running];
        // A cancel was asked for: whatever the trainer did last, the job ends as asked.
        if job.canceling || exit == Exit::Canceled {
            return self.canceled(job).await;
        }
        // Kubernetes stopped the Job at its `activeDeadlineSeconds`.
        let exit = match exit {
            Exit::Failed(reason) if reason.contains("DeadlineExceeded") => Exit::Failed(format!(
                "{} ({reason})",
                deadline_message(self.max_runtime(job).as_secs())
            )),
            other => other,
        };
        match exit {
            Exit::Success => {
                let message = self
                    .run_outcome(tenant, job_id)
                    .await
                    .map_or_else(|| "training succeeded".to_string(), |(_, message)| message);
                self.finish(job_id, &active, JobStatus::Succeed, &message)
                    .await
            }
            Exit::Failed(reason) => {
                // The trainer's own error line says more than its exit code.
                let reason = match self.trainer_error(job).await {
                    Some(line) if reason.starts_with("exit code") => format!("{reason}: {line}"),
                    _ => reason,
                };
                self.end_run(tenant, job_id, &reason).await;
                self.finish(job_id, &active, JobStatus::Failure, &reason)
                    .await
            }
            Exit::Canceled => self.canceled(job).await,
        }
    }

    /// The last error line automl-train wrote to a local job's log (`automl-train: error: …`);
    /// a Kubernetes pod's comes with its termination message.
    async fn trainer_error(&self, job: &Job) -> Option<String> {
        const PREFIX: &str = crate::kubernetes::TRAINER_ERROR;
        const TAIL: u64 = 64 * 1024;
        if job.backend != LOCAL {
            return None;
        }
        let mut file = tokio::fs::File::open(self.backend.log_path(job.job_id))
            .await
            .ok()?;
        let length = file.metadata().await.ok()?.len();
        file.seek(std::io::SeekFrom::Start(length.saturating_sub(TAIL)))
            .await
            .ok()?;
        let mut tail = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut file, &mut tail)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&tail);
        let line = text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(PREFIX))?;
        Some(line.chars().take(1024).collect())
    }

    /// A request to another service on `tenant`'s behalf (with a service token when
    /// authentication is on).
    fn on_behalf<T>(&self, tenant: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        Credentials::for_tenant(self.auth.as_deref(), tenant).apply(&mut request);
        request_id::attach(&mut request);
        request
    }

    /// The tenant of a job (the default tenant when it cannot be read).
    async fn job_tenant(&self, job_id: i64) -> String {
        match self.store.get_by_id(job_id).await {
            Ok(job) => job.tenant,
            Err(_) => DEFAULT_TENANT.to_string(),
        }
    }

    /// (success, message) of the job's run in metadata-store, when it has ended.
    async fn run_outcome(&self, tenant: &str, job_id: i64) -> Option<(bool, String)> {
        let run = self
            .metadata
            .clone()
            .get_run_status(self.on_behalf(
                tenant,
                GetRunStatusRequest {
                    run_id: job_id.to_string(),
                },
            ))
            .await
            .ok()?
            .into_inner()
            .run_info?;
        (!run.end_time.is_empty()).then_some((run.success, run.message))
    }

    /// Ends the job's run as failed, if the trainer started it and did not end it.
    async fn end_run(&self, tenant: &str, job_id: i64, reason: &str) {
        let result = self
            .metadata
            .clone()
            .log_run_end(self.on_behalf(
                tenant,
                LogRunEndRequest {
                    run_id: job_id.to_string(),
                    end_time: now_iso(),
                    success: false,
                    message: reason.to_string(),
                },
            ))
            .await;
        match result {
            Ok(_) => tracing::info!(job_id, "run ended as failed"),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {}
            Err(status) => tracing::warn!(job_id, code = ?status.code(), "cannot end the run"),
        }
    }

    /// After a restart: local jobs that were running are followed until their trainer is
    /// gone (stopped at their deadline), then settled from their run's outcome; none stays
    /// running forever. A trainer is known by its pid and start time: a pid now used by
    /// another process is neither signalled nor taken for the trainer.
    async fn reconcile(self: &Arc<Self>) -> Result<(), TrainingError> {
        for job in self.store.active().await? {
            if job.backend != LOCAL {
                continue;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let max_runtime = this.max_runtime(&job);
                let deadline_ms = job
                    .claimed_ms
                    .saturating_add(i64::try_from(max_runtime.as_millis()).unwrap_or(i64::MAX));
                let mut reason = "the trainer process ended while training-service was down";
                let deadline = deadline_message(max_runtime.as_secs());
                while trainer_alive(&job.backend_ref) {
                    if job.claimed_ms > 0 && now_ms() >= deadline_ms {
                        kill_trainer(&job.backend_ref);
                        reason = &deadline;
                        continue;
                    }
                    tokio::select! {
                        () = this.shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                let (id, span) = job_scope(job.job_id, &job.spec.request_id);
                let settled = async {
                    // A cancel asked for meanwhile ends the job as asked.
                    match this.store.get_by_id(job.job_id).await {
                        Ok(current) if current.canceling => this.canceled(&current).await,
                        _ => this.settle(job.job_id, reason).await,
                    }
                };
                if let Err(err) = request_id::scope(id, settled.instrument(span)).await {
                    tracing::error!(error = %error_chain(&err), "cannot settle a job after a restart");
                }
            });
        }
        Ok(())
    }
}

/// A page request's (limit, offset), both checked not negative.
/// Most ids one ListTrainingJobs may name.
const MAX_LISTED_JOB_IDS: usize = 10_000;

fn page(limit: i32, index: i32) -> Result<(i64, i64), TrainingError> {
    if limit < 0 || index < 0 {
        return Err(TrainingError::InvalidArgument(
            "limit and index must not be negative".into(),
        ));
    }
    Ok((i64::from(limit), i64::from(index)))
}

/// Checks the values of `parameters` that `declared` declares (others pass: a trainer of its
/// own may read more than it declares).
fn check_declared(
    declared: &[crate::config::ParameterConfig],
    parameters: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (name, value) in parameters {
        if let Some(declaration) = declared.iter().find(|d| &d.name == name) {
            declaration.check(value)?;
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Why a job of `algorithm` cannot be trained yet.
fn not_imported(algorithm: &str, pretrained: &str) -> String {
    format!(
        "algorithm {algorithm} needs the pretrained model {pretrained}: import it with `automl pretrained import`"
    )
}

/// The request id and log span of a job's background work (launch, exit, settling): the id of
/// the `Train` call that queued it, so one run reads as one request in the logs.
fn job_scope(job_id: i64, request_id: &str) -> (String, tracing::Span) {
    let span = tracing::info_span!("job", job_id, request_id = %request_id);
    (request_id.to_string(), span)
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
