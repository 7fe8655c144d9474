//! Optimizers over the model's two kinds of parameters: the dense layers (candle tensors) and
//! the embedding table, whose gradient is row-sparse ([`SparseGrad`]): only the rows a batch
//! used are ever visited.
//!
//! SGD on the sparse rows is exactly dense SGD (untouched rows have a zero gradient). AdamW on
//! the table is the lazy variant (PyTorch's `SparseAdam` plus decoupled weight decay): moments
//! and decay of a row advance only in steps that use the row.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::host_train::HostTrainer;
use crate::model::Model;

/// Which update rule `OPTIMIZER` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Plain stochastic gradient descent (MiniAutoML's choice, with `LR=4`).
    Sgd,
    /// AdamW (β = 0.9, 0.999; ε = 1e-8; weight decay 0.01).
    AdamW,
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd),
            "adamw" => Ok(Self::AdamW),
            other => Err(Error::parameter(
                "OPTIMIZER",
                format!("{other:?} is not sgd or adamw"),
            )),
        }
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
const WEIGHT_DECAY: f64 = 0.01;

/// The embedding table's gradient for one batch: the rows touched, in first-use order.
#[derive(Debug)]
pub struct SparseGrad {
    dim: usize,
    /// Touched row ids.
    rows: Vec<u32>,
    /// Their gradients, `rows.len() × dim`.
    values: Vec<f32>,
    /// Row id → position in `rows`, `u32::MAX` when untouched.
    slot: Vec<u32>,
}

impl SparseGrad {
    /// An empty gradient for a `vocab_size × dim` table.
    pub fn new(vocab_size: usize, dim: usize) -> Self {
        Self {
            dim,
            rows: Vec::new(),
            values: Vec::new(),
            slot: vec![u32::MAX; vocab_size],
        }
    }

    /// Back-propagates `pooled_grad` (`bags.len() × dim`, the loss gradient of each bag's mean)
    /// to the rows of each bag, after forgetting the previous batch.
    pub fn accumulate<B: AsRef<[u32]>>(&mut self, bags: &[B], pooled_grad: &[f32]) {
        for &row in &self.rows {
            self.slot[row as usize] = u32::MAX;
        }
        self.rows.clear();
        self.values.clear();
        let dim = self.dim;
        for (bag, grad) in bags.iter().zip(pooled_grad.chunks_exact(dim)) {
            let bag = bag.as_ref();
            let scale = 1.0 / bag.len().max(1) as f32;
            for &id in bag {
                let id = if (id as usize) < self.slot.len() {
                    id
                } else {
                    0
                };
                let mut position = self.slot[id as usize];
                if position == u32::MAX {
                    position = self.rows.len() as u32;
                    self.slot[id as usize] = position;
                    self.rows.push(id);
                    self.values.resize(self.values.len() + dim, 0.0);
                }
                let start = position as usize * dim;
                let out = &mut self.values[start..start + dim];
                out.iter_mut().zip(grad).for_each(|(o, g)| *o += g * scale);
            }
        }
    }

    /// The sum of squares of the gradient (for clipping by the global norm).
    pub fn sum_of_squares(&self) -> f64 {
        self.values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum()
    }

    /// Number of distinct rows touched.
    pub fn touched(&self) -> usize {
        self.rows.len()
    }
}

/// Moments of AdamW for the dense layers and the table.
#[derive(Debug)]
struct AdamState {
    dense: Vec<(Tensor, Tensor)>,
    table_m: Vec<f32>,
    table_v: Vec<f32>,
}

/// An optimizer with its learning rate and state.
#[derive(Debug)]
pub struct Optimizer {
    /// The current learning rate (decayed by the training loop).
    pub lr: f64,
    steps: u64,
    /// `None` for SGD.
    adam: Option<AdamState>,
}

impl Optimizer {
    /// A fresh optimizer for `model`.
    pub fn new(kind: OptimizerKind, lr: f64, model: &Model) -> Result<Self> {
        let adam = match kind {
            OptimizerKind::Sgd => None,
            OptimizerKind::AdamW => {
                let mut dense = Vec::new();
                for var in model.dense_vars() {
                    dense.push((var.zeros_like()?, var.zeros_like()?));
                }
                let size = model.embedding.weights.len();
                Some(AdamState {
                    dense,
                    table_m: vec![0.0; size],
                    table_v: vec![0.0; size],
                })
            }
        };
        Ok(Self { lr, steps: 0, adam })
    }

    /// Applies one step with the gradients multiplied by `scale` (gradient clipping).
    pub fn step(
        &mut self,
        model: &mut Model,
        dense_grads: &[Tensor],
        sparse: &SparseGrad,
        scale: f64,
    ) -> Result<()> {
        self.steps += 1;
        let lr = self.lr;
        let steps = self.steps;
        match self.adam.as_mut() {
            None => sgd(lr, model, dense_grads, sparse, scale),
            Some(state) => adamw(lr, steps, state, model, dense_grads, sparse, scale),
        }
    }

    /// [`Optimizer::step`] for a model trained on host arrays: the dense weights in `host`
    /// (its gradients from [`HostTrainer::gradients`]), the embedding table in `model`.
    pub fn step_host(
        &mut self,
        model: &mut Model,
        host: &mut HostTrainer,
        sparse: &SparseGrad,
        scale: f64,
    ) {
        self.steps += 1;
        match self.adam.as_mut() {
            None => {
                let step = (self.lr * scale) as f32;
                host.sgd(step);
                sgd_table(model, sparse, step);
            }
            Some(state) => {
                let k = AdamCoefficients::new(self.lr, self.steps, scale);
                host.adamw(&k);
                adamw_table(state, model, sparse, &k);
            }
        }
    }
}

