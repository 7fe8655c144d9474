//! The Kubernetes backend: one batch/v1 Job per training job, tracked with watches on Jobs and
//! their Pods; cancel deletes the Job (and its pods); logs come from the pod.
//!
//! Jobs carry the label [`MANAGED_BY`] and [`JOB_ID_LABEL`], so a restarted training-service
//! finds (re-attaches to) every Job it started from the watch's initial list.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::future::BoxFuture;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::{Job as KubeJob, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Secret,
    SecretKeySelector, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use automl_common::auth::TOKEN_ENV;

use crate::backend::{
    Backend, JobRef, Launch, Launched, LogFollow, Observed, Stopped, TRAINER_ERROR,
};
use crate::config::{KubernetesConfig, TolerationConfig};
use crate::error::TrainingError;
use crate::local::Exit;
use crate::model::Job;

/// The name recorded on jobs run as Kubernetes Jobs.
pub const NAME: &str = "kubernetes";
/// Label selecting every Job and Pod this service made.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "automl-training-service");
/// Label carrying the training job id.
pub const JOB_ID_LABEL: &str = "automl.io/job-id";
/// Label carrying the submission id: tells this database's job N from a Job left behind by
/// another database's job N (after a reset, or a second installation in the namespace).
pub const SUBMISSION_LABEL: &str = "automl.io/submission";
/// Label carrying the algorithm name.
pub const ALGORITHM_LABEL: &str = "automl.io/algorithm";
/// The trainer container's name.
pub const CONTAINER: &str = "trainer";
/// The trainer program in the image when the registry names no command.
pub const DEFAULT_TRAINER: &str = "automl-train";
/// Key of the job token in the job's own Secret.
pub const TOKEN_KEY: &str = "token";
/// Key of the job's object grants (presigned URLs) in the job's own Secret.
pub const GRANTS_KEY: &str = "grants";

/// Trainer variables that reach the pod through the job's own Secret, never as plain values in
/// the Job spec (which anyone who may read Jobs in the namespace can read): (variable, key).
const JOB_SECRET_VARS: [(&str, &str); 2] = [
    (TOKEN_ENV, TOKEN_KEY),
    (automl_common::s3::grants::GRANTS_ENV, GRANTS_KEY),
];
/// Trainer variables that come from the S3 Secret instead of a value (only `raw_s3_access`
/// algorithms have them; the others get presigned URLs).
pub const ACCESS_KEY_VAR: &str = "MINIO_SERVER_ACCESS_KEY";
/// See [`ACCESS_KEY_VAR`].
pub const SECRET_KEY_VAR: &str = "MINIO_SERVER_SECRET_KEY";

/// What a trainer Job runs: image, program, environment, resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainerSpec {
    /// Container image.
    pub image: String,
    /// Program in the image.
    pub command: String,
    /// Environment (the S3 keys are replaced by Secret references).
    pub env: Vec<(String, String)>,
}

/// The Secret holding a job's token and object grants (deleted with its Job).
pub fn token_secret_name(job_id: i64) -> String {
    format!("automl-train-{job_id}-token")
}

