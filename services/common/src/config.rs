//! Configuration: the sections every service shares and the layered loader.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config`) < environment variables
//! `AUTOML__SECTION__KEY` < command-line overrides. Unknown keys are errors in every layer.
//! The loader takes the environment as a map so that tests never touch the process environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use crate::auth::AuthConfig;
pub use crate::tls::TlsConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The prefix of configuration environment variables (`AUTOML__S3__ENDPOINT`).
pub const ENV_PREFIX: &str = "AUTOML";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or does not fit the schema (unknown key, wrong type).
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// The values parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Validation(String),
}

/// Builds a `T` from its defaults, an optional TOML file, the `AUTOML__…` entries of `env`, and
/// `overrides` (dotted keys such as `metadata_store.port`), in that order of precedence.
pub fn load<T>(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    overrides: &[(String, String)],
) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    load_files(file.as_slice(), env, overrides)
}

/// [`load`] with any number of TOML files, later files overriding earlier ones key by key
/// (tables merge, other values are replaced): a base file plus a site or overlay file.
pub fn load_files<T, P>(
    files: &[P],
    env: &HashMap<String, String>,
    overrides: &[(String, String)],
) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
    P: AsRef<Path>,
{
    let defaults = config::Config::try_from(&T::default())?;
    let mut builder = config::Config::builder().add_source(defaults);
    for path in files {
        builder = builder.add_source(
            config::File::from(path.as_ref())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let automl_env: config::Map<String, String> = env
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(automl_env)),
    );
    for (key, value) in overrides {
        builder = builder.set_override(key.as_str(), value.as_str())?;
    }
    Ok(builder.build()?.try_deserialize()?)
}

/// The data directory and the shared sections every service reads.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CommonConfig {
    /// Where SQLite files, the embedded object store and caches live.
    pub data_dir: PathBuf,
    /// The SQL database.
    pub database: DatabaseConfig,
    /// The object store.
    pub s3: S3Config,
    /// Logs, metrics and traces.
    pub telemetry: TelemetryConfig,
    /// Authentication and tenants.
    pub auth: AuthConfig,
    /// TLS for every server and client.
    pub tls: TlsConfig,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("automl-data"),
            database: DatabaseConfig::default(),
            s3: S3Config::default(),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl CommonConfig {
    /// Checks the values that serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Validation("data_dir must not be empty".into()));
        }
        self.database.validate()?;
        self.s3.validate()?;
        self.auth.validate()?;
        self.tls.validate()?;
        self.telemetry.validate()
    }
}

/// Where a service listens.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Interface to bind, e.g. `0.0.0.0` or `127.0.0.1`.
    pub host: String,
    /// TCP port; 0 picks a free one.
    pub port: u16,
}

impl ServerConfig {
    /// A server on all interfaces at `port`.
    pub fn on_port(port: u16) -> Self {
        Self {
            host: "0.0.0.0".into(),
            port,
        }
    }

    /// `host:port`, for binding.
    pub fn bind_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The SQL database.
#[derive(Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db` to use Postgres; empty for one SQLite file per
    /// service under the data directory.
    pub url: String,
    /// Most connections a service keeps open (Postgres; SQLite uses one writer connection).
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url_password(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// `scheme://user:password@host/…` with the password replaced by `<redacted>`; other URLs as
/// they are.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
        None => url.to_string(),
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 10,
        }
    }
}

impl DatabaseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let supported = self.url.is_empty()
            || self.url.starts_with("postgres://")
            || self.url.starts_with("postgresql://")
            || self.url.starts_with("sqlite:");
        if !supported {
            return Err(ConfigError::Validation(
                "database.url must be empty (SQLite in the data directory), sqlite:… or postgres://…"
                    .into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Validation(
                "database.max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The object store (MinIO, S3, or the embedded endpoint).
#[derive(Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `http://host:port` of an S3 endpoint; empty to start the embedded endpoint.
    pub endpoint: String,
    /// Address the embedded endpoint binds when `endpoint` is empty.
    pub embedded_bind: String,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key (never logged).
    pub secret_key: String,
    /// Bucket for raw uploads, commits and training snapshots.
    pub datasets_bucket: String,
    /// Bucket for model files.
    pub models_bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO and the embedded endpoint need.
    pub force_path_style: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("embedded_bind", &self.embedded_bind)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("datasets_bucket", &self.datasets_bucket)
            .field("models_bucket", &self.models_bucket)
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            embedded_bind: "127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            access_key: "automl".into(),
            secret_key: "automl-secret-key".into(),
            datasets_bucket: "mini-automl-dm".into(),
            models_bucket: "mini-automl-models".into(),
            force_path_style: true,
        }
    }
}

impl S3Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let scheme_ok =
            self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://");
        if !self.endpoint.is_empty() && !scheme_ok {
            return Err(ConfigError::Validation(
                "s3.endpoint must start with http:// or https://".into(),
            ));
        }
        for (field, bucket) in [
            ("s3.datasets_bucket", &self.datasets_bucket),
            ("s3.models_bucket", &self.models_bucket),
        ] {
            if !valid_bucket_name(bucket) {
                return Err(ConfigError::Validation(format!(
                    "{field} `{bucket}` is not a valid bucket name"
                )));
            }
        }
        if self.datasets_bucket == self.models_bucket {
            return Err(ConfigError::Validation(
                "s3.datasets_bucket and s3.models_bucket must differ".into(),
            ));
        }
        Ok(())
    }
}

