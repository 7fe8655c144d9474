//! The whole configuration of the `automl` binary: the shared sections plus one section per
//! service, loaded with [`automl_common::config::load`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use automl_common::config::{
    AuthConfig, CommonConfig, ConfigError, DatabaseConfig, S3Config, TelemetryConfig, TlsConfig,
    load_files,
};
use automl_data_management::DataManagementConfig;
use automl_metadata_store::MetadataStoreConfig;
use automl_prediction_service::PredictionConfig;
use automl_training_service::TrainingConfig;
use automl_web::WebConfig;
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
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[tls]`
    pub tls: TlsConfig,
    /// `[data_management]`
    pub data_management: DataManagementConfig,
    /// `[metadata_store]`
    pub metadata_store: MetadataStoreConfig,
    /// `[prediction_service]`
    pub prediction_service: PredictionConfig,
    /// `[training_service]`
    pub training_service: TrainingConfig,
    /// `[web]`
    pub web: WebConfig,
}

impl Default for AutomlConfig {
    fn default() -> Self {
        let common = CommonConfig::default();
        Self {
            data_dir: common.data_dir,
            database: common.database,
            s3: common.s3,
            telemetry: common.telemetry,
            auth: common.auth,
            tls: common.tls,
            data_management: DataManagementConfig::default(),
            metadata_store: MetadataStoreConfig::default(),
            prediction_service: PredictionConfig::default(),
            training_service: TrainingConfig::default(),
            web: WebConfig::default(),
        }
    }
}

impl AutomlConfig {
    /// Loads defaults < `files` (later files override earlier ones key by key; `--config`
    /// given more than once) < `AUTOML__…` entries of `env` < `overrides`, then validates.
    pub fn load<P: AsRef<Path>>(
        files: &[P],
        env: &HashMap<String, String>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let config: Self = load_files(files, env, overrides)?;
        config.common().validate()?;
        config.data_management.validate()?;
        config.metadata_store.validate()?;
        config.prediction_service.validate()?;
        config.training_service.validate()?;
        config.web.validate()?;
        Ok(config)
    }

    /// The shared sections.
    pub fn common(&self) -> CommonConfig {
        CommonConfig {
            data_dir: self.data_dir.clone(),
            database: self.database.clone(),
            auth: self.auth.clone(),
            tls: self.tls.clone(),
            s3: self.s3.clone(),
            telemetry: self.telemetry.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_FILES: &[&Path] = &[];

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
        let loaded = AutomlConfig::load(&[&example], &HashMap::new(), &[]).expect("example parses");
        assert_eq!(loaded, AutomlConfig::default());
    }

    /// The commented registry entry of automl.example.toml, uncommented, loads.
    #[test]
    fn a_trainer_of_its_own_declares_its_parameters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "[training_service.algorithms.my-trainer]\ncommand = \"/opt/my-trainer/train.sh\"\n\
             [[training_service.algorithms.my-trainer.parameters]]\nname = \"LR\"\n\
             type = \"double\"\nmin = 0.0\nmin_exclusive = true\ndefault = \"0.01\"\n\
             help = \"learning rate\"\n\
             [[training_service.algorithms.my-trainer.parameters]]\nname = \"MODE\"\n\
             type = \"categorical\"\nvalues = [\"a\", \"b\"]\n",
        );
        let loaded = AutomlConfig::load(&[&file], &HashMap::new(), &[]).expect("loads");
        let parameters = &loaded.training_service.algorithms["my-trainer"].parameters;
        assert_eq!(parameters.len(), 2);
        assert_eq!(parameters[0].min, Some(0.0));
        assert_eq!(parameters[0].max, None);
        assert!(parameters[0].check("0").is_err() && parameters[0].check("0.5").is_ok());
        assert!(parameters[1].check("b").is_ok() && parameters[1].check("c").is_err());
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

        let defaults = AutomlConfig::load(NO_FILES, &HashMap::new(), &[]).expect("defaults");
        assert_eq!(defaults.metadata_store.port, 6002);

        let from_file = AutomlConfig::load(&[&file], &HashMap::new(), &[]).expect("file");
        assert_eq!(from_file.data_dir, PathBuf::from("from-file"));
        assert_eq!(from_file.metadata_store.port, 7001);
        assert_eq!(from_file.database.max_connections, 3);

        let from_env = AutomlConfig::load(&[&file], &environment, &[]).expect("env");
        assert_eq!(from_env.data_dir, PathBuf::from("from-env"));
        assert_eq!(from_env.metadata_store.port, 7002);
        // A key only the file sets survives the env layer.
        assert_eq!(from_env.metadata_store.watch_poll_interval_ms, 5);

        let from_flags = AutomlConfig::load(&[&file], &environment, &flags).expect("flags");
        assert_eq!(from_flags.data_dir, PathBuf::from("from-flag"));
        assert_eq!(from_flags.metadata_store.port, 7002);
    }

    #[test]
    fn later_files_override_earlier_ones_key_by_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.toml");
        std::fs::write(
            &base,
            "data_dir = \"base\"\n[metadata_store]\nport = 7001\nwatch_poll_interval_ms = 5\n\
             [training_service.algorithms.intent-classification]\nimage = \"trainer:cpu\"\n",
        )
        .expect("write base");
        let overlay = dir.path().join("overlay.toml");
        std::fs::write(
            &overlay,
            "[metadata_store]\nport = 7002\n\
             [training_service.algorithms.intent-classification]\ngpu_image = \"trainer:cuda\"\n",
        )
        .expect("write overlay");
        let loaded =
            AutomlConfig::load(&[&base, &overlay], &HashMap::new(), &[]).expect("both files load");
        assert_eq!(loaded.data_dir, PathBuf::from("base"));
        assert_eq!(loaded.metadata_store.port, 7002);
        assert_eq!(loaded.metadata_store.watch_poll_interval_ms, 5);
        let algorithm = &loaded.training_service.algorithms["intent-classification"];
        assert_eq!(algorithm.image, "trainer:cpu");
        assert_eq!(algorithm.gpu_image, "trainer:cuda");
    }

    #[test]
    fn unknown_keys_are_rejected_in_every_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[metadata_store]\nprot = 1\n");
        let err = AutomlConfig::load(&[&file], &HashMap::new(), &[]).expect_err("file");
        assert!(err.to_string().contains("prot"), "{err}");

        let file = write(dir.path(), "[nosuchsection]\nx = 1\n");
        assert!(AutomlConfig::load(&[&file], &HashMap::new(), &[]).is_err());

        let environment = env(&[("AUTOML__S3__ENDPIONT", "http://x")]);
        let err = AutomlConfig::load(NO_FILES, &environment, &[]).expect_err("env");
        assert!(err.to_string().contains("endpiont"), "{err}");

        let flags = vec![("database.uri".to_string(), "x".to_string())];
        assert!(AutomlConfig::load(NO_FILES, &HashMap::new(), &flags).is_err());
    }

    #[test]
    fn invalid_values_are_rejected() {
        let environment = env(&[("AUTOML__METADATA_STORE__PORT", "not-a-port")]);
        assert!(AutomlConfig::load(NO_FILES, &environment, &[]).is_err());
        let environment = env(&[("AUTOML__DATABASE__URL", "mysql://db")]);
        assert!(AutomlConfig::load(NO_FILES, &environment, &[]).is_err());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let mut config = AutomlConfig::default();
        config.s3.secret_key = "hunter2-secret".into();
        config.auth.internal_secret = "hunter3-internal-secret".into();
        config.database.url = "postgres://automl:hunter4@db:5432/automl".into();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter"), "{printed}");
        assert!(printed.contains("postgres://automl:<redacted>@db:5432/automl"));
    }
}
