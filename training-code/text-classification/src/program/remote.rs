//! The MiniAutoML flow: LogRunStart, download the snapshot, train (LogEpoch every epoch), upload
//! the model files under the run's prefix, CreateArtifact, LogRunEnd. Any failure after the run
//! has started is recorded with LogRunEnd(success=false, reason) before the program exits.

use std::collections::HashMap;

use crate::artifact::{self, Manifest};
use crate::data::Dataset;
use crate::finetune::BaseModel;
use crate::params::TrainParams;
use crate::train::EpochReport;
use anyhow::Context;
use automl_common::auth::{Credentials, TOKEN_ENV};
use automl_common::request_id;
use automl_common::time::now_iso;
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use candle_core::Device;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

use super::objects::Objects;
use super::retry;
use super::trainer_env::{TrainerEnv, url};
use super::{epoch_line, train_blocking};

/// Every call carries the request id of the `Train` call that queued the job, when known, and
/// the job's token (AUTOML_TOKEN) when the deployment authenticates calls.
pub(super) type Client = MetadataStoreServiceClient<InterceptedService<Channel, Outgoing>>;

/// What every outgoing call carries.
#[derive(Clone)]
pub(super) struct Outgoing {
    request_id: request_id::Fixed,
    credentials: Credentials,
}

impl tonic::service::Interceptor for Outgoing {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let request = self.request_id.call(request)?;
        self.credentials.call(request)
    }
}

/// Runs one training job; the error, if any, has been recorded with LogRunEnd when the run had
/// started.
pub async fn run(env: TrainerEnv, job: super::Job, device: Device) -> anyhow::Result<()> {
    // One span for the whole job, in the trace of the `Train` call that queued it: every call
    // to metadata-store carries it on.
    let span = tracing::info_span!("train", otel.name = "train", job_id = %env.job_id);
    automl_common::otlp::set_parent_from_env(&span);
    let trained = run_job(env, job, device).instrument(span).await;
    automl_common::otlp::flush().await;
    trained
}

async fn run_job(env: TrainerEnv, job: super::Job, device: Device) -> anyhow::Result<()> {
    // training-service hands its CA to trainers when its services speak TLS: metadata-store
    // is then reached over https (the object store keeps its own scheme).
    let tls = automl_common::tls::TlsConfig {
        ca_file: std::env::var(automl_common::tls::CA_FILE_ENV).unwrap_or_default(),
        ..Default::default()
    };
    let metadata_url = match (tls.ca_file.is_empty(), env.metadata_store.contains("://")) {
        (false, false) => format!("https://{}", env.metadata_store),
        _ => url(&env.metadata_store),
    };
    // Connected on first use, and again after the connection breaks (metadata-store restarted):
    // the calls' retries cover a metadata-store that is not up yet. Keep-alive pings find a
    // connection to a host that vanished without closing it.
    let channel = tls
        .endpoint(&metadata_url)?
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let id = std::env::var(request_id::ENV_VAR)
        .ok()
        .filter(|id| request_id::is_valid(id));
    if let Some(id) = &id {
        println!("request_id {id}");
    }
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let credentials = Credentials::bearer(&token)
        .map_err(|status| anyhow::anyhow!("{TOKEN_ENV}: {}", status.message()))?;
    let mut client = MetadataStoreServiceClient::with_interceptor(
        channel,
        Outgoing {
            request_id: request_id::Fixed(id.clone()),
            credentials,
        },
    );
    let start = pb::LogRunStartRequest {
        start_time: now_iso(),
        run_id: env.job_id.clone(),
        run_name: env.model_name.clone(),
        tracing: Some(pb::TracingInformation {
            dataset_id: env.dataset_id.clone(),
            version_hash: env.version_hash.clone(),
            code_version: env.code_version.clone(),
            base_run_id: env.base_run_id.clone().unwrap_or_default(),
            pretrained_model: env.pretrained_model.clone().unwrap_or_default(),
        }),
    };
    let started = retry::call("LogRunStart", &start, |request| {
        let mut client = client.clone();
        async move { client.log_run_start(request).await }
    })
    .await
    .with_context(|| format!("LogRunStart failed (metadata-store at {metadata_url})"))?;
    println!("run {} started", env.job_id);
    let bucket = non_empty(started.bucket, &env.model_bucket);
    let path = non_empty(started.path, &format!("run_{}", env.job_id));
    let outcome = match &job {
        super::Job::Bag(params) => {
            train_and_publish(&env, params, device, &mut client, &bucket, &path).await
        }
        super::Job::Encoder(params) => {
            super::encoder_job::train_and_publish(&env, params, device, &mut client, &bucket, &path)
                .await
        }
    };
    let (success, message) = match &outcome {
        Ok(test_accuracy) => (true, format!("test accuracy {test_accuracy:.3}")),
        Err(err) => (false, format!("{err:#}")),
    };
    println!("run {} ended: {message}", env.job_id);
    let end = pb::LogRunEndRequest {
        run_id: env.job_id.clone(),
        end_time: now_iso(),
        success,
        message,
    };
    retry::call("LogRunEnd", &end, |request| {
        let mut client = client.clone();
        async move { client.log_run_end(request).await }
    })
    .await
    .context("LogRunEnd failed")?;
    outcome.map(|_| ())
}

