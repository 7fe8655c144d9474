//! Serving: a [`Classifier`] loaded from an artifact directory answers the best label, its
//! score and the top-k labels for one text or a batch. Calls are blocking (CPU matrix work):
//! async callers run them on blocking threads (`tokio::task::spawn_blocking`); a classifier is
//! `Send + Sync` and is shared behind an `Arc`. Texts are encoded by the artifact's vocabulary
//! with the features it was trained with (words, or words and pairs: `vocab.json`'s `ngrams`).

use std::path::Path;

use candle_core::Device;

use crate::artifact::{self, Artifact, Manifest};
use crate::error::Result;
use crate::model::{HostHead, HostScratch, Model};
use crate::tokenizer::{EncodeScratch, Vocab};

/// The buffers of one document's prediction on host arrays, kept per thread: a served model
/// answers one document per call, and these would otherwise be allocated (and grown) anew each
/// time.
#[derive(Default)]
struct HostWork {
    encode: EncodeScratch,
    bag: Vec<u32>,
    head: HostScratch,
    scores: Vec<f32>,
}

/// Documents longer than this are encoded in buffers dropped afterwards.
const KEEP_SCRATCH_BYTES: usize = 4096;

thread_local! {
    static HOST_SCRATCH: std::cell::RefCell<HostWork> = std::cell::RefCell::new(HostWork::default());
}

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
    /// The head on host arrays when the model is on the CPU (see [`HostHead`]).
    host: Option<Box<HostHead>>,
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
        // The weights are on the CPU already, so the copy cannot fail short of a broken tensor;
        // should it, the tensor path still answers.
        let host = model
            .device
            .is_cpu()
            .then(|| HostHead::new(&model).ok().map(Box::new))
            .flatten();
        Self {
            model,
            host,
            vocab,
            manifest,
        }
    }

    /// Label names in output order.
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }

    /// Whether predictions are computed on host arrays ([`HostHead`]) rather than tensors.
    pub fn on_host(&self) -> bool {
        self.host.is_some()
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
        if let Some(host) = &self.host {
            return Ok(HOST_SCRATCH.with_borrow_mut(|work| {
                let HostWork {
                    encode,
                    bag,
                    head,
                    scores,
                } = work;
                let predictions = texts
                    .iter()
                    .map(|text| {
                        self.vocab.encode_into(text.as_ref(), encode, bag);
                        host.logits(&self.model.embedding, bag, head, scores);
                        softmax_in_place(scores);
                        rank(scores, &self.manifest.classes, top_k)
                    })
                    .collect();
                // A rare long document does not leave its buffers held by the thread.
                if texts
                    .iter()
                    .any(|text| text.as_ref().len() > KEEP_SCRATCH_BYTES)
                {
                    *work = HostWork::default();
                }
                predictions
            }));
        }
        self.predict_batch_tensors(texts, top_k)
    }

    /// [`Classifier::predict_batch`] through the model's tensors (the training code's forward
    /// pass), as on a GPU.
    pub fn predict_batch_tensors<S: AsRef<str>>(
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

/// Logits to probabilities: `exp(x − max) / Σ exp(x − max)`, as candle's `softmax_last_dim`.
fn softmax_in_place(values: &mut [f32]) {
    // The maximum over 16 lanes, each a chain of its own, then across them: one chain through
    // every value would wait on each comparison in turn.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(value);
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for value in values.iter_mut() {
        *value = (*value - max).exp();
        sum += *value;
    }
    for value in values.iter_mut() {
        *value /= sum;
    }
}

/// The best label and the `top_k` best (at least one), best first, ties in class order.
pub fn rank(probabilities: &[f32], classes: &[String], top_k: usize) -> Prediction {
    let k = top_k.max(1).min(probabilities.len());
    // Each probability as an integer that orders as `f32::total_cmp` does, so a comparison is
    // one integer compare.
    let key = |p: f32| {
        let bits = p.to_bits() as i32;
        bits ^ (((bits >> 31) as u32) >> 1) as i32
    };
    // One pass keeping the best k in order, (key, class) best first: k is small (a handful of
    // labels), so most classes are turned away by one comparison with the last kept. Classes
    // come in order, so one that ties with a kept class ranks after it.
    let mut best: Vec<(i32, usize)> = Vec::with_capacity(k + 1);
    for (class, &p) in probabilities.iter().enumerate() {
        let key = key(p);
        if best.len() == k && key <= best[k - 1].0 {
            continue;
        }
        let at = best.partition_point(|&(kept, _)| kept >= key);
        best.insert(at, (key, class));
        best.truncate(k);
    }
    let order = best.iter().map(|&(_, class)| class);
    let top: Vec<LabelScore> = order
        .map(|i| LabelScore {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass selection orders as a full sort by (score descending, class ascending).
    #[test]
    fn rank_keeps_the_best_k_in_order_with_ties_in_class_order() {
        let classes: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let mut state = 7u64;
        let scores: Vec<f32> = (0..40)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                // Few distinct values, so ties are common.
                ((state >> 33) % 7) as f32 / 7.0
            })
            .collect();
        let mut sorted: Vec<usize> = (0..40).collect();
        sorted.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for k in [0, 1, 3, 5, 40, 100] {
            let ranked = rank(&scores, &classes, k);
            let expected: Vec<&str> = sorted
                .iter()
                .take(k.clamp(1, 40))
                .map(|&i| classes[i].as_str())
                .collect();
            let got: Vec<&str> = ranked.top.iter().map(|s| s.label.as_str()).collect();
            assert_eq!(got, expected, "k = {k}");
            assert_eq!(ranked.label, expected[0]);
        }
    }
}
