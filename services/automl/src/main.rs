//! `automl`: the server binary and command-line client.
//!
//! - `automl serve <service|all>` starts services (see [`serve`]); `automl migrate` applies
//!   database migrations; `automl health` checks a server.
//! - `automl dataset …` drives data-management (see [`datasets`]); `automl runs list|show|watch`
//!   read metadata-store (see [`client`]).
//! - `automl experiment create|watch|list|show|stop` runs hyperparameter searches in
//!   training-service (see [`experiments`]).
//! - `automl pretrained import|show` manages pretrained models in the models bucket (see
//!   [`pretrained`]).
//! - `automl trainer …` (hidden) is the training program, `automl-train`, so that a system
//!   started from this binary alone can train.
//!
//! Configuration: [`config::AutomlConfig`], loaded from defaults, `--config FILE`,
//! `AUTOML__SECTION__KEY` variables and flags, in that order.

mod client;
mod config;
mod datasets;
mod experiments;
mod pretrained;
mod serve;
mod status;
mod training;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::AutomlConfig;
use crate::serve::ServiceArg;

/// A deep-learning system: datasets, training jobs, runs and model serving over gRPC.
#[derive(Debug, Parser)]
#[command(name = "automl", version, about)]
struct Cli {
    /// Log lines as `text` (human-readable) or `json` (one object per line); overrides
    /// `telemetry.log_format`.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// API token for the client commands (`automl token create` makes one); sent as
    /// `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "AUTOML_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to verify the servers' TLS certificates; turns the client commands
    /// to https.
    #[arg(long, global = true, env = "AUTOML_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start one service, or all of them in one process, on embedded defaults unless configured.
    Serve {
        /// Which service to start.
        #[arg(value_enum, default_value = "all")]
        service: ServiceArg,
        #[command(flatten)]
        options: ServerOptions,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// Which service's schema.
        #[arg(value_enum, default_value = "all")]
        service: ServiceArg,
        #[command(flatten)]
        options: ServerOptions,
    },
    /// Print the effective configuration (secrets redacted) and exit.
    Config {
        #[command(flatten)]
        options: ServerOptions,
    },
    /// Check grpc.health.v1 status; exits 0 when SERVING.
    ///
    /// With --addr, asks that server. Without it, asks every service port of the configuration
    /// on this machine and passes when at least one answers and all that answer are SERVING:
    /// the container health check, whichever service the container runs.
    Health {
        /// `host:port` of the server.
        #[arg(long)]
        addr: Option<String>,
        /// The service to ask about; empty for the whole server.
        #[arg(long, default_value = "")]
        service: String,
        /// TOML configuration files, read for the ports when --addr is not given.
        #[arg(long, short = 'c')]
        config: Vec<PathBuf>,
    },
    /// Datasets in data-management.
    Dataset {
        /// `host:port` of data-management.
        #[arg(long, env = "AUTOML_DATA_MANAGEMENT", default_value = "localhost:6000")]
        server: String,
        #[command(subcommand)]
        command: datasets::DatasetCommand,
    },
    /// Ask prediction-service for the label of a document.
    Predict {
        /// `host:port` of prediction-service.
        #[arg(
            long,
            env = "AUTOML_PREDICTION_SERVICE",
            default_value = "localhost:6001"
        )]
        server: String,
        /// The run whose model answers.
        #[arg(long)]
        run: String,
        /// Print the whole response as JSON.
        #[arg(long)]
        json: bool,
        /// The text to classify.
        document: String,
    },
    /// Submit a training job; with --watch, follow it to the end.
    Train {
        /// `host:port` of training-service.
        #[arg(
            long,
            env = "AUTOML_TRAINING_SERVICE",
            default_value = "localhost:6003"
        )]
        server: String,
        #[command(flatten)]
        args: training::TrainArgs,
    },
    /// Training jobs in training-service.
    Jobs {
        /// `host:port` of training-service.
        #[arg(
            long,
            env = "AUTOML_TRAINING_SERVICE",
            default_value = "localhost:6003"
        )]
        server: String,
        #[command(subcommand)]
        command: training::JobsCommand,
    },
    /// Hyperparameter search in training-service: experiments that train trials with chosen
    /// parameters and keep the best.
    Experiment {
        /// `host:port` of training-service.
        #[arg(
            long,
            env = "AUTOML_TRAINING_SERVICE",
            default_value = "localhost:6003"
        )]
        server: String,
        #[command(subcommand)]
        command: experiments::ExperimentCommand,
    },
    /// One screen: each service's health, the training queue, recent runs and their final
    /// accuracy, loaded models (the services of the configuration on this machine).
    Status {
        #[command(flatten)]
        options: ServerOptions,
        /// `host:port` of the /metrics endpoint; default: this machine's `telemetry.metrics_port`.
        #[arg(long)]
        metrics: Option<String>,
        /// How many recent runs to list.
        #[arg(long, default_value_t = 5)]
        runs: i32,
    },
    /// API tokens: each acts for one tenant (`[auth] enabled = true`).
    Token {
        #[command(flatten)]
        options: ServerOptions,
        #[command(subcommand)]
        command: client::TokenCommand,
    },
    /// Runs recorded in metadata-store.
    Runs {
        /// `host:port` of metadata-store.
        #[arg(long, env = "AUTOML_METADATA_STORE", default_value = "localhost:6002")]
        server: String,
        #[command(subcommand)]
        command: client::RunsCommand,
    },
    /// Pretrained models (the sentence encoder) in the models bucket of the server
    /// configuration's object store.
    Pretrained {
        #[command(subcommand)]
        command: pretrained::PretrainedCommand,
    },
    /// The training program (`automl-train`), run by training-service's local backend when no
    /// `automl-train` is installed beside this binary.
    #[command(hide = true, disable_help_flag = true)]
    Trainer {
        /// The training program's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Options shared by the commands that load the server configuration.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerOptions {
    /// A TOML configuration file (see automl.example.toml); repeat it to layer files, later
    /// files overriding earlier ones key by key.
    #[arg(long, short = 'c')]
    config: Vec<PathBuf>,
    /// Data directory (SQLite files, embedded objects, caches).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL: empty for SQLite under the data directory, or postgres://…
    #[arg(long)]
    database_url: Option<String>,
    /// S3 endpoint (http://host:port); empty starts the embedded endpoint.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Interface to bind (every selected service).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (only when one service is selected).
    #[arg(long)]
    port: Option<u16>,
}

