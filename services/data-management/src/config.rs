//! data-management's configuration section (`[data_management]`).

use std::time::Duration;

use automl_common::config::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};

/// Default port, as in the MiniAutoML lab scripts.
pub const DEFAULT_PORT: u16 = 6000;

/// `[data_management]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataManagementConfig {
    /// Interface to bind.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Snapshot builds that run at once; further builds wait their turn.
    pub snapshot_workers: usize,
    /// How long a commit reservation outlives its ingest's last sign of life (seconds); a
    /// reservation of a process that died is removed after this.
    pub ingest_lease_secs: u64,
    /// Largest object UploadData accepts (bytes).
    pub max_upload_bytes: u64,
    /// Most distinct labels one TEXT_INTENT commit may hold; an ingest that meets one more is
    /// refused at that row, so its label table never grows past this.
    pub max_labels: usize,
}

impl Default for DataManagementConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            snapshot_workers: 2,
            ingest_lease_secs: 60,
            max_upload_bytes: 10 * 1024 * 1024 * 1024,
            max_labels: 10_000,
        }
    }
}

impl DataManagementConfig {
    /// Where to listen.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The lease of a commit reservation.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.ingest_lease_secs)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.snapshot_workers == 0 {
            return Err(ConfigError::Validation(
                "data_management.snapshot_workers must be at least 1".into(),
            ));
        }
        if self.ingest_lease_secs < 3 {
            return Err(ConfigError::Validation(
                "data_management.ingest_lease_secs must be at least 3".into(),
            ));
        }
        if self.max_labels == 0 {
            return Err(ConfigError::Validation(
                "data_management.max_labels must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_labels_must_be_positive() {
        assert!(DataManagementConfig::default().validate().is_ok());
        let zero = DataManagementConfig {
            max_labels: 0,
            ..DataManagementConfig::default()
        };
        let err = zero.validate().expect_err("0 is refused");
        assert!(err.to_string().contains("max_labels"), "{err}");
    }
}
