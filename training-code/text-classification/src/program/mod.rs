//! The training program, `automl-train` (and `automl trainer`, the same program inside the
//! `automl` binary, so that a system started from `automl` alone can train).
//!
//! - With no arguments it runs one training job from the trainer environment (`JOB_ID`,
//!   `METADATA_STORE_SERVER`, `MINIO_SERVER`, `TRAINING_DATA_PATH`, …; see CONTRACT.md) and
//!   records it in metadata-store ([`remote`]).
//! - `--examples F --labels F --out DIR` trains on local snapshot files and writes the artifact
//!   into DIR, without any service ([`local`]).
//!   With `--algorithm intent-classification-encoder --encoder DIR` it trains the encoder
//!   algorithm on the pretrained encoder in DIR ([`encoder_job`]).
//! - `evaluate --model DIR --examples F --labels F [--encoder DIR]` reports a trained model's
//!   accuracy.
//! - `encoder-bench` measures the encoder's sentences per second; `encoder-steps` prints the
//!   loss of each of N full fine-tuning steps (for comparing devices, `scripts/gpu-check.sh`).
//!
//! Parameters come from the environment in every mode (`EPOCHS`, `LR`, `BATCH_SIZE`, `FC_SIZE`,
//! `EMBED_DIM`, `SEED`, `OPTIMIZER`, `DEVICE`; the encoder's `FINETUNE`, `ENCODER_LR`,
//! `HIDDEN`, …). Progress goes to stdout, one line at a time.

mod encoder_job;
mod local;
mod objects;
mod remote;
mod retry;
mod trainer_env;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::data::Dataset;
use crate::device::{self, DeviceChoice};
use crate::finetune::BaseModel;
use crate::params::TrainParams;
use crate::train::{self, EpochReport, Trained};
use crate::{Error, Result};
use anyhow::Context;
use candle_core::Device;
use clap::{Parser, Subcommand};

