//! `automl`: the server binary and command-line client.
//!
//! - `automl serve <service|all>` starts services (see [`serve`]); `automl migrate` applies
//!   database migrations; `automl health` checks a server.
//! - `automl dataset …` drives data-management (see [`datasets`]); `automl runs list|show|watch`
//!   read metadata-store (see [`client`]).
//!
//! Configuration: [`config::AutomlConfig`], loaded from defaults, `--config FILE`,
//! `AUTOML__SECTION__KEY` variables and flags, in that order.

mod client;
mod config;
mod datasets;
mod serve;
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
    /// Check a server's grpc.health.v1 status; exits 0 when SERVING.
    Health {
        /// `host:port` of the server.
        #[arg(long, default_value = "localhost:6002")]
        addr: String,
        /// The service to ask about; empty for the whole server.
        #[arg(long, default_value = "")]
        service: String,
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
    /// Runs recorded in metadata-store.
    Runs {
        /// `host:port` of metadata-store.
        #[arg(long, env = "AUTOML_METADATA_STORE", default_value = "localhost:6002")]
        server: String,
        #[command(subcommand)]
        command: client::RunsCommand,
    },
}

/// Options shared by the commands that load the server configuration.
#[derive(Debug, clap::Args)]
struct ServerOptions {
    /// A TOML configuration file (see automl.example.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
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
    fn load(&self, service: Option<ServiceArg>) -> anyhow::Result<AutomlConfig> {
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
        let services = service.map(ServiceArg::expand).unwrap_or_default();
        if let Some(host) = &self.host {
            for one in &services {
                overrides.push((format!("{}.host", one.section()), host.clone()));
            }
        }
        if let Some(port) = self.port {
            let [one] = services.as_slice() else {
                anyhow::bail!(
                    "--port needs exactly one service; set ports in the config for `all`"
                );
            };
            overrides.push((format!("{}.port", one.section()), port.to_string()));
        }
        let env: HashMap<String, String> = std::env::vars().collect();
        Ok(AutomlConfig::load(
            self.config.as_deref(),
            &env,
            &overrides,
        )?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { service, options } => {
            let config = options.load(Some(service))?;
            automl_common::telemetry::init(&config.telemetry);
            serve::run(config, service).await?;
        }
        Command::Migrate { service, options } => {
            let config = options.load(Some(service))?;
            automl_common::telemetry::init(&config.telemetry);
            serve::migrate(config, service).await?;
        }
        Command::Config { options } => {
            let mut config = options.load(None)?;
            config.s3.secret_key = "<redacted>".into();
            print!("{}", toml::to_string_pretty(&config)?);
        }
        Command::Health { addr, service } => {
            return client::health(&addr, &service).await;
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
        Command::Runs { server, command } => client::runs(&server, command).await?,
    }
    Ok(ExitCode::SUCCESS)
}
