//! Which objects a trainer may read and write, presigned for the job's lifetime: its snapshot,
//! the pretrained model its algorithm builds on, the base run's artifact (fine-tuning), the
//! embeddings cache of its snapshot, and its own run's artifact files. Only algorithms marked
//! `raw_s3_access` (images that talk S3 themselves) get the object store's keys instead.

use std::time::Duration;

use automl_common::auth::tenant_prefix;
use automl_common::config::S3Config;
use automl_common::s3::ObjectStore;
use automl_common::s3::grants::{self, Method, ObjectGrants};
use automl_text_classification::artifact::{MANIFEST_FILE, MODEL_FILE, VOCAB_FILE};
use automl_text_classification::encoder::artifact::{ENCODER_FILE, HEAD_FILE};
use automl_text_classification::pretrained;

use crate::config::AlgorithmConfig;
use crate::error::TrainingError;
use crate::kubernetes::{ACCESS_KEY_VAR, SECRET_KEY_VAR};
use crate::model::Job;

/// Files of the classic classifier's artifact.
const BAG_FILES: [&str; 3] = [MODEL_FILE, VOCAB_FILE, MANIFEST_FILE];
/// Files of the encoder algorithm's artifact (the encoder's own weights only after full
/// fine-tuning).
const ENCODER_FILES: [&str; 3] = [HEAD_FILE, ENCODER_FILE, MANIFEST_FILE];

/// What a job's grants are made from.
#[derive(Debug, Clone)]
pub struct JobObjects<'a> {
    /// The job.
    pub job: &'a Job,
    /// Its algorithm's registry entry.
    pub algorithm: &'a AlgorithmConfig,
    /// The snapshot's folder in the datasets bucket.
    pub data_path: &'a str,
    /// Bucket of snapshots.
    pub datasets_bucket: &'a str,
    /// Bucket of models and pretrained models.
    pub models_bucket: &'a str,
    /// `<name>@<digest>` of the pretrained model the job builds on.
    pub pretrained: Option<&'a str>,
    /// (bucket, path) of the base run's artifact, for fine-tuning.
    pub base: Option<(&'a str, &'a str)>,
}

/// The object store's keys as trainer variables, for algorithms with raw access; none else.
pub fn s3_key_env(algorithm: &AlgorithmConfig, s3: &S3Config) -> Vec<(String, String)> {
    if !algorithm.raw_s3_access {
        return Vec::new();
    }
    vec![
        (ACCESS_KEY_VAR.into(), s3.access_key.clone()),
        (SECRET_KEY_VAR.into(), s3.secret_key.clone()),
    ]
}

/// The run's folder in the models bucket, as metadata-store answers LogRunStart.
pub fn run_prefix(tenant: &str, run_id: i64) -> String {
    format!("{}run_{run_id}", tenant_prefix(tenant))
}

/// Every (method, bucket, key) the job's trainer needs.
pub fn needed(objects: &JobObjects<'_>) -> Vec<(Method, String, String)> {
    let JobObjects {
        job,
        algorithm,
        data_path,
        datasets_bucket,
        models_bucket,
        pretrained,
        base,
    } = objects;
    let spec = &job.spec;
    let mut needed = Vec::new();
    let mut add = |method, bucket: &str, key: String| {
        let item = (method, bucket.to_string(), key);
        if !needed.contains(&item) {
            needed.push(item);
        }
    };
    let snapshot = data_path.trim_end_matches('/');
    for file in ["examples.csv", "labels.csv"] {
        add(Method::Get, datasets_bucket, format!("{snapshot}/{file}"));
    }
    let encoder = !algorithm.pretrained.is_empty();
    if let Some((name, digest)) = pretrained.and_then(|named| named.split_once('@')) {
        add(
            Method::Get,
            models_bucket,
            format!("pretrained/{name}/{}", pretrained::POINTER),
        );
        for file in pretrained::FILES {
            add(
                Method::Get,
                models_bucket,
                format!("pretrained/{name}/{digest}/{file}"),
            );
        }
        let cache = pretrained::embeddings_key(
            &tenant_prefix(&job.tenant),
            name,
            digest,
            &spec.dataset_id,
            &spec.train_data_version_hash,
        );
        add(Method::Get, models_bucket, cache.clone());
        add(Method::Put, models_bucket, cache);
    }
    if let Some((bucket, path)) = base {
        let path = path.trim_end_matches('/');
        for file in BAG_FILES.iter().chain(&ENCODER_FILES) {
            add(Method::Get, bucket, format!("{path}/{file}"));
        }
    }
    let own = run_prefix(&job.tenant, job.job_id);
    for file in if encoder { ENCODER_FILES } else { BAG_FILES } {
        add(Method::Put, models_bucket, format!("{own}/{file}"));
    }
    needed
}

/// A client that signs for the endpoint trainers reach (`MINIO_SERVER`); it sends nothing.
pub fn signer(s3: &S3Config, trainer_endpoint: &str) -> ObjectStore {
    let endpoint = if trainer_endpoint.contains("://") {
        trainer_endpoint.trim_end_matches('/').to_string()
    } else {
        format!("http://{trainer_endpoint}")
    };
    ObjectStore::new(s3, &endpoint)
}

