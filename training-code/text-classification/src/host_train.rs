//! The bag model's training step on the CPU, on host arrays: [`Model::forward_train`],
//! [`backprop::cross_entropy`], [`Model::backward`] and the optimizer's step, computed directly
//! on copies of the dense weights with the products of [`crate::kernel`].
//!
//! For a head this small a batch is a few million multiply-adds, and candle's per-operator
//! dispatch, allocations and per-product thread hand-offs cost about as much again. Here a
//! batch is cut into a fixed number of parts (by its size alone), each part's forward and
//! backward pass runs on a thread of its own (rayon's pool, `RAYON_NUM_THREADS`), and the
//! parts' gradients are added in order: the same batch gives the same numbers on one thread or
//! many. The weights return to the [`Model`] by [`HostTrainer::store`] (before each
//! evaluation and at the end); a test compares one step with the tensor path's.
//!
//! Widths are padded to multiples of 8 with zero weights, which stay zero: a padded hidden
//! unit's input and output weights get no gradient, and the padded logits are left out of the
//! loss.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::backprop::LossStats;
use crate::error::Result;
use crate::kernel::{Into, Layout, Lhs, matmul};
use crate::model::{Dense, Model};
use crate::optim::{AdamCoefficients, OptimizerKind, SparseGrad, adamw_slice};

/// Examples per part of a batch (at most [`MAX_PARTS`] parts).
const PART_ROWS: usize = 32;
/// Parts of one batch at most.
const MAX_PARTS: usize = 4;

/// One dense layer as host arrays.
#[derive(Debug)]
struct Layer {
    /// Real sizes (as in the [`Model`]).
    inputs: usize,
    outputs: usize,
    /// Padded sizes: `ni` is the previous layer's `no` (or the embedding width).
    ni: usize,
    no: usize,
    /// `ni × no`: the weight transposed, what the forward pass multiplies by.
    wt: Vec<f32>,
    /// `no × ni`: the weight, what the backward pass multiplies by; copied from `wt` after
    /// every step.
    w: Vec<f32>,
    /// `no`.
    bias: Vec<f32>,
    /// The batch's gradients of `wt` and `bias`.
    dwt: Vec<f32>,
    dbias: Vec<f32>,
    /// AdamW's moments of `wt` and `bias` (first, second), when it is the optimizer.
    moments: Option<[Vec<f32>; 4]>,
}

impl Layer {
    fn from_dense(layer: &Dense, ni: usize, adam: bool) -> Result<Self> {
        let (outputs, inputs) = layer.weight.dims2()?;
        let no = outputs.next_multiple_of(8);
        let weight: Vec<f32> = layer
            .weight
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let mut wt = vec![0f32; ni * no];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, &value) in row.iter().enumerate() {
                wt[i * no + o] = value;
            }
        }
        let mut bias: Vec<f32> = layer.bias.as_tensor().to_dtype(DType::F32)?.to_vec1()?;
        bias.resize(no, 0.0);
        let moments = adam.then(|| {
            [
                vec![0f32; wt.len()],
                vec![0f32; wt.len()],
                vec![0f32; no],
                vec![0f32; no],
            ]
        });
        let mut layer = Self {
            inputs,
            outputs,
            ni,
            no,
            w: vec![0f32; wt.len()],
            dwt: vec![0f32; wt.len()],
            dbias: vec![0f32; no],
            wt,
            bias,
            moments,
        };
        layer.refresh_w();
        Ok(layer)
    }

    /// `w` from `wt`, eight rows of `wt` at a time: each pass along them gives eight
    /// consecutive values of a row of `w`.
    fn refresh_w(&mut self) {
        let (ni, no) = (self.ni, self.no);
        let blocks = self.wt.chunks_exact(8 * no);
        let tail = blocks.remainder();
        for (block, rows) in blocks.enumerate() {
            let rows: [&[f32]; 8] = std::array::from_fn(|r| &rows[r * no..(r + 1) * no]);
            let first = block * 8;
            for (o, out) in self.w.chunks_exact_mut(ni).enumerate() {
                let out: &mut [f32] = &mut out[first..first + 8];
                for (w, row) in out.iter_mut().zip(rows) {
                    *w = row[o];
                }
            }
        }
        let first = ni - tail.len() / no;
        for (r, row) in tail.chunks_exact(no).enumerate() {
            for (o, &value) in row.iter().enumerate() {
                self.w[o * ni + first + r] = value;
            }
        }
    }

    /// The weight (`outputs × inputs`) and bias without padding, as the [`Model`] holds them.
    fn store(&self, dense: &Dense) -> Result<()> {
        let mut weight = Vec::with_capacity(self.outputs * self.inputs);
        for row in self.w.chunks_exact(self.ni).take(self.outputs) {
            weight.extend_from_slice(&row[..self.inputs]);
        }
        let device = dense.weight.device();
        dense.weight.set(&Tensor::from_vec(
            weight,
            (self.outputs, self.inputs),
            device,
        )?)?;
        dense.bias.set(&Tensor::from_vec(
            self.bias[..self.outputs].to_vec(),
            self.outputs,
            device,
        )?)?;
        Ok(())
    }
}

