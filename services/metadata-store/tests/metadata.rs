//! metadata-store through real gRPC on 127.0.0.1:0, against SQLite and (when
//! AUTOML_TEST_POSTGRES_URL is set) Postgres, with objects in the embedded S3 endpoint.

use std::collections::HashMap;

use automl_common::db::{Backend, Database};
use automl_common::testing::{METADATA_STORE, TestCluster, TestEnv, assert_status, backends};
use automl_metadata_store::MetadataStoreConfig;
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use sqlx::Row;
use tonic::Code;
use tonic::transport::Channel;

type Client = MetadataStoreServiceClient<Channel>;

/// metadata-store in `cluster`, its watches polling every 200 ms; its client.
async fn start(cluster: &TestCluster) -> Client {
    let config = MetadataStoreConfig {
        watch_poll_interval_ms: 200,
        ..MetadataStoreConfig::default()
    };
    cluster
        .start(METADATA_STORE, |ctx| async move {
            automl_metadata_store::start(&ctx.common, &config, ctx.objects, ctx.shutdown).await
        })
        .await;
    cluster.metadata_client().await
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
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut ms = start(&cluster).await;
        let client = &mut ms;

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
        cluster.stop().await;
    }
}

#[tokio::test]
async fn duplicates_are_already_exists_and_change_nothing() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
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
        cluster.stop().await;
    }
}

#[tokio::test]
async fn retried_calls_with_the_same_content_succeed_and_record_once() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
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

        put_model_files(env, "7").await;
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
        cluster.stop().await;
    }
}

#[tokio::test]
async fn unknown_runs_are_not_found() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
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
        put_model_files(env, "404").await;
        assert_status(
            client
                .create_artifact(artifact_request("404", "intent", "run_404"))
                .await,
            Code::NotFound,
            "run 404",
        );
        cluster.stop().await;
    }
}

#[tokio::test]
async fn missing_and_malformed_fields_are_invalid_argument() {
    let cluster = TestCluster::new(Backend::Sqlite).await;
    let mut ms = start(&cluster).await;
    let client = &mut ms;
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
    cluster.stop().await;
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
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
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
        put_model_files(env, "1").await;
        put_model_files(env, "2").await;
        put_model_files(env, "3").await;

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
        cluster.stop().await;
    }
}

#[tokio::test]
async fn everything_survives_a_restart() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut ms = start(&cluster).await;
        ms.log_run_start(start_request("1", "demo"))
            .await
            .expect("start");
        for epoch in 1..=3 {
            ms.log_epoch(epoch_request("1", &epoch.to_string(), "0.7"))
                .await
                .expect("epoch");
        }
        put_model_files(env, "1").await;
        ms.create_artifact(artifact_request("1", "intent", "run_1"))
            .await
            .expect("artifact");
        ms.log_run_end(end_request("1", true, "done"))
            .await
            .expect("end");
        cluster.stop_service(METADATA_STORE).await;

        let mut restarted = start(&cluster).await;
        let info = status(&mut restarted, "1").await.expect("status");
        assert_eq!(info.epochs.len(), 3);
        assert!(info.success);
        let artifact = restarted
            .get_artifact(pb::GetArtifactRequest { run_id: "1".into() })
            .await
            .expect("artifact")
            .into_inner();
        assert_eq!(artifact.version, "1");
        // Runs started after the restart keep working, and versions continue.
        restarted
            .log_run_start(start_request("2", "again"))
            .await
            .expect("start");
        put_model_files(env, "2").await;
        let second = restarted
            .create_artifact(artifact_request("2", "intent", "run_2"))
            .await
            .expect("artifact")
            .into_inner();
        assert_eq!(second.version, "2");
        cluster.stop().await;
    }
}

#[tokio::test]
async fn ended_runs_take_no_more_epochs() {
    let cluster = TestCluster::new(Backend::Sqlite).await;
    let mut ms = start(&cluster).await;
    let client = &mut ms;
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
    cluster.stop().await;
}