/// The Job name of a training job.
pub fn job_name(job_id: i64) -> String {
    format!("automl-train-{job_id}")
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn tolerations(items: &[TolerationConfig]) -> Vec<Toleration> {
    let set = |field: &String| (!field.is_empty()).then(|| field.clone());
    items
        .iter()
        .map(|t| Toleration {
            key: set(&t.key),
            operator: set(&t.operator),
            value: set(&t.value),
            effect: set(&t.effect),
            ..Toleration::default()
        })
        .collect()
}

/// A trainer variable: a plain value, or a reference to `(secret, key)`.
fn env_var(name: &str, value: &str, secret: Option<(&str, &str)>) -> EnvVar {
    match secret {
        Some((secret, key)) => EnvVar {
            name: name.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.to_string(),
                    key: key.to_string(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        None => EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            ..EnvVar::default()
        },
    }
}

/// The trainer's environment: the S3 keys come from the S3 Secret, the job's token and grants
/// from its own Secret, the rest as plain values.
fn trainer_env(config: &KubernetesConfig, job_id: i64, trainer: &TrainerSpec) -> Vec<EnvVar> {
    let token_secret = token_secret_name(job_id);
    trainer
        .env
        .iter()
        .map(|(name, value)| {
            let own = JOB_SECRET_VARS
                .iter()
                .find(|(var, _)| var == name)
                .map(|(_, key)| (token_secret.as_str(), *key));
            let secret = match name.as_str() {
                ACCESS_KEY_VAR => Some((
                    config.s3_secret_name.as_str(),
                    config.s3_access_key_key.as_str(),
                )),
                SECRET_KEY_VAR => Some((
                    config.s3_secret_name.as_str(),
                    config.s3_secret_key_key.as_str(),
                )),
                _ => own,
            };
            env_var(name, value, secret)
        })
        .collect()
}

/// Requests and limits of a job's `resources` (`nvidia.com/gpu` only as a limit).
fn resource_requirements(resources: &crate::model::Resources) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    if !resources.cpu.is_empty() {
        requests.insert("cpu".to_string(), Quantity(resources.cpu.clone()));
    }
    if !resources.memory.is_empty() {
        requests.insert("memory".to_string(), Quantity(resources.memory.clone()));
    }
    let mut limits = requests.clone();
    if resources.gpus > 0 {
        limits.insert(
            "nvidia.com/gpu".to_string(),
            Quantity(resources.gpus.to_string()),
        );
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

/// The trainer pod of a job: one container, never restarted, placed by the node selectors
/// and tolerations (the GPU ones added for a GPU job).
fn pod_spec(config: &KubernetesConfig, job: &Job, trainer: &TrainerSpec) -> PodSpec {
    let gpu = job.spec.resources.gpus > 0;
    let mut node_selector = config.node_selector.clone();
    let mut all_tolerations = tolerations(&config.tolerations);
    if gpu {
        node_selector.extend(config.gpu_node_selector.clone());
        all_tolerations.extend(tolerations(&config.gpu_tolerations));
    }
    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(trainer.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec![trainer.command.clone()]),
        // A failing trainer's last log lines become its termination message.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        env: Some(trainer_env(config, job.job_id, trainer)),
        resources: Some(resource_requirements(&job.spec.resources)),
        ..Container::default()
    };
    PodSpec {
        restart_policy: Some("Never".to_string()),
        automount_service_account_token: Some(false),
        containers: vec![container],
        service_account_name: (!config.service_account.is_empty())
            .then(|| config.service_account.clone()),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!all_tolerations.is_empty()).then_some(all_tolerations),
        ..PodSpec::default()
    }
}

/// The labels of a job's Job, its pods and its Secret.
fn job_labels(job: &Job) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (JOB_ID_LABEL.to_string(), job.job_id.to_string()),
        (
            SUBMISSION_LABEL.to_string(),
            label_value(&job.spec.submission),
        ),
        (
            ALGORITHM_LABEL.to_string(),
            label_value(&job.spec.algorithm),
        ),
    ])
}

/// The batch/v1 Job of a training job.
pub fn job_manifest(
    config: &KubernetesConfig,
    namespace: &str,
    job: &Job,
    trainer: &TrainerSpec,
) -> KubeJob {
    let labels = job_labels(job);
    let max_runtime = job.spec.resources.max_runtime_seconds;
    KubeJob {
        metadata: ObjectMeta {
            name: Some(job_name(job.job_id)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                "automl.io/job-name".to_string(),
                job.spec.name.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // The job's run-time deadline, counted by Kubernetes from the Job's start.
            active_deadline_seconds: (max_runtime > 0).then_some(max_runtime),
            backoff_limit: Some(config.backoff_limit),
            ttl_seconds_after_finished: Some(config.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(config, job, trainer)),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// What goes into a job's own Secret: the values of [`JOB_SECRET_VARS`] by their key.
fn secret_data(trainer: &TrainerSpec) -> BTreeMap<String, String> {
    JOB_SECRET_VARS
        .iter()
        .filter_map(|(var, key)| {
            let (_, value) = trainer.env.iter().find(|(k, _)| k == var)?;
            Some(((*key).to_string(), value.clone()))
        })
        .collect()
}

/// A reference to `owner`, a Job, for what it owns.
fn owner_reference(owner: &KubeJob) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".to_string(),
        kind: "Job".to_string(),
        name: owner.metadata.name.clone().unwrap_or_default(),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

/// The training job id a Job or Pod belongs to.
fn job_ref(labels: Option<&BTreeMap<String, String>>) -> Option<JobRef> {
    let labels = labels?;
    Some(JobRef {
        job_id: labels.get(JOB_ID_LABEL)?.parse().ok()?,
        submission: labels.get(SUBMISSION_LABEL).cloned().unwrap_or_default(),
    })
}

/// How a Job's status reads: `None` while it has not finished.
pub fn job_outcome(job: &KubeJob) -> Option<Exit> {
    let status = job.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        match condition.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => return Some(Exit::Success),
            "Failed" | "FailureTarget" => {
                let reason = condition.reason.clone().unwrap_or_default();
                let message = condition.message.clone().unwrap_or_default();
                let text = match (reason.is_empty(), message.is_empty()) {
                    (false, false) => format!("{reason}: {message}"),
                    (false, true) => reason,
                    (true, false) => message,
                    (true, true) => "the Job failed".into(),
                };
                return Some(Exit::Failed(text));
            }
            _ => {}
        }
    }
    None
}

/// What a Pod says about its job: running, and the trainer's exit code once it has ended.
fn pod_state(pod: &Pod) -> (bool, Option<Ended>) {
    let Some(status) = pod.status.as_ref() else {
        return (false, None);
    };
    let running = status.phase.as_deref() == Some("Running");
    let ended = status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| c.name == CONTAINER)
        .find_map(|c| c.state.as_ref()?.terminated.as_ref())
        .map(|terminated| Ended {
            code: terminated.exit_code,
            // The trainer's last log lines (`FallbackToLogsOnError`): its own error line.
            error: terminated.message.as_deref().and_then(|message| {
                message
                    .lines()
                    .rev()
                    .find_map(|line| line.strip_prefix(TRAINER_ERROR))
                    .map(|line| line.chars().take(1024).collect())
            }),
        });
    (running, ended)
}

/// How the trainer container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ended {
    code: i32,
    /// automl-train's error line, when it wrote one.
    error: Option<String>,
}

