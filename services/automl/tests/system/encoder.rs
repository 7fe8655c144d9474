//! The encoder algorithm through `automl serve all`, cheaply: a tiny random BERT written by the
//! test is imported as the pretrained model, then trained in `head` mode (and again, from the
//! cached embeddings) and in `full` mode, served, served again after a restart, and fine-tuned
//! from a base run. The real all-MiniLM-L6-v2 runs in the trainer crate's tests and the lab.

use std::path::PathBuf;
use std::time::Duration;

use automl_common::testing::TestEnv;
use automl_text_classification::encoder::{self, tiny};
use automl_text_classification::pretrained;

use crate::support::{Automl, grpcurl_json, job_end, process_env, run_grpcurl};

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/demo")
        .join(name)
}

/// Submits a job and waits for its end; returns the final status JSON.
async fn train(training: &str, parameters: &str, base_run_id: &str) -> serde_json::Value {
    let submitted = grpcurl_json(
        training,
        "training.TrainingService/Train",
        &format!(
            r#"{{"metadata":{{"algorithm":"{}","dataset_id":"1","name":"tiny","train_data_version_hash":"hashAg==","output_model_name":"intent","parameters":{parameters},"base_run_id":"{base_run_id}"}}}}"#,
            encoder::ALGORITHM
        ),
    );
    let job_id = submitted["jobId"].as_i64().expect("job id");
    let status = job_end(training, job_id, Duration::from_secs(600)).await;
    let state = status["status"].as_str().unwrap_or("queuing").to_string();
    if state != "succeed" {
        let (_, log, _) = run_grpcurl(&[
            "-plaintext",
            "-d",
            &format!(r#"{{"job_id":{job_id}}}"#),
            training,
            "training.TrainingService/GetTrainingLogs",
        ]);
        panic!("job {job_id} ended {state}: {status}\n{log}");
    }
    status
}

fn job_log(training: &str, job_id: i64) -> String {
    let (ok, log, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"job_id":{job_id}}}"#),
        training,
        "training.TrainingService/GetTrainingLogs",
    ]);
    assert!(ok, "{stderr}");
    log
}

fn predict(prediction: &str, run_id: i64, document: &str) -> serde_json::Value {
    grpcurl_json(
        prediction,
        "prediction.PredictionService/Predict",
        &format!(r#"{{"runId":"{run_id}","document":"{document}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_encoder_trains_both_ways_serves_restarts_and_fine_tunes() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    let raw = std::fs::read_to_string(demo("intents-part1.csv")).expect("demo data");
    let tiny_dir = env.path().join("tiny-encoder");
    let lines: Vec<&str> = raw.lines().collect();
    tiny::write(&tiny_dir, &lines, 32, 11).expect("tiny encoder");
    env.objects
        .put_bytes(
            &env.objects.datasets_bucket,
            "upload/demo.csv",
            raw.clone().into_bytes(),
        )
        .await
        .expect("upload");
    let data_dir = env.path().join("automl");
    let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
    let training = automl.addr("training-service");

    // Not imported yet: refused at submission, and the registry says why.
    let algorithms = grpcurl_json(&training, "training.TrainingService/ListAlgorithms", "{}");
    assert_eq!(
        algorithms["defaultAlgorithm"], "intent-classification",
        "{algorithms}"
    );
    let imported = pretrained::import(
        &env.objects,
        &env.objects.models_bucket,
        pretrained::ENCODER_NAME,
        &tiny_dir,
        &mut |_, _| {},
    )
    .await
    .expect("import");
    let algorithms = grpcurl_json(&training, "training.TrainingService/ListAlgorithms", "{}");
    assert_eq!(
        algorithms["defaultAlgorithm"],
        encoder::ALGORITHM,
        "{algorithms}"
    );

    grpcurl_json(
        &automl.addr("data-management"),
        "data_management.DataManagementService/CreateDataset",
        r#"{"name":"demo","dataset_type":"TEXT_INTENT","bucket":"mini-automl-dm","path":"upload/demo.csv"}"#,
    );
    grpcurl_json(
        &automl.addr("data-management"),
        "data_management.DataManagementService/PrepareTrainingDataset",
        r#"{"dataset_id":"1"}"#,
    );

    let head = train(&training, r#"{"EPOCHS":"3"}"#, "").await;
    let head_id = head["jobId"].as_i64().expect("job id");
    let run = grpcurl_json(
        &automl.addr("metadata-store"),
        "metadata_store.MetadataStoreService/GetRunStatus",
        &format!(r#"{{"run_id":"{head_id}"}}"#),
    );
    assert_eq!(
        run["runInfo"]["tracing"]["pretrainedModel"],
        imported.id().as_str(),
        "{run}"
    );
    assert_eq!(
        run["runInfo"]["epochs"].as_object().map(|e| e.len()),
        Some(3)
    );
    let models = &env.objects.models_bucket;
    let exists = |key: String| {
        let objects = env.objects.clone();
        let bucket = models.clone();
        async move { objects.object_exists(&bucket, &key).await.expect("head") }
    };
    assert!(exists(format!("run_{head_id}/head.safetensors")).await);
    assert!(!exists(format!("run_{head_id}/encoder.safetensors")).await);
    assert!(job_log(&training, head_id).contains("embedding "));

    // The same snapshot again: its embeddings come from the cache.
    let again = train(&training, r#"{"EPOCHS":"2","HIDDEN":"16"}"#, "").await;
    let again_id = again["jobId"].as_i64().expect("job id");
    assert!(job_log(&training, again_id).contains("embeddings: cached"));

    let full = train(&training, r#"{"FINETUNE":"full","EPOCHS":"2"}"#, "").await;
    let full_id = full["jobId"].as_i64().expect("job id");
    assert!(exists(format!("run_{full_id}/encoder.safetensors")).await);

    let document = "is it snowing in seattle";
    let before: Vec<serde_json::Value> = [head_id, again_id, full_id]
        .iter()
        .map(|&run| predict(&automl.addr("prediction-service"), run, document))
        .collect();
    for answer in &before {
        assert!(
            answer["label"].as_str().is_some_and(|l| !l.is_empty()),
            "{answer}"
        );
        assert!(
            !answer["top"].as_array().expect("top").is_empty(),
            "{answer}"
        );
    }

    // A restart keeps every model servable, with the same answers.
    automl.terminate();
    let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
    for (&run, earlier) in [head_id, again_id, full_id].iter().zip(&before) {
        let answer = predict(&automl.addr("prediction-service"), run, document);
        assert_eq!(answer["label"], earlier["label"], "run {run}");
        let (a, b) = (
            answer["score"].as_f64().expect("score"),
            earlier["score"].as_f64().expect("score"),
        );
        assert!((a - b).abs() < 1e-4, "run {run}: {a} vs {b}");
    }

    // Fine-tuning from the full run: its encoder and head are where training starts.
    let tuned = train(
        &automl.addr("training-service"),
        r#"{"FINETUNE":"full","EPOCHS":"1"}"#,
        &full_id.to_string(),
    )
    .await;
    let tuned_id = tuned["jobId"].as_i64().expect("job id");
    assert!(job_log(&automl.addr("training-service"), tuned_id).contains("fine-tuning from run"));
    let answer = predict(&automl.addr("prediction-service"), tuned_id, document);
    assert!(
        answer["label"].as_str().is_some_and(|l| !l.is_empty()),
        "{answer}"
    );
    automl.terminate();
}
