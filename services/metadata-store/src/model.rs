//! Domain types of metadata-store and the checks applied to what clients send.

use std::collections::BTreeMap;

use crate::error::MetadataError;

/// The tenant of every resource until authentication assigns others.
pub use automl_common::auth::DEFAULT_TENANT;

/// The message of a run that has started and not ended.
pub const RUNNING_MESSAGE: &str = "Running";

/// Longest id (run, epoch) accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest free-text field (names, messages, timestamps, metric values) accepted.
pub const MAX_TEXT_LEN: usize = 4096;
/// Most metrics one epoch may carry.
pub const MAX_METRICS: usize = 256;

/// Where a run's data and code came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The dataset trained on.
    pub dataset_id: String,
    /// The snapshot (version hash) of that dataset.
    pub version_hash: String,
    /// The code version of the trainer (e.g. a git commit).
    pub code_version: String,
    /// The run whose weights this run started from, when fine-tuning.
    pub base_run_id: String,
    /// The pretrained model the run built on (`<name>@<digest>`), empty for none.
    pub pretrained_model: String,
}

/// A run as LogRunStart records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    /// Client-chosen id (the training job id).
    pub run_id: String,
    /// Human-readable name.
    pub run_name: String,
    /// As the client reported it.
    pub start_time: String,
    /// Dataset and code lineage.
    pub lineage: Lineage,
}

/// One epoch of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// The run it belongs to.
    pub run_id: String,
    /// Client-chosen id, unique within the run.
    pub epoch_id: String,
    /// As the client reported it.
    pub start_time: String,
    /// As the client reported it.
    pub end_time: String,
    /// Metric name → value, as text.
    pub metrics: BTreeMap<String, String>,
}

/// A stored run with all its epochs, in the order they were logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Client-chosen id.
    pub run_id: String,
    /// Human-readable name.
    pub run_name: String,
    /// When it started.
    pub start_time: String,
    /// When it ended; empty while running.
    pub end_time: String,
    /// Whether it ended successfully.
    pub success: bool,
    /// Whether LogRunEnd has been called.
    pub ended: bool,
    /// "Running", then the end message.
    pub message: String,
    /// Dataset and code lineage.
    pub lineage: Lineage,
    /// Epochs in logging order (empty when a listing leaves them out).
    pub epochs: Vec<Epoch>,
    /// Number of epochs logged.
    pub epoch_count: i64,
    /// Per numeric metric: its last and best value.
    pub metric_summaries: BTreeMap<String, MetricSummary>,
}

/// One numeric metric over a run's epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSummary {
    /// Its value in the most recently logged epoch that has it.
    pub last: f64,
    /// That epoch.
    pub last_epoch: String,
    /// Its best value (on a tie, the epoch logged first).
    pub best: f64,
    /// That epoch.
    pub best_epoch: String,
    /// Whether lower is better (see [`lower_is_better`]).
    pub lower_is_better: bool,
}

/// Whether a lower value of metric `name` is better: its lowercased name contains "loss" or
/// "error". Every other metric is better higher.
pub fn lower_is_better(name: &str) -> bool {
    let name = name.to_lowercase();
    name.contains("loss") || name.contains("error")
}

/// Milliseconds from `start` to `end`, when both are RFC 3339 timestamps.
pub fn duration_ms(start: &str, end: &str) -> Option<i64> {
    let start = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let end = chrono::DateTime::parse_from_rfc3339(end).ok()?;
    Some((end - start).num_milliseconds())
}

/// A metric value as a number: text that parses as a finite `f64`; anything else (labels,
/// `NaN`, `inf`, overflowing exponents) is not summarized.
pub fn metric_number(value: &str) -> Option<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|number| number.is_finite())
}

/// What LogRunEnd records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// The run.
    pub run_id: String,
    /// As the client reported it.
    pub end_time: String,
    /// Outcome.
    pub success: bool,
    /// Outcome text, e.g. `test accuracy 0.912`.
    pub message: String,
}

