//! Hyperparameters of the encoder algorithm, from the job's environment like every algorithm's
//! (`FINETUNE=head`, `EPOCHS=30`, …). Unknown keys are ignored; a bad value names its key.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::{count, positive};

/// What training changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    /// The encoder frozen, its embeddings computed once (and cached); only the head trains.
    #[default]
    Head,
    /// Every weight of the encoder trains too (on CUDA when the job has a GPU).
    Full,
}

impl std::str::FromStr for Finetune {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "head" => Ok(Self::Head),
            "full" => Ok(Self::Full),
            other => Err(Error::parameter(
                "FINETUNE",
                format!("{other:?} is not head or full"),
            )),
        }
    }
}

/// The encoder algorithm's hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderParams {
    /// `FINETUNE`: `head` (default) or `full`.
    pub finetune: Finetune,
    /// `EPOCHS`: passes over the training split (default 40 for `head`, 3 for `full`).
    pub epochs: usize,
    /// `LR`: the head's AdamW learning rate (default 0.005).
    pub lr: f64,
    /// `ENCODER_LR`: the encoder's AdamW learning rate in `full` mode (default 0.00005).
    pub encoder_lr: f64,
    /// `BATCH_SIZE`: examples per step (default 64 for `head`, 32 for `full`).
    pub batch_size: usize,
    /// `HIDDEN`: width of the head's hidden layer; 0 (default) is a linear head.
    pub hidden: usize,
    /// `WEIGHT_DECAY`: AdamW's decoupled weight decay (default 0.0001).
    pub weight_decay: f64,
    /// `SEED`: the split, the head's initial weights and the shuffles (default 42).
    pub seed: u64,
    /// `ENCODE_BATCH`: sentences per batch when computing embeddings (default 64).
    pub encode_batch: usize,
}

impl EncoderParams {
    /// The defaults of `finetune`.
    pub fn defaults(finetune: Finetune) -> Self {
        match finetune {
            Finetune::Head => Self {
                finetune,
                epochs: 40,
                lr: 0.005,
                encoder_lr: 5e-5,
                batch_size: 64,
                hidden: 0,
                weight_decay: 1e-4,
                seed: 42,
                encode_batch: 64,
            },
            Finetune::Full => Self {
                finetune,
                epochs: 3,
                lr: 0.005,
                encoder_lr: 5e-5,
                batch_size: 32,
                hidden: 0,
                weight_decay: 1e-4,
                seed: 42,
                encode_batch: 64,
            },
        }
    }

    /// Reads the parameters present in `env`; missing ones keep the defaults of the chosen
    /// `FINETUNE` mode.
    pub fn from_map(env: &HashMap<String, String>) -> Result<Self> {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let finetune = match get("FINETUNE") {
            Some(v) => v.parse()?,
            None => Finetune::Head,
        };
        let mut params = Self::defaults(finetune);
        if let Some(v) = get("EPOCHS") {
            params.epochs = count("EPOCHS", v, 1, 100_000)?;
        }
        if let Some(v) = get("LR") {
            params.lr = positive("LR", v)?;
        }
        if let Some(v) = get("ENCODER_LR") {
            params.encoder_lr = positive("ENCODER_LR", v)?;
        }
        if let Some(v) = get("BATCH_SIZE") {
            params.batch_size = count("BATCH_SIZE", v, 1, 1 << 16)?;
        }
        if let Some(v) = get("HIDDEN") {
            params.hidden = count("HIDDEN", v, 0, 1 << 14)?;
        }
        if let Some(v) = get("WEIGHT_DECAY") {
            params.weight_decay = v
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| {
                    Error::parameter("WEIGHT_DECAY", format!("{v:?} is not a number ≥ 0"))
                })?;
        }
        if let Some(v) = get("SEED") {
            params.seed = v.parse().map_err(|_| {
                Error::parameter("SEED", format!("{v:?} is not an unsigned integer"))
            })?;
        }
        if let Some(v) = get("ENCODE_BATCH") {
            params.encode_batch = count("ENCODE_BATCH", v, 1, 4096)?;
        }
        Ok(params)
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
    fn defaults_follow_the_mode() {
        let head = EncoderParams::from_map(&map(&[])).expect("parses");
        assert_eq!(head, EncoderParams::defaults(Finetune::Head));
        let full = EncoderParams::from_map(&map(&[("FINETUNE", "Full"), ("EPOCHS", "2")]))
            .expect("parses");
        assert_eq!(full.finetune, Finetune::Full);
        assert_eq!(full.epochs, 2);
        assert_eq!(full.batch_size, 32);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (name, value) in [
            ("FINETUNE", "all"),
            ("EPOCHS", "0"),
            ("LR", "-1"),
            ("ENCODER_LR", "x"),
            ("HIDDEN", "1.5"),
            ("WEIGHT_DECAY", "-0.1"),
        ] {
            let err = EncoderParams::from_map(&map(&[(name, value)])).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
