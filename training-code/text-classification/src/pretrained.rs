//! Pretrained models (the sentence encoder's weights, configuration and tokenizer) as objects in
//! the models bucket, imported once and fetched by trainers and prediction-service like any
//! other artifact:
//!
//! ```text
//! pretrained/<name>/<digest>/{config.json,model.safetensors,tokenizer.json}
//! pretrained/<name>/current.json      the imported version: a PretrainedRef, written last
//! ```
//!
//! The digest is the sha256 of the sorted `"<file> <sha256 of the file>\n"` lines, so it names
//! the exact bytes; every fetch checks each file against it before the files are used.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use automl_common::s3::{ObjectStore, S3Error};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// The sentence encoder of the `intent-classification-encoder` algorithm.
pub const ENCODER_NAME: &str = "all-minilm-l6-v2";
/// The files a pretrained encoder consists of.
pub const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
/// The object (under `pretrained/<name>/`) naming the imported version.
pub const POINTER: &str = "current.json";

/// An imported pretrained model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PretrainedRef {
    /// Its name, e.g. `all-minilm-l6-v2`.
    pub name: String,
    /// The sha256 (hex) naming its files' contents.
    pub digest: String,
    /// The bucket holding it.
    pub bucket: String,
    /// The folder of its files (`pretrained/<name>/<digest>`).
    pub prefix: String,
    /// File name → sha256 (hex).
    pub files: BTreeMap<String, String>,
    /// When it was imported (ISO-8601 UTC).
    pub imported_at: String,
}

impl PretrainedRef {
    /// `name@digest`, how runs name it in their lineage.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.digest)
    }
}

/// The sha256 of each of [`FILES`] in `dir` and the digest over them.
pub fn digest_dir(dir: &Path) -> Result<(String, BTreeMap<String, String>)> {
    let mut files = BTreeMap::new();
    for name in FILES {
        files.insert(name.to_string(), sha256_file(&dir.join(name))?);
    }
    Ok((digest_of(&files), files))
}

