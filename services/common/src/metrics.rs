//! Prometheus metrics through `prometheus-client`: one process-wide [`Registry`] holding every
//! family, exposed as OpenMetrics text on `/metrics` ([`crate::metrics_server`]).
//!
//! Every family lives in [`Metrics`], reached through [`metrics()`], so that `automl serve all`
//! exposes the four services on one endpoint, and every family is registered before its first
//! use (a dashboard shows 0, not "no data", for a queue that never filled).
//!
//! The training-service API (called by the scheduler and the backends):
//! - [`TrainingMetrics::set_queue_depth`] after every change of the queue (submit, claim,
//!   cancel of a queued job, start-up);
//! - [`TrainingMetrics::set_running_jobs`] after every launch and every end;
//! - [`TrainingMetrics::job_finished`] once per job that reaches `succeed`, `failure` or
//!   `canceled`, with its duration from launch when this process launched it (a job that never
//!   ran, or one launched before a restart, is counted without a duration);
//! - [`TrainingMetrics::experiment_ended`] once per experiment that ends (by the replica whose
//!   update ended it), and [`TrainingMetrics::trial_early_stopped`] once per trial the median
//!   rule stops.

use std::sync::OnceLock;
use std::time::Duration;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The content type of the exposition (OpenMetrics text, which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds: 0.5 ms to 10 s, for RPCs, S3 and SQL calls.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets in seconds for work that takes seconds to hours: snapshot builds, training jobs.
pub const LONG_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// The final states of a training job, pre-registered so their series exist at 0.
pub const JOB_STATUSES: &[&str] = &["succeed", "failure", "canceled"];

/// The final states of an experiment, pre-registered so their series exist at 0.
pub const EXPERIMENT_STATUSES: &[&str] = &["succeeded", "failed", "stopped"];

/// A label set: the family's label names with one value each.
type Labels = Vec<(&'static str, String)>;

/// A metric family whose label values are given by position, in the order of its label names.
/// The series are `prometheus-client`'s (cheap clones of one shared metric).
#[derive(Debug)]
pub struct Family<M> {
    names: &'static [&'static str],
    inner: prometheus_client::metrics::family::Family<Labels, M, fn() -> M>,
}

impl<M: Clone> Family<M> {
    fn new(names: &'static [&'static str], make: fn() -> M) -> Self {
        Self {
            names,
            inner: prometheus_client::metrics::family::Family::new_with_constructor(make),
        }
    }

    fn labels(&self, values: &[&str]) -> Labels {
        self.names
            .iter()
            .zip(values)
            .map(|(name, value)| (*name, (*value).to_string()))
            .collect()
    }

    /// The series for `values` (one per label name, in order), created at its first use.
    /// Keep the returned handle where a call path uses the same series every time.
    pub fn with(&self, values: &[&str]) -> M {
        self.inner.get_or_create_owned(&self.labels(values))
    }

    /// Drops the series for `values`, so it is no longer exposed (a model evicted from the
    /// cache, say).
    pub fn remove(&self, values: &[&str]) {
        self.inner.remove(&self.labels(values));
    }
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

fn long() -> Histogram {
    Histogram::new(LONG_BUCKETS.iter().copied())
}

/// `metric` registered as `name` (a counter without its `_total`, which the encoder appends).
fn single<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// A family with the label `names`, registered as `name` (as [`single`]).
fn family<M: Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    names: &'static [&'static str],
    make: fn() -> M,
) -> Family<M>
where
    prometheus_client::metrics::family::Family<Labels, M, fn() -> M>: Metric,
{
    let family = Family::new(names, make);
    r.register(name, help, family.inner.clone());
    family
}

/// Every RPC of every service (recorded by [`crate::rpc::RpcLayer`]).
#[derive(Debug)]
pub struct RpcMetrics {
    /// `automl_grpc_requests_total{service,method}`: calls received.
    pub requests: Family<Counter>,
    /// `automl_grpc_errors_total{service,method,code}`: calls answered with a non-OK status.
    pub errors: Family<Counter>,
    /// `automl_grpc_request_duration_seconds{service,method}`: time to the response headers.
    pub duration: Family<Histogram>,
}

