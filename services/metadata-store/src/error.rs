//! metadata-store's errors and their gRPC codes.

use automl_common::error::ServiceError;
use automl_common::s3::S3Error;
use tonic::Code;

/// Everything that can go wrong in metadata-store.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// A field is missing or malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// No run with this id.
    #[error("run {0} not found")]
    RunNotFound(String),
    /// LogRunStart for a run that exists.
    #[error("run {0} already exists")]
    RunExists(String),
    /// LogEpoch for an epoch that exists.
    #[error("epoch {epoch_id} of run {run_id} already exists")]
    EpochExists {
        /// The run.
        run_id: String,
        /// The epoch.
        epoch_id: String,
    },
    /// LogEpoch or LogRunEnd after LogRunEnd.
    #[error("run {0} has already ended")]
    RunEnded(String),
    /// No artifact recorded for the run.
    #[error("no artifact recorded for run {0}")]
    ArtifactNotFound(String),
    /// CreateArtifact names files that are not in the object store.
    #[error("no files at {bucket}/{path}")]
    ArtifactFilesMissing {
        /// The bucket asked for.
        bucket: String,
        /// The key or prefix asked for.
        path: String,
    },
    /// The run already has a different artifact.
    #[error("run {0} already has an artifact at another location or name")]
    ArtifactConflict(String),
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// The object store failed.
    #[error("object store")]
    ObjectStore(#[from] S3Error),
    /// A stored row could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl ServiceError for MetadataError {
    fn code(&self) -> Code {
        match self {
            MetadataError::InvalidArgument(_) => Code::InvalidArgument,
            MetadataError::RunNotFound(_) | MetadataError::ArtifactNotFound(_) => Code::NotFound,
            MetadataError::RunExists(_)
            | MetadataError::EpochExists { .. }
            | MetadataError::ArtifactConflict(_) => Code::AlreadyExists,
            MetadataError::RunEnded(_) | MetadataError::ArtifactFilesMissing { .. } => {
                Code::FailedPrecondition
            }
            MetadataError::ObjectStore(S3Error::Unavailable(_)) => Code::Unavailable,
            MetadataError::ObjectStore(
                S3Error::NotFound(_) | S3Error::AccessDenied(_) | S3Error::Other(_),
            )
            | MetadataError::Db(_)
            | MetadataError::Corrupt(_) => Code::Internal,
        }
    }
}
