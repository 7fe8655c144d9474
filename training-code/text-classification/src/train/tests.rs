//! Tiny deterministic training runs on the generated demo data.

use std::collections::BTreeMap;

use candle_core::Device;

use crate::Classifier;
use crate::artifact::{self, Lineage, Manifest};
use crate::data::Dataset;
use crate::demo;
use crate::error::Result;
use crate::finetune::BaseModel;
use crate::optim::OptimizerKind;
use crate::params::TrainParams;
use crate::train::{EpochReport, Trained, train};

fn dataset() -> Dataset {
    let demo = demo::snapshot(40, 3);
    Dataset::parse(&demo.examples_csv, &demo.labels_csv).expect("demo data parses")
}

/// Small and quick: AdamW fits the demo data in a few epochs.
fn params() -> TrainParams {
    TrainParams {
        epochs: 6,
        lr: 0.01,
        batch_size: 16,
        fc_size: 32,
        embed_dim: 16,
        seed: 11,
        optimizer: OptimizerKind::AdamW,
        lr_decay: 0.5,
        word_dropout: 0.0,
        ..TrainParams::default()
    }
}

fn run(params: &TrainParams) -> Result<(Trained, Vec<EpochReport>)> {
    let mut seen = Vec::new();
    let trained = train(&dataset(), params, &Device::Cpu, None, &mut |report| {
        seen.push(report.clone());
        Ok(())
    })?;
    Ok((trained, seen))
}

fn manifest(trained: &Trained, params: &TrainParams) -> Manifest {
    Manifest::describe(
        trained,
        params,
        "intent-classification",
        "test",
        Lineage::default(),
        "2026-01-01T00:00:00.000Z",
    )
}

#[test]
fn loss_decreases_and_the_model_learns() -> Result<()> {
    let (trained, seen) = run(&params())?;
    assert_eq!(seen, trained.epochs);
    assert_eq!(seen.len(), 6);
    let first = seen.first().map(|r| r.loss).unwrap_or_default();
    let last = seen.last().map(|r| r.loss).unwrap_or_default();
    assert!(last < first * 0.5, "loss {first} -> {last}");
    assert!(
        trained.test_accuracy >= 0.9,
        "test accuracy {}",
        trained.test_accuracy
    );
    assert_eq!(trained.split_sizes, [171, 9, 20]);
    assert!(seen.iter().all(|r| r.examples_per_sec > 0.0));
    Ok(())
}

#[test]
fn same_seed_gives_identical_weights() -> Result<()> {
    let quick = TrainParams {
        epochs: 2,
        ..params()
    };
    let (a, _) = run(&quick)?;
    let (b, _) = run(&quick)?;
    assert_eq!(a.model.named_weights()?, b.model.named_weights()?);
    let metrics = |t: &Trained| -> Vec<(f64, f64, f64)> {
        t.epochs
            .iter()
            .map(|r| (r.loss, r.accuracy, r.val_accuracy))
            .collect()
    };
    assert_eq!(metrics(&a), metrics(&b));
    assert_eq!(a.test_accuracy, b.test_accuracy);
    let (c, _) = run(&TrainParams { seed: 12, ..quick })?;
    assert_ne!(a.model.named_weights()?, c.model.named_weights()?);
    Ok(())
}

#[test]
fn adamw_trains_too() -> Result<()> {
    let adamw = TrainParams {
        optimizer: OptimizerKind::AdamW,
        lr: 0.01,
        epochs: 4,
        word_dropout: 0.2,
        ..params()
    };
    let (trained, seen) = run(&adamw)?;
    assert!(seen[3].loss < seen[0].loss, "{seen:?}");
    assert!(
        trained.test_accuracy >= 0.8,
        "test accuracy {}",
        trained.test_accuracy
    );
    Ok(())
}

#[test]
fn the_defaults_learn_the_demo_data() -> Result<()> {
    let (trained, _) = run(&TrainParams::default())?;
    assert!(
        trained.test_accuracy >= 0.9,
        "test accuracy {}",
        trained.test_accuracy
    );
    Ok(())
}

#[test]
fn reloaded_artifact_predicts_exactly_like_the_trained_model() -> Result<()> {
    let params = params();
    let (trained, _) = run(&params)?;
    let manifest = manifest(&trained, &params);
    let files = artifact::encode(&trained.model, &trained.vocab, &manifest)?;
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io("tempdir", e))?;
    artifact::save(dir.path(), &files)?;
    let texts = [
        "what is the balance of my savings account",
        "wire money to my sister",
        "will it rain today",
        "wake me at 7.30",
        "play my playlist, loud!",
        "",
        "completely unknown words here",
    ];
    let fresh = Classifier::new(trained.model, trained.vocab, manifest.clone());
    let reloaded = Classifier::load(dir.path())?;
    assert_eq!(reloaded.classes(), manifest.classes);
    assert_eq!(reloaded.manifest().model, manifest.model);
    assert_eq!(reloaded.manifest().params, manifest.params);
    let expected = fresh.predict_batch(&texts, 3)?;
    assert_eq!(reloaded.predict_batch(&texts, 3)?, expected);
    assert_eq!(expected[0].label, "balance");
    assert_eq!(expected[2].label, "weather");
    assert_eq!(expected[0].top.len(), 3);
    let single = reloaded.predict(texts[1], 10)?;
    assert_eq!(single.label, expected[1].label);
    assert_eq!(single.score, expected[1].score);
    assert_eq!(single.top[..3], expected[1].top[..]);
    assert_eq!(single.top.len(), 5);
    let total: f32 = single.top.iter().map(|s| s.score).sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");
    Ok(())
}

