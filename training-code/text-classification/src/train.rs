//! The training loop: vocabulary from the training split, seeded shuffles, word dropout
//! (`WORD_DROPOUT`: features left out of training bags at random), SGD or AdamW with
//! gradient clipping by global norm, learning-rate decay when validation accuracy stops
//! improving, one [`EpochReport`] per epoch, and the test accuracy at the end.

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::backprop::{self, LossStats};
use crate::data::{Dataset, Example, Split};
use crate::error::{Error, Result};
use crate::finetune::BaseModel;
use crate::host_train::HostTrainer;
use crate::model::{Model, ModelConfig};
use crate::optim::{Optimizer, SparseGrad};
use crate::params::TrainParams;
use crate::rng::{SplitMix64, Stream};
use crate::tokenizer::Vocab;

/// Batch size of evaluation passes (no gradients, so larger is cheaper).
const EVAL_BATCH: usize = 512;

/// What one epoch achieved.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's training batches.
    pub loss: f64,
    /// Training accuracy during the epoch.
    pub accuracy: f64,
    /// Accuracy on the validation split after the epoch.
    pub val_accuracy: f64,
    /// Training examples per second (the training pass only).
    pub examples_per_sec: f64,
    /// Learning rate the epoch trained with.
    pub lr: f64,
    /// Seconds of the training pass (what `examples_per_sec` divides by).
    pub train_seconds: f64,
    /// Wall time of the epoch, evaluation included, in seconds.
    pub seconds: f64,
}

/// A trained model and what is known about it.
#[derive(Debug)]
pub struct Trained {
    /// The weights.
    pub model: Model,
    /// The vocabulary the model was trained with.
    pub vocab: Vocab,
    /// Label names in class order.
    pub classes: Vec<String>,
    /// Every epoch's report.
    pub epochs: Vec<EpochReport>,
    /// Accuracy on the test split.
    pub test_accuracy: f64,
    /// Sizes of the train, validation and test splits.
    pub split_sizes: [usize; 3],
}

/// An example as the model sees it.
struct Encoded {
    ids: Vec<u32>,
    label: u32,
}

/// Trains on `data` with `params`, from scratch or, given `base`, starting from a trained
/// model's weights (see [`crate::finetune`]). `on_epoch` sees each epoch's report as soon as it
/// is known; an error from it stops training.
pub fn train(
    data: &Dataset,
    params: &TrainParams,
    device: &Device,
    base: Option<BaseModel>,
    on_epoch: &mut dyn FnMut(&EpochReport) -> Result<()>,
) -> Result<Trained> {
    let split = data.split(params.seed)?;
    let (mut model, vocab, classes) = initial_model(data, &split, params, device, base)?;
    let class_of = class_map(&data.labels, &classes)?;
    let encode = |examples: &[Example]| -> Vec<Encoded> {
        examples
            .iter()
            .map(|e| Encoded {
                ids: vocab.encode(&e.text),
                label: class_of[e.label],
            })
            .collect()
    };
    let (train_set, val_set, test_set) = (
        encode(&split.train),
        encode(&split.validation),
        encode(&split.test),
    );
    tracing::info!(
        train = train_set.len(),
        validation = val_set.len(),
        test = test_set.len(),
        vocab = vocab.len(),
        classes = classes.len(),
        "training starts"
    );
    let mut optimizer = Optimizer::new(params.optimizer, params.lr, &model)?;
    // On the CPU the dense head trains on host arrays (see crate::host_train).
    let mut host = match device {
        Device::Cpu => Some(HostTrainer::new(&model, params.optimizer)?),
        _ => None,
    };
    let mut sparse = SparseGrad::new(vocab.len(), params.embed_dim);
    let mut shuffle = SplitMix64::new(params.seed, Stream::Shuffle);
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let mut best_val = f64::NEG_INFINITY;
    let mut epochs = Vec::new();
    for epoch in 1..=params.epochs {
        let started = Instant::now();
        shuffle.shuffle(&mut order);
        let lr = optimizer.lr;
        let (loss, accuracy) = train_epoch(
            &mut model,
            &train_set,
            &order,
            params,
            &mut optimizer,
            &mut sparse,
            &mut shuffle,
            host.as_mut(),
        )?;
        let train_seconds = started.elapsed().as_secs_f64();
        if let Some(host) = &host {
            host.store(&model)?;
        }
        let val_accuracy = accuracy_of(&model, &val_set)?;
        if val_accuracy > best_val {
            best_val = val_accuracy;
        } else {
            optimizer.lr *= params.lr_decay;
        }
        let report = EpochReport {
            epoch,
            loss,
            accuracy,
            val_accuracy,
            examples_per_sec: train_set.len() as f64 / train_seconds.max(1e-9),
            lr,
            train_seconds,
            seconds: started.elapsed().as_secs_f64(),
        };
        on_epoch(&report)?;
        epochs.push(report);
    }
    let test_accuracy = accuracy_of(&model, &test_set)?;
    Ok(Trained {
        model,
        vocab,
        classes,
        epochs,
        test_accuracy,
        split_sizes: [train_set.len(), val_set.len(), test_set.len()],
    })
}

