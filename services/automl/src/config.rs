//! The whole configuration of the `automl` binary: the shared sections plus one section per
//! service, loaded with [`automl_common::config::load`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use automl_common::config::{
    CommonConfig, ConfigError, DatabaseConfig, S3Config, TelemetryConfig, load,
};
use automl_data_management::DataManagementConfig;
use automl_metadata_store::MetadataStoreConfig;
use automl_prediction_service::PredictionConfig;
use automl_training_service::TrainingConfig;
use serde::{Deserialize, Serialize};

/// Every key the binary understands; see `automl.example.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AutomlConfig {
    /// Where SQLite files, embedded objects and caches live.
    pub data_dir: PathBuf,
    /// `[database]`
    pub database: DatabaseConfig,
    /// `[s3]`
    pub s3: S3Config,
    /// `[telemetry]`
    pub telemetry: TelemetryConfig,
    /// `[data_management]`
    pub data_management: DataManagementConfig,
    /// `[metadata_store]`
    pub metadata_store: MetadataStoreConfig,
    /// `[prediction_service]`
    pub prediction_service: PredictionConfig,
    /// `[training_service]`
    pub training_service: TrainingConfig,
}

impl Default for AutomlConfig {
    fn default() -> Self {
        let common = CommonConfig::default();
        Self {
            data_dir: common.data_dir,
            database: common.database,
            s3: common.s3,
            telemetry: common.telemetry,
            data_management: DataManagementConfig::default(),
            metadata_store: MetadataStoreConfig::default(),
            prediction_service: PredictionConfig::default(),
            training_service: TrainingConfig::default(),
        }
    }
}

impl AutomlConfig {
    /// Loads defaults < `file` < `AUTOML__…` entries of `env` < `overrides`, then validates.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let config: Self = load(file, env, overrides)?;
        config.common().validate()?;
        config.data_management.validate()?;
        config.metadata_store.validate()?;
        config.prediction_service.validate()?;
        config.training_service.validate()?;
        Ok(config)
    }

    /// The shared sections.
    pub fn common(&self) -> CommonConfig {
        CommonConfig {
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            s3: self.s3.clone(),
            telemetry: self.telemetry.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("automl.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../automl.example.toml");
        let loaded =
            AutomlConfig::load(Some(&example), &HashMap::new(), &[]).expect("example parses");
        assert_eq!(loaded, AutomlConfig::default());
    }

    #[test]
    fn precedence_defaults_file_env_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "data_dir = \"from-file\"\n[metadata_store]\nport = 7001\nwatch_poll_interval_ms = 5\n\
             [database]\nmax_connections = 3\n",
        );
        let environment = env(&[
            ("AUTOML__METADATA_STORE__PORT", "7002"),
            ("AUTOML__DATA_DIR", "from-env"),
        ]);
        let flags = vec![("data_dir".to_string(), "from-flag".to_string())];

        let defaults = AutomlConfig::load(None, &HashMap::new(), &[]).expect("defaults");
        assert_eq!(defaults.metadata_store.port, 6002);

        let from_file = AutomlConfig::load(Some(&file), &HashMap::new(), &[]).expect("file");
        assert_eq!(from_file.data_dir, PathBuf::from("from-file"));
        assert_eq!(from_file.metadata_store.port, 7001);
        assert_eq!(from_file.database.max_connections, 3);

        let from_env = AutomlConfig::load(Some(&file), &environment, &[]).expect("env");
        assert_eq!(from_env.data_dir, PathBuf::from("from-env"));
        assert_eq!(from_env.metadata_store.port, 7002);
        // A key only the file sets survives the env layer.
        assert_eq!(from_env.metadata_store.watch_poll_interval_ms, 5);

        let from_flags = AutomlConfig::load(Some(&file), &environment, &flags).expect("flags");
        assert_eq!(from_flags.data_dir, PathBuf::from("from-flag"));
        assert_eq!(from_flags.metadata_store.port, 7002);
    }

    #[test]
    fn unknown_keys_are_rejected_in_every_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[metadata_store]\nprot = 1\n");
        let err = AutomlConfig::load(Some(&file), &HashMap::new(), &[]).expect_err("file");
        assert!(err.to_string().contains("prot"), "{err}");

        let file = write(dir.path(), "[nosuchsection]\nx = 1\n");
        assert!(AutomlConfig::load(Some(&file), &HashMap::new(), &[]).is_err());

        let environment = env(&[("AUTOML__S3__ENDPIONT", "http://x")]);
        let err = AutomlConfig::load(None, &environment, &[]).expect_err("env");
        assert!(err.to_string().contains("endpiont"), "{err}");

        let flags = vec![("database.uri".to_string(), "x".to_string())];
        assert!(AutomlConfig::load(None, &HashMap::new(), &flags).is_err());
    }

    #[test]
    fn invalid_values_are_rejected() {
        let environment = env(&[("AUTOML__METADATA_STORE__PORT", "not-a-port")]);
        assert!(AutomlConfig::load(None, &environment, &[]).is_err());
        let environment = env(&[("AUTOML__DATABASE__URL", "mysql://db")]);
        assert!(AutomlConfig::load(None, &environment, &[]).is_err());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let mut config = AutomlConfig::default();
        config.s3.secret_key = "hunter2-secret".into();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