#[tokio::test]
async fn list_runs_filters_and_pages() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
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
        cluster.stop().await;
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
        let cluster = TestCluster::new(backend).await;
        let mut ms = start(&cluster).await;
        ms.log_run_start(start_request("1", "watched"))
            .await
            .expect("start");
        ms.log_epoch(epoch_request("1", "1", "0.1"))
            .await
            .expect("epoch 1");

        let first = tokio::spawn(collect_watch(ms.clone(), "1"));
        let second = tokio::spawn(collect_watch(ms.clone(), "1"));
        for epoch in 2..=6 {
            ms.log_epoch(epoch_request(
                "1",
                &epoch.to_string(),
                &format!("0.{epoch}"),
            ))
            .await
            .expect("epoch");
        }
        ms.log_run_end(end_request("1", true, "done"))
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
        let events = collect_watch(ms.clone(), "1").await;
        let kinds: Vec<_> = events.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, [pb::RunEventKind::Snapshot, pb::RunEventKind::End]);
        cluster.stop().await;
    }
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let cluster = TestCluster::new(Backend::Sqlite).await;
    let mut ms = start(&cluster).await;
    ms.log_run_start(start_request("1", "x"))
        .await
        .expect("start");
    let watcher = tokio::spawn(collect_watch(ms.clone(), "1"));
    // Wait until the watcher's snapshot has gone out by logging an epoch it must see... or not:
    // either way the stream must end once the server shuts down.
    ms.log_epoch(epoch_request("1", "1", "0.1"))
        .await
        .expect("epoch");
    let stop = tokio::spawn(cluster.stop());
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

    let cluster = TestCluster::new(Backend::Sqlite).await;
    start(&cluster).await;
    let mut health = HealthClient::new(cluster.channel(METADATA_STORE).await);
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
    cluster.shutdown(METADATA_STORE).cancel();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("status change arrives")
        .expect("stream")
        .expect("message");
    assert_eq!(next.status(), ServingStatus::NotServing);
    cluster.stop().await;
}

fn epoch_with(run_id: &str, epoch_id: &str, metrics: &[(&str, &str)]) -> pb::LogEpochRequest {
    pb::LogEpochRequest {
        epoch_info: Some(pb::EpochInfo {
            start_time: "2021-08-01T01:00:00Z".into(),
            end_time: "2021-08-01T01:30:00Z".into(),
            run_id: run_id.into(),
            epoch_id: epoch_id.into(),
            metrics: metrics
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        }),
    }
}

fn summary(last: f64, last_epoch: &str, best: f64, best_epoch: &str) -> pb::MetricSummary {
    pb::MetricSummary {
        last,
        last_epoch: last_epoch.into(),
        best,
        best_epoch: best_epoch.into(),
        lower_is_better: false,
    }
}

fn lower(mut summary: pb::MetricSummary) -> pb::MetricSummary {
    summary.lower_is_better = true;
    summary
}

#[tokio::test]
async fn summaries_keep_the_last_and_best_numeric_value_of_each_metric() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
        client
            .log_run_start(start_request("1", "summarized"))
            .await
            .expect("start");
        let epochs: [&[(&str, &str)]; 4] = [
            &[("val_loss", "0.9"), ("accuracy", "0.5"), ("note", "warmup")],
            &[
                ("val_loss", "0.4"),
                ("accuracy", "0.8"),
                ("note", "3"),
                ("Error", "7"),
            ],
            &[
                ("val_loss", "0.6"),
                ("accuracy", "0.7"),
                ("nan", "NaN"),
                ("Error", "2e0"),
            ],
            &[("note", "done"), ("big", "1e999")],
        ];
        for (i, metrics) in epochs.iter().enumerate() {
            client
                .log_epoch(epoch_with("1", &(i + 1).to_string(), metrics))
                .await
                .expect("epoch");
        }
        // A retried epoch changes nothing.
        client
            .log_epoch(epoch_with("1", "2", epochs[1]))
            .await
            .expect("retry");

        let expected = HashMap::from([
            ("val_loss".to_string(), lower(summary(0.6, "3", 0.4, "2"))),
            ("accuracy".to_string(), summary(0.7, "3", 0.8, "2")),
            // Non-numeric in epochs 1 and 4: only epoch 2 counts.
            ("note".to_string(), summary(3.0, "2", 3.0, "2")),
            ("Error".to_string(), lower(summary(2.0, "3", 2.0, "3"))),
        ]);
        let info = status(client, "1").await.expect("status");
        assert_eq!(info.metric_summaries, expected);
        assert_eq!(info.epoch_count, 4);

        let ended = client
            .log_run_end(end_request("1", true, "done"))
            .await
            .expect("end")
            .into_inner()
            .run_info
            .expect("run");
        assert_eq!(ended.metric_summaries, expected);
        assert_eq!(ended.epoch_count, 4);
        let events = collect_watch(ms.clone(), "1").await;
        assert_eq!(events.len(), 2);
        for event in &events {
            let run = event.run_info.as_ref().expect("run");
            assert_eq!(run.metric_summaries, expected);
            assert_eq!(run.epoch_count, 4);
        }
        let listed = ms
            .list_runs(pb::ListRunsRequest::default())
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.runs[0].metric_summaries, expected);
        cluster.stop().await;
    }
}

