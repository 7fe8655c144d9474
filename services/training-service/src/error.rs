//! training-service's errors and their gRPC codes.

use automl_common::error::ServiceError;
use tonic::Code;

/// Everything that can go wrong in training-service.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// A field is missing or malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// No job with this id.
    #[error("job {0} not found")]
    JobNotFound(i64),
    /// No experiment with this id.
    #[error("experiment {0} not found")]
    ExperimentNotFound(i64),
    /// The dataset version does not exist in data-management.
    #[error("version {version_hash} of dataset {dataset_id} not found")]
    VersionNotFound {
        /// Dataset id.
        dataset_id: String,
        /// Hash asked for.
        version_hash: String,
    },
    /// The job is in a state that does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (data-management, metadata-store) is unreachable.
    #[error("{0} is unavailable")]
    Unavailable(String),
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// A local file or process operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A stored row could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl ServiceError for TrainingError {
    fn code(&self) -> Code {
        match self {
            TrainingError::InvalidArgument(_) => Code::InvalidArgument,
            TrainingError::JobNotFound(_)
            | TrainingError::ExperimentNotFound(_)
            | TrainingError::VersionNotFound { .. } => Code::NotFound,
            TrainingError::FailedPrecondition(_) => Code::FailedPrecondition,
            TrainingError::Unavailable(_) => Code::Unavailable,
            TrainingError::Db(_) | TrainingError::Io(_) | TrainingError::Corrupt(_) => {
                Code::Internal
            }
        }
    }
}
