//! Predict under load against a running prediction-service with a trained model (set up by
//! `scripts/bench.sh predict` or `predict-encoder`), and the same load generator against a
//! trivial tonic echo RPC served in this process, as the ceiling; plus cold-load time and the
//! model's own compute time per request, with warm caches and with its weights evicted from
//! the L2 cache before each document (as other work evicts them in a server). With `--pid`,
//! the server's RSS before the first Predict and after the first Predict on `--run` and on
//! each of `--load-runs`, beside the sizes of the weights each run brought, and the server's
//! CPU time per Predict beside the echo server's per echo (the time their threads spent on a
//! CPU, from /proc/PID/task/*/schedstat): where the load generator shares the cores, the
//! steadier measure of what a call costs the server.
//!
//! Usage: `cargo bench -p automl --bench predict -- --addr HOST:PORT --run RUN_ID
//!        --s3 http://HOST:PORT --documents FILE.csv [--seconds 5] [--rounds 4] [--callers 1,16,64]
//!        [--encoder DIR] [--pid PID --load-runs RUN_ID,…]`
//!
//! `--encoder DIR` is the pretrained encoder (config.json, tokenizer.json, model.safetensors)
//! that encoder models are loaded on for the in-process compute time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use automl_common::config::S3Config;
use automl_common::s3::{ObjectEntry, ObjectStore};
use automl_proto::prediction as pb;
use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
use automl_proto::prediction::predictor_client::PredictorClient;
use automl_proto::prediction::predictor_server::{Predictor, PredictorServer};
use automl_text_classification::Classifier;
use automl_text_classification::encoder::artifact::is_encoder_manifest;
use automl_text_classification::encoder::{Encoder, EncoderClassifier};
use automl_text_classification::serving::AnyClassifier;
use candle_core::Device;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

struct Args {
    addr: String,
    run: String,
    s3: String,
    documents: String,
    seconds: u64,
    /// Rounds per level, alternating which target goes first.
    rounds: usize,
    callers: Vec<usize>,
    /// The pretrained encoder's directory, for encoder models' compute time.
    encoder: Option<PathBuf>,
    /// The server's process id, whose RSS is measured around the first Predicts and whose CPU
    /// time is measured per Predict.
    pid: Option<u32>,
    /// Runs loaded after `run`, one first Predict each, for the RSS table.
    load_runs: Vec<String>,
    /// Worker threads of the load generator's runtime; 1 runs it on the calling thread.
    client_threads: usize,
    /// Worker threads of the echo server's runtime (0: one per core, tokio's default).
    echo_threads: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: "127.0.0.1:6001".into(),
        run: "1".into(),
        s3: "http://127.0.0.1:9000".into(),
        documents: String::new(),
        seconds: 5,
        rounds: 4,
        callers: vec![1, 16, 64],
        encoder: None,
        pid: None,
        load_runs: Vec::new(),
        client_threads: 1,
        echo_threads: 0,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => args.addr = value()?,
            "--run" => args.run = value()?,
            "--s3" => args.s3 = value()?,
            "--documents" => args.documents = value()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--callers" => {
                args.callers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--client-threads" => args.client_threads = value()?.parse()?,
            "--echo-threads" => args.echo_threads = value()?.parse()?,
            "--encoder" => args.encoder = Some(value()?.into()),
            "--pid" => args.pid = Some(value()?.parse()?),
            "--load-runs" => {
                args.load_runs = value()?
                    .split(',')
                    .filter(|run| !run.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            _ => {}
        }
    }
    Ok(args)
}

/// Utterances of a raw `utterance,label` CSV.
fn documents(path: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            line.rsplit_once(',')
                .map(|(u, _)| u.trim_matches('"').to_string())
        })
        .filter(|u| !u.is_empty())
        .collect())
}

/// The ceiling: a Predictor that answers at once.
#[derive(Clone)]
struct Echo;

#[tonic::async_trait]
impl Predictor for Echo {
    async fn predictor_predict(
        &self,
        request: tonic::Request<pb::PredictorPredictRequest>,
    ) -> Result<tonic::Response<pb::PredictorPredictResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::PredictorPredictResponse {
            response: request.into_inner().document,
        }))
    }
}

/// The name of the echo runtime's threads, whose CPU time is the echo server's.
const ECHO_THREAD: &str = "echo-worker";

