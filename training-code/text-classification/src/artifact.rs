//! The artifact format: the three files a run writes under `run_<id>/` and a classifier loads.
//!
//! - `model.safetensors`: f32 tensors `embedding.weight` (vocab × embed_dim), `fc1.weight`
//!   (fc × embed_dim), `fc1.bias`, `fc2.weight` (fc × fc), `fc2.bias`, `fc3.weight`
//!   (classes × fc), `fc3.bias`; weights are `out × in` as in PyTorch.
//! - `vocab.json`: the tokenizer's name, the n-gram length (`ngrams`, absent for words only) and
//!   the features in id order (see [`crate::tokenizer`]).
//! - `manifest.json`: [`Manifest`]: algorithm, framework, classes, sizes, parameters, code
//!   version, dataset lineage and final metrics. `params.ngrams` repeats the vocabulary's n-gram
//!   length; manifests written before it existed lack it and read as 1.
//!
//! Loading checks every file against the others; an inconsistent artifact is an
//! [`Error::Artifact`], never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};
use crate::params::TrainParams;
use crate::tokenizer::{TOKENIZER_NAME, Vocab};
use crate::train::{EpochReport, Trained};

/// File name of the weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the vocabulary.
pub const VOCAB_FILE: &str = "vocab.json";
/// File name of the manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The version of this layout, recorded in the manifest.
pub const FORMAT_VERSION: u32 = 1;

/// Where a model came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The run that trained it (the training job id); empty in the local mode.
    pub run_id: String,
    /// The dataset it was trained on.
    pub dataset_id: String,
    /// The dataset version (snapshot) it was trained on.
    pub version_hash: String,
    /// The run whose model it was fine-tuned from, if any.
    pub base_run_id: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The algorithm name the run was launched with (`ALGORITHM_NAME`).
    pub algorithm: String,
    /// The library that trained it, e.g. `candle 0.11.1`.
    pub framework: String,
    /// The tokenizer's name.
    pub tokenizer: String,
    /// Label names in output order.
    pub classes: Vec<String>,
    /// The model's sizes.
    pub model: ModelConfig,
    /// The hyperparameters of the run.
    pub params: TrainParams,
    /// The training code's version (`CODE_VERSION`, else this crate's version).
    pub code_version: String,
    /// Dataset and run lineage.
    pub lineage: Lineage,
    /// Final metrics (`test_accuracy`, `val_accuracy`, `accuracy`, `loss`, `epochs`, sizes).
    pub metrics: BTreeMap<String, f64>,
    /// When training finished (ISO-8601 UTC).
    pub created_at: String,
}

impl Manifest {
    /// The manifest of a finished training run.
    pub fn describe(
        trained: &Trained,
        params: &TrainParams,
        algorithm: &str,
        code_version: &str,
        lineage: Lineage,
        created_at: &str,
    ) -> Self {
        let metrics = final_metrics(trained.test_accuracy, &trained.epochs, trained.split_sizes);
        Self {
            format_version: FORMAT_VERSION,
            algorithm: algorithm.to_string(),
            framework: crate::FRAMEWORK.to_string(),
            tokenizer: TOKENIZER_NAME.to_string(),
            classes: trained.classes.clone(),
            model: trained.model.config,
            // The vocabulary decides the features (a fine-tuned model keeps its base model's).
            params: TrainParams {
                ngrams: trained.vocab.ngrams(),
                ..params.clone()
            },
            code_version: code_version.to_string(),
            lineage,
            metrics,
            created_at: created_at.to_string(),
        }
    }
}

/// What a manifest records of a finished run: the test accuracy, the number of epochs, the
/// split sizes and the last epoch's loss, accuracies and throughput.
pub fn final_metrics(
    test_accuracy: f64,
    epochs: &[EpochReport],
    split_sizes: [usize; 3],
) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::from([
        ("test_accuracy".to_string(), test_accuracy),
        ("epochs".to_string(), epochs.len() as f64),
        ("train_examples".to_string(), split_sizes[0] as f64),
        ("validation_examples".to_string(), split_sizes[1] as f64),
        ("test_examples".to_string(), split_sizes[2] as f64),
    ]);
    if let Some(last) = epochs.last() {
        metrics.insert("loss".into(), last.loss);
        metrics.insert("accuracy".into(), last.accuracy);
        metrics.insert("val_accuracy".into(), last.val_accuracy);
        metrics.insert("examples_per_sec".into(), last.examples_per_sec);
    }
    metrics
}

