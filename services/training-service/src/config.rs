//! training-service's configuration section (`[training_service]`).

use std::collections::BTreeMap;
use std::time::Duration;

use automl_common::config::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};

/// Default port, as in the MiniAutoML lab scripts.
pub const DEFAULT_PORT: u16 = 6003;

/// The algorithm trained when a client names none and the encoder is not ready.
pub const DEFAULT_ALGORITHM: &str = "intent-classification";
/// The pretrained sentence encoder with a classification head; preferred when ready.
pub const ENCODER_ALGORITHM: &str = "intent-classification-encoder";

/// How one algorithm is run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlgorithmConfig {
    /// Local backend: the trainer program; empty means `automl-train` beside the `automl`
    /// binary (`automl serve` falls back to `automl trainer` when there is none).
    pub command: String,
    /// Local backend: the arguments given to `command`.
    pub args: Vec<String>,
    /// Kubernetes backend: the trainer image.
    pub image: String,
    /// Kubernetes backend: the image for jobs that ask for GPUs.
    pub gpu_image: String,
    /// The pretrained model (in the models bucket) the algorithm needs; empty for none.
    pub pretrained: String,
    /// The trainer gets the object store's own keys (`MINIO_SERVER_ACCESS_KEY` /
    /// `MINIO_SERVER_SECRET_KEY`), for images that talk S3 themselves (MiniAutoML's). Without
    /// it (the default) the trainer gets only presigned URLs of the objects its job needs
    /// (`AUTOML_OBJECT_GRANTS`) and no S3 secret at all.
    pub raw_s3_access: bool,
    /// The parameters a trainer of its own reads (`[[…parameters]]`): listed by
    /// `ListAlgorithms`, checked at `Train` and against experiments' search spaces. The
    /// built-in trainer's are declared by the trainer itself and this stays empty for it.
    pub parameters: Vec<ParameterConfig>,
}

/// The kind of a declared parameter.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParameterKind {
    /// Whole numbers.
    #[default]
    Int,
    /// Real numbers.
    Double,
    /// One of `values`.
    Categorical,
}

/// One parameter an algorithm's trainer reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParameterConfig {
    /// Its name, as a job parameter.
    pub name: String,
    /// `int`, `double` or `categorical`.
    #[serde(rename = "type")]
    pub kind: ParameterKind,
    /// Lower bound (`int`, `double`); none when absent.
    pub min: Option<f64>,
    /// Upper bound (`int`, `double`); none when absent.
    pub max: Option<f64>,
    /// Whether `min` itself is refused.
    pub min_exclusive: bool,
    /// Whether `max` itself is refused.
    pub max_exclusive: bool,
    /// The values of a `categorical` parameter.
    pub values: Vec<String>,
    /// What a job that does not set it trains with.
    pub default: String,
    /// One line of help.
    pub help: String,
}

impl ParameterConfig {
    /// The built-in trainer's declaration of a parameter.
    pub fn of_builtin(declared: &automl_text_classification::declare::Declared) -> Self {
        use automl_text_classification::declare::Kind;
        let bound = |value: f64| value.is_finite().then_some(value);
        Self {
            name: declared.name.to_string(),
            kind: match declared.kind {
                Kind::Int => ParameterKind::Int,
                Kind::Double => ParameterKind::Double,
                Kind::Categorical => ParameterKind::Categorical,
            },
            min: if declared.kind == Kind::Categorical {
                None
            } else {
                bound(declared.min)
            },
            max: if declared.kind == Kind::Categorical {
                None
            } else {
                bound(declared.max)
            },
            min_exclusive: declared.min_exclusive,
            max_exclusive: declared.max_exclusive,
            values: declared.values.iter().map(|v| v.to_string()).collect(),
            default: declared.default.to_string(),
            help: declared.help.to_string(),
        }
    }

