//! data-management's errors and their gRPC codes.

use automl_common::error::ServiceError;
use automl_common::s3::S3Error;
use tonic::Code;

/// Everything that can go wrong in data-management.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A field is missing or malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The uploaded data is invalid; the message names the first bad lines.
    #[error("{0}")]
    InvalidData(String),
    /// No dataset with this id.
    #[error("dataset {0} not found")]
    DatasetNotFound(i64),
    /// No commit with this id in the dataset.
    #[error("commit {commit_id} of dataset {dataset_id} not found")]
    CommitNotFound {
        /// The dataset.
        dataset_id: i64,
        /// The commit asked for.
        commit_id: i64,
    },
    /// No snapshot with this hash.
    #[error("version {version_hash} of dataset {dataset_id} not found")]
    SnapshotNotFound {
        /// The dataset.
        dataset_id: i64,
        /// The hash asked for.
        version_hash: String,
    },
    /// The source object of an ingest does not exist.
    #[error("source object {0} not found")]
    SourceNotFound(String),
    /// The request cannot be served in the current state (e.g. no commit matches the query).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// The object store failed.
    #[error("object store")]
    ObjectStore(#[from] S3Error),
    /// Reading a stream failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A stored row could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl ServiceError for DataError {
    fn code(&self) -> Code {
        match self {
            DataError::InvalidArgument(_) | DataError::InvalidData(_) => Code::InvalidArgument,
            DataError::DatasetNotFound(_)
            | DataError::CommitNotFound { .. }
            | DataError::SnapshotNotFound { .. }
            | DataError::SourceNotFound(_) => Code::NotFound,
            DataError::FailedPrecondition(_) => Code::FailedPrecondition,
            DataError::ObjectStore(S3Error::Unavailable(_)) => Code::Unavailable,
            DataError::ObjectStore(S3Error::AccessDenied(_)) => Code::FailedPrecondition,
            DataError::ObjectStore(S3Error::NotFound(_) | S3Error::Other(_))
            | DataError::Db(_)
            | DataError::Io(_)
            | DataError::Corrupt(_) => Code::Internal,
        }
    }
}