impl ServerOptions {
    pub(crate) fn load(&self, service: Option<ServiceArg>) -> anyhow::Result<AutomlConfig> {
        let mut overrides = Vec::new();
        if let Some(dir) = &self.data_dir {
            overrides.push(("data_dir".to_string(), dir.display().to_string()));
        }
        if let Some(url) = &self.database_url {
            overrides.push(("database.url".to_string(), url.clone()));
        }
        if let Some(endpoint) = &self.s3_endpoint {
            overrides.push(("s3.endpoint".to_string(), endpoint.clone()));
        }
        let sections = service.map(ServiceArg::sections).unwrap_or_default();
        if let Some(host) = &self.host {
            for section in &sections {
                overrides.push((format!("{section}.host"), host.clone()));
            }
        }
        if let Some(port) = self.port {
            let [section] = sections.as_slice() else {
                anyhow::bail!(
                    "--port needs exactly one service; set ports in the config for `all`"
                );
            };
            overrides.push((format!("{section}.port"), port.to_string()));
        }
        let env: HashMap<String, String> = std::env::vars().collect();
        Ok(AutomlConfig::load(&self.config, &env, &overrides)?)
    }
}

/// Serves blocks of 1 MiB and more from their own mappings, returned to the system when freed.
///
/// glibc starts at 128 KiB but raises its mmap threshold to the size of each mapped block
/// freed, up to 32 MiB. After the first 8 MiB upload part of an ingest is freed, every later
/// part comes from the heap of whichever thread's arena allocated it, and each of the (up to
/// 16 on 2 cores) arenas keeps pages of its own: a 1 GB ingest peaked at 92 MiB resident
/// instead of the ~48 MiB it holds. A fixed threshold turns the raising off. The trainer
/// keeps glibc's default (its tensors are allocated and freed at every step).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_mmap_threshold() {
    // SAFETY: mallopt takes glibc's arena locks itself; it is called before the runtime
    // starts any thread all the same.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() {}

/// tokio reads `TOKIO_WORKER_THREADS` when the services' runtime is built (the trainer's and the
/// trace exporter's set their worker counts themselves) and panics on a value that is not a
/// positive integer; this says so plainly first.
fn check_worker_threads(value: Option<std::ffi::OsString>) -> Result<(), String> {
    let Some(value) = value else {
        return Ok(());
    };
    match value.to_str().map(str::parse::<usize>) {
        Some(Ok(count)) if count > 0 => Ok(()),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS must be a whole number of worker threads above 0, not {value:?}"
        )),
    }
}