/// Trains the intent classifier.
#[derive(Debug, Parser)]
#[command(name = "automl-train", version, about)]
struct Cli {
    /// Local mode: the snapshot's examples file (`"<utterance>","<id>"` rows).
    #[arg(long, requires_all = ["labels", "out"])]
    examples: Option<PathBuf>,
    /// Local mode: the snapshot's labels file (`"<id>","<label>"` rows).
    #[arg(long, requires_all = ["examples", "out"])]
    labels: Option<PathBuf>,
    /// Local mode: the directory the artifact is written to.
    #[arg(long, requires_all = ["examples", "labels"])]
    out: Option<PathBuf>,
    /// Local mode: fine-tune the artifact in this directory instead of starting from scratch.
    #[arg(long, requires = "out")]
    base: Option<PathBuf>,
    /// Local mode: the algorithm (default: `ALGORITHM_NAME`, else `intent-classification`).
    #[arg(long)]
    algorithm: Option<String>,
    /// Local mode, encoder algorithm: the pretrained encoder's directory.
    #[arg(long)]
    encoder: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reports the accuracy of a trained model on labeled snapshot files (one JSON line).
    Evaluate {
        /// The artifact directory.
        #[arg(long)]
        model: PathBuf,
        /// Examples file.
        #[arg(long)]
        examples: PathBuf,
        /// Labels file.
        #[arg(long)]
        labels: PathBuf,
        /// Also report the accuracy without this label (e.g. `oos`, out of scope).
        #[arg(long)]
        exclude_label: Option<String>,
        /// Encoder models: the pretrained encoder's directory.
        #[arg(long)]
        encoder: Option<PathBuf>,
    },
    /// Measures the encoder's throughput (JSON lines: sentences per second per batch size).
    EncoderBench {
        /// The pretrained encoder's directory.
        #[arg(long)]
        encoder: PathBuf,
        /// One sentence per line.
        #[arg(long)]
        sentences: PathBuf,
        /// Comma-separated batch sizes.
        #[arg(long, default_value = "32,1")]
        batch_sizes: String,
        /// Seconds to measure each batch size for.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Fine-tunes the whole encoder for a number of steps and prints each step's loss (JSON).
    EncoderSteps {
        /// The pretrained encoder's directory.
        #[arg(long)]
        encoder: PathBuf,
        /// Examples file.
        #[arg(long)]
        examples: PathBuf,
        /// Labels file.
        #[arg(long)]
        labels: PathBuf,
        /// Steps to run.
        #[arg(long, default_value_t = 200)]
        steps: usize,
    },
}

/// What a run trains.
#[derive(Debug, Clone)]
pub enum Job {
    /// `intent-classification`.
    Bag(TrainParams),
    /// `intent-classification-encoder`.
    Encoder(crate::encoder::params::EncoderParams),
}

/// What a job of `algorithm` trains with the parameters in `env`, as the trainer reads them.
pub fn job_of(algorithm: &str, env: &HashMap<String, String>) -> crate::Result<Job> {
    Ok(if algorithm.trim() == crate::encoder::ALGORITHM {
        Job::Encoder(crate::encoder::params::EncoderParams::from_map(env)?)
    } else {
        Job::Bag(TrainParams::from_map(env)?)
    })
}

/// Checks a job's parameters exactly as the trainer will read them (its training parameters
/// and `DEVICE`), so that training-service refuses at submission what the trainer would refuse
/// after a wait in the queue.
pub fn check_parameters(
    algorithm: &str,
    parameters: &HashMap<String, String>,
) -> crate::Result<()> {
    job_of(algorithm, parameters)?;
    if let Some(device) = parameters.get("DEVICE") {
        device.parse::<DeviceChoice>()?;
    }
    Ok(())
}

/// Runs the program with `args` (the first is the program name) and returns its exit code.
///
/// The caller must have fixed candle's thread count first
/// ([`crate::device::fix_cpu_thread_count`], before any other thread exists).
pub fn main_with<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    init_tracing();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    match run(cli, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            println!("automl-train failed: {err:#}");
            eprintln!("automl-train: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let device = || -> anyhow::Result<Device> {
        let choice: DeviceChoice = env
            .get("DEVICE")
            .map_or(Ok(DeviceChoice::Auto), |v| v.parse())?;
        Ok(device::select(choice)?)
    };
    match cli.command {
        Some(Command::Evaluate {
            model,
            examples,
            labels,
            exclude_label,
            encoder,
        }) => {
            return local::evaluate(
                &model,
                &examples,
                &labels,
                exclude_label.as_deref(),
                encoder.as_deref(),
            );
        }
        Some(Command::EncoderBench {
            encoder,
            sentences,
            batch_sizes,
            seconds,
        }) => return encoder_job::bench(&encoder, &sentences, &batch_sizes, seconds, &device()?),
        Some(Command::EncoderSteps {
            encoder,
            examples,
            labels,
            steps,
        }) => {
            let params = crate::encoder::params::EncoderParams::from_map(env)?;
            return encoder_job::steps(&encoder, &examples, &labels, steps, &params, &device()?);
        }
        None => {}
    }
    let algorithm = cli
        .algorithm
        .clone()
        .or_else(|| env.get("ALGORITHM_NAME").cloned())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "intent-classification".into());
    let job = job_of(&algorithm, env)?;
    let device = device()?;
    let params_json = match &job {
        Job::Bag(params) => serde_json::to_string(params)?,
        Job::Encoder(params) => serde_json::to_string(params)?,
    };
    println!(
        "automl-train {}: {algorithm}, device {}, params {params_json}",
        env!("CARGO_PKG_VERSION"),
        device::describe(&device),
    );
    if let (Some(examples), Some(labels), Some(out)) = (cli.examples, cli.labels, cli.out) {
        return match &job {
            Job::Bag(params) => local::train(
                &examples,
                &labels,
                &out,
                cli.base.as_deref(),
                params,
                &device,
            ),
            Job::Encoder(params) => {
                let encoder = cli
                    .encoder
                    .context("--encoder DIR is required by the encoder algorithm")?;
                encoder_job::train_local(
                    &examples,
                    &labels,
                    &out,
                    &encoder,
                    cli.base.as_deref(),
                    params,
                    &device,
                )
            }
        };
    }
    let trainer_env = trainer_env::TrainerEnv::from_map(env)
        .context("not a training job (use --examples/--labels/--out for the local mode)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(remote::run(trainer_env, job, device))
}

/// The library's training loop with a callback that returns `false` to stop.
pub fn train_blocking(
    data: &Dataset,
    params: &TrainParams,
    device: &Device,
    base: Option<BaseModel>,
    on_epoch: &mut dyn FnMut(&EpochReport) -> bool,
) -> Result<Trained> {
    train::train(data, params, device, base, &mut |report| {
        if on_epoch(report) {
            Ok(())
        } else {
            Err(Error::Stopped("progress could not be recorded".into()))
        }
    })
}

/// One progress line for an epoch.
pub fn epoch_line(report: &EpochReport, epochs: usize) -> String {
    format!(
        "epoch {}/{epochs}: loss {:.4} accuracy {:.4} val_accuracy {:.4} examples_per_sec {:.0} lr {} ({:.2}s)",
        report.epoch,
        report.loss,
        report.accuracy,
        report.val_accuracy,
        report.examples_per_sec,
        short(report.lr),
        report.seconds
    )
}

/// A learning rate without float noise (`0.04`, not `0.04000000000000001`).
fn short(value: f64) -> String {
    let text = format!("{value:.8}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Library logs go to stderr (`RUST_LOG`, default `warn`); stdout carries the progress lines.
/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set (training-service sets it when it exports traces),
/// the trainer's spans go to that collector too, in the trace of its `TRACEPARENT`.
fn init_tracing() {
    use automl_common::otlp;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let traces = std::env::var(otlp::ENDPOINT_ENV)
        .ok()
        .filter(|endpoint| !endpoint.is_empty())
        .and_then(|endpoint| {
            let ca_file = std::env::var(otlp::CERTIFICATE_ENV).unwrap_or_default();
            otlp::layer(
                &endpoint,
                Some(std::path::Path::new(&ca_file)),
                "automl-train",
            )
            .map_err(|err| eprintln!("trace export is off: {err:#}"))
            .ok()
        })
        .map(|layer| layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
}
