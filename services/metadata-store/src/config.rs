//! metadata-store's configuration section (`[metadata_store]`).

use std::time::Duration;

use automl_common::config::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};

/// Default port, as in the MiniAutoML lab scripts.
pub const DEFAULT_PORT: u16 = 6002;

/// `[metadata_store]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataStoreConfig {
    /// Interface to bind.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// How often a `WatchRun` stream re-reads the run even without a local notification, so
    /// watchers also see writes made through another replica (milliseconds).
    pub watch_poll_interval_ms: u64,
}

impl Default for MetadataStoreConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            watch_poll_interval_ms: 1000,
        }
    }
}

impl MetadataStoreConfig {
    /// Where to listen.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The re-read interval of watch streams.
    pub fn watch_poll_interval(&self) -> Duration {
        Duration::from_millis(self.watch_poll_interval_ms)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.watch_poll_interval_ms == 0 {
            return Err(ConfigError::Validation(
                "metadata_store.watch_poll_interval_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