/// A model artifact as CreateArtifact records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    /// The run that produced it.
    pub run_id: String,
    /// Artifact (model) name; versions count per name.
    pub name: String,
    /// Models bucket.
    pub bucket: String,
    /// The run's own prefix (`run_<id>`) or a key under it.
    pub path: String,
    /// The algorithm that produced it (selects the predictor).
    pub algorithm: String,
}

/// A recorded artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Artifact (model) name.
    pub name: String,
    /// 1, 2, … per name.
    pub version: i64,
    /// The run that produced it.
    pub run_id: String,
    /// Models bucket.
    pub bucket: String,
    /// Location within the bucket.
    pub path: String,
    /// The algorithm that produced it.
    pub algorithm: String,
    /// When it was recorded (RFC 3339, UTC, milliseconds).
    pub created_at: String,
}

/// Which artifacts ListArtifacts returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFilter {
    /// Only this artifact name (empty = all).
    pub name: String,
    /// Page size (0 = all).
    pub limit: i64,
    /// Offset of the page.
    pub offset: i64,
}

/// The order of ListRuns. Ties are broken by start order (`seq`), in the same direction, so a
/// descending listing is the ascending one reversed, except that runs without the key (not
/// ended, for `Duration`; without the metric, for `Last`/`Best`) come last either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunOrder {
    /// `""`: start order (the order of LogRunStart calls).
    #[default]
    Start,
    /// `name`: by run name.
    Name,
    /// `start_time`: by the start time as reported (RFC 3339 text sorts chronologically).
    StartTime,
    /// `duration`: by end time minus start time; runs not ended, or whose times are not
    /// RFC 3339, last.
    Duration,
    /// `state`: running, then succeeded, then failed.
    State,
    /// `last:<metric>`: by the metric's value in the run's last epoch; runs without it last.
    Last(String),
    /// `best:<metric>`: by the metric's best value over the run; runs without it last.
    Best(String),
}

/// The accepted `order_by` values, for error messages.
pub const ORDER_BY_KEYS: &str =
    "\"\" (start order), name, start_time, duration, state, last:<metric>, best:<metric>";

impl RunOrder {
    /// Parses ListRunsRequest.order_by.
    pub fn parse(order_by: &str) -> Result<Self, MetadataError> {
        let metric = |kind: &str, name: &str| {
            if name.is_empty() || name.len() > MAX_ID_LEN {
                return Err(MetadataError::InvalidArgument(format!(
                    "order_by `{kind}:` needs a metric name of 1 to {MAX_ID_LEN} characters"
                )));
            }
            Ok(name.to_string())
        };
        Ok(match order_by {
            "" => Self::Start,
            "name" => Self::Name,
            "start_time" => Self::StartTime,
            "duration" => Self::Duration,
            "state" => Self::State,
            other => {
                if let Some(name) = other.strip_prefix("last:") {
                    Self::Last(metric("last", name)?)
                } else if let Some(name) = other.strip_prefix("best:") {
                    Self::Best(metric("best", name)?)
                } else {
                    let shown: String = other.chars().take(MAX_ID_LEN).collect();
                    return Err(MetadataError::InvalidArgument(format!(
                        "order_by `{shown}` is not one of {ORDER_BY_KEYS}"
                    )));
                }
            }
        })
    }
}

/// Which runs ListRuns returns, in which order, with what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this dataset (empty = all).
    pub dataset_id: String,
    /// Only this run name (empty = all).
    pub run_name: String,
    /// Page size (0 = all).
    pub limit: i64,
    /// Offset of the page.
    pub offset: i64,
    /// The order.
    pub order: RunOrder,
    /// Reverse the order (runs without the key stay last).
    pub descending: bool,
    /// Leave each run's epochs out (count and summaries stay).
    pub without_epochs: bool,
}

/// The object-store prefix where a run's model files go.
pub fn run_prefix(tenant: &str, run_id: &str) -> String {
    format!("{}run_{run_id}", automl_common::auth::tenant_prefix(tenant))
}

