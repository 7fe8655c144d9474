//! metadata-store through real gRPC on 127.0.0.1:0, against SQLite and (when
//! AUTOML_TEST_POSTGRES_URL is set) Postgres, with objects in the embedded S3 endpoint.

use std::collections::HashMap;

use automl_common::db::{Backend, Database};
use automl_common::testing::{TestEnv, TestServer, assert_status, backends};
use automl_metadata_store::MetadataStoreConfig;
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

type Client = MetadataStoreServiceClient<Channel>;

struct Running {
    server: TestServer,
    db: Database,
    client: Client,
}

impl Running {
    async fn stop(self) {
        self.server.stop().await;
        self.db.close().await;
    }
}

async fn start(env: &TestEnv) -> Running {
    let config = MetadataStoreConfig {
        watch_poll_interval_ms: 200,
        ..MetadataStoreConfig::default()
    };
    let shutdown = CancellationToken::new();
    let (routes, db) =
        automl_metadata_store::start(&env.common, &config, env.objects.clone(), shutdown.clone())
            .await
            .expect("metadata-store starts");
    let server = TestServer::start(routes, shutdown).await.expect("server");
    let client = MetadataStoreServiceClient::new(server.channel().await.expect("channel"));
    Running { server, db, client }
}

async fn env(backend: Backend) -> TestEnv {
    TestEnv::new(backend).await.expect("test environment")
}

fn start_request(run_id: &str, name: &str) -> pb::LogRunStartRequest {
    pb::LogRunStartRequest {
        start_time: "2021-08-01T00:00:00Z".into(),
        run_id: run_id.into(),
        run_name: name.into(),
        tracing: Some(pb::TracingInformation {
            dataset_id: "1".into(),
            version_hash: "hashBA==".into(),
            code_version: "12a3bfd".into(),
            base_run_id: String::new(),
            pretrained_model: PRETRAINED.into(),
        }),
    }
}

/// The lineage every test run names as its pretrained model.
const PRETRAINED: &str =
    "all-minilm-l6-v2@53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

fn epoch_request(run_id: &str, epoch_id: &str, accuracy: &str) -> pb::LogEpochRequest {
    pb::LogEpochRequest {
        epoch_info: Some(pb::EpochInfo {
            start_time: "2021-08-01T01:00:00Z".into(),
            end_time: "2021-08-01T01:30:00Z".into(),
            run_id: run_id.into(),
            epoch_id: epoch_id.into(),
            metrics: HashMap::from([("accuracy".to_string(), accuracy.to_string())]),
        }),
    }
}

fn end_request(run_id: &str, success: bool, message: &str) -> pb::LogRunEndRequest {
    pb::LogRunEndRequest {
        run_id: run_id.into(),
        end_time: "2021-08-01T02:00:00Z".into(),
        success,
        message: message.into(),
    }
}

async fn status(client: &mut Client, run_id: &str) -> Result<pb::RunInfo, tonic::Status> {
    Ok(client
        .get_run_status(pb::GetRunStatusRequest {
            run_id: run_id.into(),
        })
        .await?
        .into_inner()
        .run_info
        .expect("run_info"))
}

async fn put_model_files(env: &TestEnv, run_id: &str) {
    for file in ["model.safetensors", "vocab.json", "manifest.json"] {
        env.objects
            .put_bytes(
                &env.objects.models_bucket,
                &format!("run_{run_id}/{file}"),
                b"{}".to_vec(),
            )
            .await
            .expect("upload");
    }
}

