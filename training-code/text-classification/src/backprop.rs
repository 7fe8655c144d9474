//! Hand-written gradients of the dense head and the cross-entropy loss.
//!
//! The head is small (three layers), so a general autograd graph costs more in bookkeeping
//! (one gradient buffer per node, zero-filled and accumulated) than in arithmetic. The forward
//! pass keeps the activations, the loss gradient is formed on the host from the logits, and the
//! backward pass is six matrix products plus the ReLU masks and bias sums: the same gradients
//! as autograd (the tests compare them), about a third of the work.

use candle_core::{D, DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::model::Model;

/// What the backward pass needs from the forward pass.
pub struct Activations {
    pooled: Tensor,
    hidden1: Tensor,
    hidden2: Tensor,
    /// `batch × num_classes`.
    pub logits: Tensor,
}

/// The gradients of one batch's mean loss.
pub struct Gradients {
    /// fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias (as
    /// [`Model::dense_vars`]).
    pub dense: Vec<Tensor>,
    /// With respect to the pooled embeddings, `batch × embed_dim`.
    pub pooled: Tensor,
}

/// The loss of a batch and how many of its predictions were right.
pub struct LossStats {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Examples whose highest logit is the target.
    pub correct: usize,
}

impl Model {
    /// The forward pass over pooled embeddings, keeping the activations. The weights are read
    /// detached: this pass and [`Model::backward`] need no autograd graph, and a graph would
    /// follow the gradients into the optimizer's moments and keep every step's activations
    /// alive (memory growing with every epoch).
    pub fn forward_train(&self, pooled: &Tensor) -> Result<Activations> {
        self.forward(pooled, Var::as_detached_tensor)
    }

    /// The forward pass with each weight read by `read` (detached, or tracked for autograd).
    pub(crate) fn forward(&self, pooled: &Tensor, read: fn(&Var) -> Tensor) -> Result<Activations> {
        let [fc1, fc2, fc3] = &self.layers;
        let hidden1 = affine_layer(pooled, &read(&fc1.weight), &read(&fc1.bias))?.relu()?;
        let hidden2 = affine_layer(&hidden1, &read(&fc2.weight), &read(&fc2.bias))?.relu()?;
        let logits = affine_layer(&hidden2, &read(&fc3.weight), &read(&fc3.bias))?;
        Ok(Activations {
            pooled: pooled.clone(),
            hidden1,
            hidden2,
            logits,
        })
    }

    /// The backward pass from the loss gradient with respect to the logits.
    pub fn backward(&self, acts: &Activations, dlogits: &Tensor) -> Result<Gradients> {
        let [fc1, fc2, fc3] = &self.layers;
        let (dw3, db3, dh2) =
            layer_grads(dlogits, &acts.hidden2, &fc3.weight.as_detached_tensor())?;
        let dz2 = dh2.mul(&relu_mask(&acts.hidden2)?)?;
        let (dw2, db2, dh1) = layer_grads(&dz2, &acts.hidden1, &fc2.weight.as_detached_tensor())?;
        let dz1 = dh1.mul(&relu_mask(&acts.hidden1)?)?;
        let (dw1, db1, dpooled) =
            layer_grads(&dz1, &acts.pooled, &fc1.weight.as_detached_tensor())?;
        Ok(Gradients {
            dense: vec![dw1, db1, dw2, db2, dw3, db3],
            pooled: dpooled,
        })
    }
}

/// `x Wᵀ + b`.
fn affine_layer(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&weight.t()?)?.broadcast_add(bias)?)
}

/// Gradients of `y = x Wᵀ + b` given `dy`: (dW, db, dx).
fn layer_grads(dy: &Tensor, x: &Tensor, weight: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let dweight = dy.t()?.matmul(x)?;
    let dbias = dy.sum(0)?;
    let dx = dy.matmul(weight)?;
    Ok((dweight, dbias, dx))
}

/// 1 where the ReLU passed its input (output > 0), else 0.
fn relu_mask(output: &Tensor) -> Result<Tensor> {
    Ok(output.gt(0f32)?.to_dtype(DType::F32)?)
}

