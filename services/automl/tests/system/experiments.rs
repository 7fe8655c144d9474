//! An experiment through `automl serve all` with the real grpcurl and the real automl-train:
//! CreateExperiment with grpcurl's JSON, the process killed (SIGKILL) while trials train and
//! started again on the same data directory and database; the experiment then completes with
//! exactly `max_trials` trials, one job each, and its best run answers Predict.

use std::time::Duration;

use automl_common::testing::Poll;

use crate::support::{Automl, clinc_env, grpcurl_json, process_env, require_trainer};

const EPOCHS: usize = 6;
const TRIALS: usize = 4;

/// GetExperiment through grpcurl.
fn experiment(training: &str, id: i64) -> serde_json::Value {
    grpcurl_json(
        training,
        "training.TrainingService/GetExperiment",
        &format!(r#"{{"experiment_id":{id}}}"#),
    )
}

fn trials(experiment: &serde_json::Value) -> Vec<serde_json::Value> {
    experiment["trials"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_survives_a_kill_and_its_best_run_predicts() {
    require_trainer();
    let env = clinc_env("clinc-intents-part1.csv", "upload/part1.csv").await;
    let vars = process_env(&env, &env.path().join("automl"));
    let automl = Automl::spawn(env.path(), &vars);
    let dm = automl.addr("data-management");
    let training = automl.addr("training-service");
    grpcurl_json(
        &dm,
        "data_management.DataManagementService/CreateDataset",
        r#"{"name":"clinc","dataset_type":"TEXT_INTENT","path":"upload/part1.csv"}"#,
    );
    let version = grpcurl_json(
        &dm,
        "data_management.DataManagementService/PrepareTrainingDataset",
        r#"{"dataset_id":"1"}"#,
    );
    let hash = version["versionHash"].as_str().expect("version hash");
    let created = grpcurl_json(
        &training,
        "training.TrainingService/CreateExperiment",
        &format!(
            r#"{{"spec":{{"name":"restart","dataset_id":"1","train_data_version_hash":"{hash}",
            "algorithm":"intent-classification","output_model_name":"intent",
            "parameters":{{"EPOCHS":"{EPOCHS}","METADATA_RETRY_SECONDS":"60"}},
            "objective":{{"metric":"val_accuracy","type":"OBJECTIVE_MAXIMIZE"}},
            "search_space":[
              {{"name":"LR","type":"PARAMETER_DOUBLE","min":0.001,"max":0.01,"log":true}},
              {{"name":"FC_SIZE","type":"PARAMETER_INT","min":32,"max":64}}],
            "search_algorithm":"SEARCH_RANDOM","seed":"7",
            "max_trials":{TRIALS},"parallel_trials":2}}}}"#
        ),
    );
    let id = created["experimentId"].as_i64().expect("experiment id");

    // Killed while its first trials train.
    let mut poll = Poll::new("a trial's first epoch", Duration::from_secs(300))
        .every(Duration::from_millis(100));
    loop {
        let now = experiment(&training, id);
        if trials(&now)
            .iter()
            .any(|t| t["epochs"].as_i64().unwrap_or(0) >= 1)
        {
            break;
        }
        poll.tick_with(now).await;
    }
    // The same addresses after the restart: the trainers that outlive the process reach the
    // new metadata-store where they reached the old one.
    let mut again = vars.clone();
    for (service, key) in [
        ("data-management", "AUTOML__DATA_MANAGEMENT__PORT"),
        ("metadata-store", "AUTOML__METADATA_STORE__PORT"),
        ("prediction-service", "AUTOML__PREDICTION_SERVICE__PORT"),
        ("training-service", "AUTOML__TRAINING_SERVICE__PORT"),
    ] {
        let addr = automl.addr(service);
        again.push((key, addr.rsplit(':').next().expect("port").to_string()));
    }
    automl.kill9();
    let automl = Automl::spawn(env.path(), &again);
    let training = automl.addr("training-service");
    let prediction = automl.addr("prediction-service");

    let mut poll = Poll::new(
        "the experiment and its trials end",
        Duration::from_secs(600),
    )
    .every(Duration::from_millis(200));
    let done = loop {
        let now = experiment(&training, id);
        let ended = now["status"]
            .as_str()
            .is_some_and(|s| s != "EXPERIMENT_RUNNING")
            && trials(&now).iter().all(|t| {
                matches!(
                    t["status"].as_str(),
                    Some("succeed" | "failure" | "canceled")
                )
            });
        if ended {
            break now;
        }
        poll.tick_with(now).await;
    };
    assert_eq!(done["status"], "EXPERIMENT_SUCCEEDED", "{done}");
    let numbers: Vec<i64> = trials(&done)
        .iter()
        .map(|t| t["trialNumber"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(numbers, (1..=TRIALS as i64).collect::<Vec<_>>(), "{done}");
    let jobs = grpcurl_json(&training, "training.TrainingService/ListTrainingJobs", "{}");
    assert_eq!(jobs["total"], TRIALS, "one job per trial: {jobs}");
    // Every trial trained once to its end: its run has each epoch once.
    let mut metadata = automl.metadata_client().await;
    for trial in trials(&done) {
        assert_eq!(trial["status"], "succeed", "{trial}");
        let run = metadata
            .get_run_status(automl_proto::metadata_store::GetRunStatusRequest {
                run_id: trial["runId"].as_str().expect("run id").into(),
            })
            .await
            .expect("run")
            .into_inner()
            .run_info
            .expect("run info");
        assert!(run.success, "{run:?}");
        assert_eq!(run.epochs.len(), EPOCHS, "{run:?}");
    }

    // The best trial's run is a model like any other.
    let best = &done["bestTrial"];
    let run_id = best["runId"].as_str().expect("best run");
    assert!(
        best["objective"].as_f64().is_some_and(|v| v > 0.0),
        "{best}"
    );
    let answer = grpcurl_json(
        &prediction,
        "prediction.PredictionService/Predict",
        &format!(r#"{{"runId":"{run_id}","document":"what is my account balance"}}"#),
    );
    let response: serde_json::Value =
        serde_json::from_str(answer["response"].as_str().expect("response")).expect("json");
    assert!(response["result"].is_string(), "{response}");
}