fn non_empty(value: String, fallback: &str) -> String {
    if value.is_empty() {
        fallback.to_string()
    } else {
        value
    }
}

/// Everything between LogRunStart and LogRunEnd; returns the test accuracy.
async fn train_and_publish(
    env: &TrainerEnv,
    params: &TrainParams,
    device: Device,
    client: &mut Client,
    bucket: &str,
    path: &str,
) -> anyhow::Result<f64> {
    let store = Objects::from_env(env)?;
    let prefix = env.data_path.trim_end_matches('/');
    let examples =
        download_text(&store, &env.data_bucket, &format!("{prefix}/examples.csv")).await?;
    let labels = download_text(&store, &env.data_bucket, &format!("{prefix}/labels.csv")).await?;
    let data = Dataset::parse(&examples, &labels).context("bad snapshot")?;
    println!(
        "snapshot {}/{}: {} examples, {} labels",
        env.data_bucket,
        prefix,
        data.examples.len(),
        data.labels.len()
    );
    let base = match &env.base_run_id {
        Some(run_id) => Some(load_base(client, &store, run_id, &device).await?),
        None => None,
    };
    let training_params = params.clone();
    let trained = train_logging_epochs(env, params.epochs, client, move |on_epoch| {
        train_blocking(&data, &training_params, &device, base, on_epoch)
    })
    .await?;
    println!("test accuracy {:.4}", trained.test_accuracy);
    let manifest = Manifest::describe(
        &trained,
        params,
        &env.algorithm,
        &env.code_version,
        env.lineage(),
        &now_iso(),
    );
    let files = artifact::encode(&trained.model, &trained.vocab, &manifest)?;
    for (name, bytes) in files.files {
        let key = format!("{path}/{name}");
        store
            .put(bucket, &key, bytes)
            .await
            .with_context(|| format!("cannot write {bucket}/{key}"))?;
        println!("uploaded {bucket}/{key}");
    }
    record_artifact(env, client, bucket, path).await?;
    Ok(trained.test_accuracy)
}

/// Runs `train` on a blocking thread while this task records each epoch it reports with
/// LogEpoch (and prints it); `train` stops when its callback returns `false`.
pub(super) async fn train_logging_epochs<T, F>(
    env: &TrainerEnv,
    epochs: usize,
    client: &mut Client,
    train: F,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn FnMut(&EpochReport) -> bool) -> crate::Result<T> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(EpochReport, String)>();
    let training = tokio::task::spawn_blocking(move || {
        train(&mut |report| sender.send((report.clone(), now_iso())).is_ok())
    });
    while let Some((report, end_time)) = receiver.recv().await {
        println!("{}", epoch_line(&report, epochs));
        let start_time = start_of(&end_time, report.seconds);
        let epoch = pb::LogEpochRequest {
            epoch_info: Some(pb::EpochInfo {
                start_time,
                end_time,
                run_id: env.job_id.clone(),
                epoch_id: report.epoch.to_string(),
                metrics: epoch_metrics(&report),
            }),
        };
        retry::call(&format!("LogEpoch {}", report.epoch), &epoch, |request| {
            let mut client = client.clone();
            async move { client.log_epoch(request).await }
        })
        .await
        .with_context(|| format!("LogEpoch {} failed", report.epoch))?;
    }
    Ok(training.await.context("training thread failed")??)
}

