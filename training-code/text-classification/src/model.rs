//! The model: a mean-pooled embedding bag, then Linear → ReLU → Linear → ReLU → Linear.
//!
//! The embedding table lives in host memory and the bag is pooled there: a batch touches a few
//! hundred of its rows, so the gather, its gradient and the optimizer step visit only those rows
//! (row-sparse), never the whole table. The dense layers are candle tensors on the model's
//! device. Training and serving run this same code, so they cannot drift apart.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::rng::{SplitMix64, Stream};

/// The sizes that define a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Rows of the embedding table (tokens, `<unk>` included).
    pub vocab_size: usize,
    /// Width of an embedding row (`EMBED_DIM`).
    pub embed_dim: usize,
    /// Width of the two hidden layers (`FC_SIZE`).
    pub fc_size: usize,
    /// Number of labels.
    pub num_classes: usize,
}

/// Range of the uniform initialization of embedding rows (MiniAutoML's `initrange`).
const EMBED_INIT_RANGE: f32 = 0.5;

/// The embedding table, row-major `vocab_size × embed_dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingBag {
    /// The weights; row `t` is `weights[t * dim..(t + 1) * dim]`.
    pub weights: Vec<f32>,
    /// Width of a row.
    pub dim: usize,
}

impl EmbeddingBag {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.weights.len() / self.dim.max(1)
    }

    /// The mean of each bag's rows, `bags.len() × dim` row-major; an empty bag pools to zeros
    /// and an id outside the table counts as `<unk>` (0).
    pub fn pool<B: AsRef<[u32]>>(&self, bags: &[B]) -> Vec<f32> {
        let dim = self.dim;
        let rows = self.rows();
        let mut pooled = vec![0f32; bags.len() * dim];
        for (out, bag) in pooled.chunks_exact_mut(dim).zip(bags) {
            pool_rows(&self.weights, dim, rows, bag.as_ref(), out);
        }
        pooled
    }

    /// The mean of one bag's rows into `out` (`dim` wide), as [`EmbeddingBag::pool`] computes it.
    pub fn pool_into(&self, bag: &[u32], out: &mut Vec<f32>) {
        let dim = self.dim;
        let rows = self.rows();
        out.clear();
        out.resize(dim, 0.0);
        pool_rows(&self.weights, dim, rows, bag, out);
    }

    /// Appends `count` rows initialized like a fresh model's (fine-tuning a larger vocabulary).
    pub fn grow(&mut self, count: usize, rng: &mut SplitMix64) {
        let extra = count * self.dim;
        self.weights
            .extend((0..extra).map(|_| rng.uniform(-EMBED_INIT_RANGE, EMBED_INIT_RANGE)));
    }
}

/// Adds the mean of `bag`'s rows of `weights` (`rows × dim`) to the zeroed `out`; an id
/// outside the table counts as `<unk>` (0).
fn pool_rows(weights: &[f32], dim: usize, rows: usize, bag: &[u32], out: &mut [f32]) {
    for &id in bag {
        let row = row_of(id, rows);
        let src = &weights[row * dim..(row + 1) * dim];
        out.iter_mut().zip(src).for_each(|(o, s)| *o += s);
    }
    if !bag.is_empty() {
        let scale = 1.0 / bag.len() as f32;
        out.iter_mut().for_each(|o| *o *= scale);
    }
}

/// The table row of token id `id` in a table of `rows` rows: an id outside it counts as
/// `<unk>` (0).
fn row_of(id: u32, rows: usize) -> usize {
    if (id as usize) < rows { id as usize } else { 0 }
}

/// One dense layer; the weight is `out × in` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `out × in`.
    pub weight: Var,
    /// `out`.
    pub bias: Var,
}

impl Dense {
    /// PyTorch's default `nn.Linear` initialization: U(-1/√in, 1/√in) for weight and bias.
    fn init(inputs: usize, outputs: usize, rng: &mut SplitMix64, device: &Device) -> Result<Self> {
        let bound = 1.0 / (inputs as f32).sqrt();
        let weight: Vec<f32> = (0..inputs * outputs)
            .map(|_| rng.uniform(-bound, bound))
            .collect();
        let bias: Vec<f32> = (0..outputs).map(|_| rng.uniform(-bound, bound)).collect();
        Self::from_vecs(weight, bias, inputs, outputs, device)
    }

