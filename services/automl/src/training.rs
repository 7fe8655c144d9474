//! `automl train` and `automl jobs list|status|cancel|logs`: training-service from the shell.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::metadata_store::{GetRunStatusRequest, RunEventKind};
use automl_proto::training as pb;
use automl_proto::training::training_service_client::TrainingServiceClient;
use automl_training_service::config::DEFAULT_ALGORITHM;

use crate::client::{Conn, connect};

/// `automl train`
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset id.
    #[arg(long)]
    dataset: String,
    /// Snapshot version hash (from `automl dataset prepare`).
    #[arg(long)]
    version: String,
    /// Algorithm, a key of the training-service registry; default: the one training-service
    /// names (the encoder once its pretrained model is imported).
    #[arg(long)]
    algorithm: Option<String>,
    /// Job name.
    #[arg(long, default_value = "")]
    name: String,
    /// Name of the model artifact.
    #[arg(long, default_value = "intent")]
    model_name: String,
    /// A trainer parameter `KEY=VALUE` (repeatable), e.g. EPOCHS=10, LR=4.
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Fine-tune: start from this run's weights.
    #[arg(long, default_value = "")]
    base_run: String,
    #[command(flatten)]
    resources: ResourceArgs,
    /// Follow the job: queue position, a progress bar per epoch, the result.
    #[arg(long)]
    watch: bool,
    /// `host:port` of metadata-store, for the epoch progress of --watch.
    #[arg(long, env = "AUTOML_METADATA_STORE", default_value = "localhost:6002")]
    metadata_server: String,
}

/// What a job's trainer (each trial's, for an experiment) is given, and its priority.
#[derive(Debug, clap::Args)]
pub struct ResourceArgs {
    /// Order among your own queued jobs.
    #[arg(long, value_enum, default_value_t = Priority::Normal)]
    priority: Priority,
    /// The longest the trainer may run (seconds); default: training-service's configured one.
    #[arg(long, default_value_t = 0)]
    max_runtime: i64,
    /// CPU for the trainer (a Kubernetes quantity such as 2 or 500m).
    #[arg(long, default_value = "")]
    cpu: String,
    /// Memory for the trainer (a Kubernetes quantity such as 4Gi).
    #[arg(long, default_value = "")]
    memory: String,
    /// GPUs for the trainer.
    #[arg(long, default_value_t = 0)]
    gpus: i32,
}

impl ResourceArgs {
    /// The contract's resources and priority number.
    pub(crate) fn contract(self) -> (pb::Resources, i32) {
        (
            pb::Resources {
                cpu: self.cpu,
                memory: self.memory,
                gpus: self.gpus,
                max_runtime_seconds: self.max_runtime,
            },
            self.priority.contract().into(),
        )
    }
}

/// A job's priority among its tenant's queued jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Priority {
    /// After normal and high.
    Low,
    /// The default.
    Normal,
    /// Before normal and low.
    High,
}

impl Priority {
    fn contract(self) -> pb::JobPriority {
        match self {
            Priority::Low => pb::JobPriority::PriorityLow,
            Priority::Normal => pb::JobPriority::PriorityNormal,
            Priority::High => pb::JobPriority::PriorityHigh,
        }
    }
}

/// `automl jobs …`
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs, oldest first.
    List,
    /// Print a job's status.
    Status {
        /// The job id.
        job_id: i32,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job id.
        job_id: i32,
    },
    /// Print a job's log, following it until the job ends.
    Logs {
        /// The job id.
        job_id: i32,
    },
    /// The algorithms training-service can train, whether each is ready, and the parameters
    /// each one's trainer reads.
    Algorithms,
}

