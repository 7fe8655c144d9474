//! Building a training snapshot: the selected commits merged, in commit order, into
//! `versionedDatasets/<dataset_id>/<hash>/`. Streamed commit by commit; deterministic, so a
//! rebuild (after a crash or a failure) writes byte-identical files.

use std::collections::BTreeMap;

use automl_common::csv::{Record, RecordReader, push_row};
use automl_common::s3::ObjectStore;
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::ingest::{HashingWriter, LabelIds, MAX_RECORD_BYTES, content_digest, copy_hashed};
use crate::model::{Commit, DatasetType, Part};

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Files, in name order.
    pub parts: Vec<Part>,
    /// Statistics of the merged data.
    pub statistics: BTreeMap<String, String>,
    /// sha256 over the files.
    pub content_digest: String,
}

/// Merges `commits` (in the given order) into `prefix`.
pub async fn build(
    objects: &ObjectStore,
    dataset_type: DatasetType,
    commits: &[Commit],
    prefix: &str,
) -> Result<Built, DataError> {
    let started = std::time::Instant::now();
    let built = match dataset_type {
        DatasetType::TextIntent => merge_text_intent(objects, commits, prefix).await,
        DatasetType::Generic => merge_generic(objects, commits, prefix).await,
    };
    let outcome = if built.is_ok() { "ready" } else { "failed" };
    automl_common::metrics::metrics()
        .data
        .snapshot_build
        .with(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    built
}

/// The two fields of a normalized row, as text; `Corrupt` names the file and line otherwise.
fn two_fields<'r>(record: Record<'r>, key: &str) -> Result<(&'r str, &'r str), DataError> {
    let Record::Fields { fields, line } = record else {
        return Err(DataError::Corrupt(format!("{key} is malformed")));
    };
    let (2, Some(first), Some(second)) = (fields.len(), fields.get(0), fields.get(1)) else {
        return Err(DataError::Corrupt(format!("{key} line {line}")));
    };
    let text = |field| std::str::from_utf8(field).map_err(|_| DataError::Corrupt(key.to_string()));
    Ok((text(first)?, text(second)?))
}

/// Reads a commit's `labels.csv` into local id → label name.
async fn read_labels(
    objects: &ObjectStore,
    commit: &Commit,
) -> Result<BTreeMap<String, String>, DataError> {
    let key = format!("{}/labels.csv", commit.path);
    let reader = objects.reader(&objects.datasets_bucket, &key).await?;
    let mut records = RecordReader::new(reader, MAX_RECORD_BYTES);
    let mut labels = BTreeMap::new();
    while let Some(record) = records.next().await? {
        let (id, name) = two_fields(record, &key)?;
        labels.insert(id.to_string(), name.to_string());
    }
    Ok(labels)
}

async fn merge_text_intent(
    objects: &ObjectStore,
    commits: &[Commit],
    prefix: &str,
) -> Result<Built, DataError> {
    let bucket = objects.datasets_bucket.clone();
    let examples_key = format!("{prefix}/examples.csv");
    let mut examples = HashingWriter::new(objects, &bucket, &examples_key);
    let mut labels = LabelIds::default();
    let mut count: u64 = 0;
    for commit in commits {
        match append_commit(objects, commit, &mut labels, &mut examples).await {
            Ok(rows) => count += rows,
            Err(err) => {
                examples.abort().await;
                return Err(err);
            }
        }
    }
    let (_, examples_digest) = examples.finish().await?;
    let labels_csv = labels.to_csv();
    let labels_digest = hex::encode(Sha256::digest(&labels_csv));
    let labels_key = format!("{prefix}/labels.csv");
    objects.put_bytes(&bucket, &labels_key, labels_csv).await?;
    let digests = BTreeMap::from([
        ("examples.csv".to_string(), examples_digest),
        ("labels.csv".to_string(), labels_digest),
    ]);
    Ok(Built {
        parts: vec![
            Part {
                name: "examples.csv".into(),
                path: examples_key,
            },
            Part {
                name: "labels.csv".into(),
                path: labels_key,
            },
        ],
        statistics: BTreeMap::from([
            ("numExamples".to_string(), count.to_string()),
            ("numLabels".to_string(), labels.len().to_string()),
        ]),
        content_digest: content_digest(&digests),
    })
}

/// Appends one commit's examples with label ids renumbered into the snapshot's; returns rows.
async fn append_commit(
    objects: &ObjectStore,
    commit: &Commit,
    labels: &mut LabelIds,
    out: &mut HashingWriter,
) -> Result<u64, DataError> {
    let local = read_labels(objects, commit).await?;
    // Commit label ids are in first-appearance order, so renumbering them in id order gives
    // first appearance across the selected commits.
    let mut ordered: Vec<(&String, &String)> = local.iter().collect();
    ordered.sort_by_key(|(id, _)| id.parse::<u64>().unwrap_or(u64::MAX));
    let mut remap: BTreeMap<&str, String> = BTreeMap::new();
    for (id, name) in ordered {
        remap.insert(id.as_str(), labels.id(name).to_string());
    }
    let key = format!("{}/examples.csv", commit.path);
    let reader = objects.reader(&objects.datasets_bucket, &key).await?;
    let mut records = RecordReader::new(reader, MAX_RECORD_BYTES);
    let mut rows = 0;
    let mut ids = String::new();
    while let Some(record) = records.next().await? {
        let line = record.line();
        let (utterance, local_ids) = two_fields(record, &key)?;
        ids.clear();
        for (index, id) in local_ids.split(';').enumerate() {
            let global = remap
                .get(id)
                .ok_or_else(|| DataError::Corrupt(format!("{key} line {line}: label {id}")))?;
            if index > 0 {
                ids.push(';');
            }
            ids.push_str(global);
        }
        push_row(out.buffer(), &[utterance, &ids]);
        if out.is_full() {
            out.flush().await?;
        }
        rows += 1;
    }
    Ok(rows)
}

async fn merge_generic(
    objects: &ObjectStore,
    commits: &[Commit],
    prefix: &str,
) -> Result<Built, DataError> {
    let bucket = objects.datasets_bucket.clone();
    let mut parts = Vec::new();
    let mut digests = BTreeMap::new();
    let mut total: u64 = 0;
    for commit in commits {
        let folder = format!("{}/", commit.path);
        for entry in objects.list(&bucket, &folder).await? {
            let relative = entry.key.strip_prefix(&folder).unwrap_or(&entry.key);
            let name = format!("{}/{relative}", commit.commit_id);
            let dest = format!("{prefix}/{name}");
            let (size, digest) = copy_hashed(objects, &bucket, &entry.key, &bucket, &dest).await?;
            total += size;
            digests.insert(name.clone(), digest);
            parts.push(Part { name, path: dest });
        }
    }
    Ok(Built {
        statistics: BTreeMap::from([
            ("numFiles".to_string(), parts.len().to_string()),
            ("numBytes".to_string(), total.to_string()),
        ]),
        parts,
        content_digest: content_digest(&digests),
    })
}