fn main() -> ExitCode {
    // Before the runtime starts its threads: prediction-service's model runs on candle, which
    // otherwise reads /proc/cpuinfo on every matrix product.
    // SAFETY: first thing in main; no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        automl_text_classification::device::fix_cpu_thread_count();
    }
    // The trainer parses its own arguments (and starts its own runtime).
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|first| first == "trainer") {
        return trainer(raw.collect());
    }
    let cli = Cli::parse();
    if let Command::Trainer { args } = cli.command {
        return trainer(args);
    }
    fix_mmap_threshold();
    if let Err(err) = check_worker_threads(std::env::var_os("TOKIO_WORKER_THREADS")) {
        eprintln!("automl: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("automl: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("automl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `automl trainer ARGS…`: the training program, as `automl-train ARGS…` runs it.
fn trainer(args: Vec<std::ffi::OsString>) -> ExitCode {
    let program = std::iter::once(std::ffi::OsString::from("automl-train")).chain(args);
    automl_text_classification::program::main_with(program)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format.as_deref();
    client::set_client_options(cli.token.clone(), cli.ca_file.clone())?;
    match cli.command {
        Command::Serve { service, options } => {
            let config = options.load(Some(service))?;
            init_telemetry(&config, service, log_format);
            serve::run(config, service).await?;
        }
        Command::Migrate { service, options } => {
            let config = options.load(Some(service))?;
            init_telemetry(&config, service, log_format);
            serve::migrate(config, service).await?;
        }
        Command::Config { options } => {
            let mut config = options.load(None)?;
            config.s3.secret_key = "<redacted>".into();
            config.database.url = automl_common::config::redact_url_password(&config.database.url);
            if !config.auth.internal_secret.is_empty() {
                config.auth.internal_secret = "<redacted>".into();
            }
            print!("{}", toml::to_string_pretty(&config)?);
        }
        Command::Health {
            addr: Some(addr),
            service,
            config: _,
        } => {
            return client::health(&addr, &service).await;
        }
        Command::Health {
            addr: None,
            service,
            config,
        } => {
            let env: HashMap<String, String> = std::env::vars().collect();
            let config = AutomlConfig::load(&config, &env, &[])?;
            let targets: Vec<(&str, String)> = ServiceArg::All
                .expand()
                .into_iter()
                .map(|one| (one.as_str(), serve::local_address(&config, one)))
                .collect();
            // The console answers on its own port (GET /healthz), not grpc.health.v1.
            let web =
                (service.is_empty() || service == "web").then(|| serve::local_web_address(&config));
            let targets: Vec<(&str, String)> = if service == "web" {
                Vec::new()
            } else {
                targets
            };
            return client::health_local(&targets, web.as_deref(), &service).await;
        }
        Command::Dataset { server, command } => datasets::run(&server, command).await?,
        Command::Predict {
            server,
            run,
            json,
            document,
        } => client::predict(&server, run, document, json).await?,
        Command::Train { server, args } => training::train(&server, args).await?,
        Command::Jobs { server, command } => training::jobs(&server, command).await?,
        Command::Experiment { server, command } => experiments::run(&server, command).await?,
        Command::Token { options, command } => {
            let config = options.load(None)?;
            client::tokens(&config.common(), command)?;
        }
        Command::Runs { server, command } => client::runs(&server, command).await?,
        Command::Pretrained { command } => pretrained::run(command).await?,
        // Dispatched in `main`: the trainer starts its own runtime.
        Command::Trainer { .. } => anyhow::bail!("the trainer cannot run inside the runtime"),
        Command::Status {
            options,
            metrics,
            runs,
        } => {
            let config = options.load(None)?;
            return status::run(&status::Targets::of(&config, metrics, runs)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs logging with `--log-format` (when given) over `telemetry.log_format`.
/// Logs (and traces, when `telemetry.otlp_endpoint` is set) of a process serving `service`:
/// its spans are exported as `automl-<service>`, or `automl` for `serve all`.
fn init_telemetry(config: &AutomlConfig, service: ServiceArg, log_format: Option<&str>) {
    let mut telemetry = config.telemetry.clone();
    match log_format {
        Some("json") => telemetry.log_format = automl_common::config::LogFormat::Json,
        Some("text") => telemetry.log_format = automl_common::config::LogFormat::Text,
        _ => {}
    }
    let name = match service.expand().as_slice() {
        [one] => format!("automl-{}", one.as_str()),
        _ => "automl".to_string(),
    };
    automl_common::telemetry::init_as(&telemetry, &name);
}