    /// A layer from row-major weights (`outputs × inputs`) and biases.
    pub fn from_vecs(
        weight: Vec<f32>,
        bias: Vec<f32>,
        inputs: usize,
        outputs: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: Var::from_vec(weight, (outputs, inputs), device)?,
            bias: Var::from_vec(bias, outputs, device)?,
        })
    }
}

/// A weight as saved: `(name, shape, row-major values)`.
pub type NamedWeight = (String, Vec<usize>, Vec<f32>);

/// The classifier's weights.
#[derive(Debug, Clone)]
pub struct Model {
    /// Its sizes.
    pub config: ModelConfig,
    /// The token embeddings (host memory).
    pub embedding: EmbeddingBag,
    /// `embed_dim → fc_size`, `fc_size → fc_size`, `fc_size → num_classes`.
    pub layers: [Dense; 3],
    /// Where the dense layers live.
    pub device: Device,
}

impl Model {
    /// A freshly initialized model; the same seed gives the same weights.
    pub fn new(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        validate(&config)?;
        let mut rng = SplitMix64::new(seed, Stream::Init);
        let mut embedding = EmbeddingBag {
            weights: Vec::new(),
            dim: config.embed_dim,
        };
        embedding.grow(config.vocab_size, &mut rng);
        let layers = [
            Dense::init(config.embed_dim, config.fc_size, &mut rng, device)?,
            Dense::init(config.fc_size, config.fc_size, &mut rng, device)?,
            Dense::init(config.fc_size, config.num_classes, &mut rng, device)?,
        ];
        Ok(Self {
            config,
            embedding,
            layers,
            device: device.clone(),
        })
    }

    /// The pooled embeddings of `bags` as a `bags.len() × embed_dim` tensor on the device.
    pub fn pool<B: AsRef<[u32]>>(&self, bags: &[B]) -> Result<Tensor> {
        let pooled = self.embedding.pool(bags);
        Ok(Tensor::from_vec(
            pooled,
            (bags.len(), self.config.embed_dim),
            &self.device,
        )?)
    }

    /// Logits (`batch × num_classes`) from pooled embeddings: the same forward pass training
    /// runs ([`Model::forward_train`]), with the weights tracked (autograd reaches them).
    pub fn head(&self, pooled: &Tensor) -> Result<Tensor> {
        Ok(self.forward(pooled, |var| var.as_tensor().clone())?.logits)
    }

    /// Logits of token-id bags.
    pub fn logits<B: AsRef<[u32]>>(&self, bags: &[B]) -> Result<Tensor> {
        self.head(&self.pool(bags)?)
    }

    /// Bytes of its weights: the embedding table and the dense layers (as `f32`).
    pub fn bytes(&self) -> usize {
        let dense: usize = self.dense_vars().iter().map(|var| var.elem_count()).sum();
        (self.embedding.weights.len() + dense) * std::mem::size_of::<f32>()
    }

    /// The dense parameters in a fixed order (fc1.weight, fc1.bias, fc2…, fc3…).
    pub fn dense_vars(&self) -> [&Var; 6] {
        let [fc1, fc2, fc3] = &self.layers;
        [
            &fc1.weight,
            &fc1.bias,
            &fc2.weight,
            &fc2.bias,
            &fc3.weight,
            &fc3.bias,
        ]
    }

    /// Every weight in the order they are saved.
    pub fn named_weights(&self) -> Result<Vec<NamedWeight>> {
        let mut named = vec![(
            "embedding.weight".to_string(),
            vec![self.embedding.rows(), self.embedding.dim],
            self.embedding.weights.clone(),
        )];
        for (i, layer) in self.layers.iter().enumerate() {
            for (part, var) in [("weight", &layer.weight), ("bias", &layer.bias)] {
                let values = var
                    .as_tensor()
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1()?;
                named.push((format!("fc{}.{part}", i + 1), var.dims().to_vec(), values));
            }
        }
        Ok(named)
    }

