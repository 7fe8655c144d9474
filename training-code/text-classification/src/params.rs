//! Training parameters as MiniAutoML passes them: environment entries with upper-case names
//! and string values (`EPOCHS=15`, `LR=4`, `BATCH_SIZE=64`, `FC_SIZE=128`).
//!
//! Two sets of defaults: a run that names neither `OPTIMIZER` nor `LR` gets the tuned ones
//! ([`TrainParams::default`]: AdamW, word pairs as features); a run that sets `LR` without
//! `OPTIMIZER`, or sets `OPTIMIZER=sgd`, gets MiniAutoML's SGD ones ([`TrainParams::sgd`]), so
//! its lab's `EPOCHS=15 LR=4 BATCH_SIZE=64 FC_SIZE=128` trains exactly the model it always did.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optim::OptimizerKind;
use crate::tokenizer::MAX_NGRAMS;

/// Hyperparameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// Passes over the training split (`EPOCHS`, default 20; 15 with the SGD defaults).
    pub epochs: usize,
    /// Initial learning rate (`LR`, default 4 for SGD, 0.005 for AdamW; fractional accepted).
    pub lr: f64,
    /// Examples per step (`BATCH_SIZE`, default 64).
    pub batch_size: usize,
    /// Hidden layer width (`FC_SIZE`, default 128).
    pub fc_size: usize,
    /// Embedding width (`EMBED_DIM`, default 64).
    pub embed_dim: usize,
    /// Seed of the split, the initial weights and the shuffles (`SEED`, default 42).
    pub seed: u64,
    /// Update rule (`OPTIMIZER`, `sgd` or `adamw`, default `adamw`; `sgd` when only `LR` is
    /// given).
    pub optimizer: OptimizerKind,
    /// Gradients are scaled down to at most this global L2 norm (`CLIP_NORM`, default 0.1).
    pub clip_norm: f64,
    /// Factor applied to the learning rate after an epoch whose validation accuracy is not
    /// above the best so far (`LR_DECAY`, default 0.5; 0.1 with the SGD defaults).
    pub lr_decay: f64,
    /// Longest n-grams in the vocabulary (`NGRAMS`, 1: words, 2: words and adjacent pairs;
    /// default 2, 1 with the SGD defaults and in manifests written before the option existed).
    #[serde(default = "unigrams")]
    pub ngrams: usize,
    /// Probability that a feature is left out of a training example's bag at each step
    /// (`WORD_DROPOUT`, in [0, 1); default 0.4, 0 with the SGD defaults and in manifests written
    /// before the option existed).
    #[serde(default)]
    pub word_dropout: f64,
}

fn unigrams() -> usize {
    1
}

/// The tuned defaults: what a run without `OPTIMIZER` and `LR` trains with. Measured on the
/// CLINC intents (train on one half, in-scope accuracy on the other): SGD's defaults reach about
/// 0.60, AdamW alone 0.83, with word pairs and word dropout about 0.85, in seconds on two cores.
impl Default for TrainParams {
    fn default() -> Self {
        Self {
            epochs: 20,
            lr: 0.005,
            optimizer: OptimizerKind::AdamW,
            lr_decay: 0.5,
            ngrams: 2,
            word_dropout: 0.4,
            ..Self::sgd()
        }
    }
}

impl TrainParams {
    /// MiniAutoML's defaults (SGD, `LR=4`, words only): what a run that sets `LR` without
    /// `OPTIMIZER`, or sets `OPTIMIZER=sgd`, starts from.
    pub fn sgd() -> Self {
        Self {
            epochs: 15,
            lr: 4.0,
            batch_size: 64,
            fc_size: 128,
            embed_dim: 64,
            seed: 42,
            optimizer: OptimizerKind::Sgd,
            clip_norm: 0.1,
            lr_decay: 0.1,
            ngrams: 1,
            word_dropout: 0.0,
        }
    }

    /// Reads the parameters present in `env` (other keys are ignored); missing ones keep the
    /// defaults chosen by `OPTIMIZER` and `LR` (see the module's documentation). Values are
    /// trimmed; integers may be written as `15` or `15.0`.
    pub fn from_map(env: &HashMap<String, String>) -> Result<Self> {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let optimizer = get("OPTIMIZER")
            .map(str::parse::<OptimizerKind>)
            .transpose()?;
        let mut params = match (optimizer, get("LR")) {
            (Some(OptimizerKind::Sgd), _) | (None, Some(_)) => Self::sgd(),
            (Some(OptimizerKind::AdamW), _) | (None, None) => Self::default(),
        };
        if let Some(v) = get("EPOCHS") {
            params.epochs = count("EPOCHS", v, 0, 100_000)?;
        }
        if let Some(v) = get("LR") {
            params.lr = positive("LR", v)?;
        }
        if let Some(v) = get("BATCH_SIZE") {
            params.batch_size = count("BATCH_SIZE", v, 1, 1 << 20)?;
        }
        if let Some(v) = get("FC_SIZE") {
            params.fc_size = count("FC_SIZE", v, 1, 1 << 16)?;
        }
        if let Some(v) = get("EMBED_DIM") {
            params.embed_dim = count("EMBED_DIM", v, 1, 1 << 14)?;
        }
        if let Some(v) = get("SEED") {
            params.seed = v.parse().map_err(|_| {
                Error::parameter("SEED", format!("{v:?} is not an unsigned integer"))
            })?;
        }
        if let Some(v) = get("CLIP_NORM") {
            params.clip_norm = positive("CLIP_NORM", v)?;
        }
        if let Some(v) = get("LR_DECAY") {
            params.lr_decay = positive("LR_DECAY", v)?;
            if params.lr_decay > 1.0 {
                return Err(Error::parameter("LR_DECAY", "must be at most 1"));
            }
        }
        if let Some(v) = get("WORD_DROPOUT") {
            params.word_dropout = fraction("WORD_DROPOUT", v)?;
        }
        if let Some(v) = get("NGRAMS") {
            params.ngrams = count("NGRAMS", v, 1, MAX_NGRAMS)?;
        }
        Ok(params)
    }
}

