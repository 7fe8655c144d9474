//! The parameters each built-in algorithm reads, declared for clients (training-service's
//! `ListAlgorithms`) and for hyperparameter search: name, kind, bounds or values, default and
//! one line of help. The tests check every declaration against the parsers that read the
//! parameters ([`crate::params::TrainParams::from_map`],
//! [`crate::encoder::params::EncoderParams::from_map`]), so the two cannot drift apart.

use crate::tokenizer::MAX_NGRAMS;

/// What values a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number (`15`; `15.0` is read as 15).
    Int,
    /// A real number.
    Double,
    /// One of [`Declared::values`].
    Categorical,
}

/// One parameter an algorithm reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// Its name, as a job parameter (an environment variable of the trainer).
    pub name: &'static str,
    /// What values it takes.
    pub kind: Kind,
    /// Lower bound (`Int`, `Double`).
    pub min: f64,
    /// Upper bound (`Int`, `Double`); infinite for none.
    pub max: f64,
    /// Whether `min` itself is refused.
    pub min_exclusive: bool,
    /// Whether `max` itself is refused.
    pub max_exclusive: bool,
    /// The values of a `Categorical` parameter.
    pub values: &'static [&'static str],
    /// The value a job that does not set it trains with.
    pub default: &'static str,
    /// One line of help (which other parameters change its default, when some do).
    pub help: &'static str,
}

const NONE: &[&str] = &[];

const fn int(
    name: &'static str,
    min: f64,
    max: f64,
    default: &'static str,
    help: &'static str,
) -> Declared {
    Declared {
        name,
        kind: Kind::Int,
        min,
        max,
        min_exclusive: false,
        max_exclusive: false,
        values: NONE,
        default,
        help,
    }
}

/// A real number above 0 (`min_exclusive`), unbounded above.
const fn positive(name: &'static str, default: &'static str, help: &'static str) -> Declared {
    Declared {
        name,
        kind: Kind::Double,
        min: 0.0,
        max: f64::INFINITY,
        min_exclusive: true,
        max_exclusive: false,
        values: NONE,
        default,
        help,
    }
}

const fn categorical(
    name: &'static str,
    values: &'static [&'static str],
    default: &'static str,
    help: &'static str,
) -> Declared {
    Declared {
        name,
        kind: Kind::Categorical,
        min: 0.0,
        max: 0.0,
        min_exclusive: false,
        max_exclusive: false,
        values,
        default,
        help,
    }
}

/// The largest seed (`u64::MAX`, as a double).
const MAX_SEED: f64 = u64::MAX as f64;

const DEVICE: Declared = categorical(
    "DEVICE",
    &["auto", "cpu", "cuda"],
    "auto",
    "where to train: the GPU when present (auto), the CPU, or the GPU or fail (cuda); cuda for jobs given GPUs",
);

/// The parameters of `intent-classification` (the embedding-bag classifier).
pub const BAG: &[Declared] = &[
    int(
        "EPOCHS",
        0.0,
        100_000.0,
        "20",
        "passes over the training split (15 with OPTIMIZER=sgd or LR alone)",
    ),
    positive(
        "LR",
        "0.005",
        "initial learning rate (4 with OPTIMIZER=sgd or LR alone)",
    ),
    categorical(
        "OPTIMIZER",
        &["adamw", "sgd"],
        "adamw",
        "update rule; sgd (MiniAutoML's) when LR is given without OPTIMIZER",
    ),
    int("BATCH_SIZE", 1.0, 1_048_576.0, "64", "examples per step"),
    int("FC_SIZE", 1.0, 65_536.0, "128", "hidden layer width"),
    int("EMBED_DIM", 1.0, 16_384.0, "64", "embedding width"),
    int(
        "SEED",
        0.0,
        MAX_SEED,
        "42",
        "seed of the split, the initial weights and the shuffles",
    ),
    positive(
        "CLIP_NORM",
        "0.1",
        "gradients are scaled down to at most this global L2 norm",
    ),
    Declared {
        max: 1.0,
        ..positive(
            "LR_DECAY",
            "0.5",
            "learning-rate factor after an epoch without a better validation accuracy (0.1 with SGD)",
        )
    },
    Declared {
        kind: Kind::Double,
        max: 1.0,
        max_exclusive: true,
        ..int(
            "WORD_DROPOUT",
            0.0,
            1.0,
            "0.4",
            "probability that a feature is left out of an example at each step (0 with SGD)",
        )
    },
    int(
        "NGRAMS",
        1.0,
        MAX_NGRAMS as f64,
        "2",
        "longest n-grams in the vocabulary: 1 words, 2 words and adjacent pairs (1 with SGD)",
    ),
    DEVICE,
];

