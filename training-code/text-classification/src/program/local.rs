//! The local mode (train on files, write the artifact to a directory) and `evaluate`.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use automl_common::time::now_iso;
use std::sync::Arc;

use crate::Classifier;
use crate::artifact::{self, Lineage, Manifest};
use crate::data::Dataset;
use crate::encoder::{Encoder, EncoderClassifier};
use crate::finetune::BaseModel;
use crate::params::TrainParams;
use crate::serving::AnyClassifier;
use crate::train::EpochReport;
use candle_core::Device;

use super::{epoch_line, train_blocking};

/// Trains on `examples`/`labels` and writes the artifact into `out`.
pub fn train(
    examples: &Path,
    labels: &Path,
    out: &Path,
    base: Option<&Path>,
    params: &TrainParams,
    device: &Device,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let data = read_dataset(examples, labels)?;
    println!(
        "data {}: {} examples, {} labels",
        examples.display(),
        data.examples.len(),
        data.labels.len()
    );
    let (base, base_run_id) = match base {
        Some(dir) => {
            let loaded = artifact::load(dir, device)
                .with_context(|| format!("base model {}", dir.display()))?;
            let run_id = Some(loaded.manifest.lineage.run_id.clone()).filter(|id| !id.is_empty());
            (Some(BaseModel::from(loaded)), run_id)
        }
        None => (None, None),
    };
    let trained = train_blocking(&data, params, device, base, &mut |report| {
        println!("{}", epoch_line(report, params.epochs));
        true
    })?;
    print_summary(
        started,
        trained.test_accuracy,
        &trained.epochs,
        trained.split_sizes,
        trained.classes.len(),
        Some(trained.vocab.len()),
    );
    let lineage = Lineage {
        base_run_id,
        ..Lineage::default()
    };
    let code_version = format!("automl-train {}", env!("CARGO_PKG_VERSION"));
    let manifest = Manifest::describe(
        &trained,
        params,
        "intent-classification",
        &code_version,
        lineage,
        &now_iso(),
    );
    let files = artifact::encode(&trained.model, &trained.vocab, &manifest)?;
    artifact::save(out, &files)?;
    println!(
        "wrote {} in {:.2}s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints the test accuracy and the `summary {json}` line the benchmarks read.
pub(super) fn print_summary(
    started: Instant,
    test_accuracy: f64,
    epochs: &[EpochReport],
    split_sizes: [usize; 3],
    classes: usize,
    vocab: Option<usize>,
) {
    println!("test accuracy {test_accuracy:.4}");
    let train_seconds: f64 = epochs.iter().map(|r| r.train_seconds).sum();
    let mut summary = serde_json::json!({
        "train_examples": split_sizes[0],
        "validation_examples": split_sizes[1],
        "test_examples": split_sizes[2],
        "classes": classes,
        "test_accuracy": test_accuracy,
        "train_seconds": train_seconds,
        "wall_seconds": started.elapsed().as_secs_f64(),
        "examples_per_sec": (split_sizes[0] * epochs.len()) as f64 / train_seconds.max(1e-9),
    });
    if let Some(vocab) = vocab {
        summary["vocab"] = vocab.into();
    }
    println!("summary {summary}");
}

/// Prints one JSON line: accuracy on all rows and, with `exclude_label`, on the others.
pub fn evaluate(
    model: &Path,
    examples: &Path,
    labels: &Path,
    exclude_label: Option<&str>,
    encoder: Option<&Path>,
) -> anyhow::Result<()> {
    let classifier = load_any(model, encoder)?;
    let data = read_dataset(examples, labels)?;
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let started = Instant::now();
    let predictions = classifier.predict_batch(&texts, 1)?;
    let seconds = started.elapsed().as_secs_f64();
    let (mut total, mut correct, mut kept, mut kept_correct) = (0usize, 0usize, 0usize, 0usize);
    for (example, prediction) in data.examples.iter().zip(&predictions) {
        let truth = &data.labels[example.label];
        let hit = &prediction.label == truth;
        total += 1;
        correct += usize::from(hit);
        if exclude_label != Some(truth.as_str()) {
            kept += 1;
            kept_correct += usize::from(hit);
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let report = serde_json::json!({
        "examples": total,
        "accuracy": ratio(correct, total),
        "in_scope_examples": kept,
        "in_scope_accuracy": ratio(kept_correct, kept),
        "predictions_per_sec": total as f64 / seconds.max(1e-9),
    });
    println!("{report}");
    Ok(())
}

/// The model in `dir`, of either algorithm (encoder models need their pretrained encoder).
fn load_any(dir: &Path, encoder: Option<&Path>) -> anyhow::Result<AnyClassifier> {
    let manifest = std::fs::read(dir.join(crate::artifact::MANIFEST_FILE))
        .with_context(|| format!("model {}", dir.display()))?;
    if !crate::encoder::artifact::is_encoder_manifest(&manifest) {
        let model = Classifier::load(dir).with_context(|| format!("model {}", dir.display()))?;
        return Ok(model.into());
    }
    let pretrained = encoder.context("--encoder DIR is required by encoder models")?;
    let device = Device::Cpu;
    let own = EncoderClassifier::read_manifest(dir)?.own_encoder;
    let encoder = if own {
        EncoderClassifier::own_encoder(dir, pretrained, &device)?
    } else {
        Encoder::load(pretrained, None, &device)?
    };
    Ok(EncoderClassifier::load(dir, Arc::new(encoder))?.into())
}

pub(super) fn read_dataset(examples: &Path, labels: &Path) -> anyhow::Result<Dataset> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(Dataset::parse(&read(examples)?, &read(labels)?)?)
}