/// The presigned grants of everything the job needs, valid for `lifetime`.
pub async fn for_job(
    signer: &ObjectStore,
    objects: &JobObjects<'_>,
    lifetime: Duration,
) -> Result<ObjectGrants, TrainingError> {
    let mut granted = ObjectGrants {
        expires_at: grants::expires_at(lifetime),
        grants: Vec::new(),
    };
    for (method, bucket, key) in needed(objects) {
        let grant = signer
            .presign(method, &bucket, &key, lifetime)
            .await
            .map_err(|err| {
                TrainingError::FailedPrecondition(format!(
                    "cannot grant {method} {bucket}/{key}: {err}"
                ))
            })?;
        granted.grants.push(grant);
    }
    Ok(granted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobSpec, JobStatus};

    fn job(tenant: &str) -> Job {
        Job {
            job_id: 12,
            tenant: tenant.into(),
            status: JobStatus::Launch,
            spec: JobSpec {
                algorithm: "intent-classification-encoder".into(),
                dataset_id: "3".into(),
                train_data_version_hash: "hashAg==".into(),
                output_model_name: "m".into(),
                base_run_id: "7".into(),
                ..JobSpec::default()
            },
            backend: "local".into(),
            ..Job::default()
        }
    }

    #[test]
    fn a_job_needs_its_snapshot_pretrained_model_cache_base_and_own_run() {
        let job = job("team-a");
        let algorithm = AlgorithmConfig {
            pretrained: "all-minilm-l6-v2".into(),
            ..AlgorithmConfig::default()
        };
        let digest = "ab".repeat(32);
        let named = format!("all-minilm-l6-v2@{digest}");
        let objects = JobObjects {
            job: &job,
            algorithm: &algorithm,
            data_path: "team-a/versionedDatasets/3/hashAg==/",
            datasets_bucket: "dm",
            models_bucket: "models",
            pretrained: Some(&named),
            base: Some(("models", "team-a/run_7")),
        };
        let needed = needed(&objects);
        let has = |method: Method, bucket: &str, key: &str| {
            needed
                .iter()
                .any(|(m, b, k)| *m == method && b == bucket && k == key)
        };
        assert!(has(
            Method::Get,
            "dm",
            "team-a/versionedDatasets/3/hashAg==/examples.csv"
        ));
        assert!(has(
            Method::Get,
            "models",
            "pretrained/all-minilm-l6-v2/current.json"
        ));
        assert!(has(
            Method::Get,
            "models",
            &format!("pretrained/all-minilm-l6-v2/{digest}/model.safetensors")
        ));
        assert!(has(Method::Get, "models", "team-a/run_7/vocab.json"));
        assert!(has(Method::Get, "models", "team-a/run_7/head.safetensors"));
        assert!(has(Method::Put, "models", "team-a/run_12/head.safetensors"));
        assert!(has(Method::Put, "models", "team-a/run_12/manifest.json"));
        assert!(!has(Method::Put, "models", "team-a/run_12/vocab.json"));
        let cache: Vec<_> = needed
            .iter()
            .filter(|(_, _, key)| key.contains("embeddings/"))
            .collect();
        assert_eq!(cache.len(), 2, "{cache:?}");
        assert!(
            cache[0]
                .2
                .starts_with("team-a/embeddings/all-minilm-l6-v2-abababab")
        );
        assert!(cache[0].2.len() < 120, "{}", cache[0].2);
        // Nothing outside the job's own objects is writable.
        for (method, _, key) in &needed {
            if *method == Method::Put {
                assert!(key.starts_with("team-a/"), "{key}");
            }
        }
    }

    #[test]
    fn only_raw_access_gets_the_keys() {
        let s3 = S3Config {
            access_key: "root".into(),
            secret_key: "root-secret".into(),
            ..S3Config::default()
        };
        assert!(s3_key_env(&AlgorithmConfig::default(), &s3).is_empty());
        let raw = AlgorithmConfig {
            raw_s3_access: true,
            ..AlgorithmConfig::default()
        };
        let env = s3_key_env(&raw, &s3);
        assert_eq!(env.len(), 2);
        assert_eq!(run_prefix("default", 4), "run_4");
        assert_eq!(run_prefix("team-a", 4), "team-a/run_4");
    }

    #[test]
    fn the_s3_secret_is_required_only_for_raw_access_on_kubernetes() {
        use crate::config::{BackendKind, TrainingConfig};
        let mut config = TrainingConfig {
            backend: BackendKind::Kubernetes,
            ..TrainingConfig::default()
        };
        for algorithm in config.algorithms.values_mut() {
            algorithm.image = "automl:cpu".into();
        }
        config.kubernetes.s3_secret_name.clear();
        config.validate().expect("no algorithm needs the S3 Secret");
        config.algorithms.insert(
            "miniautoml".into(),
            AlgorithmConfig {
                image: "miniautoml:1".into(),
                raw_s3_access: true,
                ..AlgorithmConfig::default()
            },
        );
        let err = config.validate().expect_err("raw access needs the Secret");
        assert!(err.to_string().contains("s3_secret_name"), "{err}");
    }
}
