//! The bearer token on the wire: the tower layer that authenticates every call a server
//! receives (health and reflection stay open), and the client interceptor that sends it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use super::{Authenticator, HEADER, SERVICE_TOKEN_TTL, Scope};

/// Whether a path is open without a token (health and reflection).
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// Authenticates every call but health and reflection, and hands the [`Caller`] to the
/// handler; a pass-through without an authenticator.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    /// A layer checking tokens with `auth` (none: authentication off).
    pub fn new(auth: Option<Arc<Authenticator>>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

fn refusal<B: Default>(status: &tonic::Status) -> http::Response<B> {
    let (parts, ()) = status.clone().into_http::<()>().into_parts();
    http::Response::from_parts(parts, B::default())
}

impl<S, B, R> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(auth) = &self.auth
            && !is_open(request.uri().path())
        {
            let token = request
                .headers()
                .get(HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            let verdict = match token {
                None => Err(tonic::Status::unauthenticated(
                    "missing `authorization: Bearer <token>`",
                )),
                Some(token) => auth.authenticate(token),
            };
            match verdict {
                Ok(caller) => {
                    tracing::debug!(tenant = %caller.tenant, caller = %caller.name, path = request.uri().path(), "authenticated");
                    request.extensions_mut().insert(caller);
                }
                Err(status) => {
                    tracing::info!(
                        path = request.uri().path(),
                        reason = status.message(),
                        "call refused"
                    );
                    let response = refusal(&status);
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let call = inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            too_large_is_resource_exhausted(response.headers_mut());
            Ok(response)
        })
    }
}

/// tonic answers a request message over the size limit with OUT_OF_RANGE; gRPC's convention
/// (and what clients retry on, or not) is RESOURCE_EXHAUSTED. No automl handler answers
/// OUT_OF_RANGE itself, so every such status is that limit.
fn too_large_is_resource_exhausted(headers: &mut http::HeaderMap) {
    use crate::rpc::GRPC_STATUS;
    let out_of_range = headers
        .get(GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() == b"11");
    if out_of_range {
        let code = i32::from(tonic::Code::ResourceExhausted).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&code) {
            headers.insert(GRPC_STATUS, value);
        }
    }
}

/// A client interceptor adding `authorization: Bearer <token>` (no token: nothing).
#[derive(Clone, Default)]
pub struct Credentials {
    value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// Credentials sending `token`; empty: none.
    pub fn bearer(token: &str) -> Result<Self, tonic::Status> {
        if token.is_empty() {
            return Ok(Self::default());
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("the token has invalid characters"))?;
        Ok(Self { value: Some(value) })
    }

    /// A service's credentials for calls on `tenant`'s behalf (none without authentication).
    pub fn for_tenant(auth: Option<&Authenticator>, tenant: &str) -> Self {
        auth.and_then(|auth| {
            Self::bearer(&auth.mint(tenant, "service", Scope::Tenant, SERVICE_TOKEN_TTL)).ok()
        })
        .unwrap_or_default()
    }

    /// Adds the credentials to a request.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = &self.value {
            request.metadata_mut().insert(HEADER, value.clone());
        }
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(&mut request);
        Ok(request)
    }
}