    /// Checks one value as a trainer that declares this parameter reads it.
    pub fn check(&self, value: &str) -> Result<(), String> {
        let name = &self.name;
        if self.kind == ParameterKind::Categorical {
            return if self.values.iter().any(|v| v == value) {
                Ok(())
            } else {
                Err(format!(
                    "invalid parameter {name}: {value:?} is not one of {}",
                    self.values.join(", ")
                ))
            };
        }
        let number: f64 = match value.trim().parse() {
            Ok(number) if f64::is_finite(number) => number,
            _ => {
                return Err(format!(
                    "invalid parameter {name}: {value:?} is not a number"
                ));
            }
        };
        if self.kind == ParameterKind::Int && number.fract() != 0.0 {
            return Err(format!(
                "invalid parameter {name}: {value} is not a whole number"
            ));
        }
        let low = self.min.is_none_or(|min| {
            if self.min_exclusive {
                number > min
            } else {
                number >= min
            }
        });
        let high = self.max.is_none_or(|max| {
            if self.max_exclusive {
                number < max
            } else {
                number <= max
            }
        });
        if low && high {
            return Ok(());
        }
        let open = if self.min_exclusive { "(" } else { "[" };
        let close = if self.max_exclusive { ")" } else { "]" };
        let min = self.min.map_or("-inf".to_string(), |v| v.to_string());
        let max = self.max.map_or("inf".to_string(), |v| v.to_string());
        Err(format!(
            "invalid parameter {name}: {value} is not in {open}{min}, {max}{close}"
        ))
    }
}

/// Which backend runs trainers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Child processes of training-service.
    #[default]
    Local,
    /// batch/v1 Jobs on Kubernetes.
    Kubernetes,
}

impl BackendKind {
    /// The name recorded on jobs.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

/// A pod toleration (`[[training_service.kubernetes.tolerations]]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TolerationConfig {
    /// Taint key; empty with operator `Exists` matches every taint.
    pub key: String,
    /// `Equal` or `Exists`.
    pub operator: String,
    /// Taint value (operator `Equal`).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule`, `NoExecute`, or empty for all.
    pub effect: String,
}

/// `[training_service.kubernetes]`: how trainer Jobs are made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// API server URL without credentials (e.g. `kubectl proxy` at `http://127.0.0.1:8001`);
    /// empty: the in-cluster service account, else `~/.kube/config`.
    pub api_server: String,
    /// Namespace of trainer Jobs; empty: the namespace of the service account or kubeconfig.
    pub namespace: String,
    /// Service account of trainer pods; empty: the namespace's default.
    pub service_account: String,
    /// Secret holding the S3 credentials that trainers of `raw_s3_access` algorithms get
    /// through `secretKeyRef` (required only when some algorithm has raw access).
    pub s3_secret_name: String,
    /// Key of the access key in that Secret.
    pub s3_access_key_key: String,
    /// Key of the secret key in that Secret.
    pub s3_secret_key_key: String,
    /// Retries of a failed trainer pod (Job `backoffLimit`).
    pub backoff_limit: i32,
    /// Seconds a finished Job is kept (Job `ttlSecondsAfterFinished`).
    pub ttl_seconds_after_finished: i32,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Node labels every trainer pod requires.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of every trainer pod.
    pub tolerations: Vec<TolerationConfig>,
    /// Node labels added for jobs that ask for GPUs.
    pub gpu_node_selector: BTreeMap<String, String>,
    /// Tolerations added for jobs that ask for GPUs.
    pub gpu_tolerations: Vec<TolerationConfig>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            api_server: String::new(),
            namespace: String::new(),
            service_account: String::new(),
            s3_secret_name: "automl-s3".into(),
            s3_access_key_key: "accesskey".into(),
            s3_secret_key_key: "secretkey".into(),
            backoff_limit: 0,
            ttl_seconds_after_finished: 86_400,
            image_pull_policy: "IfNotPresent".into(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            gpu_node_selector: BTreeMap::new(),
            gpu_tolerations: vec![TolerationConfig {
                key: "nvidia.com/gpu".into(),
                operator: "Exists".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            }],
        }
    }
}

