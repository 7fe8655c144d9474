//! Serving: a [`Classifier`] loaded from an artifact directory answers the best label, its
//! score and the top-k labels for one text or a batch. Calls are blocking (CPU matrix work):
//! async callers run them on blocking threads (`tokio::task::spawn_blocking`); a classifier is
//! `Send + Sync` and is shared behind an `Arc`. Texts are encoded by the artifact's vocabulary
//! with the features it was trained with (words, or words and pairs: `vocab.json`'s `ngrams`).

use std::path::Path;

use candle_core::Device;

use crate::artifact::{self, Artifact, Manifest};
use crate::error::Result;
use crate::model::Model;
use crate::tokenizer::Vocab;

/// Texts per forward pass in [`Classifier::predict_batch`].
const BATCH: usize = 256;

/// A label and its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    /// The label's name.
    pub label: String,
    /// Its softmax probability.
    pub score: f32,
}

/// What the classifier says about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most probable label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// The `k` most probable labels, best first (ties in class order).
    pub top: Vec<LabelScore>,
}

/// A trained model ready to predict.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: Model,
    vocab: Vocab,
    manifest: Manifest,
}

impl Classifier {
    /// Loads the artifact in `dir` (`model.safetensors`, `vocab.json`, `manifest.json`) onto the
    /// CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// Loads the artifact in `dir` with the dense layers on `device`.
    pub fn load_on(dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self::from(artifact::load(dir, device)?))
    }

    /// A classifier for in-memory weights (e.g. right after training).
    pub fn new(model: Model, vocab: Vocab, manifest: Manifest) -> Self {
        Self {
            model,
            vocab,
            manifest,
        }
    }

    /// Label names in output order.
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }

    /// The artifact's manifest (algorithm, lineage, metrics).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The prediction for one text with the `top_k` best labels (at least one).
    pub fn predict(&self, text: &str, top_k: usize) -> Result<Prediction> {
        let mut predictions = self.predict_batch(&[text], top_k)?;
        Ok(predictions.remove(0))
    }

    /// Predictions for many texts, in order, computed in batched matrix products.
    pub fn predict_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        top_k: usize,
    ) -> Result<Vec<Prediction>> {
        let mut predictions = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            let bags: Vec<Vec<u32>> = chunk
                .iter()
                .map(|text| self.vocab.encode(text.as_ref()))
                .collect();
            let logits = self.model.logits(&bags)?;
            let probabilities = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
            predictions.extend(
                probabilities
                    .iter()
                    .map(|p| rank(p, &self.manifest.classes, top_k)),
            );
        }
        Ok(predictions)
    }
}

impl From<Artifact> for Classifier {
    fn from(artifact: Artifact) -> Self {
        Self::new(artifact.model, artifact.vocab, artifact.manifest)
    }
}

/// The best label and the `top_k` best (at least one), best first, ties in class order.
pub fn rank(probabilities: &[f32], classes: &[String], top_k: usize) -> Prediction {
    let k = top_k.max(1).min(probabilities.len());
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    let by_score = |a: &usize, b: &usize| {
        probabilities[*b]
            .total_cmp(&probabilities[*a])
            .then(a.cmp(b))
    };
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_score);
        order.truncate(k);
    }
    order.sort_by(by_score);
    let top: Vec<LabelScore> = order
        .iter()
        .map(|&i| LabelScore {
            label: classes[i].clone(),
            score: probabilities[i],
        })
        .collect();
    Prediction {
        label: top[0].label.clone(),
        score: top[0].score,
        top,
    }
}