/// One part of a batch: its activations and its share of the gradients.
#[derive(Debug, Default)]
struct Part {
    /// Post-ReLU outputs of layers 1 and 2, and the logits (then their loss gradient).
    hidden: [Vec<f32>; 2],
    logits: Vec<f32>,
    /// Loss gradients with respect to the outputs of layers 2 and 1 (masked by the ReLU).
    dhidden: [Vec<f32>; 2],
    /// Gradients of each layer's `wt` and `bias` over this part.
    dwt: [Vec<f32>; 3],
    dbias: [Vec<f32>; 3],
    loss: f64,
    correct: usize,
}

/// The dense head and the optimizer's dense state as host arrays, with the buffers of a step.
#[derive(Debug)]
pub struct HostTrainer {
    layers: [Layer; 3],
    embed_dim: usize,
    num_classes: usize,
    parts: Vec<Part>,
    pooled: Vec<f32>,
    dpooled: Vec<f32>,
}

impl HostTrainer {
    /// Copies of `model`'s dense layers; `kind` says whether AdamW's moments are needed.
    pub fn new(model: &Model, kind: OptimizerKind) -> Result<Self> {
        let adam = kind == OptimizerKind::AdamW;
        let [fc1, fc2, fc3] = &model.layers;
        let l1 = Layer::from_dense(fc1, model.config.embed_dim, adam)?;
        let l2 = Layer::from_dense(fc2, l1.no, adam)?;
        let l3 = Layer::from_dense(fc3, l2.no, adam)?;
        Ok(Self {
            embed_dim: model.config.embed_dim,
            num_classes: l3.outputs,
            layers: [l1, l2, l3],
            parts: Vec::new(),
            pooled: Vec::new(),
            dpooled: Vec::new(),
        })
    }

    /// Writes the weights back into `model`'s dense layers.
    pub fn store(&self, model: &Model) -> Result<()> {
        for (layer, dense) in self.layers.iter().zip(&model.layers) {
            layer.store(dense)?;
        }
        Ok(())
    }

    /// Forward and backward pass of one batch of token-id `bags` against `targets`, pooled by
    /// `model`'s embedding: leaves the dense gradients in the layers and the embedding's in
    /// `sparse`, and returns the batch's loss and hits.
    pub fn gradients(
        &mut self,
        model: &Model,
        bags: &[&[u32]],
        targets: &[u32],
        sparse: &mut SparseGrad,
    ) -> Result<LossStats> {
        let batch = bags.len();
        let e = self.embed_dim;
        self.pooled = model.embedding.pool(bags);
        zeroed(&mut self.dpooled, batch * e);

        let rows = batch
            .div_ceil((batch / PART_ROWS).clamp(1, MAX_PARTS))
            .max(1);
        let parts = batch.div_ceil(rows);
        if parts == 0 {
            return Ok(LossStats {
                loss: 0.0,
                correct: 0,
            });
        }
        if self.parts.len() < parts {
            self.parts.resize_with(parts, Part::default);
        }
        let inv_batch = 1.0 / batch.max(1) as f32;
        let layers = &self.layers;
        let classes = self.num_classes;
        self.parts[..parts]
            .par_iter_mut()
            .zip(self.pooled.par_chunks(rows * e))
            .zip(self.dpooled.par_chunks_mut(rows * e))
            .zip(targets.par_chunks(rows))
            .for_each(|(((part, pooled), dpooled), targets)| {
                part.run(layers, classes, inv_batch, pooled, dpooled, targets);
            });

        let (mut loss, mut correct) = (0f64, 0usize);
        for (index, layer) in self.layers.iter_mut().enumerate() {
            let (first, rest) = self.parts[..parts].split_at(1);
            layer.dwt.copy_from_slice(&first[0].dwt[index]);
            layer.dbias.copy_from_slice(&first[0].dbias[index]);
            for part in rest {
                add(&mut layer.dwt, &part.dwt[index]);
                add(&mut layer.dbias, &part.dbias[index]);
            }
        }
        for part in &self.parts[..parts] {
            loss += part.loss;
            correct += part.correct;
        }
        sparse.accumulate(bags, &self.dpooled);
        Ok(LossStats {
            loss: loss / batch.max(1) as f64,
            correct,
        })
    }