/// Checks an id: required, bounded, and safe inside an object key.
pub fn check_id(field: &str, value: &str) -> Result<(), MetadataError> {
    if value.is_empty() {
        return Err(MetadataError::InvalidArgument(format!(
            "{field} is required"
        )));
    }
    if value.len() > MAX_ID_LEN {
        return Err(MetadataError::InvalidArgument(format!(
            "{field} is longer than {MAX_ID_LEN} characters"
        )));
    }
    let safe = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !safe || value.starts_with('.') {
        return Err(MetadataError::InvalidArgument(format!(
            "{field} `{value}` may only contain letters, digits, '-', '_' and '.' and must not start with '.'"
        )));
    }
    Ok(())
}

/// Checks an optional free-text field's length.
pub fn check_text(field: &str, value: &str) -> Result<(), MetadataError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(MetadataError::InvalidArgument(format!(
            "{field} is longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(())
}

/// Checks a metrics map: bounded count, non-empty bounded names, bounded values.
pub fn check_metrics(metrics: &BTreeMap<String, String>) -> Result<(), MetadataError> {
    if metrics.len() > MAX_METRICS {
        return Err(MetadataError::InvalidArgument(format!(
            "epoch_info.metrics has more than {MAX_METRICS} entries"
        )));
    }
    for (name, value) in metrics {
        if name.is_empty() || name.len() > MAX_ID_LEN {
            return Err(MetadataError::InvalidArgument(format!(
                "epoch_info.metrics name `{name}` must be 1 to {MAX_ID_LEN} characters"
            )));
        }
        check_text(&format!("epoch_info.metrics[{name}]"), value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("run_id", "1").is_ok());
        assert!(check_id("run_id", "job-7_a.b").is_ok());
        assert!(check_id("run_id", "").is_err());
        assert!(check_id("run_id", "../x").is_err());
        assert!(check_id("run_id", "a/b").is_err());
        assert!(check_id("run_id", ".hidden").is_err());
        assert!(check_id("run_id", &"9".repeat(MAX_ID_LEN + 1)).is_err());
        let err = check_id("epoch_info.run_id", "").expect_err("empty");
        assert!(err.to_string().contains("epoch_info.run_id"));
    }

    #[test]
    fn metrics() {
        let mut metrics = BTreeMap::new();
        metrics.insert("accuracy".to_string(), "0.5".to_string());
        assert!(check_metrics(&metrics).is_ok());
        metrics.insert(String::new(), "1".to_string());
        assert!(check_metrics(&metrics).is_err());
    }

    #[test]
    fn numbers_and_directions() {
        assert_eq!(metric_number("0.5"), Some(0.5));
        assert_eq!(metric_number("-3e2"), Some(-300.0));
        assert_eq!(metric_number("7"), Some(7.0));
        for not in ["", "abc", "NaN", "inf", "-infinity", "1e999", " 1", "0,5"] {
            assert_eq!(metric_number(not), None, "{not:?}");
        }
        assert!(lower_is_better("val_loss"));
        assert!(lower_is_better("Mean_Squared_ERROR"));
        assert!(!lower_is_better("accuracy"));
        assert_eq!(
            duration_ms("2021-08-01T00:00:00Z", "2021-08-01T00:01:00.5+00:00"),
            Some(60_500)
        );
        assert_eq!(duration_ms("yesterday", "2021-08-01T00:00:00Z"), None);
    }

    #[test]
    fn orders() {
        assert_eq!(RunOrder::parse("").expect("empty"), RunOrder::Start);
        assert_eq!(RunOrder::parse("state").expect("state"), RunOrder::State);
        assert_eq!(
            RunOrder::parse("best:val:loss").expect("best"),
            RunOrder::Best("val:loss".into())
        );
        for bad in ["Name", "last:", "best:", "seq", "last"] {
            let err = RunOrder::parse(bad).expect_err(bad);
            assert!(matches!(err, MetadataError::InvalidArgument(_)), "{bad}");
        }
        let err = RunOrder::parse("size").expect_err("unknown");
        assert!(err.to_string().contains("start_time"), "{err}");
    }

    #[test]
    fn prefix() {
        assert_eq!(run_prefix(DEFAULT_TENANT, "12"), "run_12");
        assert_eq!(run_prefix("team-a", "12"), "team-a/run_12");
    }
}