impl Ended {
    /// Why the job failed: the exit code, the trainer's error line, the Job's reason.
    fn failure(&self, reason: &str) -> String {
        match &self.error {
            Some(error) => format!("exit code {}: {error} ({reason})", self.code),
            None => format!("exit code {} ({reason})", self.code),
        }
    }
}

/// Runs trainers as Kubernetes Jobs.
#[derive(Clone)]
pub struct KubernetesBackend {
    jobs: Api<KubeJob>,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    namespace: String,
    config: KubernetesConfig,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn kube_error(what: &str, err: kube::Error) -> TrainingError {
    TrainingError::Unavailable(format!("kubernetes ({what}: {err})"))
}

impl KubernetesBackend {
    /// Connects to the API server: `api_server` when set, else in-cluster or kubeconfig.
    pub async fn connect(config: &KubernetesConfig) -> Result<Self, TrainingError> {
        let client_config = if config.api_server.is_empty() {
            kube::Config::infer().await.map_err(|err| {
                TrainingError::Unavailable(format!("kubernetes configuration: {err}"))
            })?
        } else {
            let url = config.api_server.parse().map_err(|err| {
                TrainingError::InvalidArgument(format!(
                    "training_service.kubernetes.api_server: {err}"
                ))
            })?;
            kube::Config::new(url)
        };
        let namespace = if config.namespace.is_empty() {
            client_config.default_namespace.clone()
        } else {
            config.namespace.clone()
        };
        let client =
            kube::Client::try_from(client_config).map_err(|err| kube_error("client", err))?;
        Ok(Self {
            jobs: Api::namespaced(client.clone(), &namespace),
            pods: Api::namespaced(client.clone(), &namespace),
            secrets: Api::namespaced(client, &namespace),
            namespace,
            config: config.clone(),
        })
    }

    /// The namespace trainer Jobs go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Creates the job's Secret (its token and object grants), then its Job, then makes the
    /// Job the Secret's owner so that the Secret goes with it; returns the Job's name. The pod
    /// never looks for a Secret that is not there yet. A Job of that name already there is
    /// adopted when it is this job's (a launch interrupted after the create), else deleted and
    /// replaced.
    pub async fn launch(&self, job: &Job, trainer: &TrainerSpec) -> Result<String, TrainingError> {
        let name = job_name(job.job_id);
        let adopted = self.adoptable(job).await?;
        let data = secret_data(trainer);
        if !data.is_empty() {
            self.put_job_secret(job.job_id, data.clone(), adopted.as_ref())
                .await?;
        }
        let created = match adopted {
            Some(existing) => existing,
            None => match self.create_or_adopt(job, trainer).await {
                Ok(created) => created,
                Err(err) => {
                    if !data.is_empty() {
                        self.delete_job_secret(job.job_id).await;
                    }
                    return Err(err);
                }
            },
        };
        if !data.is_empty()
            && let Err(err) = self.own_job_secret(job.job_id, &created).await
        {
            // A Secret without its owner would outlive the Job: take both back.
            let _ = self.cancel(job.job_id).await;
            self.delete_job_secret(job.job_id).await;
            return Err(err);
        }
        Ok(name)
    }