    /// The sum of squares of the dense gradients (for clipping by the global norm).
    pub fn sum_of_squares(&self) -> f64 {
        self.layers
            .iter()
            .map(|layer| sum_of_squares(&layer.dwt) + sum_of_squares(&layer.dbias))
            .sum()
    }

    /// SGD on the dense weights: each weight minus `step` times its gradient.
    pub fn sgd(&mut self, step: f32) {
        for layer in &mut self.layers {
            for (weights, grad) in [(&mut layer.wt, &layer.dwt), (&mut layer.bias, &layer.dbias)] {
                weights
                    .iter_mut()
                    .zip(grad)
                    .for_each(|(w, g)| *w -= step * g);
            }
            layer.refresh_w();
        }
    }

    /// AdamW on the dense weights (the moments were made by [`HostTrainer::new`]).
    pub fn adamw(&mut self, coefficients: &AdamCoefficients) {
        for layer in &mut self.layers {
            if let Some([m_w, v_w, m_b, v_b]) = layer.moments.as_mut() {
                adamw_slice(&mut layer.wt, &layer.dwt, m_w, v_w, coefficients);
                adamw_slice(&mut layer.bias, &layer.dbias, m_b, v_b, coefficients);
            }
            layer.refresh_w();
        }
    }
}

impl Part {
    /// Forward pass, loss and backward pass of `targets.len()` examples.
    fn run(
        &mut self,
        layers: &[Layer; 3],
        classes: usize,
        inv_batch: f32,
        pooled: &[f32],
        dpooled: &mut [f32],
        targets: &[u32],
    ) {
        let rows = targets.len();
        let [l1, l2, l3] = layers;
        let [hidden1, hidden2] = &mut self.hidden;
        affine(l1, rows, pooled, hidden1, true);
        affine(l2, rows, hidden1, hidden2, true);
        affine(l3, rows, hidden2, &mut self.logits, false);
        (self.loss, self.correct) =
            cross_entropy(&mut self.logits, l3.no, classes, targets, inv_batch);

        let [dhidden1, dhidden2] = &mut self.dhidden;
        let [dwt1, dwt2, dwt3] = &mut self.dwt;
        let [dbias1, dbias2, dbias3] = &mut self.dbias;
        layer_grads(l3, rows, hidden2, &self.logits, dwt3, dbias3);
        input_grad(l3, rows, &self.logits, sized(dhidden2, rows * l3.ni));
        relu_mask(dhidden2, hidden2);
        layer_grads(l2, rows, hidden1, dhidden2, dwt2, dbias2);
        input_grad(l2, rows, dhidden2, sized(dhidden1, rows * l2.ni));
        relu_mask(dhidden1, hidden1);
        layer_grads(l1, rows, pooled, dhidden1, dwt1, dbias1);
        input_grad(l1, rows, dhidden1, dpooled);
    }
}

/// `buffer` as `len` values, to be overwritten.
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    &mut buffer[..len]
}

/// `buffer` as `len` zeros.
fn zeroed(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.clear();
    buffer.resize(len, 0.0);
    buffer
}

