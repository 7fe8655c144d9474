//! The encoder algorithm (`intent-classification-encoder`) in the program: a training job
//! (fetch the pretrained encoder named by `PRETRAINED_MODEL`, embed the snapshot once or take
//! the cached embeddings, train, upload, record), the local mode, and two measurements.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use automl_common::s3::S3Error;
use automl_common::s3::grants::Method;
use automl_common::time::now_iso;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::objects::Objects;
use super::remote::{Client, base_location, download, record_artifact, train_logging_epochs};
use super::trainer_env::TrainerEnv;
use super::{epoch_line, local};
use crate::artifact::{Lineage, MANIFEST_FILE};
use crate::data::Dataset;
use crate::encoder::artifact::{self, ENCODER_FILE, EncoderManifest, HEAD_FILE, PretrainedInfo};
use crate::encoder::params::{EncoderParams, Finetune};
use crate::encoder::train::{self, BaseHead, EncoderTrained};
use crate::encoder::{ALGORITHM, Encoder};
use crate::error::{Error, Result};
use crate::pretrained::{self, ENCODER_NAME};
use crate::train::EpochReport;

/// Name of the cached embeddings tensor.
const EMBEDDINGS: &str = "embeddings";

/// What training starts from besides the data.
struct Inputs {
    /// The pretrained encoder's directory (configuration, tokenizer, weights).
    pretrained_dir: PathBuf,
    /// Other weights for the encoder (a base run fine-tuned in `full` mode).
    weights: Option<PathBuf>,
    /// A base run's head.
    base: Option<BaseHead>,
    /// The snapshot's embeddings, when cached.
    cached: Option<Tensor>,
}

/// Trains; returns the model and the embeddings it computed (for the cache), if any.
fn train_blocking(
    data: &Dataset,
    inputs: Inputs,
    params: &EncoderParams,
    device: &Device,
    on_epoch: &mut dyn FnMut(&EpochReport) -> bool,
) -> Result<(EncoderTrained, Option<Tensor>)> {
    let mut on_epoch = |report: &EpochReport| {
        if on_epoch(report) {
            Ok(())
        } else {
            Err(Error::Stopped("progress could not be recorded".into()))
        }
    };
    match params.finetune {
        Finetune::Head => {
            let (embeddings, computed) = match inputs.cached {
                Some(cached) => {
                    println!("embeddings: cached ({} sentences)", cached.dim(0)?);
                    (cached.to_device(device)?, None)
                }
                None => {
                    let encoder =
                        Encoder::load(&inputs.pretrained_dir, inputs.weights.as_deref(), device)?;
                    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
                    let started = Instant::now();
                    let mut next_report = 0.0;
                    let embeddings =
                        encoder.embed(&texts, params.encode_batch, &mut |done, total| {
                            let seconds = started.elapsed().as_secs_f64();
                            if done == total || seconds >= next_report {
                                next_report = seconds + 5.0;
                                println!(
                                    "embedding {done}/{total} sentences ({:.0}/s)",
                                    done as f64 / seconds.max(1e-9)
                                );
                            }
                        })?;
                    (embeddings.clone(), Some(embeddings))
                }
            };
            let trained = train::train_head(
                data,
                &embeddings,
                params,
                inputs.base.as_ref(),
                &mut on_epoch,
            )?;
            Ok((trained, computed))
        }
        Finetune::Full => {
            let mut vars = VarMap::new();
            let encoder = Encoder::load_trainable(
                &inputs.pretrained_dir,
                inputs.weights.as_deref(),
                &mut vars,
                device,
            )?;
            let started = Instant::now();
            let mut next_report = 10.0;
            let trained = train::train_full(
                data,
                &encoder,
                vars,
                params,
                inputs.base.as_ref(),
                &mut on_epoch,
                &mut |epoch, done, total| {
                    let seconds = started.elapsed().as_secs_f64();
                    if seconds >= next_report {
                        next_report = seconds + 10.0;
                        println!("epoch {epoch}: {done}/{total} examples");
                    }
                },
            )?;
            Ok((trained, None))
        }
    }
}

