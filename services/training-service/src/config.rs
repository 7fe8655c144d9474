//! training-service's configuration section (`[training_service]`).

use std::collections::BTreeMap;
use std::time::Duration;

use automl_common::config::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};

/// Default port, as in the MiniAutoML lab scripts.
pub const DEFAULT_PORT: u16 = 6003;

/// How one algorithm is run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlgorithmConfig {
    /// Local backend: the trainer program; empty means `automl-train` beside the `automl`
    /// binary.
    pub command: String,
    /// Kubernetes backend: the trainer image.
    pub image: String,
    /// Kubernetes backend: the image for jobs that ask for GPUs.
    pub gpu_image: String,
}

/// `[training_service]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Interface to bind.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// data-management (`http://host:port`), asked whether snapshots are READY.
    pub data_management: String,
    /// metadata-store (`http://host:port`); trainers get it as METADATA_STORE_SERVER.
    pub metadata_store: String,
    /// `host:port` trainers reach the object store at (MINIO_SERVER); empty derives it from
    /// the configured or embedded endpoint.
    pub trainer_minio_server: String,
    /// Jobs that run at once (across replicas sharing a database).
    pub max_concurrent_jobs: i64,
    /// The scheduler's idle re-check interval (milliseconds).
    pub poll_interval_ms: u64,
    /// Algorithm name → how to run it.
    pub algorithms: BTreeMap<String, AlgorithmConfig>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            data_management: "http://127.0.0.1:6000".into(),
            metadata_store: "http://127.0.0.1:6002".into(),
            trainer_minio_server: String::new(),
            max_concurrent_jobs: 1,
            poll_interval_ms: 1000,
            algorithms: BTreeMap::from([(
                "intent-classification".to_string(),
                AlgorithmConfig::default(),
            )]),
        }
    }
}

impl TrainingConfig {
    /// Where to listen.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The idle re-check interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(1))
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent_jobs < 1 {
            return Err(ConfigError::Validation(
                "training_service.max_concurrent_jobs must be at least 1".into(),
            ));
        }
        for (key, url) in [
            ("data_management", &self.data_management),
            ("metadata_store", &self.metadata_store),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Validation(format!(
                    "training_service.{key} must start with http:// or https://"
                )));
            }
        }
        Ok(())
    }
}

/// `host:port` of an `http://host:port` URL.
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}
