//! Prometheus metrics: one process-wide registry of counters, gauges and histograms built on
//! atomics, and its text exposition (format 0.0.4) for the `/metrics` endpoint
//! ([`crate::metrics_server`]).
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

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

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

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets, with their sum and count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound plus the `+Inf` bucket; not cumulative (summed when rendered).
    buckets: Vec<AtomicU64>,
    /// The sum of observations, as f64 bits.
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

/// What a family holds per label set: how one series is written in the exposition.
pub trait Series: Send + Sync {
    /// Appends the series' sample lines.
    fn render(&self, out: &mut String, name: &str, labels: &str);
}

impl Series for Counter {
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.get());
    }
}

impl Series for Gauge {
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.get());
    }
}

impl Series for Histogram {
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        if let Some(last) = self.buckets.last() {
            cumulative += last.load(Ordering::Relaxed);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum());
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count());
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// A metric name with one series per combination of label values.
pub struct Family<T> {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    label_names: &'static [&'static str],
    make: fn() -> T,
    /// Few series per family: a scan compares without allocating, unlike a map keyed by owned
    /// strings.
    series: RwLock<Vec<(Vec<String>, Arc<T>)>>,
}

impl<T> std::fmt::Debug for Family<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("name", &self.name).finish()
    }
}

impl<T: Series + 'static> Family<T> {
    fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        label_names: &'static [&'static str],
        make: fn() -> T,
    ) -> Self {
        let family = Self {
            name,
            help,
            kind,
            label_names,
            make,
            series: RwLock::new(Vec::new()),
        };
        if label_names.is_empty() {
            family.with(&[]);
        }
        family
    }

    /// The series for `values` (one per label name, in order), created at its first use.
    pub fn with(&self, values: &[&str]) -> Arc<T> {
        let matches = |stored: &Vec<String>| {
            stored.len() == values.len() && stored.iter().zip(values).all(|(a, b)| a == b)
        };
        if let Ok(series) = self.series.read()
            && let Some((_, found)) = series.iter().find(|(key, _)| matches(key))
        {
            return found.clone();
        }
        let mut series = match self.series.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, found)) = series.iter().find(|(key, _)| matches(key)) {
            return found.clone();
        }
        let created = Arc::new((self.make)());
        series.push((
            values.iter().map(|v| (*v).to_string()).collect(),
            created.clone(),
        ));
        created
    }

    /// Drops the series for `values`, so it is no longer exposed (a model evicted from the
    /// cache, say).
    pub fn remove(&self, values: &[&str]) {
        let mut series = match self.series.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        series.retain(|(stored, _)| {
            !(stored.len() == values.len() && stored.iter().zip(values).all(|(a, b)| a == b))
        });
    }

    /// The family's name as exposed.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        let series = match self.series.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (values, one) in series.iter() {
            let labels: Vec<String> = self
                .label_names
                .iter()
                .zip(values)
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .collect();
            one.render(out, self.name, &labels.join(","));
        }
    }
}

/// Label values escaped as the text format wants: backslash, quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family<Counter> {
    Family::new(name, help, "counter", labels, Counter::default)
}

fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Family<Gauge> {
    Family::new(name, help, "gauge", labels, Gauge::default)
}