/// `int 0..=100000`, `double (0, inf)`, `adamw|sgd`.
fn parameter_range(parameter: &pb::ParameterSpec) -> String {
    let bound = |value: f64| {
        if value.is_infinite() {
            if value < 0.0 { "-inf" } else { "inf" }.to_string()
        } else {
            value.to_string()
        }
    };
    match parameter.r#type() {
        pb::ParameterType::ParameterCategorical => parameter.values.join("|"),
        kind => {
            let name = if kind == pb::ParameterType::ParameterInt {
                "int"
            } else {
                "double"
            };
            let open = if parameter.min_exclusive || parameter.min.is_infinite() {
                '('
            } else {
                '['
            };
            let close = if parameter.max_exclusive || parameter.max.is_infinite() {
                ')'
            } else {
                ']'
            };
            format!(
                "{name} {open}{}, {}{close}",
                bound(parameter.min),
                bound(parameter.max)
            )
        }
    }
}

pub(crate) fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("parameter `{text}` must be KEY=VALUE"))
}

/// `automl train`: submits a job; with `--watch`, follows it to the end and fails when the
/// job does.
pub async fn train(server: &str, args: TrainArgs) -> anyhow::Result<()> {
    let mut client = TrainingServiceClient::new(connect(server).await?);
    let algorithm = match args.algorithm {
        Some(algorithm) => algorithm,
        None => {
            let algorithm = default_algorithm(&mut client).await?;
            eprintln!("algorithm: {algorithm}");
            algorithm
        }
    };
    let parameters: HashMap<String, String> = args.params.into_iter().collect();
    let epochs: u64 = parameters
        .get("EPOCHS")
        .and_then(|e| e.parse().ok())
        .unwrap_or(15);
    let (resources, priority) = args.resources.contract();
    let job_id = client
        .train(pb::TrainRequest {
            metadata: Some(pb::TrainingJobMetadata {
                algorithm,
                dataset_id: args.dataset,
                name: args.name,
                train_data_version_hash: args.version,
                parameters,
                output_model_name: args.model_name,
                resources: Some(resources),
                base_run_id: args.base_run,
                priority,
            }),
        })
        .await?
        .into_inner()
        .job_id;
    println!("job {job_id} submitted");
    if !args.watch {
        return Ok(());
    }
    let mut updates = client
        .watch_training_status(pb::GetTrainingStatusRequest { job_id })
        .await?
        .into_inner();
    let mut follower: Option<tokio::task::JoinHandle<()>> = None;
    let mut last = None;
    while let Some(update) = updates.message().await? {
        match update.status() {
            pb::TrainingStatus::Queuing => println!("queued: {}", update.message),
            pb::TrainingStatus::Launch => println!("launching"),
            pb::TrainingStatus::Running => {
                println!("running");
                if follower.is_none() {
                    let metadata = args.metadata_server.clone();
                    follower = Some(tokio::spawn(follow_epochs(metadata, job_id, epochs)));
                }
            }
            _ => {}
        }
        last = Some(update);
    }
    if let Some(follower) = follower {
        // The run ends before the trainer exits; give the last epochs a moment to print.
        let _ = tokio::time::timeout(Duration::from_secs(3), follower).await;
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("the status stream ended without a status"))?;
    let outcome = last.status().as_str_name();
    println!("job {job_id} {outcome}: {}", last.message);
    anyhow::ensure!(
        last.status() == pb::TrainingStatus::Succeed,
        "job {job_id} ended {outcome}"
    );
    Ok(())
}

/// The algorithm training-service trains when a client names none; `intent-classification`
/// for a server without ListAlgorithms.
async fn default_algorithm(client: &mut TrainingServiceClient<Conn>) -> anyhow::Result<String> {
    match client
        .list_algorithms(pb::ListAlgorithmsRequest::default())
        .await
    {
        Ok(listed) => Ok(listed.into_inner().default_algorithm),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            Ok(DEFAULT_ALGORITHM.to_string())
        }
        Err(status) => Err(status.into()),
    }
}

