//! `Train`'s checks, the algorithm registry (`ListAlgorithms`), a job's status and place in the
//! queue, lists, and cancel.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use automl_common::error::error_chain;
use automl_common::s3::S3Error;
use automl_common::time::now_iso;
use automl_text_classification::pretrained;

use super::scheduler::Snapshot;
use super::{CANCEL_WAIT, CANCELED, CANCELING, JobView, Training};
use crate::error::TrainingError;
use crate::model::{AlgorithmStatus, Job, JobSpec, JobStatus, check_spec, default_algorithm};
use crate::policy::{TenantLoad, check_resources, quota_wait};

impl Training {
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
    pub(super) async fn admit(
        &self,
        tenant: &str,
        spec: &mut JobSpec,
    ) -> Result<(), TrainingError> {
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
    pub(super) fn declared_parameters(
        &self,
        algorithm: &str,
    ) -> Vec<crate::config::ParameterConfig> {
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
    pub(super) fn is_builtin(&self, algorithm: &str) -> bool {
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
    pub(super) fn pretrained_of(&self, algorithm: &str) -> Option<&str> {
        self.config
            .algorithms
            .get(algorithm)
            .map(|a| a.pretrained.as_str())
            .filter(|name| !name.is_empty())
    }

    /// The current import of pretrained model `name`.
    pub(super) async fn pretrained_current(
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

    /// GetTrainingStatus.
    pub async fn status(&self, tenant: &str, job_id: i64) -> Result<JobView, TrainingError> {
        let job = self.store.get(tenant, job_id).await?;
        self.view(job, None).await
    }

    /// A job with its place among its tenant's queued jobs and, when its tenant is at its
    /// quota, why it waits. `load` is the tenant's, when the caller has read it already.
    pub(super) async fn view(
        &self,
        mut job: Job,
        load: Option<TenantLoad>,
    ) -> Result<JobView, TrainingError> {
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
    pub(super) async fn cancel_for(
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
            let at_once = self
                .backend_of(&job)
                .is_some_and(|backend| backend.stops_at_once());
            let until = Instant::now() + CANCEL_WAIT;
            while wait && at_once && Instant::now() < until {
                if self.store.get(tenant, job_id).await?.status.is_final() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.status(tenant, job_id).await
    }
}

/// Most ids one ListTrainingJobs may name.
const MAX_LISTED_JOB_IDS: usize = 10_000;

/// A page request's (limit, offset), both checked not negative.
pub(super) fn page(limit: i32, index: i32) -> Result<(i64, i64), TrainingError> {
    if limit < 0 || index < 0 {
        return Err(TrainingError::InvalidArgument(
            "limit and index must not be negative".into(),
        ));
    }
    Ok((i64::from(limit), i64::from(index)))
}

/// Checks the values of `parameters` that `declared` declares (others pass: a trainer of its
/// own may read more than it declares).
pub(super) fn check_declared(
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

/// Why a job of `algorithm` cannot be trained yet.
pub(super) fn not_imported(algorithm: &str, pretrained: &str) -> String {
    format!(
        "algorithm {algorithm} needs the pretrained model {pretrained}: import it with `automl pretrained import`"
    )
}
