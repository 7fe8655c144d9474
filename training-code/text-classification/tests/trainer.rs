//! `automl-train` as a training backend runs it: a separate process with only the trainer
//! environment of the contract, against a metadata-store served in-process on 127.0.0.1:0 and
//! the embedded S3 endpoint.

use std::collections::HashMap;

use anyhow::Context;
use automl_common::db::Backend;
use automl_common::testing::{METADATA_STORE, TestCluster};
use automl_metadata_store::MetadataStoreConfig;
use automl_proto::metadata_store as pb;
use automl_text_classification::{Classifier, demo};

const SNAPSHOT: &str = "versionedDatasets/1/hashAg==";

/// metadata-store on SQLite with a demo snapshot at [`SNAPSHOT`].
async fn start() -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(Backend::Sqlite).await;
    cluster
        .start(METADATA_STORE, |ctx| async move {
            let config = MetadataStoreConfig::default();
            automl_metadata_store::start(&ctx.common, &config, ctx.objects, ctx.shutdown).await
        })
        .await;
    let demo = demo::snapshot(30, 5);
    let objects = &cluster.env.objects;
    for (name, body) in [
        ("examples.csv", demo.examples_csv),
        ("labels.csv", demo.labels_csv),
    ] {
        let key = format!("{SNAPSHOT}/{name}");
        objects
            .put_bytes(&objects.datasets_bucket, &key, body.into_bytes())
            .await?;
    }
    Ok(cluster)
}

/// The variables a training-service backend (or MiniAutoML) sets, and nothing else.
fn trainer_env(cluster: &TestCluster, job_id: &str, data_path: &str) -> HashMap<String, String> {
    let s3 = &cluster.env.common.s3;
    [
        ("JOB_ID", job_id),
        ("ALGORITHM_NAME", "intent-classification"),
        (
            "METADATA_STORE_SERVER",
            &cluster.addr(METADATA_STORE).to_string(),
        ),
        ("TRAINING_DATASET_ID", "1"),
        ("TRAINING_DATASET_VERSION_HASH", "hashAg=="),
        ("MODEL_BUCKET", &cluster.env.objects.models_bucket),
        ("MODEL_NAME", "intent"),
        ("MINIO_SERVER", &cluster.env.s3_host_port()),
        ("MINIO_SERVER_ACCESS_KEY", &s3.access_key),
        ("MINIO_SERVER_SECRET_KEY", &s3.secret_key),
        ("TRAINING_DATA_BUCKET", &cluster.env.objects.datasets_bucket),
        ("TRAINING_DATA_PATH", data_path),
        ("EPOCHS", "4"),
        ("LR", "4"),
        ("BATCH_SIZE", "16"),
        ("FC_SIZE", "32"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn run_trainer(vars: HashMap<String, String>) -> anyhow::Result<(bool, String)> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_automl-train"))
        .env_clear()
        .envs(vars)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), stdout))
}

async fn run_info(cluster: &TestCluster, run_id: &str) -> anyhow::Result<pb::RunInfo> {
    cluster
        .metadata_client()
        .await
        .get_run_status(pb::GetRunStatusRequest {
            run_id: run_id.into(),
        })
        .await?
        .into_inner()
        .run_info
        .context("run info")
}

