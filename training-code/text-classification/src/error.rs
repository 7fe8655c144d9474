//! The crate's one error type.

use std::path::PathBuf;

/// Why loading data, training, saving or loading a model, or predicting failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is malformed (bad quoting, a missing column, an unknown label id).
    #[error("{file} line {line}: {reason}")]
    Data {
        /// Which file (`examples.csv`, `labels.csv`, or a path).
        file: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The data cannot be trained on as a whole (too few examples, no labels).
    #[error("unusable training data: {0}")]
    Dataset(String),
    /// A training parameter is missing or out of range.
    #[error("invalid parameter {name}: {reason}")]
    Parameter {
        /// The parameter's name, e.g. `LR`.
        name: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// A model artifact is incomplete, inconsistent or not readable.
    #[error("invalid model artifact: {0}")]
    Artifact(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The requested device cannot be used.
    #[error("device unavailable: {0}")]
    Device(String),
    /// Training diverged (a loss or weight became NaN or infinite).
    #[error("training diverged: {0}")]
    Diverged(String),
    /// Training was stopped by its caller (e.g. progress could not be recorded).
    #[error("training stopped: {0}")]
    Stopped(String),
    /// A pretrained model is missing, incomplete or does not match its digest.
    #[error("pretrained model: {0}")]
    Pretrained(String),
    /// An object-store call failed.
    #[error("{0}")]
    Store(#[from] automl_common::s3::S3Error),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Parameter`] for `name`.
    pub fn parameter(name: &str, reason: impl Into<String>) -> Self {
        Self::Parameter {
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}
