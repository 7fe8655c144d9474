//! The trainer environment of the contract: what every training-service backend (and
//! MiniAutoML) passes to the training process.

use std::collections::HashMap;

use anyhow::{Context, bail};
use automl_common::s3::grants::{GRANTS_ENV, ObjectGrants};

/// The environment of one training job.
#[derive(Clone)]
pub struct TrainerEnv {
    /// `JOB_ID`: the job id, which is also the run id.
    pub job_id: String,
    /// `ALGORITHM_NAME`: recorded with the artifact (default `intent-classification`).
    pub algorithm: String,
    /// `METADATA_STORE_SERVER`: `host:port` (or a URL) of metadata-store.
    pub metadata_store: String,
    /// `TRAINING_DATASET_ID`: lineage.
    pub dataset_id: String,
    /// `TRAINING_DATASET_VERSION_HASH`: lineage.
    pub version_hash: String,
    /// `MODEL_BUCKET`: where models go when metadata-store does not say.
    pub model_bucket: String,
    /// `MODEL_NAME`: the artifact's name.
    pub model_name: String,
    /// `MINIO_SERVER`: `host:port` (or a URL) of the object store.
    pub minio_server: String,
    /// `MINIO_SERVER_ACCESS_KEY` (only without grants).
    pub access_key: String,
    /// `MINIO_SERVER_SECRET_KEY` (only without grants; never printed).
    pub secret_key: String,
    /// `AUTOML_OBJECT_GRANTS`: presigned URLs of exactly the objects the job may read and
    /// write; the keys are then not needed (never printed).
    pub object_grants: Option<ObjectGrants>,
    /// `TRAINING_DATA_BUCKET`: the snapshot's bucket.
    pub data_bucket: String,
    /// `TRAINING_DATA_PATH`: the snapshot's folder (`examples.csv`, `labels.csv`).
    pub data_path: String,
    /// `BASE_RUN_ID`: fine-tune from this run's model.
    pub base_run_id: Option<String>,
    /// `CODE_VERSION`: recorded as lineage (default: this program's version).
    pub code_version: String,
    /// `PRETRAINED_MODEL`: `<name>@<digest>` of the pretrained model the algorithm builds on.
    pub pretrained_model: Option<String>,
}

impl std::fmt::Debug for TrainerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainerEnv")
            .field("job_id", &self.job_id)
            .field("metadata_store", &self.metadata_store)
            .field("minio_server", &self.minio_server)
            .field(
                "data",
                &format_args!("{}/{}", self.data_bucket, self.data_path),
            )
            .field("secret_key", &"<redacted>")
            .field(
                "object_grants",
                &self.object_grants.as_ref().map(|g| g.grants.len()),
            )
            .finish_non_exhaustive()
    }
}

impl TrainerEnv {
    /// Reads the trainer environment from `env`; a missing required variable is named in the
    /// error.
    /// The run's lineage as its artifact's manifest records it.
    pub fn lineage(&self) -> crate::artifact::Lineage {
        crate::artifact::Lineage {
            run_id: self.job_id.clone(),
            dataset_id: self.dataset_id.clone(),
            version_hash: self.version_hash.clone(),
            base_run_id: self.base_run_id.clone(),
        }
    }

    pub fn from_map(env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let optional = |name: &str| {
            env.get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &str| optional(name).with_context(|| format!("{name} is not set"));
        let job_id = required("JOB_ID")?;
        if !job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("JOB_ID {job_id:?} may hold only letters, digits, '-', '_' and '.'");
        }
        // With grants the object store's keys are neither needed nor expected.
        let object_grants = optional(GRANTS_ENV)
            .map(|text| ObjectGrants::from_json(&text))
            .transpose()
            .with_context(|| format!("{GRANTS_ENV} is not a grants document"))?;
        let keys = |name: &str| match object_grants {
            Some(_) => Ok(optional(name).unwrap_or_default()),
            None => required(name),
        };
        Ok(Self {
            algorithm: optional("ALGORITHM_NAME").unwrap_or_else(|| "intent-classification".into()),
            metadata_store: required("METADATA_STORE_SERVER")?,
            dataset_id: optional("TRAINING_DATASET_ID").unwrap_or_default(),
            version_hash: optional("TRAINING_DATASET_VERSION_HASH").unwrap_or_default(),
            model_bucket: optional("MODEL_BUCKET").unwrap_or_default(),
            model_name: required("MODEL_NAME")?,
            minio_server: required("MINIO_SERVER")?,
            access_key: keys("MINIO_SERVER_ACCESS_KEY")?,
            secret_key: keys("MINIO_SERVER_SECRET_KEY")?,
            object_grants,
            data_bucket: required("TRAINING_DATA_BUCKET")?,
            data_path: required("TRAINING_DATA_PATH")?,
            base_run_id: optional("BASE_RUN_ID"),
            pretrained_model: optional("PRETRAINED_MODEL"),
            code_version: optional("CODE_VERSION")
                .unwrap_or_else(|| format!("automl-train {}", env!("CARGO_PKG_VERSION"))),
            job_id,
        })
    }
}

