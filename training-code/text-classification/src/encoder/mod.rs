//! The sentence encoder: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) through
//! `candle-transformers`' BERT, WordPiece through the `tokenizers` crate, mean pooling over the
//! attention mask and L2 normalisation, as sentence-transformers computes it.
//!
//! - [`Encoder`]: the model and its tokenizer, frozen ([`Encoder::load`]) or trainable
//!   ([`Encoder::load_trainable`], its weights in a [`VarMap`]).
//! - [`head`]: the classification head on top of the sentence embedding.
//! - [`params`]: the algorithm's hyperparameters (`FINETUNE=head|full`, …).
//! - [`train`]: training the head on cached embeddings, or the whole model.
//! - [`artifact`]: the files a run writes and prediction-service loads.
//! - [`classifier`]: [`EncoderClassifier`], serving an encoder model.
//! - [`trainable`]: the same BERT forward pass with gradients through every weight (`full`).
//! - [`tiny`]: a tiny random BERT written as an encoder directory, for tests and demos.
//!
//! Tokens are padded per batch (to the batch's longest sentence, never to a fixed length),
//! and batches are formed from sentences of similar length where the order is free.

pub mod artifact;
pub mod classifier;
pub mod head;
pub mod params;
pub mod tiny;
pub mod train;
pub mod trainable;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};

pub use classifier::EncoderClassifier;

/// The algorithm name of encoder models.
pub const ALGORITHM: &str = "intent-classification-encoder";
/// The model's configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// The pretrained weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Longest input in tokens, [CLS] and [SEP] included (the length the model was trained at).
pub const MAX_TOKENS: usize = 128;

/// Token ids of sentences, ready to be batched.
pub type TokenIds = Vec<u32>;

/// The network: `candle-transformers`' BERT, or its differentiable twin for training.
enum Network {
    Frozen(Box<BertModel>),
    Trainable(trainable::TrainableBert),
}

/// The encoder and its tokenizer.
pub struct Encoder {
    bert: Network,
    tokenizer: Tokenizer,
    config: Config,
    device: Device,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("hidden_size", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .field("device", &self.device.location())
            .finish_non_exhaustive()
    }
}

/// The files of an encoder directory.
pub fn files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join(CONFIG_FILE),
        dir.join(WEIGHTS_FILE),
        dir.join(TOKENIZER_FILE),
    ]
}

fn read_config(dir: &Path) -> Result<Config> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Pretrained(format!("{}: {e}", path.display())))
}

fn read_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join(TOKENIZER_FILE);
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| Error::Pretrained(format!("{}: {e}", path.display())))?;
    // The shipped tokenizer pads every input to 128 tokens; batches are padded here instead,
    // to their own longest sentence.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            ..TruncationParams::default()
        }))
        .map_err(|e| Error::Pretrained(format!("{}: {e}", path.display())))?;
    Ok(tokenizer)
}

impl Encoder {
    /// Loads a frozen encoder from `dir` (`config.json`, `tokenizer.json`, and
    /// `model.safetensors` unless `weights` names other weights of the same model, e.g. a
    /// fine-tuned run's).
    pub fn load(dir: &Path, weights: Option<&Path>, device: &Device) -> Result<Self> {
        let config = read_config(dir)?;
        let tokenizer = read_tokenizer(dir)?;
        let path = weights.map_or_else(|| dir.join(WEIGHTS_FILE), Path::to_path_buf);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
        let bert = BertModel::load(vb, &config)
            .map_err(|e| Error::Pretrained(format!("{}: {e}", path.display())))?;
        Ok(Self {
            bert: Network::Frozen(Box::new(bert)),
            tokenizer,
            config,
            device: device.clone(),
        })
    }

    /// Loads an encoder whose weights are variables of `varmap` (to be trained), initialised
    /// from `model.safetensors` in `dir` or from `weights`. It runs [`trainable`]'s forward
    /// pass, through which gradients reach every weight.
    pub fn load_trainable(
        dir: &Path,
        weights: Option<&Path>,
        varmap: &mut VarMap,
        device: &Device,
    ) -> Result<Self> {
        let config = read_config(dir)?;
        let tokenizer = read_tokenizer(dir)?;
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let bert = trainable::TrainableBert::load(vb, &config)?;
        let path = weights.map_or_else(|| dir.join(WEIGHTS_FILE), Path::to_path_buf);
        varmap
            .load(&path)
            .map_err(|e| Error::Pretrained(format!("{}: {e}", path.display())))?;
        Ok(Self {
            bert: Network::Trainable(bert),
            tokenizer,
            config,
            device: device.clone(),
        })
    }

    /// Width of the sentence embedding.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The device it computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// WordPiece token ids of each text, `[CLS]` and `[SEP]` included, at most
    /// [`MAX_TOKENS`].
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<TokenIds>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::Pretrained(format!("tokenizer: {e}")))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Mean-pooled, L2-normalised sentence embeddings of a batch of tokenized sentences,
    /// `(batch, hidden)` on the encoder's device. Gradients flow when the weights are
    /// variables.
    pub fn forward(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let len = batch.iter().map(|ids| ids.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        let pad = self.config.pad_token_id as u32;
        for sentence in batch {
            ids.extend_from_slice(sentence);
            mask.extend(std::iter::repeat_n(1u32, sentence.len()));
            ids.extend(std::iter::repeat_n(pad, len - sentence.len()));
            mask.extend(std::iter::repeat_n(0u32, len - sentence.len()));
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = match &self.bert {
            Network::Frozen(bert) => bert.forward(&ids, &types, Some(&mask))?,
            Network::Trainable(bert) => bert.forward(&ids, &types, &mask)?,
        };
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
        let counts = weights.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        l2_normalize(&summed.broadcast_div(&counts)?)
    }

    /// The embeddings of `texts` in order, `(texts, hidden)`, computed in batches of at most
    /// `batch_size` sentences of similar length; `on_batch(done, total)` reports progress.
    pub fn embed<S: AsRef<str>>(
        &self,
        texts: &[S],
        batch_size: usize,
        on_batch: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let tokens = self.tokenize(texts)?;
        self.embed_tokens(&tokens, batch_size, on_batch)
    }

    /// [`Encoder::embed`] for sentences tokenized already.
    pub fn embed_tokens(
        &self,
        tokens: &[TokenIds],
        batch_size: usize,
        on_batch: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        if tokens.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.hidden_size()),
                DType::F32,
                &self.device,
            )?);
        }
        let order = by_length(tokens);
        let mut parts = Vec::new();
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| tokens[i].as_slice()).collect();
            parts.push(self.forward(&batch)?.detach());
            done += chunk.len();
            on_batch(done, tokens.len());
        }
        let sorted = Tensor::cat(&parts, 0)?;
        // Row k of `sorted` is text order[k]: put each text back at its own row.
        let mut position = vec![0u32; order.len()];
        for (k, &i) in order.iter().enumerate() {
            position[i] = k as u32;
        }
        let position = Tensor::from_vec(position, order.len(), &self.device)?;
        Ok(sorted.index_select(&position, 0)?)
    }
}

/// Indices of `tokens` from shortest to longest (stable), so batches need little padding.
pub fn by_length(tokens: &[TokenIds]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| tokens[i].len());
    order
}

/// Each row divided by its L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}
