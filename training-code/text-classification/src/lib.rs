//! The intent classifier shared by the trainer (`automl-train`) and prediction-service, so that
//! training and serving use one tokenizer, one model definition and one artifact format.
//!
//! - [`tokenizer`]: lowercase word-level tokenization and the vocabulary (`vocab.json`).
//! - [`data`]: the snapshot files (`examples.csv`, `labels.csv`) and the seeded split, read by
//!   the CSV reader data-management's ingest uses (`automl_common::csv`).
//! - [`model`]: mean-pooled embedding bag → Linear → ReLU → Linear → ReLU → Linear, on candle.
//! - [`backprop`]: the head's gradients, written out (cheaper than a general autograd graph).
//! - [`host_train`]: the same training step on host arrays, what the CPU runs;
//!   [`kernel`]: its matrix products.
//! - [`optim`]: SGD and AdamW with a row-sparse embedding update; [`params`]: the
//!   hyperparameters as MiniAutoML passes them (`EPOCHS`, `LR`, …).
//! - [`train`]: the training loop; [`finetune`]: starting from a trained model.
//! - [`artifact`]: `model.safetensors`, `vocab.json`, `manifest.json`.
//! - [`inference`]: [`Classifier`], loaded from an artifact directory, predicting labels with
//!   scores (blocking calls).
//! - [`device`]: CPU, or CUDA with the `cuda` feature.
//! - [`rng`]: the seeded generator behind splits, shuffles and initial weights.
//! - [`demo`]: a small generated dataset for demos and tests.
//! - [`encoder`]: the second algorithm, `intent-classification-encoder`: a pretrained sentence
//!   encoder (all-MiniLM-L6-v2 on candle-transformers' BERT) with a classification head.
//! - [`pretrained`]: pretrained models as objects in the models bucket, imported once.
//! - [`serving`]: either kind of model behind one interface.
//! - [`program`]: the training program (`automl-train`, `automl trainer`).

pub mod artifact;
pub mod backprop;
pub mod data;
pub mod declare;
pub mod demo;
pub mod device;
pub mod encoder;
pub mod error;
pub mod finetune;
pub mod host_train;
pub mod inference;
pub mod kernel;
pub mod model;
pub mod optim;
pub mod params;
pub mod pretrained;
pub mod program;
pub mod rng;
pub mod serving;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use inference::{Classifier, LabelScore, Prediction};

/// The framework recorded in manifests.
pub const FRAMEWORK: &str = "candle 0.11.1";
