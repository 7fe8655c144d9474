//! training-service with the local backend, through real gRPC, against data-management and
//! metadata-store started in-process, with a trainer script that speaks the trainer contract
//! through grpcurl. Storage runs on SQLite and (with AUTOML_TEST_POSTGRES_URL) Postgres.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use automl_common::db::Backend;
use automl_common::testing::{
    DATA_MANAGEMENT, METADATA_STORE, Poll, TRAINING_SERVICE, TestCluster, assert_status, backends,
    grpcurl,
};
use automl_data_management::DataManagementConfig;
use automl_metadata_store::MetadataStoreConfig;
use automl_proto::data_management as dm;
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use automl_proto::metadata_store as ms;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::training as pb;
use automl_proto::training::training_service_client::TrainingServiceClient;
use automl_text_classification::pretrained;
use automl_training_service::TrainingConfig;
use automl_training_service::config::AlgorithmConfig;
use automl_training_service::service::Training;
use tonic::Code;
use tonic::transport::Channel;

/// A trainer that follows the contract: LogRunStart, prints its environment, sleeps `SLEEP`,
/// LogRunEnd, exits `EXIT_CODE` (after the error line `FAIL_WITH`, as automl-train writes
/// it). Each start and end is appended to `$TRACE`.
fn trainer_script(dir: &Path) -> PathBuf {
    let path = dir.join("fake-trainer.sh");
    let grpcurl = grpcurl();
    let script = format!(
        r#"#!/bin/sh
echo "start $JOB_ID $(date +%s%N)" >> "$TRACE"
{grpcurl} -plaintext -d "{{\"run_id\":\"$JOB_ID\",\"run_name\":\"$MODEL_NAME\"}}" "$METADATA_STORE_SERVER" metadata_store.MetadataStoreService/LogRunStart >/dev/null
echo "JOB_ID=$JOB_ID"
echo "ALGORITHM_NAME=$ALGORITHM_NAME"
echo "TRAINING_DATA_BUCKET=$TRAINING_DATA_BUCKET"
echo "TRAINING_DATA_PATH=$TRAINING_DATA_PATH"
echo "TRAINING_DATASET_VERSION_HASH=$TRAINING_DATASET_VERSION_HASH"
echo "MINIO_SERVER=$MINIO_SERVER"
echo "MODEL_BUCKET=$MODEL_BUCKET"
echo "EPOCHS=$EPOCHS LR=$LR"
echo "PRETRAINED_MODEL=$PRETRAINED_MODEL DEVICE=$DEVICE ARGS=$*"
echo "MINIO_SERVER_ACCESS_KEY=${{MINIO_SERVER_ACCESS_KEY-unset}} MINIO_SERVER_SECRET_KEY=${{MINIO_SERVER_SECRET_KEY-unset}}"
echo "AUTOML_OBJECT_GRANTS=$AUTOML_OBJECT_GRANTS"
sleep "${{SLEEP:-0.1}}"
[ -z "$FAIL_WITH" ] || echo "automl-train: error: $FAIL_WITH" >&2
code="${{EXIT_CODE:-0}}"
if [ "$code" = 0 ]; then
  {grpcurl} -plaintext -d "{{\"run_id\":\"$JOB_ID\",\"success\":true,\"message\":\"test accuracy 0.900\"}}" "$METADATA_STORE_SERVER" metadata_store.MetadataStoreService/LogRunEnd >/dev/null
fi
echo "end $JOB_ID $(date +%s%N)" >> "$TRACE"
exit "$code"
"#,
        grpcurl = grpcurl.display()
    );
    write_executable(&path, &script);
    path
}

/// Writes `script` to `path`, executable.
fn write_executable(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, script).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The name a second training-service on the same database runs under.
const REPLICA: &str = "training-service-replica";

#[path = "training/experiments.rs"]
mod experiments;
#[path = "training/kube_api.rs"]
mod kube_api;
#[path = "training/kubernetes.rs"]
mod kubernetes;
#[path = "training/scheduling.rs"]
mod scheduling;

struct Cluster {
    /// data-management, metadata-store and training-service (and replicas) over one
    /// environment.
    services: TestCluster,
    config: TrainingConfig,
    data: DataManagementServiceClient<Channel>,
    metadata: MetadataStoreServiceClient<Channel>,
    client: TrainingServiceClient<Channel>,
    trace: PathBuf,
    /// The first training-service, for calls on other tenants' behalf.
    service: Arc<Training>,
}

