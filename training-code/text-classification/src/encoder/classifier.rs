//! Serving an encoder model: a shared [`Encoder`] (two `head` models on one pretrained encoder
//! hold one encoder in memory) and the model's own head. Calls are blocking.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use super::Encoder;
use super::artifact::{self, ENCODER_FILE, EncoderManifest, HEAD_FILE};
use super::head::Head;
use crate::artifact::MANIFEST_FILE;
use crate::error::{Error, Result};
use crate::inference::{Prediction, rank};

/// Sentences per forward pass.
const BATCH: usize = 64;

/// An encoder model ready to predict.
#[derive(Debug, Clone)]
pub struct EncoderClassifier {
    encoder: Arc<Encoder>,
    head: Head,
    manifest: EncoderManifest,
}

impl EncoderClassifier {
    /// The model in `dir` (`manifest.json`, `head.safetensors`) on `encoder`, which must be
    /// the one the manifest names (see [`EncoderClassifier::needs_own_encoder`]).
    pub fn load(dir: &Path, encoder: Arc<Encoder>) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::io(&path, e))
        };
        let manifest = EncoderManifest::parse(&read(MANIFEST_FILE)?)?;
        if manifest.head.input != encoder.hidden_size() {
            return Err(Error::Artifact(format!(
                "the head takes {} inputs, the encoder gives {}",
                manifest.head.input,
                encoder.hidden_size()
            )));
        }
        let head = artifact::decode_head(&read(HEAD_FILE)?, manifest.head, encoder.device())?;
        Ok(Self {
            encoder,
            head,
            manifest,
        })
    }

    /// The manifest in `dir`.
    pub fn read_manifest(dir: &Path) -> Result<EncoderManifest> {
        let path = dir.join(MANIFEST_FILE);
        EncoderManifest::parse(&std::fs::read(&path).map_err(|e| Error::io(&path, e))?)
    }

    /// The encoder of a model whose manifest says `own_encoder`: the configuration and
    /// tokenizer of the pretrained model in `pretrained_dir`, the weights of `dir`.
    pub fn own_encoder(dir: &Path, pretrained_dir: &Path, device: &Device) -> Result<Encoder> {
        Encoder::load(pretrained_dir, Some(&dir.join(ENCODER_FILE)), device)
    }

    /// Label names in output order.
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }

    /// The manifest.
    pub fn manifest(&self) -> &EncoderManifest {
        &self.manifest
    }

    /// The encoder it runs on.
    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    /// Predictions for many texts, in order, with the `top_k` best labels each; sentences of
    /// similar length are batched together.
    pub fn predict_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        top_k: usize,
    ) -> Result<Vec<Prediction>> {
        let embeddings = self.encoder.embed(texts, BATCH, &mut |_, _| {})?;
        let logits = self.head.forward(&embeddings)?;
        let probabilities = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        Ok(probabilities
            .iter()
            .map(|p| rank(p, &self.manifest.classes, top_k))
            .collect())
    }
}
