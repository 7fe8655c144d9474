//! prediction-service through real gRPC: a model trained here, its files in the embedded S3
//! endpoint, its artifact in a metadata-store started in-process.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automl_common::auth::{AuthConfig, Authenticator, Credentials, Scope};
use automl_common::db::Backend;
use automl_common::testing::{
    METADATA_STORE, PREDICTION_SERVICE, Poll, TestCluster, TestEnv, assert_status, grpcurl,
};
use automl_metadata_store::MetadataStoreConfig;
use automl_prediction_service::PredictionConfig;
use automl_prediction_service::service::Predictions;
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as ms;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::prediction as pb;
use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
use automl_proto::prediction::predictor_server::{Predictor, PredictorServer};
use automl_text_classification::Classifier;
use automl_text_classification::artifact::{self, Lineage, Manifest};
use automl_text_classification::data::Dataset;
use automl_text_classification::params::TrainParams;
use tokio::sync::OnceCell;
use tonic::Code;
use tonic::transport::Channel;

fn clinc_data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/clinc")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{} is needed: {err}", path.display()))
}

/// Raw `utterance,label` CSV (quoted only where needed) → (utterances, labels).
fn parse_raw(raw: &str) -> Vec<(String, String)> {
    raw.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (utterance, label) = line.rsplit_once(',').expect("two columns");
            let utterance = utterance
                .strip_prefix('"')
                .and_then(|u| u.strip_suffix('"'))
                .map_or(utterance.to_string(), |u| u.replace("\"\"", "\""));
            (utterance, label.to_string())
        })
        .collect()
}

fn quote(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// The snapshot files (`examples.csv`, `labels.csv`) of raw rows.
fn normalize(rows: &[(String, String)]) -> (String, String) {
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut order = Vec::new();
    let mut examples = String::new();
    for (utterance, label) in rows {
        let next = ids.len() + 1;
        let id = *ids.entry(label.clone()).or_insert_with(|| {
            order.push(label.clone());
            next
        });
        examples.push_str(&format!(
            "{},{}\n",
            quote(utterance),
            quote(&id.to_string())
        ));
    }
    let labels: String = order
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{},{}\n", quote(&(i + 1).to_string()), quote(l)))
        .collect();
    (examples, labels)
}

/// A model trained once per test binary on clinc part2, as its three artifact files.
async fn model_files() -> &'static Vec<(&'static str, Vec<u8>)> {
    static FILES: OnceCell<Vec<(&'static str, Vec<u8>)>> = OnceCell::const_new();
    FILES
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                let (examples, labels) =
                    normalize(&parse_raw(&clinc_data("clinc-intents-part2.csv")));
                let data = Dataset::parse(&examples, &labels).expect("dataset");
                let params = TrainParams::from_map(&HashMap::from([
                    ("EPOCHS".to_string(), "2".to_string()),
                    ("LR".to_string(), "4".to_string()),
                ]))
                .expect("params");
                let device = candle_core::Device::Cpu;
                let trained = automl_text_classification::train::train(
                    &data,
                    &params,
                    &device,
                    None,
                    &mut |_| Ok(()),
                )
                .expect("training");
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
            })
            .await
            .expect("training task")
        })
        .await
}

/// A cluster with metadata-store, on SQLite, for models to be published to.
async fn with_metadata_store() -> TestCluster {
    let cluster = TestCluster::new(Backend::Sqlite).await;
    start_metadata(&cluster).await;
    cluster
}

/// metadata-store with its defaults, in `cluster`.
async fn start_metadata(cluster: &TestCluster) {
    let config = MetadataStoreConfig::default();
    cluster
        .start(METADATA_STORE, |ctx| async move {
            automl_metadata_store::start(&ctx.common, &config, ctx.objects, ctx.shutdown).await
        })
        .await;
}