#[tokio::test]
async fn run_lifecycle_as_the_contract_describes() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        let client = &mut running.client;

        let started = client
            .log_run_start(start_request("1", "demo-run"))
            .await
            .expect("start")
            .into_inner();
        let info = started.run_info.expect("run_info");
        assert_eq!(info.message, "Running");
        assert!(!info.success);
        assert_eq!(info.run_name, "demo-run");
        assert_eq!(started.bucket, env.objects.models_bucket);
        assert_eq!(started.path, "run_1");

        let logged = client
            .log_epoch(epoch_request("1", "1", "0.5"))
            .await
            .expect("epoch")
            .into_inner();
        assert_eq!(logged.epoch_info.expect("epoch").metrics["accuracy"], "0.5");

        let info = status(client, "1").await.expect("status");
        assert_eq!(info.epochs["1"].metrics["accuracy"], "0.5");
        let tracing = info.tracing.expect("tracing");
        assert_eq!(tracing.version_hash, "hashBA==");
        assert_eq!(tracing.pretrained_model, PRETRAINED);

        let ended = client
            .log_run_end(end_request("1", true, "done"))
            .await
            .expect("end")
            .into_inner()
            .run_info
            .expect("run_info");
        assert!(ended.success);
        assert_eq!(ended.message, "done");
        assert_eq!(ended.end_time, "2021-08-01T02:00:00Z");
        assert_eq!(ended.epochs.len(), 1);
        running.stop().await;
    }
}

#[tokio::test]
async fn duplicates_are_already_exists_and_change_nothing() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        let client = &mut running.client;
        client
            .log_run_start(start_request("7", "first"))
            .await
            .expect("start");
        client
            .log_epoch(epoch_request("7", "1", "0.1"))
            .await
            .expect("epoch");

        assert_status(
            client.log_run_start(start_request("7", "second")).await,
            Code::AlreadyExists,
            "run 7",
        );
        assert_status(
            client.log_epoch(epoch_request("7", "1", "0.9")).await,
            Code::AlreadyExists,
            "epoch 1",
        );
        let info = status(client, "7").await.expect("status");
        assert_eq!(info.run_name, "first");
        assert_eq!(info.epochs.len(), 1);
        assert_eq!(info.epochs["1"].metrics["accuracy"], "0.1");
        running.stop().await;
    }
}

#[tokio::test]
async fn retried_calls_with_the_same_content_succeed_and_record_once() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        let client = &mut running.client;
        // A client whose answer was lost sends the very same request again.
        client
            .log_run_start(start_request("7", "first"))
            .await
            .expect("start");
        let again = client
            .log_run_start(start_request("7", "first"))
            .await
            .expect("the same start again")
            .into_inner();
        assert_eq!(again.path, "run_7");
        assert_eq!(again.run_info.expect("run").message, "Running");
        let mut later = start_request("7", "first");
        later.start_time = "2021-08-01T00:00:01Z".into();
        assert_status(
            client.log_run_start(later).await,
            Code::AlreadyExists,
            "run 7",
        );

        for _ in 0..2 {
            let logged = client
                .log_epoch(epoch_request("7", "1", "0.1"))
                .await
                .expect("epoch 1, twice")
                .into_inner();
            assert_eq!(logged.epoch_info.expect("epoch").metrics["accuracy"], "0.1");
        }
        let mut other_times = epoch_request("7", "1", "0.1");
        other_times.epoch_info.as_mut().expect("epoch").end_time = "2021-08-01T01:31:00Z".into();
        assert_status(
            client.log_epoch(other_times).await,
            Code::AlreadyExists,
            "epoch 1",
        );
        client
            .log_epoch(epoch_request("7", "2", "0.2"))
            .await
            .expect("epoch 2");
        let info = status(client, "7").await.expect("status");
        assert_eq!(info.epochs.len(), 2);
        assert_eq!(info.epochs["1"].end_time, "2021-08-01T01:30:00Z");

        put_model_files(&env, "7").await;
        for _ in 0..2 {
            let created = client
                .create_artifact(artifact_request("7", "intent", "run_7"))
                .await
                .expect("the same artifact, twice")
                .into_inner();
            assert_eq!(created.version, "1");
        }

        let ended = client
            .log_run_end(end_request("7", true, "done"))
            .await
            .expect("end")
            .into_inner()
            .run_info
            .expect("run");
        let mut late = end_request("7", true, "done");
        late.end_time = "2021-08-01T02:00:05Z".into();
        let again = client
            .log_run_end(late)
            .await
            .expect("the same outcome again")
            .into_inner()
            .run_info
            .expect("run");
        assert_eq!(again, ended, "the first end stays");
        for (success, message) in [(true, "other"), (false, "done")] {
            assert_status(
                client.log_run_end(end_request("7", success, message)).await,
                Code::FailedPrecondition,
                "ended",
            );
        }
        // An ended run is not started again, even by the same request.
        assert_status(
            client.log_run_start(start_request("7", "first")).await,
            Code::AlreadyExists,
            "run 7",
        );
        let info = status(client, "7").await.expect("status");
        assert!(info.success);
        assert_eq!(info.message, "done");
        assert_eq!(info.end_time, "2021-08-01T02:00:00Z");
        assert_eq!(info.epochs.len(), 2);
        let artifact = client
            .get_artifact(pb::GetArtifactRequest { run_id: "7".into() })
            .await
            .expect("artifact")
            .into_inner();
        assert_eq!(artifact.version, "1");
        running.stop().await;
    }
}