/// Five runs with distinct names, start times, durations, states and metrics; see the
/// expectations in `list_runs_orders_by_every_key_both_ways`.
async fn ordered_runs(client: &mut Client) {
    // id, name, start second, end (second, success) or running, epochs of (accuracy, loss).
    type Spec<'a> = (
        &'a str,
        &'a str,
        u32,
        Option<(u32, bool)>,
        &'a [(&'a str, &'a str)],
    );
    let runs: [Spec<'_>; 5] = [
        (
            "1",
            "charlie",
            5,
            Some((15, true)),
            &[("0.9", "0.5"), ("0.6", "0.3")],
        ),
        ("2", "alpha", 3, None, &[("0.5", "")]),
        (
            "3",
            "echo",
            1,
            Some((31, false)),
            &[("", "0.9"), ("", "1.2")],
        ),
        (
            "4",
            "bravo",
            4,
            Some((9, true)),
            &[("0.7", "0.4"), ("0.8", "")],
        ),
        ("5", "delta", 2, None, &[("0.2", ""), ("0.95", "")]),
    ];
    for (run_id, name, start, end, epochs) in runs {
        let mut request = start_request(run_id, name);
        request.start_time = format!("2021-08-01T00:00:{start:02}Z");
        client.log_run_start(request).await.expect("start");
        for (i, &(accuracy, loss)) in epochs.iter().enumerate() {
            let mut metrics = vec![("label", "not a number")];
            if !accuracy.is_empty() {
                metrics.push(("accuracy", accuracy));
            }
            if !loss.is_empty() {
                metrics.push(("loss", loss));
            }
            client
                .log_epoch(epoch_with(run_id, &(i + 1).to_string(), &metrics))
                .await
                .expect("epoch");
        }
        if let Some((end, success)) = end {
            let mut request = end_request(run_id, success, "over");
            request.end_time = format!("2021-08-01T00:00:{end:02}Z");
            client.log_run_end(request).await.expect("end");
        }
    }
}