/// The training queue; updated by training-service (see the module docs for where).
#[derive(Debug)]
pub struct TrainingMetrics {
    /// `automl_training_queue_depth`: jobs waiting to run.
    pub queue_depth: Gauge,
    /// `automl_training_running_jobs`: jobs launched and not yet ended.
    pub running_jobs: Gauge,
    /// `automl_training_jobs_total{status}`: jobs that ended, by final status.
    pub jobs: Family<Counter>,
    /// `automl_training_job_duration_seconds{status}`: launch to end.
    pub job_duration: Family<Histogram>,
    /// `automl_experiments_total{status}`: experiments that ended, by final status.
    pub experiments: Family<Counter>,
    /// `automl_experiment_trials_early_stopped_total`: trials the median rule stopped.
    pub early_stopped: Counter,
}

impl TrainingMetrics {
    /// Sets the number of queued jobs.
    pub fn set_queue_depth(&self, jobs: u64) {
        self.queue_depth
            .set(i64::try_from(jobs).unwrap_or(i64::MAX));
    }

    /// Sets the number of running jobs.
    pub fn set_running_jobs(&self, jobs: u64) {
        self.running_jobs
            .set(i64::try_from(jobs).unwrap_or(i64::MAX));
    }

    /// Records one job that ended with `status` (`succeed`, `failure`, `canceled`) after
    /// running for `duration`.
    pub fn job_finished(&self, status: &str, duration: Option<Duration>) {
        self.jobs.with(&[status]).inc();
        if let Some(duration) = duration {
            self.job_duration
                .with(&[status])
                .observe(duration.as_secs_f64());
        }
    }

    /// Records one experiment that ended with `status` (`succeeded`, `failed`, `stopped`).
    pub fn experiment_ended(&self, status: &str) {
        self.experiments.with(&[status]).inc();
    }

    /// Records one trial stopped by the median rule.
    pub fn trial_early_stopped(&self) {
        self.early_stopped.inc();
    }
}

/// data-management's ingest and snapshot work.
#[derive(Debug)]
pub struct DataMetrics {
    /// `automl_ingest_bytes_total`: raw bytes read by ingests (CreateDataset, UpdateDataset).
    pub ingest_bytes: Counter,
    /// `automl_upload_bytes_total`: bytes received by the UploadData RPC.
    pub upload_bytes: Counter,
    /// `automl_snapshot_build_duration_seconds{outcome}`: building one training snapshot.
    pub snapshot_build: Family<Histogram>,
}

/// prediction-service's model cache.
#[derive(Debug)]
pub struct ModelCacheMetrics {
    /// `automl_model_cache_hits_total`: requests served by a loaded model.
    pub hits: Counter,
    /// `automl_model_cache_misses_total`: requests that had to wait for a load.
    pub misses: Counter,
    /// `automl_model_loads_total`: models downloaded and loaded.
    pub loads: Counter,
    /// `automl_model_load_duration_seconds`: download plus load of one model.
    pub load_duration: Histogram,
    /// `automl_model_cache_evictions_total`: models dropped to make room.
    pub evictions: Counter,
    /// `automl_model_cache_models`: models loaded now.
    pub models: Gauge,
    /// `automl_model_cache_bytes`: memory held by loaded models (their weight and vocabulary
    /// files).
    pub bytes: Gauge,
    /// `automl_model_cache_loaded_bytes{run_id,version,location}`: one series per model in
    /// memory now (bounded by the cache's size), with its bytes; gone once evicted.
    pub loaded: Family<Gauge>,
}

/// Calls to the storage below the services.
#[derive(Debug)]
pub struct StorageMetrics {
    /// `automl_s3_request_duration_seconds{operation}`: one object-store call.
    pub s3_duration: Family<Histogram>,
    /// `automl_s3_errors_total{operation}`: object-store calls that failed.
    pub s3_errors: Family<Counter>,
    /// `automl_sql_query_duration_seconds{statement}`: one SQL statement, by its verb.
    pub sql_duration: Family<Histogram>,
}

