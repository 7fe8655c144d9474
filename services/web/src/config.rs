//! `[web]`: where the console listens and where it finds the four services.

use automl_common::config::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};

/// The console's default port.
pub const DEFAULT_PORT: u16 = 8080;

/// `[web]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Interface to bind.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// data-management (`http://host:port`).
    pub data_management: String,
    /// metadata-store (`http://host:port`).
    pub metadata_store: String,
    /// prediction-service (`http://host:port`).
    pub prediction_service: String,
    /// training-service (`http://host:port`).
    pub training_service: String,
    /// Rows per page of the runs and jobs tables.
    pub page_size: u32,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            data_management: "http://127.0.0.1:6000".into(),
            metadata_store: "http://127.0.0.1:6002".into(),
            prediction_service: "http://127.0.0.1:6001".into(),
            training_service: "http://127.0.0.1:6003".into(),
            page_size: 50,
        }
    }
}

impl WebConfig {
    /// Host and port as a [`ServerConfig`].
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("data_management", &self.data_management),
            ("metadata_store", &self.metadata_store),
            ("prediction_service", &self.prediction_service),
            ("training_service", &self.training_service),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Validation(format!(
                    "web.{key} must be an http:// or https:// URL, not {url:?}"
                )));
            }
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(ConfigError::Validation(
                "web.page_size must be in 1..=1000".into(),
            ));
        }
        Ok(())
    }
}
