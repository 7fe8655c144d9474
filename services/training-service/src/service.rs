//! The training-service operations, one part per concern:
//!
//! - [`submission`]: `Train`'s checks, the algorithm registry, status, lists and cancel.
//! - [`scheduler`]: the fair-share scheduler that waits for snapshots and claims jobs under
//!   the concurrency limit and tenant quotas (see [`crate::policy`]); the launch timeout.
//! - [`launch`]: the trainer's environment and starting it through the configured backend
//!   (a [`Backend`]: the local one or the Kubernetes one).
//! - [`streams`]: the status watch and the log follow streams.
//! - [`reconcile`]: what trainers did (what backends report, trainers a restart left running)
//!   made into job states; cancels that hold until the trainer is gone.
//!
//! Nothing here asks which backend a job runs on: each job's backend is found by the name the
//! job records, and asked.
//! - [`experiments`]: hyperparameter search driven on top of the job queue.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automl_common::auth::{Authenticator, Credentials, DEFAULT_TENANT};
use automl_common::config::S3Config;
use automl_common::metrics::metrics;
use automl_common::request_id;
use automl_common::s3::ObjectStore;
use automl_common::time::now_iso;
use automl_common::tls::TlsConfig;
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::metadata_store::{GetRunStatusRequest, LogRunEndRequest};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::backend::Backend;
use crate::config::{BackendKind, TrainingConfig, host_port};
use crate::error::TrainingError;
use crate::kubernetes::KubernetesBackend;
use crate::local::LocalBackend;
use crate::model::{Job, JobStatus};
use crate::store::JobStore;

mod experiments;
mod launch;
mod reconcile;
mod scheduler;
mod streams;
mod submission;

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

/// training-service's operations.
#[derive(Debug)]
pub struct Training {
    store: JobStore,
    config: TrainingConfig,
    /// The backends of this process, each found by the name jobs record: the configured one
    /// first (it runs new jobs), then the local one when another is configured (its trainers
    /// a restart may have left running).
    backends: Vec<Arc<dyn Backend>>,
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
        let (observed, observed_receiver) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(log_dir, observed.clone()));
        let backends = match config.backend {
            BackendKind::Local => vec![local],
            BackendKind::Kubernetes => {
                let backend = KubernetesBackend::connect(&config.kubernetes).await?;
                tracing::info!(
                    namespace = backend.namespace(),
                    "trainers run as Kubernetes Jobs"
                );
                let kubernetes: Arc<dyn Backend> = Arc::new(backend);
                vec![kubernetes, local]
            }
        };
        let service = Arc::new(Self {
            store,
            data: DataManagementServiceClient::new(channel(&config.data_management)?),
            metadata: MetadataStoreServiceClient::new(channel(&config.metadata_store)?),
            config,
            backends,
            auth,
            ca_file: tls.ca_file.clone(),
            objects: ObjectStore::new(&s3, s3_endpoint),
            s3,
            minio_server,
            wake: Notify::new(),
            events,
            experiment_events: broadcast::channel(1024).0,
            experiments_wake: Notify::new(),
            backoff: Mutex::new(HashMap::new()),
            launching: Mutex::new(HashSet::new()),
            stopping: Mutex::new(HashMap::new()),
            launched_at: Mutex::new(HashMap::new()),
            shutdown,
        });
        service.reconcile().await?;
        for backend in &service.backends {
            backend.track(observed.clone(), service.shutdown.clone());
        }
        tokio::spawn(Arc::clone(&service).handle_observed(observed_receiver));
        tokio::spawn(Arc::clone(&service).schedule_forever());
        tokio::spawn(Arc::clone(&service).drive_forever());
        Ok(service)
    }

    /// The backend that runs new jobs.
    fn launcher(&self) -> &Arc<dyn Backend> {
        &self.backends[0]
    }

    /// The backend that ran `job`, when this process has it.
    fn backend_of(&self, job: &Job) -> Option<&Arc<dyn Backend>> {
        self.backends
            .iter()
            .find(|backend| backend.name() == job.backend)
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
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The request id and log span of a job's background work (launch, exit, settling): the id of
/// the `Train` call that queued it, so one run reads as one request in the logs.
fn job_scope(job_id: i64, request_id: &str) -> (String, tracing::Span) {
    let span = tracing::info_span!("job", job_id, request_id = %request_id);
    (request_id.to_string(), span)
}
