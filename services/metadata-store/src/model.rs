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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Epochs in logging order.
    pub epochs: Vec<Epoch>,
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
}

/// Which runs ListRuns returns.
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
    fn prefix() {
        assert_eq!(run_prefix(DEFAULT_TENANT, "12"), "run_12");
        assert_eq!(run_prefix("team-a", "12"), "team-a/run_12");
    }
}