/// S3 bucket naming rules: 3–63 characters of lowercase letters, digits, `-` and `.`, starting
/// and ending with a letter or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Logs, metrics and traces.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// A `tracing` filter, e.g. `info` or `info,automl_metadata_store=debug`; `RUST_LOG` wins.
    pub log_filter: String,
    /// `text` (human-readable) or `json` (one object per line); `--log-format` wins.
    pub log_format: LogFormat,
    /// Interface of the Prometheus `/metrics` HTTP endpoint (one per process).
    pub metrics_host: String,
    /// Port of the `/metrics` endpoint; 0 picks a free one.
    pub metrics_port: u16,
    /// Whether the `/metrics` endpoint is served at all.
    pub metrics_enabled: bool,
    /// Per-RPC spans with request ids, RPC and SQL metrics. Off only to measure their cost.
    pub instrument: bool,
    /// OTLP/HTTP collector for trace export (protobuf encoding), e.g.
    /// `http://otel-collector:4318` or `https://…`; empty: export off.
    pub otlp_endpoint: String,
    /// PEM file of the CA that signed an `https://` collector's certificate; empty: the
    /// system's trusted roots.
    pub otlp_ca_file: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".into(),
            log_format: LogFormat::Text,
            metrics_host: "0.0.0.0".into(),
            metrics_port: 9464,
            metrics_enabled: true,
            instrument: true,
            otlp_endpoint: String::new(),
            otlp_ca_file: String::new(),
        }
    }
}

impl TelemetryConfig {
    /// Checks the values that serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let endpoint = &self.otlp_endpoint;
        let http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !http {
            return Err(ConfigError::Validation(
                "telemetry.otlp_endpoint must be an http:// or https:// URL of an OTLP/HTTP collector (e.g. http://otel-collector:4318)".into(),
            ));
        }
        Ok(())
    }

    /// `host:port` of the `/metrics` endpoint, for binding.
    pub fn metrics_address(&self) -> String {
        format!("{}:{}", self.metrics_host, self.metrics_port)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-… INFO rpc{request_id=… method=Train}: target: message key=value`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        common: CommonConfig,
        port: u16,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_layers() {
        let loaded: Sample = load(None, &HashMap::new(), &[]).expect("defaults load");
        assert_eq!(loaded, Sample::default());
    }

    #[test]
    fn bucket_names() {
        assert!(valid_bucket_name("mini-automl-dm"));
        assert!(!valid_bucket_name("ab"));
        assert!(!valid_bucket_name("Upper"));
        assert!(!valid_bucket_name("-leading"));
        assert!(!valid_bucket_name("a/b"));
    }

    #[test]
    fn validation_rejects_bad_values() {
        let mut config = CommonConfig::default();
        config.validate().expect("defaults are valid");
        config.database.url = "mysql://x".into();
        assert!(config.validate().is_err());
        config.database.url = String::new();
        config.s3.endpoint = "localhost:9000".into();
        assert!(config.validate().is_err());
        config.s3.endpoint = String::new();
        config.s3.models_bucket = config.s3.datasets_bucket.clone();
        assert!(config.validate().is_err());
    }

    #[test]
    fn env_ignores_other_prefixes() {
        let loaded: Sample = load(
            None,
            &env(&[
                ("AUTOML_TOKEN", "x"),
                ("PATH", "/bin"),
                ("AUTOML__PORT", "7"),
            ]),
            &[],
        )
        .expect("loads");
        assert_eq!(loaded.port, 7);
    }
}