    /// A model from weights named as [`Model::named_weights`] names them, checked against
    /// `config`; an inconsistent set is an [`Error::Artifact`].
    pub fn from_named_weights(
        config: ModelConfig,
        mut take: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
        device: &Device,
    ) -> Result<Self> {
        validate(&config).map_err(|e| Error::Artifact(e.to_string()))?;
        let ModelConfig {
            vocab_size,
            embed_dim,
            fc_size,
            num_classes,
        } = config;
        let embedding = EmbeddingBag {
            weights: take("embedding.weight", &[vocab_size, embed_dim])?,
            dim: embed_dim,
        };
        let mut layer = |n: usize, inputs: usize, outputs: usize| -> Result<Dense> {
            let weight = take(&format!("fc{n}.weight"), &[outputs, inputs])?;
            let bias = take(&format!("fc{n}.bias"), &[outputs])?;
            Dense::from_vecs(weight, bias, inputs, outputs, device)
        };
        let layers = [
            layer(1, embed_dim, fc_size)?,
            layer(2, fc_size, fc_size)?,
            layer(3, fc_size, num_classes)?,
        ];
        Ok(Self {
            config,
            embedding,
            layers,
            device: device.clone(),
        })
    }
}

/// The dense head as plain host arrays: [`Model::head`]'s arithmetic (three affine layers,
/// ReLU between) computed directly on the loaded weights for one document at a time. For a
/// head this small (a few tens of thousands of multiply-adds) a tensor library's per-operator
/// dispatch and allocations cost far more than the arithmetic; serving on the CPU uses this.
/// It is built from a [`Model`] and holds copies of its dense weights, so it cannot drift from
/// the model it was made from (a test compares the two on the CLINC sentences). Where the
/// vocabulary is small enough, the first layer is folded into the embedding table at load
/// time, so a document reads its tokens' rows of that table instead of the layer's weight.
#[derive(Debug, Clone)]
pub struct HostHead {
    /// The first layer folded into the embedding table ([`HostDense::folded`]), where that
    /// table is at most [`HostHead::FOLD_MAX_BYTES`].
    folded: Option<HostDense>,
    layers: [HostDense; 3],
}

/// One affine layer with its weight stored transposed (`in × out`, each row padded with zeros
/// to a multiple of [`HostDense::LANES`] outputs): the product is a sum of the input's entries
/// times contiguous weight rows, computed a block of outputs at a time in registers.
#[derive(Debug, Clone)]
struct HostDense {
    outputs: usize,
    /// `outputs` rounded up to a multiple of [`HostDense::LANES`].
    padded: usize,
    /// The transposed weight, `inputs × padded` floats in cache lines: every row starts on a
    /// line, so a row of 128 outputs is 8 lines, not 9, and no vector load straddles two.
    weight_t: Vec<Line>,
    /// `padded` long.
    bias: Vec<f32>,
}

impl HostDense {
    /// Rows are padded to a multiple of this many outputs: one AVX-512 register, two AVX ones.
    const LANES: usize = 16;

    fn from_layer(layer: &Dense) -> Result<Self> {
        let (outputs, inputs) = layer.weight.dims2()?;
        let padded = outputs.div_ceil(Self::LANES) * Self::LANES;
        let transposed = layer
            .weight
            .as_tensor()
            .to_dtype(DType::F32)?
            .t()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut weight_t = Line::zeroed(inputs * padded);
        for (row, source) in bytemuck::cast_slice_mut::<Line, f32>(&mut weight_t)
            .chunks_exact_mut(padded)
            .zip(transposed.chunks_exact(outputs))
        {
            row[..outputs].copy_from_slice(source);
        }
        let mut bias: Vec<f32> = layer.bias.as_tensor().to_dtype(DType::F32)?.to_vec1()?;
        bias.resize(padded, 0.0);
        Ok(Self {
            outputs,
            padded,
            weight_t,
            bias,
        })
    }

    /// `out = x Wᵀ + b`, then ReLU when `relu`: with AVX-512 (16 lanes) or AVX2 and FMA
    /// (8 lanes) where the CPU has them, else in the baseline instruction set; the same fused
    /// multiply-adds in the same order on every path but the last, so the first two give the
    /// same numbers. `nonzero` is scratch for the positions of `x`'s nonzero entries.
    fn apply(&self, x: &[f32], nonzero: &mut Vec<u32>, out: &mut Vec<f32>, relu: bool) {
        // The rows of zero inputs add nothing, and the previous layer's ReLU zeroes about half
        // of them: listing the nonzero positions first (without a branch, so nothing is
        // mispredicted) lets the products read only the rows that count. Reading the weights,
        // not multiplying, is what takes the time: they do not fit in the L1 cache.
        nonzero.clear();
        nonzero.resize(x.len(), 0);
        let mut count = 0;
        for (i, &value) in x.iter().enumerate() {
            nonzero[count] = i as u32;
            count += usize::from(value != 0.0);
        }
        self.affine(x, &nonzero[..count], out, relu);
    }