/// Prints a progress bar line per epoch of run `job_id`, waiting for the run to start.
async fn follow_epochs(server: String, job_id: i32, epochs: u64) {
    let Ok(channel) = connect(&server).await else {
        eprintln!("(no epoch progress: metadata-store at {server} is unreachable)");
        return;
    };
    let mut client = MetadataStoreServiceClient::new(channel);
    let mut delay = Duration::from_millis(100);
    let mut stream = loop {
        match client
            .watch_run(GetRunStatusRequest {
                run_id: job_id.to_string(),
            })
            .await
        {
            Ok(stream) => break stream.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(_) => return,
        }
    };
    while let Ok(Some(event)) = stream.message().await {
        if event.kind() != RunEventKind::Epoch {
            continue;
        }
        let Some(epoch) = event.epoch else { continue };
        let done: u64 = epoch.epoch_id.parse().unwrap_or(0);
        let width = 30u64;
        let filled = (done * width).checked_div(epochs).unwrap_or(0).min(width);
        let bar = format!(
            "{}{}",
            "#".repeat(filled as usize),
            ".".repeat((width - filled) as usize)
        );
        let metric = |name: &str| epoch.metrics.get(name).cloned().unwrap_or_default();
        println!(
            "epoch {done:>3}/{epochs} [{bar}] loss {} accuracy {} val_accuracy {}",
            metric("loss"),
            metric("accuracy"),
            metric("val_accuracy")
        );
        let _ = std::io::stdout().flush();
    }
}

/// `automl jobs …`
pub async fn jobs(server: &str, command: JobsCommand) -> anyhow::Result<()> {
    let mut client = TrainingServiceClient::new(connect(server).await?);
    match command {
        JobsCommand::Algorithms => {
            let listed = client
                .list_algorithms(pb::ListAlgorithmsRequest::default())
                .await?
                .into_inner();
            for algorithm in &listed.algorithms {
                let default = if algorithm.name == listed.default_algorithm {
                    " (default)"
                } else {
                    ""
                };
                let ready = if algorithm.ready {
                    "ready".to_string()
                } else {
                    format!("not ready: {}", algorithm.message)
                };
                println!("{}{default}: {ready}", algorithm.name);
                for parameter in &algorithm.parameters {
                    println!(
                        "  {:<14} {:<28} default {:<8} {}",
                        parameter.name,
                        parameter_range(parameter),
                        parameter.default_value,
                        parameter.help
                    );
                }
            }
        }
        JobsCommand::List => {
            let listed = client
                .list_training_jobs(pb::ListTrainingJobsRequest::default())
                .await?
                .into_inner();
            println!(
                "{:<6} {:<10} {:<22} {:<10} MESSAGE",
                "JOB", "STATUS", "ALGORITHM", "DATASET"
            );
            for job in listed.jobs {
                let metadata = job.metadata.clone().unwrap_or_default();
                println!(
                    "{:<6} {:<10} {:<22} {:<10} {}",
                    job.job_id,
                    job.status().as_str_name(),
                    metadata.algorithm,
                    metadata.dataset_id,
                    job.message
                );
            }
        }
        JobsCommand::Status { job_id } => {
            let job = client
                .get_training_status(pb::GetTrainingStatusRequest { job_id })
                .await?
                .into_inner();
            println!(
                "job {} {}: {}",
                job.job_id,
                job.status().as_str_name(),
                job.message
            );
        }
        JobsCommand::Cancel { job_id } => {
            let job = client
                .cancel_training_job(pb::GetTrainingStatusRequest { job_id })
                .await?
                .into_inner();
            println!("job {} {}", job.job_id, job.status().as_str_name());
        }
        JobsCommand::Logs { job_id } => {
            let mut lines = client
                .get_training_logs(pb::GetTrainingLogsRequest {
                    job_id,
                    from_line: 0,
                })
                .await?
                .into_inner();
            while let Some(line) = lines.message().await? {
                println!("{}", line.text);
            }
        }
    }
    Ok(())
}