    /// The Job already named for `job`, when it is this job's own; one left by another job
    /// with this id is deleted.
    async fn adoptable(&self, job: &Job) -> Result<Option<KubeJob>, TrainingError> {
        let name = job_name(job.job_id);
        let existing = self
            .jobs
            .get_opt(&name)
            .await
            .map_err(|err| kube_error("get Job", err))?;
        match existing {
            Some(existing)
                if job_ref(existing.metadata.labels.as_ref()).is_some_and(|r| r.is_of(job)) =>
            {
                // A launch interrupted after the create: this job's own Job.
                tracing::info!(job_id = job.job_id, job = %name, "adopting an existing Job");
                Ok(Some(existing))
            }
            Some(_) => {
                tracing::warn!(job_id = job.job_id, job = %name, "deleting a Job left by another job with this id");
                self.cancel(job.job_id).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Creates the job's Job; one of that name created meanwhile is adopted when it is this
    /// job's.
    async fn create_or_adopt(
        &self,
        job: &Job,
        trainer: &TrainerSpec,
    ) -> Result<KubeJob, TrainingError> {
        let manifest = job_manifest(&self.config, &self.namespace, job, trainer);
        if let Some(created) = self.create(&manifest).await? {
            return Ok(created);
        }
        match self.adoptable(job).await? {
            Some(existing) => Ok(existing),
            None => Err(TrainingError::FailedPrecondition(format!(
                "a Job named {} from an earlier job is still being deleted",
                job_name(job.job_id)
            ))),
        }
    }

    /// Creates a Job; `None` when one of that name exists.
    async fn create(&self, manifest: &KubeJob) -> Result<Option<KubeJob>, TrainingError> {
        match self.jobs.create(&PostParams::default(), manifest).await {
            Ok(created) => Ok(Some(created)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
                Err(TrainingError::FailedPrecondition(format!(
                    "kubernetes refused the Job: {}",
                    status.message
                )))
            }
            Err(err) => Err(kube_error("create Job", err)),
        }
    }

    /// The job's own Secret (its token, its object grants), owned by `owner` when given.
    fn job_secret(
        &self,
        job_id: i64,
        data: BTreeMap<String, String>,
        owner: Option<&KubeJob>,
    ) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(token_secret_name(job_id)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                    (JOB_ID_LABEL.to_string(), job_id.to_string()),
                ])),
                owner_references: Some(owner.map(owner_reference).into_iter().collect()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_string()),
            string_data: Some(data),
            ..Secret::default()
        }
    }