#[tokio::test]
async fn trains_records_the_run_and_publishes_a_loadable_model() -> anyhow::Result<()> {
    let cluster = start().await?;
    let (ok, stdout) = run_trainer(trainer_env(&cluster, "1", SNAPSHOT)).await?;
    assert!(ok, "automl-train failed");
    assert!(stdout.contains("epoch 4/4: loss"), "{stdout}");

    let run = run_info(&cluster, "1").await?;
    assert!(run.success, "{run:?}");
    assert!(run.message.starts_with("test accuracy 0.") || run.message == "test accuracy 1.000");
    assert_eq!(run.run_name, "intent");
    let tracing = run.tracing.clone().context("tracing")?;
    assert_eq!(
        (tracing.dataset_id.as_str(), tracing.version_hash.as_str()),
        ("1", "hashAg==")
    );
    assert_eq!(run.epochs.len(), 4);
    for epoch in run.epochs.values() {
        for key in ["loss", "accuracy", "val_accuracy", "examples_per_sec"] {
            let value: f64 = epoch.metrics.get(key).context("metric")?.parse()?;
            assert!(value.is_finite(), "{key}");
        }
    }
    let last = &run.epochs["4"].metrics;
    assert!(last["loss"].parse::<f64>()? < run.epochs["1"].metrics["loss"].parse::<f64>()?);

    let artifact = cluster
        .metadata_client()
        .await
        .get_artifact(pb::GetArtifactRequest { run_id: "1".into() })
        .await?
        .into_inner();
    let location = artifact.artifact.context("artifact location")?;
    assert_eq!(
        (artifact.name.as_str(), artifact.version.as_str()),
        ("intent", "1")
    );
    assert_eq!(artifact.algorithm, "intent-classification");
    assert_eq!(location.bucket, cluster.env.objects.models_bucket);
    assert_eq!(location.path, "run_1");

    let objects = cluster.env.objects.list(&location.bucket, "run_1/").await?;
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "run_1/manifest.json",
            "run_1/model.safetensors",
            "run_1/vocab.json"
        ]
    );
    let dir = tempfile::tempdir()?;
    for key in keys {
        let object = cluster
            .env
            .objects
            .client()
            .get_object()
            .bucket(&location.bucket)
            .key(key)
            .send()
            .await?;
        let bytes = object.body.collect().await?.into_bytes();
        std::fs::write(dir.path().join(key.trim_start_matches("run_1/")), bytes)?;
    }
    let classifier = Classifier::load(dir.path())?;
    assert_eq!(classifier.manifest().lineage.run_id, "1");
    assert_eq!(classifier.manifest().lineage.version_hash, "hashAg==");
    assert_eq!(classifier.classes().len(), 5);
    let prediction = classifier.predict("will it rain today, is there a forecast", 3)?;
    assert!(classifier.classes().contains(&prediction.label));
    assert_eq!(prediction.top.len(), 3);
    assert!(prediction.top.windows(2).all(|w| w[0].score >= w[1].score));

    // Fine-tuning: run 4 starts from run 1's model.
    let mut vars = trainer_env(&cluster, "4", SNAPSHOT);
    vars.insert("BASE_RUN_ID".into(), "1".into());
    let (ok, stdout) = run_trainer(vars).await?;
    assert!(ok, "fine-tuning failed");
    assert!(stdout.contains("fine-tuning from run 1"), "{stdout}");
    let run = run_info(&cluster, "4").await?;
    assert!(run.success, "{run:?}");
    assert_eq!(run.tracing.context("tracing")?.base_run_id, "1");

    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_run_is_ended_with_the_reason_and_a_non_zero_exit() -> anyhow::Result<()> {
    let cluster = start().await?;
    let (ok, stdout) = run_trainer(trainer_env(&cluster, "2", "versionedDatasets/9/none")).await?;
    assert!(!ok, "{stdout}");
    let run = run_info(&cluster, "2").await?;
    assert!(!run.success);
    assert!(
        run.message
            .contains("versionedDatasets/9/none/examples.csv"),
        "{}",
        run.message
    );
    assert!(!run.end_time.is_empty());

    let mut vars = trainer_env(&cluster, "3", SNAPSHOT);
    vars.remove("MINIO_SERVER");
    let (ok, stdout) = run_trainer(vars).await?;
    assert!(!ok);
    assert!(stdout.contains("MINIO_SERVER is not set"), "{stdout}");

    cluster.stop().await;
    Ok(())
}

/// The environment training-service gives the built-in algorithm: no S3 keys, presigned URLs of
/// the snapshot's files (`GET`) and of the run's artifact files (`PUT`) only.
async fn granted_env(
    cluster: &TestCluster,
    job_id: &str,
    snapshot_files: &[&str],
) -> anyhow::Result<HashMap<String, String>> {
    use automl_common::s3::grants::{self, GRANTS_ENV, Method, ObjectGrants};
    use std::time::Duration;
    let objects = &cluster.env.objects;
    let hour = Duration::from_secs(3600);
    let mut granted = ObjectGrants {
        expires_at: grants::expires_at(hour),
        grants: Vec::new(),
    };
    for name in snapshot_files {
        let key = format!("{SNAPSHOT}/{name}");
        granted.grants.push(
            objects
                .presign(Method::Get, &objects.datasets_bucket, &key, hour)
                .await?,
        );
    }
    for name in ["model.safetensors", "vocab.json", "manifest.json"] {
        let key = format!("run_{job_id}/{name}");
        granted.grants.push(
            objects
                .presign(Method::Put, &objects.models_bucket, &key, hour)
                .await?,
        );
    }
    let mut vars = trainer_env(cluster, job_id, SNAPSHOT);
    vars.remove("MINIO_SERVER_ACCESS_KEY");
    vars.remove("MINIO_SERVER_SECRET_KEY");
    vars.insert(GRANTS_ENV.into(), granted.to_json());
    Ok(vars)
}

#[tokio::test]
async fn trains_through_presigned_urls_alone_and_names_an_object_without_a_grant()
-> anyhow::Result<()> {
    let cluster = start().await?;
    let vars = granted_env(&cluster, "2", &["examples.csv", "labels.csv"]).await?;
    let (ok, stdout) = run_trainer(vars).await?;
    assert!(ok, "automl-train failed: {stdout}");
    assert!(stdout.contains("uploaded"), "{stdout}");
    let run = run_info(&cluster, "2").await?;
    assert!(run.success, "{run:?}");
    let models = &cluster.env.objects.models_bucket;
    for name in ["model.safetensors", "vocab.json", "manifest.json"] {
        let bytes = cluster
            .env
            .objects
            .get_bytes(models, &format!("run_2/{name}"))
            .await?;
        assert!(!bytes.is_empty(), "{name}");
    }

    let vars = granted_env(&cluster, "3", &["examples.csv"]).await?;
    let (ok, stdout) = run_trainer(vars).await?;
    assert!(!ok, "trained without a grant for labels.csv");
    let run = run_info(&cluster, "3").await?;
    assert!(!run.success);
    assert!(
        run.message.contains("no grant to GET") && run.message.contains("labels.csv"),
        "{} / {stdout}",
        run.message
    );
    cluster.stop().await;
    Ok(())
}
