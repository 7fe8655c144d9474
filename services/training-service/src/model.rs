//! Domain types of training-service: job states and what a job asks for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{DEFAULT_ALGORITHM, ENCODER_ALGORITHM};
use crate::error::TrainingError;

/// The tenant of every job until authentication assigns others.
pub use automl_common::auth::DEFAULT_TENANT;
/// Most parameters one job may carry.
pub const MAX_PARAMETERS: usize = 64;
/// Longest field value accepted.
pub const MAX_TEXT: usize = 4096;

/// The state of a job, numbered as the contract's `TrainingStatus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting in the queue.
    #[default]
    Queuing,
    /// Claimed; the trainer is being started.
    Launch,
    /// The trainer runs.
    Running,
    /// The trainer finished successfully.
    Succeed,
    /// The job failed; the message says why.
    Failure,
    /// Canceled by a client.
    Canceled,
}

impl JobStatus {
    /// The contract's enum number, also stored in SQL.
    pub fn number(self) -> i64 {
        match self {
            JobStatus::Queuing => 0,
            JobStatus::Launch => 1,
            JobStatus::Running => 2,
            JobStatus::Succeed => 3,
            JobStatus::Failure => 4,
            JobStatus::Canceled => 5,
        }
    }

    /// From the stored number.
    pub fn from_number(number: i64) -> Result<Self, TrainingError> {
        Ok(match number {
            0 => JobStatus::Queuing,
            1 => JobStatus::Launch,
            2 => JobStatus::Running,
            3 => JobStatus::Succeed,
            4 => JobStatus::Failure,
            5 => JobStatus::Canceled,
            other => return Err(TrainingError::Corrupt(format!("job status {other}"))),
        })
    }

    /// Whether nothing follows this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeed | JobStatus::Failure | JobStatus::Canceled
        )
    }
}

/// What the trainer needs (Kubernetes requests and limits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU quantity, e.g. "2".
    pub cpu: String,
    /// Memory quantity, e.g. "4Gi".
    pub memory: String,
    /// GPUs.
    pub gpus: i32,
    /// Longest run time in seconds; filled with the configured default at submission (0 only
    /// on jobs stored before deadlines existed).
    #[serde(default)]
    pub max_runtime_seconds: i64,
}

/// A job's priority among its own tenant's queued jobs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// After the tenant's normal and high jobs.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Before the tenant's normal and low jobs.
    High,
}

impl Priority {
    /// The stored rank: higher starts first.
    pub fn rank(self) -> i64 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }

    /// From the contract's `JobPriority` number.
    pub fn from_contract(number: i32) -> Result<Self, TrainingError> {
        match number {
            0 => Ok(Priority::Normal),
            1 => Ok(Priority::Low),
            2 => Ok(Priority::High),
            other => Err(TrainingError::InvalidArgument(format!(
                "metadata.priority: {other} is not a priority (PRIORITY_NORMAL, PRIORITY_LOW, PRIORITY_HIGH)"
            ))),
        }
    }

    /// The contract's `JobPriority` number.
    pub fn contract(self) -> i32 {
        match self {
            Priority::Normal => 0,
            Priority::Low => 1,
            Priority::High => 2,
        }
    }
}

/// What a job trains, as the client sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Algorithm name (a key of the algorithm registry).
    pub algorithm: String,
    /// Dataset id.
    pub dataset_id: String,
    /// Job name.
    pub name: String,
    /// Snapshot to train on.
    pub train_data_version_hash: String,
    /// Trainer parameters, passed to the trainer verbatim as environment variables.
    pub parameters: BTreeMap<String, String>,
    /// Model name of the artifact.
    pub output_model_name: String,
    /// Resources of the trainer.
    pub resources: Resources,
    /// Run to fine-tune from, empty for none.
    pub base_run_id: String,
    /// Order among the tenant's own queued jobs.
    #[serde(default)]
    pub priority: Priority,
    /// Id of the `Train` call that queued the job; the trainer gets it as AUTOML_REQUEST_ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// W3C trace context of the `Train` call, when traces are exported; the trainer gets it as
    /// TRACEPARENT and continues that trace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    /// A random id given at submission: a Kubernetes Job carries it, so a Job left behind by
    /// another database's job of the same id is never taken for this one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub submission: String,
}

