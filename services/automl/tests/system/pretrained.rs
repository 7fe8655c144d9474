//! `automl pretrained import` against `automl serve all` on its embedded defaults, the default
//! algorithm of `automl train`, and a system started from a lone `automl` binary (no
//! `automl-train` beside it) that trains with its own `automl trainer`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use automl_common::testing::TestEnv;

use crate::support::{Automl, grpcurl_json, job_end, process_env, run_grpcurl};

const ENCODER: &str = "intent-classification-encoder";

/// Runs the `automl` binary with `args` and `env`; returns (success, stdout, stderr).
fn automl_cli(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_automl"));
    command.args(args).current_dir(cwd);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::task::block_in_place(|| command.output()).expect("automl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretrained_import_through_the_cli_makes_the_encoder_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("automl");
    // Embedded defaults: no S3 endpoint, the embedded one on a free port.
    let automl = Automl::spawn(
        dir.path(),
        &[("AUTOML__DATA_DIR", data_dir.display().to_string())],
    );
    let s3 = automl.addr("embedded s3");
    let training = automl.addr("training-service");
    let config_env = [("AUTOML__S3__EMBEDDED_BIND", s3.as_str())];
    let train_args = [
        "train",
        "--server",
        &training,
        "--dataset",
        "1",
        "--version",
        "hashAg==",
    ];

    let (ok, out, err) = automl_cli(dir.path(), &["pretrained", "show"], &config_env);
    assert!(ok, "{err}");
    assert!(out.contains("all-minilm-l6-v2 is not imported"), "{out}");
    // No dataset 1: the job is refused, after the default algorithm was chosen.
    let (ok, _, err) = automl_cli(dir.path(), &train_args, &[]);
    assert!(!ok);
    assert!(err.contains("algorithm: intent-classification\n"), "{err}");

    let files = dir.path().join("encoder");
    std::fs::create_dir_all(&files).expect("dir");
    let (ok, _, err) = automl_cli(
        dir.path(),
        &[
            "pretrained",
            "import",
            "--dir",
            &files.display().to_string(),
        ],
        &config_env,
    );
    assert!(!ok);
    assert!(err.contains("scripts/fetch-encoder.sh"), "{err}");

    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::write(files.join(name), format!("made-up {name}")).expect("file");
    }
    let files_env = files.display().to_string();
    let (ok, out, err) = automl_cli(
        dir.path(),
        &["pretrained", "import"],
        &[config_env[0], ("AUTOML_ENCODER_DIR", &files_env)],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("model.safetensors: 25 bytes uploaded"),
        "{out}"
    );
    let id = out
        .lines()
        .find_map(|line| line.strip_prefix("imported "))
        .expect("the imported id")
        .to_string();
    assert!(id.starts_with("all-minilm-l6-v2@"), "{out}");
    let digest = id.trim_start_matches("all-minilm-l6-v2@");
    assert!(
        out.contains(&format!(
            "prefix: mini-automl-models/pretrained/all-minilm-l6-v2/{digest}"
        )),
        "{out}"
    );

    let listed = grpcurl_json(&training, "training.TrainingService/ListAlgorithms", "{}");
    assert_eq!(listed["defaultAlgorithm"], ENCODER, "{listed}");
    let algorithms = listed["algorithms"].as_array().expect("algorithms");
    assert_eq!(algorithms.len(), 2, "{listed}");
    assert!(algorithms.iter().all(|a| a["ready"] == true), "{listed}");

    let (ok, out, err) = automl_cli(dir.path(), &["pretrained", "show"], &config_env);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("{id}\n")), "{out}");
    let (_, _, err) = automl_cli(dir.path(), &train_args, &[]);
    assert!(err.contains(&format!("algorithm: {ENCODER}\n")), "{err}");
    automl.terminate();
}

fn demo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/demo")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_automl_binary_trains_with_its_own_trainer() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    let program = crate::support::lone_automl(env.path());
    assert!(!env.path().join("bin/automl-train").exists());
    let data = std::fs::read(demo("intents-part1.csv")).expect("demo data");
    env.objects
        .put_bytes(&env.objects.datasets_bucket, "upload/demo.csv", data)
        .await
        .expect("upload");
    let automl = Automl::spawn_program(
        &program,
        env.path(),
        &process_env(&env, &env.path().join("automl")),
        Stdio::inherit(),
    );
    let training = automl.addr("training-service");
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
    let submitted = grpcurl_json(
        &training,
        "training.TrainingService/Train",
        r#"{"metadata":{"algorithm":"intent-classification","dataset_id":"1","name":"lone","train_data_version_hash":"hashAg==","output_model_name":"intent","parameters":{"EPOCHS":"2"}}}"#,
    );
    let job_id = submitted["jobId"].as_i64().expect("job id");
    let job = format!(r#"{{"job_id":{job_id}}}"#);
    let last = job_end(&training, job_id, Duration::from_secs(600)).await;
    if last["status"] != "succeed" {
        let (_, log, _) = run_grpcurl(&[
            "-plaintext",
            "-d",
            &job,
            &training,
            "training.TrainingService/GetTrainingLogs",
        ]);
        panic!("job {job_id}: {last}\n{log}");
    }
    let answer = grpcurl_json(
        &automl.addr("prediction-service"),
        "prediction.PredictionService/Predict",
        &format!(r#"{{"runId":"{job_id}","document":"play some rock"}}"#),
    );
    assert!(
        answer["label"]
            .as_str()
            .is_some_and(|label| !label.is_empty()),
        "{answer}"
    );
    automl.terminate();
}
