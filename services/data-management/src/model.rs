//! Domain types of data-management, the checks applied to client input, and the naming rules
//! (version hashes, object keys) the contract fixes.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::DataError;

/// The tenant of every resource until authentication assigns others.
pub use automl_common::auth::DEFAULT_TENANT;
use automl_common::auth::tenant_prefix;
/// Most tags on one commit or query.
pub const MAX_TAGS: usize = 32;
/// Longest tag key.
pub const MAX_TAG_KEY: usize = 128;
/// Longest tag value, name, description or message.
pub const MAX_TEXT: usize = 4096;
/// Longest object key accepted from clients.
pub const MAX_KEY: usize = 1024;

/// What kind of data a dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetType {
    /// Any files, copied as they are.
    Generic,
    /// `utterance,label` CSV, validated and normalized.
    TextIntent,
}

impl DatasetType {
    /// The contract's enum number.
    pub fn number(self) -> i32 {
        match self {
            DatasetType::Generic => 0,
            DatasetType::TextIntent => 1,
        }
    }

    /// From the contract's enum number.
    pub fn from_number(number: i64) -> Result<Self, DataError> {
        match number {
            0 => Ok(DatasetType::Generic),
            1 => Ok(DatasetType::TextIntent),
            other => Err(DataError::InvalidArgument(format!(
                "dataset_type {other} is unknown (GENERIC=0, TEXT_INTENT=1)"
            ))),
        }
    }
}

/// A key/value tag on a commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// A committed commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The dataset.
    pub dataset_id: i64,
    /// 1, 2, … within the dataset.
    pub commit_id: i64,
    /// When it was committed.
    pub created_at: String,
    /// "Initial commit" for commit 1, else the client's message.
    pub message: String,
    /// Tags given at commit time.
    pub tags: Vec<Tag>,
    /// Object prefix of its files in the datasets bucket.
    pub path: String,
    /// `numExamples`/`numLabels` or `numFiles`/`numBytes`.
    pub statistics: BTreeMap<String, String>,
    /// sha256 over its files, hex.
    pub content_digest: String,
}

/// A dataset with its committed commits in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Numeric id (sent as a decimal string).
    pub dataset_id: i64,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Kind of data.
    pub dataset_type: DatasetType,
    /// Time of the latest commit.
    pub last_updated_at: String,
    /// Committed commits, oldest first.
    pub commits: Vec<Commit>,
}

/// State of a training snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// Being built.
    Running,
    /// Files are complete.
    Ready,
    /// The build failed; `message` says why. Preparing it again rebuilds it.
    Failed,
}

impl SnapshotState {
    /// The contract's enum number, also stored in SQL.
    pub fn number(self) -> i64 {
        match self {
            SnapshotState::Running => 0,
            SnapshotState::Ready => 1,
            SnapshotState::Failed => 2,
        }
    }

    /// From the stored number.
    pub fn from_number(number: i64) -> Result<Self, DataError> {
        match number {
            0 => Ok(SnapshotState::Running),
            1 => Ok(SnapshotState::Ready),
            2 => Ok(SnapshotState::Failed),
            other => Err(DataError::Corrupt(format!("snapshot state {other}"))),
        }
    }
}

/// A file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// File name, e.g. `examples.csv`.
    pub name: String,
    /// Key in the datasets bucket.
    pub path: String,
}

/// A training snapshot: the merge of a selection of commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The dataset.
    pub dataset_id: i64,
    /// Names the selection (see [`version_hash`]).
    pub version_hash: String,
    /// Build state.
    pub state: SnapshotState,
    /// The selected commit ids, ascending.
    pub commit_ids: Vec<i64>,
    /// Why it failed, when it did.
    pub message: String,
    /// Statistics of the merged data.
    pub statistics: BTreeMap<String, String>,
    /// Its files, once READY.
    pub parts: Vec<Part>,
    /// sha256 over its files, hex, once READY.
    pub content_digest: String,
}

/// `"hash"` + standard padded Base64 of the little-endian bitset of the commit ids (bit i set
/// for commit i; byte k holds commits 8k..8k+7; trailing zero bytes dropped).
pub fn version_hash(commit_ids: &[i64]) -> String {
    let mut bytes: Vec<u8> = Vec::new();
    for &id in commit_ids {
        let Ok(bit) = usize::try_from(id) else {
            continue;
        };
        let byte = bit / 8;
        if bytes.len() <= byte {
            bytes.resize(byte + 1, 0);
        }
        bytes[byte] |= 1 << (bit % 8);
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    format!("hash{}", STANDARD.encode(bytes))
}

/// The commit ids a version hash names; `None` when it is not a valid hash.
pub fn commits_of_hash(hash: &str) -> Option<Vec<i64>> {
    let encoded = hash.strip_prefix("hash")?;
    let bytes = STANDARD.decode(encoded).ok()?;
    let mut ids = Vec::new();
    for (index, byte) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                ids.push(i64::try_from(index * 8 + bit).ok()?);
            }
        }
    }
    Some(ids)
}

/// The hash as it appears in object keys: `/` and `+` replaced so the key has no extra levels.
pub fn hash_key(hash: &str) -> String {
    hash.replace('/', "_").replace('+', "-")
}