#[test]
fn fine_tuning_extends_vocabulary_and_classes() -> Result<()> {
    let params = params();
    let (base, _) = run(&params)?;
    let base_vocab = base.vocab.len();
    let extra = "\"1\",\"balance\"\n\"2\",\"greeting\"\n";
    let examples: String = (0..60)
        .map(|i| match i % 2 {
            0 => format!("\"hello there friend {i}\",\"2\"\n"),
            _ => format!("\"show my balance {i}\",\"1\"\n"),
        })
        .collect();
    let data = Dataset::parse(&examples, extra)?;
    let base = BaseModel {
        model: base.model,
        vocab: base.vocab,
        classes: base.classes,
    };
    let tuned = train(&data, &params, &Device::Cpu, Some(base), &mut |_| Ok(()))?;
    assert!(tuned.vocab.len() > base_vocab);
    assert_eq!(tuned.model.embedding.rows(), tuned.vocab.len());
    assert_eq!(tuned.classes.len(), 6);
    assert_eq!(tuned.classes[5], "greeting");
    let tuned_manifest = manifest(&tuned, &params);
    let classifier = Classifier::new(tuned.model, tuned.vocab, tuned_manifest);
    assert_eq!(
        classifier.predict("hello there friend", 1)?.label,
        "greeting"
    );
    Ok(())
}

#[test]
fn malformed_artifacts_are_errors_not_panics() -> Result<()> {
    let params = TrainParams {
        epochs: 1,
        ..params()
    };
    let (trained, _) = run(&params)?;
    let manifest = manifest(&trained, &params);
    let files = artifact::encode(&trained.model, &trained.vocab, &manifest)?;
    let good: BTreeMap<&str, Vec<u8>> = files.files.iter().cloned().collect();
    let decode = |replace: &str, bytes: Vec<u8>| {
        let mut parts = good.clone();
        parts.insert(
            match replace {
                "model" => artifact::MODEL_FILE,
                "vocab" => artifact::VOCAB_FILE,
                _ => artifact::MANIFEST_FILE,
            },
            bytes,
        );
        artifact::decode(
            &parts[artifact::MODEL_FILE],
            &parts[artifact::VOCAB_FILE],
            &parts[artifact::MANIFEST_FILE],
            &Device::Cpu,
        )
    };
    assert!(decode("model", good[artifact::MODEL_FILE].clone()).is_ok());
    let weights = &good[artifact::MODEL_FILE];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("model", Vec::new()),
        ("model", b"garbage".to_vec()),
        ("model", weights[..weights.len() / 2].to_vec()),
        ("model", weights[..12].to_vec()),
        ("vocab", b"{}".to_vec()),
        (
            "vocab",
            br#"{"tokenizer":"basic_english_v1","tokens":["<unk>"]}"#.to_vec(),
        ),
        ("manifest", b"[1,2]".to_vec()),
        ("manifest", {
            let mut bad = manifest.clone();
            bad.classes.pop();
            serde_json::to_vec(&bad).unwrap_or_default()
        }),
        ("manifest", {
            let mut bad = manifest.clone();
            bad.model.fc_size += 1;
            serde_json::to_vec(&bad).unwrap_or_default()
        }),
        ("manifest", {
            let mut bad = manifest.clone();
            bad.model.embed_dim = 0;
            serde_json::to_vec(&bad).unwrap_or_default()
        }),
        ("manifest", {
            let mut bad = manifest.clone();
            bad.params.ngrams = 1;
            serde_json::to_vec(&bad).unwrap_or_default()
        }),
        ("manifest", {
            let mut bad = manifest.clone();
            bad.format_version = 99;
            serde_json::to_vec(&bad).unwrap_or_default()
        }),
    ];
    for (i, (part, bytes)) in cases.into_iter().enumerate() {
        let result = decode(part, bytes);
        assert!(result.is_err(), "case {i} ({part}) loaded");
    }
    let empty = tempfile::tempdir().map_err(|e| crate::Error::io("tempdir", e))?;
    let err = Classifier::load(empty.path()).expect_err("no files");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    Ok(())
}

