//! Training the encoder algorithm, in one of two modes:
//!
//! - [`train_head`]: the encoder frozen; the sentence embeddings of every example are computed
//!   once (by the caller, who may cache them) and the head trains on them with AdamW.
//! - [`train_full`]: the encoder's weights train too, with their own learning rate, on
//!   whatever device the encoder is on; a step's tensors stay on that device and the epoch's
//!   loss and accuracy are summed there, read once per epoch.
//!
//! Both split the data as the other algorithm does ([`Dataset::split_indices`]), report every
//! epoch with an [`EpochReport`] and end with the test accuracy.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

use super::head::{Head, HeadConfig};
use super::params::EncoderParams;
use super::{Encoder, TokenIds};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::{SplitMix64, Stream};
use crate::train::EpochReport;

/// A trained head (and, in `full` mode, the trained encoder's variables).
pub struct EncoderTrained {
    /// The head.
    pub head: Head,
    /// Label names in class order.
    pub classes: Vec<String>,
    /// Every epoch's report.
    pub epochs: Vec<EpochReport>,
    /// Accuracy on the test split.
    pub test_accuracy: f64,
    /// Sizes of the train, validation and test splits.
    pub split_sizes: [usize; 3],
    /// `full` mode: the encoder's trained weights.
    pub encoder_weights: Option<VarMap>,
}

impl std::fmt::Debug for EncoderTrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderTrained")
            .field("classes", &self.classes.len())
            .field("epochs", &self.epochs.len())
            .field("test_accuracy", &self.test_accuracy)
            .finish_non_exhaustive()
    }
}

/// The head of a trained model to continue from (fine-tuning from a base run).
#[derive(Debug, Clone)]
pub struct BaseHead {
    /// Its sizes.
    pub config: HeadConfig,
    /// Its weights by name.
    pub tensors: HashMap<String, Tensor>,
    /// Its classes, in output order.
    pub classes: Vec<String>,
}

/// Class names (a base model's first, then the data's new labels) and the class of each of
/// the data's labels.
fn classes_for(data: &Dataset, base: Option<&BaseHead>) -> (Vec<String>, Vec<u32>) {
    let mut classes: Vec<String> = base.map(|b| b.classes.clone()).unwrap_or_default();
    let mut class_of = Vec::with_capacity(data.labels.len());
    for label in &data.labels {
        let index = match classes.iter().position(|c| c == label) {
            Some(i) => i,
            None => {
                classes.push(label.clone());
                classes.len() - 1
            }
        };
        class_of.push(index as u32);
    }
    (classes, class_of)
}

/// The head to start from: seeded, with a base head's weights where they fit (its hidden
/// layer, and its output rows for the classes it knew).
fn initial_head(
    config: HeadConfig,
    params: &EncoderParams,
    varmap: &VarMap,
    device: &Device,
    base: Option<&BaseHead>,
) -> Result<Head> {
    let mut start = HashMap::new();
    if let Some(base) = base
        && base.config.input == config.input
        && base.config.hidden == config.hidden
    {
        let fresh = Head::trainable(config, params.seed, &VarMap::new(), device, &HashMap::new())?;
        let fresh: HashMap<String, Tensor> = fresh.tensors().into_iter().collect();
        for (name, tensor) in &base.tensors {
            if name.starts_with("fc1") {
                start.insert(name.clone(), tensor.clone());
            }
        }
        let known = base.classes.len();
        for name in ["out.weight", "out.bias"] {
            let (Some(old), Some(new)) = (base.tensors.get(name), fresh.get(name)) else {
                continue;
            };
            let old = old.to_device(device)?;
            let rest = new.narrow(0, known, config.classes - known)?;
            start.insert(name.to_string(), Tensor::cat(&[&old, &rest], 0)?);
        }
    }
    Head::trainable(config, params.seed, varmap, device, &start)
}

fn adamw(varmap: &VarMap, lr: f64, weight_decay: f64) -> Result<AdamW> {
    Ok(AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr,
            weight_decay,
            ..ParamsAdamW::default()
        },
    )?)
}

/// Sums of a step's loss (times its size) and correct predictions, kept on the device.
struct DeviceSums {
    loss: Tensor,
    correct: Tensor,
}

impl DeviceSums {
    fn new(device: &Device) -> Result<Self> {
        Ok(Self {
            loss: Tensor::zeros((), DType::F32, device)?,
            correct: Tensor::zeros((), DType::F32, device)?,
        })
    }

    fn add(&mut self, loss: &Tensor, logits: &Tensor, targets: &Tensor) -> Result<()> {
        let n = targets.dim(0)? as f64;
        self.loss = (&self.loss + (loss.detach() * n)?)?;
        let hits = logits
            .detach()
            .argmax(D::Minus1)?
            .eq(targets)?
            .to_dtype(DType::F32)?
            .sum_all()?;
        self.correct = (&self.correct + hits)?;
        Ok(())
    }

