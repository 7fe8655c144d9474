//! prediction-service inside `automl serve all`: it resolves runs through the metadata-store of
//! the same process, and `automl predict` asks it.

use std::collections::HashMap;

use automl_common::testing::TestEnv;
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as ms;
use automl_text_classification::artifact::{self, Lineage, Manifest};
use automl_text_classification::data::Dataset;
use automl_text_classification::params::TrainParams;

use crate::support::{Automl, process_env};

/// A small model trained on the crate's generated demo data, as its artifact files.
pub fn demo_model() -> Vec<(&'static str, Vec<u8>)> {
    let demo = automl_text_classification::demo::snapshot(40, 7);
    let data = Dataset::parse(&demo.examples_csv, &demo.labels_csv).expect("dataset");
    let params = TrainParams::from_map(&HashMap::from([("EPOCHS".to_string(), "5".to_string())]))
        .expect("params");
    let trained = automl_text_classification::train::train(
        &data,
        &params,
        &candle_core::Device::Cpu,
        None,
        &mut |_| Ok(()),
    )
    .expect("train");
    let manifest = Manifest::describe(
        &trained,
        &params,
        "intent-classification",
        "test",
        Lineage::default(),
        "2026-01-01T00:00:00Z",
    );
    artifact::encode(&trained.model, &trained.vocab, &manifest)
        .expect("encode")
        .files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automl_predict_answers_through_serve_all() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    let files = tokio::task::spawn_blocking(demo_model)
        .await
        .expect("training");
    let automl = Automl::spawn(env.path(), &process_env(&env, &env.path().join("automl")));
    publish_run_3(&automl, &env, &files).await;

    let server = automl.addr("prediction-service");
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_automl"))
            .args([
                "predict",
                "--server",
                &server,
                "--run",
                "3",
                "--json",
                "hello there",
            ])
            .output()
    })
    .expect("automl predict");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let label = answer["label"].as_str().expect("label").to_string();
    assert!(!label.is_empty());
    assert_eq!(
        answer["response"],
        serde_json::json!({ "result": label }).to_string()
    );
    assert_eq!(answer["top"].as_array().expect("top").len(), 5);
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_automl"))
            .args(["predict", "--server", &server, "--run", "99", "hello"])
            .output()
    })
    .expect("automl predict");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot locate model artifact for runId 99")
    );
    automl.terminate();
}

/// Records run 3 with `files` as its artifact `intent` through `automl`'s metadata-store.
pub async fn publish_run_3(automl: &Automl, env: &TestEnv, files: &[(&str, Vec<u8>)]) {
    let mut metadata = automl.metadata_client().await;
    metadata
        .log_run_start(ms::LogRunStartRequest {
            run_id: "3".into(),
            run_name: "demo".into(),
            ..Default::default()
        })
        .await
        .expect("start");
    for (name, bytes) in files {
        env.objects
            .put_bytes(
                &env.objects.models_bucket,
                &format!("run_3/{name}"),
                bytes.clone(),
            )
            .await
            .expect("upload");
    }
    metadata
        .create_artifact(ms::CreateArtifactRequest {
            artifact: Some(FileInfo {
                name: "intent".into(),
                bucket: String::new(),
                path: "run_3".into(),
            }),
            run_id: "3".into(),
            algorithm: "intent-classification".into(),
        })
        .await
        .expect("artifact");
}