/// Nanoseconds the threads of process `pid` (those named `only`, when given) have spent on a
/// CPU so far: the first field of /proc/PID/task/TID/schedstat (finer than the clock ticks of
/// /proc/PID/stat).
fn cpu_nanos(pid: u32, only: Option<&str>) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut nanos = 0;
    for task in tasks.flatten() {
        if let Some(name) = only {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        nanos += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(nanos)
}

/// Serves the echo RPC on its own runtime thread; returns its address.
fn start_echo(threads: usize) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.thread_name(ECHO_THREAD);
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let _ = tonic::transport::Server::builder()
                .add_service(PredictorServer::new(Echo))
                .serve_with_incoming(incoming)
                .await;
        });
    });
    Ok(addr.to_string())
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

#[derive(Clone, Copy)]
enum Target {
    Predict = 0,
    Echo = 1,
}

/// One target's calls and latencies summed over rounds, and its server's CPU time (none once a
/// round could not read it).
struct Totals {
    calls: f64,
    seconds: f64,
    histogram: Histogram<u64>,
    cpu_nanos: Option<u64>,
}

impl Totals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            calls: 0.0,
            seconds: 0.0,
            histogram: Histogram::new(3)?,
            cpu_nanos: Some(0),
        })
    }

    fn add(
        &mut self,
        rate: f64,
        histogram: &Histogram<u64>,
        cpu: Option<u64>,
    ) -> anyhow::Result<()> {
        let calls = histogram.len() as f64;
        self.calls += calls;
        self.seconds += calls / rate;
        self.histogram.add(histogram)?;
        self.cpu_nanos = self.cpu_nanos.zip(cpu).map(|(total, round)| total + round);
        Ok(())
    }

    fn rate(&self) -> f64 {
        self.calls / self.seconds
    }

    /// The server's CPU time per call in µs, or `-` where it was not measured.
    fn cpu_per_call(&self) -> String {
        match self.cpu_nanos {
            Some(nanos) if self.calls > 0.0 => format!("{:.1}", nanos as f64 / 1e3 / self.calls),
            _ => "-".into(),
        }
    }
}

async fn load(
    channel: Channel,
    target: Target,
    run: &str,
    docs: Arc<Vec<String>>,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (channel, next, docs, run) =
            (channel.clone(), next.clone(), docs.clone(), run.to_string());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            let mut predict = PredictionServiceClient::new(channel.clone());
            let mut echo = PredictorClient::new(channel);
            while Instant::now() < deadline {
                let document = docs[next.fetch_add(1, Ordering::Relaxed) % docs.len()].clone();
                let sent = Instant::now();
                match target {
                    Target::Predict => {
                        predict
                            .predict(pb::PredictRequest {
                                run_id: run.clone(),
                                document,
                            })
                            .await?;
                    }
                    Target::Echo => {
                        echo.predictor_predict(pb::PredictorPredictRequest {
                            run_id: run.clone(),
                            document,
                        })
                        .await?;
                    }
                }
                histogram.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(histogram)
        }));
    }
    let mut merged = Histogram::<u64>::new(3)?;
    for task in tasks {
        merged.add(task.await??)?;
    }
    Ok((
        merged.len() as f64 / started.elapsed().as_secs_f64(),
        merged,
    ))
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// The files of run `run`'s artifact in the models bucket (`run_<id>/…`).
async fn artifact_files(objects: &ObjectStore, run: &str) -> anyhow::Result<Vec<ObjectEntry>> {
    let files = objects
        .list(&objects.models_bucket, &format!("run_{run}/"))
        .await?;
    anyhow::ensure!(!files.is_empty(), "run {run} has no files under run_{run}/");
    Ok(files)
}

/// The file name of an artifact entry.
fn file_name(entry: &ObjectEntry) -> &str {
    entry.key.rsplit('/').next().unwrap_or(&entry.key)
}

/// The model of run `run`, downloaded into `dir` and loaded (encoder models on `encoder`).
async fn load_model(
    objects: &ObjectStore,
    run: &str,
    dir: &Path,
    encoder: Option<&Path>,
) -> anyhow::Result<AnyClassifier> {
    for entry in artifact_files(objects, run).await? {
        let bytes = objects
            .get_bytes(&objects.models_bucket, &entry.key)
            .await?;
        std::fs::write(dir.join(file_name(&entry)), bytes)?;
    }
    let manifest = std::fs::read(dir.join("manifest.json"))?;
    if !is_encoder_manifest(&manifest) {
        return Ok(Classifier::load(dir)?.into());
    }
    let pretrained =
        encoder.with_context(|| format!("run {run} is an encoder model: pass --encoder DIR"))?;
    let device = Device::Cpu;
    let encoder = if EncoderClassifier::read_manifest(dir)?.own_encoder {
        EncoderClassifier::own_encoder(dir, pretrained, &device)?
    } else {
        Encoder::load(pretrained, None, &device)?
    };
    Ok(EncoderClassifier::load(dir, Arc::new(encoder))?.into())
}