/// Records run `run_id` with `files` as its artifact, made by `algorithm`.
async fn publish(cluster: &TestCluster, run_id: &str, algorithm: &str, files: &[(&str, Vec<u8>)]) {
    let mut client = cluster.metadata_client().await;
    client
        .log_run_start(ms::LogRunStartRequest {
            run_id: run_id.into(),
            run_name: "trained".into(),
            ..Default::default()
        })
        .await
        .expect("start");
    for (name, bytes) in files {
        cluster
            .env
            .objects
            .put_bytes(
                &cluster.env.objects.models_bucket,
                &format!("run_{run_id}/{name}"),
                bytes.clone(),
            )
            .await
            .expect("upload");
    }
    client
        .create_artifact(ms::CreateArtifactRequest {
            artifact: Some(FileInfo {
                name: "intent".into(),
                bucket: String::new(),
                path: format!("run_{run_id}"),
            }),
            run_id: run_id.into(),
            algorithm: algorithm.into(),
        })
        .await
        .expect("artifact");
}

/// prediction-service's defaults, asking the cluster's metadata-store.
fn config(cluster: &TestCluster) -> PredictionConfig {
    PredictionConfig {
        metadata_store: cluster.endpoint(METADATA_STORE),
        ..PredictionConfig::default()
    }
}

/// prediction-service with `config`, in `cluster`: its service object and a client.
async fn serve(
    cluster: &TestCluster,
    config: &PredictionConfig,
) -> (Arc<Predictions>, PredictionServiceClient<Channel>) {
    let service = cluster
        .start(PREDICTION_SERVICE, |ctx| async move {
            automl_prediction_service::start(&ctx.common, config, ctx.objects)
        })
        .await;
    (service, cluster.prediction_client().await)
}

