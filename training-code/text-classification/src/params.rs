//! Training parameters as MiniAutoML passes them: environment entries with upper-case names
//! and string values (`EPOCHS=15`, `LR=4`, `BATCH_SIZE=64`, `FC_SIZE=128`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optim::OptimizerKind;

/// Hyperparameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// Passes over the training split (`EPOCHS`, default 15).
    pub epochs: usize,
    /// Initial learning rate (`LR`, default 4 for SGD, 0.001 for AdamW; fractional accepted).
    pub lr: f64,
    /// Examples per step (`BATCH_SIZE`, default 64).
    pub batch_size: usize,
    /// Hidden layer width (`FC_SIZE`, default 128).
    pub fc_size: usize,
    /// Embedding width (`EMBED_DIM`, default 64).
    pub embed_dim: usize,
    /// Seed of the split, the initial weights and the shuffles (`SEED`, default 42).
    pub seed: u64,
    /// Update rule (`OPTIMIZER`, `sgd` or `adamw`, default `sgd`).
    pub optimizer: OptimizerKind,
    /// Gradients are scaled down to at most this global L2 norm (`CLIP_NORM`, default 0.1).
    pub clip_norm: f64,
    /// Factor applied to the learning rate after an epoch whose validation accuracy is not
    /// above the best so far (`LR_DECAY`, default 0.1).
    pub lr_decay: f64,
}

impl Default for TrainParams {
    fn default() -> Self {
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
        }
    }
}

impl TrainParams {
    /// Reads the parameters present in `env` (other keys are ignored); missing ones keep their
    /// defaults. Values are trimmed; integers may be written as `15` or `15.0`.
    pub fn from_map(env: &HashMap<String, String>) -> Result<Self> {
        let mut params = Self::default();
        if let Some(value) = env.get("OPTIMIZER") {
            params.optimizer = value.parse()?;
            if params.optimizer == OptimizerKind::AdamW {
                params.lr = 0.001;
            }
        }
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
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
        Ok(params)
    }
}

fn count(name: &str, value: &str, min: usize, max: usize) -> Result<usize> {
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

fn positive(name: &str, value: &str) -> Result<f64> {
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
        assert_eq!(
            TrainParams::from_map(&env).expect("parses"),
            TrainParams::default()
        );
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
        assert_eq!(adamw.lr, 0.001);
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
        ] {
            let err = TrainParams::from_map(&map(&[(name, value)])).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
