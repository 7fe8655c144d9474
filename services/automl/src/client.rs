//! Client commands: `automl health`, `automl predict` and `automl runs list|show|watch`.

use std::process::ExitCode;

use anyhow::Context;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tonic::transport::Channel;
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

/// Connects to `host:port` (or a full `http://` URL).
pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
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
