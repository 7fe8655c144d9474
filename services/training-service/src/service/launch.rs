//! Launching a claimed job: the trainer's environment of the contract (its object grants,
//! its token), then the trainer started by the configured [`Backend`].

use std::sync::Arc;
use std::time::Instant;

use automl_common::auth::{Scope, TOKEN_ENV};
use automl_common::request_id;
use automl_common::time::now_iso;
use automl_common::tls::CA_FILE_ENV;
use tonic::Code;

use super::Training;
use super::submission::not_imported;
use crate::backend::{Backend, Launch, Launched};
use crate::config::host_port;
use crate::error::TrainingError;
use crate::model::{Job, JobStatus};

impl Training {
    /// `<name>@<digest>` of the pretrained model a job's algorithm needs, as imported now.
    pub(super) async fn pretrained_for_launch(
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

    /// The trainer environment of the contract; `pretrained` is the `<name>@<digest>` of the
    /// pretrained model the algorithm builds on. The trainer reaches its objects through
    /// presigned URLs (`AUTOML_OBJECT_GRANTS`); only `raw_s3_access` algorithms get the object
    /// store's keys.
    pub(super) async fn trainer_env(
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
    pub(super) async fn object_grants(
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
    pub(super) async fn base_artifact(
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

    /// Starts a claimed job's trainer through the configured backend.
    pub(super) async fn launch(&self, job: &Job, data_path: &str) -> Result<(), TrainingError> {
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
        let algorithm = self
            .config
            .algorithms
            .get(&job.spec.algorithm)
            .cloned()
            .unwrap_or_default();
        // The job carries the run time it gets (a Kubernetes Job's `activeDeadlineSeconds`).
        let max_runtime = self.max_runtime(job);
        let mut job = job.clone();
        job.spec.resources.max_runtime_seconds =
            i64::try_from(max_runtime.as_secs()).unwrap_or(i64::MAX);
        let backend = self.launcher();
        self.set_launching(job.job_id, true);
        let launched = backend
            .launch(Launch {
                job: &job,
                algorithm: &algorithm,
                env: &env,
                max_runtime,
            })
            .await;
        let result = match launched {
            Ok(Launched::Running(identity)) => self.started(backend, &job, &identity).await,
            Ok(Launched::Created { name, image }) => {
                self.created(backend, &job, &name, &image).await
            }
            Err(err) => self.launch_failed(job.job_id, &err).await,
        };
        self.set_launching(job.job_id, false);
        result
    }

    /// Records a trainer that runs already (a local process, `pid:start`).
    async fn started(
        &self,
        backend: &Arc<dyn Backend>,
        job: &Job,
        identity: &str,
    ) -> Result<(), TrainingError> {
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
            // Canceled while the process was starting, or (not moved) ended already: a
            // trainer that exits at once has its exit recorded first. Stopping an ended one
            // does nothing; a running one's exit records the end.
            let why = if moved {
                "canceled during launch"
            } else {
                "the job left LAUNCH while its trainer started"
            };
            tracing::info!(job_id = job.job_id, "{why}; stopping the trainer");
            backend.stop(job, true).await?;
            return Ok(());
        }
        tracing::info!(job_id = job.job_id, trainer = identity, request_id = %job.spec.request_id, "trainer started");
        self.changed(job.job_id, JobStatus::Running, "trainer running");
        Ok(())
    }

    pub(super) fn set_launching(&self, job_id: i64, launching: bool) {
        if let Ok(mut set) = self.launching.lock() {
            if launching {
                set.insert(job_id);
            } else {
                set.remove(&job_id);
            }
        }
    }

    pub(super) fn is_launching(&self, job_id: i64) -> bool {
        self.launching
            .lock()
            .map(|launching| launching.contains(&job_id))
            .unwrap_or(false)
    }

    /// Records a trainer Job that was created (`name`, running `image`); its pod is still to
    /// start.
    async fn created(
        &self,
        backend: &Arc<dyn Backend>,
        job: &Job,
        name: &str,
        image: &str,
    ) -> Result<(), TrainingError> {
        let message = format!("Job {name} created; waiting for its pod");
        let recorded = self
            .store
            .transition(
                job.job_id,
                &[JobStatus::Launch],
                JobStatus::Launch,
                &message,
                Some(name),
                &now_iso(),
            )
            .await?;
        // Its pod may have been reported running before this was recorded: the job is then
        // `running` already and keeps its Job.
        let running = !recorded
            && self
                .store
                .transition(
                    job.job_id,
                    &[JobStatus::Running],
                    JobStatus::Running,
                    "trainer running",
                    Some(name),
                    &now_iso(),
                )
                .await?;
        if !recorded && !running {
            // Ended while the Job was being created: take the Job back now.
            tracing::info!(job_id = job.job_id, job = %name, "canceled during launch; deleting the Job");
            backend.stop(job, false).await?;
            return Ok(());
        }
        tracing::info!(
            job_id = job.job_id,
            job = %name,
            image = %image,
            request_id = %job.spec.request_id,
            "trainer Job created"
        );
        Ok(())
    }

    /// A job whose trainer could not be started fails with the reason.
    pub(super) async fn launch_failed(
        &self,
        job_id: i64,
        err: &TrainingError,
    ) -> Result<(), TrainingError> {
        self.finish(
            job_id,
            &[JobStatus::Launch],
            JobStatus::Failure,
            &err.to_string(),
        )
        .await
    }
}