/// Mean cross-entropy of `logits` against `targets`, its gradient with respect to the logits
/// (`(softmax − one_hot) / batch`), and the number of correct predictions. Computed on the host
/// in f32 with a max-shifted log-sum-exp, like PyTorch's.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<(LossStats, Tensor)> {
    let (batch, classes) = logits.dims2()?;
    if batch != targets.len() {
        return Err(Error::Dataset(format!(
            "{} targets for {batch} logits",
            targets.len()
        )));
    }
    let values = logits.flatten_all()?.to_vec1::<f32>()?;
    let mut grad = vec![0f32; values.len()];
    let (mut loss, mut correct) = (0f64, 0usize);
    let inv_batch = 1.0 / batch.max(1) as f32;
    for ((row, out), &target) in values
        .chunks_exact(classes)
        .zip(grad.chunks_exact_mut(classes))
        .zip(targets)
    {
        let target = target as usize;
        let (best, max) = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        let log_sum = sum.ln();
        loss += f64::from(log_sum - (row[target] - max));
        correct += usize::from(best == target);
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - max - log_sum).exp() * inv_batch;
        }
        out[target] -= inv_batch;
    }
    let stats = LossStats {
        loss: loss / batch.max(1) as f64,
        correct,
    };
    let grad = Tensor::from_vec(grad, (batch, classes), logits.device())?;
    Ok((stats, grad))
}

/// Index of each row's largest value (ties: the first).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits
        .argmax_keepdim(D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::ModelConfig;

    fn small_model() -> Result<Model> {
        let config = ModelConfig {
            vocab_size: 12,
            embed_dim: 5,
            fc_size: 7,
            num_classes: 4,
        };
        Model::new(config, 3, &Device::Cpu)
    }

    #[test]
    fn gradients_match_autograd() -> Result<()> {
        let model = small_model()?;
        let bags = [vec![1u32, 2, 3], vec![4], vec![5, 5, 6], vec![], vec![7, 8]];
        let targets = [0u32, 3, 1, 2, 3];
        let pooled = Var::from_vec(model.embedding.pool(&bags), (5, 5), &Device::Cpu)?;

        let logits = model.head(pooled.as_tensor())?;
        let target = Tensor::new(&targets, &Device::Cpu)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &target)?;
        let auto = loss.backward()?;

        let acts = model.forward_train(pooled.as_tensor())?;
        let (stats, dlogits) = cross_entropy(&acts.logits, &targets)?;
        let manual = model.backward(&acts, &dlogits)?;

        let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok(a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
        };
        assert!((stats.loss - f64::from(loss.to_scalar::<f32>()?)).abs() < 1e-5);
        for (var, grad) in model.dense_vars().into_iter().zip(&manual.dense) {
            let expected = auto.get(var.as_tensor()).expect("autograd gradient");
            assert!(close(expected, grad)? < 1e-5, "{:?}", var.dims());
        }
        let expected = auto.get(pooled.as_tensor()).expect("autograd gradient");
        assert!(close(expected, &manual.pooled)? < 1e-5);
        let predicted = argmax_rows(&acts.logits)?;
        let hits = predicted
            .iter()
            .zip(&targets)
            .filter(|(p, t)| p == t)
            .count();
        assert_eq!(stats.correct, hits);
        Ok(())
    }

    /// The training pass builds no autograd graph: the optimizer's moments, made from these
    /// gradients, would otherwise keep every step's activations (the memory of a run grew by
    /// hundreds of MB per epoch).
    #[test]
    fn the_training_pass_keeps_no_graph() -> Result<()> {
        let model = small_model()?;
        let bags: [&[u32]; 2] = [&[1, 2, 3], &[4, 5]];
        let pooled = model.pool(&bags)?;
        let acts = model.forward_train(&pooled)?;
        let (_, dlogits) = cross_entropy(&acts.logits, &[0, 3])?;
        let grads = model.backward(&acts, &dlogits)?;
        for tensor in [&acts.hidden1, &acts.hidden2, &acts.logits, &grads.pooled]
            .into_iter()
            .chain(&grads.dense)
        {
            assert!(!tensor.track_op(), "{:?} tracks its inputs", tensor.dims());
        }
        Ok(())
    }
}
