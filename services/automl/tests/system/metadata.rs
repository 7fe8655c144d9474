//! metadata-store through the `automl` process.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automl_common::testing::{Poll, TestEnv, backends};
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tonic::transport::Channel;

use crate::support::{Automl, grpcurl_json, process_env, run_grpcurl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_configuration_and_reports_serving() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let automl = Automl::spawn(cwd.path(), &[]);
    assert!(
        cwd.path().join("automl-data").is_dir(),
        "data directory created"
    );
    let addr = automl.addr("metadata-store");
    let health = grpcurl_json(&addr, "grpc.health.v1.Health/Check", "{}");
    assert_eq!(health["status"], "SERVING");
    let health = grpcurl_json(
        &addr,
        "grpc.health.v1.Health/Check",
        r#"{"service":"metadata_store.MetadataStoreService"}"#,
    );
    assert_eq!(health["status"], "SERVING");
    // The built-in health command agrees.
    let status = Command::new(env!("CARGO_BIN_EXE_automl"))
        .args(["health", "--addr", &addr])
        .output()
        .expect("automl health");
    assert!(status.status.success());
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "SERVING");
    automl.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_drives_the_metadata_store_contract() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let automl = Automl::spawn(cwd.path(), &[]);
    let addr = automl.addr("metadata-store");

    let (ok, listing, stderr) = run_grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{stderr}");
    for service in [
        "metadata_store.MetadataStoreService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listing.lines().any(|l| l == service),
            "{service} in {listing}"
        );
    }
    let (ok, described, stderr) = run_grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "metadata_store.MetadataStoreService",
    ]);
    assert!(ok, "{stderr}");
    assert!(described.contains("WatchRun"));

    let started = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/LogRunStart",
        r#"{"start_time":"2021-08-01T00:00:00Z","run_id":"1","run_name":"demo-run","tracing":{"dataset_id":"1","version_hash":"hashBA==","code_version":"12a3bfd"}}"#,
    );
    let run_info = &started["runInfo"];
    assert_eq!(run_info["runId"], "1");
    assert_eq!(run_info["runName"], "demo-run");
    assert_eq!(run_info["message"], "Running");
    assert_eq!(run_info["tracing"]["versionHash"], "hashBA==");
    assert_eq!(started["path"], "run_1");
    assert_eq!(started["bucket"], "mini-automl-models");

    let epoch = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/LogEpoch",
        r#"{"epoch_info":{"start_time":"2021-08-01T01:00:00Z","end_time":"2021-08-01T01:30:00Z","run_id":"1","epoch_id":"1","metrics":{"accuracy":"0.5"}}}"#,
    );
    assert_eq!(epoch["epochInfo"]["metrics"]["accuracy"], "0.5");

    let status = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/GetRunStatus",
        r#"{"run_id":"1"}"#,
    );
    assert_eq!(
        status["runInfo"]["epochs"]["1"]["metrics"]["accuracy"],
        "0.5"
    );
    assert_eq!(status["runInfo"]["message"], "Running");

    let ended = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/LogRunEnd",
        r#"{"end_time":"2021-08-01T02:00:00Z","run_id":"1","success":true,"message":"done"}"#,
    );
    assert_eq!(ended["runInfo"]["success"], true);
    assert_eq!(ended["runInfo"]["message"], "done");

    // Errors come back with their codes through grpcurl too.
    let (ok, _, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"run_id":"42"}"#,
        &addr,
        "metadata_store.MetadataStoreService/GetRunStatus",
    ]);
    assert!(!ok);
    assert!(stderr.contains("NotFound"), "{stderr}");
    automl.terminate();
}

async fn populate(client: &mut MetadataStoreServiceClient<Channel>, env: &TestEnv) {
    client
        .log_run_start(pb::LogRunStartRequest {
            start_time: "2021-08-01T00:00:00Z".into(),
            run_id: "1".into(),
            run_name: "durable".into(),
            tracing: None,
        })
        .await
        .expect("start");
    for epoch in 1..=3 {
        client
            .log_epoch(epoch_request("1", epoch))
            .await
            .expect("epoch");
    }
    env.objects
        .put_bytes(
            &env.objects.models_bucket,
            "run_1/model.safetensors",
            vec![1, 2, 3],
        )
        .await
        .expect("upload");
    client
        .create_artifact(pb::CreateArtifactRequest {
            artifact: Some(FileInfo {
                name: "intent".into(),
                bucket: String::new(),
                path: "run_1".into(),
            }),
            run_id: "1".into(),
            algorithm: "intent-classification".into(),
        })
        .await
        .expect("artifact");
}