/// A stored job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    /// The job id, also the run id.
    pub job_id: i64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its state.
    pub status: JobStatus,
    /// Why it is in that state.
    pub message: String,
    /// What it trains.
    pub spec: JobSpec,
    /// The backend that runs it (`local`).
    pub backend: String,
    /// The backend's handle (`pid:start-time` of a local trainer, the Kubernetes Job name).
    pub backend_ref: String,
    /// When it was claimed (ms since the Unix epoch), 0 while queued.
    pub claimed_ms: i64,
    /// A cancel was asked for and the trainer is not yet known to be gone: the job keeps its
    /// slot (and reads `canceling`) until it is.
    pub canceling: bool,
    /// Why it is being canceled, when not by request (`early stopped at epoch 4`).
    pub cancel_reason: String,
}

/// Trainer variables that training-service sets itself: a parameter of the same name would
/// override them (another tenant's data path, another S3 endpoint), so none may be submitted.
pub const RESERVED_VARIABLES: &[&str] = &[
    "JOB_ID",
    "ALGORITHM_NAME",
    "METADATA_STORE_SERVER",
    "TRAINING_DATASET_ID",
    "TRAINING_DATASET_VERSION_HASH",
    "MODEL_BUCKET",
    "MODEL_NAME",
    "MINIO_SERVER",
    "MINIO_SERVER_ACCESS_KEY",
    "MINIO_SERVER_SECRET_KEY",
    "TRAINING_DATA_BUCKET",
    "TRAINING_DATA_PATH",
    "BASE_RUN_ID",
    "PRETRAINED_MODEL",
    // The presigned URLs of the job's objects (also covered by the `AUTOML_` prefix).
    "AUTOML_OBJECT_GRANTS",
    // What the process loader and shell read: a parameter must not change which code runs.
    "PATH",
    "HOME",
    "SHELL",
    "IFS",
    "ENV",
    "BASH_ENV",
];

/// An algorithm of the registry, and whether it can be trained now.
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmStatus {
    /// Its name (a key of the registry).
    pub name: String,
    /// The pretrained model it needs, empty for none.
    pub pretrained_model: String,
    /// False while its pretrained model is not imported.
    pub ready: bool,
    /// Why it is not ready; empty when it is.
    pub message: String,
    /// The parameters its trainer reads (the built-in trainer's own declarations, or the
    /// registry's `parameters` for a trainer of its own).
    pub parameters: Vec<crate::config::ParameterConfig>,
}

/// The algorithm a client that names none trains: the encoder when it is registered and
/// ready, else the classic classifier, else the first registered one.
pub fn default_algorithm(algorithms: &[AlgorithmStatus]) -> String {
    let ready = |name: &str| algorithms.iter().any(|a| a.name == name && a.ready);
    let registered = |name: &str| algorithms.iter().any(|a| a.name == name);
    if ready(ENCODER_ALGORITHM) {
        ENCODER_ALGORITHM.to_string()
    } else if registered(DEFAULT_ALGORITHM) || algorithms.is_empty() {
        DEFAULT_ALGORITHM.to_string()
    } else {
        algorithms[0].name.clone()
    }
}

/// Prefixes of reserved variable names (automl's own, the dynamic loader's).
const RESERVED_PREFIXES: &[&str] = &["AUTOML_", "LD_", "DYLD_", "BASH_FUNC_"];