/// The parameters of `intent-classification-encoder` (the sentence encoder with a head).
pub const ENCODER: &[Declared] = &[
    categorical(
        "FINETUNE",
        &["head", "full"],
        "head",
        "train the head on frozen embeddings, or every weight of the encoder too",
    ),
    int(
        "EPOCHS",
        1.0,
        100_000.0,
        "40",
        "passes over the training split (3 with FINETUNE=full)",
    ),
    positive("LR", "0.005", "the head's AdamW learning rate"),
    positive(
        "ENCODER_LR",
        "0.00005",
        "the encoder's AdamW learning rate (FINETUNE=full)",
    ),
    int(
        "BATCH_SIZE",
        1.0,
        65_536.0,
        "64",
        "examples per step (32 with FINETUNE=full)",
    ),
    int(
        "HIDDEN",
        0.0,
        16_384.0,
        "0",
        "width of the head's hidden layer; 0 is a linear head",
    ),
    Declared {
        min_exclusive: false,
        ..positive("WEIGHT_DECAY", "0.0001", "AdamW's decoupled weight decay")
    },
    int(
        "SEED",
        0.0,
        MAX_SEED,
        "42",
        "seed of the split, the head's initial weights and the shuffles",
    ),
    int(
        "ENCODE_BATCH",
        1.0,
        4096.0,
        "64",
        "sentences per batch when computing embeddings",
    ),
    DEVICE,
];

/// The parameters `algorithm` reads, as the built-in trainer does.
pub fn parameters(algorithm: &str) -> &'static [Declared] {
    if algorithm.trim() == crate::encoder::ALGORITHM {
        ENCODER
    } else {
        BAG
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::encoder::params::EncoderParams;
    use crate::params::TrainParams;
    use crate::program::check_parameters;

    fn accepts(algorithm: &str, name: &str, value: &str) -> bool {
        let parameters = HashMap::from([(name.to_string(), value.to_string())]);
        check_parameters(algorithm, &parameters).is_ok()
    }

    /// The parsed defaults as JSON, by lower-case parameter name.
    fn defaults(algorithm: &str) -> serde_json::Value {
        if algorithm == crate::encoder::ALGORITHM {
            serde_json::to_value(EncoderParams::from_map(&HashMap::new()).expect("defaults"))
        } else {
            serde_json::to_value(TrainParams::from_map(&HashMap::new()).expect("defaults"))
        }
        .expect("json")
    }

    #[test]
    fn every_declaration_matches_what_the_trainer_reads() {
        for algorithm in ["intent-classification", crate::encoder::ALGORITHM] {
            let parsed = defaults(algorithm);
            for p in parameters(algorithm) {
                let what = format!("{algorithm} {}", p.name);
                assert!(accepts(algorithm, p.name, p.default), "{what} default");
                if let Some(value) = parsed.get(p.name.to_lowercase()) {
                    let same = match value {
                        serde_json::Value::Number(n) => n.as_f64() == p.default.parse::<f64>().ok(),
                        serde_json::Value::String(s) => s.eq_ignore_ascii_case(p.default),
                        _ => false,
                    };
                    assert!(same, "{what}: declared {} but parsed {value}", p.default);
                }
                match p.kind {
                    Kind::Categorical => {
                        for value in p.values {
                            assert!(accepts(algorithm, p.name, value), "{what}={value}");
                        }
                        assert!(!accepts(algorithm, p.name, "nope"), "{what}=nope");
                    }
                    Kind::Int | Kind::Double => {
                        let step = if p.kind == Kind::Int { 1.0 } else { 1e-6 };
                        let min = format!("{}", p.min);
                        assert_eq!(
                            accepts(algorithm, p.name, &min),
                            !p.min_exclusive,
                            "{what} min"
                        );
                        let below = format!("{}", p.min - step);
                        assert!(!accepts(algorithm, p.name, &below), "{what} below min");
                        if p.max.is_finite() && p.max < 1e15 {
                            let max = format!("{}", p.max);
                            assert_eq!(
                                accepts(algorithm, p.name, &max),
                                !p.max_exclusive,
                                "{what} max"
                            );
                            let above = format!("{}", p.max + step);
                            assert!(!accepts(algorithm, p.name, &above), "{what} above max");
                        }
                        if p.kind == Kind::Int {
                            let half = format!("{}", p.min + 0.5);
                            assert!(!accepts(algorithm, p.name, &half), "{what} fractional");
                        }
                    }
                }
            }
        }
    }
}
