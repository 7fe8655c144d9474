//! Client commands: `automl health`, `automl predict` and `automl runs list|show|watch`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use std::path::PathBuf;
use std::sync::OnceLock;

use automl_common::auth::{self, Credentials};
use automl_common::config::CommonConfig;
use automl_common::tls::TlsConfig;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `automl runs …`
#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// List runs, oldest first.
    List {
        /// Only runs trained on this dataset.
        #[arg(long, default_value = "")]
        dataset: String,
        /// Only runs with this name.
        #[arg(long, default_value = "")]
        name: String,
        /// Page size (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: i32,
        /// Offset of the first run.
        #[arg(long, default_value_t = 0)]
        index: i32,
    },
    /// Print one run with its epochs as JSON.
    Show {
        /// The run id.
        run_id: String,
    },
    /// Follow a run: its state, then each epoch as it is logged, until it ends.
    Watch {
        /// The run id.
        run_id: String,
    },
}

/// A connection of the client commands: every call carries the `--token`.
pub type Conn = InterceptedService<Channel, Credentials>;

/// `--token` and `--ca-file`, set once from the command line.
#[derive(Debug, Default)]
struct ClientOptions {
    credentials: Credentials,
    tls: TlsConfig,
}

static CLIENT_OPTIONS: OnceLock<ClientOptions> = OnceLock::new();

/// Records `--token` / AUTOML_TOKEN and `--ca-file` / AUTOML_CA_FILE for every client command.
pub fn set_client_options(token: Option<String>, ca_file: Option<PathBuf>) -> anyhow::Result<()> {
    let credentials = Credentials::bearer(token.as_deref().unwrap_or_default())
        .map_err(|status| anyhow::anyhow!("--token: {}", status.message()))?;
    let tls = TlsConfig {
        ca_file: ca_file.map(|p| p.display().to_string()).unwrap_or_default(),
        ..TlsConfig::default()
    };
    let _ = CLIENT_OPTIONS.set(ClientOptions { credentials, tls });
    Ok(())
}

fn options() -> &'static ClientOptions {
    CLIENT_OPTIONS.get_or_init(ClientOptions::default)
}

/// `host:port` → `https://host:port` with `--ca-file`, else `http://host:port`; full URLs as is.
pub fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if options().tls.ca_file.is_empty() {
        format!("http://{addr}")
    } else {
        format!("https://{addr}")
    }
}

/// An endpoint for `addr` (TLS verified with `--ca-file` when https).
pub fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    Ok(options().tls.endpoint(&url(addr))?)
}

/// Adds the `--token` to every call on `channel`.
pub fn authed(channel: Channel) -> Conn {
    InterceptedService::new(channel, options().credentials.clone())
}

/// Connects to `host:port` (or a full `http://` / `https://` URL).
pub async fn connect(addr: &str) -> anyhow::Result<Conn> {
    let url = url(addr);
    let channel = endpoint(addr)?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(authed(channel))
}

/// `automl token …`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token for a tenant; it is printed once and stored only hashed.
    Create {
        /// The tenant it acts for (a-z, 0-9, -).
        #[arg(long)]
        tenant: String,
        /// Who holds it, for the audit log.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by its id; calls with it are refused from then on.
    Revoke {
        /// The id `list` shows.
        id: String,
    },
}