/// A loaded artifact.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The weights.
    pub model: Model,
    /// The vocabulary.
    pub vocab: Vocab,
    /// The manifest.
    pub manifest: Manifest,
}

/// The three files' contents, ready to write or upload.
#[derive(Debug, Clone)]
pub struct ArtifactFiles {
    /// `(file name, bytes)` for each file, weights first.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// Serializes a model, its vocabulary and its manifest.
pub fn encode(model: &Model, vocab: &Vocab, manifest: &Manifest) -> Result<ArtifactFiles> {
    let named = model.named_weights()?;
    let bytes: Vec<Vec<u8>> = named
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::new();
    for ((name, shape, _), data) in named.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| Error::Artifact(format!("{name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    let weights = safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::Artifact(format!("{MODEL_FILE}: {e}")))?;
    let manifest_json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Artifact(format!("{MANIFEST_FILE}: {e}")))?;
    Ok(ArtifactFiles {
        files: vec![
            (MODEL_FILE, weights),
            (VOCAB_FILE, vocab.to_json()?),
            (MANIFEST_FILE, manifest_json),
        ],
    })
}

/// Writes the artifact's files into `dir` (created when missing).
pub fn save(dir: &Path, files: &ArtifactFiles) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, bytes) in &files.files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Loads and checks the artifact in `dir`, with the dense layers on `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Artifact> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    };
    decode(
        &read(MODEL_FILE)?,
        &read(VOCAB_FILE)?,
        &read(MANIFEST_FILE)?,
        device,
    )
}

/// Parses and checks the contents of the three files.
pub fn decode(weights: &[u8], vocab: &[u8], manifest: &[u8], device: &Device) -> Result<Artifact> {
    let manifest: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| Error::Artifact(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(Error::Artifact(format!(
            "{MANIFEST_FILE}: format version {} is not {FORMAT_VERSION}",
            manifest.format_version
        )));
    }
    if manifest.tokenizer != TOKENIZER_NAME {
        return Err(Error::Artifact(format!(
            "{MANIFEST_FILE}: unknown tokenizer {:?}",
            manifest.tokenizer
        )));
    }
    let vocab = Vocab::from_json(vocab)?;
    if vocab.ngrams() != manifest.params.ngrams {
        return Err(Error::Artifact(format!(
            "{VOCAB_FILE} holds {}-grams, the manifest says {}",
            vocab.ngrams(),
            manifest.params.ngrams
        )));
    }
    let config = manifest.model;
    if vocab.len() != config.vocab_size {
        return Err(Error::Artifact(format!(
            "{VOCAB_FILE} has {} tokens, the manifest says {}",
            vocab.len(),
            config.vocab_size
        )));
    }
    if manifest.classes.len() != config.num_classes {
        return Err(Error::Artifact(format!(
            "the manifest lists {} classes for {} outputs",
            manifest.classes.len(),
            config.num_classes
        )));
    }
    let tensors = SafeTensors::deserialize(weights)
        .map_err(|e| Error::Artifact(format!("{MODEL_FILE}: {e}")))?;
    let take = |name: &str, shape: &[usize]| read_tensor(&tensors, name, shape);
    let model = Model::from_named_weights(config, take, device)?;
    Ok(Artifact {
        model,
        vocab,
        manifest,
    })
}

fn read_tensor(tensors: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let view = tensors
        .tensor(name)
        .map_err(|e| Error::Artifact(format!("{MODEL_FILE}: {name}: {e}")))?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(Error::Artifact(format!(
            "{MODEL_FILE}: {name} is {:?} {:?}, expected F32 {shape:?}",
            view.dtype(),
            view.shape()
        )));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::Artifact(format!(
            "{MODEL_FILE}: {name} holds NaN or infinite values"
        )));
    }
    Ok(values)
}