    /// `out = b + Σ scale(i) · W[i]` over the input rows `i` listed in `rows` (repeats add
    /// again), then ReLU when `relu`.
    fn affine(&self, scale: impl Scales, rows: &[u32], out: &mut Vec<f32>, relu: bool) {
        out.clear();
        out.extend_from_slice(&self.bias);
        self.accumulate(scale, rows, out);
        out.truncate(self.outputs);
        if relu {
            for o in out.iter_mut() {
                *o = o.max(0.0);
            }
        }
    }

    /// Bytes of its weight and bias.
    fn bytes(&self) -> usize {
        std::mem::size_of_val(self.weight_t.as_slice())
            + self.bias.len() * std::mem::size_of::<f32>()
    }

    /// The transposed weight as floats, row `i` at `i * padded`.
    fn weights(&self) -> &[f32] {
        bytemuck::cast_slice(&self.weight_t)
    }

    /// Number of inputs (rows of the transposed weight).
    fn inputs(&self) -> usize {
        self.weights().len() / self.padded.max(1)
    }

    /// This layer (which must take `embedding`'s rows as its input) folded into the table: the
    /// layer whose input row `t` is `E[t] Wᵀ`. Pooling is a mean, and the layer is affine, so
    /// `mean(E[bag]) Wᵀ + b = mean(E[bag] Wᵀ) + b`: the folded layer gives this one's output
    /// for the mean of a bag's rows from just the bag's rows, where this one reads its whole
    /// weight. `None` when the widths differ.
    fn folded(&self, embedding: &EmbeddingBag) -> Option<Self> {
        if embedding.dim != self.inputs() || embedding.dim == 0 {
            return None;
        }
        let listed: Vec<u32> = (0..embedding.dim as u32).collect();
        let mut weight_t = Line::zeroed(embedding.rows() * self.padded);
        for (row, source) in bytemuck::cast_slice_mut::<Line, f32>(&mut weight_t)
            .chunks_exact_mut(self.padded)
            .zip(embedding.weights.chunks_exact(embedding.dim))
        {
            self.accumulate(source, &listed, row);
        }
        Some(Self {
            outputs: self.outputs,
            padded: self.padded,
            weight_t,
            bias: self.bias.clone(),
        })
    }

