//! The files of an encoder model under `run_<id>/`:
//!
//! - `head.safetensors`: the head's f32 weights ([`super::head`]).
//! - `encoder.safetensors`: `full` mode only, the fine-tuned encoder's weights (the tensor
//!   names of the pretrained `model.safetensors`).
//! - `manifest.json`: [`EncoderManifest`]: `"architecture": "sentence-encoder"`, the
//!   pretrained model it was built on (name, digest, where it lives), classes, head sizes,
//!   parameters, lineage and final metrics.
//!
//! The configuration and tokenizer always come from the pretrained model, which is fetched
//! from the object store like any artifact; a `head` model holds only its head.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::head::{Head, HeadConfig};
use super::params::{EncoderParams, Finetune};
use super::train::{BaseHead, EncoderTrained};
use crate::artifact::{Lineage, MANIFEST_FILE, final_metrics};
use crate::error::{Error, Result};
use crate::pretrained::PretrainedRef;

/// The head's weights.
pub const HEAD_FILE: &str = "head.safetensors";
/// The fine-tuned encoder's weights (`full` mode).
pub const ENCODER_FILE: &str = "encoder.safetensors";
/// What `architecture` says in an encoder model's manifest.
pub const ARCHITECTURE: &str = "sentence-encoder";
/// The version of this layout.
pub const FORMAT_VERSION: u32 = 1;

/// The pretrained model a run was built on, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PretrainedInfo {
    /// Its name, e.g. `all-minilm-l6-v2`.
    pub name: String,
    /// Its digest (sha256 over its files).
    pub digest: String,
    /// The bucket holding it.
    pub bucket: String,
    /// The folder of its files.
    pub prefix: String,
}

impl PretrainedInfo {
    /// `name@digest`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.digest)
    }

    /// The reference to fetch it by (the files' own hashes are checked against the digest).
    pub fn reference(&self) -> PretrainedRef {
        PretrainedRef {
            name: self.name.clone(),
            digest: self.digest.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            files: BTreeMap::new(),
            imported_at: String::new(),
        }
    }
}

impl From<&PretrainedRef> for PretrainedInfo {
    fn from(reference: &PretrainedRef) -> Self {
        Self {
            name: reference.name.clone(),
            digest: reference.digest.clone(),
            bucket: reference.bucket.clone(),
            prefix: reference.prefix.clone(),
        }
    }
}

/// `manifest.json` of an encoder model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderManifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// [`ARCHITECTURE`].
    pub architecture: String,
    /// The algorithm name the run was launched with.
    pub algorithm: String,
    /// The library that trained it.
    pub framework: String,
    /// Label names in output order.
    pub classes: Vec<String>,
    /// The head's sizes.
    pub head: HeadConfig,
    /// `head` (the pretrained encoder, frozen) or `full` (its own `encoder.safetensors`).
    pub finetune: Finetune,
    /// Whether `encoder.safetensors` is part of the artifact.
    pub own_encoder: bool,
    /// The pretrained model: configuration, tokenizer and (unless `own_encoder`) weights.
    pub pretrained: PretrainedInfo,
    /// The hyperparameters of the run.
    pub params: EncoderParams,
    /// The training code's version.
    pub code_version: String,
    /// Dataset and run lineage.
    pub lineage: Lineage,
    /// Final metrics.
    pub metrics: BTreeMap<String, f64>,
    /// When training finished (ISO-8601 UTC).
    pub created_at: String,
}

impl EncoderManifest {
    /// The manifest of a finished run.
    #[allow(clippy::too_many_arguments)]
    pub fn describe(
        trained: &EncoderTrained,
        params: &EncoderParams,
        own_encoder: bool,
        pretrained: PretrainedInfo,
        algorithm: &str,
        code_version: &str,
        lineage: Lineage,
        created_at: &str,
    ) -> Self {
        let metrics = final_metrics(trained.test_accuracy, &trained.epochs, trained.split_sizes);
        Self {
            format_version: FORMAT_VERSION,
            architecture: ARCHITECTURE.to_string(),
            algorithm: algorithm.to_string(),
            framework: crate::FRAMEWORK.to_string(),
            classes: trained.classes.clone(),
            head: trained.head.config,
            finetune: params.finetune,
            own_encoder,
            pretrained,
            params: params.clone(),
            code_version: code_version.to_string(),
            lineage,
            metrics,
            created_at: created_at.to_string(),
        }
    }