    /// Writes the job's Secret before its Job exists. One of that name already there (left by
    /// an interrupted launch, or by another job with this id) gets this job's values and
    /// `owner` in place of its own, so no garbage collection of an older Job takes it away.
    async fn put_job_secret(
        &self,
        job_id: i64,
        data: BTreeMap<String, String>,
        owner: Option<&KubeJob>,
    ) -> Result<(), TrainingError> {
        let secret = self.job_secret(job_id, data, owner);
        let name = token_secret_name(job_id);
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(kube_error("create Secret", err)),
        }
        match self
            .secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&secret))
            .await
        {
            Ok(_) => Ok(()),
            // Collected with an older owner between the two calls: create it afresh.
            Err(kube::Error::Api(status)) if status.code == 404 => self
                .secrets
                .create(&PostParams::default(), &secret)
                .await
                .map(drop)
                .map_err(|err| kube_error("create Secret", err)),
            Err(err) => Err(kube_error("update Secret", err)),
        }
    }

    /// Makes `owner` (the job's Job) the owner of the job's Secret, so that it goes when the
    /// Job goes.
    async fn own_job_secret(&self, job_id: i64, owner: &KubeJob) -> Result<(), TrainingError> {
        let patch = Secret {
            metadata: ObjectMeta {
                owner_references: Some(vec![owner_reference(owner)]),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        self.secrets
            .patch(
                &token_secret_name(job_id),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(drop)
            .map_err(|err| kube_error("own Secret", err))
    }

    /// Deletes the job's Secret after a launch that failed (best effort: it holds nothing
    /// that outlives the job's deadline).
    async fn delete_job_secret(&self, job_id: i64) {
        if let Err(err) = self
            .secrets
            .delete(&token_secret_name(job_id), &DeleteParams::default())
            .await
        {
            tracing::warn!(job_id, error = %err, "cannot delete the job's Secret");
        }
    }

    /// Deletes the job's Job and its pods.
    pub async fn cancel(&self, job_id: i64) -> Result<(), TrainingError> {
        match self
            .jobs
            .delete(&job_name(job_id), &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(kube_error("delete Job", err)),
        }
    }

    /// Whether the Job of `job` exists.
    pub async fn exists(&self, job: &Job) -> Result<bool, TrainingError> {
        let found = self
            .jobs
            .get_opt(&job_name(job.job_id))
            .await
            .map_err(|err| kube_error("get Job", err))?;
        Ok(found.is_some_and(|found| {
            job_ref(found.metadata.labels.as_ref()).is_some_and(|r| r.is_of(job))
        }))
    }

    /// Why a job's trainer has not started: its pod's scheduling condition or its container's
    /// waiting reason (`Unschedulable: 0/3 nodes are available …`, `ImagePullBackOff: …`).
    pub async fn pending_reason(&self, job_id: i64) -> String {
        let pod = match self.pod_of(job_id).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return "no pod was created".into(),
            Err(err) => return format!("its pod cannot be read: {err}"),
        };
        let Some(status) = pod.status else {
            return "its pod has no status yet".into();
        };
        let text = |reason: Option<String>, message: Option<String>| match (
            reason.unwrap_or_default(),
            message.unwrap_or_default(),
        ) {
            (reason, message) if message.is_empty() => reason,
            (reason, message) if reason.is_empty() => message,
            (reason, message) => format!("{reason}: {message}"),
        };
        let waiting = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.waiting.clone())
            .map(|w| text(w.reason, w.message))
            .find(|t| !t.is_empty() && t != "ContainerCreating");
        let unscheduled = status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| text(c.reason.clone(), c.message.clone()))
            .find(|t| !t.is_empty());
        waiting.or(unscheduled).unwrap_or_else(|| {
            format!(
                "its pod is {}",
                status.phase.unwrap_or_else(|| "Pending".into())
            )
        })
    }

    /// The newest pod of a job, if one exists yet.
    pub async fn pod_of(&self, job_id: i64) -> Result<Option<Pod>, TrainingError> {
        let pods = self
            .pods
            .list(&ListParams::default().labels(&format!("{JOB_ID_LABEL}={job_id}")))
            .await
            .map_err(|err| kube_error("list Pods", err))?;
        Ok(pods
            .items
            .into_iter()
            .max_by_key(|pod| pod.metadata.creation_timestamp.clone()))
    }

    /// The lines of a pod's trainer log, followed while `follow`.
    pub async fn log_lines(
        &self,
        pod: &str,
        follow: bool,
    ) -> Result<impl futures::Stream<Item = Result<String, TrainingError>> + use<>, TrainingError>
    {
        let params = LogParams {
            container: Some(CONTAINER.to_string()),
            follow,
            ..LogParams::default()
        };
        let reader = self
            .pods
            .log_stream(pod, &params)
            .await
            .map_err(|err| kube_error("pod log", err))?;
        Ok(reader.lines().map_err(TrainingError::from))
    }

    /// Watches this service's Jobs and Pods until `shutdown`, sending what it observes.
    async fn watch_jobs(
        self,
        observed: mpsc::UnboundedSender<Observed>,
        shutdown: CancellationToken,
    ) {
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        // A failed watch is retried by kube-runtime's own backoff (exponential, with jitter,
        // reset once it has worked for a while).
        let jobs = watcher(
            self.jobs.clone(),
            watcher::Config::default().labels(&selector),
        )
        .default_backoff()
        .map(|event| event.map(|e| Either::Job(Box::new(e))))
        .boxed();
        let pods = watcher(
            self.pods.clone(),
            watcher::Config::default().labels(&selector),
        )
        .default_backoff()
        .map(|event| event.map(|e| Either::Pod(Box::new(e))))
        .boxed();
        let mut events = futures::stream::select(jobs, pods);
        let mut tracker = Tracker::default();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(Ok(event)) => {
                    for item in tracker.observe(event) {
                        let item = self.with_exit_code(item).await;
                        if observed.send(item).is_err() {
                            return;
                        }
                    }
                }
                // The stream waits out its backoff before it watches again.
                Some(Err(err)) => tracing::warn!(error = %err, "kubernetes watch failed; retrying"),
            }
        }
    }
}