/// Every metric family of the process, and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    /// Per-RPC counts and latency.
    pub rpc: RpcMetrics,
    /// The training queue.
    pub training: TrainingMetrics,
    /// Ingest and snapshots.
    pub data: DataMetrics,
    /// The model cache.
    pub model_cache: ModelCacheMetrics,
    /// S3 and SQL.
    pub storage: StorageMetrics,
    registry: Registry,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        let rpc = RpcMetrics {
            requests: family(
                r,
                "automl_grpc_requests",
                "gRPC calls received",
                &["service", "method"],
                Counter::default,
            ),
            errors: family(
                r,
                "automl_grpc_errors",
                "gRPC calls answered with an error, by status code",
                &["service", "method", "code"],
                Counter::default,
            ),
            duration: family(
                r,
                "automl_grpc_request_duration_seconds",
                "gRPC call latency to the response headers",
                &["service", "method"],
                latency,
            ),
        };
        let training = TrainingMetrics {
            queue_depth: single(
                r,
                "automl_training_queue_depth",
                "Training jobs queued",
                Gauge::default(),
            ),
            running_jobs: single(
                r,
                "automl_training_running_jobs",
                "Training jobs running",
                Gauge::default(),
            ),
            jobs: family(
                r,
                "automl_training_jobs",
                "Training jobs ended, by final status",
                &["status"],
                Counter::default,
            ),
            job_duration: family(
                r,
                "automl_training_job_duration_seconds",
                "Training job duration from launch to end, by final status",
                &["status"],
                long,
            ),
            experiments: family(
                r,
                "automl_experiments",
                "Experiments ended, by final status",
                &["status"],
                Counter::default,
            ),
            early_stopped: single(
                r,
                "automl_experiment_trials_early_stopped",
                "Experiment trials stopped early by the median rule",
                Counter::default(),
            ),
        };
        for status in JOB_STATUSES {
            training.jobs.with(&[status]);
            training.job_duration.with(&[status]);
        }
        for status in EXPERIMENT_STATUSES {
            training.experiments.with(&[status]);
        }
        let data = DataMetrics {
            ingest_bytes: single(
                r,
                "automl_ingest_bytes",
                "Raw bytes read by dataset ingests",
                Counter::default(),
            ),
            upload_bytes: single(
                r,
                "automl_upload_bytes",
                "Bytes received by UploadData",
                Counter::default(),
            ),
            snapshot_build: family(
                r,
                "automl_snapshot_build_duration_seconds",
                "Training snapshot build time, by outcome",
                &["outcome"],
                long,
            ),
        };
        let model_cache = ModelCacheMetrics {
            hits: single(
                r,
                "automl_model_cache_hits",
                "Predict calls served by a loaded model",
                Counter::default(),
            ),
            misses: single(
                r,
                "automl_model_cache_misses",
                "Predict calls that waited for a model load",
                Counter::default(),
            ),
            loads: single(
                r,
                "automl_model_loads",
                "Models downloaded and loaded",
                Counter::default(),
            ),
            load_duration: single(
                r,
                "automl_model_load_duration_seconds",
                "Time to download and load one model",
                latency(),
            ),
            evictions: single(
                r,
                "automl_model_cache_evictions",
                "Models evicted from the cache",
                Counter::default(),
            ),
            models: single(
                r,
                "automl_model_cache_models",
                "Models loaded",
                Gauge::default(),
            ),
            bytes: single(
                r,
                "automl_model_cache_bytes",
                "Bytes of model files held by loaded models",
                Gauge::default(),
            ),
            loaded: family(
                r,
                "automl_model_cache_loaded_bytes",
                "Each model in memory now, by run, artifact version and location, with its bytes",
                &["run_id", "version", "location"],
                Gauge::default,
            ),
        };
        let storage = StorageMetrics {
            s3_duration: family(
                r,
                "automl_s3_request_duration_seconds",
                "Object-store call latency, by operation",
                &["operation"],
                latency,
            ),
            s3_errors: family(
                r,
                "automl_s3_errors",
                "Object-store calls that failed, by operation",
                &["operation"],
                Counter::default,
            ),
            sql_duration: family(
                r,
                "automl_sql_query_duration_seconds",
                "SQL statement latency, by statement verb",
                &["statement"],
                latency,
            ),
        };
        Self {
            rpc,
            training,
            data,
            model_cache,
            storage,
            registry,
        }
    }

    /// The OpenMetrics text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Awaits one object-store call, recording its latency and whether it failed.