#[tokio::test]
async fn unknown_runs_are_not_found() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        let client = &mut running.client;
        assert_status(status(client, "404").await, Code::NotFound, "run 404");
        assert_status(
            client.log_epoch(epoch_request("404", "1", "0.1")).await,
            Code::NotFound,
            "run 404",
        );
        assert_status(
            client.log_run_end(end_request("404", true, "x")).await,
            Code::NotFound,
            "run 404",
        );
        assert_status(
            client
                .get_artifact(pb::GetArtifactRequest {
                    run_id: "404".into(),
                })
                .await,
            Code::NotFound,
            "404",
        );
        assert_status(
            client
                .watch_run(pb::GetRunStatusRequest {
                    run_id: "404".into(),
                })
                .await,
            Code::NotFound,
            "run 404",
        );
        put_model_files(&env, "404").await;
        assert_status(
            client
                .create_artifact(artifact_request("404", "intent", "run_404"))
                .await,
            Code::NotFound,
            "run 404",
        );
        running.stop().await;
    }
}

#[tokio::test]
async fn missing_and_malformed_fields_are_invalid_argument() {
    let env = env(Backend::Sqlite).await;
    let mut running = start(&env).await;
    let client = &mut running.client;
    assert_status(
        client.log_run_start(start_request("", "x")).await,
        Code::InvalidArgument,
        "run_id",
    );
    assert_status(
        client.log_run_start(start_request("../../etc", "x")).await,
        Code::InvalidArgument,
        "run_id",
    );
    assert_status(
        client
            .log_run_start(start_request(&"1".repeat(10_000), "x"))
            .await,
        Code::InvalidArgument,
        "run_id",
    );
    let mut long_name = start_request("9", "x");
    long_name.run_name = "n".repeat(100_000);
    assert_status(
        client.log_run_start(long_name).await,
        Code::InvalidArgument,
        "run_name",
    );
    assert_status(
        client
            .log_epoch(pb::LogEpochRequest { epoch_info: None })
            .await,
        Code::InvalidArgument,
        "epoch_info",
    );
    client
        .log_run_start(start_request("1", "x"))
        .await
        .expect("start");
    assert_status(
        client.log_epoch(epoch_request("1", "", "0.1")).await,
        Code::InvalidArgument,
        "epoch_info.epoch_id",
    );
    assert_status(
        client.log_epoch(epoch_request("", "1", "0.1")).await,
        Code::InvalidArgument,
        "epoch_info.run_id",
    );
    assert_status(
        client.log_run_end(end_request("", true, "x")).await,
        Code::InvalidArgument,
        "run_id",
    );
    assert_status(
        client
            .get_run_status(pb::GetRunStatusRequest {
                run_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "run_id",
    );
    assert_status(
        client
            .get_artifact(pb::GetArtifactRequest {
                run_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "run_id",
    );
    assert_status(
        client
            .create_artifact(pb::CreateArtifactRequest {
                artifact: None,
                run_id: "1".into(),
                algorithm: "x".into(),
            })
            .await,
        Code::InvalidArgument,
        "artifact",
    );
    assert_status(
        client
            .list_runs(pb::ListRunsRequest {
                limit: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "limit",
    );
    // The server is still fine after all of that.
    status(client, "1").await.expect("status");
    running.stop().await;
}

fn artifact_request(run_id: &str, name: &str, path: &str) -> pb::CreateArtifactRequest {
    pb::CreateArtifactRequest {
        artifact: Some(FileInfo {
            name: name.into(),
            bucket: String::new(),
            path: path.into(),
        }),
        run_id: run_id.into(),
        algorithm: "intent-classification".into(),
    }
}

#[tokio::test]
async fn artifacts_are_versioned_per_name_and_checked_against_the_bucket() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        let client = &mut running.client;
        for run in ["1", "2", "3"] {
            client
                .log_run_start(start_request(run, "r"))
                .await
                .expect("start");
        }
        assert_status(
            client
                .create_artifact(artifact_request("1", "intent", "run_1"))
                .await,
            Code::FailedPrecondition,
            "run_1",
        );
        put_model_files(&env, "1").await;
        put_model_files(&env, "2").await;
        put_model_files(&env, "3").await;

        let first = client
            .create_artifact(artifact_request("1", "intent", "run_1"))
            .await
            .expect("artifact 1")
            .into_inner();
        assert_eq!(first.version, "1");
        assert_eq!(first.name, "intent");
        assert_eq!(
            first.artifact.as_ref().expect("file").bucket,
            env.objects.models_bucket
        );
        // Recording the same artifact again is idempotent.
        let again = client
            .create_artifact(artifact_request("1", "intent", "run_1/"))
            .await
            .expect("repeat")
            .into_inner();
        assert_eq!(again.version, "1");
        let second = client
            .create_artifact(artifact_request("2", "intent", "run_2"))
            .await
            .expect("artifact 2")
            .into_inner();
        assert_eq!(second.version, "2");
        let other_name = client
            .create_artifact(artifact_request(
                "3",
                "sentiment",
                "run_3/model.safetensors",
            ))
            .await
            .expect("artifact 3")
            .into_inner();
        assert_eq!(other_name.version, "1");

        // Another run's location, another bucket, a different artifact for the same run.
        assert_status(
            client
                .create_artifact(artifact_request("1", "intent", "run_2"))
                .await,
            Code::InvalidArgument,
            "run_1",
        );
        assert_status(
            client
                .create_artifact(artifact_request("1", "intent", "run_1/../run_2"))
                .await,
            Code::InvalidArgument,
            "artifact.path",
        );
        let mut other_bucket = artifact_request("1", "intent", "run_1");
        other_bucket.artifact.as_mut().expect("file").bucket = env.objects.datasets_bucket.clone();
        assert_status(
            client.create_artifact(other_bucket).await,
            Code::InvalidArgument,
            "artifact.bucket",
        );
        assert_status(
            client
                .create_artifact(artifact_request("1", "other", "run_1"))
                .await,
            Code::AlreadyExists,
            "run 1",
        );

        let fetched = client
            .get_artifact(pb::GetArtifactRequest { run_id: "2".into() })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(fetched.version, "2");
        assert_eq!(fetched.algorithm, "intent-classification");
        assert_eq!(fetched.artifact.expect("file").path, "run_2");
        running.stop().await;
    }
}

#[tokio::test]
async fn everything_survives_a_restart() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        running
            .client
            .log_run_start(start_request("1", "demo"))
            .await
            .expect("start");
        for epoch in 1..=3 {
            running
                .client
                .log_epoch(epoch_request("1", &epoch.to_string(), "0.7"))
                .await
                .expect("epoch");
        }
        put_model_files(&env, "1").await;
        running
            .client
            .create_artifact(artifact_request("1", "intent", "run_1"))
            .await
            .expect("artifact");
        running
            .client
            .log_run_end(end_request("1", true, "done"))
            .await
            .expect("end");
        running.stop().await;

        let mut restarted = start(&env).await;
        let info = status(&mut restarted.client, "1").await.expect("status");
        assert_eq!(info.epochs.len(), 3);
        assert!(info.success);
        let artifact = restarted
            .client
            .get_artifact(pb::GetArtifactRequest { run_id: "1".into() })
            .await
            .expect("artifact")
            .into_inner();
        assert_eq!(artifact.version, "1");
        // Runs started after the restart keep working, and versions continue.
        restarted
            .client
            .log_run_start(start_request("2", "again"))
            .await
            .expect("start");
        put_model_files(&env, "2").await;
        let second = restarted
            .client
            .create_artifact(artifact_request("2", "intent", "run_2"))
            .await
            .expect("artifact")
            .into_inner();
        assert_eq!(second.version, "2");
        restarted.stop().await;
    }
}

#[tokio::test]
async fn ended_runs_take_no_more_epochs() {
    let env = env(Backend::Sqlite).await;
    let mut running = start(&env).await;
    let client = &mut running.client;
    client
        .log_run_start(start_request("1", "x"))
        .await
        .expect("start");
    client
        .log_run_end(end_request("1", false, "boom"))
        .await
        .expect("end");
    assert_status(
        client.log_epoch(epoch_request("1", "1", "0.1")).await,
        Code::FailedPrecondition,
        "ended",
    );
    assert_status(
        client.log_run_end(end_request("1", true, "again")).await,
        Code::FailedPrecondition,
        "ended",
    );
    let info = status(client, "1").await.expect("status");
    assert!(!info.success);
    assert_eq!(info.message, "boom");
    running.stop().await;
}

#[tokio::test]
async fn list_runs_filters_and_pages() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        let client = &mut running.client;
        for run in 1..=5 {
            let mut request =
                start_request(&run.to_string(), if run % 2 == 0 { "even" } else { "odd" });
            request.tracing.as_mut().expect("tracing").dataset_id =
                if run <= 3 { "1" } else { "2" }.into();
            client.log_run_start(request).await.expect("start");
        }
        client
            .log_epoch(epoch_request("2", "1", "0.3"))
            .await
            .expect("epoch");
        let all = client
            .list_runs(pb::ListRunsRequest::default())
            .await
            .expect("list")
            .into_inner();
        let ids: Vec<_> = all.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5"]);
        assert_eq!(all.total, 5);
        assert_eq!(all.runs[1].epochs.len(), 1);
        let tracing = all.runs[4].tracing.as_ref().expect("tracing");
        assert_eq!(tracing.pretrained_model, PRETRAINED);

        let page = client
            .list_runs(pb::ListRunsRequest {
                limit: 2,
                index: 1,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        let ids: Vec<_> = page.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["2", "3"]);
        assert_eq!(page.total, 5);

        let filtered = client
            .list_runs(pb::ListRunsRequest {
                dataset_id: "1".into(),
                run_name: "odd".into(),
                ..Default::default()
            })
            .await
            .expect("filtered")
            .into_inner();
        let ids: Vec<_> = filtered.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["1", "3"]);
        assert_eq!(filtered.total, 2);
        running.stop().await;
    }
}