/// Bytes written between documents for the cold-cache time of [`model_compute_us`]: more than
/// the L2 cache of a core of current server CPUs (1–2 MiB), so each document finds the model's
/// weights in L3 or memory, as in a server whose network code runs between calls.
const EVICT_BYTES: usize = 8 << 20;

/// The model's own time per single-document prediction, in-process, over up to 2,000 of
/// `docs` or 10 seconds, whichever ends first (an encoder pass takes milliseconds): with warm
/// caches (one document after another), then with [`EVICT_BYTES`] written before each
/// document (only the prediction timed). Returns both means in µs and the documents of each.
async fn model_compute_us(
    objects: &ObjectStore,
    run: &str,
    encoder: Option<&Path>,
    docs: &[String],
) -> anyhow::Result<Compute> {
    let dir = tempfile::tempdir()?;
    let model = load_model(objects, run, dir.path(), encoder).await?;
    let sample: Vec<&String> = docs.iter().take(2000).collect();
    for doc in sample.iter().take(100) {
        model.predict_batch(&[doc], 5)?;
    }
    let budget = Duration::from_secs(10);
    let started = Instant::now();
    let mut warm = 0;
    for doc in &sample {
        model.predict_batch(&[doc], 5)?;
        warm += 1;
        if started.elapsed() > budget {
            break;
        }
    }
    let warm_us = started.elapsed().as_secs_f64() * 1e6 / warm as f64;
    let mut other = vec![0u8; EVICT_BYTES];
    let started = Instant::now();
    let mut timed = Duration::ZERO;
    let mut cold = 0;
    for doc in &sample {
        for line in other.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&mut other);
        let predicted = Instant::now();
        model.predict_batch(&[doc], 5)?;
        timed += predicted.elapsed();
        cold += 1;
        if started.elapsed() > budget {
            break;
        }
    }
    Ok(Compute {
        warm_us,
        warm,
        cold_us: timed.as_secs_f64() * 1e6 / cold as f64,
        cold,
    })
}

/// What [`model_compute_us`] measured.
struct Compute {
    warm_us: f64,
    warm: usize,
    cold_us: f64,
    cold: usize,
}

/// Resident memory of process `pid` in bytes (VmRSS of /proc/PID/status).
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Bytes in kB or MB (decimal), to one decimal.
fn size(bytes: f64) -> String {
    if bytes.abs() < 1e6 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{:.1} MB", bytes / 1e6)
    }
}

/// A size with its sign.
fn signed(bytes: f64) -> String {
    format!("{}{}", if bytes >= 0.0 { "+" } else { "" }, size(bytes))
}

