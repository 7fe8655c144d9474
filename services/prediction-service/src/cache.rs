//! The model cache: files downloaded once into the cache directory (a temp directory renamed
//! into place, so a crash never leaves half a model), loaded once (concurrent first requests
//! share one load), and kept in memory in an LRU bounded by count and bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use automl_common::metrics::{Counter, Gauge, Histogram, metrics};
use automl_common::s3::ObjectStore;
use automl_text_classification::Classifier;
use automl_text_classification::Error as ModelError;
use automl_text_classification::encoder::artifact::{EncoderManifest, is_encoder_manifest};
use automl_text_classification::encoder::{Encoder, EncoderClassifier};
use automl_text_classification::pretrained;
use automl_text_classification::serving::AnyClassifier;
use candle_core::Device;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::batcher::Batcher;
use crate::error::PredictError;
use crate::resolver::ArtifactRef;

/// A model ready to answer.
#[derive(Debug)]
pub struct LoadedModel {
    /// Answers predictions, batching concurrent ones.
    pub batcher: Batcher,
    /// What the memory bound counts: the bytes of weights an embedding-bag model holds in
    /// memory (its head's host copies and folded table included), the size of its weights
    /// files for an encoder model.
    pub bytes: u64,
    /// Artifact version, reported with each prediction.
    pub version: String,
    /// Size of its files in the cache directory (a shared pretrained encoder not counted).
    pub disk_bytes: u64,
    /// Number of labels it predicts.
    pub labels: usize,
}

/// A model in memory, as ListLoadedModels reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModelInfo {
    /// The run that trained it.
    pub run_id: String,
    /// Artifact name.
    pub name: String,
    /// Artifact version.
    pub version: String,
    /// The algorithm that produced it.
    pub algorithm: String,
    /// Size of its files on disk.
    pub disk_bytes: u64,
    /// Number of labels it predicts.
    pub labels: usize,
}

/// Counters of what the cache did, for tests and operators.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Requests answered by a loaded model.
    pub hits: AtomicU64,
    /// Requests that had to wait for a load.
    pub misses: AtomicU64,
    /// Artifacts downloaded from the object store.
    pub downloads: AtomicU64,
    /// Models loaded into memory.
    pub loads: AtomicU64,
    /// Models dropped from memory to respect the bounds.
    pub evictions: AtomicU64,
}

/// The process-wide cache metrics, resolved once so a prediction costs no registry lookup.
struct Exported {
    hits: Counter,
    misses: Counter,
    loads: Counter,
    load_duration: Histogram,
    evictions: Counter,
    models: Gauge,
    bytes: Gauge,
}

impl Exported {
    fn new() -> Self {
        let cache = &metrics().model_cache;
        Self {
            hits: cache.hits.clone(),
            misses: cache.misses.clone(),
            loads: cache.loads.clone(),
            load_duration: cache.load_duration.clone(),
            evictions: cache.evictions.clone(),
            models: cache.models.clone(),
            bytes: cache.bytes.clone(),
        }
    }
}

struct Slot {
    /// The tenant whose artifact it is: only that tenant sees it listed.
    tenant: String,
    /// The run it serves, for operators.
    run_id: String,
    /// The artifact name it serves, for operators.
    name: String,
    /// The version it serves, for operators.
    version: String,
    /// The algorithm that produced it, for operators.
    algorithm: String,
    model: OnceCell<Arc<LoadedModel>>,
    /// Tick of the cache clock at its last use (higher: more recent).
    last_used: AtomicU64,
}

/// The cache.
pub struct ModelCache {
    objects: ObjectStore,
    dir: PathBuf,
    max_models: usize,
    max_bytes: u64,
    top_k: usize,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Pretrained encoders in memory by digest, shared by every model built on one; an
    /// encoder stays loaded while a model holds it. Loads are serialised by the lock.
    encoders: tokio::sync::Mutex<HashMap<String, std::sync::Weak<Encoder>>>,
    clock: AtomicU64,
    /// What it did so far.
    pub stats: CacheStats,
    exported: Exported,
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("dir", &self.dir)
            .finish()
    }
}

