//! How failures become pages: a service's status maps to the HTTP status a browser expects.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::pages::layout;

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A service URL or the TLS files are wrong.
    #[error(transparent)]
    Tls(#[from] automl_common::tls::TlsError),
    /// The console's own certificate could not be loaded.
    #[error("web tls: {0}")]
    ServerTls(String),
}

/// A failed page.
#[derive(Debug)]
pub enum WebError {
    /// A service answered with an error.
    Rpc(tonic::Status),
    /// The request itself is wrong.
    BadRequest(String),
    /// Nothing here (or not the caller's).
    NotFound(String),
    /// A state-changing request without a valid cross-site token.
    Forbidden(String),
}

impl From<tonic::Status> for WebError {
    fn from(status: tonic::Status) -> Self {
        WebError::Rpc(status)
    }
}

impl WebError {
    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            WebError::Rpc(status) => {
                let code = match status.code() {
                    tonic::Code::NotFound => StatusCode::NOT_FOUND,
                    tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                        StatusCode::BAD_REQUEST
                    }
                    tonic::Code::AlreadyExists
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Aborted => StatusCode::CONFLICT,
                    tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                    tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                    tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                    tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (code, status.message().to_string())
            }
            WebError::BadRequest(message) => (StatusCode::BAD_REQUEST, message.clone()),
            WebError::NotFound(message) => (StatusCode::NOT_FOUND, message.clone()),
            WebError::Forbidden(message) => (StatusCode::FORBIDDEN, message.clone()),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (code, message) = self.status_and_message();
        if code == StatusCode::UNAUTHORIZED {
            // The token was revoked or expired: sign in again.
            return (
                [(header::SET_COOKIE, crate::session::clear_cookie())],
                Redirect::to("/signin"),
            )
                .into_response();
        }
        if code.is_server_error() {
            tracing::warn!(status = %code, %message, "console page failed");
        }
        let title = code.canonical_reason().unwrap_or("Error");
        let body = html! {
            h1 { (code.as_u16()) " " (title) }
            p.error { (message) }
            p { a href="/" { "Back to the console" } }
        };
        (code, layout::bare(title, body)).into_response()
    }
}

/// The answer to a path that names no page.
pub async fn not_found() -> WebError {
    WebError::NotFound("no such page".into())
}

/// What handlers return.
pub type WebResult<T> = Result<T, WebError>;