async fn ordered_ids(client: &mut Client, order_by: &str, descending: bool) -> Vec<String> {
    let listed = client
        .list_runs(pb::ListRunsRequest {
            order_by: order_by.into(),
            descending,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|err| panic!("list by {order_by:?}: {err:?}"))
        .into_inner();
    assert_eq!(Ok(listed.runs.len()), usize::try_from(listed.total));
    listed.runs.into_iter().map(|run| run.run_id).collect()
}

#[tokio::test]
async fn list_runs_orders_by_every_key_both_ways() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
        ordered_runs(client).await;
        // Ties (same state, no duration, no metric) go by start order in the listing's
        // direction; runs without the key come last either way.
        let cases: [(&str, [&str; 5], [&str; 5]); 9] = [
            ("", ["1", "2", "3", "4", "5"], ["5", "4", "3", "2", "1"]),
            ("name", ["2", "4", "1", "5", "3"], ["3", "5", "1", "4", "2"]),
            (
                "start_time",
                ["3", "5", "2", "4", "1"],
                ["1", "4", "2", "5", "3"],
            ),
            (
                "duration",
                ["4", "1", "3", "2", "5"],
                ["3", "1", "4", "5", "2"],
            ),
            (
                "state",
                ["2", "5", "1", "4", "3"],
                ["3", "4", "1", "5", "2"],
            ),
            (
                "last:accuracy",
                ["2", "1", "4", "5", "3"],
                ["5", "4", "1", "2", "3"],
            ),
            (
                "best:accuracy",
                ["2", "4", "1", "5", "3"],
                ["5", "1", "4", "2", "3"],
            ),
            (
                "best:loss",
                ["1", "4", "3", "2", "5"],
                ["3", "4", "1", "5", "2"],
            ),
            (
                "last:absent",
                ["1", "2", "3", "4", "5"],
                ["5", "4", "3", "2", "1"],
            ),
        ];
        for (order_by, ascending, descending) in cases {
            assert_eq!(
                ordered_ids(client, order_by, false).await,
                ascending,
                "{order_by:?} ascending ({backend:?})"
            );
            assert_eq!(
                ordered_ids(client, order_by, true).await,
                descending,
                "{order_by:?} descending ({backend:?})"
            );
        }

        // Pages of a metric order cut the same listing anywhere, also across the boundary
        // between the runs with the metric and those without.
        for (order_by, descending) in [("best:accuracy", true), ("last:accuracy", false)] {
            let full = ordered_ids(client, order_by, descending).await;
            for limit in 1..=3 {
                for index in 0..=5 {
                    let page = client
                        .list_runs(pb::ListRunsRequest {
                            order_by: order_by.into(),
                            descending,
                            limit,
                            index,
                            ..Default::default()
                        })
                        .await
                        .expect("page")
                        .into_inner();
                    let ids: Vec<String> = page.runs.into_iter().map(|r| r.run_id).collect();
                    let start = (index as usize).min(full.len());
                    let end = (start + limit as usize).min(full.len());
                    assert_eq!(
                        ids,
                        full[start..end],
                        "{order_by} {limit}@{index} ({backend:?})"
                    );
                }
            }
        }

        // Paging applies after the order; filters still apply.
        let page = client
            .list_runs(pb::ListRunsRequest {
                order_by: "state".into(),
                limit: 2,
                index: 1,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        let ids: Vec<_> = page.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["5", "1"]);
        assert_eq!(page.total, 5);
        let named = client
            .list_runs(pb::ListRunsRequest {
                run_name: "bravo".into(),
                order_by: "best:loss".into(),
                descending: true,
                ..Default::default()
            })
            .await
            .expect("filtered")
            .into_inner();
        assert_eq!(named.total, 1);
        assert_eq!(named.runs[0].run_id, "4");
        assert_eq!(named.runs[0].metric_summaries["loss"].best, 0.4);

        // Without epochs: counts and summaries stay.
        let lean = client
            .list_runs(pb::ListRunsRequest {
                order_by: "best:accuracy".into(),
                descending: true,
                without_epochs: true,
                ..Default::default()
            })
            .await
            .expect("without epochs")
            .into_inner();
        let full = client
            .list_runs(pb::ListRunsRequest {
                order_by: "best:accuracy".into(),
                descending: true,
                ..Default::default()
            })
            .await
            .expect("with epochs")
            .into_inner();
        let counts: Vec<_> = lean.runs.iter().map(|r| r.epoch_count).collect();
        assert_eq!(counts, [2, 2, 2, 1, 2]);
        for (lean, full) in lean.runs.iter().zip(&full.runs) {
            assert!(lean.epochs.is_empty());
            assert_eq!(
                full.epochs.len(),
                usize::try_from(full.epoch_count).expect("count")
            );
            assert_eq!(lean.epoch_count, full.epoch_count);
            assert_eq!(lean.metric_summaries, full.metric_summaries);
            assert!(!lean.metric_summaries.contains_key("label"));
        }
        assert_eq!(
            full.runs[0].metric_summaries["accuracy"],
            summary(0.95, "2", 0.95, "2")
        );
        assert_eq!(
            full.runs[1].metric_summaries["loss"],
            lower(summary(0.3, "2", 0.3, "2"))
        );

        for (order_by, needle) in [
            ("size", "start_time"),
            ("NAME", "best:<metric>"),
            ("best:", "metric name"),
            ("last", "last:<metric>"),
        ] {
            assert_status(
                client
                    .list_runs(pb::ListRunsRequest {
                        order_by: order_by.into(),
                        ..Default::default()
                    })
                    .await,
                Code::InvalidArgument,
                needle,
            );
        }
        cluster.stop().await;
    }
}

