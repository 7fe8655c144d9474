//! Serving the console over HTTP, or HTTPS with the deployment's `[tls]` certificate.

use std::sync::Arc;

use automl_common::tls::TlsConfig;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::error::StartError;

/// The rustls server side of `tls`, when it names a certificate.
pub fn acceptor(tls: &TlsConfig) -> Result<Option<TlsAcceptor>, StartError> {
    if !tls.serves_tls() {
        return Ok(None);
    }
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| StartError::ServerTls(format!("{}: {err}", tls.cert_file)))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|err| StartError::ServerTls(format!("{}: {err}", tls.key_file)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| StartError::ServerTls(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| StartError::ServerTls(err.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Serves `router` on `listener` (through `tls` when given) until `shutdown`; open event
/// streams end with it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        let token = shutdown.clone();
        return axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
    };
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(%err, "console accept failed");
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let router = router.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let stream = match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, %err, "console TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, %err, "console connection ended");
                    }
                }
                () = token.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}