/// A whole number in `min..=max` (`15` or `15.0`), or an error naming the parameter.
pub(crate) fn count(name: &str, value: &str, min: usize, max: usize) -> Result<usize> {
    let number: f64 = value
        .parse()
        .map_err(|_| Error::parameter(name, format!("{value:?} is not a number")))?;
    if number.fract() != 0.0 || number < min as f64 || number > max as f64 {
        return Err(Error::parameter(
            name,
            format!("{value} is not a whole number in {min}..={max}"),
        ));
    }
    Ok(number as usize)
}

fn fraction(name: &str, value: &str) -> Result<f64> {
    match value.parse::<f64>() {
        Ok(number) if (0.0..1.0).contains(&number) => Ok(number),
        _ => Err(Error::parameter(
            name,
            format!("{value:?} is not a number in [0, 1)"),
        )),
    }
}

/// A finite number above 0, or an error naming the parameter.
pub(crate) fn positive(name: &str, value: &str) -> Result<f64> {
    match value.parse::<f64>() {
        Ok(number) if number.is_finite() && number > 0.0 => Ok(number),
        _ => Err(Error::parameter(
            name,
            format!("{value:?} is not a positive number"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn miniautoml_values_work_as_they_are() {
        let env = map(&[
            ("EPOCHS", "15"),
            ("LR", "4"),
            ("BATCH_SIZE", "64"),
            ("FC_SIZE", "128"),
            ("JOB_ID", "7"),
        ]);
        let params = TrainParams::from_map(&env).expect("parses");
        assert_eq!(params, TrainParams::sgd());
        assert_eq!(params.optimizer, OptimizerKind::Sgd);
        assert_eq!(params.lr, 4.0);
        assert_eq!(params.epochs, 15);
        assert_eq!((params.batch_size, params.fc_size), (64, 128));
        assert_eq!(params.ngrams, 1);
        assert_eq!(params.word_dropout, 0.0);
    }

    #[test]
    fn no_optimizer_and_no_lr_gets_the_tuned_defaults() {
        let params = TrainParams::from_map(&map(&[("JOB_ID", "7")])).expect("parses");
        assert_eq!(params, TrainParams::default());
        assert_eq!(params.optimizer, OptimizerKind::AdamW);
        assert_eq!(params.ngrams, 2);
        let sgd = TrainParams::from_map(&map(&[("OPTIMIZER", "sgd")])).expect("parses");
        assert_eq!(sgd, TrainParams::sgd());
        let words = TrainParams::from_map(&map(&[("NGRAMS", "1")])).expect("parses");
        assert_eq!(words.optimizer, OptimizerKind::AdamW);
        assert_eq!(words.ngrams, 1);
    }

    #[test]
    fn manifests_without_the_newer_fields_read_as_before() {
        let mut json = serde_json::to_value(TrainParams::default()).expect("json");
        let fields = json.as_object_mut().expect("object");
        fields.remove("ngrams");
        fields.remove("word_dropout");
        let old: TrainParams = serde_json::from_value(json).expect("parses");
        assert_eq!((old.ngrams, old.word_dropout), (1, 0.0));
    }

    #[test]
    fn fractional_lr_and_options() {
        let env = map(&[
            ("LR", "0.05"),
            ("EPOCHS", "3.0"),
            ("OPTIMIZER", "AdamW"),
            ("SEED", "9"),
            ("EMBED_DIM", "16"),
        ]);
        let params = TrainParams::from_map(&env).expect("parses");
        assert_eq!(params.lr, 0.05);
        assert_eq!(params.epochs, 3);
        assert_eq!(params.optimizer, OptimizerKind::AdamW);
        assert_eq!(params.seed, 9);
        assert_eq!(params.embed_dim, 16);
        let adamw = TrainParams::from_map(&map(&[("OPTIMIZER", "adamw")])).expect("parses");
        assert_eq!(adamw, TrainParams::default());
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (name, value) in [
            ("LR", "-1"),
            ("LR", "fast"),
            ("EPOCHS", "2.5"),
            ("BATCH_SIZE", "0"),
            ("SEED", "-3"),
            ("OPTIMIZER", "adam"),
            ("LR_DECAY", "2"),
            ("NGRAMS", "3"),
            ("NGRAMS", "0"),
            ("WORD_DROPOUT", "1"),
        ] {
            let err = TrainParams::from_map(&map(&[(name, value)])).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