    /// The epoch's report from its sums over `n` examples (one read from the device); a loss
    /// that is not finite ends training.
    fn report(
        &self,
        epoch: usize,
        n: usize,
        train_seconds: f64,
        lr: f64,
        val_accuracy: f64,
        started: Instant,
    ) -> Result<EpochReport> {
        let (loss, accuracy) = self.read(n)?;
        if !loss.is_finite() {
            return Err(Error::Diverged(format!("loss is {loss}")));
        }
        Ok(EpochReport {
            epoch,
            loss,
            accuracy,
            val_accuracy,
            examples_per_sec: n as f64 / train_seconds.max(1e-9),
            lr,
            train_seconds,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Mean loss and accuracy over `n` examples (one read from the device).
    fn read(&self, n: usize) -> Result<(f64, f64)> {
        let both = Tensor::stack(&[&self.loss, &self.correct], 0)?.to_vec1::<f32>()?;
        let n = n.max(1) as f64;
        Ok((f64::from(both[0]) / n, f64::from(both[1]) / n))
    }
}

fn accuracy(head: &Head, embeddings: &Tensor, targets: &Tensor) -> Result<f64> {
    let n = targets.dim(0)?;
    if n == 0 {
        return Ok(0.0);
    }
    let hits = head
        .forward(embeddings)?
        .argmax(D::Minus1)?
        .eq(targets)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(f64::from(hits) / n as f64)
}

fn targets(indices: &[usize], data: &Dataset, class_of: &[u32], device: &Device) -> Result<Tensor> {
    let values: Vec<u32> = indices
        .iter()
        .map(|&i| class_of[data.examples[i].label])
        .collect();
    Ok(Tensor::from_vec(values, indices.len(), device)?)
}

fn rows(embeddings: &Tensor, indices: &[usize]) -> Result<Tensor> {
    let device = embeddings.device();
    let ids: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    Ok(embeddings.index_select(&Tensor::from_vec(ids, indices.len(), device)?, 0)?)
}

/// Trains a head on `embeddings` (one row per example of `data`, in order).
pub fn train_head(
    data: &Dataset,
    embeddings: &Tensor,
    params: &EncoderParams,
    base: Option<&BaseHead>,
    on_epoch: &mut dyn FnMut(&EpochReport) -> Result<()>,
) -> Result<EncoderTrained> {
    let device = embeddings.device().clone();
    let (rows_total, width) = embeddings.dims2()?;
    if rows_total != data.examples.len() {
        return Err(Error::Dataset(format!(
            "{rows_total} embeddings for {} examples",
            data.examples.len()
        )));
    }
    let [test, validation, train] = data.split_indices(params.seed)?;
    let (classes, class_of) = classes_for(data, base);
    let config = HeadConfig {
        input: width,
        hidden: params.hidden,
        classes: classes.len(),
    };
    let varmap = VarMap::new();
    let head = initial_head(config, params, &varmap, &device, base)?;
    let mut optimizer = adamw(&varmap, params.lr, params.weight_decay)?;
    let (x_train, y_train) = (
        rows(embeddings, &train)?,
        targets(&train, data, &class_of, &device)?,
    );
    let (x_val, y_val) = (
        rows(embeddings, &validation)?,
        targets(&validation, data, &class_of, &device)?,
    );
    tracing::info!(
        train = train.len(),
        validation = validation.len(),
        test = test.len(),
        classes = classes.len(),
        "head training starts"
    );
    let mut shuffle = SplitMix64::new(params.seed, Stream::Shuffle);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut epochs = Vec::new();
    for epoch in 1..=params.epochs {
        let started = Instant::now();
        shuffle.shuffle(&mut order);
        let mut sums = DeviceSums::new(&device)?;
        for batch in order.chunks(params.batch_size) {
            let (x, y) = (rows(&x_train, batch)?, rows(&y_train, batch)?);
            let logits = head.forward(&x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            optimizer.backward_step(&loss)?;
            sums.add(&loss, &logits, &y)?;
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let report = sums.report(
            epoch,
            train.len(),
            train_seconds,
            params.lr,
            accuracy(&head, &x_val, &y_val)?,
            started,
        )?;
        on_epoch(&report)?;
        epochs.push(report);
    }
    let test_accuracy = accuracy(
        &head,
        &rows(embeddings, &test)?,
        &targets(&test, data, &class_of, &device)?,
    )?;
    Ok(EncoderTrained {
        head,
        classes,
        epochs,
        test_accuracy,
        split_sizes: [train.len(), validation.len(), test.len()],
        encoder_weights: None,
    })
}

/// Trains the encoder (its weights in `encoder_vars`) and a head together. `on_step(epoch,
/// examples done, examples in the epoch)` follows the progress within an epoch.
pub fn train_full(
    data: &Dataset,
    encoder: &Encoder,
    encoder_vars: VarMap,
    params: &EncoderParams,
    base: Option<&BaseHead>,
    on_epoch: &mut dyn FnMut(&EpochReport) -> Result<()>,
    on_step: &mut dyn FnMut(usize, usize, usize),
) -> Result<EncoderTrained> {
    let device = encoder.device().clone();
    let [test, validation, train] = data.split_indices(params.seed)?;
    let (classes, class_of) = classes_for(data, base);
    let config = HeadConfig {
        input: encoder.hidden_size(),
        hidden: params.hidden,
        classes: classes.len(),
    };
    let head_vars = VarMap::new();
    let head = initial_head(config, params, &head_vars, &device, base)?;
    let mut head_optimizer = adamw(&head_vars, params.lr, params.weight_decay)?;
    let mut encoder_optimizer = adamw(&encoder_vars, params.encoder_lr, params.weight_decay)?;
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let tokens: Vec<TokenIds> = encoder.tokenize(&texts)?;
    let pick = |indices: &[usize]| -> Vec<TokenIds> {
        indices.iter().map(|&i| tokens[i].clone()).collect()
    };
    let (val_tokens, y_val) = (
        pick(&validation),
        targets(&validation, data, &class_of, &device)?,
    );
    let y_train = targets(&train, data, &class_of, &device)?;
    tracing::info!(
        train = train.len(),
        validation = validation.len(),
        test = test.len(),
        classes = classes.len(),
        "full fine-tuning starts"
    );
    let evaluate = |head: &Head, tokens: &[TokenIds], y: &Tensor| -> Result<f64> {
        let embeddings = encoder.embed_tokens(tokens, params.encode_batch, &mut |_, _| {})?;
        accuracy(head, &embeddings, y)
    };
    let mut shuffle = SplitMix64::new(params.seed, Stream::Shuffle);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut epochs = Vec::new();
    for epoch in 1..=params.epochs {
        let started = Instant::now();
        shuffle.shuffle(&mut order);
        let mut sums = DeviceSums::new(&device)?;
        let mut done = 0;
        for batch in order.chunks(params.batch_size) {
            let sentences: Vec<&[u32]> =
                batch.iter().map(|&k| tokens[train[k]].as_slice()).collect();
            let y = rows(&y_train, batch)?;
            let logits = head.forward(&encoder.forward(&sentences)?)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let grads = loss.backward()?;
            encoder_optimizer.step(&grads)?;
            head_optimizer.step(&grads)?;
            sums.add(&loss, &logits, &y)?;
            done += batch.len();
            on_step(epoch, done, train.len());
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let report = sums.report(
            epoch,
            train.len(),
            train_seconds,
            params.encoder_lr,
            evaluate(&head, &val_tokens, &y_val)?,
            started,
        )?;
        on_epoch(&report)?;
        epochs.push(report);
    }
    let test_accuracy = evaluate(
        &head,
        &pick(&test),
        &targets(&test, data, &class_of, &device)?,
    )?;
    Ok(EncoderTrained {
        head,
        classes,
        epochs,
        test_accuracy,
        split_sizes: [train.len(), validation.len(), test.len()],
        encoder_weights: Some(encoder_vars),
    })
}

/// Runs `steps` steps of full fine-tuning on the training split (batches in a seeded order,
/// wrapping around) and returns each step's loss: a device-independent loss curve, for
/// comparing a GPU run with a CPU run from the same seed. Reads the loss every step.
pub fn loss_curve(
    data: &Dataset,
    encoder: &Encoder,
    encoder_vars: &VarMap,
    params: &EncoderParams,
    steps: usize,
) -> Result<Vec<f32>> {
    let device = encoder.device().clone();
    let [_, _, train] = data.split_indices(params.seed)?;
    let (classes, class_of) = classes_for(data, None);
    let config = HeadConfig {
        input: encoder.hidden_size(),
        hidden: params.hidden,
        classes: classes.len(),
    };
    let head_vars = VarMap::new();
    let head = initial_head(config, params, &head_vars, &device, None)?;
    let mut head_optimizer = adamw(&head_vars, params.lr, params.weight_decay)?;
    let mut encoder_optimizer = adamw(encoder_vars, params.encoder_lr, params.weight_decay)?;
    let texts: Vec<&str> = train
        .iter()
        .map(|&i| data.examples[i].text.as_str())
        .collect();
    let tokens = encoder.tokenize(&texts)?;
    let y_train = targets(&train, data, &class_of, &device)?;
    let mut shuffle = SplitMix64::new(params.seed, Stream::Shuffle);
    let mut order: Vec<usize> = (0..train.len()).collect();
    shuffle.shuffle(&mut order);
    let batches: Vec<&[usize]> = order.chunks(params.batch_size).collect();
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let batch = batches[step % batches.len()];
        let sentences: Vec<&[u32]> = batch.iter().map(|&k| tokens[k].as_slice()).collect();
        let y = rows(&y_train, batch)?;
        let logits = head.forward(&encoder.forward(&sentences)?)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let grads = loss.backward()?;
        encoder_optimizer.step(&grads)?;
        head_optimizer.step(&grads)?;
        losses.push(loss.to_scalar::<f32>()?);
    }
    Ok(losses)
}