/// Whether `name` is a trainer variable a parameter may not set.
pub fn is_reserved_variable(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    RESERVED_VARIABLES.contains(&upper.as_str())
        || RESERVED_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// Checks a parameter name: an environment variable name that training-service does not set
/// itself; `field` names where it came from.
pub fn check_parameter_key(key: &str, field: &str) -> Result<(), TrainingError> {
    let valid_key = !key.is_empty()
        && key.len() <= 128
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    if !valid_key {
        return Err(TrainingError::InvalidArgument(format!(
            "{field} key `{key}` must be an environment variable name"
        )));
    }
    if is_reserved_variable(key) {
        return Err(TrainingError::InvalidArgument(format!(
            "{field} key `{key}` is set by training-service and cannot be a parameter"
        )));
    }
    Ok(())
}

/// Checks a submission: required fields named as the contract names them, bounded sizes.
pub fn check_spec(spec: &JobSpec) -> Result<(), TrainingError> {
    for (field, value) in [
        ("metadata.output_model_name", &spec.output_model_name),
        ("metadata.dataset_id", &spec.dataset_id),
        (
            "metadata.train_data_version_hash",
            &spec.train_data_version_hash,
        ),
        ("metadata.algorithm", &spec.algorithm),
    ] {
        if value.is_empty() {
            return Err(TrainingError::InvalidArgument(format!(
                "{field} is required"
            )));
        }
    }
    for (field, value) in [
        ("metadata.output_model_name", &spec.output_model_name),
        ("metadata.dataset_id", &spec.dataset_id),
        (
            "metadata.train_data_version_hash",
            &spec.train_data_version_hash,
        ),
        ("metadata.algorithm", &spec.algorithm),
        ("metadata.name", &spec.name),
        ("metadata.base_run_id", &spec.base_run_id),
        ("metadata.resources.cpu", &spec.resources.cpu),
        ("metadata.resources.memory", &spec.resources.memory),
    ] {
        if value.len() > MAX_TEXT {
            return Err(TrainingError::InvalidArgument(format!(
                "{field} is longer than {MAX_TEXT} bytes"
            )));
        }
    }
    if spec.parameters.len() > MAX_PARAMETERS {
        return Err(TrainingError::InvalidArgument(format!(
            "metadata.parameters has more than {MAX_PARAMETERS} entries"
        )));
    }
    for (key, value) in &spec.parameters {
        check_parameter_key(key, "metadata.parameters")?;
        if value.len() > MAX_TEXT || value.contains('\0') {
            return Err(TrainingError::InvalidArgument(format!(
                "metadata.parameters[{key}] is too long or contains NUL"
            )));
        }
    }
    if spec.resources.gpus < 0 {
        return Err(TrainingError::InvalidArgument(
            "metadata.resources.gpus must not be negative".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            algorithm: "intent-classification".into(),
            dataset_id: "1".into(),
            train_data_version_hash: "hashAg==".into(),
            output_model_name: "intent".into(),
            ..JobSpec::default()
        }
    }

    #[test]
    fn required_fields_are_named() {
        assert!(check_spec(&spec()).is_ok());
        let mut missing = spec();
        missing.output_model_name.clear();
        let err = check_spec(&missing).expect_err("missing");
        assert!(err.to_string().contains("metadata.output_model_name"));
        let mut bad = spec();
        bad.parameters.insert("LR; rm".into(), "4".into());
        assert!(check_spec(&bad).is_err());
        let mut long = spec();
        long.name = "n".repeat(MAX_TEXT + 1);
        let err = check_spec(&long).expect_err("too long");
        assert!(err.to_string().contains("metadata.name"), "{err}");
    }

    #[test]
    fn parameters_cannot_override_what_training_service_sets() {
        for key in [
            "TRAINING_DATA_PATH",
            "training_data_bucket",
            "MINIO_SERVER",
            "METADATA_STORE_SERVER",
            "AUTOML_TOKEN",
            "LD_PRELOAD",
            "PATH",
            "PRETRAINED_MODEL",
        ] {
            let mut bad = spec();
            bad.parameters.insert(key.into(), "x".into());
            let err = check_spec(&bad).expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
        let mut fine = spec();
        for key in [
            "EPOCHS",
            "LR",
            "BATCH_SIZE",
            "FC_SIZE",
            "OPTIMIZER",
            "DEVICE",
        ] {
            fine.parameters.insert(key.into(), "1".into());
        }
        assert!(check_spec(&fine).is_ok());
    }

    fn algorithm(name: &str, ready: bool) -> AlgorithmStatus {
        AlgorithmStatus {
            name: name.into(),
            pretrained_model: String::new(),
            ready,
            message: String::new(),
            parameters: Vec::new(),
        }
    }

    #[test]
    fn the_default_algorithm_is_the_encoder_once_it_is_ready() {
        let classic = algorithm(DEFAULT_ALGORITHM, true);
        let encoder = |ready| algorithm(ENCODER_ALGORITHM, ready);
        assert_eq!(
            default_algorithm(&[classic.clone(), encoder(true)]),
            ENCODER_ALGORITHM
        );
        assert_eq!(
            default_algorithm(&[classic.clone(), encoder(false)]),
            DEFAULT_ALGORITHM
        );
        assert_eq!(default_algorithm(&[classic]), DEFAULT_ALGORITHM);
        assert_eq!(default_algorithm(&[algorithm("custom", true)]), "custom");
        assert_eq!(
            default_algorithm(&[algorithm("custom", true), encoder(false)]),
            "custom"
        );
        assert_eq!(default_algorithm(&[]), DEFAULT_ALGORITHM);
    }

    #[test]
    fn statuses_round_trip() {
        for number in 0..=5 {
            let status = JobStatus::from_number(number).expect("known");
            assert_eq!(status.number(), number);
        }
        assert!(JobStatus::from_number(9).is_err());
        assert!(JobStatus::Canceled.is_final());
        assert!(!JobStatus::Running.is_final());
    }
}
