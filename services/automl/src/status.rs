//! `automl status`: one screen for operators: each service's health, the training queue,
//! recent runs with their final accuracy, and the models prediction-service holds, from the
//! services' RPCs and the process's `/metrics` endpoint. Whatever does not answer is shown as
//! such; the command fails only when no service answers at all.

use std::process::ExitCode;
use std::time::Duration;

use automl_common::metrics_server::{sample, scrape};
use automl_proto::metadata_store as ms;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::training as tr;
use automl_proto::training::training_service_client::TrainingServiceClient;
use tonic::transport::Channel;

use crate::client::Conn;

use crate::config::AutomlConfig;
use crate::serve::{self, ServiceArg};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Where to find each part of the system.
pub struct Targets {
    /// `(service name, host:port)` of the four services.
    pub services: Vec<(&'static str, String)>,
    /// `host:port` of the `/metrics` endpoint.
    pub metrics: String,
    /// How many recent runs to show.
    pub runs: i32,
}

impl Targets {
    /// The services of `config` on this machine; `metrics` (default: this machine's
    /// `telemetry.metrics_port`); the `runs` most recent runs.
    pub fn of(config: &AutomlConfig, metrics: Option<String>, runs: i32) -> Self {
        let services = ServiceArg::All
            .expand()
            .into_iter()
            .map(|one| (one.as_str(), serve::local_address(config, one)))
            .collect();
        Self {
            services,
            metrics: metrics.unwrap_or_else(|| {
                format!(
                    "{}:{}",
                    serve::loopback(&config.telemetry.metrics_host),
                    config.telemetry.metrics_port
                )
            }),
            runs: runs.max(1),
        }
    }
}

/// A bind host as a client on this machine reaches it.
async fn channel(addr: &str) -> Option<Channel> {
    crate::client::endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()
}

async fn health(addr: &str) -> String {
    let Some(channel) = channel(addr).await else {
        return "UNREACHABLE".into();
    };
    let request = tonic_health::pb::HealthCheckRequest::default();
    match HealthClient::new(channel).check(request).await {
        Ok(response) => ServingStatus::try_from(response.into_inner().status)
            .unwrap_or(ServingStatus::Unknown)
            .as_str_name()
            .to_string(),
        Err(status) => format!("ERROR {:?}", status.code()),
    }
}

/// Prints the status screen.
pub async fn run(targets: &Targets) -> anyhow::Result<ExitCode> {
    println!("SERVICE              ADDRESS                HEALTH");
    let mut answered = 0;
    for (name, addr) in &targets.services {
        let state = health(addr).await;
        if state != "UNREACHABLE" {
            answered += 1;
        }
        println!("{name:<20} {addr:<22} {state}");
    }
    let metrics = scrape(&targets.metrics).await.ok();
    println!();
    print_queue(address(targets, "training-service"), metrics.as_deref()).await;
    println!();
    print_runs(address(targets, "metadata-store"), targets.runs).await;
    println!();
    print_models(metrics.as_deref(), &targets.metrics);
    Ok(if answered == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn address<'a>(targets: &'a Targets, name: &str) -> &'a str {
    targets
        .services
        .iter()
        .find(|(one, _)| *one == name)
        .map_or("", |(_, addr)| addr.as_str())
}

async fn count_jobs(
    client: &mut TrainingServiceClient<Conn>,
    statuses: &[tr::TrainingStatus],
) -> Option<i32> {
    let request = tr::ListTrainingJobsRequest {
        limit: 1,
        index: 0,
        statuses: statuses.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    };
    client
        .list_training_jobs(request)
        .await
        .ok()
        .map(|r| r.into_inner().total)
}

async fn print_queue(addr: &str, metrics: Option<&str>) {
    let Some(channel) = channel(addr).await else {
        println!("training queue: training-service unreachable at {addr}");
        return;
    };
    let mut client = TrainingServiceClient::new(crate::client::authed(channel));
    let queued = count_jobs(&mut client, &[tr::TrainingStatus::Queuing]).await;
    let running = count_jobs(
        &mut client,
        &[tr::TrainingStatus::Launch, tr::TrainingStatus::Running],
    )
    .await;
    let show = |n: Option<i32>| n.map_or("?".to_string(), |n| n.to_string());
    println!(
        "training queue: {} queued, {} running",
        show(queued),
        show(running)
    );
    if let Some(text) = metrics {
        let ended = |status: &str| {
            sample(
                text,
                &format!("automl_training_jobs_total{{status=\"{status}\"}}"),
            )
            .unwrap_or(0.0)
        };
        println!(
            "jobs ended since start: {} succeed, {} failure, {} canceled",
            ended("succeed"),
            ended("failure"),
            ended("canceled")
        );
    }
}

/// The accuracy a run reported last: `test_accuracy` of its end message or its last epoch's
/// `val_accuracy`/`accuracy`.
fn final_accuracy(run: &ms::RunInfo) -> String {
    if let Some(value) = run.message.strip_prefix("test accuracy ") {
        return value.to_string();
    }
    let last = run
        .epochs
        .values()
        .max_by_key(|epoch| epoch.epoch_id.parse::<u64>().unwrap_or(0));
    last.and_then(|epoch| {
        ["test_accuracy", "val_accuracy", "accuracy"]
            .iter()
            .find_map(|key| epoch.metrics.get(*key).cloned())
    })
    .unwrap_or_else(|| "-".to_string())
}

async fn print_runs(addr: &str, limit: i32) {
    let Some(channel) = channel(addr).await else {
        println!("recent runs: metadata-store unreachable at {addr}");
        return;
    };
    let mut client = MetadataStoreServiceClient::new(crate::client::authed(channel));
    let Ok(first) = client.list_runs(ms::ListRunsRequest::default()).await else {
        println!("recent runs: metadata-store did not answer");
        return;
    };
    let total = first.into_inner().total;
    let request = ms::ListRunsRequest {
        limit,
        index: (total - limit).max(0),
        ..Default::default()
    };
    let Ok(page) = client.list_runs(request).await else {
        println!("recent runs: metadata-store did not answer");
        return;
    };
    println!("recent runs ({total} in all)");
    println!("RUN      NAME                 STATE      ACCURACY  STARTED");
    for run in page.into_inner().runs.iter().rev() {
        let state = match (run.end_time.is_empty(), run.success) {
            (true, _) => "running",
            (false, true) => "succeeded",
            (false, false) => "failed",
        };
        println!(
            "{:<8} {:<20} {:<10} {:<9} {}",
            run.run_id,
            run.run_name,
            state,
            final_accuracy(run),
            run.start_time
        );
    }
}

fn print_models(metrics: Option<&str>, addr: &str) {
    let Some(text) = metrics else {
        println!("loaded models: /metrics unreachable at {addr}");
        return;
    };
    let value = |name: &str| sample(text, name).unwrap_or(0.0);
    println!(
        "loaded models: {} ({:.1} MiB); cache hits {}, misses {}, loads {}, evictions {}",
        value("automl_model_cache_models"),
        value("automl_model_cache_bytes") / (1024.0 * 1024.0),
        value("automl_model_cache_hits_total"),
        value("automl_model_cache_misses_total"),
        value("automl_model_loads_total"),
        value("automl_model_cache_evictions_total"),
    );
    let loaded = loaded_models(text);
    if !loaded.is_empty() {
        println!("RUN      VERSION  MIB     LOCATION");
    }
    for (run_id, version, location, bytes) in loaded {
        println!(
            "{run_id:<8} {version:<8} {:<7.1} {location}",
            bytes / (1024.0 * 1024.0)
        );
    }
}

/// (run id, version, location, bytes) of each `automl_model_cache_loaded_bytes` series.
fn loaded_models(text: &str) -> Vec<(String, String, String, f64)> {
    let prefix = "automl_model_cache_loaded_bytes{";
    let label = |labels: &str, name: &str| {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        let end = labels[start..].find('"')? + start;
        Some(labels[start..end].to_string())
    };
    let mut models: Vec<_> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(prefix)?;
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((
                label(labels, "run_id")?,
                label(labels, "version")?,
                label(labels, "location")?,
                value.parse().ok()?,
            ))
        })
        .collect();
    models.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    models
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn loaded_models_are_read_from_their_series() {
        let text = "# TYPE automl_model_cache_loaded_bytes gauge\n\
automl_model_cache_loaded_bytes{run_id=\"2\",version=\"1\",location=\"m/run_2\"} 2097152\n\
automl_model_cache_loaded_bytes{run_id=\"1\",version=\"3\",location=\"m/team-a/run_1\"} 1024\n\
automl_model_cache_bytes 2098176\n";
        let models = super::loaded_models(text);
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].0, "1");
        assert_eq!(models[0].2, "m/team-a/run_1");
        assert_eq!(
            models[1],
            ("2".into(), "1".into(), "m/run_2".into(), 2_097_152.0)
        );
    }

    /// Metric names in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(start) = rest.find("automl_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn every_metric_the_dashboard_plots_exists() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../k8s/observability/grafana-dashboard.json");
        let text = std::fs::read_to_string(&path).expect("dashboard exists");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        // Labelled families are exposed from their first series on: give each one.
        let metrics = automl_common::metrics::metrics();
        metrics.rpc.requests.with(&["s", "m"]).inc();
        metrics.rpc.errors.with(&["s", "m", "INTERNAL"]).inc();
        metrics.rpc.duration.with(&["s", "m"]).observe(0.1);
        metrics.data.snapshot_build.with(&["ready"]).observe(1.0);
        metrics
            .model_cache
            .loaded
            .with(&["1", "1", "m/run_1"])
            .set(1);
        metrics
            .storage
            .s3_duration
            .with(&["get_object"])
            .observe(0.1);
        metrics.storage.s3_errors.with(&["get_object"]).inc();
        metrics.storage.sql_duration.with(&["select"]).observe(0.1);
        let exposition = metrics.render();
        let exposed: BTreeSet<String> = exposition
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .flat_map(|line| {
                let mut parts = line.split_whitespace();
                let name = parts.next().unwrap_or("").to_string();
                match parts.next() {
                    Some("histogram") => ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|suffix| format!("{name}{suffix}"))
                        .collect::<Vec<_>>(),
                    // OpenMetrics names a counter's family without the `_total` of its sample.
                    Some("counter") => vec![format!("{name}_total")],
                    _ => vec![name],
                }
            })
            .collect();
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        let mut plotted = 0;
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for name in metric_names(expr) {
                    assert!(
                        exposed.contains(&name),
                        "{name} in panel {} is not exposed",
                        panel["title"]
                    );
                    plotted += 1;
                }
            }
        }
        assert!(plotted >= 15, "the dashboard plots the metrics");
    }
}