/// `[training_service.limits]`: the most one job may ask for (`INVALID_ARGUMENT` above).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most CPU per job (a Kubernetes quantity); empty for no ceiling.
    pub max_cpu: String,
    /// Most memory per job (a Kubernetes quantity); empty for no ceiling.
    pub max_memory: String,
    /// Most GPUs per job.
    pub max_gpus: i32,
    /// Run time of a job that names none (seconds).
    pub default_max_runtime_seconds: i64,
    /// Longest run time a job may ask for (seconds).
    pub max_runtime_seconds: i64,
    /// Longest a claimed job may take to start its trainer (a pod that stays Pending: no node
    /// fits, the image cannot be pulled) before it fails and frees its slot (seconds).
    pub launch_timeout_seconds: i64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_cpu: "16".into(),
            max_memory: "64Gi".into(),
            max_gpus: 8,
            default_max_runtime_seconds: 24 * 3600,
            max_runtime_seconds: 7 * 24 * 3600,
            launch_timeout_seconds: 600,
        }
    }
}

/// One tenant's share of the platform (`[training_service.quotas]` for every tenant,
/// `[training_service.quotas.tenants.<tenant>]` to override it for one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantQuota {
    /// Jobs of the tenant launched or running at once; absent or 0: no quota.
    pub max_running_jobs: Option<i64>,
    /// GPUs the tenant's launched and running jobs hold at once; absent or 0: no quota.
    pub max_gpus: Option<i64>,
    /// Its weight in the fair share (default 1): a tenant of weight 2 is given twice the
    /// running jobs of a tenant of weight 1 when both wait.
    pub weight: Option<u32>,
}

/// `[training_service.quotas]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Every tenant's launched and running jobs at once; absent or 0: no quota.
    pub max_running_jobs: Option<i64>,
    /// Every tenant's GPUs at once; absent or 0: no quota.
    pub max_gpus: Option<i64>,
    /// Every tenant's fair-share weight (default 1).
    pub weight: Option<u32>,
    /// Per-tenant overrides, field by field.
    pub tenants: BTreeMap<String, TenantQuota>,
}

/// The quota that applies to one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Jobs at once; `None`: no quota.
    pub max_running_jobs: Option<i64>,
    /// GPUs at once; `None`: no quota.
    pub max_gpus: Option<i64>,
    /// Fair-share weight (at least 1).
    pub weight: u32,
}

impl QuotasConfig {
    /// The quota of `tenant`: its overrides over the defaults.
    pub fn of(&self, tenant: &str) -> Quota {
        let own = self.tenants.get(tenant);
        Quota {
            max_running_jobs: own
                .and_then(|q| q.max_running_jobs)
                .or(self.max_running_jobs)
                .filter(|n| *n > 0),
            max_gpus: own
                .and_then(|q| q.max_gpus)
                .or(self.max_gpus)
                .filter(|n| *n > 0),
            weight: own
                .and_then(|q| q.weight)
                .or(self.weight)
                .unwrap_or(1)
                .max(1),
        }
    }
}

/// `[training_service]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Interface to bind.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// data-management (`http://host:port`), asked whether snapshots are READY.
    pub data_management: String,
    /// metadata-store (`http://host:port`); trainers get it as METADATA_STORE_SERVER.
    pub metadata_store: String,
    /// `host:port` trainers reach the object store at (MINIO_SERVER); empty derives it from
    /// the configured or embedded endpoint.
    pub trainer_minio_server: String,
    /// Jobs that run at once (across replicas sharing a database).
    pub max_concurrent_jobs: i64,
    /// What one job may ask for, and its deadlines.
    pub limits: LimitsConfig,
    /// Per-tenant quotas and fair-share weights.
    pub quotas: QuotasConfig,
    /// The scheduler's idle re-check interval (milliseconds).
    pub poll_interval_ms: u64,
    /// `local` (child processes) or `kubernetes` (batch/v1 Jobs).
    pub backend: BackendKind,
    /// The Kubernetes backend's settings.
    pub kubernetes: KubernetesConfig,
    /// Algorithm name → how to run it.
    pub algorithms: BTreeMap<String, AlgorithmConfig>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            data_management: "http://127.0.0.1:6000".into(),
            metadata_store: "http://127.0.0.1:6002".into(),
            trainer_minio_server: String::new(),
            max_concurrent_jobs: 1,
            limits: LimitsConfig::default(),
            quotas: QuotasConfig::default(),
            poll_interval_ms: 1000,
            backend: BackendKind::Local,
            kubernetes: KubernetesConfig::default(),
            algorithms: BTreeMap::from([
                (DEFAULT_ALGORITHM.to_string(), AlgorithmConfig::default()),
                (
                    ENCODER_ALGORITHM.to_string(),
                    AlgorithmConfig {
                        pretrained: automl_text_classification::pretrained::ENCODER_NAME.into(),
                        ..AlgorithmConfig::default()
                    },
                ),
            ]),
        }
    }
}