/// The local mode: trains on files with the encoder in `encoder_dir` and writes the model
/// into `out`.
pub fn train_local(
    examples: &Path,
    labels: &Path,
    out: &Path,
    encoder_dir: &Path,
    base: Option<&Path>,
    params: &EncoderParams,
    device: &Device,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let data = local::read_dataset(examples, labels)?;
    println!(
        "data {}: {} examples, {} labels",
        examples.display(),
        data.examples.len(),
        data.labels.len()
    );
    let (digest, _) = pretrained::digest_dir(encoder_dir)?;
    let info = PretrainedInfo {
        name: ENCODER_NAME.into(),
        digest,
        bucket: String::new(),
        prefix: encoder_dir.display().to_string(),
    };
    let (base_head, weights, base_run_id) = match base {
        Some(dir) => {
            let (manifest, head) = artifact::base_head(dir, device)
                .with_context(|| format!("base model {}", dir.display()))?;
            let weights = manifest.own_encoder.then(|| dir.join(ENCODER_FILE));
            let run_id = Some(manifest.lineage.run_id).filter(|id| !id.is_empty());
            (Some(head), weights, run_id)
        }
        None => (None, None, None),
    };
    let inputs = Inputs {
        pretrained_dir: encoder_dir.to_path_buf(),
        weights,
        base: base_head,
        cached: None,
    };
    let (trained, _) = train_blocking(&data, inputs, params, device, &mut |report| {
        println!("{}", epoch_line(report, params.epochs));
        true
    })?;
    local::print_summary(
        started,
        trained.test_accuracy,
        &trained.epochs,
        trained.split_sizes,
        trained.classes.len(),
        None,
    );
    let lineage = Lineage {
        base_run_id,
        ..Lineage::default()
    };
    let code_version = format!("automl-train {}", env!("CARGO_PKG_VERSION"));
    let manifest = EncoderManifest::describe(
        &trained,
        params,
        trained.encoder_weights.is_some(),
        info,
        ALGORITHM,
        &code_version,
        lineage,
        &now_iso(),
    );
    artifact::save(out, &trained, &manifest)?;
    println!(
        "wrote {} in {:.2}s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where a trainer keeps pretrained files between runs: `AUTOML_CACHE_DIR`, else a folder in
/// the temp directory.
fn cache_root() -> PathBuf {
    std::env::var_os("AUTOML_CACHE_DIR")
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::env::temp_dir().join("automl-cache"))
        .join("pretrained")
}

/// A folder for this run's files, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(job_id: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "automl-run-{job_id}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything between LogRunStart and LogRunEnd of an encoder job; returns the test accuracy.
pub async fn train_and_publish(
    env: &TrainerEnv,
    params: &EncoderParams,
    device: Device,
    client: &mut Client,
    bucket: &str,
    path: &str,
) -> anyhow::Result<f64> {
    let store = Objects::from_env(env)?;
    let Some(named) = env.pretrained_model.as_deref() else {
        bail!(
            "PRETRAINED_MODEL is not set: {ALGORITHM} needs the pretrained model training-service names"
        );
    };
    let Some((name, digest)) = named.split_once('@') else {
        bail!("PRETRAINED_MODEL {named:?} is not <name>@<digest>");
    };
    let model_bucket = if env.model_bucket.is_empty() {
        bucket
    } else {
        &env.model_bucket
    };
    let reference = pretrained::at_digest(&store, model_bucket, name, digest).await?;
    let started = Instant::now();
    let pretrained_dir = pretrained::fetch(&store, &reference, &cache_root()).await?;
    println!(
        "pretrained {} ready in {:.1}s",
        reference.id(),
        started.elapsed().as_secs_f64()
    );
    let prefix = env.data_path.trim_end_matches('/');
    let examples = download(&store, &env.data_bucket, &format!("{prefix}/examples.csv")).await?;
    let labels = download(&store, &env.data_bucket, &format!("{prefix}/labels.csv")).await?;
    let data = Dataset::parse(
        std::str::from_utf8(&examples).context("examples.csv is not UTF-8")?,
        std::str::from_utf8(&labels).context("labels.csv is not UTF-8")?,
    )
    .context("bad snapshot")?;
    println!(
        "snapshot {}/{}: {} examples, {} labels",
        env.data_bucket,
        prefix,
        data.examples.len(),
        data.labels.len()
    );
    let scratch = ScratchDir::new(&env.job_id)?;
    let (base, weights) = match &env.base_run_id {
        Some(run_id) => {
            let (head, weights) = load_base(
                client,
                &store,
                run_id,
                &scratch.0,
                &reference.digest,
                &device,
            )
            .await?;
            (Some(head), weights)
        }
        None => (None, None),
    };
    // Embeddings depend on the snapshot (immutable, named by its dataset and version hash) and
    // the encoder's weights only; the cache lies under the tenant's prefix, which starts the
    // run's path.
    let tenant_prefix = path
        .strip_suffix(&format!("run_{}", env.job_id))
        .unwrap_or_default();
    let cache_key = pretrained::embeddings_key(
        tenant_prefix,
        &reference.name,
        &reference.digest,
        &env.dataset_id,
        &env.version_hash,
    );
    let cacheable = params.finetune == Finetune::Head && weights.is_none();
    let cached = if cacheable {
        cached_embeddings(&store, &reference.bucket, &cache_key, data.examples.len()).await
    } else {
        None
    };
    let inputs = Inputs {
        pretrained_dir,
        weights,
        base,
        cached,
    };
    let training_params = params.clone();
    let (trained, computed) = train_logging_epochs(env, params.epochs, client, move |on_epoch| {
        train_blocking(&data, inputs, &training_params, &device, on_epoch)
    })
    .await?;
    if let Some(embeddings) = computed
        && cacheable
    {
        match tensor_bytes(&embeddings) {
            Ok(_) if !store.allows(Method::Put, &reference.bucket, &cache_key) => {
                println!("embeddings not cached: no grant to write {cache_key}");
            }
            Ok(bytes) => match store.put(&reference.bucket, &cache_key, bytes).await {
                Ok(()) => println!("cached embeddings at {}/{cache_key}", reference.bucket),
                Err(err) => println!("embeddings not cached: {err}"),
            },
            Err(err) => println!("embeddings not cached: {err}"),
        }
    }
    println!("test accuracy {:.4}", trained.test_accuracy);
    let manifest = EncoderManifest::describe(
        &trained,
        params,
        trained.encoder_weights.is_some(),
        PretrainedInfo::from(&reference),
        &env.algorithm,
        &env.code_version,
        env.lineage(),
        &now_iso(),
    );
    let out = scratch.0.join("model");
    artifact::save(&out, &trained, &manifest)?;
    // The manifest goes last: a reader that finds it finds the weights too.
    for name in [HEAD_FILE, ENCODER_FILE, MANIFEST_FILE] {
        let file = out.join(name);
        if !file.is_file() {
            continue;
        }
        let key = format!("{path}/{name}");
        let bytes = store
            .put_file(bucket, &key, &file)
            .await
            .with_context(|| format!("cannot write {bucket}/{key}"))?;
        println!("uploaded {bucket}/{key} ({bytes} bytes)");
    }
    record_artifact(env, client, bucket, path).await?;
    Ok(trained.test_accuracy)
}

fn tensor_bytes(embeddings: &Tensor) -> Result<Vec<u8>> {
    let mut tensors = HashMap::new();
    tensors.insert(EMBEDDINGS.to_string(), embeddings.to_device(&Device::Cpu)?);
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| Error::Artifact(format!("embeddings: {e}")))
}