/// Object prefix of a commit's files (under the tenant's prefix, empty for the default tenant).
pub fn commit_prefix(tenant: &str, dataset_id: i64, commit_id: i64) -> String {
    format!(
        "{}dataset/{dataset_id}/commit/{commit_id}",
        tenant_prefix(tenant)
    )
}

/// Object prefix of all of a dataset's commits.
pub fn dataset_prefix(tenant: &str, dataset_id: i64) -> String {
    format!("{}dataset/{dataset_id}/", tenant_prefix(tenant))
}

/// Object prefix of a snapshot's files.
pub fn snapshot_prefix(tenant: &str, dataset_id: i64, hash: &str) -> String {
    format!(
        "{}versionedDatasets/{dataset_id}/{}",
        tenant_prefix(tenant),
        hash_key(hash)
    )
}

/// Object prefix of all of a dataset's snapshots.
pub fn snapshots_prefix(tenant: &str, dataset_id: i64) -> String {
    format!("{}versionedDatasets/{dataset_id}/", tenant_prefix(tenant))
}

/// Parses a dataset id sent as a decimal string.
pub fn parse_dataset_id(value: &str) -> Result<i64, DataError> {
    if value.is_empty() {
        return Err(DataError::InvalidArgument("dataset_id is required".into()));
    }
    match value.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(DataError::InvalidArgument(format!(
            "dataset_id `{}` is not a positive integer",
            truncate(value)
        ))),
    }
}

/// Parses a commit id sent as a decimal string.
pub fn parse_commit_id(value: &str) -> Result<i64, DataError> {
    match value.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(DataError::InvalidArgument(format!(
            "commit_id `{}` is not a positive integer",
            truncate(value)
        ))),
    }
}

/// Checks a free-text field's length.
pub fn check_text(field: &str, value: &str) -> Result<(), DataError> {
    if value.len() > MAX_TEXT {
        return Err(DataError::InvalidArgument(format!(
            "{field} is longer than {MAX_TEXT} bytes"
        )));
    }
    Ok(())
}

/// Checks tags: bounded count, non-empty bounded keys, bounded values.
pub fn check_tags(field: &str, tags: &[Tag]) -> Result<(), DataError> {
    if tags.len() > MAX_TAGS {
        return Err(DataError::InvalidArgument(format!(
            "{field} has more than {MAX_TAGS} tags"
        )));
    }
    for tag in tags {
        if tag.key.is_empty() || tag.key.len() > MAX_TAG_KEY {
            return Err(DataError::InvalidArgument(format!(
                "{field}: tag_key must be 1 to {MAX_TAG_KEY} bytes"
            )));
        }
        check_text(&format!("{field}[{}].tag_value", tag.key), &tag.value)?;
    }
    Ok(())
}

/// Checks an object key a client names: present, bounded, relative, no `..` segment.
pub fn check_key(field: &str, key: &str) -> Result<(), DataError> {
    if key.is_empty() {
        return Err(DataError::InvalidArgument(format!("{field} is required")));
    }
    if key.len() > MAX_KEY {
        return Err(DataError::InvalidArgument(format!(
            "{field} is longer than {MAX_KEY} bytes"
        )));
    }
    if key.starts_with('/') || key.split('/').any(|segment| segment == "..") {
        return Err(DataError::InvalidArgument(format!(
            "{field} `{}` must be a relative key without `..`",
            truncate(key)
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(DataError::InvalidArgument(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// At most 64 characters of `value`, for error messages.
pub fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_hashes_match_the_contract_examples() {
        assert_eq!(version_hash(&[1]), "hashAg==");
        assert_eq!(version_hash(&[1, 2]), "hashBg==");
        assert_eq!(version_hash(&[1, 2, 3]), "hashDg==");
        assert_eq!(version_hash(&[4]), "hashEA==");
        assert_eq!(version_hash(&[1, 2, 3, 4]), "hashHg==");
        assert_eq!(version_hash(&[2, 3, 4, 5, 6, 7]), "hash/A==");
        assert_eq!(version_hash(&(1..=10).collect::<Vec<_>>()), "hash/gc=");
    }

    #[test]
    fn hashes_decode_back_to_their_commits() {
        for ids in [
            vec![1],
            vec![1, 2, 3],
            vec![2, 3, 4, 5, 6, 7],
            (1..=10).collect(),
        ] {
            assert_eq!(commits_of_hash(&version_hash(&ids)), Some(ids));
        }
        assert_eq!(commits_of_hash("nothash"), None);
        assert_eq!(commits_of_hash("hash!!"), None);
    }

    #[test]
    fn keys_are_safe() {
        assert_eq!(hash_key("hash/+g=="), "hash_-g==");
        assert_eq!(
            snapshot_prefix(DEFAULT_TENANT, 3, "hash/A=="),
            "versionedDatasets/3/hash_A=="
        );
        assert!(check_key("path", "upload/a.csv").is_ok());
        assert!(check_key("path", "").is_err());
        assert!(check_key("path", "/etc/passwd").is_err());
        assert!(check_key("path", "a/../b").is_err());
    }

    #[test]
    fn ids() {
        assert_eq!(parse_dataset_id("12").ok(), Some(12));
        assert!(parse_dataset_id("").is_err());
        assert!(parse_dataset_id("-1").is_err());
        assert!(parse_dataset_id("x").is_err());
        assert!(parse_commit_id("0").is_err());
    }
}