fn epoch_request(run_id: &str, epoch: u32) -> pb::LogEpochRequest {
    pb::LogEpochRequest {
        epoch_info: Some(pb::EpochInfo {
            start_time: "2021-08-01T01:00:00Z".into(),
            end_time: "2021-08-01T01:30:00Z".into(),
            run_id: run_id.into(),
            epoch_id: epoch.to_string(),
            metrics: HashMap::from([("loss".to_string(), format!("{epoch}.0"))]),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_keep_runs_epochs_and_artifacts() {
    for backend in backends() {
        let env = TestEnv::new(backend).await.expect("env");
        let data_dir = env.path().join("automl");
        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        populate(&mut automl.metadata_client().await, &env).await;
        automl.terminate();

        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let mut client = automl.metadata_client().await;
        let run = client
            .get_run_status(pb::GetRunStatusRequest { run_id: "1".into() })
            .await
            .expect("run survives")
            .into_inner()
            .run_info
            .expect("run_info");
        assert_eq!(run.run_name, "durable");
        assert_eq!(run.epochs.len(), 3);
        let artifact = client
            .get_artifact(pb::GetArtifactRequest { run_id: "1".into() })
            .await
            .expect("artifact survives")
            .into_inner();
        assert_eq!(artifact.version, "1");
        automl.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_log_epoch_loses_no_acknowledged_epoch() {
    for backend in backends() {
        let env = TestEnv::new(backend).await.expect("env");
        let data_dir = env.path().join("automl");
        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let client = automl.metadata_client().await;
        client
            .clone()
            .log_run_start(pb::LogRunStartRequest {
                run_id: "1".into(),
                run_name: "crash".into(),
                ..Default::default()
            })
            .await
            .expect("start");

        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for writer in 0..4u32 {
            let mut client = client.clone();
            let acknowledged = Arc::clone(&acknowledged);
            writers.push(tokio::spawn(async move {
                for n in 0..100_000u32 {
                    let epoch = writer * 1_000_000 + n;
                    match client.log_epoch(epoch_request("1", epoch)).await {
                        Ok(_) => acknowledged.lock().expect("lock").push(epoch),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Kill while the writers are busy, after a fair number of acknowledgements.
        let mut poll = Poll::new("writers make progress", Duration::from_secs(60))
            .every(Duration::from_millis(5));
        while acknowledged.lock().expect("lock").len() < 300 {
            poll.tick().await;
        }
        automl.kill9();
        for writer in writers {
            let _ = writer.await;
        }
        let acknowledged = acknowledged.lock().expect("lock").clone();

        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let run = automl
            .metadata_client()
            .await
            .get_run_status(pb::GetRunStatusRequest { run_id: "1".into() })
            .await
            .expect("status")
            .into_inner()
            .run_info
            .expect("run_info");
        for epoch in &acknowledged {
            assert!(
                run.epochs.contains_key(&epoch.to_string()),
                "acknowledged epoch {epoch} lost ({backend:?})"
            );
        }
        automl.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema_and_exits() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_automl"))
            .args(["migrate", "all", "--data-dir", "state"])
            .current_dir(cwd.path())
            .output()
    })
    .expect("automl migrate runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(cwd.path().join("state/metadata_store.db").is_file());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("metadata-store schema is up to date")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_with_the_key_named() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_automl"))
            .args(["serve", "all"])
            .env("AUTOML__METADATA_STORE__PROT", "1")
            .current_dir(cwd.path())
            .output()
    })
    .expect("automl runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("prot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_worker_thread_count_is_refused_without_a_panic() {
    let cwd = tempfile::tempdir().expect("tempdir");
    for value in ["0", "two"] {
        let output = tokio::task::block_in_place(|| {
            Command::new(env!("CARGO_BIN_EXE_automl"))
                .args(["serve", "all"])
                .env("TOKIO_WORKER_THREADS", value)
                .current_dir(cwd.path())
                .output()
        })
        .expect("automl runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{value}: {stderr}");
        assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{value}: {stderr}");
    }
}