/// The cached embeddings of the snapshot, if present and of the right size.
async fn cached_embeddings(
    store: &Objects,
    bucket: &str,
    key: &str,
    rows: usize,
) -> Option<Tensor> {
    if !store.allows(Method::Get, bucket, key) {
        return None;
    }
    let bytes = match store.get(bucket, key).await {
        Ok(bytes) => bytes,
        Err(S3Error::NotFound(_)) => return None,
        Err(err) => {
            println!("embeddings cache unreadable: {err}");
            return None;
        }
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).ok()?;
    let embeddings = tensors.get(EMBEDDINGS)?.clone();
    match embeddings.dims2() {
        Ok((n, _)) if n == rows => Some(embeddings),
        _ => {
            println!("embeddings cache at {bucket}/{key} does not fit the snapshot: ignored");
            None
        }
    }
}

/// The head (and, for a `full` base, the encoder weights) of base run `run_id`, downloaded
/// into `scratch`.
async fn load_base(
    client: &mut Client,
    store: &Objects,
    run_id: &str,
    scratch: &Path,
    digest: &str,
    device: &Device,
) -> anyhow::Result<(BaseHead, Option<PathBuf>)> {
    let location = base_location(client, run_id).await?;
    let prefix = location.path.trim_end_matches('/');
    let dir = scratch.join("base");
    std::fs::create_dir_all(&dir)?;
    let manifest = download(
        store,
        &location.bucket,
        &format!("{prefix}/{MANIFEST_FILE}"),
    )
    .await?;
    if !artifact::is_encoder_manifest(&manifest) {
        bail!("base run {run_id} is not an {ALGORITHM} model");
    }
    let parsed = EncoderManifest::parse(&manifest)?;
    std::fs::write(dir.join(MANIFEST_FILE), &manifest)?;
    let mut names = vec![HEAD_FILE];
    if parsed.own_encoder {
        if parsed.pretrained.digest != digest {
            bail!(
                "base run {run_id} fine-tuned {}, not the pretrained model of this job",
                parsed.pretrained.id()
            );
        }
        names.push(ENCODER_FILE);
    }
    for name in names {
        let key = format!("{prefix}/{name}");
        store
            .get_to_file(&location.bucket, &key, &dir.join(name))
            .await
            .with_context(|| format!("cannot read {}/{key}", location.bucket))?;
    }
    let (_, head) =
        artifact::base_head(&dir, device).with_context(|| format!("base run {run_id}"))?;
    println!(
        "fine-tuning from run {run_id} ({} classes{})",
        head.classes.len(),
        if parsed.own_encoder {
            ", its fine-tuned encoder"
        } else {
            ""
        }
    );
    Ok((head, parsed.own_encoder.then(|| dir.join(ENCODER_FILE))))
}

