//! Predict under load against a running prediction-service with a trained model (set up by
//! `scripts/bench.sh predict`), and the same load generator against a trivial tonic echo RPC
//! served in this process, as the ceiling; plus cold-load time and the model's own compute time
//! per request.
//!
//! Usage: `cargo bench -p automl --bench predict -- --addr HOST:PORT --run RUN_ID
//!        --s3 http://HOST:PORT --documents FILE.csv [--seconds 5] [--callers 1,16,64]`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use automl_common::config::S3Config;
use automl_common::s3::ObjectStore;
use automl_proto::prediction as pb;
use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
use automl_proto::prediction::predictor_client::PredictorClient;
use automl_proto::prediction::predictor_server::{Predictor, PredictorServer};
use automl_text_classification::Classifier;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

struct Args {
    addr: String,
    run: String,
    s3: String,
    documents: String,
    seconds: u64,
    callers: Vec<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: "127.0.0.1:6001".into(),
        run: "1".into(),
        s3: "http://127.0.0.1:9000".into(),
        documents: String::new(),
        seconds: 5,
        callers: vec![1, 16, 64],
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
            "--callers" => {
                args.callers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
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

/// Serves the echo RPC on its own runtime thread; returns its address.
fn start_echo() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
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
    Predict,
    Echo,
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

/// The model's own time per single-document prediction, in-process, over `docs`.
async fn model_compute_us(s3: &str, run: &str, docs: &[String]) -> anyhow::Result<f64> {
    let objects = ObjectStore::new(&S3Config::default(), s3);
    let dir = tempfile::tempdir()?;
    for name in ["model.safetensors", "vocab.json", "manifest.json"] {
        let bytes = objects
            .get_bytes(&objects.models_bucket, &format!("run_{run}/{name}"))
            .await?;
        std::fs::write(dir.path().join(name), bytes)?;
    }
    let classifier = Classifier::load(dir.path())?;
    let sample: Vec<&String> = docs.iter().take(2000).collect();
    for doc in sample.iter().take(100) {
        classifier.predict(doc, 5)?;
    }
    let started = Instant::now();
    for doc in &sample {
        classifier.predict(doc, 5)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / sample.len() as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let docs = Arc::new(documents(&args.documents)?);
    anyhow::ensure!(!docs.is_empty(), "--documents has no rows");
    let predict_channel = channel(&args.addr).await?;
    let echo_channel = channel(&start_echo()?).await?;

    let started = Instant::now();
    PredictionServiceClient::new(predict_channel.clone())
        .predict(pb::PredictRequest {
            run_id: args.run.clone(),
            document: docs[0].clone(),
        })
        .await?;
    println!(
        "cold first Predict (resolve, download, load, answer): {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let compute = model_compute_us(&args.s3, &args.run, &docs).await?;
    println!("model compute per single-document prediction, in-process: {compute:.1} µs");
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

    let duration = Duration::from_secs(args.seconds);
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>12} {:>10} {:>10} {:>8}",
        "callers", "predict/s", "p50 ms", "p99 ms", "echo/s", "p50 ms", "p99 ms", "ratio"
    );
    for callers in &args.callers {
        let (rate, hist) = load(
            predict_channel.clone(),
            Target::Predict,
            &args.run,
            docs.clone(),
            *callers,
            duration,
        )
        .await?;
        let (echo_rate, echo_hist) = load(
            echo_channel.clone(),
            Target::Echo,
            &args.run,
            docs.clone(),
            *callers,
            duration,
        )
        .await?;
        println!(
            "{:>8} {:>12.0} {:>10.3} {:>10.3} {:>12.0} {:>10.3} {:>10.3} {:>8.2}",
            callers,
            rate,
            ms(&hist, 0.5),
            ms(&hist, 0.99),
            echo_rate,
            ms(&echo_hist, 0.5),
            ms(&echo_hist, 0.99),
            rate / echo_rate
        );
    }
    Ok(())
}