/// `http://host:port` for a `host:port`, a URL unchanged.
pub fn url(address: &str) -> String {
    if address.starts_with("http://") || address.starts_with("https://") {
        address.trim_end_matches('/').to_string()
    } else {
        format!("http://{address}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miniautoml_env() -> HashMap<String, String> {
        [
            ("JOB_ID", "12"),
            ("ALGORITHM_NAME", "intent-classification"),
            ("METADATA_STORE_SERVER", "127.0.0.1:6002"),
            ("TRAINING_DATASET_ID", "1"),
            ("TRAINING_DATASET_VERSION_HASH", "hashAg=="),
            ("MODEL_BUCKET", "mini-automl-serving"),
            ("MODEL_NAME", "intent"),
            ("MINIO_SERVER", "127.0.0.1:9000"),
            ("MINIO_SERVER_ACCESS_KEY", "key"),
            ("MINIO_SERVER_SECRET_KEY", "s3cr3t-value"),
            ("TRAINING_DATA_BUCKET", "mini-automl-dm"),
            ("TRAINING_DATA_PATH", "versionedDatasets/1/hashAg=="),
            ("EPOCHS", "15"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn reads_the_miniautoml_environment() {
        let env = TrainerEnv::from_map(&miniautoml_env()).expect("parses");
        assert_eq!(env.job_id, "12");
        assert_eq!(env.data_path, "versionedDatasets/1/hashAg==");
        assert_eq!(env.base_run_id, None);
        assert!(!format!("{env:?}").contains("s3cr3t-value"));
        assert_eq!(url(&env.metadata_store), "http://127.0.0.1:6002");
        assert_eq!(url("https://s3.example.com/"), "https://s3.example.com");
    }

    #[test]
    fn names_what_is_missing_or_bad() {
        let mut env = miniautoml_env();
        env.remove("TRAINING_DATA_PATH");
        let err = TrainerEnv::from_map(&env).expect_err("missing");
        assert!(err.to_string().contains("TRAINING_DATA_PATH"), "{err}");
        let mut env = miniautoml_env();
        env.insert("JOB_ID".into(), "../x".into());
        assert!(TrainerEnv::from_map(&env).is_err());
        let mut env = miniautoml_env();
        env.remove("MINIO_SERVER_SECRET_KEY");
        let err = TrainerEnv::from_map(&env).expect_err("no keys, no grants");
        assert!(err.to_string().contains("MINIO_SERVER_SECRET_KEY"), "{err}");
        env.insert(GRANTS_ENV.into(), "not json".into());
        let err = TrainerEnv::from_map(&env).expect_err("bad grants");
        assert!(err.to_string().contains(GRANTS_ENV), "{err}");
    }

    #[test]
    fn grants_replace_the_keys() {
        let mut env = miniautoml_env();
        env.remove("MINIO_SERVER_ACCESS_KEY");
        env.remove("MINIO_SERVER_SECRET_KEY");
        env.insert(
            GRANTS_ENV.into(),
            r#"{"expires_at":"2030-01-01T00:00:00Z","grants":[{"method":"GET","bucket":"b","key":"k","url":"http://s3/b/k?X-Amz-Signature=s3cr3t-sig"}]}"#.into(),
        );
        let parsed = TrainerEnv::from_map(&env).expect("parses");
        assert_eq!(
            parsed.object_grants.as_ref().map(|g| g.grants.len()),
            Some(1)
        );
        assert!(parsed.secret_key.is_empty());
        assert!(!format!("{parsed:?}").contains("s3cr3t-sig"));
    }
}
