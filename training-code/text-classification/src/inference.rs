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

    /// Bytes of weights it holds in memory: the model's, and on the host path the head's
    /// copies of them with the first layer folded into the embedding ([`HostHead::bytes`]).
    pub fn memory_bytes(&self) -> u64 {
        let host = self.host.as_ref().map_or(0, |head| head.bytes());
        u64::try_from(self.model.bytes() + host).unwrap_or(u64::MAX)
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

/// Logits to probabilities: `exp(x − max) / Σ exp(x − max)`, as candle's `softmax_last_dim`
/// computes them to within rounding (the exponential is [`exp`], within 2 ulp of the libm one).
/// On 16-lane registers where the CPU has AVX-512, else on the baseline's 4: the same
/// operations in the same order, so the same numbers.
fn softmax_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for (checked above).
        #[allow(unsafe_code)]
        unsafe {
            softmax_avx512(values)
        };
        return;
    }
    softmax_with(values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_avx512(values: &mut [f32]) {
    softmax_with(values);
}

#[inline(always)]
fn softmax_with(values: &mut [f32]) {
    // The maximum over 16 lanes, each a chain of its own, then across them: one chain through
    // every value would wait on each comparison in turn. The sum likewise.
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
    let mut sums = [0f32; 16];
    let mut chunks = values.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (sum, value) in sums.iter_mut().zip(chunk) {
            *value = exp(*value - max);
            *sum += *value;
        }
    }
    let mut sum = 0f32;
    for value in chunks.into_remainder() {
        *value = exp(*value - max);
        sum += *value;
    }
    let scale = (sums.iter().sum::<f32>() + sum).recip();
    for value in values.iter_mut() {
        *value *= scale;
    }
}

/// `e^x` within 2 ulp (Cephes' `expf`): `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, then `e^r` by a
/// polynomial and `2^n` written into the exponent bits. Only arithmetic and bit operations, so
/// a loop over it runs on vector registers, where the libm function is a call per value. Below
/// −87.3 (where `e^x` leaves the normal floats) it answers `e^−87.3`, about 1.2e−38; NaN stays
/// NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n in −126..=127: 2^n is a normal float.
    let n = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    e_r * f32::from_bits(n << 23)
}

/// The best label and the `top_k` best (at least one), best first, ties in class order.
pub fn rank(probabilities: &[f32], classes: &[String], top_k: usize) -> Prediction {
    let k = top_k.max(1).min(probabilities.len());
    // A row of fixed length for the usual handful of labels, kept in registers.
    macro_rules! fixed_rows {
        ($($rows:literal),*) => {
            match k {
                $($rows => prediction(&best_of::<$rows>(probabilities), probabilities, classes),)*
                _ => prediction(&best_of_many(probabilities, k), probabilities, classes),
            }
        };
    }
    fixed_rows!(1, 2, 3, 4, 5, 6, 7, 8)
}

/// A probability and its class as one integer, larger for the better of two: the probability
/// in the order of `f32::total_cmp` ([`order`]), then the lower class.
fn rank_key(probability: f32, class: usize) -> u64 {
    (u64::from(order(probability)) << 32) | u64::from(u32::MAX - class as u32)
}

/// `probability` as an integer in the order of `f32::total_cmp`: negatives with every bit
/// flipped, the others with the sign bit set.
fn order(probability: f32) -> u32 {
    let bits = probability.to_bits();
    bits ^ (((bits as i32 >> 31) as u32) | 0x8000_0000)
}

/// The class of a [`rank_key`].
fn class_of(key: u64) -> usize {
    (u32::MAX - key as u32) as usize
}

