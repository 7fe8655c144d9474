//! The sentence encoder with its real weights (all-MiniLM-L6-v2, fetched by
//! `scripts/fetch-encoder.sh`, which `scripts/test.sh` runs first), and the encoder algorithm
//! end to end on a tiny random BERT in the local mode.

use std::path::PathBuf;
use std::process::Command;

use automl_text_classification::encoder::{self, Encoder};
use candle_core::Device;

/// The fetched encoder: `AUTOML_ENCODER_DIR`, else where `scripts/fetch-encoder.sh` puts it.
fn encoder_dir() -> PathBuf {
    let dir = std::env::var_os("AUTOML_ENCODER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("AUTOML_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/automl")
                })
                .join("pretrained/all-minilm-l6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "the pretrained encoder is not at {}: run scripts/fetch-encoder.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn embeddings_match_sentence_transformers() {
    let encoder = Encoder::load(&encoder_dir(), None, &Device::Cpu).expect("loads");
    assert_eq!(encoder.hidden_size(), 384);
    let texts = [
        "This is an example sentence",
        "Each sentence is converted",
        "a considerably longer sentence than the others, so that the batch needs padding",
    ];
    let rows = encoder
        .embed(&texts, 8, &mut |_, _| {})
        .expect("embeds")
        .to_vec2::<f32>()
        .expect("rows");
    let expected = [
        0.06765693, 0.06349593, 0.04871314, 0.07930495, 0.03744806, 0.00265273,
    ];
    for (got, want) in rows[0].iter().zip(expected) {
        assert!((got - want).abs() < 1e-4, "{:?}", &rows[0][..6]);
    }
    let norm: f32 = rows[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "L2-normalised: {norm}");
    let similarity = cosine(&rows[0], &rows[1]);
    assert!((similarity - 0.4046).abs() < 1e-4, "cosine {similarity}");
    // Padding to the batch's longest sentence changes nothing: the mask keeps it out.
    let alone = encoder
        .embed(&texts[..1], 1, &mut |_, _| {})
        .expect("embeds")
        .to_vec2::<f32>()
        .expect("rows");
    let batched = encoder
        .embed(&[texts[2], texts[0]], 2, &mut |_, _| {})
        .expect("embeds")
        .to_vec2::<f32>()
        .expect("rows");
    for (a, b) in alone[0].iter().zip(&batched[1]) {
        assert!((a - b).abs() < 1e-5, "padding leaked into the pooling");
    }
}

#[test]
fn the_trainable_twin_computes_what_bert_model_computes() {
    let dir = encoder_dir();
    let frozen = Encoder::load(&dir, None, &Device::Cpu).expect("loads");
    let mut vars = candle_nn::VarMap::new();
    let trainable = Encoder::load_trainable(&dir, None, &mut vars, &Device::Cpu).expect("loads");
    let texts = [
        "This is an example sentence",
        "how do i say thank you in french",
        "wake me up at seven tomorrow, please",
    ];
    let a = frozen.embed(&texts, 3, &mut |_, _| {}).expect("embeds");
    let b = trainable.embed(&texts, 3, &mut |_, _| {}).expect("embeds");
    let difference = (a - b)
        .expect("same shape")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    assert!(difference < 1e-5, "max difference {difference}");
}

#[test]
fn full_fine_tuning_moves_every_layer() {
    let work = tempfile::tempdir().expect("tempdir");
    let tiny = work.path().join("tiny");
    encoder::tiny::write(&tiny, &automl_text_classification::demo::words(), 32, 5)
        .expect("tiny encoder");
    let snapshot = automl_text_classification::demo::snapshot(10, 3);
    let data = automl_text_classification::data::Dataset::parse(
        &snapshot.examples_csv,
        &snapshot.labels_csv,
    )
    .expect("demo data");
    let mut vars = candle_nn::VarMap::new();
    let encoder = Encoder::load_trainable(&tiny, None, &mut vars, &Device::Cpu).expect("loads");
    let before = |name: &str| {
        vars.data().lock().expect("lock")[name]
            .as_tensor()
            .copy()
            .expect("copy")
    };
    let names = [
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.output.dense.weight",
    ];
    let initial: Vec<_> = names.iter().map(|n| before(n)).collect();
    let params = encoder::params::EncoderParams {
        batch_size: 8,
        ..encoder::params::EncoderParams::defaults(encoder::params::Finetune::Full)
    };
    let losses = encoder::train::loss_curve(&data, &encoder, &vars, &params, 5).expect("steps");
    assert_eq!(losses.len(), 5);
    for (name, start) in names.iter().zip(initial) {
        let moved = (before(name) - start)
            .expect("same shape")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!(moved > 0.0, "{name} did not train");
    }
}

fn demo_files(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let data = automl_text_classification::demo::snapshot(20, 7);
    let examples = dir.join("examples.csv");
    let labels = dir.join("labels.csv");
    std::fs::write(&examples, &data.examples_csv).expect("write");
    std::fs::write(&labels, &data.labels_csv).expect("write");
    (examples, labels)
}

#[test]
fn tiny_encoder_trains_in_both_modes_and_fine_tunes() {
    let work = tempfile::tempdir().expect("tempdir");
    let (examples, labels) = demo_files(work.path());
    let tiny = work.path().join("tiny");
    encoder::tiny::write(&tiny, &automl_text_classification::demo::words(), 32, 3)
        .expect("tiny encoder");
    let train = |out: &str, finetune: &str, base: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_automl-train"));
        command
            .args(["--algorithm", encoder::ALGORITHM, "--encoder"])
            .arg(&tiny)
            .arg("--examples")
            .arg(&examples)
            .arg("--labels")
            .arg(&labels)
            .arg("--out")
            .arg(work.path().join(out))
            .env("FINETUNE", finetune)
            .env("EPOCHS", "3")
            .env("DEVICE", "cpu");
        if let Some(base) = base {
            command.arg("--base").arg(work.path().join(base));
        }
        let output = command.output().expect("automl-train runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let head = train("head", "head", None);
    assert!(head.contains("epoch 3/3"), "{head}");
    assert!(work.path().join("head/head.safetensors").is_file());
    assert!(!work.path().join("head/encoder.safetensors").exists());
    let full = train("full", "full", None);
    assert!(full.contains("epoch 3/3"), "{full}");
    assert!(work.path().join("full/encoder.safetensors").is_file());
    let tuned = train("tuned", "full", Some("full"));
    assert!(tuned.contains("fine"), "{tuned}");
    for model in ["head", "full", "tuned"] {
        let output = Command::new(env!("CARGO_BIN_EXE_automl-train"))
            .args(["evaluate", "--model"])
            .arg(work.path().join(model))
            .arg("--examples")
            .arg(&examples)
            .arg("--labels")
            .arg(&labels)
            .arg("--encoder")
            .arg(&tiny)
            .output()
            .expect("evaluate runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("one JSON line");
        assert!(report["accuracy"].as_f64().is_some(), "{report}");
    }
}