fn digest_of(files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, sha) in files {
        hasher.update(format!("{name} {sha}\n").as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The sha256 (hex) of a file, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Where pretrained files are read from: the object store itself, or the objects a trainer was
/// granted.
pub trait Source: Sync {
    /// The whole (small) object.
    fn get_bytes(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = std::result::Result<Vec<u8>, S3Error>> + Send;

    /// The object written into `path`; returns its size.
    fn get_to_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
    ) -> impl Future<Output = std::result::Result<u64, S3Error>> + Send;
}

impl Source for ObjectStore {
    async fn get_bytes(&self, bucket: &str, key: &str) -> std::result::Result<Vec<u8>, S3Error> {
        ObjectStore::get_bytes(self, bucket, key).await
    }

    async fn get_to_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
    ) -> std::result::Result<u64, S3Error> {
        let io = |err: std::io::Error| S3Error::Other(format!("{}: {err}", path.display()));
        let mut reader = self.reader(bucket, key).await?;
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let size = tokio::io::copy_buf(&mut reader, &mut file)
            .await
            .map_err(io)?;
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(size)
    }
}

/// Where the embeddings of a snapshot computed by a pretrained encoder are cached, in the
/// models bucket: `<tenant prefix>embeddings/<name>-<digest prefix>/<snapshot id>.safetensors`,
/// the snapshot id being 128 bits of the sha256 of its dataset id and version hash (snapshots
/// are immutable; the row count is checked on use). training-service computes it at launch to
/// grant it. The key stays short: some S3 servers (s3s-fs, the embedded endpoint) keep a side
/// file per object whose name grows with the key and must fit the file system's 255 bytes.
pub fn embeddings_key(
    tenant_prefix: &str,
    name: &str,
    encoder_digest: &str,
    dataset_id: &str,
    version_hash: &str,
) -> String {
    let snapshot = hex::encode(Sha256::digest(
        format!("{dataset_id}\n{version_hash}").as_bytes(),
    ));
    format!(
        "{tenant_prefix}embeddings/{name}-{}/{}.safetensors",
        encoder_digest.get(..16).unwrap_or(encoder_digest),
        &snapshot[..32]
    )
}

fn root(name: &str) -> String {
    format!("pretrained/{name}")
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Pretrained(format!(
            "name {name:?} may hold only lowercase letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Uploads the files of `dir` under `pretrained/<name>/<digest>/` in `bucket`, then points
/// `pretrained/<name>/current.json` at them (last, so a reader never sees half an import).
/// Importing the same files again is a no-op that returns the same reference.
pub async fn import(
    store: &ObjectStore,
    bucket: &str,
    name: &str,
    dir: &Path,
    on_file: &mut (dyn FnMut(&str, u64) + Send),
) -> Result<PretrainedRef> {
    check_name(name)?;
    let dir_owned = dir.to_path_buf();
    let (digest, files) = tokio::task::spawn_blocking(move || digest_dir(&dir_owned))
        .await
        .map_err(|e| Error::Pretrained(format!("hashing task: {e}")))??;
    let prefix = format!("{}/{digest}", root(name));
    for file in FILES {
        let path = dir.join(file);
        let key = format!("{prefix}/{file}");
        let mut source = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::io(&path, e))?;
        let mut writer = store.writer(bucket, &key);
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = tokio::io::AsyncReadExt::read(&mut source, &mut buffer)
                .await
                .map_err(|e| Error::io(&path, e))?;
            if read == 0 {
                break;
            }
            if let Err(err) = writer.write(&buffer[..read]).await {
                writer.abort().await;
                return Err(err.into());
            }
        }
        let bytes = writer.finish().await?;
        on_file(file, bytes);
    }
    let reference = PretrainedRef {
        name: name.to_string(),
        digest,
        bucket: bucket.to_string(),
        prefix,
        files,
        imported_at: automl_common::time::now_iso(),
    };
    let pointer = serde_json::to_vec_pretty(&reference)
        .map_err(|e| Error::Pretrained(format!("{POINTER}: {e}")))?;
    store
        .put_bytes(bucket, &format!("{}/{POINTER}", root(name)), pointer)
        .await?;
    Ok(reference)
}

/// The imported version of `name` in `bucket`, if any.
pub async fn current(
    store: &impl Source,
    bucket: &str,
    name: &str,
) -> Result<Option<PretrainedRef>> {
    check_name(name)?;
    let key = format!("{}/{POINTER}", root(name));
    let bytes = match store.get_bytes(bucket, &key).await {
        Ok(bytes) => bytes,
        Err(S3Error::NotFound(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let reference: PretrainedRef = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Pretrained(format!("{bucket}/{key}: {e}")))?;
    if reference.name != name || digest_of(&reference.files) != reference.digest {
        return Err(Error::Pretrained(format!(
            "{bucket}/{key} is inconsistent (name or digest)"
        )));
    }
    Ok(Some(reference))
}

/// The reference of `name` at exactly `digest` (what a job or a model was built on).
pub async fn at_digest(
    store: &impl Source,
    bucket: &str,
    name: &str,
    digest: &str,
) -> Result<PretrainedRef> {
    check_name(name)?;
    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Pretrained(format!(
            "{digest:?} is not a sha256 digest"
        )));
    }
    // The pointer holds the files' hashes; an older import keeps its folder but not its
    // pointer, so its hashes are recomputed on fetch from the objects themselves.
    if let Some(current) = current(store, bucket, name).await?
        && current.digest == digest
    {
        return Ok(current);
    }
    Ok(PretrainedRef {
        name: name.to_string(),
        digest: digest.to_string(),
        bucket: bucket.to_string(),
        prefix: format!("{}/{digest}", root(name)),
        files: BTreeMap::new(),
        imported_at: String::new(),
    })
}

/// The local directory holding `reference`'s files under `cache_root`, downloading them first
/// when missing (into a temp directory renamed into place, checked against the digest).
pub async fn fetch(
    store: &impl Source,
    reference: &PretrainedRef,
    cache_root: &Path,
) -> Result<PathBuf> {
    let dir = cache_root.join(format!("{}-{}", reference.name, reference.digest));
    if dir.join(FILES[FILES.len() - 1]).is_file() && dir.join(".complete").is_file() {
        return Ok(dir);
    }
    tokio::fs::create_dir_all(cache_root)
        .await
        .map_err(|e| Error::io(cache_root, e))?;
    let temp = cache_root.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let result = download_into(store, reference, &temp).await;
    let result = match result {
        Ok(()) => match tokio::fs::rename(&temp, &dir).await {
            Ok(()) => Ok(dir.clone()),
            // Another fetch put it there first; theirs was checked as ours was.
            Err(_) if dir.join(".complete").is_file() => Ok(dir.clone()),
            Err(err) => Err(Error::io(&dir, err)),
        },
        Err(err) => Err(err),
    };
    if temp.exists() {
        let _ = tokio::fs::remove_dir_all(&temp).await;
    }
    result
}

async fn download_into(store: &impl Source, reference: &PretrainedRef, temp: &Path) -> Result<()> {
    tokio::fs::create_dir_all(temp)
        .await
        .map_err(|e| Error::io(temp, e))?;
    let mut files = BTreeMap::new();
    for name in FILES {
        let key = format!("{}/{name}", reference.prefix);
        let path = temp.join(name);
        match store.get_to_file(&reference.bucket, &key, &path).await {
            Ok(_) => {}
            Err(S3Error::NotFound(_)) => {
                return Err(Error::Pretrained(format!(
                    "{} has no {name} at {}/{key}; import it with `automl pretrained import`",
                    reference.id(),
                    reference.bucket
                )));
            }
            Err(err) => return Err(err.into()),
        }
        let hash_path = path.clone();
        let sha = tokio::task::spawn_blocking(move || sha256_file(&hash_path))
            .await
            .map_err(|e| Error::Pretrained(format!("hashing task: {e}")))??;
        if let Some(expected) = reference.files.get(name)
            && expected != &sha
        {
            return Err(Error::Pretrained(format!(
                "{}/{key}: sha256 {sha} is not the recorded {expected}",
                reference.bucket
            )));
        }
        files.insert(name.to_string(), sha);
    }
    let digest = digest_of(&files);
    if digest != reference.digest {
        return Err(Error::Pretrained(format!(
            "the files under {}/{} have digest {digest}, not {}",
            reference.bucket, reference.prefix, reference.digest
        )));
    }
    let marker = temp.join(".complete");
    tokio::fs::write(&marker, reference.digest.as_bytes())
        .await
        .map_err(|e| Error::io(&marker, e))?;
    Ok(())
}