async fn collect_watch(mut client: Client, run_id: &str) -> Vec<pb::RunEvent> {
    let mut stream = client
        .watch_run(pb::GetRunStatusRequest {
            run_id: run_id.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    // An error ends the collection; callers assert on what arrived (an END event, or not).
    while let Ok(Some(event)) = stream.message().await {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn concurrent_watchers_see_state_every_epoch_in_order_and_the_end() {
    for backend in backends() {
        let env = env(backend).await;
        let mut running = start(&env).await;
        running
            .client
            .log_run_start(start_request("1", "watched"))
            .await
            .expect("start");
        running
            .client
            .log_epoch(epoch_request("1", "1", "0.1"))
            .await
            .expect("epoch 1");

        let first = tokio::spawn(collect_watch(running.client.clone(), "1"));
        let second = tokio::spawn(collect_watch(running.client.clone(), "1"));
        for epoch in 2..=6 {
            running
                .client
                .log_epoch(epoch_request(
                    "1",
                    &epoch.to_string(),
                    &format!("0.{epoch}"),
                ))
                .await
                .expect("epoch");
        }
        running
            .client
            .log_run_end(end_request("1", true, "done"))
            .await
            .expect("end");

        for watcher in [first, second] {
            let events = tokio::time::timeout(std::time::Duration::from_secs(20), watcher)
                .await
                .expect("stream closes after the end")
                .expect("watcher task");
            let kinds: Vec<_> = events.iter().map(|e| e.kind()).collect();
            assert_eq!(kinds.first(), Some(&pb::RunEventKind::Snapshot));
            assert_eq!(kinds.last(), Some(&pb::RunEventKind::End));
            // Epochs in the snapshot plus streamed epochs cover 1..=6 exactly once, in order.
            let snapshot = events[0].run_info.as_ref().expect("snapshot");
            let mut seen: Vec<u32> = snapshot
                .epochs
                .keys()
                .map(|k| k.parse().expect("numeric"))
                .collect();
            seen.sort_unstable();
            for event in &events[1..events.len() - 1] {
                assert_eq!(event.kind(), pb::RunEventKind::Epoch);
                seen.push(
                    event
                        .epoch
                        .as_ref()
                        .expect("epoch")
                        .epoch_id
                        .parse()
                        .expect("numeric"),
                );
            }
            assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
            let end = events
                .last()
                .and_then(|e| e.run_info.as_ref())
                .expect("end");
            assert!(end.success);
            assert_eq!(end.epochs.len(), 6);
        }

        // Watching a run that has ended gives its state and the end at once.
        let events = collect_watch(running.client.clone(), "1").await;
        let kinds: Vec<_> = events.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, [pb::RunEventKind::Snapshot, pb::RunEventKind::End]);
        running.stop().await;
    }
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let env = env(Backend::Sqlite).await;
    let mut running = start(&env).await;
    running
        .client
        .log_run_start(start_request("1", "x"))
        .await
        .expect("start");
    let watcher = tokio::spawn(collect_watch(running.client.clone(), "1"));
    // Wait until the watcher's snapshot has gone out by logging an epoch it must see... or not:
    // either way the stream must end once the server shuts down.
    running
        .client
        .log_epoch(epoch_request("1", "1", "0.1"))
        .await
        .expect("epoch");
    let stop = tokio::spawn(running.stop());
    let events = tokio::time::timeout(std::time::Duration::from_secs(20), watcher)
        .await
        .expect("stream ends on shutdown")
        .expect("task");
    assert!(!events.is_empty());
    tokio::time::timeout(std::time::Duration::from_secs(20), stop)
        .await
        .expect("server stops")
        .expect("stop task");
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_before_the_server_stops() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let env = env(Backend::Sqlite).await;
    let running = start(&env).await;
    let mut health = HealthClient::new(running.server.channel().await.expect("channel"));
    for service in ["", "metadata_store.MetadataStoreService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "metadata_store.MetadataStoreService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("first").expect("status");
    assert_eq!(first.status(), ServingStatus::Serving);
    running.server.shutdown.cancel();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("status change arrives")
        .expect("stream")
        .expect("message");
    assert_eq!(next.status(), ServingStatus::NotServing);
    running.stop().await;
}
