//! The error → `tonic::Status` convention.
//!
//! Each service has one `thiserror` enum that implements [`ServiceError`] with an exhaustive
//! match onto a [`tonic::Code`]. [`to_status`] turns it into a `Status`: client errors carry their
//! message; internal and unavailable errors are logged with their cause and answered generically,
//! so SQL and S3 details never leak to callers.

use tonic::{Code, Status};

/// An error that knows which gRPC code it deserves.
pub trait ServiceError: std::error::Error {
    /// The gRPC code for this error.
    fn code(&self) -> Code;
}

/// Converts a service error into the `Status` sent to the client.
pub fn to_status<E: ServiceError>(error: E) -> Status {
    let code = error.code();
    match code {
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(error = %error_chain(&error), "internal error");
            Status::new(code, "internal error")
        }
        Code::Unavailable => {
            tracing::warn!(error = %error_chain(&error), "dependency unavailable");
            Status::new(code, "a dependency is unavailable, try again")
        }
        _ => Status::new(code, error.to_string()),
    }
}

/// The error and all its sources, joined by `: `, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `INVALID_ARGUMENT` naming a missing required field.
pub fn missing_field(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Sample {
        #[error("run {0} not found")]
        NotFound(String),
        #[error("database: {0}")]
        Db(#[source] std::io::Error),
    }

    impl ServiceError for Sample {
        fn code(&self) -> Code {
            match self {
                Sample::NotFound(_) => Code::NotFound,
                Sample::Db(_) => Code::Internal,
            }
        }
    }

    #[test]
    fn client_errors_keep_their_message() {
        let status = to_status(Sample::NotFound("7".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "run 7 not found");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let status = to_status(Sample::Db(std::io::Error::other("secret table name")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
