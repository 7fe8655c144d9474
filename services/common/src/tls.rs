//! TLS (rustls) for servers and clients, configured by PEM file paths in `[tls]`.
//!
//! A server with `cert_file` and `key_file` serves only TLS; clients reach `https://` URLs and
//! verify the server against `ca_file`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::ConfigError;

/// The trainer environment variable naming the CA file; set, the trainer reaches
/// metadata-store over TLS.
pub const CA_FILE_ENV: &str = "AUTOML_CA_FILE";

/// `[tls]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server certificate chain (PEM); with `key_file`, every server speaks TLS only.
    pub cert_file: String,
    /// The server's private key (PEM).
    pub key_file: String,
    /// The CA certificate (PEM) clients verify servers with (`https://` URLs between services
    /// and in trainers).
    pub ca_file: String,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("tls: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The transport refused the configuration.
    #[error("tls: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// An `https://` URL without a CA to verify it with.
    #[error("tls: {0} is https but tls.ca_file is not set")]
    NoCa(String),
    /// A malformed URL.
    #[error("{0}")]
    Url(String),
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(path)).map_err(|source| TlsError::Read {
        path: path.to_string(),
        source,
    })
}

impl TlsConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(ConfigError::Validation(
                "tls.cert_file and tls.key_file go together".into(),
            ));
        }
        Ok(())
    }

    /// Whether servers speak TLS.
    pub fn serves_tls(&self) -> bool {
        !self.cert_file.is_empty()
    }

    /// The server side, when configured.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        if !self.serves_tls() {
            return Ok(None);
        }
        let identity = Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?);
        Ok(Some(ServerTlsConfig::new().identity(identity)))
    }

    /// The client side for `url`: TLS verified against `ca_file` for `https://`, plaintext
    /// for `http://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|err| TlsError::Url(format!("{url}: {err}")))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        if self.ca_file.is_empty() {
            return Err(TlsError::NoCa(url.to_string()));
        }
        let ca = Certificate::from_pem(read(&self.ca_file)?);
        Ok(endpoint.tls_config(ClientTlsConfig::new().ca_certificate(ca))?)
    }

    /// `http` or `https`, as servers of this configuration are reached.
    pub fn scheme(&self) -> &'static str {
        if self.serves_tls() { "https" } else { "http" }
    }
}

/// An HTTP/1 client connector that speaks `http://` and `https://`.
pub type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A connector for plain HTTP and for HTTPS verified against the CA in `ca_file` (PEM), or
/// against the system's trusted roots without one (none on the system: `https://` fails to
/// verify, `http://` still works).
pub fn https_connector(ca_file: Option<&Path>) -> anyhow::Result<HttpsConnector> {
    use anyhow::Context as _;
    use hyper_rustls::HttpsConnectorBuilder;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let with_roots = |roots: rustls::RootCertStore| -> anyhow::Result<_> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HttpsConnectorBuilder::new().with_tls_config(config))
    };
    let builder = match ca_file.filter(|path| !path.as_os_str().is_empty()) {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(certs);
            with_roots(roots)?
        }
        None => match HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder,
            Err(_) => with_roots(rustls::RootCertStore::empty())?,
        },
    };
    Ok(builder.https_or_http().enable_http1().build())
}