/// A training-service named `name` in `services`, with `config`; `data_dir` replaces the
/// environment's (a replica's own).
async fn start_training(
    services: &TestCluster,
    name: &str,
    config: &TrainingConfig,
    data_dir: Option<PathBuf>,
) -> Arc<Training> {
    services
        .start(name, |mut ctx| async move {
            if let Some(dir) = data_dir {
                ctx.common.data_dir = dir;
            }
            let s3_endpoint = ctx.objects.endpoint.clone();
            automl_training_service::start(&ctx.common, config, &s3_endpoint, ctx.shutdown).await
        })
        .await
}

impl Cluster {
    async fn start(backend: Backend, max_concurrent_jobs: i64) -> Self {
        Self::start_with(backend, max_concurrent_jobs, |_| {}).await
    }

    /// A cluster whose training-service configuration `customize` adjusts.
    async fn start_with(
        backend: Backend,
        max_concurrent_jobs: i64,
        customize: impl FnOnce(&mut TrainingConfig),
    ) -> Self {
        let services = TestCluster::new(backend).await;
        services
            .start(DATA_MANAGEMENT, |ctx| async move {
                let config = DataManagementConfig::default();
                automl_data_management::start(&ctx.common, &config, ctx.objects, ctx.shutdown).await
            })
            .await;
        services
            .start(METADATA_STORE, |ctx| async move {
                let config = MetadataStoreConfig::default();
                automl_metadata_store::start(&ctx.common, &config, ctx.objects, ctx.shutdown).await
            })
            .await;
        let script = trainer_script(services.env.path());
        let mut config = TrainingConfig {
            data_management: services.endpoint(DATA_MANAGEMENT),
            metadata_store: services.endpoint(METADATA_STORE),
            max_concurrent_jobs,
            poll_interval_ms: 200,
            algorithms: BTreeMap::from([(
                "intent-classification".to_string(),
                AlgorithmConfig {
                    command: script.display().to_string(),
                    ..AlgorithmConfig::default()
                },
            )]),
            ..TrainingConfig::default()
        };
        customize(&mut config);
        let service = start_training(&services, TRAINING_SERVICE, &config, None).await;
        let trace = services.env.path().join("trace.txt");
        let mut cluster = Self {
            data: services.data_client().await,
            metadata: services.metadata_client().await,
            client: services.training_client().await,
            services,
            config,
            trace,
            service,
        };
        cluster.dataset().await;
        cluster
    }

    /// Another training-service on the same database (a second replica); its own data dir.
    async fn replica(&mut self) {
        let data_dir = self.services.env.path().join("replica");
        start_training(&self.services, REPLICA, &self.config, Some(data_dir)).await;
    }

    /// Stops training-service (its scheduler, watches and server), runs `while_down`, and
    /// starts it again on the same database, as after a crash or a rolling update.
    async fn restart_training_stopped(&mut self, while_down: impl FnOnce()) {
        self.services.stop_service(TRAINING_SERVICE).await;
        while_down();
        self.service = start_training(&self.services, TRAINING_SERVICE, &self.config, None).await;
        self.client = self.services.training_client().await;
    }

    /// Dataset 1 with a READY snapshot hashAg==.
    async fn dataset(&mut self) {
        self.services
            .env
            .objects
            .put_bytes(
                &self.services.env.objects.datasets_bucket,
                "upload/a.csv",
                b"book a flight,travel\n".to_vec(),
            )
            .await
            .expect("upload");
        self.data
            .create_dataset(dm::CreateDatasetRequest {
                name: "d".into(),
                dataset_type: dm::DatasetType::TextIntent.into(),
                path: "upload/a.csv".into(),
                ..Default::default()
            })
            .await
            .expect("create");
        self.data
            .prepare_training_dataset(dm::DatasetQuery {
                dataset_id: "1".into(),
                ..Default::default()
            })
            .await
            .expect("prepare");
        let mut poll = Poll::new("snapshot hashAg== READY", Duration::from_secs(30));
        loop {
            let snapshot = self
                .data
                .fetch_training_dataset(dm::VersionQuery {
                    dataset_id: "1".into(),
                    version_hash: "hashAg==".into(),
                })
                .await
                .expect("fetch")
                .into_inner();
            if snapshot.state() == dm::SnapshotState::Ready {
                return;
            }
            poll.tick().await;
        }
    }

