//! Fine-tuning: training that starts from a trained model instead of random weights.
//!
//! The base model's vocabulary is extended with the new training split's unknown tokens (existing
//! ids keep their rows, new rows are initialized like a fresh model's), and labels the base model
//! does not know get new output rows. The model sizes and the features (`NGRAMS`) are the base
//! model's.

use candle_core::DType;

use crate::artifact::Artifact;
use crate::error::Result;
use crate::model::{Dense, Model};
use crate::params::TrainParams;
use crate::rng::{SplitMix64, Stream};
use crate::tokenizer::Vocab;

/// A trained model to continue from.
#[derive(Debug, Clone)]
pub struct BaseModel {
    /// Its weights.
    pub model: Model,
    /// Its vocabulary.
    pub vocab: Vocab,
    /// Its label names in class order.
    pub classes: Vec<String>,
}

impl From<Artifact> for BaseModel {
    fn from(artifact: Artifact) -> Self {
        Self {
            model: artifact.model,
            vocab: artifact.vocab,
            classes: artifact.manifest.classes,
        }
    }
}

impl BaseModel {
    /// The base model grown to cover `texts`' tokens and `labels`.
    pub(crate) fn extend<'a>(
        self,
        texts: impl IntoIterator<Item = &'a str>,
        labels: &[String],
        params: &TrainParams,
    ) -> Result<(Model, Vocab, Vec<String>)> {
        let Self {
            mut model,
            mut vocab,
            mut classes,
        } = self;
        if model.config.embed_dim != params.embed_dim || model.config.fc_size != params.fc_size {
            tracing::warn!(
                embed_dim = model.config.embed_dim,
                fc_size = model.config.fc_size,
                "fine-tuning keeps the base model's sizes"
            );
        }
        if vocab.ngrams() != params.ngrams {
            tracing::warn!(
                ngrams = vocab.ngrams(),
                "fine-tuning keeps the base model's features"
            );
        }
        let mut rng = SplitMix64::new(params.seed, Stream::Init);
        let added_tokens = vocab.extend(texts);
        model.embedding.grow(added_tokens, &mut rng);
        model.config.vocab_size = vocab.len();
        let before = classes.len();
        for label in labels {
            if !classes.contains(label) {
                classes.push(label.clone());
            }
        }
        if classes.len() > before {
            grow_output(&mut model, classes.len() - before, &mut rng)?;
        }
        tracing::info!(
            added_tokens,
            added_classes = classes.len() - before,
            "fine-tuning from a base model"
        );
        Ok((model, vocab, classes))
    }
}

/// Appends `count` output classes to the last layer.
fn grow_output(model: &mut Model, count: usize, rng: &mut SplitMix64) -> Result<()> {
    let inputs = model.config.fc_size;
    let bound = 1.0 / (inputs as f32).sqrt();
    let last = &model.layers[2];
    let mut weight: Vec<f32> = last
        .weight
        .as_tensor()
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    let mut bias: Vec<f32> = last.bias.as_tensor().to_dtype(DType::F32)?.to_vec1()?;
    weight.extend((0..count * inputs).map(|_| rng.uniform(-bound, bound)));
    bias.extend((0..count).map(|_| rng.uniform(-bound, bound)));
    model.config.num_classes += count;
    model.layers[2] = Dense::from_vecs(
        weight,
        bias,
        inputs,
        model.config.num_classes,
        &model.device,
    )?;
    Ok(())
}