impl KubernetesBackend {
    /// A failure the Job reported before its pod's exit code was seen: asks the pod.
    async fn with_exit_code(&self, item: Observed) -> Observed {
        let Observed::Exited(job, Exit::Failed(reason)) = item else {
            return item;
        };
        if reason.starts_with("exit code") {
            return Observed::Exited(job, Exit::Failed(reason));
        }
        let ended = match self.pod_of(job.job_id).await {
            Ok(Some(pod)) => pod_state(&pod).1,
            _ => None,
        };
        let reason = match ended {
            Some(ended) if ended.code != 0 => ended.failure(&reason),
            _ => reason,
        };
        Observed::Exited(job, Exit::Failed(reason))
    }
}

impl KubernetesBackend {
    /// Streams a job's pod log from `from_line`, following it until the job ends. When the
    /// follow stream breaks off early the log is read again and the lines already sent are
    /// skipped.
    async fn follow_pod_log(
        self,
        job_id: i64,
        from_line: i64,
        follow: LogFollow,
    ) -> Result<(), TrainingError> {
        let LogFollow {
            ended,
            sender,
            shutdown,
            poll,
        } = follow;
        let mut sent = from_line;
        loop {
            let ended = ended().await?;
            let pod = self.pod_of(job_id).await?;
            let started = pod.as_ref().is_some_and(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|status| status.phase.as_deref())
                    .is_some_and(|phase| phase != "Pending")
            });
            if let (Some(pod), true) = (pod, started) {
                let name = pod.metadata.name.unwrap_or_default();
                let mut lines = Box::pin(self.log_lines(&name, !ended).await?);
                let mut number = 0i64;
                loop {
                    let line = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = sender.closed() => return Ok(()),
                        line = lines.next() => line,
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
                () = shutdown.cancelled() => return Ok(()),
                () = sender.closed() => return Ok(()),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// The image and program of a job's trainer, from its algorithm's registry entry.
    fn trainer(launch: &Launch<'_>) -> TrainerSpec {
        let algorithm = launch.algorithm;
        let image = if launch.job.spec.resources.gpus > 0 && !algorithm.gpu_image.is_empty() {
            algorithm.gpu_image.clone()
        } else {
            algorithm.image.clone()
        };
        let command = if algorithm.command.is_empty() {
            DEFAULT_TRAINER.to_string()
        } else {
            algorithm.command.clone()
        };
        TrainerSpec {
            image,
            command,
            env: launch.env.to_vec(),
        }
    }
}

impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn trainer_kind(&self) -> &'static str {
        "the Kubernetes Job"
    }

    fn launch<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Launched, TrainingError>> {
        Box::pin(async move {
            let trainer = Self::trainer(&launch);
            let name = KubernetesBackend::launch(self, launch.job, &trainer).await?;
            Ok(Launched::Created {
                name,
                image: trainer.image,
            })
        })
    }

    fn stop<'a>(
        &'a self,
        job: &'a Job,
        launching: bool,
    ) -> BoxFuture<'a, Result<Stopped, TrainingError>> {
        Box::pin(async move {
            // A Job being created right now is deleted once it exists (next pass).
            if launching {
                return Ok(Stopped::Stopping);
            }
            self.cancel(job.job_id).await?;
            Ok(Stopped::Gone)
        })
    }

    fn stops_at_once(&self) -> bool {
        false
    }

    fn follow_logs(
        &self,
        job_id: i64,
        from_line: i64,
        follow: LogFollow,
    ) -> BoxFuture<'static, Result<(), TrainingError>> {
        Box::pin(self.clone().follow_pod_log(job_id, from_line, follow))
    }

    fn trainer_error(&self, _job_id: i64) -> BoxFuture<'_, Option<String>> {
        // The pod's termination message carries it, with the Job's failure.
        Box::pin(async { None })
    }

    fn exists<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, TrainingError>> {
        Box::pin(KubernetesBackend::exists(self, job))
    }

    fn can_wait_to_start(&self) -> bool {
        true
    }

    fn pending_reason(&self, job_id: i64) -> BoxFuture<'_, String> {
        Box::pin(KubernetesBackend::pending_reason(self, job_id))
    }

    fn follow_orphan(
        &self,
        _job: &Job,
        _max_runtime: std::time::Duration,
    ) -> Option<BoxFuture<'static, String>> {
        // The watch's initial list re-attaches to every Job.
        None
    }

    fn track(&self, observed: mpsc::UnboundedSender<Observed>, shutdown: CancellationToken) {
        tokio::spawn(self.clone().watch_jobs(observed, shutdown));
    }
}