/// A fresh model for the training split's vocabulary, or the base model grown to cover it.
fn initial_model(
    data: &Dataset,
    split: &Split,
    params: &TrainParams,
    device: &Device,
    base: Option<BaseModel>,
) -> Result<(Model, Vocab, Vec<String>)> {
    let texts = split.train.iter().map(|e| e.text.as_str());
    if let Some(base) = base {
        return base.extend(texts, &data.labels, params);
    }
    let vocab = Vocab::build(texts, params.ngrams);
    let config = ModelConfig {
        vocab_size: vocab.len(),
        embed_dim: params.embed_dim,
        fc_size: params.fc_size,
        num_classes: data.labels.len(),
    };
    let model = Model::new(config, params.seed, device)?;
    Ok((model, vocab, data.labels.clone()))
}

/// Dataset label index → model class index.
fn class_map(labels: &[String], classes: &[String]) -> Result<Vec<u32>> {
    labels
        .iter()
        .map(|label| {
            classes
                .iter()
                .position(|c| c == label)
                .map(|i| i as u32)
                .ok_or_else(|| Error::Dataset(format!("label {label:?} has no class")))
        })
        .collect()
}

/// One pass over the training set; returns the mean loss and the accuracy.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    model: &mut Model,
    examples: &[Encoded],
    order: &[usize],
    params: &TrainParams,
    optimizer: &mut Optimizer,
    sparse: &mut SparseGrad,
    rng: &mut SplitMix64,
    mut host: Option<&mut HostTrainer>,
) -> Result<(f64, f64)> {
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    for batch in order.chunks(params.batch_size) {
        let kept: Vec<Vec<u32>> = batch
            .iter()
            .map(|&i| drop_features(&examples[i].ids, params.word_dropout, rng))
            .collect();
        let bags: Vec<&[u32]> = kept.iter().map(Vec::as_slice).collect();
        let targets: Vec<u32> = batch.iter().map(|&i| examples[i].label).collect();
        let stats = match host.as_deref_mut() {
            Some(host) => {
                let stats = host.gradients(model, &bags, &targets, sparse)?;
                check_finite(&stats)?;
                let norm_sq = sparse.sum_of_squares() + host.sum_of_squares();
                optimizer.step_host(model, host, sparse, clip_scale(params, norm_sq));
                stats
            }
            None => tensor_step(model, &bags, &targets, params, optimizer, sparse)?,
        };
        loss_sum += stats.loss * batch.len() as f64;
        correct += stats.correct;
    }
    let n = order.len().max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// One training step on the model's device with candle's tensors (the GPU path).
fn tensor_step(
    model: &mut Model,
    bags: &[&[u32]],
    targets: &[u32],
    params: &TrainParams,
    optimizer: &mut Optimizer,
    sparse: &mut SparseGrad,
) -> Result<LossStats> {
    let pooled = model.pool(bags)?;
    let activations = model.forward_train(&pooled)?;
    let (stats, dlogits) = backprop::cross_entropy(&activations.logits, targets)?;
    check_finite(&stats)?;
    let grads = model.backward(&activations, &dlogits)?;
    sparse.accumulate(bags, &grads.pooled.flatten_all()?.to_vec1::<f32>()?);
    let mut norm_sq = sparse.sum_of_squares();
    for grad in &grads.dense {
        norm_sq += f64::from(grad.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    optimizer.step(model, &grads.dense, sparse, clip_scale(params, norm_sq))?;
    Ok(stats)
}

fn check_finite(stats: &LossStats) -> Result<()> {
    if stats.loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged(format!("loss is {}", stats.loss)))
    }
}

/// The factor that clips the gradient (its squared norm `norm_sq`) to `CLIP_NORM`.
fn clip_scale(params: &TrainParams, norm_sq: f64) -> f64 {
    (params.clip_norm / (norm_sq.sqrt() + 1e-6)).min(1.0)
}

/// `ids` without each feature with probability `rate` (a bag keeps at least one); `rate` 0
/// draws nothing from `rng`, so runs without dropout shuffle exactly as before it existed.
fn drop_features(ids: &[u32], rate: f64, rng: &mut SplitMix64) -> Vec<u32> {
    if rate <= 0.0 || ids.len() < 2 {
        return ids.to_vec();
    }
    let threshold = (rate * (1u64 << 53) as f64) as u64;
    let kept: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|_| rng.next_u64() >> 11 >= threshold)
        .collect();
    if kept.is_empty() {
        return vec![ids[rng.below(ids.len())]];
    }
    kept
}

fn count_correct(logits: &Tensor, targets: &[u32]) -> Result<usize> {
    let predicted = backprop::argmax_rows(logits)?;
    Ok(predicted
        .iter()
        .zip(targets)
        .filter(|(p, t)| p == t)
        .count())
}

fn accuracy_of(model: &Model, examples: &[Encoded]) -> Result<f64> {
    if examples.is_empty() {
        return Ok(0.0);
    }
    let mut correct = 0;
    for chunk in examples.chunks(EVAL_BATCH) {
        let bags: Vec<&[u32]> = chunk.iter().map(|e| e.ids.as_slice()).collect();
        let targets: Vec<u32> = chunk.iter().map(|e| e.label).collect();
        correct += count_correct(&model.logits(&bags)?, &targets)?;
    }
    Ok(correct as f64 / examples.len() as f64)
}

#[cfg(test)]
mod tests;