impl TrainingConfig {
    /// Where to listen.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The idle re-check interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(1))
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent_jobs < 1 {
            return Err(ConfigError::Validation(
                "training_service.max_concurrent_jobs must be at least 1".into(),
            ));
        }
        let limits = &self.limits;
        if limits.max_gpus < 0
            || limits.default_max_runtime_seconds < 1
            || limits.max_runtime_seconds < limits.default_max_runtime_seconds
            || limits.launch_timeout_seconds < 1
        {
            return Err(ConfigError::Validation(
                "training_service.limits: max_gpus must not be negative, default_max_runtime_seconds and launch_timeout_seconds must be at least 1, and max_runtime_seconds at least default_max_runtime_seconds"
                    .into(),
            ));
        }
        for (key, value) in [
            ("max_cpu", &limits.max_cpu),
            ("max_memory", &limits.max_memory),
        ] {
            if !value.is_empty() && crate::policy::quantity(value).is_none() {
                return Err(ConfigError::Validation(format!(
                    "training_service.limits.{key} `{value}` is not a Kubernetes quantity"
                )));
            }
        }
        for (url_key, url) in [
            ("data_management", &self.data_management),
            ("metadata_store", &self.metadata_store),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Validation(format!(
                    "training_service.{url_key} must start with http:// or https://"
                )));
            }
        }
        for (name, algorithm) in &self.algorithms {
            for parameter in &algorithm.parameters {
                let field = format!("training_service.algorithms.{name}.parameters");
                crate::model::check_parameter_key(&parameter.name, &field)
                    .map_err(|err| ConfigError::Validation(err.to_string()))?;
                let shaped = match parameter.kind {
                    ParameterKind::Categorical => !parameter.values.is_empty(),
                    _ => {
                        parameter.values.is_empty()
                            && parameter.min.is_none_or(f64::is_finite)
                            && parameter.max.is_none_or(f64::is_finite)
                            && parameter.min.zip(parameter.max).is_none_or(|(a, b)| a <= b)
                    }
                };
                if !shaped {
                    return Err(ConfigError::Validation(format!(
                        "{field}: {} needs values (categorical) or finite min <= max (int, double)",
                        parameter.name
                    )));
                }
            }
        }
        if self.backend == BackendKind::Kubernetes {
            for (name, algorithm) in &self.algorithms {
                if algorithm.image.is_empty() {
                    return Err(ConfigError::Validation(format!(
                        "training_service.algorithms.{name}.image is required by the kubernetes backend"
                    )));
                }
            }
            let k8s = &self.kubernetes;
            if let Some((name, _)) = self.algorithms.iter().find(|(_, a)| a.raw_s3_access)
                && k8s.s3_secret_name.is_empty()
            {
                return Err(ConfigError::Validation(format!(
                    "training_service.kubernetes.s3_secret_name is required by the kubernetes backend when an algorithm has raw_s3_access ({name})"
                )));
            }
            if k8s.backoff_limit < 0 || k8s.ttl_seconds_after_finished < 0 {
                return Err(ConfigError::Validation(
                    "training_service.kubernetes.backoff_limit and ttl_seconds_after_finished must not be negative"
                        .into(),
                ));
            }
            if !["Always", "IfNotPresent", "Never"].contains(&k8s.image_pull_policy.as_str()) {
                return Err(ConfigError::Validation(
                    "training_service.kubernetes.image_pull_policy must be Always, IfNotPresent or Never"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// `host:port` of an `http://host:port` URL.
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}