/// A watch event of either kind.
#[derive(Debug)]
enum Either {
    Job(Box<watcher::Event<KubeJob>>),
    Pod(Box<watcher::Event<Pod>>),
}

/// Turns watch events into observations, each reported once.
#[derive(Debug, Default)]
struct Tracker {
    /// Jobs seen in the current initial list of Jobs.
    listing: HashSet<JobRef>,
    /// Jobs reported running.
    running: HashSet<JobRef>,
    /// Jobs reported finished or gone.
    ended: HashSet<JobRef>,
    /// The trainer exit codes pods reported, by job.
    exit_codes: HashMap<JobRef, Ended>,
}

impl Tracker {
    fn observe(&mut self, event: Either) -> Vec<Observed> {
        let mut out = Vec::new();
        match event {
            Either::Job(event) => self.job_event(*event, &mut out),
            Either::Pod(event) => self.pod_event(*event, &mut out),
        }
        out
    }

    fn job_event(&mut self, event: watcher::Event<KubeJob>, out: &mut Vec<Observed>) {
        match event {
            watcher::Event::Init => self.listing.clear(),
            watcher::Event::InitApply(job) => {
                if let Some(id) = job_ref(job.metadata.labels.as_ref()) {
                    self.listing.insert(id);
                }
                self.job(&job, out);
            }
            watcher::Event::InitDone => {
                out.push(Observed::Listed(std::mem::take(&mut self.listing)));
            }
            watcher::Event::Apply(job) => self.job(&job, out),
            watcher::Event::Delete(job) => {
                if let Some(id) = job_ref(job.metadata.labels.as_ref()) {
                    match job_outcome(&job) {
                        Some(_) => self.job(&job, out),
                        None if self.ended.insert(id.clone()) => out.push(Observed::Gone(id)),
                        None => {}
                    }
                }
            }
        }
    }

    fn pod_event(&mut self, event: watcher::Event<Pod>, out: &mut Vec<Observed>) {
        let (watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
            return;
        };
        let Some(id) = job_ref(pod.metadata.labels.as_ref()) else {
            return;
        };
        let (running, ended) = pod_state(&pod);
        let exited = ended.is_some();
        if let Some(ended) = ended {
            self.exit_codes.insert(id.clone(), ended);
        }
        if (running || exited) && !self.ended.contains(&id) && self.running.insert(id.clone()) {
            out.push(Observed::Running(id));
        }
    }