/// CreateArtifact for the files just uploaded under `bucket/path`; prints the version.
pub(super) async fn record_artifact(
    env: &TrainerEnv,
    client: &mut Client,
    bucket: &str,
    path: &str,
) -> anyhow::Result<()> {
    let artifact = pb::CreateArtifactRequest {
        artifact: Some(FileInfo {
            name: env.model_name.clone(),
            bucket: bucket.to_string(),
            path: path.to_string(),
        }),
        run_id: env.job_id.clone(),
        algorithm: env.algorithm.clone(),
    };
    let created = retry::call("CreateArtifact", &artifact, |request| {
        let mut client = client.clone();
        async move { client.create_artifact(request).await }
    })
    .await
    .context("CreateArtifact failed")?;
    println!("artifact {} version {}", env.model_name, created.version);
    Ok(())
}

pub(super) fn start_of(end_time: &str, seconds: f64) -> String {
    let Ok(end) = chrono::DateTime::parse_from_rfc3339(end_time) else {
        return end_time.to_string();
    };
    let start = end - chrono::Duration::milliseconds((seconds * 1000.0) as i64);
    start
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The metrics of an epoch as metadata-store records them.
pub fn epoch_metrics(report: &EpochReport) -> HashMap<String, String> {
    HashMap::from([
        ("loss".to_string(), format!("{:.6}", report.loss)),
        ("accuracy".to_string(), format!("{:.6}", report.accuracy)),
        (
            "val_accuracy".to_string(),
            format!("{:.6}", report.val_accuracy),
        ),
        (
            "examples_per_sec".to_string(),
            format!("{:.1}", report.examples_per_sec),
        ),
    ])
}

pub(super) async fn download(store: &Objects, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    store
        .get(bucket, key)
        .await
        .with_context(|| format!("cannot read {bucket}/{key}"))
}

pub(super) async fn download_text(
    store: &Objects,
    bucket: &str,
    key: &str,
) -> anyhow::Result<String> {
    let bytes = download(store, bucket, key).await?;
    String::from_utf8(bytes).with_context(|| format!("{bucket}/{key} is not UTF-8"))
}

/// Where the model of base run `run_id` lies, through GetArtifact.
pub(super) async fn base_location(client: &mut Client, run_id: &str) -> anyhow::Result<FileInfo> {
    let lookup = pb::GetArtifactRequest {
        run_id: run_id.to_string(),
    };
    let found = retry::call("GetArtifact", &lookup, |request| {
        let mut client = client.clone();
        async move { client.get_artifact(request).await }
    })
    .await
    .with_context(|| format!("no model artifact for base run {run_id}"))?;
    found
        .artifact
        .with_context(|| format!("base run {run_id} has no artifact location"))
}

/// The model of `run_id`, located through GetArtifact.
async fn load_base(
    client: &mut Client,
    store: &Objects,
    run_id: &str,
    device: &Device,
) -> anyhow::Result<BaseModel> {
    let location = base_location(client, run_id).await?;
    let prefix = location.path.trim_end_matches('/');
    let mut files = Vec::new();
    for name in [
        artifact::MODEL_FILE,
        artifact::VOCAB_FILE,
        artifact::MANIFEST_FILE,
    ] {
        files.push(download(store, &location.bucket, &format!("{prefix}/{name}")).await?);
    }
    let loaded = artifact::decode(&files[0], &files[1], &files[2], device)
        .with_context(|| format!("base run {run_id}"))?;
    println!(
        "fine-tuning from run {run_id} ({} tokens, {} classes)",
        loaded.vocab.len(),
        loaded.manifest.classes.len()
    );
    Ok(BaseModel::from(loaded))
}