#[tokio::test]
async fn migration_3_backfills_summaries_and_durations_from_existing_rows() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        // A database as version 2 left it, with runs and epochs logged before summaries.
        let old = Database::open(
            &env.common.database,
            &env.common.data_dir,
            automl_metadata_store::SERVICE,
            &automl_metadata_store::MIGRATIONS[..2],
        )
        .await
        .expect("version 2");
        let runs = [
            (
                "default",
                "1",
                "2021-08-01T00:00:00Z",
                "2021-08-01T00:01:00Z",
                1,
            ),
            (
                "default",
                "2",
                "2021-08-01T00:00:00Z",
                "2021-08-01T00:00:30.5Z",
                1,
            ),
            ("default", "3", "2021-08-01T00:00:00Z", "", 0),
            ("default", "4", "not a time", "2021-08-01T00:00:30Z", 1),
            (
                "team-a",
                "1",
                "2021-08-01T00:00:00Z",
                "2021-08-01T09:00:00Z",
                1,
            ),
        ];
        for (tenant, run_id, start, end, ended) in runs {
            sqlx::query(
                "INSERT INTO runs (tenant, run_id, run_name, start_time, end_time, success, \
                 ended, message) VALUES ($1, $2, 'old', $3, $4, $5, $5, 'm')",
            )
            .bind(tenant)
            .bind(run_id)
            .bind(start)
            .bind(end)
            .bind(i64::from(ended))
            .execute(&old.pool)
            .await
            .expect("run");
        }
        // Logged in this order (seq), interleaved across runs and tenants.
        let epochs = [
            (
                "default",
                "1",
                "a",
                r#"{"accuracy":"0.5","loss":"2.0","tag":"x"}"#,
            ),
            ("team-a", "1", "a", r#"{"accuracy":"0.99","loss":"0.01"}"#),
            ("default", "2", "a", r#"{"accuracy":"0.7"}"#),
            (
                "default",
                "1",
                "b",
                r#"{"accuracy":"0.9","loss":"1.0","tag":"NaN"}"#,
            ),
            ("default", "1", "c", r#"{"accuracy":"0.6","loss":"1.5"}"#),
            ("default", "3", "a", r#"{"tag":"y"}"#),
        ];
        for (tenant, run_id, epoch_id, metrics) in epochs {
            sqlx::query(
                "INSERT INTO epochs (tenant, run_id, epoch_id, start_time, end_time, metrics) \
                 VALUES ($1, $2, $3, '', '', $4)",
            )
            .bind(tenant)
            .bind(run_id)
            .bind(epoch_id)
            .bind(metrics)
            .execute(&old.pool)
            .await
            .expect("epoch");
        }
        old.close().await;

        let mut ms = start(&cluster).await;
        let client = &mut ms;
        let one = status(client, "1").await.expect("run 1");
        assert_eq!(
            one.metric_summaries,
            HashMap::from([
                ("accuracy".to_string(), summary(0.6, "c", 0.9, "b")),
                ("loss".to_string(), lower(summary(1.5, "c", 1.0, "b"))),
            ])
        );
        assert_eq!(one.epoch_count, 3);
        let two = status(client, "2").await.expect("run 2");
        assert_eq!(
            two.metric_summaries["accuracy"],
            summary(0.7, "a", 0.7, "a")
        );
        assert!(
            status(client, "3")
                .await
                .expect("run 3")
                .metric_summaries
                .is_empty()
        );
        assert_eq!(
            ordered_ids(client, "best:accuracy", true).await,
            ["1", "2", "4", "3"]
        );
        // Durations: 60 s, 30.5 s; run 3 has not ended, run 4's start is not a time.
        assert_eq!(
            ordered_ids(client, "duration", false).await,
            ["2", "1", "3", "4"]
        );
        assert_eq!(
            ordered_ids(client, "duration", true).await,
            ["1", "2", "4", "3"]
        );

        // New epochs fold into the backfilled rows; a restart does not backfill again.
        client
            .log_epoch(epoch_with("3", "b", &[("accuracy", "0.95")]))
            .await
            .expect("epoch");
        cluster.stop_service(METADATA_STORE).await;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
        assert_eq!(
            ordered_ids(client, "best:accuracy", true).await,
            ["3", "1", "2", "4"]
        );
        let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM run_backfills")
            .fetch_one(&cluster.database(METADATA_STORE).pool)
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
        assert_eq!(pending, 0);
        cluster.stop().await;
    }
}

fn artifact_ids(listed: &pb::ListArtifactsResponse) -> Vec<(&str, &str, &str)> {
    listed
        .artifacts
        .iter()
        .map(|a| (a.run_id.as_str(), a.name.as_str(), a.version.as_str()))
        .collect()
}

#[tokio::test]
async fn list_artifacts_newest_first_filtered_and_paged() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut ms = start(&cluster).await;
        let client = &mut ms;
        for (run, name) in [
            ("1", "intent"),
            ("2", "sentiment"),
            ("3", "intent"),
            ("4", "intent"),
        ] {
            client
                .log_run_start(start_request(run, "r"))
                .await
                .expect("start");
            put_model_files(env, run).await;
            client
                .create_artifact(artifact_request(run, name, &format!("run_{run}")))
                .await
                .expect("artifact");
            // Registration times are in milliseconds: keep them apart.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let list = |name: &str, limit: i32, index: i32| pb::ListArtifactsRequest {
            name: name.into(),
            limit,
            index,
        };
        let all = client
            .list_artifacts(list("", 0, 0))
            .await
            .expect("all")
            .into_inner();
        assert_eq!(all.total, 4);
        assert_eq!(
            artifact_ids(&all),
            [
                ("4", "intent", "3"),
                ("3", "intent", "2"),
                ("2", "sentiment", "1"),
                ("1", "intent", "1")
            ]
        );
        let times: Vec<&str> = all
            .artifacts
            .iter()
            .map(|a| a.created_at.as_str())
            .collect();
        assert!(times.windows(2).all(|w| w[0] > w[1]), "{times:?}");
        assert!(
            times.iter().all(|t| t.ends_with('Z') && t.len() == 24),
            "{times:?}"
        );
        let fetched = client
            .get_artifact(pb::GetArtifactRequest { run_id: "3".into() })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(fetched, all.artifacts[1]);
        assert_eq!(fetched.artifact.expect("file").path, "run_3");

        let page = client
            .list_artifacts(list("", 2, 1))
            .await
            .expect("page")
            .into_inner();
        assert_eq!(page.total, 4);
        assert_eq!(
            artifact_ids(&page),
            [("3", "intent", "2"), ("2", "sentiment", "1")]
        );
        let intents = client
            .list_artifacts(list("intent", 0, 0))
            .await
            .expect("intent")
            .into_inner();
        assert_eq!(intents.total, 3);
        assert_eq!(
            artifact_ids(&intents),
            [
                ("4", "intent", "3"),
                ("3", "intent", "2"),
                ("1", "intent", "1")
            ]
        );
        let last = client
            .list_artifacts(list("intent", 1, 2))
            .await
            .expect("last intent")
            .into_inner();
        assert_eq!(last.total, 3);
        assert_eq!(artifact_ids(&last), [("1", "intent", "1")]);
        let none = client
            .list_artifacts(list("other", 0, 0))
            .await
            .expect("none")
            .into_inner();
        assert_eq!(none.total, 0);
        assert!(none.artifacts.is_empty());
        assert_status(
            client.list_artifacts(list("", -1, 0)).await,
            Code::InvalidArgument,
            "limit",
        );
        assert_status(
            client.list_artifacts(list("", 0, -1)).await,
            Code::InvalidArgument,
            "index",
        );
        cluster.stop().await;
    }
}