fn request(run_id: &str, document: &str) -> pb::PredictRequest {
    pb::PredictRequest {
        run_id: run_id.into(),
        document: document.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_match_the_trainer_and_grpcurl_sees_the_json() {
    let files = model_files().await;
    let cluster = with_metadata_store().await;
    publish(&cluster, "3", "intent-classification", files).await;
    let (service, client) = serve(&cluster, &config(&cluster)).await;

    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(grpcurl())
            .args([
                "-plaintext",
                "-d",
                r#"{"runId":"3","document":"how do you say thank you in french"}"#,
                &cluster.addr(PREDICTION_SERVICE).to_string(),
                "prediction.PredictionService/Predict",
            ])
            .output()
    })
    .expect("grpcurl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let inner: serde_json::Value =
        serde_json::from_str(answer["response"].as_str().expect("response")).expect("inner json");
    assert_eq!(inner["result"], answer["label"]);
    assert_eq!(answer["modelVersion"], "1");

    // Parity: the service answers exactly what the trained model itself predicts.
    let dir = tempfile::tempdir().expect("dir");
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    let local = Classifier::load(dir.path()).expect("local model");
    let rows = parse_raw(&clinc_data("clinc-intents-part1.csv"));
    let texts: Vec<&str> = rows.iter().take(200).map(|(u, _)| u.as_str()).collect();
    let expected = local.predict_batch(&texts, 5).expect("local predictions");
    // Sent all at once, so the service answers them in batched forward passes.
    let calls: Vec<_> = texts
        .iter()
        .map(|text| {
            let mut client = client.clone();
            let text = text.to_string();
            tokio::spawn(async move { client.predict(request("3", &text)).await })
        })
        .collect();
    for ((text, want), call) in texts.iter().zip(&expected).zip(calls) {
        let got = call.await.expect("task").expect("predict").into_inner();
        assert_eq!(got.label, want.label, "{text}");
        assert_eq!(
            got.response,
            serde_json::json!({ "result": want.label }).to_string()
        );
        assert!((got.score - want.score).abs() < 1e-5, "{text}");
        assert_eq!(got.top.len(), 5);
    }
    assert_eq!(service.cache.stats.loads.load(Ordering::Relaxed), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_cold_requests_download_and_load_once() {
    let files = model_files().await;
    let cluster = with_metadata_store().await;
    publish(&cluster, "5", "intent-classification", files).await;
    let (service, client) = serve(&cluster, &config(&cluster)).await;
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .predict(request("5", &format!("book flight {i}")))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("predict");
    }
    assert_eq!(service.cache.stats.downloads.load(Ordering::Relaxed), 1);
    assert_eq!(service.cache.stats.loads.load(Ordering::Relaxed), 1);
    cluster.stop_service(PREDICTION_SERVICE).await;

    // After a restart the model loads again on demand (from the local cache directory).
    let (service, mut client) = serve(&cluster, &config(&cluster)).await;
    client
        .predict(request("5", "play some music"))
        .await
        .expect("predict after restart");
    assert_eq!(service.cache.stats.loads.load(Ordering::Relaxed), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_answers() {
    let files = model_files().await;
    let cluster = with_metadata_store().await;
    publish(&cluster, "1", "intent-classification", files).await;
    let mut corrupt: Vec<(&str, Vec<u8>)> = files.clone();
    corrupt[0].1 = b"definitely not safetensors".to_vec();
    publish(&cluster, "2", "intent-classification", &corrupt).await;
    publish(&cluster, "4", "unknown-algorithm", files).await;
    let mut config = config(&cluster);
    config.max_document_bytes = 64 * 1024;
    let (_, mut client) = serve(&cluster, &config).await;

    assert_status(
        client.predict(request("42", "hello")).await,
        Code::NotFound,
        "cannot locate model artifact for runId 42",
    );
    assert_status(
        client.predict(request("1", "")).await,
        Code::InvalidArgument,
        "document",
    );
    assert_status(
        client.predict(request("", "hello")).await,
        Code::InvalidArgument,
        "runId",
    );
    assert_status(
        client.predict(request("../x", "hello")).await,
        Code::InvalidArgument,
        "runId",
    );
    // Over tonic's 4 MiB message limit: RESOURCE_EXHAUSTED, as gRPC has it.
    let oversized = "x".repeat(5 * 1024 * 1024);
    let status = client
        .predict(request("1", &oversized))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let huge = "word ".repeat(200_000);
    assert_status(
        client.predict(request("1", &huge)).await,
        Code::InvalidArgument,
        "longer than",
    );
    assert_status(
        client.predict(request("2", "hello")).await,
        Code::FailedPrecondition,
        "run 2",
    );
    assert_status(
        client.predict(request("4", "hello")).await,
        Code::FailedPrecondition,
        "unknown-algorithm",
    );
    // Still healthy.
    client
        .predict(request("1", "hello"))
        .await
        .expect("predict");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_model_is_evicted() {
    let files = model_files().await;
    let cluster = with_metadata_store().await;
    for run in ["1", "2", "3"] {
        publish(&cluster, run, "intent-classification", files).await;
    }
    let mut config = config(&cluster);
    config.max_loaded_models = 2;
    let (service, mut client) = serve(&cluster, &config).await;
    for run in ["1", "2", "1", "3"] {
        client
            .predict(request(run, "hello"))
            .await
            .expect("predict");
    }
    assert_eq!(service.cache.loaded(), ["1", "3"]);
    assert_eq!(service.cache.stats.evictions.load(Ordering::Relaxed), 1);
    let listed = client
        .list_loaded_models(pb::ListLoadedModelsRequest {})
        .await
        .expect("list loaded")
        .into_inner();
    let runs: Vec<_> = listed.models.iter().map(|m| m.run_id.as_str()).collect();
    assert_eq!(runs, ["3", "1"], "most recently used first");
    client.predict(request("2", "hello")).await.expect("reload");
    assert_eq!(service.cache.stats.loads.load(Ordering::Relaxed), 4);
    cluster.stop().await;
}

/// A bring-your-own predictor that records what it receives and can be slow.
#[derive(Clone, Default)]
struct RecordingPredictor {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    delay: Duration,
}

#[tonic::async_trait]
impl Predictor for RecordingPredictor {
    async fn predictor_predict(
        &self,
        request: tonic::Request<pb::PredictorPredictRequest>,
    ) -> Result<tonic::Response<pb::PredictorPredictResponse>, tonic::Status> {
        let request = request.into_inner();
        self.seen
            .lock()
            .expect("lock")
            .push((request.run_id.clone(), request.document.clone()));
        tokio::time::sleep(self.delay).await;
        Ok(tonic::Response::new(pb::PredictorPredictResponse {
            response: serde_json::json!({ "result": format!("echo:{}", request.document) })
                .to_string(),
        }))
    }
}

async fn start_predictor(predictor: RecordingPredictor) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(PredictorServer::new(predictor))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (format!("http://{addr}"), handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_predictors_receive_forwarded_requests_within_bounds() {
    let cluster = with_metadata_store().await;
    let fast = RecordingPredictor::default();
    let slow = RecordingPredictor {
        delay: Duration::from_millis(1500),
        ..RecordingPredictor::default()
    };
    let (fast_url, fast_task) = start_predictor(fast.clone()).await;
    let (slow_url, slow_task) = start_predictor(slow.clone()).await;
    let dummy = [("model.bin", b"external".to_vec())];
    publish(&cluster, "7", "byo-fast", &dummy).await;
    publish(&cluster, "8", "byo-slow", &dummy).await;
    let mut config = config(&cluster);
    config.external_predictors = BTreeMap::from([
        ("byo-fast".to_string(), fast_url),
        ("byo-slow".to_string(), slow_url),
    ]);
    config.max_in_flight = 1;
    let (_, mut client) = serve(&cluster, &config).await;

    let answer = client
        .predict(request("7", "hi there"))
        .await
        .expect("forwarded")
        .into_inner();
    assert_eq!(answer.label, "echo:hi there");
    assert_eq!(answer.response, r#"{"result":"echo:hi there"}"#);
    assert_eq!(
        fast.seen.lock().expect("lock").as_slice(),
        [("7".to_string(), "hi there".to_string())]
    );

    // The client's deadline is honoured.
    let mut quick = tonic::Request::new(request("8", "slow one"));
    quick.set_timeout(Duration::from_millis(200));
    let status = client.predict(quick).await.expect_err("deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    // The timed-out call's slot frees once the server side of its deadline passes too: wait
    // until a call gets through.
    let mut poll = Poll::new("the slot frees", Duration::from_secs(10));
    while client.predict(request("7", "probe")).await.is_err() {
        poll.tick().await;
    }
    // With one call in flight, a second is turned away instead of queueing.
    let mut busy = client.clone();
    let first = tokio::spawn(async move { busy.predict(request("8", "occupy")).await });
    let mut poll = Poll::new("first call reaches the predictor", Duration::from_secs(10))
        .every(Duration::from_millis(5));
    while !slow
        .seen
        .lock()
        .expect("lock")
        .iter()
        .any(|(_, d)| d == "occupy")
    {
        poll.tick().await;
    }
    assert_status(
        client.predict(request("7", "second")).await,
        Code::ResourceExhausted,
        "capacity",
    );
    first.await.expect("task").expect("first call completes");
    cluster.stop_service(PREDICTION_SERVICE).await;
    fast_task.abort();
    slow_task.abort();
    cluster.stop().await;
}

/// Records `tenant`'s run `run_id` with `files` as its artifact `name`, through metadata-store
/// with that tenant's token, the files under the tenant's own prefix.
async fn publish_as(
    env: &TestEnv,
    channel: Channel,
    credentials: Credentials,
    run_id: &str,
    name: &str,
    files: &[(&str, Vec<u8>)],
) {
    let mut client = MetadataStoreServiceClient::with_interceptor(channel, credentials);
    let started = client
        .log_run_start(ms::LogRunStartRequest {
            run_id: run_id.into(),
            run_name: "trained".into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner();
    for (file, bytes) in files {
        env.objects
            .put_bytes(
                &started.bucket,
                &format!("{}/{file}", started.path),
                bytes.clone(),
            )
            .await
            .expect("upload");
    }
    client
        .create_artifact(ms::CreateArtifactRequest {
            artifact: Some(FileInfo {
                name: name.into(),
                bucket: String::new(),
                path: started.path,
            }),
            run_id: run_id.into(),
            algorithm: "intent-classification".into(),
        })
        .await
        .expect("artifact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_models_are_listed_to_their_own_tenant_most_recent_first() {
    let files = model_files().await;
    let mut with_auth = TestEnv::new(Backend::Sqlite).await.expect("env");
    with_auth.common.auth = AuthConfig {
        enabled: true,
        internal_secret: "secret-of-the-loaded-models-test".into(),
        ..AuthConfig::default()
    };
    let cluster = TestCluster::on(with_auth);
    let env = &cluster.env;
    let auth = Authenticator::from_config(&env.common.auth, &env.common.data_dir).expect("auth");
    let credentials = |tenant: &str| {
        let token = auth.mint(tenant, "test", Scope::Tenant, Duration::from_secs(600));
        Credentials::bearer(&token).expect("credentials")
    };
    start_metadata(&cluster).await;
    let metadata_channel = cluster.channel(METADATA_STORE).await;
    publish_as(
        env,
        metadata_channel.clone(),
        credentials("team-a"),
        "1",
        "intent",
        files,
    )
    .await;
    publish_as(
        env,
        metadata_channel.clone(),
        credentials("team-a"),
        "2",
        "intent",
        files,
    )
    .await;
    // Team B's run 1 is another model under another prefix.
    publish_as(
        env,
        metadata_channel,
        credentials("team-b"),
        "1",
        "support",
        files,
    )
    .await;

    serve(&cluster, &config(&cluster)).await;
    let channel = cluster.channel(PREDICTION_SERVICE).await;
    let mut team_a =
        PredictionServiceClient::with_interceptor(channel.clone(), credentials("team-a"));
    let mut team_b =
        PredictionServiceClient::with_interceptor(channel.clone(), credentials("team-b"));
    let listed = |models: &pb::ListLoadedModelsResponse| -> Vec<(String, String, String)> {
        models
            .models
            .iter()
            .map(|m| {
                (
                    m.run_id.clone(),
                    m.model_name.clone(),
                    m.model_version.clone(),
                )
            })
            .collect()
    };

    for run in ["1", "2", "1"] {
        team_a
            .predict(request(run, "book a flight to paris"))
            .await
            .expect("predict as team-a");
    }
    let seen_by_b = team_b
        .list_loaded_models(pb::ListLoadedModelsRequest {})
        .await
        .expect("list as team-b")
        .into_inner();
    assert!(seen_by_b.models.is_empty(), "{seen_by_b:?}");
    team_b
        .predict(request("1", "where is my order"))
        .await
        .expect("predict as team-b");

    let seen_by_a = team_a
        .list_loaded_models(pb::ListLoadedModelsRequest {})
        .await
        .expect("list as team-a")
        .into_inner();
    assert_eq!(
        listed(&seen_by_a),
        [
            ("1".to_string(), "intent".to_string(), "1".to_string()),
            ("2".to_string(), "intent".to_string(), "2".to_string())
        ]
    );
    let seen_by_b = team_b
        .list_loaded_models(pb::ListLoadedModelsRequest {})
        .await
        .expect("list as team-b")
        .into_inner();
    assert_eq!(
        listed(&seen_by_b),
        [("1".to_string(), "support".to_string(), "1".to_string())]
    );
    let on_disk: usize = files.iter().map(|(_, bytes)| bytes.len()).sum();
    for model in seen_by_a.models.iter().chain(&seen_by_b.models) {
        assert_eq!(model.algorithm, "intent-classification");
        assert_eq!(usize::try_from(model.bytes), Ok(on_disk));
        assert!(model.labels > 1, "{model:?}");
    }
    // A job token cannot list, nor can a caller without a token.
    let job = auth.mint(
        "team-a",
        "job-1",
        Scope::Run {
            run_id: "1".into(),
            dataset_id: "1".into(),
            version_hash: "hashAg==".into(),
            base_run_id: String::new(),
        },
        Duration::from_secs(600),
    );
    let mut as_job = PredictionServiceClient::with_interceptor(
        channel.clone(),
        Credentials::bearer(&job).expect("job credentials"),
    );
    assert_status(
        as_job
            .list_loaded_models(pb::ListLoadedModelsRequest {})
            .await,
        Code::PermissionDenied,
        "job token",
    );
    assert_status(
        PredictionServiceClient::new(channel)
            .list_loaded_models(pb::ListLoadedModelsRequest {})
            .await,
        Code::Unauthenticated,
        "authorization",
    );
    cluster.stop().await;
}