#[test]
fn artifacts_written_before_ngrams_load_as_words_only() -> Result<()> {
    let params = TrainParams {
        ngrams: 1,
        epochs: 2,
        ..params()
    };
    let (trained, _) = run(&params)?;
    assert_eq!(trained.vocab.ngrams(), 1);
    let manifest = manifest(&trained, &params);
    let files = artifact::encode(&trained.model, &trained.vocab, &manifest)?;
    let good: BTreeMap<&str, Vec<u8>> = files.files.iter().cloned().collect();
    let vocab_json = String::from_utf8_lossy(&good[artifact::VOCAB_FILE]).into_owned();
    assert!(!vocab_json.contains("ngrams"), "{vocab_json}");
    let mut old_manifest =
        serde_json::to_value(&manifest).map_err(|e| crate::Error::Artifact(e.to_string()))?;
    if let Some(params) = old_manifest["params"].as_object_mut() {
        params.remove("ngrams");
    }
    let old_manifest =
        serde_json::to_vec(&old_manifest).map_err(|e| crate::Error::Artifact(e.to_string()))?;
    let loaded = artifact::decode(
        &good[artifact::MODEL_FILE],
        &good[artifact::VOCAB_FILE],
        &old_manifest,
        &Device::Cpu,
    )?;
    assert_eq!(loaded.manifest.params, params);
    let texts = ["show my balance please", "will it rain today"];
    let fresh = Classifier::new(trained.model, trained.vocab, manifest);
    assert_eq!(
        Classifier::from(loaded).predict_batch(&texts, 2)?,
        fresh.predict_batch(&texts, 2)?
    );
    Ok(())
}

#[test]
fn classifier_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
}

/// The CLINC sentences of the repository's part 2: (utterance, label) in file order.
fn clinc_part2() -> Vec<(String, String)> {
    use automl_common::csv::{Parser, Record};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/clinc/clinc-intents-part2.csv");
    let raw = std::fs::read(&path).expect("data/clinc/clinc-intents-part2.csv");
    let mut parser = Parser::new(64 * 1024);
    let mut input = &raw[..];
    let mut rows = Vec::new();
    while let Some(record) = parser.next_in(&mut input) {
        let Record::Fields { fields, .. } = record else {
            panic!("a bad CLINC line: {record:?}");
        };
        let text = |i| String::from_utf8(fields.get(i).expect("2 fields").to_vec()).expect("utf8");
        rows.push((text(0), text(1)));
    }
    rows
}

/// Serving's host path ([`crate::model::HostHead`]) gives the scores of the training code's
/// forward pass through tensors, on every CLINC sentence, for a model trained on them.
#[test]
fn the_host_path_gives_the_tensor_forward_pass_scores_on_clinc() -> Result<()> {
    use crate::model::{HostHead, HostScratch};
    use automl_common::csv::push_row;

    let rows = clinc_part2();
    let (mut examples, mut labels) = (Vec::new(), Vec::new());
    let mut ids = std::collections::HashMap::new();
    for (text, label) in &rows {
        let next = ids.len() + 1;
        let id = *ids.entry(label.clone()).or_insert_with(|| {
            push_row(&mut labels, &[&next.to_string(), label]);
            next
        });
        push_row(&mut examples, &[text, &id.to_string()]);
    }
    let dataset = Dataset::parse(
        std::str::from_utf8(&examples).expect("utf8"),
        std::str::from_utf8(&labels).expect("utf8"),
    )?;
    let params = TrainParams {
        epochs: 1,
        ..TrainParams::default()
    };
    let trained = train(&dataset, &params, &Device::Cpu, None, &mut |_| Ok(()))?;
    let texts: Vec<&str> = rows.iter().map(|(text, _)| text.as_str()).collect();

    // Logits, sentence by sentence, against the batched tensor pass.
    let head = HostHead::new(&trained.model)?;
    let bags: Vec<Vec<u32>> = texts.iter().map(|t| trained.vocab.encode(t)).collect();
    let expected = trained.model.logits(&bags)?.to_vec2::<f32>()?;
    let (mut scratch, mut logits) = (HostScratch::default(), Vec::new());
    let mut worst = 0f32;
    for (bag, expected) in bags.iter().zip(&expected) {
        head.logits(&trained.model.embedding, bag, &mut scratch, &mut logits);
        assert_eq!(logits.len(), expected.len());
        for (a, b) in logits.iter().zip(expected) {
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
        }
    }
    assert!(worst < 1e-5, "logits differ by {worst}");

    // Every label's score, through the classifier's two paths.
    let classes = trained.classes.len();
    let described = manifest(&trained, &params);
    let classifier = Classifier::new(trained.model, trained.vocab, described);
    assert!(classifier.on_host());
    let host = classifier.predict_batch(&texts, classes)?;
    let tensors = classifier.predict_batch_tensors(&texts, classes)?;
    assert_eq!(host.len(), texts.len());
    for (host, tensors) in host.iter().zip(&tensors) {
        let score = |p: &crate::Prediction, label: &str| {
            p.top.iter().find(|s| s.label == label).map(|s| s.score)
        };
        for expected in &tensors.top {
            let got = score(host, &expected.label).expect("every label scored");
            assert!(
                (got - expected.score).abs() < 1e-5,
                "{}: {got} against {}",
                expected.label,
                expected.score
            );
        }
    }
    Ok(())
}
