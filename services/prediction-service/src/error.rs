//! prediction-service's errors and their gRPC codes.

use automl_common::error::ServiceError;
use automl_common::s3::S3Error;
use tonic::Code;

/// Everything that can go wrong in prediction-service.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// A field is missing or malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// metadata-store has no artifact for the run.
    #[error("cannot locate model artifact for runId {0}")]
    ArtifactNotFound(String),
    /// The artifact's algorithm has no predictor here.
    #[error("no predictor for algorithm `{0}`")]
    NoPredictor(String),
    /// The model files are unusable.
    #[error("model of run {run_id} cannot be loaded: {reason}")]
    BadModel {
        /// The run.
        run_id: String,
        /// Why.
        reason: String,
    },
    /// Too many calls in flight.
    #[error("prediction-service is at capacity ({0} calls in flight), retry later")]
    Overloaded(usize),
    /// A dependency (metadata-store, the object store, an external predictor) is unreachable.
    #[error("{0} is unavailable")]
    Unavailable(String),
    /// An external predictor answered with an error.
    #[error("external predictor: {0}")]
    Predictor(String),
    /// The client's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The object store failed.
    #[error("object store")]
    ObjectStore(#[from] S3Error),
    /// A local file operation failed.
    #[error("model cache: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else unexpected.
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError for PredictError {
    fn code(&self) -> Code {
        match self {
            PredictError::InvalidArgument(_) => Code::InvalidArgument,
            PredictError::ArtifactNotFound(_) => Code::NotFound,
            PredictError::NoPredictor(_) | PredictError::BadModel { .. } => {
                Code::FailedPrecondition
            }
            PredictError::Overloaded(_) => Code::ResourceExhausted,
            PredictError::Unavailable(_) | PredictError::ObjectStore(S3Error::Unavailable(_)) => {
                Code::Unavailable
            }
            PredictError::Predictor(_) => Code::Unknown,
            PredictError::DeadlineExceeded => Code::DeadlineExceeded,
            PredictError::ObjectStore(
                S3Error::NotFound(_) | S3Error::AccessDenied(_) | S3Error::Other(_),
            )
            | PredictError::Io(_)
            | PredictError::Internal(_) => Code::Internal,
        }
    }
}