fn sgd(
    lr: f64,
    model: &mut Model,
    dense_grads: &[Tensor],
    sparse: &SparseGrad,
    scale: f64,
) -> Result<()> {
    let step = lr * scale;
    for (var, grad) in model.dense_vars().into_iter().zip(dense_grads) {
        var.set(&var.as_detached_tensor().sub(&grad.affine(step, 0.0)?)?)?;
    }
    sgd_table(model, sparse, step as f32);
    Ok(())
}

/// SGD on the rows of the embedding table a batch used.
fn sgd_table(model: &mut Model, sparse: &SparseGrad, step: f32) {
    let dim = sparse.dim;
    let table = &mut model.embedding.weights;
    for (&row, grad) in sparse.rows.iter().zip(sparse.values.chunks_exact(dim)) {
        let start = row as usize * dim;
        let weights = &mut table[start..start + dim];
        weights
            .iter_mut()
            .zip(grad)
            .for_each(|(w, g)| *w -= step * g);
    }
}

/// AdamW's factors for one step.
#[derive(Debug, Clone, Copy)]
pub struct AdamCoefficients {
    lr: f32,
    /// Bias corrections of the first and second moment.
    correction1: f32,
    correction2: f32,
    /// The gradient clipping factor.
    scale: f32,
    /// `1 − lr · weight decay`.
    decay: f32,
}

impl AdamCoefficients {
    fn new(lr: f64, steps: u64, scale: f64) -> Self {
        let t = i32::try_from(steps).unwrap_or(i32::MAX);
        Self {
            lr: lr as f32,
            correction1: (1.0 - BETA1.powi(t)) as f32,
            correction2: (1.0 - BETA2.powi(t)) as f32,
            scale: scale as f32,
            decay: (1.0 - lr * WEIGHT_DECAY) as f32,
        }
    }
}

/// One AdamW step of `weights` with `grad` and its moments `m` and `v`, element by element.
pub fn adamw_slice(
    weights: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &AdamCoefficients,
) {
    let (b1, b2, eps) = (BETA1 as f32, BETA2 as f32, EPS as f32);
    for (((w, &g), m), v) in weights.iter_mut().zip(grad).zip(m).zip(v) {
        let g = g * k.scale;
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let update = (*m / k.correction1) / ((*v / k.correction2).sqrt() + eps);
        *w = *w * k.decay - k.lr * update;
    }
}

fn adamw(
    lr: f64,
    steps: u64,
    state: &mut AdamState,
    model: &mut Model,
    dense_grads: &[Tensor],
    sparse: &SparseGrad,
    scale: f64,
) -> Result<()> {
    let t = i32::try_from(steps).unwrap_or(i32::MAX);
    let correction1 = 1.0 - BETA1.powi(t);
    let correction2 = 1.0 - BETA2.powi(t);
    for ((var, grad), (m, v)) in model
        .dense_vars()
        .into_iter()
        .zip(dense_grads)
        .zip(state.dense.iter_mut())
    {
        let grad = grad.affine(scale, 0.0)?;
        *m = m.affine(BETA1, 0.0)?.add(&grad.affine(1.0 - BETA1, 0.0)?)?;
        *v = v
            .affine(BETA2, 0.0)?
            .add(&grad.sqr()?.affine(1.0 - BETA2, 0.0)?)?;
        let m_hat = m.affine(1.0 / correction1, 0.0)?;
        let v_hat = v.affine(1.0 / correction2, 0.0)?;
        let update = m_hat.div(&v_hat.sqrt()?.affine(1.0, EPS)?)?;
        let decayed = var
            .as_detached_tensor()
            .affine(1.0 - lr * WEIGHT_DECAY, 0.0)?;
        var.set(&decayed.sub(&update.affine(lr, 0.0)?)?)?;
    }
    adamw_table(
        state,
        model,
        sparse,
        &AdamCoefficients::new(lr, steps, scale),
    );
    Ok(())
}

/// Lazy AdamW on the rows of the embedding table a batch used.
fn adamw_table(
    state: &mut AdamState,
    model: &mut Model,
    sparse: &SparseGrad,
    k: &AdamCoefficients,
) {
    let dim = sparse.dim;
    let table = &mut model.embedding.weights;
    for (&row, grad) in sparse.rows.iter().zip(sparse.values.chunks_exact(dim)) {
        let range = row as usize * dim..(row as usize + 1) * dim;
        adamw_slice(
            &mut table[range.clone()],
            grad,
            &mut state.table_m[range.clone()],
            &mut state.table_v[range],
            k,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_grad_spreads_each_bag_mean_over_its_rows() {
        let mut grad = SparseGrad::new(5, 2);
        grad.accumulate(&[vec![3u32, 1], vec![3]], &[2.0, 4.0, 1.0, 1.0]);
        assert_eq!(grad.rows, [3, 1]);
        assert_eq!(grad.values, [2.0, 3.0, 1.0, 2.0]);
        assert!((grad.sum_of_squares() - 18.0).abs() < 1e-9);
        grad.accumulate(&[vec![4u32]], &[1.0, 1.0]);
        assert_eq!(grad.rows, [4]);
        assert_eq!(grad.touched(), 1);
    }

    #[test]
    fn optimizer_names_parse() {
        assert_eq!(
            "SGD".parse::<OptimizerKind>().ok(),
            Some(OptimizerKind::Sgd)
        );
        assert_eq!(
            "adamw".parse::<OptimizerKind>().ok(),
            Some(OptimizerKind::AdamW)
        );
        assert!("adam".parse::<OptimizerKind>().is_err());
    }
}