    fn job(&self, parameters: &[(&str, &str)]) -> pb::TrainRequest {
        let mut params: HashMap<String, String> = HashMap::from([
            ("LR".to_string(), "4".to_string()),
            ("EPOCHS".to_string(), "15".to_string()),
            ("BATCH_SIZE".to_string(), "64".to_string()),
            ("FC_SIZE".to_string(), "128".to_string()),
            ("TRACE".to_string(), self.trace.display().to_string()),
        ]);
        for (key, value) in parameters {
            params.insert(key.to_string(), value.to_string());
        }
        pb::TrainRequest {
            metadata: Some(pb::TrainingJobMetadata {
                algorithm: "intent-classification".into(),
                dataset_id: "1".into(),
                name: "test".into(),
                train_data_version_hash: "hashAg==".into(),
                parameters: params,
                output_model_name: "intent".into(),
                ..Default::default()
            }),
        }
    }

    async fn train(&mut self, parameters: &[(&str, &str)]) -> i32 {
        let request = self.job(parameters);
        self.submit(request).await
    }

    /// A job with these parameters and resources.
    async fn train_with(&mut self, parameters: &[(&str, &str)], resources: pb::Resources) -> i32 {
        let mut request = self.job(parameters);
        if let Some(metadata) = request.metadata.as_mut() {
            metadata.resources = Some(resources);
        }
        self.submit(request).await
    }

    async fn submit(&mut self, request: pb::TrainRequest) -> i32 {
        self.client
            .train(request)
            .await
            .expect("train")
            .into_inner()
            .job_id
    }

    async fn status(&mut self, job_id: i32) -> pb::GetTrainingStatusResponse {
        self.client
            .get_training_status(pb::GetTrainingStatusRequest { job_id })
            .await
            .expect("status")
            .into_inner()
    }

    /// Waits until job `job_id` is `want`; its status then.
    async fn wait_status(
        &mut self,
        job_id: i32,
        want: pb::TrainingStatus,
    ) -> pb::GetTrainingStatusResponse {
        let mut poll = Poll::new(format!("job {job_id} {want:?}"), Duration::from_secs(30));
        loop {
            let status = self.status(job_id).await;
            if status.status() == want {
                return status;
            }
            poll.tick_with(format!("{:?} ({})", status.status(), status.message))
                .await;
        }
    }

    async fn wait_final(&mut self, job_id: i32) -> pb::GetTrainingStatusResponse {
        let mut poll = Poll::new(format!("job {job_id} ends"), Duration::from_secs(60));
        loop {
            let status = self.status(job_id).await;
            if matches!(
                status.status(),
                pb::TrainingStatus::Succeed
                    | pb::TrainingStatus::Failure
                    | pb::TrainingStatus::Canceled
            ) {
                return status;
            }
            poll.tick().await;
        }
    }