/// The `K` largest keys of `probabilities`, largest first. A key passes down the sorted row of
/// those kept, every slot keeping the larger of two: no branch depends on the values, so none
/// is mispredicted (one per value would be, often, over probabilities in no order). Each run of
/// 16 values is first compared at once with the `K`-th kept, and most runs hold nothing better.
fn best_of<const K: usize>(probabilities: &[f32]) -> [u64; K] {
    fn offer<const K: usize>(best: &mut [u64; K], mut key: u64) {
        for slot in best.iter_mut() {
            let kept = *slot;
            *slot = kept.max(key);
            key = kept.min(key);
        }
    }
    // 0 is below every key (a class's low half is at least 1).
    let mut best = [0u64; K];
    let mut chunks = probabilities.chunks_exact(16);
    let mut class = 0;
    for chunk in &mut chunks {
        // A value ties with the K-th kept at most, or falls below it, when its order is not
        // above that one's: equal orders rank by class, and the kept class is the lower.
        let floor = (best[K - 1] >> 32) as u32;
        if chunk.iter().fold(false, |any, &p| any | (order(p) > floor)) {
            for (i, &p) in chunk.iter().enumerate() {
                offer(&mut best, rank_key(p, class + i));
            }
        }
        class += 16;
    }
    for (i, &p) in chunks.remainder().iter().enumerate() {
        offer(&mut best, rank_key(p, class + i));
    }
    best
}

/// The `k` largest keys of `probabilities`, largest first, for any `k`.
fn best_of_many(probabilities: &[f32], k: usize) -> Vec<u64> {
    let mut keys: Vec<u64> = probabilities
        .iter()
        .enumerate()
        .map(|(class, &p)| rank_key(p, class))
        .collect();
    if k < keys.len() {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        keys.truncate(k);
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
    keys
}

fn prediction(best: &[u64], probabilities: &[f32], classes: &[String]) -> Prediction {
    let top: Vec<LabelScore> = best
        .iter()
        .map(|&key| {
            let class = class_of(key);
            LabelScore {
                label: classes[class].clone(),
                score: probabilities[class],
            }
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

    /// The selection orders as a full sort by (score descending in `total_cmp`'s order, class
    /// ascending), for every `k` on either side of the fixed-size rows.
    #[test]
    fn rank_keeps_the_best_k_in_order_with_ties_in_class_order() {
        let classes: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let mut state = 7u64;
        let mut scores: Vec<f32> = (0..40)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                // Few distinct values, so ties are common.
                ((state >> 33) % 7) as f32 / 7.0
            })
            .collect();
        let mut sorted: Vec<usize> = (0..40).collect();
        sorted.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for k in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 100] {
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
        // Signs, zeros of both signs and infinities order as `total_cmp` orders them.
        scores[..8].copy_from_slice(&[-0.0, 0.0, -1.0, f32::NEG_INFINITY, 2.0, -3.5, 0.0, -0.0]);
        for (i, score) in scores.iter_mut().enumerate().skip(8) {
            *score = -(i as f32);
        }
        let mut sorted: Vec<usize> = (0..40).collect();
        sorted.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for k in [5, 8, 40] {
            let got: Vec<String> = rank(&scores, &classes, k)
                .top
                .into_iter()
                .map(|s| s.label)
                .collect();
            let expected: Vec<String> = sorted[..k].iter().map(|&i| classes[i].clone()).collect();
            assert_eq!(got, expected, "k = {k}");
        }
    }

    /// The polynomial exponential is within 2 ulp of libm's from the bottom of the normal
    /// floats to the top, and the softmax over it within 1e-6 of one over libm's, on every path.
    #[test]
    fn exp_and_softmax_match_libm() {
        let mut x = -87.3f32;
        while x <= 88.3 {
            let (got, want) = (exp(x), x.exp());
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "exp({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) < 1.3e-38);
        let mut state = 11u64;
        for n in [1, 7, 16, 151, 300] {
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
                })
                .collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let mut got = logits.clone();
            softmax_in_place(&mut got);
            // The baseline path gives the same numbers as the one this CPU takes.
            let mut baseline = logits.clone();
            softmax_with(&mut baseline);
            assert_eq!(baseline, got, "{n} logits");
            for (g, e) in got.iter().zip(&exps) {
                assert!(
                    (g - e / sum).abs() <= 1e-6,
                    "{n} logits: {g} against {}",
                    e / sum
                );
            }
        }
    }
}