pub async fn timed_s3<T, E>(
    operation: &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    S3Timer::start(operation).finish(call.await)
}

/// Times one object-store call: records its latency when dropped, and an error when the result
/// handed to [`S3Timer::finish`] was one.
#[derive(Debug)]
pub struct S3Timer {
    operation: &'static str,
    start: std::time::Instant,
    failed: bool,
    discarded: bool,
}

impl S3Timer {
    /// Starts timing `operation` (`get_object`, `put_object`, …).
    pub fn start(operation: &'static str) -> Self {
        Self {
            operation,
            start: std::time::Instant::now(),
            failed: false,
            discarded: false,
        }
    }

    /// Records nothing (the call turned out not to happen, e.g. the end of a listing).
    pub fn discard(mut self) {
        self.discarded = true;
    }

    /// Passes `result` through, marking the call failed when it is an error.
    pub fn finish<T, E>(mut self, result: Result<T, E>) -> Result<T, E> {
        self.failed = result.is_err();
        result
    }
}

impl Drop for S3Timer {
    fn drop(&mut self) {
        if self.discarded {
            return;
        }
        let storage = &metrics().storage;
        storage
            .s3_duration
            .with(&[self.operation])
            .observe(self.start.elapsed().as_secs_f64());
        if self.failed {
            storage.s3_errors.with(&[self.operation]).inc();
        }
    }
}

/// The value of a sample (`name` or `name{labels}` exactly as exposed) in an exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_and_label_values_are_exposed_as_openmetrics() {
        let metrics = Metrics::new();
        let one = metrics.storage.s3_duration.with(&["get"]);
        one.observe(0.0007);
        one.observe(0.3);
        one.observe(99.0);
        metrics.rpc.requests.with(&["a\"b\\c\nd", "M"]).inc();
        metrics.rpc.requests.with(&["a\"b\\c\nd", "M"]).inc_by(2);
        let out = metrics.render();
        let series = |name: &str| sample(&out, name);
        assert!(out.contains("# TYPE automl_s3_request_duration_seconds histogram\n"));
        let bucket = |le: &str| {
            series(&format!(
                "automl_s3_request_duration_seconds_bucket{{le=\"{le}\",operation=\"get\"}}"
            ))
        };
        assert_eq!(bucket("0.0005"), Some(0.0));
        assert_eq!(bucket("0.001"), Some(1.0));
        assert_eq!(bucket("0.5"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert_eq!(
            series("automl_s3_request_duration_seconds_count{operation=\"get\"}"),
            Some(3.0)
        );
        assert!(
            out.contains(
                "automl_grpc_requests_total{service=\"a\\\"b\\\\c\\nd\",method=\"M\"} 3\n"
            ),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn unlabelled_and_training_families_exist_before_use() {
        let text = Metrics::new().render();
        let zero = |series: &str| assert_eq!(sample(&text, series), Some(0.0), "{series}: {text}");
        zero("automl_training_queue_depth");
        zero("automl_training_running_jobs");
        zero("automl_training_jobs_total{status=\"failure\"}");
        zero("automl_training_job_duration_seconds_count{status=\"succeed\"}");
        zero("automl_experiments_total{status=\"stopped\"}");
        zero("automl_experiment_trials_early_stopped_total");
        zero("automl_model_cache_hits_total");
    }

    #[test]
    fn removed_series_are_no_longer_exposed() {
        let metrics = Metrics::new();
        metrics
            .model_cache
            .loaded
            .with(&["7", "1", "models/run_7"])
            .set(42);
        let series =
            "automl_model_cache_loaded_bytes{run_id=\"7\",version=\"1\",location=\"models/run_7\"}";
        assert_eq!(sample(&metrics.render(), series), Some(42.0));
        metrics
            .model_cache
            .loaded
            .remove(&["7", "1", "models/run_7"]);
        assert_eq!(sample(&metrics.render(), series), None);
    }
}