/// `automl token create|list|revoke` on the configured tokens file.
pub fn tokens(common: &CommonConfig, command: TokenCommand) -> anyhow::Result<()> {
    let path = common.auth.tokens_path(&common.data_dir);
    match command {
        TokenCommand::Create { tenant, name } => {
            let name = if name.is_empty() {
                tenant.clone()
            } else {
                name
            };
            let (token, stored) = auth::create_token(&path, &tenant, &name)?;
            eprintln!(
                "token {} for tenant {} ({}) stored in {}; it is shown only now:",
                stored.id,
                stored.tenant,
                stored.name,
                path.display()
            );
            println!("{token}");
        }
        TokenCommand::List { tenant } => {
            println!(
                "{:<14} {:<20} {:<20} {:<26} state",
                "id", "tenant", "name", "created"
            );
            for token in auth::list_tokens(&path, tenant.as_deref())? {
                println!(
                    "{:<14} {:<20} {:<20} {:<26} {}",
                    token.id,
                    token.tenant,
                    token.name,
                    token.created_at,
                    if token.revoked { "revoked" } else { "active" }
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !auth::revoke_token(&path, &id)? {
                anyhow::bail!("no token with id {id} in {}", path.display());
            }
            println!("token {id} revoked");
        }
    }
    Ok(())
}

/// `automl health`: prints the status; success only when SERVING.
pub async fn health(addr: &str, service: &str) -> anyhow::Result<ExitCode> {
    let mut client = HealthClient::new(connect(addr).await?);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .with_context(|| format!("health check of {addr}"))?
        .into_inner();
    let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `automl health` without `--addr`: asks each `(name, host:port)` in `targets`, and the web
/// console at `web` (`GET /healthz`) when given; ports nobody listens on are skipped, so one
/// check fits a process serving any subset of the services and the console.
/// Success when at least one answers and every one that answers is SERVING.
pub async fn health_local(
    targets: &[(&str, String)],
    web: Option<&str>,
    service: &str,
) -> anyhow::Result<ExitCode> {
    let mut answered = 0;
    let mut healthy = true;
    if let Some(addr) = web {
        let base = url(addr);
        if let Some(serving) = web_health(&base).await? {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            println!("web {addr} {}", status.as_str_name());
            answered += 1;
            healthy &= serving;
        }
    }
    for (name, addr) in targets {
        let endpoint = endpoint(addr)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(3));
        let Ok(channel) = endpoint.connect().await else {
            continue;
        };
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        };
        let status = match HealthClient::new(channel).check(request).await {
            Ok(response) => ServingStatus::try_from(response.into_inner().status)
                .unwrap_or(ServingStatus::Unknown),
            Err(_) => ServingStatus::Unknown,
        };
        println!("{name} {addr} {}", status.as_str_name());
        answered += 1;
        healthy &= status == ServingStatus::Serving;
    }
    if answered == 0 {
        println!("no service answers on this machine");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `GET <base>/healthz` of the web console: None when nothing answers, else whether it
/// answered 200. An `https://` base is verified with `--ca-file`.
async fn web_health(base: &str) -> anyhow::Result<Option<bool>> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let uri: hyper::Uri = format!("{base}/healthz")
        .parse()
        .with_context(|| format!("web console address {base}"))?;
    let ca_file = base
        .starts_with("https://")
        .then(|| std::path::Path::new(&options().tls.ca_file));
    let connector = automl_common::tls::https_connector(ca_file)?;
    let request = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(connector)
        .get(uri);
    Ok(
        match tokio::time::timeout(Duration::from_secs(3), request).await {
            Ok(Ok(response)) => Some(response.status() == hyper::StatusCode::OK),
            Ok(Err(_)) | Err(_) => None,
        },
    )
}

/// `automl predict`: prints the label and scores (or the whole response as JSON).
pub async fn predict(
    server: &str,
    run_id: String,
    document: String,
    json: bool,
) -> anyhow::Result<()> {
    use automl_proto::prediction::PredictRequest;
    use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
    let mut client = PredictionServiceClient::new(connect(server).await?);
    let answer = client
        .predict(PredictRequest { run_id, document })
        .await?
        .into_inner();
    if json {
        let top: Vec<serde_json::Value> = answer
            .top
            .iter()
            .map(|s| serde_json::json!({"label": s.label, "score": s.score}))
            .collect();
        let value = serde_json::json!({
            "response": answer.response,
            "label": answer.label,
            "score": answer.score,
            "top": top,
            "modelVersion": answer.model_version,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{} ({:.3})", answer.label, answer.score);
    for scored in answer.top.iter().skip(1) {
        println!("  {} ({:.3})", scored.label, scored.score);
    }
    Ok(())
}

/// `automl runs …`
pub async fn runs(server: &str, command: RunsCommand) -> anyhow::Result<()> {
    let mut client = MetadataStoreServiceClient::new(connect(server).await?);
    match command {
        RunsCommand::List {
            dataset,
            name,
            limit,
            index,
        } => {
            let response = client
                .list_runs(pb::ListRunsRequest {
                    dataset_id: dataset,
                    run_name: name,
                    limit,
                    index,
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!(
                "{:<10} {:<24} {:<8} {:<10} {:<12} MESSAGE",
                "RUN", "NAME", "EPOCHS", "DATASET", "VERSION"
            );
            for run in response.runs {
                let lineage = run.tracing.clone().unwrap_or_default();
                println!(
                    "{:<10} {:<24} {:<8} {:<10} {:<12} {}",
                    run.run_id,
                    run.run_name,
                    run.epochs.len(),
                    lineage.dataset_id,
                    lineage.version_hash,
                    run.message
                );
            }
            println!("{} run(s) in all", response.total);
        }
        RunsCommand::Show { run_id } => {
            let run = client
                .get_run_status(pb::GetRunStatusRequest { run_id })
                .await?
                .into_inner()
                .run_info
                .unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&run_json(&run))?);
        }
        RunsCommand::Watch { run_id } => {
            let mut stream = client
                .watch_run(pb::GetRunStatusRequest { run_id })
                .await?
                .into_inner();
            while let Some(event) = stream.message().await? {
                print_event(&event);
            }
        }
    }
    Ok(())
}

fn print_event(event: &pb::RunEvent) {
    match pb::RunEventKind::try_from(event.kind) {
        Ok(pb::RunEventKind::Snapshot) => {
            if let Some(run) = &event.run_info {
                println!(
                    "run {} ({}): {} epoch(s) so far, {}",
                    run.run_id,
                    run.run_name,
                    run.epochs.len(),
                    run.message
                );
            }
        }
        Ok(pb::RunEventKind::Epoch) => {
            if let Some(epoch) = &event.epoch {
                let mut metrics: Vec<_> = epoch.metrics.iter().collect();
                metrics.sort();
                let text: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("epoch {}: {}", epoch.epoch_id, text.join(" "));
            }
        }
        Ok(pb::RunEventKind::End) => {
            if let Some(run) = &event.run_info {
                let outcome = if run.success { "succeeded" } else { "failed" };
                println!("run {} {outcome}: {}", run.run_id, run.message);
            }
        }
        Err(_) => {}
    }
}

fn run_json(run: &pb::RunInfo) -> serde_json::Value {
    let lineage = run.tracing.clone().unwrap_or_default();
    let mut epochs: Vec<&pb::EpochInfo> = run.epochs.values().collect();
    epochs.sort_by_key(|epoch| natural_key(&epoch.epoch_id));
    serde_json::json!({
        "runId": run.run_id,
        "runName": run.run_name,
        "startTime": run.start_time,
        "endTime": run.end_time,
        "success": run.success,
        "message": run.message,
        "tracing": {
            "datasetId": lineage.dataset_id,
            "versionHash": lineage.version_hash,
            "codeVersion": lineage.code_version,
            "baseRunId": lineage.base_run_id,
        },
        "epochs": epochs.iter().map(|epoch| serde_json::json!({
            "epochId": epoch.epoch_id,
            "startTime": epoch.start_time,
            "endTime": epoch.end_time,
            "metrics": epoch.metrics,
        })).collect::<Vec<_>>(),
    })
}

/// Sorts "2" before "10".
fn natural_key(id: &str) -> (u64, String) {
    (id.parse().unwrap_or(u64::MAX), id.to_string())
}