/// One first Predict on `run`; its wall time in milliseconds.
async fn first_predict(channel: &Channel, run: &str, document: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    PredictionServiceClient::new(channel.clone())
        .predict(pb::PredictRequest {
            run_id: run.to_string(),
            document: document.to_string(),
        })
        .await
        .with_context(|| format!("first Predict on run {run}"))?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// The weights files of run `run` and their sizes, for the RSS table.
async fn weights_of(objects: &ObjectStore, run: &str) -> anyhow::Result<String> {
    let files = artifact_files(objects, run).await?;
    Ok(files
        .iter()
        .filter(|entry| file_name(entry) != "manifest.json")
        .map(|entry| format!("{} {}", file_name(entry), size(entry.size as f64)))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Prints the time of the first Predict on `--run`; with `--pid`, a table of the server's RSS
/// before it and after it and after the first Predict on each of `--load-runs`.
async fn cold_loads(
    channel: &Channel,
    objects: &ObjectStore,
    args: &Args,
    document: &str,
) -> anyhow::Result<()> {
    let Some(pid) = args.pid else {
        let cold = first_predict(channel, &args.run, document).await?;
        println!("cold first Predict (resolve, download, load, answer): {cold:.1} ms");
        return Ok(());
    };
    if let Some(dir) = &args.encoder {
        let weights = dir.join("model.safetensors");
        let bytes = std::fs::metadata(&weights)
            .with_context(|| format!("reading {}", weights.display()))?
            .len();
        println!(
            "pretrained encoder weights {}: {}",
            weights.display(),
            size(bytes as f64)
        );
    }
    let mut previous = rss_bytes(pid)?;
    println!(
        "server RSS (VmRSS of pid {pid}), cold first Predict (resolve, download, load, answer):"
    );
    println!(
        "{:<22} {:>10} {:>11} {:>14}  weights of the run",
        "", "RSS", "delta", "cold Predict"
    );
    println!("{:<22} {:>10}", "before any model", size(previous as f64));
    let runs = std::iter::once(&args.run).chain(&args.load_runs);
    for run in runs {
        let cold = first_predict(channel, run, document).await?;
        let rss = rss_bytes(pid)?;
        println!(
            "{:<22} {:>10} {:>11} {:>11.1} ms  {}",
            format!("after run {run}"),
            size(rss as f64),
            signed(rss as f64 - previous as f64),
            cold,
            weights_of(objects, run).await?
        );
        previous = rss;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let docs = Arc::new(documents(&args.documents)?);
    anyhow::ensure!(!docs.is_empty(), "--documents has no rows");
    let predict_channel = channel(&args.addr).await?;
    let echo_channel = channel(&start_echo(args.echo_threads)?).await?;

    let objects = ObjectStore::new(&S3Config::default(), &args.s3);
    cold_loads(&predict_channel, &objects, &args, &docs[0]).await?;
    let compute = model_compute_us(&objects, &args.run, args.encoder.as_deref(), &docs).await?;
    println!(
        "model compute per single-document prediction, in-process: {:.1} µs (mean of {} \
         documents); with {} MiB written before each document (its weights out of the L2 \
         cache): {:.1} µs (mean of {})",
        compute.warm_us,
        compute.warm,
        EVICT_BYTES >> 20,
        compute.cold_us,
        compute.cold
    );
    load(
        predict_channel.clone(),
        Target::Predict,
        &args.run,
        docs.clone(),
        4,
        Duration::from_secs(1),
    )
    .await?;
    load(
        echo_channel.clone(),
        Target::Echo,
        &args.run,
        docs.clone(),
        4,
        Duration::from_secs(1),
    )
    .await?;

    // Each level's time is split into rounds that alternate which target goes first (Predict
    // then echo, echo then Predict, …), so a drift in the machine's load during the run falls
    // on both sides alike; the rates are calls over time summed across the rounds.
    let rounds = args.rounds.max(1);
    let round = Duration::from_secs_f64(args.seconds as f64 / rounds as f64);
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // Whose CPU time is each target's server: the model server's process (given `--pid`), and
    // the echo runtime's threads in this one.
    let own_pid = std::process::id();
    let server_cpu = |target: Target| match target {
        Target::Predict => args.pid.and_then(|pid| cpu_nanos(pid, None)),
        Target::Echo => args.pid.and_then(|_| cpu_nanos(own_pid, Some(ECHO_THREAD))),
    };
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>7} {:>12} {:>10} {:>10} {:>7} {:>8}",
        "callers",
        "predict/s",
        "p50 ms",
        "p99 ms",
        "cpu µs",
        "echo/s",
        "p50 ms",
        "p99 ms",
        "cpu µs",
        "ratio"
    );
    for callers in &args.callers {
        let mut totals = [Totals::new()?, Totals::new()?];
        for r in 0..rounds {
            let order = if r % 2 == 0 {
                [Target::Predict, Target::Echo]
            } else {
                [Target::Echo, Target::Predict]
            };
            for target in order {
                let channel = match target {
                    Target::Predict => predict_channel.clone(),
                    Target::Echo => echo_channel.clone(),
                };
                let cpu_before = server_cpu(target);
                let (rate, hist) =
                    load(channel, target, &args.run, docs.clone(), *callers, round).await?;
                let cpu = cpu_before
                    .zip(server_cpu(target))
                    .map(|(before, after)| after.saturating_sub(before));
                totals[target as usize].add(rate, &hist, cpu)?;
            }
        }
        let [predict, echo] = &totals;
        println!(
            "{:>8} {:>12.0} {:>10.3} {:>10.3} {:>7} {:>12.0} {:>10.3} {:>10.3} {:>7} {:>8.2}",
            callers,
            predict.rate(),
            ms(&predict.histogram, 0.5),
            ms(&predict.histogram, 0.99),
            predict.cpu_per_call(),
            echo.rate(),
            ms(&echo.histogram, 0.5),
            ms(&echo.histogram, 0.99),
            echo.cpu_per_call(),
            predict.rate() / echo.rate()
        );
    }
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