fn latency(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family<Histogram> {
    Family::new(name, help, "histogram", labels, || {
        Histogram::new(LATENCY_BUCKETS)
    })
}

fn long(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family<Histogram> {
    Family::new(name, help, "histogram", labels, || {
        Histogram::new(LONG_BUCKETS)
    })
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
    pub queue_depth: Family<Gauge>,
    /// `automl_training_running_jobs`: jobs launched and not yet ended.
    pub running_jobs: Family<Gauge>,
    /// `automl_training_jobs_total{status}`: jobs that ended, by final status.
    pub jobs: Family<Counter>,
    /// `automl_training_job_duration_seconds{status}`: launch to end.
    pub job_duration: Family<Histogram>,
    /// `automl_experiments_total{status}`: experiments that ended, by final status.
    pub experiments: Family<Counter>,
    /// `automl_experiment_trials_early_stopped_total`: trials the median rule stopped.
    pub early_stopped: Family<Counter>,
}

impl TrainingMetrics {
    /// Sets the number of queued jobs.
    pub fn set_queue_depth(&self, jobs: u64) {
        self.queue_depth
            .with(&[])
            .set(i64::try_from(jobs).unwrap_or(i64::MAX));
    }

    /// Sets the number of running jobs.
    pub fn set_running_jobs(&self, jobs: u64) {
        self.running_jobs
            .with(&[])
            .set(i64::try_from(jobs).unwrap_or(i64::MAX));
    }

    /// Records one job that ended with `status` (`succeed`, `failure`, `canceled`) after
    /// running for `duration`.
    pub fn job_finished(&self, status: &str, duration: Option<Duration>) {
        self.jobs.with(&[status]).inc();
        if let Some(duration) = duration {
            self.job_duration.with(&[status]).observe_duration(duration);
        }
    }

    /// Records one experiment that ended with `status` (`succeeded`, `failed`, `stopped`).
    pub fn experiment_ended(&self, status: &str) {
        self.experiments.with(&[status]).inc();
    }

    /// Records one trial stopped by the median rule.
    pub fn trial_early_stopped(&self) {
        self.early_stopped.with(&[]).inc();
    }
}

/// data-management's ingest and snapshot work.
#[derive(Debug)]
pub struct DataMetrics {
    /// `automl_ingest_bytes_total`: raw bytes read by ingests (CreateDataset, UpdateDataset).
    pub ingest_bytes: Family<Counter>,
    /// `automl_upload_bytes_total`: bytes received by the UploadData RPC.
    pub upload_bytes: Family<Counter>,
    /// `automl_snapshot_build_duration_seconds{outcome}`: building one training snapshot.
    pub snapshot_build: Family<Histogram>,
}

/// prediction-service's model cache.
#[derive(Debug)]
pub struct ModelCacheMetrics {
    /// `automl_model_cache_hits_total`: requests served by a loaded model.
    pub hits: Family<Counter>,
    /// `automl_model_cache_misses_total`: requests that had to wait for a load.
    pub misses: Family<Counter>,
    /// `automl_model_loads_total`: models downloaded and loaded.
    pub loads: Family<Counter>,
    /// `automl_model_load_duration_seconds`: download plus load of one model.
    pub load_duration: Family<Histogram>,
    /// `automl_model_cache_evictions_total`: models dropped to make room.
    pub evictions: Family<Counter>,
    /// `automl_model_cache_models`: models loaded now.
    pub models: Family<Gauge>,
    /// `automl_model_cache_bytes`: memory held by loaded models (their weight and vocabulary
    /// files).
    pub bytes: Family<Gauge>,
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

/// Every metric family of the process.
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
}

impl Metrics {
    fn new() -> Self {
        let training = TrainingMetrics {
            queue_depth: gauge("automl_training_queue_depth", "Training jobs queued.", &[]),
            running_jobs: gauge(
                "automl_training_running_jobs",
                "Training jobs running.",
                &[],
            ),
            jobs: counter(
                "automl_training_jobs_total",
                "Training jobs ended, by final status.",
                &["status"],
            ),
            job_duration: long(
                "automl_training_job_duration_seconds",
                "Training job duration from launch to end, by final status.",
                &["status"],
            ),
            experiments: counter(
                "automl_experiments_total",
                "Experiments ended, by final status.",
                &["status"],
            ),
            early_stopped: counter(
                "automl_experiment_trials_early_stopped_total",
                "Experiment trials stopped early by the median rule.",
                &[],
            ),
        };
        for status in JOB_STATUSES {
            training.jobs.with(&[status]);
            training.job_duration.with(&[status]);
        }
        for status in EXPERIMENT_STATUSES {
            training.experiments.with(&[status]);
        }
        Self {
            rpc: RpcMetrics {
                requests: counter(
                    "automl_grpc_requests_total",
                    "gRPC calls received.",
                    &["service", "method"],
                ),
                errors: counter(
                    "automl_grpc_errors_total",
                    "gRPC calls answered with an error, by status code.",
                    &["service", "method", "code"],
                ),
                duration: latency(
                    "automl_grpc_request_duration_seconds",
                    "gRPC call latency to the response headers.",
                    &["service", "method"],
                ),
            },
            training,
            data: DataMetrics {
                ingest_bytes: counter(
                    "automl_ingest_bytes_total",
                    "Raw bytes read by dataset ingests.",
                    &[],
                ),
                upload_bytes: counter(
                    "automl_upload_bytes_total",
                    "Bytes received by UploadData.",
                    &[],
                ),
                snapshot_build: long(
                    "automl_snapshot_build_duration_seconds",
                    "Training snapshot build time, by outcome.",
                    &["outcome"],
                ),
            },
            model_cache: ModelCacheMetrics {
                hits: counter(
                    "automl_model_cache_hits_total",
                    "Predict calls served by a loaded model.",
                    &[],
                ),
                misses: counter(
                    "automl_model_cache_misses_total",
                    "Predict calls that waited for a model load.",
                    &[],
                ),
                loads: counter(
                    "automl_model_loads_total",
                    "Models downloaded and loaded.",
                    &[],
                ),
                load_duration: latency(
                    "automl_model_load_duration_seconds",
                    "Time to download and load one model.",
                    &[],
                ),
                evictions: counter(
                    "automl_model_cache_evictions_total",
                    "Models evicted from the cache.",
                    &[],
                ),
                models: gauge("automl_model_cache_models", "Models loaded.", &[]),
                bytes: gauge(
                    "automl_model_cache_bytes",
                    "Bytes of model files held by loaded models.",
                    &[],
                ),
                loaded: gauge(
                    "automl_model_cache_loaded_bytes",
                    "Each model in memory now, by run, artifact version and location, with its bytes.",
                    &["run_id", "version", "location"],
                ),
            },
            storage: StorageMetrics {
                s3_duration: latency(
                    "automl_s3_request_duration_seconds",
                    "Object-store call latency, by operation.",
                    &["operation"],
                ),
                s3_errors: counter(
                    "automl_s3_errors_total",
                    "Object-store calls that failed, by operation.",
                    &["operation"],
                ),
                sql_duration: latency(
                    "automl_sql_query_duration_seconds",
                    "SQL statement latency, by statement verb.",
                    &["statement"],
                ),
            },
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let rpc = &self.rpc;
        rpc.requests.render(&mut out);
        rpc.errors.render(&mut out);
        rpc.duration.render(&mut out);
        let training = &self.training;
        training.queue_depth.render(&mut out);
        training.running_jobs.render(&mut out);
        training.jobs.render(&mut out);
        training.job_duration.render(&mut out);
        training.experiments.render(&mut out);
        training.early_stopped.render(&mut out);
        let data = &self.data;
        data.ingest_bytes.render(&mut out);
        data.upload_bytes.render(&mut out);
        data.snapshot_build.render(&mut out);
        let cache = &self.model_cache;
        cache.hits.render(&mut out);
        cache.misses.render(&mut out);
        cache.loads.render(&mut out);
        cache.load_duration.render(&mut out);
        cache.evictions.render(&mut out);
        cache.models.render(&mut out);
        cache.bytes.render(&mut out);
        cache.loaded.render(&mut out);
        let storage = &self.storage;
        storage.s3_duration.render(&mut out);
        storage.s3_errors.render(&mut out);
        storage.sql_duration.render(&mut out);
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

/// Times one object-store call: records its latency when dropped, and an error when
/// [`S3Timer::failed`] was called.
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
            .observe_duration(self.start.elapsed());
        if self.failed {
            storage.s3_errors.with(&[self.operation]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let family = latency("t_seconds", "test", &["op"]);
        let one = family.with(&["get"]);
        one.observe(0.0007);
        one.observe(0.3);
        one.observe(99.0);
        let mut out = String::new();
        family.render(&mut out);
        assert!(out.contains("# TYPE t_seconds histogram\n"));
        assert!(out.contains("t_seconds_bucket{op=\"get\",le=\"0.0005\"} 0\n"));
        assert!(out.contains("t_seconds_bucket{op=\"get\",le=\"0.001\"} 1\n"));
        assert!(out.contains("t_seconds_bucket{op=\"get\",le=\"0.5\"} 2\n"));
        assert!(out.contains("t_seconds_bucket{op=\"get\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("t_seconds_count{op=\"get\"} 3\n"));
        assert_eq!(one.count(), 3);
        assert!((one.sum() - 99.3007).abs() < 1e-9);
    }

    #[test]
    fn label_values_are_escaped_and_series_are_shared() {
        let family = counter("c_total", "test", &["name"]);
        family.with(&["a\"b\\c\nd"]).inc();
        family.with(&["a\"b\\c\nd"]).add(2);
        let mut out = String::new();
        family.render(&mut out);
        assert!(
            out.contains("c_total{name=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{out}"
        );
    }

    #[test]
    fn unlabelled_and_training_families_exist_before_use() {
        let text = Metrics::new().render();
        assert!(text.contains("\nautoml_training_queue_depth 0\n"));
        assert!(text.contains("\nautoml_training_running_jobs 0\n"));
        assert!(text.contains("automl_training_jobs_total{status=\"failure\"} 0\n"));
        assert!(text.contains("automl_training_job_duration_seconds_count{status=\"succeed\"} 0"));
        assert!(text.contains("automl_experiments_total{status=\"stopped\"} 0\n"));
        assert!(text.contains("\nautoml_experiment_trials_early_stopped_total 0\n"));
        assert!(text.contains("\nautoml_model_cache_hits_total 0\n"));
    }
}
