//! The whole flow through `automl serve all` with the real grpcurl and the real automl-train:
//! dataset, snapshot, Train with MiniAutoML's JSON, status until succeed, the run's epochs,
//! the model files, and a prediction from the new model.

use std::time::Duration;

use automl_common::testing::Poll;

use crate::support::{Automl, clinc_env, grpcurl_json, process_env, require_trainer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_with_miniautoml_json_then_predict() {
    require_trainer();
    let env = clinc_env("clinc-intents-part2.csv", "upload/part2.csv").await;
    let automl = Automl::spawn(env.path(), &process_env(&env, &env.path().join("automl")));
    let dm = automl.addr("data-management");
    let training = automl.addr("training-service");
    let metadata = automl.addr("metadata-store");
    let prediction = automl.addr("prediction-service");

    grpcurl_json(
        &dm,
        "data_management.DataManagementService/CreateDataset",
        r#"{"name":"clinc","dataset_type":"TEXT_INTENT","bucket":"mini-automl-dm","path":"upload/part2.csv"}"#,
    );
    let version = grpcurl_json(
        &dm,
        "data_management.DataManagementService/PrepareTrainingDataset",
        r#"{"dataset_id":"1"}"#,
    );
    assert_eq!(version["versionHash"], "hashAg==");

    let submitted = grpcurl_json(
        &training,
        "training.TrainingService/Train",
        r#"{"metadata":{"algorithm":"intent-classification","dataset_id":"1","name":"test1","train_data_version_hash":"hashAg==","output_model_name":"intent","parameters":{"LR":"4","EPOCHS":"15","BATCH_SIZE":"64","FC_SIZE":"128"}}}"#,
    );
    let job_id = submitted["jobId"].as_i64().expect("job id");
    let mut seen = Vec::new();
    let mut poll =
        Poll::new("training ends", Duration::from_secs(600)).every(Duration::from_millis(50));
    let last = loop {
        let status = grpcurl_json(
            &training,
            "training.TrainingService/GetTrainingStatus",
            &format!(r#"{{"job_id":{job_id}}}"#),
        );
        // grpcurl omits the default enum value, `queuing`.
        let state = status["status"].as_str().unwrap_or("queuing").to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if matches!(state.as_str(), "succeed" | "failure" | "canceled") {
            break status;
        }
        poll.tick_with(format!("{seen:?}")).await;
    };
    assert_eq!(last["status"], "succeed", "{last}");
    assert!(seen.contains(&"running".to_string()), "{seen:?}");
    assert!(
        last["message"]
            .as_str()
            .expect("message")
            .starts_with("test accuracy 0.")
    );

    let run = grpcurl_json(
        &metadata,
        "metadata_store.MetadataStoreService/GetRunStatus",
        &format!(r#"{{"run_id":"{job_id}"}}"#),
    );
    let epochs = run["runInfo"]["epochs"].as_object().expect("epochs");
    assert_eq!(epochs.len(), 15);
    for epoch in epochs.values() {
        for metric in ["loss", "accuracy", "val_accuracy", "examples_per_sec"] {
            assert!(
                epoch["metrics"].get(metric).is_some(),
                "{metric} in {epoch}"
            );
        }
    }
    for file in ["model.safetensors", "vocab.json", "manifest.json"] {
        assert!(
            env.objects
                .object_exists(&env.objects.models_bucket, &format!("run_{job_id}/{file}"))
                .await
                .expect("head"),
            "{file}"
        );
    }
    let answer = grpcurl_json(
        &prediction,
        "prediction.PredictionService/Predict",
        &format!(
            r#"{{"runId":"{job_id}","document":"please transfer 100 dollars to my savings account"}}"#
        ),
    );
    let response: serde_json::Value =
        serde_json::from_str(answer["response"].as_str().expect("response")).expect("json");
    assert!(response["result"].is_string());

    // The CLI: queue position, a progress line per epoch, the result.
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_automl"))
            .args([
                "train",
                "--server",
                &training,
                "--metadata-server",
                &metadata,
                "--dataset",
                "1",
                "--version",
                "hashAg==",
                "--param",
                "EPOCHS=3",
                "--param",
                "LR=4",
                "--watch",
            ])
            .output()
    })
    .expect("automl train");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("epoch   3/3 ["), "{stdout}");
    assert!(stdout.contains("succeed: test accuracy"), "{stdout}");
    automl.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_job_runs_then_restart_reconciles_and_runs_the_queue() {
    let env = clinc_env("clinc-intents-part1.csv", "upload/part1.csv").await;
    let data_dir = env.path().join("automl");
    let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
    let dm = automl.addr("data-management");
    grpcurl_json(
        &dm,
        "data_management.DataManagementService/CreateDataset",
        r#"{"name":"clinc","dataset_type":"TEXT_INTENT","path":"upload/part1.csv"}"#,
    );
    grpcurl_json(
        &dm,
        "data_management.DataManagementService/PrepareTrainingDataset",
        r#"{"dataset_id":"1"}"#,
    );
    // The trainer left running by the killed process cannot reach the restarted services (new
    // ports): it stops retrying its calls to metadata-store after 2 s instead of 5 minutes.
    let train = |epochs: u32| {
        format!(
            r#"{{"metadata":{{"algorithm":"intent-classification","dataset_id":"1","train_data_version_hash":"hashAg==","output_model_name":"intent","parameters":{{"EPOCHS":"{epochs}","METADATA_RETRY_SECONDS":"2"}}}}}}"#
        )
    };
    let training = automl.addr("training-service");
    let long = grpcurl_json(&training, "training.TrainingService/Train", &train(500))["jobId"]
        .as_i64()
        .expect("job");
    let queued = grpcurl_json(&training, "training.TrainingService/Train", &train(2))["jobId"]
        .as_i64()
        .expect("job");
    let status = |addr: &str, job: i64| {
        grpcurl_json(
            addr,
            "training.TrainingService/GetTrainingStatus",
            &format!(r#"{{"job_id":{job}}}"#),
        )
    };
    let mut poll =
        Poll::new("the long job starts", Duration::from_secs(120)).every(Duration::from_millis(50));
    while status(&training, long)["status"] != "running" {
        poll.tick().await;
    }
    automl.kill9();

    let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
    let training = automl.addr("training-service");
    let mut poll =
        Poll::new("both jobs settle", Duration::from_secs(300)).every(Duration::from_millis(100));
    loop {
        let first = status(&training, long);
        let second = status(&training, queued);
        let settled =
            |s: &serde_json::Value| matches!(s["status"].as_str(), Some("succeed" | "failure"));
        if settled(&first) && settled(&second) {
            assert_eq!(first["status"], "failure", "{first}");
            assert!(
                !first["message"].as_str().unwrap_or_default().is_empty(),
                "{first}"
            );
            assert_eq!(second["status"], "succeed", "{second}");
            break;
        }
        poll.tick_with(format!("{first} {second}")).await;
    }
    automl.terminate();
}