impl ModelCache {
    /// A cache downloading into `dir`, keeping at most `max_models` models and `max_bytes`
    /// of weights in memory; predictions carry the `top_k` best labels.
    pub fn new(
        objects: ObjectStore,
        dir: PathBuf,
        max_models: usize,
        max_bytes: u64,
        top_k: usize,
    ) -> Self {
        Self {
            objects,
            dir,
            max_models,
            max_bytes,
            top_k,
            slots: Mutex::new(HashMap::new()),
            encoders: tokio::sync::Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            stats: CacheStats::default(),
            exported: Exported::new(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>>, PredictError> {
        self.slots
            .lock()
            .map_err(|_| PredictError::Internal("model cache lock poisoned".into()))
    }

    /// The loaded model of `artifact`, downloading and loading it on first use.
    pub async fn get(&self, artifact: &ArtifactRef) -> Result<Arc<LoadedModel>, PredictError> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = {
            let mut slots = self.lock()?;
            match slots.get(artifact.cache_key()) {
                Some(slot) => Arc::clone(slot),
                None => Arc::clone(
                    slots
                        .entry(artifact.cache_key().to_string())
                        .or_insert_with(|| {
                            Arc::new(Slot {
                                tenant: artifact.tenant.clone(),
                                run_id: artifact.run_id.clone(),
                                name: artifact.name.clone(),
                                version: artifact.version.clone(),
                                algorithm: artifact.algorithm.clone(),
                                model: OnceCell::new(),
                                last_used: AtomicU64::new(now),
                            })
                        }),
                ),
            }
        };
        slot.last_used.store(now, Ordering::Relaxed);
        if let Some(model) = slot.model.get() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            self.exported.hits.inc();
            return Ok(Arc::clone(model));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.exported.misses.inc();
        let mut loaded_here = false;
        let model = slot
            .model
            .get_or_try_init(|| async {
                loaded_here = true;
                // Boxed: a load's state stays out of every (hit) get's future.
                Box::pin(self.fetch_and_load(artifact)).await.map(Arc::new)
            })
            .await?;
        let model = Arc::clone(model);
        if loaded_here {
            let key = artifact.cache_key();
            metrics()
                .model_cache
                .loaded
                .with(&[&artifact.run_id, &artifact.version, key])
                .set(i64::try_from(model.bytes).unwrap_or(i64::MAX));
            self.evict(key)?;
        }
        Ok(model)
    }

    /// Drops least recently used models until both bounds hold, never `keep`.
    fn evict(&self, keep: &str) -> Result<(), PredictError> {
        let mut slots = self.lock()?;
        loop {
            let loaded: Vec<(String, u64, u64)> = slots
                .iter()
                .filter_map(|(key, slot)| {
                    slot.model
                        .get()
                        .map(|m| (key.clone(), slot.last_used.load(Ordering::Relaxed), m.bytes))
                })
                .collect();
            let bytes: u64 = loaded.iter().map(|(_, _, b)| b).sum();
            if loaded.len() <= self.max_models && bytes <= self.max_bytes {
                self.exported
                    .models
                    .set(i64::try_from(loaded.len()).unwrap_or(i64::MAX));
                self.exported
                    .bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                return Ok(());
            }
            let victim = loaded
                .iter()
                .filter(|(id, _, _)| id != keep)
                .min_by_key(|(_, used, _)| *used)
                .map(|(id, _, _)| id.clone());
            let Some(victim) = victim else {
                return Ok(());
            };
            let Some(slot) = slots.remove(&victim) else {
                return Ok(());
            };
            metrics()
                .model_cache
                .loaded
                .remove(&[&slot.run_id, &slot.version, &victim]);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            self.exported.evictions.inc();
            tracing::info!(run_id = %slot.run_id, "model evicted");
        }
    }

    /// Run ids of the models in memory now.
    pub fn loaded(&self) -> Vec<String> {
        let Ok(slots) = self.slots.lock() else {
            return Vec::new();
        };
        let mut ids: Vec<String> = slots
            .values()
            .filter(|slot| slot.model.initialized())
            .map(|slot| slot.run_id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// `tenant`'s models in memory now, most recently used first. Another tenant's models are
    /// never listed, even when they share this replica.
    pub fn loaded_models(&self, tenant: &str) -> Vec<LoadedModelInfo> {
        let Ok(slots) = self.slots.lock() else {
            return Vec::new();
        };
        let mut models: Vec<(u64, LoadedModelInfo)> = slots
            .values()
            .filter(|slot| slot.tenant == tenant)
            .filter_map(|slot| {
                let model = slot.model.get()?;
                Some((
                    slot.last_used.load(Ordering::Relaxed),
                    LoadedModelInfo {
                        run_id: slot.run_id.clone(),
                        name: slot.name.clone(),
                        version: slot.version.clone(),
                        algorithm: slot.algorithm.clone(),
                        disk_bytes: model.disk_bytes,
                        labels: model.labels,
                    },
                ))
            })
            .collect();
        drop(slots);
        models.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        models.into_iter().map(|(_, info)| info).collect()
    }

    async fn fetch_and_load(&self, artifact: &ArtifactRef) -> Result<LoadedModel, PredictError> {
        let fetch_started = std::time::Instant::now();
        let dir = self.dir.join(artifact.cache_dir_name());
        if !dir.join("manifest.json").is_file() {
            self.download(artifact, &dir).await?;
        }
        let started = std::time::Instant::now();
        let loaded = self.load_dir(&dir).await;
        let (classifier, bytes) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                // Let a later request fetch the files again instead of failing forever.
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(PredictError::BadModel {
                    run_id: artifact.run_id.clone(),
                    reason: err.to_string(),
                });
            }
        };
        let disk_bytes = dir_size(&dir).await;
        let labels = classifier.classes().len();
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        self.exported.loads.inc();
        self.exported
            .load_duration
            .observe(fetch_started.elapsed().as_secs_f64());
        tracing::info!(
            run_id = %artifact.run_id,
            version = %artifact.version,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(LoadedModel {
            batcher: Batcher::start(Arc::new(classifier), self.top_k),
            bytes,
            version: artifact.version.clone(),
            disk_bytes,
            labels,
        })
    }

    /// Loads the model in `dir`, of either algorithm; returns it with the bytes of weights it
    /// holds on its own (a shared pretrained encoder is not counted per model).
    async fn load_dir(&self, dir: &Path) -> Result<(AnyClassifier, u64), ModelError> {
        let manifest = tokio::fs::read(dir.join("manifest.json"))
            .await
            .map_err(|e| ModelError::io(dir.join("manifest.json"), e))?;
        let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        let model_dir = dir.to_path_buf();
        if !is_encoder_manifest(&manifest) {
            let classifier = blocking(move || Classifier::load(&model_dir)).await?;
            let bytes = classifier.memory_bytes();
            return Ok((classifier.into(), bytes));
        }
        let parsed = EncoderManifest::parse(&manifest)?;
        let reference = parsed.pretrained.reference();
        let pretrained_dir =
            pretrained::fetch(&self.objects, &reference, &self.dir.join("pretrained")).await?;
        let (encoder, own_bytes) = if parsed.own_encoder {
            let weights_dir = model_dir.clone();
            let encoder = blocking(move || {
                EncoderClassifier::own_encoder(&weights_dir, &pretrained_dir, &Device::Cpu)
            })
            .await?;
            (Arc::new(encoder), size("encoder.safetensors"))
        } else {
            let digest = &parsed.pretrained.digest;
            (self.shared_encoder(digest, pretrained_dir).await?, 0)
        };
        let classifier = blocking(move || EncoderClassifier::load(&model_dir, encoder)).await?;
        Ok((classifier.into(), size("head.safetensors") + own_bytes))
    }

    /// The pretrained encoder `digest` from `dir`, loaded once while any model uses it.
    async fn shared_encoder(&self, digest: &str, dir: PathBuf) -> Result<Arc<Encoder>, ModelError> {
        let mut encoders = self.encoders.lock().await;
        if let Some(encoder) = encoders.get(digest).and_then(std::sync::Weak::upgrade) {
            return Ok(encoder);
        }
        let encoder = Arc::new(blocking(move || Encoder::load(&dir, None, &Device::Cpu)).await?);
        encoders.retain(|_, weak| weak.strong_count() > 0);
        encoders.insert(digest.to_string(), Arc::downgrade(&encoder));
        tracing::info!(digest, "pretrained encoder loaded");
        Ok(encoder)
    }

    /// Pretrained encoders in memory now.
    pub fn encoders_loaded(&self) -> usize {
        self.encoders
            .try_lock()
            .map_or(0, |e| e.values().filter(|w| w.strong_count() > 0).count())
    }

    /// Downloads every file of the artifact into a temp directory, then renames it to `dir`.
    async fn download(&self, artifact: &ArtifactRef, dir: &Path) -> Result<(), PredictError> {
        let entries = self
            .objects
            .resolve_location(&artifact.bucket, &artifact.path)
            .await?;
        if entries.is_empty() {
            return Err(PredictError::BadModel {
                run_id: artifact.run_id.clone(),
                reason: format!("no files at {}/{}", artifact.bucket, artifact.path),
            });
        }
        tokio::fs::create_dir_all(&self.dir).await?;
        let temp = self.dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        tokio::fs::create_dir_all(&temp).await?;
        let result = self.download_into(artifact, &entries, &temp).await;
        let result = match result {
            Ok(()) => match tokio::fs::rename(&temp, dir).await {
                Ok(()) => Ok(()),
                // Another process put it there first: theirs is as good as ours.
                Err(_) if dir.join("manifest.json").is_file() => Ok(()),
                Err(err) => Err(err.into()),
            },
            Err(err) => Err(err),
        };
        if temp.exists() {
            let _ = tokio::fs::remove_dir_all(&temp).await;
        }
        result?;
        self.stats.downloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn download_into(
        &self,
        artifact: &ArtifactRef,
        entries: &[automl_common::s3::ObjectEntry],
        temp: &Path,
    ) -> Result<(), PredictError> {
        let folder = format!("{}/", artifact.path.trim_end_matches('/'));
        for entry in entries {
            let name = entry
                .key
                .strip_prefix(&folder)
                .unwrap_or_else(|| entry.key.rsplit('/').next().unwrap_or(&entry.key));
            // Only flat files: never write outside the temp directory.
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                continue;
            }
            let mut reader = self.objects.reader(&artifact.bucket, &entry.key).await?;
            let mut file = tokio::fs::File::create(temp.join(name)).await?;
            tokio::io::copy_buf(&mut reader, &mut file).await?;
            file.flush().await?;
            file.sync_all().await?;
        }
        Ok(())
    }
}

/// Total size of the files directly in `dir` (a model's folder is flat); 0 when unreadable.
async fn dir_size(dir: &Path) -> u64 {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return 0;
    };
    let mut total = 0;
    while let Ok(Some(entry)) = entries.next_entry().await {
        if let Ok(metadata) = entry.metadata().await
            && metadata.is_file()
        {
            total += metadata.len();
        }
    }
    total
}

/// Runs a blocking model load on the blocking pool.
async fn blocking<T, F>(load: F) -> Result<T, ModelError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ModelError> + Send + 'static,
{
    tokio::task::spawn_blocking(load)
        .await
        .map_err(|err| ModelError::Stopped(format!("load task: {err}")))?
}