    /// (job id, start ns, end ns) per job from the trace file.
    fn trace(&self) -> Vec<(i32, u128, u128)> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut starts = BTreeMap::new();
        let mut spans = Vec::new();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let (kind, id, at) = (
                parts[0],
                parts[1].parse::<i32>().expect("id"),
                parts[2].parse::<u128>().expect("ns"),
            );
            if kind == "start" {
                starts.insert(id, at);
            } else if let Some(start) = starts.get(&id) {
                spans.push((id, *start, at));
            }
        }
        spans.sort_by_key(|(_, start, _)| *start);
        spans
    }

    /// The whole log of a job that has ended.
    async fn log(&mut self, job_id: i32) -> String {
        let mut stream = self
            .client
            .get_training_logs(pb::GetTrainingLogsRequest {
                job_id,
                from_line: 0,
            })
            .await
            .expect("logs")
            .into_inner();
        let mut lines = Vec::new();
        while let Some(line) = stream.message().await.expect("log") {
            lines.push(line.text);
        }
        lines.join("\n")
    }

    async fn algorithms(&mut self) -> pb::ListAlgorithmsResponse {
        self.client
            .list_algorithms(pb::ListAlgorithmsRequest::default())
            .await
            .expect("list algorithms")
            .into_inner()
    }

    async fn stop(self) {
        self.services.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_with_the_trainer_environment_and_succeeds() {
    for backend in backends() {
        let mut cluster = Cluster::start(backend, 1).await;
        // Long enough that the watch below starts before the job ends.
        let job_id = cluster.train(&[("SLEEP", "1")]).await;
        let watcher = cluster.client.clone();
        let mut stream = watcher
            .clone()
            .watch_training_status(pb::GetTrainingStatusRequest { job_id })
            .await
            .expect("watch")
            .into_inner();
        let mut seen = Vec::new();
        while let Some(update) = stream.message().await.expect("stream") {
            seen.push(update.status());
        }
        assert_eq!(seen.last(), Some(&pb::TrainingStatus::Succeed), "{seen:?}");
        assert!(seen.contains(&pb::TrainingStatus::Running), "{seen:?}");
        let done = cluster.status(job_id).await;
        assert_eq!(done.message, "test accuracy 0.900");

        let mut logs = cluster
            .client
            .get_training_logs(pb::GetTrainingLogsRequest {
                job_id,
                from_line: 0,
            })
            .await
            .expect("logs")
            .into_inner();
        let mut lines = Vec::new();
        while let Some(line) = logs.message().await.expect("log") {
            lines.push(line.text);
        }
        let text = lines.join("\n");
        for expected in [
            format!("JOB_ID={job_id}"),
            "ALGORITHM_NAME=intent-classification".to_string(),
            "TRAINING_DATA_PATH=versionedDatasets/1/hashAg==".to_string(),
            format!(
                "TRAINING_DATA_BUCKET={}",
                cluster.services.env.objects.datasets_bucket
            ),
            format!(
                "MODEL_BUCKET={}",
                cluster.services.env.objects.models_bucket
            ),
            "EPOCHS=15 LR=4".to_string(),
        ] {
            assert!(text.contains(&expected), "{expected} in {text}");
        }
        let run = cluster
            .metadata
            .get_run_status(ms::GetRunStatusRequest {
                run_id: job_id.to_string(),
            })
            .await
            .expect("run")
            .into_inner()
            .run_info
            .expect("run_info");
        assert!(run.success);
        cluster.stop().await;
    }
}

/// The built-in algorithm's trainer gets no S3 key, only presigned URLs of its own objects: its
/// snapshot can be read through its grant, while the same URL edited to another tenant's
/// snapshot or another run's folder, and an unsigned request, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_gets_grants_for_its_own_objects_and_no_s3_keys() {
    use automl_common::s3::grants::{GRANTS_ENV, Method, ObjectGrants};
    use automl_common::testing::http_request;
    let mut cluster = Cluster::start(backends()[0], 1).await;
    let job_id = cluster.train(&[]).await;
    let done = cluster.wait_final(job_id).await;
    assert_eq!(
        done.status(),
        pb::TrainingStatus::Succeed,
        "{}",
        done.message
    );
    let log = cluster.log(job_id).await;
    let s3 = &cluster.services.env.common.s3;
    assert!(
        log.contains("MINIO_SERVER_ACCESS_KEY=unset MINIO_SERVER_SECRET_KEY=unset"),
        "{log}"
    );
    assert!(
        !log.contains(&s3.secret_key),
        "the S3 secret reached the trainer"
    );
    let document = log
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{GRANTS_ENV}=")))
        .expect("grants in the environment");
    let grants = ObjectGrants::from_json(document).expect("grants document");
    assert!(!grants.expires_at.is_empty());
    let objects = &cluster.services.env.objects;
    let snapshot = "versionedDatasets/1/hashAg==/examples.csv";
    let grant = grants
        .find(Method::Get, &objects.datasets_bucket, snapshot)
        .expect("a grant for the snapshot");
    assert!(
        grant
            .url
            .starts_with(&format!("http://{}/", cluster.services.env.s3_host_port()))
    );
    let own_run = format!("run_{job_id}/manifest.json");
    let put = grants
        .find(Method::Put, &objects.models_bucket, &own_run)
        .expect("a grant for the run's artifact");
    // Nothing else is writable.
    for grant in &grants.grants {
        if grant.method == Method::Put {
            assert!(
                grant.key.starts_with(&format!("run_{job_id}/")),
                "{grant:?}"
            );
        }
    }

    let (status, body) = http_request("GET", &grant.url, b"").await.expect("get");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("book a flight"));
    // Another tenant's snapshot of the same dataset and version.
    let other_tenant = grant
        .url
        .replace("/versionedDatasets/", "/team-b/versionedDatasets/");
    assert_ne!(other_tenant, grant.url);
    let (status, _) = http_request("GET", &other_tenant, b"").await.expect("get");
    assert_eq!(status, 403);
    // Another run's folder.
    let other_run = put.url.replace(&format!("/run_{job_id}/"), "/run_999/");
    assert_ne!(other_run, put.url);
    let (status, _) = http_request("PUT", &other_run, b"{}").await.expect("put");
    assert_eq!(status, 403);
    let (status, _) = http_request("PUT", &put.url, b"{}").await.expect("put");
    assert_eq!(status, 200);
    // No signature at all.
    let unsigned = grant.url.split('?').next().expect("url").to_string();
    let (status, _) = http_request("GET", &unsigned, b"").await.expect("get");
    assert_eq!(status, 403);
    cluster.stop().await;
}