    /// Parses and checks a manifest.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let manifest: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::Artifact(format!("{MANIFEST_FILE}: {e}")))?;
        if manifest.architecture != ARCHITECTURE || manifest.format_version != FORMAT_VERSION {
            return Err(Error::Artifact(format!(
                "{MANIFEST_FILE}: {} version {} is not {ARCHITECTURE} version {FORMAT_VERSION}",
                manifest.architecture, manifest.format_version
            )));
        }
        if manifest.classes.len() != manifest.head.classes || manifest.classes.is_empty() {
            return Err(Error::Artifact(format!(
                "the manifest lists {} classes for {} outputs",
                manifest.classes.len(),
                manifest.head.classes
            )));
        }
        Ok(manifest)
    }
}

/// Whether `manifest.json`'s bytes describe an encoder model.
pub fn is_encoder_manifest(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        architecture: String,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.architecture == ARCHITECTURE)
}

/// The head's weights as safetensors bytes.
pub fn encode_head(head: &Head) -> Result<Vec<u8>> {
    let named = head.tensors();
    let mut data = Vec::new();
    for (name, tensor) in &named {
        let values = tensor.flatten_all()?.to_vec1::<f32>()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Diverged(format!(
                "head {name} holds NaN or infinity"
            )));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), tensor.dims().to_vec(), bytes));
    }
    let mut views = Vec::new();
    for (name, shape, bytes) in &data {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| Error::Artifact(format!("{name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::Artifact(format!("{HEAD_FILE}: {e}")))
}

/// The head's weights from safetensors bytes, checked against `config`.
pub fn decode_head(bytes: &[u8], config: HeadConfig, device: &Device) -> Result<Head> {
    let tensors = head_tensors(bytes, device)?;
    Head::from_tensors(config, &tensors)
}

fn head_tensors(bytes: &[u8], device: &Device) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| Error::Artifact(format!("{HEAD_FILE}: {e}")))?;
    for (name, tensor) in &tensors {
        let finite = tensor
            .flatten_all()?
            .to_vec1::<f32>()
            .map_err(|e| Error::Artifact(format!("{HEAD_FILE}: {name}: {e}")))?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(Error::Artifact(format!(
                "{HEAD_FILE}: {name} holds NaN or infinite values"
            )));
        }
    }
    Ok(tensors)
}

/// A base run's head, for fine-tuning from it.
pub fn base_head(dir: &Path, device: &Device) -> Result<(EncoderManifest, BaseHead)> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    };
    let manifest = EncoderManifest::parse(&read(MANIFEST_FILE)?)?;
    let tensors = head_tensors(&read(HEAD_FILE)?, device)?;
    Head::from_tensors(manifest.head, &tensors)?;
    let base = BaseHead {
        config: manifest.head,
        tensors,
        classes: manifest.classes.clone(),
    };
    Ok((manifest, base))
}

/// Writes the model's files into `dir`: the head, the manifest and, in `full` mode, the
/// encoder's weights.
pub fn save(dir: &Path, trained: &EncoderTrained, manifest: &EncoderManifest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
    };
    write(HEAD_FILE, &encode_head(&trained.head)?)?;
    if let Some(vars) = &trained.encoder_weights {
        let path = dir.join(ENCODER_FILE);
        vars.save(&path)
            .map_err(|e| Error::Artifact(format!("{}: {e}", path.display())))?;
    }
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Artifact(format!("{MANIFEST_FILE}: {e}")))?;
    write(MANIFEST_FILE, &json)
}
