//! The one gRPC server bootstrap every service uses.
//!
//! [`serve`] takes a bound listener and a shutdown token from its caller (so tests bind
//! `127.0.0.1:0`), and adds what every automl server has: `grpc.health.v1.Health` for `""` and
//! each service name, server reflection v1 and v1alpha, the per-RPC span, request id and metrics
//! of [`crate::rpc::RpcLayer`] (unless `telemetry.instrument` is off), and graceful shutdown: when the token is
//! cancelled, health goes `NOT_SERVING`, the listener closes and in-flight calls finish (up to
//! [`DRAIN_TIMEOUT`]). Streaming handlers watch the same token and end their streams.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, Authenticator};
use crate::config::CommonConfig;
use crate::rpc::RpcLayer;
use crate::tls::{TlsConfig, TlsError};

/// How long in-flight calls may run after shutdown starts before the server stops anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection descriptors are inconsistent (a build problem).
    #[error("reflection setup: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a service hands to the bootstrap: its fully qualified gRPC names and its routes.
pub struct ServiceRoutes {
    /// Names for health and reflection, e.g. `metadata_store.MetadataStoreService`.
    pub names: Vec<&'static str>,
    /// The tonic services themselves.
    pub routes: Routes,
    /// Checks the token of every call but health and reflection; `None`: authentication off.
    pub auth: Option<Arc<Authenticator>>,
    /// TLS of the listener (empty: plaintext).
    pub tls: TlsConfig,
}

impl ServiceRoutes {
    /// Plain routes: no authentication, no TLS.
    pub fn new(names: Vec<&'static str>, routes: Routes) -> Self {
        Self {
            names,
            routes,
            auth: None,
            tls: TlsConfig::default(),
        }
    }

    /// The routes with the authentication and TLS of `common`.
    pub fn secured(mut self, common: &CommonConfig) -> Self {
        self.auth = Authenticator::from_config(&common.auth, &common.data_dir);
        self.tls = common.tls.clone();
        self
    }
}

/// Reflection over the whole contract and health, advertising only what this server serves.
fn reflection(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(automl_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH_SERVICE)
        .with_service_name(REFLECTION_V1)
        .with_service_name(REFLECTION_V1ALPHA);
    for name in names {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// Serves `service` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    service: ServiceRoutes,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let local_addr = listener.local_addr().ok();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in service.names.iter().copied().chain([""]) {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let routes = service
        .routes
        .add_service(health_service)
        .add_service(reflection(&service.names).build_v1()?)
        .add_service(reflection(&service.names).build_v1alpha()?);

    let names = service.names.clone();
    let stop = shutdown.clone();
    let signal = async move {
        stop.cancelled().await;
        for name in names.iter().copied().chain([""]) {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(addr = ?local_addr, "shutting down, draining in-flight calls");
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = service.tls.server()? {
        builder = builder.tls_config(tls)?;
    }
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        if crate::telemetry::instrumented() {
            Box::pin(
                builder
                    .layer(RpcLayer)
                    .layer(AuthLayer::new(service.auth.clone()))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, signal),
            )
        } else {
            Box::pin(
                builder
                    .layer(AuthLayer::new(service.auth.clone()))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, signal),
            )
        };
    tracing::info!(addr = ?local_addr, services = ?service.names, "serving");
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!(addr = ?local_addr, "drain timeout reached, stopping with calls in flight");
        }
    }
    Ok(())
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