    /// Adds `Σ x(i) · W[i]` to `out` (`padded` long), over the input rows `i` listed in
    /// `nonzero`.
    fn accumulate(&self, x: impl Scales, nonzero: &[u32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features the function is compiled for (checked above).
                #[allow(unsafe_code)]
                unsafe {
                    self.accumulate_avx512(x, nonzero, out)
                };
                return;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                #[allow(unsafe_code)]
                unsafe {
                    self.accumulate_avx2_fma(x, nonzero, out)
                };
                return;
            }
        }
        self.accumulate_with::<64>(x, nonzero, out, |acc, value, w| acc + value * w);
    }

    /// Up to 256 outputs (16 of the 32 AVX-512 registers) in one pass over the rows, so that
    /// each row is read once, from start to end (a head's 150 classes are 160 padded
    /// outputs); wider layers 128 outputs at a time, 8 registers, enough independent
    /// multiply-add chains to hide their latency. Each output's sum is the same either way.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn accumulate_avx512(&self, x: impl Scales, nonzero: &[u32], out: &mut [f32]) {
        let madd = |acc: f32, value: f32, w: f32| value.mul_add(w, acc);
        macro_rules! one_pass {
            ($($outputs:literal),*) => {
                match out.len() {
                    $($outputs => self.block::<$outputs>(x, nonzero, 0, out, madd),)*
                    _ => self.accumulate_with::<128>(x, nonzero, out, madd),
                }
            };
        }
        one_pass!(144, 160, 176, 192, 208, 224, 240, 256)
    }

    /// 64 outputs at a time: 8 of the 16 AVX registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn accumulate_avx2_fma(&self, x: impl Scales, nonzero: &[u32], out: &mut [f32]) {
        self.accumulate_with::<64>(x, nonzero, out, |acc, value, w| value.mul_add(w, acc));
    }

    /// Blocks of `BLOCK` outputs with `madd(acc, x, w)` as the multiply-add, then the rest (a
    /// multiple of [`HostDense::LANES`] under `BLOCK`) in at most three narrower blocks.
    #[inline(always)]
    fn accumulate_with<const BLOCK: usize>(
        &self,
        x: impl Scales,
        nonzero: &[u32],
        out: &mut [f32],
        madd: impl Fn(f32, f32, f32) -> f32 + Copy,
    ) {
        let mut first = 0;
        while out.len() - first >= BLOCK {
            self.block::<BLOCK>(x, nonzero, first, &mut out[first..first + BLOCK], madd);
            first += BLOCK;
        }
        if BLOCK > 64 && out.len() - first >= 64 {
            self.block::<64>(x, nonzero, first, &mut out[first..first + 64], madd);
            first += 64;
        }
        if out.len() - first >= 32 {
            self.block::<32>(x, nonzero, first, &mut out[first..first + 32], madd);
            first += 32;
        }
        if out.len() - first >= 16 {
            self.block::<16>(x, nonzero, first, &mut out[first..first + 16], madd);
        }
    }

    /// Adds outputs `first..first + N` of `x Wᵀ` to `out`, the accumulators in registers.
    #[inline(always)]
    fn block<const N: usize>(
        &self,
        x: impl Scales,
        nonzero: &[u32],
        first: usize,
        out: &mut [f32],
        madd: impl Fn(f32, f32, f32) -> f32,
    ) {
        let weights = self.weights();
        let mut acc = [0f32; N];
        acc.copy_from_slice(out);
        for &i in nonzero {
            let i = i as usize;
            let value = x.of(i);
            let row = &weights[i * self.padded + first..][..N];
            for (a, &w) in acc.iter_mut().zip(row) {
                *a = madd(*a, value, w);
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// 16 floats on a 64-byte boundary: one cache line, one AVX-512 register.
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([f32; HostDense::LANES]);

impl Line {
    /// `floats` zeros (a multiple of [`HostDense::LANES`]) in lines.
    fn zeroed(floats: usize) -> Vec<Line> {
        vec![Line([0.0; HostDense::LANES]); floats / HostDense::LANES]
    }
}

/// The factor of each weight row a layer adds: an input vector's entry, or one factor for
/// every row.
trait Scales: Copy {
    /// The factor of row `row`.
    fn of(self, row: usize) -> f32;
}

impl Scales for &[f32] {
    #[inline(always)]
    fn of(self, row: usize) -> f32 {
        self[row]
    }
}

/// The same factor for every row.
#[derive(Debug, Clone, Copy)]
struct Uniform(f32);

impl Scales for Uniform {
    #[inline(always)]
    fn of(self, _row: usize) -> f32 {
        self.0
    }
}

/// Reusable buffers of [`HostHead::logits`].
#[derive(Debug, Default)]
pub struct HostScratch {
    pooled: Vec<f32>,
    hidden: [Vec<f32>; 2],
    nonzero: Vec<u32>,
}

impl HostHead {
    /// Largest folded first layer ([`HostDense::folded`]) a head keeps: vocabulary rows ×
    /// `FC_SIZE` floats. 16,384 rows at the default `FC_SIZE` of 128; a larger vocabulary pools
    /// the embedding rows and then applies the first layer.
    pub const FOLD_MAX_BYTES: usize = 8 << 20;

    /// The head of `model`, copied to host memory.
    pub fn new(model: &Model) -> Result<Self> {
        let [fc1, fc2, fc3] = &model.layers;
        let fc1 = HostDense::from_layer(fc1)?;
        let folded = (model.embedding.rows() * fc1.padded * std::mem::size_of::<f32>()
            <= Self::FOLD_MAX_BYTES)
            .then(|| fc1.folded(&model.embedding))
            .flatten();
        Ok(Self {
            folded,
            layers: [
                fc1,
                HostDense::from_layer(fc2)?,
                HostDense::from_layer(fc3)?,
            ],
        })
    }

    /// Bytes of the weights it holds: its copies of the three layers and the folded table.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .chain(&self.folded)
            .map(HostDense::bytes)
            .sum()
    }

    /// Whether the first layer is folded into the embedding table.
    pub fn is_folded(&self) -> bool {
        self.folded.is_some()
    }

    /// The logits of one token-id bag pooled by `embedding` (the model's, which this head was
    /// made from), written to `logits`.
    pub fn logits(
        &self,
        embedding: &EmbeddingBag,
        bag: &[u32],
        scratch: &mut HostScratch,
        logits: &mut Vec<f32>,
    ) {
        let [fc1, fc2, fc3] = &self.layers;
        let [hidden1, hidden2] = &mut scratch.hidden;
        let nonzero = &mut scratch.nonzero;
        match &self.folded {
            Some(folded) => {
                // The mean of the bag's folded rows; an id outside the table counts as
                // `<unk>` (0), an empty bag gives the bias alone, as pooling does.
                let rows = folded.inputs();
                nonzero.clear();
                nonzero.extend(bag.iter().map(|&id| row_of(id, rows) as u32));
                let scale = if bag.is_empty() {
                    0.0
                } else {
                    1.0 / bag.len() as f32
                };
                folded.affine(Uniform(scale), nonzero, hidden1, true);
            }
            None => {
                embedding.pool_into(bag, &mut scratch.pooled);
                fc1.apply(&scratch.pooled, nonzero, hidden1, true);
            }
        }
        fc2.apply(hidden1, nonzero, hidden2, true);
        fc3.apply(hidden2, nonzero, logits, false);
    }
}

fn validate(config: &ModelConfig) -> Result<()> {
    let sizes = [
        ("vocab_size", config.vocab_size),
        ("EMBED_DIM", config.embed_dim),
        ("FC_SIZE", config.fc_size),
        ("num_classes", config.num_classes),
    ];
    for (name, value) in sizes {
        if value == 0 || value > 1 << 24 {
            return Err(Error::parameter(name, format!("{value} is out of range")));
        }
    }
    if config.vocab_size.saturating_mul(config.embed_dim) > 1 << 30 {
        return Err(Error::parameter("EMBED_DIM", "embedding table too large"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig {
            vocab_size: 10,
            embed_dim: 4,
            fc_size: 8,
            num_classes: 3,
        }
    }

    #[test]
    fn pooling_is_a_mean_and_empty_bags_are_zero() {
        let bag = EmbeddingBag {
            weights: vec![0.0, 0.0, 1.0, 2.0, 3.0, 6.0],
            dim: 2,
        };
        assert_eq!(
            bag.pool(&[vec![1u32, 2], vec![], vec![2, 2, 99]]),
            [2.0, 4.0, 0.0, 0.0, 2.0, 4.0]
        );
    }

    #[test]
    fn same_seed_same_weights_and_logits_have_the_right_shape() -> Result<()> {
        let a = Model::new(config(), 5, &Device::Cpu)?;
        let b = Model::new(config(), 5, &Device::Cpu)?;
        let c = Model::new(config(), 6, &Device::Cpu)?;
        assert_eq!(a.named_weights()?, b.named_weights()?);
        assert_ne!(a.named_weights()?, c.named_weights()?);
        let logits = a.logits(&[vec![1u32, 2], vec![3]])?;
        assert_eq!(logits.dims(), [2, 3]);
        Ok(())
    }

    /// Every instruction-set path and every width of the last block gives the sums of the
    /// plain loop (to rounding: only the baseline path rounds the product before adding), zero
    /// inputs skipped or not; the AVX2 and AVX-512 paths give the same numbers.
    #[test]
    fn every_path_and_block_width_gives_the_plain_products() -> Result<()> {
        let mut rng = SplitMix64::new(3, Stream::Init);
        for (inputs, outputs) in [
            (7, 1),
            (16, 16),
            (9, 17),
            (64, 151),
            (33, 200),
            (5, 240),
            (3, 300),
        ] {
            let layer = Dense::init(inputs, outputs, &mut rng, &Device::Cpu)?;
            let dense = HostDense::from_layer(&layer)?;
            let weight = layer.weight.as_tensor().to_vec2::<f32>()?;
            let bias = layer.bias.as_tensor().to_vec1::<f32>()?;
            // Every third input zero, as after a ReLU.
            let x: Vec<f32> = (0..inputs)
                .map(|i| {
                    if i % 3 == 1 {
                        0.0
                    } else {
                        rng.uniform(-1.0, 1.0)
                    }
                })
                .collect();
            let expected: Vec<f32> = (0..outputs)
                .map(|o| bias[o] + (0..inputs).map(|i| weight[o][i] * x[i]).sum::<f32>())
                .collect();
            let (mut nonzero, mut out) = (Vec::new(), Vec::new());
            dense.apply(&x, &mut nonzero, &mut out, false);
            let close = |got: &[f32]| {
                got.len() == outputs
                    && got
                        .iter()
                        .zip(&expected)
                        .all(|(g, e)| (g - e).abs() <= 1e-5)
            };
            assert!(
                close(&out),
                "{inputs}×{outputs}: {out:?} against {expected:?}"
            );
            let listed: Vec<u32> = (0..inputs as u32).collect();
            let mut plain = dense.bias.clone();
            dense.accumulate_with::<64>(&x[..], &listed, &mut plain, |acc, value, w| {
                acc + value * w
            });
            assert!(close(&plain[..outputs]), "{inputs}×{outputs} baseline");
            #[cfg(target_arch = "x86_64")]
            {
                let mut paths = Vec::new();
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    let mut sums = dense.bias.clone();
                    // SAFETY: the CPU has the features (checked above).
                    #[allow(unsafe_code)]
                    unsafe {
                        dense.accumulate_avx2_fma(&x[..], &listed, &mut sums)
                    };
                    paths.push(sums);
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut sums = dense.bias.clone();
                    // SAFETY: as above.
                    #[allow(unsafe_code)]
                    unsafe {
                        dense.accumulate_avx512(&x[..], &listed, &mut sums)
                    };
                    paths.push(sums);
                }
                for sums in &paths {
                    assert!(close(&sums[..outputs]), "{inputs}×{outputs} vector path");
                    assert_eq!(
                        sums, &paths[0],
                        "{inputs}×{outputs}: AVX2 and AVX-512 differ"
                    );
                }
            }
        }
        Ok(())
    }

    /// The head with its first layer folded into the embedding gives the tensor forward
    /// pass's logits, as the unfolded head does: for empty bags, repeated ids and ids outside
    /// the table too; a table over the limit is not folded.
    #[test]
    fn the_folded_first_layer_gives_the_logits_of_pooling_then_the_layer() -> Result<()> {
        let model = Model::new(config(), 5, &Device::Cpu)?;
        let head = HostHead::new(&model)?;
        assert!(head.is_folded());
        let unfolded = HostHead {
            folded: None,
            layers: head.layers.clone(),
        };
        // What the head holds: the three layers, and the table of one padded row per token
        // with the first layer's bias; the model's own weights as saved.
        let padded = config().fc_size.div_ceil(HostDense::LANES) * HostDense::LANES;
        let folded_bytes = (model.embedding.rows() + 1) * padded * 4;
        assert_eq!(head.bytes(), unfolded.bytes() + folded_bytes);
        let saved: usize = model.named_weights()?.iter().map(|(_, _, v)| v.len()).sum();
        assert_eq!(model.bytes(), saved * 4);

        let rows = model.embedding.rows() as u32;
        let bags: Vec<Vec<u32>> = vec![
            vec![],
            vec![0],
            vec![3],
            vec![1, 1, 1, 2],
            vec![rows - 1, rows, rows + 7, 4],
            (0..rows).collect(),
        ];
        let expected = model.logits(&bags)?.to_vec2::<f32>()?;
        let (mut scratch, mut logits) = (HostScratch::default(), Vec::new());
        for (bag, expected) in bags.iter().zip(&expected) {
            for head in [&head, &unfolded] {
                head.logits(&model.embedding, bag, &mut scratch, &mut logits);
                assert_eq!(logits.len(), expected.len());
                for (a, b) in logits.iter().zip(expected) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{bag:?} (folded: {}): {a} against {b}",
                        head.is_folded()
                    );
                }
            }
        }

        let wide = ModelConfig {
            vocab_size: HostHead::FOLD_MAX_BYTES / (4 * 16) + 1,
            embed_dim: 4,
            fc_size: 16,
            num_classes: 3,
        };
        assert!(!HostHead::new(&Model::new(wide, 5, &Device::Cpu)?)?.is_folded());
        Ok(())
    }

    #[test]
    fn rejects_absurd_sizes() {
        let bad = ModelConfig {
            embed_dim: 0,
            ..config()
        };
        assert!(Model::new(bad, 1, &Device::Cpu).is_err());
    }
}