/// `out = x Wᵀ + b` for `rows` rows (`x` is `rows × ni`), then ReLU when `relu`.
fn affine(layer: &Layer, rows: usize, x: &[f32], out: &mut Vec<f32>, relu: bool) {
    out.clear();
    for _ in 0..rows {
        out.extend_from_slice(&layer.bias);
    }
    let lhs = Lhs {
        data: x,
        ld: layer.ni,
        layout: Layout::RowMajor,
    };
    matmul(
        rows,
        layer.no,
        layer.ni,
        lhs,
        &layer.wt,
        layer.no,
        out,
        layer.no,
        Into::Add,
    );
    if relu {
        out.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

/// The part's gradients of `wt` (`xᵀ dy`) and of the bias (`dy` summed over rows).
fn layer_grads(
    layer: &Layer,
    rows: usize,
    x: &[f32],
    dy: &[f32],
    dwt: &mut Vec<f32>,
    dbias: &mut Vec<f32>,
) {
    let lhs = Lhs {
        data: x,
        ld: layer.ni,
        layout: Layout::ColMajor,
    };
    dwt.resize(layer.ni * layer.no, 0.0);
    matmul(
        layer.ni,
        layer.no,
        rows,
        lhs,
        dy,
        layer.no,
        dwt,
        layer.no,
        Into::Overwrite,
    );
    let dbias = zeroed(dbias, layer.no);
    for row in dy.chunks_exact(layer.no) {
        add(dbias, row);
    }
}

/// `dx = dy W` (`rows × ni`).
fn input_grad(layer: &Layer, rows: usize, dy: &[f32], dx: &mut [f32]) {
    let lhs = Lhs {
        data: dy,
        ld: layer.no,
        layout: Layout::RowMajor,
    };
    // Only the real outputs: the padded ones have no gradient.
    let (ni, k) = (layer.ni, layer.outputs);
    matmul(rows, ni, k, lhs, &layer.w, ni, dx, ni, Into::Overwrite);
}

/// Zeroes the gradient where the ReLU did not pass its input (its output is not positive).
fn relu_mask(grad: &mut [f32], output: &[f32]) {
    for (g, &o) in grad.iter_mut().zip(output) {
        if o <= 0.0 {
            *g = 0.0;
        }
    }
}

fn add(sum: &mut [f32], part: &[f32]) {
    sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
}

/// `Σ x²`, summed in eight f32 lanes (so that it vectorizes), then in f64.
fn sum_of_squares(values: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    lanes.iter().map(|&lane| f64::from(lane)).sum::<f64>() + tail
}

/// [`crate::backprop::cross_entropy`] on a part's logits (`rows × width`, the first `classes`
/// columns real), replaced by their gradient (`(softmax − one_hot) · inv_batch`, padding 0);
/// returns the summed loss and the hits.
fn cross_entropy(
    logits: &mut [f32],
    width: usize,
    classes: usize,
    targets: &[u32],
    inv_batch: f32,
) -> (f64, usize) {
    let (mut loss, mut correct) = (0f64, 0usize);
    for (row, &target) in logits.chunks_exact_mut(width).zip(targets) {
        let target = target as usize;
        let (best, max) =
            row[..classes]
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                );
        loss += f64::from(-(row[target] - max));
        correct += usize::from(best == target);
        let mut sum = 0f32;
        for v in &mut row[..classes] {
            *v = (*v - max).exp();
            sum += *v;
        }
        loss += f64::from(sum.ln());
        let factor = inv_batch / sum;
        for v in &mut row[..classes] {
            *v *= factor;
        }
        row[target] -= inv_batch;
        row[classes..].fill(0.0);
    }
    (loss, correct)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::backprop;
    use crate::model::ModelConfig;
    use crate::optim::Optimizer;
    use crate::rng::{SplitMix64, Stream};

    /// Bags of 1–6 ids (some outside the table) and their targets.
    fn batch(count: usize, config: &ModelConfig) -> (Vec<Vec<u32>>, Vec<u32>) {
        let mut rng = SplitMix64::new(7, Stream::Shuffle);
        let bags = (0..count)
            .map(|_| {
                let len = 1 + rng.below(6);
                (0..len)
                    .map(|_| rng.below(config.vocab_size + 2) as u32)
                    .collect()
            })
            .collect();
        let targets = (0..count)
            .map(|_| rng.below(config.num_classes) as u32)
            .collect();
        (bags, targets)
    }

    /// Three steps of the tensor path and of the host path from the same weights: the same
    /// losses, hits, gradient norms and weights after each, for SGD and AdamW, with widths that
    /// need padding and batches of one part and of several. Weights agree to 1e-5 after SGD;
    /// after AdamW to 1e-4 (its step divides a gradient by its own size plus 1e-8, so where a
    /// table row's contributions nearly cancel, rounding in the last place of the sum moves
    /// the step by up to a few thousandths of `LR`).
    #[test]
    fn host_steps_match_the_tensor_steps() -> Result<()> {
        let configs = [
            ModelConfig {
                vocab_size: 40,
                embed_dim: 5,
                fc_size: 7,
                num_classes: 4,
            },
            ModelConfig {
                vocab_size: 300,
                embed_dim: 64,
                fc_size: 128,
                num_classes: 150,
            },
        ];
        for config in configs {
            for kind in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
                for size in [3, 64, 97] {
                    compare(config, kind, size)?;
                }
            }
        }
        Ok(())
    }

    fn compare(config: ModelConfig, kind: OptimizerKind, size: usize) -> Result<()> {
        let lr = if kind == OptimizerKind::Sgd {
            4.0
        } else {
            0.01
        };
        let mut tensor_model = Model::new(config, 3, &Device::Cpu)?;
        let mut host_model = Model::new(config, 3, &Device::Cpu)?;
        let mut tensor_opt = Optimizer::new(kind, lr, &tensor_model)?;
        let mut host_opt = Optimizer::new(kind, lr, &host_model)?;
        let mut host = HostTrainer::new(&host_model, kind)?;
        let mut tensor_sparse = SparseGrad::new(config.vocab_size, config.embed_dim);
        let mut host_sparse = SparseGrad::new(config.vocab_size, config.embed_dim);
        let (bags, targets) = batch(size, &config);
        let bags: Vec<&[u32]> = bags.iter().map(Vec::as_slice).collect();
        for step in 0..3 {
            let pooled = tensor_model.pool(&bags)?;
            let acts = tensor_model.forward_train(&pooled)?;
            let (expected, dlogits) = backprop::cross_entropy(&acts.logits, &targets)?;
            let grads = tensor_model.backward(&acts, &dlogits)?;
            tensor_sparse.accumulate(&bags, &grads.pooled.flatten_all()?.to_vec1::<f32>()?);
            let mut norm_sq = tensor_sparse.sum_of_squares();
            for grad in &grads.dense {
                norm_sq += f64::from(grad.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
            let scale = (0.5 / (norm_sq.sqrt() + 1e-6)).min(1.0);
            tensor_opt.step(&mut tensor_model, &grads.dense, &tensor_sparse, scale)?;

            let got = host.gradients(&host_model, &bags, &targets, &mut host_sparse)?;
            let host_norm_sq = host_sparse.sum_of_squares() + host.sum_of_squares();
            let host_scale = (0.5 / (host_norm_sq.sqrt() + 1e-6)).min(1.0);
            host_opt.step_host(&mut host_model, &mut host, &host_sparse, host_scale);
            host.store(&host_model)?;

            let what = format!("{config:?} {kind:?} batch {size} step {step}");
            assert!((got.loss - expected.loss).abs() < 1e-5, "{what}: loss");
            assert_eq!(got.correct, expected.correct, "{what}: hits");
            assert!(
                (host_norm_sq - norm_sq).abs() <= 1e-5 * norm_sq.max(1.0),
                "{what}: norm {host_norm_sq} against {norm_sq}"
            );
            let weights = tensor_model.named_weights()?;
            for (a, b) in weights.iter().zip(host_model.named_weights()?) {
                assert_eq!(a.1, b.1, "{what}: {} shape", a.0);
                let worst =
                    a.2.iter()
                        .zip(&b.2)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                let tolerance = if kind == OptimizerKind::Sgd {
                    1e-5
                } else {
                    1e-4
                };
                assert!(worst < tolerance, "{what}: {} differs by {worst}", a.0);
            }
        }
        Ok(())
    }
}