/// An algorithm marked `raw_s3_access` (an image that talks S3 itself) gets the keys and no
/// grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_s3_access_trainer_gets_the_keys() {
    let mut cluster = Cluster::start_with(backends()[0], 1, |config| {
        for algorithm in config.algorithms.values_mut() {
            algorithm.raw_s3_access = true;
        }
    })
    .await;
    let job_id = cluster.train(&[]).await;
    let done = cluster.wait_final(job_id).await;
    assert_eq!(
        done.status(),
        pb::TrainingStatus::Succeed,
        "{}",
        done.message
    );
    let log = cluster.log(job_id).await;
    let s3 = &cluster.services.env.common.s3;
    assert!(
        log.contains(&format!(
            "MINIO_SERVER_ACCESS_KEY={} MINIO_SERVER_SECRET_KEY={}",
            s3.access_key, s3.secret_key
        )),
        "{log}"
    );
    assert!(
        log.lines().any(|line| line == "AUTOML_OBJECT_GRANTS="),
        "{log}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_order_within_the_concurrency_limit() {
    for limit in [1, 2] {
        let mut cluster = Cluster::start(Backend::Sqlite, limit).await;
        let mut jobs = vec![cluster.train(&[("SLEEP", "0.6")]).await];
        if limit == 1 {
            // The first job holds the only slot before the others arrive.
            cluster
                .wait_status(jobs[0], pb::TrainingStatus::Running)
                .await;
        }
        for _ in 1..5 {
            jobs.push(cluster.train(&[("SLEEP", "0.6")]).await);
        }
        if limit == 1 {
            // While the first runs, the other four wait in order.
            let mut positions = Vec::new();
            for job in &jobs[1..] {
                let status = cluster.status(*job).await;
                if status.status() == pb::TrainingStatus::Queuing {
                    positions.push(status.position_in_queue);
                    assert_eq!(
                        status.message,
                        format!(
                            "Queueing, there are {} training jobs waiting before this.",
                            status.position_in_queue
                        )
                    );
                }
            }
            assert_eq!(positions, [0, 1, 2, 3]);
        }
        for job in &jobs {
            assert_eq!(
                cluster.wait_final(*job).await.status(),
                pb::TrainingStatus::Succeed
            );
        }
        let spans = cluster.trace();
        let order: Vec<i32> = spans.iter().map(|(id, _, _)| *id).collect();
        if limit == 1 {
            assert_eq!(order, jobs);
        } else {
            // Jobs launched together start their processes in either order; none starts
            // before a job that was queued more than `limit - 1` places ahead of it.
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, jobs);
            for (place, id) in order.iter().enumerate() {
                let queued = jobs.iter().position(|j| j == id).unwrap_or(usize::MAX);
                assert!(
                    queued < place + usize::try_from(limit).unwrap_or(1),
                    "job {id} started out of FIFO order: {order:?}"
                );
            }
        }
        let most_at_once = spans
            .iter()
            .map(|(_, start, _)| {
                spans
                    .iter()
                    .filter(|(_, s, e)| s <= start && start < e)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert_eq!(most_at_once as i64, limit, "{spans:?}");
        cluster.stop().await;
    }
}

fn pid_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_running_jobs_can_be_canceled() {
    let mut cluster = Cluster::start(Backend::Sqlite, 1).await;
    let running = cluster.train(&[("SLEEP", "30")]).await;
    let queued = cluster.train(&[]).await;
    cluster
        .wait_status(running, pb::TrainingStatus::Running)
        .await;
    let canceled = cluster
        .client
        .cancel_training_job(pb::GetTrainingStatusRequest { job_id: queued })
        .await
        .expect("cancel queued")
        .into_inner();
    assert_eq!(canceled.status(), pb::TrainingStatus::Canceled);
    // This cluster's own script (its path is in this test's temp dir), never another test's.
    let script = cluster.services.env.path().join("fake-trainer.sh");
    let ps = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(&script)
        .output()
        .expect("pgrep");
    let pids: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!pids.is_empty(), "the trainer runs");
    let canceled = cluster
        .client
        .cancel_training_job(pb::GetTrainingStatusRequest { job_id: running })
        .await
        .expect("cancel running")
        .into_inner();
    assert_eq!(canceled.status(), pb::TrainingStatus::Canceled);
    let mut poll = Poll::new("the trainer process is gone", Duration::from_secs(10));
    while pids.iter().any(|pid| pid_alive(pid)) {
        poll.tick().await;
    }
    assert_eq!(
        cluster.status(running).await.status(),
        pb::TrainingStatus::Canceled
    );
    assert_status(
        cluster
            .client
            .cancel_training_job(pb::GetTrainingStatusRequest { job_id: running })
            .await,
        Code::FailedPrecondition,
        "already ended",
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_why() {
    for backend in backends() {
        let mut cluster = Cluster::start(backend, 1).await;
        let failing = cluster.train(&[("EXIT_CODE", "1")]).await;
        let status = cluster.wait_final(failing).await;
        assert_eq!(status.status(), pb::TrainingStatus::Failure);
        assert_eq!(status.message, "exit code 1");
        // The trainer's own error line, when it wrote one, goes with the exit code.
        let explained = cluster
            .train(&[("EXIT_CODE", "1"), ("FAIL_WITH", "bad snapshot: no labels")])
            .await;
        let status = cluster.wait_final(explained).await;
        assert_eq!(status.message, "exit code 1: bad snapshot: no labels");
        let run = cluster
            .metadata
            .get_run_status(ms::GetRunStatusRequest {
                run_id: failing.to_string(),
            })
            .await
            .expect("run")
            .into_inner()
            .run_info
            .expect("run_info");
        assert!(!run.success);
        assert!(!run.end_time.is_empty(), "the run was ended");

        let mut unknown = cluster.job(&[]);
        unknown.metadata.as_mut().expect("metadata").algorithm = "nope".into();
        assert_status(
            cluster.client.train(unknown).await,
            Code::InvalidArgument,
            "nope",
        );
        let mut missing = cluster.job(&[]);
        missing
            .metadata
            .as_mut()
            .expect("metadata")
            .output_model_name
            .clear();
        assert_status(
            cluster.client.train(missing).await,
            Code::InvalidArgument,
            "output_model_name",
        );
        let mut no_version = cluster.job(&[]);
        no_version
            .metadata
            .as_mut()
            .expect("metadata")
            .train_data_version_hash = "hashQQ==".into();
        assert_status(
            cluster.client.train(no_version).await,
            Code::NotFound,
            "hashQQ==",
        );
        assert_status(
            cluster
                .client
                .get_training_status(pb::GetTrainingStatusRequest { job_id: 999 })
                .await,
            Code::NotFound,
            "job 999",
        );

        // A snapshot whose build failed fails the job with that reason.
        cluster
            .services
            .env
            .objects
            .delete_prefix(
                &cluster.services.env.objects.datasets_bucket,
                "dataset/1/commit/1/examples",
            )
            .await
            .expect("break the commit");
        cluster
            .services
            .env
            .objects
            .put_bytes(
                &cluster.services.env.objects.datasets_bucket,
                "upload/b.csv",
                b"play music,music\n".to_vec(),
            )
            .await
            .expect("upload");
        cluster
            .data
            .update_dataset(dm::CreateCommitRequest {
                dataset_id: "1".into(),
                path: "upload/b.csv".into(),
                ..Default::default()
            })
            .await
            .expect("commit 2");
        cluster
            .data
            .prepare_training_dataset(dm::DatasetQuery {
                dataset_id: "1".into(),
                ..Default::default()
            })
            .await
            .expect("prepare");
        let mut broken = cluster.job(&[]);
        broken
            .metadata
            .as_mut()
            .expect("metadata")
            .train_data_version_hash = "hashBg==".into();
        let job = cluster
            .client
            .train(broken)
            .await
            .expect("train")
            .into_inner()
            .job_id;
        let status = cluster.wait_final(job).await;
        assert_eq!(status.status(), pb::TrainingStatus::Failure);
        assert!(
            status.message.starts_with("snapshot FAILED"),
            "{}",
            status.message
        );
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_filters_by_status() {
    let mut cluster = Cluster::start(Backend::Sqlite, 1).await;
    let first = cluster.train(&[]).await;
    cluster.wait_final(first).await;
    let second = cluster.train(&[("EXIT_CODE", "3")]).await;
    cluster.wait_final(second).await;
    let all = cluster
        .client
        .list_training_jobs(pb::ListTrainingJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.total, 2);
    let failed = cluster
        .client
        .list_training_jobs(pb::ListTrainingJobsRequest {
            statuses: vec![pb::TrainingStatus::Failure.into()],
            ..Default::default()
        })
        .await
        .expect("list failed")
        .into_inner();
    assert_eq!(failed.jobs.len(), 1);
    assert_eq!(failed.jobs[0].job_id, second);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_filters_by_ids_within_the_tenant() {
    for backend in backends() {
        let mut cluster = Cluster::start(backend, 1).await;
        let first = cluster.train(&[]).await;
        cluster.wait_final(first).await;
        let second = cluster.train(&[("EXIT_CODE", "3")]).await;
        cluster.wait_final(second).await;
        let third = cluster.train(&[]).await;
        cluster.wait_final(third).await;
        let spec = automl_training_service::model::JobSpec {
            algorithm: "intent-classification".into(),
            dataset_id: "1".into(),
            name: "theirs".into(),
            train_data_version_hash: "hashAg==".into(),
            parameters: BTreeMap::from([(
                "TRACE".to_string(),
                cluster.trace.display().to_string(),
            )]),
            output_model_name: "intent".into(),
            ..Default::default()
        };
        let theirs = cluster
            .service
            .submit("team-b", spec)
            .await
            .expect("submit");
        let theirs = i32::try_from(theirs).expect("job id");
        let request = |job_ids: &[i32], statuses: &[pb::TrainingStatus], limit, index| {
            pb::ListTrainingJobsRequest {
                limit,
                index,
                statuses: statuses.iter().map(|s| (*s).into()).collect(),
                job_ids: job_ids.to_vec(),
            }
        };
        let mut list = async |request| {
            let listed = cluster
                .client
                .list_training_jobs(request)
                .await
                .expect("list")
                .into_inner();
            let ids: Vec<i32> = listed.jobs.iter().map(|job| job.job_id).collect();
            (ids, listed.total)
        };
        // Another tenant's job and an unknown id are left out; the order stays by id.
        assert_eq!(
            list(request(&[third, theirs, first, 9999], &[], 0, 0)).await,
            (vec![first, third], 2)
        );
        assert_eq!(
            list(request(
                &[first, second],
                &[pb::TrainingStatus::Failure],
                0,
                0
            ))
            .await,
            (vec![second], 1)
        );
        assert_eq!(
            list(request(&[first, second, third], &[], 1, 1)).await,
            (vec![second], 3)
        );
        assert_eq!(
            list(request(&[], &[], 0, 0)).await,
            (vec![first, second, third], 3)
        );
        assert_eq!(list(request(&[theirs], &[], 0, 0)).await, (vec![], 0));
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_run_every_job_exactly_once() {
    for backend in backends() {
        if backend != Backend::Postgres {
            // Replicas share a database server; a SQLite file is one process's.
            continue;
        }
        let mut cluster = Cluster::start(backend, 3).await;
        cluster.replica().await;
        let mut jobs = Vec::new();
        for _ in 0..20 {
            jobs.push(cluster.train(&[("SLEEP", "0.05")]).await);
        }
        for job in &jobs {
            assert_eq!(
                cluster.wait_final(*job).await.status(),
                pb::TrainingStatus::Succeed
            );
        }
        let text = std::fs::read_to_string(&cluster.trace).expect("trace");
        let mut started: Vec<i32> = text
            .lines()
            .filter_map(|line| line.strip_prefix("start "))
            .map(|rest| rest.split(' ').next().expect("id").parse().expect("number"))
            .collect();
        started.sort_unstable();
        assert_eq!(started, jobs, "every job started exactly once");
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_with_a_pretrained_model_waits_for_its_import() {
    let encoder = "intent-classification-encoder";
    let mut cluster = Cluster::start_with(Backend::Sqlite, 1, |config| {
        let classic = config.algorithms["intent-classification"].clone();
        config.algorithms.insert(
            encoder.to_string(),
            AlgorithmConfig {
                args: vec!["--mode".into(), "head".into()],
                pretrained: pretrained::ENCODER_NAME.into(),
                ..classic
            },
        );
    })
    .await;

    // Not imported: not ready, not the default, and refused at submission.
    let listed = cluster.algorithms().await;
    assert_eq!(listed.default_algorithm, "intent-classification");
    let names: Vec<&str> = listed.algorithms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["intent-classification", encoder]);
    let waiting = &listed.algorithms[1];
    assert_eq!(waiting.pretrained_model, pretrained::ENCODER_NAME);
    assert!(!waiting.ready);
    assert!(
        waiting.message.contains("automl pretrained import"),
        "{}",
        waiting.message
    );
    assert!(listed.algorithms[0].ready);
    let mut request = cluster.job(&[]);
    if let Some(metadata) = request.metadata.as_mut() {
        metadata.algorithm = encoder.into();
    }
    let refused = cluster.client.train(request.clone()).await;
    assert_status(
        refused,
        Code::FailedPrecondition,
        "algorithm intent-classification-encoder needs the pretrained model all-minilm-l6-v2: \
         import it with `automl pretrained import`",
    );
    let mut reserved = cluster.job(&[("PRETRAINED_MODEL", "x@y")]);
    if let Some(metadata) = reserved.metadata.as_mut() {
        metadata.algorithm = encoder.into();
    }
    assert_status(
        cluster.client.train(reserved).await,
        Code::InvalidArgument,
        "PRETRAINED_MODEL",
    );

    let files = cluster.services.env.path().join("encoder-files");
    std::fs::create_dir_all(&files).expect("dir");
    for name in pretrained::FILES {
        std::fs::write(files.join(name), format!("{name} contents")).expect("file");
    }
    let objects = &cluster.services.env.objects;
    let imported = pretrained::import(
        objects,
        &objects.models_bucket,
        pretrained::ENCODER_NAME,
        &files,
        &mut |_, _| {},
    )
    .await
    .expect("import");
    let listed = cluster.algorithms().await;
    assert_eq!(listed.default_algorithm, encoder);
    assert!(
        listed
            .algorithms
            .iter()
            .all(|a| a.ready && a.message.is_empty())
    );

    // A GPU job: the import it builds on, the device, and the configured arguments.
    if let Some(metadata) = request.metadata.as_mut() {
        metadata.resources = Some(pb::Resources {
            gpus: 1,
            ..Default::default()
        });
    }
    let job_id = cluster
        .client
        .train(request.clone())
        .await
        .expect("train")
        .into_inner()
        .job_id;
    assert_eq!(
        cluster.wait_final(job_id).await.status(),
        pb::TrainingStatus::Succeed
    );
    let expected = format!(
        "PRETRAINED_MODEL={} DEVICE=cuda ARGS=--mode head",
        imported.id()
    );
    let log = cluster.log(job_id).await;
    assert!(log.contains(&expected), "{expected} in {log}");

    // Its parameters choose the device; an algorithm without a pretrained model gets none.
    if let Some(metadata) = request.metadata.as_mut() {
        metadata.parameters.insert("DEVICE".into(), "cpu".into());
    }
    let job_id = cluster
        .client
        .train(request)
        .await
        .expect("train")
        .into_inner()
        .job_id;
    cluster.wait_final(job_id).await;
    let log = cluster.log(job_id).await;
    assert!(log.contains("DEVICE=cpu ARGS=--mode head"), "{log}");
    let classic = cluster.train(&[]).await;
    cluster.wait_final(classic).await;
    let log = cluster.log(classic).await;
    assert!(log.contains("PRETRAINED_MODEL= DEVICE= ARGS="), "{log}");
    cluster.stop().await;
}