/// `encoder-bench`: sentences per second of the encoder (tokenizing, the forward pass,
/// pooling), per batch size, in the sentences' order, for at least `seconds` each after one
/// warm-up batch. One JSON line per batch size.
pub fn bench(
    encoder_dir: &Path,
    sentences: &Path,
    batch_sizes: &str,
    seconds: f64,
    device: &Device,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(sentences)
        .with_context(|| format!("cannot read {}", sentences.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        bail!("{} has no sentences", sentences.display());
    }
    let loaded = Instant::now();
    let encoder = Encoder::load(encoder_dir, None, device)?;
    let load_seconds = loaded.elapsed().as_secs_f64();
    let check = encoder.embed(
        &["This is an example sentence", "Each sentence is converted"],
        2,
        &mut |_, _| {},
    )?;
    let rows = check.to_vec2::<f32>()?;
    let cosine: f32 = rows[0].iter().zip(&rows[1]).map(|(a, b)| a * b).sum();
    println!(
        "{}",
        serde_json::json!({"check": &rows[0][..6], "cosine": cosine, "load_seconds": load_seconds})
    );
    for size in batch_sizes.split(',') {
        let batch: usize = size
            .trim()
            .parse()
            .with_context(|| format!("bad batch size {size:?}"))?;
        if batch == 0 {
            bail!("batch sizes must be positive");
        }
        let batches: Vec<&[&str]> = lines.chunks(batch).collect();
        encoder.embed(batches[0], batch, &mut |_, _| {})?;
        let started = Instant::now();
        let mut count = 0usize;
        let mut next = 0usize;
        while started.elapsed().as_secs_f64() < seconds {
            let chunk = batches[next % batches.len()];
            encoder.embed(chunk, batch, &mut |_, _| {})?;
            count += chunk.len();
            next += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "side": "candle",
                "batch": batch,
                "sentences": count,
                "seconds": elapsed,
                "sentences_per_sec": count as f64 / elapsed,
                "threads": candle_core::utils::get_num_threads(),
                "framework": crate::FRAMEWORK,
            })
        );
    }
    Ok(())
}

/// `encoder-steps`: the loss of each of `steps` full fine-tuning steps and the throughput, one
/// JSON line, for comparing devices from the same seed.
pub fn steps(
    encoder_dir: &Path,
    examples: &Path,
    labels: &Path,
    steps: usize,
    params: &EncoderParams,
    device: &Device,
) -> anyhow::Result<()> {
    let data = local::read_dataset(examples, labels)?;
    let mut vars = VarMap::new();
    let encoder = Encoder::load_trainable(encoder_dir, None, &mut vars, device)?;
    let started = Instant::now();
    let losses = train::loss_curve(&data, &encoder, &vars, params, steps)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "device": crate::device::describe(device),
            "steps": steps,
            "batch_size": params.batch_size,
            "seconds": seconds,
            "sentences_per_sec": (steps * params.batch_size) as f64 / seconds.max(1e-9),
            "losses": losses,
        })
    );
    Ok(())
}