    fn job(&mut self, job: &KubeJob, out: &mut Vec<Observed>) {
        let Some(id) = job_ref(job.metadata.labels.as_ref()) else {
            return;
        };
        let Some(exit) = job_outcome(job) else {
            return;
        };
        if !self.ended.insert(id.clone()) {
            return;
        }
        let exit = match (exit, self.exit_codes.get(&id)) {
            (Exit::Failed(reason), Some(ended)) if ended.code != 0 => {
                Exit::Failed(ended.failure(&reason))
            }
            (exit, _) => exit,
        };
        out.push(Observed::Exited(id, exit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobSpec, JobStatus, Resources};

    fn job(gpus: i32) -> Job {
        Job {
            job_id: 7,
            tenant: "default".into(),
            status: JobStatus::Launch,
            message: String::new(),
            spec: JobSpec {
                algorithm: "intent-classification".into(),
                dataset_id: "1".into(),
                name: "first".into(),
                train_data_version_hash: "hashAg==".into(),
                parameters: BTreeMap::new(),
                output_model_name: "m".into(),
                resources: Resources {
                    cpu: "2".into(),
                    memory: "4Gi".into(),
                    gpus,
                    max_runtime_seconds: 3600,
                },
                base_run_id: String::new(),
                request_id: String::new(),
                traceparent: String::new(),
                submission: "0f3a9c".into(),
                ..JobSpec::default()
            },
            backend: "kubernetes".into(),
            backend_ref: String::new(),
            ..Job::default()
        }
    }

    fn trainer() -> TrainerSpec {
        TrainerSpec {
            image: "automl:cpu".into(),
            command: "automl-train".into(),
            env: vec![
                ("JOB_ID".into(), "7".into()),
                (ACCESS_KEY_VAR.into(), "plain-access".into()),
                (SECRET_KEY_VAR.into(), "plain-secret".into()),
                (TOKEN_ENV.into(), "amls.plain-job-token".into()),
            ],
        }
    }

    #[test]
    fn the_manifest_carries_labels_env_secret_refs_and_resources() {
        let config = KubernetesConfig::default();
        let manifest = job_manifest(&config, "ml", &job(1), &trainer());
        let value = serde_json::to_value(&manifest).expect("json");
        assert_eq!(value["metadata"]["name"], "automl-train-7");
        assert_eq!(value["metadata"]["namespace"], "ml");
        assert_eq!(value["metadata"]["labels"][JOB_ID_LABEL], "7");
        assert_eq!(value["metadata"]["labels"][SUBMISSION_LABEL], "0f3a9c");
        assert_eq!(
            value["spec"]["template"]["metadata"]["labels"][SUBMISSION_LABEL],
            "0f3a9c"
        );
        assert_eq!(
            value["metadata"]["labels"][ALGORITHM_LABEL],
            "intent-classification"
        );
        assert_eq!(value["spec"]["backoffLimit"], 0);
        assert_eq!(value["spec"]["activeDeadlineSeconds"], 3600);
        assert_eq!(value["spec"]["ttlSecondsAfterFinished"], 86_400);
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "automl:cpu");
        assert_eq!(container["command"][0], "automl-train");
        assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(container["resources"]["requests"]["memory"], "4Gi");
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        let text = value.to_string();
        assert!(!text.contains("plain-secret") && !text.contains("plain-access"));
        assert!(!text.contains("plain-job-token"));
        assert_eq!(
            container["env"][3]["valueFrom"]["secretKeyRef"]["name"],
            "automl-train-7-token"
        );
        assert_eq!(
            container["env"][2]["valueFrom"]["secretKeyRef"]["name"],
            "automl-s3"
        );
        let cpu_only = job_manifest(&config, "ml", &job(0), &trainer());
        let cpu_only = serde_json::to_value(&cpu_only).expect("json");
        let pod = &cpu_only["spec"]["template"]["spec"];
        assert!(pod["tolerations"].is_null());
        assert!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"].is_null());
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(
            label_value("intent-classification"),
            "intent-classification"
        );
        assert_eq!(label_value("-a b/c-"), "a_b_c");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn only_raw_s3_access_algorithms_reference_the_s3_secret() {
        use crate::config::AlgorithmConfig;
        use automl_common::config::S3Config;
        let config = KubernetesConfig::default();
        let s3 = S3Config {
            access_key: "root-access".into(),
            secret_key: "root-secret".into(),
            ..S3Config::default()
        };
        let manifest_for = |algorithm: &AlgorithmConfig| {
            let mut env = vec![
                ("JOB_ID".to_string(), "7".to_string()),
                (
                    automl_common::s3::grants::GRANTS_ENV.to_string(),
                    r#"{"expires_at":"","grants":[]}"#.to_string(),
                ),
            ];
            env.extend(crate::grants::s3_key_env(algorithm, &s3));
            let trainer = TrainerSpec { env, ..trainer() };
            let manifest = job_manifest(&config, "ml", &job(0), &trainer);
            serde_json::to_value(&manifest).expect("json")
        };
        let secret_refs = |value: &serde_json::Value| -> Vec<String> {
            value["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .expect("env")
                .iter()
                .filter_map(|var| {
                    var["valueFrom"]["secretKeyRef"]["name"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        };
        let built_in = manifest_for(&AlgorithmConfig::default());
        assert!(
            !secret_refs(&built_in).contains(&config.s3_secret_name),
            "{built_in}"
        );
        let text = built_in.to_string();
        assert!(!text.contains(ACCESS_KEY_VAR) && !text.contains(SECRET_KEY_VAR));
        assert!(!text.contains("root-secret"));
        let raw = manifest_for(&AlgorithmConfig {
            raw_s3_access: true,
            ..AlgorithmConfig::default()
        });
        assert_eq!(
            secret_refs(&raw)
                .iter()
                .filter(|name| **name == config.s3_secret_name)
                .count(),
            2,
            "{raw}"
        );
        assert!(!raw.to_string().contains("root-secret"));
    }
}
