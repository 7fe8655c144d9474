//! prediction-service's configuration section (`[prediction_service]`).

use std::collections::BTreeMap;
use std::time::Duration;

use automl_common::config::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};

/// Default port, as in the MiniAutoML lab scripts.
pub const DEFAULT_PORT: u16 = 6001;

/// `[prediction_service]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PredictionConfig {
    /// Interface to bind.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// metadata-store, where artifacts are resolved (`http://host:port`).
    pub metadata_store: String,
    /// Where downloaded model files are kept; empty means `<data_dir>/models`.
    pub model_cache_dir: String,
    /// Most models kept loaded in memory (least recently used go first).
    pub max_loaded_models: usize,
    /// Most bytes of model weights kept loaded in memory.
    pub max_loaded_bytes: u64,
    /// Most Predict calls in flight; more are answered RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Longest document accepted (bytes).
    pub max_document_bytes: usize,
    /// How many labels `top` carries.
    pub top_k: usize,
    /// Algorithms served in-process by the built-in classifier.
    pub builtin_algorithms: Vec<String>,
    /// Algorithms forwarded to an external `prediction.Predictor`: name → `http://host:port`.
    pub external_predictors: BTreeMap<String, String>,
    /// Deadline of a forwarded call (milliseconds).
    pub predictor_timeout_ms: u64,
}

impl Default for PredictionConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            metadata_store: "http://127.0.0.1:6002".into(),
            model_cache_dir: String::new(),
            max_loaded_models: 8,
            max_loaded_bytes: 2 * 1024 * 1024 * 1024,
            max_in_flight: 256,
            max_document_bytes: 64 * 1024,
            top_k: 5,
            builtin_algorithms: vec![
                "intent-classification".into(),
                "intent-classification-encoder".into(),
            ],
            external_predictors: BTreeMap::new(),
            predictor_timeout_ms: 5000,
        }
    }
}

impl PredictionConfig {
    /// Where to listen.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// Deadline of forwarded calls.
    pub fn predictor_timeout(&self) -> Duration {
        Duration::from_millis(self.predictor_timeout_ms)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_loaded_models", self.max_loaded_models),
            ("max_in_flight", self.max_in_flight),
            ("max_document_bytes", self.max_document_bytes),
            ("top_k", self.top_k),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Validation(format!(
                    "prediction_service.{key} must be at least 1"
                )));
            }
        }
        for (name, url) in std::iter::once(("metadata_store", &self.metadata_store)).chain(
            self.external_predictors
                .iter()
                .map(|(k, v)| (k.as_str(), v)),
        ) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Validation(format!(
                    "prediction_service: `{name}` address `{url}` must start with http:// or https://"
                )));
            }
        }
        Ok(())
    }
}
