//! `automl-train`: the training program of the intent classifier.
//!
//! - With no arguments it runs one training job from the trainer environment (`JOB_ID`,
//!   `METADATA_STORE_SERVER`, `MINIO_SERVER`, `TRAINING_DATA_PATH`, …; see CONTRACT.md) and
//!   records it in metadata-store ([`remote`]).
//! - `--examples F --labels F --out DIR` trains on local snapshot files and writes the artifact
//!   into DIR, without any service ([`local`]).
//! - `evaluate --model DIR --examples F --labels F` reports a trained model's accuracy.
//!
//! Parameters come from the environment in every mode (`EPOCHS`, `LR`, `BATCH_SIZE`, `FC_SIZE`,
//! `EMBED_DIM`, `SEED`, `OPTIMIZER`, `DEVICE`). Progress goes to stdout, one line at a time.

mod local;
mod remote;
mod trainer_env;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use automl_text_classification::data::Dataset;
use automl_text_classification::device::{self, DeviceChoice};
use automl_text_classification::finetune::BaseModel;
use automl_text_classification::params::TrainParams;
use automl_text_classification::train::{self, EpochReport, Trained};
use automl_text_classification::{Error, Result};
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
    },
}

fn main() -> ExitCode {
    // SAFETY: first thing in main; no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        automl_text_classification::device::fix_cpu_thread_count();
    }
    init_tracing();
    let cli = Cli::parse();
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
    if let Some(Command::Evaluate {
        model,
        examples,
        labels,
        exclude_label,
    }) = cli.command
    {
        return local::evaluate(&model, &examples, &labels, exclude_label.as_deref());
    }
    let params = TrainParams::from_map(env)?;
    let choice: DeviceChoice = env
        .get("DEVICE")
        .map_or(Ok(DeviceChoice::Auto), |v| v.parse())?;
    let device = device::select(choice)?;
    println!(
        "automl-train {}: device {}, params {}",
        env!("CARGO_PKG_VERSION"),
        device::describe(&device),
        serde_json::to_string(&params)?
    );
    if let (Some(examples), Some(labels), Some(out)) = (cli.examples, cli.labels, cli.out) {
        return local::train(
            &examples,
            &labels,
            &out,
            cli.base.as_deref(),
            &params,
            &device,
        );
    }
    let trainer_env = trainer_env::TrainerEnv::from_map(env)
        .context("not a training job (use --examples/--labels/--out for the local mode)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(remote::run(trainer_env, params, device))
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
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
